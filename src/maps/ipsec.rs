//! The IPsec mode's maps (`codegen::ipsec`): which node a pod address lives on, each
//! peer node's id and newest key, this node's key and strictness, and the verdict counters.
//!
//! IPv4 only (pod prefixes and node addresses): IPv6 pod traffic is not marked (counted
//! `not_ipv4`), as Cilium's IPsec also needs IPv4 node addresses.

use super::writes::MapWrites;
use super::{u32_key, MapDef, F_NO_PREALLOC};
use crate::encrypt::ipsec::IpsecPeer;
use crate::model::Cidr;
use sluice_verifier_sim::spec::MapKind;
use std::net::{IpAddr, Ipv4Addr};

/// Pod prefix (LPM) -> the node address it lives on.
pub const PODS: &str = super::names::IPSEC_PODS;
/// Node address -> `{node id, newest key}` ([`NodeValue`]).
pub const NODES: &str = super::names::IPSEC_NODES;
/// The one [`IpsecCfg`]: this node's newest key, strict mode.
pub const CFG: &str = super::names::IPSEC_CFG;
/// Per-CPU `u64` per [`Reason`].
pub const STATS: &str = super::names::IPSEC_STATS;
/// Every map of the IPsec programs.
pub const MAPS: [&str; 4] = [PODS, NODES, CFG, STATS];

layout! {
    /// `ipsec_pods` key: `{u32 prefixlen (host order); addr[4]}` (an LPM trie key).
    pub struct PodKey in pod_key {
        prefixlen: u32 => PREFIXLEN,
        addr: [u8; 4] => ADDR,
    }
}

layout! {
    /// `ipsec_pods` value: the node's underlay IPv4 address, network order (as in the
    /// `ipsec_nodes` key and in the packet).
    pub struct PodValue in pod_value {
        node: [u8; 4] => NODE,
    }
}

layout! {
    /// `ipsec_nodes` value (Cilium's `node_value`: `{u16 id; u8 spi}`).
    pub struct NodeValue in node_value {
        /// This node's number for the peer (bits 31..16 of the marks).
        node_id: u16 => NODE_ID,
        /// The peer's newest key (SPI 1..=15; 0: it has none).
        spi: u8 => SPI,
        _pad: u8,
    }
}

layout! {
    /// The one `ipsec_cfg` value (Cilium's `cilium_encrypt_state` plus strict mode).
    pub struct IpsecCfg in ipsec_cfg {
        /// This node's newest key (0: none yet: nothing is marked).
        local_spi: u8 => LOCAL_SPI,
        /// Non-zero: pod traffic to a node without a usable key is dropped, not sent plain.
        strict: u8 => STRICT,
        _pad: [u8; 2],
    }
}

/// Why a packet got its verdict (the `ipsec_stats` index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Reason {
    /// Egress to a known node with a common key: marked for encryption.
    Encrypt = 0,
    /// Ingress ESP from a known node: marked for decryption.
    Decrypt = 1,
    /// Not IPv4 (or not a well-formed IPv4 header): untouched.
    NotIpv4 = 2,
    /// Shorter than Ethernet + an IPv4 header: untouched.
    Truncated = 3,
    /// Egress to an address no peer node holds: untouched.
    NotRemote = 4,
    /// Ingress that is not ESP: untouched.
    NotEsp = 5,
    /// Egress to a pod of a node not (yet) in `ipsec_nodes`, strict: dropped.
    UnknownNodeDropped = 6,
    /// The same, not strict: sent unmarked (plain).
    UnknownNodePlain = 7,
    /// Egress to a known node but no key both have (either side has none), strict: dropped.
    NoCommonKeyDropped = 8,
    /// The same, not strict: sent unmarked (plain).
    NoCommonKeyPlain = 9,
    /// Ingress ESP from an address no peer node has, strict: dropped.
    EspUnknownNodeDropped = 10,
    /// The same, not strict: left unmarked (xfrm finds no state; the kernel drops it).
    EspUnknownNodePlain = 11,
}

/// `TC_ACT_OK`.
pub const PASS: i32 = 0;
/// `TC_ACT_SHOT`.
pub const DROP: i32 = 2;

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Encrypt,
        Reason::Decrypt,
        Reason::NotIpv4,
        Reason::Truncated,
        Reason::NotRemote,
        Reason::NotEsp,
        Reason::UnknownNodeDropped,
        Reason::UnknownNodePlain,
        Reason::NoCommonKeyDropped,
        Reason::NoCommonKeyPlain,
        Reason::EspUnknownNodeDropped,
        Reason::EspUnknownNodePlain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Encrypt => "encrypt",
            Reason::Decrypt => "decrypt",
            Reason::NotIpv4 => "not_ipv4",
            Reason::Truncated => "truncated",
            Reason::NotRemote => "not_remote",
            Reason::NotEsp => "not_esp",
            Reason::UnknownNodeDropped => "unknown_node_dropped",
            Reason::UnknownNodePlain => "unknown_node_plain",
            Reason::NoCommonKeyDropped => "no_common_key_dropped",
            Reason::NoCommonKeyPlain => "no_common_key_plain",
            Reason::EspUnknownNodeDropped => "esp_unknown_node_dropped",
            Reason::EspUnknownNodePlain => "esp_unknown_node_plain",
        }
    }

    /// `TC_ACT_SHOT` for the strict drops, `TC_ACT_OK` otherwise.
    pub fn verdict(self) -> i32 {
        match self {
            Reason::UnknownNodeDropped | Reason::NoCommonKeyDropped | Reason::EspUnknownNodeDropped => DROP,
            _ => PASS,
        }
    }
}

/// The maps, sized for `nodes` peers of up to `prefixes` pod prefixes in all.
pub fn map_defs(nodes: u32, prefixes: u32) -> Vec<MapDef> {
    vec![
        MapDef::of::<PodKey, PodValue>(PODS, MapKind::LpmTrie, prefixes.max(1), F_NO_PREALLOC),
        MapDef::of::<[u8; 4], NodeValue>(NODES, MapKind::Hash, nodes.max(1), 0),
        MapDef::of::<u32, IpsecCfg>(CFG, MapKind::Array, 1, 0),
        MapDef::of::<u32, u64>(STATS, MapKind::PerCpuArray, Reason::ALL.len() as u32, 0),
    ]
}

fn v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(v) => v.to_ipv4_mapped(),
    }
}

/// What the programs read for this node (`local_spi`, `strict`) and its peers, each with
/// the newest key it has published. Peers or prefixes that are not IPv4 are left out.
pub fn writes(local_spi: u8, strict: bool, peers: &[(IpsecPeer, u8)]) -> Vec<MapWrites> {
    let mut pods = MapWrites::new(PODS, pod_key::SIZE, pod_value::SIZE);
    let mut nodes = MapWrites::new(NODES, 4, node_value::SIZE);
    for (peer, spi) in peers {
        let Some(node) = v4(peer.address) else { continue };
        let mut value = [0u8; node_value::SIZE];
        value[node_value::NODE_ID..][..2].copy_from_slice(&peer.node_id.to_le_bytes());
        value[node_value::SPI] = *spi;
        nodes.put(&node.octets(), &value);
        for prefix in &peer.prefixes {
            if let Some(key) = pod_key_bytes(prefix) {
                pods.put(&key, &node.octets());
            }
        }
    }
    let mut cfg = MapWrites::new(CFG, 4, ipsec_cfg::SIZE);
    let mut value = [0u8; ipsec_cfg::SIZE];
    value[ipsec_cfg::LOCAL_SPI] = local_spi;
    value[ipsec_cfg::STRICT] = u8::from(strict);
    cfg.put(&u32_key(0), &value);
    vec![pods, nodes, cfg]
}

/// The `ipsec_pods` key of an IPv4 prefix.
pub fn pod_key_bytes(prefix: &Cidr) -> Option<[u8; pod_key::SIZE]> {
    let IpAddr::V4(a) = prefix.addr() else { return None };
    let mut key = [0u8; pod_key::SIZE];
    key[pod_key::PREFIXLEN..][..4].copy_from_slice(&u32::from(prefix.len()).to_le_bytes());
    key[pod_key::ADDR..][..4].copy_from_slice(&a.octets());
    Some(key)
}
