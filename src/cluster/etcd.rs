//! A small etcd v3 client over etcd's JSON gateway (HTTP/1.1, `/v3/...`).
//!
//! Contract:
//! - Speaks the gateway every etcd v3 server serves on its client URL (etcd 3.4+: `/v3/kv/range`,
//!   `/v3/kv/put`, `/v3/kv/deleterange`, `/v3/kv/txn`, `/v3/lease/grant`,
//!   `/v3/lease/keepalive`, `/v3/lease/revoke`, and the streaming `/v3/watch`). Keys and values
//!   travel base64-encoded; 64-bit numbers arrive as JSON strings (proto3 JSON mapping), and
//!   fields at their default value are left out, so every field of a response is optional.
//! - One TCP connection per request (`Connection: close`), tried against each endpoint in
//!   turn; every socket has a connect, read and write timeout ([`Client::timeout`]), so a dead
//!   or silent etcd is an error, never a hang. A watch is one long-lived connection whose
//!   reads time out every [`WATCH_POLL`], so its owner can stop it.
//! - Why not the `etcd-client` crate: it brings tonic, prost, hyper, tower and tokio and a
//!   `protoc` build step (about 100 more crates on a 2-core builder); sluice needs a dozen
//!   calls, all of which the gateway offers with `serde_json` and `std::net` alone. The price:
//!   no HTTP/2 multiplexing (one connection per call) and no TLS (loopback or a trusted
//!   underlay only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use thiserror::Error;

/// Keys per page of [`Client::list`].
pub const LIST_PAGE: usize = 5_000;

/// How long a watch read waits before its owner gets a chance to stop it.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// The largest response body read (a range over the whole cluster state fits).
const MAX_BODY: usize = 512 << 20;

/// Why an etcd call failed.
#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd endpoint `{0}` is not host:port or http://host:port")]
    BadEndpoint(String),
    #[error("no etcd endpoint answered {path}: {last}")]
    Unreachable { path: &'static str, last: String },
    #[error("etcd {path}: HTTP {status}: {body}")]
    Status { path: &'static str, status: u16, body: String },
    #[error("etcd {path}: malformed response: {why}")]
    Malformed { path: &'static str, why: String },
    #[error("etcd watch: {0}")]
    Watch(String),
    /// The watch start revision was compacted away: relist.
    #[error("etcd watch: revision compacted (oldest kept {compact_revision})")]
    Compacted { compact_revision: i64 },
    #[error("etcd lease {0:x} expired or unknown")]
    LeaseGone(i64),
}

/// A key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyValue {
    #[serde(deserialize_with = "b64", default)]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "b64", default)]
    pub value: Vec<u8>,
    #[serde(deserialize_with = "i64_text", default)]
    pub create_revision: i64,
    #[serde(deserialize_with = "i64_text", default)]
    pub mod_revision: i64,
    #[serde(deserialize_with = "i64_text", default)]
    pub lease: i64,
}

impl KeyValue {
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or("")
    }
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key (the value is empty).
    Delete(KeyValue),
}

/// A range answer as the gateway writes it (typed: decoded in one pass).
#[derive(Debug, Default, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(deserialize_with = "i64_text", default)]
    revision: i64,
}

/// The answer of a range: the pairs and the store's revision they were read at.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// A compare of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key does not exist (its create revision is 0).
    Absent(Vec<u8>),
    /// The key exists with exactly this value.
    ValueIs(Vec<u8>, Vec<u8>),
    /// The key's mod revision is this one.
    ModRevisionIs(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, lease: i64 },
    Get(Vec<u8>),
    Delete(Vec<u8>),
}

/// The answer of a transaction: whether the compares held, and the pairs its gets read.
#[derive(Debug, Clone, Default)]
pub struct TxnResult {
    pub succeeded: bool,
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// Counts of what this client sent, for the benchmark's "etcd operations per change".
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes_sent: std::sync::atomic::AtomicU64,
    pub bytes_received: std::sync::atomic::AtomicU64,
}

/// An etcd v3 client over the JSON gateway.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<(String, u16)>,
    pub timeout: Duration,
    pub counters: std::sync::Arc<Counters>,
}

impl Client {
    /// A client of the endpoints in `urls` (`http://host:port` or `host:port`, comma
    /// separated lists split by the caller).
    pub fn new(urls: &[String]) -> Result<Client, EtcdError> {
        let endpoints = urls
            .iter()
            .map(|u| {
                let hostport = u.trim().trim_start_matches("http://").trim_end_matches('/');
                let (host, port) =
                    hostport.rsplit_once(':').ok_or_else(|| EtcdError::BadEndpoint(u.clone()))?;
                let port = port.parse().map_err(|_| EtcdError::BadEndpoint(u.clone()))?;
                Ok((host.trim_matches(['[', ']']).to_owned(), port))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint(String::new()));
        }
        Ok(Client { endpoints, timeout: Duration::from_secs(5), counters: Default::default() })
    }

    fn connect(&self, timeout: Duration) -> Result<(TcpStream, String), String> {
        let mut last = String::from("no endpoint");
        for (host, port) in &self.endpoints {
            let addrs: Vec<SocketAddr> = match (host.as_str(), *port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = format!("{host}:{port}: {e}");
                    continue;
                }
            };
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(timeout));
                        let _ = s.set_write_timeout(Some(timeout));
                        let _ = s.set_nodelay(true);
                        return Ok((s, format!("{host}:{port}")));
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
        }
        Err(last)
    }

    /// POSTs `body` to `path` and returns the parsed JSON answer.
    fn call(&self, path: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let bytes = self.call_raw(path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::Malformed { path, why: e.to_string() })
    }

    /// POSTs `body` to `path` and returns the answer's bytes (status 200 checked).
    fn call_raw(&self, path: &'static str, body: &Value) -> Result<Vec<u8>, EtcdError> {
        use std::sync::atomic::Ordering::Relaxed;
        let body = body.to_string();
        let (mut stream, host) =
            self.connect(self.timeout).map_err(|last| EtcdError::Unreachable { path, last })?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.counters.requests.fetch_add(1, Relaxed);
        self.counters.bytes_sent.fetch_add(request.len() as u64, Relaxed);
        stream
            .write_all(request.as_bytes())
            .map_err(|e| EtcdError::Unreachable { path, last: format!("{host}: {e}") })?;
        let mut reader = BufReader::new(stream);
        let (status, chunked, length) = read_head(&mut reader)
            .map_err(|why| EtcdError::Unreachable { path, last: format!("{host}: {why}") })?;
        let bytes = if chunked {
            let mut out = Vec::new();
            while let Some(chunk) =
                read_chunk(&mut reader).map_err(|why| EtcdError::Malformed { path, why })?
            {
                out.extend_from_slice(&chunk);
                if out.len() > MAX_BODY {
                    return Err(EtcdError::Malformed { path, why: "body too large".into() });
                }
            }
            out
        } else if let Some(n) = length {
            if n > MAX_BODY {
                return Err(EtcdError::Malformed { path, why: format!("body of {n} bytes") });
            }
            let mut out = vec![0; n];
            reader.read_exact(&mut out).map_err(|e| EtcdError::Malformed { path, why: e.to_string() })?;
            out
        } else {
            let mut out = Vec::new();
            reader
                .take(MAX_BODY as u64)
                .read_to_end(&mut out)
                .map_err(|e| EtcdError::Malformed { path, why: e.to_string() })?;
            out
        };
        self.counters.bytes_received.fetch_add(bytes.len() as u64, Relaxed);
        if status != 200 {
            return Err(EtcdError::Status {
                path,
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    /// Every pair whose key starts with `prefix` (or only `prefix` itself when `exact`).
    pub fn range(&self, key: &[u8], prefix: bool) -> Result<Range, EtcdError> {
        let mut body = json!({ "key": b64_encode(key) });
        if prefix {
            body["range_end"] = json!(b64_encode(&prefix_end(key)));
        }
        let answer = self.call("/v3/kv/range", &body)?;
        let kvs = kvs_of(&answer, "/v3/kv/range")?;
        Ok(Range { kvs, revision: revision_of(&answer) })
    }

    /// Every pair under `prefix`, read in pages of [`LIST_PAGE`] at one revision (a page at a
    /// time keeps each answer small, so a big cluster's list never waits on one huge
    /// response; the pinned revision makes the pages one consistent snapshot).
    pub fn list(&self, prefix: &[u8]) -> Result<Range, EtcdError> {
        let mut out = Range::default();
        out.revision = self.list_pages(prefix, 0, &mut |kvs| out.kvs.extend(kvs))?;
        Ok(out)
    }

    /// [`Client::list`] a page at a time: each page goes to `page` as it arrives (so a
    /// caller folding pages never holds the whole answer), read at `revision` (0: the
    /// current one). Returns the revision read at, so several prefixes can be read as one
    /// snapshot. Pages are decoded straight into [`KeyValue`]s (no JSON tree in between:
    /// at 100,000 keys the tree was most of the list's time).
    pub fn list_pages(
        &self,
        prefix: &[u8],
        revision: i64,
        page: &mut dyn FnMut(Vec<KeyValue>),
    ) -> Result<i64, EtcdError> {
        let path = "/v3/kv/range";
        let end = b64_encode(&prefix_end(prefix));
        let mut from = prefix.to_vec();
        let mut revision = revision;
        loop {
            let mut body =
                json!({ "key": b64_encode(&from), "range_end": end, "limit": LIST_PAGE.to_string() });
            if revision != 0 {
                body["revision"] = json!(revision.to_string());
            }
            let bytes = self.call_raw(path, &body)?;
            let answer: RangeAnswer = serde_json::from_slice(&bytes)
                .map_err(|e| EtcdError::Malformed { path, why: e.to_string() })?;
            drop(bytes);
            if revision == 0 {
                revision = answer.header.revision;
            }
            let next = match answer.kvs.last() {
                Some(last) if answer.more => {
                    let mut k = last.key.clone();
                    k.push(0);
                    Some(k)
                }
                _ => None,
            };
            page(answer.kvs);
            match next {
                Some(k) => from = k,
                None => return Ok(revision),
            }
        }
    }

    /// Puts `key` = `value`, attached to `lease` (0: none). Returns the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64_encode(key), "value": b64_encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        Ok(revision_of(&self.call("/v3/kv/put", &body)?))
    }

    /// Deletes `key`, or every key under it when `prefix`. Returns how many went.
    pub fn delete(&self, key: &[u8], prefix: bool) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64_encode(key) });
        if prefix {
            body["range_end"] = json!(b64_encode(&prefix_end(key)));
        }
        let answer = self.call("/v3/kv/deleterange", &body)?;
        Ok(answer.get("deleted").map(i64_of).unwrap_or(0))
    }

    /// A transaction: if every compare holds, `success`, else `failure`.
    pub fn txn(&self, compare: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => json!({
                    "key": b64_encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"
                }),
                Compare::ValueIs(key, value) => json!({
                    "key": b64_encode(key), "target": "VALUE", "result": "EQUAL", "value": b64_encode(value)
                }),
                Compare::ModRevisionIs(key, rev) => json!({
                    "key": b64_encode(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        let mut put = json!({ "key": b64_encode(key), "value": b64_encode(value) });
                        if *lease != 0 {
                            put["lease"] = json!(lease.to_string());
                        }
                        json!({ "request_put": put })
                    }
                    Op::Get(key) => json!({ "request_range": { "key": b64_encode(key) } }),
                    Op::Delete(key) => json!({ "request_delete_range": { "key": b64_encode(key) } }),
                })
                .collect()
        };
        let body = json!({ "compare": compare, "success": ops(success), "failure": ops(failure) });
        let answer = self.call("/v3/kv/txn", &body)?;
        let succeeded = answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let mut kvs = Vec::new();
        for response in answer.get("responses").and_then(Value::as_array).into_iter().flatten() {
            if let Some(range) = response.get("response_range") {
                kvs.extend(kvs_of(range, "/v3/kv/txn")?);
            }
        }
        Ok(TxnResult { succeeded, kvs, revision: revision_of(&answer) })
    }

    /// Compacts the history up to `revision` (watches from before it then fail).
    pub fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call("/v3/kv/compaction", &json!({ "revision": revision.to_string(), "physical": true }))
            .map(|_| ())
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn lease_grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        match answer.get("ID").map(i64_of) {
            Some(id) if id != 0 => Ok(id),
            _ => {
                Err(EtcdError::Malformed { path: "/v3/lease/grant", why: format!("no lease id in {answer}") })
            }
        }
    }

    /// Renews `lease` once; its remaining TTL. A lease that expired is [`EtcdError::LeaseGone`].
    pub fn lease_keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let result = answer.get("result").unwrap_or(&answer);
        match result.get("TTL").map(i64_of) {
            Some(ttl) if ttl > 0 => Ok(ttl),
            _ => Err(EtcdError::LeaseGone(lease)),
        }
    }

    /// Revokes `lease`: every key attached to it goes at once.
    pub fn lease_revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })).map(|_| ())
    }

    /// Opens a watch on every key under `prefix`, from `start_revision` on.
    pub fn watch(&self, prefix: &[u8], start_revision: i64) -> Result<Watch, EtcdError> {
        let path = "/v3/watch";
        let body = json!({ "create_request": {
            "key": b64_encode(prefix),
            "range_end": b64_encode(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let (mut stream, host) =
            self.connect(self.timeout).map_err(|last| EtcdError::Unreachable { path, last })?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| EtcdError::Unreachable { path, last: format!("{host}: {e}") })?;
        let mut reader = BufReader::new(stream);
        let (status, chunked, _) = read_head(&mut reader)
            .map_err(|why| EtcdError::Unreachable { path, last: format!("{host}: {why}") })?;
        if status != 200 || !chunked {
            return Err(EtcdError::Watch(format!("HTTP {status}, chunked {chunked}")));
        }
        let _ = reader.get_ref().set_read_timeout(Some(WATCH_POLL));
        Ok(Watch { reader, raw: Vec::new(), pending: Vec::new(), counters: self.counters.clone() })
    }
}

/// An open watch: a stream of JSON messages, one per line, in HTTP chunks.
#[derive(Debug)]
pub struct Watch {
    reader: BufReader<TcpStream>,
    /// Bytes read but not yet split into chunks (a read may time out inside a chunk).
    raw: Vec<u8>,
    /// Chunk payloads not yet split into lines.
    pending: Vec<u8>,
    counters: std::sync::Arc<Counters>,
}

/// What one [`Watch::next_batch`] saw.
#[derive(Debug)]
pub enum WatchBatch {
    /// Events up to `revision` (possibly none: the watch was created, or a progress note).
    Events { events: Vec<Event>, revision: i64 },
    /// Nothing arrived within [`WATCH_POLL`].
    Idle,
}

impl Watch {
    /// The next message, or [`WatchBatch::Idle`] after [`WATCH_POLL`] without one.
    pub fn next_batch(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse_watch_message(&line);
            }
            match take_chunk(&mut self.raw).map_err(EtcdError::Watch)? {
                Some(Some(chunk)) => {
                    self.pending.extend_from_slice(&chunk);
                    continue;
                }
                Some(None) => return Err(EtcdError::Watch("the server ended the watch".into())),
                None => {}
            }
            let mut buf = [0u8; 16 << 10];
            match self.reader.read(&mut buf) {
                Ok(0) => return Err(EtcdError::Watch("the server closed the watch".into())),
                Ok(n) => {
                    self.counters.bytes_received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    self.raw.extend_from_slice(&buf[..n]);
                    if self.raw.len() > MAX_BODY {
                        return Err(EtcdError::Watch("message too large".into()));
                    }
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Ok(WatchBatch::Idle)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EtcdError::Watch(e.to_string())),
            }
        }
    }
}

/// Takes one whole chunk off the front of `raw`: `None` when it is not all there yet,
/// `Some(None)` for the last (empty) chunk.
fn take_chunk(raw: &mut Vec<u8>) -> Result<Option<Option<Vec<u8>>>, String> {
    let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
        return if raw.len() > 64 { Err("chunk size line too long".into()) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&raw[..eol]).map_err(|_| "chunk size line is not text".to_string())?;
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| format!("bad chunk size line {line:?}"))?;
    if size > MAX_BODY {
        return Err(format!("chunk of {size} bytes"));
    }
    let end = eol + 2 + size + 2;
    if raw.len() < end {
        return Ok(None);
    }
    let chunk = raw[eol + 2..eol + 2 + size].to_vec();
    raw.drain(..end);
    Ok(Some((size > 0).then_some(chunk)))
}

fn parse_watch_message(line: &[u8]) -> Result<WatchBatch, EtcdError> {
    let path = "/v3/watch";
    let v: Value =
        serde_json::from_slice(line).map_err(|e| EtcdError::Malformed { path, why: e.to_string() })?;
    if let Some(err) = v.get("error") {
        return Err(EtcdError::Watch(err.to_string()));
    }
    let result = v.get("result").unwrap_or(&v);
    let compact = result.get("compact_revision").map(i64_of).unwrap_or(0);
    if compact != 0 {
        return Err(EtcdError::Compacted { compact_revision: compact });
    }
    if result.get("canceled").and_then(Value::as_bool).unwrap_or(false) {
        return Err(EtcdError::Watch(format!("canceled: {result}")));
    }
    let mut events = Vec::new();
    for e in result.get("events").and_then(Value::as_array).into_iter().flatten() {
        let kv: KeyValue = serde_json::from_value(e.get("kv").cloned().unwrap_or(Value::Null))
            .map_err(|err| EtcdError::Malformed { path, why: err.to_string() })?;
        match e.get("type").and_then(Value::as_str) {
            Some("DELETE") => events.push(Event::Delete(kv)),
            _ => events.push(Event::Put(kv)),
        }
    }
    Ok(WatchBatch::Events { events, revision: revision_of(result) })
}

/// Reads the status line and headers: (status, chunked, content length).
fn read_head(reader: &mut impl BufRead) -> Result<(u16, bool, Option<usize>), String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if n > 8192 {
            return Err("header line too long".into());
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse().ok();
        }
    }
    Ok((status, chunked, length))
}

/// Reads one chunk of a chunked body; `None` at the last (empty) chunk.
fn read_chunk(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|e| format!("{e} ({:?})", e.kind()))?;
    if n == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| format!("bad chunk size line {line:?}"))?;
    if size > MAX_BODY {
        return Err(format!("chunk of {size} bytes"));
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).map_err(|e| format!("{e} ({:?})", e.kind()))?;
    chunk.truncate(size);
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(chunk))
}

fn kvs_of(v: &Value, path: &'static str) -> Result<Vec<KeyValue>, EtcdError> {
    match v.get("kvs") {
        None => Ok(Vec::new()),
        Some(kvs) => {
            serde_json::from_value(kvs.clone()).map_err(|e| EtcdError::Malformed { path, why: e.to_string() })
        }
    }
}

fn revision_of(v: &Value) -> i64 {
    v.get("header").and_then(|h| h.get("revision")).map(i64_of).unwrap_or(0)
}

/// A proto3-JSON int64: a string, or (from other encoders) a number.
fn i64_of(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn i64_text<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(i64_of(&Value::deserialize(d)?))
}

fn b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    b64_decode(&text).ok_or_else(|| serde::de::Error::custom(format!("bad base64 {text:?}")))
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte that is
/// not 0xff incremented (etcd's `clientv3.GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Standard base64 with padding (RFC 4648 section 4), as proto3 JSON writes bytes.
pub fn b64_encode(data: &[u8]) -> String {
    base64::encode(data)
}

/// Decodes standard or URL-safe base64 (proto3 JSON readers accept both).
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    base64::decode(text).or_else(|_| base64::decode_config(text, base64::URL_SAFE)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        // RFC 4648 section 10.
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(b64_encode(plain.as_bytes()), coded, "encode {plain:?}");
            assert_eq!(b64_decode(coded).as_deref(), Some(plain.as_bytes()), "decode {coded:?}");
        }
        assert_eq!(b64_decode("Zm9v!"), None);
        assert_eq!(b64_decode("-_8=").as_deref(), Some(&[0xfb, 0xff][..]), "URL-safe");
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"a/b"), b"a/c");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn watch_messages_parse_puts_deletes_and_compaction() {
        let put = br#"{"result":{"header":{"revision":"7"},"events":[{"kv":{"key":"Zm9v","value":"YmFy","mod_revision":"7","create_revision":"7"}},{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"7"}}]}}"#;
        match parse_watch_message(put).unwrap() {
            WatchBatch::Events { events, revision } => {
                assert_eq!(revision, 7);
                assert!(matches!(&events[0], Event::Put(kv) if kv.key == b"foo" && kv.value == b"bar"));
                assert!(matches!(&events[1], Event::Delete(kv) if kv.key == b"foo"));
            }
            other => panic!("expected events, got {other:?}"),
        }
        let compacted = br#"{"result":{"header":{"revision":"9"},"compact_revision":"5","canceled":true}}"#;
        assert!(matches!(parse_watch_message(compacted), Err(EtcdError::Compacted { compact_revision: 5 })));
    }
}
