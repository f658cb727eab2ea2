//! End to end: two endpoints on one node, with sluice's endpoint-policy programs on tcx
//! links of their host-side veths, and real traffic between them.
//!
//! Each test builds its own network namespaces with `ip` (iproute2): a node namespace
//! `sln-<pid>-<n>` holding the host sides `lxcA` and `lxcB`, and one namespace per endpoint
//! holding `eth0`. Endpoints reach each other through the node namespace, which routes
//! (`/32` and `/128` routes to each endpoint's device, static neighbors, forwarding on);
//! each endpoint's default route goes to an on-link gateway whose neighbor entry is the
//! host side's MAC, so no ARP or neighbor discovery is involved. Nothing touches the root
//! namespace. A guard deletes the namespaces (and with them every device and link on them)
//! on drop, also when a test panics.
//!
//! The policy: endpoint B admits TCP 8080 from endpoint A and nothing else; A's policy is
//! not enforced. The main test checks, for IPv4 and IPv6, every probe from both ends (what
//! A got back, what B's sockets saw) and in the `ep_stats` counters; then swaps every
//! program through `Link::update` in the middle of a TCP connection, which keeps working;
//! then drops the links, after which everything passes and no program counts anything.
//!
//! Counters are checked for what must be there (a denied probe counts `deny_default` at B
//! and never `allow_new`; A, whose policy is not enforced, drops nothing), not for exact
//! numbers: the namespaces' own IPv6 control traffic passes the same programs. Multicast
//! listener reports from link-local or unspecified sources count as `deny_spoofed` at the
//! sender's `from_ep`, and the node's own reports to an endpoint under enforced ingress
//! policy as `deny_default` at its `to_ep`; neighbor discovery counts as `allow_not_ip`.
//!
//! Gated by `sluice::sys::require_kernel`, and by `ip` being installed (a skip, or a
//! failure under `SLUICE_REQUIRE_KERNEL=1`).

use sluice::attach::{xdp_flags, AttachError, Direction, Interface, Link, LinkKind};
use sluice::maps::policy::Reason;
use sluice::model::{self, NodeConfig};
use sluice::node::load::{load_plan, load_program, Loaded};
use sluice::node::{plan, Plan};
use sluice::sys::{self, BpfCmd, Errno, Map, Program, Syscall};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Gate, `ip` and namespaces.

#[path = "support/netns.rs"]
mod netns;
use netns::{gate, ip_output, Netns};

const PREFIX: &str = "sln";

fn unique() -> String {
    netns::unique(PREFIX)
}

fn remove_stale_namespaces() {
    netns::remove_stale_namespaces(PREFIX)
}

/// One endpoint: its namespace, addresses and the host side of its veth.
struct Endpoint {
    ns: Netns,
    host_if: &'static str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Endpoint {
    fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4.into(),
            Family::V6 => self.v6.into(),
        }
    }
}

/// The node namespace and two endpoints routed through it, and the node file describing
/// them (in a temporary directory removed on drop).
struct Topology {
    node: Netns,
    a: Endpoint,
    b: Endpoint,
    dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The endpoints' gateway: on-link, resolved by a static neighbor entry to the host side.
const GW4: &str = "169.254.0.1";
const GW6: &str = "fe80::1";

impl Topology {
    fn build() -> Topology {
        remove_stale_namespaces();
        let base = unique();
        let node = Netns::new(base.clone());
        // Routing in the node namespace only; strict reverse-path filtering off (an
        // inherited setting could otherwise drop what the endpoints send).
        node.enter(|| {
            for (path, value) in [
                ("/proc/sys/net/ipv4/ip_forward", "1"),
                ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
                ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
                ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
            ] {
                std::fs::write(path, value).unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
            }
        });
        let endpoint = |i: u8, host_if: &'static str| {
            let ep = Endpoint {
                ns: Netns::new(format!("{base}-{}", char::from(b'a' + i - 1))),
                host_if,
                v4: Ipv4Addr::new(10, 200, 0, i),
                v6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, u16::from(i)),
            };
            let (host_mac, ep_mac) = (format!("02:00:00:00:0{i}:01"), format!("02:00:00:00:0{i}:02"));
            let (v4, v6) = (ep.v4.to_string(), ep.v6.to_string());
            node.ip(&[
                "link",
                "add",
                host_if,
                "address",
                &host_mac,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &ep_mac,
                "netns",
                &ep.ns.name,
            ]);
            let e = &ep.ns;
            e.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            e.ip(&["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"]);
            e.ip(&["link", "set", "eth0", "up"]);
            e.ip(&["route", "add", "default", "via", GW4, "dev", "eth0", "onlink"]);
            e.ip(&["neigh", "add", GW4, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            e.ip(&["-6", "route", "add", "default", "via", GW6, "dev", "eth0"]);
            e.ip(&["-6", "neigh", "add", GW6, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            node.ip(&["link", "set", host_if, "up"]);
            node.ip(&["route", "add", &format!("{v4}/32"), "dev", host_if]);
            node.ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", host_if]);
            node.ip(&["neigh", "add", &v4, "lladdr", &ep_mac, "dev", host_if, "nud", "permanent"]);
            node.ip(&["-6", "neigh", "add", &v6, "lladdr", &ep_mac, "dev", host_if, "nud", "permanent"]);
            ep
        };
        let a = endpoint(1, "lxcA");
        let b = endpoint(2, "lxcB");
        let dir = std::env::temp_dir().join(format!("sluice-{base}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Topology { node, a, b, dir }
    }

    /// Write the node file for this topology and read it back through the model.
    fn node_config(&self) -> NodeConfig {
        let text = format!(
            r#"apiVersion: sluice.dev/v1
kind: Node
metadata:
  name: e2e
spec:
  endpoints:
    - name: ep-a
      interface: {a_if}
      ipv4: {a4}
      ipv6: "{a6}"
      labels: {{app: a}}
    - name: ep-b
      interface: {b_if}
      ipv4: {b4}
      ipv6: "{b6}"
      labels: {{app: b}}
---
# B admits TCP 8080 from A, nothing else. Nothing selects A: its policy is not enforced.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: b-from-a
spec:
  endpointSelector:
    matchLabels: {{app: b}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{app: a}}
      toPorts:
        - ports:
            - {{port: "8080", protocol: TCP}}
"#,
            a_if = self.a.host_if,
            a4 = self.a.v4,
            a6 = self.a.v6,
            b_if = self.b.host_if,
            b4 = self.b.v4,
            b6 = self.b.v6,
        );
        let path = self.dir.join("node.yaml");
        std::fs::write(&path, text).expect("writes the node file");
        model::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }
}

// ---------------------------------------------------------------------------------------
// Traffic.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// What a probe from A to B observed at each end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// A got B's answer (TCP: connected and read B's data; UDP: B's reply; ping: the echo reply).
    a: bool,
    /// B's socket saw A's traffic (TCP: accepted and read A's data; UDP: the datagram; ping:
    /// the echo request on a raw socket).
    b: bool,
}

/// How long a denied probe waits before calling it dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(500);

static PING_ID: AtomicU32 = AtomicU32::new(0x5100);

fn accept_within(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// Send `msg` on `from` and read it on `to`; true when it arrived intact.
fn carry(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    to.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    from.write_all(msg).is_ok() && to.read_exact(&mut buf).is_ok() && buf == msg
}

/// A TCP connection from A to B, both ends, or `None` when A could not connect.
fn connect(topo: &Topology, family: Family, port: u16) -> (Option<(TcpStream, TcpStream)>, bool) {
    let dst = SocketAddr::new(topo.b.addr(family), port);
    let listener = topo.b.ns.enter(|| TcpListener::bind(dst).expect("B listens"));
    let client = topo.a.ns.enter(|| TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT));
    match client {
        Ok(client) => {
            let server = accept_within(&listener, Duration::from_secs(2));
            let accepted = server.is_some();
            (server.map(|s| (client, s)), accepted)
        }
        Err(_) => (None, accept_within(&listener, Duration::from_millis(50)).is_some()),
    }
}

/// How A's connection attempt to B:`port` with no listener there ends: timed out when
/// something drops the SYN, refused when B's kernel answers it with a reset.
fn connect_error(topo: &Topology, family: Family, port: u16) -> Option<ErrorKind> {
    let dst = SocketAddr::new(topo.b.addr(family), port);
    topo.a.ns.enter(|| TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)).err().map(|e| e.kind())
}

fn probe_tcp(topo: &Topology, family: Family, port: u16) -> Seen {
    match connect(topo, family, port) {
        (Some((mut a, mut b)), _) => {
            let b_saw = carry(&mut a, &mut b, b"hello from A");
            let a_saw = carry(&mut b, &mut a, b"hello from B");
            Seen { a: a_saw, b: b_saw }
        }
        (None, accepted) => Seen { a: false, b: accepted },
    }
}

fn probe_udp(topo: &Topology, family: Family, port: u16) -> Seen {
    let dst = SocketAddr::new(topo.b.addr(family), port);
    let server = topo.b.ns.enter(|| UdpSocket::bind(dst).expect("B binds"));
    let any: SocketAddr = match family {
        Family::V4 => (Ipv4Addr::UNSPECIFIED, 0).into(),
        Family::V6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let client = topo.a.ns.enter(|| UdpSocket::bind(any).expect("A binds"));
    client.send_to(b"datagram from A", dst).expect("A sends");
    server.set_read_timeout(Some(QUIET)).expect("timeout");
    let mut buf = [0u8; 64];
    let Ok((n, from)) = server.recv_from(&mut buf) else { return Seen { a: false, b: false } };
    let b_saw = &buf[..n] == b"datagram from A";
    server.send_to(b"datagram from B", from).expect("B replies");
    client.set_read_timeout(Some(QUIET)).expect("timeout");
    let a_saw = client.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"datagram from B");
    Seen { a: a_saw, b: b_saw }
}

/// A raw ICMP (or ICMPv6) socket in the calling thread's namespace, as a `UdpSocket` for
/// its `send_to`/`recv` and timeouts (raw sockets are datagram sockets to those calls; the
/// port of a destination is ignored for ICMP, and must be 0 for ICMPv6).
fn raw_icmp(family: Family) -> UdpSocket {
    let (domain, proto) = match family {
        Family::V4 => (libc::AF_INET, libc::IPPROTO_ICMP),
        Family::V6 => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new socket that nothing else owns.
    unsafe { UdpSocket::from_raw_fd(fd) }
}

/// The echo (type, id) in a packet a raw socket read: IPv4 raw sockets include the IP header.
fn echo_of(family: Family, packet: &[u8]) -> Option<(u8, u16)> {
    let icmp = match family {
        Family::V4 => packet.get(usize::from(packet.first()? & 0x0f) * 4..)?,
        Family::V6 => packet,
    };
    Some((*icmp.first()?, u16::from_be_bytes([*icmp.get(4)?, *icmp.get(5)?])))
}

fn probe_ping(topo: &Topology, family: Family) -> Seen {
    let (request, reply) = match family {
        Family::V4 => (8u8, 0u8),
        Family::V6 => (128, 129),
    };
    let id = PING_ID.fetch_add(1, Ordering::Relaxed) as u16;
    let watcher = topo.b.ns.enter(|| raw_icmp(family));
    let pinger = topo.a.ns.enter(|| raw_icmp(family));
    let mut msg = vec![request, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(b"sluice e2e echo");
    if family == Family::V4 {
        // ICMPv6 checksums are the kernel's job on raw sockets; ICMPv4 ones are ours.
        let sum = sluice::packet::checksum::internet(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    pinger.send_to(&msg, SocketAddr::new(topo.b.addr(family), 0)).expect("A sends the echo request");
    let wait_for = |sock: &UdpSocket, want: (u8, u16), within: Duration| {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 1500];
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            sock.set_read_timeout(Some(left)).expect("timeout");
            match sock.recv(&mut buf) {
                Ok(n) if echo_of(family, &buf[..n]) == Some(want) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    let a = wait_for(&pinger, (reply, id), QUIET);
    let b = wait_for(&watcher, (request, id), Duration::from_millis(20));
    Seen { a, b }
}

fn run_probe(topo: &Topology, family: Family, probe: Probe) -> Seen {
    match probe {
        Probe::Tcp(port) => probe_tcp(topo, family, port),
        Probe::Udp(port) => probe_udp(topo, family, port),
        Probe::Ping => probe_ping(topo, family),
    }
}

// ---------------------------------------------------------------------------------------
// Counters.

/// `ep_stats` of one endpoint: every reason's count, summed over CPUs.
fn counters(stats: &Map, ep: u32) -> BTreeMap<Reason, u64> {
    Reason::ALL
        .iter()
        .map(|&r| {
            let key = ep * Reason::COUNT + r as u32;
            let per_cpu =
                stats.lookup_percpu(&key.to_le_bytes()).expect("reads ep_stats").unwrap_or_default();
            let total = per_cpu.iter().map(|v| u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))).sum();
            (r, total)
        })
        .collect()
}

/// What changed between two snapshots, nonzero entries only.
fn delta(before: &BTreeMap<Reason, u64>, after: &BTreeMap<Reason, u64>) -> BTreeMap<Reason, u64> {
    after.iter().map(|(r, n)| (*r, n - before[r])).filter(|(_, n)| *n > 0).collect()
}

fn show(d: &BTreeMap<Reason, u64>) -> String {
    let parts: Vec<String> = d.iter().map(|(r, n)| format!("{}+{n}", r.name())).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" ")
    }
}

// ---------------------------------------------------------------------------------------
// The node: load and attach.

/// Endpoint indices as the plan numbers them (from 1, in name order).
const EP_A: u32 = 1;
const EP_B: u32 = 2;

/// Load the plan and attach every endpoint's programs: `from_ep_N` on tcx ingress and
/// `to_ep_N` on tcx egress of its host-side device. Both happen on a thread inside the
/// node namespace, where the device names and ifindexes are the node's.
fn load_and_attach(
    sys: &Arc<dyn Syscall>,
    topo: &Topology,
    cfg: &NodeConfig,
    plan: &Plan,
) -> (Loaded, Vec<(String, Link)>) {
    topo.node.enter(|| {
        let loaded = load_plan(sys, plan).unwrap_or_else(|e| panic!("{e}"));
        let mut links = Vec::new();
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            let iface = Interface::lookup(&ep.interface).unwrap_or_else(|e| panic!("{e}"));
            for (name, dir) in [
                (format!("from_ep_{}", i + 1), Direction::Ingress),
                (format!("to_ep_{}", i + 1), Direction::Egress),
            ] {
                let link = Link::tcx(sys, &loaded.programs[&name], iface.clone(), dir)
                    .unwrap_or_else(|e| panic!("{e}"));
                links.push((name, link));
            }
        }
        (loaded, links)
    })
}

// ---------------------------------------------------------------------------------------
// The tests.

struct Case {
    family: Family,
    probe: Probe,
    /// Whether the probe passes with the programs attached.
    passes: bool,
    /// What B's counters must show for it (with the programs attached).
    counted: &'static [Reason],
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        out.extend([
            Case {
                family,
                probe: Probe::Tcp(8080),
                passes: true,
                counted: &[Reason::AllowNew, Reason::AllowEstablished],
            },
            Case { family, probe: Probe::Tcp(9090), passes: false, counted: &[Reason::DenyDefault] },
            Case { family, probe: Probe::Udp(8080), passes: false, counted: &[Reason::DenyDefault] },
            Case { family, probe: Probe::Ping, passes: false, counted: &[Reason::DenyDefault] },
        ]);
    }
    out
}

/// Run every case; with `attached`, each must pass or drop as the policy says and be
/// counted; without, each must pass and nothing may be counted.
fn check_cases(topo: &Topology, stats: &Map, attached: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases() {
        let (a0, b0) = (counters(stats, EP_A), counters(stats, EP_B));
        let t = Instant::now();
        let seen = run_probe(topo, c.family, c.probe);
        let (da, db) = (delta(&a0, &counters(stats, EP_A)), delta(&b0, &counters(stats, EP_B)));
        let passes = c.passes || !attached;
        let want = Seen { a: passes, b: passes };
        let line = format!(
            "{:?} {:?}: seen A={} B={} (want {}), counted at A: {}, at B: {} ({} ms)",
            c.family,
            c.probe,
            seen.a,
            seen.b,
            if passes { "pass" } else { "drop" },
            show(&da),
            show(&db),
            t.elapsed().as_millis()
        );
        eprintln!("{} {line}", if attached { "attached:" } else { "detached:" });
        let mut wrong = seen != want;
        if attached {
            wrong |= c.counted.iter().any(|r| !db.contains_key(r));
            // B's drops are B's ingress policy alone; A's policy is not enforced, so A
            // drops nothing and allows nothing as a new, policed connection.
            wrong |= !passes && db.contains_key(&Reason::AllowNew);
            wrong |= da.keys().any(|r| !r.allows() && *r != Reason::DenySpoofed);
        } else {
            wrong |= !da.is_empty() || !db.is_empty();
        }
        if wrong {
            failures.push(line);
        }
    }
    failures
}

#[test]
fn endpoint_policy_with_real_traffic() {
    if !gate("endpoint_policy_with_real_traffic") {
        return;
    }
    let start = Instant::now();
    let sys = sys::kernel();
    let topo = Topology::build();
    let cfg = topo.node_config();
    let plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let built = start.elapsed();

    let t = Instant::now();
    let (loaded, links) = load_and_attach(&sys, &topo, &cfg, &plan);
    let attach_time = t.elapsed();
    let stats = &loaded.maps["ep_stats"];
    for (name, link) in &links {
        let info = link.info().expect("link info");
        assert_eq!(info.prog_id, loaded.programs[name].id(), "{name}: the link runs it");
        eprintln!(
            "{name}: {} of {}, link id {}",
            link.kind(),
            link.interface().expect("a device"),
            link.id()
        );
    }

    // 1. Policy, from both ends and in the counters.
    let t = Instant::now();
    let failures = check_cases(&topo, stats, true);
    let policy_time = t.elapsed();
    assert!(failures.is_empty(), "with the programs attached:\n{}", failures.join("\n"));
    let unanswered = connect_error(&topo, Family::V4, 9091);
    assert_eq!(unanswered, Some(ErrorKind::TimedOut), "a denied SYN is dropped, not answered");

    // 2. Swap every program mid-connection: a second load of the same code on the same
    //    maps, put in through BPF_LINK_UPDATE; the established connection keeps going on
    //    its conntrack entry and new connections are still policed.
    let t = Instant::now();
    let (conn, _) = connect(&topo, Family::V4, 8080);
    let (mut a, mut b) = conn.expect("A connects to B:8080");
    assert!(carry(&mut a, &mut b, b"before the swap") && carry(&mut b, &mut a, b"ack before"));
    let mut swapped = Vec::new();
    for (name, link) in &links {
        let obj = plan.object(name).expect("planned");
        let new = load_program(&sys, obj, &loaded.maps).unwrap_or_else(|e| panic!("{e}"));
        let old_id = link.info().expect("info").prog_id;
        link.update_expecting(&new, &loaded.programs[name]).unwrap_or_else(|e| panic!("{e}"));
        let now = link.info().expect("info").prog_id;
        assert_eq!(now, new.id(), "{name}: the link runs the new program");
        assert_ne!(now, old_id, "{name}: a different program");
        // Swapping again expecting the old one must fail: the link moved on.
        let err = link.update_expecting(&new, &loaded.programs[name]).expect_err("stale expectation");
        assert_eq!(err.errno(), Some(Errno(libc::EPERM)), "{err}");
        swapped.push(new);
    }
    let b0 = counters(stats, EP_B);
    for i in 0..20 {
        let msg = format!("after the swap, message {i}");
        assert!(carry(&mut a, &mut b, msg.as_bytes()), "A to B after the swap ({i})");
        assert!(carry(&mut b, &mut a, msg.as_bytes()), "B to A after the swap ({i})");
    }
    let d = delta(&b0, &counters(stats, EP_B));
    assert!(
        d.get(&Reason::AllowEstablished).is_some_and(|&n| n >= 20),
        "the new programs count: {}",
        show(&d)
    );
    let seen = probe_tcp(&topo, Family::V4, 9090);
    assert_eq!(seen, Seen { a: false, b: false }, "the swapped-in program still denies 9090");
    let swap_time = t.elapsed();

    // 3. Drop the links: the hooks are empty and everything passes, counted by nobody.
    let ids: Vec<u32> = links.iter().map(|(_, l)| l.id()).collect();
    drop(links);
    for id in ids {
        assert!(!Link::exists(&*sys, id).expect("link lookup"), "link {id} is gone");
    }
    assert!(
        carry(&mut a, &mut b, b"after detach") && carry(&mut b, &mut a, b"ack after"),
        "the connection lives on"
    );
    let t = Instant::now();
    let failures = check_cases(&topo, stats, false);
    assert!(failures.is_empty(), "with the links dropped:\n{}", failures.join("\n"));
    let refused = connect_error(&topo, Family::V4, 9091);
    assert_eq!(refused, Some(ErrorKind::ConnectionRefused), "B's kernel answers: nothing drops the SYN");
    let detached_time = t.elapsed();
    drop((a, b, swapped, loaded));
    let t = Instant::now();
    drop(topo);
    eprintln!(
        "timings: topology {built:?}, load+attach {attach_time:?}, policy probes {policy_time:?}, swap {swap_time:?}, \
         detached probes {detached_time:?}, teardown {:?}, total {:?}",
        t.elapsed(),
        start.elapsed()
    );
}

/// Link life cycle on a veth pair without traffic: XDP and tcx links, what the kernel says
/// about them, swaps, pins that outlive the handle, errors, and the device going away.
#[test]
fn links_attach_swap_pin_and_detach() {
    if !gate("links_attach_swap_pin_and_detach") {
        return;
    }
    let sys = sys::kernel();
    let ns = Netns::new(unique());
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    let pins = PinDir::new(&ns.name);
    let cfg = model::default_node();
    let plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let loaded = load_plan(&sys, &plan).unwrap_or_else(|e| panic!("{e}"));
    let prog = |name: &str| -> &Program { &loaded.programs[name] };

    ns.enter(|| {
        let v0 = Interface::lookup("v0").expect("v0 in the namespace");

        // XDP, generic mode: the device says so; a second XDP link is refused.
        let xdp = Link::xdp(&sys, prog("prefilter"), v0.clone(), xdp_flags::SKB_MODE).expect("XDP link");
        assert_eq!(xdp.kind(), LinkKind::Xdp);
        let info = xdp.info().expect("info");
        assert_eq!(
            (info.kind, info.ifindex, info.prog_id),
            (LinkKind::Xdp, Some(v0.index()), prog("prefilter").id())
        );
        assert!(ns_link_show(&ns, "v0").contains("xdpgeneric"), "ip link shows the generic XDP program");
        let err =
            Link::xdp(&sys, prog("prefilter"), v0.clone(), xdp_flags::SKB_MODE).expect_err("one XDP link");
        let text = err.to_string();
        assert_eq!(err.errno(), Some(Errno(libc::EBUSY)), "{text}");
        assert!(text.contains("BPF_LINK_CREATE") && text.contains("xdp of v0 (ifindex"), "{text}");
        let xdp_id = xdp.id();
        drop(xdp);
        assert!(!Link::exists(&*sys, xdp_id).expect("lookup"), "dropping an unpinned link detaches it");
        assert!(!ns_link_show(&ns, "v0").contains("xdp"), "no XDP program left on v0");

        // tcx, both directions, by ifindex alone (the name is filled in from the namespace).
        let ingress =
            Link::tcx(&sys, prog("from_ep_1"), v0.index(), Direction::Ingress).expect("tcx ingress");
        let egress = Link::tcx(&sys, prog("to_ep_1"), v0.index(), Direction::Egress).expect("tcx egress");
        assert_eq!(ingress.interface(), Some(&v0));
        for (link, kind, p) in
            [(&ingress, LinkKind::TcxIngress, "from_ep_1"), (&egress, LinkKind::TcxEgress, "to_ep_1")]
        {
            let info = link.info().expect("info");
            assert_eq!(
                (link.kind(), info.kind, info.ifindex, info.prog_id),
                (kind, kind, Some(v0.index()), prog(p).id())
            );
        }
        assert_eq!(ingress.kind().to_string(), "tcx-ingress");
        assert_eq!(egress.kind().to_string(), "tcx-egress");

        // Swaps: to another program of the type; a stale expectation and an XDP program fail.
        egress.update(prog("to_ep_2")).expect("swap");
        assert_eq!(egress.info().expect("info").prog_id, prog("to_ep_2").id());
        assert_eq!(egress.program_name(), "to_ep_2");
        let err = egress.update_expecting(prog("to_ep_3"), prog("to_ep_1")).expect_err("stale");
        assert!(
            matches!(err, AttachError::Link { cmd: BpfCmd::LinkUpdate, errno: Errno(libc::EPERM), .. }),
            "{err}"
        );
        let err = egress.update(prog("prefilter")).expect_err("XDP on tcx");
        assert_eq!(err.errno(), Some(Errno(libc::EINVAL)), "{err}");
        assert!(err.to_string().contains("program and attach type"), "{err}");

        // A pinned link outlives its handle; reopened, it says what it is.
        let mut ingress = ingress;
        let path = pins.0.join("from_ep_1");
        ingress.pin(&path).expect("pins");
        let id = ingress.id();
        drop(ingress);
        assert!(Link::exists(&*sys, id).expect("lookup"), "a pinned link survives its handle");
        let mut reopened = Link::from_pin(&sys, &path).expect("opens the pin");
        assert_eq!((reopened.id(), reopened.kind()), (id, LinkKind::TcxIngress));
        assert_eq!(reopened.interface().map(Interface::index), Some(v0.index()));
        assert_eq!(reopened.program_name(), "from_ep_1");
        assert_eq!(reopened.pinned(), Some(path.as_path()));
        reopened.unpin().expect("unpins");
        assert!(!path.exists());
        drop(reopened);
        assert!(!Link::exists(&*sys, id).expect("lookup"), "unpinned and dropped: detached");

        // A pin of something else is not a link.
        let map_pin = pins.0.join("ep_config");
        loaded.maps["ep_config"].pin(&map_pin).expect("pins a map");
        let err = Link::from_pin(&sys, &map_pin).expect_err("a map");
        assert!(err.to_string().contains("not a bpf link"), "{err}");

        // The device goes away under a link: the kernel detaches it, the link reports no
        // device, and dropping it is harmless.
        ns.ip(&["link", "del", "v0"]);
        let info = egress.info().expect("info of a defunct link");
        assert_eq!(info.ifindex, Some(0), "a tcx link whose device is gone");
        drop(egress);
    });
}

fn ns_link_show(ns: &Netns, dev: &str) -> String {
    ip_output(&["-n", &ns.name, "-d", "link", "show", dev])
}

/// A directory on bpffs, removed with its pins on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> PinDir {
        let dir = PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-e2e-{name}"));
        sys::ensure_bpffs(&dir).unwrap_or_else(|e| panic!("{e}"));
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
