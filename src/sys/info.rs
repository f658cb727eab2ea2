//! Object info (`BPF_OBJ_GET_INFO_BY_FD`) and id lookups (`BPF_*_GET_FD_BY_ID`,
//! `BPF_*_GET_NEXT_ID`).
//!
//! Contract: [`map_info`] and [`prog_info`] pass the 6.18 struct size; an older kernel
//! fills the prefix it knows and leaves the rest zero, a newer one truncates to our size.
//! The info is returned as owned Rust values; no pointer fields are requested (no
//! instruction dumps, no map id arrays).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::attr::{obj_name_from_bytes, ptr_u64, Attr, GetIdAttr, InfoAttr, MapInfoRaw, ProgInfoRaw};
use super::{bpf_call, owned_fd, BpfCmd, Result, SysError, Syscall};

/// What the kernel says about a map: used to check layouts when adopting pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// `enum bpf_map_type` number (see [`super::MapKind::from_type_id`]).
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub name: String,
}

/// What the kernel says about a loaded program, including its verifier statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    /// `enum bpf_prog_type` number.
    pub prog_type: u32,
    pub id: u32,
    /// The program tag (hash of the instructions), as bpftool prints it.
    pub tag: [u8; 8],
    /// Size in bytes of the JIT output (0 when the JIT is off).
    pub jited_prog_len: u32,
    /// Size in bytes of the program after verifier rewrites.
    pub xlated_prog_len: u32,
    /// Instructions the verifier processed (5.16+; 0 on older kernels).
    pub verified_insns: u32,
    pub name: String,
    /// Nanoseconds since boot at load.
    pub load_time: u64,
    pub created_by_uid: u32,
    pub nr_map_ids: u32,
    pub gpl_compatible: bool,
    /// Run time and count, when `kernel.bpf_stats_enabled` is on.
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl From<&MapInfoRaw> for MapInfo {
    fn from(raw: &MapInfoRaw) -> Self {
        MapInfo {
            map_type: raw.map_type,
            id: raw.id,
            key_size: raw.key_size,
            value_size: raw.value_size,
            max_entries: raw.max_entries,
            flags: raw.map_flags,
            name: obj_name_from_bytes(&raw.name),
        }
    }
}

impl From<&ProgInfoRaw> for ProgInfo {
    fn from(raw: &ProgInfoRaw) -> Self {
        ProgInfo {
            prog_type: raw.prog_type,
            id: raw.id,
            tag: raw.tag,
            jited_prog_len: raw.jited_prog_len,
            xlated_prog_len: raw.xlated_prog_len,
            verified_insns: raw.verified_insns,
            name: obj_name_from_bytes(&raw.name),
            load_time: raw.load_time,
            created_by_uid: raw.created_by_uid,
            nr_map_ids: raw.nr_map_ids,
            gpl_compatible: raw.gpl_compatible_bits & 1 == 1,
            run_time_ns: raw.run_time_ns,
            run_cnt: raw.run_cnt,
        }
    }
}

/// Fill `info` with `BPF_OBJ_GET_INFO_BY_FD` on `fd`.
fn get_info<I: Attr>(sys: &dyn Syscall, fd: BorrowedFd<'_>, info: &mut I, what: &str) -> Result<()> {
    let mut attr = InfoAttr::zeroed();
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = std::mem::size_of::<I>() as u32;
    attr.info = ptr_u64(info as *mut I);
    // SAFETY: `attr.info` points at `info`, valid for `info_len` bytes of writes, and
    // `info` is borrowed mutably for the whole call.
    unsafe { bpf_call(sys, BpfCmd::ObjGetInfoByFd, &mut attr) }.map_err(|errno| SysError::Bpf {
        cmd: BpfCmd::ObjGetInfoByFd,
        context: format!("{what} fd {}", fd.as_raw_fd()),
        errno,
    })?;
    Ok(())
}

/// The kernel's description of the map behind `fd`.
pub fn map_info(sys: &dyn Syscall, fd: BorrowedFd<'_>) -> Result<MapInfo> {
    let mut raw = MapInfoRaw::zeroed();
    get_info(sys, fd, &mut raw, "map")?;
    Ok(MapInfo::from(&raw))
}

/// The kernel's description of the program behind `fd`.
pub fn prog_info(sys: &dyn Syscall, fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    let mut raw = ProgInfoRaw::zeroed();
    get_info(sys, fd, &mut raw, "program")?;
    Ok(ProgInfo::from(&raw))
}

fn fd_by_id(sys: &dyn Syscall, cmd: BpfCmd, id: u32) -> Result<OwnedFd> {
    let mut attr = GetIdAttr::zeroed();
    attr.id = id;
    // SAFETY: the attr holds no pointers.
    let ret = unsafe { bpf_call(sys, cmd, &mut attr) };
    ret.and_then(owned_fd).map_err(|errno| SysError::Bpf { cmd, context: format!("id {id}"), errno })
}

/// Open the map with kernel id `id`.
pub fn map_get_fd_by_id(sys: &dyn Syscall, id: u32) -> Result<OwnedFd> {
    fd_by_id(sys, BpfCmd::MapGetFdById, id)
}

/// Open the program with kernel id `id`.
pub fn prog_get_fd_by_id(sys: &dyn Syscall, id: u32) -> Result<OwnedFd> {
    fd_by_id(sys, BpfCmd::ProgGetFdById, id)
}

fn next_id(sys: &dyn Syscall, cmd: BpfCmd, start: u32) -> Result<Option<u32>> {
    let mut attr = GetIdAttr::zeroed();
    attr.id = start;
    // SAFETY: the attr holds no pointers.
    match unsafe { bpf_call(sys, cmd, &mut attr) } {
        Ok(_) => Ok(Some(attr.next_id)),
        Err(errno) if errno.0 == libc::ENOENT => Ok(None),
        Err(errno) => Err(SysError::Bpf { cmd, context: format!("after id {start}"), errno }),
    }
}

/// The first map id greater than `start` (0 for the first), or `None` past the last.
pub fn map_next_id(sys: &dyn Syscall, start: u32) -> Result<Option<u32>> {
    next_id(sys, BpfCmd::MapGetNextId, start)
}

/// The first program id greater than `start` (0 for the first), or `None` past the last.
pub fn prog_next_id(sys: &dyn Syscall, start: u32) -> Result<Option<u32>> {
    next_id(sys, BpfCmd::ProgGetNextId, start)
}
