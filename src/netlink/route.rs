//! route: unicast routes to a prefix, via a gateway and/or out of a device.
//!
//! Contract:
//! - A [`Route`] names its destination as a [`Cidr`] (host bits zero by construction), and
//!   optionally a gateway of the same family, an output ifindex, `onlink` (the gateway is
//!   reachable on the device even without a covering subnet: endpoints route everything
//!   via a static gateway this way), a table (main by default), a metric and a preferred
//!   source. [`Route::check`] runs before anything is sent.
//! - Adding is exclusive (`EEXIST` for an existing route); [`Netlink::replace_route`]
//!   swaps in place. IPv4 routes without a gateway get link scope, others universe scope;
//!   protocol is `static`.
//! - Deletion matches like `ip route del`: destination and table, plus the gateway and
//!   device when given; scope "nowhere" and protocol/type unspecified match any.

use std::fmt;
use std::net::IpAddr;

use super::msg::{flags, rtm, Request, RtMsg};
use super::{Netlink, NetlinkError, Result};
use crate::model::Cidr;

/// `RTA_*` attributes.
mod rta {
    pub const DST: u16 = 1;
    pub const OIF: u16 = 4;
    pub const GATEWAY: u16 = 5;
    pub const PRIORITY: u16 = 6;
    pub const PREFSRC: u16 = 7;
    pub const TABLE: u16 = 15;
}

/// The main routing table (`RT_TABLE_MAIN`).
pub const RT_TABLE_MAIN: u32 = 254;
/// `RT_TABLE_COMPAT`: in `rtm_table` when the real table id needs 32 bits.
const RT_TABLE_COMPAT: u8 = 252;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
/// `RTNH_F_ONLINK` in `rtm_flags`.
const RTNH_F_ONLINK: u32 = 4;

/// A route (see the module contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: Cidr,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub table: u32,
    pub metric: Option<u32>,
    pub pref_src: Option<IpAddr>,
}

impl Route {
    /// A route to `dst` in the main table, with nothing else set yet.
    pub fn new(dst: Cidr) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            table: RT_TABLE_MAIN,
            metric: None,
            pref_src: None,
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, ifindex: u32) -> Self {
        self.oif = Some(ifindex);
        self
    }

    /// The gateway is on the link, whatever the device's subnets say.
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn pref_src(mut self, src: IpAddr) -> Self {
        self.pref_src = Some(src);
        self
    }

    /// Reject what the kernel would refuse with a less helpful answer.
    pub fn check(&self) -> Result<()> {
        let v4 = self.dst.addr().is_ipv4();
        let bad = |reason: &str| Err(NetlinkError::invalid(format!("route {self}"), reason));
        if self.gateway.is_some_and(|g| g.is_ipv4() != v4) {
            return bad("the gateway is of another family than the destination");
        }
        if self.pref_src.is_some_and(|s| s.is_ipv4() != v4) {
            return bad("the preferred source is of another family than the destination");
        }
        if self.gateway.is_none() && self.oif.is_none() {
            return bad("needs a gateway or an output device");
        }
        if self.onlink && (self.gateway.is_none() || self.oif.is_none()) {
            return bad("onlink needs both a gateway and an output device");
        }
        if self.table == 0 {
            return bad("table 0 is not a table");
        }
        Ok(())
    }

    fn request(&self, msg_type: u16, extra: u16) -> Request {
        let v4 = self.dst.addr().is_ipv4();
        let family = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
        let deleting = msg_type == rtm::DELROUTE;
        let scope = match (deleting, v4 && self.gateway.is_none()) {
            (true, _) => RT_SCOPE_NOWHERE,
            (false, true) => RT_SCOPE_LINK,
            (false, false) => RT_SCOPE_UNIVERSE,
        };
        let mut req = Request::new(msg_type, extra, self);
        req.header(&RtMsg {
            family,
            dst_len: self.dst.len(),
            table: u8::try_from(self.table).unwrap_or(RT_TABLE_COMPAT),
            protocol: if deleting { 0 } else { RTPROT_STATIC },
            scope,
            route_type: if deleting { 0 } else { RTN_UNICAST },
            flags: if self.onlink { RTNH_F_ONLINK } else { 0 },
            ..RtMsg::default()
        });
        req.attr_u32(rta::TABLE, self.table).attr_ip(rta::DST, self.dst.addr());
        if let Some(gw) = self.gateway {
            req.attr_ip(rta::GATEWAY, gw);
        }
        if let Some(oif) = self.oif {
            req.attr_u32(rta::OIF, oif);
        }
        if let Some(metric) = self.metric {
            req.attr_u32(rta::PRIORITY, metric);
        }
        if let (Some(src), false) = (self.pref_src, deleting) {
            req.attr_ip(rta::PREFSRC, src);
        }
        req
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev ifindex {oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Add the route (exclusive).
    pub fn add_route(&self, route: &Route) -> Result<()> {
        route.check()?;
        self.ack(&mut route.request(rtm::NEWROUTE, flags::CREATE | flags::EXCL))
    }

    /// Add the route or replace the one with the same destination, table and metric.
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        route.check()?;
        self.ack(&mut route.request(rtm::NEWROUTE, flags::CREATE | flags::REPLACE))
    }

    /// Delete the route.
    pub fn delete_route(&self, route: &Route) -> Result<()> {
        self.ack(&mut route.request(rtm::DELROUTE, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("valid CIDR")
    }

    #[test]
    fn routes_are_checked() {
        let gw4: IpAddr = "10.0.0.1".parse().unwrap();
        let gw6: IpAddr = "fd00::1".parse().unwrap();
        let cases: &[(Route, bool)] = &[
            (Route::new(cidr("0.0.0.0/0")).via(gw4).dev(2).onlink(), true),
            (Route::new(cidr("10.1.0.0/16")).dev(2), true),
            (Route::new(cidr("fd01::/64")).via(gw6), true),
            (Route::new(cidr("10.1.0.0/16")).via(gw6), false),
            (Route::new(cidr("10.1.0.0/16")), false),
            (Route::new(cidr("10.1.0.0/16")).via(gw4).onlink(), false),
            (Route::new(cidr("10.1.0.0/16")).dev(2).table(0), false),
        ];
        for (route, ok) in cases {
            assert_eq!(route.check().is_ok(), *ok, "{route}");
        }
    }

    #[test]
    fn route_request_header() {
        let route = Route::new(cidr("10.2.0.0/16")).dev(5);
        let req = route.request(rtm::NEWROUTE, flags::CREATE);
        let hdr = RtMsg::parse_from(&req.bytes()[16..]);
        assert_eq!((hdr.family, hdr.dst_len, hdr.table), (libc::AF_INET as u8, 16, 254));
        assert_eq!((hdr.scope, hdr.protocol, hdr.route_type), (RT_SCOPE_LINK, RTPROT_STATIC, RTN_UNICAST));
        assert_eq!(req.what(), "RTM_NEWROUTE 10.2.0.0/16 dev ifindex 5");

        let del = Route::new(cidr("0.0.0.0/0")).via("10.0.0.1".parse().unwrap()).dev(5).onlink();
        let req = del.request(rtm::DELROUTE, 0);
        let hdr = RtMsg::parse_from(&req.bytes()[16..]);
        assert_eq!((hdr.scope, hdr.protocol, hdr.flags), (RT_SCOPE_NOWHERE, 0, RTNH_F_ONLINK));
        let big_table = Route::new(cidr("10.0.0.0/8")).dev(1).table(1000).request(rtm::NEWROUTE, 0);
        assert_eq!(RtMsg::parse_from(&big_table.bytes()[16..]).table, RT_TABLE_COMPAT);
    }

    impl RtMsg {
        fn parse_from(bytes: &[u8]) -> RtMsg {
            <RtMsg as crate::netlink::msg::FamilyHeader>::parse(bytes).expect("header")
        }
    }
}
