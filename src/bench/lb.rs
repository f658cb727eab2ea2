//! `sluice bench`, service load balancing: our tc `lb` program ([`sluice::codegen::lb`])
//! against the clang-built `tc_lb` anchor, in the same run.
//!
//! Contract:
//! - The contents are the anchor's (`anchors.gen_lb()`, transcribed in [`svc_vip`],
//!   [`svc_port`], [`backend_of`]): N services (VIP `10.96.0.0 + s + 1`, port 80 or 443,
//!   TCP), 16 backends each, backend `slot` of service `s` being the VIP:port of service
//!   `(16 s + slot + 1) % N`, so that `BPF_PROG_TEST_RUN`'s repeated runs over one buffer
//!   walk from service to service, one DNAT per iteration. The anchor's maps are filled as
//!   `anchors.fill_lb` does; ours get the same services as [`Service`]s through
//!   [`service_writes`] (random selection: 16 slots per service).
//! - Probes (the anchor's `cases()`): `svc_hit_dnat` (10.244.0.5:40000 to service 42) and
//!   `svc_miss` (to 10.97.0.1:80), both `TC_ACT_OK`. Before timing, every program runs each
//!   probe once: the hit must come out with the destination of one of service 42's
//!   backends and valid IPv4 and TCP checksums, the miss unchanged.
//! - Ours runs in two shapes: `conntrack` (full semantics: the backend filter (`lb_hint`),
//!   the reverse-NAT `lb_ct` lookup when its bit is set, the frontend filter, `lb_svc`,
//!   then the forward `lb_ct` lookup; the timed runs are `lb_ct` hits: an untimed run of the same length
//!   first creates the walk's entries) and `no conntrack` ([`LbOptions::conntrack`] off:
//!   the anchor's job exactly, every iteration a service lookup and a new selection). After
//!   every timed run of ours, `lb_stats` must have counted the expected reason exactly
//!   `repeat` times ([`BenchError::Reason`]).
//! - Rows are interleaved per round, who goes first alternating. Ours is also timed on the
//!   hit probe at 1, 1,000, 10,000 and 65,536 services ([`SCALES`]; service `42 % N`).
//! - New connections of the conntrack shape (two `lb_ct` updates each) are not timed: the
//!   walk revisits its services, so a repeated run cannot keep creating connections.

use super::{
    bpftool_loadall, median, median_ratio, ms_since, ns, open_anchor_map, samples, BenchError, BenchOpts,
    Probe, ProgStats, DST_MAC, PAYLOAD, SPORT, SRC_MAC,
};
use sluice::codegen::lb::{generate_with, map_defs, LbOptions};
use sluice::maps::lb::{hint_bit, service_writes, LbReason, LbState, TC_ACT_OK};
use sluice::maps::names;
use sluice::maps::MapDef;
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::node::load::{apply_writes, load_program, sys_spec};
use sluice::node::Object;
use sluice::packet::checksum::{verify_ipv4_header, verify_transport};
use sluice::packet::tcp::TcpFlags;
use sluice::packet::{PacketBuilder, TcpHeader};
use sluice::sys::{Map, MapKind, Program, Syscall, TestRunOpts, UpdateFlags};
use sluice_verifier_sim::spec::ProgKind;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Services of the anchor comparison (`anchors.LB_SERVICES`).
pub const SERVICES: u32 = 10_000;
/// Backends per service (`anchors.LB_BACKENDS`).
pub const BACKENDS: u32 = 16;
/// The service the hit probe targets (`anchors.LB_HIT_SVC`).
pub const HIT_SVC: u32 = 42;
/// The miss probe's destination (`anchors.LB_MISS_DST`).
pub const MISS_DST: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
/// The probes' client.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
/// Service counts of the scale rows.
pub const SCALES: [u32; 4] = [1, 1_000, 10_000, 65_536];
/// The targets: ours over the anchor's ns for a hit and for a miss; the spread of
/// ours over the scale rows (slowest over fastest, minus one).
pub const HIT_RATIO_TARGET: f64 = 0.7;
pub const MISS_RATIO_TARGET: f64 = 1.0;
pub const SCALE_SPREAD_TARGET: f64 = 0.2;

/// `anchors.svc_vip(s)`.
pub fn svc_vip(s: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + s + 1)
}

/// `anchors.svc_port(s)`.
pub fn svc_port(s: u32) -> u16 {
    if s.is_multiple_of(2) {
        80
    } else {
        443
    }
}

/// `anchors.lb_backend_of(s, slot)` for `n` services.
pub fn backend_of(n: u32, s: u32, slot: u32) -> (Ipv4Addr, u16) {
    let t = (s * BACKENDS + slot + 1) % n;
    (svc_vip(t), svc_port(t))
}

/// The anchor's contents as our services: one frontend each, random selection.
pub fn services(n: u32) -> Vec<Service> {
    (0..n)
        .map(|s| {
            let mut backends: Vec<Backend> = (0..BACKENDS)
                .map(|slot| {
                    let (addr, port) = backend_of(n, s, slot);
                    Backend { address: IpAddr::V4(addr), port, state: BackendState::Active, weight: 1 }
                })
                .collect();
            backends.sort();
            backends.dedup();
            Service {
                namespace: "bench".into(),
                name: format!("svc-{s}"),
                algorithm: LbAlgorithm::Random,
                affinity: SessionAffinity::None,
                frontends: vec![Frontend {
                    vip: IpAddr::V4(svc_vip(s)),
                    port: svc_port(s),
                    protocol: Protocol::Tcp,
                    port_name: String::new(),
                    backends,
                }],
            }
        })
        .collect()
}

/// `anchors.pkt4(CLIENT, dst, TCP, 40000, dport)`.
fn pkt(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
        .ipv4(CLIENT, dst)
        .ident(0x1234)
        .dont_fragment()
        .ttl(64)
        .tcp_with(TcpHeader {
            src_port: SPORT,
            dst_port: dport,
            flags: TcpFlags::SYN,
            seq: 1,
            ack: 0,
            window: 64240,
            ..TcpHeader::default()
        })
        .payload(PAYLOAD)
        .build()
}

/// The hit probe for `n` services and the miss probe.
pub fn probes(n: u32) -> [Probe; 2] {
    let s = HIT_SVC % n;
    [
        Probe { name: "svc_hit_dnat", frame: pkt(svc_vip(s), svc_port(s)), expected: TC_ACT_OK as u32 },
        Probe { name: "svc_miss", frame: pkt(MISS_DST, 80), expected: TC_ACT_OK as u32 },
    ]
}

/// One probe's samples (ns per packet, one per round) for the anchor and both shapes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LbRow {
    pub case: &'static str,
    pub anchor: Vec<u32>,
    pub ours_ct: Vec<u32>,
    pub ours_no_ct: Vec<u32>,
}

/// The hit probe at one service count.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRow {
    pub services: u32,
    pub ours_ct: Vec<u32>,
    pub ours_no_ct: Vec<u32>,
    /// `service_writes` and filling our maps.
    pub writes_ms: f64,
    pub fill_ms: f64,
}

/// The lb part's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LbResult {
    pub anchor: ProgStats,
    pub ours_ct: ProgStats,
    pub ours_no_ct: ProgStats,
    pub anchor_fill_ms: f64,
    pub rows: Vec<LbRow>,
    pub scale: Vec<ScaleRow>,
}

/// Our maps and both program shapes.
struct Ours {
    ct: Program,
    no_ct: Program,
    ct_stats: ProgStats,
    no_ct_stats: ProgStats,
    maps: BTreeMap<&'static str, Map>,
}

fn bench_defs() -> Vec<MapDef> {
    map_defs()
}

fn load_ours(sys: &Arc<dyn Syscall>, n: u32) -> Result<(Ours, f64, f64), BenchError> {
    let t = Instant::now();
    let (writes, _) = service_writes(&services(n), &LbState::default())
        .map_err(|e| BenchError::Options(format!("lb contents for {n} services: {e}")))?;
    let writes_ms = ms_since(t);
    let mut maps = BTreeMap::new();
    for def in bench_defs() {
        maps.insert(
            def.name,
            Map::create(sys, &sys_spec(&def)).map_err(sluice::node::load::LoadError::from)?,
        );
    }
    let t = Instant::now();
    apply_writes(&maps, &writes)?;
    let fill_ms = ms_since(t);
    let mut progs = Vec::new();
    for conntrack in [true, false] {
        let obj = Object {
            name: "lb".into(),
            kind: ProgKind::SchedCls,
            program: generate_with(LbOptions { conntrack, ..LbOptions::default() })?,
            maps: bench_defs(),
            writes: Vec::new(),
        };
        let t = Instant::now();
        let p = load_program(sys, &obj, &maps)?;
        progs.push((ProgStats::of(&p, ms_since(t)), p));
    }
    let (no_ct_stats, no_ct) = progs.pop().expect("two shapes");
    let (ct_stats, ct) = progs.pop().expect("two shapes");
    Ok((Ours { ct, no_ct, ct_stats, no_ct_stats, maps }, writes_ms, fill_ms))
}

/// The anchor's maps filled as `anchors.fill_lb` does.
fn fill_anchor(sys: &Arc<dyn Syscall>, map_dir: &Path) -> Result<f64, BenchError> {
    let svcs = open_anchor_map(sys, map_dir, "lb_services", MapKind::Hash, 8, 8)?;
    let bes = open_anchor_map(sys, map_dir, "lb_backends", MapKind::Hash, 8, 8)?;
    let t = Instant::now();
    let (mut sk, mut sv, mut bk, mut bv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in 0..SERVICES {
        sk.extend(svc_vip(s).octets());
        sk.extend(svc_port(s).to_be_bytes());
        sk.extend([6, 0]);
        sv.extend(BACKENDS.to_le_bytes());
        sv.extend((s + 1).to_le_bytes());
        for slot in 0..BACKENDS {
            let (ip, port) = backend_of(SERVICES, s, slot);
            bk.extend((s + 1).to_le_bytes());
            bk.extend(slot.to_le_bytes());
            bv.extend(ip.octets());
            bv.extend(port.to_be_bytes());
            bv.extend([0, 0]);
        }
    }
    svcs.update_batch(&sk, &sv, SERVICES as usize, UpdateFlags::ANY)?;
    bes.update_batch(&bk, &bv, (SERVICES * BACKENDS) as usize, UpdateFlags::ANY)?;
    Ok(ms_since(t))
}

/// One untimed run: the hit comes out to one of the service's backends with valid
/// checksums; the miss comes out unchanged.
fn check_probe(program: &'static str, prog: &Program, n: u32, p: &Probe) -> Result<(), BenchError> {
    let r = prog.test_run(&TestRunOpts::packet(&p.frame))?;
    let out = &r.data_out;
    let problem = if r.retval != p.expected {
        Some(format!("verdict {}", r.retval))
    } else if p.name == "svc_miss" {
        (out != &p.frame).then(|| "the miss changed the packet".to_string())
    } else {
        let s = HIT_SVC % n;
        let dst = out.get(30..34).map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]));
        let dport = out.get(36..38).map(|d| u16::from_be_bytes([d[0], d[1]]));
        let ok_dst = (0..BACKENDS).any(|slot| Some(backend_of(n, s, slot)) == dst.zip(dport));
        let ip_ok = out.get(14..34).is_some_and(verify_ipv4_header);
        let tcp_ok = dst.is_some_and(|d| verify_transport(CLIENT.into(), d.into(), 6, &out[34..]));
        if !ok_dst {
            Some(format!("destination {dst:?}:{dport:?} is no backend of service {s}"))
        } else if !ip_ok || !tcp_ok {
            Some(format!("checksums: IPv4 header {ip_ok}, TCP {tcp_ok}"))
        } else {
            None
        }
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(BenchError::Verdict {
            program,
            n: n as usize,
            case: p.name,
            got: r.retval,
            expected: p.expected,
            detail: format!(" ({reason})"),
        }),
    }
}

fn reason_count(stats: &Map, reason: LbReason) -> Result<u64, BenchError> {
    let per_cpu = stats.lookup_percpu(&(reason as u32).to_le_bytes())?.unwrap_or_default();
    Ok(per_cpu.iter().map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes)).sum())
}

/// A timed run of ours that must take `reason` on every iteration.
fn timed_ours(
    program: &'static str,
    prog: &Program,
    stats: &Map,
    p: &Probe,
    repeat: u32,
    reason: LbReason,
) -> Result<u32, BenchError> {
    let before = reason_count(stats, reason)?;
    let ns = timed_run(program, prog, p, repeat)?;
    let got = reason_count(stats, reason)? - before;
    if got != u64::from(repeat) {
        return Err(BenchError::Reason {
            program,
            case: p.name,
            reason: reason.name(),
            got,
            expected: u64::from(repeat),
        });
    }
    Ok(ns)
}

fn timed_run(program: &'static str, prog: &Program, p: &Probe, repeat: u32) -> Result<u32, BenchError> {
    let r =
        prog.test_run(&TestRunOpts { data_in: &p.frame, data_out_cap: 0, repeat, ..Default::default() })?;
    if r.retval != p.expected {
        return Err(BenchError::Verdict {
            program,
            n: 0,
            case: p.name,
            got: r.retval,
            expected: p.expected,
            detail: format!(" (timed run, repeat {repeat})"),
        });
    }
    Ok(r.duration_ns)
}

/// Which reason each shape's timed runs of a probe must count.
fn reasons(p: &Probe) -> (LbReason, LbReason) {
    if p.name == "svc_miss" {
        (LbReason::PassNoService, LbReason::PassNoService)
    } else {
        (LbReason::Established, LbReason::NewConnection)
    }
}

pub(super) fn measure(opts: &BenchOpts, sys: &Arc<dyn Syscall>, obj: &Path) -> Result<LbResult, BenchError> {
    let loaded = bpftool_loadall(sys, obj)?;
    let anchor_fill_ms = fill_anchor(sys, &loaded.map_dir)?;
    let anchor = loaded.program;
    let repeat = opts.repeat;
    let mut rows = Vec::new();
    let mut scale = Vec::new();
    let mut prog_stats = None;
    for n in SCALES {
        let (ours, writes_ms, fill_ms) = load_ours(sys, n)?;
        let stats = &ours.maps[names::LB_STATS];
        let ps = probes(n);
        for p in &ps {
            check_probe("ours (conntrack)", &ours.ct, n, p)?;
            check_probe("ours (no conntrack)", &ours.no_ct, n, p)?;
            if n == SERVICES {
                check_probe("tc_lb", &anchor, n, p)?;
            }
        }
        // The walk's lb_ct entries, so that the timed conntrack runs are hits.
        timed_run("ours (conntrack)", &ours.ct, &ps[0], repeat)?;
        let mut row =
            ScaleRow { services: n, ours_ct: Vec::new(), ours_no_ct: Vec::new(), writes_ms, fill_ms };
        let mut cmp: Vec<LbRow> = ps.iter().map(|p| LbRow { case: p.name, ..LbRow::default() }).collect();
        for round in 0..opts.rounds {
            for (p, c) in ps.iter().zip(cmp.iter_mut()) {
                let (ct_reason, no_ct_reason) = reasons(p);
                let run_ours = |c: &mut LbRow| -> Result<(u32, u32), BenchError> {
                    let a = timed_ours("ours (conntrack)", &ours.ct, stats, p, repeat, ct_reason)?;
                    let b = timed_ours("ours (no conntrack)", &ours.no_ct, stats, p, repeat, no_ct_reason)?;
                    c.ours_ct.push(a);
                    c.ours_no_ct.push(b);
                    Ok((a, b))
                };
                if n == SERVICES && round % 2 == 1 {
                    c.anchor.push(timed_run("tc_lb", &anchor, p, repeat)?);
                }
                let (a, b) = run_ours(c)?;
                if n == SERVICES && round % 2 == 0 {
                    c.anchor.push(timed_run("tc_lb", &anchor, p, repeat)?);
                }
                if p.name == "svc_hit_dnat" {
                    row.ours_ct.push(a);
                    row.ours_no_ct.push(b);
                }
            }
        }
        if n == SERVICES {
            rows = cmp;
            prog_stats = Some((ours.ct_stats, ours.no_ct_stats));
        }
        scale.push(row);
    }
    let (ours_ct, ours_no_ct) = prog_stats.expect("SCALES holds SERVICES");
    Ok(LbResult {
        anchor: ProgStats::of(&anchor, loaded.load_ms),
        ours_ct,
        ours_no_ct,
        anchor_fill_ms,
        rows,
        scale,
    })
}

impl LbRow {
    fn target(&self) -> f64 {
        if self.case == "svc_miss" {
            MISS_RATIO_TARGET
        } else {
            HIT_RATIO_TARGET
        }
    }
}

impl ScaleRow {
    fn medians(&self) -> (f64, f64) {
        (median(&self.ours_ct), median(&self.ours_no_ct))
    }
}

/// Slowest over fastest median, minus one.
fn spread(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = v.clone().fold(f64::MIN, f64::max);
    let min = v.fold(f64::MAX, f64::min);
    if min > 0.0 {
        max / min - 1.0
    } else {
        f64::INFINITY
    }
}

impl LbResult {
    /// The part's markdown section.
    pub fn render(&self, env: &super::Env, repeat: u32, rounds: usize, s: &mut String) {
        let _ = writeln!(s, "# sluice bench: tc service load balancer (`lb` vs `tc_lb.o`)\n");
        let _ = writeln!(
            s,
            "- kernel {}, {} ({} CPUs); BPF_PROG_TEST_RUN repeat {repeat}, {rounds} rounds, median ns per packet",
            env.kernel, env.cpu, env.cpus
        );
        let _ = writeln!(
            s,
            "- contents: {SERVICES} services × {BACKENDS} backends (anchors.gen_lb); anchor fill {:.1} ms",
            self.anchor_fill_ms
        );
        let _ = writeln!(
            s,
            "- ours (conntrack): full semantics: lb_hint filters (inlined array lookups) before the forward lb_ct \
             lookup (a hit holds the backend), then the reply lb_ct and lb_svc lookups; timed hits are forward \
             lb_ct hits (established: one hash lookup). ours (no conntrack): the anchor's job (frontend filter, \
             service lookup, selection whose slot holds the backend, DNAT); the anchor has no conntrack"
        );
        let miss_bit = hint_bit(MISS_DST.into(), 80, 6);
        let collides = (0..SERVICES).any(|s| hint_bit(svc_vip(s).into(), svc_port(s), 6) == miss_bit);
        let _ = writeln!(
            s,
            "- svc_miss's frontend filter bit: {}",
            if collides {
                "set (a collision: the miss pays the lb_svc lookup)"
            } else {
                "clear (no hash lookup)"
            }
        );
        let _ = writeln!(
            s,
            "- programs (verified insns / xlated insns): anchor {} / {}; ours (conntrack) {} / {}; ours (no conntrack) \
             {} / {}\n",
            self.anchor.verified_insns,
            self.anchor.xlated_insns,
            self.ours_ct.verified_insns,
            self.ours_ct.xlated_insns,
            self.ours_no_ct.verified_insns,
            self.ours_no_ct.xlated_insns
        );
        let _ = writeln!(
            s,
            "| case | anchor ns | ours (conntrack) ns | ratio | ours (no conntrack) ns | ratio | target | met (no ct / ct) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|");
        for r in &self.rows {
            let (rc, rn) = (median_ratio(&r.ours_ct, &r.anchor), median_ratio(&r.ours_no_ct, &r.anchor));
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} ({}) | {rc:.2} | {} ({}) | {rn:.2} | ≤ {:.1} | {} / {} |",
                r.case,
                ns(median(&r.anchor)),
                samples(&r.anchor),
                ns(median(&r.ours_ct)),
                samples(&r.ours_ct),
                ns(median(&r.ours_no_ct)),
                samples(&r.ours_no_ct),
                r.target(),
                super::met(rn <= r.target()),
                super::met(rc <= r.target()),
            );
        }
        let _ = writeln!(
            s,
            "\n| services | ours (conntrack) hit ns | ours (no conntrack) hit ns | writes ms | fill ms |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
        for r in &self.scale {
            let (c, n) = r.medians();
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} ({}) | {:.1} | {:.1} |",
                r.services,
                ns(c),
                samples(&r.ours_ct),
                ns(n),
                samples(&r.ours_no_ct),
                r.writes_ms,
                r.fill_ms
            );
        }
        let sc = spread(self.scale.iter().map(|r| r.medians().0));
        let sn = spread(self.scale.iter().map(|r| r.medians().1));
        let big = |r: &&ScaleRow| r.services >= 1_000;
        let bc = spread(self.scale.iter().filter(big).map(|r| r.medians().0));
        let bn = spread(self.scale.iter().filter(big).map(|r| r.medians().1));
        let _ = writeln!(
            s,
            "\nSpread from {} to {} services (slowest / fastest − 1): conntrack {:.0}%, no conntrack {:.0}%; target ≤ {:.0}%: {} / {}",
            SCALES[0],
            SCALES[SCALES.len() - 1],
            sc * 100.0,
            sn * 100.0,
            SCALE_SPREAD_TARGET * 100.0,
            super::met(sc <= SCALE_SPREAD_TARGET),
            super::met(sn <= SCALE_SPREAD_TARGET),
        );
        let _ = writeln!(
            s,
            "From 1,000 to {} services: conntrack {:.0}%, no conntrack {:.0}%. (With one service every backend is \
             the VIP itself: the port does not change, so the hit skips the port's checksum helper.)",
            SCALES[SCALES.len() - 1],
            bc * 100.0,
            bn * 100.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_match_the_anchor_generator() {
        assert_eq!(svc_vip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(backend_of(SERVICES, 0, 0), (svc_vip(1), 443));
        assert_eq!(backend_of(SERVICES, 9_999, 15), (svc_vip(0), 80), "(16 * 9999 + 16) % 10000 = 0");
        let s = services(1_000);
        assert_eq!(s.len(), 1_000);
        assert!(s.iter().all(|s| s.frontends[0].backends.len() == BACKENDS as usize));
        assert_eq!(services(1)[0].frontends[0].backends.len(), 1, "one service: its own VIP, once");
    }

    #[test]
    fn probes_are_the_anchor_frames() {
        let [hit, miss] = probes(SERVICES);
        assert_eq!(&hit.frame[30..34], &svc_vip(HIT_SVC).octets());
        assert_eq!(&miss.frame[30..34], &MISS_DST.octets());
        assert_eq!(hit.frame.len(), 14 + 20 + 20 + PAYLOAD.len());
    }
}
