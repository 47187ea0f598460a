//! The policy's `on-log`, after the `logging` phase: when the policy
//! exports the log hook, the response body is wrapped so that its end (the
//! last byte, an error, or the client going away) starts the hook call on
//! a task of its own. The response never waits for it, and nothing it
//! does changes the exchange; a failed call is counted like any other.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::body::{BodyFault, BodyStalled, TotalTimeout};
use super::context::Ctx;
use super::server::{HttpState, ProxyBody};
use crate::policy::RequestView;
use crate::policy::types::{LogSummary, Outcome};
use crate::upstream::BoxError;

/// What the hook is told once the body ends.
struct Finish {
    state: Arc<HttpState>,
    request: Box<RequestView>,
    context: Option<Vec<u8>>,
    summary: LogSummary,
    started: Instant,
    request_body: Option<Arc<BodyFault>>,
}

impl Finish {
    fn run(mut self, outcome: Outcome, sent: u64) {
        let Some(policy) = self.state.policy.clone() else {
            return;
        };
        self.summary.outcome = outcome;
        self.summary.response_body_bytes = sent;
        self.summary.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.summary.request_body_bytes = self
            .request_body
            .as_ref()
            .map_or(0, |f| f.2.load(Ordering::Relaxed));
        // No runtime: the process is going down; the hook is skipped.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let directory = self.state.directory();
            let (r, took) = policy
                .on_log(
                    &mut self.request,
                    self.context.as_deref(),
                    self.summary,
                    &directory,
                )
                .await;
            let state = &self.state;
            state.metrics.record_policy_call(
                &policy.name,
                state.policy_metrics.as_ref(),
                took,
                r.as_ref().err(),
            );
            if let Err(e) = r {
                crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
                    "log hook failed");
            }
        });
    }
}

/// A response body that calls the log hook when it ends.
struct OnLog {
    inner: ProxyBody,
    sent: u64,
    finish: Option<Finish>,
}

impl OnLog {
    fn end(&mut self, outcome: Outcome) {
        if let Some(f) = self.finish.take() {
            f.run(outcome, self.sent);
        }
    }
}

/// What cut a body short: a timeout of ours, or the backend.
fn outcome_of(e: &BoxError) -> Outcome {
    if e.is::<BodyStalled>() || e.is::<TotalTimeout>() {
        Outcome::Timeout
    } else {
        Outcome::Reset
    }
}

impl Body for OnLog {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.end(Outcome::Ok);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let outcome = outcome_of(e);
                this.end(outcome);
            }
            Poll::Ready(None) => this.end(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OnLog {
    fn drop(&mut self) {
        // hyper drops a body it knows is empty without polling it: that is
        // a response sent whole. Anything else dropped before its end is
        // a client that went away.
        let outcome = if self.inner.is_end_stream() {
            Outcome::Ok
        } else {
            Outcome::ClientAbort
        };
        self.end(outcome);
    }
}

/// The response, with its body wrapped to call the log hook when the
/// policy exports one; as it was otherwise.
pub(super) fn attach(
    resp: Response<ProxyBody>,
    state: &Arc<HttpState>,
    ctx: &mut Ctx,
) -> Response<ProxyBody> {
    if !ctx.log_hook {
        return resp;
    }
    let Some(request) = ctx.snapshot.take() else {
        return resp;
    };
    let summary = LogSummary {
        status: resp.status().as_u16(),
        pool: ctx.pool.as_ref().map(|p| p.to_string()),
        backend: ctx.backend.as_ref().map(|b| b.to_string()),
        upstream_ms: ctx.upstream.map(|d| d.as_secs_f64() * 1000.0),
        total_ms: 0.0,
        request_body_bytes: 0,
        response_body_bytes: 0,
        outcome: Outcome::Ok,
    };
    let finish = Finish {
        state: state.clone(),
        request,
        context: ctx.context.take(),
        summary,
        started: ctx.started,
        request_body: ctx.request_body.take(),
    };
    resp.map(|inner| {
        OnLog {
            inner,
            sent: 0,
            finish: Some(finish),
        }
        .boxed_unsync()
    })
}
