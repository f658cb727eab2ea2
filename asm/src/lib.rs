//! sluice-asm: the eBPF instruction set of Linux 6.18 and nothing else.
//!
//! - [`Insn`]: one instruction as plain data (`LD_IMM64` is one value of width 2).
//! - [`Builder`]: assembly-like construction with symbolic labels and map names, resolved
//!   late into a [`Program`].
//! - [`encode`]/[`decode`]: the kernel's 8-byte format, strict both ways.
//! - [`text`]: the kernel verifier-log syntax, printed and parsed.

pub mod builder;
pub mod encode;
pub mod helpers;
pub mod insn;
pub mod program;
pub mod text;

pub use builder::{BuildError, Builder, Label, Target};
pub use encode::{decode, encode, EncodeError, RawInsn};
pub use insn::{AluOp, AtomicOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};
pub use program::{BindError, Program, RelocateError, StackSlot};
