//! Netlink attachment records: what `cls_bpf` filters and `IFLA_XDP` programs this node
//! attached, kept in a small pinned hash map (bpffs holds no regular files).

use super::*;

// ---------------------------------------------------------------------------------------
// Netlink attachment records.

crate::maps::layout! {
    /// Layout of one record in the pinned `netlink_attachments` hash map (little-endian):
    /// the key is `(ifindex, hook)` as two `u32` ([`record::KEY_SIZE`]).
    pub struct RecordValue in record {
        /// 0 ingress, 1 egress, 2 XDP.
        hook: u32 => HOOK,
        ifindex: u32 => IFINDEX,
        /// The attached program's id.
        prog_id: u32 => PROG_ID,
        /// The `cls_bpf` filter's priority.
        prio: u32 => PRIO,
        /// The `cls_bpf` filter's handle.
        handle: u32 => HANDLE,
        /// The `IFLA_XDP` mode flags.
        xdp_flags: u32 => XDP_FLAGS,
        /// 1 when sluice created the `clsact` qdisc (and so removes it).
        created_clsact: u32 => CREATED_CLSACT,
        pad: u32,
        /// Inode of the network namespace the attachment was made in.
        netns: u64 => NETNS,
        /// NUL-padded.
        ifname: [u8; 16] => IFNAME,
        /// NUL-padded.
        program: [u8; 32] => PROGRAM,
    }
    pub const KEY_SIZE: usize = 8;
    pub const IFNAME_LEN: usize = 16;
    pub const PROGRAM_LEN: usize = 32;
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

pub(super) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(super) fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(len - 1);
    buf[at..at + n].copy_from_slice(&bytes[..n]);
}

pub(super) fn get_str(buf: &[u8], at: usize, len: usize) -> String {
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

    pub(super) fn describe(&self) -> String {
        match self.filter() {
            Some(f) => format!("cls_bpf prio {} handle {:#x}", f.prio, f.handle),
            None => "IFLA_XDP".to_string(),
        }
    }
}

pub(super) fn record_key(ifindex: u32, hook: Hook) -> [u8; record::KEY_SIZE] {
    let mut k = [0u8; record::KEY_SIZE];
    put_u32(&mut k, 0, ifindex);
    put_u32(&mut k, 4, hook.code());
    k
}

pub(super) fn xdp_mode_of(flags: u32) -> XdpMode {
    match flags & link_xdp::MODES {
        link_xdp::SKB_MODE => XdpMode::Skb,
        link_xdp::DRV_MODE => XdpMode::Drv,
        link_xdp::HW_MODE => XdpMode::Hw,
        _ => XdpMode::Auto,
    }
}

pub(super) fn records_spec() -> MapSpec {
    MapSpec::new("sl_netlink", MapKind::Hash, record::KEY_SIZE as u32, record::SIZE as u32, RECORD_CAPACITY)
        .with_flags(crate::maps::F_NO_PREALLOC)
}

/// The record map, if one is pinned.
pub(super) fn open_records(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<Option<Map>> {
    let path = pin_dir.join(NETLINK_RECORDS);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Map::from_pin_checked(sys, &path, &records_spec())?))
}

/// Every record in the map, by key.
pub(super) fn read_records(map: &Map, path: &Path) -> Result<BTreeMap<[u8; 8], NetlinkRecord>> {
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
