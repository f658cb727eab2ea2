//! Every lookup path of the prefilter's IPv6 tables (`src/maps/prefilter.rs`), reached on
//! purpose and shown to be reached: the cases are computed from the table layout, and each
//! test first checks, in the loaded maps, that its addresses really sit where the path
//! under test reads them, so a change of fixture or layout cannot quietly stop reaching a
//! path.
//!
//! - Inline prefixes (`SLOT_ONE`) of every length /33../128, each alone in its /32: the
//!   first and last address, the addresses just outside, the neighbour prefix that differs
//!   in the last prefix bit, and an address inside with only the lowest bit set. The
//!   lengths cover both halves of the inline mask (`MASK_HI`: bits 32..96, `MASK_LO`:
//!   bits 96..128) and the boundary between them.
//! - The second cuckoo bucket: every /32 key the layout puts in its second bucket (bucket
//!   `h1`, with `h0 != h1`), found there in the loaded `pf_v6_l2` and absent from `h0`, is
//!   probed; among them deny-all and inline slots.
//! - The LPM overflow: a /32 with more prefixes than a slot holds inline (`SLOT_LPM`) and a
//!   /16 too wide to expand (level-1 `V6_LPM`).
//!
//! Expectations come from `DenySet::denies_v6` (a prefix-by-prefix containment check that
//! shares nothing with the tables), never from the tables themselves. Every case runs in
//! the simulator and, when the kernel gate allows, through `BPF_PROG_TEST_RUN`.

use sluice::golden::prefilter as gp;
use sluice::golden::probes::udp6;
use sluice::golden::{check, run_kernel, run_sim, Case};
use sluice::maps::prefilter::{
    mask128, meta, slot, v6_bucket_of, DenySet, Reason, Tables, V6Bucket, SLOT_DENY_ALL, SLOT_LPM, SLOT_ONE,
    V6_BUCKET_BYTES, V6_HASH, V6_LIST, V6_LPM, V6_SLOTS,
};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{self, Plan};
use sluice::sys;
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

/// A bit pattern with ones and zeros in every 32-bit word, cut to each prefix length.
const PATTERN: u128 = 0x0000_0000_a5a5_5a5a_c3c3_3c3c_9696_6969;

/// The /16 the inline prefixes live in: prefix /L sits in the /32 `4a01:00LL::/32`. It
/// sorts after the /20's keys, so the layout places the inline slots last, into a table
/// where some of their first buckets are fuller than their second.
const INLINE_TOP: u128 = 0x4a01 << 112;

/// The inline prefix of length `len`: its own /32, then `PATTERN` cut to `len`.
fn inline_prefix(len: u8) -> (u128, u8) {
    let addr = INLINE_TOP | (u128::from(len) << 96) | PATTERN;
    (addr & mask128(len), len)
}

/// The fixture: inline prefixes of every length /33../128, a /20 that expands to 4096
/// deny-all /32 keys (enough keys that many sit in their second bucket), a /32 with more
/// prefixes than a slot holds inline, and a /16 too wide to expand.
fn fixture() -> String {
    let mut deny: Vec<String> = (33..=128u8)
        .map(|len| {
            let (a, l) = inline_prefix(len);
            format!("\"{}/{l}\"", Ipv6Addr::from(a))
        })
        .collect();
    deny.push("\"3fff::/20\"".into());
    for i in 0..=V6_LIST as u16 {
        deny.push(format!("\"fd00:beef:0:{i:x}::/64\""));
    }
    deny.push("\"3ffe:8000::/17\"".into());
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: prefilter-paths}}\nspec:\n  prefilter:\n    deny:\n{}",
        deny.iter().map(|d| format!("      - {d}\n")).collect::<String>()
    )
}

struct Rig {
    set: DenySet,
    tables: Tables,
    sim: SimNode,
    kernel: Option<Loaded>,
}

impl Rig {
    fn new(test: &str) -> Rig {
        let cfg =
            sluice::model::parse_str(&fixture(), "prefilter-paths.yaml").unwrap_or_else(|e| panic!("{e}"));
        let plan: Plan = node::plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let set = gp::deny_set(&cfg);
        let tables = Tables::build(&set);
        let sim = SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"));
        let kernel = sys::require_kernel(test)
            .then(|| load_plan(&sys::kernel(), &plan).unwrap_or_else(|e| panic!("loading: {e}")));
        Rig { set, tables, sim, kernel }
    }

    /// (shift, base bucket) of the live half of `pf_v6_l2`, from the loaded `pf_meta`.
    fn v6_conf(&self) -> (u32, u32) {
        let m =
            self.sim.maps.get("pf_meta").expect("pf_meta").lookup(&0u32.to_le_bytes()).expect("element 0");
        let conf = u32::from_le_bytes(m[meta::V6_CONF..meta::V6_CONF + 4].try_into().expect("4 bytes"));
        (conf & 0xff, conf >> 8)
    }

    /// Table bits of one half.
    fn bits(&self) -> u32 {
        32 - self.v6_conf().0
    }

    /// The state of `key`'s slot in loaded bucket `bucket` (of the live half), if it is there.
    fn slot_state(&self, key: u32, bucket: u32) -> Option<u32> {
        let base = self.v6_conf().1;
        let value = self
            .sim
            .maps
            .get("pf_v6_l2")
            .expect("pf_v6_l2")
            .lookup(&(base + bucket).to_le_bytes())
            .expect("bucket in range");
        assert_eq!(value.len(), V6_BUCKET_BYTES);
        (0..V6_SLOTS).find_map(|s| {
            let at = s * slot::SIZE;
            let word =
                |off: usize| u32::from_le_bytes(value[at + off..at + off + 4].try_into().expect("4 bytes"));
            (word(slot::KEY) == key && word(slot::STATE) != 0).then(|| word(slot::STATE))
        })
    }

    /// The case for a probe from `src`, expecting what the deny set says.
    fn case(&self, what: &str, src: u128) -> Case {
        let reason = if self.set.denies_v6(src) { Reason::DenyV6 } else { Reason::PassV6 };
        gp::case(format!("{what}: from {}", Ipv6Addr::from(src)), udp6(src), reason)
    }

    /// Run every case in the simulator and the kernel; panics listing every failure.
    fn run(&mut self, what: &str, cases: &[Case]) {
        let mut failures = Vec::new();
        let mut kernel_runs = 0;
        for case in cases {
            match run_sim(&mut self.sim, case) {
                Ok(obs) => {
                    if let Err(e) = check(case, &obs) {
                        failures.push(format!("simulator, `{}`: {e}", case.name));
                    }
                }
                Err(e) => failures.push(format!("simulator, `{}`: {e}", case.name)),
            }
            if let Some(k) = &self.kernel {
                match run_kernel(k, case) {
                    Ok(Some(obs)) => {
                        kernel_runs += 1;
                        if let Err(e) = check(case, &obs) {
                            failures.push(format!("kernel, `{}`: {e}", case.name));
                        }
                    }
                    Ok(None) => failures.push(format!("kernel, `{}`: frame not run", case.name)),
                    Err(e) => failures.push(format!("kernel, `{}`: {e}", case.name)),
                }
            }
        }
        if self.kernel.is_some() {
            assert_eq!(kernel_runs, cases.len(), "{what}: every case ran in the kernel");
        }
        let shown = failures.len().min(30);
        assert!(
            failures.is_empty(),
            "{what}: {} failures (simulator and kernel) over {} cases (first {shown}):\n{}",
            failures.len(),
            cases.len(),
            failures[..shown].join("\n")
        );
    }
}

/// The /32 key (address bits 0..32) of an address.
fn key_of(a: u128) -> u32 {
    (a >> 96) as u32
}

#[test]
fn inline_prefixes_of_every_length_match_exactly_their_addresses() {
    let mut rig = Rig::new("inline_prefixes_of_every_length_match_exactly_their_addresses");
    let bits = rig.bits();
    let mut cases = Vec::new();
    for len in 33..=128u8 {
        let (net, _) = inline_prefix(len);
        let key = key_of(net);
        // The path: the /16 continues in the cuckoo table, and the /32 holds this one
        // prefix inline, in one of its two buckets of the loaded map.
        assert_eq!(rig.tables.v6.l1[(net >> 112) as usize], V6_HASH, "/{len}: level-1 entry");
        assert_eq!(
            rig.tables.v6.l2.get(&key),
            Some(&V6Bucket::List(vec![(net, len)])),
            "/{len}: slot content"
        );
        let state = [0, 1].iter().find_map(|&h| rig.slot_state(key, v6_bucket_of(key, h, bits)));
        assert_eq!(state, Some(SLOT_ONE), "/{len}: an inline slot in the loaded pf_v6_l2");

        let last = net | !mask128(len);
        let host_bit = if len < 128 { net | 1 } else { net };
        let neighbour = net ^ (1u128 << (128 - u32::from(len)));
        for (what, a) in [
            ("first", net),
            ("last", last),
            ("lowest host bit", host_bit),
            ("just below", net.wrapping_sub(1)),
            ("just above", last.wrapping_add(1)),
            ("neighbour prefix", neighbour),
            ("neighbour's last", neighbour | !mask128(len)),
        ] {
            cases.push(rig.case(&format!("/{len} {what}"), a));
        }
    }
    let denied = cases.iter().filter(|c| gp::expected_reason(c) == Some(Reason::DenyV6)).count();
    // Every length contributes its first, last and lowest-host-bit addresses as denied
    // and its two neighbours as passed.
    assert!(denied >= 96 * 2 && cases.len() - denied >= 96 * 3, "{denied} of {} denied", cases.len());
    rig.run("inline prefixes", &cases);
}

#[test]
fn keys_in_their_second_cuckoo_bucket_are_found_there() {
    let mut rig = Rig::new("keys_in_their_second_cuckoo_bucket_are_found_there");
    let bits = rig.bits();
    let mut second: Vec<(u32, u32)> = Vec::new();
    for (&key, bucket) in &rig.tables.v6.l2 {
        let (h0, h1) = (v6_bucket_of(key, 0, bits), v6_bucket_of(key, 1, bits));
        if h0 == h1 {
            continue;
        }
        match (rig.slot_state(key, h0), rig.slot_state(key, h1)) {
            (None, Some(state)) => {
                let want = match bucket {
                    V6Bucket::DenyAll => SLOT_DENY_ALL,
                    V6Bucket::List(l) if l.len() == 1 => SLOT_ONE,
                    _ => SLOT_LPM,
                };
                assert_eq!(state, want, "key {key:#010x}: slot state");
                second.push((key, state));
            }
            (Some(_), None) => {}
            other => panic!("key {key:#010x} in neither or both buckets: {other:?}"),
        }
    }
    let kinds: BTreeSet<u32> = second.iter().map(|&(_, s)| s).collect();
    eprintln!(
        "{} of {} /32 keys sit in their second bucket; slot states {kinds:?}",
        second.len(),
        rig.tables.v6.l2.len()
    );
    assert!(second.len() >= 50, "only {} keys in their second bucket", second.len());
    assert!(
        kinds.contains(&SLOT_DENY_ALL) && kinds.contains(&SLOT_ONE),
        "deny-all and inline slots: {kinds:?}"
    );

    let mut cases = Vec::new();
    for &(key, _) in &second {
        let first = u128::from(key) << 96;
        let last = first | !mask128(32);
        cases.push(rig.case(&format!("second bucket {key:#010x}, first of the /32"), first));
        cases.push(rig.case(&format!("second bucket {key:#010x}, last of the /32"), last));
        if let Some(V6Bucket::List(l)) = rig.tables.v6.l2.get(&key) {
            for &(net, len) in l {
                cases.push(rig.case(&format!("second bucket {key:#010x}, /{len} first"), net));
                cases.push(rig.case(&format!("second bucket {key:#010x}, /{len} last"), net | !mask128(len)));
            }
        }
    }
    let denied = cases.iter().filter(|c| gp::expected_reason(c) == Some(Reason::DenyV6)).count();
    assert!(denied >= second.len(), "every second-bucket key has a denied probe: {denied}");
    rig.run("second cuckoo bucket", &cases);
}

#[test]
fn overflowing_slots_and_wide_sixteens_go_to_the_lpm_trie() {
    let mut rig = Rig::new("overflowing_slots_and_wide_sixteens_go_to_the_lpm_trie");
    let bits = rig.bits();
    // The path: fd00:beef has one prefix more than a slot holds, so its slot says LPM;
    // 3ffe::/16 is too wide to expand, so its level-1 entry says LPM.
    let beef = 0xfd00_beef_u32;
    assert_eq!(rig.tables.v6.l2.get(&beef), Some(&V6Bucket::Lpm));
    let state = [0, 1].iter().find_map(|&h| rig.slot_state(beef, v6_bucket_of(beef, h, bits)));
    assert_eq!(state, Some(SLOT_LPM), "the loaded slot of fd00:beef::/32");
    assert_eq!(rig.tables.v6.l1[0x3ffe], V6_LPM);
    let trie = rig.sim.maps.get("pf_v6_lpm").expect("pf_v6_lpm").keys().len();
    assert!(trie > V6_LIST + 1, "the trie holds the overflowing prefixes: {trie} keys");

    let mut cases = Vec::new();
    let mut probe = |what: &str, net: u128, len: u8| {
        let last = net | !mask128(len);
        for (w, a) in
            [("first", net), ("last", last), ("below", net.wrapping_sub(1)), ("above", last.wrapping_add(1))]
        {
            cases.push(rig.case(&format!("{what} {w}"), a));
        }
    };
    for i in 0..=V6_LIST as u128 {
        probe(&format!("fd00:beef:0:{i:x}::/64"), (0xfd00_beef_u128 << 96) | (i << 64), 64);
    }
    probe("3ffe:8000::/17", 0x3ffe_8000_u128 << 96, 17);
    rig.run("LPM overflow", &cases);
}
