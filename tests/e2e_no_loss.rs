//! End to end, issue 4: "No loss". With a steady UDP stream on an allowed flow (A to
//! B:5000) and an open TCP connection (A to B:8080), apply 100 policy changes that do not
//! touch either through `update_pinned`; not one datagram of the stream is lost, every TCP
//! exchange succeeds, and no pinned program is reloaded.
//!
//! Topology as in `e2e_endpoints.rs` (IPv4 only, IPv6 disabled in every namespace): a node
//! namespace with host sides `lxcA`/`lxcB`, one namespace per endpoint, static routes and
//! neighbors. The updates are spread across the stream: update k waits until 25·k datagrams
//! (one a millisecond) were sent, and the sender never runs more than ten updates ahead of
//! the updater, so every update happens with traffic before and after it (and, in practice,
//! during it), however slow the machine.
//! Guards delete the namespaces and the pins on drop, also on panic.
//!
//! Gated by `sluice::sys::require_kernel`, and by `ip` being installed (a skip, or a
//! failure under `SLUICE_REQUIRE_KERNEL=1`).

use sluice::attach::{Direction, Interface, Link};
use sluice::model::{self, NodeConfig};
use sluice::node::load::{load_and_pin, unload};
use sluice::node::plan;
use sluice::node::update::update_pinned;
use sluice::sys::{self, Program};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const N: u32 = 3000;
const UPDATES: usize = 100;
/// One datagram per millisecond: an update takes milliseconds (more in a debug build on a
/// busy machine), so at this pace the stream and the updates run side by side.
const PACE: Duration = Duration::from_millis(1);
/// Update k starts once this many datagrams per update were sent.
const PER_UPDATE: usize = 25;
/// How many updates the sender may run ahead of the updater.
const LEAD: usize = 10;
const STALL: Duration = Duration::from_secs(60);

#[path = "support/netns.rs"]
mod netns;
#[path = "support/stream.rs"]
mod stream;
use netns::{gate, Netns};

const PREFIX: &str = "snl";

fn unique() -> String {
    netns::unique(PREFIX)
}

fn remove_stale_namespaces() {
    netns::remove_stale_namespaces(PREFIX)
}

const NO_V6: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
];

struct Topology {
    // Endpoints first: dropped before the node namespace.
    a: Netns,
    b: Netns,
    node: Netns,
}

const A4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const GW4: &str = "169.254.0.1";

impl Topology {
    fn build() -> Topology {
        remove_stale_namespaces();
        let base = unique();
        let node = Netns::new(base.clone());
        node.sysctls(&NO_V6);
        node.sysctls(&[
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
        ]);
        let endpoint = |i: u8, host_if: &str, v4: Ipv4Addr| {
            let ns = Netns::new(format!("{base}-{}", char::from(b'a' + i - 1)));
            ns.sysctls(&NO_V6);
            let (host_mac, ep_mac) = (format!("02:00:00:01:0{i}:01"), format!("02:00:00:01:0{i}:02"));
            let v4 = v4.to_string();
            node.ip(&[
                "link", "add", host_if, "address", &host_mac, "type", "veth", "peer", "name", "eth0",
                "address", &ep_mac, "netns", &ns.name,
            ]);
            ns.sysctls(&NO_V6);
            ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", GW4, "dev", "eth0", "onlink"]);
            ns.ip(&["neigh", "add", GW4, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            node.ip(&["link", "set", host_if, "up"]);
            node.ip(&["route", "add", &format!("{v4}/32"), "dev", host_if]);
            node.ip(&["neigh", "add", &v4, "lladdr", &ep_mac, "dev", host_if, "nud", "permanent"]);
            ns
        };
        let a = endpoint(1, "lxcA", A4);
        let b = endpoint(2, "lxcB", B4);
        node.sysctls(&NO_V6);
        Topology { a, b, node }
    }
}

/// A pin directory on bpffs: unloaded and removed on drop, also on panic.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = unload(&sluice::sys::kernel(), &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node config for step `k` (0: the base). B admits UDP 5000 and TCP 8080 from A in
/// every step. Odd steps also admit TCP 9000+k from A; steps 2 mod 4 add an ingress deny
/// for an unrelated CIDR. So each step adds or removes one rule that touches neither flow.
fn config(k: usize) -> NodeConfig {
    let mut extra = String::new();
    if k % 2 == 1 {
        extra.push_str(&format!(
            "    - fromEndpoints: [{{matchLabels: {{app: a}}}}]\n      toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
            9000 + k
        ));
    }
    let deny = if k % 4 == 2 { "  ingressDeny:\n    - fromCIDR: [\"203.0.113.0/24\"]\n" } else { "" };
    let text = format!(
        r#"apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: no-loss}}
spec:
  endpoints:
    - {{name: ep-a, interface: lxcA, ipv4: {A4}, labels: {{app: a}}}}
    - {{name: ep-b, interface: lxcB, ipv4: {B4}, labels: {{app: b}}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: b-from-a}}
spec:
  endpointSelector: {{matchLabels: {{app: b}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: a}}}}]
      toPorts: [{{ports: [{{port: "5000", protocol: UDP}}, {{port: "8080", protocol: TCP}}]}}]
{extra}{deny}"#
    );
    model::parse_str(&text, &format!("step-{k}.yaml")).unwrap_or_else(|e| panic!("step {k}: {e}"))
}

/// Wait until `cond` holds; panics after `STALL` (something is stuck).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + STALL;
    while !cond() {
        assert!(Instant::now() < deadline, "stalled waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn exchange(a: &mut TcpStream, b: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; msg.len()];
    a.write_all(msg).map_err(|e| format!("A writes: {e}"))?;
    b.read_exact(&mut buf).map_err(|e| format!("B reads: {e}"))?;
    if buf != msg {
        return Err("B read something else".into());
    }
    b.write_all(&buf).map_err(|e| format!("B writes: {e}"))?;
    a.read_exact(&mut buf).map_err(|e| format!("A reads: {e}"))?;
    if buf != msg {
        return Err("A read something else".into());
    }
    Ok(())
}

#[test]
fn policy_updates_lose_no_packet_of_an_allowed_stream() {
    if !gate("policy_updates_lose_no_packet_of_an_allowed_stream") {
        return;
    }
    let start = Instant::now();
    let sys = sys::kernel();
    let pins = Pins(PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-e2e-noloss-{}", unique())));
    let topo = Topology::build();
    let base = config(0);
    let base_plan = plan(&base).unwrap_or_else(|e| panic!("{e}"));

    // Load, pin and attach from inside the node namespace.
    let (loaded, links) = topo.node.enter(|| {
        let loaded = load_and_pin(&sys, &base_plan, &pins.0).unwrap_or_else(|e| panic!("{e}"));
        let mut links = Vec::new();
        for (i, ep) in base.endpoints.iter().enumerate() {
            let iface = Interface::lookup(&ep.interface).unwrap_or_else(|e| panic!("{e}"));
            for (name, dir) in [
                (format!("from_ep_{}", i + 1), Direction::Ingress),
                (format!("to_ep_{}", i + 1), Direction::Egress),
            ] {
                let link = Link::tcx(&sys, &loaded.programs[&name], iface.clone(), dir)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                links.push((name, link));
            }
        }
        (loaded, links)
    });
    let ids: BTreeMap<String, u32> = loaded.programs.iter().map(|(n, p)| (n.clone(), p.id())).collect();

    // The TCP connection, open for the whole run.
    let dst = SocketAddr::from((B4, 8080));
    let listener = topo.b.enter(|| TcpListener::bind(dst).expect("B listens on 8080"));
    let mut ta = topo
        .a
        .enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
        .expect("A connects to B:8080");
    let (mut tb, _) = listener.accept().expect("B accepts");
    for s in [&ta, &tb] {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
    }
    exchange(&mut ta, &mut tb, b"before the updates").expect("TCP before the updates");

    // The UDP stream's sockets.
    let udst = SocketAddr::from((B4, 5000));
    let rx = topo.b.enter(|| UdpSocket::bind(udst).expect("B binds 5000"));
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
    }
    rx.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let tx = topo.a.enter(|| UdpSocket::bind(SocketAddr::from((A4, 0))).expect("A binds"));
    tx.connect(udst).expect("A connects its UDP socket");

    // Every step's config and plan, made before the stream starts.
    let steps: Vec<_> = (1..=UPDATES)
        .map(|k| {
            let cfg = config(k);
            let p = plan(&cfg).unwrap_or_else(|e| panic!("step {k}: {e}"));
            (cfg, p)
        })
        .collect();
    let sent = AtomicUsize::new(0);
    let updated = AtomicUsize::new(0);
    let sender_done = AtomicBool::new(false);
    let t = Instant::now();
    let (seen, updates, tcp) = std::thread::scope(|s| {
        let receiver = s.spawn(|| stream::receive(&rx, N as usize, &sender_done));
        let sender = s.spawn(|| {
            let _done = stream::Done(&sender_done);
            for seq in 0..N {
                let need = (seq as usize / PER_UPDATE).saturating_sub(LEAD).min(UPDATES);
                wait_for("the updater", || updated.load(Ordering::SeqCst) >= need);
                let mut msg = [0u8; 32];
                msg[..4].copy_from_slice(&seq.to_be_bytes());
                tx.send(&msg).unwrap_or_else(|e| panic!("A sends datagram {seq}: {e}"));
                sent.store(seq as usize + 1, Ordering::SeqCst);
                std::thread::sleep(PACE);
            }
        });
        let updater = s.spawn(|| {
            topo.node.join_thread();
            let mut updates = Vec::new();
            let mut tcp = Vec::new();
            for k in 1..=UPDATES {
                wait_for("the sender", || sent.load(Ordering::SeqCst) >= k * PER_UPDATE);
                let (cfg, p) = &steps[k - 1];
                let before = sent.load(Ordering::SeqCst);
                let t = Instant::now();
                let u = update_pinned(&sys, cfg, p, &pins.0);
                let took = t.elapsed();
                let ok = u.is_ok();
                let after = sent.load(Ordering::SeqCst);
                updates.push((k, u, took, before, after));
                updated.store(k, Ordering::SeqCst);
                if !ok {
                    // Let the sender finish: mark everything done.
                    updated.store(UPDATES, Ordering::SeqCst);
                    break;
                }
                if k % 10 == 0 {
                    tcp.push((k, exchange(&mut ta, &mut tb, format!("after update {k}").as_bytes())));
                }
            }
            (updates, tcp)
        });
        sender.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let (updates, tcp) = updater.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let seen = receiver.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (seen, updates, tcp)
    });
    let stream_time = t.elapsed();

    // Every update applied and wrote something, with traffic on both sides of it.
    assert_eq!(updates.len(), UPDATES, "updates: {:?}", updates.last());
    let (mut slowest, mut during) = (Duration::ZERO, 0);
    for (k, u, took, before, after) in &updates {
        let u = u.as_ref().unwrap_or_else(|e| panic!("update {k}: {e}"));
        assert!(u.total() >= 1, "update {k} wrote nothing: {u:?}");
        // By construction (the sender waits for the updater): traffic before and after.
        assert!(
            *before >= 1 && *after < N as usize,
            "update {k} outside the stream ({before}..{after} sent)"
        );
        slowest = slowest.max(*took);
        during += after - before;
    }
    // The sender may run up to LEAD updates ahead, so it keeps sending while an update
    // is being applied; over 100 updates some datagrams must have been sent mid-update.
    assert!(during > 0, "no datagram was sent while an update was being applied");
    // The TCP connection carried every exchange.
    assert_eq!(tcp.len(), UPDATES / 10);
    for (k, r) in &tcp {
        r.as_ref().unwrap_or_else(|e| panic!("TCP exchange after update {k}: {e}"));
    }
    exchange(&mut ta, &mut tb, b"after the updates").expect("TCP after the updates");
    // Not one datagram lost.
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, &x)| !x).map(|(i, _)| i).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} datagrams lost, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // No reload: the pinned programs and the links' programs are the ones loaded.
    for (name, id) in &ids {
        let p = Program::from_pin(&sys, &pins.0.join("programs").join(name)).expect("still pinned");
        assert_eq!(p.id(), *id, "{name} was not reloaded");
    }
    for (name, link) in &links {
        assert_eq!(
            link.info().expect("link info").prog_id,
            ids[name],
            "{name}: the link runs the same program"
        );
    }
    eprintln!(
        "no loss: {N} datagrams, {UPDATES} updates (slowest {slowest:?}, {during} datagrams sent while one was applied), stream {stream_time:?}, total {:?}",
        start.elapsed()
    );
    drop((ta, tb, links, loaded));
}
