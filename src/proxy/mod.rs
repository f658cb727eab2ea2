//! `sluice proxy`: the L7 (HTTP) policy proxy, its own process.
//!
//! Contract:
//! - Listens on one TCP address. In transparent mode (the datapath hands it connections with
//!   `bpf_sk_assign`) the listener has `IP_TRANSPARENT`, a connection's original destination is
//!   its accepted socket's local address, and upstream connections leave from the client's own
//!   address (`IP_TRANSPARENT` bind) carrying [`MARK_FROM_PROXY`] so the datapath knows them. In
//!   reverse mode (`--upstream ADDR`: tests, benchmarks) every connection goes to that address
//!   and is judged as if it had been sent there.
//! - Rules come from the node file the daemon applies: the proxy reads it at start and again
//!   whenever its modification time or size changes ([`RULES_POLL`]), without restarting; a
//!   file that fails to parse keeps the last good rules (the error is printed). Each request
//!   is judged by the rules current when its head arrived; a request already forwarded
//!   finishes under them.
//! - HTTP/1.1 (hyper): keep-alive, pipelining (answered in order), chunked and sized bodies
//!   streamed both ways, never buffered whole. A request is allowed when every gate of its
//!   connection allows it (`crate::l7::policy`); a connection with no gate passes everything.
//!   Denied: `403` with body `Access denied\r\n` (Cilium's), the request body read and
//!   discarded up to [`DENIED_BODY_DRAIN`] bytes so the connection stays usable (beyond it,
//!   the 403 closes the connection). Malformed requests get hyper's `400` and the connection
//!   closes; a head over [`Limits::max_head_bytes`] gets `431`; over
//!   [`Limits::max_headers`] headers, `431` too.
//! - Upstream: one HTTP/1.1 connection per client connection (so per source identity and
//!   destination), opened at the first allowed request and reopened after it fails; a failure
//!   gives the client `502`.
//! - Every request writes one access record (JSON, one line; buffered, written out every
//!   [`LOG_FLUSH`]) to the access log: source and
//!   destination with their endpoints and identities, method, URL, host, status, latency,
//!   verdict and the rule that decided (or the gate that denied).
//! - Hop-by-hop headers (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Upgrade`) are not forwarded; `Upgrade` passthrough is not offered.

pub mod io;
pub mod metrics;
pub mod records;
pub mod route;
pub mod supervise;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::l7::policy::{GateVerdict, L7Policy};
use crate::l7::rules;

use self::metrics::Metrics;

/// Mark on the proxy's upstream sockets: Cilium's "from proxy" magic (`MARK_MAGIC_PROXY_INGRESS`
/// 0x0A00), so the datapath does not redirect them again.
pub const MARK_FROM_PROXY: u32 = 0x0A00;

/// The proxy's transparent listener port (`sluice proxy --listen`'s default, `0.0.0.0:15001`):
/// the proxy port policy entries with L7 rules carry, both directions (`crate::policy::redirect`).
pub const LISTEN_PORT: u16 = 15001;

/// How often the node file is checked for changes.
pub const RULES_POLL: Duration = Duration::from_millis(200);

/// How often buffered access records are written out.
pub const LOG_FLUSH: Duration = Duration::from_millis(100);

/// Body bytes a denied request may carry and still keep its connection.
pub const DENIED_BODY_DRAIN: usize = 1 << 20;

/// Cilium's body for a denied request.
pub const DENIED_BODY: &str = "Access denied\r\n";

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers (hyper's read buffer; at least 8,192).
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// Time to receive a request head.
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_head_bytes: 64 * 1024, max_headers: 100, head_timeout: Duration::from_secs(30) }
    }
}

/// How `sluice proxy` runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// The node file with the policies.
    pub node_file: PathBuf,
    /// Reverse mode: every connection goes here. `None`: transparent mode.
    pub upstream: Option<SocketAddr>,
    /// Access records go here (appended); `None`: standard output.
    pub access_log: Option<PathBuf>,
    /// Metrics (Prometheus text) are rewritten here every second.
    pub metrics_file: Option<PathBuf>,
    /// Runtime worker threads.
    pub threads: usize,
    pub limits: Limits,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{path}: {source}")]
    Rules { path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("access log {path}: {source}")]
    AccessLog { path: String, source: std::io::Error },
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// The rules in force, swapped whole when the node file changes.
#[derive(Debug)]
struct Rules {
    current: RwLock<Arc<L7Policy>>,
}

impl Rules {
    fn get(&self) -> Arc<L7Policy> {
        // A poisoned lock still holds a complete Arc (the swap is one assignment).
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn load_rules(path: &Path) -> Result<L7Policy, ProxyError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| ProxyError::Rules {
        path: path.display().to_string(),
        source,
    };
    let cfg = crate::model::load_file(path).map_err(|e| err(Box::new(e)))?;
    L7Policy::new(cfg).map_err(|e| err(Box::new(e)))
}

/// (modification time, length) of the node file: what the watcher compares.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Shared {
    config: ProxyConfig,
    rules: Rules,
    metrics: Metrics,
    log: Mutex<Box<dyn std::io::Write + Send>>,
}

/// Runs the proxy until the process ends.
pub fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    let rules = Rules { current: RwLock::new(Arc::new(load_rules(&config.node_file)?)) };
    let log: Box<dyn std::io::Write + Send> = match &config.access_log {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ProxyError::AccessLog { path: path.display().to_string(), source })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    // One thread: a current-thread runtime (no hand-offs between a worker and the I/O driver).
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads).enable_all().build()
    }
    .map_err(ProxyError::Runtime)?;
    let shared = Arc::new(Shared { config, rules, metrics: Metrics::default(), log: Mutex::new(log) });
    runtime.block_on(serve(shared))
}

async fn serve(shared: Arc<Shared>) -> Result<(), ProxyError> {
    let listener = listen(shared.config.listen, shared.config.upstream.is_none())
        .map_err(|source| ProxyError::Listen { addr: shared.config.listen, source })?;
    eprintln!(
        "sluice proxy: listening on {} ({}), rules from {}",
        shared.config.listen,
        match shared.config.upstream {
            Some(up) => format!("reverse to {up}"),
            None => "transparent".to_owned(),
        },
        shared.config.node_file.display()
    );
    tokio::spawn(watch_rules(shared.clone()));
    tokio::spawn(flush_log(shared.clone()));
    if shared.config.metrics_file.is_some() {
        tokio::spawn(write_metrics(shared.clone()));
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory: wait a little instead of spinning.
                eprintln!("sluice proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.metrics.connection_opened();
            serve_connection(&shared, stream, peer).await;
            shared.metrics.connection_closed();
        });
    }
}

/// The listening socket; `IP_TRANSPARENT` in transparent mode so it accepts connections
/// addressed elsewhere.
fn listen(addr: SocketAddr, transparent: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if transparent {
        set_transparent(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

fn set_transparent(socket: &TcpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::IpTransparent, &true).map_err(std::io::Error::from)?;
    setsockopt(socket, sockopt::Mark, &MARK_FROM_PROXY).map_err(std::io::Error::from)
}

async fn watch_rules(shared: Arc<Shared>) {
    let path = shared.config.node_file.clone();
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(RULES_POLL).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let path2 = path.clone();
        match tokio::task::spawn_blocking(move || load_rules(&path2)).await {
            Ok(Ok(policy)) => {
                *shared.rules.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                shared.metrics.rules_reloaded();
                eprintln!("sluice proxy: rules reloaded from {}", path.display());
            }
            Ok(Err(e)) => eprintln!("sluice proxy: keeping the previous rules: {e}"),
            Err(e) => eprintln!("sluice proxy: keeping the previous rules: reload failed: {e}"),
        }
    }
}

/// Records are buffered (a write per request would cost a system call each) and flushed
/// every [`LOG_FLUSH`].
async fn flush_log(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(LOG_FLUSH).await;
        if let Ok(mut log) = shared.log.lock() {
            let _ = log.flush();
        }
    }
}

async fn write_metrics(shared: Arc<Shared>) {
    let Some(path) = shared.config.metrics_file.clone() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, shared.metrics.render()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// One client connection's state.
struct Conn {
    client: SocketAddr,
    /// Where the client meant to go.
    destination: SocketAddr,
    upstream: tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Incoming>>>,
}

type ProxyBody = Either<Incoming, Full<Bytes>>;

async fn serve_connection(shared: &Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let destination = match shared.config.upstream {
        Some(up) => up,
        None => match stream.local_addr() {
            Ok(addr) => addr,
            Err(_) => return,
        },
    };
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Conn { client, destination, upstream: tokio::sync::Mutex::new(None) });
    let limits = shared.config.limits;
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handle(&shared, &conn, req).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(io::Timer)
        .keep_alive(true)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.head_timeout);
    if let Err(e) = builder.serve_connection(io::Io(stream), service).await {
        if e.is_parse() || e.is_parse_too_large() {
            shared.metrics.malformed();
        }
    }
}

/// One request: judge, then forward or answer 403.
async fn handle(shared: &Shared, conn: &Conn, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // hyper bounds its read buffer, but a head that arrives in one read can pass it whole;
    // the limit is ours to state, so count it here too.
    let head_bytes = req.uri().to_string().len()
        + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
    if head_bytes > shared.config.limits.max_head_bytes {
        shared.metrics.malformed();
        let mut response = plain(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header too large\r\n");
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let policy = shared.rules.get();
    let headers: Vec<(&str, &[u8])> = req.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let view = rules::Request {
        method: req.method().as_str(),
        path: &target,
        host: host.as_deref(),
        headers: &headers,
    };
    let gates = policy.connection(conn.client.ip(), conn.destination.ip(), conn.destination.port());
    let mut verdict = Verdict::Allowed { rule: "no L7 rule".to_owned(), logged: Vec::new() };
    for gate in &gates {
        match gate.decide(&view) {
            GateVerdict::Allowed { rule, mut logged } => {
                if let Verdict::Allowed { rule: r, logged: l } = &mut verdict {
                    *r = format!("{}/{}: {rule}", gate.endpoint, gate.direction);
                    l.append(&mut logged);
                }
            }
            GateVerdict::Denied => {
                verdict = Verdict::Denied { gate: format!("{}/{}", gate.endpoint, gate.direction) };
                break;
            }
        }
    }
    drop(headers);
    let method = req.method().to_string();
    let response = match &verdict {
        Verdict::Denied { .. } => {
            shared.metrics.request(false);
            denied(req).await
        }
        Verdict::Allowed { .. } => {
            shared.metrics.request(true);
            match forward(shared, conn, req).await {
                Ok(response) => response,
                Err(e) => {
                    shared.metrics.upstream_error();
                    eprintln!("sluice proxy: upstream {}: {e}", conn.destination);
                    plain(StatusCode::BAD_GATEWAY, "Upstream connection failed\r\n")
                }
            }
        }
    };
    let latency = started.elapsed();
    shared.metrics.latency(latency);
    let line = AccessRecord {
        policy: &policy,
        client: conn.client,
        destination: conn.destination,
        method: &method,
        url: &target,
        host: host.as_deref(),
        status: response.status().as_u16(),
        latency,
        verdict: &verdict,
    }
    .to_json();
    if let Ok(mut log) = shared.log.lock() {
        let _ = writeln!(log, "{line}");
    }
    response
}

use std::io::Write as _;

#[derive(Debug)]
enum Verdict {
    Allowed { rule: String, logged: Vec<String> },
    Denied { gate: String },
}

fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The 403, after reading what the client sent with the request (bounded).
async fn denied(req: Request<Incoming>) -> Response<ProxyBody> {
    let mut body = req.into_body();
    let mut read = 0usize;
    let mut keep = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > DENIED_BODY_DRAIN {
                    keep = false;
                    break;
                }
            }
            Err(_) => {
                keep = false;
                break;
            }
        }
    }
    let mut response = plain(StatusCode::FORBIDDEN, DENIED_BODY);
    if !keep {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

async fn forward(
    shared: &Shared,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    for name in HOP_BY_HOP {
        req.headers_mut().remove(name);
    }
    let mut slot = conn.upstream.lock().await;
    let reusable = match slot.as_mut() {
        Some(sender) => sender.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        *slot = Some(connect_upstream(shared, conn).await?);
    }
    let sender = slot.as_mut().ok_or("no upstream connection")?;
    let mut response = sender.send_request(req).await?;
    // The client spoke HTTP/1.1 to us; an HTTP/1.0 upstream must not end its keep-alive.
    *response.version_mut() = hyper::Version::HTTP_11;
    for name in HOP_BY_HOP {
        response.headers_mut().remove(name);
    }
    Ok(response.map(Either::Left))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn connect_upstream(
    shared: &Shared,
    conn: &Conn,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, BoxError> {
    let dst = conn.destination;
    let socket = if dst.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if shared.config.upstream.is_none() {
        // Leave from the client's address so the server sees the real source.
        set_transparent(&socket)?;
        socket.bind(SocketAddr::new(conn.client.ip(), 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(dst))
        .await
        .map_err(|_| "connect timed out")??;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new().handshake(io::Io(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One access record.
struct AccessRecord<'a> {
    policy: &'a L7Policy,
    client: SocketAddr,
    destination: SocketAddr,
    method: &'a str,
    url: &'a str,
    host: Option<&'a str>,
    status: u16,
    latency: Duration,
    verdict: &'a Verdict,
}

impl AccessRecord<'_> {
    fn to_json(&self) -> String {
        let endpoint = |ip: IpAddr| self.policy.endpoint_of(ip).map(|e| e.name.clone()).unwrap_or_default();
        let (verdict, rule, logged) = match self.verdict {
            Verdict::Allowed { rule, logged } => ("FORWARDED", rule.as_str(), logged.as_slice()),
            Verdict::Denied { gate } => ("DENIED", gate.as_str(), &[][..]),
        };
        let logged: Vec<String> = logged.iter().map(|l| json_str(l)).collect();
        format!(
            "{{\"type\":\"l7\",\"protocol\":\"http\",\"source\":{},\"source_endpoint\":{},\"source_identity\":{},\
             \"destination\":{},\"destination_endpoint\":{},\"destination_identity\":{},\"method\":{},\"url\":{},\
             \"host\":{},\"status\":{},\"latency_us\":{},\"verdict\":\"{verdict}\",\"rule\":{},\"header_mismatches\":[{}]}}",
            json_str(&self.client.to_string()),
            json_str(&endpoint(self.client.ip())),
            self.policy.identity(self.client.ip()),
            json_str(&self.destination.to_string()),
            json_str(&endpoint(self.destination.ip())),
            self.policy.identity(self.destination.ip()),
            json_str(self.method),
            json_str(self.url),
            self.host.map_or("null".to_owned(), json_str),
            self.status,
            self.latency.as_micros(),
            json_str(rule),
            logged.join(","),
        )
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
