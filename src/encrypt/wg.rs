//! A userspace WireGuard on a TUN device: what serves `sluice_wg` where the kernel has no
//! WireGuard device type.
//!
//! Contract:
//! - [`Userspace::start`] opens `/dev/net/tun` as an L3 device (`IFF_TUN | IFF_NO_PI`) named
//!   as asked, sets its MTU ([`MTU`]: 1420, WireGuard's default for a 1500-byte underlay),
//!   brings it up, routes every peer's AllowedIPs through it and binds the UDP port, all in
//!   the given network namespace, then serves both on one thread until dropped.
//! - The noise protocol, sessions, rekeying, cookies and timers are Cloudflare's
//!   `boringtun` (`noise::Tunn`, one per peer, built without its `device` feature: no
//!   second TUN/socket layer, no threads of its own). This module does only what the
//!   `device` layer would: the peer table (AllowedIPs, endpoints, indexes) and the I/O loop.
//! - A packet read from the device goes to the peer whose AllowedIPs hold its destination
//!   (longest prefix); none: dropped and counted (`tx_no_peer`), never sent in plaintext.
//! - A datagram from the network finds its peer by the receiver index the peer echoes
//!   (the top 24 bits name the `Tunn`) or, for a handshake initiation, by the static key the
//!   initiation carries; an unknown key is dropped (`rx_unknown_peer`). A decrypted packet
//!   whose source is outside the sending peer's AllowedIPs is dropped
//!   (`rx_not_allowed`, WireGuard's cryptokey routing).
//! - Key changes ([`Userspace::set_private_key`], [`Userspace::set_peers`] with a peer's new
//!   public key) start a new `Tunn` (a new handshake; packets sent meanwhile wait in its
//!   queue) and keep the old one for [`RETIRE_AFTER`] to decrypt what was already in flight,
//!   so a rotation loses nothing that the new handshake's queue can hold.
//! - An IPv4 packet from the device over [`MTU`] with don't-fragment set is dropped and
//!   answered with ICMP "fragmentation needed" ([`fragmentation_needed`]): the endpoint
//!   programs redirect into the device past any MTU check, and a full-size segment would
//!   otherwise leave the node as two underlay fragments.
//! - Counters per reason are [`Stats`], readable at any time.

use super::keys::NodeKey;
use super::EncryptError;
use crate::model::Cidr;
use crate::netlink::{NetNs, Netlink, Route};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The device MTU: 1500 less the IPv4 + UDP + WireGuard data header (20 + 8 + 32) and
/// room for an IPv6 underlay, as wg-quick chooses.
pub const MTU: u32 = 1420;
/// How long a replaced `Tunn` keeps decrypting packets already in flight.
pub const RETIRE_AFTER: Duration = Duration::from_secs(15);
/// How often the loop wakes without traffic (WireGuard's timers have 100 ms-ish needs).
const TICK: Duration = Duration::from_millis(100);
/// A datagram or packet buffer: the largest IP packet plus WireGuard's overhead.
const BUF: usize = 65_535 + 64;
/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// One remote node as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
    /// Its pod prefixes (AllowedIPs).
    pub allowed: Vec<Cidr>,
}

/// What the device is called and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub name: String,
    pub port: u16,
}

/// Per-reason counters of the userspace device.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets from the device encrypted and sent (data, not handshakes).
    pub tx_packets: AtomicU64,
    /// Packets from the device with no peer for their destination: dropped.
    pub tx_no_peer: AtomicU64,
    /// Packets from the device that are not IP: dropped.
    pub tx_malformed: AtomicU64,
    /// IPv4 packets over the device's MTU with don't-fragment set: dropped and answered
    /// with ICMP "fragmentation needed" (as a router does).
    pub tx_too_big: AtomicU64,
    /// The device's own link-local and multicast traffic (IPv6 router solicitations,
    /// listener reports): never sent to a peer.
    pub tx_link_local: AtomicU64,
    /// Datagrams decrypted and written to the device.
    pub rx_packets: AtomicU64,
    /// Datagrams that are not WireGuard messages.
    pub rx_invalid: AtomicU64,
    /// Handshakes from keys we do not know, data for indexes we never gave out.
    pub rx_unknown_peer: AtomicU64,
    /// Decrypted packets whose source is outside the sender's AllowedIPs.
    pub rx_not_allowed: AtomicU64,
    /// Messages the noise layer refused (bad MAC, replay, expired session, ...).
    pub rx_rejected: AtomicU64,
    /// Handshakes completed or answered.
    pub handshakes: AtomicU64,
}

/// A snapshot of [`Stats`], by reason name.
pub type StatsSnapshot = Vec<(&'static str, u64)>;

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tx_packets", r(&self.tx_packets)),
            ("tx_no_peer", r(&self.tx_no_peer)),
            ("tx_malformed", r(&self.tx_malformed)),
            ("tx_too_big", r(&self.tx_too_big)),
            ("tx_link_local", r(&self.tx_link_local)),
            ("rx_packets", r(&self.rx_packets)),
            ("rx_invalid", r(&self.rx_invalid)),
            ("rx_unknown_peer", r(&self.rx_unknown_peer)),
            ("rx_not_allowed", r(&self.rx_not_allowed)),
            ("rx_rejected", r(&self.rx_rejected)),
            ("handshakes", r(&self.handshakes)),
        ]
    }
}

enum Control {
    /// The new peer table, and where to say it is in use.
    SetPeers(Vec<PeerConfig>, mpsc::Sender<()>),
    SetKey(NodeKey),
}

/// A running userspace WireGuard device. Dropping it stops the thread and removes the device.
#[derive(Debug)]
pub struct Userspace {
    pub ifindex: u32,
    pub stats: Arc<Stats>,
    ctl: mpsc::Sender<Control>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The peer table last given to the device.
    peers: std::sync::Mutex<Vec<PeerConfig>>,
    /// The public half of the key the device uses.
    public: std::sync::Mutex<[u8; 32]>,
}

impl Userspace {
    /// Create the device in `netns` (the caller's namespace when `None`) and serve it.
    pub fn start(
        netns: Option<&NetNs>,
        dev: &DeviceConfig,
        key: NodeKey,
        peers: Vec<PeerConfig>,
    ) -> Result<Userspace, EncryptError> {
        let ns_fd = match netns {
            Some(ns) => Some(ns.fd().try_clone_to_owned().map_err(|e| EncryptError::io("dup netns fd", e))?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ctl, ctl_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let dev = dev.clone();
        let (t_stats, t_stop) = (stats.clone(), stop.clone());
        let (t_peers, peers) = (peers.clone(), std::sync::Mutex::new(peers));
        let public = std::sync::Mutex::new(key.public());
        let thread = std::thread::Builder::new()
            .name(format!("wg-{}", dev.name))
            .spawn(move || {
                if let Some(fd) = ns_fd {
                    // Affects this thread only.
                    if let Err(e) = nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET) {
                        let _ = ready_tx.send(Err(EncryptError::io("setns", e.into())));
                        return;
                    }
                }
                let setup = open_device(&dev, &t_peers);
                let (tun, udp, ifindex) = match setup {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(ifindex));
                let mut device = Device::new(key, t_stats, tun, udp, ifindex);
                device.set_peers(t_peers);
                device.run(&ctl_rx, &t_stop);
                // The device goes with its descriptor; routes through it go with the device.
            })
            .map_err(|e| EncryptError::io("spawn the WireGuard thread", e))?;
        let ifindex = ready_rx
            .recv()
            .map_err(|_| EncryptError::Device("the WireGuard thread ended during setup".into()))??;
        Ok(Userspace { ifindex, stats, ctl, stop, thread: Some(thread), peers, public })
    }

    /// Replace the peer table (peers are matched by name; a changed key starts a new session).
    ///
    /// Returns once the device uses the new table (it takes control messages between polls,
    /// every [`TICK`] at most), so that a caller who reports the reload reports what is in
    /// force: a packet sent after this returns never uses a replaced peer's session. A device
    /// that does not answer within a second (stopped, or starved) is not waited for longer.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        *self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = peers.clone();
        let (done, applied) = mpsc::channel();
        if self.ctl.send(Control::SetPeers(peers, done)).is_ok() {
            let _ = applied.recv_timeout(Duration::from_secs(1));
        }
    }

    /// [`Userspace::set_peers`] unless the table is the one the device has; whether it changed.
    pub fn set_peers_if_changed(&self, peers: Vec<PeerConfig>) -> bool {
        if *self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == peers {
            return false;
        }
        self.set_peers(peers);
        true
    }

    /// Use a new private key for every peer (after [`NodeKey::rotate`]).
    pub fn set_private_key(&self, key: NodeKey) {
        *self.public.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = key.public();
        let _ = self.ctl.send(Control::SetKey(key));
    }

    /// [`Userspace::set_private_key`] unless the device has this key; whether it changed.
    pub fn set_private_key_if_changed(&self, key: NodeKey) -> bool {
        if *self.public.lock().unwrap_or_else(std::sync::PoisonError::into_inner) == key.public() {
            return false;
        }
        self.set_private_key(key);
        true
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tun(name: &str) -> Result<OwnedFd, EncryptError> {
    crate::netlink::check_ifname(name).map_err(|e| EncryptError::Device(e.to_string()))?;
    let path = c"/dev/net/tun";
    // SAFETY: open(2) with a NUL-terminated constant path.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(EncryptError::io("open /dev/net/tun", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out (40 bytes).
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
        return Err(EncryptError::io("TUNSETIFF", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

fn open_device(dev: &DeviceConfig, peers: &[PeerConfig]) -> Result<(OwnedFd, UdpSocket, u32), EncryptError> {
    let tun = open_tun(&dev.name)?;
    let nl = Netlink::open().map_err(|e| EncryptError::Device(e.to_string()))?;
    let nl_err = |e: crate::netlink::NetlinkError| EncryptError::Device(e.to_string());
    let ifindex = nl.ifindex(&dev.name).map_err(nl_err)?;
    nl.set_mtu(ifindex, MTU).map_err(nl_err)?;
    nl.set_up(ifindex).map_err(nl_err)?;
    for p in peers {
        for c in &p.allowed {
            nl.replace_route(&Route::new(*c).dev(ifindex)).map_err(nl_err)?;
        }
    }
    let udp = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], dev.port)))
        .map_err(|e| EncryptError::io("bind the WireGuard UDP port", e))?;
    udp.set_nonblocking(true).map_err(|e| EncryptError::io("set_nonblocking", e))?;
    Ok((tun, udp, ifindex))
}

struct PeerState {
    cfg: PeerConfig,
    tunn: Box<Tunn>,
    index: u32,
    /// A replaced session kept for in-flight packets, and when it goes.
    retiring: Option<(Box<Tunn>, u32, Instant)>,
}

struct Device {
    key: NodeKey,
    stats: Arc<Stats>,
    tun: OwnedFd,
    udp: UdpSocket,
    peers: Vec<PeerState>,
    /// `Tunn` index -> (peer position, retiring?).
    by_index: HashMap<u32, (usize, bool)>,
    next_index: u32,
    /// The device's ifindex: peers' AllowedIPs are routed through it.
    ifindex: u32,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Device {
    fn new(key: NodeKey, stats: Arc<Stats>, tun: OwnedFd, udp: UdpSocket, ifindex: u32) -> Device {
        Device {
            key,
            stats,
            tun,
            udp,
            peers: Vec::new(),
            by_index: HashMap::new(),
            next_index: 1,
            ifindex,
            buf: vec![0; BUF],
            out: vec![0; BUF],
        }
    }

    fn new_tunn(&mut self, public: [u8; 32]) -> (Box<Tunn>, u32) {
        let index = self.next_index;
        // 24 bits: the noise layer shifts it left by 8 for its own session counter.
        self.next_index = (self.next_index % 0x00ff_fffe) + 1;
        let tunn = Tunn::new(self.key.secret().clone(), PublicKey::from(public), None, None, index, None)
            .expect("boringtun 0.6's Tunn::new cannot fail: its NoiseParams::new returns Ok for every key (a bad key only fails handshakes)");
        (Box::new(tunn), index)
    }

    fn reindex(&mut self) {
        self.by_index.clear();
        for (i, p) in self.peers.iter().enumerate() {
            self.by_index.insert(p.index, (i, false));
            if let Some((_, idx, _)) = &p.retiring {
                self.by_index.insert(*idx, (i, true));
            }
        }
    }

    fn set_peers(&mut self, peers: Vec<PeerConfig>) {
        // Peers added later (a reload, a node joining the cluster) get routes as the start
        // config's do, so the host's own traffic to their pods is encrypted too. This thread
        // is in the device's namespace. A removed peer's routes stay: what they carry is
        // dropped as `tx_no_peer`, never sent in the clear.
        if let Ok(nl) = Netlink::open() {
            for c in peers.iter().flat_map(|p| &p.allowed) {
                let _ = nl.replace_route(&Route::new(*c).dev(self.ifindex));
            }
        }
        let mut old: Vec<PeerState> = std::mem::take(&mut self.peers);
        for cfg in peers {
            match old.iter().position(|p| p.cfg.name == cfg.name) {
                Some(i) => {
                    let mut p = old.swap_remove(i);
                    if p.cfg.public_key != cfg.public_key {
                        let (tunn, index) = self.new_tunn(cfg.public_key);
                        let prev_tunn = std::mem::replace(&mut p.tunn, tunn);
                        let prev_index = std::mem::replace(&mut p.index, index);
                        p.retiring = Some((prev_tunn, prev_index, Instant::now() + RETIRE_AFTER));
                    }
                    p.cfg = cfg;
                    self.peers.push(p);
                }
                None => {
                    let (tunn, index) = self.new_tunn(cfg.public_key);
                    self.peers.push(PeerState { cfg, tunn, index, retiring: None });
                }
            }
        }
        self.reindex();
        self.kick();
    }

    fn set_key(&mut self, key: NodeKey) {
        self.key = key;
        for i in 0..self.peers.len() {
            let (tunn, index) = self.new_tunn(self.peers[i].cfg.public_key);
            let p = &mut self.peers[i];
            let prev_tunn = std::mem::replace(&mut p.tunn, tunn);
            let prev_index = std::mem::replace(&mut p.index, index);
            p.retiring = Some((prev_tunn, prev_index, Instant::now() + RETIRE_AFTER));
        }
        self.reindex();
        self.kick();
    }

    /// Start handshakes at once after a change, instead of at the next packet.
    fn kick(&mut self) {
        for p in &mut self.peers {
            if let TunnResult::WriteToNetwork(b) = p.tunn.format_handshake_initiation(&mut self.out, false) {
                let _ = self.udp.send_to(b, p.cfg.endpoint);
            }
        }
    }

    fn run(&mut self, ctl: &mpsc::Receiver<Control>, stop: &AtomicBool) {
        let mut last_timers = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            while let Ok(c) = ctl.try_recv() {
                match c {
                    Control::SetPeers(p, done) => {
                        self.set_peers(p);
                        let _ = done.send(());
                    }
                    Control::SetKey(k) => self.set_key(k),
                }
            }
            let mut fds = [
                libc::pollfd { fd: self.tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.udp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int) };
            if n > 0 {
                if fds[0].revents & libc::POLLIN != 0 {
                    for _ in 0..256 {
                        // SAFETY: reading into our own buffer of its length.
                        let r = unsafe {
                            libc::read(self.tun.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len())
                        };
                        if r <= 0 {
                            break;
                        }
                        self.on_device_packet(r as usize);
                    }
                }
                if fds[1].revents & libc::POLLIN != 0 {
                    for _ in 0..256 {
                        match self.udp.recv_from(&mut self.buf) {
                            Ok((len, from)) => self.on_datagram(len, from),
                            Err(_) => break,
                        }
                    }
                }
            }
            if last_timers.elapsed() >= TICK {
                last_timers = Instant::now();
                self.timers();
            }
        }
    }

    fn peer_for(&self, dst: IpAddr) -> Option<usize> {
        self.peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.cfg.allowed.iter().filter(|c| c.contains(dst)).map(move |c| (c.len(), i)))
            .max()
            .map(|(_, i)| i)
    }

    fn on_device_packet(&mut self, len: usize) {
        let Some(dst) = Tunn::dst_address(&self.buf[..len]) else {
            self.stats.tx_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let link_local = match dst {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_link_local(),
            IpAddr::V6(a) => a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local {
            self.stats.tx_link_local.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(i) = self.peer_for(dst) else {
            self.stats.tx_no_peer.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if len > MTU as usize {
            if let Some(icmp) = fragmentation_needed(&self.buf[..len]) {
                // An IPv4 packet over the device's MTU that may not be fragmented (the
                // endpoint program redirects here past the MTU check a route would make):
                // answered as a router answers it, so the sender's path MTU discovery
                // lowers its segment size, instead of each datagram leaving the node in
                // two underlay fragments.
                self.stats.tx_too_big.fetch_add(1, Ordering::Relaxed);
                // SAFETY: writing our own buffer of its length to the TUN descriptor.
                let _ = unsafe { libc::write(self.tun.as_raw_fd(), icmp.as_ptr().cast(), icmp.len()) };
                return;
            }
        }
        let p = &mut self.peers[i];
        match p.tunn.encapsulate(&self.buf[..len], &mut self.out) {
            TunnResult::WriteToNetwork(b) => {
                // A data message (type 4) or the handshake that the queued packet waits for.
                if b.first() == Some(&4) {
                    self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.udp.send_to(b, p.cfg.endpoint);
            }
            TunnResult::Err(_) => {
                self.stats.rx_rejected.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn find_peer(&self, datagram: &[u8]) -> Option<(usize, bool)> {
        let receiver = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                self.stats.rx_invalid.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(Packet::HandshakeInit(h)) => {
                let half = parse_handshake_anon(self.key.secret(), self.key.public_key(), &h).ok();
                let found = half.and_then(|h| {
                    self.peers
                        .iter()
                        .position(|p| p.cfg.public_key == h.peer_static_public)
                        .map(|i| (i, false))
                });
                if found.is_none() {
                    self.stats.rx_unknown_peer.fetch_add(1, Ordering::Relaxed);
                }
                return found;
            }
            Ok(Packet::HandshakeResponse(r)) => r.receiver_idx,
            Ok(Packet::PacketCookieReply(c)) => c.receiver_idx,
            Ok(Packet::PacketData(d)) => d.receiver_idx,
        };
        let found = self.by_index.get(&(receiver >> 8)).copied();
        if found.is_none() {
            self.stats.rx_unknown_peer.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        let Some((i, retiring)) = self.find_peer(&self.buf[..len]) else { return };
        let stats = self.stats.clone();
        let p = &mut self.peers[i];
        let tunn: &mut Tunn = if retiring {
            match p.retiring.as_mut() {
                Some((t, _, _)) => t,
                None => return,
            }
        } else {
            &mut p.tunn
        };
        let mut flush = false;
        match tunn.decapsulate(Some(from.ip()), &self.buf[..len], &mut self.out) {
            TunnResult::Done => {}
            TunnResult::Err(_) => {
                stats.rx_rejected.fetch_add(1, Ordering::Relaxed);
            }
            TunnResult::WriteToNetwork(b) => {
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                let _ = self.udp.send_to(b, from);
                flush = true;
            }
            TunnResult::WriteToTunnelV4(b, src) => {
                deliver(&self.tun, &stats, &p.cfg, b, src.into());
                flush = true;
            }
            TunnResult::WriteToTunnelV6(b, src) => {
                deliver(&self.tun, &stats, &p.cfg, b, src.into());
                flush = true;
            }
        }
        if flush {
            // Packets queued while the session was being made leave now (bounded: a
            // packet requeued for a session that is not there yet ends the loop).
            for _ in 0..512 {
                match tunn.decapsulate(None, &[], &mut self.out) {
                    TunnResult::WriteToNetwork(b) => {
                        let _ = self.udp.send_to(b, p.cfg.endpoint);
                    }
                    _ => break,
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for p in &mut self.peers {
            if let TunnResult::WriteToNetwork(b) = p.tunn.update_timers(&mut self.out) {
                let _ = self.udp.send_to(b, p.cfg.endpoint);
            }
            if let Some((t, _, until)) = p.retiring.as_mut() {
                if now >= *until {
                    p.retiring = None;
                    changed = true;
                } else if let TunnResult::WriteToNetwork(b) = t.update_timers(&mut self.out) {
                    // Only keepalives of a retiring session matter; never new handshakes.
                    if b.first() == Some(&4) {
                        let _ = self.udp.send_to(b, p.cfg.endpoint);
                    }
                }
            }
        }
        if changed {
            self.reindex();
        }
    }
}

/// ICMP "fragmentation needed" (type 3, code 4, next-hop MTU [`MTU`]) for an IPv4 `packet`
/// with the don't-fragment bit, quoting its header and first 8 payload bytes (what the
/// sender matches to its connection: ports and sequence number), from the packet's own
/// destination (whose route on this node is this device, so a reverse-path check passes);
/// `None` for anything else (IPv6, or a packet that may be fragmented).
pub fn fragmentation_needed(packet: &[u8]) -> Option<Vec<u8>> {
    use crate::packet::checksum;
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || packet.get(6)? & 0x40 == 0 {
        return None;
    }
    let quoted = packet.get(..ihl + 8)?;
    let total = 20 + 8 + quoted.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&packet[16..20]);
    out[16..20].copy_from_slice(&packet[12..16]);
    let header = checksum::ipv4_header(&out[..20]);
    out[10..12].copy_from_slice(&header.to_be_bytes());
    out[20] = 3;
    out[21] = 4;
    out[26..28].copy_from_slice(&(MTU as u16).to_be_bytes());
    out[28..].copy_from_slice(quoted);
    let icmp = checksum::internet(&out[20..]);
    out[22..24].copy_from_slice(&icmp.to_be_bytes());
    Some(out)
}

fn deliver(tun: &OwnedFd, stats: &Stats, peer: &PeerConfig, packet: &[u8], src: IpAddr) {
    if packet.is_empty() {
        // A keepalive.
        return;
    }
    if !peer.allowed.iter().any(|c| c.contains(src)) {
        stats.rx_not_allowed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: writing our own buffer of its length to the TUN descriptor.
    let n = unsafe { libc::write(tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n > 0 {
        stats.rx_packets.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use crate::packet::{checksum, PacketBuilder, TcpFlags};
    use std::net::Ipv4Addr;

    /// "fragmentation needed" answers an oversized IPv4 packet with don't-fragment, from its
    /// destination, quoting its header and first 8 payload bytes, with valid checksums;
    /// nothing answers a packet that may be fragmented, or IPv6.
    #[test]
    fn an_oversized_packet_with_dont_fragment_is_answered_with_the_device_mtu() {
        let (pod, peer) = (Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 2, 5));
        let eth = || PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let frame = eth()
            .ipv4(pod, peer)
            .dont_fragment()
            .tcp(40_000, 8080, TcpFlags::ACK, 7, 9)
            .payload(&[1; 1460])
            .build();
        let packet = &frame[14..];
        let icmp = super::fragmentation_needed(packet).expect("answered");
        assert!(checksum::verify_ipv4_header(&icmp[..20]), "IPv4 header checksum");
        assert!(checksum::verify_icmpv4(&icmp[20..]), "ICMP checksum");
        assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4), "ICMP type 3 code 4");
        assert_eq!(
            (&icmp[12..16], &icmp[16..20]),
            (&packet[16..20], &packet[12..16]),
            "from the destination"
        );
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), super::MTU as u16, "next-hop MTU");
        assert_eq!(&icmp[28..], &packet[..28], "the header and the ports and sequence number quoted");
        let may_fragment = eth().ipv4(pod, peer).udp(1, 2).payload(&[1; 1460]).build();
        assert_eq!(super::fragmentation_needed(&may_fragment[14..]), None, "no don't-fragment bit");
        let v6 = eth()
            .ipv6("fd00::1".parse().expect("literal"), "fd00::2".parse().expect("literal"))
            .udp(1, 2)
            .payload(&[1; 1460])
            .build();
        assert_eq!(super::fragmentation_needed(&v6[14..]), None, "IPv6");
    }
}
