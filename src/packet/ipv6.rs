//! IPv6 headers and their extension header chain.
//!
//! [`Ipv6Packet::new_checked`] guarantees the 40-byte header and `40 + payload length` bytes
//! (trailing bytes are allowed and excluded from the payload). [`Ipv6Packet::upper_layer`] walks
//! Hop-by-Hop, Routing, Fragment, Destination Options and AH headers (at most
//! [`MAX_EXT_HEADERS`]) to the upper-layer protocol, bounds-checking every step.

use std::net::Ipv6Addr;

use super::{be16, be32, ip_proto, Error};

/// Byte offsets of the IPv6 fixed header.
pub mod field {
    use std::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
    pub const PAYLOAD: usize = 40;
    pub const HEADER_LEN: usize = 40;
}

/// Byte offsets of the Fragment extension header.
pub mod frag_field {
    use std::ops::Range;

    pub const NXT_HDR: usize = 0;
    pub const FLG_OFF: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..8;
    pub const HEADER_LEN: usize = 8;
}

/// A longer chain is treated as malformed.
pub const MAX_EXT_HEADERS: usize = 16;

/// The fields of a Fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// In 8-byte units, as on the wire.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

/// Where the extension header chain ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperLayer<'a> {
    /// The upper-layer protocol (or the header type at which walking stopped, e.g. ESP).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// `(header type, offset)` of every extension header walked.
    pub ext_headers: Vec<(u8, usize)>,
    /// The Fragment header, if one was walked. After a non-first fragment walking stops, since
    /// what follows is not a header.
    pub fragment: Option<Fragment>,
    /// From `offset` to the end of the IPv6 payload.
    pub payload: &'a [u8],
}

/// A read-only view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated { header: "ipv6", need: field::HEADER_LEN, len });
        }
        let need = field::HEADER_LEN + usize::from(self.payload_len());
        if len < need {
            return Err(Error::Truncated { header: "ipv6", need, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        ((be16(self.b(), 0) >> 4) & 0xff) as u8
    }

    pub fn flow_label(&self) -> u32 {
        be32(self.b(), 0) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }

    pub fn next_header(&self) -> u8 {
        self.b()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.b()[field::SRC_ADDR]);
        Ipv6Addr::from(a)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.b()[field::DST_ADDR]);
        Ipv6Addr::from(a)
    }

    /// Extension headers and upper layer: `40 .. 40 + payload length`.
    pub fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..field::PAYLOAD + usize::from(self.payload_len())]
    }

    /// Walks the extension header chain.
    pub fn upper_layer(&self) -> Result<UpperLayer<'_>, Error> {
        let payload = self.payload();
        let mut protocol = self.next_header();
        let mut at = 0usize;
        let mut ext_headers = Vec::new();
        let mut fragment = None;
        loop {
            let rest = &payload[at..];
            let truncated = |need: usize| Error::Truncated {
                header: "ipv6 extension header",
                need: field::HEADER_LEN + at + need,
                len: field::HEADER_LEN + payload.len(),
            };
            let len = match protocol {
                ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS => {
                    let &[_, units, ..] = rest else { return Err(truncated(2)) };
                    (usize::from(units) + 1) * 8
                }
                ip_proto::AH => {
                    let &[_, units, ..] = rest else { return Err(truncated(2)) };
                    (usize::from(units) + 2) * 4
                }
                ip_proto::IPV6_FRAGMENT => frag_field::HEADER_LEN,
                _ => break,
            };
            if rest.len() < len {
                return Err(truncated(len));
            }
            if ext_headers.len() == MAX_EXT_HEADERS {
                return Err(Error::Malformed { header: "ipv6", what: "more than 16 extension headers" });
            }
            ext_headers.push((protocol, field::HEADER_LEN + at));
            let header_type = protocol;
            protocol = rest[0];
            at += len;
            if header_type == ip_proto::IPV6_FRAGMENT {
                let flg_off = be16(rest, frag_field::FLG_OFF.start);
                let frag = Fragment {
                    offset: flg_off >> 3,
                    more: flg_off & 1 != 0,
                    ident: be32(rest, frag_field::IDENT.start),
                };
                fragment = Some(frag);
                if frag.offset != 0 {
                    break;
                }
            }
        }
        Ok(UpperLayer {
            protocol,
            offset: field::HEADER_LEN + at,
            ext_headers,
            fragment,
            payload: &payload[at..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2001:db8::1 -> 2001:db8::2, traffic class 0xb8, flow 0x12345, hop-by-hop (PadN) then
    /// fragment (offset 0, more, id 0xdeadbeef) then 4 bytes of UDP-ish payload.
    fn packet() -> Vec<u8> {
        let mut b = vec![0x6b, 0x81, 0x23, 0x45, 0x00, 20, 0, 64];
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, PadN(4)
        b.extend_from_slice(&[17, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]); // fragment
        b.extend_from_slice(&[1, 2, 3, 4]);
        b
    }

    #[test]
    fn reads_header_and_chain() {
        let bytes = packet();
        let ip = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.traffic_class(), 0xb8);
        assert_eq!(ip.flow_label(), 0x12345);
        assert_eq!((ip.payload_len(), ip.next_header(), ip.hop_limit()), (20, 0, 64));
        assert_eq!(ip.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        let upper = ip.upper_layer().unwrap();
        assert_eq!(upper.protocol, 17);
        assert_eq!(upper.offset, 56);
        assert_eq!(upper.ext_headers, [(0, 40), (44, 48)]);
        assert_eq!(upper.fragment, Some(Fragment { offset: 0, more: true, ident: 0xdead_beef }));
        assert_eq!(upper.payload, [1, 2, 3, 4]);
    }

    #[test]
    fn non_first_fragment_stops_the_walk() {
        let mut bytes = packet();
        bytes[50..52].copy_from_slice(&(3u16 << 3).to_be_bytes());
        bytes[48] = ip_proto::HOP_BY_HOP; // would be walked if it were a header
        let ip = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        let upper = ip.upper_layer().unwrap();
        assert_eq!((upper.protocol, upper.offset), (0, 56));
        assert_eq!(upper.fragment.map(|f| (f.offset, f.more)), Some((3, false)));
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let bytes = packet();
        for len in 0..bytes.len() {
            let mut cut = bytes[..len].to_vec();
            if len >= 40 {
                // Keep the payload length honest so the chain walk is what fails.
                let payload_len = (len - 40) as u16;
                cut[4..6].copy_from_slice(&payload_len.to_be_bytes());
                let ip = Ipv6Packet::new_checked(&cut[..]).unwrap();
                assert_eq!(ip.upper_layer().is_err(), len < 56, "len {len}");
            } else {
                assert!(Ipv6Packet::new_checked(&cut[..]).is_err());
            }
        }
    }
}
