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
