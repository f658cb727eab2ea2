//! Capture replay (`sluice::node::replay`) on small captures written here, then on the
//! tcpdump test corpus: traces no one here wrote, many deliberately malformed.
//!
//! Corpus: `SLUICE_CORPUS_DIR`, else `../shared/corpus/tcpdump-tests` next to the crate; when
//! it is absent the corpus tests skip with a message (or fail under
//! `SLUICE_REQUIRE_KERNEL=1`, where everything must run). Every file is replayed in the
//! simulator over the deny set of `fixtures/prefilter-small.yaml`: the replay must agree
//! with the pcap reader on what the file holds, never fail a packet, and give every
//! Ethernet packet the reason the oracle (`golden::prefilter::oracle`) gives it. With the
//! kernel, every Ethernet packet `BPF_PROG_TEST_RUN` accepts (14..=3,500 bytes) must get the
//! simulator's verdict and reason there too.

use sluice::codegen::prefilter::NAME;
use sluice::golden::prefilter as gp;
use sluice::maps::prefilter::{DenySet, Reason};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::replay::{describe, replay, PacketVerdict, Replay, ReplayError};
use sluice::node::sim::SimNode;
use sluice::node::{self, Plan};
use sluice::packet::PacketBuilder;
use sluice::sys::{self, TestRunOpts};
use sluice_verifier_sim::pcap::{Capture, LinkType, PcapError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Shortest frame: an Ethernet header.
const ETH_HLEN: usize = gp::ETH;

/// Largest frame compared with the kernel: XDP test runs take one page minus headroom and
/// the shared-info tail.
const KERNEL_MAX_FRAME: usize = 3_500;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn small_node() -> (Plan, DenySet) {
    let cfg = sluice::model::load_file(&manifest_dir().join("fixtures/prefilter-small.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = node::plan(&cfg).unwrap_or_else(|e| panic!("planning prefilter-small: {e}"));
    (plan, gp::deny_set(&cfg))
}

fn sim_node(plan: &Plan) -> SimNode {
    SimNode::new(plan).unwrap_or_else(|e| panic!("{e}"))
}

// ---- captures written here ----

fn pcap(link_type: u32, frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, link_type] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [i as u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

fn ng_block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
    out.extend_from_slice(&total.to_le_bytes());
}

/// A pcapng section with one interface per link type and `(interface, frame)` packets.
fn pcapng(link_types: &[u16], packets: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    ng_block(&mut out, 0x0a0d_0d0a, &shb);
    for &lt in link_types {
        let mut idb = Vec::new();
        idb.extend_from_slice(&lt.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&65535u32.to_le_bytes());
        ng_block(&mut out, 1, &idb);
    }
    for &(iface, frame) in packets {
        let mut epb = Vec::new();
        for v in [iface, 0, 0, frame.len() as u32, frame.len() as u32] {
            epb.extend_from_slice(&v.to_le_bytes());
        }
        epb.extend_from_slice(frame);
        ng_block(&mut out, 6, &epb);
    }
    out
}

fn udp4(src: [u8; 4]) -> Vec<u8> {
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.into(), [192, 168, 0, 1].into())
        .udp(1, 2)
        .payload(b"x")
        .build()
}

fn udp6(src: &str) -> Vec<u8> {
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(src.parse().expect("literal"), "fd00::2".parse().expect("literal"))
        .udp(1, 2)
        .build()
}

#[test]
fn replay_runs_ethernet_and_counts_other_link_types() {
    let (plan, _) = small_node();
    let mut node = sim_node(&plan);
    let (deny, pass, short, sll) = (udp4([10, 0, 0, 1]), udp6("2600::1"), vec![0u8; 10], vec![0u8; 40]);
    let capture =
        pcapng(&[1, 113, 147], &[(0, &deny), (1, &sll), (0, &pass), (1, &sll), (2, &sll), (0, &short)]);
    let mut seen = Vec::new();
    let r = replay(&mut node, NAME, &capture, |v| seen.push(v.clone())).unwrap_or_else(|e| panic!("{e}"));
    let verdict = |index, len, reason: Reason| PacketVerdict {
        index,
        len,
        verdict: reason.verdict() as u32,
        reason: Some(reason.name()),
    };
    assert_eq!(
        seen,
        [
            verdict(0, deny.len(), Reason::DenyV4),
            verdict(2, pass.len(), Reason::PassV6),
            verdict(5, 10, Reason::TruncatedEthernet)
        ]
    );
    let names = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    };
    assert_eq!(
        r,
        Replay {
            packets: 3,
            by_reason: names(&[("deny_v4", 1), ("pass_v6", 1), ("truncated_ethernet", 1)]),
            by_verdict: BTreeMap::from([(1, 2), (2, 1)]),
            skipped_link_types: names(&[("LINUX_SLL (113)", 2), ("147", 1)]),
            errors: vec![],
        }
    );
    let text = describe(&r);
    assert!(text.contains("link type LINUX_SLL (113) is not read by sluice: 2 packets skipped"), "{text}");
    assert!(text.contains("link type 147 is not read by sluice: 1 packet skipped"), "{text}");
}

#[test]
fn replay_stops_at_damage_with_the_packets_so_far() {
    let (plan, _) = small_node();
    let mut node = sim_node(&plan);
    let frames = [udp4([8, 8, 8, 8]), udp4([10, 1, 1, 1]), udp4([9, 9, 9, 9])];
    let mut capture = pcap(1, &[&frames[0], &frames[1], &frames[2]]);
    capture.truncate(capture.len() - 5);
    let mut seen = 0;
    let err = replay(&mut node, NAME, &capture, |_| seen += 1).expect_err("the last record is cut short");
    let ReplayError::Read { partial, source } = &err else { panic!("expected a read error, got {err}") };
    assert!(matches!(source, PcapError::Truncated { index: 2, .. }), "{source}");
    assert_eq!((partial.packets, seen), (2, 2));
    assert_eq!(partial.by_reason.get("deny_v4"), Some(&1));
    assert!(err.to_string().contains("after 2 packets"), "{err}");
}

#[test]
fn replay_refuses_what_is_not_a_capture() {
    let (plan, _) = small_node();
    let mut node = sim_node(&plan);
    let err = replay(&mut node, NAME, b"GET / HTTP/1.1\r\n\r\n", |_| {}).expect_err("not a capture");
    assert!(matches!(err, ReplayError::Header(PcapError::BadMagic { .. })), "{err}");
    let err = replay(&mut node, NAME, &[], |_| {}).expect_err("empty");
    assert!(matches!(err, ReplayError::Header(PcapError::TooShort { .. })), "{err}");
    let err = replay(&mut node, "no_such_program", &pcap(1, &[]), |_| {}).expect_err("no program");
    assert!(matches!(err, ReplayError::NoProgram(_)), "{err}");
    let r =
        replay(&mut node, NAME, &pcap(113, &[&udp4([1, 2, 3, 4])]), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.packets, r.skipped_link_types.get("LINUX_SLL (113)")), (0, Some(&1)));
}

// ---- the corpus ----

/// Fewest corpus files a run may read: the tcpdump test corpus has over 800, so a
/// directory with fewer is the wrong one or a partial copy, not the corpus.
const MIN_CORPUS_FILES: usize = 400;

/// Fewest Ethernet packets a run must judge (simulator) or compare (kernel vs simulator);
/// the corpus gives 8,510 and 8,405 (December 2026), so under half of that is a broken run.
const MIN_CORPUS_PACKETS: usize = 4_000;

/// Whether a missing corpus is a failure: under the kernel gate, and in CI.
fn corpus_required() -> bool {
    std::env::var(sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1")
        || std::env::var("CI").is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0" && v.trim() != "false")
}

/// The corpus files, sorted; `None` (after saying why) when the corpus is not here, which
/// fails the test instead when it is required (`corpus_required`). An empty directory is
/// no corpus.
fn corpus(test: &str) -> Option<Vec<PathBuf>> {
    let dir = std::env::var_os("SLUICE_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../shared/corpus/tcpdump-tests"));
    let files = match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
            files.sort();
            files
        }
        Err(e) => {
            let line = format!("{test}: no capture corpus at {} ({e}); set SLUICE_CORPUS_DIR", dir.display());
            if corpus_required() {
                panic!("{line}");
            }
            eprintln!("skip: {line}");
            return None;
        }
    };
    if files.is_empty() {
        let line =
            format!("{test}: the capture corpus at {} has no files; set SLUICE_CORPUS_DIR", dir.display());
        if corpus_required() {
            panic!("{line}");
        }
        eprintln!("skip: {line}");
        return None;
    }
    assert!(
        files.len() >= MIN_CORPUS_FILES,
        "{test}: the capture corpus at {} has {} files, fewer than the {MIN_CORPUS_FILES} of the tcpdump \
         test corpus; a partial copy?",
        dir.display(),
        files.len()
    );
    Some(files)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the pcap reader alone makes of a file: the Ethernet records, the records of other
/// link types, and where it stopped.
struct ReaderView<'a> {
    ethernet: Vec<(usize, &'a [u8])>,
    other: usize,
    error: Option<PcapError>,
    header_ok: bool,
}

fn reader_view(bytes: &[u8]) -> ReaderView<'_> {
    let mut v = ReaderView { ethernet: Vec::new(), other: 0, error: None, header_ok: false };
    let cap = match Capture::parse(bytes) {
        Ok(c) => c,
        Err(e) => {
            v.error = Some(e);
            return v;
        }
    };
    v.header_ok = true;
    for rec in cap.packets() {
        match rec {
            Ok(r) if r.link_type == LinkType::ETHERNET => v.ethernet.push((r.index, r.data)),
            Ok(_) => v.other += 1,
            Err(e) => v.error = Some(e),
        }
    }
    v
}

#[derive(Debug, Default)]
struct Tally {
    files: usize,
    not_captures: usize,
    damaged: usize,
    packets_run: usize,
    skipped: BTreeMap<String, usize>,
    by_reason: BTreeMap<String, usize>,
    /// Ethernet frames under 14 bytes the simulator would not run.
    short_refused: Vec<String>,
}

impl Tally {
    /// One line for all short frames the simulator refused, if any.
    fn short_refusals(&self) -> Option<String> {
        let n = self.short_refused.len();
        (n > 0).then(|| {
            format!(
                "the simulator refused {n} Ethernet frames shorter than {ETH_HLEN} bytes (e.g. {}); only \
                 BPF_PROG_TEST_RUN refuses them, the prefilter counts them as truncated_ethernet",
                self.short_refused[..n.min(3)].join(", ")
            )
        })
    }
}

/// Replay one file in the simulator and hold it to the reader and the oracle; returns the
/// verdicts by record index.
fn replay_checked(
    node: &mut SimNode,
    set: &DenySet,
    path: &Path,
    bytes: &[u8],
    tally: &mut Tally,
    failures: &mut Vec<String>,
) -> BTreeMap<usize, PacketVerdict> {
    let file =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let view = reader_view(bytes);
    let mut verdicts = BTreeMap::new();
    let result = replay(node, NAME, bytes, |v| {
        verdicts.insert(v.index, v.clone());
    });
    tally.files += 1;
    let run: Option<&Replay> = match (&result, &view.error) {
        (Ok(r), None) => Some(r),
        (Err(ReplayError::Header(e)), Some(want)) if !view.header_ok && e == want => {
            tally.not_captures += 1;
            None
        }
        (Err(ReplayError::Read { partial, source }), Some(want)) if view.header_ok && source == want => {
            tally.damaged += 1;
            Some(partial.as_ref())
        }
        (got, want) => {
            failures.push(format!(
                "{file}: replay gave {:?}, the reader stopped at {want:?}",
                got.as_ref().err()
            ));
            None
        }
    };
    if let Some(r) = run {
        let tried = r.packets + r.errors.len();
        if tried != view.ethernet.len() || r.skipped_link_types.values().sum::<usize>() != view.other {
            failures.push(format!(
                "{file}: replay ran {} (and failed {}) and skipped {:?}; the reader has {} Ethernet and {} \
                 other records",
                r.packets,
                r.errors.len(),
                r.skipped_link_types,
                view.ethernet.len(),
                view.other
            ));
        }
        // Frames under an Ethernet header are tallied, not listed: one cause, many packets.
        for &(index, data) in &view.ethernet {
            if verdicts.contains_key(&index) {
                continue;
            }
            if data.len() < ETH_HLEN {
                tally.short_refused.push(format!("{file} packet {index} ({} bytes)", data.len()));
            } else {
                let prefix = format!("packet {index} ");
                let why =
                    r.errors.iter().find(|e| e.starts_with(&prefix)).map_or("no verdict", String::as_str);
                failures.push(format!("{file}: simulator failed a packet: {why}"));
            }
        }
        tally.packets_run += r.packets;
        for (k, n) in &r.skipped_link_types {
            *tally.skipped.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &r.by_reason {
            *tally.by_reason.entry(k.clone()).or_default() += n;
        }
    }
    for &(index, data) in &view.ethernet {
        let Some(v) = verdicts.get(&index) else { continue };
        let want = gp::oracle(set, data);
        if v.reason != Some(want.name()) || v.verdict != want.verdict() as u32 {
            failures.push(format!(
                "{file} packet {index} ({} bytes): simulator {v}; the oracle says {} ({})\n  {:02x?}",
                data.len(),
                want.name(),
                want.verdict(),
                &data[..data.len().min(64)]
            ));
        }
    }
    verdicts
}

fn show_failures(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        let shown = failures.len().min(40);
        panic!("{what}: {} problems (first {shown}):\n{}", failures.len(), failures[..shown].join("\n"));
    }
}

#[test]
fn corpus_replays_in_simulator() {
    let Some(files) = corpus("corpus_replays_in_simulator") else { return };
    let (plan, set) = small_node();
    let mut node = sim_node(&plan);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for path in &files {
        let bytes = read(path);
        replay_checked(&mut node, &set, path, &bytes, &mut tally, &mut failures);
    }
    eprintln!(
        "corpus: {} files ({} not captures, {} damaged), {} Ethernet packets run, skipped by link type {:?}, reasons {:?}",
        tally.files, tally.not_captures, tally.damaged, tally.packets_run, tally.skipped, tally.by_reason
    );
    failures.extend(tally.short_refusals());
    show_failures("corpus replay in the simulator", &failures);
    assert!(
        tally.packets_run >= MIN_CORPUS_PACKETS,
        "only {} Ethernet packets judged, fewer than {MIN_CORPUS_PACKETS}",
        tally.packets_run
    );
}

/// The replay as it ran before it was made fast (issue 16, finding 8), kept as the
/// reference: every Ethernet packet through `SimNode::run` (a fresh machine and context each
/// time, the program found by name), its reason read off `pf_stats` before and after with
/// `SimNode::counter`. Packets the simulator refuses are left out, as the replay leaves them.
fn reference_replay(node: &mut SimNode, bytes: &[u8]) -> Vec<PacketVerdict> {
    let Ok(cap) = Capture::parse(bytes) else { return Vec::new() };
    let counters = |node: &SimNode| -> Vec<u64> {
        (0..Reason::ALL.len() as u32).map(|i| node.counter("pf_stats", i)).collect()
    };
    let mut before = counters(node);
    let mut verdicts = Vec::new();
    for record in cap.packets() {
        let Ok(record) = record else { break };
        if record.link_type != LinkType::ETHERNET {
            continue;
        }
        let Ok(out) = node.run(NAME, record.data) else { continue };
        let after = counters(node);
        let moved = after.iter().zip(&before).position(|(a, b)| a != b);
        before = after;
        verdicts.push(PacketVerdict {
            index: record.index,
            len: record.data.len(),
            verdict: out.retval as u32,
            reason: moved.map(|i| Reason::ALL[i].name()),
        });
    }
    verdicts
}

/// The fast replay gives every corpus packet the verdict and reason the reference replay
/// gives it, and leaves the same counters.
#[test]
fn corpus_replay_equals_packet_by_packet_runs() {
    let Some(files) = corpus("corpus_replay_equals_packet_by_packet_runs") else { return };
    let (plan, _) = small_node();
    let (mut fast, mut reference) = (sim_node(&plan), sim_node(&plan));
    let mut failures = Vec::new();
    let mut by_verdict: BTreeMap<(u32, Option<&str>), usize> = BTreeMap::new();
    for path in &files {
        let file =
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let bytes = read(path);
        let mut got = Vec::new();
        let _ = replay(&mut fast, NAME, &bytes, |v| got.push(v.clone()));
        let want = reference_replay(&mut reference, &bytes);
        if got != want {
            let at = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
            failures.push(format!(
                "{file}: {} packets replayed, {} in the reference; first difference at {at}: replay {:?}, reference {:?}",
                got.len(),
                want.len(),
                got.get(at).map(ToString::to_string),
                want.get(at).map(ToString::to_string)
            ));
        }
        for v in &got {
            *by_verdict.entry((v.verdict, v.reason)).or_default() += 1;
        }
    }
    for r in Reason::ALL {
        let i = r as u32;
        let (f, w) = (fast.counter("pf_stats", i), reference.counter("pf_stats", i));
        if f != w {
            failures
                .push(format!("pf_stats[{}] ({i}): {f} after the replay, {w} after the reference", r.name()));
        }
    }
    eprintln!("corpus: {} packets by (verdict, reason): {by_verdict:?}", by_verdict.values().sum::<usize>());
    show_failures("replay vs packet-by-packet runs", &failures);
}

/// The prefilter in the kernel, with the last reading of its reason counters.
struct KernelPrefilter {
    loaded: Loaded,
    counters: Vec<u64>,
}

impl KernelPrefilter {
    fn new(plan: &Plan) -> KernelPrefilter {
        let loaded =
            load_plan(&sys::kernel(), plan).unwrap_or_else(|e| panic!("loading prefilter-small: {e}"));
        let mut k = KernelPrefilter { loaded, counters: Vec::new() };
        k.counters = k.read_counters();
        k
    }

    fn read_counters(&self) -> Vec<u64> {
        let map = &self.loaded.maps["pf_stats"];
        (0..map.max_entries())
            .map(|i| {
                let per_cpu = map.lookup_percpu(&i.to_le_bytes()).unwrap_or_else(|e| panic!("pf_stats: {e}"));
                per_cpu
                    .unwrap_or_default()
                    .iter()
                    .map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
                    .sum()
            })
            .collect()
    }

    /// Verdict, output packet and the reason whose counter moved.
    fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>, Option<&'static str>), sys::SysError> {
        let r = self.loaded.programs[NAME].test_run(&TestRunOpts::packet(frame))?;
        let after = self.read_counters();
        let moved = after.iter().zip(&self.counters).position(|(a, b)| a != b);
        self.counters = after;
        Ok((r.retval, r.data_out, moved.and_then(|i| Reason::ALL.get(i)).map(|r| r.name())))
    }
}

#[test]
fn corpus_kernel_matches_simulator() {
    if !sys::require_kernel("corpus_kernel_matches_simulator") {
        return;
    }
    let Some(files) = corpus("corpus_kernel_matches_simulator") else { return };
    let (plan, set) = small_node();
    let mut node = sim_node(&plan);
    let mut kernel = KernelPrefilter::new(&plan);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let (mut compared, mut too_short, mut too_long) = (0usize, 0usize, 0usize);
    for path in &files {
        let bytes = read(path);
        let sim = replay_checked(&mut node, &set, path, &bytes, &mut tally, &mut failures);
        let file = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for (index, data) in reader_view(&bytes).ethernet {
            if data.len() < sluice::golden::KERNEL_MIN_FRAME {
                too_short += 1;
                continue;
            }
            if data.len() > KERNEL_MAX_FRAME {
                too_long += 1;
                continue;
            }
            let Some(s) = sim.get(&index) else { continue };
            compared += 1;
            match kernel.run(data) {
                Ok((verdict, out, reason)) => {
                    if verdict != s.verdict || reason != s.reason || out != data {
                        failures.push(format!(
                            "{file} packet {index} ({} bytes): kernel verdict {verdict} reason {reason:?}{}; simulator {s}\n  {:02x?}",
                            data.len(),
                            if out == data { "" } else { " (packet changed)" },
                            &data[..data.len().min(64)]
                        ));
                    }
                }
                Err(e) => failures
                    .push(format!("{file} packet {index} ({} bytes): BPF_PROG_TEST_RUN: {e}", data.len())),
            }
        }
    }
    eprintln!(
        "corpus vs kernel: {} files, {compared} Ethernet packets compared, skipped by size: {too_short} under {} bytes, \
         {too_long} over {KERNEL_MAX_FRAME}; skipped by link type {:?}",
        tally.files,
        sluice::golden::KERNEL_MIN_FRAME,
        tally.skipped
    );
    failures.extend(tally.short_refusals());
    show_failures("corpus, kernel vs simulator", &failures);
    assert!(
        compared >= MIN_CORPUS_PACKETS,
        "only {compared} Ethernet packets compared with the kernel, fewer than {MIN_CORPUS_PACKETS}"
    );
}
