//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! A lookup table of a prime size is filled by letting each backend, in
//! turn, claim the next free slot of its own permutation of the table;
//! a backend of weight `w` takes `w` claims per round, so it ends up with a
//! `w / total` share of the slots. A key maps to `slot = key % size`.
//! Permutations derive from backend *names*, so a table rebuilt without one
//! backend keeps almost every other slot where it was.
//!
//! An unavailable backend is not removed from the table (health flaps would
//! reshuffle keys); its keys probe forward to the next slot whose backend is
//! available, so only its own keys move.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::{Balancer, Candidate};

/// Slots in the table: a prime well above 100 × any sensible pool size.
pub const TABLE_SIZE: usize = 65_537;

/// A stable 64-bit hash of anything hashable (SipHash with fixed keys).
pub fn stable_hash<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds the table for backends given as (name, weight), in pool order.
    pub fn new(backends: &[(String, u32)]) -> Self {
        let n = backends.len();
        let m = TABLE_SIZE as u64;
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|(name, _)| {
                let offset = stable_hash(&(0u8, name)) % m;
                let skip = stable_hash(&(1u8, name)) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; TABLE_SIZE];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                for _ in 0..backends[i].1.max(1) {
                    let (offset, skip) = perms[i];
                    let mut slot = ((offset + next[i] * skip) % m) as usize;
                    while table[slot] != u32::MAX {
                        next[i] += 1;
                        slot = ((offset + next[i] * skip) % m) as usize;
                    }
                    table[slot] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == TABLE_SIZE {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    /// The backend a key maps to when every backend is available.
    pub fn lookup(&self, key: u64) -> Option<usize> {
        self.table
            .get((key % TABLE_SIZE as u64) as usize)
            .map(|&i| i as usize)
    }
}

impl Balancer for Maglev {
    fn pick(
        &self,
        b: &[&dyn Candidate],
        key: Option<u64>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        if self.table.is_empty() || b.is_empty() {
            return None;
        }
        let key = key.unwrap_or_else(|| fastrand::u64(..));
        let start = (key % TABLE_SIZE as u64) as usize;
        // Probe forward; after a full cycle of backends without an available
        // one, fall back to a scan so a mostly-down pool still answers fast.
        for k in 0..b.len() * 8 {
            let i = self.table[(start + k) % TABLE_SIZE] as usize;
            if i < b.len() && Some(i) != exclude && b[i].available() {
                return Some(i);
            }
        }
        (0..b.len()).find(|&i| Some(i) != exclude && b[i].available())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::{Fake, refs};
    use super::*;

    fn pool(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn same_key_same_backend() {
        let m = Maglev::new(&pool(5));
        let f: Vec<Fake> = (0..5).map(|_| Fake::new(1, true)).collect();
        for key in 0..1000u64 {
            let k = stable_hash(&key);
            assert_eq!(
                m.pick(&refs(&f), Some(k), None),
                m.pick(&refs(&f), Some(k), None)
            );
        }
    }

    #[test]
    fn an_unavailable_backend_moves_only_its_own_keys() {
        let m = Maglev::new(&pool(5));
        let mut f: Vec<Fake> = (0..5).map(|_| Fake::new(1, true)).collect();
        let keys: Vec<u64> = (0..5000u64).map(|k| stable_hash(&k)).collect();
        let before: Vec<_> = keys
            .iter()
            .map(|&k| m.pick(&refs(&f), Some(k), None))
            .collect();
        f[2].up = false;
        for (k, was) in keys.iter().zip(before) {
            let now = m.pick(&refs(&f), Some(*k), None);
            assert_ne!(now, Some(2));
            if was != Some(2) {
                assert_eq!(now, was);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Rebuilding the table without one backend moves that backend's
        /// keys plus at most a few percent of the others'.
        #[test]
        fn removal_disrupts_little(n in 3usize..10, removed in 0usize..10) {
            let removed = removed % n;
            let all = pool(n);
            let mut rest = all.clone();
            rest.remove(removed);
            let (a, b) = (Maglev::new(&all), Maglev::new(&rest));
            let keys: Vec<u64> = (0..20_000u64).map(|k| stable_hash(&(k, 7))).collect();
            let mut moved_others = 0;
            let mut others = 0;
            for &k in &keys {
                let before = &all[a.lookup(k).unwrap()].0;
                let after = &rest[b.lookup(k).unwrap()].0;
                if *before != all[removed].0 {
                    others += 1;
                    if before != after {
                        moved_others += 1;
                    }
                }
            }
            let share = moved_others as f64 / others as f64;
            prop_assert!(share < 0.05, "{:.1}% of other keys moved", share * 100.0);
        }
    }
}
