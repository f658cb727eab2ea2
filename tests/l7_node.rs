//! End to end, issue 12: L7 policy through the whole node. The real `sluice daemon` runs in a
//! node namespace with four endpoints; it attaches the endpoint programs, installs the
//! to-proxy route and starts `sluice proxy` itself (its own process). Real `curl` runs in the
//! endpoints' namespaces.
//!
//! The policy: endpoint A may reach B on 80 with HTTP rules (`GET /api/.*`) and on 8080 with
//! no L7 rule; C may reach B on 8080 only; D (a server on 80 too) is allowed to nobody. So:
//! - A's allowed GET gets 200 from B, which sees A's own address (the proxy's upstream leaves
//!   from the client's address); a DELETE and a GET outside `/api/` get the proxy's 403;
//! - A's DELETE to 8080 (no L7 rule) reaches B: that port is not redirected;
//! - C to B:80 and A to D:80 are dropped at L3/L4 by `from-endpoint`: neither reaches a server
//!   nor the proxy (its access log records only A's three requests to B:80), which proves the
//!   redirect comes after the L3/L4 decision, not in front of it.
//!
//! A guard kills the daemon and the proxy, runs `sluice down` and deletes the namespaces on
//! drop, also on panic.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;
use netns::gate;
use node::NodeNet;

const PREFIX: &str = "sl7n";
const A4: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 2);
const C4: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 3);
const D4: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 4);
const STALL: Duration = Duration::from_secs(60);

fn node_file() -> String {
    format!(
        r#"apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: l7}}
spec:
  endpoints:
    - {{name: ep-a, interface: lxcA, ipv4: {A4}, labels: {{app: a}}}}
    - {{name: ep-b, interface: lxcB, ipv4: {B4}, labels: {{app: b}}}}
    - {{name: ep-c, interface: lxcC, ipv4: {C4}, labels: {{app: c}}}}
    - {{name: ep-d, interface: lxcD, ipv4: {D4}, labels: {{app: d}}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: a-to-b}}
spec:
  endpointSelector: {{matchLabels: {{app: a}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: b}}}}]
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/.*"}}
    - toEndpoints: [{{matchLabels: {{app: b}}}}]
      toPorts:
        - ports: [{{port: "8080", protocol: TCP}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: c-to-b}}
spec:
  endpointSelector: {{matchLabels: {{app: c}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: b}}}}]
      toPorts:
        - ports: [{{port: "8080", protocol: TCP}}]
"#
    )
}

struct Paths {
    tmp: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
}

impl Paths {
    fn access_log(&self) -> PathBuf {
        self.tmp.join("proxy-access.log")
    }
    fn logs(&self) -> String {
        ["daemon.log", "proxy.log"]
            .iter()
            .map(|f| {
                format!("--- {f} ---\n{}", std::fs::read_to_string(self.tmp.join(f)).unwrap_or_default())
            })
            .collect()
    }
}

/// `sluice daemon` in the namespace `ns`.
fn start_daemon(ns: &str, paths: &Paths) -> Child {
    let path = format!("/run/netns/{ns}");
    let ns_file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let log = File::create(paths.tmp.join("daemon.log")).expect("daemon log");
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

fn request(socket: &Path, line: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The daemon, the proxy it started and the namespaces; all undone on drop.
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
        // The proxy runs in its own session: stop it by the pid the daemon wrote.
        if let Some(pid) = std::fs::read_to_string(self.paths.tmp.join("proxy.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid this test's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let node = self.net.node.name.clone();
        let _ = Command::new("ip")
            .args(["netns", "exec", &node, env!("CARGO_BIN_EXE_sluice"), "down", "--pin-dir"])
            .arg(&self.paths.pin_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.paths.pin_dir);
        let _ = std::fs::remove_dir_all(&self.paths.tmp);
    }
}

/// What a test server saw: (peer address, request line).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP server on `port` in `ns` answering every request `200` with "<method> <path>".
fn serve(ns: &netns::Netns, addr: Ipv4Addr, port: u16, seen: Seen) {
    let listener = ns.enter(|| TcpListener::bind((addr, port)).expect("server listens"));
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let peer = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                        pending.drain(..end + 4);
                        let line: Vec<&str> = head.lines().next().unwrap_or("").split_whitespace().collect();
                        let what = format!("{} {}", line.first().unwrap_or(&""), line.get(1).unwrap_or(&""));
                        seen.lock().unwrap().push((peer.clone(), what.clone()));
                        let response =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{what}", what.len());
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
}

/// curl in `ns`: (status, body); status 0 when no response came.
fn curl(ns: &str, method: &str, url: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            url,
        ])
        .output()
        .expect("runs curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn l7_rules_are_enforced_through_the_node_after_l3_l4_policy() {
    if !gate("l7_rules_are_enforced_through_the_node_after_l3_l4_policy") {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var_os("SLUICE_REQUIRE_KERNEL").is_none(), "curl is not installed");
        eprintln!("skipped: curl is not installed");
        return;
    }
    netns::remove_stale_namespaces(PREFIX);
    let base = netns::unique(PREFIX);
    let tmp = std::env::temp_dir().join(&base);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    std::fs::write(tmp.join("node.yaml"), node_file()).expect("node file");
    let paths = Paths {
        config: tmp.join("node.yaml"),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/{base}")),
        socket: tmp.join("sluice.sock"),
        tmp,
    };
    let net = NodeNet::build(&base, &[("lxcA", A4), ("lxcB", B4), ("lxcC", C4), ("lxcD", D4)]);
    let mut guard = Guard { daemon: Some(start_daemon(&net.node.name, &paths)), paths, net };

    // Attached (eight hooks) and the proxy listening.
    let deadline = Instant::now() + STALL;
    loop {
        let attached =
            request(&guard.paths.socket, "status").is_some_and(|st| st.contains("attachments (8)"));
        let listening = attached
            && guard.net.node.enter(|| {
                TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, sluice::proxy::LISTEN_PORT).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
        if listening {
            break;
        }
        if let Some(Ok(Some(exit))) = guard.daemon.as_mut().map(|d| d.try_wait()) {
            panic!("the daemon exited ({exit})\n{}", guard.paths.logs());
        }
        assert!(Instant::now() < deadline, "no attached node with a proxy\n{}", guard.paths.logs());
        std::thread::sleep(Duration::from_millis(50));
    }

    let (b_seen, d_seen): (Seen, Seen) = Default::default();
    serve(&guard.net.ep("lxcB").ns, B4, 80, b_seen.clone());
    serve(&guard.net.ep("lxcB").ns, B4, 8080, b_seen.clone());
    serve(&guard.net.ep("lxcD").ns, D4, 80, d_seen.clone());
    let (a, c) = (guard.net.ep("lxcA").ns.name.clone(), guard.net.ep("lxcC").ns.name.clone());

    // (client, method, url, expected status, expected body)
    let cases: [(&str, &str, String, u16, &str); 7] = [
        (&a, "GET", format!("http://{B4}/api/items"), 200, "GET /api/items"),
        (&a, "DELETE", format!("http://{B4}/api/items"), 403, "Access denied\r\n"),
        (&a, "GET", format!("http://{B4}/admin"), 403, "Access denied\r\n"),
        (&a, "DELETE", format!("http://{B4}:8080/api/items"), 200, "DELETE /api/items"),
        (&c, "GET", format!("http://{B4}/api/items"), 0, ""),
        (&a, "GET", format!("http://{D4}/api/items"), 0, ""),
        (&c, "GET", format!("http://{B4}:8080/api/items"), 200, "GET /api/items"),
    ];
    let mut failures = Vec::new();
    for (client, method, url, status, body) in &cases {
        let got = curl(client, method, url);
        if got != (*status, body.to_string()) {
            failures.push(format!("{client} {method} {url}: expected ({status}, {body:?}), got {got:?}"));
        }
    }
    // B saw the allowed requests from the clients' own addresses, and nothing denied.
    let b = b_seen.lock().unwrap().clone();
    let expected_b = vec![
        (A4.to_string(), "GET /api/items".to_string()),
        (A4.to_string(), "DELETE /api/items".to_string()),
        (C4.to_string(), "GET /api/items".to_string()),
    ];
    if b != expected_b {
        failures.push(format!("B saw {b:?}, expected {expected_b:?}"));
    }
    let d = d_seen.lock().unwrap().clone();
    if !d.is_empty() {
        failures.push(format!("D, allowed to nobody, saw {d:?}"));
    }
    // The proxy judged exactly A's three requests to B:80 (its records are flushed every
    // 100 ms).
    std::thread::sleep(sluice::proxy::LOG_FLUSH * 5);
    let log = std::fs::read_to_string(guard.paths.access_log()).unwrap_or_default();
    let records: Vec<&str> = log.lines().collect();
    if records.len() != 3
        || records.iter().any(|r| r.contains(&C4.to_string()) || r.contains(&D4.to_string()))
    {
        failures.push(format!("proxy access records (expected A's 3 requests to B:80):\n{log}"));
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), guard.paths.logs());
    // `sluice down` removes the to-proxy routing the daemon installed.
    let rules = || netns::ip_output(&["-n", &guard.net.node.name, "rule", "show"]);
    assert!(rules().contains("lookup 2004"), "the daemon installed the to-proxy rule:\n{}", rules());
    if let Some(mut d) = guard.daemon.take() {
        let _ = d.kill();
        let _ = d.wait();
    }
    let down = Command::new("ip")
        .args(["netns", "exec", &guard.net.node.name, env!("CARGO_BIN_EXE_sluice"), "down", "--pin-dir"])
        .arg(&guard.paths.pin_dir)
        .output()
        .expect("runs sluice down");
    assert!(down.status.success(), "sluice down: {}", String::from_utf8_lossy(&down.stderr));
    assert!(!rules().contains("lookup 2004"), "sluice down removed the to-proxy rule:\n{}", rules());
}

/// L7 rules added to the node file while the daemon runs get their proxy and route without
/// a restart: first A may reach B:80 with no L7 rule (a DELETE reaches B), then the file
/// gains `rules.http` on that port and the same DELETE gets the proxy's 403 while a GET
/// under `/api/` still reaches B.
#[test]
fn l7_rules_added_while_the_daemon_runs_get_their_proxy() {
    if !gate("l7_rules_added_while_the_daemon_runs_get_their_proxy") {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var_os("SLUICE_REQUIRE_KERNEL").is_none(), "curl is not installed");
        eprintln!("skipped: curl is not installed");
        return;
    }
    netns::remove_stale_namespaces(PREFIX);
    let base = netns::unique(PREFIX);
    let tmp = std::env::temp_dir().join(&base);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let with_l7 = node_file();
    let without_l7 = with_l7.replace(
        "          rules:\n            http:\n              - {method: GET, path: \"/api/.*\"}\n",
        "",
    );
    assert_ne!(with_l7, without_l7, "the node file without its L7 rules");
    std::fs::write(tmp.join("node.yaml"), &without_l7).expect("node file");
    let paths = Paths {
        config: tmp.join("node.yaml"),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/{base}")),
        socket: tmp.join("sluice.sock"),
        tmp,
    };
    let net = NodeNet::build(&base, &[("lxcA", A4), ("lxcB", B4), ("lxcC", C4), ("lxcD", D4)]);
    let mut guard = Guard { daemon: Some(start_daemon(&net.node.name, &paths)), paths, net };
    let until = |what: &str, guard: &mut Guard, mut cond: Box<dyn FnMut(&Guard) -> bool>| {
        let deadline = Instant::now() + STALL;
        while !cond(guard) {
            if let Some(Ok(Some(exit))) = guard.daemon.as_mut().map(|d| d.try_wait()) {
                panic!("the daemon exited ({exit})\n{}", guard.paths.logs());
            }
            assert!(Instant::now() < deadline, "{what}\n{}", guard.paths.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until(
        "no attached node",
        &mut guard,
        Box::new(|g: &Guard| {
            request(&g.paths.socket, "status").is_some_and(|st| st.contains("attachments (8)"))
        }),
    );
    let seen: Seen = Default::default();
    serve(&guard.net.ep("lxcB").ns, B4, 80, seen.clone());
    let a = guard.net.ep("lxcA").ns.name.clone();
    let delete = format!("http://{B4}/api/items");
    assert_eq!(curl(&a, "DELETE", &delete), (200, "DELETE /api/items".to_string()), "no L7 rule yet");

    std::fs::write(&guard.paths.config, &with_l7).expect("node file with L7 rules");
    until(
        "the proxy did not start after the L7 rules were added",
        &mut guard,
        Box::new(|g: &Guard| {
            g.net.node.enter(|| {
                TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, sluice::proxy::LISTEN_PORT).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
        }),
    );
    // The policy entries and the proxy change in the same poll, but not at the same instant:
    // a connection in between fails closed, so ask again until the proxy answers.
    until(
        "the DELETE never got the proxy's 403",
        &mut guard,
        Box::new(move |_: &Guard| curl(&a, "DELETE", &delete).0 == 403),
    );
    let a = guard.net.ep("lxcA").ns.name.clone();
    assert_eq!(curl(&a, "GET", &format!("http://{B4}/api/items")), (200, "GET /api/items".to_string()));
}
