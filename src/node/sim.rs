//! The simulated node: the plan's maps in `sluice-verifier-sim`, filled by the same
//! writes the kernel loader applies, and each program checked by the simulator's verifier
//! before anything runs.

use super::{Object, Plan};
use crate::maps::writes::MapBackend;
use crate::maps::writes::MapWrites;
use sluice_verifier_sim::exec::{self, RunOutcome, RunStats};
use sluice_verifier_sim::maps::{Map, MapSet};
use sluice_verifier_sim::spec::{MapSpec, ProgKind};
use sluice_verifier_sim::verifier::{self, VerifyStats};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why simulation failed.
#[derive(Debug, Error)]
pub enum SimError {
    #[error(
        "verifier-sim rejected program `{name}`: {message}\n--- our program where it stopped ---\n{listing}"
    )]
    Rejected { name: String, message: String, listing: String },
    #[error("map `{map}`: {message}")]
    Map { map: String, message: String },
    #[error("program `{name}`: {message}")]
    Exec { name: String, message: String },
    #[error("no program named `{0}` in the plan")]
    NoProgram(String),
}

/// A node in the simulator.
#[derive(Debug)]
pub struct SimNode {
    pub maps: MapSet,
    pub objects: Vec<Object>,
    /// Verifier statistics per program.
    pub stats: BTreeMap<String, VerifyStats>,
    /// Runs the programs; its program table is the objects' programs in plan order (what
    /// `ep_tail` slots name, see [`super::endpoints::tail_slots`]).
    machine: exec::Machine,
}

/// Simulated CPUs (per-CPU maps have this many slots; programs run on CPU 0).
pub const SIM_CPUS: usize = 1;

/// The simulator's maps as a [`MapBackend`].
struct SimMaps<'a>(&'a mut MapSet);

impl MapBackend for SimMaps<'_> {
    type Error = SimError;
    fn update(
        &mut self,
        map: &'static str,
        keys: &[u8],
        values: &[u8],
        count: usize,
    ) -> Result<(), SimError> {
        let m = sim_map(self.0, map)?;
        let (ks, vs) = (keys.len() / count.max(1), values.len() / count.max(1));
        for (k, v) in keys.chunks_exact(ks.max(1)).zip(values.chunks_exact(vs.max(1))) {
            m.update(k, v, 0).map_err(|e| SimError::Map { map: map.to_string(), message: e.to_string() })?;
        }
        Ok(())
    }
    fn delete(&mut self, map: &'static str, key: &[u8]) -> Result<(), SimError> {
        sim_map(self.0, map)?
            .delete(key)
            .map(|_| ())
            .map_err(|e| SimError::Map { map: map.to_string(), message: e.to_string() })
    }
}

fn sim_map<'m>(maps: &'m mut MapSet, name: &str) -> Result<&'m mut sluice_verifier_sim::maps::Map, SimError> {
    maps.get_mut(name)
        .ok_or_else(|| SimError::Map { map: name.to_string(), message: "not in the plan".into() })
}

/// Apply writes to simulated maps with [`crate::maps::writes::apply_writes`].
pub fn apply_writes(maps: &mut MapSet, writes: &[MapWrites]) -> Result<(), SimError> {
    crate::maps::writes::apply_writes(&mut SimMaps(maps), writes)
}

impl SimNode {
    /// Create the plan's maps, fill them and verify every program.
    pub fn new(plan: &Plan) -> Result<SimNode, SimError> {
        let mut specs: Vec<MapSpec> = Vec::new();
        for obj in &plan.objects {
            for def in &obj.maps {
                if !specs.iter().any(|s| s.name == def.name) {
                    specs.push(def.sim_spec());
                }
            }
        }
        let mut maps = MapSet::new(&specs, SIM_CPUS)
            .map_err(|e| SimError::Map { map: "*".into(), message: e.to_string() })?;
        let mut stats = BTreeMap::new();
        for obj in &plan.objects {
            apply_writes(&mut maps, &obj.writes)?;
            let s = verifier::verify(&obj.program, obj.kind, &specs).map_err(|e| SimError::Rejected {
                name: obj.name.clone(),
                listing: sluice_asm::text::excerpt(&obj.program, e.insn, 6),
                message: e.to_string(),
            })?;
            stats.insert(obj.name.clone(), s);
        }
        for (map, index, obj) in super::endpoints::tail_slots(&plan.objects) {
            let slot = u32::try_from(obj).expect("a plan has fewer than 2^32 objects");
            sim_map(&mut maps, map)?
                .update(&index.to_le_bytes(), &slot.to_le_bytes(), 0)
                .map_err(|e| SimError::Map { map: map.to_string(), message: e.to_string() })?;
        }
        let mut machine = exec::Machine::new();
        machine.set_programs(plan.objects.iter().map(|o| o.program.clone()).collect());
        Ok(SimNode { maps, objects: plan.objects.clone(), stats, machine })
    }

    /// Run `name` on `ctx` as `kind` with the node's program table, seeded as a fresh
    /// machine is (every run sees the same random numbers, as with [`exec::run`]).
    fn exec(
        &mut self,
        name: &str,
        kind: Option<ProgKind>,
        ctx: &mut exec::Context,
    ) -> Result<RunOutcome, SimError> {
        let obj = self
            .objects
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| SimError::NoProgram(name.to_string()))?;
        let kind = kind.unwrap_or(obj.kind);
        self.machine.reseed(exec::DEFAULT_SEED);
        self.machine
            .run(&obj.program, kind, ctx, &mut self.maps)
            .map_err(|e| SimError::Exec { name: name.to_string(), message: e.to_string() })
    }

    fn object(&self, name: &str) -> Result<&Object, SimError> {
        self.objects.iter().find(|o| o.name == name).ok_or_else(|| SimError::NoProgram(name.to_string()))
    }

    /// The kind a program runs as in [`SimNode::run`]: XDP, or tc for every other kind.
    fn packet_kind(obj: &Object) -> ProgKind {
        match obj.kind {
            ProgKind::Xdp => ProgKind::Xdp,
            _ => ProgKind::SchedCls,
        }
    }

    /// Run one packet through a program.
    pub fn run(&mut self, name: &str, packet: &[u8]) -> Result<RunOutcome, SimError> {
        let kind = Self::packet_kind(self.object(name)?);
        self.exec(name, Some(kind), &mut exec::Context::new(packet))
    }

    /// A runner of one program for many packets: [`PacketRunner::run`] gives what
    /// [`SimNode::run`] gives, with the program decoded once and nothing allocated per
    /// packet.
    pub fn packet_runner(&self, name: &str) -> Result<PacketRunner, SimError> {
        let obj = self.object(name)?;
        Ok(PacketRunner {
            name: obj.name.clone(),
            runner: exec::Runner::new(&obj.program, Self::packet_kind(obj))
                .with_programs(self.objects.iter().map(|o| o.program.clone()).collect()),
        })
    }

    /// Run a program on a full context (ifindexes, FIB answer, ...); `ctx` keeps what the
    /// run changed (the packet, tunnel key).
    pub fn run_with(&mut self, name: &str, ctx: &mut exec::Context) -> Result<RunOutcome, SimError> {
        self.exec(name, None, ctx)
    }

    /// The sum over CPUs of a per-CPU `u64` counter array element.
    pub fn counter(&self, map: &str, index: u32) -> u64 {
        let Some(m) = self.maps.get(map) else { return 0 };
        counter_of(m, index)
    }
}

/// [`SimNode::counter`] of a map in hand (allocates nothing).
pub fn counter_of(map: &Map, index: u32) -> u64 {
    let Some(per_cpu) = map.values_percpu(&index.to_le_bytes()) else { return 0 };
    per_cpu.map(counter_value).sum()
}

/// One CPU's copy of a counter: its first 8 bytes, little endian (0 when shorter).
pub fn counter_value(copy: &[u8]) -> u64 {
    copy.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// One program of a [`SimNode`] run packet after packet (see [`SimNode::packet_runner`]).
#[derive(Debug, Clone)]
pub struct PacketRunner {
    name: String,
    runner: exec::Runner,
}

impl PacketRunner {
    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `packet` through the program with `maps` (the node's, or any others laid out
    /// alike): what [`SimNode::run`] does, less the copies of the packet in the outcome;
    /// the packet as the program left it is [`PacketRunner::packet`].
    pub fn run(&mut self, packet: &[u8], maps: &mut MapSet) -> Result<RunStats, SimError> {
        self.runner
            .run(packet, maps)
            .map_err(|e| SimError::Exec { name: self.name.clone(), message: e.to_string() })
    }

    /// The packet as the last run left it.
    pub fn packet(&self) -> &[u8] {
        self.runner.packet()
    }

    /// The context after the last run (its `packet` is empty: see [`PacketRunner::packet`]).
    pub fn context(&self) -> &exec::Context {
        self.runner.context()
    }
}
