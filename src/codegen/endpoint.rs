//! Endpoint policy: the tc programs on the host side of an endpoint's veth.
//!
//! `from-endpoint` (tc ingress of the host-side veth) enforces the endpoint's egress policy;
//! `to-endpoint` (tc egress) its ingress policy. Each program is generated for one endpoint
//! (its index is a constant) and one direction. Per packet:
//!
//! 1. Parse Ethernet (≤ 2 VLAN tags), IPv4 (header with options) and TCP/UDP/SCTP ports,
//!    ICMP type and echo id; everything the rest needs is copied to the stack.
//! 2. `from-endpoint` only: anti-spoofing, before anything else: the source must be the
//!    endpoint's own address (`ep_config`).
//! 3. Later IPv4 fragments follow the verdict their first fragment left in `frag4`.
//! 4. ICMP errors pass when their quoted packet belongs to a tracked connection.
//! 5. Conntrack: the tuple in this direction, then the reversed tuple in the opposite one
//!    (a reply; see [`crate::maps::policy::ct4_key`]). A live entry passes without a policy
//!    lookup; its TCP state and expiry advance.
//! 6. New connection: if policy is enforced in this direction, the peer's identity from the
//!    ipcache, then the policy trie for that identity and for "any identity" (any deny
//!    wins); an allowed connection gets a conntrack entry (and a `frag4` entry when it is a
//!    first fragment).
//! 7. Every verdict is counted per endpoint and reason in `ep_stats`; drops and new
//!    allowed connections become ring-buffer events when `ev_config` says so, within a
//!    per-CPU rate budget.
//!
//! IPv6 is parsed and judged the same way with `ct6` and the `ipc_v6` trie; extension
//! headers before the transport header make the packet "malformed" for now (documented
//! limitation), except that non-IP frames pass.

use super::{emit_ethernet, guard, CodegenError, EthLabels};
use crate::maps::policy::{
    ct4_key, ct_value, ep_config, ev_budget, ev_config, event, policy_key, policy_value, timeout, CtState,
    Reason, EGRESS, INGRESS, IPC_CHILD, TC_ACT_OK, TC_ACT_SHOT, WORLD,
};
use sluice_asm::helpers::{KTIME_GET_NS, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, RINGBUF_OUTPUT};
use sluice_asm::{AluOp, AtomicOp, Builder, Insn, JmpCond, Program, Reg, Size};

/// Which side of the endpoint a program enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic the endpoint sends: its egress policy (tc ingress of the host-side veth).
    FromEndpoint,
    /// Traffic to the endpoint: its ingress policy (tc egress of the host-side veth).
    ToEndpoint,
}

impl Direction {
    /// The policy direction this program enforces.
    pub fn policy_dir(self) -> u8 {
        match self {
            Direction::FromEndpoint => EGRESS,
            Direction::ToEndpoint => INGRESS,
        }
    }

    /// The program's name for endpoint `ep`.
    pub fn program_name(self, ep: u16) -> String {
        match self {
            Direction::FromEndpoint => format!("from_ep_{ep}"),
            Direction::ToEndpoint => format!("to_ep_{ep}"),
        }
    }
}

// The stack frame (offsets from r10).
/// `u32` scratch key for array lookups.
const FP_KEY: i16 = -4;
/// The packet's tuple as a `ct4` key (16 bytes).
const FP_CT: i16 = -24;
/// The reversed tuple (16 bytes); also the quoted tuple of an ICMP error.
const FP_CTR: i16 = -40;
/// The policy key (16 bytes).
const FP_POL: i16 = -56;
/// A conntrack value being created (32 bytes).
const FP_CTV: i16 = -88;
/// The `frag4` key (16 bytes); also the reversed quoted tuple of an ICMP error.
const FP_FRAG: i16 = -104;
/// TCP flags (u8), more-fragments flag (u8 at +1), policy port (u16 BE at +2), the
/// endpoint's own identity (u32 at +4).
const FP_MISC: i16 = -112;
/// The event record being sent.
const FP_EV: i16 = -176;

const TCP_FIN: i32 = 0x01;
const TCP_SYN: i32 = 0x02;
const TCP_RST: i32 = 0x04;
const TCP_ACK: i32 = 0x10;

const IPPROTO_ICMP: i32 = 1;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const IPPROTO_SCTP: i32 = 132;

fn label(r: Reason) -> &'static str {
    r.name()
}

/// Code generation switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Track connections (the datapath always does; `false` exists to time the policy
    /// path of a new connection in isolation, as `sluice bench` does).
    pub conntrack: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { conntrack: true }
    }
}

/// Generate the program of endpoint `ep` for one direction.
pub fn generate(ep: u16, dir: Direction) -> Result<Program, CodegenError> {
    generate_with(ep, dir, Options::default())
}

/// [`generate`] with explicit switches.
pub fn generate_with(ep: u16, dir: Direction, options: Options) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    let g = Gen { ep, dir, options };
    g.emit_entry(&mut b);
    emit_ethernet(
        &mut b,
        EthLabels {
            ipv4: "ipv4",
            ipv6: "ipv6",
            not_ip: label(Reason::AllowNotIp),
            truncated_ethernet: label(Reason::DenyTruncated),
            truncated_vlan: label(Reason::DenyTruncated),
            vlan_too_deep: label(Reason::DenyMalformed),
        },
    );
    g.emit_ipv4(&mut b);
    g.emit_ipv6(&mut b);
    g.emit_conntrack(&mut b);
    g.emit_new_connection(&mut b);
    for r in Reason::ALL {
        b.label(label(r)).comment(format!("verdict: {}", r.name()));
        let verdict = if r.allows() { TC_ACT_OK } else { TC_ACT_SHOT };
        b.mov(Reg::R6, r as i32).mov(Reg::R7, verdict).ja("exit");
    }
    g.emit_exit(&mut b);
    b.build().map_err(|source| CodegenError::Build { object: "endpoint", source })
}

struct Gen {
    ep: u16,
    dir: Direction,
    options: Options,
}

impl Gen {
    fn emit_entry(&self, b: &mut Builder) {
        b.comment(format!("endpoint {} {:?}: r8 = data, r9 = data_end", self.ep, self.dir));
        b.load(Size::W, Reg::R8, Reg::R1, 76);
        b.load(Size::W, Reg::R9, Reg::R1, 80);
        b.comment("zero what the exit block may read on any path");
        for off in [FP_CT, FP_CT + 8, FP_POL, FP_POL + 8, FP_MISC] {
            b.store(Size::DW, Reg::R10, off, 0);
        }
    }

    fn emit_ipv4(&self, b: &mut Builder) {
        let trunc = label(Reason::DenyTruncated);
        let malformed = label(Reason::DenyMalformed);
        b.label("ipv4").comment("ipv4: header with options; r8 = transport header");
        guard(b, Reg::R7, 20, trunc);
        b.load(Size::B, Reg::R2, Reg::R7, 0);
        b.mov(Reg::R3, Reg::R2).alu(AluOp::And, Reg::R3, 0xf0);
        b.jmp(JmpCond::Ne, Reg::R3, 0x40, malformed);
        b.alu(AluOp::And, Reg::R2, 0x0f);
        b.jmp(JmpCond::Lt, Reg::R2, 5, malformed);
        b.alu(AluOp::Lsh, Reg::R2, 2);
        b.mov(Reg::R8, Reg::R7).add(Reg::R8, Reg::R2);
        b.jmp(JmpCond::Gt, Reg::R8, Reg::R9, trunc);
        b.comment("the tuple: addresses and protocol (ports below)");
        b.load(Size::W, Reg::R1, Reg::R7, 12).store(Size::W, Reg::R10, FP_CT, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R7, 16).store(Size::W, Reg::R10, FP_CT + 4, Reg::R1);
        b.load(Size::B, Reg::R1, Reg::R7, 9).store(Size::B, Reg::R10, FP_CT + 12, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CT + ct4_key::DIR as i16, i32::from(self.dir.policy_dir()));
        if self.dir == Direction::FromEndpoint {
            self.emit_antispoof_v4(b);
        }
        b.comment("fragments: a later fragment follows its first one");
        b.load(Size::H, Reg::R1, Reg::R7, 6);
        b.be(16, Reg::R1);
        b.mov(Reg::R2, Reg::R1).alu(AluOp::And, Reg::R2, 0x1fff);
        b.mov(Reg::R3, Reg::R1).alu(AluOp::Rsh, Reg::R3, 13).alu(AluOp::And, Reg::R3, 1);
        b.store(Size::B, Reg::R10, FP_MISC + 1, Reg::R3);
        b.comment("frag4 key: addresses, id, protocol");
        b.load(Size::DW, Reg::R1, Reg::R10, FP_CT).store(Size::DW, Reg::R10, FP_FRAG, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R7, 4).store(Size::DW, Reg::R10, FP_FRAG + 8, Reg::R1);
        b.load(Size::B, Reg::R1, Reg::R7, 9).store(Size::B, Reg::R10, FP_FRAG + 12, Reg::R1);
        b.store(Size::B, Reg::R10, FP_FRAG + 13, i32::from(self.dir.policy_dir()));
        b.jmp(JmpCond::Ne, Reg::R2, 0, "ipv4_later_fragment");
        b.comment("transport");
        b.load(Size::B, Reg::R1, Reg::R7, 9);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_TCP, "l4_tcp");
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_UDP, "l4_ports");
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_SCTP, "l4_ports");
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_ICMP, "l4_icmp");
        b.ja("conntrack");
        b.label("l4_tcp").comment("tcp: ports and flags");
        guard(b, Reg::R8, 14, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, 13).store(Size::B, Reg::R10, FP_MISC, Reg::R1);
        b.ja("l4_read_ports");
        b.label("l4_ports").comment("udp, sctp: ports");
        guard(b, Reg::R8, 4, trunc);
        b.label("l4_read_ports");
        b.load(Size::H, Reg::R1, Reg::R8, 0).store(Size::H, Reg::R10, FP_CT + 8, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, 2).store(Size::H, Reg::R10, FP_CT + 10, Reg::R1);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R1);
        b.ja("conntrack");
        b.label("l4_icmp").comment("icmp: the type is the policy port; echo id is the source port");
        guard(b, Reg::R8, 8, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, 0);
        b.mov(Reg::R2, Reg::R1).alu(AluOp::Lsh, Reg::R2, 8);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R2);
        for t in [3, 11, 12] {
            b.jmp(JmpCond::Eq, Reg::R1, t, "icmp4_error");
        }
        b.jmp(JmpCond::Eq, Reg::R1, 8, "icmp4_echo");
        b.jmp(JmpCond::Ne, Reg::R1, 0, "conntrack");
        b.label("icmp4_echo");
        b.load(Size::H, Reg::R1, Reg::R8, 4).store(Size::H, Reg::R10, FP_CT + 8, Reg::R1);
        b.ja("conntrack");
        self.emit_icmp4_error(b);
        self.emit_later_fragment(b);
    }

    fn emit_antispoof_v4(&self, b: &mut Builder) {
        b.comment("anti-spoofing: the source must be the endpoint's own address");
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, label(Reason::DenySpoofed));
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IPV4 as i16);
        b.load(Size::W, Reg::R2, Reg::R10, FP_CT);
        b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, label(Reason::DenySpoofed));
    }

    /// `r0 = &ep_config[ep]` or 0; clobbers r1-r5.
    fn emit_ep_config(&self, b: &mut Builder) {
        b.store(Size::W, Reg::R10, FP_KEY, i32::from(self.ep));
        b.ld_map(Reg::R1, "ep_config");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_KEY));
        b.call(MAP_LOOKUP_ELEM);
    }

    fn emit_icmp4_error(&self, b: &mut Builder) {
        b.label("icmp4_error").comment("icmp error: does it quote a tracked connection?");
        guard(b, Reg::R8, 8 + 20 + 4, label(Reason::DenyTruncated));
        b.load(Size::B, Reg::R1, Reg::R8, 8);
        b.jmp(JmpCond::Ne, Reg::R1, 0x45, "conntrack");
        b.comment("the quoted tuple, as sent, and reversed");
        b.store(Size::DW, Reg::R10, FP_CTR + 8, 0);
        b.store(Size::DW, Reg::R10, FP_FRAG + 8, 0);
        b.load(Size::W, Reg::R1, Reg::R8, 8 + 12);
        b.store(Size::W, Reg::R10, FP_CTR, Reg::R1).store(Size::W, Reg::R10, FP_FRAG + 4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R8, 8 + 16);
        b.store(Size::W, Reg::R10, FP_CTR + 4, Reg::R1).store(Size::W, Reg::R10, FP_FRAG, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, 8 + 20);
        b.store(Size::H, Reg::R10, FP_CTR + 8, Reg::R1).store(Size::H, Reg::R10, FP_FRAG + 10, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, 8 + 22);
        b.store(Size::H, Reg::R10, FP_CTR + 10, Reg::R1).store(Size::H, Reg::R10, FP_FRAG + 8, Reg::R1);
        b.load(Size::B, Reg::R1, Reg::R8, 8 + 9);
        b.store(Size::B, Reg::R10, FP_CTR + 12, Reg::R1).store(Size::B, Reg::R10, FP_FRAG + 12, Reg::R1);
        b.comment("sent by the endpoint: its own connection (opposite direction) or a reply in ours");
        b.store(Size::B, Reg::R10, FP_CTR + ct4_key::DIR as i16, i32::from(self.opposite_dir()));
        b.store(Size::B, Reg::R10, FP_FRAG + ct4_key::DIR as i16, i32::from(self.dir.policy_dir()));
        for key in [FP_CTR, FP_FRAG] {
            b.ld_map(Reg::R1, "ct4");
            b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(key));
            b.call(MAP_LOOKUP_ELEM);
            b.jmp(JmpCond::Ne, Reg::R0, 0, label(Reason::AllowRelated));
        }
        b.ja("conntrack");
    }

    fn emit_later_fragment(&self, b: &mut Builder) {
        b.label("ipv4_later_fragment").comment("a later fragment: the first fragment's verdict");
        b.ld_map(Reg::R1, "frag4");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FRAG));
        b.call(MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, Reg::R0, 0, label(Reason::DenyFragment));
        b.load(Size::B, Reg::R1, Reg::R0, 0);
        b.jmp(JmpCond::Eq, Reg::R1, 1, label(Reason::AllowFragment));
        b.ja(label(Reason::DenyFragment));
    }

    fn emit_ipv6(&self, b: &mut Builder) {
        b.label("ipv6").comment("ipv6: not yet judged by policy; enforced directions drop it");
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, label(Reason::DenyDefault));
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R1, self.enforced_bit());
        b.jmp(JmpCond::Eq, Reg::R1, 0, label(Reason::AllowUnenforced));
        b.ja(label(Reason::DenyDefault));
    }

    fn opposite_dir(&self) -> u8 {
        match self.dir {
            Direction::FromEndpoint => INGRESS,
            Direction::ToEndpoint => EGRESS,
        }
    }

    fn enforced_bit(&self) -> i32 {
        match self.dir {
            Direction::FromEndpoint => ep_config::EGRESS_ENFORCED as i32,
            Direction::ToEndpoint => ep_config::INGRESS_ENFORCED as i32,
        }
    }

    fn emit_conntrack(&self, b: &mut Builder) {
        b.label("conntrack").comment("conntrack: the tuple as sent");
        if !self.options.conntrack {
            b.ja("new_connection");
        }
        b.ld_map(Reg::R1, "ct4");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_CT));
        b.call(MAP_LOOKUP_ELEM);
        b.mov(Reg::R8, 0);
        b.jmp(JmpCond::Ne, Reg::R0, 0, "ct_hit");
        b.comment("... and reversed: a reply");
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + 4).store(Size::W, Reg::R10, FP_CTR, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT).store(Size::W, Reg::R10, FP_CTR + 4, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + 10).store(Size::H, Reg::R10, FP_CTR + 8, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + 8).store(Size::H, Reg::R10, FP_CTR + 10, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + 12).store(Size::W, Reg::R10, FP_CTR + 12, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CTR + ct4_key::DIR as i16, i32::from(self.opposite_dir()));
        b.ld_map(Reg::R1, "ct4");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_CTR));
        b.call(MAP_LOOKUP_ELEM);
        b.mov(Reg::R8, 1);
        b.jmp(JmpCond::Eq, Reg::R0, 0, "new_connection");

        b.label("ct_hit").comment("r6 = the entry, r8 = 1 for a reply; a dead entry is a miss");
        b.mov(Reg::R6, Reg::R0);
        b.call(KTIME_GET_NS);
        b.mov(Reg::R9, Reg::R0);
        b.load(Size::DW, Reg::R1, Reg::R6, ct_value::EXPIRES as i16);
        b.jmp(JmpCond::Gt, Reg::R9, Reg::R1, "new_connection");
        b.jmp(JmpCond::Eq, Reg::R8, 0, "ct_state");
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::FLAGS as i16);
        b.alu(AluOp::Or, Reg::R1, i32::from(ct_value::SEEN_REPLY));
        b.store(Size::B, Reg::R6, ct_value::FLAGS as i16, Reg::R1);
        b.label("ct_state").comment("advance the state; r1 = new state, r2 = its lifetime");
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::STATE as i16);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Open as i32, "ct_open");
        b.jmp(JmpCond::Set, Reg::R3, TCP_FIN | TCP_RST, "ct_closing");
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Closing as i32, "ct_closing_keep");
        b.mov(Reg::R2, Reg::R3).alu(AluOp::And, Reg::R2, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R2, TCP_SYN | TCP_ACK, "ct_keep_state");
        b.jmp(JmpCond::Eq, Reg::R8, 0, "ct_keep_state");
        b.mov(Reg::R1, CtState::Established as i32);
        b.label("ct_keep_state");
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Established as i32, "ct_established");
        b.ld_imm64(Reg::R2, timeout::TCP_SYN).ja("ct_store");
        b.label("ct_established");
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED).ja("ct_store");
        b.label("ct_closing");
        b.mov(Reg::R1, CtState::Closing as i32);
        b.label("ct_closing_keep");
        b.ld_imm64(Reg::R2, timeout::TCP_CLOSING).ja("ct_store");
        b.label("ct_open");
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.load(Size::B, Reg::R4, Reg::R10, FP_CT + 12);
        b.jmp(JmpCond::Ne, Reg::R4, IPPROTO_ICMP, "ct_store");
        b.ld_imm64(Reg::R2, timeout::ICMP);
        b.label("ct_store");
        b.store(Size::B, Reg::R6, ct_value::STATE as i16, Reg::R1);
        b.add(Reg::R2, Reg::R9);
        b.store(Size::DW, Reg::R6, ct_value::EXPIRES as i16, Reg::R2);
        b.mov(Reg::R1, 1);
        b.emit(Insn::Atomic {
            size: Size::DW,
            op: AtomicOp::Add { fetch: false },
            base: Reg::R6,
            off: ct_value::PACKETS as i16,
            src: Reg::R1,
        });
        b.mov(Reg::R7, Reason::AllowEstablished as i32).ja("allowed");
    }

    fn emit_new_connection(&self, b: &mut Builder) {
        let dir = self.dir.policy_dir();
        b.label("new_connection").comment("a new connection: is policy enforced here?");
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, label(Reason::DenyDefault));
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
        b.store(Size::W, Reg::R10, FP_MISC + 4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R1, self.enforced_bit());
        b.mov(Reg::R7, Reason::AllowUnenforced as i32);
        b.jmp(JmpCond::Eq, Reg::R1, 0, "ct_create");

        let peer = match self.dir {
            Direction::FromEndpoint => FP_CT + 4,
            Direction::ToEndpoint => FP_CT,
        };
        b.comment("the peer's identity: ipcache level 1 (direct), 2 and 3");
        b.load(Size::W, Reg::R6, Reg::R10, peer);
        b.be(32, Reg::R6);
        b.mov32(Reg::R2, Reg::R6).alu32(AluOp::Rsh, Reg::R2, 16).alu(AluOp::Lsh, Reg::R2, 2);
        b.ld_map_value(Reg::R1, "ipc_v4_l1", 0);
        b.add(Reg::R1, Reg::R2);
        b.load(Size::W, Reg::R0, Reg::R1, 0);
        for (level, shift) in [("ipc_v4_l2", 8), ("ipc_v4_l3", 0)] {
            b.jmp(JmpCond::Set, Reg::R0, IPC_CHILD as i32, format!("{level}_lookup"));
            b.ja("identity");
            b.label(format!("{level}_lookup"));
            b.alu32(AluOp::And, Reg::R0, !IPC_CHILD as i32);
            b.store(Size::W, Reg::R10, FP_KEY, Reg::R0);
            b.ld_map(Reg::R1, level);
            b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_KEY));
            b.call(MAP_LOOKUP_ELEM);
            b.jmp(JmpCond::Eq, Reg::R0, 0, "identity");
            b.mov32(Reg::R2, Reg::R6);
            if shift != 0 {
                b.alu32(AluOp::Rsh, Reg::R2, shift);
            }
            b.alu32(AluOp::And, Reg::R2, 0xff).alu(AluOp::Lsh, Reg::R2, 2);
            b.add(Reg::R0, Reg::R2);
            b.load(Size::W, Reg::R0, Reg::R0, 0);
        }
        b.label("identity").comment("r0 = identity (0: world)");
        b.jmp(JmpCond::Ne, Reg::R0, 0, "policy_key");
        b.mov(Reg::R0, WORLD as i32);
        b.label("policy_key").comment("policy key {96, ep, dir, identity, proto, port}");
        b.be(32, Reg::R0);
        b.store(Size::W, Reg::R10, FP_POL + policy_key::PREFIXLEN as i16, policy_key::FULL_BITS as i32);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::EP as i16, i32::from(self.ep.swap_bytes()));
        b.store(Size::H, Reg::R10, FP_POL + policy_key::DIR as i16, i32::from(dir));
        b.store(Size::W, Reg::R10, FP_POL + policy_key::IDENTITY as i16, Reg::R0);
        b.load(Size::B, Reg::R1, Reg::R10, FP_CT + 12);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PROTO as i16, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R10, FP_MISC + 2);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PORT as i16, Reg::R1);
        b.comment("r8 = verdict bits: 1 allow, 2 deny; for the identity, then for any identity");
        b.mov(Reg::R8, 0);
        for pass in 0..2 {
            let next = format!("policy_any_{pass}");
            if pass == 1 {
                b.store(Size::W, Reg::R10, FP_POL + policy_key::IDENTITY as i16, 0);
            }
            b.ld_map(Reg::R1, "policy");
            b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_POL));
            b.call(MAP_LOOKUP_ELEM);
            b.jmp(JmpCond::Eq, Reg::R0, 0, next.as_str());
            b.load(Size::B, Reg::R1, Reg::R0, policy_value::VERDICT as i16);
            b.alu(AluOp::Or, Reg::R8, Reg::R1);
            b.label(next.as_str());
        }
        b.jmp(JmpCond::Set, Reg::R8, i32::from(policy_value::DENY), label(Reason::DenyPolicy));
        b.jmp(JmpCond::Eq, Reg::R8, 0, label(Reason::DenyDefault));
        b.mov(Reg::R7, Reason::AllowNew as i32);

        b.label("ct_create").comment("track the connection; r7 = the allow reason");
        if !self.options.conntrack {
            b.ja("allowed");
        }
        for off in (0..ct_value::SIZE as i16).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_CTV + off, 0);
        }
        b.call(KTIME_GET_NS);
        b.load(Size::B, Reg::R3, Reg::R10, FP_CT + 12);
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.mov(Reg::R1, CtState::Open as i32);
        b.jmp(JmpCond::Ne, Reg::R3, IPPROTO_TCP, "ct_create_store");
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED);
        b.mov(Reg::R1, CtState::Established as i32);
        b.alu(AluOp::And, Reg::R3, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R3, TCP_SYN, "ct_create_store");
        b.ld_imm64(Reg::R2, timeout::TCP_SYN);
        b.mov(Reg::R1, CtState::SynSent as i32);
        b.label("ct_create_store");
        b.add(Reg::R0, Reg::R2);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::EXPIRES as i16, Reg::R0);
        b.store(Size::B, Reg::R10, FP_CTV + ct_value::STATE as i16, Reg::R1);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::PACKETS as i16, 1);
        b.ld_map(Reg::R1, "ct4");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_CT));
        b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(FP_CTV));
        b.mov(Reg::R4, 0);
        b.call(MAP_UPDATE_ELEM);
        b.label("allowed").comment("a first fragment leaves its verdict for the rest; r7 = reason");
        b.load(Size::B, Reg::R1, Reg::R10, FP_MISC + 1);
        b.jmp(JmpCond::Eq, Reg::R1, 0, "allowed_reason");
        b.store(Size::DW, Reg::R10, FP_CTV, 1);
        b.ld_map(Reg::R1, "frag4");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FRAG));
        b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(FP_CTV));
        b.mov(Reg::R4, 0);
        b.call(MAP_UPDATE_ELEM);
        b.label("allowed_reason");
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowUnenforced as i32, label(Reason::AllowUnenforced));
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowEstablished as i32, label(Reason::AllowEstablished));
        b.ja(label(Reason::AllowNew));
    }

    fn emit_exit(&self, b: &mut Builder) {
        let stride = Reason::COUNT as i32;
        b.label("exit").comment("count (endpoint, reason) in ep_stats; r6 = reason, r7 = verdict");
        b.mov(Reg::R1, Reg::R6).add(Reg::R1, i32::from(self.ep) * stride);
        b.store(Size::W, Reg::R10, FP_KEY, Reg::R1);
        b.ld_map(Reg::R1, "ep_stats");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_KEY));
        b.call(MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, Reg::R0, 0, "event");
        b.load(Size::DW, Reg::R1, Reg::R0, 0).add(Reg::R1, 1).store(Size::DW, Reg::R0, 0, Reg::R1);

        b.label("event").comment("an event for drops and new connections, if switched on");
        b.ld_map_value(Reg::R1, "ev_config", 0);
        b.load(Size::W, Reg::R2, Reg::R1, ev_config::FLAGS as i16);
        b.mov(Reg::R3, 2);
        b.jmp(JmpCond::Ge, Reg::R6, Reason::DenyPolicy as i32, "event_kind");
        b.mov(Reg::R3, 1);
        b.jmp(JmpCond::Ne, Reg::R6, Reason::AllowNew as i32, "return");
        b.label("event_kind");
        b.alu(AluOp::And, Reg::R2, Reg::R3);
        b.jmp(JmpCond::Eq, Reg::R2, 0, "return");
        b.store(Size::B, Reg::R10, FP_EV + event::KIND as i16, Reg::R3);
        b.comment("rate budget: ev_budget per CPU, a one-second window");
        b.load(Size::W, Reg::R8, Reg::R1, ev_config::RATE as i16);
        b.store(Size::W, Reg::R10, FP_KEY, 0);
        b.ld_map(Reg::R1, "ev_budget");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_KEY));
        b.call(MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, Reg::R0, 0, "return");
        b.mov(Reg::R9, Reg::R0);
        b.call(KTIME_GET_NS);
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::WINDOW_START as i16);
        b.mov(Reg::R2, Reg::R0).alu(AluOp::Sub, Reg::R2, Reg::R1);
        b.jmp(JmpCond::Lt, Reg::R2, 1_000_000_000, "event_budget");
        b.store(Size::DW, Reg::R9, ev_budget::WINDOW_START as i16, Reg::R0);
        b.store(Size::DW, Reg::R9, ev_budget::SENT as i16, 0);
        b.label("event_budget");
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::SENT as i16);
        b.jmp(JmpCond::Eq, Reg::R8, 0, "event_send");
        b.jmp(JmpCond::Ge, Reg::R1, Reg::R8, "return");
        b.label("event_send");
        b.add(Reg::R1, 1).store(Size::DW, Reg::R9, ev_budget::SENT as i16, Reg::R1);
        self.emit_event_record(b);
        b.label("return");
        b.mov(Reg::R0, Reg::R7).exit();
    }

    fn emit_event_record(&self, b: &mut Builder) {
        let ev = |off: usize| FP_EV + off as i16;
        b.store(Size::B, Reg::R10, ev(event::REASON), Reg::R6);
        b.store(Size::B, Reg::R10, ev(event::DIR), i32::from(self.dir.policy_dir()));
        b.store(Size::B, Reg::R10, ev(event::FAMILY), 4);
        b.store(Size::H, Reg::R10, ev(event::EP), i32::from(self.ep));
        b.load(Size::B, Reg::R1, Reg::R10, FP_CT + 12).store(Size::H, Reg::R10, ev(event::PROTO), Reg::R1);
        b.comment("identities: the peer's (from the policy key) and the endpoint's own");
        b.load(Size::W, Reg::R1, Reg::R10, FP_POL + policy_key::IDENTITY as i16);
        b.be(32, Reg::R1);
        b.load(Size::W, Reg::R2, Reg::R10, FP_MISC + 4);
        let (src, dst) = match self.dir {
            Direction::FromEndpoint => (Reg::R2, Reg::R1),
            Direction::ToEndpoint => (Reg::R1, Reg::R2),
        };
        b.store(Size::W, Reg::R10, ev(event::SRC_IDENTITY), src);
        b.store(Size::W, Reg::R10, ev(event::DST_IDENTITY), dst);
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + 8).store(Size::W, Reg::R10, ev(event::SPORT), Reg::R1);
        for (i, off) in [event::SADDR, event::DADDR].into_iter().enumerate() {
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + 4 * i as i16).store(
                Size::W,
                Reg::R10,
                ev(off),
                Reg::R1,
            );
            for w in 1..4 {
                b.store(Size::W, Reg::R10, ev(off) + 4 * w, 0);
            }
        }
        b.ld_map(Reg::R1, "events");
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_EV));
        b.mov(Reg::R3, event::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(RINGBUF_OUTPUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_generate() {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            let p = generate(3, dir).expect("generates");
            assert!(p.len() > 100);
        }
    }
}
