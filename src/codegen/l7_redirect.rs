//! The L7 redirect inside the endpoint programs: connections a policy entry with a proxy
//! port allows go to `sluice proxy`'s transparent listener, after the L3/L4 decision.
//!
//! Why inside the endpoint programs (and not the standalone [`super::to_proxy`] in front of
//! them): the redirect must follow the policy entry that allowed the connection, so it runs
//! after `from-endpoint`'s anti-spoofing, conntrack and policy lookup and only where they
//! allowed; a packet they drop never reaches the proxy. The assign path is emitted inline
//! (two blocks per family, about 60 instructions) rather than tail-called: a tail call would
//! need the tuple, proxy port and frame handed over through `cb[]` and a program-array slot
//! per node, and the endpoint programs already hold the tuple on their stack.
//!
//! Contract (IPv4 TCP, `from-endpoint`: the client's side, egress rules):
//! 1. A NEW connection allowed by an entry whose `proxy_port` is not 0 ([`emit_entry_check`]:
//!    two instructions on the allow of a new connection, none on established packets of
//!    other connections) must be a bare SYN; the proxy's listener `0.0.0.0:proxy_port` is
//!    looked up (`bpf_sk_lookup_tcp`), the connection is tracked with
//!    [`ct_value::PROXIED`] and the SYN is assigned to the listener (`bpf_sk_assign`),
//!    marked [`MARK_TO_PROXY`] (the node's policy routing delivers it locally,
//!    `crate::proxy::route`) and returned `TCX_NEXT` (to the stack; it is not forwarded).
//!    Counted `allow_new`. No listener (no proxy running), a failed assign, or a packet that
//!    is not a bare SYN: dropped, counted `deny_policy`, no conntrack entry: L7 policy fails
//!    closed.
//! 2. An established packet whose conntrack entry has [`ct_value::PROXIED`] (the client's
//!    side of a proxied connection) or [`ct_value::PROXY_UPSTREAM`] (a reply to the proxy's
//!    upstream connection, which leaves from the client's address) goes to the socket its
//!    tuple names (`bpf_skc_lookup_tcp`, not listening, not in TIME_WAIT), marked and
//!    returned as in 1, counted `allow_established`; no such socket (the proxy is gone):
//!    dropped, `deny_policy`. Two instructions on every established packet of
//!    `from-endpoint` ([`emit_established_check`]).
//! 3. `to-endpoint` recognises the proxy's upstream connections by their mark
//!    ([`crate::proxy::MARK_FROM_PROXY`], set by the proxy with `SO_MARK`; marks do not
//!    cross from an endpoint's namespace) on a new connection and tracks them with
//!    [`ct_value::PROXY_UPSTREAM`] ([`emit_note_upstream`], [`emit_ct_flags`]); they are
//!    judged by the destination's ingress policy like any other connection, with the
//!    client's identity (the upstream leaves from the client's address), and never
//!    redirected again.
//! 4. Not yet, and failing closed: an entry with a proxy port in `to-endpoint` (ingress
//!    rules: the server's side; `bpf_sk_assign` works only at tc ingress, and the packet is
//!    at the server veth's egress there) and IPv6 connections allowed by an entry with a
//!    proxy port are dropped, `deny_policy`; `crate::model::warnings` says so for ingress
//!    rules.

use super::to_proxy::MARK_TO_PROXY;
use crate::maps::policy::{ct_value, timeout, CtState, Reason, TC_ACT_SHOT};
use crate::uapi::{TCP_ACK, TCP_SYN};
use sluice_asm::helpers::{KTIME_GET_COARSE_NS, SKC_LOOKUP_TCP, SK_ASSIGN, SK_LOOKUP_TCP, SK_RELEASE};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Reg, Size, Target};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::SkBuff;

/// `offsetof(struct bpf_sock, state)` (see [`super::to_proxy`]).
const BPF_SOCK_STATE: i16 = 72;
/// `BPF_TCP_TIME_WAIT`, `BPF_TCP_LISTEN`.
const TCP_TIME_WAIT: i32 = 6;
const TCP_LISTEN: i32 = 10;
/// `BPF_F_CURRENT_NETNS`.
const CURRENT_NETNS: i32 = -1;
/// `TCX_NEXT`: to the next tcx program, the stack when there is none (an assigned packet
/// must reach the stack, not the endpoint programs' forwarding).
const TCX_NEXT: i32 = -1;
/// `sizeof(struct bpf_sock_tuple.ipv4)`: saddr, daddr, sport, dport (the `ct4` key's first
/// 12 bytes are exactly this).
const TUPLE4_LEN: i32 = 12;
const TUPLE4_DPORT: i16 = 10;
const SKB_MARK: i16 = ctx_off!(SkBuff, mark);

/// The endpoint programs' stack slots this code uses (offsets from r10).
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    /// The saved context pointer.
    pub ctx: i16,
    /// The packet's `ct4` key (its first 12 bytes are the socket tuple).
    pub ct: i16,
    /// A conntrack value being built (free on the new-connection path).
    pub ctv: i16,
    /// 12 free bytes for the listener's tuple (free after the conntrack lookups).
    pub scratch: i16,
    /// The packet's TCP flags byte.
    pub tcp_flags: i16,
    /// One byte, zeroed at entry: conntrack flags a new connection's entry gets.
    pub stash: i16,
}

/// The two blocks of one family, placed by [`emit_blocks`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Labels {
    /// A new connection allowed with a proxy port (r2 = the port as the entry holds it,
    /// network order).
    pub new: Label,
    /// An established packet of a proxied or upstream connection.
    pub established: Label,
}

impl Labels {
    pub fn new(b: &mut Builder) -> Labels {
        Labels { new: b.new_label("l7_new_connection"), established: b.new_label("l7_established") }
    }
}

/// On an allow: `r2 = entry's proxy port` (at `entry + off`); not 0 goes to `labels.new`.
pub(super) fn emit_entry_check(b: &mut Builder, entry: Reg, off: i16, labels: &Labels) {
    b.load(Size::H, Reg::R2, entry, off);
    b.jmp(JmpCond::Ne, Reg::R2, 0, labels.new);
}

/// On a live conntrack entry (`entry`): a proxied or upstream connection goes to
/// `labels.established` (clobbers r1).
pub(super) fn emit_established_check(b: &mut Builder, entry: Reg, labels: &Labels) {
    b.load(Size::B, Reg::R1, entry, ct_value::FLAGS as i16);
    b.jmp(JmpCond::Set, Reg::R1, i32::from(ct_value::PROXIED | ct_value::PROXY_UPSTREAM), labels.established);
}

/// `to-endpoint`, a new connection: the proxy's own upstream connection (its mark) is
/// tracked as such (clobbers r1).
pub(super) fn emit_note_upstream(b: &mut Builder, frame: &Frame) {
    b.comment("the L7 proxy's upstream connection (its mark): replies go back to its socket");
    let not_proxy = b.new_label("not_from_proxy");
    b.load(Size::DW, Reg::R1, Reg::R10, frame.ctx);
    b.load(Size::W, Reg::R1, Reg::R1, SKB_MARK);
    b.alu32(AluOp::And, Reg::R1, super::overlay::MARK_MAGIC_MASK as i32);
    b.jmp(JmpCond::Ne, Reg::R1, crate::proxy::MARK_FROM_PROXY as i32, not_proxy);
    b.store(Size::B, Reg::R10, frame.stash, i32::from(ct_value::PROXY_UPSTREAM));
    b.place(not_proxy);
}

/// In the conntrack entry being created: the flags noted for it (clobbers r1).
pub(super) fn emit_ct_flags(b: &mut Builder, frame: &Frame) {
    b.load(Size::B, Reg::R1, Reg::R10, frame.stash);
    b.store(Size::B, Reg::R10, frame.ctv + ct_value::FLAGS as i16, Reg::R1);
}

/// Which program and family the blocks are for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Where {
    /// `from-endpoint` (tc ingress of the host-side veth, where `bpf_sk_assign` works).
    pub from_endpoint: bool,
    pub ipv4: bool,
    /// The family's conntrack map.
    pub ct_map: &'static str,
}

/// `r6 = reason, r7 = verdict; goto exit`.
fn verdict(b: &mut Builder, reason: Reason, verdict: i32, exit: &Target) {
    b.mov(Reg::R6, reason as i32).mov(Reg::R7, verdict);
    b.ja(exit.clone());
}

/// Mark the packet for local delivery and end as `reason` with `TCX_NEXT`.
fn assigned(b: &mut Builder, frame: &Frame, reason: Reason, exit: &Target) {
    b.load(Size::DW, Reg::R1, Reg::R10, frame.ctx);
    b.mov(Reg::R2, MARK_TO_PROXY as i32);
    b.store(Size::W, Reg::R1, SKB_MARK, Reg::R2);
    verdict(b, reason, TCX_NEXT, exit);
}

/// `r0 = lookup(ctx, r10 + tuple, 12, current netns, 0)` with `helper`.
fn lookup(b: &mut Builder, frame: &Frame, helper: i32, tuple: i16) {
    b.load(Size::DW, Reg::R1, Reg::R10, frame.ctx);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(tuple));
    b.mov(Reg::R3, TUPLE4_LEN).mov(Reg::R4, CURRENT_NETNS).mov(Reg::R5, 0);
    b.call(helper);
}

/// `r8 = sk_assign(ctx, r9, 0)`, then release r9's reference.
fn assign_release(b: &mut Builder, frame: &Frame) {
    b.load(Size::DW, Reg::R1, Reg::R10, frame.ctx);
    b.mov(Reg::R2, Reg::R9).mov(Reg::R3, 0);
    b.call(SK_ASSIGN);
    b.mov(Reg::R8, Reg::R0);
    b.mov(Reg::R1, Reg::R9).call(SK_RELEASE);
}

/// Place `labels`' blocks (see the module contract); `exit` is the endpoint program's exit
/// (r6 = reason, r7 = verdict).
pub(super) fn emit_blocks(
    b: &mut Builder,
    frame: &Frame,
    at: Where,
    labels: &Labels,
    exit: impl Into<Target>,
) {
    let exit = exit.into();
    let deny = b.new_label("l7_deny");
    b.place(labels.new);
    if !at.from_endpoint || !at.ipv4 {
        b.comment("L7 redirect: not here yet (ingress rules, IPv6): fail closed");
        b.place(labels.established);
        b.place(deny);
        verdict(b, Reason::DenyPolicy, TC_ACT_SHOT, &exit);
        return;
    }
    b.comment("L7 redirect, a new connection (r2 = proxy port): a bare SYN to the proxy's listener");
    b.load(Size::B, Reg::R3, Reg::R10, frame.tcp_flags);
    b.alu(AluOp::And, Reg::R3, TCP_SYN | TCP_ACK);
    b.jmp(JmpCond::Ne, Reg::R3, TCP_SYN, deny);
    b.store(Size::DW, Reg::R10, frame.scratch, 0);
    b.store(Size::W, Reg::R10, frame.scratch + 8, 0);
    b.store(Size::H, Reg::R10, frame.scratch + TUPLE4_DPORT, Reg::R2);
    lookup(b, frame, SK_LOOKUP_TCP, frame.scratch);
    b.comment("no listener: no proxy runs; fail closed");
    b.jmp(JmpCond::Eq, Reg::R0, 0, deny);
    b.mov(Reg::R9, Reg::R0);
    b.comment("track it as proxied: its later packets go to the proxy's socket too");
    for off in (0..ct_value::SIZE as i16).step_by(8) {
        b.store(Size::DW, Reg::R10, frame.ctv + off, 0);
    }
    b.call(KTIME_GET_COARSE_NS);
    b.ld_imm64(Reg::R2, timeout::TCP_SYN);
    b.add(Reg::R0, Reg::R2);
    b.store(Size::DW, Reg::R10, frame.ctv + ct_value::EXPIRES as i16, Reg::R0);
    b.store(Size::B, Reg::R10, frame.ctv + ct_value::STATE as i16, CtState::SynSent as i32);
    b.store(Size::B, Reg::R10, frame.ctv + ct_value::FLAGS as i16, i32::from(ct_value::PROXIED));
    b.load(Size::H, Reg::R1, Reg::R10, frame.scratch + TUPLE4_DPORT);
    b.store(Size::H, Reg::R10, frame.ctv + ct_value::PROXY_PORT as i16, Reg::R1);
    b.store(Size::DW, Reg::R10, frame.ctv + ct_value::PACKETS as i16, 1);
    super::kit::map_update(b, at.ct_map, frame.ct, frame.ctv, super::kit::BPF_ANY);
    assign_release(b, frame);
    b.jmp(JmpCond::Ne, Reg::R8, 0, deny);
    assigned(b, frame, Reason::AllowNew, &exit);

    b.place(labels.established);
    b.comment("L7 redirect, established: the proxy's socket for this tuple takes the packet");
    lookup(b, frame, SKC_LOOKUP_TCP, frame.ct);
    b.jmp(JmpCond::Eq, Reg::R0, 0, deny);
    b.mov(Reg::R9, Reg::R0);
    let not_live = b.new_label("l7_not_live");
    b.load(Size::W, Reg::R2, Reg::R9, BPF_SOCK_STATE);
    b.jmp(JmpCond::Eq, Reg::R2, TCP_LISTEN, not_live);
    b.jmp(JmpCond::Eq, Reg::R2, TCP_TIME_WAIT, not_live);
    assign_release(b, frame);
    b.jmp(JmpCond::Ne, Reg::R8, 0, deny);
    assigned(b, frame, Reason::AllowEstablished, &exit);
    b.place(not_live);
    b.mov(Reg::R1, Reg::R9).call(SK_RELEASE);
    b.place(deny);
    b.comment("the proxy is not there (or not for this packet): fail closed");
    verdict(b, Reason::DenyPolicy, TC_ACT_SHOT, &exit);
}
