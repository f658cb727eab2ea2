//! The internet checksum (RFC 1071) and its uses: IPv4 header, TCP/UDP/ICMPv6 with IPv4 and IPv6
//! pseudo-headers, ICMPv4; and [`verify_frame`], which checks every checksum a frame carries.
//!
//! Conventions: [`sum`] is the folded one's complement sum (not complemented); the `compute`
//! functions return the value to store in the checksum field, computed with that field zero;
//! the `verify` functions take the bytes as received and return true when they sum to 0xffff.
//! [`sum`] pieces combine correctly with [`combine`] when every piece but the last has even length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ethernet::{ethertype, EthernetFrame};
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::{be16, ip_proto, Error};

/// Folded one's complement sum of big-endian 16-bit words; an odd last byte is padded with zero.
pub fn sum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    let mut acc: u64 = chunks.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// One's complement addition of partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The internet checksum of `data` (the complement of its sum).
pub fn internet(data: &[u8]) -> u16 {
    !sum(data)
}

/// Sum of the IPv4 pseudo-header.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[9] = protocol;
    b[10..12].copy_from_slice(&length.to_be_bytes());
    sum(&b)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let mut b = [0u8; 40];
    b[0..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..36].copy_from_slice(&length.to_be_bytes());
    b[39] = next_header;
    sum(&b)
}

/// Sum of the pseudo-header for `src`/`dst`; `None` when the families differ or an IPv4
/// segment is longer than 65535 bytes.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, length: usize) -> Option<u16> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(pseudo_header_v4(s, d, protocol, u16::try_from(length).ok()?)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(pseudo_header_v6(s, d, protocol, u32::try_from(length).ok()?)),
        _ => None,
    }
}

/// The IPv4 header checksum, treating the checksum field (bytes 10..12) as zero.
pub fn ipv4_header(header: &[u8]) -> u16 {
    let before = header.get(..10).unwrap_or(header);
    let after = header.get(12..).unwrap_or_default();
    !combine(&[sum(before), sum(after)])
}

/// The TCP, UDP or ICMPv6 checksum of `segment` (checksum field zero) under the pseudo-header.
/// A UDP result of zero is sent as 0xffff, since zero means "no checksum".
pub fn transport(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> Option<u16> {
    let pseudo = pseudo_header(src, dst, protocol, segment.len())?;
    let value = !combine(&[pseudo, sum(segment)]);
    Some(if protocol == ip_proto::UDP && value == 0 { 0xffff } else { value })
}

pub fn verify_ipv4_header(header: &[u8]) -> bool {
    sum(header) == 0xffff
}

/// TCP, UDP or ICMPv6 over IPv4 or IPv6. UDP over IPv4 with checksum zero passes (no checksum);
/// over IPv6 it fails. Mixed address families fail.
pub fn verify_transport(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> bool {
    if protocol == ip_proto::UDP && src.is_ipv4() && segment.get(6..8) == Some(&[0, 0]) {
        return dst.is_ipv4();
    }
    match pseudo_header(src, dst, protocol, segment.len()) {
        Some(pseudo) => combine(&[pseudo, sum(segment)]) == 0xffff,
        None => false,
    }
}

pub fn verify_icmpv4(message: &[u8]) -> bool {
    sum(message) == 0xffff
}

pub fn verify_icmpv6(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> bool {
    verify_transport(IpAddr::V6(src), IpAddr::V6(dst), ip_proto::ICMPV6, message)
}

/// A checksum that does not verify, or a frame too damaged to find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("{layer} checksum at frame offset {offset} is {found:#06x}, should be {expected:#06x}")]
    Mismatch { layer: &'static str, offset: usize, found: u16, expected: u16 },
    #[error("cannot reach the checksums: {0}")]
    Parse(#[from] Error),
}

/// Verifies every checksum in an Ethernet frame (VLAN tags walked): the IPv4 header, and TCP,
/// UDP, ICMP or ICMPv6 unless the packet is a fragment (whose checksum covers bytes not here).
/// Returns how many checksums were verified; non-IP frames verify zero.
pub fn verify_frame(frame: &[u8]) -> Result<usize, ChecksumError> {
    let untagged = EthernetFrame::new_checked(frame)?.untag()?;
    let l3 = &frame[untagged.l3_offset..];
    match untagged.ethertype {
        ethertype::IPV4 => verify_ipv4(l3, untagged.l3_offset),
        ethertype::IPV6 => verify_ipv6(l3, untagged.l3_offset),
        _ => Ok(0),
    }
}

/// [`verify_frame`] for a bare IP packet (no link header), by its version nibble.
pub fn verify_ip_packet(packet: &[u8]) -> Result<usize, ChecksumError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => verify_ipv4(packet, 0),
        Some(6) => verify_ipv6(packet, 0),
        Some(_) => Err(Error::Malformed { header: "ip", what: "version is neither 4 nor 6" }.into()),
        None => Err(Error::Truncated { header: "ip", need: 1, len: 0 }.into()),
    }
}

fn verify_ipv4(bytes: &[u8], base: usize) -> Result<usize, ChecksumError> {
    let ip = Ipv4Packet::new_checked(bytes)?;
    if !ip.verify_checksum() {
        return Err(ChecksumError::Mismatch {
            layer: "ipv4 header",
            offset: base + super::ipv4::field::CHECKSUM.start,
            found: ip.checksum(),
            expected: ipv4_header(ip.header()),
        });
    }
    if ip.is_fragment() {
        return Ok(1);
    }
    let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    let l4 = verify_l4(src, dst, ip.protocol(), ip.payload(), base + ip.header_len())?;
    Ok(1 + l4)
}

fn verify_ipv6(bytes: &[u8], base: usize) -> Result<usize, ChecksumError> {
    let ip = Ipv6Packet::new_checked(bytes)?;
    let upper = ip.upper_layer()?;
    if upper.fragment.is_some_and(|f| f.more || f.offset != 0) {
        return Ok(0);
    }
    let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
    verify_l4(src, dst, upper.protocol, upper.payload, base + upper.offset)
}

/// Verifies the upper layer at frame offset `base`; protocols without a checksum verify zero.
fn verify_l4(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    segment: &[u8],
    base: usize,
) -> Result<usize, ChecksumError> {
    let (layer, field_at, min_len) = match (protocol, src) {
        (ip_proto::TCP, _) => ("tcp", 16, 20),
        (ip_proto::UDP, _) => ("udp", 6, 8),
        (ip_proto::ICMP, IpAddr::V4(_)) => ("icmp", 2, 8),
        (ip_proto::ICMPV6, IpAddr::V6(_)) => ("icmpv6", 2, 8),
        _ => return Ok(0),
    };
    if segment.len() < min_len {
        return Err(Error::Truncated { header: layer, need: min_len, len: segment.len() }.into());
    }
    let segment = if protocol == ip_proto::UDP {
        // The datagram ends at the UDP length, which must fit the IP payload.
        let len = usize::from(be16(segment, 4));
        if len < 8 {
            return Err(Error::Malformed { header: "udp", what: "length below 8" }.into());
        }
        segment.get(..len).ok_or(Error::Truncated { header: "udp", need: len, len: segment.len() })?
    } else {
        segment
    };
    let ok = match protocol {
        ip_proto::ICMP => verify_icmpv4(segment),
        _ => verify_transport(src, dst, protocol, segment),
    };
    if ok {
        return Ok(1);
    }
    let mut zeroed = segment.to_vec();
    zeroed[field_at..field_at + 2].fill(0);
    let expected = match protocol {
        ip_proto::ICMP => internet(&zeroed),
        _ => transport(src, dst, protocol, &zeroed).unwrap_or_default(),
    };
    Err(ChecksumError::Mismatch { layer, offset: base + field_at, found: be16(segment, field_at), expected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
        assert_eq!(internet(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[]), 0);
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
    }

    #[test]
    fn ipv4_header_ignores_its_checksum_field() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&header), 0xb861);
        assert!(verify_ipv4_header(&header));
        let mut bad = header;
        bad[11] ^= 1;
        assert!(!verify_ipv4_header(&bad));
        assert_eq!(ipv4_header(&bad), 0xb861);
        assert_eq!(ipv4_header(&header[..5]), !sum(&header[..5]));
    }

    #[test]
    fn pseudo_headers_need_one_family() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(pseudo_header(v4, v6, ip_proto::TCP, 20), None);
        assert_eq!(pseudo_header(v4, v4, ip_proto::TCP, 70_000), None);
        assert!(!verify_transport(v4, v6, ip_proto::TCP, &[0; 20]));
        // ::1 -> ::1, next header 58, length 8: 0001 + 0001 + 0008 + 003a.
        assert_eq!(pseudo_header_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 58, 8), 0x0044);
    }

    #[test]
    fn udp_zero_result_is_sent_as_ffff() {
        // Find a payload word that makes the sum 0xffff, i.e. the checksum 0.
        let (src, dst) = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let mut seg = vec![0, 1, 0, 2, 0, 10, 0, 0, 0, 0];
        let partial = combine(&[pseudo_header(src, dst, ip_proto::UDP, 10).unwrap(), sum(&seg)]);
        seg[8..10].copy_from_slice(&(!partial).to_be_bytes());
        assert_eq!(transport(src, dst, ip_proto::UDP, &seg), Some(0xffff));
        seg[6..8].copy_from_slice(&[0xff, 0xff]);
        assert!(verify_transport(src, dst, ip_proto::UDP, &seg));
    }
}
