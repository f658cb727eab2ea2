//! Proxy ports: which policy entries send their connections to the L7 proxy.
//!
//! Contract of [`apply_proxy_ports`]:
//! - An allow entry for TCP whose ports meet an L7 range (a port range of a peer rule with
//!   `rules.http`, for the entry's identity or for any identity) carries the proxy's port on
//!   exactly the ports of that range: an entry that lies inside L7 ranges gets the port, an
//!   entry that straddles one is split into aligned blocks ([`port_blocks`]), those inside
//!   with the port and the rest without. So an L7 port is never allowed by an entry without a
//!   proxy port (the L3/L4 allow of a port with HTTP rules always goes through the proxy),
//!   and no port outside the L7 ranges is redirected.
//! - Deny entries, other protocols and entries that meet no L7 range are unchanged; what the
//!   entries allow or deny is unchanged ([`super::entry::evaluate_entries`] decides as
//!   before). A split block whose key a deny entry already has is left out (the deny decides
//!   it either way).
//! - An L7 range of identity 0 (any peer) applies to every identity's entries. This may send
//!   a connection that a plain L3/L4 rule also allows to the proxy (Cilium does the same: the
//!   port is redirected, and the proxy's rules for that peer decide), never the other way
//!   round.
//! - Entries that an L7 range covers but that the canonical form dropped (a more general
//!   allow covers them) stay dropped: the general allow admits every request anyway.

use super::entry::{port_blocks, PolicyEntry};
use super::resolve::Raw;
use crate::uapi::IPPROTO_TCP;

/// One L7 port range: identity (0: any peer), first and last TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L7Range {
    pub identity: u32,
    pub first: u16,
    pub last: u16,
}

impl From<&Raw> for L7Range {
    fn from(r: &Raw) -> L7Range {
        L7Range { identity: r.id, first: r.first, last: r.last }
    }
}

/// See the module contract. `entries` is one endpoint direction's canonical entries (sorted);
/// the result is sorted too.
pub fn apply_proxy_ports(entries: Vec<PolicyEntry>, l7: &[L7Range], proxy_port: u16) -> Vec<PolicyEntry> {
    if l7.is_empty() || proxy_port == 0 {
        return entries;
    }
    let key = |e: &PolicyEntry| (e.identity, e.proto, e.port, e.port_prefix);
    let denied: std::collections::HashSet<(u32, u8, u16, u8)> =
        entries.iter().filter(|e| e.deny).map(key).collect();
    let tcp = IPPROTO_TCP as u8;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.deny || e.proto != tcp {
            out.push(e);
            continue;
        }
        let (lo, hi) = e.port_range();
        // The L7 parts of this entry's ports, merged.
        let mut parts: Vec<(u16, u16)> = l7
            .iter()
            .filter(|r| r.identity == 0 || r.identity == e.identity)
            .filter(|r| r.first <= hi && r.last >= lo)
            .map(|r| (r.first.max(lo), r.last.min(hi)))
            .collect();
        if parts.is_empty() {
            out.push(e);
            continue;
        }
        parts.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, z) in parts {
            match merged.last_mut() {
                Some(m) if u32::from(a) <= u32::from(m.1) + 1 => m.1 = m.1.max(z),
                _ => merged.push((a, z)),
            }
        }
        if merged == [(lo, hi)] {
            out.push(PolicyEntry { proxy_port, ..e });
            continue;
        }
        // Split: the L7 pieces with the proxy port, the gaps between them without.
        let mut pieces: Vec<(u16, u16, u16)> = Vec::new();
        let mut at = u32::from(lo);
        for &(a, z) in &merged {
            if u32::from(a) > at {
                pieces.push((at as u16, a - 1, 0));
            }
            pieces.push((a, z, proxy_port));
            at = u32::from(z) + 1;
        }
        if at <= u32::from(hi) {
            pieces.push((at as u16, hi, 0));
        }
        for (first, last, proxy) in pieces {
            for (port, port_prefix) in port_blocks(first, last) {
                let piece = PolicyEntry { port, port_prefix, proxy_port: proxy, ..e };
                if !denied.contains(&key(&piece)) {
                    out.push(piece);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::entry::{evaluate_entries, Verdict};

    fn allow(identity: u32, port: u16, port_prefix: u8) -> PolicyEntry {
        PolicyEntry { identity, proto: 6, port, port_prefix, deny: false, proxy_port: 0 }
    }

    /// The proxy port a packet's matching allow entries give, as the datapath's longest match
    /// in one identity's entries sees it.
    fn redirected(entries: &[PolicyEntry], identity: u32, port: u16) -> Option<u16> {
        entries
            .iter()
            .filter(|e| !e.deny && e.identity == identity && e.matches(identity, 6, port))
            .max_by_key(|e| e.port_prefix)
            .map(|e| e.proxy_port)
    }

    /// (entries, L7 ranges, ports that must go to the proxy, ports that must not)
    type Case = (Vec<PolicyEntry>, Vec<L7Range>, Vec<u16>, Vec<u16>);

    #[test]
    fn l7_ports_and_only_they_carry_the_proxy_port() {
        let cases: Vec<Case> = vec![
            // The L7 rule is the entry.
            (
                vec![allow(300, 80, 16)],
                vec![L7Range { identity: 300, first: 80, last: 80 }],
                vec![80],
                vec![],
            ),
            // The L7 port merged with a plain port into one block: split.
            (
                vec![allow(300, 80, 15)],
                vec![L7Range { identity: 300, first: 80, last: 80 }],
                vec![80],
                vec![81],
            ),
            // A range around the L7 port.
            (
                vec![allow(300, 64, 10)],
                vec![L7Range { identity: 300, first: 80, last: 81 }],
                vec![80, 81],
                vec![64, 79, 82, 127],
            ),
            // An any-identity L7 range applies to the identity's own entries.
            (
                vec![allow(300, 80, 15)],
                vec![L7Range { identity: 0, first: 81, last: 81 }],
                vec![81],
                vec![80],
            ),
            // Another identity's L7 range does not.
            (
                vec![allow(300, 80, 16)],
                vec![L7Range { identity: 301, first: 80, last: 80 }],
                vec![],
                vec![80],
            ),
        ];
        for (entries, l7, proxied, plain) in cases {
            let out = apply_proxy_ports(entries.clone(), &l7, 15001);
            for port in 0..=u16::MAX {
                assert_eq!(
                    evaluate_entries(&out, true, 300, 6, port),
                    evaluate_entries(&entries, true, 300, 6, port),
                    "verdicts unchanged at {port}: {entries:?} {l7:?} -> {out:?}"
                );
                let allowed = evaluate_entries(&out, true, 300, 6, port) == Verdict::Allow;
                let in_l7 = l7
                    .iter()
                    .any(|r| (r.identity == 0 || r.identity == 300) && (r.first..=r.last).contains(&port));
                if allowed {
                    assert_eq!(
                        redirected(&out, 300, port),
                        Some(if in_l7 { 15001 } else { 0 }),
                        "port {port}: {entries:?} {l7:?} -> {out:?}"
                    );
                }
            }
            for p in proxied {
                assert_eq!(redirected(&out, 300, p), Some(15001), "{p} proxied: {out:?}");
            }
            for p in plain {
                assert_eq!(redirected(&out, 300, p), Some(0), "{p} not proxied: {out:?}");
            }
        }
    }

    #[test]
    fn a_deny_keeps_its_key() {
        let deny = PolicyEntry { deny: true, ..allow(300, 81, 16) };
        let out = apply_proxy_ports(
            vec![allow(300, 80, 15), deny],
            &[L7Range { identity: 300, first: 80, last: 80 }],
            15001,
        );
        assert_eq!(out, vec![PolicyEntry { proxy_port: 15001, ..allow(300, 80, 16) }, deny]);
    }
}
