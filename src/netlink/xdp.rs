//! xdp: attaching XDP programs through netlink (`IFLA_XDP`).
//!
//! Contract:
//! - [`Netlink::xdp_attach`] attaches only when nothing is attached in that mode
//!   (`XDP_FLAGS_UPDATE_IF_NOEXIST`; otherwise `EBUSY` with the kernel's explanation).
//! - [`Netlink::xdp_replace`] swaps programs atomically and only if `expected` is the one
//!   attached (`XDP_FLAGS_REPLACE` + `IFLA_XDP_EXPECTED_FD`): a concurrent change makes it
//!   fail instead of being overwritten.
//! - [`Netlink::xdp_detach`] sends fd -1; with `expected` it removes only that program.
//! - The mode is explicit: [`XdpMode::Skb`] (generic, any device), [`XdpMode::Drv`]
//!   (native), or [`XdpMode::Auto`] (native when the driver has it).
//! - [`Netlink::xdp_info`] reads `IFLA_XDP` from the link: the attach mode and the
//!   program ids.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::link::ifla;
use super::msg::{rtm, Attr, IfInfoMsg, Request};
use super::{Netlink, Result};

/// `IFLA_XDP_*`, inside `IFLA_XDP`.
mod ifla_xdp {
    pub const FD: u16 = 1;
    pub const ATTACHED: u16 = 2;
    pub const FLAGS: u16 = 3;
    pub const PROG_ID: u16 = 4;
    pub const DRV_PROG_ID: u16 = 5;
    pub const SKB_PROG_ID: u16 = 6;
    pub const HW_PROG_ID: u16 = 7;
    pub const EXPECTED_FD: u16 = 8;
}

/// `XDP_FLAGS_*`.
pub mod xdp_flags {
    pub const UPDATE_IF_NOEXIST: u32 = 1 << 0;
    pub const SKB_MODE: u32 = 1 << 1;
    pub const DRV_MODE: u32 = 1 << 2;
    pub const HW_MODE: u32 = 1 << 3;
    pub const REPLACE: u32 = 1 << 4;
}

/// Where the program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Generic XDP, after the skb is built; works on every device.
    Skb,
    /// Native XDP in the driver.
    Drv,
    /// Offloaded to the NIC.
    Hw,
    /// Native if the driver supports it, else generic.
    Auto,
}

impl XdpMode {
    pub const fn flags(self) -> u32 {
        match self {
            XdpMode::Skb => xdp_flags::SKB_MODE,
            XdpMode::Drv => xdp_flags::DRV_MODE,
            XdpMode::Hw => xdp_flags::HW_MODE,
            XdpMode::Auto => 0,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Skb => "skb",
            XdpMode::Drv => "drv",
            XdpMode::Hw => "hw",
            XdpMode::Auto => "auto",
        })
    }
}

/// `IFLA_XDP_ATTACHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpAttached {
    #[default]
    None,
    Drv,
    Skb,
    Hw,
    /// Programs in more than one mode.
    Multi,
    /// A value this code does not know.
    Other(u8),
}

impl From<u8> for XdpAttached {
    fn from(v: u8) -> XdpAttached {
        match v {
            0 => XdpAttached::None,
            1 => XdpAttached::Drv,
            2 => XdpAttached::Skb,
            3 => XdpAttached::Hw,
            4 => XdpAttached::Multi,
            other => XdpAttached::Other(other),
        }
    }
}

/// What is attached to a link's XDP hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct XdpInfo {
    pub attached: XdpAttached,
    /// `IFLA_XDP_PROG_ID`: the program when exactly one mode is used.
    pub prog_id: Option<u32>,
    pub drv_prog_id: Option<u32>,
    pub skb_prog_id: Option<u32>,
    pub hw_prog_id: Option<u32>,
}

impl XdpInfo {
    /// The id of the program in `mode`, if one is attached there (for `Auto`: any).
    pub fn prog_id_in(&self, mode: XdpMode) -> Option<u32> {
        match mode {
            XdpMode::Skb => self.skb_prog_id.or(self.prog_id.filter(|_| self.attached == XdpAttached::Skb)),
            XdpMode::Drv => self.drv_prog_id.or(self.prog_id.filter(|_| self.attached == XdpAttached::Drv)),
            XdpMode::Hw => self.hw_prog_id.or(self.prog_id.filter(|_| self.attached == XdpAttached::Hw)),
            XdpMode::Auto => self.prog_id.or(self.drv_prog_id).or(self.skb_prog_id).or(self.hw_prog_id),
        }
    }
}

/// Parse the nested `IFLA_XDP` of a link reply.
pub(crate) fn parse_xdp(attr: &Attr<'_>) -> Result<XdpInfo, String> {
    let mut info = XdpInfo::default();
    for a in attr.nested() {
        let a = a?;
        match a.kind {
            ifla_xdp::ATTACHED => info.attached = XdpAttached::from(a.u8()?),
            ifla_xdp::PROG_ID => info.prog_id = Some(a.u32()?),
            ifla_xdp::DRV_PROG_ID => info.drv_prog_id = Some(a.u32()?),
            ifla_xdp::SKB_PROG_ID => info.skb_prog_id = Some(a.u32()?),
            ifla_xdp::HW_PROG_ID => info.hw_prog_id = Some(a.u32()?),
            _ => {}
        }
    }
    Ok(info)
}

fn xdp_request(
    ifindex: u32,
    fd: i32,
    expected: Option<i32>,
    flags: u32,
    what: fmt::Arguments<'_>,
) -> Request {
    let mut req = Request::new(rtm::SETLINK, 0, what);
    req.header(&IfInfoMsg {
        family: libc::AF_UNSPEC as u8,
        index: i32::try_from(ifindex).unwrap_or(i32::MAX),
        ..IfInfoMsg::default()
    });
    req.nest(ifla::XDP, |r| {
        r.attr_i32(ifla_xdp::FD, fd).attr_u32(ifla_xdp::FLAGS, flags);
        if let Some(expected) = expected {
            r.attr_i32(ifla_xdp::EXPECTED_FD, expected);
        }
    });
    req
}

impl Netlink {
    /// Attach `prog` in `mode`, failing if a program is already attached there.
    pub fn xdp_attach(&self, ifindex: u32, prog: BorrowedFd<'_>, mode: XdpMode) -> Result<()> {
        let flags = xdp_flags::UPDATE_IF_NOEXIST | mode.flags();
        let mut req = xdp_request(
            ifindex,
            prog.as_raw_fd(),
            None,
            flags,
            format_args!("xdp attach on ifindex {ifindex} ({mode})"),
        );
        self.ack(&mut req)
    }

    /// Replace `expected` with `prog`, atomically, only if `expected` is what is attached.
    pub fn xdp_replace(
        &self,
        ifindex: u32,
        prog: BorrowedFd<'_>,
        expected: BorrowedFd<'_>,
        mode: XdpMode,
    ) -> Result<()> {
        let flags = xdp_flags::REPLACE | mode.flags();
        let mut req = xdp_request(
            ifindex,
            prog.as_raw_fd(),
            Some(expected.as_raw_fd()),
            flags,
            format_args!("xdp replace on ifindex {ifindex} ({mode})"),
        );
        self.ack(&mut req)
    }

    /// Detach the program in `mode`; with `expected`, only if that program is attached.
    pub fn xdp_detach(&self, ifindex: u32, expected: Option<BorrowedFd<'_>>, mode: XdpMode) -> Result<()> {
        let (flags, expected) = match expected {
            Some(fd) => (xdp_flags::REPLACE | mode.flags(), Some(fd.as_raw_fd())),
            None => (mode.flags(), None),
        };
        let mut req = xdp_request(
            ifindex,
            -1,
            expected,
            flags,
            format_args!("xdp detach on ifindex {ifindex} ({mode})"),
        );
        self.ack(&mut req)
    }

    /// What is attached to the link's XDP hook.
    pub fn xdp_info(&self, ifindex: u32) -> Result<XdpInfo> {
        Ok(self.link_info(ifindex)?.xdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::Attrs;

    #[test]
    fn replace_request_carries_expected_fd_and_flags() {
        let req = xdp_request(4, 10, Some(11), xdp_flags::REPLACE | xdp_flags::SKB_MODE, format_args!("t"));
        let xdp = Attrs::new(&req.bytes()[32..]).next().expect("one").expect("valid");
        assert_eq!(xdp.kind, ifla::XDP);
        let inner: Vec<(u16, Vec<u8>)> = xdp
            .nested()
            .map(|a| a.map(|a| (a.kind, a.payload.to_vec())))
            .collect::<Result<_, _>>()
            .expect("ok");
        assert_eq!(
            inner,
            vec![
                (ifla_xdp::FD, 10i32.to_ne_bytes().to_vec()),
                (ifla_xdp::FLAGS, 18u32.to_ne_bytes().to_vec()),
                (ifla_xdp::EXPECTED_FD, 11i32.to_ne_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn prog_id_by_mode() {
        let skb = XdpInfo { attached: XdpAttached::Skb, prog_id: Some(5), ..XdpInfo::default() };
        assert_eq!(skb.prog_id_in(XdpMode::Skb), Some(5));
        assert_eq!(skb.prog_id_in(XdpMode::Drv), None);
        assert_eq!(skb.prog_id_in(XdpMode::Auto), Some(5));
        assert_eq!(XdpInfo::default().prog_id_in(XdpMode::Auto), None);
    }
}
