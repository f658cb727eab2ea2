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
