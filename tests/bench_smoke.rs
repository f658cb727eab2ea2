//! `sluice::bench` against the real kernel and the clang-built anchor.
//!
//! Skips (with a line on stderr) without bpf(), bpftool or, when the anchor object still
//! has to be built, clang; fails instead when `SLUICE_REQUIRE_KERNEL=1`. By default it is a
//! smoke run (N = 16, repeat 10000, one round); `SLUICE_BENCH_FULL=1` runs the default
//! sizes, repeat and rounds and prints the report:
//!
//! ```sh
//! SLUICE_BENCH_FULL=1 cargo test --release -p sluice --test bench_smoke -- --nocapture
//! ```

use sluice::bench::{self, BenchOpts};

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[test]
fn bench_reports_every_case_against_the_anchor() {
    if !sluice::sys::require_kernel("bench_smoke") {
        return;
    }
    let required = std::env::var("SLUICE_REQUIRE_KERNEL").is_ok_and(|v| v.trim() == "1");
    let full = std::env::var("SLUICE_BENCH_FULL").is_ok_and(|v| v.trim() == "1");
    let defaults = BenchOpts::default();
    let opts =
        if full { defaults } else { BenchOpts { sizes: vec![16], repeat: 10_000, rounds: 1, ..defaults } };
    let anchor_built = opts.build_dir.join("xdp_prefilter.o").is_file();
    let missing: Vec<&str> = [("bpftool", true), ("python3", true), ("clang", !anchor_built)]
        .into_iter()
        .filter(|&(tool, needed)| needed && !on_path(tool))
        .map(|(tool, _)| tool)
        .collect();
    if !missing.is_empty() {
        let why =
            format!("bench_smoke: {} not found (CI installs clang libbpf-dev bpftool)", missing.join(", "));
        assert!(!required, "{why}");
        eprintln!("skip: {why}");
        return;
    }
    let report = bench::run(&opts).unwrap_or_else(|e| panic!("bench failed: {e}"));
    println!("{report}");
    for case in ["v4_hit", "v4_miss", "v6_hit", "v6_miss"] {
        for &n in &opts.sizes {
            let row = format!("| {n} | {case} |");
            assert!(report.contains(&row), "no row {row:?} in\n{report}");
        }
    }
    assert!(report.contains("verified insns"), "{report}");
}
