//! `Node.spec.router`, `Node.spec.overlay` and `Node.spec.loadBalancer`: how the node
//! forwards and where it balances services.
//!
//! ```yaml
//! spec:
//!   loadBalancer:
//!     devices: [net0]          # the standalone tc load balancer on these devices' ingress
//!     socketCgroup: /sys/fs/cgroup/unified   # socket-level LB for processes under it
//!   router: {ipv4: 10.0.1.1, ipv6: "fd00:0:1::1"}  # on sluice_host: the endpoints' gateway
//!   overlay:
//!     local: 172.16.0.1        # this node's underlay IPv4 address (the tunnel source)
//!     vni: 2                   # default 2
//!     port: 8472               # default 8472 (the Linux VXLAN port Cilium uses too)
//!     device: sluice_vxlan     # default
//!     peers:
//!       - name: node-2
//!         address: 172.16.0.2
//!         prefixes: [10.0.2.0/24, "fd00:0:2::/64"]
//!         endpoints:           # optional: the peer's pods, so they get identities here
//!           - {name: web, namespace: default, ipv4: 10.0.2.5, labels: {app: web}}
//! ```
//!
//! What a peer means for policy (Cilium's entities): its address is `remote-node`, its
//! prefixes are inside the cluster (`cluster`, never `world`), and each endpoint it declares
//! gets the label-set identity of its labels, so label selectors select it.
//!
//! Checks (each error at its field): a VNI fits 24 bits and is not 0; the port is not 0;
//! peer names and addresses are unique and differ from `local`; `local` is no endpoint's
//! address; the device is no endpoint's interface, not `lo` and not the router pair; a prefix belongs to one
//! peer only and covers no local endpoint's or router address; router addresses are not
//! endpoint addresses. Load-balancer devices are unique interface names and not endpoint
//! interfaces (those balance inside their own programs); the socket cgroup is an absolute
//! path without `..`. A peer's endpoint has an address inside one of that peer's prefixes,
//! no address another endpoint has, and labels as a local endpoint's (its namespace label
//! derived from `namespace`).

use super::cidr::Cidr;
use super::endpoint::{Address, Endpoint, InterfaceName, Name, DEFAULT_NAMESPACE};
use super::labels::{LabelKey, LabelValue, Labels, NAMESPACE_LABEL};
use super::locate::{FieldPath, Invalid};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The overlay device's default name.
pub const DEFAULT_OVERLAY_DEVICE: &str = "sluice_vxlan";
/// The router pair's device in the node's namespace that holds the router addresses
/// (`crate::node::forward::HOST_DEV`).
pub const ROUTER_HOST_DEVICE: &str = "sluice_host";
/// The router pair's other end (`crate::node::forward::NET_DEV`).
pub const ROUTER_NET_DEVICE: &str = "sluice_net";
/// The default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 2;
/// The default VXLAN UDP port.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The node's router addresses, held by `sluice_host`: the gateway endpoints route through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Router {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl Router {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }
}

/// A VXLAN overlay to peer nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// Sorted by name.
    pub peers: Vec<OverlayPeer>,
    /// The tunnel carries the source endpoint's identity (cluster mode, where identities
    /// are cluster-wide; [`crate::codegen::overlay`]). Never set from a node file.
    pub identities: bool,
}

/// Where services are balanced besides the endpoints' own programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadBalancer {
    /// Devices whose tc ingress gets the standalone load balancer, sorted.
    pub devices: Vec<String>,
    /// The cgroup v2 directory whose processes get socket-level load balancing.
    pub socket_cgroup: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with devices and socketCgroup")]
pub(crate) struct LoadBalancerWire {
    #[serde(default)]
    devices: Vec<InterfaceName>,
    #[serde(default)]
    socket_cgroup: Option<String>,
}

/// Lowers `spec.loadBalancer` (at `spec`).
pub(crate) fn lower_load_balancer(
    lb: Option<LoadBalancerWire>,
    endpoints: &[Endpoint],
    spec: &FieldPath,
) -> Result<LoadBalancer, Invalid> {
    let Some(lb) = lb else { return Ok(LoadBalancer::default()) };
    let at = spec.key("loadBalancer");
    let mut devices: Vec<String> = Vec::new();
    for (i, d) in lb.devices.into_iter().enumerate() {
        let here = at.key("devices").index(i);
        if let Some(e) = endpoints.iter().find(|e| e.interface == d.0) {
            return Err(here.invalid(format!(
                "{} is endpoint {}'s interface; endpoints balance services in their own programs",
                d.0, e.name
            )));
        }
        if devices.contains(&d.0) {
            return Err(here.invalid(format!("duplicate device {}", d.0)));
        }
        devices.push(d.0);
    }
    devices.sort();
    let socket_cgroup = match lb.socket_cgroup {
        None => None,
        Some(p) => {
            let path = std::path::PathBuf::from(&p);
            if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(at
                    .key("socketCgroup")
                    .invalid(format!("{p:?} is not an absolute path without `..`")));
            }
            Some(path)
        }
    };
    Ok(LoadBalancer { devices, socket_cgroup })
}

/// One peer node and the prefixes behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPeer {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefixes: Vec<Cidr>,
    /// Its WireGuard public key and endpoint (`peers[].wireguard`), if given.
    pub wireguard: Option<super::encryption::WireguardPeer>,
    /// The endpoints the peer declares (sorted by name), each inside one of `prefixes`.
    pub endpoints: Vec<RemoteEndpoint>,
    /// The node's labels (`peers[].labels`, source prefixes removed): what `fromNodes` and
    /// `toNodes` select it by (with `policy.nodeSelectorLabels`). Peers from etcd have none.
    pub labels: Labels,
}

/// An endpoint on another node: its addresses and identity labels, nothing to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub name: String,
    pub namespace: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Identity labels: the labels written plus `io.kubernetes.pod.namespace`.
    pub labels: Labels,
}

impl RemoteEndpoint {
    /// The endpoint's addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the router's ipv4 and ipv6 addresses")]
pub(crate) struct RouterWire {
    #[serde(default)]
    ipv4: Option<Address<Ipv4Addr>>,
    #[serde(default)]
    ipv6: Option<Address<Ipv6Addr>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an overlay: a mapping with local, peers, and optionally vni, port and device"
)]
pub(crate) struct OverlayWire {
    local: Address<Ipv4Addr>,
    #[serde(default)]
    vni: Option<u32>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    device: Option<InterfaceName>,
    #[serde(default)]
    peers: Vec<PeerWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a peer: a mapping with name, address and prefixes")]
pub(crate) struct PeerWire {
    name: Name,
    address: Address<Ipv4Addr>,
    #[serde(default)]
    prefixes: Vec<Cidr>,
    #[serde(default)]
    wireguard: Option<super::encryption::WireguardPeerWire>,
    #[serde(default)]
    endpoints: Vec<PeerEndpointWire>,
    #[serde(default)]
    labels: BTreeMap<LabelKey, LabelValue>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a peer's endpoint: a mapping with name, namespace, ipv4, ipv6 and labels"
)]
pub(crate) struct PeerEndpointWire {
    name: Name,
    #[serde(default)]
    namespace: Option<Name>,
    #[serde(default)]
    ipv4: Option<Address<Ipv4Addr>>,
    #[serde(default)]
    ipv6: Option<Address<Ipv6Addr>>,
    #[serde(default)]
    labels: BTreeMap<LabelKey, LabelValue>,
}

/// Lowers one peer's `endpoints` (at `here`), checking each address lies in the peer's
/// `prefixes` and is nobody else's (`taken`: address -> where it was first seen).
fn lower_peer_endpoints(
    wires: Vec<PeerEndpointWire>,
    prefixes: &[Cidr],
    taken: &mut BTreeMap<IpAddr, String>,
    (here, peer): (&FieldPath, usize),
) -> Result<Vec<RemoteEndpoint>, Invalid> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut lowered = Vec::with_capacity(wires.len());
    for (i, wire) in wires.into_iter().enumerate() {
        let at = here.key("endpoints").index(i);
        if let Some(first) = names.insert(wire.name.0.clone(), i) {
            return Err(at.key("name").invalid(format!(
                "duplicate endpoint name `{}` (first at endpoints[{first}])",
                wire.name.0
            )));
        }
        if wire.ipv4.is_none() && wire.ipv6.is_none() {
            return Err(
                at.invalid(format!("endpoint `{}` has no address; give it ipv4, ipv6 or both", wire.name.0))
            );
        }
        let family_addrs =
            [("ipv4", wire.ipv4.map(|a| IpAddr::V4(a.0))), ("ipv6", wire.ipv6.map(|a| IpAddr::V6(a.0)))];
        for (field, addr) in family_addrs {
            let Some(addr) = addr else { continue };
            if !prefixes.iter().any(|p| p.contains(addr)) {
                return Err(at.key(field).invalid(format!(
                    "{addr} is in none of the peer's prefixes; the tunnel would not reach it"
                )));
            }
            if let Some(first) = taken.insert(addr, format!("peers[{peer}].endpoints[{i}].{field}")) {
                return Err(at.key(field).invalid(format!("duplicate address {addr} (first at {first})")));
            }
        }
        let namespace = wire.namespace.map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.0);
        let mut labels = Labels::new();
        for (key, value) in &wire.labels {
            if key.key == NAMESPACE_LABEL {
                return Err(at.key("labels").key(&key.raw).invalid(format!(
                    "`{}` is derived from the endpoint's namespace; set `namespace` instead",
                    key.raw
                )));
            }
            labels.insert(key.key.clone(), value.0.clone());
        }
        labels.insert(NAMESPACE_LABEL.to_owned(), namespace.clone());
        lowered.push(RemoteEndpoint {
            name: wire.name.0,
            namespace,
            ipv4: wire.ipv4.map(|a| a.0),
            ipv6: wire.ipv6.map(|a| a.0),
            labels,
        });
    }
    lowered.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(lowered)
}

/// Lowers `spec.router` and `spec.overlay` (at `spec`) against the node's endpoints.
pub(crate) fn lower(
    router: Option<RouterWire>,
    overlay: Option<OverlayWire>,
    endpoints: &[Endpoint],
    spec: &FieldPath,
) -> Result<(Router, Option<Overlay>), Invalid> {
    let router =
        router.map_or(Router::default(), |r| Router { ipv4: r.ipv4.map(|a| a.0), ipv6: r.ipv6.map(|a| a.0) });
    let owner = |addr: IpAddr| endpoints.iter().find(|e| e.has_address(addr)).map(|e| e.name.as_str());
    for (field, addr) in [("ipv4", router.ipv4.map(IpAddr::V4)), ("ipv6", router.ipv6.map(IpAddr::V6))] {
        if let Some(name) = addr.and_then(owner) {
            return Err(spec.key("router").key(field).invalid(format!(
                "{} is endpoint {name}'s address; the router needs its own",
                addr.map_or_else(String::new, |a| a.to_string())
            )));
        }
    }
    let Some(o) = overlay else { return Ok((router, None)) };
    let at = spec.key("overlay");
    let vni = o.vni.unwrap_or(DEFAULT_VNI);
    if vni == 0 || vni > MAX_VNI {
        return Err(at.key("vni").invalid(format!("VNI {vni} is out of range 1..={MAX_VNI}")));
    }
    let port = o.port.unwrap_or(DEFAULT_VXLAN_PORT);
    if port == 0 {
        return Err(at.key("port").invalid("port 0 is not a UDP port"));
    }
    let local = o.local.0;
    if let Some(name) = owner(IpAddr::V4(local)) {
        return Err(at.key("local").invalid(format!(
            "{local} is endpoint {name}'s address; the overlay's local address is the node's underlay \
             address, which tunnelled packets leave from"
        )));
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    let mut prefixes: Vec<(Cidr, String)> = Vec::new();
    let mut keys: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    let mut peers = Vec::new();
    let mut remote_addresses: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, p) in o.peers.into_iter().enumerate() {
        let here = at.key("peers").index(i);
        if let Some(first) = names.insert(p.name.0.clone(), i) {
            return Err(here
                .key("name")
                .invalid(format!("duplicate peer {} (first at peers[{first}])", p.name.0)));
        }
        if p.address.0 == local {
            return Err(here.key("address").invalid(format!("{} is this node's own address (local)", local)));
        }
        if let Some(first) = addresses.insert(p.address.0, i) {
            return Err(here
                .key("address")
                .invalid(format!("duplicate peer address {} (first at peers[{first}])", p.address.0)));
        }
        for (j, c) in p.prefixes.iter().enumerate() {
            let there = here.key("prefixes").index(j);
            if let Some(e) = endpoints.iter().find(|e| e.addresses().any(|a| c.contains(a))) {
                return Err(there.invalid(format!("{c} covers local endpoint {}", e.name)));
            }
            if let Some(a) = router.addresses().find(|a| c.contains(*a)) {
                return Err(there.invalid(format!("{c} covers the router address {a}")));
            }
            if let Some((other, peer)) =
                prefixes.iter().find(|(o, _)| o.contains_cidr(c) || c.contains_cidr(o))
            {
                return Err(there.invalid(format!("{c} overlaps {other} of peer {peer}")));
            }
            prefixes.push((*c, p.name.0.clone()));
        }
        let mut own = p.prefixes;
        own.sort();
        own.dedup();
        let wireguard = match p.wireguard {
            Some(w) => Some(super::encryption::lower_peer(w, &here.key("wireguard"))?),
            None => None,
        };
        if let Some(w) = wireguard {
            if let Some(first) = keys.insert(w.public_key, i) {
                return Err(here.key("wireguard").key("publicKey").invalid(format!(
                    "the same public key as peers[{first}]: each node has its own key pair"
                )));
            }
        }
        let endpoints = lower_peer_endpoints(p.endpoints, &own, &mut remote_addresses, (&here, i))?;
        let labels = p.labels.into_iter().map(|(k, v)| (k.key, v.0)).collect();
        peers.push(OverlayPeer {
            name: p.name.0,
            address: p.address.0,
            prefixes: own,
            wireguard,
            endpoints,
            labels,
        });
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let device = o.device.map_or_else(|| DEFAULT_OVERLAY_DEVICE.to_string(), |d| d.0);
    if let Some(e) = endpoints.iter().find(|e| e.interface == device) {
        return Err(at.key("device").invalid(format!("{device} is endpoint {}'s interface", e.name)));
    }
    if device == "lo" || device == ROUTER_HOST_DEVICE || device == ROUTER_NET_DEVICE {
        return Err(at.key("device").invalid(format!("{device} is a device the node already uses")));
    }
    Ok((router, Some(Overlay { device, vni, port, local, peers, identities: false })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn router_device_names_are_the_ones_forwarding_creates() {
        assert_eq!(super::ROUTER_HOST_DEVICE, crate::node::forward::HOST_DEV);
        assert_eq!(super::ROUTER_NET_DEVICE, crate::node::forward::NET_DEV);
    }
}
