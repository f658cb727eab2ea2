//! `sluice bench --parts flows`: TCP throughput and request/response latency between two
//! endpoints of one node, through sluice (endpoint policy enforced, forwarding by
//! redirect) against the same namespaces with no program attached (the host stack routes
//! between the veths), in the same run.
//!
//! Contract:
//! - The lab is [`crate::demo::lab::Lab`] for the built-in default node; the flow is
//!   frontend -> backend TCP 8080 (allowed by the node's policies, so every packet passes
//!   the sender's egress policy and the receiver's ingress policy, conntrack included).
//! - Rounds alternate: sluice loaded and attached (and forwarding wired), measure; `down`
//!   (programs detached, router devices and routes kept), measure the stack alone; again.
//! - Throughput: one connection, 128 KiB writes for [`FlowBenchOpts::seconds`]; the
//!   receiver counts bytes. Latency: one connection, 1-byte request and 1-byte answer,
//!   [`FlowBenchOpts::round_trips`] times; mean, median and p99 of the round trip.
//! - The figures are medians over rounds; the overhead is sluice over the stack.

use crate::demo::lab::Lab;
use sluice::model::{self, NodeConfig};
use sluice::netlink::NetNs;
use sluice::node::wire::{self, AttachOptions};
use sluice::node::{self, forward, load};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest any read or write may block: a lost connection fails the run instead of
/// hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowBenchOpts {
    pub rounds: usize,
    pub seconds: f64,
    pub round_trips: usize,
}

impl Default for FlowBenchOpts {
    fn default() -> FlowBenchOpts {
        FlowBenchOpts { rounds: 3, seconds: 2.0, round_trips: 5000 }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub gbit_s: f64,
    pub rtt_mean_us: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
}

/// Both setups' samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowReport {
    pub sluice: Vec<Sample>,
    pub stack: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl FlowReport {
    fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
        median(v.iter().map(f).collect())
    }

    /// The markdown section.
    pub fn render(&self, opts: &FlowBenchOpts) -> String {
        let row = |name: &str, f: &dyn Fn(&Sample) -> f64, higher_better: bool| {
            let (s, b) = (Self::med(&self.sluice, f), Self::med(&self.stack, f));
            let overhead = if higher_better { (b - s) / b * 100.0 } else { (s - b) / b * 100.0 };
            format!("| {name} | {s:.2} | {b:.2} | {overhead:+.1}% |\n")
        };
        let mut out = format!(
            "### Endpoint to endpoint, real TCP (frontend -> backend 8080, {} rounds, medians)\n\n\
             | figure | through sluice | stack only | sluice overhead |\n|---|---:|---:|---:|\n",
            self.sluice.len()
        );
        out += &row("throughput, Gbit/s", &|s| s.gbit_s, true);
        out += &row("request/response round trip, mean µs", &|s| s.rtt_mean_us, false);
        out += &row("round trip, median µs", &|s| s.rtt_p50_us, false);
        out += &row("round trip, p99 µs", &|s| s.rtt_p99_us, false);
        out += &format!(
            "\nThroughput: one connection, 128 KiB writes for {:.1} s. Latency: {} one-byte request/answer round trips on one connection. \
             Through sluice: frontend's egress policy, redirect to backend's veth, backend's ingress policy, conntrack on both. \
             Stack only: the same namespaces and routes with no program attached.\n",
            opts.seconds, opts.round_trips
        );
        out
    }
}

/// Why the flow benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowBenchError {
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Lab(#[from] crate::demo::lab::LabError),
    #[error(transparent)]
    Netlink(#[from] sluice::netlink::NetlinkError),
    #[error("traffic: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<T, FlowBenchError> {
    Ok(ns.run_in(f)?)
}

fn endpoint(cfg: &NodeConfig, name: &str) -> Result<(usize, IpAddr), FlowBenchError> {
    let i = cfg
        .endpoints
        .iter()
        .position(|e| e.name == name)
        .ok_or_else(|| FlowBenchError::Setup(format!("the default node has no endpoint {name}")))?;
    let a =
        cfg.endpoints[i].ipv4.ok_or_else(|| FlowBenchError::Setup(format!("{name} has no IPv4 address")))?;
    Ok((i + 1, a.into()))
}

/// Measure one setup: a throughput run and a latency run between the two namespaces.
pub(crate) fn measure(
    client: &NetNs,
    server: &NetNs,
    dst: SocketAddr,
    opts: &FlowBenchOpts,
) -> Result<Sample, FlowBenchError> {
    let sfd = server.fd().try_clone_to_owned()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let seconds = opts.seconds;
    let round_trips = opts.round_trips;
    let srv = std::thread::spawn(move || -> std::io::Result<u64> {
        // setns on this thread only.
        nix::sched::setns(&sfd, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let l = TcpListener::bind(dst)?;
        let _ = tx.send(());
        // Throughput: count until the sender closes, then close (the sender waits for it).
        let total = {
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut buf = vec![0u8; 1 << 17];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => break total,
                    n => total += n as u64,
                }
            }
        };
        // Latency: echo one byte at a time.
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        for _ in 0..round_trips {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        Ok(total)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| FlowBenchError::Setup("the server did not start".into()))?;
    let sample = in_ns(client, move || -> std::io::Result<Sample> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let chunk = vec![0x5au8; 1 << 17];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            s.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = [0u8; 1];
        let _ = s.read(&mut rest);
        let elapsed = start.elapsed().as_secs_f64();
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let mut rtts = Vec::with_capacity(round_trips);
        let mut b = [1u8; 1];
        for _ in 0..round_trips {
            let t = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mean = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
        rtts.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| rtts.get(((rtts.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
        Ok(Sample {
            gbit_s: sent as f64 * 8.0 / elapsed / 1e9,
            rtt_mean_us: mean,
            rtt_p50_us: at(0.5),
            rtt_p99_us: at(0.99),
        })
    })??;
    srv.join().map_err(|_| FlowBenchError::Setup("the server panicked".into()))??;
    Ok(sample)
}

/// Host routes to every endpoint address through its interface, and forwarding on: what
/// the node's stack needs to carry endpoint traffic with no sluice program attached.
fn stack_routes(cfg: &NodeConfig) -> Result<(), FlowBenchError> {
    use sluice::netlink::{sysctl, Netlink, Route};
    let nl = Netlink::open()?;
    sysctl::ip_forward(None, true)?;
    sysctl::ipv6_forwarding(None, true)?;
    for ep in &cfg.endpoints {
        let ifindex = nl.ifindex(&ep.interface)?;
        for addr in ep.addresses() {
            nl.replace_route(&Route::new(sluice::model::Cidr::host(addr)).dev(ifindex))?;
        }
    }
    Ok(())
}

/// Run the benchmark (needs root).
pub fn run(opts: &FlowBenchOpts) -> Result<FlowReport, FlowBenchError> {
    let cfg = model::default_node();
    let (from, _) = endpoint(&cfg, "frontend")?;
    let (to, dst_ip) = endpoint(&cfg, "backend")?;
    let prefix = format!("sluice-bench-{}", std::process::id());
    let pin = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
    let lab = Lab::build(&cfg, &prefix)?;
    let sys = sluice::sys::kernel();
    let (client, server) = (
        lab.endpoint(from).ok_or_else(|| FlowBenchError::Setup("no client namespace".into()))?,
        lab.endpoint(to).ok_or_else(|| FlowBenchError::Setup("no server namespace".into()))?,
    );
    let up = |pin: &PathBuf| -> Result<(), FlowBenchError> {
        in_ns(&lab.node, || -> Result<(), crate::demo::DemoError> {
            let plan = node::plan(&cfg)?;
            load::load_and_pin(&sys, &plan, pin)?;
            wire::attach(&sys, &cfg, pin, &AttachOptions::default())?;
            forward::sync(&sys, &cfg, pin)?;
            Ok(())
        })??;
        Ok(())
    };
    let down = |pin: &PathBuf| -> Result<(), FlowBenchError> {
        in_ns(&lab.node, || wire::down(&sys, pin).map(|_| ()))?
            .map_err(|e| FlowBenchError::Setup(e.to_string()))?;
        // `down` removes the host routes sluice made; the stack-alone baseline routes to
        // the endpoints the plain way: a host route per address on its host-side veth.
        in_ns(&lab.node, || stack_routes(&cfg))?
    };
    let mut report = FlowReport::default();
    let result = (|| -> Result<(), FlowBenchError> {
        for round in 0..opts.rounds {
            // The node's policy admits frontend -> backend on 8080-8089.
            let port = 8080 + (round as u16 * 2) % 10;
            up(&pin)?;
            report.sluice.push(measure(client, server, SocketAddr::new(dst_ip, port), opts)?);
            down(&pin)?;
            report.stack.push(measure(client, server, SocketAddr::new(dst_ip, port + 1), opts)?);
        }
        Ok(())
    })();
    let _ = down(&pin);
    let _ = std::fs::remove_dir_all(&pin);
    drop(lab);
    result.map(|()| report)
}
