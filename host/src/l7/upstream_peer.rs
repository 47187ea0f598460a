//! Phase 2, `upstream_peer`: the pool (the decision's, else the
//! listener's) and the backend in it (the one the decision named when it
//! is available, else the pool's algorithm's pick; the same rule as L4's,
//! in `Pool::choose`).

use std::sync::Arc;

use http::Request;

use super::context::Ctx;
use super::error::ProxyError;
use super::request;
use super::server::HttpState;
use crate::config::Algorithm;
use crate::policy::ForwardAction;
use crate::upstream::{Backend, Pool};

/// Where a request goes.
pub(super) struct Peer {
    pub pool: Arc<Pool>,
    /// The first backend tried.
    pub backend: Arc<Backend>,
    /// The request's hash key, for `hash` pools (resends use it too).
    pub key: Option<u64>,
}

pub(super) fn upstream_peer<B>(
    action: &ForwardAction,
    req: &Request<B>,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Peer, ProxyError> {
    let pool = match (&action.pool, &state.default_pool) {
        (None, Some(default)) => default.clone(),
        _ => named_pool(action, state, ctx)?,
    };
    ctx.pool = Some(pool.name.clone());
    let key = (pool.config.algorithm == Algorithm::Hash)
        .then(|| {
            request::hash_key(
                &pool.config.hash_key,
                ctx.client_ip(),
                req.uri(),
                req.headers(),
            )
        })
        .flatten();
    let backend =
        pool.choose(action.backend.as_deref(), key)
            .ok_or_else(|| ProxyError::NoBackend {
                pool: pool.name.to_string(),
            })?;
    Ok(Peer { pool, backend, key })
}

/// The pool the decision names, else the listener's, by name.
fn named_pool(
    action: &ForwardAction,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<Arc<Pool>, ProxyError> {
    let pool_name = action
        .pool
        .as_deref()
        .or(state.config.pool.as_deref())
        .ok_or_else(|| {
            ProxyError::NoPool(format!("listener {} has no default pool", state.name))
        })?;
    let Some(pool) = state.upstreams.pool(pool_name).cloned() else {
        ctx.pool = Some(pool_name.into());
        return Err(ProxyError::NoPool(format!("no pool named {pool_name:?}")));
    };
    Ok(pool)
}
