//! The epoch ticker: the thread that advances the engine's epoch, so that a
//! policy call past its deadline is interrupted (and a long one yields to
//! the async runtime).
//!
//! A thread that wakes every millisecond costs CPU whether or not a policy
//! runs: on the 2-vCPU bench machine, ~1 µs per proxied request and 0.7% of
//! a core when idle (bench/RESULTS.md, "epoch ticker"). So the ticker
//! watches instead of ticking blindly:
//! - while a call is in flight it ticks every [`FAST`] (1 ms), so a call is
//!   interrupted within about 1 ms of its deadline, as before;
//! - while calls come and go it wakes every *watch period* — half the
//!   smallest call budget seen, between 1 and 5 ms — and ticks only when a
//!   call is running at that moment. A call longer than the watch period is
//!   therefore always seen, and from then on gets the fast ticks: a stuck
//!   call with a 10 ms budget is still stopped at 10–11 ms;
//! - after [`QUIET`] without any call it parks, and the next call wakes it.
//!
//! Calls announce themselves with [`Ticker::busy`], which costs two atomic
//! increments and, only when the ticker is parked, one `unpark`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use wasmtime::Engine;

use crate::workers::PerWorker;

/// Tick period while a call is in flight.
pub const FAST: Duration = Duration::from_millis(1);
/// The longest watch period (for budgets of 10 ms and more).
pub const MAX_WATCH: Duration = Duration::from_millis(5);
/// Quiet time after which the ticker parks.
pub const QUIET: Duration = Duration::from_secs(1);

struct Shared {
    stop: AtomicBool,
    /// Each worker's calls, on lines of its own (`workers.rs`): counted on
    /// one line, every call cost each worker a cache-line transfer or two
    /// (`bench/RESULTS.md`, issue 26). The ticker sums them.
    counts: PerWorker<Counts>,
    parked: AtomicBool,
    /// Current watch period in nanoseconds.
    watch_ns: AtomicU64,
    thread: OnceLock<Thread>,
    /// Epoch increments so far (read by the tests).
    ticks: AtomicU64,
}

/// One worker's calls.
#[derive(Default)]
struct Counts {
    /// Calls in flight.
    active: AtomicUsize,
    /// Calls ever started (to tell a quiet period from a busy one).
    started: AtomicU64,
}

impl Shared {
    fn active(&self) -> usize {
        let n = self.counts.iter();
        n.map(|c| c.active.load(Ordering::SeqCst)).sum()
    }

    fn started(&self) -> u64 {
        let n = self.counts.iter();
        n.map(|c| c.started.load(Ordering::SeqCst)).sum()
    }
}

/// Owns the ticker thread; stops and joins it when dropped.
pub struct Ticker {
    shared: Arc<Shared>,
    join: Option<JoinHandle<()>>,
}

/// A call in flight; the ticker ticks fast until it is dropped. Holds
/// the counts it incremented, so it decrements the same ones wherever it
/// is dropped.
pub struct Busy<'a>(&'a Counts);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    pub fn start(engine: Engine) -> Self {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            counts: PerWorker::default(),
            parked: AtomicBool::new(false),
            watch_ns: AtomicU64::new(MAX_WATCH.as_nanos() as u64),
            thread: OnceLock::new(),
            ticks: AtomicU64::new(0),
        });
        let s = shared.clone();
        let join = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || run(&s, &engine))
            .expect("spawn epoch ticker thread");
        let _ = shared.thread.set(join.thread().clone());
        Ticker {
            shared,
            join: Some(join),
        }
    }

    /// Marks a call (or instantiation) with deadline `budget` as running.
    pub fn busy(&self, budget: Duration) -> Busy<'_> {
        let s = &*self.shared;
        // Half the smallest budget, so that a call is seen before its
        // deadline; never faster than FAST.
        let watch = (budget / 2).clamp(FAST, MAX_WATCH).as_nanos() as u64;
        if watch < s.watch_ns.load(Ordering::Relaxed) {
            s.watch_ns.fetch_min(watch, Ordering::Relaxed);
        }
        let mine = s.counts.local().1;
        mine.started.fetch_add(1, Ordering::SeqCst);
        mine.active.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst)
            && let Some(t) = s.thread.get()
        {
            t.unpark();
        }
        Busy(mine)
    }

    /// Whether the ticker thread is parked.
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// Epoch increments so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            j.thread().unpark();
            let _ = j.join();
        }
    }
}

fn run(s: &Shared, engine: &Engine) {
    let mut last_started = s.started();
    let mut quiet = Duration::ZERO;
    while !s.stop.load(Ordering::SeqCst) {
        let busy = s.active() > 0;
        if busy {
            engine.increment_epoch();
            s.ticks.fetch_add(1, Ordering::Relaxed);
        }
        let started = s.started();
        let period = if busy {
            FAST
        } else {
            Duration::from_nanos(s.watch_ns.load(Ordering::Relaxed))
        };
        if busy || started != last_started {
            quiet = Duration::ZERO;
        } else {
            quiet += period;
        }
        last_started = started;
        if quiet >= QUIET {
            // Publish `parked` before looking at `active` again; a call
            // increments `active` before looking at `parked`, so one of the
            // two sees the other (both SeqCst) and no wake-up is lost.
            s.parked.store(true, Ordering::SeqCst);
            while s.active() == 0 && s.started() == last_started && !s.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            s.parked.store(false, Ordering::SeqCst);
            quiet = Duration::ZERO;
            continue;
        }
        std::thread::sleep(period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn ticks_fast_while_a_call_runs_and_parks_when_quiet() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let ticker = Ticker::start(engine);
        wait_until("the ticker to park", || ticker.is_parked());
        let parked_at = ticker.ticks();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.ticks(), parked_at, "a parked ticker does not tick");

        let call = ticker.busy(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(40));
        let during = ticker.ticks() - parked_at;
        drop(call);
        // 1 ms ticks over 40 ms; a loaded machine may lose some.
        assert!(during >= 10, "only {during} ticks during a 40 ms call");

        wait_until("the ticker to park again", || ticker.is_parked());
        let quiet = ticker.ticks();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.ticks(), quiet);
    }

    #[test]
    fn short_calls_do_not_keep_the_ticker_ticking() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let ticker = Ticker::start(engine);
        let start = ticker.ticks();
        // 200 ms of 2 µs calls, one every 50 µs (4% busy): the ticker wakes
        // every watch period (5 ms) and ticks only when it finds a call.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let call = ticker.busy(Duration::from_millis(10));
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(2) {}
            drop(call);
            std::thread::sleep(Duration::from_micros(50));
        }
        let ticks = ticker.ticks() - start;
        // 1 ms ticking would give ~200.
        assert!(ticks < 60, "{ticks} ticks in 200 ms of short calls");
    }
}
