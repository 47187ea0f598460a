//! The process-wide key-value store behind the `kv` host import.
//!
//! One namespace per policy name, shared by every instance and every loaded
//! version of that policy (so a rate limiter's buckets survive a reload).
//! Each namespace is a mutex-guarded LRU map (the `lru` crate): every
//! operation takes the lock once, which makes get/set/compare-and-swap/
//! increment atomic with respect to each other.
//!
//! A namespace is bounded by entries and by bytes (`kv_max_entries`,
//! `kv_max_bytes`). A new key that would pass either evicts the least
//! recently used entries, as nginx's `limit_req` zones do, and counts
//! them in `switchyard_kv_evictions_total`: a flood of distinct keys (a
//! rate limiter keyed by client address under a spoofed-source flood)
//! costs the oldest keys, never the store. Expired entries are dropped
//! when read, and every write also looks at the two least recently used
//! entries and drops them when expired: the sweep is spread over the
//! operations, never one stop-the-world scan.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

pub use crate::config::limits::KvLimits;

/// Keys and values larger than these are refused (the call traps).
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// What one entry is charged besides its key and value: the map's own
/// bookkeeping, so that a million empty keys are not free.
const ENTRY_OVERHEAD: usize = 64;

/// Expired entries looked at, from the least recently used end, per write.
const SWEEP_PER_WRITE: usize = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("kv key is {0} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLarge(usize),
    #[error("kv value is {0} bytes, the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("kv entry of {0} bytes is larger than the namespace's kv_max_bytes")]
    TooLargeForNamespace(usize),
    /// A remote store that is down, slow or in error (`kv_redis.rs`).
    #[error("{0}")]
    Unavailable(String),
}

/// All namespaces of the process: in memory, or (`[kv] backend =
/// "redis"`) on Redis.
#[derive(Default)]
pub struct KvStore {
    limits: KvLimits,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
    redis: Option<Arc<super::kv_redis::RedisKv>>,
    metrics: super::kv_handle::KvMetrics,
}

impl KvStore {
    /// The store `backend` names; fails only on a Redis URL it cannot use.
    pub fn new(
        limits: KvLimits,
        backend: &crate::config::kv::KvBackend,
        metrics: super::kv_handle::KvMetrics,
    ) -> Result<Self, String> {
        use crate::config::kv::KvBackend;
        let redis = match backend {
            KvBackend::Memory => None,
            KvBackend::Redis(s) => Some(Arc::new(super::kv_redis::RedisKv::new(s)?)),
        };
        Ok(KvStore {
            limits,
            namespaces: Mutex::default(),
            redis,
            metrics,
        })
    }

    /// The namespace of one policy, created on first use.
    pub fn namespace(&self, policy: &str) -> super::kv_handle::KvHandle {
        use super::kv_handle::KvHandle;
        if let Some(r) = &self.redis {
            return KvHandle::Redis(r.namespace(policy), self.metrics.clone());
        }
        let mut map = self.namespaces.lock().expect("kv store lock");
        let ns = map
            .entry(policy.to_owned())
            .or_insert_with(|| Arc::new(Namespace::new(self.limits)))
            .clone();
        KvHandle::Memory(ns, self.metrics.clone())
    }

    /// Entries evicted to make room, by namespace, since start.
    pub fn evictions(&self) -> Vec<(String, u64)> {
        let map = self.namespaces.lock().expect("kv store lock");
        map.iter()
            .map(|(name, ns)| (name.clone(), ns.evictions()))
            .collect()
    }
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

struct Inner {
    map: LruCache<String, Entry>,
    bytes: usize,
}

/// One policy's keys.
pub struct Namespace {
    limits: KvLimits,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::new(KvLimits::default())
    }
}

/// When an entry set now with `ttl_ms` expires; a TTL too long for the
/// clock (`u64::MAX` as "never") is no expiry, never a panic.
fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}

pub(super) fn check(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLarge(key.len()));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLarge(value.len()));
    }
    Ok(())
}

impl Inner {
    /// The live entry of `key`, marked used; an expired one is dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.peek(key).is_some_and(|e| !e.live(now)) {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.map.pop(key) {
            Some(e) => {
                self.bytes -= cost(key, &e.value);
                true
            }
            None => false,
        }
    }

    /// Drops up to `SWEEP_PER_WRITE` expired entries from the least
    /// recently used end.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_PER_WRITE {
            match self.map.peek_lru() {
                Some((_, e)) if !e.live(now) => {
                    let (k, e) = self.map.pop_lru().expect("peeked");
                    self.bytes -= cost(&k, &e.value);
                }
                _ => return,
            }
        }
    }
}

impl Namespace {
    pub fn new(limits: KvLimits) -> Self {
        Namespace {
            limits,
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            evicted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("kv namespace lock")
    }

    /// Entries evicted to make room since start.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Stores `entry` under `key`, evicting the least recently used
    /// entries while the namespace would pass a cap.
    fn insert(
        &self,
        inner: &mut Inner,
        key: &str,
        entry: Entry,
        now: Instant,
    ) -> Result<(), KvError> {
        let need = cost(key, &entry.value);
        if need > self.limits.max_bytes {
            return Err(KvError::TooLargeForNamespace(need));
        }
        inner.sweep(now);
        inner.remove(key);
        let max_entries = NonZeroUsize::new(self.limits.max_entries).map_or(1, NonZeroUsize::get);
        while inner.map.len() >= max_entries || inner.bytes + need > self.limits.max_bytes {
            let Some((k, e)) = inner.map.pop_lru() else {
                break;
            };
            inner.bytes -= cost(&k, &e.value);
            if e.live(now) {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.bytes += need;
        inner.map.put(key.to_owned(), entry);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock().live(key, now).map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        check(key, &value)?;
        let now = Instant::now();
        let entry = Entry {
            value,
            expires: expiry(now, ttl_ms),
        };
        let mut inner = self.lock();
        self.insert(&mut inner, key, entry, now)
    }

    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        check(key, &new)?;
        let now = Instant::now();
        let mut inner = self.lock();
        let current = inner.live(key, now).map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        let entry = Entry {
            value: new,
            expires: expiry(now, ttl_ms),
        };
        self.insert(&mut inner, key, entry, now)?;
        Ok(true)
    }

    /// Counters are stored as their decimal text, so `get` reads them too.
    pub fn increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        check(key, &[])?;
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(entry) = inner.live(key, now) {
            let current = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            let next = current.wrapping_add(delta);
            let text = next.to_string().into_bytes();
            let grew = text.len() as isize - entry.value.len() as isize;
            entry.value = text;
            inner.bytes = inner.bytes.saturating_add_signed(grew);
            return Ok(next);
        }
        let entry = Entry {
            value: delta.to_string().into_bytes(),
            expires: expiry(now, ttl_ms),
        };
        self.insert(&mut inner, key, entry, now)?;
        Ok(delta)
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let present = inner.live(key, now).is_some();
        inner.remove(key);
        present
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_are_separate_and_shared_by_name() {
        let store = KvStore::default();
        let a = store.namespace("a");
        let b = store.namespace("b");
        a.set("k", b"1".to_vec(), None).await.unwrap();
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(
            store.namespace("a").get("k").await.unwrap(),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn compare_and_swap_only_stores_on_match() {
        let ns = Namespace::default();
        assert!(ns.compare_and_swap("k", None, b"1".to_vec(), None).unwrap());
        assert!(!ns.compare_and_swap("k", None, b"2".to_vec(), None).unwrap());
        assert!(
            !ns.compare_and_swap("k", Some(b"0"), b"2".to_vec(), None)
                .unwrap()
        );
        assert!(
            ns.compare_and_swap("k", Some(b"1"), b"2".to_vec(), None)
                .unwrap()
        );
        assert_eq!(ns.get("k"), Some(b"2".to_vec()));
    }

    #[test]
    fn increment_counts_from_zero_and_reads_back_as_text() {
        let ns = Namespace::default();
        assert_eq!(ns.increment("c", 5, None).unwrap(), 5);
        assert_eq!(ns.increment("c", -2, None).unwrap(), 3);
        assert_eq!(ns.get("c"), Some(b"3".to_vec()));
        ns.set("c", b"not a number".to_vec(), None).unwrap();
        assert_eq!(ns.increment("c", 1, None).unwrap(), 1);
    }

    #[test]
    fn ttl_expires_entries() {
        let ns = Namespace::default();
        ns.set("k", b"v".to_vec(), Some(0)).unwrap();
        assert_eq!(ns.get("k"), None);
        // An expired key counts as absent for compare-and-swap and increment.
        ns.set("k", b"v".to_vec(), Some(0)).unwrap();
        assert!(
            ns.compare_and_swap("k", None, b"w".to_vec(), Some(0))
                .unwrap()
        );
        assert_eq!(ns.increment("k", 2, Some(60_000)).unwrap(), 2);
        assert!(ns.delete("k"));
        assert!(!ns.delete("k"));
    }

    #[test]
    fn expired_entries_are_swept_a_few_per_write() {
        let ns = Namespace::default();
        for i in 0..3000 {
            ns.set(&format!("k{i}"), vec![], Some(0)).unwrap();
        }
        // Each write dropped the expired ones at the old end before it.
        assert!(ns.len() <= 2, "expired entries were kept: {}", ns.len());
    }

    #[test]
    fn a_full_namespace_evicts_its_least_recently_used_keys() {
        let ns = Namespace::new(KvLimits {
            max_entries: 1000,
            max_bytes: 1 << 20,
        });
        for i in 0..1000 {
            ns.set(&format!("k{i}"), b"v".to_vec(), None).unwrap();
        }
        // k0 is used, so k1 is now the least recently used.
        assert!(ns.get("k0").is_some());
        ns.set("new", b"v".to_vec(), None).unwrap();
        assert_eq!(ns.len(), 1000);
        assert!(ns.get("k0").is_some(), "a recently used key was evicted");
        assert!(ns.get("k1").is_none(), "the least recently used key stayed");
        assert_eq!(ns.evictions(), 1);
        // The byte cap: 64 KiB values into a 1 MiB namespace.
        for i in 0..100 {
            ns.set(&format!("big{i}"), vec![0; MAX_VALUE_BYTES], None)
                .unwrap();
        }
        assert!(ns.bytes() <= 1 << 20, "{} bytes", ns.bytes());
        assert!(ns.get("big99").is_some());
        ns.delete("big99");
        assert!(ns.bytes() <= 1 << 20);
    }

    #[test]
    fn a_ttl_too_long_for_the_clock_is_no_expiry() {
        let ns = Namespace::default();
        ns.set("k", b"v".to_vec(), Some(u64::MAX)).unwrap();
        assert_eq!(ns.increment("n", 1, Some(u64::MAX)).unwrap(), 1);
        assert!(
            ns.compare_and_swap("c", None, b"1".to_vec(), Some(u64::MAX))
                .unwrap()
        );
        assert_eq!(ns.get("k"), Some(b"v".to_vec()));
    }

    #[test]
    fn byte_accounting_follows_every_operation() {
        let ns = Namespace::default();
        ns.set("a", b"12345".to_vec(), None).unwrap();
        assert_eq!(ns.bytes(), 1 + 5 + ENTRY_OVERHEAD);
        ns.set("a", b"1".to_vec(), None).unwrap();
        assert_eq!(ns.bytes(), 1 + 1 + ENTRY_OVERHEAD);
        assert_eq!(ns.increment("a", 99, None).unwrap(), 100);
        assert_eq!(ns.bytes(), 1 + 3 + ENTRY_OVERHEAD);
        assert!(
            ns.compare_and_swap("a", Some(b"100"), b"xy".to_vec(), None)
                .unwrap()
        );
        assert_eq!(ns.bytes(), 1 + 2 + ENTRY_OVERHEAD);
        ns.delete("a");
        assert_eq!(ns.bytes(), 0);
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let ns = Namespace::default();
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            ns.set(&key, vec![], None),
            Err(KvError::KeyTooLarge(key.len()))
        );
        let value = vec![0; MAX_VALUE_BYTES + 1];
        assert_eq!(
            ns.set("k", value, None),
            Err(KvError::ValueTooLarge(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let ns = Arc::new(Namespace::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ns = ns.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        ns.increment("c", 1, None).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ns.get("c"), Some(b"4000".to_vec()));
    }
}
