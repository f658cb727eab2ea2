//! End to end, issue 15 on three nodes: the cluster lab of `tests/e2e_cluster.rs` (three
//! node namespaces on one underlay bridge, one etcd, each node the real `sluice daemon
//! --config F --etcd URL`) with `spec.encryption: {mode: wireguard}` on every node. No node
//! file names a peer or a key: each daemon makes its key pair in its own state directory
//! (`SLUICE_STATE_DIR`), publishes the public key with its node record, and takes its
//! peers and their keys from etcd. This kernel has no WireGuard device type, so every
//! `sluice_wg` is the userspace WireGuard in the daemon's process.
//!
//! | node | endpoint a | endpoint b |
//! |---|---|---|
//! | node-1 | 10.0.1.5 `app: client` | 10.0.1.6 `app: other` |
//! | node-2 | 10.0.2.5 `app: server` | 10.0.2.6 `app: other` |
//! | node-3 | 10.0.3.5 `app: server` | 10.0.3.6 `app: client` |
//!
//! Specification (issue 15, "Tests"):
//! - "cross-node TCP/UDP/ICMP between endpoints with encryption on";
//! - "policy still applies with identities": servers admit `app: client` only (label
//!   selectors across nodes: the receiving node re-derives the source identity from its
//!   ipcache, filled from etcd, since WireGuard does not carry the VNI), a remote pod is
//!   `cluster` and not `world`;
//! - "a capture on the underlay shows only WireGuard UDP and no plaintext payload (search
//!   the capture for a marker string)": every payload carries a marker, every node's
//!   underlay is captured for the whole test (the etcd client traffic to the bridge's
//!   address is the control plane and is set aside, then checked for markers too);
//! - "key rotation under traffic without loss": `sluice encrypt rotate` on node-1 while a
//!   TCP stream node-1 -> node-2 runs; the daemon switches its device and republishes the
//!   key, node-2 takes it from etcd; every byte arrives in order;
//! - "daemon restart under traffic": node-2's daemon is killed with SIGKILL while a stream
//!   node-1 -> node-2 runs, and started again. The userspace device dies with the process
//!   (its TUN goes when the descriptor closes, and with it the routes): packets sent
//!   meanwhile are dropped, never sent in the clear (the endpoint programs redirect to an
//!   ifindex that is gone). The new daemon makes the device again with the same key (the
//!   key file), points the datapath at it and starts handshakes at once; TCP retransmits
//!   across the gap and the stream continues with every byte. The gap is printed;
//! - "a node with a wrong or missing peer key gets nothing through, and nothing leaks
//!   unencrypted": node-3's record in etcd is given a wrong key; an allowed flow from
//!   node-1 does not pass, node-3 counts the handshakes as from an unknown peer (the
//!   daemon's `wireguard` request), and passes again once the record is right.
//!
//! A guard kills the daemons and etcd, runs `sluice down` per node and deletes the
//! namespaces and state directories on drop, also on panic.

// `sluice demo`'s lab (the underlay capture and its classifier) belongs to the `sluice`
// binary, not the library: included by path.
#[path = "../src/demo/mod.rs"]
#[allow(dead_code)]
mod demo;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use demo::wireguard::{underlay_leaks, Capture};
use netns::{gate, Netns};
use node::{Endpoint, NodeNet};
use sluice::cluster::server::{self, EtcdServer};
use sluice::model::encryption::DEFAULT_WIREGUARD_PORT;
use sluice::node::wire;
use sluice::sys;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PREFIX: &str = "swg3";
const ETCD: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 254);
const STALL: Duration = Duration::from_secs(60);
/// What every payload of the test carries; never on the underlay in the clear.
const MARKER: &[u8] = b"sluice-marker";
/// `ping -p` fills the echo payload with this pattern ("sluice" in hex), so a plaintext
/// echo carries `sluicesluice`.
const PING_PATTERN: &str = "736c75696365";
const PING_MARKER: &[u8] = b"sluicesluice";

/// A pod: (node number, endpoint `a` or `b`).
type Pod = (u8, char);

const POLICY: &str = r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "5000", protocol: UDP}, {port: "8080", protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {app: client}}]
      icmps: [{fields: [{type: 8, family: IPv4}]}]
    - fromEntities: [world]
      toPorts: [{ports: [{port: "6000", protocol: UDP}]}]
    - fromEntities: [cluster]
      toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
"#;

fn apps(i: u8) -> (&'static str, &'static str) {
    match i {
        1 => ("client", "other"),
        2 => ("server", "other"),
        _ => ("server", "client"),
    }
}

fn node_file(i: u8) -> String {
    let (a, b) = apps(i);
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: node-{i}}}\nspec:\n  \
         encryption: {{mode: wireguard}}\n  overlay: {{local: 172.16.0.{i}}}\n  endpoints:\n    \
         - {{name: ep-a, interface: lxc{i}a, ipv4: 10.0.{i}.5, labels: {{app: {a}}}}}\n    \
         - {{name: ep-b, interface: lxc{i}b, ipv4: 10.0.{i}.6, labels: {{app: {b}}}}}\n{POLICY}"
    )
}

struct Member {
    net: NodeNet,
    daemon: Option<Child>,
    config: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    state_dir: PathBuf,
}

/// Everything the test made; undone on drop (daemons first, etcd, then namespaces).
struct Lab {
    members: Vec<Member>,
    etcd: Option<EtcdServer>,
    underlay: Netns,
    tmp: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut d) = m.daemon.take() {
                let _ = d.kill();
                let _ = d.wait();
            }
            let pin_dir = m.pin_dir.clone();
            let _ = m.net.node.enter(move || wire::down(&sys::kernel(), &pin_dir));
            let _ = std::fs::remove_dir_all(&m.pin_dir);
        }
        self.etcd.take();
        self.members.clear();
        let _ = std::fs::remove_dir_all(&self.tmp);
        let _ = &self.underlay;
    }
}

impl Lab {
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            out.push_str(&format!("--- node-{} ---\n{text}", i + 1));
        }
        out
    }

    fn ep(&self, node: u8, which: char) -> &Endpoint {
        self.members[usize::from(node - 1)].net.ep(&format!("lxc{node}{which}"))
    }

    fn request(&self, node: u8, line: &str) -> String {
        request(&self.members[usize::from(node - 1)].socket, line).unwrap_or_default()
    }

    fn wait(&self, what: &str, cond: impl Fn(&Lab) -> bool) {
        let deadline = Instant::now() + STALL;
        while !cond(self) {
            assert!(Instant::now() < deadline, "stalled waiting for {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self, node: u8) -> bool {
        let st = self.request(node, "status");
        st.contains("attachments (4)")
            && st.contains("cluster: connected")
            && st.contains("3 nodes, 6 endpoints")
    }

    /// The public keys (base64) the nodes published, by node number.
    fn published_keys(&self) -> Vec<Option<String>> {
        let records = self.underlay.enter(|| {
            let c = self.etcd.as_ref().expect("running").client();
            c.range(sluice::cluster::layout::NODES.as_bytes(), true).expect("etcd answers").kvs
        });
        (1..=3)
            .map(|i| {
                records
                    .iter()
                    .filter_map(|kv| {
                        serde_json::from_slice::<sluice::cluster::layout::NodeRecord>(&kv.value).ok()
                    })
                    .find(|r| r.name == format!("node-{i}"))
                    .and_then(|r| r.public_key)
            })
            .collect()
    }
}

fn request(socket: &Path, line: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn start_daemon(m: &Member, etcd: &str) -> Child {
    let path = format!("/run/netns/{}", m.net.node.name);
    let ns_file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let log = File::options().create(true).append(true).open(&m.log).expect("daemon log");
    let fd = ns_file.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("daemon")
        .arg("--config")
        .arg(&m.config)
        .arg("--pin-dir")
        .arg(&m.pin_dir)
        .arg("--socket")
        .arg(&m.socket)
        .args(["--poll-ms", "50", "--etcd", etcd, "--lease-ttl", "3"])
        .env("SLUICE_STATE_DIR", &m.state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
    // SAFETY: between fork and exec the closure only calls setns(2), which is
    // async-signal-safe; `ns_file` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn sluice daemon");
    drop(ns_file);
    child
}

/// Whether a UDP datagram carrying [`MARKER`] from `from` reaches `to`'s `port` (up to
/// `tries` datagrams, each waited for up to 300 ms).
fn udp_reaches(from: &Endpoint, to: &Endpoint, port: u16, tries: u32) -> bool {
    let dst = SocketAddr::from((to.v4, port));
    let rx = to.ns.enter(|| UdpSocket::bind(dst).unwrap_or_else(|e| panic!("bind {dst}: {e}")));
    rx.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let tx = from.ns.enter(|| UdpSocket::bind(SocketAddr::from((from.v4, 0))).expect("bind sender"));
    let mut buf = [0u8; 64];
    for i in 0..tries {
        let mut msg = MARKER.to_vec();
        msg.extend_from_slice(format!(" {i}").as_bytes());
        tx.send_to(&msg, dst).unwrap_or_else(|e| panic!("send to {dst}: {e}"));
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            match rx.recv(&mut buf) {
                Ok(n) if buf[..n] == msg[..] => return true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Whether a TCP connection with one marked request and answer goes through.
fn tcp_exchanges(from: &Endpoint, to: &Endpoint, port: u16) -> bool {
    let dst = SocketAddr::from((to.v4, port));
    let listener = to.ns.enter(|| TcpListener::bind(dst).unwrap_or_else(|e| panic!("bind {dst}: {e}")));
    listener.set_nonblocking(true).expect("nonblocking");
    let connected = from.ns.enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(2)));
    let Ok(mut c) = connected else { return false };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return false,
        }
    };
    s.set_nonblocking(false).expect("blocking");
    for x in [&c, &s] {
        x.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    }
    let mut buf = vec![0u8; MARKER.len()];
    c.write_all(MARKER).is_ok()
        && s.read_exact(&mut buf).is_ok()
        && s.write_all(&buf).is_ok()
        && c.read_exact(&mut buf).is_ok()
        && buf == MARKER
}

fn pings(from: &Endpoint, to: &Endpoint) -> bool {
    let target = to.v4.to_string();
    from.ns.enter(|| {
        Command::new("ping")
            .args(["-c", "1", "-W", "1", "-p", PING_PATTERN, &target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A TCP stream from `from` to `to`:8080 writing a numbered, marked 1000-byte chunk every
/// 5 ms until stopped; the server side records every byte and the longest gap between reads.
struct Stream {
    stop: Arc<AtomicBool>,
    client: std::thread::JoinHandle<std::io::Result<usize>>,
    server: std::thread::JoinHandle<std::io::Result<(Vec<u8>, Duration)>>,
}

const CHUNK: usize = 1000;

fn chunk(seq: usize) -> Vec<u8> {
    let mut c: Vec<u8> = MARKER.to_vec();
    c.extend((c.len()..CHUNK).map(|i| (seq + i) as u8));
    c
}

impl Stream {
    fn start(from: &Endpoint, to: &Endpoint) -> Stream {
        let dst = SocketAddr::from((to.v4, 8080));
        let listener = to.ns.enter(|| TcpListener::bind(dst).expect("bind 8080"));
        let stop = Arc::new(AtomicBool::new(false));
        let server = std::thread::spawn(move || -> std::io::Result<(Vec<u8>, Duration)> {
            let (mut s, _) = listener.accept()?;
            // Longer than any outage the test allows: a stream that stalls for good fails.
            s.set_read_timeout(Some(Duration::from_secs(90)))?;
            let (mut got, mut gap, mut last) = (Vec::new(), Duration::ZERO, Instant::now());
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok((got, gap));
                }
                gap = gap.max(last.elapsed());
                last = Instant::now();
                got.extend_from_slice(&buf[..n]);
            }
        });
        let mut s = from
            .ns
            .enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
            .expect("the stream connects");
        let client_stop = stop.clone();
        let client = std::thread::spawn(move || -> std::io::Result<usize> {
            let mut seq = 0;
            while !client_stop.load(Ordering::Relaxed) {
                s.write_all(&chunk(seq))?;
                seq += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(seq)
        });
        Stream { stop, client, server }
    }

    /// Stop writing; every byte must arrive in order. The longest gap between reads.
    fn finish(self, what: &str, lab: &Lab) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.client.join().expect("client thread");
        let sent =
            sent.unwrap_or_else(|e| panic!("{what}: the stream broke on the client: {e}\n{}", lab.logs()));
        let (got, gap) = self
            .server
            .join()
            .expect("server thread")
            .unwrap_or_else(|e| panic!("{what}: the server's read failed: {e}\n{}", lab.logs()));
        assert_eq!(got.len(), sent * CHUNK, "{what}: every byte arrived");
        let want: Vec<u8> = (0..sent).flat_map(chunk).collect();
        assert!(got == want, "{what}: bytes arrived in order and intact");
        gap
    }
}

/// The frames a capture saw, less the control plane's: the etcd client traffic between the
/// node and the bridge's address (returned separately).
fn split_control_plane(frames: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let etcd = ETCD.octets();
    frames.into_iter().partition(|f| {
        let ipv4 = f.get(12..14) == Some(&[0x08, 0x00][..]) && f.len() >= 14 + 20;
        !(ipv4 && (f[14 + 12..14 + 16] == etcd || f[14 + 16..14 + 20] == etcd))
    })
}

fn contains(frame: &[u8], marker: &[u8]) -> bool {
    frame.windows(marker.len()).any(|w| w == marker)
}

fn reach(r: bool) -> &'static str {
    if r {
        "reaches"
    } else {
        "does not reach"
    }
}

#[test]
fn three_nodes_encrypt_with_keys_from_etcd_through_rotation_and_a_daemon_restart() {
    let name = "three_nodes_encrypt_with_keys_from_etcd_through_rotation_and_a_daemon_restart";
    if !gate(name) {
        return;
    }
    if !server::available() {
        if std::env::var(sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("{}", server::INSTALL_HINT);
        }
        eprintln!("skip: {name}: {}", server::INSTALL_HINT);
        return;
    }
    netns::remove_stale(PREFIX, "sluice-");
    let base = netns::unique(PREFIX);
    let tmp = std::env::temp_dir().join(format!("sluice-{base}"));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let underlay = Netns::new(format!("{base}-u"));
    underlay.ip(&["link", "add", "br0", "type", "bridge"]);
    underlay.ip(&["addr", "add", &format!("{ETCD}/24"), "dev", "br0"]);
    underlay.ip(&["link", "set", "br0", "up"]);
    let mut lab = Lab { members: Vec::new(), etcd: None, underlay, tmp: tmp.clone() };
    for i in 1u8..=3 {
        let (a, b) = (format!("lxc{i}a"), format!("lxc{i}b"));
        let net = NodeNet::build(
            &format!("{base}-n{i}"),
            &[(a.as_str(), Ipv4Addr::new(10, 0, i, 5)), (b.as_str(), Ipv4Addr::new(10, 0, i, 6))],
        );
        let port = format!("u{i}");
        lab.underlay.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "underlay0",
            "netns",
            &net.node.name,
        ]);
        lab.underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
        net.node.ip(&["addr", "add", &format!("172.16.0.{i}/24"), "dev", "underlay0"]);
        net.node.ip(&["link", "set", "underlay0", "up"]);
        let config = tmp.join(format!("node-{i}.yaml"));
        std::fs::write(&config, node_file(i)).expect("write node file");
        lab.members.push(Member {
            net,
            daemon: None,
            config,
            pin_dir: PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-{base}-{i}")),
            socket: tmp.join(format!("node-{i}.sock")),
            log: tmp.join(format!("node-{i}.log")),
            state_dir: tmp.join(format!("state-{i}")),
        });
    }
    // Every node's underlay, captured from before the first packet to the end (drained
    // every 20 ms, so the socket's buffer never overflows).
    let capturing = Arc::new(AtomicBool::new(true));
    let captures: Vec<std::thread::JoinHandle<Vec<Vec<u8>>>> = lab
        .members
        .iter()
        .map(|m| {
            let ns = sluice::netlink::NetNs::open(&m.net.node.name).expect("node namespace");
            let cap = Capture::start(&ns, "underlay0").expect("capture on underlay0");
            let on = capturing.clone();
            std::thread::spawn(move || {
                let mut frames = Vec::new();
                loop {
                    let last = !on.load(Ordering::Relaxed);
                    frames.extend(cap.frames());
                    if last {
                        return frames;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let etcd = EtcdServer::start_in_netns(&base, Some((&lab.underlay.name, ETCD))).expect("etcd starts");
    let url = etcd.url();
    lab.etcd = Some(etcd);
    for m in &mut lab.members {
        m.daemon = Some(start_daemon(m, &url));
    }
    lab.wait("every node attached and seeing 3 nodes and 6 endpoints", |lab| (1..=3).all(|i| lab.ready(i)));
    lab.wait("every node published its WireGuard key", |lab| {
        lab.published_keys().iter().all(Option::is_some)
    });
    let keys = lab.published_keys();
    for (i, m) in lab.members.iter().enumerate() {
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        let key = keys[i].as_deref().expect("published");
        assert!(
            log.contains(&format!("sluice_wg (userspace) up; this node's public key {key}")),
            "node-{}: the published key is the device's\n{log}",
            i + 1
        );
        let secret = std::fs::read_to_string(m.state_dir.join("wireguard.key")).expect("the key file");
        assert!(!lab.logs().contains(secret.trim()), "no log holds a private key");
    }

    // Label selectors across nodes, over WireGuard; each allowed flow retried while the
    // peers' handshakes complete.
    let cases: &[(&str, Pod, Pod, u16, bool)] = &[
        ("node-1 client -> node-2 server UDP 5000 (selector)", (1, 'a'), (2, 'a'), 5000, true),
        ("node-3 client -> node-2 server UDP 5000 (selector)", (3, 'b'), (2, 'a'), 5000, true),
        ("node-1 client -> node-3 server UDP 5000 (selector)", (1, 'a'), (3, 'a'), 5000, true),
        ("node-1 other -> node-2 server UDP 5000 (not selected)", (1, 'b'), (2, 'a'), 5000, false),
        ("node-2 other -> node-3 server UDP 5000 (not selected)", (2, 'b'), (3, 'a'), 5000, false),
        (
            "node-1 client -> node-2 server UDP 6000 (world only: a remote pod is not world)",
            (1, 'a'),
            (2, 'a'),
            6000,
            false,
        ),
        (
            "node-1 other -> node-2 server UDP 7000 (cluster: a remote pod is cluster)",
            (1, 'b'),
            (2, 'a'),
            7000,
            true,
        ),
    ];
    let mut bad = Vec::new();
    for &(what, (fnode, fep), (tnode, tep), port, want) in cases {
        let tries = if want { 30 } else { 3 };
        let got = udp_reaches(lab.ep(fnode, fep), lab.ep(tnode, tep), port, tries);
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    for (what, from, to, want) in [
        ("TCP 8080 node-1 client -> node-2 server", (1, 'a'), (2, 'a'), true),
        ("TCP 8080 node-3 client -> node-2 server", (3, 'b'), (2, 'a'), true),
        ("TCP 8080 node-1 other -> node-2 server", (1, 'b'), (2, 'a'), false),
    ] {
        let got = tcp_exchanges(lab.ep(from.0, from.1), lab.ep(to.0, to.1), 8080);
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    for (what, from, to, want) in [
        ("ICMP echo node-3 client -> node-2 server", (3, 'b'), (2, 'a'), true),
        ("ICMP echo node-1 client -> node-3 server", (1, 'a'), (3, 'a'), true),
        ("ICMP echo node-1 other -> node-3 server", (1, 'b'), (3, 'a'), false),
    ] {
        let got = pings(lab.ep(from.0, from.1), lab.ep(to.0, to.1));
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    assert!(bad.is_empty(), "flows not as expected:\n{}\n{}", bad.join("\n"), lab.logs());

    // Key rotation under traffic: node-1's key is replaced as an operator does it; its
    // daemon switches the device and republishes, node-2 takes the new key from etcd.
    let stream = Stream::start(lab.ep(1, 'a'), lab.ep(2, 'a'));
    std::thread::sleep(Duration::from_millis(1500));
    let rotated = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["encrypt", "rotate"])
        .env("SLUICE_STATE_DIR", &lab.members[0].state_dir)
        .output()
        .expect("sluice encrypt rotate runs");
    assert!(rotated.status.success(), "rotate: {}", String::from_utf8_lossy(&rotated.stderr));
    let new_key = String::from_utf8_lossy(&rotated.stdout).trim().to_string();
    assert_ne!(Some(new_key.as_str()), keys[0].as_deref(), "a new key");
    lab.wait("node-1 publishes its rotated key", |lab| {
        lab.published_keys()[0].as_deref() == Some(new_key.as_str())
    });
    std::thread::sleep(Duration::from_secs(3));
    let gap = stream.finish("across node-1's key rotation", &lab);
    eprintln!("key rotation: longest gap between reads {gap:?}");
    assert!(
        udp_reaches(lab.ep(1, 'a'), lab.ep(3, 'a'), 5000, 30),
        "node-1 -> node-3 after the rotation (node-3 took the new key)\n{}",
        lab.logs()
    );

    // Daemon restart under traffic: node-2's daemon (and with it its WireGuard) is
    // killed with SIGKILL mid-stream and started again.
    let stream = Stream::start(lab.ep(1, 'a'), lab.ep(2, 'a'));
    std::thread::sleep(Duration::from_millis(1500));
    let mut d2 = lab.members[1].daemon.take().expect("node-2 runs");
    d2.kill().expect("SIGKILL node-2's daemon");
    let _ = d2.wait();
    let killed = Instant::now();
    lab.members[1].daemon = Some(start_daemon(&lab.members[1], &url));
    lab.wait("node-2's new daemon adopts its datapath and reconnects", |lab| lab.ready(2));
    let ready = killed.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    let gap = stream.finish("across node-2's daemon restart", &lab);
    eprintln!("daemon restart: new daemon ready after {ready:?}; longest gap between reads {gap:?}");
    let log2 = std::fs::read_to_string(&lab.members[1].log).unwrap_or_default();
    assert_eq!(
        log2.matches(&format!("this node's public key {}", keys[1].as_deref().expect("published"))).count(),
        2,
        "node-2's device came back with the same key\n{log2}"
    );
    assert!(
        udp_reaches(lab.ep(3, 'b'), lab.ep(2, 'a'), 5000, 30),
        "node-3 -> node-2 after node-2's restart\n{}",
        lab.logs()
    );
    assert!(!udp_reaches(lab.ep(1, 'b'), lab.ep(2, 'a'), 5000, 3), "and a denied flow is still denied");

    // A wrong key: node-3's record in etcd is made to carry another node's key (as a stale
    // or forged record would). node-1 then encrypts for a key node-3 does not hold: nothing
    // gets through (an allowed flow), nothing leaks (the capture below), and node-3 counts
    // the handshakes it cannot open as from an unknown peer. With the record back, the
    // flow passes again.
    let record_key = sluice::cluster::layout::node_key("node-3");
    let original = lab.underlay.enter(|| {
        let c = lab.etcd.as_ref().expect("running").client();
        c.range(record_key.as_bytes(), false)
            .expect("etcd answers")
            .kvs
            .into_iter()
            .next()
            .expect("node-3's record")
    });
    let mut forged: sluice::cluster::layout::NodeRecord =
        serde_json::from_slice(&original.value).expect("a node record");
    forged.public_key = keys[1].clone();
    let put = |value: &[u8]| {
        lab.underlay.enter(|| {
            let c = lab.etcd.as_ref().expect("running").client();
            c.put(record_key.as_bytes(), value, original.lease).expect("etcd takes the record");
        })
    };
    let reloads = |lab: &Lab| {
        std::fs::read_to_string(&lab.members[0].log)
            .unwrap_or_default()
            .matches("wireguard: peers reloaded")
            .count()
    };
    let reloaded = reloads(&lab);
    put(&serde_json::to_vec(&forged).expect("json"));
    let unknown = |lab: &Lab| -> u64 {
        let line = lab.request(3, "wireguard");
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix("rx_unknown_peer="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("node-3 answers the wireguard request: {line}"))
    };
    let before = unknown(&lab);
    lab.wait("node-1 takes node-3's forged key", |lab| reloads(lab) > reloaded);
    assert!(
        !udp_reaches(lab.ep(1, 'a'), lab.ep(3, 'a'), 5000, 10),
        "with a wrong key for node-3 nothing gets through\n{}",
        lab.logs()
    );
    assert!(!pings(lab.ep(1, 'a'), lab.ep(3, 'a')), "not an echo either");
    assert!(
        unknown(&lab) > before,
        "node-3 counted handshakes from an unknown peer: {}",
        lab.request(3, "wireguard")
    );
    put(&original.value);
    assert!(
        udp_reaches(lab.ep(1, 'a'), lab.ep(3, 'a'), 5000, 60),
        "with the right key again the flow passes\n{}",
        lab.logs()
    );
    for i in 1..=3 {
        eprintln!("node-{i}: {}", lab.request(i, "wireguard"));
    }

    // The underlay of every node, for the whole test: WireGuard UDP, link control and the
    // control plane only; no marker anywhere.
    capturing.store(false, Ordering::Relaxed);
    for (i, cap) in captures.into_iter().enumerate() {
        let (data, control) = split_control_plane(cap.join().expect("capture thread"));
        let report = underlay_leaks(&data, DEFAULT_WIREGUARD_PORT);
        let marked: Vec<usize> = data
            .iter()
            .chain(&control)
            .enumerate()
            .filter(|(_, f)| contains(f, MARKER) || contains(f, PING_MARKER))
            .map(|(n, _)| n)
            .collect();
        eprintln!(
            "node-{}: {} WireGuard datagrams, {} link control, {} control plane, {} other",
            i + 1,
            report.wireguard,
            report.control,
            control.len(),
            report.other.len()
        );
        assert!(marked.is_empty(), "node-{}: frames with a plaintext marker: {marked:?}", i + 1);
        assert!(report.plaintext.is_empty(), "node-{}: plaintext: {:?}", i + 1, report.plaintext);
        assert!(report.other.is_empty(), "node-{}: non-WireGuard frames: {:?}", i + 1, report.other);
        assert!(report.wireguard > 0, "node-{}: traffic crossed as WireGuard", i + 1);
        // Full-size TCP segments are answered with "fragmentation needed" by the sending
        // node's device, so no WireGuard datagram needs more than one underlay frame.
        let fragments = data
            .iter()
            .filter(|f| {
                f.get(12..14) == Some(&[0x08, 0x00][..])
                    && f.get(14 + 6).is_some_and(|b| b & 0x3f != 0 || f[14 + 7] != 0)
            })
            .count();
        assert_eq!(fragments, 0, "node-{}: IPv4 fragments on the underlay", i + 1);
    }
}
