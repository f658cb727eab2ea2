//! `sluice bench --parts attach`: the time from starting `sluice daemon` to a fully
//! attached node of N endpoints (issue 4's target: under 1 s for 100).
//!
//! Contract:
//! - Setup: a fresh network namespace `sluice-bench-<pid>` holding N veth pairs (host sides
//!   `lxc0`..`lxc<N-1>`, the peers in the same namespace), and a node file with N endpoints
//!   on them ([`node_file`]: 10.210.0.0/16 addresses, labels `app: epI` and `tier: front`
//!   or `back`; one CiliumNetworkPolicy admitting TCP 8080 from `front` to `back`, one
//!   admitting UDP 53 to every endpoint). The namespace (with the veths), the pins and the
//!   temporary directory are removed on drop, also on error or panic.
//! - Each round starts the `sluice` binary ([`sluice_exe`]) as `sluice daemon` inside the
//!   namespace (setns before exec) on an empty pin dir and times it until its socket
//!   exists (the daemon binds it right after attaching), then checks that
//!   [`wire::status`] shows 2N hooks, none with a problem. The daemon's own `ready in`
//!   line gives the plan/load/attach split. It is stopped (SIGTERM, pins and links stay)
//!   and started again on the same pins: the restart (adopt) is timed the same way. Then
//!   `sluice down`.
//! - After the rounds, with a node loaded, `from_ep_1` and `to_ep_1` are each loaded again
//!   [`PROG_LOADS`] times against the pinned maps: the kernel verifier's share of a load.
//! - The output is one markdown section ([`AttachResult::render`]).

use super::{median, BenchError, BenchOpts};
use sluice::daemon::StartTimes;
use sluice::node::load::{load_program, open_pinned_map};
use sluice::node::wire;
use sluice::sys::{self, Map, Syscall};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The target: daemon start to a fully attached node of 100 endpoints.
pub const TARGET_MS: f64 = 1000.0;
/// Issue 10's target for one endpoint added to a running node, p99.
pub const ADD_TARGET_MS: f64 = 50.0;
/// Loads per program for the verifier figure.
pub const PROG_LOADS: usize = 5;
/// How long a daemon may take to come up before the bench gives up.
const START_LIMIT: Duration = Duration::from_secs(120);

/// The environment variable naming the `sluice` binary to start (default: the `sluice`
/// beside this executable).
pub const SLUICE_EXE_ENV: &str = "SLUICE_EXE";

/// The `sluice` binary the part starts: `$SLUICE_EXE`, else `sluice` in this executable's
/// folder (`target/<profile>/`, where cargo puts both binaries), else in its parent (a test
/// binary runs from `target/<profile>/deps/`).
pub fn sluice_exe() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os(SLUICE_EXE_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|source| BenchError::Io { what: "locating the sluice executable".into(), source })?;
    let beside = exe.ancestors().skip(1).take(2).map(|dir| dir.join("sluice")).find(|p| p.is_file());
    beside.ok_or_else(|| BenchError::Io {
        what: format!(
            "locating the sluice executable beside {} (build it with `cargo build --release --workspace`, \
             or name it in ${SLUICE_EXE_ENV})",
            exe.display()
        ),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// The node file of the part: `n` endpoints on `lxc0..`, two policies.
pub fn node_file(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: bench-attach}\nspec:\n  endpoints:\n",
    );
    for i in 0..n {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        let _ = writeln!(
            s,
            "    - {{name: ep{i:03}, interface: lxc{i}, ipv4: 10.210.{}.{}, labels: {{app: ep{i}, tier: {tier}}}}}",
            i / 250,
            i % 250 + 1
        );
    }
    s.push_str(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: back-from-front}\nspec:\n  \
         endpointSelector: {matchLabels: {tier: back}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {tier: front}}]\n      \
         toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n\
         ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: dns}\nspec:\n  \
         endpointSelector: {}\n  ingress:\n    - toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n",
    );
    s
}

/// One daemon start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Start {
    /// From spawn to the socket existing, in ms.
    pub wall_ms: f64,
    /// The daemon's own split, from its `ready in` line.
    pub times: Option<StartTimes>,
}

/// Everything the part measured.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachResult {
    pub endpoints: usize,
    /// Per round and mechanism (`tcx`, `tc`): the fresh start, then the restart on the
    /// same pins.
    pub rounds: Vec<(&'static str, Start, Start)>,
    /// Per mechanism: endpoint additions to a running daemon, ms each ([`endpoint_adds`]).
    pub adds: Vec<(&'static str, Vec<f64>)>,
    /// `BPF_PROG_LOAD` wall time per load of `from_ep_1` and `to_ep_1`, in µs.
    pub prog_load_us: BTreeMap<String, Vec<u32>>,
    /// Instructions the verifier processed, per program (as loaded by the daemon).
    pub verified_insns: BTreeMap<String, u32>,
    /// Where the time goes: the kernel calls alone, one after another and from threads.
    pub split: Option<KernelSplit>,
    /// Setup: creating the namespace and the veth pairs, in ms.
    pub setup_ms: f64,
    pub exe: String,
}

/// The two kernel costs of a fresh start, measured alone on the loaded node's programs and
/// devices: creating every tcx link (one after another, then from [`THREADS`] threads at
/// once), the same hooks as `cls_bpf` filters through netlink, and loading
/// [`SPLIT_LOADS`] endpoint programs (one after another, then from two threads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelSplit {
    pub hooks: usize,
    pub attach_seq_ms: f64,
    /// The same, one after another with expedited grace periods (`None`: the switch could
    /// not be turned on, see [`sluice::node::wire::grace`]).
    pub attach_seq_expedited_ms: Option<f64>,
    pub attach_par_ms: f64,
    /// The same hooks as direct-action `cls_bpf` filters through netlink (clsact added
    /// per device), one after another.
    pub netlink_ms: f64,
    pub loads: usize,
    pub load_seq_ms: f64,
    pub load_par_ms: f64,
}

/// The daemon's `--attach` mechanisms, timed in turn: `tcx` with its default expedited
/// grace periods, `tcx-normal` (`--attach tcx --grace-periods normal`), `tc`.
pub const MECHANISMS: [&str; 3] = ["tcx", "tcx-normal", "tc"];

/// Threads of the parallel attach measurement.
pub const THREADS: usize = 16;
/// Programs loaded in the load measurement.
pub const SPLIT_LOADS: usize = 10;

/// The namespace, pins and files of the part; removed on drop.
struct Scene {
    ns: String,
    tmp: PathBuf,
    pin_dir: PathBuf,
}

impl Drop for Scene {
    fn drop(&mut self) {
        let pin_dir = self.pin_dir.clone();
        let _ = in_netns(&self.ns, move || {
            wire::down(&sys::kernel(), &pin_dir).map(|_| ()).map_err(|e| e.to_string())
        });
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Run `f` on a thread that entered the namespace `/run/netns/<ns>`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, BenchError> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|source| BenchError::Io { what: format!("open {path}"), source })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns changes only this thread.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
    .map_err(BenchError::Attach)
}

fn ip(args: &[&str]) -> Result<(), BenchError> {
    super::run_command(Command::new("ip").args(args), format!("ip {}", args.join(" "))).map(|_| ())
}

/// The namespace with `n` veth pairs, in one `ip -batch`.
fn build_scene(n: usize) -> Result<Scene, BenchError> {
    let pid = std::process::id();
    let scene = Scene {
        ns: format!("sluice-bench-{pid}"),
        tmp: std::env::temp_dir().join(format!("sluice-bench-attach-{pid}")),
        pin_dir: Path::new(sys::DEFAULT_BPFFS).join(format!("sluice_bench_attach_{pid}")),
    };
    let _ = Command::new("ip").args(["netns", "del", &scene.ns]).output();
    let _ = std::fs::remove_dir_all(&scene.pin_dir);
    std::fs::create_dir_all(&scene.tmp)
        .map_err(|source| BenchError::Io { what: format!("mkdir {}", scene.tmp.display()), source })?;
    ip(&["netns", "add", &scene.ns])?;
    let mut batch = String::new();
    // One spare pair: the endpoint the endpoint-add measurement adds and removes.
    for i in 0..=n {
        let _ = writeln!(batch, "link add lxc{i} type veth peer name lxp{i}");
        let _ = writeln!(batch, "link set lxc{i} up");
        let _ = writeln!(batch, "link set lxp{i} up");
    }
    let mut child = Command::new("ip")
        .args(["-n", &scene.ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            what: "creating veths".into(),
            cmd: "ip -batch -".into(),
            source,
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(batch.as_bytes())
        .map_err(|source| BenchError::Io { what: "writing to ip -batch".into(), source })?;
    let out = child
        .wait_with_output()
        .map_err(|source| BenchError::Io { what: "waiting for ip -batch".into(), source })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            what: format!("creating {n} veth pairs"),
            cmd: format!("ip -n {} -batch -", scene.ns),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(scene)
}

/// Start `sluice daemon` in the namespace, output to `log`.
fn spawn_daemon(exe: &Path, scene: &Scene, mech: &str, log: &Path) -> Result<Child, BenchError> {
    let path = format!("/run/netns/{}", scene.ns);
    let ns = File::open(&path).map_err(|source| BenchError::Io { what: format!("open {path}"), source })?;
    let out = File::create(log)
        .map_err(|source| BenchError::Io { what: format!("create {}", log.display()), source })?;
    let err = out.try_clone().map_err(|source| BenchError::Io { what: "dup log".into(), source })?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--config")
        .arg(scene.tmp.join("node.yaml"))
        .arg("--pin-dir")
        .arg(&scene.pin_dir)
        .arg("--socket")
        .arg(scene.tmp.join("sluice.sock"))
        .args(match mech {
            "tcx-normal" => vec!["--attach", "tcx", "--grace-periods", "normal"],
            other => vec!["--attach", other],
        })
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: between fork and exec the closure only calls setns(2), async-signal-safe;
    // `ns` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let line = format!("{} daemon ...", exe.display());
    cmd.spawn().map_err(|source| BenchError::Spawn {
        what: "starting sluice daemon".into(),
        cmd: line,
        source,
    })
}

/// Start a daemon and time it to its socket; check the hooks; stop it (SIGTERM).
fn timed_start(exe: &Path, scene: &Scene, n: usize, mech: &str, log: &Path) -> Result<Start, BenchError> {
    Ok(started(exe, scene, n, mech, log, |_| Ok(()))?.0)
}

/// Start a daemon, time it to its socket, run `during` on the running daemon, check the
/// hooks, stop it.
fn started<T>(
    exe: &Path,
    scene: &Scene,
    n: usize,
    mech: &str,
    log: &Path,
    during: impl FnOnce(&Path) -> Result<T, BenchError>,
) -> Result<(Start, T), BenchError> {
    let socket = scene.tmp.join("sluice.sock");
    let t = Instant::now();
    let mut child = spawn_daemon(exe, scene, mech, log)?;
    let failed = |why: String| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        BenchError::Attach(format!("{why}; daemon log:\n{text}"))
    };
    let wall_ms = loop {
        if socket.exists() {
            break t.elapsed().as_secs_f64() * 1e3;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!("the daemon exited ({status}) before attaching")));
        }
        if t.elapsed() > START_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("the daemon did not attach within {START_LIMIT:?}")));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let extra = during(&socket);
    let pin_dir = scene.pin_dir.clone();
    let checked = in_netns(&scene.ns, move || {
        let st = wire::status(&sys::kernel(), &pin_dir).map_err(|e| e.to_string())?;
        let good = st.attachments.iter().filter(|a| a.problem.is_none()).count();
        if good == 2 * n {
            Ok(())
        } else {
            Err(format!("{good} of {} hooks attached without a problem:\n{st}", 2 * n))
        }
    });
    // Our own child's pid, not yet reaped.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let extra = extra?;
    checked.map_err(|e| failed(e.to_string()))?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok((Start { wall_ms, times: text.lines().find_map(StartTimes::parse) }, extra))
}

/// Endpoint additions measured on a running daemon: [`ADDS`] times, the node file gains
/// endpoint `n` (on the spare veth) and the daemon is asked to apply it over its socket;
/// timed from the request to its answer, which comes once the new endpoint's hooks are
/// attached and its maps written (then it is removed again, untimed).
fn endpoint_adds(scene: &Scene, n: usize, socket: &Path) -> Result<Vec<f64>, BenchError> {
    let file = scene.tmp.join("node.yaml");
    let write = |k: usize| {
        std::fs::write(&file, node_file(k))
            .map_err(|source| BenchError::Io { what: "writing the node file".into(), source })
    };
    let apply = || -> Result<f64, BenchError> {
        let t = Instant::now();
        let answer = daemon_request(socket, "apply")?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !answer.starts_with("applied") {
            return Err(BenchError::Attach(format!("apply answered: {answer}")));
        }
        Ok(ms)
    };
    let mut out = Vec::new();
    for _ in 0..ADDS {
        write(n + 1)?;
        out.push(apply()?);
        write(n)?;
        apply()?;
    }
    Ok(out)
}

/// Endpoint additions timed per mechanism.
pub const ADDS: usize = 20;

/// One request line to a daemon's socket; its answer.
fn daemon_request(socket: &Path, line: &str) -> Result<String, BenchError> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let io = |what: &str, source| BenchError::Io { what: format!("{what} {}", socket.display()), source };
    let mut s = UnixStream::connect(socket).map_err(|e| io("connect", e))?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(|e| io("write", e))?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| io("shutdown", e))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| io("read", e))?;
    Ok(answer)
}

/// Per program, the µs of each load.
type LoadTimes = BTreeMap<String, Vec<u32>>;

/// Load `from_ep_1` and `to_ep_1` again against the pinned maps, timing each load.
fn prog_loads(
    sys: &Arc<dyn Syscall>,
    scene: &Scene,
    n: usize,
) -> Result<(LoadTimes, BTreeMap<String, u32>), BenchError> {
    let cfg = sluice::model::parse_str(&node_file(n), "bench-attach.yaml")
        .map_err(|e| BenchError::Attach(e.to_string()))?;
    let plan = sluice::node::plan(&cfg).map_err(|e| BenchError::Attach(e.to_string()))?;
    let mut times = BTreeMap::new();
    let mut insns = BTreeMap::new();
    for name in ["from_ep_1", "to_ep_1"] {
        let obj = plan.object(name).ok_or_else(|| BenchError::Attach(format!("no {name} in the plan")))?;
        let mut maps: BTreeMap<&'static str, Map> = BTreeMap::new();
        for def in &obj.maps {
            maps.insert(def.name, open_pinned_map(sys, &scene.pin_dir, def)?);
        }
        let mut v = Vec::new();
        for _ in 0..PROG_LOADS {
            let t = Instant::now();
            let prog = load_program(sys, obj, &maps)?;
            v.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            insns.insert(name.to_string(), prog.verified_insns());
        }
        times.insert(name.to_string(), v);
    }
    Ok((times, insns))
}

/// What [`attach_split`] measured, ms.
struct AttachSplit {
    seq: f64,
    seq_expedited: Option<f64>,
    par: f64,
    netlink: f64,
}

/// Create a tcx link for every hook of the loaded node (after the daemon's), one
/// after another (with normal, then expedited grace periods), then from [`THREADS`] threads; the links are dropped (detached) after
/// each pass. Runs inside the namespace.
fn attach_split(sys: &Arc<dyn Syscall>, pin_dir: &Path, n: usize) -> Result<AttachSplit, String> {
    use sluice::attach::{Direction, Interface, Link};
    let mut hooks = Vec::new();
    for i in 0..n {
        let iface = Interface::lookup(&format!("lxc{i}")).map_err(|e| e.to_string())?;
        // Each hook already runs its own program (a second copy would be EEXIST): the
        // other direction's program goes there instead; nothing sends traffic here.
        for (prog, dir) in [("to_ep", Direction::Ingress), ("from_ep", Direction::Egress)] {
            let path = pin_dir.join("programs").join(format!("{prog}_{}", i + 1));
            let p = sys::Program::from_pin(sys, &path).map_err(|e| e.to_string())?;
            hooks.push((p, iface.clone(), dir));
        }
    }
    let t = Instant::now();
    let mut links = Vec::new();
    for (p, iface, dir) in &hooks {
        links.push(Link::tcx(sys, p, iface.clone(), *dir).map_err(|e| e.to_string())?);
    }
    let seq = t.elapsed().as_secs_f64() * 1e3;
    drop(links);
    let t = Instant::now();
    let expedite =
        sluice::node::wire::grace::Expedite::begin(sluice::node::wire::grace::GracePeriods::Expedited);
    let mut links = Vec::new();
    for (p, iface, dir) in &hooks {
        links.push(Link::tcx(sys, p, iface.clone(), *dir).map_err(|e| e.to_string())?);
    }
    let seq_expedited = expedite.holds().then(|| t.elapsed().as_secs_f64() * 1e3);
    drop(links);
    drop(expedite);
    let t = Instant::now();
    let per = hooks.len().div_ceil(THREADS);
    let made: Vec<Result<Vec<Link>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = hooks
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(p, iface, dir)| {
                            Link::tcx(sys, p, iface.clone(), *dir).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<Link>, String>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let par = t.elapsed().as_secs_f64() * 1e3;
    for m in made {
        m?;
    }
    // Netlink: a clsact qdisc per device, then a filter per hook; the qdiscs (and their
    // filters) are deleted afterwards.
    use sluice::netlink::{Netlink, TcDirection};
    let nl = Netlink::open().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut devices = Vec::new();
    let mut failed = None;
    for (p, iface, dir) in &hooks {
        let ifindex = iface.index();
        if !devices.contains(&ifindex) {
            match nl.add_clsact(ifindex) {
                Ok(_) => devices.push(ifindex),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let tc = match dir {
            Direction::Ingress => TcDirection::Ingress,
            Direction::Egress => TcDirection::Egress,
        };
        if let Err(e) = nl.attach_bpf_filter(ifindex, tc, 1, 1, p.fd(), p.name()) {
            failed = Some(e.to_string());
            break;
        }
    }
    let netlink = t.elapsed().as_secs_f64() * 1e3;
    for ifindex in devices {
        let _ = nl.delete_clsact(ifindex);
    }
    match failed {
        Some(e) => Err(format!("cls_bpf through netlink: {e}")),
        None => Ok(AttachSplit { seq, seq_expedited, par, netlink }),
    }
}

/// Load `SPLIT_LOADS` copies of `from_ep_1` one after another, then from two threads.
fn load_split(sys: &Arc<dyn Syscall>, pin_dir: &Path, n: usize) -> Result<(f64, f64), BenchError> {
    let cfg = sluice::model::parse_str(&node_file(n), "bench-attach.yaml")
        .map_err(|e| BenchError::Attach(e.to_string()))?;
    let plan = sluice::node::plan(&cfg).map_err(|e| BenchError::Attach(e.to_string()))?;
    let obj =
        plan.object("from_ep_1").ok_or_else(|| BenchError::Attach("no from_ep_1 in the plan".into()))?;
    let mut maps: BTreeMap<&'static str, Map> = BTreeMap::new();
    for def in &obj.maps {
        maps.insert(def.name, open_pinned_map(sys, pin_dir, def)?);
    }
    let t = Instant::now();
    for _ in 0..SPLIT_LOADS {
        load_program(sys, obj, &maps)?;
    }
    let seq = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let maps = &maps;
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|k| {
                s.spawn(move || {
                    for _ in (k..SPLIT_LOADS).step_by(2) {
                        load_program(sys, obj, maps)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let par = t.elapsed().as_secs_f64() * 1e3;
    for r in results {
        r?;
    }
    Ok((seq, par))
}

/// Run the part.
pub fn measure(opts: &BenchOpts, sys: &Arc<dyn Syscall>) -> Result<AttachResult, BenchError> {
    let n = opts.attach_endpoints;
    if n == 0 || n > 4000 {
        return Err(BenchError::Options(format!("attach endpoints must be 1..=4000 (got {n})")));
    }
    super::require_tool("ip", "install iproute2")?;
    let exe = sluice_exe()?;
    let t = Instant::now();
    let scene = build_scene(n)?;
    let setup_ms = t.elapsed().as_secs_f64() * 1e3;
    std::fs::write(scene.tmp.join("node.yaml"), node_file(n))
        .map_err(|source| BenchError::Io { what: "writing the node file".into(), source })?;
    let mut rounds = Vec::new();
    let mut loads = None;
    let mut split = None;
    let mut adds = Vec::new();
    for r in 0..opts.rounds.max(1) {
        for mech in MECHANISMS {
            let fresh =
                timed_start(&exe, &scene, n, mech, &scene.tmp.join(format!("daemon-{r}-{mech}-fresh.log")))?;
            let log = scene.tmp.join(format!("daemon-{r}-{mech}-adopt.log"));
            let (adopt, added) = started(&exe, &scene, n, mech, &log, |socket| {
                if r == 0 {
                    endpoint_adds(&scene, n, socket).map(Some)
                } else {
                    Ok(None)
                }
            })?;
            rounds.push((mech, fresh, adopt));
            if let Some(a) = added {
                adds.push((mech, a));
            }
            if r + 1 == opts.rounds.max(1) && mech == "tcx" {
                loads = Some(prog_loads(sys, &scene, n)?);
                let (load_seq_ms, load_par_ms) = load_split(sys, &scene.pin_dir, n)?;
                let (pin_dir, sys2) = (scene.pin_dir.clone(), Arc::clone(sys));
                let AttachSplit {
                    seq: attach_seq_ms,
                    seq_expedited,
                    par: attach_par_ms,
                    netlink: netlink_ms,
                } = in_netns(&scene.ns, move || attach_split(&sys2, &pin_dir, n))?;
                split = Some(KernelSplit {
                    hooks: 2 * n,
                    attach_seq_ms,
                    attach_seq_expedited_ms: seq_expedited,
                    attach_par_ms,
                    netlink_ms,
                    loads: SPLIT_LOADS,
                    load_seq_ms,
                    load_par_ms,
                });
            }
            let pin_dir = scene.pin_dir.clone();
            in_netns(&scene.ns, move || {
                wire::down(&sys::kernel(), &pin_dir).map(|_| ()).map_err(|e| e.to_string())
            })?;
        }
    }
    let (prog_load_us, verified_insns) = loads.unwrap_or_default();
    Ok(AttachResult {
        endpoints: n,
        rounds,
        adds,
        prog_load_us,
        verified_insns,
        split,
        setup_ms,
        exe: exe.display().to_string(),
    })
}

fn med_ms(v: &[f64]) -> f64 {
    let us: Vec<u32> = v.iter().map(|ms| (ms * 1e3).round() as u32).collect();
    median(&us) / 1e3
}

impl AttachResult {
    /// The median fresh start with `mech`, ms.
    pub fn fresh_ms(&self, mech: &str) -> f64 {
        med_ms(&self.rounds.iter().filter(|r| r.0 == mech).map(|(_, f, _)| f.wall_ms).collect::<Vec<_>>())
    }

    /// The part's markdown section.
    pub fn render(&self, s: &mut String) {
        let n = self.endpoints;
        let _ = writeln!(s, "# sluice bench: daemon start to an attached node\n");
        let _ = writeln!(
            s,
            "- {n} endpoints ({} programs on {n} veth pairs, tcx ingress + egress each) in a fresh namespace; \
             `{}` started as `sluice daemon`, timed from spawn to its socket (bound right after attach); \
             then `status` must show {} hooks, none with a problem",
            2 * n,
            self.exe,
            2 * n
        );
        let _ = writeln!(s, "- setup (namespace, {n} veth pairs): {:.0} ms, not counted\n", self.setup_ms);
        let _ = writeln!(s, "| round | hooks | start | wall ms | plan ms | load/adopt ms | attach ms |");
        let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|");
        let cell = |t: Option<StartTimes>, f: fn(&StartTimes) -> Duration| {
            t.map_or("-".to_string(), |t| format!("{:.1}", f(&t).as_secs_f64() * 1e3))
        };
        for (i, (mech, fresh, adopt)) in self.rounds.iter().enumerate() {
            for (label, st) in [("fresh", fresh), ("restart (adopt)", adopt)] {
                let _ = writeln!(
                    s,
                    "| {} | {mech} | {label} | {:.1} | {} | {} | {} |",
                    i / MECHANISMS.len() + 1,
                    st.wall_ms,
                    cell(st.times, |t| t.plan),
                    cell(st.times, |t| t.load),
                    cell(st.times, |t| t.attach)
                );
            }
        }
        let _ = writeln!(s);
        for mech in MECHANISMS {
            let fresh = self.fresh_ms(mech);
            let adopt = med_ms(
                &self.rounds.iter().filter(|r| r.0 == mech).map(|(_, _, a)| a.wall_ms).collect::<Vec<_>>(),
            );
            let verdict = if fresh < TARGET_MS { "met" } else { "**not met**" };
            let _ = writeln!(
                s,
                "- `--attach {mech}`: median fresh start {fresh:.1} ms (target < {TARGET_MS:.0} ms for 100 endpoints: \
                 {verdict}); median restart on the pins {adopt:.1} ms"
            );
        }
        for (mech, v) in &self.adds {
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            let p99 = sorted.last().copied().unwrap_or(0.0);
            let verdict = if p99 < ADD_TARGET_MS { "met" } else { "**not met**" };
            let _ = writeln!(
                s,
                "- `--attach {mech}`: one endpoint added to the running daemon (apply request to answer, hooks \
                 attached and maps written), {} adds: median {:.1} ms, max (p99 of {}) {p99:.1} ms \
                 (target p99 < {ADD_TARGET_MS:.0} ms: {verdict})",
                v.len(),
                med_ms(v),
                v.len()
            );
        }
        for (name, v) in &self.prog_load_us {
            let insns = self.verified_insns.get(name).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "- `BPF_PROG_LOAD` of {name} (verifier included): median {:.2} ms over {} loads ({} insns processed); \
                 × {n} endpoints = {:.0} ms",
                median(v) / 1e3,
                v.len(),
                insns,
                median(v) / 1e3 * n as f64
            );
        }
        if let Some(k) = &self.split {
            let _ = writeln!(
                s,
                "- kernel calls alone: {} tcx link creations {:.0} ms one after another ({:.1} ms each), \
                 {} with expedited grace periods, \
                 {:.0} ms from {THREADS} threads; the same hooks as cls_bpf filters through netlink {:.0} ms; \
                 {} loads of from_ep_1 {:.0} ms one after another, {:.0} ms from 2 threads",
                k.hooks,
                k.attach_seq_ms,
                k.attach_seq_ms / k.hooks.max(1) as f64,
                k.attach_seq_expedited_ms.map_or("not measured (switch unavailable)".to_string(), |ms| format!(
                    "{ms:.0} ms ({:.2} ms each)",
                    ms / k.hooks.max(1) as f64
                )),
                k.attach_par_ms,
                k.netlink_ms,
                k.loads,
                k.load_seq_ms,
                k.load_par_ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_file_parses_and_plans_two_programs_per_endpoint() {
        for n in [1, 3, 100] {
            let cfg =
                sluice::model::parse_str(&node_file(n), "bench").unwrap_or_else(|e| panic!("n={n}: {e}"));
            assert_eq!(cfg.endpoints.len(), n);
            let plan = sluice::node::plan(&cfg).unwrap_or_else(|e| panic!("n={n}: {e}"));
            assert_eq!(
                plan.objects.len(),
                2 * n + 3,
                "prefilter, two shared programs and two stubs per endpoint"
            );
            assert_eq!(wire::wanted(&cfg, None).len(), 2 * n);
        }
    }
}
