//! `sluice demo --cluster` (issue 13): the binary itself, run as a user runs it, with a 3 s
//! lease so the node-leaving part is short. It must exit 0 ("Exit 0 only if every
//! expectation held"), print each part's verdicts, and leave nothing behind: no namespace
//! and no pin directory named after its pid.
//!
//! Also: without `etcd` on PATH it says exactly how to install it and exits non-zero.
//! Needs root (bpf(), namespaces) and etcd: a skip otherwise, a failure under
//! `SLUICE_REQUIRE_KERNEL=1`.

use std::process::{Command, Stdio};

fn etcd_gate(test: &str) -> bool {
    if sluice::cluster::server::available() {
        return true;
    }
    let hint = sluice::cluster::server::INSTALL_HINT;
    if std::env::var(sluice::sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
        panic!("{test}: {hint}");
    }
    eprintln!("skip: {test}: {hint}");
    false
}

/// Names under `dir` that contain `needle`.
fn left(dir: &str, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_cluster_demo_shows_every_part_and_cleans_up() {
    let test = "the_cluster_demo_shows_every_part_and_cleans_up";
    if !sluice::sys::require_kernel(test) || !etcd_gate(test) {
        return;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--cluster", "--lease-ttl", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs sluice demo --cluster");
    let pid = child.id();
    let out = child.wait_with_output().expect("the demo ends");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}:\n{text}", out.status.code());
    for part in [
        "1. identities",
        "same labels -> same number on every node",
        "node-1 client -> node-2 server (selects remote pods only)",
        "a remote pod is not world",
        "a remote pod is cluster",
        "outside host 172.16.0.254 -> node-2 server (world)",
        "node-1's address 172.16.0.1 -> node-2 server",
        "a pod is not remote-node",
        "4. node-3 leaves",
        "node-1 and node-2 see 2 nodes, 4 endpoints",
        "node-1 no longer tunnels to node-3",
        "every expectation held",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    assert!(!text.contains("MISMATCH"), "{text}");
    let tag = format!("-{pid}-");
    assert_eq!(left("/run/netns", &format!("scd{tag}")), Vec::<String>::new(), "namespaces left");
    assert_eq!(
        left(sluice::sys::DEFAULT_BPFFS, &format!("sluice-demo-cluster{tag}")),
        Vec::<String>::new(),
        "pins left"
    );
}

#[test]
fn without_etcd_the_cluster_demo_says_how_to_install_it() {
    let test = "without_etcd_the_cluster_demo_says_how_to_install_it";
    if !sluice::sys::require_kernel(test) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--cluster"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("runs sluice demo --cluster");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "exit 0 without etcd:\n{text}");
    assert!(text.contains("apt-get install etcd-server"), "{text}");
}
