//! `sluice_bench` against the real kernel and the clang-built anchors.
//!
//! Skips (with a line on stderr) without bpf(), bpftool or, when an anchor object still
//! has to be built, clang; fails instead when `SLUICE_REQUIRE_KERNEL=1`. By default it is a
//! smoke run of both parts (prefilter N = 16; repeat 10000, one round, codegen for 20
//! endpoints); `SLUICE_BENCH_FULL=1` runs the default sizes, repeat and rounds and prints
//! the report; `SLUICE_BENCH_PARTS=policy` (or `prefilter`) runs one part:
//!
//! ```sh
//! SLUICE_BENCH_FULL=1 cargo test --release -p sluice-bench --test bench_smoke -- --nocapture
//! ```

use sluice_bench::{self as bench, BenchOpts, PART_LB, PART_POLICY, PART_PREFILTER};

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
    let mut opts = BenchOpts::default();
    if !full {
        opts = BenchOpts { sizes: vec![16], repeat: 10_000, rounds: 1, codegen_endpoints: 20, ..opts };
    }
    if let Ok(parts) = std::env::var("SLUICE_BENCH_PARTS") {
        opts.parts = parts.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    }
    let objects: Vec<&str> =
        [(PART_PREFILTER, "xdp_prefilter.o"), (PART_POLICY, "tc_policy.o"), (PART_LB, "tc_lb.o")]
            .into_iter()
            .filter(|(part, _)| opts.runs(part))
            .map(|(_, obj)| obj)
            .collect();
    let anchors_built = objects.iter().all(|o| opts.build_dir.join(o).is_file());
    let missing: Vec<&str> = [("bpftool", true), ("python3", true), ("clang", !anchors_built)]
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
    let measured = bench::measure(&opts).unwrap_or_else(|e| panic!("bench failed: {e}"));
    let report = measured.render();
    println!("{report}");
    if opts.runs(PART_PREFILTER) {
        for case in ["v4_hit", "v4_miss", "v6_hit", "v6_miss"] {
            for &n in &opts.sizes {
                let row = format!("| {n} | {case} |");
                assert!(report.contains(&row), "no row {row:?} in\n{report}");
            }
        }
    }
    assert!(report.contains("verified insns"), "{report}");
    if opts.runs(PART_POLICY) {
        let policy = measured.policy.as_ref().expect("the policy part ran");
        let cases = ["allow_l3l4", "allow_l3_any_port", "allow_l4_any_id", "deny"];
        assert_eq!(policy.checks.iter().map(|c| c.case).collect::<Vec<_>>(), cases);
        for c in &policy.checks {
            assert!(c.passed(), "verdict check failed: {c:?}\n{report}");
        }
        assert!(policy.checks_passed());
        let rows = [
            ("(a) new, conntrack off", &cases[..]),
            ("(b) new, conntrack on", &cases[3..]),
            ("(c) established, conntrack on", &cases[..3]),
        ];
        for (variant, cases) in rows {
            for case in cases {
                let row = format!("| {variant} | {case} |");
                assert!(report.contains(&row), "no row {row:?} in\n{report}");
            }
        }
        assert_eq!(policy.cases.len(), 8, "{report}");
        for c in &policy.cases {
            assert_eq!((c.ours.len(), c.anchor.len()), (opts.rounds, opts.rounds), "{c:?}");
        }
        assert!(!report.contains("**FAILED**"), "{report}");
    }
    if opts.runs(PART_LB) {
        let lb = measured.lb.as_ref().expect("the lb part ran");
        assert_eq!(lb.rows.iter().map(|r| r.case).collect::<Vec<_>>(), ["svc_hit_dnat", "svc_miss"]);
        for r in &lb.rows {
            let lens = (r.anchor.len(), r.ours_ct.len(), r.ours_no_ct.len());
            assert_eq!(lens, (opts.rounds, opts.rounds, opts.rounds), "{r:?}");
        }
        assert_eq!(lb.scale.iter().map(|r| r.services).collect::<Vec<_>>(), bench::lb::SCALES);
        assert!(report.contains("| svc_hit_dnat |"), "{report}");
    }
}
