//! Loads, stores and atomics (`check_mem_access` and the per-region checks it calls).

use super::scalar::Scalar;
use super::state::{Byte, Kind, RegState, Stack, State};
use super::walk::{read, write, Env};
use super::ErrorKind;
use crate::spec::{CtxField, CtxValue, ProgKind};
use sluice_asm::{AtomicOp, Reg, Src};

/// `BPF_F_RDONLY_PROG`: programs may not write the map; `BPF_F_WRONLY_PROG`: not read it.
use crate::uapi::{BPF_F_RDONLY_PROG, BPF_F_WRONLY_PROG};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An unknown scalar as a load of `size` bytes yields it.
fn loaded(size: u64, signed: bool) -> RegState {
    let bits = u32::try_from(size * 8).unwrap_or(64);
    RegState::scalar(if signed { Scalar::signed_bits(bits) } else { Scalar::unsigned_bits(bits) })
}

/// `dst = *(size *)(base + off)`.
pub fn load(
    env: &mut Env,
    st: &mut State,
    size: u64,
    signed: bool,
    dst: Reg,
    base: Reg,
    off: i16,
) -> Result<(), ErrorKind> {
    if dst == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    let b = read(st, base)?;
    let value = match b.kind {
        Kind::Ctx => {
            let field = ctx_access(env, &b, off, size, Access::Read)?;
            if signed {
                return Err(ErrorKind::CtxInvalidAccess {
                    kind: env.kind,
                    off: i64::from(off),
                    size,
                    reason: "sign-extending loads from ctx are not in the subset",
                });
            }
            match field.value {
                CtxValue::Scalar => loaded(size, false),
                CtxValue::PacketStart => RegState::pointer(Kind::Packet, 0),
                CtxValue::PacketEnd => RegState::pointer(Kind::PacketEnd, 0),
                CtxValue::PacketMeta => RegState::pointer(Kind::PacketMeta, 0),
            }
        }
        Kind::Packet | Kind::PacketMeta => {
            check_packet(env, &b, base.num(), i64::from(off), size, Access::Read)?;
            loaded(size, signed)
        }
        Kind::MapValue(m) => {
            check_map_value(env, &b, base.num(), m, i64::from(off), size, Access::Read)?;
            loaded(size, signed)
        }
        Kind::Stack => stack_load(env, st, &b, base.num(), off, size, signed)?,
        Kind::MapValueOrNull(m) => {
            return Err(ErrorKind::MaybeNullDeref { reg: base.num(), map: env.map_name(m) })
        }
        _ => return Err(ErrorKind::InvalidMemAccess { reg: base.num(), ty: b.ty() }),
    };
    write(st, dst, value)
}

/// `*(size *)(base + off) = src`.
pub fn store(
    env: &mut Env,
    st: &mut State,
    size: u64,
    base: Reg,
    off: i16,
    src: Src,
) -> Result<(), ErrorKind> {
    let b = read(st, base)?;
    let (v, src_no) = match src {
        Src::Imm(i) => (RegState::constant(i64::from(i) as u64), 0),
        Src::Reg(r) => (read(st, r)?, r.num()),
    };
    let leak = |into| ErrorKind::PointerLeak { reg: src_no, ty: v.ty(), into };
    match b.kind {
        Kind::Ctx => {
            if let Src::Imm(_) = src {
                return Err(ErrorKind::CtxInvalidAccess {
                    kind: env.kind,
                    off: i64::from(off),
                    size,
                    reason: "BPF_ST stores into ctx are not allowed",
                });
            }
            ctx_access(env, &b, off, size, Access::Write)?;
            if v.is_pointer() {
                return Err(leak("ctx"));
            }
        }
        Kind::Packet | Kind::PacketMeta => {
            check_packet(env, &b, base.num(), i64::from(off), size, Access::Write)?;
            if v.is_pointer() {
                return Err(leak("packet"));
            }
        }
        Kind::MapValue(m) => {
            check_map_value(env, &b, base.num(), m, i64::from(off), size, Access::Write)?;
            if v.is_pointer() {
                return Err(leak("map value"));
            }
        }
        Kind::Stack => stack_store(env, st, &b, base.num(), off, size, v, src)?,
        Kind::MapValueOrNull(m) => {
            return Err(ErrorKind::MaybeNullDeref { reg: base.num(), map: env.map_name(m) })
        }
        _ => return Err(ErrorKind::InvalidMemAccess { reg: base.num(), ty: b.ty() }),
    }
    Ok(())
}

/// An atomic read-modify-write on the stack or a map value (`check_atomic`).
pub fn atomic(
    env: &mut Env,
    st: &mut State,
    size: u64,
    op: AtomicOp,
    base: Reg,
    off: i16,
    src: Reg,
) -> Result<(), ErrorKind> {
    if size != 4 && size != 8 {
        return Err(ErrorKind::BadAtomic { reason: "only 4- and 8-byte atomic operations exist" });
    }
    let b = read(st, base)?;
    let s = read(st, src)?;
    let into = "memory through an atomic operation";
    if s.is_pointer() {
        return Err(ErrorKind::PointerLeak { reg: src.num(), ty: s.ty(), into });
    }
    if op == AtomicOp::CmpXchg {
        let r0 = read(st, Reg::R0)?;
        if r0.is_pointer() {
            return Err(ErrorKind::PointerLeak { reg: 0, ty: r0.ty(), into });
        }
    }
    let misaligned = ErrorKind::BadAtomic { reason: "misaligned atomic access" };
    match b.kind {
        Kind::Stack => {
            let start = stack_addr(env, &b, base.num(), off, size)?;
            if !(start as u64).is_multiple_of(size) {
                return Err(misaligned);
            }
            check_stack_readable(st, start, size)?;
            if (start..start + size as usize).any(|i| st.stack.bytes[i] == Byte::Spill) {
                let spilled_pointer = st.stack.spill(start / 8).is_some_and(RegState::is_pointer);
                if spilled_pointer {
                    return Err(ErrorKind::BadAtomic { reason: "atomic operation on a spilled pointer" });
                }
            }
            st.stack.write(start, size as usize, Byte::Misc);
        }
        Kind::MapValue(m) => {
            check_map_value(env, &b, base.num(), m, i64::from(off), size, Access::Read)?;
            check_map_value(env, &b, base.num(), m, i64::from(off), size, Access::Write)?;
            let fixed = i64::from(b.off) + i64::from(off);
            let var_low_bits = (b.var.tnum.value | b.var.tnum.mask) & (size - 1);
            if fixed.rem_euclid(size as i64) != 0 || var_low_bits != 0 {
                return Err(misaligned);
            }
        }
        Kind::MapValueOrNull(m) => {
            return Err(ErrorKind::MaybeNullDeref { reg: base.num(), map: env.map_name(m) })
        }
        Kind::Ctx | Kind::Packet | Kind::PacketMeta => {
            return Err(ErrorKind::BadAtomic { reason: "atomic operations on ctx or packet are not allowed" })
        }
        _ => return Err(ErrorKind::InvalidMemAccess { reg: base.num(), ty: b.ty() }),
    }
    let old = loaded(size, false);
    match op {
        AtomicOp::CmpXchg => write(st, Reg::R0, old)?,
        AtomicOp::Xchg
        | AtomicOp::Add { fetch: true }
        | AtomicOp::Or { fetch: true }
        | AtomicOp::And { fetch: true }
        | AtomicOp::Xor { fetch: true } => write(st, src, old)?,
        _ => {}
    }
    Ok(())
}

/// The context field an access at `ctx + off` of `size` bytes touches, if the access is
/// allowed (`check_ctx_access` with the kind's `is_valid_access`).
fn ctx_access(
    env: &Env,
    reg: &RegState,
    off: i16,
    size: u64,
    access: Access,
) -> Result<&'static CtxField, ErrorKind> {
    let o = i64::from(off);
    let invalid = |reason| ErrorKind::CtxInvalidAccess { kind: env.kind, off: o, size, reason };
    if reg.off != 0 || reg.var.const_value() != Some(0) {
        return Err(invalid("dereference of a modified ctx pointer"));
    }
    let field = env
        .kind
        .ctx_fields()
        .iter()
        .find(|f| o >= i64::from(f.off) && o < i64::from(f.off) + i64::from(f.size))
        .ok_or_else(|| invalid("no context field at this offset"))?;
    // `xdp_is_valid_access`: only devmap programs (not in the subset) see the egress device.
    if env.kind == ProgKind::Xdp && field.name == "egress_ifindex" {
        return Err(invalid("egress_ifindex is readable by devmap programs only"));
    }
    let exact = o == i64::from(field.off) && size == u64::from(field.size);
    match access {
        Access::Write if !field.writable => Err(ErrorKind::CtxReadOnly { field: field.name }),
        Access::Write if !exact => Err(invalid("stores must cover the whole field")),
        Access::Write => Ok(field),
        Access::Read if exact => Ok(field),
        Access::Read => {
            let narrow_ok = env.kind == ProgKind::SchedCls
                && field.value == CtxValue::Scalar
                && field.size == 4
                && size < 4
                && o % size as i64 == 0;
            if narrow_ok {
                Ok(field)
            } else if field.value != CtxValue::Scalar {
                Err(invalid("pointer fields must be loaded whole"))
            } else {
                Err(invalid("loads must cover the whole field"))
            }
        }
    }
}

/// `check_packet_access`: `[reg + off, + size)` lies within the proven range.
pub fn check_packet(
    env: &Env,
    reg: &RegState,
    regno: u8,
    off: i64,
    size: u64,
    access: Access,
) -> Result<(), ErrorKind> {
    if access == Access::Write && env.kind == ProgKind::SockOps {
        return Err(ErrorKind::PacketReadOnly { kind: env.kind });
    }
    if reg.var.smin < 0 {
        return Err(ErrorKind::NegativeVarOffset { reg: regno, ty: reg.ty(), var: reg.var.to_string() });
    }
    let o = i64::from(reg.off) + off;
    if o < 0 || o + size as i64 > i64::from(reg.range) {
        return Err(ErrorKind::PacketOutOfRange { reg: regno, off: o, size, range: reg.range });
    }
    Ok(())
}

/// `check_map_access`: every offset the pointer may have keeps `size` bytes in the value.
pub fn check_map_value(
    env: &Env,
    reg: &RegState,
    regno: u8,
    map: usize,
    off: i64,
    size: u64,
    access: Access,
) -> Result<(), ErrorKind> {
    let Some(spec) = env.maps.get(map) else {
        return Err(ErrorKind::UnknownMap { name: format!("#{map}") });
    };
    let forbidden = match access {
        Access::Write => spec.flags & BPF_F_RDONLY_PROG != 0,
        Access::Read => spec.flags & BPF_F_WRONLY_PROG != 0,
    };
    if forbidden {
        let access = if access == Access::Write { "write into" } else { "read from" };
        return Err(ErrorKind::MapAccessForbidden { map: spec.name.clone(), access });
    }
    if reg.var.smin < 0 {
        return Err(ErrorKind::NegativeVarOffset { reg: regno, ty: reg.ty(), var: reg.var.to_string() });
    }
    let fixed = i128::from(reg.off) + i128::from(off);
    let lo = fixed + i128::from(reg.var.smin);
    let hi = fixed + i128::from(reg.var.umax);
    if lo < 0 || hi + i128::from(size) > i128::from(spec.value_size) {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        return Err(ErrorKind::MapValueOutOfBounds {
            reg: regno,
            map: spec.name.clone(),
            min: clamp(lo),
            max: clamp(hi),
            size,
            value_size: spec.value_size,
        });
    }
    Ok(())
}

/// The stack byte index of `reg + off`, checking the whole access lies in the frame.
pub fn stack_addr(env: &mut Env, reg: &RegState, regno: u8, off: i16, size: u64) -> Result<usize, ErrorKind> {
    let Some(v) = reg.var.const_value() else {
        return Err(ErrorKind::VariableStackAccess { reg: regno, var: reg.var.to_string() });
    };
    let o = i64::from(reg.off).saturating_add(v as i64).saturating_add(i64::from(off));
    let end = o.saturating_add(i64::try_from(size).unwrap_or(i64::MAX));
    match Stack::index(o) {
        Some(start) if end <= 0 => {
            env.touch_stack(o);
            Ok(start)
        }
        _ => Err(ErrorKind::StackOutOfBounds { off: o, size }),
    }
}

/// Every byte of `[start, start + size)` was written, and no spilled pointer is read in part.
pub fn check_stack_readable(st: &State, start: usize, size: u64) -> Result<(), ErrorKind> {
    let off = start as i64 - super::state::STACK_SIZE as i64;
    for i in start..start + size as usize {
        match st.stack.bytes[i] {
            Byte::Invalid => return Err(ErrorKind::UninitStack { off, size }),
            Byte::Spill if st.stack.spill(i / 8).is_some_and(RegState::is_pointer) => {
                return Err(ErrorKind::BadSpill { off, size, reason: "partial read of a spilled pointer" })
            }
            _ => {}
        }
    }
    Ok(())
}

fn stack_load(
    env: &mut Env,
    st: &State,
    reg: &RegState,
    regno: u8,
    off: i16,
    size: u64,
    signed: bool,
) -> Result<RegState, ErrorKind> {
    let start = stack_addr(env, reg, regno, off, size)?;
    if size == 8 && start % 8 == 0 {
        if let Some(spilled) = st.stack.spill(start / 8) {
            env.spill_slot = u8::try_from(start / 8).ok();
            return Ok(*spilled);
        }
    }
    check_stack_readable(st, start, size)?;
    if st.stack.bytes[start..start + size as usize].iter().all(|b| *b == Byte::Zero) {
        return Ok(RegState::constant(0));
    }
    Ok(loaded(size, signed))
}

#[allow(clippy::too_many_arguments)]
fn stack_store(
    env: &mut Env,
    st: &mut State,
    reg: &RegState,
    regno: u8,
    off: i16,
    size: u64,
    value: RegState,
    src: Src,
) -> Result<(), ErrorKind> {
    let start = stack_addr(env, reg, regno, off, size)?;
    let whole_slot = size == 8 && start % 8 == 0;
    if whole_slot {
        st.stack.put_spill(start, value);
        env.spill_slot = u8::try_from(start / 8).ok();
    } else if value.is_pointer() {
        return Err(ErrorKind::BadSpill {
            off: start as i64 - super::state::STACK_SIZE as i64,
            size,
            reason: "pointers may only be spilled whole, to an 8-byte aligned slot",
        });
    } else if value.var.const_value() == Some(0) {
        // The bytes read back as a known zero: the stored value matters (the kernel
        // marks it precise too; backtracking does not follow zero bytes).
        if let Src::Reg(r) = src {
            env.need_precise(st, 1 << r.num());
        }
        st.stack.write(start, size as usize, Byte::Zero);
    } else {
        st.stack.write(start, size as usize, Byte::Misc);
    }
    Ok(())
}
