//! The cluster benchmark part at a small size (20 nodes x 10 endpoints, 30 label sets, 20
//! changes): it converges, sees every change, and renders every row. Figures are not
//! asserted (speed goes in BENCHMARKS.md). Needs the `etcd` binary (skip without it, a
//! failure under `SLUICE_REQUIRE_KERNEL=1`).

use sluice::cluster::server;

#[test]
fn the_cluster_part_runs_at_a_small_size() {
    if !server::available() {
        if std::env::var(sluice::sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("{}", server::INSTALL_HINT);
        }
        eprintln!("skip: the_cluster_part_runs_at_a_small_size: {}", server::INSTALL_HINT);
        return;
    }
    let r = sluice_bench::cluster::measure_sized(20, 10, 30, 20).expect("the part runs");
    assert_eq!((r.nodes, r.endpoints, r.label_sets), (20, 200, 30));
    assert!(r.plan.is_ok(), "the plan of the converged view: {:?}", r.plan);
    // 200 remote endpoints, the local one, 20 node addresses, 20 pod prefixes, 2 defaults.
    assert_eq!(r.ipcache_entries, 200 + 1 + 20 + 20 + 2);
    let mut s = String::new();
    r.render(&mut s);
    for row in ["view complete", "propagation", "RSS", "per endpoint change"] {
        assert!(s.contains(row), "row {row:?} missing:\n{s}");
    }
    eprintln!("{s}");
}
