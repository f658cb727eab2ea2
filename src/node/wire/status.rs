//! `sluice status`: what runs where, map fill, counters and consistency problems, from the
//! pins alone.

use super::*;
use crate::maps::names;

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

pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
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
pub(super) fn per_cpu_sum(map: &Map, key: u32) -> Result<u64> {
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

    if let Some(stats) = maps.get(names::PF_STATS) {
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
    if let Some(stats) = maps.get(names::EP_STATS) {
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
    if let Some(stats) = maps.get(names::LB_STATS) {
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
    if let Some(stats) = maps.get(crate::maps::names::SOCK_STATS) {
        for c in crate::maps::sock::SockCounter::ALL {
            let count = per_cpu_sum(stats, c as u32)?;
            if count > 0 {
                st.counters.push(Counter {
                    scope: "socket layer".to_string(),
                    reason: c.name(),
                    drop: false,
                    count,
                });
            }
        }
    }
    st.problems = consistency(&st, &maps);
    // The socket load balancer's cgroup links (`<pin>/socklb`), then the socket layer's
    // (`<pin>/socklayer`).
    let socket_links = sorted_entries(&pin_dir.join(crate::node::socklb::SOCKLB_DIR))?
        .into_iter()
        .chain(sorted_entries(&pin_dir.join(crate::node::socklayer::SOCKLAYER_DIR))?);
    for (name, path) in socket_links {
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
pub(super) fn consistency(st: &Status, maps: &BTreeMap<String, Map>) -> Vec<String> {
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
    // Shared endpoint programs: each pinned one must be in its `ep_tail` slot, or every
    // stub tail-calling through that slot drops.
    for dir in
        [crate::codegen::endpoint::Direction::FromEndpoint, crate::codegen::endpoint::Direction::ToEndpoint]
    {
        let Some(shared) = st.programs.iter().find(|p| p.name == dir.shared_name()) else { continue };
        let slot = maps
            .get(crate::maps::names::EP_TAIL)
            .and_then(|m| m.lookup(&dir.tail_index().to_le_bytes()).ok().flatten())
            .and_then(|v| v.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        if slot != Some(shared.info.id) {
            problems.push(format!(
                "ep_tail slot {} holds {} instead of {} (prog {}): its endpoints' hooks drop every packet",
                dir.tail_index(),
                slot.map_or("nothing".to_string(), |id| format!("prog {id}")),
                shared.name,
                shared.info.id
            ));
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

pub(super) fn defs_present(maps: &BTreeMap<String, Map>) -> bool {
    let defs =
        prefilter::map_defs(prefilter::Capacity { v4_l2: 1, v4_l3: 1, v6_bits: 1, v6_lpm: 1, cidrs: 1 });
    defs.iter().all(|d| maps.contains_key(d.name))
}

/// What is wrong with a netlink attachment made in this namespace, if anything.
pub(super) fn netlink_problem(nl: Option<&Netlink>, rec: &NetlinkRecord) -> Option<String> {
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
