//! Golden packets for the XDP prefilter, over the deny set of [`FIXTURE`].
//!
//! Contract:
//! - [`cases`] is the case table: every case is named, built with
//!   [`PacketBuilder`], and expects the verdict of one [`Reason`], exactly one increment of
//!   that reason's `pf_stats` element and the frame unchanged (the prefilter never rewrites).
//! - [`oracle`] is the reference answer for any frame: the prefilter's parse rules written
//!   plainly, with the address verdict from [`DenySet::denies_v4`] / [`DenySet::denies_v6`].
//!   The tests check that every case's written expectation agrees with it, so a wrong line in
//!   the table and a wrong rule in the oracle cannot both go unnoticed; random frames are then
//!   judged by the oracle alone.
//!
//! The parse rules: an Ethernet header (14 bytes); up to two VLAN tags (TPID 0x8100 or
//! 0x88a8, in any order; a third TPID is [`Reason::VlanTooDeep`] whether or not its tag is
//! present); then IPv4 (20 bytes present, version 4, IHL >= 5, the whole header with options
//! present) or IPv6 (40 bytes present, version 6; extension headers are not walked); any
//! other ethertype is [`Reason::NotIp`]. The verdict is by source address only, so
//! fragments, options and extension headers do not change it.

use super::{Case, Output};
use crate::maps::prefilter::{DenySet, Reason};
use crate::model::NodeConfig;
use crate::packet::{ip_proto, ExtHeader, PacketBuilder, PayloadBuilder};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use Reason::*;

/// The node file the cases are written against.
pub const FIXTURE: &str = include_str!("prefilter.yaml");
/// How [`FIXTURE`] is named in errors.
pub const FIXTURE_ORIGIN: &str = "golden/prefilter.yaml";

/// Header sizes, as the parse rules name them.
pub const ETH: usize = 14;
pub const TAG: usize = 4;
pub const IPV4: usize = 20;
pub const IPV6: usize = 40;
pub const UDP: usize = 8;
/// VLAN tags the prefilter reads through.
pub const MAX_TAGS: usize = 2;

const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_LLDP: u16 = 0x88cc;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const PAYLOAD: &[u8] = b"golden";

/// The deny set of a node config.
pub fn deny_set(cfg: &NodeConfig) -> DenySet {
    DenySet::new(cfg.prefilter.deny.iter().map(crate::node::prefix_of))
}

/// The reason the prefilter must give `frame` under `set` (see the module header).
pub fn oracle(set: &DenySet, frame: &[u8]) -> Reason {
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    if frame.len() < ETH {
        return Reason::TruncatedEthernet;
    }
    let mut ethertype = be16(ETH - 2);
    let mut l3 = ETH;
    let mut tags = 0;
    while ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        if tags == MAX_TAGS {
            return Reason::VlanTooDeep;
        }
        tags += 1;
        l3 += TAG;
        if frame.len() < l3 {
            return Reason::TruncatedVlan;
        }
        ethertype = be16(l3 - 2);
    }
    let ip = &frame[l3..];
    match ethertype {
        ETHERTYPE_IPV4 => {
            if ip.len() < IPV4 {
                return Reason::TruncatedIpv4;
            }
            let (version, ihl) = (ip[0] >> 4, usize::from(ip[0] & 0x0f));
            if version != 4 || ihl < 5 {
                return Reason::MalformedIpv4;
            }
            if ip.len() < ihl * 4 {
                return Reason::TruncatedIpv4;
            }
            let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
            if set.denies_v4(src) {
                Reason::DenyV4
            } else {
                Reason::PassV4
            }
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6 {
                return Reason::TruncatedIpv6;
            }
            if ip[0] >> 4 != 6 {
                return Reason::MalformedIpv6;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            if set.denies_v6(u128::from_be_bytes(src)) {
                Reason::DenyV6
            } else {
                Reason::PassV6
            }
        }
        _ => Reason::NotIp,
    }
}

/// A prefilter case expecting `reason`: its verdict, one count of it, the frame unchanged.
pub fn case(name: impl Into<String>, packet: Vec<u8>, reason: Reason) -> Case {
    Case {
        name: name.into(),
        program: crate::codegen::prefilter::NAME,
        packet,
        verdict: reason.verdict() as u32,
        counters: BTreeMap::from([(("pf_stats", reason as u32), 1)]),
        output: Output::Unchanged,
    }
}

/// The reason a prefilter case expects (the one `pf_stats` element it counts).
pub fn expected_reason(case: &Case) -> Option<Reason> {
    match case.counters.keys().collect::<Vec<_>>()[..] {
        [("pf_stats", i)] => Reason::ALL.get(*i as usize).copied(),
        _ => None,
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|_| panic!("golden table: bad IPv4 literal {s}"))
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|_| panic!("golden table: bad IPv6 literal {s}"))
}

fn eth() -> PacketBuilder {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
}

/// UDP/IPv4 from `src` behind `link`.
fn udp4_builder(link: PacketBuilder, src: &str) -> PayloadBuilder {
    link.ipv4(v4(src), DST_V4).udp(40000, 53).payload(PAYLOAD)
}

fn udp4(link: PacketBuilder, src: &str) -> Vec<u8> {
    udp4_builder(link, src).build()
}

/// UDP/IPv6 from `src` behind `link`.
fn udp6_builder(link: PacketBuilder, src: &str) -> PayloadBuilder {
    link.ipv6(v6(src), DST_V6).udp(40000, 53).payload(PAYLOAD)
}

fn udp6(link: PacketBuilder, src: &str) -> Vec<u8> {
    udp6_builder(link, src).build()
}

/// `frame` with the byte at `at` replaced.
fn patched(mut frame: Vec<u8>, at: usize, byte: u8) -> Vec<u8> {
    frame[at] = byte;
    frame
}

/// IPv4 sources: (what the address probes, address, expected reason).
const V4_SOURCES: &[(&str, &str, Reason)] = &[
    ("no prefix in its /16", "8.8.8.8", PassV4),
    ("lowest address", "0.0.0.0", PassV4),
    ("highest address", "255.255.255.255", PassV4),
    ("inside 10.0.0.0/8 (level-1 deny)", "10.1.2.3", DenyV4),
    ("first of 10.0.0.0/8", "10.0.0.0", DenyV4),
    ("last of 10.0.0.0/8", "10.255.255.255", DenyV4),
    ("just below 10.0.0.0/8", "9.255.255.255", PassV4),
    ("just above 10.0.0.0/8", "11.0.0.0", PassV4),
    ("inside 100.64.0.0/10", "100.100.1.1", DenyV4),
    ("first of 100.64.0.0/10", "100.64.0.0", DenyV4),
    ("last of 100.64.0.0/10", "100.127.255.255", DenyV4),
    ("just below 100.64.0.0/10", "100.63.255.255", PassV4),
    ("just above 100.64.0.0/10", "100.128.0.0", PassV4),
    ("first of 172.16.5.4/30", "172.16.5.4", DenyV4),
    ("inside 172.16.5.4/30", "172.16.5.6", DenyV4),
    ("last of 172.16.5.4/30", "172.16.5.7", DenyV4),
    ("just below 172.16.5.4/30", "172.16.5.3", PassV4),
    ("first outside 172.16.5.4/30", "172.16.5.8", PassV4),
    ("same /16 as the /30, another /24 (level-2 pass)", "172.16.6.5", PassV4),
    ("first of 192.0.2.128/25", "192.0.2.128", DenyV4),
    ("last of 192.0.2.128/25", "192.0.2.255", DenyV4),
    ("just below 192.0.2.128/25", "192.0.2.127", PassV4),
    ("first outside 192.0.2.128/25", "192.0.3.0", PassV4),
    ("lower half of the /25's /24", "192.0.2.1", PassV4),
    ("exactly 198.51.100.7/32", "198.51.100.7", DenyV4),
    ("neighbour below 198.51.100.7/32", "198.51.100.6", PassV4),
    ("neighbour above 198.51.100.7/32", "198.51.100.8", PassV4),
    ("inside 203.0.113.0/24 (level-2 deny)", "203.0.113.77", DenyV4),
    ("first of 203.0.113.0/24", "203.0.113.0", DenyV4),
    ("last of 203.0.113.0/24", "203.0.113.255", DenyV4),
    ("just below 203.0.113.0/24", "203.0.112.255", PassV4),
    ("first outside 203.0.113.0/24", "203.0.114.0", PassV4),
];

/// IPv6 sources: (what the address probes, address, expected reason).
const V6_SOURCES: &[(&str, &str, Reason)] = &[
    ("no prefix in its /16", "2600::1", PassV6),
    ("unspecified address", "::", PassV6),
    ("highest address", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PassV6),
    // 2002::/16: level-1 deny.
    ("first of 2002::/16", "2002::", DenyV6),
    ("inside 2002::/16", "2002:c000:204::1", DenyV6),
    ("last of 2002::/16", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("just below 2002::/16", "2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PassV6),
    ("just above 2002::/16", "2003::", PassV6),
    // fe80::/10: 64 level-1 deny entries.
    ("first of fe80::/10", "fe80::", DenyV6),
    ("inside fe80::/10", "fe80::1", DenyV6),
    ("last of fe80::/10", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("just below fe80::/10", "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PassV6),
    ("just above fe80::/10", "fec0::", PassV6),
    // The /32 slot 2001:db8 with its one inline prefix.
    ("first of 2001:db8:bad::/48 (inline)", "2001:db8:bad::", DenyV6),
    ("inside 2001:db8:bad::/48 (inline)", "2001:db8:bad:1:2:3:4:5", DenyV6),
    ("last of 2001:db8:bad::/48 (inline)", "2001:db8:bad:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("just below 2001:db8:bad::/48 (inline miss)", "2001:db8:bac:ffff:ffff:ffff:ffff:ffff", PassV6),
    ("just above 2001:db8:bad::/48 (inline miss)", "2001:db8:bae::", PassV6),
    ("inline slot, far from its prefix", "2001:db8::1", PassV6),
    ("same /16 as a slot, /32 not in the table", "2001:db9::1", PassV6),
    // The /32 slot fd00:cafe with an inline /128.
    ("exactly fd00:cafe::1/128 (inline)", "fd00:cafe::1", DenyV6),
    ("neighbour below fd00:cafe::1/128", "fd00:cafe::", PassV6),
    ("neighbour above fd00:cafe::1/128", "fd00:cafe::2", PassV6),
    ("the /128 with the last of bits 32..96 set", "fd00:cafe:0:0:0:1::1", PassV6),
    ("the /128 with the first of bits 32..64 set", "fd00:cafe:8000::1", PassV6),
    // fd00:dead::/32: a deny-all slot.
    ("first of fd00:dead::/32 (deny-all slot)", "fd00:dead::", DenyV6),
    ("last of fd00:dead::/32", "fd00:dead:ffff:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("just below fd00:dead::/32", "fd00:deac:ffff:ffff:ffff:ffff:ffff:ffff", PassV6),
    ("just above fd00:dead::/32", "fd00:deae::", PassV6),
    // fd00:beef: ten /64s, the slot continues in the LPM trie.
    ("first of the first /64 (LPM overflow)", "fd00:beef::", DenyV6),
    ("inside the eighth /64 (LPM overflow)", "fd00:beef:0:7:1:2:3:4", DenyV6),
    ("last of the tenth /64 (LPM overflow)", "fd00:beef:0:9:ffff:ffff:ffff:ffff", DenyV6),
    ("first after the tenth /64 (LPM miss)", "fd00:beef:0:a::", PassV6),
    ("overflowed slot, far from its /64s (LPM miss)", "fd00:beef:1::1", PassV6),
    // 3fff::/20: 4096 /32 deny-all slots.
    ("first of 3fff::/20 (expanded)", "3fff::", DenyV6),
    ("inside 3fff::/20 (expanded)", "3fff:abc::1", DenyV6),
    ("last of 3fff::/20 (expanded)", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("first outside 3fff::/20", "3fff:1000::", PassV6),
    ("same /16 as 3fff::/20, far above", "3fff:ffff::1", PassV6),
    // 3ffe:8000::/17: the level-1 entry sends the whole /16 to the LPM trie.
    ("first of 3ffe:8000::/17 (level-1 LPM)", "3ffe:8000::", DenyV6),
    ("last of 3ffe:8000::/17 (level-1 LPM)", "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", DenyV6),
    ("just below 3ffe:8000::/17 (level-1 LPM miss)", "3ffe:7fff:ffff:ffff:ffff:ffff:ffff:ffff", PassV6),
    ("bottom of the /17's /16 (level-1 LPM miss)", "3ffe::1", PassV6),
];

/// The frame of `b` cut at each length, each with its expected reason. `cuts` are written
/// with the header sizes, so each line reads as "the frame ends inside / right after this
/// header"; `layers` pins the header offsets they assume to the builder's own.
fn truncations(
    out: &mut Vec<Case>,
    what: &str,
    b: &PayloadBuilder,
    layers: &[(&str, usize)],
    cuts: &[(usize, Reason)],
) {
    let (frame, offsets) = b.build_with_offsets().unwrap_or_else(|e| panic!("golden table: `{what}`: {e}"));
    for layer in layers {
        assert!(offsets.contains(layer), "golden table: `{what}` has no {layer:?} in {offsets:?}");
    }
    for &(len, reason) in cuts {
        assert!(len <= frame.len(), "golden table: cut {len} of `{what}` past its {} bytes", frame.len());
        let name = format!("{what}: cut at {len} of {} bytes", frame.len());
        out.push(case(name, frame[..len].to_vec(), reason));
    }
}

/// Every golden case of the prefilter.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    address_cases(&mut out);
    vlan_cases(&mut out);
    non_ip_cases(&mut out);
    ipv4_header_cases(&mut out);
    ipv6_header_cases(&mut out);
    fragment_cases(&mut out);
    truncation_cases(&mut out);
    out
}

fn address_cases(out: &mut Vec<Case>) {
    for &(what, src, reason) in V4_SOURCES {
        out.push(case(format!("ipv4 from {src}: {what}"), udp4(eth(), src), reason));
    }
    for &(what, src, reason) in V6_SOURCES {
        out.push(case(format!("ipv6 from {src}: {what}"), udp6(eth(), src), reason));
    }
}

fn vlan_cases(out: &mut Vec<Case>) {
    let q = |link: PacketBuilder, vid| link.vlan_tag(TPID_8021Q, vid);
    let ad = |link: PacketBuilder, vid| link.vlan_tag(TPID_8021AD, vid);
    let v: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("802.1Q tag, ipv4 denied", udp4(eth().vlan(100), "10.1.1.1"), DenyV4),
        ("802.1Q tag, ipv4 passed", udp4(eth().vlan(100), "8.8.4.4"), PassV4),
        ("802.1Q tag, ipv6 denied", udp6(eth().vlan(100), "2002::5"), DenyV6),
        ("802.1Q tag, ipv6 passed", udp6(eth().vlan(100), "2003::5"), PassV6),
        ("802.1Q tag with PCP and DEI bits, ipv4 denied", udp4(q(eth(), 0xf064), "198.51.100.7"), DenyV4),
        ("one 802.1ad tag alone, ipv4 denied", udp4(ad(eth(), 100), "198.51.100.7"), DenyV4),
        ("802.1ad outer + 802.1Q inner, ipv4 denied", udp4(eth().vlan(10).vlan(20), "172.16.5.5"), DenyV4),
        ("802.1ad outer + 802.1Q inner, ipv4 passed", udp4(eth().vlan(10).vlan(20), "172.16.5.9"), PassV4),
        (
            "802.1ad outer + 802.1Q inner, ipv6 denied",
            udp6(eth().vlan(10).vlan(20), "fd00:beef:0:2::9"),
            DenyV6,
        ),
        ("802.1ad outer + 802.1Q inner, ipv6 passed", udp6(eth().vlan(10).vlan(20), "fe7f::1"), PassV6),
        ("two 802.1Q tags, ipv4 denied", udp4(q(q(eth(), 1), 2), "100.64.0.1"), DenyV4),
        ("two 802.1Q tags, ipv4 passed", udp4(q(q(eth(), 1), 2), "100.128.0.1"), PassV4),
        ("two 802.1Q tags, ipv6 denied", udp6(q(q(eth(), 1), 2), "3fff:1::1"), DenyV6),
        (
            "802.1Q outer + 802.1ad inner (any order), ipv4 denied",
            udp4(ad(q(eth(), 1), 2), "203.0.113.5"),
            DenyV4,
        ),
        ("two 802.1ad tags, ipv6 passed", udp6(ad(ad(eth(), 1), 2), "fd00:cafe::2"), PassV6),
        ("three tags from a passed ipv4 source", udp4(eth().vlan(1).vlan(2).vlan(3), "8.8.8.8"), VlanTooDeep),
        (
            "three tags from a denied ipv4 source",
            udp4(eth().vlan(1).vlan(2).vlan(3), "10.0.0.1"),
            VlanTooDeep,
        ),
        ("three tags, ipv6", udp6(eth().vlan(1).vlan(2).vlan(3), "2600::1"), VlanTooDeep),
        (
            "three 802.1Q tags around ARP",
            q(q(q(eth(), 1), 2), 3).ethertype_raw(ETHERTYPE_ARP, &[0; 28]).build(),
            VlanTooDeep,
        ),
        ("four tags", udp4(eth().vlan(1).vlan(2).vlan(3).vlan(4), "8.8.8.8"), VlanTooDeep),
    ];
    for (what, frame, reason) in v {
        out.push(case(format!("vlan: {what}"), frame, reason));
    }
}

fn non_ip_cases(out: &mut Vec<Case>) {
    let arp = [0u8; 28];
    let v: Vec<(&str, Vec<u8>)> = vec![
        ("ARP (0x0806)", eth().ethertype_raw(ETHERTYPE_ARP, &arp).build()),
        ("ARP header only, exactly 14 bytes", eth().ethertype_raw(ETHERTYPE_ARP, &[]).build()),
        ("LLDP (0x88cc)", eth().ethertype_raw(ETHERTYPE_LLDP, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]).build()),
        ("802.1Q tag then ARP", eth().vlan(7).ethertype_raw(ETHERTYPE_ARP, &arp).build()),
        ("802.1ad + 802.1Q tags then ARP", eth().vlan(7).vlan(8).ethertype_raw(ETHERTYPE_ARP, &arp).build()),
        ("MPLS (0x8847) carrying IPv4 is not read", eth().ethertype_raw(0x8847, &[0, 0, 0x11, 0x40]).build()),
        ("0x9100 is not a VLAN TPID here", eth().ethertype_raw(0x9100, &[0, 1, 0x08, 0x00]).build()),
        ("802.3 length field (0x05dc)", eth().ethertype_raw(0x05dc, &[0xaa, 0xaa, 0x03]).build()),
    ];
    for (what, frame) in v {
        out.push(case(format!("not ip: {what}"), frame, NotIp));
    }
}

/// Record Route with room for nine addresses: 39 bytes, padded to 40 (IHL 15).
fn record_route() -> Vec<u8> {
    let mut rr = vec![7, 39, 4];
    rr.resize(39, 0);
    rr
}

/// Router Alert: 4 bytes (IHL 6).
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];

fn ipv4_header_cases(out: &mut Vec<Case>) {
    let opts = |src: &str, options: &[u8]| {
        eth().ipv4(v4(src), DST_V4).ipv4_options(options).udp(40000, 53).payload(PAYLOAD).build()
    };
    let plain = |src: &str| udp4(eth(), src);
    let long = |src: &str| eth().ipv4(v4(src), DST_V4).udp(40000, 53).payload(&[0x55; 100]).build();
    let l3 = ETH;
    let v: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("options, IHL 6, denied", opts("10.200.0.1", &ROUTER_ALERT), DenyV4),
        ("options, IHL 6, passed", opts("192.0.2.127", &ROUTER_ALERT), PassV4),
        ("options, IHL 15, denied", opts("203.0.113.1", &record_route()), DenyV4),
        ("options, IHL 15, passed", opts("172.16.5.8", &record_route()), PassV4),
        ("IHL 4 from a denied source", patched(plain("10.0.0.1"), l3, 0x44), MalformedIpv4),
        ("IHL 0", patched(plain("8.8.8.8"), l3, 0x40), MalformedIpv4),
        ("version 6 under ethertype IPv4", patched(plain("10.0.0.1"), l3, 0x65), MalformedIpv4),
        ("version 0", patched(plain("8.8.8.8"), l3, 0x05), MalformedIpv4),
        ("version 15, IHL 15", patched(plain("8.8.8.8"), l3, 0xff), MalformedIpv4),
        (
            "bad version but only 19 header bytes",
            patched(plain("8.8.8.8"), l3, 0x65)[..l3 + IPV4 - 1].to_vec(),
            TruncatedIpv4,
        ),
        ("IHL 15 claims options past the frame end", patched(plain("10.0.0.1"), l3, 0x4f), TruncatedIpv4),
        ("IHL 15 with payload bytes as options, denied", patched(long("10.0.0.1"), l3, 0x4f), DenyV4),
        ("IHL 15 with payload bytes as options, passed", patched(long("8.8.8.8"), l3, 0x4f), PassV4),
    ];
    for (what, frame, reason) in v {
        out.push(case(format!("ipv4 header: {what}"), frame, reason));
    }
}

/// Hop-by-hop, routing (type 2, one address), fragment (first, more follow), destination
/// options: the chain the prefilter must not care about.
fn ext_chain(src: &str) -> Vec<u8> {
    ext_builder(src).udp(40000, 53).payload(PAYLOAD).build()
}

fn ext_builder(src: &str) -> crate::packet::Ipv6Builder {
    let mut routing = vec![0u8; 4];
    routing.extend_from_slice(&v6("2001:db8::99").octets());
    eth()
        .ipv6(v6(src), DST_V6)
        .ipv6_ext(ExtHeader::HopByHop(vec![0x05, 0x02, 0, 0]))
        .ipv6_ext(ExtHeader::Routing { routing_type: 2, segments_left: 0, data: routing })
        .ipv6_ext(ExtHeader::Fragment { offset: 0, more: true, id: 0x1234 })
        .ipv6_ext(ExtHeader::DestOpts(vec![]))
}

fn ipv6_header_cases(out: &mut Vec<Case>) {
    let l3 = ETH;
    let v: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("hop-by-hop + routing + fragment + destopts, denied", ext_chain("fd00:cafe::1"), DenyV6),
        ("hop-by-hop + routing + fragment + destopts, passed", ext_chain("fd00:cafe::2"), PassV6),
        ("hop-by-hop + routing + fragment + destopts, LPM hit", ext_chain("fd00:beef:0:4::4"), DenyV6),
        ("version 4 under ethertype IPv6", patched(udp6(eth(), "2002::1"), l3, 0x45), MalformedIpv6),
        ("version 7", patched(udp6(eth(), "2600::1"), l3, 0x70), MalformedIpv6),
        ("version 0 behind 802.1Q", patched(udp6(eth().vlan(5), "2600::1"), l3 + TAG, 0x00), MalformedIpv6),
        (
            "bad version but only 39 header bytes",
            patched(udp6(eth(), "2600::1"), l3, 0x45)[..l3 + IPV6 - 1].to_vec(),
            TruncatedIpv6,
        ),
        (
            "traffic class and flow label set",
            eth().ipv6(v6("fe80::2"), DST_V6).traffic_class(0xff).flow_label(0xfffff).udp(1, 2).build(),
            DenyV6,
        ),
        (
            "no next header, nothing after the fixed header",
            eth().ipv6(v6("2001:db8:bad::1"), DST_V6).raw_l4(ip_proto::IPV6_NO_NEXT, &[]).build(),
            DenyV6,
        ),
    ];
    for (what, frame, reason) in v {
        out.push(case(format!("ipv6 header: {what}"), frame, reason));
    }
}

fn fragment_cases(out: &mut Vec<Case>) {
    let frag4 = |src: &str, offset, more| {
        eth().ipv4(v4(src), DST_V4).ipv4_fragment(offset, more).raw_l4(ip_proto::UDP, &[0x33; 16]).build()
    };
    let frag6 = |src: &str, offset, more| {
        eth()
            .ipv6(v6(src), DST_V6)
            .ipv6_ext(ExtHeader::Fragment { offset, more, id: 7 })
            .raw_l4(ip_proto::UDP, &[0x33; 16])
            .build()
    };
    let v: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("ipv4 non-first fragment from a denied source", frag4("203.0.113.9", 185, false), DenyV4),
        ("ipv4 middle fragment from a passed source", frag4("203.0.114.9", 185, true), PassV4),
        ("ipv4 first fragment from a denied source", frag4("198.51.100.7", 0, true), DenyV4),
        ("ipv6 non-first fragment from a denied source", frag6("fd00:dead::9", 185, false), DenyV6),
        ("ipv6 middle fragment from a passed source", frag6("fd00:deae::9", 185, true), PassV6),
    ];
    for (what, frame, reason) in v {
        out.push(case(format!("fragment: {what}"), frame, reason));
    }
}

fn truncation_cases(out: &mut Vec<Case>) {
    // Ethernet + 802.1Q + IPv4 + UDP, from a denied source.
    let b = udp4_builder(eth().vlan(100), "10.9.8.7");
    let (l4, len) = (ETH + TAG + IPV4, b.build().len());
    truncations(
        out,
        "eth+vlan+ipv4+udp from 10.9.8.7",
        &b,
        &[("l3", ETH + TAG), ("l4", l4)],
        &[
            (0, TruncatedEthernet),
            (ETH - 1, TruncatedEthernet),
            (ETH, TruncatedVlan),
            (ETH + TAG - 1, TruncatedVlan),
            (ETH + TAG, TruncatedIpv4),
            (ETH + TAG + 1, TruncatedIpv4),
            (l4 - 1, TruncatedIpv4),
            (l4, DenyV4),
            (l4 + UDP - 1, DenyV4),
            (l4 + UDP, DenyV4),
            (len, DenyV4),
        ],
    );
    // Ethernet + IPv6 + UDP, from a passed source.
    let b = udp6_builder(eth(), "2001:db8:beef::5");
    let (l4, len) = (ETH + IPV6, b.build().len());
    truncations(
        out,
        "eth+ipv6+udp from 2001:db8:beef::5",
        &b,
        &[("l3", ETH), ("l4", l4)],
        &[
            (0, TruncatedEthernet),
            (1, TruncatedEthernet),
            (ETH - 1, TruncatedEthernet),
            (ETH, TruncatedIpv6),
            (ETH + 8, TruncatedIpv6),      // up to the source address
            (ETH + 24 - 1, TruncatedIpv6), // the source address all but whole
            (l4 - 1, TruncatedIpv6),
            (l4, PassV6),
            (l4 + UDP - 1, PassV6),
            (l4 + UDP, PassV6),
            (len, PassV6),
        ],
    );
    // Ethernet + IPv4 with 40 bytes of options (IHL 15) + UDP, from a denied source.
    let b = eth().ipv4(v4("192.0.2.200"), DST_V4).ipv4_options(&record_route()).udp(1, 2).payload(PAYLOAD);
    let (l4, len) = (ETH + 60, b.build().len());
    truncations(
        out,
        "eth+ipv4(IHL 15)+udp from 192.0.2.200",
        &b,
        &[("l3", ETH), ("l4", l4)],
        &[
            (ETH - 1, TruncatedEthernet),
            (ETH, TruncatedIpv4),
            (ETH + IPV4 - 1, TruncatedIpv4),
            (ETH + IPV4, TruncatedIpv4), // fixed header whole, options missing
            (ETH + IPV4 + 1, TruncatedIpv4),
            (ETH + IPV4 + 20, TruncatedIpv4),
            (l4 - 1, TruncatedIpv4),
            (l4, DenyV4),
            (l4 + UDP, DenyV4),
            (len, DenyV4),
        ],
    );
    // Ethernet + IPv4 with 4 bytes of options (IHL 6), from a passed source.
    let b = eth().ipv4(v4("8.8.8.8"), DST_V4).ipv4_options(&ROUTER_ALERT).udp(1, 2);
    let (l4, len) = (ETH + 24, b.build().len());
    truncations(
        out,
        "eth+ipv4(IHL 6)+udp from 8.8.8.8",
        &b,
        &[("l3", ETH), ("l4", l4)],
        &[
            (ETH + IPV4 - 1, TruncatedIpv4),
            (ETH + IPV4, TruncatedIpv4),
            (l4 - 1, TruncatedIpv4),
            (l4, PassV4),
            (len, PassV4),
        ],
    );
    // Ethernet + IPv6 + four extension headers + UDP, from a source in the LPM trie: once
    // the fixed header is whole, every cut gets the address verdict.
    let b = ext_builder("fd00:beef:0:7::1").udp(40000, 53).payload(PAYLOAD);
    let (frame, offsets) = b.build_with_offsets().unwrap_or_else(|e| panic!("golden table: {e}"));
    let mut cuts = vec![(ETH - 1, TruncatedEthernet), (ETH, TruncatedIpv6), (ETH + IPV6 - 1, TruncatedIpv6)];
    for &(layer, at) in &offsets {
        if layer == "ext" || layer == "l4" {
            cuts.extend([(at, DenyV6), (at + 1, DenyV6)]);
        }
    }
    cuts.push((frame.len(), DenyV6));
    truncations(out, "eth+ipv6+hbh+rt+frag+dst+udp from fd00:beef:0:7::1", &b, &[("ext", ETH + IPV6)], &cuts);
    // Ethernet + three tags: once the third TPID is read, its tag need not be there.
    let b = udp4_builder(eth().vlan(1).vlan(2).vlan(3), "8.8.8.8");
    truncations(
        out,
        "eth+3 tags+ipv4 from 8.8.8.8",
        &b,
        &[("l3", ETH + 3 * TAG)],
        &[
            (ETH, TruncatedVlan),
            (ETH + TAG - 1, TruncatedVlan),
            (ETH + TAG, TruncatedVlan),
            (ETH + 2 * TAG - 1, TruncatedVlan),
            (ETH + 2 * TAG, VlanTooDeep),
            (ETH + 3 * TAG, VlanTooDeep),
        ],
    );
    // Ethernet + 802.1ad + 802.1Q + IPv6, from a denied source.
    let b = udp6_builder(eth().vlan(1).vlan(2), "fe80::1");
    truncations(
        out,
        "eth+2 tags+ipv6 from fe80::1",
        &b,
        &[("l3", ETH + 2 * TAG)],
        &[
            (ETH + TAG, TruncatedVlan),
            (ETH + 2 * TAG - 1, TruncatedVlan),
            (ETH + 2 * TAG, TruncatedIpv6),
            (ETH + 2 * TAG + IPV6 - 1, TruncatedIpv6),
            (ETH + 2 * TAG + IPV6, DenyV6),
        ],
    );
}
