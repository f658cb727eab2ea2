//! The plan: which datapath object runs on which hook, with its maps and their initial
//! contents, as a pure function of the validated node config.
//!
//! A plan is what every later stage consumes: the simulator ([`sim`]) and the kernel
//! loader ([`load`]) both create the plan's maps, apply its writes in order and run or load
//! its programs, so the two cannot drift apart.

pub mod endpoints;
pub mod forward;
pub mod load;
pub mod lock;
pub mod ours;
pub mod replay;
pub mod reshape;
pub mod services;
pub mod sim;
pub mod socklb;
pub mod update;
pub mod wire;

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
    defs.extend(codegen::sock_lb::map_defs().into_iter().filter(|d| d.name == "lb_sock"));
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
/// `ep_config`, `ep_stats` and its policy): from 1 in the file's endpoint order (name
/// order). The plan, the hooks and the forwarding maps all number endpoints through this
/// one function.
pub fn endpoint_numbers(cfg: &NodeConfig) -> impl Iterator<Item = (u16, &crate::model::Endpoint)> + '_ {
    cfg.endpoints.iter().enumerate().map(|(i, ep)| (u16::try_from(i + 1).unwrap_or(u16::MAX), ep))
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
        objects.extend(endpoints::endpoint_objects_with(&endpoints::policy_plan(cfg, &resolved), options)?);
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
        if let Some(first) = objects.iter_mut().find(|o| o.maps.iter().any(|m| m.name == "lb_svc")) {
            first.writes.extend(writes);
        }
    }
    Ok(Plan { node: cfg.name.clone(), objects })
}
