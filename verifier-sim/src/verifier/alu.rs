//! ALU instructions (`check_alu_op`, `adjust_reg_min_max_vals`, `adjust_ptr_min_max_vals`).

use super::scalar::{self, Scalar};
use super::state::{Kind, RegState, State};
use super::walk::{read, write, Env};
use super::ErrorKind;
use super::ValueType;
use sluice_asm::{AluOp, JmpCond, Reg, Src};

/// Offsets and scalars added to pointers must stay below this (`BPF_MAX_VAR_OFF`).
const MAX_VAR_OFF: i64 = 1 << 29;

fn arith(reg: u8, ty: ValueType, reason: &'static str) -> ErrorKind {
    ErrorKind::PointerArithmetic { reg, ty, reason }
}

/// `dst = dst OP src` (or `dst = src` for `Mov`).
#[allow(clippy::too_many_arguments)]
pub fn alu(
    env: &mut Env,
    st: &mut State,
    pc: usize,
    wide: bool,
    op: AluOp,
    dst: Reg,
    src: Src,
) -> Result<(), ErrorKind> {
    if dst == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    if let Src::Imm(imm) = src {
        let bits = if wide { 64 } else { 32 };
        match op {
            AluOp::Div | AluOp::SDiv | AluOp::Mod | AluOp::SMod if imm == 0 => {
                return Err(ErrorKind::DivByZero)
            }
            AluOp::Lsh | AluOp::Rsh | AluOp::Arsh if imm < 0 || imm >= bits => {
                return Err(ErrorKind::InvalidShift { amount: i64::from(imm) })
            }
            _ => {}
        }
    }
    let (s, src_no) = match src {
        Src::Imm(v) => (RegState::constant(i64::from(v) as u64), dst.num()),
        Src::Reg(r) => (read(st, r)?, r.num()),
    };
    if op == AluOp::Mov {
        return mov(env, st, wide, dst, src, s);
    }
    let d = read(st, dst)?;
    let dst_no = dst.num();
    if !wide {
        if d.is_pointer() {
            return Err(ErrorKind::PointerAlu32 { reg: dst_no, ty: d.ty() });
        }
        if s.is_pointer() {
            return Err(ErrorKind::PointerAlu32 { reg: src_no, ty: s.ty() });
        }
    }
    let result = match (d.is_pointer(), s.is_pointer()) {
        (false, false) => {
            if matches!(op, AluOp::Div | AluOp::SDiv | AluOp::Mod | AluOp::SMod) && matches!(src, Src::Reg(_))
            {
                let divisor = if wide { s.var } else { s.var.zext32() };
                if scalar::compare(JmpCond::Eq, &divisor, &Scalar::constant(0)) != Some(false) {
                    env.note_div_by_reg(pc);
                }
            }
            let v = if wide { Scalar::alu64(op, &d.var, &s.var) } else { Scalar::alu32(op, &d.var, &s.var) };
            RegState::scalar(v)
        }
        (true, false) => {
            // The pointer's bounds now depend on the scalar's.
            if let Src::Reg(r) = src {
                env.need_precise(st, 1 << r.num());
            }
            ptr_alu(env, op, &d, &s.var, dst_no)?
        }
        (false, true) => match op {
            AluOp::Add => {
                env.need_precise(st, 1 << dst_no);
                ptr_alu(env, op, &s, &d.var, dst_no)?
            }
            AluOp::Sub => return Err(arith(dst_no, s.ty(), "tried to subtract pointer from scalar")),
            _ => return Err(operator_error(op, src_no, s.ty())),
        },
        (true, true) => ptr_diff(op, &d, &s, dst_no)?,
    };
    write(st, dst, result)
}

/// `dst = src`: pointers are copied whole; scalars are linked by a shared id so that a
/// later branch on either bounds both (`assign_scalar_id_before_mov`).
fn mov(env: &mut Env, st: &mut State, wide: bool, dst: Reg, src: Src, s: RegState) -> Result<(), ErrorKind> {
    if !wide && s.is_pointer() {
        let reg = if let Src::Reg(r) = src { r.num() } else { dst.num() };
        return Err(ErrorKind::PointerAlu32 { reg, ty: s.ty() });
    }
    let mut v = s;
    if s.kind == Kind::Scalar {
        let unchanged = wide || s.var.umax <= u64::from(u32::MAX);
        if !unchanged {
            v = RegState::scalar(s.var.zext32());
        } else if let (Src::Reg(r), None) = (src, s.var.const_value()) {
            if s.id == 0 {
                let id = env.fresh_id();
                st.regs[usize::from(r.num())].id = id;
                v.id = id;
            }
        }
    }
    write(st, dst, v)
}

fn operator_error(op: AluOp, reg: u8, ty: ValueType) -> ErrorKind {
    let reason = match op {
        AluOp::And | AluOp::Or | AluOp::Xor => "bitwise operator on pointer",
        AluOp::Add => "pointer + pointer",
        _ => "only addition and subtraction of scalars are allowed",
    };
    arith(reg, ty, reason)
}

/// `ptr OP scalar` (or `scalar + ptr`): the new pointer.
fn ptr_alu(env: &mut Env, op: AluOp, ptr: &RegState, off: &Scalar, reg: u8) -> Result<RegState, ErrorKind> {
    let ty = ptr.ty();
    match ptr.kind {
        Kind::Packet | Kind::PacketMeta | Kind::MapValue(_) | Kind::Stack => {}
        Kind::MapValueOrNull(_) => return Err(arith(reg, ty, "null-check it first")),
        _ => return Err(arith(reg, ty, "this pointer type allows no arithmetic")),
    }
    match op {
        AluOp::Add => {}
        AluOp::Sub if ptr.kind == Kind::Stack => {
            return Err(arith(reg, ty, "subtraction from stack pointer prohibited"))
        }
        AluOp::Sub => {}
        _ => return Err(operator_error(op, reg, ty)),
    }
    // check_reg_sane_offset on the scalar.
    if let Some(c) = off.const_value() {
        let c = c as i64;
        if c >= MAX_VAR_OFF || c <= -MAX_VAR_OFF {
            return Err(arith(reg, ty, "math with an offset of 2^29 or more"));
        }
    }
    if off.smin == i64::MIN {
        return Err(arith(reg, ty, "math with a register with unbounded min value"));
    }
    if off.smin >= MAX_VAR_OFF || off.smin <= -MAX_VAR_OFF {
        return Err(arith(reg, ty, "the value makes the pointer out of bounds"));
    }
    let mut out = *ptr;
    match off.const_value() {
        Some(c) => {
            let c = c as i64;
            let new = if op == AluOp::Add { i64::from(ptr.off) + c } else { i64::from(ptr.off) - c };
            out.off = i32::try_from(new).map_err(|_| arith(reg, ty, "pointer offset out of bounds"))?;
        }
        None => {
            out.var = Scalar::alu64(op, &ptr.var, off);
            if matches!(ptr.kind, Kind::Packet | Kind::PacketMeta) {
                // Something was added to the packet pointer: a new identity, no range.
                out.id = env.fresh_id();
                out.range = 0;
            }
        }
    }
    let off_ok = i64::from(out.off) < MAX_VAR_OFF && i64::from(out.off) > -MAX_VAR_OFF;
    if !off_ok || out.var.smin <= -MAX_VAR_OFF || out.var.smin >= MAX_VAR_OFF {
        return Err(arith(reg, ty, "pointer offset out of bounds"));
    }
    Ok(out)
}

/// `ptr - ptr`: an unknown scalar when both point into the same object.
fn ptr_diff(op: AluOp, d: &RegState, s: &RegState, reg: u8) -> Result<RegState, ErrorKind> {
    if op != AluOp::Sub {
        return Err(operator_error(op, reg, d.ty()));
    }
    let packet = |k: Kind| matches!(k, Kind::Packet | Kind::PacketMeta | Kind::PacketEnd);
    let related = match (d.kind, s.kind) {
        (a, b) if packet(a) && packet(b) => true,
        (Kind::Stack, Kind::Stack) => true,
        (Kind::MapValue(a), Kind::MapValue(b)) => a == b,
        _ => false,
    };
    if !related {
        return Err(arith(reg, d.ty(), "subtraction of pointers into different objects"));
    }
    Ok(RegState::unknown())
}

/// `dst = -dst`.
pub fn neg(st: &mut State, wide: bool, dst: Reg) -> Result<(), ErrorKind> {
    if dst == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    let d = read(st, dst)?;
    if d.is_pointer() {
        return Err(arith(dst.num(), d.ty(), "negation of a pointer"));
    }
    write(st, dst, RegState::scalar(Scalar::neg(&d.var, wide)))
}

/// `dst = (sN)src`.
pub fn movsx(st: &mut State, wide: bool, bits: u8, dst: Reg, src: Reg) -> Result<(), ErrorKind> {
    if dst == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    let s = read(st, src)?;
    if s.is_pointer() {
        return Err(arith(src.num(), s.ty(), "sign extension of a pointer"));
    }
    let bits = u32::from(bits).clamp(1, 63);
    let half = 1i64 << (bits - 1);
    let ext = match s.var.const_value() {
        Some(c) => Scalar::constant((((c << (64 - bits)) as i64) >> (64 - bits)) as u64),
        None if s.var.smin >= -half && s.var.smax < half => s.var,
        None => Scalar::signed_bits(bits),
    };
    write(st, dst, RegState::scalar(if wide { ext } else { ext.zext32() }))
}

/// Byte swaps: the result is an unknown scalar, as the kernel tracks it.
pub fn endian(st: &mut State, dst: Reg) -> Result<(), ErrorKind> {
    if dst == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    let d = read(st, dst)?;
    if d.is_pointer() {
        return Err(arith(dst.num(), d.ty(), "byte swap of a pointer"));
    }
    write(st, dst, RegState::unknown())
}
