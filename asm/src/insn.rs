//! The eBPF instruction set of Linux 6.18 as plain data.
//!
//! An [`Insn`] is one instruction in its semantic form; `LD_IMM64` is one value that occupies
//! two 8-byte slots. Jump and call offsets are relative, counted in slots, exactly as the
//! kernel counts them (`target = pc + 1 + off`). Symbolic forms (labels, map names) live in
//! the [`crate::Builder`], which resolves them into these values.

use std::fmt;

/// A register. `R10` is the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R5 = 5,
    R6 = 6,
    R7 = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
}

impl Reg {
    /// All eleven registers, in number order.
    pub const ALL: [Reg; 11] =
        [Reg::R0, Reg::R1, Reg::R2, Reg::R3, Reg::R4, Reg::R5, Reg::R6, Reg::R7, Reg::R8, Reg::R9, Reg::R10];

    /// The register with this number, if it is one.
    pub fn from_u8(n: u8) -> Option<Reg> {
        Reg::ALL.get(usize::from(n)).copied()
    }

    /// The register number (0..=10).
    pub fn num(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.num())
    }
}

/// The width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte (`u8`).
    B,
    /// 2 bytes (`u16`).
    H,
    /// 4 bytes (`u32`).
    W,
    /// 8 bytes (`u64`).
    DW,
}

impl Size {
    /// The width in bytes.
    pub fn bytes(self) -> u8 {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }

    /// The access size of this many bytes.
    pub fn from_bytes(n: u8) -> Option<Size> {
        match n {
            1 => Some(Size::B),
            2 => Some(Size::H),
            4 => Some(Size::W),
            8 => Some(Size::DW),
            _ => None,
        }
    }
}

/// A binary ALU operation (`dst = dst OP src`). `Neg`, byte swaps and `movsx` have their
/// own [`Insn`] forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    /// Unsigned division (`off = 0`).
    Div,
    /// Signed division (`off = 1`, cpu v4).
    SDiv,
    Or,
    And,
    Lsh,
    Rsh,
    /// Unsigned modulo (`off = 0`).
    Mod,
    /// Signed modulo (`off = 1`, cpu v4).
    SMod,
    Xor,
    Mov,
    Arsh,
}

impl AluOp {
    /// Every binary operation.
    pub const ALL: [AluOp; 14] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::SDiv,
        AluOp::Or,
        AluOp::And,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Mod,
        AluOp::SMod,
        AluOp::Xor,
        AluOp::Mov,
        AluOp::Arsh,
    ];
}

/// A jump condition (`if dst COND src goto off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JmpCond {
    Eq,
    /// Unsigned `>`.
    Gt,
    /// Unsigned `>=`.
    Ge,
    /// `dst & src != 0`.
    Set,
    Ne,
    /// Signed `>`.
    SGt,
    /// Signed `>=`.
    SGe,
    /// Unsigned `<`.
    Lt,
    /// Unsigned `<=`.
    Le,
    /// Signed `<`.
    SLt,
    /// Signed `<=`.
    SLe,
}

impl JmpCond {
    /// Every condition.
    pub const ALL: [JmpCond; 11] = [
        JmpCond::Eq,
        JmpCond::Gt,
        JmpCond::Ge,
        JmpCond::Set,
        JmpCond::Ne,
        JmpCond::SGt,
        JmpCond::SGe,
        JmpCond::Lt,
        JmpCond::Le,
        JmpCond::SLt,
        JmpCond::SLe,
    ];

    /// The condition that holds exactly when this one does not (`Set` has none).
    pub fn negate(self) -> Option<JmpCond> {
        Some(match self {
            JmpCond::Eq => JmpCond::Ne,
            JmpCond::Ne => JmpCond::Eq,
            JmpCond::Gt => JmpCond::Le,
            JmpCond::Le => JmpCond::Gt,
            JmpCond::Ge => JmpCond::Lt,
            JmpCond::Lt => JmpCond::Ge,
            JmpCond::SGt => JmpCond::SLe,
            JmpCond::SLe => JmpCond::SGt,
            JmpCond::SGe => JmpCond::SLt,
            JmpCond::SLt => JmpCond::SGe,
            JmpCond::Set => return None,
        })
    }
}

/// The right-hand operand of an ALU, jump or store instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Src {
    Reg(Reg),
    Imm(i32),
}

impl From<Reg> for Src {
    fn from(r: Reg) -> Src {
        Src::Reg(r)
    }
}

impl From<i32> for Src {
    fn from(v: i32) -> Src {
        Src::Imm(v)
    }
}

/// Byte-order conversions: `le`/`be` (class ALU, source bit picks the order) and the
/// unconditional `bswap` (class ALU64, cpu v4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Convert host to little endian (a truncation on little-endian hosts).
    ToLe,
    /// Convert host to big endian.
    ToBe,
    /// Swap bytes regardless of host order.
    Swap,
}

/// An atomic read-modify-write operation (`BPF_ATOMIC` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// `lock *(size *)(dst + off) += src`; with `fetch`, the old value lands in `src`.
    Add {
        fetch: bool,
    },
    Or {
        fetch: bool,
    },
    And {
        fetch: bool,
    },
    Xor {
        fetch: bool,
    },
    /// Exchange: `src = xchg(*(dst + off), src)`.
    Xchg,
    /// Compare and exchange: `r0 = cmpxchg(*(dst + off), r0, src)`.
    CmpXchg,
}

/// What a `LD_IMM64` instruction loads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Imm64 {
    /// A plain 64-bit constant (`src = 0`).
    Const(u64),
    /// A map file descriptor (`src = BPF_PSEUDO_MAP_FD`).
    MapFd(i32),
    /// The address of a map value, by fd and offset (`src = BPF_PSEUDO_MAP_VALUE`).
    MapValue { fd: i32, off: u32 },
    /// A map by index into the program's map table (`src = BPF_PSEUDO_MAP_IDX`).
    MapIdx(i32),
    /// A map value by map index and offset (`src = BPF_PSEUDO_MAP_IDX_VALUE`).
    MapIdxValue { idx: i32, off: u32 },
    /// A kernel BTF object id (`src = BPF_PSEUDO_BTF_ID`).
    BtfId { id: i32, next: i32 },
    /// The address of a BPF subprogram, relative (`src = BPF_PSEUDO_FUNC`).
    Func(i32),
    /// A map referenced by name, resolved when the program is loaded or written to ELF.
    /// Never encoded as such: [`crate::Program::relocate`] turns it into `MapFd`.
    MapRef(String),
    /// A map value referenced by map name and offset; resolved like `MapRef`.
    MapValueRef { map: String, off: u32 },
}

/// The target of a `call` instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallTarget {
    /// A kernel helper by number (`src = 0`).
    Helper(i32),
    /// A bpf-to-bpf call, relative in slots (`src = BPF_PSEUDO_CALL`).
    Local(i32),
    /// A kernel function by BTF id (`src = BPF_PSEUDO_KFUNC_CALL`), with the module BTF fd
    /// in `off`.
    Kfunc { btf_id: i32, module: i16 },
}

/// One eBPF instruction. `LdImm64` occupies two slots, every other variant one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `dst = dst OP src`, 64-bit when `wide` (class ALU64), else 32-bit with zero extension.
    Alu { wide: bool, op: AluOp, dst: Reg, src: Src },
    /// `dst = -dst`.
    Neg { wide: bool, dst: Reg },
    /// `dst = (sN)src`: sign-extending move from the low `bits` (8, 16 or 32; 32 only
    /// when `wide`) of `src` (cpu v4).
    MovSx { wide: bool, bits: u8, dst: Reg, src: Reg },
    /// Byte-order conversion of the low `bits` (16, 32 or 64) of `dst`.
    Endian { kind: Endian, bits: u8, dst: Reg },
    /// `dst = imm64` and its pseudo forms.
    LdImm64 { dst: Reg, imm: Imm64 },
    /// `dst = *(size *)(base + off)`, sign-extending when `signed` (`BPF_MEMSX`, cpu v4).
    Load { size: Size, signed: bool, dst: Reg, base: Reg, off: i16 },
    /// `*(size *)(base + off) = src` (`BPF_STX` for a register, `BPF_ST` for an immediate).
    Store { size: Size, base: Reg, off: i16, src: Src },
    /// An atomic read-modify-write on `*(size *)(base + off)` with `src` (size W or DW).
    Atomic { size: Size, op: AtomicOp, base: Reg, off: i16, src: Reg },
    /// `dst = load_acquire((size *)(base + off))` (6.15+).
    LoadAcquire { size: Size, dst: Reg, base: Reg, off: i16 },
    /// `store_release((size *)(base + off), src)` (6.15+).
    StoreRelease { size: Size, base: Reg, off: i16, src: Reg },
    /// Legacy packet access `r0 = ntoh(*(size *)(skb->data + imm))`.
    LdAbs { size: Size, imm: i32 },
    /// Legacy packet access `r0 = ntoh(*(size *)(skb->data + src + imm))`.
    LdInd { size: Size, src: Reg, imm: i32 },
    /// `if dst COND src goto pc+off`; 32-bit comparison unless `wide` (class JMP32).
    Jmp { wide: bool, cond: JmpCond, dst: Reg, src: Src, off: i16 },
    /// `goto pc+off`; `long` is `gotol` (class JMP32, 32-bit offset in imm).
    Ja { long: bool, off: i32 },
    /// `may_goto pc+off`: an iteration budget check the kernel bounds (6.9+).
    MayGoto { off: i16 },
    /// `call`.
    Call(CallTarget),
    /// `exit`: return `r0`.
    Exit,
}

impl Insn {
    /// Number of 8-byte slots this instruction occupies.
    pub fn slots(&self) -> usize {
        match self {
            Insn::LdImm64 { .. } => 2,
            _ => 1,
        }
    }

    /// The relative slot offset of a jump or local call, if this is one.
    pub fn branch_offset(&self) -> Option<i32> {
        match self {
            Insn::Jmp { off, .. } => Some(i32::from(*off)),
            Insn::Ja { off, .. } => Some(*off),
            Insn::MayGoto { off } => Some(i32::from(*off)),
            Insn::Call(CallTarget::Local(off)) => Some(*off),
            Insn::LdImm64 { imm: Imm64::Func(off), .. } => Some(*off),
            _ => None,
        }
    }

    /// A copy with the relative offset replaced (for jumps and local calls).
    pub(crate) fn with_offset(&self, new: i32) -> Option<Insn> {
        let mut insn = self.clone();
        match &mut insn {
            Insn::Jmp { off, .. } => *off = i16::try_from(new).ok()?,
            Insn::Ja { long: false, off } => {
                i16::try_from(new).ok()?;
                *off = new
            }
            Insn::Ja { long: true, off } => *off = new,
            Insn::MayGoto { off } => *off = i16::try_from(new).ok()?,
            Insn::Call(CallTarget::Local(off)) => *off = new,
            Insn::LdImm64 { imm: Imm64::Func(off), .. } => *off = new,
            _ => return None,
        }
        Some(insn)
    }

    /// Whether control can fall through to the next instruction.
    pub fn falls_through(&self) -> bool {
        !matches!(self, Insn::Exit | Insn::Ja { .. })
    }
}

// Short constructors that read like assembly: `mov64_imm(R0, 2)`, `jeq_imm(R1, 0, ...)`.
impl Insn {
    /// `dst = src` (64-bit).
    pub fn mov64(dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { wide: true, op: AluOp::Mov, dst, src: src.into() }
    }
    /// `wdst = src` (32-bit, zero-extending).
    pub fn mov32(dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { wide: false, op: AluOp::Mov, dst, src: src.into() }
    }
    /// `dst OP= src` (64-bit).
    pub fn alu64(op: AluOp, dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { wide: true, op, dst, src: src.into() }
    }
    /// `wdst OP= src` (32-bit).
    pub fn alu32(op: AluOp, dst: Reg, src: impl Into<Src>) -> Insn {
        Insn::Alu { wide: false, op, dst, src: src.into() }
    }
    /// `dst = *(size *)(base + off)`.
    pub fn load(size: Size, dst: Reg, base: Reg, off: i16) -> Insn {
        Insn::Load { size, signed: false, dst, base, off }
    }
    /// `*(size *)(base + off) = src`.
    pub fn store(size: Size, base: Reg, off: i16, src: impl Into<Src>) -> Insn {
        Insn::Store { size, base, off, src: src.into() }
    }
    /// `dst = imm` as `LD_IMM64`.
    pub fn ld_imm64(dst: Reg, value: u64) -> Insn {
        Insn::LdImm64 { dst, imm: Imm64::Const(value) }
    }
    /// `call helper#id`.
    pub fn call(helper: i32) -> Insn {
        Insn::Call(CallTarget::Helper(helper))
    }
}
