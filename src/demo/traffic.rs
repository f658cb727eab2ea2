//! Real traffic between namespaces: one TCP exchange, one UDP exchange or one ICMP echo,
//! from a chosen source address, with an answer expected within a timeout.
//!
//! A probe is `Delivered` when the answer came back (so the packet went both ways), and
//! `Dropped` when nothing did. The server side (a TCP listener or UDP socket in the
//! destination's namespace) runs on its own thread; the kernel answers ICMP echoes itself.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    self as sock, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage,
};
use nix::sys::time::TimeVal;
use sluice::netlink::NetNs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP (or ICMPv6) echo.
    Icmp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer came back.
    Delivered,
    /// Nothing came back in time.
    Dropped,
}

/// How long a probe waits for its answer.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

const REQUEST: &[u8] = b"sluice probe";
const ANSWER: &[u8] = b"sluice answer";

fn socket(
    family: IpAddr,
    kind: SockType,
    flags: SockFlag,
    proto: Option<SockProtocol>,
) -> io::Result<OwnedFd> {
    let af = if family.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    Ok(sock::socket(af, kind, flags | SockFlag::SOCK_CLOEXEC, proto)?)
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    Ok(sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?)
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    sock::setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    sock::setsockopt(fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

/// TCP connect from `src` (any port) to `dst` within `timeout`.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = socket(src, SockType::Stream, SockFlag::SOCK_NONBLOCK, None)?;
    bind(&fd, SocketAddr::new(src, 0))?;
    match sock::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => {
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
            if poll(&mut pfd, PollTimeout::from(ms))? == 0 {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            let err = sock::getsockopt(&fd, sockopt::SocketError)?;
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A server for one probe, running in `ns` until it has answered or `deadline` passed.
pub fn serve(
    ns: &NetNs,
    proto: Proto,
    at: SocketAddr,
    deadline: Instant,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let fd = ns.fd().try_clone_to_owned()?;
    let handle = std::thread::spawn(move || {
        // This thread only: the server lives in the destination's namespace.
        if let Err(e) = setns(&fd, CloneFlags::CLONE_NEWNET) {
            let _ = ready_tx.send(Err(e.into()));
            return;
        }
        match proto {
            Proto::Tcp => {
                let listener = match TcpListener::bind(at) {
                    Ok(l) => l,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = listener.set_nonblocking(true);
                let _ = ready_tx.send(Ok(()));
                while Instant::now() < deadline {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(TIMEOUT));
                            let mut buf = [0u8; 64];
                            if let Ok(n) = s.read(&mut buf) {
                                if &buf[..n] == REQUEST {
                                    let _ = s.write_all(ANSWER);
                                }
                            }
                            return;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
            Proto::Udp => {
                let sock = match UdpSocket::bind(at) {
                    Ok(s) => s,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = ready_tx.send(Ok(()));
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if &buf[..n] == REQUEST {
                            let _ = sock.send_to(ANSWER, from);
                            return;
                        }
                    }
                }
            }
            Proto::Icmp => {
                let _ = ready_tx.send(Ok(()));
            }
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the server thread ended early")),
    }
}

/// Run the client side of a probe in `ns`: from `src` to `dst`.
pub fn probe(ns: &NetNs, proto: Proto, src: IpAddr, dst: SocketAddr) -> io::Result<Outcome> {
    ns.run_in(|| client(proto, src, dst)).map_err(|e| io::Error::other(e.to_string()))?
}

fn client(proto: Proto, src: IpAddr, dst: SocketAddr) -> io::Result<Outcome> {
    match proto {
        Proto::Tcp => {
            let mut s = match connect_from(src, dst, TIMEOUT) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Outcome::Dropped),
                Err(e) => return Err(e),
            };
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(REQUEST)?;
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) if &buf[..n] == ANSWER => Ok(Outcome::Delivered),
                _ => Ok(Outcome::Dropped),
            }
        }
        Proto::Udp => {
            let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.send_to(REQUEST, dst)?;
            let mut buf = [0u8; 64];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == dst && &buf[..n] == ANSWER => Ok(Outcome::Delivered),
                _ => Ok(Outcome::Dropped),
            }
        }
        Proto::Icmp => echo(src, dst.ip()),
    }
}

/// One ICMP (ICMPv6) echo from `src` to `dst` over a raw socket.
fn echo(src: IpAddr, dst: IpAddr) -> io::Result<Outcome> {
    let v4 = dst.is_ipv4();
    let proto = if v4 { SockProtocol::Icmp } else { SockProtocol::IcmpV6 };
    let fd = socket(dst, SockType::Raw, SockFlag::empty(), Some(proto))?;
    bind(&fd, SocketAddr::new(src, 0))?;
    set_timeout(&fd, Duration::from_millis(100))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut msg = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(REQUEST);
    if v4 {
        let sum = sluice::packet::checksum::internet(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    sock::sendto(fd.as_raw_fd(), &msg, &SockaddrStorage::from(SocketAddr::new(dst, 0)), MsgFlags::empty())?;
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let n = match sock::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) if n > 0 => n,
            _ => continue,
        };
        let pkt = &buf[..n];
        let icmp = if v4 {
            let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
            if pkt.len() < ihl + 8 || pkt[12..16] != super::octets(dst)[..] {
                continue;
            }
            &pkt[ihl..]
        } else {
            pkt
        };
        let reply = if v4 { 0 } else { 129 };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return Ok(Outcome::Delivered);
        }
    }
    Ok(Outcome::Dropped)
}
