//! Conditional jumps (`check_cond_jmp_op`): decided branches, bounds refinement on both
//! sides, null checks of lookup results, packet range proofs.

use super::scalar::{self, Scalar};
use super::state::{Kind, RegState, State};
use super::walk::{read, Env, Flow};
use super::ErrorKind;
use sluice_asm::{JmpCond, Reg, Src};

/// The largest packet offset range proofs reason about (`MAX_PACKET_OFF`).
const MAX_PACKET_OFF: u64 = 0xffff;

/// `if dst COND src goto target`.
#[allow(clippy::too_many_arguments)]
pub fn cond_jump(
    env: &mut Env,
    st: &mut State,
    pc: usize,
    wide: bool,
    cond: JmpCond,
    dst: Reg,
    src: Src,
    target: usize,
) -> Result<Flow, ErrorKind> {
    let a = read(st, dst)?;
    let (b, src_reg) = match src {
        Src::Imm(i) => (RegState::constant(i64::from(i) as u64), None),
        Src::Reg(r) => (read(st, r)?, Some(r)),
    };
    let fall = pc + 1;
    // A bit per scalar register operand, for when the outcome depends on their values.
    let scalar_regs = |only_src: bool| {
        let d = if a.kind == Kind::Scalar && !only_src { 1 << dst.num() } else { 0 };
        let s = match src_reg {
            Some(r) if b.kind == Kind::Scalar => 1 << r.num(),
            _ => 0,
        };
        d | s
    };
    if a.kind == Kind::Scalar && b.kind == Kind::Scalar {
        let flow = scalar_branch(st, pc, wide, cond, dst, src_reg, &a, &b, target);
        if !matches!(flow, Flow::Fork { .. }) {
            // Only one side (or none) was possible because of the operands' bounds.
            env.need_precise(st, scalar_regs(false));
        }
        return Ok(flow);
    }
    if let (true, JmpCond::Eq | JmpCond::Ne, Kind::MapValueOrNull(_)) = (wide, cond, a.kind) {
        if b.is_null() {
            env.need_precise(st, scalar_regs(true));
            return Ok(null_check(st, pc, cond, a.id, target));
        }
    }
    // A map value pointer is never NULL (`reg_not_null`).
    if let JmpCond::Eq | JmpCond::Ne = cond {
        let non_null = |r: &RegState| matches!(r.kind, Kind::MapValue(_));
        if (non_null(&a) && b.is_null()) || (a.is_null() && non_null(&b)) {
            env.need_precise(st, scalar_regs(false));
            return Ok(Flow::Next(if cond == JmpCond::Ne { target } else { fall }));
        }
    }
    if wide {
        if let Some(flow) = packet_compare(st, pc, cond, &a, &b, target) {
            return Ok(flow);
        }
    }
    // Any other comparison involving a pointer teaches nothing.
    let taken = st.clone();
    Ok(split(st, pc, target, true, true, taken))
}

/// Continue on the possible sides: both (a fork), one, or none.
fn split(st: &mut State, pc: usize, target: usize, taken_ok: bool, fall_ok: bool, mut taken: State) -> Flow {
    match (taken_ok, fall_ok) {
        (true, true) => {
            taken.push_path(pc, true);
            st.push_path(pc, false);
            Flow::Fork { target, taken: Box::new(taken) }
        }
        (true, false) => {
            *st = taken;
            Flow::Next(target)
        }
        (false, true) => Flow::Next(pc + 1),
        (false, false) => Flow::Dead,
    }
}

/// The value a comparison looks at: the full register, or its low 32 bits extended the
/// way the condition reads them.
fn view(v: &Scalar, wide: bool, cond: JmpCond) -> Scalar {
    if wide {
        *v
    } else if scalar::is_signed(cond) {
        v.sext32()
    } else {
        v.zext32()
    }
}

#[allow(clippy::too_many_arguments)]
fn scalar_branch(
    st: &mut State,
    pc: usize,
    wide: bool,
    cond: JmpCond,
    dst: Reg,
    src_reg: Option<Reg>,
    a: &RegState,
    b: &RegState,
    target: usize,
) -> Flow {
    let (va, vb) = (view(&a.var, wide, cond), view(&b.var, wide, cond));
    let mut decided = scalar::compare(cond, &va, &vb);
    if decided.is_none() && wide && matches!(cond, JmpCond::Eq | JmpCond::Ne) {
        // 64-bit equality also fails when the low halves cannot be equal.
        for (x, y) in [(a.var.zext32(), b.var.zext32()), (a.var.sext32(), b.var.sext32())] {
            if scalar::compare(JmpCond::Eq, &x, &y) == Some(false) {
                decided = Some(cond == JmpCond::Ne);
            }
        }
    }
    match decided {
        Some(true) => Flow::Next(target),
        Some(false) => Flow::Next(pc + 1),
        None => {
            let mut taken = st.clone();
            let taken_ok = refine_into(&mut taken, wide, cond, true, dst, src_reg, a, b);
            let fall_ok = refine_into(st, wide, cond, false, dst, src_reg, a, b);
            split(st, pc, target, taken_ok, fall_ok, taken)
        }
    }
}

/// Narrow both operands in `st` to the side where `dst cond src` is `holds`; false when
/// that side is impossible.
#[allow(clippy::too_many_arguments)]
fn refine_into(
    st: &mut State,
    wide: bool,
    cond: JmpCond,
    holds: bool,
    dst: Reg,
    src_reg: Option<Reg>,
    a: &RegState,
    b: &RegState,
) -> bool {
    if src_reg == Some(dst) {
        return true;
    }
    let (na, nb) = if wide {
        scalar::refine(cond, holds, &a.var, &b.var)
    } else {
        let signed = scalar::is_signed(cond);
        let (ra, rb) = scalar::refine(cond, holds, &view(&a.var, wide, cond), &view(&b.var, wide, cond));
        (Scalar::with_subreg(&a.var, &ra, signed), Scalar::with_subreg(&b.var, &rb, signed))
    };
    if na.is_empty() || nb.is_empty() {
        return false;
    }
    set_scalar(st, dst, a.id, na);
    if let Some(r) = src_reg {
        set_scalar(st, r, b.id, nb);
    }
    true
}

/// Give register `r` (and every scalar linked to it by `id`) the value `v`.
fn set_scalar(st: &mut State, r: Reg, id: u32, v: Scalar) {
    st.regs[usize::from(r.num())].var = v;
    if id != 0 {
        for reg in st.all_regs_mut() {
            if reg.kind == Kind::Scalar && reg.id == id {
                reg.var = v;
            }
        }
    }
}

/// `if rX == 0` / `!= 0` on a lookup result: NULL on one side, a map value on the other,
/// for every copy with the same id (`mark_ptr_or_null_regs`).
fn null_check(st: &mut State, pc: usize, cond: JmpCond, id: u32, target: usize) -> Flow {
    let mut taken = st.clone();
    let taken_is_null = cond == JmpCond::Eq;
    mark_ptr_or_null(&mut taken, id, taken_is_null);
    mark_ptr_or_null(st, id, !taken_is_null);
    split(st, pc, target, true, true, taken)
}

fn mark_ptr_or_null(st: &mut State, id: u32, is_null: bool) {
    for reg in st.all_regs_mut() {
        if let Kind::MapValueOrNull(m) = reg.kind {
            if reg.id == id {
                if is_null {
                    *reg = RegState::constant(0);
                } else {
                    reg.kind = Kind::MapValue(m);
                    reg.id = 0;
                }
            }
        }
    }
}

/// `try_match_pkt_pointers`: a packet pointer compared with the packet end (or a meta
/// pointer with the packet start) proves a range on the side where it is not beyond it.
fn packet_compare(
    st: &mut State,
    pc: usize,
    cond: JmpCond,
    a: &RegState,
    b: &RegState,
    target: usize,
) -> Option<Flow> {
    let dst_form = (a.kind == Kind::Packet && b.kind == Kind::PacketEnd)
        || (a.kind == Kind::PacketMeta && b.is_init_packet());
    let src_form = (a.kind == Kind::PacketEnd && b.kind == Kind::Packet)
        || (a.is_init_packet() && b.kind == Kind::PacketMeta);
    if !dst_form && !src_form {
        return None;
    }
    // (the side that learns the range, the pointer, whether the bound is strict)
    let (on_taken, ptr, open) = match (cond, dst_form) {
        (JmpCond::Gt, true) => (false, a, false),
        (JmpCond::Gt, false) => (true, b, true),
        (JmpCond::Lt, true) => (true, a, true),
        (JmpCond::Lt, false) => (false, b, false),
        (JmpCond::Ge, true) => (false, a, true),
        (JmpCond::Ge, false) => (true, b, false),
        (JmpCond::Le, true) => (true, a, false),
        (JmpCond::Le, false) => (false, b, true),
        _ => return None,
    };
    let mut taken = st.clone();
    if on_taken {
        find_good_pkt_pointers(&mut taken, ptr, open);
    } else {
        find_good_pkt_pointers(st, ptr, open);
    }
    Some(split(st, pc, target, true, true, taken))
}

/// Every pointer with `ptr`'s type and id may access `ptr.off` bytes (one more when the
/// comparison was strict) from its base (`find_good_pkt_pointers`).
fn find_good_pkt_pointers(st: &mut State, ptr: &RegState, open: bool) {
    if ptr.off < 0 || (ptr.off == 0 && open) {
        return;
    }
    let off = ptr.off as u64;
    if ptr.var.umax > MAX_PACKET_OFF || ptr.var.umax + off > MAX_PACKET_OFF {
        return;
    }
    let new_range = off as u32 + u32::from(open);
    for reg in st.all_regs_mut() {
        if reg.kind == ptr.kind && reg.id == ptr.id {
            reg.range = reg.range.max(new_range);
        }
    }
}
