//! `sluice attach`: the tcx query, the plan of hooks, and attaching with undo.

use super::*;

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
    /// How the grace period each new tcx link waits for is waited for ([`super::grace`]).
    pub grace_periods: super::grace::GracePeriods,
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
pub(super) type Undo = Box<dyn FnOnce()>;

/// The state one [`attach`] call carries from hook to hook.
pub(super) struct Attacher<'a> {
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
    grace_periods: super::grace::GracePeriods,
    /// Held from the first tcx link this call creates until the call (and its undo) ends.
    expedite: Option<super::grace::Expedite>,
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
        grace_periods: opts.grace_periods,
        expedite: None,
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
            if self.expedite.is_none() {
                self.expedite = Some(super::grace::Expedite::begin(self.grace_periods));
            }
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
