//! End to end: services balanced by the standalone tc load balancer on a node's devices,
//! with real TCP and UDP between namespaces.
//!
//! Topology (one namespace each): `client` and two backends `be1`, `be2` hang off the node
//! namespace on veths (`lbc`, `lb1`, `lb2`), routed by the node. The node file puts the
//! load balancer on all three devices' tc ingress (`spec.loadBalancer.devices`): the
//! client's packets to the VIP are translated on `lbc`, the backends' replies reverse
//! translated on `lb1`/`lb2`.
//!
//! Checked: connections to the VIP reach both backends and the client's socket sees the
//! VIP as its peer; UDP replies come from the VIP; `sluice service list` counts the pinned
//! connections; removing one backend (a map update, no program reloaded) leaves an
//! established connection to the other working and sends every new connection there; a
//! terminating backend keeps its connection and takes no new ones; `down` leaves nothing.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;
// `sluice demo`'s lab belongs to the `sluice` binary, not the library: included by path
// (for `stack_forwarded`).
#[path = "../src/demo/mod.rs"]
#[allow(dead_code)]
mod demo;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::model;
use sluice::node::{self as snode, load, update, wire};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "sluice-svc";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const BE1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 21);
const BE2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 22);

/// The node file: the load balancer on the three devices, one service with a TCP and a UDP
/// port, and the backends given as (address, state).
fn config(backends: &[(Ipv4Addr, &str)]) -> String {
    let mut eps = String::new();
    for (a, state) in backends {
        let cond = match *state {
            "terminating" => "{ready: false, serving: true, terminating: true}",
            _ => "{ready: true}",
        };
        eps += &format!("  - addresses: [{a}]\n    conditions: {cond}\n");
    }
    if eps.is_empty() {
        eps = "  []\n".into();
    }
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: svc-test}}\nspec:\n  loadBalancer: {{devices: [lbc, lb1, lb2]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: t}}\nspec:\n  clusterIP: {VIP}\n  ports:\n\
         \x20   - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n\
         \x20   - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: t\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nendpoints:\n{eps}ports:\n  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: dns, port: 5353, protocol: UDP}}\n"
    )
}

/// A backend: a TCP server on 8080 that says its name then echoes lines, and a UDP server
/// on 5353 that answers its name; both stop when `stop` is set.
fn serve(
    ns: &netns::Netns,
    name: &'static str,
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let (tcp, udp) = ns.enter(|| {
        let t = TcpListener::bind((addr, 8080)).expect("bind tcp");
        let u = UdpSocket::bind((addr, 5353)).expect("bind udp");
        (t, u)
    });
    tcp.set_nonblocking(true).expect("nonblocking");
    udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let s1 = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        while !s1.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut c, _)) => {
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
                        let _ = c.write_all(format!("{name}\n").as_bytes());
                        let mut r = BufReader::new(c.try_clone().expect("clone"));
                        let mut line = String::new();
                        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                            let _ = c.write_all(line.as_bytes());
                            line.clear();
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let u = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), from);
            }
        }
    });
    vec![t, u]
}

/// A connection to the VIP from the client namespace and the name of the backend it got.
fn connect(client: &netns::Netns) -> (TcpStream, String) {
    connect_to(client, SocketAddr::from((VIP, 80)))
}

/// A connection to `vip` from `client` and the greeting (the backend's name) it got.
fn connect_to(client: &netns::Netns, vip: SocketAddr) -> (TcpStream, String) {
    let s = client
        .enter(|| TcpStream::connect_timeout(&vip, Duration::from_secs(3)))
        .unwrap_or_else(|e| panic!("connect to the VIP {vip}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut name = String::new();
    r.read_line(&mut name).expect("the backend's name");
    (s, name.trim().to_string())
}

/// Whether an established connection still echoes.
fn echoes(s: &mut TcpStream, what: &str) -> bool {
    if s.write_all(format!("{what}\n").as_bytes()).is_err() {
        return false;
    }
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).is_ok() && line.trim() == what
}

/// A UDP question from `src` in `ns` to `vip` (up to five tries): the answer and where it
/// came from.
fn udp_answer(ns: &netns::Netns, src: Ipv4Addr, vip: SocketAddr) -> (String, SocketAddr) {
    ns.enter(|| {
        let u = UdpSocket::bind((src, 0)).expect("bind");
        u.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let mut buf = [0u8; 64];
        (0..5).find_map(|_| {
            u.send_to(b"q", vip).expect("send");
            u.recv_from(&mut buf)
                .ok()
                .map(|(n, from)| (String::from_utf8_lossy(&buf[..n]).into_owned(), from))
        })
    })
    .expect("a UDP answer")
}

/// Load, pin and attach `cfg` in the node namespace; with `forwarding`, wire it too.
fn bring_up(net: &NodeNet, pin: &Path, cfg: &model::NodeConfig, forwarding: bool) {
    net.node.enter(|| {
        let sys = sluice::sys::kernel();
        let plan = snode::plan(cfg).expect("plans");
        load::load_and_pin(&sys, &plan, pin).expect("loads");
        wire::attach(&sys, cfg, pin, &wire::AttachOptions::default()).expect("attaches");
        if forwarding {
            snode::forward::sync(&sys, cfg, pin).expect("forwarding");
        }
    });
}

/// Names of the backends `n` new connections reach.
fn spread(client: &netns::Netns, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (_, name) = connect(client);
        *seen.entry(name).or_default() += 1;
    }
    seen
}

/// The port the backends listen on that their policy does not admit.
const ADMIN_PORT: u16 = 9090;

/// The endpoint programs' default-deny drops so far (`deny_default`, all endpoints).
fn endpoint_drops(net: &NodeNet, pin: &Path) -> u64 {
    let status = net.node.enter(|| wire::status(&sluice::sys::kernel(), pin).expect("status"));
    status
        .counters
        .iter()
        .filter(|c| c.scope.starts_with("endpoint") && c.reason == "deny_default")
        .map(|c| c.count)
        .sum()
}

/// `lb_ct` entries whose backend is not in `lb_be`.
fn orphan_ct_entries(net: &NodeNet, pin: &Path) -> usize {
    use sluice::maps::lb::{ct_value, map_defs, read_u32};
    net.node.enter(|| {
        let sys = sluice::sys::kernel();
        let defs = map_defs();
        let open = |name: &str| {
            let def = defs.iter().find(|d| d.name == name).expect("an lb map");
            load::open_pinned_map(&sys, pin, def).expect("pinned").entries().expect("dumps")
        };
        let be = open(sluice::maps::names::LB_BE);
        let ct: Vec<Vec<u8>> =
            sluice::maps::lb::CtPurge::MAPS.into_iter().flat_map(|m| open(m).into_values()).collect();
        assert!(!ct.is_empty(), "connections were tracked");
        ct.iter()
            .filter(|v| !be.contains_key(read_u32(v, ct_value::BACKEND_ID).to_le_bytes().as_slice()))
            .count()
    })
}

fn apply(net: &NodeNet, pin: &Path, text: &str) -> update::Update {
    let cfg = model::parse_str(text, "svc-test.yaml").expect("config parses");
    net.node.enter(|| {
        let sys = sluice::sys::kernel();
        let plan = snode::plan(&cfg).expect("plans");
        update::update_pinned(&sys, &cfg, &plan, pin).expect("map update")
    })
}

#[test]
fn services_through_the_standalone_load_balancer() {
    if !gate("services_through_the_standalone_load_balancer") {
        return;
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let net = NodeNet::build(&base, &[("lbc", CLIENT), ("lb1", BE1), ("lb2", BE2)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let (client, be1, be2) = (&net.ep("lbc").ns, &net.ep("lb1").ns, &net.ep("lb2").ns);
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = serve(be1, "be1", BE1, Arc::clone(&stop));
    servers.extend(serve(be2, "be2", BE2, Arc::clone(&stop)));

    let text = config(&[(BE1, "ready"), (BE2, "ready")]);
    let cfg = model::parse_str(&text, "svc-test.yaml").expect("config parses");
    bring_up(&net, &pin.0, &cfg, false);

    // TCP: both backends take connections; the client's peer is the VIP.
    let seen = spread(client, 24);
    assert!(seen.get("be1").is_some_and(|n| *n > 0) && seen.get("be2").is_some_and(|n| *n > 0), "{seen:?}");
    let (mut held, held_name) = connect(client);
    assert_eq!(held.peer_addr().expect("peer"), SocketAddr::from((VIP, 80)));
    assert!(echoes(&mut held, "hello"), "the connection echoes");

    // UDP: the answer comes from the VIP.
    let (name, from) = udp_answer(client, CLIENT, SocketAddr::from((VIP, 53)));
    assert!(name == "be1" || name == "be2", "{name}");
    assert_eq!(from, SocketAddr::from((VIP, 53)), "the answer's source is the VIP");

    // `sluice service list`: the frontends, both backends, pinned connections counted.
    let table = net.node.enter(|| {
        sluice::node::services::list(&sluice::sys::kernel(), &pin.0, &cfg.services).expect("lists")
    });
    println!("{table}");
    let http = table.services.iter().find(|s| s.port == 80).expect("the TCP frontend");
    assert_eq!(http.name.as_deref(), Some("t/web:http"));
    assert_eq!(http.backends.len(), 2, "{table}");
    assert!(http.backends.iter().map(|b| b.connections).sum::<u64>() >= 25, "{table}");

    let st = net.node.enter(|| wire::status(&sluice::sys::kernel(), &pin.0).expect("status"));
    assert!(st.counter("load balancer", "new_connection") >= 25, "{st}");
    assert!(st.counter("load balancer", "rev_nat") > 0, "{st}");

    // Remove the other backend: a map update; the held connection keeps working and new
    // connections all go to the one left.
    let (keep, other) = if held_name == "be1" { (BE1, "be2") } else { (BE2, "be1") };
    let u = apply(&net, &pin.0, &config(&[(keep, "ready")]));
    assert!(u.total() > 0, "the removal writes maps");
    assert!(echoes(&mut held, "still here"), "an established connection survives another backend's removal");
    let seen = spread(client, 12);
    assert_eq!(seen.get(&held_name).copied(), Some(12), "every new connection to the one left: {seen:?}");
    assert!(!seen.contains_key(other));
    // Tracked packets are translated from their `lb_ct` entry alone, so the update deleted
    // the entries of the removed backend (there were some: 24 connections were spread).
    assert_eq!(orphan_ct_entries(&net, &pin.0), 0, "lb_ct entries name a removed backend");

    // Both back, the held one terminating: it keeps its connection, takes no new ones.
    let both = if held_name == "be1" {
        config(&[(BE1, "terminating"), (BE2, "ready")])
    } else {
        config(&[(BE1, "ready"), (BE2, "terminating")])
    };
    apply(&net, &pin.0, &both);
    assert!(echoes(&mut held, "terminating"), "a terminating backend keeps its connection");
    let seen = spread(client, 12);
    assert_eq!(seen.get(other).copied(), Some(12), "no new connection to a terminating backend: {seen:?}");
    drop(held);

    // Down: nothing of ours on the devices.
    net.node.enter(|| wire::down(&sluice::sys::kernel(), &pin.0).expect("down"));
    for dev in ["lbc", "lb1", "lb2"] {
        let out = netns::ip_output(&["-n", &net.node.name, "-d", "link", "show", dev]);
        assert!(!out.contains("tcx") && !out.contains("prog/xdp"), "{dev}: {out}");
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
}

#[path = "support/cgroup.rs"]
mod cgroup;

/// Socket-level balancing wired by the node: `spec.loadBalancer.socketCgroup` names a
/// fresh cgroup; `socklb::sync` links the eight programs there (pinned, kept on a second
/// sync); a shell in the cgroup connecting to the VIP reaches the backend; a node
/// file without the cgroup, and `down`, take the links away.
#[test]
fn socket_load_balancing_wired_by_the_node() {
    if !gate("socket_load_balancing_wired_by_the_node") {
        return;
    }
    if let Err(why) = cgroup::available() {
        if std::env::var(sluice::sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("socket_load_balancing_wired_by_the_node cannot run: {why}");
        }
        eprintln!("skip: socket_load_balancing_wired_by_the_node: {why}");
        return;
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    // The backend: an address on the loopback device of a namespace of its own (a backend
    // must be a unicast address, so not 127.0.0.1); the client shell runs there too.
    let ns = netns::Netns::new(format!("{base}-sock"));
    ns.ip(&["addr", "add", "10.78.0.1/32", "dev", "lo"]);
    let listener = ns.enter(|| TcpListener::bind((Ipv4Addr::new(10, 78, 0, 1), 0))).expect("backend");
    let port = listener.local_addr().expect("addr").port();
    let text = |cgroup: Option<&Path>| {
        let lb =
            cgroup.map_or(String::new(), |c| format!("  loadBalancer: {{socketCgroup: {}}}\n", c.display()));
        format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: socklb-test}}\nspec:\n{lb}\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: t}}\nspec:\n  clusterIP: 10.96.0.60\n  ports:\n\
             \x20   - {{port: 80, targetPort: {port}, protocol: TCP}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: api-1\n  namespace: t\n  labels: {{kubernetes.io/service-name: api}}\n\
             addressType: IPv4\nendpoints:\n  - addresses: [10.78.0.1]\nports:\n  - {{port: {port}, protocol: TCP}}\n"
        )
    };
    let cfg = model::parse_str(&text(Some(&cg.path)), "socklb-test.yaml").expect("config parses");
    let sys = sluice::sys::kernel();
    let plan = snode::plan(&cfg).expect("plans");
    load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
    let r = snode::socklb::sync(&sys, &cfg, &pin.0).expect("links the socket programs");
    assert_eq!((r.created, r.kept), (8, 0), "{r}");
    let r = snode::socklb::sync(&sys, &cfg, &pin.0).expect("idempotent");
    assert_eq!((r.created, r.kept), (0, 8), "{r}");
    let st = wire::status(&sys, &pin.0).expect("status");
    assert_eq!(st.sockets.len(), 8, "status shows the cgroup links:\n{st}");
    assert!(st.sockets.iter().all(|l| l.problem.is_none() && l.prog_id > 0), "{st}");

    // A process in the cgroup connects to the VIP; the backend on loopback answers.
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().expect("accept");
        c.write_all(b"hi\n").expect("write");
        peer
    });
    let out = cg
        .spawn(
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.name,
                    "bash",
                    "-c",
                    "exec 3<>/dev/tcp/10.96.0.60/80 && head -c 3 <&3",
                ])
                .stdout(std::process::Stdio::piped()),
        )
        .expect("spawn")
        .wait_with_output()
        .expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "the VIP reached the backend");
    let peer = server.join().expect("server");
    assert_eq!(peer.ip(), std::net::IpAddr::from([10, 78, 0, 1]), "connected to the backend itself");

    // Without the cgroup in the node file the links go; down leaves no pin.
    let off = model::parse_str(&text(None), "socklb-test.yaml").expect("config parses");
    let r = snode::socklb::sync(&sys, &off, &pin.0).expect("unlinks");
    assert_eq!(r.removed, 8, "{r}");
    assert!(!pin.0.join(snode::socklb::SOCKLB_DIR).exists());
    snode::socklb::sync(&sys, &cfg, &pin.0).expect("links again");
    wire::down(&sys, &pin.0).expect("down");
    assert!(!pin.0.exists(), "down removes the pin dir");
}

/// Services balanced inside the endpoint programs: a client endpoint reaches a VIP served
/// by two backend endpoints on the same node (translated in the client's from-endpoint
/// program, delivered by redirect, reverse translated in the client's to-endpoint
/// program), with real TCP and UDP; a policy on the backends admits the client on the
/// backend port only, so policy judges the translated packet.
#[test]
fn services_inside_the_endpoint_programs() {
    if !gate("services_inside_the_endpoint_programs") {
        return;
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let (c, b1, b2) =
        (Ipv4Addr::new(10, 79, 0, 10), Ipv4Addr::new(10, 79, 0, 21), Ipv4Addr::new(10, 79, 0, 22));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-b1", b1), ("lxc-b2", b2)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let (client, be1, be2) = (&net.ep("lxc-c").ns, &net.ep("lxc-b1").ns, &net.ep("lxc-b2").ns);
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = serve(be1, "be1", b1, Arc::clone(&stop));
    servers.extend(serve(be2, "be2", b2, Arc::clone(&stop)));
    let vip = Ipv4Addr::new(10, 96, 0, 70);
    let text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: svc-ep}}\nspec:\n  endpoints:\n\
         \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
         \x20   - {{name: web-1, interface: lxc-b1, ipv4: {b1}, labels: {{app: web}}}}\n\
         \x20   - {{name: web-2, interface: lxc-b2, ipv4: {b2}, labels: {{app: web}}}}\n\
         ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}, {{port: \"5353\", protocol: UDP}}]}}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: {vip}\n  ports:\n\
         \x20   - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n\
         \x20   - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}\n\
         \x20   - {{name: admin, port: 81, targetPort: {ADMIN_PORT}, protocol: TCP}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nendpoints:\n  - addresses: [{b1}]\n  - addresses: [{b2}]\n\
         ports:\n  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: dns, port: 5353, protocol: UDP}}\n\
         \x20 - {{name: admin, port: {ADMIN_PORT}, protocol: TCP}}\n"
    );
    let cfg = model::parse_str(&text, "svc-ep.yaml").expect("config parses");
    // Both backends also listen on the admin port, which the policy does not admit.
    let admin: Vec<TcpListener> = [(be1, b1), (be2, b2)]
        .iter()
        .map(|(ns, a)| ns.enter(|| TcpListener::bind((*a, ADMIN_PORT))).expect("bind the admin port"))
        .collect();
    bring_up(&net, &pin.0, &cfg, true);

    let connect_vip = || connect_to(client, SocketAddr::from((vip, 80)));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..16 {
        let (s, name) = connect_vip();
        assert_eq!(s.peer_addr().expect("peer"), SocketAddr::from((vip, 80)));
        *seen.entry(name).or_default() += 1;
    }
    assert!(seen.len() == 2, "both backends take connections: {seen:?}");
    let (mut held, _) = connect_vip();
    assert!(echoes(&mut held, "through the endpoint programs"));
    let (name, from) = udp_answer(client, c, SocketAddr::from((vip, 53)));
    assert!(name.starts_with("be"), "{name}");
    assert_eq!(from, SocketAddr::from((vip, 53)), "the answer's source is the VIP");
    // The translated packets were delivered by redirect: the node's stack forwarded none.
    assert_eq!(net.node.enter(demo::stack_forwarded), 0, "no packet went through the node's stack");
    drop(held);

    // A denied flow: the admin port is a service port like the others, but the backends'
    // policy admits the client on 8080/tcp and 5353/udp only, so the translated SYN is
    // dropped by the backend's to-endpoint program: the connect times out, no backend
    // accepts, and the drop is counted as policy's.
    let drops_before = endpoint_drops(&net, &pin.0);
    let refused = client
        .enter(|| TcpStream::connect_timeout(&SocketAddr::from((vip, 81)), Duration::from_millis(1_500)));
    assert!(refused.is_err(), "the client reached the admin port the policy does not admit: {refused:?}");
    for l in &admin {
        l.set_nonblocking(true).expect("nonblocking");
        let accepted = l.accept();
        assert!(accepted.is_err(), "a backend accepted on the denied admin port: {accepted:?}");
    }
    let drops_after = endpoint_drops(&net, &pin.0);
    assert!(
        drops_after > drops_before,
        "the denied SYN is counted as a default-deny drop: {drops_before} before, {drops_after} after"
    );
    net.node.enter(|| wire::down(&sluice::sys::kernel(), &pin.0).expect("down"));
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
}

/// Hairpin inside the endpoint programs: an endpoint whose service has only itself as
/// backend connects to the VIP and reaches its own server, which sees the connection come
/// from the hairpin address (never from its own address: a martian to its stack); the
/// client's socket sees the VIP as its peer. Its ingress policy allows no one but a
/// `client` that does not exist: hairpinned traffic is the endpoint talking to itself and
/// skips policy. UDP the same way; everything by redirect, nothing through the node's stack.
#[test]
fn hairpin_inside_the_endpoint_programs() {
    if !gate("hairpin_inside_the_endpoint_programs") {
        return;
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let solo = Ipv4Addr::new(10, 79, 1, 10);
    let net = NodeNet::build(&base, &[("lxc-hp", solo)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let ns = &net.ep("lxc-hp").ns;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(ns, "solo", solo, Arc::clone(&stop));
    let vip = Ipv4Addr::new(10, 96, 0, 71);
    let text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: svc-hp}}\nspec:\n  endpoints:\n\
         \x20   - {{name: solo, interface: lxc-hp, ipv4: {solo}, labels: {{app: solo}}}}\n\
         ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: solo}}\nspec:\n  endpointSelector: {{matchLabels: {{app: solo}}}}\n  ingress:\n\
         \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}, {{port: \"5353\", protocol: UDP}}]}}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: solo}}\nspec:\n  clusterIP: {vip}\n  ports:\n\
         \x20   - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n\
         \x20   - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: solo-1\n  labels: {{kubernetes.io/service-name: solo}}\n\
         addressType: IPv4\nendpoints:\n  - addresses: [{solo}]\n\
         ports:\n  - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: dns, port: 5353, protocol: UDP}}\n"
    );
    let cfg = model::parse_str(&text, "svc-hp.yaml").expect("config parses");
    bring_up(&net, &pin.0, &cfg, true);

    for i in 0..4 {
        let (mut s, name) = connect_to(ns, SocketAddr::from((vip, 80)));
        assert_eq!(s.peer_addr().expect("peer"), SocketAddr::from((vip, 80)), "the client's peer is the VIP");
        assert_eq!(name, "solo", "connection {i}: its own server's greeting");
        assert!(echoes(&mut s, &format!("hairpin {i}")), "connection {i} echoes");
    }
    let (name, from) = udp_answer(ns, solo, SocketAddr::from((vip, 53)));
    assert_eq!(name, "solo", "a UDP answer from itself");
    assert_eq!(from, SocketAddr::from((vip, 53)), "the answer's source is the VIP");
    assert_eq!(net.node.enter(demo::stack_forwarded), 0, "no packet went through the node's stack");
    let status = net.node.enter(|| wire::status(&sluice::sys::kernel(), &pin.0).expect("status"));
    let endpoint: Vec<_> = status.counters.iter().filter(|c| c.scope.starts_with("endpoint")).collect();
    assert!(
        endpoint.iter().any(|c| c.reason == "allow_hairpin" && c.count > 0),
        "counted as hairpin: {endpoint:?}"
    );
    assert!(!endpoint.iter().any(|c| c.drop), "nothing of the endpoint's was dropped: {endpoint:?}");
    net.node.enter(|| wire::down(&sluice::sys::kernel(), &pin.0).expect("down"));
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
}
