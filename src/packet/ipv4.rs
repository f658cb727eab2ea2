//! IPv4 headers.
//!
//! [`Ipv4Packet::new_checked`] guarantees: the buffer holds 20 bytes, the IHL is at least 5, and
//! the total length covers the header and fits in the buffer (trailing bytes, e.g. Ethernet
//! padding, are allowed and excluded from [`Ipv4Packet::payload`]). The version nibble is not
//! checked here; read it with [`Ipv4Packet::version`].

use std::net::Ipv4Addr;

use super::{be16, checksum, put16, Error};

/// Byte offsets of the IPv4 header.
pub mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
    pub const OPTIONS: usize = 20;
    /// Without options.
    pub const HEADER_LEN: usize = 20;
    /// With 40 bytes of options (IHL 15).
    pub const MAX_HEADER_LEN: usize = 60;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        let truncated = |need| Err(Error::Truncated { header: "ipv4", need, len });
        let malformed = |what| Err(Error::Malformed { header: "ipv4", what });
        if len < field::HEADER_LEN {
            return truncated(field::HEADER_LEN);
        }
        let header_len = self.header_len();
        if header_len < field::HEADER_LEN {
            return malformed("header length below 20");
        }
        if len < header_len {
            return truncated(header_len);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return malformed("total length below header length");
        }
        if len < total_len {
            return truncated(total_len);
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
        self.b()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.b()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN] & 3
    }

    pub fn total_len(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }

    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT.start)
    }

    pub fn dont_frag(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_MF != 0
    }

    /// Fragment offset in 8-byte units, as on the wire.
    pub fn frag_offset(&self) -> u16 {
        be16(self.b(), field::FLG_OFF.start) & OFFSET_MASK
    }

    /// Any fragment: the first (MF set) or a later one (offset non-zero).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// The header including options.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    pub fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..self.header_len()]
    }

    /// From the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..usize::from(self.total_len())]
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::verify_ipv4_header(self.header())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.m()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: u8) {
        self.m()[field::PROTOCOL] = protocol;
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.m()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.m()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.m(), field::CHECKSUM.start, value);
    }

    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let value = checksum::ipv4_header(self.header());
        self.set_checksum(value);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.m()[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example from RFC 1071 practice (and Wikipedia's "IPv4 header checksum"):
    /// UDP, 115 bytes, 192.168.0.1 -> 192.168.0.199, checksum 0xb861.
    static HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0,
        0xa8, 0x00, 0xc7,
    ];

    fn packet() -> Vec<u8> {
        let mut bytes = HEADER.to_vec();
        bytes.resize(0x73, 0);
        bytes
    }

    #[test]
    fn reads_known_header() {
        let bytes = packet();
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 115);
        assert!(ip.dont_frag() && !ip.more_frags() && !ip.is_fragment());
        assert_eq!((ip.ttl(), ip.protocol(), ip.checksum()), (64, 17, 0xb861));
        assert_eq!(ip.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(ip.payload().len(), 95);
        assert!(ip.options().is_empty());
        assert!(ip.verify_checksum());
        assert_eq!(checksum::ipv4_header(ip.header()), 0xb861);
    }

    #[test]
    fn setters_and_fill_checksum() {
        let mut bytes = packet();
        let mut ip = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        ip.set_ttl(63);
        assert!(!ip.verify_checksum());
        ip.fill_checksum();
        assert!(ip.verify_checksum());
        // TTL decrement adds 0x0100 to the checksum (RFC 1624).
        assert_eq!(ip.checksum(), 0xb961);
    }

    #[test]
    fn length_checks() {
        let bytes = packet();
        let cases: Vec<(&str, Vec<u8>, Error)> = vec![
            ("short", bytes[..19].to_vec(), Error::Truncated { header: "ipv4", need: 20, len: 19 }),
            (
                "ihl 4",
                {
                    let mut b = bytes.clone();
                    b[0] = 0x44;
                    b
                },
                Error::Malformed { header: "ipv4", what: "header length below 20" },
            ),
            (
                "ihl 15 in 40 bytes",
                {
                    let mut b = bytes[..40].to_vec();
                    b[0] = 0x4f;
                    b
                },
                Error::Truncated { header: "ipv4", need: 60, len: 40 },
            ),
            (
                "total < ihl",
                {
                    let mut b = bytes.clone();
                    b[3] = 19;
                    b[2] = 0;
                    b
                },
                Error::Malformed { header: "ipv4", what: "total length below header length" },
            ),
            (
                "total > buffer",
                bytes[..114].to_vec(),
                Error::Truncated { header: "ipv4", need: 115, len: 114 },
            ),
        ];
        for (what, buf, expected) in cases {
            assert_eq!(Ipv4Packet::new_checked(&buf[..]).err(), Some(expected), "{what}");
        }
        // Trailing bytes beyond the total length are not payload.
        let mut padded = packet();
        padded.extend_from_slice(&[0xee; 6]);
        assert_eq!(Ipv4Packet::new_checked(&padded[..]).unwrap().payload().len(), 95);
    }
}
