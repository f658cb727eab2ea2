//! The prefilter's maps and the tables that fill them.
//!
//! The deny set is compiled into lookup tables whose cost does not grow with the set:
//!
//! - **IPv4**, a leaf-pushed DIR-16-8-8 table. `pf_v4_l1` is one array value of 65,536
//!   `u32` entries indexed by the top 16 bits of the address (one array element, so the
//!   program addresses it directly with `BPF_PSEUDO_MAP_VALUE`: no call). An entry is
//!   [`PASS`], [`DENY`], or `CHILD + i`: chunk `i` of `pf_v4_l2`, 256 entries indexed by
//!   the third byte, whose entries are again `PASS`, `DENY` or `CHILD + j`: bitmap `j` of
//!   `pf_v4_l3`, one bit per address of the /24. At most three array lookups.
//! - **IPv6**, `pf_v6_l1`: the same direct 65,536-entry array on the top 16 bits, with
//!   entries [`PASS`], [`DENY`], [`V6_HASH`] or [`V6_LPM`]. `V6_HASH` continues in
//!   `pf_v6_l2`, a hash keyed by the top 32 bits whose value is a [`V6Bucket`]: deny-all
//!   (a /17../32 prefix covers it), up to [`V6_LIST`] longer prefixes compared inline as
//!   masked 96-bit remainders, or "overflow" which continues in the kernel LPM trie
//!   `pf_v6_lpm`. `V6_LPM` (a /16 whose /17../31 prefixes would expand to more than
//!   [`V6_EXPAND_BUDGET`] /32 keys) also continues in `pf_v6_lpm`.
//! - `pf_cidrs` holds the deny set itself as the user wrote it (the source of truth for
//!   `sluice prefilter list|add|del`); `pf_meta` holds how many table chunks are in use;
//!   `pf_stats` counts verdicts per [`Reason`] per CPU.
//!
//! Changes are applied per /16 bucket, writing children before the parent entry that
//! points at them, so a packet never sees a half-built chunk.

use super::names;
use super::writes::MapWrites;
use super::{MapDef, F_NO_PREALLOC};
use sluice_verifier_sim::spec::MapKind;
use std::collections::{BTreeMap, BTreeSet};

/// Table entry: no prefix covers this range.
pub const PASS: u32 = 0;
/// Table entry: a prefix covers this whole range.
pub const DENY: u32 = 1;
/// Table entry base for children: `CHILD + i` points at chunk `i` of the next level.
pub const CHILD: u32 = 2;
/// IPv6 level-1 entry: continue in the /32 hash `pf_v6_l2`.
pub const V6_HASH: u32 = 2;
/// IPv6 level-1 entry: continue in the LPM trie `pf_v6_lpm`.
pub const V6_LPM: u32 = 3;

/// Entries per level-1 table (indexed by the top 16 address bits).
pub const L1_ENTRIES: usize = 1 << 16;
/// Entries per IPv4 level-2 chunk (indexed by the third address byte).
pub const L2_ENTRIES: usize = 256;
/// Bytes per IPv4 level-3 bitmap (one bit per address of a /24).
pub const L3_BYTES: usize = 32;
/// Longer-than-/32 IPv6 prefixes kept inline per /32 slot; a /32 with more continues in
/// the LPM trie.
pub const V6_LIST: usize = 1;
/// /32 keys a single /16 may expand to before its /17../31 prefixes go to LPM instead.
pub const V6_EXPAND_BUDGET: u64 = 4096;

/// `pf_v6_l2` slot state: unused.
pub const SLOT_EMPTY: u32 = 0;
/// `pf_v6_l2` slot state: the whole /32 is denied.
pub const SLOT_DENY_ALL: u32 = 1;
/// `pf_v6_l2` slot state: more than [`V6_LIST`] prefixes; continue in `pf_v6_lpm`.
pub const SLOT_LPM: u32 = 2;
/// `pf_v6_l2` slot state: compare the one inline prefix.
pub const SLOT_ONE: u32 = 3;

/// Slots per `pf_v6_l2` bucket. The /32 keys live in a bucketized cuckoo table kept in an
/// array map (array lookups are inlined by the kernel: no call): a key sits in one of
/// the four slots of bucket `h0(key)` or `h1(key)`.
pub const V6_SLOTS: usize = 4;

layout! {
    /// Layout of a `pf_v6_l2` slot: the /32 key (address bits 0..32, host order), its state,
    /// then the one inline prefix over address bits 32..128 in host order.
    pub struct V6Slot in slot {
        key: u32 => KEY,
        state: u32 => STATE,
        prefix_hi: u64 => PREFIX_HI,
        mask_hi: u64 => MASK_HI,
        prefix_lo: u32 => PREFIX_LO,
        mask_lo: u32 => MASK_LO,
    }
}

/// Bytes per `pf_v6_l2` bucket (one array element).
pub const V6_BUCKET_BYTES: usize = V6_SLOTS * slot::SIZE;

/// The multipliers of the two bucket hashes.
pub const V6_HASH_MUL: [u32; 2] = [0x9e37_79b1, 0x85eb_ca77];

/// Smallest table: 2^12 buckets of 4 slots per half (1 MiB in all), room for live
/// additions to a small set (one /20 alone expands to 4096 /32 keys).
pub const V6_MIN_BITS: u32 = 12;

/// Bucket `which` (0 or 1) of a /32 key in a table of 2^bits buckets.
pub fn v6_bucket_of(key: u32, which: usize, bits: u32) -> u32 {
    key.wrapping_mul(V6_HASH_MUL[which]) >> (32 - bits)
}

/// The `pf_meta` word that tells the program where the live half of `pf_v6_l2` is:
/// `shift (32 - bits) | base bucket << 8`. One aligned word, so a flip is atomic.
pub fn v6_conf(bits: u32, half: u32) -> u32 {
    (32 - bits) | ((half << bits) << 8)
}

layout! {
    /// Layout of a `pf_cidrs` key: the address in network order, zero-padded for IPv4.
    pub struct CidrKey in cidr_key {
        /// 4 or 6.
        family: u8 => FAMILY,
        len: u8 => LEN,
        pad: [u8; 2],
        addr: [u8; 16] => ADDR,
    }
}

layout! {
    /// Layout of the one `pf_meta` value: IPv4 chunks in use (informational: live changes
    /// find free chunks from the tables themselves), the live half of `pf_v6_l2` (read by the
    /// program), and the listing word: the number of prefixes in `pf_cidrs` with
    /// [`meta::CIDRS_HALF`] set when they sit in its second half.
    pub struct PfMeta in meta {
        v4_l2_used: u32 => V4_L2_USED,
        v4_l3_used: u32 => V4_L3_USED,
        v6_conf: u32 => V6_CONF,
        cidrs: u32 => CIDRS,
    }
    /// Bit of the `CIDRS` word: the listing starts at `max_entries / 2` of `pf_cidrs`.
    pub const CIDRS_HALF: u32 = 1 << 31;

    /// The listing word of `count` records in `half` (0 or 1).
    pub fn cidrs_word(count: usize, half: u32) -> u32 {
        (count as u32 & !CIDRS_HALF) | if half != 0 { CIDRS_HALF } else { 0 }
    }

    /// (count, half) of a listing word.
    pub fn cidrs_of(word: u32) -> (u32, u32) {
        (word & !CIDRS_HALF, u32::from(word & CIDRS_HALF != 0))
    }

    /// The first `pf_cidrs` index of `half` in a map of `capacity` entries.
    pub fn cidrs_base(half: u32, capacity: u32) -> u32 {
        if half != 0 {
            capacity / 2
        } else {
            0
        }
    }
}

/// Why the prefilter reached its verdict. The index is the `pf_stats` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the stack.
    NotIp = 0,
    /// IPv4 source not in the deny set.
    PassV4 = 1,
    /// IPv6 source not in the deny set.
    PassV6 = 2,
    /// IPv4 source in the deny set.
    DenyV4 = 3,
    /// IPv6 source in the deny set.
    DenyV6 = 4,
    /// Shorter than an Ethernet header.
    TruncatedEthernet = 5,
    /// A VLAN tag cut short.
    TruncatedVlan = 6,
    /// More than two VLAN tags.
    VlanTooDeep = 7,
    /// IPv4 header (with its options) cut short.
    TruncatedIpv4 = 8,
    /// IPv4 version field not 4, or header length under 20 bytes.
    MalformedIpv4 = 9,
    /// IPv6 fixed header cut short.
    TruncatedIpv6 = 10,
    /// IPv6 version field not 6.
    MalformedIpv6 = 11,
}

pub use crate::uapi::{XDP_DROP, XDP_PASS};

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 12] = [
        Reason::NotIp,
        Reason::PassV4,
        Reason::PassV6,
        Reason::DenyV4,
        Reason::DenyV6,
        Reason::TruncatedEthernet,
        Reason::TruncatedVlan,
        Reason::VlanTooDeep,
        Reason::TruncatedIpv4,
        Reason::MalformedIpv4,
        Reason::TruncatedIpv6,
        Reason::MalformedIpv6,
    ];

    /// The XDP verdict this reason leads to.
    pub fn verdict(self) -> i32 {
        match self {
            Reason::NotIp | Reason::PassV4 | Reason::PassV6 => XDP_PASS,
            _ => XDP_DROP,
        }
    }

    /// A short name for listings and `sluice` output.
    pub fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "pass_not_ip",
            Reason::PassV4 => "pass_v4",
            Reason::PassV6 => "pass_v6",
            Reason::DenyV4 => "deny_v4",
            Reason::DenyV6 => "deny_v6",
            Reason::TruncatedEthernet => "truncated_ethernet",
            Reason::TruncatedVlan => "truncated_vlan",
            Reason::VlanTooDeep => "vlan_too_deep",
            Reason::TruncatedIpv4 => "truncated_ipv4",
            Reason::MalformedIpv4 => "malformed_ipv4",
            Reason::TruncatedIpv6 => "truncated_ipv6",
            Reason::MalformedIpv6 => "malformed_ipv6",
        }
    }
}

/// Capacities of the chunked maps, chosen at load time from the deny set with headroom
/// for live additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub v4_l2: u32,
    pub v4_l3: u32,
    /// `pf_v6_l2` holds two halves of 2^v6_bits buckets each.
    pub v6_bits: u32,
    pub v6_lpm: u32,
    pub cidrs: u32,
}

impl Capacity {
    /// Room for `tables` twice over (live changes append new chunks), and at least a
    /// floor that lets a small set grow.
    pub fn for_tables(tables: &Tables, cidrs: usize) -> Capacity {
        let room = |used: usize, floor: u32| -> u32 {
            u32::try_from(used.saturating_mul(2)).unwrap_or(u32::MAX).max(floor)
        };
        Capacity {
            v4_l2: room(tables.v4.l2.len(), 1024),
            v4_l3: room(tables.v4.l3.len(), 4096),
            v6_bits: v6_bits_for(&tables.v6.l2),
            // Trie elements are allocated on use: a generous floor costs nothing.
            v6_lpm: room(tables.v6.lpm.len(), 65536),
            cidrs: room(cidrs, 4096),
        }
    }
}

/// The prefilter's maps, for a given capacity.
pub fn map_defs(cap: Capacity) -> Vec<MapDef> {
    vec![
        MapDef {
            name: names::PF_V4_L1,
            kind: MapKind::Array,
            key_size: 4,
            value_size: (L1_ENTRIES * 4) as u32,
            max_entries: 1,
            flags: 0,
        },
        MapDef {
            name: names::PF_V4_L2,
            kind: MapKind::Array,
            key_size: 4,
            value_size: (L2_ENTRIES * 4) as u32,
            max_entries: cap.v4_l2,
            flags: 0,
        },
        MapDef {
            name: names::PF_V4_L3,
            kind: MapKind::Array,
            key_size: 4,
            value_size: L3_BYTES as u32,
            max_entries: cap.v4_l3,
            flags: 0,
        },
        MapDef {
            name: names::PF_V6_L1,
            kind: MapKind::Array,
            key_size: 4,
            value_size: (L1_ENTRIES * 4) as u32,
            max_entries: 1,
            flags: 0,
        },
        MapDef {
            name: names::PF_V6_L2,
            kind: MapKind::Array,
            key_size: 4,
            value_size: V6_BUCKET_BYTES as u32,
            max_entries: 2 << cap.v6_bits,
            flags: 0,
        },
        MapDef {
            name: names::PF_V6_LPM,
            kind: MapKind::LpmTrie,
            key_size: 20,
            value_size: 1,
            max_entries: cap.v6_lpm,
            flags: F_NO_PREALLOC,
        },
        MapDef {
            name: names::PF_STATS,
            kind: MapKind::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: Reason::ALL.len() as u32,
            flags: 0,
        },
        MapDef {
            name: names::PF_CIDRS,
            kind: MapKind::Array,
            key_size: 4,
            value_size: cidr_key::SIZE as u32,
            max_entries: cap.cidrs,
            flags: 0,
        },
        MapDef {
            name: names::PF_META,
            kind: MapKind::Array,
            key_size: 4,
            value_size: meta::SIZE as u32,
            max_entries: 1,
            flags: 0,
        },
    ]
}

/// An IPv4 or IPv6 prefix with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4 { addr: u32, len: u8 },
    V6 { addr: u128, len: u8 },
}

impl Prefix {
    /// The `pf_cidrs` key of this prefix.
    pub fn cidr_key(&self) -> [u8; cidr_key::SIZE] {
        let mut k = [0u8; cidr_key::SIZE];
        match *self {
            Prefix::V4 { addr, len } => {
                k[cidr_key::FAMILY] = 4;
                k[cidr_key::LEN] = len;
                k[cidr_key::ADDR..cidr_key::ADDR + 4].copy_from_slice(&addr.to_be_bytes());
            }
            Prefix::V6 { addr, len } => {
                k[cidr_key::FAMILY] = 6;
                k[cidr_key::LEN] = len;
                k[cidr_key::ADDR..].copy_from_slice(&addr.to_be_bytes());
            }
        }
        k
    }

    /// The prefix a `pf_cidrs` key holds, if it is well formed.
    pub fn from_cidr_key(k: &[u8]) -> Option<Prefix> {
        if k.len() != cidr_key::SIZE {
            return None;
        }
        let len = k[cidr_key::LEN];
        let mut a = [0u8; 16];
        a.copy_from_slice(&k[cidr_key::ADDR..]);
        match k[cidr_key::FAMILY] {
            4 if len <= 32 => {
                let addr = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
                (addr & !mask32(len) == 0).then_some(Prefix::V4 { addr, len })
            }
            6 if len <= 128 => {
                let addr = u128::from_be_bytes(a);
                (addr & !mask128(len) == 0).then_some(Prefix::V6 { addr, len })
            }
            _ => None,
        }
    }
}

/// The network mask of a /len IPv4 prefix.
pub fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// The network mask of a /len IPv6 prefix.
pub fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// A deny set split by family, ordered by (address, length).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenySet {
    pub v4: BTreeSet<(u32, u8)>,
    pub v6: BTreeSet<(u128, u8)>,
}

impl DenySet {
    /// The set of these prefixes.
    pub fn new(prefixes: impl IntoIterator<Item = Prefix>) -> DenySet {
        let mut set = DenySet::default();
        for p in prefixes {
            set.insert(p);
        }
        set
    }

    /// Add a prefix; true if it was new.
    pub fn insert(&mut self, p: Prefix) -> bool {
        match p {
            Prefix::V4 { addr, len } => self.v4.insert((addr, len)),
            Prefix::V6 { addr, len } => self.v6.insert((addr, len)),
        }
    }

    /// Remove a prefix; true if it was there.
    pub fn remove(&mut self, p: Prefix) -> bool {
        match p {
            Prefix::V4 { addr, len } => self.v4.remove(&(addr, len)),
            Prefix::V6 { addr, len } => self.v6.remove(&(addr, len)),
        }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All prefixes, IPv4 first.
    pub fn prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.v4
            .iter()
            .map(|&(addr, len)| Prefix::V4 { addr, len })
            .chain(self.v6.iter().map(|&(addr, len)| Prefix::V6 { addr, len }))
    }

    /// Whether an IPv4 address is denied (the reference answer for tests).
    pub fn denies_v4(&self, a: u32) -> bool {
        (0..=32u8).any(|len| self.v4.contains(&(a & mask32(len), len)))
    }

    /// Whether an IPv6 address is denied (the reference answer for tests).
    pub fn denies_v6(&self, a: u128) -> bool {
        (0..=128u8).any(|len| self.v6.contains(&(a & mask128(len), len)))
    }

    /// Whether a prefix of length <= `upto` covers the IPv4 /16 `hi`.
    fn v4_covers_bucket(&self, hi: u32) -> bool {
        let base = hi << 16;
        (0..=16u8).any(|len| self.v4.contains(&(base & mask32(len), len)))
    }

    fn v6_covers_bucket(&self, hi: u32) -> bool {
        let base = u128::from(hi) << 112;
        (0..=16u8).any(|len| self.v6.contains(&(base & mask128(len), len)))
    }

    /// Prefixes longer than /16 inside the IPv4 /16 `hi`, shortest first.
    fn v4_inner(&self, hi: u32) -> Vec<(u32, u8)> {
        let lo = hi << 16;
        let top = lo | 0xffff;
        let mut v: Vec<(u32, u8)> =
            self.v4.range((lo, 17)..=(top, 32)).copied().filter(|p| p.1 > 16).collect();
        v.sort_by_key(|&(a, l)| (l, a));
        v
    }

    fn v6_inner(&self, hi: u32) -> Vec<(u128, u8)> {
        let lo = u128::from(hi) << 112;
        let top = lo | (u128::MAX >> 16);
        let mut v: Vec<(u128, u8)> =
            self.v6.range((lo, 17)..=(top, 128)).copied().filter(|p| p.1 > 16).collect();
        v.sort_by_key(|&(a, l)| (l, a));
        v
    }
}

/// One IPv4 /16 bucket's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V4Bucket {
    Pass,
    Deny,
    /// A level-2 chunk whose `CHILD + j` entries index `l3` (local numbering).
    Chunk {
        l2: Box<[u32; L2_ENTRIES]>,
        l3: Vec<[u8; L3_BYTES]>,
    },
}

/// One IPv6 /32 bucket of `pf_v6_l2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V6Bucket {
    DenyAll,
    /// Up to [`V6_LIST`] prefixes longer than /32: (address, length).
    List(Vec<(u128, u8)>),
    /// More than [`V6_LIST`]: look up the LPM trie.
    Lpm,
}

/// The bytes of a `pf_v6_l2` slot holding `key`.
pub fn encode_slot(key: u32, b: &V6Bucket) -> [u8; slot::SIZE] {
    let mut v = [0u8; slot::SIZE];
    let (state, inline) = match b {
        V6Bucket::DenyAll => (SLOT_DENY_ALL, None),
        V6Bucket::Lpm => (SLOT_LPM, None),
        V6Bucket::List(l) if l.len() == 1 => (SLOT_ONE, l.first().copied()),
        V6Bucket::List(_) => (SLOT_LPM, None),
    };
    v[slot::KEY..slot::KEY + 4].copy_from_slice(&key.to_le_bytes());
    v[slot::STATE..slot::STATE + 4].copy_from_slice(&state.to_le_bytes());
    if let Some((addr, len)) = inline {
        let m = mask128(len);
        v[slot::PREFIX_HI..slot::PREFIX_HI + 8].copy_from_slice(&((addr >> 32) as u64).to_le_bytes());
        v[slot::MASK_HI..slot::MASK_HI + 8].copy_from_slice(&((m >> 32) as u64).to_le_bytes());
        v[slot::PREFIX_LO..slot::PREFIX_LO + 4].copy_from_slice(&(addr as u32).to_le_bytes());
        v[slot::MASK_LO..slot::MASK_LO + 4].copy_from_slice(&(m as u32).to_le_bytes());
    }
    v
}

/// Place /32 keys in a cuckoo table of 2^bits buckets of [`V6_SLOTS`] slots: each key in
/// one of its two buckets. Deterministic; `None` when the keys do not fit.
pub fn cuckoo_layout(keys: impl Iterator<Item = u32>, bits: u32) -> Option<Vec<[Option<u32>; V6_SLOTS]>> {
    cuckoo_layout_by(keys, bits, |key, which| v6_bucket_of(key, which, bits))
}

/// A bucketized cuckoo layout of 2^bits buckets of four slots for any keys, given each
/// key's two candidate buckets (`bucket(key, 0 | 1)`). Deterministic; `None` when the keys
/// do not fit.
pub fn cuckoo_layout_by<K: Copy>(
    keys: impl Iterator<Item = K>,
    bits: u32,
    bucket: impl Fn(K, usize) -> u32,
) -> Option<Vec<[Option<K>; V6_SLOTS]>> {
    let mut table: Vec<[Option<K>; V6_SLOTS]> = vec![[None; V6_SLOTS]; 1usize << bits];
    let load = |b: &[Option<K>; V6_SLOTS]| b.iter().filter(|s| s.is_some()).count();
    for key in keys {
        let mut key = key;
        let mut ok = false;
        for kick in 0..500usize {
            let (b0, b1) = (bucket(key, 0) as usize, bucket(key, 1) as usize);
            let target = if load(&table[b0]) <= load(&table[b1]) { b0 } else { b1 };
            if let Some(free) = table[target].iter_mut().find(|s| s.is_none()) {
                *free = Some(key);
                ok = true;
                break;
            }
            // Both full: evict a slot (rotating over both buckets) and re-place it.
            let victim_bucket = if kick % 2 == 0 { b0 } else { b1 };
            let victim = &mut table[victim_bucket][kick % V6_SLOTS];
            let evicted = victim.replace(key).expect("a full bucket has no empty slot");
            key = evicted;
        }
        if !ok {
            return None;
        }
    }
    Some(table)
}

/// The smallest table (at most half full, for room to grow live) that holds these keys.
pub fn v6_bits_for(l2: &BTreeMap<u32, V6Bucket>) -> u32 {
    let mut bits = V6_MIN_BITS;
    while (1usize << bits) * V6_SLOTS < l2.len() * 2 {
        bits += 1;
    }
    while cuckoo_layout(l2.keys().copied(), bits).is_none() {
        bits += 1;
    }
    bits
}

/// The bucket values of one half of `pf_v6_l2`, flattened, or `None` if they do not fit.
pub fn v6_half_bytes(l2: &BTreeMap<u32, V6Bucket>, bits: u32) -> Option<Vec<u8>> {
    let table = cuckoo_layout(l2.keys().copied(), bits)?;
    let mut out = vec![0u8; table.len() * V6_BUCKET_BYTES];
    for (i, bucket) in table.iter().enumerate() {
        for (j, key) in bucket.iter().enumerate() {
            if let Some(k) = key {
                let at = i * V6_BUCKET_BYTES + j * slot::SIZE;
                out[at..at + slot::SIZE].copy_from_slice(&encode_slot(*k, &l2[k]));
            }
        }
    }
    Some(out)
}

/// One IPv6 /16 bucket's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V6Top {
    Pass,
    Deny,
    /// /32 buckets in `pf_v6_l2`, plus prefixes of overflowing buckets for the trie.
    Hash {
        buckets: BTreeMap<u32, V6Bucket>,
        lpm: Vec<(u128, u8)>,
    },
    /// Everything longer than /16 in this /16 goes to the trie.
    Lpm {
        lpm: Vec<(u128, u8)>,
    },
}

/// Build the IPv4 content of the /16 `hi`.
pub fn build_v4_bucket(set: &DenySet, hi: u32) -> V4Bucket {
    if set.v4_covers_bucket(hi) {
        return V4Bucket::Deny;
    }
    let inner = set.v4_inner(hi);
    if inner.is_empty() {
        return V4Bucket::Pass;
    }
    let mut l2 = Box::new([PASS; L2_ENTRIES]);
    let mut l3: Vec<[u8; L3_BYTES]> = Vec::new();
    for (addr, len) in inner {
        let third = ((addr >> 8) & 0xff) as usize;
        if len <= 24 {
            let span = 1usize << (24 - len);
            l2[third..third + span].fill(DENY);
            continue;
        }
        let e = l2[third];
        if e == DENY {
            continue;
        }
        let j = if e == PASS {
            l3.push([0u8; L3_BYTES]);
            l2[third] = CHILD + (l3.len() - 1) as u32;
            l3.len() - 1
        } else {
            (e - CHILD) as usize
        };
        let first = (addr & 0xff) as usize;
        for bit in first..first + (1usize << (32 - len)) {
            l3[j][bit / 8] |= 1 << (bit % 8);
        }
    }
    V4Bucket::Chunk { l2, l3 }
}

/// Build the IPv6 content of the /16 `hi`.
pub fn build_v6_top(set: &DenySet, hi: u32) -> V6Top {
    if set.v6_covers_bucket(hi) {
        return V6Top::Deny;
    }
    let inner = set.v6_inner(hi);
    if inner.is_empty() {
        return V6Top::Pass;
    }
    let expansion: u64 = inner.iter().filter(|p| p.1 < 32).map(|p| 1u64 << (32 - p.1)).sum();
    if expansion > V6_EXPAND_BUDGET {
        return V6Top::Lpm { lpm: inner };
    }
    let mut buckets: BTreeMap<u32, V6Bucket> = BTreeMap::new();
    for &(addr, len) in &inner {
        let key = (addr >> 96) as u32;
        if len <= 32 {
            for k in key..=key + ((1u64 << (32 - len)) - 1) as u32 {
                buckets.insert(k, V6Bucket::DenyAll);
            }
            continue;
        }
        match buckets.entry(key).or_insert_with(|| V6Bucket::List(Vec::new())) {
            V6Bucket::List(l) => l.push((addr, len)),
            V6Bucket::DenyAll | V6Bucket::Lpm => {}
        }
    }
    let mut lpm = Vec::new();
    for (key, b) in buckets.iter_mut() {
        if let V6Bucket::List(l) = b {
            if l.len() > V6_LIST {
                lpm.extend(inner.iter().copied().filter(|p| p.1 > 32 && (p.0 >> 96) as u32 == *key));
                *b = V6Bucket::Lpm;
            }
        }
    }
    V6Top::Hash { buckets, lpm }
}

/// Tables for a whole deny set, with chunk ids assigned in bucket order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub v4: V4Tables,
    pub v6: V6Tables,
}

/// The IPv4 tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V4Tables {
    pub l1: Vec<u32>,
    pub l2: Vec<Box<[u32; L2_ENTRIES]>>,
    pub l3: Vec<[u8; L3_BYTES]>,
}

/// The IPv6 tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V6Tables {
    pub l1: Vec<u32>,
    pub l2: BTreeMap<u32, V6Bucket>,
    pub lpm: BTreeSet<(u128, u8)>,
}

impl V4Tables {
    /// Place a bucket's chunk at the next free ids; returns the level-1 entry.
    pub fn place(&mut self, b: V4Bucket) -> u32 {
        match b {
            V4Bucket::Pass => PASS,
            V4Bucket::Deny => DENY,
            V4Bucket::Chunk { mut l2, l3 } => {
                let base = self.l3.len() as u32;
                for e in l2.iter_mut() {
                    if *e >= CHILD {
                        *e += base;
                    }
                }
                self.l3.extend(l3);
                self.l2.push(l2);
                CHILD + (self.l2.len() - 1) as u32
            }
        }
    }
}

impl V6Tables {
    /// Merge a /16's content; returns the level-1 entry.
    pub fn place(&mut self, t: V6Top) -> u32 {
        match t {
            V6Top::Pass => PASS,
            V6Top::Deny => DENY,
            V6Top::Hash { buckets, lpm } => {
                self.l2.extend(buckets);
                self.lpm.extend(lpm);
                V6_HASH
            }
            V6Top::Lpm { lpm } => {
                self.lpm.extend(lpm);
                V6_LPM
            }
        }
    }
}

/// The /16 buckets a set touches: those with any prefix inside or covering them.
fn v4_buckets(set: &DenySet) -> BTreeSet<u32> {
    let mut b = BTreeSet::new();
    for &(addr, len) in &set.v4 {
        let hi = addr >> 16;
        let span = if len >= 16 { 1 } else { 1u32 << (16 - len) };
        b.extend(hi..hi + span);
    }
    b
}

fn v6_buckets(set: &DenySet) -> BTreeSet<u32> {
    let mut b = BTreeSet::new();
    for &(addr, len) in &set.v6 {
        let hi = (addr >> 112) as u32;
        let span = if len >= 16 { 1 } else { 1u32 << (16 - len) };
        b.extend(hi..hi + span);
    }
    b
}

impl Tables {
    /// Compile a whole deny set.
    pub fn build(set: &DenySet) -> Tables {
        let mut t = Tables::default();
        t.v4.l1 = vec![PASS; L1_ENTRIES];
        t.v6.l1 = vec![PASS; L1_ENTRIES];
        for hi in v4_buckets(set) {
            t.v4.l1[hi as usize] = t.v4.place(build_v4_bucket(set, hi));
        }
        for hi in v6_buckets(set) {
            t.v6.l1[hi as usize] = t.v6.place(build_v6_top(set, hi));
        }
        t
    }

    /// Look an IPv4 address up the way the program does.
    pub fn lookup_v4(&self, a: u32) -> bool {
        let e = self.v4.l1[(a >> 16) as usize];
        if e < CHILD {
            return e == DENY;
        }
        let e = self.v4.l2[(e - CHILD) as usize][((a >> 8) & 0xff) as usize];
        if e < CHILD {
            return e == DENY;
        }
        let bits = &self.v4.l3[(e - CHILD) as usize];
        let b = (a & 0xff) as usize;
        bits[b / 8] & (1 << (b % 8)) != 0
    }

    /// Look an IPv6 address up the way the program does.
    pub fn lookup_v6(&self, a: u128) -> bool {
        let lpm = |a: u128| self.v6.lpm.iter().any(|&(p, l)| a & mask128(l) == p);
        match self.v6.l1[(a >> 112) as usize] {
            PASS => false,
            DENY => true,
            V6_LPM => lpm(a),
            _ => match self.v6.l2.get(&((a >> 96) as u32)) {
                None => false,
                Some(V6Bucket::DenyAll) => true,
                Some(V6Bucket::Lpm) => lpm(a),
                Some(V6Bucket::List(l)) => l.iter().any(|&(p, len)| a & mask128(len) == p),
            },
        }
    }
}

/// The level-1 array as the bytes of its single value.
pub fn l1_bytes(l1: &[u32]) -> Vec<u8> {
    l1.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// A level-2 chunk as value bytes.
pub fn l2_bytes(chunk: &[u32; L2_ENTRIES]) -> Vec<u8> {
    chunk.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// An LPM trie key `{u32 prefixlen; u8 addr[16]}` for a v6 prefix.
pub fn lpm6_key(addr: u128, len: u8) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&u32::from(len).to_le_bytes());
    k[4..].copy_from_slice(&addr.to_be_bytes());
    k
}

/// `pf_cidrs` records for a set, in order (IPv4 first), from index `base`.
fn cidr_writes(set: &DenySet, base: u32) -> MapWrites {
    let mut cidrs = MapWrites::new(names::PF_CIDRS, 4, cidr_key::SIZE);
    for (i, p) in set.prefixes().enumerate() {
        cidrs.put(&(base + i as u32).to_le_bytes(), &p.cidr_key());
    }
    cidrs
}

fn meta_value(v4_l2_used: u32, v4_l3_used: u32, v6_conf_word: u32, cidrs_word: u32) -> [u8; meta::SIZE] {
    let mut m = [0u8; meta::SIZE];
    m[meta::V4_L2_USED..meta::V4_L2_USED + 4].copy_from_slice(&v4_l2_used.to_le_bytes());
    m[meta::V4_L3_USED..meta::V4_L3_USED + 4].copy_from_slice(&v4_l3_used.to_le_bytes());
    m[meta::V6_CONF..meta::V6_CONF + 4].copy_from_slice(&v6_conf_word.to_le_bytes());
    m[meta::CIDRS..meta::CIDRS + 4].copy_from_slice(&cidrs_word.to_le_bytes());
    m
}

fn v6_half_writes(l2: &BTreeMap<u32, V6Bucket>, bits: u32, half: u32) -> Option<MapWrites> {
    let bytes = v6_half_bytes(l2, bits)?;
    let mut w = MapWrites::new(names::PF_V6_L2, 4, V6_BUCKET_BYTES);
    for (i, bucket) in bytes.chunks_exact(V6_BUCKET_BYTES).enumerate() {
        w.put(&((half << bits) + i as u32).to_le_bytes(), bucket);
    }
    Some(w)
}

/// The writes that fill empty maps with `tables` and `set`, children before parents.
pub fn initial_writes(set: &DenySet, tables: &Tables, cap: Capacity) -> Vec<MapWrites> {
    let mut v4_l3 = MapWrites::new(names::PF_V4_L3, 4, L3_BYTES);
    for (j, bits) in tables.v4.l3.iter().enumerate() {
        v4_l3.put(&(j as u32).to_le_bytes(), bits);
    }
    let mut v4_l2 = MapWrites::new(names::PF_V4_L2, 4, L2_ENTRIES * 4);
    for (i, chunk) in tables.v4.l2.iter().enumerate() {
        v4_l2.put(&(i as u32).to_le_bytes(), &l2_bytes(chunk));
    }
    let v6_l2 = v6_half_writes(&tables.v6.l2, cap.v6_bits, 0)
        .expect("Capacity::for_tables chose v6_bits so that the keys fit");
    let mut v6_lpm = MapWrites::new(names::PF_V6_LPM, 20, 1);
    for &(addr, len) in &tables.v6.lpm {
        v6_lpm.put(&lpm6_key(addr, len), &[1]);
    }
    let mut v4_l1 = MapWrites::new(names::PF_V4_L1, 4, L1_ENTRIES * 4);
    v4_l1.put(&0u32.to_le_bytes(), &l1_bytes(&tables.v4.l1));
    let mut v6_l1 = MapWrites::new(names::PF_V6_L1, 4, L1_ENTRIES * 4);
    v6_l1.put(&0u32.to_le_bytes(), &l1_bytes(&tables.v6.l1));
    let mut meta_w = MapWrites::new(names::PF_META, 4, meta::SIZE);
    let m = meta_value(
        tables.v4.l2.len() as u32,
        tables.v4.l3.len() as u32,
        v6_conf(cap.v6_bits, 0),
        meta::cidrs_word(set.len(), 0),
    );
    meta_w.put(&0u32.to_le_bytes(), &m);
    vec![v4_l3, v4_l2, v6_l2, v6_lpm, cidr_writes(set, 0), meta_w, v4_l1, v6_l1]
}

/// What a live change needs to know about the maps as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveState {
    /// The deny set before the change (from `pf_cidrs`).
    pub set: DenySet,
    /// The current level-1 arrays.
    pub v4_l1: Vec<u32>,
    pub v6_l1: Vec<u32>,
    /// The `pf_v4_l2` chunks the live level 1 points at, and the `pf_v4_l3` bitmaps those
    /// chunks point at: every other chunk is free (a chunk of an interrupted change that
    /// was never flipped in, or one a later change flipped out).
    pub v4_l2_live: BTreeSet<u32>,
    pub v4_l3_live: BTreeSet<u32>,
    /// The contents of the live `pf_v4_l2` chunks and `pf_v4_l3` bitmaps, by index.
    pub v4_chunks: BTreeMap<u32, Vec<u32>>,
    pub v4_bitmaps: BTreeMap<u32, Vec<u8>>,
    /// Capacities of the chunk arrays.
    pub v4_l2_cap: u32,
    pub v4_l3_cap: u32,
    /// The live `pf_v6_l2` configuration word (from `pf_meta`) and the map's capacity.
    pub v6_conf: u32,
    pub v6_l2_cap: u32,
    /// The prefixes in `pf_v6_lpm`, and its capacity.
    pub v6_lpm: BTreeSet<(u128, u8)>,
    pub v6_lpm_cap: u32,
    /// The half of `pf_cidrs` the listing is in (from `pf_meta`), and the map's capacity.
    pub cidrs_half: u32,
    pub cidrs_cap: u32,
}

/// Why a live change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("map {map} is full ({capacity} entries): reload the node (`sluice load`) to resize it")]
    Full { map: &'static str, capacity: u32 },
}

/// The IPv6 tables of a whole set.
pub fn build_v6(set: &DenySet) -> V6Tables {
    let mut t = V6Tables { l1: vec![PASS; L1_ENTRIES], ..V6Tables::default() };
    for hi in v6_buckets(set) {
        t.l1[hi as usize] = t.place(build_v6_top(set, hi));
    }
    t
}

/// An IPv4 /16's content with its chunks inlined, to compare contents across chunk
/// numberings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V4Flat {
    Pass,
    Deny,
    Chunk(Vec<V4Flat>),
    Bits(Vec<u8>),
    /// An entry pointing past what was read.
    Dangling(u32),
}

fn flat_l2_entry(e: u32, bitmap: impl Fn(u32) -> Option<Vec<u8>>) -> V4Flat {
    match e {
        PASS => V4Flat::Pass,
        DENY => V4Flat::Deny,
        c => bitmap(c - CHILD).map_or(V4Flat::Dangling(c), V4Flat::Bits),
    }
}

/// The live content of the /16 `hi`.
fn v4_live_bucket(state: &LiveState, hi: u32) -> V4Flat {
    match state.v4_l1.get(hi as usize).copied().unwrap_or(PASS) {
        PASS => V4Flat::Pass,
        DENY => V4Flat::Deny,
        c => match state.v4_chunks.get(&(c - CHILD)) {
            Some(chunk) => V4Flat::Chunk(
                chunk.iter().map(|&e| flat_l2_entry(e, |j| state.v4_bitmaps.get(&j).cloned())).collect(),
            ),
            None => V4Flat::Dangling(c),
        },
    }
}

/// The content the listing asks for in the /16 `hi`.
fn v4_wanted_bucket(set: &DenySet, hi: u32) -> V4Flat {
    match build_v4_bucket(set, hi) {
        V4Bucket::Pass => V4Flat::Pass,
        V4Bucket::Deny => V4Flat::Deny,
        V4Bucket::Chunk { l2, l3 } => V4Flat::Chunk(
            l2.iter().map(|&e| flat_l2_entry(e, |j| l3.get(j as usize).map(|b| b.to_vec()))).collect(),
        ),
    }
}

/// The IPv4 /16s whose live tables do not say what `state.set` (the listing) says.
pub fn v4_mismatches(state: &LiveState) -> BTreeSet<u32> {
    let mut candidates = v4_buckets(&state.set);
    candidates.extend(state.v4_l1.iter().enumerate().filter(|(_, e)| **e != PASS).map(|(hi, _)| hi as u32));
    candidates
        .into_iter()
        .filter(|&hi| v4_live_bucket(state, hi) != v4_wanted_bucket(&state.set, hi))
        .collect()
}

/// What in the live prefilter tables disagrees with its listing (`pf_cidrs`), one line per
/// problem; empty when the tables enforce exactly the listed set. `v6_live_half` is the
/// live half of `pf_v6_l2`, flattened.
pub fn consistency_problems(state: &LiveState, v6_live_half: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let cidr16 = |hi: u32, family: u8| match family {
        4 => format!("{}/16", std::net::Ipv4Addr::from(hi << 16)),
        _ => format!("{}/16", std::net::Ipv6Addr::from(u128::from(hi) << 112)),
    };
    for hi in v4_mismatches(state) {
        problems.push(format!("IPv4 {}: the tables do not enforce what the listing says", cidr16(hi, 4)));
    }
    let v6 = build_v6(&state.set);
    for (hi, (live, want)) in state.v6_l1.iter().zip(&v6.l1).enumerate() {
        if live != want {
            problems.push(format!(
                "IPv6 {}: level-1 entry {live}, the listing asks for {want}",
                cidr16(hi as u32, 6)
            ));
        }
    }
    let bits = (state.v6_l2_cap / 2).max(1).ilog2();
    match v6_half_bytes(&v6.l2, bits) {
        Some(want) if want == v6_live_half => {}
        Some(_) => {
            problems.push("IPv6: the live half of pf_v6_l2 differs from the listing's /32 table".into())
        }
        None => problems.push("IPv6: the listing's /32 table does not fit pf_v6_l2".into()),
    }
    if v6.lpm != state.v6_lpm {
        let extra = state.v6_lpm.difference(&v6.lpm).count();
        let missing = v6.lpm.difference(&state.v6_lpm).count();
        problems
            .push(format!("IPv6: pf_v6_lpm has {extra} prefixes the listing lacks, lacks {missing} it has"));
    }
    problems
}

/// The first `n` indices below `cap` that are not in `live`, or `None` if fewer are free.
fn free_chunks(live: &BTreeSet<u32>, cap: u32, n: usize) -> Option<Vec<u32>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let free: Vec<u32> = (0..cap).filter(|i| !live.contains(i)).take(n).collect();
    (free.len() == n).then_some(free)
}

/// The writes that turn the maps from `state.set` to `new` without a reload.
///
/// IPv4: each touched /16 is rebuilt into chunks no live table points at (free chunks are
/// found from the live tables, so chunks flipped out by earlier changes are reused), then
/// its level-1 entry flips. IPv6: the /32 table is rebuilt whole into the idle half of
/// `pf_v6_l2`, new trie prefixes are added, then one `pf_meta` word flips the program to
/// the new half and the level-1 arrays flip; stale trie prefixes go last. A change that
/// does not fit is refused before anything is written.
///
/// Order, for crash consistency (a process killed between any two writes): everything the
/// program cannot see yet; then what it enforces (the `pf_meta` half word, the level-1
/// arrays); then the listing, written into the idle half of `pf_cidrs` and switched by one
/// `pf_meta` write, last. A change cut short is therefore at worst enforced but not listed
/// (an add) or no longer enforced but still listed (a delete): never a listed prefix that
/// an add left unenforced, and running the same command again completes it.
pub fn live_writes(state: &LiveState, new: &DenySet) -> Result<Vec<MapWrites>, LiveError> {
    let old = &state.set;
    let added = DenySet {
        v4: new.v4.difference(&old.v4).copied().collect(),
        v6: new.v6.difference(&old.v6).copied().collect(),
    };
    let removed = DenySet {
        v4: old.v4.difference(&new.v4).copied().collect(),
        v6: old.v6.difference(&new.v6).copied().collect(),
    };
    let mut b4 = v4_buckets(&added);
    b4.extend(v4_buckets(&removed));
    // A /16 whose tables disagree with the listing (a change cut short) is rebuilt too.
    b4.extend(v4_mismatches(state));

    // New chunks in local numbering (0..), then mapped onto free chunk indices.
    let mut v4 = V4Tables { l1: state.v4_l1.clone(), l2: Vec::new(), l3: Vec::new() };
    let mut placed_l1 = Vec::new();
    for &hi in &b4 {
        placed_l1.push((hi, v4.place(build_v4_bucket(new, hi))));
    }
    let free2 = free_chunks(&state.v4_l2_live, state.v4_l2_cap, v4.l2.len())
        .ok_or(LiveError::Full { map: names::PF_V4_L2, capacity: state.v4_l2_cap })?;
    let free3 = free_chunks(&state.v4_l3_live, state.v4_l3_cap, v4.l3.len())
        .ok_or(LiveError::Full { map: names::PF_V4_L3, capacity: state.v4_l3_cap })?;
    let cidrs_half_cap = state.cidrs_cap / 2;
    if new.len() > cidrs_half_cap as usize {
        return Err(LiveError::Full { map: names::PF_CIDRS, capacity: cidrs_half_cap });
    }
    let mut v4_l3 = MapWrites::new(names::PF_V4_L3, 4, L3_BYTES);
    for (j, bits) in v4.l3.iter().enumerate() {
        v4_l3.put(&free3[j].to_le_bytes(), bits);
    }
    let mut v4_l2 = MapWrites::new(names::PF_V4_L2, 4, L2_ENTRIES * 4);
    for (i, chunk) in v4.l2.iter().enumerate() {
        let mut c = **chunk;
        for e in c.iter_mut() {
            if *e >= CHILD {
                *e = CHILD + free3[(*e - CHILD) as usize];
            }
        }
        v4_l2.put(&free2[i].to_le_bytes(), &l2_bytes(&c));
    }
    let mut l1 = state.v4_l1.clone();
    for (hi, e) in placed_l1 {
        l1[hi as usize] = if e >= CHILD { CHILD + free2[(e - CHILD) as usize] } else { e };
    }
    // Chunks in use once the change is in: those kept, and the new ones.
    let mut l2_in_use: BTreeSet<u32> = l1.iter().filter(|e| **e >= CHILD).map(|e| e - CHILD).collect();
    l2_in_use.extend(&free2);
    // Bitmaps: an upper bound (those of chunks flipped out are counted until the next
    // change reads the tables); the word is for people, allocation reads the tables.
    let l3_in_use = state.v4_l3_live.len() + free3.len();

    // IPv6: the whole table into the idle half.
    let v6 = build_v6(new);
    let bits = (state.v6_l2_cap / 2).max(1).ilog2();
    let live_half = u32::from((state.v6_conf >> 8) != 0);
    let idle = 1 - live_half;
    let v6_l2 = v6_half_writes(&v6.l2, bits, idle)
        .ok_or(LiveError::Full { map: names::PF_V6_L2, capacity: state.v6_l2_cap * V6_SLOTS as u32 / 2 })?;
    let peak_lpm = v6.lpm.union(&state.v6_lpm).count();
    if peak_lpm > state.v6_lpm_cap as usize {
        return Err(LiveError::Full { map: names::PF_V6_LPM, capacity: state.v6_lpm_cap });
    }
    let mut v6_lpm = MapWrites::new(names::PF_V6_LPM, 20, 1);
    for &(addr, len) in v6.lpm.difference(&state.v6_lpm) {
        v6_lpm.put(&lpm6_key(addr, len), &[1]);
    }
    let mut v6_lpm_del = MapWrites::new(names::PF_V6_LPM, 20, 1);
    for &(addr, len) in state.v6_lpm.difference(&v6.lpm) {
        v6_lpm_del.delete(&lpm6_key(addr, len));
    }

    let mut v4_l1 = MapWrites::new(names::PF_V4_L1, 4, L1_ENTRIES * 4);
    if l1 != state.v4_l1 {
        v4_l1.put(&0u32.to_le_bytes(), &l1_bytes(&l1));
    }
    let mut v6_l1 = MapWrites::new(names::PF_V6_L1, 4, L1_ENTRIES * 4);
    if v6.l1 != state.v6_l1 {
        v6_l1.put(&0u32.to_le_bytes(), &l1_bytes(&v6.l1));
    }
    let old_listing = meta::cidrs_word(state.set.len(), state.cidrs_half);
    let cidrs_idle = 1 - state.cidrs_half;
    let (l2_n, l3_n) = (l2_in_use.len() as u32, l3_in_use as u32);
    // The enforcing flip: the live IPv6 half, the listing as it was.
    let mut meta_enforce = MapWrites::new(names::PF_META, 4, meta::SIZE);
    meta_enforce.put(&0u32.to_le_bytes(), &meta_value(l2_n, l3_n, v6_conf(bits, idle), old_listing));
    let cidrs = cidr_writes(new, meta::cidrs_base(cidrs_idle, state.cidrs_cap));
    // The listing flip, last.
    let mut meta_list = MapWrites::new(names::PF_META, 4, meta::SIZE);
    meta_list.put(
        &0u32.to_le_bytes(),
        &meta_value(l2_n, l3_n, v6_conf(bits, idle), meta::cidrs_word(new.len(), cidrs_idle)),
    );
    Ok(vec![v4_l3, v4_l2, v6_l2, v6_lpm, meta_enforce, v4_l1, v6_l1, cidrs, meta_list, v6_lpm_del]
        .into_iter()
        .filter(|w| !w.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 11
    }

    fn random_set(seed: u64, n: usize) -> DenySet {
        let mut s = seed;
        let mut set = DenySet::default();
        for _ in 0..n {
            let len4 = (lcg(&mut s) % 33) as u8;
            let a4 = (lcg(&mut s) as u32) & mask32(len4);
            set.insert(Prefix::V4 { addr: a4, len: len4.max(4) });
            set.v4.retain(|p| p.0 & !mask32(p.1) == 0);
            let len6 = 8 + (lcg(&mut s) % 121) as u8;
            let a6 = ((u128::from(lcg(&mut s)) << 64) | u128::from(lcg(&mut s))) & mask128(len6);
            set.insert(Prefix::V6 { addr: a6, len: len6 });
        }
        set
    }

    #[test]
    fn tables_agree_with_the_reference_on_random_sets() {
        for seed in 0..20 {
            let set = random_set(seed, 40);
            let t = Tables::build(&set);
            let mut s = seed ^ 0xdead;
            for &(a, l) in set.v4.iter() {
                for probe in [a, a | (!mask32(l) & lcg(&mut s) as u32), a.wrapping_sub(1)] {
                    assert_eq!(t.lookup_v4(probe), set.denies_v4(probe), "v4 {probe:#x} seed {seed}");
                }
            }
            for &(a, l) in set.v6.iter() {
                let noise = (u128::from(lcg(&mut s)) << 64) | u128::from(lcg(&mut s));
                for probe in [a, a | (!mask128(l) & noise), a.wrapping_sub(1)] {
                    assert_eq!(t.lookup_v6(probe), set.denies_v6(probe), "v6 {probe:#x} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn many_long_v6_prefixes_in_one_slash32_overflow_to_lpm() {
        let base: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0000;
        let set = DenySet::new((0..20u128).map(|i| Prefix::V6 { addr: base | (i << 64), len: 64 }));
        let t = Tables::build(&set);
        assert_eq!(t.v6.l2.get(&0x2001_0db8), Some(&V6Bucket::Lpm));
        assert!(t.lookup_v6(base | (7 << 64) | 5));
        assert!(!t.lookup_v6(base | (70 << 64)));
    }

    #[test]
    fn cidr_keys_round_trip() {
        for p in [Prefix::V4 { addr: 0x0a00_0000, len: 8 }, Prefix::V6 { addr: 0xfd00 << 112, len: 16 }] {
            assert_eq!(Prefix::from_cidr_key(&p.cidr_key()), Some(p));
        }
        let mut bad = Prefix::V4 { addr: 0x0a00_0001, len: 8 }.cidr_key();
        assert_eq!(Prefix::from_cidr_key(&bad), None);
        bad[0] = 5;
        assert_eq!(Prefix::from_cidr_key(&bad), None);
    }
}
