//! The socket layer on a node ([`crate::codegen::sockops`]): the `sk_msg` program attached
//! to the `sock_hash` map and the `sock_ops` program linked to a cgroup.
//!
//! Contract:
//! - [`load_program`] generates, binds and loads one of the two programs against the
//!   caller's maps; a kernel rejection carries the end of the verifier log and our program
//!   where the verifier stopped.
//! - [`SockLayer::attach`] first attaches `sk_msg` to `sock_hash` (`BPF_PROG_ATTACH`,
//!   `BPF_SK_MSG_VERDICT`: the map holds the program, and a socket takes the map's program
//!   when it is inserted, so this must come before any insertion), then links `sock_ops`
//!   to the cgroup (`BPF_CGROUP_SOCK_OPS`). On error nothing stays attached.
//! - [`SockLayer::detach`] unlinks `sock_ops` (no new connection is accelerated) and
//!   detaches `sk_msg` from the map. Sockets already in `sock_hash` keep the program they
//!   took at insertion until they close: their data keeps flowing (the kernel drops a
//!   map's sockets only when the map itself goes).

use crate::attach::cgroup::link_cgroup;
use crate::attach::{AttachError, Link};
use crate::codegen::sockops;
use crate::codegen::CodegenError;
use crate::maps::names as map;
use crate::sys::{self, attach_type, Map, ProgSpec, ProgType, Program, SysError, Syscall};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why the socket layer could not be loaded or attached.
#[derive(Debug, Error)]
pub enum SockLayerError {
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error("program `{name}` uses map `{map}`, which was not given")]
    MissingMap { name: &'static str, map: String },
    #[error("program `{name}`: {source}")]
    Encode {
        name: &'static str,
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

/// One of the socket layer's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `sock_ops` on the cgroup.
    Ops,
    /// `sk_msg` on `sock_hash`.
    Msg,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Ops => sockops::OPS_NAME,
            Which::Msg => sockops::MSG_NAME,
        }
    }

    /// The generated program.
    pub fn generate(self) -> Result<sluice_asm::Program, CodegenError> {
        match self {
            Which::Ops => sockops::generate_ops(),
            Which::Msg => sockops::generate_msg(),
        }
    }
}

/// Generate and load one program against `maps` (every name in [`sockops::MAPS`]).
pub fn load_program(
    sys: &Arc<dyn Syscall>,
    which: Which,
    maps: &BTreeMap<&str, Map>,
) -> Result<Program, SockLayerError> {
    let name = which.name();
    let program = which.generate()?;
    let bound = program.relocate(|m| maps.get(m).map(|m| m.fd().as_raw_fd())).map_err(|_| {
        let map =
            program.map_names().into_iter().find(|m| !maps.contains_key(m.as_str())).unwrap_or_default();
        SockLayerError::MissingMap { name, map }
    })?;
    let bytes = bound.encode().map_err(|source| SockLayerError::Encode { name, source })?;
    let spec = match which {
        Which::Ops => ProgSpec::new(name, ProgType::SockOps, &bytes),
        Which::Msg => ProgSpec::new(name, ProgType::SkMsg, &bytes),
    };
    Program::load(sys, &spec).map_err(|e| match e {
        SysError::ProgLoad { name, errno, log } => SockLayerError::Rejected {
            name,
            errno: errno.to_string(),
            listing: sluice_asm::text::rejection_context(&program, &log),
            log: sluice_asm::text::log_tail(&log, 40),
        },
        other => SockLayerError::Sys(other),
    })
}

/// Attach `msg` to the `sock_hash` map (its fd).
pub fn attach_msg(sys: &Arc<dyn Syscall>, sock_hash: BorrowedFd<'_>, msg: &Program) -> Result<(), SysError> {
    sys::prog_attach(&**sys, sock_hash.as_raw_fd() as u32, msg.fd(), attach_type::SK_MSG_VERDICT, 0)
}

/// Detach `msg` from the `sock_hash` map (its fd).
pub fn detach_msg(sys: &Arc<dyn Syscall>, sock_hash: BorrowedFd<'_>, msg: &Program) -> Result<(), SysError> {
    sys::prog_detach(&**sys, sock_hash.as_raw_fd() as u32, Some(msg.fd()), attach_type::SK_MSG_VERDICT)
}

/// The socket layer attached to one cgroup.
#[derive(Debug)]
pub struct SockLayer {
    cgroup: PathBuf,
    ops: Program,
    msg: Program,
    link: Option<Link>,
    sys: Arc<dyn Syscall>,
    /// A duplicate of the `sock_hash` map's fd, to detach `sk_msg` from it.
    sock_hash: OwnedFd,
}

impl SockLayer {
    /// Load both programs against `maps`, attach `sk_msg` to `sock_hash`, link `sock_ops`
    /// to `cgroup`.
    pub fn attach(
        sys: &Arc<dyn Syscall>,
        maps: &BTreeMap<&str, Map>,
        cgroup: &Path,
    ) -> Result<SockLayer, SockLayerError> {
        let sock_hash = maps
            .get(map::SOCK_HASH)
            .ok_or(SockLayerError::MissingMap { name: sockops::MSG_NAME, map: map::SOCK_HASH.into() })?
            .fd()
            .try_clone_to_owned()
            .map_err(|e| SysError::Io { op: "dup", path: PathBuf::from(map::SOCK_HASH), source: e })?;
        let msg = load_program(sys, Which::Msg, maps)?;
        let ops = load_program(sys, Which::Ops, maps)?;
        attach_msg(sys, sock_hash.as_fd(), &msg)?;
        let link = match link_cgroup(sys, &ops, cgroup, attach_type::CGROUP_SOCK_OPS) {
            Ok(l) => l,
            Err(e) => {
                let _ = detach_msg(sys, sock_hash.as_fd(), &msg);
                return Err(e.into());
            }
        };
        Ok(SockLayer {
            cgroup: cgroup.to_path_buf(),
            ops,
            msg,
            link: Some(link),
            sys: sys.clone(),
            sock_hash,
        })
    }

    /// The cgroup `sock_ops` runs for.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The `sock_ops` program and the `sk_msg` program.
    pub fn programs(&self) -> (&Program, &Program) {
        (&self.ops, &self.msg)
    }

    /// The cgroup link of `sock_ops`.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// Pin the cgroup link at `path`: `sock_ops` then stays on the cgroup after this value
    /// and the process are gone (the `sk_msg` attachment lives as long as the map).
    pub fn pin(&mut self, path: &Path) -> Result<(), SockLayerError> {
        if let Some(l) = self.link.as_mut() {
            l.pin(path)?;
        }
        Ok(())
    }

    /// Unlink `sock_ops` and detach `sk_msg` now.
    pub fn detach(mut self) -> Result<(), SockLayerError> {
        if let Some(l) = self.link.take() {
            l.detach()?;
        }
        detach_msg(&self.sys, self.sock_hash.as_fd(), &self.msg)?;
        Ok(())
    }
}

impl Drop for SockLayer {
    fn drop(&mut self) {
        // An unpinned link detaches when dropped; the sk_msg attachment goes with it unless
        // the link was pinned (then both stay, as a pinned node's datapath does).
        if self.link.as_ref().is_some_and(|l| l.pinned().is_none()) {
            self.link.take();
            let _ = detach_msg(&self.sys, self.sock_hash.as_fd(), &self.msg);
        }
    }
}
