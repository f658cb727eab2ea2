//! Two nodes in namespaces with WireGuard between them: the built-in default node (sluice's
//! programs, `sluice_wg` served by [`sluice::encrypt::wg`]) and its overlay peer `node-2`, whose own
//! `sluice_wg` (the same userspace WireGuard, no sluice programs) holds its pod addresses.
//! What the encryption tests, `sluice demo --encrypt` and the encryption benchmark run.
//!
//! The lab is [`super::lab::Lab`] with the peer's VXLAN device replaced by WireGuard:
//! the node file gets `spec.encryption: {mode: wireguard}` and the peer's public key
//! (right, wrong or missing: [`PeerKey`]). [`Capture`] records every frame on the node's
//! underlay device (`underlay0`) with an `AF_PACKET` socket, and [`underlay_leaks`] says
//! which of them are not WireGuard or carry a plaintext marker.
//!
//! Dropping a [`WgLab`] stops both WireGuard threads, detaches the node's programs, removes
//! its pins and state directory, then the namespaces.

use super::lab::Lab;
use super::traffic::{self, Outcome, Proto};
use super::{self as demo, Expect, Flow, Outside, Side};
use sluice::encrypt::keys::{NodeKey, StaticKeys};
use sluice::encrypt::wg::{DeviceConfig, PeerConfig, Userspace};
use sluice::encrypt::EncryptError;
use sluice::model::encryption::{DEFAULT_WIREGUARD_PORT, WIREGUARD_DEVICE};
use sluice::model::{Cidr, NodeConfig};
use sluice::netlink::{NetNs, Netlink};
use sluice::node::wire::{self, AttachOptions};
use sluice::node::{self, forward, load};
use sluice::sys::Syscall;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What the node file says about the peer's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKey {
    Right,
    /// Another node's key: handshakes fail both ways.
    Wrong,
    /// No `wireguard` for the peer: the node has no WireGuard peer for its prefixes.
    Missing,
}

/// The strings a probe carries (`super::traffic`): never on the underlay in the clear.
pub const MARKERS: [&[u8]; 2] = [b"sluice probe", b"sluice answer"];

/// An extra policy: the frontend may ping the peer's IPv4 pods.
const PING_PEER: &str = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-pings-node-2
  namespace: shop
spec:
  endpointSelector:
    matchLabels: {app: frontend}
  egress:
    - toCIDR: [10.0.2.0/24]
      icmps:
        - fields:
            - {type: 8, family: IPv4}
";

/// The default node's text with WireGuard on and the peer's key as chosen.
pub fn node_text(peer_public: &str, choice: PeerKey) -> String {
    let text = include_str!("../../fixtures/default-node.yaml");
    let prefixes = "        prefixes: [10.0.2.0/24, \"fd00:0:2::/64\"]\n";
    let key = match choice {
        PeerKey::Right => format!("        wireguard: {{publicKey: \"{peer_public}\"}}\n"),
        PeerKey::Wrong => {
            let other = NodeKey::from_secret([0x5a; 32]).public_base64();
            format!("        wireguard: {{publicKey: \"{other}\"}}\n")
        }
        PeerKey::Missing => String::new(),
    };
    let text = text.replacen(prefixes, &format!("{prefixes}{key}"), 1).replacen(
        "  overlay:\n",
        "  encryption: {mode: wireguard}\n  overlay:\n",
        1,
    );
    // The default node lets no endpoint ping the peer; the lab lets the frontend, so ICMP
    // crosses too.
    format!("{text}{PING_PEER}")
}

/// Two nodes with WireGuard between them (see the module header).
#[derive(Debug)]
pub struct WgLab {
    /// The peer node's public key (base64), as a node file names it.
    pub peer_public: String,
    pub node_wg: Userspace,
    pub peer_wg: Userspace,
    pub cfg: NodeConfig,
    pub state_dir: PathBuf,
    sys: Arc<dyn Syscall>,
    pin: PathBuf,
    lab: Lab,
}

impl WgLab {
    /// Build it; `prefix` names namespaces, pins and the state directory (unique per test).
    pub fn build(prefix: &str, choice: PeerKey) -> Result<WgLab, String> {
        let peer_key = NodeKey::generate().map_err(|e| e.to_string())?;
        let peer_public = peer_key.public_base64();
        let text = node_text(&peer_public, choice);
        let cfg = sluice::model::parse_str(&text, "encrypt-lab").map_err(|e| e.to_string())?;
        let lab = Lab::build(&cfg, prefix).map_err(|e| e.to_string())?;
        let state_dir = std::env::temp_dir().join(format!("{prefix}-state"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let node_key = NodeKey::load_or_create(&state_dir).map_err(|e| e.to_string())?;
        let overlay = cfg.overlay.as_ref().ok_or("the default node has an overlay")?;
        let peer_ns = lab.peer.as_ref().ok_or("the lab has a peer")?;
        // The peer: its VXLAN device goes, WireGuard holds its pod addresses instead.
        let pnl = Netlink::open_in(peer_ns).map_err(|e| e.to_string())?;
        let vx = pnl.ifindex("vx0").map_err(|e| e.to_string())?;
        pnl.delete_link(vx).map_err(|e| e.to_string())?;
        let node_pods: Vec<Cidr> = cfg.endpoints.iter().flat_map(|e| e.addresses()).map(Cidr::host).collect();
        let dev = DeviceConfig { name: WIREGUARD_DEVICE.into(), port: DEFAULT_WIREGUARD_PORT };
        let peer_wg =
            Userspace::start(Some(peer_ns), &dev, peer_key, vec![node_as_peer(&cfg, &node_key, &node_pods)])
                .map_err(|e| format!("peer WireGuard: {e}"))?;
        let pods = [lab.peer_pods.0.map(IpAddr::V4), lab.peer_pods.1.map(IpAddr::V6)];
        for a in pods.into_iter().flatten() {
            pnl.add_address(peer_wg.ifindex, a, if a.is_ipv4() { 32 } else { 128 })
                .map_err(|e| e.to_string())?;
        }
        let _ = overlay;
        let node_wg = sluice::encrypt::start_wireguard(Some(&lab.node), &cfg, &StaticKeys(&cfg), &state_dir)
            .map_err(|e| format!("node WireGuard: {e}"))?;
        let sys = sluice::sys::kernel();
        let pin = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
        let wlab = WgLab { peer_public, node_wg, peer_wg, cfg, state_dir, sys, pin, lab };
        let wired = wlab.lab.node.run_in(|| -> Result<(), String> {
            let plan = node::plan(&wlab.cfg).map_err(|e| e.to_string())?;
            load::load_and_pin(&wlab.sys, &plan, &wlab.pin).map_err(|e| e.to_string())?;
            let opts = AttachOptions { xdp_device: Some("net0".into()), ..AttachOptions::default() };
            wire::attach(&wlab.sys, &wlab.cfg, &wlab.pin, &opts).map_err(|e| e.to_string())?;
            forward::sync(&wlab.sys, &wlab.cfg, &wlab.pin).map_err(|e| e.to_string())?;
            Ok(())
        });
        wired.map_err(|e| e.to_string())??;
        Ok(wlab)
    }

    pub fn node_ns(&self) -> &NetNs {
        &self.lab.node
    }

    pub fn peer_ns(&self) -> &NetNs {
        self.lab.peer.as_ref().expect("built with a peer")
    }

    pub fn endpoint_ns(&self, index: usize) -> Option<&NetNs> {
        self.lab.endpoint(index)
    }

    /// The demo's flows between the node's endpoints and the peer, each with its expected
    /// verdict (the policy oracle) and what real traffic did.
    pub fn peer_flows(&self) -> Result<Vec<(Flow, Expect, Outcome)>, String> {
        let outside = Outside::of(&self.lab);
        let mut rows = Vec::new();
        for flow in demo::flows(&self.cfg, &outside) {
            if flow.from != Side::Peer && flow.to != Side::Peer {
                continue;
            }
            let expect = demo::expect(&self.cfg, &flow).map_err(|e| e.to_string())?;
            let outcome = self.run_flow(&flow).map_err(|e| format!("{}: {e}", flow.describe(&self.cfg)))?;
            rows.push((flow, expect, outcome));
        }
        Ok(rows)
    }

    fn ns_of(&self, side: Side) -> Option<&NetNs> {
        match side {
            Side::Endpoint(i) => self.lab.endpoint(i),
            Side::World => Some(&self.lab.world),
            Side::Peer => self.lab.peer.as_ref(),
        }
    }

    /// One probe (as `sluice demo` runs it).
    pub fn run_flow(&self, flow: &Flow) -> std::io::Result<Outcome> {
        let (Some(from), Some(to)) = (self.ns_of(flow.from), self.ns_of(flow.to)) else {
            return Err(std::io::Error::other("no namespace for a side of the flow"));
        };
        let dst = SocketAddr::new(flow.dst, flow.port);
        let server = traffic::serve(to, flow.proto, dst, Instant::now() + traffic::TIMEOUT * 2)?;
        let outcome = traffic::probe(from, flow.proto, flow.src, dst)?;
        let _ = server.join();
        Ok(outcome)
    }

    /// A flow of `proto` from endpoint `ep` (1-based) to the peer's IPv4 pod.
    pub fn flow_to_peer(&self, ep: usize, proto: Proto, port: u16) -> Option<Flow> {
        let src = self.cfg.endpoints.get(ep.checked_sub(1)?)?.addresses().find(IpAddr::is_ipv4)?;
        let dst = IpAddr::V4(self.lab.peer_pods.0?);
        Some(Flow {
            kind: "endpoint to overlay peer",
            from: Side::Endpoint(ep),
            src,
            to: Side::Peer,
            dst,
            proto,
            port,
        })
    }

    /// The peer's IPv4 pod address.
    pub fn peer_pod(&self) -> Option<std::net::Ipv4Addr> {
        self.lab.peer_pods.0
    }

    /// Rotate the node's key as `sluice encrypt rotate` and the daemon do: a new key in the
    /// state directory, the node's device switched to it by the daemon poller's
    /// [`sluice::encrypt::follow_key_file`], and the peer told the new public key (what its node file
    /// or the cluster store will carry).
    pub fn rotate_node_key(&self) -> Result<NodeKey, EncryptError> {
        let key = NodeKey::rotate(&self.state_dir)?;
        let switched = sluice::encrypt::follow_key_file(&self.node_wg, &self.state_dir);
        if switched.as_deref() != Some(key.public_base64().as_str()) {
            return Err(EncryptError::Device(format!(
                "the device did not take the rotated key ({switched:?})"
            )));
        }
        if sluice::encrypt::follow_key_file(&self.node_wg, &self.state_dir).is_some() {
            return Err(EncryptError::Device("an unchanged key file switched the key again".into()));
        }
        let node_pods: Vec<Cidr> =
            self.cfg.endpoints.iter().flat_map(|e| e.addresses()).map(Cidr::host).collect();
        self.peer_wg.set_peers(vec![node_as_peer(&self.cfg, &key, &node_pods)]);
        Ok(key)
    }

    /// Send a plaintext TCP SYN carrying [`MARKERS`]`[0]` from the peer's IPv4 pod address
    /// to `dst` straight onto the underlay (an `AF_PACKET` frame on the peer's `eth0` to the
    /// node's `underlay0`), bypassing the peer's WireGuard: what strict mode must not
    /// deliver.
    pub fn inject_plaintext(&self, dst: SocketAddr) -> std::io::Result<()> {
        let err = |e: sluice::netlink::NetlinkError| std::io::Error::other(e.to_string());
        let (IpAddr::V4(dst_ip), Some(src)) = (dst.ip(), self.lab.peer_pods.0) else {
            return Err(std::io::Error::other("IPv4 only"));
        };
        let node_mac =
            Netlink::open_in(&self.lab.node).and_then(|nl| nl.link_by_name("underlay0")).map_err(err)?.mac;
        let peer = self.peer_ns();
        let eth0 = Netlink::open_in(peer).and_then(|nl| nl.link_by_name("eth0")).map_err(err)?;
        let (Some(dmac), Some(smac)) = (node_mac, eth0.mac) else {
            return Err(std::io::Error::other("no MAC"));
        };
        let frame = sluice::packet::PacketBuilder::ethernet(smac, dmac)
            .ipv4(src, dst_ip)
            .tcp(40_000, dst.port(), sluice::packet::TcpFlags::SYN, 1, 0)
            .payload(MARKERS[0])
            .build();
        let ifindex = eth0.ifindex;
        peer.run_in(|| -> std::io::Result<()> {
            // SAFETY: socket(2) with constant arguments.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&dmac);
            // SAFETY: the frame and `sll` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .map_err(err)?
    }

    /// Set the node's underlay reverse-path filter (the strict-mode test's control).
    pub fn set_underlay_rp_filter(&self, on: bool) -> std::io::Result<()> {
        sluice::netlink::sysctl::write(
            Some(&self.lab.node),
            "net.ipv4.conf.underlay0.rp_filter",
            if on { "1" } else { "0" },
        )
        .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Start capturing on the node's underlay device.
    pub fn capture(&self) -> std::io::Result<Capture> {
        Capture::start(&self.lab.node, "underlay0")
    }
}

impl Drop for WgLab {
    fn drop(&mut self) {
        let (sys, pin) = (self.sys.clone(), self.pin.clone());
        let _ = self.lab.node.run_in(|| wire::down(&sys, &pin));
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The demo's encryption step: the default node with WireGuard to `node-2`, its flows to
/// and from the peer (each as the policy oracle expects), and what the underlay carried.
/// Returns how many flows were not as expected, plus one if anything crossed in the clear.
pub fn demo_step(out: &mut dyn std::io::Write) -> Result<usize, String> {
    let io = |e: std::io::Error| e.to_string();
    writeln!(out, "\nencryption: the node again, spec.encryption.mode wireguard to node-2 (userspace WireGuard on sluice_wg)")
        .map_err(io)?;
    let lab = WgLab::build(&format!("sluice-demo-wg-{}", std::process::id()), PeerKey::Right)?;
    let capture = lab.capture().map_err(io)?;
    let mut rows = lab.peer_flows()?;
    let frontend = 1 + lab.cfg.endpoints.iter().position(|e| e.name == "frontend").ok_or("no frontend")?;
    if let Some(ping) = lab.flow_to_peer(frontend, Proto::Icmp, 0) {
        let expect = demo::expect(&lab.cfg, &ping).map_err(|e| e.to_string())?;
        let outcome = lab.run_flow(&ping).map_err(io)?;
        rows.push((ping, expect, outcome));
    }
    let mut bad = 0;
    for (flow, expect, outcome) in &rows {
        let ok = (*expect == Expect::Allow) == (*outcome == Outcome::Delivered);
        bad += usize::from(!ok);
        writeln!(
            out,
            "  {} {:<48} expect {expect:<32} got {outcome:?}",
            if ok { "ok " } else { "BAD" },
            flow.describe(&lab.cfg)
        )
        .map_err(io)?;
    }
    let report = underlay_leaks(&capture.frames(), DEFAULT_WIREGUARD_PORT);
    let clear = !report.plaintext.is_empty() || !report.other.is_empty();
    writeln!(
        out,
        "  underlay: {} WireGuard datagrams, {} link control frames, {} other, {} with a plaintext marker",
        report.wireguard,
        report.control,
        report.other.len(),
        report.plaintext.len()
    )
    .map_err(io)?;
    let stats: Vec<String> =
        lab.node_wg.stats().into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "  node's WireGuard: {}", stats.join(" ")).map_err(io)?;
    Ok(bad + usize::from(clear))
}

fn node_as_peer(cfg: &NodeConfig, key: &NodeKey, pods: &[Cidr]) -> PeerConfig {
    let local = cfg.overlay.as_ref().map(|o| o.local).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    PeerConfig {
        name: cfg.name.clone(),
        public_key: key.public(),
        endpoint: SocketAddr::from((local, DEFAULT_WIREGUARD_PORT)),
        allowed: pods.to_vec(),
    }
}

/// Frames seen on one device (an `AF_PACKET` socket of all protocols, both directions).
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    pub fn start(ns: &NetNs, device: &str) -> std::io::Result<Capture> {
        let ifindex = Netlink::open_in(ns)
            .and_then(|nl| nl.ifindex(device))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let fd = ns
            .run_in(|| -> std::io::Result<OwnedFd> {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: socket(2) with constant arguments.
                let raw = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        proto.into(),
                    )
                };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: a new descriptor nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: sockaddr_ll is plain data; all-zero is valid.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex as i32;
                // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
                let r = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(fd)
            })
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(Capture { fd })
    }

    /// Every frame captured so far.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: reading into our own buffer of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return out;
            }
            out.push(buf[..n as usize].to_vec());
        }
    }
}

/// What the frames on the underlay were.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnderlayReport {
    /// IPv4 UDP to or from the WireGuard port, and the later fragments of such datagrams
    /// (a datagram over the underlay's MTU leaves in fragments; only the first holds the
    /// UDP header).
    pub wireguard: usize,
    /// ARP, IPv6 link-local control (neighbor discovery, listener reports, from a
    /// link-local or the unspecified source to a multicast group) and ICMP errors about
    /// WireGuard datagrams (a port unreachable while a peer's device is down).
    pub control: usize,
    /// Anything else: a description per frame.
    pub other: Vec<String>,
    /// Frames containing a plaintext marker.
    pub plaintext: Vec<String>,
}

/// What names one IPv4 datagram's fragments: (source, destination, id).
type DatagramId = ([u8; 4], [u8; 4], u16);

/// The IPv4 header of an Ethernet frame: (header length, protocol, fragment offset, id).
fn ipv4_head(f: &[u8]) -> Option<(usize, u8, u16, DatagramId)> {
    let h = f.get(14..14 + 20)?;
    if f.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    Some((ihl, h[9], offset, (src, dst, u16::from_be_bytes([h[4], h[5]]))))
}

/// Whether the UDP header at `l4` names the WireGuard port.
fn wireguard_ports(f: &[u8], l4: usize, wg_port: u16) -> bool {
    f.get(l4..l4 + 4).is_some_and(|p| {
        u16::from_be_bytes([p[0], p[1]]) == wg_port || u16::from_be_bytes([p[2], p[3]]) == wg_port
    })
}

/// Classify captured underlay frames (Ethernet).
pub fn underlay_leaks(frames: &[Vec<u8>], wg_port: u16) -> UnderlayReport {
    let mut r = UnderlayReport::default();
    // First fragments (and whole datagrams) of WireGuard UDP, by (source, destination, id).
    let wireguard_ids: std::collections::BTreeSet<DatagramId> = frames
        .iter()
        .filter_map(|f| {
            let (ihl, proto, offset, id) = ipv4_head(f)?;
            (proto == 17 && offset == 0 && wireguard_ports(f, 14 + ihl, wg_port)).then_some(id)
        })
        .collect();
    for f in frames {
        if MARKERS.iter().any(|m| f.windows(m.len()).any(|w| w == *m)) {
            r.plaintext.push(hex_head(f));
        }
        let ethertype = f.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
        match ethertype {
            Some(0x0806) => r.control += 1,
            Some(0x0800) => match ipv4_head(f) {
                Some((ihl, 17, 0, _)) if wireguard_ports(f, 14 + ihl, wg_port) => r.wireguard += 1,
                Some((_, 17, offset, id)) if offset > 0 && wireguard_ids.contains(&id) => r.wireguard += 1,
                // An ICMP error (type 3) quoting a WireGuard datagram's IPv4 and UDP headers.
                Some((ihl, 1, 0, _))
                    if f.get(14 + ihl) == Some(&3)
                        && f.get(14 + ihl + 8 + 9) == Some(&17)
                        && f.get(14 + ihl + 8).is_some_and(|v| {
                            wireguard_ports(f, 14 + ihl + 8 + usize::from(v & 0x0f) * 4, wg_port)
                        }) =>
                {
                    r.control += 1
                }
                Some((_, proto, _, _)) => r.other.push(format!("IPv4 protocol {proto}: {}", hex_head(f))),
                None => r.other.push(hex_head(f)),
            },
            // Link-local control: neighbor discovery and listener reports (ICMPv6, the
            // latter behind a hop-by-hop header) from a link-local source, or from the
            // unspecified one (duplicate address detection) to a multicast group.
            Some(0x86dd)
                if f.len() >= 14 + 40
                    && matches!(f[14 + 6], 0 | 58)
                    && (f[14 + 8] == 0xfe
                        || (f[14 + 8..14 + 24].iter().all(|b| *b == 0) && f[14 + 24] == 0xff)) =>
            {
                r.control += 1
            }
            _ => r.other.push(hex_head(f)),
        }
    }
    r
}

fn hex_head(f: &[u8]) -> String {
    f.iter().take(64).map(|b| format!("{b:02x}")).collect()
}
