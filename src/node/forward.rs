//! Wiring a node's forwarding: the devices sluice owns, the routes the host stack needs to
//! reach endpoints, and the forwarding maps the `from-endpoint` programs read
//! ([`crate::maps::fwd`]).
//!
//! Contract of [`sync`] (idempotent; `sluice attach` and the daemon run it after attaching):
//! - `sluice_host`/`sluice_net`: a veth pair in the node's namespace; `sluice_host` holds
//!   the router addresses (`spec.router`), the gateway endpoints route through. Created
//!   when the node has router addresses and the pair is missing; addresses added if absent.
//! - The overlay device (`spec.overlay.device`, default `sluice_vxlan`): VXLAN in external
//!   (metadata) mode on the configured UDP port, its MAC derived from the underlay address
//!   ([`crate::maps::fwd::overlay_mac`]) so peers address inner frames to it without
//!   exchanging anything. Created when missing; an existing device of another kind is an
//!   error.
//! - Routes: each endpoint address gets a host route to its host-side veth (`replace`), so
//!   the host and traffic arriving from the network device reach endpoints.
//! - Forwarding on (`ip_forward`, IPv6 forwarding): `bpf_fib_lookup` refuses otherwise.
//! - Maps: `lxc` gets every endpoint whose host-side veth exists (its ifindex, the
//!   container side's MAC found through the veth peer, the host side's MAC), `tunnel` every
//!   peer prefix; stale entries are deleted; `fwd_cfg` is written last, so the programs
//!   start forwarding only once the tables are complete. An endpoint whose interface is
//!   missing is reported and left to the stack.
//!
//! - A node without endpoints (prefilter only) has nothing to forward: [`sync`] does nothing.
//!
//! - Ownership: a device this call creates and each endpoint host route it installs are
//!   recorded in the pin dir ([`super::ours`]). `sluice down` removes recorded devices and
//!   routes, and nothing else. (A route of an endpoint removed from the config stays until
//!   `down`: the daemon's reshape test expects the stack to keep reaching it.)

use super::load::{open_pinned_map, LoadError};
use super::ours::{self, OwnedDevice, OwnedRoute};
use crate::maps::fwd::{self, fwd_cfg, lxc_writes, overlay_mac, tunnel_writes, LxcEntry, TunnelEntry};
use crate::maps::names;
use crate::maps::writes::MapWrites;
use crate::model::{Cidr, NodeConfig};
use crate::netlink::{self, sysctl, Netlink, NetlinkError, Route, Vxlan};
use crate::sys::{Map, SysError, Syscall};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// The host side of the router pair: it holds the router addresses.
pub const HOST_DEV: &str = "sluice_host";
/// The other side of the router pair.
pub const NET_DEV: &str = "sluice_net";

/// Why forwarding could not be wired.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("forwarding map {map}: {source}")]
    Map { map: &'static str, source: SysError },
    #[error("{name} exists but is a {kind} device, not {want}: remove it or choose another name")]
    WrongDevice { name: String, kind: String, want: &'static str },
    #[error(transparent)]
    Ours(#[from] super::ours::OursError),
    #[error("reading this thread's network namespace: {0}")]
    Netns(String),
    #[error("{0}")]
    Encryption(String),
    #[error(transparent)]
    OverlayId(#[from] super::overlay_id::OverlayIdError),
    #[error(
        "encryption mode wireguard: {0} does not exist; start it first (crate::encrypt::start_wireguard)"
    )]
    NoWireguardDevice(&'static str),
}

/// What [`sync`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Devices created by this call.
    pub created: Vec<String>,
    /// Endpoint host routes in place.
    pub routes: usize,
    /// Endpoint addresses in `lxc`.
    pub local: usize,
    /// Endpoints left to the stack, with the reason.
    pub unwired: Vec<(String, String)>,
    /// Overlay prefixes in `tunnel`.
    pub tunnels: usize,
    /// `fwd_cfg` flags written.
    pub flags: u32,
    /// Map element writes and deletes.
    pub writes: usize,
}

impl fmt::Display for ForwardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.created {
            writeln!(f, "created {d}")?;
        }
        for (ep, why) in &self.unwired {
            writeln!(f, "endpoint {ep}: not forwarded by sluice ({why}); the stack routes it")?;
        }
        let on: Vec<&str> = [
            (fwd_cfg::LOCAL, "local"),
            (fwd_cfg::OVERLAY, "overlay"),
            (fwd_cfg::FIB, "fib"),
            (fwd_cfg::IDENTITY, "identity"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.flags & bit != 0)
        .map(|(_, name)| name)
        .collect();
        write!(
            f,
            "forwarding: {} local addresses, {} overlay prefixes, {} host routes; steps on: {} ({} map writes)",
            self.local,
            self.tunnels,
            self.routes,
            if on.is_empty() { "none".to_string() } else { on.join(", ") },
            self.writes
        )
    }
}

fn link_or_none(nl: &Netlink, name: &str) -> Result<Option<netlink::LinkInfo>, NetlinkError> {
    match nl.link_by_name(name) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn ensure_address(nl: &Netlink, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    match nl.add_address(ifindex, addr, len) {
        Err(e) if !e.is_exists() => Err(e),
        _ => Ok(()),
    }
}

/// The router pair; returns whether it was created.
fn ensure_router(nl: &Netlink, cfg: &NodeConfig) -> Result<bool, ForwardError> {
    if cfg.router.addresses().next().is_none() {
        return Ok(false);
    }
    let mut created = false;
    let host = match link_or_none(nl, HOST_DEV)? {
        Some(l) if l.kind.as_deref() == Some("veth") => l.ifindex,
        Some(l) => {
            return Err(ForwardError::WrongDevice {
                name: HOST_DEV.into(),
                kind: l.kind.unwrap_or_else(|| "plain".into()),
                want: "veth",
            })
        }
        None => {
            created = true;
            nl.create_veth(HOST_DEV, NET_DEV, None)?
        }
    };
    nl.set_up(host)?;
    nl.set_up(nl.ifindex(NET_DEV)?)?;
    if cfg.router.ipv6.is_some() {
        // Router addresses are configured, not probed for duplicates.
        let _ = sysctl::write(None, &format!("net.ipv6.conf.{HOST_DEV}.accept_dad"), "0");
    }
    for addr in cfg.router.addresses() {
        ensure_address(nl, host, addr)?;
    }
    Ok(created)
}

/// The overlay device; returns its ifindex and whether it was created.
fn ensure_overlay(nl: &Netlink, o: &crate::model::network::Overlay) -> Result<(u32, bool), ForwardError> {
    let (ifindex, created) = match link_or_none(nl, &o.device)? {
        Some(l) if l.kind.as_deref() == Some("vxlan") => (l.ifindex, false),
        Some(l) => {
            return Err(ForwardError::WrongDevice {
                name: o.device.clone(),
                kind: l.kind.unwrap_or_else(|| "plain".into()),
                want: "vxlan",
            })
        }
        None => {
            (nl.create_vxlan(&Vxlan::new(&o.device, o.vni).external().port(o.port).learning(false))?, true)
        }
    };
    nl.set_mac(ifindex, overlay_mac(o.local))?;
    nl.set_up(ifindex)?;
    Ok((ifindex, created))
}

/// The WireGuard device's ifindex: it must exist (the daemon or `crate::encrypt` starts it)
/// before forwarding points peers at it.
fn wireguard_device(nl: &Netlink) -> Result<u32, ForwardError> {
    let name = crate::model::encryption::WIREGUARD_DEVICE;
    match link_or_none(nl, name)? {
        Some(l) => Ok(l.ifindex),
        None => Err(ForwardError::NoWireguardDevice(name)),
    }
}

/// WireGuard mode, receiving side of "never in plaintext": strict reverse-path filtering
/// on the device holding the underlay address. Peers' pod prefixes route through
/// `sluice_wg`, so a packet from a peer's pod that arrives on the underlay unencrypted fails
/// the reverse-path check and is dropped by the kernel (counted as `IPReversePathFilter`
/// in `/proc/net/netstat`). IPv4 only: IPv6 has no `rp_filter`.
fn strict_underlay(nl: &Netlink, o: &crate::model::network::Overlay) -> Result<(), ForwardError> {
    let local = IpAddr::V4(o.local);
    if let Some(a) = nl.addresses(None)?.into_iter().find(|a| a.addr == local) {
        let dev = nl.link_info(a.ifindex)?.name;
        sysctl::write(None, &format!("net.ipv4.conf.{dev}.rp_filter"), "1")?;
    }
    Ok(())
}

/// Turn a pinned hash-like map's contents into `want`'s.
fn sync_map(map: &Map, name: &'static str, want: &MapWrites) -> Result<usize, ForwardError> {
    let err = |source| ForwardError::Map { map: name, source };
    let mut current = BTreeMap::new();
    for key in map.keys() {
        let key = key.map_err(err)?;
        if let Some(v) = map.lookup(&key).map_err(err)? {
            current.insert(key, v);
        }
    }
    let mut writes = 0;
    let mut wanted = BTreeSet::new();
    for (k, v) in want.keys.chunks_exact(want.key_size).zip(want.values.chunks_exact(want.value_size)) {
        wanted.insert(k.to_vec());
        if current.get(k).map(Vec::as_slice) != Some(v) {
            map.update(k, v, crate::sys::UpdateFlags::ANY).map_err(err)?;
            writes += 1;
        }
    }
    for k in current.keys().filter(|k| !wanted.contains(*k)) {
        map.delete(k).map_err(err)?;
        writes += 1;
    }
    Ok(writes)
}

/// Wire the loaded node's forwarding (see the module contract).
pub fn sync(sys: &Arc<dyn Syscall>, cfg: &NodeConfig, pin_dir: &Path) -> Result<ForwardReport, ForwardError> {
    let mut report = ForwardReport::default();
    if cfg.endpoints.is_empty() {
        // No endpoint programs, so no forwarding maps and nothing to route to.
        return Ok(report);
    }
    let defs = fwd::map_defs();
    let open = |name: &str| -> Result<Map, ForwardError> {
        let def = defs.iter().find(|d| d.name == name).expect("forwarding maps are defined");
        Ok(open_pinned_map(sys, pin_dir, def)?)
    };
    if let crate::model::encryption::Encryption::Ipsec(_) = &cfg.encryption {
        // Refused before anything changes: where the kernel has no ESP with the options it
        // needs; elsewhere because the BPF marking is not written yet.
        let xfrm = Netlink::open_xfrm()?;
        crate::encrypt::ipsec::check_kernel(&xfrm).map_err(|e| ForwardError::Encryption(e.to_string()))?;
        return Err(ForwardError::Encryption(
            "spec.encryption.mode ipsec: the BPF marking for xfrm is not implemented yet; use mode: wireguard".into(),
        ));
    }
    let (lxc, tunnel, cfg_map) = (open(names::LXC)?, open(names::TUNNEL)?, open(names::FWD_CFG)?);
    let nl = Netlink::open()?;
    let netns = super::wire::current_netns().map_err(|e| ForwardError::Netns(e.to_string()))?;
    // What this call creates is recorded as ours (`down` removes only that).
    let own = |name: &str| -> Result<(), ForwardError> {
        let dev = OwnedDevice { name: name.to_string(), ifindex: nl.ifindex(name)?, netns };
        Ok(ours::record_device(pin_dir, &dev)?)
    };
    if ensure_router(&nl, cfg)? {
        own(HOST_DEV)?;
        report.created.push(format!("{HOST_DEV}/{NET_DEV}"));
    }
    sysctl::ip_forward(None, true)?;
    sysctl::ipv6_forwarding(None, true)?;

    let mut local = Vec::new();
    for (index, ep) in super::endpoint_numbers(cfg) {
        let link = match link_or_none(&nl, &ep.interface)? {
            Some(l) => l,
            None => {
                report.unwired.push((ep.name.clone(), format!("no interface {}", ep.interface)));
                continue;
            }
        };
        for addr in ep.addresses() {
            let owned = OwnedRoute { addr, ifindex: link.ifindex, netns };
            ours::record_route(pin_dir, &owned)?;
            let route = Route::new(Cidr::host(addr)).dev(link.ifindex);
            nl.replace_route(&route)?;
            report.routes += 1;
        }
        let peer_mac = nl.veth_peer_mac(link.ifindex).ok().flatten();
        let (Some(mac), Some(node_mac)) = (peer_mac, link.mac) else {
            report
                .unwired
                .push((ep.name.clone(), format!("{} is not a veth with a visible peer", ep.interface)));
            continue;
        };
        for addr in ep.addresses() {
            local.push(LxcEntry { addr, ifindex: link.ifindex, ep: index, mac, node_mac });
        }
    }
    report.local = local.len();
    report.writes += sync_map(&lxc, names::LXC, &lxc_writes(&local))?;

    let mut tunnels = Vec::new();
    let mut flags = fwd_cfg::LOCAL | fwd_cfg::FIB;
    if let Some(o) = &cfg.overlay {
        // WireGuard mode: peers' prefixes go to `sluice_wg` (served by `crate::encrypt`),
        // never to a VXLAN device, which is not created.
        let wireguard = matches!(cfg.encryption, crate::model::encryption::Encryption::Wireguard(_));
        let (ifindex, created) =
            if wireguard { (wireguard_device(&nl)?, false) } else { ensure_overlay(&nl, o)? };
        if wireguard {
            strict_underlay(&nl, o)?;
        }
        if created {
            own(&o.device)?;
            report.created.push(o.device.clone());
        }
        let identities = o.identities && !wireguard;
        super::overlay_id::sync(sys, pin_dir, ifindex, identities)?;
        if identities {
            flags |= fwd_cfg::IDENTITY;
        }
        for peer in &o.peers {
            for c in &peer.prefixes {
                tunnels.push(TunnelEntry {
                    prefix: c.addr(),
                    len: c.len(),
                    remote: peer.address,
                    vni: o.vni,
                    peer_mac: overlay_mac(peer.address),
                    local_mac: overlay_mac(o.local),
                    ifindex,
                });
            }
        }
        flags |= fwd_cfg::OVERLAY;
    }
    report.tunnels = tunnels.len();
    report.writes += sync_map(&tunnel, names::TUNNEL, &tunnel_writes(&tunnels))?;
    report.writes += sync_map(&cfg_map, names::FWD_CFG, &fwd::fwd_cfg_writes(flags))?;
    report.flags = flags;
    Ok(report)
}
