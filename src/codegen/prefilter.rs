//! The XDP prefilter: drop packets whose source address is in the deny set.
//!
//! The program's shape does not depend on the deny set: every prefix lives in the maps of
//! [`crate::maps::prefilter`], so adding or removing prefixes is a map update, never a
//! reload, and generating the program costs the same for ten prefixes or ten million.
//! Parsing: Ethernet, up to two VLAN tags, IPv4 (the whole header with options must be
//! present) or IPv6 (the fixed header; extension headers do not move the source address).
//! Every verdict is counted per [`Reason`] in `pf_stats`.

use super::kit::{self, Ipv4Checks, VerdictSites};
use super::{emit_be32, emit_count_and_exit, emit_ethernet, emit_field32, emit_xdp_packet_pointers};
use super::{CodegenError, EthLabels};
use crate::maps::names as map;
use crate::maps::prefilter::{meta, slot, Reason, CHILD, DENY, PASS, V6_LPM};
use crate::maps::prefilter::{SLOT_DENY_ALL, SLOT_EMPTY, SLOT_LPM, V6_HASH_MUL, V6_SLOTS};
use crate::packet::{ipv4::field as ipv4, ipv6::field as ipv6};
use sluice_asm::{AluOp, Builder, JmpCond, Program, Reg, Size};

/// The frame: a `u32` array key, and a `pf_v6_lpm` key (prefix length, address).
const FP_KEY: i16 = -4;
const FP_LPM_KEY: i16 = -24;
/// The IPv6 source address's offset in the header.
const V6_SRC: i16 = ipv6::SRC_ADDR.start as i16;

/// The program's name (kernel-visible and pin name).
pub const NAME: &str = "prefilter";

/// Generate the prefilter program.
pub fn generate() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    b.stack_slot("key", FP_KEY, 4);
    b.stack_slot("lpm_key.prefixlen", FP_LPM_KEY, 4);
    b.stack_slot("lpm_key.addr", FP_LPM_KEY + 4, 16);
    let count = b.new_label("count");
    let v = VerdictSites::new(&mut b, Reason::ALL, count);
    let (ipv4, ipv6) = (b.new_label("ipv4"), b.new_label("ipv6"));
    emit_xdp_packet_pointers(&mut b);
    emit_ethernet(
        &mut b,
        EthLabels {
            ipv4,
            ipv6,
            not_ip: v.of(Reason::NotIp),
            truncated_ethernet: v.of(Reason::TruncatedEthernet),
            truncated_vlan: v.of(Reason::TruncatedVlan),
            vlan_too_deep: v.of(Reason::VlanTooDeep),
        },
    );
    b.place(ipv4);
    emit_ipv4(&mut b, &v);
    b.place(ipv6);
    emit_ipv6(&mut b, &v);
    v.emit(&mut b);
    emit_count_and_exit(&mut b, v.exit(), map::PF_STATS);
    b.build().map(crate::mutate::program_seam).map_err(|source| CodegenError::Build { object: NAME, source })
}

/// IPv4: check the header, then walk the DIR-16-8-8 tables with the source address.
fn emit_ipv4(b: &mut Builder, v: &VerdictSites<Reason>) {
    let (pass, deny) = (v.of(Reason::PassV4), v.of(Reason::DenyV4));
    b.comment("ipv4: fixed header, version, ihl, options");
    let checks = Ipv4Checks {
        truncated: v.of(Reason::TruncatedIpv4),
        malformed: v.of(Reason::MalformedIpv4),
        whole_header: true,
    };
    kit::ipv4_header(b, Reg::R3, checks);
    b.comment("r6 = source address, host order");
    b.load(Size::W, Reg::R6, Reg::R7, ipv4::SRC_ADDR.start as i16);
    emit_be32(b, Reg::R6);
    b.comment("level 1: pf_v4_l1[addr >> 16], addressed directly");
    emit_field32(b, Reg::R2, Reg::R6, 16, -1);
    b.alu(AluOp::Lsh, Reg::R2, 2);
    b.ld_map_value(Reg::R1, map::PF_V4_L1, 0);
    b.add(Reg::R1, Reg::R2);
    b.load(Size::W, Reg::R0, Reg::R1, 0);
    b.jmp(JmpCond::Eq, Reg::R0, PASS as i32, pass);
    b.jmp(JmpCond::Eq, Reg::R0, DENY as i32, deny);
    b.comment("level 2: chunk (entry - CHILD), entry for the third byte");
    b.alu(AluOp::Sub, Reg::R0, CHILD as i32);
    b.store(Size::W, Reg::R10, FP_KEY, Reg::R0);
    kit::map_lookup(b, map::PF_V4_L2, FP_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, pass);
    emit_field32(b, Reg::R2, Reg::R6, 8, 0xff);
    b.alu(AluOp::Lsh, Reg::R2, 2);
    b.add(Reg::R0, Reg::R2);
    b.load(Size::W, Reg::R1, Reg::R0, 0);
    b.jmp(JmpCond::Eq, Reg::R1, PASS as i32, pass);
    b.jmp(JmpCond::Eq, Reg::R1, DENY as i32, deny);
    b.comment("level 3: bitmap (entry - CHILD), bit for the last byte");
    b.alu(AluOp::Sub, Reg::R1, CHILD as i32);
    b.store(Size::W, Reg::R10, FP_KEY, Reg::R1);
    kit::map_lookup(b, map::PF_V4_L3, FP_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, pass);
    emit_field32(b, Reg::R2, Reg::R6, 0, 0xff);
    b.mov(Reg::R3, Reg::R2).alu(AluOp::Rsh, Reg::R3, 3);
    b.add(Reg::R0, Reg::R3);
    b.load(Size::B, Reg::R1, Reg::R0, 0);
    b.alu(AluOp::And, Reg::R2, 7);
    b.alu(AluOp::Rsh, Reg::R1, Reg::R2);
    b.alu(AluOp::And, Reg::R1, 1);
    b.jmp(JmpCond::Ne, Reg::R1, 0, deny);
    b.ja(pass);
}

/// IPv6: check the fixed header, then the /16 array, the /32 cuckoo table with its inline
/// prefix, and the LPM trie for what overflows.
fn emit_ipv6(b: &mut Builder, v: &VerdictSites<Reason>) {
    let (pass, deny) = (v.of(Reason::PassV6), v.of(Reason::DenyV6));
    let (slot_found, lpm) = (b.new_label("ipv6_slot"), b.new_label("ipv6_lpm"));
    b.comment("ipv6: fixed header, version");
    kit::ipv6_header(b, v.of(Reason::TruncatedIpv6), v.of(Reason::MalformedIpv6));
    b.comment("r6 = source address bits 0..32, host order");
    b.load(Size::W, Reg::R6, Reg::R7, V6_SRC);
    emit_be32(b, Reg::R6);
    b.comment("level 1: pf_v6_l1[addr >> 112], addressed directly");
    emit_field32(b, Reg::R2, Reg::R6, 16, -1);
    b.alu(AluOp::Lsh, Reg::R2, 2);
    b.ld_map_value(Reg::R1, map::PF_V6_L1, 0);
    b.add(Reg::R1, Reg::R2);
    b.load(Size::W, Reg::R0, Reg::R1, 0);
    b.jmp(JmpCond::Eq, Reg::R0, PASS as i32, pass);
    b.jmp(JmpCond::Eq, Reg::R0, DENY as i32, deny);
    b.jmp(JmpCond::Eq, Reg::R0, V6_LPM as i32, lpm);
    b.comment("level 2: the cuckoo table pf_v6_l2 of /32 keys; pf_meta says which half is live");
    b.ld_map_value(Reg::R1, map::PF_META, meta::V6_CONF as u32);
    b.comment("r9 = shift, r8 = base bucket (the packet pointers are no longer needed)");
    b.load(Size::W, Reg::R9, Reg::R1, 0);
    b.mov32(Reg::R8, Reg::R9).alu32(AluOp::Rsh, Reg::R8, 8);
    b.alu32(AluOp::And, Reg::R9, 0xff);
    for (h, mul) in V6_HASH_MUL.into_iter().enumerate() {
        let next_bucket = b.new_label(&format!("ipv6_bucket_{}", h + 1));
        b.comment(format!("bucket {h}: base + (key * {mul:#x}) >> shift"));
        b.mov32(Reg::R1, Reg::R6).alu32(AluOp::Mul, Reg::R1, mul as i32);
        b.alu32(AluOp::Rsh, Reg::R1, Reg::R9).alu32(AluOp::Add, Reg::R1, Reg::R8);
        b.store(Size::W, Reg::R10, FP_KEY, Reg::R1);
        kit::map_lookup(b, map::PF_V6_L2, FP_KEY);
        b.jmp(JmpCond::Eq, Reg::R0, 0, next_bucket);
        for s in 0..V6_SLOTS {
            let at = (s * slot::SIZE) as i16;
            let next = b.new_label(&format!("ipv6_slot_{h}_{}", s + 1));
            b.load(Size::W, Reg::R1, Reg::R0, at + slot::KEY as i16);
            b.jmp(JmpCond::Ne, Reg::R1, Reg::R6, next);
            b.load(Size::W, Reg::R1, Reg::R0, at + slot::STATE as i16);
            b.jmp(JmpCond::Eq, Reg::R1, SLOT_EMPTY as i32, next);
            if at != 0 {
                b.add(Reg::R0, i32::from(at));
            }
            b.ja(slot_found);
            b.place(next);
        }
        b.place(next_bucket);
    }
    b.ja(pass);
    b.place(slot_found).comment("r0 = the /32's slot, r1 = its state");
    b.jmp(JmpCond::Eq, Reg::R1, SLOT_DENY_ALL as i32, deny);
    b.jmp(JmpCond::Eq, Reg::R1, SLOT_LPM as i32, lpm);
    b.comment("one inline prefix: r3 = address bits 32..96, r4 = bits 96..128, host order");
    b.load(Size::W, Reg::R3, Reg::R7, V6_SRC + 4);
    emit_be32(b, Reg::R3);
    b.alu(AluOp::Lsh, Reg::R3, 32);
    b.load(Size::W, Reg::R4, Reg::R7, V6_SRC + 8);
    emit_be32(b, Reg::R4);
    b.alu(AluOp::Or, Reg::R3, Reg::R4);
    b.load(Size::W, Reg::R4, Reg::R7, V6_SRC + 12);
    emit_be32(b, Reg::R4);
    b.load(Size::DW, Reg::R1, Reg::R0, slot::MASK_HI as i16);
    b.alu(AluOp::And, Reg::R1, Reg::R3);
    b.load(Size::DW, Reg::R2, Reg::R0, slot::PREFIX_HI as i16);
    b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, pass);
    b.load(Size::W, Reg::R1, Reg::R0, slot::MASK_LO as i16);
    b.alu(AluOp::And, Reg::R1, Reg::R4);
    b.load(Size::W, Reg::R2, Reg::R0, slot::PREFIX_LO as i16);
    b.jmp(JmpCond::Eq, Reg::R1, Reg::R2, deny);
    b.ja(pass);
    b.place(lpm).comment("overflow: pf_v6_lpm, key {prefixlen = 128, source address}");
    b.store(Size::W, Reg::R10, FP_LPM_KEY, 128);
    for w in 0..4i16 {
        b.load(Size::W, Reg::R1, Reg::R7, V6_SRC + 4 * w);
        b.store(Size::W, Reg::R10, FP_LPM_KEY + 4 + 4 * w, Reg::R1);
    }
    kit::map_lookup(b, map::PF_V6_LPM, FP_LPM_KEY);
    b.jmp(JmpCond::Ne, Reg::R0, 0, deny);
    b.ja(pass);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic() {
        let a = generate().expect("generates");
        let b = generate().expect("generates");
        assert_eq!(a, b);
    }
}
