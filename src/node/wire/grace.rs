//! Expedited RCU grace periods while a batch of tcx hooks changes.
//!
//! Why: every tcx link the kernel creates or releases swaps the device's double-buffered
//! program array and then waits for one RCU grace period (`tcx_entry_sync()`, a
//! `synchronize_rcu()` under RTNL) before the old array may be reused. On a 2-CPU VM that is
//! 9–15 ms per link, so a node of 100 endpoints (200 links) spent about 3 s attaching while
//! loading took 140 ms (`sluice bench --parts attach`, BENCHMARKS.md). The kernel offers a
//! switch for exactly this: `/sys/kernel/rcu_expedited` makes `synchronize_rcu()` take the
//! expedited path (IPIs to the online CPUs instead of waiting for each to pass a quiescent
//! state), which brings a link to about 0.1 ms. The same kernel, the same links, the same
//! guarantees for readers of the old array: only the waiting is done differently.
//!
//! What it costs others: while the switch is on (the length of one attach or teardown,
//! 20–40 ms for 200 links), every `synchronize_rcu()` on the machine also sends IPIs. A
//! node that must not be interrupted (isolated, `nohz_full` CPUs) boots with
//! `rcupdate.rcu_normal=1`, which overrides the switch (then we leave it alone), or runs
//! sluice with `--grace-periods normal`.
//!
//! Contract:
//! - [`Expedite::begin`] turns the switch on only if it is off, and the guard turns it off
//!   again on drop (also on error and on panic unwinding). A switch someone else turned on
//!   is never touched.
//! - A process killed while the switch is on leaves a marker file, [`MARKER`], naming its
//!   pid; the next `begin`, finding the pid gone, turns the switch off first (what the
//!   marker's owner would have done). The marker lives in `/run`, which is emptied at boot
//!   as the switch is reset at boot. One marker for the machine, as there is one switch.
//! - Failing to read or write the switch (no sysfs, no privilege) is not an error: the hooks
//!   are attached the normal way, only slower; the reason is kept for the report.

use std::path::{Path, PathBuf};

/// The kernel's switch.
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";
/// Set by `rcupdate.rcu_normal=1`: expedited requests run as normal ones, the switch is moot.
const RCU_NORMAL: &str = "/sys/kernel/rcu_normal";
/// The marker left while a process holds the switch on: its pid.
pub const MARKER: &str = "/run/sluice/rcu_expedited.pid";

/// How `attach` and `down` wait for the grace period each tcx link change needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GracePeriods {
    /// Expedite them for the duration of the batch (the default; see the module doc).
    #[default]
    Expedited,
    /// Leave the kernel's RCU settings alone.
    Normal,
}

/// The switch held on by this process; turned off again on drop.
#[derive(Debug)]
pub struct Expedite {
    /// The marker and the switch this guard turned on.
    held: Option<(PathBuf, PathBuf)>,
    /// Why the switch was not turned on, when it was wanted but not done.
    pub skipped: Option<String>,
}

impl Expedite {
    /// Turn the switch on for this batch, as `mode` asks, leaving [`MARKER`].
    pub fn begin(mode: GracePeriods) -> Expedite {
        Self::begin_at(mode, Path::new(MARKER), Path::new(RCU_EXPEDITED), Path::new(RCU_NORMAL))
    }

    fn begin_at(mode: GracePeriods, marker: &Path, switch: &Path, normal: &Path) -> Expedite {
        let skip = |why: String| Expedite { held: None, skipped: Some(why) };
        if mode == GracePeriods::Normal {
            return Expedite { held: None, skipped: None };
        }
        recover(marker, switch);
        if read_flag(normal) == Some(true) {
            return skip("rcupdate.rcu_normal is set: grace periods stay normal".into());
        }
        match read_flag(switch) {
            None => return skip(format!("{} is not readable", switch.display())),
            Some(true) => return Expedite { held: None, skipped: None },
            Some(false) => {}
        }
        // The marker first: a crash between the two writes leaves a marker for a switch that
        // is off, which recovery turns off again (harmless); the other order could leave the
        // switch on with nothing to say whose it was.
        let written = marker
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(marker, std::process::id().to_string()));
        if let Err(e) = written {
            return skip(format!("{}: {e}", marker.display()));
        }
        if let Err(e) = std::fs::write(switch, "1") {
            let _ = std::fs::remove_file(marker);
            return skip(format!("{}: {e}", switch.display()));
        }
        Expedite { held: Some((marker.to_path_buf(), switch.to_path_buf())), skipped: None }
    }

    /// Whether this guard turned the switch on.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for Expedite {
    fn drop(&mut self) {
        if let Some((marker, switch)) = self.held.take() {
            let _ = std::fs::write(switch, "0");
            let _ = std::fs::remove_file(marker);
        }
    }
}

fn read_flag(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A marker whose process is gone: it died holding the switch on; turn it off.
fn recover(marker: &Path, switch: &Path) {
    let Ok(text) = std::fs::read_to_string(marker) else { return };
    let alive = text.trim().parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if !alive {
        let _ = std::fs::write(switch, "0");
        let _ = std::fs::remove_file(marker);
    }
}

#[cfg(test)]
mod tests {
    //! The switch is global: these tests drive a stand-in file, never the kernel's.
    use super::*;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("sluice-grace-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Scratch(dir)
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write scratch file");
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_switch_already_on_or_overridden_is_left_alone() {
        let s = Scratch::new("alone");
        let (on, normal_off) = (s.file("on", "1\n"), s.file("normal_off", "0\n"));
        let g = Expedite::begin_at(GracePeriods::Expedited, &s.0.join("m"), &on, &normal_off);
        assert!(!g.holds() && g.skipped.is_none());
        assert!(!s.0.join("m").exists());

        let (off, normal_on) = (s.file("off", "0\n"), s.file("normal_on", "1\n"));
        let g = Expedite::begin_at(GracePeriods::Expedited, &s.0.join("m"), &off, &normal_on);
        assert!(!g.holds());
        assert!(g.skipped.as_deref().unwrap_or("").contains("rcu_normal"), "{:?}", g.skipped);
        assert_eq!(std::fs::read_to_string(&off).unwrap(), "0\n");

        let g = Expedite::begin_at(GracePeriods::Normal, &s.0.join("m"), &off, &normal_off);
        assert!(!g.holds() && g.skipped.is_none());
    }

    #[test]
    fn turning_on_leaves_a_marker_with_our_pid() {
        let s = Scratch::new("on");
        let (off, normal) = (s.file("off", "0\n"), s.file("normal", "0\n"));
        let g = Expedite::begin_at(GracePeriods::Expedited, &s.0.join("m"), &off, &normal);
        assert!(g.holds());
        assert_eq!(std::fs::read_to_string(&off).unwrap(), "1");
        let marker = s.0.join("m");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), std::process::id().to_string());
        drop(g);
        assert_eq!(std::fs::read_to_string(&off).unwrap(), "0", "dropping the guard turns it off");
        assert!(!marker.exists(), "and removes the marker");
    }

    #[test]
    fn a_dead_owners_marker_turns_the_switch_off() {
        let s = Scratch::new("dead");
        let (switch, normal_on, normal_off) =
            (s.file("switch", "1\n"), s.file("n1", "1\n"), s.file("n0", "0\n"));
        let marker = s.0.join("m");
        // pid 0 is never a process's /proc entry: its owner is gone.
        s.file("m", "0");
        // rcu_normal set: this guard does not turn the switch on, so what is left is recovery.
        let g = Expedite::begin_at(GracePeriods::Expedited, &marker, &switch, &normal_on);
        assert!(!g.holds());
        assert_eq!(std::fs::read_to_string(&switch).unwrap(), "0", "the dead owner's switch is off");
        assert!(!marker.exists());

        // A live owner's marker is respected: its switch stays on and is not re-owned.
        std::fs::write(&switch, "1").unwrap();
        s.file("m", &std::process::id().to_string());
        let g = Expedite::begin_at(GracePeriods::Expedited, &marker, &switch, &normal_off);
        assert!(!g.holds());
        drop(g);
        assert_eq!(std::fs::read_to_string(&switch).unwrap(), "1");
        assert!(marker.exists());
    }
}
