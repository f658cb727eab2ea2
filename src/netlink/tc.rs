//! tc: the `clsact` qdisc and `cls_bpf` direct-action filters on its ingress and egress.
//!
//! Contract:
//! - [`Netlink::add_clsact`] creates `clsact` (handle `ffff:`, parent `TC_H_CLSACT`) and
//!   returns whether it did; an existing `clsact` is fine (`Ok(false)`), but an `ingress`
//!   qdisc in its place is an error that says so.
//! - [`Netlink::attach_bpf_filter`] adds a `bpf` filter with `TCA_BPF_FLAG_ACT_DIRECT`
//!   (the program's return value is the verdict), protocol `ETH_P_ALL`, and the priority
//!   and handle the caller chose, so the returned [`TcFilter`] names exactly that filter
//!   for [`Netlink::replace_bpf_filter`] (atomic program swap) and
//!   [`Netlink::delete_filter`]. Adding is exclusive: the same prio/handle is `EEXIST`.
//! - [`Netlink::filters`] lists what is attached to a hook (program name, id, tag,
//!   direct-action), sorted by priority and handle.
//! - Deleting the `clsact` qdisc removes every filter on it.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::msg::{flags, rtm, Message, Request, TcMsg};
use super::{Netlink, NetlinkError, Result};

/// `TCA_*` attributes.
mod tca {
    pub const KIND: u16 = 1;
    pub const OPTIONS: u16 = 2;
}

/// `TCA_BPF_*`, inside `TCA_OPTIONS` of a `bpf` filter.
mod tca_bpf {
    pub const FD: u16 = 6;
    pub const NAME: u16 = 7;
    pub const FLAGS: u16 = 8;
    pub const TAG: u16 = 10;
    pub const ID: u16 = 11;
}

/// `TCA_BPF_FLAG_ACT_DIRECT`.
pub const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `TC_H_CLSACT` (== `TC_H_INGRESS`): the clsact qdisc's parent.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// `TC_H_MIN_INGRESS` / `TC_H_MIN_EGRESS`: the clsact minor numbers of the two hooks.
pub const TC_H_MIN_INGRESS: u32 = 0xFFF2;
pub const TC_H_MIN_EGRESS: u32 = 0xFFF3;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const ETH_P_ALL: u16 = 0x0003;

/// `TC_H_MAKE(maj, min)`.
const fn tc_h_make(major: u32, minor: u32) -> u32 {
    (major & 0xFFFF_0000) | (minor & 0x0000_FFFF)
}

/// A clsact hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcDirection {
    Ingress,
    Egress,
}

impl TcDirection {
    /// The filter parent of this hook.
    pub const fn parent(self) -> u32 {
        match self {
            TcDirection::Ingress => tc_h_make(TC_H_CLSACT, TC_H_MIN_INGRESS),
            TcDirection::Egress => tc_h_make(TC_H_CLSACT, TC_H_MIN_EGRESS),
        }
    }

    /// The hook of a filter parent.
    pub fn from_parent(parent: u32) -> Option<TcDirection> {
        [TcDirection::Ingress, TcDirection::Egress].into_iter().find(|d| d.parent() == parent)
    }
}

impl fmt::Display for TcDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcDirection::Ingress => "ingress",
            TcDirection::Egress => "egress",
        })
    }
}

/// One filter, named the way the kernel finds it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcFilter {
    pub ifindex: u32,
    /// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or _EGRESS)`.
    pub parent: u32,
    pub prio: u16,
    pub handle: u32,
}

impl TcFilter {
    /// The hook it sits on, when it is a clsact one.
    pub fn direction(&self) -> Option<TcDirection> {
        TcDirection::from_parent(self.parent)
    }

    fn header(&self) -> TcMsg {
        TcMsg {
            family: libc::AF_UNSPEC as u8,
            ifindex: i32::try_from(self.ifindex).unwrap_or(i32::MAX),
            handle: self.handle,
            parent: self.parent,
            info: (u32::from(self.prio) << 16) | u32::from(ETH_P_ALL.to_be()),
        }
    }
}

impl fmt::Display for TcFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction() {
            Some(d) => write!(f, "bpf filter on ifindex {} {d}", self.ifindex)?,
            None => write!(f, "filter on ifindex {} parent {:#x}", self.ifindex, self.parent)?,
        }
        write!(f, " prio {} handle {:#x}", self.prio, self.handle)
    }
}

/// What a filter dump says about one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilterInfo {
    pub filter: TcFilter,
    /// `TCA_KIND` (`bpf` for ours).
    pub kind: String,
    /// `TCA_BPF_NAME`.
    pub name: Option<String>,
    /// `TCA_BPF_ID`: the attached program's id.
    pub prog_id: Option<u32>,
    /// `TCA_BPF_TAG`.
    pub tag: Option<[u8; 8]>,
    pub direct_action: bool,
}

impl TcFilterInfo {
    /// Parse an `RTM_NEWTFILTER` message; `None` for the per-priority header records a
    /// dump sends before the filters themselves (handle 0).
    pub fn parse(message: &Message) -> Result<Option<TcFilterInfo>, String> {
        let (hdr, attrs) = message.split::<TcMsg>()?;
        if hdr.handle == 0 {
            return Ok(None);
        }
        let filter = TcFilter {
            ifindex: u32::try_from(hdr.ifindex).map_err(|_| format!("negative ifindex {}", hdr.ifindex))?,
            parent: hdr.parent,
            prio: (hdr.info >> 16) as u16,
            handle: hdr.handle,
        };
        let mut info = TcFilterInfo {
            filter,
            kind: String::new(),
            name: None,
            prog_id: None,
            tag: None,
            direct_action: false,
        };
        for attr in attrs {
            let attr = attr?;
            match attr.kind {
                tca::KIND => info.kind = attr.string(),
                tca::OPTIONS => {
                    for opt in attr.nested() {
                        let opt = opt?;
                        match opt.kind {
                            tca_bpf::NAME => info.name = Some(opt.string()),
                            tca_bpf::ID => info.prog_id = Some(opt.u32()?),
                            tca_bpf::TAG => info.tag = opt.payload.try_into().ok(),
                            tca_bpf::FLAGS => info.direct_action = opt.u32()? & TCA_BPF_FLAG_ACT_DIRECT != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(info))
    }
}

/// A qdisc, as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscInfo {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
}

impl QdiscInfo {
    fn parse(message: &Message) -> Result<QdiscInfo, String> {
        let (hdr, attrs) = message.split::<TcMsg>()?;
        let mut kind = String::new();
        for attr in attrs {
            let attr = attr?;
            if attr.kind == tca::KIND {
                kind = attr.string();
            }
        }
        Ok(QdiscInfo { ifindex: hdr.ifindex as u32, handle: hdr.handle, parent: hdr.parent, kind })
    }
}

fn clsact_header(ifindex: u32) -> TcMsg {
    TcMsg {
        family: libc::AF_UNSPEC as u8,
        ifindex: i32::try_from(ifindex).unwrap_or(i32::MAX),
        handle: CLSACT_HANDLE,
        parent: TC_H_CLSACT,
        info: 0,
    }
}

fn check_bpf_name(name: &str) -> Result<()> {
    if name.contains('\0') || name.len() > 255 {
        return Err(NetlinkError::invalid(
            format!("filter name {name:?}"),
            "must be at most 255 bytes, no NUL",
        ));
    }
    Ok(())
}

impl Netlink {
    /// Create the clsact qdisc on the link; `Ok(false)` when it was already there.
    pub fn add_clsact(&self, ifindex: u32) -> Result<bool> {
        let mut req = Request::new(
            rtm::NEWQDISC,
            flags::CREATE | flags::EXCL,
            format_args!("clsact on ifindex {ifindex}"),
        );
        req.header(&clsact_header(ifindex)).attr_str(tca::KIND, "clsact");
        match self.ack(&mut req) {
            Ok(()) => Ok(true),
            Err(err) if err.is_exists() => {
                let here = self.qdiscs(ifindex)?;
                match here.iter().find(|q| q.parent == TC_H_CLSACT) {
                    Some(q) if q.kind == "clsact" => Ok(false),
                    Some(q) => Err(NetlinkError::invalid(
                        req.what(),
                        format!("an `{}` qdisc occupies the clsact slot; remove it first", q.kind),
                    )),
                    None => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Delete the clsact qdisc and with it every filter on the link's hooks.
    pub fn delete_clsact(&self, ifindex: u32) -> Result<()> {
        let mut req = Request::new(rtm::DELQDISC, 0, format_args!("clsact on ifindex {ifindex}"));
        req.header(&clsact_header(ifindex)).attr_str(tca::KIND, "clsact");
        self.ack(&mut req)
    }

    /// The qdiscs of one link.
    pub fn qdiscs(&self, ifindex: u32) -> Result<Vec<QdiscInfo>> {
        let mut req = Request::new(rtm::GETQDISC, 0, format_args!("qdiscs of ifindex {ifindex}"));
        req.header(&TcMsg { ifindex: i32::try_from(ifindex).unwrap_or(i32::MAX), ..TcMsg::default() });
        let replies = self.dump(&mut req)?;
        let all = replies
            .iter()
            .filter(|m| m.msg_type == rtm::NEWQDISC)
            .map(QdiscInfo::parse)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|reason| NetlinkError::protocol(&req, reason))?;
        Ok(all.into_iter().filter(|q| q.ifindex == ifindex).collect())
    }

    /// Attach `prog` (a loaded `sched_cls` program) as a direct-action `bpf` filter on the
    /// link's clsact hook, at `prio` and `handle` (both non-zero). `name` is shown by
    /// `tc filter show`.
    pub fn attach_bpf_filter(
        &self,
        ifindex: u32,
        direction: TcDirection,
        prio: u16,
        handle: u32,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<TcFilter> {
        let filter = TcFilter { ifindex, parent: direction.parent(), prio, handle };
        if prio == 0 || handle == 0 {
            return Err(NetlinkError::invalid(
                filter.to_string(),
                "priority and handle must be non-zero, or the kernel picks them and the filter cannot be named for removal",
            ));
        }
        self.put_bpf_filter(&filter, prog, name, flags::CREATE | flags::EXCL)?;
        Ok(filter)
    }

    /// Swap the program of an existing filter atomically (no packet sees no filter).
    pub fn replace_bpf_filter(&self, filter: &TcFilter, prog: BorrowedFd<'_>, name: &str) -> Result<()> {
        self.put_bpf_filter(filter, prog, name, flags::REPLACE)
    }

    fn put_bpf_filter(&self, filter: &TcFilter, prog: BorrowedFd<'_>, name: &str, extra: u16) -> Result<()> {
        check_bpf_name(name)?;
        let mut req = Request::new(rtm::NEWTFILTER, extra, format_args!("{filter} ({name})"));
        req.header(&filter.header()).attr_str(tca::KIND, "bpf").nest(tca::OPTIONS, |r| {
            r.attr_u32(tca_bpf::FD, prog.as_raw_fd() as u32)
                .attr_str(tca_bpf::NAME, name)
                .attr_u32(tca_bpf::FLAGS, TCA_BPF_FLAG_ACT_DIRECT);
        });
        self.ack(&mut req)
    }

    /// Remove the filter.
    pub fn delete_filter(&self, filter: &TcFilter) -> Result<()> {
        let mut req = Request::new(rtm::DELTFILTER, 0, filter);
        req.header(&filter.header()).attr_str(tca::KIND, "bpf");
        self.ack(&mut req)
    }

    /// The filters on one clsact hook of the link.
    pub fn filters(&self, ifindex: u32, direction: TcDirection) -> Result<Vec<TcFilterInfo>> {
        let mut req =
            Request::new(rtm::GETTFILTER, 0, format_args!("filters on ifindex {ifindex} {direction}"));
        req.header(&TcMsg {
            family: libc::AF_UNSPEC as u8,
            ifindex: i32::try_from(ifindex).unwrap_or(i32::MAX),
            handle: 0,
            parent: direction.parent(),
            info: 0,
        });
        let replies = self.dump(&mut req)?;
        let mut out = Vec::new();
        for m in replies.iter().filter(|m| m.msg_type == rtm::NEWTFILTER) {
            if let Some(info) =
                TcFilterInfo::parse(m).map_err(|reason| NetlinkError::protocol(&req, reason))?
            {
                out.push(info);
            }
        }
        out.sort_by_key(|f| f.filter);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::FamilyHeader;

    #[test]
    fn clsact_parents_and_info() {
        assert_eq!(TcDirection::Ingress.parent(), 0xFFFF_FFF2);
        assert_eq!(TcDirection::Egress.parent(), 0xFFFF_FFF3);
        assert_eq!(TcDirection::from_parent(0xFFFF_FFF3), Some(TcDirection::Egress));
        let f = TcFilter { ifindex: 3, parent: TcDirection::Ingress.parent(), prio: 1, handle: 1 };
        let hdr = f.header();
        // TC_H_MAKE(1 << 16, htons(ETH_P_ALL)): the protocol's bytes are 00 03 in memory.
        assert_eq!(hdr.info >> 16, 1);
        assert_eq!((hdr.info as u16).to_ne_bytes(), [0x00, 0x03]);
        assert_eq!(f.to_string(), "bpf filter on ifindex 3 ingress prio 1 handle 0x1");
    }

    #[test]
    fn filter_dump_record_parses() {
        let f = TcFilter { ifindex: 3, parent: TcDirection::Egress.parent(), prio: 7, handle: 2 };
        let mut req = Request::new(rtm::NEWTFILTER, 0, "reply");
        req.header(&f.header()).attr_str(tca::KIND, "bpf").nest(tca::OPTIONS, |r| {
            r.attr_str(tca_bpf::NAME, "ep1_egress")
                .attr_u32(tca_bpf::ID, 42)
                .attr(tca_bpf::TAG, &[1, 2, 3, 4, 5, 6, 7, 8])
                .attr_u32(tca_bpf::FLAGS, 1);
        });
        let msg = Message { msg_type: rtm::NEWTFILTER, flags: 0, payload: req.bytes()[16..].to_vec() };
        let info = TcFilterInfo::parse(&msg).expect("parses").expect("a filter, not a header");
        assert_eq!(info.filter, f);
        assert_eq!(
            (info.kind.as_str(), info.name.as_deref(), info.prog_id),
            ("bpf", Some("ep1_egress"), Some(42))
        );
        assert!(info.direct_action);
        assert_eq!(info.tag, Some([1, 2, 3, 4, 5, 6, 7, 8]));

        let mut header_only = Vec::new();
        TcMsg { handle: 0, ..f.header() }.encode(&mut header_only);
        let msg = Message { msg_type: rtm::NEWTFILTER, flags: 0, payload: header_only };
        assert_eq!(TcFilterInfo::parse(&msg), Ok(None));
    }
}
