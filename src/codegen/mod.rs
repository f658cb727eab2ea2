//! Code generation: one `sluice_asm::Program` per (object, hook), specialized to the plan.
//!
//! Shared emitters live here (Ethernet and VLAN parsing with bounds guards, per-reason
//! verdict counting); each datapath object has its own module. Generated code is
//! deterministic: the same input gives byte-identical programs (DESIGN invariant 5).
//! Register conventions shared by the emitters: `r8` = packet start, `r9` = packet end,
//! `r7` = the L3 header (cursor), `r6` = the verdict reason at exit.

pub mod endpoint;
pub mod ipsec;
pub mod kit;
pub mod l7_redirect;
pub mod lb;
pub mod overlay;
pub mod prefilter;
pub mod sock_lb;
pub mod sockops;
pub mod to_proxy;

use sluice_asm::{AluOp, Builder, JmpCond, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::{SkBuff, XdpMd};
use thiserror::Error;

/// Why a program could not be generated.
#[derive(Debug, Error)]
pub enum CodegenError {
    #[error("{object}: {source}")]
    Build {
        object: &'static str,
        #[source]
        source: sluice_asm::BuildError,
    },
    #[error("L7 rules name more than {max} ports; the proxy redirect takes at most {max}")]
    TooManyRedirects { max: usize },
}

/// Ethertypes, as a little-endian load of the big-endian wire field sees them: comparing
/// against these saves a byte swap per comparison. sluice runs on little-endian hosts.
pub mod ethertype {
    /// The value a `u16` load of the wire bytes of `ethertype` yields.
    pub const fn wire(ethertype: u16) -> i32 {
        ethertype.swap_bytes() as i32
    }
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
}

/// Ethernet header length.
pub const ETH_HLEN: i32 = 14;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: i32 = 4;

/// Labels the Ethernet parser jumps to.
#[derive(Debug, Clone, Copy)]
pub struct EthLabels<'a> {
    pub ipv4: &'a str,
    pub ipv6: &'a str,
    pub not_ip: &'a str,
    pub truncated_ethernet: &'a str,
    pub truncated_vlan: &'a str,
    pub vlan_too_deep: &'a str,
}

/// Load the packet pointers (`r8`, `r9`) from an XDP context in `r1`.
pub fn emit_xdp_packet_pointers(b: &mut Builder) {
    b.comment("r8 = data, r9 = data_end");
    b.load(Size::W, Reg::R8, Reg::R1, ctx_off!(XdpMd, data));
    b.load(Size::W, Reg::R9, Reg::R1, ctx_off!(XdpMd, data_end));
}

/// `__sk_buff.data` and `.data_end`.
pub const SKB_DATA: i16 = ctx_off!(SkBuff, data);
pub const SKB_DATA_END: i16 = ctx_off!(SkBuff, data_end);

/// Load the packet pointers (`r8`, `r9`) from the `__sk_buff` in `ctx`.
pub fn emit_skb_packet_pointers(b: &mut Builder, ctx: Reg) {
    b.load(Size::W, Reg::R8, ctx, SKB_DATA);
    b.load(Size::W, Reg::R9, ctx, SKB_DATA_END);
}

/// Parse Ethernet with up to two VLAN tags (802.1Q or 802.1ad, in any order): leaves the
/// L3 header pointer in `r7` and jumps to the label for the inner ethertype in `r4`.
///
/// Every read is guarded against `r9`. Untagged frames take a straight path with constant
/// offsets. Tagged frames share one path: whether a second tag follows is computed without
/// a branch (`r5 = 4` or `0`) and added to the cursor, so the kernel verifier walks the IP
/// parsers twice (untagged, tagged) instead of once per tag depth.
pub fn emit_ethernet(b: &mut Builder, l: EthLabels<'_>) {
    let tpids = [ethertype::wire(ethertype::VLAN), ethertype::wire(ethertype::QINQ)];
    b.comment("ethernet: 14 bytes");
    guard(b, Reg::R8, ETH_HLEN, l.truncated_ethernet);
    b.load(Size::H, Reg::R4, Reg::R8, 12);
    b.mov(Reg::R7, Reg::R8).add(Reg::R7, ETH_HLEN);
    let vlan = b.new_label("vlan");
    for tpid in tpids {
        b.jmp(JmpCond::Eq, Reg::R4, tpid, vlan);
    }
    emit_l3_dispatch(b, &l);
    b.place(vlan).comment("first vlan tag");
    guard(b, Reg::R8, ETH_HLEN + VLAN_HLEN, l.truncated_vlan);
    b.load(Size::H, Reg::R4, Reg::R8, (ETH_HLEN + VLAN_HLEN - 2) as i16);
    b.comment("r5 = 4 if a second tag follows, else 0 (no branch: one verifier path)");
    for (i, tpid) in tpids.into_iter().enumerate() {
        let r = if i == 0 { Reg::R5 } else { Reg::R3 };
        b.mov(r, Reg::R4).alu(AluOp::Xor, r, tpid).alu(AluOp::Sub, r, 1).alu(AluOp::Rsh, r, 63);
    }
    b.alu(AluOp::Or, Reg::R5, Reg::R3).alu(AluOp::Lsh, Reg::R5, 2);
    b.mov(Reg::R7, Reg::R8).add(Reg::R7, Reg::R5).add(Reg::R7, ETH_HLEN + VLAN_HLEN);
    b.jmp(JmpCond::Gt, Reg::R7, Reg::R9, l.truncated_vlan);
    b.load(Size::H, Reg::R4, Reg::R7, -2);
    for tpid in tpids {
        b.jmp(JmpCond::Eq, Reg::R4, tpid, l.vlan_too_deep);
    }
    emit_l3_dispatch(b, &l);
}

fn emit_l3_dispatch(b: &mut Builder, l: &EthLabels<'_>) {
    b.comment("inner ethertype");
    b.jmp(JmpCond::Eq, Reg::R4, ethertype::wire(ethertype::IPV4), l.ipv4);
    b.jmp(JmpCond::Eq, Reg::R4, ethertype::wire(ethertype::IPV6), l.ipv6);
    b.ja(l.not_ip);
}

/// `if base + len > data_end goto fail` (uses `r2`).
pub fn guard(b: &mut Builder, base: Reg, len: i32, fail: impl Into<sluice_asm::Target>) {
    b.mov(Reg::R2, base).add(Reg::R2, len);
    b.jmp(JmpCond::Gt, Reg::R2, Reg::R9, fail);
}

/// The shared exit: count the reason in `r6` in the per-CPU array `stats`, then return
/// the verdict in `r7`. Neither value steers a branch or a pointer here, so the kernel
/// verifier keeps them imprecise and prunes every path that reaches this block after the
/// first: the block is verified once, not once per verdict site.
pub fn emit_count_and_exit(b: &mut Builder, label: &str, stats: &str) {
    b.label(label).comment(format!("count the reason (r6) in {stats}, return the verdict (r7)"));
    b.store(Size::W, Reg::R10, -4, Reg::R6);
    b.ld_map(Reg::R1, stats);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, -4);
    b.call(sluice_asm::helpers::MAP_LOOKUP_ELEM);
    let ret = b.new_label("return");
    b.jmp(JmpCond::Eq, Reg::R0, 0, ret);
    b.load(Size::DW, Reg::R1, Reg::R0, 0);
    b.add(Reg::R1, 1);
    b.store(Size::DW, Reg::R0, 0, Reg::R1);
    b.place(ret);
    b.mov(Reg::R0, Reg::R7).exit();
}

/// A verdict site: `r6 = reason; r7 = verdict; goto exit`.
pub fn emit_verdict(b: &mut Builder, label: &str, reason: i32, verdict: i32, exit: &str) {
    b.label(label).comment(format!("verdict: {label}"));
    b.mov(Reg::R6, reason).mov(Reg::R7, verdict).ja(exit);
}

/// `dst = bswap32(dst)` then keep only the low 32 bits (`be32` already zero-extends).
pub fn emit_be32(b: &mut Builder, dst: Reg) {
    b.be(32, dst);
}

/// `dst = (src >> shift) & mask`, in 32-bit operations so the verifier bounds it.
pub fn emit_field32(b: &mut Builder, dst: Reg, src: Reg, shift: i32, mask: i32) {
    b.mov32(dst, src);
    if shift != 0 {
        b.alu32(AluOp::Rsh, dst, shift);
    }
    if mask != -1 {
        b.alu32(AluOp::And, dst, mask);
    }
}
