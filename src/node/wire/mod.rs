//! wire: putting a loaded node's programs on its devices (`sluice attach`), saying what
//! runs where (`sluice status`), and taking all of it away again (`sluice down`).
//!
//! Layout: this module holds the hook model (which program goes on which hook of which
//! device) and the errors; `records` the netlink attachment records; `attach` the tcx
//! query and attaching with undo; `status` the report and its consistency checks; `down`
//! the teardown.
//!
//! Contract:
//! - Everything acts in the calling thread's network namespace: interfaces are looked up,
//!   links created and netlink requests sent there. A caller wiring another namespace's
//!   devices calls from a thread that entered it.
//! - [`attach`] puts each endpoint's `from_ep_N` on tcx ingress and `to_ep_N` on tcx egress
//!   of its host-side device (endpoints numbered as the plan numbers them,
//!   [`crate::node::endpoint_numbers`]) and, given an XDP device, `prefilter` on its XDP hook: native when the driver
//!   has it, else generic, and the report says which. Programs come from the pins `sluice
//!   load` made under `<pin>/programs/`. Each bpf link is pinned at
//!   `<pin>/links/<program>@<ifname>`, so it outlives the process.
//! - Where the kernel has no tcx links (link create answers `EINVAL`/`EOPNOTSUPP`/
//!   `ENOTSUPP`), a direct-action `cls_bpf` filter on `clsact` is attached through netlink
//!   instead (XDP likewise falls back to `IFLA_XDP`). bpffs holds no regular files, so such
//!   attachments are recorded in a small pinned hash map, `<pin>/netlink_attachments`
//!   (layout in [`record`]), with the network namespace they were made in; `attach` and
//!   `down` refuse to act on them from another namespace.
//! - Attaching again is idempotent: a pinned link for the same hook and device is reused,
//!   its program swapped in place with `BPF_LINK_UPDATE` when the pinned program changed
//!   (netlink attachments: filter replace, XDP replace with the expected program); the link
//!   id stays the same. A pinned link whose device is gone is replaced.
//! - All or nothing (DESIGN invariant 8): every interface and program is checked before
//!   anything is attached (a missing interface names the endpoint and the interface), and
//!   a failure part way undoes what the call did: hooks it created are removed, programs
//!   it swapped are swapped back.
//! - [`status`] reads programs, attachments, map fill levels and the nonzero counters of
//!   `pf_stats`, `ep_stats` and `lb_stats` (summed over CPUs), and the socket load
//!   balancer's cgroup links, from the pins alone.
//! - [`down`] detaches and unpins every link, deletes the recorded netlink attachments
//!   (and a `clsact` qdisc it created, once empty), then removes what
//!   [`super::load::unload`] removes, and the pin directory itself.

use super::load::{self, LoadError};
use crate::attach::{xdp_flags as link_xdp, AttachError, Direction, Interface, Link, LinkKind, Mechanism};
use crate::codegen::endpoint::Direction as EpDirection;
use crate::maps::{policy, prefilter};
use crate::model::NodeConfig;
use crate::netlink::{Netlink, NetlinkError, TcDirection, TcFilter, XdpMode};
use crate::sys::{
    self, attach_type, BpfCmd, Errno, Map, MapKind, MapSpec, ProgInfo, ProgType, Program, SysError, Syscall,
    UpdateFlags,
};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The directory of link pins under the pin dir.
pub const LINKS_DIR: &str = "links";
/// The pinned map recording netlink attachments, under the pin dir.
pub const NETLINK_RECORDS: &str = "netlink_attachments";
/// The priority and handle of sluice's `cls_bpf` filters (what removal names them by).
pub const CLS_BPF_PRIO: u16 = 1;
pub const CLS_BPF_HANDLE: u32 = 0x51c;
/// Capacity of the record map (allocated on demand): far more hooks than a node has.
const RECORD_CAPACITY: u32 = 65_536;

// ---------------------------------------------------------------------------------------
// Hooks and what the node file asks for.

/// Which hook of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// tc ingress: what the device receives (from an endpoint, for a host-side veth).
    Ingress,
    /// tc egress: what the device transmits (to an endpoint).
    Egress,
    /// XDP.
    Xdp,
}

impl Hook {
    /// The number in a record key.
    fn code(self) -> u32 {
        match self {
            Hook::Ingress => 0,
            Hook::Egress => 1,
            Hook::Xdp => 2,
        }
    }

    fn from_code(code: u32) -> Option<Hook> {
        [Hook::Ingress, Hook::Egress, Hook::Xdp].into_iter().find(|h| h.code() == code)
    }

    fn direction(self) -> Option<Direction> {
        match self {
            Hook::Ingress => Some(Direction::Ingress),
            Hook::Egress => Some(Direction::Egress),
            Hook::Xdp => None,
        }
    }

    fn tc_direction(self) -> Option<TcDirection> {
        match self {
            Hook::Ingress => Some(TcDirection::Ingress),
            Hook::Egress => Some(TcDirection::Egress),
            Hook::Xdp => None,
        }
    }

    fn prog_type(self) -> ProgType {
        match self {
            Hook::Ingress | Hook::Egress => ProgType::SchedCls,
            Hook::Xdp => ProgType::Xdp,
        }
    }

    fn link_kind(self) -> LinkKind {
        match self {
            Hook::Ingress => LinkKind::TcxIngress,
            Hook::Egress => LinkKind::TcxEgress,
            Hook::Xdp => LinkKind::Xdp,
        }
    }

    fn of_link(kind: LinkKind) -> Option<Hook> {
        [Hook::Ingress, Hook::Egress, Hook::Xdp].into_iter().find(|h| h.link_kind() == kind)
    }

    /// `tcx-ingress`, `tc-egress` (cls_bpf), `xdp-native`, `xdp-generic`, `xdp`.
    pub fn label(self, mechanism: Mechanism, xdp_mode: Option<XdpMode>) -> &'static str {
        match (self, mechanism) {
            (Hook::Ingress, Mechanism::Link) => "tcx-ingress",
            (Hook::Egress, Mechanism::Link) => "tcx-egress",
            (Hook::Ingress, Mechanism::Netlink) => "tc-ingress",
            (Hook::Egress, Mechanism::Netlink) => "tc-egress",
            (Hook::Xdp, _) => match xdp_mode {
                Some(XdpMode::Drv) => "xdp-native",
                Some(XdpMode::Skb) => "xdp-generic",
                Some(XdpMode::Hw) => "xdp-offload",
                _ => "xdp",
            },
        }
    }
}

/// Who asked for a hook: named in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// An endpoint of the node file, by name.
    Endpoint(String),
    /// The `--xdp-device` option.
    XdpDevice,
    /// `spec.loadBalancer.devices`: the standalone load balancer.
    LoadBalancer,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Endpoint(name) => write!(f, "endpoint `{name}`"),
            Owner::XdpDevice => f.write_str("the XDP device"),
            Owner::LoadBalancer => f.write_str("spec.loadBalancer.devices"),
        }
    }
}

/// One program on one hook of one device, as the node asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub program: String,
    pub ifname: String,
    pub hook: Hook,
    pub owner: Owner,
}

impl Want {
    /// The pin name of its link: `<program>@<ifname>`.
    pub fn pin_name(&self) -> String {
        link_pin_name(&self.program, &self.ifname)
    }
}

/// `<program>@<ifname>`.
pub fn link_pin_name(program: &str, ifname: &str) -> String {
    format!("{program}@{ifname}")
}

/// The (program, interface) of a link pin name.
pub fn parse_link_pin_name(name: &str) -> Option<(&str, &str)> {
    name.split_once('@').filter(|(p, i)| !p.is_empty() && !i.is_empty())
}

/// The hooks a node asks for, in order: each endpoint's ingress then egress program (in
/// the plan's endpoint order), the standalone load balancer on the tc ingress of each
/// `spec.loadBalancer.devices` entry, then the prefilter on the XDP device if one is given.
pub fn wanted(cfg: &NodeConfig, xdp_device: Option<&str>) -> Vec<Want> {
    let mut out = Vec::new();
    for (index, ep) in crate::node::endpoint_numbers(cfg) {
        for (dir, hook) in
            [(EpDirection::FromEndpoint, Hook::Ingress), (EpDirection::ToEndpoint, Hook::Egress)]
        {
            out.push(Want {
                program: dir.program_name(index),
                ifname: ep.interface.clone(),
                hook,
                owner: Owner::Endpoint(ep.name.clone()),
            });
        }
    }
    for dev in &cfg.load_balancer.devices {
        out.push(Want {
            program: super::LB_PROGRAM.to_string(),
            ifname: dev.clone(),
            hook: Hook::Ingress,
            owner: Owner::LoadBalancer,
        });
    }
    if let Some(dev) = xdp_device {
        out.push(Want {
            program: crate::codegen::prefilter::NAME.to_string(),
            ifname: dev.to_string(),
            hook: Hook::Xdp,
            owner: Owner::XdpDevice,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Errors.

/// An interface a hook needs that this namespace does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub owner: Owner,
    pub ifname: String,
    pub reason: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: interface `{}`: {}", self.owner, self.ifname, self.reason)
    }
}

/// Why wiring failed.
#[derive(Debug, Error)]
pub enum WireError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("XDP on {iface}: native: {native}; generic: {source}")]
    Xdp {
        iface: String,
        native: String,
        #[source]
        source: Box<AttachError>,
    },
    #[error("nothing attached: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    MissingInterfaces(Vec<Missing>),
    #[error("nothing attached: program `{program}` is not pinned at {} (was the node loaded from another file?)", .path.display())]
    MissingProgram { program: String, path: PathBuf },
    #[error("nothing attached: program `{program}` is of type {found}, its hook needs {want:?}")]
    WrongProgramType { program: String, found: u32, want: ProgType },
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{op} `{}`: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad netlink attachment record: {detail}", .path.display())]
    Record { path: PathBuf, detail: String },
    #[error(
        "the netlink attachments recorded in {} were made in another network namespace (inode {recorded}; this thread's is {current}): run this from there",
        .path.display()
    )]
    OtherNetns { path: PathBuf, recorded: u64, current: u64 },
    #[error(transparent)]
    Ours(#[from] super::ours::OursError),
    #[error("{source}; undone: {undone} change(s) this attach had made, so nothing changed")]
    RolledBack {
        #[source]
        source: Box<WireError>,
        undone: usize,
    },
}

fn nl_err(context: impl fmt::Display) -> impl FnOnce(NetlinkError) -> WireError {
    let context = context.to_string();
    move |source| WireError::Netlink { context, source }
}

type Result<T, E = WireError> = std::result::Result<T, E>;

mod attach;
mod down;
pub mod grace;
mod records;
mod status;

pub use attach::*;
#[allow(unused_imports)]
use attach::*;
pub use down::*;
#[allow(unused_imports)]
use down::*;
pub use records::*;
#[allow(unused_imports)]
use records::*;
pub use status::*;
#[allow(unused_imports)]
use status::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn node(endpoints: &[(&str, &str)]) -> NodeConfig {
        let mut text = String::from(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  endpoints:\n",
        );
        for (i, (name, iface)) in endpoints.iter().enumerate() {
            text.push_str(&format!(
                "    - name: {name}\n      interface: {iface}\n      ipv4: 10.9.0.{}\n      labels: {{app: {name}}}\n",
                i + 1
            ));
        }
        crate::model::parse_str(&text, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wanted_hooks_follow_the_plan_numbering() {
        // Written out of order: the plan numbers endpoints by name.
        let cfg = node(&[("web", "lxc2"), ("db", "lxc1")]);
        let got: Vec<(String, String, Hook)> =
            wanted(&cfg, Some("eth0")).into_iter().map(|w| (w.program, w.ifname, w.hook)).collect();
        let want = [
            ("from_ep_1", "lxc1", Hook::Ingress),
            ("to_ep_1", "lxc1", Hook::Egress),
            ("from_ep_2", "lxc2", Hook::Ingress),
            ("to_ep_2", "lxc2", Hook::Egress),
            ("prefilter", "eth0", Hook::Xdp),
        ];
        let want: Vec<(String, String, Hook)> =
            want.iter().map(|(p, i, h)| (p.to_string(), i.to_string(), *h)).collect();
        assert_eq!(got, want);
        let plan = crate::node::plan(&cfg).expect("plans");
        for w in wanted(&cfg, Some("eth0")) {
            assert!(plan.object(&w.program).is_some(), "{} is a planned program", w.program);
        }
        assert_eq!(wanted(&cfg, None).len(), 4);
    }

    #[test]
    fn link_pin_names_round_trip() {
        let cases = [
            ("from_ep_1", "lxcA", Some(("from_ep_1", "lxcA"))),
            ("prefilter", "eth0.100", Some(("prefilter", "eth0.100"))),
        ];
        for (prog, ifname, want) in cases {
            let name = link_pin_name(prog, ifname);
            assert_eq!(parse_link_pin_name(&name), want, "{name}");
        }
        assert_eq!(parse_link_pin_name("nothing"), None);
        assert_eq!(parse_link_pin_name("@eth0"), None);
    }

    #[test]
    fn records_round_trip() {
        let cases = [
            NetlinkRecord {
                hook: Hook::Egress,
                ifindex: 7,
                ifname: "lxcB".into(),
                program: "to_ep_2".into(),
                prog_id: 4242,
                prio: CLS_BPF_PRIO,
                handle: CLS_BPF_HANDLE,
                xdp_flags: 0,
                created_clsact: true,
                netns: 0x1234_5678_9abc,
            },
            NetlinkRecord {
                hook: Hook::Xdp,
                ifindex: 3,
                ifname: "x".repeat(15),
                program: "prefilter".into(),
                prog_id: 1,
                prio: 0,
                handle: 0,
                xdp_flags: link_xdp::SKB_MODE,
                created_clsact: false,
                netns: u64::MAX,
            },
        ];
        for rec in cases {
            let bytes = rec.encode();
            assert_eq!(NetlinkRecord::decode(&bytes).as_ref(), Ok(&rec));
            assert_eq!(&rec.key()[..4], &rec.ifindex.to_le_bytes());
        }
        let xdp = NetlinkRecord::decode(&{
            let mut b = [0u8; record::SIZE];
            put_u32(&mut b, record::HOOK, 2);
            put_u32(&mut b, record::XDP_FLAGS, link_xdp::DRV_MODE);
            b
        })
        .expect("decodes");
        assert_eq!((xdp.filter(), xdp.xdp_mode()), (None, Some(XdpMode::Drv)));
        assert!(NetlinkRecord::decode(&[0u8; 10]).is_err());
        let mut bad = [0u8; record::SIZE];
        put_u32(&mut bad, record::HOOK, 9);
        assert!(NetlinkRecord::decode(&bad).unwrap_err().contains("unknown hook"));
        // The pinned format of nodes already attached: offsets derived, values unchanged.
        use record::*;
        assert_eq!(
            [HOOK, IFINDEX, PROG_ID, PRIO, HANDLE, XDP_FLAGS, CREATED_CLSACT, NETNS, IFNAME, PROGRAM, SIZE],
            [0, 4, 8, 12, 16, 20, 24, 32, 40, 56, 88]
        );
    }

    #[test]
    fn hook_labels_say_which_mechanism() {
        let cases = [
            (Hook::Ingress, Mechanism::Link, None, "tcx-ingress"),
            (Hook::Egress, Mechanism::Link, None, "tcx-egress"),
            (Hook::Ingress, Mechanism::Netlink, None, "tc-ingress"),
            (Hook::Xdp, Mechanism::Link, Some(XdpMode::Drv), "xdp-native"),
            (Hook::Xdp, Mechanism::Netlink, Some(XdpMode::Skb), "xdp-generic"),
            (Hook::Xdp, Mechanism::Link, None, "xdp"),
        ];
        for (hook, mech, mode, want) in cases {
            assert_eq!(hook.label(mech, mode), want);
        }
    }

    #[test]
    fn missing_interfaces_name_endpoint_and_interface() {
        let err = WireError::MissingInterfaces(vec![Missing {
            owner: Owner::Endpoint("ep-b".into()),
            ifname: "lxcZ".into(),
            reason: "no such device in this network namespace".into(),
        }]);
        assert_eq!(
            err.to_string(),
            "nothing attached: endpoint `ep-b`: interface `lxcZ`: no such device in this network namespace"
        );
    }
}
