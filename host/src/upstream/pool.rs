//! Pools and backends at run time: live health and in-flight counts, the
//! pool's balancer, and the upstream HTTP client. Implements the policy's
//! [`Directory`] so policies see exactly what the balancer sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::balance::{self, Balancer, Candidate};

use super::budget::RetryBudget;
use super::health::Health;
use crate::config::{BackendAddress, Config, PoolConfig};
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

/// One backend of a pool: a configured IP address, or one address of a
/// configured DNS name (`dns.rs`).
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    /// As configured: an IP address or a DNS name.
    pub configured: BackendAddress,
    pub weight: u32,
    /// The name its TLS certificate is checked against: the configured
    /// host (or SRV target), or the IP address.
    pub tls_name: String,
    resolved: Arc<Resolved>,
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

/// A backend a pool will have: a configured one, or one address of a
/// configured name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub configured: BackendAddress,
    pub socket: SocketAddr,
    pub weight: u32,
    pub tls_name: String,
}

/// The backends of `config` as `dns` last resolved its names, in order.
pub fn members(config: &PoolConfig, dns: Option<&super::dns::Dns>) -> Vec<Member> {
    let mut out = Vec::new();
    for b in &config.backends {
        match &b.address {
            BackendAddress::Ip(a) => out.push(Member {
                name: b.name.clone(),
                configured: b.address.clone(),
                socket: *a,
                weight: b.weight,
                tls_name: a.ip().to_string(),
            }),
            named => {
                let set = dns.and_then(|d| d.members(named)).unwrap_or_default();
                let srv = matches!(named, BackendAddress::Srv { .. });
                out.extend(set.iter().map(|m| Member {
                    name: if srv {
                        format!("{}~{}~{}", b.name, m.socket.ip(), m.socket.port())
                    } else {
                        format!("{}~{}", b.name, m.socket.ip())
                    },
                    configured: b.address.clone(),
                    socket: m.socket,
                    weight: b.weight.saturating_mul(m.weight),
                    tls_name: m.host.clone(),
                }));
            }
        }
    }
    out
}

impl Backend {
    fn new(m: &Member, max_in_flight: Option<u32>) -> Self {
        Backend {
            name: m.name.as_str().into(),
            configured: m.configured.clone(),
            weight: m.weight,
            tls_name: m.tls_name.clone(),
            resolved: resolved(m.socket),
            in_flight: AtomicU32::new(0),
            total: std::sync::atomic::AtomicU64::new(0),
            health: Health::default(),
            drained: std::sync::atomic::AtomicBool::new(false),
            max_in_flight,
        }
    }

    /// The address to connect to (a DNS name's backends each have one of
    /// its addresses; a new answer makes new backends, `dns.rs`).
    pub fn address(&self) -> &Arc<Resolved> {
        &self.resolved
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
        self.healthy() && !self.drained() && !self.saturated()
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
    /// What `backends` were made from, to tell whether a new DNS answer
    /// changes the pool.
    members: Vec<Member>,
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
    /// A pool of `config` with the backends `members` (`members()`);
    /// fails only on the TLS files of a `tls` pool. A backend of `old`
    /// with the same name, address and weight carries over, with its
    /// health, counters and drain state (a DNS set that changed, a
    /// reload); requests running on the others finish.
    pub fn new(
        name: &str,
        config: &PoolConfig,
        members: &[Member],
        old: Option<&Pool>,
    ) -> Result<Self, String> {
        let named: Vec<(String, u32)> =
            members.iter().map(|m| (m.name.clone(), m.weight)).collect();
        let backends: Vec<Arc<Backend>> = members
            .iter()
            .map(|m| {
                old.and_then(|o| o.backend(&m.name))
                    .filter(|b| {
                        b.weight == m.weight
                            && b.configured == m.configured
                            && b.address().socket == m.socket
                            && old.is_some_and(|o| o.config == *config)
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(m, config.max_requests_per_backend)))
            })
            .collect();
        Ok(Pool {
            name: name.into(),
            client: client::build(name, config, &backends)?,
            members: members.to_vec(),
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
    /// The pools of `config` with IP backends only (names: none yet).
    pub fn new(config: &Config) -> Result<Self, Vec<String>> {
        Self::rebuild(None, config, None)
    }

    /// The pools of `config`, its names as `dns` last resolved them,
    /// keeping every pool of `old` whose settings and members did not
    /// change (its connections, counters and health carry over) and, in a
    /// pool that changed, every backend that stayed. Fails with every
    /// pool whose TLS files cannot be used.
    pub fn rebuild(
        old: Option<&Upstreams>,
        config: &Config,
        dns: Option<&super::dns::Dns>,
    ) -> Result<Self, Vec<String>> {
        let mut pools = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, p) in &config.pools {
            let members = members(p, dns);
            let previous = old.and_then(|o| o.pools.get(name));
            let kept = previous
                .filter(|existing| existing.config == *p && existing.members == members)
                .cloned();
            let made = || Pool::new(name, p, &members, previous.map(|x| &**x)).map(Arc::new);
            match kept.map_or_else(made, Ok) {
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
}

impl Directory for Upstreams {
    fn backends(&self, pool: &str) -> Option<Vec<types::Backend>> {
        self.pools.get(pool).map(|p| {
            p.backends
                .iter()
                .map(|b| types::Backend {
                    name: b.name.to_string(),
                    address: b.address().authority.clone(),
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
