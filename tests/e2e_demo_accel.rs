//! Issue 11: "`sluice demo` shows the accelerated path: an endpoint-to-endpoint TCP flow
//! whose data bypasses the tc programs after the handshake (their counters stop moving; the
//! socket-layer counters move), with the payload verified."
//!
//! The built-in default node's lab, as `sluice demo` runs it ([`demo::run_kernel_all`]):
//! after the flows and the services, the accelerated run ([`demo::accel`]) on the first
//! allowed IPv4 TCP flow between two endpoints. The only test in its binary: the run moves
//! the test process into its cgroup for the transfer.

// `sluice demo`'s lab belongs to the `sluice` binary, not the library: included by path.
#[path = "../src/demo/mod.rs"]
#[allow(dead_code)]
mod demo;

use demo::accel;
use sluice::maps::sock::SockCounter;
use sluice::model;
use std::sync::atomic::AtomicBool;

#[test]
fn the_demo_shows_the_accelerated_path() {
    if !sluice::sys::require_kernel("the_demo_shows_the_accelerated_path") {
        return;
    }
    let cfg = model::default_node();
    let stop = AtomicBool::new(false);
    let (rows, _, row) = demo::run_kernel_all(&cfg, &stop, &mut std::io::stderr()).expect("the lab runs");
    assert!(rows.iter().all(|r| r.ok()), "the other flows are as expected with the accelerated run added");
    let row = row.expect("the accelerated run ran");
    eprintln!("{row}");
    assert_eq!(row.skipped, None, "the default node has an allowed endpoint-to-endpoint TCP flow");
    assert_eq!(row.error, None, "payload verified");
    assert_eq!(row.layer.get(SockCounter::Accelerated.name()), Some(&2), "both ends accelerated: {row}");
    let redirected = row.layer.get(SockCounter::BytesRedirected.name()).copied().unwrap_or(0);
    assert!(redirected >= accel::PAYLOAD as u64, "every payload byte redirected: {row}");
    assert!(row.tc_packets <= accel::TC_PACKETS_MAX, "the tc programs saw only set-up and close: {row}");
    assert!(row.tc_packets_stack > 4 * row.tc_packets.max(10), "off, tc sees the data: {row}");
    assert!(row.ok(), "{row}");
    // The lab, the socket layer's cgroup and the pins are gone.
    let cgroup = std::path::Path::new(accel::CGROUP2_ROOT).join(format!("{}-accel", demo::lab_prefix()));
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}
