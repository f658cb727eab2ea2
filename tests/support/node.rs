//! A node namespace with endpoint namespaces routed through it (IPv4 only, IPv6 off), for
//! the daemon's end-to-end tests, and UDP probes between endpoints. Included with
//! `#[path = "support/node.rs"] mod node;` next to `mod netns;`.
//!
//! Each endpoint namespace holds `eth0` (its address /32, a default route to an on-link
//! gateway whose neighbor entry is the host side's MAC); the node namespace holds the host
//! sides, a /32 route and a static neighbor per endpoint, forwarding on. No ARP, nothing
//! in the root namespace. Endpoints are dropped before the node namespace.
#![allow(dead_code)]

use super::netns::Netns;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const NO_V6: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
];
const GW4: &str = "169.254.0.1";

/// One endpoint namespace and the host side of its veth.
pub struct Endpoint {
    pub ns: Netns,
    pub host_if: String,
    pub v4: Ipv4Addr,
}

/// The node namespace and its endpoints (dropped first).
pub struct NodeNet {
    pub endpoints: Vec<Endpoint>,
    pub node: Netns,
}

impl NodeNet {
    /// A node namespace `<base>` and one namespace `<base>-<i>` per `(host_if, address)`.
    pub fn build(base: &str, endpoints: &[(&str, Ipv4Addr)]) -> NodeNet {
        let node = Netns::new(base.to_string());
        node.sysctls(&NO_V6);
        node.sysctls(&[
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
        ]);
        let mut net = NodeNet { endpoints: Vec::new(), node };
        for (i, (host_if, v4)) in endpoints.iter().enumerate() {
            let ns = Netns::new(format!("{base}-{i}"));
            ns.sysctls(&NO_V6);
            let (host_mac, ep_mac) = (format!("02:00:00:02:{i:02x}:01"), format!("02:00:00:02:{i:02x}:02"));
            let v4s = v4.to_string();
            net.node.ip(&[
                "link", "add", host_if, "address", &host_mac, "type", "veth", "peer", "name", "eth0",
                "address", &ep_mac, "netns", &ns.name,
            ]);
            ns.ip(&["addr", "add", &format!("{v4s}/32"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", GW4, "dev", "eth0", "onlink"]);
            ns.ip(&["neigh", "add", GW4, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            net.node.ip(&["link", "set", host_if, "up"]);
            net.node.ip(&["route", "add", &format!("{v4s}/32"), "dev", host_if]);
            net.node.ip(&["neigh", "add", &v4s, "lladdr", &ep_mac, "dev", host_if, "nud", "permanent"]);
            net.endpoints.push(Endpoint { ns, host_if: host_if.to_string(), v4: *v4 });
        }
        net
    }

    /// The endpoint whose host side is `host_if`.
    pub fn ep(&self, host_if: &str) -> &Endpoint {
        self.endpoints
            .iter()
            .find(|e| e.host_if == host_if)
            .unwrap_or_else(|| panic!("no endpoint on {host_if}"))
    }
}

/// Whether a UDP datagram from `from` reaches `to`'s `port`: up to `tries` datagrams 100 ms
/// apart, each waited for up to 300 ms.
pub fn udp_reaches(from: &Endpoint, to: &Endpoint, port: u16, tries: u32) -> bool {
    let dst = SocketAddr::from((to.v4, port));
    let rx = to.ns.enter(|| UdpSocket::bind(dst).unwrap_or_else(|e| panic!("bind {dst}: {e}")));
    rx.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let tx = from.ns.enter(|| UdpSocket::bind(SocketAddr::from((from.v4, 0))).expect("bind sender"));
    let mut buf = [0u8; 64];
    for i in 0..tries {
        let msg = format!("probe {i}");
        tx.send_to(msg.as_bytes(), dst).unwrap_or_else(|e| panic!("send to {dst}: {e}"));
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            match rx.recv(&mut buf) {
                Ok(n) if &buf[..n] == msg.as_bytes() => return true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Move the calling thread into the namespace `/run/netns/<name>` (for a thread that
/// outlives any one [`Netns::enter`] call, such as a daemon's).
pub fn join_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `ns` is an open namespace file; setns changes only this thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}
