//! The process-wide key-value store behind the `kv` host import.
//!
//! One namespace per policy name, shared by every instance and every loaded
//! version of that policy (so a rate limiter's buckets survive a reload).
//! Each namespace is a mutex-guarded map: every operation takes the lock
//! once, which makes get/set/compare-and-swap/increment atomic with respect
//! to each other. Expired entries are dropped lazily on access and by a
//! sweep once the map has doubled since the last one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys and values larger than these are refused (the call traps), so a
/// runaway policy cannot grow the host's memory without bound through the
/// store.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Entries per namespace; a `set` of a new key beyond it evicts nothing and
/// traps instead.
pub const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("kv key is {0} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLarge(usize),
    #[error("kv value is {0} bytes, the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("kv namespace is full ({MAX_ENTRIES} entries)")]
    Full,
}

/// All namespaces of the process.
#[derive(Default)]
pub struct KvStore {
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
}

impl KvStore {
    /// The namespace of one policy, created on first use.
    pub fn namespace(&self, policy: &str) -> Arc<Namespace> {
        let mut map = self.namespaces.lock().expect("kv store lock");
        map.entry(policy.to_owned()).or_default().clone()
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

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    sweep_at: usize,
}

/// One policy's keys.
#[derive(Default)]
pub struct Namespace {
    inner: Mutex<Inner>,
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

fn check(key: &str, value: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLarge(key.len()));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLarge(value.len()));
    }
    Ok(())
}

impl Inner {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        match self.map.get(key) {
            Some(e) if !e.live(now) => {
                self.map.remove(key);
                None
            }
            _ => self.map.get_mut(key),
        }
    }

    fn insert(&mut self, key: &str, entry: Entry, now: Instant) -> Result<(), KvError> {
        if !self.map.contains_key(key) {
            if self.map.len() >= self.sweep_at.max(1024) {
                self.map.retain(|_, e| e.live(now));
                self.sweep_at = self.map.len() * 2;
            }
            if self.map.len() >= MAX_ENTRIES {
                return Err(KvError::Full);
            }
        }
        self.map.insert(key.to_owned(), entry);
        Ok(())
    }
}

impl Namespace {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("kv namespace lock")
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
        self.lock().insert(key, entry, now)
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
        inner.insert(key, entry, now)?;
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
            entry.value = next.to_string().into_bytes();
            return Ok(next);
        }
        let entry = Entry {
            value: delta.to_string().into_bytes(),
            expires: expiry(now, ttl_ms),
        };
        inner.insert(key, entry, now)?;
        Ok(delta)
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let present = inner.live(key, now).is_some();
        inner.map.remove(key);
        present
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate_and_shared_by_name() {
        let store = KvStore::default();
        let a = store.namespace("a");
        let b = store.namespace("b");
        a.set("k", b"1".to_vec(), None).unwrap();
        assert_eq!(b.get("k"), None);
        assert_eq!(store.namespace("a").get("k"), Some(b"1".to_vec()));
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
    fn sweep_drops_expired_entries_as_the_map_grows() {
        let ns = Namespace::default();
        for i in 0..3000 {
            ns.set(&format!("k{i}"), vec![], Some(0)).unwrap();
        }
        assert!(ns.len() < 2100, "expired entries were kept: {}", ns.len());
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
