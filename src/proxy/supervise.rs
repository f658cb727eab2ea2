//! The daemon's side of `sluice proxy`: start it when the node has L7 rules, adopt it across
//! daemon restarts, start it again when it dies.
//!
//! Contract:
//! - [`ensure`] makes sure one proxy runs for the node file: a proxy whose pid is in
//!   `<state dir>/proxy.pid` and whose command line names `proxy` and the node file is
//!   adopted; otherwise (no pid file, a dead or reused pid) a new one is started and its pid
//!   written. A dead child of this process is reaped first.
//! - The proxy runs in its own session (`setsid`), so a signal to the daemon's process group
//!   and the daemon's own death (SIGKILL included) leave it and its connections running; the
//!   next daemon adopts it. It follows the node file itself (see `super`), so the daemon
//!   never restarts it for a policy change.
//! - Its output goes to `<state dir>/proxy.log`, access records to `proxy-access.log`,
//!   metrics to `proxy-metrics.prom`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a supervised proxy keeps its files.
#[derive(Debug, Clone)]
pub struct ProxyFiles {
    pub dir: PathBuf,
}

impl ProxyFiles {
    pub fn pid(&self) -> PathBuf {
        self.dir.join("proxy.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("proxy.log")
    }
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("proxy-access.log")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("proxy-metrics.prom")
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Adopted(u32),
    Started(u32),
}

/// Whether `pid` is a live `sluice proxy` for `node_file`.
fn is_our_proxy(pid: u32, node_file: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    // A zombie has an empty command line.
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.contains(&&b"proxy"[..]) && args.contains(&node_file.as_os_str().as_encoded_bytes())
}

/// See the module contract. `exe` is the sluice binary; `extra` is appended to the proxy's
/// arguments (its listen address).
pub fn ensure(files: &ProxyFiles, node_file: &Path, exe: &Path, extra: &[&str]) -> std::io::Result<Outcome> {
    let node_file = std::fs::canonicalize(node_file)?;
    if let Some(pid) = std::fs::read_to_string(files.pid()).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
        if is_our_proxy(pid, &node_file) {
            return Ok(Outcome::Adopted(pid));
        }
        if let Ok(raw) = i32::try_from(pid) {
            // Reap it if it was our child; harmless (ECHILD) if not.
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(raw),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
    std::fs::create_dir_all(&files.dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(files.log())?;
    let mut command = Command::new(exe);
    command
        .arg("proxy")
        .arg("--config")
        .arg(&node_file)
        .arg("--access-log")
        .arg(files.access_log())
        .arg("--metrics-file")
        .arg(files.metrics())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let child = command.spawn()?;
    let pid = child.id();
    // The child is not waited for here: the next `ensure` reaps it if it died.
    drop(child);
    std::fs::write(files.pid(), format!("{pid}\n"))?;
    Ok(Outcome::Started(pid))
}
