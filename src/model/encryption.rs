//! `Node.spec.encryption` and `Node.spec.overlay.peers[].wireguard`: transparent encryption
//! of pod traffic between nodes.
//!
//! ```yaml
//! spec:
//!   encryption:
//!     mode: wireguard          # off (default) | wireguard | ipsec
//!     port: 51871              # WireGuard's UDP port (Cilium's), default 51871
//!     strict: true             # default true: pod traffic to a peer never leaves unencrypted
//!     ipsec:                   # mode ipsec only: Cilium's key format, one line per key
//!       keys: ["3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128"]
//!   overlay:
//!     peers:
//!       - name: node-2
//!         address: 172.16.0.2
//!         prefixes: [10.0.2.0/24]
//!         wireguard:
//!           publicKey: "base64 of 32 bytes"
//!           endpoint: "172.16.0.2:51871"   # default: the peer's address and `port`
//! ```
//!
//! The node's own private key is not in the file: it lives in a root-only file under the
//! state directory ([`crate::encrypt::keys`]). A peer without `wireguard` is valid (its
//! key may come from the cluster store later) but gets nothing through in wireguard mode.
//!
//! Checks (each error at its field): a mode needs `spec.overlay` (the peers it encrypts
//! to); the port is not 0; a public key is the base64 of 32 bytes; an endpoint is
//! `address:port`; two peers do not share a public key; `ipsec` only with mode `ipsec`,
//! which needs at least one key; a key line has an SPI 1..=15 (unique), an algorithm this
//! node can program (`rfc4106(gcm(aes))`), a hex key of 20, 28 or 36 bytes (AES key plus
//! 4-byte salt) and an ICV of 64, 96 or 128 bits.

use super::locate::{FieldPath, Invalid};
use serde::Deserialize;
use std::net::SocketAddr;

/// Cilium's WireGuard UDP port.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51871;
/// The WireGuard device's name (Cilium: `cilium_wg0`).
pub const WIREGUARD_DEVICE: &str = "sluice_wg";
/// The largest IPsec SPI (key version): 4 bits in the xfrm mark (Cilium's `IPsecMaxKeyVersion`).
pub const MAX_IPSEC_SPI: u8 = 15;
/// The one AEAD the IPsec mode programs (Cilium's recommended one).
pub const IPSEC_AEAD: &str = "rfc4106(gcm(aes))";

/// How pod traffic between nodes is protected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Plain VXLAN between nodes.
    #[default]
    Off,
    Wireguard(Wireguard),
    Ipsec(Ipsec),
}

/// `mode: wireguard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wireguard {
    pub port: u16,
    /// Pod traffic to a peer without a usable key is dropped (counted), never sent plain.
    pub strict: bool,
}

/// `mode: ipsec`: the keys, sorted by SPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipsec {
    pub keys: Vec<IpsecKey>,
}

/// One line of Cilium's key secret: `<spi>[+] rfc4106(gcm(aes)) <hex key+salt> <icv bits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecKey {
    pub spi: u8,
    /// `+`: a key per node pair derived from this one (the only safe form; Cilium
    /// deprecated global keys).
    pub per_tunnel: bool,
    pub algorithm: String,
    /// AES key followed by the 4-byte salt.
    pub key: Vec<u8>,
    pub icv_bits: u32,
}

/// A peer's WireGuard identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardPeer {
    pub public_key: [u8; 32],
    /// Where its WireGuard listens; `None`: its overlay address and this node's port.
    pub endpoint: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "encryption: a mapping with mode and optionally port, strict and ipsec"
)]
pub(crate) struct EncryptionWire {
    mode: ModeWire,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    ipsec: Option<IpsecWire>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "one of off, wireguard, ipsec")]
enum ModeWire {
    Off,
    Wireguard,
    Ipsec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with keys")]
struct IpsecWire {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with publicKey and optionally endpoint"
)]
pub(crate) struct WireguardPeerWire {
    public_key: String,
    #[serde(default)]
    endpoint: Option<String>,
}

/// Decodes a WireGuard key as `wg` prints it (standard base64 of 32 bytes).
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("a WireGuard key is 32 bytes, this one {}", bytes.len()))
}

/// Encodes a WireGuard key as `wg` prints it.
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::encode(key)
}

/// Lowers one peer's `wireguard` (at `at`).
pub(crate) fn lower_peer(w: WireguardPeerWire, at: &FieldPath) -> Result<WireguardPeer, Invalid> {
    let public_key = decode_key(&w.public_key).map_err(|m| at.key("publicKey").invalid(m))?;
    let endpoint = match w.endpoint {
        None => None,
        Some(e) => Some(e.parse::<SocketAddr>().map_err(|_| {
            at.key("endpoint").invalid(format!("{e:?} is not address:port (IPv6 as [addr]:port)"))
        })?),
    };
    Ok(WireguardPeer { public_key, endpoint })
}

/// Parses one line of Cilium's IPsec key secret.
pub fn parse_ipsec_key(line: &str) -> Result<IpsecKey, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [spi, algorithm, key, icv] = words.as_slice() else {
        return Err(format!(
            "{line:?}: expected `<spi>[+] {IPSEC_AEAD} <hex key> <icv bits>` (4 words, not {})",
            words.len()
        ));
    };
    let (spi, per_tunnel) = match spi.strip_suffix('+') {
        Some(s) => (s, true),
        None => (*spi, false),
    };
    let spi: u8 = spi
        .parse()
        .ok()
        .filter(|s| (1..=MAX_IPSEC_SPI).contains(s))
        .ok_or_else(|| format!("SPI {spi:?} is not 1..={MAX_IPSEC_SPI} (4 bits in the xfrm mark)"))?;
    if *algorithm != IPSEC_AEAD {
        return Err(format!("algorithm {algorithm:?}: only {IPSEC_AEAD} is supported"));
    }
    let key = key.strip_prefix("0x").unwrap_or(key);
    if key.len() % 2 != 0 || !key.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("key {key:?} is not hex"));
    }
    let key: Vec<u8> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).expect("checked: two hex digits"))
        .collect();
    if ![20, 28, 36].contains(&key.len()) {
        return Err(format!(
            "key is {} bytes; {IPSEC_AEAD} takes 16, 24 or 32 plus a 4-byte salt",
            key.len()
        ));
    }
    let icv_bits: u32 = icv.parse().map_err(|_| format!("ICV {icv:?} is not a number"))?;
    if ![64, 96, 128].contains(&icv_bits) {
        return Err(format!("ICV {icv_bits} bits: {IPSEC_AEAD} takes 64, 96 or 128"));
    }
    Ok(IpsecKey { spi, per_tunnel, algorithm: algorithm.to_string(), key, icv_bits })
}

/// Lowers `spec.encryption` (at `spec`). Peer keys are lowered (and checked unique) with
/// the overlay's peers (`super::network`).
pub(crate) fn lower(
    enc: Option<EncryptionWire>,
    has_overlay: bool,
    spec: &FieldPath,
) -> Result<Encryption, Invalid> {
    let Some(e) = enc else { return Ok(Encryption::Off) };
    let at = spec.key("encryption");
    if e.ipsec.is_some() && !matches!(e.mode, ModeWire::Ipsec) {
        return Err(at.key("ipsec").invalid("ipsec keys are only for mode: ipsec"));
    }
    if !matches!(e.mode, ModeWire::Off) && !has_overlay {
        return Err(at.key("mode").invalid(
            "encryption protects traffic to overlay peers: it needs spec.overlay (local and peers)",
        ));
    }
    match e.mode {
        ModeWire::Off => Ok(Encryption::Off),
        ModeWire::Wireguard => {
            let port = e.port.unwrap_or(DEFAULT_WIREGUARD_PORT);
            if port == 0 {
                return Err(at.key("port").invalid("port 0 is not a UDP port"));
            }
            Ok(Encryption::Wireguard(Wireguard { port, strict: e.strict.unwrap_or(true) }))
        }
        ModeWire::Ipsec => {
            let lines = e.ipsec.map(|i| i.keys).unwrap_or_default();
            if lines.is_empty() {
                return Err(at.key("mode").invalid("mode ipsec needs encryption.ipsec.keys"));
            }
            let mut keys: Vec<IpsecKey> = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                let here = at.key("ipsec").key("keys").index(i);
                let key = parse_ipsec_key(line).map_err(|m| here.invalid(m))?;
                if keys.iter().any(|k| k.spi == key.spi) {
                    return Err(here.invalid(format!(
                        "SPI {} is used twice; a new key needs a new SPI (reusing one breaks decryption)",
                        key.spi
                    )));
                }
                keys.push(key);
            }
            keys.sort_by_key(|k| k.spi);
            Ok(Encryption::Ipsec(Ipsec { keys }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipsec_key_lines() {
        let good = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128";
        let k = parse_ipsec_key(good).expect("Cilium's documented example parses");
        assert_eq!((k.spi, k.per_tunnel, k.key.len(), k.icv_bits), (3, true, 20, 128));
        let cases = [
            ("0 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128", "SPI"),
            ("16 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128", "SPI"),
            ("3 cbc(aes) 0123456789abcdef0123456789abcdef01234567 128", "only"),
            ("3 rfc4106(gcm(aes)) 0123 128", "bytes"),
            ("3 rfc4106(gcm(aes)) zz23456789abcdef0123456789abcdef01234567 128", "not hex"),
            ("3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 100", "ICV"),
            ("3 rfc4106(gcm(aes))", "4 words"),
        ];
        for (line, want) in cases {
            let err = parse_ipsec_key(line).expect_err(line);
            assert!(err.contains(want), "{line}: expected an error mentioning {want:?}, got {err:?}");
        }
    }

    #[test]
    fn keys_round_trip_as_wg_prints_them() {
        let key = [7u8; 32];
        assert_eq!(decode_key(&encode_key(&key)), Ok(key));
        assert!(decode_key("AAAA").unwrap_err().contains("32 bytes"));
        assert!(decode_key("not base64!").unwrap_err().contains("base64"));
    }
}

#[cfg(test)]
mod rejections {
    /// A node with an overlay of two peers; `{enc}` and `{wg1}`/`{wg2}` are spliced in.
    const NODE: &str = "apiVersion: sluice.dev/v1
kind: Node
metadata:
  name: node-1
spec:
{enc}  overlay:
    local: 172.16.0.1
    peers:
      - name: node-2
        address: 172.16.0.2
        prefixes: [10.0.2.0/24]
{wg1}      - name: node-3
        address: 172.16.0.3
        prefixes: [10.0.3.0/24]
{wg2}";

    fn node(enc: &str, wg1: &str, wg2: &str) -> String {
        NODE.replace("{enc}", enc).replace("{wg1}", wg1).replace("{wg2}", wg2)
    }

    const KEY_A: &str = "        wireguard: {publicKey: \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"}\n";

    #[test]
    fn encryption_errors_name_their_field_and_line() {
        let wg = "  encryption: {mode: wireguard}\n";
        // (what, text, expected line, expected text in the message)
        let cases = [
            ("key not base64", node(wg, "        wireguard: {publicKey: \"!!\"}\n", ""), 13, "base64"),
            ("key too short", node(wg, "        wireguard: {publicKey: \"AAAA\"}\n", ""), 13, "32 bytes"),
            (
                "endpoint without port",
                node(wg, "        wireguard: {publicKey: \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\", endpoint: \"172.16.0.2\"}\n", ""),
                13,
                "address:port",
            ),
            ("two peers, one key", node(wg, KEY_A, KEY_A), 17, "same public key"),
            ("port 0", node("  encryption: {mode: wireguard, port: 0}\n", "", ""), 6, "port 0"),
            ("unknown mode", node("  encryption: {mode: tls}\n", "", ""), 6, "unknown variant `tls`"),
            ("ipsec without keys", node("  encryption: {mode: ipsec}\n", "", ""), 6, "needs encryption.ipsec.keys"),
            (
                "ipsec key line",
                node("  encryption:\n    mode: ipsec\n    ipsec:\n      keys: [\"3 rfc4106(gcm(aes)) 00 128\"]\n", "", ""),
                9,
                "bytes",
            ),
        ];
        for (what, text, line, want) in cases {
            let err = crate::model::parse_str(&text, "enc.yaml").expect_err(what).to_string();
            assert!(err.contains(want), "{what}: expected {want:?} in {err:?}\n{text}");
            assert!(
                err.contains(&format!("enc.yaml:{line}:")),
                "{what}: expected line {line} in {err:?}\n{text}"
            );
        }
        let no_overlay = "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  encryption: {mode: wireguard}\n";
        let err = crate::model::parse_str(no_overlay, "enc.yaml").expect_err("no overlay").to_string();
        assert!(err.contains("needs spec.overlay"), "{err}");
    }

    #[test]
    fn a_valid_wireguard_node_keeps_its_keys() {
        let cfg = crate::model::parse_str(&node("  encryption: {mode: wireguard}\n", KEY_A, ""), "ok.yaml")
            .expect("valid");
        let peers = &cfg.overlay.as_ref().expect("overlay").peers;
        assert_eq!(peers[0].wireguard.map(|w| w.public_key), Some([1; 32]));
        assert_eq!(peers[1].wireguard, None, "a peer without a key is valid (it gets nothing through)");
        assert!(matches!(
            cfg.encryption,
            super::Encryption::Wireguard(super::Wireguard { port: 51871, strict: true })
        ));
    }
}
