//! Issue 11: "daemon SIGKILL and restart mid-stream without loss; detach mid-stream without
//! loss" for an accelerated connection.
//!
//! Two endpoints in namespaces behind their veths, the node's tc programs and the socket
//! layer on a fresh cgroup. A server and a client process in the cgroup (each in its
//! endpoint's namespace) hold one TCP connection, driven line by line from the test: the
//! client sends chunks of one numbered byte stream when told; the server reads nothing
//! until told, so what the client sent sits redirected and unread in the server's
//! socket (its `sk_psock` ingress queue, not TCP's receive queue). At the end the server
//! reads to EOF and both report length and hash of the stream.
//!
//! - `down_mid_stream_loses_no_redirected_byte`: `sluice down` (links detached, every pin
//!   removed, the node's maps unpinned) while bytes wait unread in the accelerated socket;
//!   the client goes on sending after `down`; the server then reads every byte, in order.
//! - `daemon_sigkill_and_restart_keep_the_accelerated_stream`: `sluice daemon` runs the
//!   node (socket layer included); it gets SIGKILL with bytes unread, the client sends with
//!   no daemon running, a second daemon adopts the pins (the same socket-layer links), the
//!   client sends again; every byte arrives and every byte was redirected (the connection
//!   stayed accelerated throughout).
//!
//! Names are unique per process and call; namespaces, cgroup, pins and processes are
//! removed on drop, also on panic.

#[path = "support/cgroup.rs"]
mod cgroup;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::codegen::sockops;
use sluice::node::{self as snode, load, socklayer, wire};
use std::fs::File;
use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "slst";
const PORT: u16 = 8080;
/// One chunk the client sends when told.
const CHUNK: usize = 512 << 10;
const ROLE_ENV: &str = "SLUICE_SOCK_TEARDOWN_ROLE";
/// What starts a role's answer line.
const ROLE_SAYS: &str = "role: ";

/// Byte `i` of the stream.
fn stream_byte(i: u64) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8 ^ (i >> 20) as u8
}

/// FNV-1a, continued over `data` from `h`.
fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter().fold(h, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Not a test on its own: `server ADDR` or `client ADDR` in an endpoint namespace, in the
/// cgroup, driven by lines on stdin.
/// - server: prints `ready`, accepts one connection, prints `accepted`; on `read` reads to
///   EOF (retrying the accelerated path's spurious `EAGAIN`) and prints `got LEN HASH`.
/// - client: connects, prints `connected`; on `send N` writes the next N bytes of the
///   stream and prints `sent TOTAL`; on `end` half-closes and prints `hash TOTAL HASH`.
#[test]
fn sock_teardown_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let (kind, addr) = role.split_once(' ').expect("ROLE ADDR");
    let addr: SocketAddr = addr.parse().expect("address");
    let mut commands = std::io::stdin().lock().lines();
    let say = |line: String| {
        // On a line of its own: libtest's `test NAME ... ` has no newline before it.
        println!("\n{ROLE_SAYS}{line}");
        std::io::stdout().flush().expect("stdout");
    };
    if kind == "server" {
        let l = TcpListener::bind(addr).expect("bind");
        say("ready".into());
        let (mut s, _) = l.accept().expect("accept");
        say("accepted".into());
        let mut next = || commands.next().expect("a command").expect("stdin");
        // `read N`: exactly N bytes.
        let want: usize = next().strip_prefix("read ").and_then(|n| n.parse().ok()).expect("read N");
        let (mut len, mut hash) = (0usize, FNV_START);
        let mut buf = vec![0u8; 1 << 16];
        while len < want {
            let n = buf.len().min(want - len);
            match s.read(&mut buf[..n]) {
                Ok(0) => break,
                Ok(n) => {
                    hash = fnv(hash, &buf[..n]);
                    len += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        say(format!("got {len} {hash:016x}"));
        // `eof`: read to EOF; how many bytes came after the N.
        assert_eq!(next(), "eof");
        let mut extra = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => extra += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        say(format!("eof {extra}"));
        return;
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    say("connected".into());
    let (mut total, mut hash) = (0u64, FNV_START);
    for cmd in commands {
        let cmd = cmd.expect("stdin");
        if let Some(n) = cmd.strip_prefix("send ") {
            let n: u64 = n.parse().expect("send N");
            let chunk: Vec<u8> = (total..total + n).map(stream_byte).collect();
            s.write_all(&chunk).expect("write");
            hash = fnv(hash, &chunk);
            total += n;
            say(format!("sent {total}"));
        } else if cmd == "end" {
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            say(format!("hash {total} {hash:016x}"));
            return;
        }
    }
}

/// One role process: its stdin for commands, its stdout lines for answers.
struct Role {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Role {
    fn spawn(cg: &cgroup::Cgroup, ns: &str, name: &'static str, at: SocketAddr) -> Role {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", "sock_teardown_role", "--nocapture", "--test-threads", "1"])
            .env(ROLE_ENV, format!("{name} {at}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cg.spawn(&mut c).unwrap_or_else(|e| panic!("spawn the {name}: {e}"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Role { name, child, stdin, lines }
    }

    fn tell(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").unwrap_or_else(|e| panic!("tell the {} `{cmd}`: {e}", self.name));
    }

    /// The next line starting with `prefix` (libtest's own lines skipped), without it.
    fn expect(&mut self, prefix: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("role stdout");
            if let Some(rest) = line.strip_prefix(ROLE_SAYS).and_then(|l| l.strip_prefix(prefix)) {
                return rest.trim().to_string();
            }
        }
        panic!("the {} ended before saying `{prefix}`: {:?}", self.name, self.child.try_wait());
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node file: two endpoints, the server admitting the client on [`PORT`], the socket
/// layer on `cgroup`.
fn node_file(c: Ipv4Addr, s: Ipv4Addr, cgroup: &Path) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: teardown}}\nspec:\n  socketLayer: {{cgroup: {}}}\n  endpoints:\n\
         \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
         \x20   - {{name: server, interface: lxc-s, ipv4: {s}, labels: {{app: server}}}}\n\
         ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{{port: \"{PORT}\", protocol: TCP}}]}}]\n",
        cgroup.display()
    )
}

/// A socket-layer counter of the node pinned at `pin`.
fn layer_counter(net: &NodeNet, pin: &Path, reason: &str) -> u64 {
    let st = net.node.enter(|| wire::status(&sluice::sys::kernel(), pin).expect("status"));
    st.counter("socket layer", reason)
}

/// The client half-closes; the server reads as many bytes as the client sent, and the
/// two agree on the hash (every byte, in order); then the server reads to EOF and finds
/// nothing more. The total.
fn finish(server: &mut Role, client: &mut Role) -> u64 {
    client.tell("end");
    let sent = client.expect("hash ");
    let total: u64 = sent.split(' ').next().and_then(|n| n.parse().ok()).expect("a length");
    server.tell(&format!("read {total}"));
    let got = server.expect("got ");
    assert_eq!(got, sent, "server got (len hash) vs client sent (len hash)");
    server.tell("eof");
    assert_eq!(server.expect("eof "), "0", "bytes after the client's last");
    total
}

#[test]
fn down_mid_stream_loses_no_redirected_byte() {
    let test = "down_mid_stream_loses_no_redirected_byte";
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
    let pin = PinDir(PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    let cfg = sluice::model::parse_str(&node_file(c, s, &cg.path), "teardown.yaml").expect("config parses");
    let sys = sluice::sys::kernel();
    net.node.enter(|| {
        let plan = snode::plan(&cfg).expect("plans");
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        wire::attach(&sys, &cfg, &pin.0, &wire::AttachOptions::default()).expect("attaches");
        snode::forward::sync(&sys, &cfg, &pin.0).expect("forwarding");
    });
    let r = socklayer::sync(&sys, &cfg, &pin.0).expect("socket layer");
    assert_eq!(r.created, 2, "{r}");

    let at = SocketAddr::from((s, PORT));
    let mut server = Role::spawn(&cg, &net.ep("lxc-s").ns.name, "server", at);
    server.expect("ready");
    let mut client = Role::spawn(&cg, &net.ep("lxc-c").ns.name, "client", at);
    client.expect("connected");
    server.expect("accepted");

    // Bytes redirected into the server's socket, unread.
    client.tell(&format!("send {CHUNK}"));
    client.expect("sent ");
    assert_eq!(layer_counter(&net, &pin.0, "accelerated"), 2, "both ends accelerated");
    assert_eq!(layer_counter(&net, &pin.0, "bytes_redirected"), CHUNK as u64, "the chunk was redirected");

    let sock_hash = pin.0.join("maps").join(sluice::maps::names::SOCK_HASH);
    let hash_id = sluice::sys::Map::from_pin(&sys, &sock_hash).and_then(|m| m.info()).expect("sock_hash").id;
    // `sluice down`: every link detached, every pin (sock_hash included) gone.
    let report = net.node.enter(|| wire::down(&sys, &pin.0).expect("down"));
    assert!(!pin.0.exists(), "down removes the pin dir:\n{report}");
    assert!(report.removed.iter().any(|l| l.contains("socket-layer")), "{report}");

    // What the kernel does: the map outlives its pin. Each socket in it holds the `sk_msg`
    // program it took at insertion, and the program holds the map, so the map (with the
    // sockets and their queues of redirected bytes) stays until the sockets close.
    assert!(sluice::sys::Map::from_id(&sys, hash_id).is_ok(), "sock_hash {hash_id} is alive after down");
    // `down` took the node's routes to the endpoints with it (they are sluice's); put them
    // back, as the node's own stack would have them, so the connection's TCP segments (its
    // close) have a path.
    for (ip, dev) in [(c, "lxc-c"), (s, "lxc-s")] {
        net.node.ip(&["route", "replace", &format!("{ip}/32"), "dev", dev]);
    }
    // The connection goes on after down, and the unread bytes are all still there.
    client.tell(&format!("send {CHUNK}"));
    client.expect("sent ");
    let total = finish(&mut server, &mut client);
    assert_eq!(total, 2 * CHUNK as u64);
    // Both sockets closed: the map goes (freed after an RCU grace period).
    drop((server, client));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sluice::sys::Map::from_id(&sys, hash_id).is_ok() {
        assert!(Instant::now() < deadline, "sock_hash {hash_id} still alive after both sockets closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{test}: {CHUNK} bytes unread across down, {total} bytes in all, none lost");
}

/// Start `sluice daemon` in the namespace `ns` (entered with `setns` before `exec`: `ip
/// netns exec` would remount `/sys` and hide bpffs); its output goes to `log`.
fn start_daemon(ns: &str, config: &Path, pin_dir: &Path, socket: &Path, log: &Path) -> Child {
    let path = format!("/run/netns/{ns}");
    let ns_file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let log = File::create(log).expect("daemon log");
    let fd = ns_file.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("daemon")
        .arg("--config")
        .arg(config)
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--socket")
        .arg(socket)
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

/// The ids of the pinned socket-layer links (`sk_msg`, `sock_ops`) once both are there.
fn wait_socket_layer(daemon: &mut Child, pin_dir: &Path, log: &Path) -> [u32; 2] {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sys = sluice::sys::kernel();
    loop {
        let dir = pin_dir.join(socklayer::SOCKLAYER_DIR);
        let ids = [sockops::MSG_NAME, sockops::OPS_NAME].map(|n| {
            sluice::attach::Link::from_pin(&sys, &dir.join(n)).ok().and_then(|l| l.info().ok()).map(|i| i.id)
        });
        if let [Some(msg), Some(ops)] = ids {
            return [msg, ops];
        }
        if let Ok(Some(exit)) = daemon.try_wait() {
            panic!("the daemon exited ({exit}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not attach the socket layer:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon, killed on drop; then `down` in the node namespace.
struct DaemonGuard<'a> {
    daemon: Option<Child>,
    net: &'a NodeNet,
    pin_dir: PathBuf,
    tmp: PathBuf,
}

impl Drop for DaemonGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let pin_dir = self.pin_dir.clone();
        let _ = self.net.node.enter(move || wire::down(&sluice::sys::kernel(), &pin_dir));
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

#[test]
fn daemon_sigkill_and_restart_keep_the_accelerated_stream() {
    let test = "daemon_sigkill_and_restart_keep_the_accelerated_stream";
    if !gate(test) {
        return;
    }
    if let Err(why) = cgroup::available() {
        panic!("{test}: {why}");
    }
    remove_stale(PREFIX, "sluice-");
    let base = unique(PREFIX);
    let (c, s) = (Ipv4Addr::new(10, 85, 0, 10), Ipv4Addr::new(10, 85, 0, 20));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-s", s)]);
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    let tmp = std::env::temp_dir().join(format!("sluice-{base}"));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let config = tmp.join("node.yaml");
    std::fs::write(&config, node_file(c, s, &cg.path)).expect("write config");
    let socket = tmp.join("sluice.sock");
    let pin_dir = PathBuf::from(sluice::sys::DEFAULT_BPFFS).join(format!("sluice-{base}"));
    let logs = [tmp.join("daemon-1.log"), tmp.join("daemon-2.log")];
    let mut guard = DaemonGuard { daemon: None, net: &net, pin_dir: pin_dir.clone(), tmp: tmp.clone() };
    let daemon = |n: usize| start_daemon(&net.node.name, &config, &pin_dir, &socket, &logs[n]);
    guard.daemon = Some(daemon(0));
    let links = wait_socket_layer(guard.daemon.as_mut().expect("started"), &pin_dir, &logs[0]);

    let at = SocketAddr::from((s, PORT));
    let mut server = Role::spawn(&cg, &net.ep("lxc-s").ns.name, "server", at);
    server.expect("ready");
    let mut client = Role::spawn(&cg, &net.ep("lxc-c").ns.name, "client", at);
    client.expect("connected");
    server.expect("accepted");
    client.tell(&format!("send {CHUNK}"));
    client.expect("sent ");

    // SIGKILL with the chunk unread; the connection carries another with no daemon.
    let mut d = guard.daemon.take().expect("the first daemon runs");
    d.kill().expect("SIGKILL the daemon");
    d.wait().expect("reap the daemon");
    client.tell(&format!("send {CHUNK}"));
    client.expect("sent ");

    // A second daemon adopts the pins: the same socket-layer links.
    guard.daemon = Some(daemon(1));
    let again = wait_socket_layer(guard.daemon.as_mut().expect("started"), &pin_dir, &logs[1]);
    let log2 = || std::fs::read_to_string(&logs[1]).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log2().contains("socket layer on") {
        assert!(Instant::now() < deadline, "the second daemon did not sync the socket layer:\n{}", log2());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(again, links, "the restarted daemon kept the socket-layer links\n{}", log2());
    assert!(log2().contains("0 links created, 2 kept"), "{}", log2());
    client.tell(&format!("send {CHUNK}"));
    client.expect("sent ");

    let total = finish(&mut server, &mut client);
    assert_eq!(total, 3 * CHUNK as u64);
    // Every byte went the accelerated way, before, without and after the daemon.
    assert_eq!(layer_counter(&net, &pin_dir, "accelerated"), 2, "both ends accelerated");
    assert_eq!(layer_counter(&net, &pin_dir, "bytes_redirected"), total, "every byte redirected");
    eprintln!("{test}: {total} bytes across SIGKILL and restart, all redirected, none lost");
    drop((server, client));
    drop(guard);
}
