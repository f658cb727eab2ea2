//! Whole-node replay (`sluice::node::node_replay`, `sluice sim`): packets go
//! through the prefilter or their source endpoint's program, then their destination
//! endpoint's, with conntrack carried across the capture; on flows of the demo fixture
//! (each with the path and end the policies give it), then on the tcpdump corpus (no
//! failure, every packet accounted for).

use sluice::golden::probes::{flow_frame, reply_frame};
use sluice::model;
use sluice::node::node_replay::{replay_node, NodePacket, Outcome};
use sluice::node::sim::SimNode;
use sluice::policy::FlowKey;
use std::path::PathBuf;

const DEMO: &str = "fixtures/policy/demo.yaml";

/// A classic pcap (Ethernet) of `frames`.
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65_535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend((i as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    out
}

fn key(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey { src: src.parse().expect("address"), dst: dst.parse().expect("address"), proto, sport, dport }
}

fn run(frames: &[Vec<u8>]) -> Vec<NodePacket> {
    let cfg = model::load_file(std::path::Path::new(DEMO)).expect("demo parses");
    let plan = sluice::node::plan(&cfg).expect("plans");
    let mut node = SimNode::new(&plan).expect("the simulator accepts");
    let mut out = Vec::new();
    let summary = replay_node(&mut node, &cfg, &pcap(frames), |p| out.push(p.clone())).expect("replays");
    assert_eq!(summary.packets, frames.len(), "{summary}");
    out
}

#[test]
fn demo_flows_take_their_whole_path() {
    let world_https = key("203.0.113.7", "10.0.1.10", 6, 40_001, 443);
    let world_backend = key("203.0.113.7", "10.0.1.20", 6, 40_002, 8080);
    let frontend_backend = key("10.0.1.10", "10.0.1.20", 6, 40_003, 8080);
    let frontend_db = key("10.0.1.10", "10.0.1.30", 6, 40_004, 5432);
    let frames = [
        flow_frame(&world_https),
        // Endpoint policy drops it: the prefilter alone said pass (issue 14).
        flow_frame(&world_backend),
        flow_frame(&frontend_backend),
        // The reply: conntrack from the packet before carries it through both programs.
        reply_frame(&key("10.0.1.20", "10.0.1.10", 6, 8080, 40_003)),
        // The frontend's egress does not allow the database.
        flow_frame(&frontend_db),
    ];
    let got: Vec<String> = run(&frames).iter().map(|p| p.to_string()).collect();
    assert_eq!(
        got,
        [
            "packet 0 203.0.113.7 -> 10.0.1.10: prefilter=2 to_ep_3=0 => delivered to frontend",
            "packet 1 203.0.113.7 -> 10.0.1.20: prefilter=2 to_ep_1=2 => dropped",
            "packet 2 10.0.1.10 -> 10.0.1.20: from_ep_3=0 to_ep_1=0 => delivered to backend",
            "packet 3 10.0.1.20 -> 10.0.1.10: from_ep_1=0 to_ep_3=0 => delivered to frontend",
            "packet 4 10.0.1.10 -> 10.0.1.30: from_ep_3=2 => dropped",
        ]
    );
    // The kernel twin takes every packet the same way.
    if sluice::sys::require_kernel("demo_flows_take_their_whole_path") {
        let cfg = model::load_file(std::path::Path::new(DEMO)).expect("demo parses");
        let plan = sluice::node::plan(&cfg).expect("plans");
        let loaded =
            sluice::node::load::load_plan(&sluice::sys::kernel(), &plan).expect("the kernel accepts");
        let mut by_kernel = Vec::new();
        sluice::node::node_replay::replay_node_kernel(&loaded, &cfg, &pcap(&frames), |p| {
            by_kernel.push(p.to_string())
        })
        .expect("replays");
        assert_eq!(by_kernel, got);
    }
    let json = run(&frames[1..2])[0].to_json();
    assert_eq!(
        json,
        "{\"index\":0,\"src\":\"203.0.113.7\",\"dst\":\"10.0.1.20\",\"path\":[{\"program\":\"prefilter\",\"verdict\":2},\
         {\"program\":\"to_ep_1\",\"verdict\":2}],\"outcome\":\"dropped\"}"
    );
}

fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SLUICE_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/tcpdump-tests"));
    dir.is_dir().then_some(dir)
}

/// Every capture of the corpus through the whole demo node (one simulated node, its
/// conntrack carried from file to file): no packet the simulator cannot run.
#[test]
fn the_corpus_replays_through_a_whole_node() {
    let Some(dir) = corpus_dir() else {
        assert!(std::env::var_os("SLUICE_REQUIRE_KERNEL").is_none(), "the corpus is required");
        eprintln!("skipping: no corpus (SLUICE_CORPUS_DIR)");
        return;
    };
    let cfg = model::load_file(std::path::Path::new(DEMO)).expect("demo parses");
    let plan = sluice::node::plan(&cfg).expect("plans");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let (mut packets, mut errors, mut unreadable) = (0usize, Vec::new(), 0usize);
    let mut node = SimNode::new(&plan).expect("the simulator accepts");
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        match replay_node(&mut node, &cfg, &bytes, |p| {
            if let Outcome::Error(e) = &p.outcome {
                errors.push(format!("{}: packet {}: {e}", file.display(), p.index));
            }
        }) {
            Ok(summary) => packets += summary.packets,
            // Malformed captures are part of the corpus; the prefilter replay test holds
            // the reader to them.
            Err(_) => unreadable += 1,
        }
    }
    eprintln!("{} files, {packets} IP packets through the whole node, {unreadable} unreadable", files.len());
    assert!(packets > 1_000, "{packets} packets");
    assert!(
        errors.is_empty(),
        "{} packets failed:\n{}",
        errors.len(),
        errors[..errors.len().min(20)].join("\n")
    );
}

/// The kernel twin: the corpus through the loaded demo node with `BPF_PROG_TEST_RUN`, each
/// packet's path (every hop's verdict) and end the simulator's. Frames a test run does not
/// take (under an Ethernet header, over 3,500 bytes) are left out of the comparison.
#[test]
fn the_kernel_takes_the_simulators_path_for_every_corpus_packet() {
    if !sluice::sys::require_kernel("the_kernel_takes_the_simulators_path_for_every_corpus_packet") {
        return;
    }
    let Some(dir) = corpus_dir() else {
        assert!(std::env::var_os("SLUICE_REQUIRE_KERNEL").is_none(), "the corpus is required");
        eprintln!("skipping: no corpus (SLUICE_CORPUS_DIR)");
        return;
    };
    let cfg = model::load_file(std::path::Path::new(DEMO)).expect("demo parses");
    let plan = sluice::node::plan(&cfg).expect("plans");
    let mut sim = SimNode::new(&plan).expect("the simulator accepts");
    let loaded = sluice::node::load::load_plan(&sluice::sys::kernel(), &plan).expect("the kernel accepts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let (mut compared, mut left_out, mut differ) = (0usize, 0usize, Vec::new());
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        let mut by_sim = Vec::new();
        let mut by_kernel = Vec::new();
        let sizes: Vec<usize> = match sluice_verifier_sim::pcap::Capture::parse(&bytes) {
            Ok(cap) => cap.packets().map_while(Result::ok).map(|r| r.data.len()).collect(),
            Err(_) => continue,
        };
        let a = replay_node(&mut sim, &cfg, &bytes, |p| by_sim.push(p.clone()));
        let b = sluice::node::node_replay::replay_node_kernel(&loaded, &cfg, &bytes, |p| {
            by_kernel.push(p.clone())
        });
        if a.is_err() || b.is_err() {
            assert_eq!(a.is_err(), b.is_err(), "{}: one engine read the file, the other not", file.display());
            continue;
        }
        for (s, k) in by_sim.iter().zip(&by_kernel) {
            let len = sizes.get(s.index).copied().unwrap_or(0);
            if !(14..=3_500).contains(&len) {
                left_out += 1;
                continue;
            }
            compared += 1;
            if s != k {
                differ.push(format!("{}:\n  simulator {s}\n  kernel    {k}", file.display()));
            }
        }
    }
    eprintln!("{compared} packets compared, {left_out} left out (frame size)");
    assert!(compared > 1_000, "{compared} packets compared");
    assert!(
        differ.is_empty(),
        "{} packets differ:\n{}",
        differ.len(),
        differ[..differ.len().min(20)].join("\n")
    );
}
