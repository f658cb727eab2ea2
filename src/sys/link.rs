//! Attach commands: `BPF_PROG_ATTACH`/`DETACH` and bpf links (`BPF_LINK_CREATE`,
//! `BPF_LINK_UPDATE`, `BPF_LINK_DETACH`).
//!
//! Contract: thin, typed wrappers over the seam for `src/attach`, which decides what to
//! attach where. A link is returned as the `OwnedFd` the kernel gave; closing it detaches
//! unless the link is pinned. Errors name the command and the target.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::attr::{
    ptr_u64, Attr, GetIdAttr, InfoAttr, LinkCreateAttr, LinkDetachAttr, LinkUpdateAttr, ProgAttachAttr,
};
use super::Errno;
use super::{bpf_call, owned_fd, BpfCmd, Result, SysError, Syscall};

/// Arguments of `BPF_LINK_CREATE`.
#[derive(Debug, Clone, Copy)]
pub struct LinkCreate<'a> {
    /// The program (or, for struct_ops, the map).
    pub prog: BorrowedFd<'a>,
    /// A target fd (cgroup, sockhash map) or an ifindex (XDP, tcx, netkit).
    pub target: u32,
    /// [`super::attach_type`].
    pub attach_type: u32,
    /// [`super::attach_flags`] (tcx ordering) or XDP flags.
    pub flags: u32,
    /// tcx/netkit/cgroup: `relative_fd` or `relative_id` (with `attach_flags::ID`).
    pub relative: u32,
    /// tcx/netkit/cgroup: fail unless the attach point is at this revision (0: any).
    pub expected_revision: u64,
}

impl<'a> LinkCreate<'a> {
    /// A link of `prog` to `target` with no flags or ordering.
    pub fn new(prog: BorrowedFd<'a>, target: u32, attach_type: u32) -> Self {
        LinkCreate { prog, target, attach_type, flags: 0, relative: 0, expected_revision: 0 }
    }
}

fn fail(cmd: BpfCmd, context: String) -> impl FnOnce(super::Errno) -> SysError {
    move |errno| SysError::Bpf { cmd, context, errno }
}

/// `BPF_LINK_CREATE`: the link's descriptor.
pub fn link_create(sys: &dyn Syscall, args: &LinkCreate<'_>) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr::zeroed();
    attr.prog_fd = args.prog.as_raw_fd() as u32;
    attr.target = args.target;
    attr.attach_type = args.attach_type;
    attr.flags = args.flags;
    attr.relative = args.relative;
    attr.expected_revision = args.expected_revision;
    // SAFETY: the attr holds no pointers.
    let ret = unsafe { bpf_call(sys, BpfCmd::LinkCreate, &mut attr) };
    ret.and_then(owned_fd).map_err(fail(
        BpfCmd::LinkCreate,
        format!("program fd {} to target {} attach type {}", attr.prog_fd, args.target, args.attach_type),
    ))
}

/// `BPF_LINK_UPDATE`: swap the program of `link` atomically. With `old_prog`, only if
/// that is the current program (`BPF_F_REPLACE`).
pub fn link_update(
    sys: &dyn Syscall,
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let mut attr = LinkUpdateAttr::zeroed();
    attr.link_fd = link.as_raw_fd() as u32;
    attr.new_prog_fd = new_prog.as_raw_fd() as u32;
    if let Some(old) = old_prog {
        attr.flags = super::attach_flags::REPLACE;
        attr.old_prog_fd = old.as_raw_fd() as u32;
    }
    // SAFETY: the attr holds no pointers.
    unsafe { bpf_call(sys, BpfCmd::LinkUpdate, &mut attr) }
        .map(drop)
        .map_err(fail(BpfCmd::LinkUpdate, format!("link fd {}", attr.link_fd)))
}

/// `BPF_LINK_DETACH`: detach `link` while keeping its descriptor valid.
pub fn link_detach(sys: &dyn Syscall, link: BorrowedFd<'_>) -> Result<()> {
    let mut attr = LinkDetachAttr::zeroed();
    attr.link_fd = link.as_raw_fd() as u32;
    // SAFETY: the attr holds no pointers.
    unsafe { bpf_call(sys, BpfCmd::LinkDetach, &mut attr) }
        .map(drop)
        .map_err(fail(BpfCmd::LinkDetach, format!("link fd {}", attr.link_fd)))
}

/// `BPF_PROG_ATTACH` of `prog` to `target` (a cgroup or sockmap fd, or an ifindex).
pub fn prog_attach(
    sys: &dyn Syscall,
    target: u32,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> Result<()> {
    let mut attr = ProgAttachAttr::zeroed();
    attr.target = target;
    attr.attach_bpf_fd = prog.as_raw_fd() as u32;
    attr.attach_type = attach_type;
    attr.attach_flags = flags;
    // SAFETY: the attr holds no pointers.
    unsafe { bpf_call(sys, BpfCmd::ProgAttach, &mut attr) }.map(drop).map_err(fail(
        BpfCmd::ProgAttach,
        format!("program fd {} to target {target} attach type {attach_type}", attr.attach_bpf_fd),
    ))
}

/// `BPF_PROG_DETACH` of `prog` (or, with `None`, whatever is attached) from `target`.
pub fn prog_detach(
    sys: &dyn Syscall,
    target: u32,
    prog: Option<BorrowedFd<'_>>,
    attach_type: u32,
) -> Result<()> {
    let mut attr = ProgAttachAttr::zeroed();
    attr.target = target;
    attr.attach_bpf_fd = prog.map_or(0, |p| p.as_raw_fd() as u32);
    attr.attach_type = attach_type;
    // SAFETY: the attr holds no pointers.
    unsafe { bpf_call(sys, BpfCmd::ProgDetach, &mut attr) }
        .map(drop)
        .map_err(fail(BpfCmd::ProgDetach, format!("target {target} attach type {attach_type}")))
}

/// `struct bpf_link_info` (6.18): the common head, then the union (16 bytes in, 48 long),
/// of which the tcx/XDP view is the first two words.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkInfoRaw {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad0: u32,
    /// tcx, netkit, XDP: `ifindex`; cgroup: the low half of `cgroup_id`.
    pub target0: u32,
    /// tcx, netkit: `attach_type`; cgroup: the high half of `cgroup_id`.
    pub target1: u32,
    pub _tail: [u64; 5],
}

// SAFETY: `#[repr(C)]`, integer fields only, the padding after `prog_id` spelled out; the
// size assertion below catches a field added without its padding.
unsafe impl Attr for LinkInfoRaw {}
const _: () = assert!(std::mem::size_of::<LinkInfoRaw>() == 64);

/// `BPF_OBJ_GET_INFO_BY_FD` on a link: its info head and the union's first words.
pub fn link_info(sys: &dyn Syscall, fd: BorrowedFd<'_>) -> Result<LinkInfoRaw> {
    let mut raw = LinkInfoRaw::zeroed();
    let mut attr = InfoAttr::zeroed();
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = std::mem::size_of::<LinkInfoRaw>() as u32;
    attr.info = ptr_u64(&mut raw as *mut LinkInfoRaw);
    // SAFETY: `attr.info` points at `raw`, valid for `info_len` bytes of writes and
    // borrowed mutably for the whole call.
    unsafe { bpf_call(sys, BpfCmd::ObjGetInfoByFd, &mut attr) }.map_err(|errno| SysError::Bpf {
        cmd: BpfCmd::ObjGetInfoByFd,
        context: format!("link fd {}", fd.as_raw_fd()),
        errno,
    })?;
    Ok(raw)
}

/// Whether a link with kernel id `id` exists (attached, or detached but still open):
/// `BPF_LINK_GET_FD_BY_ID`, the descriptor closed again at once.
pub fn link_exists(sys: &dyn Syscall, id: u32) -> Result<bool> {
    let mut attr = GetIdAttr::zeroed();
    attr.id = id;
    // SAFETY: the attr holds no pointers.
    match unsafe { bpf_call(sys, BpfCmd::LinkGetFdById, &mut attr) } {
        Ok(fd) => {
            if let Ok(fd) = i32::try_from(fd) {
                // SAFETY: the kernel gave us a new descriptor that nobody else owns.
                drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
            Ok(true)
        }
        Err(Errno(libc::ENOENT)) => Ok(false),
        Err(errno) => Err(SysError::Bpf { cmd: BpfCmd::LinkGetFdById, context: format!("id {id}"), errno }),
    }
}
