//! `sluice bench --parts encrypt`: cross-node TCP throughput, request/response latency and
//! CPU per Gbit between an endpoint of the default node and its overlay peer's pod, with
//! encryption off (VXLAN) and with WireGuard (sluice's userspace WireGuard on both nodes:
//! this kernel has no WireGuard device type, so the kernel-WireGuard column says so), in
//! the same run.
//!
//! Contract:
//! - Off: [`crate::demo::lab::Lab`] for the default node (the peer is a Linux VXLAN
//!   device), sluice loaded, attached and forwarding; WireGuard: [`crate::demo::wireguard::WgLab`].
//!   The flow is frontend -> peer pod TCP 8080 (allowed by the node's policy).
//! - Throughput and round trips as in [`super::flows`] (one connection, 128 KiB writes; one-byte
//!   request/answer), medians over rounds. CPU: this process's user + system time
//!   (`getrusage`) during the throughput run, per Gbit moved: the sender, receiver, the
//!   softirq work their syscalls run and the userspace WireGuard threads all live in this
//!   process; work the kernel defers to ksoftirqd is not counted.

use super::flows::{measure, FlowBenchOpts, Sample};
use crate::demo::lab::Lab;
use crate::demo::wireguard::{PeerKey, WgLab};
use sluice::model;
use sluice::netlink::NetNs;
use sluice::node::wire::{self, AttachOptions};
use sluice::node::{self, forward, load};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// One setup's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncryptSample {
    pub flow: Sample,
    /// CPU seconds per Gbit moved.
    pub cpu_s_per_gbit: f64,
}

/// Both setups' samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncryptReport {
    pub vxlan: Vec<EncryptSample>,
    pub wireguard: Vec<EncryptSample>,
    /// Whether the kernel has the WireGuard device type.
    pub kernel_wireguard: bool,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn sample(
    client: &NetNs,
    server: &NetNs,
    dst: SocketAddr,
    opts: &FlowBenchOpts,
) -> Result<EncryptSample, String> {
    let before = cpu_seconds();
    let tput = measure(client, server, dst, &FlowBenchOpts { round_trips: 1, ..*opts })
        .map_err(|e| e.to_string())?;
    let cpu = cpu_seconds() - before;
    let next = SocketAddr::new(dst.ip(), dst.port());
    let rr = measure(client, server, next, &FlowBenchOpts { seconds: 0.05, ..*opts })
        .map_err(|e| e.to_string())?;
    let gbit = tput.gbit_s * opts.seconds;
    Ok(EncryptSample {
        flow: Sample { gbit_s: tput.gbit_s, ..rr },
        cpu_s_per_gbit: if gbit > 0.0 { cpu / gbit } else { 0.0 },
    })
}

/// One figure of a sample.
type Figure = dyn Fn(&EncryptSample) -> f64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl EncryptReport {
    /// The markdown section.
    pub fn render(&self, opts: &FlowBenchOpts) -> String {
        let med = |v: &[EncryptSample], f: &Figure| median(v.iter().map(f).collect());
        let kernel = if self.kernel_wireguard {
            "not measured (not driven yet)"
        } else {
            "n/a (no wireguard device type)"
        };
        let mut out = format!(
            "### Cross-node TCP, encryption off (VXLAN) vs WireGuard ({} rounds, medians)\n\n\
             | figure | VXLAN (off) | userspace WireGuard | kernel WireGuard |\n|---|---:|---:|---:|\n",
            self.vxlan.len()
        );
        let rows: [(&str, &Figure); 5] = [
            ("throughput, Gbit/s", &|s| s.flow.gbit_s),
            ("round trip, mean µs", &|s| s.flow.rtt_mean_us),
            ("round trip, median µs", &|s| s.flow.rtt_p50_us),
            ("round trip, p99 µs", &|s| s.flow.rtt_p99_us),
            ("CPU s per Gbit (this process)", &|s| s.cpu_s_per_gbit),
        ];
        for (name, f) in rows {
            out += &format!(
                "| {name} | {:.2} | {:.2} | {kernel} |\n",
                med(&self.vxlan, f),
                med(&self.wireguard, f)
            );
        }
        out += &format!(
            "\nfrontend -> peer pod 10.0.2.7:8080 across the underlay veth. Throughput: one connection, 128 KiB writes for {:.1} s. \
             Latency: {} one-byte round trips. CPU: getrusage of the whole process during the throughput run (sender, receiver \
             and both WireGuard threads), per Gbit.\n",
            opts.seconds, opts.round_trips
        );
        out
    }
}

/// Run the benchmark (needs root).
pub fn run(opts: &FlowBenchOpts) -> Result<EncryptReport, String> {
    let mut report = EncryptReport {
        kernel_wireguard: sluice::netlink::Netlink::open()
            .map(|nl| sluice::encrypt::kernel_wireguard(&nl))
            .unwrap_or(false),
        ..EncryptReport::default()
    };
    let cfg = model::default_node();
    let frontend = 1 + cfg.endpoints.iter().position(|e| e.name == "frontend").ok_or("no frontend")?;
    // Encryption off: the plain lab (the peer is a Linux VXLAN device).
    {
        let prefix = format!("slbench-vx-{}", std::process::id());
        let pin = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
        let lab = Lab::build(&cfg, &prefix).map_err(|e| e.to_string())?;
        let sys = sluice::sys::kernel();
        let wired = lab.node.run_in(|| -> Result<(), String> {
            let plan = node::plan(&cfg).map_err(|e| e.to_string())?;
            load::load_and_pin(&sys, &plan, &pin).map_err(|e| e.to_string())?;
            wire::attach(&sys, &cfg, &pin, &AttachOptions::default()).map_err(|e| e.to_string())?;
            forward::sync(&sys, &cfg, &pin).map_err(|e| e.to_string())?;
            Ok(())
        });
        let result = (|| -> Result<(), String> {
            wired.map_err(|e| e.to_string())??;
            let dst = SocketAddr::new(IpAddr::V4(lab.peer_pods.0.ok_or("no peer pod")?), 8080);
            let (client, server) =
                (lab.endpoint(frontend).ok_or("no ns")?, lab.peer.as_ref().ok_or("no peer")?);
            for _ in 0..opts.rounds {
                report.vxlan.push(sample(client, server, dst, opts)?);
            }
            Ok(())
        })();
        let _ = lab.node.run_in(|| wire::down(&sys, &pin));
        let _ = std::fs::remove_dir_all(&pin);
        result?;
    }
    // WireGuard.
    {
        let lab = WgLab::build(&format!("slbench-wg-{}", std::process::id()), PeerKey::Right)?;
        let dst = SocketAddr::new(IpAddr::V4(lab.peer_pod().ok_or("no peer pod")?), 8080);
        let client = lab.endpoint_ns(frontend).ok_or("no ns")?;
        for _ in 0..opts.rounds {
            report.wireguard.push(sample(client, lab.peer_ns(), dst, opts)?);
        }
    }
    Ok(report)
}
