//! Policy routing for the L7 redirect: packets the datapath handed to the proxy
//! ([`MARK_TO_PROXY`] in `skb->mark`) are delivered locally, whatever their destination
//! address (`bpf_sk_assign` needs local delivery; the original destination is not a local
//! address). Cilium's layout: rule `fwmark 0x200/0xf00 lookup 2004` at priority 9, table 2004
//! holding `local 0.0.0.0/0 dev lo`.
//!
//! Contract: [`install`] adds the rule and the route in the calling thread's network namespace
//! and is idempotent (an existing rule or route is left as it is); [`remove`] deletes them and
//! ignores what is already gone. Both run `ip` (iproute2).

use std::process::Command;

use crate::codegen::to_proxy::{MARK_MASK, MARK_TO_PROXY};

/// Cilium's `RouteTableToProxy` and `RulePriorityToProxyIngress`.
pub const TABLE_TO_PROXY: u32 = 2004;
pub const PRIORITY_TO_PROXY: u32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("running `ip {args}`: {source}")]
    Spawn { args: String, source: std::io::Error },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

fn rule_args() -> Vec<String> {
    vec![
        "fwmark".into(),
        format!("{MARK_TO_PROXY:#x}/{MARK_MASK:#x}"),
        "lookup".into(),
        TABLE_TO_PROXY.to_string(),
        "priority".into(),
        PRIORITY_TO_PROXY.to_string(),
    ]
}

fn route_args() -> Vec<String> {
    ["local", "0.0.0.0/0", "dev", "lo", "table"]
        .iter()
        .map(|s| s.to_string())
        .chain([TABLE_TO_PROXY.to_string()])
        .collect()
}

fn ip(args: &[String]) -> Result<(bool, String), RouteError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| RouteError::Spawn { args: args.join(" "), source })?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_owned()))
}

/// Add the to-proxy rule and route (idempotent).
pub fn install() -> Result<(), RouteError> {
    let shown = Command::new("ip")
        .args(["-4", "rule", "show", "priority", &PRIORITY_TO_PROXY.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("lookup {TABLE_TO_PROXY}")))
        .unwrap_or(false);
    if !shown {
        let args: Vec<String> =
            ["-4", "rule", "add"].iter().map(|s| s.to_string()).chain(rule_args()).collect();
        let (ok, stderr) = ip(&args)?;
        if !ok {
            return Err(RouteError::Failed { args: args.join(" "), stderr });
        }
    }
    let args: Vec<String> =
        ["-4", "route", "replace"].iter().map(|s| s.to_string()).chain(route_args()).collect();
    let (ok, stderr) = ip(&args)?;
    if !ok {
        return Err(RouteError::Failed { args: args.join(" "), stderr });
    }
    Ok(())
}

/// Delete the to-proxy rule and route; what is already gone is not an error.
pub fn remove() -> Result<(), RouteError> {
    let rule: Vec<String> = ["-4", "rule", "del"].iter().map(|s| s.to_string()).chain(rule_args()).collect();
    let route: Vec<String> =
        ["-4", "route", "del"].iter().map(|s| s.to_string()).chain(route_args()).collect();
    for args in [rule, route] {
        ip(&args)?;
    }
    Ok(())
}
