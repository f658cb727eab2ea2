//! A conservative subset of the Linux 6.18 eBPF verifier (`kernel/bpf/verifier.c`) for the
//! programs sluice emits: [`verify`] accepts a program only if the kernel would, for the
//! class of programs in the subset. Where the subset is unsure it rejects, so a rejection
//! here may be a program the kernel accepts, never the other way round; a program the
//! kernel rejects after we accepted it is a bug here and gets a regression test.
//!
//! # How it works
//! A static pass ([`cfg`]) resolves map names, checks jump targets, finds back-edges and
//! unreachable instructions, and computes register liveness. Then abstract interpretation
//! walks every path depth first (fall-through first, the taken side of each branch on a
//! LIFO worklist), tracking a type and bounds for each register and each stack byte
//! ([`state`]). At the kernel's prune points (conditional jumps, jump targets, the
//! instruction after a call) a state is compared with the states kept there; when one of
//! them covers it the path is cut, as the kernel's `is_state_visited` does. Covering means
//! same types on live registers and every stack byte, pointer offsets and packet ranges
//! at least as good, ids paired consistently, and scalar ranges contained, for the
//! scalars marked *precise* only: a scalar becomes precise when a decision depends on its
//! value (pointer arithmetic, a helper's memory size, a branch decided by bounds, a zero
//! stored to the stack, the return value), and the mark is carried back along the path to
//! the values it was computed from ([`precision`], the kernel's `mark_chain_precision`).
//! [`VerifyStats::processed_insns`] counts instructions interpreted over all paths, the
//! kernel's `verified_insns`; for the programs we emit it lands near the kernel's figure,
//! not on it (see below for what differs).
//!
//! # In the subset
//! - Register types: uninitialized, scalar (u64/s64 bounds plus a tnum of known bits,
//!   [`scalar`], [`tnum`]), ctx, packet, packet meta, packet end, map value, map value or
//!   NULL, stack, map. Pointers keep a fixed offset and a variable part with bounds.
//! - ALU: all 64- and 32-bit operations on scalars (32-bit ones zero-extend), `neg`,
//!   byte swaps, sign-extending moves. Bounds follow the kernel's transfer functions and
//!   are never more precise than them: `div`/`mod` give unknown values, shifts need a
//!   constant amount, multiplication needs small non-negative operands. A constant
//!   division by zero and a constant shift out of range are errors; a division by a
//!   register that may be zero is allowed (BPF defines it) and recorded in
//!   [`VerifyStats::div_by_reg`]. `mov` of a scalar links the two registers (one id), so
//!   bounds learned from a branch on one apply to the other.
//! - Pointer arithmetic: packet, packet meta, map value and stack pointers plus or minus
//!   a bounded scalar (no subtraction from stack pointers, as in the kernel); a constant
//!   moves the fixed offset, a variable goes into the variable part and gives a packet
//!   pointer a new id and no range. Two packet-family pointers (or two of the same
//!   object) subtract to an unknown scalar. Everything else on a pointer (arithmetic on
//!   ctx, packet end, maps or NULL-able values; multiplication and bitwise operations;
//!   any 32-bit operation) is rejected.
//! - Memory: ctx loads only at fields of the kind's context table with the field's size
//!   (narrower aligned loads of 4-byte scalar `__sk_buff` fields, as the kernel allows;
//!   `xdp_md.egress_ifindex` never, as it is for devmap programs), stores only to
//!   writable fields with a register; packet access within the range
//!   proven by comparisons with `data_end` (`find_good_pkt_pointers` for `>`, `>=`, `<`,
//!   `<=` in both operand orders, and `data_meta` against `data`), with a non-negative
//!   variable part; map value access within `value_size` over the whole variable range;
//!   stack access at constant offsets inside the 512-byte frame, reads only of written
//!   bytes. 8-byte aligned 8-byte stores spill a register (pointers keep their type,
//!   scalars their bounds); constant zero stores are remembered as zero bytes; pointers
//!   may only be spilled whole. Atomic operations (`W`/`DW`, aligned) on stack and map
//!   values.
//! - Branches: scalar comparisons (JMP and JMP32, register or immediate) narrow both
//!   operands on both sides (`reg_set_min_max`); a comparison decided by the bounds
//!   follows only the side taken (`is_branch_taken`); `if rX == 0` / `!= 0` on a map
//!   value or NULL turns every copy with the same id into NULL or a map value.
//! - Helper calls from [`helpers::HELPERS`]: argument types checked (wrong ones name the
//!   argument, what was expected and what was found), memory arguments checked for bounds
//!   and initialization, map types paired with helpers, helpers restricted to the program
//!   kinds that have them (`skb_*` and checksum helpers tc only, `xdp_adjust_head` XDP
//!   only), `r1`-`r5` clobbered, `r0` typed from the return type, every packet pointer
//!   dropped after a helper that can move packet data.
//! - Exit: `r0` must be a scalar within [`ProgKind::return_range`] (XDP and tc compare the
//!   32-bit value the kernel acts on, sock_ops and sk_msg the full 64-bit one). The kernel
//!   checks no range for XDP, tc and sk_msg; so that `return bpf_redirect(..)` meets ours,
//!   `bpf_redirect`, `bpf_redirect_map` and `bpf_msg_redirect_hash` return their documented
//!   verdict ranges here where the kernel says "any integer" (the one place we know more
//!   than the kernel: such a result used as a pointer offset would pass here only).
//! - Program shape: jump targets inside the program and not into the second half of an
//!   `LD_IMM64`, no falling off the end, no unreachable instruction, no back-edge, at most
//!   [`INSN_LIMIT`] processed instructions; map references by name only.
//!
//! # Not in the subset (rejected, or tracked less precisely than the kernel)
//! - Loops of any kind: every back-edge is rejected, bounded or not; `may_goto`.
//! - bpf-to-bpf calls, kfuncs, tail-call-reachable subprograms, BTF, spin locks, dynptrs,
//!   iterators, callbacks, sockets and `bpf_sock` pointers, `LD_ABS`/`LD_IND`,
//!   load-acquire/store-release, maps referenced by fd or index.
//! - Stack liveness: pruning compares every stack byte, so the kernel may cut paths we
//!   still walk (counts can be higher, "too complex" can come earlier); at most 64 states
//!   are kept per prune point, the oldest dropped first. The kernel's heuristic of keeping
//!   a state only every few jumps is not copied, so counts differ in detail.
//! - Separate 32-bit bounds: the 32-bit view is derived from the 64-bit bounds.
//! - Variable-offset stack access, pointer leaks of any kind (into maps, packets, ctx,
//!   helper arguments or the return value), partial loads of spilled pointers.
//! - Knowledge the kernel derives from `pkt > pkt_end` on the failing side
//!   (`mark_pkt_end`), `const` map keys that elide null checks, `BPF_ADD_CONST` links.
//! - Uninitialized stack reads, which a privileged loader may do, are errors here.

pub mod cfg;
pub mod helpers;
pub mod precision;
pub mod scalar;
pub mod state;
pub mod tnum;

mod alu;
mod branch;
mod call;
mod mem;
mod walk;

pub use state::ValueType;

use crate::spec::{MapKind, MapSpec, ProgKind};
use sluice_asm::Program;
use std::fmt::Write as _;
use thiserror::Error;

/// Instructions processed over all paths before a program is "too complex" (the kernel's
/// `BPF_COMPLEXITY_LIMIT_INSNS`).
pub const INSN_LIMIT: u64 = 1_000_000;

/// What verification cost, in the kernel's terms where it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Instructions interpreted over all explored paths (`verified_insns`); an `LD_IMM64`
    /// counts once. For a straight-line program, its instruction count.
    pub processed_insns: u64,
    /// Paths followed to an `exit`.
    pub paths: u64,
    /// Paths cut because an explored state covered them.
    pub pruned: u64,
    /// States kept at prune points (`total_states`), including ones dropped later.
    pub total_states: u64,
    /// Most states kept at one instruction (`max_states_per_insn`).
    pub max_states_per_insn: u32,
    /// Most branches waiting on the worklist at once.
    pub peak_pending: u32,
    /// Deepest stack byte touched, in bytes below `r10` (`stack depth`).
    pub peak_stack: u32,
    /// Instructions that divide by a register that may be zero (the result is then 0, or
    /// the dividend for modulo), sorted.
    pub div_by_reg: Vec<usize>,
}

/// One branch decision on the path to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    /// The conditional jump.
    pub insn: usize,
    /// Whether the jump was taken.
    pub taken: bool,
}

/// A rejected program: where, why, and how the verifier got there.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("insn {insn} `{text}`: {kind}")]
pub struct VerifyError {
    /// The instruction index (an `LD_IMM64` counts once).
    pub insn: usize,
    /// The slot of that instruction, as the kernel numbers instructions.
    pub slot: usize,
    /// The instruction in verifier-log syntax.
    pub text: String,
    pub kind: ErrorKind,
    /// The branch decisions from the entry to the error, oldest first.
    pub path: Vec<Branch>,
    /// The register and spilled-register state before the instruction.
    pub state: String,
}

impl VerifyError {
    /// A multi-line report: the error, the path, and the state.
    pub fn report(&self) -> String {
        let mut out = format!("{self}\n  slot {}", self.slot);
        if !self.path.is_empty() {
            let steps: Vec<String> = self
                .path
                .iter()
                .map(|b| format!("{} {}", b.insn, if b.taken { "taken" } else { "fell through" }))
                .collect();
            let _ = write!(out, "\n  path: {}", steps.join(", "));
        }
        if !self.state.is_empty() {
            let _ = write!(out, "\n  state: {}", self.state);
        }
        out
    }
}

/// Why a program was rejected. Messages follow the kernel's log where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ErrorKind {
    #[error("empty program")]
    EmptyProgram,
    #[error("no map named `{name}` among the program's maps")]
    UnknownMap { name: String },
    #[error("unrelocated fd {fd}; pass symbolic map names")]
    UnrelocatedMapFd { fd: i32 },
    #[error("bad map value reference into `{map}`: {reason}")]
    BadMapValueRef { map: String, reason: String },
    #[error("{what} is not in the verifier subset")]
    Unsupported { what: &'static str },
    #[error("malformed instruction: {what}")]
    Malformed { what: &'static str },
    #[error("jump out of range to slot {target}")]
    JumpOutOfRange { target: i64 },
    #[error("jump into the middle of ldimm64 at slot {target}")]
    JumpIntoLdImm64 { target: usize },
    #[error("last insn is not an exit or jmp: control falls off the end")]
    FallOffEnd,
    #[error("back-edge from insn {from} to {to} (loops are not in the subset)")]
    BackEdge { from: usize, to: usize },
    #[error("unreachable insn")]
    Unreachable,
    #[error("program too complex: more than {limit} instructions processed")]
    TooComplex { limit: u64 },
    #[error("R{reg} !read_ok: read of an uninitialized register")]
    UninitRegister { reg: u8 },
    #[error("frame pointer is read only")]
    WriteToR10,
    #[error("invalid read from stack off {off} size {size}: bytes never written")]
    UninitStack { off: i64, size: u64 },
    #[error("invalid stack access off={off} size={size}: outside the 512-byte frame")]
    StackOutOfBounds { off: i64, size: u64 },
    #[error("R{reg} variable stack access (offset {var}) is not in the subset")]
    VariableStackAccess { reg: u8, var: String },
    #[error("stack slot fp{off} size {size}: {reason}")]
    BadSpill { off: i64, size: u64, reason: &'static str },
    #[error("invalid access to packet, off={off} size={size}, R{reg} r={range}")]
    PacketOutOfRange { reg: u8, off: i64, size: u64, range: u32 },
    #[error("R{reg} ({ty}) min value is negative (var {var}): use an unsigned index or check it")]
    NegativeVarOffset { reg: u8, ty: ValueType, var: String },
    #[error("cannot write into packet in a {kind} program")]
    PacketReadOnly { kind: ProgKind },
    #[error(
        "invalid access to map value of `{map}`: R{reg} offsets {min}..={max} size {size}, value_size={value_size}"
    )]
    MapValueOutOfBounds { reg: u8, map: String, min: i64, max: i64, size: u64, value_size: u32 },
    #[error("{access} map `{map}` forbidden by its flags")]
    MapAccessForbidden { map: String, access: &'static str },
    #[error("R{reg} invalid mem access 'map_value_or_null': lookup in `{map}` not null-checked")]
    MaybeNullDeref { reg: u8, map: String },
    #[error("R{reg} invalid mem access '{ty}'")]
    InvalidMemAccess { reg: u8, ty: ValueType },
    #[error("invalid bpf_context access off={off} size={size} ({kind}): {reason}")]
    CtxInvalidAccess { kind: ProgKind, off: i64, size: u64, reason: &'static str },
    #[error("context field `{field}` is read-only")]
    CtxReadOnly { field: &'static str },
    #[error("R{reg} pointer arithmetic on {ty} prohibited: {reason}")]
    PointerArithmetic { reg: u8, ty: ValueType, reason: &'static str },
    #[error("R{reg} 32-bit pointer arithmetic prohibited ({ty})")]
    PointerAlu32 { reg: u8, ty: ValueType },
    #[error("R{reg} leaks addr ({ty}) into {into}")]
    PointerLeak { reg: u8, ty: ValueType, into: &'static str },
    #[error("at program exit R0 has smin={min} smax={max}, should have been in [{lo}, {hi}] for {kind}")]
    ReturnOutOfRange { min: i64, max: i64, lo: i64, hi: i64, kind: ProgKind },
    #[error("div by zero")]
    DivByZero,
    #[error("invalid shift {amount}")]
    InvalidShift { amount: i64 },
    #[error("invalid func unknown#{id}")]
    UnknownHelper { id: i32 },
    #[error("program of type {kind} cannot call {helper}")]
    HelperNotAllowed { helper: &'static str, kind: ProgKind },
    #[error("{helper} arg{arg}: R{arg} type={found} expected={expected}")]
    HelperArg { helper: &'static str, arg: u8, expected: &'static str, found: ValueType },
    #[error("cannot pass map `{map}` of type {map_kind:?} to {helper}")]
    HelperMap { helper: &'static str, map: String, map_kind: MapKind },
    #[error("invalid atomic operation: {reason}")]
    BadAtomic { reason: &'static str },
}

/// Verify `prog` as a program of `kind` using `maps` (looked up by name).
// Rejections are rare and carry their whole context; boxing would only obscure the API.
#[allow(clippy::result_large_err)]
pub fn verify(prog: &Program, kind: ProgKind, maps: &[MapSpec]) -> Result<VerifyStats, VerifyError> {
    walk::run(prog, kind, maps)
}
