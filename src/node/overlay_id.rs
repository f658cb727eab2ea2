//! Attaching `from-overlay` ([`crate::codegen::overlay`]) to the VXLAN device in cluster
//! mode, so the identity a peer put in the VNI reaches this node's `to-endpoint` programs.
//!
//! Contract of [`sync`] (run by [`super::forward::sync`]):
//! - `want` (the overlay carries identities) and the device exists: one tcx ingress link on
//!   it, pinned at `<pin>/overlay/from_overlay`. A pinned link still attached to that device
//!   is kept (a restarted daemon adopts it); one attached elsewhere or to nothing (the
//!   device was recreated) is detached and replaced.
//! - not `want`: a pinned link is detached and unpinned ([`remove`], also run by `down`).
//! - The program reads `fwd_cfg` (the pinned forwarding map): until the IDENTITY bit is set
//!   it passes packets untouched, so attaching before the flag is written is harmless.

use super::load::{load_generated, open_pinned_map, LoadError};
use crate::attach::{Direction, Link};
use crate::codegen::overlay::{self, FROM_OVERLAY};
use crate::sys::{ProgType, Syscall};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// The directory of the overlay's link pin, under the pin dir.
pub const OVERLAY_DIR: &str = "overlay";

/// Why `from-overlay` could not be attached.
#[derive(Debug, Error)]
pub enum OverlayIdError {
    #[error("from-overlay: {0}")]
    Codegen(#[from] crate::codegen::CodegenError),
    #[error("from-overlay: {0}")]
    Load(#[from] LoadError),
    #[error("from-overlay: attaching to ifindex {ifindex}: {source}")]
    Attach { ifindex: u32, source: crate::attach::AttachError },
    #[error("from-overlay: pin dir {path}: {source}")]
    Pin { path: std::path::PathBuf, source: crate::sys::SysError },
}

/// What [`sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayIdReport {
    pub attached: bool,
    pub kept: bool,
    pub removed: bool,
}

fn pin_path(pin_dir: &Path) -> std::path::PathBuf {
    pin_dir.join(OVERLAY_DIR).join(FROM_OVERLAY)
}

/// See the module contract.
pub fn sync(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    ifindex: u32,
    want: bool,
) -> Result<OverlayIdReport, OverlayIdError> {
    let mut report = OverlayIdReport::default();
    if !want {
        report.removed = remove(sys, pin_dir);
        return Ok(report);
    }
    let path = pin_path(pin_dir);
    if path.exists() {
        let on_device = Link::from_pin(sys, &path)
            .ok()
            .and_then(|l| l.info().ok())
            .is_some_and(|i| i.ifindex == Some(ifindex));
        if on_device {
            report.kept = true;
            return Ok(report);
        }
        report.removed = remove(sys, pin_dir);
    }
    let dir = pin_dir.join(OVERLAY_DIR);
    crate::sys::ensure_bpffs(&dir).map_err(|source| OverlayIdError::Pin { path: dir.clone(), source })?;
    let mut maps = BTreeMap::new();
    for def in overlay::map_defs() {
        maps.insert(def.name, open_pinned_map(sys, pin_dir, &def)?);
    }
    let program = overlay::generate_from_overlay()?;
    let prog = load_generated(sys, FROM_OVERLAY, &program, &maps, ProgType::SchedCls, |spec| spec)?;
    let mut link = Link::tcx(sys, &prog, crate::attach::Interface::from_index(ifindex), Direction::Ingress)
        .map_err(|source| OverlayIdError::Attach { ifindex, source })?;
    link.pin(&path).map_err(|source| OverlayIdError::Attach { ifindex, source })?;
    report.attached = true;
    Ok(report)
}

/// Detach and unpin the `from-overlay` link under `pin_dir`; whether there was one.
pub fn remove(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> bool {
    let path = pin_path(pin_dir);
    if !path.exists() {
        return false;
    }
    if let Ok(link) = Link::from_pin(sys, &path) {
        let _ = link.detach();
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(pin_dir.join(OVERLAY_DIR));
    true
}
