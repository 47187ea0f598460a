//! Phase 5, `response_filter`: the response as the client gets it. A 101
//! to an upgrade becomes a tunnel between the two upgraded connections;
//! any other response loses its hop-by-hop fields, gets the decision's
//! edits and (when asked) the policy's `on-response` edits, and streams
//! back with its body timed and its backend counted in flight until the
//! last byte.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::{ReadFailed, Tracked, read_up_to};
use super::connect::Answered;
use super::context::Ctx;
use super::error::ProxyError;
use super::guard::InProgress;
use super::hygiene;
use super::server::{Conn, HttpState, ProxyBody, full};
use super::upstream_peer::Peer;
use super::upstream_request::Outgoing;
use crate::config::OnError;
use crate::policy::{DirectResponse, ForwardAction, ResponseAction, ResponseView, types};
use crate::upstream::health::{self, Outcome};
use crate::upstream::{InFlight, ResponseBody};

/// What the response filter needs besides the response.
pub(super) struct Reply<'a> {
    pub action: &'a ForwardAction,
    pub conn: &'a Conn,
    pub state: &'a HttpState,
    /// The client's side of an upgrade, when the request asked for one.
    pub client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// A response on its way back: its head as the client will get it, and
/// what its body keeps (the backend in flight, the total deadline).
pub(super) struct Head {
    pub parts: http::response::Parts,
    pub body: ResponseBody,
    pub in_flight: InFlight,
    pub deadline: Option<tokio::time::Instant>,
    /// The request stays in progress on its connection until the body
    /// ends.
    pub open: InProgress,
    /// What the response hook read of the body ([`read_for_hook`]).
    pub read: Option<Box<super::body::Buffered>>,
}

/// A tunnel's answer (its 101), or the head to send back.
pub(super) enum Filtered {
    Tunnel(Response<ProxyBody>),
    Head(Head),
}

/// A 101 to an upgrade starts the tunnel; any other response loses its
/// hop-by-hop fields and gets the decision's edits. Sync: the policy's
/// `on-response`, when asked for, is [`on_response`].
pub(super) fn response_filter(answered: Answered, reply: Reply<'_>, open: InProgress) -> Filtered {
    let (mut resp, in_flight, deadline) = answered;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = reply.client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tunnel(
                reply.conn,
                reply.state,
                client_upgrade,
                upstream_upgrade,
                (in_flight, open),
            );
        }
        let (parts, _) = resp.into_parts();
        return Filtered::Tunnel(Response::from_parts(parts, full(Bytes::new())));
    }
    let (mut parts, body) = resp.into_parts();
    hygiene::strip_hop_by_hop(&mut parts.headers, false);
    for edit in &reply.action.response_headers {
        edit.apply(&mut parts.headers);
    }
    Filtered::Head(Head {
        parts,
        body,
        in_flight,
        deadline,
        open,
        read: None,
    })
}

/// What the response hook leaves to do.
pub(super) enum Hooked {
    /// Send the response (its edits, if any, are applied).
    Send,
    /// Send this instead.
    Replace(DirectResponse),
    /// Send the request once more, when it may be.
    Retry,
}

/// The policy's `on-response` action, on a response whose decision asked
/// for it: its edits applied here, the response that replaces this one,
/// or a retry. A failed call follows `on_error`.
pub(super) async fn on_response(
    parts: &mut http::response::Parts,
    body: &types::ResponseBody,
    context: Option<&[u8]>,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Hooked, ProxyError> {
    let (Some(policy), Some(head)) = (&state.policy, &mut ctx.snapshot) else {
        return Ok(Hooked::Send);
    };
    let mut view = Box::new(ResponseView {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
    });
    let directory = ctx.directory.get_or_insert_with(|| state.directory());
    let action = policy
        .on_response(head, &mut view, body, context, directory)
        .await;
    parts.headers = view.headers;
    match action {
        Ok(ResponseAction::Edit(edits)) => edits.iter().for_each(|e| e.apply(&mut parts.headers)),
        Ok(ResponseAction::Replace(r)) => return Ok(Hooked::Replace(r)),
        Ok(ResponseAction::Retry) => return Ok(Hooked::Retry),
        // A response hook may strip what must not leave (an internal
        // header, a cookie) or add what must (a CSP): failing closed
        // means not sending the response it did not edit.
        Err(e) if state.config.on_error == OnError::Reject => {
            crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
                "response hook failed; response refused (on_error = reject)");
            return Err(ProxyError::PolicyRejected(e));
        }
        Err(e) => {
            crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
            "response hook failed; response sent unedited (on_error = fallback)")
        }
    }
    Ok(Hooked::Send)
}

/// Reads the upstream body for the response hook, up to `limit` bytes,
/// under the pool's body timers (the same ones, charged the same way, as
/// when it streams: [`Tracked`]). A whole body is lent to the hook and
/// then put back ([`Head::put_back`]); the beginning of a longer one goes
/// to the client first ([`Head::read`]), the rest after it. A response
/// that has no body (to HEAD, 1xx, 204, 304) is not read: its framing
/// stays the backend's.
pub(super) async fn read_for_hook(
    head: &mut Head,
    limit: u64,
    method: &http::Method,
    peer: &Peer,
    state: &HttpState,
) -> Result<types::ResponseBody, ProxyError> {
    let status = head.parts.status;
    if method == http::Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(types::ResponseBody::Read(Vec::new()));
    }
    let pool = &peer.pool;
    let backend = head.in_flight.backend().clone();
    let read = read_up_to(&mut head.body, limit, Some(pool.config.body_timeout));
    let read = match head.deadline {
        None => read.await,
        Some(at) => tokio::time::timeout_at(at, read).await.map_err(|_| {
            state.body_counters.total.inc();
            ProxyError::Timeout {
                pool: pool.name.to_string(),
                backend: backend.name.to_string(),
                timeout_ms: pool.config.total_timeout.map_or(0, |t| t.as_millis()),
            }
        })?,
    };
    let (mut read, whole) = read.map_err(|failed| match failed {
        ReadFailed::Idle => {
            state.body_counters.upstream_body.inc();
            health::report(pool, &backend, Outcome::Failure);
            ProxyError::Timeout {
                pool: pool.name.to_string(),
                backend: backend.name.to_string(),
                timeout_ms: pool.config.body_timeout.as_millis(),
            }
        }
        ReadFailed::Body(e) => ProxyError::Upstream {
            pool: pool.name.to_string(),
            backend: backend.name.to_string(),
            cause: e.to_string(),
        },
    })?;
    if !whole {
        head.read = Some(Box::new(read));
        return Ok(types::ResponseBody::OverLimit);
    }
    let data = read.take_data();
    if read.trailers.is_some() {
        head.read = Some(Box::new(read));
    }
    Ok(types::ResponseBody::Read(data))
}

impl Head {
    /// The body the hook was lent, back in front of the rest (after the
    /// hook, when the response is sent on).
    pub(super) fn put_back(&mut self, body: types::ResponseBody) {
        if let types::ResponseBody::Read(data) = body
            && !data.is_empty()
        {
            let read = self.read.get_or_insert_default();
            read.chunks.push_front(Bytes::from(data));
        }
    }
}

/// The response as it streams back: its body timed (idle and total) and
/// its backend counted in flight until the last byte.
pub(super) fn respond(
    head: Head,
    peer: &Peer,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Response<ProxyBody> {
    let Head {
        parts,
        body,
        in_flight,
        deadline,
        open,
        read,
    } = head;
    // Set by the exchange already, as a rule: a clone and a drop of a
    // count every worker writes, saved.
    let name = &in_flight.backend().name;
    if !ctx
        .backend
        .as_ref()
        .is_some_and(|b| std::sync::Arc::ptr_eq(b, name))
    {
        ctx.backend = Some(name.clone());
    }
    let pool = &peer.pool;
    let body = Tracked {
        inner: body,
        read,
        in_flight,
        idle: super::guard::Idle::new(pool.config.body_timeout),
        deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        pool: pool.clone(),
        counters: state.body_counters.clone(),
        _open: open,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Copies between the two upgraded connections on the client
/// connection's tunnel tracker: counted in `max_connections`, waited for
/// by drain and closed when it times out, closed when idle for
/// `tunnel_idle_timeout_ms`. `hold` lives as long as the tunnel.
fn tunnel(
    conn: &Conn,
    state: &HttpState,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    hold: (InFlight, InProgress),
) {
    let (idle, cancel) = (state.config.tunnel_idle_timeout, conn.cancel());
    let idle_closes = state.timeouts.tunnel.clone();
    conn.tunnels().spawn(async move {
        let _hold = hold;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let cancelled = async {
                    match &cancel {
                        Some(c) => c.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    (_, _, end) = crate::l4::tcp::copy(&mut c, &mut u, idle) => {
                        if end.is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
                            idle_closes.inc();
                        }
                    }
                    _ = cancelled => {}
                }
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
}

/// The response hook's say over a response whose decision asked for it:
/// `Ok(head)` to send (edited, or the answer of one retry), `Err` for the
/// response that replaces it.
pub(super) async fn hook(
    mut head: Head,
    out: &mut Outgoing,
    action: &ForwardAction,
    peer: &Peer,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Result<Head, Response<ProxyBody>>, ProxyError> {
    let body = match action.response_body_limit {
        None => types::ResponseBody::NotRead,
        Some(n) => {
            let limit = u64::from(n).min(state.config.max_policy_body_bytes);
            read_for_hook(&mut head, limit, &ctx.method, peer, state).await?
        }
    };
    let hooked = on_response(
        &mut head.parts,
        &body,
        action.context.as_deref(),
        state,
        ctx,
    )
    .await?;
    Ok(match hooked {
        Hooked::Send => {
            head.put_back(body);
            Ok(head)
        }
        // The upstream body is dropped unread (its connection closes) and
        // its backend leaves the in-flight count with it.
        Hooked::Replace(r) => Err(super::request_filter::direct(r)),
        Hooked::Retry => {
            let reply = Reply {
                action,
                conn,
                state,
                client_upgrade: None,
            };
            match Box::pin(super::connect::retry_after_response(
                out, head, peer, reply, ctx,
            ))
            .await?
            {
                Filtered::Tunnel(resp) => Err(resp),
                Filtered::Head(h) => Ok(h),
            }
        }
    })
}
