//! Whole-node capture replay: each packet of a capture through every program the node runs
//! for it, in the simulator, with the node's maps (conntrack included) carried from packet
//! to packet (`sluice sim NODE --pcap FILE --node`).
//!
//! Contract:
//! - [`replay_node`] never panics. Each Ethernet packet (IPv4 or IPv6, VLAN tags skipped) is
//!   placed by its addresses: a packet whose source is an endpoint's address leaves that
//!   endpoint (its `from_ep_N` program, tc on the endpoint's veth); any other arrives from
//!   outside (the prefilter, XDP on the node's device). A packet that passes goes on to the
//!   endpoint its destination address then names (after the first program's rewrites: a
//!   service address balanced to a backend names the backend), through that endpoint's
//!   `to_ep_M`; else it leaves the node (`forwarded`). A drop anywhere ends the path.
//! - Each packet gives a [`NodePacket`]: the programs it ran with their verdicts, and where it
//!   ended. Packets that are not IP, or of other link types, are counted, not run.
//! - [`replay_node_kernel`] is the twin: the same paths through the loaded programs with
//!   `BPF_PROG_TEST_RUN`; a test holds the two to the same path and end per packet.
//! - What this does not model yet: the kernel's routing between hops (the packet is handed
//!   on as the program left it), the services' socket layer and the overlay.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use sluice_verifier_sim::pcap::{Capture, LinkType};

use super::replay::ReplayError;
use super::sim::SimNode;
use crate::model::NodeConfig;
use crate::packet::{ethernet, ipv4, ipv6};

/// XDP_DROP, XDP_PASS; TC_ACT_OK, TC_ACT_SHOT (the verdicts a path hop can end with).
const XDP_DROP: u32 = crate::uapi::XDP_DROP as u32;
const TC_ACT_SHOT: u32 = crate::uapi::TC_ACT_SHOT as u32;

/// One program a packet ran through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub program: String,
    pub verdict: u32,
}

/// Where a packet's path ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped by the last hop.
    Dropped,
    /// Handed to this endpoint.
    Delivered(String),
    /// Left the node (to its stack or another device).
    Forwarded,
    /// The simulator could not run a hop.
    Error(String),
}

/// One packet's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePacket {
    pub index: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub path: Vec<Hop>,
    pub outcome: Outcome,
}

impl fmt::Display for NodePacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packet {} {} -> {}:", self.index, self.src, self.dst)?;
        for hop in &self.path {
            write!(f, " {}={}", hop.program, hop.verdict)?;
        }
        match &self.outcome {
            Outcome::Dropped => write!(f, " => dropped"),
            Outcome::Delivered(e) => write!(f, " => delivered to {e}"),
            Outcome::Forwarded => write!(f, " => forwarded"),
            Outcome::Error(e) => write!(f, " => error: {e}"),
        }
    }
}

impl NodePacket {
    /// One JSON object, fields in a fixed order.
    pub fn to_json(&self) -> String {
        let hops: Vec<String> = self
            .path
            .iter()
            .map(|h| format!("{{\"program\":\"{}\",\"verdict\":{}}}", h.program, h.verdict))
            .collect();
        let (outcome, detail) = match &self.outcome {
            Outcome::Dropped => ("dropped", String::new()),
            Outcome::Delivered(e) => ("delivered", format!(",\"endpoint\":\"{e}\"")),
            Outcome::Forwarded => ("forwarded", String::new()),
            Outcome::Error(e) => ("error", format!(",\"error\":{:?}", e)),
        };
        format!(
            "{{\"index\":{},\"src\":\"{}\",\"dst\":\"{}\",\"path\":[{}],\"outcome\":\"{outcome}\"{detail}}}",
            self.index,
            self.src,
            self.dst,
            hops.join(",")
        )
    }
}

/// The summary of a whole-node replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReplay {
    pub packets: usize,
    pub dropped: usize,
    pub delivered: usize,
    pub forwarded: usize,
    pub errors: usize,
    /// Ethernet packets that are not IPv4 or IPv6.
    pub not_ip: usize,
    /// Packets of other link types, by link type.
    pub other_link_types: BTreeMap<LinkType, usize>,
}

impl fmt::Display for NodeReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets: {} delivered, {} forwarded, {} dropped, {} errors; {} not IP",
            self.packets, self.delivered, self.forwarded, self.dropped, self.errors, self.not_ip
        )?;
        for (link, n) in &self.other_link_types {
            write!(f, "; {n} of link type {link:?} skipped")?;
        }
        Ok(())
    }
}

/// The source and destination addresses of an Ethernet frame, past any VLAN tags.
fn addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let mut at = ethernet::field::ETHERTYPE.start;
    let mut ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    let mut tags = 0;
    while (ethertype == ethernet::ethertype::VLAN || ethertype == ethernet::ethertype::QINQ)
        && tags < ethernet::MAX_VLAN_TAGS
    {
        at += ethernet::vlan_field::TAG_LEN;
        ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        tags += 1;
    }
    let l3 = frame.get(at + 2..)?;
    match ethertype {
        ethernet::ethertype::IPV4 => {
            let src: [u8; 4] = l3.get(ipv4::field::SRC_ADDR)?.try_into().ok()?;
            let dst: [u8; 4] = l3.get(ipv4::field::DST_ADDR)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        ethernet::ethertype::IPV6 => {
            let src: [u8; 16] = l3.get(ipv6::field::SRC_ADDR)?.try_into().ok()?;
            let dst: [u8; 16] = l3.get(ipv6::field::DST_ADDR)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

/// Replays `capture` through the whole node `cfg` (simulated by `node`), calling `each` for
/// every IP packet.
pub fn replay_node(
    node: &mut SimNode,
    cfg: &NodeConfig,
    capture: &[u8],
    each: impl FnMut(&NodePacket),
) -> Result<NodeReplay, ReplayError> {
    let hop = |program: &str, frame: &[u8]| {
        node.run(program, frame).map(|out| (out.retval as u32, out.packet)).map_err(|e| e.to_string())
    };
    replay_node_with(cfg, capture, hop, each)
}

/// The kernel twin of [`replay_node`]: each hop through the loaded program with
/// `BPF_PROG_TEST_RUN` (the kernel's maps, conntrack included, carried across the capture).
/// A frame the kernel will not test-run (shorter than an Ethernet header, or past what a
/// test run takes) ends its path in an [`Outcome::Error`].
pub fn replay_node_kernel(
    loaded: &super::load::Loaded,
    cfg: &NodeConfig,
    capture: &[u8],
    each: impl FnMut(&NodePacket),
) -> Result<NodeReplay, ReplayError> {
    let hop = |program: &str, frame: &[u8]| {
        let prog = loaded.programs.get(program).ok_or_else(|| format!("no program {program} loaded"))?;
        let mut opts = crate::sys::TestRunOpts::packet(frame);
        opts.data_out_cap = frame.len() + 256;
        prog.test_run(&opts).map(|r| (r.retval, r.data_out)).map_err(|e| e.to_string())
    };
    replay_node_with(cfg, capture, hop, each)
}

/// [`replay_node`] over any engine: `hop` runs one program on one frame and gives its
/// verdict and the frame as the program left it.
pub fn replay_node_with(
    cfg: &NodeConfig,
    capture: &[u8],
    mut run_hop: impl FnMut(&str, &[u8]) -> Result<(u32, Vec<u8>), String>,
    mut each: impl FnMut(&NodePacket),
) -> Result<NodeReplay, ReplayError> {
    let numbers: Vec<(u16, String, Vec<IpAddr>)> = super::endpoint_numbers(cfg)
        .into_iter()
        .map(|(n, e)| (n, e.name.clone(), e.addresses().collect()))
        .collect();
    let endpoint_of = |addr: IpAddr| numbers.iter().find(|(_, _, addrs)| addrs.contains(&addr));
    let cap = Capture::parse(capture).map_err(ReplayError::Header)?;
    let mut summary = NodeReplay::default();
    for record in cap.packets() {
        let record = match record {
            Ok(record) => record,
            Err(source) => {
                return Err(ReplayError::Read { partial: Box::default(), source });
            }
        };
        if record.link_type != LinkType::ETHERNET {
            *summary.other_link_types.entry(record.link_type).or_default() += 1;
            continue;
        }
        let Some((src, dst)) = addresses(record.data) else {
            summary.not_ip += 1;
            continue;
        };
        let mut packet =
            NodePacket { index: record.index, src, dst, path: Vec::new(), outcome: Outcome::Forwarded };
        let (first, drop_verdict) = match endpoint_of(src) {
            Some((n, _, _)) => (format!("from_ep_{n}"), TC_ACT_SHOT),
            None => (crate::codegen::prefilter::NAME.to_owned(), XDP_DROP),
        };
        let mut frame = record.data.to_vec();
        let mut hop = |program: &str, frame: &mut Vec<u8>, packet: &mut NodePacket| -> Option<u32> {
            match run_hop(program, frame) {
                Ok((verdict, out)) => {
                    packet.path.push(Hop { program: program.to_owned(), verdict });
                    *frame = out;
                    Some(verdict)
                }
                Err(e) => {
                    packet.outcome = Outcome::Error(e);
                    None
                }
            }
        };
        match hop(&first, &mut frame, &mut packet) {
            None => {}
            Some(v) if v == drop_verdict => packet.outcome = Outcome::Dropped,
            Some(_) => {
                // Where the packet goes now: its destination as the first program left it.
                let to = addresses(&frame).map_or(dst, |(_, d)| d);
                if let Some((m, name, _)) = endpoint_of(to) {
                    let program = format!("to_ep_{m}");
                    match hop(&program, &mut frame, &mut packet) {
                        None => {}
                        Some(TC_ACT_SHOT) => packet.outcome = Outcome::Dropped,
                        Some(_) => packet.outcome = Outcome::Delivered(name.clone()),
                    }
                }
            }
        }
        summary.packets += 1;
        match packet.outcome {
            Outcome::Dropped => summary.dropped += 1,
            Outcome::Delivered(_) => summary.delivered += 1,
            Outcome::Forwarded => summary.forwarded += 1,
            Outcome::Error(_) => summary.errors += 1,
        }
        each(&packet);
    }
    Ok(summary)
}
