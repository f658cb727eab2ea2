//! Capture replay: every Ethernet packet of a pcap or pcapng file through one program of a
//! simulated node (`sluice sim NODE --pcap FILE`).
//!
//! Contract:
//! - [`replay`] never panics. Packets of link type Ethernet run through the program in file
//!   order; each gives a [`PacketVerdict`] (handed to the caller's callback as it happens)
//!   whose reason is the element of the program's reason counter map (`pf_stats` for the
//!   prefilter) that the packet moved.
//! - Packets of other link types are not run: they are counted per link type and reported
//!   once each by [`describe`] ("link type LINUX_SLL (113) is not read by sluice: 12 packets
//!   skipped").
//! - A packet the simulator cannot run is an entry in [`Replay::errors`]; the replay goes on.
//! - A capture that cannot be read stops the replay: [`ReplayError::Read`] carries the
//!   summary of the packets read before the problem; [`ReplayError::Header`] means the file
//!   is not a capture at all.
//! - Each packet runs exactly as [`SimNode::run`] would run it, but the program is decoded
//!   once and its machine, context and counter readings are reused: once warm, a packet
//!   allocates nothing (packets that fail, and the first packet of each new verdict,
//!   reason or skipped link type, aside).

use super::sim::{counter_of, counter_value, SimNode};
use crate::maps::names;
use crate::maps::prefilter::Reason;
use sluice_verifier_sim::pcap::{Capture, LinkType, PcapError};
use sluice_verifier_sim::spec::MapKind;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What one packet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketVerdict {
    /// Position of the packet among the capture's records (0-based).
    pub index: usize,
    /// Captured length in bytes (what the program saw).
    pub len: usize,
    /// The program's return value.
    pub verdict: u32,
    /// The reason counted, by name; `None` when the program has no reason counters or none
    /// moved.
    pub reason: Option<&'static str>,
}

impl fmt::Display for PacketVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packet {} ({} bytes): verdict {}", self.index, self.len, self.verdict)?;
        if let Some(name) = verdict_name(self.verdict) {
            write!(f, " ({name})")?;
        }
        if let Some(r) = self.reason {
            write!(f, ", reason {r}")?;
        }
        Ok(())
    }
}

/// The summary of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Packets run through the program.
    pub packets: usize,
    /// Packets per reason name.
    pub by_reason: BTreeMap<String, usize>,
    /// Packets per return value.
    pub by_verdict: BTreeMap<u32, usize>,
    /// Packets not run, per link type (`"LINUX_SLL (113)"`, or the bare number when sluice
    /// has no name for it).
    pub skipped_link_types: BTreeMap<String, usize>,
    /// Packets the simulator could not run, one line each.
    pub errors: Vec<String>,
}

/// Why a replay stopped.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// Not a pcap or pcapng file.
    #[error("not a readable capture: {0}")]
    Header(#[source] PcapError),
    /// The capture is damaged: `partial` holds what the packets before the damage did.
    #[error("capture read stopped after {} packets run: {source}", .partial.packets)]
    Read {
        partial: Box<Replay>,
        #[source]
        source: PcapError,
    },
    /// The program is not in the node.
    #[error("no program named `{0}` in the node")]
    NoProgram(String),
}

impl ReplayError {
    /// The packets replayed before the error (empty when the capture could not be opened).
    pub fn partial(&self) -> Option<&Replay> {
        match self {
            ReplayError::Read { partial, .. } => Some(partial),
            _ => None,
        }
    }
}

/// The key a skipped link type is counted under.
fn link_type_key(lt: LinkType) -> String {
    match lt.name() {
        Some(name) => format!("{name} ({})", lt.0),
        None => lt.0.to_string(),
    }
}

/// XDP verdict names (the only programs replayed so far are XDP).
fn verdict_name(v: u32) -> Option<&'static str> {
    Some(match v {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => return None,
    })
}

/// The name of a reason counter's element.
type ReasonName = fn(u32) -> Option<&'static str>;

/// The reason counter map of a program and the name of each of its elements.
fn reason_counters(program: &str) -> Option<(&'static str, ReasonName)> {
    fn prefilter_reason(i: u32) -> Option<&'static str> {
        Reason::ALL.get(i as usize).map(|r| r.name())
    }
    (program == crate::codegen::prefilter::NAME).then_some((names::PF_STATS, prefilter_reason as ReasonName))
}

/// Current values of every element of a counter map (as [`SimNode::counter`] reads each),
/// into `out` (whose room is reused).
fn snapshot(node: &SimNode, map: &str, out: &mut Vec<u64>) {
    out.clear();
    let Some(m) = node.maps.get(map) else { return };
    match m.array_elements().filter(|_| m.kind() == MapKind::PerCpuArray) {
        // One pass over a per-CPU array (the counter maps), not a search per element.
        Some(elements) => {
            let vsize = m.spec().value_size as usize;
            out.extend(elements.map(|copies| copies.chunks(vsize.max(1)).map(counter_value).sum::<u64>()));
        }
        None => out.extend((0..m.spec().max_entries).map(|i| counter_of(m, i))),
    }
}

/// A [`Replay`] as it is counted: keys that need no allocation per packet.
#[derive(Default)]
struct Tally {
    packets: usize,
    by_reason: BTreeMap<&'static str, usize>,
    by_verdict: BTreeMap<u32, usize>,
    skipped_link_types: BTreeMap<LinkType, usize>,
    errors: Vec<String>,
}

impl Tally {
    fn summary(self) -> Replay {
        Replay {
            packets: self.packets,
            by_reason: self.by_reason.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
            by_verdict: self.by_verdict,
            skipped_link_types: self
                .skipped_link_types
                .into_iter()
                .map(|(lt, n)| (link_type_key(lt), n))
                .collect(),
            errors: self.errors,
        }
    }
}

/// Replay `capture` through `program` of `node`, calling `each` after every packet run.
pub fn replay(
    node: &mut SimNode,
    program: &str,
    capture: &[u8],
    mut each: impl FnMut(&PacketVerdict),
) -> Result<Replay, ReplayError> {
    let Ok(mut runner) = node.packet_runner(program) else {
        return Err(ReplayError::NoProgram(program.to_string()));
    };
    let cap = Capture::parse(capture).map_err(ReplayError::Header)?;
    let counters = reason_counters(program);
    let (mut before, mut after) = (Vec::new(), Vec::new());
    if let Some((map, _)) = counters {
        snapshot(node, map, &mut before);
    }
    let mut t = Tally::default();
    for record in cap.packets() {
        let record = match record {
            Ok(record) => record,
            Err(source) => return Err(ReplayError::Read { partial: Box::new(t.summary()), source }),
        };
        if record.link_type != LinkType::ETHERNET {
            *t.skipped_link_types.entry(record.link_type).or_default() += 1;
            continue;
        }
        let out = match runner.run(record.data, &mut node.maps) {
            Ok(out) => out,
            Err(e) => {
                t.errors.push(format!("packet {} ({} bytes): {e}", record.index, record.data.len()));
                continue;
            }
        };
        let mut reason = None;
        if let Some((map, name)) = counters {
            snapshot(node, map, &mut after);
            let moved = after.iter().zip(&before).position(|(a, b)| a != b);
            reason = moved.and_then(|i| name(i as u32));
            std::mem::swap(&mut before, &mut after);
        }
        // The kernel hands back the low 32 bits of r0.
        let v =
            PacketVerdict { index: record.index, len: record.data.len(), verdict: out.retval as u32, reason };
        t.packets += 1;
        *t.by_verdict.entry(v.verdict).or_default() += 1;
        if let Some(reason) = v.reason {
            *t.by_reason.entry(reason).or_default() += 1;
        }
        each(&v);
    }
    Ok(t.summary())
}

/// Progress of a long replay for people: [`Progress::packet`] after every packet gives a
/// line about once a second (the clock is read once every [`Progress::CHECK_EVERY`]
/// packets, so counting costs next to nothing).
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    next: Instant,
    packets: u64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// Packets between two readings of the clock.
    pub const CHECK_EVERY: u64 = 4096;
    /// Time between two lines.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// Start counting now.
    pub fn new() -> Progress {
        let start = Instant::now();
        Progress { start, next: start + Self::INTERVAL, packets: 0 }
    }

    /// Count one packet; a line when the interval has passed since the last one.
    pub fn packet(&mut self) -> Option<String> {
        self.packets += 1;
        if !self.packets.is_multiple_of(Self::CHECK_EVERY) {
            return None;
        }
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + Self::INTERVAL;
        Some(progress_line(self.packets, now - self.start))
    }

    /// The closing line: packets, time taken and rate.
    pub fn finish(&self) -> String {
        progress_line(self.packets, self.start.elapsed())
    }
}

/// "1,048,576 packets in 2.1 s (499,322 packets/s)".
fn progress_line(packets: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { (packets as f64 / secs) as u64 } else { 0 };
    format!("{} packets in {secs:.1} s ({} packets/s)", grouped(packets), grouped(rate))
}

/// `n` with thousands separated by commas.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A summary for people: packets run, verdicts, reasons, skipped link types, errors.
pub fn describe(r: &Replay) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} packets run", r.packets);
    for (v, n) in &r.by_verdict {
        match verdict_name(*v) {
            Some(name) => {
                let _ = writeln!(out, "  verdict {name} ({v}): {n}");
            }
            None => {
                let _ = writeln!(out, "  verdict {v}: {n}");
            }
        }
    }
    for (reason, n) in &r.by_reason {
        let _ = writeln!(out, "  reason {reason}: {n}");
    }
    for (lt, n) in &r.skipped_link_types {
        let s = if *n == 1 { "" } else { "s" };
        let _ = writeln!(out, "link type {lt} is not read by sluice: {n} packet{s} skipped");
    }
    if !r.errors.is_empty() {
        let _ = writeln!(out, "{} packets could not be run:", r.errors.len());
        for e in &r.errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_reports_each_skipped_link_type_once() {
        let r = Replay {
            packets: 3,
            by_reason: BTreeMap::from([("deny_v4".to_string(), 1), ("pass_v4".to_string(), 2)]),
            by_verdict: BTreeMap::from([(1, 1), (2, 2)]),
            skipped_link_types: BTreeMap::from([
                (link_type_key(LinkType::LINUX_SLL), 12),
                (link_type_key(LinkType(147)), 1),
            ]),
            errors: vec![],
        };
        let text = describe(&r);
        assert!(
            text.contains("link type LINUX_SLL (113) is not read by sluice: 12 packets skipped"),
            "{text}"
        );
        assert!(text.contains("link type 147 is not read by sluice: 1 packet skipped"), "{text}");
        assert!(text.contains("verdict XDP_DROP (1): 1"), "{text}");
        assert_eq!(text.matches("LINUX_SLL").count(), 1, "{text}");
    }

    #[test]
    fn progress_lines_give_packets_time_and_rate() {
        let cases = [
            (0, 1_000, "0 packets in 1.0 s (0 packets/s)"),
            (999, 1_000, "999 packets in 1.0 s (999 packets/s)"),
            (1_048_576, 2_000, "1,048,576 packets in 2.0 s (524,288 packets/s)"),
            (5, 0, "5 packets in 0.0 s (0 packets/s)"),
        ];
        for (packets, ms, want) in cases {
            let got = progress_line(packets, Duration::from_millis(ms));
            assert_eq!(got, want, "{packets} packets in {ms} ms");
        }
    }

    #[test]
    fn progress_reads_the_clock_only_every_check_interval() {
        let mut p = Progress::new();
        // Pretend the interval has long passed: only a multiple of CHECK_EVERY gives a line.
        p.next = p.start;
        for _ in 1..Progress::CHECK_EVERY {
            assert_eq!(p.packet(), None);
        }
        let line = p.packet().expect("the interval has passed at a check");
        assert!(line.starts_with("4,096 packets in "), "{line}");
        // The next line waits for the interval again.
        for _ in 0..Progress::CHECK_EVERY {
            assert_eq!(p.packet(), None);
        }
    }

    #[test]
    fn verdict_lines_name_the_reason() {
        let v = PacketVerdict { index: 4, len: 60, verdict: 1, reason: Some("deny_v4") };
        assert_eq!(v.to_string(), "packet 4 (60 bytes): verdict 1 (XDP_DROP), reason deny_v4");
    }
}
