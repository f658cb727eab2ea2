//! The static pass before abstract interpretation, in the kernel's order:
//! `resolve_pseudo_ldimm64` (map names), `check_subprogs` (jump targets, the last
//! instruction), `check_cfg` (back-edges, unreachable instructions). It also finds the
//! prune points and computes register liveness, which state pruning uses.

use super::helpers;
use super::ErrorKind;
use crate::spec::{MapKind, MapSpec};
use sluice_asm::{AtomicOp, CallTarget, Imm64, Insn, Reg, Src};

/// The control-flow facts of a program that passed the static checks.
#[derive(Debug)]
pub struct Cfg {
    /// The slot at which each instruction starts, plus the end.
    pub starts: Vec<usize>,
    /// The target instruction of each jump.
    pub target: Vec<Option<usize>>,
    /// Where explored states are kept and new ones compared (`mark_prune_point`):
    /// conditional jumps, every jump target, and the instruction after a call.
    pub prune: Vec<bool>,
    /// Registers some path from the instruction may read before writing (bit n = rn).
    pub live_in: Vec<u16>,
}

/// A static error and the instruction it is at.
pub type StaticError = (usize, ErrorKind);

/// Check the program's shape and compute its [`Cfg`].
pub fn analyse(insns: &[Insn], maps: &[MapSpec]) -> Result<Cfg, StaticError> {
    if insns.is_empty() {
        return Err((0, ErrorKind::EmptyProgram));
    }
    for (i, insn) in insns.iter().enumerate() {
        check_insn(insn, maps).map_err(|e| (i, e))?;
    }
    let mut starts = Vec::with_capacity(insns.len() + 1);
    let mut slot = 0usize;
    for insn in insns {
        starts.push(slot);
        slot += insn.slots();
    }
    starts.push(slot);
    let total = slot as i64;

    let mut target = vec![None; insns.len()];
    for (i, insn) in insns.iter().enumerate() {
        let off = match insn {
            Insn::Jmp { off, .. } => i64::from(*off),
            Insn::Ja { off, .. } => i64::from(*off),
            _ => continue,
        };
        let to = starts[i] as i64 + 1 + off;
        if to < 0 || to >= total {
            return Err((i, ErrorKind::JumpOutOfRange { target: to }));
        }
        match starts.binary_search(&(to as usize)) {
            Ok(t) => target[i] = Some(t),
            Err(_) => return Err((i, ErrorKind::JumpIntoLdImm64 { target: to as usize })),
        }
    }
    let last = insns.len() - 1;
    if insns[last].falls_through() {
        return Err((last, ErrorKind::FallOffEnd));
    }

    let succs = |i: usize| -> [Option<usize>; 2] {
        let next = insns[i].falls_through().then_some(i + 1);
        [next, target[i]]
    };
    dfs(insns.len(), &succs)?;

    let mut prune = vec![false; insns.len()];
    for (i, insn) in insns.iter().enumerate() {
        if let Some(t) = target[i] {
            prune[t] = true;
        }
        match insn {
            Insn::Jmp { .. } => prune[i] = true,
            Insn::Call(_) if i + 1 < insns.len() => prune[i + 1] = true,
            _ => {}
        }
    }
    let live_in = liveness(insns, &succs);
    Ok(Cfg { starts, target, prune, live_in })
}

/// Static checks of one instruction: map references resolve, the form is in the subset.
fn check_insn(insn: &Insn, maps: &[MapSpec]) -> Result<(), ErrorKind> {
    let find = |name: &str| {
        maps.iter().find(|m| m.name == name).ok_or_else(|| ErrorKind::UnknownMap { name: name.to_string() })
    };
    match insn {
        Insn::LdImm64 { imm, .. } => match imm {
            Imm64::Const(_) => Ok(()),
            Imm64::MapRef(name) => find(name).map(|_| ()),
            Imm64::MapValueRef { map, off } => {
                let spec = find(map)?;
                let reason = if spec.kind != MapKind::Array {
                    Some(format!("direct value access needs an array map, not {:?}", spec.kind))
                } else if *off >= spec.value_size {
                    Some(format!("offset {off} is beyond value_size {}", spec.value_size))
                } else {
                    None
                };
                match reason {
                    Some(reason) => Err(ErrorKind::BadMapValueRef { map: map.clone(), reason }),
                    None => Ok(()),
                }
            }
            Imm64::MapFd(fd) | Imm64::MapValue { fd, .. } => Err(ErrorKind::UnrelocatedMapFd { fd: *fd }),
            Imm64::MapIdx(_) | Imm64::MapIdxValue { .. } => {
                Err(ErrorKind::Unsupported { what: "a map referenced by index" })
            }
            Imm64::BtfId { .. } => Err(ErrorKind::Unsupported { what: "a BTF object reference" }),
            Imm64::Func(_) => Err(ErrorKind::Unsupported { what: "a subprogram address" }),
        },
        Insn::Call(CallTarget::Local(_)) => Err(ErrorKind::Unsupported { what: "a bpf-to-bpf call" }),
        Insn::Call(CallTarget::Kfunc { .. }) => Err(ErrorKind::Unsupported { what: "a kfunc call" }),
        Insn::LdAbs { .. } | Insn::LdInd { .. } => {
            Err(ErrorKind::Unsupported { what: "legacy packet access (LD_ABS/LD_IND)" })
        }
        Insn::MayGoto { .. } => Err(ErrorKind::Unsupported { what: "may_goto" }),
        Insn::LoadAcquire { .. } | Insn::StoreRelease { .. } => {
            Err(ErrorKind::Unsupported { what: "load-acquire/store-release" })
        }
        Insn::Endian { bits, .. } if ![16, 32, 64].contains(bits) => {
            Err(ErrorKind::Malformed { what: "byte swap width is not 16, 32 or 64" })
        }
        Insn::MovSx { wide, bits, .. } if !(*bits == 8 || *bits == 16 || (*bits == 32 && *wide)) => {
            Err(ErrorKind::Malformed { what: "sign-extending move width" })
        }
        _ => Ok(()),
    }
}

/// Depth-first search from instruction 0 over both edges of every branch (`check_cfg`).
fn dfs(n: usize, succs: &dyn Fn(usize) -> [Option<usize>; 2]) -> Result<(), StaticError> {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; n];
    // (instruction, next successor to look at)
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    color[0] = GRAY;
    while let Some(top) = stack.last_mut() {
        let (i, k) = *top;
        if k == 2 {
            color[i] = BLACK;
            stack.pop();
            continue;
        }
        top.1 += 1;
        let Some(s) = succs(i)[k] else { continue };
        match color[s] {
            WHITE => {
                color[s] = GRAY;
                stack.push((s, 0));
            }
            GRAY => return Err((i, ErrorKind::BackEdge { from: i, to: s })),
            _ => {}
        }
    }
    match color.iter().position(|c| *c == WHITE) {
        Some(i) => Err((i, ErrorKind::Unreachable)),
        None => Ok(()),
    }
}

fn bit(r: Reg) -> u16 {
    1 << r.num()
}

fn src_bit(src: &Src) -> u16 {
    match src {
        Src::Reg(r) => bit(*r),
        Src::Imm(_) => 0,
    }
}

/// Registers an instruction reads and writes.
fn use_def(insn: &Insn) -> (u16, u16) {
    const CALLER_SAVED: u16 = 0b11_1111;
    match insn {
        Insn::Alu { op: sluice_asm::AluOp::Mov, dst, src, .. } => (src_bit(src), bit(*dst)),
        Insn::Alu { dst, src, .. } => (bit(*dst) | src_bit(src), bit(*dst)),
        Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => (bit(*dst), bit(*dst)),
        Insn::MovSx { dst, src, .. } => (bit(*src), bit(*dst)),
        Insn::LdImm64 { dst, .. } => (0, bit(*dst)),
        Insn::Load { dst, base, .. } | Insn::LoadAcquire { dst, base, .. } => (bit(*base), bit(*dst)),
        Insn::Store { base, src, .. } => (bit(*base) | src_bit(src), 0),
        Insn::StoreRelease { base, src, .. } => (bit(*base) | bit(*src), 0),
        Insn::Atomic { op, base, src, .. } => match op {
            AtomicOp::CmpXchg => (bit(*base) | bit(*src) | bit(Reg::R0), bit(Reg::R0)),
            AtomicOp::Xchg
            | AtomicOp::Add { fetch: true }
            | AtomicOp::Or { fetch: true }
            | AtomicOp::And { fetch: true }
            | AtomicOp::Xor { fetch: true } => (bit(*base) | bit(*src), bit(*src)),
            _ => (bit(*base) | bit(*src), 0),
        },
        Insn::LdAbs { .. } => (bit(Reg::R6), CALLER_SAVED),
        Insn::LdInd { src, .. } => (bit(Reg::R6) | bit(*src), CALLER_SAVED),
        Insn::Jmp { dst, src, .. } => (bit(*dst) | src_bit(src), 0),
        Insn::Ja { .. } | Insn::MayGoto { .. } => (0, 0),
        Insn::Call(CallTarget::Helper(id)) => {
            let reads = (1u16 << (helpers::arg_count(*id) + 1)) - 2;
            (reads, CALLER_SAVED)
        }
        Insn::Call(_) => (CALLER_SAVED & !1, CALLER_SAVED),
        Insn::Exit => (bit(Reg::R0), 0),
    }
}

/// Backward liveness to a fixed point (the graph has no cycles, so few rounds).
fn liveness(insns: &[Insn], succs: &dyn Fn(usize) -> [Option<usize>; 2]) -> Vec<u16> {
    let ud: Vec<(u16, u16)> = insns.iter().map(use_def).collect();
    let mut live = vec![0u16; insns.len()];
    loop {
        let mut changed = false;
        for i in (0..insns.len()).rev() {
            let out = succs(i).iter().flatten().fold(0u16, |acc, s| acc | live[*s]);
            let (used, defined) = ud[i];
            let new = used | (out & !defined);
            if new != live[i] {
                live[i] = new;
                changed = true;
            }
        }
        if !changed {
            return live;
        }
    }
}
