//! Probe frames derived from any deny set (used by `sluice demo` on the default node): for
//! every prefix its first and last address, and the addresses just outside it, each with
//! the verdict the set itself gives; plus frames whose verdict no address decides.

use super::{Case, Output};
use crate::maps::prefilter::{mask128, mask32, DenySet, Reason};
use crate::packet::PacketBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn case(name: String, packet: Vec<u8>, reason: Reason) -> Case {
    Case {
        name,
        program: crate::codegen::prefilter::NAME,
        packet,
        verdict: reason.verdict() as u32,
        counters: BTreeMap::from([(("pf_stats", reason as u32), 1)]),
        output: Output::Unchanged,
    }
}

/// An IPv4 UDP frame from `src`.
pub fn udp4(src: u32) -> Vec<u8> {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
        .ipv4(Ipv4Addr::from(src), Ipv4Addr::new(10, 0, 0, 2))
        .udp(40000, 53)
        .payload(b"probe")
        .build()
}

/// An IPv6 UDP frame from `src`.
pub fn udp6(src: u128) -> Vec<u8> {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
        .ipv6(Ipv6Addr::from(src), "fd00::2".parse().expect("a valid literal"))
        .udp(40000, 53)
        .payload(b"probe")
        .build()
}

/// Probes for a deny set.
pub fn prefilter_probes(set: &DenySet) -> Vec<Case> {
    let mut v4: BTreeSet<u32> = BTreeSet::new();
    for &(addr, len) in &set.v4 {
        let last = addr | !mask32(len);
        v4.extend([addr, last, addr.wrapping_sub(1), last.wrapping_add(1)]);
    }
    let mut v6: BTreeSet<u128> = BTreeSet::new();
    for &(addr, len) in &set.v6 {
        let last = addr | !mask128(len);
        v6.extend([addr, last, addr.wrapping_sub(1), last.wrapping_add(1)]);
    }
    let mut out = Vec::new();
    for a in v4 {
        let reason = if set.denies_v4(a) { Reason::DenyV4 } else { Reason::PassV4 };
        out.push(case(format!("ipv4 from {}", Ipv4Addr::from(a)), udp4(a), reason));
    }
    for a in v6 {
        let reason = if set.denies_v6(a) { Reason::DenyV6 } else { Reason::PassV6 };
        out.push(case(format!("ipv6 from {}", Ipv6Addr::from(a)), udp6(a), reason));
    }
    let arp = PacketBuilder::ethernet(SRC_MAC, DST_MAC).ethertype_raw(0x0806, &[0u8; 28]).build();
    out.push(case("arp".into(), arp, Reason::NotIp));
    let v4 = udp4(0xc000_0201);
    out.push(case("ipv4 cut inside the header".into(), v4[..14 + 12].to_vec(), Reason::TruncatedIpv4));
    let v6 = udp6(0x2001_0db8 << 96);
    out.push(case("ipv6 cut inside the header".into(), v6[..14 + 30].to_vec(), Reason::TruncatedIpv6));
    out
}

/// One endpoint-policy flow to judge: the endpoint and direction, the program that judges
/// it, and the flow.
#[derive(Debug, Clone)]
pub struct PolicyProbe {
    pub endpoint: String,
    pub direction: crate::model::Direction,
    pub program: String,
    pub key: crate::policy::FlowKey,
}

/// The frame of a flow: a TCP SYN, a UDP datagram, an SCTP header, or an ICMP message
/// whose type is the flow's destination port and whose id is its source port.
pub fn flow_frame(k: &crate::policy::FlowKey) -> Vec<u8> {
    frame_with_flags(k, crate::packet::TcpFlags::SYN)
}

/// The frame of a reply to a flow: for TCP a SYN-ACK, otherwise as [`flow_frame`].
pub fn reply_frame(k: &crate::policy::FlowKey) -> Vec<u8> {
    use crate::packet::TcpFlags;
    frame_with_flags(k, TcpFlags::SYN | TcpFlags::ACK)
}

fn frame_with_flags(k: &crate::policy::FlowKey, flags: crate::packet::TcpFlags) -> Vec<u8> {
    use std::net::IpAddr;
    let sctp =
        [(k.sport >> 8) as u8, k.sport as u8, (k.dport >> 8) as u8, k.dport as u8, 0, 0, 0, 0, 0, 0, 0, 0];
    let eth = PacketBuilder::ethernet(SRC_MAC, DST_MAC);
    match (k.src, k.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = eth.ipv4(s, d);
            match k.proto {
                6 => ip.tcp(k.sport, k.dport, flags, 1, 0).build(),
                17 => ip.udp(k.sport, k.dport).payload(b"x").build(),
                132 => ip.raw_l4(132, &sctp).build(),
                _ => ip.icmpv4(k.dport as u8, 0, u32::from(k.sport) << 16).build(),
            }
        }
        (s, d) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            let ip = eth.ipv6(to6(s), to6(d));
            match k.proto {
                6 => ip.tcp(k.sport, k.dport, flags, 1, 0).build(),
                17 => ip.udp(k.sport, k.dport).payload(b"x").build(),
                132 => ip.raw_l4(132, &sctp).build(),
                _ => ip.icmpv6(k.dport as u8, 0, u32::from(k.sport) << 16).build(),
            }
        }
    }
}

/// Flows between every endpoint (each of its addresses) and a set of peers (the other
/// endpoints, the host, `extra_peers`), both directions, ICMP echo, TCP and UDP on each of
/// `ports`, and SCTP. Source ports (ICMP ids) count up from `*sport`, so no flow is ever
/// the reply of another and conntrack leaves every verdict to policy.
pub fn policy_flows(
    cfg: &crate::model::NodeConfig,
    extra_peers: &[std::net::IpAddr],
    ports: &[u16],
    sport: &mut u16,
) -> Vec<PolicyProbe> {
    use crate::model::Direction;
    let mut peers: Vec<std::net::IpAddr> = extra_peers.to_vec();
    peers.extend(cfg.host_addresses.iter().copied());
    for e in &cfg.endpoints {
        peers.extend(e.addresses());
    }
    let mut out = Vec::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        for own in ep.addresses() {
            for &peer in peers.iter().filter(|p| p.is_ipv4() == own.is_ipv4() && **p != own) {
                let (icmp, echo) = if own.is_ipv4() { (1, 8) } else { (58, 128) };
                let mut l4: Vec<(u8, u16)> = vec![(icmp, echo)];
                for &p in ports {
                    l4.extend([(6, p), (17, p)]);
                }
                l4.push((132, 9000));
                for (proto, dport) in l4 {
                    for direction in [Direction::Ingress, Direction::Egress] {
                        *sport = sport.wrapping_add(1).max(10_000);
                        let (src, dst, program) = match direction {
                            Direction::Ingress => (peer, own, format!("to_ep_{}", i + 1)),
                            Direction::Egress => (own, peer, format!("from_ep_{}", i + 1)),
                        };
                        out.push(PolicyProbe {
                            endpoint: ep.name.clone(),
                            direction,
                            program,
                            key: crate::policy::FlowKey { src, dst, proto, sport: *sport, dport },
                        });
                    }
                }
            }
        }
    }
    out
}
