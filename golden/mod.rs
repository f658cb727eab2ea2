//! Golden packets: each case is a description, the program it runs through, an input
//! frame built with [`crate::packet::PacketBuilder`], the expected verdict, the expected
//! output bytes and the expected counter effects. The same cases run in the simulator
//! always and through `BPF_PROG_TEST_RUN` when privileged; both must give exactly the
//! expected observation, so simulator and kernel agree (DESIGN invariant 3). They double
//! as probes for `sluice demo`.

pub mod prefilter;
pub mod probes;

use crate::node::load::Loaded;
use crate::node::sim::{SimError, SimNode};
use crate::sys::{SysError, TestRunOpts};
use std::collections::BTreeMap;
use std::fmt;

/// What the output packet must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The input, unchanged.
    Unchanged,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
}

/// One golden case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// The program (plan object name) it runs through.
    pub program: &'static str,
    pub packet: Vec<u8>,
    /// Expected return value.
    pub verdict: u32,
    /// Expected counter increments: (per-CPU `u64` array map, index) → delta. Every other
    /// element of the maps named here must stay unchanged.
    pub counters: BTreeMap<(&'static str, u32), u64>,
    pub output: Output,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub verdict: u32,
    pub packet: Vec<u8>,
    /// Counter deltas of every element of the maps the case names (zero deltas omitted).
    pub counters: BTreeMap<(&'static str, u32), u64>,
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verdict {} counters {:?} packet {} bytes", self.verdict, self.counters, self.packet.len())
    }
}

/// Smallest frame `BPF_PROG_TEST_RUN` accepts for XDP and tc (`ETH_HLEN`).
pub const KERNEL_MIN_FRAME: usize = 14;

fn counter_maps(case: &Case) -> Vec<&'static str> {
    let mut maps: Vec<&'static str> = case.counters.keys().map(|(m, _)| *m).collect();
    maps.dedup();
    maps
}

fn deltas(
    maps: &[&'static str],
    before: &BTreeMap<(&'static str, u32), u64>,
    after: &BTreeMap<(&'static str, u32), u64>,
) -> BTreeMap<(&'static str, u32), u64> {
    let _ = maps;
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.wrapping_sub(before.get(k).copied().unwrap_or(0));
            (d != 0).then_some((*k, d))
        })
        .collect()
}

/// Run a case in the simulator.
pub fn run_sim(node: &mut SimNode, case: &Case) -> Result<Observation, SimError> {
    let maps = counter_maps(case);
    let snapshot = |node: &SimNode| -> BTreeMap<(&'static str, u32), u64> {
        let mut out = BTreeMap::new();
        for m in &maps {
            let n = node.maps.get(m).map_or(0, |m| m.spec().max_entries);
            for i in 0..n {
                out.insert((*m, i), node.counter(m, i));
            }
        }
        out
    };
    let before = snapshot(node);
    let out = node.run(case.program, &case.packet)?;
    let after = snapshot(node);
    Ok(Observation {
        verdict: out.retval as u32,
        packet: out.packet,
        counters: deltas(&maps, &before, &after),
    })
}

fn kernel_counters(
    loaded: &Loaded,
    maps: &[&'static str],
) -> Result<BTreeMap<(&'static str, u32), u64>, SysError> {
    let mut out = BTreeMap::new();
    for m in maps {
        let Some(map) = loaded.maps.get(m) else { continue };
        for i in 0..map.max_entries() {
            let per_cpu = map.lookup_percpu(&i.to_le_bytes())?.unwrap_or_default();
            let sum = per_cpu
                .iter()
                .map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
                .sum();
            out.insert((*m, i), sum);
        }
    }
    Ok(out)
}

/// Run a case through `BPF_PROG_TEST_RUN`. `Ok(None)` when the kernel cannot run this
/// frame (shorter than [`KERNEL_MIN_FRAME`]).
pub fn run_kernel(loaded: &Loaded, case: &Case) -> Result<Option<Observation>, SysError> {
    if case.packet.len() < KERNEL_MIN_FRAME {
        return Ok(None);
    }
    let prog = loaded.programs.get(case.program).ok_or_else(|| SysError::Invalid {
        context: format!("golden case {}", case.name),
        reason: format!("no program `{}` loaded", case.program),
    })?;
    let maps = counter_maps(case);
    let before = kernel_counters(loaded, &maps)?;
    let mut opts = TestRunOpts::packet(&case.packet);
    opts.data_out_cap = case.packet.len() + 256;
    opts.repeat = 1;
    let r = prog.test_run(&opts)?;
    let after = kernel_counters(loaded, &maps)?;
    Ok(Some(Observation { verdict: r.retval, packet: r.data_out, counters: deltas(&maps, &before, &after) }))
}

/// Compare an observation with the case's expectations; the error says what differs.
pub fn check(case: &Case, obs: &Observation) -> Result<(), String> {
    let mut problems = Vec::new();
    if obs.verdict != case.verdict {
        problems.push(format!("verdict {} (expected {})", obs.verdict, case.verdict));
    }
    let want_packet = match &case.output {
        Output::Unchanged => &case.packet,
        Output::Bytes(b) => b,
    };
    if &obs.packet != want_packet {
        problems.push(format!(
            "output packet differs: {} bytes {:02x?} (expected {} bytes {:02x?})",
            obs.packet.len(),
            &obs.packet[..obs.packet.len().min(64)],
            want_packet.len(),
            &want_packet[..want_packet.len().min(64)]
        ));
    }
    if obs.counters != case.counters {
        problems.push(format!("counters {:?} (expected {:?})", obs.counters, case.counters));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("case `{}`: {}", case.name, problems.join("; ")))
    }
}
