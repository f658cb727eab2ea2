//! Builds test frames with correct lengths and checksums.
//!
//! A frame is built outside in, one stage type per layer, so only meaningful calls exist:
//!
//! ```
//! use sluice::packet::PacketBuilder;
//! let frame = PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
//!     .vlan(100)
//!     .vlan(200)
//!     .ipv4([10, 0, 0, 1].into(), [10, 0, 0, 2].into())
//!     .ttl(64)
//!     .udp(1234, 53)
//!     .payload(b"hi")
//!     .build();
//! assert_eq!(sluice::packet::checksum::verify_frame(&frame), Ok(2));
//! ```
//!
//! [`PacketBuilder`] (link) -> [`Ipv4Builder`] / [`Ipv6Builder`] (network) -> [`PayloadBuilder`]
//! (transport header and payload; `build`). `Ipv4Builder::new` / `Ipv6Builder::new` start a
//! bare IP packet without a link header.
//!
//! Every length and checksum field is computed; the L4 checksum is computed over exactly the
//! bytes built, so a fragment's L4 checksum is that of the fragment (write non-first fragments
//! with `raw_l4`). The IPv6 pseudo-header uses the header's destination address. Lengths that do
//! not fit their fields (IPv4 options over 40 bytes, packets over 65535 bytes, extension headers
//! over 2048 bytes) are [`BuildError`]s from [`PayloadBuilder::try_build`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::ethernet::{ethertype, MacAddr};
use super::ip_proto;
use super::tcp::TcpFlags;

/// A frame that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes, at most {max} fit")]
pub struct BuildError {
    pub what: &'static str,
    pub len: usize,
    pub max: usize,
}

/// `(layer name, offset)` for each header of a built frame; see [`PayloadBuilder::layer_offsets`].
pub type LayerOffsets = Vec<(&'static str, usize)>;

/// Returns the first `len` bytes of `frame` (all of it when shorter).
pub fn truncate_at(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len.min(frame.len())].to_vec()
}

/// An IPv6 extension header, in the order added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtHeader {
    /// Options (TLVs) as given; padded with Pad1/PadN to a multiple of 8 bytes.
    HopByHop(Vec<u8>),
    /// `data` is everything after the first four bytes (type-specific; for type 4, the segment
    /// routing header's last-entry, flags, tag and segments); zero-padded to a multiple of 8.
    Routing { routing_type: u8, segments_left: u8, data: Vec<u8> },
    /// `offset` in 8-byte units (13 bits), `more` fragments flag, identification.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Options as given; padded like Hop-by-Hop.
    DestOpts(Vec<u8>),
}

impl ExtHeader {
    fn header_type(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => ip_proto::HOP_BY_HOP,
            ExtHeader::Routing { .. } => ip_proto::IPV6_ROUTING,
            ExtHeader::Fragment { .. } => ip_proto::IPV6_FRAGMENT,
            ExtHeader::DestOpts(_) => ip_proto::IPV6_DEST_OPTS,
        }
    }

    fn encode(&self, next_header: u8, out: &mut Vec<u8>) -> Result<(), BuildError> {
        let start = out.len();
        match self {
            ExtHeader::HopByHop(options) | ExtHeader::DestOpts(options) => {
                out.extend_from_slice(&[next_header, 0]);
                out.extend_from_slice(options);
                match (8 - (2 + options.len()) % 8) % 8 {
                    0 => {}
                    1 => out.push(0), // Pad1
                    n => {
                        out.extend_from_slice(&[1, (n - 2) as u8]); // PadN
                        out.resize(out.len() + n - 2, 0);
                    }
                }
            }
            ExtHeader::Routing { routing_type, segments_left, data } => {
                out.extend_from_slice(&[next_header, 0, *routing_type, *segments_left]);
                out.extend_from_slice(data);
                out.resize(start + (4 + data.len()).div_ceil(8) * 8, 0);
            }
            ExtHeader::Fragment { offset, more, id } => {
                let flg_off = ((offset & 0x1fff) << 3) | u16::from(*more);
                out.extend_from_slice(&[next_header, 0]);
                out.extend_from_slice(&flg_off.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        let len = out.len() - start;
        if len > 2048 {
            return Err(BuildError { what: "an IPv6 extension header", len, max: 2048 });
        }
        if !matches!(self, ExtHeader::Fragment { .. }) {
            out[start + 1] = (len / 8 - 1) as u8;
        }
        Ok(())
    }
}

/// All TCP header fields; [`Default`] is ports 0, no flags, window 65535, no options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub urgent: u16,
    /// Raw option bytes; padded with EOL (0) to a multiple of 4, at most 40.
    pub options: Vec<u8>,
}

impl Default for TcpHeader {
    fn default() -> Self {
        TcpHeader {
            src_port: 0,
            dst_port: 0,
            flags: TcpFlags::NONE,
            seq: 0,
            ack: 0,
            window: 65535,
            urgent: 0,
            options: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    src: MacAddr,
    dst: MacAddr,
    /// `(TPID, TCI)`, outermost first; `None` TPID is chosen at build time.
    tags: Vec<(Option<u16>, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ipv4Spec {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos: u8,
    ident: u16,
    dont_frag: bool,
    more_frags: bool,
    frag_offset: u16,
    ttl: u8,
    options: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ipv6Spec {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    ext: Vec<ExtHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Network {
    V4(Ipv4Spec),
    V6(Ipv6Spec),
    /// A non-IP ethertype; the payload follows the link header directly.
    Raw(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    None,
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Tcp(TcpHeader),
    /// ICMPv4 or ICMPv6 (by network), with the 4-byte rest of header.
    Icmp {
        msg_type: u8,
        code: u8,
        rest: u32,
    },
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

/// The link stage: an Ethernet header and its VLAN tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketBuilder {
    link: Link,
}

impl PacketBuilder {
    /// An Ethernet II header (note the argument order: source first).
    pub fn ethernet(src_mac: impl Into<MacAddr>, dst_mac: impl Into<MacAddr>) -> Self {
        PacketBuilder { link: Link { src: src_mac.into(), dst: dst_mac.into(), tags: Vec::new() } }
    }

    /// Adds a VLAN tag inside those already added, VID masked to 12 bits. The TPID follows
    /// 802.1ad: the innermost tag is 802.1Q (0x8100), every outer one 802.1ad (0x88a8).
    pub fn vlan(mut self, vid: u16) -> Self {
        self.link.tags.push((None, vid & 0x0fff));
        self
    }

    /// Adds a VLAN tag with an explicit TPID and full TCI (PCP, DEI, VID), e.g. two 0x8100 tags
    /// for pre-802.1ad double tagging.
    pub fn vlan_tag(mut self, tpid: u16, tci: u16) -> Self {
        self.link.tags.push((Some(tpid), tci));
        self
    }

    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4Builder {
        Ipv4Builder { link: Some(self.link), ip: Ipv4Spec::new(src, dst) }
    }

    pub fn ipv6(self, src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6Builder {
        Ipv6Builder { link: Some(self.link), ip: Ipv6Spec::new(src, dst) }
    }

    /// A non-IP frame (e.g. ARP, 0x0806) carrying `payload` as is.
    pub fn ethertype_raw(self, ethertype: u16, payload: &[u8]) -> PayloadBuilder {
        PayloadBuilder {
            link: Some(self.link),
            network: Network::Raw(ethertype),
            transport: Transport::None,
            payload: payload.to_vec(),
            trailer: Vec::new(),
        }
    }
}

impl Ipv4Spec {
    fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Ipv4Spec {
            src,
            dst,
            tos: 0,
            ident: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            ttl: 64,
            options: Vec::new(),
        }
    }
}

impl Ipv6Spec {
    fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Ipv6Spec { src, dst, traffic_class: 0, flow_label: 0, hop_limit: 64, ext: Vec::new() }
    }
}

/// The IPv4 stage. Defaults: TTL 64, TOS 0, ident 0, no flags, no options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Builder {
    link: Option<Link>,
    ip: Ipv4Spec,
}

impl Ipv4Builder {
    /// A bare IPv4 packet (no link header).
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Ipv4Builder { link: None, ip: Ipv4Spec::new(src, dst) }
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ip.ttl = ttl;
        self
    }

    /// DSCP and ECN byte.
    pub fn tos(mut self, tos: u8) -> Self {
        self.ip.tos = tos;
        self
    }

    pub fn ident(mut self, ident: u16) -> Self {
        self.ip.ident = ident;
        self
    }

    pub fn dont_fragment(mut self) -> Self {
        self.ip.dont_frag = true;
        self
    }

    /// Option bytes as given, padded with EOL (0) to a multiple of 4; at most 40 bytes.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ip.options = options.to_vec();
        self
    }

    /// Fragment offset in 8-byte units (masked to 13 bits) and the more-fragments flag.
    pub fn ipv4_fragment(mut self, offset: u16, more_fragments: bool) -> Self {
        self.ip.frag_offset = offset & 0x1fff;
        self.ip.more_frags = more_fragments;
        self
    }

    fn transport(self, transport: Transport) -> PayloadBuilder {
        PayloadBuilder {
            link: self.link,
            network: Network::V4(self.ip),
            transport,
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    pub fn udp(self, src_port: u16, dst_port: u16) -> PayloadBuilder {
        self.transport(Transport::Udp { src_port, dst_port })
    }

    pub fn tcp(self, src_port: u16, dst_port: u16, flags: TcpFlags, seq: u32, ack: u32) -> PayloadBuilder {
        self.tcp_with(TcpHeader { src_port, dst_port, flags, seq, ack, ..TcpHeader::default() })
    }

    pub fn tcp_with(self, header: TcpHeader) -> PayloadBuilder {
        self.transport(Transport::Tcp(header))
    }

    /// ICMP echo request (type 8).
    pub fn icmpv4_echo(self, id: u16, seq: u16) -> PayloadBuilder {
        self.icmpv4(8, 0, (u32::from(id) << 16) | u32::from(seq))
    }

    /// Any ICMP message: type, code and the 4-byte rest of header.
    pub fn icmpv4(self, msg_type: u8, code: u8, rest: u32) -> PayloadBuilder {
        self.transport(Transport::Icmp { msg_type, code, rest })
    }

    /// Raw upper-layer bytes under `protocol`; no checksum is computed.
    pub fn raw_l4(self, protocol: u8, bytes: &[u8]) -> PayloadBuilder {
        self.transport(Transport::Raw { protocol, bytes: bytes.to_vec() })
    }
}

/// The IPv6 stage. Defaults: hop limit 64, traffic class 0, flow label 0, no extension headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Builder {
    link: Option<Link>,
    ip: Ipv6Spec,
}

impl Ipv6Builder {
    /// A bare IPv6 packet (no link header).
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Ipv6Builder { link: None, ip: Ipv6Spec::new(src, dst) }
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.ip.hop_limit = hop_limit;
        self
    }

    /// Same as [`hop_limit`](Self::hop_limit).
    pub fn ttl(self, hop_limit: u8) -> Self {
        self.hop_limit(hop_limit)
    }

    pub fn traffic_class(mut self, traffic_class: u8) -> Self {
        self.ip.traffic_class = traffic_class;
        self
    }

    /// Masked to 20 bits.
    pub fn flow_label(mut self, flow_label: u32) -> Self {
        self.ip.flow_label = flow_label & 0x000f_ffff;
        self
    }

    /// Appends an extension header after those already added.
    pub fn ipv6_ext(mut self, header: ExtHeader) -> Self {
        self.ip.ext.push(header);
        self
    }

    fn transport(self, transport: Transport) -> PayloadBuilder {
        PayloadBuilder {
            link: self.link,
            network: Network::V6(self.ip),
            transport,
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    pub fn udp(self, src_port: u16, dst_port: u16) -> PayloadBuilder {
        self.transport(Transport::Udp { src_port, dst_port })
    }

    pub fn tcp(self, src_port: u16, dst_port: u16, flags: TcpFlags, seq: u32, ack: u32) -> PayloadBuilder {
        self.tcp_with(TcpHeader { src_port, dst_port, flags, seq, ack, ..TcpHeader::default() })
    }

    pub fn tcp_with(self, header: TcpHeader) -> PayloadBuilder {
        self.transport(Transport::Tcp(header))
    }

    /// ICMPv6 echo request (type 128).
    pub fn icmpv6_echo(self, id: u16, seq: u16) -> PayloadBuilder {
        self.icmpv6(128, 0, (u32::from(id) << 16) | u32::from(seq))
    }

    /// Any ICMPv6 message: type, code and the 4-byte rest of header.
    pub fn icmpv6(self, msg_type: u8, code: u8, rest: u32) -> PayloadBuilder {
        self.transport(Transport::Icmp { msg_type, code, rest })
    }

    /// Raw upper-layer bytes under `protocol`; no checksum is computed.
    pub fn raw_l4(self, protocol: u8, bytes: &[u8]) -> PayloadBuilder {
        self.transport(Transport::Raw { protocol, bytes: bytes.to_vec() })
    }
}

/// The last stage: payload, trailer, and building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadBuilder {
    link: Option<Link>,
    network: Network,
    transport: Transport,
    payload: Vec<u8>,
    trailer: Vec<u8>,
}

impl PayloadBuilder {
    /// The payload after the transport header (replaces any earlier payload).
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Bytes after the IP packet, outside every length field (e.g. Ethernet padding).
    pub fn trailer(mut self, trailer: &[u8]) -> Self {
        self.trailer = trailer.to_vec();
        self
    }

    /// The frame.
    ///
    /// # Panics
    /// When a length does not fit its field (see [`try_build`](Self::try_build)); the builder
    /// is for tests, where such a frame is a bug in the test.
    pub fn build(&self) -> Vec<u8> {
        self.try_build().unwrap_or_else(|e| panic!("PacketBuilder: {e}"))
    }

    pub fn try_build(&self) -> Result<Vec<u8>, BuildError> {
        self.build_with_offsets().map(|(frame, _)| frame)
    }

    /// Where each header starts: `eth`, one `vlan` per tag (at its TPID), `l3`, one `ext` per
    /// IPv6 extension header, `l4`, `payload` (always present, possibly at the end), and
    /// `trailer` when there is one. Non-IP frames have `eth` and `payload` only.
    ///
    /// # Panics
    /// As [`build`](Self::build).
    pub fn layer_offsets(&self) -> LayerOffsets {
        self.build_with_offsets().unwrap_or_else(|e| panic!("PacketBuilder: {e}")).1
    }

    /// The frame and its [`layer_offsets`](Self::layer_offsets).
    pub fn build_with_offsets(&self) -> Result<(Vec<u8>, LayerOffsets), BuildError> {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        if let Some(link) = &self.link {
            offsets.push(("eth", 0));
            out.extend_from_slice(&link.dst.0);
            out.extend_from_slice(&link.src.0);
            let inner = link.tags.len().saturating_sub(1);
            for (i, &(tpid, tci)) in link.tags.iter().enumerate() {
                let auto = if i == inner { ethertype::VLAN } else { ethertype::QINQ };
                offsets.push(("vlan", out.len()));
                out.extend_from_slice(&tpid.unwrap_or(auto).to_be_bytes());
                out.extend_from_slice(&tci.to_be_bytes());
            }
            let ethertype = match self.network {
                Network::V4(_) => ethertype::IPV4,
                Network::V6(_) => ethertype::IPV6,
                Network::Raw(ethertype) => ethertype,
            };
            out.extend_from_slice(&ethertype.to_be_bytes());
        }
        match &self.network {
            Network::Raw(_) => {
                offsets.push(("payload", out.len()));
                out.extend_from_slice(&self.payload);
            }
            Network::V4(ip) => {
                let l3 = out.len();
                offsets.push(("l3", l3));
                let header = encode_ipv4_header(ip)?;
                out.extend_from_slice(&header);
                let (segment, payload_at) =
                    self.encode_transport(IpAddr::V4(ip.src), IpAddr::V4(ip.dst), ip_proto::ICMP)?;
                offsets.push(("l4", out.len()));
                offsets.push(("payload", out.len() + payload_at));
                let total = header.len() + segment.len();
                let total = u16::try_from(total).map_err(|_| BuildError {
                    what: "the IPv4 packet",
                    len: total,
                    max: 65535,
                })?;
                out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                out[l3 + 9] = self.protocol(ip_proto::ICMP);
                let value = checksum::ipv4_header(&out[l3..l3 + header.len()]);
                out[l3 + 10..l3 + 12].copy_from_slice(&value.to_be_bytes());
                out.extend_from_slice(&segment);
            }
            Network::V6(ip) => {
                let l3 = out.len();
                offsets.push(("l3", l3));
                let vtf = (6u32 << 28) | (u32::from(ip.traffic_class) << 20) | ip.flow_label;
                out.extend_from_slice(&vtf.to_be_bytes());
                out.extend_from_slice(&[0, 0]); // payload length, below
                let first = ip.ext.first().map_or(self.protocol(ip_proto::ICMPV6), ExtHeader::header_type);
                out.extend_from_slice(&[first, ip.hop_limit]);
                out.extend_from_slice(&ip.src.octets());
                out.extend_from_slice(&ip.dst.octets());
                for (i, ext) in ip.ext.iter().enumerate() {
                    let next =
                        ip.ext.get(i + 1).map_or(self.protocol(ip_proto::ICMPV6), ExtHeader::header_type);
                    offsets.push(("ext", out.len()));
                    ext.encode(next, &mut out)?;
                }
                let (segment, payload_at) =
                    self.encode_transport(IpAddr::V6(ip.src), IpAddr::V6(ip.dst), ip_proto::ICMPV6)?;
                offsets.push(("l4", out.len()));
                offsets.push(("payload", out.len() + payload_at));
                out.extend_from_slice(&segment);
                let payload_len = out.len() - l3 - 40;
                let payload_len = u16::try_from(payload_len).map_err(|_| BuildError {
                    what: "the IPv6 payload",
                    len: payload_len,
                    max: 65535,
                })?;
                out[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
            }
        }
        if !self.trailer.is_empty() {
            offsets.push(("trailer", out.len()));
            out.extend_from_slice(&self.trailer);
        }
        Ok((out, offsets))
    }

    /// The IP protocol number of the transport; `icmp` is ICMP's number in this IP version.
    fn protocol(&self, icmp: u8) -> u8 {
        match &self.transport {
            Transport::None => ip_proto::IPV6_NO_NEXT,
            Transport::Udp { .. } => ip_proto::UDP,
            Transport::Tcp(_) => ip_proto::TCP,
            Transport::Icmp { .. } => icmp,
            Transport::Raw { protocol, .. } => *protocol,
        }
    }

    /// The transport header and payload with its checksum filled, and the payload's offset in it.
    fn encode_transport(&self, src: IpAddr, dst: IpAddr, icmp: u8) -> Result<(Vec<u8>, usize), BuildError> {
        let mut seg = Vec::new();
        let checksum_at = match &self.transport {
            Transport::None => None,
            Transport::Raw { bytes, .. } => {
                seg.extend_from_slice(bytes);
                None
            }
            Transport::Udp { src_port, dst_port } => {
                let len = 8 + self.payload.len();
                let len16 = u16::try_from(len).map_err(|_| BuildError {
                    what: "the UDP datagram",
                    len,
                    max: 65535,
                })?;
                for v in [*src_port, *dst_port, len16, 0] {
                    seg.extend_from_slice(&v.to_be_bytes());
                }
                Some(6)
            }
            Transport::Tcp(tcp) => {
                let options_len = tcp.options.len().div_ceil(4) * 4;
                if options_len > 40 {
                    return Err(BuildError { what: "TCP options", len: tcp.options.len(), max: 40 });
                }
                let data_offset = ((20 + options_len) / 4) as u16;
                seg.extend_from_slice(&tcp.src_port.to_be_bytes());
                seg.extend_from_slice(&tcp.dst_port.to_be_bytes());
                seg.extend_from_slice(&tcp.seq.to_be_bytes());
                seg.extend_from_slice(&tcp.ack.to_be_bytes());
                seg.extend_from_slice(&((data_offset << 12) | (tcp.flags.0 & 0x01ff)).to_be_bytes());
                seg.extend_from_slice(&tcp.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&tcp.urgent.to_be_bytes());
                seg.extend_from_slice(&tcp.options);
                seg.resize(20 + options_len, 0);
                Some(16)
            }
            Transport::Icmp { msg_type, code, rest } => {
                seg.extend_from_slice(&[*msg_type, *code, 0, 0]);
                seg.extend_from_slice(&rest.to_be_bytes());
                Some(2)
            }
        };
        let payload_at = seg.len();
        seg.extend_from_slice(&self.payload);
        if let Some(at) = checksum_at {
            let value = if icmp == ip_proto::ICMP && matches!(self.transport, Transport::Icmp { .. }) {
                checksum::internet(&seg)
            } else {
                let protocol = self.protocol(icmp);
                let len = seg.len();
                checksum::transport(src, dst, protocol, &seg).ok_or(BuildError {
                    what: "the IPv4 transport segment",
                    len,
                    max: 65535,
                })?
            };
            seg[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        Ok((seg, payload_at))
    }
}

/// The IPv4 header with options, total length, protocol and checksum left zero.
fn encode_ipv4_header(ip: &Ipv4Spec) -> Result<Vec<u8>, BuildError> {
    let options_len = ip.options.len().div_ceil(4) * 4;
    if options_len > 40 {
        return Err(BuildError { what: "IPv4 options", len: ip.options.len(), max: 40 });
    }
    let ihl = ((20 + options_len) / 4) as u8;
    let flags = (u16::from(ip.dont_frag) << 14) | (u16::from(ip.more_frags) << 13) | ip.frag_offset;
    let mut h = vec![0x40 | ihl, ip.tos, 0, 0];
    h.extend_from_slice(&ip.ident.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&[ip.ttl, 0, 0, 0]);
    h.extend_from_slice(&ip.src.octets());
    h.extend_from_slice(&ip.dst.octets());
    h.extend_from_slice(&ip.options);
    h.resize(20 + options_len, 0);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::{verify_frame, verify_ip_packet, ChecksumError};
    use crate::packet::{EthernetFrame, IcmpPacket, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const V4_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const V4_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("test address")
    }

    /// A UDP/IPv4 frame whose every byte is known: 10.0.0.1:1234 -> 10.0.0.2:53, "hi", TTL 64.
    /// IPv4 checksum: 4500+001e+0000+0000+4011+0a00+0001+0a00+0002 = 0x9932 -> !0x66cd.
    /// UDP checksum: pseudo 0a00+0001+0a00+0002+0011+000a = 0x141e; header 04d2+0035+000a
    /// plus data 6869 = 0x6d7a; total 0x8198 (no carry) -> !0x7e67.
    #[rustfmt::skip]
    static UDP_FRAME: [u8; 44] = [
        0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x1e, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0x66, 0xcd,
        10, 0, 0, 1, 10, 0, 0, 2,
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x0a, 0x7e, 0x67, b'h', b'i',
    ];

    #[test]
    fn udp_ipv4_matches_known_bytes() {
        let builder =
            PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).ttl(64).udp(1234, 53).payload(b"hi");
        let frame = builder.build();
        assert_eq!(frame, UDP_FRAME);
        assert_eq!(verify_frame(&frame), Ok(2));
        assert_eq!(builder.layer_offsets(), [("eth", 0), ("l3", 14), ("l4", 34), ("payload", 42)]);
    }

    #[test]
    fn udp_ipv4_round_trips_through_views() {
        let frame = PacketBuilder::ethernet(MAC_A, MAC_B)
            .vlan(100)
            .vlan(200)
            .ipv4(V4_A, V4_B)
            .ipv4_options(&[0x94, 0x04, 0, 0]) // router alert
            .ttl(7)
            .tos(0xb8)
            .ident(0x4242)
            .dont_fragment()
            .udp(5000, 6000)
            .payload(b"payload")
            .build();
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (MacAddr(MAC_A), MacAddr(MAC_B)));
        assert_eq!(eth.ethertype(), ethertype::QINQ);
        let l2 = eth.untag().unwrap();
        let tags: Vec<_> = l2.tags.iter().map(|t| (t.tpid, t.vid)).collect();
        assert_eq!(tags, [(ethertype::QINQ, 100), (ethertype::VLAN, 200)]);
        assert_eq!((l2.ethertype, l2.l3_offset), (ethertype::IPV4, 22));
        let ip = Ipv4Packet::new_checked(&frame[22..]).unwrap();
        assert_eq!((ip.header_len(), ip.ttl(), ip.dscp(), ip.ident()), (24, 7, 0x2e, 0x4242));
        assert!(ip.dont_frag() && !ip.is_fragment() && ip.verify_checksum());
        assert_eq!(ip.options(), [0x94, 0x04, 0, 0]);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.payload()), (5000, 6000, &b"payload"[..]));
        assert!(udp.verify_checksum(V4_A.into(), V4_B.into()));
        assert_eq!(verify_frame(&frame), Ok(2));
    }

    #[test]
    fn explicit_tpids_and_odd_options() {
        let builder = PacketBuilder::ethernet(MAC_A, MAC_B)
            .vlan_tag(0x8100, 0xe00a)
            .vlan_tag(0x8100, 20)
            .ipv4(V4_A, V4_B)
            .ipv4_options(&[1, 1, 1]) // three NOPs, padded with one EOL
            .udp(1, 2);
        let frame = builder.build();
        let l2 = EthernetFrame::new_checked(&frame[..]).unwrap().untag().unwrap();
        assert_eq!(l2.tags[0].tpid, 0x8100);
        assert_eq!((l2.tags[0].pcp, l2.tags[0].vid), (7, 10));
        assert_eq!(&frame[l2.l3_offset + 20..l2.l3_offset + 24], [1, 1, 1, 0]);
        assert_eq!(
            builder.layer_offsets(),
            [("eth", 0), ("vlan", 12), ("vlan", 16), ("l3", 22), ("l4", 46), ("payload", 54)]
        );
        assert_eq!(verify_frame(&frame), Ok(2));
    }

    #[test]
    fn tcp_over_ipv4_and_ipv6() {
        let header = TcpHeader {
            src_port: 40000,
            dst_port: 443,
            flags: TcpFlags::SYN,
            seq: 7,
            options: vec![2, 4, 0x05, 0xb4, 1],
            ..TcpHeader::default()
        };
        let v4 = PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).tcp_with(header.clone()).build();
        let ip = Ipv4Packet::new_checked(&v4[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((tcp.header_len(), tcp.flags(), tcp.seq_number()), (28, TcpFlags::SYN, 7));
        assert_eq!(tcp.options(), [2, 4, 5, 0xb4, 1, 0, 0, 0]);
        assert!(tcp.verify_checksum(V4_A.into(), V4_B.into()));
        assert_eq!(verify_frame(&v4), Ok(2));

        let (a, b) = (v6("2001:db8::a"), v6("2001:db8::b"));
        let v6_frame = PacketBuilder::ethernet(MAC_A, MAC_B)
            .ipv6(a, b)
            .tcp(80, 1024, TcpFlags::ACK | TcpFlags::PSH, 100, 200)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        let ip = Ipv6Packet::new_checked(&v6_frame[14..]).unwrap();
        assert_eq!((ip.next_header(), ip.payload_len()), (ip_proto::TCP, 20 + 18));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((tcp.ack_number(), tcp.payload()), (200, &b"GET / HTTP/1.1\r\n\r\n"[..]));
        assert!(tcp.verify_checksum(a.into(), b.into()));
        assert_eq!(verify_frame(&v6_frame), Ok(1));
    }

    #[test]
    fn icmp_echo_v4_and_v6() {
        let v4 = PacketBuilder::ethernet(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .icmpv4_echo(0x1234, 1)
            .payload(b"abcd")
            .build();
        let ip = Ipv4Packet::new_checked(&v4[14..]).unwrap();
        assert_eq!(ip.protocol(), ip_proto::ICMP);
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.echo_ident(), icmp.echo_seq_no()), (8, 0x1234, 1));
        // Same message as the hand-checked one in icmp.rs.
        assert_eq!(icmp.checksum(), 0x2104);
        assert_eq!(verify_frame(&v4), Ok(2));

        let (a, b) = (v6("fe80::1"), v6("fe80::2"));
        let v6_frame =
            PacketBuilder::ethernet(MAC_A, MAC_B).ipv6(a, b).hop_limit(255).icmpv6_echo(7, 9).build();
        let ip = Ipv6Packet::new_checked(&v6_frame[14..]).unwrap();
        assert_eq!((ip.next_header(), ip.hop_limit()), (ip_proto::ICMPV6, 255));
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.echo_ident(), icmp.echo_seq_no()), (128, 7, 9));
        assert!(icmp.verify_checksum_v6(a, b));
        assert_eq!(verify_frame(&v6_frame), Ok(1));
    }

    #[test]
    fn ipv6_extension_headers_chain_and_pad() {
        let (a, b) = (v6("2001:db8::1"), v6("2001:db8::2"));
        let builder = PacketBuilder::ethernet(MAC_A, MAC_B)
            .ipv6(a, b)
            .traffic_class(0x10)
            .flow_label(0xabcde)
            .ipv6_ext(ExtHeader::HopByHop(vec![5, 2, 0, 0])) // router alert, then PadN(0)
            .ipv6_ext(ExtHeader::Routing { routing_type: 4, segments_left: 0, data: vec![0; 4 + 16] })
            .ipv6_ext(ExtHeader::Fragment { offset: 0, more: false, id: 99 })
            .ipv6_ext(ExtHeader::DestOpts(vec![]))
            .udp(53, 53)
            .payload(b"q");
        let (frame, offsets) = builder.build_with_offsets().unwrap();
        assert_eq!(
            offsets,
            [
                ("eth", 0),
                ("l3", 14),
                ("ext", 54),
                ("ext", 62),
                ("ext", 86),
                ("ext", 94),
                ("l4", 102),
                ("payload", 110)
            ]
        );
        assert_eq!(&frame[54..62], [43, 0, 5, 2, 0, 0, 1, 0]);
        assert_eq!(&frame[62..66], [44, 2, 4, 0]);
        assert_eq!(&frame[86..94], [60, 0, 0, 0, 0, 0, 0, 99]);
        assert_eq!(&frame[94..102], [17, 0, 1, 4, 0, 0, 0, 0]);
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!((ip.traffic_class(), ip.flow_label()), (0x10, 0xabcde));
        let upper = ip.upper_layer().unwrap();
        assert_eq!((upper.protocol, upper.offset), (ip_proto::UDP, 88));
        let hdrs: Vec<_> = upper.ext_headers.iter().map(|&(t, at)| (t, at + 14)).collect();
        assert_eq!(hdrs, [(0, 54), (43, 62), (44, 86), (60, 94)]);
        let udp = UdpPacket::new_checked(upper.payload).unwrap();
        assert!(udp.verify_checksum(a.into(), b.into()));
        assert_eq!(verify_frame(&frame), Ok(1));
    }

    #[test]
    fn fragments_skip_l4_verification() {
        let first =
            PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).ipv4_fragment(0, true).udp(1, 2).build();
        let ip = Ipv4Packet::new_checked(&first[14..]).unwrap();
        assert!(ip.more_frags() && ip.is_fragment());
        assert_eq!(verify_frame(&first), Ok(1));
        let later = PacketBuilder::ethernet(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .ipv4_fragment(185, false)
            .raw_l4(ip_proto::UDP, &[0xaa; 16])
            .build();
        let ip = Ipv4Packet::new_checked(&later[14..]).unwrap();
        assert_eq!((ip.frag_offset(), ip.protocol(), ip.payload().len()), (185, ip_proto::UDP, 16));
        assert_eq!(verify_frame(&later), Ok(1));
        let v6_later = Ipv6Builder::new(v6("::1"), v6("::2"))
            .ipv6_ext(ExtHeader::Fragment { offset: 3, more: false, id: 1 })
            .raw_l4(ip_proto::TCP, &[0; 8])
            .build();
        assert_eq!(verify_ip_packet(&v6_later), Ok(0));
    }

    #[test]
    fn non_ip_and_bare_ip() {
        let arp = [0u8; 28];
        let builder =
            PacketBuilder::ethernet(MAC_A, MacAddr::BROADCAST).vlan(5).ethertype_raw(ethertype::ARP, &arp);
        let frame = builder.build();
        assert_eq!(frame.len(), 18 + 28);
        assert_eq!(&frame[12..14], [0x81, 0x00]);
        assert_eq!(&frame[16..18], [0x08, 0x06]);
        assert_eq!(builder.layer_offsets(), [("eth", 0), ("vlan", 12), ("payload", 18)]);
        assert_eq!(verify_frame(&frame), Ok(0));

        let bare = Ipv4Builder::new(V4_A, V4_B).udp(1, 2).payload(b"x");
        assert_eq!(bare.layer_offsets(), [("l3", 0), ("l4", 20), ("payload", 28)]);
        assert_eq!(verify_ip_packet(&bare.build()), Ok(2));
    }

    #[test]
    fn trailer_is_outside_the_ip_packet() {
        let builder = PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).udp(1, 2).trailer(&[0; 18]);
        let (frame, offsets) = builder.build_with_offsets().unwrap();
        assert_eq!(frame.len(), 60);
        assert_eq!(offsets.last(), Some(&("trailer", 42)));
        assert_eq!(Ipv4Packet::new_checked(&frame[14..]).unwrap().total_len(), 28);
        assert_eq!(verify_frame(&frame), Ok(2));
    }

    #[test]
    fn corrupted_checksums_are_reported_with_offsets() {
        let mut frame = UDP_FRAME;
        frame[24] ^= 0xff;
        assert_eq!(
            verify_frame(&frame),
            Err(ChecksumError::Mismatch {
                layer: "ipv4 header",
                offset: 24,
                found: 0x99cd,
                expected: 0x66cd
            })
        );
        let mut frame = UDP_FRAME;
        frame[43] ^= 1; // payload byte
        assert!(matches!(
            verify_frame(&frame),
            Err(ChecksumError::Mismatch { layer: "udp", offset: 40, found: 0x7e67, .. })
        ));
    }

    #[test]
    fn oversized_fields_are_build_errors() {
        let options = PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).ipv4_options(&[1; 41]).udp(1, 2);
        assert_eq!(options.try_build(), Err(BuildError { what: "IPv4 options", len: 41, max: 40 }));
        let big = vec![0; 65_530];
        let udp = Ipv4Builder::new(V4_A, V4_B).udp(1, 2).payload(&big);
        assert_eq!(udp.try_build(), Err(BuildError { what: "the UDP datagram", len: 65_538, max: 65535 }));
        let ext =
            Ipv6Builder::new(v6("::1"), v6("::2")).ipv6_ext(ExtHeader::DestOpts(vec![1; 2100])).udp(1, 2);
        assert!(ext.try_build().is_err());
    }

    /// Every prefix of every kind of frame either parses to an error or verifies; nothing panics.
    #[test]
    fn truncation_at_every_boundary_and_byte() {
        let frames = [
            PacketBuilder::ethernet(MAC_A, MAC_B).vlan(1).vlan(2).ipv4(V4_A, V4_B).udp(1, 2).payload(b"hi"),
            PacketBuilder::ethernet(MAC_A, MAC_B).ipv4(V4_A, V4_B).ipv4_options(&[1; 8]).tcp(
                1,
                2,
                TcpFlags::SYN,
                0,
                0,
            ),
            PacketBuilder::ethernet(MAC_A, MAC_B)
                .ipv6(v6("::1"), v6("::2"))
                .ipv6_ext(ExtHeader::HopByHop(vec![]))
                .ipv6_ext(ExtHeader::Fragment { offset: 0, more: false, id: 1 })
                .icmpv6_echo(1, 1),
        ];
        for builder in frames {
            let (frame, offsets) = builder.build_with_offsets().unwrap();
            assert!(verify_frame(&frame).is_ok());
            for &(name, at) in &offsets {
                if at == 0 || at >= frame.len() {
                    continue;
                }
                let cut = truncate_at(&frame, at);
                assert_eq!(cut.len(), at);
                assert!(
                    matches!(verify_frame(&cut), Err(ChecksumError::Parse(_))),
                    "cut at {name} ({at}) of {frame:02x?}"
                );
            }
            for len in 0..frame.len() {
                let _ = verify_frame(&frame[..len]);
            }
        }
        assert_eq!(truncate_at(&[1, 2, 3], 10), [1, 2, 3]);
    }
}
