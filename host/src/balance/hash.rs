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
//!
//! Every hash here is XXH3-64 (the `xxhash-rust` crate) over explicit
//! bytes: a fixed, published algorithm, never std's `DefaultHasher` (whose
//! algorithm may change between Rust releases) nor a `T: Hash` impl
//! (whose byte stream may too). So the same configuration makes the same
//! table and the same choices on every build and every instance; the unit
//! tests pin the output on known vectors (checked against the reference C
//! implementation) and the table of a fixed pool.

use std::net::IpAddr;

use super::{Balancer, Candidate};

/// Slots in the table: a prime well above 100 × any sensible pool size.
pub const TABLE_SIZE: usize = 65_537;

/// The stable 64-bit hash of `bytes`: XXH3-64 with seed 0.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The stable hash of a client address: of its 4 octets (an IPv4 address,
/// also when it came mapped into IPv6) or its 16.
pub fn stable_hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => stable_hash(&a.octets()),
        IpAddr::V6(a) => stable_hash(&a.octets()),
    }
}

/// A backend's place in the Maglev table, from its name: XXH3-64 with
/// seed 0 (offset) and seed 1 (skip).
fn permutation(name: &str, m: u64) -> (u64, u64) {
    let offset = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), 0) % m;
    let skip = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), 1) % (m - 1) + 1;
    (offset, skip)
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
            .map(|(name, _)| permutation(name, m))
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

    /// XXH3-64 as the reference C implementation (Python's `xxhash`
    /// 3.x, `xxh3_64_intdigest`) gives it: these must never change.
    #[test]
    fn the_hash_is_pinned_on_known_vectors() {
        assert_eq!(stable_hash(b""), 0x2d06800538d394c2);
        assert_eq!(stable_hash(b"a"), 0xe6c632b61e964e1f);
        assert_eq!(stable_hash(b"10.0.0.1"), 0xb61d99f8e56b6646);
        assert_eq!(stable_hash(b"web-1"), 0xce3f0550dc4eb434);
        let seeded = |b: &[u8]| xxhash_rust::xxh3::xxh3_64_with_seed(b, 1);
        assert_eq!(seeded(b""), 0x4dc5b0cc826f6703);
        assert_eq!(seeded(b"web-1"), 0x95ef40923ee7274d);
        // A client address hashes its octets; mapped IPv4 is IPv4.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(stable_hash_ip(v4), 0x54e8211e31db05c1);
        assert_eq!(stable_hash_ip(mapped), 0x54e8211e31db05c1);
    }

    // What XXH3 makes of the pool below: computed once, never to change.
    const PINNED_HEAD: [u32; 16] = [1, 0, 1, 0, 0, 0, 2, 2, 2, 2, 1, 2, 1, 2, 1, 2];
    const PINNED_SHARE: [usize; 3] = [16385, 16384, 32768];
    const PINNED_PICKS: [usize; 8] = [2, 1, 0, 2, 2, 1, 2, 1];

    /// The table of a fixed pool, pinned: a change here reshuffles every
    /// hash-balanced client of every deployment.
    #[test]
    fn the_maglev_table_of_a_fixed_pool_is_pinned() {
        let m = Maglev::new(&[
            ("web-1".to_string(), 1),
            ("web-2".to_string(), 1),
            ("web-3".to_string(), 2),
        ]);
        let head: Vec<u32> = m.table[..16].to_vec();
        assert_eq!(head, PINNED_HEAD);
        let mut share = [0usize; 3];
        m.table.iter().for_each(|&i| share[i as usize] += 1);
        assert_eq!(share, PINNED_SHARE);
        // Keys too: the backend of "user-1" .. "user-8".
        let picks: Vec<usize> = (1..=8)
            .map(|i| {
                m.lookup(stable_hash(format!("user-{i}").as_bytes()))
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, PINNED_PICKS);
    }

    #[test]
    fn same_key_same_backend() {
        let m = Maglev::new(&pool(5));
        let f: Vec<Fake> = (0..5).map(|_| Fake::new(1, true)).collect();
        for key in 0..1000u64 {
            let k = stable_hash(&key.to_le_bytes());
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
        let keys: Vec<u64> = (0..5000u64)
            .map(|k| stable_hash(&k.to_le_bytes()))
            .collect();
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
            let keys: Vec<u64> = (0..20_000u64).map(|k| stable_hash(&(k ^ 7 << 56).to_le_bytes())).collect();
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
