//! Programs: `BPF_PROG_LOAD` with the verifier log on failure, and load statistics.
//!
//! Contract: [`Program::load`] takes already-encoded instructions (8 bytes each, map fds
//! already patched in). It loads once without a log (fast path, no log cost). On failure
//! it loads again with `log_level = 1` and a log buffer that starts at 64 KiB and grows
//! (to the size the kernel reports in `log_true_size`, or doubling) up to 16 MiB while the
//! kernel answers `ENOSPC`; the error is [`SysError::ProgLoad`] with the whole log. On
//! success the kernel's [`ProgInfo`] (id, xlated and jited sizes, `verified_insns`) is
//! read once and kept as the program's load statistics. `EAGAIN` loads are retried a few
//! times, as libbpf does.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use super::attr::{obj_name_bytes, ptr_u64, sanitize_obj_name, Attr, ProgLoadAttr};
use super::info::{prog_info, ProgInfo};
use super::testrun::{test_run, TestRunOpts, TestRunResult};
use super::{bpf_call, owned_fd, pin, BpfCmd, Errno, Result, SysError, Syscall};

/// First verifier log buffer size.
pub const LOG_START: usize = 64 * 1024;
/// Largest verifier log buffer.
pub const LOG_MAX: usize = 16 * 1024 * 1024;
/// Attempts for a load the kernel answers with `EAGAIN`.
const EAGAIN_ATTEMPTS: usize = 5;

/// Program types (`enum bpf_prog_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgType {
    SocketFilter,
    SchedCls,
    SchedAct,
    Xdp,
    CgroupSkb,
    CgroupSock,
    SockOps,
    SkSkb,
    SkMsg,
    CgroupSockAddr,
    FlowDissector,
    SkLookup,
    Netfilter,
    /// `BPF_PROG_TYPE_TRACING` (iterators: with `BPF_TRACE_ITER` and an attach BTF id).
    Tracing,
}

impl ProgType {
    /// Every type, for tables and tests.
    pub const ALL: [ProgType; 14] = [
        ProgType::SocketFilter,
        ProgType::SchedCls,
        ProgType::SchedAct,
        ProgType::Xdp,
        ProgType::CgroupSkb,
        ProgType::CgroupSock,
        ProgType::SockOps,
        ProgType::SkSkb,
        ProgType::SkMsg,
        ProgType::CgroupSockAddr,
        ProgType::FlowDissector,
        ProgType::SkLookup,
        ProgType::Netfilter,
        ProgType::Tracing,
    ];

    /// The kernel's `enum bpf_prog_type` number.
    pub const fn type_id(self) -> u32 {
        match self {
            ProgType::SocketFilter => 1,
            ProgType::SchedCls => 3,
            ProgType::SchedAct => 4,
            ProgType::Xdp => 6,
            ProgType::CgroupSkb => 8,
            ProgType::CgroupSock => 9,
            ProgType::SockOps => 13,
            ProgType::SkSkb => 14,
            ProgType::SkMsg => 16,
            ProgType::CgroupSockAddr => 18,
            ProgType::FlowDissector => 22,
            ProgType::SkLookup => 30,
            ProgType::Netfilter => 32,
            ProgType::Tracing => 26,
        }
    }

    /// The type with kernel number `id`, if listed here.
    pub fn from_type_id(id: u32) -> Option<ProgType> {
        ProgType::ALL.into_iter().find(|t| t.type_id() == id)
    }
}

/// A program to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgSpec<'a> {
    /// Kernel object name (sanitized, truncated to 15 bytes when loaded).
    pub name: &'a str,
    pub prog_type: ProgType,
    /// `expected_attach_type` ([`super::attach_type`]); required by e.g. cgroup sock_addr.
    pub expected_attach_type: Option<u32>,
    /// Encoded instructions, 8 bytes each, map fds patched in.
    pub insns: &'a [u8],
    pub license: &'a str,
    /// `prog_flags` ([`super::prog_flags`]).
    pub flags: u32,
    /// `attach_btf_id`: the kernel BTF id of what a tracing program attaches to.
    pub attach_btf_id: Option<u32>,
}

impl<'a> ProgSpec<'a> {
    /// A GPL program with no expected attach type and no flags.
    pub fn new(name: &'a str, prog_type: ProgType, insns: &'a [u8]) -> Self {
        ProgSpec {
            name,
            prog_type,
            expected_attach_type: None,
            insns,
            license: "GPL",
            flags: 0,
            attach_btf_id: None,
        }
    }

    /// The same spec with `expected_attach_type`.
    pub fn with_attach_type(mut self, attach_type: u32) -> Self {
        self.expected_attach_type = Some(attach_type);
        self
    }
}

/// A loaded program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    sys: Arc<dyn Syscall>,
    name: String,
    stats: ProgInfo,
}

/// The parts of a load attr that must outlive every attempt.
struct LoadInput {
    attr: ProgLoadAttr,
    _license: CString,
}

impl Program {
    /// `BPF_PROG_LOAD` (see the module contract for the log handling).
    pub fn load(sys: &Arc<dyn Syscall>, spec: &ProgSpec<'_>) -> Result<Program> {
        let name = sanitize_obj_name(spec.name);
        let input = load_input(spec, &name)?;
        let fd = match load_once(&**sys, &input, None) {
            Ok(fd) => fd,
            Err(first) => load_with_log(&**sys, &input, &name, first)?,
        };
        let stats = prog_info(&**sys, fd.as_fd())?;
        Ok(Program { fd, sys: Arc::clone(sys), name, stats })
    }

    /// Adopt an open program descriptor.
    pub fn from_fd(sys: &Arc<dyn Syscall>, fd: OwnedFd) -> Result<Program> {
        let stats = prog_info(&**sys, fd.as_fd())?;
        Ok(Program { fd, sys: Arc::clone(sys), name: stats.name.clone(), stats })
    }

    /// Open the program pinned at `path`.
    pub fn from_pin(sys: &Arc<dyn Syscall>, path: &Path) -> Result<Program> {
        let fd = pin::get_pinned(&**sys, path)?;
        Program::from_fd(sys, fd)
    }

    /// Open the program with kernel id `id`.
    pub fn from_id(sys: &Arc<dyn Syscall>, id: u32) -> Result<Program> {
        let fd = super::info::prog_get_fd_by_id(&**sys, id)?;
        Program::from_fd(sys, fd)
    }

    /// Load statistics read right after the load: id, `verified_insns`, xlated and jited
    /// sizes.
    pub fn stats(&self) -> &ProgInfo {
        &self.stats
    }

    /// Kernel id.
    pub fn id(&self) -> u32 {
        self.stats.id
    }

    /// Instructions the verifier processed.
    pub fn verified_insns(&self) -> u32 {
        self.stats.verified_insns
    }

    /// The kernel's current description (run counters change over time).
    pub fn info(&self) -> Result<ProgInfo> {
        prog_info(&*self.sys, self.fd.as_fd())
    }

    /// The kernel object name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program type, `None` for a kernel type not listed in [`ProgType`].
    pub fn prog_type(&self) -> Option<ProgType> {
        ProgType::from_type_id(self.stats.prog_type)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give up the program, keeping its descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Pin this program at `path`.
    pub fn pin(&self, path: &Path) -> Result<()> {
        pin::pin(&*self.sys, self.fd.as_fd(), path)
    }

    /// `BPF_PROG_TEST_RUN` of this program.
    pub fn test_run(&self, opts: &TestRunOpts<'_>) -> Result<TestRunResult> {
        test_run(&*self.sys, self.fd.as_fd(), opts)
    }
}

impl AsFd for Program {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Program {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn load_input(spec: &ProgSpec<'_>, name: &str) -> Result<LoadInput> {
    let context = || format!("BPF_PROG_LOAD of program `{name}`");
    if spec.insns.is_empty() || !spec.insns.len().is_multiple_of(8) {
        return Err(SysError::invalid(
            context(),
            format!("instructions are {} bytes, expected a non-zero multiple of 8", spec.insns.len()),
        ));
    }
    let insn_cnt = u32::try_from(spec.insns.len() / 8)
        .map_err(|_| SysError::invalid(context(), "more than u32::MAX instructions"))?;
    let license = CString::new(spec.license)
        .map_err(|_| SysError::invalid(context(), "license contains a NUL byte"))?;
    let mut attr = ProgLoadAttr::zeroed();
    attr.prog_type = spec.prog_type.type_id();
    attr.insn_cnt = insn_cnt;
    attr.insns = ptr_u64(spec.insns.as_ptr());
    attr.license = ptr_u64(license.as_ptr());
    attr.prog_flags = spec.flags;
    attr.prog_name = obj_name_bytes(name);
    attr.expected_attach_type = spec.expected_attach_type.unwrap_or(0);
    attr.attach_btf_id = spec.attach_btf_id.unwrap_or(0);
    Ok(LoadInput { attr, _license: license })
}

/// One load (retrying `EAGAIN`). With `log`, the verifier writes its log into it.
/// Returns the attr the kernel wrote back in the error case, for `log_true_size`.
fn load_once(sys: &dyn Syscall, input: &LoadInput, log: Option<&mut [u8]>) -> Result<OwnedFd, (Errno, u32)> {
    let mut attr = input.attr;
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = ptr_u64(log.as_mut_ptr());
    }
    let mut last = (Errno(libc::EAGAIN), 0);
    for _ in 0..EAGAIN_ATTEMPTS {
        let mut try_attr = attr;
        // SAFETY: `insns` points at `insn_cnt * 8` bytes of the caller's spec, `license`
        // at the CString in `input`, `log_buf` (if set) at `log_size` writable bytes; all
        // outlive the call.
        match unsafe { bpf_call(sys, BpfCmd::ProgLoad, &mut try_attr) } {
            Ok(ret) => return owned_fd(ret).map_err(|e| (e, 0)),
            Err(errno) if errno.0 == libc::EAGAIN => last = (errno, try_attr.log_true_size),
            Err(errno) => return Err((errno, try_attr.log_true_size)),
        }
    }
    Err(last)
}

/// The second load, with a growing log buffer.
fn load_with_log(sys: &dyn Syscall, input: &LoadInput, name: &str, first: (Errno, u32)) -> Result<OwnedFd> {
    let mut size = LOG_START;
    loop {
        let mut log = vec![0u8; size];
        match load_once(sys, input, Some(&mut log)) {
            // The kernel accepted it this time (a transient failure): keep it.
            Ok(fd) => return Ok(fd),
            Err((errno, true_size)) if errno.0 == libc::ENOSPC && size < LOG_MAX => {
                let wanted = usize::try_from(true_size).unwrap_or(LOG_MAX);
                size = if wanted > size { wanted } else { size * 2 }.min(LOG_MAX);
            }
            Err((errno, _)) => {
                // A log that overflowed even the largest buffer still ends in ENOSPC; the
                // interesting errno is the one of the quiet load.
                let errno = if errno.0 == libc::ENOSPC { first.0 } else { errno };
                return Err(SysError::ProgLoad { name: name.to_string(), errno, log: log_text(&log) });
            }
        }
    }
}

/// The NUL-terminated text the verifier wrote.
fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_types_round_trip() {
        for t in ProgType::ALL {
            assert_eq!(ProgType::from_type_id(t.type_id()), Some(t), "{t:?}");
        }
        assert_eq!(ProgType::Xdp.type_id(), 6);
        assert_eq!(ProgType::SkMsg.type_id(), 16);
    }

    #[test]
    fn bad_instruction_buffers_are_rejected_before_the_kernel() {
        for len in [0usize, 7, 9] {
            let insns = vec![0u8; len];
            let spec = ProgSpec::new("p", ProgType::Xdp, &insns);
            let err = load_input(&spec, "p").err().expect("rejected");
            assert!(err.to_string().contains("multiple of 8"), "{err}");
        }
        let insns = [0u8; 8];
        let spec = ProgSpec { license: "G\0PL", ..ProgSpec::new("p", ProgType::Xdp, &insns) };
        assert!(load_input(&spec, "p").is_err());
    }

    #[test]
    fn log_text_stops_at_nul() {
        assert_eq!(log_text(b"R0 !read_ok\n\0garbage"), "R0 !read_ok\n");
        assert_eq!(log_text(b"no nul"), "no nul");
    }
}
