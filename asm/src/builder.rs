//! A builder that reads like assembly: instructions are pushed in order, jumps name
//! symbolic labels, maps are referred to by name.
//!
//! Labels are resolved in [`Builder::build`], in one pass over slot positions (cranelift's
//! `MachBuffer` shape): a missing or duplicate label, or a jump whose distance does not fit
//! its offset field, is an error naming the label. Before resolution, two cleanups run:
//! jumps to an unconditional `goto` are threaded to its final target, a `goto` to the
//! very next instruction is removed, and so is every instruction nothing reaches (a `goto`
//! that threading bypassed, a verdict block no path uses).
//! Threading only rewrites jumps (never calls: a call
//! target starts a subprogram), and a threaded target whose distance would not fit the
//! jump's offset field falls back to the nearest one along the chain that does.
//! [`Builder::build_verbatim`] resolves labels without either cleanup, keeping every
//! instruction where it was pushed.

use crate::insn::{AluOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};
use crate::program::Program;
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Why a builder's program could not be finished.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("jump to unknown label `{label}` at instruction {index}")]
    UnknownLabel { label: String, index: usize },
    #[error("label `{label}` defined twice (instructions {first} and {second})")]
    DuplicateLabel { label: String, first: usize, second: usize },
    #[error(
        "jump to `{label}` at instruction {index} spans {distance} slots, more than its offset field holds"
    )]
    JumpOutOfRange { label: String, index: usize, distance: i64 },
    #[error("instruction {index} is not a jump but was given a label target")]
    NotAJump { index: usize },
}

/// One pushed instruction and its symbolic target, if any.
#[derive(Debug, Clone)]
struct Item {
    insn: Insn,
    target: Option<String>,
}

/// The program builder.
#[derive(Debug, Default)]
pub struct Builder {
    items: Vec<Item>,
    labels: Vec<(String, usize)>,
    comments: BTreeMap<usize, Vec<String>>,
    fresh: usize,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Number of instructions pushed so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A label name not used before, starting with `prefix`.
    pub fn fresh_label(&mut self, prefix: &str) -> String {
        self.fresh += 1;
        format!("{prefix}_{}", self.fresh)
    }

    /// Define `name` at the next instruction.
    pub fn label(&mut self, name: impl Into<String>) -> &mut Self {
        self.labels.push((name.into(), self.items.len()));
        self
    }

    /// A comment printed in the listing before the next instruction.
    pub fn comment(&mut self, text: impl Into<String>) -> &mut Self {
        self.comments.entry(self.items.len()).or_default().push(text.into());
        self
    }

    /// Push an instruction as it is.
    pub fn emit(&mut self, insn: Insn) -> &mut Self {
        self.items.push(Item { insn, target: None });
        self
    }

    /// Push a branch (jump, `may_goto`, local call or `LD_IMM64` of a function) whose
    /// offset is resolved to `target` when the program is built; building fails with
    /// [`BuildError::NotAJump`] if `insn` has no offset to resolve.
    pub fn emit_to(&mut self, insn: Insn, target: impl Into<String>) -> &mut Self {
        self.items.push(Item { insn, target: Some(target.into()) });
        self
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: impl Into<Src>) -> &mut Self {
        self.emit(Insn::mov64(dst, src))
    }
    /// `wdst = src` (32-bit, zero-extending).
    pub fn mov32(&mut self, dst: Reg, src: impl Into<Src>) -> &mut Self {
        self.emit(Insn::mov32(dst, src))
    }
    /// `dst OP= src` (64-bit).
    pub fn alu(&mut self, op: AluOp, dst: Reg, src: impl Into<Src>) -> &mut Self {
        self.emit(Insn::alu64(op, dst, src))
    }
    /// `wdst OP= src` (32-bit).
    pub fn alu32(&mut self, op: AluOp, dst: Reg, src: impl Into<Src>) -> &mut Self {
        self.emit(Insn::alu32(op, dst, src))
    }
    /// `dst += src` (64-bit).
    pub fn add(&mut self, dst: Reg, src: impl Into<Src>) -> &mut Self {
        self.alu(AluOp::Add, dst, src)
    }
    /// `dst = beN dst` (network to host order on little-endian hosts).
    pub fn be(&mut self, bits: u8, dst: Reg) -> &mut Self {
        self.emit(Insn::Endian { kind: Endian::ToBe, bits, dst })
    }
    /// `dst = *(size *)(base + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, base: Reg, off: i16) -> &mut Self {
        self.emit(Insn::load(size, dst, base, off))
    }
    /// `*(size *)(base + off) = src`.
    pub fn store(&mut self, size: Size, base: Reg, off: i16, src: impl Into<Src>) -> &mut Self {
        self.emit(Insn::store(size, base, off, src))
    }
    /// `dst = value` (`LD_IMM64`).
    pub fn ld_imm64(&mut self, dst: Reg, value: u64) -> &mut Self {
        self.emit(Insn::ld_imm64(dst, value))
    }
    /// `dst = map[name]`: the map's address, bound at load time.
    pub fn ld_map(&mut self, dst: Reg, map: impl Into<String>) -> &mut Self {
        self.emit(Insn::LdImm64 { dst, imm: Imm64::MapRef(map.into()) })
    }
    /// `dst = &map[name].value + off` (array maps with one element).
    pub fn ld_map_value(&mut self, dst: Reg, map: impl Into<String>, off: u32) -> &mut Self {
        self.emit(Insn::LdImm64 { dst, imm: Imm64::MapValueRef { map: map.into(), off } })
    }
    /// `if dst COND src goto label` (64-bit compare).
    pub fn jmp(
        &mut self,
        cond: JmpCond,
        dst: Reg,
        src: impl Into<Src>,
        label: impl Into<String>,
    ) -> &mut Self {
        self.emit_to(Insn::Jmp { wide: true, cond, dst, src: src.into(), off: 0 }, label)
    }
    /// `if wdst COND src goto label` (32-bit compare).
    pub fn jmp32(
        &mut self,
        cond: JmpCond,
        dst: Reg,
        src: impl Into<Src>,
        label: impl Into<String>,
    ) -> &mut Self {
        self.emit_to(Insn::Jmp { wide: false, cond, dst, src: src.into(), off: 0 }, label)
    }
    /// `goto label`.
    pub fn ja(&mut self, label: impl Into<String>) -> &mut Self {
        self.emit_to(Insn::Ja { long: false, off: 0 }, label)
    }
    /// `call helper#id`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.emit(Insn::Call(CallTarget::Helper(helper)))
    }
    /// `call label`: a bpf-to-bpf call.
    pub fn call_local(&mut self, label: impl Into<String>) -> &mut Self {
        self.emit_to(Insn::Call(CallTarget::Local(0)), label)
    }
    /// `exit`.
    pub fn exit(&mut self) -> &mut Self {
        self.emit(Insn::Exit)
    }
    /// `r0 = value; exit`.
    pub fn ret(&mut self, value: i32) -> &mut Self {
        self.mov(Reg::R0, value).exit()
    }

    /// Resolve labels and produce the program, threading jumps through gotos and removing
    /// gotos to the next instruction.
    pub fn build(&self) -> Result<Program, BuildError> {
        self.resolve(true)
    }

    /// Resolve labels and produce the program with every pushed instruction kept as it is
    /// (no jump threading, no goto removal), as an assembler reading text must.
    pub fn build_verbatim(&self) -> Result<Program, BuildError> {
        self.resolve(false)
    }

    fn resolve(&self, optimize: bool) -> Result<Program, BuildError> {
        // A jump pushed with a numeric offset has a target the builder cannot see: moving or
        // dropping instructions would silently retarget it, so such programs stay verbatim.
        let raw_branches = self.items.iter().any(|i| i.target.is_none() && i.insn.branch_offset().is_some());
        let optimize = optimize && !raw_branches;
        let mut label_at: HashMap<&str, usize> = HashMap::new();
        for (name, at) in &self.labels {
            if let Some(first) = label_at.insert(name, *at) {
                return Err(BuildError::DuplicateLabel { label: name.clone(), first, second: *at });
            }
        }
        for (index, item) in self.items.iter().enumerate() {
            if let Some(t) = &item.target {
                if !label_at.contains_key(t.as_str()) {
                    return Err(BuildError::UnknownLabel { label: t.clone(), index });
                }
            }
        }
        // Each target's threading chain: the label itself, then the targets of the
        // unconditional gotos it leads through (bounded; a cycle stops). Calls are never
        // threaded: their target is where a subprogram starts.
        let chains: Vec<Vec<&str>> = self
            .items
            .iter()
            .map(|item| {
                let Some(t) = &item.target else { return Vec::new() };
                let mut chain = vec![t.as_str()];
                let threads = matches!(item.insn, Insn::Jmp { .. } | Insn::Ja { .. } | Insn::MayGoto { .. });
                while optimize && threads && chain.len() <= 16 {
                    let at = label_at[chain[chain.len() - 1]];
                    match self.items.get(at) {
                        Some(Item { insn: Insn::Ja { .. }, target: Some(next) })
                            if !chain.contains(&next.as_str()) =>
                        {
                            chain.push(next)
                        }
                        _ => break,
                    }
                }
                chain
            })
            .collect();
        // Drop `goto` to the next instruction; remap label and comment positions. A jump
        // that lands on a dropped goto lands where that goto led: the next kept instruction.
        let mut keep = vec![true; self.items.len()];
        if optimize {
            for (i, item) in self.items.iter().enumerate() {
                // Any step of the chain at the next instruction makes the goto a no-op.
                if matches!(item.insn, Insn::Ja { .. }) && chains[i].iter().any(|l| label_at[l] == i + 1) {
                    keep[i] = false;
                }
            }
        }
        // Drop what nothing reaches (the kernel rejects unreachable instructions), walking
        // from the first instruction along fallthroughs and resolved jump targets; a label on
        // a dropped no-op goto lands on the next kept instruction, as the goto did. A
        // threaded jump lands at the end of its chain; resolution checks it never falls back
        // to an instruction dropped here.
        let mut unreachable = vec![false; self.items.len()];
        if optimize {
            let landing = |at: usize| (at..keep.len()).find(|&k| keep[k]);
            let mut reached = vec![false; self.items.len()];
            let mut work: Vec<usize> = landing(0).into_iter().collect();
            while let Some(i) = work.pop() {
                if std::mem::replace(&mut reached[i], true) {
                    continue;
                }
                if self.items[i].insn.falls_through() {
                    work.extend(landing(i + 1));
                }
                if let Some(l) = chains[i].last() {
                    work.extend(landing(label_at[l]));
                }
            }
            for i in 0..self.items.len() {
                if keep[i] && !reached[i] {
                    keep[i] = false;
                    unreachable[i] = true;
                }
            }
        }
        let mut new_index = Vec::with_capacity(self.items.len() + 1);
        let mut n = 0;
        for k in &keep {
            new_index.push(n);
            if *k {
                n += 1;
            }
        }
        new_index.push(n);
        let mut slot_of = Vec::with_capacity(n + 1);
        let mut slot = 0usize;
        for (i, item) in self.items.iter().enumerate() {
            if keep[i] {
                slot_of.push(slot);
                slot += item.insn.slots();
            }
        }
        slot_of.push(slot);

        let mut insns = Vec::with_capacity(n);
        for (i, item) in self.items.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let chain = &chains[i];
            if chain.is_empty() {
                insns.push(item.insn.clone());
                continue;
            }
            if item.insn.branch_offset().is_none() {
                return Err(BuildError::NotAJump { index: i });
            }
            let me = new_index[i];
            let distance_to =
                |label: &str| slot_of[new_index[label_at[label]]] as i64 - slot_of[me] as i64 - 1;
            // The most threaded target that fits the offset field; the label as written
            // decides the error when none does.
            let resolved = chain.iter().rev().enumerate().find_map(|(back, label)| {
                if back > 0 && unreachable.get(label_at[label]).copied().unwrap_or(false) {
                    return None;
                }
                let off = i32::try_from(distance_to(label)).ok()?;
                item.insn.with_offset(off)
            });
            match resolved {
                Some(insn) => insns.push(insn),
                None => {
                    return Err(BuildError::JumpOutOfRange {
                        label: chain[0].to_string(),
                        index: i,
                        distance: distance_to(chain[0]),
                    })
                }
            }
        }
        let mut labels: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (name, at) in &self.labels {
            labels.entry(new_index[*at]).or_default().push(name.clone());
        }
        let mut comments: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (at, texts) in &self.comments {
            comments.entry(new_index[*at]).or_default().extend(texts.iter().cloned());
        }
        Ok(Program { insns, labels, comments })
    }
}
