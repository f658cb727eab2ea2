//! msg: the netlink wire format as small typed builders and a strict reply parser.
//!
//! Contract:
//! - [`Request`] builds one message: the 16-byte `nlmsghdr`, a family header
//!   ([`IfInfoMsg`], [`IfAddrMsg`], [`RtMsg`], [`NdMsg`], [`TcMsg`]), then attributes. Every
//!   attribute and every nest starts on a 4-byte boundary and its length field covers its
//!   header and unpadded payload, as `NLA_ALIGN` requires; nests carry `NLA_F_NESTED`.
//!   Lengths that do not fit the wire (an attribute over 65535 bytes) are remembered and
//!   reported by [`Request::finish`], never truncated.
//! - A request knows what it is for ([`Request::what`], e.g. `RTM_NEWLINK veth lxc1/eth0`):
//!   every error about it names it.
//! - [`split`] cuts a received datagram into messages; [`Attrs`] walks attributes; both
//!   check every length against the buffer and return `Err(reason)` on malformed input.
//!   No input makes this module panic.
//! - [`ErrorReply::parse`] reads an `NLMSG_ERROR` (or the status of an `NLMSG_DONE`),
//!   including the extended ack (`NLMSGERR_ATTR_MSG` text, `NLMSGERR_ATTR_OFFS`) whether or
//!   not the kernel capped the echoed request.
//! - Integers are in host byte order except where the kernel wants network order (ports,
//!   the tc protocol): those builders say so.

use std::fmt;
use std::net::IpAddr;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)` / `sizeof(struct rtattr)`.
pub const NLA_HDRLEN: usize = 4;
/// Largest attribute (header included) the 16-bit length field can describe.
const NLA_MAX_LEN: usize = u16::MAX as usize;

/// Control message types.
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

/// Attribute type flags.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Extended-ack attributes after an `nlmsgerr`.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
pub const NLMSGERR_ATTR_OFFS: u16 = 2;

/// `nlmsg_flags` bits.
pub mod flags {
    pub const REQUEST: u16 = 0x1;
    pub const MULTI: u16 = 0x2;
    pub const ACK: u16 = 0x4;
    pub const ECHO: u16 = 0x8;
    pub const DUMP_INTR: u16 = 0x10;
    // GET requests.
    pub const ROOT: u16 = 0x100;
    pub const MATCH: u16 = 0x200;
    pub const DUMP: u16 = ROOT | MATCH;
    // NEW requests.
    pub const REPLACE: u16 = 0x100;
    pub const EXCL: u16 = 0x200;
    pub const CREATE: u16 = 0x400;
    // NLMSG_ERROR replies.
    pub const CAPPED: u16 = 0x100;
    pub const ACK_TLVS: u16 = 0x200;
}

/// rtnetlink message types (`RTM_*`).
pub mod rtm {
    pub const NEWLINK: u16 = 16;
    pub const DELLINK: u16 = 17;
    pub const GETLINK: u16 = 18;
    pub const SETLINK: u16 = 19;
    pub const NEWADDR: u16 = 20;
    pub const DELADDR: u16 = 21;
    pub const GETADDR: u16 = 22;
    pub const NEWROUTE: u16 = 24;
    pub const DELROUTE: u16 = 25;
    pub const GETROUTE: u16 = 26;
    pub const NEWNEIGH: u16 = 28;
    pub const DELNEIGH: u16 = 29;
    pub const GETNEIGH: u16 = 30;
    pub const NEWQDISC: u16 = 36;
    pub const DELQDISC: u16 = 37;
    pub const GETQDISC: u16 = 38;
    pub const NEWTFILTER: u16 = 44;
    pub const DELTFILTER: u16 = 45;
    pub const GETTFILTER: u16 = 46;
}

/// The kernel's name for a message type (`RTM_NEWLINK`), or `"msg"` for unknown ones.
pub fn msg_type_name(msg_type: u16) -> &'static str {
    match msg_type {
        NLMSG_NOOP => "NLMSG_NOOP",
        NLMSG_ERROR => "NLMSG_ERROR",
        NLMSG_DONE => "NLMSG_DONE",
        NLMSG_OVERRUN => "NLMSG_OVERRUN",
        rtm::NEWLINK => "RTM_NEWLINK",
        rtm::DELLINK => "RTM_DELLINK",
        rtm::GETLINK => "RTM_GETLINK",
        rtm::SETLINK => "RTM_SETLINK",
        rtm::NEWADDR => "RTM_NEWADDR",
        rtm::DELADDR => "RTM_DELADDR",
        rtm::GETADDR => "RTM_GETADDR",
        rtm::NEWROUTE => "RTM_NEWROUTE",
        rtm::DELROUTE => "RTM_DELROUTE",
        rtm::GETROUTE => "RTM_GETROUTE",
        rtm::NEWNEIGH => "RTM_NEWNEIGH",
        rtm::DELNEIGH => "RTM_DELNEIGH",
        rtm::GETNEIGH => "RTM_GETNEIGH",
        rtm::NEWQDISC => "RTM_NEWQDISC",
        rtm::DELQDISC => "RTM_DELQDISC",
        rtm::GETQDISC => "RTM_GETQDISC",
        rtm::NEWTFILTER => "RTM_NEWTFILTER",
        rtm::DELTFILTER => "RTM_DELTFILTER",
        rtm::GETTFILTER => "RTM_GETTFILTER",
        _ => "msg",
    }
}

/// `NLMSG_ALIGN` / `NLA_ALIGN`: round up to 4 bytes.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A fixed family header that follows `nlmsghdr`.
pub trait FamilyHeader: Sized {
    /// Its size on the wire (already a multiple of 4).
    const LEN: usize;
    /// Append exactly [`Self::LEN`] bytes.
    fn encode(&self, out: &mut Vec<u8>);
    /// Read it from the start of a payload; `None` when the payload is too short.
    fn parse(bytes: &[u8]) -> Option<Self>;
}

/// Little cursor over a family header's bytes, in host byte order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_ne_bytes(self.take())
    }
}

/// `struct ifinfomsg` (16 bytes): links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfInfoMsg {
    pub family: u8,
    /// `ifi_type` (ARPHRD_*).
    pub link_type: u16,
    pub index: i32,
    /// `IFF_*` flags.
    pub flags: u32,
    /// Which `flags` bits to change.
    pub change: u32,
}

impl FamilyHeader for IfInfoMsg {
    const LEN: usize = 16;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, 0]);
        out.extend_from_slice(&self.link_type.to_ne_bytes());
        out.extend_from_slice(&self.index.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.change.to_ne_bytes());
    }
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let mut f = Fields(bytes);
        let family = f.u8();
        f.u8();
        Some(IfInfoMsg { family, link_type: f.u16(), index: f.i32(), flags: f.u32(), change: f.u32() })
    }
}

/// `struct ifaddrmsg` (8 bytes): addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfAddrMsg {
    pub family: u8,
    pub prefix_len: u8,
    /// `IFA_F_*` (low 8 bits; `IFA_FLAGS` carries all 32).
    pub flags: u8,
    pub scope: u8,
    pub index: u32,
}

impl FamilyHeader for IfAddrMsg {
    const LEN: usize = 8;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.prefix_len, self.flags, self.scope]);
        out.extend_from_slice(&self.index.to_ne_bytes());
    }
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let mut f = Fields(bytes);
        Some(IfAddrMsg { family: f.u8(), prefix_len: f.u8(), flags: f.u8(), scope: f.u8(), index: f.u32() })
    }
}

/// `struct rtmsg` (12 bytes): routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtMsg {
    pub family: u8,
    pub dst_len: u8,
    pub src_len: u8,
    pub tos: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    /// `rtm_type` (RTN_*).
    pub route_type: u8,
    /// `RTM_F_*` / `RTNH_F_*`.
    pub flags: u32,
}

impl FamilyHeader for RtMsg {
    const LEN: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.route_type,
        ]);
        out.extend_from_slice(&self.flags.to_ne_bytes());
    }
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let mut f = Fields(bytes);
        Some(RtMsg {
            family: f.u8(),
            dst_len: f.u8(),
            src_len: f.u8(),
            tos: f.u8(),
            table: f.u8(),
            protocol: f.u8(),
            scope: f.u8(),
            route_type: f.u8(),
            flags: f.u32(),
        })
    }
}

/// `struct ndmsg` (12 bytes): neighbours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NdMsg {
    pub family: u8,
    pub ifindex: i32,
    /// `NUD_*`.
    pub state: u16,
    /// `NTF_*`.
    pub flags: u8,
    pub neigh_type: u8,
}

impl FamilyHeader for NdMsg {
    const LEN: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, 0, 0, 0]);
        out.extend_from_slice(&self.ifindex.to_ne_bytes());
        out.extend_from_slice(&self.state.to_ne_bytes());
        out.extend_from_slice(&[self.flags, self.neigh_type]);
    }
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let mut f = Fields(bytes);
        let family = f.u8();
        f.take::<3>();
        Some(NdMsg { family, ifindex: f.i32(), state: f.u16(), flags: f.u8(), neigh_type: f.u8() })
    }
}

/// `struct tcmsg` (20 bytes): qdiscs and filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcMsg {
    pub family: u8,
    pub ifindex: i32,
    pub handle: u32,
    pub parent: u32,
    /// Filters: `TC_H_MAKE(prio << 16, htons(protocol))`.
    pub info: u32,
}

impl FamilyHeader for TcMsg {
    const LEN: usize = 20;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, 0, 0, 0]);
        out.extend_from_slice(&self.ifindex.to_ne_bytes());
        out.extend_from_slice(&self.handle.to_ne_bytes());
        out.extend_from_slice(&self.parent.to_ne_bytes());
        out.extend_from_slice(&self.info.to_ne_bytes());
    }
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let mut f = Fields(bytes);
        let family = f.u8();
        f.take::<3>();
        Some(TcMsg { family, ifindex: f.i32(), handle: f.u32(), parent: f.u32(), info: f.u32() })
    }
}

/// An open nest: where its header sits in the request.
#[derive(Debug)]
#[must_use = "a nest must be closed with Request::end_nest"]
pub struct Nest {
    at: usize,
    kind: u16,
}

/// One request message under construction.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
    what: String,
    /// The first attribute (type) whose length did not fit 16 bits.
    too_long: Option<u16>,
}

impl Request {
    /// A message of `msg_type` with `flags` (`NLM_F_REQUEST` is always added). `what`
    /// describes the request for errors; the message type's name is put in front of it.
    pub fn new(msg_type: u16, flags: u16, what: impl fmt::Display) -> Request {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&(flags | self::flags::REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq, set by finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel fills it in
        Request { buf, what: format!("{} {what}", msg_type_name(msg_type)), too_long: None }
    }

    /// The description errors use, e.g. `RTM_NEWLINK veth lxc1/eth0`.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The message type.
    pub fn msg_type(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    /// The `nlmsg_flags`.
    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    /// Add `extra` to the `nlmsg_flags`.
    pub fn add_flags(&mut self, extra: u16) -> &mut Self {
        let flags = self.flags() | extra;
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self
    }

    /// Append the family header (call once, before any attribute).
    pub fn header(&mut self, header: &impl FamilyHeader) -> &mut Self {
        header.encode(&mut self.buf);
        self.pad();
        self
    }

    /// Append raw bytes at the current position (a family header nested inside an
    /// attribute, as `VETH_INFO_PEER` carries), then pad to 4 bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Append attribute `kind` with `payload`.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + payload.len();
        if len > NLA_MAX_LEN {
            self.too_long.get_or_insert(kind);
        }
        self.buf.extend_from_slice(&(len.min(NLA_MAX_LEN) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    pub fn attr_u8(&mut self, kind: u16, value: u8) -> &mut Self {
        self.attr(kind, &[value])
    }

    pub fn attr_u16(&mut self, kind: u16, value: u16) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A 16-bit value in network byte order (ports).
    pub fn attr_be16(&mut self, kind: u16, value: u16) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    pub fn attr_i32(&mut self, kind: u16, value: i32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string (the caller has checked it holds no NUL).
    pub fn attr_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// An address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub fn attr_ip(&mut self, kind: u16, addr: IpAddr) -> &mut Self {
        match addr {
            IpAddr::V4(a) => self.attr(kind, &a.octets()),
            IpAddr::V6(a) => self.attr(kind, &a.octets()),
        }
    }

    /// Open a nest of type `kind` (sent with `NLA_F_NESTED`).
    pub fn begin_nest(&mut self, kind: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        Nest { at, kind }
    }

    /// Close `nest`: its length now covers everything appended since it was opened.
    pub fn end_nest(&mut self, nest: Nest) -> &mut Self {
        let len = self.buf.len() - nest.at;
        if len > NLA_MAX_LEN {
            self.too_long.get_or_insert(nest.kind);
        }
        self.buf[nest.at..nest.at + 2].copy_from_slice(&(len.min(NLA_MAX_LEN) as u16).to_ne_bytes());
        self
    }

    /// A nest filled by `fill`.
    pub fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Request)) -> &mut Self {
        let nest = self.begin_nest(kind);
        fill(self);
        self.end_nest(nest)
    }

    /// Set the length and sequence number; the bytes to send. `Err` names the first
    /// attribute whose length does not fit its 16-bit field.
    pub fn finish(&mut self, seq: u32) -> Result<&[u8], String> {
        if let Some(kind) = self.too_long {
            return Err(format!("attribute type {kind} is longer than {NLA_MAX_LEN} bytes"));
        }
        let len = u32::try_from(self.buf.len()).map_err(|_| "message longer than 4 GiB".to_string())?;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(&self.buf)
    }

    /// The bytes built so far (length and sequence are set by [`Request::finish`]).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// One received message, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    /// Everything after the `nlmsghdr`, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

/// A received data message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg_type: u16,
    pub flags: u16,
    pub payload: Vec<u8>,
}

impl Message {
    /// The family header at the start of the payload and the attributes after it.
    pub fn split<H: FamilyHeader>(&self) -> Result<(H, Attrs<'_>), String> {
        let header = H::parse(&self.payload).ok_or_else(|| {
            format!(
                "{} payload of {} bytes is shorter than its {}-byte header",
                msg_type_name(self.msg_type),
                self.payload.len(),
                H::LEN
            )
        })?;
        Ok((header, Attrs::new(self.payload.get(H::LEN..).unwrap_or_default())))
    }
}

impl From<RawMessage<'_>> for Message {
    fn from(raw: RawMessage<'_>) -> Message {
        Message { msg_type: raw.msg_type, flags: raw.flags, payload: raw.payload.to_vec() }
    }
}

/// Cut a datagram into messages. Each `nlmsg_len` must cover its header and fit the
/// datagram; messages start on 4-byte boundaries.
pub fn split(datagram: &[u8]) -> Result<Vec<RawMessage<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(format!("{} trailing bytes, shorter than a message header", rest.len()));
        }
        let word = |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = word(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!("message length {len} outside 16..={}", rest.len()));
        }
        out.push(RawMessage {
            msg_type: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: word(8),
            port: word(12),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = rest.get(align(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// One attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// The type with `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` masked off.
    pub kind: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self) -> Result<[u8; N], String> {
        self.payload.get(..N).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            format!("attribute type {} has {} bytes, expected {N}", self.kind, self.payload.len())
        })
    }

    pub fn u8(&self) -> Result<u8, String> {
        Ok(self.fixed::<1>()?[0])
    }

    pub fn u16(&self) -> Result<u16, String> {
        Ok(u16::from_ne_bytes(self.fixed()?))
    }

    pub fn u32(&self) -> Result<u32, String> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }

    pub fn i32(&self) -> Result<i32, String> {
        Ok(i32::from_ne_bytes(self.fixed()?))
    }

    /// A string up to its first NUL (invalid UTF-8 replaced).
    pub fn string(&self) -> String {
        let end = self.payload.iter().position(|&b| b == 0).unwrap_or(self.payload.len());
        String::from_utf8_lossy(&self.payload[..end]).into_owned()
    }

    /// An address of 4 or 16 bytes.
    pub fn ip(&self) -> Result<IpAddr, String> {
        match self.payload.len() {
            4 => Ok(IpAddr::from(self.fixed::<4>()?)),
            16 => Ok(IpAddr::from(self.fixed::<16>()?)),
            n => Err(format!("attribute type {} has {n} bytes, not an IPv4 or IPv6 address", self.kind)),
        }
    }

    /// The attributes nested inside this one.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.payload)
    }
}

/// Iterator over the attributes in a buffer; yields `Err` once on malformed input, then ends.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        // Fewer than a header's worth of bytes is padding; the kernel never sends it, but
        // it is not worth failing over.
        if self.rest.len() < NLA_HDRLEN {
            self.rest = &[];
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.rest.len() {
            let reason = format!("attribute type {kind} length {len} outside 4..={}", self.rest.len());
            self.rest = &[];
            return Some(Err(reason));
        }
        let attr = Attr { kind, payload: &self.rest[NLA_HDRLEN..len] };
        self.rest = self.rest.get(align(len)..).unwrap_or_default();
        Some(Ok(attr))
    }
}

/// The status the kernel sent in an `NLMSG_ERROR` or `NLMSG_DONE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Positive errno; 0 is an acknowledgement.
    pub errno: i32,
    /// `NLMSGERR_ATTR_MSG`: the kernel's explanation.
    pub message: Option<String>,
    /// `NLMSGERR_ATTR_OFFS`: offset of the offending attribute in the request.
    pub offset: Option<u32>,
}

impl ErrorReply {
    /// Parse the payload of an `NLMSG_ERROR` (`struct nlmsgerr`: error, then the request's
    /// header, and the whole request unless `NLM_F_CAPPED`; then the ext-ack TLVs when
    /// `NLM_F_ACK_TLVS`).
    pub fn parse(payload: &[u8], flags: u16) -> Result<ErrorReply, String> {
        let errno = status(payload)?;
        if flags & self::flags::ACK_TLVS == 0 {
            return Ok(ErrorReply { errno, message: None, offset: None });
        }
        let echoed = if flags & self::flags::CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            let len = payload.get(4..8).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
            align(len.ok_or("error reply without the echoed header")?)
        };
        let tlvs = payload.get(4 + echoed..).ok_or("ext-ack attributes outside the error reply")?;
        let mut reply = ext_ack(tlvs)?;
        reply.errno = errno;
        Ok(reply)
    }

    /// Parse the payload of an `NLMSG_DONE`: the dump's status, and ext-ack TLVs right
    /// after it when `NLM_F_ACK_TLVS`. An empty payload means success.
    pub fn parse_done(payload: &[u8], flags: u16) -> Result<ErrorReply, String> {
        if payload.is_empty() {
            return Ok(ErrorReply { errno: 0, message: None, offset: None });
        }
        let errno = status(payload)?;
        if flags & self::flags::ACK_TLVS == 0 {
            return Ok(ErrorReply { errno, message: None, offset: None });
        }
        let mut reply = ext_ack(&payload[4..])?;
        reply.errno = errno;
        Ok(reply)
    }
}

/// The leading `int error` (negative errno), as a positive errno.
fn status(payload: &[u8]) -> Result<i32, String> {
    let raw = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("status payload of {} bytes", payload.len()))?;
    Ok(raw.checked_neg().unwrap_or(i32::MAX).max(0))
}

fn ext_ack(tlvs: &[u8]) -> Result<ErrorReply, String> {
    let mut reply = ErrorReply { errno: 0, message: None, offset: None };
    for attr in Attrs::new(tlvs) {
        let attr = attr?;
        match attr.kind {
            NLMSGERR_ATTR_MSG => reply.message = Some(attr.string()).filter(|m| !m.is_empty()),
            NLMSGERR_ATTR_OFFS => reply.offset = attr.u32().ok(),
            _ => {}
        }
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    #[test]
    fn request_layout_header_attrs_and_nests() {
        let mut req = Request::new(rtm::NEWLINK, flags::CREATE | flags::EXCL, "veth a/b");
        req.header(&IfInfoMsg::default());
        req.attr_str(3, "a"); // 4 + 2 bytes, padded to 8
        req.nest(18, |r| {
            r.attr_str(1, "veth"); // 4 + 5, padded to 12
            r.nest(2, |r| {
                r.attr_u8(9, 7); // 4 + 1, padded to 8
            });
        });
        assert_eq!(req.what(), "RTM_NEWLINK veth a/b");
        let bytes = req.finish(42).expect("fits").to_vec();
        assert_eq!(bytes.len(), 16 + 16 + 8 + 4 + 12 + 4 + 8);
        assert_eq!(&bytes[0..4], &(bytes.len() as u32).to_ne_bytes());
        assert_eq!(&bytes[4..6], &ne16(rtm::NEWLINK));
        assert_eq!(&bytes[6..8], &ne16(flags::REQUEST | flags::CREATE | flags::EXCL));
        assert_eq!(&bytes[8..12], &42u32.to_ne_bytes());
        // IFLA_IFNAME "a\0": length 6 (unpadded), then 2 bytes of padding.
        assert_eq!(&bytes[32..40], &[ne16(6)[0], ne16(6)[1], ne16(3)[0], ne16(3)[1], b'a', 0, 0, 0]);
        // The outer nest covers its header and both children (padded sizes).
        assert_eq!(&bytes[40..42], &ne16(4 + 12 + 4 + 8));
        assert_eq!(&bytes[42..44], &ne16(18 | NLA_F_NESTED));
        assert_eq!(&bytes[56..58], &ne16(12), "inner nest");
        assert_eq!(&bytes[60..62], &ne16(5), "u8 attribute length excludes padding");

        // And the parser reads back what the builder wrote.
        let msgs = split(&bytes).expect("one message");
        assert_eq!(msgs.len(), 1);
        let msg = Message::from(msgs[0]);
        let (hdr, attrs) = msg.split::<IfInfoMsg>().expect("header");
        assert_eq!(hdr, IfInfoMsg::default());
        let attrs: Vec<Attr<'_>> = attrs.collect::<Result<_, _>>().expect("attrs");
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].string(), "a");
        assert_eq!(attrs[1].kind, 18, "NLA_F_NESTED is masked off");
        let inner: Vec<Attr<'_>> = attrs[1].nested().collect::<Result<_, _>>().expect("nested");
        assert_eq!(inner[0].string(), "veth");
        let deepest = inner[1].nested().next().expect("one").expect("valid");
        assert_eq!(deepest.u8(), Ok(7));
    }

    #[test]
    fn oversized_attribute_fails_at_finish() {
        let mut req = Request::new(rtm::NEWLINK, 0, "big");
        req.attr(7, &vec![0u8; 70_000]);
        let err = req.finish(1).unwrap_err();
        assert!(err.contains("attribute type 7"), "{err}");
    }

    #[test]
    fn family_headers_round_trip() {
        fn round<H: FamilyHeader + PartialEq + std::fmt::Debug>(h: H) {
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(out.len(), H::LEN);
            assert_eq!(H::parse(&out).as_ref(), Some(&h));
            assert_eq!(H::parse(&out[..H::LEN - 1]), None, "short input");
        }
        round(IfInfoMsg { family: 0, link_type: 1, index: 7, flags: 1, change: 1 });
        round(IfAddrMsg { family: 2, prefix_len: 24, flags: 2, scope: 0, index: 9 });
        round(RtMsg {
            family: 10,
            dst_len: 64,
            src_len: 0,
            tos: 0,
            table: 254,
            protocol: 4,
            scope: 253,
            route_type: 1,
            flags: 4,
        });
        round(NdMsg { family: 2, ifindex: 3, state: 0x80, flags: 0, neigh_type: 0 });
        round(TcMsg { family: 0, ifindex: 4, handle: 1, parent: 0xffff_fff2, info: 0x0001_0300 });
    }

    /// A message as the kernel sends it.
    fn message(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&77u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align(out.len()), 0);
        out
    }

    fn tlv(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align(out.len()), 0);
        out
    }

    #[test]
    fn multipart_dump_splits_into_messages() {
        let mut datagram = message(rtm::NEWLINK, flags::MULTI, 5, &[1, 2, 3]);
        datagram.extend(message(rtm::NEWLINK, flags::MULTI, 5, &[4; 8]));
        datagram.extend(message(NLMSG_DONE, flags::MULTI, 5, &0i32.to_ne_bytes()));
        let msgs = split(&datagram).expect("valid");
        let kinds: Vec<u16> = msgs.iter().map(|m| m.msg_type).collect();
        assert_eq!(kinds, [rtm::NEWLINK, rtm::NEWLINK, NLMSG_DONE]);
        assert_eq!(msgs[0].payload, &[1, 2, 3], "nlmsg_len excludes the padding");
        assert!(msgs.iter().all(|m| m.seq == 5 && m.port == 77));
        let done = ErrorReply::parse_done(msgs[2].payload, msgs[2].flags).expect("status");
        assert_eq!(done.errno, 0);
    }

    #[test]
    fn error_reply_with_ext_ack_capped_and_uncapped() {
        let request = {
            let mut r = Request::new(rtm::NEWADDR, flags::ACK, "x");
            r.header(&IfAddrMsg::default());
            r.attr_u32(2, 0x0100_000a);
            r.finish(9).expect("fits").to_vec()
        };
        let mut tlvs = tlv(NLMSGERR_ATTR_MSG, b"ipv4: Device not found\0");
        tlvs.extend(tlv(NLMSGERR_ATTR_OFFS, &24u32.to_ne_bytes()));

        // Capped: only the request's header is echoed.
        let mut payload = (-libc::ENODEV).to_ne_bytes().to_vec();
        payload.extend_from_slice(&request[..16]);
        payload.extend_from_slice(&tlvs);
        let reply = ErrorReply::parse(&payload, flags::CAPPED | flags::ACK_TLVS).expect("valid");
        assert_eq!(reply.errno, libc::ENODEV);
        assert_eq!(reply.message.as_deref(), Some("ipv4: Device not found"));
        assert_eq!(reply.offset, Some(24));

        // Uncapped: the whole request is echoed before the TLVs.
        let mut payload = (-libc::ENODEV).to_ne_bytes().to_vec();
        payload.extend_from_slice(&request);
        payload.extend_from_slice(&tlvs);
        let reply = ErrorReply::parse(&payload, flags::ACK_TLVS).expect("valid");
        assert_eq!(reply.message.as_deref(), Some("ipv4: Device not found"));

        // No TLVs flag: errno only. An ack is errno 0.
        let reply = ErrorReply::parse(&(-libc::EEXIST).to_ne_bytes(), 0).expect("valid");
        assert_eq!(reply, ErrorReply { errno: libc::EEXIST, message: None, offset: None });
        assert_eq!(ErrorReply::parse(&0i32.to_ne_bytes(), 0).expect("ack").errno, 0);

        // A dump that failed: the status and TLVs follow directly.
        let mut done = (-libc::EOPNOTSUPP).to_ne_bytes().to_vec();
        done.extend(tlv(NLMSGERR_ATTR_MSG, b"no\0"));
        let reply = ErrorReply::parse_done(&done, flags::ACK_TLVS).expect("valid");
        assert_eq!((reply.errno, reply.message.as_deref()), (libc::EOPNOTSUPP, Some("no")));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            &[1, 2, 3],
            &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // length below the header
            &[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // length past the end
        ];
        for case in cases {
            assert!(split(case).is_err(), "{case:?}");
        }
        let bad_attrs: &[&[u8]] = &[&[2, 0, 1, 0], &[9, 0, 1, 0, 0, 0, 0, 0]];
        for case in bad_attrs {
            let results: Vec<_> = Attrs::new(case).collect();
            assert_eq!(results.len(), 1, "{case:?}");
            assert!(results[0].is_err(), "{case:?}");
        }
        // Truncated error replies and wrong-size integers.
        assert!(ErrorReply::parse(&[1, 2], 0).is_err());
        assert!(ErrorReply::parse(&(-1i32).to_ne_bytes(), flags::ACK_TLVS).is_err());
        let attr = Attr { kind: 4, payload: &[1, 2] };
        assert!(attr.u32().is_err() && attr.ip().is_err());
        // Every prefix of a valid message parses or fails cleanly.
        let msg = message(rtm::NEWLINK, 0, 1, &tlv(3, b"eth0\0"));
        for end in 0..msg.len() {
            let _ =
                split(&msg[..end]).map(|m| m.iter().map(|m| Attrs::new(m.payload).count()).sum::<usize>());
        }
    }
}
