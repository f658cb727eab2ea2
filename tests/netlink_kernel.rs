//! Kernel tests of `sluice::netlink`: namespaces, veth pairs, addresses, routes,
//! neighbours, VXLAN, clsact + cls_bpf and XDP, with real ICMP traffic between namespaces.
//!
//! Every test starts with `require_kernel` (skips without bpf(), fails instead when
//! `SLUICE_REQUIRE_KERNEL=1`) and touches only namespaces it creates: nothing is added to or
//! changed in the root namespace. Namespaces are named with the process id and a counter
//! and deleted on drop, also when a test panics; each test ends by checking that
//! `/run/netns` holds none of its names. `ip` only verifies what the kernel holds (and runs
//! `ping` when the host has it); the traffic itself is ICMP echo sent from a raw socket on
//! a thread inside the sending namespace, so the tests need no `ping` binary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::model::Cidr;
use sluice::netlink::msg::{flags, rtm, Request, TcMsg};
use sluice::netlink::tc::TC_H_CLSACT;
use sluice::netlink::{
    sysctl, NetNs, Netlink, NetlinkError, Route, TcDirection, Vxlan, XdpAttached, XdpMode,
};
use sluice::sys::{self, Map, MapKind, MapSpec, ProgSpec, ProgType, Program, Syscall};
use sluice_asm::{Builder, Reg, Size};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const XDP_PASS: i32 = 2;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call.
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sluice-{prefix}-{}-{n}", std::process::id())
}

fn kernel() -> Arc<dyn Syscall> {
    sys::kernel()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse::<Ipv6Addr>().expect("test address"))
}

fn cidr(text: &str) -> Cidr {
    text.parse().expect("test CIDR")
}

/// Fail the test if any of `names` is still under /run/netns.
fn assert_gone(names: &[String]) {
    for name in names {
        assert!(!Path::new("/run/netns").join(name).exists(), "netns {name} left behind");
    }
}

/// `ip ARGS...`, which must succeed; its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_ping_binary() -> bool {
    Command::new("sh").args(["-c", "command -v ping"]).output().is_ok_and(|o| o.status.success())
}

/// Two namespaces joined by a veth pair `va` (in A) / `vb` (in B), both up, with
/// 10.200.0.1/24 + fd00:200::1/64 on `va` and .2 / ::2 on `vb`.
struct Pair {
    a: NetNs,
    b: NetNs,
    nl_a: Netlink,
    nl_b: Netlink,
    va: u32,
    vb: u32,
}

const A4: [u8; 4] = [10, 200, 0, 1];
const B4: [u8; 4] = [10, 200, 0, 2];

impl Pair {
    fn new() -> Pair {
        let a = NetNs::create(&unique("a")).expect("netns A");
        let b = NetNs::create(&unique("b")).expect("netns B");
        let nl_a = Netlink::open_in(&a).expect("netlink in A");
        let nl_b = Netlink::open_in(&b).expect("netlink in B");
        let va = nl_a.create_veth("va", "vb", Some(&b)).expect("veth va/vb across A and B");
        let vb = nl_b.ifindex("vb").expect("the peer is in B");
        for (nl, dev, own4, own6) in [(&nl_a, va, A4, "fd00:200::1"), (&nl_b, vb, B4, "fd00:200::2")] {
            nl.set_up(nl.ifindex("lo").expect("lo")).expect("lo up");
            nl.add_address(dev, IpAddr::from(own4), 24).expect("IPv4 address");
            nl.add_address(dev, v6(own6), 64).expect("IPv6 address");
            nl.set_up(dev).expect("veth up");
        }
        Pair { a, b, nl_a, nl_b, va, vb }
    }

    fn names(&self) -> Vec<String> {
        vec![self.a.name().to_string(), self.b.name().to_string()]
    }

    /// One ICMP echo from A to `dst`, answered within a second.
    fn ping_from_a(&self, dst: IpAddr) -> bool {
        self.a.run_in(|| icmp_echo(dst, Duration::from_secs(1))).expect("thread in A")
    }

    /// A ping that should get through: up to three echoes (a loaded CI machine can hold
    /// the first one past its second while the neighbour is resolved). Checks that expect
    /// a drop use [`Pair::ping_from_a`]: one lost echo is the answer there.
    fn reaches(&self, dst: IpAddr) -> bool {
        (0..3).any(|_| self.ping_from_a(dst))
    }
}

/// Send one ICMP (or ICMPv6) echo request to `dst` from a raw socket in the calling
/// thread's namespace; true when the matching reply arrives before `wait` is over.
fn icmp_echo(dst: IpAddr, wait: Duration) -> bool {
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let (domain, proto, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor we own from here on.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };

    let mut packet = vec![request, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"sluice netlink!!");
    if dst.is_ipv4() {
        // The kernel fills in the ICMPv6 checksum itself, not the ICMP one.
        let sum = sluice::packet::checksum::internet(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let sent = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: valid buffer and address of the given sizes.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: valid buffer and address of the given sizes.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if sent < 0 {
        return false; // e.g. ENETUNREACH: no route
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let timeout = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: valid timeval of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return false; // timed out
        }
        let got = &buf[..n as usize];
        // IPv4 raw sockets deliver the IP header too; ICMPv6 ones do not.
        let icmp =
            if dst.is_ipv4() { got.get(usize::from(got[0] & 0x0f) * 4..).unwrap_or_default() } else { got };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return true;
        }
    }
    false
}

#[test]
fn namespaces_enter_run_in_and_clean_up() {
    if !sys::require_kernel("namespaces_enter_run_in_and_clean_up") {
        return;
    }
    let here = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let name = unique("ns");
    let ns = NetNs::create(&name).expect("create");
    assert!(Path::new("/run/netns").join(&name).exists());
    assert!(ip(&["netns", "list"]).contains(&name), "ip netns sees it");

    // A second namespace of the same name is refused and leaves the first alone.
    let err = NetNs::create(&name).unwrap_err();
    assert!(err.to_string().contains(&name) && err.errno() == Some(sys::Errno(libc::EEXIST)), "{err}");

    {
        let _inside = ns.enter().expect("enter");
        assert_ne!(std::fs::read_link("/proc/thread-self/ns/net").expect("netns"), here);
        let nl = Netlink::open().expect("netlink inside");
        let links = nl.links().expect("dump");
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lo"],
            "a fresh netns has only lo"
        );
    }
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").expect("netns"),
        here,
        "the guard moved us back"
    );

    // run_in: a value comes back, a panic is resumed in the caller.
    let inode = ns.run_in(|| std::fs::read_link("/proc/thread-self/ns/net").expect("netns")).expect("run_in");
    assert_ne!(inode, here);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ns.run_in(|| panic!("inside"))));
    assert!(panicked.is_err());

    // open() adopts without owning; keep() leaves it; delete() removes it.
    let opened = NetNs::open(&name).expect("open");
    drop(opened);
    assert!(Path::new("/run/netns").join(&name).exists(), "dropping an opened netns keeps it");
    let mut ns = ns;
    ns.keep();
    drop(ns);
    assert!(Path::new("/run/netns").join(&name).exists(), "kept");
    NetNs::open(&name).expect("reopen").delete().expect("delete");

    // Dropped while unwinding: still deleted.
    let doomed = unique("ns");
    let unwound = std::panic::catch_unwind(|| {
        let _ns = NetNs::create(&doomed).expect("create");
        panic!("test failure while the netns exists");
    });
    assert!(unwound.is_err());
    assert!(NetNs::open("../etc").is_err() && NetNs::create("").is_err());
    assert_gone(&[name, doomed]);
}

#[test]
fn veth_addresses_routes_and_neighbors_carry_ping() {
    if !sys::require_kernel("veth_addresses_routes_and_neighbors_carry_ping") {
        return;
    }
    let pair = Pair::new();
    let names = pair.names();
    let (nl_a, nl_b) = (&pair.nl_a, &pair.nl_b);

    let va = nl_a.link_info(pair.va).expect("link info");
    assert_eq!((va.name.as_str(), va.kind.as_deref(), va.mtu), ("va", Some("veth"), 1500));
    assert!(va.is_up());
    let vb_mac = nl_b.link_info(pair.vb).expect("vb").mac.expect("veth has a MAC");
    assert!(nl_a.ifindex("vb").unwrap_err().is_not_found(), "the peer went straight to B");

    nl_a.set_mtu(pair.va, 1400).expect("mtu");
    assert_eq!(nl_a.link_info(pair.va).expect("info").mtu, 1400);
    nl_a.set_mac(pair.va, [0x02, 0, 0, 0, 0xaa, 1]).expect("mac");
    assert_eq!(nl_a.link_by_name("va").expect("by name").mac, Some([0x02, 0, 0, 0, 0xaa, 1]));

    let addrs: Vec<(IpAddr, u8)> =
        nl_a.addresses(Some(pair.va)).expect("dump").iter().map(|a| (a.addr, a.prefix_len)).collect();
    assert!(addrs.contains(&(IpAddr::from(A4), 24)) && addrs.contains(&(v6("fd00:200::1"), 64)), "{addrs:?}");
    assert!(ip(&["-n", pair.a.name(), "addr", "show", "dev", "va"]).contains("10.200.0.1/24"));

    // Directly connected, both families.
    assert!(pair.reaches(IpAddr::from(B4)), "IPv4 ping over the veth");
    assert!(pair.reaches(v6("fd00:200::2")), "IPv6 ping over the veth");
    if has_ping_binary() {
        ip(&["netns", "exec", pair.a.name(), "ping", "-c1", "-W1", "10.200.0.2"]);
    }

    // A routed prefix behind B, via B's address.
    nl_b.add_address(nl_b.ifindex("lo").expect("lo"), v4(10, 201, 0, 1), 32).expect("address on B's lo");
    assert!(!pair.ping_from_a(v4(10, 201, 0, 1)), "no route yet");
    let via_b = Route::new(cidr("10.201.0.0/24")).via(IpAddr::from(B4)).dev(pair.va);
    nl_a.add_route(&via_b).expect("route");
    assert!(nl_a.add_route(&via_b).unwrap_err().is_exists(), "adding is exclusive");
    assert!(ip(&["-n", pair.a.name(), "route", "show"]).contains("10.201.0.0/24 via 10.200.0.2 dev va"));
    assert!(pair.reaches(v4(10, 201, 0, 1)), "ping through the route");
    nl_a.delete_route(&via_b).expect("delete route");
    assert!(!pair.ping_from_a(v4(10, 201, 0, 1)), "route gone");

    // An endpoint-style route: a gateway outside every subnet, onlink, with a static
    // neighbour entry for its MAC (B's vb).
    let gw = v4(169, 254, 1, 1);
    nl_b.add_address(nl_b.ifindex("lo").expect("lo"), v4(10, 202, 0, 1), 32).expect("address on B's lo");
    nl_a.add_neighbor(pair.va, gw, vb_mac).expect("neighbour");
    nl_a.add_neighbor(pair.va, gw, vb_mac).expect("replacing the same entry is fine");
    let onlink = Route::new(cidr("10.202.0.0/24")).via(gw).dev(pair.va).onlink();
    nl_a.add_route(&onlink).expect("onlink route");
    let routes = ip(&["-n", pair.a.name(), "route", "show"]);
    assert!(routes.contains("10.202.0.0/24 via 169.254.1.1 dev va proto static onlink"), "{routes}");
    assert!(ip(&["-n", pair.a.name(), "neigh", "show", "dev", "va"]).contains("169.254.1.1 lladdr"));
    assert!(pair.reaches(v4(10, 202, 0, 1)), "ping via the static gateway");
    nl_a.delete_route(&onlink).expect("delete onlink route");
    nl_a.delete_neighbor(pair.va, gw).expect("delete neighbour");
    assert!(!ip(&["-n", pair.a.name(), "neigh", "show", "dev", "va"]).contains("169.254.1.1"));

    // An IPv6 route.
    nl_b.add_address(nl_b.ifindex("lo").expect("lo"), v6("fd00:201::1"), 128).expect("v6 on B's lo");
    let v6_route = Route::new(cidr("fd00:201::/64")).via(v6("fd00:200::2")).dev(pair.va);
    nl_a.add_route(&v6_route).expect("v6 route");
    assert!(pair.reaches(v6("fd00:201::1")), "IPv6 ping through the route");
    nl_a.delete_route(&v6_route).expect("delete v6 route");

    // Address removal.
    nl_a.delete_address(pair.va, v6("fd00:200::1"), 64).expect("delete address");
    assert!(!nl_a.addresses(Some(pair.va)).expect("dump").iter().any(|a| a.addr == v6("fd00:200::1")));

    // Moving a link between namespaces; deleting one end takes the peer.
    let vc = nl_a.create_veth("vc", "vd", None).expect("local pair");
    let vd = nl_a.ifindex("vd").expect("vd here");
    nl_a.move_to_netns(vd, &pair.b).expect("move vd to B");
    assert!(nl_a.ifindex("vd").unwrap_err().is_not_found());
    nl_b.ifindex("vd").expect("vd is in B");
    nl_a.delete_link(vc).expect("delete vc");
    assert!(nl_b.ifindex("vd").unwrap_err().is_not_found(), "the peer went with it");

    // Sysctls are per namespace: set in A, the root namespace keeps its value.
    let root_forward = sysctl::read(None, "net.ipv4.ip_forward").expect("root value");
    sysctl::ip_forward(Some(&pair.a), true).expect("ip_forward in A");
    sysctl::ipv6_forwarding(Some(&pair.a), true).expect("ipv6 forwarding in A");
    sysctl::proxy_arp(Some(&pair.a), "va", true).expect("proxy_arp on va");
    assert_eq!(sysctl::read(Some(&pair.a), "net.ipv4.ip_forward").expect("read"), "1");
    assert_eq!(sysctl::read(Some(&pair.a), "net.ipv4.conf.va.proxy_arp").expect("read"), "1");
    assert_eq!(sysctl::read(Some(&pair.b), "net.ipv4.ip_forward").expect("read"), "0", "B untouched");
    assert_eq!(sysctl::read(None, "net.ipv4.ip_forward").expect("read"), root_forward, "root untouched");
    let err = sysctl::proxy_arp(Some(&pair.a), "nosuchdev", true).unwrap_err();
    assert!(err.to_string().contains("nosuchdev") && err.to_string().contains(pair.a.name()), "{err}");

    drop(pair);
    assert_gone(&names);
}

#[test]
fn vxlan_devices_are_created() {
    if !sys::require_kernel("vxlan_devices_are_created") {
        return;
    }
    let ns = NetNs::create(&unique("vx")).expect("netns");
    let names = vec![ns.name().to_string()];
    let nl = Netlink::open_in(&ns).expect("netlink");
    let under = nl.create_veth("u0", "u1", None).expect("underlay");
    nl.add_address(under, v4(10, 203, 0, 1), 24).expect("underlay address");

    let spec = Vxlan::new("vx0", 42).local(v4(10, 203, 0, 1)).remote(v4(10, 203, 0, 2)).dev(under).ttl(64);
    let vx0 = nl.create_vxlan(&spec).expect("vxlan");
    nl.set_up(under).expect("underlay up");
    nl.set_up(vx0).expect("vxlan up");
    let info = nl.link_info(vx0).expect("info");
    assert_eq!(info.kind.as_deref(), Some("vxlan"));
    let shown = ip(&["-n", ns.name(), "-d", "link", "show", "vx0"]);
    for needle in
        ["vxlan id 42", "remote 10.203.0.2", "local 10.203.0.1", "dev u0", "dstport 4789", "nolearning"]
    {
        assert!(shown.contains(needle), "{needle:?} missing from {shown}");
    }

    // Collect-metadata (external) for an eBPF-driven overlay, and IPv6 endpoints.
    let external = nl.create_vxlan(&Vxlan::new("vx1", 0).port(8472).external()).expect("external vxlan");
    assert!(ip(&["-n", ns.name(), "-d", "link", "show", "vx1"]).contains("external"));
    nl.create_vxlan(&Vxlan::new("vx6", 7).local(v6("fd00:203::1")).remote(v6("fd00:203::2"))).expect("v6");
    assert!(ip(&["-n", ns.name(), "-d", "link", "show", "vx6"]).contains("remote fd00:203::2"));

    // Checked before sending; an existing name is refused by the kernel.
    assert!(matches!(nl.create_vxlan(&Vxlan::new("vx2", 1 << 24)), Err(NetlinkError::Invalid { .. })));
    let dup = nl.create_vxlan(&Vxlan::new("vx0", 43)).unwrap_err();
    assert!(dup.is_exists() && dup.to_string().contains("RTM_NEWLINK vxlan vx0"), "{dup}");

    nl.delete_link(external).expect("delete vx1");
    assert!(nl.ifindex("vx1").unwrap_err().is_not_found());
    drop(ns);
    assert_gone(&names);
}

/// A sched_cls program that adds one to the u64 in `counter[0]` and returns `verdict`.
fn counting_program(counter: &Map, verdict: i32, name: &str) -> Program {
    let mut b = Builder::new();
    b.ld_map_value(Reg::R1, "counter", 0);
    b.load(Size::DW, Reg::R2, Reg::R1, 0);
    b.add(Reg::R2, 1);
    b.store(Size::DW, Reg::R1, 0, Reg::R2);
    b.ret(verdict);
    let program = b.build().expect("builds");
    let bound = program
        .relocate(|map| (map == "counter").then(|| counter.fd().as_raw_fd()))
        .expect("the map resolves");
    let bytes = bound.encode().expect("encodes");
    Program::load(&kernel(), &ProgSpec::new(name, ProgType::SchedCls, &bytes))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn count(counter: &Map) -> u64 {
    let value = counter.lookup(&0u32.to_ne_bytes()).expect("lookup").expect("array slot exists");
    u64::from_ne_bytes(value[..8].try_into().expect("8 bytes"))
}

#[test]
fn clsact_bpf_filters_count_drop_and_detach() {
    if !sys::require_kernel("clsact_bpf_filters_count_drop_and_detach") {
        return;
    }
    let pair = Pair::new();
    let names = pair.names();
    let nl = &pair.nl_a;
    let counter = Map::create(&kernel(), &MapSpec::new("nl_counter", MapKind::Array, 4, 8, 1)).expect("map");
    let pass = counting_program(&counter, TC_ACT_OK, "nl_count_ok");
    let drop_all = counting_program(&counter, TC_ACT_SHOT, "nl_count_shot");
    assert!(pair.reaches(IpAddr::from(B4)), "baseline");

    assert!(nl.add_clsact(pair.va).expect("clsact"), "created");
    assert!(!nl.add_clsact(pair.va).expect("clsact again"), "an existing clsact is fine");

    let filter = nl
        .attach_bpf_filter(pair.va, TcDirection::Ingress, 1, 1, pass.fd(), "nl_count_ok")
        .expect("attach cls_bpf");
    assert_eq!((filter.ifindex, filter.prio, filter.handle), (pair.va, 1, 1));
    assert_eq!(filter.direction(), Some(TcDirection::Ingress));
    let dup = nl.attach_bpf_filter(pair.va, TcDirection::Ingress, 1, 1, pass.fd(), "again").unwrap_err();
    assert!(dup.is_exists() && dup.to_string().contains("RTM_NEWTFILTER"), "{dup}");

    let shown = nl.filters(pair.va, TcDirection::Ingress).expect("dump filters");
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].filter, filter);
    assert_eq!((shown[0].kind.as_str(), shown[0].name.as_deref()), ("bpf", Some("nl_count_ok")));
    assert_eq!(shown[0].prog_id, Some(pass.id()));
    assert!(shown[0].direct_action);
    assert!(nl.filters(pair.va, TcDirection::Egress).expect("dump").is_empty());

    let before = count(&counter);
    assert!(pair.reaches(IpAddr::from(B4)), "TC_ACT_OK lets the reply in");
    assert!(count(&counter) > before, "the program saw the reply");

    nl.replace_bpf_filter(&filter, drop_all.fd(), "nl_count_shot").expect("replace in place");
    assert_eq!(nl.filters(pair.va, TcDirection::Ingress).expect("dump")[0].prog_id, Some(drop_all.id()));
    let before = count(&counter);
    assert!(!pair.ping_from_a(IpAddr::from(B4)), "TC_ACT_SHOT drops the reply");
    assert!(count(&counter) > before, "and counted it");

    nl.delete_filter(&filter).expect("delete filter");
    assert!(nl.filters(pair.va, TcDirection::Ingress).expect("dump").is_empty());
    assert!(pair.reaches(IpAddr::from(B4)), "traffic flows again");
    assert!(nl.delete_filter(&filter).unwrap_err().is_not_found(), "already gone");

    // An egress filter, then deleting the qdisc takes every filter with it.
    nl.attach_bpf_filter(pair.va, TcDirection::Egress, 7, 3, pass.fd(), "nl_egress").expect("egress filter");
    assert_eq!(nl.filters(pair.va, TcDirection::Egress).expect("dump")[0].filter.prio, 7);
    nl.delete_clsact(pair.va).expect("delete clsact");
    assert!(!nl.qdiscs(pair.va).expect("qdiscs").iter().any(|q| q.kind == "clsact"));

    // An `ingress` qdisc in clsact's place is named, not mistaken for clsact.
    let mut ingress = Request::new(rtm::NEWQDISC, flags::CREATE | flags::EXCL, "ingress qdisc");
    ingress
        .header(&TcMsg {
            ifindex: pair.vb as i32,
            handle: 0xFFFF_0000,
            parent: TC_H_CLSACT,
            ..TcMsg::default()
        })
        .attr_str(1, "ingress");
    pair.nl_b.ack(&mut ingress).expect("ingress qdisc");
    let err = pair.nl_b.add_clsact(pair.vb).unwrap_err();
    assert!(err.to_string().contains("`ingress` qdisc occupies"), "{err}");

    drop(pair);
    assert_gone(&names);
}

fn xdp_pass(name: &str) -> Program {
    let mut b = Builder::new();
    b.ret(XDP_PASS);
    let bytes = b.build().expect("builds").encode().expect("encodes");
    Program::load(&kernel(), &ProgSpec::new(name, ProgType::Xdp, &bytes))
        .unwrap_or_else(|e| panic!("load: {e}"))
}

#[test]
fn xdp_attach_replace_and_detach() {
    if !sys::require_kernel("xdp_attach_replace_and_detach") {
        return;
    }
    let pair = Pair::new();
    let names = pair.names();
    let nl = &pair.nl_a;
    let first = xdp_pass("nl_xdp_first");
    let second = xdp_pass("nl_xdp_second");
    assert_eq!(nl.xdp_info(pair.va).expect("info").attached, XdpAttached::None);

    nl.xdp_attach(pair.va, first.fd(), XdpMode::Skb).expect("attach");
    let info = nl.xdp_info(pair.va).expect("info");
    assert_eq!((info.attached, info.prog_id_in(XdpMode::Skb)), (XdpAttached::Skb, Some(first.id())));
    assert!(ip(&["-n", pair.a.name(), "link", "show", "va"]).contains("xdpgeneric"));
    assert!(pair.reaches(IpAddr::from(B4)), "XDP_PASS passes");

    // Attaching over an attached program is refused, with the kernel's reason.
    let busy = nl.xdp_attach(pair.va, second.fd(), XdpMode::Skb).unwrap_err();
    assert_eq!(busy.errno(), Some(sys::Errno(libc::EBUSY)), "{busy}");
    assert!(busy.ext_ack().is_some(), "the kernel explains: {busy}");

    nl.xdp_replace(pair.va, second.fd(), first.fd(), XdpMode::Skb).expect("replace");
    assert_eq!(nl.xdp_info(pair.va).expect("info").prog_id_in(XdpMode::Skb), Some(second.id()));

    // A replace or detach that expects the wrong program changes nothing.
    let stale = nl.xdp_replace(pair.va, first.fd(), first.fd(), XdpMode::Skb).unwrap_err();
    assert!(stale.ext_ack().is_some(), "{stale}");
    assert!(nl.xdp_detach(pair.va, Some(first.fd()), XdpMode::Skb).is_err());
    assert_eq!(nl.xdp_info(pair.va).expect("info").prog_id_in(XdpMode::Skb), Some(second.id()));

    nl.xdp_detach(pair.va, Some(second.fd()), XdpMode::Skb).expect("safe detach");
    assert_eq!(nl.xdp_info(pair.va).expect("info").attached, XdpAttached::None);
    assert!(!ip(&["-n", pair.a.name(), "link", "show", "va"]).contains("xdp"));

    // Unconditional detach of nothing is fine too.
    nl.xdp_detach(pair.va, None, XdpMode::Skb).expect("detach nothing");
    drop(pair);
    assert_gone(&names);
}

#[test]
fn errors_carry_request_errno_and_ext_ack() {
    if !sys::require_kernel("errors_carry_request_errno_and_ext_ack") {
        return;
    }
    let ns = NetNs::create(&unique("err")).expect("netns");
    let names = vec![ns.name().to_string()];
    let nl = Netlink::open_in(&ns).expect("netlink");

    let err = nl.add_address(9999, v4(10, 204, 0, 1), 24).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("RTM_NEWADDR 10.204.0.1/24 on ifindex 9999 failed: ENODEV (19)"), "{text}");
    assert!(err.ext_ack().is_some_and(|m| m.contains("Device not found")), "{text}");

    let dev = nl.create_veth("e0", "e1", None).expect("veth");
    let dup = nl.create_veth("e0", "e2", None).unwrap_err();
    assert!(dup.to_string().starts_with("RTM_NEWLINK veth e0/e2 failed: EEXIST (17)"), "{dup}");

    let mtu = nl.set_mtu(dev, 10).unwrap_err();
    assert!(mtu.ext_ack().is_some_and(|m| m.contains("mtu")), "{mtu}");

    nl.add_address(dev, v4(10, 204, 0, 1), 24).expect("address");
    let again = nl.add_address(dev, v4(10, 204, 0, 1), 24).unwrap_err();
    assert!(again.is_exists() && again.ext_ack().is_some(), "{again}");

    let unknown = nl.ifindex("nosuch0").unwrap_err();
    assert!(unknown.is_not_found() && unknown.to_string().contains("RTM_GETLINK link nosuch0"), "{unknown}");
    assert!(matches!(nl.ifindex("bad/name"), Err(NetlinkError::Invalid { .. })));

    drop(nl);
    drop(ns);
    assert_gone(&names);
}
