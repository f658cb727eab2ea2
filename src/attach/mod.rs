//! attach: putting loaded programs on hooks, and taking them off again.
//!
//! Contract:
//! - A [`Link`] is one bpf link: a program on an XDP or tcx hook of one device
//!   (`BPF_LINK_CREATE`), held by a descriptor. Dropping an unpinned link detaches it
//!   (`BPF_LINK_DETACH`, then close), so a crashed or finished process leaves nothing
//!   behind; a pinned link ([`Link::pin`]) outlives the process and dropping it only closes
//!   the descriptor. [`Link::update`] swaps the program atomically (`BPF_LINK_UPDATE`):
//!   every packet sees the old program or the new one, never neither.
//! - Interfaces are looked up by name in the calling thread's network namespace, and the
//!   kernel resolves an ifindex in the namespace of the thread that creates the link: a
//!   caller attaching to another namespace's devices does both from a thread that entered it.
//! - [`Attachment`] says how a program is attached: through a bpf link, or through netlink
//!   (`cls_bpf` on clsact, `IFLA_XDP`), the fallback for kernels without tcx links, which
//!   `src/netlink` provides. `sluice status` prints its [`Mechanism`].
//! - Every failure is an [`AttachError`] naming the command, the hook, the interface, the
//!   program and the errno, with a hint where the errno has a usual cause.
//!
//! Cgroup links: [`cgroup`] (the socket load balancer's `sock_addr` programs); `sock_ops`
//! is not here yet; [`LinkKind::Other`] describes any link
//! this module does not create, so pinned links of any type can still be opened.

pub mod cgroup;
mod iface;
mod link;
pub mod sockmap;

pub use iface::Interface;
pub use link::{xdp_flags, Direction, Link, LinkInfo, LinkKind};

use crate::sys::{BpfCmd, Errno, SysError};
use std::fmt;

/// Result of this layer.
pub type Result<T, E = AttachError> = std::result::Result<T, E>;

/// Why attaching, swapping or detaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A link command failed on a device hook.
    #[error("{cmd} ({hook} of {iface}, program `{prog}`) failed: {errno}{}", hint_text(.hint))]
    Link {
        cmd: BpfCmd,
        hook: LinkKind,
        iface: Interface,
        /// The program being attached or swapped in.
        prog: String,
        errno: Errno,
        /// The usual cause of this errno here, or empty.
        hint: &'static str,
    },
    /// A link command failed on a cgroup hook.
    #[error("{cmd} ({hook} of cgroup `{cgroup}`, program `{prog}`) failed: {errno}{}", hint_text(.hint))]
    Cgroup {
        cmd: BpfCmd,
        hook: LinkKind,
        cgroup: std::path::PathBuf,
        prog: String,
        errno: Errno,
        hint: &'static str,
    },
    /// A cgroup directory could not be opened.
    #[error("cgroup `{path}`: {source}")]
    CgroupPath {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The interface name is not known in this thread's network namespace.
    #[error("interface `{name}`: {source}")]
    Interface {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The caller asked for something the kernel would reject; nothing was sent.
    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },
    /// Pinning, opening a pin or reading a link's info failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

fn hint_text(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

impl AttachError {
    /// The errno of the failed syscall, if the error came from one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            AttachError::Link { errno, .. } | AttachError::Cgroup { errno, .. } => Some(*errno),
            AttachError::CgroupPath { source, .. } => source.raw_os_error().map(Errno),
            AttachError::Interface { source, .. } => source.raw_os_error().map(Errno),
            AttachError::Sys(e) => e.errno(),
            AttachError::Invalid { .. } => None,
        }
    }

    /// True when link creation failed because this kernel has no such link type (tcx
    /// before Linux 6.6): the caller should fall back to a netlink attachment.
    pub fn link_unsupported(&self) -> bool {
        matches!(self, AttachError::Link { cmd: BpfCmd::LinkCreate, errno, .. } if errno.is_unsupported())
    }
}

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// A bpf link (`BPF_LINK_CREATE`): tcx, XDP link.
    Link,
    /// A netlink attachment: `cls_bpf` on a clsact qdisc, or `IFLA_XDP`.
    Netlink,
}

impl Mechanism {
    /// `"link"` or `"netlink"`, as `sluice status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Link => "link",
            Mechanism::Netlink => "netlink",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hook of a netlink attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetlinkHook {
    /// A direct-action `cls_bpf` filter on the clsact qdisc; `handle` and `priority` are
    /// what removing exactly this filter needs.
    ClsBpf { direction: Direction, handle: u32, priority: u16 },
    /// `IFLA_XDP` with these [`xdp_flags`].
    Xdp { flags: u32 },
}

impl fmt::Display for NetlinkHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetlinkHook::ClsBpf { direction, handle, priority } => {
                write!(f, "cls_bpf-{} (handle {handle:#x}, priority {priority})", direction.name())
            }
            NetlinkHook::Xdp { flags } => write!(f, "xdp{}", xdp_flags::mode_suffix(flags)),
        }
    }
}

/// A program attached through netlink. `src/netlink` creates these; this module only
/// describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkAttachment {
    pub hook: NetlinkHook,
    pub iface: Interface,
    /// The attached program's name.
    pub prog: String,
    /// The attached program's kernel id.
    pub prog_id: u32,
}

/// A program on a hook, by whichever mechanism put it there.
#[derive(Debug)]
pub enum Attachment {
    /// A bpf link (preferred where the kernel has one).
    Link(Link),
    /// The netlink fallback.
    Netlink(NetlinkAttachment),
}

impl Attachment {
    /// How the program is attached.
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Attachment::Link(_) => Mechanism::Link,
            Attachment::Netlink(_) => Mechanism::Netlink,
        }
    }

    /// The device, if the hook belongs to one.
    pub fn interface(&self) -> Option<&Interface> {
        match self {
            Attachment::Link(link) => link.interface(),
            Attachment::Netlink(n) => Some(&n.iface),
        }
    }
}

impl From<Link> for Attachment {
    fn from(link: Link) -> Self {
        Attachment::Link(link)
    }
}

/// `tcx-ingress of lxc1 (ifindex 5): program from_ep_1, link`.
impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attachment::Link(link) => {
                write!(f, "{}", link.kind())?;
                if let Some(iface) = link.interface() {
                    write!(f, " of {iface}")?;
                }
                write!(f, ": program {}, {}", link.program_name(), self.mechanism())
            }
            Attachment::Netlink(n) => {
                write!(f, "{} of {}: program {}, {}", n.hook, n.iface, n.prog, self.mechanism())
            }
        }
    }
}

#[cfg(test)]
mod tests;
