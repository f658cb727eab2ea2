//! Existing sockets (issue 11): "at attach, established local TCP sockets are found with a
//! BPF TCP socket iterator (`iter/tcp`) and inserted, so turning acceleration on does not
//! wait for new connections."
//!
//! Two endpoints in namespaces behind their veths, the node's tc programs attached and a
//! policy admitting the client on the server's port, the socket layer off. A server and a
//! client process in a fresh cgroup connect and exchange one byte each way (through the
//! stack); only then is the socket layer turned on (`socklayer::sync`). The pick-up must
//! find both ends (one namespace each; the server end by its listener), and the payload
//! the two then move both ways, hash-checked, must go socket to socket: every byte counted
//! as redirected, the tc programs' established counters nearly still.

#[path = "support/cgroup.rs"]
mod cgroup;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::model;
use sluice::node::{self as snode, load, socklayer, wire};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

const PREFIX: &str = "slpu";
const PORT: u16 = 8080;
const SIZE: usize = 1 << 20;
const ROLE_ENV: &str = "SLUICE_SOCKPICKUP_E2E_ROLE";

fn payload(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(11) as u8 ^ seed).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// Read `n` bytes or to EOF (`n` = None), retrying the accelerated path's spurious
/// `EAGAIN` on a blocking socket (see `tests/sock_layer.rs`).
fn read_n(s: &mut TcpStream, n: Option<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while n.is_none_or(|n| out.len() < n) {
        let want = n.map_or(buf.len(), |n| (n - out.len()).min(buf.len()));
        match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    out
}

/// Read to EOF, waiting for each read in `poll`.
fn read_polled(s: &mut TcpStream) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut pfd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Not a test on its own: `server ADDR` or `client ADDR` in an endpoint namespace, in the
/// cgroup. The server prints `ready`, and waits for data in `poll`; the client connects, sends one byte, reads the
/// server's one-byte answer, prints `connected`, and waits for a line on stdin; then it
/// sends its payload, half-closes, and checks the server's hash of it and the server's
/// payload, printing `ok`.
#[test]
fn sockpickup_e2e_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let (kind, addr) = role.split_once(' ').expect("ROLE ADDR");
    let addr: SocketAddr = addr.parse().expect("address");
    if kind == "server" {
        // The listener stays open for the whole connection: it marks the server end.
        let l = TcpListener::bind(addr).expect("bind");
        println!("ready");
        std::io::stdout().flush().unwrap();
        let (mut s, _) = l.accept().expect("accept");
        assert_eq!(read_n(&mut s, Some(1)), b"?", "the first byte");
        s.write_all(b"!").unwrap();
        // Wait in poll, not in recv: a reader blocked in recv() when the pick-up inserts
        // the socket misses the redirected bytes (see `socklayer::pick_up`).
        let got = read_polled(&mut s);
        s.write_all(&fnv(&got).to_be_bytes()).unwrap();
        s.write_all(&payload(SIZE, 0x5a)).unwrap();
        drop(l);
        return;
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"?").unwrap();
    assert_eq!(read_n(&mut s, Some(1)), b"!", "the server's answer");
    println!("connected");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let data = payload(SIZE, 0xa5);
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let back = read_n(&mut s, None);
    assert_eq!(back.len(), 8 + SIZE, "bytes back");
    assert_eq!(
        u64::from_be_bytes(back[..8].try_into().unwrap()),
        fnv(&data),
        "the server's hash of our payload"
    );
    assert!(back[8..] == payload(SIZE, 0x5a)[..], "the server's payload");
    println!("ok");
}

/// `allow_established` over every endpoint: the tc programs' packets of known connections.
fn tc_established(net: &NodeNet, pin: &std::path::Path) -> u64 {
    let st = net.node.enter(|| wire::status(&sluice::sys::kernel(), pin).expect("status"));
    st.counters.iter().filter(|c| c.reason == "allow_established").map(|c| c.count).sum()
}

#[test]
fn a_connection_established_before_the_socket_layer_is_accelerated_after_it() {
    let test = "a_connection_established_before_the_socket_layer_is_accelerated_after_it";
    if !gate(test) {
        return;
    }
    if let Err(why) = cgroup::available() {
        panic!("{test}: {why}");
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let (c, s) = (Ipv4Addr::new(10, 84, 0, 10), Ipv4Addr::new(10, 84, 0, 20));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-s", s)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    let text = |layer: bool| {
        let sl =
            if layer { format!("  socketLayer: {{cgroup: {}}}\n", cg.path.display()) } else { String::new() };
        format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: pickup}}\nspec:\n{sl}  endpoints:\n\
             \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
             \x20   - {{name: server, interface: lxc-s, ipv4: {s}, labels: {{app: server}}}}\n\
             ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
             \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{{port: \"{PORT}\", protocol: TCP}}]}}]\n"
        )
    };
    let on = model::parse_str(&text(true), "pickup.yaml").expect("config parses");
    let off = model::parse_str(&text(false), "pickup.yaml").expect("config parses");
    let sys = sluice::sys::kernel();
    net.node.enter(|| {
        let plan = snode::plan(&off).expect("plans");
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        wire::attach(&sys, &off, &pin.0, &wire::AttachOptions::default()).expect("attaches");
        snode::forward::sync(&sys, &off, &pin.0).expect("forwarding");
    });

    // The connection, through the stack.
    let exe = std::env::current_exe().unwrap();
    let role = |ns: &str, role: String| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&exe)
            .args(["--exact", "sockpickup_e2e_role", "--nocapture", "--test-threads", "1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let at = SocketAddr::from((s, PORT));
    let mut srv = cg.spawn(&mut role(&net.ep("lxc-s").ns.name, format!("server {at}"))).expect("server");
    let mut srv_lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    assert!(srv_lines.any(|l| l.is_ok_and(|l| l.contains("ready"))), "the server did not start");
    let mut cli = cg.spawn(&mut role(&net.ep("lxc-c").ns.name, format!("client {at}"))).expect("client");
    let mut cli_out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("connected") {
        line.clear();
        assert!(cli_out.read_line(&mut line).unwrap() > 0, "the client did not connect");
    }

    // The socket layer on: both ends picked up.
    let r = socklayer::sync(&sys, &on, &pin.0).expect("sync on");
    assert_eq!(r.created, 2, "{r}");
    let mut maps = socklayer::open_maps(&sys, &pin.0).expect("maps");
    let namespaces = socklayer::pick_up(&sys, &mut maps, &cg.path).expect("pick-up");
    assert_eq!(namespaces, 2, "the client's and the server's namespace");
    let st = net.node.enter(|| wire::status(&sys, &pin.0).expect("status"));
    let layer = |st: &wire::Status, reason: &str| st.counter("socket layer", reason);
    assert_eq!(layer(&st, "picked_up"), 2, "both ends picked up:\n{st}");
    assert_eq!(layer(&st, "accelerated"), 0, "no new connection:\n{st}");

    // The payload both ways, after the pick-up.
    let before = tc_established(&net, &pin.0);
    cli.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    cli_out.read_to_string(&mut rest).unwrap();
    let out = cli.wait_with_output().unwrap();
    let srv_status = srv.wait().unwrap();
    assert!(
        out.status.success() && rest.contains("ok") && srv_status.success(),
        "transfer failed (client {}, server {srv_status}):\n{rest}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tc_packets = tc_established(&net, &pin.0) - before;
    let st = net.node.enter(|| wire::status(&sys, &pin.0).expect("status"));
    assert_eq!(
        layer(&st, "bytes_redirected"),
        (2 * SIZE + 8) as u64,
        "every byte after the pick-up redirected:\n{st}"
    );
    assert!(
        tc_packets < 20,
        "tc established packets for {SIZE} bytes each way after the pick-up: {tc_packets}"
    );

    net.node.enter(|| wire::down(&sys, &pin.0).expect("down"));
}
