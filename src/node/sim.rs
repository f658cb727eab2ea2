//! The simulated node: the plan's maps in `sluice-verifier-sim`, filled by the same
//! writes the kernel loader applies, and each program checked by the simulator's verifier
//! before anything runs.

use super::{Object, Plan};
use crate::maps::prefilter::MapWrites;
use sluice_verifier_sim::exec::{self, RunOutcome};
use sluice_verifier_sim::maps::MapSet;
use sluice_verifier_sim::spec::{MapSpec, ProgKind};
use sluice_verifier_sim::verifier::{self, VerifyStats};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why simulation failed.
#[derive(Debug, Error)]
pub enum SimError {
    #[error("verifier-sim rejected program `{name}`: {message}\n--- our listing ---\n{listing}")]
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
}

/// Simulated CPUs (per-CPU maps have this many slots; programs run on CPU 0).
pub const SIM_CPUS: usize = 1;

/// Apply writes to simulated maps, in order.
pub fn apply_writes(maps: &mut MapSet, writes: &[MapWrites]) -> Result<(), SimError> {
    for w in crate::mutate::writes_seam(writes).iter() {
        let err = |message: String| SimError::Map { map: w.map.to_string(), message };
        let map = maps.get_mut(w.map).ok_or_else(|| err("not in the plan".into()))?;
        for (k, v) in w.keys.chunks_exact(w.key_size.max(1)).zip(w.values.chunks_exact(w.value_size.max(1))) {
            map.update(k, v, 0).map_err(|e| err(e.to_string()))?;
        }
        for k in w.deletes.chunks_exact(w.key_size.max(1)) {
            map.delete(k).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(())
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
                message: e.to_string(),
                listing: sluice_asm::text::listing(&obj.program),
            })?;
            stats.insert(obj.name.clone(), s);
        }
        Ok(SimNode { maps, objects: plan.objects.clone(), stats })
    }

    fn object(&self, name: &str) -> Result<&Object, SimError> {
        self.objects.iter().find(|o| o.name == name).ok_or_else(|| SimError::NoProgram(name.to_string()))
    }

    /// Run one packet through a program.
    pub fn run(&mut self, name: &str, packet: &[u8]) -> Result<RunOutcome, SimError> {
        let obj = self.object(name)?.clone();
        let out = match obj.kind {
            ProgKind::Xdp => exec::run_xdp(&obj.program, packet, &mut self.maps),
            _ => exec::run_tc(&obj.program, packet, &mut self.maps),
        };
        out.map_err(|e| SimError::Exec { name: name.to_string(), message: e.to_string() })
    }

    /// Run a program on a full context (ifindexes, FIB answer, ...); `ctx` keeps what the
    /// run changed (the packet, tunnel key).
    pub fn run_with(&mut self, name: &str, ctx: &mut exec::Context) -> Result<RunOutcome, SimError> {
        let obj = self.object(name)?.clone();
        exec::run(&obj.program, obj.kind, ctx, &mut self.maps)
            .map_err(|e| SimError::Exec { name: name.to_string(), message: e.to_string() })
    }

    /// The sum over CPUs of a per-CPU `u64` counter array element.
    pub fn counter(&self, map: &str, index: u32) -> u64 {
        let Some(m) = self.maps.get(map) else { return 0 };
        let Some(per_cpu) = m.lookup_percpu(&index.to_le_bytes()) else { return 0 };
        per_cpu
            .iter()
            .map(|v| v.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))))
            .sum()
    }
}
