//! Phase 6, `logging`: every answered request, proxied or refused, is
//! counted (`switchyard_http_requests_total`, the latency histogram) and,
//! when the listener has one, written to the access log; a failure is
//! logged (rate-limited) with its cause.

use http::{HeaderValue, Response, Version, header};
use tracing::debug;

use super::context::Ctx;
use super::error::{self, ProxyError};
use super::server::{Conn, HttpState, ProxyBody, full};
use crate::admin::access_log::{Entry, Format};

/// The answer to a request that failed: its status, and `Connection:
/// close` on HTTP/1 when the connection must not be reused.
pub(super) fn failed(e: &ProxyError, state: &HttpState, ctx: &Ctx) -> Response<ProxyBody> {
    crate::warn_limited!(listener = %state.name, client = %ctx.peer, method = %ctx.method, path = %ctx.path(),
        status = e.status().as_u16(), cause = %e, "request failed");
    let mut resp = error::plain(e.status()).map(full);
    if e.closes_connection() && ctx.version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Counts the request; returns its access-log line, when the listener has
/// an access log, for `log_hook::attach` to finish and write when the
/// response body ends.
pub(super) fn logging(
    state: &HttpState,
    conn: &Conn,
    ctx: &mut Ctx,
    resp: &Response<ProxyBody>,
) -> Option<Entry> {
    let total = ctx.started.elapsed();
    let status = resp.status().as_u16();
    debug!(listener = %state.name, method = %ctx.method, path = %ctx.path(), status,
        elapsed_us = total.as_micros() as u64, "request");
    state
        .requests
        .record(ctx.pool.as_ref(), ctx.backend.as_ref(), status, total);
    if let Some(r) = &state.rollout {
        // A failed policy call is what `on_error` handled; any other 5xx
        // but the policy's own answer is one of the forward it decided (a
        // backend's, or none available).
        let policy_failed = matches!(ctx.decision, "fallback" | "reject");
        let server_error = status >= 500 && !policy_failed && ctx.decision != "respond";
        r.run.record(r.side, policy_failed, server_error);
        if let Some(call) = ctx.shadow.take() {
            shadow(*call, r, state);
        }
    }
    if state.config.access_log == Format::Off {
        return None;
    }
    let some = |s: &Option<crate::admin::metrics::Label>| s.as_ref().map(|s| s.to_string());
    let [user_agent, referer, request_id, trace_id] =
        ctx.agent.take().map_or([None, None, None, None], |b| *b);
    let tls = conn.tls.as_ref();
    Some(Entry {
        listener: state.name.to_string(),
        client: ctx.peer.to_string(),
        kind: "http",
        method: Some(ctx.method.to_string()),
        path: Some(ctx.path().to_owned()),
        query: ctx.uri.as_ref().and_then(|u| u.query()).map(str::to_owned),
        protocol: Some(match ctx.version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }),
        status: Some(status),
        pool: some(&ctx.pool),
        backend: some(&ctx.backend),
        decision: ctx.decision,
        upstream_ms: ctx.upstream.map(|d| d.as_secs_f64() * 1000.0),
        tls_version: tls.and_then(|t| t.version.clone()),
        sni: tls.and_then(|t| t.sni.clone()),
        user_agent,
        referer,
        request_id,
        trace_id,
        ..Entry::default()
    })
}

/// The shadow decides `call`'s request on a task of its own: the response
/// is on its way already and never waits for it. At most
/// `shadow::MAX_IN_FLIGHT` run at once; its `http-call`s are stubbed.
fn shadow(call: super::context::ShadowCall, r: &super::server::Rollout, state: &HttpState) {
    use crate::policy::shadow::Stubbed;
    let Some(diffs) = &r.run.shadow else {
        return;
    };
    let Some(slot) = diffs.admit() else {
        return;
    };
    let run = r.run.clone();
    let directory: std::sync::Arc<dyn crate::policy::Directory> =
        std::sync::Arc::new(Stubbed(state.policy_directory.clone()));
    let pool = state.config.pool.clone();
    tokio::spawn(async move {
        let super::context::ShadowCall {
            mut view,
            live,
            info,
        } = call;
        let (d, _) = run
            .canary
            .on_request_timed(&mut view, &info, pool.as_deref(), &directory)
            .await;
        if let Some(diffs) = &run.shadow {
            diffs.record(&view, &live, &d, pool.as_deref());
        }
        drop(slot);
    });
}
