//! End to end: the built-in default node's flows with real traffic, as `sluice demo` runs
//! them — endpoint to endpoint (redirect between veths), the world to an endpoint (XDP
//! prefilter, then ingress policy), an endpoint to the world (FIB-routed out of the
//! network device) and both ways across the VXLAN overlay — each expected verdict from the
//! prefilter and the reference policy evaluator, each observed from both ends (an answer
//! came back, or nothing did).
//!
//! Also checked: packets an endpoint sends are forwarded by sluice, not routed by the
//! node's host stack (its `Ip: ForwDatagrams` does not move during those flows, while it
//! does for traffic arriving from the world), and nothing is left behind: the lab's
//! namespaces and the pin directory are gone afterwards.
//!
//! The simulator runs the same flows' packets (request and answer) through the programs,
//! following redirects, with the same expectations; that part needs no privileges.

// `sluice demo`'s lab belongs to the `sluice` binary, not the library: included by path.
#[path = "../src/demo/mod.rs"]
#[allow(dead_code)]
mod demo;

use demo::Side;
use sluice::model;
use std::sync::atomic::AtomicBool;

#[test]
fn the_default_nodes_flows_in_the_simulator() {
    let cfg = model::default_node();
    let rows = demo::run_sim(&cfg).expect("the simulator runs every flow");
    assert!(rows.len() >= 20, "the default node has flows of every kind");
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| format!("{}: {:?} ({})", r.flow.describe(&cfg), r.observed, r.evidence))
        .collect();
    assert!(bad.is_empty(), "flows not as expected:\n{}", bad.join("\n"));
    for kind in [
        "endpoint to endpoint",
        "world to endpoint",
        "endpoint to world",
        "endpoint to overlay peer",
        "overlay peer to endpoint",
    ] {
        assert!(
            rows.iter().any(|r| r.flow.kind == kind && r.ok() && r.expect == demo::Expect::Allow),
            "{kind}: an allowed flow"
        );
    }
    assert!(rows.iter().any(|r| r.expect != demo::Expect::Allow), "denied flows too");
}

#[test]
fn the_default_nodes_flows_with_real_traffic() {
    if !sluice::sys::require_kernel("the_default_nodes_flows_with_real_traffic") {
        return;
    }
    let cfg = model::default_node();
    let stop = AtomicBool::new(false);
    let (rows, services) =
        demo::run_kernel_with_services(&cfg, &stop, &mut std::io::stderr()).expect("the lab runs");
    let mut out = Vec::new();
    let bad = demo::print_table(&cfg, &rows, &mut out).expect("prints");
    let svc_bad = demo::services::print(&services, &mut out).expect("prints");
    eprintln!("{}", String::from_utf8_lossy(&out));
    assert_eq!(bad, 0, "every flow as expected");
    // The default node's service: IPv4 (a local backend and one on the overlay peer) and
    // IPv6 (a local backend), each answered through the VIP by its backends only.
    assert_eq!(svc_bad, 0, "every service probe as expected");
    let probed: Vec<_> = services.iter().filter(|s| s.skipped.is_none()).collect();
    assert_eq!(probed.len(), 2, "both of the default node's TCP frontends are probed");
    for s in &probed {
        assert_eq!(s.answered.values().sum::<usize>(), demo::services::TRIES, "{}", s.name);
        assert!(s.evidence.contains("new_connection"), "{}: {}", s.name, s.evidence);
    }
    for r in rows.iter().filter(|r| r.observed == demo::Outcome::Delivered && r.flow.src.is_ipv4()) {
        let routed = r.stack_routed.expect("kernel rows count stack routing");
        let what = r.flow.describe(&cfg);
        match (r.flow.from, r.flow.to, r.flow.proto) {
            // Both directions leave an endpoint: sluice redirects both, the stack routes none.
            (Side::Endpoint(_), Side::Endpoint(_), _) => assert_eq!(routed, 0, "{what}: routed by the stack"),
            // One datagram each way: the request leaves through sluice (FIB or overlay),
            // only the answer coming in is routed by the stack.
            (Side::Endpoint(_), _, demo::Proto::Udp) => {
                assert_eq!(routed, 1, "{what}: only the answer is stack-routed")
            }
            // Traffic from the world is routed by the stack to the endpoint's veth (the counter works).
            (Side::World, _, _) => assert!(routed > 0, "{what}: the stack routes arriving traffic"),
            _ => {}
        }
    }
    assert!(
        rows.iter().any(|r| matches!(r.flow.from, Side::Endpoint(_))
            && r.flow.to == Side::Peer
            && r.flow.proto == demo::Proto::Udp
            && r.ok()),
        "the overlay UDP flow ran"
    );
    let prefix = demo::lab_prefix();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/{prefix}")).exists(), "pins left behind");
}
