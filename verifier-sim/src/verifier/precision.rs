//! Precision tracking (`mark_chain_precision`, `backtrack_insn`, `propagate_precision`).
//!
//! A scalar's exact bounds only matter where a decision depends on them: pointer
//! arithmetic, a helper's memory size, a branch decided by bounds (or a side found
//! impossible), the return value. When that happens the verifier walks the path back and
//! marks, in every state kept at a prune point on the way, the registers and spilled
//! scalars the value was computed from as *precise*. Pruning compares precise scalars by
//! their bounds and accepts any scalar for the others.
//!
//! Why that is sound here: the program has no cycles and the walk is depth first with a
//! LIFO worklist, so when a state is compared with a kept one, everything reachable from
//! the kept one has been explored and every decision there has already marked what it
//! needed. When a state is pruned, the kept state's precise registers become precise
//! along the pruned state's path too, since its continuation relies on them.

use super::state::{Kind, State};
use sluice_asm::{AluOp, AtomicOp, Insn, Reg, Src};
use std::cell::RefCell;
use std::rc::Rc;

/// A state kept at a prune point, linked to the one before it on its path.
#[derive(Debug)]
pub struct Checkpoint {
    pub state: State,
    pub parent: Option<Rc<RefCell<Checkpoint>>>,
    /// The instructions from the parent checkpoint (its own instruction included) up to
    /// this one's.
    pub history: Vec<Step>,
}

impl Drop for Checkpoint {
    // Iterative, so that dropping a long chain cannot overflow the call stack.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(rc) = next {
            match Rc::try_unwrap(rc) {
                Ok(cell) => next = cell.into_inner().parent.take(),
                Err(_) => break,
            }
        }
    }
}

/// One interpreted instruction, with the stack slot it spilled to or filled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub insn: usize,
    pub spill_slot: Option<u8>,
}

fn bit(r: Reg) -> u16 {
    1 << r.num()
}

/// The precise registers (among `live`) and precise spilled slots of a kept state.
pub fn precise_set(state: &State, live: u16) -> (u16, u64) {
    let mut regs = 0u16;
    for (i, r) in state.regs.iter().enumerate() {
        if live & (1 << i) != 0 && r.kind == Kind::Scalar && r.precise {
            regs |= 1 << i;
        }
    }
    let mut slots = 0u64;
    for (slot, r) in state.stack.spills() {
        if r.kind == Kind::Scalar && r.precise {
            slots |= 1 << slot;
        }
    }
    (regs, slots)
}

/// Mark `regs` and spilled `slots`, as they are before the instruction `st` is about to
/// run, precise in every kept state they were computed through.
pub fn mark_chain(insns: &[Insn], st: &State, mut regs: u16, mut slots: u64) {
    for step in st.history.iter().rev() {
        backtrack(insns, step, &mut regs, &mut slots);
    }
    let mut next = st.parent.clone();
    while let Some(cp) = next {
        if regs == 0 && slots == 0 {
            return;
        }
        let mut cp = cp.borrow_mut();
        if !mark_in(&mut cp.state, &mut regs, &mut slots) {
            // Already precise here: the states before were marked when it became so.
            return;
        }
        for step in cp.history.iter().rev() {
            backtrack(insns, step, &mut regs, &mut slots);
        }
        next = cp.parent.clone();
    }
}

/// Mark the set in a kept state (scalars only, with every scalar linked to them by id);
/// whether anything was newly marked.
fn mark_in(state: &mut State, regs: &mut u16, slots: &mut u64) -> bool {
    let mut ids = Vec::new();
    for (i, r) in state.regs.iter().enumerate() {
        if *regs & (1 << i) != 0 {
            if r.kind == Kind::Scalar {
                ids.push(r.id);
            } else {
                *regs &= !(1 << i);
            }
        }
    }
    for (slot, r) in state.stack.spills() {
        if *slots & (1 << slot) != 0 {
            if r.kind == Kind::Scalar {
                ids.push(r.id);
            } else {
                *slots &= !(1 << slot);
            }
        }
    }
    ids.retain(|id| *id != 0);
    let linked = |r: &super::state::RegState| r.kind == Kind::Scalar && r.id != 0 && ids.contains(&r.id);
    for (i, r) in state.regs.iter().enumerate() {
        if linked(r) {
            *regs |= 1 << i;
        }
    }
    for (slot, r) in state.stack.spills() {
        if linked(r) {
            *slots |= 1 << slot;
        }
    }
    let mut newly = false;
    for (i, r) in state.regs.iter_mut().enumerate() {
        if *regs & (1 << i) != 0 && !r.precise {
            r.precise = true;
            newly = true;
        }
    }
    for (slot, r) in state.stack.spills_mut_indexed() {
        if *slots & (1 << slot) != 0 && !r.precise {
            r.precise = true;
            newly = true;
        }
    }
    newly
}

/// What before `step` the set after it was computed from.
fn backtrack(insns: &[Insn], step: &Step, regs: &mut u16, slots: &mut u64) {
    let Some(insn) = insns.get(step.insn) else { return };
    let has = |regs: u16, r: Reg| regs & bit(r) != 0;
    // A guard that fails falls through to `_`: the instruction did not define anything
    // in the set.
    match insn {
        Insn::Alu { op: AluOp::Mov, dst, src, .. } if has(*regs, *dst) => {
            *regs &= !bit(*dst);
            if let Src::Reg(s) = src {
                *regs |= bit(*s);
            }
        }
        Insn::Alu { op, dst, src: Src::Reg(s), .. } if *op != AluOp::Mov && has(*regs, *dst) => {
            *regs |= bit(*s);
        }
        Insn::MovSx { dst, src, .. } if has(*regs, *dst) => {
            *regs &= !bit(*dst);
            *regs |= bit(*src);
        }
        Insn::LdImm64 { dst, .. } => *regs &= !bit(*dst),
        Insn::Load { dst, .. } if has(*regs, *dst) => {
            *regs &= !bit(*dst);
            if let Some(slot) = step.spill_slot {
                *slots |= 1 << slot;
            }
        }
        Insn::Store { src, .. } => {
            if let Some(slot) = step.spill_slot {
                if *slots & (1 << slot) != 0 {
                    *slots &= !(1 << slot);
                    if let Src::Reg(r) = src {
                        *regs |= bit(*r);
                    }
                }
            }
        }
        Insn::Atomic { op, src, .. } => match op {
            AtomicOp::CmpXchg => *regs &= !bit(Reg::R0),
            AtomicOp::Add { fetch: false }
            | AtomicOp::Or { fetch: false }
            | AtomicOp::And { fetch: false }
            | AtomicOp::Xor { fetch: false } => {}
            _ => *regs &= !bit(*src),
        },
        // Each operand's bounds after the comparison depend on the other's.
        Insn::Jmp { dst, src: Src::Reg(s), .. } if has(*regs, *dst) || has(*regs, *s) => {
            *regs |= bit(*dst) | bit(*s);
        }
        Insn::Call(_) => *regs &= !0b11_1111,
        _ => {}
    }
}
