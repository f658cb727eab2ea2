//! neigh: static neighbour entries (ARP / NDP), as endpoints use for their gateway.
//!
//! Contract: [`Netlink::add_neighbor`] installs a permanent (`NUD_PERMANENT`) entry
//! mapping an IP to a MAC on a link, replacing any entry for that IP (`NLM_F_CREATE |
//! NLM_F_REPLACE`), so it is idempotent. [`Netlink::delete_neighbor`] removes it.

use std::net::IpAddr;

use super::msg::{flags, rtm, NdMsg, Request};
use super::{Netlink, Result};

/// `NDA_*` attributes.
mod nda {
    pub const DST: u16 = 1;
    pub const LLADDR: u16 = 2;
}

/// `NUD_PERMANENT`.
const NUD_PERMANENT: u16 = 0x80;

fn neighbor_request(msg_type: u16, extra: u16, ifindex: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> Request {
    let family = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let what = match mac {
        Some(m) => format!(
            "{ip} lladdr {} on ifindex {ifindex}",
            m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
        ),
        None => format!("{ip} on ifindex {ifindex}"),
    };
    let mut req = Request::new(msg_type, extra, what);
    req.header(&NdMsg {
        family,
        ifindex: i32::try_from(ifindex).unwrap_or(i32::MAX),
        state: NUD_PERMANENT,
        flags: 0,
        neigh_type: 0,
    });
    req.attr_ip(nda::DST, ip);
    if let Some(mac) = mac {
        req.attr(nda::LLADDR, &mac);
    }
    req
}

impl Netlink {
    /// Install (or replace) the permanent entry `ip -> mac` on the link.
    pub fn add_neighbor(&self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.ack(&mut neighbor_request(rtm::NEWNEIGH, flags::CREATE | flags::REPLACE, ifindex, ip, Some(mac)))
    }

    /// Remove the entry for `ip` on the link.
    pub fn delete_neighbor(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.ack(&mut neighbor_request(rtm::DELNEIGH, 0, ifindex, ip, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::FamilyHeader;

    #[test]
    fn neighbor_request_layout() {
        let req =
            neighbor_request(rtm::NEWNEIGH, 0, 4, "10.0.0.1".parse().unwrap(), Some([2, 0, 0, 0, 0, 1]));
        let hdr = NdMsg::parse(&req.bytes()[16..]).expect("header");
        assert_eq!((hdr.family, hdr.ifindex, hdr.state), (libc::AF_INET as u8, 4, NUD_PERMANENT));
        assert_eq!(req.what(), "RTM_NEWNEIGH 10.0.0.1 lladdr 02:00:00:00:00:01 on ifindex 4");
    }
}
