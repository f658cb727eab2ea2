//! Socket-level load balancing at the edges the mutation harness (`tests/mutate.rs`, see
//! TESTING.md) found untested, on maps filled by `maps::lb::service_writes`, the writes
//! the node applies:
//!
//! - an SCTP stream socket is an SCTP flow, not a TCP one: `codegen::sock_lb` says "r3 =
//!   protocol: SOCK_DGRAM is UDP, SOCK_STREAM TCP (or SCTP)", so a connect to a VIP whose
//!   port is SCTP only is translated, and a TCP connect to it is not;
//! - the reverse hooks give back every word of an IPv6 VIP, with a backend that differs
//!   from it in all four;
//! - an IPv6 socket asking for an IPv4-mapped VIP gets the backend an IPv4 socket with the
//!   same cookie gets (one service key, one flow hash: "lb_svc key: {user address (IPv4
//!   mapped), user_port, protocol, scope 0}"), and ClientIP affinity holds and refreshes
//!   across both families.

use sluice::codegen::sock_lb::{self, SockAddrHook};
use sluice::maps::lb::{aff_value, service_writes, LbState};
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice_verifier_sim::exec::{Context, Machine, SockAddr, SOCK_DGRAM, SOCK_STREAM};
use sluice_verifier_sim::maps::MapSet;
use std::net::SocketAddr;

const TCP: u32 = 6;
const UDP: u32 = 17;
const SCTP: u32 = 132;

fn frontend(vip: &str, protocol: Protocol, backend: &str) -> Frontend {
    frontend_n(vip, protocol, &[backend])
}

fn frontend_n(vip: &str, protocol: Protocol, backends: &[&str]) -> Frontend {
    let vip: SocketAddr = vip.parse().expect("literal");
    let mut backends: Vec<Backend> = backends
        .iter()
        .map(|b| {
            let b: SocketAddr = b.parse().expect("literal");
            Backend { address: b.ip(), port: b.port(), state: BackendState::Active, weight: 1 }
        })
        .collect();
    backends.sort();
    Frontend { vip: vip.ip(), port: vip.port(), protocol, port_name: String::new(), backends }
}

const SEC: u64 = 1_000_000_000;
/// The affinity service's timeout.
const STICKY_TIMEOUT: u64 = 600;

/// One service: an SCTP-only port on an IPv4 VIP, and TCP and UDP on an IPv6 VIP whose
/// backend shares no 32-bit word with it.
fn services() -> Vec<Service> {
    vec![
        Service {
            namespace: "default".into(),
            name: "edges".into(),
            algorithm: LbAlgorithm::Random,
            affinity: SessionAffinity::None,
            frontends: vec![
                frontend("10.96.1.10:3868", Protocol::Sctp, "10.0.7.1:3868"),
                frontend("[fd00:96:1:2::10]:80", Protocol::Tcp, "[fd01:7:3:4::1]:8080"),
                frontend("[fd00:96:1:2::10]:53", Protocol::Udp, "[fd01:7:3:4::1]:5353"),
                frontend_n(
                    "10.96.1.20:80",
                    Protocol::Tcp,
                    &["10.0.8.1:8080", "10.0.8.2:8080", "10.0.8.3:8080"],
                ),
                frontend_n(
                    "10.96.1.20:53",
                    Protocol::Udp,
                    &["10.0.8.1:5353", "10.0.8.2:5353", "10.0.8.3:5353"],
                ),
            ],
        },
        Service {
            namespace: "default".into(),
            name: "sticky".into(),
            algorithm: LbAlgorithm::Random,
            affinity: SessionAffinity::ClientIp { timeout_seconds: STICKY_TIMEOUT as u32 },
            frontends: vec![frontend_n(
                "10.96.1.30:80",
                Protocol::Tcp,
                &["10.0.9.1:8080", "10.0.9.2:8080", "10.0.9.3:8080"],
            )],
        },
    ]
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
    run_at(maps, hook, addr, sock_type, protocol, 7, 0)
}

/// [`run`] with a cookie and a clock.
fn run_at(
    maps: &mut MapSet,
    hook: SockAddrHook,
    addr: &str,
    sock_type: u32,
    protocol: u32,
    cookie: u64,
    now_ns: u64,
) -> (u64, SocketAddr) {
    let prog = sock_lb::generate(hook).unwrap_or_else(|e| panic!("{e}"));
    let sa = SockAddr::new(addr.parse().expect("literal"), sock_type, protocol, cookie);
    let mut ctx = Context::for_sock_addr(sa);
    ctx.now_ns = now_ns;
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

/// The IPv4 form of an address an IPv6 socket got (IPv4-mapped).
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
        _ => a,
    }
}

#[test]
fn an_ipv6_socket_to_a_mapped_vip_gets_the_backend_an_ipv4_socket_gets() {
    use SockAddrHook::*;
    // (IPv4 hook, IPv6 hook, socket type, protocol, VIP)
    let pairs = [
        (Connect4, Connect6, SOCK_STREAM, TCP, "10.96.1.20:80"),
        (UdpSendmsg4, UdpSendmsg6, SOCK_DGRAM, UDP, "10.96.1.20:53"),
    ];
    let mut failures = Vec::new();
    for (hook4, hook6, ty, proto, vip) in pairs {
        let v: SocketAddr = vip.parse().expect("literal");
        let mapped = SocketAddr::new(
            match v.ip() {
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped().into(),
                other => other,
            },
            v.port(),
        );
        let mut seen = std::collections::BTreeSet::new();
        for cookie in 1..=48u64 {
            let mut maps = sim_maps();
            let (r4, got4) = run_at(&mut maps, hook4, vip, ty, proto, cookie, 0);
            let (r6, got6) = run_at(&mut maps, hook6, &mapped.to_string(), ty, proto, cookie, 0);
            seen.insert(got4);
            if (r4, r6) != (1, 1) || unmapped(got6) != got4 || got4 == v {
                failures.push(format!(
                    "cookie {cookie}: {hook4:?} to {vip} got {got4} (ret {r4}), {hook6:?} to {mapped} got {got6} (ret {r6})"
                ));
            }
        }
        assert_eq!(seen.len(), 3, "{hook4:?} to {vip}: every backend is drawn: {seen:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn client_ip_affinity_holds_and_refreshes_through_the_ipv6_hook() {
    use SockAddrHook::*;
    let mut maps = sim_maps();
    let last_used = |maps: &MapSet| -> u64 {
        let m = maps.get("lb_aff").expect("lb_aff");
        let keys = m.keys();
        assert_eq!(keys.len(), 1, "one client, one affinity entry");
        let v = m.lookup(&keys[0]).expect("the entry");
        u64::from_le_bytes(v[aff_value::LAST_USED..aff_value::LAST_USED + 8].try_into().expect("8 bytes"))
    };
    let start = 1_000 * SEC;
    let (_, first) = run_at(&mut maps, Connect6, "[::ffff:10.96.1.30]:80", SOCK_STREAM, TCP, 1, start);
    assert_eq!(last_used(&maps), start, "the first connection records the client");
    let mut now = start;
    for cookie in 2..=24u64 {
        now += STICKY_TIMEOUT / 2 * SEC;
        let hook = if cookie % 2 == 0 { Connect6 } else { Connect4 };
        let addr = if hook == Connect6 { "[::ffff:10.96.1.30]:80" } else { "10.96.1.30:80" };
        let (ret, got) = run_at(&mut maps, hook, addr, SOCK_STREAM, TCP, cookie, now);
        assert_eq!((ret, unmapped(got)), (1, unmapped(first)), "cookie {cookie} at {now} ns via {hook:?}");
        assert_eq!(last_used(&maps), now, "{hook:?} refreshes the entry");
    }
}
