//! Cgroup v2 directories for tests that attach cgroup programs: a unique cgroup removed on
//! drop (also on panic), and spawning a child process inside it. Cgroup membership is per
//! process and tests run in parallel, so the test process never moves itself: the child
//! moves itself between fork and exec (writing `0` to `cgroup.procs` through a descriptor
//! the parent opened), before it runs any code of its own. Included with
//! `#[path = "support/cgroup.rs"] mod cgroup;`.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where cgroup v2 is mounted on the test machines.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// Whether a cgroup v2 hierarchy is mounted at [`CGROUP2_ROOT`]: `Err` says why not.
pub fn available() -> Result<(), String> {
    let procs = Path::new(CGROUP2_ROOT).join("cgroup.procs");
    if procs.exists() {
        Ok(())
    } else {
        Err(format!("no cgroup v2 hierarchy at {CGROUP2_ROOT}"))
    }
}

/// A cgroup created for one test, removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Cgroup {
    /// `<root>/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> io::Result<Cgroup> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(CGROUP2_ROOT).join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    /// Spawn `cmd` as a member of this cgroup from its first instruction on.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let procs: File = OpenOptions::new().write(true).open(self.path.join("cgroup.procs"))?;
        let fd = procs.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and calls only write(2), which is
        // async-signal-safe; `procs` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                if n == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn();
        drop(procs);
        child
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A child that just exited may take a moment to leave the cgroup.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return,
            }
        }
    }
}
