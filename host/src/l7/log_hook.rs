//! After the `logging` phase, what waits for the response body's end (the
//! last byte, an error, or the client going away): the access-log line,
//! whose `bytes_out` is the body bytes sent and `total_ms` the whole
//! exchange, and the policy's `on-log`, when it exports the log hook, on a
//! task of its own. The response is wrapped only when one of them is on;
//! it never waits for either, and the hook changes nothing of the
//! exchange; a failed call is counted like any other.

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
use crate::admin::access_log::Entry;
use crate::policy::RequestView;
use crate::policy::types::{LogSummary, Outcome};
use crate::upstream::BoxError;

/// What waits for the body's end.
struct Finish {
    state: Arc<HttpState>,
    hook: Option<HookCall>,
    /// The access-log line, but for its byte counts and total time.
    access: Option<Entry>,
    started: Instant,
    request_body: Option<Arc<BodyFault>>,
}

/// What the log hook is told.
struct HookCall {
    request: Box<RequestView>,
    context: Option<Vec<u8>>,
    summary: LogSummary,
}

impl Finish {
    fn run(self, outcome: Outcome, sent: u64) {
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let received = self
            .request_body
            .as_ref()
            .map_or(0, |f| f.2.load(Ordering::Relaxed));
        if let Some(mut e) = self.access {
            e.bytes_in = Some(received);
            e.bytes_out = Some(sent);
            e.total_ms = total_ms;
            self.state
                .access_log
                .log(self.state.config.access_log, || e);
        }
        let (Some(policy), Some(mut call)) = (self.state.policy.clone(), self.hook) else {
            return;
        };
        call.summary.outcome = outcome;
        call.summary.response_body_bytes = sent;
        call.summary.total_ms = total_ms;
        call.summary.request_body_bytes = received;
        let state = self.state;
        // No runtime: the process is going down; the hook is skipped.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let directory = state.directory();
            let (r, took) = policy
                .on_log(
                    &mut call.request,
                    call.context.as_deref(),
                    call.summary,
                    &directory,
                )
                .await;
            let state = &state;
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

/// A response body that logs its request and calls the log hook when it
/// ends.
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

/// The response, with its body wrapped to write `access` (the access-log
/// line, when the listener has one) and call the log hook (when the policy
/// exports one) at its end; as it was otherwise.
pub(super) fn attach(
    resp: Response<ProxyBody>,
    state: &Arc<HttpState>,
    ctx: &mut Ctx,
    access: Option<Entry>,
) -> Response<ProxyBody> {
    let hook = ctx
        .log_hook
        .then(|| ctx.snapshot.take())
        .flatten()
        .map(|request| HookCall {
            request,
            context: ctx.context.take(),
            summary: LogSummary {
                status: resp.status().as_u16(),
                pool: ctx.pool.as_ref().map(|p| p.to_string()),
                backend: ctx.backend.as_ref().map(|b| b.to_string()),
                upstream_ms: ctx.upstream.map(|d| d.as_secs_f64() * 1000.0),
                total_ms: 0.0,
                request_body_bytes: 0,
                response_body_bytes: 0,
                outcome: Outcome::Ok,
            },
        });
    if hook.is_none() && access.is_none() {
        return resp;
    }
    let finish = Finish {
        state: state.clone(),
        hook,
        access,
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
