//! Policy entries: the rows of an endpoint's policy map, and how the datapath must read them.
//!
//! Contract:
//! - A [`PolicyEntry`] matches a packet's (peer identity, protocol, destination port) when
//!   `identity` is 0 or the peer's, `proto` is 0 or the packet's, and the first `port_prefix`
//!   bits of `port` equal those of the packet's port (ICMP: the ICMP type takes the port's
//!   place). `port_prefix` 16 is one port, 0 any port; the bits of `port` past the prefix are
//!   zero. An entry with `proto` 0 has `port` 0 and `port_prefix` 0.
//! - [`evaluate_entries`] is the verdict rule the datapath implements, written as the plain
//!   scan it is equivalent to: in a direction that is not enforced everything passes;
//!   otherwise a packet matched by any deny entry is dropped, else one matched by any allow
//!   entry passes, else it is dropped (default deny). Deny wins whatever the specificity: a
//!   datapath that looks entries up most-specific-first (exact identity before 0, exact port
//!   before shorter prefixes, exact protocol before 0) must not stop at the first allow it
//!   finds while a less specific key could still hold a deny. `resolve` guarantees that no
//!   allow entry is covered by a deny entry (one matching every packet the allow matches),
//!   and no entry by a more general entry of the same kind, so one longest-prefix lookup for
//!   the peer's identity and one for identity 0, a deny from either winning, decide exactly
//!   as this scan does (see `super::resolve`).
//! - [`port_blocks`] splits an inclusive port range into the fewest aligned prefix blocks.

use std::fmt;

/// One row of an endpoint's policy map for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// The peer's identity; 0 means any peer.
    pub identity: u32,
    /// IP protocol; 0 means any (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6, 132 SCTP).
    pub proto: u8,
    /// Destination port (host order), or ICMP type; its bits past `port_prefix` are zero.
    pub port: u16,
    /// How many leading bits of the port must match: 16 one port, 0 any port.
    pub port_prefix: u8,
    /// Drop what matches, whatever allows it.
    pub deny: bool,
    /// Redirect to this L7 proxy port (allow entries of rules with `rules.http`, see
    /// `super::redirect`); 0: none.
    pub proxy_port: u16,
}

impl PolicyEntry {
    /// Whether this entry matches a packet from/to a peer of identity `identity`.
    pub fn matches(&self, identity: u32, proto: u8, port: u16) -> bool {
        (self.identity == 0 || self.identity == identity)
            && (self.proto == 0 || self.proto == proto)
            && port_in_block(port, self.port, self.port_prefix)
    }

    /// The inclusive port range this entry covers.
    pub fn port_range(&self) -> (u16, u16) {
        let size = 1u32 << (16 - u32::from(self.port_prefix.min(16)));
        let last = u32::from(self.port) + size - 1;
        (self.port, u16::try_from(last).unwrap_or(u16::MAX))
    }
}

impl fmt::Display for PolicyEntry {
    /// `deny id=256 proto=6 port=80/16`, with `*` for wildcards.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.deny { "deny " } else { "allow" })?;
        match self.identity {
            0 => f.write_str(" id=*")?,
            id => write!(f, " id={id}")?,
        }
        match self.proto {
            0 => f.write_str(" proto=*")?,
            p => write!(f, " proto={p}")?,
        }
        match self.port_prefix {
            0 => f.write_str(" port=*"),
            16 => write!(f, " port={}", self.port),
            len => write!(f, " port={}/{len}", self.port),
        }
    }
}

/// Whether `port` lies in the block of `base` with `prefix` leading bits.
fn port_in_block(port: u16, base: u16, prefix: u8) -> bool {
    let prefix = u32::from(prefix.min(16));
    if prefix == 0 {
        return true;
    }
    let shift = 16 - prefix;
    (port >> shift) == (base >> shift)
}

/// A policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

/// The datapath's verdict for a packet with peer identity `peer_identity`, protocol `proto`
/// and destination port (or ICMP type) `port`, given an endpoint's entries for the packet's
/// direction and whether that direction is enforced.
pub fn evaluate_entries(
    entries: &[PolicyEntry],
    enforced: bool,
    peer_identity: u32,
    proto: u8,
    port: u16,
) -> Verdict {
    if !enforced {
        return Verdict::Allow;
    }
    let mut matching = entries.iter().filter(|e| e.matches(peer_identity, proto, port));
    let mut allowed = false;
    for entry in &mut matching {
        if entry.deny {
            return Verdict::Deny;
        }
        allowed = true;
    }
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

/// The fewest aligned blocks `(base, prefix)` covering `first..=last` exactly, in order.
/// `first > last` gives no block.
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    let (mut at, end) = (u32::from(first), u32::from(last));
    while at <= end {
        // The largest block that starts at `at` (alignment) and ends by `end`.
        let mut size_log = if at == 0 { 16 } else { at.trailing_zeros().min(16) };
        while at + (1 << size_log) - 1 > end {
            size_log -= 1;
        }
        // `at` is at most 65535 here and size_log at most 16.
        blocks.push((at as u16, (16 - size_log) as u8));
        at += 1 << size_log;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_minimal_and_exact() {
        assert_eq!(port_blocks(0, 65535), [(0, 0)]);
        assert_eq!(port_blocks(80, 80), [(80, 16)]);
        assert_eq!(port_blocks(80, 81), [(80, 15)]);
        assert_eq!(port_blocks(1, 65535).len(), 16);
        assert_eq!(port_blocks(8000, 8080), [(8000, 10), (8064, 12), (8080, 16)]);
        assert_eq!(port_blocks(65535, 65535), [(65535, 16)]);
        assert_eq!(port_blocks(5, 4), []);
        // Exhaustive over a window: the blocks tile the range exactly.
        for first in 0..300u16 {
            for last in first..300u16 {
                let blocks = port_blocks(first, last);
                let mut next = u32::from(first);
                for (base, prefix) in blocks {
                    assert_eq!(u32::from(base), next, "{first}..={last}");
                    let size = 1u32 << (16 - prefix);
                    assert_eq!(u32::from(base) % size, 0, "aligned");
                    next += size;
                }
                assert_eq!(next, u32::from(last) + 1, "{first}..={last}");
            }
        }
    }

    fn entry(identity: u32, proto: u8, port: u16, port_prefix: u8, deny: bool) -> PolicyEntry {
        PolicyEntry { identity, proto, port, port_prefix, deny, proxy_port: 0 }
    }

    #[test]
    fn deny_wins_then_allow_then_default_deny() {
        let entries = [entry(0, 6, 0, 0, false), entry(300, 6, 80, 15, true), entry(300, 0, 0, 0, false)];
        let cases = [
            (300, 6, 80, Verdict::Deny),
            (300, 6, 81, Verdict::Deny),
            (300, 6, 82, Verdict::Allow),
            (300, 17, 80, Verdict::Allow),
            (301, 6, 80, Verdict::Allow),
            (301, 17, 53, Verdict::Deny),
        ];
        for (id, proto, port, expected) in cases {
            assert_eq!(evaluate_entries(&entries, true, id, proto, port), expected, "{id} {proto} {port}");
            assert_eq!(evaluate_entries(&entries, false, id, proto, port), Verdict::Allow);
        }
        assert_eq!(evaluate_entries(&[], true, 1, 6, 80), Verdict::Deny);
        assert_eq!(entry(300, 6, 80, 15, true).to_string(), "deny  id=300 proto=6 port=80/15");
        assert_eq!(entry(0, 0, 0, 0, false).to_string(), "allow id=* proto=* port=*");
        assert_eq!(entry(0, 6, 8000, 12, false).port_range(), (8000, 8015));
        assert_eq!(entry(0, 6, 0, 0, false).port_range(), (0, 65535));
    }
}
