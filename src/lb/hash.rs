//! The flow hash: which Maglev slot (or random-selection bucket) a connection's 5-tuple picks.
//!
//! Contract:
//! - [`flow_hash`] is a pure function of a sequence of 32-bit words, defined below to the bit,
//!   so that user space (tests, `sluice service list`, the simulator's oracle) and a BPF program
//!   compute the same value. It is not keyed by a secret: it spreads flows, it does not defend
//!   against an attacker who picks source ports to load one backend (neither does kube-proxy's
//!   random choice, nor Maglev in the paper).
//! - Definition, all arithmetic on `u32` with wrap-around:
//!   ```text
//!   h = FLOW_HASH_SEED
//!   for each word w:  h = (h ^ w) * FLOW_HASH_MIX;  h = h ^ (h >> 15)
//!   finalize (murmur3 fmix32):
//!     h ^= h >> 16;  h *= 0x85ebca6b;  h ^= h >> 13;  h *= 0xc2b2ae35;  h ^= h >> 16
//!   ```
//!   In eBPF that is 5 instructions per word (`w32` xor, mul by immediate, mov, rsh, xor) and 11
//!   for the finalizer: 31 for an IPv4 tuple, 61 for IPv6, no helper call, no loop (the word
//!   count is fixed per family, so codegen unrolls it). The slot is then `h % M` (one `w32` mod
//!   by the table size as an immediate).
//! - The words of a tuple ([`words_v4`], [`words_v6`]) are the header bytes exactly as they sit
//!   in the packet, each group of four read as a little-endian `u32`: what `ldxw` yields on the
//!   little-endian machines BPF runs on (x86-64, arm64), so the datapath hashes the loaded
//!   fields without byte swaps. IPv4: `[saddr, daddr, ports, proto]`; IPv6: the four words of
//!   the source, the four of the destination, `ports`, `proto`. `ports` is the four bytes
//!   source port then destination port (the first word of a TCP, UDP or SCTP header); `proto`
//!   is the IP protocol number as a plain integer.
//! - The socket programs (`connect4`/`6`, `sendmsg4`/`6`) see the same fields in
//!   `bpf_sock_addr` in network byte order, but not the source port of a socket that is not
//!   bound yet; which word they put there is codegen's choice and must be documented with it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The starting value of [`flow_hash`]. Fixed: the datapath bakes it in.
pub const FLOW_HASH_SEED: u32 = 0x5eed_5c1e;

/// The per-word multiplier of [`flow_hash`]: 2^32 divided by the golden ratio, made odd.
pub const FLOW_HASH_MIX: u32 = 0x9e37_79b1;

/// The hash of `words`; see the module header for the definition.
pub fn flow_hash(words: &[u32]) -> u32 {
    let mut h = FLOW_HASH_SEED;
    for &w in words {
        h = (h ^ w).wrapping_mul(FLOW_HASH_MIX);
        h ^= h >> 15;
    }
    fmix32(h)
}

/// murmur3's 32-bit finalizer: every input bit affects every output bit.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The packet's bytes `[a, b, c, d]` as `ldxw` loads them on a little-endian machine.
fn word(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// The `ports` word: source port then destination port, in network byte order.
fn ports_word(src_port: u16, dst_port: u16) -> u32 {
    let [s0, s1] = src_port.to_be_bytes();
    let [d0, d1] = dst_port.to_be_bytes();
    word([s0, s1, d0, d1])
}

/// The words of an IPv4 5-tuple: `[saddr, daddr, ports, proto]`.
pub fn words_v4(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, proto: u8) -> [u32; 4] {
    [word(src.octets()), word(dst.octets()), ports_word(src_port, dst_port), u32::from(proto)]
}

/// The words of an IPv6 5-tuple: source (4), destination (4), `ports`, `proto`.
pub fn words_v6(src: Ipv6Addr, dst: Ipv6Addr, src_port: u16, dst_port: u16, proto: u8) -> [u32; 10] {
    let mut out = [0u32; 10];
    for (i, addr) in [src, dst].into_iter().enumerate() {
        for (j, chunk) in addr.octets().chunks_exact(4).enumerate() {
            out[i * 4 + j] = word([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
    }
    out[8] = ports_word(src_port, dst_port);
    out[9] = u32::from(proto);
    out
}

/// [`flow_hash`] of an IPv4 5-tuple.
pub fn hash_v4(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    flow_hash(&words_v4(src, dst, src_port, dst_port, proto))
}

/// [`flow_hash`] of an IPv6 5-tuple.
pub fn hash_v6(src: Ipv6Addr, dst: Ipv6Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    flow_hash(&words_v6(src, dst, src_port, dst_port, proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values (checked against an independent Python transcription of the definition):
    /// the datapath computes the same, so these never change.
    #[test]
    fn known_values() {
        assert_eq!(flow_hash(&[]), fmix32(FLOW_HASH_SEED));
        let cases: [(&[u32], u32); 3] =
            [(&[0], 0x9b20_9f4e), (&[1, 2, 3, 4], 0x621b_54b4), (&[u32::MAX; 10], 0x6b7b_e013)];
        let actual: Vec<(Vec<u32>, u32)> = cases.iter().map(|(w, _)| (w.to_vec(), flow_hash(w))).collect();
        let expected: Vec<(Vec<u32>, u32)> = cases.iter().map(|(w, h)| (w.to_vec(), *h)).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn words_are_the_packet_bytes_read_little_endian() {
        let w = words_v4(Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 96, 0, 10), 0x1234, 80, 6);
        assert_eq!(w, [0x0a01_000a, 0x0a00_600a, 0x5000_3412, 6]);
        let w6 = words_v6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2, 17);
        assert_eq!(w6, [0xfd, 0, 0, 0x0100_0000, 0xfd, 0, 0, 0x0200_0000, 0x0200_0100, 17]);
    }

    /// One flipped input bit flips about half the output bits, for every bit of every word.
    #[test]
    fn avalanche() {
        let base = words_v4(Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 96, 0, 10), 40000, 80, 6);
        let h0 = flow_hash(&base);
        let mut total = 0u32;
        let mut worst = 32u32;
        for i in 0..base.len() {
            for bit in 0..32 {
                let mut w = base;
                w[i] ^= 1 << bit;
                let flipped = (flow_hash(&w) ^ h0).count_ones();
                total += flipped;
                worst = worst.min(flipped);
            }
        }
        let mean = f64::from(total) / 128.0;
        assert!((14.0..=18.0).contains(&mean), "mean flipped bits {mean}");
        assert!(worst >= 4, "some input bit flips only {worst} output bits");
    }
}
