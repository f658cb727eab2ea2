//! `sluice bench` (crate `sluice-bench`, binary `sluice-bench`; the `sluice` command runs it):
//! our datapath against the clang-built anchors, in the same run. It is a crate of its own, not a
//! module of the library, because it shells out to python3, clang, bpftool and the traffic tools
//! and builds namespace labs: none of that is node functionality. Two parts:
//! the XDP prefilter (this module) and endpoint policy ([`policy`]).
//!
//! Contract (prefilter):
//! - Inputs are the anchor's: the deny sets come from `gen_prefilter(N)` in the anchors'
//!   `tools/anchors.py` (run through `python3`), the probe frames are byte for byte its
//!   `pkt4`/`pkt6` (UDP 40000 -> 53 to 10.0.0.2 / fd00::2, payload `anchor`), and the
//!   anchor program is `xdp_prefilter.o` built by the anchors' `build.sh` (clang -O2), loaded
//!   with `bpftool prog loadall` into a private bpffs directory that is removed on drop.
//! - For each N: the anchor's LPM tries and our maps are filled with the same prefixes;
//!   both programs must give the expected verdict on every probe (repeat 1, packet
//!   unchanged) before anything is timed, else [`BenchError::Verdict`]. Then `rounds`
//!   rounds of `BPF_PROG_TEST_RUN` with `repeat`, ours and the anchor interleaved per case
//!   (who goes first alternates), plus a `r0 = 1; exit` drop floor; every timed run checks
//!   its verdict again. A sample is the kernel's average ns per run (whole nanoseconds).
//! - Our load is [`sluice::node::load::load_plan`]'s steps (create every map, apply the
//!   object's writes in order, load the program), each timed on its own so the report can
//!   say which map costs what; [`Tables::build`] is timed per family on one-family sets.
//! - The pure parts (prefix parsing, probe frames, medians, the markdown) need no kernel and
//!   are unit tested; the kernel part runs in `sluice bench` and `src/bench/tests/bench_smoke.rs`.
//! - [`BenchOpts::parts`] picks the parts: `prefilter` (above), `policy` (endpoint policy
//!   against the `tc_policy` anchor, [`policy`]) and `maglev` (Maglev table builds, pure user
//!   space, [`maglev`]); each part's report is its own markdown section, in that order. Only
//!   the first two need bpf(), bpftool and python3. `attach` (daemon start to an attached
//!   node of [`BenchOpts::attach_endpoints`] endpoints, [`attach`]) needs bpf() and `ip`,
//!   and runs only when named; so does `flows` (endpoint-to-endpoint TCP through sluice
//!   against the stack alone, [`flows`]).
//!   `socklb` (`connect()` to a VIP through the cgroup socket load balancer against
//!   `connect()` to the backend, [`sock_lb`]) is in the default selection and needs bpf()
//!   and cgroup v2.

pub mod attach;
pub mod cluster;
pub mod encrypt;
pub mod flows;
pub mod l7;
pub mod lb;
pub mod maglev;
pub mod policy;
pub mod sock_lb;
pub mod sockmsg;

// `sluice demo`'s lab (namespaces, veths, traffic probes, the WireGuard lab), shared with the
// `sluice` binary and the end-to-end tests; the flows, sockmsg and encrypt parts build it.
// Each includer uses a part of it: what this crate does not call is not dead.
#[path = "../demo/mod.rs"]
#[allow(dead_code)]
mod demo;

use sluice::codegen::{self, CodegenError};
use sluice::maps::prefilter::{cidr_key, mask128, mask32, DenySet, Tables, XDP_DROP, XDP_PASS};
use sluice::maps::writes::MapWrites;
use sluice::maps::MapDef;
use sluice::node::load::{apply_writes, load_program, sys_spec, LoadError};
use sluice::node::{prefilter_object, Object};
use sluice::packet::PacketBuilder;
use sluice::sys::{
    self, Map, MapKind, ProgSpec, ProgType, Program, SysError, Syscall, TestRunOpts, UpdateFlags,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// The environment variable that points at the anchors directory.
pub const ANCHORS_DIR_ENV: &str = "SLUICE_ANCHORS_DIR";

/// Calls of `generate()` averaged for the codegen figure.
const CODEGEN_CALLS: u32 = 1000;

/// `r0 = 1 (XDP_DROP); exit`: the cost of invoking a program plus the test-run loop.
const DROP_FLOOR: [u8; 16] = [
    0xb7, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, //
    0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOpts {
    /// Prefixes per family, one map fill per size.
    pub sizes: Vec<usize>,
    /// `BPF_PROG_TEST_RUN` repetitions per sample.
    pub repeat: u32,
    /// Samples per (size, case, program).
    pub rounds: usize,
    /// The anchors folder (`build.sh`, `progs/`, `tools/anchors.py`).
    pub anchors_dir: PathBuf,
    /// Where the anchor objects are (or get built).
    pub build_dir: PathBuf,
    /// Which parts to run, any of [`PARTS`] (default: all, in that order).
    pub parts: Vec<String>,
    /// Endpoints in the policy part's codegen figure (two programs each).
    pub codegen_endpoints: u16,
    /// Endpoints (veth pairs) of the attach part's node.
    pub attach_endpoints: usize,
}

/// The prefilter part: our XDP prefilter against `xdp_prefilter.o`.
pub const PART_PREFILTER: &str = "prefilter";
/// The endpoint-policy part: our `to_ep_1` against `tc_policy.o` ([`policy`]).
pub const PART_POLICY: &str = "policy";
/// The Maglev part: table build time ([`maglev`]); needs no kernel.
pub const PART_MAGLEV: &str = "maglev";
/// The attach part: `sluice daemon` start to an attached node of N endpoints ([`attach`]);
/// not in the default selection (it builds N veth pairs).
pub const PART_ATTACH: &str = "attach";
/// The flows part: TCP throughput and round trips between two endpoints through sluice
/// against the stack alone ([`flows`]); not in the default selection (it builds the demo
/// node in namespaces and takes about a minute).
pub const PART_FLOWS: &str = "flows";
/// The socket load-balancing part: `connect()` to a VIP through the cgroup programs
/// against `connect()` to the backend ([`sock_lb`]); needs bpf() and cgroup v2.
pub const PART_SOCKLB: &str = "socklb";
/// The socket-layer part: endpoint to endpoint accelerated, tc only and with no programs,
/// with sockperf and iperf3 ([`sockmsg`]); not in the default selection.
pub const PART_SOCKMSG: &str = "sockmsg";
/// The tc service load-balancing part: our `lb` against `tc_lb.o` ([`lb`]).
pub const PART_LB: &str = "lb";
/// The encryption part: cross-node TCP with VXLAN against WireGuard ([`encrypt`]); not in
/// the default selection (it builds two labs of namespaces).
pub const PART_ENCRYPT: &str = "encrypt";
/// The cluster part: one node's agent against 1,000 nodes x 100 endpoints in a real etcd
/// ([`cluster`]); needs the `etcd` binary, not bpf(); not in the default selection.
pub const PART_CLUSTER: &str = "cluster";
/// Every part, in the order they run and report.
pub const PARTS: &[&str] = &[
    PART_PREFILTER,
    PART_POLICY,
    PART_MAGLEV,
    PART_ATTACH,
    PART_FLOWS,
    PART_SOCKLB,
    PART_LB,
    PART_SOCKMSG,
    PART_ENCRYPT,
    PART_CLUSTER,
];

impl BenchOpts {
    /// Whether `part` is selected.
    pub fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }

    /// Whether a selected part needs bpf() (every part but `maglev`).
    pub fn needs_kernel(&self) -> bool {
        self.parts.iter().any(|p| p != PART_MAGLEV && p != PART_CLUSTER)
    }
}

/// The workspace this crate was built in (the crate is its `src/bench/`).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("src/bench/ has two parents")
}

impl Default for BenchOpts {
    fn default() -> Self {
        let anchors_dir = std::env::var_os(ANCHORS_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("../shared/anchors"));
        BenchOpts {
            sizes: vec![16, 10_000, 1_000_000],
            repeat: 1_000_000,
            rounds: 3,
            anchors_dir,
            // The workspace's `target/`, wherever this runs from (a test's working directory
            // is its package, `src/bench/`).
            build_dir: workspace_root().join("target/anchors/build"),
            parts: PARTS
                .iter()
                .filter(|p| {
                    **p != PART_ATTACH
                        && **p != PART_FLOWS
                        && **p != PART_SOCKMSG
                        && **p != PART_ENCRYPT
                        && **p != PART_CLUSTER
                })
                .map(|p| p.to_string())
                .collect(),
            codegen_endpoints: 1000,
            attach_endpoints: 100,
        }
    }
}

/// Why the benchmark could not run or its programs misbehaved.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("`{tool}` not found in PATH: {hint}")]
    MissingTool { tool: &'static str, hint: &'static str },
    #[error("bench needs bpf(): {0}")]
    NoKernel(String),
    #[error("bench options: {0}")]
    Options(String),
    #[error("{what}: `{cmd}` could not start: {source}")]
    Spawn {
        what: String,
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: `{cmd}` failed ({status})\n{stderr}")]
    Command { what: String, cmd: String, status: String, stderr: String },
    #[error("{path}: {reason}")]
    Anchor { path: PathBuf, reason: String },
    #[error("prefixes from anchors.gen_prefilter({n}), line {line}: {reason}")]
    Prefixes { n: usize, line: usize, reason: String },
    #[error("policy contents from anchors.gen_policy()/cases(), line {line}: {reason}")]
    PolicyContent { line: usize, reason: String },
    #[error("policy probe {case}: {reason}")]
    PolicyCheck { case: String, reason: String },
    #[error("{program} {case}: ep_stats {reason} grew by {got} over a run of {expected} (every run must take that path)")]
    Reason { program: &'static str, case: &'static str, reason: &'static str, got: u64, expected: u64 },
    #[error("{program} N={n} {case}: verdict {got}, expected {expected}{detail}")]
    Verdict { program: &'static str, n: usize, case: &'static str, got: u32, expected: u32, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("flows part: {0}")]
    Flows(String),
    #[error("attach part: {0}")]
    Attach(String),
    #[error("socklb part: {0}")]
    SockLb(#[from] sock_lb::SockLbBenchError),
    #[error("maglev part: {0}")]
    Maglev(#[from] sluice::lb::MaglevError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Codegen(#[from] CodegenError),
}

// ---------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------

/// One probe frame and the verdict both programs must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub expected: u32,
}

/// The anchors' `SRC_MAC` and `DST_MAC`.
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The anchors' `PAYLOAD`.
const PAYLOAD: &[u8] = b"anchor";
const SPORT: u16 = 40000;
const DPORT: u16 = 53;
const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// `anchors.pkt4(src, "10.0.0.2", UDP, 40000, 53)`: ident 0x1234, DF, TTL 64.
fn pkt4(src: Ipv4Addr) -> Vec<u8> {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
        .ipv4(src, DST4)
        .ident(0x1234)
        .dont_fragment()
        .ttl(64)
        .udp(SPORT, DPORT)
        .payload(PAYLOAD)
        .build()
}

/// `anchors.pkt6(src, "fd00::2", 40000, 53)`: hop limit 64, no flow label.
fn pkt6(src: Ipv6Addr) -> Vec<u8> {
    PacketBuilder::ethernet(SRC_MAC, DST_MAC)
        .ipv6(src, DST6)
        .hop_limit(64)
        .udp(SPORT, DPORT)
        .payload(PAYLOAD)
        .build()
}

/// The anchor's four prefilter cases, in its order.
pub fn probes() -> Vec<Probe> {
    vec![
        Probe { name: "v4_hit", frame: pkt4(Ipv4Addr::new(203, 0, 113, 7)), expected: XDP_DROP as u32 },
        Probe { name: "v4_miss", frame: pkt4(Ipv4Addr::new(192, 0, 2, 1)), expected: XDP_PASS as u32 },
        Probe {
            name: "v6_hit",
            frame: pkt6(Ipv6Addr::new(0xfd00, 0x1234, 0x5678, 0, 0, 0, 0, 0x42)),
            expected: XDP_DROP as u32,
        },
        Probe {
            name: "v6_miss",
            frame: pkt6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            expected: XDP_PASS as u32,
        },
    ]
}

fn verdict_name(v: u32) -> &'static str {
    match v as i32 {
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        _ => "?",
    }
}

// ---------------------------------------------------------------------------------------
// Prefixes
// ---------------------------------------------------------------------------------------

/// The Python that prints `anchors.gen_prefilter(N)` as `4 net len` / `6 net len` lines.
const GEN_PREFIXES_PY: &str = "import sys\n\
sys.path.insert(0, sys.argv[1])\n\
import anchors\n\
v4, v6 = anchors.gen_prefilter(int(sys.argv[2]))\n\
out = ['4 %d %d' % p for p in v4] + ['6 %d %d' % p for p in v6]\n\
sys.stdout.write('\\n'.join(out) + '\\n')\n";

/// Parse `4 net len` / `6 net len` lines (decimal integers) into a deny set. Each family
/// must hold exactly `n` distinct prefixes with their host bits clear.
pub fn parse_prefixes(text: &str, n: usize) -> Result<DenySet, BenchError> {
    let err = |line: usize, reason: String| BenchError::Prefixes { n, line, reason };
    let mut set = DenySet::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let [family, net, len] = fields[..] else {
            if fields.is_empty() {
                continue;
            }
            return Err(err(line, format!("expected `family net len`, got {raw:?}")));
        };
        let len: u8 = len.parse().map_err(|_| err(line, format!("bad length {len:?}")))?;
        let fresh = match family {
            "4" => {
                let addr: u32 = net.parse().map_err(|_| err(line, format!("bad IPv4 network {net:?}")))?;
                if len > 32 || addr & !mask32(len) != 0 {
                    return Err(err(line, format!("{}/{len} is not a prefix", Ipv4Addr::from(addr))));
                }
                set.v4.insert((addr, len))
            }
            "6" => {
                let addr: u128 = net.parse().map_err(|_| err(line, format!("bad IPv6 network {net:?}")))?;
                if len > 128 || addr & !mask128(len) != 0 {
                    return Err(err(line, format!("{}/{len} is not a prefix", Ipv6Addr::from(addr))));
                }
                set.v6.insert((addr, len))
            }
            other => return Err(err(line, format!("bad family {other:?}"))),
        };
        if !fresh {
            return Err(err(line, format!("duplicate prefix {raw:?}")));
        }
    }
    if set.v4.len() != n || set.v6.len() != n {
        return Err(err(
            text.lines().count(),
            format!("expected {n} prefixes per family, got {} IPv4 and {} IPv6", set.v4.len(), set.v6.len()),
        ));
    }
    Ok(set)
}

fn generate_prefixes(opts: &BenchOpts, n: usize) -> Result<DenySet, BenchError> {
    let tools = opts.anchors_dir.join("tools");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(GEN_PREFIXES_PY).arg(&tools).arg(n.to_string());
    let out = run_command(&mut cmd, format!("generating the N={n} prefixes"))?;
    let text = String::from_utf8_lossy(&out);
    parse_prefixes(&text, n)
}

// ---------------------------------------------------------------------------------------
// Processes, tools, timing
// ---------------------------------------------------------------------------------------

fn command_line(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        let _ = write!(s, "{}={} ", k.to_string_lossy(), v.map(|v| v.to_string_lossy()).unwrap_or_default());
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains('\n') {
            s.push_str(" <script>");
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

/// Run `cmd` to completion; its stdout, or an error with its stderr.
fn run_command(cmd: &mut Command, what: String) -> Result<Vec<u8>, BenchError> {
    let line = command_line(cmd);
    let out =
        cmd.output().map_err(|source| BenchError::Spawn { what: what.clone(), cmd: line.clone(), source })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(BenchError::Command {
            what,
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        })
    }
}

/// `name` found in `PATH`, if anywhere.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn require_tool(tool: &'static str, hint: &'static str) -> Result<PathBuf, BenchError> {
    find_in_path(tool).ok_or(BenchError::MissingTool { tool, hint })
}

const APT_HINT: &str = "install it (Debian: apt-get install clang libbpf-dev bpftool)";

/// Milliseconds since `t`.
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[u32]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => f64::from(s[n / 2]),
        n => (f64::from(s[n / 2 - 1]) + f64::from(s[n / 2])) / 2.0,
    }
}

/// The target for ours/anchor at N prefixes per family: parity for a tiny set,
/// half the anchor's time for the large ones; none in between.
pub fn ratio_target(n: usize) -> Option<f64> {
    match n {
        0..=16 => Some(1.0),
        10_000.. => Some(0.5),
        _ => None,
    }
}

/// Target for Tables::build + map create + fill, per family.
pub const FILL_TARGET_MS: f64 = 2000.0;
/// Target for one `generate()`.
pub const CODEGEN_TARGET_US: f64 = 1000.0;

// ---------------------------------------------------------------------------------------
// The anchor
// ---------------------------------------------------------------------------------------

static PIN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private directory under /sys/fs/bpf, removed with its pins on drop (also on panic).
#[derive(Debug)]
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Result<PinDir, BenchError> {
        let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(sys::DEFAULT_BPFFS).join(format!("sluice_bench_{}_{n}", std::process::id()));
        sys::ensure_bpffs(&dir)?;
        Ok(PinDir(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The anchor object `file` (e.g. `xdp_prefilter.o`), built with the anchors' `build.sh`
/// if it is not there yet.
fn anchor_object(opts: &BenchOpts, file: &str) -> Result<PathBuf, BenchError> {
    let obj = opts.build_dir.join(file);
    if obj.is_file() {
        return Ok(obj);
    }
    require_tool("clang", APT_HINT)?;
    let script = opts.anchors_dir.join("build.sh");
    if !script.is_file() {
        return Err(BenchError::Anchor { path: script, reason: "not found (set SLUICE_ANCHORS_DIR)".into() });
    }
    let build_dir = std::path::absolute(&opts.build_dir)
        .map_err(|source| BenchError::Io { what: format!("{}", opts.build_dir.display()), source })?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env("BUILD_DIR", &build_dir);
    run_command(&mut cmd, "building the anchor".into())?;
    if obj.is_file() {
        Ok(obj)
    } else {
        Err(BenchError::Anchor { path: obj, reason: "build.sh succeeded but did not write it".into() })
    }
}

/// The anchor loaded by bpftool, its tries open and its program open.
#[derive(Debug)]
struct Anchor {
    program: Program,
    v4: Map,
    v6: Map,
    load_ms: f64,
    _pins: PinDir,
}

/// An anchor object loaded by `bpftool prog loadall`: its one program, open, and where its
/// maps are pinned.
#[derive(Debug)]
struct Loadall {
    program: Program,
    map_dir: PathBuf,
    load_ms: f64,
    pins: PinDir,
}

fn bpftool_loadall(sys: &Arc<dyn Syscall>, obj: &Path) -> Result<Loadall, BenchError> {
    let pins = PinDir::new()?;
    let (prog_dir, map_dir) = (pins.0.join("prog"), pins.0.join("maps"));
    let mut cmd = Command::new("bpftool");
    cmd.args(["prog", "loadall"]).arg(obj).arg(&prog_dir).arg("pinmaps").arg(&map_dir);
    let t = Instant::now();
    run_command(&mut cmd, "loading the anchor".into())?;
    let load_ms = ms_since(t);
    let entries = std::fs::read_dir(&prog_dir)
        .map_err(|source| BenchError::Io { what: format!("listing {}", prog_dir.display()), source })?;
    let mut progs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    progs.sort();
    let [prog_pin] = &progs[..] else {
        return Err(BenchError::Anchor {
            path: prog_dir,
            reason: format!("expected one program pin, found {progs:?}"),
        });
    };
    let program = Program::from_pin(sys, prog_pin)?;
    Ok(Loadall { program, map_dir, load_ms, pins })
}

/// One of a loaded anchor's maps, checked to have the expected type and sizes.
fn open_anchor_map(
    sys: &Arc<dyn Syscall>,
    map_dir: &Path,
    name: &str,
    kind: MapKind,
    key_size: u32,
    value_size: u32,
) -> Result<Map, BenchError> {
    let path = map_dir.join(name);
    let map = Map::from_pin(sys, &path)?;
    if map.kind() != Some(kind) || map.key_size() != key_size || map.value_size() != value_size {
        return Err(BenchError::Anchor {
            path,
            reason: format!(
                "expected {kind:?} with key {key_size} B and value {value_size} B, found type {} key {} value {}",
                map.map_type(),
                map.key_size(),
                map.value_size()
            ),
        });
    }
    Ok(map)
}

fn load_anchor(sys: &Arc<dyn Syscall>, obj: &Path) -> Result<Anchor, BenchError> {
    let Loadall { program, map_dir, load_ms, pins } = bpftool_loadall(sys, obj)?;
    Ok(Anchor {
        program,
        v4: open_anchor_map(sys, &map_dir, "cidr4_lpm", MapKind::LpmTrie, 8, 1)?,
        v6: open_anchor_map(sys, &map_dir, "cidr6_lpm", MapKind::LpmTrie, 20, 1)?,
        load_ms,
        _pins: pins,
    })
}

/// Fill one anchor trie; returns the milliseconds the kernel calls took.
fn fill_anchor_trie<'a>(
    map: &Map,
    width: usize,
    prefixes: impl Iterator<Item = (&'a [u8], u8)>,
) -> Result<f64, BenchError> {
    let (mut keys, mut count) = (Vec::new(), 0usize);
    for (addr, len) in prefixes {
        keys.extend_from_slice(&u32::from(len).to_le_bytes());
        keys.extend_from_slice(&addr[addr.len() - width..]);
        count += 1;
    }
    let values = vec![1u8; count];
    let t = Instant::now();
    map.update_batch(&keys, &values, count, UpdateFlags::ANY)?;
    Ok(ms_since(t))
}

// ---------------------------------------------------------------------------------------
// Ours
// ---------------------------------------------------------------------------------------

/// Which family a map's contents belong to, for the per-family figures.
fn map_family(name: &str) -> &'static str {
    if name.starts_with("pf_v4_") {
        "v4"
    } else if name.starts_with("pf_v6_") {
        "v6"
    } else {
        "shared"
    }
}

/// Split the `pf_cidrs` writes by address family so each family's cost can be told apart.
fn split_cidrs(w: &MapWrites) -> [MapWrites; 2] {
    let empty =
        || MapWrites { map: w.map, key_size: w.key_size, value_size: w.value_size, ..Default::default() };
    let mut out = [empty(), empty()];
    // `pf_cidrs` is an array of records: the family is in the value.
    let family = |record: &[u8]| usize::from(record[cidr_key::FAMILY] != 4);
    let ks = w.key_size.max(1);
    for (k, v) in w.keys.chunks_exact(ks).zip(w.values.chunks_exact(w.value_size.max(1))) {
        out[family(v)].put(k, v);
    }
    out
}

/// Our program loaded the way `load_plan` does it, each step timed.
#[derive(Debug)]
struct Ours {
    program: Program,
    _maps: BTreeMap<&'static str, Map>,
    load_ms: f64,
    maps: Vec<MapFill>,
}

fn load_ours(sys: &Arc<dyn Syscall>, obj: &Object) -> Result<Ours, BenchError> {
    let mut maps = BTreeMap::new();
    let mut fills: Vec<MapFill> = Vec::new();
    for def in &obj.maps {
        let t = Instant::now();
        let map = Map::create(sys, &sys_spec(def)).map_err(LoadError::from)?;
        fills.push(MapFill {
            map: def.name.to_string(),
            family: map_family(def.name),
            bytes: map_bytes(def),
            entries: 0,
            create_ms: ms_since(t),
            fill_ms: 0.0,
        });
        maps.insert(def.name, map);
    }
    for w in &obj.writes {
        let parts: Vec<(MapWrites, &'static str)> = if w.map == sluice::maps::names::PF_CIDRS {
            let [v4, v6] = split_cidrs(w);
            vec![(v4, "v4"), (v6, "v6")]
        } else {
            vec![(w.clone(), map_family(w.map))]
        };
        for (part, family) in parts {
            let t = Instant::now();
            apply_writes(&maps, std::slice::from_ref(&part))?;
            let ms = ms_since(t);
            let label = if w.map == sluice::maps::names::PF_CIDRS {
                format!("pf_cidrs ({family})")
            } else {
                w.map.to_string()
            };
            match fills.iter_mut().find(|f| f.map == label) {
                Some(f) => {
                    f.entries += part.updates();
                    f.fill_ms += ms;
                }
                None => {
                    // Right after the map's own row (and its earlier parts).
                    let at =
                        fills.iter().rposition(|f| f.map.starts_with(w.map)).map_or(fills.len(), |i| i + 1);
                    let row = MapFill {
                        map: label,
                        family,
                        bytes: 0,
                        entries: part.updates(),
                        create_ms: 0.0,
                        fill_ms: ms,
                    };
                    fills.insert(at, row);
                }
            }
        }
    }
    let t = Instant::now();
    let program = load_program(sys, obj, &maps)?;
    let load_ms = ms_since(t);
    Ok(Ours { program, _maps: maps, load_ms, maps: fills })
}

/// Memory a map's definition reserves up front (arrays are preallocated; hash and trie
/// maps here are `BPF_F_NO_PREALLOC`, so 0).
fn map_bytes(def: &MapDef) -> u64 {
    use sluice_verifier_sim::spec::MapKind as K;
    match def.kind {
        K::Array => u64::from(def.value_size) * u64::from(def.max_entries),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// The samples of one (N, case).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub case: &'static str,
    pub expected: u32,
    /// ns per run, one per round.
    pub ours: Vec<u32>,
    pub anchor: Vec<u32>,
}

/// Median of ours over median of the anchor's samples.
pub fn median_ratio(ours: &[u32], anchor: &[u32]) -> f64 {
    let a = median(anchor);
    if a == 0.0 {
        f64::INFINITY
    } else {
        median(ours) / a
    }
}

impl CaseResult {
    /// Median ours / median anchor.
    pub fn ratio(&self) -> f64 {
        median_ratio(&self.ours, &self.anchor)
    }
}

/// Load statistics of one program.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgStats {
    pub verified_insns: u32,
    pub xlated_insns: u32,
    pub jited_bytes: u32,
    /// Wall time of the load (ours: BPF_PROG_LOAD; anchor: the whole `bpftool prog loadall`).
    pub load_ms: f64,
}

impl ProgStats {
    fn of(p: &Program, load_ms: f64) -> ProgStats {
        let s = p.stats();
        ProgStats {
            verified_insns: s.verified_insns,
            xlated_insns: s.xlated_prog_len / 8,
            jited_bytes: s.jited_prog_len,
            load_ms,
        }
    }
}

/// One map's creation and fill.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFill {
    pub map: String,
    pub family: &'static str,
    /// Bytes reserved at creation (preallocated arrays).
    pub bytes: u64,
    pub entries: usize,
    pub create_ms: f64,
    pub fill_ms: f64,
}

/// One family's table build, map creation and fill, ours and the anchor's.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyFill {
    pub family: &'static str,
    pub prefixes: usize,
    pub build_ms: f64,
    pub create_ms: f64,
    pub fill_ms: f64,
    pub anchor_fill_ms: f64,
}

impl FamilyFill {
    /// Build + create + fill.
    pub fn total_ms(&self) -> f64 {
        self.build_ms + self.create_ms + self.fill_ms
    }
}

/// Everything measured at one N.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeResult {
    pub n: usize,
    pub cases: Vec<CaseResult>,
    pub ours: ProgStats,
    pub anchor: ProgStats,
    pub families: Vec<FamilyFill>,
    pub maps: Vec<MapFill>,
    /// Wall time of `prefilter_object` (both families' tables, the writes, codegen).
    pub object_ms: f64,
    /// Wall time of generating the prefixes in Python (not part of any figure above).
    pub python_ms: f64,
    /// Drop floor samples taken between this size's rounds (ns per run).
    pub floor: Vec<u32>,
}

impl SizeResult {
    /// Creation and fill of the maps that belong to no family.
    pub fn shared(&self) -> impl Iterator<Item = &MapFill> {
        self.maps.iter().filter(|m| m.family == "shared")
    }
}

/// Where and with what the benchmark ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Env {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub bpftool: String,
    pub anchor_object: String,
    /// `compile_ms` of xdp_prefilter from the build's `compile_times.tsv`, if present.
    pub clang_ms: Option<String>,
    /// The CPU's call/return mitigations (`spectre_v2`, `spec_rstack_overflow`): they set
    /// what a helper call and the test-run loop cost.
    pub mitigations: String,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub env: Env,
    pub repeat: u32,
    pub rounds: usize,
    /// Average µs of one `generate()` over [`CODEGEN_CALLS`] calls (prefilter part).
    pub codegen_us: f64,
    /// The prefilter part, one entry per N; empty when that part did not run.
    pub sizes: Vec<SizeResult>,
    /// The endpoint-policy part, when it ran.
    pub policy: Option<policy::PolicyResult>,
    /// The Maglev part, when it ran.
    pub maglev: Option<maglev::MaglevResult>,
    /// The attach part, when it ran.
    pub attach: Option<attach::AttachResult>,
    /// The flows part, when it ran, with the options it ran with.
    pub flows: Option<(flows::FlowReport, flows::FlowBenchOpts)>,
    /// The socket load-balancing part, when it ran.
    pub socklb: Option<sock_lb::SockLbResult>,
    /// The tc service load-balancing part, when it ran.
    pub lb: Option<lb::LbResult>,
    /// The socket-layer part, when it ran.
    pub sockmsg: Option<sockmsg::SockMsgReport>,
    /// The encryption part, when it ran, with the options it ran with.
    pub encrypt: Option<(encrypt::EncryptReport, flows::FlowBenchOpts)>,
    /// The cluster part, when it ran.
    pub cluster: Option<cluster::ClusterResult>,
}

impl Report {
    /// Every drop floor sample, all sizes.
    pub fn floor(&self) -> Vec<u32> {
        self.sizes.iter().flat_map(|z| z.floor.iter().copied()).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// Run the benchmark and return the markdown report.
pub fn run(opts: &BenchOpts) -> Result<String, BenchError> {
    if opts.runs(l7::PART_L7) {
        // The L7 part stands apart from the kernel parts: its own section after theirs.
        let rest = BenchOpts {
            parts: opts.parts.iter().filter(|p| *p != l7::PART_L7).cloned().collect(),
            ..opts.clone()
        };
        let mut out = if rest.parts.is_empty() { String::new() } else { measure(&rest)?.render() };
        out.push_str(&l7::run()?);
        return Ok(out);
    }
    Ok(measure(opts)?.render())
}

/// Run the benchmark and return the figures.
pub fn measure(opts: &BenchOpts) -> Result<Report, BenchError> {
    if let Some(bad) = opts.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(BenchError::Options(format!(
            "unknown part {bad:?} (the parts are {})",
            PARTS.join(", ")
        )));
    }
    if opts.parts.is_empty() {
        return Err(BenchError::Options(format!("no part selected (the parts are {})", PARTS.join(", "))));
    }
    let prefilter = opts.runs(PART_PREFILTER);
    if (prefilter && (opts.sizes.is_empty() || opts.sizes.contains(&0)))
        || opts.repeat == 0
        || opts.rounds == 0
    {
        return Err(BenchError::Options(format!(
            "need at least one size, every size >= 1, repeat >= 1 and rounds >= 1 (got sizes {:?}, repeat {}, \
             rounds {})",
            opts.sizes, opts.repeat, opts.rounds
        )));
    }
    if opts.needs_kernel() {
        sys::kernel_available().map_err(BenchError::NoKernel)?;
    }
    if opts.runs(PART_PREFILTER) || opts.runs(PART_POLICY) {
        require_tool("bpftool", APT_HINT)?;
        require_tool("python3", "install python3 (the anchors' prefix generator needs it)")?;
    }
    let sys = sys::kernel();
    let obj = if prefilter { Some(anchor_object(opts, "xdp_prefilter.o")?) } else { None };
    let policy_obj = if opts.runs(PART_POLICY) { Some(anchor_object(opts, "tc_policy.o")?) } else { None };
    let env = environment(opts, obj.as_deref());
    let sizes = match &obj {
        Some(obj) => measure_prefilter(opts, &sys, obj)?,
        None => (0.0, Vec::new()),
    };
    let policy = match &policy_obj {
        Some(obj) => Some(policy::measure(opts, &sys, obj)?),
        None => None,
    };
    let maglev = if opts.runs(PART_MAGLEV) { Some(maglev::measure(maglev::BUILDS)?) } else { None };
    let attach = if opts.runs(PART_ATTACH) { Some(attach::measure(opts, &sys)?) } else { None };
    let flows = if opts.runs(PART_FLOWS) {
        let fo = flows::FlowBenchOpts { rounds: opts.rounds, ..flows::FlowBenchOpts::default() };
        Some((flows::run(&fo).map_err(|e| BenchError::Flows(e.to_string()))?, fo))
    } else {
        None
    };
    let socklb = if opts.runs(PART_SOCKLB) { Some(sock_lb::measure(&sys)?) } else { None };
    let lb = if opts.runs(PART_LB) {
        require_tool("bpftool", APT_HINT)?;
        Some(lb::measure(opts, &sys, &anchor_object(opts, "tc_lb.o")?)?)
    } else {
        None
    };
    let sockmsg = if opts.runs(PART_SOCKMSG) {
        Some(sockmsg::run(opts.rounds).map_err(|e| BenchError::Flows(format!("sockmsg part: {e}")))?)
    } else {
        None
    };
    let encrypt = if opts.runs(PART_ENCRYPT) {
        let fo = flows::FlowBenchOpts { rounds: opts.rounds, ..flows::FlowBenchOpts::default() };
        Some((encrypt::run(&fo).map_err(BenchError::Flows)?, fo))
    } else {
        None
    };
    let cluster =
        if opts.runs(PART_CLUSTER) { Some(cluster::measure().map_err(BenchError::Options)?) } else { None };
    Ok(Report {
        encrypt,
        cluster,
        socklb,
        lb,
        sockmsg,
        env,
        repeat: opts.repeat,
        rounds: opts.rounds,
        codegen_us: sizes.0,
        sizes: sizes.1,
        policy,
        maglev,
        attach,
        flows,
    })
}

/// The prefilter part: the codegen figure, then every N.
fn measure_prefilter(
    opts: &BenchOpts,
    sys: &Arc<dyn Syscall>,
    obj: &Path,
) -> Result<(f64, Vec<SizeResult>), BenchError> {
    let t = Instant::now();
    for _ in 0..CODEGEN_CALLS {
        std::hint::black_box(codegen::prefilter::generate()?);
    }
    let codegen_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(CODEGEN_CALLS);

    let floor_prog = Program::load(sys, &ProgSpec::new("bench_floor", ProgType::Xdp, &DROP_FLOOR))?;
    let probes = probes();
    let mut sizes = Vec::new();
    for &n in &opts.sizes {
        sizes.push(measure_size(opts, sys, obj, &floor_prog, &probes, n)?);
    }
    Ok((codegen_us, sizes))
}

fn measure_size(
    opts: &BenchOpts,
    sys: &Arc<dyn Syscall>,
    obj: &Path,
    floor: &Program,
    probes: &[Probe],
    n: usize,
) -> Result<SizeResult, BenchError> {
    let t = Instant::now();
    let set = generate_prefixes(opts, n)?;
    let python_ms = ms_since(t);

    // The anchor: bpftool loads it, we fill its tries.
    let anchor = load_anchor(sys, obj)?;
    let v4_addrs: Vec<([u8; 4], u8)> = set.v4.iter().map(|&(a, l)| (a.to_be_bytes(), l)).collect();
    let v6_addrs: Vec<([u8; 16], u8)> = set.v6.iter().map(|&(a, l)| (a.to_be_bytes(), l)).collect();
    let anchor_v4_ms = fill_anchor_trie(&anchor.v4, 4, v4_addrs.iter().map(|(a, l)| (&a[..], *l)))?;
    let anchor_v6_ms = fill_anchor_trie(&anchor.v6, 16, v6_addrs.iter().map(|(a, l)| (&a[..], *l)))?;
    drop((v4_addrs, v6_addrs));

    // Ours: tables per family (timed on one-family sets), then the object and its load.
    let one_family = |v4: bool| DenySet {
        v4: if v4 { set.v4.clone() } else { Default::default() },
        v6: if v4 { Default::default() } else { set.v6.clone() },
    };
    let (only4, only6) = (one_family(true), one_family(false));
    let t = Instant::now();
    drop(std::hint::black_box(Tables::build(&only4)));
    let build4 = ms_since(t);
    let t = Instant::now();
    drop(std::hint::black_box(Tables::build(&only6)));
    let build6 = ms_since(t);
    drop((only4, only6));
    let t = Instant::now();
    let object = prefilter_object(&set)?;
    let object_ms = ms_since(t);
    let ours = load_ours(sys, &object)?;
    drop(object);

    let family = |fam: &'static str, prefixes: usize, build_ms: f64, anchor_fill_ms: f64| {
        let of = || ours.maps.iter().filter(move |m| m.family == fam);
        FamilyFill {
            family: fam,
            prefixes,
            build_ms,
            create_ms: of().map(|m| m.create_ms).sum(),
            fill_ms: of().map(|m| m.fill_ms).sum(),
            anchor_fill_ms,
        }
    };
    let families = vec![
        family("v4", set.v4.len(), build4, anchor_v4_ms),
        family("v6", set.v6.len(), build6, anchor_v6_ms),
    ];

    // Verdicts first, then the interleaved timing.
    for p in probes {
        check_once("ours", &ours.program, n, p)?;
        check_once("anchor", &anchor.program, n, p)?;
    }
    let floor_probe = Probe { expected: XDP_DROP as u32, ..probes[0].clone() };
    check_once("drop floor", floor, n, &floor_probe)?;
    // One untimed pass so caches, branch predictors and the CPU clock settle first.
    let warm = opts.repeat.clamp(1, 100_000);
    for p in probes {
        timed("ours", &ours.program, n, p, warm)?;
        timed("anchor", &anchor.program, n, p, warm)?;
    }
    timed("drop floor", floor, n, &floor_probe, warm)?;
    let mut cases: Vec<CaseResult> = probes
        .iter()
        .map(|p| CaseResult { case: p.name, expected: p.expected, ours: vec![], anchor: vec![] })
        .collect();
    let mut floor_samples = Vec::new();
    for round in 0..opts.rounds {
        for (i, p) in probes.iter().enumerate() {
            let ours_first = (round + i) % 2 == 0;
            for turn in 0..2 {
                if (turn == 0) == ours_first {
                    cases[i].ours.push(timed("ours", &ours.program, n, p, opts.repeat)?);
                } else {
                    cases[i].anchor.push(timed("anchor", &anchor.program, n, p, opts.repeat)?);
                }
            }
        }
        floor_samples.push(timed("drop floor", floor, n, &floor_probe, opts.repeat)?);
    }

    Ok(SizeResult {
        n,
        cases,
        ours: ProgStats::of(&ours.program, ours.load_ms),
        anchor: ProgStats::of(&anchor.program, anchor.load_ms),
        families,
        maps: ours.maps,
        object_ms,
        python_ms,
        floor: floor_samples,
    })
}

fn check_once(program: &'static str, prog: &Program, n: usize, p: &Probe) -> Result<(), BenchError> {
    let r = prog.test_run(&TestRunOpts::packet(&p.frame))?;
    let detail =
        if r.data_out != p.frame { " (and the packet was changed)".to_string() } else { String::new() };
    if r.retval != p.expected || !detail.is_empty() {
        return Err(BenchError::Verdict {
            program,
            n,
            case: p.name,
            got: r.retval,
            expected: p.expected,
            detail,
        });
    }
    Ok(())
}

fn timed(program: &'static str, prog: &Program, n: usize, p: &Probe, repeat: u32) -> Result<u32, BenchError> {
    let r =
        prog.test_run(&TestRunOpts { data_in: &p.frame, data_out_cap: 0, repeat, ..Default::default() })?;
    if r.retval != p.expected {
        let detail = format!(" (timed run, repeat {repeat})");
        return Err(BenchError::Verdict {
            program,
            n,
            case: p.name,
            got: r.retval,
            expected: p.expected,
            detail,
        });
    }
    Ok(r.duration_ns)
}

/// `compile_ms` of anchor program `prog` from the build's `compile_times.tsv`, if present.
fn clang_compile_ms(opts: &BenchOpts, prog: &str) -> Option<String> {
    let tsv = std::fs::read_to_string(opts.build_dir.join("compile_times.tsv")).unwrap_or_default();
    let prefix = format!("{prog}\t");
    tsv.lines().find_map(|l| l.strip_prefix(&prefix).and_then(|r| r.split('\t').next()).map(str::to_string))
}

fn environment(opts: &BenchOpts, obj: Option<&Path>) -> Env {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let bpftool = Command::new("bpftool")
        .arg("version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().take(2).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let clang_ms = obj.and_then(|_| clang_compile_ms(opts, "xdp_prefilter"));
    let mitigations = ["spectre_v2", "spec_rstack_overflow"]
        .iter()
        .filter_map(|v| {
            let text = read(&format!("/sys/devices/system/cpu/vulnerabilities/{v}"));
            (!text.trim().is_empty()).then(|| format!("{v}: {}", text.trim()))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Env {
        mitigations,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        bpftool,
        anchor_object: obj.map(|o| o.display().to_string()).unwrap_or_default(),
        clang_ms,
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// `12` for whole numbers, `12.5` otherwise.
fn ns(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn samples(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join("/")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The report as markdown.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.sizes.is_empty() {
            self.render_prefilter(&mut s);
        }
        if let Some(p) = &self.policy {
            if !s.is_empty() {
                s.push('\n');
            }
            p.render(&self.env, self.repeat, self.rounds, &mut s);
        }
        if let Some(m) = &self.maglev {
            if !s.is_empty() {
                s.push('\n');
            }
            m.render(&mut s);
        }
        if let Some(a) = &self.attach {
            if !s.is_empty() {
                s.push('\n');
            }
            a.render(&mut s);
        }
        if let Some((f, fo)) = &self.flows {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&f.render(fo));
        }
        if let Some(m) = &self.sockmsg {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&m.render());
        }
        if let Some(l) = &self.socklb {
            if !s.is_empty() {
                s.push('\n');
            }
            l.render(&mut s);
        }
        if let Some(l) = &self.lb {
            if !s.is_empty() {
                s.push('\n');
            }
            l.render(&self.env, self.repeat, self.rounds, &mut s);
        }
        if let Some((e, eo)) = &self.encrypt {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&e.render(eo));
        }
        if let Some(c) = &self.cluster {
            if !s.is_empty() {
                s.push('\n');
            }
            c.render(&mut s);
        }
        s
    }

    /// The prefilter part's section.
    fn render_prefilter(&self, s: &mut String) {
        let e = &self.env;
        let _ = writeln!(s, "# sluice bench: XDP prefilter, ours vs the clang anchor\n");
        let _ = writeln!(s, "- kernel {}, {} CPUs ({})", e.kernel, e.cpus, e.cpu);
        if !e.mitigations.is_empty() {
            let _ = writeln!(s, "- {}", e.mitigations);
        }
        let _ = writeln!(s, "- anchor `{}` ({})", e.anchor_object, e.bpftool);
        let _ = writeln!(
            s,
            "- BPF_PROG_TEST_RUN repeat {}, {} rounds, ours and the anchor interleaved per case; \
             a sample is the kernel's average ns per run (whole ns)",
            self.repeat, self.rounds
        );
        let _ = writeln!(
            s,
            "- drop floor (`r0 = 1; exit`): median {} ns (samples {})\n",
            ns(median(&self.floor())),
            samples(&self.floor())
        );

        let _ = writeln!(s, "## ns per packet (median of the rounds)\n");
        let _ = writeln!(s, "| N | case | verdict | ours ns | anchor ns | ours/anchor | target | met | over floor ours/anchor | ours samples | anchor samples |");
        let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---|---|---:|---|---|");
        for z in &self.sizes {
            let floor = median(&z.floor);
            for c in &z.cases {
                let (o, a) = (median(&c.ours) - floor, median(&c.anchor) - floor);
                let over = if a > 0.0 { format!("{:.2}", o.max(0.0) / a) } else { "-".to_string() };
                let ratio = c.ratio();
                let (target, ok) = match ratio_target(z.n) {
                    Some(t) => (format!("≤ {t:.1}"), met(ratio <= t)),
                    None => ("-".to_string(), "-"),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
                    z.n,
                    c.case,
                    verdict_name(c.expected),
                    ns(median(&c.ours)),
                    ns(median(&c.anchor)),
                    ratio,
                    target,
                    ok,
                    over,
                    samples(&c.ours),
                    samples(&c.anchor)
                );
            }
        }

        let _ = writeln!(s, "\n## Programs\n");
        let _ = writeln!(s, "| N | verified insns ours | anchor | target ours ≤ anchor | xlated insns ours | anchor | jited bytes ours | anchor | load ms ours | anchor (bpftool loadall) |");
        let _ = writeln!(s, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        for z in &self.sizes {
            let (o, a) = (&z.ours, &z.anchor);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
                z.n,
                o.verified_insns,
                a.verified_insns,
                met(o.verified_insns <= a.verified_insns),
                o.xlated_insns,
                a.xlated_insns,
                o.jited_bytes,
                a.jited_bytes,
                o.load_ms,
                a.load_ms
            );
        }
        let clang = e
            .clang_ms
            .as_deref()
            .map_or(String::new(), |ms| format!("; clang -O2 compile of the anchor: {ms} ms"));
        let _ = writeln!(
            s,
            "\ncodegen: `generate()` takes {:.1} µs (average of {CODEGEN_CALLS} calls; target < {CODEGEN_TARGET_US:.0} µs: {}){clang}",
            self.codegen_us,
            met(self.codegen_us < CODEGEN_TARGET_US)
        );

        let _ = writeln!(s, "\n## Tables and map fill, per family\n");
        let _ = writeln!(s, "| N | family | prefixes | Tables::build ms | create ms | fill ms | ours total ms | target < {FILL_TARGET_MS:.0} ms | anchor fill ms |");
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---|---:|");
        for z in &self.sizes {
            for f in &z.families {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
                    z.n,
                    f.family,
                    f.prefixes,
                    f.build_ms,
                    f.create_ms,
                    f.fill_ms,
                    f.total_ms(),
                    met(f.total_ms() < FILL_TARGET_MS),
                    f.anchor_fill_ms
                );
            }
            let (create, fill): (f64, f64) =
                (z.shared().map(|m| m.create_ms).sum(), z.shared().map(|m| m.fill_ms).sum());
            let names: Vec<&str> = z.shared().map(|m| m.map.as_str()).collect();
            let _ = writeln!(
                s,
                "| {} | shared ({}) | - | - | {create:.1} | {fill:.1} | {:.1} | - | - |",
                z.n,
                names.join(", "),
                create + fill
            );
        }
        let _ = writeln!(
            s,
            "\nOurs: `Tables::build` on a one-family set, then `load_plan`'s steps (create each map, apply its \
             writes, `pf_cidrs` split by family). The anchor: `bpftool` creates its tries, we fill them \
             (`BPF_MAP_UPDATE_ELEM` per prefix: LPM tries have no batch update). The drop floor \
             of each N is subtracted in the \"over floor\" column."
        );
        for z in &self.sizes {
            let _ = writeln!(
                s,
                "N={}: `prefilter_object` (both families' tables, writes, codegen) {:.1} ms; \
                 Python prefix generation {:.0} ms (not counted); drop floor {} ns.",
                z.n,
                z.object_ms,
                z.python_ms,
                ns(median(&z.floor))
            );
        }
        for z in &self.sizes {
            let _ = writeln!(s, "\n### Our maps at N={}\n", z.n);
            let _ =
                writeln!(s, "| map | family | preallocated MiB | entries written | create ms | fill ms |");
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
            for m in &z.maps {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.1} | {:.1} |",
                    m.map,
                    m.family,
                    mb(m.bytes),
                    m.entries,
                    m.create_ms,
                    m.fill_ms
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_per_family() {
        let text = "4 3405803776 24\n4 167772160 8\n6 336295052163581814259465803577031655424 48\n6 0 0\n\n";
        let set = parse_prefixes(text, 2).expect("parses");
        assert_eq!(set.v4.iter().copied().collect::<Vec<_>>(), [(0x0a00_0000, 8), (0xcb00_7100, 24)]);
        assert!(set.v6.contains(&(0xfd00_1234_5678u128 << 80, 48)));
        assert!(set.v6.contains(&(0, 0)));
    }

    #[test]
    fn bad_prefix_lines_are_errors_with_their_line() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("4 1 24\n", 1, 1, "is not a prefix"),
            ("4 0 33\n", 1, 1, "is not a prefix"),
            ("6 x 8\n", 1, 1, "bad IPv6 network"),
            ("5 0 8\n", 1, 1, "bad family"),
            ("4 0 8 9\n", 1, 1, "expected `family net len`"),
            ("4 0 8\n4 0 8\n", 2, 2, "duplicate"),
            ("4 0 8\n6 0 8\n", 2, 2, "expected 2 prefixes per family, got 1 IPv4 and 1 IPv6"),
        ];
        for &(text, n, line, needle) in cases {
            match parse_prefixes(text, n) {
                Err(BenchError::Prefixes { line: got, reason, .. }) => {
                    assert_eq!(got, line, "input {text:?}: {reason}");
                    assert!(reason.contains(needle), "input {text:?}: {reason:?} lacks {needle:?}");
                }
                other => panic!("input {text:?}: expected a prefix error, got {other:?}"),
            }
        }
    }

    /// The frames are the anchors' `pkt4`/`pkt6` bytes (from `results/*/pkts/`).
    #[test]
    fn probes_match_the_anchor_frames() {
        let p = probes();
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&p[0].frame),
            "020000000002020000000001080045000022123440004011e28dcb0071070a000002\
             9c400035000ee909616e63686f72"
        );
        assert_eq!(
            hex(&p[3].frame),
            "02000000000202000000000186dd60000000000e114020010db8000000000000000000000001\
             fd000000000000000000000000000002\
             9c400035000e0457616e63686f72"
        );
        assert_eq!(
            p.iter().map(|p| (p.name, p.expected)).collect::<Vec<_>>(),
            [("v4_hit", 1), ("v4_miss", 2), ("v6_hit", 1), ("v6_miss", 2)]
        );
    }

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(&[5, 1, 3]), 3.0);
        assert_eq!(median(&[4, 1, 3, 2]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(ratio_target(16), Some(1.0));
        assert_eq!(ratio_target(10_000), Some(0.5));
        assert_eq!(ratio_target(1_000_000), Some(0.5));
        assert_eq!(ratio_target(100), None);
    }

    fn sample_report() -> Report {
        let case = |case, expected, ours: &[u32], anchor: &[u32]| CaseResult {
            case,
            expected,
            ours: ours.to_vec(),
            anchor: anchor.to_vec(),
        };
        let fam = |family, build_ms| FamilyFill {
            family,
            prefixes: 16,
            build_ms,
            create_ms: 1.0,
            fill_ms: 2.0,
            anchor_fill_ms: 0.5,
        };
        let stats =
            |verified_insns| ProgStats { verified_insns, xlated_insns: 54, jited_bytes: 252, load_ms: 1.5 };
        Report {
            cluster: None,
            env: Env { kernel: "6.18.44".into(), cpus: 2, ..Env::default() },
            repeat: 1000,
            rounds: 3,
            codegen_us: 42.0,
            sizes: vec![SizeResult {
                n: 16,
                cases: vec![
                    case("v4_hit", 1, &[10, 11, 12], &[17, 17, 18]),
                    case("v4_miss", 2, &[20, 20, 20], &[16, 16, 16]),
                    case("v6_hit", 1, &[9, 9, 9], &[18, 18, 18]),
                    case("v6_miss", 2, &[9, 9, 9], &[17, 17, 17]),
                ],
                ours: stats(80),
                anchor: stats(60),
                families: vec![fam("v4", 2500.0), fam("v6", 3.0)],
                maps: vec![
                    MapFill {
                        map: sluice::maps::names::PF_V4_L1.into(),
                        family: "v4",
                        bytes: 262_144,
                        entries: 1,
                        create_ms: 0.2,
                        fill_ms: 0.3,
                    },
                    MapFill {
                        map: sluice::maps::names::PF_STATS.into(),
                        family: "shared",
                        bytes: 0,
                        entries: 0,
                        create_ms: 0.1,
                        fill_ms: 0.0,
                    },
                ],
                object_ms: 4.0,
                python_ms: 30.0,
                floor: vec![5, 6, 5],
            }],
            policy: None,
            maglev: None,
            attach: None,
            flows: None,
            sockmsg: None,
            socklb: None,
            lb: None,
            encrypt: None,
        }
    }

    #[test]
    fn report_has_every_case_with_ratio_and_target() {
        let md = sample_report().render();
        let rows = [
            "| 16 | v4_hit | DROP | 11 | 17 | 0.65 | ≤ 1.0 | met | 0.50 | 10/11/12 | 17/17/18 |",
            "| 16 | v4_miss | PASS | 20 | 16 | 1.25 | ≤ 1.0 | **not met** | 1.36 | 20/20/20 | 16/16/16 |",
            "| 16 | v6_hit | DROP | 9 | 18 | 0.50 | ≤ 1.0 | met |",
            "| 16 | v6_miss | PASS | 9 | 17 | 0.53 | ≤ 1.0 | met |",
            "| 16 | 80 | 60 | **not met** | 54 | 54 | 252 | 252 | 1.5 | 1.5 |",
            "| 16 | v4 | 16 | 2500.0 | 1.0 | 2.0 | 2503.0 | **not met** | 0.5 |",
            "| 16 | v6 | 16 | 3.0 | 1.0 | 2.0 | 6.0 | met | 0.5 |",
            "| 16 | shared (pf_stats) | - | - | 0.1 | 0.0 | 0.1 | - | - |",
            "| pf_v4_l1 | v4 | 0.2 | 1 | 0.2 | 0.3 |",
            "drop floor (`r0 = 1; exit`): median 5 ns (samples 5/6/5)",
            "`generate()` takes 42.0 µs (average of 1000 calls; target < 1000 µs: met)",
        ];
        for row in rows {
            assert!(md.contains(row), "missing {row:?} in\n{md}");
        }
    }

    #[test]
    fn cidr_writes_split_by_family() {
        use sluice::maps::prefilter::Prefix;
        let set = DenySet::new([
            Prefix::V4 { addr: 0x0a00_0000, len: 8 },
            Prefix::V6 { addr: 1 << 127, len: 1 },
            Prefix::V4 { addr: 0xc000_0000, len: 2 },
        ]);
        let obj = prefilter_object(&set).expect("object");
        let cidrs =
            obj.writes.iter().find(|w| w.map == sluice::maps::names::PF_CIDRS).expect("pf_cidrs writes");
        let [v4, v6] = split_cidrs(cidrs);
        assert_eq!((v4.updates(), v6.updates()), (2, 1));
        // `pf_cidrs` is an array: the family is in the record, the key is an index.
        assert!(v4.values.chunks_exact(cidr_key::SIZE).all(|r| r[cidr_key::FAMILY] == 4));
        assert_eq!(v6.values[cidr_key::FAMILY], 6);
    }
}
