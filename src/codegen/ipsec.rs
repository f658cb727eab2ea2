//! The IPsec mode's BPF side (Cilium's `set_ipsec_encrypt` and the ingress ESP marking):
//! two tc programs that only set `skb->mark`; the kernel's xfrm policies and states match
//! the marks and do the ESP work.
//!
//! - `ipsec_egress` (on the way out of a pod toward the node, e.g. after `from-endpoint`
//!   or on the host device's egress): IPv4 destination -> `ipsec_pods` (longest prefix)
//!   -> the node's address -> `ipsec_nodes` -> `{node id, peer's newest SPI}`; the SPI
//!   used is the newest key both nodes have ([`crate::encrypt::ipsec::choose_spi`], with
//!   the 15 -> 1 wrap), `local_spi` from `ipsec_cfg`. Then
//!   `skb->mark = 0x0E00 | spi << 12 | node_id << 16` (the whole mark is replaced, as
//!   Cilium does) and `TC_ACT_OK`: the stack routes it, the out policy of that node (mark
//!   `0x0E00 | node_id << 16` under mask `0xFFFF0F00`) matches, and the state of that SPI
//!   (mark under `0xFFFFFF00`) encrypts.
//! - `ipsec_ingress` (on the underlay device's ingress): IPv4 protocol 50 (ESP) whose
//!   source is a peer node: `skb->mark = 0x0D00 | node_id << 16`, the in states' mark
//!   (mask `0xFFFF0F00`), so xfrm decrypts; the decrypted packet re-enters the device.
//!
//! The mark layout (bits): `31..16` node id (this node's number for the peer), `15..12`
//! SPI (egress only; 0 on ingress), `11..8` the magic (`0xE` encrypt, `0xD` decrypt),
//! `7..0` zero.
//!
//! When nothing can be marked: a pod address of a node not in `ipsec_nodes`, or no key
//! both nodes have, is dropped in strict mode and sent plain otherwise; ESP from an
//! address that is no peer is dropped in strict mode and left unmarked otherwise (no
//! state matches; the kernel drops it). Every verdict is counted per
//! [`crate::maps::ipsec::Reason`] in `ipsec_stats`. Everything that is not IPv4 passes
//! untouched (`not_ipv4`).

use super::kit::{self, VerdictSites};
use super::{emit_count_and_exit, CodegenError, ETH_HLEN};
use crate::encrypt::ipsec::{MARK_DECRYPT, MARK_ENCRYPT, MAX_SPI, SPI_SHIFT};
use crate::maps::ipsec::{ipsec_cfg, node_value, pod_key, Reason, CFG, NODES, PODS, STATS};
use crate::packet::ipv4::field as ipv4;
use sluice_asm::{AluOp, Builder, JmpCond, Label, Program, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::spec::ProgKind;
use sluice_verifier_sim::uapi::SkBuff;

/// The egress program's name (kernel-visible).
pub const EGRESS: &str = "ipsec_egress";
/// The ingress program's name.
pub const INGRESS: &str = "ipsec_ingress";
/// Both are tc (`BPF_PROG_TYPE_SCHED_CLS`) programs.
pub const KIND: ProgKind = ProgKind::SchedCls;

/// The frame: the `ipsec_nodes` key (a node address) and the `ipsec_pods` LPM key.
const FP_NODE_KEY: i16 = -8;
const FP_POD_KEY: i16 = -16;
const SKB_MARK: i16 = ctx_off!(SkBuff, mark);
/// The `ethertype` field of the Ethernet header, and IPv4 in wire order.
const ETH_PROTO: i16 = crate::packet::ethernet::field::ETHERTYPE.start as i16;
const IPV4_WIRE: i32 = super::ethertype::wire(super::ethertype::IPV4);
pub use crate::uapi::IPPROTO_ESP;

/// Register plan: `r9` = ctx, `r6` = local SPI, `r7` = strict (until a verdict sets
/// reason/verdict in `r6`/`r7`), `r8` = data.
fn emit_prologue(b: &mut Builder, v: &VerdictSites<Reason>) {
    b.comment("r9 = ctx; r6 = ipsec_cfg.local_spi, r7 = ipsec_cfg.strict");
    b.mov(Reg::R9, Reg::R1);
    b.ld_map_value(Reg::R1, CFG, 0);
    b.load(Size::B, Reg::R6, Reg::R1, ipsec_cfg::LOCAL_SPI as i16);
    b.load(Size::B, Reg::R7, Reg::R1, ipsec_cfg::STRICT as i16);
    b.comment("ethernet + an IPv4 header without options must be in the linear data");
    kit::skb_data(b, Reg::R9, Reg::R8, Reg::R2);
    b.mov(Reg::R3, Reg::R8).add(Reg::R3, ETH_HLEN + ipv4::HEADER_LEN as i32);
    b.jmp(JmpCond::Gt, Reg::R3, Reg::R2, v.of(Reason::Truncated));
    b.load(Size::H, Reg::R3, Reg::R8, ETH_PROTO);
    b.jmp(JmpCond::Ne, Reg::R3, IPV4_WIRE, v.of(Reason::NotIpv4));
    b.load(Size::B, Reg::R3, Reg::R8, (ETH_HLEN as usize + ipv4::VER_IHL) as i16);
    b.alu(AluOp::And, Reg::R3, 0xf0);
    b.jmp(JmpCond::Ne, Reg::R3, 0x40, v.of(Reason::NotIpv4));
}

/// `r0 = ipsec_nodes[r10 + FP_NODE_KEY]`.
fn emit_node_lookup(b: &mut Builder) {
    kit::map_lookup(b, NODES, FP_NODE_KEY);
}

/// If strict (`r7`), `dropped`, else `plain`.
fn emit_strict_branch(b: &mut Builder, at: Label, v: &VerdictSites<Reason>, dropped: Reason, plain: Reason) {
    b.place(at).comment("strict mode drops, otherwise it goes unmarked");
    b.jmp(JmpCond::Ne, Reg::R7, 0, v.of(dropped));
    b.ja(v.of(plain));
}

/// The verdict sites of `reasons` and the count-and-exit block they lead to.
fn verdict_sites(b: &mut Builder, reasons: &[Reason]) -> VerdictSites<Reason> {
    let count = b.new_label("count");
    VerdictSites::new(b, reasons.iter().copied(), count)
}

fn emit_epilogue(b: &mut Builder, v: &VerdictSites<Reason>) {
    v.emit(b);
    emit_count_and_exit(b, v.exit(), STATS);
}

/// Generate `ipsec_egress`.
pub fn generate_egress() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    let v = verdict_sites(
        &mut b,
        &[
            Reason::Encrypt,
            Reason::Truncated,
            Reason::NotIpv4,
            Reason::NotRemote,
            Reason::UnknownNodeDropped,
            Reason::UnknownNodePlain,
            Reason::NoCommonKeyDropped,
            Reason::NoCommonKeyPlain,
        ],
    );
    let (unknown_node, no_common_key) = (b.new_label("unknown_node"), b.new_label("no_common_key"));
    b.stack_slot("node_key", FP_NODE_KEY, 4);
    b.stack_slot("pod_key.prefixlen", FP_POD_KEY + pod_key::PREFIXLEN as i16, 4);
    b.stack_slot("pod_key.addr", FP_POD_KEY + pod_key::ADDR as i16, 4);
    emit_prologue(&mut b, &v);
    b.comment("ipsec_pods[{32, destination}]: the node the destination pod lives on");
    b.store(Size::W, Reg::R10, FP_POD_KEY + pod_key::PREFIXLEN as i16, 32);
    b.load(Size::W, Reg::R3, Reg::R8, (ETH_HLEN as usize + ipv4::DST_ADDR.start) as i16);
    b.store(Size::W, Reg::R10, FP_POD_KEY + pod_key::ADDR as i16, Reg::R3);
    kit::map_lookup(&mut b, PODS, FP_POD_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, v.of(Reason::NotRemote));
    b.load(Size::W, Reg::R3, Reg::R0, 0);
    b.store(Size::W, Reg::R10, FP_NODE_KEY, Reg::R3);
    emit_node_lookup(&mut b);
    b.jmp(JmpCond::Eq, Reg::R0, 0, unknown_node);
    b.comment("r3 = the peer's newest SPI, r8 = node id (the packet is not read again)");
    b.load(Size::B, Reg::R3, Reg::R0, node_value::SPI as i16);
    b.load(Size::H, Reg::R8, Reg::R0, node_value::NODE_ID as i16);
    b.comment(
        "r4 = the newest key both have (get_min_encrypt_key: keys are at most one apart, 15 wraps to 1)",
    );
    let (chosen, peer_below_max, neither_max) =
        (b.new_label("spi_chosen"), b.new_label("peer_below_max"), b.new_label("neither_max"));
    let max = i32::from(MAX_SPI);
    b.jmp(JmpCond::Ne, Reg::R3, max, peer_below_max);
    b.mov(Reg::R4, Reg::R6);
    b.jmp(JmpCond::Ne, Reg::R6, 1, chosen);
    b.mov(Reg::R4, max).ja(chosen);
    b.place(peer_below_max);
    b.jmp(JmpCond::Ne, Reg::R6, max, neither_max);
    b.mov(Reg::R4, Reg::R3);
    b.jmp(JmpCond::Ne, Reg::R3, 1, chosen);
    b.mov(Reg::R4, max).ja(chosen);
    b.place(neither_max);
    b.mov(Reg::R4, Reg::R6);
    b.jmp(JmpCond::Ge, Reg::R3, Reg::R6, chosen);
    b.mov(Reg::R4, Reg::R3);
    b.place(chosen);
    b.jmp(JmpCond::Eq, Reg::R4, 0, no_common_key);
    b.comment("skb->mark = 0x0E00 | spi << 12 | node_id << 16");
    b.alu32(AluOp::Lsh, Reg::R4, SPI_SHIFT as i32);
    b.alu32(AluOp::Lsh, Reg::R8, 16);
    b.alu32(AluOp::Or, Reg::R4, Reg::R8);
    b.alu32(AluOp::Or, Reg::R4, MARK_ENCRYPT as i32);
    b.store(Size::W, Reg::R9, SKB_MARK, Reg::R4);
    b.ja(v.of(Reason::Encrypt));
    emit_strict_branch(&mut b, unknown_node, &v, Reason::UnknownNodeDropped, Reason::UnknownNodePlain);
    emit_strict_branch(&mut b, no_common_key, &v, Reason::NoCommonKeyDropped, Reason::NoCommonKeyPlain);
    emit_epilogue(&mut b, &v);
    b.build().map_err(|source| CodegenError::Build { object: EGRESS, source })
}

/// Generate `ipsec_ingress`.
pub fn generate_ingress() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    let v = verdict_sites(
        &mut b,
        &[
            Reason::Decrypt,
            Reason::Truncated,
            Reason::NotIpv4,
            Reason::NotEsp,
            Reason::EspUnknownNodeDropped,
            Reason::EspUnknownNodePlain,
        ],
    );
    let unknown_node = b.new_label("esp_unknown_node");
    b.stack_slot("node_key", FP_NODE_KEY, 4);
    emit_prologue(&mut b, &v);
    b.load(Size::B, Reg::R3, Reg::R8, (ETH_HLEN as usize + ipv4::PROTOCOL) as i16);
    b.jmp(JmpCond::Ne, Reg::R3, IPPROTO_ESP, v.of(Reason::NotEsp));
    b.comment("ESP: ipsec_nodes[source] is the peer that sent it");
    b.load(Size::W, Reg::R3, Reg::R8, (ETH_HLEN as usize + ipv4::SRC_ADDR.start) as i16);
    b.store(Size::W, Reg::R10, FP_NODE_KEY, Reg::R3);
    emit_node_lookup(&mut b);
    b.jmp(JmpCond::Eq, Reg::R0, 0, unknown_node);
    b.comment("skb->mark = 0x0D00 | node_id << 16");
    b.load(Size::H, Reg::R4, Reg::R0, node_value::NODE_ID as i16);
    b.alu32(AluOp::Lsh, Reg::R4, 16);
    b.alu32(AluOp::Or, Reg::R4, MARK_DECRYPT as i32);
    b.store(Size::W, Reg::R9, SKB_MARK, Reg::R4);
    b.ja(v.of(Reason::Decrypt));
    emit_strict_branch(&mut b, unknown_node, &v, Reason::EspUnknownNodeDropped, Reason::EspUnknownNodePlain);
    emit_epilogue(&mut b, &v);
    b.build().map_err(|source| CodegenError::Build { object: INGRESS, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(generate_egress().unwrap(), generate_egress().unwrap());
        assert_eq!(generate_ingress().unwrap(), generate_ingress().unwrap());
    }
}
