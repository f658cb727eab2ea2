//! ClientIP affinity expires: Kubernetes' `sessionAffinityConfig.clientIP.timeoutSeconds`
//! "specifies the seconds of ClientIP type session sticky time": a client's new
//! connection follows its earlier backend only while the affinity entry is younger than
//! that many seconds; every followed (or new) connection refreshes it.
//!
//! In the simulator the clock is stepped (the `ktime_get_*` helpers read
//! `Context::now_ns`): inside the timeout by a nanosecond the entry is followed, at the
//! timeout it is not. In the kernel the entry is rewritten with an old `LAST_USED`. The
//! flows are chosen so that the flow hash picks the other backend than the one the entry
//! names, so following the entry and not following it give different packets.

use sluice::codegen::lb as lbgen;
use sluice::lb::hash::hash_v4;
use sluice::maps::lb::{aff_value, service_writes, LbReason, LbState};
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::node::load::{self, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{Object, Plan};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys::{self, map::UpdateFlags, TestRunOpts};
use sluice_verifier_sim::exec::Context;
use sluice_verifier_sim::spec::ProgKind;
use std::net::Ipv4Addr;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2)];
const TIMEOUT_S: u32 = 10;
const SECOND: u64 = 1_000_000_000;
/// Where the simulated clock starts.
const T0: u64 = 5_000 * SECOND;
/// Offset of the destination address in an untagged IPv4 frame.
const DST_AT: usize = 14 + 16;

fn plan() -> Plan {
    let backends: Vec<Backend> = BACKENDS
        .iter()
        .map(|&a| Backend { address: a.into(), port: 8080, state: BackendState::Active, weight: 1 })
        .collect();
    let service = Service {
        namespace: "default".into(),
        name: "sticky".into(),
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::ClientIp { timeout_seconds: TIMEOUT_S },
        frontends: vec![Frontend {
            vip: VIP.into(),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: String::new(),
            backends,
        }],
    };
    let (writes, _) = service_writes(&[service], &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let program = lbgen::generate().unwrap_or_else(|e| panic!("{e}"));
    Plan {
        node: "lb-expiry".into(),
        objects: vec![Object {
            name: "lb".into(),
            kind: ProgKind::SchedCls,
            program,
            maps: lbgen::map_defs(),
            writes,
        }],
    }
}

fn syn(sport: u16) -> Vec<u8> {
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 0xc], [2, 0, 0, 0, 0, 1])
        .ipv4(CLIENT, VIP)
        .tcp(sport, 80, TcpFlags::SYN, 1000, 0)
        .payload(b"hello")
        .build()
}

/// The backend the flow hash picks for a new connection from `sport` (the slot order is
/// the frontend's backend order, sorted).
fn hashed(sport: u16) -> Ipv4Addr {
    BACKENDS[(hash_v4(CLIENT, VIP, sport, 80, 6) % BACKENDS.len() as u32) as usize]
}

/// A source port above `after` whose hash picks a backend other than `not`.
fn port_hashing_away_from(not: Ipv4Addr, after: u16) -> u16 {
    (after + 1..u16::MAX).find(|&s| hashed(s) != not).expect("some port hashes to the other backend")
}

fn destination(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[DST_AT], frame[DST_AT + 1], frame[DST_AT + 2], frame[DST_AT + 3])
}

/// One connection in the simulator at `now`: the reason counted and the backend it went to.
fn connect_sim(sim: &mut SimNode, sport: u16, now: u64) -> (LbReason, Ipv4Addr) {
    let before: Vec<u64> = LbReason::ALL.iter().map(|&r| sim.counter("lb_stats", r as u32)).collect();
    let mut ctx = Context::new(syn(sport));
    ctx.now_ns = now;
    let out = sim.run_with("lb", &mut ctx).unwrap_or_else(|e| panic!("{e}"));
    let moved: Vec<LbReason> = LbReason::ALL
        .iter()
        .zip(&before)
        .filter(|&(&r, &b)| sim.counter("lb_stats", r as u32) != b)
        .map(|(&r, _)| r)
        .collect();
    assert_eq!(moved.len(), 1, "one reason counted per packet: {moved:?}");
    assert_eq!(out.retval as i32, moved[0].verdict(), "verdict of {:?}", moved[0]);
    (moved[0], destination(&out.packet))
}

#[test]
fn client_ip_affinity_expires_after_its_timeout_in_the_simulator() {
    let mut sim = SimNode::new(&plan()).unwrap_or_else(|e| panic!("{e}"));
    let timeout = u64::from(TIMEOUT_S) * SECOND;
    let (reason, first) = connect_sim(&mut sim, 40_000, T0);
    assert_eq!(reason, LbReason::NewConnection);
    assert_eq!(first, hashed(40_000), "a new connection goes where the hash says");

    // 5 s later, a flow the hash sends elsewhere follows the entry (and refreshes it).
    let mut now = T0 + 5 * SECOND;
    let s = port_hashing_away_from(first, 40_000);
    assert_eq!(connect_sim(&mut sim, s, now), (LbReason::Affinity, first), "5 s after: followed");
    // One nanosecond inside the timeout, counted from that refresh: still followed.
    now += timeout - 1;
    let s = port_hashing_away_from(first, s);
    assert_eq!(connect_sim(&mut sim, s, now), (LbReason::Affinity, first), "timeout - 1 ns: followed");
    // At the timeout, counted from the last refresh: expired, the hash decides.
    now += timeout;
    let s = port_hashing_away_from(first, s);
    let (reason, to) = connect_sim(&mut sim, s, now);
    assert_eq!((reason, to), (LbReason::NewConnection, hashed(s)), "at the timeout: expired");
    assert_ne!(to, first);
    // The new connection wrote a new entry: the client now sticks to the other backend.
    let s = port_hashing_away_from(to, s);
    assert_eq!(connect_sim(&mut sim, s, now + SECOND), (LbReason::Affinity, to), "the new entry is followed");
    // Long after (a day), expired again.
    let s = port_hashing_away_from(to, s);
    assert_eq!(connect_sim(&mut sim, s, now + 86_400 * SECOND).0, LbReason::NewConnection, "a day later");
}

/// `CLOCK_MONOTONIC` now: the clock `bpf_ktime_get_coarse_ns` reads (at tick resolution).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    u64::try_from(ts.tv_sec).expect("monotonic seconds are positive") * SECOND
        + u64::try_from(ts.tv_nsec).expect("nanoseconds are positive")
}

fn connect_kernel(k: &Loaded, sport: u16) -> Ipv4Addr {
    let frame = syn(sport);
    let mut opts = TestRunOpts::packet(&frame);
    opts.data_out_cap = frame.len() + 256;
    let r = k.programs["lb"].test_run(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.retval as i32, LbReason::NewConnection.verdict(), "translated and passed");
    destination(&r.data_out)
}

/// Rewrite the one `lb_aff` entry's `LAST_USED` to `age_s` seconds ago.
fn age_affinity(k: &Loaded, age_s: u64) {
    let aff = &k.maps["lb_aff"];
    let entries = aff.entries().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.len(), 1, "one client, one entry");
    for (key, mut value) in entries {
        let then = monotonic_ns() - age_s * SECOND;
        value[aff_value::LAST_USED..aff_value::LAST_USED + 8].copy_from_slice(&then.to_le_bytes());
        aff.update(&key, &value, UpdateFlags::EXIST).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn client_ip_affinity_entries_with_an_old_timestamp_are_not_followed_in_the_kernel() {
    let test = "client_ip_affinity_entries_with_an_old_timestamp_are_not_followed_in_the_kernel";
    if !sys::require_kernel(test) {
        return;
    }
    assert!(monotonic_ns() > 100 * SECOND, "the monotonic clock is past the ages written below");
    let k = load::load_plan(&sys::kernel(), &plan()).unwrap_or_else(|e| panic!("{e}"));
    let first = connect_kernel(&k, 40_000);
    assert_eq!(first, hashed(40_000));
    // A young entry (written 2 s ago) is followed.
    age_affinity(&k, 2);
    let s = port_hashing_away_from(first, 40_000);
    assert_eq!(connect_kernel(&k, s), first, "an entry 2 s old is followed");
    // An entry one second past the timeout is not: the hash decides.
    age_affinity(&k, u64::from(TIMEOUT_S) + 1);
    let s = port_hashing_away_from(first, s);
    assert_eq!(connect_kernel(&k, s), hashed(s), "an entry {}s old is expired", TIMEOUT_S + 1);
    // Just inside the timeout (a second to spare for the coarse clock): followed.
    let now_sticky = hashed(s);
    age_affinity(&k, u64::from(TIMEOUT_S) - 1);
    let s = port_hashing_away_from(now_sticky, s);
    assert_eq!(connect_kernel(&k, s), now_sticky, "an entry {}s old is followed", TIMEOUT_S - 1);
}
