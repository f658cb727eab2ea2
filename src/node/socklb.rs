//! Socket-level load balancing on a node: the eight cgroup `sock_addr` programs
//! ([`crate::codegen::sock_lb`]) on `spec.loadBalancer.socketCgroup`, over the node's
//! pinned load-balancing maps.
//!
//! Contract:
//! - [`sync`] (idempotent; `sluice attach` and the daemon run it after attaching): when the
//!   node names a cgroup, every hook's link is pinned at `<pin>/socklb/<program>`. Links
//!   already pinned there and attached to that cgroup are kept (the programs depend on no
//!   node contents, so a service change never touches them); missing ones are created. When
//!   the node names no cgroup (or another one), the pinned links are removed (detached).
//! - The links are not under `<pin>/links`: those are the device hooks that
//!   [`super::wire::attach`] and [`super::reshape`] reconcile by name.
//! - [`remove`] detaches and unpins them (`sluice down`).
//! - [`SockLb::attach`] generates, loads (with `expected_attach_type`, which the kernel
//!   requires for `sock_addr` programs) and links the eight programs to one cgroup,
//!   against the caller's maps (created, or opened from pins with [`open_pinned_maps`]).
//!   Either all eight are attached or, on error, none stays: links made before the
//!   failure are dropped, which detaches them. A kernel rejection carries the end of the
//!   verifier log and our program around where it stopped.
//! - The maps are the node's own pins (`<pin>/maps/lb_*`): the node must balance services
//!   (see [`super::plan`]), which every node naming a socket cgroup does.

use crate::attach::cgroup::{hook_attach_type, link_cgroup};
use crate::attach::{AttachError, Link, LinkKind};
use crate::codegen::sock_lb::{self, SockAddrHook};
use crate::codegen::CodegenError;
use crate::model::NodeConfig;
use crate::sys::{Map, ProgType, Program, SysError, Syscall};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why the socket load balancer could not be put on a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum SockLbError {
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// Relocating, encoding or loading (a verifier rejection with its listing).
    #[error(transparent)]
    Load(#[from] super::load::LoadError),
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
    let program = sock_lb::generate(hook)?;
    let attach = hook_attach_type(hook);
    Ok(super::load::load_generated(
        sys,
        sock_lb::name(hook),
        &program,
        maps,
        ProgType::CgroupSockAddr,
        |s| s.with_attach_type(attach),
    )?)
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

/// The directory of the socket load balancer's link pins, under the pin dir.
pub const SOCKLB_DIR: &str = "socklb";

/// Why the socket load balancer could not be wired.
#[derive(Debug, Error)]
pub enum SockLbSyncError {
    #[error(transparent)]
    SockLb(#[from] SockLbError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] super::load::LoadError),
}

/// What [`sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SockLbReport {
    pub cgroup: Option<PathBuf>,
    pub created: usize,
    pub kept: usize,
    pub removed: usize,
}

impl std::fmt::Display for SockLbReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cgroup {
            Some(c) => write!(
                f,
                "socket LB on {}: {} links created, {} kept, {} removed",
                c.display(),
                self.created,
                self.kept,
                self.removed
            ),
            None if self.removed > 0 => write!(f, "socket LB off: {} links removed", self.removed),
            None => f.write_str("socket LB off"),
        }
    }
}

/// The id of the cgroup directory at `path` (its inode number, what a cgroup link reports).
/// A cgroup's id: its directory's inode number (what the kernel's cgroup links report).
pub(super) fn cgroup_id(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Bring the socket load balancer's links in line with the node's `socketCgroup`.
pub fn sync(
    sys: &Arc<dyn Syscall>,
    cfg: &NodeConfig,
    pin_dir: &Path,
) -> Result<SockLbReport, SockLbSyncError> {
    let dir = pin_dir.join(SOCKLB_DIR);
    let want = cfg.load_balancer.socket_cgroup.clone();
    let mut report = SockLbReport { cgroup: want.clone(), ..SockLbReport::default() };
    let Some(cgroup) = want else {
        report.removed = remove(sys, pin_dir)?;
        return Ok(report);
    };
    let want_id = cgroup_id(&cgroup);
    // Keep links attached to this cgroup; drop the rest.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    if dir.is_dir() {
        for hook in SockAddrHook::ALL {
            let path = dir.join(sock_lb::name(hook));
            if !path.exists() {
                continue;
            }
            let ok = Link::from_pin(sys, &path)
                .ok()
                .and_then(|l| l.info().ok())
                .is_some_and(|i| want_id.is_some() && i.cgroup_id == want_id);
            if ok {
                kept.insert(sock_lb::name(hook));
                report.kept += 1;
            } else {
                if let Ok(link) = Link::from_pin(sys, &path) {
                    let _ = link.detach();
                }
                let _ = std::fs::remove_file(&path);
                report.removed += 1;
            }
        }
    }
    if kept.len() == SockAddrHook::ALL.len() {
        return Ok(report);
    }
    crate::sys::ensure_bpffs(&dir)?;
    let mut maps: BTreeMap<&str, Map> = BTreeMap::new();
    for def in sock_lb::map_defs() {
        maps.insert(def.name, super::load::open_pinned_map(sys, pin_dir, &def)?);
    }
    // All or nothing: links made here are dropped (detached) unless every hook succeeds.
    let mut made: Vec<(SockAddrHook, Link)> = Vec::new();
    for hook in SockAddrHook::ALL {
        if kept.contains(sock_lb::name(hook)) {
            continue;
        }
        let prog = load_sock_lb_program(sys, hook, &maps)?;
        let link = link_cgroup(sys, &prog, &cgroup, hook_attach_type(hook)).map_err(SockLbError::from)?;
        made.push((hook, link));
    }
    for (hook, link) in &mut made {
        link.pin(&dir.join(sock_lb::name(*hook))).map_err(SockLbError::from)?;
    }
    report.created = made.len();
    Ok(report)
}

/// Detach and unpin every socket load-balancer link under `pin_dir`; how many there were.
pub fn remove(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<usize, SockLbSyncError> {
    let dir = pin_dir.join(SOCKLB_DIR);
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut n = 0;
    let entries = std::fs::read_dir(&dir).map_err(|source| SockLbSyncError::Io {
        op: "read",
        path: dir.clone(),
        source,
    })?;
    for e in entries.flatten() {
        let path = e.path();
        if let Ok(link) = Link::from_pin(sys, &path) {
            if matches!(link.kind(), LinkKind::Cgroup { .. }) {
                let _ = link.detach();
            }
        }
        // Detaching a link opened from its pin unpins it too.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SockLbSyncError::Io { op: "unpin", path, source: e });
            }
            _ => {}
        }
        n += 1;
    }
    std::fs::remove_dir(&dir).map_err(|source| SockLbSyncError::Io { op: "remove", path: dir, source })?;
    Ok(n)
}
