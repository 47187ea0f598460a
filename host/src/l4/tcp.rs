//! A TCP connection: ask the connection policy (when there is one) where it
//! goes, connect to a backend of that pool (another one if the connect
//! fails, before any client byte is sent), then copy both ways until both
//! sides are done; a client's half-close reaches the backend and the
//! response still flows back.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::config::{ListenerConfig, OnError};
use crate::policy::{ConnDecision, Directory, Policy, types};
use crate::upstream::{Backend, Upstreams};

/// What a TCP listener serves with; swapped whole on reload.
pub struct TcpState {
    pub name: String,
    pub config: ListenerConfig,
    pub policy: Option<Arc<Policy>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<crate::admin::Metrics>,
    pub access_log: crate::admin::AccessLog,
}

pub async fn serve_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shared: Arc<ArcSwap<TcpState>>,
) {
    let started = std::time::Instant::now();
    let mut decision = "default";
    let state = shared.load_full();
    let cfg = &state.config;
    let directory: Arc<dyn Directory> = state.upstreams.clone();
    let (mut pool_name, mut named) = (cfg.pool.clone(), None);
    let active = state
        .metrics
        .active_connections
        .get_or_create(&crate::admin::metrics::ListenerLabel {
            listener: state.name.clone(),
        })
        .clone();
    let _active = crate::admin::metrics::GaugeGuard::new(active);
    if let Some(policy) = &state.policy {
        let called = std::time::Instant::now();
        let verdict = policy
            .on_connect(
                &crate::policy::connection_info(
                    peer,
                    local,
                    &state.name,
                    cfg.pool.as_deref(),
                    types::Transport::Tcp,
                ),
                cfg.pool.as_deref(),
                &directory,
            )
            .await;
        crate::l7::server::record_policy_call(
            &state.metrics,
            &policy.name,
            called,
            verdict.as_ref().err(),
        );
        match verdict {
            Ok(ConnDecision::Forward { pool, backend }) => {
                decision = "forward";
                pool_name = pool.or(pool_name);
                named = backend;
            }
            Ok(ConnDecision::Reject) => {
                debug!(listener = %state.name, client = %peer, "rejected by policy");
                return;
            }
            Err(e) => {
                warn!(listener = %state.name, policy = %policy.name, error = %e,
                    on_error = ?cfg.on_error, "policy call failed");
                if cfg.on_error == OnError::Reject {
                    return;
                }
                decision = "fallback";
            }
        }
    }
    let Some(pool) = pool_name.as_deref().and_then(|p| state.upstreams.pool(p)) else {
        warn!(listener = %state.name, client = %peer, pool = ?pool_name, "no pool; connection closed");
        return;
    };
    let key = Some(crate::balance::stable_hash(&peer.ip().to_canonical()));
    let first = named
        .as_deref()
        .and_then(|n| pool.backend(n))
        .filter(|b| crate::balance::Candidate::available(&***b))
        .cloned()
        .or_else(|| pool.pick(key, None));
    let mut tried: Option<Arc<Backend>> = None;
    let mut candidate = first;
    while let Some(backend) = candidate {
        let Some(at) = backend.address() else {
            break;
        };
        let connect = TcpStream::connect(at.socket);
        match tokio::time::timeout(pool.config.connect_timeout, connect).await {
            Ok(Ok(mut upstream)) => {
                crate::health::report(pool, &backend, crate::health::Outcome::Connected);
                let _ = upstream.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let _in_flight = backend.start();
                state
                    .metrics
                    .tcp_connections
                    .get_or_create(&crate::admin::metrics::TcpLabels {
                        listener: state.name.clone(),
                        pool: pool.name.clone(),
                        backend: backend.name.clone(),
                    })
                    .inc();
                let connected = started.elapsed();
                let (up, down) = match tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                {
                    Ok((up, down)) => {
                        debug!(listener = %state.name, client = %peer,
                            backend = %backend.name, bytes_up = up, bytes_down = down, "connection done");
                        (Some(up), Some(down))
                    }
                    Err(e) => {
                        debug!(listener = %state.name, client = %peer,
                            backend = %backend.name, error = %e, "connection ended with an error");
                        (None, None)
                    }
                };
                if let (Some(u), Some(d)) = (up, down) {
                    state.metrics.bytes_counter(&state.name, "in").inc_by(u);
                    state.metrics.bytes_counter(&state.name, "out").inc_by(d);
                }
                state.access_log.log(
                    cfg.access_log,
                    crate::admin::access_log::Entry {
                        listener: state.name.clone(),
                        client: peer.to_string(),
                        kind: "tcp",
                        method: None,
                        path: None,
                        status: None,
                        pool: Some(pool.name.clone()),
                        backend: Some(backend.name.clone()),
                        decision,
                        upstream_ms: Some(connected.as_secs_f64() * 1000.0),
                        total_ms: started.elapsed().as_secs_f64() * 1000.0,
                        bytes_in: up,
                        bytes_out: down,
                    },
                );
                return;
            }
            Ok(Err(e)) => {
                state
                    .metrics
                    .connect_error(&pool.name, &backend.name, "connect");
                warn!(listener = %state.name, pool = %pool.name, backend = %backend.name,
                    error = %e, "connect failed")
            }
            Err(_) => {
                state
                    .metrics
                    .connect_error(&pool.name, &backend.name, "timeout");
                warn!(listener = %state.name, pool = %pool.name, backend = %backend.name,
                    "connect timed out")
            }
        }
        crate::health::report(pool, &backend, crate::health::Outcome::Failure);
        if tried.is_some() {
            break;
        }
        candidate = pool.pick(key, Some(&backend));
        tried = Some(backend);
    }
    warn!(listener = %state.name, client = %peer, pool = %pool.name, "no backend reachable; connection closed");
}
