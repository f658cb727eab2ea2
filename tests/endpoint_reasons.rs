//! The reason an endpoint program counts (found by the mutation harness, `tests/mutate.rs`,
//! see TESTING.md: `to_ep_1` counting a new IPv6 connection as established went through
//! the suite, which checks verdicts only). `maps::policy::Reason`: "Why an endpoint program
//! reached its verdict. Counted per endpoint in `ep_stats`". For every flow of the policy
//! demo that the oracle allows, the first packet must count exactly one `allow_new` for
//! its endpoint, and its reply through the endpoint's other program exactly one
//! `allow_established`; no other counter of the endpoint moves.

use sluice::golden::probes::{flow_frame, policy_flows, reply_frame};
use sluice::maps::policy::Reason;
use sluice::node::sim::SimNode;
use sluice::policy::{oracle, FlowKey, Verdict};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn endpoint_of(program: &str) -> u32 {
    program
        .rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no endpoint in {program}"))
}

/// The endpoint's `ep_stats` counters (by reason) that are not zero.
fn counters(node: &SimNode, ep: u32) -> BTreeMap<u32, u64> {
    (0..Reason::COUNT)
        .map(|r| (r, node.counter("ep_stats", ep * Reason::COUNT + r)))
        .filter(|(_, v)| *v != 0)
        .collect()
}

fn deltas(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
    after
        .iter()
        .map(|(r, v)| (*r, v - before.get(r).copied().unwrap_or(0)))
        .filter(|(_, d)| *d != 0)
        .collect()
}

#[test]
fn allowed_flows_count_new_then_established() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/policy/demo.yaml");
    let cfg = sluice::model::load_file(std::path::Path::new(path)).expect("the demo fixture parses");
    let plan = sluice::node::plan(&cfg).expect("plans");
    let mut node = SimNode::new(&plan).expect("verifies");
    let world: Vec<IpAddr> =
        ["203.0.113.9", "2001:db8::9"].iter().map(|a| a.parse().expect("literal")).collect();
    let mut sport = 30_000;
    let flows = policy_flows(&cfg, &world, &[53, 80, 443, 5432, 8080, 8089], &mut sport);
    let mut failures = Vec::new();
    let mut checked = (0, 0);
    for p in &flows {
        if !matches!(oracle::decide(&cfg, &p.endpoint, p.direction, &p.key), Ok(Verdict::Allow)) {
            continue;
        }
        let ep = endpoint_of(&p.program);
        let before = counters(&node, ep);
        node.run(&p.program, &flow_frame(&p.key)).expect("runs");
        let got = deltas(&before, &counters(&node, ep));
        let want = BTreeMap::from([(Reason::AllowNew as u32, 1)]);
        if got != want {
            failures
                .push(format!("{} {:?}: first packet counted {got:?}, expected {want:?}", p.program, p.key));
        }
        let k = &p.key;
        let (rs, rd) = match k.proto {
            1 => (k.sport, 0),
            58 => (k.sport, 129),
            _ => (k.dport, k.sport),
        };
        let reply = FlowKey { src: k.dst, dst: k.src, proto: k.proto, sport: rs, dport: rd };
        let other = if p.program.starts_with("to_") {
            p.program.replace("to_ep_", "from_ep_")
        } else {
            p.program.replace("from_ep_", "to_ep_")
        };
        let before = counters(&node, ep);
        node.run(&other, &reply_frame(&reply)).expect("runs");
        let got = deltas(&before, &counters(&node, ep));
        let want = BTreeMap::from([(Reason::AllowEstablished as u32, 1)]);
        if got != want {
            failures.push(format!("{other} reply to {:?}: counted {got:?}, expected {want:?}", p.key));
        }
        if k.src.is_ipv6() {
            checked.1 += 1;
        } else {
            checked.0 += 1;
        }
    }
    assert!(checked.0 > 0 && checked.1 > 0, "allowed IPv4 and IPv6 flows are checked: {checked:?}");
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}
