//! BPF iterators (`BPF_PROG_TYPE_TRACING` with `BPF_TRACE_ITER`): a program loaded with the
//! attach BTF id of `bpf_iter_<target>` (found with [`super::btf`]), linked with
//! `BPF_LINK_CREATE` (target fd 0, attach type `BPF_TRACE_ITER`, no iterator info for
//! `tcp`), then `BPF_ITER_CREATE` on the link gives a descriptor whose `read()` runs the
//! program once per kernel object (each TCP socket of the reader's network namespace, for
//! `iter/tcp`) and returns what it wrote with `bpf_seq_write`.

use super::attr::IterCreateAttr;
use super::{bpf_call, owned_fd, BpfCmd, Result, SysError, Syscall};
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `BPF_ITER_CREATE` on the iterator link `link`: a new iterator, read to run it.
pub fn iter_create(sys: &dyn Syscall, link: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut attr = IterCreateAttr { link_fd: link.as_raw_fd() as u32, flags: 0 };
    // SAFETY: the attr holds no pointers.
    let ret = unsafe { bpf_call(sys, BpfCmd::IterCreate, &mut attr) };
    ret.and_then(owned_fd).map_err(|errno| SysError::Bpf {
        cmd: BpfCmd::IterCreate,
        context: format!("iterator of link fd {}", attr.link_fd),
        errno,
    })
}

/// Create an iterator on `link` and read it to the end: one full run of the program.
pub fn run(sys: &dyn Syscall, link: BorrowedFd<'_>) -> std::result::Result<Vec<u8>, IterError> {
    let fd = iter_create(sys, link)?;
    let mut out = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut out).map_err(IterError::Read)?;
    Ok(out)
}

/// Why an iterator could not be run.
#[derive(Debug, thiserror::Error)]
pub enum IterError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("reading the iterator: {0}")]
    Read(#[source] std::io::Error),
}
