//! What a write to a cache line that another core also writes costs on
//! this machine: the price of an atomic shared by the workers on the
//! request path (issue 26, `bench/RESULTS.md`). Two threads each run
//! "requests": `K` atomic increments on `K` cache lines, then ~3 µs of
//! arithmetic (a request's other work). Once the lines are each thread's
//! own, once the same lines for both; the difference over `K` is the cost
//! of one line moving between the cores.
//!
//! `cargo bench -p switchyard --bench shared_lines`. Standard library only.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Lines per request.
const K: usize = 20;
const REQUESTS: u64 = 200_000;
/// Multiply-adds of other work per request.
const WORK: u64 = 2_000;

#[repr(align(128))]
struct Line(AtomicU64);

fn lines() -> Arc<Vec<Line>> {
    Arc::new((0..K).map(|_| Line(AtomicU64::new(0))).collect())
}

fn work() {
    let mut x = 1u64;
    for i in 0..WORK {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
}

/// Nanoseconds per request over `n` requests, each touching `k` lines.
fn requests(lines: &[Line], k: usize, n: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        for l in &lines[..k] {
            l.0.fetch_add(1, Relaxed);
        }
        work();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Per-request time of this thread while another runs requests on
/// `theirs` (the same lines, or lines of its own).
fn beside(mine: &Arc<Vec<Line>>, theirs: Arc<Vec<Line>>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                requests(&theirs, K, 1_000);
            }
        })
    };
    let t = requests(mine, K, REQUESTS);
    stop.store(true, Relaxed);
    other.join().expect("other thread");
    t
}

fn main() {
    let mine = lines();
    let alone_none = requests(&mine, 0, REQUESTS);
    let alone = requests(&mine, K, REQUESTS);
    println!(
        "one thread: {alone_none:.0} ns per request of work, {alone:.0} with {K} atomic increments"
    );
    for round in 1..=3 {
        let private = beside(&mine, lines());
        let shared = beside(&mine, mine.clone());
        println!(
            "round {round}: two threads, own lines {private:.0} ns; the same lines {shared:.0} ns; \
             {:.1} ns per shared line",
            (shared - private) / K as f64
        );
    }
}
