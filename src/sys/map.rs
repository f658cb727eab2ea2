//! Maps: create, adopt from a pin, and the element commands.
//!
//! Contract:
//! - A [`Map`] owns its file descriptor and the seam it was made with; dropping it closes
//!   the fd (a pinned map lives on in bpffs).
//! - Every buffer handed to the kernel is at least as large as what the kernel reads or
//!   writes for that map type, checked before the call: keys must be exactly `key_size`;
//!   values exactly `value_size`; per-CPU values are `round_up(value_size, 8)` bytes per
//!   possible CPU. A wrong length is [`SysError::Invalid`] and nothing reaches the kernel.
//! - `lookup` answers `None` for a missing key (`ENOENT`); `delete` answers whether the key
//!   was there. Iteration follows `BPF_MAP_GET_NEXT_KEY` from a NULL key.
//! - `update_batch` sends chunks of [`BATCH_CHUNK`] elements through
//!   `BPF_MAP_UPDATE_BATCH`; when the kernel has no batch op for the map type
//!   (`EINVAL`/`ENOTSUPP`/`EOPNOTSUPP`, e.g. LPM tries) it finishes element by element.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use super::attr::{
    obj_name_bytes, ptr_u64, sanitize_obj_name, Attr, MapBatchAttr, MapCreateAttr, MapElemAttr,
};
use super::info::{map_info, MapInfo};
use super::{bpf_call, gate::possible_cpus, owned_fd, pin, BpfCmd, Errno, Result, SysError, Syscall};

/// Elements per `BPF_MAP_UPDATE_BATCH` call.
pub const BATCH_CHUNK: usize = 1024;

/// The map types sluice uses, with their `enum bpf_map_type` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    Hash,
    Array,
    PerCpuHash,
    PerCpuArray,
    LpmTrie,
    LruHash,
    LruPerCpuHash,
    RingBuf,
    ProgArray,
    SockHash,
}

impl MapKind {
    /// Every kind, for tables and tests.
    pub const ALL: [MapKind; 10] = [
        MapKind::Hash,
        MapKind::Array,
        MapKind::PerCpuHash,
        MapKind::PerCpuArray,
        MapKind::LpmTrie,
        MapKind::LruHash,
        MapKind::LruPerCpuHash,
        MapKind::RingBuf,
        MapKind::ProgArray,
        MapKind::SockHash,
    ];

    /// The kernel's `enum bpf_map_type` number.
    pub const fn type_id(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::ProgArray => 3,
            MapKind::PerCpuHash => 5,
            MapKind::PerCpuArray => 6,
            MapKind::LruHash => 9,
            MapKind::LruPerCpuHash => 10,
            MapKind::LpmTrie => 11,
            MapKind::SockHash => 18,
            MapKind::RingBuf => 27,
        }
    }

    /// The kind with kernel type number `id`, if sluice uses it.
    pub fn from_type_id(id: u32) -> Option<MapKind> {
        MapKind::ALL.into_iter().find(|k| k.type_id() == id)
    }

    /// Values are stored once per possible CPU.
    pub const fn is_per_cpu(self) -> bool {
        matches!(self, MapKind::PerCpuHash | MapKind::PerCpuArray | MapKind::LruPerCpuHash)
    }

    /// The kernel's name without the `BPF_MAP_TYPE_` prefix, lower case.
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::PerCpuHash => "percpu_hash",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::LpmTrie => "lpm_trie",
            MapKind::LruHash => "lru_hash",
            MapKind::LruPerCpuHash => "lru_percpu_hash",
            MapKind::RingBuf => "ringbuf",
            MapKind::ProgArray => "prog_array",
            MapKind::SockHash => "sockhash",
        }
    }
}

/// Per-CPU map types by kernel number (including ones sluice does not create, such as
/// `PERCPU_CGROUP_STORAGE`, so buffers are sized right for any adopted map).
fn type_is_per_cpu(map_type: u32) -> bool {
    matches!(map_type, 5 | 6 | 10 | 21)
}

/// `round_up(value_size, 8)`: the per-CPU stride of a value.
fn per_cpu_stride(value_size: u32) -> usize {
    (value_size as usize).div_ceil(8) * 8
}

/// The key pointer to send: NULL for maps without keys (queues, stacks), which the
/// kernel requires.
fn key_ptr(key: &[u8]) -> *const u8 {
    if key.is_empty() {
        std::ptr::null()
    } else {
        key.as_ptr()
    }
}

/// A map to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    /// Kernel object name: sanitized to `[A-Za-z0-9_.]`, at most 15 bytes (done by
    /// [`MapSpec::new`], and again when the attr is built).
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `map_flags` ([`super::map_flags`]).
    pub flags: u32,
}

impl MapSpec {
    /// A spec with no flags and a sanitized name.
    pub fn new(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> Self {
        MapSpec { name: sanitize_obj_name(name), kind, key_size, value_size, max_entries, flags: 0 }
    }

    /// The same spec with `flags`.
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// Differences between this spec and what the kernel reports, empty when they match
    /// (the name is not compared: it is informational).
    pub fn mismatches(&self, info: &MapInfo) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |field: &str, want: u32, got: u32| {
            if want != got {
                out.push(format!("{field}: expected {want}, found {got}"));
            }
        };
        check("map_type", self.kind.type_id(), info.map_type);
        check("key_size", self.key_size, info.key_size);
        check("value_size", self.value_size, info.value_size);
        check("max_entries", self.max_entries, info.max_entries);
        check("map_flags", self.flags, info.flags);
        out
    }
}

/// `flags` of `BPF_MAP_UPDATE_ELEM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UpdateFlags(pub u64);

impl UpdateFlags {
    /// `BPF_ANY`: create or replace.
    pub const ANY: UpdateFlags = UpdateFlags(0);
    /// `BPF_NOEXIST`: create only.
    pub const NOEXIST: UpdateFlags = UpdateFlags(1);
    /// `BPF_EXIST`: replace only.
    pub const EXIST: UpdateFlags = UpdateFlags(2);
    /// `BPF_F_LOCK`: take the value's spin lock (combine with one of the above).
    pub const LOCK: UpdateFlags = UpdateFlags(4);
}

/// A kernel map this process holds a descriptor to.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    sys: Arc<dyn Syscall>,
    name: String,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl Map {
    /// `BPF_MAP_CREATE`.
    pub fn create(sys: &Arc<dyn Syscall>, spec: &MapSpec) -> Result<Map> {
        let mut attr = MapCreateAttr::zeroed();
        attr.map_type = spec.kind.type_id();
        attr.key_size = spec.key_size;
        attr.value_size = spec.value_size;
        attr.max_entries = spec.max_entries;
        attr.map_flags = spec.flags;
        attr.map_name = obj_name_bytes(&spec.name);
        // SAFETY: the attr holds no pointers.
        let ret = unsafe { bpf_call(&**sys, BpfCmd::MapCreate, &mut attr) };
        let fd = ret.and_then(owned_fd).map_err(|errno| SysError::MapCreate {
            name: spec.name.clone(),
            kind: spec.kind.name().to_string(),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
            errno,
        })?;
        Ok(Map {
            fd,
            sys: Arc::clone(sys),
            name: sanitize_obj_name(&spec.name),
            map_type: spec.kind.type_id(),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
            flags: spec.flags,
        })
    }

    /// Adopt an open map descriptor; its layout is read from the kernel.
    pub fn from_fd(sys: &Arc<dyn Syscall>, fd: OwnedFd) -> Result<Map> {
        let info = map_info(&**sys, fd.as_fd())?;
        Ok(Map {
            fd,
            sys: Arc::clone(sys),
            name: info.name,
            map_type: info.map_type,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            flags: info.flags,
        })
    }

    /// Open the map pinned at `path` (`BPF_OBJ_GET`).
    pub fn from_pin(sys: &Arc<dyn Syscall>, path: &Path) -> Result<Map> {
        let fd = pin::get_pinned(&**sys, path)?;
        Map::from_fd(sys, fd)
    }

    /// Open the map pinned at `path` and check that it has `spec`'s layout (type, key and
    /// value size, max_entries, flags): how a restarted daemon adopts its pins.
    pub fn from_pin_checked(sys: &Arc<dyn Syscall>, path: &Path, spec: &MapSpec) -> Result<Map> {
        let map = Map::from_pin(sys, path)?;
        let info = map.info()?;
        let mismatches = spec.mismatches(&info);
        if mismatches.is_empty() {
            Ok(map)
        } else {
            Err(SysError::LayoutMismatch { path: path.to_path_buf(), mismatch: mismatches.join(", ") })
        }
    }

    /// Open the map with kernel id `id`.
    pub fn from_id(sys: &Arc<dyn Syscall>, id: u32) -> Result<Map> {
        let fd = super::info::map_get_fd_by_id(&**sys, id)?;
        Map::from_fd(sys, fd)
    }

    /// The kernel's current description of this map (includes its id).
    pub fn info(&self) -> Result<MapInfo> {
        map_info(&*self.sys, self.fd.as_fd())
    }

    /// Pin this map at `path` (`BPF_OBJ_PIN`).
    pub fn pin(&self, path: &Path) -> Result<()> {
        pin::pin(&*self.sys, self.fd.as_fd(), path)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give up the map, keeping its descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The kernel object name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The map kind, `None` for a kernel type sluice does not create.
    pub fn kind(&self) -> Option<MapKind> {
        MapKind::from_type_id(self.map_type)
    }

    /// The kernel `enum bpf_map_type` number.
    pub fn map_type(&self) -> u32 {
        self.map_type
    }

    pub fn key_size(&self) -> u32 {
        self.key_size
    }

    pub fn value_size(&self) -> u32 {
        self.value_size
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Values are stored once per possible CPU.
    pub fn is_per_cpu(&self) -> bool {
        type_is_per_cpu(self.map_type)
    }

    fn op_error(&self, cmd: BpfCmd, errno: Errno) -> SysError {
        self.op_error_with(cmd, errno, "")
    }

    /// A failed command on this map; `extra` (starting with a space) says where.
    fn op_error_with(&self, cmd: BpfCmd, errno: Errno, extra: &str) -> SysError {
        let mut detail = extra.to_string();
        if matches!(cmd, BpfCmd::MapUpdateElem | BpfCmd::MapUpdateBatch) && errno.0 == libc::E2BIG {
            detail.push_str(&format!(" (map is full: max_entries {})", self.max_entries));
        }
        SysError::MapOp { cmd, map: self.name.clone(), errno, detail }
    }

    fn invalid(&self, op: &str, reason: String) -> SysError {
        SysError::invalid(format!("{op} on map `{}`", self.name), reason)
    }

    fn check_key(&self, op: &str, key: &[u8]) -> Result<()> {
        if key.len() == self.key_size as usize {
            Ok(())
        } else {
            Err(self.invalid(op, format!("key is {} bytes, map key_size is {}", key.len(), self.key_size)))
        }
    }

    /// Bytes the kernel copies for one value of this map (all CPUs for per-CPU maps).
    fn full_value_len(&self) -> Result<usize> {
        if self.is_per_cpu() {
            Ok(per_cpu_stride(self.value_size) * possible_cpus()?)
        } else {
            Ok(self.value_size as usize)
        }
    }

    /// One element command.
    ///
    /// # Safety
    /// `key` must be null or valid for `key_size` bytes; `value` must be null or valid for
    /// the reads or writes `cmd` does on a value of this map ([`Map::full_value_len`]).
    unsafe fn elem(&self, cmd: BpfCmd, key: *const u8, value: u64, flags: u64) -> Result<i64, Errno> {
        let mut attr = MapElemAttr::zeroed();
        attr.map_fd = self.fd.as_raw_fd() as u32;
        attr.key = ptr_u64(key);
        attr.value = value;
        attr.flags = flags;
        // SAFETY: forwarded contract on `key` and `value`.
        unsafe { bpf_call(&*self.sys, cmd, &mut attr) }
    }

    /// Raw lookup into a buffer of `len` bytes (at least what the kernel writes).
    fn lookup_raw(&self, key: &[u8], len: usize) -> Result<Option<Vec<u8>>> {
        self.check_key("lookup", key)?;
        // Round up to 8 so kernels that copy a u64 (sockhash cookies) stay in bounds.
        let mut value = vec![0u8; len.div_ceil(8).max(1) * 8];
        // SAFETY: `key` has key_size bytes (checked); `value` is at least as long as the
        // kernel's copy for this map and lives across the call.
        let ret = unsafe { self.elem(BpfCmd::MapLookupElem, key_ptr(key), ptr_u64(value.as_mut_ptr()), 0) };
        match ret {
            Ok(_) => {
                value.truncate(len);
                Ok(Some(value))
            }
            Err(errno) if errno.0 == libc::ENOENT => Ok(None),
            Err(errno) => Err(self.op_error(BpfCmd::MapLookupElem, errno)),
        }
    }

    /// The value stored under `key`, `None` if absent. Per-CPU maps: use
    /// [`Map::lookup_percpu`].
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.is_per_cpu() {
            return Err(self.invalid("lookup", "per-CPU map: use lookup_percpu".to_string()));
        }
        self.lookup_raw(key, self.value_size as usize)
    }

    /// The value of each possible CPU stored under `key` (each `value_size` bytes), `None`
    /// if absent.
    pub fn lookup_percpu(&self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        if !self.is_per_cpu() {
            return Err(self.invalid("lookup_percpu", "not a per-CPU map".to_string()));
        }
        let stride = per_cpu_stride(self.value_size);
        let Some(raw) = self.lookup_raw(key, self.full_value_len()?)? else {
            return Ok(None);
        };
        let values =
            raw.chunks_exact(stride.max(1)).map(|chunk| chunk[..self.value_size as usize].to_vec()).collect();
        Ok(Some(values))
    }

    /// The value bytes to send for one update: per-CPU maps take either one value
    /// (replicated to every CPU) or the full `stride × CPUs` buffer.
    fn value_for_update<'v>(&self, value: &'v [u8]) -> Result<std::borrow::Cow<'v, [u8]>> {
        let vs = self.value_size as usize;
        if !self.is_per_cpu() {
            return if value.len() == vs {
                Ok(value.into())
            } else {
                Err(self.invalid("update", format!("value is {} bytes, map value_size is {vs}", value.len())))
            };
        }
        let full = self.full_value_len()?;
        if value.len() == full {
            return Ok(value.into());
        }
        if value.len() != vs {
            return Err(self.invalid(
                "update",
                format!(
                    "per-CPU value is {} bytes, expected {vs} (one value) or {full} (all CPUs)",
                    value.len()
                ),
            ));
        }
        let stride = per_cpu_stride(self.value_size);
        let mut buf = vec![0u8; full];
        for chunk in buf.chunks_exact_mut(stride.max(1)) {
            chunk[..vs].copy_from_slice(value);
        }
        Ok(buf.into())
    }

    /// `BPF_MAP_UPDATE_ELEM`.
    pub fn update(&self, key: &[u8], value: &[u8], flags: UpdateFlags) -> Result<()> {
        self.check_key("update", key)?;
        let value = self.value_for_update(value)?;
        // SAFETY: key checked; `value` has exactly the length the kernel reads.
        unsafe { self.elem(BpfCmd::MapUpdateElem, key_ptr(key), ptr_u64(value.as_ptr()), flags.0) }
            .map(drop)
            .map_err(|errno| self.op_error(BpfCmd::MapUpdateElem, errno))
    }

    /// `BPF_MAP_UPDATE_ELEM` of a per-CPU map with one value per possible CPU.
    pub fn update_percpu(&self, key: &[u8], values: &[Vec<u8>], flags: UpdateFlags) -> Result<()> {
        if !self.is_per_cpu() {
            return Err(self.invalid("update_percpu", "not a per-CPU map".to_string()));
        }
        let cpus = possible_cpus()?;
        let vs = self.value_size as usize;
        if values.len() != cpus || values.iter().any(|v| v.len() != vs) {
            return Err(self.invalid(
                "update_percpu",
                format!("expected {cpus} values of {vs} bytes, got {} values", values.len()),
            ));
        }
        let stride = per_cpu_stride(self.value_size);
        let mut buf = vec![0u8; stride * cpus];
        for (chunk, value) in buf.chunks_exact_mut(stride.max(1)).zip(values) {
            chunk[..vs].copy_from_slice(value);
        }
        self.update(key, &buf, flags)
    }

    /// `BPF_MAP_DELETE_ELEM`: true if the key was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.check_key("delete", key)?;
        // SAFETY: key checked; delete reads no value.
        match unsafe { self.elem(BpfCmd::MapDeleteElem, key_ptr(key), 0, 0) } {
            Ok(_) => Ok(true),
            Err(errno) if errno.0 == libc::ENOENT => Ok(false),
            Err(errno) => Err(self.op_error(BpfCmd::MapDeleteElem, errno)),
        }
    }

    /// The key after `prev` (`None`: the first key); `None` at the end.
    pub fn next_key(&self, prev: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        if let Some(prev) = prev {
            self.check_key("next_key", prev)?;
        }
        let mut next = vec![0u8; (self.key_size as usize).max(1)];
        let prev_ptr = prev.map_or(std::ptr::null(), <[u8]>::as_ptr);
        // SAFETY: `prev` is null or key_size bytes; `next` has room for key_size bytes.
        match unsafe { self.elem(BpfCmd::MapGetNextKey, prev_ptr, ptr_u64(next.as_mut_ptr()), 0) } {
            Ok(_) => {
                next.truncate(self.key_size as usize);
                Ok(Some(next))
            }
            Err(errno) if errno.0 == libc::ENOENT => Ok(None),
            Err(errno) => Err(self.op_error(BpfCmd::MapGetNextKey, errno)),
        }
    }

    /// Iterate over the keys. Concurrent deletes can make the kernel restart from the
    /// first key; the iterator stops with an error after `2 × max_entries + 2` keys rather
    /// than loop forever.
    pub fn keys(&self) -> Keys<'_> {
        Keys { map: self, prev: None, done: false, seen: 0 }
    }

    /// Every (key, value), sorted by key: [`Map::keys`] then a lookup of each (an entry
    /// deleted in between is simply gone). For hash-like and array maps, not per-CPU ones.
    pub fn entries(&self) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = std::collections::BTreeMap::new();
        for key in self.keys() {
            let key = key?;
            if let Some(v) = self.lookup(&key)? {
                out.insert(key, v);
            }
        }
        Ok(out)
    }

    /// `BPF_MAP_UPDATE_BATCH` of `count` elements: `keys` is `count × key_size` bytes,
    /// `values` is `count × value_size` bytes (per-CPU maps: `count × stride × CPUs`).
    /// Falls back to one `BPF_MAP_UPDATE_ELEM` per element where the kernel has no batch
    /// op for the map type.
    pub fn update_batch(&self, keys: &[u8], values: &[u8], count: usize, flags: UpdateFlags) -> Result<()> {
        let ks = self.key_size as usize;
        let vs = self.full_value_len()?;
        if count.checked_mul(ks) != Some(keys.len()) || count.checked_mul(vs) != Some(values.len()) {
            return Err(self.invalid(
                "update_batch",
                format!(
                    "{count} elements need {} key bytes and {} value bytes, got {} and {}",
                    count.saturating_mul(ks),
                    count.saturating_mul(vs),
                    keys.len(),
                    values.len()
                ),
            ));
        }
        let mut batch_ok = true;
        let mut done = 0usize;
        while done < count {
            let n = (count - done).min(BATCH_CHUNK);
            let (k, v) = (&keys[done * ks..(done + n) * ks], &values[done * vs..(done + n) * vs]);
            if batch_ok {
                let mut attr = MapBatchAttr::zeroed();
                attr.map_fd = self.fd.as_raw_fd() as u32;
                attr.keys = ptr_u64(k.as_ptr());
                attr.values = ptr_u64(v.as_ptr());
                attr.count = n as u32;
                attr.elem_flags = flags.0;
                // SAFETY: `k` and `v` hold exactly `n` keys and values of the sizes the
                // kernel reads for this map (checked above); they outlive the call.
                match unsafe { bpf_call(&*self.sys, BpfCmd::MapUpdateBatch, &mut attr) } {
                    Ok(_) => {
                        done += n;
                        continue;
                    }
                    Err(errno) if errno.is_unsupported() => {
                        // The kernel writes back how many it applied only once it started;
                        // an untouched count (== n) or ENOTSUPP means none.
                        let applied = attr.count as usize;
                        if errno.0 == libc::EINVAL && applied < n {
                            done += applied;
                        }
                        batch_ok = false;
                        continue;
                    }
                    Err(errno) => {
                        let applied = (attr.count as usize).min(n);
                        let after = format!(" after {} of {count} elements", done + applied);
                        return Err(self.op_error_with(BpfCmd::MapUpdateBatch, errno, &after));
                    }
                }
            }
            for i in 0..n {
                let (key, value) = (&k[i * ks..(i + 1) * ks], &v[i * vs..(i + 1) * vs]);
                let value = ptr_u64(value.as_ptr());
                // SAFETY: `key` is key_size bytes and `value` the full value length.
                if let Err(errno) = unsafe { self.elem(BpfCmd::MapUpdateElem, key_ptr(key), value, flags.0) }
                {
                    let at = format!(" at element {} of {count} (batch fallback)", done + i);
                    return Err(self.op_error_with(BpfCmd::MapUpdateElem, errno, &at));
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Map {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Iterator over a map's keys ([`Map::keys`]).
#[derive(Debug)]
pub struct Keys<'m> {
    map: &'m Map,
    prev: Option<Vec<u8>>,
    done: bool,
    seen: u64,
}

impl Iterator for Keys<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let limit = 2 * u64::from(self.map.max_entries) + 2;
        if self.seen >= limit {
            self.done = true;
            return Some(Err(self.map.invalid(
                "keys",
                format!("iteration did not end after {limit} keys (concurrent deletes?)"),
            )));
        }
        match self.map.next_key(self.prev.as_deref()) {
            Ok(Some(key)) => {
                self.seen += 1;
                self.prev = Some(key.clone());
                Some(Ok(key))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_type_ids() {
        for kind in MapKind::ALL {
            assert_eq!(MapKind::from_type_id(kind.type_id()), Some(kind), "{kind:?}");
            assert_eq!(kind.is_per_cpu(), type_is_per_cpu(kind.type_id()), "{kind:?}");
        }
        assert_eq!(MapKind::from_type_id(0), None);
    }

    #[test]
    fn spec_mismatches_name_each_field() {
        let spec = MapSpec::new("ct", MapKind::Hash, 16, 24, 1024);
        let info = MapInfo {
            map_type: 9,
            id: 1,
            key_size: 16,
            value_size: 32,
            max_entries: 1024,
            flags: 0,
            name: "ct".into(),
        };
        assert_eq!(
            spec.mismatches(&info),
            ["map_type: expected 1, found 9", "value_size: expected 24, found 32"]
        );
    }

    #[test]
    fn per_cpu_stride_rounds_to_8() {
        for (vs, stride) in [(0, 0), (1, 8), (8, 8), (9, 16), (24, 24)] {
            assert_eq!(per_cpu_stride(vs), stride, "value_size {vs}");
        }
    }
}
