//! netlink: rtnetlink as small typed message builders, and network namespaces.
//!
//! Contract:
//! - [`Netlink`] is one `NETLINK_ROUTE` socket, bound in the network namespace of the
//!   thread that opened it ([`Netlink::open`]) or of a given [`NetNs`]
//!   ([`Netlink::open_in`]); it stays there whatever the thread does later. It asks for
//!   extended acks (`NETLINK_EXT_ACK`) and capped error echoes (`NETLINK_CAP_ACK`).
//! - Every request carries a fresh sequence number and, unless it is a dump, `NLM_F_ACK`:
//!   [`Netlink::request`] returns once the kernel acknowledged it (with any data it sent
//!   first), [`Netlink::dump`] once `NLMSG_DONE` arrived. Replies with another sequence
//!   number (left over from an abandoned request) are skipped. A dump the kernel marks
//!   `NLM_F_DUMP_INTR` (it changed underneath) is retried a few times.
//! - Every failure is a [`NetlinkError`] naming the request (`RTM_NEWLINK veth
//!   lxc1/eth0`), the errno (`EEXIST (17)`) and, when the kernel gave one, its ext-ack text.
//! - A `Netlink` is `Send` but not `Sync`: one request at a time; share it behind a mutex.
//!
//! Files: [`msg`] (wire format), [`mod@netns`] (namespaces), [`link`] (links, veth,
//! VXLAN), [`addr`], [`route`], [`neigh`], [`sysctl`], [`tc`] (clsact, cls_bpf), [`xdp`].

pub mod addr;
pub mod link;
pub mod msg;
pub mod neigh;
pub mod netns;
pub mod route;
pub mod sysctl;
pub mod tc;
pub mod xdp;
pub mod xfrm;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

pub use addr::AddressInfo;
pub use link::{LinkInfo, Vxlan};
pub use msg::{Message, Request};
pub use netns::{NetNs, NetNsGuard};
pub use route::Route;
pub use tc::{QdiscInfo, TcDirection, TcFilter, TcFilterInfo};
pub use xdp::{XdpAttached, XdpInfo, XdpMode};

use crate::sys::Errno;

/// Result of this layer.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// `SOL_NETLINK` socket options.
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// How long to wait for the kernel's answer before giving up on a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts for a dump the kernel reports as interrupted.
const DUMP_ATTEMPTS: usize = 5;

/// Errors of the netlink layer.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request.
    #[error("{request} failed: {}{}", errno_text(*.errno), ext_ack_text(.ext_ack))]
    Kernel { request: String, errno: Errno, ext_ack: Option<String> },
    /// A socket call failed (or timed out) while sending or receiving a request.
    #[error("{request}: {op} failed: {source}")]
    Socket {
        request: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel's reply did not parse.
    #[error("{request}: malformed reply: {reason}")]
    Protocol { request: String, reason: String },
    /// The caller passed something the kernel would refuse or misread; nothing was sent.
    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },
    /// A namespace operation failed (`mount`, `setns`, ...).
    #[error("netns `{name}`: {op} `{}` failed: {source}", .path.display())]
    Netns {
        name: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `/proc/sys` read or write failed.
    #[error("sysctl {key}{}: {op} failed: {source}", .netns.as_ref().map(|n| format!(" in netns `{n}`")).unwrap_or_default())]
    Sysctl {
        key: String,
        netns: Option<String>,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl NetlinkError {
    /// The errno behind the error, if one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Socket { source, .. }
            | NetlinkError::Netns { source, .. }
            | NetlinkError::Sysctl { source, .. } => source.raw_os_error().map(Errno),
            _ => None,
        }
    }

    /// The kernel's extended-ack message, if it sent one.
    pub fn ext_ack(&self) -> Option<&str> {
        match self {
            NetlinkError::Kernel { ext_ack, .. } => ext_ack.as_deref(),
            _ => None,
        }
    }

    /// True when the kernel answered `EEXIST`.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno(libc::EEXIST))
    }

    /// True when the object was not there (`ENOENT`, `ENODEV`, `ESRCH`).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(Errno(libc::ENOENT | libc::ENODEV | libc::ESRCH)))
    }

    pub(crate) fn invalid(context: impl Into<String>, reason: impl Into<String>) -> NetlinkError {
        NetlinkError::Invalid { context: context.into(), reason: reason.into() }
    }

    fn protocol(request: &Request, reason: impl Into<String>) -> NetlinkError {
        NetlinkError::Protocol { request: request.what().to_string(), reason: reason.into() }
    }

    fn socket(request: &str, op: &'static str, source: std::io::Error) -> NetlinkError {
        NetlinkError::Socket { request: request.to_string(), op, source }
    }
}

/// `EEXIST (17)`: the symbolic name when known, for the errnos rtnetlink returns too.
pub fn errno_text(errno: Errno) -> String {
    let extra = match errno.0 {
        libc::EADDRNOTAVAIL => Some("EADDRNOTAVAIL"),
        libc::EAFNOSUPPORT => Some("EAFNOSUPPORT"),
        libc::ENETUNREACH => Some("ENETUNREACH"),
        libc::EHOSTUNREACH => Some("EHOSTUNREACH"),
        libc::EMSGSIZE => Some("EMSGSIZE"),
        libc::ENOBUFS => Some("ENOBUFS"),
        libc::EPROTONOSUPPORT => Some("EPROTONOSUPPORT"),
        libc::ENOTCONN => Some("ENOTCONN"),
        libc::EDOM => Some("EDOM"),
        _ => None,
    };
    match errno.name().or(extra) {
        Some(name) => format!("{name} ({})", errno.0),
        None => format!("errno {}", errno.0),
    }
}

fn ext_ack_text(ext_ack: &Option<String>) -> String {
    match ext_ack {
        Some(text) => format!(": {text}"),
        None => String::new(),
    }
}

/// One rtnetlink socket (see the module contract).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: Cell<u32>,
    buf: RefCell<Vec<u8>>,
}

impl Netlink {
    /// A `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        Netlink::open_protocol(libc::NETLINK_ROUTE, "NETLINK_ROUTE socket")
    }

    /// A socket of another netlink protocol (`NETLINK_XFRM`: [`xfrm`]) in the calling
    /// thread's namespace, with the same requests, acknowledgements and errors.
    pub fn open_protocol(protocol: i32, what: &'static str) -> Result<Netlink> {
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if raw < 0 {
            return Err(NetlinkError::socket(what, "socket", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and the length given is its size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(NetlinkError::socket(what, "bind", std::io::Error::last_os_error()));
        }
        for (opt, name) in
            [(NETLINK_EXT_ACK, "setsockopt NETLINK_EXT_ACK"), (NETLINK_CAP_ACK, "setsockopt NETLINK_CAP_ACK")]
        {
            set_int_opt(fd.as_fd(), SOL_NETLINK, opt, 1).map_err(|e| NetlinkError::socket(what, name, e))?;
        }
        let timeout = libc::timeval { tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        // SAFETY: `timeout` is a valid timeval and the length given is its size.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(NetlinkError::socket(
                what,
                "setsockopt SO_RCVTIMEO",
                std::io::Error::last_os_error(),
            ));
        }
        // Sequence numbers start somewhere unlikely to match a stale reply of another socket.
        let seed = std::process::id().wrapping_mul(2_654_435_761) | 1;
        Ok(Netlink { fd, seq: Cell::new(seed), buf: RefCell::new(vec![0; 32 * 1024]) })
    }

    /// A socket in `netns` (opened from a helper thread that enters it).
    pub fn open_in(netns: &NetNs) -> Result<Netlink> {
        netns.run_in(Netlink::open)?
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        seq
    }

    /// Send `req` with `NLM_F_ACK` and wait for the acknowledgement; the data messages the
    /// kernel sent before it (a `GET` answer, an `NLM_F_ECHO`) are returned.
    pub fn request(&self, req: &mut Request) -> Result<Vec<Message>> {
        req.add_flags(msg::flags::ACK);
        let seq = self.send(req)?;
        let mut data = Vec::new();
        loop {
            match self.receive(req, seq, &mut data)? {
                Some(Status::Ack) => return Ok(data),
                Some(Status::Done) => return Ok(data),
                None => continue,
            }
        }
    }

    /// Send `req` and wait for the acknowledgement, ignoring any data.
    pub fn ack(&self, req: &mut Request) -> Result<()> {
        self.request(req).map(drop)
    }

    /// Send `req` as a dump (`NLM_F_DUMP`) and collect every message until `NLMSG_DONE`.
    pub fn dump(&self, req: &mut Request) -> Result<Vec<Message>> {
        req.add_flags(msg::flags::DUMP);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let seq = self.send(req)?;
            let mut data = Vec::new();
            while self.receive(req, seq, &mut data)?.is_none() {}
            let interrupted = data.iter().any(|m| m.flags & msg::flags::DUMP_INTR != 0);
            if !interrupted {
                return Ok(data);
            }
            if attempt >= DUMP_ATTEMPTS {
                return Err(NetlinkError::protocol(
                    req,
                    format!("dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"),
                ));
            }
        }
    }

    fn send(&self, req: &mut Request) -> Result<u32> {
        let seq = self.next_seq();
        let what = req.what().to_string();
        let bytes = req.finish(seq).map_err(|reason| NetlinkError::invalid(&what, reason))?;
        // SAFETY: sockaddr_nl is plain data; all-zero (pid 0) addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` is valid for its length; `kernel` is a valid sockaddr_nl of
            // the size given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::socket(&what, "sendto", err));
            }
            if sent as usize != bytes.len() {
                return Err(NetlinkError::socket(
                    &what,
                    "sendto",
                    std::io::Error::other(format!("sent {sent} of {} bytes", bytes.len())),
                ));
            }
            return Ok(seq);
        }
    }

    /// Read one datagram and file its messages for request `seq`: data into `data`; the
    /// final status, when it came, as `Some`.
    fn receive(&self, req: &Request, seq: u32, data: &mut Vec<Message>) -> Result<Option<Status>> {
        let mut buf = self.buf.borrow_mut();
        let len = self.recv_datagram(req, &mut buf)?;
        let msgs = msg::split(&buf[..len]).map_err(|reason| NetlinkError::protocol(req, reason))?;
        for m in msgs {
            if m.seq != seq {
                continue; // a stale answer to an earlier, abandoned request
            }
            match m.msg_type {
                msg::NLMSG_NOOP => {}
                msg::NLMSG_OVERRUN => return Err(NetlinkError::protocol(req, "NLMSG_OVERRUN: data lost")),
                msg::NLMSG_ERROR => {
                    let reply = msg::ErrorReply::parse(m.payload, m.flags)
                        .map_err(|reason| NetlinkError::protocol(req, reason))?;
                    return kernel_status(req, reply, Status::Ack).map(Some);
                }
                msg::NLMSG_DONE => {
                    let reply = msg::ErrorReply::parse_done(m.payload, m.flags)
                        .map_err(|reason| NetlinkError::protocol(req, reason))?;
                    return kernel_status(req, reply, Status::Done).map(Some);
                }
                _ => data.push(m.into()),
            }
        }
        Ok(None)
    }

    /// Receive one whole datagram, growing `buf` to its size first (peeked with
    /// `MSG_TRUNC`, which reports the real length).
    fn recv_datagram(&self, req: &Request, buf: &mut Vec<u8>) -> Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let peeked = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if peeked < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(recv_error(req, err));
            }
            let want = peeked as usize;
            if want > buf.len() {
                buf.resize(want, 0);
            }
            // SAFETY: `buf` is valid for writes of its length.
            let got = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(recv_error(req, err));
            }
            return Ok(got as usize);
        }
    }
}

fn recv_error(req: &Request, err: std::io::Error) -> NetlinkError {
    let err = if err.kind() == std::io::ErrorKind::WouldBlock {
        std::io::Error::new(err.kind(), format!("no reply within {} s", REPLY_TIMEOUT.as_secs()))
    } else {
        err
    };
    NetlinkError::socket(req.what(), "recv", err)
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ack,
    Done,
}

fn kernel_status(req: &Request, reply: msg::ErrorReply, ok: Status) -> Result<Status> {
    if reply.errno == 0 {
        return Ok(ok);
    }
    Err(NetlinkError::Kernel {
        request: req.what().to_string(),
        errno: Errno(reply.errno),
        ext_ack: reply.message,
    })
}

fn set_int_opt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `value` is a valid c_int and the length given is its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Check an interface name the way the kernel does (`dev_valid_name`): 1 to 15 bytes, not
/// `.` or `..`, no `/`, `:`, whitespace or NUL.
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(NetlinkError::invalid(format!("interface name {name:?}"), reason));
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("is reserved");
    }
    if name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace()) {
        return bad("must not contain '/', ':', whitespace or NUL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_request_errno_and_ext_ack() {
        let cases: Vec<(NetlinkError, &[&str])> = vec![
            (
                NetlinkError::Kernel {
                    request: "RTM_NEWLINK veth lxc1/eth0".into(),
                    errno: Errno(libc::EEXIST),
                    ext_ack: None,
                },
                &["RTM_NEWLINK veth lxc1/eth0", "EEXIST (17)"],
            ),
            (
                NetlinkError::Kernel {
                    request: "RTM_NEWADDR 10.0.0.1/24 on ifindex 999".into(),
                    errno: Errno(libc::ENODEV),
                    ext_ack: Some("ipv4: Device not found".into()),
                },
                &["RTM_NEWADDR", "ENODEV (19)", ": ipv4: Device not found"],
            ),
            (
                NetlinkError::Kernel {
                    request: "x".into(),
                    errno: Errno(libc::EADDRNOTAVAIL),
                    ext_ack: None,
                },
                &["EADDRNOTAVAIL (99)"],
            ),
        ];
        for (err, needles) in cases {
            let text = err.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{needle:?} missing from {text:?}");
            }
        }
        assert_eq!(errno_text(Errno(4242)), "errno 4242");
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["lxc1", "eth0.100", "a", "x".repeat(15).as_str(), "veth-a_b"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "x".repeat(16).as_str(), "a\0"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
