//! The `sluice-bench` binary; `sluice bench ARGS` runs it with the same arguments.

use clap::Parser;
use sluice_bench::{BenchOpts, PART_LB, PART_MAGLEV, PART_POLICY, PART_PREFILTER, PART_SOCKLB};
use std::process::ExitCode;

/// Time our programs against the clang-built anchors, in the same run (root).
#[derive(Debug, Parser)]
#[command(name = "sluice bench", version, about)]
struct Args {
    /// Deny-set sizes per family.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 10_000, 1_000_000])]
    sizes: Vec<usize>,
    /// BPF_PROG_TEST_RUN repeat count per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Interleaved rounds per case.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Which parts to run: prefilter, policy, maglev (maglev alone needs no root), socklb
    /// (connect() through the socket load balancer, root and cgroup v2), lb (the tc load
    /// balancer against tc_lb.o); and
    /// attach (daemon start to 100 attached endpoints) and flows (endpoint-to-endpoint TCP
    /// through sluice against the stack alone), sockmsg (the socket layer against tc
    /// only and no programs, with sockperf and iperf3), l7 (HTTP direct, through sluice
    /// proxy and through HAProxy; needs wrk and haproxy), encrypt (cross-node TCP, VXLAN
    /// against WireGuard) and cluster (one agent against 1,000 nodes x 100 endpoints in a
    /// throwaway etcd), only when named.
    #[arg(long, value_delimiter = ',', default_values_t = [PART_PREFILTER, PART_POLICY, PART_MAGLEV, PART_SOCKLB, PART_LB].map(String::from))]
    parts: Vec<String>,
}

fn main() -> ExitCode {
    let Args { sizes, repeat, rounds, parts } = Args::parse();
    let opts = BenchOpts { sizes, repeat, rounds, parts, ..BenchOpts::default() };
    if opts.needs_kernel() {
        if let Err(why) = sluice::sys::kernel_available() {
            eprintln!("sluice: sluice bench needs root (bpf() and bpffs): {why}");
            return ExitCode::from(1);
        }
    }
    match sluice_bench::run(&opts) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        }
    }
}
