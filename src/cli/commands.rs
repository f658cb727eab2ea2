//! The subcommands' bodies.

use super::{Command, PolicyOp, PrefilterOp, ServiceOp};
use crate::maps::names;
use crate::maps::prefilter::{DenySet, Prefix, Reason};
use crate::model::{self, Cidr, ModelError};
use crate::node::load::{self, LoadError};
use crate::node::lock::{self, LockError, NodeLock, Wait};
use crate::node::sim::{SimError, SimNode};
use crate::node::{self, replay, Plan};
use crate::{golden, sys};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use thiserror::Error;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Codegen(#[from] crate::codegen::CodegenError),
    #[error(transparent)]
    Plan(#[from] crate::node::PlanError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Elf(#[from] crate::elf::ElfError),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{text}`: {source}")]
    Cidr {
        text: String,
        #[source]
        source: crate::model::CidrError,
    },
    #[error("{0}")]
    Replay(String),
    #[error("{0}")]
    Bench(String),
    #[error("sluice service: {0}")]
    Service(String),
    #[error("{0}")]
    Monitor(String),
    #[error("sluice policy explain: {0}")]
    Explain(String),
    #[error("sluice encrypt: {0}")]
    Encrypt(String),
    #[error(transparent)]
    Wire(#[from] crate::node::wire::WireError),
    #[error(transparent)]
    Forward(#[from] crate::node::forward::ForwardError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("sluice proxy: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(transparent)]
    Reshape(#[from] crate::node::reshape::ReshapeError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0} needs root (bpf() and bpffs): {1}")]
    NeedsKernel(&'static str, String),
    #[error("--xdp-device {device} is endpoint {endpoint}'s interface: the prefilter goes on the node's outside device")]
    XdpOnEndpoint { device: String, endpoint: String },
}

type Result<T> = std::result::Result<T, CliError>;

/// Lock the node at `pin_dir` for a change (see [`crate::node::lock`]); `None` when
/// nothing is pinned there.
fn lock_node(pin_dir: &Path, wait: Wait) -> Result<Option<NodeLock>> {
    Ok(lock::acquire(pin_dir, wait, |msg| eprintln!("sluice: {msg}"))?)
}

/// Run one command; `wait` says what a change does when another holds the node's lock.
pub fn run(cmd: Command, wait: Wait) -> Result<ExitCode> {
    match cmd {
        Command::Demo { cluster: false, .. } => demo(),
        Command::Demo { cluster: true, lease_ttl } => Ok(crate::demo::cluster::main(lease_ttl)),
        Command::Compile { node, out } => compile(&node, out.as_deref()),
        Command::Sim { node, pcap, quiet, prefilter_only: true, .. } => sim(&node, &pcap, quiet),
        Command::Sim { node, pcap, quiet, json, kernel, .. } => {
            super::node_sim::sim_node(&node, &pcap, quiet, json, kernel)
        }
        Command::Policy { op: PolicyOp::Explain { node, from, to, proto, port, json } } => {
            super::policy::explain_cmd(&node, &from, &to, proto, port, json)
        }
        Command::Load { node, pin_dir } => load_cmd(&node, &pin_dir, wait),
        Command::Unload { pin_dir } => {
            kernel("sluice unload")?;
            let _lock = lock_node(&pin_dir, wait)?;
            let removed = load::unload(&sys::kernel(), &pin_dir)?;
            println!("unloaded {}: {} pins removed", pin_dir.display(), removed.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Prefilter { op, pin_dir } => prefilter(op, &pin_dir, wait),
        Command::Encrypt { op } => {
            let dir = crate::encrypt::state_dir();
            let key = match op {
                super::EncryptOp::Rotate => crate::encrypt::keys::NodeKey::rotate(&dir),
                super::EncryptOp::Show => crate::encrypt::keys::NodeKey::load_or_create(&dir),
            }
            .map_err(|e| CliError::Encrypt(e.to_string()))?;
            println!("{}", key.public_base64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { op: ServiceOp::List { config }, pin_dir } => {
            let sys = kernel("sluice service list")?;
            let services = match config {
                Some(path) => crate::model::load_file(&path)?.services,
                None => Vec::new(),
            };
            let table = crate::node::services::list(&sys, &pin_dir, &services)
                .map_err(|e| CliError::Service(e.to_string()))?;
            print!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor { json, count, l7: Some(log), .. } => {
            crate::proxy::records::follow(
                &log,
                json,
                count,
                &mut std::io::stdout().lock(),
                &AtomicBool::new(false),
            )
            .map_err(|e| CliError::Monitor(format!("{}: {e}", log.display())))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Monitor { json, count, pin_dir, l7: None, config } => {
            let sys = kernel("sluice monitor")?;
            let annotate = super::policy::drop_annotator(config.as_deref())?;
            crate::monitor::run_annotated(
                &sys,
                &pin_dir,
                json,
                count,
                &mut std::io::stdout().lock(),
                &*annotate,
            )
            .map_err(|e| CliError::Monitor(e.to_string()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { state, rate, pin_dir } => {
            let sys = kernel("sluice events")?;
            let _lock = lock_node(&pin_dir, wait)?;
            let flags = if state == "on" { crate::monitor::EVENTS_ALL } else { 0 };
            crate::monitor::set_events(&sys, &pin_dir, flags, rate)
                .map_err(|e| CliError::Monitor(e.to_string()))?;
            println!("events {state} (at most {rate} per second per CPU)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach { node, pin_dir, xdp_device, attach, grace_periods } => {
            let _lock = lock_node(&pin_dir, wait)?;
            attach_cmd(&node, &pin_dir, attach.options(xdp_device, grace_periods))
        }
        Command::Status { pin_dir } => {
            let sys = kernel("sluice status")?;
            let st = crate::node::wire::status(&sys, &pin_dir)?;
            print!("{st}");
            if st.problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("sluice: {}: inconsistent: {}", pin_dir.display(), st.problems.join("; "));
                Ok(ExitCode::from(1))
            }
        }
        Command::Daemon { config, pin_dir, socket, poll_ms, attach, grace_periods, etcd, lease_ttl } => {
            daemon(config, pin_dir, socket, poll_ms, attach.options(None, grace_periods), (etcd, lease_ttl))
        }
        Command::Proxy {
            config,
            listen,
            upstream,
            access_log,
            metrics_file,
            threads,
            max_headers,
            max_head_bytes,
        } => {
            let limits =
                crate::proxy::Limits { max_headers, max_head_bytes, ..crate::proxy::Limits::default() };
            let cfg = crate::proxy::ProxyConfig {
                listen,
                node_file: config,
                upstream,
                access_log,
                metrics_file,
                threads,
                limits,
            };
            crate::proxy::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { pin_dir } => {
            let sys = kernel("sluice down")?;
            let _lock = lock_node(&pin_dir, wait)?;
            println!("{}", crate::node::wire::down(&sys, &pin_dir)?);
            // The L7 redirect's policy routing (installed by the daemon for L7 rules).
            if let Err(e) = crate::proxy::route::remove() {
                eprintln!("sluice down: the to-proxy route: {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { args } => bench(&args),
    }
}

/// The benchmark binary, built from the `sluice-bench` crate (`src/bench/`).
const BENCH_EXE: &str = "sluice-bench";

/// `sluice bench ARGS`: replace this process with `sluice-bench ARGS` from this executable's
/// folder (cargo builds both into `target/<profile>/`). The benchmarks are a crate of their
/// own so that the library does not carry their tool plumbing (python3, clang, bpftool).
fn bench(args: &[std::ffi::OsString]) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().map_err(|source| CliError::Io { path: "sluice".into(), source })?;
    let bench = exe.with_file_name(BENCH_EXE);
    if !bench.is_file() {
        let release = exe.parent().and_then(Path::file_name).is_some_and(|d| d == "release");
        return Err(CliError::Bench(format!(
            "sluice bench runs `{}`, which is not there: build it with `cargo build{} -p sluice-bench`",
            bench.display(),
            if release { " --release" } else { "" }
        )));
    }
    // `exec` returns only when it failed.
    let source = std::process::Command::new(&bench).args(args).exec();
    Err(CliError::Io { path: bench, source })
}

fn kernel(what: &'static str) -> Result<std::sync::Arc<dyn sys::Syscall>> {
    sys::kernel_available().map_err(|why| CliError::NeedsKernel(what, why))?;
    Ok(sys::kernel())
}

fn plan_file(path: &Path) -> Result<Plan> {
    let cfg = model::load_file(path)?;
    Ok(node::plan(&cfg)?)
}

fn compile(path: &Path, out: Option<&Path>) -> Result<ExitCode> {
    let plan = plan_file(path)?;
    match out {
        None => {
            for obj in &plan.objects {
                println!("; program {} ({}), {} instructions", obj.name, obj.kind, obj.program.slots());
                print!("{}", sluice_asm::text::listing(&obj.program));
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|source| CliError::Io { path: dir.to_path_buf(), source })?;
            for obj in &plan.objects {
                let bytes = crate::elf::write_object(obj)?;
                let file = dir.join(format!("{}.o", obj.name));
                std::fs::write(&file, bytes).map_err(|source| CliError::Io { path: file.clone(), source })?;
                println!("wrote {}", file.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns a progress line of `sluice sim` is padded to.
const PROGRESS_WIDTH: usize = 64;

fn sim(path: &Path, pcap: &Path, quiet: bool) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let plan = plan_file(path)?;
    let mut node = SimNode::new(&plan)?;
    let bytes = std::fs::read(pcap).map_err(|source| CliError::Io { path: pcap.to_path_buf(), source })?;
    let program = crate::codegen::prefilter::NAME;
    // Verdict lines go out in blocks, not one write per packet; a closed pipe (`| head`)
    // ends the printing, not the replay.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printing = !quiet;
    // Progress goes to stderr for a person watching it, unless the verdict lines already
    // scroll past on the same screen.
    let watched = std::io::stderr().is_terminal() && (quiet || !std::io::stdout().is_terminal());
    let mut progress = watched.then(replay::Progress::new);
    let summary = replay::replay(&mut node, program, &bytes, |v| {
        if printing && writeln!(out, "{v}").is_err() {
            printing = false;
        }
        // Each line overwrites the last (padded, so no tail of a longer one is left).
        if let Some(line) = progress.as_mut().and_then(replay::Progress::packet) {
            eprint!("\r{line:<PROGRESS_WIDTH$}");
        }
    });
    if let Some(p) = &progress {
        eprintln!("\r{:<PROGRESS_WIDTH$}", p.finish());
    }
    let _ = out.write_all(summary.as_ref().map(replay::describe).unwrap_or_default().as_bytes());
    let _ = out.flush();
    drop(out);
    match summary {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::Replay(format!("{}: {e}", pcap.display()))),
    }
}

fn load_cmd(path: &Path, pin_dir: &Path, wait: Wait) -> Result<ExitCode> {
    let cfg = model::load_file(path)?;
    for warning in model::warnings(&cfg) {
        eprintln!("warning: {warning}");
    }
    let sys = kernel("sluice load")?;
    let _lock = lock::acquire_creating(pin_dir, wait, |msg| eprintln!("sluice: {msg}"))?;
    // A loaded node keeps its endpoints' numbers (read under the lock).
    let cfg = node::with_pinned_numbering(cfg, pin_dir);
    let plan = node::plan(&cfg)?;
    let loaded = match load::load_and_pin(&sys, &plan, pin_dir) {
        Err(LoadError::AlreadyLoaded(_)) => {
            // The file replaces the deny set: say which live `prefilter add|del` it undoes.
            let live = crate::daemon::live_prefilter(&sys, &cfg, pin_dir);
            let report_live = || {
                if !live.is_empty() {
                    println!("{}: {live}", pin_dir.display());
                }
            };
            let u = match crate::node::update::update_pinned(&sys, &cfg, &plan, pin_dir) {
                Err(LoadError::CodeShape { .. }) => {
                    let code = reshape_cmd(&sys, &cfg, &plan, pin_dir)?;
                    report_live();
                    return Ok(code);
                }
                other => other?,
            };
            report_live();
            if u.total() == 0 {
                println!("{}: already up to date", pin_dir.display());
            } else {
                println!("{}: updated in place, no program reloaded:", pin_dir.display());
                for (map, n) in &u.writes {
                    println!("  map {map}: {n} element writes");
                }
                for r in &u.revoked {
                    println!(
                        "  revoked: {} {:?} {}:{} -> {}:{} proto {}",
                        r.endpoint, r.direction, r.src, r.sport, r.dst, r.dport, r.proto
                    );
                }
                for w in &u.warnings {
                    eprintln!("sluice: warning: {w}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        other => other?,
    };
    for (name, prog) in &loaded.programs {
        let s = prog.stats();
        println!(
            "program {name}: id {}, {} insns xlated, {} bytes jited, {} insns verified; pinned at {}",
            prog.id(),
            s.xlated_prog_len / 8,
            s.jited_prog_len,
            s.verified_insns,
            pin_dir.join("programs").join(name).display()
        );
    }
    for (name, map) in &loaded.maps {
        println!(
            "map {name}: {} entries max; pinned at {}",
            map.max_entries(),
            pin_dir.join("maps").join(name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice load` of a node whose program set changed: [`crate::node::reshape`]; the hooks
/// follow when the node is attached (it has link pins).
fn reshape_cmd(
    sys: &std::sync::Arc<dyn sys::Syscall>,
    cfg: &model::NodeConfig,
    plan: &Plan,
    pin_dir: &Path,
) -> Result<ExitCode> {
    let attached = std::fs::read_dir(pin_dir.join(crate::node::wire::LINKS_DIR))
        .is_ok_and(|mut entries| entries.next().is_some());
    let opts = crate::node::wire::AttachOptions::default();
    let r = crate::node::reshape::reshape(sys, cfg, plan, pin_dir, attached.then_some(&opts))?;
    println!("{}: code shape changed, programs swapped: {r}", pin_dir.display());
    Ok(ExitCode::SUCCESS)
}

fn daemon(
    config: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    poll_ms: u64,
    attach: crate::node::wire::AttachOptions,
    (etcd, lease_ttl): (Vec<String>, i64),
) -> Result<ExitCode> {
    let poll = std::time::Duration::from_millis(poll_ms.max(1));
    let opts = crate::daemon::Options { config, pin_dir, socket, poll, attach };
    let cluster = crate::daemon::ClusterOptions { etcd, lease_ttl };
    crate::daemon::signals::install();
    crate::daemon::run_in_cluster(&opts, &cluster, &crate::daemon::signals::STOP)?;
    Ok(ExitCode::SUCCESS)
}

fn attach_cmd(path: &Path, pin_dir: &Path, opts: crate::node::wire::AttachOptions) -> Result<ExitCode> {
    let cfg = node::with_pinned_numbering(model::load_file(path)?, pin_dir);
    if let Some(e) = opts.xdp_device.as_ref().and_then(|d| cfg.endpoints.iter().find(|e| e.interface == *d)) {
        return Err(CliError::XdpOnEndpoint { device: e.interface.clone(), endpoint: e.name.clone() });
    }
    let sys = kernel("sluice attach")?;
    println!("{}", crate::node::wire::attach(&sys, &cfg, pin_dir, &opts)?);
    println!("{}", crate::node::forward::sync(&sys, &cfg, pin_dir)?);
    println!(
        "{}",
        crate::node::socklb::sync(&sys, &cfg, pin_dir).map_err(|e| CliError::Service(e.to_string()))?
    );
    println!(
        "{}",
        crate::node::socklayer::sync(&sys, &cfg, pin_dir).map_err(|e| CliError::Service(e.to_string()))?
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_cidrs(texts: &[String]) -> Result<Vec<Prefix>> {
    texts
        .iter()
        .map(|t| {
            t.parse::<Cidr>()
                .map(|c| node::prefix_of(&c))
                .map_err(|source| CliError::Cidr { text: t.clone(), source })
        })
        .collect()
}

fn prefilter(op: PrefilterOp, pin_dir: &Path, wait: Wait) -> Result<ExitCode> {
    let sys = kernel("sluice prefilter")?;
    let _lock = match op {
        PrefilterOp::Add { .. } | PrefilterOp::Del { .. } => lock_node(pin_dir, wait)?,
        PrefilterOp::List | PrefilterOp::Stats => None,
    };
    match op {
        PrefilterOp::Add { cidrs } => {
            let c = load::prefilter_change(&sys, pin_dir, &parse_cidrs(&cidrs)?, &[])?;
            println!(
                "added {} prefixes ({} already present); deny set now {}",
                c.added,
                cidrs.len() - c.added,
                c.total
            );
        }
        PrefilterOp::Del { cidrs } => {
            let c = load::prefilter_change(&sys, pin_dir, &[], &parse_cidrs(&cidrs)?)?;
            println!(
                "removed {} prefixes ({} not present); deny set now {}",
                c.removed,
                cidrs.len() - c.removed,
                c.total
            );
        }
        PrefilterOp::List => {
            let maps = load::open_prefilter(&sys, pin_dir)?;
            for p in load::prefilter_set(&maps)?.prefixes() {
                println!("{}", node::cidr_of(p));
            }
        }
        PrefilterOp::Stats => {
            let maps = load::open_prefilter(&sys, pin_dir)?;
            for r in Reason::ALL {
                let per_cpu =
                    maps[names::PF_STATS].lookup_percpu(&(r as u32).to_le_bytes())?.unwrap_or_default();
                let n: u64 =
                    per_cpu.iter().filter_map(|v| v.get(..8)?.try_into().ok()).map(u64::from_le_bytes).sum();
                println!("{:<20} {:>6} {n}", r.name(), if r.verdict() == 1 { "drop" } else { "pass" });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Probe frames for a deny set: for every prefix, its first address (denied) and the
/// address just below it (whatever the set says), plus frames no address decides.
fn demo_probes(set: &DenySet) -> Vec<golden::Case> {
    golden::probes::prefilter_probes(set)
}

fn demo() -> Result<ExitCode> {
    let cfg = model::default_node();
    println!(
        "sluice demo: node `{}` ({} deny prefixes), built-in default",
        cfg.name,
        cfg.prefilter.deny.len()
    );
    let plan = node::plan(&cfg)?;
    let mut sim_node = SimNode::new(&plan)?;
    for (name, s) in &sim_node.stats {
        println!("verifier-sim accepted {name}: {} instructions processed", s.processed_insns);
    }
    let set = DenySet::new(cfg.prefilter.deny.iter().map(node::prefix_of));
    let cases = demo_probes(&set);
    let kernel = match sys::kernel_available() {
        Ok(()) => {
            let loaded = load::load_plan(&sys::kernel(), &plan)?;
            for (name, p) in &loaded.programs {
                println!(
                    "kernel verifier accepted {name}: {} instructions processed",
                    p.stats().verified_insns
                );
            }
            Some(loaded)
        }
        Err(why) => {
            println!("kernel: not available ({why}); running the simulator only");
            None
        }
    };
    let verdict = |v: u32| match v {
        1 => "DROP",
        2 => "PASS",
        _ => "?",
    };
    let mut failures = 0;
    for case in &cases {
        let sim = golden::run_sim(&mut sim_node, case)?;
        let mut ok = golden::check(case, &sim).is_ok();
        let kern = match &kernel {
            Some(loaded) => match golden::run_kernel(loaded, case)? {
                Some(obs) => {
                    ok &= golden::check(case, &obs).is_ok() && obs == sim;
                    verdict(obs.verdict)
                }
                None => "n/a",
            },
            None => "-",
        };
        if !ok {
            failures += 1;
            println!(
                "MISMATCH {:<44} expected {} simulator {} kernel {}",
                case.name,
                verdict(case.verdict),
                verdict(sim.verdict),
                kern
            );
        }
    }
    println!(
        "\nprefilter: {} probe packets (every deny prefix's edges, VLAN, truncation) through simulator{}: {} mismatches",
        cases.len(),
        if kernel.is_some() { " and kernel" } else { "" },
        failures
    );
    failures += demo_policy(&cfg, &mut sim_node, kernel.as_ref())?;
    drop(kernel);
    failures += demo_flows(&cfg)?;
    if sys::kernel_available().is_ok() {
        // The same node with WireGuard to its peer (crate::demo::wireguard).
        failures += crate::demo::wireguard::demo_step(&mut std::io::stdout()).map_err(CliError::Replay)?;
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The node's flows with real traffic in namespaces (as root), or in the simulator.
fn demo_flows(cfg: &model::NodeConfig) -> Result<usize> {
    let err = |e: crate::demo::DemoError| CliError::Replay(e.to_string());
    let mut services = Vec::new();
    let mut accel = None;
    let mut l7: Option<crate::demo::l7::L7Report> = None;
    let rows = match sys::kernel_available() {
        Ok(()) => {
            println!("\nflows: the node built in network namespaces (endpoints, the world, an overlay peer), real traffic");
            crate::daemon::signals::install();
            let ((rows, svc, accel_row), l7_report) = crate::demo::run_kernel_demo(
                cfg,
                crate::model::DEFAULT_NODE_YAML,
                &crate::daemon::signals::STOP,
                &mut std::io::stdout(),
            )
            .map_err(err)?;
            l7 = l7_report;
            if crate::daemon::signals::STOP.load(std::sync::atomic::Ordering::Relaxed) {
                println!("interrupted: namespaces, programs and pins removed");
                return Ok(1);
            }
            services = svc;
            accel = accel_row;
            rows
        }
        Err(why) => {
            println!(
                "\nflows: not root ({why}): the same flows' packets through the programs in the simulator"
            );
            crate::demo::run_sim(cfg).map_err(err)?
        }
    };
    let bad = crate::demo::print_table(cfg, &rows, &mut std::io::stdout())
        .map_err(|e| CliError::Replay(e.to_string()))?;
    let svc_bad = crate::demo::services::print(&services, &mut std::io::stdout())
        .map_err(|e| CliError::Replay(e.to_string()))?;
    let accel_bad = accel.as_ref().map_or(0, |a: &crate::demo::accel::AccelRow| {
        println!("{a}");
        usize::from(!a.ok())
    });
    let l7_bad = l7.as_ref().map_or(0, |r| {
        print!("{r}");
        r.bad()
    });
    println!("flows: {} tried, {} as expected, {} not", rows.len(), rows.len() - bad, bad);
    if !services.is_empty() {
        let probed = services.iter().filter(|s| s.skipped.is_none()).count();
        println!("services: {probed} frontends probed, {} as expected, {svc_bad} not", probed - svc_bad);
    }
    Ok(bad + svc_bad + accel_bad + l7_bad)
}

/// Endpoint policy: a grid of flows between the endpoints, the host and outside peers,
/// judged by the compiled programs (simulator and kernel) and by the reference evaluator.
/// Prints one line per endpoint and direction; returns the number of disagreements.
fn demo_policy(
    cfg: &model::NodeConfig,
    sim_node: &mut SimNode,
    kernel: Option<&load::Loaded>,
) -> Result<usize> {
    use crate::policy::{oracle, Verdict};
    use std::collections::BTreeMap;
    if cfg.endpoints.is_empty() {
        return Ok(0);
    }
    let outside: Vec<std::net::IpAddr> =
        ["203.0.113.9", "198.51.100.20", "2001:db8::9"].iter().filter_map(|a| a.parse().ok()).collect();
    let mut sport = 10_000;
    let flows = golden::probes::policy_flows(cfg, &outside, &[22, 53, 80, 443, 5432, 8080, 8085], &mut sport);
    // (endpoint, direction) -> (flows, allowed, simulator disagreements, kernel disagreements)
    let mut rows: BTreeMap<(String, String), (usize, usize, usize, usize)> = BTreeMap::new();
    let mut examples = Vec::new();
    for f in &flows {
        let want = match oracle::decide(cfg, &f.endpoint, f.direction, &f.key) {
            Ok(Verdict::Allow) => 0u32,
            Ok(_) => 2,
            Err(e) => return Err(CliError::Replay(format!("the reference evaluator failed: {e}"))),
        };
        let frame = golden::probes::flow_frame(&f.key);
        let sim = sim_node.run(&f.program, &frame)?.retval as u32;
        let kern = match kernel.and_then(|l| l.programs.get(&f.program)) {
            Some(p) => Some(p.test_run(&sys::TestRunOpts::packet(&frame))?.retval),
            None => None,
        };
        let row = rows.entry((f.endpoint.clone(), format!("{:?}", f.direction).to_lowercase())).or_default();
        row.0 += 1;
        row.1 += usize::from(want == 0);
        row.2 += usize::from(sim != want);
        row.3 += usize::from(kern.is_some_and(|k| k != want));
        // A few examples: the first allowed and the first dropped flow of each endpoint.
        let seen =
            examples.iter().filter(|(ep, allowed, _)| *ep == f.endpoint && *allowed == (want == 0)).count();
        if seen == 0 && f.key.proto == 6 {
            examples.push((
                f.endpoint.clone(),
                want == 0,
                format!(
                    "  {:<8} {:<7} {} -> {} tcp/{}: expected {}, simulator {}, kernel {}",
                    f.endpoint,
                    format!("{:?}", f.direction).to_lowercase(),
                    f.key.src,
                    f.key.dst,
                    f.key.dport,
                    if want == 0 { "allow" } else { "drop" },
                    if sim == 0 { "allow" } else { "drop" },
                    kern.map_or("-", |k| if k == 0 { "allow" } else { "drop" }),
                ),
            ));
        }
    }
    println!("\nendpoint policy: {} flows (TCP, UDP, SCTP, ICMP; IPv4 and IPv6) judged by the compiled programs and by the reference evaluator", flows.len());
    println!(
        "{:<12} {:<9} {:>6} {:>8} {:>8} {:>14} {:>14}",
        "endpoint", "direction", "flows", "allowed", "dropped", "sim mismatches", "kernel mismatches"
    );
    let mut mismatches = 0;
    for ((ep, dir), (n, allowed, sim_bad, kern_bad)) in &rows {
        mismatches += sim_bad + kern_bad;
        let kern = if kernel.is_some() { kern_bad.to_string() } else { "-".into() };
        println!("{ep:<12} {dir:<9} {n:>6} {allowed:>8} {:>8} {sim_bad:>14} {kern:>14}", n - allowed);
    }
    let lines: Vec<&str> = examples.iter().map(|(_, _, line)| line.as_str()).collect();
    println!("examples:\n{}", lines.join("\n"));
    println!("\nendpoint policy: {} flows, {mismatches} mismatches", flows.len());
    Ok(mismatches)
}
