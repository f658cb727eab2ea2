//! Tristate numbers (`kernel/bpf/tnum.c`): a 64-bit value of which some bits are known.
//!
//! A bit whose `mask` bit is set is unknown; otherwise it equals the `value` bit. The
//! invariant `value & mask == 0` holds for every tnum built here. All arithmetic wraps, as
//! the kernel's does, so no operation can panic.

use std::fmt;
use std::ops::{Add, BitAnd, BitOr, BitXor, Mul, Sub};

/// Known and unknown bits of a 64-bit value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tnum {
    pub value: u64,
    pub mask: u64,
}

impl fmt::Debug for Tnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:#x}; {:#x})", self.value, self.mask)
    }
}

impl Tnum {
    /// Nothing known.
    pub const UNKNOWN: Tnum = Tnum { value: 0, mask: u64::MAX };

    /// Every bit known.
    pub const fn constant(value: u64) -> Tnum {
        Tnum { value, mask: 0 }
    }

    /// The bits common to every value in `min..=max` (`tnum_range`).
    pub fn range(min: u64, max: u64) -> Tnum {
        let chi = min ^ max;
        let bits = 64 - chi.leading_zeros();
        if bits > 63 {
            return Tnum::UNKNOWN;
        }
        let delta = (1u64 << bits) - 1;
        Tnum { value: min & !delta, mask: delta }
    }

    /// Whether every bit is known.
    pub fn is_const(self) -> bool {
        self.mask == 0
    }

    /// The smallest unsigned value.
    pub fn umin(self) -> u64 {
        self.value
    }

    /// The largest unsigned value.
    pub fn umax(self) -> u64 {
        self.value | self.mask
    }

    /// The smallest signed value: unknown sign bit set, other unknown bits clear.
    pub fn smin(self) -> i64 {
        (self.value | (self.mask & (1 << 63))) as i64
    }

    /// The largest signed value: unknown sign bit clear, other unknown bits set.
    pub fn smax(self) -> i64 {
        (self.value | (self.mask & !(1 << 63))) as i64
    }

    pub fn lshift(self, shift: u32) -> Tnum {
        Tnum { value: self.value.wrapping_shl(shift), mask: self.mask.wrapping_shl(shift) }
    }

    pub fn rshift(self, shift: u32) -> Tnum {
        Tnum { value: self.value.wrapping_shr(shift), mask: self.mask.wrapping_shr(shift) }
    }

    /// Arithmetic right shift of the full 64 bits.
    pub fn arshift(self, shift: u32) -> Tnum {
        Tnum {
            value: (self.value as i64).wrapping_shr(shift) as u64,
            mask: (self.mask as i64).wrapping_shr(shift) as u64,
        }
    }

    /// The bits known in either (`tnum_intersect`); callers check [`Tnum::conflicts`] first
    /// when the two could disagree.
    pub fn intersect(self, b: Tnum) -> Tnum {
        let v = self.value | b.value;
        let mu = self.mask & b.mask;
        Tnum { value: v & !mu, mask: mu }
    }

    /// Whether some bit is known in both with different values (no value fits both).
    pub fn conflicts(self, b: Tnum) -> bool {
        (self.value ^ b.value) & !(self.mask | b.mask) != 0
    }

    /// The low `bytes` bytes, upper bits known zero.
    pub fn cast(self, bytes: u32) -> Tnum {
        let keep = if bytes >= 8 { u64::MAX } else { (1u64 << (bytes * 8)) - 1 };
        Tnum { value: self.value & keep, mask: self.mask & keep }
    }

    /// Whether every value `b` can hold, `self` can hold too (`tnum_in`).
    pub fn contains(self, b: Tnum) -> bool {
        if b.mask & !self.mask != 0 {
            return false;
        }
        self.value == b.value & !self.mask
    }
}

impl Add for Tnum {
    type Output = Tnum;

    fn add(self, b: Tnum) -> Tnum {
        let sm = self.mask.wrapping_add(b.mask);
        let sv = self.value.wrapping_add(b.value);
        let sigma = sm.wrapping_add(sv);
        let chi = sigma ^ sv;
        let mu = chi | self.mask | b.mask;
        Tnum { value: sv & !mu, mask: mu }
    }
}

impl Sub for Tnum {
    type Output = Tnum;

    fn sub(self, b: Tnum) -> Tnum {
        let dv = self.value.wrapping_sub(b.value);
        let alpha = dv.wrapping_add(self.mask);
        let beta = dv.wrapping_sub(b.mask);
        let chi = alpha ^ beta;
        let mu = chi | self.mask | b.mask;
        Tnum { value: dv & !mu, mask: mu }
    }
}

impl Mul for Tnum {
    type Output = Tnum;

    /// Shift-and-add over the bits of `self` (`tnum_mul`).
    fn mul(self, b: Tnum) -> Tnum {
        let acc_v = self.value.wrapping_mul(b.value);
        let mut acc_m = Tnum::constant(0);
        let (mut a, mut b) = (self, b);
        while a.value != 0 || a.mask != 0 {
            if a.value & 1 != 0 {
                acc_m = acc_m + Tnum { value: 0, mask: b.mask };
            } else if a.mask & 1 != 0 {
                acc_m = acc_m + Tnum { value: 0, mask: b.value | b.mask };
            }
            a = a.rshift(1);
            b = b.lshift(1);
        }
        Tnum::constant(acc_v) + acc_m
    }
}

impl BitAnd for Tnum {
    type Output = Tnum;

    fn bitand(self, b: Tnum) -> Tnum {
        let alpha = self.value | self.mask;
        let beta = b.value | b.mask;
        let v = self.value & b.value;
        Tnum { value: v, mask: alpha & beta & !v }
    }
}

impl BitOr for Tnum {
    type Output = Tnum;

    fn bitor(self, b: Tnum) -> Tnum {
        let v = self.value | b.value;
        let mu = self.mask | b.mask;
        Tnum { value: v, mask: mu & !v }
    }
}

impl BitXor for Tnum {
    type Output = Tnum;

    fn bitxor(self, b: Tnum) -> Tnum {
        let v = self.value ^ b.value;
        let mu = self.mask | b.mask;
        Tnum { value: v & !mu, mask: mu }
    }
}

#[cfg(test)]
mod tests {
    use super::Tnum;

    #[test]
    fn range_and_shift_track_ihl_times_four() {
        // ihl = (b & 0xf) << 2 for an unknown byte b.
        let b = Tnum::range(0, 255);
        let ihl = (b & Tnum::constant(0xf)).lshift(2);
        assert_eq!(ihl, Tnum { value: 0, mask: 0x3c });
        assert_eq!(ihl.umax(), 60);
    }

    #[test]
    fn add_of_constants_is_constant() {
        assert_eq!(Tnum::constant(14) + Tnum::constant(20), Tnum::constant(34));
        assert_eq!(Tnum::constant(3) * Tnum::constant(5), Tnum::constant(15));
        assert_eq!(Tnum::constant(3) - Tnum::constant(5), Tnum::constant(u64::MAX - 1));
    }

    #[test]
    fn contains_and_conflicts() {
        let unknown_low = Tnum { value: 0, mask: 0xff };
        assert!(unknown_low.contains(Tnum::constant(7)));
        assert!(!Tnum::constant(7).contains(unknown_low));
        assert!(Tnum::constant(1).conflicts(Tnum::constant(2)));
        assert!(!unknown_low.conflicts(Tnum::constant(2)));
    }
}
