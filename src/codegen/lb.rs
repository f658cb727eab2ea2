//! The tc service load balancer: a standalone `SchedCls` program `lb` for any device's tc
//! ingress, built around [`emit_service_lb`], an emitter the endpoint programs can call
//! from their own parse.
//!
//! Per packet (maps of [`crate::maps::lb`]):
//! 1. Parse (standalone program only): Ethernet with up to two VLAN tags, IPv4 with options
//!    (a later fragment passes untouched: it has no ports; a first fragment is balanced, so a
//!    fragmented datagram's tail is not translated: a documented limit), IPv6 without
//!    extension headers (a packet whose next header is not TCP, UDP or SCTP passes
//!    untouched: a documented limit), then TCP (20 bytes), UDP (8) or SCTP (12). Anything
//!    else passes untouched; truncated or malformed headers pass too (the load balancer is
//!    no firewall), each counted.
//! 2. Forward path: the frontend filter, bit [`hint_bit`]`(daddr, dport, proto)` of
//!    `lb_hint[FRONTEND]` (an array lookup with a constant key, which the kernel inlines:
//!    no helper call). Set (a frontend, or a collision), with conntrack: `lb_ct` with the
//!    packet's tuple and `DIR = FORWARD`; a hit is a tracked connection and holds its
//!    backend's address and port, so a tracked packet costs one hash lookup, however full
//!    the backend filter is. Maglev rebuilds and backends turning terminating do not move
//!    it; the entries of removed frontends and backends are deleted by user space
//!    ([`crate::maps::lb::CtPurge`]), after which the connection is a new one (chosen anew,
//!    or passed untouched if its frontend is gone). (Until 2026-12 the reply lookup came
//!    first, then `lb_svc`, then the forward entry, then `lb_be` for its backend: up to
//!    four hash lookups for a tracked packet where the clang anchor makes two.)
//! 3. Reply path: the backend filter, bit `hint_bit(saddr, sport, proto)` of
//!    `lb_hint[BACKEND]` (after a forward miss, or when the frontend bit is clear); set:
//!    `lb_ct` with `DIR = REPLY`. A hit is a backend's reply: the source becomes the
//!    frontend the entry holds (reverse NAT). A packet whose two bits are clear passes
//!    untouched (`pass_no_service`) without any hash lookup.
//! 4. Frontend bit set and no tracked entry either way: `lb_svc` (VIP, dport, proto); a
//!    miss (a filter collision) passes untouched.
//!    Otherwise, `slots == 0`: no usable backend: a TCP packet becomes, in place, the reset
//!    a closed port answers with (see `emit_reset`) and is redirected back out of the
//!    device it came in on (`bpf_redirect(skb->ifindex, 0)`: egress; `BPF_F_INGRESS` would
//!    deliver it to this host instead), counted `no_backend_reset`; a TCP reset, UDP and
//!    SCTP are dropped, counted `no_backend`.
//!
//!    So a packet that is neither a backend's nor to a frontend (most traffic) makes no
//!    hash-map call here: two inlined array lookups and a few ALU instructions each. The
//!    filters' bits are set by user space before their entries appear and cleared after
//!    they are gone ([`crate::maps::lb::service_writes`]), so a clear bit is never wrong.
//! 5. `sessionAffinity: ClientIP`: `lb_aff[{svc_id, client}]` names a backend, used when
//!    the entry is younger than the service's timeout and the backend is active; every new
//!    connection of the client refreshes the entry. Timestamps (`LAST_USED`, `CREATED`)
//!    come from `bpf_ktime_get_coarse_ns`: the same monotonic clock as `bpf_ktime_get_ns`
//!    (which the layout names) at tick resolution, plenty for timeouts of seconds, at a
//!    fraction of the cost.
//! 6. Selection: `slot = flow_hash(tuple) % slots` ([`crate::lb::hash`], unrolled: no loop,
//!    no helper), `lb_slot[{svc_id, slot}]`, whose value holds the backend's id, address
//!    and port (one lookup; `lb_be` is read only on the affinity path, for the state).
//! 7. New connections write both `lb_ct` entries: forward (the client's tuple; the
//!    backend's address and port) and reply (backend → client; the frontend's), both
//!    naming the `svc_id` and `backend_id`.
//! 8. DNAT (reverse NAT the same on the source side): destination address and port written
//!    directly, the IPv4 header checksum updated inline (no `bpf_l3_csum_replace` call: the
//!    header checksum is always complete and its sum is unchanged, so `skb->csum` is too;
//!    see `emit_rewrite`), the L4 checksum with `bpf_l4_csum_replace` (`BPF_F_PSEUDO_HDR`
//!    for addresses; UDP with `BPF_F_MARK_MANGLED_0`, so a zero IPv4 UDP checksum stays
//!    zero), which handles every skb checksum state. IPv6 has no header checksum. SCTP: only the address is
//!    rewritten; its CRC32c does not cover addresses, and port translation is refused by
//!    the model ([`crate::maps::lb::LbError::SctpPortTranslation`]), so no CRC is
//!    recomputed.
//!
//! 9. Hairpin (with conntrack): when the backend chosen is the client itself, the source is
//!    also rewritten, to the node-local [`HAIRPIN_V4`] / [`HAIRPIN_V6`] (port kept), so that
//!    the backend does not get a packet from its own address; the reply entry is keyed by
//!    that address, and a reply to it gets both its source (the frontend) and its
//!    destination (the client: the reply's own source) restored. The backend must route the
//!    hairpin address back through this program (a pod's default route does; the address
//!    must not be in use on the node). In the endpoint programs the forward half runs in
//!    [`LbPaths::ForwardOnly`], the reply half in [`LbPaths::HairpinReply`], both in the
//!    endpoint's `from-endpoint`.
//!
//! Call sites choose the paths ([`LbPaths`]): the standalone program runs both; the endpoint
//! programs ([`crate::codegen::endpoint`]) run the forward path in `from-endpoint` (no
//! reverse NAT, resets into the veth's peer: [`ResetVia::Peer`]; with the hairpin source
//! rewrite), the hairpin reply path ([`LbPaths::HairpinReply`]) there too, for packets to
//! the hairpin address (the endpoint answering its own hairpinned connection: the endpoint
//! is both sides, so both halves of step 9 run in its `from-endpoint`), and the reply path
//! in the client's `to-endpoint`.
//!
//! Not done: ICMP errors about translated flows (not reverse translated), connection expiry
//! (`lb_ct` is an LRU; `LAST_SEEN` is kept for a sweeper).
//!
//! Every verdict is counted per reason ([`LbReason`]) in the per-CPU array `lb_stats`.

use super::kit::{self, Ipv4Checks, VerdictSites};
use super::{emit_count_and_exit, emit_ethernet, emit_skb_packet_pointers, guard, CodegenError, EthLabels};
use crate::lb::hash::FLOW_HASH_SEED;
use crate::maps::fwd::V4_MAPPED_WORD;
#[cfg(doc)]
use crate::maps::lb::hint_bit;
use crate::maps::lb::{
    aff_key, aff_value, be_value, ct4_key, ct_key, ct_value, hint, slot_key, slot_value, svc_key, svc_value,
    LbReason,
};
use crate::maps::names as map;
use crate::packet::{ipv4::field as ipv4, ipv6::field as ipv6};
use sluice_asm::helpers::{
    KTIME_GET_COARSE_NS, L4_CSUM_REPLACE, REDIRECT, REDIRECT_PEER, SKB_LOAD_BYTES, SKB_STORE_BYTES,
};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Program, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::SkBuff;

/// The node-local source a hairpinned connection gets (IPv4): link-local, so that the
/// backend's replies to it go back through its default route, i.e. through this program.
pub const HAIRPIN_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 42, 1);
/// The same for IPv6 (a unique local address).
pub const HAIRPIN_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x5c1e, 0, 0, 0, 0, 0, 1);

use crate::uapi::{
    BPF_F_IPV6, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, IPPROTO_SCTP, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST,
    TCP_SYN,
};

/// `__sk_buff.ifindex`.
const SKB_IFINDEX: i16 = ctx_off!(SkBuff, ifindex);

/// The stack frame [`emit_service_lb`] uses: offsets below `base` (a negative offset from
/// `r10`; the standalone program uses 0). [`LbFrame::SIZE`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct LbFrame {
    pub base: i16,
}

impl LbFrame {
    /// Bytes of stack the frame takes below `base`.
    pub const SIZE: i16 = 272;
    /// The program's context (`__sk_buff *`), 8 bytes. Input.
    pub const CTX: i16 = -8;
    /// The packet's tuple as an `lb_ct` key (40 bytes; addresses IPv4-mapped, ports in
    /// network order, `proto`, padding zero). Input (the `DIR` byte is the emitter's).
    pub const TUPLE: i16 = -48;
    /// Second `lb_ct` key (the reply entry of a new connection).
    pub const RKEY: i16 = -88;
    /// An `lb_ct` value being written (40 bytes). It overlays the `lb_svc` key, dead once
    /// the frontend is found (the value is written only for a new connection, after).
    pub const CTV: i16 = -128;
    /// The `lb_svc` key (20 bytes).
    pub const SVC: i16 = -128;
    /// The `lb_aff` key (20 bytes) and value (16).
    pub const AFF: i16 = -152;
    /// An `lb_ct4` key (16 bytes), built from a tuple in `lb_ct`'s form for each IPv4
    /// conntrack lookup or update. It overlays the `lb_aff` key, which is written in full
    /// before each of its uses and is dead whenever a conntrack key is built.
    pub const CT4: i16 = LbFrame::AFF;
    pub const AFFV: i16 = -168;
    /// The `lb_slot` key.
    pub const SLOT: i16 = -176;
    /// The new address (16 bytes, as `lb_be`/`lb_ct` store it) and port (2, network
    /// order) of the rewrite.
    pub const NEW: i16 = -200;
    /// L3 header offset from `skb->data` (u32). Input.
    pub const L3: i16 = -208;
    /// L4 header offset from `skb->data` (u32). Input.
    pub const L4: i16 = -204;
    /// Address family (u8: 4 or 6). Input.
    pub const FAMILY: i16 = -216;
    /// The L4 checksum field's offset from `skb->data` (u32; 0: none, SCTP).
    pub const CSUM: i16 = -212;
    /// `bpf_l4_csum_replace` flags for the protocol (u32).
    pub const CSUM_FLAGS: i16 = -220;
    /// svc_id (u32), backend_id (u32).
    pub const SVC_ID: i16 = -224;
    pub const BE_ID: i16 = -228;
    /// The service's slots (u32) and flags (u32).
    pub const SLOTS: i16 = -232;
    pub const FLAGS: i16 = -236;
    /// The verdict reason (u32).
    pub const REASON: i16 = -240;
    /// `bpf_ktime_get_ns()` (u64).
    pub const NOW: i16 = -248;
    /// The hairpin address of the packet's family (16 bytes, IPv4-mapped).
    pub const HAIRPIN: i16 = -272;

    fn at(self, off: i16) -> i16 {
        self.base + off
    }

    /// Every slot of the frame, by name, offset (below `base`) and size.
    pub const SLOTS_NAMED: [(&'static str, i16, u16); 22] = [
        ("lb.ctx", LbFrame::CTX, 8),
        ("lb.tuple", LbFrame::TUPLE, 40),
        ("lb.reply_key", LbFrame::RKEY, 40),
        ("lb.svc_key", LbFrame::SVC, 20),
        ("lb.ct_value", LbFrame::CTV, 40),
        ("lb.aff_key", LbFrame::AFF, 20),
        ("lb.aff_value", LbFrame::AFFV, 16),
        ("lb.slot_key", LbFrame::SLOT, 8),
        ("lb.new_addr", LbFrame::NEW, 16),
        ("lb.new_port", LbFrame::NEW + 16, 2),
        ("lb.l3_off", LbFrame::L3, 4),
        ("lb.l4_off", LbFrame::L4, 4),
        ("lb.family", LbFrame::FAMILY, 4),
        ("lb.csum_off", LbFrame::CSUM, 4),
        ("lb.csum_flags", LbFrame::CSUM_FLAGS, 4),
        ("lb.svc_id", LbFrame::SVC_ID, 4),
        ("lb.backend_id", LbFrame::BE_ID, 4),
        ("lb.slots", LbFrame::SLOTS, 4),
        ("lb.flags", LbFrame::FLAGS, 4),
        ("lb.reason", LbFrame::REASON, 4),
        ("lb.now", LbFrame::NOW, 8),
        ("lb.hairpin", LbFrame::HAIRPIN, 16),
    ];

    /// Name the frame's slots in `b`'s listing.
    pub fn declare(self, b: &mut Builder) {
        for (name, off, size) in LbFrame::SLOTS_NAMED {
            b.stack_slot(name, self.at(off), size);
        }
    }
}

/// Which of the load balancer's paths a call site runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPaths {
    /// Reverse NAT of backends' replies and DNAT of clients' packets (the standalone
    /// program, where both directions cross one hook).
    #[default]
    Both,
    /// Only the forward path (steps 3-8 without reverse NAT, with the hairpin source rewrite
    /// of step 9 when there is conntrack): an endpoint's `from-endpoint`, where the endpoint
    /// is the client.
    ForwardOnly,
    /// Only the reply path (step 2 and the source rewrite): the client endpoint's
    /// `to-endpoint`. A miss passes untouched (`pass_no_service`).
    ReplyOnly,
    /// The reply path of a packet to the hairpin address (step 2, the source rewrite and
    /// the hairpin destination rewrite of step 9): an endpoint's `from-endpoint`, for its
    /// answers to its own hairpinned connections (the caller checks the destination). A
    /// miss passes untouched (`pass_no_service`).
    HairpinReply,
}

/// Where the reset for a TCP packet to a frontend without backends is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetVia {
    /// `bpf_redirect(skb->ifindex, 0)`: out of the device the packet came in on.
    #[default]
    Egress,
    /// `bpf_redirect_peer(skb->ifindex, 0)` (tc ingress only): into the ingress of the
    /// device's peer, i.e. the container side of an endpoint's veth, so the reset reaches
    /// the client without passing its own `to-endpoint` policy.
    Peer,
}

/// Code-shape switches of the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbOptions {
    /// The `lb_ct` lookups and entries (steps 2, 3 and 7). Off, there is no reverse NAT and
    /// no connection pinning: only for the benchmark's comparison with the conntrack-less
    /// clang anchor.
    pub conntrack: bool,
    /// Which paths are emitted (the standalone program: [`LbPaths::Both`]).
    pub paths: LbPaths,
    /// Where a no-backend reset goes.
    pub reset: ResetVia,
    /// The caller has checked the `lb_hint` filter of its path already ([`emit_hint_filter`]:
    /// the frontend bit for [`LbPaths::ForwardOnly`], the backend bit for
    /// [`LbPaths::ReplyOnly`]) and calls only when it is set, so that a packet that is not
    /// service traffic pays neither the frame's set-up nor a second check. Ignored by the
    /// other paths (they check their own filters).
    pub filtered: bool,
}

impl Default for LbOptions {
    fn default() -> LbOptions {
        LbOptions { conntrack: true, paths: LbPaths::Both, reset: ResetVia::Egress, filtered: false }
    }
}

/// Where [`emit_service_lb`] goes when it is done. Every exit sets `r6` = the
/// [`LbReason`] and `r7` = its tc verdict (`TC_ACT_OK` for pass and translated packets,
/// `TC_ACT_SHOT` for drops, `TC_ACT_REDIRECT` for a reset sent back) and jumps to `exit`; a
/// caller that goes on after the load balancer treats `TC_ACT_OK` as "continue" (the packet
/// may have been rewritten).
#[derive(Debug, Clone, Copy)]
pub struct LbLabels<'a> {
    /// Prefix of the names the emitter's labels show in the listing.
    pub prefix: &'a str,
    pub exit: Label,
}

/// The labels of one [`emit_service_lb`] call: ids ([`Builder::new_label`]), so the emitter
/// may appear any number of times in one program; the prefix only names them in the
/// listing.
struct Labels<'a> {
    prefix: &'a str,
    exit: Label,
    csum_done: Label,
    reply: Label,
    forward_miss: Label,
    frontend: Label,
    no_backend: Label,
    hash: Label,
    hash6: Label,
    slot: Label,
    new_ct: Label,
    dnat: Label,
    snat: Label,
    /// The verdict sites.
    pass_no_service: Label,
    no_backend_site: Label,
    rewrite_failed: Label,
}

impl<'a> Labels<'a> {
    fn new(b: &mut Builder, l: LbLabels<'a>) -> Labels<'a> {
        let prefix = l.prefix;
        let mut id = |name: &str| b.new_label(&format!("{prefix}{name}"));
        let site = |r: LbReason| format!("v_{}", r.name());
        Labels {
            prefix,
            exit: l.exit,
            csum_done: id("csum_done"),
            reply: id("reply"),
            forward_miss: id("forward_miss"),
            frontend: id("frontend"),
            no_backend: id("no_backend"),
            hash: id("hash"),
            hash6: id("hash6"),
            slot: id("slot"),
            new_ct: id("new_ct"),
            dnat: id("dnat"),
            snat: id("snat"),
            pass_no_service: id(&site(LbReason::PassNoService)),
            no_backend_site: id(&site(LbReason::NoBackend)),
            rewrite_failed: id(&site(LbReason::RewriteFailed)),
        }
    }
}

/// Emit the load balancer proper (steps 2-8 of the module header; the paths `o.paths`
/// names).
///
/// Register and stack contract: on entry the [`LbFrame`] inputs hold the context, the
/// tuple, the family and the L3/L4 offsets (relative to `skb->data`, for the helpers); no
/// register is read. The emitter clobbers `r0`-`r9` (packet pointers included: helpers
/// that change the packet invalidate them anyway; a caller that reads the packet again
/// reloads `data`/`data_end` from the context) and every frame slot but the inputs; the
/// `DIR` byte of the tuple is left set (`FORWARD` unless only the reply path ran). On a
/// translated packet [`LbFrame::NEW`] holds the new address and port (the backend's after
/// DNAT). The packet is only read and written
/// through helpers at the given offsets, so the caller must have checked that the L4 header
/// is there (TCP 20 bytes, UDP 8, SCTP 12) and that the protocol is one of the three. The
/// frame may overlay caller slots that are dead at the call (the endpoint programs' frame
/// is deeper than 512 - [`LbFrame::SIZE`]).
pub fn emit_service_lb(b: &mut Builder, f: LbFrame, l: LbLabels<'_>, o: LbOptions) {
    let lb = Labels::new(b, l);
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;

    b.comment("lb: the L4 checksum field and csum_replace flags of the protocol");
    b.load(Size::B, Reg::R1, Reg::R10, t(ct_key::PROTO));
    b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::L4));
    b.mov(Reg::R3, 0).mov(Reg::R4, BPF_F_PSEUDO_HDR);
    b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_SCTP, lb.csum_done);
    b.mov(Reg::R3, Reg::R2).add(Reg::R3, 16);
    b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_TCP, lb.csum_done);
    b.mov(Reg::R3, Reg::R2).add(Reg::R3, 6);
    b.mov(Reg::R4, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0);
    b.place(lb.csum_done);
    b.store(Size::W, Reg::R10, f.at(LbFrame::CSUM), Reg::R3);
    b.store(Size::W, Reg::R10, f.at(LbFrame::CSUM_FLAGS), Reg::R4);

    if matches!(o.paths, LbPaths::ReplyOnly | LbPaths::HairpinReply) {
        emit_reply_only(b, f, &lb, o);
        return;
    }
    // Both paths: the forward lookup first when the frontend filter allows, so that a
    // tracked client packet is one hash lookup even where the backend filter is full;
    // after a forward miss the reply lookup still comes before a new connection. A packet
    // whose frontend bit is clear can only be a reply (the `reply` block below).
    let both = o.conntrack && o.paths == LbPaths::Both;

    // (c) a tracked connection, a backend's reply, then the frontend.
    if !(o.filtered && o.paths == LbPaths::ForwardOnly) {
        let clear = if both { lb.reply } else { lb.pass_no_service };
        emit_hint_check(b, f, Hint::Frontend, clear);
    }
    if o.conntrack {
        let miss = if both { lb.forward_miss } else { lb.frontend };
        emit_forward_lookup(b, f, miss, lb.dnat);
        if both {
            b.place(miss);
            emit_hint_check(b, f, Hint::Backend, lb.frontend);
            emit_reply_lookup(b, f, lb.snat, lb.frontend);
        }
    }
    b.place(lb.frontend).comment("lb: the frontend: lb_svc[daddr, dport, proto]");
    let s = |off: usize| f.at(LbFrame::SVC) + off as i16;
    for half in [0i16, 8] {
        b.load(Size::DW, Reg::R1, Reg::R10, t(ct_key::DADDR) + half);
        b.store(Size::DW, Reg::R10, s(svc_key::ADDR) + half, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R10, t(ct_key::DPORT));
    b.store(Size::H, Reg::R10, s(svc_key::PORT), Reg::R1);
    b.load(Size::B, Reg::R1, Reg::R10, t(ct_key::PROTO));
    b.store(Size::B, Reg::R10, s(svc_key::PROTO), Reg::R1);
    b.store(Size::B, Reg::R10, s(svc_key::SCOPE), 0);
    kit::map_lookup(b, map::LB_SVC, f.at(LbFrame::SVC));
    b.jmp(JmpCond::Eq, Reg::R0, 0, lb.pass_no_service);
    b.load(Size::W, Reg::R1, Reg::R0, svc_value::SVC_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::SVC_ID), Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R0, svc_value::FLAGS as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::FLAGS), Reg::R1);
    b.load(Size::W, Reg::R2, Reg::R0, svc_value::SLOTS as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::SLOTS), Reg::R2);
    b.jmp(JmpCond::Eq, Reg::R2, 0, lb.no_backend);
    b.load(Size::W, Reg::R7, Reg::R0, svc_value::AFFINITY_TIMEOUT as i16);
    if !o.conntrack {
        b.comment("set on the affinity path only; zero keeps the verifier's stack facts simple");
        b.store(Size::DW, Reg::R10, f.at(LbFrame::NOW), 0);
    }
    if o.conntrack {
        b.comment("now, for affinity and the new lb_ct entries");
        b.call(KTIME_GET_COARSE_NS);
        b.store(Size::DW, Reg::R10, f.at(LbFrame::NOW), Reg::R0);
    }
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::FLAGS));
    b.alu(AluOp::And, Reg::R1, svc_value::AFFINITY as i32);
    b.jmp(JmpCond::Eq, Reg::R1, 0, lb.hash);

    // (d) ClientIP affinity.
    b.comment("lb: ClientIP affinity: lb_aff[svc_id, client], younger than the timeout, backend active");
    if !o.conntrack {
        b.call(KTIME_GET_COARSE_NS);
        b.store(Size::DW, Reg::R10, f.at(LbFrame::NOW), Reg::R0);
    }
    let a = |off: usize| f.at(LbFrame::AFF) + off as i16;
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::SVC_ID));
    b.store(Size::W, Reg::R10, a(aff_key::SVC_ID), Reg::R1);
    for word in [0i16, 4, 8, 12] {
        b.load(Size::W, Reg::R1, Reg::R10, t(ct_key::SADDR) + word);
        b.store(Size::W, Reg::R10, a(aff_key::ADDR) + word, Reg::R1);
    }
    kit::map_lookup(b, map::LB_AFF, f.at(LbFrame::AFF));
    b.jmp(JmpCond::Eq, Reg::R0, 0, lb.hash);
    b.load(Size::DW, Reg::R1, Reg::R10, f.at(LbFrame::NOW));
    b.load(Size::DW, Reg::R2, Reg::R0, aff_value::LAST_USED as i16);
    b.alu(AluOp::Sub, Reg::R1, Reg::R2);
    b.alu(AluOp::Mul, Reg::R7, 1_000_000_000);
    b.jmp(JmpCond::Ge, Reg::R1, Reg::R7, lb.hash);
    b.load(Size::W, Reg::R1, Reg::R0, aff_value::BACKEND_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::BE_ID), Reg::R1);
    kit::map_lookup(b, map::LB_BE, f.at(LbFrame::BE_ID));
    b.jmp(JmpCond::Eq, Reg::R0, 0, lb.hash);
    b.load(Size::B, Reg::R1, Reg::R0, be_value::STATE as i16);
    b.jmp(JmpCond::Ne, Reg::R1, i32::from(be_value::ACTIVE), lb.hash);
    copy_addr_port(b, f, be_value::ADDR, be_value::PORT);
    b.store(Size::W, Reg::R10, f.at(LbFrame::REASON), LbReason::Affinity as i32);
    b.ja(lb.new_ct);

    // (e) selection.
    b.place(lb.hash).comment("lb: flow hash of the tuple (crate::lb::hash, unrolled)");
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, lb.hash6);
    let v4_words = [t(ct_key::SADDR) + 12, t(ct_key::DADDR) + 12, t(ct_key::SPORT)];
    emit_hash(b, &v4_words, t(ct_key::PROTO));
    b.ja(lb.slot);
    b.place(lb.hash6);
    let mut v6_words = Vec::new();
    for base in [t(ct_key::SADDR), t(ct_key::DADDR)] {
        v6_words.extend([base, base + 4, base + 8, base + 12]);
    }
    v6_words.push(t(ct_key::SPORT));
    emit_hash(b, &v6_words, t(ct_key::PROTO));
    b.place(lb.slot).comment("lb: slot = hash % slots; lb_slot[svc_id, slot] = the backend");
    b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::SLOTS));
    b.alu32(AluOp::Mod, Reg::R1, Reg::R2);
    b.store(Size::W, Reg::R10, f.at(LbFrame::SLOT) + slot_key::SLOT as i16, Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::SVC_ID));
    b.store(Size::W, Reg::R10, f.at(LbFrame::SLOT) + slot_key::SVC_ID as i16, Reg::R1);
    kit::map_lookup(b, map::LB_SLOT, f.at(LbFrame::SLOT));
    b.jmp(JmpCond::Eq, Reg::R0, 0, lb.no_backend_site);
    b.load(Size::W, Reg::R1, Reg::R0, slot_value::BACKEND_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::BE_ID), Reg::R1);
    copy_addr_port(b, f, slot_value::ADDR, slot_value::PORT);
    b.store(Size::W, Reg::R10, f.at(LbFrame::REASON), LbReason::NewConnection as i32);

    // (f) conntrack entries (and the affinity entry).
    b.place(lb.new_ct);
    if o.conntrack {
        emit_ct_entries(b, f, lb.prefix);
    }
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::FLAGS));
    b.alu(AluOp::And, Reg::R1, svc_value::AFFINITY as i32);
    b.jmp(JmpCond::Eq, Reg::R1, 0, lb.dnat);
    b.comment("lb: affinity: remember the client's backend, now");
    let av = |off: usize| f.at(LbFrame::AFFV) + off as i16;
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::BE_ID));
    b.store(Size::DW, Reg::R10, av(aff_value::BACKEND_ID), Reg::R1);
    b.load(Size::DW, Reg::R1, Reg::R10, f.at(LbFrame::NOW));
    b.store(Size::DW, Reg::R10, av(aff_value::LAST_USED), Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::SVC_ID));
    b.store(Size::W, Reg::R10, a(aff_key::SVC_ID), Reg::R1);
    for word in [0i16, 4, 8, 12] {
        b.load(Size::W, Reg::R1, Reg::R10, t(ct_key::SADDR) + word);
        b.store(Size::W, Reg::R10, a(aff_key::ADDR) + word, Reg::R1);
    }
    kit::map_update(b, map::LB_AFF, f.at(LbFrame::AFF), f.at(LbFrame::AFFV), kit::BPF_ANY);
    // (g) the rewrites.
    emit_rewrites(b, f, &lb, Some(lb.dnat), both.then_some(lb.snat), o.conntrack);

    b.place(lb.no_backend).comment("lb: no usable backend: TCP gets a reset, the rest is dropped");
    b.load(Size::B, Reg::R1, Reg::R10, t(ct_key::PROTO));
    b.jmp(JmpCond::Ne, Reg::R1, IPPROTO_TCP, lb.no_backend_site);
    emit_reset(b, f, lb.prefix, o.reset, lb.no_backend_site);
    b.mov(Reg::R6, LbReason::NoBackendReset as i32).mov(Reg::R7, Reg::R0).ja(lb.exit);

    if both {
        b.place(lb.reply).comment("lb: not to a frontend: a backend's reply or nothing of ours");
        emit_hint_check(b, f, Hint::Backend, lb.pass_no_service);
        emit_reply_lookup(b, f, lb.snat, lb.pass_no_service);
    }

    for (r, site) in [
        (LbReason::PassNoService, lb.pass_no_service),
        (LbReason::NoBackend, lb.no_backend_site),
        (LbReason::RewriteFailed, lb.rewrite_failed),
    ] {
        kit::verdict_site(b, site, r, lb.exit);
    }
}

/// [`LbPaths::ReplyOnly`]: the reply lookup and the reverse NAT, nothing else (no hairpin:
/// a hairpinned connection's replies never reach it). [`LbPaths::HairpinReply`]: the same
/// with the hairpin destination rewrite.
fn emit_reply_only(b: &mut Builder, f: LbFrame, lb: &Labels<'_>, o: LbOptions) {
    let mut sites = vec![(LbReason::PassNoService, lb.pass_no_service)];
    if o.conntrack {
        if !(o.filtered && o.paths == LbPaths::ReplyOnly) {
            emit_hint_check(b, f, Hint::Backend, lb.pass_no_service);
        }
        emit_reply_lookup(b, f, lb.snat, lb.pass_no_service);
        emit_rewrites(b, f, lb, None, Some(lb.snat), o.paths == LbPaths::HairpinReply);
        sites.push((LbReason::RewriteFailed, lb.rewrite_failed));
    } else {
        b.comment("lb: no conntrack, no reverse NAT");
        b.ja(lb.pass_no_service);
    }
    for (r, site) in sites {
        kit::verdict_site(b, site, r, lb.exit);
    }
}

/// Turn the TCP packet into the reset a closed port would send (as Linux's
/// `tcp_v4_send_reset` does), in place: MACs, addresses and ports swapped (no checksum
/// changes: the sums commute); a packet with ACK gets `seq = its ack`, flags RST; else
/// `seq = 0`, `ack = seq + payload + SYN + FIN`, flags RST|ACK; the TCP checksum fixed with
/// `bpf_l4_csum_replace`; options, payload, TTL and window kept. Then `bpf_redirect` to
/// the device's egress (flags 0: back out where it came from; `BPF_F_INGRESS` would hand
/// it to this host's stack). A reset is never answered with a reset (`fail`, as is any
/// helper error). Leaves the redirect's verdict in r0. Scratch: the [`LbFrame::RKEY`] slot.
fn emit_reset(b: &mut Builder, f: LbFrame, prefix: &str, via: ResetVia, fail: Label) {
    let mut id = |name: &str| b.new_label(&format!("{prefix}{name}"));
    let (len6, len, no_ack, csum, swap6, macs_l) = (
        id("reset_len6"),
        id("reset_len"),
        id("reset_no_ack"),
        id("reset_csum"),
        id("reset_swap6"),
        id("reset_macs"),
    );
    let no_flag = [id(&format!("reset_no_{TCP_SYN}")), id(&format!("reset_no_{TCP_FIN}"))];
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    let (macs, iplen, tcp, ports) = {
        let k = f.at(LbFrame::RKEY);
        (k, k + 12, k + 16, k + 32)
    };
    let ctx = f.at(LbFrame::CTX);
    let check = |b: &mut Builder| {
        b.jmp(JmpCond::Ne, Reg::R0, 0, fail);
    };
    // bytes(ctx, base + off, fp + from, len): load or store.
    let bytes = |b: &mut Builder, helper: i32, base: Option<i16>, off: i32, from: i16, len: i32| {
        b.load(Size::DW, Reg::R1, Reg::R10, ctx);
        match base {
            Some(at) => {
                b.load(Size::W, Reg::R2, Reg::R10, f.at(at));
                b.add(Reg::R2, off);
            }
            None => {
                b.mov(Reg::R2, off);
            }
        }
        b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(from));
        b.mov(Reg::R4, len);
        if helper == SKB_STORE_BYTES {
            b.mov(Reg::R5, 0);
        }
        b.call(helper);
        check(b);
    };
    b.comment("lb reset: the TCP header's seq, ack, offset and flags, window");
    bytes(b, SKB_LOAD_BYTES, Some(LbFrame::L4), 4, tcp, 12);
    b.load(Size::B, Reg::R1, Reg::R10, tcp + 9);
    b.alu(AluOp::And, Reg::R1, TCP_RST);
    b.jmp(JmpCond::Ne, Reg::R1, 0, fail);
    b.comment("the IP payload length: IPv4 total length less the header, IPv6 payload length");
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, len6);
    bytes(b, SKB_LOAD_BYTES, Some(LbFrame::L3), 2, iplen, 2);
    b.load(Size::H, Reg::R6, Reg::R10, iplen);
    b.be(16, Reg::R6);
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::L4));
    b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::L3));
    b.alu(AluOp::Sub, Reg::R1, Reg::R2);
    b.alu(AluOp::Sub, Reg::R6, Reg::R1);
    b.ja(len);
    b.place(len6);
    bytes(b, SKB_LOAD_BYTES, Some(LbFrame::L3), 4, iplen, 2);
    b.load(Size::H, Reg::R6, Reg::R10, iplen);
    b.be(16, Reg::R6);
    b.place(len).comment("r6 = payload = IP payload - data offset * 4");
    b.load(Size::B, Reg::R1, Reg::R10, tcp + 8);
    b.alu(AluOp::Rsh, Reg::R1, 4).alu(AluOp::Lsh, Reg::R1, 2);
    b.alu(AluOp::Sub, Reg::R6, Reg::R1);
    b.comment("r7 = new seq, r8 = new ack (wire order), r9 = new offset/flags half-word");
    b.load(Size::B, Reg::R9, Reg::R10, tcp + 8);
    b.load(Size::B, Reg::R1, Reg::R10, tcp + 9);
    b.mov(Reg::R2, Reg::R1).alu(AluOp::And, Reg::R2, TCP_ACK);
    b.jmp(JmpCond::Eq, Reg::R2, 0, no_ack);
    b.load(Size::W, Reg::R7, Reg::R10, tcp + 4);
    b.mov(Reg::R8, 0);
    b.alu(AluOp::Or, Reg::R9, TCP_RST << 8);
    b.ja(csum);
    b.place(no_ack);
    b.mov(Reg::R7, 0);
    b.load(Size::W, Reg::R8, Reg::R10, tcp);
    b.be(32, Reg::R8);
    b.add(Reg::R8, Reg::R6);
    for (flag, skip) in [TCP_SYN, TCP_FIN].into_iter().zip(no_flag) {
        b.mov(Reg::R2, Reg::R1).alu(AluOp::And, Reg::R2, flag);
        b.jmp(JmpCond::Eq, Reg::R2, 0, skip);
        b.add(Reg::R8, 1);
        b.place(skip);
    }
    b.be(32, Reg::R8);
    b.alu(AluOp::Or, Reg::R9, (TCP_RST | TCP_ACK) << 8);
    b.place(csum).comment("checksum: seq, ack, offset/flags; then write them");
    for (off, reg, size, width) in
        [(0i16, Reg::R7, Size::W, 4), (4, Reg::R8, Size::W, 4), (8, Reg::R9, Size::H, 2)]
    {
        b.load(Size::DW, Reg::R1, Reg::R10, ctx);
        b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::L4));
        b.add(Reg::R2, 16);
        b.load(size, Reg::R3, Reg::R10, tcp + off);
        b.mov(Reg::R4, reg);
        b.mov(Reg::R5, width);
        b.call(L4_CSUM_REPLACE);
        check(b);
        b.store(size, Reg::R10, tcp + off, reg);
    }
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L4), 4, tcp, 10);
    b.comment("lb reset: swap ports, addresses, MACs");
    b.load(Size::H, Reg::R1, Reg::R10, t(ct_key::DPORT));
    b.store(Size::H, Reg::R10, ports, Reg::R1);
    b.load(Size::H, Reg::R1, Reg::R10, t(ct_key::SPORT));
    b.store(Size::H, Reg::R10, ports + 2, Reg::R1);
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L4), L4_PORTS.into(), ports, 4);
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, swap6);
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L3), V4_SRC.into(), t(ct_key::DADDR) + 12, 4);
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L3), V4_DST.into(), t(ct_key::SADDR) + 12, 4);
    b.ja(macs_l);
    b.place(swap6);
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L3), V6_SRC.into(), t(ct_key::DADDR), 16);
    bytes(b, SKB_STORE_BYTES, Some(LbFrame::L3), V6_DST.into(), t(ct_key::SADDR), 16);
    b.place(macs_l);
    bytes(b, SKB_LOAD_BYTES, None, 0, macs, 12);
    bytes(b, SKB_STORE_BYTES, None, 0, macs + 6, 6);
    bytes(b, SKB_STORE_BYTES, None, 6, macs, 6);
    match via {
        ResetVia::Egress => b.comment("lb reset: back out of the device it came in on"),
        ResetVia::Peer => b.comment("lb reset: into the ingress of the device's peer (the client's side)"),
    };
    b.load(Size::DW, Reg::R1, Reg::R10, ctx);
    b.load(Size::W, Reg::R1, Reg::R1, SKB_IFINDEX);
    b.mov(Reg::R2, 0);
    b.call(match via {
        ResetVia::Egress => REDIRECT,
        ResetVia::Peer => REDIRECT_PEER,
    });
}

/// What [`emit_ct_op`] does with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtOp {
    /// `r0 =` the entry or null.
    Lookup,
    /// Write [`LbFrame::CTV`] (`BPF_ANY`).
    Update,
}

/// A conntrack lookup or update for the tuple at stack offset `key` (in `lb_ct`'s form,
/// direction byte set): IPv6 in `lb_ct`, IPv4 in `lb_ct4` with the compact key copied to
/// [`LbFrame::CT4`] (four words: the compact key is the mapped key's tail, see
/// [`crate::maps::lb::LbCt4Key`]). Both arms leave the helper's result in r0.
fn emit_ct_op(b: &mut Builder, f: LbFrame, key: i16, op: CtOp) {
    let (v6, done) = (b.new_label("ct_v6"), b.new_label("ct_done"));
    let c = f.at(LbFrame::CT4);
    let run = |b: &mut Builder, map: &str, key: i16| match op {
        CtOp::Lookup => kit::map_lookup(b, map, key),
        CtOp::Update => kit::map_update(b, map, key, f.at(LbFrame::CTV), kit::BPF_ANY),
    };
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, v6);
    for (from, to) in [
        (ct_key::SADDR + 12, ct4_key::SADDR),
        (ct_key::DADDR + 12, ct4_key::DADDR),
        (ct_key::SPORT, ct4_key::SPORT),
        (ct_key::PROTO, ct4_key::PROTO),
    ] {
        b.load(Size::W, Reg::R1, Reg::R10, key + from as i16);
        b.store(Size::W, Reg::R10, c + to as i16, Reg::R1);
    }
    run(b, map::LB_CT4, c);
    b.ja(done);
    b.place(v6);
    run(b, map::LB_CT, key);
    b.place(done);
}

/// (a) The reply `lb_ct` lookup: a miss goes to `miss`, a hit to `snat` with the
/// frontend in [`LbFrame::NEW`].
fn emit_reply_lookup(b: &mut Builder, f: LbFrame, snat: Label, miss: Label) {
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    b.comment("lb: a backend's reply? lb_ct[tuple, REPLY]");
    b.store(Size::B, Reg::R10, t(ct_key::DIR), i32::from(ct_key::REPLY));
    emit_ct_op(b, f, f.at(LbFrame::TUPLE), CtOp::Lookup);
    b.jmp(JmpCond::Eq, Reg::R0, 0, miss);
    b.load(Size::W, Reg::R1, Reg::R0, ct_value::SVC_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::SVC_ID), Reg::R1);
    copy_addr_port(b, f, ct_value::ADDR, ct_value::PORT);
    b.store(Size::W, Reg::R10, f.at(LbFrame::REASON), LbReason::RevNat as i32);
    b.ja(snat);
}

/// (b) The forward `lb_ct` lookup (before the frontend's: a tracked packet is this one
/// lookup, the entry holds its backend); a miss goes to `miss`. Entries of removed
/// frontends and backends are deleted by user space ([`crate::maps::lb::CtPurge`]).
fn emit_forward_lookup(b: &mut Builder, f: LbFrame, miss: Label, dnat: Label) {
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    b.comment("lb: a tracked connection? lb_ct[tuple, FORWARD] holds its backend");
    b.store(Size::B, Reg::R10, t(ct_key::DIR), i32::from(ct_key::FORWARD));
    emit_ct_op(b, f, f.at(LbFrame::TUPLE), CtOp::Lookup);
    b.jmp(JmpCond::Eq, Reg::R0, 0, miss);
    b.load(Size::W, Reg::R1, Reg::R0, ct_value::BACKEND_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::BE_ID), Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R0, ct_value::SVC_ID as i16);
    b.store(Size::W, Reg::R10, f.at(LbFrame::SVC_ID), Reg::R1);
    copy_addr_port(b, f, ct_value::ADDR, ct_value::PORT);
    b.store(Size::W, Reg::R10, f.at(LbFrame::REASON), LbReason::Established as i32);
    b.ja(dnat);
}

/// (f) The `lb_ct` forward and reply entries of a new connection.
fn emit_ct_entries(b: &mut Builder, f: LbFrame, prefix: &str) {
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    b.comment("lb: lb_ct forward entry: ids, time, the backend");
    let v = |off: usize| f.at(LbFrame::CTV) + off as i16;
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::BE_ID));
    b.store(Size::W, Reg::R10, v(ct_value::BACKEND_ID), Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R10, f.at(LbFrame::SVC_ID));
    b.store(Size::W, Reg::R10, v(ct_value::SVC_ID), Reg::R1);
    b.load(Size::DW, Reg::R1, Reg::R10, f.at(LbFrame::NOW));
    b.store(Size::DW, Reg::R10, v(ct_value::CREATED), Reg::R1);
    emit_ct_rewrite(b, v(ct_value::ADDR), f.at(LbFrame::NEW), f.at(LbFrame::NEW) + 16);
    b.comment("the key's direction: a reply lookup after the forward miss left REPLY there");
    b.store(Size::B, Reg::R10, t(ct_key::DIR), i32::from(ct_key::FORWARD));
    emit_ct_op(b, f, f.at(LbFrame::TUPLE), CtOp::Update);
    b.comment("lb: the reply entry's rewrite: the frontend (the forward tuple's destination)");
    emit_ct_rewrite(b, v(ct_value::ADDR), t(ct_key::DADDR), t(ct_key::DPORT));
    let r = |off: usize| f.at(LbFrame::RKEY) + off as i16;
    for half in [0i16, 8] {
        b.load(Size::DW, Reg::R1, Reg::R10, f.at(LbFrame::NEW) + half);
        b.store(Size::DW, Reg::R10, r(ct_key::SADDR) + half, Reg::R1);
        b.load(Size::DW, Reg::R1, Reg::R10, t(ct_key::SADDR) + half);
        b.store(Size::DW, Reg::R10, r(ct_key::DADDR) + half, Reg::R1);
    }
    b.comment("hairpin (the backend is the client): replies go to the hairpin address");
    let not_hp = b.new_label(&format!("{prefix}ct_not_hairpin"));
    emit_unless_same(b, f.at(LbFrame::NEW), t(ct_key::SADDR), not_hp);
    emit_store_hairpin(b, f, r(ct_key::DADDR), &format!("{prefix}ct_hp"));
    b.place(not_hp);
    b.comment("sport = the backend's port, dport = the client's; proto; REPLY; padding");
    b.load(Size::H, Reg::R1, Reg::R10, f.at(LbFrame::NEW) + 16);
    b.load(Size::H, Reg::R2, Reg::R10, t(ct_key::SPORT));
    b.alu(AluOp::Lsh, Reg::R2, 16).alu(AluOp::Or, Reg::R1, Reg::R2);
    b.store(Size::W, Reg::R10, r(ct_key::SPORT), Reg::R1);
    b.load(Size::B, Reg::R1, Reg::R10, t(ct_key::PROTO));
    b.store(Size::W, Reg::R10, r(ct_key::PROTO), Reg::R1);
    b.store(Size::B, Reg::R10, r(ct_key::DIR), i32::from(ct_key::REPLY));
    emit_ct_op(b, f, f.at(LbFrame::RKEY), CtOp::Update);
}

/// (g) The DNAT and reverse-NAT rewrites, then the exit with the reason kept on the stack.
/// With `hairpin` (which needs conntrack: the reply entry is what brings a hairpinned reply
/// back), each rewrite present gets its hairpin half: the DNAT the source rewrite to the
/// hairpin address, the reverse NAT the destination rewrite of a reply to it. Without
/// conntrack there is no reverse NAT (`snat` is `None`), with one path only the other
/// rewrite is absent; no unreachable code either way. A failed rewrite goes to the
/// `rewrite_failed` verdict.
fn emit_rewrites(
    b: &mut Builder,
    f: LbFrame,
    lb: &Labels<'_>,
    dnat: Option<Label>,
    snat: Option<Label>,
    hairpin: bool,
) {
    let fail = lb.rewrite_failed;
    let done = b.new_label(&format!("{}rewritten", lb.prefix));
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    let new = f.at(LbFrame::NEW);
    let hp = f.at(LbFrame::HAIRPIN);
    if let Some(dnat) = dnat {
        let tag = format!("{}dnat", lb.prefix);
        b.place(dnat).comment("lb: DNAT: destination address and port to the backend");
        emit_rewrite(b, f, &tag, Side::Destination, new, true, fail);
        if hairpin {
            b.comment("hairpin: the backend is the client itself: the source becomes the hairpin address");
            emit_unless_same(b, new, t(ct_key::SADDR), done);
            emit_store_hairpin(b, f, hp, &format!("{tag}_hp_addr"));
            emit_rewrite(b, f, &format!("{tag}_hp"), Side::Source, hp, false, fail);
            if snat.is_some() {
                b.ja(done);
            }
        }
    }
    if let Some(snat) = snat {
        let tag = format!("{}snat", lb.prefix);
        b.place(snat).comment("lb: reverse NAT: source address and port to the frontend");
        emit_rewrite(b, f, &tag, Side::Source, new, true, fail);
        if hairpin {
            b.comment("hairpin reply (to the hairpin address): the destination is the client, its source");
            emit_store_hairpin(b, f, hp, &format!("{tag}_hp_addr"));
            emit_unless_same(b, t(ct_key::DADDR), hp, done);
            emit_rewrite(b, f, &format!("{tag}_hp"), Side::Destination, t(ct_key::SADDR), false, fail);
        }
    }
    b.place(done);
    b.load(Size::W, Reg::R6, Reg::R10, f.at(LbFrame::REASON));
    b.mov(Reg::R7, 0).ja(lb.exit);
}

/// Jump to `differ` unless the 16-byte addresses at stack offsets `a` and `b_off` are equal.
fn emit_unless_same(b: &mut Builder, a: i16, b_off: i16, differ: Label) {
    for half in [0i16, 8] {
        b.load(Size::DW, Reg::R1, Reg::R10, a + half);
        b.load(Size::DW, Reg::R2, Reg::R10, b_off + half);
        b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, differ);
    }
}

/// Store the hairpin address of the packet's family ([`HAIRPIN_V4`] IPv4-mapped, or
/// [`HAIRPIN_V6`]) at stack offset `at`.
fn emit_store_hairpin(b: &mut Builder, f: LbFrame, at: i16, tag: &str) {
    let word = |o: &[u8]| u32::from_le_bytes([o[0], o[1], o[2], o[3]]) as i32;
    let v4 = HAIRPIN_V4.to_ipv6_mapped().octets();
    let v6 = HAIRPIN_V6.octets();
    let (is_v6, stored) = (b.new_label(&format!("{tag}_v6")), b.new_label(&format!("{tag}_stored")));
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, is_v6);
    for (i, chunk) in v4.chunks_exact(4).enumerate() {
        b.store(Size::W, Reg::R10, at + 4 * i as i16, word(chunk));
    }
    b.ja(stored);
    b.place(is_v6);
    for (i, chunk) in v6.chunks_exact(4).enumerate() {
        b.store(Size::W, Reg::R10, at + 4 * i as i16, word(chunk));
    }
    b.place(stored);
}

/// Which `lb_hint` filter a check reads, and the tuple fields it hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// (daddr, dport, proto): is the destination a frontend?
    Frontend,
    /// (saddr, sport, proto): is the source a backend?
    Backend,
}

/// Where [`emit_hint_bit`] reads an address on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintAddr {
    /// 16 bytes, IPv4-mapped for IPv4 (the load balancer's tuple).
    Mapped(i16),
    /// An IPv4 address, 4 bytes as the packet carries it (an endpoint's conntrack tuple):
    /// its IPv4-mapped form's words are 0, 0, [`V4_MAPPED_WORD`] and the address, so they
    /// fold to `V4_MAPPED_WORD ^ address`.
    V4(i16),
}

/// `r1 =` [`hint_bit`] of the address `addr`, the network-order port at stack offset
/// `port` and the protocol byte at `proto` (32-bit arithmetic, as the Rust definition;
/// clobbers r2).
fn emit_hint_bit(b: &mut Builder, addr: HintAddr, port: i16, proto: i16) {
    match addr {
        HintAddr::Mapped(at) => {
            b.mov32(Reg::R1, 0);
            for word in [0i16, 4, 8, 12] {
                b.load(Size::W, Reg::R2, Reg::R10, at + word);
                b.alu32(AluOp::Xor, Reg::R1, Reg::R2);
            }
        }
        HintAddr::V4(at) => {
            b.load(Size::W, Reg::R1, Reg::R10, at);
            b.alu32(AluOp::Xor, Reg::R1, V4_MAPPED_WORD as i32);
        }
    }
    b.load(Size::H, Reg::R2, Reg::R10, port);
    b.alu32(AluOp::Xor, Reg::R1, Reg::R2);
    b.load(Size::B, Reg::R2, Reg::R10, proto);
    b.alu32(AluOp::Lsh, Reg::R2, 16).alu32(AluOp::Xor, Reg::R1, Reg::R2);
    b.mov32(Reg::R2, Reg::R1).alu32(AluOp::Rsh, Reg::R2, 16).alu32(AluOp::Xor, Reg::R1, Reg::R2);
    b.alu32(AluOp::Mul, Reg::R1, hint::MUL as i32);
    b.alu32(AluOp::Rsh, Reg::R1, (32 - hint::LOG2_BITS) as i32);
}

/// The negative filter: go to `clear` unless the `lb_hint` bit `which` of (`addr`, the
/// port at `port`, the protocol byte at `proto`) is set. The lookup (its key written to
/// the 4-byte stack slot `key`) is an array's and the kernel's verifier inlines it (no
/// helper call); the byte index is masked to the bitmap. A caller may run it on its own
/// tuple before it sets up the load balancer's frame ([`LbOptions::filtered`]).
/// Clobbers r0-r6.
pub fn emit_hint_filter(
    b: &mut Builder,
    which: Hint,
    addr: HintAddr,
    port: i16,
    proto: i16,
    key: i16,
    clear: Label,
) {
    let (element, what) = match which {
        Hint::Frontend => (hint::FRONTEND, "frontend? lb_hint[FRONTEND]"),
        Hint::Backend => (hint::BACKEND, "backend? lb_hint[BACKEND]"),
    };
    b.comment(format!("lb: a {what} bit h(addr, port, proto); clear: no entry (no hash lookup)"));
    emit_hint_bit(b, addr, port, proto);
    b.mov(Reg::R6, Reg::R1);
    b.store(Size::W, Reg::R10, key, element as i32);
    kit::map_lookup(b, map::LB_HINT, key);
    b.jmp(JmpCond::Eq, Reg::R0, 0, clear);
    b.mov(Reg::R1, Reg::R6).alu(AluOp::Rsh, Reg::R1, 3).alu(AluOp::And, Reg::R1, (hint::BYTES - 1) as i32);
    b.add(Reg::R0, Reg::R1);
    b.load(Size::B, Reg::R1, Reg::R0, 0);
    b.alu(AluOp::And, Reg::R6, 7);
    b.alu(AluOp::Rsh, Reg::R1, Reg::R6).alu(AluOp::And, Reg::R1, 1);
    b.jmp(JmpCond::Eq, Reg::R1, 0, clear);
}

/// [`emit_hint_filter`] on the frame's tuple (the [`LbFrame::SLOT`] slot for the key).
fn emit_hint_check(b: &mut Builder, f: LbFrame, which: Hint, clear: Label) {
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    let (addr, port) = match which {
        Hint::Frontend => (t(ct_key::DADDR), t(ct_key::DPORT)),
        Hint::Backend => (t(ct_key::SADDR), t(ct_key::SPORT)),
    };
    emit_hint_filter(b, which, HintAddr::Mapped(addr), port, t(ct_key::PROTO), f.at(LbFrame::SLOT), clear);
}

/// An `lb_ct` value's rewrite (at `at`: 16-byte address, 2-byte port, 6 bytes of padding,
/// as [`crate::maps::lb::LbCtValue`] lays them out) from the address and port on the stack.
fn emit_ct_rewrite(b: &mut Builder, at: i16, addr: i16, port: i16) {
    const _: () = assert!(ct_value::PORT == ct_value::ADDR + 16 && ct_value::SIZE == ct_value::PORT + 8);
    for half in [0i16, 8] {
        b.load(Size::DW, Reg::R1, Reg::R10, addr + half);
        b.store(Size::DW, Reg::R10, at + half, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R10, port);
    b.store(Size::DW, Reg::R10, at + 16, Reg::R1);
}

/// Copy the 16-byte address and 2-byte port of the map value in r0 to [`LbFrame::NEW`].
fn copy_addr_port(b: &mut Builder, f: LbFrame, addr: usize, port: usize) {
    for half in [0i16, 8] {
        b.load(Size::DW, Reg::R1, Reg::R0, addr as i16 + half);
        b.store(Size::DW, Reg::R10, f.at(LbFrame::NEW) + half, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R0, port as i16);
    b.store(Size::H, Reg::R10, f.at(LbFrame::NEW) + 16, Reg::R1);
}

/// The flow hash of the `u32` words at these stack offsets and the protocol byte, into r1
/// (32-bit arithmetic; clobbers r2, r3).
fn emit_hash(b: &mut Builder, words: &[i16], proto: i16) {
    b.mov32(Reg::R1, FLOW_HASH_SEED as i32);
    let mix = |b: &mut Builder| kit::flow_hash_word(b, Reg::R1, Reg::R2, Reg::R3);
    for &w in words {
        b.load(Size::W, Reg::R2, Reg::R10, w);
        mix(b);
    }
    b.load(Size::B, Reg::R2, Reg::R10, proto);
    mix(b);
    b.comment("fmix32");
    kit::fmix32(b, Reg::R1, Reg::R3);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Rewrite the packet's address and port on one side from the tuple's value to
/// [`LbFrame::NEW`]; a failing helper or bound goes to `fail`.
///
/// The bytes are written directly (the packet pointers reloaded, the offsets bounded); the
/// IPv4 header checksum is updated inline (RFC 1624, eqn. 3, on the little-endian loads:
/// one's complement sums commute with the byte swap). That is safe for every skb checksum
/// state: the header checksum is always complete, and the header's sum, address and
/// checksum together, does not change, so a `CHECKSUM_COMPLETE` `skb->csum` stays right.
/// The L4 checksum goes through `bpf_l4_csum_replace`, which alone knows the skb's state
/// (`CHECKSUM_PARTIAL` keeps only pseudo-header changes; `CHECKSUM_COMPLETE` moves
/// `skb->csum` with them). So an IPv4 DNAT with a port change is two helper calls.
fn emit_rewrite(b: &mut Builder, f: LbFrame, tag: &str, side: Side, new: i16, port: bool, fail: Label) {
    let mut id = |name: &str| b.new_label(&format!("{tag}_{name}"));
    let (is_v6, v4_port, v6_port, port_l, done) =
        (id("v6"), id("v4_port"), id("v6_port"), id("port"), id("done"));
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    let (old_addr, old_port, v4_off, v6_off, port_off) = match side {
        Side::Source => (t(ct_key::SADDR), t(ct_key::SPORT), V4_SRC, V6_SRC, L4_SPORT),
        Side::Destination => (t(ct_key::DADDR), t(ct_key::DPORT), V4_DST, V6_DST, L4_DPORT),
    };
    let ctx = f.at(LbFrame::CTX);
    let l4_csum = |b: &mut Builder, old: i16, new: i16, size: Size, skip: Label| {
        b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::CSUM));
        b.jmp(JmpCond::Eq, Reg::R2, 0, skip);
        b.load(Size::DW, Reg::R1, Reg::R10, ctx);
        b.load(size, Reg::R3, Reg::R10, old);
        b.load(size, Reg::R4, Reg::R10, new);
        b.load(Size::W, Reg::R5, Reg::R10, f.at(LbFrame::CSUM_FLAGS));
        b.alu(AluOp::Or, Reg::R5, if size == Size::W { 4 } else { 2 });
        if size == Size::H {
            b.alu(AluOp::And, Reg::R5, !BPF_F_PSEUDO_HDR);
        }
        b.call(L4_CSUM_REPLACE);
        b.jmp(JmpCond::Ne, Reg::R0, 0, fail);
    };
    b.comment("packet pointers again: r7 = L3, r6 = L4 (offsets bounded for the verifier)");
    b.load(Size::DW, Reg::R1, Reg::R10, ctx);
    emit_skb_packet_pointers(b, Reg::R1);
    b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::L3));
    b.jmp(JmpCond::Gt, Reg::R2, 255, fail);
    b.mov(Reg::R7, Reg::R8).add(Reg::R7, Reg::R2);
    b.load(Size::W, Reg::R3, Reg::R10, f.at(LbFrame::L4));
    b.jmp(JmpCond::Gt, Reg::R3, 255, fail);
    b.mov(Reg::R6, Reg::R8).add(Reg::R6, Reg::R3);
    guard(b, Reg::R6, 4, fail);
    b.load(Size::B, Reg::R1, Reg::R10, f.at(LbFrame::FAMILY));
    b.jmp(JmpCond::Eq, Reg::R1, 6, is_v6);
    b.comment("ipv4: header checksum += ~old + new, 16 bits at a time; then the address");
    guard(b, Reg::R7, ipv4::HEADER_LEN as i32, fail);
    b.load(Size::H, Reg::R1, Reg::R7, V4_CHECKSUM);
    b.alu(AluOp::Xor, Reg::R1, 0xffff);
    for (addr, invert) in [(old_addr + 12, true), (new + 12, false)] {
        b.load(Size::W, Reg::R2, Reg::R10, addr);
        b.mov(Reg::R3, Reg::R2).alu(AluOp::And, Reg::R3, 0xffff).alu(AluOp::Rsh, Reg::R2, 16);
        if invert {
            b.alu(AluOp::Xor, Reg::R2, 0xffff).alu(AluOp::Xor, Reg::R3, 0xffff);
        }
        b.add(Reg::R1, Reg::R2).add(Reg::R1, Reg::R3);
    }
    for _ in 0..2 {
        b.mov(Reg::R2, Reg::R1).alu(AluOp::Rsh, Reg::R2, 16).alu(AluOp::And, Reg::R1, 0xffff);
        b.add(Reg::R1, Reg::R2);
    }
    b.alu(AluOp::Xor, Reg::R1, 0xffff);
    b.store(Size::H, Reg::R7, V4_CHECKSUM, Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R10, new + 12);
    b.store(Size::W, Reg::R7, v4_off, Reg::R1);
    b.comment("the port (never changed for SCTP: see the model); then the L4 checksum helpers");
    if port {
        emit_port_store(b, old_port, new + 16, port_off, v4_port);
    }
    l4_csum(b, old_addr + 12, new + 12, Size::W, port_l);
    b.ja(port_l);
    b.place(is_v6).comment("ipv6: the address (no header checksum)");
    guard(b, Reg::R7, ipv6::HEADER_LEN as i32, fail);
    for word in [0i16, 4, 8, 12] {
        b.load(Size::W, Reg::R1, Reg::R10, new + word);
        b.store(Size::W, Reg::R7, v6_off + word, Reg::R1);
    }
    if port {
        emit_port_store(b, old_port, new + 16, port_off, v6_port);
    }
    b.comment("the pseudo-header: one diff (new + ~old over the four words), BPF_F_IPV6 so that");
    b.comment("a CHECKSUM_COMPLETE skb->csum is left alone (the IPv6 header it covers changed too)");
    b.load(Size::W, Reg::R2, Reg::R10, f.at(LbFrame::CSUM));
    b.jmp(JmpCond::Eq, Reg::R2, 0, port_l);
    b.mov(Reg::R4, 0);
    for word in [0i16, 4, 8, 12] {
        b.load(Size::W, Reg::R1, Reg::R10, new + word).add(Reg::R4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, old_addr + word);
        b.alu32(AluOp::Xor, Reg::R1, -1).add(Reg::R4, Reg::R1);
    }
    for _ in 0..2 {
        b.mov(Reg::R1, Reg::R4).alu(AluOp::Rsh, Reg::R1, 32).mov32(Reg::R4, Reg::R4).add(Reg::R4, Reg::R1);
    }
    b.load(Size::DW, Reg::R1, Reg::R10, ctx);
    b.mov(Reg::R3, 0);
    b.load(Size::W, Reg::R5, Reg::R10, f.at(LbFrame::CSUM_FLAGS));
    b.alu(AluOp::Or, Reg::R5, BPF_F_IPV6);
    b.call(L4_CSUM_REPLACE);
    b.jmp(JmpCond::Ne, Reg::R0, 0, fail);
    b.place(port_l);
    if port {
        b.comment("the port's share of the L4 checksum, when it changed");
        b.load(Size::H, Reg::R1, Reg::R10, old_port);
        b.load(Size::H, Reg::R2, Reg::R10, new + 16);
        b.jmp(JmpCond::Eq, Reg::R1, Reg::R2, done);
        l4_csum(b, old_port, new + 16, Size::H, done);
        b.place(done);
    }
}

/// `*(u16 *)(r6 + off) = new port` when it differs from the old one (r6 = the L4 header,
/// checked for 4 bytes).
fn emit_port_store(b: &mut Builder, old: i16, new: i16, off: i16, skip: Label) {
    b.load(Size::H, Reg::R1, Reg::R10, old);
    b.load(Size::H, Reg::R2, Reg::R10, new);
    b.jmp(JmpCond::Eq, Reg::R1, Reg::R2, skip);
    b.store(Size::H, Reg::R6, off, Reg::R2);
    b.place(skip);
}

/// Header fields the rewrites write, from `packet::*::field`: IPv4 and IPv6 addresses, the
/// IPv4 header checksum, and the ports every L4 header this balancer handles starts with.
const V4_SRC: i16 = ipv4::SRC_ADDR.start as i16;
const V4_DST: i16 = ipv4::DST_ADDR.start as i16;
const V4_CHECKSUM: i16 = ipv4::CHECKSUM.start as i16;
const V6_SRC: i16 = ipv6::SRC_ADDR.start as i16;
const V6_DST: i16 = ipv6::DST_ADDR.start as i16;
const L4_PORTS: i16 = crate::packet::udp::field::SRC_PORT.start as i16;
const L4_SPORT: i16 = crate::packet::udp::field::SRC_PORT.start as i16;
const L4_DPORT: i16 = crate::packet::udp::field::DST_PORT.start as i16;

/// The standalone tc program `lb` (see the module header).
pub fn generate() -> Result<Program, CodegenError> {
    generate_with(LbOptions::default())
}

/// [`generate`] with explicit switches.
pub fn generate_with(options: LbOptions) -> Result<Program, CodegenError> {
    generate_in(options, LbFrame { base: 0 })
}

/// [`generate_with`] with the frame at `frame.base` (a caller's layout; tests check that the
/// emitter works at any base).
pub fn generate_in(options: LbOptions, f: LbFrame) -> Result<Program, CodegenError> {
    let t = |off: usize| f.at(LbFrame::TUPLE) + off as i16;
    let mut b = Builder::new();
    let exit = b.new_label("exit");
    let v =
        VerdictSites::new(&mut b, [LbReason::PassNotIp, LbReason::PassNotL4, LbReason::PassMalformed], exit);
    let (malformed, not_l4) = (v.of(LbReason::PassMalformed), v.of(LbReason::PassNotL4));
    let [ipv4, ipv6, l4] = ["ipv4", "ipv6", "l4"].map(|n| b.new_label(n));
    f.declare(&mut b);
    b.comment("tc service load balancer: keep ctx; zero the tuple; r8 = data, r9 = data_end");
    b.store(Size::DW, Reg::R10, f.at(LbFrame::CTX), Reg::R1);
    for i in 0..5 {
        b.store(Size::DW, Reg::R10, t(0) + 8 * i, 0);
    }
    emit_skb_packet_pointers(&mut b, Reg::R1);
    emit_ethernet(
        &mut b,
        EthLabels {
            ipv4,
            ipv6,
            not_ip: v.of(LbReason::PassNotIp),
            truncated_ethernet: malformed,
            truncated_vlan: malformed,
            vlan_too_deep: malformed,
        },
    );

    b.place(ipv4).comment("ipv4: header with options; later fragments pass; r6 = the L4 header");
    kit::ipv4_header(&mut b, Reg::R6, Ipv4Checks { truncated: malformed, malformed, whole_header: false });
    b.comment(
        "a fragment (more fragments, or an offset): flags and offset, as a little-endian load sees them",
    );
    b.load(Size::H, Reg::R1, Reg::R7, ipv4::FLG_OFF.start as i16);
    b.alu(AluOp::And, Reg::R1, 0xff1f);
    b.jmp(JmpCond::Ne, Reg::R1, 0, not_l4);
    b.comment("the tuple: IPv4-mapped addresses, protocol");
    for (field, off) in
        [(ct_key::SADDR, ipv4::SRC_ADDR.start as i16), (ct_key::DADDR, ipv4::DST_ADDR.start as i16)]
    {
        b.store(Size::W, Reg::R10, t(field) + 8, V4_MAPPED_WORD as i32);
        b.load(Size::W, Reg::R1, Reg::R7, off).store(Size::W, Reg::R10, t(field) + 12, Reg::R1);
    }
    b.load(Size::B, Reg::R1, Reg::R7, ipv4::PROTOCOL as i16);
    b.store(Size::B, Reg::R10, f.at(LbFrame::FAMILY), 4);
    b.ja(l4);

    b.place(ipv6).comment("ipv6: fixed header only (an extension header passes untouched)");
    kit::ipv6_header(&mut b, malformed, malformed);
    for i in 0..4usize {
        let off = (ipv6::SRC_ADDR.start + 8 * i) as i16;
        b.load(Size::DW, Reg::R1, Reg::R7, off).store(Size::DW, Reg::R10, t(0) + 8 * i as i16, Reg::R1);
    }
    b.load(Size::B, Reg::R1, Reg::R7, ipv6::NXT_HDR as i16);
    b.mov(Reg::R6, Reg::R7).add(Reg::R6, ipv6::HEADER_LEN as i32);
    b.store(Size::B, Reg::R10, f.at(LbFrame::FAMILY), 6);

    b.place(l4).comment("r1 = protocol: tcp (20 bytes), udp (8), sctp (12); offsets for the helpers");
    b.store(Size::B, Reg::R10, t(ct_key::PROTO), Reg::R1);
    kit::l4_whole_header(&mut b, Reg::R1, Reg::R6, malformed, Some(not_l4), "");
    b.load(Size::W, Reg::R1, Reg::R6, 0).store(Size::W, Reg::R10, t(ct_key::SPORT), Reg::R1);
    b.mov(Reg::R1, Reg::R7).alu(AluOp::Sub, Reg::R1, Reg::R8);
    b.store(Size::W, Reg::R10, f.at(LbFrame::L3), Reg::R1);
    b.mov(Reg::R1, Reg::R6).alu(AluOp::Sub, Reg::R1, Reg::R8);
    b.store(Size::W, Reg::R10, f.at(LbFrame::L4), Reg::R1);

    emit_service_lb(&mut b, f, LbLabels { prefix: "lb_", exit }, options);

    v.emit(&mut b);
    emit_count_and_exit(&mut b, exit, map::LB_STATS);
    b.build().map(crate::mutate::program_seam).map_err(|source| CodegenError::Build { object: "lb", source })
}

/// The maps the program uses: the load-balancing maps (with the `lb_hint` filters) and
/// `lb_stats`.
pub fn map_defs() -> Vec<crate::maps::MapDef> {
    let mut defs: Vec<crate::maps::MapDef> = crate::maps::lb::map_defs()
        .into_iter()
        .filter(|d| {
            [map::LB_SVC, map::LB_SLOT, map::LB_BE, map::LB_CT, map::LB_CT4, map::LB_AFF, map::LB_HINT]
                .contains(&d.name)
        })
        .collect();
    defs.push(crate::maps::lb::stats_def());
    defs
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_asm::helpers::MAP_UPDATE_ELEM;

    #[test]
    fn generates_deterministically() {
        let a = generate().expect("generates");
        let b = generate().expect("generates");
        assert_eq!(sluice_asm::text::listing(&a), sluice_asm::text::listing(&b));
    }

    #[test]
    fn the_frame_can_sit_anywhere_in_the_stack() {
        let specs: Vec<_> = map_defs().iter().map(crate::maps::MapDef::sim_spec).collect();
        for base in [-8i16, -136, LbFrame::SIZE - 512] {
            let prog = generate_in(LbOptions::default(), LbFrame { base }).expect("generates");
            let kind = sluice_verifier_sim::spec::ProgKind::SchedCls;
            if let Err(e) = sluice_verifier_sim::verifier::verify(&prog, kind, &specs) {
                panic!("frame at {base}: {e}");
            }
        }
    }

    #[test]
    fn every_path_choice_passes_the_simulated_verifier() {
        let specs: Vec<_> = map_defs().iter().map(crate::maps::MapDef::sim_spec).collect();
        for paths in [LbPaths::Both, LbPaths::ForwardOnly, LbPaths::ReplyOnly, LbPaths::HairpinReply] {
            for reset in [ResetVia::Egress, ResetVia::Peer] {
                for conntrack in [true, false] {
                    let o = LbOptions { conntrack, paths, reset, filtered: false };
                    let prog = generate_with(o).expect("generates");
                    let kind = sluice_verifier_sim::spec::ProgKind::SchedCls;
                    if let Err(e) = sluice_verifier_sim::verifier::verify(&prog, kind, &specs) {
                        panic!("{o:?}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn one_path_leaves_the_other_out() {
        let calls = |o: LbOptions, helper: i32| {
            let prog = generate_with(o).expect("generates");
            sluice_asm::text::listing(&prog).matches(&format!("#{helper}\n")).count()
        };
        let o = LbOptions::default();
        let reply = LbOptions { paths: LbPaths::ReplyOnly, ..o };
        let forward = LbOptions { paths: LbPaths::ForwardOnly, reset: ResetVia::Peer, ..o };
        assert_eq!(calls(reply, MAP_UPDATE_ELEM), 0, "the reply path writes no lb_ct entry");
        assert_eq!(calls(reply, REDIRECT) + calls(reply, REDIRECT_PEER), 0, "nor resets");
        assert_eq!(calls(forward, REDIRECT), 0);
        assert_eq!(calls(forward, REDIRECT_PEER), 1, "the reset goes to the peer");
        let listing = sluice_asm::text::listing(&generate_with(forward).expect("generates"));
        assert!(!listing.contains("REPLY]"), "no reply lookup on the forward path");
        assert!(listing.contains("hairpin: the backend is the client"), "the hairpin source rewrite");
        let hairpin_reply = LbOptions { paths: LbPaths::HairpinReply, ..o };
        assert_eq!(calls(hairpin_reply, MAP_UPDATE_ELEM), 0, "the hairpin reply path writes no lb_ct entry");
        let listing = |o| sluice_asm::text::listing(&generate_with(o).expect("generates"));
        assert!(listing(hairpin_reply).contains("hairpin reply (to the hairpin address)"));
        assert!(!listing(reply).contains("hairpin"), "a client's reply path has no hairpin half");
    }

    /// The datapath's `lb_hint` bit (`emit_hint_bit`, run in the simulator) is
    /// `maps::lb::hint_bit`, IPv4 and IPv6, every protocol, ports with either byte set.
    #[test]
    fn hint_bit_in_bpf_is_the_rust_definition() {
        use crate::maps::lb::hint_bit;
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let addrs: [IpAddr; 5] = [
            Ipv4Addr::new(10, 96, 0, 10).into(),
            Ipv4Addr::new(10, 244, 3, 200).into(),
            Ipv4Addr::new(255, 255, 255, 255).into(),
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 1, 2, 3, 0xfffe, 0x8000).into(),
        ];
        let mut maps = sluice_verifier_sim::maps::MapSet::new(&[], 1).expect("no maps");
        for addr in addrs {
            for port in [0u16, 80, 443, 8080, 0xff01] {
                for proto in [6u8, 17, 132] {
                    // The 16-byte form (the load balancer's tuple) and, for IPv4, the
                    // 4-byte one (an endpoint's conntrack tuple).
                    let key = crate::maps::fwd::addr_key(addr);
                    let mut forms = vec![(HintAddr::Mapped(-40), key.to_vec())];
                    if let IpAddr::V4(v4) = addr {
                        forms.push((HintAddr::V4(-40), v4.octets().to_vec()));
                    }
                    for (form, bytes) in forms {
                        let mut b = Builder::new();
                        for (i, w) in bytes.chunks_exact(4).enumerate() {
                            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                            b.store(Size::W, Reg::R10, -40 + 4 * i as i16, word as i32);
                        }
                        b.store(Size::H, Reg::R10, -24, i32::from(u16::from_le_bytes(port.to_be_bytes())));
                        b.store(Size::B, Reg::R10, -22, i32::from(proto));
                        emit_hint_bit(&mut b, form, -24, -22);
                        b.mov(Reg::R0, Reg::R1).exit();
                        let prog = b.build().expect("builds");
                        let out =
                            sluice_verifier_sim::exec::run_tc(&prog, &[0u8; 64], &mut maps).expect("runs");
                        assert_eq!(
                            out.retval,
                            u64::from(hint_bit(addr, port, proto)),
                            "{addr} ({form:?}) port {port} proto {proto}"
                        );
                    }
                }
            }
        }
    }

    /// A packet that is not service traffic makes no hash-map call: the filters are array
    /// lookups of a constant key (inlined by the kernel), so on a miss only `lb_hint`
    /// lookups run before `pass_no_service`.
    #[test]
    fn filters_come_before_every_hash_lookup() {
        for paths in [LbPaths::Both, LbPaths::ForwardOnly, LbPaths::ReplyOnly, LbPaths::HairpinReply] {
            let o = LbOptions { paths, ..LbOptions::default() };
            let listing = sluice_asm::text::listing(&generate_with(o).expect("generates"));
            let first_hash =
                [map::LB_SVC, map::LB_CT].iter().filter_map(|m| listing.find(m)).min().expect("lookups");
            let first_hint = listing.find(map::LB_HINT).expect("a filter");
            assert!(first_hint < first_hash, "{paths:?}: a hash lookup before the filter");
        }
    }

    #[test]
    fn both_shapes_pass_the_simulated_verifier() {
        let specs: Vec<_> = map_defs().iter().map(crate::maps::MapDef::sim_spec).collect();
        for conntrack in [true, false] {
            let prog = generate_with(LbOptions { conntrack, ..LbOptions::default() }).expect("generates");
            let kind = sluice_verifier_sim::spec::ProgKind::SchedCls;
            if let Err(e) = sluice_verifier_sim::verifier::verify(&prog, kind, &specs) {
                panic!("conntrack {conntrack}: {e}");
            }
        }
    }
}
