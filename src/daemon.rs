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
//! - Socket: one text request line per connection, one response: `status`, `apply`,
//!   `metrics`. The socket is mode 0600; a parent directory it creates is mode 0700.
//!
//! One thread does everything (socket and polling), so applies never overlap. The daemon
//! holds the node's lock ([`crate::node::lock`]) for its whole life: a second daemon on the
//! same pin dir, or a command that would change the node, is refused with the daemon's pid
//! and socket.

use crate::model::{self, ModelError, NodeConfig};
use crate::node::forward::{self, ForwardError};
use crate::node::load::{self, LoadError};
use crate::node::reshape::{reshape, Reshape, ReshapeError};
use crate::node::socklb::{self, SockLbSyncError};
use crate::node::update::{update_pinned, Update};
use crate::node::wire::{self, AttachOptions, WireError};
use crate::node::{self, PlanError};
use crate::sys::{self, Syscall};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";

/// The longest request line read from a client.
const MAX_REQUEST: u64 = 256;

/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The node file to load and watch.
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// How often the node file is checked for changes.
    pub poll: Duration,
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
    format!("{} map writes ({})", update.total(), per_map.join(", "))
}

/// The node file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
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

/// The daemon's state between requests.
struct Daemon<'a> {
    sys: Arc<dyn Syscall>,
    opts: &'a Options,
    metrics: Metrics,
    /// The node file as last seen (applied or rejected), so one edit is handled once.
    seen: Option<(SystemTime, u64)>,
    seen_text: String,
}

impl Daemon<'_> {
    /// Read and parse the node file; remember what was read.
    fn read_config(&mut self) -> Result<NodeConfig, DaemonError> {
        let path = &self.opts.config;
        self.seen = stamp(path);
        let text =
            std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        self.seen_text = text.clone();
        Ok(model::parse_str(&text, &path.display().to_string())?)
    }

    /// Re-read the node file and apply it: map updates when the program set is the same,
    /// a reshape otherwise; counted in the metrics.
    fn apply(&mut self) -> Result<Applied, DaemonError> {
        let result = self.read_config().and_then(|cfg| {
            let plan = node::plan(&cfg)?;
            let dir = &self.opts.pin_dir;
            match update_pinned(&self.sys, &cfg, &plan, dir) {
                Ok(u) => Ok(Applied::Maps(u)),
                Err(LoadError::CodeShape { .. }) => {
                    let r = reshape(&self.sys, &cfg, &plan, dir, Some(&AttachOptions::default()))?;
                    Ok(Applied::Reshaped(Box::new(r)))
                }
                Err(e) => Err(e.into()),
            }
            .and_then(|applied| {
                // Endpoints may have come, gone or moved: routes and `lxc` follow.
                forward::sync(&self.sys, &cfg, dir)?;
                socklb::sync(&self.sys, &cfg, dir)?;
                Ok(applied)
            })
        });
        match &result {
            Ok(applied) => {
                if matches!(applied, Applied::Reshaped(_)) {
                    self.metrics.reshapes += 1;
                }
                self.metrics.updates_applied += 1;
                self.metrics.last_apply =
                    SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
            }
            Err(_) => self.metrics.errors += 1,
        }
        result
    }

    /// Apply the node file if it changed since last seen; log what happened.
    fn poll(&mut self) {
        let now = stamp(&self.opts.config);
        if now == self.seen {
            return;
        }
        // The stamp moved; a rewrite with the same contents changes nothing.
        if std::fs::read_to_string(&self.opts.config).is_ok_and(|t| t == self.seen_text) {
            self.seen = now;
            return;
        }
        println!("config {} changed", self.opts.config.display());
        match self.apply() {
            Ok(applied) => println!("applied: {applied}"),
            Err(e) => println!("not applied: {e}"),
        }
    }

    /// Answer one request line.
    fn respond(&mut self, request: &str) -> String {
        match request.trim() {
            "status" => match wire::status(&self.sys, &self.opts.pin_dir) {
                Ok(st) => st.to_string(),
                Err(e) => format!("error: {e}"),
            },
            "apply" => match self.apply() {
                Ok(applied) => {
                    let line = applied.to_string();
                    println!("applied on request: {line}");
                    format!("applied: {line}")
                }
                Err(e) => {
                    println!("not applied on request: {e}");
                    format!("error: {e}")
                }
            },
            "metrics" => self.metrics.to_string(),
            other => format!("error: unknown request `{other}` (status, apply, metrics)"),
        }
    }

    /// Serve one client: read its line, write the response, close.
    fn serve(&mut self, stream: UnixStream) {
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

/// Bind the socket: parent created (0700), a stale socket removed, mode 0600.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("mkdir", parent))?;
        }
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
            println!("removed stale socket {}", path.display());
        }
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    listener.set_nonblocking(true).map_err(io_err("set_nonblocking", path))?;
    Ok(listener)
}

/// Load or adopt the node, attach it, then serve and poll until `stop` is set.
/// The socket is removed on return; pins and links stay.
pub fn run(opts: &Options, stop: &AtomicBool) -> Result<(), DaemonError> {
    sys::kernel_available().map_err(DaemonError::NeedsKernel)?;
    let sys = sys::kernel();
    // The daemon owns its node while it runs: one writer per pin dir (another daemon or a
    // command changing the node is refused, naming the daemon), and one daemon per socket,
    // checked before anything is applied.
    let _lock = crate::node::lock::acquire_creating(&opts.pin_dir, crate::node::lock::Wait::Block, |msg| {
        println!("{msg}")
    })?;
    if UnixStream::connect(&opts.socket).is_ok() {
        return Err(DaemonError::SocketInUse(opts.socket.clone()));
    }
    let mut d = Daemon { sys, opts, metrics: Metrics::default(), seen: None, seen_text: String::new() };
    let started = Instant::now();
    let cfg = d.read_config()?;
    let plan = node::plan(&cfg)?;
    let planned = Instant::now();
    let dir = &opts.pin_dir;
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
        Err(LoadError::AlreadyLoaded(_)) => {
            let applied = d.apply()?;
            println!("adopted node pinned under {}; config applied: {applied}", dir.display());
            "adopt"
        }
        Err(e) => return Err(e.into()),
    };
    let loaded = Instant::now();
    let report = wire::attach(&d.sys, &cfg, dir, &AttachOptions::default())?;
    let forwarding = forward::sync(&d.sys, &cfg, dir)?;
    let sockets = socklb::sync(&d.sys, &cfg, dir)?;
    let attached = Instant::now();
    println!("attached: {}", report.to_string().replace('\n', "; "));
    println!("forwarding: {}", forwarding.to_string().replace('\n', "; "));
    println!("{sockets}");
    println!(
        "{}",
        StartTimes { how, plan: planned - started, load: loaded - planned, attach: attached - loaded }
    );
    let listener = bind(&opts.socket)?;
    println!(
        "serving {} (status, apply, metrics); watching {} every {} ms",
        opts.socket.display(),
        opts.config.display(),
        opts.poll.as_millis()
    );
    let tick = opts.poll.min(Duration::from_millis(50)).max(Duration::from_millis(1));
    let mut next_poll = Instant::now() + opts.poll;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => d.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => {
                    println!("accept on {}: {e}", opts.socket.display());
                    break;
                }
            }
        }
        if Instant::now() >= next_poll {
            d.poll();
            next_poll = Instant::now() + opts.poll;
        }
        std::thread::sleep(tick);
    }
    drop(listener);
    let _ = std::fs::remove_file(&opts.socket);
    println!("stopped; pins and links left in place under {}", dir.display());
    Ok(())
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
