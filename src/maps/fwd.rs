//! Forwarding maps: where a packet an endpoint sent goes once its egress policy allowed it.
//!
//! - **`lxc`** (hash): the endpoints of this node by address. A hit means "deliver
//!   locally": the `from-endpoint` program rewrites the Ethernet header ([`lxc_value`]),
//!   decrements the TTL and redirects the packet to the egress of the destination's
//!   host-side veth, where that endpoint's `to-endpoint` program enforces its ingress
//!   policy. The host stack (routing, netfilter, neighbor tables) is never involved.
//!   Written when the node is wired to its devices ([`crate::node::forward`]): it needs
//!   ifindexes and MAC addresses that only exist then.
//! - **`tunnel`** (LPM trie): prefixes of peer nodes reached through the VXLAN overlay
//!   ([`tunnel_value`]); written from the node file's `overlay.peers`.
//! - **`fwd_cfg`** (one array value): which forwarding steps are on ([`fwd_cfg`]). A node
//!   that is loaded but not wired has every bit clear, so its endpoints hand allowed
//!   packets to the stack (`TC_ACT_OK`), as before any forwarding existed.
//!
//! Addresses are keyed as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`), so one map serves both families.

use super::writes::MapWrites;
use super::MapDef;
use crate::maps::names as map;
use sluice_verifier_sim::spec::MapKind;
use std::net::{IpAddr, Ipv4Addr};

/// The 16-byte key of an address: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
pub fn addr_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The mapped-IPv4 prefix's third word (`0000ffff` in network order) as a little-endian
/// `u32` load sees it: what the program stores before an IPv4 address to form a key.
pub const V4_MAPPED_WORD: u32 = u32::from_le_bytes([0, 0, 0xff, 0xff]);

layout! {
    /// Layout of an `lxc` value: where a local endpoint is and the Ethernet header that
    /// reaches it.
    pub struct LxcValue in lxc_value {
        /// The host-side veth's ifindex (the redirect target).
        ifindex: u32 => IFINDEX,
        /// The endpoint's index (as in `ep_config`).
        ep: u32 => EP,
        /// The endpoint's own MAC (the container side of the veth): the new destination.
        mac: [u8; 6] => MAC,
        /// The host side's MAC: the new source, as if routed by the node.
        node_mac: [u8; 6] => NODE_MAC,
        _pad: [u8; 4],
    }
}

layout! {
    /// Layout of a `tunnel` key: `{u32 prefixlen (host order); addr[16]}` (IPv4 prefixes as
    /// mapped addresses, their length plus 96).
    pub struct TunnelKey in tunnel_key {
        prefixlen: u32 => PREFIXLEN,
        addr: [u8; 16] => ADDR,
    }
}

layout! {
    /// Layout of a `tunnel` value: the peer node and the inner Ethernet header.
    pub struct TunnelValue in tunnel_value {
        /// The peer's underlay IPv4 address, host order (as `bpf_tunnel_key.remote_ipv4`).
        remote: u32 => REMOTE,
        /// The VXLAN network identifier.
        vni: u32 => VNI,
        /// Inner destination MAC: the peer's overlay device.
        dmac: [u8; 6] => DMAC,
        /// Inner source MAC: this node's overlay device.
        smac: [u8; 6] => SMAC,
        /// This node's overlay device (the redirect target).
        ifindex: u32 => IFINDEX,
    }
}

layout! {
    /// Layout of the one `fwd_cfg` value.
    pub struct FwdCfg in fwd_cfg {
        flags: u32 => FLAGS,
        _pad: u32,
    }
    /// Deliver to local endpoints found in `lxc` by redirect.
    pub const LOCAL: u32 = 1;
    /// Send to overlay peers found in `tunnel`.
    pub const OVERLAY: u32 = 2;
    /// Route everything else with `bpf_fib_lookup` and redirect to the egress device.
    pub const FIB: u32 = 4;
    /// Cluster mode: the overlay carries identities (the tunnel id is the source endpoint's
    /// identity; `from-overlay` reads it back; see [`crate::codegen::overlay`]).
    pub const IDENTITY: u32 = 8;
}

/// `struct bpf_fib_lookup` (64 bytes): the fields the programs use.
pub mod fib {
    use sluice_verifier_sim::uapi::BpfFibLookup;
    use std::mem::{offset_of, size_of};
    pub const FAMILY: usize = offset_of!(BpfFibLookup, family);
    pub const L4_PROTOCOL: usize = offset_of!(BpfFibLookup, l4_protocol);
    pub const SPORT: usize = offset_of!(BpfFibLookup, sport);
    pub const DPORT: usize = offset_of!(BpfFibLookup, dport);
    pub const TOT_LEN: usize = offset_of!(BpfFibLookup, tot_len);
    pub const IFINDEX: usize = offset_of!(BpfFibLookup, ifindex);
    /// `tos` shares its union with `flowinfo`.
    pub const TOS: usize = offset_of!(BpfFibLookup, flowinfo);
    /// `ipv4_src` shares its union with `ipv6_src`.
    pub const SRC: usize = offset_of!(BpfFibLookup, ipv6_src);
    pub const DST: usize = offset_of!(BpfFibLookup, ipv6_dst);
    pub const SMAC: usize = offset_of!(BpfFibLookup, smac);
    pub const DMAC: usize = offset_of!(BpfFibLookup, dmac);
    pub const SIZE: usize = size_of::<BpfFibLookup>();
    pub use crate::uapi::{AF_INET, AF_INET6};
    pub use crate::uapi::{
        BPF_FIB_LKUP_RET_NO_NEIGH as RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS as RET_SUCCESS,
    };
}

/// `struct bpf_tunnel_key`.
pub mod tunnel_key_struct {
    use sluice_verifier_sim::uapi::BpfTunnelKey;
    use std::mem::{offset_of, size_of};
    pub const TUNNEL_ID: usize = offset_of!(BpfTunnelKey, tunnel_id);
    /// `remote_ipv4` shares its union with `remote_ipv6`.
    pub const REMOTE_IPV4: usize = offset_of!(BpfTunnelKey, remote_ipv6);
    pub const TOS: usize = offset_of!(BpfTunnelKey, tunnel_tos);
    pub const TTL: usize = offset_of!(BpfTunnelKey, tunnel_ttl);
    pub const SIZE: usize = size_of::<BpfTunnelKey>();
}

/// Capacities of the forwarding maps.
pub const LXC_MAX: u32 = 65_536;
pub const TUNNEL_MAX: u32 = 16_384;

/// The forwarding maps.
pub fn map_defs() -> Vec<MapDef> {
    let no_prealloc = super::F_NO_PREALLOC;
    vec![
        // Keyed by the endpoint's address (IPv4 as an IPv4-mapped IPv6 address).
        MapDef::of::<[u8; 16], LxcValue>(map::LXC, MapKind::Hash, LXC_MAX, no_prealloc),
        MapDef::of::<TunnelKey, TunnelValue>(map::TUNNEL, MapKind::LpmTrie, TUNNEL_MAX, no_prealloc),
        MapDef::of::<u32, FwdCfg>(map::FWD_CFG, MapKind::Array, 1, 0),
    ]
}

/// One local endpoint's `lxc` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LxcEntry {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub ep: u16,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
}

impl LxcEntry {
    pub fn value(&self) -> [u8; lxc_value::SIZE] {
        let mut v = [0u8; lxc_value::SIZE];
        v[lxc_value::IFINDEX..][..4].copy_from_slice(&self.ifindex.to_le_bytes());
        v[lxc_value::EP..][..2].copy_from_slice(&self.ep.to_le_bytes());
        v[lxc_value::MAC..][..6].copy_from_slice(&self.mac);
        v[lxc_value::NODE_MAC..][..6].copy_from_slice(&self.node_mac);
        v
    }
}

/// `lxc` writes for `entries`.
pub fn lxc_writes(entries: &[LxcEntry]) -> MapWrites {
    let mut w =
        MapWrites { map: map::LXC, key_size: 16, value_size: lxc_value::SIZE, ..MapWrites::default() };
    for e in entries {
        w.put(&addr_key(e.addr), &e.value());
    }
    w
}

/// One overlay route: a peer node's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEntry {
    pub prefix: IpAddr,
    pub len: u8,
    pub remote: Ipv4Addr,
    pub vni: u32,
    pub peer_mac: [u8; 6],
    pub local_mac: [u8; 6],
    pub ifindex: u32,
}

impl TunnelEntry {
    pub fn key(&self) -> [u8; tunnel_key::SIZE] {
        let bits = match self.prefix {
            IpAddr::V4(_) => u32::from(self.len) + 96,
            IpAddr::V6(_) => u32::from(self.len),
        };
        let mut k = [0u8; tunnel_key::SIZE];
        k[..4].copy_from_slice(&bits.to_le_bytes());
        k[tunnel_key::ADDR..].copy_from_slice(&addr_key(self.prefix));
        k
    }

    pub fn value(&self) -> [u8; tunnel_value::SIZE] {
        let mut v = [0u8; tunnel_value::SIZE];
        v[tunnel_value::REMOTE..][..4].copy_from_slice(&u32::from(self.remote).to_le_bytes());
        v[tunnel_value::VNI..][..4].copy_from_slice(&self.vni.to_le_bytes());
        v[tunnel_value::DMAC..][..6].copy_from_slice(&self.peer_mac);
        v[tunnel_value::SMAC..][..6].copy_from_slice(&self.local_mac);
        v[tunnel_value::IFINDEX..][..4].copy_from_slice(&self.ifindex.to_le_bytes());
        v
    }
}

/// `tunnel` writes for `entries`.
pub fn tunnel_writes(entries: &[TunnelEntry]) -> MapWrites {
    let mut w = MapWrites {
        map: map::TUNNEL,
        key_size: tunnel_key::SIZE,
        value_size: tunnel_value::SIZE,
        ..MapWrites::default()
    };
    for e in entries {
        w.put(&e.key(), &e.value());
    }
    w
}

/// The `fwd_cfg` write for `flags`.
pub fn fwd_cfg_writes(flags: u32) -> MapWrites {
    let mut w =
        MapWrites { map: map::FWD_CFG, key_size: 4, value_size: fwd_cfg::SIZE, ..MapWrites::default() };
    let mut v = [0u8; fwd_cfg::SIZE];
    v[..4].copy_from_slice(&flags.to_le_bytes());
    w.put(&0u32.to_le_bytes(), &v);
    w
}

/// The MAC sluice gives a node's overlay device, derived from its underlay IPv4 address
/// (`0a:58:a.b.c.d`, locally administered): peers compute each other's without exchanging
/// anything, so the inner frames they send are addressed to the receiving device.
pub fn overlay_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_ipv4_into_ipv6() {
        let k = addr_key("10.0.1.10".parse().unwrap());
        assert_eq!(&k[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k[12..], &[10, 0, 1, 10]);
        assert_eq!(u32::from_le_bytes(k[8..12].try_into().unwrap()), V4_MAPPED_WORD);
    }

    #[test]
    fn tunnel_keys_carry_mapped_prefix_lengths() {
        let e = TunnelEntry {
            prefix: "10.0.2.0".parse().unwrap(),
            len: 24,
            remote: "172.16.0.2".parse().unwrap(),
            vni: 2,
            peer_mac: overlay_mac("172.16.0.2".parse().unwrap()),
            local_mac: [0; 6],
            ifindex: 9,
        };
        assert_eq!(u32::from_le_bytes(e.key()[..4].try_into().unwrap()), 120);
        assert_eq!(e.value()[tunnel_value::DMAC..][..6], [0x0a, 0x58, 172, 16, 0, 2]);
        assert_eq!(u32::from_le_bytes(e.value()[..4].try_into().unwrap()), 0xac10_0002);
    }
}
