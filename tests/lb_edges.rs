//! The tc load balancer at an edge the mutation harness (`tests/mutate.rs`, see TESTING.md)
//! found untested: an IPv6 backend that differs from its VIP in every 32-bit word. The
//! translation's checksum diffs add each word of the old and the new address; with a
//! backend sharing words with the VIP (zero words, as `lb_golden`'s fixture has), a word
//! left out of the sum changes nothing. Here every word counts: DNAT of a client's
//! segment to the VIP and reverse NAT of the backend's reply must both leave the exact
//! addresses and ports and valid checksums (verified by `tests/support/checksums.rs`).

#[path = "support/checksums.rs"]
mod checksums;

use checksums::verify_checksums;
use sluice::codegen::lb as lbgen;
use sluice::maps::lb::{service_writes, LbState, TC_ACT_OK};
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::node::sim::SimNode;
use sluice::node::{Object, Plan};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice_verifier_sim::spec::ProgKind;
use std::net::Ipv6Addr;

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// No 32-bit word in common with `VIP`.
const BACKEND: Ipv6Addr = Ipv6Addr::new(0xfd01, 0x7, 0x3, 0x4, 0x5, 0x6, 0x7, 0x1);
const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const MAC_N: [u8; 6] = [2, 0, 0, 0, 0, 0x1];

fn node() -> SimNode {
    let service = Service {
        namespace: "default".into(),
        name: "wide".into(),
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::None,
        frontends: vec![
            Frontend {
                vip: VIP.into(),
                port: 80,
                protocol: Protocol::Tcp,
                port_name: String::new(),
                backends: vec![Backend {
                    address: BACKEND.into(),
                    port: 8080,
                    state: BackendState::Active,
                    weight: 1,
                }],
            },
            Frontend {
                vip: VIP.into(),
                port: 53,
                protocol: Protocol::Udp,
                port_name: String::new(),
                backends: vec![Backend {
                    address: BACKEND.into(),
                    port: 5353,
                    state: BackendState::Active,
                    weight: 1,
                }],
            },
        ],
    };
    let (writes, _) = service_writes(&[service], &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let program = lbgen::generate().unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan {
        node: "lb-edges".into(),
        objects: vec![Object {
            name: "lb".into(),
            kind: ProgKind::SchedCls,
            program,
            maps: lbgen::map_defs(),
            writes,
        }],
    };
    SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"))
}

fn tcp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: TcpFlags) -> Vec<u8> {
    PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv6(src, dst)
        .tcp(sport, dport, flags, 1000, 0)
        .payload(b"wide")
        .build()
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::ethernet(MAC_C, MAC_N).ipv6(src, dst).udp(sport, dport).payload(b"wide").build()
}

#[test]
fn an_ipv6_backend_unlike_its_vip_in_every_word_translates_both_ways_with_valid_checksums() {
    let mut node = node();
    // (what, frame in, frame that must come out)
    let cases = [
        (
            "TCP client to VIP: DNAT",
            tcp(CLIENT, VIP, 40000, 80, TcpFlags::SYN),
            tcp(CLIENT, BACKEND, 40000, 8080, TcpFlags::SYN),
        ),
        (
            "TCP backend reply: reverse NAT",
            tcp(BACKEND, CLIENT, 8080, 40000, TcpFlags::SYN | TcpFlags::ACK),
            tcp(VIP, CLIENT, 80, 40000, TcpFlags::SYN | TcpFlags::ACK),
        ),
        ("UDP client to VIP: DNAT", udp(CLIENT, VIP, 40001, 53), udp(CLIENT, BACKEND, 40001, 5353)),
        ("UDP backend reply: reverse NAT", udp(BACKEND, CLIENT, 5353, 40001), udp(VIP, CLIENT, 53, 40001)),
    ];
    let mut failures = Vec::new();
    for (what, input, want) in cases {
        let out = node.run("lb", &input).unwrap_or_else(|e| panic!("{what}: {e}"));
        if out.retval != TC_ACT_OK as u64 || out.packet != want {
            failures.push(format!(
                "{what}: expected verdict {TC_ACT_OK} and {want:02x?}, got {} and {:02x?}",
                out.retval, out.packet
            ));
        } else if let Err(e) = verify_checksums(&out.packet) {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
