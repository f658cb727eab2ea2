//! `sluice daemon` reshaping a running node when endpoints come and go (issue 4: "swaps
//! programs atomically otherwise"), with real namespaces, veths and traffic.
//!
//! The daemon runs in-process on a thread inside the node namespace; the node file is
//! replaced atomically between steps:
//! 1. `ep-a`, `ep-b` (B admits UDP 5000 from A, nothing else). Four hooks attached.
//! 2. `ep-c` added (C admits UDP 5000 from A): its two programs are loaded and attached on
//!    `lxcC`, its policy holds for real traffic, A's and B's links and programs are the same
//!    (ids unchanged), and the maps are the same maps (conntrack kept).
//! 3. An endpoint on a missing interface added: refused, nothing applied (no new program
//!    pin, the same hooks), counted as an error. Likewise 64 endpoints, one more than
//!    `ep_config` has slots for: the error names the map and its limit.
//! 4. `ep-c` removed: its links are detached (the hooks on `lxcC` are empty, traffic to C
//!    passes unfiltered again) and its program pins removed; A and B untouched.
//! 5. C comes back as `ep-0`, first in name order: A and B are renumbered (2 and 3), so
//!    their links keep their ids while their programs are swapped in place; every policy
//!    still holds.
//!
//! Guards stop the daemon, run `sluice down` and delete the namespaces on drop, also on
//! panic. Gated by `sluice::sys::require_kernel` and `ip` (a skip, or a failure under
//! `SLUICE_REQUIRE_KERNEL=1`).

use sluice::attach::{Direction, Interface, Link};
use sluice::daemon::{run, Options};
use sluice::node::wire::{self, tcx_query, LINKS_DIR};
use sluice::sys::{self, Map};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;
use netns::gate;
use node::{udp_reaches, NodeNet};

const PREFIX: &str = "sdr";
const A4: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);
const C4: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 3);

/// The node file: the given `(name, interface, address, app label)` endpoints; B and C
/// admit UDP 5000 from A.
fn node_file(endpoints: &[(&str, &str, Ipv4Addr, &str)]) -> String {
    let mut eps = String::new();
    for (name, iface, v4, app) in endpoints {
        eps.push_str(&format!(
            "    - {{name: {name}, interface: {iface}, ipv4: {v4}, labels: {{app: {app}}}}}\n"
        ));
    }
    let mut text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: reshape}}\nspec:\n  endpoints:\n{eps}"
    );
    for target in ["b", "c"] {
        text.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {target}-from-a}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: {target}}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: a}}}}]\n      \
             toPorts: [{{ports: [{{port: \"5000\", protocol: UDP}}]}}]\n"
        ));
    }
    text
}

const EP_A: (&str, &str, Ipv4Addr, &str) = ("ep-a", "lxcA", A4, "a");
const EP_B: (&str, &str, Ipv4Addr, &str) = ("ep-b", "lxcB", B4, "b");
const EP_C: (&str, &str, Ipv4Addr, &str) = ("ep-c", "lxcC", C4, "c");

/// Replace the file in one step, so a poll never reads half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn request(socket: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.write_all(format!("{line}\n").as_bytes()).expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

/// The daemon's reshape count: it answers once the apply in progress has finished.
fn reshapes(socket: &Path) -> u64 {
    let metrics = request(socket, "metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("reshapes ")?.parse().ok())
        .unwrap_or_else(|| panic!("no reshape count in {metrics}"))
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Link pin name -> (link id, program id). A pin the daemon removes or renames meanwhile
/// is left out.
fn links(pin_dir: &Path) -> BTreeMap<String, (u32, u32)> {
    let sys = sys::kernel();
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(pin_dir.join(LINKS_DIR)) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(info) = Link::from_pin(&sys, &e.path()).and_then(|l| l.info()) {
            out.insert(name, (info.id, info.prog_id));
        }
    }
    out
}

/// Program pin name -> program id.
fn programs(pin_dir: &Path) -> BTreeMap<String, u32> {
    let sys = sys::kernel();
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir.join("programs")).expect("programs dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        out.insert(name, sys::Program::from_pin(&sys, &e.path()).expect("pinned program").id());
    }
    out
}

/// Map pin name -> map id.
fn maps(pin_dir: &Path) -> BTreeMap<String, u32> {
    let sys = sys::kernel();
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir.join("maps")).expect("maps dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let map = Map::from_pin(&sys, &e.path()).expect("pinned map");
        out.insert(name, map.info().expect("map info").id);
    }
    out
}

/// The daemon thread, its stop flag, and what to clean up; all undone on drop.
struct Running {
    stop: Arc<AtomicBool>,
    daemon: Option<JoinHandle<Result<(), sluice::daemon::DaemonError>>>,
    pin_dir: PathBuf,
    tmp: PathBuf,
    net: NodeNet,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.daemon.take() {
            let _ = d.join();
        }
        let pin_dir = self.pin_dir.clone();
        let _ = self.net.node.enter(move || wire::down(&sys::kernel(), &pin_dir));
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

#[test]
fn daemon_reshapes_the_node_when_endpoints_come_and_go() {
    if !gate("daemon_reshapes_the_node_when_endpoints_come_and_go") {
        return;
    }
    netns::remove_stale(PREFIX, "sluice-");
    let base = netns::unique(PREFIX);
    let net = NodeNet::build(&base, &[("lxcA", A4), ("lxcB", B4), ("lxcC", C4)]);
    let tmp = std::env::temp_dir().join(format!("sluice-{base}"));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let pin_dir = PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-{base}"));
    let config = tmp.join("node.yaml");
    let socket = tmp.join("sluice.sock");
    write_atomically(&config, &node_file(&[EP_A, EP_B]));

    let stop = Arc::new(AtomicBool::new(false));
    let opts = Options {
        config: config.clone(),
        pin_dir: pin_dir.clone(),
        socket: socket.clone(),
        poll: Duration::from_millis(50),
        attach: Default::default(),
    };
    let ns_name = net.node.name.clone();
    let daemon = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            node::join_netns(&ns_name);
            run(&opts, &stop)
        })
    };
    let mut running = Running { stop, daemon: Some(daemon), pin_dir: pin_dir.clone(), tmp, net };
    let finished = |r: &Running| r.daemon.as_ref().is_some_and(JoinHandle::is_finished);
    wait_for("the daemon's socket", Duration::from_secs(30), || socket.exists() || finished(&running));
    if finished(&running) {
        panic!("daemon ended early: {:?}", running.daemon.take().map(JoinHandle::join));
    }
    let net = &running.net;
    let (a, b, c) = (net.ep("lxcA"), net.ep("lxcB"), net.ep("lxcC"));
    let status = || {
        let pin_dir = pin_dir.clone();
        net.node
            .enter(move || wire::status(&sys::kernel(), &pin_dir).unwrap_or_else(|e| panic!("status: {e}")))
    };
    let hooks_on = |st: &wire::Status, ifname: &str| -> Vec<String> {
        st.attachments
            .iter()
            .filter(|h| h.ifname == ifname && h.problem.is_none())
            .map(|h| h.program.clone())
            .collect()
    };

    // 1. Two endpoints.
    let st = status();
    assert_eq!(hooks_on(&st, "lxcA"), ["from_ep_1", "to_ep_1"], "{st}");
    assert_eq!(hooks_on(&st, "lxcB"), ["from_ep_2", "to_ep_2"], "{st}");
    assert!(hooks_on(&st, "lxcC").is_empty(), "{st}");
    assert!(udp_reaches(a, b, 5000, 5), "A -> B:5000 is allowed");
    assert!(!udp_reaches(a, b, 6000, 2), "A -> B:6000 is denied");
    assert!(udp_reaches(a, c, 6000, 5), "C has no policy yet: A -> C:6000 passes");
    let links1 = links(&pin_dir);
    let progs1 = programs(&pin_dir);
    let maps1 = maps(&pin_dir);
    assert_eq!(links1.len(), 4, "{links1:?}");

    // 2. ep-c added: appended (last in name order), nobody renumbered.
    write_atomically(&config, &node_file(&[EP_A, EP_B, EP_C]));
    wait_for("ep-c's hooks", Duration::from_secs(30), || reshapes(&socket) == 1);
    let st = status();
    assert_eq!(hooks_on(&st, "lxcC"), ["from_ep_3", "to_ep_3"], "{st}");
    let links2 = links(&pin_dir);
    let progs2 = programs(&pin_dir);
    for (name, ids) in &links1 {
        assert_eq!(links2.get(name), Some(ids), "{name}: the same link, running the same program");
    }
    for (name, id) in &progs1 {
        assert_eq!(progs2.get(name), Some(id), "{name} not reloaded");
    }
    for p in ["from_ep_3", "to_ep_3"] {
        assert!(progs2.contains_key(p), "{p} pinned: {progs2:?}");
    }
    assert_eq!(maps(&pin_dir), maps1, "the same maps (conntrack kept)");
    assert!(udp_reaches(a, c, 5000, 5), "A -> C:5000 is allowed");
    assert!(!udp_reaches(a, c, 6000, 2), "A -> C:6000 is denied now");
    assert!(udp_reaches(a, b, 5000, 5) && !udp_reaches(a, b, 6000, 2), "B's policy unchanged");
    let metrics = request(&socket, "metrics");
    assert!(metrics.contains("errors 0") && metrics.contains("reshapes 1"), "metrics: {metrics}");

    // 3. A new endpoint on a missing interface: nothing applied.
    write_atomically(
        &config,
        &node_file(&[EP_A, EP_B, EP_C, ("ep-d", "lxcD", Ipv4Addr::new(10, 202, 0, 4), "d")]),
    );
    wait_for("the refusal", Duration::from_secs(30), || request(&socket, "metrics").contains("errors 1"));
    let applied = request(&socket, "apply");
    assert!(applied.contains("lxcD") && applied.contains("ep-d"), "the error names them: {applied}");
    assert_eq!(programs(&pin_dir), progs2, "no program pinned or removed");
    assert_eq!(links(&pin_dir), links2, "no hook changed");

    // 3b. More endpoints than `ep_config` has slots (64 for a node loaded with two): the map
    // would have to grow; refused before any interface is looked at, nothing applied.
    let names: Vec<(String, String, Ipv4Addr)> = (0..61u8)
        .map(|i| (format!("ep-x{i:02}"), format!("lxcX{i:02}"), Ipv4Addr::new(10, 202, 1, i + 1)))
        .collect();
    let mut many = vec![EP_A, EP_B, EP_C];
    many.extend(names.iter().map(|(n, i, a)| (n.as_str(), i.as_str(), *a, "x")));
    write_atomically(&config, &node_file(&many));
    wait_for("the capacity refusal", Duration::from_secs(30), || {
        request(&socket, "metrics").contains("errors 3")
    });
    let applied = request(&socket, "apply");
    assert!(
        applied.contains("`ep_config` has room for 64 entries, the new node needs 65")
            && applied.contains("nothing applied"),
        "the error names the map and its limit: {applied}"
    );
    assert_eq!(programs(&pin_dir), progs2, "no program pinned or removed");
    assert_eq!(links(&pin_dir), links2, "no hook changed");

    // 4. ep-c removed: its hooks and programs go, A and B are untouched.
    write_atomically(&config, &node_file(&[EP_A, EP_B]));
    wait_for("ep-c's hooks to go", Duration::from_secs(30), || reshapes(&socket) == 2);
    assert_eq!(links(&pin_dir), links1, "A's and B's links and programs unchanged");
    assert_eq!(programs(&pin_dir), progs1, "ep-c's program pins removed, the rest kept");
    let lxc_c = net.node.enter(|| Interface::lookup("lxcC").expect("lxcC").index());
    for dir in [Direction::Ingress, Direction::Egress] {
        let hook = net.node.enter(|| tcx_query(&*sys::kernel(), lxc_c, dir).expect("tcx query"));
        assert!(hook.prog_ids.is_empty(), "lxcC {} still runs {:?}", dir.name(), hook.prog_ids);
    }
    assert!(udp_reaches(a, c, 6000, 5), "C's policy is gone: A -> C:6000 passes again");
    assert!(udp_reaches(a, b, 5000, 5) && !udp_reaches(a, b, 6000, 2), "B's policy unchanged");

    // 5. C back as ep-0, first in name order: A and B keep their numbers (a running
    // endpoint is never renumbered, so none of its programs is swapped and it never reads
    // another endpoint's config); C takes the lowest free number.
    write_atomically(&config, &node_file(&[("ep-0", "lxcC", C4, "c"), EP_A, EP_B]));
    wait_for("ep-0's hooks", Duration::from_secs(30), || reshapes(&socket) == 3);
    let st = status();
    assert_eq!(hooks_on(&st, "lxcA"), ["from_ep_1", "to_ep_1"], "{st}");
    assert_eq!(hooks_on(&st, "lxcB"), ["from_ep_2", "to_ep_2"], "{st}");
    assert_eq!(hooks_on(&st, "lxcC"), ["from_ep_3", "to_ep_3"], "{st}");
    let links5 = links(&pin_dir);
    let progs5 = programs(&pin_dir);
    for link in ["from_ep_1@lxcA", "to_ep_1@lxcA", "from_ep_2@lxcB", "to_ep_2@lxcB"] {
        assert_eq!(links5.get(link), links1.get(link), "{link}: the same link, running the same program");
    }
    for program in ["from_ep_1", "to_ep_1", "from_ep_2", "to_ep_2"] {
        assert_eq!(progs5.get(program), progs1.get(program), "{program}: not reloaded");
    }
    assert!(udp_reaches(a, c, 5000, 5) && !udp_reaches(a, c, 6000, 2), "C's policy as ep-0");
    assert!(udp_reaches(a, b, 5000, 5) && !udp_reaches(a, b, 6000, 2), "B's policy after renumbering");
    assert!(udp_reaches(b, a, 6000, 5), "A has no ingress policy");
    let metrics = request(&socket, "metrics");
    assert!(metrics.contains("reshapes 3"), "metrics: {metrics}");

    drop(running);
}
