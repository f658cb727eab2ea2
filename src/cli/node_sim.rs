//! `sluice sim NODE --pcap FILE --whole-node`: the body of the command (see
//! `crate::node::node_replay`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::commands::CliError;
use crate::model;
use crate::node::node_replay::replay_node;
use crate::node::sim::SimNode;

/// Replays `pcap` through the whole node at `path`; prints each packet's path (text or JSON
/// lines) unless `quiet`, then the summary.
pub(super) fn sim_node(path: &Path, pcap: &Path, quiet: bool, json: bool) -> Result<ExitCode, CliError> {
    let cfg = model::load_file(path)?;
    let plan = crate::node::plan(&cfg)?;
    let mut node = SimNode::new(&plan)?;
    let bytes = std::fs::read(pcap).map_err(|source| CliError::Io { path: pcap.to_path_buf(), source })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printing = !quiet;
    let summary = replay_node(&mut node, &cfg, &bytes, |p| {
        let line = if json { p.to_json() } else { p.to_string() };
        // A closed pipe ends the printing, not the replay.
        if printing && writeln!(out, "{line}").is_err() {
            printing = false;
        }
    })
    .map_err(|e| CliError::Replay(format!("{}: {e}", pcap.display())))?;
    if !json {
        let _ = writeln!(out, "{summary}");
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
