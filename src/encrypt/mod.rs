//! Transparent encryption of pod traffic between nodes (`spec.encryption`).
//!
//! - [`keys`]: the node's WireGuard key pair (a root-only file under the state directory)
//!   and the [`keys::KeySource`] peers' public keys come from (the node file today).
//! - [`wg`]: a userspace WireGuard (boringtun's noise layer) serving a TUN device named
//!   `sluice_wg`, for kernels without the WireGuard device type (as this project's CI
//!   kernel). [`kernel_wireguard`] says whether the kernel has it.
//! - [`ipsec`]: the IPsec mode's pieces: per-node-pair keys derived as Cilium derives
//!   them, the xfrm marks, the key choice, and the refusal on kernels without ESP.
//!
//! How the datapath uses the device: `crate::node::forward::sync` points the `tunnel`
//! map's peer prefixes at `sluice_wg` instead of the VXLAN device, so `from-endpoint`
//! redirects a remote endpoint's packets there (a redirect to an L3 device drops the
//! Ethernet header); the device's routes carry the host's own traffic to peers' pods the
//! same way. The source identity is not carried across: the receiving node re-derives it
//! from its ipcache by source address, as it does for VXLAN today (the tunnel key holds the
//! VNI only), and WireGuard's cryptokey routing guarantees that the source address belongs
//! to the peer that encrypted it (a packet with another source is dropped, `rx_not_allowed`).

pub mod ipsec;
pub mod keys;
pub mod wg;

use crate::model::encryption::{Encryption, WIREGUARD_DEVICE};
use crate::model::NodeConfig;
use crate::netlink::msg::{flags, rtm, IfInfoMsg};
use crate::netlink::{link::ifla, NetNs, Netlink, Request};
use keys::{KeySource, NodeKey};
use std::net::SocketAddr;
use thiserror::Error;

/// Why encryption could not be set up.
#[derive(Debug, Error)]
pub enum EncryptError {
    #[error("{op}: {source}")]
    Io { op: &'static str, source: std::io::Error },
    #[error("WireGuard device: {0}")]
    Device(String),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("{0}")]
    Unsupported(String),
}

impl EncryptError {
    pub(crate) fn io(op: &'static str, source: std::io::Error) -> EncryptError {
        EncryptError::Io { op, source }
    }
}

/// Whether the kernel has the WireGuard device type: a `wireguard` link is created (and
/// removed) in the caller's namespace under a scratch name. `EOPNOTSUPP` (no such kind)
/// means it has not.
pub fn kernel_wireguard(nl: &Netlink) -> bool {
    let name = format!("slwgp{}", std::process::id() % 100_000);
    let mut req = Request::new(rtm::NEWLINK, flags::CREATE | flags::EXCL, "wireguard probe");
    req.header(&IfInfoMsg::default()).attr_str(ifla::IFNAME, &name).nest(ifla::LINKINFO, |r| {
        r.attr_str(ifla::INFO_KIND, "wireguard");
    });
    if nl.ack(&mut req).is_err() {
        return false;
    }
    if let Ok(i) = nl.ifindex(&name) {
        let _ = nl.delete_link(i);
    }
    true
}

/// The device's peers: every overlay peer whose key the source knows, AllowedIPs its pod
/// prefixes, endpoint its `wireguard.endpoint` or its overlay address at `port`.
pub fn peers(cfg: &NodeConfig, source: &dyn KeySource, port: u16) -> Vec<wg::PeerConfig> {
    let known = source.peer_keys();
    cfg.overlay
        .iter()
        .flat_map(|o| &o.peers)
        .filter_map(|p| {
            let k = known.iter().find(|k| k.node == p.name)?;
            Some(wg::PeerConfig {
                name: p.name.clone(),
                public_key: k.key.public_key,
                endpoint: k.key.endpoint.unwrap_or_else(|| SocketAddr::from((p.address, port))),
                allowed: p.prefixes.clone(),
            })
        })
        .collect()
}

/// The state directory (the node key's home): `$SLUICE_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> std::path::PathBuf {
    std::env::var_os("SLUICE_STATE_DIR").map_or_else(|| DEFAULT_STATE_DIR.into(), Into::into)
}

/// Why mode ipsec is refused on a kernel that has ESP.
pub const IPSEC_NOT_ATTACHED: &str =
    "spec.encryption.mode ipsec: the kernel has ESP, but sluice does not attach \
     the IPsec marking programs (ipsec_egress, ipsec_ingress) to the node yet; use mode: wireguard";

/// Where the node key lives unless `$SLUICE_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";

/// What the daemon starts for `cfg`, before it loads anything: the WireGuard device in
/// mode wireguard, unless one named `sluice_wg` exists already (the kernel's, configured
/// elsewhere); nothing otherwise. Mode ipsec is refused here, so nothing is loaded or
/// attached: on a kernel without ESP with [`ipsec::check_kernel`]'s message naming the
/// kernel options it needs; on one with ESP because the node plan does not attach the
/// marking programs yet (see `ipsec`).
pub fn start_for_daemon(cfg: &NodeConfig) -> Result<Option<wg::Userspace>, EncryptError> {
    if matches!(cfg.encryption, Encryption::Ipsec(_)) {
        let xfrm = Netlink::open_xfrm().map_err(|e| EncryptError::Device(e.to_string()))?;
        ipsec::check_kernel(&xfrm)?;
        return Err(EncryptError::Unsupported(IPSEC_NOT_ATTACHED.into()));
    }
    if !matches!(cfg.encryption, Encryption::Wireguard(_)) {
        return Ok(None);
    }
    let nl = Netlink::open().map_err(|e| EncryptError::Device(e.to_string()))?;
    if nl.ifindex(WIREGUARD_DEVICE).is_ok() {
        return Ok(None);
    }
    // Say which WireGuard serves the node: the kernel's is detected but not driven (its
    // generic-netlink configuration is not written), so the userspace device serves both.
    if kernel_wireguard(&nl) {
        println!("wireguard: the kernel has the WireGuard device type, but sluice does not configure it yet; using the userspace device");
    } else {
        println!("wireguard: the kernel has no WireGuard device type; using the userspace device");
    }
    let device = start_wireguard(None, cfg, &keys::StaticKeys(cfg), &state_dir())?;
    // The public key is what peers put in their node files (never the private one).
    let public = NodeKey::load_or_create(&state_dir())?.public_base64();
    println!("wireguard: {WIREGUARD_DEVICE} (userspace) up; this node's public key {public}");
    Ok(Some(device))
}

/// Reload: point a running device's peers at what `cfg` says (the node file's peer list and
/// keys). Peers are matched by name in the device; a changed key starts a new session, an
/// unchanged peer keeps its session. Returns whether the peer table changed (nothing is
/// sent to the device otherwise). Routes for new pod prefixes are not added here: the
/// device's routes follow the start config.
pub fn reload_peers(device: &wg::Userspace, cfg: &NodeConfig) -> bool {
    let Encryption::Wireguard(w) = &cfg.encryption else { return false };
    device.set_peers_if_changed(peers(cfg, &keys::StaticKeys(cfg), w.port))
}

/// The daemon's poller: reload the device's peers from `cfg` when they changed (`cfg` is
/// the node file as the daemon reads it: with the cluster's view applied in cluster mode,
/// so peers' keys come from etcd there; `None` when the file is unreadable or invalid,
/// which changes nothing: the daemon reports it already), and its key from the state
/// directory when `sluice encrypt rotate` replaced it. Returns the new public key (base64)
/// after a rotation, which the caller publishes (cluster mode).
pub fn follow_config(device: &wg::Userspace, cfg: Option<&NodeConfig>) -> Option<String> {
    if let Some(cfg) = cfg {
        if reload_peers(device, cfg) {
            println!("wireguard: peers reloaded");
        }
    }
    let public = follow_key_file(device, &state_dir())?;
    println!("wireguard: node key rotated; this node's public key {public}");
    Some(public)
}

/// This node's public key (base64) when `cfg` is in mode wireguard: what the cluster store
/// publishes with the node. The key is made on first use (as the daemon's start does).
pub fn published_key(cfg: &NodeConfig) -> Option<String> {
    if !matches!(cfg.encryption, Encryption::Wireguard(_)) {
        return None;
    }
    NodeKey::load_or_create(&state_dir()).ok().map(|k| k.public_base64())
}

/// Give the device the key in `state_dir` if it is not the one it uses (a rotation); the
/// new public key (base64) when it changed. Sessions are re-established under the new key
/// (see `wg`: the old session stays for packets in flight).
pub fn follow_key_file(device: &wg::Userspace, state_dir: &std::path::Path) -> Option<String> {
    let key = NodeKey::load(&state_dir.join(keys::KEY_FILE)).ok()?;
    let public = key.public_base64();
    device.set_private_key_if_changed(key).then_some(public)
}

/// Start `sluice_wg` for `cfg` (mode wireguard) in `netns`: the node key from `state_dir`
/// (made on first start), peers from `source`. The kernel's WireGuard is not driven yet
/// (its generic-netlink configuration is not written): the userspace device serves both cases.
pub fn start_wireguard(
    netns: Option<&NetNs>,
    cfg: &NodeConfig,
    source: &dyn KeySource,
    state_dir: &std::path::Path,
) -> Result<wg::Userspace, EncryptError> {
    let Encryption::Wireguard(w) = &cfg.encryption else {
        return Err(EncryptError::Unsupported("spec.encryption.mode is not wireguard".into()));
    };
    let key = NodeKey::load_or_create(state_dir)?;
    let dev = wg::DeviceConfig { name: WIREGUARD_DEVICE.to_string(), port: w.port };
    wg::Userspace::start(netns, &dev, key, peers(cfg, source, w.port))
}
