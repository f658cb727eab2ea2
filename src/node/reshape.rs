//! Reshaping a pinned node whose code shape changed: endpoints added or removed, so the
//! program set differs from what is pinned (DESIGN invariant 6, the "swap" half).
//!
//! Contract:
//! - Input: the new config, its plan, the pin dir of a loaded node and, when the node is
//!   attached, the attach options. Everything acts in the calling thread's network namespace.
//! - Maps are kept: each map the plan uses is opened from its pin (layout checked) so its
//!   contents, conntrack included, survive; a map the pinned node lacks (its first
//!   endpoint) is created and gets the plan's initial contents before anything else. A map too small for the new node (more endpoints than `ep_config`
//!   or `ep_stats` has room for; ipcache, policy or policy table full) would have to change
//!   layout: that is refused with an error naming the map, and nothing is applied.
//! - A program is loaded (the kernel verifier runs) only for a name that is not pinned; a
//!   pinned name is reused: a program's code is a function of its name (the endpoint number
//!   is baked in) for a given sluice build. A pinned program from another build is not
//!   detected (the kernel's tag is a SHA of the instructions, which we do not compute).
//! - Phases. (1) Check and prepare, touching nothing: open or create maps, compute the map
//!   writes and check they fit, load the new programs, look up every interface a hook
//!   needs. A config, capacity, verifier or missing-interface error ends here and the node
//!   is as it was (invariant 8). (2) Write the maps and pin the new maps and programs.
//!   (3) Attach: a hook whose program changed keeps its link and gets the new program by
//!   `BPF_LINK_UPDATE` (its pin is renamed from `<old>@<ifname>` to `<new>@<ifname>` first,
//!   so [`wire::attach`] swaps it in place: the link id stays); new endpoints get new links;
//!   hooks already right are left alone. (4) Detach and unpin links no wanted hook uses (a
//!   removed endpoint's), then unpin programs the plan no longer has.
//! - A failure in (2) or (3), which only the kernel can cause, undoes what it can: attach
//!   undoes its own hooks, renamed link pins get their names back, new program and map
//!   pins are removed. Map writes are not undone: the error says so
//!   ([`ReshapeError::Attach`]).
//! - Endpoint numbers are stable ([`super::endpoint_numbers`]): the callers plan with the
//!   numbers the pinned links show, so an endpoint that stays keeps its number, its
//!   programs, its links and its `ep_config` entry; a new endpoint takes the lowest free
//!   number. No running endpoint's program ever reads another endpoint's entries. (A node
//!   attached through netlink only has no link pins to read the numbers from: there, adding
//!   an endpoint before another in name order still renumbers it, as before.)
//! - Netlink attachments (kernels without tcx, or `--attach tc`) of removed endpoints are
//!   removed in (4) with their records, as their links are.

use super::load::{apply_writes, load_program, open_pinned_map, sys_spec, LoadError};
use super::update::{count_writes, map_writes, Update};
use super::wire::{self, AttachOptions, AttachReport, Missing, WireError, LINKS_DIR};
use super::Plan;
use crate::attach::{AttachError, Interface, Link, LinkKind};
use crate::maps::policy::Reason;
use crate::maps::writes::MapWrites;
use crate::model::NodeConfig;
use crate::sys::{self, Errno, Map, Program, SysError, Syscall};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a reshape applied nothing, or stopped part way.
#[derive(Debug, Error)]
pub enum ReshapeError {
    /// Config, layout, capacity or verifier: found before anything was written.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Missing interfaces and the like: found before anything was written.
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(
        "map `{map}` has room for {capacity} entries, the new node needs {needed}: its layout would have to \
         change; nothing applied (run `sluice down`, then load the node again)"
    )]
    TooSmall { map: &'static str, capacity: u32, needed: u64 },
    /// The kernel failed after the maps were written; see the contract for what was undone.
    #[error("{stage}: {source}; undone: {undone}; the map writes of the new config stay in place")]
    Attach {
        stage: &'static str,
        #[source]
        source: Box<WireError>,
        undone: String,
    },
}

/// How long each phase took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Opening or creating maps, computing and checking the writes.
    pub prepare: Duration,
    /// Loading the new programs (the kernel verifier).
    pub load: Duration,
    /// Writing the maps and pinning.
    pub write: Duration,
    /// Attaching, and removing stale links and pins.
    pub attach: Duration,
}

/// What a reshape did.
#[derive(Debug, Default)]
pub struct Reshape {
    /// Programs loaded and pinned (names new to the node).
    pub loaded: Vec<String>,
    /// Programs reused from their pins.
    pub kept: Vec<String>,
    /// Program pins removed (no longer in the plan).
    pub removed: Vec<String>,
    /// Maps created (the pinned node had none of that name).
    pub maps_created: Vec<String>,
    /// Map writes.
    pub update: Update,
    /// Link pins renamed, `(from, to)`, before their programs were swapped.
    pub renamed: Vec<(String, String)>,
    /// What attach did, if the node is attached.
    pub attach: Option<AttachReport>,
    /// Link pins detached and removed.
    pub links_removed: Vec<String>,
    pub timings: Timings,
}

impl fmt::Display for Reshape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        write!(
            f,
            "programs loaded: {}; removed: {}; kept: {}; {} map writes",
            list(&self.loaded),
            list(&self.removed),
            self.kept.len(),
            self.update.total()
        )?;
        if !self.maps_created.is_empty() {
            write!(f, "; maps created: {}", self.maps_created.join(", "))?;
        }
        if let Some(a) = &self.attach {
            let count =
                |pred: fn(&wire::Action) -> bool| a.attached.iter().filter(|h| pred(&h.action)).count();
            write!(
                f,
                "; hooks: {} attached, {} swapped in place, {} unchanged",
                count(|a| matches!(a, wire::Action::Created)),
                count(|a| matches!(a, wire::Action::Swapped { .. })),
                count(|a| matches!(a, wire::Action::Unchanged))
            )?;
        }
        if !self.links_removed.is_empty() {
            write!(f, "; links removed: {}", self.links_removed.join(", "))?;
        }
        let t = &self.timings;
        write!(
            f,
            " (prepare {} ms, load {} ms, write {} ms, attach {} ms)",
            t.prepare.as_millis(),
            t.load.as_millis(),
            t.write.as_millis(),
            t.attach.as_millis()
        )
    }
}

/// Names of the entries of a pin subdirectory (empty when it does not exist).
fn pin_names(dir: &Path) -> Result<BTreeSet<String>, ReshapeError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            Ok(entries.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(source) => {
            Err(LoadError::Sys(SysError::Io { op: "read_dir", path: dir.to_path_buf(), source }).into())
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), SysError> {
    std::fs::rename(from, to).map_err(|source| SysError::Io {
        op: "rename",
        path: from.to_path_buf(),
        source,
    })
}

/// Maps of the plan: pinned ones opened (layout checked), missing ones created (unpinned).
fn open_maps(
    sys: &Arc<dyn Syscall>,
    plan: &Plan,
    dir: &Path,
    out: &mut Reshape,
) -> Result<BTreeMap<&'static str, Map>, ReshapeError> {
    let mut maps = BTreeMap::new();
    for def in plan.objects.iter().flat_map(|o| &o.maps) {
        if maps.contains_key(def.name) {
            continue;
        }
        let map = if dir.join("maps").join(def.name).exists() {
            open_pinned_map(sys, dir, def)?
        } else {
            out.maps_created.push(def.name.to_string());
            Map::create(sys, &sys_spec(def)).map_err(LoadError::from)?
        };
        maps.insert(def.name, map);
    }
    Ok(maps)
}

/// The maps indexed by endpoint number must have a slot for the highest one.
fn check_endpoint_room(cfg: &NodeConfig, maps: &BTreeMap<&'static str, Map>) -> Result<(), ReshapeError> {
    let highest = u64::try_from(cfg.endpoints.len()).unwrap_or(u64::MAX);
    let needs = [
        (crate::maps::names::EP_CONFIG, highest + 1),
        (crate::maps::names::EP_STATS, (highest + 1) * u64::from(Reason::COUNT)),
    ];
    for (name, needed) in needs {
        if let Some(map) = maps.get(name) {
            if u64::from(map.max_entries()) < needed {
                return Err(ReshapeError::TooSmall { map: name, capacity: map.max_entries(), needed });
            }
        }
    }
    Ok(())
}

/// Every interface the wanted hooks name, or the list of missing ones.
fn check_interfaces(wants: &[wire::Want]) -> Result<(), ReshapeError> {
    let mut missing = Vec::new();
    for w in wants {
        if let Err(e) = Interface::lookup(&w.ifname) {
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
    if missing.is_empty() {
        Ok(())
    } else {
        Err(WireError::MissingInterfaces(missing).into())
    }
}

/// The XDP device the prefilter is linked to, from its link pin `prefilter@<dev>`.
fn pinned_xdp_device(links: &BTreeSet<String>) -> Option<String> {
    let prefilter = crate::codegen::prefilter::NAME;
    links.iter().find_map(|name| match wire::parse_link_pin_name(name) {
        Some((prog, dev)) if prog == prefilter => Some(dev.to_string()),
        _ => None,
    })
}

/// For each wanted hook without its own link pin, an existing link pin on the same device
/// and hook that no wanted hook names: the hook's previous program (a renumbered endpoint).
fn renames(
    sys: &Arc<dyn Syscall>,
    links_dir: &Path,
    links: &BTreeSet<String>,
    wants: &[wire::Want],
) -> Vec<(String, String)> {
    let wanted: BTreeSet<String> = wants.iter().map(wire::Want::pin_name).collect();
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    for w in wants {
        let target = w.pin_name();
        if links.contains(&target) {
            continue;
        }
        let found = links.iter().find(|name| {
            !wanted.contains(*name)
                && !taken.contains(*name)
                && wire::parse_link_pin_name(name).is_some_and(|(_, ifname)| ifname == w.ifname)
                && Link::from_pin(sys, &links_dir.join(name))
                    .and_then(|l| l.info())
                    .is_ok_and(|info| info.kind == link_kind(w.hook))
        });
        if let Some(name) = found {
            taken.insert(name.clone());
            out.push((name.clone(), target));
        }
    }
    out
}

/// The kind of link a hook is held by.
fn link_kind(hook: wire::Hook) -> LinkKind {
    match hook {
        wire::Hook::Ingress => LinkKind::TcxIngress,
        wire::Hook::Egress => LinkKind::TcxEgress,
        wire::Hook::Xdp => LinkKind::Xdp,
    }
}

/// Detach and unpin the link pinned at `path`; a link whose device is gone only unpins.
fn remove_link(sys: &Arc<dyn Syscall>, path: &Path) -> Result<(), WireError> {
    match Link::from_pin(sys, path) {
        Ok(link) => match link.detach() {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(Errno(libc::ENOLINK)) => Ok(sys::unpin(path)?),
            Err(e) => Err(e.into()),
        },
        Err(_) => Ok(sys::unpin(path)?),
    }
}

/// Bring the node pinned under `dir` to `plan` (see the module contract). With `attach`
/// given, the node's hooks follow; without, only programs and maps change.
pub fn reshape(
    sys: &Arc<dyn Syscall>,
    cfg: &NodeConfig,
    plan: &Plan,
    dir: &Path,
    attach: Option<&AttachOptions>,
) -> Result<Reshape, ReshapeError> {
    let mut out = Reshape::default();
    let programs_dir = dir.join("programs");
    let maps_dir = dir.join("maps");
    let links_dir = dir.join(LINKS_DIR);
    if !programs_dir.is_dir() {
        return Err(LoadError::NotLoaded(dir.to_path_buf()).into());
    }

    // (1) Check and prepare; nothing is written.
    let t = Instant::now();
    let pinned = pin_names(&programs_dir)?;
    let maps = open_maps(sys, plan, dir, &mut out)?;
    if !cfg.endpoints.is_empty() {
        check_endpoint_room(cfg, &maps)?;
    }
    // A created map gets the plan's initial contents now: nothing uses it yet, and maps the
    // update path does not know (nor diff) start out right.
    let created: BTreeSet<&str> = out.maps_created.iter().map(String::as_str).collect();
    let initial: Vec<MapWrites> =
        plan.objects.iter().flat_map(|o| &o.writes).filter(|w| created.contains(w.map)).cloned().collect();
    apply_writes(&maps, &initial)?;
    let live = map_writes(cfg, &maps)?;
    out.timings.prepare = t.elapsed();

    let t = Instant::now();
    let mut fresh: Vec<(String, Program)> = Vec::new();
    for obj in &plan.objects {
        if pinned.contains(&obj.name) {
            out.kept.push(obj.name.clone());
        } else {
            fresh.push((obj.name.clone(), load_program(sys, obj, &maps)?));
        }
    }
    out.timings.load = t.elapsed();

    let links = pin_names(&links_dir)?;
    let attach_opts = attach.map(|opts| {
        let mut opts = opts.clone();
        if opts.xdp_device.is_none() {
            opts.xdp_device = pinned_xdp_device(&links);
        }
        opts
    });
    let wants = match &attach_opts {
        Some(opts) => wire::wanted(cfg, opts.xdp_device.as_deref()),
        None => Vec::new(),
    };
    check_interfaces(&wants)?;

    // (2) Write the maps, pin what is new.
    let t = Instant::now();
    let writes = live.apply(&maps)?;
    out.update = count_writes(&writes);
    let mut pinned_now: Vec<PathBuf> = Vec::new();
    let pinning = (|| -> Result<(), SysError> {
        for name in &out.maps_created {
            let path = maps_dir.join(name);
            maps[name.as_str()].pin(&path)?;
            pinned_now.push(path);
        }
        for (name, prog) in &fresh {
            let path = programs_dir.join(name);
            prog.pin(&path)?;
            pinned_now.push(path);
        }
        Ok(())
    })();
    let unpin_new = |pins: &[PathBuf]| {
        let mut failed = Vec::new();
        for p in pins.iter().rev() {
            if sys::unpin(p).is_err() {
                failed.push(p.display().to_string());
            }
        }
        if failed.is_empty() {
            format!("{} new pins removed", pins.len())
        } else {
            format!("new pins removed except {}", failed.join(", "))
        }
    };
    if let Err(e) = pinning {
        let undone = unpin_new(&pinned_now);
        return Err(ReshapeError::Attach {
            stage: "pinning",
            source: Box::new(LoadError::Sys(e).into()),
            undone,
        });
    }
    // A freshly loaded shared endpoint program goes into its slot before any hook that
    // tail-calls through it is attached (a kept one is in its slot already).
    let fresh_program = |name: &str| fresh.iter().find(|(n, _)| n == name).map(|(_, p)| p);
    if let Err(e) = super::load::fill_tail_slots(&maps, fresh_program, &plan.objects) {
        let undone = unpin_new(&pinned_now);
        return Err(ReshapeError::Attach { stage: "filling ep_tail", source: Box::new(e.into()), undone });
    }
    out.loaded = fresh.iter().map(|(n, _)| n.clone()).collect();
    out.timings.write = t.elapsed();

    // (3) Attach.
    let t = Instant::now();
    if let Some(opts) = &attach_opts {
        for (from, to) in renames(sys, &links_dir, &links, &wants) {
            if let Err(e) = rename(&links_dir.join(&from), &links_dir.join(&to)) {
                let undone = undo_renames(&links_dir, &out.renamed) + "; " + &unpin_new(&pinned_now);
                return Err(ReshapeError::Attach {
                    stage: "renaming link pins",
                    source: Box::new(LoadError::Sys(e).into()),
                    undone,
                });
            }
            out.renamed.push((from, to));
        }
        match wire::attach(sys, cfg, dir, opts) {
            Ok(report) => out.attach = Some(report),
            Err(e) => {
                let undone = format!(
                    "attach undid its own changes; {}; {}",
                    undo_renames(&links_dir, &out.renamed),
                    unpin_new(&pinned_now)
                );
                return Err(ReshapeError::Attach { stage: "attaching", source: Box::new(e), undone });
            }
        }

        // (4) Links no wanted hook uses.
        let wanted: BTreeSet<String> = wants.iter().map(wire::Want::pin_name).collect();
        for name in pin_names(&links_dir)? {
            if !wanted.contains(&name) {
                remove_link(sys, &links_dir.join(&name)).map_err(|e| ReshapeError::Attach {
                    stage: "removing a stale link",
                    source: Box::new(e),
                    undone: "nothing (the new hooks are attached)".into(),
                })?;
                out.links_removed.push(name);
            }
        }
        // A node attached through netlink: the removed endpoints' filters, with their records.
        let removed = wire::remove_unwanted_netlink(sys, dir, &wants).map_err(|e| ReshapeError::Attach {
            stage: "removing a stale netlink attachment",
            source: Box::new(e),
            undone: "nothing (the new hooks are attached)".into(),
        })?;
        out.links_removed.extend(removed);
    }
    let in_plan: BTreeSet<&str> = plan.objects.iter().map(|o| o.name.as_str()).collect();
    for name in &pinned {
        if !in_plan.contains(name.as_str()) {
            sys::unpin(&programs_dir.join(name)).map_err(|e| ReshapeError::Attach {
                stage: "removing a stale program pin",
                source: Box::new(LoadError::Sys(e).into()),
                undone: "nothing (the new hooks are attached)".into(),
            })?;
            out.removed.push(name.clone());
        }
    }
    out.timings.attach = t.elapsed();
    Ok(out)
}

/// Give renamed link pins their old names back; says what was done.
fn undo_renames(links_dir: &Path, renamed: &[(String, String)]) -> String {
    let mut failed = Vec::new();
    for (from, to) in renamed.iter().rev() {
        if rename(&links_dir.join(to), &links_dir.join(from)).is_err() {
            failed.push(to.clone());
        }
    }
    if failed.is_empty() {
        format!("{} link pins renamed back", renamed.len())
    } else {
        format!("link pins renamed back except {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefilter_link_pin_names_the_xdp_device() {
        let cases: [(&[&str], Option<&str>); 3] = [
            (&["from_ep_1@lxcA", "prefilter@eth0", "to_ep_1@lxcA"], Some("eth0")),
            (&["from_ep_1@lxcA"], None),
            (&[], None),
        ];
        for (links, want) in cases {
            let set: BTreeSet<String> = links.iter().map(|s| s.to_string()).collect();
            assert_eq!(pinned_xdp_device(&set).as_deref(), want, "links {links:?}");
        }
    }

    #[test]
    fn errors_name_the_map_and_say_nothing_applied() {
        let e = ReshapeError::TooSmall { map: crate::maps::names::EP_CONFIG, capacity: 64, needed: 65 };
        let text = e.to_string();
        assert!(text.contains("`ep_config`") && text.contains("64") && text.contains("65"), "{text}");
        assert!(text.contains("nothing applied"), "{text}");
    }
}
