//! UDP datagrams.
//!
//! [`UdpPacket::new_checked`] guarantees the 8-byte header and a length field that covers the
//! header and fits in the buffer (the payload ends at the length field, not the buffer).

use std::net::IpAddr;

use super::{be16, checksum, ip_proto, put16, Error};

/// Byte offsets of the UDP header.
pub mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
    pub const HEADER_LEN: usize = 8;
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated { header: "udp", need: field::HEADER_LEN, len });
        }
        let declared = usize::from(self.len());
        if declared < field::HEADER_LEN {
            return Err(Error::Malformed { header: "udp", what: "length below 8" });
        }
        if len < declared {
            return Err(Error::Truncated { header: "udp", need: declared, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// The length field (header plus payload).
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// True when the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= field::HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }

    /// Checks the checksum against the pseudo-header of `src`/`dst`. A zero checksum over IPv4
    /// means "none" and passes; over IPv6 it fails.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::verify_transport(src, dst, ip_proto::UDP, datagram)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Recomputes the checksum for the pseudo-header of `src`/`dst` (no-op on mixed families).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = usize::from(self.len());
        if let Some(value) = checksum::transport(src, dst, ip_proto::UDP, &self.buffer.as_ref()[..len]) {
            self.set_checksum(value);
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[field::PAYLOAD..len]
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1));
    const DST: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));

    /// 192.168.1.1:1234 -> 192.168.1.2:80, payload "hi".
    /// Checksum by hand: pseudo header c0a8 + 0101 + c0a8 + 0102 + 0011 + 000a = 0x1836e;
    /// header 04d2 + 0050 + 000a plus data 6869 = 0x6d95; total 0x1f103, folded 0xf104,
    /// complemented 0x0efb.
    static DATAGRAM: [u8; 10] = [0x04, 0xd2, 0x00, 0x50, 0x00, 0x0a, 0x0e, 0xfb, b'h', b'i'];

    #[test]
    fn known_datagram() {
        let udp = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (1234, 80, 10));
        assert_eq!(udp.checksum(), 0x0efb);
        assert_eq!(udp.payload(), b"hi");
        assert!(udp.verify_checksum(SRC, DST));
        assert!(!udp.verify_checksum(DST, DST));
    }

    #[test]
    fn fill_checksum_and_zero_checksum() {
        let mut bytes = DATAGRAM;
        let mut udp = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        udp.set_checksum(0);
        assert!(udp.verify_checksum(SRC, DST), "zero means none over IPv4");
        let v6 = IpAddr::V6("::1".parse().unwrap());
        assert!(!udp.verify_checksum(v6, v6), "zero is invalid over IPv6");
        udp.fill_checksum(SRC, DST);
        assert_eq!(udp.checksum(), 0x0efb);
    }

    #[test]
    fn length_checks() {
        assert!(matches!(UdpPacket::new_checked(&DATAGRAM[..7]), Err(Error::Truncated { need: 8, .. })));
        assert!(matches!(UdpPacket::new_checked(&DATAGRAM[..9]), Err(Error::Truncated { need: 10, .. })));
        let mut short_len = DATAGRAM;
        short_len[5] = 7;
        assert!(matches!(UdpPacket::new_checked(&short_len[..]), Err(Error::Malformed { .. })));
        let mut trailing = DATAGRAM.to_vec();
        trailing.push(0);
        assert_eq!(UdpPacket::new_checked(&trailing[..]).unwrap().payload(), b"hi");
    }
}
