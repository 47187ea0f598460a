//! Pools and backends at run time: live health and in-flight counts, the
//! pool's balancer, and the upstream HTTP client. Implements the policy's
//! [`Directory`] so policies see exactly what the balancer sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::balance::{self, Balancer, Candidate};
use arc_swap::ArcSwapOption;

use super::budget::RetryBudget;
use super::health::Health;
use crate::config::{BackendAddress, BackendConfig, Config, PoolConfig};
use crate::policy::{Directory, types};

use super::client::{self, UpstreamClient};

/// Where a backend is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub socket: SocketAddr,
    /// `ip:port` as an authority, for upstream URIs.
    pub authority: String,
    /// The same, parsed once: every request's upstream URI clones it (a
    /// reference count) instead of parsing and copying the string
    /// (bench/count: ~150 instructions per request).
    pub uri_authority: http::uri::Authority,
}

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    /// As configured: an IP address or a DNS name.
    pub configured: BackendAddress,
    pub weight: u32,
    /// `None` until a DNS name has resolved.
    resolved: ArcSwapOption<Resolved>,
    in_flight: AtomicU32,
    /// Requests (L7) or connections (L4) sent to it since it was created.
    total: std::sync::atomic::AtomicU64,
    /// Active checks and passive ejection (`health.rs`).
    pub health: Health,
    /// Set by the admin API: no new requests or connections.
    drained: std::sync::atomic::AtomicBool,
    max_in_flight: Option<u32>,
}

fn resolved(socket: SocketAddr) -> Arc<Resolved> {
    let authority = socket.to_string();
    let uri_authority =
        http::uri::Authority::from_maybe_shared(bytes::Bytes::from(authority.clone()))
            .expect("a socket address is an authority");
    Arc::new(Resolved {
        socket,
        authority,
        uri_authority,
    })
}

impl Backend {
    fn new(c: &BackendConfig, max_in_flight: Option<u32>) -> Self {
        let now = match &c.address {
            BackendAddress::Ip(a) => Some(resolved(*a)),
            BackendAddress::Name { .. } => None,
        };
        Backend {
            name: c.name.as_str().into(),
            configured: c.address.clone(),
            weight: c.weight,
            resolved: ArcSwapOption::new(now),
            in_flight: AtomicU32::new(0),
            total: std::sync::atomic::AtomicU64::new(0),
            health: Health::default(),
            drained: std::sync::atomic::AtomicBool::new(false),
            max_in_flight,
        }
    }

    /// The address to connect to now (`None`: a name not resolved yet).
    pub fn address(&self) -> Option<Arc<Resolved>> {
        self.resolved.load_full()
    }

    /// Resolves a DNS name again (the first IPv4 address, else the first
    /// address, wins); IP backends and
    /// failed lookups keep what they had. Returns the error of a failed
    /// lookup.
    pub async fn resolve(&self) -> Result<(), String> {
        let BackendAddress::Name { host, port } = &self.configured else {
            return Ok(());
        };
        match tokio::net::lookup_host((host.as_str(), *port)).await {
            // IPv4 preferred when a name has both (Envoy's V4_PREFERRED).
            Ok(addrs) => match addrs.min_by_key(|a| a.is_ipv6()) {
                Some(a) => {
                    let new = resolved(a);
                    if self.address().as_deref() != Some(&*new) {
                        tracing::info!(backend = %self.name, host = %host, address = %a, "backend resolved");
                        self.resolved.store(Some(new));
                    }
                    Ok(())
                }
                None => Err(format!("{host} has no address")),
            },
            Err(e) => Err(format!("cannot resolve {host}: {e}")),
        }
    }

    /// Passing its checks and not ejected.
    pub fn healthy(&self) -> bool {
        self.health.checks_pass() && !self.health.ejected(&self.name)
    }

    /// Requests or connections sent to it so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drained backends get nothing new; what runs on them finishes.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Sets the active checks' verdict (tests and the admin API use it too).
    pub fn set_healthy(&self, up: bool) {
        self.health.set_checks_pass(up);
    }

    /// Counts one request or connection in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
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
        self.healthy() && !self.drained() && !self.saturated() && self.resolved.load().is_some()
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
    pub name: Arc<str>,
    pub config: PoolConfig,
    pub backends: Vec<Arc<Backend>>,
    balancer: Box<dyn Balancer>,
    pub client: UpstreamClient,
    checks_started: std::sync::atomic::AtomicBool,
    budget: RetryBudget,
}

/// A backend seen through a retry: unavailable if already tried.
struct Untried<'a> {
    backend: &'a Backend,
    tried: bool,
}

impl Candidate for Untried<'_> {
    fn weight(&self) -> u32 {
        self.backend.weight()
    }
    fn in_flight(&self) -> u32 {
        self.backend.in_flight()
    }
    fn available(&self) -> bool {
        !self.tried && self.backend.available()
    }
}

impl Pool {
    /// A pool of `config`; fails only on the TLS files of a `tls` pool.
    pub fn new(name: &str, config: &PoolConfig) -> Result<Self, String> {
        let named: Vec<(String, u32)> = config
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.weight))
            .collect();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, config.max_requests_per_backend)))
            .collect();
        Ok(Pool {
            name: name.into(),
            client: client::build(name, config, &backends)?,
            backends,
            balancer: balance::for_algorithm(config.algorithm, &named),
            config: config.clone(),
            checks_started: std::sync::atomic::AtomicBool::new(false),
            budget: RetryBudget::default(),
        })
    }

    /// Counts a request toward the retry budget.
    pub fn count_request(&self) {
        self.budget.request();
    }

    /// Whether the retry budget allows one more resend of a request that
    /// reached a backend (and counts it).
    pub fn may_resend(&self) -> bool {
        let r = &self.config.retry;
        self.budget.try_resend(r.budget_percent, r.min_per_second)
    }

    /// Where a request or connection goes first: the backend a policy
    /// named, when it is available, else the one the pool's algorithm
    /// picks. L4 and L7 both choose so.
    pub fn choose(&self, named: Option<&str>, key: Option<u64>) -> Option<Arc<Backend>> {
        named
            .and_then(|n| self.backend(n))
            .filter(|b| Candidate::available(&***b))
            .cloned()
            .or_else(|| self.pick(key, &[]))
    }

    /// Where an attempt goes after the backends in `tried` failed: one not
    /// tried yet, picked by the pool's algorithm; `None` once `resends`
    /// resends were made, or when every backend was tried. L4 resends a
    /// connection whose connect failed once; L7 resends up to the pool's
    /// `retries` (what `retry_on` and the retry budget allow is the
    /// caller's to check).
    pub fn next_attempt(
        &self,
        key: Option<u64>,
        tried: &[Arc<Backend>],
        resends: usize,
    ) -> Option<Arc<Backend>> {
        if tried.len() > resends {
            return None;
        }
        self.pick(key, tried)
    }

    /// The pool's algorithm picks an available backend not in `tried`.
    fn pick(&self, key: Option<u64>, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let picked = if tried.is_empty() {
            let refs: Vec<&dyn Candidate> = self
                .backends
                .iter()
                .map(|b| &**b as &dyn Candidate)
                .collect();
            self.balancer.pick(&refs, key, None)
        } else {
            let views: Vec<Untried<'_>> = self
                .backends
                .iter()
                .map(|b| Untried {
                    backend: b,
                    tried: tried.iter().any(|t| Arc::ptr_eq(t, b)),
                })
                .collect();
            let refs: Vec<&dyn Candidate> = views.iter().map(|v| v as &dyn Candidate).collect();
            self.balancer.pick(&refs, key, None)
        };
        picked.map(|i| self.backends[i].clone())
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| *b.name == *name)
    }
}

/// Every pool of the running configuration.
#[derive(Default)]
pub struct Upstreams {
    /// By name, in order (the admin API lists them so).
    pools: BTreeMap<String, Arc<Pool>>,
    /// The same pools, for the look-up of every request: a hash of the
    /// name instead of string comparisons down the tree.
    index: std::collections::HashMap<String, Arc<Pool>, foldhash::fast::RandomState>,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Self, Vec<String>> {
        Self::rebuild(None, config)
    }

    /// The pools of `config`, keeping every pool of `old` whose settings did
    /// not change (its connections, counters and health carry over). Fails
    /// with every pool whose TLS files cannot be used.
    pub fn rebuild(old: Option<&Upstreams>, config: &Config) -> Result<Self, Vec<String>> {
        let mut pools = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, p) in &config.pools {
            let kept = old
                .and_then(|o| o.pools.get(name))
                .filter(|existing| existing.config == *p)
                .cloned();
            match kept.map_or_else(|| Pool::new(name, p).map(Arc::new), Ok) {
                Ok(pool) => {
                    pools.insert(name.clone(), pool);
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            let index = pools.iter().map(|(n, p)| (n.clone(), p.clone())).collect();
            Ok(Upstreams { pools, index })
        } else {
            Err(problems)
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.index.get(name)
    }

    /// Every pool by name.
    pub fn pools(&self) -> impl Iterator<Item = (&String, &Arc<Pool>)> {
        self.pools.iter()
    }

    /// Starts the active health checks of every pool that has them and
    /// whose checks are not running yet.
    pub fn start_health_checks(&self) {
        for pool in self.pools.values() {
            if !pool.checks_started.swap(true, Ordering::Relaxed) {
                super::health::start_checks(pool);
            }
        }
    }

    /// Resolves every backend given by DNS name; the problems, one per
    /// backend that did not resolve, as `pools.NAME.backends[I]: ...`.
    pub async fn resolve(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, pool) in &self.pools {
            for (i, b) in pool.backends.iter().enumerate() {
                if let Err(e) = b.resolve().await {
                    problems.push(format!("pools.{name}.backends[{i}]: {e}"));
                }
            }
        }
        problems
    }

    /// The shortest re-resolve interval of the pools that have names.
    pub fn resolve_interval(&self) -> Option<std::time::Duration> {
        self.pools
            .values()
            .filter(|p| {
                p.backends
                    .iter()
                    .any(|b| matches!(b.configured, BackendAddress::Name { .. }))
            })
            .map(|p| p.config.resolve_interval)
            .min()
    }
}

impl Directory for Upstreams {
    fn backends(&self, pool: &str) -> Option<Vec<types::Backend>> {
        self.pools.get(pool).map(|p| {
            p.backends
                .iter()
                .map(|b| types::Backend {
                    name: b.name.to_string(),
                    address: b
                        .address()
                        .map(|r| r.authority.clone())
                        .unwrap_or_else(|| b.configured.to_string()),
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
                let names: Vec<&str> = p.backends.iter().map(|x| &*x.name).collect();
                Err(format!(
                    "pool {pool:?} has no backend named {b:?} (backends: {})",
                    names.join(", ")
                ))
            }
            _ => Ok(()),
        }
    }
}
