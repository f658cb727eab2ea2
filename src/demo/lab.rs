//! A node in network namespaces, built with sluice's own netlink: what `sluice demo` and
//! the end-to-end flow tests run real traffic through.
//!
//! ```text
//!   [ep: frontend]  [ep: backend]  [ep: db]        one namespace per endpoint, eth0
//!        | lxc-frontend  | lxc-backend | lxc-db     host sides in the node namespace
//!   +-----------------------------------------+
//!   | node: sluice_host/sluice_net (router),  |--- net0 ======= eth0 [world]
//!   |       sluice_vxlan (overlay)            |--- underlay0 == eth0 [peer: node-2, vx0]
//!   +-----------------------------------------+
//! ```
//!
//! - Endpoints: their addresses as /32 and /128 on `eth0`, a default route to the router
//!   address on-link, and permanent neighbor entries for the router (IPv6 neighbor
//!   discovery answers only for addresses on the asking device, and the router address is
//!   on `sluice_host`).
//! - The world: `eth0` on the node's first IPv4 host address's /24 (`.100`) and IPv6
//!   host address's /64 (`::100`), plus the sources it speaks from ([`Lab::WORLD_SOURCES`]);
//!   it routes the endpoint prefixes through the node, and the node routes its sources back.
//! - The overlay peer (the node file's first overlay peer): `eth0` on the underlay /24, a
//!   plain Linux VXLAN device `vx0` (the node's VNI and port, remote = this node, MAC
//!   derived from its address as sluice's own devices do), the first host of each of its
//!   prefixes, routes to the endpoints' prefixes through the router address on-link.
//!
//! Namespaces are named `<prefix>-node`, `<prefix>-world`, `<prefix>-peer`,
//! `<prefix>-ep<N>`; [`Lab`] deletes them on drop (which removes every device in them).
//! Duplicate address detection is off everywhere, so addresses work at once.

use sluice::maps::fwd::overlay_mac;
use sluice::model::{Cidr, NodeConfig};
use sluice::netlink::{sysctl, NetNs, Netlink, NetlinkError, Route, Vxlan};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A built lab. Dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Lab {
    pub node: NetNs,
    pub world: NetNs,
    /// The overlay peer, when the node has one.
    pub peer: Option<NetNs>,
    /// One per endpoint, in the node file's (name) order.
    pub endpoints: Vec<NetNs>,
    /// The node's address toward the world (IPv4, IPv6).
    pub node_net0: (Ipv4Addr, Option<Ipv6Addr>),
    /// The world's own address on the link (IPv4, IPv6).
    pub world_addr: (Ipv4Addr, Option<Ipv6Addr>),
    /// The peer's pod addresses (IPv4, IPv6).
    pub peer_pods: (Option<Ipv4Addr>, Option<Ipv6Addr>),
}

/// What went wrong building the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("building the lab: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("the lab needs {0}")]
    Config(String),
}

fn disable_dad(ns: &NetNs) -> Result<(), NetlinkError> {
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        sysctl::write(Some(ns), key, "0")?;
    }
    Ok(())
}

fn cidr(addr: IpAddr, len: u8) -> Cidr {
    Cidr::new_truncating(addr, len).unwrap_or_else(|_| Cidr::host(addr))
}

/// The first host of a prefix (`10.0.2.0/24` → `10.0.2.1`; this lab uses `.7`).
fn pod_in(c: &Cidr) -> IpAddr {
    match c.addr() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | 7)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | 7)),
    }
}

impl Lab {
    /// Where the world speaks from: an ordinary source, and one in the default node's
    /// prefilter deny list.
    pub const WORLD_SOURCES: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 51, 100, 20), Ipv4Addr::new(203, 0, 113, 9)];

    /// Build the namespaces and devices for `cfg` (sluice's own devices, programs and
    /// maps are not part of the lab: the caller loads and attaches the node).
    pub fn build(cfg: &NodeConfig, prefix: &str) -> Result<Lab, LabError> {
        let node_v4 = cfg
            .host_addresses
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| LabError::Config("an IPv4 host address (spec.hostAddresses)".into()))?;
        let node_v6 = cfg.host_addresses.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        let router4 = cfg.router.ipv4.ok_or_else(|| LabError::Config("spec.router.ipv4".into()))?;
        let node = NetNs::create(&format!("{prefix}-node"))?;
        let world = NetNs::create(&format!("{prefix}-world"))?;
        let mut lab = Lab {
            node,
            world,
            peer: None,
            endpoints: Vec::new(),
            node_net0: (node_v4, node_v6),
            world_addr: (
                Ipv4Addr::from(u32::from(node_v4) & !0xff | 100),
                node_v6.map(|a| Ipv6Addr::from(u128::from(a) & !0xffff | 0x100)),
            ),
            peer_pods: (None, None),
        };
        for ns in [&lab.node, &lab.world] {
            disable_dad(ns)?;
        }
        let nl = Netlink::open_in(&lab.node)?;
        nl.set_up(nl.ifindex("lo")?)?;

        // Endpoints.
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            let ns = NetNs::create(&format!("{prefix}-ep{}", i + 1))?;
            disable_dad(&ns)?;
            let host = nl.create_veth(&ep.interface, "eth0", Some(&ns))?;
            nl.set_up(host)?;
            let host_mac = nl.link_info(host)?.mac.unwrap_or_default();
            let enl = Netlink::open_in(&ns)?;
            enl.set_up(enl.ifindex("lo")?)?;
            let eth0 = enl.ifindex("eth0")?;
            enl.set_up(eth0)?;
            for addr in ep.addresses() {
                enl.add_address(eth0, addr, if addr.is_ipv4() { 32 } else { 128 })?;
            }
            let routers = [cfg.router.ipv4.map(IpAddr::V4), cfg.router.ipv6.map(IpAddr::V6)];
            for gw in routers.into_iter().flatten() {
                if !ep.addresses().any(|a| a.is_ipv4() == gw.is_ipv4()) {
                    continue;
                }
                enl.add_neighbor(eth0, gw, host_mac)?;
                let default = cidr(
                    if gw.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() },
                    0,
                );
                enl.add_route(&Route::new(default).via(gw).dev(eth0).onlink())?;
            }
            lab.endpoints.push(ns);
        }

        // The world.
        let net0 = nl.create_veth("net0", "eth0", Some(&lab.world))?;
        nl.set_up(net0)?;
        nl.add_address(net0, node_v4.into(), 24)?;
        let wnl = Netlink::open_in(&lab.world)?;
        wnl.set_up(wnl.ifindex("lo")?)?;
        let weth = wnl.ifindex("eth0")?;
        wnl.set_up(weth)?;
        wnl.add_address(weth, lab.world_addr.0.into(), 24)?;
        for src in Lab::WORLD_SOURCES {
            wnl.add_address(weth, src.into(), 32)?;
            nl.add_route(&Route::new(Cidr::host(src.into())).via(lab.world_addr.0.into()).dev(net0))?;
        }
        let mut pod_prefixes: Vec<Cidr> = Vec::new();
        for ep in &cfg.endpoints {
            for a in ep.addresses() {
                pod_prefixes.push(Cidr::host(a));
            }
        }
        for c in &pod_prefixes {
            if c.addr().is_ipv4() {
                wnl.add_route(&Route::new(*c).via(node_v4.into()).dev(weth))?;
            }
        }
        if let (Some(n6), Some(w6)) = (node_v6, lab.world_addr.1) {
            nl.add_address(net0, n6.into(), 64)?;
            wnl.add_address(weth, w6.into(), 64)?;
            for c in pod_prefixes.iter().filter(|c| !c.addr().is_ipv4()) {
                wnl.add_route(&Route::new(*c).via(n6.into()).dev(weth))?;
            }
        }
        let _ = router4;

        // The overlay peer.
        if let Some(o) = &cfg.overlay {
            if let Some(p) = o.peers.first() {
                let peer = NetNs::create(&format!("{prefix}-peer"))?;
                disable_dad(&peer)?;
                let underlay = nl.create_veth("underlay0", "eth0", Some(&peer))?;
                nl.set_up(underlay)?;
                nl.add_address(underlay, o.local.into(), 24)?;
                let pnl = Netlink::open_in(&peer)?;
                pnl.set_up(pnl.ifindex("lo")?)?;
                let peth = pnl.ifindex("eth0")?;
                pnl.set_up(peth)?;
                pnl.add_address(peth, p.address.into(), 24)?;
                let vx = pnl.create_vxlan(
                    &Vxlan::new("vx0", o.vni)
                        .remote(o.local.into())
                        .local(p.address.into())
                        .port(o.port)
                        .dev(peth)
                        .learning(false),
                )?;
                pnl.set_mac(vx, overlay_mac(p.address))?;
                pnl.set_up(vx)?;
                // Service backends that live on the peer: its overlay device answers for them.
                let remote_backends: std::collections::BTreeSet<IpAddr> = cfg
                    .services
                    .iter()
                    .flat_map(|s| s.frontends.iter())
                    .flat_map(|f| f.backends.iter().map(|b| b.address))
                    .filter(|a| p.prefixes.iter().any(|c| c.contains(*a)))
                    .collect();
                for a in remote_backends {
                    pnl.add_address(vx, a, if a.is_ipv4() { 32 } else { 128 })?;
                }
                for c in &p.prefixes {
                    let pod = pod_in(c);
                    pnl.add_address(vx, pod, c.len())?;
                    match pod {
                        IpAddr::V4(a) => lab.peer_pods.0 = Some(a),
                        IpAddr::V6(a) => lab.peer_pods.1 = Some(a),
                    }
                }
                for gw in cfg.router.addresses() {
                    pnl.add_neighbor(vx, gw, overlay_mac(o.local))?;
                    for c in pod_prefixes.iter().filter(|c| c.addr().is_ipv4() == gw.is_ipv4()) {
                        pnl.add_route(&Route::new(*c).via(gw).dev(vx).onlink())?;
                    }
                }
                lab.peer = Some(peer);
            }
        }
        Ok(lab)
    }

    /// The namespace of endpoint `index` (1-based, the node file's order).
    pub fn endpoint(&self, index: usize) -> Option<&NetNs> {
        self.endpoints.get(index.checked_sub(1)?)
    }
}
