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
