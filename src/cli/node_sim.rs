//! `sluice sim NODE --pcap FILE` (whole-node replay, the default): the body of the command (see
//! `crate::node::node_replay`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::commands::CliError;
use crate::model;
use crate::node::node_replay::{replay_node, replay_node_kernel};
use crate::node::sim::SimNode;

/// Replays `pcap` through the whole node at `path`; prints each packet's path (text or JSON
/// lines) unless `quiet`, then the summary.
pub(super) fn sim_node(
    path: &Path,
    pcap: &Path,
    quiet: bool,
    json: bool,
    kernel: bool,
) -> Result<ExitCode, CliError> {
    let cfg = model::load_file(path)?;
    let plan = crate::node::plan(&cfg)?;
    let mut node = SimNode::new(&plan)?;
    let bytes = std::fs::read(pcap).map_err(|source| CliError::Io { path: pcap.to_path_buf(), source })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printing = !quiet;
    let mut simulated = Vec::new();
    let summary = replay_node(&mut node, &cfg, &bytes, |p| {
        let line = if json { p.to_json() } else { p.to_string() };
        // A closed pipe ends the printing, not the replay.
        if printing && writeln!(out, "{line}").is_err() {
            printing = false;
        }
        if kernel {
            simulated.push(p.clone());
        }
    })
    .map_err(|e| CliError::Replay(format!("{}: {e}", pcap.display())))?;
    if !json {
        let _ = writeln!(out, "{summary}");
    }
    let mut code = ExitCode::SUCCESS;
    if kernel {
        let sys = crate::sys::kernel();
        let loaded = crate::node::load::load_plan(&sys, &plan)?;
        let mut differ = 0usize;
        let mut twin = simulated.iter();
        replay_node_kernel(&loaded, &cfg, &bytes, |k| {
            if let Some(s) = twin.next().filter(|s| *s != k) {
                differ += 1;
                let _ = writeln!(out, "packet {} differs:\n  simulator {s}\n  kernel    {k}", s.index);
            }
        })
        .map_err(|e| CliError::Replay(format!("{}: {e}", pcap.display())))?;
        let _ = writeln!(out, "kernel (BPF_PROG_TEST_RUN): {differ} of {} packets differ", simulated.len());
        if differ > 0 {
            code = ExitCode::from(1);
        }
    }
    let _ = out.flush();
    Ok(code)
}
