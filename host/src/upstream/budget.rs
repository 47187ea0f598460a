//! Each pool's retry budget (Envoy's and Finagle's): resends of requests
//! that reached a backend may be at most `retry_budget_percent` of the
//! pool's requests over the last seconds, plus `min_retries_per_second`,
//! so retries cannot multiply the load on a pool that is failing.

use std::sync::Mutex;

use crate::workers::PerWorker;

/// The retry budget of a pool: requests and resends counted per second
/// over the last [`WINDOW`] seconds. A resend of a request that reached a
/// backend is allowed while resends stay under `retry_budget_percent` of
/// the requests in the window plus `min_retries_per_second` per second of
/// it, so a storm of failures adds at most that share of load, and a burst
/// after quiet traffic (a backend killed mid-flight) is covered by what
/// the window saved up. As Finagle's and Linkerd's budgets; Envoy's counts
/// resends in flight instead, which a single burst exhausts.
///
/// Requests are counted in each worker's own window (`workers.rs`): every
/// request counts, and one lock shared by the workers cost each of them a
/// cache-line transfer per request (`bench/RESULTS.md`, issue 26).
/// Resends, rare, are counted in one window; `try_resend` sums them all.
#[derive(Default)]
pub(super) struct RetryBudget {
    requests: PerWorker<Mutex<[Slot; WINDOW]>>,
    resends: Mutex<[Slot; WINDOW]>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget").finish_non_exhaustive()
    }
}

/// Seconds a request or resend counts in the budget.
const WINDOW: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Seconds since the budget's clock started, for this slot's counts.
    second: u64,
    requests: u64,
    resends: u64,
}

fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
}

impl RetryBudget {
    fn slot(slots: &mut [Slot; WINDOW], now: u64) -> &mut Slot {
        let s = &mut slots[(now % WINDOW as u64) as usize];
        if s.second != now {
            *s = Slot {
                second: now,
                ..Slot::default()
            };
        }
        s
    }

    pub(super) fn request(&self) {
        let now = clock();
        let mut slots = self.requests.local().1.lock().expect("retry budget");
        Self::slot(&mut slots, now).requests += 1;
    }

    pub(super) fn try_resend(&self, percent: u32, per_second: u32) -> bool {
        let now = clock();
        let live = |s: &&Slot| now.saturating_sub(s.second) < WINDOW as u64;
        let requests: u64 = self
            .requests
            .iter()
            .map(|w| {
                let slots = w.lock().expect("retry budget");
                slots.iter().filter(live).map(|s| s.requests).sum::<u64>()
            })
            .sum();
        let mut slots = self.resends.lock().expect("retry budget");
        let resends: u64 = slots.iter().filter(live).map(|s| s.resends).sum();
        let allowed = requests * u64::from(percent) / 100 + u64::from(per_second) * WINDOW as u64;
        if resends >= allowed {
            return false;
        }
        Self::slot(&mut slots, now).resends += 1;
        true
    }
}
