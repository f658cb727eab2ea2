//! IPsec mode (`spec.encryption.mode: ipsec`), Cilium's design: xfrm does ESP, BPF only
//! marks packets so the right xfrm policy and state match.
//!
//! - Keys per node pair ([`node_pair_key`]): Cilium's `computeNodeIPsecKey`: SHA-256 (a
//!   global key of at most 32 bytes) or SHA-512 over global key ‖ source node IP ‖
//!   destination node IP ‖ source boot id[..36] ‖ destination boot id[..36], truncated to
//!   the global key's length (IPv4 as 4 bytes). The out state of A→B and the in state of B
//!   for A→B get the same key; boot ids make keys change on reboot.
//! - Marks ([`encrypt_mark`], [`decrypt_mark`]): Cilium's `linux_defaults`: egress
//!   `0x0E00 | spi << 12 | node_id << 16` under mask `0xFFFFFF00`; ingress ESP
//!   `0x0D00 | node_id << 16` under mask `0xFFFF0F00`. Node ids are this node's own numbers
//!   for its peers (1-based in name order), 16 bits.
//! - Key choice ([`choose_spi`]): the newest key both nodes have, Cilium's
//!   `get_min_encrypt_key` including the 15 → 1 wrap (keys are never more than one ahead).
//!   Rotation: a new SPI is added; the old states stay for [`ROTATION_GRACE`] (Cilium's
//!   `ipsec-key-rotation-duration` default) before they are removed.
//! - [`states_and_policies`]: what a node programs for each peer and SPI.
//! - [`check_kernel`]: `mode: ipsec` is refused at start where the kernel cannot hold an
//!   ESP state (as this project's CI kernel: states refused, policies accepted), naming the
//!   kernel options it needs.
//!
//! The BPF side (the node-map lookup that sets `skb->mark` on egress, the marking of ESP
//! on ingress) is `crate::codegen::ipsec` over the maps of `crate::maps::ipsec`, with golden
//! packets in `tests/encrypt_ipsec_golden.rs`. Not done: attaching those programs in the
//! node plan / daemon (this kernel has no ESP, so nothing could be shown end to end).

use crate::model::encryption::{IpsecKey, IPSEC_AEAD};
use crate::model::Cidr;
use crate::netlink::xfrm::{Dir, Mark, Policy, State};
use crate::netlink::Netlink;
use sha2::{Digest, Sha256, Sha512};
use std::net::IpAddr;
use std::time::Duration;

/// `RouteMarkEncrypt`.
pub const MARK_ENCRYPT: u32 = 0x0E00;
/// `RouteMarkDecrypt`.
pub const MARK_DECRYPT: u32 = 0x0D00;
/// `IPsecXFRMMarkSPIShift`.
pub const SPI_SHIFT: u32 = 12;
/// `IPsecMarkMaskOut`.
pub const MASK_OUT: u32 = 0xFF00 | 0xFFFF_0000;
/// `IPsecMarkMaskIn`.
pub const MASK_IN: u32 = 0x0F00 | 0xFFFF_0000;
/// The largest SPI (4 bits).
pub const MAX_SPI: u8 = crate::model::encryption::MAX_IPSEC_SPI;
/// How long an old key's states stay after a rotation.
pub const ROTATION_GRACE: Duration = Duration::from_secs(5 * 60);
/// Cilium's default reqid.
pub const REQID: u32 = 1;
/// The kernel options an IPsec node needs (Cilium's system requirements).
pub const KERNEL_OPTIONS: &str = "CONFIG_XFRM, CONFIG_XFRM_USER, CONFIG_INET_ESP (and CONFIG_INET6_ESP), \
     CONFIG_INET_XFRM_MODE_TUNNEL, CONFIG_CRYPTO_AEAD, CONFIG_CRYPTO_GCM, CONFIG_CRYPTO_SEQIV, CONFIG_CRYPTO_AES";

fn canonical(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// The key of the xfrm states for traffic from `src` to `dst` (see the module header).
/// Boot ids shorter than 36 bytes are used whole.
pub fn node_pair_key(global: &[u8], src: IpAddr, dst: IpAddr, src_boot: &str, dst_boot: &str) -> Vec<u8> {
    let boot = |b: &str| b.as_bytes()[..b.len().min(36)].to_vec();
    let mut input = global.to_vec();
    input.extend(canonical(src));
    input.extend(canonical(dst));
    input.extend(boot(src_boot));
    input.extend(boot(dst_boot));
    let hash: Vec<u8> =
        if global.len() <= 32 { Sha256::digest(&input).to_vec() } else { Sha512::digest(&input).to_vec() };
    hash[..global.len().min(hash.len())].to_vec()
}

/// The mark `from-endpoint` sets for a packet to peer `node_id` with key `spi`.
pub fn encrypt_mark(spi: u8, node_id: u16) -> u32 {
    MARK_ENCRYPT | (u32::from(spi & 0xF) << SPI_SHIFT) | (u32::from(node_id) << 16)
}

/// The mark ingress sets on ESP from peer `node_id`.
pub fn decrypt_mark(node_id: u16) -> u32 {
    MARK_DECRYPT | (u32::from(node_id) << 16)
}

/// The newest key both ends have (`get_min_encrypt_key`); 0 (no encryption) when either has none.
pub fn choose_spi(local: u8, peer: u8) -> u8 {
    if peer == MAX_SPI {
        return if local == 1 { peer } else { local };
    }
    if local == MAX_SPI {
        return if peer == 1 { local } else { peer };
    }
    local.min(peer)
}

/// One peer as the IPsec mode sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecPeer {
    pub node_id: u16,
    pub address: IpAddr,
    pub boot_id: String,
    pub prefixes: Vec<Cidr>,
}

/// The states (out and in, per key) and policies (out per prefix, in) toward one peer.
pub fn states_and_policies(
    local: IpAddr,
    local_boot: &str,
    local_prefixes: &[Cidr],
    peer: &IpsecPeer,
    keys: &[IpsecKey],
) -> (Vec<State>, Vec<Policy>) {
    let mut states = Vec::new();
    for k in keys {
        let out_key = node_pair_key(&k.key, local, peer.address, local_boot, &peer.boot_id);
        let in_key = node_pair_key(&k.key, peer.address, local, &peer.boot_id, local_boot);
        let (out_key, in_key) = if k.per_tunnel { (out_key, in_key) } else { (k.key.clone(), k.key.clone()) };
        states.push(State {
            src: local,
            dst: peer.address,
            spi: u32::from(k.spi),
            reqid: REQID,
            aead: IPSEC_AEAD.into(),
            key: out_key,
            icv_bits: k.icv_bits,
            mark: Some(Mark { value: encrypt_mark(k.spi, peer.node_id), mask: MASK_OUT }),
        });
        states.push(State {
            src: peer.address,
            dst: local,
            spi: u32::from(k.spi),
            reqid: REQID,
            aead: IPSEC_AEAD.into(),
            key: in_key,
            icv_bits: k.icv_bits,
            mark: Some(Mark { value: decrypt_mark(peer.node_id), mask: MASK_IN }),
        });
    }
    let mut policies = Vec::new();
    for src in local_prefixes {
        for dst in peer.prefixes.iter().filter(|d| d.addr().is_ipv4() == src.addr().is_ipv4()) {
            policies.push(Policy {
                src: *src,
                dst: *dst,
                dir: Dir::Out,
                priority: 0,
                tmpl_src: local,
                tmpl_dst: peer.address,
                reqid: REQID,
                // Any SPI: the state's mark picks the key.
                mark: Some(Mark { value: MARK_ENCRYPT | (u32::from(peer.node_id) << 16), mask: 0xFFFF_0F00 }),
            });
            policies.push(Policy {
                src: *dst,
                dst: *src,
                dir: Dir::In,
                priority: 0,
                tmpl_src: peer.address,
                tmpl_dst: local,
                reqid: REQID,
                mark: Some(Mark { value: decrypt_mark(peer.node_id), mask: MASK_IN }),
            });
        }
    }
    (states, policies)
}

/// Whether this kernel can hold an ESP state: one is added on `nl` (a `NETLINK_XFRM`
/// socket, best in a scratch namespace) and removed again. The error names what is missing.
pub fn check_kernel(nl: &Netlink) -> Result<(), super::EncryptError> {
    let probe = State {
        src: "192.0.2.1".parse().expect("literal"),
        dst: "192.0.2.2".parse().expect("literal"),
        spi: 0x5155_0001,
        reqid: REQID,
        aead: IPSEC_AEAD.into(),
        key: vec![0x11; 20],
        icv_bits: 128,
        mark: Some(Mark { value: 0x5155_0000, mask: 0xFFFF_FFFF }),
    };
    match nl.add_xfrm_state(&probe) {
        Ok(()) => {
            let mut del = crate::netlink::Request::new(crate::netlink::xfrm::msg_type::DELSA, 0, "XFRM_MSG_DELSA probe");
            let mut id = Vec::with_capacity(24);
            id.extend_from_slice(&[192, 0, 2, 2]);
            id.resize(16, 0);
            id.extend_from_slice(&probe.spi.to_be_bytes());
            id.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            id.extend_from_slice(&[crate::netlink::xfrm::ESP, 0]);
            del.raw(&id);
            let _ = nl.ack(&mut del);
            Ok(())
        }
        Err(e) => Err(super::EncryptError::Unsupported(format!(
            "spec.encryption.mode ipsec: this kernel refuses an ESP state with {IPSEC_AEAD} ({}{}); \
             it needs {KERNEL_OPTIONS}. Use mode: wireguard (it runs in user space where the kernel has no WireGuard)",
            e.errno().map_or_else(|| e.to_string(), crate::netlink::errno_text),
            e.ext_ack().map(|a| format!(": {a}")).unwrap_or_default(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_ciliums() {
        // "Encrypt mark = 0x0E00 | spi<<12 | nodeID<<16; decrypt mark = 0x0D00 | nodeID<<16"
        let cases = [((3u8, 1u16), 0x0001_3E00u32, 0x0001_0D00u32), ((15, 0x1234), 0x1234_FE00, 0x1234_0D00)];
        for ((spi, node), enc, dec) in cases {
            assert_eq!(encrypt_mark(spi, node), enc, "encrypt mark spi {spi} node {node}");
            assert_eq!(decrypt_mark(node), dec, "decrypt mark node {node}");
            assert_eq!(encrypt_mark(spi, node) & MASK_OUT, enc, "the out mask keeps spi and node");
        }
    }

    #[test]
    fn the_newest_common_key_with_the_wrap() {
        // (local, peer) -> chosen: "use smaller of the two ... handle roll-over ... keys are
        // no more than one ahead"; zero if either has no key.
        let cases = [
            ((3, 3), 3),
            ((4, 3), 3),
            ((3, 4), 3),
            ((15, 1), 15),
            ((1, 15), 15),
            ((15, 14), 14),
            ((0, 5), 0),
            ((5, 0), 0),
        ];
        for ((local, peer), want) in cases {
            assert_eq!(choose_spi(local, peer), want, "local {local} peer {peer}");
        }
    }

    #[test]
    fn both_ends_derive_the_same_key_per_direction() {
        let global = [7u8; 20];
        let (a, b): (IpAddr, IpAddr) = ("172.16.0.1".parse().unwrap(), "172.16.0.2".parse().unwrap());
        let (ba, bb) = ("11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000");
        let a_out = node_pair_key(&global, a, b, ba, bb);
        let b_in = node_pair_key(&global, a, b, ba, bb);
        assert_eq!(a_out, b_in);
        assert_eq!(a_out.len(), 20, "truncated to the global key's length");
        assert_ne!(a_out, node_pair_key(&global, b, a, bb, ba), "each direction has its own key");
        assert_ne!(
            a_out,
            node_pair_key(&global, a, b, ba, "66666666-7777-8888-9999-000000000001"),
            "reboot changes it"
        );
        // SHA-256 of the concatenation, by hand.
        let mut input = global.to_vec();
        input.extend([172, 16, 0, 1, 172, 16, 0, 2]);
        input.extend(ba.as_bytes());
        input.extend(bb.as_bytes());
        assert_eq!(a_out, Sha256::digest(&input)[..20].to_vec());
        assert_eq!(node_pair_key(&[1; 36], a, b, ba, bb).len(), 36, "SHA-512 for long keys");
    }
}
