//! The socket layer wired by the node (issue 11): `spec.socketLayer.cgroup` names a fresh
//! cgroup; two endpoints in namespaces behind their veths, the node's tc programs attached,
//! forwarding on, a policy admitting the client on the server's port. A server and a client
//! process in the cgroup (each in its endpoint's namespace) move a payload both ways,
//! hash-checked.
//!
//! Issue 11: "an allowed one is accelerated (counters) and bypasses tc (tc counters
//! unchanged after the handshake)". The same transfer runs with the socket layer on and
//! off: on, the endpoints' tc programs see only the handshake and the close (a handful of
//! packets) and the socket-layer counters show both ends accelerated and every byte
//! redirected; off, tc sees the data. Then: `sync` is idempotent, a policy change bumps the
//! revision, `sluice status` shows the counters and links, and `down` removes them.

#[path = "support/cgroup.rs"]
mod cgroup;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::model;
use sluice::node::{self as snode, load, socklayer, update, wire};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

const PREFIX: &str = "slsk";
const PORT: u16 = 8080;
const SIZE: usize = 4 << 20;
const ROLE_ENV: &str = "SLUICE_SOCKLAYER_E2E_ROLE";

fn payload(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(11) as u8 ^ seed).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// Read until EOF, retrying the accelerated path's spurious `EAGAIN` on a blocking socket
/// (see `tests/sock_layer.rs`).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Not a test on its own: `server ADDR` or `client ADDR` in an endpoint namespace, in the
/// cgroup. The server prints `ready`, then for one connection reads to EOF, answers the
/// hash of what it got followed by its own payload, and closes; the client sends its
/// payload, half-closes, checks both, and prints `ok`.
#[test]
fn socklayer_e2e_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let (kind, addr) = role.split_once(' ').expect("ROLE ADDR");
    let addr: SocketAddr = addr.parse().expect("address");
    if kind == "server" {
        let l = TcpListener::bind(addr).expect("bind");
        println!("ready");
        std::io::stdout().flush().unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let got = read_all(&mut s);
        s.write_all(&fnv(&got).to_be_bytes()).unwrap();
        s.write_all(&payload(SIZE, 0x5a)).unwrap();
        return;
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    let data = payload(SIZE, 0xa5);
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let back = read_all(&mut s);
    assert_eq!(back.len(), 8 + SIZE, "bytes back");
    assert_eq!(
        u64::from_be_bytes(back[..8].try_into().unwrap()),
        fnv(&data),
        "the server's hash of our payload"
    );
    assert!(back[8..] == payload(SIZE, 0x5a)[..], "the server's payload");
    println!("ok");
}

/// Run one transfer: the server process, then the client process, both in `cg`.
fn transfer(cg: &cgroup::Cgroup, net: &NodeNet, server: Ipv4Addr) {
    let exe = std::env::current_exe().unwrap();
    let role = |ns: &str, role: String| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&exe)
            .args(["--exact", "socklayer_e2e_role", "--nocapture", "--test-threads", "1"])
            .env(ROLE_ENV, role)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let at = SocketAddr::from((server, PORT));
    let mut srv = cg.spawn(&mut role(&net.ep("lxc-s").ns.name, format!("server {at}"))).expect("server");
    let mut lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("ready"))), "the server did not start");
    let out = cg
        .spawn(&mut role(&net.ep("lxc-c").ns.name, format!("client {at}")))
        .expect("client")
        .wait_with_output()
        .unwrap();
    let srv_status = srv.wait().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok") && srv_status.success(),
        "transfer failed (client {}, server {srv_status}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `allow_established` over every endpoint: the tc programs' packets of known connections.
fn tc_established(net: &NodeNet, pin: &std::path::Path) -> u64 {
    let st = net.node.enter(|| wire::status(&sluice::sys::kernel(), pin).expect("status"));
    st.counters.iter().filter(|c| c.reason == "allow_established").map(|c| c.count).sum()
}

#[test]
fn node_socket_layer_bypasses_tc_for_allowed_endpoint_connections() {
    let test = "node_socket_layer_bypasses_tc_for_allowed_endpoint_connections";
    if !gate(test) {
        return;
    }
    if let Err(why) = cgroup::available() {
        panic!("{test}: {why}");
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let (c, s) = (Ipv4Addr::new(10, 83, 0, 10), Ipv4Addr::new(10, 83, 0, 20));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-s", s)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    let text = |layer: bool, port: u16| {
        let sl =
            if layer { format!("  socketLayer: {{cgroup: {}}}\n", cg.path.display()) } else { String::new() };
        format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: socklayer}}\nspec:\n{sl}  endpoints:\n\
             \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
             \x20   - {{name: server, interface: lxc-s, ipv4: {s}, labels: {{app: server}}}}\n\
             ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
             \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
        )
    };
    let on = model::parse_str(&text(true, PORT), "socklayer.yaml").expect("config parses");
    let off = model::parse_str(&text(false, PORT), "socklayer.yaml").expect("config parses");
    let sys = sluice::sys::kernel();
    net.node.enter(|| {
        let plan = snode::plan(&on).expect("plans");
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        wire::attach(&sys, &on, &pin.0, &wire::AttachOptions::default()).expect("attaches");
        snode::forward::sync(&sys, &on, &pin.0).expect("forwarding");
    });

    // Off: tc sees the data.
    let r = socklayer::sync(&sys, &off, &pin.0).expect("sync off");
    assert_eq!((r.created, r.kept), (0, 0), "{r}");
    let before = tc_established(&net, &pin.0);
    transfer(&cg, &net, s);
    let stack_packets = tc_established(&net, &pin.0) - before;

    // On: both ends accelerated, tc sees only the handshake's end and the close.
    let r = socklayer::sync(&sys, &on, &pin.0).expect("sync on");
    assert_eq!((r.created, r.kept), (2, 0), "{r}");
    let r = socklayer::sync(&sys, &on, &pin.0).expect("idempotent");
    assert_eq!((r.created, r.kept), (0, 2), "{r}");
    let before = tc_established(&net, &pin.0);
    transfer(&cg, &net, s);
    let accelerated_packets = tc_established(&net, &pin.0) - before;
    let st = net.node.enter(|| wire::status(&sys, &pin.0).expect("status"));
    let layer = |reason: &str| st.counter("socket layer", reason);
    assert_eq!(layer("accelerated"), 2, "both ends accelerated:\n{st}");
    assert_eq!(layer("bytes_redirected"), (2 * SIZE + 8) as u64, "every byte redirected:\n{st}");
    eprintln!("tc established packets for {SIZE} bytes each way: {stack_packets} through the stack, {accelerated_packets} accelerated");
    assert!(
        accelerated_packets < 20 && stack_packets > 4 * accelerated_packets.max(10),
        "tc programs' established packets: {accelerated_packets} accelerated, {stack_packets} through the stack"
    );
    assert_eq!(st.sockets.iter().filter(|l| l.problem.is_none() && l.prog_id > 0).count(), 2, "{st}");

    // A policy change bumps the revision that verdicts are checked against.
    let rev = || {
        let m = sluice::sys::Map::from_pin(&sys, &pin.0.join("maps").join(sluice::maps::names::SOCK_REV))
            .unwrap();
        let v = m.lookup(&sluice::maps::u32_key(0)).unwrap().unwrap();
        u32::from_le_bytes(v[..4].try_into().unwrap())
    };
    let rev0 = rev();
    let changed = model::parse_str(&text(true, PORT + 1), "socklayer.yaml").expect("config parses");
    net.node.enter(|| {
        let plan = snode::plan(&changed).expect("plans");
        update::update_pinned(&sys, &changed, &plan, &pin.0).expect("updates")
    });
    assert_eq!(rev(), rev0 + 1, "the policy change bumped sock_rev");

    // Off again, then down: no socket-layer pin stays.
    let r = socklayer::sync(&sys, &off, &pin.0).expect("sync off");
    assert_eq!(r.removed, 2, "{r}");
    assert!(!pin.0.join(socklayer::SOCKLAYER_DIR).exists());
    socklayer::sync(&sys, &on, &pin.0).expect("links again");
    net.node.enter(|| wire::down(&sys, &pin.0).expect("down"));
    assert!(!pin.0.exists(), "down removes the pin dir");
}
