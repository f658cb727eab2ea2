//! sysctl: per-namespace `net.*` settings through `/proc/sys`.
//!
//! Contract:
//! - `/proc/sys/net` shows the namespace of the thread that opens it, so a write for a
//!   given [`NetNs`] happens on a helper thread inside it ([`NetNs::run_in`]); with `None`
//!   it happens in the calling thread's namespace. The calling thread never moves.
//! - Keys are dotted (`net.ipv4.ip_forward`), each component a plain file name; an
//!   interface name inside a key (which may itself hold dots, like `eth0.100`) goes through
//!   [`proxy_arp`] and friends, which build the path from components.

use std::path::PathBuf;

use super::{check_ifname, NetNs, NetlinkError, Result};

const PROC_SYS: &str = "/proc/sys";

/// The `/proc/sys` path of a dotted key.
fn key_path(key: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || p.contains('/') || p.contains('\0')) {
        return Err(NetlinkError::invalid(format!("sysctl key {key:?}"), "must be dotted names"));
    }
    Ok(parts.iter().fold(PathBuf::from(PROC_SYS), |path, part| path.join(part)))
}

fn write_path(netns: Option<&NetNs>, key: &str, path: PathBuf, value: &str) -> Result<()> {
    let write = || std::fs::write(&path, value);
    let result = match netns {
        Some(ns) => ns.run_in(write)?,
        None => write(),
    };
    result.map_err(|source| NetlinkError::Sysctl {
        key: format!("{key} = {value}"),
        netns: netns.map(|n| n.name().to_string()),
        op: "write",
        source,
    })
}

/// Write `value` to the dotted `key` in `netns` (or here).
pub fn write(netns: Option<&NetNs>, key: &str, value: &str) -> Result<()> {
    write_path(netns, key, key_path(key)?, value)
}

/// Read the dotted `key` in `netns` (or here), trimmed.
pub fn read(netns: Option<&NetNs>, key: &str) -> Result<String> {
    let path = key_path(key)?;
    let read = || std::fs::read_to_string(&path);
    let result = match netns {
        Some(ns) => ns.run_in(read)?,
        None => read(),
    };
    result.map(|s| s.trim().to_string()).map_err(|source| NetlinkError::Sysctl {
        key: key.to_string(),
        netns: netns.map(|n| n.name().to_string()),
        op: "read",
        source,
    })
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// `net.ipv4.ip_forward`.
pub fn ip_forward(netns: Option<&NetNs>, on: bool) -> Result<()> {
    write(netns, "net.ipv4.ip_forward", flag(on))
}

/// `net.ipv6.conf.all.forwarding`.
pub fn ipv6_forwarding(netns: Option<&NetNs>, on: bool) -> Result<()> {
    write(netns, "net.ipv6.conf.all.forwarding", flag(on))
}

/// `net.ipv4.conf.IFNAME.proxy_arp`.
pub fn proxy_arp(netns: Option<&NetNs>, ifname: &str, on: bool) -> Result<()> {
    check_ifname(ifname)?;
    let path = PathBuf::from(PROC_SYS).join("net/ipv4/conf").join(ifname).join("proxy_arp");
    write_path(netns, &format!("net.ipv4.conf.{ifname}.proxy_arp"), path, flag(on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys() {
        assert_eq!(key_path("net.ipv4.ip_forward").unwrap(), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        for bad in ["", "net..x", "net./x", "net.ipv4.", ".net"] {
            assert!(key_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reading_here_works() {
        let value = read(None, "net.ipv4.ip_forward").expect("readable without privileges");
        assert!(value == "0" || value == "1", "{value}");
    }
}
