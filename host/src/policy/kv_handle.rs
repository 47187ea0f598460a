//! One policy's key-value namespace, on the store `[kv] backend` names:
//! the embedded memory store (`kv.rs`, the default) or Redis
//! (`kv_redis.rs`). The host's `kv` import awaits it: a Redis round trip
//! suspends the guest while the worker serves other requests, and the
//! wait does not count against the policy's `timeout_ms` (`waits.rs`);
//! the hard wall cap still does.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::kv::{KvError, Namespace};
use super::kv_redis::RedisNamespace;

/// A namespace of either store.
#[derive(Clone)]
pub enum KvHandle {
    Memory(Arc<Namespace>, KvMetrics),
    Redis(RedisNamespace, KvMetrics),
}

/// `switchyard_kv_errors_total{backend}` and
/// `switchyard_kv_duration_seconds{backend}` (`memory` or `redis`): failed
/// operations and the time of each.
#[derive(Clone, Debug)]
pub struct KvMetrics {
    pub errors: Family<BackendLabel, Counter>,
    pub duration: Family<BackendLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: &'static str,
}

fn buckets() -> Histogram {
    // 50 µs to ~100 ms: a memory operation is well under the first, a
    // Redis round trip on a LAN a few hundred µs.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 12,
    ))
}

impl Default for KvMetrics {
    fn default() -> Self {
        KvMetrics {
            errors: Family::default(),
            duration: Family::new_with_constructor(buckets),
        }
    }
}

impl KvMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "kv_errors",
            "Policy key-value operations that failed: refused (too large, full) or, on Redis, unreachable or slow",
            self.errors.clone(),
        );
        registry.register(
            "kv_duration_seconds",
            "Time of one policy key-value operation",
            self.duration.clone(),
        );
    }

    fn observe<T>(&self, backend: &'static str, started: Instant, r: &Result<T, KvError>) {
        let label = BackendLabel { backend };
        self.duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.errors.get_or_create(&label).inc();
        }
    }
}

/// Runs one operation, timed and counted under `backend`.
macro_rules! timed {
    ($m:expr, $backend:literal, $op:expr) => {{
        let started = Instant::now();
        let r = $op;
        $m.observe($backend, started, &r);
        r
    }};
}

impl KvHandle {
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            KvHandle::Memory(ns, m) => timed!(m, "memory", Ok(ns.get(key))),
            KvHandle::Redis(r, m) => timed!(m, "redis", r.get(key).await),
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        match self {
            KvHandle::Memory(ns, m) => timed!(m, "memory", ns.set(key, value, ttl_ms)),
            KvHandle::Redis(r, m) => timed!(m, "redis", r.set(key, value, ttl_ms).await),
        }
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        match self {
            KvHandle::Memory(ns, m) => {
                timed!(m, "memory", ns.compare_and_swap(key, expected, new, ttl_ms))
            }
            KvHandle::Redis(r, m) => timed!(
                m,
                "redis",
                r.compare_and_swap(key, expected, new, ttl_ms).await
            ),
        }
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        match self {
            KvHandle::Memory(ns, m) => timed!(m, "memory", ns.increment(key, delta, ttl_ms)),
            KvHandle::Redis(r, m) => timed!(m, "redis", r.increment(key, delta, ttl_ms).await),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self {
            KvHandle::Memory(ns, m) => timed!(m, "memory", Ok(ns.delete(key))),
            KvHandle::Redis(r, m) => timed!(m, "redis", r.delete(key).await),
        }
    }

    /// Whether a call waits on another process (and so suspends).
    pub fn remote(&self) -> bool {
        matches!(self, KvHandle::Redis(..))
    }
}
