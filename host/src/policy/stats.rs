//! A policy's counters for the admin API: calls, errors, instantiations,
//! refusals, the last error, call times in a lock-free histogram, and the
//! guard that counts live instances.
//! (Prometheus's `switchyard_policy_call_duration_seconds` is the other
//! record of call times, kept by `admin::metrics` for scraping; this one
//! serves `/policies` p50/p99 without a registry.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::workers::PerWorker;

/// Counters for the admin API and metrics.
pub struct PolicyStats {
    /// Calls and their times, counted by each worker on lines of its own
    /// (`workers.rs`): a call's two increments on lines every worker
    /// writes cost each a cache-line transfer (`bench/RESULTS.md`, issue
    /// 26). Summed when read.
    per_worker: PerWorker<WorkerCalls>,
    pub errors: AtomicU64,
    pub instantiations: AtomicU64,
    /// Calls refused because every instance was busy and the queue was
    /// full or too slow.
    pub overloaded: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// One worker's count of calls and their times.
struct WorkerCalls {
    calls: AtomicU64,
    /// Call times in power-of-two nanosecond buckets: bucket `i` counts
    /// calls that took under `2^(i+1)` ns. Lock-free; enough for p50/p99
    /// within a factor of two.
    latency: [AtomicU64; 40],
}

impl std::fmt::Debug for PolicyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStats")
            .field("calls", &self.calls())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl Default for PolicyStats {
    fn default() -> Self {
        PolicyStats {
            per_worker: PerWorker::new(|| WorkerCalls {
                calls: AtomicU64::new(0),
                latency: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            errors: AtomicU64::new(0),
            instantiations: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl PolicyStats {
    /// Counts a call that took `took`.
    pub(super) fn observe(&self, took: Duration) {
        let ns = took.as_nanos().max(1) as u64;
        let bucket = (63 - ns.leading_zeros()) as usize;
        let mine = self.per_worker.local().1;
        mine.calls.fetch_add(1, Ordering::Relaxed);
        mine.latency[bucket.min(39)].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far, over all the workers.
    pub fn calls(&self) -> u64 {
        self.per_worker
            .iter()
            .map(|w| w.calls.load(Ordering::Relaxed))
            .sum()
    }

    /// The upper bound of the bucket holding the `q` quantile (0..=1).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = (0..40)
            .map(|i| {
                self.per_worker
                    .iter()
                    .map(|w| w.latency[i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(1u64 << (i + 1).min(63)));
            }
        }
        None
    }

    pub(super) fn reset(&self) {
        self.errors.store(0, Ordering::Relaxed);
        self.overloaded.store(0, Ordering::Relaxed);
        *self.last_error.lock().expect("last error") = None;
        for w in self.per_worker.iter() {
            w.calls.store(0, Ordering::Relaxed);
            for c in &w.latency {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Counts an instance in [`Policy::live_instances`] while it exists.
pub(super) struct Live(Arc<AtomicUsize>);

impl Live {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::Relaxed);
        Live(count.clone())
    }

    /// Counts one more instance if fewer than `max` exist: the check and
    /// the count are one step, so two workers cannot both take the last.
    pub(super) fn reserve(count: &Arc<AtomicUsize>, max: usize) -> Option<Live> {
        count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Live(count.clone()))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
