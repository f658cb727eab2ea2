//! `sluice demo`'s accelerated path (issue 11): one allowed endpoint-to-endpoint TCP flow
//! run again with the socket layer on, to show its data bypassing the tc programs.
//!
//! Contract:
//! - The flow is the first allowed IPv4 TCP flow between two endpoints ([`pick`]); a node
//!   without one gets a row saying so, not a failure.
//! - The socket layer is wired for the run on a fresh cgroup v2 directory under
//!   [`CGROUP2_ROOT`] (the node file's own `spec.socketLayer`, if any, is not used: its
//!   cgroup is the node's, not the lab's). `sock_ops` sees only sockets created by processes
//!   in that cgroup, so the demo process moves itself there for the transfer and back to its
//!   own cgroup afterwards; the links and the cgroup are removed before returning.
//! - The client sends [`PAYLOAD`] bytes and half-closes; the server checks every byte and
//!   answers the payload's hash, which the client checks.
//! - The same transfer runs first with the socket layer off, for contrast.
//! - Expected: payload intact, both ends accelerated, every payload byte redirected, and the
//!   endpoints' tc programs seeing only the connection's set-up and close
//!   ([`TC_PACKETS_MAX`] established-connection packets, where the stack path needs
//!   hundreds for the same payload).

use super::lab::Lab;
use super::traffic::Proto;
use super::{counters, expect, Expect, Flow, Side};
use sluice::maps::sock::SockCounter;
use sluice::model::socket_layer::SocketLayer;
use sluice::model::NodeConfig;
use sluice::node::socklayer;
use sluice::sys::Syscall;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where cgroup v2 is mounted on the machines sluice runs its demo on.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// Bytes the client sends.
pub const PAYLOAD: usize = 4 << 20;
/// Established-connection packets the endpoints' tc programs may see for an accelerated
/// transfer: the end of the handshake, the close, and their acknowledgements.
pub const TC_PACKETS_MAX: u64 = 20;

/// What the accelerated run showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelRow {
    /// The flow, described; empty when none was found.
    pub flow: String,
    /// Why the run was not made.
    pub skipped: Option<String>,
    /// What went wrong in the run itself (set-up, transfer, payload).
    pub error: Option<String>,
    /// `allow_established` packets of the two endpoints' tc programs during the run.
    pub tc_packets: u64,
    /// The same for the same transfer just before, with the socket layer off.
    pub tc_packets_stack: u64,
    /// Socket-layer counters that moved, by name.
    pub layer: BTreeMap<&'static str, u64>,
}

impl AccelRow {
    /// Whether what happened is what should.
    pub fn ok(&self) -> bool {
        self.skipped.is_some()
            || (self.error.is_none()
                && self.tc_packets <= TC_PACKETS_MAX
                && self.layer.get(SockCounter::Accelerated.name()) == Some(&2)
                && self.layer.get(SockCounter::BytesRedirected.name()).copied().unwrap_or(0)
                    >= PAYLOAD as u64)
    }
}

impl fmt::Display for AccelRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.skipped {
            return write!(f, "accelerated path: not shown ({why})");
        }
        let layer: Vec<String> = self.layer.iter().map(|(k, v)| format!("{k}+{v}")).collect();
        write!(
            f,
            "accelerated path: {}, {PAYLOAD} bytes: {}; tc programs saw {} established packets with the socket layer on (at most {TC_PACKETS_MAX} expected), {} with it off; socket layer: {}",
            self.flow,
            match &self.error {
                None => "payload verified".to_string(),
                Some(e) => format!("FAILED: {e}"),
            },
            self.tc_packets,
            self.tc_packets_stack,
            layer.join(" ")
        )?;
        if !self.ok() {
            f.write_str(" NOT AS EXPECTED")?;
        }
        Ok(())
    }
}

/// The first allowed IPv4 TCP flow between two endpoints.
pub fn pick<'a>(cfg: &NodeConfig, flows: &'a [Flow]) -> Option<&'a Flow> {
    flows.iter().find(|f| {
        matches!((f.from, f.to), (Side::Endpoint(_), Side::Endpoint(_)))
            && f.proto == Proto::Tcp
            && f.src.is_ipv4()
            && matches!(expect(cfg, f), Ok(Expect::Allow))
    })
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(7) as u8).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// Read to EOF; the accelerated path can answer a blocking read with a spurious `EAGAIN`
/// (a read timeout set), which is retried.
fn read_to_end(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut idle = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                idle = 0;
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && idle < 50 => idle += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The cgroup v2 directory the calling process is in.
fn own_cgroup() -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    Ok(Path::new(CGROUP2_ROOT).join(rel.trim_start_matches('/')))
}

/// Move the calling process (all its threads) into the cgroup directory `dir`.
fn move_self(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// One transfer from `src` (in the namespace of endpoint `from`) to `dst`.
fn transfer(lab: &Lab, from: usize, to: usize, src: IpAddr, dst: SocketAddr) -> Result<(), String> {
    let (server_ns, client_ns) = match (lab.endpoint(to), lab.endpoint(from)) {
        (Some(s), Some(c)) => (s, c),
        _ => return Err("an endpoint has no namespace in the lab".into()),
    };
    let listener = server_ns
        .run_in(|| TcpListener::bind(dst))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind {dst}: {e}"))?;
    let data = payload();
    let want = fnv(&data);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| -> Result<(), String> {
            let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            let got = read_to_end(&mut s).map_err(|e| format!("server reads: {e}"))?;
            if got != data {
                return Err(format!("the server got {} bytes, not the {PAYLOAD} sent", got.len()));
            }
            s.write_all(&fnv(&got).to_be_bytes()).map_err(|e| format!("server answers: {e}"))
        });
        let client = client_ns
            .run_in(|| -> Result<(), String> {
                let bind = SocketAddr::new(src, 0);
                let sock = connect_from(bind, dst)?;
                let mut s = sock;
                s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
                s.write_all(&data).map_err(|e| format!("client sends: {e}"))?;
                s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
                let back = read_to_end(&mut s).map_err(|e| format!("client reads: {e}"))?;
                if back != want.to_be_bytes() {
                    return Err(format!("the server's hash {back:02x?} is not the payload's {want:016x}"));
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let server = server.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        client.and(server)
    })
}

/// Connect from the endpoint's own address (an endpoint has one, so the kernel picks it;
/// `bind` is only checked against it).
fn connect_from(bind: SocketAddr, dst: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
        .map_err(|e| format!("connect {dst}: {e}"))?;
    match s.local_addr() {
        Ok(a) if a.ip() == bind.ip() => Ok(s),
        Ok(a) => Err(format!("the connection left from {a}, not {}", bind.ip())),
        Err(e) => Err(e.to_string()),
    }
}

/// `allow_established` of the endpoints `a` and `b`, and the socket layer's counters.
fn read(
    lab: &Lab,
    sys: &Arc<dyn Syscall>,
    pin: &Path,
    eps: [usize; 2],
) -> (u64, BTreeMap<&'static str, u64>) {
    let all = lab.node.run_in(|| counters(sys, pin)).unwrap_or_default();
    let tc = all
        .iter()
        .filter(|((scope, reason), _)| {
            *reason == "allow_established"
                && eps.iter().any(|i| {
                    scope.strip_prefix("endpoint ").and_then(|s| s.split(' ').next()) == Some(&i.to_string())
                })
        })
        .map(|(_, v)| *v)
        .sum();
    let layer =
        all.iter().filter(|((scope, _), _)| scope == "socket layer").map(|((_, r), v)| (*r, *v)).collect();
    (tc, layer)
}

/// Run the accelerated flow in `lab`, whose node is loaded and attached with its maps pinned
/// at `pin`.
pub fn run(cfg: &NodeConfig, lab: &Lab, sys: &Arc<dyn Syscall>, pin: &Path, flows: &[Flow]) -> AccelRow {
    let mut row = AccelRow {
        flow: String::new(),
        skipped: None,
        error: None,
        tc_packets: 0,
        tc_packets_stack: 0,
        layer: BTreeMap::new(),
    };
    let Some(flow) = pick(cfg, flows) else {
        row.skipped = Some("no allowed IPv4 TCP flow between two endpoints".into());
        return row;
    };
    row.flow = flow.describe(cfg);
    let (Side::Endpoint(from), Side::Endpoint(to)) = (flow.from, flow.to) else {
        row.skipped = Some("the flow is not between two endpoints".into());
        return row;
    };
    let cgroup = Path::new(CGROUP2_ROOT).join(format!("{}-accel", super::lab_prefix()));
    let home = match own_cgroup() {
        Ok(h) => h,
        Err(e) => {
            row.skipped = Some(format!("no cgroup v2 at {CGROUP2_ROOT}: {e}"));
            return row;
        }
    };
    if let Err(e) = std::fs::create_dir(&cgroup) {
        row.skipped = Some(format!("create {}: {e}", cgroup.display()));
        return row;
    }
    let mut on = cfg.clone();
    on.socket_layer = Some(SocketLayer { cgroup: cgroup.clone() });
    let result = (|| -> Result<(), String> {
        // Off: the same transfer through the stack, for contrast.
        let before = read(lab, sys, pin, [from, to]);
        transfer(lab, from, to, flow.src, SocketAddr::new(flow.dst, flow.port))?;
        row.tc_packets_stack = read(lab, sys, pin, [from, to]).0.saturating_sub(before.0);
        socklayer::sync(sys, &on, pin).map_err(|e| e.to_string())?;
        let before = read(lab, sys, pin, [from, to]);
        move_self(&cgroup).map_err(|e| format!("enter {}: {e}", cgroup.display()))?;
        let moved = transfer(lab, from, to, flow.src, SocketAddr::new(flow.dst, flow.port));
        let back = move_self(&home).map_err(|e| format!("return to {}: {e}", home.display()));
        moved.and(back)?;
        let after = read(lab, sys, pin, [from, to]);
        row.tc_packets = after.0.saturating_sub(before.0);
        row.layer = after
            .1
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.1.get(k).copied().unwrap_or(0));
                (d > 0).then_some((*k, d))
            })
            .collect();
        Ok(())
    })();
    row.error = result.err();
    if let Err(e) = socklayer::remove(sys, pin) {
        row.error.get_or_insert(format!("removing the socket layer: {e}"));
    }
    let _ = std::fs::remove_dir(&cgroup);
    row
}
