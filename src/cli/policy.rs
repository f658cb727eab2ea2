//! `sluice policy explain`: the body of the command (see `crate::policy::explain`).

use std::path::Path;
use std::process::ExitCode;

use super::commands::CliError;
use crate::maps::policy::Reason;
use crate::model;
use crate::monitor::{Annotation, Flow, FlowReason};
use crate::policy::explain::{explain, explain_drop, End, Flow as PolicyFlow};

/// A protocol as the command line names it: tcp, udp, sctp, icmp, icmpv6, or a number.
pub(super) fn parse_protocol(text: &str) -> Result<u8, String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" => 58,
        other => other
            .parse()
            .map_err(|_| format!("unknown protocol `{text}`: tcp, udp, sctp, icmp, icmpv6 or a number"))?,
    })
}

/// Explains one flow on the node file at `node`; prints text or one JSON object.
pub(super) fn explain_cmd(
    node: &Path,
    from: &str,
    to: &str,
    proto: u8,
    port: u16,
    json: bool,
) -> Result<ExitCode, CliError> {
    let text = model::limits::read_node_file(node)?;
    let origin = node.display().to_string();
    let cfg = model::parse_str(&text, &origin)?;
    let sources = model::sources::policy_sources(&text, &origin)?;
    let flow = PolicyFlow { from: End::parse(from), to: End::parse(to), proto, dport: port };
    let explanation = explain(&cfg, &sources, &flow).map_err(|e| CliError::Explain(e.to_string()))?;
    if json {
        println!("{}", explanation.to_json());
    } else {
        print!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What annotates a monitored flow.
type Annotator = dyn Fn(&Flow) -> Option<Annotation>;

/// For `sluice monitor --config NODE`: annotates each `deny_policy` drop with the judgement
/// that denied it; without a node file, nothing.
pub(super) fn drop_annotator(node: Option<&Path>) -> Result<Box<Annotator>, CliError> {
    let Some(node) = node else {
        return Ok(Box::new(|_: &Flow| None));
    };
    let text = model::limits::read_node_file(node)?;
    let origin = node.display().to_string();
    let cfg = model::parse_str(&text, &origin)?;
    let sources = model::sources::policy_sources(&text, &origin)?;
    Ok(Box::new(move |flow: &Flow| {
        if flow.reason != FlowReason::Known(Reason::DenyPolicy) {
            return None;
        }
        let direction = match flow.direction {
            crate::monitor::Direction::Ingress => model::Direction::Ingress,
            crate::monitor::Direction::Egress => model::Direction::Egress,
        };
        let addrs = (flow.src_addr?, flow.dst_addr?);
        let judgement = explain_drop(&cfg, &sources, addrs, flow.protocol, flow.dst_port, direction)?;
        Some(Annotation { lines: judgement.lines(&cfg.source), json: judgement.to_json(&cfg.source) })
    }))
}
