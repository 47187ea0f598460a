//! Phase 1b, `request_body`: the policy's `on-request` asked to see the
//! body (`read-body`). It is read up to the limit the policy named, capped
//! by the listener's `max_policy_body_bytes`, through the same size cap,
//! byte count and idle timer as a streamed body ([`ClientBody`]); then the
//! body hook decides on it. A body over the limit takes the branch the
//! policy chose: 413, or forwarded as its fallback decision says, what was
//! read first and the rest as it comes. Nothing is waited on beyond the
//! body: the policy's deadline starts when its hook is called.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Incoming};

use super::body::{BodyFault, Buffered, ClientBody, Replay, body_error, read_up_to};
use super::context::Ctx;
use super::error::ProxyError;
use super::request_filter::{lend, settle};
use super::server::{Conn, HttpState};
use crate::policy::{ForwardAction, HttpDecision, OverLimit, ReadBody};

/// The client's body once the request filter is done with it. The rare
/// cases are boxed: a request that no policy read moves one `Incoming`.
pub(super) enum ClientSide {
    /// Not read: `upstream_request` streams it (or reads a small one
    /// whole first, to keep for a resend).
    Unread(Incoming),
    /// Read whole for the policy: sent with a `Content-Length`, and kept
    /// for a resend.
    Whole(Box<Whole>),
    /// Over the policy's limit: what was read goes first, then the rest
    /// as it comes.
    Prefix(Box<Prefix>),
}

pub(super) struct Whole {
    pub(super) body: Replay,
    pub(super) fault: Arc<BodyFault>,
}

pub(super) struct Prefix {
    pub(super) read: Buffered,
    pub(super) rest: ClientBody,
}

impl ClientSide {
    pub(super) fn is_end_stream(&self) -> bool {
        match self {
            ClientSide::Unread(b) => b.is_end_stream(),
            ClientSide::Whole(w) => w.body.data.is_empty() && w.body.trailers.is_none(),
            ClientSide::Prefix(_) => false,
        }
    }
}

/// What reading up to the limit found.
enum Gathered {
    Whole(Replay, Arc<BodyFault>),
    /// Over the limit: what was read, and the rest.
    Over(Buffered, ClientBody),
    /// Over the limit by its declared length, before a byte was read.
    Declared(Incoming),
}

/// Reads the body for the policy and returns the request with it, and
/// the final decision: the body hook's, or the over-limit branch's.
pub(super) async fn read_body(
    req: Request<Incoming>,
    read: ReadBody,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<(Request<ClientSide>, HttpDecision), ProxyError> {
    let limit = u64::from(read.limit).min(state.config.max_policy_body_bytes);
    let (parts, incoming) = req.into_parts();
    let gathered = if incoming.size_hint().lower() > limit {
        Gathered::Declared(incoming)
    } else {
        gather(incoming, limit, state).await?
    };
    match gathered {
        Gathered::Whole(body, fault) => {
            let mut req = Request::from_parts(parts, ());
            let d = on_request_body(&mut req, &body.data, &read, conn, state, ctx).await?;
            Ok((
                req.map(|()| ClientSide::Whole(Box::new(Whole { body, fault }))),
                d,
            ))
        }
        Gathered::Over(read_so_far, rest) => {
            let f = over_limit(read.over_limit, limit, ctx)?;
            let side = ClientSide::Prefix(Box::new(Prefix {
                read: read_so_far,
                rest,
            }));
            Ok((Request::from_parts(parts, side), HttpDecision::Forward(f)))
        }
        Gathered::Declared(incoming) => {
            let f = over_limit(read.over_limit, limit, ctx)?;
            let side = ClientSide::Unread(incoming);
            Ok((Request::from_parts(parts, side), HttpDecision::Forward(f)))
        }
    }
}

/// The body hook, with the body read whole.
async fn on_request_body(
    req: &mut Request<()>,
    body: &[u8],
    read: &ReadBody,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<HttpDecision, ProxyError> {
    let Some(policy) = &state.policy else {
        return Ok(HttpDecision::Forward(ForwardAction::default()));
    };
    let mut view = lend(req, conn, ctx);
    let directory = ctx.directory.get_or_insert_with(|| state.directory());
    let (d, took) = policy
        .on_request_body(
            &mut view,
            body,
            read.context.as_deref(),
            state.config.pool.as_deref(),
            directory,
        )
        .await;
    settle(d, took, view, req, state, ctx)
}

/// The policy's branch for a body over its limit.
fn over_limit(branch: OverLimit, limit: u64, ctx: &mut Ctx) -> Result<ForwardAction, ProxyError> {
    match branch {
        OverLimit::Refuse => {
            ctx.decision = "respond";
            Err(ProxyError::BodyTooLarge { limit })
        }
        OverLimit::Forward(f) => {
            ctx.decision = "forward";
            if ctx.log_hook {
                ctx.context = f.context.clone();
            }
            Ok(*f)
        }
    }
}

/// Reads the client's body until its end or past `limit` bytes.
async fn gather(incoming: Incoming, limit: u64, state: &HttpState) -> Result<Gathered, ProxyError> {
    let fault = Arc::new(BodyFault::default());
    let cap = state.config.max_request_body_bytes.unwrap_or(u64::MAX);
    let mut body = ClientBody::new(incoming, state, cap, fault.clone());
    // `ClientBody` has its own idle timer, and says whose fault a failure is.
    let (mut read, whole) = read_up_to(&mut body, limit, None)
        .await
        .map_err(|_| body_error(fault.0.get(), cap))?;
    if !whole {
        return Ok(Gathered::Over(read, body));
    }
    let body = Replay {
        data: Bytes::from(read.take_data()),
        trailers: read.trailers,
    };
    Ok(Gathered::Whole(body, fault))
}
