//! Mutants of generated programs and of their map writes, for the mutation harness
//! (`cargo test --release --test mutate`, see `TESTING.md`).
//!
//! A mutant is one small change a one-line codegen bug could make: a jump condition
//! negated, an immediate or an offset off by one, a comparison's or an operation's
//! registers swapped, an instruction replaced by a no-op, a load or store of the next
//! size, or one byte of one map entry the plan writes changed by one.
//!
//! The harness decides which mutants change behaviour; the test suite decides which it
//! catches. To run the suite on a mutant, the harness starts a test binary with
//! [`ENV`] naming it; the code generators pass their output through [`program_seam`] and
//! the simulator and the kernel loader pass the plan's writes through [`writes_seam`].
//! Each names what it mutates by a fingerprint of the original, so a test that generates
//! another program (other options, another endpoint) or writes other entries is not
//! affected. Without [`ENV`] both seams return their input unchanged.

use crate::maps::writes::MapWrites;
use sluice_asm::{Imm64, Insn, Program, Size, Src};
use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// The environment variable that names the mutant a test process runs with. Only the
/// mutation harness sets it.
pub const ENV: &str = "SLUICE_MUTANT";

/// What a mutant changes in one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A conditional jump's condition replaced by its negation.
    FlipCond,
    /// An immediate (ALU, jump, store, 64-bit constant) plus or minus one.
    Imm(i8),
    /// A memory access's or a jump's offset plus or minus one.
    Off(i8),
    /// `dst` and the source register exchanged (`a < b` becomes `b < a`).
    SwapRegs,
    /// The instruction replaced by `goto +0` (two of them for `LD_IMM64`, so every jump
    /// offset, counted in slots, stays valid).
    Delete,
    /// A load or store of the next smaller (-1) or larger (+1) size.
    Size(i8),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::FlipCond => write!(f, "flip condition"),
            Op::Imm(d) => write!(f, "immediate {d:+}"),
            Op::Off(d) => write!(f, "offset {d:+}"),
            Op::SwapRegs => write!(f, "swap registers"),
            Op::Delete => write!(f, "delete"),
            Op::Size(d) if *d < 0 => write!(f, "smaller access"),
            Op::Size(_) => write!(f, "larger access"),
        }
    }
}

/// One instruction mutant: instruction `index` (counted in instructions, as the listing
/// counts them) replaced by `replacement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsnMutant {
    pub index: usize,
    pub op: Op,
    pub replacement: Vec<Insn>,
}

fn adjust_i32(v: i32, d: i8) -> Option<i32> {
    v.checked_add(i32::from(d))
}

fn adjust_i16(v: i16, d: i8) -> Option<i16> {
    v.checked_add(i16::from(d))
}

fn resize(size: Size, d: i8) -> Option<Size> {
    let bytes = if d < 0 { size.bytes() / 2 } else { size.bytes().checked_mul(2)? };
    Size::from_bytes(bytes)
}

const NOP: Insn = Insn::Ja { long: false, off: 0 };

/// The mutants of one instruction.
fn mutants_of(index: usize, insn: &Insn) -> Vec<InsnMutant> {
    let mut out = Vec::new();
    let mut push =
        |op: Op, replacement: Insn| out.push(InsnMutant { index, op, replacement: vec![replacement] });
    for d in [1i8, -1] {
        match insn {
            Insn::Alu { wide, op, dst, src: Src::Imm(v) } => {
                if let Some(v) = adjust_i32(*v, d) {
                    push(Op::Imm(d), Insn::Alu { wide: *wide, op: *op, dst: *dst, src: Src::Imm(v) });
                }
            }
            Insn::Jmp { wide, cond, dst, src, off } => {
                if let Src::Imm(v) = src {
                    if let Some(v) = adjust_i32(*v, d) {
                        push(
                            Op::Imm(d),
                            Insn::Jmp { wide: *wide, cond: *cond, dst: *dst, src: Src::Imm(v), off: *off },
                        );
                    }
                }
                if let Some(o) = adjust_i16(*off, d) {
                    push(Op::Off(d), Insn::Jmp { wide: *wide, cond: *cond, dst: *dst, src: *src, off: o });
                }
            }
            Insn::Ja { long, off } => {
                if let Some(o) = adjust_i32(*off, d) {
                    push(Op::Off(d), Insn::Ja { long: *long, off: o });
                }
            }
            Insn::Load { size, signed, dst, base, off } => {
                if let Some(o) = adjust_i16(*off, d) {
                    push(
                        Op::Off(d),
                        Insn::Load { size: *size, signed: *signed, dst: *dst, base: *base, off: o },
                    );
                }
                if let Some(s) = resize(*size, d) {
                    push(
                        Op::Size(d),
                        Insn::Load { size: s, signed: *signed, dst: *dst, base: *base, off: *off },
                    );
                }
            }
            Insn::Store { size, base, off, src } => {
                if let Some(o) = adjust_i16(*off, d) {
                    push(Op::Off(d), Insn::Store { size: *size, base: *base, off: o, src: *src });
                }
                if let Some(s) = resize(*size, d) {
                    push(Op::Size(d), Insn::Store { size: s, base: *base, off: *off, src: *src });
                }
                if let Src::Imm(v) = src {
                    if let Some(v) = adjust_i32(*v, d) {
                        push(
                            Op::Imm(d),
                            Insn::Store { size: *size, base: *base, off: *off, src: Src::Imm(v) },
                        );
                    }
                }
            }
            Insn::Atomic { size, op, base, off, src } => {
                if let Some(o) = adjust_i16(*off, d) {
                    push(Op::Off(d), Insn::Atomic { size: *size, op: *op, base: *base, off: o, src: *src });
                }
            }
            Insn::LdImm64 { dst, imm: Imm64::Const(v) } => {
                let v = if d < 0 { v.wrapping_sub(1) } else { v.wrapping_add(1) };
                push(Op::Imm(d), Insn::LdImm64 { dst: *dst, imm: Imm64::Const(v) });
            }
            _ => {}
        }
    }
    match insn {
        Insn::Jmp { wide, cond, dst, src, off } => {
            if let Some(neg) = cond.negate() {
                push(Op::FlipCond, Insn::Jmp { wide: *wide, cond: neg, dst: *dst, src: *src, off: *off });
            }
            if let Src::Reg(s) = src {
                push(
                    Op::SwapRegs,
                    Insn::Jmp { wide: *wide, cond: *cond, dst: *s, src: Src::Reg(*dst), off: *off },
                );
            }
        }
        Insn::Alu { wide, op, dst, src: Src::Reg(s) } if s != dst => {
            push(Op::SwapRegs, Insn::Alu { wide: *wide, op: *op, dst: *s, src: Src::Reg(*dst) });
        }
        _ => {}
    }
    match insn {
        Insn::Exit => {}
        Insn::LdImm64 { .. } => out.push(InsnMutant { index, op: Op::Delete, replacement: vec![NOP, NOP] }),
        _ => out.push(InsnMutant { index, op: Op::Delete, replacement: vec![NOP] }),
    }
    // A jump condition that cannot be negated (`&`) and a no-op replaced by a no-op are
    // no mutants.
    out.retain(|m| m.replacement != [insn.clone()]);
    out
}

/// Every instruction mutant of `program`, in instruction order (deterministic).
pub fn insn_mutants(program: &Program) -> Vec<InsnMutant> {
    program.insns().iter().enumerate().flat_map(|(i, insn)| mutants_of(i, insn)).collect()
}

/// `program` with the mutant applied. Labels and comments are dropped (indexes may shift
/// after a deleted `LD_IMM64`); slot offsets stay as they were.
pub fn apply(program: &Program, m: &InsnMutant) -> Program {
    let mut insns = program.insns().to_vec();
    insns.splice(m.index..=m.index, m.replacement.iter().cloned());
    Program::from_insns(insns)
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The fingerprint by which [`ENV`] names a program.
pub fn program_fingerprint(program: &Program) -> u64 {
    hash_of(&program.insns())
}

/// The fingerprint by which [`ENV`] names one batch of map writes.
pub fn writes_fingerprint(w: &MapWrites) -> u64 {
    hash_of(&(w.map, w.key_size, w.value_size, &w.keys, &w.values, &w.deletes))
}

/// One map-write mutant: byte `byte` of the key (or value) of update `entry` of a batch,
/// plus one (wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMutant {
    pub entry: usize,
    pub in_key: bool,
    pub byte: usize,
}

impl fmt::Display for WriteMutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = if self.in_key { "key" } else { "value" };
        write!(f, "update {} {part} byte {} +1", self.entry, self.byte)
    }
}

/// How many write mutants a batch has (one per byte of every update's key and value).
pub fn write_mutant_count(w: &MapWrites) -> usize {
    w.updates() * (w.key_size + w.value_size)
}

/// Write mutant `n` of a batch (`n < write_mutant_count(w)`).
pub fn write_mutant(w: &MapWrites, n: usize) -> WriteMutant {
    let per = w.key_size + w.value_size;
    let (entry, at) = (n / per, n % per);
    if at < w.key_size {
        WriteMutant { entry, in_key: true, byte: at }
    } else {
        WriteMutant { entry, in_key: false, byte: at - w.key_size }
    }
}

/// The batch with the mutant applied.
pub fn apply_write(w: &MapWrites, m: WriteMutant) -> MapWrites {
    let mut out = w.clone();
    let (buf, size) = if m.in_key { (&mut out.keys, w.key_size) } else { (&mut out.values, w.value_size) };
    if let Some(b) = buf.get_mut(m.entry * size + m.byte) {
        *b = b.wrapping_add(1);
    }
    out
}

/// A mutant as [`ENV`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// Instruction mutant `index` (into [`insn_mutants`]) of the program with this
    /// fingerprint.
    Program { fingerprint: u64, index: usize },
    /// Write mutant `index` (see [`write_mutant`]) of the batch with this fingerprint.
    Writes { fingerprint: u64, index: usize },
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Named::Program { fingerprint, index } => write!(f, "program:{fingerprint:016x}:{index}"),
            Named::Writes { fingerprint, index } => write!(f, "writes:{fingerprint:016x}:{index}"),
        }
    }
}

impl Named {
    /// Parse the [`Display`](fmt::Display) form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Named> {
        let mut parts = s.trim().split(':');
        let (kind, fp, index) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let fingerprint = u64::from_str_radix(fp, 16).ok()?;
        let index = index.parse().ok()?;
        match kind {
            "program" => Some(Named::Program { fingerprint, index }),
            "writes" => Some(Named::Writes { fingerprint, index }),
            _ => None,
        }
    }
}

fn named_from_env() -> Option<&'static Named> {
    static NAMED: OnceLock<Option<Named>> = OnceLock::new();
    NAMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let named = Named::parse(&v);
            // A harness bug must not pass for a surviving mutant.
            assert!(named.is_some(), "{ENV}={v:?} names no mutant");
            named
        })
        .as_ref()
}

/// `program`, or its mutant when [`ENV`] names one of it.
pub fn program_seam(program: Program) -> Program {
    match named_from_env() {
        Some(&Named::Program { fingerprint, index }) if program_fingerprint(&program) == fingerprint => {
            match insn_mutants(&program).get(index) {
                Some(m) => apply(&program, m),
                None => program,
            }
        }
        _ => program,
    }
}

/// `writes`, or with one batch mutated when [`ENV`] names a mutant of it.
pub fn writes_seam(writes: &[MapWrites]) -> Cow<'_, [MapWrites]> {
    let Some(&Named::Writes { fingerprint, index }) = named_from_env() else { return Cow::Borrowed(writes) };
    match writes.iter().position(|w| writes_fingerprint(w) == fingerprint) {
        Some(at) if index < write_mutant_count(&writes[at]) => {
            let mut out = writes.to_vec();
            out[at] = apply_write(&writes[at], write_mutant(&writes[at], index));
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(writes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_asm::{JmpCond, Reg};

    #[test]
    fn mutants_keep_slot_offsets_and_name_round_trips() {
        let p = Program::from_insns(vec![
            Insn::mov64(Reg::R0, 1),
            Insn::ld_imm64(Reg::R1, 7),
            Insn::Jmp { wide: true, cond: JmpCond::Eq, dst: Reg::R0, src: Src::Reg(Reg::R1), off: 1 },
            Insn::mov64(Reg::R0, 2),
            Insn::Exit,
        ]);
        let ms = insn_mutants(&p);
        for m in &ms {
            assert_eq!(apply(&p, m).slots(), p.slots(), "{m:?} changes the slot count");
        }
        let ops: Vec<(usize, Op)> = ms.iter().map(|m| (m.index, m.op)).collect();
        assert!(ops.contains(&(2, Op::FlipCond)) && ops.contains(&(2, Op::SwapRegs)), "{ops:?}");
        assert!(!ops.iter().any(|(i, _)| *i == 4), "exit has no mutant: {ops:?}");
        for n in [Named::Program { fingerprint: 0xabc, index: 3 }, Named::Writes { fingerprint: 1, index: 0 }]
        {
            assert_eq!(Named::parse(&n.to_string()), Some(n));
        }
        assert_eq!(Named::parse("program:zz:1"), None);
    }

    #[test]
    fn write_mutants_cover_every_byte_once() {
        let mut w = MapWrites { map: "m", key_size: 2, value_size: 3, ..MapWrites::default() };
        w.put(&[1, 2], &[3, 4, 5]);
        w.put(&[6, 7], &[8, 9, 10]);
        let total = write_mutant_count(&w);
        assert_eq!(total, 10);
        let changed: Vec<(Vec<u8>, Vec<u8>)> = (0..total)
            .map(|n| {
                let m = apply_write(&w, write_mutant(&w, n));
                (m.keys, m.values)
            })
            .collect();
        assert_eq!(changed[0].0, vec![2, 2, 6, 7]);
        assert_eq!(changed[4].1, vec![3, 4, 6, 8, 9, 10]);
        assert_eq!(changed[9].1, vec![3, 4, 5, 8, 9, 11]);
    }
}
