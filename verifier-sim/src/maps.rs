//! Emulated BPF maps, as user space and as programs see them.
//!
//! Contract: a [`MapSet`] is built from `&[MapSpec]` and a CPU count, validating each spec
//! the way the kernel's `map_alloc_check` does for the kinds we emulate (sizes, LPM
//! `BPF_F_NO_PREALLOC`, ring buffer size a power of two and page aligned). Each [`Map`]
//! then follows the kernel's update/lookup/delete semantics and error numbers:
//!
//! | kind | update | full | delete |
//! |---|---|---|---|
//! | `Hash`, `PerCpuHash`, `SockHash` | `ANY`/`NOEXIST`/`EXIST` (`EEXIST`, `ENOENT`) | `E2BIG` | `ENOENT` if absent |
//! | `LruHash`, `LruPerCpuHash` | same | evicts the least recently used entry | same |
//! | `Array`, `PerCpuArray` | `NOEXIST` → `EEXIST`; index ≥ `max_entries` → `E2BIG` | never | `EINVAL` |
//! | `LpmTrie` | same flags; prefix longer than `8 * (key_size - 4)` → `EINVAL` | `ENOSPC` | exact prefix, `ENOENT` |
//! | `ProgArray` | only `BPF_ANY`; index ≥ `max_entries` → `E2BIG` | never | `ENOENT` if empty |
//! | `RingBuf` | `ENOTSUPP`; programs append records ([`Map::ringbuf_output`]) | `EAGAIN` | `ENOTSUPP` |
//!
//! Per-CPU maps: [`Map::lookup`] and [`Map::update`] act on the current CPU
//! ([`MapSet::set_cpu`]) exactly as a program does (a new element gets the value on the
//! current CPU and zeros on the others); [`Map::lookup_percpu`] and [`Map::update_percpu`]
//! are the syscall's all-CPU view.
//!
//! Addresses: every value has a stable simulated address while its element exists
//! (element `slot` of map `id` on CPU `cpu` lives at
//! `MAP_VALUE_BASE + id * MAP_VALUE_SPAN + slot * ncopies * stride + cpu * stride`, with
//! `stride = round_up(value_size, 8)`), so a program may keep a pointer into a value across
//! helper calls. Each map also has a handle address (what `LD_IMM64` of a map gives).
//!
//! Emulated differently from the kernel, deliberately:
//! - Updating an existing element writes in place (the kernel's non-per-CPU hash and LRU
//!   maps allocate a new element); programs holding the old pointer see the new value.
//! - Once an element is deleted its address is invalid; a program touching it gets a bad
//!   access from the executor (the kernel would read stale, RCU-protected memory).
//! - LRU eviction is exact least-recently-used over updates and program lookups; the
//!   kernel approximates (per-CPU free lists, batched eviction) and may evict other or
//!   more entries. User-space lookups do not refresh recency, as in the kernel.
//! - Iteration order ([`Map::keys`]) is deterministic: sorted key bytes for hashes, index
//!   order for arrays, (prefix length, prefix) for the LPM trie. The kernel's order differs.
//! - LPM trie: an element is identified by its prefix length and the prefix bits; host bits
//!   beyond the prefix are accepted, ignored for matching, and kept as last written (what
//!   the kernel hands back on iteration).
//! - Spin locks (`BPF_F_LOCK`), map-in-map, devmaps and `get_next_key` cursors are not
//!   emulated. `SockHash` is a stub that stores its values (socket cookies or fds) with
//!   hash semantics; programs cannot look into it. `ProgArray` holds indices into the
//!   executor's program table (see `exec`), used by `bpf_tail_call`.
//! - Per-CPU values come back exactly `value_size` bytes long (the syscall pads each to 8).

use crate::spec::{MapKind, MapSpec};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Update flag: create or replace.
pub const BPF_ANY: u64 = crate::uapi::BPF_ANY as u64;
/// Update flag: create only.
pub const BPF_NOEXIST: u64 = crate::uapi::BPF_NOEXIST as u64;
/// Update flag: replace only.
pub const BPF_EXIST: u64 = crate::uapi::BPF_EXIST as u64;
/// Map flag the kernel requires for LPM tries.
pub use crate::uapi::BPF_F_NO_PREALLOC;

/// Address of the first map handle; map `id`'s handle is at `MAP_HANDLE_BASE + id * MAP_HANDLE_SPAN`.
pub const MAP_HANDLE_BASE: u64 = 0x4000_0000;
/// Distance between map handles.
pub const MAP_HANDLE_SPAN: u64 = 0x1000;
/// Address of map 0's value region.
pub const MAP_VALUE_BASE: u64 = 1 << 40;
/// Size of each map's value region.
pub const MAP_VALUE_SPAN: u64 = 1 << 40;

/// `MAX_BPF_STACK`: the kernel's limit on hash key sizes.
const MAX_KEY_SIZE: u32 = 512;
/// `LPM_DATA_SIZE_MAX`.
const LPM_DATA_SIZE_MAX: u32 = 256;
/// `PCPU_MIN_UNIT_SIZE`: the kernel's limit on per-CPU value sizes.
const PCPU_VALUE_MAX: u32 = 32768;
const PAGE_SIZE: u32 = 4096;
/// `BPF_RINGBUF_HDR_SZ`: each record carries an 8-byte header in the buffer.
const RINGBUF_HDR_SZ: usize = 8;

/// Kernel error numbers the map operations return.
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const EFAULT: i32 = 14;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EACCES: i32 = 13;
    pub const ENOTSUPP: i32 = 524;
}

/// Why a map operation failed; [`MapError::errno`] is what the kernel would return.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MapError {
    #[error("no map named `{name}`")]
    NoSuchMap { name: String },
    #[error("map `{name}` is defined twice")]
    DuplicateName { name: String },
    #[error("map `{map}`: {reason}")]
    InvalidSpec { map: String, reason: String },
    #[error("cpu {cpu} does not exist ({ncpus} cpus)")]
    NoSuchCpu { cpu: usize, ncpus: usize },
    #[error("map `{map}`: key is {got} bytes, expected {expected}")]
    KeySize { map: String, expected: usize, got: usize },
    #[error("map `{map}`: value is {got} bytes, expected {expected}")]
    ValueSize { map: String, expected: usize, got: usize },
    #[error("map `{map}`: {got} per-CPU values given, expected {expected}")]
    CpuCount { map: String, expected: usize, got: usize },
    #[error("map `{map}`: flags {flags:#x} are not valid here")]
    BadFlags { map: String, flags: u64 },
    #[error("map `{map}` is full ({max_entries} entries)")]
    Full { map: String, max_entries: u32 },
    #[error("LPM trie `{map}` is full ({max_entries} entries)")]
    NoSpace { map: String, max_entries: u32 },
    #[error("map `{map}`: index {index} is out of range (max_entries {max_entries})")]
    IndexOutOfRange { map: String, index: u32, max_entries: u32 },
    #[error("map `{map}`: the key exists and BPF_NOEXIST was given")]
    Exists { map: String },
    #[error("map `{map}`: no such key")]
    NotFound { map: String },
    #[error("LPM trie `{map}`: prefix length {prefixlen} exceeds {max}")]
    PrefixTooLong { map: String, prefixlen: u32, max: u32 },
    #[error("map `{map}` ({kind:?}): {op} is invalid on this map type")]
    InvalidOp { map: String, kind: MapKind, op: &'static str },
    #[error("map `{map}` ({kind:?}): {op} is not supported")]
    NotSupported { map: String, kind: MapKind, op: &'static str },
    #[error("map `{map}` ({kind:?}) does not hold per-CPU values")]
    NotPerCpu { map: String, kind: MapKind },
    #[error("ring buffer `{map}` has no room for a {len}-byte record")]
    RingBufFull { map: String, len: usize },
}

impl MapError {
    /// The positive errno the kernel reports for this failure.
    pub fn errno(&self) -> i32 {
        use errno::*;
        match self {
            MapError::NoSuchMap { .. } | MapError::NotFound { .. } => ENOENT,
            MapError::Full { .. } | MapError::IndexOutOfRange { .. } => E2BIG,
            MapError::NoSpace { .. } => ENOSPC,
            MapError::Exists { .. } => EEXIST,
            MapError::RingBufFull { .. } => EAGAIN,
            MapError::NotSupported { .. } => ENOTSUPP,
            MapError::DuplicateName { .. }
            | MapError::InvalidSpec { .. }
            | MapError::NoSuchCpu { .. }
            | MapError::KeySize { .. }
            | MapError::ValueSize { .. }
            | MapError::CpuCount { .. }
            | MapError::BadFlags { .. }
            | MapError::PrefixTooLong { .. }
            | MapError::InvalidOp { .. }
            | MapError::NotPerCpu { .. } => EINVAL,
        }
    }
}

/// A set of named maps with a current CPU.
#[derive(Debug, Clone)]
pub struct MapSet {
    maps: Vec<Map>,
    by_name: BTreeMap<String, usize>,
    ncpus: usize,
    cpu: usize,
    /// See [`MapSet::layout`].
    layout: u64,
}

/// The next [`MapSet::layout`].
static NEXT_LAYOUT: AtomicU64 = AtomicU64::new(1);

impl MapSet {
    /// One map per spec, in spec order (which fixes their ids and addresses), on a machine
    /// of `ncpus` CPUs. The current CPU is 0.
    pub fn new(specs: &[MapSpec], ncpus: usize) -> Result<MapSet, MapError> {
        if ncpus == 0 {
            return Err(MapError::NoSuchCpu { cpu: 0, ncpus });
        }
        let mut maps = Vec::with_capacity(specs.len());
        let mut by_name = BTreeMap::new();
        for (id, spec) in specs.iter().enumerate() {
            if by_name.insert(spec.name.clone(), id).is_some() {
                return Err(MapError::DuplicateName { name: spec.name.clone() });
            }
            maps.push(Map::new(spec, ncpus)?);
        }
        Ok(MapSet { maps, by_name, ncpus, cpu: 0, layout: NEXT_LAYOUT.fetch_add(1, Ordering::Relaxed) })
    }

    /// Which maps these are: names, ids, specs, and so every map handle and direct value
    /// address. The same for a set and its clones, different for sets made separately (a
    /// set's maps never change after [`MapSet::new`]), so a program's map references
    /// resolved against one set hold for every set of the same layout.
    pub fn layout(&self) -> u64 {
        self.layout
    }

    /// Number of CPUs.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// The CPU programs run on and per-CPU accesses use.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Switch the current CPU.
    pub fn set_cpu(&mut self, cpu: usize) -> Result<(), MapError> {
        if cpu >= self.ncpus {
            return Err(MapError::NoSuchCpu { cpu, ncpus: self.ncpus });
        }
        self.cpu = cpu;
        for m in &mut self.maps {
            m.cpu = cpu;
        }
        Ok(())
    }

    /// The map named `name`.
    pub fn get(&self, name: &str) -> Option<&Map> {
        self.by_name.get(name).map(|&id| &self.maps[id])
    }

    /// The map named `name`, for updates.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.by_name.get(name).map(|&id| &mut self.maps[id])
    }

    /// The maps in spec order.
    pub fn iter(&self) -> impl Iterator<Item = &Map> {
        self.maps.iter()
    }

    /// The handle address of the map named `name` (what `LD_IMM64` of the map loads).
    pub fn handle_addr(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&id| handle_addr(id))
    }

    /// The address of the value stored under `key`, on the current CPU for per-CPU maps.
    /// Does not refresh LRU recency.
    pub fn value_addr(&self, name: &str, key: &[u8]) -> Option<u64> {
        let id = *self.by_name.get(name)?;
        let slot = self.maps[id].find(key).ok()??;
        Some(self.maps[id].addr_of(id, slot))
    }

    /// The id of the map whose handle is at `addr`.
    pub(crate) fn id_of_handle(&self, addr: u64) -> Option<usize> {
        let off = addr.checked_sub(MAP_HANDLE_BASE)?;
        if off % MAP_HANDLE_SPAN != 0 {
            return None;
        }
        let id = usize::try_from(off / MAP_HANDLE_SPAN).ok()?;
        (id < self.maps.len()).then_some(id)
    }

    /// The map with this id.
    pub(crate) fn by_id(&self, id: usize) -> Option<&Map> {
        self.maps.get(id)
    }

    /// The map with this id, for updates.
    pub(crate) fn by_id_mut(&mut self, id: usize) -> Option<&mut Map> {
        self.maps.get_mut(id)
    }

    /// The id of the map named `name`.
    pub(crate) fn id_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// `bpf_map_lookup_elem` from a program: the address of the value (this CPU's copy for
    /// per-CPU maps), refreshing LRU recency.
    pub(crate) fn prog_lookup(&mut self, id: usize, key: &[u8]) -> Option<u64> {
        let map = self.maps.get_mut(id)?;
        let slot = map.find(key).ok()??;
        if let Store::Table(t) = &mut map.store {
            if map.spec.kind.is_lru() {
                t.touch(slot);
            }
        }
        Some(map.addr_of(id, slot))
    }

    /// The address of `off` into element 0 of the array map `name`, as
    /// `BPF_PSEUDO_MAP_VALUE` gives it. The kernel allows this only for arrays with one
    /// element; so do we.
    pub(crate) fn direct_value_addr(&self, name: &str, off: u32) -> Result<u64, String> {
        let id = self.id_of(name).ok_or_else(|| format!("no map named `{name}`"))?;
        let map = &self.maps[id];
        if map.spec.kind != MapKind::Array || map.spec.max_entries != 1 {
            return Err(format!(
                "map `{name}` is {:?} with {} entries; direct value access needs an array of 1",
                map.spec.kind, map.spec.max_entries
            ));
        }
        if off >= map.spec.value_size {
            return Err(format!("offset {off} is outside the {}-byte value", map.spec.value_size));
        }
        Ok(map.addr_of(id, 0) + u64::from(off))
    }

    /// The bytes `[addr, addr + len)` if they lie inside one live map value.
    pub(crate) fn memory(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let (id, slot, at) = self.place(addr, len)?;
        let cell = self.maps.get_mut(id)?.cell_mut(slot)?;
        cell.get_mut(at..at + len)
    }

    /// [`MapSet::memory`] for reading: the same bytes, without materializing an untouched
    /// array element (it reads as zeros either way).
    pub(crate) fn memory_read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let (id, slot, at) = self.place(addr, len)?;
        let cell = self.maps.get(id)?.cell_read(slot)?;
        cell.get(at..at + len)
    }

    /// Map id, slot and offset into the slot's cell (all copies) of `len` bytes at `addr`,
    /// when they lie inside one value.
    fn place(&self, addr: u64, len: usize) -> Option<(usize, usize, usize)> {
        let rel = addr.checked_sub(MAP_VALUE_BASE)?;
        let id = usize::try_from(rel / MAP_VALUE_SPAN).ok()?;
        let map = self.maps.get(id)?;
        let off = rel % MAP_VALUE_SPAN;
        let stride = map.stride();
        let slot_stride = stride * map.copies() as u64;
        let slot = usize::try_from(off / slot_stride).ok()?;
        let cpu = usize::try_from((off % slot_stride) / stride).ok()?;
        let voff = usize::try_from(off % stride).ok()?;
        let vsize = map.vsize();
        if voff.checked_add(len)? > vsize {
            return None;
        }
        Some((id, slot, cpu * vsize + voff))
    }
}

fn handle_addr(id: usize) -> u64 {
    MAP_HANDLE_BASE + id as u64 * MAP_HANDLE_SPAN
}

impl MapKind {
    fn is_lru(self) -> bool {
        matches!(self, MapKind::LruHash | MapKind::LruPerCpuHash)
    }
}

/// One emulated map.
#[derive(Debug, Clone)]
pub struct Map {
    spec: MapSpec,
    ncpus: usize,
    cpu: usize,
    /// What an untouched array element reads as (all copies); empty for other kinds.
    zero: Vec<u8>,
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    /// Array and per-CPU array: index → all copies, allocated on first write.
    Array(BTreeMap<u32, Vec<u8>>),
    /// Hash kinds, sockhash and the LPM trie.
    Table(Table),
    /// Prog array: index → program index (u32, little endian).
    Progs(BTreeMap<u32, Vec<u8>>),
    RingBuf {
        records: Vec<Vec<u8>>,
        used: usize,
    },
}

/// What an update writes.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    /// The value (on the current CPU, for per-CPU maps).
    One(&'a [u8]),
    /// One value per CPU.
    PerCpu(&'a [&'a [u8]]),
}

impl Map {
    fn new(spec: &MapSpec, ncpus: usize) -> Result<Map, MapError> {
        validate(spec, ncpus)?;
        let store = match spec.kind {
            MapKind::Array | MapKind::PerCpuArray => Store::Array(BTreeMap::new()),
            MapKind::ProgArray => Store::Progs(BTreeMap::new()),
            MapKind::RingBuf => Store::RingBuf { records: Vec::new(), used: 0 },
            MapKind::Hash
            | MapKind::PerCpuHash
            | MapKind::LruHash
            | MapKind::LruPerCpuHash
            | MapKind::LpmTrie
            | MapKind::SockHash => Store::Table(Table::default()),
        };
        let copies = if spec.kind.per_cpu() { ncpus } else { 1 };
        let zero = match spec.kind {
            MapKind::Array | MapKind::PerCpuArray => vec![0; spec.value_size as usize * copies],
            _ => Vec::new(),
        };
        Ok(Map { spec: spec.clone(), ncpus, cpu: 0, zero, store })
    }

    /// The spec this map was made from.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The map's type.
    pub fn kind(&self) -> MapKind {
        self.spec.kind
    }

    /// Number of elements present (`max_entries` for arrays, records for a ring buffer).
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Array(_) => self.spec.max_entries as usize,
            Store::Table(t) => t.index.len(),
            Store::Progs(p) => p.len(),
            Store::RingBuf { records, .. } => records.len(),
        }
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key` (the current CPU's copy for per-CPU maps; the longest matching
    /// prefix for the LPM trie). `None` when absent, or when the key has the wrong size.
    pub fn lookup(&self, key: &[u8]) -> Option<&[u8]> {
        let slot = self.find(key).ok()??;
        let vsize = self.vsize();
        let at = if self.spec.kind.per_cpu() { self.cpu * vsize } else { 0 };
        self.cell(slot).get(at..at + vsize)
    }

    /// Every CPU's copy of the value under `key`, for per-CPU maps.
    pub fn lookup_percpu(&self, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        Some(self.values_percpu(key)?.map(<[u8]>::to_vec).collect())
    }

    /// Every element of an array or per-CPU array in index order, each as all its copies
    /// (CPU 0 first; an element never written reads as zeros), without copying; `None`
    /// for other kinds. One pass over the array, where [`Map::lookup`] per index would
    /// search for each.
    pub fn array_elements(&self) -> Option<impl Iterator<Item = &[u8]> + '_> {
        let Store::Array(cells) = &self.store else { return None };
        let mut written = cells.iter().peekable();
        Some((0..self.spec.max_entries).map(move |index| match written.next_if(|(&at, _)| at == index) {
            Some((_, cell)) => cell.as_slice(),
            None => self.zero.as_slice(),
        }))
    }

    /// [`Map::lookup_percpu`] without copying: every CPU's copy, CPU 0 first.
    pub fn values_percpu(&self, key: &[u8]) -> Option<std::slice::Chunks<'_, u8>> {
        if !self.spec.kind.per_cpu() {
            return None;
        }
        let slot = self.find(key).ok()??;
        Some(self.cell(slot).chunks(self.vsize()))
    }

    /// Create or replace the value under `key` per `flags` (`BPF_ANY`, `BPF_NOEXIST`,
    /// `BPF_EXIST`). For per-CPU maps this writes the current CPU's copy.
    pub fn update(&mut self, key: &[u8], value: &[u8], flags: u64) -> Result<(), MapError> {
        self.write(key, Value::One(value), flags)
    }

    /// Create or replace every CPU's copy of the value under `key` (per-CPU maps only).
    pub fn update_percpu<V: AsRef<[u8]>>(
        &mut self,
        key: &[u8],
        values: &[V],
        flags: u64,
    ) -> Result<(), MapError> {
        if !self.spec.kind.per_cpu() {
            return Err(MapError::NotPerCpu { map: self.spec.name.clone(), kind: self.spec.kind });
        }
        if values.len() != self.ncpus {
            return Err(MapError::CpuCount {
                map: self.spec.name.clone(),
                expected: self.ncpus,
                got: values.len(),
            });
        }
        let refs: Vec<&[u8]> = values.iter().map(AsRef::as_ref).collect();
        self.write(key, Value::PerCpu(&refs), flags)
    }

    /// Remove the element under `key` (for the LPM trie: exactly that prefix).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        self.check_key(key)?;
        let name = &self.spec.name;
        let kind = self.spec.kind;
        match &mut self.store {
            Store::Array(_) => Err(MapError::InvalidOp { map: name.clone(), kind, op: "delete" }),
            Store::RingBuf { .. } => Err(MapError::NotSupported { map: name.clone(), kind, op: "delete" }),
            Store::Progs(p) => {
                let index = u32_key(key);
                if index >= self.spec.max_entries {
                    return Err(MapError::IndexOutOfRange {
                        map: name.clone(),
                        index,
                        max_entries: self.spec.max_entries,
                    });
                }
                p.remove(&index).map(|_| ()).ok_or_else(|| MapError::NotFound { map: name.clone() })
            }
            Store::Table(t) => {
                let ckey = if kind == MapKind::LpmTrie { lpm_key(&self.spec, key)? } else { key.to_vec() };
                t.remove(&ckey).map(|_| ()).ok_or_else(|| MapError::NotFound { map: name.clone() })
            }
        }
    }

    /// The keys present, in a deterministic order (see the module header).
    pub fn keys(&self) -> Vec<Vec<u8>> {
        match &self.store {
            Store::Array(_) => (0..self.spec.max_entries).map(|i| i.to_le_bytes().to_vec()).collect(),
            Store::Progs(p) => p.keys().map(|i| i.to_le_bytes().to_vec()).collect(),
            Store::Table(t) => t.index.values().filter_map(|&s| t.slot(s)).map(|s| s.key.clone()).collect(),
            Store::RingBuf { .. } => Vec::new(),
        }
    }

    /// The records a ring buffer holds, oldest first (empty for other kinds).
    pub fn records(&self) -> &[Vec<u8>] {
        match &self.store {
            Store::RingBuf { records, .. } => records,
            _ => &[],
        }
    }

    /// Consume a ring buffer's records, freeing their space.
    pub fn take_records(&mut self) -> Vec<Vec<u8>> {
        match &mut self.store {
            Store::RingBuf { records, used } => {
                *used = 0;
                std::mem::take(records)
            }
            _ => Vec::new(),
        }
    }

    /// Append a record to a ring buffer, as `bpf_ringbuf_output` does: each record takes
    /// `round_up(len + 8, 8)` bytes of `max_entries` until consumed.
    pub fn ringbuf_output(&mut self, data: &[u8]) -> Result<(), MapError> {
        let capacity = self.spec.max_entries as usize;
        match &mut self.store {
            Store::RingBuf { records, used } => {
                let need = (data.len() + RINGBUF_HDR_SZ).div_ceil(8) * 8;
                if *used + need > capacity {
                    return Err(MapError::RingBufFull { map: self.spec.name.clone(), len: data.len() });
                }
                *used += need;
                records.push(data.to_vec());
                Ok(())
            }
            _ => Err(MapError::InvalidOp {
                map: self.spec.name.clone(),
                kind: self.spec.kind,
                op: "ringbuf_output",
            }),
        }
    }

    // ---- internals ----

    fn vsize(&self) -> usize {
        self.spec.value_size as usize
    }

    /// How many copies of each value exist (CPUs for per-CPU maps, else 1).
    fn copies(&self) -> usize {
        if self.spec.kind.per_cpu() {
            self.ncpus
        } else {
            1
        }
    }

    /// Distance between the addresses of two CPUs' copies.
    fn stride(&self) -> u64 {
        u64::from(self.spec.value_size).div_ceil(8).max(1) * 8
    }

    fn addr_of(&self, id: usize, slot: usize) -> u64 {
        let cpu = if self.spec.kind.per_cpu() { self.cpu } else { 0 };
        MAP_VALUE_BASE
            + id as u64 * MAP_VALUE_SPAN
            + slot as u64 * self.stride() * self.copies() as u64
            + cpu as u64 * self.stride()
    }

    fn check_key(&self, key: &[u8]) -> Result<(), MapError> {
        if key.len() != self.spec.key_size as usize {
            return Err(MapError::KeySize {
                map: self.spec.name.clone(),
                expected: self.spec.key_size as usize,
                got: key.len(),
            });
        }
        Ok(())
    }

    /// The slot holding `key`'s value: the index for arrays, the table slot otherwise
    /// (longest prefix match for the LPM trie).
    fn find(&self, key: &[u8]) -> Result<Option<usize>, MapError> {
        self.check_key(key)?;
        Ok(match &self.store {
            Store::Array(_) => {
                let index = u32_key(key);
                (index < self.spec.max_entries).then_some(index as usize)
            }
            Store::Progs(p) => p.contains_key(&u32_key(key)).then(|| u32_key(key) as usize),
            Store::RingBuf { .. } => None,
            Store::Table(t) if self.spec.kind == MapKind::LpmTrie => {
                let max = lpm_max_prefix(&self.spec);
                let limit = u32_key(&key[..4]).min(max);
                // The canonical key of each candidate prefix, built in place (lookups run
                // per packet and allocate nothing).
                let mut ckey = [0u8; 4 + LPM_DATA_SIZE_MAX as usize];
                let ckey = &mut ckey[..key.len()];
                t.prefix_lens.range(..=limit).rev().find_map(|(&plen, _)| {
                    ckey[..4].copy_from_slice(&plen.to_be_bytes());
                    mask_into(&key[4..], plen, &mut ckey[4..]);
                    t.index.get(&ckey[..]).copied()
                })
            }
            Store::Table(t) => t.index.get(key).copied(),
        })
    }

    /// All copies of the value in `slot` (zeros for an untouched array element).
    fn cell(&self, slot: usize) -> &[u8] {
        match &self.store {
            Store::Array(cells) => cells.get(&(slot as u32)).map(Vec::as_slice).unwrap_or(&self.zero),
            Store::Progs(p) => p.get(&(slot as u32)).map(Vec::as_slice).unwrap_or(&[]),
            Store::Table(t) => t.slot(slot).map(|s| s.data.as_slice()).unwrap_or(&[]),
            Store::RingBuf { .. } => &[],
        }
    }

    /// What [`Map::cell_mut`] would give, for reading: an untouched array element reads
    /// as zeros without being created.
    fn cell_read(&self, slot: usize) -> Option<&[u8]> {
        match &self.store {
            Store::Array(cells) => {
                let index = u32::try_from(slot).ok().filter(|&i| i < self.spec.max_entries)?;
                Some(cells.get(&index).map_or(self.zero.as_slice(), Vec::as_slice))
            }
            Store::Table(t) => t.slot(slot).map(|s| s.data.as_slice()),
            Store::Progs(_) | Store::RingBuf { .. } => None,
        }
    }

    fn cell_mut(&mut self, slot: usize) -> Option<&mut Vec<u8>> {
        let len = self.vsize() * self.copies();
        match &mut self.store {
            Store::Array(cells) => {
                let index = u32::try_from(slot).ok().filter(|&i| i < self.spec.max_entries)?;
                Some(cells.entry(index).or_insert_with(|| vec![0; len]))
            }
            Store::Table(t) => t.slots.get_mut(slot)?.as_mut().map(|s| &mut s.data),
            Store::Progs(_) | Store::RingBuf { .. } => None,
        }
    }

    fn write(&mut self, key: &[u8], value: Value<'_>, flags: u64) -> Result<(), MapError> {
        self.check_key(key)?;
        let name = self.spec.name.clone();
        let kind = self.spec.kind;
        let vsize = self.vsize();
        let copies = self.copies();
        let cpu = self.cpu;
        for v in value.parts() {
            if v.len() != vsize {
                return Err(MapError::ValueSize { map: name, expected: vsize, got: v.len() });
            }
        }
        let max_entries = self.spec.max_entries;
        match &mut self.store {
            Store::RingBuf { .. } => Err(MapError::NotSupported { map: name, kind, op: "update" }),
            Store::Progs(p) => {
                if flags != BPF_ANY {
                    return Err(MapError::BadFlags { map: name, flags });
                }
                let index = u32_key(key);
                if index >= max_entries {
                    return Err(MapError::IndexOutOfRange { map: name, index, max_entries });
                }
                let Value::One(v) = value else {
                    return Err(MapError::NotPerCpu { map: name, kind });
                };
                p.insert(index, v.to_vec());
                Ok(())
            }
            Store::Array(cells) => {
                if flags > BPF_EXIST {
                    return Err(MapError::BadFlags { map: name, flags });
                }
                let index = u32_key(key);
                if index >= max_entries {
                    return Err(MapError::IndexOutOfRange { map: name, index, max_entries });
                }
                if flags == BPF_NOEXIST {
                    return Err(MapError::Exists { map: name });
                }
                let cell = cells.entry(index).or_insert_with(|| vec![0; vsize * copies]);
                value.fill(cell, vsize, cpu);
                Ok(())
            }
            Store::Table(t) => {
                if flags > BPF_EXIST {
                    return Err(MapError::BadFlags { map: name, flags });
                }
                let ckey = if kind == MapKind::LpmTrie { lpm_key(&self.spec, key)? } else { key.to_vec() };
                if let Some(&slot) = t.index.get(&ckey) {
                    if flags == BPF_NOEXIST {
                        return Err(MapError::Exists { map: name });
                    }
                    if let Some(Some(s)) = t.slots.get_mut(slot) {
                        value.fill(&mut s.data, vsize, cpu);
                        s.key = key.to_vec();
                    }
                    if kind.is_lru() {
                        t.touch(slot);
                    }
                    return Ok(());
                }
                if flags == BPF_EXIST {
                    return Err(MapError::NotFound { map: name });
                }
                if t.index.len() >= max_entries as usize {
                    match kind {
                        MapKind::LruHash | MapKind::LruPerCpuHash => t.evict_oldest(),
                        MapKind::LpmTrie => return Err(MapError::NoSpace { map: name, max_entries }),
                        _ => return Err(MapError::Full { map: name, max_entries }),
                    }
                }
                let mut data = vec![0; vsize * copies];
                value.fill(&mut data, vsize, cpu);
                let plen = (kind == MapKind::LpmTrie).then(|| u32_key(&key[..4]));
                t.insert(ckey, key.to_vec(), data, plen);
                Ok(())
            }
        }
    }
}

impl<'a> Value<'a> {
    fn parts(&self) -> Vec<&'a [u8]> {
        match *self {
            Value::One(v) => vec![v],
            Value::PerCpu(vs) => vs.to_vec(),
        }
    }

    /// Write into `cell` (all copies of one value). A one-CPU write into a new element
    /// leaves the other CPUs' copies zero, as the kernel does.
    fn fill(&self, cell: &mut [u8], vsize: usize, cpu: usize) {
        match *self {
            Value::One(v) if cell.len() == vsize => cell.copy_from_slice(v),
            Value::One(v) => cell[cpu * vsize..(cpu + 1) * vsize].copy_from_slice(v),
            Value::PerCpu(vs) => {
                for (chunk, v) in cell.chunks_mut(vsize).zip(vs) {
                    chunk.copy_from_slice(v);
                }
            }
        }
    }
}

/// Elements in stable slots, indexed by canonical key, with LRU bookkeeping.
#[derive(Debug, Clone, Default)]
struct Table {
    /// Canonical key (the key; for the LPM trie, big-endian prefix length and masked
    /// prefix) → slot.
    index: BTreeMap<Vec<u8>, usize>,
    slots: Vec<Option<Slot>>,
    /// Freed slots, reused last-freed first.
    free: Vec<usize>,
    /// Last use → slot (least recently used first).
    recency: BTreeMap<u64, usize>,
    clock: u64,
    /// LPM trie: prefix length → number of elements with it.
    prefix_lens: BTreeMap<u32, usize>,
}

#[derive(Debug, Clone)]
struct Slot {
    ckey: Vec<u8>,
    /// The key as last written.
    key: Vec<u8>,
    /// All copies of the value.
    data: Vec<u8>,
    last_used: u64,
    prefix_len: Option<u32>,
}

impl Table {
    fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)?.as_ref()
    }

    fn touch(&mut self, slot: usize) {
        self.clock += 1;
        let now = self.clock;
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            self.recency.remove(&s.last_used);
            s.last_used = now;
            self.recency.insert(now, slot);
        }
    }

    fn insert(&mut self, ckey: Vec<u8>, key: Vec<u8>, data: Vec<u8>, prefix_len: Option<u32>) -> usize {
        self.clock += 1;
        let s = Slot { ckey: ckey.clone(), key, data, last_used: self.clock, prefix_len };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(s);
                i
            }
            None => {
                self.slots.push(Some(s));
                self.slots.len() - 1
            }
        };
        self.index.insert(ckey, slot);
        self.recency.insert(self.clock, slot);
        if let Some(p) = prefix_len {
            *self.prefix_lens.entry(p).or_default() += 1;
        }
        slot
    }

    fn remove(&mut self, ckey: &[u8]) -> Option<usize> {
        let slot = self.index.remove(ckey)?;
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::take) {
            self.recency.remove(&s.last_used);
            if let Some(p) = s.prefix_len {
                if let Some(n) = self.prefix_lens.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefix_lens.remove(&p);
                    }
                }
            }
        }
        self.free.push(slot);
        Some(slot)
    }

    fn evict_oldest(&mut self) {
        let oldest = self.recency.values().next().and_then(|&s| self.slot(s)).map(|s| s.ckey.clone());
        if let Some(ckey) = oldest {
            self.remove(&ckey);
        }
    }
}

/// A little-endian `u32` from the first four bytes of `key` (arrays, prog arrays, LPM
/// prefix lengths). Keys are size-checked before this runs.
fn u32_key(key: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(key) {
        *d = *s;
    }
    u32::from_le_bytes(b)
}

fn lpm_max_prefix(spec: &MapSpec) -> u32 {
    8 * (spec.key_size - 4)
}

/// The canonical key of an LPM trie element: prefix length (big endian, so that keys sort
/// by length) and the prefix with host bits cleared.
fn lpm_key(spec: &MapSpec, key: &[u8]) -> Result<Vec<u8>, MapError> {
    let prefixlen = u32_key(&key[..4]);
    let max = lpm_max_prefix(spec);
    if prefixlen > max {
        return Err(MapError::PrefixTooLong { map: spec.name.clone(), prefixlen, max });
    }
    let mut ckey = prefixlen.to_be_bytes().to_vec();
    ckey.extend_from_slice(&masked(&key[4..], prefixlen));
    Ok(ckey)
}

/// `data` with every bit after the first `prefixlen` cleared.
fn masked(data: &[u8], prefixlen: u32) -> Vec<u8> {
    let mut out = vec![0; data.len()];
    mask_into(data, prefixlen, &mut out);
    out
}

/// [`masked`] into `out` (as long as `data`).
fn mask_into(data: &[u8], prefixlen: u32, out: &mut [u8]) {
    for (i, (o, &b)) in out.iter_mut().zip(data).enumerate() {
        let start = i as u32 * 8;
        *o = if prefixlen >= start + 8 {
            b
        } else if prefixlen <= start {
            0
        } else {
            b & (0xffu8 << (8 - (prefixlen - start)))
        };
    }
}

/// The kernel's creation checks for the kinds we emulate.
fn validate(spec: &MapSpec, ncpus: usize) -> Result<(), MapError> {
    let bad = |reason: String| Err(MapError::InvalidSpec { map: spec.name.clone(), reason });
    let (k, v, n) = (spec.key_size, spec.value_size, spec.max_entries);
    if spec.kind != MapKind::RingBuf && n == 0 {
        return bad("max_entries is 0".into());
    }
    if spec.kind.per_cpu() && v > PCPU_VALUE_MAX {
        return bad(format!("per-CPU value_size {v} exceeds {PCPU_VALUE_MAX}"));
    }
    match spec.kind {
        MapKind::Hash | MapKind::PerCpuHash | MapKind::LruHash | MapKind::LruPerCpuHash => {
            if k == 0 || k > MAX_KEY_SIZE || v == 0 {
                return bad(format!("key_size {k} must be 1..={MAX_KEY_SIZE} and value_size {v} non-zero"));
            }
        }
        MapKind::Array | MapKind::PerCpuArray => {
            if k != 4 || v == 0 {
                return bad(format!("key_size {k} must be 4 and value_size {v} non-zero"));
            }
        }
        MapKind::LpmTrie => {
            if !(5..=4 + LPM_DATA_SIZE_MAX).contains(&k) || v == 0 {
                return bad(format!(
                    "key_size {k} must be 5..={} and value_size {v} non-zero",
                    4 + LPM_DATA_SIZE_MAX
                ));
            }
            if spec.flags & BPF_F_NO_PREALLOC == 0 {
                return bad("LPM tries need BPF_F_NO_PREALLOC".into());
            }
        }
        MapKind::RingBuf => {
            if k != 0 || v != 0 {
                return bad(format!("key_size {k} and value_size {v} must be 0"));
            }
            if !n.is_power_of_two() || n % PAGE_SIZE != 0 {
                return bad(format!("size {n} must be a power of two and a multiple of {PAGE_SIZE}"));
            }
        }
        MapKind::ProgArray => {
            if k != 4 || v != 4 {
                return bad(format!("key_size {k} and value_size {v} must be 4"));
            }
        }
        MapKind::SockHash => {
            if k == 0 || k > MAX_KEY_SIZE || !(v == 4 || v == 8) {
                return bad(format!("key_size {k} must be 1..={MAX_KEY_SIZE} and value_size {v} 4 or 8"));
            }
        }
    }
    let copies = if spec.kind.per_cpu() { ncpus as u64 } else { 1 };
    let span = u64::from(v).div_ceil(8).max(1) * 8 * copies * u64::from(n);
    if span > MAP_VALUE_SPAN {
        return bad(format!("{n} entries of {v} bytes on {copies} cpus exceed the emulated address range"));
    }
    Ok(())
}
