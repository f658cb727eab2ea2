//! netns: named network namespaces, as `ip netns` keeps them under `/run/netns`.
//!
//! Contract:
//! - [`NetNs::create`] does what `ip netns add NAME` does: `/run/netns` is made a shared
//!   mount (bind-mounted onto itself first when it is not a mount point yet, as iproute2
//!   does), an empty file `/run/netns/NAME` is created exclusively, a helper thread
//!   unshares `CLONE_NEWNET` and bind-mounts its `/proc/thread-self/ns/net` onto the file.
//!   The calling thread never changes namespace. `ip netns exec NAME` sees the result.
//! - A created `NetNs` is deleted when dropped (lazy unmount, unlink), also while a test
//!   unwinds, unless [`NetNs::keep`] was called; [`NetNs::open`] adopts an existing one
//!   and never deletes it. The namespace itself lives on while anything holds it (an
//!   open fd, a process in it); its interfaces go when the last holder does.
//! - [`NetNs::enter`] moves the calling thread into the namespace and returns a guard
//!   that moves it back when dropped; the guard cannot leave its thread. A thread that
//!   cannot return aborts the process: carrying on in the wrong namespace would configure
//!   the wrong network.
//! - [`NetNs::run_in`] runs a closure on a fresh thread inside the namespace and joins it;
//!   a panic in the closure is resumed in the caller.
//! - Names are checked like path components: 1 to 255 bytes, no `/` or NUL, not `.`/`..`.

use std::ffi::CString;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{NetlinkError, Result};

/// Where named namespaces are bind-mounted.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The calling thread's own namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Serializes the one-time preparation of `/run/netns` within this process.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace (see the module contract).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
    /// Delete (unmount and unlink) on drop.
    owned: bool,
}

impl NetNs {
    /// Create `/run/netns/NAME` holding a new, empty network namespace (only `lo`, down).
    pub fn create(name: &str) -> Result<NetNs> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let err = |op: &'static str, path: &Path, source: std::io::Error| NetlinkError::Netns {
            name: name.to_string(),
            op,
            path: path.to_path_buf(),
            source,
        };
        prepare_run_dir().map_err(|(op, source)| err(op, Path::new(NETNS_RUN_DIR), source))?;

        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| err("create", &path, source))?;

        let target = c_path(&path)?;
        let mounted = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<()> {
                    // It affects only this helper thread, which exits right after.
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    mount_bind(THREAD_NETNS, &target)
                })
                .join()
        });
        let mounted = match mounted {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::other("the helper thread panicked")),
        };
        if let Err(source) = mounted {
            let _ = std::fs::remove_file(&path);
            return Err(err("unshare and bind-mount onto", &path, source));
        }
        match File::open(&path) {
            Ok(file) => Ok(NetNs { name: name.to_string(), path, file, owned: true }),
            Err(source) => {
                let _ = remove(&path);
                Err(err("open", &path, source))
            }
        }
    }

    /// Open the existing `/run/netns/NAME`; it is not deleted on drop.
    pub fn open(name: &str) -> Result<NetNs> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|source| NetlinkError::Netns {
            name: name.to_string(),
            op: "open",
            path: path.clone(),
            source,
        })?;
        Ok(NetNs { name: name.to_string(), path, file, owned: false })
    }

    /// The name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the namespace (for `setns`, `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Leave the namespace in place when this value is dropped.
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// Delete the namespace now (unmount, unlink), reporting failure.
    pub fn delete(mut self) -> Result<()> {
        self.owned = false;
        remove(&self.path).map_err(|(op, source)| NetlinkError::Netns {
            name: self.name.clone(),
            op,
            path: self.path.clone(),
            source,
        })
    }

    /// Move the calling thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> Result<NetNsGuard> {
        let previous = File::open(THREAD_NETNS).map_err(|source| self.error("open", THREAD_NETNS, source))?;
        setns(self.fd()).map_err(|source| self.error("setns", &self.path, source))?;
        Ok(NetNsGuard { previous: previous.into(), _not_send: PhantomData })
    }

    /// Run `f` on a new thread inside this namespace and return its result.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd();
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(move || -> std::io::Result<T> {
                    setns(fd)?;
                    Ok(f())
                })
                .join()
        });
        match joined {
            Ok(result) => result.map_err(|source| self.error("setns", &self.path, source)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn error(&self, op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> NetlinkError {
        NetlinkError::Netns { name: self.name.clone(), op, path: path.as_ref().to_path_buf(), source }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            // Nothing to report to in a destructor; `delete` is the checked way.
            let _ = remove(&self.path);
        }
    }
}

/// The calling thread's way back to its previous namespace (see [`NetNs::enter`]).
#[derive(Debug)]
#[must_use = "dropping the guard leaves the namespace at once"]
pub struct NetNsGuard {
    previous: OwnedFd,
    /// setns applies to one thread: the guard must be dropped where it was made.
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(self.previous.as_fd()) {
            eprintln!("sluice: cannot return to the previous network namespace: {err}; aborting");
            std::process::abort();
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(NetlinkError::invalid(format!("netns name {name:?}"), reason));
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return bad("must be a file name: not `.` or `..`, no '/' or NUL");
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| NetlinkError::invalid(format!("path `{}`", path.display()), "contains a NUL byte"))
}

fn setns(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn mount_bind(source: &str, target: &CString) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(Some(source), target.as_c_str(), Some("none"), MsFlags::MS_BIND, None::<&str>)
        .map_err(std::io::Error::from)
}

/// Make `/run/netns` exist and be a shared mount, so that namespace mounts made under it
/// propagate to other mount namespaces (iproute2's `netns_add`).
fn prepare_run_dir() -> std::result::Result<(), (&'static str, std::io::Error)> {
    let _lock = RUN_DIR_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| ("create directory", e))?;
    use nix::mount::{mount, MsFlags};
    let dir = NETNS_RUN_DIR;
    let mut bound = false;
    loop {
        match mount(Some(""), dir, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) if !bound => {}
            Err(e) => return Err(("make shared", e.into())),
        }
        // EINVAL: not a mount point yet. Bind it onto itself, then try again.
        mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| ("bind-mount onto itself", e.into()))?;
        bound = true;
    }
}

/// Lazily unmount and unlink `/run/netns/NAME`.
fn remove(path: &Path) -> std::result::Result<(), (&'static str, std::io::Error)> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made namespace); still unlink it.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(("unmount", e.into())),
    }
    std::fs::remove_file(path).map_err(|e| ("unlink", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "sluice-1234-0", "x.y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\0", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
