//! Packet views, checksums and a test-frame builder, in smoltcp's `wire` shape.
//!
//! Contract:
//! - One module per header. Each has a `field` module naming its byte offsets and a zero-copy
//!   view `XPacket<T: AsRef<[u8]>>` whose `new_checked` validates lengths; after it succeeds no
//!   accessor panics (setters need `T: AsMut<[u8]>` and keep the same guarantee).
//! - [`checksum`] computes and verifies internet checksums (IPv4 header, TCP/UDP/ICMP/ICMPv6
//!   with v4 and v6 pseudo-headers) and checks every checksum of a whole frame
//!   ([`checksum::verify_frame`]), which golden tests apply to every output packet.
//! - [`PacketBuilder`] builds frames for golden packet tests and benchmarks with correct lengths
//!   and checksums, and reports the offset of every header so tests can cut a frame at each
//!   boundary ([`truncate_at`]).
//!
//! Used by tests, benchmarks and the simulator's packet contexts; nothing here touches the
//! kernel.

pub mod builder;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use builder::{
    truncate_at, BuildError, ExtHeader, Ipv4Builder, Ipv6Builder, LayerOffsets, PacketBuilder,
    PayloadBuilder, TcpHeader,
};
pub use ethernet::{EthernetFrame, MacAddr, VlanTag};
pub use icmp::IcmpPacket;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::{TcpFlags, TcpPacket};
pub use udp::UdpPacket;

/// IP protocol numbers (IPv4 `protocol`, IPv6 `next header`).
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NO_NEXT: u8 = 59;
    pub const IPV6_DEST_OPTS: u8 = 60;
}

/// Why a buffer is not a valid header of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or the length it declares) does.
    #[error("{header}: {len} bytes, need {need}")]
    Truncated { header: &'static str, need: usize, len: usize },
    /// A length or type field is inconsistent.
    #[error("{header}: {what}")]
    Malformed { header: &'static str, what: &'static str },
}

/// Reads a big-endian `u16` at `at`; callers have checked the length.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian `u32` at `at`; callers have checked the length.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
