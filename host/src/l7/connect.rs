//! Phase 4, `connect_and_retry`: the request goes to its backend, and
//! after a failure before any response byte to one not tried yet, within
//! `retries`, `retry_on` and the pool's retry budget (docs/CONFIG.md). A
//! request none of which was written (connect failed, a pooled
//! connection closed) is resent whatever its method; one that reached a
//! backend only when idempotent and its body was kept. With
//! `total_timeout_ms`, all attempts share one deadline.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Request, Response};

use super::context::Ctx;
use super::error::ProxyError;
use super::exchange::{FailedAttempt, FailureClass, SendHow, send};
use super::request;
use super::response_filter::{Filtered, Head, Reply, response_filter};
use super::server::HttpState;
use super::upstream_peer::Peer;
use super::upstream_request::{Line, Outgoing};
use crate::admin::access_log::Format;
use crate::policy::ForwardAction;
use crate::upstream::{Backend, InFlight, ResponseBody, UpstreamBody};

/// The backend's response head, what keeps it counted in flight, and the
/// request's total deadline (the body must end by it too).
pub(super) type Answered = (
    Response<ResponseBody>,
    InFlight,
    Option<tokio::time::Instant>,
);

/// The request toward one backend: its URI made absolute with the
/// backend's address.
fn build(
    out: &Line,
    action: &ForwardAction,
    peer: &Peer,
    backend: &Backend,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let pool = &peer.pool;
    let at = backend.address();
    let uri = request::upstream_uri(
        &out.uri,
        action,
        &at.uri_authority,
        pool.config.tls.is_some(),
    )
    .map_err(|e| ProxyError::Upstream {
        pool: pool.name.to_string(),
        backend: backend.name.to_string(),
        cause: format!("cannot build the upstream URI: {e}"),
    })?;
    let mut r = Request::new(body);
    *r.method_mut() = out.method.clone();
    *r.uri_mut() = uri;
    *r.version_mut() = out.version;
    *r.headers_mut() = headers;
    Ok(r)
}

/// A failed attempt, and what a resend may use.
struct Retry<'a> {
    tried: &'a [Arc<Backend>],
    target: &'a Arc<Backend>,
    /// Headers and body kept for a resend of a request that went out.
    spare: &'a Option<(HeaderMap, super::body::Replay)>,
    line: &'a Line,
}

/// The request for the next backend after a failed attempt, or the error
/// to answer with: the failure must be one `retry_on` names, the request
/// unsent (whatever its method) or kept for a resend, a backend left
/// untried within `retries`, and for a request that went out, the retry
/// budget must allow it.
fn resend(
    failed: FailedAttempt,
    r: Retry<'_>,
    action: &ForwardAction,
    peer: &Peer,
    state: &HttpState,
) -> Result<(Request<UpstreamBody>, Arc<Backend>), ProxyError> {
    let pool = &peer.pool;
    let retry = &pool.config.retry;
    let allowed = match failed.class {
        Some(FailureClass::Error) => retry.on_error,
        Some(FailureClass::Timeout) => retry.on_timeout,
        None => false,
    };
    if !allowed {
        return Err(failed.error);
    }
    // Unsent: whatever the method. Sent: an idempotent request whose body
    // was kept.
    let again = match (failed.unsent, r.spare) {
        (Some(unsent), _) => Ok(unsent),
        (None, Some((h, b))) => Err((h.clone(), b.body())),
        (None, None) => return Err(failed.error),
    };
    let Some(next) = pool.next_attempt(peer.key, r.tried, retry.retries as usize) else {
        return Err(failed.error);
    };
    let target = r.target;
    if again.is_err() && !pool.may_resend() {
        crate::warn_limited!(listener = %state.name, pool = %pool.name, backend = %target.name,
            cause = %failed.error, "retry budget spent; not resending");
        return Err(failed.error);
    }
    crate::warn_limited!(listener = %state.name, pool = %pool.name, backend = %target.name,
        cause = %failed.error, retry = %next.name, "upstream failed before responding; resending on another backend");
    let req = match again {
        Ok(unsent) => {
            let (p, b) = unsent.into_parts();
            build(r.line, action, peer, &next, p.headers, b)?
        }
        Err((h, b)) => build(r.line, action, peer, &next, h, b)?,
    };
    Ok((req, next))
}

/// The answer when `total_timeout_ms` passed before a response head.
fn total_timeout(peer: &Peer, state: &HttpState, ctx: &Ctx) -> ProxyError {
    state.timeouts.total.inc();
    let pool = &peer.pool;
    ProxyError::Timeout {
        pool: pool.name.to_string(),
        backend: ctx.backend.as_deref().unwrap_or_default().to_owned(),
        timeout_ms: pool.config.total_timeout.unwrap_or_default().as_millis(),
    }
}

pub(super) async fn connect_and_retry(
    out: &mut Outgoing,
    action: &ForwardAction,
    peer: &Peer,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Answered, ProxyError> {
    let pool = &peer.pool;
    // Taken, not moved whole: the request line and what a resend keeps
    // stay where they are.
    let headers = std::mem::take(&mut out.headers);
    let body = std::mem::replace(&mut out.body, super::body::empty());
    let (line, spare) = (&out.line, &out.spare);
    let mut req = build(line, action, peer, &peer.backend, headers, body)?;
    // Upstream time is for the access log only.
    let sent = (state.config.access_log != Format::Off || ctx.log_hook).then(Instant::now);
    let how = SendHow {
        unpooled: out.upgrade,
        fault: out.fault.as_deref(),
        limit: out.limit,
    };
    pool.count_request();
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut target = peer.backend.clone();
    let deadline = pool
        .config
        .total_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let outcome = {
        // Pinned where it is built: the attempts future holds the upstream
        // exchange (~2.4 KB), and moving it into an `.await` or a timeout
        // cost a memcpy of all of it per request (bench/count: ~8,300 of
        // 48,000 instructions).
        let mut attempts = std::pin::pin!(async {
            loop {
                ctx.backend = Some(target.name.clone());
                let failed = match send(&state.metrics, pool, &target, req, &how).await {
                    Ok(ok) => return Ok(ok),
                    Err(failed) => failed,
                };
                tried.push(target.clone());
                let retry = Retry {
                    tried: &tried,
                    target: &target,
                    spare,
                    line,
                };
                (req, target) = resend(failed, retry, action, peer, state)?;
            }
        });
        // With `total_timeout_ms`, the attempts (resends included) must
        // bring a response head, and the body must end, by one deadline.
        match deadline {
            None => Ok(attempts.as_mut().await),
            Some(at) => tokio::time::timeout_at(at, attempts.as_mut()).await,
        }
    };
    let (resp, in_flight) = match outcome {
        Ok(r) => r?,
        Err(_) => return Err(total_timeout(peer, state, ctx)),
    };
    ctx.upstream = sent.map(|s| s.elapsed());
    Ok((resp, in_flight, deadline))
}

/// The response hook asked for another try: the request goes once more,
/// to a backend of the pool not tried yet, when it may be resent (kept
/// for a resend: idempotent, `retries` ≥ 1, another backend) and the retry
/// budget allows. Otherwise the first response goes back as it came. The
/// first response's body is dropped unread either way but the last.
pub(super) async fn retry_after_response(
    out: &mut Outgoing,
    first: Head,
    peer: &Peer,
    reply: Reply<'_>,
    ctx: &mut Ctx,
) -> Result<Filtered, ProxyError> {
    let (pool, state) = (&peer.pool, reply.state);
    let answered: Vec<Arc<Backend>> = pool
        .backends
        .iter()
        .filter(|b| ctx.backend.as_ref() == Some(&b.name))
        .cloned()
        .collect();
    let next = out
        .spare
        .as_ref()
        .and_then(|spare| Some((spare, pool.next_attempt(peer.key, &answered, 1)?)));
    let Some(((headers, replay), next)) = next else {
        debug_retry(
            state,
            pool,
            "the request may not be resent, or no backend is left",
        );
        return Ok(Filtered::Head(first));
    };
    if !pool.may_resend() {
        crate::warn_limited!(listener = %state.name, pool = %pool.name,
            "retry budget spent; the response hook's retry not done");
        return Ok(Filtered::Head(first));
    }
    let req = build(
        &out.line,
        reply.action,
        peer,
        &next,
        headers.clone(),
        replay.body(),
    )?;
    let Head { open, deadline, .. } = first;
    ctx.backend = Some(next.name.clone());
    let how = SendHow {
        unpooled: false,
        fault: out.fault.as_deref(),
        limit: out.limit,
    };
    let (resp, in_flight) = send(&state.metrics, pool, &next, req, &how)
        .await
        .map_err(|failed| failed.error)?;
    Ok(response_filter((resp, in_flight, deadline), reply, open))
}

fn debug_retry(state: &HttpState, pool: &crate::upstream::Pool, why: &str) {
    tracing::debug!(listener = %state.name, pool = %pool.name, "response hook's retry not done: {why}");
}
