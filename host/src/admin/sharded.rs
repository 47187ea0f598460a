//! Counters and histograms each worker writes on a cache line of its own
//! (`workers.rs`), summed only when `/metrics` is read. prometheus-client's
//! `Counter` is one atomic and its `Histogram` one mutex that every worker
//! would take per request; these encode as the same Prometheus types, so
//! the families and series names stay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::workers::PerWorker;

/// A counter with a shard per worker.
#[derive(Clone, Default)]
pub struct ShardedCounter(Arc<PerWorker<AtomicU64>>);

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardedCounter({})", self.get())
    }
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.local().1.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over the workers.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One worker's observations: the sum, the count, and a count per bucket
/// (not cumulative; the encoder adds them up).
#[derive(Default)]
struct Shard {
    sum: f64,
    count: u64,
    buckets: Vec<u64>,
}

/// A histogram with fixed bucket bounds and a shard per worker.
#[derive(Clone)]
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: Arc<PerWorker<Mutex<Shard>>>,
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardedHistogram({} buckets)", self.bounds.len())
    }
}

impl ShardedHistogram {
    /// Buckets up to each of `bounds` (ascending), and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds
            .into_iter()
            .chain(std::iter::once(f64::MAX))
            .collect();
        let n = bounds.len();
        ShardedHistogram {
            bounds,
            shards: Arc::new(PerWorker::new(|| {
                Mutex::new(Shard {
                    buckets: vec![0; n],
                    ..Shard::default()
                })
            })),
        }
    }

    /// Counts `v` in this worker's shard: a lock no other worker takes
    /// (except a scrape).
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len() - 1);
        let mut s = self.shards.local().1.lock().expect("histogram shard");
        s.sum += v;
        s.count += 1;
        s.buckets[i] += 1;
    }

    /// The sum, the count and the per-bucket counts over the workers.
    fn total(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0);
        for shard in self.shards.iter() {
            let s = shard.lock().expect("histogram shard");
            sum += s.sum;
            count += s.count;
            for (total, n) in buckets.iter_mut().zip(&s.buckets) {
                total.1 += n;
            }
        }
        (sum, count, buckets)
    }

    /// Observations counted, over the workers.
    pub fn count(&self) -> u64 {
        self.total().1
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.total();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// Two workers count into their own shards; a scrape sees the sums,
    /// in the text prometheus-client's own types would give.
    #[test]
    fn workers_count_apart_and_a_scrape_sums_them() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let requests = Family::<Vec<(String, String)>, ShardedCounter>::default();
        let duration = ShardedHistogram::new([0.01, 0.1]);
        let (tx, rx) = std::sync::mpsc::channel();
        for (w, values) in [(0, vec![0.005, 0.05]), (1, vec![0.5, 0.005, 0.005])] {
            let (requests, duration, tx) = (requests.clone(), duration.clone(), tx.clone());
            workers.spawn(w, async move {
                for v in values {
                    requests
                        .get_or_create(&vec![("l".into(), "web".into())])
                        .inc();
                    duration.observe(v);
                }
                tx.send(crate::workers::index()).unwrap();
            });
        }
        let mut ran_on: Vec<usize> = (0..2)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        ran_on.sort();
        assert_eq!(ran_on, [0, 1]);
        let shards: Vec<u64> = requests
            .get_or_create(&vec![("l".into(), "web".into())])
            .0
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(&shards[..2], [2, 3], "each worker counted in its own shard");
        let mut registry = Registry::default();
        registry.register("requests", "r", requests);
        registry.register("duration", "d", duration.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("requests_total{l=\"web\"} 5\n"), "{text}");
        assert!(text.contains("duration_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("duration_bucket{le=\"0.1\"} 4\n"), "{text}");
        assert!(text.contains("duration_count 5\n"), "{text}");
        assert!(text.contains("duration_sum 0.56"), "{text}");
        assert_eq!(duration.count(), 5);
    }
}
