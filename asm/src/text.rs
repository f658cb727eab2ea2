//! The kernel verifier-log text form of instructions, printed and parsed.
//!
//! [`format_insn`] prints what `print_bpf_insn` in `kernel/bpf/disasm.c` (Linux 6.18) prints,
//! without its `(code)` prefix; [`parse_insn`] reads that back, and [`listing`] /
//! [`parse_program`] do the same for whole programs. Contract: for every instruction the
//! encoder accepts, `parse_insn(&format_insn(i)) == Ok(i)`, and for every program
//! `parse_program(&listing(p)) == Ok(p)` (instructions, labels and comments).
//!
//! # Syntax
//!
//! `rN` is a 64-bit register, `wN` its low 32 bits; `OFF` prints as `%+d` (`+4`, `-8`, `+0`).
//!
//! | instruction | text |
//! |---|---|
//! | ALU, immediate (decimal) | `r1 += 4`, `w1 -= -1`, `r0 = 2` |
//! | ALU, register | `r1 += r2`, `w1 = w2`, `r1 s>>= r2` |
//! | operators | `+= -= *= /= s/= %= s%= \|= &= ^= <<= >>= s>>= =` |
//! | negation | `r1 = -r1`, `w1 = -w1` |
//! | sign-extending move | `r1 = (s8)r2`, `w1 = (s16)w2`, `r1 = (s32)r2` |
//! | byte order | `r1 = be16 r1`, `r1 = le32 r1`, `r1 = bswap64 r1` |
//! | load | `r2 = *(u32 *)(r1 +4)`; sign-extending `r2 = *(s16 *)(r1 -2)` |
//! | store | `*(u32 *)(r10 -4) = r1`, `*(u8 *)(r10 -1) = 5` |
//! | atomic | `lock *(u64 *)(r1 +0) += r2` (also `\|=`, `&=`, `^=`) |
//! | atomic with fetch | `r2 = atomic64_fetch_add((u64 *)(r1 +0), r2)`, `r2 = atomic_fetch_and((u32 *)(r1 +8), r2)` |
//! | exchange | `r2 = atomic64_xchg((u64 *)(r1 +0), r2)`, `r0 = atomic_cmpxchg((u32 *)(r1 +0), r0, r2)` |
//! | acquire / release | `r0 = load_acquire((u64 *)(r1 +0))`, `store_release((u32 *)(r1 +0), r2)` |
//! | legacy packet loads | `r0 = *(u16 *)skb[12]`, `r0 = *(u32 *)skb[r3 + 12]` |
//! | `LD_IMM64` constant | `r1 = 0x1234 ll` |
//! | `LD_IMM64` pseudo sources | `r1 = map_fd[3]`, `r1 = map_value[3]+16`, `r1 = map_idx[2]`, `r1 = map_idx_value[2]+16`, `r1 = btf_id[5,0]`, `r1 = func pc+4` |
//! | symbolic maps ([`Imm64::MapRef`], [`Imm64::MapValueRef`]) | `r1 = map[conntrack]`, `r1 = &map[config]+16` |
//! | conditional jump (immediate in hex, as `0x%x`) | `if r3 > r2 goto pc+5`, `if w3 s< 0x7 goto pc-2`, `if r1 & r2 goto pc+1` |
//! | conditions | `== != > >= < <= s> s>= s< s<= &` |
//! | unconditional | `goto pc+3`, `gotol pc+100000`, `may_goto pc+2` |
//! | calls | `call bpf_map_lookup_elem#1`, `call unknown#999`, `call pc+10`, `call kfunc#12345`, `call kfunc#12345@3` |
//! | exit | `exit` |
//!
//! Where the kernel prints through callbacks (`LD_IMM64` pseudo sources, kfuncs) this syntax
//! is ours: `ll` marks a 64-bit constant as LLVM writes it; a kfunc prints its BTF id and,
//! when non-zero, `@` and the module BTF fd index carried in `off`. Map and label names are
//! `[A-Za-z_.][A-Za-z0-9_.]*`; other names print but do not read back.
//!
//! # Tolerance
//!
//! The parser also accepts: `goto +5` / `goto -2` without `pc`; decimal or hex immediates
//! anywhere, signed (`-1`) or as 32-bit two's complement (`0xffffffff` is `-1`, so
//! `r1 = 0xffffffff` is `mov r1, -1`); any whitespace between tokens (`(r1+4)`, `(r1 - 4)`,
//! `(r1)`); a verifier-log prefix `12: (bf) ` whose opcode, when present, must match the
//! instruction (and `(18)` makes `r1 = 0x5` an `LD_IMM64`); a constant too wide for 32 bits
//! as `LD_IMM64` without `ll`; a trailing `; ...` (verifier register state); a trailing
//! `<label>` annotation after a jump target; `w` registers where LLVM writes them for
//! 32-bit-or-narrower loads, stores and atomics; `call #999` and `call kernel-function#N`.
//!
//! # Listings
//!
//! [`listing`] prints one instruction per line after its slot number (`  12: `), preceded
//! by its labels (`name:`) and comments (`; text`, one line per comment line); a branch whose
//! target carries a label is annotated (`if r3 > r2 goto pc+5 <drop>`). [`parse_program`]
//! ignores slot numbers and annotations and also accepts label names as branch targets
//! (`goto drop`, `if r1 == 0 goto drop`, `call subprog`, `r1 = func cb`), resolved by the
//! [`Builder`] without rewriting: what is written is what is assembled.

use crate::builder::{BuildError, Builder};
use crate::encode::encode_insn;
use crate::helpers;
use crate::insn::{AluOp, AtomicOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};
use crate::program::Program;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use thiserror::Error;

/// Why text could not be read as instructions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}column {column}: {kind}", line_prefix(.line))]
pub struct ParseError {
    /// The 1-based line, when reading a whole program.
    pub line: Option<usize>,
    /// The 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

fn line_prefix(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}, ")).unwrap_or_default()
}

/// The cause of a [`ParseError`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("expected {expected}, found {found}")]
    Expected { expected: String, found: String },
    #[error("{value} is out of range for {what}")]
    OutOfRange { value: String, what: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("label `{label}` is not defined")]
    UnknownLabel { label: String },
    #[error("label `{label}` is already defined on line {first}")]
    DuplicateLabel { label: String, first: usize },
    #[error("jump to `{label}` spans {distance} slots, more than its offset field holds")]
    JumpOutOfRange { label: String, distance: i64 },
}

// ---------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------

fn wreg(wide: bool, r: Reg) -> String {
    format!("{}{}", if wide { 'r' } else { 'w' }, r.num())
}

fn size_name(size: Size) -> &'static str {
    match size {
        Size::B => "u8",
        Size::H => "u16",
        Size::W => "u32",
        Size::DW => "u64",
    }
}

fn signed_size_name(size: Size) -> &'static str {
    match size {
        Size::B => "s8",
        Size::H => "s16",
        Size::W => "s32",
        Size::DW => "s64",
    }
}

/// `(r1 +4)`: the kernel's `(r%d %+d)`.
fn mem(base: Reg, off: i16) -> String {
    format!("({base} {off:+})")
}

fn alu_op_str(op: AluOp) -> &'static str {
    match op {
        AluOp::Add => "+=",
        AluOp::Sub => "-=",
        AluOp::Mul => "*=",
        AluOp::Div => "/=",
        AluOp::SDiv => "s/=",
        AluOp::Or => "|=",
        AluOp::And => "&=",
        AluOp::Lsh => "<<=",
        AluOp::Rsh => ">>=",
        AluOp::Mod => "%=",
        AluOp::SMod => "s%=",
        AluOp::Xor => "^=",
        AluOp::Mov => "=",
        AluOp::Arsh => "s>>=",
    }
}

fn jmp_op_str(cond: JmpCond) -> &'static str {
    match cond {
        JmpCond::Eq => "==",
        JmpCond::Gt => ">",
        JmpCond::Ge => ">=",
        JmpCond::Set => "&",
        JmpCond::Ne => "!=",
        JmpCond::SGt => "s>",
        JmpCond::SGe => "s>=",
        JmpCond::Lt => "<",
        JmpCond::Le => "<=",
        JmpCond::SLt => "s<",
        JmpCond::SLe => "s<=",
    }
}

fn atomic_alu(op: AtomicOp) -> Option<(&'static str, &'static str, bool)> {
    match op {
        AtomicOp::Add { fetch } => Some(("+=", "add", fetch)),
        AtomicOp::Or { fetch } => Some(("|=", "or", fetch)),
        AtomicOp::And { fetch } => Some(("&=", "and", fetch)),
        AtomicOp::Xor { fetch } => Some(("^=", "xor", fetch)),
        AtomicOp::Xchg | AtomicOp::CmpXchg => None,
    }
}

fn imm64_text(imm: &Imm64) -> String {
    match imm {
        Imm64::Const(v) => format!("{v:#x} ll"),
        Imm64::MapFd(fd) => format!("map_fd[{fd}]"),
        Imm64::MapValue { fd, off } => format!("map_value[{fd}]+{off}"),
        Imm64::MapIdx(idx) => format!("map_idx[{idx}]"),
        Imm64::MapIdxValue { idx, off } => format!("map_idx_value[{idx}]+{off}"),
        Imm64::BtfId { id, next } => format!("btf_id[{id},{next}]"),
        Imm64::Func(off) => format!("func pc{off:+}"),
        Imm64::MapRef(name) => format!("map[{name}]"),
        Imm64::MapValueRef { map, off } => format!("&map[{map}]+{off}"),
    }
}

/// The kernel verifier-log text of one instruction, without the `(code)` prefix.
pub fn format_insn(insn: &Insn) -> String {
    match insn {
        Insn::Alu { wide, op, dst, src } => {
            let src = match src {
                Src::Reg(r) => wreg(*wide, *r),
                Src::Imm(v) => v.to_string(),
            };
            format!("{} {} {src}", wreg(*wide, *dst), alu_op_str(*op))
        }
        Insn::Neg { wide, dst } => format!("{0} = -{0}", wreg(*wide, *dst)),
        Insn::MovSx { wide, bits, dst, src } => {
            format!("{} = (s{bits}){}", wreg(*wide, *dst), wreg(*wide, *src))
        }
        Insn::Endian { kind, bits, dst } => {
            let name = match kind {
                Endian::ToLe => "le",
                Endian::ToBe => "be",
                Endian::Swap => "bswap",
            };
            format!("{dst} = {name}{bits} {dst}")
        }
        Insn::LdImm64 { dst, imm } => format!("{dst} = {}", imm64_text(imm)),
        Insn::Load { size, signed, dst, base, off } => {
            let ty = if *signed { signed_size_name(*size) } else { size_name(*size) };
            format!("{dst} = *({ty} *){}", mem(*base, *off))
        }
        Insn::Store { size, base, off, src } => {
            let src = match src {
                Src::Reg(r) => r.to_string(),
                Src::Imm(v) => v.to_string(),
            };
            format!("*({} *){} = {src}", size_name(*size), mem(*base, *off))
        }
        Insn::Atomic { size, op, base, off, src } => {
            let ty = size_name(*size);
            let m = mem(*base, *off);
            let w64 = if *size == Size::DW { "64" } else { "" };
            match (op, atomic_alu(*op)) {
                (_, Some((assign, _, false))) => format!("lock *({ty} *){m} {assign} {src}"),
                (_, Some((_, name, true))) => format!("{src} = atomic{w64}_fetch_{name}(({ty} *){m}, {src})"),
                (AtomicOp::Xchg, None) => format!("{src} = atomic{w64}_xchg(({ty} *){m}, {src})"),
                (_, None) => format!("r0 = atomic{w64}_cmpxchg(({ty} *){m}, r0, {src})"),
            }
        }
        Insn::LoadAcquire { size, dst, base, off } => {
            format!("{dst} = load_acquire(({} *){})", size_name(*size), mem(*base, *off))
        }
        Insn::StoreRelease { size, base, off, src } => {
            format!("store_release(({} *){}, {src})", size_name(*size), mem(*base, *off))
        }
        Insn::LdAbs { size, imm } => format!("r0 = *({} *)skb[{imm}]", size_name(*size)),
        Insn::LdInd { size, src, imm } => format!("r0 = *({} *)skb[{src} + {imm}]", size_name(*size)),
        Insn::Jmp { wide, cond, dst, src, off } => {
            let src = match src {
                Src::Reg(r) => wreg(*wide, *r),
                Src::Imm(v) => format!("{:#x}", *v as u32),
            };
            format!("if {} {} {src} goto pc{off:+}", wreg(*wide, *dst), jmp_op_str(*cond))
        }
        Insn::Ja { long: false, off } => format!("goto pc{off:+}"),
        Insn::Ja { long: true, off } => format!("gotol pc{off:+}"),
        Insn::MayGoto { off } => format!("may_goto pc{off:+}"),
        Insn::Call(CallTarget::Helper(id)) => {
            format!("call {}#{id}", helpers::name(*id).unwrap_or("unknown"))
        }
        Insn::Call(CallTarget::Local(off)) => format!("call pc{off:+}"),
        Insn::Call(CallTarget::Kfunc { btf_id, module: 0 }) => format!("call kfunc#{btf_id}"),
        Insn::Call(CallTarget::Kfunc { btf_id, module }) => format!("call kfunc#{btf_id}@{module}"),
        Insn::Exit => "exit".to_string(),
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_insn(self))
    }
}

impl FromStr for Insn {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Insn, ParseError> {
        parse_insn(s)
    }
}

/// A whole program: labels, comments and one instruction per line after its slot number,
/// branch targets annotated with their label. Deterministic.
pub fn listing(prog: &Program) -> String {
    let starts = prog.slot_starts();
    let total = starts[starts.len() - 1];
    let mut index_at_slot = vec![None; total + 1];
    for (i, s) in starts.iter().enumerate() {
        index_at_slot[*s] = Some(i);
    }
    let mut out = String::new();
    for (i, start) in starts.iter().enumerate() {
        for name in prog.labels().get(&i).into_iter().flatten() {
            let _ = writeln!(out, "{name}:");
        }
        for comment in prog.comments().get(&i).into_iter().flatten() {
            for line in comment.split('\n') {
                if line.is_empty() {
                    out.push_str(";\n");
                } else {
                    let _ = writeln!(out, "; {line}");
                }
            }
        }
        let Some(insn) = prog.insns().get(i) else { break };
        let _ = write!(out, "{start:>4}: {insn}");
        let target = insn.branch_offset().and_then(|off| {
            let slot = usize::try_from(*start as i64 + 1 + i64::from(off)).ok()?;
            let index = (*index_at_slot.get(slot)?)?;
            prog.labels().get(&index)?.first()
        });
        if let Some(name) = target {
            let _ = write!(out, " <{name}>");
        }
        let prev = i.checked_sub(1).and_then(|p| prog.insns().get(p));
        if let Some(name) = stack_access(insn, prev).and_then(|(off, len)| prog.stack_name(off, len)) {
            let _ = write!(out, " ; {name}");
        }
        out.push('\n');
    }
    out
}

/// The stack bytes `insn` reads or writes through `r10`, or whose address it forms
/// (`rX += off` right after `rX = r10`): (offset from `r10`, length).
fn stack_access(insn: &Insn, prev: Option<&Insn>) -> Option<(i64, i64)> {
    let bytes = |s: Size| i64::from(s.bytes());
    match insn {
        Insn::Load { size, base: Reg::R10, off, .. }
        | Insn::LoadAcquire { size, base: Reg::R10, off, .. } => Some((i64::from(*off), bytes(*size))),
        Insn::Store { size, base: Reg::R10, off, .. }
        | Insn::Atomic { size, base: Reg::R10, off, .. }
        | Insn::StoreRelease { size, base: Reg::R10, off, .. } => Some((i64::from(*off), bytes(*size))),
        Insn::Alu { wide: true, op: AluOp::Add, dst, src: Src::Imm(off) } => match prev {
            Some(Insn::Alu { wide: true, op: AluOp::Mov, dst: d, src: Src::Reg(Reg::R10) }) if d == dst => {
                Some((i64::from(*off), 1))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The part of a program's listing around instruction `index` (an `LD_IMM64` counts once):
/// the nearest label at or before it (with `...` when it is not adjacent), `context`
/// instructions either side with their comments, and the instruction itself marked `>`.
/// What a verifier rejection shows instead of the whole listing.
pub fn excerpt(prog: &Program, index: usize, context: usize) -> String {
    let full = listing(prog);
    // Split the listing into per-instruction blocks (labels and comments lead a block).
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in full.lines() {
        let is_insn =
            line.len() > 5 && line.as_bytes()[4] == b':' && line[..4].trim_start().parse::<usize>().is_ok();
        blocks.last_mut().expect("one block at least").push(line);
        if is_insn {
            blocks.push(Vec::new());
        }
    }
    let n = prog.len();
    if n == 0 {
        return String::new();
    }
    let index = index.min(n - 1);
    let (lo, hi) = (index.saturating_sub(context), (index + context).min(n - 1));
    let mut out = String::new();
    let label_at = prog.labels().range(..=lo).next_back();
    if let Some((&at, names)) = label_at {
        if at < lo {
            for name in names {
                let _ = writeln!(out, "{name}:");
            }
            out.push_str("  ...\n");
        }
    } else if lo > 0 {
        out.push_str("  ...\n");
    }
    for (i, block) in blocks.iter().enumerate().take(hi + 1).skip(lo) {
        for (k, line) in block.iter().enumerate() {
            let last = k + 1 == block.len();
            let mark = if i == index && last { "> " } else { "  " };
            let _ = writeln!(out, "{mark}{line}");
        }
    }
    if hi + 1 < n {
        out.push_str("  ...\n");
    }
    out
}

/// The instruction slot a kernel verifier log names last (`123: (bf) r1 = r6` lines), i.e.
/// where the verifier stopped, if the log names one.
pub fn failing_slot_in_log(log: &str) -> Option<usize> {
    log.lines().rev().find_map(|line| {
        let (num, rest) = line.split_once(": (")?;
        rest.get(2..3).filter(|c| *c == ")")?;
        num.trim().parse().ok()
    })
}

/// The instruction index at `slot`, if an instruction starts there.
pub fn index_at_slot(prog: &Program, slot: usize) -> Option<usize> {
    prog.slot_starts().iter().position(|&s| s == slot).filter(|&i| i < prog.len())
}

/// What to show of our program next to a kernel rejection: the excerpt around the slot the
/// log names, or the whole listing when the log names none.
pub fn rejection_context(prog: &Program, log: &str) -> String {
    match failing_slot_in_log(log).and_then(|slot| index_at_slot(prog, slot)) {
        Some(i) => excerpt(prog, i, 6),
        None => listing(prog),
    }
}

/// The last `n` lines of a verifier log (the kernel's logs run to megabytes; the end says
/// why), with a note of how many were left out.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= n {
        return log.to_string();
    }
    format!("[{} earlier lines]\n{}", lines.len() - n, lines[lines.len() - n..].join("\n"))
}

// ---------------------------------------------------------------------------------------
// Lexing
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Num(u64),
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    col: usize,
}

/// Punctuation, longest first so that the first match is the longest.
const PUNCTS: [&str; 35] = [
    "s>>=", "<<=", ">>=", "s/=", "s%=", "s<=", "s>=", "==", "!=", "<=", ">=", "+=", "-=", "*=", "/=", "|=",
    "&=", "%=", "^=", "s<", "s>", "<", ">", "=", "&", "*", "(", ")", "[", "]", ",", "#", "+", "-", "@",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '.'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

fn err_at(column: usize, kind: ParseErrorKind) -> ParseError {
    ParseError { line: None, column, kind }
}

fn expected(column: usize, what: impl Into<String>, found: impl Into<String>) -> ParseError {
    err_at(column, ParseErrorKind::Expected { expected: what.into(), found: found.into() })
}

fn lex(src: &str, base_col: usize) -> Result<Vec<Token<'_>>, ParseError> {
    let mut toks = Vec::new();
    let mut chars = src.char_indices().peekable();
    let mut col = base_col;
    let mut prev_space = true;
    while let Some(&(i, c)) = chars.peek() {
        let rest = &src[i..];
        let start_col = col;
        let len = if c.is_whitespace() {
            prev_space = true;
            chars.next();
            col += 1;
            continue;
        } else if c.is_ascii_digit() {
            let (digits, radix, skip) = match rest.get(..2) {
                Some("0x") | Some("0X") => (&rest[2..], 16, 2),
                _ => (rest, 10, 0),
            };
            let n = digits.chars().take_while(|d| d.is_digit(radix)).count();
            if n == 0 {
                return Err(expected(start_col + skip, "hex digits", found_text(&rest[skip..])));
            }
            let text = &rest[..skip + n];
            let value = u64::from_str_radix(&digits[..n], radix).map_err(|_| {
                err_at(start_col, ParseErrorKind::OutOfRange { value: text.to_string(), what: "64 bits" })
            })?;
            toks.push(Token { kind: Kind::Num(value), text, col: start_col });
            skip + n
        } else if let Some(p) =
            PUNCTS.iter().find(|p| rest.starts_with(**p) && (!p.starts_with('s') || prev_space))
        {
            toks.push(Token { kind: Kind::Punct, text: p, col: start_col });
            p.len()
        } else if is_ident_start(c) {
            let n = rest.find(|ch: char| !is_ident_char(ch)).unwrap_or(rest.len());
            toks.push(Token { kind: Kind::Ident, text: &rest[..n], col: start_col });
            n
        } else {
            return Err(expected(start_col, "an instruction token", format!("`{c}`")));
        };
        prev_space = false;
        // Every token is ASCII, so its length in bytes is its length in columns.
        for _ in 0..len {
            chars.next();
        }
        col += len;
    }
    Ok(toks)
}

fn found_text(rest: &str) -> String {
    match rest.split_whitespace().next() {
        Some(t) => format!("`{t}`"),
        None => "end of line".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// A branch target as written: a relative offset or a label.
enum Target {
    Offset(i128),
    Label(String),
}

/// A parsed instruction and, for a branch written with a label, the label and its column.
type Parsed = (Insn, Option<(String, usize)>);

struct Parser<'a> {
    toks: Vec<Token<'a>>,
    pos: usize,
    end_col: usize,
    /// The line's `(18)` prefix says this is an `LD_IMM64`: read `rN = 0x5` as one.
    imm64_hint: bool,
}

fn parse_reg_name(text: &str) -> Option<(Reg, bool)> {
    let wide = match text.as_bytes().first()? {
        b'r' => true,
        b'w' => false,
        _ => return None,
    };
    let digits = &text[1..];
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    let n: u8 = digits.parse().ok()?;
    Some((Reg::from_u8(n)?, wide))
}

fn to_i32(v: i128) -> Option<i32> {
    if v < 0 {
        i32::try_from(v).ok()
    } else {
        u32::try_from(v).ok().map(|u| u as i32)
    }
}

fn to_u64(v: i128) -> Option<u64> {
    if v < 0 {
        i64::try_from(v).ok().map(|s| s as u64)
    } else {
        u64::try_from(v).ok()
    }
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.toks.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<Token<'a>> {
        self.toks.get(self.pos + n).copied()
    }

    fn col(&self) -> usize {
        self.peek().map_or(self.end_col, |t| t.col)
    }

    fn found(&self) -> String {
        self.peek().map_or_else(|| "end of line".to_string(), |t| format!("`{}`", t.text))
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, ParseError> {
        Err(expected(self.col(), what, self.found()))
    }

    fn is_punct(&self, p: &str) -> bool {
        self.peek().is_some_and(|t| t.kind == Kind::Punct && t.text == p)
    }

    fn is_ident(&self, s: &str) -> bool {
        self.peek().is_some_and(|t| t.kind == Kind::Ident && t.text == s)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        let yes = self.is_punct(p);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn punct(&mut self, p: &str) -> Result<(), ParseError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            self.fail(format!("`{p}`"))
        }
    }

    fn keyword(&mut self, s: &str) -> Result<(), ParseError> {
        if self.is_ident(s) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("`{s}`"))
        }
    }

    fn ident(&mut self, what: &str) -> Result<Token<'a>, ParseError> {
        match self.peek() {
            Some(t) if t.kind == Kind::Ident => {
                self.pos += 1;
                Ok(t)
            }
            _ => self.fail(what),
        }
    }

    fn end(&self) -> Result<(), ParseError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.fail("end of instruction"),
        }
    }

    /// A register `rN` or `wN`, with whether it is the 64-bit name.
    fn any_reg(&mut self) -> Result<(Reg, bool), ParseError> {
        match self.peek().filter(|t| t.kind == Kind::Ident).and_then(|t| parse_reg_name(t.text)) {
            Some(r) => {
                self.pos += 1;
                Ok(r)
            }
            None => self.fail("a register (r0..r10 or w0..w10)"),
        }
    }

    /// A register of the given width.
    fn reg_of(&mut self, wide: bool) -> Result<Reg, ParseError> {
        let col = self.col();
        let found = self.found();
        match self.any_reg()? {
            (r, w) if w == wide => Ok(r),
            _ => Err(expected(
                col,
                if wide { "a 64-bit register (r0..r10)" } else { "a 32-bit register (w0..w10)" },
                found,
            )),
        }
    }

    /// A 64-bit register, or a 32-bit one where `allow_w` (LLVM's spelling of narrow
    /// memory operands).
    fn data_reg(&mut self, allow_w: bool) -> Result<Reg, ParseError> {
        let col = self.col();
        let found = self.found();
        match self.any_reg()? {
            (r, true) => Ok(r),
            (r, false) if allow_w => Ok(r),
            _ => Err(expected(col, "a 64-bit register (r0..r10)", found)),
        }
    }

    /// The same register as `want`, as the text repeats it (`r1 = -r1`, `r2 = atomic...`).
    fn same_reg(&mut self, want: Reg, allow_w: bool, why: &str) -> Result<(), ParseError> {
        let col = self.col();
        let found = self.found();
        let r = self.data_reg(allow_w)?;
        if r == want {
            Ok(())
        } else {
            Err(expected(col, format!("`{want}` ({why})"), found))
        }
    }

    /// An optionally signed decimal or hex number.
    fn number(&mut self) -> Result<(i128, usize, String), ParseError> {
        let col = self.col();
        let neg = if self.eat_punct("-") {
            true
        } else {
            self.eat_punct("+");
            false
        };
        match self.peek() {
            Some(Token { kind: Kind::Num(v), text, .. }) => {
                self.pos += 1;
                let v = i128::from(v);
                let text = if neg { format!("-{text}") } else { text.to_string() };
                Ok((if neg { -v } else { v }, col, text))
            }
            _ => self.fail("a number"),
        }
    }

    fn int<T>(&mut self, what: &'static str, convert: impl Fn(i128) -> Option<T>) -> Result<T, ParseError> {
        let (v, col, text) = self.number()?;
        convert(v).ok_or_else(|| err_at(col, ParseErrorKind::OutOfRange { value: text, what }))
    }

    fn imm32(&mut self) -> Result<i32, ParseError> {
        self.int("a 32-bit immediate", to_i32)
    }

    fn off16(&mut self) -> Result<i16, ParseError> {
        self.int("a 16-bit offset", |v| i16::try_from(v).ok())
    }

    /// `(u32 *)` or, where `signed` is allowed, `(s32 *)`: the size and signedness.
    fn size_cast(&mut self, allow_signed: bool) -> Result<(Size, bool), ParseError> {
        self.punct("(")?;
        let what = if allow_signed {
            "a type (u8, u16, u32, u64, s8, s16, s32)"
        } else {
            "a type (u8, u16, u32, u64)"
        };
        let t = match self.peek() {
            Some(t) if t.kind == Kind::Ident => t,
            _ => return self.fail(what),
        };
        let found = match t.text {
            "u8" => (Size::B, false),
            "u16" => (Size::H, false),
            "u32" => (Size::W, false),
            "u64" => (Size::DW, false),
            "s8" if allow_signed => (Size::B, true),
            "s16" if allow_signed => (Size::H, true),
            "s32" if allow_signed => (Size::W, true),
            _ => return self.fail(what),
        };
        self.pos += 1;
        self.punct("*")?;
        self.punct(")")?;
        Ok(found)
    }

    /// `(r1 +4)`, `(r1 - 4)` or `(r1)`.
    fn mem_operand(&mut self) -> Result<(Reg, i16), ParseError> {
        self.punct("(")?;
        let base = self.reg_of(true)?;
        let off = if self.is_punct("+") || self.is_punct("-") { self.off16()? } else { 0 };
        self.punct(")")?;
        Ok((base, off))
    }

    /// `pc+5`, `+5`, `-2` or a label, then an optional `<label>` annotation (ignored).
    fn target(&mut self) -> Result<(Target, usize), ParseError> {
        let col = self.col();
        let target = if self.is_ident("pc") {
            self.pos += 1;
            if !(self.is_punct("+") || self.is_punct("-")) {
                return self.fail("`+` or `-` after `pc`");
            }
            Target::Offset(self.number()?.0)
        } else if self.is_punct("+") || self.is_punct("-") {
            Target::Offset(self.number()?.0)
        } else if self.peek().is_some_and(|t| t.kind == Kind::Ident && parse_reg_name(t.text).is_none()) {
            Target::Label(self.ident("a label")?.text.to_string())
        } else {
            return self.fail("a jump target (pc+N, +N, -N or a label)");
        };
        if self.eat_punct("<") {
            self.ident("a label name")?;
            self.punct(">")?;
        }
        Ok((target, col))
    }

    /// A target for an offset field that `convert` checks; labels resolve later.
    fn branch<T: Default>(
        &mut self,
        what: &'static str,
        convert: impl Fn(i128) -> Option<T>,
    ) -> Result<(T, Option<(String, usize)>), ParseError> {
        let (target, col) = self.target()?;
        match target {
            Target::Offset(v) => convert(v)
                .map(|off| (off, None))
                .ok_or_else(|| err_at(col, ParseErrorKind::OutOfRange { value: format!("{v:+}"), what })),
            Target::Label(l) => Ok((T::default(), Some((l, col)))),
        }
    }

    fn stmt(&mut self) -> Result<Parsed, ParseError> {
        let Some(first) = self.peek() else { return self.fail("an instruction") };
        if first.kind == Kind::Ident {
            match first.text {
                "exit" => {
                    self.pos += 1;
                    return Ok((Insn::Exit, None));
                }
                "goto" => {
                    self.pos += 1;
                    let (off, l) = self.branch("a 16-bit offset (use gotol)", |v| i16::try_from(v).ok())?;
                    return Ok((Insn::Ja { long: false, off: i32::from(off) }, l));
                }
                "gotol" => {
                    self.pos += 1;
                    let (off, l) = self.branch("a 32-bit offset", |v| i32::try_from(v).ok())?;
                    return Ok((Insn::Ja { long: true, off }, l));
                }
                "may_goto" => {
                    self.pos += 1;
                    let (off, l) = self.branch("a 16-bit offset", |v| i16::try_from(v).ok())?;
                    return Ok((Insn::MayGoto { off }, l));
                }
                "call" => {
                    self.pos += 1;
                    return self.call();
                }
                "if" => {
                    self.pos += 1;
                    return self.cond_jump();
                }
                "lock" => {
                    self.pos += 1;
                    return self.lock().map(|i| (i, None));
                }
                "store_release" => {
                    self.pos += 1;
                    self.punct("(")?;
                    let (size, _) = self.size_cast(false)?;
                    let (base, off) = self.mem_operand()?;
                    self.punct(",")?;
                    let src = self.data_reg(size != Size::DW)?;
                    self.punct(")")?;
                    return Ok((Insn::StoreRelease { size, base, off, src }, None));
                }
                _ => {}
            }
            if parse_reg_name(first.text).is_some() {
                return self.assignment();
            }
        }
        if self.eat_punct("*") {
            return self.store().map(|i| (i, None));
        }
        self.fail("an instruction")
    }

    fn call(&mut self) -> Result<Parsed, ParseError> {
        let col = self.col();
        if self.eat_punct("#") {
            return Ok((
                Insn::Call(CallTarget::Helper(self.int("a helper id", |v| i32::try_from(v).ok())?)),
                None,
            ));
        }
        if self.is_ident("pc") || self.is_punct("+") || self.is_punct("-") {
            let (off, l) = self.branch("a 32-bit offset", |v| i32::try_from(v).ok())?;
            return Ok((Insn::Call(CallTarget::Local(off)), l));
        }
        let name = self.ident("a helper, `kfunc#ID`, `pc+N` or a label")?;
        match name.text {
            "kfunc" | "kernel" => {
                if name.text == "kernel" {
                    self.punct("-")?;
                    self.keyword("function")?;
                }
                self.punct("#")?;
                let btf_id = self.int("a BTF id", |v| i32::try_from(v).ok())?;
                let module = if self.eat_punct("@") {
                    self.int("a 16-bit module index", |v| i16::try_from(v).ok())?
                } else {
                    0
                };
                Ok((Insn::Call(CallTarget::Kfunc { btf_id, module }), None))
            }
            "unknown" => {
                self.punct("#")?;
                Ok((
                    Insn::Call(CallTarget::Helper(self.int("a helper id", |v| i32::try_from(v).ok())?)),
                    None,
                ))
            }
            text => match helpers::id(text) {
                Some(id) => {
                    if self.eat_punct("#") {
                        let n_col = self.col();
                        let n = self.int("a helper id", |v| i32::try_from(v).ok())?;
                        if n != id {
                            return Err(err_at(
                                n_col,
                                ParseErrorKind::Invalid(format!("helper `{text}` is #{id}, not #{n}")),
                            ));
                        }
                    }
                    Ok((Insn::Call(CallTarget::Helper(id)), None))
                }
                None if self.is_punct("#") => Err(expected(
                    col,
                    "a helper name of Linux 6.18, `unknown` or `kfunc`",
                    format!("`{text}`"),
                )),
                None => {
                    if self.eat_punct("<") {
                        self.ident("a label name")?;
                        self.punct(">")?;
                    }
                    Ok((Insn::Call(CallTarget::Local(0)), Some((text.to_string(), col))))
                }
            },
        }
    }

    fn cond_jump(&mut self) -> Result<Parsed, ParseError> {
        let (dst, wide) = self.any_reg()?;
        let cond = match self.peek().filter(|t| t.kind == Kind::Punct).map(|t| t.text) {
            Some("==") => JmpCond::Eq,
            Some(">") => JmpCond::Gt,
            Some(">=") => JmpCond::Ge,
            Some("&") => JmpCond::Set,
            Some("!=") => JmpCond::Ne,
            Some("s>") => JmpCond::SGt,
            Some("s>=") => JmpCond::SGe,
            Some("<") => JmpCond::Lt,
            Some("<=") => JmpCond::Le,
            Some("s<") => JmpCond::SLt,
            Some("s<=") => JmpCond::SLe,
            _ => return self.fail("a condition (== != > >= < <= s> s>= s< s<= &)"),
        };
        self.pos += 1;
        let src = self.reg_or_imm(wide)?;
        self.keyword("goto")?;
        let (off, l) = self.branch("a 16-bit offset", |v| i16::try_from(v).ok())?;
        Ok((Insn::Jmp { wide, cond, dst, src, off }, l))
    }

    fn reg_or_imm(&mut self, wide: bool) -> Result<Src, ParseError> {
        if self.peek().is_some_and(|t| t.kind == Kind::Ident) {
            Ok(Src::Reg(self.reg_of(wide)?))
        } else {
            Ok(Src::Imm(self.imm32()?))
        }
    }

    fn lock(&mut self) -> Result<Insn, ParseError> {
        self.punct("*")?;
        let (size, _) = self.size_cast(false)?;
        let (base, off) = self.mem_operand()?;
        let op = match self.peek().filter(|t| t.kind == Kind::Punct).map(|t| t.text) {
            Some("+=") => AtomicOp::Add { fetch: false },
            Some("|=") => AtomicOp::Or { fetch: false },
            Some("&=") => AtomicOp::And { fetch: false },
            Some("^=") => AtomicOp::Xor { fetch: false },
            _ => return self.fail("an atomic operator (+= |= &= ^=)"),
        };
        self.pos += 1;
        let src = self.data_reg(size != Size::DW)?;
        Ok(Insn::Atomic { size, op, base, off, src })
    }

    fn store(&mut self) -> Result<Insn, ParseError> {
        let (size, _) = self.size_cast(false)?;
        let (base, off) = self.mem_operand()?;
        self.punct("=")?;
        let src = if self.peek().is_some_and(|t| t.kind == Kind::Ident) {
            Src::Reg(self.data_reg(size != Size::DW)?)
        } else {
            Src::Imm(self.imm32()?)
        };
        Ok(Insn::Store { size, base, off, src })
    }

    /// Everything that starts with a register: ALU operations and the `dst = ...` forms.
    fn assignment(&mut self) -> Result<Parsed, ParseError> {
        let dst_col = self.col();
        let (dst, wide) = self.any_reg()?;
        let op = match self.peek().filter(|t| t.kind == Kind::Punct).map(|t| t.text) {
            Some("=") => None,
            Some("+=") => Some(AluOp::Add),
            Some("-=") => Some(AluOp::Sub),
            Some("*=") => Some(AluOp::Mul),
            Some("/=") => Some(AluOp::Div),
            Some("s/=") => Some(AluOp::SDiv),
            Some("|=") => Some(AluOp::Or),
            Some("&=") => Some(AluOp::And),
            Some("<<=") => Some(AluOp::Lsh),
            Some(">>=") => Some(AluOp::Rsh),
            Some("%=") => Some(AluOp::Mod),
            Some("s%=") => Some(AluOp::SMod),
            Some("^=") => Some(AluOp::Xor),
            Some("s>>=") => Some(AluOp::Arsh),
            _ => return self.fail("`=` or an ALU operator (+= -= *= /= s/= %= s%= |= &= ^= <<= >>= s>>=)"),
        };
        self.pos += 1;
        if let Some(op) = op {
            let src = self.reg_or_imm(wide)?;
            return Ok((Insn::Alu { wide, op, dst, src }, None));
        }
        let need_r = || -> Result<(), ParseError> {
            if wide {
                Ok(())
            } else {
                Err(expected(dst_col, "a 64-bit destination (r0..r10)", format!("`w{}`", dst.num())))
            }
        };
        let Some(tok) = self.peek() else { return self.fail("a value, register or memory operand") };
        match (tok.kind, tok.text) {
            (Kind::Punct, "*") => {
                self.pos += 1;
                let ty = self.peek_at(1);
                let (size, signed) = self.size_cast(true)?;
                if self.is_ident("skb") {
                    if let (true, Some(ty)) = (signed, ty) {
                        return Err(expected(
                            ty.col,
                            "an unsigned type for a packet load",
                            format!("`{}`", ty.text),
                        ));
                    }
                    if !(wide && dst == Reg::R0) {
                        return Err(expected(
                            dst_col,
                            "`r0` (packet loads write r0)",
                            format!("`{}`", wreg(wide, dst)),
                        ));
                    }
                    self.pos += 1;
                    return self.packet_load(size).map(|i| (i, None));
                }
                let (base, off) = self.mem_operand()?;
                if !wide && (signed || size == Size::DW) {
                    need_r()?;
                }
                Ok((Insn::Load { size, signed, dst, base, off }, None))
            }
            (Kind::Punct, "-") if self.peek_at(1).is_some_and(|t| t.kind == Kind::Ident) => {
                self.pos += 1;
                let src_col = self.col();
                let src = self.reg_of(wide)?;
                if src != dst {
                    return Err(expected(
                        src_col,
                        format!("`{}` (negation is in place)", wreg(wide, dst)),
                        format!("`{}`", wreg(wide, src)),
                    ));
                }
                Ok((Insn::Neg { wide, dst }, None))
            }
            (Kind::Punct, "-") | (Kind::Punct, "+") | (Kind::Num(_), _) => {
                let (v, col, text) = self.number()?;
                let ll = self.is_ident("ll");
                if ll {
                    self.pos += 1;
                }
                if ll || self.imm64_hint || (wide && to_i32(v).is_none()) {
                    need_r()?;
                    let value = to_u64(v).ok_or_else(|| {
                        err_at(col, ParseErrorKind::OutOfRange { value: text, what: "64 bits" })
                    })?;
                    return Ok((Insn::LdImm64 { dst, imm: Imm64::Const(value) }, None));
                }
                let imm = to_i32(v).ok_or_else(|| {
                    err_at(col, ParseErrorKind::OutOfRange { value: text, what: "a 32-bit immediate" })
                })?;
                Ok((Insn::Alu { wide, op: AluOp::Mov, dst, src: Src::Imm(imm) }, None))
            }
            (Kind::Punct, "(") => {
                self.pos += 1;
                let what = if wide { "(s8), (s16) or (s32)" } else { "(s8) or (s16)" };
                let bits = match self.peek().map(|t| t.text) {
                    Some("s8") => 8,
                    Some("s16") => 16,
                    Some("s32") if wide => 32,
                    _ => return self.fail(what),
                };
                self.pos += 1;
                self.punct(")")?;
                let src = self.reg_of(wide)?;
                Ok((Insn::MovSx { wide, bits, dst, src }, None))
            }
            (Kind::Punct, "&") => {
                self.pos += 1;
                need_r()?;
                self.keyword("map")?;
                let map = self.bracketed_name()?;
                let off = self.value_offset()?;
                Ok((Insn::LdImm64 { dst, imm: Imm64::MapValueRef { map, off } }, None))
            }
            (Kind::Ident, text) if parse_reg_name(text).is_some() => {
                let src = self.reg_of(wide)?;
                Ok((Insn::Alu { wide, op: AluOp::Mov, dst, src: Src::Reg(src) }, None))
            }
            (Kind::Ident, text) => {
                self.pos += 1;
                if let Some(insn) = self.endian(text, dst, wide, dst_col)? {
                    return Ok((insn, None));
                }
                if let Some(insn) = self.atomic_call(text, tok.col, dst, wide, dst_col)? {
                    return Ok((insn, None));
                }
                self.pos -= 1;
                self.pseudo_imm64(dst, wide, dst_col)
            }
            _ => self.fail("a value, register or memory operand"),
        }
    }

    /// `skb[12]` or `skb[r3 + 12]`, after `r0 = *(uN *)`.
    fn packet_load(&mut self, size: Size) -> Result<Insn, ParseError> {
        self.punct("[")?;
        let insn = if self.peek().is_some_and(|t| t.kind == Kind::Ident) {
            let src = self.reg_of(true)?;
            let imm = if self.is_punct("+") || self.is_punct("-") {
                let neg = self.is_punct("-");
                self.pos += 1;
                // `skb[r3 + -5]` is how the kernel prints a negative offset.
                let v = self.imm32()?;
                if neg {
                    v.checked_neg().ok_or_else(|| {
                        err_at(
                            self.col(),
                            ParseErrorKind::OutOfRange {
                                value: format!("-({v})"),
                                what: "a 32-bit immediate",
                            },
                        )
                    })?
                } else {
                    v
                }
            } else {
                0
            };
            Insn::LdInd { size, src, imm }
        } else {
            Insn::LdAbs { size, imm: self.imm32()? }
        };
        self.punct("]")?;
        Ok(insn)
    }

    /// `be16 r1`, `le32 r1`, `bswap64 r1` after `r1 =`.
    fn endian(
        &mut self,
        text: &str,
        dst: Reg,
        wide: bool,
        dst_col: usize,
    ) -> Result<Option<Insn>, ParseError> {
        let (kind, bits) = match text {
            "be16" => (Endian::ToBe, 16),
            "be32" => (Endian::ToBe, 32),
            "be64" => (Endian::ToBe, 64),
            "le16" => (Endian::ToLe, 16),
            "le32" => (Endian::ToLe, 32),
            "le64" => (Endian::ToLe, 64),
            "bswap16" => (Endian::Swap, 16),
            "bswap32" => (Endian::Swap, 32),
            "bswap64" => (Endian::Swap, 64),
            _ => return Ok(None),
        };
        if !wide {
            return Err(expected(
                dst_col,
                "a 64-bit destination for a byte swap",
                format!("`w{}`", dst.num()),
            ));
        }
        self.same_reg(dst, false, "byte swaps are in place")?;
        Ok(Some(Insn::Endian { kind, bits, dst }))
    }

    /// `atomic[64]_fetch_OP(...)`, `atomic[64]_xchg(...)`, `atomic[64]_cmpxchg(...)` and
    /// `load_acquire(...)` after `dst =`.
    fn atomic_call(
        &mut self,
        text: &str,
        col: usize,
        dst: Reg,
        wide: bool,
        dst_col: usize,
    ) -> Result<Option<Insn>, ParseError> {
        if text == "load_acquire" {
            self.punct("(")?;
            let (size, _) = self.size_cast(false)?;
            let (base, off) = self.mem_operand()?;
            self.punct(")")?;
            if !wide && size == Size::DW {
                return Err(expected(
                    dst_col,
                    "a 64-bit destination for a 64-bit load",
                    format!("`w{}`", dst.num()),
                ));
            }
            return Ok(Some(Insn::LoadAcquire { size, dst, base, off }));
        }
        let (w64, name) = if let Some(rest) = text.strip_prefix("atomic64_") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("atomic_") {
            (false, rest)
        } else {
            return Ok(None);
        };
        let op = match name {
            "fetch_add" => AtomicOp::Add { fetch: true },
            "fetch_or" => AtomicOp::Or { fetch: true },
            "fetch_and" => AtomicOp::And { fetch: true },
            "fetch_xor" => AtomicOp::Xor { fetch: true },
            "xchg" => AtomicOp::Xchg,
            "cmpxchg" => AtomicOp::CmpXchg,
            _ => {
                return Err(expected(
                    col,
                    "an atomic operation (fetch_add, fetch_or, fetch_and, fetch_xor, xchg, cmpxchg)",
                    format!("`{text}`"),
                ))
            }
        };
        self.punct("(")?;
        let size_col = self.col();
        let (size, _) = self.size_cast(false)?;
        if w64 != (size == Size::DW) {
            let want = if w64 { "(u64 *) for atomic64_" } else { "a type narrower than u64 for atomic_" };
            return Err(expected(size_col, want, format!("`{}`", size_name(size))));
        }
        let (base, off) = self.mem_operand()?;
        self.punct(",")?;
        let narrow = size != Size::DW;
        if op == AtomicOp::CmpXchg {
            if dst != Reg::R0 || (!wide && !narrow) {
                return Err(expected(
                    dst_col,
                    "`r0` (cmpxchg returns in r0)",
                    format!("`{}`", wreg(wide, dst)),
                ));
            }
            self.same_reg(Reg::R0, narrow, "cmpxchg compares with r0")?;
            self.punct(",")?;
            let src = self.data_reg(narrow)?;
            self.punct(")")?;
            return Ok(Some(Insn::Atomic { size, op, base, off, src }));
        }
        if !wide && !narrow {
            return Err(expected(dst_col, "a 64-bit destination", format!("`w{}`", dst.num())));
        }
        self.same_reg(dst, narrow, "the old value lands in the source register")?;
        self.punct(")")?;
        Ok(Some(Insn::Atomic { size, op, base, off, src: dst }))
    }

    /// `map_fd[3]`, `map_value[3]+16`, `map_idx[2]`, `map_idx_value[2]+16`, `btf_id[5,0]`,
    /// `func pc+4` and `map[name]` after `dst =`.
    fn pseudo_imm64(&mut self, dst: Reg, wide: bool, dst_col: usize) -> Result<Parsed, ParseError> {
        let tok = self.ident("a value, register or memory operand")?;
        let known = ["map_fd", "map_value", "map_idx", "map_idx_value", "btf_id", "func", "map"];
        if !known.contains(&tok.text) {
            return Err(expected(
                tok.col,
                "a value, register, memory operand, byte swap, atomic or LD_IMM64 source",
                format!("`{}`", tok.text),
            ));
        }
        if !wide {
            return Err(expected(dst_col, "a 64-bit destination for LD_IMM64", format!("`w{}`", dst.num())));
        }
        let fd = |p: &mut Self| -> Result<i32, ParseError> {
            p.punct("[")?;
            let v = p.int("a 32-bit number", |v| i32::try_from(v).ok())?;
            p.punct("]")?;
            Ok(v)
        };
        let (imm, label) = match tok.text {
            "map_fd" => (Imm64::MapFd(fd(self)?), None),
            "map_value" => {
                let fd = fd(self)?;
                (Imm64::MapValue { fd, off: self.value_offset()? }, None)
            }
            "map_idx" => (Imm64::MapIdx(fd(self)?), None),
            "map_idx_value" => {
                let idx = fd(self)?;
                (Imm64::MapIdxValue { idx, off: self.value_offset()? }, None)
            }
            "btf_id" => {
                self.punct("[")?;
                let id = self.int("a 32-bit number", |v| i32::try_from(v).ok())?;
                let next = if self.eat_punct(",") {
                    self.int("a 32-bit number", |v| i32::try_from(v).ok())?
                } else {
                    0
                };
                self.punct("]")?;
                (Imm64::BtfId { id, next }, None)
            }
            "func" => {
                let (off, l) = self.branch("a 32-bit offset", |v| i32::try_from(v).ok())?;
                (Imm64::Func(off), l)
            }
            _ => (Imm64::MapRef(self.bracketed_name()?), None),
        };
        Ok((Insn::LdImm64 { dst, imm }, label))
    }

    fn bracketed_name(&mut self) -> Result<String, ParseError> {
        self.punct("[")?;
        let name = self.ident("a map name")?.text.to_string();
        self.punct("]")?;
        Ok(name)
    }

    /// `+16` after a map value source; absent means 0.
    fn value_offset(&mut self) -> Result<u32, ParseError> {
        if self.is_punct("+") {
            self.int("a 32-bit unsigned offset", |v| u32::try_from(v).ok())
        } else {
            Ok(0)
        }
    }
}

/// Split off a verifier-log prefix (`12: `, `(bf) `, both, or neither): the rest's byte
/// offset and the opcode with its column, if given.
fn strip_prefix(text: &str) -> (usize, Option<(u8, usize)>) {
    let bytes = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 && bytes.get(i + digits) == Some(&b':') {
        i = skip_ws(i + digits + 1);
    }
    let mut code = None;
    if bytes.get(i) == Some(&b'(') {
        let hex = bytes[i + 1..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if (1..=2).contains(&hex) && bytes.get(i + 1 + hex) == Some(&b')') {
            let value =
                u8::from_str_radix(&text[i + 1..i + 1 + hex], 16).expect("one or two hex digits fit u8");
            code = Some((value, i + 2));
            i = skip_ws(i + hex + 2);
        }
    }
    (i, code)
}

/// The opcode byte an instruction encodes to (symbolic maps count as `LD_IMM64`).
fn opcode(insn: &Insn) -> Option<u8> {
    let concrete = match insn {
        Insn::LdImm64 { dst, imm: Imm64::MapRef(_) | Imm64::MapValueRef { .. } } => {
            Insn::LdImm64 { dst: *dst, imm: Imm64::MapFd(0) }
        }
        other => other.clone(),
    };
    let mut raws = Vec::with_capacity(2);
    encode_insn(&concrete, &mut raws).ok()?;
    raws.first().map(|r| r.code)
}

fn parse_line(text: &str) -> Result<Parsed, ParseError> {
    // A trailing `; ...` is verifier register state or a remark.
    let text = text.split(';').next().unwrap_or_default();
    let (at, code) = strip_prefix(text);
    let base_col = text[..at].chars().count() + 1;
    let toks = lex(&text[at..], base_col)?;
    let end_col = base_col + text[at..].trim_end().chars().count();
    let mut p = Parser { toks, pos: 0, end_col, imm64_hint: code.is_some_and(|(c, _)| c == 0x18) };
    let parsed = p.stmt()?;
    p.end()?;
    if let Some((code, col)) = code {
        if let Some(actual) = opcode(&parsed.0) {
            if actual != code {
                return Err(err_at(
                    col,
                    ParseErrorKind::Invalid(format!(
                        "opcode ({code:02x}) does not match `{}`, which encodes as ({actual:02x})",
                        parsed.0
                    )),
                ));
            }
        }
    }
    Ok(parsed)
}

/// Read one instruction in the syntax [`format_insn`] prints (see the module header for the
/// accepted variants). Label targets need [`parse_program`].
pub fn parse_insn(text: &str) -> Result<Insn, ParseError> {
    match parse_line(text)? {
        (insn, None) => Ok(insn),
        (_, Some((label, col))) => Err(expected(
            col,
            "a relative target such as pc+5 (labels need a whole program)",
            format!("`{label}`"),
        )),
    }
}

fn is_label_line(line: &str) -> Option<&str> {
    let name = line.strip_suffix(':')?;
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(is_ident_start) && chars.all(is_ident_char);
    ok.then_some(name)
}

/// Read a listing back into a program: `name:` lines define labels, `; text` lines are
/// comments for the next instruction, slot numbers and `<label>` annotations are ignored,
/// and branches may name labels. Errors carry the 1-based line.
pub fn parse_program(text: &str) -> Result<Program, ParseError> {
    let mut b = Builder::new();
    let mut label_lines: HashMap<String, usize> = HashMap::new();
    // Where each pushed instruction came from: line, and the column of its label target.
    let mut origin: Vec<(usize, usize)> = Vec::new();
    let mut refs: Vec<(String, usize, usize)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim_start();
        if trimmed.trim_end().is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix(';') {
            b.comment(comment.strip_prefix(' ').unwrap_or(comment));
            continue;
        }
        if let Some(name) = is_label_line(trimmed.trim_end()) {
            if let Some(first) = label_lines.insert(name.to_string(), line) {
                let column = raw.len() - trimmed.len() + 1;
                return Err(ParseError {
                    line: Some(line),
                    column,
                    kind: ParseErrorKind::DuplicateLabel { label: name.to_string(), first },
                });
            }
            b.place_named(name.to_string());
            continue;
        }
        let (insn, target) = parse_line(raw).map_err(|e| ParseError { line: Some(line), ..e })?;
        match target {
            None => {
                origin.push((line, 1));
                b.emit(insn);
            }
            Some((label, col)) => {
                origin.push((line, col));
                refs.push((label.clone(), line, col));
                b.emit_to(insn, crate::builder::Target::named(label));
            }
        }
    }
    for (label, line, column) in refs {
        if !label_lines.contains_key(&label) {
            return Err(ParseError {
                line: Some(line),
                column,
                kind: ParseErrorKind::UnknownLabel { label },
            });
        }
    }
    // Labels were checked above with their lines; what is left is a jump too far.
    b.build_verbatim().map_err(|e| {
        let (index, kind) = match e {
            BuildError::JumpOutOfRange { label, index, distance } => {
                (index, ParseErrorKind::JumpOutOfRange { label, distance })
            }
            BuildError::UnknownLabel { index, .. }
            | BuildError::DuplicateLabel { second: index, .. }
            | BuildError::NotAJump { index }
            | BuildError::NotAParameter { index, .. } => (index, ParseErrorKind::Invalid(e.to_string())),
        };
        let (line, column) = origin.get(index).copied().unwrap_or((0, 1));
        ParseError { line: Some(line), column, kind }
    })
}
