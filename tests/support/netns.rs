//! Network namespaces for the end-to-end tests: the `ip`-based test gate, `ip` runners,
//! unique names, a namespace guard deleted on drop (also on panic), entering a namespace on
//! a thread, and a bpffs pin-directory guard. Included by each e2e test with
//! `#[path = "support/netns.rs"] mod netns;`; each test uses what it needs.
#![allow(dead_code)]

use sluice::sys;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a test can run: bpf() works and `ip` is installed (a failure under
/// `SLUICE_REQUIRE_KERNEL=1`, a printed skip otherwise).
pub fn gate(test: &str) -> bool {
    if !sys::require_kernel(test) {
        return false;
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => true,
        outcome => {
            let reason = match outcome {
                Ok(out) => format!("`ip -V` failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => format!("`ip` (iproute2) is not usable: {e}"),
            };
            if std::env::var(sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
                panic!("kernel test {test} cannot run: {reason}");
            }
            eprintln!("skip: {test}: {reason}");
            false
        }
    }
}

/// Run `ip args...`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    ip_output(args);
}

/// `ip args...`'s standard output.
pub fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("runs ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The pid in a `<prefix>-<pid>-<n>` name.
pub fn owner_pid<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_prefix('-')?.split('-').next().filter(|p| p.parse::<u32>().is_ok())
}

/// Whether the process with this pid is gone.
pub fn gone(pid: &str) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete `<prefix>-*` namespaces a killed earlier run left behind (their pid is gone).
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name, prefix).is_some_and(gone) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add NAME` with loopback up.
    pub fn new(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Move the calling thread into this namespace.
    pub fn join_thread(&self) {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: `ns` is an open namespace file; setns changes only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    }

    /// Run `f` on a thread that entered this namespace; sockets created there stay in it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.join_thread();
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Set sysctls (paths under /proc/sys) inside this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) {
        self.enter(|| {
            for (path, value) in settings {
                std::fs::write(path, value).unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
            }
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A pin directory on bpffs, removed with whatever is left in it on drop.
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// [`remove_stale_namespaces`], and pin directories `<pin_prefix><prefix>-<pid>-...` under
/// bpffs whose pid is gone.
pub fn remove_stale(prefix: &str, pin_prefix: &str) {
    remove_stale_namespaces(prefix);
    let Ok(entries) = std::fs::read_dir(sys::DEFAULT_BPFFS) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(pin_prefix).and_then(|n| owner_pid(n, prefix)).is_some_and(gone) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
