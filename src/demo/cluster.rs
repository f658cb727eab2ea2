//! `sluice demo --cluster`: three nodes joined through one etcd, with real traffic.
//!
//! ```text
//!  [n1-0 10.0.1.5 client] [n1-1 10.0.1.6 other]      (the same for node-2 and node-3)
//!        | lxc1a               | lxc1b
//!  +--------------------------------------+
//!  | node-1: sluice daemon --etcd         |--- underlay0 172.16.0.1/24
//!  +--------------------------------------+        |
//!                        [underlay: br0 172.16.0.254/24, etcd :2379, "outside"]
//! ```
//!
//! The lab is the one `tests/e2e_cluster.rs` runs (its node files, its policy, its
//! addresses), built here with sluice's own netlink instead of `ip`:
//! - an underlay namespace with a bridge, where the demo's etcd listens (172.16.0.254) and
//!   which doubles as a host outside the cluster (it routes 10.0.2.0/24 to node-2);
//! - per node a namespace with `underlay0` on the bridge and two endpoint namespaces behind
//!   veths (a /32 and a default route to an on-link gateway with a static neighbor entry);
//! - per node the real `sluice daemon --config F --etcd URL --lease-ttl T` (this very
//!   executable, entered into the node's namespace); no node file names a peer.
//!
//! | node | endpoint a | endpoint b |
//! |---|---|---|
//! | node-1 | 10.0.1.5 `app: client` | 10.0.1.6 `app: other` |
//! | node-2 | 10.0.2.5 `app: server` | 10.0.2.6 `app: other` |
//! | node-3 | 10.0.3.5 `app: server` | 10.0.3.6 `app: client` |
//!
//! Servers admit `app: client` on UDP 5000, TCP 8080 and ICMP echo, `world` on UDP 6000,
//! `cluster` on UDP 7000 and `remote-node` on UDP 9000. node-2 has no client of its own, so
//! its selector matches remote pods only.
//!
//! Shown, each with an expectation that decides the exit status:
//! 1. identity agreement: every pod's identity as each node's pinned ipcache holds it; the
//!    same labels have the same number on every node, different labels different numbers;
//! 2. cross-node flows allowed and denied by label selectors (UDP, TCP, ICMP);
//! 3. the entities: a remote pod is `cluster` and not `world`; the underlay host is `world`
//!    and not `cluster`; node-1's own address is `remote-node` at node-2, a pod is not;
//! 4. a node leaving: node-3's daemon is killed (SIGKILL); once its lease expires the other
//!    nodes drop its endpoints (their ipcache no longer names node-3's pods) and stop
//!    tunnelling to them, while node-3's datapath still runs.
//!
//! Everything (daemons, etcd, the nodes' devices and pins under a pin directory unique to
//! this run, namespaces, files) is undone when [`ClusterLab`] is dropped: on success, on
//! error, on panic, and on Ctrl-C (SIGINT/SIGTERM set the stop flag, checked between
//! steps and inside every wait).

use super::traffic::{self, Outcome, Proto};
use sluice::cluster::server::{self, EtcdServer};
use sluice::maps::names;
use sluice::maps::policy::IPC_CHILD;
use sluice::model::Cidr;
use sluice::netlink::{sysctl, NetNs, Netlink, NetlinkError, Route};
use sluice::node::wire;
use sluice::sys;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where etcd listens, on the underlay bridge (also the "outside" host).
const UNDERLAY_HOST: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 254);
/// The endpoints' on-link gateway (a static neighbor entry: no ARP toward the node).
const GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The longest the demo waits for any one thing to happen.
const STALL: Duration = Duration::from_secs(60);
/// Tries for a flow expected to pass (the view may still be being applied).
const ALLOWED_TRIES: u32 = 8;

/// The policy every node carries (it selects only the `app: server` pods).
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
    - fromEntities: [remote-node]
      toPorts: [{ports: [{port: "9000", protocol: UDP}]}]
"#;

/// The labels (`app: ...`) of node `i`'s endpoints a and b.
fn apps(i: u8) -> [&'static str; 2] {
    match i {
        1 => ["client", "other"],
        2 => ["server", "other"],
        _ => ["server", "client"],
    }
}

fn pod_ip(node: u8, ep: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, node, 5 + ep as u8)
}

fn node_ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, node)
}

fn node_file(i: u8) -> String {
    let [a, b] = apps(i);
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: node-{i}}}\nspec:\n  \
         overlay: {{local: {}}}\n  endpoints:\n    \
         - {{name: ep-a, interface: lxc{i}a, ipv4: {}, labels: {{app: {a}}}}}\n    \
         - {{name: ep-b, interface: lxc{i}b, ipv4: {}, labels: {{app: {b}}}}}\n{POLICY}",
        node_ip(i),
        pod_ip(i, 0),
        pod_ip(i, 1)
    )
}

/// Why the demo could not run to its verdicts.
#[derive(Debug, thiserror::Error)]
pub enum ClusterDemoError {
    #[error("{0}")]
    Missing(String),
    #[error("building the lab: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("stalled: {0}")]
    Stalled(String),
    #[error("reading a node's ipcache: {0}")]
    Map(String),
    #[error("interrupted")]
    Interrupted,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterDemoError {
    let what = what.into();
    move |source| ClusterDemoError::Io { what, source }
}

/// One node: its namespaces, files and daemon.
#[derive(Debug)]
struct Member {
    /// Endpoint namespaces (a, b), dropped before the node's.
    endpoints: Vec<NetNs>,
    node: NetNs,
    daemon: Option<Child>,
    config: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

/// Everything the demo made; undone on drop (daemons, datapaths and pins, etcd, namespaces,
/// files), also while unwinding from a panic.
#[derive(Debug)]
pub struct ClusterLab {
    members: Vec<Member>,
    etcd: Option<EtcdServer>,
    underlay: Option<NetNs>,
    pin_root: PathBuf,
    tmp: PathBuf,
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut d) = m.daemon.take() {
                let _ = d.kill();
                let _ = d.wait();
            }
            let pin_dir = m.pin_dir.clone();
            let _ = m.node.run_in(move || wire::down(&sys::kernel(), &pin_dir));
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        self.etcd.take();
        for m in self.members.drain(..) {
            drop(m.endpoints);
            drop(m.node);
        }
        self.underlay.take();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// What the demo is run with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Each daemon's `--lease-ttl` (seconds): how long a dead node stays in the others' view.
    pub lease_ttl: u64,
    /// The `sluice` executable the daemons run.
    pub exe: PathBuf,
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// The demo as `sluice demo --cluster` runs it: checks, runs, prints, cleans up. Exit 0
/// only when every expectation held.
pub fn main(lease_ttl: u64) -> std::process::ExitCode {
    sluice::daemon::signals::install();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sluice demo --cluster: cannot find this executable: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut out = io::stdout();
    match run(&Options { lease_ttl, exe }, &sluice::daemon::signals::STOP, &mut out) {
        Ok(0) => {
            println!("cluster demo: every expectation held");
            std::process::ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("cluster demo: {n} expectations did not hold");
            std::process::ExitCode::from(1)
        }
        Err(ClusterDemoError::Interrupted) => {
            println!("interrupted: daemons, etcd, namespaces and pins removed");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("sluice demo --cluster: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// What is missing to run the demo here, said so that it can be fixed.
pub fn preflight() -> Result<(), ClusterDemoError> {
    sys::kernel_available().map_err(|why| {
        ClusterDemoError::Missing(format!("the cluster demo needs root (bpf(), namespaces): {why}"))
    })?;
    if !server::available() {
        return Err(ClusterDemoError::Missing(
            "the cluster demo runs a real etcd, and `etcd` is not on PATH; install it with:\n  \
             apt-get install etcd-server"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Runs the demo (module contract); returns how many expectations did not hold.
pub fn run(opts: &Options, stop: &AtomicBool, out: &mut dyn Write) -> Result<usize, ClusterDemoError> {
    preflight()?;
    let p = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    let tag = format!("{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
    let base = format!("scd-{tag}");
    let tmp = std::env::temp_dir().join(format!("sluice-demo-cluster-{tag}"));
    std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut lab = ClusterLab {
        members: Vec::new(),
        etcd: None,
        underlay: None,
        pin_root: PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-demo-cluster-{tag}")),
        tmp: tmp.clone(),
    };
    p(out, format!(
        "sluice demo --cluster: three nodes in network namespaces on one underlay, one etcd, a daemon per node (lease {} s)",
        opts.lease_ttl
    ));
    build(&mut lab, &base)?;
    let etcd = EtcdServer::start_in_netns(&base, Some((lab.underlay().name(), UNDERLAY_HOST)))
        .map_err(ClusterDemoError::Etcd)?;
    let url = etcd.url();
    p(out, format!("etcd: {url} (in the underlay namespace), data {}", etcd.data_dir.display()));
    lab.etcd = Some(etcd);
    for i in 0..lab.members.len() {
        let child = start_daemon(&lab.members[i], &opts.exe, &url, opts.lease_ttl)?;
        lab.members[i].daemon = Some(child);
    }
    p(out, "daemons: `sluice daemon --config node-N.yaml --etcd URL` in each node namespace; no node file names a peer".into());
    lab.wait(stop, "every node connected, seeing 3 nodes and 6 endpoints", |lab| {
        (1..=3).all(|i| {
            let c = lab.request(i, "cluster");
            c.contains("cluster: connected") && c.contains("3 nodes, 6 endpoints")
        })
    })?;
    for i in 1..=3 {
        p(out, format!("  node-{i}: {}", lab.request(i, "cluster").trim()));
    }
    let mut failures = 0;

    // 1. Identity agreement, from each node's pinned ipcache.
    p(out, "\n1. identities: each pod's identity as each node's datapath (pinned ipcache) holds it".into());
    let pods: Vec<(u8, usize)> = (1..=3).flat_map(|n| [(n, 0), (n, 1)]).collect();
    let table = |lab: &ClusterLab| -> Result<BTreeMap<(u8, usize), [u32; 3]>, ClusterDemoError> {
        let mut t = BTreeMap::new();
        for &(n, e) in &pods {
            let mut row = [0; 3];
            for (k, cell) in row.iter_mut().enumerate() {
                *cell = lab.ipcache_v4(k as u8 + 1, pod_ip(n, e))?;
            }
            t.insert((n, e), row);
        }
        Ok(t)
    };
    let agreed = |t: &BTreeMap<(u8, usize), [u32; 3]>| {
        t.values().all(|row| row.iter().all(|&id| id >= 256 && id == row[0]))
    };
    let deadline = Instant::now() + STALL;
    let mut ids = table(&lab)?;
    while !agreed(&ids) && Instant::now() < deadline {
        lab.check_stop(stop)?;
        std::thread::sleep(Duration::from_millis(100));
        ids = table(&lab)?;
    }
    p(out, format!("   {:<22} {:<12} {:>8} {:>8} {:>8}", "pod", "labels", "node-1", "node-2", "node-3"));
    for (&(n, e), row) in &ids {
        p(
            out,
            format!(
                "   {:<22} {:<12} {:>8} {:>8} {:>8}",
                format!("{} (node-{n})", pod_ip(n, e)),
                format!("app={}", apps(n)[e]),
                name_of(row[0]),
                name_of(row[1]),
                name_of(row[2])
            ),
        );
    }
    let mut by_app: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (&(n, e), row) in &ids {
        by_app.entry(apps(n)[e]).or_default().extend(row);
    }
    let one_each = by_app.values().all(|v| v.iter().all(|&x| x == v[0]));
    let firsts: Vec<u32> = by_app.values().map(|v| v[0]).collect();
    let distinct = firsts.iter().collect::<std::collections::BTreeSet<_>>().len() == firsts.len();
    let ok = agreed(&ids) && one_each && distinct;
    failures += usize::from(!ok);
    p(
        out,
        format!(
            "   {} same labels -> same number on every node ({}), different labels -> different numbers",
            mark(ok),
            by_app.iter().map(|(app, v)| format!("app={app}: {}", v[0])).collect::<Vec<_>>().join(", ")
        ),
    );

    // 2 and 3. Flows.
    let outside = Src::Underlay;
    let cases: Vec<Case> = vec![
        Case::new(
            "selector",
            "node-1 client -> node-2 server (selects remote pods only)",
            Src::Pod(1, 0),
            (2, 0),
            Proto::Udp,
            5000,
            true,
        ),
        Case::new(
            "selector",
            "node-3 client -> node-2 server",
            Src::Pod(3, 1),
            (2, 0),
            Proto::Udp,
            5000,
            true,
        ),
        Case::new(
            "selector",
            "node-1 client -> node-3 server",
            Src::Pod(1, 0),
            (3, 0),
            Proto::Tcp,
            8080,
            true,
        ),
        Case::new("selector", "node-3 client -> node-2 server", Src::Pod(3, 1), (2, 0), Proto::Icmp, 0, true),
        Case::new(
            "selector",
            "node-1 other -> node-2 server (not app=client)",
            Src::Pod(1, 1),
            (2, 0),
            Proto::Udp,
            5000,
            false,
        ),
        Case::new(
            "selector",
            "node-2 other -> node-3 server (not app=client)",
            Src::Pod(2, 1),
            (3, 0),
            Proto::Tcp,
            8080,
            false,
        ),
        Case::new(
            "selector",
            "node-1 other -> node-3 server (not app=client)",
            Src::Pod(1, 1),
            (3, 0),
            Proto::Icmp,
            0,
            false,
        ),
        Case::new(
            "world",
            "outside host 172.16.0.254 -> node-2 server (world)",
            outside,
            (2, 0),
            Proto::Udp,
            6000,
            true,
        ),
        Case::new(
            "world",
            "node-1 client -> node-2 server (a remote pod is not world)",
            Src::Pod(1, 0),
            (2, 0),
            Proto::Udp,
            6000,
            false,
        ),
        Case::new(
            "cluster",
            "node-1 other -> node-2 server (a remote pod is cluster)",
            Src::Pod(1, 1),
            (2, 0),
            Proto::Udp,
            7000,
            true,
        ),
        Case::new(
            "cluster",
            "node-1's address -> node-2 server (a remote node is cluster)",
            Src::Node(1),
            (2, 0),
            Proto::Udp,
            7000,
            true,
        ),
        Case::new(
            "cluster",
            "outside host -> node-2 server (outside is not cluster)",
            outside,
            (2, 0),
            Proto::Udp,
            7000,
            false,
        ),
        Case::new(
            "remote-node",
            "node-1's address 172.16.0.1 -> node-2 server",
            Src::Node(1),
            (2, 0),
            Proto::Udp,
            9000,
            true,
        ),
        Case::new(
            "remote-node",
            "node-1 other -> node-2 server (a pod is not remote-node)",
            Src::Pod(1, 1),
            (2, 0),
            Proto::Udp,
            9000,
            false,
        ),
        Case::new(
            "remote-node",
            "outside host -> node-2 server (not a node)",
            outside,
            (2, 0),
            Proto::Udp,
            9000,
            false,
        ),
    ];
    p(
        out,
        "\n2. label selectors across nodes, and 3. the entities (real traffic; an answer must come back)"
            .into(),
    );
    p(out, format!("   {:<12} {:<62} {:<10} {:<7} {:<7}", "rule", "flow", "proto", "expect", "got"));
    // Allowed flows first: they also wait out a view change still being applied, so a denied
    // flow cannot pass for "not applied yet".
    let mut order: Vec<&Case> = cases.iter().filter(|c| c.allow).collect();
    order.extend(cases.iter().filter(|c| !c.allow));
    for c in order {
        lab.check_stop(stop)?;
        let got = lab.flow(c)?;
        let ok = got == c.allow;
        failures += usize::from(!ok);
        p(
            out,
            format!(
                "   {:<12} {:<62} {:<10} {:<7} {:<7} {}",
                c.rule,
                c.what,
                c.proto_port(),
                verdict(c.allow),
                verdict(got),
                mark(ok)
            ),
        );
    }

    // 4. A node leaving.
    p(out, format!(
        "\n4. node-3 leaves: its daemon is killed (SIGKILL); its lease ({} s) expires, the others drop its endpoints",
        opts.lease_ttl
    ));
    let server3 = pod_ip(3, 0);
    let before = lab.ipcache_v4(1, server3)?;
    let flow = Case::new(
        "selector",
        "node-1 client -> node-3 server",
        Src::Pod(1, 0),
        (3, 0),
        Proto::Udp,
        5000,
        true,
    );
    let reached_before = lab.flow(&flow)?;
    p(
        out,
        format!(
        "   before: node-1's ipcache says {server3} is {}; node-1 client -> node-3 server UDP 5000: {} {}",
        name_of(before),
        verdict(reached_before),
        mark(reached_before)
    ),
    );
    failures += usize::from(!reached_before);
    let mut d3 = lab.members[2].daemon.take().expect("node-3's daemon was started above");
    let _ = d3.kill();
    let _ = d3.wait();
    let killed = Instant::now();
    lab.wait(stop, "node-1 and node-2 drop node-3", |lab| {
        (1..=2).all(|i| lab.request(i, "cluster").contains("2 nodes, 4 endpoints"))
    })?;
    let dropped_after = killed.elapsed();
    p(
        out,
        format!(
            "   node-1 and node-2 see 2 nodes, 4 endpoints {:.1} s after the kill",
            dropped_after.as_secs_f64()
        ),
    );
    let mut gone = [0u32; 2];
    let deadline = Instant::now() + STALL;
    loop {
        lab.check_stop(stop)?;
        for (k, g) in gone.iter_mut().enumerate() {
            *g = lab.ipcache_v4(k as u8 + 1, server3)?;
        }
        if gone.iter().all(|&id| id < 256) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = gone.iter().all(|&id| id < 256);
    failures += usize::from(!ok);
    p(
        out,
        format!(
            "   node-1's ipcache says {server3} is {}, node-2's {} (no longer {}) {}",
            name_of(gone[0]),
            name_of(gone[1]),
            name_of(before),
            mark(ok)
        ),
    );
    // node-3's datapath still runs (pins outlive its daemon): only node-1's tunnel map can
    // stop this flow now.
    let deadline = Instant::now() + STALL;
    let mut reached = lab.flow(&Case { allow: false, ..flow.clone() })?;
    while reached && Instant::now() < deadline {
        lab.check_stop(stop)?;
        reached = lab.flow(&Case { allow: false, ..flow.clone() })?;
    }
    failures += usize::from(reached);
    p(
        out,
        format!(
            "   after: node-1 client -> node-3 server UDP 5000: {} (node-1 no longer tunnels to node-3) {}",
            verdict(reached),
            mark(!reached)
        ),
    );
    if failures > 0 {
        p(out, format!("\ndaemon logs:\n{}", lab.logs()));
    }
    Ok(failures)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISMATCH"
    }
}

fn verdict(reached: bool) -> &'static str {
    if reached {
        "allow"
    } else {
        "drop"
    }
}

/// An identity number with the reserved ones named.
fn name_of(id: u32) -> String {
    match id {
        0 => "none".into(),
        1 => "host".into(),
        2 => "world".into(),
        3 => "unmanaged".into(),
        6 => "remote-node".into(),
        9 => "world-ipv4".into(),
        10 => "world-ipv6".into(),
        n => n.to_string(),
    }
}

/// Where a flow starts.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Endpoint `e` (0 = a, 1 = b) of node `n`.
    Pod(u8, usize),
    /// Node `n`'s own underlay address, from its namespace.
    Node(u8),
    /// The underlay host (outside the cluster).
    Underlay,
}

#[derive(Debug, Clone)]
struct Case {
    rule: &'static str,
    what: &'static str,
    from: Src,
    to: (u8, usize),
    proto: Proto,
    port: u16,
    allow: bool,
}

impl Case {
    fn new(
        rule: &'static str,
        what: &'static str,
        from: Src,
        to: (u8, usize),
        proto: Proto,
        port: u16,
        allow: bool,
    ) -> Case {
        Case { rule, what, from, to, proto, port, allow }
    }

    fn proto_port(&self) -> String {
        match self.proto {
            Proto::Icmp => "icmp echo".into(),
            p => format!("{} {}", p.name(), self.port),
        }
    }
}

impl ClusterLab {
    fn underlay(&self) -> &NetNs {
        self.underlay.as_ref().expect("built before use")
    }

    fn check_stop(&self, stop: &AtomicBool) -> Result<(), ClusterDemoError> {
        if stop.load(Ordering::Relaxed) {
            return Err(ClusterDemoError::Interrupted);
        }
        Ok(())
    }

    fn wait(
        &self,
        stop: &AtomicBool,
        what: &str,
        cond: impl Fn(&ClusterLab) -> bool,
    ) -> Result<(), ClusterDemoError> {
        let deadline = Instant::now() + STALL;
        while !cond(self) {
            self.check_stop(stop)?;
            if Instant::now() > deadline {
                return Err(ClusterDemoError::Stalled(format!("waiting for {what}\n{}", self.logs())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- node-{} (last lines of {}) ---\n", i + 1, m.log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// One request line to node `i`'s daemon socket; empty when it does not answer.
    fn request(&self, i: u8, line: &str) -> String {
        let socket = &self.members[usize::from(i - 1)].socket;
        let ask = || -> io::Result<String> {
            let mut s = UnixStream::connect(socket)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(format!("{line}\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        ask().unwrap_or_default()
    }

    /// The identity node `i`'s pinned ipcache gives `addr` (walking the tables as the
    /// programs do); 0 when nothing covers it.
    fn ipcache_v4(&self, i: u8, addr: Ipv4Addr) -> Result<u32, ClusterDemoError> {
        let maps = self.members[usize::from(i - 1)].pin_dir.join("maps");
        let sys = sys::kernel();
        let err = |what: String| move |e: sys::SysError| ClusterDemoError::Map(format!("{what}: {e}"));
        let read = |name: &str, key: u32| -> Result<Vec<u8>, ClusterDemoError> {
            let path = maps.join(name);
            let map = sys::Map::from_pin(&sys, &path).map_err(err(format!("opening {}", path.display())))?;
            Ok(map
                .lookup(&key.to_le_bytes())
                .map_err(err(format!("reading {}", path.display())))?
                .unwrap_or_default())
        };
        let word = |v: &[u8], i: usize| {
            v.get(i * 4..i * 4 + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let a = u32::from(addr);
        let e1 = word(&read(names::IPC_V4_L1, 0)?, (a >> 16) as usize);
        if e1 & IPC_CHILD == 0 {
            return Ok(e1);
        }
        let e2 = word(&read(names::IPC_V4_L2, e1 & !IPC_CHILD)?, ((a >> 8) & 0xff) as usize);
        if e2 & IPC_CHILD == 0 {
            return Ok(e2);
        }
        Ok(word(&read(names::IPC_V4_L3, e2 & !IPC_CHILD)?, (a & 0xff) as usize))
    }

    /// Whether `c`'s traffic gets its answer; a flow expected to pass is tried a few times.
    fn flow(&self, c: &Case) -> Result<bool, ClusterDemoError> {
        let (tn, te) = c.to;
        let dst_ns = &self.members[usize::from(tn - 1)].endpoints[te];
        let dst = SocketAddr::from((pod_ip(tn, te), c.port));
        let (src_ns, src) = match c.from {
            Src::Pod(n, e) => (&self.members[usize::from(n - 1)].endpoints[e], pod_ip(n, e)),
            Src::Node(n) => (&self.members[usize::from(n - 1)].node, node_ip(n)),
            Src::Underlay => (self.underlay(), UNDERLAY_HOST),
        };
        let tries = if c.allow { ALLOWED_TRIES } else { 1 };
        for _ in 0..tries {
            let deadline = Instant::now() + traffic::TIMEOUT + Duration::from_millis(500);
            let server = traffic::serve(dst_ns, c.proto, dst, deadline)
                .map_err(io_err(format!("serving {} {dst}", c.proto.name())))?;
            let got = traffic::probe(src_ns, c.proto, IpAddr::V4(src), dst)
                .map_err(io_err(format!("probing {dst} from {src}")));
            let _ = server.join();
            if got? == Outcome::Delivered {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn disable_ipv6(ns: &NetNs) -> Result<(), NetlinkError> {
    for key in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
        sysctl::write(Some(ns), key, "1")?;
    }
    Ok(())
}

/// The namespaces and devices (module contract); stored in `lab` as they are made, so a
/// failure half-way is cleaned up too.
fn build(lab: &mut ClusterLab, base: &str) -> Result<(), ClusterDemoError> {
    let underlay = NetNs::create(&format!("{base}-u"))?;
    disable_ipv6(&underlay)?;
    let unl = Netlink::open_in(&underlay)?;
    unl.set_up(unl.ifindex("lo")?)?;
    let br = unl.create_bridge("br0")?;
    unl.add_address(br, UNDERLAY_HOST.into(), 24)?;
    unl.set_up(br)?;
    lab.underlay = Some(underlay);
    for i in 1u8..=3 {
        let node = NetNs::create(&format!("{base}-n{i}"))?;
        disable_ipv6(&node)?;
        sysctl::ip_forward(Some(&node), true)?;
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            sysctl::write(Some(&node), key, "0")?;
        }
        let nl = Netlink::open_in(&node)?;
        nl.set_up(nl.ifindex("lo")?)?;
        let mut member = Member {
            endpoints: Vec::new(),
            node,
            daemon: None,
            config: lab.tmp.join(format!("node-{i}.yaml")),
            pin_dir: lab.pin_root.join(format!("node-{i}")),
            socket: lab.tmp.join(format!("node-{i}.sock")),
            log: lab.tmp.join(format!("node-{i}.log")),
        };
        for (e, which) in ['a', 'b'].into_iter().enumerate() {
            let ns = NetNs::create(&format!("{base}-n{i}-{e}"))?;
            disable_ipv6(&ns)?;
            let ip = pod_ip(i, e);
            let host = nl.create_veth(&format!("lxc{i}{which}"), "eth0", Some(&ns))?;
            let host_mac = nl.link_info(host)?.mac.unwrap_or_default();
            let enl = Netlink::open_in(&ns)?;
            enl.set_up(enl.ifindex("lo")?)?;
            let eth0 = enl.ifindex("eth0")?;
            let ep_mac = enl.link_info(eth0)?.mac.unwrap_or_default();
            enl.add_address(eth0, ip.into(), 32)?;
            enl.set_up(eth0)?;
            enl.add_neighbor(eth0, GW4.into(), host_mac)?;
            let default = Cidr::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("0.0.0.0/0 is a prefix");
            enl.add_route(&Route::new(default).via(GW4.into()).dev(eth0).onlink())?;
            nl.set_up(host)?;
            nl.add_route(&Route::new(Cidr::host(ip.into())).dev(host))?;
            nl.add_neighbor(host, ip.into(), ep_mac)?;
            member.endpoints.push(ns);
        }
        let port = unl.create_veth(&format!("u{i}"), "underlay0", Some(&member.node))?;
        unl.set_master(port, br)?;
        unl.set_up(port)?;
        let u0 = nl.ifindex("underlay0")?;
        nl.add_address(u0, node_ip(i).into(), 24)?;
        nl.set_up(u0)?;
        std::fs::write(&member.config, node_file(i))
            .map_err(io_err(format!("writing {}", member.config.display())))?;
        lab.members.push(member);
    }
    // Plain routes for the traffic that does not start at a pod: the outside host and
    // node-1's own address reach node-2's pods over the underlay (not the overlay).
    let to_node2 = Cidr::new(Ipv4Addr::new(10, 0, 2, 0).into(), 24).expect("a /24");
    unl.add_route(&Route::new(to_node2).via(node_ip(2).into()).dev(br))?;
    let n1 = Netlink::open_in(&lab.members[0].node)?;
    n1.add_route(&Route::new(to_node2).via(node_ip(2).into()).dev(n1.ifindex("underlay0")?))?;
    Ok(())
}

/// Starts `exe daemon` for `m` inside its node namespace.
fn start_daemon(m: &Member, exe: &Path, etcd: &str, lease_ttl: u64) -> Result<Child, ClusterDemoError> {
    let ns_file =
        File::open(m.node.path()).map_err(io_err(format!("opening {}", m.node.path().display())))?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&m.log)
        .map_err(io_err(format!("opening {}", m.log.display())))?;
    let log2 = log.try_clone().map_err(io_err("duplicating the log descriptor"))?;
    let fd = ns_file.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--config")
        .arg(&m.config)
        .arg("--pin-dir")
        .arg(&m.pin_dir)
        .arg("--socket")
        .arg(&m.socket)
        .args(["--poll-ms", "50", "--etcd", etcd, "--lease-ttl", &lease_ttl.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: between fork and exec the closure only calls setns(2), which is
    // async-signal-safe; `ns_file` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io_err(format!("starting {} daemon", exe.display())))?;
    drop(ns_file);
    Ok(child)
}
