//! sys: every `bpf()` call of sluice goes through one seam, the [`Syscall`] trait.
//!
//! Contract:
//! - [`Kernel`] is the real implementation (`syscall(SYS_bpf, cmd, attr, size)`); tests
//!   substitute a fake that records calls. Maps and programs keep the seam they were made
//!   with (`Arc<dyn Syscall>`), so every later call on them goes through it too.
//! - Each command's attr is a zeroed `#[repr(C)]` struct in the 6.18 layout ([`attr`]),
//!   passed with its size.
//! - Every failure is a [`SysError`] naming the command (`BPF_MAP_CREATE`), the errno
//!   (`EPERM (1)`) and the object (map name, program name, pin path); a program the
//!   verifier rejects carries the full verifier log. No input makes this module panic.
//! - [`require_kernel`] is the gate every privileged test in the project uses.
//!
//! Files: [`attr`] (layouts, constants), [`map`], [`prog`], [`mod@pin`] (bpffs),
//! [`testrun`] (`BPF_PROG_TEST_RUN`), [`info`] (object info, ids), [`link`] (attach
//! commands), [`gate`] (kernel-test gate, CPU count), [`fault`] (a seam that fails from
//! the Nth call on, for crash-consistency tests).

pub mod attr;
pub mod btf;
pub mod fault;
pub mod gate;
pub mod info;
pub mod iter;
pub mod link;
pub mod map;
pub mod pin;
pub mod prog;
pub mod query;
pub mod ringbuf;
pub mod testrun;

#[cfg(test)]
pub(crate) mod fake;

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

pub use attr::{attach_flags, attach_type, map_flags, prog_flags, sanitize_obj_name, test_run_flags, Attr};
pub use gate::{kernel_available, possible_cpus, require_kernel, NO_KERNEL_ENV, REQUIRE_KERNEL_ENV};
pub use info::{
    map_get_fd_by_id, map_info, map_next_id, prog_get_fd_by_id, prog_info, prog_next_id, MapInfo, ProgInfo,
};
pub use link::{
    link_create, link_detach, link_exists, link_info, link_update, prog_attach, prog_detach, LinkCreate,
    LinkInfoRaw,
};
pub use map::{Keys, Map, MapKind, MapSpec, UpdateFlags};
pub use pin::{
    ensure_bpffs, get_pinned, is_bpffs, pin, pin_kind, unpin, PinKind, BPF_FS_MAGIC, DEFAULT_BPFFS,
};
pub use prog::{ProgSpec, ProgType, Program};
pub use query::{prog_query, ProgQuery};
pub use ringbuf::RingBuf;
pub use testrun::{test_run, TestRunOpts, TestRunResult};

/// Result of this layer.
pub type Result<T, E = SysError> = std::result::Result<T, E>;

/// A `bpf()` command (`enum bpf_cmd`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BpfCmd {
    MapCreate = 0,
    MapLookupElem = 1,
    MapUpdateElem = 2,
    MapDeleteElem = 3,
    MapGetNextKey = 4,
    ProgLoad = 5,
    ObjPin = 6,
    ObjGet = 7,
    ProgAttach = 8,
    ProgDetach = 9,
    ProgTestRun = 10,
    ProgGetNextId = 11,
    MapGetNextId = 12,
    ProgGetFdById = 13,
    MapGetFdById = 14,
    ObjGetInfoByFd = 15,
    ProgQuery = 16,
    MapLookupAndDeleteElem = 21,
    MapFreeze = 22,
    MapLookupBatch = 24,
    MapLookupAndDeleteBatch = 25,
    MapUpdateBatch = 26,
    MapDeleteBatch = 27,
    LinkCreate = 28,
    LinkUpdate = 29,
    LinkGetFdById = 30,
    LinkGetNextId = 31,
    IterCreate = 33,
    LinkDetach = 34,
    ProgBindMap = 35,
}

impl BpfCmd {
    /// The kernel's name for the command, as in `include/uapi/linux/bpf.h`.
    pub const fn name(self) -> &'static str {
        match self {
            BpfCmd::MapCreate => "BPF_MAP_CREATE",
            BpfCmd::MapLookupElem => "BPF_MAP_LOOKUP_ELEM",
            BpfCmd::MapUpdateElem => "BPF_MAP_UPDATE_ELEM",
            BpfCmd::MapDeleteElem => "BPF_MAP_DELETE_ELEM",
            BpfCmd::MapGetNextKey => "BPF_MAP_GET_NEXT_KEY",
            BpfCmd::ProgLoad => "BPF_PROG_LOAD",
            BpfCmd::ObjPin => "BPF_OBJ_PIN",
            BpfCmd::ObjGet => "BPF_OBJ_GET",
            BpfCmd::ProgAttach => "BPF_PROG_ATTACH",
            BpfCmd::ProgDetach => "BPF_PROG_DETACH",
            BpfCmd::ProgTestRun => "BPF_PROG_TEST_RUN",
            BpfCmd::ProgGetNextId => "BPF_PROG_GET_NEXT_ID",
            BpfCmd::MapGetNextId => "BPF_MAP_GET_NEXT_ID",
            BpfCmd::ProgGetFdById => "BPF_PROG_GET_FD_BY_ID",
            BpfCmd::MapGetFdById => "BPF_MAP_GET_FD_BY_ID",
            BpfCmd::ObjGetInfoByFd => "BPF_OBJ_GET_INFO_BY_FD",
            BpfCmd::ProgQuery => "BPF_PROG_QUERY",
            BpfCmd::MapLookupAndDeleteElem => "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
            BpfCmd::MapFreeze => "BPF_MAP_FREEZE",
            BpfCmd::MapLookupBatch => "BPF_MAP_LOOKUP_BATCH",
            BpfCmd::MapLookupAndDeleteBatch => "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
            BpfCmd::MapUpdateBatch => "BPF_MAP_UPDATE_BATCH",
            BpfCmd::MapDeleteBatch => "BPF_MAP_DELETE_BATCH",
            BpfCmd::LinkCreate => "BPF_LINK_CREATE",
            BpfCmd::LinkUpdate => "BPF_LINK_UPDATE",
            BpfCmd::LinkGetFdById => "BPF_LINK_GET_FD_BY_ID",
            BpfCmd::LinkGetNextId => "BPF_LINK_GET_NEXT_ID",
            BpfCmd::LinkDetach => "BPF_LINK_DETACH",
            BpfCmd::ProgBindMap => "BPF_PROG_BIND_MAP",
            BpfCmd::IterCreate => "BPF_ITER_CREATE",
        }
    }
}

impl fmt::Display for BpfCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An errno value returned by a syscall. Displays as `EPERM (1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The kernel-internal `ENOTSUPP`, which leaks out of some bpf commands.
    pub const ENOTSUPP: i32 = 524;

    /// The errno left by the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The raw number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The symbolic name (`EPERM`), if it is one bpf() is known to return.
    pub fn name(self) -> Option<&'static str> {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::ESRCH => "ESRCH",
            libc::EINTR => "EINTR",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENFILE => "ENFILE",
            libc::EMFILE => "EMFILE",
            libc::ENOSPC => "ENOSPC",
            libc::ERANGE => "ERANGE",
            libc::EDEADLK => "EDEADLK",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENOLINK => "ENOLINK",
            libc::EPROTO => "EPROTO",
            libc::EBADMSG => "EBADMSG",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::ENOTSOCK => "ENOTSOCK",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::ENETDOWN => "ENETDOWN",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EALREADY => "EALREADY",
            libc::EINPROGRESS => "EINPROGRESS",
            libc::ECANCELED => "ECANCELED",
            Errno::ENOTSUPP => "ENOTSUPP",
            _ => return None,
        };
        Some(name)
    }

    /// True for the answers meaning "this operation is not supported for this object".
    pub fn is_unsupported(self) -> bool {
        matches!(self.0, libc::EINVAL | libc::EOPNOTSUPP | Errno::ENOTSUPP)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// Errors of the syscall layer. Each names the command, the errno and the object.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// `BPF_MAP_CREATE` failed.
    #[error("BPF_MAP_CREATE of map `{name}` ({kind}, key {key_size} B, value {value_size} B, max_entries {max_entries}) failed: {errno}")]
    MapCreate { name: String, kind: String, key_size: u32, value_size: u32, max_entries: u32, errno: Errno },
    /// An element or iteration command on an existing map failed.
    #[error("{cmd} on map `{map}` failed: {errno}{detail}")]
    MapOp {
        cmd: BpfCmd,
        map: String,
        errno: Errno,
        /// Extra context, starting with a separator when not empty.
        detail: String,
    },
    /// `BPF_PROG_LOAD` failed; `log` is the complete verifier log (may be empty when the
    /// kernel refused before verification).
    #[error("BPF_PROG_LOAD of program `{name}` failed: {errno}\n{}", log_section(.log))]
    ProgLoad { name: String, errno: Errno, log: String },
    /// `BPF_OBJ_PIN` / `BPF_OBJ_GET` on a bpffs path failed.
    #[error("{cmd} of `{}` failed: {errno}", .path.display())]
    Pin { cmd: BpfCmd, path: PathBuf, errno: Errno },
    /// Any other command failed.
    #[error("{cmd} ({context}) failed: {errno}")]
    Bpf { cmd: BpfCmd, context: String, errno: Errno },
    /// A filesystem operation around bpffs or `/sys` failed.
    #[error("{op} `{}` failed: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The caller passed something the kernel would misread (wrong key length, NUL in a
    /// path, ...); nothing was sent to the kernel.
    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },
    /// An adopted pinned map does not have the layout we expect.
    #[error("pinned map `{}` has a different layout: {mismatch}", .path.display())]
    LayoutMismatch { path: PathBuf, mismatch: String },
    /// A path that should be on a bpf filesystem is not.
    #[error("`{}` is not on a bpf filesystem (statfs f_type {f_type:#x})", .path.display())]
    NotBpffs { path: PathBuf, f_type: u64 },
}

fn log_section(log: &str) -> String {
    if log.trim().is_empty() {
        "(the kernel produced no verifier log)".to_string()
    } else {
        format!("verifier log:\n{}", log.trim_end())
    }
}

impl SysError {
    /// The errno of the failed syscall, if the error came from one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SysError::MapCreate { errno, .. }
            | SysError::MapOp { errno, .. }
            | SysError::ProgLoad { errno, .. }
            | SysError::Pin { errno, .. }
            | SysError::Bpf { errno, .. } => Some(*errno),
            SysError::Io { source, .. } => source.raw_os_error().map(Errno),
            _ => None,
        }
    }

    pub(crate) fn invalid(context: impl Into<String>, reason: impl Into<String>) -> SysError {
        SysError::Invalid { context: context.into(), reason: reason.into() }
    }
}

/// The seam: one `bpf()` call.
///
/// Implementations return the syscall's non-negative result, or the errno. Commands that
/// create an object return a new file descriptor that the caller owns and closes.
pub trait Syscall: Send + Sync + fmt::Debug {
    /// Issue `bpf(cmd, attr, attr.len())`. The kernel may write results into `attr`.
    ///
    /// # Safety
    /// `attr` holds raw user-space pointers (keys, values, buffers, paths). Every pointer
    /// in it must be valid for the reads and writes `cmd` performs with the sizes given
    /// in `attr`, for the duration of the call.
    unsafe fn bpf(&self, cmd: BpfCmd, attr: &mut [u8]) -> Result<i64, Errno>;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Syscall for Kernel {
    unsafe fn bpf(&self, cmd: BpfCmd, attr: &mut [u8]) -> Result<i64, Errno> {
        let size = libc::c_uint::try_from(attr.len()).map_err(|_| Errno(libc::E2BIG))?;
        // SAFETY: `attr` is a live buffer of `size` bytes; the caller guarantees that the
        // pointers inside it are valid for what `cmd` does (trait contract).
        let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_int, attr.as_mut_ptr(), size) };
        if ret < 0 {
            Err(Errno::last())
        } else {
            // `c_long` is `i32` on 32-bit targets.
            #[allow(clippy::useless_conversion)]
            Ok(i64::from(ret))
        }
    }
}

/// The real kernel behind the shared seam type maps and programs hold.
pub fn kernel() -> Arc<dyn Syscall> {
    Arc::new(Kernel)
}

/// Issue `cmd` with a typed attr.
///
/// # Safety
/// Same as [`Syscall::bpf`]: every pointer stored in `attr` must be valid for what `cmd`
/// does with it during the call.
pub unsafe fn bpf_call<A: Attr>(sys: &dyn Syscall, cmd: BpfCmd, attr: &mut A) -> Result<i64, Errno> {
    // SAFETY: forwarded caller contract; `as_bytes_mut` covers exactly the attr.
    unsafe { sys.bpf(cmd, attr.as_bytes_mut()) }
}

/// Take ownership of the file descriptor a creating command returned.
pub(crate) fn owned_fd(ret: i64) -> Result<OwnedFd, Errno> {
    match i32::try_from(ret) {
        // SAFETY: by the `Syscall` contract a creating command returns a new descriptor
        // that nobody else owns; we become its only owner.
        Ok(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(Errno(libc::EBADF)),
    }
}

/// A path as the NUL-terminated string the kernel reads.
pub(crate) fn c_path(path: &std::path::Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::invalid(format!("path `{}`", path.display()), "contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_command_errno_and_object() {
        let cases: Vec<(SysError, &[&str])> = vec![
            (
                SysError::MapCreate {
                    name: "ct4".into(),
                    kind: "hash".into(),
                    key_size: 4,
                    value_size: 8,
                    max_entries: 16,
                    errno: Errno(libc::EPERM),
                },
                &["BPF_MAP_CREATE", "`ct4`", "EPERM (1)"],
            ),
            (
                SysError::ProgLoad {
                    name: "xdp_main".into(),
                    errno: Errno(libc::EACCES),
                    log: "0: (95) exit\nR0 !read_ok\n".into(),
                },
                &["BPF_PROG_LOAD", "xdp_main", "EACCES (13)", "R0 !read_ok"],
            ),
            (
                SysError::Pin {
                    cmd: BpfCmd::ObjGet,
                    path: "/sys/fs/bpf/x".into(),
                    errno: Errno(libc::ENOENT),
                },
                &["BPF_OBJ_GET", "/sys/fs/bpf/x", "ENOENT (2)"],
            ),
            (
                SysError::MapOp {
                    cmd: BpfCmd::MapUpdateElem,
                    map: "lb".into(),
                    errno: Errno(Errno::ENOTSUPP),
                    detail: String::new(),
                },
                &["BPF_MAP_UPDATE_ELEM", "`lb`", "ENOTSUPP (524)"],
            ),
        ];
        for (err, needles) in cases {
            let text = err.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{needle:?} missing from {text:?}");
            }
            assert!(err.errno().is_some());
        }
        assert_eq!(Errno(4242).to_string(), "errno 4242");
    }

    #[test]
    fn fake_seam_records_calls() {
        let fake = Arc::new(fake::FakeSyscall::default());
        let sys: Arc<dyn Syscall> = fake.clone();
        let spec = MapSpec::new("fake/map", MapKind::Hash, 4, 8, 16);
        let map = Map::create(&sys, &spec).expect("the fake creates any map");
        map.update(&7u32.to_ne_bytes(), &[1; 8], UpdateFlags::ANY).expect("fake update");

        let calls = fake.calls();
        let cmds: Vec<BpfCmd> = calls.iter().map(|c| c.cmd).collect();
        assert_eq!(cmds, [BpfCmd::MapCreate, BpfCmd::MapUpdateElem]);
        let create = &calls[0].attr;
        assert_eq!(create.len(), std::mem::size_of::<attr::MapCreateAttr>());
        assert_eq!(&create[0..4], &1u32.to_ne_bytes(), "map_type HASH");
        assert_eq!(&create[4..8], &4u32.to_ne_bytes(), "key_size");
        assert_eq!(&create[28..37], b"fake_map\0", "sanitized name");
        assert_eq!(&calls[1].attr[24..32], &0u64.to_ne_bytes(), "BPF_ANY");
    }

    #[test]
    fn batch_update_falls_back_to_single_updates() {
        let fake = Arc::new(fake::FakeSyscall::default());
        fake.fail(BpfCmd::MapUpdateBatch, Errno(libc::EINVAL));
        let sys: Arc<dyn Syscall> = fake.clone();
        let spec = MapSpec::new("lpm", MapKind::LpmTrie, 8, 4, 16).with_flags(1);
        let map = Map::create(&sys, &spec).expect("fake create");
        let keys: Vec<u8> = (0..3u64).flat_map(|k| k.to_ne_bytes()).collect();
        let values: Vec<u8> = (0..3u32).flat_map(|v| v.to_ne_bytes()).collect();
        map.update_batch(&keys, &values, 3, UpdateFlags::ANY).expect("fallback succeeds");

        let cmds: Vec<BpfCmd> = fake.calls().iter().map(|c| c.cmd).collect();
        assert_eq!(
            cmds,
            [
                BpfCmd::MapCreate,
                BpfCmd::MapUpdateBatch,
                BpfCmd::MapUpdateElem,
                BpfCmd::MapUpdateElem,
                BpfCmd::MapUpdateElem,
            ]
        );
    }

    #[test]
    fn batch_update_rejects_mismatched_lengths_without_a_syscall() {
        let fake = Arc::new(fake::FakeSyscall::default());
        let sys: Arc<dyn Syscall> = fake.clone();
        let map = Map::create(&sys, &MapSpec::new("h", MapKind::Hash, 4, 4, 8)).expect("create");
        let err = map.update_batch(&[0; 8], &[0; 4], 2, UpdateFlags::ANY).unwrap_err();
        assert!(matches!(err, SysError::Invalid { .. }), "{err}");
        assert_eq!(fake.calls().len(), 1, "only the create reached the seam");
    }

    #[test]
    fn prog_load_failure_carries_the_log() {
        let fake = Arc::new(fake::FakeSyscall::default());
        fake.fail_prog_load(Errno(libc::EACCES), "0: (95) exit\nR0 !read_ok\n");
        let sys: Arc<dyn Syscall> = fake.clone();
        let insns = [0x95, 0, 0, 0, 0, 0, 0, 0];
        let spec = ProgSpec::new("bad", ProgType::Xdp, &insns);
        let err = Program::load(&sys, &spec).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("R0 !read_ok"), "{text}");
        assert!(text.contains("EACCES (13)"), "{text}");
        let loads = fake.calls().iter().filter(|c| c.cmd == BpfCmd::ProgLoad).count();
        assert_eq!(loads, 2, "one quiet load, one with the log");
    }
}
