//! Socket-level load balancing at the edges the mutation harness (`tests/mutate.rs`, see
//! TESTING.md) found untested, on maps filled by `maps::lb::service_writes`, the writes
//! the node applies:
//!
//! - an SCTP stream socket is an SCTP flow, not a TCP one: `codegen::sock_lb` says "r3 =
//!   protocol: SOCK_DGRAM is UDP, SOCK_STREAM TCP (or SCTP)", so a connect to a VIP whose
//!   port is SCTP only is translated, and a TCP connect to it is not;
//! - the reverse hooks give back every word of an IPv6 VIP, with a backend that differs
//!   from it in all four.

use sluice::codegen::sock_lb::{self, SockAddrHook};
use sluice::maps::lb::{service_writes, LbState};
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice_verifier_sim::exec::{Context, Machine, SockAddr, SOCK_DGRAM, SOCK_STREAM};
use sluice_verifier_sim::maps::MapSet;
use std::net::SocketAddr;

const TCP: u32 = 6;
const UDP: u32 = 17;
const SCTP: u32 = 132;

fn frontend(vip: &str, protocol: Protocol, backend: &str) -> Frontend {
    let b: SocketAddr = backend.parse().expect("literal");
    let vip: SocketAddr = vip.parse().expect("literal");
    Frontend {
        vip: vip.ip(),
        port: vip.port(),
        protocol,
        port_name: String::new(),
        backends: vec![Backend { address: b.ip(), port: b.port(), state: BackendState::Active, weight: 1 }],
    }
}

/// One service: an SCTP-only port on an IPv4 VIP, and TCP and UDP on an IPv6 VIP whose
/// backend shares no 32-bit word with it.
fn services() -> Vec<Service> {
    vec![Service {
        namespace: "default".into(),
        name: "edges".into(),
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::None,
        frontends: vec![
            frontend("10.96.1.10:3868", Protocol::Sctp, "10.0.7.1:3868"),
            frontend("[fd00:96:1:2::10]:80", Protocol::Tcp, "[fd01:7:3:4::1]:8080"),
            frontend("[fd00:96:1:2::10]:53", Protocol::Udp, "[fd01:7:3:4::1]:5353"),
        ],
    }]
}

fn sim_maps() -> MapSet {
    let specs: Vec<_> = sock_lb::map_defs().iter().map(|d| d.sim_spec()).collect();
    let mut maps = MapSet::new(&specs, 1).unwrap_or_else(|e| panic!("{e}"));
    let (writes, _) = service_writes(&services(), &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let ours: Vec<_> = writes.into_iter().filter(|w| sock_lb::MAPS.contains(&w.map)).collect();
    sluice::node::sim::apply_writes(&mut maps, &ours).unwrap_or_else(|e| panic!("{e}"));
    maps
}

/// Run `hook` on a socket of `sock_type`/`protocol` with cookie 7 asking for `addr`:
/// (return value, the address the socket ends up with).
fn run(
    maps: &mut MapSet,
    hook: SockAddrHook,
    addr: &str,
    sock_type: u32,
    protocol: u32,
) -> (u64, SocketAddr) {
    let prog = sock_lb::generate(hook).unwrap_or_else(|e| panic!("{e}"));
    let sa = SockAddr::new(addr.parse().expect("literal"), sock_type, protocol, 7);
    let mut ctx = Context::for_sock_addr(sa);
    let out = Machine::new()
        .run(&prog, sock_lb::kind(hook), &mut ctx, maps)
        .unwrap_or_else(|e| panic!("{hook:?} {addr}: {e}"));
    (out.retval, ctx.sock_addr.user_addr())
}

#[test]
fn an_sctp_stream_socket_reaches_the_sctp_frontend_only() {
    use SockAddrHook::*;
    // (hook, address asked for, socket type, protocol, the address the socket must get)
    let cases = [
        (Connect4, "10.96.1.10:3868", SOCK_STREAM, SCTP, "10.0.7.1:3868"),
        (Connect4, "10.96.1.10:3868", SOCK_STREAM, TCP, "10.96.1.10:3868"),
        (Connect4, "10.96.1.10:3868", SOCK_DGRAM, UDP, "10.96.1.10:3868"),
        (Connect6, "[::ffff:10.96.1.10]:3868", SOCK_STREAM, SCTP, "[::ffff:10.0.7.1]:3868"),
        (Connect6, "[::ffff:10.96.1.10]:3868", SOCK_STREAM, TCP, "[::ffff:10.96.1.10]:3868"),
    ];
    let mut failures = Vec::new();
    for (hook, addr, ty, proto, want) in cases {
        let mut maps = sim_maps();
        let (ret, got) = run(&mut maps, hook, addr, ty, proto);
        let want: SocketAddr = want.parse().expect("literal");
        if ret != 1 || got != want {
            failures.push(format!(
                "{hook:?} to {addr} (type {ty}, protocol {proto}): expected {want} ret 1, got {got} ret {ret}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reverse_hooks_restore_every_word_of_an_ipv6_vip() {
    use SockAddrHook::*;
    // (forward hook, reverse hook, socket type, protocol, VIP, its backend)
    let pairs = [
        (Connect6, Getpeername6, SOCK_STREAM, TCP, "[fd00:96:1:2::10]:80", "[fd01:7:3:4::1]:8080"),
        (UdpSendmsg6, UdpRecvmsg6, SOCK_DGRAM, UDP, "[fd00:96:1:2::10]:53", "[fd01:7:3:4::1]:5353"),
    ];
    let mut failures = Vec::new();
    for (fwd, rev, ty, proto, vip, backend) in pairs {
        let mut maps = sim_maps();
        let (ret, sent) = run(&mut maps, fwd, vip, ty, proto);
        let backend: SocketAddr = backend.parse().expect("literal");
        assert_eq!((ret, sent), (1, backend), "{fwd:?} to {vip} goes to its only backend");
        let (ret, shown) = run(&mut maps, rev, &backend.to_string(), ty, proto);
        let vip: SocketAddr = vip.parse().expect("literal");
        if ret != 1 || shown != vip {
            failures.push(format!(
                "{fwd:?} to {vip} then {rev:?} reporting {backend}: expected {vip} ret 1, got {shown} ret {ret}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
