//! Pins: objects kept alive by a name in a bpf filesystem.
//!
//! Contract: [`pin`] and [`get_pinned`] are `BPF_OBJ_PIN` / `BPF_OBJ_GET`; errors name
//! the path. [`unpin`] removes the name (the object dies with its last reference) and is
//! idempotent. [`ensure_bpffs`] makes a directory usable for pins: it mounts bpffs at
//! `/sys/fs/bpf` if nothing is mounted there (under a process lock and an flock on the
//! mount point, so parallel callers never stack two mounts) and creates the directory.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::attr::{ptr_u64, Attr, ObjAttr};
use super::{bpf_call, c_path, owned_fd, BpfCmd, Result, SysError, Syscall};

/// `BPF_FS_MAGIC`: `statfs` `f_type` of a bpf filesystem.
pub const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Where bpffs is conventionally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// `BPF_OBJ_PIN`: give the object behind `fd` the name `path` (on bpffs).
pub fn pin(sys: &dyn Syscall, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let cpath = c_path(path)?;
    let mut attr = ObjAttr::zeroed();
    attr.pathname = ptr_u64(cpath.as_ptr());
    attr.bpf_fd = fd.as_raw_fd() as u32;
    // SAFETY: `pathname` points at a NUL-terminated string alive across the call.
    unsafe { bpf_call(sys, BpfCmd::ObjPin, &mut attr) }.map(drop).map_err(|errno| SysError::Pin {
        cmd: BpfCmd::ObjPin,
        path: path.to_path_buf(),
        errno,
    })
}

/// `BPF_OBJ_GET`: open the object pinned at `path`.
pub fn get_pinned(sys: &dyn Syscall, path: &Path) -> Result<OwnedFd> {
    let cpath = c_path(path)?;
    let mut attr = ObjAttr::zeroed();
    attr.pathname = ptr_u64(cpath.as_ptr());
    // SAFETY: `pathname` points at a NUL-terminated string alive across the call.
    let ret = unsafe { bpf_call(sys, BpfCmd::ObjGet, &mut attr) };
    ret.and_then(owned_fd).map_err(|errno| SysError::Pin {
        cmd: BpfCmd::ObjGet,
        path: path.to_path_buf(),
        errno,
    })
}

/// The kind of object a pin names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    Map,
    Program,
    Link,
}

/// What the pin at `path` names, from the kernel's `fdinfo` of the object `BPF_OBJ_GET`
/// opens (`map_type:`, `prog_type:` or `link_type:`); `None` when `path` is no pin (a
/// regular file, a directory) or the object is of another kind. The caller checks first
/// that `path` is not a symbolic link: `BPF_OBJ_GET` follows them.
pub fn pin_kind(sys: &dyn Syscall, path: &Path) -> Option<PinKind> {
    let fd = get_pinned(sys, path).ok()?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let has = |field: &str| info.lines().any(|l| l.starts_with(field));
    if has("link_type:") {
        Some(PinKind::Link)
    } else if has("map_type:") {
        Some(PinKind::Map)
    } else if has("prog_type:") {
        Some(PinKind::Program)
    } else {
        None
    }
}

/// Remove the pin at `path`. A missing pin is not an error.
pub fn unpin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SysError::Io { op: "unpin", path: path.to_path_buf(), source }),
    }
}

/// The `statfs` `f_type` of the filesystem holding `path`.
fn fs_type(path: &Path) -> Result<u64, std::io::Error> {
    let cpath = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `cpath` is NUL-terminated; `st` is writable storage for one `statfs`.
    let ret = unsafe { libc::statfs(cpath.as_ptr(), st.as_mut_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // `f_type` is a signed word whose width varies by architecture; the magic is 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Whether `path` (which must exist) is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    fs_type(path).map(|t| t == BPF_FS_MAGIC).map_err(|source| SysError::Io {
        op: "statfs",
        path: path.to_path_buf(),
        source,
    })
}

/// Serializes mount decisions within the process.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Make `dir` a directory on bpffs, mounting bpffs at `/sys/fs/bpf` if needed.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if dir.is_dir() && is_bpffs(dir)? {
        return Ok(());
    }
    {
        let _guard = MOUNT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let root = Path::new(DEFAULT_BPFFS);
        let io = |op: &'static str| move |source| SysError::Io { op, path: root.into(), source };
        std::fs::create_dir_all(root).map_err(io("create directory"))?;
        // Other processes (parallel test runners) decide too: hold an exclusive flock on
        // the mount point while checking and mounting. A process that opens the directory
        // after our mount locks the new bpffs root instead, but then sees bpffs and stops.
        let lock = std::fs::File::open(root).map_err(io("open"))?;
        flock_exclusive(&lock).map_err(io("lock"))?;
        if !is_bpffs(root)? {
            mount_bpffs(root)?;
        }
        // Dropping `lock` closes it, which releases the flock.
    }
    std::fs::create_dir_all(dir).map_err(|source| SysError::Io {
        op: "create directory",
        path: dir.into(),
        source,
    })?;
    let f_type =
        fs_type(dir).map_err(|source| SysError::Io { op: "statfs", path: dir.to_path_buf(), source })?;
    if f_type == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(SysError::NotBpffs { path: dir.to_path_buf(), f_type })
    }
}

fn flock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    loop {
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn mount_bpffs(target: &Path) -> Result<()> {
    let ctarget = c_path(target)?;
    let io_err = |source| SysError::Io { op: "mount bpffs at", path: PathBuf::from(target), source };
    // SAFETY: all four strings are NUL-terminated literals or `ctarget`, alive across the
    // call; mount does not keep them.
    let ret = unsafe {
        libc::mount(c"bpf".as_ptr(), ctarget.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast())
    };
    if ret != 0 {
        return Err(io_err(std::io::Error::last_os_error()));
    }
    Ok(())
}
