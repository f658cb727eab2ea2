//! The admin tiers (AdminNetworkPolicy, BaselineAdminNetworkPolicy) compiled into the one
//! policy table the datapath already reads.
//!
//! Contract of [`apply`]:
//! - For each subject (label-set identity of the node's endpoints) and direction where some
//!   admin policy selecting it has rules, the direction's entries are replaced by entries
//!   that give, for every peer identity of the table (reserved 1 to 10, every label-set and
//!   every CIDR identity: the ipcache gives no other), protocol and port, the verdict of the
//!   tiered evaluation that [`super::oracle::decide`] states: first matching ANP rule (by
//!   priority, then as written) unless it passes; then the NetworkPolicy/Cilium tier when it
//!   decides (a deny entry matches, or a rule isolates the subject); then the first matching
//!   baseline rule; else allow. The direction is then always enforced.
//! - So the datapath keeps its single rule (deny entry wins, else allow entry, else drop)
//!   and its two lookups: the tier order is resolved here, in userspace, once per policy
//!   change. Entries carry an exact identity (never 0): per identity and protocol, the ports
//!   are cut where any rule's ranges begin or end, each piece is evaluated once, and pieces
//!   that differ from the identity's verdict for "any other protocol" become entries (allow
//!   pieces when that verdict is deny, deny pieces over a protocol-0 allow otherwise).
//! - Cost: identities × protocols × cut points × rules per distinct (admin policies, resolution
//!   below, named ports) of the subjects; entries per such subject grow with the identities
//!   (one or more per identity whose verdict differs from default deny).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::anp::{AdminAction, AdminPolicy, AdminTier};
use crate::model::named_ports::ContainerPort;
use crate::model::policy::Protocol;
use crate::model::{Direction, Labels, NodeConfig};

use super::entry::{PolicyEntry, Verdict};
use super::identity::{Identity, IdentityTable};
use super::resolve::{canonical_entries, DirectionPolicy, EndpointPolicy, PeerIdentities, Raw};

/// The protocols whose ports policy can name; any other protocol is decided as one.
const NAMED_PROTOCOLS: [Protocol; 5] =
    [Protocol::Icmp, Protocol::Tcp, Protocol::Udp, Protocol::IcmpV6, Protocol::Sctp];
/// A protocol number no rule names, standing for "every other protocol".
const OTHER_PROTOCOL: u8 = 253;

/// One admin rule resolved for one subject: the peer identities it matches and, per
/// identity, its (protocol, first, last) ranges; `None` ranges: every protocol and port.
struct Resolved<'a> {
    action: AdminAction,
    identities: BTreeSet<u32>,
    ports: &'a crate::model::policy::PeerRule,
}

/// (admin policies selecting, address of the resolution below, named ports).
type SharedKey<'a> = (Vec<usize>, *const EndpointPolicy, &'a [ContainerPort]);

/// Replaces the entries of every subject direction an admin policy selects (see the module
/// contract).
pub(super) fn apply(
    cfg: &NodeConfig,
    identities: &IdentityTable,
    peers: &PeerIdentities<'_>,
    subjects: &[(Identity, &Labels)],
    policies: &mut BTreeMap<Identity, Arc<EndpointPolicy>>,
) {
    if cfg.admin_policies.is_empty() {
        return;
    }
    let all: Vec<u32> = (1..=10)
        .chain(identities.label_sets().map(|(id, _)| id.get()))
        .chain(identities.cidrs().map(|(_, id)| id.get()))
        .collect();
    // Subjects with the same admin policies, the same resolution below them (shared, so one
    // `Arc`, compared by address) and the same named ports get the same result: computed
    // once. Every resolution below is held for the whole loop, so no two are ever at one
    // address.
    let below: Vec<Arc<EndpointPolicy>> = policies.values().cloned().collect();
    let mut done: HashMap<SharedKey<'_>, Arc<EndpointPolicy>> = HashMap::new();
    for &(subject, labels) in subjects {
        let selected: Vec<usize> = (0..cfg.admin_policies.len())
            .filter(|&i| cfg.admin_policies[i].subject.matches(labels))
            .collect();
        let selecting: Vec<&AdminPolicy> = selected.iter().map(|&i| &cfg.admin_policies[i]).collect();
        let Some(current) = policies.get(&subject).cloned() else { continue };
        let key = (selected, Arc::as_ptr(&current), peers.ports_of(subject.get()));
        if let Some(result) = done.get(&key) {
            policies.insert(subject, result.clone());
            continue;
        }
        let mut updated = (*current).clone();
        for direction in Direction::ALL {
            if selecting.iter().all(|p| p.rules(direction).is_empty()) {
                continue;
            }
            let isolated = cfg
                .policies
                .iter()
                .flat_map(|p| &p.rules)
                .any(|r| r.subject.matches(labels) && r.direction(direction).enforced);
            let resolve = |tier_is_baseline: bool| -> Vec<Resolved<'_>> {
                selecting
                    .iter()
                    .filter(|p| (p.tier == AdminTier::Baseline) == tier_is_baseline)
                    .flat_map(|p| p.rules(direction))
                    .map(|r| Resolved {
                        action: r.action,
                        identities: r.matches.peers.iter().flat_map(|p| peers.of(p)).collect(),
                        ports: &r.matches,
                    })
                    .collect()
            };
            let (anp, banp) = (resolve(false), resolve(true));
            let np = current.direction(direction).clone();
            let subject_ports = peers.ports_of(subject.get());
            let mut raw = Vec::new();
            for &id in &all {
                // The named ports of the packet's destination: the subject for ingress, the
                // peer for egress.
                let destination = match direction {
                    Direction::Ingress => subject_ports,
                    Direction::Egress => peers.ports_of(id),
                };
                let l4 = |rule: &Resolved<'_>, proto: u8, port: u16| {
                    let p = rule.ports;
                    (p.l4.is_empty() && p.named_ports.is_empty())
                        || p.l4.iter().any(|m| m.matches(proto, port))
                        || p.named_ports.iter().any(|n| {
                            n.proto.number() == proto
                                && destination
                                    .iter()
                                    .any(|c| c.name == n.name && c.proto == n.proto && c.port == port)
                        })
                };
                let verdict = |proto: u8, port: u16| -> Verdict {
                    let hit = |r: &&Resolved<'_>| r.identities.contains(&id) || r.identities.contains(&0);
                    if let Some(rule) = anp.iter().filter(hit).find(|r| l4(r, proto, port)) {
                        match rule.action {
                            AdminAction::Allow => return Verdict::Allow,
                            AdminAction::Deny => return Verdict::Deny,
                            AdminAction::Pass => {}
                        }
                    }
                    let matching = || np.entries.iter().filter(|e| e.matches(id, proto, port));
                    if matching().any(|e| e.deny) {
                        return Verdict::Deny;
                    }
                    if isolated {
                        return if matching().next().is_some() { Verdict::Allow } else { Verdict::Deny };
                    }
                    match banp.iter().filter(hit).find(|r| l4(r, proto, port)).map(|r| r.action) {
                        Some(AdminAction::Deny) => Verdict::Deny,
                        _ => Verdict::Allow,
                    }
                };
                let other = verdict(OTHER_PROTOCOL, 0);
                if other == Verdict::Allow {
                    raw.push(Raw { deny: false, id, proto: 0, first: 0, last: u16::MAX });
                }
                for proto in NAMED_PROTOCOLS.map(Protocol::number) {
                    let cuts = cut_points(proto, id, &np.entries, anp.iter().chain(&banp), destination);
                    for (first, last) in pieces(&cuts) {
                        let v = verdict(proto, first);
                        if v != other {
                            raw.push(Raw { deny: v == Verdict::Deny, id, proto, first, last });
                        }
                    }
                }
            }
            // The L7 ports of the tier below stay redirected (`super::redirect`).
            let l7: Vec<super::redirect::L7Range> = np
                .entries
                .iter()
                .filter(|e| e.proxy_port != 0)
                .map(|e| {
                    let (first, last) = e.port_range();
                    super::redirect::L7Range { identity: e.identity, first, last }
                })
                .collect();
            let entries = super::redirect::apply_proxy_ports(
                canonical_entries(&mut raw),
                &l7,
                crate::proxy::LISTEN_PORT,
            );
            let policy = DirectionPolicy { enforced: true, entries };
            match direction {
                Direction::Ingress => updated.ingress = policy,
                Direction::Egress => updated.egress = policy,
            }
        }
        let updated = Arc::new(updated);
        done.insert(key, updated.clone());
        policies.insert(subject, updated);
    }
    drop(below);
}

/// The ports where some rule's range for `proto` begins, or ends + 1, plus 0: the verdict is
/// constant between two consecutive cut points.
fn cut_points<'a>(
    proto: u8,
    id: u32,
    entries: &[PolicyEntry],
    rules: impl Iterator<Item = &'a Resolved<'a>>,
    destination: &[crate::model::named_ports::ContainerPort],
) -> BTreeSet<u32> {
    let mut cuts = BTreeSet::from([0u32]);
    let mut add = |first: u16, last: u16| {
        cuts.insert(u32::from(first));
        cuts.insert(u32::from(last) + 1);
    };
    for e in entries.iter().filter(|e| (e.identity == 0 || e.identity == id) && e.proto == proto) {
        let (first, last) = e.port_range();
        add(first, last);
    }
    for rule in rules {
        for m in rule.ports.l4.iter().filter(|m| m.proto.number() == proto) {
            add(m.first, m.last);
        }
        for n in rule.ports.named_ports.iter().filter(|n| n.proto.number() == proto) {
            for c in destination.iter().filter(|c| c.name == n.name && c.proto == n.proto) {
                add(c.port, c.port);
            }
        }
    }
    cuts
}

/// The inclusive port ranges between consecutive cut points, up to 65535.
fn pieces(cuts: &BTreeSet<u32>) -> Vec<(u16, u16)> {
    let bounds: Vec<u32> = cuts.iter().copied().filter(|&c| c <= u32::from(u16::MAX)).collect();
    bounds
        .iter()
        .enumerate()
        .map(|(i, &first)| {
            let next = bounds.get(i + 1).copied().unwrap_or(u32::from(u16::MAX) + 1);
            // Both within 0..=65535 by the filter above.
            (first as u16, (next - 1) as u16)
        })
        .collect()
}
