//! `sluice daemon` against the kernel: it loads and pins a (prefilter-only) node, answers
//! on its socket, applies an edit of the node file as map updates, keeps the previous
//! state on an invalid file, on stop removes its socket while the pins stay, and on restart
//! adopts the pinned node.

use sluice::daemon::{describe, run, LivePrefilter, Metrics, Options, StartTimes};
use sluice::maps::prefilter::DenySet;
use sluice::model::Cidr;
use sluice::node::load::{open_prefilter, prefilter_set, unload};
use sluice::node::prefix_of;
use sluice::node::update::Update;
use sluice::node::wire::down;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node(deny: &[&str]) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: daemon-test}}\nspec:\n  prefilter: {{deny: [{}]}}\n",
        deny.join(", ")
    )
}

fn deny_set(deny: &[&str]) -> DenySet {
    DenySet::new(deny.iter().map(|t| prefix_of(&t.parse::<Cidr>().expect("test CIDRs are valid"))))
}

/// One request, one response.
fn request(socket: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.write_all(format!("{line}\n").as_bytes()).expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

/// Wait until `cond` holds, up to `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pinned_set(pin_dir: &Path) -> DenySet {
    let sys = sluice::sys::kernel();
    prefilter_set(&open_prefilter(&sys, pin_dir).expect("open pinned prefilter")).expect("read deny set")
}

/// Removes the pins and the temp dir however the test ends.
struct Cleanup {
    pin_dir: PathBuf,
    tmp: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // `sluice down` removes links, records and pins; the rest is a fallback for a test
        // that failed half way.
        let _ = down(&sluice::sys::kernel(), &self.pin_dir);
        let _ = unload(&sluice::sys::kernel(), &self.pin_dir);
        let _ = std::fs::remove_dir(self.pin_dir.join("links"));
        let _ = std::fs::remove_dir(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

#[test]
fn daemon_keeps_node_in_step() {
    if !sluice::sys::require_kernel("daemon_keeps_node_in_step") {
        return;
    }
    let id = std::process::id();
    let tmp = std::env::temp_dir().join(format!("sluice-daemon-test-{id}"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-daemon-test-{id}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let cleanup = Cleanup { pin_dir: pin_dir.clone(), tmp: tmp.clone() };
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let config = tmp.join("node.yaml");
    // The socket's parent does not exist yet: the daemon creates it.
    let socket = tmp.join("run").join("sluice.sock");
    write_atomically(&config, &node(&["192.0.2.0/24"]));

    let opts = Options {
        config: config.clone(),
        pin_dir: pin_dir.clone(),
        socket: socket.clone(),
        poll: Duration::from_millis(50),
        attach: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let daemon = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || run(&opts, &stop))
    };
    wait_for("the socket", Duration::from_secs(20), || socket.exists() || daemon.is_finished());
    assert!(!daemon.is_finished(), "daemon ended early: {:?}", daemon.join());

    let status = request(&socket, "status");
    assert!(status.starts_with("node pinned at"), "status answered: {status}");
    assert!(status.contains("prefilter"), "status lists the prefilter program: {status}");
    let mode = std::fs::metadata(&socket).expect("socket metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    assert_eq!(pinned_set(&pin_dir), deny_set(&["192.0.2.0/24"]), "deny set after start");
    assert!(request(&socket, "metrics").contains("updates_applied 0"));

    // An edit lands within a few polls.
    let changed = ["192.0.2.0/24", "198.51.100.0/24"];
    write_atomically(&config, &node(&changed));
    wait_for("the edit to be applied", Duration::from_secs(5), || pinned_set(&pin_dir) == deny_set(&changed));
    let metrics = request(&socket, "metrics");
    assert!(metrics.contains("updates_applied 1\nerrors 0"), "metrics after one edit: {metrics}");

    // An invalid file: reported, nothing applied.
    write_atomically(&config, "apiVersion: sluice.dev/v1\nkind: Node\nspec: [\n");
    wait_for("the parse error to be counted", Duration::from_secs(5), || {
        request(&socket, "metrics").contains("errors 1")
    });
    let applied = request(&socket, "apply");
    let origin = format!("{}:", config.display());
    assert!(
        applied.starts_with("error: ") && applied.contains(&origin),
        "apply of an invalid file: {applied}"
    );
    assert_eq!(pinned_set(&pin_dir), deny_set(&changed), "deny set after an invalid file");
    let metrics = request(&socket, "metrics");
    assert!(metrics.contains("updates_applied 1\nerrors 2"), "metrics after two errors: {metrics}");
    assert!(request(&socket, "bogus").starts_with("error: unknown request"));

    // Stop: socket gone, pins kept.
    stop.store(true, Ordering::Relaxed);
    daemon.join().expect("daemon thread").expect("daemon run");
    assert!(!socket.exists(), "socket removed on stop");
    assert!(pin_dir.join("programs").is_dir(), "pins outlive the daemon");
    assert_eq!(pinned_set(&pin_dir), deny_set(&changed), "deny set after stop");

    // A restart adopts the pinned node and applies the file as it now is.
    write_atomically(&config, &node(&["198.51.100.0/24"]));
    let opts = Options {
        config,
        pin_dir: pin_dir.clone(),
        socket: socket.clone(),
        poll: Duration::from_millis(50),
        attach: Default::default(),
    };
    stop.store(false, Ordering::Relaxed);
    let daemon = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || run(&opts, &stop))
    };
    wait_for("the socket again", Duration::from_secs(20), || socket.exists() || daemon.is_finished());
    assert!(!daemon.is_finished(), "restarted daemon ended early: {:?}", daemon.join());
    assert_eq!(pinned_set(&pin_dir), deny_set(&["198.51.100.0/24"]), "deny set after adopting");
    assert!(request(&socket, "metrics").contains("updates_applied 1\nerrors 0"));
    stop.store(true, Ordering::Relaxed);
    daemon.join().expect("daemon thread").expect("daemon run");

    // `sluice down` leaves nothing: no pin, not even the (empty) links directory attach made.
    let report = down(&sluice::sys::kernel(), &pin_dir).expect("sluice down");
    assert!(report.warnings.is_empty(), "down warnings: {report}");
    assert!(!pin_dir.exists(), "pin dir left after down");
    drop(cleanup);
}

/// A daemon on its own thread, with a unique pin dir, config and socket; stopped, joined
/// and cleaned up when dropped (also when a test fails half way).
struct Running {
    config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), sluice::daemon::DaemonError>>>,
    _cleanup: Cleanup,
}

impl Running {
    /// Starts a daemon on `config_text` and waits for its socket.
    fn start(name: &str, config_text: &str, poll: Duration) -> Running {
        let id = std::process::id();
        let tmp = std::env::temp_dir().join(format!("sluice-daemon-{name}-{id}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-daemon-{name}-{id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let cleanup = Cleanup { pin_dir: pin_dir.clone(), tmp: tmp.clone() };
        std::fs::create_dir_all(&tmp).expect("temp dir");
        let config = tmp.join("node.yaml");
        write_atomically(&config, config_text);
        let socket = tmp.join("sluice.sock");
        let opts = Options {
            config: config.clone(),
            pin_dir: pin_dir.clone(),
            socket: socket.clone(),
            poll,
            attach: Default::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || run(&opts, &stop))
        };
        let mut running = Running { config, socket, pin_dir, stop, thread: Some(thread), _cleanup: cleanup };
        let finished = |r: &Running| r.thread.as_ref().is_none_or(|t| t.is_finished());
        wait_for("the socket", Duration::from_secs(30), || {
            (running.socket.exists() && UnixStream::connect(&running.socket).is_ok()) || finished(&running)
        });
        if finished(&running) {
            let result = running.thread.take().map(|t| t.join());
            panic!("daemon ended early: {result:?}");
        }
        running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request with a client-side deadline: a daemon that does not answer within `limit`
/// fails the test instead of hanging it.
fn request_within(socket: &Path, line: &str, limit: Duration) -> String {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(limit)).expect("read timeout");
    s.write_all(format!("{line}\n").as_bytes()).expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("no answer to `{line}` within {limit:?}: {e}"));
    out
}

/// "client requests on the control socket served concurrently": 20 clients that connect
/// and send nothing do not keep a `status` request from being answered (one thread served
/// them in turn, 2 s each: 40 s before the 21st was read).
#[test]
fn idle_clients_do_not_hold_up_status() {
    if !sluice::sys::require_kernel("idle_clients_do_not_hold_up_status") {
        return;
    }
    let daemon = Running::start("idle", &node(&["192.0.2.0/24"]), Duration::from_millis(100));
    let idle: Vec<UnixStream> = (0..20)
        .map(|i| UnixStream::connect(&daemon.socket).unwrap_or_else(|e| panic!("idle client {i}: {e}")))
        .collect();
    // Let the daemon accept them all before the real request.
    std::thread::sleep(Duration::from_millis(300));
    let status = request_within(&daemon.socket, "status", Duration::from_secs(15));
    assert!(status.starts_with("node pinned at"), "status answered: {status}");
    drop(idle);
}

/// "config must be a regular file": a FIFO in place of the node file is refused at start
/// with an error naming it, instead of blocking the daemon in open(2) until a writer comes.
#[test]
fn a_fifo_config_is_refused_at_once() {
    use std::os::unix::ffi::OsStrExt;
    if !sluice::sys::require_kernel("a_fifo_config_is_refused_at_once") {
        return;
    }
    let id = std::process::id();
    let tmp = std::env::temp_dir().join(format!("sluice-daemon-fifo-{id}"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-daemon-fifo-{id}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _cleanup = Cleanup { pin_dir: pin_dir.clone(), tmp: tmp.clone() };
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let config = tmp.join("node.yaml");
    let c_path = std::ffi::CString::new(config.as_os_str().as_bytes()).expect("no NUL in a temp path");
    // SAFETY: `c_path` is a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let opts = Options {
        config: config.clone(),
        pin_dir,
        socket: tmp.join("sluice.sock"),
        poll: Duration::from_millis(50),
        attach: Default::default(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stop = AtomicBool::new(false);
        let _ = tx.send(run(&opts, &stop).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(result) => {
            let err = result.expect_err("a FIFO config is refused");
            assert!(err.contains("it is a FIFO; a node file must be a regular file"), "{err}");
        }
        Err(_) => {
            // Release the stuck reader so the process can end, then fail.
            let _ = std::fs::OpenOptions::new().write(true).open(&config);
            panic!("the daemon did not return within 30 s on a FIFO config");
        }
    }
}

/// "change detection by content": an edit that keeps the file's size and restores its
/// modification time is applied.
#[test]
fn a_same_size_edit_with_the_old_mtime_is_applied() {
    if !sluice::sys::require_kernel("a_same_size_edit_with_the_old_mtime_is_applied") {
        return;
    }
    let daemon = Running::start("mtime", &node(&["192.0.2.0/24"]), Duration::from_millis(100));
    assert_eq!(pinned_set(&daemon.pin_dir), deny_set(&["192.0.2.0/24"]));
    let before = std::fs::metadata(&daemon.config).expect("config metadata");
    let edited = node(&["192.0.3.0/24"]);
    assert_eq!(edited.len() as u64, before.len(), "the edit keeps the size");
    {
        // In place (same inode), then the old modification time back.
        let mut f = std::fs::OpenOptions::new().write(true).open(&daemon.config).expect("open config");
        f.write_all(edited.as_bytes()).expect("rewrite config");
        f.set_modified(before.modified().expect("mtime")).expect("restore mtime");
    }
    let after = std::fs::metadata(&daemon.config).expect("config metadata");
    assert_eq!((after.len(), after.modified().ok()), (before.len(), before.modified().ok()));
    wait_for("the same-size edit to be applied", Duration::from_secs(10), || {
        pinned_set(&daemon.pin_dir) == deny_set(&["192.0.3.0/24"])
    });
}

/// "deep YAML refused quickly": a node file nested 100,000 levels deep is refused before
/// parsing; the daemon goes on answering and the node keeps its deny set.
#[test]
fn a_deeply_nested_config_is_refused_and_the_node_kept() {
    if !sluice::sys::require_kernel("a_deeply_nested_config_is_refused_and_the_node_kept") {
        return;
    }
    let daemon = Running::start("deep", &node(&["192.0.2.0/24"]), Duration::from_millis(50));
    let depth = 100_000;
    write_atomically(&daemon.config, &node(&[&format!("{}{}", "[".repeat(depth), "]".repeat(depth))]));
    wait_for("the deep file to be refused", Duration::from_secs(30), || {
        request_within(&daemon.socket, "metrics", Duration::from_secs(20)).contains("errors 1")
    });
    let applied = request_within(&daemon.socket, "apply", Duration::from_secs(20));
    assert!(applied.contains("collections nest deeper than 64 levels"), "apply answered: {applied}");
    assert_eq!(pinned_set(&daemon.pin_dir), deny_set(&["192.0.2.0/24"]), "the node keeps its deny set");
}

/// "A second daemon on the same socket must notice the first before applying anything":
/// it fails with SocketInUse and the node keeps the first daemon's deny set.
#[test]
fn a_second_daemon_on_the_socket_changes_nothing() {
    if !sluice::sys::require_kernel("a_second_daemon_on_the_socket_changes_nothing") {
        return;
    }
    let first = Running::start("second", &node(&["192.0.2.0/24"]), Duration::from_millis(100));
    let other = first.config.with_file_name("other.yaml");
    write_atomically(&other, &node(&["198.51.100.0/24"]));
    let opts = Options {
        config: other,
        pin_dir: first.pin_dir.clone(),
        socket: first.socket.clone(),
        poll: Duration::from_millis(100),
        attach: Default::default(),
    };
    let err = run(&opts, &AtomicBool::new(false)).expect_err("a second daemon on the socket is refused");
    assert!(
        matches!(err, sluice::daemon::DaemonError::SocketInUse(ref p) if *p == first.socket),
        "second daemon: {err}"
    );
    assert_eq!(pinned_set(&first.pin_dir), deny_set(&["192.0.2.0/24"]), "the node is the first daemon's");
    assert!(first.socket.exists(), "the first daemon's socket stays");
    assert!(request(&first.socket, "status").starts_with("node pinned at"));
}

/// A file that is not a socket where the socket goes is left alone, and the daemon stops
/// before it loads anything.
#[test]
fn a_file_in_the_sockets_place_is_left_alone() {
    if !sluice::sys::require_kernel("a_file_in_the_sockets_place_is_left_alone") {
        return;
    }
    let id = std::process::id();
    let tmp = std::env::temp_dir().join(format!("sluice-daemon-notsock-{id}"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-daemon-notsock-{id}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _cleanup = Cleanup { pin_dir: pin_dir.clone(), tmp: tmp.clone() };
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let config = tmp.join("node.yaml");
    write_atomically(&config, &node(&["192.0.2.0/24"]));
    let socket = tmp.join("sluice.sock");
    std::fs::write(&socket, "notes").expect("a file in the way");
    let opts = Options {
        config,
        pin_dir: pin_dir.clone(),
        socket: socket.clone(),
        poll: Duration::from_millis(50),
        attach: Default::default(),
    };
    let err = run(&opts, &AtomicBool::new(false)).expect_err("refused");
    assert!(err.to_string().contains("not a socket is in the way"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).expect("still there"), "notes");
    assert!(!pin_dir.exists(), "nothing loaded");
}

/// "`prefilter add` through the daemon ... the difference is reported": an apply that
/// removes a prefix added live (or restores one deleted live) says so.
#[test]
fn an_apply_reports_the_live_prefilter_changes_it_undoes() {
    if !sluice::sys::require_kernel("an_apply_reports_the_live_prefilter_changes_it_undoes") {
        return;
    }
    let daemon = Running::start("live", &node(&["192.0.2.0/24"]), Duration::from_secs(3600));
    let sys = sluice::sys::kernel();
    let prefix = |t: &str| prefix_of(&t.parse::<Cidr>().expect("test CIDRs are valid"));
    sluice::node::load::prefilter_change(
        &sys,
        &daemon.pin_dir,
        &[prefix("203.0.113.0/24")],
        &[prefix("192.0.2.0/24")],
    )
    .expect("live prefilter change");
    let applied = request(&daemon.socket, "apply");
    assert!(
        applied.contains(
            "removed 1 prefilter prefix(es) added live, not in the node file: 203.0.113.0/24 (add them to \
             spec.prefilter.deny to keep them); restored 1 prefilter prefix(es) deleted live: 192.0.2.0/24"
        ),
        "apply answered: {applied}"
    );
    assert_eq!(pinned_set(&daemon.pin_dir), deny_set(&["192.0.2.0/24"]), "the file's deny set");
    let again = request(&daemon.socket, "apply");
    assert!(!again.contains("live"), "nothing left to report: {again}");
}

#[test]
fn live_prefilter_text() {
    let p = |t: &str| prefix_of(&t.parse::<Cidr>().expect("test CIDRs are valid"));
    let live = LivePrefilter::between(
        &deny_set(&["10.0.0.0/8", "2001:db8::/32"]),
        &deny_set(&["10.0.0.0/8", "192.0.2.0/24"]),
    );
    assert_eq!(live, LivePrefilter { removed: vec![p("2001:db8::/32")], restored: vec![p("192.0.2.0/24")] });
    assert_eq!(
        live.to_string(),
        "removed 1 prefilter prefix(es) added live, not in the node file: 2001:db8::/32 (add them to \
         spec.prefilter.deny to keep them); restored 1 prefilter prefix(es) deleted live: 192.0.2.0/24"
    );
    assert!(LivePrefilter::between(&deny_set(&["10.0.0.0/8"]), &deny_set(&["10.0.0.0/8"])).is_empty());
}

#[test]
fn metrics_text() {
    let cases = [
        (Metrics::default(), "updates_applied 0\nerrors 0\nlast_apply_unix never\nreshapes 0"),
        (
            Metrics { updates_applied: 2, errors: 1, last_apply: Some(7), reshapes: 1 },
            "updates_applied 2\nerrors 1\nlast_apply_unix 7\nreshapes 1",
        ),
    ];
    for (m, want) in cases {
        assert_eq!(m.to_string(), want, "metrics {m:?}");
    }
}

#[test]
fn start_times_read_back() {
    let ms = Duration::from_millis;
    let cases = [
        (
            StartTimes { how: "load", plan: ms(24), load: ms(3161), attach: ms(2542) },
            "ready in 5727.0 ms (plan 24.0 ms, load 3161.0 ms, attach 2542.0 ms)",
        ),
        (
            StartTimes { how: "adopt", plan: ms(22), load: ms(67), attach: ms(7) },
            "ready in 96.0 ms (plan 22.0 ms, adopt 67.0 ms, attach 7.0 ms)",
        ),
    ];
    for (times, line) in cases {
        assert_eq!(times.to_string(), line);
        let back = StartTimes::parse(line).unwrap_or_else(|| panic!("parses: {line}"));
        assert_eq!(back.how, times.how, "{line}");
        for (got, want) in [(back.plan, times.plan), (back.load, times.load), (back.attach, times.attach)] {
            assert_eq!(got.as_micros(), want.as_micros(), "{line}");
        }
    }
    for bad in ["", "ready in 5 ms", "ready in 5 ms (plan 1 ms, fetch 2 ms, attach 2 ms)", "applied: ..."] {
        assert_eq!(StartTimes::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn describe_writes() {
    assert_eq!(describe(&Update::default()), "no map writes (already in step)");
    let mut u = Update::default();
    u.writes.insert("pf_cidrs".into(), 2);
    u.writes.insert("pf_meta".into(), 1);
    assert_eq!(describe(&u), "3 map writes (pf_cidrs: 2, pf_meta: 1)");
}

/// Replace the config in one step (write a sibling, rename over), so the daemon's poll
/// never reads a half-written file.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}
