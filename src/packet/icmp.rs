//! ICMP (v4) and ICMPv6 messages, which share their first eight bytes: type, code, checksum and
//! a four-byte rest-of-header (identifier and sequence number for echo).
//!
//! [`IcmpPacket::new_checked`] guarantees those eight bytes. The ICMPv4 checksum covers the
//! message; the ICMPv6 checksum adds the IPv6 pseudo-header.

use std::net::{IpAddr, Ipv6Addr};

use super::{be16, be32, checksum, ip_proto, put16, Error};

/// Byte offsets of the common ICMP header.
pub mod field {
    use std::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQ_NO: Range<usize> = 6..8;
    pub const REST_OF_HEADER: Range<usize> = 4..8;
    pub const PAYLOAD: usize = 8;
    pub const HEADER_LEN: usize = 8;
}

/// ICMPv4 message types.
pub mod icmpv4_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// ICMPv6 message types.
pub mod icmpv6_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// A read/write view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated { header: "icmp", need: field::HEADER_LEN, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQ_NO.start)
    }

    pub fn rest_of_header(&self) -> u32 {
        be32(self.buffer.as_ref(), field::REST_OF_HEADER.start)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// ICMPv4: the checksum covers the message alone.
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::verify_icmpv4(self.buffer.as_ref())
    }

    /// ICMPv6: the checksum covers the IPv6 pseudo-header and the message.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum::verify_icmpv6(src, dst, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    pub fn fill_checksum_v4(&mut self) {
        self.set_checksum(0);
        let value = checksum::internet(self.buffer.as_ref());
        self.set_checksum(value);
    }

    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let value =
            checksum::transport(IpAddr::V6(src), IpAddr::V6(dst), ip_proto::ICMPV6, self.buffer.as_ref());
        // Both addresses are IPv6, so the pseudo-header always exists.
        self.set_checksum(value.unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ping` echo request, id 0x1234, seq 1, payload "abcd"; checksum by hand:
    /// 0800 + 0000 + 1234 + 0001 + 6162 + 6364 = 0xdefb (no carry), complemented 0x2104.
    static ECHO: [u8; 12] = [8, 0, 0x21, 0x04, 0x12, 0x34, 0, 1, b'a', b'b', b'c', b'd'];

    #[test]
    fn echo_request_v4() {
        let icmp = IcmpPacket::new_checked(&ECHO[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmpv4_type::ECHO_REQUEST, 0));
        assert_eq!((icmp.echo_ident(), icmp.echo_seq_no()), (0x1234, 1));
        assert_eq!(icmp.rest_of_header(), 0x1234_0001);
        assert_eq!(icmp.payload(), b"abcd");
        assert!(icmp.verify_checksum_v4());
    }

    #[test]
    fn echo_request_v6_fill_and_verify() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let mut bytes = ECHO;
        bytes[0] = icmpv6_type::ECHO_REQUEST;
        let mut icmp = IcmpPacket::new_checked(&mut bytes[..]).unwrap();
        assert!(!icmp.verify_checksum_v6(src, dst));
        icmp.fill_checksum_v6(src, dst);
        assert!(icmp.verify_checksum_v6(src, dst));
        assert!(!icmp.verify_checksum_v6(src, "fe80::3".parse().unwrap()));
        icmp.fill_checksum_v4();
        assert!(icmp.verify_checksum_v4());
        assert!(IcmpPacket::new_checked(&ECHO[..7]).is_err());
    }
}
