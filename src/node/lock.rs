//! One writer per node: every command that changes a node, and the daemon for its whole
//! life, holds an exclusive `flock` on the node's pin directory ([`NodeLock`]).
//!
//! Contract:
//! - The lock is the pin directory itself, opened `O_DIRECTORY | O_NOFOLLOW`: bpffs holds
//!   no regular files, so there is no lock file to create, and a lock on the directory
//!   lives exactly as long as the node's pins do. It is released when the guard drops (or
//!   the process dies: the kernel closes the descriptor).
//! - Before locking, the directory must be ours to write ([`check_pin_dir`]): a real
//!   directory (not a symlink) on bpffs, owned by root (or by the caller's user), and not
//!   writable by group or others. Anything else is refused with the reason, and nothing
//!   is touched.
//! - A second writer waits, saying on stderr (through the caller's `notify`) which process
//!   holds the lock, or fails at once with [`Wait::Fail`] (`--no-wait`). A daemon owns its
//!   node while it runs: a writer that finds a daemon holding the lock fails at once with
//!   an error naming the daemon's pid and socket, instead of waiting for it to exit.
//! - After the lock is taken, the path is checked to still name the locked directory: a
//!   writer that waited while `unload`/`down` removed the node gets `None` (nothing is
//!   loaded), or, when creating ([`acquire_creating`]), makes a fresh directory and locks
//!   that.
//!
//! The holder's pid comes from `/proc/locks` (matched by device and inode), its command
//! line from `/proc/PID/cmdline`; both are best effort, for messages only.

use crate::sys::{self, SysError};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// How often a waiting writer tries the lock again.
const RETRY: Duration = Duration::from_millis(20);

/// What a writer does when another process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait for it (saying so once).
    Block,
    /// Fail at once (`--no-wait`).
    Fail,
}

/// Why the lock was not taken.
#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "{}: the node is owned by the sluice daemon (pid {pid}, socket {socket}): change it through the daemon (edit its node file, or send `apply` on its socket), or stop the daemon first",
        .dir.display()
    )]
    Daemon { dir: PathBuf, pid: u32, socket: String },
    #[error("{}: another sluice command holds the lock ({holder}); not waiting (--no-wait)", .dir.display())]
    Busy { dir: PathBuf, holder: String },
    #[error("{}: refused: {reason}; sluice acts only on a pin directory of its own", .dir.display())]
    NotOurs { dir: PathBuf, reason: String },
    #[error("{op} {}: {source}", .dir.display())]
    Io {
        op: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// The exclusive lock on a node's pin directory; released on drop.
#[derive(Debug)]
pub struct NodeLock {
    dir: PathBuf,
    /// The locked directory; closing it releases the lock.
    _file: File,
}

impl NodeLock {
    /// The pin directory this lock holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Refuse a pin directory that is not ours to write: not a directory, a symlink, not on
/// bpffs, owned by another user than root (or the caller), or writable by group or others.
pub fn check_pin_dir(dir: &Path) -> Result<(), LockError> {
    let not_ours = |reason: String| LockError::NotOurs { dir: dir.to_path_buf(), reason };
    let md = std::fs::symlink_metadata(dir).map_err(|source| LockError::Io {
        op: "lstat",
        dir: dir.to_path_buf(),
        source,
    })?;
    if md.file_type().is_symlink() {
        return Err(not_ours("it is a symbolic link".into()));
    }
    if !md.is_dir() {
        return Err(not_ours("it is not a directory".into()));
    }
    if !sys::is_bpffs(dir)? {
        return Err(not_ours("it is not on a bpf filesystem (bpffs)".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != 0 && md.uid() != euid {
        return Err(not_ours(format!("it is owned by uid {}, not root", md.uid())));
    }
    if md.mode() & 0o022 != 0 {
        return Err(not_ours(format!("it is writable by group or others (mode {:o})", md.mode() & 0o7777)));
    }
    Ok(())
}

/// Lock the node at `dir` for a change. `None` when there is no pin directory (nothing is
/// loaded there, so nothing to protect).
pub fn acquire(dir: &Path, wait: Wait, notify: impl FnMut(&str)) -> Result<Option<NodeLock>, LockError> {
    lock(dir, wait, false, notify)
}

/// Lock the node at `dir`, creating the directory (on bpffs, mounted if needed) first:
/// for `load` and the daemon.
pub fn acquire_creating(dir: &Path, wait: Wait, notify: impl FnMut(&str)) -> Result<NodeLock, LockError> {
    match lock(dir, wait, true, notify)? {
        Some(lock) => Ok(lock),
        None => Err(LockError::Io {
            op: "lock",
            dir: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
    }
}

fn lock(
    dir: &Path,
    wait: Wait,
    create: bool,
    mut notify: impl FnMut(&str),
) -> Result<Option<NodeLock>, LockError> {
    let mut said = false;
    loop {
        if create && std::fs::symlink_metadata(dir).is_err() {
            sys::ensure_bpffs(dir)?;
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) => {
                check_pin_dir(dir)?;
                return Err(LockError::Io { op: "open", dir: dir.to_path_buf(), source: e });
            }
            Err(source) => return Err(LockError::Io { op: "open", dir: dir.to_path_buf(), source }),
        };
        check_pin_dir(dir)?;
        loop {
            // SAFETY: `file` is an open descriptor for the duration of the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {}
                _ => return Err(LockError::Io { op: "flock", dir: dir.to_path_buf(), source: err }),
            }
            let holder = holder_of(&file);
            if let Some(h) = &holder {
                if let Some(socket) = h.daemon_socket() {
                    return Err(LockError::Daemon { dir: dir.to_path_buf(), pid: h.pid, socket });
                }
            }
            let who = holder.as_ref().map_or_else(|| "pid unknown".to_string(), Holder::describe);
            if wait == Wait::Fail {
                return Err(LockError::Busy { dir: dir.to_path_buf(), holder: who });
            }
            if !said {
                notify(&format!("waiting for the lock on {} held by {who}", dir.display()));
                said = true;
            }
            std::thread::sleep(RETRY);
        }
        // The directory may have been removed (unload, down) or replaced while we waited.
        let locked = file.metadata().map_err(|source| LockError::Io {
            op: "fstat",
            dir: dir.to_path_buf(),
            source,
        })?;
        match std::fs::symlink_metadata(dir) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                return Ok(Some(NodeLock { dir: dir.to_path_buf(), _file: file }));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LockError::Io { op: "lstat", dir: dir.to_path_buf(), source }),
        }
    }
}

/// The process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    /// Its arguments, `argv[0]` included (empty when unreadable).
    args: Vec<String>,
}

impl Holder {
    fn describe(&self) -> String {
        if self.args.is_empty() {
            format!("pid {}", self.pid)
        } else {
            format!("pid {} ({})", self.pid, self.args.join(" "))
        }
    }

    /// The socket of a `sluice daemon` process, if this is one.
    fn daemon_socket(&self) -> Option<String> {
        daemon_socket_of(&self.args)
    }
}

/// The socket a `sluice daemon ...` command line serves, if it is one.
fn daemon_socket_of(args: &[String]) -> Option<String> {
    let program = args.first()?;
    if !Path::new(program).file_name().is_some_and(|n| n.to_string_lossy().starts_with("sluice")) {
        return None;
    }
    let mut rest = args[1..].iter().filter(|a| !a.starts_with('-'));
    if rest.next().map(String::as_str) != Some("daemon") {
        return None;
    }
    let mut socket = crate::daemon::DEFAULT_SOCKET.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--socket" {
            socket = it.next().cloned().unwrap_or(socket);
        } else if let Some(s) = a.strip_prefix("--socket=") {
            socket = s.to_string();
        }
    }
    Some(socket)
}

/// Who holds the flock on `file`, from `/proc/locks`.
fn holder_of(file: &File) -> Option<Holder> {
    let md = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = flock_holder(&locks, libc::major(md.dev()), libc::minor(md.dev()), md.ino())?;
    let args = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(Holder { pid, args })
}

/// The pid holding a `FLOCK` on (major, minor, inode) in `/proc/locks` text
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1b:5678 0 EOF`; waiters, marked `->`, skipped).
fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_comes_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 00:1b:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 00:2a:42 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 999 00:2a:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 55 103:02:42 0 EOF\n";
        let cases = [
            ((0, 0x2a, 42), Some(1234)),
            ((0x103, 2, 42), Some(55)),
            ((0, 0x1b, 42), None),
            ((0, 0x2a, 7), None),
        ];
        for ((maj, min, ino), want) in cases {
            assert_eq!(flock_holder(locks, maj, min, ino), want, "{maj:x}:{min:x}:{ino}");
        }
    }

    #[test]
    fn a_daemon_holder_is_recognized_with_its_socket() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let cases = [
            ("/usr/bin/sluice daemon --config n.yaml", Some(crate::daemon::DEFAULT_SOCKET.to_string())),
            ("sluice --no-wait daemon --config n.yaml --socket /tmp/s.sock", Some("/tmp/s.sock".to_string())),
            ("sluice daemon --socket=/run/x.sock", Some("/run/x.sock".to_string())),
            ("sluice prefilter add 10.0.0.0/8", None),
            ("/bin/bash daemon", None),
        ];
        for (line, want) in cases {
            assert_eq!(daemon_socket_of(&args(line)), want, "{line}");
        }
    }
}
