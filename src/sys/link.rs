//! Attach commands: `BPF_PROG_ATTACH`/`DETACH` and bpf links (`BPF_LINK_CREATE`,
//! `BPF_LINK_UPDATE`, `BPF_LINK_DETACH`).
//!
//! Contract: thin, typed wrappers over the seam for `src/attach`, which decides what to
//! attach where. A link is returned as the `OwnedFd` the kernel gave; closing it detaches
//! unless the link is pinned. Errors name the command and the target.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::attr::{Attr, LinkCreateAttr, LinkDetachAttr, LinkUpdateAttr, ProgAttachAttr};
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
