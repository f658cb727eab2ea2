//! The endpoint-policy datapath's maps: the ipcache (address → identity), the policy trie,
//! per-endpoint configuration, connection tracking, fragment tracking, drop counters and
//! events. One definition each (DESIGN invariant 1); codegen takes its offsets from the
//! `mod`s below.
//!
//! - **ipcache, IPv4**: the prefilter's DIR-16-8-8 shape with identities in the leaves.
//!   `ipc_v4_l1` is one array value of 65,536 `u32` entries (top 16 address bits), addressed
//!   directly; an entry with [`IPC_CHILD`] set points at chunk `entry & !IPC_CHILD` of
//!   `ipc_v4_l2` (256 entries, third byte), whose child entries point into `ipc_v4_l3`
//!   (256 leaf identities, last byte). A leaf of 0 means "no entry": reserved world.
//! - **ipcache, IPv6**: the kernel LPM trie `ipc_v6` (key `{prefixlen, addr[16]}`).
//! - **policy**: the LPM trie `policy` ([`policy_key`]). An entry's prefix always covers
//!   `ep, dir, identity`; then the protocol; then the first n port bits. Each value is the
//!   *effective* verdict of its key (an allow covered by any deny is stored as deny), and
//!   "any identity" rules are copied into every identity's subtree ([`merged_rules`]), so
//!   one longest-prefix lookup decides; identities without rules of their own fall back to
//!   the "any identity" subtree.
//! - **ct4 / ct6**: LRU hashes keyed by the original-direction tuple. The value has room
//!   for the Service issue's backend pinning and reverse NAT ([`ct_value`]).

use super::MapDef;
use crate::maps::names as map;
use sluice_verifier_sim::spec::MapKind;

/// Identity: no ipcache entry, the rest of the world.
pub const WORLD: u32 = 2;
/// `ipc_v4_*` entry flag: the rest of the entry indexes the next level.
pub const IPC_CHILD: u32 = 1 << 31;

/// Direction of a policy lookup.
pub const INGRESS: u8 = 0;
/// Direction of a policy lookup.
pub const EGRESS: u8 = 1;

layout! {
    /// Layout of a `policy` key: `{u32 prefixlen (host order); ep: u16 BE; dir: u8; pad: u8;
    /// identity: u32 BE; proto: u8; pad: u8; port: u16 BE}` (every field aligned: the kernel
    /// verifier wants aligned stack stores). Pads are always zero.
    pub struct PolicyKey in policy_key {
        prefixlen: u32 => PREFIXLEN,
        ep: u16 => EP,
        dir: u16 => DIR,
        identity: u32 => IDENTITY,
        proto: u8 => PROTO,
        _pad: u8,
        port: u16 => PORT,
    }
    /// Prefix bits that cover endpoint, direction and identity.
    pub const FIXED_BITS: u32 = 64;
    /// ... and the protocol.
    pub const PROTO_BITS: u32 = 72;
    /// Where the port's bits start (the pad byte before it is always zero).
    pub const PORT_BITS: u32 = 80;
    /// A full key.
    pub const FULL_BITS: u32 = 96;
}

layout! {
    /// `policy` values: the effective verdict, and the L7 proxy port (network order, 0 = none).
    pub struct PolicyValue in policy_value {
        verdict: u8 => VERDICT,
        _pad: u8,
        proxy_port: u16 => PROXY_PORT,
    }
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

layout! {
    /// Layout of an `ep_config` value (array indexed by endpoint index).
    pub struct EpConfig in ep_config {
        /// Bit 0: ingress policy enforced; bit 1: egress policy enforced.
        flags: u32 => FLAGS,
        /// The endpoint's IPv4 address as the packet carries it (network order), 0 if none.
        ipv4: [u8; 4] => IPV4,
        /// The endpoint's IPv6 address, network order, zero if none.
        ipv6: [u8; 16] => IPV6,
        /// The endpoint's own identity.
        identity: u32 => IDENTITY,
        _pad: u32,
    }
    pub const INGRESS_ENFORCED: u32 = 1;
    pub const EGRESS_ENFORCED: u32 = 2;
}

layout! {
    /// Layout of a `ct4` key: the original direction's tuple, and the policy direction the
    /// connection was opened in, from the tracking endpoint's side. The direction keeps
    /// entries apart: a connection one endpoint's egress policy allowed is never mistaken for
    /// one the receiving endpoint's ingress policy allowed. A program enforcing direction `D`
    /// looks up `(tuple, D)` (it opened the connection) and `(reversed tuple, opposite D)`
    /// (a reply). `frag4` keys (`saddr, daddr, id: u16, pad, proto, dir, pad`) do the same.
    pub struct Ct4Key in ct4_key {
        saddr: [u8; 4] => SADDR,
        daddr: [u8; 4] => DADDR,
        sport: u16 => SPORT,
        dport: u16 => DPORT,
        proto: u8 => PROTO,
        dir: u8 => DIR,
        _pad: [u8; 2],
    }
}

layout! {
    /// Layout of a `ct6` key (and of a `frag6` key, the fragment id in the ports).
    pub struct Ct6Key in ct6_key {
        saddr: [u8; 16] => SADDR,
        daddr: [u8; 16] => DADDR,
        sport: u16 => SPORT,
        dport: u16 => DPORT,
        proto: u8 => PROTO,
        dir: u8 => DIR,
        _pad: [u8; 2],
    }
}

layout! {
    /// Layout of a conntrack value (both families). `rev_nat` and `backend` are the Service
    /// issue's: zero until then.
    pub struct CtValue in ct_value {
        /// `bpf_ktime_get_ns()` after which the entry is dead.
        expires: u64 => EXPIRES,
        /// [`super::CtState`].
        state: u8 => STATE,
        /// Bit 0: a reply was seen; bit 1: the connection was allowed by policy as ingress.
        flags: u8 => FLAGS,
        proxy_port: u16 => PROXY_PORT,
        rev_nat: u32 => REV_NAT,
        backend: u64 => BACKEND,
        packets: u64 => PACKETS,
    }
    pub const SEEN_REPLY: u8 = 1;
    /// The endpoint programs handed this connection to the L7 proxy: `from-endpoint` gives
    /// its packets to the proxy's socket (see `crate::codegen::l7_redirect`).
    pub const PROXIED: u8 = 4;
    /// The proxy opened this connection (its upstream): `from-endpoint` gives the replies
    /// to the proxy's socket.
    pub const PROXY_UPSTREAM: u8 = 8;
}

/// Connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CtState {
    /// UDP, ICMP and other protocols: one state.
    Open = 0,
    /// TCP: the SYN went out.
    SynSent = 1,
    /// TCP: the SYN-ACK came back.
    Established = 2,
    /// TCP: a FIN or RST was seen.
    Closing = 3,
}

layout! {
    /// A `frag4`/`frag6` value: the first fragment's verdict and until when later
    /// fragments may follow it, in coarse-clock units of 2^[`FRAG_CLOCK_SHIFT`] ns (a u32 of
    /// them lasts 146 years of uptime).
    pub struct FragValue in frag_value {
        /// 1: the first fragment was allowed.
        verdict: u8 => VERDICT,
        _pad: [u8; 3],
        expires: u32 => EXPIRES,
    }
}

/// Fragment expiry clock: `bpf_ktime_get_coarse_ns() >> FRAG_CLOCK_SHIFT` (~1.07 s units).
pub const FRAG_CLOCK_SHIFT: i32 = 30;
/// Later fragments are accepted for this many clock units after the first (~32 s; Linux
/// reassembles for `ipfrag_time`, 30 s by default).
pub const FRAG_TIMEOUT_UNITS: i32 = 30;

/// Timeouts in nanoseconds.
pub mod timeout {
    pub const TCP_SYN: u64 = 60_000_000_000;
    pub const TCP_ESTABLISHED: u64 = 21_600_000_000_000;
    pub const TCP_CLOSING: u64 = 10_000_000_000;
    pub const UDP: u64 = 60_000_000_000;
    pub const ICMP: u64 = 30_000_000_000;
}

/// Why an endpoint program reached its verdict. Counted per endpoint in `ep_stats` at
/// `endpoint * Reason::COUNT + reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Allowed by policy: a new connection.
    AllowNew = 0,
    /// A packet of an established connection (either direction).
    AllowEstablished = 1,
    /// Policy not enforced in this direction.
    AllowUnenforced = 2,
    /// An ICMP error about a tracked connection.
    AllowRelated = 3,
    /// Not IP: ARP and friends pass.
    AllowNotIp = 4,
    /// A later fragment of an allowed datagram.
    AllowFragment = 5,
    /// Denied by a deny rule.
    DenyPolicy = 6,
    /// No rule allows it (default deny).
    DenyDefault = 7,
    /// The source address is not the endpoint's own.
    DenySpoofed = 8,
    /// A header cut short.
    DenyTruncated = 9,
    /// A header that is not well formed.
    DenyMalformed = 10,
    /// A later fragment whose first fragment was not seen or was denied.
    DenyFragment = 11,
    /// Hairpin (with services): a packet of the endpoint's connection to itself through a
    /// service VIP, passed without policy or conntrack: in `from-endpoint` one the load
    /// balancer translated to or from the hairpin address, in `to-endpoint` one the endpoint
    /// itself sent (redirected from its veth's ingress to its egress). Last, so that the
    /// other reasons keep their indexes.
    AllowHairpin = 12,
}

impl Reason {
    pub const COUNT: u32 = 13;
    /// Every reason, in index order.
    pub const ALL: [Reason; 13] = [
        Reason::AllowNew,
        Reason::AllowEstablished,
        Reason::AllowUnenforced,
        Reason::AllowRelated,
        Reason::AllowNotIp,
        Reason::AllowFragment,
        Reason::DenyPolicy,
        Reason::DenyDefault,
        Reason::DenySpoofed,
        Reason::DenyTruncated,
        Reason::DenyMalformed,
        Reason::DenyFragment,
        Reason::AllowHairpin,
    ];

    /// Whether the packet passes.
    pub fn allows(self) -> bool {
        (self as u8) < Reason::DenyPolicy as u8 || self == Reason::AllowHairpin
    }

    /// A short name for listings and `sluice monitor`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::AllowNew => "allow_new",
            Reason::AllowEstablished => "allow_established",
            Reason::AllowUnenforced => "allow_unenforced",
            Reason::AllowRelated => "allow_related",
            Reason::AllowNotIp => "allow_not_ip",
            Reason::AllowFragment => "allow_fragment",
            Reason::DenyPolicy => "deny_policy",
            Reason::DenyDefault => "deny_default",
            Reason::DenySpoofed => "deny_spoofed",
            Reason::DenyTruncated => "deny_truncated",
            Reason::DenyMalformed => "deny_malformed",
            Reason::DenyFragment => "deny_fragment",
            Reason::AllowHairpin => "allow_hairpin",
        }
    }

    /// The reason with this index.
    pub fn from_index(i: u8) -> Option<Reason> {
        Reason::ALL.get(usize::from(i)).copied()
    }
}

pub use crate::uapi::{TC_ACT_OK, TC_ACT_SHOT};

layout! {
    /// Layout of an event on the `events` ring buffer.
    pub struct Event in event {
        /// 1 = policy verdict on a new connection, 2 = drop.
        kind: u8 => KIND,
        reason: u8 => REASON,
        /// [`super::INGRESS`] or [`super::EGRESS`].
        dir: u8 => DIR,
        /// 4 or 6.
        family: u8 => FAMILY,
        ep: u16 => EP,
        proto: u16 => PROTO,
        src_identity: u32 => SRC_IDENTITY,
        dst_identity: u32 => DST_IDENTITY,
        /// Ports in network order.
        sport: u16 => SPORT,
        dport: u16 => DPORT,
        /// Addresses in network order (IPv4 in the first four bytes).
        saddr: [u8; 16] => SADDR,
        daddr: [u8; 16] => DADDR,
    }
    pub const KIND_VERDICT: u8 = 1;
    pub const KIND_DROP: u8 = 2;
}

layout! {
    /// Layout of the one `ev_config` value: the switch and the rate limit.
    pub struct EvConfig in ev_config {
        /// Bit 0: verdict events on; bit 1: drop events on.
        flags: u32 => FLAGS,
        /// At most this many events per CPU per second (0 = no limit).
        rate: u32 => RATE,
    }
}

layout! {
    /// Layout of an `ev_budget` value (per-CPU, one element): the current one-second window.
    pub struct EvBudget in ev_budget {
        window_start: u64 => WINDOW_START,
        sent: u64 => SENT,
    }
}

/// Capacities chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub endpoints: u32,
    pub ipc_v4_l2: u32,
    pub ipc_v4_l3: u32,
    pub ipc_v6: u32,
    pub policy: u32,
    /// `pol_table` holds two halves of 2^pol_bits buckets each.
    pub pol_bits: u32,
    pub ct: u32,
}

/// The endpoint-policy maps.
pub fn map_defs(cap: Capacity) -> Vec<MapDef> {
    use MapKind::{Array, LpmTrie, LruHash, PerCpuArray, RingBuf};
    let no_prealloc = super::F_NO_PREALLOC;
    vec![
        MapDef::of::<u32, [u32; 65536]>(map::IPC_V4_L1, Array, 1, 0),
        MapDef::of::<u32, [u32; 256]>(map::IPC_V4_L2, Array, cap.ipc_v4_l2, 0),
        MapDef::of::<u32, [u32; 256]>(map::IPC_V4_L3, Array, cap.ipc_v4_l3, 0),
        MapDef::of::<super::fwd::TunnelKey, u32>(map::IPC_V6, LpmTrie, cap.ipc_v6, no_prealloc),
        MapDef::of::<PolicyKey, PolicyValue>(map::POLICY, LpmTrie, cap.policy, no_prealloc),
        MapDef::of::<u32, EpConfig>(map::EP_CONFIG, Array, cap.endpoints, 0),
        MapDef::of::<u32, [u8; POL_BUCKET_BYTES]>(map::POL_TABLE, Array, 2 << cap.pol_bits, 0),
        MapDef::of::<u32, u64>(map::POL_META, Array, 1, 0),
        MapDef::of::<Ct4Key, CtValue>(map::CT4, LruHash, cap.ct, 0),
        MapDef::of::<Ct6Key, CtValue>(map::CT6, LruHash, cap.ct, 0),
        // Fragment keys are conntrack keys with the fragment id in the ports; the value is
        // the first fragment's ports.
        MapDef::of::<Ct4Key, FragValue>(map::FRAG4, LruHash, 8192, 0),
        MapDef::of::<Ct6Key, FragValue>(map::FRAG6, LruHash, 8192, 0),
        MapDef::of::<u32, u64>(map::EP_STATS, PerCpuArray, cap.endpoints * Reason::COUNT, 0),
        MapDef::of::<(), ()>(map::EVENTS, RingBuf, 1 << 18, 0),
        MapDef::of::<u32, EvConfig>(map::EV_CONFIG, Array, 1, 0),
        MapDef::of::<u32, EvBudget>(map::EV_BUDGET, PerCpuArray, 1, 0),
        // Values are program references (file descriptors in the kernel); two directions.
        MapDef::of::<u32, u32>(map::EP_TAIL, MapKind::ProgArray, 2, 0),
    ]
    .into_iter()
    .chain(super::fwd::map_defs())
    .collect()
}

/// The IPv4 ipcache tables: leaf-pushed DIR-16-8-8 with identities in the leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcacheV4 {
    pub l1: Vec<u32>,
    pub l2: Vec<Box<[u32; 256]>>,
    pub l3: Vec<Box<[u32; 256]>>,
}

impl IpcacheV4 {
    /// Build from `(network, prefix length, identity)`: the longest prefix wins.
    pub fn build(entries: &[(u32, u8, u32)]) -> IpcacheV4 {
        let mut sorted: Vec<(u32, u8, u32)> = entries
            .iter()
            .map(|&(a, l, id)| (a & super::prefilter::mask32(l), l.min(32), id & !IPC_CHILD))
            .collect();
        sorted.sort_by_key(|&(a, l, id)| (l, a, id));
        let mut t = IpcacheV4 { l1: vec![0; 65536], l2: Vec::new(), l3: Vec::new() };
        for (addr, len, id) in sorted {
            let hi = (addr >> 16) as usize;
            if len <= 16 {
                let span = 1usize << (16 - len);
                t.l1[hi..hi + span].fill(id);
                continue;
            }
            let c2 = t.child_l2(hi);
            let third = ((addr >> 8) & 0xff) as usize;
            if len <= 24 {
                let span = 1usize << (24 - len);
                t.l2[c2][third..third + span].fill(id);
                continue;
            }
            let c3 = t.child_l3(c2, third);
            let last = (addr & 0xff) as usize;
            let span = 1usize << (32 - len);
            t.l3[c3][last..last + span].fill(id);
        }
        t
    }

    fn child_l2(&mut self, hi: usize) -> usize {
        let e = self.l1[hi];
        if e & IPC_CHILD != 0 {
            return (e & !IPC_CHILD) as usize;
        }
        self.l2.push(Box::new([e; 256]));
        self.l1[hi] = IPC_CHILD | (self.l2.len() - 1) as u32;
        self.l2.len() - 1
    }

    fn child_l3(&mut self, c2: usize, third: usize) -> usize {
        let e = self.l2[c2][third];
        if e & IPC_CHILD != 0 {
            return (e & !IPC_CHILD) as usize;
        }
        self.l3.push(Box::new([e; 256]));
        self.l2[c2][third] = IPC_CHILD | (self.l3.len() - 1) as u32;
        self.l3.len() - 1
    }

    /// The identity of an address the way the program finds it (0 → [`WORLD`]).
    pub fn lookup(&self, a: u32) -> u32 {
        let mut e = self.l1[(a >> 16) as usize];
        if e & IPC_CHILD != 0 {
            e = self.l2[(e & !IPC_CHILD) as usize][((a >> 8) & 0xff) as usize];
            if e & IPC_CHILD != 0 {
                e = self.l3[(e & !IPC_CHILD) as usize][(a & 0xff) as usize];
            }
        }
        if e == 0 {
            WORLD
        } else {
            e
        }
    }

    /// The writes that fill empty `ipc_v4_*` maps, children first.
    pub fn writes(&self) -> Vec<super::writes::MapWrites> {
        let words = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let mut l3 = writes_for(map::IPC_V4_L3, 4, 1024);
        for (i, c) in self.l3.iter().enumerate() {
            l3.put(&(i as u32).to_le_bytes(), &words(&c[..]));
        }
        let mut l2 = writes_for(map::IPC_V4_L2, 4, 1024);
        for (i, c) in self.l2.iter().enumerate() {
            l2.put(&(i as u32).to_le_bytes(), &words(&c[..]));
        }
        let mut l1 = writes_for(map::IPC_V4_L1, 4, 65536 * 4);
        l1.put(&0u32.to_le_bytes(), &words(&self.l1));
        vec![l3, l2, l1]
    }
}

fn writes_for(map: &'static str, key_size: usize, value_size: usize) -> super::writes::MapWrites {
    super::writes::MapWrites { map, key_size, value_size, ..Default::default() }
}

/// An `ipc_v6` trie key.
pub fn ipc_v6_key(addr: u128, len: u8) -> [u8; 20] {
    super::prefilter::lpm6_key(addr, len)
}

/// One resolved policy entry of one endpoint and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRule {
    pub ep: u16,
    pub dir: u8,
    /// 0 = any identity.
    pub identity: u32,
    /// 0 = any protocol (then `port_prefix` is 0).
    pub proto: u8,
    /// Host order; for ICMP the type.
    pub port: u16,
    /// Leading port bits that must match (0 = any port, 16 = exactly `port`).
    pub port_prefix: u8,
    pub deny: bool,
    /// L7 proxy port, 0 = none.
    pub proxy_port: u16,
}

impl PolicyRule {
    fn prefixlen(&self) -> u32 {
        if self.proto == 0 {
            policy_key::FIXED_BITS
        } else if self.port_prefix == 0 {
            policy_key::PROTO_BITS
        } else {
            policy_key::PORT_BITS + u32::from(self.port_prefix.min(16))
        }
    }

    fn port_mask(&self) -> u16 {
        if self.port_prefix == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(self.port_prefix.min(16)))
        }
    }

    /// The `policy` key.
    pub fn key(&self) -> [u8; policy_key::SIZE] {
        let mut k = [0u8; policy_key::SIZE];
        k[policy_key::PREFIXLEN..policy_key::PREFIXLEN + 4].copy_from_slice(&self.prefixlen().to_le_bytes());
        k[policy_key::EP..policy_key::EP + 2].copy_from_slice(&self.ep.to_be_bytes());
        k[policy_key::DIR] = self.dir;
        k[policy_key::IDENTITY..policy_key::IDENTITY + 4].copy_from_slice(&self.identity.to_be_bytes());
        if self.proto != 0 {
            k[policy_key::PROTO] = self.proto;
            k[policy_key::PORT..policy_key::PORT + 2]
                .copy_from_slice(&(self.port & self.port_mask()).to_be_bytes());
        }
        k
    }

    /// Whether this rule's key range contains every key of `other` (same endpoint and
    /// direction; an "any identity" rule covers every identity).
    pub fn covers(&self, other: &PolicyRule) -> bool {
        self.ep == other.ep
            && self.dir == other.dir
            && (self.identity == 0 || self.identity == other.identity)
            && (self.proto == 0
                || (self.proto == other.proto
                    && self.port_prefix <= other.port_prefix
                    && (other.port & self.port_mask()) == (self.port & self.port_mask())))
    }
}

/// The rules as the `policy` trie holds them: each endpoint direction's "any identity"
/// rules are copied into the subtree of every identity that has rules of its own, so the
/// longest match in one subtree sees every rule that can apply (the datapath then needs one
/// lookup, and a second in the "any identity" subtree only for identities without rules).
pub fn merged_rules(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = rules.to_vec();
    let mut with_own: std::collections::BTreeSet<(u16, u8, u32)> = Default::default();
    for r in rules.iter().filter(|r| r.identity != 0) {
        with_own.insert((r.ep, r.dir, r.identity));
    }
    for any in rules.iter().filter(|r| r.identity == 0) {
        for &(ep, dir, identity) in with_own.range((any.ep, any.dir, 0)..=(any.ep, any.dir, u32::MAX)) {
            out.push(PolicyRule { ep, dir, identity, ..*any });
        }
    }
    out
}

/// The `policy` writes for a set of rules: each key once (after [`merged_rules`]), its
/// value the effective verdict: deny if the rule denies or any deny rule covers it (a deny
/// and an allow on the same key give deny). The keys that match one packet form a chain by
/// prefix, so the longest match carries the verdict "any matching deny wins, else any
/// matching allow".
pub fn policy_writes(rules: &[PolicyRule]) -> super::writes::MapWrites {
    let mut by_key: std::collections::BTreeMap<[u8; policy_key::SIZE], PolicyRule> = Default::default();
    for r in merged_rules(rules) {
        by_key
            .entry(r.key())
            .and_modify(|e| {
                e.deny |= r.deny;
                e.proxy_port = e.proxy_port.max(r.proxy_port);
            })
            .or_insert(r);
    }
    let denies: Vec<&PolicyRule> = by_key.values().filter(|r| r.deny).collect();
    let mut w = writes_for(map::POLICY, policy_key::SIZE, policy_value::SIZE);
    for (key, r) in &by_key {
        let deny = r.deny || denies.iter().any(|d| d.covers(r));
        let mut v = [0u8; policy_value::SIZE];
        v[policy_value::VERDICT] = if deny { policy_value::DENY } else { policy_value::ALLOW };
        v[policy_value::PROXY_PORT..policy_value::PROXY_PORT + 2]
            .copy_from_slice(&r.proxy_port.to_be_bytes());
        w.put(key, &v);
    }
    w
}

/// The verdict the program reaches from `rules` for a peer identity, protocol and port,
/// computed the way the datapath does: the longest matching key in the identity's subtree,
/// else in the "any identity" subtree; `None` when neither matches (default deny).
pub fn datapath_verdict(
    rules: &[PolicyRule],
    ep: u16,
    dir: u8,
    identity: u32,
    proto: u8,
    port: u16,
) -> Option<bool> {
    let w = policy_writes(rules);
    let probe = PolicyRule { ep, dir, identity, proto, port, port_prefix: 16, deny: false, proxy_port: 0 };
    for id in [identity, 0] {
        let best = w
            .keys
            .chunks_exact(policy_key::SIZE)
            .zip(w.values.chunks_exact(policy_value::SIZE))
            .filter_map(|(k, v)| {
                let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
                let r = PolicyRule {
                    ep: u16::from_be_bytes([k[4], k[5]]),
                    dir: k[6],
                    identity: u32::from_be_bytes([k[8], k[9], k[10], k[11]]),
                    proto: if len >= policy_key::PROTO_BITS { k[12] } else { 0 },
                    port: u16::from_be_bytes([k[14], k[15]]),
                    port_prefix: len.saturating_sub(policy_key::PORT_BITS) as u8,
                    deny: false,
                    proxy_port: 0,
                };
                (r.identity == id && r.covers(&PolicyRule { identity: id, ..probe })).then_some((len, v[0]))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, v)) = best {
            return Some(v == policy_value::ALLOW);
        }
    }
    None
}

/// Slots per `pol_table` bucket; entries inline per slot.
pub const POL_SLOTS: usize = 4;
/// Rules kept inline per (endpoint, direction, identity) slot; more and the slot says
/// "overflow": the program then asks the `policy` trie.
pub const POL_LIST: usize = 6;
/// Smallest `pol_table`: 2^8 buckets per half.
pub const POL_MIN_BITS: u32 = 8;

layout! {
    /// One inline rule of a `pol_table` slot (host order).
    pub struct PolEntry in pol_entry {
        /// IP protocol; 0: any.
        proto: u8 => PROTO,
        /// [`policy_value::ALLOW`] or [`policy_value::DENY`].
        verdict: u8 => VERDICT,
        /// The port bits that must match.
        mask: u16 => MASK,
        port: u16 => PORT,
        /// The L7 proxy port of an allow (network order, as `policy_value`'s), 0 = none.
        proxy_port: u16 => PROXY_PORT,
    }
}

layout! {
    /// A `pol_table` slot: the key `(identity, ep | dir << 16 | OCCUPIED)`, a state word
    /// (rule count, or [`POL_OVERFLOW`]), then [`POL_LIST`] entries, most specific first;
    /// the first entry whose protocol matches and whose `(port ^ entry.port) & mask` is zero
    /// holds the effective verdict (the keys matching a packet form a chain, so this is the
    /// longest match of the `policy` trie).
    pub struct PolSlot in pol_slot {
        identity: u32 => IDENTITY,
        epdir: u32 => EPDIR,
        state: u32 => STATE,
        _pad: u32,
        entries: [PolEntry; POL_LIST] => ENTRIES,
    }
    /// Bytes per entry.
    pub const ENTRY_SIZE: usize = super::pol_entry::SIZE;
    /// Offsets within an entry.
    pub use super::pol_entry::{MASK, PORT, PROTO, PROXY_PORT, VERDICT};
    /// Set in `EPDIR` for a used slot.
    pub const OCCUPIED: u32 = 1 << 24;
}

/// `pol_table` state flag: too many rules; use the `policy` trie.
pub const POL_OVERFLOW: u32 = 1 << 16;
/// Bytes per `pol_table` bucket.
pub const POL_BUCKET_BYTES: usize = POL_SLOTS * pol_slot::SIZE;

/// The `EPDIR` word of a slot.
pub fn pol_epdir(ep: u16, dir: u8) -> u32 {
    u32::from(ep) | (u32::from(dir) << 16) | pol_slot::OCCUPIED
}

/// What a slot key hashes as: the identity folded with the endpoint and direction (a
/// constant in each program, so the program folds with one XOR).
pub fn pol_fold(ep: u16, dir: u8, identity: u32) -> u32 {
    identity ^ pol_fold_const(ep, dir)
}

/// The constant part of [`pol_fold`].
pub fn pol_fold_const(ep: u16, dir: u8) -> u32 {
    (u32::from(ep) << 17) ^ (u32::from(dir) << 31) ^ 0x2c1b_3c6d
}

/// One inline rule of a `pol_table` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineRule {
    pub proto: u8,
    pub allow: bool,
    pub mask: u16,
    pub port: u16,
    /// L7 proxy port (host order), 0 = none.
    pub proxy_port: u16,
}

/// The `pol_table` contents: per (endpoint, direction, identity) its rules most specific
/// first, or `None` when they overflow [`POL_LIST`].
pub type PolicyTable = std::collections::BTreeMap<(u16, u8, u32), Option<Vec<InlineRule>>>;

/// The [`PolicyTable`] of `rules`. Built from [`policy_writes`]' keys, so the effective
/// verdicts are the trie's.
pub fn policy_table(rules: &[PolicyRule]) -> PolicyTable {
    let w = policy_writes(rules);
    let mut lists: std::collections::BTreeMap<(u16, u8, u32), Vec<(u32, InlineRule)>> = Default::default();
    for (k, v) in w.keys.chunks_exact(policy_key::SIZE).zip(w.values.chunks_exact(policy_value::SIZE)) {
        let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
        let ep = u16::from_be_bytes([k[4], k[5]]);
        let dir = k[6];
        let identity = u32::from_be_bytes([k[8], k[9], k[10], k[11]]);
        let proto = if len >= policy_key::PROTO_BITS { k[12] } else { 0 };
        let port_bits = len.saturating_sub(policy_key::PORT_BITS).min(16);
        let mask = if port_bits == 0 { 0 } else { u16::MAX << (16 - port_bits) };
        let port = u16::from_be_bytes([k[14], k[15]]) & mask;
        let proxy_port = u16::from_be_bytes([v[policy_value::PROXY_PORT], v[policy_value::PROXY_PORT + 1]]);
        let rule = InlineRule {
            proto,
            allow: v[policy_value::VERDICT] == policy_value::ALLOW,
            mask,
            port,
            proxy_port,
        };
        lists.entry((ep, dir, identity)).or_default().push((len, rule));
    }
    lists
        .into_iter()
        .map(|(key, mut l)| {
            // Longest key first: a longer key is more specific than any key it lies in.
            l.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.port.cmp(&b.1.port)));
            let list: Vec<InlineRule> = l.into_iter().map(|(_, r)| r).collect();
            (key, (list.len() <= POL_LIST).then_some(list))
        })
        .collect()
}

fn pol_slot_bytes(key: (u16, u8, u32), list: &Option<Vec<InlineRule>>) -> [u8; pol_slot::SIZE] {
    let mut v = [0u8; pol_slot::SIZE];
    let (ep, dir, identity) = key;
    v[pol_slot::IDENTITY..pol_slot::IDENTITY + 4].copy_from_slice(&identity.to_le_bytes());
    v[pol_slot::EPDIR..pol_slot::EPDIR + 4].copy_from_slice(&pol_epdir(ep, dir).to_le_bytes());
    let state = match list {
        Some(l) => l.len() as u32,
        None => POL_OVERFLOW,
    };
    v[pol_slot::STATE..pol_slot::STATE + 4].copy_from_slice(&state.to_le_bytes());
    for (i, r) in list.iter().flatten().enumerate() {
        let at = pol_slot::ENTRIES + i * pol_slot::ENTRY_SIZE;
        v[at + pol_slot::PROTO] = r.proto;
        v[at + pol_slot::VERDICT] = if r.allow { policy_value::ALLOW } else { policy_value::DENY };
        v[at + pol_slot::MASK..at + pol_slot::MASK + 2].copy_from_slice(&r.mask.to_le_bytes());
        v[at + pol_slot::PORT..at + pol_slot::PORT + 2].copy_from_slice(&r.port.to_le_bytes());
        v[at + pol_slot::PROXY_PORT..at + pol_slot::PROXY_PORT + 2]
            .copy_from_slice(&r.proxy_port.to_be_bytes());
    }
    v
}

/// The bucket of a slot key.
pub fn pol_bucket_of(key: (u16, u8, u32), which: usize, bits: u32) -> u32 {
    super::prefilter::v6_bucket_of(pol_fold(key.0, key.1, key.2), which, bits)
}

/// The smallest `pol_table` half (at most half full) that holds these slots.
pub fn pol_bits_for(table: &PolicyTable) -> u32 {
    let mut bits = POL_MIN_BITS;
    while (1usize << bits) * POL_SLOTS < table.len() * 2 {
        bits += 1;
    }
    while super::prefilter::cuckoo_layout_by(table.keys().copied(), bits, |k, w| pol_bucket_of(k, w, bits))
        .is_none()
    {
        bits += 1;
    }
    bits
}

/// The writes of one half of `pol_table` (every bucket), or `None` if the slots do not fit.
pub fn pol_half_writes(
    table: &std::collections::BTreeMap<(u16, u8, u32), Option<Vec<InlineRule>>>,
    bits: u32,
    half: u32,
) -> Option<super::writes::MapWrites> {
    let layout =
        super::prefilter::cuckoo_layout_by(table.keys().copied(), bits, |k, w| pol_bucket_of(k, w, bits))?;
    let mut w = writes_for(map::POL_TABLE, 4, POL_BUCKET_BYTES);
    for (i, bucket) in layout.iter().enumerate() {
        let mut value = vec![0u8; POL_BUCKET_BYTES];
        for (j, key) in bucket.iter().enumerate() {
            if let Some(k) = key {
                let at = j * pol_slot::SIZE;
                value[at..at + pol_slot::SIZE].copy_from_slice(&pol_slot_bytes(*k, &table[k]));
            }
        }
        w.put(&((half << bits) + i as u32).to_le_bytes(), &value);
    }
    Some(w)
}

/// The one `pol_meta` value: where the live half of `pol_table` is (the prefilter's
/// encoding: `shift | base << 8`).
pub fn pol_meta_writes(bits: u32, half: u32) -> super::writes::MapWrites {
    let mut w = writes_for(map::POL_META, 4, 8);
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&super::prefilter::v6_conf(bits, half).to_le_bytes());
    w.put(&0u32.to_le_bytes(), &v);
    w
}

/// An `ep_config` value.
pub fn ep_config_value(
    flags: u32,
    ipv4: Option<std::net::Ipv4Addr>,
    ipv6: Option<std::net::Ipv6Addr>,
    identity: u32,
) -> [u8; ep_config::SIZE] {
    let mut v = [0u8; ep_config::SIZE];
    v[ep_config::FLAGS..ep_config::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    if let Some(a) = ipv4 {
        v[ep_config::IPV4..ep_config::IPV4 + 4].copy_from_slice(&a.octets());
    }
    if let Some(a) = ipv6 {
        v[ep_config::IPV6..ep_config::IPV6 + 16].copy_from_slice(&a.octets());
    }
    v[ep_config::IDENTITY..ep_config::IDENTITY + 4].copy_from_slice(&identity.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_longest_prefix_wins() {
        let t = IpcacheV4::build(&[
            (0x0a00_0000, 8, 100),
            (0x0af4_0000, 16, 200),
            (0x0af4_0500, 24, 300),
            (0x0af4_0507, 32, 400),
            (0xc0a8_0000, 20, 500),
        ]);
        assert_eq!(t.lookup(0x0a01_0203), 100);
        assert_eq!(t.lookup(0x0af4_0101), 200);
        assert_eq!(t.lookup(0x0af4_0501), 300);
        assert_eq!(t.lookup(0x0af4_0507), 400);
        assert_eq!(t.lookup(0xc0a8_0f01), 500);
        assert_eq!(t.lookup(0xc0a8_1001), WORLD);
        assert_eq!(t.lookup(0x0b00_0001), WORLD);
    }

    fn rule(identity: u32, proto: u8, port: u16, port_prefix: u8, deny: bool) -> PolicyRule {
        PolicyRule { ep: 1, dir: INGRESS, identity, proto, port, port_prefix, deny, proxy_port: 0 }
    }

    #[test]
    fn any_deny_wins_over_more_specific_allows() {
        let rules = [
            rule(5, 6, 80, 16, false),
            rule(0, 6, 80, 15, true),
            rule(7, 0, 0, 0, false),
            rule(7, 6, 22, 16, true),
        ];
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 5, 6, 80), Some(false));
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 5, 6, 81), Some(false));
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 5, 6, 82), None);
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 7, 17, 53), Some(true));
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 7, 6, 22), Some(false));
        assert_eq!(datapath_verdict(&rules, 1, INGRESS, 7, 6, 80), Some(false));
        assert_eq!(datapath_verdict(&rules, 1, EGRESS, 7, 6, 22), None);
    }
}
