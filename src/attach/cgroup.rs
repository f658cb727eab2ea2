//! Cgroup bpf links, and the socket load balancer ([`crate::codegen::sock_lb`]) on a cgroup.
//!
//! Contract:
//! - [`link_cgroup`] attaches a loaded program to a cgroup (v2 directory) at one attach
//!   type through `BPF_LINK_CREATE` (target: the cgroup's directory fd, which is closed
//!   again: the link holds the cgroup). The program runs for every process in the cgroup
//!   and its descendants, next to programs others attached (links are multi-attach).
//!   The [`Link`] detaches on drop unless pinned.
//! - [`SockLb::attach`] generates, loads (with `expected_attach_type`, which the kernel
//!   requires for `sock_addr` programs) and links the eight socket load-balancing
//!   programs to one cgroup, against the caller's maps (created, or opened from pins with
//!   [`open_pinned_maps`]). Either all eight are attached or, on error, none stays:
//!   links made before the failure are dropped, which detaches them.
//! - Errors name the program, the hook, the cgroup and the errno; a kernel rejection
//!   carries the verifier log next to our listing.

use super::{AttachError, Link, LinkKind};
use crate::codegen::sock_lb::{self, SockAddrHook};
use crate::codegen::CodegenError;
use crate::sys::{
    self, attach_type, BpfCmd, LinkCreate, Map, ProgSpec, ProgType, Program, SysError, Syscall,
};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

/// Why the socket load balancer could not be put on a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum SockLbError {
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error("program `{name}` uses map `{map}`, which was not given")]
    MissingMap { name: String, map: String },
    #[error("program `{name}`: {source}")]
    Encode {
        name: String,
        #[source]
        source: sluice_asm::EncodeError,
    },
    #[error(
        "the kernel verifier rejected program `{name}` ({errno})\n--- verifier log (end) ---\n{log}\n--- our program where the verifier stopped ---\n{listing}"
    )]
    Rejected { name: String, errno: String, log: String, listing: String },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Load the socket load-balancing program for `hook` against `maps` (by name).
pub fn load_sock_lb_program(
    sys: &Arc<dyn Syscall>,
    hook: SockAddrHook,
    maps: &BTreeMap<&str, Map>,
) -> Result<Program, SockLbError> {
    let name = sock_lb::name(hook);
    let program = sock_lb::generate(hook)?;
    let bound = program.relocate(|map| maps.get(map).map(|m| m.fd().as_raw_fd())).map_err(|_| {
        let map =
            program.map_names().into_iter().find(|m| !maps.contains_key(m.as_str())).unwrap_or_default();
        SockLbError::MissingMap { name: name.to_string(), map }
    })?;
    let bytes = bound.encode().map_err(|source| SockLbError::Encode { name: name.to_string(), source })?;
    let spec = ProgSpec::new(name, ProgType::CgroupSockAddr, &bytes).with_attach_type(hook_attach_type(hook));
    Program::load(sys, &spec).map_err(|e| match e {
        SysError::ProgLoad { name, errno, log } => SockLbError::Rejected {
            name,
            errno: errno.to_string(),
            listing: sluice_asm::text::rejection_context(&program, &log),
            log: sluice_asm::text::log_tail(&log, 40),
        },
        other => SockLbError::Sys(other),
    })
}

/// Open the socket load balancer's maps pinned in `dir` (`<dir>/<map name>`), checking
/// their layout against [`crate::maps::lb`].
pub fn open_pinned_maps(
    sys: &Arc<dyn Syscall>,
    dir: &Path,
) -> Result<BTreeMap<&'static str, Map>, SockLbError> {
    let mut maps = BTreeMap::new();
    for def in sock_lb::map_defs() {
        let spec = crate::node::load::sys_spec(&def);
        maps.insert(def.name, Map::from_pin_checked(sys, &dir.join(def.name), &spec)?);
    }
    Ok(maps)
}

/// The socket load balancer on one cgroup: its eight programs and links.
#[derive(Debug)]
pub struct SockLb {
    cgroup: PathBuf,
    /// In [`SockAddrHook::ALL`] order.
    attached: Vec<(SockAddrHook, Program, Link)>,
}

impl SockLb {
    /// Generate, load and attach the eight programs to the cgroup at `cgroup`.
    pub fn attach(
        sys: &Arc<dyn Syscall>,
        maps: &BTreeMap<&str, Map>,
        cgroup: &Path,
    ) -> Result<SockLb, SockLbError> {
        let mut attached = Vec::with_capacity(SockAddrHook::ALL.len());
        for hook in SockAddrHook::ALL {
            let prog = load_sock_lb_program(sys, hook, maps)?;
            let link = link_cgroup(sys, &prog, cgroup, hook_attach_type(hook))?;
            attached.push((hook, prog, link));
        }
        Ok(SockLb { cgroup: cgroup.to_path_buf(), attached })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The programs with their hooks.
    pub fn programs(&self) -> impl Iterator<Item = (SockAddrHook, &Program)> + '_ {
        self.attached.iter().map(|(h, p, _)| (*h, p))
    }

    /// The links with their hooks.
    pub fn links(&self) -> impl Iterator<Item = (SockAddrHook, &Link)> + '_ {
        self.attached.iter().map(|(h, _, l)| (*h, l))
    }

    /// Pin every link at `<dir>/<program name>`: the programs then stay on the cgroup
    /// after this value and the process are gone.
    pub fn pin(&mut self, dir: &Path) -> Result<(), SockLbError> {
        for (hook, _, link) in &mut self.attached {
            link.pin(&dir.join(sock_lb::name(*hook)))?;
        }
        Ok(())
    }

    /// Detach every program now.
    pub fn detach(self) -> Result<(), SockLbError> {
        for (_, _, link) in self.attached {
            link.detach()?;
        }
        Ok(())
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
