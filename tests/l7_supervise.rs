//! The daemon's supervision of `sluice proxy` (`sluice::proxy::supervise`): started once,
//! adopted by the next call (a restarted daemon), started again after it is killed. Runs in
//! its own namespace so the proxy's listener is private; everything is removed on drop.

#[path = "support/netns.rs"]
mod netns;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::proxy::supervise::{ensure, Outcome, ProxyFiles};

const LISTEN: &str = "127.0.0.1:15001";

const NODE: &str = "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: backend, interface: lxcb, ipv4: 10.79.0.3, labels: {app: backend}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - toPorts:
        - ports: [{port: '80'}]
          rules: {http: [{method: GET}]}
";

struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.dir.join("state").join("proxy.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            kill(pid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill(pid: i32) {
    // SAFETY: kill(2) only sends a signal to the process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn pid_of(outcome: Outcome) -> u32 {
    match outcome {
        Outcome::Adopted(pid) | Outcome::Started(pid) => pid,
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn alive(pid: u32) -> bool {
    // A killed child stays a zombie until reaped: count only running states.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn the_proxy_is_started_adopted_and_restarted() {
    if !netns::gate("the_proxy_is_started_adopted_and_restarted") {
        return;
    }
    netns::remove_stale_namespaces("l7s");
    let ns = netns::Netns::new(netns::unique("l7s"));
    let dir = std::env::temp_dir().join(netns::unique("sluice-l7s"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup { dir: dir.clone() };
    let node = dir.join("node.yaml");
    std::fs::write(&node, NODE).unwrap();
    let files = ProxyFiles { dir: dir.join("state") };
    let exe = Path::new(env!("CARGO_BIN_EXE_sluice"));
    let args = ["--listen", LISTEN];
    // Spawned from a thread inside the namespace, the proxy lives there.
    let first = ns.enter(|| ensure(&files, &node, exe, &args).unwrap());
    assert!(matches!(first, Outcome::Started(_)), "{first:?}");
    wait_until("the proxy listens", || ns.enter(|| TcpStream::connect(LISTEN).is_ok()));

    // A restarted daemon finds it running and adopts it.
    let second = ns.enter(|| ensure(&files, &node, exe, &args).unwrap());
    assert_eq!(second, Outcome::Adopted(pid_of(first)));

    // Killed: the next check starts another.
    kill(pid_of(first) as i32);
    wait_until("the killed proxy is gone", || !alive(pid_of(first)));
    let third = ns.enter(|| ensure(&files, &node, exe, &args).unwrap());
    assert!(matches!(third, Outcome::Started(pid) if pid != pid_of(first)), "{third:?}");
    wait_until("the new proxy listens", || ns.enter(|| TcpStream::connect(LISTEN).is_ok()));
    let log = std::fs::read_to_string(files.log()).unwrap_or_default();
    assert!(log.contains("listening on 127.0.0.1:15001 (transparent)"), "proxy log: {log}");
}
