//! `sluice demo`'s L7 flow (issue 12): real HTTP requests from one endpoint to another
//! through the datapath's redirect and `sluice proxy`, each answered as the node's
//! `rules.http` say.
//!
//! Contract:
//! - The flow is the first egress rule with `rules.http` whose subject and `toEndpoints` peer
//!   are both endpoints of this node with IPv4 addresses ([`pick`]): on the default node the
//!   frontend to the backend's port 9080, where only `GET /api/.*` is allowed. A node without
//!   one gets a report saying so, not a failure.
//! - In the lab's node namespace the to-proxy route is installed and `sluice proxy` (this
//!   very binary) started on [`sluice::proxy::LISTEN_PORT`] with the node file; a small HTTP
//!   server answers `200` in the destination's namespace. Each of [`REQUESTS`] is sent from
//!   the source's namespace to the destination's own address on a fresh connection.
//! - The expected status comes from the rules ([`sluice::l7::policy`]: 200 when every gate of
//!   the connection allows the request, 403 otherwise), never from the proxy or the programs.
//! - The proxy is stopped and the route removed before returning.

use super::lab::Lab;
use sluice::l7::policy::{GateVerdict, L7Policy};
use sluice::l7::rules::Request;
use sluice::model::policy::Peer;
use sluice::model::NodeConfig;
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The requests sent: (method, path).
pub const REQUESTS: [(&str, &str); 3] = [("GET", "/api/items"), ("DELETE", "/api/items"), ("GET", "/admin")];

/// How long a request may take, and the proxy to start listening.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One request's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Row {
    pub request: String,
    pub expected: u16,
    /// The status received, or what went wrong.
    pub got: Result<u16, String>,
}

/// What the L7 flow showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Report {
    /// The flow, described; empty when none was found.
    pub flow: String,
    pub skipped: Option<String>,
    /// Set-up failures (route, proxy, server).
    pub error: Option<String>,
    pub rows: Vec<L7Row>,
}

impl L7Report {
    /// Requests that did not get the expected status (a set-up error counts as one).
    pub fn bad(&self) -> usize {
        usize::from(self.error.is_some()) + self.rows.iter().filter(|r| r.got != Ok(r.expected)).count()
    }
}

impl fmt::Display for L7Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.skipped {
            return writeln!(f, "l7: skipped: {why}");
        }
        writeln!(f, "l7: {} (datapath redirect to sluice proxy, CiliumNetworkPolicy rules.http)", self.flow)?;
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        for r in &self.rows {
            let got = match &r.got {
                Ok(s) => s.to_string(),
                Err(e) => format!("no answer ({e})"),
            };
            let mark = if r.got == Ok(r.expected) { "ok" } else { "MISMATCH" };
            writeln!(f, "  {:<22} expected {}  got {got:<4} {mark}", r.request, r.expected)?;
        }
        Ok(())
    }
}

/// (source endpoint index, destination endpoint index, port) of the first egress L7 rule
/// between two of the node's IPv4 endpoints.
pub fn pick(cfg: &NodeConfig) -> Option<(usize, usize, u16)> {
    for rule in cfg.policies.iter().flat_map(|p| &p.rules) {
        for peer_rule in rule.egress.allow.iter().filter(|r| r.http.is_some()) {
            let Some(port) = peer_rule.l4.first().map(|m| m.first) else { continue };
            for (i, src) in cfg.endpoints.iter().enumerate() {
                if src.ipv4.is_none() || !rule.subject.matches(&src.labels) {
                    continue;
                }
                for (j, dst) in cfg.endpoints.iter().enumerate() {
                    let selected = peer_rule
                        .peers
                        .iter()
                        .any(|p| matches!(p, Peer::Endpoints(s) if s.matches(&dst.labels)));
                    if j != i && dst.ipv4.is_some() && selected {
                        return Some((i, j, port));
                    }
                }
            }
        }
    }
    None
}

/// The status the rules give `method path` on a connection `src -> dst:port`.
fn expected(policy: &L7Policy, src: Ipv4Addr, dst: Ipv4Addr, port: u16, method: &str, path: &str) -> u16 {
    let req = Request { method, path, host: None, headers: &[] };
    let gates = policy.connection(src.into(), dst.into(), port);
    if gates.iter().all(|g| matches!(g.decide(&req), GateVerdict::Allowed { .. })) {
        200
    } else {
        403
    }
}

/// One request on its own connection: the response's status.
fn send(stream: std::io::Result<TcpStream>, method: &str, path: &str) -> Result<u16, String> {
    let mut stream = stream.map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

/// A server answering each request `200` on `addr` (in the current namespace), until `until`.
fn serve(listener: TcpListener, until: Instant) {
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(TIMEOUT));
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ =
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// Stops the proxy and removes the route when dropped.
struct Running<'a> {
    lab: &'a Lab,
    proxy: Option<Child>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.lab.node.run_in(sluice::proxy::route::remove);
    }
}

/// See the module contract. `node_file` is the node's YAML (the proxy reads its rules from it);
/// `dir` a scratch directory.
pub fn run(cfg: &NodeConfig, lab: &Lab, node_file: &str, dir: &Path) -> L7Report {
    let mut report = L7Report { flow: String::new(), skipped: None, error: None, rows: Vec::new() };
    let Some((si, di, port)) = pick(cfg) else {
        report.skipped = Some("no egress rules.http between two IPv4 endpoints of the node".into());
        return report;
    };
    let (src, dst) = (&cfg.endpoints[si], &cfg.endpoints[di]);
    let (Some(src4), Some(dst4)) = (src.ipv4, dst.ipv4) else { return report };
    report.flow = format!("{} -> {} {dst4}:{port}", src.name, dst.name);
    // The lab numbers endpoints from 1.
    let (Some(src_ns), Some(dst_ns)) = (lab.endpoint(si + 1), lab.endpoint(di + 1)) else {
        report.error = Some("no namespace for an endpoint".into());
        return report;
    };
    let policy = match L7Policy::new(cfg.clone()) {
        Ok(p) => p,
        Err(e) => {
            report.error = Some(format!("the node's rules: {e}"));
            return report;
        }
    };
    let setup = || -> Result<Running<'_>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join("node.yaml");
        std::fs::write(&file, node_file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut running = Running { lab, proxy: None };
        lab.node
            .run_in(sluice::proxy::route::install)
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| format!("the sluice binary: {e}"))?;
        let log = std::fs::File::create(dir.join("proxy.log")).map_err(|e| e.to_string())?;
        let child = lab
            .node
            .run_in(|| {
                Command::new(&exe)
                    .arg("proxy")
                    .arg("--config")
                    .arg(&file)
                    .args(["--listen", &format!("0.0.0.0:{}", sluice::proxy::LISTEN_PORT)])
                    .arg("--access-log")
                    .arg(dir.join("access.log"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("start sluice proxy: {e}"))?;
        running.proxy = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        let listening = || {
            lab.node
                .run_in(|| {
                    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, sluice::proxy::LISTEN_PORT));
                    TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok()
                })
                .unwrap_or(false)
        };
        while !listening() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
                return Err(format!("sluice proxy did not listen: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let listener = dst_ns
            .run_in(|| TcpListener::bind((IpAddr::V4(dst4), port)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("server on {dst4}:{port}: {e}"))?;
        serve(listener, Instant::now() + TIMEOUT * (REQUESTS.len() as u32 + 1));
        Ok(running)
    };
    let running = match setup() {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    for (method, path) in REQUESTS {
        let to = SocketAddr::from((dst4, port));
        let got = src_ns
            .run_in(|| send(TcpStream::connect_timeout(&to, TIMEOUT), method, path))
            .unwrap_or_else(|e| Err(e.to_string()));
        report.rows.push(L7Row {
            request: format!("{method} {path}"),
            expected: expected(&policy, src4, dst4, port, method, path),
            got,
        });
    }
    drop(running);
    report
}
