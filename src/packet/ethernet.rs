//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.
//!
//! [`EthernetFrame::new_checked`] guarantees the 14-byte header; [`EthernetFrame::untag`] walks
//! stacked VLAN tags (bounded by [`MAX_VLAN_TAGS`]) to the inner ethertype and the L3 offset.

use std::fmt;

use super::{be16, put16, Error};

/// Ethertypes sluice parses.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
}

/// Byte offsets of the Ethernet II header.
pub mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
    pub const HEADER_LEN: usize = 14;
}

/// Byte offsets of one VLAN tag, relative to the tag's TPID (which sits where the ethertype
/// would be).
pub mod vlan_field {
    use std::ops::Range;

    pub const TPID: Range<usize> = 0..2;
    pub const TCI: Range<usize> = 2..4;
    pub const TAG_LEN: usize = 4;
}

/// At most this many stacked tags are walked; more is treated as malformed.
pub const MAX_VLAN_TAGS: usize = 8;

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set (includes broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One VLAN tag: its TPID and the fields of its TCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    pub tpid: u16,
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl VlanTag {
    pub fn from_tci(tpid: u16, tci: u16) -> Self {
        VlanTag { tpid, pcp: (tci >> 13) as u8, dei: tci & 0x1000 != 0, vid: tci & 0x0fff }
    }

    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

/// The result of walking a frame's VLAN tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untagged {
    /// Outermost first.
    pub tags: Vec<VlanTag>,
    /// The ethertype after the last tag.
    pub ethertype: u16,
    /// Offset of the L3 header in the frame.
    pub l3_offset: usize,
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps without checking; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// The buffer holds the 14-byte header.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated { header: "ethernet", need: field::HEADER_LEN, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        MacAddr(mac)
    }

    pub fn src_addr(&self) -> MacAddr {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        MacAddr(mac)
    }

    /// The outer ethertype (a TPID when the frame is tagged).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Everything after the 14-byte header (tags included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// Walks 802.1Q (0x8100) and 802.1ad (0x88a8) tags to the inner ethertype.
    pub fn untag(&self) -> Result<Untagged, Error> {
        let bytes = self.buffer.as_ref();
        let mut tags = Vec::new();
        let mut at = field::ETHERTYPE.start;
        loop {
            let ethertype = be16(bytes, at);
            if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
                return Ok(Untagged { tags, ethertype, l3_offset: at + 2 });
            }
            if tags.len() == MAX_VLAN_TAGS {
                return Err(Error::Malformed { header: "vlan", what: "more than 8 stacked tags" });
            }
            // The tag's TCI and the next ethertype.
            let need = at + vlan_field::TAG_LEN + 2;
            if bytes.len() < need {
                return Err(Error::Truncated { header: "vlan", need, len: bytes.len() });
            }
            tags.push(VlanTag::from_tci(ethertype, be16(bytes, at + vlan_field::TCI.start)));
            at += vlan_field::TAG_LEN;
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        put16(self.buffer.as_mut(), field::ETHERTYPE.start, ethertype);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 22] = [
        0x02, 0, 0, 0, 0, 0x02, // dst
        0x02, 0, 0, 0, 0, 0x01, // src
        0x88, 0xa8, 0x00, 0x64, // 802.1ad vid 100
        0x81, 0x00, 0xa0, 0xc8, // 802.1Q pcp 5 vid 200
        0x08, 0x06, // ARP
    ];

    #[test]
    fn reads_header_and_tags() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(frame.dst_addr(), MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(frame.src_addr().to_string(), "02:00:00:00:00:01");
        assert_eq!(frame.ethertype(), ethertype::QINQ);
        let untagged = frame.untag().unwrap();
        assert_eq!(untagged.ethertype, ethertype::ARP);
        assert_eq!(untagged.l3_offset, 22);
        assert_eq!(
            untagged.tags,
            [
                VlanTag { tpid: ethertype::QINQ, pcp: 0, dei: false, vid: 100 },
                VlanTag { tpid: ethertype::VLAN, pcp: 5, dei: false, vid: 200 }
            ]
        );
        assert_eq!(untagged.tags[1].tci(), 0xa0c8);
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).err(),
            Some(Error::Truncated { header: "ethernet", need: 14, len: 13 })
        );
        for len in 14..FRAME.len() {
            let frame = EthernetFrame::new_checked(&FRAME[..len]).unwrap();
            assert!(frame.untag().is_err(), "len {len}");
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = FRAME;
        let mut frame = EthernetFrame::new_checked(&mut bytes[..]).unwrap();
        frame.set_dst_addr(MacAddr::BROADCAST);
        frame.set_src_addr(MacAddr([1, 2, 3, 4, 5, 6]));
        frame.set_ethertype(ethertype::IPV6);
        assert!(frame.dst_addr().is_broadcast() && frame.dst_addr().is_multicast());
        assert_eq!(frame.src_addr(), MacAddr([1, 2, 3, 4, 5, 6]));
        assert_eq!(frame.untag().unwrap().l3_offset, 14);
    }
}
