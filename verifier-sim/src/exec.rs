//! The executor: runs a [`Program`] over a real program context with emulated maps.
//!
//! Contract: [`Machine::run`] (and the shorthands [`run`], [`run_xdp`], [`run_tc`]) executes
//! every [`Insn`] with the kernel's semantics and returns a [`RunOutcome`], or an
//! [`ExecError`] when the program does something the verifier must have rejected (an
//! out-of-bounds access, a jump into the middle of `LD_IMM64`, a runaway loop, ...). The
//! executor never panics on any program. Errors name the instruction by its index in
//! [`Program::insns`] (not its slot). The [`Context`] is updated in place: packet bytes,
//! writable `__sk_buff` fields, hash and checksum state as the program left them.
//!
//! Many runs: a [`Machine`] keeps its buffers from run to run, yet each run starts from
//! zeroed stacks and a freshly built packet frame, exactly as a new machine would.
//! [`Prepared`] decodes a program once (its jump targets); [`Runner`] runs one program
//! packet after packet, each run what [`run`] gives on a fresh [`Context::new`], and
//! allocates nothing once its buffers have held the largest packet (a capture replay runs
//! at hundreds of thousands of packets a second).
//!
//! Memory model: one simulated 64-bit address space of disjoint regions; every load,
//! store, atomic and helper memory argument is bounds-checked against its region.
//! - Stack: frame `i` (0 = main) owns `[STACK_BASE + i * STACK_FRAME_SPAN, +512)`, `r10` is
//!   its top. Each frame has its own 512 bytes (the kernel's 512 is for all frames
//!   together; the verifier checks that). Stacks start zeroed.
//! - Context at [`CTX_ADDR`]: read and written through the field tables of [`crate::spec`]
//!   (`XDP_MD`, `SK_BUFF`), not as bytes. `data`, `data_end`, `data_meta` read as 64-bit
//!   packet pointers (the kernel rewrites those 32-bit loads). XDP fields are read-only
//!   4-byte loads; `__sk_buff` allows aligned narrow reads of scalar fields, any aligned
//!   access inside `cb[]`, and exact-size writes of the writable fields.
//! - Packet at [`PACKET_BASE`]: `XDP_PACKET_HEADROOM` (256) bytes of headroom, the packet,
//!   then tailroom up to a 4096-byte frame less `skb_shared_info` (as `BPF_PROG_TEST_RUN`
//!   lays it out). Accesses must lie in `[data_meta, data_end)`.
//! - Map values at the addresses [`crate::maps`] assigns; map handles (what `LD_IMM64` of a
//!   map loads) are not dereferenceable.
//!
//! Instructions: ALU/ALU64 (32-bit results zero-extend; division by zero gives 0; modulo
//! by zero leaves `dst`, truncated to 32 bits for ALU; `sdiv` of INT_MIN by -1 gives
//! INT_MIN and `smod` gives 0; shift amounts are masked to the width), `neg`, `movsx`,
//! `le`/`be`/`bswap` on a little-endian host, loads (also sign-extending), stores, atomics
//! (stack and map values only, as the kernel allows), `load_acquire`/`store_release`,
//! JMP/JMP32, `ja`/`gotol`, bpf-to-bpf calls (`r6`-`r9` and `r10` restored on return, at
//! most 8 frames), `exit`, `LD_IMM64` of constants, `MapRef` (the map's handle) and
//! `MapValueRef` (element 0 of a one-element array). `may_goto` is never taken (the kernel
//! takes it only after ~8M iterations; our step budget is smaller). `ld_abs`/`ld_ind` load
//! in network order from the packet for `SchedCls` and end the program with `r0 = 0`
//! when out of bounds; XDP rejects them. Fd- and index-based map loads, BTF ids, kfuncs and
//! `LD_IMM64` of a function are not emulated (an error).
//!
//! Helpers (ids of the kernel's `enum bpf_func_id`): `map_lookup_elem`, `map_update_elem`,
//! `map_delete_elem`, `ktime_get_ns` (also `_boot_`, `_coarse_`: all read
//! [`Context::now_ns`], fixed during a run), `get_prandom_u32` (seeded, deterministic),
//! `get_smp_processor_id`, `tail_call` (into [`Machine::set_programs`]' table, from the
//! main frame only, at most 33), `redirect`, `redirect_map` (XDP; the map stands in for a
//! devmap: array or hash keyed by `u32`, value starting with the `u32` ifindex; broadcast
//! is not emulated), `xdp_adjust_head`/`_meta`/`_tail`, `xdp_load_bytes`/`_store_bytes`,
//! `skb_load_bytes`, `skb_store_bytes`, `l3_csum_replace`, `l4_csum_replace`,
//! `csum_diff` (Linux 6.13+ result: folded to 16 bits), `csum_update`, `fib_lookup`
//! (answers [`Context::fib`]: `BPF_FIB_LKUP_RET_NOT_FWDED` with the parameters untouched
//! when none is given), `skb_set_tunnel_key` (kept in [`Context::tunnel_key`]),
//! `skb_get_tunnel_key` (reads [`Context::tunnel_key`], the received packet's metadata;
//! `-EINVAL` with the buffer zeroed when there is none, as in the kernel),
//! `redirect_neigh`, `redirect_peer` (tc; recorded in [`RunOutcome::redirect_peer`]),
//! `ringbuf_output`, and `sk_lookup_tcp`/`skc_lookup_tcp`, which find no socket (the
//! simulator models none: the L7 redirect's connections fail closed here, see the
//! verifier's helper table).
//! The skb's `ip_summed` is [`IpSummed::None`] unless set (what `BPF_PROG_TEST_RUN`
//! builds), so `BPF_F_PSEUDO_HDR` and `BPF_F_RECOMPUTE_CSUM` change only `skb->csum` under
//! [`IpSummed::Complete`] and the field under [`IpSummed::Partial`], as in the kernel.
//! After any call `r1`-`r5` keep whatever they held (the verifier forbids reading them).
//!
//! `CgroupSockAddr` programs run on [`Context::sock_addr`] (see [`SockAddr`]): whole 4-byte
//! loads of every field, stores into the fields the hook makes writable, and
//! `get_socket_cookie` answering [`SockAddr::cookie`]; the packet is empty.
//!
//! Not emulated: `SockOps` and `SkMsg` programs, packet resizing for skbs, devmaps,
//! spin locks, kfuncs.

mod sock_addr;

pub use sock_addr::{SockAddr, AF_INET, AF_INET6, SOCK_DGRAM, SOCK_STREAM};

use crate::maps::{errno, MapSet};
use crate::spec::{CtxField, CtxValue, MapKind, ProgKind, SK_BUFF, XDP_MD};
use crate::uapi::{self, BpfFibLookup, BpfTunnelKey};
use sluice_asm::{AluOp, AtomicOp, CallTarget, Endian, Imm64, Insn, JmpCond, Program, Reg, Size, Src};
use std::mem::{offset_of, size_of};
use thiserror::Error;

/// Headroom before the packet (`XDP_PACKET_HEADROOM`).
pub const XDP_PACKET_HEADROOM: usize = 256;
/// `sizeof(struct xdp_frame)`: headroom `xdp_adjust_head`/`_meta` may not take.
pub const XDP_FRAME_SIZE: usize = 40;
/// `ETH_HLEN`.
pub const ETH_HLEN: usize = 14;
/// The test-run frame: a page, of which `skb_shared_info` (320 bytes) is not data.
const FRAME_SIZE: usize = 4096;
const SKB_SHARED_INFO_SIZE: usize = 320;
/// Stack bytes per frame (`MAX_BPF_STACK`).
pub const STACK_SIZE: usize = 512;
/// Most call frames, the main one included (`MAX_CALL_FRAMES`).
pub const MAX_CALL_FRAMES: usize = 8;
/// Most tail calls in one run (`MAX_TAIL_CALL_CNT`).
pub const MAX_TAIL_CALL_CNT: u32 = 33;
/// Instructions executed before a run is stopped, by default.
pub const DEFAULT_STEP_LIMIT: u64 = 1_000_000;

/// Address of frame 0's stack bottom.
pub const STACK_BASE: u64 = 0x1000_0000;
/// Distance between two frames' stacks.
pub const STACK_FRAME_SPAN: u64 = 0x1_0000;
/// Address of the context.
pub const CTX_ADDR: u64 = 0x2000_0000;
/// Address of the packet buffer's first (headroom) byte.
pub const PACKET_BASE: u64 = 0x3000_0000;

// The kernel constants of `crate::uapi`, as the 64-bit values `r0` and helper arguments
// carry here.
/// XDP verdicts.
pub const XDP_ABORTED: u64 = uapi::XDP_ABORTED as u64;
pub const XDP_DROP: u64 = uapi::XDP_DROP as u64;
pub const XDP_PASS: u64 = uapi::XDP_PASS as u64;
pub const XDP_TX: u64 = uapi::XDP_TX as u64;
pub const XDP_REDIRECT: u64 = uapi::XDP_REDIRECT as u64;
/// tc verdicts.
pub const TC_ACT_OK: u64 = uapi::TC_ACT_OK as u64;
pub const TC_ACT_SHOT: u64 = uapi::TC_ACT_SHOT as u64;
pub const TC_ACT_REDIRECT: u64 = uapi::TC_ACT_REDIRECT as u64;
/// `bpf_fib_lookup`'s answer when no [`Context::fib`] is given.
pub const BPF_FIB_LKUP_RET_NOT_FWDED: u64 = uapi::BPF_FIB_LKUP_RET_NOT_FWDED as u64;
/// `bpf_fib_lookup`: routed, the neighbor unknown.
pub const BPF_FIB_LKUP_RET_NO_NEIGH: u64 = uapi::BPF_FIB_LKUP_RET_NO_NEIGH as u64;
/// `bpf_skb_set_tunnel_key` sizes: the structure and its older prefixes.
const TUNNEL_KEY_SIZES: [u32; 5] = [
    size_of::<BpfTunnelKey>() as u32,
    offset_of!(BpfTunnelKey, local_ipv6) as u32,
    offset_of!(BpfTunnelKey, tunnel_label) as u32,
    offset_of!(BpfTunnelKey, tunnel_ext) as u32,
    // The oldest prefix: `tunnel_id` and `remote_ipv4`.
    offset_of!(BpfTunnelKey, remote_ipv6) as u32 + 4,
];
/// `BPF_F_TUNINFO_IPV6 | BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT | BPF_F_SEQ_NUMBER |
/// BPF_F_NO_TUNNEL_KEY | BPF_F_TUNINFO_FLAGS`.
const TUNNEL_KEY_FLAGS: u64 = 0x3f;
/// `bpf_skb_get_tunnel_key` flags: `BPF_F_TUNINFO_IPV6 | BPF_F_TUNINFO_FLAGS`.
const TUNNEL_GET_FLAGS: u64 = (uapi::BPF_F_TUNINFO_IPV6 | uapi::BPF_F_TUNINFO_FLAGS) as u64;
/// `BPF_F_TUNINFO_IPV6`: the IPv6 tunnel key.
const BPF_F_TUNINFO_IPV6: u64 = uapi::BPF_F_TUNINFO_IPV6 as u64;
/// `EPROTO`: the tunnel's family is not the one asked for.
const EPROTO: i32 = 71;

/// `bpf_redirect`: to the ingress path.
pub const BPF_F_INGRESS: u64 = uapi::BPF_F_INGRESS as u64;
/// `bpf_skb_store_bytes` flags.
pub const BPF_F_RECOMPUTE_CSUM: u64 = uapi::BPF_F_RECOMPUTE_CSUM as u64;
pub const BPF_F_INVALIDATE_HASH: u64 = uapi::BPF_F_INVALIDATE_HASH as u64;
/// `bpf_l3/l4_csum_replace` flags: the field size (0 = `to` is a `csum_diff` result).
pub const BPF_F_HDR_FIELD_MASK: u64 = uapi::BPF_F_HDR_FIELD_MASK as u64;
pub const BPF_F_PSEUDO_HDR: u64 = uapi::BPF_F_PSEUDO_HDR as u64;
pub const BPF_F_MARK_MANGLED_0: u64 = uapi::BPF_F_MARK_MANGLED_0 as u64;
pub const BPF_F_MARK_ENFORCE: u64 = uapi::BPF_F_MARK_ENFORCE as u64;
pub const BPF_F_IPV6: u64 = uapi::BPF_F_IPV6 as u64;
/// `bpf_redirect_map`: the verdict on a miss is `flags & BPF_F_ACTION_MASK`.
const BPF_F_ACTION_MASK: u64 = uapi::BPF_F_ACTION_MASK as u64;
const BPF_F_BROADCAST: u64 = uapi::BPF_F_BROADCAST as u64;
const BPF_F_EXCLUDE_INGRESS: u64 = uapi::BPF_F_EXCLUDE_INGRESS as u64;
/// `bpf_ringbuf_output` flags.
const BPF_RB_NO_WAKEUP: u64 = uapi::BPF_RB_NO_WAKEUP as u64;
const BPF_RB_FORCE_WAKEUP: u64 = uapi::BPF_RB_FORCE_WAKEUP as u64;
/// `sizeof(struct bpf_fib_lookup)`.
const FIB_LOOKUP_SIZE: u64 = size_of::<BpfFibLookup>() as u64;

/// Helper ids (`enum bpf_func_id`).
mod hid {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const KTIME_GET_NS: i32 = 5;
    pub const GET_PRANDOM_U32: i32 = 7;
    pub const GET_SMP_PROCESSOR_ID: i32 = 8;
    pub const SKB_STORE_BYTES: i32 = 9;
    pub const L3_CSUM_REPLACE: i32 = 10;
    pub const L4_CSUM_REPLACE: i32 = 11;
    pub const TAIL_CALL: i32 = 12;
    pub const REDIRECT: i32 = 23;
    pub const SKB_LOAD_BYTES: i32 = 26;
    pub const CSUM_DIFF: i32 = 28;
    pub const CSUM_UPDATE: i32 = 40;
    pub const XDP_ADJUST_HEAD: i32 = 44;
    pub const REDIRECT_MAP: i32 = 51;
    pub const XDP_ADJUST_META: i32 = 54;
    pub const XDP_ADJUST_TAIL: i32 = 65;
    pub const FIB_LOOKUP: i32 = 69;
    pub const SKB_GET_TUNNEL_KEY: i32 = 20;
    pub const SKB_SET_TUNNEL_KEY: i32 = 21;
    pub const REDIRECT_NEIGH: i32 = 152;
    pub const REDIRECT_PEER: i32 = 155;
    pub const KTIME_GET_BOOT_NS: i32 = 125;
    pub const RINGBUF_OUTPUT: i32 = 130;
    pub const KTIME_GET_COARSE_NS: i32 = 160;
    pub const XDP_LOAD_BYTES: i32 = 189;
    pub const XDP_STORE_BYTES: i32 = 190;
    pub const GET_SOCKET_COOKIE: i32 = 46;
    pub const SK_LOOKUP_TCP: i32 = 84;
    pub const SK_RELEASE: i32 = 86;
    pub const SKC_LOOKUP_TCP: i32 = 99;
    pub const SK_ASSIGN: i32 = 124;
}

/// Map kinds a program may look up, update and delete in.
const DATA_MAPS: &[MapKind] = &[
    MapKind::Hash,
    MapKind::Array,
    MapKind::PerCpuHash,
    MapKind::PerCpuArray,
    MapKind::LruHash,
    MapKind::LruPerCpuHash,
    MapKind::LpmTrie,
];

/// Why a run stopped without an outcome. Each is a program the verifier should have
/// rejected, or something the executor does not emulate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecError {
    #[error("instruction {insn}: bad {size}-byte access at {addr:#x}")]
    BadAccess { insn: usize, addr: u64, size: usize },
    #[error("instruction {insn}: jump to slot {slot}, which starts no instruction")]
    BadJump { insn: usize, slot: i64 },
    #[error("execution ran past the last instruction ({insn})")]
    FellOffEnd { insn: usize },
    #[error("instruction {insn}: {reason}")]
    BadInsn { insn: usize, reason: String },
    #[error("stopped after {limit} instructions")]
    StepLimit { limit: u64 },
    #[error("instruction {insn}: more than {max} call frames")]
    CallDepth { insn: usize, max: usize },
    #[error("instruction {insn}: unknown helper {helper}")]
    UnknownHelper { insn: usize, helper: i32 },
    #[error("instruction {insn}: helper {helper} is not available to {kind} programs")]
    HelperUnavailable { insn: usize, helper: i32, kind: ProgKind },
    #[error("instruction {insn}: no map named `{name}`")]
    UnknownMap { insn: usize, name: String },
    #[error("instruction {insn}: {arg:#x} is not a map")]
    NotAMap { insn: usize, arg: u64 },
    #[error("instruction {insn}: helper {helper} may not be used on map `{map}` ({kind:?})")]
    MapNotAllowed { insn: usize, helper: i32, map: String, kind: MapKind },
    #[error("instruction {insn}: {what} is not emulated")]
    Unsupported { insn: usize, what: String },
    #[error("{kind} programs are not emulated")]
    UnsupportedKind { kind: ProgKind },
    #[error("a {len}-byte packet is shorter than an Ethernet header")]
    PacketTooShort { len: usize },
    #[error("instruction {insn}: tail call to program {index}, but the machine holds {count}")]
    NoSuchProgram { insn: usize, index: u32, count: usize },
}

/// The writable `__sk_buff` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkbFields {
    pub mark: u32,
    pub priority: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub tc_classid: u32,
    pub queue_mapping: u32,
    pub tstamp: u64,
}

/// Read-only `__sk_buff` fields that do not come from the packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkbInfo {
    /// `PACKET_HOST` (0) and friends.
    pub pkt_type: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    /// `skb->hash`; `BPF_F_INVALIDATE_HASH` clears it.
    pub hash: u32,
    pub napi_id: u32,
}

/// The skb's checksum state (`skb->ip_summed`, with `skb->csum` when complete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpSummed {
    /// `CHECKSUM_NONE`, what `BPF_PROG_TEST_RUN` builds.
    #[default]
    None,
    /// `CHECKSUM_COMPLETE` with `skb->csum`.
    Complete(u32),
    /// `CHECKSUM_PARTIAL`: the L4 field holds the pseudo-header sum.
    Partial,
}

/// What a program runs on: the packet and the context fields around it. A run leaves
/// here the packet as the program left it (from `data` to `data_end`), the writable
/// `__sk_buff` fields, and the hash and checksum state helpers changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub packet: Vec<u8>,
    /// `xdp_md.ingress_ifindex`.
    pub ingress_ifindex: u32,
    /// `__sk_buff.ingress_ifindex` (`skb->skb_iif`, the device the packet was last
    /// received on): 0 by default, as `BPF_PROG_TEST_RUN` leaves it without a context.
    pub skb_ingress_ifindex: u32,
    /// `xdp_md.rx_queue_index`.
    pub rx_queue_index: u32,
    /// `xdp_md.egress_ifindex` (0 on ingress).
    pub egress_ifindex: u32,
    /// `__sk_buff.ifindex`.
    pub ifindex: u32,
    /// What the `ktime_get_*` helpers return.
    pub now_ns: u64,
    pub skb: SkbFields,
    pub skb_info: SkbInfo,
    pub ip_summed: IpSummed,
    /// What `bpf_fib_lookup` answers: `None` is "not forwarded" (no route here).
    pub fib: Option<FibAnswer>,
    /// Set by `bpf_skb_set_tunnel_key`.
    pub tunnel_key: Option<TunnelKey>,
    /// The `bpf_sock_addr` of a `CgroupSockAddr` run, as the program left it.
    pub sock_addr: SockAddr,
}

/// An emulated `bpf_fib_lookup` result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FibAnswer {
    /// `BPF_FIB_LKUP_RET_*`.
    pub ret: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The tunnel metadata a program attached with `bpf_skb_set_tunnel_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelKey {
    pub tunnel_id: u32,
    /// Host order, as the structure carries it.
    pub remote_ipv4: u32,
    pub ttl: u8,
    pub flags: u64,
}

impl Context {
    /// A context for `packet` received on ifindex 1 (loopback, as `BPF_PROG_TEST_RUN`: the
    /// XDP `ingress_ifindex` and the skb's `ifindex`), everything else zero.
    pub fn new(packet: impl Into<Vec<u8>>) -> Context {
        Context {
            packet: packet.into(),
            ingress_ifindex: 1,
            skb_ingress_ifindex: 0,
            rx_queue_index: 0,
            egress_ifindex: 0,
            ifindex: 1,
            now_ns: 0,
            skb: SkbFields::default(),
            skb_info: SkbInfo::default(),
            ip_summed: IpSummed::None,
            fib: None,
            tunnel_key: None,
            sock_addr: SockAddr::default(),
        }
    }

    /// A context for a `CgroupSockAddr` run on `sock_addr` (no packet).
    pub fn for_sock_addr(sock_addr: SockAddr) -> Context {
        Context { sock_addr, ..Context::new(Vec::new()) }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// `r0` at the final `exit`, all 64 bits (the kernel hands back its low 32).
    pub retval: u64,
    /// The packet from `data` to `data_end`.
    pub packet: Vec<u8>,
    /// XDP metadata, from `data_meta` to `data`.
    pub meta: Vec<u8>,
    /// The last successful `bpf_redirect`/`bpf_redirect_map`/`bpf_redirect_neigh`:
    /// ifindex and flags.
    pub redirect: Option<(u32, u64)>,
    /// Whether that redirect was `bpf_redirect_neigh` (the kernel fills in the MACs).
    pub redirect_neigh: bool,
    /// Whether that redirect was `bpf_redirect_peer` (into the ingress of the device's
    /// peer: the other end of a veth).
    pub redirect_peer: bool,
    /// Instructions executed (an `LD_IMM64` counts once).
    pub insns_executed: u64,
    /// Tail calls taken.
    pub tail_calls: u32,
    /// The writable `__sk_buff` fields after the run.
    pub ctx_out: SkbFields,
}

/// What a run produced, without the packet: see [`Machine::run_prepared`], which leaves the
/// packet in its [`Context`] and allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// `r0` at the final `exit`, all 64 bits (the kernel hands back its low 32).
    pub retval: u64,
    /// As [`RunOutcome::redirect`].
    pub redirect: Option<(u32, u64)>,
    /// As [`RunOutcome::redirect_neigh`].
    pub redirect_neigh: bool,
    /// As [`RunOutcome::redirect_peer`].
    pub redirect_peer: bool,
    /// Instructions executed (an `LD_IMM64` counts once).
    pub insns_executed: u64,
    /// Tail calls taken.
    pub tail_calls: u32,
}

/// A program decoded once for many runs: where each jump and local call lands, so that a
/// run computes no slot table, and (once [`Prepared::bind`] has seen the maps) what each
/// map reference loads, so that a run looks up no map by name.
#[derive(Debug, Clone)]
pub struct Prepared {
    program: Program,
    /// The [`MapSet::layout`] `resolved` holds for.
    bound: Option<u64>,
    /// Per instruction: what an `LD_IMM64` of a map or map value loads, where it resolves
    /// (one that does not is resolved, and fails, when it runs).
    resolved: Vec<Option<u64>>,
    /// Per instruction: the index a jump or local call lands on, or (`Err`) the slot it
    /// names when that slot starts no instruction (an error only when the jump is taken).
    /// Instructions that do not branch hold `Ok(0)`, never read.
    targets: Vec<Result<usize, i64>>,
}

impl Prepared {
    /// Decode `prog` (a copy is kept).
    pub fn new(prog: &Program) -> Prepared {
        let starts = prog.slot_starts();
        let last = starts.len() - 1;
        let targets = prog
            .insns()
            .iter()
            .enumerate()
            .map(|(i, insn)| {
                let Some(off) = insn.branch_offset() else { return Ok(0) };
                let slot = starts[i] as i64 + 1 + i64::from(off);
                usize::try_from(slot).ok().and_then(|s| starts[..last].binary_search(&s).ok()).ok_or(slot)
            })
            .collect();
        Prepared { program: prog.clone(), bound: None, resolved: Vec::new(), targets }
    }

    /// Resolve the program's map references against `maps` (and every set of its
    /// [`MapSet::layout`]); runs with other maps resolve them as they go.
    pub fn bind(&mut self, maps: &MapSet) {
        if self.bound == Some(maps.layout()) {
            return;
        }
        self.resolved = self
            .program
            .insns()
            .iter()
            .enumerate()
            .map(|(i, insn)| match insn {
                Insn::LdImm64 { imm: imm @ (Imm64::MapRef(_) | Imm64::MapValueRef { .. }), .. } => {
                    imm64(maps, i, imm).ok()
                }
                _ => None,
            })
            .collect();
        self.bound = Some(maps.layout());
    }

    /// What the `LD_IMM64` at `insn` loads with `maps`, if bound to their layout.
    fn resolved(&self, insn: usize, maps: &MapSet) -> Option<u64> {
        if self.bound != Some(maps.layout()) {
            return None;
        }
        self.resolved.get(insn).copied().flatten()
    }

    /// The program.
    pub fn program(&self) -> &Program {
        &self.program
    }
}

/// Buffers a [`Machine`] keeps between runs so that a run allocates nothing: the packet
/// frame, the stacks of every call frame, and room for helper arguments.
#[derive(Debug, Clone, Default)]
struct Scratch {
    /// The packet frame (headroom, packet, tailroom), `hard_end` bytes during a run.
    buf: Vec<u8>,
    /// `MAX_CALL_FRAMES` stacks of `STACK_SIZE` bytes, frame `i` at `i * STACK_SIZE`.
    stack: Vec<u8>,
    /// Map helper keys and values, copied out of program memory.
    key: Vec<u8>,
    value: Vec<u8>,
    /// The last run's `data_meta`, `data` and `data_end` offsets in `buf` (all 0 after a
    /// failed run).
    meta: usize,
    data: usize,
    end: usize,
}

/// The executor's persistent state: step budget, random generator, tail-call targets, and
/// buffers reused from run to run.
#[derive(Debug, Clone)]
pub struct Machine {
    step_limit: u64,
    rng: u64,
    programs: Vec<Prepared>,
    scratch: Scratch,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

/// The `bpf_get_prandom_u32` seed of [`Machine::new`].
pub const DEFAULT_SEED: u64 = 0x5eed_5eed;

impl Machine {
    /// A machine with the default step limit and a fixed seed ([`DEFAULT_SEED`]).
    pub fn new() -> Machine {
        Machine::with_seed(DEFAULT_SEED)
    }

    /// A machine whose `bpf_get_prandom_u32` sequence starts from `seed`.
    pub fn with_seed(seed: u64) -> Machine {
        Machine {
            step_limit: DEFAULT_STEP_LIMIT,
            rng: seed,
            programs: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Restart the `bpf_get_prandom_u32` sequence from `seed` (a later run draws what a
    /// fresh [`Machine::with_seed`] would).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = seed;
    }

    /// Stop runs after `limit` instructions.
    pub fn set_step_limit(&mut self, limit: u64) {
        self.step_limit = limit;
    }

    /// The programs `bpf_tail_call` can reach: a `ProgArray` value `i` names `programs[i]`.
    pub fn set_programs(&mut self, programs: Vec<Program>) {
        self.programs = programs.iter().map(Prepared::new).collect();
    }

    /// Run `prog` as a `kind` program on `ctx` with `maps`. `ctx` is updated in place (see
    /// [`Context`]).
    pub fn run(
        &mut self,
        prog: &Program,
        kind: ProgKind,
        ctx: &mut Context,
        maps: &mut MapSet,
    ) -> Result<RunOutcome, ExecError> {
        let stats = self.run_prepared(&Prepared::new(prog), kind, ctx, maps)?;
        Ok(RunOutcome {
            retval: stats.retval,
            packet: self.last_packet().to_vec(),
            meta: self.last_meta().to_vec(),
            redirect: stats.redirect,
            redirect_neigh: stats.redirect_neigh,
            redirect_peer: stats.redirect_peer,
            insns_executed: stats.insns_executed,
            tail_calls: stats.tail_calls,
            ctx_out: ctx.skb.clone(),
        })
    }

    /// [`Machine::run`] of a program decoded once: the packet as the program left it is in
    /// `ctx.packet` (its XDP metadata in [`Machine::last_meta`]). Once the machine's
    /// buffers and `ctx.packet` have grown to the largest packet, a run allocates nothing
    /// (errors aside).
    pub fn run_prepared(
        &mut self,
        prog: &Prepared,
        kind: ProgKind,
        ctx: &mut Context,
        maps: &mut MapSet,
    ) -> Result<RunStats, ExecError> {
        // The packet leaves the context for the run and comes back with what the program
        // made of it (nothing else in the context is read as a packet).
        let input = std::mem::take(&mut ctx.packet);
        let stats = self.run_packet(prog, kind, &input, ctx, maps);
        ctx.packet = input;
        let stats = stats?;
        ctx.packet.clear();
        ctx.packet.extend_from_slice(self.last_packet());
        Ok(stats)
    }

    /// [`Machine::run_prepared`] on `packet` instead of `ctx.packet` (which is neither read
    /// nor written): the packet as the program left it is [`Machine::last_packet`]. Once the
    /// machine's buffers have grown to the largest packet, a run allocates nothing (errors
    /// aside).
    pub fn run_packet(
        &mut self,
        prog: &Prepared,
        kind: ProgKind,
        packet: &[u8],
        ctx: &mut Context,
        maps: &mut MapSet,
    ) -> Result<RunStats, ExecError> {
        if !matches!(kind, ProgKind::Xdp | ProgKind::SchedCls | ProgKind::CgroupSockAddr(_)) {
            return Err(ExecError::UnsupportedKind { kind });
        }
        let len = packet.len();
        // An skb always holds an Ethernet header; an XDP buffer need not (a runt frame is
        // the program's to judge), although BPF_PROG_TEST_RUN refuses to build one.
        if len < ETH_HLEN && kind == ProgKind::SchedCls {
            return Err(ExecError::PacketTooShort { len });
        }
        let hard_end = (FRAME_SIZE - SKB_SHARED_INFO_SIZE).max(XDP_PACKET_HEADROOM + len);
        let Machine { step_limit, rng, programs, scratch } = self;
        let Scratch { buf, stack, key, value, meta, data, end } = scratch;
        (*meta, *data, *end) = (0, 0, 0);
        // A fresh zeroed frame each run, as a new test run builds.
        buf.clear();
        buf.resize(hard_end, 0);
        buf[XDP_PACKET_HEADROOM..XDP_PACKET_HEADROOM + len].copy_from_slice(packet);
        stack.resize(MAX_CALL_FRAMES * STACK_SIZE, 0);
        // Stacks start zeroed: frame 0 now, each further frame when it is entered.
        stack[..STACK_SIZE].fill(0);
        let pkt = PacketBuf {
            buf,
            meta: XDP_PACKET_HEADROOM,
            data: XDP_PACKET_HEADROOM,
            end: XDP_PACKET_HEADROOM + len,
        };
        let protocol = eth_protocol(packet);
        let mut vm = Vm {
            kind,
            prog,
            regs: [0; 11],
            frames: [Frame { ret: 0, saved: [0; 4] }; MAX_CALL_FRAMES],
            depth: 0,
            stack,
            key,
            value,
            pkt,
            ctx,
            maps,
            rng,
            programs: programs.as_slice(),
            redirect: None,
            redirect_neigh: false,
            redirect_peer: false,
            protocol,
            wire_len: len as u32,
            steps: 0,
            limit: *step_limit,
            tail_calls: 0,
            pc: 0,
        };
        vm.regs[1] = CTX_ADDR;
        vm.regs[10] = frame_top(0);
        let retval = vm.exec()?;
        let Vm { pkt, redirect, redirect_neigh, redirect_peer, steps, tail_calls, .. } = vm;
        (*meta, *data, *end) = (pkt.meta, pkt.data, pkt.end);
        Ok(RunStats { retval, redirect, redirect_neigh, redirect_peer, insns_executed: steps, tail_calls })
    }

    /// The packet (`data` to `data_end`) the last successful run left; empty after a
    /// failed run.
    pub fn last_packet(&self) -> &[u8] {
        self.scratch.buf.get(self.scratch.data..self.scratch.end).unwrap_or(&[])
    }

    /// The XDP metadata (`data_meta` to `data`) the last successful run left.
    pub fn last_meta(&self) -> &[u8] {
        self.scratch.buf.get(self.scratch.meta..self.scratch.data).unwrap_or(&[])
    }
}

/// One program run packet after packet, each run exactly what [`run`] does on a fresh
/// [`Context::new`] of the packet (a fresh [`Machine`] each time: the default step limit,
/// the random sequence from [`DEFAULT_SEED`], no tail-call table), with the program
/// decoded once and the machine's buffers and the context reused: once they have held the
/// largest packet, a run allocates nothing (errors aside).
#[derive(Debug, Clone)]
pub struct Runner {
    prog: Prepared,
    kind: ProgKind,
    machine: Machine,
    ctx: Context,
}

impl Runner {
    /// A runner of `prog` as a `kind` program.
    pub fn new(prog: &Program, kind: ProgKind) -> Runner {
        Runner { prog: Prepared::new(prog), kind, machine: Machine::new(), ctx: Context::new(Vec::new()) }
    }

    /// The programs `bpf_tail_call` can reach (see [`Machine::set_programs`]).
    pub fn with_programs(mut self, programs: Vec<Program>) -> Runner {
        self.machine.set_programs(programs);
        self
    }

    /// The kind the program runs as.
    pub fn kind(&self) -> ProgKind {
        self.kind
    }

    /// Run the program on `packet` with `maps`.
    pub fn run(&mut self, packet: &[u8], maps: &mut MapSet) -> Result<RunStats, ExecError> {
        // What `Context::new(packet)` holds besides the packet, which goes in directly.
        self.ctx = Context::new(Vec::new());
        self.machine.reseed(DEFAULT_SEED);
        self.prog.bind(maps);
        self.machine.run_packet(&self.prog, self.kind, packet, &mut self.ctx, maps)
    }

    /// The packet as the last run left it (empty after a failed run).
    pub fn packet(&self) -> &[u8] {
        self.machine.last_packet()
    }

    /// The context after the last run (the writable `__sk_buff` fields, the tunnel key);
    /// its `packet` is empty: see [`Runner::packet`].
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// Run `prog` once on a fresh [`Machine`].
pub fn run(
    prog: &Program,
    kind: ProgKind,
    ctx: &mut Context,
    maps: &mut MapSet,
) -> Result<RunOutcome, ExecError> {
    Machine::new().run(prog, kind, ctx, maps)
}

/// Run an XDP program on `packet` with a default [`Context`].
pub fn run_xdp(prog: &Program, packet: &[u8], maps: &mut MapSet) -> Result<RunOutcome, ExecError> {
    run(prog, ProgKind::Xdp, &mut Context::new(packet), maps)
}

/// Run a tc (`SchedCls`) program on `packet` with a default [`Context`].
pub fn run_tc(prog: &Program, packet: &[u8], maps: &mut MapSet) -> Result<RunOutcome, ExecError> {
    run(prog, ProgKind::SchedCls, &mut Context::new(packet), maps)
}

/// The packet buffer; offsets are from its first byte (`data_hard_start`).
#[derive(Debug)]
struct PacketBuf<'a> {
    buf: &'a mut Vec<u8>,
    meta: usize,
    data: usize,
    end: usize,
}

impl PacketBuf<'_> {
    fn len(&self) -> usize {
        self.end - self.data
    }

    /// `len` bytes at `off` from `data`, if inside `[data, data_end)`.
    fn bytes(&mut self, off: u64, len: u64) -> Option<&mut [u8]> {
        let end = off.checked_add(len)?;
        if end > self.len() as u64 {
            return None;
        }
        let start = self.data + off as usize;
        self.buf.get_mut(start..start + len as usize)
    }
}

/// A caller's state saved across a bpf-to-bpf call.
#[derive(Debug, Clone, Copy)]
struct Frame {
    ret: usize,
    saved: [u64; 4],
}

/// Where an address lies (see [`Vm::locate`]).
enum Region {
    /// Offset into [`Scratch::stack`].
    Stack(usize),
    /// Offset into the packet buffer.
    Packet(usize),
    Map,
}

/// What a helper call leaves to the main loop.
enum Flow {
    Next,
    /// Continue at the start of `programs[i]`.
    TailCall(usize),
}

struct Vm<'a> {
    kind: ProgKind,
    /// The program running (the last tail call's target).
    prog: &'a Prepared,
    regs: [u64; 11],
    /// The callers' saved state, `depth` of them.
    frames: [Frame; MAX_CALL_FRAMES],
    depth: usize,
    /// Every frame's stack (see [`Scratch::stack`]); frames `0..=depth` are live.
    stack: &'a mut Vec<u8>,
    /// Helper argument copies.
    key: &'a mut Vec<u8>,
    value: &'a mut Vec<u8>,
    pkt: PacketBuf<'a>,
    ctx: &'a mut Context,
    maps: &'a mut MapSet,
    rng: &'a mut u64,
    programs: &'a [Prepared],
    redirect: Option<(u32, u64)>,
    redirect_neigh: bool,
    redirect_peer: bool,
    /// `skb->protocol` as the context reads it (network order in the low 16 bits).
    protocol: u32,
    wire_len: u32,
    steps: u64,
    limit: u64,
    tail_calls: u32,
    pc: usize,
}

fn frame_top(frame: usize) -> u64 {
    STACK_BASE + frame as u64 * STACK_FRAME_SPAN + STACK_SIZE as u64
}

fn neg_errno(e: i32) -> u64 {
    (-i64::from(e)) as u64
}

fn size_bytes(size: Size) -> usize {
    usize::from(size.bytes())
}

fn le_value(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn sign_extend(v: u64, bytes: usize) -> u64 {
    let shift = 64 - 8 * bytes as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// `skb->protocol` as `eth_type_trans` sets it, read through `__sk_buff` (a `__be16`).
fn eth_protocol(packet: &[u8]) -> u32 {
    // Only tc programs read it, and their packets hold an Ethernet header; an XDP runt
    // frame gets 0.
    let Some(&[hi, lo]) = packet.get(12..14) else { return 0 };
    let proto = u16::from_be_bytes([hi, lo]);
    let host = if proto >= 0x0600 {
        proto
    } else if packet.get(14..16) == Some(&[0xff, 0xff]) {
        0x0001 // ETH_P_802_3
    } else {
        0x0004 // ETH_P_802_2
    };
    u32::from(host.swap_bytes())
}

fn alu64(op: AluOp, d: u64, s: u64) -> u64 {
    match op {
        AluOp::Add => d.wrapping_add(s),
        AluOp::Sub => d.wrapping_sub(s),
        AluOp::Mul => d.wrapping_mul(s),
        AluOp::Div => d.checked_div(s).unwrap_or(0),
        AluOp::SDiv if s == 0 => 0,
        AluOp::SDiv => (d as i64).wrapping_div(s as i64) as u64,
        AluOp::Mod => d.checked_rem(s).unwrap_or(d),
        AluOp::SMod if s == 0 => d,
        AluOp::SMod => (d as i64).wrapping_rem(s as i64) as u64,
        AluOp::Or => d | s,
        AluOp::And => d & s,
        AluOp::Xor => d ^ s,
        AluOp::Lsh => d << (s & 63),
        AluOp::Rsh => d >> (s & 63),
        AluOp::Arsh => ((d as i64) >> (s & 63)) as u64,
        AluOp::Mov => s,
    }
}

fn alu32(op: AluOp, d: u32, s: u32) -> u32 {
    match op {
        AluOp::Add => d.wrapping_add(s),
        AluOp::Sub => d.wrapping_sub(s),
        AluOp::Mul => d.wrapping_mul(s),
        AluOp::Div => d.checked_div(s).unwrap_or(0),
        AluOp::SDiv if s == 0 => 0,
        AluOp::SDiv => (d as i32).wrapping_div(s as i32) as u32,
        AluOp::Mod => d.checked_rem(s).unwrap_or(d),
        AluOp::SMod if s == 0 => d,
        AluOp::SMod => (d as i32).wrapping_rem(s as i32) as u32,
        AluOp::Or => d | s,
        AluOp::And => d & s,
        AluOp::Xor => d ^ s,
        AluOp::Lsh => d << (s & 31),
        AluOp::Rsh => d >> (s & 31),
        AluOp::Arsh => ((d as i32) >> (s & 31)) as u32,
        AluOp::Mov => s,
    }
}

fn condition(cond: JmpCond, wide: bool, a: u64, b: u64) -> bool {
    let (a, b, sa, sb) = if wide {
        (a, b, a as i64, b as i64)
    } else {
        (u64::from(a as u32), u64::from(b as u32), i64::from(a as i32), i64::from(b as i32))
    };
    match cond {
        JmpCond::Eq => a == b,
        JmpCond::Ne => a != b,
        JmpCond::Gt => a > b,
        JmpCond::Ge => a >= b,
        JmpCond::Lt => a < b,
        JmpCond::Le => a <= b,
        JmpCond::Set => a & b != 0,
        JmpCond::SGt => sa > sb,
        JmpCond::SGe => sa >= sb,
        JmpCond::SLt => sa < sb,
        JmpCond::SLe => sa <= sb,
    }
}

/// Internet checksum arithmetic, as `include/net/checksum.h` has it. 16-bit words are
/// native (little-endian) loads of network-order bytes, as in the kernel.
pub mod csum {
    /// `csum_add`: 32-bit one's complement addition.
    pub fn add(a: u32, b: u32) -> u32 {
        let (s, carry) = a.overflowing_add(b);
        s.wrapping_add(u32::from(carry))
    }

    /// `csum_sub`.
    pub fn sub(a: u32, b: u32) -> u32 {
        add(a, !b)
    }

    /// `csum_fold`: fold to 16 bits and complement.
    pub fn fold(c: u32) -> u16 {
        !from32to16(c)
    }

    /// `from32to16`: fold to 16 bits without complementing.
    pub fn from32to16(c: u32) -> u16 {
        let s = (c & 0xffff) + (c >> 16);
        let s = (s & 0xffff) + (s >> 16);
        s as u16
    }

    /// `csum_partial`: the one's complement sum of `buf` added to `seed`.
    pub fn partial(buf: &[u8], seed: u32) -> u32 {
        let mut sum = u64::from(seed);
        for w in buf.chunks(2) {
            sum += u64::from(match *w {
                [lo, hi] => u16::from_le_bytes([lo, hi]),
                [lo] => u16::from(lo),
                _ => 0,
            });
        }
        while sum >> 32 != 0 {
            sum = (sum & 0xffff_ffff) + (sum >> 32);
        }
        sum as u32
    }

    /// `csum16_add`.
    fn add16(c: u16, a: u16) -> u16 {
        let r = c.wrapping_add(a);
        r.wrapping_add(u16::from(r < a))
    }

    /// `csum_replace2`.
    pub fn replace2(sum: u16, from: u16, to: u16) -> u16 {
        !add16(add16(!sum, !from), to)
    }

    /// `csum_replace4`.
    pub fn replace4(sum: u16, from: u32, to: u32) -> u16 {
        fold(add(sub(!u32::from(sum), from), to))
    }

    /// `csum_replace_by_diff`.
    pub fn replace_by_diff(sum: u16, diff: u32) -> u16 {
        fold(add(diff, !u32::from(sum)))
    }

    /// `csum_block_add`: add a partial sum computed at byte offset `off`.
    pub fn block_add(c: u32, c2: u32, off: usize) -> u32 {
        add(c, if off & 1 == 1 { c2.rotate_right(8) } else { c2 })
    }

    /// `csum_block_sub`.
    pub fn block_sub(c: u32, c2: u32, off: usize) -> u32 {
        block_add(c, !c2, off)
    }
}

impl Vm<'_> {
    fn reg(&self, r: Reg) -> u64 {
        self.regs[usize::from(r.num())]
    }

    fn set(&mut self, insn: usize, r: Reg, v: u64) -> Result<(), ExecError> {
        if r == Reg::R10 {
            return Err(ExecError::BadInsn { insn, reason: "r10 is read-only".into() });
        }
        self.regs[usize::from(r.num())] = v;
        Ok(())
    }

    fn src(&self, s: Src) -> u64 {
        match s {
            Src::Reg(r) => self.reg(r),
            Src::Imm(i) => i64::from(i) as u64,
        }
    }

    /// The instruction index the jump or local call at `insn` lands on.
    fn target(&self, insn: usize) -> Result<usize, ExecError> {
        match self.prog.targets.get(insn) {
            Some(&Ok(to)) => Ok(to),
            Some(&Err(slot)) => Err(ExecError::BadJump { insn, slot }),
            None => Err(ExecError::FellOffEnd { insn }),
        }
    }

    fn exec(&mut self) -> Result<u64, ExecError> {
        loop {
            if self.steps >= self.limit {
                return Err(ExecError::StepLimit { limit: self.limit });
            }
            let pc = self.pc;
            let insns = self.prog.program.insns();
            let insn = insns.get(pc).ok_or(ExecError::FellOffEnd { insn: pc.saturating_sub(1) })?;
            self.steps += 1;
            let mut next = pc + 1;
            match insn {
                Insn::Alu { wide, op, dst, src } => {
                    let (d, s) = (self.reg(*dst), self.src(*src));
                    let v = if *wide { alu64(*op, d, s) } else { u64::from(alu32(*op, d as u32, s as u32)) };
                    self.set(pc, *dst, v)?;
                }
                Insn::Neg { wide, dst } => {
                    let d = self.reg(*dst);
                    let v = if *wide { d.wrapping_neg() } else { u64::from((d as u32).wrapping_neg()) };
                    self.set(pc, *dst, v)?;
                }
                Insn::MovSx { wide, bits, dst, src } => {
                    let s = self.reg(*src);
                    let v = match (*wide, *bits) {
                        (_, 8 | 16) | (true, 32) => sign_extend(s, usize::from(*bits / 8)),
                        _ => return Err(bad_insn(pc, format!("movsx of {bits} bits"))),
                    };
                    let v = if *wide { v } else { u64::from(v as u32) };
                    self.set(pc, *dst, v)?;
                }
                Insn::Endian { kind, bits, dst } => {
                    let d = self.reg(*dst);
                    let v = match (kind, bits) {
                        (Endian::ToLe, 16) => d & 0xffff,
                        (Endian::ToLe, 32) => d & 0xffff_ffff,
                        (Endian::ToLe, 64) => d,
                        (Endian::ToBe | Endian::Swap, 16) => u64::from((d as u16).swap_bytes()),
                        (Endian::ToBe | Endian::Swap, 32) => u64::from((d as u32).swap_bytes()),
                        (Endian::ToBe | Endian::Swap, 64) => d.swap_bytes(),
                        _ => return Err(bad_insn(pc, format!("byte swap of {bits} bits"))),
                    };
                    self.set(pc, *dst, v)?;
                }
                Insn::LdImm64 { dst, imm } => {
                    let v = self.imm64(pc, imm)?;
                    self.set(pc, *dst, v)?;
                }
                Insn::Load { size, signed, dst, base, off } => {
                    let addr = self.reg(*base).wrapping_add(*off as u64);
                    let n = size_bytes(*size);
                    let v = self.load(pc, addr, n)?;
                    self.set(pc, *dst, if *signed { sign_extend(v, n) } else { v })?;
                }
                Insn::LoadAcquire { size, dst, base, off } => {
                    let addr = self.reg(*base).wrapping_add(*off as u64);
                    let v = self.load(pc, addr, size_bytes(*size))?;
                    self.set(pc, *dst, v)?;
                }
                Insn::Store { size, base, off, src } => {
                    let addr = self.reg(*base).wrapping_add(*off as u64);
                    self.store(pc, addr, size_bytes(*size), self.src(*src))?;
                }
                Insn::StoreRelease { size, base, off, src } => {
                    let addr = self.reg(*base).wrapping_add(*off as u64);
                    self.store(pc, addr, size_bytes(*size), self.reg(*src))?;
                }
                Insn::Atomic { size, op, base, off, src } => {
                    let addr = self.reg(*base).wrapping_add(*off as u64);
                    self.atomic(pc, *size, *op, addr, *src)?;
                }
                Insn::LdAbs { size, imm } => {
                    if let Some(r0) = self.ld_abs(pc, *size, i64::from(*imm))? {
                        return Ok(r0);
                    }
                }
                Insn::LdInd { size, src, imm } => {
                    let off = (self.reg(*src) as i64).wrapping_add(i64::from(*imm));
                    if let Some(r0) = self.ld_abs(pc, *size, off)? {
                        return Ok(r0);
                    }
                }
                Insn::Jmp { wide, cond, dst, src, .. } => {
                    if condition(*cond, *wide, self.reg(*dst), self.src(*src)) {
                        next = self.target(pc)?;
                    }
                }
                Insn::Ja { .. } => next = self.target(pc)?,
                Insn::MayGoto { .. } => {}
                Insn::Call(CallTarget::Helper(id)) => match self.helper(pc, *id)? {
                    Flow::Next => {}
                    Flow::TailCall(i) => {
                        let programs = self.programs;
                        self.prog = &programs[i];
                        self.tail_calls += 1;
                        next = 0;
                    }
                },
                Insn::Call(CallTarget::Local(_)) => {
                    let to = self.target(pc)?;
                    if self.depth + 1 >= MAX_CALL_FRAMES {
                        return Err(ExecError::CallDepth { insn: pc, max: MAX_CALL_FRAMES });
                    }
                    let saved = [self.regs[6], self.regs[7], self.regs[8], self.regs[9]];
                    self.frames[self.depth] = Frame { ret: pc + 1, saved };
                    self.depth += 1;
                    // A new frame's stack starts zeroed.
                    let at = self.depth * STACK_SIZE;
                    self.stack[at..at + STACK_SIZE].fill(0);
                    self.regs[10] = frame_top(self.depth);
                    next = to;
                }
                Insn::Call(CallTarget::Kfunc { btf_id, .. }) => {
                    return Err(ExecError::Unsupported {
                        insn: pc,
                        what: format!("kfunc call (btf id {btf_id})"),
                    })
                }
                Insn::Exit => {
                    if self.depth == 0 {
                        return Ok(self.regs[0]);
                    }
                    self.depth -= 1;
                    let frame = self.frames[self.depth];
                    self.regs[6..10].copy_from_slice(&frame.saved);
                    self.regs[10] = frame_top(self.depth);
                    next = frame.ret;
                }
            }
            self.pc = next;
        }
    }

    fn imm64(&self, insn: usize, imm: &Imm64) -> Result<u64, ExecError> {
        if let Some(v) = self.prog.resolved(insn, self.maps) {
            return Ok(v);
        }
        imm64(self.maps, insn, imm)
    }

    // ---- memory ----

    /// Where `len` bytes at `addr` lie: in a live frame's stack, in the packet (unless
    /// `atomic`), or possibly in a map value (the map set checks).
    fn locate(&self, addr: u64, len: usize, atomic: bool) -> Option<Region> {
        let end = addr.checked_add(len as u64)?;
        let stack_end = STACK_BASE + MAX_CALL_FRAMES as u64 * STACK_FRAME_SPAN;
        if (STACK_BASE..stack_end).contains(&addr) {
            let rel = addr - STACK_BASE;
            let frame = (rel / STACK_FRAME_SPAN) as usize;
            let off = (rel % STACK_FRAME_SPAN) as usize;
            if frame > self.depth || off.checked_add(len)? > STACK_SIZE {
                return None;
            }
            return Some(Region::Stack(frame * STACK_SIZE + off));
        }
        let pkt_lo = PACKET_BASE + self.pkt.meta as u64;
        let pkt_hi = PACKET_BASE + self.pkt.end as u64;
        if (pkt_lo..pkt_hi).contains(&addr) {
            if atomic || end > pkt_hi {
                return None;
            }
            return Some(Region::Packet((addr - PACKET_BASE) as usize));
        }
        Some(Region::Map)
    }

    /// `len` bytes at `addr` in the stack, the packet (unless `atomic`) or a map value.
    fn mem(&mut self, addr: u64, len: usize, atomic: bool) -> Option<&mut [u8]> {
        match self.locate(addr, len, atomic)? {
            Region::Stack(at) => self.stack.get_mut(at..at + len),
            Region::Packet(at) => self.pkt.buf.get_mut(at..at + len),
            Region::Map => self.maps.memory(addr, len),
        }
    }

    /// [`Vm::mem`] for reading (never atomic).
    fn mem_read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        match self.locate(addr, len, false)? {
            Region::Stack(at) => self.stack.get(at..at + len),
            Region::Packet(at) => self.pkt.buf.get(at..at + len),
            Region::Map => self.maps.memory_read(addr, len),
        }
    }

    fn is_ctx(&self, addr: u64) -> bool {
        (CTX_ADDR..CTX_ADDR + self.kind.ctx_size() as u64).contains(&addr)
    }

    fn load(&mut self, insn: usize, addr: u64, size: usize) -> Result<u64, ExecError> {
        let bad = ExecError::BadAccess { insn, addr, size };
        if self.is_ctx(addr) {
            return self.ctx_load((addr - CTX_ADDR) as u32, size).ok_or(bad);
        }
        self.mem_read(addr, size).map(le_value).ok_or(bad)
    }

    fn store(&mut self, insn: usize, addr: u64, size: usize, value: u64) -> Result<(), ExecError> {
        let bad = ExecError::BadAccess { insn, addr, size };
        if self.is_ctx(addr) {
            return self.ctx_store((addr - CTX_ADDR) as u32, size, value).ok_or(bad);
        }
        let bytes = self.mem(addr, size, false).ok_or(bad)?;
        bytes.copy_from_slice(&value.to_le_bytes()[..size]);
        Ok(())
    }

    /// Helper memory argument: `len` bytes read into `into`, which held them before
    /// (`len` 0 reads nothing, at any address).
    fn read_mem(&self, insn: usize, addr: u64, len: u64, into: &mut Vec<u8>) -> Result<(), ExecError> {
        into.clear();
        if len == 0 {
            return Ok(());
        }
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.mem_read(addr, size).ok_or(ExecError::BadAccess { insn, addr, size })?;
        into.extend_from_slice(bytes);
        Ok(())
    }

    fn write_mem(&mut self, insn: usize, addr: u64, bytes: &[u8]) -> Result<(), ExecError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let size = bytes.len();
        let dst = self.mem(addr, size, false).ok_or(ExecError::BadAccess { insn, addr, size })?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    fn atomic(
        &mut self,
        insn: usize,
        size: Size,
        op: AtomicOp,
        addr: u64,
        src: Reg,
    ) -> Result<(), ExecError> {
        let n = size_bytes(size);
        if !matches!(size, Size::W | Size::DW) {
            return Err(bad_insn(insn, format!("atomic operation of {n} bytes")));
        }
        let mask = if n == 8 { u64::MAX } else { 0xffff_ffff };
        let s = self.reg(src) & mask;
        let r0 = self.regs[0] & mask;
        let cell = self.mem(addr, n, true).ok_or(ExecError::BadAccess { insn, addr, size: n })?;
        let old = le_value(cell);
        let (new, fetched) = match op {
            AtomicOp::Add { fetch } => (old.wrapping_add(s), fetch),
            AtomicOp::Or { fetch } => (old | s, fetch),
            AtomicOp::And { fetch } => (old & s, fetch),
            AtomicOp::Xor { fetch } => (old ^ s, fetch),
            AtomicOp::Xchg => (s, true),
            AtomicOp::CmpXchg => (if old == r0 { s } else { old }, false),
        };
        cell.copy_from_slice(&(new & mask).to_le_bytes()[..n]);
        if op == AtomicOp::CmpXchg {
            self.regs[0] = old;
        } else if fetched {
            self.set(insn, src, old)?;
        }
        Ok(())
    }

    /// `ld_abs`/`ld_ind`: `Some(0)` ends the program when the bytes are not in the packet.
    fn ld_abs(&mut self, insn: usize, size: Size, off: i64) -> Result<Option<u64>, ExecError> {
        if self.kind != ProgKind::SchedCls {
            return Err(bad_insn(insn, format!("ld_abs/ld_ind in a {} program", self.kind)));
        }
        let n = size_bytes(size);
        if n == 8 {
            return Err(bad_insn(insn, "ld_abs/ld_ind of 8 bytes".into()));
        }
        // The kernel passes the offset as an `int`; negative (ancillary) offsets are not
        // emulated and fail like out-of-range ones.
        let off = i64::from(off as i32);
        let Some(bytes) = u64::try_from(off).ok().and_then(|o| self.pkt.bytes(o, n as u64)) else {
            return Ok(Some(0));
        };
        self.regs[0] = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        Ok(None)
    }

    // ---- context ----

    fn ctx_table(&self) -> &'static [CtxField] {
        match self.kind {
            ProgKind::Xdp => XDP_MD,
            _ => SK_BUFF,
        }
    }

    /// The `cb[]` bytes' offsets in `__sk_buff`.
    fn cb_range() -> Option<(u32, u32)> {
        let first = SK_BUFF.iter().find(|f| f.name == "cb0")?;
        let last = SK_BUFF.iter().find(|f| f.name == "cb4")?;
        Some((first.off, last.off + u32::from(last.size)))
    }

    fn field_value(&self, f: &CtxField) -> u64 {
        let pkt = |off: usize| PACKET_BASE + off as u64;
        match f.value {
            CtxValue::PacketStart => return pkt(self.pkt.data),
            CtxValue::PacketEnd => return pkt(self.pkt.end),
            CtxValue::PacketMeta => return pkt(self.pkt.meta),
            CtxValue::Scalar => {}
        }
        let c = &*self.ctx;
        u64::from(match (self.kind, f.name) {
            (ProgKind::Xdp, "ingress_ifindex") => c.ingress_ifindex,
            (ProgKind::Xdp, "rx_queue_index") => c.rx_queue_index,
            (ProgKind::Xdp, "egress_ifindex") => c.egress_ifindex,
            (_, "len") => self.pkt.len() as u32,
            (_, "pkt_type") => c.skb_info.pkt_type,
            (_, "mark") => c.skb.mark,
            (_, "queue_mapping") => c.skb.queue_mapping,
            (_, "protocol") => self.protocol,
            (_, "vlan_present") => c.skb_info.vlan_present,
            (_, "vlan_tci") => c.skb_info.vlan_tci,
            (_, "vlan_proto") => c.skb_info.vlan_proto,
            (_, "priority") => c.skb.priority,
            (_, "ingress_ifindex") => c.skb_ingress_ifindex,
            (_, "ifindex") => c.ifindex,
            (_, "tc_index") => c.skb.tc_index,
            (_, "hash") => c.skb_info.hash,
            (_, "tc_classid") => c.skb.tc_classid,
            (_, "napi_id") => c.skb_info.napi_id,
            (_, "wire_len") => self.wire_len,
            (_, "tstamp") => return c.skb.tstamp,
            _ => 0,
        })
    }

    fn ctx_load(&self, off: u32, size: usize) -> Option<u64> {
        if let ProgKind::CgroupSockAddr(hook) = self.kind {
            return self.ctx.sock_addr.load(hook, off, size);
        }
        let size32 = u32::try_from(size).ok()?;
        if off & (size32 - 1) != 0 {
            return None;
        }
        if self.kind == ProgKind::SchedCls {
            if let Some((lo, hi)) = Self::cb_range().filter(|(lo, hi)| (*lo..*hi).contains(&off)) {
                if off + size32 > hi {
                    return None;
                }
                let bytes = cb_bytes(&self.ctx.skb.cb);
                let at = (off - lo) as usize;
                return Some(le_value(&bytes[at..at + size]));
            }
        }
        let f = self.ctx_table().iter().find(|f| f.off <= off && off < f.off + u32::from(f.size))?;
        let exact = off == f.off && size32 == u32::from(f.size);
        let narrow_ok =
            self.kind == ProgKind::SchedCls && f.value == CtxValue::Scalar && size32 < u32::from(f.size);
        if !exact && !narrow_ok {
            return None;
        }
        let v = self.field_value(f) >> (8 * (off - f.off));
        Some(if size == 8 { v } else { v & ((1u64 << (8 * size)) - 1) })
    }

    fn ctx_store(&mut self, off: u32, size: usize, value: u64) -> Option<()> {
        if let ProgKind::CgroupSockAddr(hook) = self.kind {
            return self.ctx.sock_addr.store(hook, off, size, value);
        }
        if self.kind != ProgKind::SchedCls {
            return None;
        }
        let size32 = u32::try_from(size).ok()?;
        if off & (size32 - 1) != 0 {
            return None;
        }
        if let Some((lo, hi)) = Self::cb_range().filter(|(lo, hi)| (*lo..*hi).contains(&off)) {
            if off + size32 > hi {
                return None;
            }
            let mut bytes = cb_bytes(&self.ctx.skb.cb);
            let at = (off - lo) as usize;
            bytes[at..at + size].copy_from_slice(&value.to_le_bytes()[..size]);
            for (w, b) in self.ctx.skb.cb.iter_mut().zip(bytes.chunks(4)) {
                *w = le_value(b) as u32;
            }
            return Some(());
        }
        let f = SK_BUFF.iter().find(|f| f.off == off && u32::from(f.size) == size32 && f.writable)?;
        let skb = &mut self.ctx.skb;
        let v32 = value as u32;
        match f.name {
            "mark" => skb.mark = v32,
            "queue_mapping" => skb.queue_mapping = v32,
            "priority" => skb.priority = v32,
            "tc_index" => skb.tc_index = v32,
            "tc_classid" => skb.tc_classid = v32,
            "tstamp" => skb.tstamp = value,
            _ => return None,
        }
        Some(())
    }

    // ---- helpers ----

    fn map_arg(&self, insn: usize, helper: i32, arg: u64, allowed: &[MapKind]) -> Result<usize, ExecError> {
        let id = self.maps.id_of_handle(arg).ok_or(ExecError::NotAMap { insn, arg })?;
        let map = self.maps.by_id(id).ok_or(ExecError::NotAMap { insn, arg })?;
        if !allowed.contains(&map.kind()) {
            return Err(ExecError::MapNotAllowed {
                insn,
                helper,
                map: map.name().to_string(),
                kind: map.kind(),
            });
        }
        Ok(id)
    }

    fn next_random(&mut self) -> u32 {
        // splitmix64
        *self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 32) as u32
    }

    fn helper(&mut self, insn: usize, id: i32) -> Result<Flow, ExecError> {
        // The argument buffers leave `self` for the call so that helpers may read program
        // memory into them while holding `self`; they come back for the next call.
        let mut key = std::mem::take(self.key);
        let mut value = std::mem::take(self.value);
        let flow = self.helper_with(insn, id, &mut key, &mut value);
        *self.key = key;
        *self.value = value;
        flow
    }

    /// A helper call; `key` and `value` are room for copies of its memory arguments.
    fn helper_with(
        &mut self,
        insn: usize,
        id: i32,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<Flow, ExecError> {
        let [_, r1, r2, r3, r4, r5, ..] = self.regs;
        let xdp = self.kind == ProgKind::Xdp;
        let tc = self.kind == ProgKind::SchedCls;
        let unavailable = ExecError::HelperUnavailable { insn, helper: id, kind: self.kind };
        let r0 = match id {
            hid::MAP_LOOKUP_ELEM => {
                let m = self.map_arg(insn, id, r1, DATA_MAPS)?;
                self.read_mem(insn, r2, self.key_size(m), key)?;
                self.maps.prog_lookup(m, key).unwrap_or(0)
            }
            hid::MAP_UPDATE_ELEM => {
                let m = self.map_arg(insn, id, r1, DATA_MAPS)?;
                self.read_mem(insn, r2, self.key_size(m), key)?;
                self.read_mem(insn, r3, self.value_size(m), value)?;
                self.map_result(m, |map| map.update(key, value, r4))
            }
            hid::MAP_DELETE_ELEM => {
                let m = self.map_arg(insn, id, r1, DATA_MAPS)?;
                self.read_mem(insn, r2, self.key_size(m), key)?;
                self.map_result(m, |map| map.delete(key))
            }
            hid::KTIME_GET_NS | hid::KTIME_GET_BOOT_NS | hid::KTIME_GET_COARSE_NS => self.ctx.now_ns,
            hid::GET_PRANDOM_U32 => u64::from(self.next_random()),
            // No sockets in the simulator: every lookup finds none (NULL).
            hid::SK_LOOKUP_TCP | hid::SKC_LOOKUP_TCP if tc => 0,
            hid::GET_SMP_PROCESSOR_ID => self.maps.cpu() as u64,
            hid::GET_SOCKET_COOKIE if matches!(self.kind, ProgKind::CgroupSockAddr(_)) => {
                if r1 != CTX_ADDR {
                    return Err(bad_insn(insn, "bpf_get_socket_cookie takes the context".into()));
                }
                self.ctx.sock_addr.cookie
            }
            hid::TAIL_CALL => {
                let m = self.map_arg(insn, id, r2, &[MapKind::ProgArray])?;
                if self.depth != 0 {
                    return Err(ExecError::Unsupported { insn, what: "tail call from a subprogram".into() });
                }
                if self.tail_calls >= MAX_TAIL_CALL_CNT {
                    return Ok(Flow::Next);
                }
                let key = (r3 as u32).to_le_bytes();
                let Some(target) = self.maps.by_id(m).and_then(|map| map.lookup(&key)) else {
                    return Ok(Flow::Next);
                };
                let index = le_value(target) as u32;
                let count = self.programs.len();
                if index as usize >= count {
                    return Err(ExecError::NoSuchProgram { insn, index, count });
                }
                return Ok(Flow::TailCall(index as usize));
            }
            hid::REDIRECT if xdp => {
                if r2 != 0 {
                    XDP_ABORTED
                } else {
                    self.redirect = Some((r1 as u32, 0));
                    XDP_REDIRECT
                }
            }
            hid::REDIRECT if tc => {
                if r2 & !BPF_F_INGRESS != 0 {
                    TC_ACT_SHOT
                } else {
                    self.redirect = Some((r1 as u32, r2));
                    self.redirect_peer = false;
                    TC_ACT_REDIRECT
                }
            }
            hid::REDIRECT_MAP if xdp => {
                let m = self.map_arg(insn, id, r1, &[MapKind::Array, MapKind::Hash])?;
                if r3 & !(BPF_F_ACTION_MASK | BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS) != 0 {
                    XDP_ABORTED
                } else {
                    let key = (r2 as u32).to_le_bytes();
                    let ifindex = self
                        .maps
                        .by_id(m)
                        .and_then(|map| map.lookup(&key))
                        .and_then(|v| v.get(..4))
                        .map(|v| le_value(v) as u32);
                    match ifindex {
                        Some(ifindex) => {
                            self.redirect = Some((ifindex, r3));
                            XDP_REDIRECT
                        }
                        None => r3 & BPF_F_ACTION_MASK,
                    }
                }
            }
            hid::XDP_ADJUST_HEAD if xdp => self.xdp_adjust_head(r2 as i32),
            hid::XDP_ADJUST_META if xdp => self.xdp_adjust_meta(r2 as i32),
            hid::XDP_ADJUST_TAIL if xdp => self.xdp_adjust_tail(r2 as i32),
            hid::XDP_LOAD_BYTES if xdp => match self.pkt.bytes(u64::from(r2 as u32), u64::from(r4 as u32)) {
                Some(b) => {
                    value.clear();
                    value.extend_from_slice(b);
                    self.write_mem(insn, r3, value)?;
                    0
                }
                None => neg_errno(errno::EINVAL),
            },
            hid::XDP_STORE_BYTES if xdp => {
                self.read_mem(insn, r3, u64::from(r4 as u32), value)?;
                match self.pkt.bytes(u64::from(r2 as u32), value.len() as u64) {
                    Some(b) => {
                        b.copy_from_slice(value);
                        0
                    }
                    None => neg_errno(errno::EINVAL),
                }
            }
            hid::SKB_LOAD_BYTES if tc => {
                let len = r4 as u32;
                if len != 0 && self.mem(r3, len as usize, false).is_none() {
                    return Err(ExecError::BadAccess { insn, addr: r3, size: len as usize });
                }
                let off = r2 as u32;
                let got =
                    if off > i32::MAX as u32 { None } else { self.pkt.bytes(u64::from(off), u64::from(len)) };
                value.clear();
                let ret = match got {
                    Some(b) => {
                        value.extend_from_slice(b);
                        0
                    }
                    None => {
                        value.resize(len as usize, 0);
                        neg_errno(errno::EFAULT)
                    }
                };
                self.write_mem(insn, r3, value)?;
                ret
            }
            hid::SKB_STORE_BYTES if tc => self.skb_store_bytes(insn, r2 as u32, r3, r4 as u32, r5, value)?,
            hid::L3_CSUM_REPLACE if tc => self.l3_csum_replace(r2 as u32, r3, r4, r5),
            hid::L4_CSUM_REPLACE if tc => self.l4_csum_replace(r2 as u32, r3, r4, r5),
            hid::CSUM_UPDATE if tc => match self.ctx.ip_summed {
                IpSummed::Complete(c) => {
                    let c = csum::add(c, r2 as u32);
                    self.ctx.ip_summed = IpSummed::Complete(c);
                    u64::from(c)
                }
                _ => neg_errno(errno::ENOTSUPP),
            },
            hid::CSUM_DIFF => {
                self.read_mem(insn, r1, u64::from(r2 as u32), key)?;
                self.read_mem(insn, r3, u64::from(r4 as u32), value)?;
                let (from, to) = (&key[..], &value[..]);
                let seed = r5 as u32;
                let sum = match (from.is_empty(), to.is_empty()) {
                    (false, false) => csum::sub(csum::partial(to, seed), csum::partial(from, 0)),
                    (true, false) => csum::partial(to, seed),
                    (false, true) => !csum::partial(from, !seed),
                    (true, true) => seed,
                };
                u64::from(csum::from32to16(sum))
            }
            hid::FIB_LOOKUP if xdp || tc => {
                if r3 < FIB_LOOKUP_SIZE {
                    neg_errno(errno::EINVAL)
                } else {
                    self.read_mem(insn, r2, FIB_LOOKUP_SIZE, value)?;
                    let params = value;
                    match self.ctx.fib {
                        None => BPF_FIB_LKUP_RET_NOT_FWDED,
                        Some(answer) => {
                            if answer.ret == 0 || answer.ret == BPF_FIB_LKUP_RET_NO_NEIGH as u32 {
                                let at = offset_of!(BpfFibLookup, ifindex);
                                params[at..at + 4].copy_from_slice(&answer.ifindex.to_le_bytes());
                            }
                            if answer.ret == 0 {
                                let (smac, dmac) =
                                    (offset_of!(BpfFibLookup, smac), offset_of!(BpfFibLookup, dmac));
                                params[smac..smac + 6].copy_from_slice(&answer.smac);
                                params[dmac..dmac + 6].copy_from_slice(&answer.dmac);
                            }
                            self.write_mem(insn, r2, params)?;
                            u64::from(answer.ret)
                        }
                    }
                }
            }
            hid::SKB_SET_TUNNEL_KEY if tc => {
                let size = r3 as u32;
                if !TUNNEL_KEY_SIZES.contains(&size) || r4 & !TUNNEL_KEY_FLAGS != 0 {
                    neg_errno(errno::EINVAL)
                } else {
                    self.read_mem(insn, r2, u64::from(size), key)?;
                    let word =
                        |at: usize| u32::from_le_bytes([key[at], key[at + 1], key[at + 2], key[at + 3]]);
                    self.ctx.tunnel_key = Some(TunnelKey {
                        tunnel_id: word(offset_of!(BpfTunnelKey, tunnel_id)),
                        remote_ipv4: word(offset_of!(BpfTunnelKey, remote_ipv6)),
                        ttl: key[offset_of!(BpfTunnelKey, tunnel_ttl)],
                        flags: r4,
                    });
                    0
                }
            }
            hid::SKB_GET_TUNNEL_KEY if tc => {
                // The kernel's `bpf_skb_get_tunnel_key`: no metadata, unknown flags or a size
                // that is not a known prefix is -EINVAL; an IPv6 request for the IPv4 key
                // (the only kind modelled) is -EPROTO; the buffer is zeroed on every error.
                let size = r3 as u32;
                let mut out = vec![0u8; size as usize];
                let ret = match self.ctx.tunnel_key {
                    _ if !TUNNEL_KEY_SIZES.contains(&size) || r4 & !TUNNEL_GET_FLAGS != 0 => {
                        neg_errno(errno::EINVAL)
                    }
                    None => neg_errno(errno::EINVAL),
                    Some(_) if r4 & BPF_F_TUNINFO_IPV6 != 0 => neg_errno(EPROTO),
                    Some(k) => {
                        let mut put = |at: usize, bytes: &[u8]| {
                            if at + bytes.len() <= out.len() {
                                out[at..at + bytes.len()].copy_from_slice(bytes);
                            }
                        };
                        put(offset_of!(BpfTunnelKey, tunnel_id), &k.tunnel_id.to_le_bytes());
                        put(offset_of!(BpfTunnelKey, remote_ipv6), &k.remote_ipv4.to_le_bytes());
                        put(offset_of!(BpfTunnelKey, tunnel_ttl), &[k.ttl]);
                        0
                    }
                };
                self.write_mem(insn, r2, &out)?;
                ret
            }
            hid::REDIRECT_NEIGH if tc => {
                if r4 != 0 || (r2 == 0) != (r3 == 0) {
                    TC_ACT_SHOT
                } else {
                    if r3 != 0 {
                        self.read_mem(insn, r2, r3, value)?;
                    }
                    self.redirect = Some((r1 as u32, 0));
                    self.redirect_neigh = true;
                    self.redirect_peer = false;
                    TC_ACT_REDIRECT
                }
            }
            hid::REDIRECT_PEER if tc => {
                // The kernel's `bpf_redirect_peer`: no flags are defined.
                if r2 != 0 {
                    TC_ACT_SHOT
                } else {
                    self.redirect = Some((r1 as u32, 0));
                    self.redirect_neigh = false;
                    self.redirect_peer = true;
                    TC_ACT_REDIRECT
                }
            }
            hid::RINGBUF_OUTPUT => {
                let m = self.map_arg(insn, id, r1, &[MapKind::RingBuf])?;
                self.read_mem(insn, r2, r3, value)?;
                if r4 & !(BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP) != 0 {
                    neg_errno(errno::EINVAL)
                } else {
                    self.map_result(m, |map| map.ringbuf_output(value))
                }
            }
            hid::REDIRECT
            | hid::REDIRECT_MAP
            | hid::XDP_ADJUST_HEAD
            | hid::XDP_ADJUST_META
            | hid::XDP_ADJUST_TAIL
            | hid::XDP_LOAD_BYTES
            | hid::XDP_STORE_BYTES
            | hid::SKB_LOAD_BYTES
            | hid::SKB_STORE_BYTES
            | hid::L3_CSUM_REPLACE
            | hid::L4_CSUM_REPLACE
            | hid::CSUM_UPDATE
            | hid::FIB_LOOKUP
            | hid::SKB_SET_TUNNEL_KEY
            | hid::SKB_GET_TUNNEL_KEY
            | hid::REDIRECT_NEIGH
            | hid::REDIRECT_PEER
            | hid::GET_SOCKET_COOKIE
            | hid::SK_LOOKUP_TCP
            | hid::SKC_LOOKUP_TCP
            | hid::SK_ASSIGN
            | hid::SK_RELEASE => return Err(unavailable),
            _ => return Err(ExecError::UnknownHelper { insn, helper: id }),
        };
        self.regs[0] = r0;
        Ok(Flow::Next)
    }

    fn key_size(&self, m: usize) -> u64 {
        self.maps.by_id(m).map_or(0, |map| u64::from(map.spec().key_size))
    }

    fn value_size(&self, m: usize) -> u64 {
        self.maps.by_id(m).map_or(0, |map| u64::from(map.spec().value_size))
    }

    /// 0 or the negative errno of a map operation.
    fn map_result(
        &mut self,
        m: usize,
        op: impl FnOnce(&mut crate::maps::Map) -> Result<(), crate::maps::MapError>,
    ) -> u64 {
        match self.maps.by_id_mut(m).map(op) {
            Some(Ok(())) => 0,
            Some(Err(e)) => neg_errno(e.errno()),
            None => neg_errno(errno::EINVAL),
        }
    }

    fn xdp_adjust_head(&mut self, delta: i32) -> u64 {
        let p = &mut self.pkt;
        let metalen = p.data - p.meta;
        let data_start = (XDP_FRAME_SIZE + metalen) as i64;
        let data = p.data as i64 + i64::from(delta);
        if data < data_start || data > (p.end - ETH_HLEN) as i64 {
            return neg_errno(errno::EINVAL);
        }
        let meta = (p.meta as i64 + i64::from(delta)) as usize;
        if metalen > 0 {
            p.buf.copy_within(p.meta..p.data, meta);
        }
        p.meta = meta;
        p.data = data as usize;
        0
    }

    fn xdp_adjust_meta(&mut self, delta: i32) -> u64 {
        let p = &mut self.pkt;
        let meta = p.meta as i64 + i64::from(delta);
        if meta < XDP_FRAME_SIZE as i64 || meta > p.data as i64 {
            return neg_errno(errno::EINVAL);
        }
        let metalen = p.data - meta as usize;
        if metalen > 32 || metalen & 3 != 0 {
            return neg_errno(errno::EACCES);
        }
        p.meta = meta as usize;
        0
    }

    fn xdp_adjust_tail(&mut self, delta: i32) -> u64 {
        let p = &mut self.pkt;
        let end = p.end as i64 + i64::from(delta);
        if end > p.buf.len() as i64 || end < (p.data + ETH_HLEN) as i64 {
            return neg_errno(errno::EINVAL);
        }
        let end = end as usize;
        if end > p.end {
            p.buf[p.end..end].fill(0);
        }
        p.end = end;
        0
    }

    fn skb_store_bytes(
        &mut self,
        insn: usize,
        off: u32,
        from: u64,
        len: u32,
        flags: u64,
        bytes: &mut Vec<u8>,
    ) -> Result<u64, ExecError> {
        self.read_mem(insn, from, u64::from(len), bytes)?;
        if flags & !(BPF_F_RECOMPUTE_CSUM | BPF_F_INVALIDATE_HASH) != 0 {
            return Ok(neg_errno(errno::EINVAL));
        }
        if off > i32::MAX as u32 {
            return Ok(neg_errno(errno::EFAULT));
        }
        let summed = self.ctx.ip_summed;
        let Some(dst) = self.pkt.bytes(u64::from(off), u64::from(len)) else {
            return Ok(neg_errno(errno::EFAULT));
        };
        let recompute = flags & BPF_F_RECOMPUTE_CSUM != 0;
        let mut summed_out = summed;
        if let (true, IpSummed::Complete(c)) = (recompute, summed) {
            let c = csum::block_sub(c, csum::partial(dst, 0), off as usize);
            summed_out = IpSummed::Complete(csum::block_add(c, csum::partial(bytes, 0), off as usize));
        }
        dst.copy_from_slice(bytes);
        self.ctx.ip_summed = summed_out;
        if flags & BPF_F_INVALIDATE_HASH != 0 {
            self.ctx.skb_info.hash = 0;
        }
        Ok(0)
    }

    /// The checksum field at `off` from `data`, as `l3/l4_csum_replace` check it.
    fn csum_field(&mut self, off: u32) -> Result<usize, u64> {
        if off > 0xffff || off & 1 != 0 || (off + 2) as usize > self.pkt.len() {
            return Err(neg_errno(errno::EFAULT));
        }
        Ok(self.pkt.data + off as usize)
    }

    fn read16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.pkt.buf[at], self.pkt.buf[at + 1]])
    }

    fn write16(&mut self, at: usize, v: u16) {
        self.pkt.buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn l3_csum_replace(&mut self, off: u32, from: u64, to: u64, flags: u64) -> u64 {
        if flags & !BPF_F_HDR_FIELD_MASK != 0 {
            return neg_errno(errno::EINVAL);
        }
        let at = match self.csum_field(off) {
            Ok(at) => at,
            Err(e) => return e,
        };
        let sum = self.read16(at);
        let new = match flags & BPF_F_HDR_FIELD_MASK {
            0 if from != 0 => return neg_errno(errno::EINVAL),
            0 => csum::replace_by_diff(sum, to as u32),
            2 => csum::replace2(sum, from as u16, to as u16),
            4 => csum::replace4(sum, from as u32, to as u32),
            _ => return neg_errno(errno::EINVAL),
        };
        self.write16(at, new);
        0
    }

    fn l4_csum_replace(&mut self, off: u32, from: u64, to: u64, flags: u64) -> u64 {
        let allowed =
            BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | BPF_F_PSEUDO_HDR | BPF_F_HDR_FIELD_MASK | BPF_F_IPV6;
        if flags & !allowed != 0 {
            return neg_errno(errno::EINVAL);
        }
        let at = match self.csum_field(off) {
            Ok(at) => at,
            Err(e) => return e,
        };
        let pseudo = flags & BPF_F_PSEUDO_HDR != 0;
        let mmzero = flags & BPF_F_MARK_MANGLED_0 != 0;
        let mforce = flags & BPF_F_MARK_ENFORCE != 0;
        let ipv6 = flags & BPF_F_IPV6 != 0;
        let sum = self.read16(at);
        if mmzero && !mforce && sum == 0 {
            return 0;
        }
        let summed = self.ctx.ip_summed;
        let (new, summed) = match flags & BPF_F_HDR_FIELD_MASK {
            0 if from != 0 => return neg_errno(errno::EINVAL),
            0 => {
                let diff = to as u32;
                match summed {
                    IpSummed::Partial if pseudo => (!csum::fold(csum::add(diff, u32::from(sum))), summed),
                    IpSummed::Partial => (sum, summed),
                    IpSummed::Complete(c) if pseudo && !ipv6 => {
                        (csum::replace_by_diff(sum, diff), IpSummed::Complete(!csum::sub(diff, c)))
                    }
                    _ => (csum::replace_by_diff(sum, diff), summed),
                }
            }
            size @ (2 | 4) => {
                let (from, to) = if size == 2 {
                    (u32::from(from as u16), u32::from(to as u16))
                } else {
                    (from as u32, to as u32)
                };
                match summed {
                    IpSummed::Partial if pseudo => {
                        (!csum::fold(csum::add(csum::sub(u32::from(sum), from), to)), summed)
                    }
                    IpSummed::Partial => (sum, summed),
                    IpSummed::Complete(c) if pseudo => (
                        csum::replace4(sum, from, to),
                        IpSummed::Complete(!csum::add(csum::sub(!c, from), to)),
                    ),
                    _ => (csum::replace4(sum, from, to), summed),
                }
            }
            _ => return neg_errno(errno::EINVAL),
        };
        self.ctx.ip_summed = summed;
        self.write16(at, if mmzero && new == 0 { 0xffff } else { new });
        0
    }
}

/// `__sk_buff.cb[]` as the bytes a program sees.
fn cb_bytes(cb: &[u32; 5]) -> [u8; 20] {
    let mut bytes = [0u8; 20];
    for (b, w) in bytes.chunks_exact_mut(4).zip(cb) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    bytes
}

/// The value `LD_IMM64` of `imm` loads with `maps`.
fn imm64(maps: &MapSet, insn: usize, imm: &Imm64) -> Result<u64, ExecError> {
    match imm {
        Imm64::Const(v) => Ok(*v),
        Imm64::MapRef(name) => {
            maps.handle_addr(name).ok_or_else(|| ExecError::UnknownMap { insn, name: name.clone() })
        }
        Imm64::MapValueRef { map, off } => {
            if maps.id_of(map).is_none() {
                return Err(ExecError::UnknownMap { insn, name: map.clone() });
            }
            maps.direct_value_addr(map, *off).map_err(|reason| ExecError::BadInsn { insn, reason })
        }
        other => Err(ExecError::Unsupported { insn, what: format!("LD_IMM64 of {other:?}") }),
    }
}

fn bad_insn(insn: usize, reason: String) -> ExecError {
    ExecError::BadInsn { insn, reason }
}
