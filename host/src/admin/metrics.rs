//! Prometheus metrics, through `prometheus-client` (which adds `_total` to
//! counters itself). Data-path code increments families directly (the
//! per-request ones sharded per worker, `sharded.rs`); state that already
//! lives elsewhere (backend health and in-flight counts) is copied into
//! gauges when `/metrics` is scraped.

use std::sync::Arc;

use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter};

pub use super::sharded::{ShardedCounter, ShardedHistogram};
use crate::policy::{Policy, PolicyEngine};
use crate::upstream::Upstreams;

/// A label value: names of listeners, pools, backends and policies are
/// shared, so building a label set on the request path copies no string.
pub type Label = std::sync::Arc<str>;

/// The empty label (no pool or backend), shared.
pub fn none() -> Label {
    static NONE: std::sync::OnceLock<Label> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Label::from("")).clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Label,
    pub pool: Label,
    pub backend: Label,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerPool {
    pub listener: Label,
    pub pool: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub listener: Label,
    /// `first_byte`, `send`, `request_body`, `upstream_body`.
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: Label,
    pub backend: Label,
}

/// A listener's handles on its policy's metrics (see
/// [`Metrics::policy_handles`]).
#[derive(Clone, Debug)]
pub struct PolicyHandles {
    pub ok: ShardedCounter,
    pub duration: ShardedHistogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyOutcome {
    pub policy: Label,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyVersion {
    pub policy: Label,
    pub version: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectError {
    pub pool: Label,
    pub backend: Label,
    /// `connect` (refused, unreachable), `timeout`, or `reset` (failed after
    /// connecting).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: Label,
    /// `in` (client to backend) or `out` (backend to client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub policy: Label,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `instances`, `memories` or `stacks`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub listener: Label,
    pub pool: Label,
    pub backend: Label,
}

fn latency() -> ShardedHistogram {
    // 100 µs .. ~6.5 s.
    ShardedHistogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn policy_latency() -> ShardedHistogram {
    // 1 µs .. ~65 ms.
    ShardedHistogram::new(exponential_buckets(0.000_001, 2.0, 17))
}

/// Every metric family of the daemon.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, ShardedCounter>,
    pub http_duration: Family<ListenerPool, ShardedHistogram, fn() -> ShardedHistogram>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub udp_flows: Family<TcpLabels, Counter>,
    pub refused: Family<ListenerLabel, Counter>,
    pub tls_handshake_errors: Family<ListenerLabel, Counter>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    pub policy_calls: Family<PolicyOutcome, ShardedCounter>,
    pub policy_duration: Family<PolicyLabel, ShardedHistogram, fn() -> ShardedHistogram>,
    pub policy_version: Family<PolicyVersion, Gauge>,
    backend_healthy: Family<BackendLabels, Gauge>,
    backend_in_flight: Family<BackendLabels, Gauge>,
    policy_instances: Family<PolicyLabel, Gauge>,
    wasm_slots_in_use: Family<SlotLabels, Gauge>,
    wasm_slots: Family<SlotLabels, Gauge>,
    kv_evictions: Family<PolicyLabel, Counter>,
    pub access_log_dropped: Counter,
    pub upstream_connect_errors: Family<ConnectError, Counter>,
    pub bytes: Family<BytesLabels, ShardedCounter>,
    pub policy_reloads: Family<ReloadLabels, Counter>,
    pub timeouts: Family<TimeoutLabels, Counter>,
    pub dns: crate::upstream::dns::DnsMetrics,
    pub kv: crate::policy::kv_handle::KvMetrics,
    pub reloads: super::reloads::Reloads, // Not a metric: for the status page.
}

/// Every family in the registry, with its help text.
fn register(registry: &mut Registry, m: &Metrics) {
    m.dns.register(registry);
    m.kv.register(registry);
    registry.register(
        "http_requests",
        "HTTP requests answered",
        m.http_requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time from request head to response head",
        m.http_duration.clone(),
    );
    registry.register(
        "tcp_connections",
        "TCP connections proxied",
        m.tcp_connections.clone(),
    );
    registry.register("udp_flows", "UDP flows started", m.udp_flows.clone());
    registry.register(
        "max_connections_refused",
        "TCP connections refused, or UDP datagrams of new flows dropped, at max_connections",
        m.refused.clone(),
    );
    registry.register(
        "tls_handshake_errors",
        "TLS handshakes that failed or timed out on HTTPS listeners",
        m.tls_handshake_errors.clone(),
    );
    registry.register(
        "active_connections",
        "Client connections open now",
        m.active_connections.clone(),
    );
    register_policies(registry, m);
}

/// The rest: the policy engine's families, the backends' gauges, the
/// access log's drops, upstream errors and timeouts.
fn register_policies(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "policy_calls",
        "Policy hook calls by outcome",
        m.policy_calls.clone(),
    );
    registry.register(
        "policy_call_duration_seconds",
        "Time of one policy hook call",
        m.policy_duration.clone(),
    );
    registry.register(
        "policy_version_info",
        "The loaded version (content hash) of each policy",
        m.policy_version.clone(),
    );
    registry.register(
        "backend_healthy",
        "1 when the backend may be picked",
        m.backend_healthy.clone(),
    );
    registry.register(
        "backend_in_flight",
        "Requests or connections in flight",
        m.backend_in_flight.clone(),
    );
    registry.register(
        "access_log_dropped",
        "Access-log lines dropped because the writer fell behind",
        m.access_log_dropped.clone(),
    );
    registry.register(
        "upstream_connect_errors",
        "Failures reaching a backend, by kind",
        m.upstream_connect_errors.clone(),
    );
    registry.register("bytes", "Body bytes proxied, by direction", m.bytes.clone());
    registry.register(
        "policy_instances",
        "Instances of each policy that exist now, idle or in a call (at most policies.max_instances per loaded version)",
        m.policy_instances.clone(),
    );
    registry.register(
        "wasm_pool_in_use",
        "Slots of the engine's pooling allocator in use, as wasmtime counts them",
        m.wasm_slots_in_use.clone(),
    );
    registry.register(
        "wasm_pool_slots",
        "Slots of the engine's pooling allocator (policies.total_*)",
        m.wasm_slots.clone(),
    );
    registry.register(
        "kv_evictions",
        "Live KV entries evicted (least recently used first) to keep a namespace within kv_max_entries and kv_max_bytes, since start",
        m.kv_evictions.clone(),
    );
    registry.register(
        "policy_reloads",
        "Policy loads (at start and on change), by result",
        m.policy_reloads.clone(),
    );
    registry.register(
        "timeouts",
        "Connections and requests ended by a timeout, by phase",
        m.timeouts.clone(),
    );
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            tcp_connections: Family::default(),
            udp_flows: Family::default(),
            refused: Family::default(),
            tls_handshake_errors: Family::default(),
            active_connections: Family::default(),
            policy_calls: Family::default(),
            policy_duration: Family::new_with_constructor(policy_latency),
            policy_version: Family::default(),
            backend_healthy: Family::default(),
            backend_in_flight: Family::default(),
            policy_instances: Family::default(),
            wasm_slots_in_use: Family::default(),
            wasm_slots: Family::default(),
            kv_evictions: Family::default(),
            access_log_dropped: Counter::default(),
            upstream_connect_errors: Family::default(),
            bytes: Family::default(),
            policy_reloads: Family::default(),
            timeouts: Family::default(),
            dns: Default::default(),
            kv: Default::default(),
            reloads: Default::default(),
            registry: Registry::default(),
        };
        register(&mut registry, &m);
        Metrics { registry, ..m }
    }
}

/// Keeps a gauge incremented while alive (open connections).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Adds a collector's metrics (the policies' own, `policy::metrics`).
    pub fn add_collector(&mut self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(collector);
    }

    /// Counts one open client connection (or UDP flow) of `listener` until
    /// the guard is dropped.
    pub fn connection_open(&self, listener: &Label) -> GaugeGuard {
        GaugeGuard::new(
            self.active_connections
                .get_or_create(&ListenerLabel {
                    listener: listener.clone(),
                })
                .clone(),
        )
    }

    /// The byte counter of one listener and direction.
    pub fn bytes_counter(&self, listener: &Label, direction: &'static str) -> ShardedCounter {
        self.bytes
            .get_or_create(&BytesLabels {
                listener: listener.clone(),
                direction,
            })
            .clone()
    }

    /// The `ok` call counter and the duration histogram of one policy, for
    /// a listener to hold (one lookup per state, not per request).
    pub fn policy_handles(&self, policy: &Label) -> PolicyHandles {
        PolicyHandles {
            ok: self
                .policy_calls
                .get_or_create(&PolicyOutcome {
                    policy: policy.clone(),
                    outcome: "ok",
                })
                .clone(),
            duration: self
                .policy_duration
                .get_or_create(&PolicyLabel {
                    policy: policy.clone(),
                })
                .clone(),
        }
    }

    /// A listener's request counter and latency histogram, held per label
    /// set (see [`super::request_metrics`]).
    pub fn request_handles(&self, listener: &Label) -> super::request_metrics::RequestHandles {
        super::request_metrics::RequestHandles::new(
            listener.clone(),
            self.http_requests.clone(),
            self.http_duration.clone(),
        )
    }

    /// The counter of one listener's timeouts in one phase.
    pub fn timeout_counter(&self, listener: &Label, phase: &'static str) -> Counter {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                listener: listener.clone(),
                phase,
            })
            .clone()
    }

    /// Counts one policy hook call and its time: through the listener's
    /// `held` handles when it has them (the hot path: no family lookup),
    /// else through the families (L4, and every error).
    pub fn record_policy_call(
        &self,
        policy: &Label,
        held: Option<&PolicyHandles>,
        took: std::time::Duration,
        error: Option<&crate::policy::PolicyError>,
    ) {
        let secs = took.as_secs_f64();
        match held {
            Some(h) => h.duration.observe(secs),
            None => self
                .policy_duration
                .get_or_create(&PolicyLabel {
                    policy: policy.clone(),
                })
                .observe(secs),
        }
        match (held, error) {
            (Some(h), None) => h.ok.inc(),
            _ => self
                .policy_calls
                .get_or_create(&PolicyOutcome {
                    policy: policy.clone(),
                    outcome: error.map_or("ok", |e| e.outcome()),
                })
                .inc(),
        };
    }

    pub fn connect_error(&self, pool: &Label, backend: &Label, kind: &'static str) {
        self.upstream_connect_errors
            .get_or_create(&ConnectError {
                pool: pool.clone(),
                backend: backend.clone(),
                kind,
            })
            .inc();
    }

    /// The Prometheus text exposition, with backend, policy-instance and
    /// engine gauges as of now.
    pub fn render(
        &self,
        upstreams: &Upstreams,
        policies: &[Arc<Policy>],
        engine: Option<&PolicyEngine>,
    ) -> String {
        self.policy_instances.clear();
        for p in policies {
            self.policy_instances
                .get_or_create(&PolicyLabel {
                    policy: p.name.clone(),
                })
                .inc_by(p.live_instances() as i64);
        }
        if let Some(e) = engine {
            for (policy, n) in e.kv.evictions() {
                let c = self.kv_evictions.get_or_create(&PolicyLabel {
                    policy: policy.into(),
                });
                c.inc_by(n.saturating_sub(c.get()));
            }
            let total = e.pool_limits();
            if let Some((instances, memories, stacks)) = e.pool_usage() {
                for (kind, used, have) in [
                    ("instances", instances as i64, total.instances),
                    ("memories", memories as i64, total.memories),
                    ("stacks", stacks as i64, total.stacks),
                ] {
                    self.wasm_slots_in_use
                        .get_or_create(&SlotLabels { kind })
                        .set(used);
                    self.wasm_slots
                        .get_or_create(&SlotLabels { kind })
                        .set(i64::from(have));
                }
            }
        }
        self.backend_healthy.clear();
        self.backend_in_flight.clear();
        for (_, p) in upstreams.pools() {
            for b in &p.backends {
                let l = BackendLabels {
                    pool: p.name.clone(),
                    backend: b.name.clone(),
                };
                self.backend_healthy
                    .get_or_create(&l)
                    .set(i64::from(crate::balance::Candidate::available(&**b)));
                self.backend_in_flight
                    .get_or_create(&l)
                    .set(i64::from(crate::balance::Candidate::in_flight(&**b)));
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
