//! The L7 redirect with real sockets: a client namespace and a server namespace joined by a
//! node namespace, whose client- and server-side veths carry the `to_proxy` program at tc
//! ingress; `sluice proxy` runs in the node namespace in transparent mode (no `--upstream`).
//! The client connects to the server's own address; the datapath hands the connection to the
//! proxy (`bpf_sk_assign`), which judges each request, forwards allowed ones from the client's
//! address (`IP_TRANSPARENT`) and answers denied ones with 403.
//!
//! Everything (namespaces, links, proxy process, files) is removed on drop, also on panic.

#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns::Netns;
use sluice::attach::{Direction, Interface, Link};
use sluice::codegen::to_proxy::{self, Redirect};
use sluice::node::load::load_generated;
use sluice::sys::{self, ProgType, Syscall};

const CLIENT: &str = "10.79.0.2";
const CLIENT_GW: &str = "10.79.0.1";
const SERVER: &str = "10.79.1.2";
const SERVER_GW: &str = "10.79.1.1";
const SERVER_PORT: u16 = 8080;
const PROXY_PORT: u16 = 15001;

/// The node: the frontend (client) and backend (server) endpoints, `policy` appended.
fn node_file(policy: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: n}}
spec:
  endpoints:
    - {{name: frontend, interface: lxcf, ipv4: {CLIENT}, labels: {{app: frontend}}}}
    - {{name: backend, interface: lxcb, ipv4: {SERVER}, labels: {{app: backend}}}}
{policy}"
    )
}

/// Cilium's documented example as the demo uses it: the frontend may `GET` `path` on the
/// backend's port, nothing else (an egress rule: the client's side).
fn egress_policy(path: &str) -> String {
    format!(
        "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: frontend}}
spec:
  endpointSelector: {{matchLabels: {{app: frontend}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: backend}}}}]
      toPorts:
        - ports: [{{port: '{SERVER_PORT}', protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: '{path}'}}
"
    )
}

/// The same rule as the backend's ingress policy (the server's side).
fn ingress_policy(path: &str) -> String {
    format!(
        "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: backend}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: '{SERVER_PORT}', protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: '{path}'}}
"
    )
}

struct Lab {
    client: Netns,
    node: Netns,
    server: Netns,
    dir: PathBuf,
    proxy: Option<Child>,
    links: Vec<Link>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.links.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(policy: &str) -> Lab {
        netns::remove_stale_namespaces("l7r");
        let client = Netns::new(netns::unique("l7r"));
        let node = Netns::new(netns::unique("l7r"));
        let server = Netns::new(netns::unique("l7r"));
        let dir = std::env::temp_dir().join(netns::unique("sluice-l7r"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node.yaml"), node_file(policy)).unwrap();
        let mut lab = Lab { client, node, server, dir, proxy: None, links: Vec::new() };
        lab.wire();
        lab.attach();
        lab.node.enter(|| sluice::proxy::route::install().unwrap_or_else(|e| panic!("{e}")));
        lab.start_server();
        lab.start_proxy();
        lab
    }

    /// client (c0) <-> (cn) node (sn) <-> (s0) server, routed by the node: without the
    /// redirect, the client's packets would be forwarded to the server around the proxy.
    fn wire(&self) {
        let n = &self.node.name;
        for (ns, inner, outer, addr, gw) in
            [(&self.client, "c0", "cn", CLIENT, CLIENT_GW), (&self.server, "s0", "sn", SERVER, SERVER_GW)]
        {
            netns::ip(&[
                "-n", n, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", &ns.name,
            ]);
            netns::ip(&["-n", n, "addr", "add", &format!("{gw}/24"), "dev", outer]);
            netns::ip(&["-n", n, "link", "set", outer, "up"]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", inner]);
            ns.ip(&["link", "set", inner, "up"]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["route", "add", "default", "via", gw]);
        }
        self.node.ip(&["link", "set", "lo", "up"]);
        self.node.sysctls(&[
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/cn/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/sn/rp_filter", "0"),
        ]);
    }

    /// The redirect program at tc ingress of both node-side veths: the client's side takes new
    /// connections to the proxy, the server's side takes the upstream connection's replies.
    fn attach(&mut self) {
        let sys: Arc<dyn Syscall> = sys::kernel();
        let cfg = sluice::model::parse_str(
            &std::fs::read_to_string(self.dir.join("node.yaml")).unwrap(),
            "node.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let redirects = to_proxy::redirects_for(&cfg, PROXY_PORT).unwrap();
        assert_eq!(redirects, [Redirect { port: SERVER_PORT, proxy_port: PROXY_PORT }], "the L7 rule's port");
        let program = to_proxy::generate(&redirects).unwrap();
        let loaded =
            load_generated(&sys, to_proxy::NAME, &program, &Default::default(), ProgType::SchedCls, |s| s)
                .unwrap_or_else(|e| panic!("the kernel verifier accepts to_proxy: {e}"));
        self.links = self.node.enter(|| {
            ["cn", "sn"]
                .iter()
                .map(|name| {
                    let iface = Interface::lookup(name).unwrap_or_else(|e| panic!("{e}"));
                    Link::tcx(&sys, &loaded, iface, Direction::Ingress)
                        .unwrap_or_else(|e| panic!("{name}: {e}"))
                })
                .collect()
        });
    }

    /// A keep-alive HTTP/1.1 server answering `<method> <target> from <peer address>`.
    fn start_server(&self) {
        let listener =
            self.server.enter(|| TcpListener::bind((SERVER, SERVER_PORT)).expect("server listens"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
    }

    fn start_proxy(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node.name, env!("CARGO_BIN_EXE_sluice"), "proxy", "--config"])
            .arg(self.dir.join("node.yaml"))
            .args(["--listen", &format!("0.0.0.0:{PROXY_PORT}")])
            .arg("--access-log")
            .arg(self.dir.join("access.log"))
            .arg("--metrics-file")
            .arg(self.dir.join("metrics.prom"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("proxy.err")).unwrap())
            .spawn()
            .expect("spawn sluice proxy");
        self.proxy = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.node.enter(|| TcpStream::connect(("127.0.0.1", PROXY_PORT)).is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "proxy did not listen: {}",
            std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
        );
    }

    /// curl in the client namespace to the server's own address: (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client.name,
                "curl",
                "-s",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .arg(format!("http://{SERVER}:{SERVER_PORT}{path}"))
            .output()
            .expect("runs curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Waits until the proxy has reloaded its rules `n` times.
    fn wait_reloads(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let metrics = std::fs::read_to_string(self.dir.join("metrics.prom")).unwrap_or_default();
            let reloads = metrics
                .lines()
                .find_map(|l| l.strip_prefix("sluice_proxy_rule_reloads_total "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if reloads.is_some_and(|r| r >= n) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not reload its rules: {}", self.proxy_err());
    }

    /// A connection from the client to the server's own address (through the redirect).
    fn connect(&self) -> TcpStream {
        let server: Ipv4Addr = SERVER.parse().unwrap();
        let stream = self.client.enter(|| {
            TcpStream::connect_timeout(&SocketAddrV4::new(server, SERVER_PORT).into(), Duration::from_secs(5))
                .expect("connects to the backend through the redirect")
        });
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    fn proxy_err(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
    }
}

/// One connection of the test server: requests without bodies, answered in order.
fn serve(mut stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let line = head.lines().next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let body = match target.strip_prefix("/api/bytes/").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => pattern(n),
                None => format!("{method} {target} from {peer}"),
            };
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// `n` bytes of a lowercase-letter pattern that shifts every 26 bytes (a lost, repeated or
/// reordered segment shows).
fn pattern(n: usize) -> String {
    (0..n).map(|i| char::from(b'a' + ((i + i / 26) % 26) as u8)).collect()
}

/// Reads one sized response: (status, body).
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if pending.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).into_owned();
                pending.drain(..end + 4 + len);
                return (status, body);
            }
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("a response arrives");
        assert!(
            n > 0,
            "the connection closed before a whole response; so far: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    }
}

/// "The frontend may GET /api/.* on the backend but not DELETE": curl to the backend's own
/// address reaches the proxy through the redirect; allowed requests reach the server from the
/// client's own address (transparent upstream), denied ones get Cilium's 403.
#[test]
fn redirected_requests_are_judged_by_the_proxy() {
    if !netns::gate("redirected_requests_are_judged_by_the_proxy") {
        return;
    }
    judged_by_the_proxy(&egress_policy("/api/.*"));
}

/// The same rule on the server's side: an ingress L7 rule of the backend, its source an
/// endpoint of this node.
#[test]
fn ingress_rules_judge_redirected_requests() {
    if !netns::gate("ingress_rules_judge_redirected_requests") {
        return;
    }
    judged_by_the_proxy(&ingress_policy("/api/.*"));
}

fn judged_by_the_proxy(policy: &str) {
    let lab = Lab::new(policy);
    let cases: [(&[&str], &str, u16, &str); 4] = [
        (&[], "/api/items", 200, &format!("GET /api/items from {CLIENT}")),
        (&["-X", "DELETE"], "/api/items", 403, "Access denied\r\n"),
        (&[], "/admin", 403, "Access denied\r\n"),
        (&["-X", "POST"], "/api/items", 403, "Access denied\r\n"),
    ];
    let mut failures = Vec::new();
    for (args, path, status, body) in cases {
        let got = lab.curl(args, path);
        if got != (status, body.to_owned()) {
            failures.push(format!("curl {args:?} {path}: expected ({status}, {body:?}), got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}\nproxy stderr:\n{}", failures.join("\n"), lab.proxy_err());
}

/// Mixed allowed and denied requests on one keep-alive connection: each is judged on its own
/// and the connection stays usable after a 403 (Cilium's proxy answers denied requests
/// locally and keeps the connection).
#[test]
fn one_keep_alive_connection_mixes_allowed_and_denied() {
    if !netns::gate("one_keep_alive_connection_mixes_allowed_and_denied") {
        return;
    }
    let lab = Lab::new(&egress_policy("/api/.*"));
    let mut stream = lab.connect();
    let mut pending = Vec::new();
    let steps = [
        ("GET", "/api/a", 200, format!("GET /api/a from {CLIENT}")),
        ("DELETE", "/api/a", 403, "Access denied\r\n".to_owned()),
        ("GET", "/api/b", 200, format!("GET /api/b from {CLIENT}")),
        ("GET", "/private", 403, "Access denied\r\n".to_owned()),
        ("GET", "/api/c", 200, format!("GET /api/c from {CLIENT}")),
    ];
    for (method, path, status, body) in steps {
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: backend\r\n\r\n").unwrap();
        let got = read_response(&mut stream, &mut pending);
        assert_eq!(got, (status, body.clone()), "{method} {path}\nproxy stderr:\n{}", lab.proxy_err());
    }
}

/// The proxy is down: a new connection to a redirected port is dropped (L7 policy fails
/// closed) instead of reaching the server around the proxy.
#[test]
fn without_the_proxy_new_connections_do_not_reach_the_server() {
    if !netns::gate("without_the_proxy_new_connections_do_not_reach_the_server") {
        return;
    }
    let mut lab = Lab::new(&egress_policy("/api/.*"));
    if let Some(mut child) = lab.proxy.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let server: Ipv4Addr = SERVER.parse().unwrap();
    let outcome = lab.client.enter(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(server, SERVER_PORT).into(), Duration::from_secs(2))
    });
    assert!(outcome.is_err(), "connected around the stopped proxy: {outcome:?}");
}

/// A policy update during a keep-alive connection: "the next request is judged by the new
/// rules" (issue 12), on a connection the datapath redirected before the update.
#[test]
fn a_policy_update_judges_the_next_request_on_a_kept_connection() {
    if !netns::gate("a_policy_update_judges_the_next_request_on_a_kept_connection") {
        return;
    }
    let lab = Lab::new(&egress_policy("/api/.*"));
    let mut stream = lab.connect();
    let mut pending = Vec::new();
    let mut ask = |stream: &mut TcpStream, path: &str| {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n").unwrap();
        read_response(stream, &mut pending).0
    };
    assert_eq!((ask(&mut stream, "/api/a"), ask(&mut stream, "/v2/a")), (200, 403), "before the update");
    lab.wait_reloads(0);
    std::fs::write(lab.dir.join("node.yaml"), node_file(&egress_policy("/v2/.*"))).unwrap();
    lab.wait_reloads(1);
    assert_eq!(
        (ask(&mut stream, "/api/a"), ask(&mut stream, "/v2/a")),
        (403, 200),
        "after the update\nproxy stderr:\n{}",
        lab.proxy_err()
    );
}

/// The to-proxy routing: `install` is idempotent (one rule however often it runs), `remove`
/// deletes the rule and the route and does not mind their absence (as `sluice down` needs).
#[test]
fn to_proxy_routing_installs_once_and_removes_cleanly() {
    if !netns::gate("to_proxy_routing_installs_once_and_removes_cleanly") {
        return;
    }
    use sluice::proxy::route;
    let ns = Netns::new(netns::unique("l7r"));
    let rule = format!("fwmark 0x200/0xf00 lookup {}", route::TABLE_TO_PROXY);
    let table = route::TABLE_TO_PROXY.to_string();
    let state = || {
        let rules = netns::ip_output(&["-n", &ns.name, "-4", "rule", "show"]);
        let routes = netns::ip_output(&["-n", &ns.name, "-4", "route", "show", "table", &table]);
        (rules.matches(&rule).count(), routes.contains("local default dev lo"))
    };
    ns.enter(|| route::install().and_then(|()| route::install())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(), (1, true), "after installing twice");
    ns.enter(|| route::remove().and_then(|()| route::remove())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state(), (0, false), "after removing twice");
}

/// A large response through the redirect: every segment of the server's reply reaches the
/// proxy's upstream socket (the reply half of the redirect) and the client gets it whole.
#[test]
fn a_large_response_arrives_whole_through_the_redirect() {
    if !netns::gate("a_large_response_arrives_whole_through_the_redirect") {
        return;
    }
    let lab = Lab::new(&egress_policy("/api/.*"));
    let mut stream = lab.connect();
    let mut pending = Vec::new();
    let n = 8 << 20;
    write!(stream, "GET /api/bytes/{n} HTTP/1.1\r\nHost: backend\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut stream, &mut pending);
    assert_eq!(status, 200, "proxy stderr:\n{}", lab.proxy_err());
    assert_eq!(body.len(), n);
    assert!(body == pattern(n), "the body differs from the server's pattern");
    write!(stream, "DELETE /api/a HTTP/1.1\r\nHost: backend\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).0, 403, "the connection is still judged after it");
}
