//! TCP segments.
//!
//! [`TcpPacket::new_checked`] guarantees the 20-byte header and a data offset of at least 5 words
//! that fits in the buffer. TCP has no length field: the segment is the whole buffer, so pass
//! exactly the IP payload.

use std::fmt;
use std::net::IpAddr;
use std::ops::{BitOr, BitOrAssign};

use super::{be16, be32, checksum, ip_proto, put16, put32, Error};

/// Byte offsets of the TCP header.
pub mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (4 bits), reserved (3 bits), flags (9 bits).
    pub const FLAGS: Range<usize> = 12..14;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const OPTIONS: usize = 20;
    /// Without options.
    pub const HEADER_LEN: usize = 20;
    /// With 40 bytes of options (data offset 15).
    pub const MAX_HEADER_LEN: usize = 60;
}

/// The nine TCP flag bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    pub const NONE: TcpFlags = TcpFlags(0);
    pub const FIN: TcpFlags = TcpFlags(0x001);
    pub const SYN: TcpFlags = TcpFlags(0x002);
    pub const RST: TcpFlags = TcpFlags(0x004);
    pub const PSH: TcpFlags = TcpFlags(0x008);
    pub const ACK: TcpFlags = TcpFlags(0x010);
    pub const URG: TcpFlags = TcpFlags(0x020);
    pub const ECE: TcpFlags = TcpFlags(0x040);
    pub const CWR: TcpFlags = TcpFlags(0x080);
    pub const NS: TcpFlags = TcpFlags(0x100);

    const NAMES: [(TcpFlags, &'static str); 9] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
        (Self::NS, "NS"),
    ];

    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;

    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Self::NAMES.iter().filter(|(b, _)| self.contains(*b)).map(|(_, n)| *n).collect();
        if names.is_empty() {
            f.write_str("TcpFlags(NONE)")
        } else {
            write!(f, "TcpFlags({})", names.join("|"))
        }
    }
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated { header: "tcp", need: field::HEADER_LEN, len });
        }
        let header_len = self.header_len();
        if header_len < field::HEADER_LEN {
            return Err(Error::Malformed { header: "tcp", what: "data offset below 5" });
        }
        if len < header_len {
            return Err(Error::Truncated { header: "tcp", need: header_len, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT.start)
    }

    pub fn seq_number(&self) -> u32 {
        be32(self.b(), field::SEQ_NUM.start)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.b(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::FLAGS.start] >> 4) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags(be16(self.b(), field::FLAGS.start) & 0x01ff)
    }

    pub fn window_len(&self) -> u16 {
        be16(self.b(), field::WIN_SIZE.start)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }

    pub fn urgent_at(&self) -> u16 {
        be16(self.b(), field::URGENT.start)
    }

    pub fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::verify_transport(src, dst, ip_proto::TCP, self.b())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        put32(self.buffer.as_mut(), field::SEQ_NUM.start, seq);
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        put32(self.buffer.as_mut(), field::ACK_NUM.start, ack);
    }

    /// Keeps the data offset; sets the nine flag bits.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let offset = be16(self.buffer.as_ref(), field::FLAGS.start) & 0xf000;
        put16(self.buffer.as_mut(), field::FLAGS.start, offset | (flags.0 & 0x01ff));
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Recomputes the checksum for the pseudo-header of `src`/`dst` (no-op on mixed families).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        if let Some(value) = checksum::transport(src, dst, ip_proto::TCP, self.buffer.as_ref()) {
            self.set_checksum(value);
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const DST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// SYN 10.0.0.1:40000 -> 10.0.0.2:443, seq 1, window 64240, MSS 1460 option.
    static SYN: [u8; 24] = [
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, 2, 4, 0x05, 0xb4,
    ];

    #[test]
    fn reads_segment() {
        let tcp = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 443));
        assert_eq!((tcp.seq_number(), tcp.ack_number()), (1, 0));
        assert_eq!(tcp.header_len(), 24);
        assert_eq!(tcp.flags(), TcpFlags::SYN);
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.options(), [2, 4, 5, 0xb4]);
        assert!(tcp.payload().is_empty());
        assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "TcpFlags(SYN|ACK)");
    }

    #[test]
    fn checksum_fill_and_verify() {
        let mut bytes = SYN;
        let mut tcp = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        assert!(!tcp.verify_checksum(SRC, DST));
        tcp.fill_checksum(SRC, DST);
        assert!(tcp.verify_checksum(SRC, DST));
        tcp.set_flags(TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(tcp.header_len(), 24);
        assert!(!tcp.verify_checksum(SRC, DST));
    }

    #[test]
    fn length_checks() {
        assert!(matches!(TcpPacket::new_checked(&SYN[..19]), Err(Error::Truncated { need: 20, .. })));
        assert!(matches!(TcpPacket::new_checked(&SYN[..23]), Err(Error::Truncated { need: 24, .. })));
        let mut bad = SYN;
        bad[12] = 0x40;
        assert!(matches!(TcpPacket::new_checked(&bad[..]), Err(Error::Malformed { .. })));
    }
}
