//! Planning endpoint policy: from resolved endpoints, ipcache entries and policy rules to
//! the programs and the writes that fill their shared maps.

use super::Object;
use crate::codegen::endpoint::{Direction, Options, Templates};
use crate::codegen::CodegenError;
use crate::maps::names;
use crate::maps::policy::{self, ep_config, ep_config_value, ipc_v6_key, Capacity, IpcacheV4, PolicyRule};
use crate::maps::writes::MapWrites;
use sluice_verifier_sim::spec::ProgKind;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One endpoint as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Index into `ep_config` and `ep_stats`; baked into the endpoint's programs.
    pub index: u16,
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub identity: u32,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
}

/// Everything endpoint policy needs, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    pub endpoints: Vec<EndpointSpec>,
    /// IPv4 ipcache: (network, prefix length, identity).
    pub ipcache_v4: Vec<(u32, u8, u32)>,
    /// IPv6 ipcache: (network, prefix length, identity).
    pub ipcache_v6: Vec<(u128, u8, u32)>,
    pub rules: Vec<PolicyRule>,
}

impl PolicyPlan {
    /// Capacities with room to grow.
    pub fn capacity(&self, ipc: &IpcacheV4) -> Capacity {
        self.capacity_for(ipc, &policy::policy_table(&self.rules))
    }

    /// [`PolicyPlan::capacity`] with the policy table already built (it is the costly part).
    fn capacity_for(&self, ipc: &IpcacheV4, table: &policy::PolicyTable) -> Capacity {
        let room = |n: usize, floor: u32| u32::try_from(n * 2).unwrap_or(u32::MAX).max(floor);
        let max_index = self.endpoints.iter().map(|e| u32::from(e.index) + 1).max().unwrap_or(0);
        Capacity {
            endpoints: room(max_index as usize, 64),
            ipc_v4_l2: room(ipc.l2.len(), 256),
            ipc_v4_l3: room(ipc.l3.len(), 1024),
            ipc_v6: room(self.ipcache_v6.len(), 16384),
            policy: room(self.rules.len(), 65536),
            pol_bits: policy::pol_bits_for(table) + 1,
            ct: 262_144,
        }
    }

    /// The initial contents of the endpoint-policy maps, in order.
    pub fn writes(&self, ipc: &IpcacheV4) -> Vec<MapWrites> {
        self.writes_and_capacity(ipc).0
    }

    /// [`PolicyPlan::writes`] and [`PolicyPlan::capacity`], building the policy table once.
    pub fn writes_and_capacity(&self, ipc: &IpcacheV4) -> (Vec<MapWrites>, Capacity) {
        let table = policy::policy_table(&self.rules);
        let capacity = self.capacity_for(ipc, &table);
        let mut out = ipc.writes();
        out.push(self.ipc_v6_writes());
        out.push(policy::policy_writes(&self.rules));
        let bits = capacity.pol_bits;
        out.push(policy::pol_half_writes(&table, bits, 0).expect("pol_bits leaves room for twice the slots"));
        out.push(policy::pol_meta_writes(bits, 0));
        out.push(self.ep_config_writes());
        (out, capacity)
    }

    /// The `ipc_v6` trie's contents.
    pub fn ipc_v6_writes(&self) -> MapWrites {
        let mut v6 = MapWrites { map: names::IPC_V6, key_size: 20, value_size: 4, ..MapWrites::default() };
        for &(a, l, id) in &self.ipcache_v6 {
            v6.put(&ipc_v6_key(a, l), &id.to_le_bytes());
        }
        v6
    }

    /// Every endpoint's `ep_config` entry.
    pub fn ep_config_writes(&self) -> MapWrites {
        let mut cfg = MapWrites {
            map: names::EP_CONFIG,
            key_size: 4,
            value_size: ep_config::SIZE,
            ..MapWrites::default()
        };
        for e in &self.endpoints {
            let flags = (u32::from(e.ingress_enforced) * ep_config::INGRESS_ENFORCED)
                | (u32::from(e.egress_enforced) * ep_config::EGRESS_ENFORCED);
            cfg.put(&u32::from(e.index).to_le_bytes(), &ep_config_value(flags, e.ipv4, e.ipv6, e.identity));
        }
        cfg
    }
}

/// The two programs of every endpoint; the first object carries the map writes.
pub fn endpoint_objects(plan: &PolicyPlan) -> Result<Vec<Object>, CodegenError> {
    endpoint_objects_with(plan, Options::default())
}

/// [`endpoint_objects`] with code generation switches.
pub fn endpoint_objects_with(plan: &PolicyPlan, options: Options) -> Result<Vec<Object>, CodegenError> {
    let ipc = IpcacheV4::build(&plan.ipcache_v4);
    let (writes, capacity) = plan.writes_and_capacity(&ipc);
    let maps = policy::map_defs(capacity);
    let mut writes = Some(writes);
    let mut out = Vec::new();
    let templates = Templates::new(options)?;
    for e in &plan.endpoints {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            out.push(Object {
                name: dir.program_name(e.index),
                kind: ProgKind::SchedCls,
                program: templates.instantiate(e.index, dir),
                maps: maps.clone(),
                writes: writes.take().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// The endpoint programs of a node that shares them: one program per direction
/// ([`crate::codegen::endpoint::generate_shared`], verified once), and per endpoint and
/// direction a stub ([`crate::codegen::endpoint::generate_stub`]) that tail-calls into it
/// through `ep_tail` ([`tail_slots`] says which object fills which slot). The stubs keep the
/// per-endpoint names (`from_ep_N`, `to_ep_N`) the hooks, pins and counters use; the first
/// object carries the map writes.
pub fn shared_endpoint_objects(plan: &PolicyPlan, options: Options) -> Result<Vec<Object>, CodegenError> {
    use crate::codegen::endpoint::{generate_shared, generate_stub};
    let ipc = IpcacheV4::build(&plan.ipcache_v4);
    let (writes, capacity) = plan.writes_and_capacity(&ipc);
    let maps = policy::map_defs(capacity);
    let tail: Vec<_> = maps.iter().filter(|m| m.name == names::EP_TAIL).cloned().collect();
    let mut writes = Some(writes);
    let mut out = Vec::new();
    for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
        out.push(Object {
            name: dir.shared_name().to_string(),
            kind: ProgKind::SchedCls,
            program: generate_shared(dir, options)?,
            maps: maps.clone(),
            writes: writes.take().unwrap_or_default(),
        });
    }
    for e in &plan.endpoints {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            out.push(Object {
                name: dir.program_name(e.index),
                kind: ProgKind::SchedCls,
                program: generate_stub(e.index, dir)?,
                maps: tail.clone(),
                writes: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// The program-table slots a plan's objects fill once loaded: (`ep_tail`, index, the
/// object whose program goes there). Empty for a plan without shared endpoint programs.
pub fn tail_slots(objects: &[Object]) -> Vec<(&'static str, u32, usize)> {
    let mut out = Vec::new();
    for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
        if let Some(i) = objects.iter().position(|o| o.name == dir.shared_name()) {
            out.push((names::EP_TAIL, dir.tail_index(), i));
        }
    }
    out
}

/// The endpoint-policy plan of a node: endpoints numbered from 1 in name order, the
/// resolved ipcache, and every endpoint's entries as policy rules.
pub fn policy_plan(cfg: &crate::model::NodeConfig, resolved: &crate::policy::Resolved) -> PolicyPlan {
    use crate::maps::policy::{EGRESS, INGRESS};
    use std::net::IpAddr;
    let mut plan = PolicyPlan::default();
    for (index, ep) in super::endpoint_numbers(cfg) {
        let identity = resolved.identities().endpoint(&ep.name).map_or(0, |id| id.get());
        let policy = resolved.endpoint(&ep.name).cloned().unwrap_or_default();
        plan.endpoints.push(EndpointSpec {
            index,
            name: ep.name.clone(),
            ipv4: ep.ipv4,
            ipv6: ep.ipv6,
            identity,
            ingress_enforced: policy.ingress.enforced,
            egress_enforced: policy.egress.enforced,
        });
        for (dir, side) in [(INGRESS, &policy.ingress), (EGRESS, &policy.egress)] {
            for e in &side.entries {
                plan.rules.push(PolicyRule {
                    ep: index,
                    dir,
                    identity: e.identity,
                    proto: e.proto,
                    port: e.port,
                    port_prefix: e.port_prefix,
                    deny: e.deny,
                    proxy_port: e.proxy_port,
                });
            }
        }
    }
    for (cidr, id) in resolved.ipcache().entries() {
        match cidr.addr() {
            IpAddr::V4(a) => plan.ipcache_v4.push((u32::from(a), cidr.len(), id.get())),
            IpAddr::V6(a) => plan.ipcache_v6.push((u128::from(a), cidr.len(), id.get())),
        }
    }
    plan
}
