//! The plan: which datapath object runs on which hook, with its maps and their initial
//! contents, as a pure function of the validated node config. Nothing here touches the
//! kernel or the file system.
//!
//! A plan is what every later stage consumes: the simulator ([`crate::node::sim`]) and the
//! kernel loader ([`crate::node::load`]) both create the plan's maps, apply its writes in
//! order and run or load its programs, so the two cannot drift apart.

pub mod endpoints;

use crate::codegen::{self, CodegenError};
use crate::maps::prefilter::{self, Capacity, DenySet, Prefix, Tables};
use crate::maps::writes::MapWrites;
use crate::maps::MapDef;
use crate::model::{Cidr, NodeConfig};
use sluice_asm::Program;
use sluice_verifier_sim::spec::ProgKind;
use std::net::IpAddr;

/// One program with the maps it uses and their initial contents.
#[derive(Debug, Clone)]
pub struct Object {
    /// Program name: kernel-visible, and the pin name under `programs/`.
    pub name: String,
    pub kind: ProgKind,
    pub program: Program,
    pub maps: Vec<MapDef>,
    /// Initial map contents, in the order they must be written.
    pub writes: Vec<MapWrites>,
}

/// Everything a node runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub node: String,
    pub objects: Vec<Object>,
}

impl Object {
    /// Add the maps of `defs` this object does not list yet.
    pub fn add_maps(&mut self, defs: impl IntoIterator<Item = MapDef>) {
        for def in defs {
            if !self.maps.iter().any(|m| m.name == def.name) {
                self.maps.push(def);
            }
        }
    }
}

/// The load-balancing maps of a node that balances services: the tc load balancer's and
/// the socket programs' `lb_sock`.
pub fn lb_maps() -> Vec<MapDef> {
    let mut defs = codegen::lb::map_defs();
    defs.extend(codegen::sock_lb::map_defs().into_iter().filter(|d| d.name == crate::maps::names::LB_SOCK));
    defs
}

impl Plan {
    /// The object with this name.
    pub fn object(&self, name: &str) -> Option<&Object> {
        self.objects.iter().find(|o| o.name == name)
    }
}

/// The prefilter prefix of a config CIDR.
pub fn prefix_of(c: &Cidr) -> Prefix {
    match c.addr() {
        IpAddr::V4(a) => Prefix::V4 { addr: u32::from(a), len: c.len() },
        IpAddr::V6(a) => Prefix::V6 { addr: u128::from(a), len: c.len() },
    }
}

/// The config CIDR of a prefilter prefix.
pub fn cidr_of(p: Prefix) -> Cidr {
    let (addr, len) = match p {
        Prefix::V4 { addr, len } => (IpAddr::from(std::net::Ipv4Addr::from(addr)), len),
        Prefix::V6 { addr, len } => (IpAddr::from(std::net::Ipv6Addr::from(addr)), len),
    };
    Cidr::new(addr, len).expect("a Prefix always has its host bits clear")
}

/// The prefilter object for a deny set.
pub fn prefilter_object(set: &DenySet) -> Result<Object, CodegenError> {
    let tables = Tables::build(set);
    let cap = Capacity::for_tables(&tables, set.len());
    Ok(Object {
        name: codegen::prefilter::NAME.to_string(),
        kind: ProgKind::Xdp,
        program: codegen::prefilter::generate()?,
        maps: prefilter::map_defs(cap),
        writes: prefilter::initial_writes(set, &tables, cap),
    })
}

/// Why a node could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("services: {0}")]
    Services(#[from] crate::maps::lb::LbError),
}

/// The name of the standalone load balancer's program (and its pin).
pub const LB_PROGRAM: &str = "lb";

/// The standalone tc load balancer, for the devices of `spec.loadBalancer.devices`.
pub fn lb_object() -> Result<Object, CodegenError> {
    Ok(Object {
        name: LB_PROGRAM.to_string(),
        kind: ProgKind::SchedCls,
        program: codegen::lb::generate()?,
        maps: codegen::lb::map_defs(),
        writes: Vec::new(),
    })
}

/// Whether the node balances services anywhere in tc: in its endpoints' programs (every
/// node with endpoints does, so that adding the first service is a map update) or on
/// load-balancer devices.
pub fn balances_services(cfg: &NodeConfig) -> bool {
    !cfg.endpoints.is_empty()
        || !cfg.load_balancer.devices.is_empty()
        || cfg.load_balancer.socket_cgroup.is_some()
}

/// Each endpoint of `cfg` with its number (the index baked into its programs and keying
/// `ep_config`, `ep_stats` and its policy), in the file's endpoint order (name order). The
/// plan, the hooks and the forwarding maps all number endpoints through this one function.
///
/// Numbers are stable: an endpoint whose interface `cfg.numbering` names (the numbers the
/// loaded node already uses, [`crate::node::pinned_numbering`]) keeps its number; the others get the
/// lowest free numbers from 1, in name order. So adding or removing an endpoint never
/// renumbers another: no program of a running endpoint is swapped and no moment exists in
/// which it reads another endpoint's `ep_config` (a fresh node is numbered in name order).
pub fn endpoint_numbers(cfg: &NodeConfig) -> Vec<(u16, &crate::model::Endpoint)> {
    let mut taken = std::collections::BTreeSet::new();
    let mut kept: Vec<Option<u16>> = cfg
        .endpoints
        .iter()
        .map(|ep| cfg.numbering.get(&ep.interface).copied().filter(|&n| n > 0 && taken.insert(n)))
        .collect();
    let mut next = 1u16;
    for slot in kept.iter_mut().filter(|s| s.is_none()) {
        while taken.contains(&next) {
            next = next.saturating_add(1);
        }
        taken.insert(next);
        *slot = Some(next);
    }
    kept.into_iter().zip(&cfg.endpoints).map(|(n, ep)| (n.unwrap_or(u16::MAX), ep)).collect()
}

/// Plan a node: the prefilter, the two endpoint-policy programs of every endpoint (which
/// also balance services), and the standalone load balancer when devices ask for it. The
/// services' map contents ride on the first object that has the load-balancing maps.
pub fn plan(cfg: &NodeConfig) -> Result<Plan, PlanError> {
    let set = DenySet::new(cfg.prefilter.deny.iter().map(prefix_of));
    let mut objects = vec![prefilter_object(&set)?];
    if !cfg.endpoints.is_empty() {
        let resolved = crate::policy::resolve(cfg)?;
        // Every endpoint program balances services (the first service is then a map
        // update, not a reload); with no service the lookups miss.
        let options = codegen::endpoint::Options { services: true, ..codegen::endpoint::Options::default() };
        // One verified program per direction and a stub per endpoint (see
        // `shared_endpoint_objects`): the verifier's time does not grow with endpoints.
        objects.extend(endpoints::shared_endpoint_objects(&endpoints::policy_plan(cfg, &resolved), options)?);
    }
    if !cfg.load_balancer.devices.is_empty() {
        objects.push(lb_object()?);
    }
    if balances_services(cfg) {
        // The endpoint programs and the standalone load balancer use the maps; with
        // socket-level balancing alone, they ride on the prefilter object.
        let users = if objects.len() > 1 { 1.. } else { 0.. };
        for o in &mut objects[users] {
            o.add_maps(lb_maps());
        }
        let (writes, _) =
            crate::maps::lb::service_writes(&cfg.services, &crate::maps::lb::LbState::default())?;
        if let Some(first) =
            objects.iter_mut().find(|o| o.maps.iter().any(|m| m.name == crate::maps::names::LB_SVC))
        {
            first.writes.extend(writes);
        }
    }
    Ok(Plan { node: cfg.name.clone(), objects })
}

#[cfg(test)]
mod numbering_tests {
    use super::*;

    fn node(names: &[&str]) -> NodeConfig {
        let mut text = String::from(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  endpoints:\n",
        );
        for (i, name) in names.iter().enumerate() {
            text.push_str(&format!(
                "    - name: {name}\n      interface: lxc{name}\n      ipv4: 10.9.0.{}\n      labels: {{app: {name}}}\n",
                i + 1
            ));
        }
        crate::model::parse_str(&text, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn numbers(cfg: &NodeConfig) -> Vec<(u16, String)> {
        endpoint_numbers(cfg).into_iter().map(|(n, ep)| (n, ep.name.clone())).collect()
    }

    #[test]
    fn a_fresh_node_is_numbered_in_name_order() {
        let cfg = node(&["b", "a", "c"]);
        assert_eq!(numbers(&cfg), [(1, "a".into()), (2, "b".into()), (3, "c".into())]);
    }

    #[test]
    fn pinned_numbers_are_kept_and_new_endpoints_take_the_lowest_free_ones() {
        let mut cfg = node(&["a", "b", "c", "d"]);
        // b and d were 1 and 3 on the running node; 2 was freed by a removed endpoint.
        cfg.numbering = [("lxcb".to_string(), 1), ("lxcd".to_string(), 3), ("lxcgone".to_string(), 9)].into();
        assert_eq!(numbers(&cfg), [(2, "a".into()), (1, "b".into()), (4, "c".into()), (3, "d".into())]);
    }

    #[test]
    fn a_number_claimed_twice_is_kept_once() {
        let mut cfg = node(&["a", "b"]);
        cfg.numbering = [("lxca".to_string(), 2), ("lxcb".to_string(), 2)].into();
        assert_eq!(numbers(&cfg), [(2, "a".into()), (1, "b".into())]);
    }
}
