//! Cgroup bpf links.
//!
//! Contract:
//! - [`link_cgroup`] attaches a loaded program to a cgroup (v2 directory) at one attach
//!   type through `BPF_LINK_CREATE` (target: the cgroup's directory fd, which is closed
//!   again: the link holds the cgroup). The program runs for every process in the cgroup
//!   and its descendants, next to programs others attached (links are multi-attach).
//!   The [`Link`] detaches on drop unless pinned.
//! - [`hook_attach_type`]: the kernel attach type of each socket load-balancing hook.
//! - Errors name the program, the hook, the cgroup and the errno. Code generation and
//!   loading live in [`crate::node::socklb`]: this module only attaches.

use super::{AttachError, Link, LinkKind};
use crate::codegen::sock_lb::SockAddrHook;
use crate::sys::{self, attach_type, BpfCmd, LinkCreate, Program, Syscall};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// The kernel attach type of a `sock_addr` hook (`enum bpf_attach_type`).
pub const fn hook_attach_type(hook: SockAddrHook) -> u32 {
    match hook {
        SockAddrHook::Connect4 => attach_type::CGROUP_INET4_CONNECT,
        SockAddrHook::Connect6 => attach_type::CGROUP_INET6_CONNECT,
        SockAddrHook::UdpSendmsg4 => attach_type::CGROUP_UDP4_SENDMSG,
        SockAddrHook::UdpSendmsg6 => attach_type::CGROUP_UDP6_SENDMSG,
        SockAddrHook::UdpRecvmsg4 => attach_type::CGROUP_UDP4_RECVMSG,
        SockAddrHook::UdpRecvmsg6 => attach_type::CGROUP_UDP6_RECVMSG,
        SockAddrHook::Getpeername4 => attach_type::CGROUP_INET4_GETPEERNAME,
        SockAddrHook::Getpeername6 => attach_type::CGROUP_INET6_GETPEERNAME,
    }
}

/// Attach `prog` to the cgroup at `cgroup` (a cgroup v2 directory) at `attach`.
pub fn link_cgroup(
    sys: &Arc<dyn Syscall>,
    prog: &Program,
    cgroup: &Path,
    attach: u32,
) -> Result<Link, AttachError> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(cgroup)
        .map_err(|source| AttachError::CgroupPath { path: cgroup.to_path_buf(), source })?;
    let kind = LinkKind::Cgroup { attach_type: attach };
    let args = LinkCreate::new(prog.fd(), dir.as_raw_fd() as u32, attach);
    let fd = sys::link_create(&**sys, &args).map_err(|e| match e.errno() {
        Some(errno) => AttachError::Cgroup {
            cmd: BpfCmd::LinkCreate,
            hook: kind,
            cgroup: cgroup.to_path_buf(),
            prog: prog.name().to_string(),
            errno,
            hint: hint(errno.0),
        },
        None => AttachError::Sys(e),
    })?;
    Ok(Link::from_created(sys, fd, kind, prog))
}

fn hint(errno: i32) -> &'static str {
    match errno {
        libc::EINVAL => "the program's expected_attach_type must match the attach type, and the target be a cgroup v2 directory",
        libc::EBADF => "the target is not a cgroup v2 directory",
        libc::EPERM | libc::EACCES => "needs CAP_BPF and CAP_NET_ADMIN (or root)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attach types, as `enum bpf_attach_type` numbers them (Linux uapi).
    #[test]
    fn attach_types_are_the_kernel_numbers() {
        let got: Vec<(SockAddrHook, u32)> =
            SockAddrHook::ALL.iter().map(|&h| (h, hook_attach_type(h))).collect();
        let want = vec![
            (SockAddrHook::Connect4, 10),
            (SockAddrHook::Connect6, 11),
            (SockAddrHook::UdpSendmsg4, 14),
            (SockAddrHook::UdpSendmsg6, 15),
            (SockAddrHook::UdpRecvmsg4, 19),
            (SockAddrHook::UdpRecvmsg6, 20),
            (SockAddrHook::Getpeername4, 29),
            (SockAddrHook::Getpeername6, 30),
        ];
        assert_eq!(got, want);
    }
}
