//! The abstract machine state: eleven typed registers and a 512-byte stack, plus the test
//! that one state covers another (state pruning).

use super::precision::{Checkpoint, Step};
use super::scalar::Scalar;
use crate::spec::MapSpec;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// Bytes of stack a program may use.
pub const STACK_SIZE: usize = 512;

/// The type of value a register holds, named as the kernel's verifier log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Never written (or clobbered by a call).
    NotInit,
    Scalar,
    /// Pointer to the program's context.
    Ctx,
    /// Pointer into the packet.
    Packet,
    /// Pointer into the packet metadata area.
    PacketMeta,
    /// Pointer one past the last packet byte.
    PacketEnd,
    /// Pointer into a map value.
    MapValue,
    /// What a map lookup returns: a map value pointer or NULL.
    MapValueOrNull,
    /// Pointer into the stack frame.
    Stack,
    /// A map itself, as helpers take it.
    ConstMap,
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::NotInit => "uninit",
            ValueType::Scalar => "scalar",
            ValueType::Ctx => "ctx",
            ValueType::Packet => "pkt",
            ValueType::PacketMeta => "pkt_meta",
            ValueType::PacketEnd => "pkt_end",
            ValueType::MapValue => "map_value",
            ValueType::MapValueOrNull => "map_value_or_null",
            ValueType::Stack => "fp",
            ValueType::ConstMap => "map_ptr",
        })
    }
}

/// A register's type; map-related types carry the map's index in the map table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    NotInit,
    Scalar,
    Ctx,
    Packet,
    PacketMeta,
    PacketEnd,
    MapValue(usize),
    MapValueOrNull(usize),
    Stack,
    ConstMap(usize),
}

impl Kind {
    pub fn ty(self) -> ValueType {
        match self {
            Kind::NotInit => ValueType::NotInit,
            Kind::Scalar => ValueType::Scalar,
            Kind::Ctx => ValueType::Ctx,
            Kind::Packet => ValueType::Packet,
            Kind::PacketMeta => ValueType::PacketMeta,
            Kind::PacketEnd => ValueType::PacketEnd,
            Kind::MapValue(_) => ValueType::MapValue,
            Kind::MapValueOrNull(_) => ValueType::MapValueOrNull,
            Kind::Stack => ValueType::Stack,
            Kind::ConstMap(_) => ValueType::ConstMap,
        }
    }
}

/// One register (`struct bpf_reg_state`). For a scalar, `var` is its value. For a pointer,
/// the offset from the object's start is `off` (fixed) plus `var` (variable part); `id`
/// links copies (packet pointers sharing a range, lookups sharing a null check, scalars
/// sharing bounds) and `range` is the number of packet bytes proven readable from
/// `pkt + var` (packet pointers only). `precise` marks a scalar whose bounds some decision
/// after a kept state depended on ([`super::precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegState {
    pub kind: Kind,
    pub off: i32,
    pub var: Scalar,
    pub id: u32,
    pub range: u32,
    pub precise: bool,
}

impl RegState {
    pub const NOT_INIT: RegState =
        RegState { kind: Kind::NotInit, off: 0, var: Scalar::UNKNOWN, id: 0, range: 0, precise: false };

    pub fn scalar(var: Scalar) -> RegState {
        RegState { kind: Kind::Scalar, var, ..RegState::NOT_INIT }
    }

    pub fn constant(v: u64) -> RegState {
        RegState::scalar(Scalar::constant(v))
    }

    pub fn unknown() -> RegState {
        RegState::scalar(Scalar::UNKNOWN)
    }

    /// A pointer of `kind` at fixed offset `off`, no variable part.
    pub fn pointer(kind: Kind, off: i32) -> RegState {
        RegState { kind, off, var: Scalar::constant(0), ..RegState::NOT_INIT }
    }

    pub fn ty(&self) -> ValueType {
        self.kind.ty()
    }

    pub fn is_pointer(&self) -> bool {
        !matches!(self.kind, Kind::NotInit | Kind::Scalar)
    }

    /// Whether this is the scalar 0 (NULL).
    pub fn is_null(&self) -> bool {
        self.kind == Kind::Scalar && self.var.const_value() == Some(0)
    }

    /// Whether this is a packet pointer straight from the context (`reg_is_init_pkt_pointer`).
    pub fn is_init_packet(&self) -> bool {
        self.kind == Kind::Packet && self.off == 0 && self.var.const_value() == Some(0)
    }

    /// The kernel-log rendering of the register, with map names.
    pub fn describe(&self, maps: &[MapSpec]) -> String {
        let name = |m: usize| maps.get(m).map_or("?", |s| s.name.as_str());
        let var =
            if self.var.const_value() == Some(0) { String::new() } else { format!(",var={}", self.var) };
        match self.kind {
            Kind::NotInit => "uninit".to_string(),
            Kind::Scalar => self.var.to_string(),
            Kind::Ctx => format!("ctx(off={}{var})", self.off),
            Kind::Packet => format!("pkt(id={},off={},r={}{var})", self.id, self.off, self.range),
            Kind::PacketMeta => {
                format!("pkt_meta(id={},off={},r={}{var})", self.id, self.off, self.range)
            }
            Kind::PacketEnd => "pkt_end".to_string(),
            Kind::MapValue(m) => format!("map_value(map={},off={}{var})", name(m), self.off),
            Kind::MapValueOrNull(m) => format!("map_value_or_null(id={},map={})", self.id, name(m)),
            Kind::Stack => format!("fp{}{var}", self.off),
            Kind::ConstMap(m) => format!("map_ptr(map={})", name(m)),
        }
    }
}

/// What one stack byte holds (`STACK_INVALID`, `STACK_MISC`, `STACK_ZERO`, `STACK_SPILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byte {
    Invalid,
    Misc,
    Zero,
    /// Part of an 8-byte aligned slot holding a spilled register.
    Spill,
}

/// The stack frame. Byte `i` is at `r10 - 512 + i`; slot `i / 8` holds spills.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub bytes: [Byte; STACK_SIZE],
    /// Spilled registers by slot, sorted by slot.
    spills: Vec<(usize, RegState)>,
}

impl Default for Stack {
    fn default() -> Stack {
        Stack { bytes: [Byte::Invalid; STACK_SIZE], spills: Vec::new() }
    }
}

impl Stack {
    /// The byte index of frame offset `off` (`-512..0`), if in the frame.
    pub fn index(off: i64) -> Option<usize> {
        let i = off.checked_add(STACK_SIZE as i64)?;
        usize::try_from(i).ok().filter(|i| *i < STACK_SIZE)
    }

    pub fn spill(&self, slot: usize) -> Option<&RegState> {
        self.spills.iter().find(|(s, _)| *s == slot).map(|(_, r)| r)
    }

    pub fn spills_mut(&mut self) -> impl Iterator<Item = &mut RegState> {
        self.spills.iter_mut().map(|(_, r)| r)
    }

    /// The spilled registers with their slots.
    pub fn spills(&self) -> impl Iterator<Item = (usize, &RegState)> {
        self.spills.iter().map(|(s, r)| (*s, r))
    }

    pub fn spills_mut_indexed(&mut self) -> impl Iterator<Item = (usize, &mut RegState)> {
        self.spills.iter_mut().map(|(s, r)| (*s, r))
    }

    /// Drop the spill in `slot`; its bytes that remain become `Misc`.
    fn forget_spill(&mut self, slot: usize) {
        if let Some(pos) = self.spills.iter().position(|(s, _)| *s == slot) {
            self.spills.remove(pos);
            for b in &mut self.bytes[slot * 8..slot * 8 + 8] {
                if *b == Byte::Spill {
                    *b = Byte::Misc;
                }
            }
        }
    }

    /// Mark `len` bytes from index `start` as `byte` (not `Spill`).
    pub fn write(&mut self, start: usize, len: usize, byte: Byte) {
        if len == 0 {
            return;
        }
        let end = (start + len).min(STACK_SIZE);
        for slot in start / 8..end.div_ceil(8) {
            self.forget_spill(slot);
        }
        for b in &mut self.bytes[start..end] {
            *b = byte;
        }
    }

    /// Bytes that may or may not have been overwritten: written ones become `Misc`,
    /// never-written ones stay invalid.
    pub fn clobber(&mut self, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let end = (start + len).min(STACK_SIZE);
        for slot in start / 8..end.div_ceil(8) {
            self.forget_spill(slot);
        }
        for b in &mut self.bytes[start..end] {
            if *b == Byte::Zero {
                *b = Byte::Misc;
            }
        }
    }

    /// Spill `reg` into the 8-byte slot starting at index `start` (a multiple of 8).
    pub fn put_spill(&mut self, start: usize, reg: RegState) {
        let slot = start / 8;
        self.forget_spill(slot);
        for b in &mut self.bytes[slot * 8..slot * 8 + 8] {
            *b = Byte::Spill;
        }
        let pos = self.spills.partition_point(|(s, _)| *s < slot);
        self.spills.insert(pos, (slot, reg));
    }
}

/// The branch decisions that led to a state, newest first; shared between states.
#[derive(Debug)]
pub struct PathNode {
    pub insn: usize,
    pub taken: bool,
    pub prev: Option<Rc<PathNode>>,
}

impl Drop for PathNode {
    // Iterative, so that dropping a long path cannot overflow the call stack.
    fn drop(&mut self) {
        let mut next = self.prev.take();
        while let Some(rc) = next {
            match Rc::try_unwrap(rc) {
                Ok(mut node) => next = node.prev.take(),
                Err(_) => break,
            }
        }
    }
}

/// One abstract state of the program.
#[derive(Debug, Clone)]
pub struct State {
    pub regs: [RegState; 11],
    pub stack: Stack,
    /// Branch decisions so far, for error reports.
    pub path: Option<Rc<PathNode>>,
    /// The last state kept on this path, and the instructions run since (its own first).
    pub parent: Option<Rc<RefCell<Checkpoint>>>,
    pub history: Vec<Step>,
}

impl State {
    /// Entry state: `r1` = ctx, `r10` = frame pointer, all else uninitialized.
    pub fn entry() -> State {
        let mut regs = [RegState::NOT_INIT; 11];
        regs[1] = RegState::pointer(Kind::Ctx, 0);
        regs[10] = RegState::pointer(Kind::Stack, 0);
        State { regs, stack: Stack::default(), path: None, parent: None, history: Vec::new() }
    }

    /// A copy to keep at a prune point: registers, stack and path, without the links.
    pub fn snapshot(&self) -> State {
        State {
            regs: self.regs,
            stack: self.stack.clone(),
            path: self.path.clone(),
            parent: None,
            history: Vec::new(),
        }
    }

    /// Record a branch decision.
    pub fn push_path(&mut self, insn: usize, taken: bool) {
        let prev = self.path.take();
        self.path = Some(Rc::new(PathNode { insn, taken, prev }));
    }

    /// The branch decisions, oldest first.
    pub fn path(&self) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        let mut node = self.path.as_deref();
        while let Some(n) = node {
            out.push((n.insn, n.taken));
            node = n.prev.as_deref();
        }
        out.reverse();
        out
    }

    /// Every register and spilled register, for id-wide updates.
    pub fn all_regs_mut(&mut self) -> impl Iterator<Item = &mut RegState> {
        self.regs.iter_mut().chain(self.stack.spills_mut())
    }

    /// The initialized registers and spills, as the kernel log prints a state.
    pub fn describe(&self, maps: &[MapSpec]) -> String {
        let mut parts: Vec<String> = self
            .regs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind != Kind::NotInit)
            .map(|(i, r)| format!("R{i}={}", r.describe(maps)))
            .collect();
        for (slot, r) in &self.stack.spills {
            parts.push(format!("fp{}={}", *slot as i64 * 8 - STACK_SIZE as i64, r.describe(maps)));
        }
        parts.join(" ")
    }
}

/// A consistent renaming of ids between an explored state and the current one.
#[derive(Default)]
struct IdMap {
    pairs: Vec<(u32, u32)>,
}

impl IdMap {
    /// `check_ids`: both zero, or a pairing consistent with every earlier one.
    fn check(&mut self, old: u32, cur: u32) -> bool {
        if (old == 0) != (cur == 0) {
            return false;
        }
        if old == 0 {
            return true;
        }
        for (o, c) in &self.pairs {
            if *o == old {
                return *c == cur;
            }
            if *c == cur {
                return false;
            }
        }
        self.pairs.push((old, cur));
        true
    }
}

/// Whether every behaviour possible from `cur` was possible from `old` (`states_equal`):
/// if `old` was explored without error, so would `cur` be. `live` is the set of registers
/// some path onward may read.
pub fn covers(old: &State, cur: &State, live: u16) -> bool {
    let mut ids = IdMap::default();
    for r in 0..11 {
        if live & (1 << r) != 0 && !reg_covers(&old.regs[r], &cur.regs[r], &mut ids) {
            return false;
        }
    }
    stack_covers(&old.stack, &cur.stack, &mut ids)
}

fn reg_covers(old: &RegState, cur: &RegState, ids: &mut IdMap) -> bool {
    if old.kind == Kind::NotInit {
        return true;
    }
    if old.kind != cur.kind {
        return false;
    }
    match old.kind {
        // No decision after the kept state depended on its value: any scalar will do.
        Kind::Scalar if !old.precise => true,
        Kind::Scalar => {
            old.var.contains(&cur.var) && (old.id == 0 || (cur.id != 0 && ids.check(old.id, cur.id)))
        }
        Kind::Packet | Kind::PacketMeta => {
            old.off == cur.off
                && old.var.contains(&cur.var)
                && cur.range >= old.range
                && ids.check(old.id, cur.id)
        }
        Kind::MapValueOrNull(_) => old.off == cur.off && ids.check(old.id, cur.id),
        _ => old.off == cur.off && old.var.contains(&cur.var),
    }
}

fn stack_covers(old: &Stack, cur: &Stack, ids: &mut IdMap) -> bool {
    for i in 0..STACK_SIZE {
        let ok = match (old.bytes[i], cur.bytes[i]) {
            (Byte::Invalid, _) => true,
            (Byte::Misc, Byte::Misc | Byte::Zero) | (Byte::Zero, Byte::Zero) => true,
            (Byte::Misc, Byte::Spill) => cur.spill(i / 8).is_some_and(|r| r.kind == Kind::Scalar),
            (Byte::Spill, Byte::Spill) => {
                // Compare each slot once, at its first byte.
                i % 8 != 0
                    || match (old.spill(i / 8), cur.spill(i / 8)) {
                        (Some(o), Some(c)) => reg_covers(o, c, ids),
                        _ => false,
                    }
            }
            (Byte::Spill, Byte::Misc | Byte::Zero) => old.spill(i / 8).is_some_and(|r| {
                r.kind == Kind::Scalar && (!r.precise || (r.id == 0 && r.var == Scalar::UNKNOWN))
            }),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}
