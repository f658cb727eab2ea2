//! `sluice daemon` against the kernel: it loads and pins a (prefilter-only) node, answers
//! on its socket, applies an edit of the node file as map updates, keeps the previous
//! state on an invalid file, on stop removes its socket while the pins stay, and on restart
//! adopts the pinned node.

use sluice::daemon::{describe, run, Metrics, Options, StartTimes};
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
    let opts =
        Options { config, pin_dir: pin_dir.clone(), socket: socket.clone(), poll: Duration::from_millis(50) };
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
