//! Real traffic between namespaces: one TCP exchange, one UDP exchange or one ICMP echo,
//! from a chosen source address, with an answer expected within a timeout.
//!
//! A probe is `Delivered` when the answer came back (so the packet went both ways), and
//! `Dropped` when nothing did. The server side (a TCP listener or UDP socket in the
//! destination's namespace) runs on its own thread; the kernel answers ICMP echoes itself.

use crate::netlink::NetNs;
use std::io::{Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
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

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn socket(family: IpAddr, kind: libc::c_int, proto: libc::c_int) -> std::io::Result<OwnedFd> {
    let af = if family.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(af, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss/len describe a valid address.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(ss).cast(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_timeout(fd: &OwnedFd, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let tv =
        libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval for the length given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// TCP connect from `src` (any port) to `dst` within `timeout`.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let fd = socket(src, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    bind(&fd, SocketAddr::new(src, 0))?;
    let (ss, len) = sockaddr(dst);
    // SAFETY: ss/len describe a valid address.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(ss).cast(), len) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if n <= 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        let mut err: libc::c_int = 0;
        let mut elen = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err/elen are valid for SO_ERROR.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::addr_of_mut!(err).cast(),
                &mut elen,
            )
        };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    // SAFETY: the fd is a connected TCP socket we own.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A server for one probe, running in `ns` until it has answered or `deadline` passed.
pub fn serve(
    ns: &NetNs,
    proto: Proto,
    at: SocketAddr,
    deadline: Instant,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let fd = ns.fd().try_clone_to_owned()?;
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, to a namespace fd we hold.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
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
        Err(_) => Err(std::io::Error::other("the server thread ended early")),
    }
}

/// Run the client side of a probe in `ns`: from `src` to `dst`.
pub fn probe(ns: &NetNs, proto: Proto, src: IpAddr, dst: SocketAddr) -> std::io::Result<Outcome> {
    ns.run_in(|| client(proto, src, dst)).map_err(|e| std::io::Error::other(e.to_string()))?
}

fn client(proto: Proto, src: IpAddr, dst: SocketAddr) -> std::io::Result<Outcome> {
    match proto {
        Proto::Tcp => {
            let mut s = match connect_from(src, dst, TIMEOUT) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(Outcome::Dropped),
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
fn echo(src: IpAddr, dst: IpAddr) -> std::io::Result<Outcome> {
    use std::os::fd::AsRawFd;
    let v4 = dst.is_ipv4();
    let fd = socket(dst, libc::SOCK_RAW, if v4 { libc::IPPROTO_ICMP } else { libc::IPPROTO_ICMPV6 })?;
    bind(&fd, SocketAddr::new(src, 0))?;
    set_timeout(&fd, Duration::from_millis(100));
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut msg = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(REQUEST);
    if v4 {
        let sum = crate::packet::checksum::internet(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let (ss, len) = sockaddr(SocketAddr::new(dst, 0));
    // SAFETY: msg and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, std::ptr::addr_of!(ss).cast(), len)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let pkt = &buf[..n as usize];
        let icmp = if v4 {
            let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
            if pkt.len() < ihl + 8 || pkt[12..16] != crate::demo::octets(dst)[..] {
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
