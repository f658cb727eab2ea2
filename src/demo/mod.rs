//! `sluice demo`'s flows: the built-in default node in network namespaces, real TCP, UDP
//! and ICMP traffic for each of the node's flows, and the verdict each should get.
//!
//! The flows ([`flows`]): endpoint to endpoint on the node (egress policy of the sender,
//! redirect to the receiver's veth, ingress policy of the receiver), ingress from the
//! network device (prefilter on XDP, then the endpoint's ingress policy), endpoint to the
//! world (egress policy, then FIB-routed out of the network device) and to and from the
//! overlay peer (VXLAN). Each flow's expected verdict comes from the prefilter's deny list
//! and the plain-Rust policy evaluator ([`sluice::policy::oracle`]), never from the
//! programs: the programs are what is being checked.
//!
//! [`run_kernel`] builds the lab ([`lab::Lab`]), loads and attaches the node in its
//! namespace, sends each flow's traffic ([`traffic`]) and reads the counters around it;
//! [`run_sim`] sends the same flows' packets (request and answer) through the programs in
//! verifier-sim, following redirects from program to program as the kernel would.

pub mod accel;
pub mod cluster;
pub mod l7;
pub mod lab;
pub mod services;
pub mod traffic;
pub mod wireguard;

use lab::Lab;
use sluice::maps::fwd::{self, fwd_cfg, overlay_mac, LxcEntry, TunnelEntry};
use sluice::model::policy::Direction;
use sluice::model::NodeConfig;
use sluice::node::sim::SimNode;
use sluice::node::wire::{self, AttachOptions};
use sluice::node::{self, forward, load};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::policy::oracle::{self, FlowKey};
use sluice::policy::Verdict;
use sluice_verifier_sim::exec::{Context, FibAnswer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
pub use traffic::{Outcome, Proto};

/// The bytes of an address.
pub fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Where traffic starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An endpoint, by its 1-based index in the node file.
    Endpoint(usize),
    World,
    Peer,
}

/// One flow to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub kind: &'static str,
    pub from: Side,
    pub src: IpAddr,
    pub to: Side,
    pub dst: IpAddr,
    pub proto: Proto,
    /// The destination port (TCP, UDP).
    pub port: u16,
}

/// What should happen to a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Allow,
    /// Dropped, and by whom.
    Drop(String),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Allow => f.write_str("allow"),
            Expect::Drop(by) => write!(f, "drop ({by})"),
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error(transparent)]
    Plan(#[from] node::PlanError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
    #[error(transparent)]
    Netlink(#[from] sluice::netlink::NetlinkError),
    #[error(transparent)]
    Sim(#[from] sluice::node::sim::SimError),
    #[error("flow {flow}: {message}")]
    Flow { flow: String, message: String },
    #[error("the reference evaluator: {0}")]
    Oracle(#[from] sluice::policy::PolicyError),
}

impl Flow {
    fn side_name(cfg: &NodeConfig, side: Side) -> String {
        match side {
            Side::Endpoint(i) => {
                cfg.endpoints.get(i - 1).map_or_else(|| format!("ep{i}"), |e| e.name.clone())
            }
            Side::World => "world".into(),
            Side::Peer => "peer".into(),
        }
    }

    /// `frontend 10.0.1.10 -> backend 10.0.1.20 tcp/8080`.
    pub fn describe(&self, cfg: &NodeConfig) -> String {
        let what = match self.proto {
            Proto::Icmp => "icmp echo".to_string(),
            p => format!("{}/{}", p.name(), self.port),
        };
        format!(
            "{} {} -> {} {} {what}",
            Flow::side_name(cfg, self.from),
            self.src,
            Flow::side_name(cfg, self.to),
            self.dst,
        )
    }

    fn key(&self) -> FlowKey {
        let (proto, dport) = match (self.proto, self.dst.is_ipv4()) {
            (Proto::Tcp, _) => (6, self.port),
            (Proto::Udp, _) => (17, self.port),
            (Proto::Icmp, true) => (1, 8),
            (Proto::Icmp, false) => (58, 128),
        };
        FlowKey { src: self.src, dst: self.dst, proto, sport: 40000, dport }
    }
}

fn ep_addr(cfg: &NodeConfig, name: &str, v4: bool) -> Option<(usize, IpAddr)> {
    let i = cfg.endpoints.iter().position(|e| e.name == name)?;
    let e = &cfg.endpoints[i];
    let a = if v4 { e.ipv4.map(IpAddr::V4) } else { e.ipv6.map(IpAddr::V6) };
    Some((i + 1, a?))
}

/// The addresses the lab gives the world and the peer.
#[derive(Debug, Clone, Copy)]
pub struct Outside {
    pub world_v4: IpAddr,
    pub world_denied_v4: IpAddr,
    pub world_v6: Option<IpAddr>,
    pub peer_v4: Option<IpAddr>,
    pub peer_v6: Option<IpAddr>,
}

impl Outside {
    pub fn of(lab: &Lab) -> Outside {
        Outside {
            world_v4: Lab::WORLD_SOURCES[0].into(),
            world_denied_v4: Lab::WORLD_SOURCES[1].into(),
            world_v6: lab.world_addr.1.map(IpAddr::V6),
            peer_v4: lab.peer_pods.0.map(IpAddr::V4),
            peer_v6: lab.peer_pods.1.map(IpAddr::V6),
        }
    }

    /// What [`lab::Lab::build`] would give the default node (for the simulator).
    pub fn planned(cfg: &NodeConfig) -> Outside {
        let world_v6 = cfg.host_addresses.iter().find(|a| a.is_ipv6()).map(|a| match a {
            IpAddr::V6(a) => IpAddr::V6((u128::from(*a) & !0xffff | 0x100).into()),
            other => *other,
        });
        let peer = |v4: bool| {
            let p = cfg.overlay.as_ref()?.peers.first()?;
            let c = p.prefixes.iter().find(|c| c.addr().is_ipv4() == v4)?;
            Some(match c.addr() {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) | 7).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) | 7).into()),
            })
        };
        Outside {
            world_v4: Lab::WORLD_SOURCES[0].into(),
            world_denied_v4: Lab::WORLD_SOURCES[1].into(),
            world_v6,
            peer_v4: peer(true),
            peer_v6: peer(false),
        }
    }
}

/// The flows tried on the default node (those whose endpoints and addresses exist).
pub fn flows(cfg: &NodeConfig, out: &Outside) -> Vec<Flow> {
    let mut v = Vec::new();
    let mut ep_ep = |from: &str, to: &str, proto: Proto, port: u16, v4: bool| {
        if let (Some((fi, src)), Some((ti, dst))) = (ep_addr(cfg, from, v4), ep_addr(cfg, to, v4)) {
            v.push(Flow {
                kind: "endpoint to endpoint",
                from: Side::Endpoint(fi),
                src,
                to: Side::Endpoint(ti),
                dst,
                proto,
                port,
            });
        }
    };
    ep_ep("frontend", "backend", Proto::Tcp, 8080, true);
    ep_ep("frontend", "backend", Proto::Tcp, 8080, false);
    ep_ep("frontend", "backend", Proto::Tcp, 9090, true);
    ep_ep("backend", "db", Proto::Tcp, 5432, true);
    ep_ep("frontend", "db", Proto::Tcp, 5432, true);
    ep_ep("frontend", "backend", Proto::Icmp, 0, true);
    ep_ep("backend", "frontend", Proto::Udp, 53, true);
    let mut from_world = |src: Option<IpAddr>, to: &str, proto: Proto, port: u16| {
        let Some(src) = src else { return };
        if let Some((ti, dst)) = ep_addr(cfg, to, src.is_ipv4()) {
            v.push(Flow {
                kind: "world to endpoint",
                from: Side::World,
                src,
                to: Side::Endpoint(ti),
                dst,
                proto,
                port,
            });
        }
    };
    from_world(Some(out.world_v4), "frontend", Proto::Tcp, 80);
    from_world(out.world_v6, "frontend", Proto::Tcp, 443);
    from_world(Some(out.world_v4), "frontend", Proto::Tcp, 8080);
    from_world(Some(out.world_denied_v4), "frontend", Proto::Tcp, 80);
    from_world(Some(out.world_v4), "db", Proto::Tcp, 5432);
    let mut to_out = |from: &str, to: Side, dst: Option<IpAddr>, proto: Proto, port: u16| {
        let Some(dst) = dst else { return };
        if let Some((fi, src)) = ep_addr(cfg, from, dst.is_ipv4()) {
            let kind = if to == Side::World { "endpoint to world" } else { "endpoint to overlay peer" };
            v.push(Flow { kind, from: Side::Endpoint(fi), src, to, dst, proto, port });
        }
    };
    to_out("backend", Side::World, Some(out.world_v4), Proto::Tcp, 443);
    to_out("backend", Side::World, Some(out.world_v4), Proto::Tcp, 80);
    to_out("frontend", Side::World, Some(out.world_v4), Proto::Icmp, 0);
    to_out("frontend", Side::Peer, out.peer_v4, Proto::Tcp, 8080);
    to_out("frontend", Side::Peer, out.peer_v4, Proto::Udp, 53);
    to_out("frontend", Side::Peer, out.peer_v6, Proto::Tcp, 8080);
    to_out("frontend", Side::Peer, out.peer_v4, Proto::Tcp, 9090);
    to_out("backend", Side::Peer, out.peer_v4, Proto::Tcp, 443);
    if let (Some(src), Some((ti, dst))) = (out.peer_v4, ep_addr(cfg, "frontend", true)) {
        v.push(Flow {
            kind: "overlay peer to endpoint",
            from: Side::Peer,
            src,
            to: Side::Endpoint(ti),
            dst,
            proto: Proto::Tcp,
            port: 80,
        });
    }
    v
}

/// The verdict a flow should get: the prefilter for sources from outside, the sender's
/// egress policy, the receiver's ingress policy (the reference evaluator's answers).
pub fn expect(cfg: &NodeConfig, flow: &Flow) -> Result<Expect, DemoError> {
    if flow.from == Side::World && cfg.prefilter.deny.iter().any(|c| c.contains(flow.src)) {
        return Ok(Expect::Drop("prefilter".into()));
    }
    let key = flow.key();
    if let Side::Endpoint(i) = flow.from {
        let name = &cfg.endpoints[i - 1].name;
        if oracle::decide(cfg, name, Direction::Egress, &key)? != Verdict::Allow {
            return Ok(Expect::Drop(format!("egress policy of {name}")));
        }
    }
    if let Side::Endpoint(i) = flow.to {
        let name = &cfg.endpoints[i - 1].name;
        if oracle::decide(cfg, name, Direction::Ingress, &key)? != Verdict::Allow {
            return Ok(Expect::Drop(format!("ingress policy of {name}")));
        }
    }
    Ok(Expect::Allow)
}

/// One row of the demo's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub flow: Flow,
    pub expect: Expect,
    pub observed: Outcome,
    /// IPv4 packets the node's host stack routed during the flow (kernel runs): zero where
    /// sluice forwarded by redirect.
    pub stack_routed: Option<u64>,
    /// Counters that moved (`scope reason +n`), for the kernel run; the programs' verdicts
    /// in the simulator run.
    pub evidence: String,
}

impl Row {
    pub fn ok(&self) -> bool {
        (self.expect == Expect::Allow) == (self.observed == Outcome::Delivered)
    }
}

/// Print the table; returns the number of rows where what happened is not what should.
pub fn print_table(cfg: &NodeConfig, rows: &[Row], out: &mut dyn std::io::Write) -> std::io::Result<usize> {
    let mut bad = 0;
    let mut kind = "";
    writeln!(out, "{:<58} {:<34} {:<10} evidence", "flow", "expected", "observed")?;
    for r in rows {
        if r.flow.kind != kind {
            kind = r.flow.kind;
            writeln!(out, "-- {kind}")?;
        }
        let observed = match (r.observed, r.ok()) {
            (Outcome::Delivered, true) => "allowed",
            (Outcome::Dropped, true) => "dropped",
            (Outcome::Delivered, false) => "ALLOWED!",
            (Outcome::Dropped, false) => "DROPPED!",
        };
        bad += usize::from(!r.ok());
        writeln!(
            out,
            "{:<58} {:<34} {:<10} {}",
            r.flow.describe(cfg),
            r.expect.to_string(),
            observed,
            r.evidence
        )?;
    }
    Ok(bad)
}

/// The unique prefix of this process's lab namespaces and pins.
pub fn lab_prefix() -> String {
    format!("sluice-demo-{}", std::process::id())
}

fn counters(
    sys: &Arc<dyn sluice::sys::Syscall>,
    pin: &std::path::Path,
) -> BTreeMap<(String, &'static str), u64> {
    wire::status(sys, pin)
        .map(|st| st.counters.into_iter().map(|c| ((c.scope, c.reason), c.count)).collect())
        .unwrap_or_default()
}

/// The counters that moved for a flow: the programs of its endpoints (and the prefilter
/// for traffic from the world), new connections and drops; the namespaces' own IPv6
/// control traffic (multicast listener reports from link-local sources) is left out.
fn delta(
    cfg: &NodeConfig,
    flow: &Flow,
    before: &BTreeMap<(String, &'static str), u64>,
    after: &BTreeMap<(String, &'static str), u64>,
) -> String {
    let involved = |scope: &str| -> Option<String> {
        if scope == "prefilter" {
            return (flow.from == Side::World).then(|| "prefilter".to_string());
        }
        let n: usize = scope.strip_prefix("endpoint ")?.split(' ').next()?.parse().ok()?;
        let side = Side::Endpoint(n);
        (flow.from == side || flow.to == side).then(|| Flow::side_name(cfg, side))
    };
    let moved: Vec<String> = after
        .iter()
        .filter(|((_, reason), _)| {
            !matches!(*reason, "allow_not_ip" | "allow_established" | "deny_spoofed" | "pass_not_ip")
        })
        .filter_map(|((scope, reason), v)| {
            let was = before.get(&(scope.clone(), *reason)).copied().unwrap_or(0);
            let who = involved(scope)?;
            (*v > was).then(|| format!("{who}:{reason}+{}", v - was))
        })
        .collect();
    moved.join(" ")
}

/// `Ip: ForwDatagrams` of the calling thread's namespace: packets the host stack routed.
pub fn stack_forwarded() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Run every flow with real traffic through the node loaded and attached in a lab of
/// namespaces; tears everything down before returning (also when `stop` is set midway).
pub fn run_kernel(
    cfg: &NodeConfig,
    stop: &AtomicBool,
    log: &mut dyn std::io::Write,
) -> Result<Vec<Row>, DemoError> {
    run_kernel_with_services(cfg, stop, log).map(|(rows, _)| rows)
}

/// [`run_kernel`], then the services' probes ([`services::run`]) in the same lab.
pub fn run_kernel_with_services(
    cfg: &NodeConfig,
    stop: &AtomicBool,
    log: &mut dyn std::io::Write,
) -> Result<(Vec<Row>, Vec<services::ServiceRow>), DemoError> {
    run_kernel_in_lab(cfg, stop, log, false, None).map(|((rows, svc, _), _)| (rows, svc))
}

/// What [`run_kernel_all`] showed: the flows, the services' probes, the accelerated path
/// (absent when stopped midway).
pub type KernelRun = (Vec<Row>, Vec<services::ServiceRow>, Option<accel::AccelRow>);

/// [`run_kernel_with_services`], then the accelerated path ([`accel::run`]) in the same lab.
/// It moves the calling process into a cgroup for a moment: call it from a process (or test
/// binary) that runs nothing else at the same time.
pub fn run_kernel_all(
    cfg: &NodeConfig,
    stop: &AtomicBool,
    log: &mut dyn std::io::Write,
) -> Result<KernelRun, DemoError> {
    run_kernel_in_lab(cfg, stop, log, true, None).map(|(run, _)| run)
}

/// [`run_kernel_all`], then the L7 flow ([`l7::run`], with `node_file` the node's YAML for
/// `sluice proxy`) in the same lab: what `sluice demo` shows.
pub fn run_kernel_demo(
    cfg: &NodeConfig,
    node_file: &str,
    stop: &AtomicBool,
    log: &mut dyn std::io::Write,
) -> Result<(KernelRun, Option<l7::L7Report>), DemoError> {
    run_kernel_in_lab(cfg, stop, log, true, Some(node_file))
}

fn run_kernel_in_lab(
    cfg: &NodeConfig,
    stop: &AtomicBool,
    log: &mut dyn std::io::Write,
    with_accel: bool,
    l7_node_file: Option<&str>,
) -> Result<(KernelRun, Option<l7::L7Report>), DemoError> {
    let prefix = lab_prefix();
    let pin: PathBuf = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
    let sys = sluice::sys::kernel();
    let lab = Lab::build(cfg, &prefix)?;
    let _ = writeln!(
        log,
        "lab: namespaces {prefix}-{{node,world,peer,ep1..ep{}}}; loading and attaching the node",
        cfg.endpoints.len()
    );
    let wired = lab.node.run_in(|| -> Result<String, DemoError> {
        let plan = node::plan(cfg)?;
        load::load_and_pin(&sys, &plan, &pin)?;
        let opts = AttachOptions { xdp_device: Some("net0".into()), ..AttachOptions::default() };
        let report = wire::attach(&sys, cfg, &pin, &opts)?;
        let fwd = forward::sync(&sys, cfg, &pin)?;
        let hooks = report.to_string();
        Ok(format!("{}\n{fwd}", hooks.lines().last().unwrap_or_default()))
    })?;
    if let Ok(summary) = &wired {
        let _ = writeln!(log, "{summary}");
    }
    let result = wired.and_then(|_| {
        let outside = Outside::of(&lab);
        let mut rows = Vec::new();
        for flow in flows(cfg, &outside) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let expect = expect(cfg, &flow)?;
            let (before, fwd_before) = lab.node.run_in(|| (counters(&sys, &pin), stack_forwarded()))?;
            let observed = run_flow(&lab, &flow)
                .map_err(|e| DemoError::Flow { flow: flow.describe(cfg), message: e.to_string() })?;
            let (after, fwd_after) = lab.node.run_in(|| (counters(&sys, &pin), stack_forwarded()))?;
            let mut evidence = delta(cfg, &flow, &before, &after);
            if observed == Outcome::Delivered {
                evidence.push_str(&format!(" stack-routed:{}", fwd_after.saturating_sub(fwd_before)));
            }
            rows.push(Row {
                evidence,
                stack_routed: Some(fwd_after.saturating_sub(fwd_before)),
                flow,
                expect,
                observed,
            });
        }
        let svc = if stop.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            let read = || lab.node.run_in(|| counters(&sys, &pin)).unwrap_or_default();
            services::run(cfg, &lab, &read)
        };
        let accel = (with_accel && !stop.load(Ordering::Relaxed))
            .then(|| accel::run(cfg, &lab, &sys, &pin, &flows(cfg, &outside)));
        let l7 = l7_node_file.filter(|_| !stop.load(Ordering::Relaxed)).map(|yaml| {
            let dir = std::env::temp_dir().join(format!("{prefix}-l7"));
            let report = l7::run(cfg, &lab, yaml, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            report
        });
        Ok(((rows, svc, accel), l7))
    });
    let down = lab.node.run_in(|| wire::down(&sys, &pin));
    drop(lab);
    let _ = std::fs::remove_dir_all(&pin);
    let rows = result?;
    down??;
    Ok(rows)
}

fn ns_of(lab: &Lab, side: Side) -> Option<&sluice::netlink::NetNs> {
    match side {
        Side::Endpoint(i) => lab.endpoint(i),
        Side::World => Some(&lab.world),
        Side::Peer => lab.peer.as_ref(),
    }
}

fn run_flow(lab: &Lab, flow: &Flow) -> std::io::Result<Outcome> {
    let (Some(from), Some(to)) = (ns_of(lab, flow.from), ns_of(lab, flow.to)) else {
        return Err(std::io::Error::other("no namespace for a side of the flow"));
    };
    let dst = SocketAddr::new(flow.dst, flow.port);
    let deadline = Instant::now() + traffic::TIMEOUT * 2;
    let server = traffic::serve(to, flow.proto, dst, deadline)?;
    let outcome = traffic::probe(from, flow.proto, flow.src, dst)?;
    let _ = server.join();
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------
// The simulator.

/// The ifindex the simulated node gives endpoint `i`'s host side, its overlay device and
/// its network device.
fn sim_ifindex(i: usize) -> u32 {
    100 + i as u32
}
const SIM_VXLAN: u32 = 90;
const SIM_NET0: u32 = 2;
const SIM_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// The node in verifier-sim with its forwarding maps filled as `forward::sync` would.
pub fn sim_node(cfg: &NodeConfig) -> Result<SimNode, DemoError> {
    let plan = node::plan(cfg)?;
    let mut sim = SimNode::new(&plan)?;
    let mut local = Vec::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        for addr in ep.addresses() {
            let mac = [2, 0, 0, 1, 0, i as u8 + 1];
            local.push(LxcEntry {
                addr,
                ifindex: sim_ifindex(i + 1),
                ep: i as u16 + 1,
                mac,
                node_mac: SIM_MAC,
            });
        }
    }
    let mut tunnels = Vec::new();
    let mut flags = fwd_cfg::LOCAL | fwd_cfg::FIB;
    if let Some(o) = &cfg.overlay {
        flags |= fwd_cfg::OVERLAY;
        for p in &o.peers {
            for c in &p.prefixes {
                tunnels.push(TunnelEntry {
                    prefix: c.addr(),
                    len: c.len(),
                    remote: p.address,
                    vni: o.vni,
                    peer_mac: overlay_mac(p.address),
                    local_mac: overlay_mac(o.local),
                    ifindex: SIM_VXLAN,
                });
            }
        }
    }
    let writes = [fwd::lxc_writes(&local), fwd::tunnel_writes(&tunnels), fwd::fwd_cfg_writes(flags)];
    sluice::node::sim::apply_writes(&mut sim.maps, &writes)?;
    Ok(sim)
}

fn frame(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, dport: u16, answer: bool) -> Vec<u8> {
    let eth = PacketBuilder::ethernet([2, 0, 0, 0, 0, 0xaa], SIM_MAC);
    let flags = if answer { TcpFlags::SYN | TcpFlags::ACK } else { TcpFlags::SYN };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = eth.ipv4(s, d);
            match proto {
                Proto::Tcp => ip.tcp(sport, dport, flags, 1, u32::from(answer)).build(),
                Proto::Udp => ip.udp(sport, dport).payload(b"q").build(),
                Proto::Icmp => ip.icmpv4(if answer { 0 } else { 8 }, 0, 0x1234_0001).build(),
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = eth.ipv6(s, d);
            match proto {
                Proto::Tcp => ip.tcp(sport, dport, flags, 1, u32::from(answer)).build(),
                Proto::Udp => ip.udp(sport, dport).payload(b"q").build(),
                Proto::Icmp => ip.icmpv6(if answer { 129 } else { 128 }, 0, 0x1234_0001).build(),
            }
        }
        _ => Vec::new(),
    }
}

/// One packet's path through the simulated node: the prefilter (from the world), the
/// sender's `from_ep`, a redirect to the receiver's `to_ep` (or the stack's delivery to
/// it). Returns whether it arrived and the programs' verdicts.
fn sim_path(
    sim: &mut SimNode,
    from: Side,
    to: Side,
    packet: &[u8],
    trail: &mut Vec<String>,
) -> Result<bool, DemoError> {
    let exec = DemoError::Sim;
    if from == Side::World {
        let r = sim.run(sluice::codegen::prefilter::NAME, packet).map_err(exec)?;
        trail.push(format!("prefilter {}", if r.retval == 2 { "pass" } else { "drop" }));
        if r.retval != 2 {
            return Ok(false);
        }
    }
    if let Side::Endpoint(i) = from {
        let mut ctx = Context::new(packet.to_vec());
        if to == Side::World {
            ctx.fib =
                Some(FibAnswer { ret: 0, ifindex: SIM_NET0, smac: SIM_MAC, dmac: [2, 0, 0, 0, 0, 0xbb] });
        }
        let r = sim.run_with(&format!("from_ep_{i}"), &mut ctx).map_err(exec)?;
        let verdict = match (r.retval, r.redirect) {
            (2, _) => "drop".to_string(),
            (7, Some((ifindex, _))) if ifindex == SIM_VXLAN => "vxlan".to_string(),
            (7, Some((ifindex, _))) if ifindex == SIM_NET0 => "fib".to_string(),
            (7, Some((ifindex, _))) => format!("redirect {ifindex}"),
            (v, _) => format!("verdict {v}"),
        };
        trail.push(format!("from_ep_{i} {verdict}"));
        if r.retval == 2 {
            return Ok(false);
        }
        if let Side::Endpoint(j) = to {
            if r.redirect.map(|(ifindex, _)| ifindex) != Some(sim_ifindex(j)) {
                return Ok(false);
            }
        }
    }
    if let Side::Endpoint(j) = to {
        let r = sim.run(&format!("to_ep_{j}"), packet).map_err(exec)?;
        trail.push(format!("to_ep_{j} {}", if r.retval == 0 { "pass" } else { "drop" }));
        return Ok(r.retval == 0);
    }
    Ok(true)
}

/// Run every flow's request and answer through the programs in verifier-sim.
pub fn run_sim(cfg: &NodeConfig) -> Result<Vec<Row>, DemoError> {
    let mut sim = sim_node(cfg)?;
    let mut rows = Vec::new();
    for (i, flow) in flows(cfg, &Outside::planned(cfg)).into_iter().enumerate() {
        let expect = expect(cfg, &flow)?;
        let sport = 30_000 + i as u16;
        let mut trail = Vec::new();
        let request = frame(flow.src, flow.dst, flow.proto, sport, flow.port, false);
        let mut delivered = sim_path(&mut sim, flow.from, flow.to, &request, &mut trail)?;
        if delivered {
            let answer = frame(flow.dst, flow.src, flow.proto, flow.port, sport, true);
            trail.push("|".into());
            delivered = sim_path(&mut sim, flow.to, flow.from, &answer, &mut trail)?;
        }
        let observed = if delivered { Outcome::Delivered } else { Outcome::Dropped };
        rows.push(Row { flow, expect, observed, stack_routed: None, evidence: trail.join(" ") });
    }
    Ok(rows)
}
