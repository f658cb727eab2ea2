//! `sluice demo`'s services: real connections from an endpoint to each service VIP of the
//! node, balanced inside the endpoint programs, answered by the backends the lab hosts.
//!
//! Contract:
//! - Each IPv4 and IPv6 TCP frontend with active backends is probed from an endpoint
//!   ([`client_of`]): [`TRIES`] connections, each sending a
//!   request and reading the answering backend's address back. A backend is hosted when it
//!   is a local endpoint's address (served in that endpoint's namespace) or lies in the
//!   overlay peer's prefixes (the lab puts the address on the peer's overlay device).
//! - Expected: every connection answered, each by an active backend the client's egress and
//!   the backend's ingress policy admit (the endpoint programs judge the backend, not the
//!   VIP); observed: which backends answered, how often, and the load balancer's counters.
//! - A frontend whose backends the lab cannot host, or which the policies deny entirely, is
//!   listed with the reason and not probed.

use super::lab::Lab;
use super::traffic::{self, Proto};
use super::{expect, Expect, Flow, Side};
use sluice::model::service::BackendState;
use sluice::model::NodeConfig;
use sluice::netlink::NetNs;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections per frontend.
pub const TRIES: usize = 6;

/// One probed frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    /// `namespace/name:port-name`.
    pub name: String,
    pub client: String,
    pub src: IpAddr,
    pub vip: SocketAddr,
    /// Backends that may answer.
    pub expected: Vec<SocketAddr>,
    /// Who answered, how often.
    pub answered: BTreeMap<SocketAddr, usize>,
    /// Connections that got no answer.
    pub failed: usize,
    /// Why the frontend was not probed.
    pub skipped: Option<String>,
    /// The load balancer's counters that moved.
    pub evidence: String,
}

impl ServiceRow {
    /// Whether what happened is what should.
    pub fn ok(&self) -> bool {
        self.skipped.is_some()
            || (self.failed == 0 && self.answered.keys().all(|a| self.expected.contains(a)))
    }
}

/// The endpoint a frontend is probed from (1-based): the first endpoint (in name order)
/// with an address of the VIP's family that is none of the frontend's backends (a
/// backend reaching its own service is the hairpin case, not what the demo shows) and whose
/// egress policy admits at least one active backend.
pub fn client_of(cfg: &NodeConfig, f: &sluice::model::service::Frontend) -> Option<usize> {
    cfg.endpoints.iter().enumerate().find_map(|(i, e)| {
        let src = match f.vip {
            IpAddr::V4(_) => e.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => e.ipv6.map(IpAddr::V6),
        }?;
        if f.backends.iter().any(|b| e.has_address(b.address)) {
            return None;
        }
        let admits =
            f.backends.iter().filter(|b| b.state == BackendState::Active).any(|b| admits(cfg, i + 1, src, b));
        admits.then_some(i + 1)
    })
}

/// Whether endpoint `from` (1-based) may open a TCP connection from `src` to backend `b`:
/// its egress policy and, for a local backend, that endpoint's ingress policy (the
/// endpoint programs judge the backend, not the VIP).
fn admits(cfg: &NodeConfig, from: usize, src: IpAddr, b: &sluice::model::service::Backend) -> bool {
    let to = match cfg.endpoints.iter().position(|e| e.has_address(b.address)) {
        Some(j) => Side::Endpoint(j + 1),
        None => Side::Peer,
    };
    let flow = Flow {
        kind: "endpoint to service",
        from: Side::Endpoint(from),
        src,
        to,
        dst: b.address,
        proto: Proto::Tcp,
        port: b.port,
    };
    matches!(expect(cfg, &flow), Ok(Expect::Allow))
}

/// A server at `at` in `ns` answering each connection's request with its own address,
/// until `stop`.
fn serve(ns: &NetNs, at: SocketAddr, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener =
        ns.run_in(|| TcpListener::bind(at)).map_err(|e| std::io::Error::other(e.to_string()))??;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(traffic::TIMEOUT));
                    let mut buf = [0u8; 64];
                    if s.read(&mut buf).is_ok() {
                        let _ = s.write_all(at.to_string().as_bytes());
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }))
}

/// One connection from `src` in `ns` to `vip`: the answering backend.
fn ask(ns: &NetNs, src: IpAddr, vip: SocketAddr) -> Option<SocketAddr> {
    ns.run_in(|| {
        let mut s = traffic::connect_from(src, vip, traffic::TIMEOUT).ok()?;
        s.set_read_timeout(Some(traffic::TIMEOUT)).ok()?;
        s.write_all(b"who").ok()?;
        let mut buf = [0u8; 80];
        let n = s.read(&mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
    })
    .ok()
    .flatten()
}

/// Where the lab hosts `addr`: a local endpoint's namespace or the overlay peer's.
fn host_of<'a>(cfg: &NodeConfig, lab: &'a Lab, addr: IpAddr) -> Option<&'a NetNs> {
    if let Some(i) = cfg.endpoints.iter().position(|e| e.has_address(addr)) {
        return lab.endpoint(i + 1);
    }
    let o = cfg.overlay.as_ref()?;
    let p = o.peers.first()?;
    p.prefixes.iter().any(|c| c.contains(addr)).then_some(lab.peer.as_ref()?)
}

/// Probe every TCP frontend; `counters` reads the node's counters (scope, reason) → count.
pub fn run(
    cfg: &NodeConfig,
    lab: &Lab,
    counters: &dyn Fn() -> BTreeMap<(String, &'static str), u64>,
) -> Vec<ServiceRow> {
    let mut rows = Vec::new();
    for s in &cfg.services {
        for f in s.frontends.iter().filter(|f| f.protocol.number() == 6) {
            let Some(ci) = client_of(cfg, f) else { continue };
            let client = &cfg.endpoints[ci - 1];
            let Some(cns) = lab.endpoint(ci) else { continue };
            let name = if f.port_name.is_empty() {
                format!("{}/{}", s.namespace, s.name)
            } else {
                format!("{}/{}:{}", s.namespace, s.name, f.port_name)
            };
            let vip = SocketAddr::new(f.vip, f.port);
            let src = match f.vip {
                IpAddr::V4(_) => client.ipv4.map(IpAddr::V4),
                IpAddr::V6(_) => client.ipv6.map(IpAddr::V6),
            };
            let mut row = ServiceRow {
                name,
                client: client.name.clone(),
                src: src.unwrap_or(f.vip),
                vip,
                expected: Vec::new(),
                answered: BTreeMap::new(),
                failed: 0,
                skipped: None,
                evidence: String::new(),
            };
            let Some(src) = src else {
                row.skipped = Some(format!("{} has no address of the VIP's family", client.name));
                rows.push(row);
                continue;
            };
            let active: Vec<_> = f.backends.iter().filter(|b| b.state == BackendState::Active).collect();
            for b in active.iter().filter(|b| admits(cfg, ci, src, b)) {
                row.expected.push(SocketAddr::new(b.address, b.port));
            }
            if row.expected.is_empty() {
                row.skipped = Some("no active backend the policies admit".into());
                rows.push(row);
                continue;
            }
            if let Some(b) = row.expected.iter().find(|b| host_of(cfg, lab, b.ip()).is_none()) {
                row.skipped = Some(format!("the lab cannot host backend {b}"));
                rows.push(row);
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let mut servers = Vec::new();
            for b in &row.expected {
                if let Some(ns) = host_of(cfg, lab, b.ip()) {
                    match serve(ns, *b, Arc::clone(&stop)) {
                        Ok(h) => servers.push(h),
                        Err(e) => row.skipped = Some(format!("serving {b}: {e}")),
                    }
                }
            }
            if row.skipped.is_none() {
                let before = counters();
                for _ in 0..TRIES {
                    match ask(cns, src, vip) {
                        Some(b) => *row.answered.entry(b).or_default() += 1,
                        None => row.failed += 1,
                    }
                }
                let after = counters();
                row.evidence = after
                    .iter()
                    .filter(|((scope, _), _)| scope == "load balancer")
                    .filter_map(|(k, v)| {
                        let was = before.get(k).copied().unwrap_or(0);
                        (*v > was).then(|| format!("lb:{}+{}", k.1, v - was))
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            stop.store(true, Ordering::Relaxed);
            for h in servers {
                let _ = h.join();
            }
            rows.push(row);
        }
    }
    rows
}

/// Print the services table; returns the number of rows not as expected.
pub fn print(rows: &[ServiceRow], out: &mut dyn std::io::Write) -> std::io::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    writeln!(out, "-- endpoint to service (balanced in the endpoint programs)")?;
    let mut bad = 0;
    for r in rows {
        let what = format!("{} {} -> {} tcp ({})", r.client, r.src, r.vip, r.name);
        if let Some(why) = &r.skipped {
            writeln!(out, "{what:<58} not probed: {why}")?;
            continue;
        }
        let answered: Vec<String> = r.answered.iter().map(|(b, n)| format!("{b}×{n}")).collect();
        let observed = if r.ok() { "answered" } else { "WRONG!" };
        bad += usize::from(!r.ok());
        writeln!(
            out,
            "{what:<58} {:<34} {observed:<10} {}{} {}",
            format!("{} tries, by {} backend(s)", TRIES, r.expected.len()),
            answered.join(" "),
            if r.failed > 0 { format!(" unanswered×{}", r.failed) } else { String::new() },
            r.evidence
        )?;
    }
    Ok(bad)
}
