//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! Contract:
//! - A [`Table`] has `M` slots, `M` a prime ([`TableSize`]: 3 to [`MAX_TABLE_SIZE`], default
//!   [`DEFAULT_TABLE_SIZE`]). Each slot holds the index, into the slice given to
//!   [`Table::build`], of the backend that flows hashing to it go to: the datapath picks
//!   `slots[flow_hash % M]` (`super::hash::flow_hash`).
//! - Each backend's preference list is a permutation of the slots, `offset + j * skip (mod M)`
//!   for `j = 0, 1, ...`, with `offset = h1 % M` and `skip = h2 % (M - 1) + 1`, where `h1`, `h2`
//!   are two fixed-seed 64-bit hashes of the backend's [`BackendKey`] (address and port; see
//!   [`BackendKey::permutation`]). The permutation depends on the backend alone, not on the
//!   others, which is what keeps flows in place when the set changes; it is the same on every
//!   run and every platform (no `RandomState`).
//! - Population: backends take turns, in the order given, each claiming the next free slot of
//!   its preference list, until every slot is taken. With weights, a backend of weight `w` takes
//!   a turn in round `t` (1, 2, ...) when `t * w` reaches its next target, targets being
//!   `W, 2W, 3W, ...` for the largest weight `W` (the integer form of Envoy's weighted Maglev):
//!   after `t` rounds it has had `floor(t * w / W)` turns, so slot counts are proportional to
//!   weights within one slot. Equal weights are plain Maglev: counts differ by at most one.
//!   A backend of weight 0 takes no turns (no slot, no new flows).
//! - Disruption: removing one of `N` equal backends reassigns its `M/N` slots and, as the paper
//!   measures, a small share of the others' (Maglev trades perfect stability for balance);
//!   `tests/maglev.rs` bounds the moved flows at `1/N + 2%`.
//! - Cost: `O(N)` for the permutations and, for equal weights, about `M ln M` probes in the fill
//!   (the fill is coupon-collector-like near its end). No allocation per step: the state is one
//!   `(position, skip, weight, target)` cursor per backend and the table itself, `u32`
//!   arithmetic with `position += skip; if position >= M { position -= M }` per probe. Weighted
//!   builds add at most `N` comparisons per round, and there are at most `M` rounds.
//! - Errors, not panics: a table size that is not a prime in range, more backends with weight
//!   than slots, the same key twice.

use std::fmt;
use std::net::IpAddr;

/// The table size used when a service names none (Cilium's and Katran's default as well).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The largest table size accepted: 2^17 - 1, a prime (512 KiB of `u32` slots).
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// A slot no backend holds: only in the table of a set with no backend of weight > 0.
pub const EMPTY: u32 = u32::MAX;

/// Seeds of the two backend-key hashes (`"maglev.1"` and `"maglev.2"` in ASCII). Fixed: a
/// changed seed would move every flow.
const KEY_SEEDS: [u64; 2] = [0x6d61_676c_6576_2e31, 0x6d61_676c_6576_2e32];

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime number")]
    NotPrime(u32),
    #[error("Maglev table size {0} is out of range 3-{MAX_TABLE_SIZE}")]
    SizeOutOfRange(u32),
    #[error("{backends} backends do not fit a Maglev table of {size} slots")]
    TooManyBackends { backends: usize, size: u32 },
    #[error("backend {0} is listed twice")]
    DuplicateBackend(BackendKey),
}

/// The number of slots of a Maglev table: a prime in `3..=MAX_TABLE_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableSize(u32);

impl TableSize {
    /// [`DEFAULT_TABLE_SIZE`].
    pub const DEFAULT: TableSize = TableSize(DEFAULT_TABLE_SIZE);

    /// `m` if it is a prime in range.
    pub fn new(m: u32) -> Result<TableSize, MaglevError> {
        if !(3..=MAX_TABLE_SIZE).contains(&m) {
            return Err(MaglevError::SizeOutOfRange(m));
        }
        if !is_prime(m) {
            return Err(MaglevError::NotPrime(m));
        }
        Ok(TableSize(m))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> Self {
        TableSize::DEFAULT
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Trial division: table sizes are at most 2^17, so at most ~180 odd divisors.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// What identifies a backend to Maglev: its address and port. Stable across runs and across
/// the backend's position in the list, so its preference list is too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A backend's preference list: slots `offset`, `offset + skip`, `offset + 2 skip`, ... mod M.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permutation {
    /// `0..M`.
    pub offset: u32,
    /// `1..M`: coprime with the prime M, so the list visits every slot once.
    pub skip: u32,
}

impl BackendKey {
    /// The key as three 64-bit words: the address as IPv6 (IPv4 mapped into `::ffff:0:0/96`),
    /// high then low half, then the port with the family in bit 16 (1 for IPv6).
    fn words(&self) -> [u64; 3] {
        let (v6, family) = match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped(), 0u64),
            IpAddr::V6(a) => (a, 1u64),
        };
        let bits = u128::from(v6);
        [(bits >> 64) as u64, bits as u64, u64::from(self.port) | (family << 16)]
    }

    /// The two key hashes: for each seed `s`, `h = s; for w in words: h = mix64(h ^ w)`, with
    /// `mix64` the splitmix64 finalizer.
    fn hashes(&self) -> [u64; 2] {
        let words = self.words();
        KEY_SEEDS.map(|seed| words.iter().fold(seed, |h, &w| mix64(h ^ w)))
    }

    /// This backend's preference list in a table of `size` slots.
    pub fn permutation(&self, size: TableSize) -> Permutation {
        let m = u64::from(size.get());
        let [h1, h2] = self.hashes();
        // Both remainders are below M <= 2^17, so the casts keep every bit.
        Permutation { offset: (h1 % m) as u32, skip: (h2 % (m - 1) + 1) as u32 }
    }
}

/// splitmix64's finalizer (Steele, Lea, Flood): a bijection that avalanches.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One backend of a table: its key and weight (0: no slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub key: BackendKey,
    pub weight: u32,
}

impl Backend {
    /// A backend of weight 1.
    pub fn new(addr: IpAddr, port: u16) -> Backend {
        Backend { key: BackendKey { addr, port }, weight: 1 }
    }
}

/// A Maglev lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    size: TableSize,
    /// `size` entries, each an index into the backends the table was built from, or [`EMPTY`].
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for `backends` (in this order; indices in the table refer to it).
    pub fn build(backends: &[Backend], size: TableSize) -> Result<Table, MaglevError> {
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        if weighted > size.get() as usize {
            return Err(MaglevError::TooManyBackends { backends: weighted, size: size.get() });
        }
        let mut keys: Vec<BackendKey> = backends.iter().map(|b| b.key).collect();
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MaglevError::DuplicateBackend(pair[0]));
        }
        let cursors = backends
            .iter()
            .map(|b| {
                let p = b.key.permutation(size);
                Cursor { position: p.offset, skip: p.skip, weight: b.weight, target: 0 }
            })
            .collect();
        Ok(Table { size, slots: populate(cursors, size.get()) })
    }

    pub fn size(&self) -> TableSize {
        self.size
    }

    /// Every slot, in order: what the datapath's table map holds.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The backend index for a flow of hash `flow_hash`, or `None` in an empty table.
    pub fn lookup(&self, flow_hash: u32) -> Option<u32> {
        let slot = self.slots[(flow_hash % self.size.get()) as usize];
        (slot != EMPTY).then_some(slot)
    }

    /// How many slots each of `backends` backends holds.
    pub fn counts(&self, backends: usize) -> Vec<u32> {
        let mut counts = vec![0u32; backends];
        for &slot in &self.slots {
            if let Some(count) = counts.get_mut(slot as usize) {
                *count += 1;
            }
        }
        counts
    }
}

/// A backend's state during population.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next slot of its preference list to try.
    position: u32,
    skip: u32,
    weight: u32,
    /// `t * weight` must reach this for a turn in round `t`.
    target: u64,
}

/// Fills an `m`-slot table from the backends' preference lists (the paper's Pseudocode 1, with
/// weighted turns). `m` is prime and no larger than [`MAX_TABLE_SIZE`]; at most `m` cursors
/// have a weight; every `position < m` and `1 <= skip < m`.
fn populate(mut cursors: Vec<Cursor>, m: u32) -> Vec<u32> {
    let mut slots = vec![EMPTY; m as usize];
    let max_weight = u64::from(cursors.iter().map(|c| c.weight).max().unwrap_or(0));
    if max_weight == 0 {
        return slots;
    }
    let uniform = cursors.iter().all(|c| u64::from(c.weight) == max_weight);
    for c in &mut cursors {
        c.target = max_weight;
    }
    let mut free = m;
    let mut round: u64 = 0;
    loop {
        round += 1;
        for (index, c) in cursors.iter_mut().enumerate() {
            if !uniform {
                if c.weight == 0 || round * u64::from(c.weight) < c.target {
                    continue;
                }
                c.target += max_weight;
            }
            // Walk the preference list to the first free slot; one exists while `free > 0`,
            // and the list visits every slot, so this ends.
            let mut slot = c.position;
            while slots[slot as usize] != EMPTY {
                slot += c.skip;
                if slot >= m {
                    slot -= m;
                }
            }
            // Fewer backends than slots: indices fit in u32 and never equal EMPTY.
            slots[slot as usize] = index as u32;
            slot += c.skip;
            if slot >= m {
                slot -= m;
            }
            c.position = slot;
            free -= 1;
            if free == 0 {
                return slots;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cursor(offset: u32, skip: u32, weight: u32) -> Cursor {
        Cursor { position: offset, skip, weight, target: 0 }
    }

    /// Table 1 of the paper: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1).
    #[test]
    fn the_papers_example() {
        let table = populate(vec![cursor(3, 4, 1), cursor(0, 2, 1), cursor(3, 1, 1)], 7);
        assert_eq!(table, [1, 0, 1, 0, 2, 2, 0]);
        // The paper's table after B1 is removed.
        let table = populate(vec![cursor(3, 4, 1), cursor(3, 1, 1)], 7);
        assert_eq!(table, [0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn table_sizes() {
        for ok in [3, 7, 251, 16_381, 65_521, MAX_TABLE_SIZE] {
            assert_eq!(TableSize::new(ok).map(TableSize::get), Ok(ok));
        }
        for (bad, err) in [
            (0, MaglevError::SizeOutOfRange(0)),
            (2, MaglevError::SizeOutOfRange(2)),
            (16_383, MaglevError::NotPrime(16_383)),
            (65_536, MaglevError::NotPrime(65_536)),
            (131_073, MaglevError::SizeOutOfRange(131_073)),
        ] {
            assert_eq!(TableSize::new(bad), Err(err), "{bad}");
        }
        assert_eq!(
            MaglevError::NotPrime(16_383).to_string(),
            "Maglev table size 16383 is not a prime number"
        );
        assert_eq!(TableSize::default().get(), 16_381);
        let primes = (0..100).filter(|&n| is_prime(n)).count();
        assert_eq!(primes, 25);
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn permutations_are_pinned_and_in_range() {
        let size = TableSize::DEFAULT;
        let p = BackendKey { addr: v4(1), port: 8080 }.permutation(size);
        // Pinned: the seeds and the key layout are part of the format.
        assert_eq!((p.offset, p.skip), PINNED_PERMUTATION);
        let v6 = BackendKey { addr: "::ffff:10.0.0.1".parse().unwrap(), port: 8080 }.permutation(size);
        assert_ne!(v6, p, "an IPv6 key never equals the IPv4 key it maps");
        for i in 0..1000 {
            let p = BackendKey { addr: v4(i), port: 80 }.permutation(TableSize::new(7).unwrap());
            assert!(p.offset < 7 && (1..7).contains(&p.skip), "{p:?}");
        }
    }

    /// 10.0.0.1:8080 in a 16381-slot table (checked against a Python transcription).
    const PINNED_PERMUTATION: (u32, u32) = (6829, 9548);

    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        for n in [1, 2, 3, 10, 100, 1000] {
            let backends: Vec<Backend> = (0..n).map(|i| Backend::new(v4(i), 8080)).collect();
            let table = Table::build(&backends, TableSize::DEFAULT).unwrap();
            let counts = table.counts(n as usize);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n}: {lo}..{hi}");
            assert_eq!(counts.iter().sum::<u32>(), 16_381);
        }
    }

    #[test]
    fn weights_give_proportional_slots() {
        let weights = [1u32, 2, 3, 4, 0, 10];
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend { weight, ..Backend::new(v4(i as u32), 80) })
            .collect();
        let table = Table::build(&backends, TableSize::DEFAULT).unwrap();
        let counts = table.counts(backends.len());
        let total: u32 = weights.iter().sum();
        for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
            let expected = f64::from(16_381u32) * f64::from(w) / f64::from(total);
            assert!(
                (f64::from(c) - expected).abs() <= 1.0,
                "backend {i}: weight {w}, {c} slots, expected {expected}"
            );
        }
    }

    #[test]
    fn empty_and_weightless_sets_give_an_empty_table() {
        for backends in [vec![], vec![Backend { weight: 0, ..Backend::new(v4(1), 80) }]] {
            let table = Table::build(&backends, TableSize::new(7).unwrap()).unwrap();
            assert!(table.slots().iter().all(|&s| s == EMPTY));
            assert_eq!(table.lookup(12345), None);
        }
    }

    #[test]
    fn rejections() {
        let size = TableSize::new(7).unwrap();
        let eight: Vec<Backend> = (0..8).map(|i| Backend::new(v4(i), 80)).collect();
        assert_eq!(Table::build(&eight, size), Err(MaglevError::TooManyBackends { backends: 8, size: 7 }));
        let twice = [Backend::new(v4(1), 80), Backend::new(v4(2), 80), Backend::new(v4(1), 80)];
        let err = Table::build(&twice, size).unwrap_err();
        assert_eq!(err.to_string(), "backend 10.0.0.1:80 is listed twice");
        let v6 = BackendKey { addr: "fd00::1".parse().unwrap(), port: 443 };
        assert_eq!(MaglevError::DuplicateBackend(v6).to_string(), "backend [fd00::1]:443 is listed twice");
    }

    #[test]
    fn the_order_of_the_list_does_not_change_who_gets_a_slot_much() {
        // Indices follow the list, but the preference lists follow the keys: reversing the
        // list changes only which backend wins contested slots.
        let backends: Vec<Backend> = (0..10).map(|i| Backend::new(v4(i), 80)).collect();
        let forward = Table::build(&backends, TableSize::DEFAULT).unwrap();
        let reversed: Vec<Backend> = backends.iter().rev().copied().collect();
        let backward = Table::build(&reversed, TableSize::DEFAULT).unwrap();
        let same = forward.slots().iter().zip(backward.slots()).filter(|(&a, &b)| a == 9 - b).count();
        assert!(same * 10 >= 16_381 * 8, "only {same} of 16381 slots agree");
    }
}
