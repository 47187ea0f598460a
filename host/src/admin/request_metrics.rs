//! A listener's request counter and latency histogram, held per pool,
//! backend and status class. `switchyard_http_requests_total` and
//! `switchyard_http_request_duration_seconds` are looked up in their
//! families once per label set and the handles kept (by each worker, in a
//! map of its own): a request then costs one hash of three words under a
//! read lock no other worker writes, instead of two SipHash
//! look-ups of its label strings under the families' locks and four label
//! clones (bench/count: ~1,000 of ~39,000 instructions per request).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::family::Family;

use super::metrics::{Label, ListenerPool, RequestLabels, none, status_class};
use super::sharded::{ShardedCounter as Counter, ShardedHistogram as Histogram};
use crate::workers::PerWorker;

/// Label sets held per listener state; past this many (a pool with
/// thousands of backends), requests go through the families.
const MAX_HELD: usize = 4096;

/// Keyed by the addresses of the pool and backend labels (0: none) and
/// the status class. Each entry holds its labels, so an address cannot be
/// freed and reused by another label while it is a key.
type Key = (usize, usize, u8);

struct Held {
    _labels: (Option<Label>, Option<Label>),
    requests: Counter,
    duration: Histogram,
}

/// One listener's request metrics (see the module docs).
pub struct RequestHandles {
    listener: Label,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ListenerPool, Histogram, fn() -> Histogram>,
    /// Each worker's own handles: no lock word written by two workers.
    held: PerWorker<RwLock<HashMap<Key, Held, foldhash::fast::RandomState>>>,
}

impl std::fmt::Debug for RequestHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandles")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

fn address(l: Option<&Label>) -> usize {
    l.map_or(0, |l| Arc::as_ptr(l).cast::<u8>() as usize)
}

impl RequestHandles {
    pub(super) fn new(
        listener: Label,
        requests: Family<RequestLabels, Counter>,
        duration: Family<ListenerPool, Histogram, fn() -> Histogram>,
    ) -> Self {
        RequestHandles {
            listener,
            requests,
            duration,
            held: PerWorker::default(),
        }
    }

    /// Counts one answered request and observes its time.
    pub fn record(
        &self,
        pool: Option<&Label>,
        backend: Option<&Label>,
        status: u16,
        took: Duration,
    ) {
        let class = status_class(status);
        let key = (address(pool), address(backend), class.as_bytes()[0]);
        let secs = took.as_secs_f64();
        let held = self.held.local().1;
        if let Ok(held) = held.read()
            && let Some(h) = held.get(&key)
        {
            h.requests.inc();
            h.duration.observe(secs);
            return;
        }
        let label = |l: Option<&Label>| l.cloned().unwrap_or_else(none);
        let requests = self
            .requests
            .get_or_create(&RequestLabels {
                listener: self.listener.clone(),
                pool: label(pool),
                backend: label(backend),
                status_class: class,
            })
            .clone();
        let duration = self
            .duration
            .get_or_create(&ListenerPool {
                listener: self.listener.clone(),
                pool: label(pool),
            })
            .clone();
        requests.inc();
        duration.observe(secs);
        if let Ok(mut held) = held.write()
            && held.len() < MAX_HELD
        {
            held.insert(
                key,
                Held {
                    _labels: (pool.cloned(), backend.cloned()),
                    requests,
                    duration,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_handles_count_in_the_families() {
        let m = super::super::Metrics::default();
        let h = m.request_handles(&Label::from("web"));
        let (pool, backend) = (Label::from("p"), Label::from("b"));
        for status in [200, 204, 503] {
            h.record(
                Some(&pool),
                Some(&backend),
                status,
                Duration::from_millis(1),
            );
        }
        h.record(Some(&pool), None, 404, Duration::from_millis(1));
        let count = |backend: &str, class| {
            m.http_requests
                .get_or_create(&RequestLabels {
                    listener: "web".into(),
                    pool: "p".into(),
                    backend: backend.into(),
                    status_class: class,
                })
                .get()
        };
        assert_eq!(count("b", "2xx"), 2);
        assert_eq!(count("b", "5xx"), 1);
        assert_eq!(count("", "4xx"), 1);
        // The same label text in another allocation is the same series.
        h.record(
            Some(&Label::from("p")),
            Some(&Label::from("b")),
            200,
            Duration::ZERO,
        );
        assert_eq!(count("b", "2xx"), 3);
    }
}
