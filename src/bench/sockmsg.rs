//! `sluice bench --parts sockmsg`: the socket layer (issue 11) between two endpoints of one
//! node, three ways in the same run: accelerated (tc programs attached and the socket
//! layer on the client's and server's cgroup), tc only (the same node without
//! `spec.socketLayer`), and the same namespaces with no program at all.
//!
//! Contract:
//! - The lab is two endpoint namespaces behind a node namespace (the e2e tests' topology,
//!   built with `ip`); the node file admits client -> server on every port.
//! - The tools are Debian's `sockperf` (request/response: `ping-pong`, TCP, one connection,
//!   [`RR_SECONDS`] s per message size, p50 and p99 of the round trip as sockperf reports
//!   them) and `iperf3` (throughput: 1 and 8 streams, `-l` 1 KiB, 16 KiB, 128 KiB, 1 MiB,
//!   [`TPUT_SECONDS`] s each, the receiver's bits per second from its JSON). Servers and
//!   clients run as child processes that enter the endpoint's namespace and the run's
//!   cgroup before `exec` (the bench process stays where it is).
//! - Rounds: each setup once per round, in the order no programs, tc only, accelerated.
//!   Figures are medians over rounds.

use sluice::model::{self, NodeConfig};
use sluice::netlink::NetNs;
use sluice::node::wire::{self, AttachOptions};
use sluice::node::{self, forward, load, socklayer};
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where cgroup v2 is mounted.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Seconds per sockperf run.
pub const RR_SECONDS: u32 = 3;
/// Seconds per iperf3 run.
pub const TPUT_SECONDS: u32 = 2;
/// Request/response message sizes.
pub const RR_SIZES: [usize; 2] = [1, 1024];
/// iperf3 write sizes.
pub const TPUT_SIZES: [usize; 4] = [1024, 16 << 10, 128 << 10, 1 << 20];
/// iperf3 stream counts.
pub const STREAMS: [usize; 2] = [1, 8];

/// The three setups.
pub const SETUPS: [&str; 3] = ["accelerated", "tc only", "no programs"];

/// Why the part failed.
#[derive(Debug, thiserror::Error)]
pub enum SockMsgBenchError {
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Lab(#[from] crate::demo::lab::LabError),
    #[error(transparent)]
    Netlink(#[from] sluice::netlink::NetlinkError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SockMsgBenchError {
    let what = what.into();
    move |source| SockMsgBenchError::Io { what, source }
}

/// One setup's figures in one round: `(size, p50 µs, p99 µs)` and `(streams, size, Gbit/s,
/// CPU % of both iperf3 processes)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub rr: Vec<(usize, f64, f64)>,
    pub tput: Vec<(usize, usize, f64, f64)>,
}

/// What the socket layer's programs cost, from the kernel's `bpf_stats` during the
/// accelerated runs, and its counters after them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerCost {
    /// `sock_ops`: mean ns per run, runs (every callback of every socket in the cgroup).
    pub ops_ns: f64,
    pub ops_runs: u64,
    /// `sk_msg`: mean ns per run, runs.
    pub msg_ns: f64,
    pub msg_runs: u64,
    /// `sock_stats`, summed over CPUs, by counter name (nonzero only).
    pub counters: Vec<(&'static str, u64)>,
}

/// Every setup's samples, by round, in [`SETUPS`] order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SockMsgReport {
    pub rounds: Vec<[Sample; 3]>,
    /// Per round.
    pub cost: Vec<LayerCost>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl SockMsgReport {
    fn rr(&self, setup: usize, size: usize, p99: bool) -> f64 {
        median(
            self.rounds
                .iter()
                .filter_map(|r| r[setup].rr.iter().find(|x| x.0 == size).map(|x| if p99 { x.2 } else { x.1 }))
                .collect(),
        )
    }

    fn tput(&self, setup: usize, streams: usize, size: usize) -> f64 {
        median(
            self.rounds
                .iter()
                .filter_map(|r| r[setup].tput.iter().find(|x| x.0 == streams && x.1 == size).map(|x| x.2))
                .collect(),
        )
    }

    /// CPU % per Gbit/s (the iperf3 processes' CPU time per byte moved), median over rounds.
    fn cpu_per_gbit(&self, setup: usize, streams: usize, size: usize) -> f64 {
        median(
            self.rounds
                .iter()
                .filter_map(|r| {
                    r[setup].tput.iter().find(|x| x.0 == streams && x.1 == size).map(|x| x.3 / x.2.max(1e-9))
                })
                .collect(),
        )
    }

    /// The markdown section.
    pub fn render(&self) -> String {
        let mut out = format!(
            "### Socket layer: endpoint to endpoint (client -> server endpoints, {} rounds, medians)\n\n\
             | figure | accelerated | tc only | no programs | accelerated vs no programs |\n|---|---:|---:|---:|---:|\n",
            self.rounds.len()
        );
        for size in RR_SIZES {
            for (p99, name) in [(false, "p50"), (true, "p99")] {
                let v: Vec<f64> = (0..3).map(|s| self.rr(s, size, p99)).collect();
                out += &format!(
                    "| sockperf ping-pong {size} B, {name} µs | {:.2} | {:.2} | {:.2} | {:+.1}% |\n",
                    v[0],
                    v[1],
                    v[2],
                    (v[0] - v[2]) / v[2] * 100.0
                );
            }
        }
        for streams in STREAMS {
            for size in TPUT_SIZES {
                let v: Vec<f64> = (0..3).map(|s| self.tput(s, streams, size)).collect();
                out += &format!(
                    "| iperf3 {streams} stream(s), -l {} KiB, Gbit/s | {:.2} | {:.2} | {:.2} | {:.2}x |\n",
                    size / 1024,
                    v[0],
                    v[1],
                    v[2],
                    v[0] / v[2]
                );
            }
        }
        for size in [16 << 10, 128 << 10] {
            let v: Vec<f64> = (0..3).map(|s| self.cpu_per_gbit(s, 1, size)).collect();
            out += &format!(
                "| CPU per byte: iperf3 1 stream -l {} KiB, CPU % per Gbit/s | {:.1} | {:.1} | {:.1} | {:+.1}% |\n",
                size / 1024,
                v[0],
                v[1],
                v[2],
                (v[0] - v[2]) / v[2] * 100.0
            );
        }
        for (i, c) in self.cost.iter().enumerate() {
            let counters: Vec<String> = c.counters.iter().map(|(n, v)| format!("{n} {v}")).collect();
            out += &format!(
                "\nRound {}: sock_ops {:.0} ns per run ({} runs), sk_msg {:.0} ns per run ({} runs); counters: {}.",
                i + 1,
                c.ops_ns,
                c.ops_runs,
                c.msg_ns,
                c.msg_runs,
                counters.join(", ")
            );
        }
        out += &format!(
            "\n\nsockperf {RR_SECONDS} s per size (TCP, one connection); iperf3 {TPUT_SECONDS} s per row (receiver's rate). \
             Accelerated: the node's tc programs plus the socket layer on the processes' cgroup. tc only: the same node without \
             `spec.socketLayer`. No programs: the same namespaces and routes after `sluice down`. \
             `kernel.bpf_stats_enabled` is on during the accelerated runs only (it adds two clock reads per program run there).\n"
        );
        out
    }
}

/// A child process that enters `ns` and the cgroup behind `procs` before it runs `cmd`.
fn spawn_in(ns: &NetNs, procs: &File, cmd: &mut Command) -> Result<Child, SockMsgBenchError> {
    let (ns_fd, procs_fd): (RawFd, RawFd) = (ns.fd().as_raw_fd(), procs.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and calls only setns(2) and write(2),
    // which are async-signal-safe; both descriptors outlive the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io(format!("spawning {cmd:?}")))
}

/// Kill and reap a server.
fn stop(mut child: Child) {
    // The pid is our own child's, not yet reaped.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn output(child: Child, what: &str) -> Result<String, SockMsgBenchError> {
    let out = child.wait_with_output().map_err(io(what))?;
    if !out.status.success() {
        return Err(SockMsgBenchError::Setup(format!(
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sockperf's `percentile P = X` line (µs).
fn percentile(text: &str, p: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("percentile") && l.contains(p))
        .and_then(|l| l.rsplit('=').next())
        .and_then(|v| v.trim().parse().ok())
}

/// The number after the first `"key":` following the first `"section"` in iperf3's JSON.
fn json_number(json: &str, section: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{section}\""))?;
    let rest = &json[at..];
    let k = rest.find(&format!("\"{key}\""))?;
    let v = rest[k + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = v.find(|c: char| c != '.' && c != 'e' && c != '+' && c != '-' && !c.is_ascii_digit())?;
    v[..end].parse().ok()
}

/// iperf3's JSON `end.sum_received.bits_per_second`.
fn received_bps(json: &str) -> Option<f64> {
    json_number(json, "sum_received", "bits_per_second")
}

/// iperf3's JSON `end.cpu_utilization_percent`: sender's plus receiver's total (each
/// process's share of one CPU, user and system).
fn cpu_percent(json: &str) -> Option<f64> {
    Some(
        json_number(json, "cpu_utilization_percent", "host_total")?
            + json_number(json, "cpu_utilization_percent", "remote_total")?,
    )
}

struct Flow<'a> {
    client: &'a NetNs,
    server: &'a NetNs,
    dst: IpAddr,
    procs: &'a File,
}

impl Flow<'_> {
    fn measure(&self, port: u16) -> Result<Sample, SockMsgBenchError> {
        let mut sample = Sample::default();
        let dst = self.dst.to_string();
        let srv = spawn_in(
            self.server,
            self.procs,
            Command::new("sockperf")
                .args(["server", "--tcp", "-i", &dst, "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let rr = (|| {
            for size in RR_SIZES {
                let c = spawn_in(
                    self.client,
                    self.procs,
                    Command::new("sockperf")
                        .args(["ping-pong", "--tcp", "-i", &dst, "-p", &port.to_string()])
                        .args(["-m", &size.max(14).to_string(), "-t", &RR_SECONDS.to_string(), "--full-rtt"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped()),
                )?;
                let text = output(c, "sockperf ping-pong")?;
                let (p50, p99) = (percentile(&text, "50.000"), percentile(&text, "99.000"));
                match (p50, p99) {
                    (Some(a), Some(b)) => sample.rr.push((size, a, b)),
                    _ => {
                        return Err(SockMsgBenchError::Setup(format!(
                            "sockperf output without percentiles:\n{text}"
                        )))
                    }
                }
            }
            Ok(())
        })();
        stop(srv);
        rr?;
        for streams in STREAMS {
            for size in TPUT_SIZES {
                let srv = spawn_in(
                    self.server,
                    self.procs,
                    Command::new("iperf3")
                        .args(["-s", "-1", "-B", &dst, "-p", &(port + 1).to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                )?;
                std::thread::sleep(Duration::from_millis(300));
                let c = spawn_in(
                    self.client,
                    self.procs,
                    Command::new("iperf3")
                        .args(["-c", &dst, "-p", &(port + 1).to_string(), "-J"])
                        .args(["-t", &TPUT_SECONDS.to_string(), "-P", &streams.to_string()])
                        .args(["-l", &size.to_string()])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped()),
                );
                let text = c.and_then(|c| output(c, "iperf3 client"));
                stop(srv);
                let text = text?;
                let bps = received_bps(&text).ok_or_else(|| {
                    SockMsgBenchError::Setup(format!("iperf3 JSON without sum_received:\n{text}"))
                })?;
                sample.tput.push((streams, size, bps / 1e9, cpu_percent(&text).unwrap_or(0.0)));
            }
        }
        Ok(sample)
    }
}

/// Run `ip args...`.
fn ip(args: &[&str]) -> Result<(), SockMsgBenchError> {
    let out = Command::new("ip").args(args).output().map_err(io("running ip"))?;
    if !out.status.success() {
        return Err(SockMsgBenchError::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The bench's node: a node namespace with the host sides of two endpoints' veths, each
/// endpoint namespace with its address /32 and a default route to an on-link gateway whose
/// neighbor entry is the host side's MAC (the e2e tests' topology). Deleted on drop.
struct MiniLab {
    /// Node, client, server.
    ns: [NetNs; 3],
}

const CLIENT_V4: &str = "10.84.0.10";
const SERVER_V4: &str = "10.84.0.20";
const GATEWAY: &str = "169.254.0.1";

impl MiniLab {
    fn build(prefix: &str) -> Result<MiniLab, SockMsgBenchError> {
        let ns = [
            NetNs::create(&format!("{prefix}-node"))?,
            NetNs::create(&format!("{prefix}-c"))?,
            NetNs::create(&format!("{prefix}-s"))?,
        ];
        let node = ns[0].name().to_string();
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        for (i, (host_if, addr)) in [("lxc-c", CLIENT_V4), ("lxc-s", SERVER_V4)].into_iter().enumerate() {
            let ep = ns[i + 1].name().to_string();
            let (host_mac, ep_mac) = (format!("02:00:00:05:{i:02x}:01"), format!("02:00:00:05:{i:02x}:02"));
            ip(&[
                "-n", &node, "link", "add", host_if, "address", &host_mac, "type", "veth", "peer", "name",
                "eth0", "address", &ep_mac, "netns", &ep,
            ])?;
            ip(&["-n", &ep, "link", "set", "lo", "up"])?;
            ip(&["-n", &ep, "addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
            ip(&["-n", &ep, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ep, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink"])?;
            ip(&[
                "-n",
                &ep,
                "neigh",
                "add",
                GATEWAY,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            ip(&["-n", &node, "link", "set", host_if, "up"])?;
        }
        let lab = MiniLab { ns };
        lab.routes()?;
        lab.ns[0]
            .run_in(|| -> std::io::Result<()> {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
                std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "0")
            })?
            .map_err(io("node sysctls"))?;
        Ok(lab)
    }

    /// The node's route and neighbor entry per endpoint (again: `sluice down` removes the
    /// routes forwarding took over).
    fn routes(&self) -> Result<(), SockMsgBenchError> {
        let node = self.ns[0].name();
        for (i, (host_if, addr)) in [("lxc-c", CLIENT_V4), ("lxc-s", SERVER_V4)].into_iter().enumerate() {
            let ep_mac = format!("02:00:00:05:{i:02x}:02");
            ip(&["-n", node, "route", "replace", &format!("{addr}/32"), "dev", host_if])?;
            ip(&[
                "-n",
                node,
                "neigh",
                "replace",
                addr,
                "lladdr",
                &ep_mac,
                "dev",
                host_if,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }
}

/// The node file: the two endpoints, the server admitting the client.
fn node_config(socket_cgroup: Option<&Path>) -> Result<NodeConfig, SockMsgBenchError> {
    let layer =
        socket_cgroup.map_or(String::new(), |c| format!("  socketLayer: {{cgroup: {}}}\n", c.display()));
    let text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: sockmsg}}\nspec:\n{layer}  endpoints:\n\
         \x20   - {{name: client, interface: lxc-c, ipv4: {CLIENT_V4}, labels: {{app: client}}}}\n\
         \x20   - {{name: server, interface: lxc-s, ipv4: {SERVER_V4}, labels: {{app: server}}}}\n\
         ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n"
    );
    model::parse_str(&text, "sockmsg-bench.yaml").map_err(|e| SockMsgBenchError::Setup(e.to_string()))
}

/// `kernel.bpf_stats_enabled`.
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The socket layer's program run statistics and counters on the node pinned at `pin`.
fn layer_cost(
    sys: &std::sync::Arc<dyn sluice::sys::Syscall>,
    pin: &Path,
) -> Result<LayerCost, SockMsgBenchError> {
    let setup = |e: &dyn std::fmt::Display| SockMsgBenchError::Setup(e.to_string());
    let mut cost = LayerCost::default();
    let dir = pin.join(socklayer::SOCKLAYER_DIR);
    for name in [sluice::codegen::sockops::OPS_NAME, sluice::codegen::sockops::MSG_NAME] {
        let link = sluice::attach::Link::from_pin(sys, &dir.join(name)).map_err(|e| setup(&e))?;
        let id = link.info().map_err(|e| setup(&e))?.prog_id;
        let info = sluice::sys::Program::from_id(sys, id).and_then(|p| p.info()).map_err(|e| setup(&e))?;
        let ns = info.run_time_ns as f64 / info.run_cnt.max(1) as f64;
        if name == sluice::codegen::sockops::OPS_NAME {
            (cost.ops_ns, cost.ops_runs) = (ns, info.run_cnt);
        } else {
            (cost.msg_ns, cost.msg_runs) = (ns, info.run_cnt);
        }
    }
    let stats = sluice::sys::Map::from_pin(sys, &pin.join("maps").join(sluice::maps::names::SOCK_STATS))
        .map_err(|e| setup(&e))?;
    for c in sluice::maps::sock::SockCounter::ALL {
        let per_cpu =
            stats.lookup_percpu(&sluice::maps::u32_key(c as u32)).map_err(|e| setup(&e))?.unwrap_or_default();
        let sum: u64 =
            per_cpu.iter().filter_map(|v| v.get(..8)?.try_into().ok()).map(u64::from_le_bytes).sum();
        if sum > 0 {
            cost.counters.push((c.name(), sum));
        }
    }
    Ok(cost)
}

/// A cgroup of the run's own, removed on drop.
struct RunCgroup(PathBuf);

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Run the part (needs root, cgroup v2, `sockperf` and `iperf3`).
pub fn run(rounds: usize) -> Result<SockMsgReport, SockMsgBenchError> {
    for tool in ["sockperf", "iperf3"] {
        if Command::new(tool).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err(SockMsgBenchError::Setup(format!(
                "{tool} is not installed (apt-get install sockperf iperf3)"
            )));
        }
    }
    let prefix = format!("sluice-sockmsg-{}", std::process::id());
    let cg = RunCgroup(Path::new(CGROUP2_ROOT).join(&prefix));
    std::fs::create_dir(&cg.0).map_err(io(format!("creating cgroup {}", cg.0.display())))?;
    let procs = OpenOptions::new().write(true).open(cg.0.join("cgroup.procs")).map_err(io("cgroup.procs"))?;
    let tc_only = node_config(None)?;
    let accelerated = node_config(Some(&cg.0))?;
    let pin = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
    let lab = MiniLab::build(&format!("sm{}", std::process::id()))?;
    let sys = sluice::sys::kernel();
    let (client, server) = (&lab.ns[1], &lab.ns[2]);
    let dst: IpAddr = SERVER_V4.parse().expect("a literal address");
    let flow = Flow { client, server, dst, procs: &procs };
    let up = |cfg: &NodeConfig| -> Result<(), SockMsgBenchError> {
        lab.ns[0].run_in(|| -> Result<(), crate::demo::DemoError> {
            let plan = node::plan(cfg)?;
            load::load_and_pin(&sys, &plan, &pin)?;
            wire::attach(&sys, cfg, &pin, &AttachOptions::default())?;
            forward::sync(&sys, cfg, &pin)?;
            Ok(())
        })??;
        socklayer::sync(&sys, cfg, &pin).map_err(|e| SockMsgBenchError::Setup(e.to_string()))?;
        Ok(())
    };
    let down = || -> Result<(), SockMsgBenchError> {
        lab.ns[0]
            .run_in(|| wire::down(&sys, &pin).map(|_| ()))?
            .map_err(|e| SockMsgBenchError::Setup(e.to_string()))
    };
    let mut report = SockMsgReport::default();
    let result = (|| -> Result<(), SockMsgBenchError> {
        for _ in 0..rounds {
            // Two ports a setup (sockperf, iperf3).
            let port = |setup: u16| 8080 + setup * 2;
            lab.routes()?;
            let n =
                flow.measure(port(2)).map_err(|e| SockMsgBenchError::Setup(format!("no programs: {e}")))?;
            up(&tc_only)?;
            let t = flow.measure(port(1)).map_err(|e| SockMsgBenchError::Setup(format!("tc only: {e}")))?;
            down()?;
            up(&accelerated)?;
            let previous = std::fs::read_to_string(STATS_SYSCTL).unwrap_or_else(|_| "0".into());
            let _ = std::fs::write(STATS_SYSCTL, "1");
            let a = flow.measure(port(0));
            let cost = layer_cost(&sys, &pin);
            let _ = std::fs::write(STATS_SYSCTL, previous.trim());
            let a = a.map_err(|e| SockMsgBenchError::Setup(format!("accelerated: {e}")))?;
            report.cost.push(cost?);
            down()?;
            report.rounds.push([a, t, n]);
        }
        Ok(())
    })();
    let _ = down();
    let _ = std::fs::remove_dir_all(&pin);
    drop(lab);
    result.map(|()| report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tools_outputs() {
        let sp = "sockperf: ---> <MAX> observation =   57.123\nsockperf: ---> percentile 99.000 =   21.500\nsockperf: ---> percentile 50.000 =   10.250\n";
        assert_eq!((percentile(sp, "50.000"), percentile(sp, "99.000")), (Some(10.25), Some(21.5)));
        let js = r#"{"end": {"sum_sent": {"bits_per_second": 1.0}, "sum_received": {"seconds": 2, "bits_per_second": 3.5e10, "x": 1},
            "cpu_utilization_percent": {"host_total": 50.5, "host_user": 1, "remote_total": 20.25}}}"#;
        assert_eq!(received_bps(js), Some(3.5e10));
        assert_eq!(cpu_percent(js), Some(70.75));
    }
}
