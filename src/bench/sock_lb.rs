//! The `socklb` part of `sluice bench`: what the socket load balancer adds to `connect()`
//! (issue 5's target: at most 2 µs over connecting to the backend directly).
//!
//! Contract:
//! - Needs bpf() and cgroup v2 at [`CGROUP2_ROOT`]. One service, VIP [`VIP`] TCP, with one
//!   backend: a listener on `127.0.0.1:<ephemeral>` whose connections a thread accepts and
//!   closes. The eight programs ([`SockLb::attach`]) go on a fresh cgroup under
//!   [`CGROUP2_ROOT`], removed afterwards (also on error).
//! - The client is a forked child that moves itself into the cgroup first (the bench
//!   process stays where it is) and then does only raw syscalls into buffers allocated
//!   before the fork. One iteration is `socket()`, blocking `connect()`, `SO_LINGER` 0,
//!   `close()` (a reset: no TIME_WAIT piles up), timed with the monotonic clock.
//!   [`ROUNDS`] rounds of [`ITERATIONS`] iterations to the VIP and as many to the backend
//!   directly, interleaved (who goes first alternates), after [`WARMUP`] untimed ones of
//!   each. A connect to the VIP that succeeds was translated (the VIP has no route here);
//!   any failed call aborts the part with its errno.
//! - Figures: the median of each variant over all its samples, their difference, and the
//!   median of the per-round differences of medians. Loopback connects cost tens of
//!   microseconds and vary by more than the programs cost, so the part also reports the
//!   programs' own time: `kernel.bpf_stats_enabled` is switched on for the run (and back
//!   to its previous value after), and `run_time_ns / run_cnt` of `lb_connect4` is read
//!   from the kernel.

use sluice::maps::names;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sluice::codegen::sock_lb;
use sluice::maps::lb::{be_value, slot_key, slot_value_bytes, svc_key, svc_value};
use sluice::node::load::sys_spec;
use sluice::node::socklb::SockLb;
use sluice::sys::{Map, Syscall, UpdateFlags};

/// Where cgroup v2 is mounted.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// The service address.
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// Rounds of each variant.
pub const ROUNDS: usize = 10;
/// Timed connects per variant and round.
pub const ITERATIONS: usize = 500;
/// Untimed connects per variant before the first round.
const WARMUP: usize = 200;
/// `kernel.bpf_stats_enabled`.
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The target, nanoseconds over a direct connect.
pub const TARGET_NS: f64 = 2000.0;

/// Why the part failed.
#[derive(Debug, thiserror::Error)]
pub enum SockLbBenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sys(#[from] sluice::sys::SysError),
    #[error(transparent)]
    Attach(#[from] sluice::node::socklb::SockLbError),
    #[error("the client in the cgroup failed: {0}")]
    Client(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SockLbBenchError {
    let what = what.into();
    move |source| SockLbBenchError::Io { what, source }
}

/// The part's figures: nanoseconds per `socket + connect + close`.
#[derive(Debug, Clone, PartialEq)]
pub struct SockLbResult {
    pub via_vip: Vec<u64>,
    pub direct: Vec<u64>,
    /// Per round: median via the VIP minus median direct.
    pub round_deltas: Vec<f64>,
    /// `lb_connect4`'s average run time (kernel `bpf_stats`) and run count, if readable.
    pub connect4_run: Option<(f64, u64)>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median_u64(v: &[u64]) -> f64 {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

impl SockLbResult {
    /// Median via the VIP minus median direct, over all samples.
    pub fn overhead_ns(&self) -> f64 {
        median_u64(&self.via_vip) - median_u64(&self.direct)
    }

    /// This part's section of the report.
    pub fn render(&self, s: &mut String) {
        let _ = writeln!(s, "# sluice bench: socket load balancing (connect)\n");
        let _ = writeln!(
            s,
            "- one iteration: `socket()`, blocking `connect()`, `SO_LINGER` 0, `close()` over loopback, from a \
             process in a cgroup with the eight sock_addr programs attached; {ROUNDS} rounds of {ITERATIONS} \
             per variant, interleaved, after {WARMUP} untimed each\n"
        );
        let _ = writeln!(s, "| connect to | median | p10 | p90 |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (name, v) in
            [("VIP 10.96.0.10:80 (translated)", &self.via_vip), ("backend 127.0.0.1 directly", &self.direct)]
        {
            let mut sorted = v.clone();
            sorted.sort_unstable();
            let pct = |p: usize| sorted.get(sorted.len() * p / 100).copied().unwrap_or(0);
            let _ = writeln!(s, "| {name} | {:.0} ns | {} ns | {} ns |", median_u64(v), pct(10), pct(90));
        }
        let over = self.overhead_ns();
        let _ = writeln!(
            s,
            "\nOverhead: {over:.0} ns per connect (median of per-round differences {:.0} ns); target <= {TARGET_NS:.0} ns: {}.",
            median(&self.round_deltas),
            super::met(over <= TARGET_NS)
        );
        if let Some((ns, runs)) = self.connect4_run {
            let _ = writeln!(
                s,
                "`lb_connect4` itself (kernel `bpf_stats`, service hit, {runs} runs): {ns:.0} ns per run."
            );
        }
    }
}

/// A cgroup removed on drop.
struct CgroupDir(PathBuf);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.0) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => return,
            }
        }
    }
}

/// The maps with the one service.
fn maps(
    sys: &Arc<dyn Syscall>,
    backend: SocketAddrV4,
) -> Result<std::collections::BTreeMap<&'static str, Map>, SockLbBenchError> {
    let mut maps = std::collections::BTreeMap::new();
    for def in sock_lb::map_defs() {
        let def = def.with_max_entries(1024);
        maps.insert(def.name, Map::create(sys, &sys_spec(&def))?);
    }
    let mapped = |a: Ipv4Addr| a.to_ipv6_mapped().octets();
    let mut k = vec![0u8; svc_key::SIZE];
    k[svc_key::ADDR..svc_key::ADDR + 16].copy_from_slice(&mapped(*VIP.ip()));
    k[svc_key::PORT..svc_key::PORT + 2].copy_from_slice(&VIP.port().to_be_bytes());
    k[svc_key::PROTO] = 6;
    let mut v = vec![0u8; svc_value::SIZE];
    v[svc_value::SVC_ID..svc_value::SVC_ID + 4].copy_from_slice(&1u32.to_le_bytes());
    v[svc_value::SLOTS..svc_value::SLOTS + 4].copy_from_slice(&1u32.to_le_bytes());
    let mut slot = vec![0u8; slot_key::SIZE];
    slot[slot_key::SVC_ID..slot_key::SVC_ID + 4].copy_from_slice(&1u32.to_le_bytes());
    let mut be = vec![0u8; be_value::SIZE];
    be[be_value::ADDR..be_value::ADDR + 16].copy_from_slice(&mapped(*backend.ip()));
    be[be_value::PORT..be_value::PORT + 2].copy_from_slice(&backend.port().to_be_bytes());
    let writes: [(&str, &[u8], &[u8]); 3] = [
        (names::LB_SVC, &k, &v),
        (names::LB_SLOT, &slot, &slot_value_bytes(1, (*backend.ip()).into(), backend.port())),
        (names::LB_BE, &1u32.to_le_bytes(), &be),
    ];
    for (name, key, value) in writes {
        if let Some(m) = maps.get(name) {
            m.update(key, value, UpdateFlags::ANY)?;
        }
    }
    Ok(maps)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// One iteration: nanoseconds, or the errno of the failed call.
fn connect_once(to: &libc::sockaddr_in) -> Result<u64, i32> {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    let t = Instant::now();
    // SAFETY: plain syscalls on a descriptor this function owns; `to` and `linger` are
    // valid for the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (to as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
    }
    Ok(t.elapsed().as_nanos() as u64)
}

/// The child's work: fill `vip` and `direct` (each `ROUNDS * ITERATIONS`), or an errno.
fn client(vip: &mut [u64], direct: &mut [u64], backend: SocketAddrV4) -> Result<(), i32> {
    let (to_vip, to_backend) = (sockaddr(VIP), sockaddr(backend));
    for _ in 0..WARMUP {
        connect_once(&to_vip)?;
        connect_once(&to_backend)?;
    }
    for round in 0..ROUNDS {
        let order = if round.is_multiple_of(2) { [true, false] } else { [false, true] };
        for via_vip in order {
            let (to, out) = if via_vip { (&to_vip, &mut *vip) } else { (&to_backend, &mut *direct) };
            for slot in &mut out[round * ITERATIONS..(round + 1) * ITERATIONS] {
                *slot = connect_once(to)?;
            }
        }
    }
    Ok(())
}

/// Runs the part.
pub fn measure(sys: &Arc<dyn Syscall>) -> Result<SockLbResult, SockLbBenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the backend listener"))?;
    // SAFETY: listen(2) on the listener's own descriptor: a deeper accept queue.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let backend = match listener.local_addr().map_err(io("the listener's address"))? {
        std::net::SocketAddr::V4(a) => a,
        std::net::SocketAddr::V6(_) => {
            return Err(SockLbBenchError::Client("the listener is not IPv4".into()))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        })
    };
    let result = run_client(sys, backend);
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(backend);
    let _ = acceptor.join();
    result
}

fn run_client(sys: &Arc<dyn Syscall>, backend: SocketAddrV4) -> Result<SockLbResult, SockLbBenchError> {
    if !Path::new(CGROUP2_ROOT).join("cgroup.procs").exists() {
        return Err(SockLbBenchError::Client(format!("no cgroup v2 hierarchy at {CGROUP2_ROOT}")));
    }
    let maps = maps(sys, backend)?;
    let dir = Path::new(CGROUP2_ROOT).join(format!("sluice-bench-socklb-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    let cgroup = CgroupDir(dir);
    let lb = SockLb::attach(sys, &maps, &cgroup.0)?;
    let stats_before = std::fs::read_to_string(STATS_SYSCTL).ok();
    let _ = std::fs::write(STATS_SYSCTL, "1");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .map_err(io("opening cgroup.procs"))?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io("pipe2")(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned these descriptors, owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let n = ROUNDS * ITERATIONS;
    // [status, vip samples.., direct samples..], allocated before the fork.
    let mut buf = vec![0u64; 1 + 2 * n];
    // SAFETY: the child runs only async-signal-safe code: write(2) to the cgroup, the
    // socket syscalls and clock reads of `client` into `buf` (allocated above), write(2)
    // to the pipe, `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io("fork")(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above.
        let joined = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } == 1;
        let status = if joined {
            let (_, rest) = buf.split_at_mut(1);
            let (vip, direct) = rest.split_at_mut(n);
            match client(vip, direct, backend) {
                Ok(()) => 0,
                Err(e) => e.max(1) as u64,
            }
        } else {
            u64::MAX
        };
        buf[0] = status;
        // SAFETY: `buf` is `buf.len() * 8` initialized bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: writing initialized bytes to our pipe.
            let w = unsafe {
                libc::write(write_end.as_raw_fd(), bytes[off..].as_ptr().cast(), bytes.len() - off)
            };
            if w <= 0 {
                break;
            }
            off += w as usize;
        }
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(i32::from(status != 0)) };
    }
    drop(write_end);
    drop(procs);
    let mut raw = Vec::new();
    std::fs::File::from(read_end).read_to_end(&mut raw).map_err(io("reading the client's samples"))?;
    let mut wstatus = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut wstatus, 0) };
    let connect4_run = lb
        .programs()
        .find(|(h, _)| *h == sock_lb::SockAddrHook::Connect4)
        .and_then(|(_, p)| p.info().ok())
        .filter(|i| i.run_cnt > 0)
        .map(|i| (i.run_time_ns as f64 / i.run_cnt as f64, i.run_cnt));
    if let Some(old) = stats_before {
        let _ = std::fs::write(STATS_SYSCTL, old.trim());
    }
    drop(lb);
    if raw.len() != buf.len() * 8 {
        return Err(SockLbBenchError::Client(format!(
            "the client sent {} of {} bytes",
            raw.len(),
            buf.len() * 8
        )));
    }
    let words: Vec<u64> =
        raw.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect();
    match words[0] {
        0 => {}
        u64::MAX => return Err(SockLbBenchError::Client("could not join the cgroup".into())),
        e => {
            return Err(SockLbBenchError::Client(format!(
                "a connect failed: {}",
                std::io::Error::from_raw_os_error(e as i32)
            )))
        }
    }
    let (via_vip, direct) = (words[1..=n].to_vec(), words[n + 1..].to_vec());
    let round_deltas = (0..ROUNDS)
        .map(|r| {
            let span = r * ITERATIONS..(r + 1) * ITERATIONS;
            median_u64(&via_vip[span.clone()]) - median_u64(&direct[span])
        })
        .collect();
    Ok(SockLbResult { via_vip, direct, round_deltas, connect4_run })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reports_medians_and_the_target() {
        let r = SockLbResult {
            via_vip: vec![3000, 3200, 3100],
            direct: vec![2500, 2600, 2550],
            round_deltas: vec![550.0],
            connect4_run: Some((250.0, 7)),
        };
        assert_eq!(r.overhead_ns(), 550.0);
        let mut s = String::new();
        r.render(&mut s);
        assert!(s.contains("| VIP 10.96.0.10:80 (translated) | 3100 ns |"), "{s}");
        assert!(s.contains("Overhead: 550 ns"), "{s}");
        assert!(s.contains("7 runs): 250 ns per run"), "{s}");
    }
}
