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

/// What the body phase read of the client's body, beside the request
/// (whose `Incoming` it read through, and which goes on unwrapped: a
/// request no policy reads carries only a `None`).
pub(super) enum ReadSide {
    /// Read whole for the policy: sent with a `Content-Length`, and kept
    /// for a resend.
    Whole { body: Replay, fault: Arc<BodyFault> },
    /// Over the policy's limit: what was read goes first, then the rest of
    /// the request's body as it comes, counted on from `left` bytes of
    /// `max_request_body_bytes`.
    Prefix {
        read: Buffered,
        fault: Arc<BodyFault>,
        left: u64,
    },
}

/// Reads the body for the policy when the decision asks for it (and only
/// then: a request whose decision does not is left as it is). On return,
/// `decision` is the final one: the body hook's, or the over-limit
/// branch's; what was read is returned.
pub(super) async fn read_body(
    req: &mut Request<Incoming>,
    decision: &mut HttpDecision,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Option<Box<ReadSide>>, ProxyError> {
    let HttpDecision::ReadBody(read) = decision else {
        return Ok(None);
    };
    let read = std::mem::replace(read, placeholder());
    let limit = u64::from(read.limit).min(state.config.max_policy_body_bytes);
    if req.body().size_hint().lower() > limit {
        // Over the limit by its declared length: not a byte read.
        *decision = HttpDecision::Forward(over_limit(read.over_limit, limit, ctx)?);
        return Ok(None);
    }
    let fault = Arc::new(BodyFault::default());
    let cap = state.config.max_request_body_bytes.unwrap_or(u64::MAX);
    // `ClientBody` has its own idle timer, and says whose fault a failure is.
    let mut body = ClientBody::new(req.body_mut(), state, cap, fault.clone());
    let (mut got, whole) = read_up_to(&mut body, limit, None)
        .await
        .map_err(|_| body_error(fault.0.get(), cap))?;
    let left = body.left;
    if !whole {
        *decision = HttpDecision::Forward(over_limit(read.over_limit, limit, ctx)?);
        return Ok(Some(Box::new(ReadSide::Prefix {
            read: got,
            fault,
            left,
        })));
    }
    let body = Replay {
        data: Bytes::from(got.take_data()),
        trailers: got.trailers,
    };
    *decision = on_request_body(req, &body.data, &read, conn, state, ctx).await?;
    Ok(Some(Box::new(ReadSide::Whole { body, fault })))
}

/// What stands in a decision whose `read-body` was taken out of it.
fn placeholder() -> ReadBody {
    ReadBody {
        limit: 0,
        over_limit: OverLimit::Refuse,
        context: None,
    }
}

/// The body hook, with the body read whole.
async fn on_request_body(
    req: &mut Request<Incoming>,
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
    settle(d, took, &mut view, req, state, ctx)
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
