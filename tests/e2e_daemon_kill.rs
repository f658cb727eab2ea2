//! End to end, issue 4: "Kill the daemon with SIGKILL mid-stream and start it again: the
//! established TCP connection keeps working throughout and the stream loses nothing."
//!
//! The real `sluice` binary runs as `sluice daemon --config F --pin-dir D --socket S` inside
//! a node namespace (entered with `setns` before `exec`: `ip netns exec` would remount
//! `/sys` and hide bpffs) whose endpoints A and B are routed through it; B admits UDP 5000
//! and TCP 8080 from A. Once the daemon has attached the node (its socket answers `status`
//! with the four hooks), A opens a TCP connection to B:8080 and streams 3000 numbered
//! datagrams to B:5000, one a millisecond. A third of the way in the daemon gets SIGKILL;
//! with no daemon running the connection carries an exchange; two thirds in a fresh daemon
//! starts, adopts the pins (no program reloaded, the same links) and the connection carries
//! another; at the end every datagram has arrived and the connection still works. The
//! connection exchanges every 100 datagrams all along, and while no daemon runs a denied
//! flow (A to B:6000) is still dropped.
//!
//! A guard kills the daemon, runs `sluice down` and deletes the namespaces on drop, also on
//! panic; names are unique per process and call, so runs can overlap. Gated by
//! `sluice::sys::require_kernel` and `ip` (a skip, or a failure under
//! `SLUICE_REQUIRE_KERNEL=1`).

use sluice::node::wire::{self, LINKS_DIR};
use sluice::sys;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;
#[path = "support/stream.rs"]
mod stream;
use netns::gate;
use node::{udp_reaches, NodeNet};

const PREFIX: &str = "sdk";
const A4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
const N: usize = 3000;
const PACE: Duration = Duration::from_millis(1);
const KILL_AT: usize = N / 3;
const RESTART_AT: usize = 2 * N / 3;
const EXCHANGE_EVERY: usize = 100;
const STALL: Duration = Duration::from_secs(60);

fn node_file() -> String {
    format!(
        r#"apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: kill}}
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
"#
    )
}

/// Where one daemon run keeps its files.
struct Paths {
    tmp: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
}

/// Start `sluice daemon` in the namespace `ns`; its output goes to `<tmp>/daemon-<n>.log`.
fn start_daemon(ns: &str, paths: &Paths, n: u32) -> Child {
    let path = format!("/run/netns/{ns}");
    let ns_file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let log = File::create(paths.tmp.join(format!("daemon-{n}.log"))).expect("daemon log");
    let fd = ns_file.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("daemon")
        .arg("--config")
        .arg(&paths.config)
        .arg("--pin-dir")
        .arg(&paths.pin_dir)
        .arg("--socket")
        .arg(&paths.socket)
        .args(["--poll-ms", "50"])
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

fn daemon_logs(tmp: &Path) -> String {
    let mut out = String::new();
    for n in 1..=2 {
        if let Ok(text) = std::fs::read_to_string(tmp.join(format!("daemon-{n}.log"))) {
            out.push_str(&format!("--- daemon {n} ---\n{text}"));
        }
    }
    out
}

fn request(socket: &Path, line: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Wait until the daemon answers `status` with the node's four hooks attached.
fn wait_attached(daemon: &mut Child, paths: &Paths) {
    let deadline = Instant::now() + STALL;
    loop {
        if let Some(st) = request(&paths.socket, "status") {
            if ["from_ep_1", "to_ep_1", "from_ep_2", "to_ep_2"].iter().all(|p| st.contains(p))
                && st.contains("attachments (4)")
            {
                return;
            }
        }
        if let Ok(Some(exit)) = daemon.try_wait() {
            panic!("the daemon exited ({exit}) before attaching\n{}", daemon_logs(&paths.tmp));
        }
        assert!(Instant::now() < deadline, "the daemon did not attach\n{}", daemon_logs(&paths.tmp));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Link pin name -> (link id, program id), and program pin name -> program id.
fn pinned_ids(pin_dir: &Path) -> (BTreeMap<String, (u32, u32)>, BTreeMap<String, u32>) {
    let sys = sys::kernel();
    let mut links = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir.join(LINKS_DIR)).expect("links dir").flatten() {
        let link = sluice::attach::Link::from_pin(&sys, &e.path()).expect("pinned link");
        let info = link.info().expect("link info");
        links.insert(e.file_name().to_string_lossy().into_owned(), (info.id, info.prog_id));
    }
    let mut progs = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir.join("programs")).expect("programs dir").flatten() {
        let p = sys::Program::from_pin(&sys, &e.path()).expect("pinned program");
        progs.insert(e.file_name().to_string_lossy().into_owned(), p.id());
    }
    (links, progs)
}

/// The daemon process and everything the test made; all undone on drop.
struct Guard {
    daemon: Option<Child>,
    paths: Paths,
    net: NodeNet,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let pin_dir = self.paths.pin_dir.clone();
        let _ = self.net.node.enter(move || wire::down(&sys::kernel(), &pin_dir));
        let _ = std::fs::remove_dir_all(&self.paths.pin_dir);
        let _ = std::fs::remove_dir_all(&self.paths.tmp);
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

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + STALL;
    while !cond() {
        assert!(Instant::now() < deadline, "stalled waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn sigkill_and_restart_lose_nothing() {
    if !gate("sigkill_and_restart_lose_nothing") {
        return;
    }
    netns::remove_stale(PREFIX, "sluice-");
    let base = netns::unique(PREFIX);
    let net = NodeNet::build(&base, &[("lxcA", A4), ("lxcB", B4)]);
    let tmp = std::env::temp_dir().join(format!("sluice-{base}"));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let paths = Paths {
        config: tmp.join("node.yaml"),
        pin_dir: PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-{base}")),
        socket: tmp.join("sluice.sock"),
        tmp,
    };
    std::fs::write(&paths.config, node_file()).expect("write config");
    let mut guard = Guard { daemon: Some(start_daemon(&net.node.name, &paths, 1)), paths, net };
    wait_attached(guard.daemon.as_mut().expect("started"), &guard.paths);
    let before = pinned_ids(&guard.paths.pin_dir);
    assert_eq!(before.0.len(), 4, "four links: {:?}", before.0);

    let (a, b) = (guard.net.ep("lxcA"), guard.net.ep("lxcB"));
    // The TCP connection, open for the whole run.
    let dst = SocketAddr::from((B4, 8080));
    let listener = b.ns.enter(|| TcpListener::bind(dst).expect("B listens on 8080"));
    let mut ta =
        a.ns.enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
            .expect("A connects to B:8080");
    let (mut tb, _) = listener.accept().expect("B accepts");
    for s in [&ta, &tb] {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
    }
    exchange(&mut ta, &mut tb, b"before the stream").expect("TCP before the stream");

    // The UDP stream's sockets.
    let udst = SocketAddr::from((B4, 5000));
    let rx = b.ns.enter(|| UdpSocket::bind(udst).expect("B binds 5000"));
    rx.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let tx = a.ns.enter(|| UdpSocket::bind(SocketAddr::from((A4, 0))).expect("A binds"));
    tx.connect(udst).expect("A connects its UDP socket");

    let sent = AtomicUsize::new(0);
    let sender_done = AtomicBool::new(false);
    let mut events: Vec<String> = Vec::new();
    let mut tcp: Vec<(usize, bool, Result<(), String>)> = Vec::new();
    let t = Instant::now();
    let (seen, denied_without_daemon) = std::thread::scope(|s| {
        let receiver = s.spawn(|| stream::receive(&rx, N, &sender_done));
        let sender = s.spawn(|| {
            let _done = stream::Done(&sender_done);
            for seq in 0..N {
                let mut msg = [0u8; 32];
                msg[..4].copy_from_slice(&(seq as u32).to_be_bytes());
                tx.send(&msg).unwrap_or_else(|e| panic!("A sends datagram {seq}: {e}"));
                sent.store(seq + 1, Ordering::SeqCst);
                std::thread::sleep(PACE);
            }
        });

        // The driver: TCP exchanges all along, the kill and the restart at their marks.
        let mut killed = false;
        let mut denied_without_daemon = None;
        let mut restarted = false;
        let mut next_exchange = EXCHANGE_EVERY;
        while next_exchange <= N {
            wait_for("the sender", || sent.load(Ordering::SeqCst) >= next_exchange.min(N));
            let now = sent.load(Ordering::SeqCst);
            if !killed && now >= KILL_AT {
                let mut d = guard.daemon.take().expect("the first daemon runs");
                d.kill().expect("SIGKILL the daemon");
                let status = d.wait().expect("reap the daemon");
                events.push(format!("SIGKILL at datagram {now}: {status}"));
                killed = true;
                // The datapath still enforces B's policy with no daemon running.
                denied_without_daemon = Some(!udp_reaches(a, b, 6000, 2));
            }
            if killed && !restarted && now >= RESTART_AT {
                let t0 = Instant::now();
                guard.daemon = Some(start_daemon(&guard.net.node.name, &guard.paths, 2));
                wait_attached(guard.daemon.as_mut().expect("started"), &guard.paths);
                events.push(format!(
                    "restarted at datagram {now}, attached in {:?} (datagram {})",
                    t0.elapsed(),
                    sent.load(Ordering::SeqCst)
                ));
                restarted = true;
            }
            let daemon_up = guard.daemon.is_some();
            let msg = format!("at datagram {now}");
            tcp.push((now, daemon_up, exchange(&mut ta, &mut tb, msg.as_bytes())));
            next_exchange += EXCHANGE_EVERY;
        }
        sender.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let seen = receiver.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (seen, denied_without_daemon)
    });
    let stream_time = t.elapsed();
    let logs = daemon_logs(&guard.paths.tmp);

    // The connection carried every exchange, with and without a daemon.
    assert_eq!(events.len(), 2, "kill and restart both happened: {events:?}");
    for (at, _, r) in &tcp {
        r.as_ref().unwrap_or_else(|e| panic!("TCP exchange at datagram {at}: {e}\n{logs}"));
    }
    assert!(tcp.iter().any(|(_, up, _)| !up), "an exchange ran while no daemon was running");
    assert_eq!(denied_without_daemon, Some(true), "A -> B:6000 is dropped while no daemon runs");
    exchange(&mut ta, &mut tb, b"after the stream").expect("TCP after the stream");
    // Not one datagram lost.
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, &x)| !x).map(|(i, _)| i).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} datagrams lost, first: {:?}\n{events:?}\n{logs}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // The second daemon adopted the node: the same programs on the same links.
    assert_eq!(pinned_ids(&guard.paths.pin_dir), before, "nothing reloaded or relinked\n{logs}");
    assert!(logs.contains("adopted node pinned under"), "the second daemon adopted the pins\n{logs}");
    let metrics = request(&guard.paths.socket, "metrics").expect("metrics");
    assert!(metrics.contains("updates_applied 1\nerrors 0"), "metrics: {metrics}");
    eprintln!(
        "SIGKILL no loss: {N} datagrams, {} TCP exchanges, {events:?}, stream {stream_time:?}",
        tcp.len()
    );
    drop((ta, tb, listener));
    drop(guard);
}
