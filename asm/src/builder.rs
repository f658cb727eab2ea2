//! A builder that reads like assembly: instructions are pushed in order, jumps name
//! symbolic labels, maps are referred to by name, template constants by parameter name.
//!
//! Labels are ids: [`Builder::new_label`] hands out a [`Label`] (cranelift's `get_label`)
//! and [`Builder::place`] puts it at the next instruction; the string is only the name the
//! listing shows, so two emitters (or one emitter used twice) can never collide. Listing
//! names are made unique at build (`vlan`, `vlan.2`). Jumps take a [`Target`], which code
//! outside this crate can only make from a [`Label`]: a jump to a label *name* does not
//! compile. Names resolved by string exist for exactly two users: the text assembler
//! ([`crate::text::parse_program`], through crate-private methods) and, behind the
//! `named-labels` feature that only test builds enable, hand-written test programs
//! (`b.label("out")`, `b.ja("out")`); a name defined twice is an error.
//!
//! [`Builder::build`] resolves in five steps, each a function below with its post-invariant
//! stated in its comment: [`thread_jumps`] (jumps to an unconditional `goto` follow it to
//! its final target), [`drop_noop_gotos`] (a `goto` to the next instruction goes),
//! [`drop_unreachable`] (what nothing reaches goes: the kernel rejects it), [`place`] (slot
//! positions of what is kept) and [`patch`] (offsets written, names carried over).
//! Threading only rewrites jumps (never calls: a call target starts a subprogram), and a
//! threaded target whose distance would not fit the jump's offset field falls back to the
//! nearest one along the chain that does. [`Builder::build_verbatim`] runs only `place` and
//! `patch`, keeping every instruction where it was pushed.
//!
//! Parameters ([`Builder::param`]) name the immediate of one instruction as a template
//! constant (cilium/ebpf's `WithReference`): [`Program::bind_params`] rewrites exactly the
//! instructions so marked, never an instruction whose immediate merely has the same value.

use crate::insn::{AluOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};
use crate::program::Program;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    #[error("parameter `{name}` marks instruction {index}, which has no immediate operand")]
    NotAParameter { name: String, index: usize },
}

/// A label handed out by [`Builder::new_label`]: an id, unique within its builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(u32);

/// A jump target: a label id or (the text assembler's, and test programs' with the
/// `named-labels` feature) a name in the builder's one namespace of named labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(TargetKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetKind {
    Id(Label),
    Name(String),
}

impl Target {
    /// The named label `name` (crate-private: the text assembler's labels).
    pub(crate) fn named(name: String) -> Target {
        Target(TargetKind::Name(name))
    }
}

impl From<Label> for Target {
    fn from(l: Label) -> Target {
        Target(TargetKind::Id(l))
    }
}
impl From<&Label> for Target {
    fn from(l: &Label) -> Target {
        Target(TargetKind::Id(*l))
    }
}
#[cfg(feature = "named-labels")]
impl From<&str> for Target {
    fn from(s: &str) -> Target {
        Target::named(s.to_string())
    }
}
#[cfg(feature = "named-labels")]
impl From<String> for Target {
    fn from(s: String) -> Target {
        Target::named(s)
    }
}
#[cfg(feature = "named-labels")]
impl From<&String> for Target {
    fn from(s: &String) -> Target {
        Target::named(s.clone())
    }
}

/// One pushed instruction, its label target and its parameter name, if any.
#[derive(Debug, Clone)]
struct Item {
    insn: Insn,
    target: Option<Label>,
    param: Option<String>,
}

/// A label's name and where it was first defined.
#[derive(Debug, Clone)]
struct LabelInfo {
    name: String,
    /// Defined by name (global namespace) rather than handed out as an id.
    named: bool,
    at: Option<usize>,
}

/// The program builder.
#[derive(Debug, Default)]
pub struct Builder {
    items: Vec<Item>,
    labels: Vec<LabelInfo>,
    by_name: HashMap<String, Label>,
    /// Label definitions in the order they were made: (label, instruction index).
    placed: Vec<(Label, usize)>,
    comments: BTreeMap<usize, Vec<String>>,
    stack: Vec<crate::program::StackSlot>,
    /// The first definition error seen (reported by `build`, as the builder chains).
    error: Option<BuildError>,
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

    /// A new label, not yet placed; `name` is only what the listing shows.
    pub fn new_label(&mut self, name: &str) -> Label {
        let id = Label(u32::try_from(self.labels.len()).expect("fewer than 2^32 labels"));
        self.labels.push(LabelInfo { name: name.to_string(), named: false, at: None });
        id
    }

    /// Place `label` at the next instruction.
    pub fn place(&mut self, label: Label) -> &mut Self {
        self.define(label);
        self
    }

    /// Define the named label `name` at the next instruction: the text assembler's labels.
    pub(crate) fn place_named(&mut self, name: String) -> &mut Self {
        let id = self.intern(name);
        self.define(id);
        self
    }

    /// Define the named label `name` at the next instruction (hand-written test programs
    /// only: generators use [`Builder::new_label`] and [`Builder::place`]).
    #[cfg(feature = "named-labels")]
    pub fn label(&mut self, name: impl Into<String>) -> &mut Self {
        self.place_named(name.into())
    }

    /// Mark the immediate of the instruction just pushed as the template parameter `name`:
    /// [`Program::bind_params`] sets it per instance.
    pub fn param(&mut self, name: &str) -> &mut Self {
        let index = self.items.len().wrapping_sub(1);
        match self.items.last_mut() {
            Some(item) if crate::program::has_param_slot(&item.insn) => item.param = Some(name.to_string()),
            _ => {
                self.error.get_or_insert(BuildError::NotAParameter { name: name.to_string(), index });
            }
        }
        self
    }

    fn intern(&mut self, name: String) -> Label {
        if let Some(id) = self.by_name.get(&name) {
            return *id;
        }
        let id = Label(u32::try_from(self.labels.len()).expect("fewer than 2^32 labels"));
        self.labels.push(LabelInfo { name: name.clone(), named: true, at: None });
        self.by_name.insert(name, id);
        id
    }

    fn target(&mut self, t: Target) -> Label {
        match t.0 {
            TargetKind::Id(l) => l,
            TargetKind::Name(n) => self.intern(n),
        }
    }

    fn define(&mut self, id: Label) {
        let here = self.items.len();
        let info = &mut self.labels[id.0 as usize];
        match info.at {
            Some(first) => {
                let e = BuildError::DuplicateLabel { label: info.name.clone(), first, second: here };
                self.error.get_or_insert(e);
            }
            None => {
                info.at = Some(here);
                self.placed.push((id, here));
            }
        }
    }

    /// Name `size` bytes of the stack at `r10 + off`: the listing names every access to
    /// them (`*(u32 *)(r10 -48) = r1 ; tuple.saddr`). Regions may nest; the smallest that
    /// holds an access names it.
    pub fn stack_slot(&mut self, name: impl Into<String>, off: i16, size: u16) -> &mut Self {
        self.stack.push(crate::program::StackSlot { off, size, name: name.into() });
        self
    }

    /// A comment printed in the listing before the next instruction.
    pub fn comment(&mut self, text: impl Into<String>) -> &mut Self {
        self.comments.entry(self.items.len()).or_default().push(text.into());
        self
    }

    /// Push an instruction as it is.
    pub fn emit(&mut self, insn: Insn) -> &mut Self {
        self.items.push(Item { insn, target: None, param: None });
        self
    }

    /// Push a branch (jump, `may_goto`, local call or `LD_IMM64` of a function) whose
    /// offset is resolved to `target` when the program is built; building fails with
    /// [`BuildError::NotAJump`] if `insn` has no offset to resolve.
    pub fn emit_to(&mut self, insn: Insn, target: impl Into<Target>) -> &mut Self {
        let target = self.target(target.into());
        self.items.push(Item { insn, target: Some(target), param: None });
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
        label: impl Into<Target>,
    ) -> &mut Self {
        self.emit_to(Insn::Jmp { wide: true, cond, dst, src: src.into(), off: 0 }, label)
    }
    /// `if wdst COND src goto label` (32-bit compare).
    pub fn jmp32(
        &mut self,
        cond: JmpCond,
        dst: Reg,
        src: impl Into<Src>,
        label: impl Into<Target>,
    ) -> &mut Self {
        self.emit_to(Insn::Jmp { wide: false, cond, dst, src: src.into(), off: 0 }, label)
    }
    /// `goto label`.
    pub fn ja(&mut self, label: impl Into<Target>) -> &mut Self {
        self.emit_to(Insn::Ja { long: false, off: 0 }, label)
    }
    /// `call helper#id`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.emit(Insn::Call(CallTarget::Helper(helper)))
    }
    /// `call label`: a bpf-to-bpf call.
    pub fn call_local(&mut self, label: impl Into<Target>) -> &mut Self {
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
    /// gotos to the next instruction and unreachable code.
    pub fn build(&self) -> Result<Program, BuildError> {
        self.resolve(true)
    }

    /// Resolve labels and produce the program with every pushed instruction kept as it is
    /// (no jump threading, no goto removal), as an assembler reading text must.
    pub fn build_verbatim(&self) -> Result<Program, BuildError> {
        self.resolve(false)
    }

    fn resolve(&self, optimize: bool) -> Result<Program, BuildError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let label_at = self.check_targets()?;
        // A jump pushed with a numeric offset has a target the builder cannot see: moving or
        // dropping instructions would silently retarget it, so such programs stay verbatim.
        let raw_branches = self.items.iter().any(|i| i.target.is_none() && i.insn.branch_offset().is_some());
        let optimize = optimize && !raw_branches;
        let chains = thread_jumps(&self.items, &label_at, optimize);
        let mut keep = vec![true; self.items.len()];
        let mut unreachable = vec![false; self.items.len()];
        if optimize {
            drop_noop_gotos(&self.items, &label_at, &chains, &mut keep);
            drop_unreachable(&self.items, &label_at, &chains, &mut keep, &mut unreachable);
        }
        let layout = place(&self.items, &keep);
        self.patch(&label_at, &chains, &keep, &unreachable, &layout)
    }

    /// Every label's position (by id); every jump's target is defined.
    fn check_targets(&self) -> Result<Vec<usize>, BuildError> {
        for (index, item) in self.items.iter().enumerate() {
            if let Some(t) = item.target {
                let info = &self.labels[t.0 as usize];
                if info.at.is_none() {
                    return Err(BuildError::UnknownLabel { label: info.name.clone(), index });
                }
            }
        }
        // A label placed after the last instruction points at the end (`items.len()`).
        Ok(self.labels.iter().map(|l| l.at.unwrap_or(usize::MAX)).collect())
    }

    /// Listing names: global labels keep theirs; an id label keeps its name unless another
    /// label already shows it, then gets the first free `name.N` (N from 2).
    fn display_names(&self) -> Vec<String> {
        let mut taken: HashSet<String> =
            self.labels.iter().filter(|l| l.named).map(|l| l.name.clone()).collect();
        let mut names = Vec::with_capacity(self.labels.len());
        for l in &self.labels {
            if l.named {
                names.push(l.name.clone());
                continue;
            }
            let mut name = l.name.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{}.{n}", l.name);
                n += 1;
            }
            taken.insert(name.clone());
            names.push(name);
        }
        names
    }

    /// Step 5, patch: each kept instruction with its branch offset resolved to the most
    /// threaded target that fits; labels, comments and parameters moved to the kept
    /// positions. Post: every branch offset lands on the kept instruction its label (or
    /// its chain's end) names.
    fn patch(
        &self,
        label_at: &[usize],
        chains: &[Vec<Label>],
        keep: &[bool],
        unreachable: &[bool],
        layout: &Layout,
    ) -> Result<Program, BuildError> {
        let names = self.display_names();
        let Layout { new_index, slot_of } = layout;
        let at = |l: &Label| label_at[l.0 as usize];
        let mut insns = Vec::with_capacity(slot_of.len());
        let mut params = BTreeMap::new();
        for (i, item) in self.items.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            if let Some(p) = &item.param {
                params.insert(new_index[i], p.clone());
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
            let distance_to = |l: &Label| slot_of[new_index[at(l)]] as i64 - slot_of[me] as i64 - 1;
            let resolved = chain.iter().rev().enumerate().find_map(|(back, l)| {
                if back > 0 && unreachable.get(at(l)).copied().unwrap_or(false) {
                    return None;
                }
                let off = i32::try_from(distance_to(l)).ok()?;
                item.insn.with_offset(off)
            });
            match resolved {
                Some(insn) => insns.push(insn),
                None => {
                    return Err(BuildError::JumpOutOfRange {
                        label: names[chain[0].0 as usize].clone(),
                        index: i,
                        distance: distance_to(&chain[0]),
                    })
                }
            }
        }
        let mut labels: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (id, at) in &self.placed {
            labels.entry(new_index[*at]).or_default().push(names[id.0 as usize].clone());
        }
        let mut comments: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (at, texts) in &self.comments {
            comments.entry(new_index[*at]).or_default().extend(texts.iter().cloned());
        }
        Ok(Program { insns, labels, comments, params, stack: self.stack.clone() })
    }
}

/// Step 1, thread jumps: each item's chain is its written target, then the targets of the
/// unconditional gotos it leads through (bounded at 17; a cycle stops). Post: `chain[0]` is
/// the written target; each later element is the target of the `goto` at the previous
/// one's position; no element repeats. Calls and `LD_IMM64` of a function are never
/// threaded (their target starts a subprogram); without `optimize` chains have one element.
fn thread_jumps(items: &[Item], label_at: &[usize], optimize: bool) -> Vec<Vec<Label>> {
    items
        .iter()
        .map(|item| {
            let Some(t) = item.target else { return Vec::new() };
            let mut chain = vec![t];
            let threads = matches!(item.insn, Insn::Jmp { .. } | Insn::Ja { .. } | Insn::MayGoto { .. });
            while optimize && threads && chain.len() <= 16 {
                let at = label_at[chain[chain.len() - 1].0 as usize];
                match items.get(at) {
                    Some(Item { insn: Insn::Ja { .. }, target: Some(next), .. }) if !chain.contains(next) => {
                        chain.push(*next)
                    }
                    _ => break,
                }
            }
            chain
        })
        .collect()
}

/// Step 2, drop no-op gotos. Post: an item is dropped only if it is a `goto` some step of
/// whose chain is the next instruction; a jump that lands on it lands, after placement, on
/// the next kept instruction, where the goto led.
fn drop_noop_gotos(items: &[Item], label_at: &[usize], chains: &[Vec<Label>], keep: &mut [bool]) {
    for (i, item) in items.iter().enumerate() {
        if matches!(item.insn, Insn::Ja { .. }) && chains[i].iter().any(|l| label_at[l.0 as usize] == i + 1) {
            keep[i] = false;
        }
    }
}

/// Step 3, drop unreachable code, walking from the first instruction along fallthroughs
/// and chain ends. Post: every kept item is reachable; `unreachable[i]` marks what this
/// step dropped, so patching never falls back to a chain step that lands there.
fn drop_unreachable(
    items: &[Item],
    label_at: &[usize],
    chains: &[Vec<Label>],
    keep: &mut [bool],
    unreachable: &mut [bool],
) {
    let landing = |keep: &[bool], at: usize| (at..keep.len()).find(|&k| keep[k]);
    let mut reached = vec![false; items.len()];
    let mut work: Vec<usize> = landing(keep, 0).into_iter().collect();
    while let Some(i) = work.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        if items[i].insn.falls_through() {
            work.extend(landing(keep, i + 1));
        }
        if let Some(l) = chains[i].last() {
            work.extend(landing(keep, label_at[l.0 as usize]));
        }
    }
    for i in 0..items.len() {
        if keep[i] && !reached[i] {
            keep[i] = false;
            unreachable[i] = true;
        }
    }
}

/// Kept positions and slots.
struct Layout {
    /// For each pushed index (and the end), the kept index at or after it.
    new_index: Vec<usize>,
    /// For each kept index (and the end), its first slot.
    slot_of: Vec<usize>,
}

/// Step 4, place. Post: `new_index` is monotone and maps a dropped item to the next kept
/// one; `slot_of` is strictly increasing by each kept instruction's width.
fn place(items: &[Item], keep: &[bool]) -> Layout {
    let mut new_index = Vec::with_capacity(items.len() + 1);
    let mut n = 0;
    for k in keep {
        new_index.push(n);
        if *k {
            n += 1;
        }
    }
    new_index.push(n);
    let mut slot_of = Vec::with_capacity(n + 1);
    let mut slot = 0usize;
    for (i, item) in items.iter().enumerate() {
        if keep[i] {
            slot_of.push(slot);
            slot += item.insn.slots();
        }
    }
    slot_of.push(slot);
    Layout { new_index, slot_of }
}
