//! `spec.socketLayer`: socket-layer acceleration of local-peer TCP connections (issue 11).
//!
//! ```yaml
//! spec:
//!   socketLayer:
//!     cgroup: /sys/fs/cgroup/unified/pods   # sock_ops runs for sockets of processes under it
//! ```
//! Absent: off. `cgroup` is an absolute path without `..` (a cgroup v2 directory; whether it
//! exists is checked when the program is attached, not here).

use super::locate::{FieldPath, Invalid};
use serde::Deserialize;
use std::path::PathBuf;

/// Socket-layer acceleration: where `sock_ops` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLayer {
    /// The cgroup v2 directory whose processes' TCP connections may be accelerated.
    pub cgroup: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with cgroup")]
pub(crate) struct SocketLayerWire {
    cgroup: String,
}

/// Lowers `spec.socketLayer` (at `spec`).
pub(crate) fn lower(wire: Option<SocketLayerWire>, spec: &FieldPath) -> Result<Option<SocketLayer>, Invalid> {
    let Some(w) = wire else { return Ok(None) };
    let path = PathBuf::from(&w.cgroup);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(spec
            .key("socketLayer")
            .key("cgroup")
            .invalid(format!("{:?} is not an absolute path without `..`", w.cgroup)));
    }
    Ok(Some(SocketLayer { cgroup: path }))
}
