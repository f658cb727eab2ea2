//! wire: putting a loaded node's programs on its devices (`sluice attach`), saying what
//! runs where (`sluice status`), and taking all of it away again (`sluice down`).
//!
//! Contract:
//! - Everything acts in the calling thread's network namespace: interfaces are looked up,
//!   links created and netlink requests sent there. A caller wiring another namespace's
//!   devices calls from a thread that entered it.
//! - [`attach`] puts each endpoint's `from_ep_N` on tcx ingress and `to_ep_N` on tcx egress
//!   of its host-side device (endpoints numbered from 1 in name order, as the plan numbers
//!   them) and, given an XDP device, `prefilter` on its XDP hook: native when the driver
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
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        let index = u16::try_from(i + 1).unwrap_or(u16::MAX);
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

// ---------------------------------------------------------------------------------------
// Netlink attachment records.

/// Layout of one record in the pinned `netlink_attachments` hash map: the key is
/// `(ifindex, hook)` as two little-endian `u32`; the value is below (little-endian).
pub mod record {
    pub const KEY_SIZE: usize = 8;
    /// `u32`: 0 ingress, 1 egress, 2 XDP.
    pub const HOOK: usize = 0;
    pub const IFINDEX: usize = 4;
    /// `u32`: the attached program's id.
    pub const PROG_ID: usize = 8;
    /// `u32`: the `cls_bpf` filter's priority.
    pub const PRIO: usize = 12;
    /// `u32`: the `cls_bpf` filter's handle.
    pub const HANDLE: usize = 16;
    /// `u32`: the `IFLA_XDP` mode flags.
    pub const XDP_FLAGS: usize = 20;
    /// `u32`: 1 when sluice created the `clsact` qdisc (and so removes it).
    pub const CREATED_CLSACT: usize = 24;
    /// `u64`: inode of the network namespace the attachment was made in (after 4 bytes of padding).
    pub const NETNS: usize = 32;
    /// 16 bytes, NUL-padded.
    pub const IFNAME: usize = 40;
    pub const IFNAME_LEN: usize = 16;
    /// 32 bytes, NUL-padded.
    pub const PROGRAM: usize = 56;
    pub const PROGRAM_LEN: usize = 32;
    pub const SIZE: usize = 88;
}

/// One program attached through netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkRecord {
    pub hook: Hook,
    pub ifindex: u32,
    pub ifname: String,
    pub program: String,
    pub prog_id: u32,
    pub prio: u16,
    pub handle: u32,
    /// `IFLA_XDP` mode flags (XDP only).
    pub xdp_flags: u32,
    pub created_clsact: bool,
    pub netns: u64,
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(len - 1);
    buf[at..at + n].copy_from_slice(&bytes[..n]);
}

fn get_str(buf: &[u8], at: usize, len: usize) -> String {
    sys::attr::obj_name_from_bytes(&buf[at..at + len])
}

impl NetlinkRecord {
    /// The map key: `(ifindex, hook)`.
    pub fn key(&self) -> [u8; record::KEY_SIZE] {
        record_key(self.ifindex, self.hook)
    }

    pub fn encode(&self) -> [u8; record::SIZE] {
        let mut b = [0u8; record::SIZE];
        put_u32(&mut b, record::HOOK, self.hook.code());
        put_u32(&mut b, record::IFINDEX, self.ifindex);
        put_u32(&mut b, record::PROG_ID, self.prog_id);
        put_u32(&mut b, record::PRIO, u32::from(self.prio));
        put_u32(&mut b, record::HANDLE, self.handle);
        put_u32(&mut b, record::XDP_FLAGS, self.xdp_flags);
        put_u32(&mut b, record::CREATED_CLSACT, u32::from(self.created_clsact));
        b[record::NETNS..record::NETNS + 8].copy_from_slice(&self.netns.to_le_bytes());
        put_str(&mut b, record::IFNAME, record::IFNAME_LEN, &self.ifname);
        put_str(&mut b, record::PROGRAM, record::PROGRAM_LEN, &self.program);
        b
    }

    pub fn decode(b: &[u8]) -> Result<NetlinkRecord, String> {
        if b.len() != record::SIZE {
            return Err(format!("{} bytes, expected {}", b.len(), record::SIZE));
        }
        let code = get_u32(b, record::HOOK);
        let hook = Hook::from_code(code).ok_or_else(|| format!("unknown hook {code}"))?;
        let prio = get_u32(b, record::PRIO);
        let mut netns = [0u8; 8];
        netns.copy_from_slice(&b[record::NETNS..record::NETNS + 8]);
        Ok(NetlinkRecord {
            hook,
            ifindex: get_u32(b, record::IFINDEX),
            ifname: get_str(b, record::IFNAME, record::IFNAME_LEN),
            program: get_str(b, record::PROGRAM, record::PROGRAM_LEN),
            prog_id: get_u32(b, record::PROG_ID),
            prio: u16::try_from(prio).map_err(|_| format!("priority {prio} out of range"))?,
            handle: get_u32(b, record::HANDLE),
            xdp_flags: get_u32(b, record::XDP_FLAGS),
            created_clsact: get_u32(b, record::CREATED_CLSACT) != 0,
            netns: u64::from_le_bytes(netns),
        })
    }

    /// The filter a `cls_bpf` record names.
    pub fn filter(&self) -> Option<TcFilter> {
        let dir = self.hook.tc_direction()?;
        Some(TcFilter { ifindex: self.ifindex, parent: dir.parent(), prio: self.prio, handle: self.handle })
    }

    /// The XDP mode of an XDP record.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        (self.hook == Hook::Xdp).then(|| xdp_mode_of(self.xdp_flags))
    }

    fn describe(&self) -> String {
        match self.filter() {
            Some(f) => format!("cls_bpf prio {} handle {:#x}", f.prio, f.handle),
            None => "IFLA_XDP".to_string(),
        }
    }
}

fn record_key(ifindex: u32, hook: Hook) -> [u8; record::KEY_SIZE] {
    let mut k = [0u8; record::KEY_SIZE];
    put_u32(&mut k, 0, ifindex);
    put_u32(&mut k, 4, hook.code());
    k
}

fn xdp_mode_of(flags: u32) -> XdpMode {
    match flags & link_xdp::MODES {
        link_xdp::SKB_MODE => XdpMode::Skb,
        link_xdp::DRV_MODE => XdpMode::Drv,
        link_xdp::HW_MODE => XdpMode::Hw,
        _ => XdpMode::Auto,
    }
}

fn records_spec() -> MapSpec {
    MapSpec::new("sl_netlink", MapKind::Hash, record::KEY_SIZE as u32, record::SIZE as u32, RECORD_CAPACITY)
        .with_flags(crate::maps::F_NO_PREALLOC)
}

/// The record map, if one is pinned.
fn open_records(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<Option<Map>> {
    let path = pin_dir.join(NETLINK_RECORDS);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Map::from_pin_checked(sys, &path, &records_spec())?))
}

/// Every record in the map, by key.
fn read_records(map: &Map, path: &Path) -> Result<BTreeMap<[u8; 8], NetlinkRecord>> {
    let mut out = BTreeMap::new();
    for key in map.keys() {
        let key = key?;
        let Some(value) = map.lookup(&key)? else { continue };
        let rec = NetlinkRecord::decode(&value)
            .map_err(|detail| WireError::Record { path: path.to_path_buf(), detail })?;
        out.insert(rec.key(), rec);
    }
    Ok(out)
}

/// The inode of the calling thread's network namespace.
pub fn current_netns() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new("/proc/thread-self/ns/net");
    std::fs::metadata(path).map(|m| m.ino()).map_err(|source| WireError::Io {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// tcx hook query (BPF_PROG_QUERY).

/// What runs on one tcx hook of a device, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcxHook {
    pub prog_ids: Vec<u32>,
    /// The link of each program (0 for one attached without a link).
    pub link_ids: Vec<u32>,
    pub revision: u64,
}

/// The programs on the tcx hook of `ifindex` (in the calling thread's namespace).
pub fn tcx_query(sys: &dyn Syscall, ifindex: u32, direction: Direction) -> Result<TcxHook, SysError> {
    let attach = match direction {
        Direction::Ingress => attach_type::TCX_INGRESS,
        Direction::Egress => attach_type::TCX_EGRESS,
    };
    let fail = |errno: Errno| SysError::Bpf {
        cmd: BpfCmd::ProgQuery,
        context: format!("tcx {} of ifindex {ifindex}", direction.name()),
        errno,
    };
    match sys::prog_query(sys, ifindex, attach) {
        Ok(q) => Ok(TcxHook { prog_ids: q.prog_ids, link_ids: q.link_ids, revision: q.revision }),
        Err(Errno(libc::ENOENT)) => Ok(TcxHook::default()),
        Err(errno) => Err(fail(errno)),
    }
}

// ---------------------------------------------------------------------------------------
// attach.

/// Options of [`attach`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Put the prefilter on this device's XDP hook.
    pub xdp_device: Option<String>,
    /// Use netlink (`cls_bpf`, `IFLA_XDP`) even where bpf links work: the fallback path,
    /// on demand (tests, and tools that expect tc filters).
    pub netlink_only: bool,
}

/// What attaching did to one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing was there; now the program is.
    Created,
    /// Our attachment was there with another program; it was swapped atomically.
    Swapped { from: u32 },
    /// Our attachment was there with this program already.
    Unchanged,
}

/// How a program is held on its hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A bpf link, pinned.
    Link { id: u32, pin: PathBuf },
    /// A netlink attachment, recorded.
    Netlink(NetlinkRecord),
}

impl Via {
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Via::Link { .. } => Mechanism::Link,
            Via::Netlink(_) => Mechanism::Netlink,
        }
    }
}

/// One hook after [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub want: Want,
    pub ifindex: u32,
    pub prog_id: u32,
    pub via: Via,
    pub action: Action,
    /// The XDP mode used (XDP only).
    pub xdp_mode: Option<XdpMode>,
    /// Why the preferred way was not taken (tcx links unsupported, no native XDP), if so.
    pub note: Option<String>,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = self.want.hook.label(self.via.mechanism(), self.xdp_mode);
        write!(
            f,
            "{label:<12} {} (ifindex {}): {} (prog {}), ",
            self.want.ifname, self.ifindex, self.want.program, self.prog_id
        )?;
        match &self.via {
            Via::Link { id, pin } => write!(f, "link {id} pinned at {}", pin.display())?,
            Via::Netlink(rec) => write!(f, "netlink {}", rec.describe())?,
        }
        match self.action {
            Action::Created => f.write_str(" [attached]")?,
            Action::Swapped { from } => write!(f, " [program swapped in place, was prog {from}]")?,
            Action::Unchanged => f.write_str(" [already attached]")?,
        }
        if let Some(note) = &self.note {
            write!(f, "\n             ({note})")?;
        }
        Ok(())
    }
}

/// Everything [`attach`] did, in hook order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachReport {
    pub attached: Vec<Attached>,
}

impl fmt::Display for AttachReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.attached {
            writeln!(f, "{a}")?;
        }
        let count = |m: Mechanism| self.attached.iter().filter(|a| a.via.mechanism() == m).count();
        write!(
            f,
            "{} hooks: {} through bpf links, {} through netlink",
            self.attached.len(),
            count(Mechanism::Link),
            count(Mechanism::Netlink)
        )
    }
}

/// What to do to undo one change, newest last.
type Undo = Box<dyn FnOnce()>;

/// The state one [`attach`] call carries from hook to hook.
struct Attacher<'a> {
    sys: &'a Arc<dyn Syscall>,
    links_dir: PathBuf,
    netns: u64,
    records: BTreeMap<[u8; 8], NetlinkRecord>,
    /// Records to write (`Some`) or delete (`None`) once every hook is done.
    record_writes: BTreeMap<[u8; 8], Option<NetlinkRecord>>,
    /// Why tc hooks go through netlink, once that is decided.
    tc_netlink: Option<String>,
    netlink: Option<Netlink>,
    undo: Vec<Undo>,
}

/// `sluice attach`: put the loaded node's programs on its devices (see the module contract).
pub fn attach(
    sys: &Arc<dyn Syscall>,
    cfg: &NodeConfig,
    pin_dir: &Path,
    opts: &AttachOptions,
) -> Result<AttachReport> {
    let programs_dir = pin_dir.join("programs");
    if !programs_dir.is_dir() {
        return Err(LoadError::NotLoaded(pin_dir.to_path_buf()).into());
    }
    let wants = wanted(cfg, opts.xdp_device.as_deref());

    // Check everything before touching anything: the interfaces, then the programs.
    let mut ifaces = Vec::new();
    let mut missing = Vec::new();
    for w in &wants {
        match Interface::lookup(&w.ifname) {
            Ok(iface) => ifaces.push(iface),
            Err(e) => {
                let reason = match e {
                    AttachError::Interface { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                let m = Missing { owner: w.owner.clone(), ifname: w.ifname.clone(), reason };
                if !missing.contains(&m) {
                    missing.push(m);
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(WireError::MissingInterfaces(missing));
    }
    let mut programs: BTreeMap<&str, Program> = BTreeMap::new();
    for w in &wants {
        if programs.contains_key(w.program.as_str()) {
            continue;
        }
        let path = programs_dir.join(&w.program);
        if !path.exists() {
            return Err(WireError::MissingProgram { program: w.program.clone(), path });
        }
        let prog = Program::from_pin(sys, &path)?;
        if prog.prog_type() != Some(w.hook.prog_type()) {
            return Err(WireError::WrongProgramType {
                program: w.program.clone(),
                found: prog.stats().prog_type,
                want: w.hook.prog_type(),
            });
        }
        programs.insert(&w.program, prog);
    }

    let links_dir = pin_dir.join(LINKS_DIR);
    sys::ensure_bpffs(&links_dir)?;
    let netns = current_netns()?;
    let record_map = open_records(sys, pin_dir)?;
    let records = match &record_map {
        Some(map) => read_records(map, &pin_dir.join(NETLINK_RECORDS))?,
        None => BTreeMap::new(),
    };
    if let Some(r) = records.values().find(|r| r.netns != netns) {
        let path = pin_dir.join(NETLINK_RECORDS);
        return Err(WireError::OtherNetns { path, recorded: r.netns, current: netns });
    }
    let mut at = Attacher {
        sys,
        links_dir,
        netns,
        records,
        record_writes: BTreeMap::new(),
        tc_netlink: opts.netlink_only.then(|| "netlink requested".to_string()),
        netlink: None,
        undo: Vec::new(),
    };
    let mut report = AttachReport::default();
    let result = (|| -> Result<()> {
        for (w, iface) in wants.iter().zip(&ifaces) {
            let prog = &programs[w.program.as_str()];
            let a = match w.hook {
                Hook::Xdp => at.xdp(w, iface, prog, opts.netlink_only)?,
                Hook::Ingress | Hook::Egress => at.tc(w, iface, prog)?,
            };
            report.attached.push(a);
        }
        at.commit_records(pin_dir, record_map)
    })();
    match result {
        Ok(()) => Ok(report),
        Err(e) => {
            let undone = at.undo.len();
            while let Some(undo) = at.undo.pop() {
                undo();
            }
            Err(if undone == 0 { e } else { WireError::RolledBack { source: Box::new(e), undone } })
        }
    }
}

impl Attacher<'_> {
    fn nl(&mut self) -> Result<&Netlink> {
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::open().map_err(nl_err("opening rtnetlink"))?);
        }
        Ok(self.netlink.as_ref().expect("opened just above"))
    }

    /// Reuse the pinned link of this hook if it still holds the device; `None` when there
    /// is none (a stale one is detached and unpinned first).
    fn reuse_link(&mut self, w: &Want, iface: &Interface, prog: &Program) -> Result<Option<Attached>> {
        let pin = self.links_dir.join(w.pin_name());
        if !pin.exists() {
            return Ok(None);
        }
        let link = Link::from_pin(self.sys, &pin)?;
        let info = link.info()?;
        if info.kind != w.hook.link_kind() || info.ifindex != Some(iface.index()) {
            // The device was removed (ifindex 0) or recreated: this link holds nothing.
            let _ = link.detach();
            sys::unpin(&pin)?;
            return Ok(None);
        }
        let action = if info.prog_id == prog.id() {
            Action::Unchanged
        } else {
            link.update(prog)?;
            let sys = Arc::clone(self.sys);
            let old = info.prog_id;
            self.undo.push(Box::new(move || {
                if let Ok(p) = Program::from_id(&sys, old) {
                    let _ = link.update(&p);
                }
            }));
            Action::Swapped { from: info.prog_id }
        };
        let xdp_mode = if w.hook == Hook::Xdp { self.xdp_mode_now(iface.index()) } else { None };
        Ok(Some(Attached {
            want: w.clone(),
            ifindex: iface.index(),
            prog_id: prog.id(),
            via: Via::Link { id: info.id, pin },
            action,
            xdp_mode,
            note: None,
        }))
    }

    /// The XDP mode the device reports (links do not say).
    fn xdp_mode_now(&mut self, ifindex: u32) -> Option<XdpMode> {
        let info = self.nl().ok()?.xdp_info(ifindex).ok()?;
        match info.attached {
            crate::netlink::XdpAttached::Drv => Some(XdpMode::Drv),
            crate::netlink::XdpAttached::Skb => Some(XdpMode::Skb),
            crate::netlink::XdpAttached::Hw => Some(XdpMode::Hw),
            _ => None,
        }
    }

    /// Pin a new link and remember how to take it off again.
    fn keep_link(&mut self, mut link: Link, w: &Want) -> Result<Via> {
        let pin = self.links_dir.join(w.pin_name());
        link.pin(&pin)?; // on failure the unpinned link detaches as it drops
        let id = link.id();
        self.undo.push(Box::new(move || {
            let _ = link.detach();
        }));
        Ok(Via::Link { id, pin })
    }

    /// The record of a netlink attachment of this hook made in this namespace, if any.
    fn record(&self, w: &Want, iface: &Interface) -> Option<NetlinkRecord> {
        self.records.get(&record_key(iface.index(), w.hook)).filter(|r| r.netns == self.netns).cloned()
    }

    fn new_record(&self, w: &Want, iface: &Interface, prog: &Program) -> NetlinkRecord {
        NetlinkRecord {
            hook: w.hook,
            ifindex: iface.index(),
            ifname: w.ifname.clone(),
            program: w.program.clone(),
            prog_id: prog.id(),
            prio: 0,
            handle: 0,
            xdp_flags: 0,
            created_clsact: false,
            netns: self.netns,
        }
    }

    fn tc(&mut self, w: &Want, iface: &Interface, prog: &Program) -> Result<Attached> {
        if let Some(done) = self.reuse_link(w, iface, prog)? {
            return Ok(done);
        }
        if let Some(done) = self.reuse_filter(w, iface, prog)? {
            return Ok(done);
        }
        let direction = w.hook.direction().expect("a tc hook has a direction");
        if self.tc_netlink.is_none() {
            match Link::tcx(self.sys, prog, iface.clone(), direction) {
                Ok(link) => {
                    let via = self.keep_link(link, w)?;
                    return Ok(Attached {
                        want: w.clone(),
                        ifindex: iface.index(),
                        prog_id: prog.id(),
                        via,
                        action: Action::Created,
                        xdp_mode: None,
                        note: None,
                    });
                }
                Err(e) if e.link_unsupported() => {
                    self.tc_netlink = Some(format!("tcx links unsupported here ({e}); fell back to cls_bpf"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let rec = self.add_filter(w, iface, prog)?;
        Ok(Attached {
            want: w.clone(),
            ifindex: iface.index(),
            prog_id: prog.id(),
            via: Via::Netlink(rec),
            action: Action::Created,
            xdp_mode: None,
            note: self.tc_netlink.clone(),
        })
    }

    /// Reuse our recorded `cls_bpf` filter of this hook if it is still there.
    fn reuse_filter(&mut self, w: &Want, iface: &Interface, prog: &Program) -> Result<Option<Attached>> {
        let Some(mut rec) = self.record(w, iface) else { return Ok(None) };
        let filter = rec.filter().expect("a tc record names a filter");
        let dir = w.hook.tc_direction().expect("a tc hook");
        let present = self
            .nl()?
            .filters(iface.index(), dir)
            .map_err(nl_err(format!("listing filters of {iface}")))?
            .into_iter()
            .find(|f| f.filter == filter);
        let Some(present) = present else {
            // Someone removed it: attach afresh.
            self.record_writes.insert(rec.key(), None);
            return Ok(None);
        };
        let current = present.prog_id.unwrap_or(0);
        let action = if current == prog.id() {
            Action::Unchanged
        } else {
            self.nl()?
                .replace_bpf_filter(&filter, prog.fd(), &w.program)
                .map_err(nl_err(format!("swapping the program of {filter}")))?;
            let sys = Arc::clone(self.sys);
            let name = w.program.clone();
            self.undo.push(Box::new(move || {
                if let (Ok(nl), Ok(p)) = (Netlink::open(), Program::from_id(&sys, current)) {
                    let _ = nl.replace_bpf_filter(&filter, p.fd(), &name);
                }
            }));
            Action::Swapped { from: current }
        };
        rec.prog_id = prog.id();
        rec.program = w.program.clone();
        self.record_writes.insert(rec.key(), Some(rec.clone()));
        Ok(Some(Attached {
            want: w.clone(),
            ifindex: iface.index(),
            prog_id: prog.id(),
            via: Via::Netlink(rec),
            action,
            xdp_mode: None,
            note: None,
        }))
    }

    fn add_filter(&mut self, w: &Want, iface: &Interface, prog: &Program) -> Result<NetlinkRecord> {
        let dir = w.hook.tc_direction().expect("a tc hook");
        let ifindex = iface.index();
        let created_clsact =
            self.nl()?.add_clsact(ifindex).map_err(nl_err(format!("adding clsact to {iface}")))?;
        let attached = self
            .nl()?
            .attach_bpf_filter(ifindex, dir, CLS_BPF_PRIO, CLS_BPF_HANDLE, prog.fd(), &w.program)
            .map_err(nl_err(format!("attaching `{}` to {dir} of {iface}", w.program)));
        let filter = match attached {
            Ok(f) => f,
            Err(e) => {
                if created_clsact {
                    let _ = self.nl()?.delete_clsact(ifindex);
                }
                return Err(e);
            }
        };
        self.undo.push(Box::new(move || {
            if let Ok(nl) = Netlink::open() {
                let _ = nl.delete_filter(&filter);
                if created_clsact {
                    let _ = nl.delete_clsact(filter.ifindex);
                }
            }
        }));
        let mut rec = self.new_record(w, iface, prog);
        rec.prio = filter.prio;
        rec.handle = filter.handle;
        // A clsact another hook of ours created in this call is ours too.
        rec.created_clsact = created_clsact
            || self.record_writes.values().flatten().any(|r| r.ifindex == ifindex && r.created_clsact);
        self.record_writes.insert(rec.key(), Some(rec.clone()));
        Ok(rec)
    }

    fn xdp(&mut self, w: &Want, iface: &Interface, prog: &Program, netlink_only: bool) -> Result<Attached> {
        if let Some(done) = self.reuse_link(w, iface, prog)? {
            return Ok(done);
        }
        if let Some(done) = self.reuse_xdp(w, iface, prog)? {
            return Ok(done);
        }
        let done = |via, mode, note| Attached {
            want: w.clone(),
            ifindex: iface.index(),
            prog_id: prog.id(),
            via,
            action: Action::Created,
            xdp_mode: Some(mode),
            note,
        };
        let mut why = if netlink_only { "netlink requested".to_string() } else { String::new() };
        if !netlink_only {
            // Native first; generic when the driver has no native XDP (or refuses it).
            let native = match Link::xdp(self.sys, prog, iface.clone(), link_xdp::DRV_MODE) {
                Ok(link) => return Ok(done(self.keep_link(link, w)?, XdpMode::Drv, None)),
                Err(e) => e,
            };
            match Link::xdp(self.sys, prog, iface.clone(), link_xdp::SKB_MODE) {
                Ok(link) => {
                    let note = format!("no native XDP: {native}");
                    return Ok(done(self.keep_link(link, w)?, XdpMode::Skb, Some(note)));
                }
                Err(e) if e.link_unsupported() && native.link_unsupported() => {
                    why = format!("XDP links unsupported here ({e}); fell back to IFLA_XDP");
                }
                Err(source) => {
                    return Err(WireError::Xdp {
                        iface: iface.to_string(),
                        native: native.to_string(),
                        source: Box::new(source),
                    })
                }
            }
        }
        let mut last = None;
        for mode in [XdpMode::Drv, XdpMode::Skb] {
            match self.nl()?.xdp_attach(iface.index(), prog.fd(), mode) {
                Ok(()) => {
                    let ifindex = iface.index();
                    self.undo.push(Box::new(move || {
                        if let Ok(nl) = Netlink::open() {
                            let _ = nl.xdp_detach(ifindex, None, mode);
                        }
                    }));
                    let mut rec = self.new_record(w, iface, prog);
                    rec.xdp_flags = mode.flags();
                    self.record_writes.insert(rec.key(), Some(rec.clone()));
                    let note = match (mode, last) {
                        (XdpMode::Skb, Some(e)) => format!("{why}; no native XDP: {e}"),
                        _ => why,
                    };
                    return Ok(done(Via::Netlink(rec), mode, Some(note)));
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("two attempts were made");
        Err(WireError::Netlink { context: format!("attaching `{}` to XDP of {iface}", w.program), source: e })
    }

    /// Reuse our recorded `IFLA_XDP` attachment of this hook if it is still there.
    fn reuse_xdp(&mut self, w: &Want, iface: &Interface, prog: &Program) -> Result<Option<Attached>> {
        let Some(mut rec) = self.record(w, iface) else { return Ok(None) };
        let mode = xdp_mode_of(rec.xdp_flags);
        let ifindex = iface.index();
        let info = self.nl()?.xdp_info(ifindex).map_err(nl_err(format!("reading XDP of {iface}")))?;
        if info.prog_id_in(mode) != Some(rec.prog_id) {
            self.record_writes.insert(rec.key(), None);
            return Ok(None);
        }
        let action = if rec.prog_id == prog.id() {
            Action::Unchanged
        } else {
            let old = Program::from_id(self.sys, rec.prog_id)?;
            self.nl()?
                .xdp_replace(ifindex, prog.fd(), old.fd(), mode)
                .map_err(nl_err(format!("swapping the XDP program of {iface}")))?;
            let sys = Arc::clone(self.sys);
            let new_id = prog.id();
            self.undo.push(Box::new(move || {
                if let (Ok(nl), Ok(new)) = (Netlink::open(), Program::from_id(&sys, new_id)) {
                    let _ = nl.xdp_replace(ifindex, old.fd(), new.fd(), mode);
                }
            }));
            Action::Swapped { from: rec.prog_id }
        };
        rec.prog_id = prog.id();
        rec.program = w.program.clone();
        self.record_writes.insert(rec.key(), Some(rec.clone()));
        Ok(Some(Attached {
            want: w.clone(),
            ifindex,
            prog_id: prog.id(),
            via: Via::Netlink(rec),
            action,
            xdp_mode: Some(mode),
            note: None,
        }))
    }

    /// Write the records this call changed, creating and pinning the map if needed.
    fn commit_records(&mut self, pin_dir: &Path, map: Option<Map>) -> Result<()> {
        if self.record_writes.is_empty() {
            return Ok(());
        }
        let map = match map {
            Some(m) => m,
            None => {
                let m = Map::create(self.sys, &records_spec())?;
                m.pin(&pin_dir.join(NETLINK_RECORDS))?;
                m
            }
        };
        for (key, rec) in &self.record_writes {
            match rec {
                Some(rec) => map.update(key, &rec.encode(), UpdateFlags::ANY)?,
                None => {
                    map.delete(key)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// status.

/// A pinned program, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStatus {
    /// The pin name (the kernel name may be truncated).
    pub name: String,
    pub info: ProgInfo,
}

/// One attachment found under the pin dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentStatus {
    pub hook: Hook,
    pub mechanism: Mechanism,
    pub ifname: String,
    pub ifindex: u32,
    pub program: String,
    pub prog_id: u32,
    /// The link id, or the netlink attachment's description.
    pub detail: String,
    pub xdp_mode: Option<XdpMode>,
    /// What is wrong with it, if something is (device gone, filter missing, ...).
    pub problem: Option<String>,
}

/// How full a pinned map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapStatus {
    pub name: String,
    /// `hash`, `lru_hash`, `lpm_trie`, ... (or the kernel's number).
    pub kind: String,
    /// Entries in use, for maps that hold only what was put in (hash, LRU, LPM).
    pub used: Option<u64>,
    pub max_entries: u32,
}

/// One nonzero counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// `prefilter`, or `endpoint N (ifname)`.
    pub scope: String,
    pub reason: &'static str,
    /// Whether the packet was dropped for this reason.
    pub drop: bool,
    pub count: u64,
}

/// What `sluice status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub pin_dir: PathBuf,
    pub programs: Vec<ProgramStatus>,
    pub attachments: Vec<AttachmentStatus>,
    /// The socket load balancer's cgroup links.
    pub sockets: Vec<SocketLinkStatus>,
    pub maps: Vec<MapStatus>,
    pub counters: Vec<Counter>,
    /// Inconsistencies between programs, maps, links and records, and between the
    /// prefilter's listing and its tables (a change or a load cut short); `sluice status`
    /// exits non-zero when there is any.
    pub problems: Vec<String>,
}

/// One socket load-balancer program on its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLinkStatus {
    pub program: String,
    pub prog_id: u32,
    pub detail: String,
    pub problem: Option<String>,
}

impl Status {
    /// The nonzero count of `reason` in `scope`.
    pub fn counter(&self, scope: &str, reason: &str) -> u64 {
        self.counters.iter().filter(|c| c.scope == scope && c.reason == reason).map(|c| c.count).sum()
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(WireError::Io { op: "read_dir", path: dir.to_path_buf(), source }),
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// Sum a per-CPU `u64` counter.
fn per_cpu_sum(map: &Map, key: u32) -> Result<u64> {
    let values = map.lookup_percpu(&key.to_le_bytes())?.unwrap_or_default();
    Ok(values.iter().filter_map(|v| v.get(..8)?.try_into().ok()).map(u64::from_le_bytes).sum())
}

/// `sluice status`: what is pinned under `pin_dir` and what runs where.
pub fn status(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<Status> {
    let programs_dir = pin_dir.join("programs");
    let links = sorted_entries(&pin_dir.join(LINKS_DIR))?;
    let record_map = open_records(sys, pin_dir)?;
    // Maps without programs is a node too: a half-pinned one, which the checks name.
    if !programs_dir.is_dir() && !pin_dir.join("maps").is_dir() && links.is_empty() && record_map.is_none() {
        return Err(LoadError::NotLoaded(pin_dir.to_path_buf()).into());
    }
    let mut st = Status { pin_dir: pin_dir.to_path_buf(), ..Status::default() };
    for (name, path) in sorted_entries(&programs_dir)? {
        let prog = Program::from_pin(sys, &path)?;
        st.programs.push(ProgramStatus { name, info: prog.info()? });
    }

    let netns = current_netns()?;
    let nl = Netlink::open().ok();
    let xdp_mode_of_device = |ifindex: u32, ifname: &str| -> Option<XdpMode> {
        let info = nl.as_ref()?.link_info(ifindex).ok()?;
        if info.name != ifname {
            return None; // another namespace's device numbering
        }
        match info.xdp.attached {
            crate::netlink::XdpAttached::Drv => Some(XdpMode::Drv),
            crate::netlink::XdpAttached::Skb => Some(XdpMode::Skb),
            crate::netlink::XdpAttached::Hw => Some(XdpMode::Hw),
            _ => None,
        }
    };
    // A link names its program by kernel name (maybe truncated): prefer the pin name.
    let pinned_name = |id: u32| st.programs.iter().find(|p| p.info.id == id).map(|p| p.name.clone());
    let mut found = Vec::new();
    for (name, path) in &links {
        let ifname = parse_link_pin_name(name).map_or("?", |(_, ifname)| ifname);
        let opened = Link::from_pin(sys, path).and_then(|link| Ok((link.info()?, link)));
        let (info, link) = match opened {
            Ok(found) => found,
            Err(e) => {
                found.push(AttachmentStatus {
                    hook: Hook::Ingress,
                    mechanism: Mechanism::Link,
                    ifname: ifname.to_string(),
                    ifindex: 0,
                    program: name.clone(),
                    prog_id: 0,
                    detail: String::new(),
                    xdp_mode: None,
                    problem: Some(e.to_string()),
                });
                continue;
            }
        };
        let hook = Hook::of_link(info.kind).unwrap_or(Hook::Ingress);
        let ifindex = info.ifindex.unwrap_or(0);
        let problem = match (Hook::of_link(info.kind), ifindex) {
            (None, _) => Some(format!("unexpected link type: {}", info.kind)),
            (_, 0) => Some("detached: its device is gone".to_string()),
            _ => None,
        };
        let xdp_mode = if hook == Hook::Xdp { xdp_mode_of_device(ifindex, ifname) } else { None };
        found.push(AttachmentStatus {
            hook,
            mechanism: Mechanism::Link,
            ifname: ifname.to_string(),
            ifindex,
            program: pinned_name(info.prog_id).unwrap_or_else(|| link.program_name()),
            prog_id: info.prog_id,
            detail: format!("id {}", info.id),
            xdp_mode,
            problem,
        });
    }
    found.sort_by(|a, b| (&a.ifname, a.hook).cmp(&(&b.ifname, b.hook)));
    st.attachments = found;
    if let Some(map) = &record_map {
        for rec in read_records(map, &pin_dir.join(NETLINK_RECORDS))?.into_values() {
            let problem = if rec.netns != netns {
                Some(format!("made in another network namespace (inode {})", rec.netns))
            } else {
                netlink_problem(nl.as_ref(), &rec)
            };
            st.attachments.push(AttachmentStatus {
                hook: rec.hook,
                mechanism: Mechanism::Netlink,
                ifname: rec.ifname.clone(),
                ifindex: rec.ifindex,
                program: rec.program.clone(),
                prog_id: rec.prog_id,
                detail: rec.describe(),
                xdp_mode: rec.xdp_mode(),
                problem,
            });
        }
    }

    let mut maps = BTreeMap::new();
    for (name, path) in sorted_entries(&pin_dir.join("maps"))? {
        let map = Map::from_pin(sys, &path)?;
        let kind = map.kind();
        let used = match kind {
            Some(
                MapKind::Hash
                | MapKind::LruHash
                | MapKind::LpmTrie
                | MapKind::PerCpuHash
                | MapKind::LruPerCpuHash
                | MapKind::SockHash,
            ) => Some(map.keys().try_fold(0u64, |n, k| k.map(|_| n + 1))?),
            _ => None,
        };
        st.maps.push(MapStatus {
            name: name.clone(),
            kind: kind.map_or_else(|| format!("type {}", map.map_type()), |k| k.name().to_string()),
            used,
            max_entries: map.max_entries(),
        });
        maps.insert(name, map);
    }

    if let Some(stats) = maps.get("pf_stats") {
        for r in prefilter::Reason::ALL {
            let count = per_cpu_sum(stats, r as u32)?;
            if count > 0 {
                st.counters.push(Counter {
                    scope: "prefilter".to_string(),
                    reason: r.name(),
                    drop: r.verdict() == prefilter::XDP_DROP,
                    count,
                });
            }
        }
    }
    if let Some(stats) = maps.get("ep_stats") {
        // Endpoint N's device, from its links or records.
        let device = |ep: u32| {
            let from = EpDirection::FromEndpoint.program_name(u16::try_from(ep).unwrap_or(u16::MAX));
            st.attachments.iter().find(|a| a.program == from).map(|a| a.ifname.clone())
        };
        let mut counters = Vec::new();
        for ep in 0..stats.max_entries() / policy::Reason::COUNT {
            for r in policy::Reason::ALL {
                let count = per_cpu_sum(stats, ep * policy::Reason::COUNT + r as u32)?;
                if count > 0 {
                    let scope = match device(ep) {
                        Some(dev) => format!("endpoint {ep} ({dev})"),
                        None => format!("endpoint {ep}"),
                    };
                    counters.push(Counter { scope, reason: r.name(), drop: !r.allows(), count });
                }
            }
        }
        st.counters.extend(counters);
    }
    if let Some(stats) = maps.get("lb_stats") {
        for r in crate::maps::lb::LbReason::ALL {
            let count = per_cpu_sum(stats, r as u32)?;
            if count > 0 {
                st.counters.push(Counter {
                    scope: "load balancer".to_string(),
                    reason: r.name(),
                    drop: r.verdict() == policy::TC_ACT_SHOT,
                    count,
                });
            }
        }
    }
    st.problems = consistency(&st, &maps);
    // The socket load balancer's cgroup links (`<pin>/socklb`).
    for (name, path) in sorted_entries(&pin_dir.join(super::socklb::SOCKLB_DIR))? {
        let (prog_id, detail, problem) = match Link::from_pin(sys, &path) {
            Ok(link) => match link.info() {
                Ok(i) => (i.prog_id, format!("link {} cgroup id {}", i.id, i.cgroup_id.unwrap_or(0)), None),
                Err(e) => (0, String::new(), Some(e.to_string())),
            },
            Err(e) => (0, String::new(), Some(e.to_string())),
        };
        st.sockets.push(SocketLinkStatus { program: name, prog_id, detail, problem });
    }
    Ok(st)
}

/// What in a node's pins disagrees with itself: a half-pinned node (programs without
/// their maps, a prefilter map missing, an endpoint with one of its two programs), links
/// that run a program that is not pinned, and a prefilter listing its tables do not enforce.
fn consistency(st: &Status, maps: &BTreeMap<String, Map>) -> Vec<String> {
    let mut problems = Vec::new();
    let programs: Vec<&str> = st.programs.iter().map(|p| p.name.as_str()).collect();
    if programs.is_empty() && !maps.is_empty() {
        problems.push(
            "maps are pinned but no program: a load cut short (run `sluice unload`, then `sluice load`)"
                .into(),
        );
    }
    if !programs.is_empty() {
        let defs =
            prefilter::map_defs(prefilter::Capacity { v4_l2: 1, v4_l3: 1, v6_bits: 1, v6_lpm: 1, cidrs: 1 });
        let missing: Vec<&str> = defs.iter().map(|d| d.name).filter(|n| !maps.contains_key(*n)).collect();
        if !missing.is_empty() {
            problems.push(format!("prefilter maps missing: {} (a load cut short?)", missing.join(", ")));
        }
        if !programs.contains(&crate::codegen::prefilter::NAME) {
            problems.push("the prefilter program is not pinned (a load cut short?)".into());
        }
        for p in &programs {
            let pair = if let Some(n) = p.strip_prefix("from_ep_") {
                format!("to_ep_{n}")
            } else if let Some(n) = p.strip_prefix("to_ep_") {
                format!("from_ep_{n}")
            } else {
                continue;
            };
            if !programs.contains(&pair.as_str()) {
                problems.push(format!("program {p} is pinned without {pair}"));
            }
        }
    }
    let pinned_ids: Vec<u32> = st.programs.iter().map(|p| p.info.id).collect();
    for a in st.attachments.iter().filter(|a| a.prog_id != 0 && !pinned_ids.contains(&a.prog_id)) {
        problems.push(format!(
            "{} on {} runs prog {}, which is not a pinned program of this node",
            a.hook.label(a.mechanism, a.xdp_mode),
            a.ifname,
            a.prog_id
        ));
    }
    if defs_present(maps) {
        match load::prefilter_problems_of(|n| maps.get(n).map(|m| m as &dyn load::MapView)) {
            Ok(found) => problems.extend(found.into_iter().map(|p| format!("prefilter: {p}"))),
            Err(e) => problems.push(format!("prefilter: {e}")),
        }
    }
    problems
}

fn defs_present(maps: &BTreeMap<String, Map>) -> bool {
    let defs =
        prefilter::map_defs(prefilter::Capacity { v4_l2: 1, v4_l3: 1, v6_bits: 1, v6_lpm: 1, cidrs: 1 });
    defs.iter().all(|d| maps.contains_key(d.name))
}

/// What is wrong with a netlink attachment made in this namespace, if anything.
fn netlink_problem(nl: Option<&Netlink>, rec: &NetlinkRecord) -> Option<String> {
    let nl = nl?;
    match (rec.filter(), rec.hook.tc_direction()) {
        (Some(filter), Some(dir)) => match nl.filters(rec.ifindex, dir) {
            Ok(filters) => match filters.iter().find(|f| f.filter == filter) {
                Some(f) if f.prog_id == Some(rec.prog_id) => None,
                Some(f) => Some(format!("the filter runs prog {} now", f.prog_id.unwrap_or(0))),
                None => Some("the filter is gone".to_string()),
            },
            Err(e) => Some(e.to_string()),
        },
        _ => match nl.xdp_info(rec.ifindex) {
            Ok(info) if info.prog_id_in(xdp_mode_of(rec.xdp_flags)) == Some(rec.prog_id) => None,
            Ok(_) => Some("the program is no longer on the XDP hook".to_string()),
            Err(e) => Some(e.to_string()),
        },
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node pinned at {}", self.pin_dir.display())?;
        writeln!(f, "\nprograms ({}):", self.programs.len())?;
        writeln!(
            f,
            "  {:<14} {:>6} {:>14} {:>12} {:>12}",
            "name", "id", "verified insns", "xlated", "jited"
        )?;
        for p in &self.programs {
            writeln!(
                f,
                "  {:<14} {:>6} {:>14} {:>10} B {:>10} B",
                p.name, p.info.id, p.info.verified_insns, p.info.xlated_prog_len, p.info.jited_prog_len
            )?;
        }
        writeln!(f, "\nattachments ({}):", self.attachments.len())?;
        for a in &self.attachments {
            write!(
                f,
                "  {:<12} {:<16} {:<14} prog {:<6} {:<8} {}",
                a.hook.label(a.mechanism, a.xdp_mode),
                format!("{} ({})", a.ifname, a.ifindex),
                a.program,
                a.prog_id,
                a.mechanism,
                a.detail
            )?;
            match &a.problem {
                Some(p) => writeln!(f, "  !! {p}")?,
                None => writeln!(f)?,
            }
        }
        if !self.sockets.is_empty() {
            writeln!(f, "\nsocket load balancer ({} cgroup links):", self.sockets.len())?;
            for l in &self.sockets {
                write!(f, "  {:<18} prog {:<6} {}", l.program, l.prog_id, l.detail)?;
                match &l.problem {
                    Some(p) => writeln!(f, "  !! {p}")?,
                    None => writeln!(f)?,
                }
            }
        }
        writeln!(f, "\nmaps ({}):", self.maps.len())?;
        for m in &self.maps {
            let fill = match m.used {
                Some(used) => format!(
                    "{used} / {} in use ({:.1}%)",
                    m.max_entries,
                    used as f64 * 100.0 / f64::from(m.max_entries.max(1))
                ),
                None if m.kind == "ringbuf" => format!("{} bytes", m.max_entries),
                None => format!("{} slots", m.max_entries),
            };
            writeln!(f, "  {:<14} {:<15} {fill}", m.name, m.kind)?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "\ninconsistent ({} problems):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  !! {p}")?;
            }
        }
        writeln!(f, "\ncounters (nonzero, summed over CPUs):")?;
        if self.counters.is_empty() {
            writeln!(f, "  none")?;
        }
        for c in &self.counters {
            writeln!(
                f,
                "  {:<22} {:<20} {:<4} {}",
                c.scope,
                c.reason,
                if c.drop { "drop" } else { "pass" },
                c.count
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// down.

/// What [`down`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    pub pin_dir: PathBuf,
    /// One line per thing taken away, in order.
    pub removed: Vec<String>,
    /// What could not be done cleanly but did not stop the rest.
    pub warnings: Vec<String>,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed.is_empty() && self.warnings.is_empty() {
            return write!(f, "nothing of sluice's at {}", self.pin_dir.display());
        }
        for r in &self.removed {
            writeln!(f, "{r}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "{}: down", self.pin_dir.display())
    }
}

/// `sluice down`: detach and unpin everything `attach` made, then everything `load` pinned.
pub fn down(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<DownReport> {
    let mut report = DownReport { pin_dir: pin_dir.to_path_buf(), ..DownReport::default() };
    // Only ours: refuse, before changing anything, a pin dir that holds anything sluice
    // does not make there.
    if !super::ours::survey(&**sys, pin_dir)? {
        return Ok(report);
    }
    let owned_devices = super::ours::devices(pin_dir)?;
    let owned_routes = super::ours::routes(pin_dir)?;
    let records_path = pin_dir.join(NETLINK_RECORDS);
    // Refuse before changing anything if the netlink attachments belong to another namespace.
    let record_map = open_records(sys, pin_dir)?;
    let records = match &record_map {
        Some(map) => read_records(map, &records_path)?,
        None => BTreeMap::new(),
    };
    let netns = current_netns()?;
    if let Some(r) = records.values().find(|r| r.netns != netns) {
        return Err(WireError::OtherNetns { path: records_path, recorded: r.netns, current: netns });
    }
    let recorded_netns = owned_devices.iter().map(|d| d.netns).chain(owned_routes.iter().map(|r| r.netns));
    if let Some(other) = recorded_netns.into_iter().find(|n| *n != netns) {
        return Err(WireError::OtherNetns {
            path: pin_dir.join(super::ours::OWNED_DIR),
            recorded: other,
            current: netns,
        });
    }

    // 1. Links: detach (the hook is free at once), then unpin; the socket load balancer's
    //    cgroup links first.
    match super::socklb::remove(sys, pin_dir) {
        Ok(0) => {}
        Ok(n) => report.removed.push(format!("detached {n} socket load-balancer cgroup links")),
        Err(e) => report.warnings.push(format!("socket load balancer: {e}")),
    }
    let links_dir = pin_dir.join(LINKS_DIR);
    for (name, path) in sorted_entries(&links_dir)? {
        match Link::from_pin(sys, &path) {
            Ok(link) => {
                let what = format!(
                    "detached {} link {} ({name}, prog {})",
                    link.kind(),
                    link.id(),
                    link.info().map_or(0, |i| i.prog_id)
                );
                match link.detach() {
                    Ok(()) => report.removed.push(what),
                    Err(e) => {
                        // ENOLINK: the device went first and took the hook with it.
                        if e.errno() != Some(Errno(libc::ENOLINK)) {
                            report.warnings.push(format!("{name}: {e}"));
                        }
                        sys::unpin(&path)?;
                        report.removed.push(format!("unpinned link {name}"));
                    }
                }
            }
            Err(e) => {
                report.warnings.push(format!("{name}: {e}; unpinned"));
                sys::unpin(&path)?;
            }
        }
    }
    if links_dir.exists() {
        std::fs::remove_dir(&links_dir).map_err(|source| WireError::Io {
            op: "rmdir",
            path: links_dir.clone(),
            source,
        })?;
    }

    // 2. Netlink attachments.
    if !records.is_empty() {
        let nl = Netlink::open().map_err(nl_err("opening rtnetlink"))?;
        for rec in records.values() {
            remove_netlink(sys, &nl, rec, &mut report)?;
        }
        // A clsact we created goes once nothing is left on it.
        let clsacts: BTreeMap<u32, &str> =
            records.values().filter(|r| r.created_clsact).map(|r| (r.ifindex, r.ifname.as_str())).collect();
        for (ifindex, ifname) in clsacts {
            let empty = [TcDirection::Ingress, TcDirection::Egress]
                .iter()
                .all(|d| nl.filters(ifindex, *d).is_ok_and(|f| f.is_empty()));
            if empty {
                match nl.delete_clsact(ifindex) {
                    Ok(()) => report.removed.push(format!("deleted the clsact qdisc of {ifname}")),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => report.warnings.push(format!("clsact of {ifname}: {e}")),
                }
            } else {
                report.warnings.push(format!("kept the clsact qdisc of {ifname}: other filters use it"));
            }
        }
    }
    if record_map.is_some() {
        drop(record_map);
        sys::unpin(&records_path)?;
        report.removed.push(format!("unpinned {}", records_path.display()));
    }

    // 3. The routes and devices forwarding recorded as its own, and nothing else.
    if !owned_devices.is_empty() || !owned_routes.is_empty() {
        let nl = Netlink::open().map_err(nl_err("opening rtnetlink"))?;
        for route in &owned_routes {
            let r = crate::netlink::Route::new(crate::model::Cidr::host(route.addr)).dev(route.ifindex);
            match nl.delete_route(&r) {
                Ok(()) => report.removed.push(format!("deleted the host route of {}", route.addr)),
                Err(e) if e.is_not_found() => {}
                Err(e) => report.warnings.push(format!("route {}: {e}", route.addr)),
            }
            super::ours::forget_route(pin_dir, route)?;
        }
        for dev in &owned_devices {
            match nl.link_by_name(&dev.name) {
                Ok(l) if l.ifindex == dev.ifindex => match nl.delete_link(l.ifindex) {
                    Ok(()) => report.removed.push(format!("deleted device {}", dev.name)),
                    Err(e) => report.warnings.push(format!("device {}: {e}", dev.name)),
                },
                Ok(l) => report.warnings.push(format!(
                    "kept device {}: it is ifindex {} now, not the {} sluice created",
                    dev.name, l.ifindex, dev.ifindex
                )),
                Err(e) if e.is_not_found() => {}
                Err(e) => report.warnings.push(format!("device {}: {e}", dev.name)),
            }
            super::ours::forget_device(pin_dir, dev)?;
        }
    }
    super::ours::remove_record_dirs(pin_dir)?;

    // 4. Programs and maps.
    match load::unload(sys, pin_dir) {
        Ok(pins) => report.removed.push(format!("unpinned {} programs and maps", pins.len())),
        Err(LoadError::NotLoaded(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(WireError::Io { op: "rmdir", path: pin_dir.to_path_buf(), source }),
    }
    Ok(report)
}

fn remove_netlink(
    sys: &Arc<dyn Syscall>,
    nl: &Netlink,
    rec: &NetlinkRecord,
    report: &mut DownReport,
) -> Result<()> {
    match rec.filter() {
        Some(filter) => match nl.delete_filter(&filter) {
            Ok(()) => report.removed.push(format!(
                "deleted {} of {} ({}, prog {})",
                rec.describe(),
                rec.ifname,
                rec.program,
                rec.prog_id
            )),
            Err(e) if e.is_not_found() => {
                report.warnings.push(format!("{} of {}: already gone", rec.describe(), rec.ifname));
            }
            Err(e) => return Err(nl_err(format!("deleting {filter}"))(e)),
        },
        None => {
            // Only our program: whatever replaced it since is not ours to remove.
            let mode = xdp_mode_of(rec.xdp_flags);
            match Program::from_id(sys, rec.prog_id) {
                Ok(prog) => match nl.xdp_detach(rec.ifindex, Some(prog.fd()), mode) {
                    Ok(()) => report
                        .removed
                        .push(format!("detached XDP ({mode}) of {} (prog {})", rec.ifname, rec.prog_id)),
                    Err(e) => report.warnings.push(format!("XDP of {}: {e}", rec.ifname)),
                },
                Err(_) => {
                    report.warnings.push(format!("XDP of {}: prog {} is gone", rec.ifname, rec.prog_id))
                }
            }
        }
    }
    Ok(())
}

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
