//! Phase 3, `upstream_request`: the request as the backend gets it.
//! Hop-by-hop fields removed (`TE: trailers` sent again toward HTTP/2
//! pools), the decision's edits applied, `Host` set, `X-Forwarded-*` and
//! `Forwarded` added; the client's body wrapped to be counted, capped and
//! timed, or read whole first when it may be sent again.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::body::{BodyFault, ClientBody, Prefixed, REPLAY_CAP, Replay, body_error, empty};
use super::context::Ctx;
use super::error::ProxyError;
use super::framing::Refusal;
use super::hygiene;
use super::request_body::ReadSide;
use super::server::{Conn, HttpState};
use super::upstream_peer::Peer;
use crate::policy::ForwardAction;
use crate::upstream::UpstreamBody;

/// The request on its way out, before a backend's address is in its URI.
pub(super) struct Outgoing {
    pub line: Line,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
    /// Headers and body kept for a resend after the request went out,
    /// only when one is possible (an unsent request comes back whole).
    pub spare: Option<(HeaderMap, Replay)>,
    /// An upgrade, sent on a connection of its own.
    pub upgrade: bool,
    /// Where the client's body notes how it failed, when it has one.
    pub fault: Option<Arc<BodyFault>>,
    /// The listener's `max_request_body_bytes` (`u64::MAX`: none).
    pub limit: u64,
    /// A small body that may be resent, to be read whole first
    /// ([`read_replay`]) before anything is sent.
    pub unread: Option<ClientBody>,
}

/// The request line, kept to build the request again for each backend.
pub(super) struct Line {
    pub method: Method,
    /// The URI as the client sent it (normalized); `connect::build` makes
    /// it absolute for each backend tried.
    pub uri: Uri,
    /// Toward the pool: HTTP/2 or HTTP/1.1.
    pub version: Version,
}

/// Whether a request that reached a backend may be sent again, as far as
/// its method goes (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a request is an upgrade the proxy carries. An upgrade goes to
/// HTTP/1.1 pools only (toward HTTP/2 its fields are hop-by-hop and
/// removed), and never with a body: the backend could leave a body it
/// did not read for the next request on that connection (400).
pub(super) fn is_upgrade(
    req: &Request<Incoming>,
    pool: &crate::upstream::Pool,
    action: &ForwardAction,
) -> Result<bool, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11
        && !pool.config.http2
        && hygiene::is_upgrade(req.headers());
    if upgrade && !req.body().is_end_stream() {
        return Err(ProxyError::Refused(Refusal::BadRequest(
            "an upgrade request with a body",
        )));
    }
    if upgrade && action.body.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ProxyError::PolicyRejected(
            crate::policy::PolicyError::InvalidDecision(
                "a body on an upgrade request (it would be read as the next request)".into(),
            ),
        ));
    }
    Ok(upgrade)
}

/// The request to send, and the client's side of an upgrade. Sync: only
/// a body kept for a resend must be read first ([`read_replay`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn upstream_request(
    mut req: Request<Incoming>,
    read: Option<Box<ReadSide>>,
    upgrade: bool,
    action: &ForwardAction,
    peer: &Peer,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> (Outgoing, Option<hyper::upgrade::OnUpgrade>) {
    let pool = &peer.pool;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let own_length =
        action.body.is_some() || matches!(read.as_deref(), Some(ReadSide::Whole { .. }));
    let (mut headers, framed) =
        headers_to_send(parts.headers, upgrade, own_length, action, peer, conn, ctx);
    let version = if pool.config.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let limit = state.config.max_request_body_bytes.unwrap_or(u64::MAX);
    let retry = &pool.config.retry;
    // Whether a request that reached a backend may be sent again: an
    // idempotent method, retries configured, another backend to try.
    let may_resend = retry.retries > 0 && pool.backends.len() > 1 && idempotent(&parts.method);
    let wrapped = body_to_send(body, read, action, may_resend, limit, pool, state);
    // A request that had no body and gets none goes without a length
    // (RFC 9110 §8.6).
    if own_length
        && let Some(r) = &wrapped.replay
        && (framed || !r.data.is_empty())
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.data.len()));
    }
    let Wrapped {
        body,
        unread,
        replay,
        fault,
    } = wrapped;
    if ctx.log_hook || ctx.agent.is_some() {
        ctx.request_body = fault.clone();
    }
    let spare = match replay {
        Some(r) if may_resend => Some((headers.clone(), r)),
        _ => None,
    };
    let out = Outgoing {
        line: Line {
            method: parts.method,
            uri: parts.uri,
            version,
        },
        headers,
        body,
        spare,
        upgrade,
        fault,
        limit,
        unread,
    };
    (out, client_upgrade)
}

/// The request's headers as the backend gets them, and whether the
/// client framed a body (a `Content-Length` or `Transfer-Encoding`).
/// `own_length`: the body goes whole, with a length the host sets.
fn headers_to_send(
    mut headers: HeaderMap,
    upgrade: bool,
    own_length: bool,
    action: &ForwardAction,
    peer: &Peer,
    conn: &Conn,
    ctx: &Ctx,
) -> (HeaderMap, bool) {
    let trailers = peer.pool.config.http2 && hygiene::wants_trailers(&headers);
    // Framing is the host's: a body read whole (or replaced) goes with its
    // own length, whatever framing the client used.
    let framed = own_length
        && (headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING));
    hygiene::strip_hop_by_hop(&mut headers, upgrade);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if own_length {
        forget_the_clients_body(&mut headers, action.body.is_some());
    }
    for edit in &action.request_headers {
        edit.apply(&mut headers);
    }
    let host = match &action.authority {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => ctx.client_host.clone(),
    };
    match host {
        Some(v) => headers.insert(header::HOST, v),
        None => headers.remove(header::HOST),
    };
    hygiene::add_forwarded(
        &mut headers,
        conn.peer_text(),
        ctx.trusted_peer,
        conn.scheme(),
        ctx.client_host.as_ref(),
        conn.forwarded(),
    );
    (headers, framed)
}

/// The body to send: the client's as it comes ([`client_body`]), read
/// whole for the policy, its beginning read and the rest streamed, or the
/// policy's replacement.
fn body_to_send(
    body: Incoming,
    read: Option<Box<ReadSide>>,
    action: &ForwardAction,
    may_resend: bool,
    limit: u64,
    pool: &crate::upstream::Pool,
    state: &HttpState,
) -> Wrapped {
    let read = read.map(|r| *r);
    match (&action.body, read) {
        (None, None) => client_body(body, may_resend, limit, state),
        (None, Some(ReadSide::Whole { mut body, fault })) => {
            // HTTP/1.1 sends trailers only after a chunked body.
            if !pool.config.http2 {
                body.trailers = None;
            }
            read_whole(body, Some(fault))
        }
        (None, Some(ReadSide::Prefix { read, fault, left })) => {
            let rest = ClientBody::new(body, state, left, fault.clone());
            Wrapped {
                fault: Some(fault),
                body: Prefixed { first: read, rest }.boxed_unsync(),
                unread: None,
                replay: None,
            }
        }
        // The policy's body replaces the client's, read or not.
        (Some(new), side) => {
            let fault = match side {
                Some(ReadSide::Whole { fault, .. } | ReadSide::Prefix { fault, .. }) => Some(fault),
                None => None,
            };
            let replay = Replay {
                data: Bytes::clone(new),
                trailers: None,
            };
            read_whole(replay, fault)
        }
    }
}

/// The client's body as sent: counted, capped and idle-timed; a small one
/// that may be resent is left unread, to be read whole first. Without a
/// body, an empty one, and an empty copy to resend.
fn client_body(body: Incoming, may_resend: bool, limit: u64, state: &HttpState) -> Wrapped {
    let fault = (!body.is_end_stream()).then(|| Arc::new(BodyFault::default()));
    // The body as sent, and a copy to send again: a body of at most
    // REPLAY_CAP bytes is read whole first when it may be resent.
    let (body, unread, replay): (UpstreamBody, _, _) = match &fault {
        None => (empty(), None, Some(Replay::default())),
        Some(fault) => {
            let client_body = ClientBody::new(body, state, limit, fault.clone());
            let small = client_body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= REPLAY_CAP);
            if may_resend && small {
                (empty(), Some(client_body), None)
            } else {
                (client_body.boxed_unsync(), None, None)
            }
        }
    };
    Wrapped {
        body,
        unread,
        replay,
        fault,
    }
}

/// What the client said of a body the host now sends whole: the proxy
/// has it, so nothing waits on `Expect: 100-continue`; and a body the
/// policy replaced is not the one its coding and digests describe (the
/// policy's own header edits, applied after, may set them again).
fn forget_the_clients_body(headers: &mut HeaderMap, replaced: bool) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    if replaced {
        for n in [
            "content-encoding",
            "content-md5",
            "content-digest",
            "repr-digest",
            "digest",
        ] {
            headers.remove(n);
        }
    }
}

/// A body read whole (for the policy, or its replacement): sent as is,
/// and kept for a resend.
fn read_whole(body: Replay, fault: Option<Arc<BodyFault>>) -> Wrapped {
    Wrapped {
        body: body.body(),
        unread: None,
        replay: Some(body),
        fault,
    }
}

/// The client's body, as [`client_body`] wraps it.
struct Wrapped {
    body: UpstreamBody,
    unread: Option<ClientBody>,
    replay: Option<Replay>,
    fault: Option<Arc<BodyFault>>,
}

/// Reads a body that may be resent whole, and keeps a copy of it (with
/// the headers) for a resend.
pub(super) async fn read_replay(out: &mut Outgoing) -> Result<(), ProxyError> {
    let Some(client_body) = out.unread.take() else {
        return Ok(());
    };
    let fault = client_body.fault.clone();
    let read = client_body
        .collect()
        .await
        .map_err(|_| body_error(fault.0.get(), out.limit))?;
    let replay = Replay {
        trailers: read.trailers().cloned(),
        data: read.to_bytes(),
    };
    out.body = replay.body();
    out.spare = Some((out.headers.clone(), replay));
    Ok(())
}
