//! `sluice bench`, endpoint policy: our `to_ep_1` against the clang-built `tc_policy` anchor,
//! in the same run.
//!
//! Contract:
//! - The contents are the anchor's: `anchors.gen_policy()` (ipcache: 10,000 pod /32s with
//!   identity 1000 + i % 1000 and 64 world CIDRs; 2,602 policy keys) and the four `tc_policy`
//!   cases of `anchors.cases()`, printed by `python3` and read by [`parse_content`]. The
//!   anchor's maps get them the way the anchors' `fill_policy` writes them; ours get them as
//!   one endpoint's [`PolicyRule`]s ([`policy_plan`]: endpoint [`EP_INDEX`] at [`EP_ADDR`],
//!   both directions enforced, every anchor key one rule).
//! - Before anything is timed: our probe frames ([`policy_probes`]) must be the anchor's bytes
//!   with the anchor's expected verdicts; for every probe our ipcache identity and
//!   [`datapath_verdict`] must agree with a Rust model of `tc_policy.c` on the same contents
//!   and with the expected verdict ([`VerdictCheck`]); then every program must give the
//!   expected verdict in the kernel with repeat 1, the packet unchanged. A failure is an error.
//! - Three variants of ours ([`Variant`]), each row timed against the anchor on the same
//!   probe, interleaved per round (who goes first alternates), plus a tc floor
//!   (`r0 = 0; exit`) per round. After every run of ours the `ep_stats` counter of the
//!   variant's reason must have grown by exactly `repeat`: every iteration took the path the
//!   row names (e.g. a conntrack hit), else [`BenchError::Reason`].
//! - Ours is the program a node runs: built with the service load balancer's hooks
//!   (`Options::services`) over the node's maps including the load-balancing ones, with no
//!   service defined, so every probe passes the hooks' inlined hint checks.
//! - Ours is loaded with `load_plan`'s steps (create every map, apply the writes, load), each
//!   timed; `IpcacheV4::build`, `PolicyPlan::writes`, `endpoint_objects_with` and code
//!   generation for [`BenchOpts::codegen_endpoints`] endpoints are timed on their own.

use super::{
    bpftool_loadall, check_once, load_ours, mb, median, met, ms_since, ns, open_anchor_map, run_command,
    samples, timed, BenchError, BenchOpts, Env, Loadall, MapFill, PinDir, Probe, ProgStats, DST_MAC, PAYLOAD,
    SPORT, SRC_MAC,
};
use sluice::codegen::endpoint::{generate_with, Direction, Options, Templates};
use sluice::maps::policy::{
    datapath_verdict, policy_writes, IpcacheV4, PolicyRule, Reason, EGRESS, INGRESS, TC_ACT_OK, TC_ACT_SHOT,
    WORLD,
};
use sluice::maps::prefilter::mask32;
use sluice::node::endpoints::{endpoint_objects_with, EndpointSpec, PolicyPlan};
use sluice::node::load::load_program;
use sluice::node::Object;
use sluice::packet::tcp::TcpFlags;
use sluice::packet::{PacketBuilder, TcpHeader};
use sluice::sys::{Map, MapKind, ProgSpec, ProgType, Program, Syscall, UpdateFlags};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

/// The endpoint whose ingress policy is measured (its `to_ep_1` program).
pub const EP_INDEX: u16 = 1;
/// Its address: the anchor's probes go to 10.244.99.1 (no pod has it).
pub const EP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 99, 1);
/// Its own identity: outside the anchor's pod identities (1000-1999); unused by ingress.
pub const EP_IDENTITY: u32 = 999;
/// The target for a new connection: ours over the anchor's ns.
pub const NEW_RATIO_TARGET: f64 = 0.5;
/// Issue 10's target for an established connection (a conntrack hit): at most this many ns
/// over the tc floor (`r0 = 0; exit`) measured in the same run.
pub const ESTABLISHED_TARGET_NS: f64 = 30.0;
/// The target for resolution plus code generation of 1,000 endpoints.
pub const ENDPOINTS_TARGET_MS: f64 = 100.0;
/// Rules per endpoint in the `policy_writes` scaling figure (the 100).
pub const RULES_PER_ENDPOINT: usize = 100;

/// `r0 = 0 (TC_ACT_OK); exit`: the cost of invoking a tc program plus the test-run loop.
const TC_FLOOR: [u8; 16] = [
    0xb7, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

// ---------------------------------------------------------------------------------------
// Contents
// ---------------------------------------------------------------------------------------

/// One `tc_policy` map key: `(identity, dport, proto, direction)`; 0 is "any" for the
/// identity, and dport 0 with proto 0 is "any port".
pub type AnchorKey = (u32, u16, u8, u8);

/// What `anchors.py` generates for `tc_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchorContent {
    /// `(network, prefix length, identity)`.
    pub ipcache: Vec<(u32, u8, u32)>,
    pub policy: Vec<AnchorKey>,
    /// `(case, expected retval, frame)`, in the anchor's order.
    pub cases: Vec<(String, u32, Vec<u8>)>,
}

/// The Python that prints `anchors.gen_policy()` and the `tc_policy` cases of `cases()`.
const GEN_POLICY_PY: &str = "import sys\n\
sys.path.insert(0, sys.argv[1])\n\
import anchors\n\
ipc, pol = anchors.gen_policy()\n\
out = ['ipc %d %d %d' % e for e in ipc] + ['pol %d %d %d %d' % k for k in pol]\n\
out += ['case %s %d %s' % (c[2], anchors.VERDICT[c[4]], c[5].hex()) for c in anchors.cases() if c[1] == 'tc_policy']\n\
sys.stdout.write('\\n'.join(out) + '\\n')\n";

/// Parse `ipc NET LEN ID`, `pol ID DPORT PROTO DIR` and `case NAME RETVAL HEX` lines
/// (decimal integers, lowercase hex).
pub fn parse_content(text: &str) -> Result<AnchorContent, BenchError> {
    let err = |line: usize, reason: String| BenchError::PolicyContent { line, reason };
    let mut c = AnchorContent::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let num = |s: &str, what: &str| -> Result<u64, BenchError> {
            s.parse::<u64>().map_err(|_| err(line, format!("bad {what} {s:?}")))
        };
        let fit = |v: u64, max: u64, what: &str| -> Result<u64, BenchError> {
            if v > max {
                Err(err(line, format!("{what} {v} is over {max}")))
            } else {
                Ok(v)
            }
        };
        match fields[..] {
            [] => continue,
            ["ipc", net, len, id] => {
                let net = fit(num(net, "network")?, u64::from(u32::MAX), "network")? as u32;
                let len = fit(num(len, "length")?, 32, "length")? as u8;
                let id = fit(num(id, "identity")?, u64::from(u32::MAX), "identity")? as u32;
                if net & !mask32(len) != 0 {
                    return Err(err(line, format!("{}/{len} is not a prefix", Ipv4Addr::from(net))));
                }
                c.ipcache.push((net, len, id));
            }
            ["pol", id, dport, proto, dir] => c.policy.push((
                fit(num(id, "identity")?, u64::from(u32::MAX), "identity")? as u32,
                fit(num(dport, "port")?, u64::from(u16::MAX), "port")? as u16,
                fit(num(proto, "protocol")?, 255, "protocol")? as u8,
                fit(num(dir, "direction")?, 1, "direction")? as u8,
            )),
            ["case", name, retval, hex] => {
                let retval = fit(num(retval, "verdict")?, u64::from(u32::MAX), "verdict")? as u32;
                let frame = unhex(hex).ok_or_else(|| err(line, format!("bad frame hex {hex:?}")))?;
                c.cases.push((name.to_string(), retval, frame));
            }
            _ => return Err(err(line, format!("unexpected line {raw:?}"))),
        }
    }
    if c.ipcache.is_empty() || c.policy.is_empty() || c.cases.is_empty() {
        return Err(err(
            text.lines().count(),
            format!(
                "expected ipcache entries, policy keys and cases, got {}, {} and {}",
                c.ipcache.len(),
                c.policy.len(),
                c.cases.len()
            ),
        ));
    }
    Ok(c)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn generate_content(opts: &BenchOpts) -> Result<AnchorContent, BenchError> {
    let tools = opts.anchors_dir.join("tools");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(GEN_POLICY_PY).arg(&tools);
    let out = run_command(&mut cmd, "generating the policy contents".into())?;
    parse_content(&String::from_utf8_lossy(&out))
}

/// The anchor's contents as our plan: endpoint [`EP_INDEX`] and one [`PolicyRule`] per
/// anchor key (an exact port for L4 keys, any port and protocol for L3-only keys, identity
/// 0 for "any identity"; the anchor's direction 0/1 is ingress/egress).
pub fn policy_plan(content: &AnchorContent) -> PolicyPlan {
    let rules = content
        .policy
        .iter()
        .map(|&(identity, dport, proto, dir)| PolicyRule {
            ep: EP_INDEX,
            dir: if dir == 0 { INGRESS } else { EGRESS },
            identity,
            proto,
            port: if proto == 0 { 0 } else { dport },
            port_prefix: if proto == 0 { 0 } else { 16 },
            deny: false,
            proxy_port: 0,
        })
        .collect();
    PolicyPlan {
        endpoints: vec![EndpointSpec {
            index: EP_INDEX,
            name: "bench".into(),
            ipv4: Some(EP_ADDR),
            ipv6: None,
            identity: EP_IDENTITY,
            ingress_enforced: true,
            egress_enforced: true,
        }],
        ipcache_v4: content.ipcache.clone(),
        ipcache_v6: Vec::new(),
        rules,
    }
}

// ---------------------------------------------------------------------------------------
// Probes and verdict checks
// ---------------------------------------------------------------------------------------

/// `anchors.pkt4(src, "10.244.99.1", proto, 40000, dport)`: ident 0x1234, DF, TTL 64; TCP
/// is a SYN with seq 1 and window 64240; payload `anchor`.
fn policy_pkt(src: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
    let ip =
        PacketBuilder::ethernet(SRC_MAC, DST_MAC).ipv4(src, EP_ADDR).ident(0x1234).dont_fragment().ttl(64);
    let l4 = if proto == IPPROTO_TCP {
        ip.tcp_with(TcpHeader {
            src_port: SPORT,
            dst_port: dport,
            flags: TcpFlags::SYN,
            seq: 1,
            ack: 0,
            window: 64240,
            ..TcpHeader::default()
        })
    } else {
        ip.udp(SPORT, dport)
    };
    l4.payload(PAYLOAD).build()
}

/// The anchor's four `tc_policy` cases, in its order.
pub fn policy_probes() -> Vec<Probe> {
    let pod = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i);
    let (ok, shot) = (TC_ACT_OK as u32, TC_ACT_SHOT as u32);
    vec![
        Probe { name: "allow_l3l4", frame: policy_pkt(pod(5), IPPROTO_TCP, 80), expected: ok },
        Probe { name: "allow_l3_any_port", frame: policy_pkt(pod(900), IPPROTO_TCP, 8080), expected: ok },
        Probe {
            name: "allow_l4_any_id",
            frame: policy_pkt(Ipv4Addr::new(198, 51, 100, 20), IPPROTO_UDP, 53),
            expected: ok,
        },
        Probe { name: "deny", frame: policy_pkt(pod(5), IPPROTO_TCP, 22), expected: shot },
    ]
}

/// Source address, protocol and destination port of an Ethernet + IPv4 + TCP/UDP frame.
pub fn frame_tuple(frame: &[u8]) -> Option<(Ipv4Addr, u8, u16)> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
    let proto = *ip.get(9)?;
    let dport = u16::from_be_bytes([*ip.get(ihl + 2)?, *ip.get(ihl + 3)?]);
    Some((src, proto, dport))
}

/// What `tc_policy.c` decides on these contents: the source's identity (longest ipcache
/// prefix, else world) and whether the exact, the L3-only or the L4-only key exists.
pub fn anchor_verdict(content: &AnchorContent, src: Ipv4Addr, proto: u8, dport: u16) -> (u32, bool) {
    let a = u32::from(src);
    let identity = content
        .ipcache
        .iter()
        .filter(|&&(net, len, _)| a & mask32(len) == net)
        .max_by_key(|&&(_, len, _)| len)
        .map_or(WORLD, |&(_, _, id)| id);
    let keys: HashSet<AnchorKey> = content.policy.iter().copied().collect();
    let allowed = keys.contains(&(identity, dport, proto, 0))
        || keys.contains(&(identity, 0, 0, 0))
        || keys.contains(&(0, dport, proto, 0));
    (identity, allowed)
}

/// One probe's verdict, from the anchor's logic and from ours, before any timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictCheck {
    pub case: &'static str,
    pub src: Ipv4Addr,
    pub proto: u8,
    pub dport: u16,
    /// The retval the anchor's case expects.
    pub expected: u32,
    pub anchor_identity: u32,
    pub anchor_allows: bool,
    /// [`IpcacheV4::lookup`] of the source.
    pub ours_identity: u32,
    /// `datapath_verdict(rules, EP_INDEX, INGRESS, ...)`: `Some(true)` allows.
    pub ours: Option<bool>,
}

impl VerdictCheck {
    /// Same identity, same verdict, and that verdict is the expected one.
    pub fn passed(&self) -> bool {
        let ours_allows = self.ours == Some(true);
        self.anchor_identity == self.ours_identity
            && self.anchor_allows == ours_allows
            && self.anchor_allows == (self.expected == TC_ACT_OK as u32)
    }
}

/// The verdict checks of `probes` on `content` and our `plan` (with its ipcache tables).
pub fn verdict_checks(
    content: &AnchorContent,
    plan: &PolicyPlan,
    ipc: &IpcacheV4,
    probes: &[Probe],
) -> Result<Vec<VerdictCheck>, BenchError> {
    probes
        .iter()
        .map(|p| {
            let (src, proto, dport) = frame_tuple(&p.frame).ok_or_else(|| BenchError::PolicyCheck {
                case: p.name.to_string(),
                reason: "not an Ethernet + IPv4 + TCP/UDP frame".into(),
            })?;
            let (anchor_identity, anchor_allows) = anchor_verdict(content, src, proto, dport);
            let ours_identity = ipc.lookup(u32::from(src));
            let ours = datapath_verdict(&plan.rules, EP_INDEX, INGRESS, ours_identity, proto, dport);
            Ok(VerdictCheck {
                case: p.name,
                src,
                proto,
                dport,
                expected: p.expected,
                anchor_identity,
                anchor_allows,
                ours_identity,
                ours,
            })
        })
        .collect()
}

/// Our frames must be the anchor's bytes, with its expected verdicts, case for case.
fn check_frames(content: &AnchorContent, probes: &[Probe]) -> Result<(), BenchError> {
    let names: Vec<&str> = content.cases.iter().map(|c| c.0.as_str()).collect();
    if names != probes.iter().map(|p| p.name).collect::<Vec<_>>() {
        return Err(BenchError::PolicyCheck {
            case: names.join(","),
            reason: "anchors.cases() has other tc_policy cases than ours".into(),
        });
    }
    for ((_, expected, frame), p) in content.cases.iter().zip(probes) {
        if *frame != p.frame || *expected != p.expected {
            return Err(BenchError::PolicyCheck {
                case: p.name.to_string(),
                reason: format!(
                    "the anchor's frame {} (verdict {expected}) is not ours {} (verdict {})",
                    hex(frame),
                    hex(&p.frame),
                    p.expected
                ),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Variants
// ---------------------------------------------------------------------------------------

/// What a row of ours measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `conntrack: false`, every probe: parse, ipcache, two policy trie lookups (the peer's
    /// identity and "any"), verdict, `ep_stats`. The new-connection policy path alone.
    NewConnection,
    /// Conntrack on, the `deny` probe: a denied packet never creates an entry, so every
    /// iteration is a new connection: two `ct4` misses, then the path above.
    CtNew,
    /// Conntrack on, the allowed probes after a first run created their entries: every
    /// timed iteration is a `ct4` hit (the anchor's SYN keeps the entry in SYN_SENT, the
    /// same code path as an established connection) and skips the policy lookups.
    CtEstablished,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 3] = [Variant::NewConnection, Variant::CtNew, Variant::CtEstablished];

    /// The row label.
    pub fn name(self) -> &'static str {
        match self {
            Variant::NewConnection => "(a) new, conntrack off",
            Variant::CtNew => "(b) new, conntrack on",
            Variant::CtEstablished => "(c) established, conntrack on",
        }
    }

    /// Whether the variant runs a probe with this expected verdict.
    fn takes(self, expected: u32) -> bool {
        match self {
            Variant::NewConnection => true,
            Variant::CtNew => expected != TC_ACT_OK as u32,
            Variant::CtEstablished => expected == TC_ACT_OK as u32,
        }
    }

    /// The reason every run of a probe with this expected verdict must count.
    fn reason(self, expected: u32) -> Reason {
        match self {
            Variant::CtEstablished => Reason::AllowEstablished,
            _ if expected == TC_ACT_OK as u32 => Reason::AllowNew,
            _ => Reason::DenyDefault,
        }
    }

    fn conntrack(self) -> bool {
        self != Variant::NewConnection
    }
}

/// The samples of one (variant, probe).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyCase {
    pub variant: Variant,
    pub case: &'static str,
    pub expected: u32,
    /// The `ep_stats` reason every run of ours counted.
    pub reason: Reason,
    /// ns per run, one per round.
    pub ours: Vec<u32>,
    pub anchor: Vec<u32>,
    /// With conntrack on: ns per run of what a node runs, the endpoint's stub tail-calling
    /// into the shared program ([`sluice::node::endpoints::shared_endpoint_objects`]).
    pub shared: Vec<u32>,
}

impl PolicyCase {
    /// Median ours / median anchor.
    pub fn ratio(&self) -> f64 {
        super::median_ratio(&self.ours, &self.anchor)
    }

    /// The target for this row, as text, and whether it is met; `floor` is the tc
    /// floor's median ns in the same run.
    pub fn target(&self, floor: f64) -> (String, bool) {
        match self.variant {
            Variant::CtEstablished => (
                format!("≤ floor + {ESTABLISHED_TARGET_NS:.0} ns"),
                median(&self.ours) - floor <= ESTABLISHED_TARGET_NS,
            ),
            _ => (format!("≤ {NEW_RATIO_TARGET:.1}"), self.ratio() <= NEW_RATIO_TARGET),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// One anchor map's fill.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorFill {
    pub map: &'static str,
    pub entries: usize,
    pub ms: f64,
}

/// Everything the policy part measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyResult {
    pub anchor_object: String,
    /// `compile_ms` of tc_policy from the build's `compile_times.tsv`, if present.
    pub clang_ms: Option<String>,
    pub ipcache_entries: usize,
    pub anchor_keys: usize,
    pub rules: usize,
    /// Keys our `policy` trie holds.
    pub policy_keys: usize,
    /// `ipc_v4_l2` and `ipc_v4_l3` chunks.
    pub ipcache_chunks: (usize, usize),
    pub checks: Vec<VerdictCheck>,
    pub cases: Vec<PolicyCase>,
    /// `to_ep_1` with conntrack off, with conntrack on, the anchor.
    pub ours_new: ProgStats,
    pub ours_ct: ProgStats,
    pub anchor: ProgStats,
    /// tc floor samples, one per round.
    pub floor: Vec<u32>,
    pub maps: Vec<MapFill>,
    pub anchor_fills: Vec<AnchorFill>,
    /// Wall time of the Python generator (not part of any figure).
    pub python_ms: f64,
    pub ipcache_build_ms: f64,
    /// `PolicyPlan::writes` (ipcache tables' writes, policy trie keys, ep_config).
    pub writes_ms: f64,
    /// `endpoint_objects_with` (conntrack on): ipcache build, writes and both programs.
    pub object_ms: f64,
    /// `generate_with` of both directions of one endpoint, µs.
    pub codegen_pair_us: f64,
    pub codegen_endpoints: u16,
    /// `generate` of both directions for each of `codegen_endpoints` endpoints.
    pub codegen_many_ms: f64,
    /// `policy_writes` of `codegen_endpoints × RULES_PER_ENDPOINT` rules.
    pub scale_rules: usize,
    pub scale_writes_ms: f64,
}

impl PolicyResult {
    /// Whether every verdict check passed.
    pub fn checks_passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(VerdictCheck::passed)
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// The anchor loaded by bpftool, its maps open.
struct PolicyAnchor {
    program: Program,
    ipcache: Map,
    policy: Map,
    load_ms: f64,
    _pins: PinDir,
}

fn load_policy_anchor(sys: &Arc<dyn Syscall>, obj: &Path) -> Result<PolicyAnchor, BenchError> {
    let Loadall { program, map_dir, load_ms, pins } = bpftool_loadall(sys, obj)?;
    Ok(PolicyAnchor {
        program,
        ipcache: open_anchor_map(sys, &map_dir, "ipcache", MapKind::LpmTrie, 8, 4)?,
        policy: open_anchor_map(sys, &map_dir, "policy", MapKind::Hash, 8, 4)?,
        load_ms,
        _pins: pins,
    })
}

/// Fill the anchor's maps as `anchors.fill_policy` does.
fn fill_policy_anchor(a: &PolicyAnchor, content: &AnchorContent) -> Result<Vec<AnchorFill>, BenchError> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for &(net, len, id) in &content.ipcache {
        keys.extend_from_slice(&u32::from(len).to_le_bytes());
        keys.extend_from_slice(&net.to_be_bytes());
        values.extend_from_slice(&id.to_le_bytes());
    }
    let t = Instant::now();
    a.ipcache.update_batch(&keys, &values, content.ipcache.len(), UpdateFlags::ANY)?;
    let ipcache_ms = ms_since(t);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for &(id, dport, proto, dir) in &content.policy {
        keys.extend_from_slice(&id.to_le_bytes());
        keys.extend_from_slice(&dport.to_be_bytes());
        keys.extend_from_slice(&[proto, dir]);
        values.extend_from_slice(&0u32.to_le_bytes());
    }
    let t = Instant::now();
    a.policy.update_batch(&keys, &values, content.policy.len(), UpdateFlags::ANY)?;
    Ok(vec![
        AnchorFill { map: "ipcache (LPM trie)", entries: content.ipcache.len(), ms: ipcache_ms },
        AnchorFill { map: "policy (hash)", entries: content.policy.len(), ms: ms_since(t) },
    ])
}

/// Sum over CPUs of `ep_stats[EP_INDEX * COUNT + reason]`.
fn reason_count(stats: &Map, reason: Reason) -> Result<u64, BenchError> {
    let key = u32::from(EP_INDEX) * Reason::COUNT + reason as u32;
    let values = stats.lookup_percpu(&key.to_le_bytes())?.unwrap_or_default();
    Ok(values.iter().map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)).sum())
}

/// A timed run of ours that must count `reason` once per iteration.
fn timed_ours(
    program: &'static str,
    prog: &Program,
    stats: &Map,
    n: usize,
    p: &Probe,
    reason: Reason,
    repeat: u32,
) -> Result<u32, BenchError> {
    let before = reason_count(stats, reason)?;
    let ns = timed(program, prog, n, p, repeat)?;
    let grew = reason_count(stats, reason)?.wrapping_sub(before);
    if grew != u64::from(repeat) {
        return Err(BenchError::Reason {
            program,
            case: p.name,
            reason: reason.name(),
            got: grew,
            expected: u64::from(repeat),
        });
    }
    Ok(ns)
}

/// Synthetic rules for the scaling figure: `per_ep` per endpoint, mixed directions,
/// identities and ports, no denies.
fn scale_rules(endpoints: u16, per_ep: usize) -> Vec<PolicyRule> {
    let mut rules = Vec::with_capacity(usize::from(endpoints) * per_ep);
    for ep in 1..=endpoints {
        for j in 0..per_ep as u32 {
            rules.push(PolicyRule {
                ep,
                dir: (j % 2) as u8,
                identity: 1000 + (u32::from(ep) * 7 + j) % 1000,
                proto: if j % 3 == 0 { IPPROTO_UDP } else { IPPROTO_TCP },
                port: 80 + j as u16,
                port_prefix: 16,
                deny: false,
                proxy_port: 0,
            });
        }
    }
    rules
}

/// The policy part.
pub(super) fn measure(
    opts: &BenchOpts,
    sys: &Arc<dyn Syscall>,
    obj: &Path,
) -> Result<PolicyResult, BenchError> {
    let t = Instant::now();
    let content = generate_content(opts)?;
    let python_ms = ms_since(t);
    let probes = policy_probes();
    check_frames(&content, &probes)?;
    let plan = policy_plan(&content);
    let n = content.ipcache.len();

    // The pure steps, each timed, and the verdict checks.
    let t = Instant::now();
    let ipc = IpcacheV4::build(&plan.ipcache_v4);
    let ipcache_build_ms = ms_since(t);
    let t = Instant::now();
    let writes = plan.writes(&ipc);
    let writes_ms = ms_since(t);
    let policy_keys =
        writes.iter().filter(|w| w.map == sluice::maps::names::POLICY).map(|w| w.updates()).sum();
    drop(writes);
    let checks = verdict_checks(&content, &plan, &ipc, &probes)?;
    if let Some(bad) = checks.iter().find(|c| !c.passed()) {
        return Err(BenchError::PolicyCheck { case: bad.case.to_string(), reason: format!("{bad:?}") });
    }
    let t = Instant::now();
    // The programs a node runs: with the service load balancer's hooks (for this
    // non-service traffic, the inlined hint checks), over the node's maps.
    let node_options = Options { conntrack: true, services: true };
    let mut objects = endpoint_objects_with(&plan, node_options)?;
    let object_ms = ms_since(t);
    for o in &mut objects {
        o.add_maps(sluice::node::lb_maps());
    }
    let t = Instant::now();
    for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
        std::hint::black_box(generate_with(
            EP_INDEX,
            dir,
            Options { conntrack: true, ..Options::default() },
        )?);
    }
    let codegen_pair_us = t.elapsed().as_secs_f64() * 1e6;
    // What `endpoint_objects` does for a node: each direction generated once, then one
    // instantiation per endpoint and direction.
    let t = Instant::now();
    let templates = Templates::new(Options::default())?;
    for ep in 1..=opts.codegen_endpoints {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            std::hint::black_box(templates.instantiate(ep, dir));
        }
    }
    let codegen_many_ms = ms_since(t);
    let many = scale_rules(opts.codegen_endpoints, RULES_PER_ENDPOINT);
    let t = Instant::now();
    std::hint::black_box(policy_writes(&many));
    let scale_writes_ms = ms_since(t);
    drop(many);

    // The anchor: bpftool loads it, we fill its maps.
    let anchor = load_policy_anchor(sys, obj)?;
    let anchor_fills = fill_policy_anchor(&anchor, &content)?;

    // Ours: `to_ep_1` carries the plan's writes; the conntrack-off twin shares its maps.
    let writes = std::mem::take(&mut objects[0].writes);
    let mut to_ep = objects
        .into_iter()
        .find(|o| o.name == Direction::ToEndpoint.program_name(EP_INDEX))
        .ok_or_else(|| BenchError::PolicyCheck { case: "-".into(), reason: "no to_ep_1 object".into() })?;
    to_ep.writes = writes;
    let ours = load_ours(sys, &to_ep)?;
    let new_obj = Object {
        name: format!("{}_noct", to_ep.name),
        program: generate_with(
            EP_INDEX,
            Direction::ToEndpoint,
            Options { conntrack: false, services: true },
        )?,
        writes: Vec::new(),
        ..to_ep
    };
    let t = Instant::now();
    let ours_new = load_program(sys, &new_obj, &ours._maps)?;
    let ours_new_ms = ms_since(t);
    let stats = ours._maps.get(sluice::maps::names::EP_STATS).ok_or_else(|| BenchError::PolicyCheck {
        case: "-".into(),
        reason: "the endpoint object has no ep_stats map".into(),
    })?;
    // What a node runs: the stub of endpoint EP_INDEX and the shared program it tail-calls.
    let shared_obj = Object {
        name: Direction::ToEndpoint.shared_name().to_string(),
        program: sluice::codegen::endpoint::generate_shared(Direction::ToEndpoint, node_options)?,
        writes: Vec::new(),
        ..new_obj.clone()
    };
    let shared = load_program(sys, &shared_obj, &ours._maps)?;
    let stub_obj = Object {
        name: Direction::ToEndpoint.program_name(EP_INDEX),
        program: sluice::codegen::endpoint::generate_stub(EP_INDEX, Direction::ToEndpoint)?,
        ..shared_obj.clone()
    };
    let stub = load_program(sys, &stub_obj, &ours._maps)?;
    let shared_table = [shared_obj, stub_obj];
    sluice::node::load::fill_tail_slots(&ours._maps, |_| Some(&shared), &shared_table[..1])
        .map_err(|e| BenchError::PolicyCheck { case: "-".into(), reason: format!("ep_tail: {e}") })?;
    let floor = Program::load(sys, &ProgSpec::new("bench_tc_floor", ProgType::SchedCls, &TC_FLOOR))?;
    let floor_probe = Probe { expected: TC_ACT_OK as u32, ..probes[0].clone() };

    // Verdicts first (this run also opens the allowed probes' connections), then timing.
    for p in &probes {
        check_once("anchor", &anchor.program, n, p)?;
        check_once("ours (conntrack off)", &ours_new, n, p)?;
        check_once("ours (conntrack on)", &ours.program, n, p)?;
        check_once("ours (shared, conntrack on)", &stub, n, p)?;
    }
    check_once("tc floor", &floor, n, &floor_probe)?;
    let mut cases: Vec<PolicyCase> = Variant::ALL
        .iter()
        .flat_map(|&variant| {
            probes.iter().filter(move |p| variant.takes(p.expected)).map(move |p| PolicyCase {
                variant,
                case: p.name,
                expected: p.expected,
                reason: variant.reason(p.expected),
                ours: Vec::new(),
                anchor: Vec::new(),
                shared: Vec::new(),
            })
        })
        .collect();
    let probe = |name: &str| probes.iter().find(|p| p.name == name).expect("every row comes from a probe");
    let ours_of = |v: Variant| -> (&'static str, &Program) {
        if v.conntrack() {
            ("ours (conntrack on)", &ours.program)
        } else {
            ("ours (conntrack off)", &ours_new)
        }
    };
    // One untimed pass so caches, branch predictors and the CPU clock settle first.
    let warm = opts.repeat.clamp(1, 100_000);
    for c in &cases {
        let (name, prog) = ours_of(c.variant);
        timed_ours(name, prog, stats, n, probe(c.case), c.reason, warm)?;
        timed("anchor", &anchor.program, n, probe(c.case), warm)?;
    }
    timed("tc floor", &floor, n, &floor_probe, warm)?;
    let mut floor_samples = Vec::new();
    for round in 0..opts.rounds {
        for (i, c) in cases.iter_mut().enumerate() {
            let (name, prog) = ours_of(c.variant);
            let p = probe(c.case);
            let ours_first = (round + i) % 2 == 0;
            for turn in 0..2 {
                if (turn == 0) == ours_first {
                    c.ours.push(timed_ours(name, prog, stats, n, p, c.reason, opts.repeat)?);
                } else {
                    c.anchor.push(timed("anchor", &anchor.program, n, p, opts.repeat)?);
                }
            }
            if c.variant.conntrack() {
                let name = "ours (shared, conntrack on)";
                c.shared.push(timed_ours(name, &stub, stats, n, p, c.reason, opts.repeat)?);
            }
        }
        floor_samples.push(timed("tc floor", &floor, n, &floor_probe, opts.repeat)?);
    }

    Ok(PolicyResult {
        anchor_object: obj.display().to_string(),
        clang_ms: super::clang_compile_ms(opts, "tc_policy"),
        ipcache_entries: content.ipcache.len(),
        anchor_keys: content.policy.len(),
        rules: plan.rules.len(),
        policy_keys,
        ipcache_chunks: (ipc.l2.len(), ipc.l3.len()),
        checks,
        cases,
        ours_new: ProgStats::of(&ours_new, ours_new_ms),
        ours_ct: ProgStats::of(&ours.program, ours.load_ms),
        anchor: ProgStats::of(&anchor.program, anchor.load_ms),
        floor: floor_samples,
        maps: ours.maps,
        anchor_fills,
        python_ms,
        ipcache_build_ms,
        writes_ms,
        object_ms,
        codegen_pair_us,
        codegen_endpoints: opts.codegen_endpoints,
        codegen_many_ms,
        scale_rules: usize::from(opts.codegen_endpoints) * RULES_PER_ENDPOINT,
        scale_writes_ms,
    })
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn verdict_name(v: u32) -> &'static str {
    match v as i32 {
        TC_ACT_OK => "OK",
        TC_ACT_SHOT => "SHOT",
        _ => "?",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

fn allow_name(allows: bool) -> &'static str {
    if allows {
        "allow"
    } else {
        "deny"
    }
}

impl PolicyResult {
    /// This part's section of the report.
    pub fn render(&self, env: &Env, repeat: u32, rounds: usize, s: &mut String) {
        let _ = writeln!(s, "# sluice bench: endpoint policy, ours vs the clang anchor (tc_policy)\n");
        let _ = writeln!(s, "- kernel {}, {} CPUs ({})", env.kernel, env.cpus, env.cpu);
        let clang =
            self.clang_ms.as_deref().map_or(String::new(), |ms| format!("; clang -O2 compile {ms} ms"));
        let _ = writeln!(s, "- anchor `{}` ({}){clang}", self.anchor_object, env.bpftool);
        let _ = writeln!(
            s,
            "- contents: `anchors.gen_policy()`: ipcache {} entries, {} policy keys; ours: endpoint {EP_INDEX} \
             ({EP_ADDR}, program `to_ep_{EP_INDEX}`), {} rules -> {} `policy` trie keys, ipcache tables with {} \
             level-2 and {} level-3 chunks",
            self.ipcache_entries,
            self.anchor_keys,
            self.rules,
            self.policy_keys,
            self.ipcache_chunks.0,
            self.ipcache_chunks.1
        );
        let _ = writeln!(
            s,
            "- BPF_PROG_TEST_RUN repeat {repeat}, {rounds} rounds, each row ours and the anchor interleaved on \
             the same probe; a sample is the kernel's average ns per run (whole ns); every run of ours counted \
             the row's `ep_stats` reason exactly `repeat` times"
        );
        let _ = writeln!(
            s,
            "- tc floor (`r0 = 0; exit`, SCHED_CLS): median {} ns (samples {})\n",
            ns(median(&self.floor)),
            samples(&self.floor)
        );

        let _ = writeln!(s, "## Verdict checks (before timing)\n");
        let _ = writeln!(s, "| case | source | proto/dport | expected | anchor identity | anchor model | ours identity | ours `datapath_verdict` | check |");
        let _ = writeln!(s, "|---|---|---|---|---:|---|---:|---|---|");
        for c in &self.checks {
            let ours = match c.ours {
                Some(a) => allow_name(a),
                None => "none (default deny)",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                c.case,
                c.src,
                proto_name(c.proto),
                c.dport,
                verdict_name(c.expected),
                c.anchor_identity,
                allow_name(c.anchor_allows),
                c.ours_identity,
                ours,
                if c.passed() { "ok" } else { "**FAILED**" }
            );
        }

        let floor = median(&self.floor);
        let _ = writeln!(s, "\n## ns per packet (median of the rounds)\n");
        let _ = writeln!(s, "| variant | case | verdict | ep_stats reason | ours ns | anchor ns | ours/anchor | target | met | over floor ours/anchor | shared ns (stub + tail call) | ours samples | anchor samples |");
        let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---|---|");
        for c in &self.cases {
            let (o, a) = (median(&c.ours) - floor, median(&c.anchor) - floor);
            let over = if a > 0.0 { format!("{:.2}", o.max(0.0) / a) } else { "-".to_string() };
            let (target, ok) = c.target(floor);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
                c.variant.name(),
                c.case,
                verdict_name(c.expected),
                c.reason.name(),
                ns(median(&c.ours)),
                ns(median(&c.anchor)),
                c.ratio(),
                target,
                met(ok),
                over,
                if c.shared.is_empty() { "-".to_string() } else { ns(median(&c.shared)) },
                samples(&c.ours),
                samples(&c.anchor)
            );
        }

        let _ = writeln!(s, "\n## Programs\n");
        let _ = writeln!(s, "| program | verified insns | xlated insns | jited bytes | load ms |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (name, p) in [
            (format!("ours `to_ep_{EP_INDEX}`, conntrack off"), &self.ours_new),
            (format!("ours `to_ep_{EP_INDEX}`, conntrack on"), &self.ours_ct),
            ("anchor `tc_policy` (bpftool loadall)".to_string(), &self.anchor),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {:.1} |",
                p.verified_insns, p.xlated_insns, p.jited_bytes, p.load_ms
            );
        }

        let _ = writeln!(s, "\n## Build, codegen and fill\n");
        let _ = writeln!(s, "| step | time | target | met |");
        let _ = writeln!(s, "|---|---:|---|---|");
        let _ = writeln!(
            s,
            "| `IpcacheV4::build` ({} entries) | {:.1} ms | - | - |",
            self.ipcache_entries, self.ipcache_build_ms
        );
        let _ = writeln!(
            s,
            "| `PolicyPlan::writes` (ipcache tables, {} rules -> trie keys, ep_config) | {:.1} ms | - | - |",
            self.rules, self.writes_ms
        );
        let _ = writeln!(
            s,
            "| `endpoint_objects_with` (the two steps above + both programs) | {:.1} ms | - | - |",
            self.object_ms
        );
        let _ =
            writeln!(s, "| `generate_with` × 2 (one endpoint) | {:.0} µs | - | - |", self.codegen_pair_us);
        let many_target = usize::from(self.codegen_endpoints) >= 1000;
        let _ = writeln!(
            s,
            "| codegen for {} endpoints (templates: 2 generated, then instantiated × 2 each) | {:.1} ms | {} | {} |",
            self.codegen_endpoints,
            self.codegen_many_ms,
            if many_target { format!("< {ENDPOINTS_TARGET_MS:.0} ms (with resolution)") } else { "-".into() },
            if many_target { met(self.codegen_many_ms < ENDPOINTS_TARGET_MS) } else { "-" }
        );
        let _ = writeln!(
            s,
            "| `policy_writes` for {} × {RULES_PER_ENDPOINT} synthetic rules | {:.1} ms | - | - |",
            self.codegen_endpoints, self.scale_writes_ms
        );
        for f in &self.anchor_fills {
            let _ =
                writeln!(s, "| anchor fill: {} ({} entries) | {:.1} ms | - | - |", f.map, f.entries, f.ms);
        }
        let _ = writeln!(
            s,
            "\nThe 1,000-endpoint target covers policy resolution (CiliumNetworkPolicy to rules, \
             `src/policy`) plus code generation; only code generation and the map layout \
             (`policy_writes`) are timed here. Code does not depend on the rules (they live in maps). \
             Python generation of the contents: {:.0} ms (not counted).",
            self.python_ms
        );
        let _ = writeln!(s, "\n### Our maps\n");
        let _ = writeln!(s, "| map | preallocated MiB | entries written | create ms | fill ms |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for m in &self.maps {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} |",
                m.map,
                mb(m.bytes),
                m.entries,
                m.create_ms,
                m.fill_ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The anchor's `tc_policy` frames (`anchors.cases()`, `pkt.hex()`).
    const ANCHOR_FRAMES: [(&str, &str); 4] = [
        (
            "allow_l3l4",
            "02000000000202000000000108004500002e123440004006afa80af400050af463019c4000500000000100000000\
             5002faf06b230000616e63686f72",
        ),
        (
            "allow_l3_any_port",
            "02000000000202000000000108004500002e123440004006ac290af403840af463019c401f900000000100000000\
             5002faf048640000616e63686f72",
        ),
        (
            "allow_l4_any_id",
            "020000000002020000000001080045000022123440004011905ac63364140af463019c400035000e96d6616e63686f72",
        ),
        (
            "deny",
            "02000000000202000000000108004500002e123440004006afa80af400050af463019c4000160000000100000000\
             5002faf06b5d0000616e63686f72",
        ),
    ];

    #[test]
    fn probes_match_the_anchor_frames() {
        let probes = policy_probes();
        assert_eq!(probes.len(), ANCHOR_FRAMES.len());
        for (p, (name, frame)) in probes.iter().zip(ANCHOR_FRAMES) {
            assert_eq!(p.name, name);
            assert_eq!(hex(&p.frame), frame, "{name}");
        }
        assert_eq!(probes.iter().map(|p| p.expected).collect::<Vec<_>>(), [0, 0, 0, 2]);
    }

    /// A small version of `gen_policy()` with the same shapes: pods, a world CIDR, L3L4,
    /// L3-only, L4-only and egress keys.
    fn small_content() -> AnchorContent {
        let pod = |i: u32| u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i;
        let mut ipcache: Vec<(u32, u8, u32)> = (0..1000).map(|i| (pod(i), 32, 1000 + i % 100)).collect();
        ipcache.push((u32::from(Ipv4Addr::new(203, 0, 0, 0)), 8, 1 << 24));
        let mut policy = Vec::new();
        for id in 1000..1100 {
            policy.push((id, 80, IPPROTO_TCP, 0));
            policy.push((id, 53, IPPROTO_UDP, 1));
        }
        // Pod 900 has identity 1000 + 900 % 100 = 1000: L3-only.
        policy.push((1000, 0, 0, 0));
        policy.push((0, 53, IPPROTO_UDP, 0));
        AnchorContent { ipcache, policy, cases: Vec::new() }
    }

    #[test]
    fn our_rules_give_the_anchor_verdict() {
        let content = small_content();
        let plan = policy_plan(&content);
        let ipc = IpcacheV4::build(&plan.ipcache_v4);
        let checks = verdict_checks(&content, &plan, &ipc, &policy_probes()).expect("frames parse");
        for c in &checks {
            assert!(c.passed(), "{c:?}");
        }
        // Pod 900 has identity 1000 here: L3-only; the exact 80/tcp rule for pod 5.
        assert_eq!((checks[0].ours_identity, checks[0].ours), (1005, Some(true)));
        assert_eq!((checks[2].ours_identity, checks[2].ours), (WORLD, Some(true)));
        assert_eq!((checks[3].ours_identity, checks[3].ours), (1005, None));
        // An egress key does not allow ingress.
        let (_, allows) = anchor_verdict(&content, Ipv4Addr::new(10, 244, 0, 5), IPPROTO_UDP, 53);
        assert!(allows, "53/udp is L4-only for any identity");
        let mut no_l4 = content.clone();
        no_l4.policy.retain(|k| k.0 != 0);
        let (_, allows) = anchor_verdict(&no_l4, Ipv4Addr::new(10, 244, 0, 5), IPPROTO_UDP, 53);
        assert!(!allows, "the egress 53/udp key must not allow ingress");
        let plan = policy_plan(&no_l4);
        assert_eq!(datapath_verdict(&plan.rules, EP_INDEX, INGRESS, 1005, IPPROTO_UDP, 53), None);
        assert_eq!(datapath_verdict(&plan.rules, EP_INDEX, EGRESS, 1005, IPPROTO_UDP, 53), Some(true));
    }

    #[test]
    fn a_wrong_rule_fails_its_check() {
        let content = small_content();
        let mut plan = policy_plan(&content);
        plan.rules.retain(|r| r.identity != 0);
        let ipc = IpcacheV4::build(&plan.ipcache_v4);
        let checks = verdict_checks(&content, &plan, &ipc, &policy_probes()).expect("frames parse");
        let failed: Vec<&str> = checks.iter().filter(|c| !c.passed()).map(|c| c.case).collect();
        assert_eq!(failed, ["allow_l4_any_id"]);
    }

    #[test]
    fn content_parses_and_rejects_bad_lines() {
        let text = "ipc 183762944 32 1000\nipc 3405774848 8 16777216\npol 1000 80 6 0\npol 0 0 0 0\n\
                    case deny 2 0a0b\n";
        let c = parse_content(text).expect("parses");
        assert_eq!(c.ipcache, [(0x0af4_0000, 32, 1000), (0xcb00_0000, 8, 1 << 24)]);
        assert_eq!(c.policy, [(1000, 80, 6, 0), (0, 0, 0, 0)]);
        assert_eq!(c.cases, [("deny".to_string(), 2, vec![0x0a, 0x0b])]);
        let bad: &[(&str, usize, &str)] = &[
            ("ipc 1 24 5\n", 1, "is not a prefix"),
            ("ipc 0 33 5\n", 1, "length 33 is over 32"),
            ("ipc 0 8 5\npol 1 70000 6 0\n", 2, "port 70000"),
            ("ipc 0 8 5\npol 1 80 6 2\n", 2, "direction 2"),
            ("ipc 0 8 5\ncase x 0 abc\n", 2, "bad frame hex"),
            ("ipc 0 8 5\nwhat\n", 2, "unexpected line"),
            ("ipc 0 8 5\n", 1, "expected ipcache entries, policy keys and cases"),
        ];
        for &(text, line, needle) in bad {
            match parse_content(text) {
                Err(BenchError::PolicyContent { line: got, reason }) => {
                    assert_eq!(got, line, "{text:?}: {reason}");
                    assert!(reason.contains(needle), "{text:?}: {reason:?} lacks {needle:?}");
                }
                other => panic!("{text:?}: expected a content error, got {other:?}"),
            }
        }
    }

    #[test]
    fn variants_take_their_probes_and_reasons() {
        let (ok, shot) = (TC_ACT_OK as u32, TC_ACT_SHOT as u32);
        assert!(Variant::NewConnection.takes(ok) && Variant::NewConnection.takes(shot));
        assert!(!Variant::CtNew.takes(ok) && Variant::CtNew.takes(shot));
        assert!(Variant::CtEstablished.takes(ok) && !Variant::CtEstablished.takes(shot));
        assert_eq!(Variant::NewConnection.reason(ok), Reason::AllowNew);
        assert_eq!(Variant::CtNew.reason(shot), Reason::DenyDefault);
        assert_eq!(Variant::CtEstablished.reason(ok), Reason::AllowEstablished);
        assert_eq!(scale_rules(3, 10).len(), 30);
    }

    #[test]
    fn report_has_every_row_and_target() {
        let stats =
            |verified_insns| ProgStats { verified_insns, xlated_insns: 85, jited_bytes: 405, load_ms: 1.5 };
        let case = |variant, case, expected, reason, ours: &[u32], anchor: &[u32]| PolicyCase {
            variant,
            case,
            expected,
            reason,
            ours: ours.to_vec(),
            anchor: anchor.to_vec(),
            shared: Vec::new(),
        };
        let r = PolicyResult {
            anchor_object: "tc_policy.o".into(),
            clang_ms: Some("35".into()),
            ipcache_entries: 10064,
            anchor_keys: 2602,
            rules: 2602,
            policy_keys: 2602,
            ipcache_chunks: (1, 40),
            checks: vec![VerdictCheck {
                case: "deny",
                src: Ipv4Addr::new(10, 244, 0, 5),
                proto: 6,
                dport: 22,
                expected: 2,
                anchor_identity: 1005,
                anchor_allows: false,
                ours_identity: 1005,
                ours: None,
            }],
            cases: vec![
                case(Variant::NewConnection, "deny", 2, Reason::DenyDefault, &[60, 61, 62], &[150, 150, 151]),
                case(
                    Variant::CtEstablished,
                    "allow_l3l4",
                    0,
                    Reason::AllowEstablished,
                    &[45, 45, 46],
                    &[130; 3],
                ),
            ],
            ours_new: stats(300),
            ours_ct: stats(600),
            anchor: stats(99),
            floor: vec![20, 21, 20],
            maps: vec![MapFill {
                map: "policy".into(),
                family: "shared",
                bytes: 0,
                entries: 2602,
                create_ms: 0.1,
                fill_ms: 2.0,
            }],
            anchor_fills: vec![AnchorFill { map: "ipcache (LPM trie)", entries: 10064, ms: 9.0 }],
            python_ms: 100.0,
            ipcache_build_ms: 1.0,
            writes_ms: 2.0,
            object_ms: 3.0,
            codegen_pair_us: 150.0,
            codegen_endpoints: 1000,
            codegen_many_ms: 80.0,
            scale_rules: 100_000,
            scale_writes_ms: 50.0,
        };
        assert!(r.checks_passed());
        let mut md = String::new();
        r.render(&Env { kernel: "6.18".into(), cpus: 2, ..Env::default() }, 1000, 3, &mut md);
        let rows = [
            "| deny | 10.244.0.5 | tcp/22 | SHOT | 1005 | deny | 1005 | none (default deny) | ok |",
            "| (a) new, conntrack off | deny | SHOT | deny_default | 61 | 150 | 0.41 | ≤ 0.5 | met | 0.32 | - | 60/61/62 | 150/150/151 |",
            "| (c) established, conntrack on | allow_l3l4 | OK | allow_established | 45 | 130 | 0.35 | ≤ floor + 30 ns | met |",
            "| ours `to_ep_1`, conntrack on | 600 | 85 | 405 | 1.5 |",
            "| codegen for 1000 endpoints (templates: 2 generated, then instantiated × 2 each) | 80.0 ms | < 100 ms (with resolution) | met |",
            "| anchor fill: ipcache (LPM trie) (10064 entries) | 9.0 ms | - | - |",
            "| policy | 0.0 | 2602 | 0.1 | 2.0 |",
            "tc floor (`r0 = 0; exit`, SCHED_CLS): median 20 ns (samples 20/21/20)",
        ];
        for row in rows {
            assert!(md.contains(row), "missing {row:?} in\n{md}");
        }
    }
}
