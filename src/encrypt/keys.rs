//! The node's WireGuard key pair, and where peers' public keys come from.
//!
//! Contract:
//! - The private key lives in `<state dir>/wireguard.key` (base64, as `wg genkey` writes it),
//!   created on first use with mode 0600 (`O_CREAT|O_EXCL`, so an existing file is never
//!   truncated); a key file readable by group or others is refused (as `wg` warns about),
//!   not used. The private key is never printed: [`NodeKey`]'s `Debug` shows the public key only.
//! - [`NodeKey::rotate`] writes a fresh key next to the old one and renames it over it, so
//!   the file always holds a whole key.
//! - Random bytes come from the kernel (`getrandom(2)`); X25519 clamping happens where the
//!   key is used (x25519-dalek), as in WireGuard.
//! - Peers' public keys come from a [`KeySource`]: [`StaticKeys`] reads them from the node
//!   config, which holds the node file's peers in single-file mode and, in cluster mode,
//!   the peers the cluster view put there with the keys they published in etcd
//!   (`crate::cluster::view`; this node's own is published by `crate::encrypt::published_key`).

use crate::model::encryption::{decode_key, encode_key, WireguardPeer};
use crate::model::NodeConfig;
use boringtun::x25519::{PublicKey, StaticSecret};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The key file's name under the state directory.
pub const KEY_FILE: &str = "wireguard.key";

/// Why the node's key could not be read or made.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("{path}: mode {mode:o} lets others read the private key; chmod 600 it (or remove it to get a new key)")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
}

/// This node's WireGuard key pair.
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").field("public", &encode_key(self.public.as_bytes())).finish_non_exhaustive()
    }
}

impl Clone for NodeKey {
    fn clone(&self) -> Self {
        NodeKey { secret: self.secret.clone(), public: self.public }
    }
}

fn random_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `key`.
        let n = unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(key)
}

impl NodeKey {
    /// A fresh key pair (not stored).
    pub fn generate() -> std::io::Result<NodeKey> {
        Ok(NodeKey::from_secret(random_key()?))
    }

    pub fn from_secret(bytes: [u8; 32]) -> NodeKey {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        NodeKey { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// The public key as `wg pubkey` prints it (what peers put in their node file).
    pub fn public_base64(&self) -> String {
        encode_key(self.public.as_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key in `state_dir`, made on first use (see the module contract).
    pub fn load_or_create(state_dir: &Path) -> Result<NodeKey, KeyError> {
        let path = state_dir.join(KEY_FILE);
        match fs::metadata(&path) {
            Ok(_) => NodeKey::load(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate().map_err(|source| KeyError::Io {
                    path: path.clone(),
                    op: "getrandom",
                    source,
                })?;
                write_new(state_dir, &path, &key)?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Io { path, op: "stat", source }),
        }
    }

    /// Read a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let io = |op, source| KeyError::Io { path: path.to_path_buf(), op, source };
        let mode = fs::metadata(path).map_err(|e| io("stat", e))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
        }
        let text = fs::read_to_string(path).map_err(|e| io("read", e))?;
        let bytes =
            decode_key(&text).map_err(|message| KeyError::Malformed { path: path.to_path_buf(), message })?;
        Ok(NodeKey::from_secret(bytes))
    }

    /// Replace the key in `state_dir` with a fresh one and return it.
    pub fn rotate(state_dir: &Path) -> Result<NodeKey, KeyError> {
        let path = state_dir.join(KEY_FILE);
        let key = NodeKey::generate().map_err(|source| KeyError::Io {
            path: path.clone(),
            op: "getrandom",
            source,
        })?;
        let tmp = state_dir.join(format!("{KEY_FILE}.new"));
        let _ = fs::remove_file(&tmp);
        write_new(state_dir, &tmp, &key)?;
        fs::rename(&tmp, &path).map_err(|source| KeyError::Io { path, op: "rename", source })?;
        Ok(key)
    }
}

fn write_new(state_dir: &Path, path: &Path, key: &NodeKey) -> Result<(), KeyError> {
    let io = |op, source| KeyError::Io { path: path.to_path_buf(), op, source };
    fs::create_dir_all(state_dir).map_err(|e| io("create state directory", e))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create", e))?;
    writeln!(f, "{}", encode_key(&key.secret.to_bytes())).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    Ok(())
}

/// One peer node's key as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    /// The peer node's name.
    pub node: String,
    pub key: WireguardPeer,
}

/// Where peers' public keys come from.
pub trait KeySource {
    /// The peers with a known key, by node name; a peer missing here gets nothing through.
    fn peer_keys(&self) -> Vec<PeerKey>;
}

/// Keys from the node file (`spec.overlay.peers[].wireguard`).
#[derive(Debug)]
pub struct StaticKeys<'a>(pub &'a NodeConfig);

impl KeySource for StaticKeys<'_> {
    fn peer_keys(&self) -> Vec<PeerKey> {
        self.0
            .overlay
            .iter()
            .flat_map(|o| &o.peers)
            .filter_map(|p| Some(PeerKey { node: p.name.clone(), key: p.wireguard? }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-keys-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn first_start_makes_a_root_only_key_and_later_starts_reuse_it() {
        let dir = scratch("first");
        let made = NodeKey::load_or_create(&dir).expect("made");
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file mode");
        let again = NodeKey::load_or_create(&dir).expect("read back");
        assert_eq!(made.public(), again.public(), "the same key on the next start");
        let rotated = NodeKey::rotate(&dir).expect("rotated");
        assert_ne!(rotated.public(), made.public(), "rotation gives a new key");
        assert_eq!(NodeKey::load_or_create(&dir).unwrap().public(), rotated.public(), "and keeps it");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = scratch("exposed");
        NodeKey::load_or_create(&dir).expect("made");
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load_or_create(&dir).expect_err("0644 is refused");
        assert!(matches!(err, KeyError::Exposed { mode: 0o644, .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = NodeKey::from_secret([9; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.public_base64()), "{shown}");
        assert!(!shown.contains(&encode_key(&[9; 32])), "private key leaked: {shown}");
    }
}
