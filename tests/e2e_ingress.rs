//! End to end: ingress from the network device to an endpoint, with real traffic. A packet
//! from outside the node meets the prefilter on the device's XDP hook, then tc (the
//! endpoint's `to_ep` program on tcx egress of its host-side veth), which looks its source
//! up in the ipcache (an outside address is `world`), applies the endpoint's ingress policy,
//! and delivers it.
//!
//! Namespaces, built with `ip` (iproute2) as `tests/wire_kernel.rs` does, all named
//! `sli-<pid>-<n>[-x]`: the node namespace; an "outside" namespace joined to it by a veth
//! pair (`net0` on the node, `eth0` outside, link net 10.211.0.0/24), whose `eth0` also holds
//! the sources 198.51.100.10 and 203.0.113.10; and one endpoint namespace (`lxcA` on the
//! node, `eth0` in the endpoint, 10.210.0.1/32). Static neighbors everywhere: no ARP. Nothing
//! touches the root namespace, and IPv6 is off in all three, so that only the test's own
//! packets move the counters. Guards delete the namespaces and the pin directory on drop,
//! also when the test panics.
//!
//! The node file: the prefilter denies 203.0.113.0/24; the endpoint admits TCP 8080 from
//! `world` and nothing else. `load_and_pin`, `wire::attach` (with `net0` as the XDP device),
//! `wire::status` and `wire::down` run on a thread inside the node namespace.
//!
//! Gated by `sluice::sys::require_kernel`, and by `ip` being installed (a skip, or a
//! failure under `SLUICE_REQUIRE_KERNEL=1`).

use sluice::model::{self, NodeConfig};
use sluice::node::load;
use sluice::node::plan;
use sluice::node::wire::{self, AttachOptions, Hook, Status};
use sluice::sys::{self, Syscall};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Gate, `ip` and namespaces.

#[path = "support/netns.rs"]
mod netns;
use netns::{gate, ip_output, Netns, PinDir};

const PREFIX: &str = "sli";

fn unique() -> String {
    netns::unique(PREFIX)
}

/// Delete namespaces and pin directories a killed earlier run left behind (its pid is gone).
fn remove_stale() {
    netns::remove_stale(PREFIX, "sluice-ingress-")
}

/// The endpoint's address, the outside's two sources (one the prefilter denies), and the
/// link net between the outside and the node.
const EP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const ALLOWED_SRC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const DENIED_SRC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_NET0: &str = "10.211.0.1";
const OUTSIDE_ETH0: &str = "10.211.0.2";
/// The endpoint's gateway: on-link, resolved by a static neighbor entry to the host side.
const GW4: &str = "169.254.0.1";

const NET0_MAC: &str = "02:00:00:00:21:01";
const OUTSIDE_MAC: &str = "02:00:00:00:21:02";
const LXC_MAC: &str = "02:00:00:00:22:01";
const EP_MAC: &str = "02:00:00:00:22:02";

/// The namespaces, the node file's directory and the pin directory. Field order is drop
/// order: pins first, then the namespaces.
struct Topology {
    pins: PinDir,
    node: Netns,
    outside: Netns,
    endpoint: Netns,
    dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topology {
    fn build() -> Topology {
        remove_stale();
        let base = unique();
        let pins = PinDir(PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-ingress-{base}")));
        let node = Netns::new(base.clone());
        let outside = Netns::new(format!("{base}-o"));
        let endpoint = Netns::new(format!("{base}-e"));
        let dir = std::env::temp_dir().join(format!("sluice-{base}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let topo = Topology { pins, node, outside, endpoint, dir };
        let (node, outside, endpoint) = (&topo.node, &topo.outside, &topo.endpoint);
        // IPv4 only: with IPv6 off in every namespace (before any device exists) there is
        // no neighbor discovery or multicast listener traffic, so the counters move only for
        // what the test sends. No strict reverse-path filtering: the node forwards.
        let quiet = [
            ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
            ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
            ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
        ];
        for ns in [node, outside, endpoint] {
            ns.sysctls(&quiet);
        }
        node.sysctls(&[("/proc/sys/net/ipv4/ip_forward", "1")]);

        // Outside <-> node: net0 / eth0 on 10.211.0.0/24, and the outside's two sources.
        node.ip(&[
            "link",
            "add",
            "net0",
            "address",
            NET0_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            OUTSIDE_MAC,
            "netns",
            &outside.name,
        ]);
        node.ip(&["addr", "add", &format!("{NODE_NET0}/24"), "dev", "net0"]);
        node.ip(&["link", "set", "net0", "up"]);
        node.ip(&["neigh", "add", OUTSIDE_ETH0, "lladdr", OUTSIDE_MAC, "dev", "net0", "nud", "permanent"]);
        outside.ip(&["addr", "add", &format!("{OUTSIDE_ETH0}/24"), "dev", "eth0"]);
        for src in [ALLOWED_SRC, DENIED_SRC] {
            outside.ip(&["addr", "add", &format!("{src}/32"), "dev", "eth0"]);
            node.ip(&["route", "add", &format!("{src}/32"), "via", OUTSIDE_ETH0, "dev", "net0"]);
        }
        outside.ip(&["link", "set", "eth0", "up"]);
        outside.ip(&["neigh", "add", NODE_NET0, "lladdr", NET0_MAC, "dev", "eth0", "nud", "permanent"]);
        outside.ip(&["route", "add", &format!("{EP}/32"), "via", NODE_NET0, "dev", "eth0"]);

        // Node <-> endpoint: lxcA / eth0, the endpoint's /32, default via an on-link gateway.
        let ep = EP.to_string();
        node.ip(&[
            "link",
            "add",
            "lxcA",
            "address",
            LXC_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            EP_MAC,
            "netns",
            &endpoint.name,
        ]);
        endpoint.ip(&["addr", "add", &format!("{ep}/32"), "dev", "eth0"]);
        endpoint.ip(&["link", "set", "eth0", "up"]);
        endpoint.ip(&["route", "add", "default", "via", GW4, "dev", "eth0", "onlink"]);
        endpoint.ip(&["neigh", "add", GW4, "lladdr", LXC_MAC, "dev", "eth0", "nud", "permanent"]);
        node.ip(&["link", "set", "lxcA", "up"]);
        node.ip(&["route", "add", &format!("{ep}/32"), "dev", "lxcA"]);
        node.ip(&["neigh", "add", &ep, "lladdr", EP_MAC, "dev", "lxcA", "nud", "permanent"]);
        topo
    }

    /// Write the node file for this topology and read it back through the model.
    fn node_config(&self) -> NodeConfig {
        let text = format!(
            r#"apiVersion: sluice.dev/v1
kind: Node
metadata:
  name: ingress
spec:
  prefilter:
    deny: ["203.0.113.0/24"]
  endpoints:
    - name: ep-a
      interface: lxcA
      ipv4: {EP}
      labels: {{app: web}}
---
# The endpoint admits TCP 8080 from outside the cluster, nothing else.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-world
spec:
  endpointSelector:
    matchLabels: {{app: web}}
  ingress:
    - fromEntities: [world]
      toPorts:
        - ports:
            - {{port: "8080", protocol: TCP}}
"#
        );
        let path = self.dir.join("node.yaml");
        std::fs::write(&path, text).expect("writes the node file");
        model::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pin_dir(&self) -> &Path {
        &self.pins.0
    }
}

// ---------------------------------------------------------------------------------------
// Traffic.

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A TCP connection from `src` (bound) to `dst`, in the calling thread's namespace, given up
/// after `timeout` (then `TimedOut`).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let sockaddr = |a: Ipv4Addr, port: u16| {
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(a).to_be();
        sa
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sockaddr(src, 0);
    // SAFETY: `local` is a sockaddr_in of `len` bytes that outlives the call.
    if unsafe { libc::bind(fd, std::ptr::from_ref(&local).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(true)?;
    let remote = sockaddr(*dst.ip(), dst.port());
    // SAFETY: as for bind.
    if unsafe { libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Err(ErrorKind::TimedOut.into());
        }
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn accept_within(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// Send `msg` on `from` and read it on `to`; true when it arrived intact.
fn carry(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    to.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    from.write_all(msg).is_ok() && to.read_exact(&mut buf).is_ok() && buf == msg
}

/// A connection from the outside's `src` to the endpoint's `port`: both ends when it
/// connected and the endpoint accepted it, or how the connect failed.
fn connect(
    topo: &Topology,
    listener: &TcpListener,
    src: Ipv4Addr,
    port: u16,
) -> Result<(TcpStream, TcpStream), ErrorKind> {
    let dst = SocketAddrV4::new(EP, port);
    let client = topo.outside.enter(|| connect_from(src, dst, CONNECT_TIMEOUT)).map_err(|e| e.kind())?;
    let server = accept_within(listener, Duration::from_secs(2)).expect("the endpoint accepts");
    assert_eq!(server.peer_addr().expect("peer").ip(), src, "the endpoint sees the outside source");
    Ok((client, server))
}

/// What the pinned counters say now (through `sluice status`).
fn status(sys: &Arc<dyn Syscall>, topo: &Topology) -> Status {
    topo.node.enter(|| wire::status(sys, topo.pin_dir()).unwrap_or_else(|e| panic!("{e}")))
}

/// Growth of a counter between two status reads.
fn grew(before: &Status, after: &Status, scope: &str, reason: &str) -> u64 {
    after.counter(scope, reason) - before.counter(scope, reason)
}

const PF: &str = "prefilter";
const EPS: &str = "endpoint 1 (lxcA)";

/// The counters a probe moves, for messages.
fn moved(before: &Status, after: &Status) -> String {
    let mut parts = Vec::new();
    for c in &after.counters {
        let d = c.count - before.counter(&c.scope, c.reason);
        if d > 0 {
            parts.push(format!("{} {}+{d}", c.scope, c.reason));
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// The test.

#[test]
fn ingress_from_device_to_endpoint() {
    if !gate("ingress_from_device_to_endpoint") {
        return;
    }
    let start = Instant::now();
    let sys = sys::kernel();
    let topo = Topology::build();
    let cfg = topo.node_config();
    let plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let pin = topo.pin_dir().to_path_buf();
    let opts =
        AttachOptions { xdp_device: Some("net0".into()), netlink_only: false, ..AttachOptions::default() };
    let built = start.elapsed();

    // Load and attach in the node namespace: the endpoint's two tcx hooks and the
    // prefilter on net0's XDP hook.
    let t = Instant::now();
    let report = topo.node.enter(|| {
        load::load_and_pin(&sys, &plan, &pin).unwrap_or_else(|e| panic!("{e}"));
        wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}"))
    });
    let attach_time = t.elapsed();
    eprintln!("attach:\n{report}");
    assert_eq!(report.attached.len(), 3, "from_ep_1 and to_ep_1 on lxcA, prefilter on net0: {report}");
    let xdp = report.attached.iter().find(|a| a.want.hook == Hook::Xdp).expect("an XDP hook");
    assert_eq!((xdp.want.program.as_str(), xdp.want.ifname.as_str()), ("prefilter", "net0"));
    let shown = ip_output(&["-n", &topo.node.name, "-d", "link", "show", "net0"]);
    assert!(shown.contains("xdp"), "ip link shows an XDP program on net0:\n{shown}");

    let listener = topo
        .endpoint
        .enter(|| TcpListener::bind(SocketAddrV4::new(EP, 8080)).expect("the endpoint listens on 8080"));

    // 1. World to 8080: passes XDP, tc finds `world` in the ipcache, the policy admits it,
    //    and the reply goes back by conntrack. Data both ways.
    let t = Instant::now();
    let s0 = status(&sys, &topo);
    let (mut client, mut server) = connect(&topo, &listener, ALLOWED_SRC, 8080)
        .unwrap_or_else(|e| panic!("198.51.100.10 -> :8080: {e:?}"));
    assert!(carry(&mut client, &mut server, b"hello from outside"), "outside -> endpoint");
    assert!(carry(&mut server, &mut client, b"hello from the endpoint"), "endpoint -> outside");
    for i in 0..5 {
        let msg = format!("round {i}");
        assert!(
            carry(&mut client, &mut server, msg.as_bytes())
                && carry(&mut server, &mut client, msg.as_bytes())
        );
    }
    let s1 = status(&sys, &topo);
    eprintln!("1. 198.51.100.10 -> :8080 connected, data both ways; counted: {}", moved(&s0, &s1));
    assert!(grew(&s0, &s1, PF, "pass_v4") > 0, "passed the prefilter: {}", moved(&s0, &s1));
    assert_eq!(grew(&s0, &s1, PF, "deny_v4"), 0, "{}", moved(&s0, &s1));
    assert!(grew(&s0, &s1, EPS, "allow_new") > 0, "admitted by policy: {}", moved(&s0, &s1));
    assert!(grew(&s0, &s1, EPS, "allow_established") > 0, "then by conntrack: {}", moved(&s0, &s1));
    assert_eq!(grew(&s0, &s1, EPS, "deny_default"), 0, "{}", moved(&s0, &s1));
    drop((client, server));
    let case1 = t.elapsed();

    // 2. From the denied prefix to 8080 (a listener is there): dropped on XDP, so the
    //    endpoint's programs never see it.
    let t = Instant::now();
    let s0 = status(&sys, &topo);
    let err = connect(&topo, &listener, DENIED_SRC, 8080).map(|_| ()).expect_err("the prefilter drops it");
    let s1 = status(&sys, &topo);
    eprintln!("2. 203.0.113.10 -> :8080: {err:?}; counted: {}", moved(&s0, &s1));
    assert_eq!(err, ErrorKind::TimedOut, "the SYN is dropped, not answered");
    assert!(grew(&s0, &s1, PF, "deny_v4") > 0, "dropped at XDP: {}", moved(&s0, &s1));
    assert_eq!(grew(&s0, &s1, PF, "pass_v4"), 0, "nothing passed XDP: {}", moved(&s0, &s1));
    let seen_at_ep: u64 = s1.counters.iter().filter(|c| c.scope == EPS).map(|c| c.count).sum::<u64>()
        - s0.counters.iter().filter(|c| c.scope == EPS).map(|c| c.count).sum::<u64>();
    assert_eq!(seen_at_ep, 0, "the endpoint's ep_stats saw nothing: {}", moved(&s0, &s1));
    assert!(accept_within(&listener, Duration::from_millis(50)).is_none(), "nothing reached the listener");
    let case2 = t.elapsed();

    // 3. World to 9090 (no listener: without the policy the endpoint would answer with a
    //    reset): passes XDP, dropped by the endpoint's ingress policy.
    let t = Instant::now();
    let s0 = status(&sys, &topo);
    let err = connect(&topo, &listener, ALLOWED_SRC, 9090).map(|_| ()).expect_err("the policy drops it");
    let s1 = status(&sys, &topo);
    eprintln!("3. 198.51.100.10 -> :9090: {err:?}; counted: {}", moved(&s0, &s1));
    assert_eq!(err, ErrorKind::TimedOut, "the SYN is dropped, not refused");
    assert!(grew(&s0, &s1, PF, "pass_v4") > 0, "passed the prefilter: {}", moved(&s0, &s1));
    assert_eq!(grew(&s0, &s1, PF, "deny_v4"), 0, "{}", moved(&s0, &s1));
    assert!(grew(&s0, &s1, EPS, "deny_default") > 0, "dropped by ingress policy: {}", moved(&s0, &s1));
    assert_eq!(grew(&s0, &s1, EPS, "allow_new"), 0, "{}", moved(&s0, &s1));
    let case3 = t.elapsed();

    // 4. Down: no pins left, no XDP program on net0, and what was denied flows.
    let t = Instant::now();
    let down = topo.node.enter(|| wire::down(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    eprintln!("down:\n{down}");
    assert!(down.warnings.is_empty(), "{down}");
    assert!(!pin.exists(), "no pins left under {}", pin.display());
    let shown = ip_output(&["-n", &topo.node.name, "-d", "link", "show", "net0"]);
    assert!(!shown.contains("xdp"), "no XDP program left on net0:\n{shown}");
    let (mut client, mut server) = connect(&topo, &listener, DENIED_SRC, 8080)
        .unwrap_or_else(|e| panic!("with nothing attached, 203.0.113.10 -> :8080: {e:?}"));
    assert!(carry(&mut client, &mut server, b"after down") && carry(&mut server, &mut client, b"ack"));
    let refused = connect(&topo, &listener, ALLOWED_SRC, 9090).map(|_| ()).expect_err("no listener on 9090");
    assert_eq!(refused, ErrorKind::ConnectionRefused, "with nothing attached, the endpoint answers");
    let down_time = t.elapsed();
    drop((client, server, listener));
    drop(topo);
    eprintln!(
        "timings: topology {built:?}, load+attach {attach_time:?}, allowed {case1:?}, prefilter drop {case2:?}, \
         policy drop {case3:?}, down {down_time:?}, total {:?}",
        start.elapsed()
    );
}
