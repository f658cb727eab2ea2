//! The L7 redirect program's golden packets through `BPF_PROG_TEST_RUN`, in a fresh network
//! namespace (no socket at all, so no tuple has a live socket and no proxy listens): what the
//! program leaves alone goes on to the next tcx program (`TCX_NEXT`, -1), a SYN to a
//! redirected port without a proxy listener is dropped (fail closed).
//!
//! Not covered here: the assign paths (`BPF_PROG_TEST_RUN` does not run at tc ingress, where
//! `bpf_sk_assign` works); `tests/l7_redirect.rs` covers them with real connections. The
//! verifier simulator does not model the socket lookup helpers, so this program has no
//! simulator run.

#[path = "support/netns.rs"]
mod netns;

use std::net::Ipv4Addr;

use sluice::codegen::to_proxy::{self, Redirect};
use sluice::node::load::load_generated;
use sluice::packet::tcp::TcpFlags;
use sluice::packet::PacketBuilder;
use sluice::sys::{self, testrun, ProgType};

const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;
const PORT: u16 = 8080;
const PROXY_PORT: u16 = 15001;

fn eth() -> PacketBuilder {
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

#[test]
fn golden_packets_without_sockets() {
    if !netns::gate("golden_packets_without_sockets") {
        return;
    }
    let (a, b) = (Ipv4Addr::new(10, 80, 0, 2), Ipv4Addr::new(10, 80, 1, 2));
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "SYN to the redirected port, no proxy listener",
            eth().ipv4(a, b).tcp(40000, PORT, TcpFlags::SYN, 1, 0).build(),
            SHOT,
        ),
        ("SYN to another port", eth().ipv4(a, b).tcp(40000, PORT + 1, TcpFlags::SYN, 1, 0).build(), NEXT),
        (
            "ACK to the redirected port without a socket (not a new connection)",
            eth().ipv4(a, b).tcp(40000, PORT, TcpFlags::ACK, 1, 1).build(),
            NEXT,
        ),
        (
            "SYN-ACK from the redirected port (a reply, not a new connection)",
            eth().ipv4(b, a).tcp(PORT, 40000, TcpFlags::SYN | TcpFlags::ACK, 1, 2).build(),
            NEXT,
        ),
        ("UDP to the redirected port", eth().ipv4(a, b).udp(40000, PORT).build(), NEXT),
        (
            "a later IPv4 fragment (no TCP header)",
            eth().ipv4(a, b).ipv4_fragment(2, false).udp(40000, PORT).build(),
            NEXT,
        ),
        (
            "IPv6 SYN (not redirected yet)",
            eth()
                .ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
                .tcp(40000, PORT, TcpFlags::SYN, 1, 0)
                .build(),
            NEXT,
        ),
        ("ARP", eth().ethertype_raw(0x0806, &[0; 28]).build(), NEXT),
    ];
    let sys = sys::kernel();
    let program = to_proxy::generate(&[Redirect { port: PORT, proxy_port: PROXY_PORT }]).unwrap();
    let loaded =
        load_generated(&sys, to_proxy::NAME, &program, &Default::default(), ProgType::SchedCls, |s| s)
            .unwrap_or_else(|e| panic!("the kernel verifier accepts to_proxy: {e}"));
    let ns = netns::Netns::new(netns::unique("l7g"));
    let mut failures = Vec::new();
    for (what, packet, expected) in &cases {
        let got = ns.enter(|| testrun::test_run(&*sys, loaded.fd(), &testrun::TestRunOpts::packet(packet)));
        match got {
            Ok(r) if r.retval == *expected => {}
            Ok(r) => failures.push(format!("{what}: expected {expected:#x}, got {:#x}", r.retval)),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
