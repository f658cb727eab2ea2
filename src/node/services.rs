//! `sluice service list`: the services a pinned node balances, read back from its maps.
//!
//! Contract:
//! - The source of truth is the kernel: `lb_svc` (frontends), `lb_slot` (which backends
//!   take new connections, and their share of the slots), `lb_be` (every backend, with its
//!   state), `lb_ct` (connections pinned to a backend: forward entries counted per
//!   backend). Nothing is computed from the node file, so what is shown is what the
//!   datapath does.
//! - A backend appears under a frontend when it holds slots of it, or when a connection
//!   of that frontend is pinned to it (a terminating backend holds no slot but keeps its
//!   connections).
//! - Names: when a node file is given, frontends are labelled `namespace/name:port-name`
//!   from its Service documents; otherwise by their id.
//! - Output is sorted (frontend by VIP, port, protocol; backends by address, port), so it
//!   can be diffed.

use crate::maps::lb::{
    addr_of, be_value, ct4_key, ct_key, ct_value, read_u32 as u32_at, slot_key, slot_value, svc_key,
    svc_value,
};
use crate::maps::names;
use crate::maps::MapDef;
use crate::model::service::Service;
use crate::node::load::{open_pinned_map, LoadError};
use crate::sys::{SysError, Syscall};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Why the services could not be read.
#[derive(Debug, Error)]
pub enum ListError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("reading {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: SysError,
    },
}

/// One backend of a frontend, as the maps have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRow {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// `active`, `terminating`, or `unknown(N)` for a state byte this version does not know.
    pub state: String,
    /// Selection slots held (0 for a terminating backend).
    pub slots: u32,
    /// Connections pinned to it in `lb_ct`.
    pub connections: u64,
}

/// One frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub id: u32,
    /// `namespace/name[:port]` from the node file, when given and found.
    pub name: Option<String>,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub slots: u32,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendRow>,
}

/// Every frontend of a pinned node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub services: Vec<ServiceRow>,
}

fn port_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => format!("proto {n}"),
    }
}

/// Every (key, value) of a pinned map.
fn dump(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    def: &MapDef,
) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, ListError> {
    let map = open_pinned_map(sys, pin_dir, def)?;
    map.entries().map_err(|source| ListError::Map { map: def.name, source })
}

fn def(name: &str) -> MapDef {
    crate::maps::lb::map_defs().into_iter().find(|d| d.name == name).expect("load-balancing maps are defined")
}

/// Read the services of the node pinned under `pin_dir`; `services` (from the node file,
/// if any) only names them.
pub fn list(sys: &Arc<dyn Syscall>, pin_dir: &Path, services: &[Service]) -> Result<ServiceTable, ListError> {
    let svcs = dump(sys, pin_dir, &def(names::LB_SVC))?;
    let slots = dump(sys, pin_dir, &def(names::LB_SLOT))?;
    let bes = dump(sys, pin_dir, &def(names::LB_BE))?;
    // Forward entries of both conntrack maps (IPv6 keys in `lb_ct`, IPv4 in `lb_ct4`), as
    // their values: the direction byte sits at each key's own offset.
    let mut cts: Vec<Vec<u8>> = Vec::new();
    for (name, dir_at) in [(names::LB_CT, ct_key::DIR), (names::LB_CT4, ct4_key::DIR)] {
        cts.extend(
            dump(sys, pin_dir, &def(name))?
                .into_iter()
                .filter(|(k, _)| k.get(dir_at) == Some(&ct_key::FORWARD))
                .map(|(_, v)| v),
        );
    }

    // svc_id -> backend_id -> slots held
    let mut held: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
    for (k, v) in &slots {
        *held
            .entry(u32_at(k, slot_key::SVC_ID))
            .or_default()
            .entry(u32_at(v, slot_value::BACKEND_ID))
            .or_default() += 1;
    }
    // svc_id -> backend_id -> pinned connections
    let mut conns: BTreeMap<u32, BTreeMap<u32, u64>> = BTreeMap::new();
    for v in &cts {
        *conns
            .entry(u32_at(v, ct_value::SVC_ID))
            .or_default()
            .entry(u32_at(v, ct_value::BACKEND_ID))
            .or_default() += 1;
    }
    let backends: BTreeMap<u32, &Vec<u8>> = bes.iter().map(|(k, v)| (u32_at(k, 0), v)).collect();

    let mut table = ServiceTable::default();
    for (k, v) in &svcs {
        let id = u32_at(v, svc_value::SVC_ID);
        let (vip, port, proto) = (addr_of(&k[svc_key::ADDR..]), port_at(k, svc_key::PORT), k[svc_key::PROTO]);
        let affinity = u32_at(v, svc_value::FLAGS) & svc_value::AFFINITY != 0;
        let ids: BTreeSet<u32> = held
            .get(&id)
            .into_iter()
            .flat_map(|m| m.keys())
            .chain(conns.get(&id).into_iter().flat_map(|m| m.keys()))
            .copied()
            .collect();
        let mut rows: Vec<BackendRow> = ids
            .into_iter()
            .map(|be| {
                let (addr, bport, state) = match backends.get(&be) {
                    Some(b) => (
                        addr_of(&b[be_value::ADDR..]),
                        port_at(b, be_value::PORT),
                        match b[be_value::STATE] {
                            be_value::ACTIVE => "active".to_string(),
                            be_value::TERMINATING => "terminating".to_string(),
                            n => format!("unknown({n})"),
                        },
                    ),
                    None => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0, "removed".to_string()),
                };
                BackendRow {
                    id: be,
                    addr,
                    port: bport,
                    state,
                    slots: held.get(&id).and_then(|m| m.get(&be)).copied().unwrap_or(0),
                    connections: conns.get(&id).and_then(|m| m.get(&be)).copied().unwrap_or(0),
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.addr, r.port, r.id));
        let name = services.iter().find_map(|s| {
            s.frontends.iter().find(|f| f.vip == vip && f.port == port && f.protocol.number() == proto).map(
                |f| {
                    if f.port_name.is_empty() {
                        format!("{}/{}", s.namespace, s.name)
                    } else {
                        format!("{}/{}:{}", s.namespace, s.name, f.port_name)
                    }
                },
            )
        });
        table.services.push(ServiceRow {
            id,
            name,
            vip,
            port,
            proto,
            slots: u32_at(v, svc_value::SLOTS),
            affinity_timeout: affinity.then(|| u32_at(v, svc_value::AFFINITY_TIMEOUT)),
            backends: rows,
        });
    }
    table.services.sort_by_key(|s| (s.vip, s.port, s.proto));
    Ok(table)
}

fn sock(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for ServiceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.services.is_empty() {
            return writeln!(f, "no services");
        }
        for s in &self.services {
            let name = s.name.clone().unwrap_or_else(|| format!("service #{}", s.id));
            let affinity = match s.affinity_timeout {
                Some(t) => format!(", ClientIP affinity {t}s"),
                None => String::new(),
            };
            let usable = if s.slots == 0 { " (no usable backend)" } else { "" };
            writeln!(
                f,
                "{name}  {} {}  slots {}{usable}{affinity}",
                sock(s.vip, s.port),
                proto_name(s.proto),
                s.slots
            )?;
            for b in &s.backends {
                writeln!(
                    f,
                    "  -> {:<24} {:<12} slots {:>6}  connections {}",
                    sock(b.addr, b.port),
                    b.state,
                    b.slots,
                    b.connections
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_back_in_their_family() {
        let v4 = crate::maps::fwd::addr_key("10.96.0.10".parse().unwrap());
        assert_eq!(addr_of(&v4), "10.96.0.10".parse::<IpAddr>().unwrap());
        let v6 = crate::maps::fwd::addr_key("fd00::10".parse().unwrap());
        assert_eq!(addr_of(&v6), "fd00::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_prints_states_slots_and_connections() {
        let t = ServiceTable {
            services: vec![ServiceRow {
                id: 1,
                name: Some("default/web:http".into()),
                vip: "10.96.0.10".parse().unwrap(),
                port: 80,
                proto: 6,
                slots: 16381,
                affinity_timeout: None,
                backends: vec![
                    BackendRow {
                        id: 1,
                        addr: "10.0.1.20".parse().unwrap(),
                        port: 8080,
                        state: "active".into(),
                        slots: 16381,
                        connections: 3,
                    },
                    BackendRow {
                        id: 2,
                        addr: "10.0.1.30".parse().unwrap(),
                        port: 8080,
                        state: "terminating".into(),
                        slots: 0,
                        connections: 1,
                    },
                ],
            }],
        };
        let text = t.to_string();
        assert_eq!(
            text,
            "default/web:http  10.96.0.10:80 TCP  slots 16381\n  \
             -> 10.0.1.20:8080           active       slots  16381  connections 3\n  \
             -> 10.0.1.30:8080           terminating  slots      0  connections 1\n"
        );
    }
}
