//! `sluice bench --parts l7`: HTTP through `sluice proxy` against the same requests sent
//! directly and through HAProxy enforcing the same rules, in the same run.
//!
//! Contract:
//! - One network namespace with a client address and a server address on `lo`; the server
//!   is an HTTP/1.1 keep-alive server in this process (hyper, one thread) answering `ok`
//!   (2 bytes). The node file gives the server's endpoint an ingress rule
//!   `GET /api/.*` from every endpoint (`wrk` cannot pick its source address, so its
//!   connections come from the server's own; HAProxy does not look at the source either); HAProxy (`nbthread 1`) denies with 403 unless
//!   `method GET` and `path_reg ^/api/.*`; `sluice proxy --threads 1` runs in reverse mode.
//!   Every request is `GET /api/items` (allowed by both).
//! - Latency at a fixed rate: [`RATES`] requests per second spread over keep-alive
//!   connections, each sending on a fixed schedule; a request's latency runs from its
//!   scheduled time (so a stall is not hidden by sending later) to its response's last byte.
//!   p50 and p99 over [`LATENCY_SECONDS`]; "added" is the proxy's minus direct's.
//! - Maximum rate: `wrk -t1 -c50` for [`WRK_SECONDS`] (Debian's `wrk`); the proxies have one
//!   worker thread, so the figure is requests per second per proxy core.
//! - Memory: [`IDLE_CONNECTIONS`] connections that each made one request and stay open;
//!   the proxy's resident set (`VmRSS`) after, minus before.
//! - The machine is shared: figures are one run's, printed with the machine's core count.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

pub const PART_L7: &str = "l7";

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);
const SERVER_PORT: u16 = 18080;
const SLUICE_PORT: u16 = 15001;
const HAPROXY_PORT: u16 = 15002;
/// Fixed request rates for the latency rows, with the connections that carry them.
pub const RATES: [(u32, usize); 2] = [(1_000, 10), (10_000, 50)];
pub const LATENCY_SECONDS: f64 = 4.0;
pub const WRK_SECONDS: u32 = 5;
/// Idle connections for the memory row: 9,000, not the 10,000, because this machine's
/// descriptor limit is 20,000 and cannot be raised (the proxy holds a client and an upstream
/// socket per connection, and so does this process, which runs the server too).
pub const IDLE_CONNECTIONS: usize = 9_000;
const REQUEST: &[u8] = b"GET /api/items HTTP/1.1\r\nHost: backend\r\n\r\n";

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Options(format!("l7: {what}: {e}"))
}

/// The namespace, the server thread and the proxies; removed and stopped on drop.
struct Lab {
    ns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn enter(ns: &str) -> Result<(), BenchError> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| err(&path, e))?;
    // setns changes only the calling thread.
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| err("setns", std::io::Error::from(e)))
}

fn run_ip(args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new("ip").args(args).output().map_err(|e| err("ip", e))?;
    if !out.status.success() {
        return Err(err(&format!("ip {}", args.join(" ")), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn start_server(ns: String) -> Result<(), BenchError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ready = (|| {
            enter(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| err("runtime", e))?;
            let listener = rt
                .block_on(tokio::net::TcpListener::bind((SERVER, SERVER_PORT)))
                .map_err(|e| err("server bind", e))?;
            Ok::<_, BenchError>((rt, listener))
        })();
        match ready {
            Err(e) => {
                let _ = tx.send(Err(e));
            }
            Ok((rt, listener)) => {
                let _ = tx.send(Ok(()));
                rt.block_on(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(|_req| async {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                                ))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(sluice::proxy::io::Io(stream), service)
                                .await;
                        });
                    }
                });
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).map_err(|e| err("server start", e))?
}

fn node_file() -> String {
    format!(
        "apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: bench}}
spec:
  endpoints:
    - {{name: client, interface: lxcc, ipv4: {CLIENT}, labels: {{app: client}}}}
    - {{name: server, interface: lxcs, ipv4: {SERVER}, labels: {{app: server}}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - fromEndpoints: [{{}}]
      toPorts:
        - ports: [{{port: '{SERVER_PORT}', protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: '/api/.*'}}
"
    )
}

fn haproxy_config() -> String {
    format!(
        "global
    nbthread 1
    maxconn 9500
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend l7
    bind {SERVER}:{HAPROXY_PORT}
    http-request deny deny_status 403 unless {{ method GET }} {{ path_reg ^/api/.* }}
    default_backend server
backend server
    http-reuse always
    server s1 {SERVER}:{SERVER_PORT}
"
    )
}

fn wait_listening(ns: &str, port: u16) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let ns = ns.to_owned();
    std::thread::spawn(move || -> Result<(), BenchError> {
        enter(&ns)?;
        while Instant::now() < deadline {
            if TcpStream::connect((SERVER, port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err("proxy start", format!("nothing listens on port {port}")))
    })
    .join()
    .map_err(|_| err("wait", "thread panicked"))?
}

/// A keep-alive connection from the client address.
fn connect(port: u16) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    bind(raw, &SockaddrIn::from(SocketAddrV4::new(CLIENT, 0)))?;
    connect(raw, &SockaddrIn::from(SocketAddrV4::new(SERVER, port)))?;
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Sends one request and reads its (sized) response; the status.
fn round_trip(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    stream.write_all(REQUEST)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0));
            }
        }
    }
}

/// Latency percentiles (µs) at `rate` requests per second over `conns` connections.
fn fixed_rate(ns: &str, port: u16, rate: u32, conns: usize) -> Result<(f64, f64), BenchError> {
    let interval = Duration::from_secs_f64(conns as f64 / f64::from(rate));
    let count = (LATENCY_SECONDS / interval.as_secs_f64()) as usize;
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let ns = ns.to_owned();
            std::thread::spawn(move || -> Result<Vec<f64>, BenchError> {
                enter(&ns)?;
                let mut stream = connect(port).map_err(|e| err("connect", e))?;
                let mut buf = Vec::new();
                // Spread the connections' schedules over one interval.
                let start = Instant::now() + interval.mul_f64(i as f64 / conns as f64);
                let mut out = Vec::with_capacity(count);
                for k in 0..count {
                    let at = start + interval * u32::try_from(k).unwrap_or(u32::MAX);
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let status = round_trip(&mut stream, &mut buf).map_err(|e| err("request", e))?;
                    if status != 200 {
                        return Err(err("request", format!("status {status}")));
                    }
                    out.push(at.elapsed().as_secs_f64() * 1e6);
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| err("load", "thread panicked"))??);
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all.get(((all.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);
    Ok((pct(0.50), pct(0.99)))
}

fn wrk(ns: &str, port: u16) -> Result<f64, BenchError> {
    let url = format!("http://{SERVER}:{port}/api/items");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "wrk", "-t1", "-c50", &format!("-d{WRK_SECONDS}s"), &url])
        .output()
        .map_err(|e| err("wrk", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        return Err(err("wrk", format!("non-2xx responses:\n{text}")));
    }
    text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok()).ok_or_else(
        || err("wrk", format!("no Requests/sec in:\n{text}{}", String::from_utf8_lossy(&out.stderr))),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The proxy's resident set before and after [`IDLE_CONNECTIONS`] idle keep-alive
/// connections (each made one request), KiB.
fn idle_memory(ns: &str, port: u16, pid: u32) -> Result<(u64, u64), BenchError> {
    let before = rss_kib(pid);
    let ns = ns.to_owned();
    let streams = std::thread::spawn(move || -> Result<Vec<TcpStream>, BenchError> {
        enter(&ns)?;
        let mut streams = Vec::with_capacity(IDLE_CONNECTIONS);
        let mut buf = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            let mut s = connect(port).map_err(|e| err("idle connect", e))?;
            round_trip(&mut s, &mut buf).map_err(|e| err("idle request", e))?;
            streams.push(s);
        }
        Ok(streams)
    })
    .join()
    .map_err(|_| err("idle", "thread panicked"))??;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    drop(streams);
    Ok((before, after))
}

/// One way's figures.
#[derive(Debug, Clone, Default)]
struct Way {
    name: &'static str,
    latency: Vec<(f64, f64)>,
    max_rps: f64,
    rss: Option<(u64, u64)>,
}

/// Runs the part; its markdown section.
pub fn run() -> Result<String, BenchError> {
    for tool in ["wrk", "haproxy", "ip"] {
        if Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            return Err(BenchError::MissingTool { tool: "wrk/haproxy", hint: "apt-get install wrk haproxy" });
        }
    }
    let ns = format!("sluice-l7b-{}", std::process::id());
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).map_err(|e| err("temp dir", e))?;
    run_ip(&["netns", "add", &ns])?;
    let mut lab = Lab { ns: ns.clone(), dir: dir.clone(), children: Vec::new() };
    run_ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    for addr in [CLIENT, SERVER] {
        run_ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
    }
    start_server(ns.clone())?;
    std::fs::write(dir.join("node.yaml"), node_file()).map_err(|e| err("node file", e))?;
    std::fs::write(dir.join("haproxy.cfg"), haproxy_config()).map_err(|e| err("haproxy config", e))?;
    let exe = super::attach::sluice_exe()?;
    let sluice = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&exe)
        .args(["proxy", "--threads", "1", "--config"])
        .arg(dir.join("node.yaml"))
        .args([
            "--listen",
            &format!("{SERVER}:{SLUICE_PORT}"),
            "--upstream",
            &format!("{SERVER}:{SERVER_PORT}"),
        ])
        .arg("--access-log")
        .arg("/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err("sluice proxy", e))?;
    lab.children.push(sluice);
    let haproxy = Command::new("ip")
        .args(["netns", "exec", &ns, "haproxy", "-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err("haproxy", e))?;
    lab.children.push(haproxy);
    wait_listening(&ns, SLUICE_PORT)?;
    wait_listening(&ns, HAPROXY_PORT)?;
    // `ip netns exec` execs the program, so the child's pid is the proxy's.
    let pids = [lab.children[0].id(), lab.children[1].id()];

    let mut ways = vec![
        Way { name: "direct (no proxy)", ..Way::default() },
        Way { name: "sluice proxy (1 thread)", ..Way::default() },
        Way { name: "HAProxy 2.6 (nbthread 1)", ..Way::default() },
    ];
    let ports = [SERVER_PORT, SLUICE_PORT, HAPROXY_PORT];
    for (way, port) in ways.iter_mut().zip(ports) {
        for (rate, conns) in RATES {
            way.latency.push(fixed_rate(&ns, port, rate, conns)?);
        }
        way.max_rps = wrk(&ns, port)?;
    }
    for (i, pid) in pids.iter().enumerate() {
        ways[i + 1].rss = Some(idle_memory(&ns, ports[i + 1], *pid)?);
    }
    drop(lab);
    Ok(render(&ways))
}

fn render(ways: &[Way]) -> String {
    use std::fmt::Write as _;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## L7: HTTP through sluice proxy, direct and HAProxy (same run, {cores} cores shared)\n\n\
         `GET /api/items`, 2-byte answers, keep-alive, one namespace on `lo`; rules: GET `/api/.*` only.\n"
    );
    let _ = writeln!(
        out,
        "| way | p50 @1k/s µs | p99 @1k/s µs | p50 @10k/s µs | p99 @10k/s µs | added p50/p99 @1k/s µs | added p50/p99 @10k/s µs | max req/s (wrk -t1 -c50) | RSS idle before -> {IDLE_CONNECTIONS} idle conns |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let direct = &ways[0];
    for way in ways {
        let added = |i: usize| {
            if std::ptr::eq(way, direct) {
                "-".to_owned()
            } else {
                format!(
                    "{:.0} / {:.0}",
                    way.latency[i].0 - direct.latency[i].0,
                    way.latency[i].1 - direct.latency[i].1
                )
            }
        };
        let rss = way.rss.map_or("-".to_owned(), |(b, a)| {
            format!("{:.1} MiB -> {:.1} MiB", b as f64 / 1024.0, a as f64 / 1024.0)
        });
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} | {} |",
            way.name,
            way.latency[0].0,
            way.latency[0].1,
            way.latency[1].0,
            way.latency[1].1,
            added(0),
            added(1),
            way.max_rps,
            rss
        );
    }
    out
}
