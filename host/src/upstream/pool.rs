//! Pools and backends at run time: live health and in-flight counts, the
//! pool's balancer, and the upstream HTTP client. Implements the policy's
//! [`Directory`] so policies see exactly what the balancer sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::balance::{self, Balancer, Candidate};
use crate::config::{BackendConfig, Config, PoolConfig};
use crate::policy::{Directory, types};

use super::client::{self, UpstreamClient};

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// `ip:port` as an authority, for upstream URIs.
    pub authority: String,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    max_in_flight: Option<u32>,
}

impl Backend {
    fn new(c: &BackendConfig, max_in_flight: Option<u32>) -> Self {
        Backend {
            name: c.name.clone(),
            address: c.address,
            weight: c.weight,
            authority: c.address.to_string(),
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            max_in_flight,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }

    /// Counts one request or connection in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn saturated(&self) -> bool {
        self.max_in_flight
            .is_some_and(|m| self.in_flight.load(Ordering::Relaxed) >= m)
    }
}

impl Candidate for Backend {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn available(&self) -> bool {
        self.healthy() && !self.saturated()
    }
}

/// Decrements a backend's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool at run time.
pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub backends: Vec<Arc<Backend>>,
    balancer: Box<dyn Balancer>,
    pub client: UpstreamClient,
}

impl Pool {
    pub fn new(name: &str, config: &PoolConfig) -> Self {
        let named: Vec<(String, u32)> = config
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.weight))
            .collect();
        Pool {
            name: name.to_owned(),
            backends: config
                .backends
                .iter()
                .map(|b| Arc::new(Backend::new(b, config.max_requests_per_backend)))
                .collect(),
            balancer: balance::for_algorithm(config.algorithm, &named),
            client: client::build(config),
            config: config.clone(),
        }
    }

    /// The pool's algorithm picks an available backend, other than
    /// `exclude` (a backend that just failed).
    pub fn pick(&self, key: Option<u64>, exclude: Option<&Arc<Backend>>) -> Option<Arc<Backend>> {
        let refs: Vec<&dyn Candidate> = self
            .backends
            .iter()
            .map(|b| &**b as &dyn Candidate)
            .collect();
        let exclude = exclude.and_then(|x| self.backends.iter().position(|b| Arc::ptr_eq(b, x)));
        self.balancer
            .pick(&refs, key, exclude)
            .map(|i| self.backends[i].clone())
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// Every pool of the running configuration.
#[derive(Default)]
pub struct Upstreams {
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Upstreams {
    pub fn new(config: &Config) -> Self {
        Self::rebuild(None, config)
    }

    /// The pools of `config`, keeping every pool of `old` whose settings did
    /// not change (its connections, counters and health carry over).
    pub fn rebuild(old: Option<&Upstreams>, config: &Config) -> Self {
        Upstreams {
            pools: config
                .pools
                .iter()
                .map(|(name, p)| {
                    let kept = old
                        .and_then(|o| o.pools.get(name))
                        .filter(|existing| existing.config == *p)
                        .cloned();
                    (
                        name.clone(),
                        kept.unwrap_or_else(|| Arc::new(Pool::new(name, p))),
                    )
                })
                .collect(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }
}

impl Directory for Upstreams {
    fn backends(&self, pool: &str) -> Option<Vec<types::Backend>> {
        self.pools.get(pool).map(|p| {
            p.backends
                .iter()
                .map(|b| types::Backend {
                    name: b.name.clone(),
                    address: b.authority.clone(),
                    weight: b.weight,
                    healthy: b.available(),
                    in_flight: b.in_flight(),
                })
                .collect()
        })
    }

    fn check(&self, pool: &str, backend: Option<&str>) -> Result<(), String> {
        let Some(p) = self.pools.get(pool) else {
            let names: Vec<&str> = self.pools.keys().map(String::as_str).collect();
            return Err(format!(
                "no pool named {pool:?} (pools: {})",
                names.join(", ")
            ));
        };
        match backend {
            Some(b) if p.backend(b).is_none() => {
                let names: Vec<&str> = p.backends.iter().map(|x| x.name.as_str()).collect();
                Err(format!(
                    "pool {pool:?} has no backend named {b:?} (backends: {})",
                    names.join(", ")
                ))
            }
            _ => Ok(()),
        }
    }
}
