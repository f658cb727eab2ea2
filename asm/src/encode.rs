//! Encoding to and decoding from the kernel's 8-byte instruction format.
//!
//! Layout (little endian, as on every host sluice runs on): `code: u8`, `dst: u4 | src: u4`,
//! `off: i16`, `imm: i32`. Decoding is strict: unused fields must be zero and every opcode
//! must be one the 6.18 kernel defines, so `encode(decode(bytes)) == bytes` for every
//! accepted input and `decode(encode(insn)) == insn` for every encodable instruction.

use crate::insn::{AluOp, AtomicOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};
use thiserror::Error;

/// Instruction classes.
pub mod class {
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;
}

/// Memory access modes and sizes.
pub mod mode {
    pub const IMM: u8 = 0x00;
    pub const ABS: u8 = 0x20;
    pub const IND: u8 = 0x40;
    pub const MEM: u8 = 0x60;
    pub const MEMSX: u8 = 0x80;
    pub const ATOMIC: u8 = 0xc0;
    pub const W: u8 = 0x00;
    pub const H: u8 = 0x08;
    pub const B: u8 = 0x10;
    pub const DW: u8 = 0x18;
}

/// Source-operand bit of ALU and JMP opcodes.
pub const SRC_X: u8 = 0x08;

/// `LD_IMM64` pseudo sources.
pub mod pseudo {
    pub const MAP_FD: u8 = 1;
    pub const MAP_VALUE: u8 = 2;
    pub const BTF_ID: u8 = 3;
    pub const FUNC: u8 = 4;
    pub const MAP_IDX: u8 = 5;
    pub const MAP_IDX_VALUE: u8 = 6;
    /// `call` source for bpf-to-bpf calls.
    pub const CALL: u8 = 1;
    /// `call` source for kfuncs.
    pub const KFUNC_CALL: u8 = 2;
}

/// Atomic operation codes (in `imm`).
pub mod atomic {
    pub const ADD: i32 = 0x00;
    pub const OR: i32 = 0x40;
    pub const AND: i32 = 0x50;
    pub const XOR: i32 = 0xa0;
    pub const FETCH: i32 = 0x01;
    pub const XCHG: i32 = 0xe0 | FETCH;
    pub const CMPXCHG: i32 = 0xf0 | FETCH;
    pub const LOAD_ACQ: i32 = 0x100;
    pub const STORE_REL: i32 = 0x110;
}

/// One raw 8-byte instruction slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawInsn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl RawInsn {
    /// The slot's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }

    /// The slot in these bytes.
    pub fn from_bytes(b: [u8; 8]) -> RawInsn {
        RawInsn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Why an instruction cannot be encoded or a slot sequence decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("slot {slot}: unknown opcode {code:#04x}")]
    UnknownOpcode { slot: usize, code: u8 },
    #[error("slot {slot}: invalid register number {reg}")]
    BadRegister { slot: usize, reg: u8 },
    #[error("slot {slot}: field `{field}` must be {expected} for opcode {code:#04x}, found {found}")]
    NonZeroField { slot: usize, code: u8, field: &'static str, expected: i64, found: i64 },
    #[error("slot {slot}: ld_imm64 is missing its second slot")]
    TruncatedLdImm64 { slot: usize },
    #[error("input is {len} bytes, not a multiple of 8")]
    Length { len: usize },
    #[error("{insn}: cannot be encoded: {why}")]
    Unencodable { insn: String, why: &'static str },
}

fn size_bits(size: Size) -> u8 {
    match size {
        Size::W => mode::W,
        Size::H => mode::H,
        Size::B => mode::B,
        Size::DW => mode::DW,
    }
}

fn size_of_code(code: u8) -> Size {
    match code & 0x18 {
        mode::W => Size::W,
        mode::H => Size::H,
        mode::B => Size::B,
        _ => Size::DW,
    }
}

fn alu_code(op: AluOp) -> (u8, i16) {
    match op {
        AluOp::Add => (0x00, 0),
        AluOp::Sub => (0x10, 0),
        AluOp::Mul => (0x20, 0),
        AluOp::Div => (0x30, 0),
        AluOp::SDiv => (0x30, 1),
        AluOp::Or => (0x40, 0),
        AluOp::And => (0x50, 0),
        AluOp::Lsh => (0x60, 0),
        AluOp::Rsh => (0x70, 0),
        AluOp::Mod => (0x90, 0),
        AluOp::SMod => (0x90, 1),
        AluOp::Xor => (0xa0, 0),
        AluOp::Mov => (0xb0, 0),
        AluOp::Arsh => (0xc0, 0),
    }
}

fn jmp_code(cond: JmpCond) -> u8 {
    match cond {
        JmpCond::Eq => 0x10,
        JmpCond::Gt => 0x20,
        JmpCond::Ge => 0x30,
        JmpCond::Set => 0x40,
        JmpCond::Ne => 0x50,
        JmpCond::SGt => 0x60,
        JmpCond::SGe => 0x70,
        JmpCond::Lt => 0xa0,
        JmpCond::Le => 0xb0,
        JmpCond::SLt => 0xc0,
        JmpCond::SLe => 0xd0,
    }
}

fn jmp_cond(op: u8) -> Option<JmpCond> {
    JmpCond::ALL.into_iter().find(|c| jmp_code(*c) == op)
}

fn atomic_code(op: AtomicOp) -> i32 {
    let f = |fetch: bool| if fetch { atomic::FETCH } else { 0 };
    match op {
        AtomicOp::Add { fetch } => atomic::ADD | f(fetch),
        AtomicOp::Or { fetch } => atomic::OR | f(fetch),
        AtomicOp::And { fetch } => atomic::AND | f(fetch),
        AtomicOp::Xor { fetch } => atomic::XOR | f(fetch),
        AtomicOp::Xchg => atomic::XCHG,
        AtomicOp::CmpXchg => atomic::CMPXCHG,
    }
}

fn atomic_op(imm: i32) -> Option<AtomicOp> {
    let fetch = imm & atomic::FETCH != 0;
    Some(match imm {
        atomic::XCHG => AtomicOp::Xchg,
        atomic::CMPXCHG => AtomicOp::CmpXchg,
        _ => match imm & !atomic::FETCH {
            atomic::ADD => AtomicOp::Add { fetch },
            atomic::OR => AtomicOp::Or { fetch },
            atomic::AND => AtomicOp::And { fetch },
            atomic::XOR => AtomicOp::Xor { fetch },
            _ => return None,
        },
    })
}

fn src_parts(src: Src) -> (u8, i32, u8) {
    match src {
        Src::Reg(r) => (SRC_X, 0, r.num()),
        Src::Imm(v) => (0, v, 0),
    }
}

fn raw(code: u8, dst: Reg, src: u8, off: i16, imm: i32) -> RawInsn {
    RawInsn { code, dst: dst.num(), src, off, imm }
}

/// Encode one instruction into one or two raw slots.
pub fn encode_insn(insn: &Insn, out: &mut Vec<RawInsn>) -> Result<(), EncodeError> {
    let bad = |why: &'static str| EncodeError::Unencodable { insn: format!("{insn:?}"), why };
    let r0 = Reg::R0;
    match insn {
        Insn::Alu { wide, op, dst, src } => {
            let class = if *wide { class::ALU64 } else { class::ALU };
            let (opc, off) = alu_code(*op);
            let (x, imm, s) = src_parts(*src);
            out.push(raw(class | opc | x, *dst, s, off, imm));
        }
        Insn::Neg { wide, dst } => {
            let class = if *wide { class::ALU64 } else { class::ALU };
            out.push(raw(class | 0x80, *dst, 0, 0, 0));
        }
        Insn::MovSx { wide, bits, dst, src } => {
            if !matches!((wide, bits), (_, 8) | (_, 16) | (true, 32)) {
                return Err(bad("movsx takes 8 or 16 bits, or 32 in 64-bit form"));
            }
            let class = if *wide { class::ALU64 } else { class::ALU };
            out.push(raw(class | 0xb0 | SRC_X, *dst, src.num(), i16::from(*bits), 0));
        }
        Insn::Endian { kind, bits, dst } => {
            if !matches!(bits, 16 | 32 | 64) {
                return Err(bad("byte swaps take 16, 32 or 64 bits"));
            }
            let code = match kind {
                Endian::ToLe => class::ALU | 0xd0,
                Endian::ToBe => class::ALU | 0xd0 | SRC_X,
                Endian::Swap => class::ALU64 | 0xd0,
            };
            out.push(raw(code, *dst, 0, 0, i32::from(*bits)));
        }
        Insn::LdImm64 { dst, imm } => {
            let (src, lo, hi): (u8, i32, i32) = match imm {
                Imm64::Const(v) => (0, *v as u32 as i32, (*v >> 32) as u32 as i32),
                Imm64::MapFd(fd) => (pseudo::MAP_FD, *fd, 0),
                Imm64::MapValue { fd, off } => (pseudo::MAP_VALUE, *fd, *off as i32),
                Imm64::MapIdx(i) => (pseudo::MAP_IDX, *i, 0),
                Imm64::MapIdxValue { idx, off } => (pseudo::MAP_IDX_VALUE, *idx, *off as i32),
                Imm64::BtfId { id, next } => (pseudo::BTF_ID, *id, *next),
                Imm64::Func(off) => (pseudo::FUNC, *off, 0),
                Imm64::MapRef(_) | Imm64::MapValueRef { .. } => {
                    return Err(bad("symbolic map reference not relocated"))
                }
            };
            out.push(raw(class::LD | mode::IMM | mode::DW, *dst, src, 0, lo));
            out.push(RawInsn { code: 0, dst: 0, src: 0, off: 0, imm: hi });
        }
        Insn::Load { size, signed, dst, base, off } => {
            let m = if *signed {
                if *size == Size::DW {
                    return Err(bad("there is no sign-extending 64-bit load"));
                }
                mode::MEMSX
            } else {
                mode::MEM
            };
            out.push(raw(class::LDX | m | size_bits(*size), *dst, base.num(), *off, 0));
        }
        Insn::Store { size, base, off, src } => match src {
            Src::Reg(r) => out.push(raw(class::STX | mode::MEM | size_bits(*size), *base, r.num(), *off, 0)),
            Src::Imm(v) => out.push(raw(class::ST | mode::MEM | size_bits(*size), *base, 0, *off, *v)),
        },
        Insn::Atomic { size, op, base, off, src } => {
            if !matches!(size, Size::W | Size::DW) {
                return Err(bad("atomic read-modify-write takes u32 or u64"));
            }
            let code = class::STX | mode::ATOMIC | size_bits(*size);
            out.push(raw(code, *base, src.num(), *off, atomic_code(*op)));
        }
        Insn::LoadAcquire { size, dst, base, off } => {
            let code = class::STX | mode::ATOMIC | size_bits(*size);
            out.push(raw(code, *dst, base.num(), *off, atomic::LOAD_ACQ));
        }
        Insn::StoreRelease { size, base, off, src } => {
            let code = class::STX | mode::ATOMIC | size_bits(*size);
            out.push(raw(code, *base, src.num(), *off, atomic::STORE_REL));
        }
        Insn::LdAbs { size, imm } => {
            if *size == Size::DW {
                return Err(bad("ld_abs takes u8, u16 or u32"));
            }
            out.push(raw(class::LD | mode::ABS | size_bits(*size), r0, 0, 0, *imm));
        }
        Insn::LdInd { size, src, imm } => {
            if *size == Size::DW {
                return Err(bad("ld_ind takes u8, u16 or u32"));
            }
            out.push(raw(class::LD | mode::IND | size_bits(*size), r0, src.num(), 0, *imm));
        }
        Insn::Jmp { wide, cond, dst, src, off } => {
            let class = if *wide { class::JMP } else { class::JMP32 };
            let (x, imm, s) = src_parts(*src);
            out.push(raw(class | jmp_code(*cond) | x, *dst, s, *off, imm));
        }
        Insn::Ja { long: false, off } => {
            let off = i16::try_from(*off).map_err(|_| bad("goto offset exceeds 16 bits; use gotol"))?;
            out.push(raw(class::JMP, r0, 0, off, 0));
        }
        Insn::Ja { long: true, off } => out.push(raw(class::JMP32, r0, 0, 0, *off)),
        Insn::MayGoto { off } => out.push(raw(class::JMP | 0xe0, r0, 0, *off, 0)),
        Insn::Call(target) => {
            let (src, off, imm) = match target {
                CallTarget::Helper(id) => (0, 0, *id),
                CallTarget::Local(off) => (pseudo::CALL, 0, *off),
                CallTarget::Kfunc { btf_id, module } => (pseudo::KFUNC_CALL, *module, *btf_id),
            };
            out.push(raw(class::JMP | 0x80, r0, src, off, imm));
        }
        Insn::Exit => out.push(raw(class::JMP | 0x90, r0, 0, 0, 0)),
    }
    Ok(())
}

/// Encode a sequence of instructions into bytes.
pub fn encode(insns: &[Insn]) -> Result<Vec<u8>, EncodeError> {
    let mut raws = Vec::with_capacity(insns.len() + 4);
    for insn in insns {
        encode_insn(insn, &mut raws)?;
    }
    Ok(raws.into_iter().flat_map(RawInsn::to_bytes).collect())
}

struct Checker {
    slot: usize,
    code: u8,
}

impl Checker {
    fn zero(&self, field: &'static str, found: i64) -> Result<(), EncodeError> {
        self.expect(field, 0, found)
    }
    fn expect(&self, field: &'static str, expected: i64, found: i64) -> Result<(), EncodeError> {
        if found == expected {
            Ok(())
        } else {
            Err(EncodeError::NonZeroField { slot: self.slot, code: self.code, field, expected, found })
        }
    }
    fn reg(&self, n: u8) -> Result<Reg, EncodeError> {
        Reg::from_u8(n).ok_or(EncodeError::BadRegister { slot: self.slot, reg: n })
    }
    fn unknown(&self) -> EncodeError {
        EncodeError::UnknownOpcode { slot: self.slot, code: self.code }
    }
}

/// Decode raw slots into instructions; the second slot of `LD_IMM64` is consumed with it.
pub fn decode_raw(raws: &[RawInsn]) -> Result<Vec<Insn>, EncodeError> {
    let mut out = Vec::with_capacity(raws.len());
    let mut slot = 0;
    while slot < raws.len() {
        let r = raws[slot];
        let c = Checker { slot, code: r.code };
        let (insn, used) = decode_one(&c, r, raws.get(slot + 1).copied())?;
        out.push(insn);
        slot += used;
    }
    Ok(out)
}

/// Decode bytes (a multiple of 8) into instructions.
pub fn decode(bytes: &[u8]) -> Result<Vec<Insn>, EncodeError> {
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(EncodeError::Length { len: bytes.len() });
    }
    let raws: Vec<RawInsn> = chunks
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            RawInsn::from_bytes(b)
        })
        .collect();
    decode_raw(&raws)
}

fn decode_one(c: &Checker, r: RawInsn, next: Option<RawInsn>) -> Result<(Insn, usize), EncodeError> {
    let class = r.code & 0x07;
    match class {
        class::ALU | class::ALU64 => decode_alu(c, r, class == class::ALU64).map(|i| (i, 1)),
        class::JMP | class::JMP32 => decode_jmp(c, r, class == class::JMP).map(|i| (i, 1)),
        class::LD => decode_ld(c, r, next),
        class::LDX => {
            let m = r.code & 0xe0;
            let signed = match m {
                mode::MEM => false,
                mode::MEMSX if r.code & 0x18 != mode::DW => true,
                _ => return Err(c.unknown()),
            };
            c.zero("imm", i64::from(r.imm))?;
            let insn = Insn::Load {
                size: size_of_code(r.code),
                signed,
                dst: c.reg(r.dst)?,
                base: c.reg(r.src)?,
                off: r.off,
            };
            Ok((insn, 1))
        }
        class::ST => {
            if r.code & 0xe0 != mode::MEM {
                return Err(c.unknown());
            }
            c.zero("src", i64::from(r.src))?;
            let insn = Insn::Store {
                size: size_of_code(r.code),
                base: c.reg(r.dst)?,
                off: r.off,
                src: Src::Imm(r.imm),
            };
            Ok((insn, 1))
        }
        _ => {
            // STX
            let size = size_of_code(r.code);
            match r.code & 0xe0 {
                mode::MEM => {
                    c.zero("imm", i64::from(r.imm))?;
                    let insn =
                        Insn::Store { size, base: c.reg(r.dst)?, off: r.off, src: Src::Reg(c.reg(r.src)?) };
                    Ok((insn, 1))
                }
                mode::ATOMIC => {
                    let insn = match r.imm {
                        atomic::LOAD_ACQ => {
                            Insn::LoadAcquire { size, dst: c.reg(r.dst)?, base: c.reg(r.src)?, off: r.off }
                        }
                        atomic::STORE_REL => {
                            Insn::StoreRelease { size, base: c.reg(r.dst)?, off: r.off, src: c.reg(r.src)? }
                        }
                        imm => {
                            let op = atomic_op(imm).ok_or_else(|| c.unknown())?;
                            if !matches!(size, Size::W | Size::DW) {
                                return Err(c.unknown());
                            }
                            Insn::Atomic { size, op, base: c.reg(r.dst)?, off: r.off, src: c.reg(r.src)? }
                        }
                    };
                    Ok((insn, 1))
                }
                _ => Err(c.unknown()),
            }
        }
    }
}

fn decode_alu(c: &Checker, r: RawInsn, wide: bool) -> Result<Insn, EncodeError> {
    let op = r.code & 0xf0;
    let x = r.code & SRC_X != 0;
    let dst = c.reg(r.dst)?;
    let src = |c: &Checker| -> Result<Src, EncodeError> {
        if x {
            c.zero("imm", i64::from(r.imm))?;
            Ok(Src::Reg(c.reg(r.src)?))
        } else {
            c.zero("src", i64::from(r.src))?;
            Ok(Src::Imm(r.imm))
        }
    };
    match op {
        0x80 => {
            if x {
                return Err(c.unknown());
            }
            c.zero("src", i64::from(r.src))?;
            c.zero("off", i64::from(r.off))?;
            c.zero("imm", i64::from(r.imm))?;
            Ok(Insn::Neg { wide, dst })
        }
        0xd0 => {
            let kind = match (wide, x) {
                (false, false) => Endian::ToLe,
                (false, true) => Endian::ToBe,
                (true, false) => Endian::Swap,
                (true, true) => return Err(c.unknown()),
            };
            c.zero("src", i64::from(r.src))?;
            c.zero("off", i64::from(r.off))?;
            let bits = match r.imm {
                16 | 32 | 64 => r.imm as u8,
                other => return Err(c.expect("imm", 64, i64::from(other)).unwrap_err()),
            };
            Ok(Insn::Endian { kind, bits, dst })
        }
        0xb0 if x && r.off != 0 => {
            let bits = match (wide, r.off) {
                (_, 8) | (_, 16) | (true, 32) => r.off as u8,
                _ => return Err(c.expect("off", 0, i64::from(r.off)).unwrap_err()),
            };
            c.zero("imm", i64::from(r.imm))?;
            Ok(Insn::MovSx { wide, bits, dst, src: c.reg(r.src)? })
        }
        _ => {
            let alu = match (op, r.off) {
                (0x30, 1) => AluOp::SDiv,
                (0x90, 1) => AluOp::SMod,
                (op, off) => {
                    let found = AluOp::ALL
                        .into_iter()
                        .find(|a| alu_code(*a) == (op, 0))
                        .ok_or_else(|| c.unknown())?;
                    c.zero("off", i64::from(off))?;
                    found
                }
            };
            Ok(Insn::Alu { wide, op: alu, dst, src: src(c)? })
        }
    }
}

fn decode_jmp(c: &Checker, r: RawInsn, wide: bool) -> Result<Insn, EncodeError> {
    let op = r.code & 0xf0;
    let x = r.code & SRC_X != 0;
    match op {
        0x00 => {
            if x {
                return Err(c.unknown());
            }
            c.zero("dst", i64::from(r.dst))?;
            c.zero("src", i64::from(r.src))?;
            if wide {
                c.zero("imm", i64::from(r.imm))?;
                Ok(Insn::Ja { long: false, off: i32::from(r.off) })
            } else {
                c.zero("off", i64::from(r.off))?;
                Ok(Insn::Ja { long: true, off: r.imm })
            }
        }
        0x80 if wide && !x => {
            c.zero("dst", i64::from(r.dst))?;
            let target = match r.src {
                0 => {
                    c.zero("off", i64::from(r.off))?;
                    CallTarget::Helper(r.imm)
                }
                pseudo::CALL => {
                    c.zero("off", i64::from(r.off))?;
                    CallTarget::Local(r.imm)
                }
                pseudo::KFUNC_CALL => CallTarget::Kfunc { btf_id: r.imm, module: r.off },
                other => return Err(c.expect("src", 0, i64::from(other)).unwrap_err()),
            };
            Ok(Insn::Call(target))
        }
        0x90 if wide && !x => {
            c.zero("dst", i64::from(r.dst))?;
            c.zero("src", i64::from(r.src))?;
            c.zero("off", i64::from(r.off))?;
            c.zero("imm", i64::from(r.imm))?;
            Ok(Insn::Exit)
        }
        0xe0 if wide && !x => {
            c.zero("dst", i64::from(r.dst))?;
            c.zero("src", i64::from(r.src))?;
            c.zero("imm", i64::from(r.imm))?;
            Ok(Insn::MayGoto { off: r.off })
        }
        _ => {
            let cond = jmp_cond(op).ok_or_else(|| c.unknown())?;
            let dst = c.reg(r.dst)?;
            let src = if x {
                c.zero("imm", i64::from(r.imm))?;
                Src::Reg(c.reg(r.src)?)
            } else {
                c.zero("src", i64::from(r.src))?;
                Src::Imm(r.imm)
            };
            Ok(Insn::Jmp { wide, cond, dst, src, off: r.off })
        }
    }
}

fn decode_ld(c: &Checker, r: RawInsn, next: Option<RawInsn>) -> Result<(Insn, usize), EncodeError> {
    let size = size_of_code(r.code);
    match r.code & 0xe0 {
        mode::IMM if size == Size::DW => {
            let n = next.ok_or(EncodeError::TruncatedLdImm64 { slot: c.slot })?;
            let c2 = Checker { slot: c.slot + 1, code: n.code };
            c2.zero("code", i64::from(n.code))?;
            c2.zero("dst", i64::from(n.dst))?;
            c2.zero("src", i64::from(n.src))?;
            c2.zero("off", i64::from(n.off))?;
            c.zero("off", i64::from(r.off))?;
            let dst = c.reg(r.dst)?;
            let lo = r.imm;
            let hi = n.imm;
            let imm = match r.src {
                0 => Imm64::Const(u64::from(lo as u32) | (u64::from(hi as u32) << 32)),
                pseudo::MAP_FD => {
                    c2.zero("imm", i64::from(hi))?;
                    Imm64::MapFd(lo)
                }
                pseudo::MAP_VALUE => Imm64::MapValue { fd: lo, off: hi as u32 },
                pseudo::BTF_ID => Imm64::BtfId { id: lo, next: hi },
                pseudo::FUNC => {
                    c2.zero("imm", i64::from(hi))?;
                    Imm64::Func(lo)
                }
                pseudo::MAP_IDX => {
                    c2.zero("imm", i64::from(hi))?;
                    Imm64::MapIdx(lo)
                }
                pseudo::MAP_IDX_VALUE => Imm64::MapIdxValue { idx: lo, off: hi as u32 },
                other => return Err(c.expect("src", 0, i64::from(other)).unwrap_err()),
            };
            Ok((Insn::LdImm64 { dst, imm }, 2))
        }
        mode::ABS if size != Size::DW => {
            c.zero("dst", i64::from(r.dst))?;
            c.zero("src", i64::from(r.src))?;
            c.zero("off", i64::from(r.off))?;
            Ok((Insn::LdAbs { size, imm: r.imm }, 1))
        }
        mode::IND if size != Size::DW => {
            c.zero("dst", i64::from(r.dst))?;
            c.zero("off", i64::from(r.off))?;
            Ok((Insn::LdInd { size, src: c.reg(r.src)?, imm: r.imm }, 1))
        }
        _ => Err(c.unknown()),
    }
}
