//! The balance stage: pick one backend of a pool. Shared by L4 and L7.
//!
//! Every algorithm sits behind [`Balancer`] and sees the same thing: the
//! pool's backends (with their live health and in-flight counts) and, for
//! `hash`, a key. Unavailable backends (unhealthy, ejected, drained, or
//! excluded by a retry) are never picked; `None` means none is available.

mod hash;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use hash::{Maglev, stable_hash, stable_hash_ip};

use crate::config::Algorithm;

/// What an algorithm needs to know of one backend.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> u32;
    fn available(&self) -> bool;
}

/// Picks the index of a backend.
pub trait Balancer: Send + Sync {
    /// `key` is the request's hash key (only `hash` uses it); `exclude` a
    /// backend already tried.
    fn pick(
        &self,
        backends: &[&dyn Candidate],
        key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize>;
}

/// Builds the balancer of a pool.
/// `backends` are (name, weight) in pool order.
pub fn for_algorithm(algorithm: Algorithm, backends: &[(String, u32)]) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::default()),
        Algorithm::Weighted => Box::new(SmoothWeighted::new(backends.len())),
        Algorithm::LeastRequest => Box::new(LeastRequest),
        Algorithm::P2c => Box::new(PowerOfTwo),
        Algorithm::Random => Box::new(Random),
        Algorithm::Hash => Box::new(Maglev::new(backends)),
    }
}

fn usable(b: &[&dyn Candidate], i: usize, exclude: Option<usize>) -> bool {
    Some(i) != exclude && b[i].available()
}

/// Indices of the usable backends.
fn live(b: &[&dyn Candidate], exclude: Option<usize>) -> Vec<usize> {
    (0..b.len()).filter(|&i| usable(b, i, exclude)).collect()
}

/// Each backend in turn, skipping unavailable ones.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        _key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let n = b.len();
        if n < 2 {
            // Nothing to take turns over: the cursor, which every worker
            // writes, is left alone.
            return (n == 1 && usable(b, 0, exclude)).then_some(0);
        }
        // A skipped backend consumes a turn, so its share spreads evenly
        // over the others instead of all landing on its successor.
        let mut last = 0;
        for _ in 0..n {
            last = self.next.fetch_add(1, Ordering::Relaxed) % n;
            if usable(b, last, exclude) {
                return Some(last);
            }
        }
        // Other threads' turns came between these, so the same backend
        // may have come up n times: look at each one once before saying
        // none is usable.
        (1..=n)
            .map(|k| (last + k) % n)
            .find(|&i| usable(b, i, exclude))
    }
}

/// nginx's smooth weighted round-robin: over a cycle of the total weight,
/// each backend is picked `weight` times, interleaved rather than in runs.
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(n: usize) -> Self {
        SmoothWeighted {
            current: Mutex::new(vec![0; n]),
        }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        _key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let mut current = self.current.lock().expect("weighted balancer");
        current.resize(b.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..b.len()).filter(|&i| usable(b, i, exclude)) {
            let w = i64::from(b[i].weight().max(1));
            current[i] += w;
            total += w;
            if best.is_none_or(|j| current[i] > current[j]) {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            current[i] -= total;
        }
        best
    }
}

/// The available backend with the fewest requests in flight; ties go to a
/// random one of them, so that idle pools still spread.
pub struct LeastRequest;

impl Balancer for LeastRequest {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        _key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        // One pass; ties are broken uniformly (reservoir sampling), so idle
        // backends share evenly even when some are unavailable.
        let mut best: Option<(usize, u32)> = None;
        let mut ties = 0u32;
        for i in (0..b.len()).filter(|&i| usable(b, i, exclude)) {
            let load = b[i].in_flight();
            match best {
                Some((_, min)) if load > min => {}
                Some((_, min)) if load == min => {
                    ties += 1;
                    if fastrand::u32(..ties) == 0 {
                        best = Some((i, load));
                    }
                }
                _ => {
                    best = Some((i, load));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Power of two choices: two random available backends, the less loaded
/// one wins. Nearly as good as least-request, without a full scan.
pub struct PowerOfTwo;

impl Balancer for PowerOfTwo {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        _key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let live = live(b, exclude);
        match live.len() {
            0 => None,
            1 => Some(live[0]),
            n => {
                let x = fastrand::usize(..n);
                let y = (x + 1 + fastrand::usize(..n - 1)) % n;
                let (x, y) = (live[x], live[y]);
                Some(if b[y].in_flight() < b[x].in_flight() {
                    y
                } else {
                    x
                })
            }
        }
    }
}

/// Uniformly random among available backends.
pub struct Random;

impl Balancer for Random {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        _key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let live = live(b, exclude);
        (!live.is_empty()).then(|| live[fastrand::usize(..live.len())])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU32;

    use proptest::prelude::*;

    use super::*;
    use std::sync::Arc;

    pub struct Fake {
        pub weight: u32,
        pub in_flight: AtomicU32,
        pub up: bool,
    }

    impl Fake {
        pub fn new(weight: u32, up: bool) -> Self {
            Fake {
                weight,
                in_flight: AtomicU32::new(0),
                up,
            }
        }
    }

    impl Candidate for Fake {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> u32 {
            self.in_flight.load(Ordering::Relaxed)
        }
        fn available(&self) -> bool {
            self.up
        }
    }

    pub fn refs(f: &[Fake]) -> Vec<&dyn Candidate> {
        f.iter().map(|x| x as &dyn Candidate).collect()
    }

    fn named(weights: &[u32]) -> Vec<(String, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("b{i}"), w))
            .collect()
    }

    /// Found by the retry test on two workers: with picks on several
    /// threads, one thread's n turns could all land on the one backend it
    /// may not use, and a request with a healthy backend left got none.
    #[test]
    fn round_robin_finds_the_usable_backend_while_other_threads_pick() {
        let rr = Arc::new(RoundRobin::default());
        let misses: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let rr = rr.clone();
                    s.spawn(move || {
                        let f = [Fake::new(1, false), Fake::new(1, true)];
                        let r = refs(&f);
                        (0..200_000)
                            .filter(|_| rr.pick(&r, None, None) != Some(1))
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(misses, 0, "picks that found no usable backend");
    }

    fn counts(bal: &dyn Balancer, f: &[Fake], picks: usize) -> Vec<usize> {
        let r = refs(f);
        let mut c = vec![0; f.len()];
        for _ in 0..picks {
            c[bal.pick(&r, Some(fastrand::u64(..)), None).unwrap()] += 1;
        }
        c
    }

    const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::Weighted,
        Algorithm::LeastRequest,
        Algorithm::P2c,
        Algorithm::Random,
        Algorithm::Hash,
    ];

    #[test]
    fn nothing_available_means_none() {
        for a in ALL {
            let f = [Fake::new(1, false), Fake::new(1, false)];
            let bal = for_algorithm(a, &named(&[1, 1]));
            assert_eq!(bal.pick(&refs(&f), Some(7), None), None, "{a:?}");
            assert_eq!(bal.pick(&[], Some(7), None), None, "{a:?}");
        }
    }

    #[test]
    fn exclude_is_respected() {
        for a in ALL {
            let f = [Fake::new(1, true), Fake::new(1, true)];
            let bal = for_algorithm(a, &named(&[1, 1]));
            for k in 0..200 {
                assert_eq!(bal.pick(&refs(&f), Some(k), Some(0)), Some(1), "{a:?}");
            }
        }
    }

    #[test]
    fn smooth_weighted_interleaves() {
        let f = [Fake::new(5, true), Fake::new(1, true), Fake::new(1, true)];
        let bal = SmoothWeighted::new(3);
        let r = refs(&f);
        let seq: Vec<usize> = (0..7).map(|_| bal.pick(&r, None, None).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_request_prefers_the_idle_backend() {
        let f = [Fake::new(1, true), Fake::new(1, true), Fake::new(1, true)];
        f[0].in_flight.store(5, Ordering::Relaxed);
        f[2].in_flight.store(3, Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(LeastRequest.pick(&refs(&f), None, None), Some(1));
        }
    }

    #[test]
    fn p2c_never_picks_the_most_loaded_of_two() {
        let f = [Fake::new(1, true), Fake::new(1, true)];
        f[0].in_flight.store(9, Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(PowerOfTwo.pick(&refs(&f), None, None), Some(1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Every algorithm spreads evenly over equal, idle, healthy backends
        /// (within 25% of a fair share over 600 picks per backend), and
        /// never picks an unhealthy one.
        #[test]
        fn spread_is_fair_and_skips_the_unhealthy(n in 2usize..8, down in 0usize..8) {
            for a in ALL {
                let f: Vec<Fake> = (0..n).map(|i| Fake::new(1, i != down)).collect();
                let live = f.iter().filter(|x| x.up).count();
                let bal = for_algorithm(a, &named(&vec![1; n]));
                let c = counts(bal.as_ref(), &f, 600 * live);
                for (i, &got) in c.iter().enumerate() {
                    if i == down {
                        prop_assert_eq!(got, 0, "{:?} picked a down backend", a);
                    } else {
                        prop_assert!((450..=750).contains(&got), "{:?}: {:?}", a, c);
                    }
                }
            }
        }

        /// `weighted` and `hash` give each backend its weight's share.
        #[test]
        fn weights_are_respected(weights in proptest::collection::vec(1u32..6, 2..6)) {
            let total: u32 = weights.iter().sum();
            for a in [Algorithm::Weighted, Algorithm::Hash] {
                let f: Vec<Fake> = weights.iter().map(|&w| Fake::new(w, true)).collect();
                let bal = for_algorithm(a, &named(&weights));
                let picks = 1000 * total as usize;
                let c = counts(bal.as_ref(), &f, picks);
                for (i, &w) in weights.iter().enumerate() {
                    let want = 1000.0 * f64::from(w);
                    let got = c[i] as f64;
                    prop_assert!((got - want).abs() <= want * 0.15 + 50.0,
                        "{:?} weights {:?}: {:?}", a, weights, c);
                }
            }
        }
    }
}
