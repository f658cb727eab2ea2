//! A fault-injecting [`Syscall`]: the first `n` calls go to the wrapped seam, every later
//! one fails with `EIO`, as if the process had died right after call `n` (nothing after it
//! reaches the kernel). Crash-consistency tests run a command under it for each `n`, then
//! check what the next command finds.

use super::{BpfCmd, Errno, Syscall};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Passes `n` calls through, then fails every call.
#[derive(Debug)]
pub struct FailAfter {
    inner: Arc<dyn Syscall>,
    left: AtomicU64,
    calls: AtomicU64,
}

impl FailAfter {
    /// Wrap `inner`, letting `n` calls through.
    pub fn new(inner: Arc<dyn Syscall>, n: u64) -> FailAfter {
        FailAfter { inner, left: AtomicU64::new(n), calls: AtomicU64::new(0) }
    }

    /// Calls attempted so far (passed through or failed).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Syscall for FailAfter {
    unsafe fn bpf(&self, cmd: BpfCmd, attr: &mut [u8]) -> Result<i64, Errno> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let pass = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !pass {
            return Err(Errno(libc::EIO));
        }
        // SAFETY: forwarded caller contract (`Syscall::bpf`).
        unsafe { self.inner.bpf(cmd, attr) }
    }
}
