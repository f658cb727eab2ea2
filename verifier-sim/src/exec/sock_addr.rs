//! The `struct bpf_sock_addr` a `CgroupSockAddr` program runs on.
//!
//! Fields hold what a 4-byte context load yields: addresses and the port are the network
//! byte order bytes read little-endian (the port in the low 16 bits), the rest plain
//! integers. [`SockAddr::user_addr`] and [`SockAddr::set_user_addr`] convert from and to
//! socket addresses. Loads and stores follow the hook's field table in
//! [`crate::spec::SockAddrHook::ctx_fields`]: whole, aligned 4-byte fields only.

use crate::spec::{CtxField, SockAddrHook};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `AF_INET`, `AF_INET6`.
pub const AF_INET: u32 = crate::uapi::AF_INET as u32;
pub const AF_INET6: u32 = crate::uapi::AF_INET6 as u32;
/// `SOCK_STREAM`, `SOCK_DGRAM`.
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;

/// A socket address context, and the socket's cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub user_family: u32,
    pub user_ip4: u32,
    pub user_ip6: [u32; 4],
    pub user_port: u32,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    pub msg_src_ip4: u32,
    pub msg_src_ip6: [u32; 4],
    /// What `bpf_get_socket_cookie(ctx)` returns.
    pub cookie: u64,
}

fn word(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

fn port_word(port: u16) -> u32 {
    u32::from(u16::from_le_bytes(port.to_be_bytes()))
}

impl SockAddr {
    /// The context of a socket of `sock_type` and `protocol` asking for `addr` (the
    /// socket's family is the address's).
    pub fn new(addr: SocketAddr, sock_type: u32, protocol: u32, cookie: u64) -> SockAddr {
        let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut s =
            SockAddr { user_family: family, family, sock_type, protocol, cookie, ..SockAddr::default() };
        s.set_user_addr(addr);
        s
    }

    /// `user_ip4`/`user_ip6` and `user_port` as a socket address (by `user_family`).
    pub fn user_addr(&self) -> SocketAddr {
        let port = u16::from_be_bytes((self.user_port as u16).to_le_bytes());
        let ip = if self.user_family == AF_INET {
            IpAddr::V4(Ipv4Addr::from(self.user_ip4.to_le_bytes()))
        } else {
            let mut b = [0u8; 16];
            for (i, w) in self.user_ip6.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        };
        SocketAddr::new(ip, port)
    }

    /// Set `user_ip4` (an IPv4 address) or `user_ip6` (an IPv6 one) and `user_port`.
    pub fn set_user_addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(a) => self.user_ip4 = word(a.octets()),
            IpAddr::V6(a) => {
                for (w, c) in self.user_ip6.iter_mut().zip(a.octets().chunks_exact(4)) {
                    *w = word([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        self.user_port = port_word(addr.port());
    }

    fn field(hook: SockAddrHook, off: u32, size: usize) -> Option<&'static CtxField> {
        hook.ctx_fields().iter().find(|f| f.off == off && usize::from(f.size) == size)
    }

    fn slot(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "user_family" => &mut self.user_family,
            "user_ip4" => &mut self.user_ip4,
            "user_ip6_0" => &mut self.user_ip6[0],
            "user_ip6_1" => &mut self.user_ip6[1],
            "user_ip6_2" => &mut self.user_ip6[2],
            "user_ip6_3" => &mut self.user_ip6[3],
            "user_port" => &mut self.user_port,
            "family" => &mut self.family,
            "type" => &mut self.sock_type,
            "protocol" => &mut self.protocol,
            "msg_src_ip4" => &mut self.msg_src_ip4,
            "msg_src_ip6_0" => &mut self.msg_src_ip6[0],
            "msg_src_ip6_1" => &mut self.msg_src_ip6[1],
            "msg_src_ip6_2" => &mut self.msg_src_ip6[2],
            "msg_src_ip6_3" => &mut self.msg_src_ip6[3],
            _ => return None,
        })
    }

    /// A context load at `off` of `size` bytes, if the hook allows it.
    pub(super) fn load(&self, hook: SockAddrHook, off: u32, size: usize) -> Option<u64> {
        let f = Self::field(hook, off, size)?;
        // `slot` hands out fields mutably; read through a copy (the struct is small).
        let mut copy = *self;
        copy.slot(f.name).map(|v| u64::from(*v))
    }

    /// A context store at `off` of `size` bytes, if the hook allows it.
    pub(super) fn store(&mut self, hook: SockAddrHook, off: u32, size: usize, value: u64) -> Option<()> {
        let f = Self::field(hook, off, size).filter(|f| f.writable)?;
        *self.slot(f.name)? = value as u32;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_wire_order() {
        let v4: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let s = SockAddr::new(v4, SOCK_STREAM, 6, 1);
        assert_eq!(s.user_ip4, 0x0a00_600a);
        assert_eq!(s.user_port, 0x5000);
        assert_eq!(s.user_addr(), v4);
        let v6: SocketAddr = "[fd00::10]:53".parse().unwrap();
        let s = SockAddr::new(v6, SOCK_DGRAM, 17, 1);
        assert_eq!(s.user_ip6, [0xfd, 0, 0, 0x1000_0000]);
        assert_eq!(s.user_addr(), v6);
    }

    #[test]
    fn stores_follow_the_hook() {
        let mut s = SockAddr::new("10.0.0.1:1".parse().unwrap(), SOCK_STREAM, 6, 1);
        assert!(s.store(SockAddrHook::Connect4, 4, 4, 7).is_some());
        assert!(s.store(SockAddrHook::Connect6, 4, 4, 7).is_none());
        assert!(s.store(SockAddrHook::Connect4, 32, 4, 7).is_none(), "type is read-only");
        assert!(s.store(SockAddrHook::UdpSendmsg4, 40, 4, 7).is_some());
        assert!(s.load(SockAddrHook::Connect4, 4, 2).is_none(), "narrow loads are outside the subset");
    }
}
