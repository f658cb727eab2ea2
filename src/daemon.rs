//! `sluice daemon`: load (or adopt) and attach a node, then keep it in step with its node
//! file and answer requests on a root-only Unix socket.
//!
//! Contract:
//! - Start: a node already pinned under the pin dir is adopted (its maps' layouts are
//!   checked by the update path) and the config is applied to it as a change (below);
//!   otherwise the node is loaded and pinned. Then the programs are attached (idempotent)
//!   and forwarding is wired ([`forward::sync`]: router pair, overlay device, host routes,
//!   `lxc`/`tunnel`/`fwd_cfg`); every successful apply wires forwarding again, so endpoints
//!   that came, went or moved are routed.
//! - Pins and links outlive the daemon: stopping it (SIGTERM/SIGINT, or the `stop` flag)
//!   removes only the socket, and a SIGKILL leaves nothing to clean: forwarding and
//!   conntrack go on while no daemon runs, and the next start adopts the node.
//! - Changes: the node file is polled. A change that parses and keeps the code shape (the
//!   same programs) is applied as map updates only ([`update_pinned`]). A change of code
//!   shape (endpoints added or removed) is applied by [`reshape`]: new programs loaded and
//!   verified, maps written (kept, conntrack included), then links created, swapped in
//!   place (`BPF_LINK_UPDATE`, same link) or removed, and stale program pins removed.
//!   A parse error, a verifier rejection, a missing interface or a map too small (full,
//!   or a layout that would have to grow) applies nothing, so the node keeps its previous
//!   state. A kernel failure while attaching is rolled back as far as it can be and
//!   reported (see [`crate::node::reshape`]). An endpoint whose interface changes while the
//!   program set stays the same is not re-attached until the next start.
//! - The node file is read with [`model::limits::read_node_file`]: a FIFO, device or
//!   directory in its place, a file past the size limit or one nested too deep is an error
//!   reported at once, never a stall. A change is detected by content: each poll reads the
//!   file and compares it with the text last seen, so an edit that keeps the size and
//!   restores the modification time is applied too.
//! - Live prefilter changes (`sluice prefilter add|del` while the daemon runs) are not part of
//!   the node file: an apply makes the pinned deny set equal to the file's and reports the
//!   prefixes it removes that were added live (and those it restores), so nothing is reverted
//!   silently. To keep a prefix, add it to `spec.prefilter.deny`.
//! - Socket: one text request line per connection, one response: `status`, `apply`,
//!   `metrics`. The socket is mode 0600; a parent directory it creates is mode 0700. A daemon
//!   already answering on the socket is noticed before anything is loaded or applied, so a
//!   second daemon on the same socket stops before it touches the node (two daemons started
//!   at the same instant are the pin-dir lock's to separate). Each connection is served on
//!   its own thread (at most [`MAX_CLIENTS`] at once; more are told `error: busy`), with a
//!   read timeout of [`CLIENT_TIMEOUT`], so idle clients cannot hold others up.
//! - Each read of a changed file prints [`model::warnings`] (valid settings that are probably
//!   not meant) before it is applied.
//!
//! Applies never overlap: file polls (on their own thread) and `apply` requests take one
//! lock. `status` and `metrics` do not wait for an apply. The daemon holds the node's lock
//! ([`crate::node::lock`]) for its whole life: a second daemon on the same pin dir, or a
//! command that would change the node, is refused with the daemon's pid and socket.

use crate::maps::prefilter::{DenySet, Prefix};
use crate::model::{self, ModelError, NodeConfig};
use crate::node::forward::{self, ForwardError};
use crate::node::load::{self, LoadError};
use crate::node::reshape::{reshape, Reshape, ReshapeError};
use crate::node::socklb::{self, SockLbSyncError};
use crate::node::update::{update_pinned, Update};
use crate::node::wire::{self, AttachOptions, WireError};
use crate::node::{self, PlanError};
use crate::sys::{self, Syscall};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";

/// The longest request line read from a client.
const MAX_REQUEST: u64 = 256;

/// How long a client may take to send its request (and to take its response).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections served at once; one more is answered `error: busy` and closed.
pub const MAX_CLIENTS: usize = 64;

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The node file to load and watch.
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// How often the node file is checked for changes.
    pub poll: Duration,
    /// How hooks are attached: `netlink_only` for `cls_bpf` filters (`--attach tc`).
    pub attach: AttachOptions,
}

/// Cluster mode ([`run_in_cluster`]): where the cluster's etcd is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// etcd endpoints (`crate::cluster`); empty: single-file mode.
    pub etcd: Vec<String>,
    /// The node's lease TTL in seconds.
    pub lease_ttl: i64,
}

/// Why the daemon could not start, or why one apply failed.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("sluice daemon needs root (bpf() and bpffs): {0}")]
    NeedsKernel(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Reshape(#[from] ReshapeError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("socket load balancer: {0}")]
    SockLb(#[from] SockLbSyncError),
    #[error(transparent)]
    SockLayer(#[from] crate::node::socklayer::SockLayerSyncError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another daemon already serves {}", .0.display())]
    SocketInUse(PathBuf),
    #[error(transparent)]
    Lock(#[from] crate::node::lock::LockError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::EtcdError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { op, path, source }
}

/// Counters the `metrics` request reports, since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Applies that succeeded (at start on an adopted node, on a file change, on `apply`).
    pub updates_applied: u64,
    /// Parse errors and refused or failed applies.
    pub errors: u64,
    /// When the last apply succeeded, in seconds since the Unix epoch.
    pub last_apply: Option<u64>,
    /// Applies that changed the program set (counted in `updates_applied` too).
    pub reshapes: u64,
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "updates_applied {}", self.updates_applied)?;
        writeln!(f, "errors {}", self.errors)?;
        match self.last_apply {
            Some(t) => writeln!(f, "last_apply_unix {t}")?,
            None => writeln!(f, "last_apply_unix never")?,
        }
        write!(f, "reshapes {}", self.reshapes)
    }
}

/// What one apply did, with what it changed of the live prefilter edits.
#[derive(Debug)]
pub struct ApplyReport {
    pub applied: Applied,
    pub live: LivePrefilter,
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.applied)?;
        if !self.live.is_empty() {
            write!(f, "; {}", self.live)?;
        }
        Ok(())
    }
}

/// How the pinned deny set differed from the node file before an apply made them equal:
/// prefixes added (`removed`) or deleted (`restored`) by `sluice prefilter` since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LivePrefilter {
    /// Pinned but not in the file: this apply removed them.
    pub removed: Vec<Prefix>,
    /// In the file but not pinned: this apply added them back.
    pub restored: Vec<Prefix>,
}

impl LivePrefilter {
    /// The difference between the pinned deny set and the file's.
    pub fn between(pinned: &DenySet, file: &DenySet) -> LivePrefilter {
        let (pinned, file): (BTreeSet<Prefix>, BTreeSet<Prefix>) =
            (pinned.prefixes().collect(), file.prefixes().collect());
        LivePrefilter {
            removed: pinned.difference(&file).copied().collect(),
            restored: file.difference(&pinned).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.restored.is_empty()
    }
}

/// `a.b.c.d/len` or `x::/len`.
fn prefix_text(p: &Prefix) -> String {
    match *p {
        Prefix::V4 { addr, len } => format!("{}/{len}", Ipv4Addr::from(addr)),
        Prefix::V6 { addr, len } => format!("{}/{len}", Ipv6Addr::from(addr)),
    }
}

impl std::fmt::Display for LivePrefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |ps: &[Prefix]| ps.iter().map(prefix_text).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.removed.is_empty() {
            parts.push(format!(
                "removed {} prefilter prefix(es) added live, not in the node file: {} (add them to \
                 spec.prefilter.deny to keep them)",
                self.removed.len(),
                list(&self.removed)
            ));
        }
        if !self.restored.is_empty() {
            parts.push(format!(
                "restored {} prefilter prefix(es) deleted live: {}",
                self.restored.len(),
                list(&self.restored)
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// How the node's pinned deny set differs from `cfg`'s; empty when nothing is pinned yet.
pub fn live_prefilter(sys: &Arc<dyn Syscall>, cfg: &NodeConfig, pin_dir: &Path) -> LivePrefilter {
    let Ok(pinned) = load::open_prefilter(sys, pin_dir).and_then(|maps| load::prefilter_set(&maps)) else {
        return LivePrefilter::default();
    };
    LivePrefilter::between(&pinned, &DenySet::new(cfg.prefilter.deny.iter().map(node::prefix_of)))
}

/// What one apply did.
#[derive(Debug)]
pub enum Applied {
    /// The same programs: map updates only.
    Maps(Update),
    /// The program set changed: programs loaded, swapped or removed.
    Reshaped(Box<Reshape>),
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Maps(u) => f.write_str(&describe(u)),
            Applied::Reshaped(r) => write!(f, "code shape changed: {r}"),
        }
    }
}

/// The map writes of one update, per map, as one line.
pub fn describe(update: &Update) -> String {
    if update.writes.is_empty() {
        return "no map writes (already in step)".to_string();
    }
    let per_map: Vec<String> = update.writes.iter().map(|(m, n)| format!("{m}: {n}")).collect();
    let mut line = format!("{} map writes ({})", update.total(), per_map.join(", "));
    if !update.revoked.is_empty() {
        line += &format!("; {} established connection entries revoked", update.revoked.len());
    }
    for w in &update.warnings {
        line += &format!("; warning: {w}");
    }
    line
}

/// How long the daemon took from start to an attached node, per phase: printed once as
/// `ready in T ms (plan P ms, load|adopt L ms, attach A ms)`, which [`StartTimes::parse`]
/// reads back (the benchmark reads the daemon's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTimes {
    /// `load` (a fresh node) or `adopt` (a pinned one).
    pub how: &'static str,
    /// Reading the node file, validation, policy resolution and code generation.
    pub plan: Duration,
    /// Maps created and filled, programs loaded and pinned; or, adopting, the config applied.
    pub load: Duration,
    pub attach: Duration,
}

impl StartTimes {
    pub fn total(&self) -> Duration {
        self.plan + self.load + self.attach
    }

    /// The times in a `ready in ...` line.
    pub fn parse(line: &str) -> Option<StartTimes> {
        let inner = line.trim().strip_prefix("ready in ")?.split_once(" (")?.1.strip_suffix(')')?;
        let mut parts = inner.split(", ");
        let mut field = |label: &str| -> Option<(String, Duration)> {
            let (name, value) = parts.next()?.split_once(' ')?;
            let ms: f64 = value.strip_suffix(" ms")?.parse().ok()?;
            (label.is_empty() || name == label).then(|| (name.to_string(), Duration::from_secs_f64(ms / 1e3)))
        };
        let (_, plan) = field("plan")?;
        let (how, load) = field("")?;
        let (_, attach) = field("attach")?;
        let how = match how.as_str() {
            "load" => "load",
            "adopt" => "adopt",
            _ => return None,
        };
        Some(StartTimes { how, plan, load, attach })
    }
}

impl std::fmt::Display for StartTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "ready in {:.1} ms (plan {:.1} ms, {} {:.1} ms, attach {:.1} ms)",
            ms(self.total()),
            ms(self.plan),
            self.how,
            ms(self.load),
            ms(self.attach)
        )
    }
}

/// The node file as last read: its text, or why it could not be read or parsed.
type Seen = Option<Result<String, String>>;

/// The daemon's state, shared by the poller and the client threads.
struct Daemon<'a> {
    sys: Arc<dyn Syscall>,
    opts: &'a Options,
    metrics: Mutex<Metrics>,
    /// Held for a whole apply, so applies never overlap; holds the node file as last seen
    /// (applied or rejected), so one edit is handled once.
    seen: Mutex<Seen>,
    /// Connections being served.
    clients: AtomicUsize,
    /// Cluster mode: the agent that publishes this node and watches the others.
    cluster: Option<Arc<crate::cluster::Agent>>,
    /// The cluster view's generation the last apply used.
    cluster_applied: std::sync::atomic::AtomicU64,
    /// Mode wireguard: the userspace device's counters (the `wireguard` request).
    wireguard: Option<Arc<crate::encrypt::wg::Stats>>,
}

/// Locks `m`; a thread that panicked while holding it left plain data, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Daemon<'_> {
    fn new(sys: Arc<dyn Syscall>, opts: &Options) -> Daemon<'_> {
        Daemon {
            sys,
            opts,
            metrics: Mutex::new(Metrics::default()),
            seen: Mutex::new(None),
            clients: AtomicUsize::new(0),
            cluster: None,
            cluster_applied: std::sync::atomic::AtomicU64::new(0),
            wireguard: None,
        }
    }

    /// Read the node file (a regular file, bounded) and parse it; remember what was read.
    fn read_config(&self, seen: &mut Seen) -> Result<NodeConfig, DaemonError> {
        let path = &self.opts.config;
        let text = model::limits::read_node_file(path);
        *seen = Some(text.as_ref().map(Clone::clone).map_err(ToString::to_string));
        let mut cfg = model::parse_str(&text?, &path.display().to_string())?;
        for warning in model::warnings(&cfg) {
            println!("warning: {warning}");
        }
        if let Some(agent) = &self.cluster {
            // The generation first: a change that lands while this view is applied moves it
            // again, and the next poll applies that.
            self.cluster_applied.store(agent.generation(), Ordering::Release);
            agent.set_local(&cfg);
            for note in agent.view().apply(&mut cfg) {
                println!("cluster: left out: {note}");
            }
        }
        Ok(cfg)
    }

    /// The node file as [`Daemon::read_config`] makes it (the cluster's view applied),
    /// without recording it as seen: what the WireGuard device's peers follow.
    fn wireguard_config(&self) -> Option<NodeConfig> {
        let mut cfg = model::load_file(&self.opts.config).ok()?;
        if let Some(agent) = &self.cluster {
            let _ = agent.view().apply(&mut cfg);
        }
        Some(cfg)
    }

    /// Re-read the node file and apply it: map updates when the program set is the same,
    /// a reshape otherwise; counted in the metrics. The caller holds `seen`.
    fn apply_locked(&self, seen: &mut Seen) -> Result<ApplyReport, DaemonError> {
        let result = self.read_config(seen).and_then(|cfg| {
            // The running node's endpoints keep their numbers: adding or removing one
            // renumbers no other.
            let cfg = node::with_pinned_numbering(cfg, &self.opts.pin_dir);
            let plan = node::plan(&cfg)?;
            let dir = &self.opts.pin_dir;
            let live = live_prefilter(&self.sys, &cfg, dir);
            match update_pinned(&self.sys, &cfg, &plan, dir) {
                Ok(u) => Ok(Applied::Maps(u)),
                Err(LoadError::CodeShape { .. }) => {
                    let r = reshape(&self.sys, &cfg, &plan, dir, Some(&self.opts.attach))?;
                    Ok(Applied::Reshaped(Box::new(r)))
                }
                Err(e) => Err(e.into()),
            }
            .and_then(|applied| {
                // Endpoints may have come, gone or moved: routes and `lxc` follow.
                forward::sync(&self.sys, &cfg, dir)?;
                socklb::sync(&self.sys, &cfg, dir)?;
                crate::node::socklayer::sync(&self.sys, &cfg, dir)?;
                Ok(ApplyReport { applied, live })
            })
        });
        let mut metrics = lock(&self.metrics);
        match &result {
            Ok(report) => {
                if matches!(report.applied, Applied::Reshaped(_)) {
                    metrics.reshapes += 1;
                }
                metrics.updates_applied += 1;
                metrics.last_apply = SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
            }
            Err(_) => metrics.errors += 1,
        }
        result
    }

    /// Apply the node file now (waits for an apply in progress).
    fn apply(&self) -> Result<ApplyReport, DaemonError> {
        self.apply_locked(&mut lock(&self.seen))
    }

    /// Apply the node file if its content changed since last seen; log what happened. Skips
    /// this round when an apply is in progress.
    fn poll(&self) {
        let mut seen = match self.seen.try_lock() {
            Ok(seen) => seen,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let now = model::limits::read_node_file(&self.opts.config).map_err(|e| e.to_string());
        let cluster_moved = self
            .cluster
            .as_ref()
            .is_some_and(|a| a.generation() != self.cluster_applied.load(Ordering::Acquire));
        match (&*seen, &now) {
            (Some(Ok(old)), Ok(new)) if old == new && cluster_moved => {
                // An endpoint that only changed identity is one ipcache word
                // (crate::cluster::fast); anything else re-applies the whole view.
                if let Some(agent) = &self.cluster {
                    use crate::cluster::fast::{apply, Applied};
                    match apply(agent, &self.sys, &self.opts.pin_dir) {
                        (Applied::Whole(why), _) => println!("cluster changed ({why})"),
                        (Applied::Nothing, generation) => {
                            self.cluster_applied.store(generation, Ordering::Release);
                            return;
                        }
                        (Applied::Fast { addresses, chunks }, generation) => {
                            self.cluster_applied.store(generation, Ordering::Release);
                            lock(&self.metrics).updates_applied += 1;
                            println!(
                                "cluster changed: {addresses} endpoint identities written to the ipcache ({chunks} chunks)"
                            );
                            return;
                        }
                    }
                }
                match self.apply_locked(&mut seen) {
                    Ok(report) => println!("applied: {report}"),
                    Err(e) => println!("not applied: {e}"),
                }
                return;
            }
            (Some(Ok(old)), Ok(new)) if old == new => return,
            // The same read error as last time: reported once.
            (Some(Err(old)), Err(new)) if old == new => return,
            _ => {}
        }
        println!("config {} changed", self.opts.config.display());
        match self.apply_locked(&mut seen) {
            Ok(report) => println!("applied: {report}"),
            Err(e) => println!("not applied: {e}"),
        }
    }

    /// Answer one request line.
    fn respond(&self, request: &str) -> String {
        match request.trim() {
            "status" => match wire::status(&self.sys, &self.opts.pin_dir) {
                Ok(st) => match &self.cluster {
                    Some(agent) => format!("{st}\n{}", agent.status()),
                    None => st.to_string(),
                },
                Err(e) => format!("error: {e}"),
            },
            "apply" => match self.apply() {
                Ok(report) => {
                    let line = report.to_string();
                    println!("applied on request: {line}");
                    format!("applied: {line}")
                }
                Err(e) => {
                    println!("not applied on request: {e}");
                    format!("error: {e}")
                }
            },
            "metrics" => match &self.cluster {
                Some(agent) => format!("{}\n{}", lock(&self.metrics), agent.status()),
                None => lock(&self.metrics).to_string(),
            },
            // Per-reason counters of sluice_wg (what was sent, received and dropped, why).
            "wireguard" => match &self.wireguard {
                Some(stats) => {
                    let counts: Vec<String> =
                        stats.snapshot().iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("wireguard: {}", counts.join(" "))
                }
                None => "wireguard: not in mode wireguard (or the kernel's device)".to_owned(),
            },
            "cluster" => match &self.cluster {
                Some(agent) => agent.status().to_string(),
                None => "cluster: single-file mode (no --etcd)".to_owned(),
            },
            other => format!("error: unknown request `{other}` (status, apply, metrics)"),
        }
    }

    /// Serve one client: read its line, write the response, close.
    fn serve(&self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        let response = match read {
            Ok(_) => self.respond(&line),
            Err(e) => format!("error: reading the request: {e}"),
        };
        let mut out = &stream;
        let _ = out.write_all(response.as_bytes());
        let _ = out.write_all(b"\n");
    }
}

/// Wait until a client is waiting on `listener` or `tick` has passed (the loop then checks
/// whether to stop). A request is taken as soon as it arrives: the loop used to sleep a
/// whole tick (up to 50 ms) between accepts, which was most of an endpoint add's latency
/// as a client saw it (issue 10: median 50 ms, of which the apply itself took 33).
fn wait_for_client(listener: &UnixListener, tick: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let ms = u16::try_from(tick.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(ms)).is_err() {
        // EINTR or a poll failure: wait the tick out as before rather than spin.
        std::thread::sleep(tick);
    }
}

/// Answers `error: busy` to a client past [`MAX_CLIENTS`], without waiting on it.
fn refuse_busy(stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let mut out = &stream;
    let _ = out.write_all(format!("error: busy ({MAX_CLIENTS} requests in progress)\n").as_bytes());
}

/// The bound socket; removed when dropped (the daemon stops, or fails to start).
struct Socket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fails with [`DaemonError::SocketInUse`] if a daemon answers on `path`, and refuses
/// anything there that is not a socket (it is left alone): checked before anything is
/// loaded or applied, so a second daemon never touches the first one's node.
fn check_socket_free(path: &Path) -> Result<(), DaemonError> {
    let Ok(md) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !md.file_type().is_socket() {
        let in_the_way = std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "something that is not a socket is in the way; it is left alone",
        );
        return Err(DaemonError::Io { op: "bind", path: path.to_path_buf(), source: in_the_way });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(DaemonError::SocketInUse(path.to_path_buf()));
    }
    Ok(())
}

/// Bind the socket: parent created (0700), a stale socket removed, mode 0600. A socket that
/// answers a connection belongs to a running daemon: [`DaemonError::SocketInUse`].
fn bind(path: &Path) -> Result<Socket, DaemonError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("mkdir", parent))?;
        }
    }
    check_socket_free(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        // A socket no daemon answers on (check_socket_free refused anything else).
        std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
        println!("removed stale socket {}", path.display());
    }
    // Two daemons starting at once: the second bind fails with EADDRINUSE.
    let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => DaemonError::SocketInUse(path.to_path_buf()),
        _ => DaemonError::Io { op: "bind", path: path.to_path_buf(), source: e },
    })?;
    let socket = Socket { listener, path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    socket.listener.set_nonblocking(true).map_err(io_err("set_nonblocking", path))?;
    Ok(socket)
}

/// Load or adopt the node, attach it, then serve and poll until `stop` is set.
/// A daemon already answering on the socket is noticed first, before the node is touched;
/// the socket is bound once the node is attached (its existence means ready) and removed
/// on return; pins and links stay.
pub fn run(opts: &Options, stop: &AtomicBool) -> Result<(), DaemonError> {
    run_in_cluster(opts, &ClusterOptions::default(), stop)
}

/// [`run`], joined to the cluster in `cluster.etcd` when it names endpoints: the node is
/// published and the other nodes' state is applied as it changes (`crate::cluster`).
pub fn run_in_cluster(
    opts: &Options,
    cluster: &ClusterOptions,
    stop: &AtomicBool,
) -> Result<(), DaemonError> {
    sys::kernel_available().map_err(DaemonError::NeedsKernel)?;
    check_socket_free(&opts.socket)?;
    // The daemon owns its node while it runs: one writer per pin dir (another daemon or a
    // command changing the node is refused, naming the daemon), and one daemon per socket,
    // checked above before anything is applied.
    let _lock = crate::node::lock::acquire_creating(&opts.pin_dir, crate::node::lock::Wait::Block, |msg| {
        println!("{msg}")
    })?;
    let mut d = Daemon::new(sys::kernel(), opts);
    let cluster_thread = start_cluster(&mut d, cluster)?;
    let started = Instant::now();
    let cfg = node::with_pinned_numbering(d.read_config(&mut lock(&d.seen))?, &opts.pin_dir);
    let plan = node::plan(&cfg)?;
    let planned = Instant::now();
    let dir = &opts.pin_dir;
    // Encryption mode wireguard: sluice_wg lives as long as the daemon (forwarding points
    // peers' prefixes at it). The poller below hands it changed peers and a rotated key.
    // Started before the node is adopted: adopting applies the config, whose forwarding
    // needs the device (after a restart the old one went with the old daemon's process).
    let wireguard =
        crate::encrypt::start_for_daemon(&cfg).map_err(|e| ForwardError::Encryption(e.to_string()))?;
    d.wireguard = wireguard.as_ref().map(|w| w.stats.clone());
    let how = match load::load_and_pin(&d.sys, &plan, dir) {
        Ok(loaded) => {
            println!(
                "loaded node {} and pinned {} programs, {} maps under {}",
                plan.node,
                loaded.programs.len(),
                loaded.maps.len(),
                dir.display()
            );
            "load"
        }
        Err(LoadError::AlreadyLoaded(_)) if d.cluster.as_ref().is_some_and(|a| !a.status().connected) => {
            // Without the cluster's view an apply would take the remote nodes out of the
            // datapath: keep the pinned state until etcd answers (the poller applies then).
            println!(
                "adopted node pinned under {}; etcd not reachable yet, keeping its state",
                dir.display()
            );
            "adopt"
        }
        Err(LoadError::AlreadyLoaded(_)) => {
            let report = d.apply()?;
            println!("adopted node pinned under {}; config applied: {report}", dir.display());
            "adopt"
        }
        Err(e) => return Err(e.into()),
    };
    let loaded = Instant::now();
    let report = wire::attach(&d.sys, &cfg, dir, &d.opts.attach)?;
    let forwarding = forward::sync(&d.sys, &cfg, dir)?;
    let sockets = socklb::sync(&d.sys, &cfg, dir)?;
    let socket_layer = crate::node::socklayer::sync(&d.sys, &cfg, dir)?;
    let attached = Instant::now();
    println!("attached: {}", report.to_string().replace('\n', "; "));
    println!("forwarding: {}", forwarding.to_string().replace('\n', "; "));
    println!("{sockets}");
    println!("{socket_layer}");
    println!(
        "{}",
        StartTimes { how, plan: planned - started, load: loaded - planned, attach: attached - loaded }
    );
    let socket = bind(&opts.socket)?;
    println!(
        "serving {} (status, apply, metrics); watching {} every {} ms",
        opts.socket.display(),
        opts.config.display(),
        opts.poll.as_millis()
    );
    // The L7 proxy, when the node has L7 rules: its own process, adopted across restarts.
    let proxy_files = crate::proxy::supervise::ProxyFiles {
        dir: opts.socket.parent().map_or_else(|| PathBuf::from("/run/sluice"), Path::to_path_buf),
    };
    let wants_proxy = crate::l7::policy::L7Policy::new(cfg.clone()).is_ok_and(|p| !p.is_empty());
    // Whether a node file's text has L7 rules: read again whenever the file changes, so
    // L7 rules added while the daemon runs get their proxy and route without a restart
    // (until then their connections fail closed in the endpoint programs).
    let l7_in = |text: &str| {
        model::parse_str(text, &opts.config.display().to_string())
            .ok()
            .and_then(|c| crate::l7::policy::L7Policy::new(c).ok())
            .is_some_and(|p| !p.is_empty())
    };
    let install_route = || {
        // The endpoint programs hand L7 connections to the proxy marked for local delivery.
        if let Err(e) = crate::proxy::route::install() {
            println!("sluice proxy: cannot install the to-proxy route: {e}");
        }
    };
    let keep_proxy = || {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sluice"));
        match crate::proxy::supervise::ensure(&proxy_files, &opts.config, &exe, &[]) {
            Ok(crate::proxy::supervise::Outcome::Started(pid)) => {
                println!("started sluice proxy (pid {pid})")
            }
            Ok(crate::proxy::supervise::Outcome::Adopted(_)) => {}
            Err(e) => println!("sluice proxy: cannot start it: {e}"),
        }
    };
    if wants_proxy {
        install_route();
        keep_proxy();
    }
    let tick = opts.poll.min(Duration::from_millis(50)).max(Duration::from_millis(1));
    std::thread::scope(|scope| {
        if let Some(agent) = cluster_thread {
            // Stops with the daemon; the lease is left to expire (a restart within the TTL
            // keeps the node in everyone's view).
            scope.spawn(move || agent.run(stop));
        }
        // The poller: an apply it starts never holds up the socket.
        scope.spawn(|| {
            let mut next_poll = Instant::now() + opts.poll;
            let (mut proxy_wanted, mut proxy_text) =
                (wants_proxy, model::limits::read_node_file(&opts.config).ok());
            while !stop.load(Ordering::Relaxed) {
                // A cluster change is applied as soon as the agent has it, not at the next poll.
                let generation = d.cluster.as_ref().map(|a| a.generation());
                if generation.is_some_and(|g| g != d.cluster_applied.load(Ordering::Acquire)) {
                    d.poll();
                }
                if Instant::now() >= next_poll {
                    d.poll();
                    if let Some(wg) = &wireguard {
                        // Reload: a changed peer list or key (node file or cluster view)
                        // reaches sluice_wg; a rotated node key is published.
                        let cfg = d.wireguard_config();
                        if crate::encrypt::follow_config(wg, cfg.as_ref()).is_some() {
                            if let (Some(agent), Some(cfg)) = (&d.cluster, &cfg) {
                                agent.set_local(cfg);
                            }
                        }
                    }
                    let text = model::limits::read_node_file(&opts.config).ok();
                    if text.is_some() && text != proxy_text {
                        let wanted = text.as_deref().is_some_and(l7_in);
                        if wanted && !proxy_wanted {
                            println!("the node file has L7 rules now: starting sluice proxy");
                            install_route();
                        }
                        (proxy_wanted, proxy_text) = (wanted, text);
                    }
                    if proxy_wanted {
                        keep_proxy();
                    }
                    next_poll = Instant::now() + opts.poll;
                }
                match (&d.cluster, generation) {
                    (Some(agent), Some(seen)) => {
                        agent.wait_generation(seen, tick);
                    }
                    _ => std::thread::sleep(tick),
                }
            }
        });
        while !stop.load(Ordering::Relaxed) {
            loop {
                match socket.listener.accept() {
                    Ok((stream, _)) => {
                        if d.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                            d.clients.fetch_sub(1, Ordering::AcqRel);
                            refuse_busy(stream);
                            continue;
                        }
                        let d = &d;
                        let spawned = std::thread::Builder::new().name("sluice-client".into()).spawn_scoped(
                            scope,
                            move || {
                                d.serve(stream);
                                d.clients.fetch_sub(1, Ordering::AcqRel);
                            },
                        );
                        if let Err(e) = spawned {
                            d.clients.fetch_sub(1, Ordering::AcqRel);
                            println!("cannot start a thread for a client: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                    Err(e) => {
                        println!("accept on {}: {e}", opts.socket.display());
                        break;
                    }
                }
            }
            wait_for_client(&socket.listener, tick);
        }
    });
    drop(socket);
    println!("stopped; pins and links left in place under {}", dir.display());
    Ok(())
}

/// Cluster mode: creates the agent, runs its first steps until it has a view (or 3 s pass:
/// etcd down at start is not fatal), and returns it for the daemon's scope to run.
fn start_cluster(
    d: &mut Daemon<'_>,
    opts: &ClusterOptions,
) -> Result<Option<Arc<crate::cluster::Agent>>, DaemonError> {
    if opts.etcd.is_empty() {
        return Ok(None);
    }
    let cfg = d.read_config(&mut lock(&d.seen))?;
    let client = crate::cluster::Client::new(&opts.etcd)?;
    let agent = Arc::new(crate::cluster::Agent::new(client, &cfg.name, opts.lease_ttl));
    agent.set_local(&cfg);
    d.cluster = Some(agent.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let first = {
        let (agent, stop) = (agent.clone(), stop.clone());
        std::thread::spawn(move || agent.run(&stop))
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !agent.status().connected {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = first.join();
    println!("{}", agent.status());
    Ok(Some(agent))
}

/// SIGINT/SIGTERM set [`STOP`]; what the command line passes to [`run`].
pub mod signals {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set by SIGINT or SIGTERM once [`install`] ran.
    pub static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    /// Route SIGINT and SIGTERM to [`STOP`] for the rest of the process.
    pub fn install() {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: `action` is a live local; the handler only stores to an atomic, which is
            // async-signal-safe.
            unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        }
    }
}
