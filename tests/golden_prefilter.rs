//! The prefilter's golden packets (`golden/prefilter.rs`) and listing snapshot, and a random
//! differential test against the reference parse rules.
//!
//! - Every golden case runs in the simulator, and through `BPF_PROG_TEST_RUN` when the
//!   kernel is available (`require_kernel`); both must give exactly the expected verdict,
//!   counter and output, and the two observations must be equal (DESIGN invariant 3).
//! - The case table itself is checked against the oracle (`golden::prefilter::oracle`,
//!   which takes the address verdict from `DenySet`).
//! - Random frames (seeded; `SLUICE_GOLDEN_RANDOM=N` sets how many) are judged by the
//!   oracle in the simulator, and the kernel is held to the simulator.

use sluice::golden::prefilter::{self as gp, ETH, IPV4, IPV6, TAG};
use sluice::golden::{check, run_kernel, run_sim, Case, Observation};
use sluice::maps::prefilter::{mask128, mask32, DenySet, Reason};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{self, Plan};
use sluice::packet::{ExtHeader, PacketBuilder};
use sluice::sys;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

fn fixture_plan() -> (Plan, DenySet) {
    let cfg = sluice::model::parse_str(gp::FIXTURE, gp::FIXTURE_ORIGIN).unwrap_or_else(|e| panic!("{e}"));
    let plan = node::plan(&cfg).unwrap_or_else(|e| panic!("planning {}: {e}", gp::FIXTURE_ORIGIN));
    (plan, gp::deny_set(&cfg))
}

fn sim_node(plan: &Plan) -> SimNode {
    SimNode::new(plan).unwrap_or_else(|e| panic!("{e}"))
}

fn kernel_node(plan: &Plan) -> Loaded {
    load_plan(&sys::kernel(), plan).unwrap_or_else(|e| panic!("loading {}: {e}", gp::FIXTURE_ORIGIN))
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(96).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 96 { " ..." } else { "" };
    format!("{}{more}", shown.join(" "))
}

fn reason_name(case: &Case) -> &'static str {
    gp::expected_reason(case).map_or("(none)", Reason::name)
}

/// One failure, with input, expectation and what happened.
fn report(case: &Case, problem: &str, actual: Option<&Observation>) -> String {
    let mut s =
        format!("case `{}`\n  input    {} bytes: {}\n", case.name, case.packet.len(), hex(&case.packet));
    let _ = writeln!(
        s,
        "  expected verdict {} reason {} counters {:?}",
        case.verdict,
        reason_name(case),
        case.counters
    );
    if let Some(obs) = actual {
        let _ = writeln!(s, "  actual   {obs}, counters {:?}", obs.counters);
    }
    let _ = writeln!(s, "  problem  {problem}");
    s
}

fn fail_all(what: &str, total: usize, failures: &[String]) {
    if !failures.is_empty() {
        panic!("{what}: {} problems in {total} cases\n\n{}", failures.len(), failures.join("\n"));
    }
}

#[test]
fn golden_table_agrees_with_the_oracle() {
    let (_, set) = fixture_plan();
    let cases = gp::cases();
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        if !names.insert(case.name.clone()) {
            failures.push(format!("case `{}` is named twice", case.name));
        }
        let written = gp::expected_reason(case);
        let oracle = gp::oracle(&set, &case.packet);
        if written != Some(oracle) {
            failures.push(report(
                case,
                &format!("the table says {written:?}, the oracle (DenySet) says {oracle:?}"),
                None,
            ));
        } else if case.verdict != oracle.verdict() as u32 {
            failures.push(report(case, "verdict does not match the reason's verdict", None));
        }
    }
    fail_all("golden table vs oracle", cases.len(), &failures);
    // Every reason has a case.
    let covered: BTreeSet<Reason> = cases.iter().filter_map(gp::expected_reason).collect();
    let missing: Vec<Reason> = Reason::ALL.into_iter().filter(|r| !covered.contains(r)).collect();
    assert!(missing.is_empty(), "no golden case for {missing:?}");
    eprintln!("{} golden prefilter cases", cases.len());
}

/// The fixture is designed so the cases walk every path of the tables; if the table
/// layout changes (say, how many prefixes a /32 slot holds inline), this says which path
/// the fixture no longer reaches.
#[test]
fn fixture_reaches_every_table_path() {
    use sluice::maps::prefilter::{Tables, V6Bucket, CHILD, DENY, V6_HASH, V6_LPM};
    let (_, set) = fixture_plan();
    let t = Tables::build(&set);
    let l1_4 = |a: [u8; 4]| t.v4.l1[usize::from(u16::from_be_bytes([a[0], a[1]]))];
    let l2_4 = |a: [u8; 4]| {
        let e = l1_4(a);
        assert!(e >= CHILD, "{a:?}: level-1 entry {e} is no chunk");
        t.v4.l2[(e - CHILD) as usize][usize::from(a[2])]
    };
    assert_eq!(l1_4([10, 77, 0, 0]), DENY, "10.0.0.0/8: level-1 deny");
    assert_eq!(l1_4([100, 127, 0, 0]), DENY, "100.64.0.0/10: level-1 deny");
    assert!(l2_4([172, 16, 5, 0]) >= CHILD, "172.16.5.4/30: a level-3 bitmap");
    assert!(l2_4([192, 0, 2, 0]) >= CHILD, "192.0.2.128/25: a level-3 bitmap");
    assert!(l2_4([198, 51, 100, 0]) >= CHILD, "198.51.100.7/32: a level-3 bitmap");
    assert_eq!(l2_4([203, 0, 113, 0]), DENY, "203.0.113.0/24: level-2 deny");
    let l1_6 = |hi: u16| t.v6.l1[usize::from(hi)];
    assert_eq!(l1_6(0x2002), DENY, "2002::/16: level-1 deny");
    assert!((0xfe80..=0xfebf).all(|hi| l1_6(hi) == DENY), "fe80::/10: level-1 deny");
    assert_eq!(l1_6(0x3ffe), V6_LPM, "3ffe:8000::/17: level-1 entry to the trie");
    for hi in [0x2001, 0xfd00, 0x3fff] {
        assert_eq!(l1_6(hi), V6_HASH, "{hi:#x}: level-1 entry to the /32 slots");
    }
    let slot = |key: u32| t.v6.l2.get(&key);
    assert!(
        matches!(slot(0x2001_0db8), Some(V6Bucket::List(l)) if l.len() == 1),
        "2001:db8: one inline prefix"
    );
    assert!(
        matches!(slot(0xfd00_cafe), Some(V6Bucket::List(l)) if l.len() == 1),
        "fd00:cafe: one inline /128"
    );
    assert_eq!(slot(0xfd00_dead), Some(&V6Bucket::DenyAll), "fd00:dead::/32: deny-all slot");
    assert_eq!(slot(0xfd00_beef), Some(&V6Bucket::Lpm), "fd00:beef: ten /64s overflow to the trie");
    assert!(
        (0x3fff_0000..=0x3fff_0fffu32).all(|k| slot(k) == Some(&V6Bucket::DenyAll)),
        "3fff::/20: 4096 slots"
    );
    assert_eq!(slot(0x3fff_1000), None, "3fff::/20 ends at 3fff:fff");
}

#[test]
fn golden_cases_in_simulator() {
    let (plan, _) = fixture_plan();
    let mut node = sim_node(&plan);
    let cases = gp::cases();
    let mut failures = Vec::new();
    for case in &cases {
        match run_sim(&mut node, case) {
            Ok(obs) => {
                if let Err(problem) = check(case, &obs) {
                    failures.push(report(case, &problem, Some(&obs)));
                }
            }
            Err(e) => failures.push(report(case, &format!("simulator error: {e}"), None)),
        }
    }
    fail_all("golden prefilter cases in the simulator", cases.len(), &failures);
}

#[test]
fn golden_cases_in_kernel() {
    if !sys::require_kernel("golden_cases_in_kernel") {
        return;
    }
    let (plan, _) = fixture_plan();
    let mut node = sim_node(&plan);
    let loaded = kernel_node(&plan);
    let cases = gp::cases();
    let mut failures = Vec::new();
    let mut not_run = Vec::new();
    for case in &cases {
        let kernel = match run_kernel(&loaded, case) {
            Ok(Some(obs)) => obs,
            Ok(None) => {
                not_run.push(case.packet.len());
                continue;
            }
            Err(e) => {
                failures.push(report(case, &format!("BPF_PROG_TEST_RUN failed: {e}"), None));
                continue;
            }
        };
        if let Err(problem) = check(case, &kernel) {
            failures.push(report(case, &format!("kernel: {problem}"), Some(&kernel)));
        }
        match run_sim(&mut node, case) {
            Ok(sim) if sim != kernel => failures.push(report(
                case,
                &format!("kernel and simulator disagree: simulator {sim}, counters {:?}", sim.counters),
                Some(&kernel),
            )),
            Ok(_) => {}
            Err(e) => failures.push(report(case, &format!("simulator error: {e}"), None)),
        }
    }
    assert!(
        not_run.iter().all(|&len| len < sluice::golden::KERNEL_MIN_FRAME),
        "the kernel skipped frames it can run: {not_run:?}"
    );
    eprintln!(
        "{} golden cases through the kernel; {} not run (frames under {} bytes: {not_run:?})",
        cases.len() - not_run.len(),
        not_run.len(),
        sluice::golden::KERNEL_MIN_FRAME
    );
    fail_all("golden prefilter cases in the kernel", cases.len(), &failures);
}

#[test]
fn prefilter_listing_snapshot() {
    let program = sluice::codegen::prefilter::generate().unwrap_or_else(|e| panic!("{e}"));
    let listing = sluice_asm::text::listing(&program);
    insta::with_settings!({snapshot_path => "../golden/snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("prefilter_listing", listing);
    });
}

// ---- random differential ----

/// Knuth's MMIX LCG; the high bits are the random ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 16
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next() as u32) << 96)
            | (u128::from(self.next() as u32) << 64)
            | (u128::from(self.next() as u32) << 32)
            | u128::from(self.next() as u32)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// An address near or inside a prefix of the set: its edges, just outside them, or a random
/// host inside; sometimes anywhere at all.
fn near4(rng: &mut Lcg, set: &[(u32, u8)]) -> u32 {
    if set.is_empty() || rng.chance(15) {
        return rng.next() as u32;
    }
    let &(addr, len) = rng.pick(set);
    let last = addr | !mask32(len);
    match rng.below(5) {
        0 => addr,
        1 => last,
        2 => addr.wrapping_sub(1),
        3 => last.wrapping_add(1),
        _ => addr | (rng.next() as u32 & !mask32(len)),
    }
}

fn near6(rng: &mut Lcg, set: &[(u128, u8)]) -> u128 {
    if set.is_empty() || rng.chance(15) {
        return rng.u128();
    }
    let &(addr, len) = rng.pick(set);
    let last = addr | !mask128(len);
    match rng.below(5) {
        0 => addr,
        1 => last,
        2 => addr.wrapping_sub(1),
        3 => last.wrapping_add(1),
        _ => addr | (rng.u128() & !mask128(len)),
    }
}

/// A random frame: 0..=3 VLAN tags of either TPID, IPv4 (random options, fragments), IPv6
/// (random extension headers) or another ethertype; sometimes a version or IHL nibble
/// rewritten; often cut short, near a header boundary or anywhere.
fn random_frame(rng: &mut Lcg, v4: &[(u32, u8)], v6: &[(u128, u8)]) -> (String, Vec<u8>) {
    let mut link = PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let depth = match rng.below(10) {
        0..=4 => 0,
        5..=6 => 1,
        7..=8 => 2,
        _ => 3,
    };
    for _ in 0..depth {
        let tpid = if rng.chance(50) { 0x8100 } else { 0x88a8 };
        link = link.vlan_tag(tpid, rng.next() as u16);
    }
    let payload: Vec<u8> = (0..rng.below(48)).map(|_| rng.next() as u8).collect();
    let (what, builder) = match rng.below(10) {
        0..=4 => {
            let src = near4(rng, v4);
            let opts: Vec<u8> = if rng.chance(30) { vec![1; 4 * rng.below(11) as usize] } else { vec![] };
            let mut ip = link.ipv4(Ipv4Addr::from(src), Ipv4Addr::new(192, 168, 1, 1)).ipv4_options(&opts);
            if rng.chance(15) {
                ip = ip.ipv4_fragment(rng.next() as u16, rng.chance(50));
            }
            (format!("ipv4 from {}", Ipv4Addr::from(src)), ip.udp(1, 2).payload(&payload))
        }
        5..=8 => {
            let src = near6(rng, v6);
            let mut ip = link.ipv6(Ipv6Addr::from(src), "fd00::2".parse().expect("literal"));
            for _ in 0..rng.below(3) {
                ip = ip.ipv6_ext(match rng.below(3) {
                    0 => ExtHeader::HopByHop(vec![]),
                    1 => ExtHeader::DestOpts(vec![1, 2, 0, 0]),
                    _ => ExtHeader::Fragment { offset: rng.next() as u16, more: rng.chance(50), id: 1 },
                });
            }
            (format!("ipv6 from {}", Ipv6Addr::from(src)), ip.udp(1, 2).payload(&payload))
        }
        _ => {
            let ethertype = *rng.pick(&[0x0806u16, 0x88cc, 0x8847, 0x9100, 0x0000, 0xffff]);
            (format!("ethertype {ethertype:#06x}"), link.ethertype_raw(ethertype, &payload))
        }
    };
    let mut frame = builder.build();
    let l3 = ETH + TAG * depth;
    let mut name = format!("{what}, {depth} tags");
    if rng.chance(8) && frame.len() > l3 {
        let b = rng.next() as u8;
        frame[l3] = b;
        let _ = write!(name, ", first IP byte {b:#04x}");
    }
    if rng.chance(35) {
        let boundaries = [0, ETH, l3, l3 + IPV4, l3 + IPV6, frame.len()];
        let len = if rng.chance(60) {
            let b = *rng.pick(&boundaries) as i64 + rng.below(3) as i64 - 1;
            b.clamp(0, frame.len() as i64) as usize
        } else {
            rng.below(frame.len() as u64 + 1) as usize
        };
        let _ = write!(name, ", cut at {len} of {}", frame.len());
        frame.truncate(len);
    }
    (name, frame)
}

fn random_count() -> usize {
    std::env::var("SLUICE_GOLDEN_RANDOM").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2_000)
}

const SEED: u64 = 0x5eed_0f51_01ce;

/// The random cases, each expecting what the oracle says.
fn random_cases(set: &DenySet) -> Vec<Case> {
    let v4: Vec<(u32, u8)> = set.v4.iter().copied().collect();
    let v6: Vec<(u128, u8)> = set.v6.iter().copied().collect();
    let mut rng = Lcg(SEED);
    (0..random_count())
        .map(|i| {
            let (name, frame) = random_frame(&mut rng, &v4, &v6);
            let reason = gp::oracle(set, &frame);
            gp::case(format!("random {i}: {name}"), frame, reason)
        })
        .collect()
}

#[test]
fn random_frames_in_simulator_match_the_oracle() {
    let (plan, set) = fixture_plan();
    let mut node = sim_node(&plan);
    let cases = random_cases(&set);
    let mut failures = Vec::new();
    let mut short_refused = Vec::new();
    for case in &cases {
        match run_sim(&mut node, case) {
            Ok(obs) => {
                if let Err(problem) = check(case, &obs) {
                    failures.push(report(case, &problem, Some(&obs)));
                }
            }
            // One cause, many frames: tallied below rather than listed.
            Err(_) if case.packet.len() < ETH => short_refused.push(case.packet.len()),
            Err(e) => failures.push(report(case, &format!("simulator error: {e}"), None)),
        }
    }
    if !short_refused.is_empty() {
        failures.push(format!(
            "the simulator refused {} frames shorter than {ETH} bytes (lengths {:?} ...); only \
             BPF_PROG_TEST_RUN refuses them, the prefilter counts them as truncated_ethernet",
            short_refused.len(),
            &short_refused[..short_refused.len().min(12)]
        ));
    }
    let reasons: BTreeSet<Reason> = cases.iter().filter_map(gp::expected_reason).collect();
    assert_eq!(reasons.len(), Reason::ALL.len(), "random frames reach only {reasons:?}");
    fail_all("random frames in the simulator vs the oracle", cases.len(), &failures);
}

#[test]
fn random_frames_in_kernel_match_the_simulator() {
    if !sys::require_kernel("random_frames_in_kernel_match_the_simulator") {
        return;
    }
    let (plan, set) = fixture_plan();
    let mut node = sim_node(&plan);
    let loaded = kernel_node(&plan);
    let cases = random_cases(&set);
    let mut failures = Vec::new();
    let (mut compared, mut kernel_errors) = (0, 0);
    for case in &cases {
        let kernel = match run_kernel(&loaded, case) {
            Ok(Some(obs)) => obs,
            Ok(None) => continue,
            Err(e) => {
                kernel_errors += 1;
                failures.push(report(case, &format!("BPF_PROG_TEST_RUN failed: {e}"), None));
                continue;
            }
        };
        compared += 1;
        match run_sim(&mut node, case) {
            Ok(sim) if sim != kernel => failures.push(report(
                case,
                &format!("kernel and simulator disagree: simulator {sim}, counters {:?}", sim.counters),
                Some(&kernel),
            )),
            Ok(_) => {}
            Err(e) => failures.push(report(case, &format!("simulator error: {e}"), None)),
        }
    }
    eprintln!("{compared} of {} random frames compared kernel vs simulator", cases.len());
    // Every frame BPF_PROG_TEST_RUN takes was compared, and that is most of them: a
    // generator that went short, or a runner that skipped, cannot pass by comparing nothing.
    let runnable = cases.iter().filter(|c| c.packet.len() >= sluice::golden::KERNEL_MIN_FRAME).count();
    assert_eq!(compared + kernel_errors, runnable, "every frame of at least KERNEL_MIN_FRAME bytes is run");
    assert!(
        compared * 2 >= cases.len() && compared > 0,
        "only {compared} of {} random frames were compared with the kernel",
        cases.len()
    );
    fail_all("random frames, kernel vs simulator", cases.len(), &failures);
}
