//! `sluice load` of a changed node file on a loaded node: the difference applied as map
//! updates on the pinned maps, no program reloaded (DESIGN invariant 6).
//!
//! What a map update can express: prefilter prefixes, ipcache entries and identities,
//! policy rules, the enforcement switches of existing endpoints, and services (frontends,
//! backends, their states and weights; ids recovered from the pinned maps stay stable). A change of code shape
//! (an endpoint added or removed, so programs appear or vanish) is refused here with an
//! error that says so ([`super::reshape`] handles it); nothing is written before every
//! check has passed, so a refused update leaves the node as it was (invariant 8).
//! [`map_writes`] computes the writes without applying them, for callers that must check
//! more before writing.
//!
//! Order: children before parents. The policy trie and the IPv6 ipcache get new and changed
//! keys first and lose stale keys last. The IPv4 ipcache's new chunks go to indices past
//! every chunk in use, then the level-1 value flips in one write.

use super::endpoints::{policy_plan, PolicyPlan};
use super::load::{self, apply_writes, open_pinned_map, LoadError};
use super::{prefix_of, Plan};
use crate::maps::lb::{service_writes, CtPurge, LbState};
use crate::maps::names as map;
use crate::maps::policy::{IpcacheV4, IPC_CHILD};
use crate::maps::prefilter::{self, DenySet};
use crate::maps::writes::MapWrites;
use crate::model::NodeConfig;
use crate::sys::{Map, Syscall};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// What an in-place update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Map updates and deletes, per map.
    pub writes: BTreeMap<String, usize>,
    /// Connections ended because the change denies them (`policy.revokeEstablished`).
    pub revoked: Vec<super::revoke::Revoked>,
    /// What went wrong after the writes without undoing them (ending revoked sockets).
    pub warnings: Vec<String>,
}

impl Update {
    /// Total number of element writes.
    pub fn total(&self) -> usize {
        self.writes.values().sum()
    }
}

fn programs_pinned(dir: &Path) -> Result<BTreeSet<String>, LoadError> {
    let sub = dir.join("programs");
    let entries = std::fs::read_dir(&sub).map_err(|_| LoadError::NotLoaded(dir.to_path_buf()))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
}

fn count(w: &[MapWrites], into: &mut Update) {
    for m in w {
        let n = m.updates() + m.deletes.len() / m.key_size.max(1);
        if n > 0 {
            *into.writes.entry(m.map.to_string()).or_default() += n;
        }
    }
}

/// A map's entries as (key, value) bytes.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every (key, value) of a pinned map.
fn contents(map: &Map) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, LoadError> {
    Ok(map.entries()?)
}

/// What this process last wrote to a map only user space writes, by map name: the map's
/// kernel id and its contents after the writes. Reading the `policy` trie back costs two
/// syscalls an entry (an LPM trie has no batch lookup): 5.5 ms of the 33 an endpoint add
/// took on a 100-endpoint node. A mirror is taken only when the writes that produced it
/// all succeeded, and is dropped before any write to its map, so a failed or interrupted
/// update leaves none and the next one reads the map. It is sound because no other
/// process writes these maps while this one may (the node lock: a daemon holds it for
/// its whole life, a command for its own run) and the datapath never writes them; the id
/// tells a recreated map (a reload, a second pin dir) from the one mirrored.
static MIRRORS: std::sync::Mutex<Mirrors> = std::sync::Mutex::new(BTreeMap::new());

/// A map's contents, key → value.
type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// Map name → (map id, contents).
type Mirrors = BTreeMap<&'static str, (u32, Contents)>;

fn mirrors() -> std::sync::MutexGuard<'static, Mirrors> {
    MIRRORS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forget every mirror: the next [`map_writes`] reads every map from the kernel (for a
/// check that must see the kernel's contents, not what this process believes it wrote).
pub fn forget_mirrors() {
    mirrors().clear();
}

/// The map's kernel id and this process's mirror of it, if the mirror is of this very map.
fn mirror_of(name: &'static str, map: &Map) -> Result<(u32, Option<Contents>), LoadError> {
    let id = map.info()?.id;
    let known = mirrors().get(name).filter(|(mid, _)| *mid == id).map(|(_, entries)| entries.clone());
    Ok((id, known))
}

/// [`contents`] from the mirror when it is of this very map.
fn contents_mirrored(name: &'static str, map: &Map) -> Result<(u32, Contents), LoadError> {
    match mirror_of(name, map)? {
        (id, Some(known)) => Ok((id, known)),
        (id, None) => Ok((id, contents(map)?)),
    }
}

/// A mirrored map's contents once `w` is applied to `now`.
fn after_writes(mut now: BTreeMap<Vec<u8>, Vec<u8>>, w: &MapWrites) -> BTreeMap<Vec<u8>, Vec<u8>> {
    for (k, v) in w.keys.chunks_exact(w.key_size).zip(w.values.chunks_exact(w.value_size)) {
        now.insert(k.to_vec(), v.to_vec());
    }
    for k in w.deletes.chunks_exact(w.key_size.max(1)) {
        now.remove(k);
    }
    now
}

/// The writes that turn a pinned hash-like map's contents into `want`: puts, then deletes.
fn diff_writes(name: &'static str, current: &BTreeMap<Vec<u8>, Vec<u8>>, want: &MapWrites) -> MapWrites {
    let mut w =
        MapWrites { map: name, key_size: want.key_size, value_size: want.value_size, ..MapWrites::default() };
    let mut wanted = BTreeSet::new();
    for (k, v) in want.keys.chunks_exact(want.key_size).zip(want.values.chunks_exact(want.value_size)) {
        wanted.insert(k.to_vec());
        if current.get(k).map(Vec::as_slice) != Some(v) {
            w.put(k, v);
        }
    }
    for k in current.keys() {
        if !wanted.contains(k) {
            w.delete(k);
        }
    }
    w
}

fn read_words(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// An ipcache entry with its chunks inlined, to compare contents across chunk numberings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flat {
    Leaf(u32),
    Chunk(Vec<Flat>),
}

fn flatten(e: u32, l2: impl Fn(u32) -> Vec<u32>, l3: impl Fn(u32) -> Vec<u32>) -> Flat {
    if e & IPC_CHILD == 0 {
        return Flat::Leaf(e);
    }
    Flat::Chunk(
        l2(e & !IPC_CHILD)
            .into_iter()
            .map(|e2| {
                if e2 & IPC_CHILD == 0 {
                    Flat::Leaf(e2)
                } else {
                    Flat::Chunk(l3(e2 & !IPC_CHILD).into_iter().map(Flat::Leaf).collect())
                }
            })
            .collect(),
    )
}

/// The IPv4 ipcache writes: the new chunks into chunks the live tables do not point at
/// (the lowest free ones), then the level-1 flip. Chunks a change stops using are free for
/// the next one, so any sequence of changes within capacity keeps working (they used to
/// be appended past the highest chunk in use and never reclaimed: about a hundred changes
/// filled `ipc_v4_l2`).
fn ipc_v4_writes(maps: &BTreeMap<&'static str, Map>, new: &IpcacheV4) -> Result<Vec<MapWrites>, LoadError> {
    let l1_now = read_words(&maps[map::IPC_V4_L1].lookup(&0u32.to_le_bytes())?.unwrap_or_default());
    // The live chunks: those the live level 1 and its level-2 chunks point at.
    let mut l2_now = BTreeMap::new();
    let mut l3_now = BTreeMap::new();
    for e in l1_now.iter().filter(|e| *e & IPC_CHILD != 0) {
        let c2 = e & !IPC_CHILD;
        let chunk = read_words(&maps[map::IPC_V4_L2].lookup(&c2.to_le_bytes())?.unwrap_or_default());
        for e3 in chunk.iter().filter(|e| *e & IPC_CHILD != 0) {
            let c3 = e3 & !IPC_CHILD;
            l3_now
                .insert(c3, read_words(&maps[map::IPC_V4_L3].lookup(&c3.to_le_bytes())?.unwrap_or_default()));
        }
        l2_now.insert(c2, chunk);
    }
    // Unchanged content (whatever the chunk numbering) needs no write.
    let leaf3 = |c: u32| l3_now.get(&c).cloned().unwrap_or_default();
    let flat_now: Vec<Flat> = l1_now
        .iter()
        .map(|&e| flatten(e, |c2| l2_now.get(&c2).cloned().unwrap_or_default(), leaf3))
        .collect();
    let flat_new: Vec<Flat> = new
        .l1
        .iter()
        .map(|&e| flatten(e, |c2| new.l2[c2 as usize].to_vec(), |c3| new.l3[c3 as usize].to_vec()))
        .collect();
    if flat_now == flat_new {
        return Ok(Vec::new());
    }
    let full =
        |map: &'static str, cap: u32| LoadError::Live(prefilter::LiveError::Full { map, capacity: cap });
    let (cap2, cap3) = (maps[map::IPC_V4_L2].max_entries(), maps[map::IPC_V4_L3].max_entries());
    let free = |live: &BTreeMap<u32, Vec<u32>>, cap: u32, n: usize| -> Option<Vec<u32>> {
        let slots: Vec<u32> = (0..cap).filter(|i| !live.contains_key(i)).take(n).collect();
        (slots.len() == n).then_some(slots)
    };
    let slots3 = free(&l3_now, cap3, new.l3.len()).ok_or_else(|| full(map::IPC_V4_L3, cap3))?;
    let slots2 = free(&l2_now, cap2, new.l2.len()).ok_or_else(|| full(map::IPC_V4_L2, cap2))?;
    let place = |e: u32, slots: &[u32]| {
        if e & IPC_CHILD != 0 {
            IPC_CHILD | slots[(e & !IPC_CHILD) as usize]
        } else {
            e
        }
    };
    let words = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let chunk_bytes = std::mem::size_of::<[u32; 256]>();
    let mut l3 = MapWrites::new(map::IPC_V4_L3, 4, chunk_bytes);
    for (c, slot) in new.l3.iter().zip(&slots3) {
        l3.put(&slot.to_le_bytes(), &words(&c[..]));
    }
    let mut l2 = MapWrites::new(map::IPC_V4_L2, 4, chunk_bytes);
    for (c, slot) in new.l2.iter().zip(&slots2) {
        let placed: Vec<u32> = c.iter().map(|e| place(*e, &slots3)).collect();
        l2.put(&slot.to_le_bytes(), &words(&placed));
    }
    let mut l1 = MapWrites::new(map::IPC_V4_L1, 4, std::mem::size_of::<[u32; 65536]>());
    let placed: Vec<u32> = new.l1.iter().map(|e| place(*e, &slots2)).collect();
    l1.put(&0u32.to_le_bytes(), &words(&placed));
    Ok(vec![l3, l2, l1])
}

/// The inlined policy table: rebuilt whole into the idle half of `pol_table`, then one
/// `pol_meta` word flips the programs to it (after the trie's new keys, which overflowing
/// slots send the programs to). Nothing when the live half already holds it.
fn pol_table_writes(
    maps: &BTreeMap<&'static str, Map>,
    pp: &PolicyPlan,
) -> Result<Vec<MapWrites>, LoadError> {
    use crate::maps::policy::{pol_half_writes, pol_meta_writes, policy_table};
    let table = policy_table(&pp.rules);
    let cap = maps[crate::maps::names::POL_TABLE].max_entries();
    let bits = (cap / 2).max(1).ilog2();
    let meta = maps[crate::maps::names::POL_META].lookup(&0u32.to_le_bytes())?.unwrap_or_default();
    let conf = meta.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let live = u32::from((conf >> 8) != 0);
    let full = || {
        LoadError::Live(prefilter::LiveError::Full { map: crate::maps::names::POL_TABLE, capacity: cap / 2 })
    };
    let same = pol_half_writes(&table, bits, live).ok_or_else(full)?;
    let mut unchanged = true;
    for (k, v) in same.keys.chunks_exact(4).zip(same.values.chunks_exact(same.value_size)) {
        if maps[crate::maps::names::POL_TABLE].lookup(k)?.as_deref() != Some(v) {
            unchanged = false;
            break;
        }
    }
    if unchanged {
        return Ok(Vec::new());
    }
    let idle = 1 - live;
    Ok(vec![pol_half_writes(&table, bits, idle).ok_or_else(full)?, pol_meta_writes(bits, idle)])
}

/// Apply a changed node config to the node pinned under `dir`, as map updates only.
pub fn update_pinned(
    sys: &Arc<dyn Syscall>,
    cfg: &NodeConfig,
    plan: &Plan,
    dir: &Path,
) -> Result<Update, LoadError> {
    let pinned = programs_pinned(dir)?;
    let wanted: BTreeSet<String> = plan.objects.iter().map(|o| o.name.clone()).collect();
    if pinned != wanted {
        return Err(LoadError::CodeShape {
            added: wanted.difference(&pinned).cloned().collect(),
            removed: pinned.difference(&wanted).cloned().collect(),
        });
    }
    // Every map the plan uses, opened and checked, before anything is written.
    let mut maps: BTreeMap<&'static str, Map> = BTreeMap::new();
    for obj in &plan.objects {
        for def in &obj.maps {
            if !maps.contains_key(def.name) {
                maps.insert(def.name, open_pinned_map(sys, dir, def)?);
            }
        }
    }
    let mut live = map_writes(cfg, &maps)?;
    let resolved = live.resolved.take();
    let writes = live.apply(&maps)?;
    let mut update = count_writes(&writes);
    let changed = |names: &[&str]| {
        writes.iter().any(|w| names.contains(&w.map) && !(w.keys.is_empty() && w.deletes.is_empty()))
    };
    // A changed verdict input makes every accelerated connection's verdict stale: its
    // messages go to the stack, where the tc programs judge them (issue 11).
    if changed(&super::socklayer::VERDICT_INPUTS) {
        super::socklayer::bump_revision(sys, dir)?;
        // Connections the new policy still allows stay accelerated.
        super::socklayer::restamp(sys, cfg, dir).map_err(|e| LoadError::SockLayer(e.to_string()))?;
    }
    // After the restamp: a denied accelerated connection's messages go to the tc path,
    // where its conntrack entry is then gone. Peer identities (the ipcache) are verdict
    // inputs here too: revocation judges every peer, not only local endpoints.
    if let Some(resolved) =
        resolved.filter(|_| cfg.policy.revoke_established && changed(&super::revoke::VERDICT_INPUTS))
    {
        update.revoked = super::revoke::revoke_denied(cfg, &resolved, &maps)?;
        // The entries are gone, so the connections are ended on the datapath already;
        // failing to abort their sockets too leaves them to time out, which is reported.
        if let Err(e) = super::revoke::destroy_sockets(sys, &update.revoked) {
            update.warnings.push(e.to_string());
        }
    }
    Ok(update)
}

/// What [`apply_writes`] of these writes changes, per map.
pub fn count_writes(writes: &[MapWrites]) -> Update {
    let mut update = Update::default();
    count(writes, &mut update);
    update
}

/// What a live update writes: the map writes, in order, then the `lb_ct` entries to delete
/// (those of removed frontends and backends, found in `lb_ct` once the writes are applied,
/// with [`purge_lb_ct`]).
#[derive(Debug, Clone, Default)]
pub struct LiveWrites {
    pub writes: Vec<MapWrites>,
    pub purge: CtPurge,
    /// Mirrored maps' contents once the writes are applied (see `MIRRORS`).
    mirrors: Vec<(&'static str, u32, Contents)>,
    /// The policy the writes were computed from (`None` without endpoints), for what
    /// judges the datapath's state after them (`policy.revokeEstablished`).
    pub resolved: Option<crate::policy::Resolved>,
}

impl LiveWrites {
    /// Apply the writes, then the purge; the mirrors of the maps written are dropped first
    /// and taken again only if every write succeeded.
    pub fn apply(self, maps: &BTreeMap<&'static str, Map>) -> Result<Vec<MapWrites>, LoadError> {
        {
            let mut m = mirrors();
            for (name, _, _) in &self.mirrors {
                m.remove(name);
            }
        }
        apply_writes(maps, &self.writes)?;
        purge_lb_ct(maps, &self.purge)?;
        let mut m = mirrors();
        for (name, id, entries) in self.mirrors {
            m.insert(name, (id, entries));
        }
        Ok(self.writes)
    }
}

/// Delete the `lb_ct` entries that name a removed frontend or backend: after the writes that
/// removed them, so no entry for them can be made once this has read the map. (A packet
/// that found the old `lb_slot` entry just before its removal may still write one after;
/// such an entry pins its connection to the removed backend until the LRU evicts it.)
pub fn purge_lb_ct(maps: &BTreeMap<&'static str, Map>, purge: &CtPurge) -> Result<(), LoadError> {
    if purge.is_empty() {
        return Ok(());
    }
    for name in CtPurge::MAPS {
        if let Some(ct) = maps.get(name) {
            apply_writes(maps, &[purge.writes(name, ct.entries()?)])?;
        }
    }
    Ok(())
}

/// The writes, in order, that bring `maps` (every map the config's plan uses, open) to the
/// contents `cfg` asks for; nothing is written. A map too small for them is an error
/// ([`prefilter::LiveError::Full`]) naming the map and its capacity.
pub fn map_writes(cfg: &NodeConfig, maps: &BTreeMap<&'static str, Map>) -> Result<LiveWrites, LoadError> {
    let mut purge = CtPurge::default();
    let mut mirrored = Vec::new();
    let mut writes: Vec<MapWrites> = Vec::new();
    let mut resolved_policy = None;

    // The prefilter: the same path as `sluice prefilter add|del`.
    let state = load::prefilter_live_state(maps)?;
    let new_set = DenySet::new(cfg.prefilter.deny.iter().map(prefix_of));
    if new_set != state.set {
        writes.extend(prefilter::live_writes(&state, &new_set)?);
    }

    // Endpoint policy.
    if !cfg.endpoints.is_empty() {
        let resolved = crate::policy::resolve(cfg).map_err(|e| LoadError::Plan(e.to_string()))?;
        let pp: PolicyPlan = policy_plan(cfg, &resolved);
        resolved_policy = Some(resolved);
        let ipc = IpcacheV4::build(&pp.ipcache_v4);
        // Only the maps diffed here (the policy table has its own path, `pol_table_writes`).
        let (v6_want, policy_want, cfg_want) =
            (pp.ipc_v6_writes(), crate::maps::policy::policy_writes(&pp.rules), pp.ep_config_writes());
        writes.extend(ipc_v4_writes(maps, &ipc)?);
        // Each map read once (an entry costs two syscalls), or taken from the mirror of
        // this process's last writes to it.
        let (v6_id, v6_now) =
            contents_mirrored(crate::maps::names::IPC_V6, &maps[crate::maps::names::IPC_V6])?;
        let (policy_id, policy_now) =
            contents_mirrored(crate::maps::names::POLICY, &maps[crate::maps::names::POLICY])?;
        let v6 = diff_writes(crate::maps::names::IPC_V6, &v6_now, &v6_want);
        let policy = diff_writes(crate::maps::names::POLICY, &policy_now, &policy_want);
        for (w, now, cap) in [
            (&v6, &v6_now, maps[crate::maps::names::IPC_V6].max_entries()),
            (&policy, &policy_now, maps[crate::maps::names::POLICY].max_entries()),
        ] {
            let live = now.len() + w.updates();
            if live > cap as usize {
                return Err(LoadError::Live(prefilter::LiveError::Full { map: w.map, capacity: cap }));
            }
        }
        mirrored.push((crate::maps::names::IPC_V6, v6_id, after_writes(v6_now, &v6)));
        mirrored.push((crate::maps::names::POLICY, policy_id, after_writes(policy_now, &policy)));
        let (mut v6_puts, mut v6_dels) = (v6.clone(), v6);
        v6_puts.deletes.clear();
        v6_dels.keys.clear();
        v6_dels.values.clear();
        let (mut pol_puts, mut pol_dels) = (policy.clone(), policy);
        pol_puts.deletes.clear();
        pol_dels.keys.clear();
        pol_dels.values.clear();
        writes.push(v6_puts);
        writes.push(pol_puts);
        writes.extend(pol_table_writes(maps, &pp)?);
        // An array indexed by endpoint number: an endpoint past its end has no slot.
        let ep_cap = maps[crate::maps::names::EP_CONFIG].max_entries();
        if pp.endpoints.iter().any(|e| u32::from(e.index) >= ep_cap) {
            return Err(LoadError::Live(prefilter::LiveError::Full {
                map: crate::maps::names::EP_CONFIG,
                capacity: ep_cap,
            }));
        }
        // An array: its mirror holds the entries written (the others are zero), and a key
        // it lacks is looked up.
        let ep_config = &maps[crate::maps::names::EP_CONFIG];
        let (cfg_id, cfg_known) = mirror_of(crate::maps::names::EP_CONFIG, ep_config)?;
        let mut cfg_known = cfg_known.unwrap_or_default();
        let mut cfg_w = MapWrites { keys: Vec::new(), values: Vec::new(), ..cfg_want.clone() };
        for (k, v) in cfg_want
            .keys
            .chunks_exact(cfg_want.key_size)
            .zip(cfg_want.values.chunks_exact(cfg_want.value_size))
        {
            let now = match cfg_known.get(k) {
                Some(now) => Some(now.clone()),
                None => ep_config.lookup(k)?,
            };
            if now.as_deref() != Some(v) {
                cfg_w.put(k, v);
            }
            cfg_known.insert(k.to_vec(), v.to_vec());
        }
        mirrored.push((crate::maps::names::EP_CONFIG, cfg_id, cfg_known));
        writes.push(cfg_w);
        writes.push(v6_dels);
        writes.push(pol_dels);
    }
    // Services: ids recovered from the pinned maps, so existing frontends and backends
    // keep theirs (connections in `lb_ct` name them); only what differs is written.
    if let (Some(svc), Some(slot), Some(be)) = (
        maps.get(crate::maps::names::LB_SVC),
        maps.get(crate::maps::names::LB_SLOT),
        maps.get(crate::maps::names::LB_BE),
    ) {
        let entries = |m: &Map| -> Result<Entries, LoadError> { Ok(contents(m)?.into_iter().collect()) };
        let state = LbState::recover(&entries(svc)?, &entries(slot)?, &entries(be)?)
            .map_err(|e| LoadError::Plan(format!("services: {e}")))?;
        let (lb, next) =
            service_writes(&cfg.services, &state).map_err(|e| LoadError::Plan(format!("services: {e}")))?;
        purge = CtPurge::between(&state, &next);
        let mut current: BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for w in lb {
            let Some(map) = maps.get(w.map) else { continue };
            if !current.contains_key(w.map) {
                current.insert(w.map, contents(map)?);
            }
            let now = &current[w.map];
            let mut out =
                MapWrites { keys: Vec::new(), values: Vec::new(), deletes: Vec::new(), ..w.clone() };
            for (k, v) in w.keys.chunks_exact(w.key_size).zip(w.values.chunks_exact(w.value_size)) {
                if now.get(k).map(Vec::as_slice) != Some(v) {
                    out.put(k, v);
                }
            }
            for k in w.deletes.chunks_exact(w.key_size) {
                if now.contains_key(k) {
                    out.delete(k);
                }
            }
            // Puts of keys already present (an array's, always) take no room.
            let added = out.keys.chunks_exact(w.key_size).filter(|k| !now.contains_key(*k)).count();
            let live = now.len() + added;
            if live > map.max_entries() as usize {
                return Err(LoadError::Live(prefilter::LiveError::Full {
                    map: w.map,
                    capacity: map.max_entries(),
                }));
            }
            writes.push(out);
        }
    }
    Ok(LiveWrites {
        writes: writes.into_iter().filter(|w| !w.is_empty()).collect(),
        purge,
        mirrors: mirrored,
        resolved: resolved_policy,
    })
}
