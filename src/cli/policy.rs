//! `sluice policy explain`: the body of the command (see `crate::policy::explain`).

use std::path::Path;
use std::process::ExitCode;

use super::commands::CliError;
use crate::model;
use crate::policy::explain::{explain, End, Flow};

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
    let flow = Flow { from: End::parse(from), to: End::parse(to), proto, dport: port };
    let explanation = explain(&cfg, &sources, &flow).map_err(|e| CliError::Explain(e.to_string()))?;
    if json {
        println!("{}", explanation.to_json());
    } else {
        print!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}
