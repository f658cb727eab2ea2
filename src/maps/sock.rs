//! The socket layer's maps (issue 11): which sockets of local-peer TCP connections are
//! accelerated, the verdict each was given and under which policy revision, and counters.
//!
//! - **sock_hash** (`BPF_MAP_TYPE_SOCKHASH`): a socket is stored under its *peer's* view of
//!   the connection, [`SockKey`] `{local = peer address, remote = own address, local_port =
//!   peer port, remote_port = own port}`, so the peer's `sk_msg` program, which builds the
//!   key from its own socket (`{own, peer}`), finds it with one lookup. IPv4 addresses are
//!   IPv4-mapped IPv6 (`::ffff:a.b.c.d`), the way `lxc` keys them, so an IPv6 socket talking
//!   to a mapped address and the IPv4 socket at the other end build matching keys. The
//!   kernel removes a socket when it closes.
//! - **sock_verdict** (LRU hash): per socket, under its own view (`{own, peer}`): the policy
//!   revision its verdict was decided under and what its direction of the connection does
//!   ([`SockVerdict`]). Entries of closed sockets are left to LRU eviction; a new connection
//!   with the same tuple overwrites its entry when it is established.
//! - **sock_rev** (array, one `u32`): the node's policy revision, bumped by the node after
//!   every policy change; a verdict from an older revision is not used (the message goes to
//!   the stack, where the tc programs judge it).
//! - **sock_stats** (per-CPU array of `u64`, one per [`SockCounter`]).

use super::MapDef;
use crate::maps::names as map;
use sluice_verifier_sim::spec::MapKind;

layout! {
    /// A `sock_hash` / `sock_verdict` key: a connection as one socket sees it. Ports in
    /// network order.
    pub struct SockKey in sock_key {
        local: [u8; 16] => LOCAL,
        remote: [u8; 16] => REMOTE,
        local_port: u16 => LOCAL_PORT,
        remote_port: u16 => REMOTE_PORT,
    }
}

layout! {
    /// A `sock_verdict` value: the revision the connection's verdict was decided under and
    /// the state of this socket's sending direction.
    pub struct SockVerdict in sock_verdict {
        revision: u32 => REVISION,
        /// [`DirState`].
        state: u32 => STATE,
    }
}

/// What one socket's sending direction does. A direction never goes from the stack to the
/// redirect: bytes already handed to TCP could be read after redirected ones. The other way
/// is safe: the receiver reads what was redirected to it before its TCP receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DirState {
    /// No message sent yet: the first message decides.
    Undecided = 0,
    /// Messages go straight to the peer's receive queue.
    Redirecting = 1,
    /// Messages go through TCP and the tc programs, for the rest of the connection.
    Stack = 2,
}

/// The socket layer's counters, indexes into `sock_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SockCounter {
    /// Connections whose socket was inserted into `sock_hash` (one per end).
    Accelerated = 0,
    /// Declined: one end is not a local endpoint.
    DeclinedNotLocal = 1,
    /// Declined: the client's egress policy does not allow the connection.
    DeclinedEgress = 2,
    /// Declined: the server's ingress policy does not allow the connection.
    DeclinedIngress = 3,
    /// Declined: the kernel refused the socket (`bpf_sock_hash_update` failed, e.g. a ULP).
    DeclinedInsert = 4,
    /// Messages redirected to the peer.
    MsgsRedirected = 5,
    /// Bytes redirected to the peer.
    BytesRedirected = 6,
    /// A direction fell back to the stack: its first message found no peer socket.
    FallbackNoPeer = 7,
    /// A direction fell back to the stack: its verdict is from an older policy revision.
    FallbackRevision = 8,
    /// Messages of fallen-back directions passed to the stack.
    MsgsToStack = 9,
    /// Declined: not IPv4 or IPv6.
    DeclinedFamily = 10,
    /// An established socket found by the iterator at attach and inserted (issue 11,
    /// existing sockets).
    PickedUp = 11,
    /// An accelerated socket whose connection the policy still allows after a policy
    /// change, its verdict moved to the new revision by the iterator.
    Restamped = 12,
}

impl SockCounter {
    pub const COUNT: u32 = 13;
    pub const ALL: [SockCounter; 13] = [
        SockCounter::Accelerated,
        SockCounter::DeclinedNotLocal,
        SockCounter::DeclinedEgress,
        SockCounter::DeclinedIngress,
        SockCounter::DeclinedInsert,
        SockCounter::MsgsRedirected,
        SockCounter::BytesRedirected,
        SockCounter::FallbackNoPeer,
        SockCounter::FallbackRevision,
        SockCounter::MsgsToStack,
        SockCounter::DeclinedFamily,
        SockCounter::PickedUp,
        SockCounter::Restamped,
    ];

    /// The name `sluice status` prints.
    pub fn name(self) -> &'static str {
        match self {
            SockCounter::Accelerated => "accelerated",
            SockCounter::DeclinedNotLocal => "declined_not_local",
            SockCounter::DeclinedEgress => "declined_egress_policy",
            SockCounter::DeclinedIngress => "declined_ingress_policy",
            SockCounter::DeclinedInsert => "declined_insert",
            SockCounter::MsgsRedirected => "msgs_redirected",
            SockCounter::BytesRedirected => "bytes_redirected",
            SockCounter::FallbackNoPeer => "fallback_no_peer",
            SockCounter::FallbackRevision => "fallback_revision",
            SockCounter::MsgsToStack => "msgs_to_stack",
            SockCounter::DeclinedFamily => "declined_family",
            SockCounter::PickedUp => "picked_up",
            SockCounter::Restamped => "restamped",
        }
    }
}

/// Accelerated sockets at most (two per connection).
pub const SOCK_HASH_MAX: u32 = 65_536;

/// The socket layer's maps.
pub fn map_defs() -> Vec<MapDef> {
    vec![
        MapDef::of::<SockKey, u32>(map::SOCK_HASH, MapKind::SockHash, SOCK_HASH_MAX, 0),
        MapDef::of::<SockKey, SockVerdict>(map::SOCK_VERDICT, MapKind::LruHash, SOCK_HASH_MAX, 0),
        MapDef::of::<u32, u32>(map::SOCK_REV, MapKind::Array, 1, 0),
        MapDef::of::<u32, u64>(map::SOCK_STATS, MapKind::PerCpuArray, SockCounter::COUNT, 0),
    ]
}

/// A `sock_hash`/`sock_verdict` key for a socket at `local` talking to `remote`.
pub fn sock_key(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> [u8; sock_key::SIZE] {
    let mut k = [0u8; sock_key::SIZE];
    k[sock_key::LOCAL..][..16].copy_from_slice(&super::fwd::addr_key(local.ip()));
    k[sock_key::REMOTE..][..16].copy_from_slice(&super::fwd::addr_key(remote.ip()));
    k[sock_key::LOCAL_PORT..][..2].copy_from_slice(&local.port().to_be_bytes());
    k[sock_key::REMOTE_PORT..][..2].copy_from_slice(&remote.port().to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in SockCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
        assert_eq!(SockCounter::ALL.len(), SockCounter::COUNT as usize);
    }

    #[test]
    fn key_is_two_mapped_addresses_and_two_ports() {
        assert_eq!(
            (sock_key::REMOTE, sock_key::LOCAL_PORT, sock_key::REMOTE_PORT, sock_key::SIZE),
            (16, 32, 34, 36)
        );
        let k = sock_key("10.0.0.1:80".parse().unwrap(), "10.0.0.2:4660".parse().unwrap());
        assert_eq!(&k[..16], &"::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&k[32..], &[0, 80, 0x12, 0x34]);
    }
}
