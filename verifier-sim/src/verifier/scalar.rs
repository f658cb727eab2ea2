//! Scalar bounds: unsigned and signed 64-bit ranges plus a [`Tnum`], kept consistent with
//! each other the way `reg_bounds_sync` does.
//!
//! The kernel also tracks separate 32-bit bounds. Here the 32-bit view of a value is derived
//! on demand ([`Scalar::zext32`], [`Scalar::sext32`]) and written back with
//! [`Scalar::with_subreg`]; that loses some precision the kernel keeps, which only makes us
//! stricter. Every transfer function is at most as precise as the kernel's (`DIV`/`MOD`
//! give unknown values, multiplication needs small non-negative factors), so that what we
//! accept the kernel accepts too. All arithmetic is checked or wrapping: nothing here panics.

use super::tnum::Tnum;
use sluice_asm::{AluOp, JmpCond};
use std::fmt;

const U32: u64 = u32::MAX as u64;
const UPPER: u64 = !U32;

/// What is known about a 64-bit value (or about the variable part of a pointer's offset).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scalar {
    pub umin: u64,
    pub umax: u64,
    pub smin: i64,
    pub smax: i64,
    pub tnum: Tnum,
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v) = self.const_value() {
            return write!(f, "{}", v as i64);
        }
        let mut parts = Vec::new();
        if self.smin != i64::MIN {
            parts.push(format!("smin={}", self.smin));
        }
        if self.smax != i64::MAX {
            parts.push(format!("smax={}", self.smax));
        }
        if self.umin != 0 {
            parts.push(format!("umin={}", self.umin));
        }
        if self.umax != u64::MAX {
            parts.push(format!("umax={}", self.umax));
        }
        if self.tnum.mask != u64::MAX {
            parts.push(format!("var_off={:?}", self.tnum));
        }
        write!(f, "scalar({})", parts.join(","))
    }
}

impl Scalar {
    /// Nothing known.
    pub const UNKNOWN: Scalar =
        Scalar { umin: 0, umax: u64::MAX, smin: i64::MIN, smax: i64::MAX, tnum: Tnum::UNKNOWN };

    /// Exactly `v`.
    pub fn constant(v: u64) -> Scalar {
        Scalar { umin: v, umax: v, smin: v as i64, smax: v as i64, tnum: Tnum::constant(v) }
    }

    /// Any value of the low `bits` bits, upper bits zero (a zero-extending load).
    pub fn unsigned_bits(bits: u32) -> Scalar {
        if bits >= 64 {
            return Scalar::UNKNOWN;
        }
        let max = (1u64 << bits) - 1;
        Scalar { umin: 0, umax: max, smin: 0, smax: max as i64, tnum: Tnum { value: 0, mask: max } }
    }

    /// Any sign-extended value of `bits` bits (a sign-extending load).
    pub fn signed_bits(bits: u32) -> Scalar {
        if bits >= 64 || bits == 0 {
            return Scalar::UNKNOWN;
        }
        let half = 1i64 << (bits - 1);
        Scalar { smin: -half, smax: half - 1, ..Scalar::UNKNOWN }.sync()
    }

    /// The value, if only one is possible.
    pub fn const_value(&self) -> Option<u64> {
        (self.tnum.is_const() && self.umin == self.umax).then_some(self.tnum.value)
    }

    /// Whether no value satisfies every constraint (a dead branch).
    pub fn is_empty(&self) -> bool {
        self.umin > self.umax
            || self.smin > self.smax
            || self.tnum.value & self.tnum.mask != 0
            || self.tnum.umin() > self.umax
            || self.tnum.umax() < self.umin
    }

    /// An impossible value, to mark a branch that cannot be taken.
    fn empty() -> Scalar {
        Scalar { umin: 1, umax: 0, ..Scalar::UNKNOWN }
    }

    /// Tighten every bound from the others (`reg_bounds_sync`, 64-bit part).
    pub fn sync(mut self) -> Scalar {
        if self.is_empty() {
            return Scalar::empty();
        }
        self = self.bounds_from_tnum();
        for _ in 0..2 {
            if (self.umin as i64) <= (self.umax as i64) {
                self.smin = self.smin.max(self.umin as i64);
                self.smax = self.smax.min(self.umax as i64);
            }
            if (self.smin as u64) <= (self.smax as u64) {
                self.umin = self.umin.max(self.smin as u64);
                self.umax = self.umax.min(self.smax as u64);
            }
        }
        if self.umin > self.umax || self.smin > self.smax {
            return Scalar::empty();
        }
        let from_range = Tnum::range(self.umin, self.umax);
        if self.tnum.conflicts(from_range) {
            return Scalar::empty();
        }
        self.tnum = self.tnum.intersect(from_range);
        self = self.bounds_from_tnum();
        if self.is_empty() {
            return Scalar::empty();
        }
        self
    }

    fn bounds_from_tnum(mut self) -> Scalar {
        self.smin = self.smin.max(self.tnum.smin());
        self.smax = self.smax.min(self.tnum.smax());
        self.umin = self.umin.max(self.tnum.umin());
        self.umax = self.umax.min(self.tnum.umax());
        self
    }

    /// Whether every value `inner` allows, `self` allows too (state pruning).
    pub fn contains(&self, inner: &Scalar) -> bool {
        inner.umin >= self.umin
            && inner.umax <= self.umax
            && inner.smin >= self.smin
            && inner.smax <= self.smax
            && self.tnum.contains(inner.tnum)
    }

    /// The low 32 bits, zero-extended.
    pub fn zext32(&self) -> Scalar {
        let tnum = self.tnum.cast(4);
        let (lo, hi) = if self.umin >> 32 == self.umax >> 32 {
            (self.umin & U32, self.umax & U32)
        } else if self.smin >> 32 == self.smax >> 32 {
            (self.smin as u64 & U32, self.smax as u64 & U32)
        } else {
            (0, U32)
        };
        Scalar { umin: lo, umax: hi, smin: lo as i64, smax: hi as i64, tnum }.sync()
    }

    /// The low 32 bits, sign-extended.
    pub fn sext32(&self) -> Scalar {
        if self.smin >= i64::from(i32::MIN) && self.smax <= i64::from(i32::MAX) {
            return *self;
        }
        let z = self.zext32();
        let bit31 = 1u64 << 31;
        if z.umax < bit31 {
            return z;
        }
        let tnum = if z.tnum.mask & bit31 != 0 {
            Tnum { value: z.tnum.value, mask: z.tnum.mask | UPPER }
        } else {
            Tnum { value: z.tnum.value | UPPER, mask: z.tnum.mask }
        };
        if z.umin >= bit31 {
            let smin = i64::from(z.umin as u32 as i32);
            let smax = i64::from(z.umax as u32 as i32);
            return Scalar { smin, smax, tnum, ..Scalar::UNKNOWN }.sync();
        }
        Scalar { smin: i64::from(i32::MIN), smax: i64::from(i32::MAX), tnum, ..Scalar::UNKNOWN }.sync()
    }

    /// `orig` with its low 32 bits constrained to what `view` (a [`Scalar::zext32`] or, when
    /// `signed_view`, a [`Scalar::sext32`] of it, since refined) allows.
    pub fn with_subreg(orig: &Scalar, view: &Scalar, signed_view: bool) -> Scalar {
        if view.is_empty() {
            return Scalar::empty();
        }
        // When the view is the value itself, the refined view is the refined value.
        let view_is_value = if signed_view {
            orig.smin >= i64::from(i32::MIN) && orig.smax <= i64::from(i32::MAX)
        } else {
            orig.umax <= U32
        };
        if view_is_value {
            return *view;
        }
        let low = Tnum { value: view.tnum.value & U32, mask: (view.tnum.mask & U32) | UPPER };
        if orig.tnum.conflicts(low) {
            return Scalar::empty();
        }
        let mut out = Scalar { tnum: orig.tnum.intersect(low), ..*orig };
        let low_range = if !signed_view {
            Some((view.umin, view.umax))
        } else if view.smin >= 0 || view.smax < 0 {
            Some((view.smin as u64 & U32, view.smax as u64 & U32))
        } else {
            None
        };
        if let (Some((lo, hi)), true) = (low_range, orig.tnum.mask & UPPER == 0) {
            let upper = orig.tnum.value & UPPER;
            out.umin = out.umin.max(upper | lo);
            out.umax = out.umax.min(upper | hi);
        }
        out.sync()
    }

    /// `a OP b` on 64 bits (`adjust_scalar_min_max_vals`).
    pub fn alu64(op: AluOp, a: &Scalar, b: &Scalar) -> Scalar {
        match op {
            AluOp::Add => add(a, b),
            AluOp::Sub => sub(a, b),
            AluOp::Mul => mul(a, b),
            AluOp::And => and(a, b),
            AluOp::Or => or(a, b),
            AluOp::Xor => xor(a, b),
            AluOp::Lsh | AluOp::Rsh | AluOp::Arsh => match b.const_value() {
                Some(k) if k < 64 => shift(op, a, k as u32),
                _ => Scalar::UNKNOWN,
            },
            AluOp::Mov => *b,
            AluOp::Div | AluOp::SDiv | AluOp::Mod | AluOp::SMod => Scalar::UNKNOWN,
        }
    }

    /// `a OP b` on the low 32 bits, zero-extended.
    pub fn alu32(op: AluOp, a: &Scalar, b: &Scalar) -> Scalar {
        let (a32, b32) = (a.zext32(), b.zext32());
        let unknown32 = Scalar::unsigned_bits(32);
        match op {
            AluOp::Add | AluOp::Sub | AluOp::And | AluOp::Or | AluOp::Xor => {
                Scalar::alu64(op, &a32, &b32).zext32()
            }
            AluOp::Mul if a32.umax > 0xffff || b32.umax > 0xffff => {
                Scalar { tnum: (a32.tnum * b32.tnum).cast(4), ..unknown32 }.sync()
            }
            AluOp::Mul => Scalar::alu64(op, &a32, &b32).zext32(),
            AluOp::Lsh | AluOp::Rsh | AluOp::Arsh => match b32.const_value() {
                Some(k) if k < 32 && op == AluOp::Arsh => shift(op, &a.sext32(), k as u32).zext32(),
                Some(k) if k < 32 => shift(op, &a32, k as u32).zext32(),
                _ => unknown32,
            },
            AluOp::Mov => b32,
            AluOp::Div | AluOp::SDiv | AluOp::Mod | AluOp::SMod => unknown32,
        }
    }

    /// `-a` on 64 bits, or on 32 bits zero-extended.
    pub fn neg(a: &Scalar, wide: bool) -> Scalar {
        let zero = Scalar::constant(0);
        if wide {
            sub(&zero, a)
        } else {
            sub(&zero, &a.zext32()).zext32()
        }
    }
}

fn bounded(umin: Option<u64>, umax: Option<u64>, smin: Option<i64>, smax: Option<i64>, tnum: Tnum) -> Scalar {
    let (umin, umax) = match (umin, umax) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (0, u64::MAX),
    };
    let (smin, smax) = match (smin, smax) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (i64::MIN, i64::MAX),
    };
    Scalar { umin, umax, smin, smax, tnum }.sync()
}

fn add(a: &Scalar, b: &Scalar) -> Scalar {
    bounded(
        a.umin.checked_add(b.umin),
        a.umax.checked_add(b.umax),
        a.smin.checked_add(b.smin),
        a.smax.checked_add(b.smax),
        a.tnum + b.tnum,
    )
}

fn sub(a: &Scalar, b: &Scalar) -> Scalar {
    let (umin, umax) =
        if a.umin < b.umax { (None, None) } else { (a.umin.checked_sub(b.umax), a.umax.checked_sub(b.umin)) };
    bounded(umin, umax, a.smin.checked_sub(b.smax), a.smax.checked_sub(b.smin), a.tnum - b.tnum)
}

fn mul(a: &Scalar, b: &Scalar) -> Scalar {
    let tnum = a.tnum * b.tnum;
    if a.smin < 0 || b.smin < 0 || a.umax > U32 || b.umax > U32 {
        return Scalar { tnum, ..Scalar::UNKNOWN }.sync();
    }
    let (umin, umax) = (a.umin * b.umin, a.umax * b.umax);
    let (smin, smax) = match (i64::try_from(umin), i64::try_from(umax)) {
        (Ok(lo), Ok(hi)) => (lo, hi),
        _ => (i64::MIN, i64::MAX),
    };
    Scalar { umin, umax, smin, smax, tnum }.sync()
}

/// Signed bounds from unsigned ones when the unsigned range does not cross the sign bit.
fn with_signed_from_unsigned(umin: u64, umax: u64, tnum: Tnum) -> Scalar {
    let (smin, smax) =
        if (umin as i64) <= (umax as i64) { (umin as i64, umax as i64) } else { (i64::MIN, i64::MAX) };
    Scalar { umin, umax, smin, smax, tnum }.sync()
}

fn and(a: &Scalar, b: &Scalar) -> Scalar {
    let tnum = a.tnum & b.tnum;
    if let (Some(x), Some(y)) = (a.const_value(), b.const_value()) {
        return Scalar::constant(x & y);
    }
    with_signed_from_unsigned(tnum.value, a.umax.min(b.umax), tnum)
}

fn or(a: &Scalar, b: &Scalar) -> Scalar {
    let tnum = a.tnum | b.tnum;
    if let (Some(x), Some(y)) = (a.const_value(), b.const_value()) {
        return Scalar::constant(x | y);
    }
    with_signed_from_unsigned(a.umin.max(b.umin), tnum.umax(), tnum)
}

fn xor(a: &Scalar, b: &Scalar) -> Scalar {
    let tnum = a.tnum ^ b.tnum;
    if let (Some(x), Some(y)) = (a.const_value(), b.const_value()) {
        return Scalar::constant(x ^ y);
    }
    with_signed_from_unsigned(tnum.value, tnum.umax(), tnum)
}

/// Shift by a known amount `k < 64`.
fn shift(op: AluOp, a: &Scalar, k: u32) -> Scalar {
    match op {
        AluOp::Lsh => {
            let tnum = a.tnum.lshift(k);
            if a.umax > 1u64 << (63 - k) {
                Scalar { tnum, ..Scalar::UNKNOWN }.sync()
            } else {
                Scalar { umin: a.umin << k, umax: a.umax << k, tnum, ..Scalar::UNKNOWN }.sync()
            }
        }
        AluOp::Rsh => {
            Scalar { umin: a.umin >> k, umax: a.umax >> k, tnum: a.tnum.rshift(k), ..Scalar::UNKNOWN }.sync()
        }
        _ => {
            Scalar { smin: a.smin >> k, smax: a.smax >> k, tnum: a.tnum.arshift(k), ..Scalar::UNKNOWN }.sync()
        }
    }
}

/// Whether `cond` is a signed comparison.
pub fn is_signed(cond: JmpCond) -> bool {
    matches!(cond, JmpCond::SGt | JmpCond::SGe | JmpCond::SLt | JmpCond::SLe)
}

/// Whether `a cond b` holds for every pair of values (`Some(true)`), for none
/// (`Some(false)`), or is open (`is_scalar_branch_taken`).
pub fn compare(cond: JmpCond, a: &Scalar, b: &Scalar) -> Option<bool> {
    use JmpCond::*;
    match cond {
        Eq | Ne => {
            let eq = match (a.const_value(), b.const_value()) {
                (Some(x), Some(y)) => Some(x == y),
                _ if a.umin > b.umax || a.umax < b.umin || a.smin > b.smax || a.smax < b.smin => Some(false),
                _ => None,
            };
            eq.map(|eq| eq == (cond == Eq))
        }
        Set => {
            let (t, v) = match (a.const_value(), b.const_value()) {
                (_, Some(v)) => (a.tnum, v),
                (Some(v), None) => (b.tnum, v),
                (None, None) => return None,
            };
            if t.value & v != 0 {
                Some(true)
            } else if (t.value | t.mask) & v == 0 {
                Some(false)
            } else {
                None
            }
        }
        Gt => decide(a.umin > b.umax, a.umax <= b.umin),
        Ge => decide(a.umin >= b.umax, a.umax < b.umin),
        Lt => decide(a.umax < b.umin, a.umin >= b.umax),
        Le => decide(a.umax <= b.umin, a.umin > b.umax),
        SGt => decide(a.smin > b.smax, a.smax <= b.smin),
        SGe => decide(a.smin >= b.smax, a.smax < b.smin),
        SLt => decide(a.smax < b.smin, a.smin >= b.smax),
        SLe => decide(a.smax <= b.smin, a.smin > b.smax),
    }
}

fn decide(always: bool, never: bool) -> Option<bool> {
    if always {
        Some(true)
    } else if never {
        Some(false)
    } else {
        None
    }
}

/// Both operands narrowed to the values for which `a cond b` is `holds`
/// (`regs_refine_cond_op`). An impossible combination gives an empty scalar.
pub fn refine(cond: JmpCond, holds: bool, a: &Scalar, b: &Scalar) -> (Scalar, Scalar) {
    use JmpCond::*;
    let (mut a, mut b) = (*a, *b);
    let Some(cond) = (if holds { Some(cond) } else { cond.negate() }) else {
        // `!(a & b)`: with one side known, the other has those bits clear.
        if let Some(v) = b.const_value() {
            a.tnum = a.tnum & Tnum::constant(!v);
        } else if let Some(v) = a.const_value() {
            b.tnum = b.tnum & Tnum::constant(!v);
        }
        return (a.sync(), b.sync());
    };
    match cond {
        Set => {
            if let Some(v) = b.const_value().filter(|v| v.is_power_of_two()) {
                a.tnum = a.tnum | Tnum::constant(v);
            } else if let Some(v) = a.const_value().filter(|v| v.is_power_of_two()) {
                b.tnum = b.tnum | Tnum::constant(v);
            }
        }
        Eq => {
            if a.tnum.conflicts(b.tnum) {
                return (Scalar::empty(), Scalar::empty());
            }
            let m = Scalar {
                umin: a.umin.max(b.umin),
                umax: a.umax.min(b.umax),
                smin: a.smin.max(b.smin),
                smax: a.smax.min(b.smax),
                tnum: a.tnum.intersect(b.tnum),
            };
            a = m;
            b = m;
        }
        Ne => {
            if let Some(v) = b.const_value() {
                a = shave(a, v);
            } else if let Some(v) = a.const_value() {
                b = shave(b, v);
            }
        }
        Le => {
            a.umax = a.umax.min(b.umax);
            b.umin = b.umin.max(a.umin);
        }
        Lt => {
            if b.umax == 0 || a.umin == u64::MAX {
                return (Scalar::empty(), Scalar::empty());
            }
            a.umax = a.umax.min(b.umax - 1);
            b.umin = b.umin.max(a.umin + 1);
        }
        SLe => {
            a.smax = a.smax.min(b.smax);
            b.smin = b.smin.max(a.smin);
        }
        SLt => {
            if b.smax == i64::MIN || a.smin == i64::MAX {
                return (Scalar::empty(), Scalar::empty());
            }
            a.smax = a.smax.min(b.smax - 1);
            b.smin = b.smin.max(a.smin + 1);
        }
        Ge | Gt | SGe | SGt => {
            let flipped = match cond {
                Ge => Le,
                Gt => Lt,
                SGe => SLe,
                _ => SLt,
            };
            let (nb, na) = refine(flipped, true, &b, &a);
            return (na, nb);
        }
    }
    (a.sync(), b.sync())
}

/// `a` without the single value `v` where that narrows a bound.
fn shave(mut a: Scalar, v: u64) -> Scalar {
    if a.const_value() == Some(v) {
        return Scalar::empty();
    }
    if a.umin == v {
        a.umin = v.wrapping_add(1);
    }
    if a.umax == v {
        a.umax = v.wrapping_sub(1);
    }
    if a.smin == v as i64 {
        a.smin = (v as i64).wrapping_add(1);
    }
    if a.smax == v as i64 {
        a.smax = (v as i64).wrapping_sub(1);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ihl_times_four_is_bounded() {
        let byte = Scalar::unsigned_bits(8);
        let low = Scalar::alu64(AluOp::And, &byte, &Scalar::constant(0xf));
        let ihl = Scalar::alu64(AluOp::Lsh, &low, &Scalar::constant(2));
        assert_eq!((ihl.umin, ihl.umax, ihl.smin, ihl.smax), (0, 60, 0, 60));
        assert_eq!(ihl.tnum, Tnum { value: 0, mask: 0x3c });
    }

    #[test]
    fn branch_refines_unsigned_bound() {
        let (a, _) = refine(JmpCond::Gt, false, &Scalar::UNKNOWN, &Scalar::constant(15));
        assert_eq!((a.umin, a.umax, a.smin, a.smax), (0, 15, 0, 15));
        let (a, _) = refine(JmpCond::Gt, true, &Scalar::unsigned_bits(8), &Scalar::constant(15));
        assert_eq!((a.umin, a.umax), (16, 255));
    }

    #[test]
    fn branch_decided_by_bounds() {
        let byte = Scalar::unsigned_bits(8);
        assert_eq!(compare(JmpCond::Gt, &byte, &Scalar::constant(255)), Some(false));
        assert_eq!(compare(JmpCond::Le, &byte, &Scalar::constant(255)), Some(true));
        assert_eq!(compare(JmpCond::Eq, &byte, &Scalar::constant(7)), None);
        assert_eq!(compare(JmpCond::Eq, &byte, &Scalar::constant(300)), Some(false));
    }

    #[test]
    fn alu32_zero_extends_and_wraps() {
        let minus_one = Scalar::alu32(AluOp::Sub, &Scalar::constant(0), &Scalar::constant(1));
        assert_eq!(minus_one.const_value(), Some(0xffff_ffff));
        let sext = minus_one.sext32();
        assert_eq!(sext.const_value(), Some(u64::MAX));
    }

    #[test]
    fn jmp32_write_back_narrows_known_upper_half() {
        let v = Scalar::unsigned_bits(16);
        let view = v.zext32();
        let (narrow, _) = refine(JmpCond::Lt, true, &view, &Scalar::constant(100));
        let back = Scalar::with_subreg(&v, &narrow, false);
        assert_eq!((back.umin, back.umax), (0, 99));
    }

    #[test]
    fn impossible_branch_is_empty() {
        let (a, _) = refine(JmpCond::Eq, true, &Scalar::constant(1), &Scalar::constant(2));
        assert!(a.is_empty());
        let (a, _) = refine(JmpCond::Lt, true, &Scalar::unsigned_bits(8), &Scalar::constant(0));
        assert!(a.is_empty());
    }
}
