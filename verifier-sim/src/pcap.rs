//! pcap and pcapng reading over an in-memory byte slice.
//!
//! Contract:
//! - [`Capture::parse`] reads the file header (classic pcap) or the first Section Header Block
//!   (pcapng) and fails with a typed [`PcapError`] on a bad magic or a short header.
//! - [`Capture::packets`] yields every packet record in file order as `Ok(Record)`; the first
//!   problem is yielded once as `Err(PcapError)` and iteration stops there (the iterator is fused).
//! - No input panics: every read is bounds checked and all arithmetic on file values is checked
//!   or saturating. Timestamps are best effort (saturate, never fail).
//! - Record data borrows from the input; nothing is copied.
//!
//! Classic pcap: magics `a1b2c3d4` (microseconds) and `a1b23c4d` (nanoseconds) in either byte
//! order. The link type is the header's linktype field with the FCS bits (28..=31) and the
//! "FCS length present" bit (26) masked off, as libpcap does.
//!
//! pcapng: Section Header Blocks (either byte order, any number of sections; each resets the
//! interface table), Interface Description Blocks (link type, `if_tsresol`, `if_tsoffset`),
//! Enhanced, Simple (interface 0) and Obsolete Packet Blocks. Other blocks are skipped by their
//! length. Every block's total length must be a multiple of 4, at least 12, and repeated at the
//! block's end.

use std::fmt;

/// Which container format a capture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Classic libpcap format (one global header, fixed record headers).
    Pcap,
    /// pcapng (blocks, sections, interfaces).
    PcapNg,
}

/// A `LINKTYPE_*` value as stored in capture files (tcpdump.org/linktypes.html).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkType(pub u32);

impl LinkType {
    pub const NULL: LinkType = LinkType(0);
    pub const ETHERNET: LinkType = LinkType(1);
    pub const PPP: LinkType = LinkType(9);
    pub const RAW: LinkType = LinkType(101);
    pub const IEEE802_11: LinkType = LinkType(105);
    pub const LOOP: LinkType = LinkType(108);
    pub const LINUX_SLL: LinkType = LinkType(113);
    pub const IEEE802_11_RADIOTAP: LinkType = LinkType(127);
    pub const IPV4: LinkType = LinkType(228);
    pub const IPV6: LinkType = LinkType(229);
    pub const NFLOG: LinkType = LinkType(239);
    pub const LINUX_SLL2: LinkType = LinkType(276);

    /// The short `LINKTYPE_` name for the link types sluice cares about.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            LinkType::NULL => "NULL",
            LinkType::ETHERNET => "ETHERNET",
            LinkType::PPP => "PPP",
            LinkType::RAW => "RAW",
            LinkType::IEEE802_11 => "IEEE802_11",
            LinkType::LOOP => "LOOP",
            LinkType::LINUX_SLL => "LINUX_SLL",
            LinkType::IEEE802_11_RADIOTAP => "IEEE802_11_RADIOTAP",
            LinkType::IPV4 => "IPV4",
            LinkType::IPV6 => "IPV6",
            LinkType::NFLOG => "NFLOG",
            LinkType::LINUX_SLL2 => "LINUX_SLL2",
            _ => return None,
        })
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags apply to the name.
        match self.name() {
            Some(name) => f.pad(name),
            None => f.pad(&format!("LINKTYPE({})", self.0)),
        }
    }
}

/// One captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Position among the packet records of the file (0-based, across pcapng sections).
    pub index: usize,
    /// Link type of the packet's interface (pcapng) or of the file (pcap).
    pub link_type: LinkType,
    /// Nanoseconds since the Unix epoch, best effort (saturating, offset applied).
    pub ts_ns: u64,
    /// The captured bytes (may be shorter than `orig_len`).
    pub data: &'a [u8],
    /// Length of the packet on the wire.
    pub orig_len: u32,
}

/// What went wrong, where. `offset` is a byte offset into the capture; `index` is the index the
/// next packet record would have had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    #[error("capture is {len} bytes, too short for a {need}-byte file header")]
    TooShort { len: usize, need: usize },
    #[error("unknown magic number {magic:#010x} at offset 0")]
    BadMagic { magic: u32 },
    #[error("record {index} at offset {offset}: needs {needed} bytes, only {available} left")]
    Truncated { index: usize, offset: usize, needed: u64, available: usize },
    #[error("block at offset {offset} (before record {index}): total length {length} {reason}")]
    BadBlockLength { index: usize, offset: usize, length: u32, reason: &'static str },
    #[error(
        "block at offset {offset} (before record {index}): trailing length {trailer} \
         differs from leading length {length}"
    )]
    BlockLengthMismatch { index: usize, offset: usize, length: u32, trailer: u32 },
    #[error("section header at offset {offset}: bad byte-order magic {magic:#010x}")]
    BadByteOrderMagic { offset: usize, magic: u32 },
    #[error("section header at offset {offset}: unsupported pcapng version {major}.{minor}")]
    UnsupportedVersion { offset: usize, major: u16, minor: u16 },
    #[error("record {index} at offset {offset}: interface {interface} is not described in this section")]
    UnknownInterface { index: usize, offset: usize, interface: u32 },
    #[error("block at offset {offset} (before record {index}): {what}")]
    Malformed { index: usize, offset: usize, what: &'static str },
}

impl PcapError {
    /// Byte offset of the problem, where the error has one.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            PcapError::TooShort { .. } => None,
            PcapError::BadMagic { .. } => Some(0),
            PcapError::Truncated { offset, .. }
            | PcapError::BadBlockLength { offset, .. }
            | PcapError::BlockLengthMismatch { offset, .. }
            | PcapError::BadByteOrderMagic { offset, .. }
            | PcapError::UnsupportedVersion { offset, .. }
            | PcapError::UnknownInterface { offset, .. }
            | PcapError::Malformed { offset, .. } => Some(offset),
        }
    }

    /// Record index at which iteration stopped, where the error has one.
    pub fn index(&self) -> Option<usize> {
        match *self {
            PcapError::Truncated { index, .. }
            | PcapError::BadBlockLength { index, .. }
            | PcapError::BlockLengthMismatch { index, .. }
            | PcapError::UnknownInterface { index, .. }
            | PcapError::Malformed { index, .. } => Some(index),
            _ => None,
        }
    }
}

const PCAP_MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANO: u32 = 0xa1b2_3c4d;
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
// libpcap's LT_LINKTYPE(): bits 26..=31 carry FCS information, not the link type.
const PCAP_LINKTYPE_MASK: u32 = 0x03ff_ffff;

const NG_SHB: u32 = 0x0a0d_0d0a;
const NG_IDB: u32 = 0x0000_0001;
const NG_OPB: u32 = 0x0000_0002;
const NG_SPB: u32 = 0x0000_0003;
const NG_EPB: u32 = 0x0000_0006;
const NG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const NG_BLOCK_MIN_LEN: u32 = 12;
// Block type, total length, byte-order magic, version, section length, trailing length.
const NG_SHB_MIN_LEN: usize = 28;

const OPT_ENDOFOPT: u16 = 0;
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        }
    }
}

/// Bounds-checked fixed-size read; `None` when `bytes` is too short.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u16(bytes: &[u8], at: usize, e: Endian) -> Option<u16> {
    array(bytes, at).map(|b| e.u16(b))
}

fn read_u32(bytes: &[u8], at: usize, e: Endian) -> Option<u32> {
    array(bytes, at).map(|b| e.u32(b))
}

/// Timestamp units per second of a pcapng interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsResolution {
    Pow10(u8),
    Pow2(u8),
}

impl TsResolution {
    const MICRO: TsResolution = TsResolution::Pow10(6);

    fn from_option(v: u8) -> Self {
        if v & 0x80 == 0 {
            TsResolution::Pow10(v)
        } else {
            TsResolution::Pow2(v & 0x7f)
        }
    }

    /// `units` in this resolution, as nanoseconds (saturating; 0 if the resolution is absurd).
    fn to_ns(self, units: u64) -> u64 {
        let per_sec = match self {
            TsResolution::Pow10(n) => 10u128.checked_pow(u32::from(n)),
            TsResolution::Pow2(n) => 2u128.checked_pow(u32::from(n)),
        };
        let Some(per_sec) = per_sec.filter(|&p| p != 0) else {
            return 0;
        };
        // u64 * 1e9 < 2^94, so the product cannot overflow u128.
        let ns = u128::from(units) * 1_000_000_000 / per_sec;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Interface {
    link_type: LinkType,
    snaplen: u32,
    resolution: TsResolution,
    offset_s: i64,
}

impl Interface {
    fn ts_ns(&self, units: u64) -> u64 {
        let ns = self.resolution.to_ns(units);
        let offset_ns = self.offset_s.saturating_mul(1_000_000_000);
        ns.saturating_add_signed(offset_ns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    Pcap { endian: Endian, nanos: bool, link_type: LinkType, snaplen: u32 },
    PcapNg { endian: Endian },
}

/// A parsed capture header over borrowed bytes; [`Capture::packets`] walks the records.
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    bytes: &'a [u8],
    header: Header,
}

impl<'a> Capture<'a> {
    /// Reads the file header (pcap) or the first Section Header Block (pcapng).
    pub fn parse(bytes: &'a [u8]) -> Result<Capture<'a>, PcapError> {
        let Some(magic_bytes) = array::<4>(bytes, 0) else {
            return Err(PcapError::TooShort { len: bytes.len(), need: 4 });
        };
        let be = u32::from_be_bytes(magic_bytes);
        let le = u32::from_le_bytes(magic_bytes);
        let header = if be == NG_SHB {
            let (endian, _) = parse_shb_header(bytes, 0, 0)?;
            Header::PcapNg { endian }
        } else {
            let (endian, nanos) = match (be, le) {
                (PCAP_MAGIC_MICRO, _) => (Endian::Big, false),
                (PCAP_MAGIC_NANO, _) => (Endian::Big, true),
                (_, PCAP_MAGIC_MICRO) => (Endian::Little, false),
                (_, PCAP_MAGIC_NANO) => (Endian::Little, true),
                _ => return Err(PcapError::BadMagic { magic: be }),
            };
            let too_short = || PcapError::TooShort { len: bytes.len(), need: PCAP_HEADER_LEN };
            let snaplen = read_u32(bytes, 16, endian).ok_or_else(too_short)?;
            let link = read_u32(bytes, 20, endian).ok_or_else(too_short)?;
            Header::Pcap { endian, nanos, link_type: LinkType(link & PCAP_LINKTYPE_MASK), snaplen }
        };
        Ok(Capture { bytes, header })
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.header {
            Header::Pcap { .. } => Format::Pcap,
            Header::PcapNg { .. } => Format::PcapNg,
        }
    }

    /// The file-wide link type of a classic pcap; `None` for pcapng (link types are per interface).
    pub fn link_type(&self) -> Option<LinkType> {
        match self.header {
            Header::Pcap { link_type, .. } => Some(link_type),
            Header::PcapNg { .. } => None,
        }
    }

    /// The file-wide snapshot length of a classic pcap; `None` for pcapng.
    pub fn snaplen(&self) -> Option<u32> {
        match self.header {
            Header::Pcap { snaplen, .. } => Some(snaplen),
            Header::PcapNg { .. } => None,
        }
    }

    /// Whether classic pcap timestamps are in nanoseconds (`false` for pcapng and micro pcap).
    pub fn is_nanosecond(&self) -> bool {
        matches!(self.header, Header::Pcap { nanos: true, .. })
    }

    /// All packet records, in file order; stops after the first error.
    pub fn packets(&self) -> Packets<'a> {
        let (offset, section_endian) = match self.header {
            Header::Pcap { endian, .. } => (PCAP_HEADER_LEN, endian),
            // The first Section Header Block is read again, like any later one.
            Header::PcapNg { endian } => (0, endian),
        };
        Packets {
            bytes: self.bytes,
            offset,
            index: 0,
            done: false,
            header: self.header,
            section_endian,
            interfaces: Vec::new(),
        }
    }
}

/// Validates a Section Header Block at `offset`; returns its byte order and total length.
fn parse_shb_header(bytes: &[u8], offset: usize, index: usize) -> Result<(Endian, u32), PcapError> {
    let available = bytes.len().saturating_sub(offset);
    if available < NG_SHB_MIN_LEN {
        return Err(if offset == 0 {
            PcapError::TooShort { len: bytes.len(), need: NG_SHB_MIN_LEN }
        } else {
            PcapError::Truncated { index, offset, needed: NG_SHB_MIN_LEN as u64, available }
        });
    }
    // The block type is a palindrome; the byte-order magic decides how to read the rest.
    let bom = array::<4>(bytes, offset + 8).map(u32::from_be_bytes);
    let endian = match bom {
        Some(NG_BYTE_ORDER_MAGIC) => Endian::Big,
        Some(m) if m.swap_bytes() == NG_BYTE_ORDER_MAGIC => Endian::Little,
        m => return Err(PcapError::BadByteOrderMagic { offset, magic: m.unwrap_or(0) }),
    };
    let major = read_u16(bytes, offset + 12, endian).unwrap_or(0);
    let minor = read_u16(bytes, offset + 14, endian).unwrap_or(0);
    if major != 1 {
        return Err(PcapError::UnsupportedVersion { offset, major, minor });
    }
    let length = read_u32(bytes, offset + 4, endian).unwrap_or(0);
    if (length as usize) < NG_SHB_MIN_LEN {
        return Err(PcapError::BadBlockLength {
            index,
            offset,
            length,
            reason: "is too small for a section header",
        });
    }
    Ok((endian, length))
}

/// Iterator over a capture's packet records; see [`Capture::packets`].
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    bytes: &'a [u8],
    offset: usize,
    index: usize,
    done: bool,
    header: Header,
    /// pcapng: byte order of the current section.
    section_endian: Endian,
    /// pcapng: interfaces of the current section, by id.
    interfaces: Vec<Interface>,
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Record<'a>, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.header {
            Header::Pcap { endian, nanos, link_type, .. } => self.next_pcap(endian, nanos, link_type),
            Header::PcapNg { .. } => self.next_pcapng(),
        };
        match item {
            Some(Ok(record)) => {
                self.index += 1;
                Some(Ok(record))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

impl std::iter::FusedIterator for Packets<'_> {}

impl<'a> Packets<'a> {
    fn truncated(&self, needed: u64) -> PcapError {
        PcapError::Truncated {
            index: self.index,
            offset: self.offset,
            needed,
            available: self.bytes.len().saturating_sub(self.offset),
        }
    }

    fn malformed(&self, what: &'static str) -> PcapError {
        PcapError::Malformed { index: self.index, offset: self.offset, what }
    }

    fn next_pcap(
        &mut self,
        endian: Endian,
        nanos: bool,
        link_type: LinkType,
    ) -> Option<Result<Record<'a>, PcapError>> {
        let rest = self.bytes.get(self.offset..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let (Some(ts_s), Some(ts_frac), Some(caplen), Some(orig_len)) = (
            read_u32(rest, 0, endian),
            read_u32(rest, 4, endian),
            read_u32(rest, 8, endian),
            read_u32(rest, 12, endian),
        ) else {
            return Some(Err(self.truncated(PCAP_RECORD_HEADER_LEN as u64)));
        };
        let needed = PCAP_RECORD_HEADER_LEN as u64 + u64::from(caplen);
        let Some(data) = rest.get(PCAP_RECORD_HEADER_LEN..).and_then(|d| d.get(..caplen as usize)) else {
            return Some(Err(self.truncated(needed)));
        };
        let frac_ns = if nanos { u64::from(ts_frac) } else { u64::from(ts_frac).saturating_mul(1_000) };
        let ts_ns = u64::from(ts_s).saturating_mul(1_000_000_000).saturating_add(frac_ns);
        let record = Record { index: self.index, link_type, ts_ns, data, orig_len };
        self.offset += PCAP_RECORD_HEADER_LEN + data.len();
        Some(Ok(record))
    }

    fn next_pcapng(&mut self) -> Option<Result<Record<'a>, PcapError>> {
        loop {
            match self.next_block() {
                Ok(Some(Some(record))) => return Some(Ok(record)),
                Ok(Some(None)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Reads one block: `None` at end of input, `Some(None)` for a non-packet block.
    fn next_block(&mut self) -> Result<Option<Option<Record<'a>>>, PcapError> {
        let offset = self.offset;
        let rest = self.bytes.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(type_bytes) = array::<4>(rest, 0) else {
            return Err(self.truncated(8));
        };
        let (endian, length) = if u32::from_be_bytes(type_bytes) == NG_SHB {
            parse_shb_header(self.bytes, offset, self.index)?
        } else {
            match read_u32(rest, 4, self.section_endian) {
                Some(len) => (self.section_endian, len),
                None => return Err(self.truncated(8)),
            }
        };
        let block_type = endian.u32(type_bytes);
        let bad_length = |reason| PcapError::BadBlockLength { index: self.index, offset, length, reason };
        if length < NG_BLOCK_MIN_LEN {
            return Err(bad_length("is less than 12"));
        }
        if length % 4 != 0 {
            return Err(bad_length("is not a multiple of 4"));
        }
        let Some(block) = rest.get(..length as usize) else {
            return Err(self.truncated(u64::from(length)));
        };
        let trailer_at = block.len() - 4;
        let trailer = read_u32(block, trailer_at, endian).unwrap_or(0);
        if trailer != length {
            return Err(PcapError::BlockLengthMismatch { index: self.index, offset, length, trailer });
        }
        let body = &block[8..trailer_at];
        let record = match block_type {
            NG_SHB => {
                self.section_endian = endian;
                self.interfaces.clear();
                None
            }
            NG_IDB => {
                let interface = self.parse_idb(body, endian)?;
                self.interfaces.push(interface);
                None
            }
            NG_EPB | NG_OPB => Some(self.parse_epb(body, endian, block_type == NG_OPB)?),
            NG_SPB => Some(self.parse_spb(body, endian)?),
            _ => None,
        };
        self.offset = offset + block.len();
        Ok(Some(record))
    }

    fn parse_idb(&self, body: &[u8], endian: Endian) -> Result<Interface, PcapError> {
        let (Some(link), Some(snaplen)) = (read_u16(body, 0, endian), read_u32(body, 4, endian)) else {
            return Err(self.malformed("interface description body shorter than 8 bytes"));
        };
        let mut interface = Interface {
            link_type: LinkType(u32::from(link)),
            snaplen,
            resolution: TsResolution::MICRO,
            offset_s: 0,
        };
        for option in Options::new(body.get(8..).unwrap_or_default(), endian) {
            let (code, value) = option.map_err(|()| self.malformed("interface option overruns the block"))?;
            match (code, value) {
                (IF_TSRESOL, &[v]) => interface.resolution = TsResolution::from_option(v),
                (IF_TSOFFSET, v) => {
                    if let Some(b) = array::<8>(v, 0) {
                        interface.offset_s = endian.u64(b) as i64;
                    }
                }
                _ => {}
            }
        }
        Ok(interface)
    }

    fn interface(&self, id: u32) -> Result<Interface, PcapError> {
        let found = self.interfaces.get(id as usize).copied();
        found.ok_or(PcapError::UnknownInterface { index: self.index, offset: self.offset, interface: id })
    }

    /// Enhanced Packet Block, or with `obsolete` the Packet Block (type 2), whose 16-bit interface
    /// id is followed by a 16-bit drop count; the rest of the layout is the same.
    fn parse_epb(&self, body: &'a [u8], endian: Endian, obsolete: bool) -> Result<Record<'a>, PcapError> {
        let fields = (
            if obsolete { read_u16(body, 0, endian).map(u32::from) } else { read_u32(body, 0, endian) },
            read_u32(body, 4, endian),
            read_u32(body, 8, endian),
            read_u32(body, 12, endian),
            read_u32(body, 16, endian),
        );
        let (Some(if_id), Some(ts_hi), Some(ts_lo), Some(caplen), Some(orig_len)) = fields else {
            return Err(self.malformed("packet block body shorter than 20 bytes"));
        };
        let interface = self.interface(if_id)?;
        let Some(data) = body.get(20..).and_then(|d| d.get(..caplen as usize)) else {
            return Err(self.malformed("captured length exceeds the packet block"));
        };
        let ts_units = (u64::from(ts_hi) << 32) | u64::from(ts_lo);
        Ok(Record {
            index: self.index,
            link_type: interface.link_type,
            ts_ns: interface.ts_ns(ts_units),
            data,
            orig_len,
        })
    }

    /// Simple Packet Block: interface 0, no timestamp; the captured length is the least of the
    /// original length, the interface snaplen (when non-zero) and the block body.
    fn parse_spb(&self, body: &'a [u8], endian: Endian) -> Result<Record<'a>, PcapError> {
        let Some(orig_len) = read_u32(body, 0, endian) else {
            return Err(self.malformed("simple packet block body shorter than 4 bytes"));
        };
        let interface = self.interface(0)?;
        let room = body.get(4..).unwrap_or_default();
        let mut caplen = (orig_len as usize).min(room.len());
        if interface.snaplen != 0 {
            caplen = caplen.min(interface.snaplen as usize);
        }
        Ok(Record {
            index: self.index,
            link_type: interface.link_type,
            ts_ns: 0,
            data: &room[..caplen],
            orig_len,
        })
    }
}

/// pcapng options (code, value) until `opt_endofopt` or the end of the bytes; `Err(())` when an
/// option's header or value overruns.
#[derive(Debug)]
struct Options<'a> {
    bytes: &'a [u8],
    endian: Endian,
    done: bool,
}

impl<'a> Options<'a> {
    fn new(bytes: &'a [u8], endian: Endian) -> Self {
        Options { bytes, endian, done: false }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u16, &'a [u8]), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.bytes.is_empty() {
            return None;
        }
        let (Some(code), Some(len)) =
            (read_u16(self.bytes, 0, self.endian), read_u16(self.bytes, 2, self.endian))
        else {
            self.done = true;
            return Some(Err(()));
        };
        if code == OPT_ENDOFOPT {
            self.done = true;
            return None;
        }
        let len = usize::from(len);
        let Some(value) = self.bytes.get(4..4 + len) else {
            self.done = true;
            return Some(Err(()));
        };
        // The last option's padding may be missing in files written by some tools; tolerate it.
        let next = (4 + len + 3) & !3;
        self.bytes = self.bytes.get(next..).unwrap_or_default();
        Some(Ok((code, value)))
    }
}
