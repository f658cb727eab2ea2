//! The emitter kit: one emitter per idiom every generator uses (map calls on stack keys,
//! the flow-hash word), so an idiom is written, reviewed and fixed once.
//!
//! Register contract: map emitters clobber `r0`-`r5` (a helper call) and leave the
//! helper's answer in `r0`; keys and values are stack slots given as offsets from `r10`.

use crate::lb::hash::FLOW_HASH_MIX;
use sluice_asm::helpers::{MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM};
use sluice_asm::{AluOp, Builder, Reg};

/// `BPF_ANY`: create or replace.
pub const BPF_ANY: i32 = 0;

/// `r0 = map_lookup_elem(map, r10 + key)`.
pub fn map_lookup(b: &mut Builder, map: &str, key: i16) {
    b.ld_map(Reg::R1, map);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(key));
    b.call(MAP_LOOKUP_ELEM);
}

/// `r0 = map_update_elem(map, r10 + key, r10 + value, flags)`.
pub fn map_update(b: &mut Builder, map: &str, key: i16, value: i16, flags: i32) {
    b.ld_map(Reg::R1, map);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(key));
    b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(value));
    b.mov(Reg::R4, flags);
    b.call(MAP_UPDATE_ELEM);
}

/// One word of [`crate::lb::hash::flow_hash`]: `h = (h ^ w) * MIX; h ^= h >> 15`, in
/// 32-bit operations (`tmp` is clobbered).
pub fn flow_hash_word(b: &mut Builder, h: Reg, w: Reg, tmp: Reg) {
    b.alu32(AluOp::Xor, h, w).alu32(AluOp::Mul, h, FLOW_HASH_MIX as i32);
    b.mov32(tmp, h).alu32(AluOp::Rsh, tmp, 15).alu32(AluOp::Xor, h, tmp);
}

/// murmur3's 32-bit finaliser (`fmix32`) on `h` (`tmp` is clobbered).
pub fn fmix32(b: &mut Builder, h: Reg, tmp: Reg) {
    for (shift, mul) in [(16, Some(0x85eb_ca6bu32)), (13, Some(0xc2b2_ae35)), (16, None)] {
        b.mov32(tmp, h).alu32(AluOp::Rsh, tmp, shift).alu32(AluOp::Xor, h, tmp);
        if let Some(m) = mul {
            b.alu32(AluOp::Mul, h, m as i32);
        }
    }
}

/// Name a stack copy of layout `T` at `r10 + off` for the listing: the whole as `name`, each
/// field (padding left out) as `name.field`.
pub fn stack_layout<T: crate::maps::Layout>(b: &mut Builder, name: &str, off: i16) {
    b.stack_slot(name, off, std::mem::size_of::<T>() as u16);
    for f in T::FIELDS.iter().filter(|f| !f.name.starts_with('_')) {
        b.stack_slot(format!("{name}.{}", f.name), off + f.off as i16, f.size as u16);
    }
}

/// The endpoint policy's trie decision for a complete `policy` key at `r10 + key`
/// ([`crate::maps::policy::policy_key`], `FULL_BITS`): the longest match in the key's
/// identity subtree, then in the "any identity" subtree (the key's identity is zeroed for
/// the second lookup). Jumps to `found` with `r0` = the `policy` value; falls through on a
/// miss (default deny).
pub fn policy_trie_lookup(b: &mut Builder, key: i16, found: impl Into<sluice_asm::Target> + Clone) {
    use crate::maps::policy::policy_key;
    for pass in 0..2 {
        if pass == 1 {
            b.store(sluice_asm::Size::W, Reg::R10, key + policy_key::IDENTITY as i16, 0);
        }
        map_lookup(b, crate::maps::names::POLICY, key);
        b.jmp(sluice_asm::JmpCond::Ne, Reg::R0, 0, found.clone());
    }
}

/// Add `amount` (a register the helper call keeps: `r6`-`r9`; `None` adds 1) to the `u64`
/// at `index` of the (per-CPU) array `map`; `r10 + key` is a 4-byte scratch slot.
pub fn counter_add(b: &mut Builder, map: &str, key: i16, index: i32, amount: Option<Reg>) {
    use sluice_asm::{JmpCond, Size};
    b.store(Size::W, Reg::R10, key, index);
    map_lookup(b, map, key);
    let done = b.new_label("counted");
    b.jmp(JmpCond::Eq, Reg::R0, 0, done);
    b.load(Size::DW, Reg::R1, Reg::R0, 0);
    match amount {
        Some(r) => b.add(Reg::R1, r),
        None => b.add(Reg::R1, 1),
    };
    b.store(Size::DW, Reg::R0, 0, Reg::R1);
    b.place(done);
}
