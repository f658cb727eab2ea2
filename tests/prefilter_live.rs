//! Live prefilter changes: random add/del sequences applied as map writes (no reload) must
//! leave the program giving exactly the verdicts of the new deny set, in the simulator and,
//! as root, in the kernel; and when the chunk arrays are full the change is refused whole.

use sluice::golden::probes::{udp4, udp6};
use sluice::maps::prefilter::{self, mask128, mask32, DenySet, LiveError, Prefix};
use sluice::node::load::{self, MapView};
use sluice::node::sim::{self, SimNode};
use sluice::node::{prefilter_object, Plan};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random prefix, often inside or around `near` so that changes interact.
fn random_prefix(r: &mut Lcg, near: &DenySet) -> Prefix {
    let v6 = r.below(2) == 0;
    if v6 {
        let base = near.v6.iter().nth(r.below(near.v6.len().max(1) as u64) as usize).map_or(0, |p| p.0);
        let noise = (u128::from(r.next()) << 64) | u128::from(r.next());
        let len = [8u8, 16, 20, 32, 48, 64, 100, 128][r.below(8) as usize];
        let addr = if r.below(2) == 0 { base ^ (noise >> (len as u32 / 2 + 1)) } else { noise };
        Prefix::V6 { addr: addr & mask128(len), len }
    } else {
        let base = near.v4.iter().nth(r.below(near.v4.len().max(1) as u64) as usize).map_or(0, |p| p.0);
        let len = (4 + r.below(29)) as u8;
        let addr =
            if r.below(2) == 0 { base ^ ((r.next() as u32) >> (len / 2 + 1)) } else { r.next() as u32 };
        Prefix::V4 { addr: addr & mask32(len), len }
    }
}

fn probes(sets: &[&DenySet]) -> (Vec<u32>, Vec<u128>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for s in sets {
        for &(a, l) in &s.v4 {
            let last = a | !mask32(l);
            v4.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), a | ((!mask32(l)) & 0x5a5a_5a5a)]);
        }
        for &(a, l) in &s.v6 {
            let last = a | !mask128(l);
            v6.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1)]);
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    (v4, v6)
}

fn plan_for(set: &DenySet) -> Plan {
    Plan { node: "live".into(), objects: vec![prefilter_object(set).expect("generates")] }
}

/// A plan whose IPv4 chunk arrays are small, so that tests can cycle past them quickly.
fn small_plan(set: &DenySet) -> Plan {
    let mut obj = prefilter_object(set).expect("generates");
    let tables = prefilter::Tables::build(set);
    let cap =
        prefilter::Capacity { v4_l2: 16, v4_l3: 256, ..prefilter::Capacity::for_tables(&tables, set.len()) };
    obj.maps = prefilter::map_defs(cap);
    obj.writes = prefilter::initial_writes(set, &tables, cap);
    Plan { node: "live".into(), objects: vec![obj] }
}

fn sim_state(node: &SimNode) -> prefilter::LiveState {
    load::prefilter_live_state_of(|name| node.maps.get(name).map(|m| m as &dyn MapView)).expect("state reads")
}

#[test]
fn random_live_changes_in_the_simulator() {
    let mut r = Lcg(7);
    let mut set = DenySet::default();
    for _ in 0..12 {
        let p = random_prefix(&mut r, &set);
        set.insert(p);
    }
    let plan = plan_for(&set);
    let mut node = SimNode::new(&plan).expect("verifies");
    let mut failures = Vec::new();
    for step in 0..40 {
        let old = set.clone();
        for _ in 0..1 + r.below(4) {
            let p = random_prefix(&mut r, &set);
            set.insert(p);
        }
        for _ in 0..r.below(3) {
            let victim = set.prefixes().nth(r.below(set.len().max(1) as u64) as usize);
            if let Some(p) = victim {
                set.remove(p);
            }
        }
        let state = sim_state(&node);
        assert_eq!(state.set, old, "pf_cidrs holds the deny set");
        let writes = prefilter::live_writes(&state, &set).expect("fits");
        sim::apply_writes(&mut node.maps, &writes).expect("applies");
        let (v4, v6) = probes(&[&old, &set]);
        for a in v4 {
            let got = node.run("prefilter", &udp4(a)).expect("runs").retval;
            let want = if set.denies_v4(a) { 1 } else { 2 };
            if got != want {
                failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv4Addr::from(a)));
            }
        }
        for a in v6 {
            let got = node.run("prefilter", &udp6(a)).expect("runs").retval;
            let want = if set.denies_v6(a) { 1 } else { 2 };
            if got != want {
                failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv6Addr::from(a)));
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong verdicts:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn random_live_changes_in_the_kernel() {
    if !sluice::sys::require_kernel("random_live_changes_in_the_kernel") {
        return;
    }
    let sys = sluice::sys::kernel();
    let mut r = Lcg(11);
    let mut set = DenySet::default();
    for _ in 0..12 {
        let p = random_prefix(&mut r, &set);
        set.insert(p);
    }
    let loaded = load::load_plan(&sys, &plan_for(&set)).expect("loads");
    let prog = &loaded.programs["prefilter"];
    let run = |pkt: &[u8]| prog.test_run(&sluice::sys::TestRunOpts::packet(pkt)).expect("test run").retval;
    let mut failures = Vec::new();
    for step in 0..25 {
        let old = set.clone();
        for _ in 0..1 + r.below(4) {
            let p = random_prefix(&mut r, &set);
            set.insert(p);
        }
        let victim = set.prefixes().nth(r.below(set.len().max(1) as u64) as usize);
        if let Some(p) = victim {
            set.remove(p);
        }
        let state = load::prefilter_live_state(&loaded.maps).expect("state reads");
        assert_eq!(state.set, old);
        let writes = prefilter::live_writes(&state, &set).expect("fits");
        load::apply_writes(&loaded.maps, &writes).expect("applies");
        let (v4, v6) = probes(&[&old, &set]);
        for a in v4 {
            let want = if set.denies_v4(a) { 1 } else { 2 };
            let got = run(&udp4(a));
            if got != want {
                failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv4Addr::from(a)));
            }
        }
        for a in v6 {
            let want = if set.denies_v6(a) { 1 } else { 2 };
            let got = run(&udp6(a));
            if got != want {
                failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv6Addr::from(a)));
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong verdicts:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_change_that_does_not_fit_is_refused_whole() {
    let set = DenySet::new([Prefix::V4 { addr: 0x0a00_0100, len: 24 }]);
    let plan = plan_for(&set);
    let node = SimNode::new(&plan).expect("verifies");
    let state = sim_state(&node);
    // Ten thousand /32s in distinct /16s need ten thousand level-2 chunks: more than the
    // capacity chosen for a one-prefix set.
    let mut big = set.clone();
    for i in 0..10_000u32 {
        big.insert(Prefix::V4 { addr: (i << 16) | 0x0101, len: 32 });
    }
    match prefilter::live_writes(&state, &big) {
        Err(LiveError::Full { map, capacity }) => {
            assert_eq!(map, "pf_v4_l2");
            assert!(capacity < 10_000);
        }
        other => panic!("expected a full map, got {other:?}"),
    }
}

/// The verdicts of the prefilter for every probe of `sets`, against `set` (the reference):
/// one line per wrong verdict.
/// The prefixes in one of `a` and `b` but not both.
fn changed(a: &DenySet, b: &DenySet) -> DenySet {
    DenySet {
        v4: a.v4.symmetric_difference(&b.v4).copied().collect(),
        v6: a.v6.symmetric_difference(&b.v6).copied().collect(),
    }
}

fn wrong_verdicts(
    run: &mut dyn FnMut(&[u8]) -> u32,
    set: &DenySet,
    sets: &[&DenySet],
    step: usize,
) -> Vec<String> {
    let (v4, v6) = probes(sets);
    let mut failures = Vec::new();
    for a in v4 {
        let want = if set.denies_v4(a) { 1 } else { 2 };
        let got = run(&udp4(a));
        if got != want {
            failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv4Addr::from(a)));
        }
    }
    for a in v6 {
        let want = if set.denies_v6(a) { 1 } else { 2 };
        let got = run(&udp6(a));
        if got != want {
            failures.push(format!("step {step}: {} got {got} want {want}", std::net::Ipv6Addr::from(a)));
        }
    }
    failures
}

/// The change sequences of the chunk-reuse tests: `add X; del X` cycled well past the
/// number of `pf_v4_l2` chunks (X alternating between a /24, which takes a level-2 chunk,
/// and a /30, which takes a bitmap too), then random mixed adds and deletes in a few /16s.
fn reuse_steps(base: &DenySet, l2_chunks: u32) -> Vec<DenySet> {
    let mut steps = Vec::new();
    for i in 0..2 * l2_chunks as usize + 20 {
        let x = if i % 2 == 0 {
            Prefix::V4 { addr: 0x0e01_0100, len: 24 }
        } else {
            Prefix::V4 { addr: 0x0e01_0104, len: 30 }
        };
        let mut with = base.clone();
        with.insert(x);
        steps.push(with);
        steps.push(base.clone());
    }
    let mut r = Lcg(99);
    let mut set = base.clone();
    for _ in 0..300 {
        let hi = 0x0e00_0000 | ((r.below(4) as u32) << 16);
        let len = [17u8, 24, 28, 32][r.below(4) as usize];
        let p = Prefix::V4 { addr: (hi | (r.next() as u32 & 0xffff)) & mask32(len), len };
        if !set.remove(p) {
            set.insert(p);
        }
        steps.push(set.clone());
    }
    steps
}

/// "Table memory is reclaimed (free lists or compaction), so any sequence of adds and
/// deletes within capacity keeps working" (issue 16): each change touching a /16 used to
/// append a `pf_v4_l2` chunk that no delete freed, so `add; del` failed with "pf_v4_l2 is
/// full" at cycle 1024 while the set held 2 prefixes.
#[test]
fn add_del_cycles_past_the_chunk_count_keep_working_in_the_simulator() {
    let base = DenySet::new([
        Prefix::V4 { addr: 0x0a01_0000, len: 24 },
        Prefix::V6 { addr: 0x2001_0db8 << 96, len: 48 },
    ]);
    let mut node = SimNode::new(&small_plan(&base)).expect("verifies");
    let l2_chunks = node.maps.get("pf_v4_l2").expect("planned").spec().max_entries;
    let mut failures = Vec::new();
    let mut old = base.clone();
    for (step, set) in reuse_steps(&base, l2_chunks).iter().enumerate() {
        let state = sim_state(&node);
        assert_eq!(state.set, old, "step {step}: pf_cidrs holds the deny set");
        let writes = prefilter::live_writes(&state, set).unwrap_or_else(|e| panic!("step {step}: {e}"));
        sim::apply_writes(&mut node.maps, &writes).expect("applies");
        let mut run = |pkt: &[u8]| node.run("prefilter", pkt).expect("runs").retval as u32;
        failures.extend(wrong_verdicts(&mut run, set, &[&changed(&old, set), &base], step));
        old = set.clone();
    }
    let problems =
        load::prefilter_problems_of(|name| node.maps.get(name).map(|m| m as &dyn MapView)).expect("reads");
    assert!(problems.is_empty(), "tables and listing disagree: {problems:?}");
    assert!(failures.is_empty(), "{} wrong verdicts:\n{}", failures.len(), failures.join("\n"));
}

/// The same in the kernel (`live_writes` is the path of `sluice prefilter add|del` and of
/// daemon applies).
#[test]
fn add_del_cycles_past_the_chunk_count_keep_working_in_the_kernel() {
    if !sluice::sys::require_kernel("add_del_cycles_past_the_chunk_count_keep_working_in_the_kernel") {
        return;
    }
    let sys = sluice::sys::kernel();
    let base = DenySet::new([
        Prefix::V4 { addr: 0x0a01_0000, len: 24 },
        Prefix::V6 { addr: 0x2001_0db8 << 96, len: 48 },
    ]);
    let loaded = load::load_plan(&sys, &small_plan(&base)).expect("loads");
    let prog = &loaded.programs["prefilter"];
    let mut run =
        |pkt: &[u8]| prog.test_run(&sluice::sys::TestRunOpts::packet(pkt)).expect("test run").retval;
    let l2_chunks = loaded.maps["pf_v4_l2"].max_entries();
    let mut failures = Vec::new();
    let mut old = base.clone();
    for (step, set) in reuse_steps(&base, l2_chunks).iter().enumerate() {
        let state = load::prefilter_live_state(&loaded.maps).expect("state reads");
        assert_eq!(state.set, old, "step {step}: pf_cidrs holds the deny set");
        let writes = prefilter::live_writes(&state, set).unwrap_or_else(|e| panic!("step {step}: {e}"));
        load::apply_writes(&loaded.maps, &writes).expect("applies");
        failures.extend(wrong_verdicts(&mut run, set, &[&changed(&old, set), &base], step));
        old = set.clone();
    }
    let problems =
        load::prefilter_problems_of(|name| loaded.maps.get(name).map(|m| m as &dyn MapView)).expect("reads");
    assert!(problems.is_empty(), "tables and listing disagree: {problems:?}");
    assert!(failures.is_empty(), "{} wrong verdicts:\n{}", failures.len(), failures.join("\n"));
}
