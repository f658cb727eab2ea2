//! Only ours: what `unload` and `down` may remove, checked before anything is removed, and
//! the records of the devices and routes that forwarding created.
//!
//! Contract:
//! - [`survey`] walks a pin directory without following symbolic links (`lstat` only) and
//!   accepts exactly the layout sluice makes: `programs/` (program pins), `maps/` (map
//!   pins), `links/` and `socklb/` (link pins), `netlink_attachments` (a map pin) and
//!   `owned/` (records, below). Each pin's kind is asked of the kernel
//!   ([`sys::pin_kind`]). Anything else (a regular file, a symlink, a directory we did not
//!   make, a pin of the wrong kind) refuses the whole command, naming the entry; nothing
//!   has been removed at that point. The pin directory itself must pass
//!   [`lock::check_pin_dir`] (bpffs, not a symlink, root's, not writable by others).
//! - Ownership records are empty directories, so they live on bpffs beside the pins:
//!   `owned/devices/NAME:IFINDEX:NETNS` for a device forwarding created, and
//!   `owned/routes/ADDR:IFINDEX:NETNS` for an endpoint host route it installed. NAME and
//!   ADDR (its bytes in network order) are written in hex: bpffs refuses names with a dot,
//!   which addresses and interface names may have. `down` removes a recorded
//!   device only while the name still has the recorded ifindex in the recorded namespace,
//!   and only recorded routes; a device or route without a record is not ours.

use super::lock::{self, LockError};
use crate::sys::{self, PinKind, Syscall};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The directory of ownership records under the pin dir.
pub const OWNED_DIR: &str = "owned";
const DEVICES: &str = "devices";
const ROUTES: &str = "routes";

/// Why a pin directory is not ours to take apart, or a record could not be kept.
#[derive(Debug, Error)]
pub enum OursError {
    #[error(transparent)]
    PinDir(#[from] LockError),
    #[error("{}: refused, nothing removed: {reason}", .path.display())]
    NotOurs { path: PathBuf, reason: String },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an entry of the pin dir must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A directory of pins of this kind.
    Pins(PinKind),
    /// A pin of this kind.
    Pin(PinKind),
    /// The records directory.
    Records,
}

fn expected(name: &str) -> Option<Expect> {
    Some(match name {
        "programs" => Expect::Pins(PinKind::Program),
        "maps" => Expect::Pins(PinKind::Map),
        super::wire::LINKS_DIR | super::socklb::SOCKLB_DIR => Expect::Pins(PinKind::Link),
        super::socklayer::SOCKLAYER_DIR => Expect::Pins(PinKind::Link),
        super::overlay_id::OVERLAY_DIR => Expect::Pins(PinKind::Link),
        super::wire::NETLINK_RECORDS => Expect::Pin(PinKind::Map),
        OWNED_DIR => Expect::Records,
        _ => return None,
    })
}

fn not_ours(path: &Path, reason: impl Into<String>) -> OursError {
    OursError::NotOurs { path: path.to_path_buf(), reason: reason.into() }
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, OursError> {
    let read = std::fs::read_dir(dir).map_err(|source| OursError::Io {
        op: "read_dir",
        path: dir.into(),
        source,
    })?;
    let mut out: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// A directory sluice made: a real directory (not a symlink), root's, not writable by others.
fn check_dir(path: &Path) -> Result<(), OursError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).map_err(|source| OursError::Io {
        op: "lstat",
        path: path.into(),
        source,
    })?;
    if md.file_type().is_symlink() {
        return Err(not_ours(path, "a symbolic link, not a directory sluice made (not followed)"));
    }
    if !md.is_dir() {
        return Err(not_ours(path, "not a directory"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if (md.uid() != 0 && md.uid() != euid) || md.mode() & 0o022 != 0 {
        return Err(not_ours(path, format!("owned by uid {} with mode {:o}", md.uid(), md.mode() & 0o7777)));
    }
    Ok(())
}

/// A pin of `kind`: not a symlink or directory, and the kernel says it names a `kind`.
fn check_pin(sys: &dyn Syscall, path: &Path, kind: PinKind) -> Result<(), OursError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| OursError::Io {
        op: "lstat",
        path: path.into(),
        source,
    })?;
    if md.file_type().is_symlink() {
        return Err(not_ours(path, "a symbolic link, not a pin (not followed)"));
    }
    if md.is_dir() {
        return Err(not_ours(path, "a directory, not a pin"));
    }
    match sys::pin_kind(sys, path) {
        Some(k) if k == kind => Ok(()),
        Some(k) => Err(not_ours(path, format!("a pin of a {k:?}, expected a {kind:?}"))),
        None => Err(not_ours(path, "not a bpf pin")),
    }
}

/// Check that everything under `pin_dir` is what sluice puts there (module contract);
/// `Ok(false)` when there is no pin directory.
pub fn survey(sys: &dyn Syscall, pin_dir: &Path) -> Result<bool, OursError> {
    match std::fs::symlink_metadata(pin_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        _ => lock::check_pin_dir(pin_dir)?,
    }
    for path in entries(pin_dir)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match expected(&name) {
            None => return Err(not_ours(&path, "not something sluice pins")),
            Some(Expect::Pin(kind)) => check_pin(sys, &path, kind)?,
            Some(Expect::Pins(kind)) => {
                check_dir(&path)?;
                for pin in entries(&path)? {
                    check_pin(sys, &pin, kind)?;
                }
            }
            Some(Expect::Records) => {
                check_dir(&path)?;
                for sub in entries(&path)? {
                    let sub_name =
                        sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if sub_name != DEVICES && sub_name != ROUTES {
                        return Err(not_ours(&sub, "not an ownership record directory"));
                    }
                    check_dir(&sub)?;
                    for rec in entries(&sub)? {
                        check_dir(&rec)?;
                        if !entries(&rec)?.is_empty() {
                            return Err(not_ours(&rec, "a record is an empty directory"));
                        }
                    }
                }
            }
        }
    }
    Ok(true)
}

/// A device forwarding created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDevice {
    pub name: String,
    pub ifindex: u32,
    pub netns: u64,
}

/// An endpoint host route forwarding installed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedRoute {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub netns: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `WHAT:IFINDEX:NETNS` split into its three fields.
fn fields(name: &str) -> Option<(&str, u32, u64)> {
    let mut parts = name.split(':');
    let (what, ifindex, netns) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((what, ifindex.parse().ok()?, netns.parse().ok()?))
}

impl OwnedDevice {
    fn record_name(&self) -> String {
        format!("{}:{}:{}", hex(self.name.as_bytes()), self.ifindex, self.netns)
    }

    fn parse(name: &str) -> Option<OwnedDevice> {
        let (what, ifindex, netns) = fields(name)?;
        let name = String::from_utf8(unhex(what)?).ok()?;
        (!name.is_empty()).then_some(OwnedDevice { name, ifindex, netns })
    }
}

impl OwnedRoute {
    fn record_name(&self) -> String {
        let addr = match self.addr {
            IpAddr::V4(a) => hex(&a.octets()),
            IpAddr::V6(a) => hex(&a.octets()),
        };
        format!("{addr}:{}:{}", self.ifindex, self.netns)
    }

    fn parse(name: &str) -> Option<OwnedRoute> {
        let (what, ifindex, netns) = fields(name)?;
        let bytes = unhex(what)?;
        let addr = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(OwnedRoute { addr, ifindex, netns })
    }
}

fn mkdir_record(path: &Path) -> Result<(), OursError> {
    std::fs::create_dir_all(path).map_err(|source| OursError::Io { op: "record", path: path.into(), source })
}

fn rmdir_record(path: &Path) -> Result<(), OursError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(OursError::Io { op: "remove record", path: path.into(), source: e })
        }
        _ => Ok(()),
    }
}

/// Record that forwarding created `dev`.
pub fn record_device(pin_dir: &Path, dev: &OwnedDevice) -> Result<(), OursError> {
    mkdir_record(&pin_dir.join(OWNED_DIR).join(DEVICES).join(dev.record_name()))
}

/// Record that forwarding installed `route`.
pub fn record_route(pin_dir: &Path, route: &OwnedRoute) -> Result<(), OursError> {
    mkdir_record(&pin_dir.join(OWNED_DIR).join(ROUTES).join(route.record_name()))
}

/// Forget a device record.
pub fn forget_device(pin_dir: &Path, dev: &OwnedDevice) -> Result<(), OursError> {
    rmdir_record(&pin_dir.join(OWNED_DIR).join(DEVICES).join(dev.record_name()))
}

/// Forget a route record.
pub fn forget_route(pin_dir: &Path, route: &OwnedRoute) -> Result<(), OursError> {
    rmdir_record(&pin_dir.join(OWNED_DIR).join(ROUTES).join(route.record_name()))
}

fn record_names(dir: &Path) -> Result<Vec<String>, OursError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(OursError::Io { op: "read_dir", path: dir.into(), source }),
        Ok(read) => {
            let mut names: Vec<String> =
                read.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            Ok(names)
        }
    }
}

/// The devices recorded under `pin_dir`.
pub fn devices(pin_dir: &Path) -> Result<Vec<OwnedDevice>, OursError> {
    let dir = pin_dir.join(OWNED_DIR).join(DEVICES);
    record_names(&dir)?
        .iter()
        .map(|n| OwnedDevice::parse(n).ok_or_else(|| not_ours(&dir.join(n), "a malformed device record")))
        .collect()
}

/// The routes recorded under `pin_dir`.
pub fn routes(pin_dir: &Path) -> Result<Vec<OwnedRoute>, OursError> {
    let dir = pin_dir.join(OWNED_DIR).join(ROUTES);
    record_names(&dir)?
        .iter()
        .map(|n| OwnedRoute::parse(n).ok_or_else(|| not_ours(&dir.join(n), "a malformed route record")))
        .collect()
}

/// Remove the (empty) record directories once their records are gone.
pub fn remove_record_dirs(pin_dir: &Path) -> Result<(), OursError> {
    let owned = pin_dir.join(OWNED_DIR);
    for sub in [owned.join(DEVICES), owned.join(ROUTES), owned.clone()] {
        rmdir_record(&sub)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_names() {
        let devs = [
            OwnedDevice { name: "sluice_host".into(), ifindex: 12, netns: 4026531840 },
            OwnedDevice { name: "a@b.c-d".into(), ifindex: 1, netns: 0 },
        ];
        for d in devs {
            let name = d.record_name();
            assert!(!name.contains('.'), "bpffs refuses dots: {name}");
            assert_eq!(OwnedDevice::parse(&name), Some(d.clone()), "{name}");
        }
        let routes = [
            OwnedRoute { addr: "10.0.0.1".parse().expect("addr"), ifindex: 7, netns: 9 },
            OwnedRoute { addr: "fd00::1:2".parse().expect("addr"), ifindex: 7, netns: 9 },
        ];
        for r in routes {
            let name = r.record_name();
            assert!(!name.contains('.'), "bpffs refuses dots: {name}");
            assert_eq!(OwnedRoute::parse(&name), Some(r.clone()), "{name}");
        }
        for bad in ["", "x", "736c:12", ":1:2", "736c:x:2", "7:1:2", "736c:1:2:3"] {
            assert_eq!(OwnedDevice::parse(bad), None, "{bad}");
        }
        assert_eq!(OwnedRoute::parse("0a000001:x:1"), None);
        assert_eq!(OwnedRoute::parse("0a0000:1:1"), None);
    }
}
