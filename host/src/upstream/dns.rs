//! Backends given by DNS name are sets: every A/AAAA address of
//! `name:port`, or every target of `srv:_service._proto.name` (port and
//! weight from the record, the lowest priority only), becomes a backend
//! of the pool, named `NAME~ADDRESS` (`NAME~ADDRESS~PORT` for SRV), where
//! NAME is the configured backend's name: URL-safe, for the admin API.
//!
//! [`Dns`] keeps the last good answer of each name. A name is looked up
//! again when its records' TTL ends, never later than its pool's
//! `resolve_interval_ms` and not sooner than [`MIN_REFRESH`] (1 s) unless
//! that interval is shorter; after a failure, within 5 s. A failed
//! or empty answer keeps the last good set and is counted
//! (`switchyard_dns_failures_total`). When a set changes, the daemon
//! rebuilds the pools through the path a configuration reload takes
//! (`daemon::on_change`), so membership changes with minimal disruption:
//! backends that stay keep their connections, health and counters, and
//! requests on a removed one finish.
//!
//! Lookups go through `hickory-resolver`, to the `[dns] servers` or the
//! system's resolvers; its cache is cleared before each refresh, so the
//! answer is the server's, and the TTL is read from the records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::dns::DnsConfig;
use crate::config::{BackendAddress, Config};

/// A name is not looked up more often than this, whatever its TTL
/// (unless its pool's `resolve_interval_ms` is shorter).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The most addresses one name adds to a pool; an answer with more keeps
/// the lowest (sorted), so every instance keeps the same ones, and is
/// logged. A hostile or broken DNS server cannot grow a pool without end.
pub const MAX_MEMBERS: usize = 256;

/// The most SRV targets of one name that are looked up.
pub const MAX_SRV_TARGETS: usize = 64;

/// One address behind a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub socket: SocketAddr,
    /// The SRV record's weight (at least 1), else 1.
    pub weight: u32,
    /// The name a TLS backend's certificate is checked against: the
    /// configured host, or the SRV target.
    pub host: String,
}

struct Entry {
    members: Arc<Vec<Member>>,
    /// When to look it up again.
    due: Instant,
    /// The longest wait between lookups (the pools' `resolve_interval`).
    bound: Duration,
}

/// `switchyard_dns_failures_total{name}` and `_changes_total{name}`.
#[derive(Clone, Default)]
pub struct DnsMetrics {
    pub failures: Family<NameLabel, Counter>,
    pub changes: Family<NameLabel, Counter>,
}

impl DnsMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "dns_failures",
            "DNS lookups of backend names that failed or came back empty (the last good set kept)",
            self.failures.clone(),
        );
        registry.register(
            "dns_changes",
            "Times a backend name's set of addresses changed",
            self.changes.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

/// The resolver and the last good answer of every name in use.
pub struct Dns {
    pub config: DnsConfig,
    resolver: TokioResolver,
    sets: Mutex<HashMap<BackendAddress, Entry>>,
    metrics: DnsMetrics,
}

impl Dns {
    /// A resolver for `config`: its servers, else the system's.
    pub fn new(config: &DnsConfig, metrics: DnsMetrics) -> Result<Dns, String> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("dns: cannot read the system's resolvers: {e}"))?
        } else {
            let servers = config
                .servers
                .iter()
                .map(|s| {
                    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                    udp.port = s.port();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            // Named servers answer alone, as nginx's `resolver` does.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let o = builder.options_mut();
        o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        o.timeout = config.timeout;
        o.attempts = 1;
        let resolver = builder
            .build()
            .map_err(|e| format!("dns: cannot make a resolver: {e}"))?;
        Ok(Dns {
            config: config.clone(),
            resolver,
            sets: Mutex::default(),
            metrics,
        })
    }

    /// The last good members of a name, if it ever resolved.
    pub fn members(&self, name: &BackendAddress) -> Option<Arc<Vec<Member>>> {
        let sets = self.sets.lock().expect("dns sets");
        sets.get(name).map(|e| e.members.clone())
    }

    /// Resolves every name `config` uses that has no answer yet or whose
    /// answer is due; the problems, one per name that never resolved, as
    /// `pools.NAME.backends[I]: ...`. Forgets nothing: a plan that is then
    /// refused must not drop the running configuration's names
    /// ([`Dns::keep_only`] runs at commit).
    pub async fn resolve_config(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        let bounds = bounds(config);
        for (pool, p) in &config.pools {
            for (i, b) in p.backends.iter().enumerate() {
                if !b.address.is_name() {
                    continue;
                }
                let due = {
                    let sets = self.sets.lock().expect("dns sets");
                    sets.get(&b.address).is_none_or(|e| e.due <= Instant::now())
                };
                if due {
                    self.refresh(&b.address, bounds[&b.address]).await;
                }
                if self.members(&b.address).is_none() {
                    problems.push(format!(
                        "pools.{pool}.backends[{i}]: cannot resolve {}",
                        b.address
                    ));
                }
            }
        }
        problems
    }

    /// Forgets the names no pool of `config` (the one committed) uses.
    pub fn keep_only(&self, config: &Config) {
        let used = bounds(config);
        let mut sets = self.sets.lock().expect("dns sets");
        sets.retain(|name, _| used.contains_key(name));
    }

    /// When the next name is due, if any is kept.
    pub fn next_due(&self) -> Option<Instant> {
        let sets = self.sets.lock().expect("dns sets");
        sets.values().map(|e| e.due).min()
    }

    /// Looks up every name that is due; whether any set changed.
    pub async fn refresh_due(&self) -> bool {
        let due: Vec<(BackendAddress, Duration)> = {
            let now = Instant::now();
            let sets = self.sets.lock().expect("dns sets");
            sets.iter()
                .filter(|(_, e)| e.due <= now)
                .map(|(n, e)| (n.clone(), e.bound))
                .collect()
        };
        let mut changed = false;
        for (name, bound) in due {
            changed |= self.refresh(&name, bound).await;
        }
        changed
    }

    /// Looks `name` up once and keeps the answer, or keeps the last good
    /// one; whether its set changed.
    async fn refresh(&self, name: &BackendAddress, bound: Duration) -> bool {
        self.resolver.clear_cache();
        let label = NameLabel {
            name: name.to_string(),
        };
        // One name, SRV targets included, within a few query timeouts: a
        // server that answers 64 targets and then stalls cannot hold the
        // reload lock for minutes.
        let limit = self.config.timeout.saturating_mul(3);
        let looked = tokio::time::timeout(limit, self.lookup(name))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())));
        let (answer, wait) = match looked {
            Ok((members, ttl)) => (Some(members), ttl.clamp(MIN_REFRESH.min(bound), bound)),
            Err(e) => {
                self.metrics.failures.get_or_create(&label).inc();
                crate::warn_limited!(name = %name, error = %e, "dns lookup failed; keeping the last good set");
                (None, bound.min(Duration::from_secs(5)))
            }
        };
        let due = Instant::now() + wait;
        let mut sets = self.sets.lock().expect("dns sets");
        match (sets.get_mut(name), answer) {
            (Some(e), Some(members)) => {
                e.due = due;
                e.bound = bound;
                if *e.members != members {
                    tracing::info!(name = %name, from = e.members.len(), to = members.len(), "dns set changed");
                    self.metrics.changes.get_or_create(&label).inc();
                    e.members = Arc::new(members);
                    return true;
                }
                false
            }
            (Some(e), None) => {
                e.due = due;
                false
            }
            (None, Some(members)) => {
                tracing::info!(name = %name, addresses = members.len(), "dns name resolved");
                sets.insert(
                    name.clone(),
                    Entry {
                        members: Arc::new(members),
                        due,
                        bound,
                    },
                );
                true
            }
            (None, None) => false,
        }
    }

    /// The members of one name now, sorted, with the shortest TTL of
    /// the records; an empty answer is an error.
    async fn lookup(&self, name: &BackendAddress) -> Result<(Vec<Member>, Duration), String> {
        let mut ttl = u32::MAX;
        let mut members = Vec::new();
        match name {
            BackendAddress::Ip(_) => return Err("not a name".into()),
            BackendAddress::Name { host, port } => {
                self.addresses(host, *port, 1, &mut members, &mut ttl)
                    .await?;
            }
            BackendAddress::Srv { name } => {
                let l = self
                    .resolver
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut records = Vec::new();
                for r in l.answers() {
                    if let RData::SRV(s) = &r.data {
                        ttl = ttl.min(r.ttl);
                        records.push((s.priority, s.weight, s.port, s.target.to_string()));
                    }
                }
                // The lowest priority value serves; the others are backups
                // that take over when the records say so.
                let best = records.iter().map(|r| r.0).min();
                let serving = records.iter().filter(|r| Some(r.0) == best);
                for (_, weight, port, target) in serving.take(MAX_SRV_TARGETS) {
                    let target = target.trim_end_matches('.');
                    if let Err(e) = self
                        .addresses(
                            target,
                            *port,
                            (*weight).max(1).into(),
                            &mut members,
                            &mut ttl,
                        )
                        .await
                    {
                        tracing::debug!(srv = %name, target, error = %e, "srv target did not resolve");
                    }
                }
            }
        }
        members.sort();
        members.dedup_by(|a, b| a.socket == b.socket);
        if members.len() > MAX_MEMBERS {
            crate::warn_limited!(name = %name, addresses = members.len(), kept = MAX_MEMBERS, "dns answer over the cap; the rest ignored");
            members.truncate(MAX_MEMBERS);
        }
        if members.is_empty() {
            return Err(format!("{name} has no address"));
        }
        Ok((members, Duration::from_secs(ttl.into())))
    }

    async fn addresses(
        &self,
        host: &str,
        port: u16,
        weight: u32,
        out: &mut Vec<Member>,
        ttl: &mut u32,
    ) -> Result<(), String> {
        let l = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        for r in l.as_lookup().answers() {
            if let Some(ip) = r.data.ip_addr() {
                *ttl = (*ttl).min(r.ttl);
                out.push(Member {
                    socket: SocketAddr::new(ip, port),
                    weight,
                    host: host.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Every name `config`'s pools use, with the shortest `resolve_interval`
/// of the pools that use it.
fn bounds(config: &Config) -> HashMap<BackendAddress, Duration> {
    let mut out: HashMap<BackendAddress, Duration> = HashMap::new();
    for p in config.pools.values() {
        for b in p.backends.iter().filter(|b| b.address.is_name()) {
            let e = out.entry(b.address.clone()).or_insert(p.resolve_interval);
            *e = (*e).min(p.resolve_interval);
        }
    }
    out
}
