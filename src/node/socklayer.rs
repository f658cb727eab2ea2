//! The socket layer on a node ([`crate::codegen::sockops`]): the `sk_msg` program attached
//! to the `sock_hash` map and the `sock_ops` program linked to a cgroup.
//!
//! Contract:
//! - [`load_program`] generates, binds and loads one of the two programs against the
//!   caller's maps; a kernel rejection carries the end of the verifier log and our program
//!   where the verifier stopped.
//! - [`SockLayer::attach`] first links `sk_msg` to `sock_hash` (a sockmap link,
//!   `BPF_SK_MSG_VERDICT`: a socket takes the map's program when it is inserted, so this
//!   must come before any insertion), then links `sock_ops` to the cgroup
//!   (`BPF_CGROUP_SOCK_OPS`). On error nothing stays attached (unpinned links detach on drop).
//! - [`SockLayer::detach`] / [`remove`] unlink `sock_ops` (no new connection is accelerated)
//!   and `sk_msg`. Sockets already in `sock_hash` keep the program they took at insertion
//!   until they close. Unpinning `sock_hash` (`sluice down`) does not free it while it holds
//!   sockets: each socket holds the `sk_msg` program it took, the program holds the map,
//!   so the map, its sockets and their queues of redirected, unread bytes stay until the
//!   sockets close (the kernel frees a socket's queue only when the socket leaves the map;
//!   `tests/e2e_sock_teardown.rs` checks no byte is lost and the map goes after the close).
//!   Such connections stay accelerated after `down`.
//! - [`sync`] (idempotent; `sluice attach` and the daemon run it): the node's
//!   `spec.socketLayer.cgroup` gets both links pinned under `<pin>/socklayer/`; the socket
//!   layer's maps are pinned under `<pin>/maps/` beside the endpoint maps it reads, created
//!   on first use; a pinned `sock_hash` is reused, so a restart keeps its sockets.

use crate::attach::cgroup::link_cgroup;
use crate::attach::sockmap::link_sk_msg;
use crate::attach::{AttachError, Link};
use crate::codegen::sockops;
use crate::codegen::CodegenError;
use crate::maps::names as map;
use crate::sys::{attach_type, Map, ProgType, Program, SysError, Syscall};
use std::collections::BTreeMap;
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
    /// Relocating, encoding or loading (a verifier rejection with its listing).
    #[error(transparent)]
    Load(#[from] super::load::LoadError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The existing-socket pick-up could not be set up or run.
    #[error("picking up established sockets: {0}")]
    PickUp(String),
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
    let kind = match which {
        Which::Ops => ProgType::SockOps,
        Which::Msg => ProgType::SkMsg,
    };
    Ok(super::load::load_generated(sys, which.name(), &which.generate()?, maps, kind, |s| s)?)
}

/// The socket layer attached to one cgroup: the `sk_msg` link on `sock_hash`, the
/// `sock_ops` link on the cgroup. Unpinned links detach when dropped.
#[derive(Debug)]
pub struct SockLayer {
    cgroup: PathBuf,
    ops: Program,
    msg: Program,
    /// `sk_msg` on `sock_hash`, then `sock_ops` on the cgroup.
    links: [Link; 2],
}

impl SockLayer {
    /// Load both programs against `maps`, link `sk_msg` to `sock_hash`, then `sock_ops` to
    /// `cgroup` (if that fails, the `sk_msg` link is dropped again).
    pub fn attach(
        sys: &Arc<dyn Syscall>,
        maps: &BTreeMap<&str, Map>,
        cgroup: &Path,
    ) -> Result<SockLayer, SockLayerError> {
        let sock_hash = maps
            .get(map::SOCK_HASH)
            .ok_or(SockLayerError::MissingMap { name: sockops::MSG_NAME, map: map::SOCK_HASH.into() })?;
        let msg = load_program(sys, Which::Msg, maps)?;
        let ops = load_program(sys, Which::Ops, maps)?;
        let msg_link = link_sk_msg(sys, &msg, sock_hash.fd())?;
        let ops_link = link_cgroup(sys, &ops, cgroup, attach_type::CGROUP_SOCK_OPS)?;
        Ok(SockLayer { cgroup: cgroup.to_path_buf(), ops, msg, links: [msg_link, ops_link] })
    }

    /// The cgroup `sock_ops` runs for.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The `sock_ops` program and the `sk_msg` program.
    pub fn programs(&self) -> (&Program, &Program) {
        (&self.ops, &self.msg)
    }

    /// The `sk_msg` link and the `sock_ops` link.
    pub fn links(&self) -> &[Link; 2] {
        &self.links
    }

    /// Pin both links under `dir` by program name: they then stay after this value and the
    /// process are gone.
    pub fn pin(&mut self, dir: &Path) -> Result<(), SockLayerError> {
        let [msg, ops] = &mut self.links;
        msg.pin(&dir.join(sockops::MSG_NAME))?;
        ops.pin(&dir.join(sockops::OPS_NAME))?;
        Ok(())
    }

    /// Detach both now: `sock_ops` first (no new connection is accelerated), then `sk_msg`.
    pub fn detach(self) -> Result<(), SockLayerError> {
        let [msg, ops] = self.links;
        ops.detach()?;
        msg.detach()?;
        Ok(())
    }
}

/// The directory of the socket layer's link pins, under the pin dir.
pub const SOCKLAYER_DIR: &str = "socklayer";

/// Why the socket layer could not be wired on a node.
#[derive(Debug, Error)]
pub enum SockLayerSyncError {
    #[error(transparent)]
    SockLayer(#[from] SockLayerError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Load(#[from] super::load::LoadError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SockLayerReport {
    pub cgroup: Option<PathBuf>,
    /// Links created, kept, removed.
    pub created: usize,
    pub kept: usize,
    pub removed: usize,
}

impl std::fmt::Display for SockLayerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cgroup {
            Some(c) => write!(
                f,
                "socket layer on {}: {} links created, {} kept, {} removed",
                c.display(),
                self.created,
                self.kept,
                self.removed
            ),
            None if self.removed > 0 => write!(f, "socket layer off: {} links removed", self.removed),
            None => f.write_str("socket layer off"),
        }
    }
}

/// Open the socket layer's maps pinned under `<pin_dir>/maps`, creating and pinning the
/// socket layer's own ones that are not there yet (the endpoint maps must be).
pub fn open_maps(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
) -> Result<BTreeMap<&'static str, Map>, SockLayerSyncError> {
    let mut maps = BTreeMap::new();
    for def in sockops::map_defs() {
        let path = pin_dir.join("maps").join(def.name);
        let m = if path.exists() {
            super::load::open_pinned_map(sys, pin_dir, &def)?
        } else {
            let m = Map::create(sys, &super::load::sys_spec(&def))?;
            m.pin(&path)?;
            m
        };
        maps.insert(def.name, m);
    }
    let endpoint_defs = crate::maps::fwd::map_defs().into_iter().chain(crate::maps::policy::map_defs(
        crate::maps::policy::Capacity {
            endpoints: 1,
            ipc_v4_l2: 1,
            ipc_v4_l3: 1,
            ipc_v6: 1,
            policy: 1,
            pol_bits: 0,
            ct: 1,
        },
    ));
    for def in endpoint_defs.filter(|d| sockops::MAPS.contains(&d.name)) {
        maps.insert(def.name, super::load::open_pinned_map(sys, pin_dir, &def)?);
    }
    Ok(maps)
}

/// Bring the socket layer in line with the node's `spec.socketLayer`: links pinned at
/// `<pin>/socklayer/<program>`; kept when both are there and `sock_ops` is on the wanted
/// cgroup, else replaced; removed when the node has no socket layer.
pub fn sync(
    sys: &Arc<dyn Syscall>,
    cfg: &crate::model::NodeConfig,
    pin_dir: &Path,
) -> Result<SockLayerReport, SockLayerSyncError> {
    let want = cfg.socket_layer.as_ref().map(|s| s.cgroup.clone());
    let mut report = SockLayerReport { cgroup: want.clone(), ..SockLayerReport::default() };
    let Some(cgroup) = want else {
        report.removed = remove(sys, pin_dir)?;
        return Ok(report);
    };
    let dir = pin_dir.join(SOCKLAYER_DIR);
    let want_id = super::socklb::cgroup_id(&cgroup);
    let ops_ok = Link::from_pin(sys, &dir.join(sockops::OPS_NAME))
        .ok()
        .and_then(|l| l.info().ok())
        .is_some_and(|i| want_id.is_some() && i.cgroup_id == want_id);
    if ops_ok && dir.join(sockops::MSG_NAME).exists() {
        report.kept = 2;
        return Ok(report);
    }
    report.removed = remove(sys, pin_dir)?;
    crate::sys::ensure_bpffs(&dir)?;
    let maps = open_maps(sys, pin_dir)?;
    let mut layer = SockLayer::attach(sys, &maps, &cgroup)?;
    layer.pin(&dir)?;
    report.created = 2;
    Ok(report)
}

/// The id of the cgroup directory at `path` (its inode number, what a cgroup link reports).
/// Detach and unpin the socket layer's links under `pin_dir` (`sock_ops` first); how many
/// there were. Accelerated sockets keep their program until they close.
pub fn remove(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<usize, SockLayerSyncError> {
    let dir = pin_dir.join(SOCKLAYER_DIR);
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut n = 0;
    for name in [sockops::OPS_NAME, sockops::MSG_NAME] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        n += 1;
        // Detaching a link opened from its pin unpins it too.
        if let Ok(link) = Link::from_pin(sys, &path) {
            let _ = link.detach();
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SockLayerSyncError::Io { op: "unpin", path, source }),
        }
    }
    std::fs::remove_dir(&dir).map_err(|source| SockLayerSyncError::Io { op: "remove", path: dir, source })?;
    Ok(n)
}

/// The maps a socket-layer verdict is decided from: a write to any of them bumps the policy
/// revision.
pub const VERDICT_INPUTS: [&str; 4] = [map::POLICY, map::POL_TABLE, map::EP_CONFIG, map::LXC];

/// Bump the policy revision in the pinned `sock_rev` (nothing when the socket layer was
/// never wired on this node); the new revision.
pub fn bump_revision(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<Option<u32>, SysError> {
    let path = pin_dir.join("maps").join(map::SOCK_REV);
    if !path.exists() {
        return Ok(None);
    }
    let rev = Map::from_pin(sys, &path)?;
    let key = crate::maps::u32_key(0);
    let now =
        rev.lookup(&key)?.and_then(|v| v.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    let next = now.unwrap_or(0).wrapping_add(1);
    rev.update(&key, &next.to_le_bytes(), crate::sys::UpdateFlags::ANY)?;
    Ok(Some(next))
}

/// Pick up the established TCP sockets of the processes in `cgroup` (and its descendants),
/// so turning the socket layer on does not wait for new connections (issue 11, existing
/// sockets): the `iter/tcp` program ([`sockops::generate_iter`], offsets and attach id from
/// the kernel's BTF) runs once in each network namespace those processes are in, and
/// decides and inserts every established socket there as `sock_ops` would have at its
/// handshake. Both ends of a connection are found (each in its own namespace); the server
/// end is the socket whose local port has a listener in its namespace. Call it after
/// [`SockLayer::attach`] (a socket takes `sk_msg` when inserted). `maps` gets the
/// iterator's private listener map. Scope: every TCP socket of such a namespace, also of
/// processes outside the cgroup. Returns how many namespaces were walked.
///
/// Not run by [`sync`], because of what the kernel does to a socket that is already in use
/// when it is inserted (found by `tests/e2e_sock_pickup.rs`): a thread already blocked in
/// `recv()` on it stays in the stack's `tcp_recvmsg`, which never looks at the queue that
/// redirected bytes go to, so it sees the peer's next FIN through the stack as end of
/// stream with those bytes unread (data loss to a blocking reader). A reader that waits in
/// `poll`/`epoll` (woken by the redirect, then reading through the socket map's
/// `recvmsg`) is safe, as is any reader that is not inside `recv()` at that moment. Also,
/// bytes of the stack still unread when the first redirected bytes arrive would be read
/// after them. A direction that already fell back to the stack is never switched. So the
/// pick-up is an explicit step for event-driven or idle applications, not the default.
pub fn pick_up(
    sys: &Arc<dyn Syscall>,
    maps: &mut BTreeMap<&'static str, Map>,
    cgroup: &Path,
) -> Result<usize, SockLayerError> {
    run_iter(sys, maps, cgroup, sockops::IterMode::PickUp)
}

/// After a policy change (once [`bump_revision`] has run): re-decide every accelerated
/// connection of the node's socket-layer cgroup under the new policy
/// ([`sockops::IterMode::Restamp`]): still allowed, its verdict moves to the new revision
/// and it stays accelerated; now denied, it keeps the stale verdict and its messages go to
/// the stack. A message sent between the bump and the re-stamp sends its direction to the
/// stack for good (safe, only slower). Nothing when the socket layer is off or not wired;
/// how many namespaces were walked.
pub fn restamp(
    sys: &Arc<dyn Syscall>,
    cfg: &crate::model::NodeConfig,
    pin_dir: &Path,
) -> Result<usize, SockLayerError> {
    let Some(layer) = &cfg.socket_layer else { return Ok(0) };
    if !pin_dir.join(SOCKLAYER_DIR).is_dir() {
        return Ok(0);
    }
    let mut maps = open_maps(sys, pin_dir).map_err(|e| SockLayerError::PickUp(e.to_string()))?;
    run_iter(sys, &mut maps, &layer.cgroup, sockops::IterMode::Restamp)
}

fn run_iter(
    sys: &Arc<dyn Syscall>,
    maps: &mut BTreeMap<&'static str, Map>,
    cgroup: &Path,
    mode: sockops::IterMode,
) -> Result<usize, SockLayerError> {
    use std::os::fd::AsFd;
    let namespaces = cgroup_netns(cgroup)?;
    if namespaces.is_empty() {
        return Ok(0);
    }
    let btf = crate::sys::btf::Btf::vmlinux().map_err(|e| SockLayerError::PickUp(e.to_string()))?;
    let offsets = sockops::IterOffsets::from_btf(&btf).map_err(SockLayerError::PickUp)?;
    let target = btf
        .find(crate::sys::btf::Kind::Func, "bpf_iter_tcp")
        .ok_or_else(|| SockLayerError::PickUp("bpf_iter_tcp not in the kernel's BTF".into()))?;
    let listen_def = sockops::listen_map_def();
    let listen = Map::create(sys, &super::load::sys_spec(&listen_def))?;
    maps.insert(sockops::LISTEN_MAP, listen);
    let program = sockops::generate_iter(offsets, mode)?;
    let prog =
        super::load::load_generated(sys, sockops::ITER_NAME, &program, maps, ProgType::Tracing, |s| {
            crate::sys::ProgSpec {
                attach_btf_id: Some(target),
                ..s.with_attach_type(attach_type::TRACE_ITER)
            }
        })?;
    let link =
        crate::sys::link_create(&**sys, &crate::sys::LinkCreate::new(prog.fd(), 0, attach_type::TRACE_ITER))?;
    let listen = &maps[sockops::LISTEN_MAP];
    for ns in &namespaces {
        // The listeners of the previous namespace are not this one's.
        let stale: Vec<Vec<u8>> = listen.keys().collect::<Result<_, _>>()?;
        for k in stale {
            listen.delete(&k)?;
        }
        run_iter_in(sys, link.as_fd(), ns).map_err(SockLayerError::PickUp)?;
    }
    Ok(namespaces.len())
}

/// Run the iterator `link` once in the network namespace `ns`, from a scoped thread that
/// enters it (an `iter/tcp` run walks the sockets of the namespace it runs in).
pub(crate) fn run_iter_in(
    sys: &Arc<dyn Syscall>,
    link: std::os::fd::BorrowedFd<'_>,
    ns: &std::fs::File,
) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) on this scoped thread only, which runs nothing else.
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
            crate::sys::iter::run(&**sys, link).map(|_| ()).map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the iterator thread panicked".into()))
    })
}

/// The distinct network namespaces of the processes in `cgroup` and its descendants, open.
fn cgroup_netns(cgroup: &Path) -> Result<Vec<std::fs::File>, SockLayerError> {
    let io = |what: &Path, e: std::io::Error| SockLayerError::PickUp(format!("{}: {e}", what.display()));
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        // A cgroup removed meanwhile (or never there) has no processes.
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(|e| io(&dir, e))?,
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir, e))?;
            if entry.file_type().map_err(|e| io(&dir, e))?.is_dir() {
                dirs.push(entry.path());
            }
        }
        let procs = dir.join("cgroup.procs");
        let text = match std::fs::read_to_string(&procs) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(|e| io(&procs, e))?,
        };
        pids.extend(text.split_whitespace().map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))));
    }
    // A process may exit meanwhile: then it has no sockets to pick up.
    Ok(distinct_netns(pids))
}

/// The distinct network namespaces among `paths` (namespace files: `/proc/PID/ns/net`,
/// `/run/netns/NAME`), open, in first-seen order; a path that cannot be opened is skipped.
pub(crate) fn distinct_netns(paths: impl IntoIterator<Item = PathBuf>) -> Vec<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for path in paths {
        let Ok(f) = std::fs::File::open(&path) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(f);
        }
    }
    out
}
