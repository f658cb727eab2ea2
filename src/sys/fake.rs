//! A fake [`Syscall`] for unit tests: records every call and answers from a script.
//!
//! Contract: each call is recorded as (command, copy of the attr bytes as sent). Creating
//! commands get a fresh descriptor of `/dev/null` (so dropping the owner closes something
//! real and harmless). Scripted failures return their errno; a scripted `BPF_PROG_LOAD`
//! failure writes its log into the caller's log buffer when one is given. Everything else
//! succeeds with 0 and leaves the attr untouched (info structs read back as zeros).

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::sync::Mutex;

use super::attr::ProgLoadAttr;
use super::{BpfCmd, Errno, Syscall};

/// One recorded call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub cmd: BpfCmd,
    pub attr: Vec<u8>,
}

#[derive(Debug, Default)]
struct Script {
    fail: HashMap<BpfCmd, Errno>,
    prog_load_log: Option<(Errno, String)>,
}

/// The fake seam.
#[derive(Debug, Default)]
pub(crate) struct FakeSyscall {
    calls: Mutex<Vec<Call>>,
    script: Mutex<Script>,
}

impl FakeSyscall {
    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Make every `cmd` fail with `errno`.
    pub fn fail(&self, cmd: BpfCmd, errno: Errno) {
        if let Ok(mut s) = self.script.lock() {
            s.fail.insert(cmd, errno);
        }
    }

    /// Make every `BPF_PROG_LOAD` fail with `errno`, writing `log` when asked for one.
    pub fn fail_prog_load(&self, errno: Errno, log: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.prog_load_log = Some((errno, log.to_string()));
        }
    }
}

fn dev_null_fd() -> Result<i64, Errno> {
    std::fs::File::open("/dev/null")
        .map(|f| i64::from(f.into_raw_fd()))
        .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
}

impl Syscall for FakeSyscall {
    unsafe fn bpf(&self, cmd: BpfCmd, attr: &mut [u8]) -> Result<i64, Errno> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call { cmd, attr: attr.to_vec() });
        }
        let script = self.script.lock().map_err(|_| Errno(libc::EIO))?;
        if let Some(errno) = script.fail.get(&cmd) {
            return Err(*errno);
        }
        if cmd == BpfCmd::ProgLoad {
            if let Some((errno, log)) = &script.prog_load_log {
                if attr.len() >= std::mem::size_of::<ProgLoadAttr>() {
                    // SAFETY: the length check above makes the unaligned read in bounds;
                    // any bytes are a valid `ProgLoadAttr` (integers only).
                    let load: ProgLoadAttr = unsafe { std::ptr::read_unaligned(attr.as_ptr().cast()) };
                    if load.log_level > 0 && load.log_buf != 0 && load.log_size > 0 {
                        let n = log.len().min(load.log_size as usize - 1);
                        // SAFETY: the `Syscall` contract guarantees `log_buf` is valid for
                        // `log_size` bytes of writes; we write `n + 1 <= log_size` bytes.
                        unsafe {
                            let dst = load.log_buf as usize as *mut u8;
                            std::ptr::copy_nonoverlapping(log.as_ptr(), dst, n);
                            dst.add(n).write(0);
                        }
                    }
                }
                return Err(*errno);
            }
        }
        match cmd {
            BpfCmd::MapCreate
            | BpfCmd::ProgLoad
            | BpfCmd::ObjGet
            | BpfCmd::MapGetFdById
            | BpfCmd::ProgGetFdById
            | BpfCmd::LinkCreate
            | BpfCmd::LinkGetFdById => dev_null_fd(),
            _ => Ok(0),
        }
    }
}
