//! The L4 stage: TCP and UDP proxying. Bytes only, never parsed — except a
//! TLS ClientHello, read (not terminated) when the policy wants the SNI.

pub mod copy;
pub mod sni;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use crate::config::{Listener, OnError};
use crate::policy::{ConnDecision, Directory, Policy};
use crate::upstream::{Backend, Pool, Upstreams};

pub use tcp::serve_connection;

/// What a TCP or UDP listener serves with; swapped whole on reload. `P`
/// is its protocol's settings: `TcpSettings` or `UdpSettings`.
pub struct L4State<P> {
    pub name: crate::admin::metrics::Label,
    pub config: Listener<P>,
    pub policy: Option<Arc<Policy>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<crate::admin::Metrics>,
    pub access_log: crate::admin::AccessLog,
}

/// Where a new connection or flow goes.
pub(crate) struct Route {
    pub pool: Arc<Pool>,
    /// The backend the policy named, when it is available.
    pub first: Option<Arc<Backend>>,
    /// `default`, `forward` or `fallback`, for the access log.
    pub decision: &'static str,
}

impl Route {
    /// The key hash-balanced pools use: the client's address.
    pub fn key(peer: SocketAddr) -> Option<u64> {
        Some(crate::balance::stable_hash_ip(peer.ip()))
    }
}

/// Asks the listener's policy (when it has one) where a new connection or
/// flow goes. `None`: rejected, or nowhere to go (both logged).
pub(crate) async fn route<P>(
    state: &L4State<P>,
    info: crate::policy::ConnectionInfo,
    peer: SocketAddr,
) -> Option<Route> {
    let cfg = &state.config;
    let mut decision = "default";
    let (mut pool_name, mut named) = (cfg.pool.clone(), None);
    if let Some(policy) = &state.policy {
        let directory: Arc<dyn Directory> = state.upstreams.clone();
        let (verdict, took) = policy
            .on_connect_timed(&Arc::new(info), cfg.pool.as_deref(), &directory)
            .await;
        state
            .metrics
            .record_policy_call(&policy.name, None, took, verdict.as_ref().err());
        match verdict {
            Ok(ConnDecision::Forward { pool, backend }) => {
                decision = "forward";
                pool_name = pool.or(pool_name);
                named = backend;
            }
            Ok(ConnDecision::Reject) => {
                debug!(listener = %state.name, client = %peer, "rejected by policy");
                return None;
            }
            Err(e) => {
                crate::warn_limited!(listener = %state.name, policy = %policy.name, error = %e,
                    on_error = ?cfg.on_error, "policy call failed");
                if cfg.on_error == OnError::Reject {
                    return None;
                }
                decision = "fallback";
            }
        }
    }
    let Some(pool) = pool_name.as_deref().and_then(|p| state.upstreams.pool(p)) else {
        crate::warn_limited!(listener = %state.name, client = %peer, pool = ?pool_name, "no pool; connection closed");
        return None;
    };
    let first = pool.choose(named.as_deref(), Route::key(peer));
    Some(Route {
        pool: pool.clone(),
        first,
        decision,
    })
}
