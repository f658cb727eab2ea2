//! The kernel side of a node: loading the plan ([`load`]), attaching it ([`wire`]),
//! keeping it in step ([`update`], [`reshape`]), forwarding, the socket layer, and the
//! simulator that runs the same plan ([`sim`]). The plan itself, a pure function of the
//! validated config, is [`crate::plan`]; its items are re-exported here.

pub use crate::plan::endpoints;
pub use crate::plan::*;

pub mod forward;
pub mod load;
pub mod lock;
pub mod node_replay;
pub mod ours;
pub mod overlay_id;
pub mod replay;
pub mod reshape;
pub mod revoke;
pub mod services;
pub mod sim;
pub mod socklayer;
pub mod socklb;
pub mod update;
pub mod wire;

/// The endpoint numbers a loaded node uses, by interface, read from its link pins
/// (`<pin>/links/from_ep_N@ifname`). Empty when nothing is attached through links (a node
/// only loaded, or attached through netlink: then endpoints are numbered in name order).
pub fn pinned_numbering(pin_dir: &std::path::Path) -> std::collections::BTreeMap<String, u16> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(pin_dir.join(wire::LINKS_DIR)) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((program, ifname)) = name.to_str().and_then(wire::parse_link_pin_name) else { continue };
        let number = program.strip_prefix("from_ep_").or_else(|| program.strip_prefix("to_ep_"));
        if let Some(n) = number.and_then(|n| n.parse::<u16>().ok()) {
            out.insert(ifname.to_string(), n);
        }
    }
    out
}

/// `cfg` with the endpoint numbers the node pinned at `pin_dir` already uses.
pub fn with_pinned_numbering(
    mut cfg: crate::model::NodeConfig,
    pin_dir: &std::path::Path,
) -> crate::model::NodeConfig {
    cfg.numbering = pinned_numbering(pin_dir);
    cfg
}
