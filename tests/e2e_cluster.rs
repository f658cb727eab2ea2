//! End to end, issue 13: three nodes, one etcd, real traffic across the VXLAN overlay.
//!
//! Three node namespaces, each with two endpoint namespaces routed through it (the daemon
//! tests' `NodeNet`) and an underlay veth into a bridge namespace that also runs etcd. Each
//! node runs the real `sluice daemon --config F --etcd URL` (entered with `setns`); no node
//! file lists a peer: each learns the others, their endpoints and the cluster's identities
//! from etcd.
//!
//! | node | endpoint a | endpoint b |
//! |---|---|---|
//! | node-1 | 10.0.1.5 `app: client` | 10.0.1.6 `app: other` |
//! | node-2 | 10.0.2.5 `app: server` | 10.0.2.6 `app: other` |
//! | node-3 | 10.0.3.5 `app: server` | 10.0.3.6 `app: client` |
//!
//! Servers admit, from `app: client` only, UDP 5000, TCP 8080 and ICMP echo; from the
//! `world` entity UDP 6000; from the `cluster` entity UDP 7000. Every client is on another
//! node than the server it talks to, so only the cluster's identities can let it in. Checked:
//! label selectors across nodes (UDP, TCP, ICMP, allowed and denied), a remote pod is
//! cluster and not world, both server pods have one identity number, the receiving node
//! judges remote pods by the identity on the wire even when its ipcache lies, etcd stopped and
//! restarted under traffic keeps the flows (the datapath keeps its state) and an
//! established TCP connection, a change made while etcd is down is applied after it
//! returns, a node whose daemon is killed and restarted adopts its pins and re-publishes,
//! and a node killed with SIGKILL is dropped by the others once its lease (3 s) expires.
//!
//! A guard kills the daemons and etcd, runs `sluice down` per node and deletes the
//! namespaces on drop, also on panic.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, Netns};
use node::{udp_reaches, Endpoint, NodeNet};
use sluice::cluster::server::{self, EtcdServer};
use sluice::node::wire;
use sluice::sys;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "scl";

/// A pod: (node number, endpoint `a` or `b`).
type Pod = (u8, char);
const ETCD: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 254);
const STALL: Duration = Duration::from_secs(60);

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
         overlay: {{local: 172.16.0.{i}}}\n  endpoints:\n    \
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

fn tcp_connects(from: &Endpoint, to: &Endpoint, port: u16) -> bool {
    let dst = SocketAddr::from((to.v4, port));
    let listener = to.ns.enter(|| TcpListener::bind(dst).unwrap_or_else(|e| panic!("bind {dst}: {e}")));
    let connected = from.ns.enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(2)));
    drop(listener);
    connected.is_ok()
}

fn pings(from: &Endpoint, to: &Endpoint) -> bool {
    let target = to.v4.to_string();
    from.ns.enter(|| {
        Command::new("ping")
            .args(["-c", "1", "-W", "1", &target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn three_nodes_share_identities_through_etcd() {
    if !gate("three_nodes_share_identities_through_etcd") {
        return;
    }
    if !server::available() {
        if std::env::var(sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("{}", server::INSTALL_HINT);
        }
        eprintln!("skip: three_nodes_share_identities_through_etcd: {}", server::INSTALL_HINT);
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
        });
    }
    let etcd = EtcdServer::start_in_netns(&base, Some((&lab.underlay.name, ETCD))).expect("etcd starts");
    let url = etcd.url();
    lab.etcd = Some(etcd);
    for m in &mut lab.members {
        m.daemon = Some(start_daemon(m, &url));
    }
    lab.wait("every node attached and seeing 3 nodes and 6 endpoints", |lab| {
        (1..=3).all(|i| {
            let st = lab.request(i, "status");
            st.contains("attachments (4)")
                && st.contains("cluster: connected")
                && st.contains("3 nodes, 6 endpoints")
        })
    });

    // Label selectors across nodes; each flow retried a few times while the last view
    // change is applied.
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
        let tries = if want { 20 } else { 3 };
        let got = udp_reaches(lab.ep(fnode, fep), lab.ep(tnode, tep), port, tries);
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    for (what, from, to, want) in [
        ("TCP 8080 node-1 client -> node-2 server", (1, 'a'), (2, 'a'), true),
        ("TCP 8080 node-1 other -> node-2 server", (1, 'b'), (2, 'a'), false),
    ] {
        let got = tcp_connects(lab.ep(from.0, from.1), lab.ep(to.0, to.1), 8080);
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    for (what, from, to, want) in [
        ("ICMP echo node-3 client -> node-2 server", (3, 'b'), (2, 'a'), true),
        ("ICMP echo node-1 other -> node-3 server", (1, 'b'), (3, 'a'), false),
    ] {
        let got = pings(lab.ep(from.0, from.1), lab.ep(to.0, to.1));
        if got != want {
            bad.push(format!("{what}: expected {}, got {}", reach(want), reach(got)));
        }
    }
    assert!(bad.is_empty(), "flows not as expected:\n{}\n{}", bad.join("\n"), lab.logs());

    // One identity for one label set: both server pods carry the same number in etcd.
    let records = lab.underlay.enter(|| {
        let c = lab.etcd.as_ref().expect("running").client();
        c.range(sluice::cluster::layout::ENDPOINTS.as_bytes(), true).expect("etcd answers").kvs
    });
    let identity = |ip: &str| {
        records
            .iter()
            .filter_map(|kv| {
                serde_json::from_slice::<sluice::cluster::layout::EndpointRecord>(&kv.value).ok()
            })
            .find(|r| r.ip.to_string() == ip)
            .map(|r| r.identity)
    };
    assert_eq!(identity("10.0.2.5"), identity("10.0.3.5"), "the two app=server pods");
    assert_eq!(identity("10.0.1.5"), identity("10.0.3.6"), "the two app=client pods");
    assert_ne!(identity("10.0.1.5"), identity("10.0.2.5"));

    // Identity on the wire (CLUSTER.md): node-2 judges a remote pod by the identity its
    // node put in the VNI, not by node-2's ipcache entry for its address. Make node-2's
    // entries lie (swap the client's and the other pod's identities): the client still
    // gets in and the other pod still does not.
    let (client, other) =
        (identity("10.0.1.5").expect("client published"), identity("10.0.1.6").expect("other published"));
    let pins = &lab.members[1].pin_dir;
    set_ipcache_v4(pins, Ipv4Addr::new(10, 0, 1, 5), other);
    set_ipcache_v4(pins, Ipv4Addr::new(10, 0, 1, 6), client);
    assert!(
        udp_reaches(lab.ep(1, 'a'), lab.ep(2, 'a'), 5000, 20),
        "the client, stale in node-2's ipcache, is let in by the identity on the wire\n{}",
        lab.logs()
    );
    assert!(
        !udp_reaches(lab.ep(1, 'b'), lab.ep(2, 'a'), 5000, 3),
        "the other pod, a client in node-2's stale ipcache, is still denied by the identity on the wire"
    );
    set_ipcache_v4(pins, Ipv4Addr::new(10, 0, 1, 5), client);
    set_ipcache_v4(pins, Ipv4Addr::new(10, 0, 1, 6), other);

    // An established TCP connection (node-1 client -> node-2 server) that must keep working
    // through etcd's outage and return.
    let server_addr = SocketAddr::from((lab.ep(2, 'a').v4, 8080));
    let listener = lab.ep(2, 'a').ns.enter(|| TcpListener::bind(server_addr).expect("bind 8080"));
    let mut client = lab
        .ep(1, 'a')
        .ns
        .enter(|| TcpStream::connect_timeout(&server_addr, Duration::from_secs(5)))
        .expect("node-1 client connects to node-2 server");
    let (mut server, _) = listener.accept().expect("accepted");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    }
    let mut echo = |tag: &str| -> Result<(), String> {
        let mut buf = vec![0u8; tag.len()];
        client.write_all(tag.as_bytes()).map_err(|e| format!("{tag}: client write: {e}"))?;
        server.read_exact(&mut buf).map_err(|e| format!("{tag}: server read: {e}"))?;
        server.write_all(&buf).map_err(|e| format!("{tag}: server write: {e}"))?;
        client.read_exact(&mut buf).map_err(|e| format!("{tag}: client read: {e}"))?;
        if buf == tag.as_bytes() {
            Ok(())
        } else {
            Err(format!("{tag}: echoed {buf:?}"))
        }
    };
    echo("before the outage").unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // etcd goes away: the datapath keeps its state and the flows keep working.
    lab.etcd.as_mut().expect("running").stop();
    lab.wait("node-1 notices etcd is gone", |lab| lab.request(1, "cluster").contains("disconnected"));
    echo("etcd down")
        .unwrap_or_else(|e| panic!("the established connection with etcd down: {e}\n{}", lab.logs()));
    assert!(
        udp_reaches(lab.ep(1, 'a'), lab.ep(2, 'a'), 5000, 5),
        "with etcd down the allowed flow still passes\n{}",
        lab.logs()
    );
    assert!(!udp_reaches(lab.ep(1, 'b'), lab.ep(2, 'a'), 5000, 2), "and the denied one is still denied");
    // A change made while etcd is down: node-1's `other` pod becomes a client.
    let relabelled =
        node_file(1).replace("ipv4: 10.0.1.6, labels: {app: other}", "ipv4: 10.0.1.6, labels: {app: client}");
    assert_ne!(relabelled, node_file(1), "the label is in the node file");
    std::fs::write(&lab.members[0].config, relabelled).expect("node-1's file rewritten");
    let applied = lab.request(1, "apply");
    echo("after a change with etcd down").unwrap_or_else(|e| panic!("{e}\napply: {applied}\n{}", lab.logs()));
    lab.etcd.as_mut().expect("stopped").restart().expect("etcd restarts");
    lab.wait("node-1 reconnects", |lab| lab.request(1, "cluster").contains("cluster: connected"));
    echo("etcd back")
        .unwrap_or_else(|e| panic!("the established connection after etcd returned: {e}\n{}", lab.logs()));
    assert!(udp_reaches(lab.ep(1, 'a'), lab.ep(2, 'a'), 5000, 10), "after the restart\n{}", lab.logs());
    lab.wait("node-2 applies the change made while etcd was down (node-1's b is now a client)", |lab| {
        udp_reaches(lab.ep(1, 'b'), lab.ep(2, 'a'), 5000, 1)
    });

    // node-2's daemon is killed and restarted: it adopts its pinned datapath (the
    // established connection never notices) and re-publishes under a new lease, so the
    // others still see it once the dead daemon's lease (3 s) has expired.
    let mut d2 = lab.members[1].daemon.take().expect("node-2 runs");
    d2.kill().expect("SIGKILL node-2's daemon");
    let _ = d2.wait();
    echo("node-2's daemon dead").unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.members[1].daemon = Some(start_daemon(&lab.members[1], &url));
    lab.wait("node-2's new daemon adopts its datapath and reconnects", |lab| {
        let st = lab.request(2, "status");
        st.contains("attachments (4)")
            && st.contains("cluster: connected")
            && st.contains("3 nodes, 6 endpoints")
    });
    // Past the dead daemon's lease: what it alone had published would be gone now.
    std::thread::sleep(Duration::from_secs(5));
    let seen = lab.request(1, "cluster");
    assert!(
        seen.contains("3 nodes, 6 endpoints"),
        "node-2 re-published after its restart: {seen}\n{}",
        lab.logs()
    );
    echo("node-2's daemon restarted").unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert!(udp_reaches(lab.ep(1, 'a'), lab.ep(2, 'a'), 5000, 10), "after node-2's restart\n{}", lab.logs());
    drop((client, server, listener));

    // node-3 dies: the others drop it once its lease expires.
    let mut d3 = lab.members[2].daemon.take().expect("node-3 runs");
    d3.kill().expect("SIGKILL node-3's daemon");
    let _ = d3.wait();
    lab.wait("node-1 and node-2 drop node-3 after its lease", |lab| {
        (1..=2).all(|i| lab.request(i, "cluster").contains("2 nodes, 4 endpoints"))
    });
    // node-3's datapath still runs (its pins outlive the daemon), so only node-1's tunnel
    // map can stop this flow: once the view change is applied it does.
    lab.wait("node-1 stops tunnelling to node-3's pod", |lab| {
        !udp_reaches(lab.ep(1, 'a'), lab.ep(3, 'a'), 5000, 1)
    });
}

/// Overwrite the identity of `addr`'s /32 leaf in the ipcache pinned under `pin_dir`
/// (`maps/ipc_v4_l{1,2,3}`), walking the tables as the programs do.
fn set_ipcache_v4(pin_dir: &Path, addr: Ipv4Addr, identity: u32) {
    use sluice::maps::names;
    use sluice::maps::policy::IPC_CHILD;
    let sys = sys::kernel();
    let open =
        |name: &str| sys::Map::from_pin(&sys, &pin_dir.join("maps").join(name)).expect("pinned ipcache");
    let word = |v: &[u8], i: usize| u32::from_le_bytes(v[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let a = u32::from(addr);
    let l1 = open(names::IPC_V4_L1).lookup(&0u32.to_le_bytes()).expect("l1").expect("l1 value");
    let e1 = word(&l1, (a >> 16) as usize);
    assert!(e1 & IPC_CHILD != 0, "{addr}: a /32 has an l2 table");
    let l2 = open(names::IPC_V4_L2).lookup(&(e1 & !IPC_CHILD).to_le_bytes()).expect("l2").expect("l2 value");
    let e2 = word(&l2, ((a >> 8) & 0xff) as usize);
    assert!(e2 & IPC_CHILD != 0, "{addr}: a /32 has an l3 table");
    let l3_map = open(names::IPC_V4_L3);
    let key = (e2 & !IPC_CHILD).to_le_bytes();
    let mut l3 = l3_map.lookup(&key).expect("l3").expect("l3 value");
    let at = (a & 0xff) as usize * 4;
    l3[at..at + 4].copy_from_slice(&identity.to_le_bytes());
    l3_map.update(&key, &l3, sys::UpdateFlags::ANY).expect("l3 written");
}

fn reach(r: bool) -> &'static str {
    if r {
        "reaches"
    } else {
        "does not reach"
    }
}
