//! `BPF_PROG_TEST_RUN`: run a loaded program on a packet (and context) in the kernel.
//!
//! Contract: output buffers are allocated at the capacities asked for (a zero capacity
//! passes NULL: the kernel then copies nothing back but still reports the size). When the
//! kernel answers `ENOSPC` because an output did not fit, the run is repeated once with
//! buffers of the sizes it reported (the program runs again: its map side effects happen
//! twice). Returned outputs are cut to the sizes the kernel reported. `duration_ns` is the
//! kernel's average per repetition.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::attr::{ptr_u64, Attr, TestRunAttr};
use super::{bpf_call, BpfCmd, Result, SysError, Syscall};

/// Inputs of one test run.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestRunOpts<'a> {
    /// Packet bytes (at least an Ethernet header for XDP and tc programs).
    pub data_in: &'a [u8],
    /// Room for the output packet; 0 to not read it back.
    pub data_out_cap: usize,
    /// Context (`xdp_md`, `__sk_buff`, ...) given to the program, if any.
    pub ctx_in: Option<&'a [u8]>,
    /// Room for the context after the run; 0 to not read it back.
    pub ctx_out_cap: usize,
    /// Repetitions (0 means 1).
    pub repeat: u32,
    /// [`super::test_run_flags`].
    pub flags: u32,
    /// CPU for `BPF_F_TEST_RUN_ON_CPU`.
    pub cpu: u32,
}

impl<'a> TestRunOpts<'a> {
    /// Run `data_in` once, reading back up to `data_in.len() + 256` bytes of packet.
    pub fn packet(data_in: &'a [u8]) -> Self {
        TestRunOpts { data_in, data_out_cap: data_in.len() + 256, repeat: 1, ..Default::default() }
    }
}

/// What the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value (the verdict).
    pub retval: u32,
    /// Average nanoseconds per repetition.
    pub duration_ns: u32,
    /// The packet after the run.
    pub data_out: Vec<u8>,
    /// The context after the run.
    pub ctx_out: Vec<u8>,
}

/// `BPF_PROG_TEST_RUN` of the program behind `prog_fd`.
pub fn test_run(sys: &dyn Syscall, prog_fd: BorrowedFd<'_>, opts: &TestRunOpts<'_>) -> Result<TestRunResult> {
    let context = |what: String| format!("program fd {}: {what}", prog_fd.as_raw_fd());
    let len32 = |len: usize, what: &str| {
        u32::try_from(len)
            .map_err(|_| SysError::invalid(context(format!("{what} of {len} bytes")), "too large"))
    };
    let data_size_in = len32(opts.data_in.len(), "data_in")?;
    let ctx_in = opts.ctx_in.unwrap_or(&[]);
    let ctx_size_in = len32(ctx_in.len(), "ctx_in")?;
    let (mut data_cap, mut ctx_cap) = (opts.data_out_cap, opts.ctx_out_cap);
    let mut grown = false;
    loop {
        let mut data_out = vec![0u8; data_cap];
        let mut ctx_out = vec![0u8; ctx_cap];
        let mut attr = TestRunAttr::zeroed();
        attr.prog_fd = prog_fd.as_raw_fd() as u32;
        attr.data_size_in = data_size_in;
        attr.data_in = ptr_u64(opts.data_in.as_ptr());
        attr.data_size_out = len32(data_cap, "data_out")?;
        if data_cap > 0 {
            attr.data_out = ptr_u64(data_out.as_mut_ptr());
        }
        if opts.ctx_in.is_some() {
            attr.ctx_size_in = ctx_size_in;
            attr.ctx_in = ptr_u64(ctx_in.as_ptr());
        }
        attr.ctx_size_out = len32(ctx_cap, "ctx_out")?;
        if ctx_cap > 0 {
            attr.ctx_out = ptr_u64(ctx_out.as_mut_ptr());
        }
        attr.repeat = opts.repeat;
        attr.flags = opts.flags;
        attr.cpu = opts.cpu;
        // SAFETY: `data_in`/`ctx_in` are valid for their sizes; `data_out`/`ctx_out` are
        // either NULL or valid for `data_size_out`/`ctx_size_out` bytes of writes; all live
        // across the call.
        let ret = unsafe { bpf_call(sys, BpfCmd::ProgTestRun, &mut attr) };
        let (data_len, ctx_len) = (attr.data_size_out as usize, attr.ctx_size_out as usize);
        match ret {
            Ok(_) => {
                data_out.truncate(data_len);
                ctx_out.truncate(ctx_len);
                return Ok(TestRunResult {
                    retval: attr.retval,
                    duration_ns: attr.duration,
                    data_out,
                    ctx_out,
                });
            }
            Err(errno) if errno.0 == libc::ENOSPC && !grown && (data_len > data_cap || ctx_len > ctx_cap) => {
                grown = true;
                if data_cap > 0 {
                    data_cap = data_cap.max(data_len);
                }
                if ctx_cap > 0 {
                    ctx_cap = ctx_cap.max(ctx_len);
                }
            }
            Err(errno) => {
                return Err(SysError::Bpf {
                    cmd: BpfCmd::ProgTestRun,
                    context: context(format!("{} bytes in, repeat {}", opts.data_in.len(), opts.repeat)),
                    errno,
                })
            }
        }
    }
}
