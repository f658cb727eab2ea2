//! `apply_writes` is one function (`sluice::maps::writes::apply_writes`) with two back
//! ends: the same writes leave the simulator's maps and the kernel's with the same
//! contents, updates applied before deletes.

use sluice::maps::writes::MapWrites;
use sluice::maps::MapDef;
use sluice::node::{load, sim};
use sluice::sys;
use sluice_verifier_sim::maps::MapSet;
use sluice_verifier_sim::spec::MapKind;
use std::collections::BTreeMap;

fn writes() -> Vec<MapWrites> {
    let mut first = MapWrites::new("mw_hash", 4, 8);
    for k in 0u32..6 {
        first.put(&k.to_le_bytes(), &(u64::from(k) * 100).to_le_bytes());
    }
    // A key updated and deleted in the same batch: gone afterwards (deletes come last).
    first.delete(&3u32.to_le_bytes());
    let mut second = MapWrites::new("mw_hash", 4, 8);
    second.put(&3u32.to_le_bytes(), &7u64.to_le_bytes());
    second.put(&4u32.to_le_bytes(), &8u64.to_le_bytes());
    second.delete(&0u32.to_le_bytes());
    vec![first, second]
}

fn expected() -> BTreeMap<Vec<u8>, Vec<u8>> {
    [(1u32, 100u64), (2, 200), (3, 7), (4, 8), (5, 500)]
        .into_iter()
        .map(|(k, v)| (k.to_le_bytes().to_vec(), v.to_le_bytes().to_vec()))
        .collect()
}

fn def() -> MapDef {
    MapDef::of::<u32, u64>("mw_hash", MapKind::Hash, 16, 0)
}

#[test]
fn the_simulator_applies_updates_then_deletes() {
    let mut maps = MapSet::new(&[def().sim_spec()], 1).expect("a map set");
    sim::apply_writes(&mut maps, &writes()).expect("applies");
    let m = maps.get("mw_hash").expect("the map");
    let got: BTreeMap<Vec<u8>, Vec<u8>> =
        m.keys().into_iter().map(|k| (k.clone(), m.lookup(&k).expect("listed").to_vec())).collect();
    assert_eq!(got, expected());
}

#[test]
fn the_kernel_applies_the_same_writes_to_the_same_contents() {
    if !sys::require_kernel("the_kernel_applies_the_same_writes_to_the_same_contents") {
        return;
    }
    let sys = sys::kernel();
    let map = sys::Map::create(&sys, &load::sys_spec(&def())).expect("creates");
    let maps = BTreeMap::from([("mw_hash", map)]);
    load::apply_writes(&maps, &writes()).expect("applies");
    assert_eq!(maps["mw_hash"].entries().expect("reads"), expected());
}
