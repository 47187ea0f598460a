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

use super::body::Tracked;
use super::connect::Answered;
use super::context::Ctx;
use super::error::ProxyError;
use super::guard::InProgress;
use super::hygiene;
use super::server::{Conn, HttpState, ProxyBody, full};
use super::upstream_peer::Peer;
use crate::config::OnError;
use crate::policy::{DirectResponse, ForwardAction, ResponseAction, ResponseView};
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
    context: Option<&[u8]>,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Hooked, ProxyError> {
    let (Some(policy), Some(head)) = (&state.policy, &mut ctx.snapshot) else {
        return Ok(Hooked::Send);
    };
    let mut view = ResponseView {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
    };
    let directory = ctx.directory.get_or_insert_with(|| state.directory());
    let action = policy
        .on_response(head, &mut view, context, directory)
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
    } = head;
    ctx.backend = Some(in_flight.backend().name.clone());
    let pool = &peer.pool;
    let body = Tracked {
        inner: body,
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
