//! Every IPv6 /32 slot of the golden prefilter fixture is probed (found by the mutation
//! harness, `tests/mutate.rs`, see TESTING.md: a changed key byte of one `pf_v6_l2` entry
//! went through the suite). The /32 table is a cuckoo hash: a slot's key sits in either
//! bucket, in any of its places, so only probing every key reaches them all. For each /32
//! the table holds, a frame from its first host, a host inside it and its last host must
//! get the verdict the deny set itself gives (`DenySet::denies_v6`, which shares no code
//! with the tables), and a frame from the /32 after it likewise.

use sluice::golden::prefilter::{self as gp};
use sluice::golden::{check, probes, run_sim};
use sluice::maps::prefilter::{Reason, Tables};
use sluice::node::sim::SimNode;

#[test]
fn every_ipv6_slot_of_the_fixture_gives_the_deny_sets_verdict() {
    let cfg = sluice::model::parse_str(gp::FIXTURE, gp::FIXTURE_ORIGIN).unwrap_or_else(|e| panic!("{e}"));
    let plan = sluice::node::plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let set = gp::deny_set(&cfg);
    let tables = Tables::build(&set);
    let mut node = SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"));
    let slots: Vec<u32> = tables.v6.l2.keys().copied().collect();
    assert!(slots.len() > 4096, "the fixture fills more than 3fff::/20's 4096 slots: {}", slots.len());
    let mut failures = Vec::new();
    let mut denied = 0;
    for &slot in &slots {
        let base = u128::from(slot) << 96;
        let next = u128::from(slot.wrapping_add(1)) << 96;
        for addr in [base, base | 0x0123_4567_89ab_cdef_0077, base | ((1u128 << 96) - 1), next] {
            let reason = if set.denies_v6(addr) { Reason::DenyV6 } else { Reason::PassV6 };
            denied += usize::from(reason == Reason::DenyV6);
            let case =
                gp::case(format!("from {}", std::net::Ipv6Addr::from(addr)), probes::udp6(addr), reason);
            match run_sim(&mut node, &case) {
                Ok(obs) => {
                    if let Err(problem) = check(&case, &obs) {
                        failures.push(problem);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", case.name)),
            }
        }
    }
    assert!(denied > 0 && denied < slots.len() * 4, "both verdicts occur ({denied} denied)");
    assert!(
        failures.is_empty(),
        "{} of {} probes differ:\n{}",
        failures.len(),
        slots.len() * 4,
        failures.join("\n")
    );
}
