//! bpf links on device hooks: tcx ingress and egress (Linux 6.6+) and XDP (5.9+).
//!
//! A link is a kernel object: the program stays on the hook while the link lives, that is
//! while a descriptor or a pin refers to it. [`Link`] owns one descriptor and detaches
//! explicitly on drop unless pinned, so the hook is free as soon as the value is gone even
//! if another descriptor of the link exists (a forked child, a second open of a pin).

use super::{AttachError, Interface, Result};
use crate::sys::{self, attach_type, BpfCmd, Errno, LinkCreate, Program, SysError, Syscall};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Which way through a device a tc hook sees packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets the device receives (for an endpoint's host-side veth: what the endpoint sends).
    Ingress,
    /// Packets the device transmits (for a host-side veth: what goes to the endpoint).
    Egress,
}

impl Direction {
    /// `"ingress"` or `"egress"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn tcx_kind(self) -> LinkKind {
        match self {
            Direction::Ingress => LinkKind::TcxIngress,
            Direction::Egress => LinkKind::TcxEgress,
        }
    }
}

/// `XDP_FLAGS_*`: how an XDP program is attached. A link takes only the mode bits (at most
/// one; none lets the kernel choose: native if the driver has it, else generic).
pub mod xdp_flags {
    /// Netlink only: fail if a program is attached already.
    pub const UPDATE_IF_NOEXIST: u32 = 1 << 0;
    /// Generic XDP, in the stack after the skb is built (any device).
    pub const SKB_MODE: u32 = 1 << 1;
    /// Native XDP in the driver.
    pub const DRV_MODE: u32 = 1 << 2;
    /// Offloaded to the NIC.
    pub const HW_MODE: u32 = 1 << 3;
    /// Netlink only: replace the program given as expected.
    pub const REPLACE: u32 = 1 << 4;
    /// Every mode bit.
    pub const MODES: u32 = SKB_MODE | DRV_MODE | HW_MODE;

    /// Why `flags` cannot create an XDP link, if they cannot.
    pub(crate) fn check_link(flags: u32) -> Result<(), String> {
        if flags & !MODES != 0 {
            return Err(format!(
                "only the mode flags (SKB_MODE, DRV_MODE, HW_MODE) apply to an XDP link, not {:#x}",
                flags & !MODES
            ));
        }
        if (flags & MODES).count_ones() > 1 {
            return Err("at most one XDP mode".to_string());
        }
        Ok(())
    }

    /// `""`, `"-generic"`, `"-driver"` or `"-offload"`.
    pub(crate) fn mode_suffix(flags: u32) -> &'static str {
        match flags & MODES {
            SKB_MODE => "-generic",
            DRV_MODE => "-driver",
            HW_MODE => "-offload",
            _ => "",
        }
    }
}

/// What hook a link holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    TcxIngress,
    TcxEgress,
    /// XDP, in the mode the flags chose (the kernel does not report it back).
    Xdp,
    /// A cgroup hook ([`crate::sys::attach_type`] `CGROUP_*`), see [`super::cgroup`].
    Cgroup {
        attach_type: u32,
    },
    /// A link this module does not create (opened from a pin), as the kernel numbers it.
    Other {
        link_type: u32,
        attach_type: u32,
    },
}

/// `enum bpf_link_type` values this module reads back.
mod link_type {
    pub const CGROUP: u32 = 3;
    pub const XDP: u32 = 6;
    pub const TCX: u32 = 11;
}

impl LinkKind {
    /// `"tcx-ingress"`, `"tcx-egress"`, `"xdp"`, or `"link"` for others.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::TcxIngress => "tcx-ingress",
            LinkKind::TcxEgress => "tcx-egress",
            LinkKind::Xdp => "xdp",
            LinkKind::Cgroup { .. } => "cgroup",
            LinkKind::Other { .. } => "link",
        }
    }

    /// The kind the kernel's `bpf_link_info` describes.
    fn from_info(link_type: u32, attach: u32) -> LinkKind {
        match (link_type, attach) {
            (link_type::TCX, attach_type::TCX_INGRESS) => LinkKind::TcxIngress,
            (link_type::TCX, attach_type::TCX_EGRESS) => LinkKind::TcxEgress,
            (link_type::XDP, _) => LinkKind::Xdp,
            (link_type, attach_type) => LinkKind::Other { link_type, attach_type },
        }
    }

    fn on_device(self) -> bool {
        !matches!(self, LinkKind::Other { .. } | LinkKind::Cgroup { .. })
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LinkKind::Other { link_type, attach_type } => {
                write!(f, "link type {link_type} attach type {attach_type}")
            }
            LinkKind::Cgroup { attach_type } => write!(f, "cgroup attach type {attach_type}"),
            kind => f.write_str(kind.name()),
        }
    }
}

/// What the kernel says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    /// The program the link runs now.
    pub prog_id: u32,
    pub kind: LinkKind,
    /// The device of a tcx or XDP link; 0 once the device is gone.
    pub ifindex: Option<u32>,
    /// The cgroup of a cgroup link (`cgroup_id`: the cgroup directory's inode number).
    pub cgroup_id: Option<u64>,
}

/// A program attached to a hook through a bpf link.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
    sys: Arc<dyn Syscall>,
    id: u32,
    kind: LinkKind,
    iface: Option<Interface>,
    /// The name of the program the link runs (changes on update).
    prog: Mutex<String>,
    pin: Option<PathBuf>,
    /// Set once [`Link::detach`] ran, so drop does nothing more.
    detached: bool,
}

impl Link {
    /// Attach `prog` (a `sched_cls` program) to the tcx hook of `iface` in `direction`,
    /// after any programs already there. `iface` is resolved in the calling thread's
    /// network namespace.
    pub fn tcx(
        sys: &Arc<dyn Syscall>,
        prog: &Program,
        iface: impl Into<Interface>,
        direction: Direction,
    ) -> Result<Link> {
        let kind = direction.tcx_kind();
        let attach = match direction {
            Direction::Ingress => attach_type::TCX_INGRESS,
            Direction::Egress => attach_type::TCX_EGRESS,
        };
        Link::create(sys, prog, iface.into(), kind, attach, 0)
    }

    /// Attach `prog` (an XDP program) to `iface` with [`xdp_flags`] mode bits (0: native
    /// if the driver has it, else generic).
    pub fn xdp(
        sys: &Arc<dyn Syscall>,
        prog: &Program,
        iface: impl Into<Interface>,
        flags: u32,
    ) -> Result<Link> {
        let iface = iface.into();
        xdp_flags::check_link(flags).map_err(|reason| AttachError::Invalid {
            context: format!("XDP link of program `{}` on {iface}", prog.name()),
            reason,
        })?;
        Link::create(sys, prog, iface, LinkKind::Xdp, attach_type::XDP, flags)
    }

    fn create(
        sys: &Arc<dyn Syscall>,
        prog: &Program,
        iface: Interface,
        kind: LinkKind,
        attach: u32,
        flags: u32,
    ) -> Result<Link> {
        let iface = with_name(iface);
        let args = LinkCreate { flags, ..LinkCreate::new(prog.fd(), iface.index(), attach) };
        let fd = sys::link_create(&**sys, &args)
            .map_err(|e| link_error(BpfCmd::LinkCreate, kind, &iface, prog.name(), e))?;
        let id = link_info(&**sys, fd.as_fd()).map(|i| i.id).unwrap_or(0);
        Ok(Link {
            fd,
            sys: Arc::clone(sys),
            id,
            kind,
            iface: Some(iface),
            prog: Mutex::new(prog.name().to_string()),
            pin: None,
            detached: false,
        })
    }

    /// A link the caller created (`BPF_LINK_CREATE`) on a hook that is no device's: it
    /// detaches on drop unless pinned, like every [`Link`].
    pub(super) fn from_created(sys: &Arc<dyn Syscall>, fd: OwnedFd, kind: LinkKind, prog: &Program) -> Link {
        let id = link_info(&**sys, fd.as_fd()).map(|i| i.id).unwrap_or(0);
        Link {
            fd,
            sys: Arc::clone(sys),
            id,
            kind,
            iface: None,
            prog: Mutex::new(prog.name().to_string()),
            pin: None,
            detached: false,
        }
    }

    /// Open the link pinned at `path`. It stays pinned: dropping the value only closes it.
    pub fn from_pin(sys: &Arc<dyn Syscall>, path: &Path) -> Result<Link> {
        let fd = sys::get_pinned(&**sys, path)?;
        if let Some(kind) = anon_inode_kind(fd.as_fd()) {
            if kind != "bpf-link" {
                return Err(AttachError::Invalid {
                    context: format!("pin `{}`", path.display()),
                    reason: format!("is a {kind}, not a bpf link"),
                });
            }
        }
        let info = link_info(&**sys, fd.as_fd())?;
        let prog = sys::prog_get_fd_by_id(&**sys, info.prog_id)
            .and_then(|p| sys::prog_info(&**sys, p.as_fd()))
            .map_or_else(|_| format!("id {}", info.prog_id), |p| p.name);
        Ok(Link {
            fd,
            sys: Arc::clone(sys),
            id: info.id,
            kind: info.kind,
            // The name in this thread's namespace may belong to another device: keep the index.
            iface: info.ifindex.map(Interface::from_index),
            prog: Mutex::new(prog),
            pin: Some(path.to_path_buf()),
            detached: false,
        })
    }

    /// Whether a link with kernel id `id` exists (attached, or detached but still open).
    pub fn exists(sys: &dyn Syscall, id: u32) -> Result<bool> {
        sys::link_exists(sys, id).map_err(AttachError::Sys)
    }

    /// Swap in `new` atomically: each packet runs the old program or the new one.
    pub fn update(&self, new: &Program) -> Result<()> {
        self.swap(new, None)
    }

    /// [`Link::update`], only if the link still runs `expected` (`BPF_F_REPLACE`): a
    /// concurrent writer's swap is not silently undone.
    pub fn update_expecting(&self, new: &Program, expected: &Program) -> Result<()> {
        self.swap(new, Some(expected))
    }

    fn swap(&self, new: &Program, old: Option<&Program>) -> Result<()> {
        sys::link_update(&*self.sys, self.fd.as_fd(), new.fd(), old.map(Program::fd))
            .map_err(|e| link_error(BpfCmd::LinkUpdate, self.kind, &self.target(), new.name(), e))?;
        *self.prog.lock().unwrap_or_else(|p| p.into_inner()) = new.name().to_string();
        Ok(())
    }

    /// Pin the link at `path` (on bpffs): it then outlives this value and the process.
    pub fn pin(&mut self, path: &Path) -> Result<()> {
        if let Some(old) = &self.pin {
            return Err(AttachError::Invalid {
                context: format!("pinning link {} at `{}`", self.id, path.display()),
                reason: format!("it is already pinned at `{}`", old.display()),
            });
        }
        sys::pin(&*self.sys, self.fd.as_fd(), path)?;
        self.pin = Some(path.to_path_buf());
        Ok(())
    }

    /// Remove the pin: dropping the value then detaches the link.
    pub fn unpin(&mut self) -> Result<()> {
        if let Some(path) = &self.pin {
            sys::unpin(path)?;
            self.pin = None;
        }
        Ok(())
    }

    /// Take the program off its hook now (`BPF_LINK_DETACH`) and remove the pin, if any.
    pub fn detach(mut self) -> Result<()> {
        self.detached = true;
        sys::link_detach(&*self.sys, self.fd.as_fd()).map_err(|e| {
            link_error(BpfCmd::LinkDetach, self.kind, &self.target(), &self.program_name(), e)
        })?;
        self.unpin()
    }

    /// The kernel's current view of the link.
    pub fn info(&self) -> Result<LinkInfo> {
        Ok(link_info(&*self.sys, self.fd.as_fd())?)
    }

    /// The hook: `tcx-ingress`, `tcx-egress`, `xdp`.
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// The kernel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The device, for links on one.
    pub fn interface(&self) -> Option<&Interface> {
        self.iface.as_ref()
    }

    /// The name of the program the link runs (as of its creation or last update here).
    pub fn program_name(&self) -> String {
        self.prog.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where the link is pinned, if it is.
    pub fn pinned(&self) -> Option<&Path> {
        self.pin.as_deref()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn target(&self) -> Interface {
        self.iface.clone().unwrap_or_else(|| Interface::from_index(0))
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.pin.is_none() && !self.detached {
            // Nothing to report to: a link whose device is gone is already detached.
            let _ = sys::link_detach(&*self.sys, self.fd.as_fd());
        }
    }
}

/// `iface` with its name filled in from this thread's namespace when the caller gave only
/// an index (best effort: for error messages and status).
fn with_name(iface: Interface) -> Interface {
    if iface.name().is_some() {
        return iface;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let ret = unsafe { libc::if_indextoname(iface.index(), buf.as_mut_ptr()) };
    if ret.is_null() {
        return iface;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Interface::named(iface.index(), name.to_string_lossy())
}

/// The error for `cmd` failing on a link, with the usual cause of its errno.
fn link_error(cmd: BpfCmd, hook: LinkKind, iface: &Interface, prog: &str, err: SysError) -> AttachError {
    match err.errno() {
        Some(errno) => AttachError::Link {
            cmd,
            hook,
            iface: iface.clone(),
            prog: prog.to_string(),
            errno,
            hint: hint(cmd, hook, errno),
        },
        None => AttachError::Sys(err),
    }
}

fn hint(cmd: BpfCmd, hook: LinkKind, errno: Errno) -> &'static str {
    let tcx = matches!(hook, LinkKind::TcxIngress | LinkKind::TcxEgress);
    let xdp = hook == LinkKind::Xdp;
    match (cmd, errno.0) {
        (_, libc::ENODEV) => "no device with this ifindex in the calling thread's network namespace",
        (BpfCmd::LinkCreate, _) if tcx && errno.is_unsupported() => {
            "tcx links need Linux 6.6+ and a sched_cls program (else attach cls_bpf through netlink)"
        }
        (BpfCmd::LinkCreate, libc::EBUSY | libc::EEXIST) if xdp => {
            "the device has an XDP program already (through netlink or another link)"
        }
        (BpfCmd::LinkCreate, libc::EOPNOTSUPP) if xdp => "the driver has no such XDP mode",
        (BpfCmd::LinkCreate, libc::EINVAL) if xdp => "XDP links need Linux 5.9+ and an XDP program",
        (BpfCmd::LinkUpdate, libc::EINVAL) => "the new program must have the link's program and attach type",
        (BpfCmd::LinkUpdate, libc::EPERM) => {
            "the link does not run the expected program (or the caller lacks CAP_BPF and CAP_NET_ADMIN)"
        }
        (BpfCmd::LinkUpdate | BpfCmd::LinkDetach, libc::ENOLINK) => {
            "the link is detached already (was its device removed?)"
        }
        (_, libc::EPERM | libc::EACCES) => "needs CAP_BPF and CAP_NET_ADMIN",
        _ => "",
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
fn link_info(sys: &dyn Syscall, fd: BorrowedFd<'_>) -> Result<LinkInfo, SysError> {
    let raw = sys::link_info(sys, fd)?;
    // A cgroup link's union member is `{u64 cgroup_id; u32 attach_type}`.
    let kind = if raw.link_type == link_type::CGROUP {
        LinkKind::Cgroup { attach_type: raw._tail[0] as u32 }
    } else {
        LinkKind::from_info(raw.link_type, raw.target1)
    };
    let cgroup_id = matches!(kind, LinkKind::Cgroup { .. })
        .then_some(u64::from(raw.target0) | (u64::from(raw.target1) << 32));
    Ok(LinkInfo {
        id: raw.id,
        prog_id: raw.prog_id,
        kind,
        ifindex: kind.on_device().then_some(raw.target0),
        cgroup_id,
    })
}

/// `bpf-link`, `bpf-map`, `bpf-prog` for a bpf object descriptor (from `/proc/self/fd`);
/// `None` when that cannot be read.
fn anon_inode_kind(fd: BorrowedFd<'_>) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    target.to_str()?.strip_prefix("anon_inode:").map(str::to_string)
}

#[cfg(test)]
pub(super) fn hint_for(cmd: BpfCmd, hook: LinkKind, errno: Errno) -> &'static str {
    hint(cmd, hook, errno)
}
