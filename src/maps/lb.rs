//! Service load-balancing maps: the one layout shared by the tc load balancer (inside the
//! endpoint programs and standalone on any device) and the socket-level programs
//! (`connect4`/`6`, `sendmsg4`/`6`, `recvmsg4`/`6`, `getpeername4`/`6`).
//!
//! Contract:
//! - Addresses are 16 bytes, IPv4 mapped (`::ffff:a.b.c.d`) as in [`super::fwd::addr_key`];
//!   ports are stored in network order exactly as they sit in the packet or in
//!   `bpf_sock_addr.user_port` (low 16 bits); other integers are host order.
//! - A frontend (VIP, port, protocol) has a `svc_id` (1-based, dense). Its `lb_svc` value
//!   says how many selection slots it has: the active backends (random: one slot per unit
//!   of weight, in order) or the Maglev table size. The datapath picks
//!   `lb_slot[{svc_id, flow_hash % slots}]`, so the program is the same for both
//!   algorithms; only user space fills the slots differently. `slots == 0` means the
//!   service has no usable backend.
//! - Backends have a `backend_id` (1-based) per (address, port, protocol). Terminating
//!   backends keep their `lb_be` entry (connections pinned in `lb_ct` keep working) but
//!   appear in no slot. A removed backend's `lb_be` entry is deleted last.
//! - `lb_ct` pins a connection to its backend: the forward entry (direction 0) is keyed by
//!   the tuple as the client sent it (client → VIP) and holds the backend's address and
//!   port; the reverse entry (direction 1) by the tuple of the backend's replies (backend →
//!   client), and holds the VIP and port to restore as the reply's source. A tracked packet
//!   is one lookup. Entries name their `svc_id` and `backend_id`: when a frontend or a
//!   backend goes away, user space deletes the entries that name it ([`CtPurge`], after
//!   the map writes), so the datapath need not check that they still exist.
//! - `lb_slot` values hold the backend's id, address and port ([`SlotValue`]): a new
//!   connection's backend is one lookup after the frontend's.
//! - `lb_aff` remembers a client's backend per service for `sessionAffinity: ClientIP`.
//! - `lb_sock` lets `getpeername` and `recvmsg` show the VIP to a socket whose connect or
//!   sendmsg was translated.
//! - `lb_hint` holds two negative filters of the tc load balancer (one-element-per-filter
//!   array, so the datapath's lookup of a constant key is inlined by the kernel: no helper
//!   call): element [`hint::FRONTEND`] has bit [`hint_bit`]`(VIP, port, proto)` set for every
//!   `lb_svc` frontend, element [`hint::BACKEND`] bit `hint_bit(address, port, proto)` for
//!   every `lb_be` backend (active and terminating) under every protocol a frontend uses it
//!   with. A clear bit proves the packet is not service traffic (resp. not a backend's
//!   reply), so most packets make no hash-map call; a set bit may be a collision and the
//!   full lookups decide. Invariant: a bit is never clear while its entry exists (see
//!   [`service_writes`] for the write order).
//! - User space: [`service_writes`] turns the model's services into `lb_svc`, `lb_slot`,
//!   `lb_be` and `lb_hint` contents with stable ids ([`LbState`]); `lb_stats`
//!   ([`stats_def`], [`LbReason`]) counts the tc load balancer's verdicts.

use super::writes::MapWrites;
use super::MapDef;
use crate::lb::maglev::{self, MaglevError, Table};
use crate::maps::names as map;
use crate::model::service::{BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice_verifier_sim::spec::MapKind;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

layout! {
    /// `lb_svc` key: one frontend.
    pub struct SvcKey in svc_key {
        addr: [u8; 16] => ADDR,
        /// Network order.
        port: u16 => PORT,
        /// IP protocol number (6, 17, 132).
        proto: u8 => PROTO,
        /// Always 0 (reserved for node-port scopes).
        scope: u8 => SCOPE,
    }
}

layout! {
    /// `lb_svc` value.
    pub struct SvcValue in svc_value {
        svc_id: u32 => SVC_ID,
        /// Selection slots; 0 = no usable backend.
        slots: u32 => SLOTS,
        /// [`AFFINITY`] and friends.
        flags: u32 => FLAGS,
        /// ClientIP affinity timeout, seconds.
        affinity_timeout: u32 => AFFINITY_TIMEOUT,
    }
    /// `sessionAffinity: ClientIP`.
    pub const AFFINITY: u32 = 1;
}

layout! {
    /// `lb_slot` key: `{svc_id, slot}`.
    pub struct SlotKey in slot_key {
        svc_id: u32 => SVC_ID,
        slot: u32 => SLOT,
    }
}

layout! {
    /// `lb_slot` value: the backend's id and, copied from its `lb_be` entry, where it is, so
    /// that selecting a backend is one lookup, not two. An id's address and port never
    /// change (a backend is its (address, port, protocol)), so the copy cannot go stale; only
    /// active backends hold slots, so the state is not copied.
    pub struct SlotValue in slot_value {
        addr: [u8; 16] => ADDR,
        /// Network order.
        port: u16 => PORT,
        _pad: [u8; 2],
        backend_id: u32 => BACKEND_ID,
    }
    // Address and port where an `lb_be` value has them: code that reads a backend's
    // location reads either value alike.
    const _: () = assert!(ADDR == super::be_value::ADDR && PORT == super::be_value::PORT);
}

layout! {
    /// `lb_be` key: `u32 backend_id`; value: where the backend is.
    pub struct BeValue in be_value {
        addr: [u8; 16] => ADDR,
        /// Network order.
        port: u16 => PORT,
        /// [`ACTIVE`] or [`TERMINATING`].
        state: u8 => STATE,
        _pad: u8,
    }
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
}

layout! {
    /// `lb_ct` key: a connection's tuple in one direction.
    pub struct LbCtKey in ct_key {
        saddr: [u8; 16] => SADDR,
        daddr: [u8; 16] => DADDR,
        /// Network order.
        sport: u16 => SPORT,
        /// Network order.
        dport: u16 => DPORT,
        proto: u8 => PROTO,
        /// 0: client → VIP (forward); 1: backend → client (reply).
        dir: u8 => DIR,
        _pad: [u8; 2],
    }
    pub const FORWARD: u8 = 0;
    pub const REPLY: u8 = 1;
}

layout! {
    /// `lb_ct4` key: an IPv4 connection's tuple in one direction, 16 bytes where `lb_ct`'s
    /// IPv4-mapped key takes 40, so the hash over it (the kernel's jhash, per lookup) is
    /// a third as long. The value is `lb_ct`'s ([`LbCtValue`], addresses IPv4-mapped).
    pub struct LbCt4Key in ct4_key {
        saddr: [u8; 4] => SADDR,
        daddr: [u8; 4] => DADDR,
        /// Network order.
        sport: u16 => SPORT,
        /// Network order.
        dport: u16 => DPORT,
        proto: u8 => PROTO,
        /// [`ct_key::FORWARD`] or [`ct_key::REPLY`].
        dir: u8 => DIR,
        _pad: [u8; 2],
    }
    // The compact key is the mapped key's last address words, ports and protocol word in
    // the same order: the datapath copies four words.
    const _: () = assert!(
        SPORT == DADDR + 4
            && PROTO == SPORT + 4
            && DIR == PROTO + 1
            && SIZE == 16
            && super::ct_key::DPORT == super::ct_key::SPORT + 2
            && super::ct_key::DIR == super::ct_key::PROTO + 1
    );
}

/// Where a connection's `lb_ct` entry lives: IPv4 tuples in `lb_ct4` (compact key), IPv6
/// ones in `lb_ct`; the map's name and the key (ports in host order here).
pub fn ct_entry_key(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    dir: u8,
) -> (&'static str, Vec<u8>) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut k = vec![0u8; ct4_key::SIZE];
            k[ct4_key::SADDR..ct4_key::SADDR + 4].copy_from_slice(&s.octets());
            k[ct4_key::DADDR..ct4_key::DADDR + 4].copy_from_slice(&d.octets());
            k[ct4_key::SPORT..ct4_key::SPORT + 2].copy_from_slice(&sport.to_be_bytes());
            k[ct4_key::DPORT..ct4_key::DPORT + 2].copy_from_slice(&dport.to_be_bytes());
            k[ct4_key::PROTO] = proto;
            k[ct4_key::DIR] = dir;
            (map::LB_CT4, k)
        }
        _ => (map::LB_CT, ct_key_bytes(src, dst, sport, dport, proto, dir)),
    }
}

/// The `lb_ct` key of a tuple in direction `dir` ([`ct_key::FORWARD`] or
/// [`ct_key::REPLY`]); ports in host order here, stored in network order.
pub fn ct_key_bytes(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, dir: u8) -> Vec<u8> {
    let mut k = vec![0u8; ct_key::SIZE];
    k[ct_key::SADDR..ct_key::SADDR + 16].copy_from_slice(&super::fwd::addr_key(src));
    k[ct_key::DADDR..ct_key::DADDR + 16].copy_from_slice(&super::fwd::addr_key(dst));
    k[ct_key::SPORT..ct_key::SPORT + 2].copy_from_slice(&sport.to_be_bytes());
    k[ct_key::DPORT..ct_key::DPORT + 2].copy_from_slice(&dport.to_be_bytes());
    k[ct_key::PROTO] = proto;
    k[ct_key::DIR] = dir;
    k
}

layout! {
    /// `lb_ct` value: the translation itself, so that a tracked packet (either direction)
    /// is one lookup. The entry names its ids so that user space can remove the entries of
    /// a removed frontend or backend ([`CtPurge`]).
    pub struct LbCtValue in ct_value {
        /// The pinned backend (both directions).
        backend_id: u32 => BACKEND_ID,
        /// The frontend (both directions).
        svc_id: u32 => SVC_ID,
        /// `bpf_ktime_get_coarse_ns()` when the connection was tracked. `lb_ct` is an LRU
        /// map: eviction, not age, ends an entry, so packets do not refresh it.
        created: u64 => CREATED,
        /// The rewrite: forward entries the backend's address and port (the destination
        /// rewrite), reply entries the frontend's (the source rewrite). Port in network
        /// order.
        addr: [u8; 16] => ADDR,
        port: u16 => PORT,
        _pad: [u8; 6],
    }
}

layout! {
    /// `lb_aff` key: `{svc_id, client addr}`. The socket programs, which run before the
    /// source address is chosen, use the unspecified address `::` for every local socket
    /// ([`crate::codegen::sock_lb`]): the node is one client.
    pub struct AffKey in aff_key {
        svc_id: u32 => SVC_ID,
        addr: [u8; 16] => ADDR,
    }
}

layout! {
    /// `lb_aff` value.
    pub struct AffValue in aff_value {
        backend_id: u32 => BACKEND_ID,
        _pad: u32,
        /// `bpf_ktime_get_ns()` of the client's last new connection to the service.
        last_used: u64 => LAST_USED,
    }
}

layout! {
    /// `lb_sock` key: a translated socket and the backend it was sent to. Written by the
    /// socket programs ([`crate::codegen::sock_lb`]) on every translated `connect`/`sendmsg`,
    /// read by `recvmsg`/`getpeername`; bytes 26..32 are zero. Entries are never deleted:
    /// cookies are not reused, and the LRU evicts what dead sockets left.
    pub struct SockKey in sock_key {
        /// `bpf_get_socket_cookie()`.
        cookie: u64 => COOKIE,
        addr: [u8; 16] => ADDR,
        /// Network order.
        port: u16 => PORT,
        _pad: [u8; 6],
    }
}

layout! {
    /// `lb_sock` value: the VIP and port the application asked for.
    pub struct SockValue in sock_value {
        addr: [u8; 16] => ADDR,
        /// Network order.
        port: u16 => PORT,
        _pad: [u8; 2],
    }
}

/// `lb_hint`: key `u32` (the filter), value a bitmap of [`hint::BITS`] bits (bit `i` is
/// bit `i % 8` of byte `i / 8`).
///
/// 2^16 bits (8 KiB per filter): with 10,000 frontends about 14% of the bits are set, so
/// 86% of non-service packets skip every hash lookup; at [`SVC_MAX`] frontends most bits
/// are set and the filter stops helping, which costs a few ALU instructions per packet and
/// is never wrong.
pub mod hint {
    /// log2 of the bits per filter.
    pub const LOG2_BITS: u32 = 16;
    pub const BITS: u32 = 1 << LOG2_BITS;
    /// Bytes per filter (the map's value size).
    pub const BYTES: usize = (BITS / 8) as usize;
    /// The multiplier of the multiply-shift hash ([`super::hint_bit`]): 2^32 / φ, odd.
    pub const MUL: u32 = 0x9e37_79b1;
    /// The element of frontends (`lb_svc` keys).
    pub const FRONTEND: u32 = 0;
    /// The element of backends (`lb_be` values with their frontends' protocols).
    pub const BACKEND: u32 = 1;
    /// Elements.
    pub const ENTRIES: u32 = 2;
}

/// The `lb_hint` bit of an (address, port, protocol): the four little-endian words of the
/// 16-byte (IPv4-mapped) address and the word `port (network order bytes) | proto << 16`,
/// XOR-folded; `x ^= x >> 16` so that the high address bytes reach the low bits; then
/// multiply-shift (the top [`hint::LOG2_BITS`] bits of `x * MUL`). The datapath computes the
/// same with 32-bit ALU operations on the tuple's stack words
/// ([`crate::codegen::lb`], `emit_hint_check`).
pub fn hint_bit(addr: IpAddr, port: u16, proto: u8) -> u32 {
    let a = super::fwd::addr_key(addr);
    let mut x = a.chunks_exact(4).fold(0u32, |x, w| x ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let p = port.to_be_bytes();
    x ^= u32::from_le_bytes([p[0], p[1], proto, 0]);
    x ^= x >> 16;
    x.wrapping_mul(hint::MUL) >> (32 - hint::LOG2_BITS)
}

/// Capacities.
pub const SVC_MAX: u32 = 65_536;
pub const SLOT_MAX: u32 = 1 << 20;
pub const BE_MAX: u32 = 262_144;
pub const CT_MAX: u32 = 262_144;
pub const AFF_MAX: u32 = 65_536;
pub const SOCK_MAX: u32 = 65_536;

/// The load-balancing maps.
pub fn map_defs() -> Vec<MapDef> {
    use MapKind::{Array, Hash, LruHash};
    let no_prealloc = super::F_NO_PREALLOC;
    vec![
        MapDef::of::<SvcKey, SvcValue>(map::LB_SVC, Hash, SVC_MAX, no_prealloc),
        MapDef::of::<SlotKey, SlotValue>(map::LB_SLOT, Hash, SLOT_MAX, no_prealloc),
        MapDef::of::<u32, BeValue>(map::LB_BE, Hash, BE_MAX, no_prealloc),
        MapDef::of::<LbCtKey, LbCtValue>(map::LB_CT, LruHash, CT_MAX, 0),
        MapDef::of::<LbCt4Key, LbCtValue>(map::LB_CT4, LruHash, CT_MAX, 0),
        MapDef::of::<AffKey, AffValue>(map::LB_AFF, LruHash, AFF_MAX, 0),
        MapDef::of::<SockKey, SockValue>(map::LB_SOCK, LruHash, SOCK_MAX, 0),
        MapDef::of::<u32, [u8; hint::BYTES]>(map::LB_HINT, Array, hint::ENTRIES, 0),
    ]
}

// ---------------------------------------------------------------------------------------
// Verdict reasons of the tc load balancer (`lb_stats`)
// ---------------------------------------------------------------------------------------

pub use crate::uapi::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};

/// Why the tc load balancer ([`crate::codegen::lb`]) returned what it did: the index of its
/// per-CPU `u64` counter in `lb_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LbReason {
    /// Not IPv4 or IPv6: passed untouched.
    PassNotIp = 0,
    /// Not TCP, UDP or SCTP, a later IPv4 fragment, or IPv6 with an extension header:
    /// passed untouched.
    PassNotL4 = 1,
    /// Truncated or malformed headers: passed untouched (the load balancer is no firewall).
    PassMalformed = 2,
    /// Not a backend's reply (its `lb_hint` bit clear or no reply conntrack entry) and no
    /// frontend (its `lb_hint` bit clear or no `lb_svc` entry): passed untouched.
    PassNoService = 3,
    /// A backend's reply: source rewritten to the frontend (reverse NAT).
    RevNat = 4,
    /// A tracked connection: destination rewritten to its pinned backend.
    Established = 5,
    /// A new connection: backend chosen by flow hash, destination rewritten.
    NewConnection = 6,
    /// A new connection sent to the backend the client's affinity entry names.
    Affinity = 7,
    /// The frontend has no usable backend: dropped (UDP, SCTP; TCP when the reset could not
    /// be written, or the packet is itself a reset).
    NoBackend = 8,
    /// A rewrite helper failed: dropped.
    RewriteFailed = 9,
    /// The frontend has no usable backend and the packet is TCP: turned into a reset in
    /// place and redirected back out of the device it came in on.
    NoBackendReset = 10,
}

impl LbReason {
    /// Every reason, in counter order.
    pub const ALL: [LbReason; 11] = [
        LbReason::PassNotIp,
        LbReason::PassNotL4,
        LbReason::PassMalformed,
        LbReason::PassNoService,
        LbReason::RevNat,
        LbReason::Established,
        LbReason::NewConnection,
        LbReason::Affinity,
        LbReason::NoBackend,
        LbReason::RewriteFailed,
        LbReason::NoBackendReset,
    ];
    /// Number of reasons (`lb_stats` entries).
    pub const COUNT: u32 = LbReason::ALL.len() as u32;

    /// The name in counters, listings and labels.
    pub fn name(self) -> &'static str {
        match self {
            LbReason::PassNotIp => "pass_not_ip",
            LbReason::PassNotL4 => "pass_not_l4",
            LbReason::PassMalformed => "pass_malformed",
            LbReason::PassNoService => "pass_no_service",
            LbReason::RevNat => "rev_nat",
            LbReason::Established => "established",
            LbReason::NewConnection => "new_connection",
            LbReason::Affinity => "affinity",
            LbReason::NoBackend => "no_backend",
            LbReason::RewriteFailed => "rewrite_failed",
            LbReason::NoBackendReset => "no_backend_reset",
        }
    }

    /// The tc verdict of this reason.
    pub fn verdict(self) -> i32 {
        match self {
            LbReason::NoBackend | LbReason::RewriteFailed => TC_ACT_SHOT,
            LbReason::NoBackendReset => TC_ACT_REDIRECT,
            _ => TC_ACT_OK,
        }
    }
}

/// The tc load balancer's verdict counters: a per-CPU `u64` array indexed by [`LbReason`].
/// Not part of [`map_defs`] (the socket programs count elsewhere).
pub fn stats_def() -> MapDef {
    MapDef::of::<u32, u64>(map::LB_STATS, MapKind::PerCpuArray, LbReason::COUNT, 0)
}

// ---------------------------------------------------------------------------------------
// User space: services → map contents, with stable ids
// ---------------------------------------------------------------------------------------

/// A frontend's identity: (VIP, port, IP protocol number).
pub type FrontendKey = (IpAddr, u16, u8);
/// A backend's identity: (address, port, IP protocol number). A protocol of 0 means
/// "unknown" (an id read back from `lb_be` for a backend no slot references; see
/// [`LbState::recover`]).
pub type BackendKey = (IpAddr, u16, u8);

/// What user space knows of the contents of the load-balancing maps: the ids it assigned
/// and each frontend's slot count. [`service_writes`] takes the previous state and returns
/// the next one with the writes that turn the maps from one into the other.
///
/// Allocation (stable ids): a frontend or backend present before keeps its id; a new one
/// takes the next id above every id handed out so far (`next_service_id`,
/// `next_backend_id`, high-water marks). Removing a backend or frontend therefore never
/// renumbers the others, and a removed id is not handed to a newcomer while conntrack
/// entries may still name it: connections pinned in `lb_ct` by `backend_id` and `svc_id`
/// keep their meaning (a forward entry whose backend is gone from `lb_be` falls through to
/// a new selection). Ids are dense at first and grow with churn; `lb_be` and `lb_svc` are
/// hash maps, so sparse ids cost nothing. The state is either kept by the caller (the
/// daemon) or read back from the pinned maps with [`LbState::recover`], which sets the
/// marks just above the largest id present: only ids removed before the restart can be
/// reused after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbState {
    pub services: BTreeMap<FrontendKey, u32>,
    pub backends: BTreeMap<BackendKey, u32>,
    /// `svc_id` → the slot count written to `lb_svc` (and so `lb_slot` keys `0..slots`).
    pub slots: BTreeMap<u32, u32>,
    /// The smallest `svc_id` never handed out (at least 1).
    pub next_service_id: u32,
    /// The smallest `backend_id` never handed out (at least 1).
    pub next_backend_id: u32,
}

/// Why services cannot be turned into map contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    #[error(
        "Service `{service}`: SCTP frontend {vip} port {port} maps to backend {backend} port {backend_port}: \
         sluice does not translate SCTP ports (the CRC32c covers them); use targetPort {port}"
    )]
    SctpPortTranslation { service: String, vip: IpAddr, port: u16, backend: IpAddr, backend_port: u16 },
    #[error("{what}: {count} exceed the map's capacity of {max} (map `{map}`)")]
    Capacity { what: &'static str, map: &'static str, count: usize, max: u32 },
    #[error("Service `{service}`: {source}")]
    Maglev {
        service: String,
        #[source]
        source: MaglevError,
    },
    #[error("map `{map}`: an entry of {len} bytes where {want} were expected")]
    BadEntry { map: &'static str, len: usize, want: usize },
}

/// The host-order `u32` at `at` of a map key or value.
pub fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The address in the first 16 bytes of `b` (IPv4-mapped ones as IPv4): the inverse of
/// [`super::fwd::addr_key`].
pub fn addr_of(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = std::net::Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn check_len(map: &'static str, b: &[u8], want: usize) -> Result<(), LbError> {
    if b.len() == want {
        Ok(())
    } else {
        Err(LbError::BadEntry { map, len: b.len(), want })
    }
}

impl LbState {
    /// Read the state back from the maps' entries (as iterated from the pinned maps):
    /// `lb_svc` gives frontends, their ids and slot counts; `lb_be` gives backends' ids,
    /// and `lb_slot` (through `lb_svc`) their protocols. A backend no slot references
    /// (terminating, or of a frontend without active backends) is recovered with protocol
    /// 0, which [`service_writes`] matches to any protocol of the same address and port.
    pub fn recover(
        svc: &[(Vec<u8>, Vec<u8>)],
        slot: &[(Vec<u8>, Vec<u8>)],
        be: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<LbState, LbError> {
        let mut state = LbState::default();
        let mut proto_of_svc = BTreeMap::new();
        for (k, v) in svc {
            check_len(map::LB_SVC, k, svc_key::SIZE)?;
            check_len(map::LB_SVC, v, svc_value::SIZE)?;
            let port = u16::from_be_bytes([k[svc_key::PORT], k[svc_key::PORT + 1]]);
            let id = read_u32(v, svc_value::SVC_ID);
            state.services.insert((addr_of(k), port, k[svc_key::PROTO]), id);
            state.slots.insert(id, read_u32(v, svc_value::SLOTS));
            proto_of_svc.insert(id, k[svc_key::PROTO]);
        }
        let mut proto_of_be = BTreeMap::new();
        for (k, v) in slot {
            check_len(map::LB_SLOT, k, slot_key::SIZE)?;
            check_len(map::LB_SLOT, v, slot_value::SIZE)?;
            if let Some(&p) = proto_of_svc.get(&read_u32(k, slot_key::SVC_ID)) {
                proto_of_be.insert(read_u32(v, slot_value::BACKEND_ID), p);
            }
        }
        for (k, v) in be {
            check_len(map::LB_BE, k, 4)?;
            check_len(map::LB_BE, v, be_value::SIZE)?;
            let id = read_u32(k, 0);
            let port = u16::from_be_bytes([v[be_value::PORT], v[be_value::PORT + 1]]);
            let proto = proto_of_be.get(&id).copied().unwrap_or(0);
            state.backends.insert((addr_of(v), port, proto), id);
        }
        state.next_service_id = state.services.values().max().map_or(1, |m| m.saturating_add(1));
        state.next_backend_id = state.backends.values().max().map_or(1, |m| m.saturating_add(1));
        Ok(state)
    }
}

/// Ids above a high-water mark (and above every id in use).
struct Ids {
    next: u32,
}

impl Ids {
    fn new(mark: u32, in_use: impl IntoIterator<Item = u32>) -> Ids {
        let above = in_use.into_iter().max().map_or(1, |m| m.saturating_add(1));
        Ids { next: mark.max(above).max(1) }
    }

    fn take(&mut self) -> u32 {
        let id = self.next;
        self.next = self.next.saturating_add(1);
        id
    }
}

fn svc_key_bytes(k: &FrontendKey) -> [u8; svc_key::SIZE] {
    let mut b = [0u8; svc_key::SIZE];
    b[svc_key::ADDR..svc_key::ADDR + 16].copy_from_slice(&super::fwd::addr_key(k.0));
    b[svc_key::PORT..svc_key::PORT + 2].copy_from_slice(&k.1.to_be_bytes());
    b[svc_key::PROTO] = k.2;
    b
}

/// An `lb_slot` key.
pub fn slot_key_bytes(svc_id: u32, slot: u32) -> [u8; slot_key::SIZE] {
    let mut b = [0u8; slot_key::SIZE];
    b[slot_key::SVC_ID..slot_key::SVC_ID + 4].copy_from_slice(&svc_id.to_le_bytes());
    b[slot_key::SLOT..slot_key::SLOT + 4].copy_from_slice(&slot.to_le_bytes());
    b
}

/// An `lb_slot` value.
pub fn slot_value_bytes(backend_id: u32, addr: IpAddr, port: u16) -> [u8; slot_value::SIZE] {
    let mut b = [0u8; slot_value::SIZE];
    b[slot_value::BACKEND_ID..slot_value::BACKEND_ID + 4].copy_from_slice(&backend_id.to_le_bytes());
    b[slot_value::ADDR..slot_value::ADDR + 16].copy_from_slice(&super::fwd::addr_key(addr));
    b[slot_value::PORT..slot_value::PORT + 2].copy_from_slice(&port.to_be_bytes());
    b
}

/// One `lb_hint` filter: the bits of these (address, port, protocol)s.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hint(Vec<u8>);

impl Hint {
    fn new() -> Hint {
        Hint(vec![0; hint::BYTES])
    }

    fn set(&mut self, addr: IpAddr, port: u16, proto: u8) {
        let bit = hint_bit(addr, port, proto);
        self.0[(bit / 8) as usize] |= 1 << (bit % 8);
    }

    fn union(&self, other: &Hint) -> Hint {
        Hint(self.0.iter().zip(&other.0).map(|(a, b)| a | b).collect())
    }
}

/// The frontend and backend filters of a state. A backend recovered with protocol 0 (see
/// [`LbState::recover`]) sets its bit under each of the three protocols: its entry's real
/// protocol is unknown, and a bit must not be clear while the entry exists.
fn hints_of<'a>(
    frontends: impl IntoIterator<Item = &'a FrontendKey>,
    backends: impl IntoIterator<Item = &'a BackendKey>,
) -> (Hint, Hint) {
    let (mut fe, mut be) = (Hint::new(), Hint::new());
    for &(addr, port, proto) in frontends {
        fe.set(addr, port, proto);
    }
    for &(addr, port, proto) in backends {
        if proto == 0 {
            for p in [6, 17, 132] {
                be.set(addr, port, p);
            }
        } else {
            be.set(addr, port, proto);
        }
    }
    (fe, be)
}

fn hint_writes(fe: &Hint, be: &Hint) -> MapWrites {
    let mut w = writes_for(map::LB_HINT, 4, hint::BYTES);
    w.put(&hint::FRONTEND.to_le_bytes(), &fe.0);
    w.put(&hint::BACKEND.to_le_bytes(), &be.0);
    w
}

/// Empty writes for one map.
fn writes_for(map: &'static str, key_size: usize, value_size: usize) -> MapWrites {
    MapWrites { map, key_size, value_size, ..MapWrites::default() }
}

/// The `lb_svc`, `lb_slot`, `lb_be` and `lb_hint` writes that turn maps
/// holding `prev` into maps serving `services`, and the state they leave.
///
/// Order (each [`MapWrites`] applies its updates, then its deletes; the list is applied
/// in order), chosen so that a packet never finds a reference to a missing entry, and
/// never a clear `lb_hint` bit for an entry that exists:
/// 0. `lb_hint`: the union of the filters of `prev` and of the new state (new bits appear
///    before their entries, old bits stay while their entries may);
/// 1. `lb_be` updates (new and changed backends), `lb_slot` updates;
/// 2. `lb_svc` updates (new slot counts) and deletes (removed frontends);
/// 3. `lb_slot` deletes (slots beyond a shrunk count, all of a removed frontend), then
///    then `lb_be` deletes (removed backends);
/// 4. `lb_hint`: the new state's exact filters (left out when equal to the union), last:
///    after the removals, so the bits of removed entries clear only once they are gone.
///
/// So a map may appear twice (`lb_hint` in steps 0 and 4, others with their updates in
/// step 1 and their deletes in step 3); empty writes are left out. The node's live update
/// diffs each write against the map's contents, which keeps the two `lb_hint` writes
/// right: the last one differs from the union only when it differs from the contents. The
/// union is computed from `prev`, so `prev` must describe the maps (as
/// [`LbState::recover`] does; it does not read `lb_hint`). Selection slots: random: each active backend `weight` times, in the
/// frontend's backend order (random selection is unweighted in the model, so once);
/// Maglev: the table of [`crate::lb::maglev`]. Terminating backends keep their `lb_be`
/// entry (state [`be_value::TERMINATING`]) and hold no slot; not-ready backends are
/// neither in a slot nor in `lb_be` (unless another frontend uses the same backend).
///
/// SCTP frontends must not translate ports ([`LbError::SctpPortTranslation`]): the
/// datapath rewrites SCTP addresses only, which the CRC32c does not cover.
pub fn service_writes(services: &[Service], prev: &LbState) -> Result<(Vec<MapWrites>, LbState), LbError> {
    // The next state's frontends and backends.
    let mut frontends: Vec<(&Service, &Frontend, FrontendKey)> = Vec::new();
    let mut backends: BTreeMap<BackendKey, u8> = BTreeMap::new();
    for s in services {
        for f in &s.frontends {
            let proto = f.protocol.number();
            frontends.push((s, f, (f.vip, f.port, proto)));
            for be in &f.backends {
                if proto == 132 && be.port != f.port {
                    return Err(LbError::SctpPortTranslation {
                        service: format!("{}/{}", s.namespace, s.name),
                        vip: f.vip,
                        port: f.port,
                        backend: be.address,
                        backend_port: be.port,
                    });
                }
                let state = match be.state {
                    BackendState::Active => be_value::ACTIVE,
                    BackendState::Terminating => be_value::TERMINATING,
                    BackendState::NotReady => continue,
                };
                // Active wins when two frontends share a backend in different states.
                let e = backends.entry((be.address, be.port, proto)).or_insert(state);
                *e = (*e).min(state);
            }
        }
    }
    if frontends.len() > SVC_MAX as usize {
        return Err(LbError::Capacity {
            what: "frontends",
            map: map::LB_SVC,
            count: frontends.len(),
            max: SVC_MAX,
        });
    }
    if backends.len() > BE_MAX as usize {
        return Err(LbError::Capacity {
            what: "backends",
            map: map::LB_BE,
            count: backends.len(),
            max: BE_MAX,
        });
    }

    // Ids: kept where known, else the lowest free.
    let mut next = LbState::default();
    let mut svc_ids = Ids::new(prev.next_service_id, prev.services.values().copied());
    for (_, _, k) in &frontends {
        let id = prev.services.get(k).copied().unwrap_or_else(|| svc_ids.take());
        next.services.insert(*k, id);
    }
    let mut be_ids = Ids::new(prev.next_backend_id, prev.backends.values().copied());
    let mut reused: BTreeSet<u32> = BTreeSet::new();
    for k in backends.keys() {
        let known = prev.backends.get(k).or_else(|| prev.backends.get(&(k.0, k.1, 0))).copied();
        let id = match known {
            Some(id) if reused.insert(id) => id,
            _ => be_ids.take(),
        };
        next.backends.insert(*k, id);
    }

    let mut be_put = writes_for(map::LB_BE, 4, be_value::SIZE);
    for (k, &state) in &backends {
        let mut v = [0u8; be_value::SIZE];
        v[be_value::ADDR..be_value::ADDR + 16].copy_from_slice(&super::fwd::addr_key(k.0));
        v[be_value::PORT..be_value::PORT + 2].copy_from_slice(&k.1.to_be_bytes());
        v[be_value::STATE] = state;
        be_put.put(&next.backends[k].to_le_bytes(), &v);
    }
    let mut slot_put = writes_for(map::LB_SLOT, slot_key::SIZE, slot_value::SIZE);
    let where_is: BTreeMap<u32, (IpAddr, u16)> =
        next.backends.iter().map(|(k, &id)| (id, (k.0, k.1))).collect();
    let mut svc_put = writes_for(map::LB_SVC, svc_key::SIZE, svc_value::SIZE);
    let mut total_slots = 0usize;
    for (s, f, k) in &frontends {
        let svc_id = next.services[k];
        let id_of = |b: &crate::model::service::Backend| next.backends[&(b.address, b.port, k.2)];
        let slots: Vec<u32> = match s.algorithm {
            LbAlgorithm::Random => {
                f.active().flat_map(|b| std::iter::repeat_n(id_of(b), b.weight.max(1) as usize)).collect()
            }
            LbAlgorithm::Maglev(size) => {
                let active: Vec<&crate::model::service::Backend> = f.active().collect();
                let table = Table::build(&f.maglev_backends(), size).map_err(|source| LbError::Maglev {
                    service: format!("{}/{}", s.namespace, s.name),
                    source,
                })?;
                if table.slots().contains(&maglev::EMPTY) {
                    Vec::new()
                } else {
                    table.slots().iter().map(|&i| id_of(active[i as usize])).collect()
                }
            }
        };
        total_slots += slots.len();
        if total_slots > SLOT_MAX as usize {
            return Err(LbError::Capacity {
                what: "selection slots",
                map: map::LB_SLOT,
                count: total_slots,
                max: SLOT_MAX,
            });
        }
        for (i, be) in slots.iter().enumerate() {
            let (addr, port) = where_is[be];
            slot_put.put(&slot_key_bytes(svc_id, i as u32), &slot_value_bytes(*be, addr, port));
        }
        next.slots.insert(svc_id, slots.len() as u32);
        let mut sv = [0u8; svc_value::SIZE];
        sv[svc_value::SVC_ID..svc_value::SVC_ID + 4].copy_from_slice(&svc_id.to_le_bytes());
        sv[svc_value::SLOTS..svc_value::SLOTS + 4].copy_from_slice(&(slots.len() as u32).to_le_bytes());
        if let SessionAffinity::ClientIp { timeout_seconds } = s.affinity {
            sv[svc_value::FLAGS..svc_value::FLAGS + 4].copy_from_slice(&svc_value::AFFINITY.to_le_bytes());
            sv[svc_value::AFFINITY_TIMEOUT..svc_value::AFFINITY_TIMEOUT + 4]
                .copy_from_slice(&timeout_seconds.to_le_bytes());
        }
        svc_put.put(&svc_key_bytes(k), &sv);
    }

    // Stale entries.
    for k in prev.services.keys() {
        if !next.services.contains_key(k) {
            svc_put.delete(&svc_key_bytes(k));
        }
    }
    let mut slot_del = writes_for(map::LB_SLOT, slot_key::SIZE, slot_value::SIZE);
    for (&svc_id, &old) in &prev.slots {
        let keep = next.slots.get(&svc_id).copied().unwrap_or(0);
        for slot in keep..old {
            slot_del.delete(&slot_key_bytes(svc_id, slot));
        }
    }
    let mut be_del = writes_for(map::LB_BE, 4, be_value::SIZE);
    let live_be: BTreeSet<u32> = next.backends.values().copied().collect();
    for id in prev.backends.values().collect::<BTreeSet<_>>() {
        if !live_be.contains(id) {
            be_del.delete(&id.to_le_bytes());
        }
    }
    next.next_service_id = svc_ids.next;
    next.next_backend_id = be_ids.next;
    // A backend recovered without its protocol whose id lives on is the next state's
    // backend of that address and port: the next state's bits cover it (so a reload of an
    // unchanged node writes nothing); the others set all three protocols' bits.
    let old_backends =
        prev.backends.iter().filter(|(k, id)| k.2 != 0 || !live_be.contains(id)).map(|(k, _)| k);
    let (old_fe, old_be) = hints_of(prev.services.keys(), old_backends);
    let (new_fe, new_be) = hints_of(next.services.keys(), next.backends.keys());
    let (union_fe, union_be) = (old_fe.union(&new_fe), old_be.union(&new_be));
    let exact = if (&union_fe, &union_be) == (&new_fe, &new_be) {
        writes_for(map::LB_HINT, 4, hint::BYTES)
    } else {
        hint_writes(&new_fe, &new_be)
    };
    let union = hint_writes(&union_fe, &union_be);
    let all = [union, be_put, slot_put, svc_put, slot_del, be_del, exact];
    Ok((all.into_iter().filter(|w| !w.is_empty()).collect(), next))
}

/// The `lb_ct` entries a change of services leaves pointing at nothing: those of frontends
/// and backends that `prev` had and the next state has not. Tracked packets are translated
/// from the entry alone (it holds the rewrite), so these entries must go, after the map
/// writes (so no new one is made for a removed id once the purge has run).
///
/// A terminating backend keeps its id (and its connections); a backend that leaves one
/// frontend but stays in another keeps its id too, and so its connections, as it keeps its
/// `lb_be` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtPurge {
    pub services: BTreeSet<u32>,
    pub backends: BTreeSet<u32>,
}

impl CtPurge {
    /// The ids `prev` has and `next` has not.
    pub fn between(prev: &LbState, next: &LbState) -> CtPurge {
        let gone = |a: &BTreeMap<_, u32>, b: &BTreeMap<_, u32>| -> BTreeSet<u32> {
            let live: BTreeSet<u32> = b.values().copied().collect();
            a.values().copied().filter(|id| !live.contains(id)).collect()
        };
        CtPurge {
            services: gone(&prev.services, &next.services),
            backends: gone(&prev.backends, &next.backends),
        }
    }

    /// Nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.backends.is_empty()
    }

    /// Whether the `lb_ct` entry with this value is to be deleted. A value of the wrong
    /// size (not ours) is left alone.
    pub fn matches(&self, value: &[u8]) -> bool {
        value.len() == ct_value::SIZE
            && (self.services.contains(&read_u32(value, ct_value::SVC_ID))
                || self.backends.contains(&read_u32(value, ct_value::BACKEND_ID)))
    }

    /// The maps whose entries a purge deletes: `lb_ct` and `lb_ct4`.
    pub const MAPS: [&'static str; 2] = [map::LB_CT, map::LB_CT4];

    /// The deletes, as writes to apply like any other, of the entries of `ct_map` (one of
    /// [`CtPurge::MAPS`]; its contents as read back) that name a removed id.
    pub fn writes<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        ct_map: &'static str,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> MapWrites {
        let key_size = if ct_map == map::LB_CT4 { ct4_key::SIZE } else { ct_key::SIZE };
        let mut w = writes_for(ct_map, key_size, ct_value::SIZE);
        if !self.is_empty() {
            for (k, v) in entries {
                if k.as_ref().len() == key_size && self.matches(v.as_ref()) {
                    w.delete(k.as_ref());
                }
            }
        }
        w
    }
}
