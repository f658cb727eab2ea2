//! link: interfaces — look up, create (veth pairs, VXLAN), configure, move, delete.
//!
//! Contract:
//! - Links are named by ifindex in the socket's namespace; [`Netlink::ifindex`] resolves a
//!   name (`RTM_GETLINK` with `IFLA_IFNAME`; an unknown name is `ENODEV`).
//! - Creation is exclusive (`NLM_F_CREATE | NLM_F_EXCL`): an existing name is `EEXIST`,
//!   never a silent reuse. [`Netlink::create_veth`] puts the peer straight into another
//!   namespace when asked (`IFLA_NET_NS_FD` inside `VETH_INFO_PEER`), so it never appears
//!   in the local one.
//! - Names are checked before anything is sent ([`super::check_ifname`]).
//! - [`LinkInfo`] is read from `RTM_NEWLINK` replies; unknown attributes are ignored,
//!   malformed ones are a protocol error.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use super::msg::{flags, rtm, Attr, FamilyHeader, IfInfoMsg, Message, Request};
use super::xdp::{parse_xdp, XdpInfo};
use super::{check_ifname, NetNs, Netlink, NetlinkError, Result};

/// `IFLA_*` link attributes.
pub mod ifla {
    pub const ADDRESS: u16 = 1;
    pub const IFNAME: u16 = 3;
    pub const MTU: u16 = 4;
    pub const LINK: u16 = 5;
    pub const MASTER: u16 = 10;
    pub const OPERSTATE: u16 = 16;
    pub const LINKINFO: u16 = 18;
    pub const NET_NS_FD: u16 = 28;
    pub const EXT_MASK: u16 = 29;
    pub const XDP: u16 = 43;
    /// The namespace id (as this namespace numbers it) of a veth peer's namespace.
    pub const LINK_NETNSID: u16 = 37;
    /// `IFLA_TARGET_NETNSID`: run a `GETLINK` in the namespace with this id.
    pub const TARGET_NETNSID: u16 = 46;
    /// Inside `IFLA_LINKINFO`.
    pub const INFO_KIND: u16 = 1;
    pub const INFO_DATA: u16 = 2;
}

/// `VETH_INFO_PEER`, inside `IFLA_INFO_DATA` of a veth.
const VETH_INFO_PEER: u16 = 1;

/// `IFLA_VXLAN_*`, inside `IFLA_INFO_DATA` of a vxlan.
mod vxlan_attr {
    pub const ID: u16 = 1;
    pub const GROUP: u16 = 2;
    pub const LINK: u16 = 3;
    pub const LOCAL: u16 = 4;
    pub const TTL: u16 = 5;
    pub const LEARNING: u16 = 7;
    pub const PORT: u16 = 15;
    pub const GROUP6: u16 = 16;
    pub const LOCAL6: u16 = 17;
    pub const COLLECT_METADATA: u16 = 25;
}

/// `IFF_UP`.
pub const IFF_UP: u32 = 0x1;
/// `IFF_LOWER_UP`: the carrier is on.
pub const IFF_LOWER_UP: u32 = 0x1_0000;
/// `RTEXT_FILTER_SKIP_STATS`: leave the statistics out of link replies.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// `IFF_*` flags.
    pub flags: u32,
    pub mtu: u32,
    /// The hardware address when it is a 6-byte MAC.
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` (`veth`, `vxlan`, ...), absent for plain devices like `lo`.
    pub kind: Option<String>,
    /// `IFLA_LINK`: the peer's ifindex of a veth (in the peer's namespace), the lower device.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace `link` is in, when it is another one.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`.
    pub master: Option<u32>,
    /// `IFLA_OPERSTATE` (`IF_OPER_UP` is 6).
    pub operstate: Option<u8>,
    /// The XDP programs attached.
    pub xdp: XdpInfo,
}

impl LinkInfo {
    /// Administratively up (`IFF_UP`).
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// Carrier on (`IFF_LOWER_UP`).
    pub fn has_carrier(&self) -> bool {
        self.flags & IFF_LOWER_UP != 0
    }

    /// Parse an `RTM_NEWLINK` message.
    pub fn parse(message: &Message) -> Result<LinkInfo, String> {
        let (hdr, attrs) = message.split::<IfInfoMsg>()?;
        let mut info = LinkInfo {
            ifindex: u32::try_from(hdr.index).map_err(|_| format!("negative ifindex {}", hdr.index))?,
            name: String::new(),
            flags: hdr.flags,
            mtu: 0,
            mac: None,
            kind: None,
            link: None,
            link_netnsid: None,
            master: None,
            operstate: None,
            xdp: XdpInfo::default(),
        };
        for attr in attrs {
            let attr = attr?;
            match attr.kind {
                ifla::IFNAME => info.name = attr.string(),
                ifla::MTU => info.mtu = attr.u32()?,
                ifla::ADDRESS => info.mac = attr.payload.try_into().ok(),
                ifla::LINK => info.link = Some(attr.u32()?),
                ifla::MASTER => info.master = Some(attr.u32()?),
                ifla::LINK_NETNSID => info.link_netnsid = Some(attr.u32()? as i32),
                ifla::OPERSTATE => info.operstate = Some(attr.u8()?),
                ifla::LINKINFO => info.kind = link_kind(&attr)?,
                ifla::XDP => info.xdp = parse_xdp(&attr)?,
                _ => {}
            }
        }
        Ok(info)
    }
}

fn link_kind(linkinfo: &Attr<'_>) -> Result<Option<String>, String> {
    for attr in linkinfo.nested() {
        let attr = attr?;
        if attr.kind == ifla::INFO_KIND {
            return Ok(Some(attr.string()));
        }
    }
    Ok(None)
}

/// A VXLAN device to create ([`Netlink::create_vxlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub name: String,
    /// The VNI (24 bits).
    pub vni: u32,
    /// Source address of the outer packets.
    pub local: Option<IpAddr>,
    /// The remote endpoint (unicast) or multicast group: both are `IFLA_VXLAN_GROUP`.
    pub remote: Option<IpAddr>,
    /// UDP destination port (4789 is IANA's; the kernel's default is 8472).
    pub port: u16,
    /// The lower device (ifindex) to send on.
    pub dev: Option<u32>,
    /// Learn remote MACs from received packets.
    pub learning: bool,
    /// `external` (collect metadata): the tunnel key comes per packet from eBPF
    /// (`bpf_skb_set_tunnel_key`), as an overlay with many peers needs.
    pub external: bool,
    /// Outer TTL; `None` inherits (`ttl auto`).
    pub ttl: Option<u8>,
}

impl Vxlan {
    /// A VXLAN device `name` with `vni` on the IANA port 4789, learning off.
    pub fn new(name: &str, vni: u32) -> Vxlan {
        Vxlan {
            name: name.to_string(),
            vni,
            local: None,
            remote: None,
            port: 4789,
            dev: None,
            learning: false,
            external: false,
            ttl: None,
        }
    }

    pub fn local(mut self, addr: IpAddr) -> Self {
        self.local = Some(addr);
        self
    }

    pub fn remote(mut self, addr: IpAddr) -> Self {
        self.remote = Some(addr);
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn dev(mut self, ifindex: u32) -> Self {
        self.dev = Some(ifindex);
        self
    }

    pub fn learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }

    pub fn external(mut self) -> Self {
        self.external = true;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = Some(ttl);
        self
    }

    fn check(&self) -> Result<()> {
        check_ifname(&self.name)?;
        let bad = |reason: String| Err(NetlinkError::invalid(format!("vxlan {}", self.name), reason));
        if self.vni >= 1 << 24 {
            return bad(format!("VNI {} does not fit 24 bits", self.vni));
        }
        if let (Some(local), Some(remote)) = (self.local, self.remote) {
            if local.is_ipv4() != remote.is_ipv4() {
                return bad(format!("local {local} and remote {remote} are of different families"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Vxlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vxlan {} id {} dstport {}", self.name, self.vni, self.port)?;
        if let Some(remote) = self.remote {
            write!(f, " remote {remote}")?;
        }
        Ok(())
    }
}

fn ifinfo(index: u32) -> IfInfoMsg {
    // ifindexes the kernel hands out are positive i32s; anything else matches no link.
    IfInfoMsg { index: i32::try_from(index).unwrap_or(i32::MAX), ..IfInfoMsg::default() }
}

impl Netlink {
    /// The ifindex of the link called `name`.
    pub fn ifindex(&self, name: &str) -> Result<u32> {
        Ok(self.link_by_name(name)?.ifindex)
    }

    /// The link called `name`.
    pub fn link_by_name(&self, name: &str) -> Result<LinkInfo> {
        check_ifname(name)?;
        let mut req = Request::new(rtm::GETLINK, 0, format_args!("link {name}"));
        req.header(&IfInfoMsg::default())
            .attr_str(ifla::IFNAME, name)
            .attr_u32(ifla::EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        self.one_link(&mut req)
    }

    /// The link with `ifindex`.
    pub fn link_info(&self, ifindex: u32) -> Result<LinkInfo> {
        let mut req = Request::new(rtm::GETLINK, 0, format_args!("ifindex {ifindex}"));
        req.header(&ifinfo(ifindex)).attr_u32(ifla::EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        self.one_link(&mut req)
    }

    /// The link with `ifindex` in the namespace this one calls `netnsid` (a veth peer's,
    /// from [`LinkInfo::link_netnsid`]).
    pub fn link_info_in(&self, netnsid: i32, ifindex: u32) -> Result<LinkInfo> {
        let mut req = Request::new(rtm::GETLINK, 0, format_args!("ifindex {ifindex} in netnsid {netnsid}"));
        req.header(&ifinfo(ifindex))
            .attr_i32(ifla::TARGET_NETNSID, netnsid)
            .attr_u32(ifla::EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        self.one_link(&mut req)
    }

    /// The MAC address of a veth's other end, wherever it is.
    pub fn veth_peer_mac(&self, ifindex: u32) -> Result<Option<[u8; 6]>> {
        let info = self.link_info(ifindex)?;
        let Some(peer) = info.link else { return Ok(None) };
        let peer = match info.link_netnsid {
            Some(nsid) => self.link_info_in(nsid, peer)?,
            None => self.link_info(peer)?,
        };
        Ok(peer.mac)
    }

    fn one_link(&self, req: &mut Request) -> Result<LinkInfo> {
        let replies = self.request(req)?;
        let reply = replies
            .iter()
            .find(|m| m.msg_type == rtm::NEWLINK)
            .ok_or_else(|| NetlinkError::protocol(req, "no RTM_NEWLINK in the reply"))?;
        LinkInfo::parse(reply).map_err(|reason| NetlinkError::protocol(req, reason))
    }

    /// Every link in the namespace, by ifindex.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut req = Request::new(rtm::GETLINK, 0, "all links");
        req.header(&IfInfoMsg::default()).attr_u32(ifla::EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let replies = self.dump(&mut req)?;
        let mut links = replies
            .iter()
            .filter(|m| m.msg_type == rtm::NEWLINK)
            .map(LinkInfo::parse)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|reason| NetlinkError::protocol(&req, reason))?;
        links.sort_by_key(|l| l.ifindex);
        Ok(links)
    }

    /// Create the veth pair `name` (here) and `peer` (here, or in `peer_netns`); both
    /// start down. Returns the ifindex of `name`.
    pub fn create_veth(&self, name: &str, peer: &str, peer_netns: Option<&NetNs>) -> Result<u32> {
        check_ifname(name)?;
        check_ifname(peer)?;
        let what = match peer_netns {
            Some(ns) => format!("veth {name}/{peer} (peer in netns {})", ns.name()),
            None => format!("veth {name}/{peer}"),
        };
        let mut req = Request::new(rtm::NEWLINK, flags::CREATE | flags::EXCL, what);
        req.header(&IfInfoMsg::default()).attr_str(ifla::IFNAME, name).nest(ifla::LINKINFO, |r| {
            r.attr_str(ifla::INFO_KIND, "veth").nest(ifla::INFO_DATA, |r| {
                r.nest(VETH_INFO_PEER, |r| {
                    let mut peer_hdr = Vec::with_capacity(IfInfoMsg::LEN);
                    IfInfoMsg::default().encode(&mut peer_hdr);
                    r.raw(&peer_hdr).attr_str(ifla::IFNAME, peer);
                    if let Some(ns) = peer_netns {
                        r.attr_u32(ifla::NET_NS_FD, ns.fd().as_raw_fd() as u32);
                    }
                });
            });
        });
        self.ack(&mut req)?;
        self.ifindex(name)
    }

    /// Create a VXLAN device (down). Returns its ifindex.
    pub fn create_vxlan(&self, spec: &Vxlan) -> Result<u32> {
        spec.check()?;
        let mut req = Request::new(rtm::NEWLINK, flags::CREATE | flags::EXCL, spec);
        req.header(&IfInfoMsg::default()).attr_str(ifla::IFNAME, &spec.name).nest(ifla::LINKINFO, |r| {
            r.attr_str(ifla::INFO_KIND, "vxlan").nest(ifla::INFO_DATA, |r| {
                if spec.external {
                    r.attr_u8(vxlan_attr::COLLECT_METADATA, 1);
                } else {
                    r.attr_u32(vxlan_attr::ID, spec.vni);
                }
                match spec.local {
                    Some(IpAddr::V4(a)) => r.attr(vxlan_attr::LOCAL, &a.octets()),
                    Some(IpAddr::V6(a)) => r.attr(vxlan_attr::LOCAL6, &a.octets()),
                    None => r,
                };
                match spec.remote {
                    Some(IpAddr::V4(a)) => r.attr(vxlan_attr::GROUP, &a.octets()),
                    Some(IpAddr::V6(a)) => r.attr(vxlan_attr::GROUP6, &a.octets()),
                    None => r,
                };
                if let Some(dev) = spec.dev {
                    r.attr_u32(vxlan_attr::LINK, dev);
                }
                if let Some(ttl) = spec.ttl {
                    r.attr_u8(vxlan_attr::TTL, ttl);
                }
                r.attr_u8(vxlan_attr::LEARNING, u8::from(spec.learning));
                r.attr_be16(vxlan_attr::PORT, spec.port);
            });
        });
        self.ack(&mut req)?;
        self.ifindex(&spec.name)
    }

    /// Create a Linux bridge (down). Returns its ifindex.
    pub fn create_bridge(&self, name: &str) -> Result<u32> {
        check_ifname(name)?;
        let mut req = Request::new(rtm::NEWLINK, flags::CREATE | flags::EXCL, format_args!("bridge {name}"));
        req.header(&IfInfoMsg::default()).attr_str(ifla::IFNAME, name).nest(ifla::LINKINFO, |r| {
            r.attr_str(ifla::INFO_KIND, "bridge");
        });
        self.ack(&mut req)?;
        self.ifindex(name)
    }

    /// Enslave the link to `master` (a bridge's port).
    pub fn set_master(&self, ifindex: u32, master: u32) -> Result<()> {
        let mut req = Request::new(rtm::NEWLINK, 0, format_args!("set ifindex {ifindex} master {master}"));
        req.header(&ifinfo(ifindex)).attr_u32(ifla::MASTER, master);
        self.ack(&mut req)
    }

    /// Bring the link up (`IFF_UP`).
    pub fn set_up(&self, ifindex: u32) -> Result<()> {
        self.set_flags(ifindex, IFF_UP, IFF_UP, "up")
    }

    /// Bring the link down.
    pub fn set_down(&self, ifindex: u32) -> Result<()> {
        self.set_flags(ifindex, 0, IFF_UP, "down")
    }

    fn set_flags(&self, ifindex: u32, value: u32, mask: u32, what: &str) -> Result<()> {
        let mut req = Request::new(rtm::NEWLINK, 0, format_args!("set ifindex {ifindex} {what}"));
        req.header(&IfInfoMsg { flags: value, change: mask, ..ifinfo(ifindex) });
        self.ack(&mut req)
    }

    /// Set the MTU.
    pub fn set_mtu(&self, ifindex: u32, mtu: u32) -> Result<()> {
        let mut req = Request::new(rtm::NEWLINK, 0, format_args!("set ifindex {ifindex} mtu {mtu}"));
        req.header(&ifinfo(ifindex)).attr_u32(ifla::MTU, mtu);
        self.ack(&mut req)
    }

    /// Set the MAC address.
    pub fn set_mac(&self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        let text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let mut req = Request::new(rtm::NEWLINK, 0, format_args!("set ifindex {ifindex} address {text}"));
        req.header(&ifinfo(ifindex)).attr(ifla::ADDRESS, &mac);
        self.ack(&mut req)
    }

    /// Move the link into `netns` (it goes down and keeps its name there).
    pub fn move_to_netns(&self, ifindex: u32, netns: &NetNs) -> Result<()> {
        let mut req =
            Request::new(rtm::NEWLINK, 0, format_args!("move ifindex {ifindex} to netns {}", netns.name()));
        req.header(&ifinfo(ifindex)).attr_u32(ifla::NET_NS_FD, netns.fd().as_raw_fd() as u32);
        self.ack(&mut req)
    }

    /// Delete the link (a veth takes its peer with it).
    pub fn delete_link(&self, ifindex: u32) -> Result<()> {
        let mut req = Request::new(rtm::DELLINK, 0, format_args!("ifindex {ifindex}"));
        req.header(&ifinfo(ifindex));
        self.ack(&mut req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::Attrs;

    /// (attribute type, payload) of every top-level attribute after the ifinfomsg.
    fn top_attrs(req: &Request) -> Vec<(u16, Vec<u8>)> {
        Attrs::new(&req.bytes()[16 + IfInfoMsg::LEN..])
            .map(|a| a.map(|a| (a.kind, a.payload.to_vec())))
            .collect::<Result<_, _>>()
            .expect("well-formed")
    }

    #[test]
    fn link_reply_parses() {
        let mut req = Request::new(rtm::NEWLINK, 0, "reply");
        req.header(&IfInfoMsg { index: 7, flags: IFF_UP | IFF_LOWER_UP, ..IfInfoMsg::default() })
            .attr_str(ifla::IFNAME, "lxc1")
            .attr_u32(ifla::MTU, 1500)
            .attr(ifla::ADDRESS, &[2, 0, 0, 0, 0, 1])
            .attr_u32(ifla::LINK, 9)
            .nest(ifla::LINKINFO, |r| {
                r.attr_str(ifla::INFO_KIND, "veth");
            })
            .attr(999, b"ignored");
        let payload = req.bytes()[16..].to_vec();
        let info = LinkInfo::parse(&Message { msg_type: rtm::NEWLINK, flags: 0, payload }).expect("parses");
        assert_eq!(info.ifindex, 7);
        assert_eq!(info.name, "lxc1");
        assert_eq!(info.mtu, 1500);
        assert_eq!(info.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(info.kind.as_deref(), Some("veth"));
        assert_eq!(info.link, Some(9));
        assert!(info.is_up() && info.has_carrier());
        assert_eq!(top_attrs(&req).len(), 6);
    }

    #[test]
    fn vxlan_is_checked_before_sending() {
        assert!(Vxlan::new("vx0", 1 << 24).check().is_err());
        assert!(Vxlan::new("a/b", 1).check().is_err());
        let mixed =
            Vxlan::new("vx0", 1).local("10.0.0.1".parse().unwrap()).remote("fd00::1".parse().unwrap());
        assert!(mixed.check().is_err());
        let ok = Vxlan::new("vx0", 42).local("10.0.0.1".parse().unwrap()).remote("10.0.0.2".parse().unwrap());
        assert!(ok.check().is_ok());
        assert_eq!(ok.to_string(), "vxlan vx0 id 42 dstport 4789 remote 10.0.0.2");
    }
}
