//! `sluice proxy` with real HTTP in a network namespace: curl and raw sockets as clients, a
//! hyper test server behind the proxy (reverse mode: every connection goes to the server and
//! is judged as if addressed to it, so the node's L7 rules apply by endpoint addresses).
//!
//! Each case states what Cilium's L7 policy does that it checks. The namespace, the proxy
//! process and the node file are removed on drop, also on panic.

#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::Netns;

const FRONTEND: &str = "10.77.0.2";
const BACKEND: &str = "10.77.0.3";
const OTHER: &str = "10.77.0.4";
const SERVER_PORT: u16 = 18080;
const PROXY_PORT: u16 = 15001;

/// The node: frontend, backend and other endpoints; `policies` appended.
fn node_file(policies: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: n}}
spec:
  endpoints:
    - {{name: frontend, interface: lxcf, ipv4: {FRONTEND}, labels: {{app: frontend}}}}
    - {{name: backend, interface: lxcb, ipv4: {BACKEND}, labels: {{app: backend}}}}
    - {{name: other, interface: lxco, ipv4: {OTHER}, labels: {{app: other}}}}
{policies}"
    )
}

/// Cilium's documented example: "allow GET requests to the URL /public" widened to the demo's
/// `/api/.*`, plus a PUT that needs `X-My-Header: true`, from the frontend only.
fn ingress_policy(get_path: &str) -> String {
    format!(
        "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: backend}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: '{SERVER_PORT}', protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: '{get_path}'}}
              - {{method: POST, path: '/api/upload'}}
              - {{method: PUT, path: '/api/.*', headers: ['X-My-Header: true']}}
              - {{method: GET, path: '/logged', headerMatches: [{{name: X-Token, value: s3, mismatch: LOG}}]}}
"
    )
}

const EGRESS_POLICY: &str = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {app: backend}}]
      toPorts:
        - ports: [{port: '18080'}]
          rules:
            http:
              - {method: GET, host: 'backend\\.shop(:[0-9]+)?'}
";

/// The lab: a namespace with the three endpoint addresses on `lo`, the test server, the proxy.
struct Lab {
    ns: Netns,
    dir: PathBuf,
    proxy: Option<Child>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The server thread dies with the namespace's sockets at process end; it is detached.
        drop(self.server.take());
    }
}

impl Lab {
    fn new(policies: &str) -> Lab {
        netns::remove_stale_namespaces("l7p");
        let ns = Netns::new(netns::unique("l7p"));
        for addr in [FRONTEND, BACKEND, OTHER] {
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        let dir = std::env::temp_dir().join(netns::unique("sluice-l7"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node.yaml"), node_file(policies)).unwrap();
        let mut lab = Lab { ns, dir, proxy: None, server: None };
        lab.server = Some(start_server(&lab.ns));
        lab.start_proxy();
        lab
    }

    fn node_path(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    /// The access log once it holds `records` lines (records are flushed every 100 ms).
    fn access_log(&self, records: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            if log.lines().count() >= records || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_proxy(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, env!("CARGO_BIN_EXE_sluice"), "proxy", "--config"])
            .arg(self.node_path())
            .args([
                "--listen",
                &format!("{BACKEND}:{PROXY_PORT}"),
                "--upstream",
                &format!("{BACKEND}:{SERVER_PORT}"),
            ])
            .arg("--access-log")
            .arg(self.dir.join("access.log"))
            .arg("--metrics-file")
            .arg(self.dir.join("metrics.prom"))
            .args(["--max-headers", "50"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("proxy.err")).unwrap())
            .spawn()
            .expect("spawn sluice proxy");
        self.proxy = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ns.enter(|| TcpStream::connect((BACKEND, PROXY_PORT)).is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "proxy did not listen: {}",
            std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
        );
    }

    /// curl from `source` inside the namespace: (status, body).
    fn curl(&self, source: &str, args: &[&str]) -> (u16, Vec<u8>) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "curl", "-s", "--max-time", "20", "--interface", source])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("runs curl");
        let mut body = out.stdout;
        let at = body.iter().rposition(|&b| b == b'\n').expect("curl printed the status");
        let status = std::str::from_utf8(&body[at + 1..]).unwrap().trim().parse().unwrap_or(0);
        body.truncate(at);
        (status, body)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{BACKEND}:{PROXY_PORT}{path}")
    }

    /// A raw connection from `source` to the proxy, in the namespace.
    fn connect(&self, source: &str) -> TcpStream {
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        let source: std::net::Ipv4Addr = source.parse().unwrap();
        self.ns.enter(|| {
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            bind(raw, &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0))).unwrap();
            let dst = std::net::SocketAddrV4::new(BACKEND.parse().unwrap(), PROXY_PORT);
            connect(raw, &SockaddrIn::from(dst)).unwrap();
            let stream = TcpStream::from(fd);
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream
        })
    }

    /// Waits until the proxy has reloaded its rules `n` times.
    fn wait_reloads(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let metrics = std::fs::read_to_string(self.dir.join("metrics.prom")).unwrap_or_default();
            let reloads = metrics
                .lines()
                .find_map(|l| l.strip_prefix("sluice_proxy_rule_reloads_total "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if reloads.is_some_and(|r| r >= n) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not reload its rules");
    }

    fn proxy_alive(&mut self) -> bool {
        self.proxy.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

fn gate(test: &str) -> bool {
    if !netns::gate(test) {
        return false;
    }
    if Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("SLUICE_REQUIRE_KERNEL").is_ok_and(|v| v.trim() == "1") {
        panic!("{test}: curl is not installed");
    }
    eprintln!("skip: {test}: curl is not installed");
    false
}

/// Sends `request` on `stream`.
fn send(stream: &mut TcpStream, request: &str) {
    stream.write_all(request.as_bytes()).unwrap();
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n")
}

/// Reads one response (status, body) from a raw connection; sized bodies only (the test
/// server and the proxy's own answers give Content-Length).
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(u16, Vec<u8>, bool)> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            let lower = head.to_ascii_lowercase();
            let len: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            let close = lower.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
            while pending.len() < end + 4 + len {
                let mut buf = [0u8; 65536];
                let n = stream.read(&mut buf).ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let body = pending[end + 4..end + 4 + len].to_vec();
            pending.drain(..end + 4 + len);
            return Some((status, body, close));
        }
        let mut buf = [0u8; 65536];
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// FNV-1a, 64 bits: the integrity check the server reports for a request body.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The bytes `GET /api/download?n=N` returns.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The test server: `/api/download?n=N` sends N pattern bytes (chunked); every other request
/// answers `METHOD TARGET len=N fnv=H` about its body.
fn start_server(ns: &Netns) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: `file` is an open namespace file; setns changes only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind((BACKEND, SERVER_PORT)).await.unwrap();
            tx.send(()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(serve);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(sluice::proxy::io::Io(stream), service)
                        .await;
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("test server listens");
    handle
}

type TestBody = http_body_util::Either<http_body_util::Full<bytes::Bytes>, Chunks>;

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<TestBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let target = req.uri().to_string();
    if let Some(n) = target.strip_prefix("/api/download?n=") {
        let n: usize = n.parse().unwrap_or(0);
        return Ok(hyper::Response::new(http_body_util::Either::Right(Chunks { data: pattern(n), at: 0 })));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = format!("{method} {target} len={} fnv={:x}", body.len(), fnv(&body));
    Ok(hyper::Response::new(http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::from(
        text,
    )))))
}

/// A body of unknown length (sent chunked), in 64 KiB frames.
struct Chunks {
    data: Vec<u8>,
    at: usize,
}

impl hyper::body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>> {
        if self.at >= self.data.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (self.at + 65536).min(self.data.len());
        let chunk = bytes::Bytes::copy_from_slice(&self.data[self.at..end]);
        self.at = end;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

/// (what, source, curl arguments, expected status, expected body or None)
type CurlCase = (&'static str, &'static str, Vec<String>, u16, Option<Vec<u8>>);

#[test]
fn ingress_rules_judge_each_request() {
    if !gate("ingress_rules_judge_each_request") {
        return;
    }
    let lab = Lab::new(&ingress_policy("/api/.*"));
    let denied = b"Access denied\r\n".to_vec();
    // (what, source, curl arguments, expected status, expected body or None)
    let cases: Vec<CurlCase> = vec![
        (
            "GET /api/.* is allowed",
            FRONTEND,
            vec![lab.url("/api/items")],
            200,
            Some(b"GET /api/items len=0 fnv=cbf29ce484222325".to_vec()),
        ),
        (
            "another path is denied with Cilium's 403 body",
            FRONTEND,
            vec![lab.url("/secret")],
            403,
            Some(denied.clone()),
        ),
        (
            "the path regex is anchored: /x/api/ is another path",
            FRONTEND,
            vec![lab.url("/x/api/items")],
            403,
            Some(denied.clone()),
        ),
        (
            "DELETE is not in the rules",
            FRONTEND,
            vec!["-X".into(), "DELETE".into(), lab.url("/api/items")],
            403,
            Some(denied.clone()),
        ),
        (
            "PUT needs X-My-Header: true",
            FRONTEND,
            vec!["-X".into(), "PUT".into(), lab.url("/api/items")],
            403,
            Some(denied.clone()),
        ),
        (
            "PUT with X-My-Header: true",
            FRONTEND,
            vec!["-X".into(), "PUT".into(), "-H".into(), "X-My-Header: true".into(), lab.url("/api/items")],
            200,
            None,
        ),
        (
            "PUT with another value",
            FRONTEND,
            vec!["-X".into(), "PUT".into(), "-H".into(), "X-My-Header: yes".into(), lab.url("/api/items")],
            403,
            None,
        ),
        ("LOG header match: a missing header still passes", FRONTEND, vec![lab.url("/logged")], 200, None),
        ("a peer no rule allows gets nothing", OTHER, vec![lab.url("/api/items")], 403, Some(denied.clone())),
    ];
    let mut failures = Vec::new();
    for (what, source, args, status, body) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got_status, got_body) = lab.curl(source, &args);
        if got_status != *status || body.as_ref().is_some_and(|b| *b != got_body) {
            failures.push(format!(
                "{what}: curl {args:?} from {source}: expected {status} {:?}, got {got_status} {:?}",
                body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                String::from_utf8_lossy(&got_body)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Large bodies both ways, chunked, checked byte for byte.
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(7) % 256) as u8).collect();
    let file = lab.dir.join("upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let data = format!("@{}", file.display());
    let (status, body) = lab.curl(
        FRONTEND,
        &["-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", &data, &lab.url("/api/upload")],
    );
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("POST /api/upload len={} fnv={:x}", upload.len(), fnv(&upload))
    );
    let n = 8_000_000;
    let (status, body) = lab.curl(FRONTEND, &[&lab.url(&format!("/api/download?n={n}"))]);
    assert_eq!(status, 200);
    assert!(
        body == pattern(n),
        "download: {} bytes, fnv {:x}; expected {n}, {:x}",
        body.len(),
        fnv(&body),
        fnv(&pattern(n))
    );

    // The access log: one record per request, with verdict, rule and identities.
    // Every curl case, the upload and the download.
    let log = lab.access_log(cases.len() + 2);
    let denied_secret =
        log.lines().find(|l| l.contains("\"url\":\"/secret\"")).expect("a record for /secret");
    for field in [
        "\"verdict\":\"DENIED\"",
        "\"status\":403",
        "\"rule\":\"backend/ingress\"",
        "\"source_endpoint\":\"frontend\"",
    ] {
        assert!(denied_secret.contains(field), "{field} missing in {denied_secret}");
    }
    let logged = log.lines().find(|l| l.contains("\"url\":\"/logged\"")).expect("a record for /logged");
    assert!(logged.contains("\"header_mismatches\":[\"X-Token: s3\"]"), "{logged}");
    let allowed =
        log.lines().find(|l| l.contains("\"url\":\"/api/items\"")).expect("a record for /api/items");
    assert!(allowed.contains("\"verdict\":\"FORWARDED\"") && allowed.contains("GET /api/.*"), "{allowed}");
}

#[test]
fn one_keep_alive_connection_carries_pipelined_mixed_verdicts() {
    if !gate("one_keep_alive_connection_carries_pipelined_mixed_verdicts") {
        return;
    }
    let lab = Lab::new(&ingress_policy("/api/.*"));
    let mut stream = lab.connect(FRONTEND);
    let body = "0123456789";
    // Five requests in one write: the proxy answers them in order. The denied DELETE carries a
    // body that must be read past for the next request to parse.
    let batch = [
        get("/api/a"),
        format!("DELETE /api/a HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        "POST /api/upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n".to_owned(),
        get("/secret"),
        get("/api/b"),
    ]
    .concat();
    send(&mut stream, &batch);
    let mut pending = Vec::new();
    let expected: [(u16, &[u8]); 5] = [
        (200, b"GET /api/a len=0 fnv=cbf29ce484222325"),
        (403, b"Access denied\r\n"),
        (200, format!("POST /api/upload len=10 fnv={:x}", fnv(body.as_bytes())).leak().as_bytes()),
        (403, b"Access denied\r\n"),
        (200, b"GET /api/b len=0 fnv=cbf29ce484222325"),
    ];
    for (i, (status, want)) in expected.iter().enumerate() {
        let (got, got_body, close) =
            read_response(&mut stream, &mut pending).unwrap_or_else(|| panic!("response {i} missing"));
        assert_eq!(
            (got, String::from_utf8_lossy(&got_body).into_owned(), close),
            (*status, String::from_utf8_lossy(want).into_owned(), false),
            "response {i}"
        );
    }
    // Still usable afterwards.
    send(&mut stream, &get("/api/c"));
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(200));
}

#[test]
fn malformed_oversized_and_abandoned_requests() {
    if !gate("malformed_oversized_and_abandoned_requests") {
        return;
    }
    let mut lab = Lab::new(&ingress_policy("/api/.*"));
    // Malformed: 400, then the connection closes.
    let mut stream = lab.connect(FRONTEND);
    send(&mut stream, "GARBAGE\r\n\r\n");
    let mut pending = Vec::new();
    let (status, _, _) = read_response(&mut stream, &mut pending).expect("an answer to a malformed request");
    assert_eq!(status, 400);
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).map(|_| rest.len()).ok(),
        Some(0),
        "the connection closes after 400"
    );

    // More headers than --max-headers 50: 431.
    let mut stream = lab.connect(FRONTEND);
    let headers: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
    send(&mut stream, &format!("GET /api/a HTTP/1.1\r\nHost: b\r\n{headers}\r\n"));
    let mut pending = Vec::new();
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(431));

    // A head over the 64 KiB limit: 431.
    let mut stream = lab.connect(FRONTEND);
    send(&mut stream, &format!("GET /api/a HTTP/1.1\r\nHost: b\r\nX-Big: {}\r\n\r\n", "a".repeat(80_000)));
    let mut pending = Vec::new();
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(431));

    // A client that closes mid-body: the proxy carries on serving others.
    let mut stream = lab.connect(FRONTEND);
    send(&mut stream, "POST /api/upload HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n\r\n0123456789");
    drop(stream);
    std::thread::sleep(Duration::from_millis(200));
    assert!(lab.proxy_alive(), "the proxy exited");
    assert_eq!(lab.curl(FRONTEND, &[&lab.url("/api/after")]).0, 200);
}

#[test]
fn policy_update_judges_the_next_request_on_a_keep_alive_connection() {
    if !gate("policy_update_judges_the_next_request_on_a_keep_alive_connection") {
        return;
    }
    let lab = Lab::new(&ingress_policy("/api/.*"));
    let mut stream = lab.connect(FRONTEND);
    let mut pending = Vec::new();
    send(&mut stream, &get("/api/a"));
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(200));
    // The daemon's node file changes: GET is now allowed on /v2/.* only.
    std::fs::write(lab.node_path(), node_file(&ingress_policy("/v2/.*"))).unwrap();
    lab.wait_reloads(1);
    send(&mut stream, &get("/api/a"));
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(403), "old rule still applied");
    send(&mut stream, &get("/v2/a"));
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(200), "new rule not applied");
    // A file that does not parse keeps the rules in force.
    std::fs::write(lab.node_path(), "kind: [").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    send(&mut stream, &get("/v2/b"));
    assert_eq!(read_response(&mut stream, &mut pending).map(|r| r.0), Some(200));
}

#[test]
fn egress_rules_judge_the_clients_requests() {
    if !gate("egress_rules_judge_the_clients_requests") {
        return;
    }
    let lab = Lab::new(EGRESS_POLICY);
    // (what, source, curl arguments, expected status)
    let cases: Vec<(&str, &str, Vec<String>, u16)> = vec![
        (
            "host regex matches, port optional",
            FRONTEND,
            vec!["-H".into(), "Host: backend.shop".into(), lab.url("/x")],
            200,
        ),
        (
            "host regex with a port",
            FRONTEND,
            vec!["-H".into(), "Host: backend.shop:18080".into(), lab.url("/x")],
            200,
        ),
        (
            "host regex is anchored",
            FRONTEND,
            vec!["-H".into(), "Host: evil.backend.shop".into(), lab.url("/x")],
            403,
        ),
        ("the address as host is another host", FRONTEND, vec![lab.url("/x")], 403),
        (
            "method GET only",
            FRONTEND,
            vec!["-X".into(), "DELETE".into(), "-H".into(), "Host: backend.shop".into(), lab.url("/x")],
            403,
        ),
        ("an endpoint without egress L7 rules is not judged", OTHER, vec![lab.url("/x")], 200),
    ];
    let mut failures = Vec::new();
    for (what, source, args, status) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, body) = lab.curl(source, &args);
        if got != *status {
            failures.push(format!(
                "{what}: curl {args:?} from {source}: expected {status}, got {got} {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
