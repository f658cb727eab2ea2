//! A finished program: instructions with resolved jump offsets, plus the names that make
//! its listing readable (labels, comments) and the symbolic map references still to be
//! bound to file descriptors.

use crate::encode::{encode, EncodeError};
use crate::insn::{Imm64, Insn, Src};
use std::collections::BTreeMap;
use thiserror::Error;

/// A program as the builder produced it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    pub(crate) insns: Vec<Insn>,
    /// Labels defined at an instruction index.
    pub(crate) labels: BTreeMap<usize, Vec<String>>,
    /// Comments printed before an instruction index.
    pub(crate) comments: BTreeMap<usize, Vec<String>>,
    /// Template parameters: the instruction index whose immediate is the named parameter.
    pub(crate) params: BTreeMap<usize, String>,
    /// Named stack regions (the program's frame layout), for the listing.
    pub(crate) stack: Vec<StackSlot>,
}

/// A named region of the stack: `size` bytes at `r10 + off` (`off` negative).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackSlot {
    pub off: i16,
    pub size: u16,
    pub name: String,
}

impl StackSlot {
    fn contains(&self, off: i64, len: i64) -> bool {
        i64::from(self.off) <= off && off + len <= i64::from(self.off) + i64::from(self.size)
    }
}

/// Whether `insn` has an immediate a parameter can name: an ALU, jump or store immediate,
/// or a plain `LD_IMM64` constant.
pub(crate) fn has_param_slot(insn: &Insn) -> bool {
    matches!(
        insn,
        Insn::Alu { src: Src::Imm(_), .. }
            | Insn::Jmp { src: Src::Imm(_), .. }
            | Insn::Store { src: Src::Imm(_), .. }
            | Insn::LdImm64 { imm: Imm64::Const(_), .. }
    )
}

/// Why template parameters could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindError {
    #[error("instruction {index}: no value for parameter `{name}`")]
    Unbound { index: usize, name: String },
    #[error("instruction {index}: parameter `{name}` = {value} does not fit a 32-bit immediate")]
    OutOfRange { index: usize, name: String, value: i64 },
}

/// Why map references could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelocateError {
    #[error("instruction {index}: no map named `{name}`")]
    UnknownMap { index: usize, name: String },
}

impl Program {
    /// A program of exactly these instructions, without names.
    pub fn from_insns(insns: Vec<Insn>) -> Program {
        Program { insns, ..Program::default() }
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Number of instructions (an `LD_IMM64` counts once).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether there are no instructions.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Number of 8-byte slots (what the kernel counts).
    pub fn slots(&self) -> usize {
        self.insns.iter().map(Insn::slots).sum()
    }

    /// Labels by instruction index.
    pub fn labels(&self) -> &BTreeMap<usize, Vec<String>> {
        &self.labels
    }

    /// Comments by instruction index.
    pub fn comments(&self) -> &BTreeMap<usize, Vec<String>> {
        &self.comments
    }

    /// The named stack regions, in declaration order.
    pub fn stack(&self) -> &[StackSlot] {
        &self.stack
    }

    /// The name of the smallest declared region holding `len` bytes at `r10 + off`: the
    /// region's name, `+k` when the access starts `k` bytes into it.
    pub fn stack_name(&self, off: i64, len: i64) -> Option<String> {
        let slot = self.stack.iter().filter(|s| s.contains(off, len)).min_by_key(|s| s.size)?;
        let k = off - i64::from(slot.off);
        Some(if k == 0 { slot.name.clone() } else { format!("{}+{k}", slot.name) })
    }

    /// Template parameters by instruction index.
    pub fn params(&self) -> &BTreeMap<usize, String> {
        &self.params
    }

    /// A copy with each parameter-marked immediate set to the value `value` gives for its
    /// name (a 32-bit immediate must fit `i32`; an `LD_IMM64` constant takes the value's
    /// bits). Only marked instructions change: an immediate that merely equals the
    /// template's placeholder stays as it is.
    pub fn bind_params(&self, value: impl Fn(&str) -> Option<i64>) -> Result<Program, BindError> {
        let mut out = self.clone();
        for (&index, name) in &self.params {
            let v = value(name).ok_or_else(|| BindError::Unbound { index, name: name.clone() })?;
            let narrow = || {
                i32::try_from(v).map_err(|_| BindError::OutOfRange { index, name: name.clone(), value: v })
            };
            match &mut out.insns[index] {
                Insn::Alu { src: Src::Imm(imm), .. }
                | Insn::Jmp { src: Src::Imm(imm), .. }
                | Insn::Store { src: Src::Imm(imm), .. } => *imm = narrow()?,
                Insn::LdImm64 { imm: Imm64::Const(c), .. } => *c = v as u64,
                _ => unreachable!("the builder marks only instructions with a parameter slot"),
            }
        }
        Ok(out)
    }

    /// The slot at which each instruction starts, plus one final entry for the end.
    pub fn slot_starts(&self) -> Vec<usize> {
        let mut starts = Vec::with_capacity(self.insns.len() + 1);
        let mut slot = 0;
        for insn in &self.insns {
            starts.push(slot);
            slot += insn.slots();
        }
        starts.push(slot);
        starts
    }

    /// The names of the maps the program refers to symbolically, sorted and unique.
    pub fn map_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .insns
            .iter()
            .filter_map(|i| match i {
                Insn::LdImm64 { imm: Imm64::MapRef(n), .. } => Some(n.clone()),
                Insn::LdImm64 { imm: Imm64::MapValueRef { map, .. }, .. } => Some(map.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Symbolic map references by slot, for ELF relocations: (slot, map name).
    pub fn map_relocations(&self) -> Vec<(usize, String)> {
        let starts = self.slot_starts();
        self.insns
            .iter()
            .enumerate()
            .filter_map(|(i, insn)| match insn {
                Insn::LdImm64 { imm: Imm64::MapRef(n), .. } => Some((starts[i], n.clone())),
                Insn::LdImm64 { imm: Imm64::MapValueRef { map, .. }, .. } => Some((starts[i], map.clone())),
                _ => None,
            })
            .collect()
    }

    /// A copy with every symbolic map reference bound to the file descriptor `resolve`
    /// gives for its name.
    pub fn relocate(&self, resolve: impl Fn(&str) -> Option<i32>) -> Result<Program, RelocateError> {
        let mut out = self.clone();
        for (index, insn) in out.insns.iter_mut().enumerate() {
            if let Insn::LdImm64 { imm, .. } = insn {
                let bound = match imm {
                    Imm64::MapRef(name) => Imm64::MapFd(
                        resolve(name)
                            .ok_or_else(|| RelocateError::UnknownMap { index, name: name.clone() })?,
                    ),
                    Imm64::MapValueRef { map, off } => Imm64::MapValue {
                        fd: resolve(map)
                            .ok_or_else(|| RelocateError::UnknownMap { index, name: map.clone() })?,
                        off: *off,
                    },
                    _ => continue,
                };
                *imm = bound;
            }
        }
        Ok(out)
    }

    /// A copy with every instruction passed through `f` (which must keep each instruction's
    /// width and branch offsets), labels and comments kept.
    pub fn map_insns(&self, f: impl FnMut(&Insn) -> Insn) -> Program {
        Program {
            insns: self.insns.iter().map(f).collect(),
            labels: self.labels.clone(),
            comments: self.comments.clone(),
            params: self.params.clone(),
            stack: self.stack.clone(),
        }
    }

    /// The program's bytes. Fails while symbolic map references remain.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode(&self.insns)
    }

    /// The bytes with each symbolic map reference encoded as `BPF_PSEUDO_MAP_FD` with
    /// immediate 0, as an ELF object carries them before relocation.
    pub fn encode_unrelocated(&self) -> Result<Vec<u8>, EncodeError> {
        let zeroed = self.relocate(|_| Some(0)).expect("every name resolves to 0");
        encode(&zeroed.insns)
    }
}
