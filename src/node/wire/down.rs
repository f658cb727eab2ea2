//! `sluice down`: detach, unpin and remove what this node made.

use super::*;

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
    if !crate::node::ours::survey(&**sys, pin_dir)? {
        return Ok(report);
    }
    let owned_devices = crate::node::ours::devices(pin_dir)?;
    let owned_routes = crate::node::ours::routes(pin_dir)?;
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
            path: pin_dir.join(crate::node::ours::OWNED_DIR),
            recorded: other,
            current: netns,
        });
    }

    // 1. Links: detach (the hook is free at once), then unpin; the socket load balancer's
    //    cgroup links first.
    match crate::node::socklayer::remove(sys, pin_dir) {
        Ok(0) => {}
        Ok(n) => report.removed.push(format!("detached {n} socket-layer links")),
        Err(e) => report.warnings.push(format!("socket layer: {e}")),
    }
    if crate::node::overlay_id::remove(sys, pin_dir) {
        report.removed.push("detached the from-overlay link".to_owned());
    }
    match crate::node::socklb::remove(sys, pin_dir) {
        Ok(0) => {}
        Ok(n) => report.removed.push(format!("detached {n} socket load-balancer cgroup links")),
        Err(e) => report.warnings.push(format!("socket load balancer: {e}")),
    }
    let links_dir = pin_dir.join(LINKS_DIR);
    // Each tcx link released waits for a grace period, as each one created does.
    let _expedite = super::grace::Expedite::begin(super::grace::GracePeriods::default());
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
            crate::node::ours::forget_route(pin_dir, route)?;
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
            crate::node::ours::forget_device(pin_dir, dev)?;
        }
    }
    crate::node::ours::remove_record_dirs(pin_dir)?;

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

pub(super) fn remove_netlink(
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

/// Remove the netlink attachments (`cls_bpf` filters, `IFLA_XDP`) recorded under `pin_dir`
/// whose hook no wanted hook uses any more (a removed endpoint's, when the node is attached
/// through netlink), with their records; the lines say what was removed.
pub fn remove_unwanted_netlink(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    wants: &[Want],
) -> Result<Vec<String>> {
    let Some(map) = open_records(sys, pin_dir)? else { return Ok(Vec::new()) };
    let records = read_records(&map, &pin_dir.join(NETLINK_RECORDS))?;
    let netns = current_netns()?;
    let stale: Vec<&NetlinkRecord> = records
        .values()
        .filter(|r| r.netns == netns && !wants.iter().any(|w| w.ifname == r.ifname && w.hook == r.hook))
        .collect();
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let nl = Netlink::open().map_err(nl_err("opening rtnetlink"))?;
    let mut report = DownReport { pin_dir: pin_dir.to_path_buf(), ..DownReport::default() };
    for rec in stale {
        remove_netlink(sys, &nl, rec, &mut report)?;
        map.delete(&rec.key()).map_err(WireError::Sys)?;
    }
    report.removed.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
    Ok(report.removed)
}
