//! Sockmap links: an `sk_msg` program on a sockhash through `BPF_LINK_CREATE` (target: the
//! map's fd, attach type `BPF_SK_MSG_VERDICT`; Linux 6.10+). Unlike `BPF_PROG_ATTACH`, the
//! link can be pinned beside the cgroup links and detached from its pin alone, without
//! the program's descriptor. A socket takes the map's program when it is inserted and keeps
//! it after the link is gone.

use super::{AttachError, Link, LinkKind};
use crate::sys::{self, attach_type, LinkCreate, Program, Syscall};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

/// `BPF_LINK_TYPE_SOCKMAP` (`enum bpf_link_type`).
pub const LINK_TYPE_SOCKMAP: u32 = 14;

/// Link `prog` (an `sk_msg` program) to the sockhash or sockmap `map`.
pub fn link_sk_msg(sys: &Arc<dyn Syscall>, prog: &Program, map: BorrowedFd<'_>) -> Result<Link, AttachError> {
    let args = LinkCreate::new(prog.fd(), map.as_raw_fd() as u32, attach_type::SK_MSG_VERDICT);
    let fd = sys::link_create(&**sys, &args)?;
    let kind = LinkKind::Other { link_type: LINK_TYPE_SOCKMAP, attach_type: attach_type::SK_MSG_VERDICT };
    Ok(Link::from_created(sys, fd, kind, prog))
}
