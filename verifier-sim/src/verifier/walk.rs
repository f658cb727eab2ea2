//! The path walk (`do_check`): a worklist of pending branch states, one transfer function
//! per instruction, state pruning at prune points, the processed-instruction budget.

use super::cfg::{self, Cfg};
use super::precision::{self, Checkpoint, Step};
use super::scalar::Scalar;
use super::state::{covers, Kind, RegState, State};
use super::{alu, branch, call, mem};
use super::{Branch, ErrorKind, VerifyError, VerifyStats, INSN_LIMIT};
use crate::spec::{MapSpec, ProgKind};
use sluice_asm::{CallTarget, Imm64, Insn, Program, Reg};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

/// States kept per prune point; beyond it the oldest is dropped (the kernel evicts states
/// that keep missing). Fewer kept states only make pruning weaker, never wrong.
const MAX_STATES_PER_INSN: usize = 64;

/// What the verifier knows about its surroundings while walking.
pub struct Env<'a> {
    pub insns: &'a [Insn],
    pub kind: ProgKind,
    pub maps: &'a [MapSpec],
    pub stats: VerifyStats,
    /// The stack slot the current instruction spilled to or filled from, for
    /// precision backtracking.
    pub spill_slot: Option<u8>,
    next_id: u32,
    div_by_reg: BTreeSet<usize>,
}

impl Env<'_> {
    /// A new id for linking registers (`++env->id_gen`).
    pub fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub fn map_name(&self, m: usize) -> String {
        self.maps.get(m).map_or_else(|| "?".to_string(), |s| s.name.clone())
    }

    pub fn map_index(&self, name: &str) -> Result<usize, ErrorKind> {
        self.maps
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| ErrorKind::UnknownMap { name: name.to_string() })
    }

    /// The current values of `regs` (a bit per register) matter: mark where they came from.
    pub fn need_precise(&self, st: &State, regs: u16) {
        precision::mark_chain(self.insns, st, regs, 0);
    }

    pub fn note_div_by_reg(&mut self, pc: usize) {
        self.div_by_reg.insert(pc);
    }

    /// Record a stack access reaching `off` bytes below the frame pointer.
    pub fn touch_stack(&mut self, off: i64) {
        let depth = u32::try_from(-off.min(0)).unwrap_or(u32::MAX);
        self.stats.peak_stack = self.stats.peak_stack.max(depth);
    }
}

/// Where control goes after an instruction.
pub enum Flow {
    Next(usize),
    Exit,
    /// Continue at the next instruction; `taken` continues at `target` later.
    Fork {
        target: usize,
        taken: Box<State>,
    },
    /// Neither side of a branch is possible: the path ends without an exit.
    Dead,
}

/// Read register `r`, which must be initialized.
pub fn read(st: &State, r: Reg) -> Result<RegState, ErrorKind> {
    let reg = st.regs[usize::from(r.num())];
    if reg.kind == Kind::NotInit {
        return Err(ErrorKind::UninitRegister { reg: r.num() });
    }
    Ok(reg)
}

/// Write register `r`, which must not be the frame pointer.
pub fn write(st: &mut State, r: Reg, value: RegState) -> Result<(), ErrorKind> {
    if r == Reg::R10 {
        return Err(ErrorKind::WriteToR10);
    }
    st.regs[usize::from(r.num())] = value;
    Ok(())
}

// Rejections are rare and carry their whole context; boxing would only obscure the API.
#[allow(clippy::result_large_err)]
pub fn run(prog: &Program, kind: ProgKind, maps: &[MapSpec]) -> Result<VerifyStats, VerifyError> {
    let insns = prog.insns();
    let cfg = cfg::analyse(insns, maps).map_err(|(insn, kind)| {
        let slot = prog.slot_starts().get(insn).copied().unwrap_or(0);
        let text = insns.get(insn).map(sluice_asm::text::format_insn).unwrap_or_default();
        VerifyError { insn, slot, text, kind, path: Vec::new(), state: String::new() }
    })?;
    let mut env = Env {
        insns,
        kind,
        maps,
        stats: VerifyStats::default(),
        spill_slot: None,
        next_id: 0,
        div_by_reg: BTreeSet::new(),
    };
    let mut explored: Vec<Vec<Rc<RefCell<Checkpoint>>>> = vec![Vec::new(); insns.len()];
    let mut worklist: Vec<(usize, State)> = vec![(0, State::entry())];

    while let Some((mut pc, mut st)) = worklist.pop() {
        loop {
            if cfg.prune[pc] {
                let live = cfg.live_in[pc];
                let old = explored[pc].iter().find(|old| covers(&old.borrow().state, &st, live)).cloned();
                if let Some(old) = old {
                    // This path's continuation relies on what the kept state's did.
                    let (regs, slots) = precision::precise_set(&old.borrow().state, live);
                    precision::mark_chain(insns, &st, regs, slots);
                    env.stats.pruned += 1;
                    break;
                }
                let kept = &mut explored[pc];
                if kept.len() == MAX_STATES_PER_INSN {
                    kept.remove(0);
                }
                let checkpoint = Checkpoint {
                    state: st.snapshot(),
                    parent: st.parent.take(),
                    history: std::mem::take(&mut st.history),
                };
                let checkpoint = Rc::new(RefCell::new(checkpoint));
                kept.push(Rc::clone(&checkpoint));
                st.parent = Some(checkpoint);
                env.stats.total_states += 1;
                let here = u32::try_from(kept.len()).unwrap_or(u32::MAX);
                env.stats.max_states_per_insn = env.stats.max_states_per_insn.max(here);
            }
            env.stats.processed_insns += 1;
            let fail = |st: &State, kind: ErrorKind| error(prog, &cfg, pc, kind, st, maps);
            if env.stats.processed_insns > INSN_LIMIT {
                return Err(fail(&st, ErrorKind::TooComplex { limit: INSN_LIMIT }));
            }
            // Steps may change registers before failing; errors show them as they were.
            let regs_before = st.regs;
            env.spill_slot = None;
            let result = step(&mut env, &cfg, insns, pc, &mut st);
            let done = Step { insn: pc, spill_slot: env.spill_slot };
            if result.is_ok() {
                st.history.push(done);
            }
            match result {
                Ok(Flow::Next(next)) => pc = next,
                Ok(Flow::Exit) => {
                    env.stats.paths += 1;
                    break;
                }
                Ok(Flow::Dead) => break,
                Ok(Flow::Fork { target, mut taken }) => {
                    taken.history.push(done);
                    worklist.push((target, *taken));
                    let pending = u32::try_from(worklist.len()).unwrap_or(u32::MAX);
                    env.stats.peak_pending = env.stats.peak_pending.max(pending);
                    pc += 1;
                }
                Err(kind) => {
                    st.regs = regs_before;
                    return Err(fail(&st, kind));
                }
            }
        }
    }
    env.stats.div_by_reg = env.div_by_reg.into_iter().collect();
    Ok(env.stats)
}

fn error(prog: &Program, cfg: &Cfg, pc: usize, kind: ErrorKind, st: &State, maps: &[MapSpec]) -> VerifyError {
    VerifyError {
        insn: pc,
        slot: cfg.starts.get(pc).copied().unwrap_or(0),
        text: prog.insns().get(pc).map(sluice_asm::text::format_insn).unwrap_or_default(),
        kind,
        path: st.path().into_iter().map(|(insn, taken)| Branch { insn, taken }).collect(),
        state: st.describe(maps),
    }
}

/// Interpret the instruction at `pc` in `st`.
fn step(env: &mut Env, cfg: &Cfg, insns: &[Insn], pc: usize, st: &mut State) -> Result<Flow, ErrorKind> {
    let next = Flow::Next(pc + 1);
    match &insns[pc] {
        Insn::Alu { wide, op, dst, src } => alu::alu(env, st, pc, *wide, *op, *dst, *src).map(|_| next),
        Insn::Neg { wide, dst } => alu::neg(st, *wide, *dst).map(|_| next),
        Insn::MovSx { wide, bits, dst, src } => alu::movsx(st, *wide, *bits, *dst, *src).map(|_| next),
        Insn::Endian { dst, .. } => alu::endian(st, *dst).map(|_| next),
        Insn::LdImm64 { dst, imm } => {
            let value = match imm {
                Imm64::Const(v) => RegState::constant(*v),
                Imm64::MapRef(name) => RegState::pointer(Kind::ConstMap(env.map_index(name)?), 0),
                Imm64::MapValueRef { map, off } => {
                    let off = i32::try_from(*off).map_err(|_| ErrorKind::BadMapValueRef {
                        map: map.clone(),
                        reason: "offset too large".to_string(),
                    })?;
                    RegState::pointer(Kind::MapValue(env.map_index(map)?), off)
                }
                // The static pass rejected every other form already.
                _ => return Err(ErrorKind::Unsupported { what: "this LD_IMM64 form" }),
            };
            write(st, *dst, value).map(|_| next)
        }
        Insn::Load { size, signed, dst, base, off } => {
            mem::load(env, st, u64::from(size.bytes()), *signed, *dst, *base, *off).map(|_| next)
        }
        Insn::Store { size, base, off, src } => {
            mem::store(env, st, u64::from(size.bytes()), *base, *off, *src).map(|_| next)
        }
        Insn::Atomic { size, op, base, off, src } => {
            mem::atomic(env, st, u64::from(size.bytes()), *op, *base, *off, *src).map(|_| next)
        }
        Insn::Jmp { wide, cond, dst, src, .. } => {
            let target = cfg.target[pc].ok_or(ErrorKind::JumpOutOfRange { target: -1 })?;
            branch::cond_jump(env, st, pc, *wide, *cond, *dst, *src, target)
        }
        Insn::Ja { .. } => cfg.target[pc].map(Flow::Next).ok_or(ErrorKind::JumpOutOfRange { target: -1 }),
        Insn::Call(CallTarget::Helper(id)) => call::call(env, st, *id).map(|_| next),
        Insn::Exit => exit(env, st).map(|_| Flow::Exit),
        Insn::Call(_)
        | Insn::LdAbs { .. }
        | Insn::LdInd { .. }
        | Insn::MayGoto { .. }
        | Insn::LoadAcquire { .. }
        | Insn::StoreRelease { .. } => Err(ErrorKind::Unsupported { what: "this instruction" }),
    }
}

/// `check_return_code`: a scalar within the kind's range.
fn exit(env: &Env, st: &State) -> Result<(), ErrorKind> {
    let r0 = read(st, Reg::R0)?;
    if r0.kind != Kind::Scalar {
        return Err(ErrorKind::PointerLeak { reg: 0, ty: r0.ty(), into: "the return value" });
    }
    env.need_precise(st, 1);
    let (lo, hi) = env.kind.return_range();
    // XDP and tc act on the 32-bit return value; the kernel checks sock_ops on 64 bits.
    let value: Scalar = match env.kind {
        ProgKind::Xdp | ProgKind::SchedCls => r0.var.sext32(),
        ProgKind::SockOps | ProgKind::SkMsg | ProgKind::CgroupSockAddr(_) => r0.var,
    };
    if value.smin < lo || value.smax > hi {
        return Err(ErrorKind::ReturnOutOfRange { min: value.smin, max: value.smax, lo, hi, kind: env.kind });
    }
    Ok(())
}
