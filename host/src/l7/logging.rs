//! Phase 6, `logging`: every answered request, proxied or refused, is
//! counted (`switchyard_http_requests_total`, the latency histogram) and,
//! when the listener has one, written to the access log; a failure is
//! logged (rate-limited) with its cause.

use http::{HeaderValue, Response, Version, header};
use hyper::body::Body;
use tracing::debug;

use super::context::Ctx;
use super::error::{self, ProxyError};
use super::server::{HttpState, ProxyBody, full};
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

pub(super) fn logging(state: &HttpState, ctx: &Ctx, resp: &Response<ProxyBody>) {
    let total = ctx.started.elapsed();
    let status = resp.status().as_u16();
    debug!(listener = %state.name, method = %ctx.method, path = %ctx.path(), status,
        elapsed_us = total.as_micros() as u64, "request");
    state
        .requests
        .record(ctx.pool.as_ref(), ctx.backend.as_ref(), status, total);
    if state.config.access_log == Format::Off {
        return;
    }
    let some = |s: &Option<crate::admin::metrics::Label>| s.as_ref().map(|s| s.to_string());
    state.access_log.log(
        state.config.access_log,
        Entry {
            listener: state.name.to_string(),
            client: ctx.peer.to_string(),
            kind: "http",
            method: Some(ctx.method.to_string()),
            path: Some(ctx.path().to_owned()),
            status: Some(status),
            pool: some(&ctx.pool),
            backend: some(&ctx.backend),
            decision: ctx.decision,
            upstream_ms: ctx.upstream.map(|d| d.as_secs_f64() * 1000.0),
            total_ms: total.as_secs_f64() * 1000.0,
            bytes_in: resp.body().size_hint().exact(),
            bytes_out: None,
        },
    );
}
