//! Loading a plan into the kernel: create maps, write their contents, bind map names to
//! descriptors, load programs (the verifier log next to our listing when the kernel says
//! no), and pin everything under one directory; and the live operations on what is
//! pinned there.
//!
//! Pin layout under the pin dir (default [`DEFAULT_PIN_DIR`]): `maps/<map>` and
//! `programs/<program>`. Nothing is pinned until every map is filled and every program
//! loaded, so a failure leaves no half-loaded node behind (DESIGN invariant 8).

use super::{Object, Plan};
use crate::maps::names;
use crate::maps::prefilter::{self, meta, DenySet, LiveError, LiveState, Prefix};
use crate::maps::writes::MapBackend;
use crate::maps::writes::MapWrites;
use crate::maps::MapDef;
use crate::sys::{self, Map, MapKind, MapSpec, ProgSpec, ProgType, SysError, Syscall, UpdateFlags};
use sluice_verifier_sim::spec::{self as sim, ProgKind};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Where `sluice load` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

/// Why loading or a live change failed.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(
        "the kernel verifier rejected program `{name}` ({errno})\n--- verifier log (end) ---\n{log}\n--- our program where the verifier stopped ---\n{listing}"
    )]
    Rejected { name: String, errno: String, log: String, listing: String },
    #[error("program `{name}`: {source}")]
    Relocate {
        name: String,
        #[source]
        source: sluice_asm::RelocateError,
    },
    #[error("program `{name}`: {source}")]
    Encode {
        name: String,
        #[source]
        source: sluice_asm::EncodeError,
    },
    #[error("writing map `{map}`: {source}")]
    Write {
        map: String,
        #[source]
        source: SysError,
    },
    #[error("{}: a node is already loaded here (run `sluice unload` first)", .0.display())]
    AlreadyLoaded(PathBuf),
    #[error("{}: no sluice node is loaded here (run `sluice load NODE.yaml`)", .0.display())]
    NotLoaded(PathBuf),
    #[error("map `{map}` has an unexpected layout: {detail}")]
    Layout { map: String, detail: String },
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error(
        "the change alters code shape (programs added: {added:?}, removed: {removed:?}): it needs new programs, not map updates; run `sluice unload` then `sluice load`"
    )]
    CodeShape { added: Vec<String>, removed: Vec<String> },
    #[error("planning the node: {0}")]
    Plan(String),
    /// Re-deciding the socket layer's accelerated connections after a policy change.
    #[error("socket layer: {0}")]
    SockLayer(String),
    #[error(transparent)]
    Ours(#[from] super::ours::OursError),
    /// `policy.revokeEstablished`: ending the connections a change denies.
    #[error(transparent)]
    Revoke(#[from] super::revoke::RevokeError),
}

/// The kernel map type of a simulator map kind.
pub fn sys_kind(kind: sim::MapKind) -> MapKind {
    match kind {
        sim::MapKind::Hash => MapKind::Hash,
        sim::MapKind::Array => MapKind::Array,
        sim::MapKind::PerCpuHash => MapKind::PerCpuHash,
        sim::MapKind::PerCpuArray => MapKind::PerCpuArray,
        sim::MapKind::LruHash => MapKind::LruHash,
        sim::MapKind::LruPerCpuHash => MapKind::LruPerCpuHash,
        sim::MapKind::LpmTrie => MapKind::LpmTrie,
        sim::MapKind::RingBuf => MapKind::RingBuf,
        sim::MapKind::ProgArray => MapKind::ProgArray,
        sim::MapKind::SockHash => MapKind::SockHash,
    }
}

/// The kernel program type of a program kind.
pub fn prog_type(kind: ProgKind) -> ProgType {
    match kind {
        ProgKind::Xdp => ProgType::Xdp,
        ProgKind::SchedCls => ProgType::SchedCls,
        ProgKind::SockOps => ProgType::SockOps,
        ProgKind::SkMsg => ProgType::SkMsg,
        ProgKind::CgroupSockAddr(_) => ProgType::CgroupSockAddr,
    }
}

/// The kernel spec of a map definition.
pub fn sys_spec(def: &MapDef) -> MapSpec {
    MapSpec::new(def.name, sys_kind(def.kind), def.key_size, def.value_size, def.max_entries)
        .with_flags(def.flags)
}

/// Maps and programs held open by this process.
#[derive(Debug, Default)]
pub struct Loaded {
    pub maps: BTreeMap<&'static str, Map>,
    pub programs: BTreeMap<String, sys::Program>,
}

/// The kernel's maps of a node, by name, as a [`MapBackend`].
struct KernelMaps<'a>(&'a BTreeMap<&'static str, Map>);

impl MapBackend for KernelMaps<'_> {
    type Error = LoadError;
    fn update(
        &mut self,
        map: &'static str,
        keys: &[u8],
        values: &[u8],
        count: usize,
    ) -> Result<(), LoadError> {
        let m = kernel_map(self.0, map)?;
        m.update_batch(keys, values, count, UpdateFlags::ANY)
            .map_err(|source| LoadError::Write { map: map.to_string(), source })
    }
    fn delete(&mut self, map: &'static str, key: &[u8]) -> Result<(), LoadError> {
        kernel_map(self.0, map)?
            .delete(key)
            .map(|_| ())
            .map_err(|source| LoadError::Write { map: map.to_string(), source })
    }
}

fn kernel_map<'m>(maps: &'m BTreeMap<&'static str, Map>, name: &str) -> Result<&'m Map, LoadError> {
    maps.get(name).ok_or_else(|| LoadError::Layout {
        map: name.to_string(),
        detail: "the plan writes a map it does not define".into(),
    })
}

/// Apply writes to the kernel's maps with [`crate::maps::writes::apply_writes`].
pub fn apply_writes(maps: &BTreeMap<&'static str, Map>, writes: &[MapWrites]) -> Result<(), LoadError> {
    crate::maps::writes::apply_writes(&mut KernelMaps(maps), writes)
}

/// Load one object's program against already-created maps.
pub fn load_program(
    sys: &Arc<dyn Syscall>,
    obj: &Object,
    maps: &BTreeMap<&'static str, Map>,
) -> Result<sys::Program, LoadError> {
    load_generated(sys, &obj.name, &obj.program, maps, prog_type(obj.kind), |spec| spec)
}

/// Relocate `program` against `maps` (by name), encode it and load it as a `kind` program
/// (`adjust` adds what the kind needs, e.g. an expected attach type); a verifier rejection
/// carries the end of the kernel's log and our listing around the failing instruction.
/// Every loader of generated code goes through here.
pub fn load_generated(
    sys: &Arc<dyn Syscall>,
    name: &str,
    program: &sluice_asm::Program,
    maps: &BTreeMap<&str, Map>,
    kind: ProgType,
    adjust: impl for<'x> FnOnce(ProgSpec<'x>) -> ProgSpec<'x>,
) -> Result<sys::Program, LoadError> {
    use std::os::fd::AsRawFd;
    let bound = program
        .relocate(|m| maps.get(m).map(|m| m.fd().as_raw_fd()))
        .map_err(|source| LoadError::Relocate { name: name.to_string(), source })?;
    let bytes = bound.encode().map_err(|source| LoadError::Encode { name: name.to_string(), source })?;
    sys::Program::load(sys, &adjust(ProgSpec::new(name, kind, &bytes))).map_err(|e| match e {
        SysError::ProgLoad { name, errno, log } => LoadError::Rejected {
            name,
            errno: errno.to_string(),
            listing: sluice_asm::text::rejection_context(program, &log),
            log: sluice_asm::text::log_tail(&log, 40),
        },
        other => LoadError::Sys(other),
    })
}

/// Create, fill and load everything in a plan, without pinning.
///
/// Maps are created and written first, in the plan's order; then the programs are loaded
/// from one thread per CPU (the verifier is the cost of a node's start: ~20 ms per
/// endpoint program, and loads of different programs do not contend). The first error in
/// plan order is returned; programs already loaded are closed with the rest.
pub fn load_plan(sys: &Arc<dyn Syscall>, plan: &Plan) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for obj in &plan.objects {
        for def in &obj.maps {
            if !loaded.maps.contains_key(def.name) {
                loaded.maps.insert(def.name, Map::create(sys, &sys_spec(def))?);
            }
        }
        apply_writes(&loaded.maps, &obj.writes)?;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let maps = &loaded.maps;
    let mut results: Vec<(usize, Result<sys::Program, LoadError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(plan.objects.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(obj) = plan.objects.get(i) else { break done };
                        done.push((i, load_program(sys, obj, maps)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    for (i, prog) in results {
        loaded.programs.insert(plan.objects[i].name.clone(), prog?);
    }
    fill_tail_slots(&loaded.maps, |name| loaded.programs.get(name), &plan.objects)?;
    Ok(loaded)
}

/// Put each shared program into its program-table slot
/// ([`super::endpoints::tail_slots`]); before any hook is attached, so no stub ever runs
/// with an empty slot. The kernel empties a program array when the last user reference to
/// it goes (its fd and its pin): keep [`Loaded::maps`] (or the pins) as long as the
/// programs run, or every stub drops.
pub fn fill_tail_slots<'p>(
    maps: &BTreeMap<&'static str, Map>,
    programs: impl Fn(&str) -> Option<&'p sys::Program>,
    objects: &[Object],
) -> Result<(), LoadError> {
    use std::os::fd::AsRawFd;
    for (map, index, obj) in super::endpoints::tail_slots(objects) {
        let Some(prog) = programs(&objects[obj].name) else { continue };
        let fd = u32::try_from(prog.fd().as_raw_fd()).expect("file descriptors are non-negative");
        kernel_map(maps, map)?.update(&index.to_le_bytes(), &fd.to_le_bytes(), sys::UpdateFlags::ANY)?;
    }
    Ok(())
}

fn maps_dir(dir: &Path) -> PathBuf {
    dir.join("maps")
}

fn programs_dir(dir: &Path) -> PathBuf {
    dir.join("programs")
}

fn mkdir(path: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(path)
        .map_err(|source| LoadError::Sys(SysError::Io { op: "mkdir", path: path.to_path_buf(), source }))
}

/// `sluice load`: load a plan and pin its maps and programs under `dir`.
///
/// The prefilter program is pinned last: a node is whole once `programs/prefilter` exists.
/// A pin dir without it, and with nothing attached (no link pins, no netlink records), is
/// what a load cut short leaves (a process killed while pinning): it is removed (only ours,
/// see [`unload`]) and the node loaded afresh.
pub fn load_and_pin(sys: &Arc<dyn Syscall>, plan: &Plan, dir: &Path) -> Result<Loaded, LoadError> {
    sys::ensure_bpffs(dir)?;
    if programs_dir(dir).exists() || maps_dir(dir).exists() {
        if !half_pinned(dir) {
            return Err(LoadError::AlreadyLoaded(dir.to_path_buf()));
        }
        match unload(sys, dir) {
            Ok(_) | Err(LoadError::NotLoaded(_)) => {}
            Err(e) => return Err(e),
        }
        sys::ensure_bpffs(dir)?;
    }
    let loaded = load_plan(sys, plan)?;
    mkdir(&maps_dir(dir))?;
    mkdir(&programs_dir(dir))?;
    // On failure, only the pins this call made go (never another writer's).
    let mut made = Vec::new();
    let pinned = (|| -> Result<(), LoadError> {
        for (name, map) in &loaded.maps {
            let path = maps_dir(dir).join(name);
            map.pin(&path)?;
            made.push(path);
        }
        // The prefilter last: its pin says the node is whole.
        let last = crate::codegen::prefilter::NAME;
        let programs = loaded.programs.iter().filter(|(n, _)| n.as_str() != last);
        for (name, prog) in programs.chain(loaded.programs.get_key_value(last)) {
            let path = programs_dir(dir).join(name);
            prog.pin(&path)?;
            made.push(path);
        }
        Ok(())
    })();
    if let Err(e) = pinned {
        for path in &made {
            let _ = sys::unpin(path);
        }
        let _ = std::fs::remove_dir(programs_dir(dir));
        let _ = std::fs::remove_dir(maps_dir(dir));
        return Err(e);
    }
    Ok(loaded)
}

/// Whether `dir` holds what a load cut short leaves: pins, but no prefilter program (pinned
/// last), and nothing attached.
fn half_pinned(dir: &Path) -> bool {
    let nonempty = |p: PathBuf| std::fs::read_dir(p).is_ok_and(|mut e| e.next().is_some());
    !programs_dir(dir).join(crate::codegen::prefilter::NAME).exists()
        && !nonempty(dir.join(super::wire::LINKS_DIR))
        && !nonempty(dir.join(super::socklb::SOCKLB_DIR))
        && !nonempty(dir.join(super::socklayer::SOCKLAYER_DIR))
        && !dir.join(super::wire::NETLINK_RECORDS).exists()
}

/// `sluice unload`: remove every pin under `dir/maps` and `dir/programs`, then the
/// directories. Returns the pins removed.
///
/// Only ours ([`super::ours::survey`]): a `dir` that is not a bpffs pin directory of
/// sluice's, or holds anything but the pins sluice makes (a regular file, a symlink, a pin
/// of the wrong kind), is refused before anything is removed. Symlinks are never followed.
pub fn unload(sys: &Arc<dyn Syscall>, dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if !super::ours::survey(&**sys, dir)? {
        return Err(LoadError::NotLoaded(dir.to_path_buf()));
    }
    let mut removed = Vec::new();
    for sub in [programs_dir(dir), maps_dir(dir)] {
        let entries = match std::fs::read_dir(&sub) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LoadError::Sys(SysError::Io { op: "read_dir", path: sub, source })),
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            sys::unpin(&p)?;
            removed.push(p);
        }
        std::fs::remove_dir(&sub).map_err(|source| SysError::Io {
            op: "rmdir",
            path: sub.clone(),
            source,
        })?;
    }
    if removed.is_empty() {
        return Err(LoadError::NotLoaded(dir.to_path_buf()));
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

/// Open a pinned map and check it has the layout `def` describes (capacity aside).
pub fn open_pinned_map(sys: &Arc<dyn Syscall>, dir: &Path, def: &MapDef) -> Result<Map, LoadError> {
    let path = maps_dir(dir).join(def.name);
    if !path.exists() {
        return Err(LoadError::NotLoaded(dir.to_path_buf()));
    }
    let map = Map::from_pin(sys, &path)?;
    let want = sys_spec(def);
    if map.map_type() != want.kind.type_id()
        || map.key_size() != want.key_size
        || map.value_size() != want.value_size
    {
        return Err(LoadError::Layout {
            map: def.name.to_string(),
            detail: format!(
                "type {} key {} value {}, expected type {} key {} value {}",
                map.map_type(),
                map.key_size(),
                map.value_size(),
                want.kind.type_id(),
                want.key_size,
                want.value_size
            ),
        });
    }
    Ok(map)
}

/// The prefilter's pinned maps, opened and checked.
pub fn open_prefilter(sys: &Arc<dyn Syscall>, dir: &Path) -> Result<BTreeMap<&'static str, Map>, LoadError> {
    let defs =
        prefilter::map_defs(prefilter::Capacity { v4_l2: 1, v4_l3: 1, v6_bits: 1, v6_lpm: 1, cidrs: 1 });
    let mut maps = BTreeMap::new();
    for def in &defs {
        maps.insert(def.name, open_pinned_map(sys, dir, def)?);
    }
    Ok(maps)
}

/// Read access to a map, kernel or simulated, for code that inspects live state.
pub trait MapView {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LoadError>;
    /// Every key.
    fn all_keys(&self) -> Result<Vec<Vec<u8>>, LoadError>;
    /// `max_entries`.
    fn capacity(&self) -> u32;
}

impl MapView for Map {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LoadError> {
        Ok(self.lookup(key)?)
    }
    fn all_keys(&self) -> Result<Vec<Vec<u8>>, LoadError> {
        Ok(self.keys().collect::<Result<Vec<_>, _>>()?)
    }
    fn capacity(&self) -> u32 {
        self.max_entries()
    }
}

impl MapView for sluice_verifier_sim::maps::Map {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LoadError> {
        Ok(self.lookup(key).map(<[u8]>::to_vec))
    }
    fn all_keys(&self) -> Result<Vec<Vec<u8>>, LoadError> {
        Ok(self.keys())
    }
    fn capacity(&self) -> u32 {
        self.spec().max_entries
    }
}

fn view<'a>(
    get: &impl Fn(&str) -> Option<&'a dyn MapView>,
    name: &str,
) -> Result<&'a dyn MapView, LoadError> {
    get(name).ok_or_else(|| LoadError::Layout { map: name.to_string(), detail: "missing".into() })
}

fn read_l1(map: &dyn MapView) -> Result<Vec<u32>, LoadError> {
    Ok(read_words(&map.get(&0u32.to_le_bytes())?.unwrap_or_default()))
}

fn meta_word(meta: &[u8], at: usize) -> u32 {
    meta.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The deny set in `pf_cidrs`: the records of the listing word in `pf_meta` (a count, and
/// which half of `pf_cidrs` holds them).
pub fn prefilter_set_of(cidrs: &dyn MapView, meta: &dyn MapView) -> Result<DenySet, LoadError> {
    let m = meta.get(&0u32.to_le_bytes())?.unwrap_or_default();
    let (count, half) = meta::cidrs_of(meta_word(&m, meta::CIDRS));
    let base = meta::cidrs_base(half, cidrs.capacity());
    if u64::from(base) + u64::from(count) > u64::from(cidrs.capacity()) {
        return Err(LoadError::Layout {
            map: names::PF_META.into(),
            detail: format!(
                "lists {count} prefixes from {base}, past pf_cidrs' {} entries",
                cidrs.capacity()
            ),
        });
    }
    let mut set = DenySet::default();
    for i in base..base + count {
        let record = cidrs.get(&i.to_le_bytes())?.unwrap_or_default();
        let p = Prefix::from_cidr_key(&record).ok_or_else(|| LoadError::Layout {
            map: names::PF_CIDRS.into(),
            detail: format!("malformed record {i}: {record:02x?}"),
        })?;
        set.insert(p);
    }
    Ok(set)
}

/// The deny set in the pinned maps.
pub fn prefilter_set(maps: &BTreeMap<&'static str, Map>) -> Result<DenySet, LoadError> {
    prefilter_set_of(&maps[names::PF_CIDRS], &maps[names::PF_META])
}

/// Everything [`prefilter::live_writes`] needs, read from the prefilter's maps.
pub fn prefilter_live_state_of<'a>(
    get: impl Fn(&str) -> Option<&'a dyn MapView>,
) -> Result<LiveState, LoadError> {
    let set = prefilter_set_of(view(&get, names::PF_CIDRS)?, view(&get, names::PF_META)?)?;
    let m = view(&get, names::PF_META)?.get(&0u32.to_le_bytes())?.unwrap_or_default();
    let mut v6_lpm = BTreeSet::new();
    for k in view(&get, names::PF_V6_LPM)?.all_keys()? {
        if k.len() == 20 {
            let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as u8;
            let mut a = [0u8; 16];
            a.copy_from_slice(&k[4..]);
            v6_lpm.insert((u128::from_be_bytes(a), len));
        }
    }
    let v4_l1 = read_l1(view(&get, names::PF_V4_L1)?)?;
    let (v4_chunks, v4_bitmaps) =
        v4_live_chunks(&v4_l1, view(&get, names::PF_V4_L2)?, view(&get, names::PF_V4_L3)?)?;
    Ok(LiveState {
        set,
        v4_l1,
        v6_l1: read_l1(view(&get, names::PF_V6_L1)?)?,
        v4_l2_live: v4_chunks.keys().copied().collect(),
        v4_l3_live: v4_bitmaps.keys().copied().collect(),
        v4_chunks,
        v4_bitmaps,
        v4_l2_cap: view(&get, names::PF_V4_L2)?.capacity(),
        v4_l3_cap: view(&get, names::PF_V4_L3)?.capacity(),
        v6_conf: meta_word(&m, meta::V6_CONF),
        v6_l2_cap: view(&get, names::PF_V6_L2)?.capacity(),
        v6_lpm,
        v6_lpm_cap: view(&get, names::PF_V6_LPM)?.capacity(),
        cidrs_half: meta::cidrs_of(meta_word(&m, meta::CIDRS)).1,
        cidrs_cap: view(&get, names::PF_CIDRS)?.capacity(),
    })
}

/// The `pf_v4_l2` chunks a level-1 array points at, and the `pf_v4_l3` bitmaps those
/// chunks point at, with their contents.
type Chunks = (BTreeMap<u32, Vec<u32>>, BTreeMap<u32, Vec<u8>>);

fn v4_live_chunks(l1: &[u32], l2: &dyn MapView, l3: &dyn MapView) -> Result<Chunks, LoadError> {
    let mut chunks = BTreeMap::new();
    let mut bitmaps = BTreeMap::new();
    for c in l1.iter().filter(|e| **e >= prefilter::CHILD).map(|e| e - prefilter::CHILD) {
        if chunks.contains_key(&c) || c >= l2.capacity() {
            continue;
        }
        let words = read_words(&l2.get(&c.to_le_bytes())?.unwrap_or_default());
        for j in words.iter().filter(|e| **e >= prefilter::CHILD).map(|e| e - prefilter::CHILD) {
            if !bitmaps.contains_key(&j) && j < l3.capacity() {
                bitmaps.insert(j, l3.get(&j.to_le_bytes())?.unwrap_or_default());
            }
        }
        chunks.insert(c, words);
    }
    Ok((chunks, bitmaps))
}

/// The live half of `pf_v6_l2`, flattened (for [`prefilter::consistency_problems`]).
pub fn v6_live_half_of(l2: &dyn MapView, meta: &dyn MapView) -> Result<Vec<u8>, LoadError> {
    let m = meta.get(&0u32.to_le_bytes())?.unwrap_or_default();
    let conf = meta_word(&m, meta::V6_CONF);
    let bits = (l2.capacity() / 2).max(1).ilog2();
    let base = conf >> 8;
    let mut out = Vec::with_capacity((1usize << bits) * prefilter::V6_BUCKET_BYTES);
    for i in 0..1u32 << bits {
        let v = l2.get(&(base + i).to_le_bytes())?.unwrap_or_default();
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// What in the prefilter's maps disagrees with its listing (see
/// [`prefilter::consistency_problems`]).
pub fn prefilter_problems_of<'a>(
    get: impl Fn(&str) -> Option<&'a dyn MapView>,
) -> Result<Vec<String>, LoadError> {
    let state = prefilter_live_state_of(&get)?;
    let half = v6_live_half_of(view(&get, names::PF_V6_L2)?, view(&get, names::PF_META)?)?;
    Ok(prefilter::consistency_problems(&state, &half))
}

fn read_words(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// [`prefilter_live_state_of`] for pinned kernel maps.
pub fn prefilter_live_state(maps: &BTreeMap<&'static str, Map>) -> Result<LiveState, LoadError> {
    prefilter_live_state_of(|name| maps.get(name).map(|m| m as &dyn MapView))
}

/// What a live prefilter change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub added: usize,
    pub removed: usize,
    pub total: usize,
}

/// `sluice prefilter add|del`: change the pinned deny set in place, map updates only.
pub fn prefilter_change(
    sys: &Arc<dyn Syscall>,
    dir: &Path,
    add: &[Prefix],
    del: &[Prefix],
) -> Result<Change, LoadError> {
    let maps = open_prefilter(sys, dir)?;
    let state = prefilter_live_state(&maps)?;
    let mut new = state.set.clone();
    let added = add.iter().filter(|p| new.insert(**p)).count();
    let removed = del.iter().filter(|p| new.remove(**p)).count();
    let writes = prefilter::live_writes(&state, &new)?;
    apply_writes(&maps, &writes)?;
    Ok(Change { added, removed, total: new.len() })
}
