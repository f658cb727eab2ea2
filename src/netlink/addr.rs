//! addr: interface addresses (IPv4 and IPv6) with their prefix length.
//!
//! Contract:
//! - [`Netlink::add_address`] assigns `addr/prefix_len` to a link exclusively (an address
//!   already there is `EEXIST`). IPv4 addresses are sent as `IFA_LOCAL` and `IFA_ADDRESS`
//!   (what `ip addr add` does for a non-point-to-point link). IPv6 addresses carry
//!   `IFA_F_NODAD`: datapath addresses are assigned, not discovered, and duplicate address
//!   detection would only hold them back (tentative) for a second or more.
//! - The prefix length is checked against the family's width before anything is sent.
//! - [`Netlink::addresses`] lists addresses, sorted (ifindex, address, prefix).

use std::net::IpAddr;

use super::msg::{flags, rtm, IfAddrMsg, Message, Request};
use super::{Netlink, NetlinkError, Result};

/// `IFA_*` attributes.
mod ifa {
    pub const ADDRESS: u16 = 1;
    pub const LOCAL: u16 = 2;
    pub const FLAGS: u16 = 8;
}

/// `IFA_F_NODAD`.
const IFA_F_NODAD: u32 = 0x02;

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressInfo {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl AddressInfo {
    /// Parse an `RTM_NEWADDR` message. `IFA_LOCAL` wins over `IFA_ADDRESS` (they differ
    /// only on point-to-point links, where `IFA_ADDRESS` is the peer).
    pub fn parse(message: &Message) -> Result<AddressInfo, String> {
        let (hdr, attrs) = message.split::<IfAddrMsg>()?;
        let (mut local, mut address) = (None, None);
        for attr in attrs {
            let attr = attr?;
            match attr.kind {
                ifa::LOCAL => local = Some(attr.ip()?),
                ifa::ADDRESS => address = Some(attr.ip()?),
                _ => {}
            }
        }
        let addr = local.or(address).ok_or("RTM_NEWADDR without an address")?;
        Ok(AddressInfo { ifindex: hdr.index, addr, prefix_len: hdr.prefix_len })
    }
}

fn family(addr: IpAddr) -> (u8, u8) {
    match addr {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128),
    }
}

fn address_request(msg_type: u16, extra: u16, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<Request> {
    let (family, width) = family(addr);
    let what = format!("{addr}/{prefix_len} on ifindex {ifindex}");
    if prefix_len > width {
        return Err(NetlinkError::invalid(what, format!("prefix length exceeds {width}")));
    }
    let mut req = Request::new(msg_type, extra, what);
    let nodad = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    req.header(&IfAddrMsg { family, prefix_len, flags: nodad as u8, scope: 0, index: ifindex });
    req.attr_ip(ifa::LOCAL, addr).attr_ip(ifa::ADDRESS, addr);
    if nodad != 0 {
        req.attr_u32(ifa::FLAGS, nodad);
    }
    Ok(req)
}

impl Netlink {
    /// Assign `addr/prefix_len` to the link.
    pub fn add_address(&self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let mut req = address_request(rtm::NEWADDR, flags::CREATE | flags::EXCL, ifindex, addr, prefix_len)?;
        self.ack(&mut req)
    }

    /// Remove `addr/prefix_len` from the link.
    pub fn delete_address(&self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let mut req = address_request(rtm::DELADDR, 0, ifindex, addr, prefix_len)?;
        self.ack(&mut req)
    }

    /// The addresses of one link, or of all links with `None`.
    pub fn addresses(&self, ifindex: Option<u32>) -> Result<Vec<AddressInfo>> {
        let mut req = Request::new(rtm::GETADDR, 0, "all addresses");
        req.header(&IfAddrMsg::default());
        let replies = self.dump(&mut req)?;
        let mut out = replies
            .iter()
            .filter(|m| m.msg_type == rtm::NEWADDR)
            .map(AddressInfo::parse)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|reason| NetlinkError::protocol(&req, reason))?;
        out.retain(|a| ifindex.is_none_or(|i| a.ifindex == i));
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_requests_by_family() {
        let v4 = address_request(rtm::NEWADDR, 0, 3, "10.0.0.1".parse().unwrap(), 24).expect("valid");
        let hdr = &v4.bytes()[16..24];
        assert_eq!(hdr[..4], [libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(v4.what(), "RTM_NEWADDR 10.0.0.1/24 on ifindex 3");

        let v6 = address_request(rtm::NEWADDR, 0, 3, "fd00::1".parse().unwrap(), 64).expect("valid");
        let msg = Message { msg_type: rtm::NEWADDR, flags: 0, payload: v6.bytes()[16..].to_vec() };
        let parsed = AddressInfo::parse(&msg).expect("parses back");
        assert_eq!(parsed, AddressInfo { ifindex: 3, addr: "fd00::1".parse().unwrap(), prefix_len: 64 });
        assert_eq!(v6.bytes()[18], IFA_F_NODAD as u8, "nodad in the header flags");

        for (addr, len) in [("10.0.0.1", 33u8), ("fd00::1", 129)] {
            let err = address_request(rtm::NEWADDR, 0, 1, addr.parse().unwrap(), len).unwrap_err();
            assert!(err.to_string().contains("prefix length exceeds"), "{err}");
        }
    }
}
