//! Resolution: the node's policies as policy-map entries per endpoint and direction.
//!
//! Contract of [`resolve`]:
//! - A pure, deterministic function of the [`NodeConfig`]: identities and the ipcache come
//!   from `super::identity` and `super::ipcache`; each endpoint gets, per direction,
//!   `enforced` (some policy rule selecting it is enforced in that direction: default deny;
//!   or some selecting rule denies in a direction no rule isolates, which is written as its
//!   deny entries plus one allow-everything entry) and a sorted list of [`PolicyEntry`]s.
//! - The node itself: in an ingress direction isolated by a rule that admits it
//!   ([`admits_node`]: a NetworkPolicy rule, or any rule when `allowLocalhost` is `always`),
//!   the host identity gets an allow entry for every protocol and port; deny entries still
//!   win over it. Endpoints with equal labels share an identity and
//!   so share their resolution.
//! - Peers become identities: `Endpoints(selector)` the label-set identities it matches;
//!   `Cidr(P except E..)` the CIDR identities of prefixes inside P and inside no E, plus
//!   world-ipv4/ipv6 when P is a default route (see `super::ipcache` for why the ipcache's
//!   longest-prefix match then gives exactly the addresses in P and in no E); entities:
//!   `all` -> 0 (any), `host` -> 1, `world` -> 2, 9, 10 and every CIDR identity (a CIDR
//!   identity is a piece of the world; the ipcache gives none to an address of the
//!   cluster), `cluster` -> every label-set identity (local and remote endpoints) plus host,
//!   unmanaged, health, init, remote-node and ingress (Cilium's cluster entity); the other
//!   reserved entities to their reserved identity (`unmanaged` 3, `health` 4, `init` 5,
//!   `remote-node` 6, `kube-apiserver` 7, `ingress` 8). With per-node identities
//!   (`policy.nodeSelectorLabels`), `remote-node` and `cluster` also take every node
//!   identity, and `Nodes(selector)` the node identities whose labels it matches.
//! - Subjects are the node's own endpoints: remote endpoints have identities (peers can
//!   select them) but no policy here; their own node enforces theirs.
//! - Ports become entries: a rule without ports gives protocol 0, port prefix 0; a port range
//!   gives the fewest aligned prefix blocks ([`super::entry::port_blocks`]); ICMP types are
//!   ports of protocol 1 or 58. A port name becomes the number the destination endpoint gives
//!   it: for ingress the subject's (so subjects with other named ports resolve apart), for
//!   egress each peer endpoint identity's own (an `all` peer: every label-set identity with
//!   that name); no entry where the destination has no such port.
//! - Canonical form, so that equivalent policies give identical entries (DESIGN invariant 5):
//!   per (deny, identity, protocol) the port ranges of every rule are merged before they are
//!   split into blocks (80-85 plus 86-90 is 80-90); then a block is dropped when a more
//!   general entry of the same kind covers it (identity 0 covers every identity, protocol 0
//!   every protocol), and an allow block is dropped when a deny covers it. Neither changes
//!   what [`super::entry::evaluate_entries`] decides.
//! - Evaluation: the datapath must decide as [`super::entry::evaluate_entries`] does: any
//!   matching deny entry drops, else any matching allow entry passes, else (enforced) drop.
//!   Because of the canonical form, two longest-prefix lookups decide the same way: over keys
//!   ordered (identity, protocol, port bits), with protocol 0 meaning a key that ends after
//!   the identity, look up the peer's identity and identity 0; drop if either finds a deny,
//!   pass if either finds an allow, else drop. (Two entries that match one packet in one
//!   lookup nest; were the longer an allow and the shorter a deny, the allow would be covered
//!   by the deny and so absent.) `tests/policy_resolution.rs` checks this on every random
//!   flow.
//! - Cost: each rule's peers and ports are resolved once, and identical peer rules are stored
//!   once; subjects selected by the same set of rules share one resolution (one merge and sort
//!   per direction). The size test in `tests/policy_resolution.rs` prints the time for 1,000
//!   endpoints with over 100 rules each (about 11 ms in a release build; 80 ms when every
//!   endpoint has its own label set).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::named_ports::{ContainerPort, NamedPortMatch};
use crate::model::policy::{DirectionRules, Entity, Peer, PolicyKind};
use crate::model::policy_settings::AllowLocalhost;
use crate::model::{Direction, NodeConfig};

use super::entry::{port_blocks, PolicyEntry};
use super::identity::{Identity, IdentityTable};
use super::ipcache::IpCache;
use super::PolicyError;

/// The reserved identities Cilium's `cluster` entity selects besides the endpoints: "This
/// includes all Cilium-managed endpoints of the local cluster, unmanaged endpoints in the
/// local cluster, as well as the host, remote-node, and init identities" (Cilium,
/// Documentation/security/policy/language.rst, Entities Based); health and ingress are
/// endpoints of the cluster too.
const CLUSTER_RESERVED: [Identity; 6] = [
    Identity::HOST,
    Identity::UNMANAGED,
    Identity::HEALTH,
    Identity::INIT,
    Identity::REMOTE_NODE,
    Identity::INGRESS,
];

/// One endpoint direction, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// The policy map decides this direction: some rule selecting the endpoint is enforced
    /// in it (default deny), or some selecting rule denies in it (then an allow-everything
    /// entry stands for "not isolated").
    pub enforced: bool,
    /// Sorted by [`PolicyEntry`]'s order; no two share a key (identity, protocol, port,
    /// prefix); empty when not enforced.
    pub entries: Vec<PolicyEntry>,
}

/// Both directions of one endpoint (of one label-set identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The node's resolved policy: identities, ipcache and each endpoint's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    identities: IdentityTable,
    ipcache: IpCache,
    /// Keyed by the subject's label-set identity; subjects selected by the same rules share
    /// one value.
    policies: BTreeMap<Identity, Arc<EndpointPolicy>>,
}

impl Resolved {
    pub fn identities(&self) -> &IdentityTable {
        &self.identities
    }

    pub fn ipcache(&self) -> &IpCache {
        &self.ipcache
    }

    /// The policy of the endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointPolicy> {
        self.identities.endpoint(name).and_then(|id| self.of_identity(id))
    }

    /// The policy of the endpoints with label-set identity `id`.
    pub fn of_identity(&self, id: Identity) -> Option<&EndpointPolicy> {
        self.policies.get(&id).map(|p| &**p)
    }

    /// Every label-set identity's policy, by identity.
    pub fn policies(&self) -> impl Iterator<Item = (Identity, &EndpointPolicy)> + '_ {
        self.policies.iter().map(|(id, p)| (*id, &**p))
    }
}

/// One direction of one rule, resolved: whether it is enforced, and the pieces (indices into
/// [`Pieces`]) it names.
struct RuleDirection {
    enforced: bool,
    /// Sorted, deduplicated.
    pieces: Vec<usize>,
    /// Ingress port names, which depend on the subject.
    named_ingress: Vec<NamedIngress>,
    /// The port ranges of allow rules with L7 (`rules.http`) rules: their entries carry the
    /// proxy port (`super::redirect`).
    l7: Vec<super::redirect::L7Range>,
}

/// Peer rules as (deny, identity, protocol, port range) lists, each distinct list stored once:
/// policies repeat themselves (the same "allow DNS" or "deny from world" in many rules), and a
/// piece shared by several rules selecting one subject enters its merge once.
#[derive(Default)]
struct Pieces {
    lists: Vec<Vec<Raw>>,
    index: HashMap<Vec<Raw>, usize>,
}

impl Pieces {
    fn intern(&mut self, raw: Vec<Raw>) -> usize {
        if let Some(&i) = self.index.get(&raw) {
            return i;
        }
        self.lists.push(raw.clone());
        self.index.insert(raw, self.lists.len() - 1);
        self.lists.len() - 1
    }
}

/// Resolves every endpoint's policy.
pub fn resolve(cfg: &NodeConfig) -> Result<Resolved, PolicyError> {
    let identities = IdentityTable::allocate(cfg)?;
    let ipcache = IpCache::build(cfg, &identities);
    let local: std::collections::BTreeSet<&crate::model::Labels> =
        cfg.endpoints.iter().map(|e| &e.labels).collect();
    let subjects: Vec<(Identity, &crate::model::Labels)> =
        identities.label_sets().filter(|(_, labels)| local.contains(labels)).collect();
    let peers = PeerIdentities::new(&identities, cfg);

    // Each rule once: which subjects it selects, and what it names per direction.
    let mut pieces = Pieces::default();
    let rules: Vec<(Vec<bool>, [RuleDirection; 2], bool)> = cfg
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().map(move |rule| (p.kind, rule)))
        .map(|(kind, rule)| {
            let selects = subjects.iter().map(|(_, labels)| rule.subject.matches(labels)).collect();
            let directions =
                Direction::ALL.map(|d| rule_direction(rule.direction(d), d, &peers, &mut pieces));
            (selects, directions, admits_node(cfg, kind))
        })
        .collect();

    // A subject's policy depends only on which rules select it and on its named ports:
    // subjects selected by the same rules, with the same named ports, share one resolution.
    let mut by_rule_set: HashMap<(Vec<usize>, &[ContainerPort]), Arc<EndpointPolicy>> = HashMap::new();
    let mut policies = BTreeMap::new();
    for (index, (subject, _)) in subjects.iter().enumerate() {
        let selecting: Vec<usize> = (0..rules.len()).filter(|&r| rules[r].0[index]).collect();
        let ports = peers.ports_of(subject.get());
        let policy = by_rule_set
            .entry((selecting, ports))
            .or_insert_with_key(|(selecting, ports)| {
                let [ingress, egress] = [0, 1].map(|d| {
                    let enforcing = || selecting.iter().filter(|&&r| rules[r].1[d].enforced);
                    let enforced = enforcing().next().is_some();
                    let mut used: Vec<usize> =
                        selecting.iter().flat_map(|&r| rules[r].1[d].pieces.iter().copied()).collect();
                    used.sort_unstable();
                    used.dedup();
                    let mut raw: Vec<Raw> =
                        used.iter().flat_map(|&i| pieces.lists[i].iter().copied()).collect();
                    raw.extend(
                        selecting
                            .iter()
                            .flat_map(|&r| &rules[r].1[d].named_ingress)
                            .flat_map(|n| n.raw(ports)),
                    );
                    if !enforced {
                        // Not isolated: only deny rules (of rules with default deny off) can
                        // drop. As entries: those denies plus allow-everything.
                        raw.retain(|r| r.deny);
                        if raw.is_empty() {
                            return DirectionPolicy::default();
                        }
                        raw.push(Raw { deny: false, id: 0, proto: 0, first: 0, last: u16::MAX });
                    } else if d == 0 && enforcing().any(|&r| rules[r].2) {
                        raw.push(Raw {
                            deny: false,
                            id: Identity::HOST.get(),
                            proto: 0,
                            first: 0,
                            last: u16::MAX,
                        });
                    }
                    let l7: Vec<super::redirect::L7Range> =
                        selecting.iter().flat_map(|&r| rules[r].1[d].l7.iter().copied()).collect();
                    let entries = super::redirect::apply_proxy_ports(
                        canonical_entries(&mut raw),
                        &l7,
                        crate::proxy::LISTEN_PORT,
                    );
                    DirectionPolicy { enforced: true, entries }
                });
                Arc::new(EndpointPolicy { ingress, egress })
            })
            .clone();
        policies.insert(*subject, policy);
    }
    // The admin tiers, where an AdminNetworkPolicy or BaselineAdminNetworkPolicy selects a
    // subject: its entries are recomputed per peer identity (`super::tiers`).
    super::tiers::apply(cfg, &identities, &peers, &subjects, &mut policies);
    Ok(Resolved { identities, ipcache, policies })
}

/// Whether ingress isolation by a rule of a policy of `kind` still admits the node itself
/// (see `crate::model::policy_settings`): always for NetworkPolicy, per `allowLocalhost`
/// for Cilium's policies.
pub fn admits_node(cfg: &NodeConfig, kind: PolicyKind) -> bool {
    kind == PolicyKind::NetworkPolicy || cfg.policy.allow_localhost == AllowLocalhost::Always
}

fn rule_direction(
    rules: &DirectionRules,
    direction: Direction,
    peers: &PeerIdentities,
    pieces: &mut Pieces,
) -> RuleDirection {
    let mut used = Vec::new();
    let mut named_ingress = Vec::new();
    let mut l7 = Vec::new();
    for (list, deny) in [(&rules.allow, false), (&rules.deny, true)] {
        for rule in list {
            let mut identities: Vec<u32> = rule.peers.iter().flat_map(|p| peers.of(p)).collect();
            identities.sort_unstable();
            identities.dedup();
            if identities.first() == Some(&0) {
                identities.truncate(1);
            }
            let l4: Vec<(u8, u16, u16)> = if rule.l4.is_empty() && rule.named_ports.is_empty() {
                vec![(0, 0, u16::MAX)]
            } else {
                rule.l4.iter().map(|m| (m.proto.number(), m.first, m.last)).collect()
            };
            let mut raw: Vec<Raw> = identities
                .iter()
                .flat_map(|&id| {
                    l4.iter().map(move |&(proto, first, last)| Raw { deny, id, proto, first, last })
                })
                .collect();
            if !deny && rule.http.is_some() {
                l7.extend(raw.iter().map(super::redirect::L7Range::from));
            }
            if !rule.named_ports.is_empty() {
                match direction {
                    // The subject's named ports: resolved per subject.
                    Direction::Ingress => named_ingress.push(NamedIngress {
                        deny,
                        identities: identities.clone(),
                        names: rule.named_ports.clone(),
                    }),
                    // The peer's named ports: each peer endpoint identity at its own number;
                    // addresses outside the endpoints have no named ports.
                    Direction::Egress => raw.extend(peers.named(&identities, &rule.named_ports, deny)),
                }
            }
            used.push(pieces.intern(raw));
        }
    }
    used.sort_unstable();
    used.dedup();
    RuleDirection { enforced: rules.enforced, pieces: used, named_ingress, l7 }
}

/// An ingress peer rule's port names, resolved against each subject's named ports.
#[derive(Debug, Clone)]
struct NamedIngress {
    deny: bool,
    /// The peer identities (0: any).
    identities: Vec<u32>,
    names: Vec<NamedPortMatch>,
}

impl NamedIngress {
    /// The entries for a subject with `ports`.
    fn raw<'a>(&'a self, ports: &'a [ContainerPort]) -> impl Iterator<Item = Raw> + 'a {
        self.names.iter().flat_map(move |n| {
            let number = ports
                .iter()
                .find(|p| p.name == n.name && p.proto == n.proto)
                .map(|p| (n.proto.number(), p.port));
            number.into_iter().flat_map(move |(proto, port)| {
                self.identities.iter().map(move |&id| Raw {
                    deny: self.deny,
                    id,
                    proto,
                    first: port,
                    last: port,
                })
            })
        })
    }
}

/// Peer -> identities, against one identity table.
pub(super) struct PeerIdentities<'a> {
    identities: &'a IdentityTable,
    label_sets: Vec<u32>,
    cidrs: Vec<u32>,
    /// Each label-set identity's named ports (its endpoints all have the same: the model
    /// checks it).
    ports: BTreeMap<u32, &'a [ContainerPort]>,
}

impl<'a> PeerIdentities<'a> {
    pub(super) fn new(identities: &'a IdentityTable, cfg: &'a NodeConfig) -> PeerIdentities<'a> {
        PeerIdentities {
            identities,
            label_sets: identities.label_sets().map(|(id, _)| id.get()).collect(),
            cidrs: identities.cidrs().map(|(_, id)| id.get()).collect(),
            ports: cfg
                .endpoints
                .iter()
                .filter_map(|e| identities.endpoint(&e.name).map(|id| (id.get(), &e.ports[..])))
                .collect(),
        }
    }

    /// The named ports of label-set identity `id` (none for other identities).
    pub(super) fn ports_of(&self, id: u32) -> &'a [ContainerPort] {
        self.ports.get(&id).copied().unwrap_or_default()
    }

    /// Entries for `names` of the peer identities `ids` (0: every label-set identity), each
    /// at the number its endpoints give the name.
    fn named<'b>(
        &'b self,
        ids: &'b [u32],
        names: &'b [NamedPortMatch],
        deny: bool,
    ) -> impl Iterator<Item = Raw> + 'b {
        let ids: &[u32] = if ids.first() == Some(&0) { &self.label_sets } else { ids };
        ids.iter().flat_map(move |&id| {
            names.iter().filter_map(move |n| {
                let port = self.ports_of(id).iter().find(|p| p.name == n.name && p.proto == n.proto)?.port;
                Some(Raw { deny, id, proto: n.proto.number(), first: port, last: port })
            })
        })
    }

    /// The node identities whose labels pass `keep`.
    fn node_ids<'b>(
        &'b self,
        keep: impl Fn(&crate::model::Labels) -> bool + 'b,
    ) -> impl Iterator<Item = u32> + 'b {
        self.identities.node_sets().filter(move |(_, labels)| keep(labels)).map(|(id, _)| id.get())
    }

    pub(super) fn of(&self, peer: &Peer) -> Vec<u32> {
        match peer {
            Peer::Entity(Entity::All) => vec![0],
            Peer::Entity(Entity::Host) => vec![Identity::HOST.get()],
            // With per-node identities, each is a remote node too.
            Peer::Entity(Entity::RemoteNode) => {
                std::iter::once(Identity::REMOTE_NODE.get()).chain(self.node_ids(|_| true)).collect()
            }
            Peer::Nodes(selector) => self.node_ids(|labels| selector.matches(labels)).collect(),
            Peer::Entity(Entity::KubeApiserver) => vec![Identity::KUBE_APISERVER.get()],
            Peer::Entity(Entity::Health) => vec![Identity::HEALTH.get()],
            Peer::Entity(Entity::Init) => vec![Identity::INIT.get()],
            Peer::Entity(Entity::Ingress) => vec![Identity::INGRESS.get()],
            Peer::Entity(Entity::Unmanaged) => vec![Identity::UNMANAGED.get()],
            Peer::Entity(Entity::World) => [Identity::WORLD, Identity::WORLD_IPV4, Identity::WORLD_IPV6]
                .iter()
                .map(|id| id.get())
                .chain(self.cidrs.iter().copied())
                .collect(),
            Peer::Entity(Entity::Cluster) => CLUSTER_RESERVED
                .iter()
                .map(|id| id.get())
                .chain(self.label_sets.iter().copied())
                .chain(self.node_ids(|_| true))
                .collect(),
            Peer::Endpoints(selector) => self
                .identities
                .label_sets()
                .filter(|(_, labels)| selector.matches(labels))
                .map(|(id, _)| id.get())
                .collect(),
            Peer::Cidr(rule) => {
                let inside = |c: &crate::model::Cidr| {
                    rule.cidr.contains_cidr(c) && !rule.except.iter().any(|e| e.contains_cidr(c))
                };
                let mut ids: Vec<u32> =
                    self.identities.cidrs().filter(|(c, _)| inside(c)).map(|(_, id)| id.get()).collect();
                if rule.cidr.len() == 0 && inside(&rule.cidr) {
                    ids.push(match rule.cidr.family() {
                        crate::model::Family::V4 => Identity::WORLD_IPV4.get(),
                        crate::model::Family::V6 => Identity::WORLD_IPV6.get(),
                    });
                }
                ids
            }
        }
    }
}

/// One (identity, protocol, port range) a rule allows or denies, before canonicalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Raw {
    pub(super) deny: bool,
    pub(super) id: u32,
    pub(super) proto: u8,
    pub(super) first: u16,
    pub(super) last: u16,
}

/// Merged port ranges of one (deny, identity, protocol).
struct Group {
    key: (bool, u32, u8),
    /// Sorted, disjoint, not adjacent: the maximal ranges.
    ranges: Vec<(u32, u32)>,
}

/// The canonical entries of one endpoint direction (see the module contract). Sorts `raw`.
pub(super) fn canonical_entries(raw: &mut [Raw]) -> Vec<PolicyEntry> {
    raw.sort_unstable();
    let mut groups: Vec<Group> = Vec::new();
    for r in raw.iter() {
        let key = (r.deny, r.id, r.proto);
        let (first, last) = (u32::from(r.first), u32::from(r.last));
        match groups.last_mut() {
            Some(group) if group.key == key => match group.ranges.last_mut() {
                // Sorted by first, so only the last range can touch this one.
                Some(range) if first <= range.1 + 1 => range.1 = range.1.max(last),
                _ => group.ranges.push((first, last)),
            },
            _ => groups.push(Group { key, ranges: vec![(first, last)] }),
        }
    }
    // Only keys with a wildcard (identity 0 or protocol 0) can cover a group other than the
    // exact deny of an allow; there are few of them, so look those up in a small map.
    let wildcards: HashMap<(bool, u32, u8), usize> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.key.1 == 0 || g.key.2 == 0)
        .map(|(i, g)| (g.key, i))
        .collect();
    let first_deny = groups.partition_point(|g| !g.key.0);
    let covered = |group: &Group, (first, last): (u32, u32)| {
        // The last range starting at or before `first` is the only candidate.
        let at = group.ranges.partition_point(|r| r.0 <= first);
        at > 0 && group.ranges[at - 1].1 >= last
    };
    let covers = |key: (bool, u32, u8), range: (u32, u32)| {
        let group = if key.1 == 0 || key.2 == 0 {
            wildcards.get(&key).map(|&i| &groups[i])
        } else {
            groups[first_deny..].binary_search_by(|g| g.key.cmp(&key)).ok().map(|i| &groups[first_deny + i])
        };
        group.is_some_and(|g| covered(g, range))
    };
    let mut entries = Vec::new();
    for group in &groups {
        let (deny, id, proto) = group.key;
        let general = [(deny, 0, proto), (deny, id, 0), (deny, 0, 0)];
        let denials = [(true, id, proto), (true, 0, proto), (true, id, 0), (true, 0, 0)];
        let check_general = !wildcards.is_empty();
        let check_denials = !deny && first_deny < groups.len();
        for &(first, last) in &group.ranges {
            let blocks = if proto == 0 {
                // Any protocol: one entry for every port (the range is always all of them).
                vec![(0, 0)]
            } else {
                // Ranges come from u16 bounds, so they convert back.
                port_blocks(first as u16, last as u16)
            };
            for (port, port_prefix) in blocks {
                let range = (u32::from(port), u32::from(port) + (1 << (16 - u32::from(port_prefix))) - 1);
                let redundant = (check_general
                    && general.iter().any(|&k| k != group.key && covers(k, range)))
                    || (check_denials && denials.iter().any(|&k| covers(k, range)));
                if !redundant {
                    entries.push(PolicyEntry { identity: id, proto, port, port_prefix, deny, proxy_port: 0 });
                }
            }
        }
    }
    entries.sort_unstable();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(deny: bool, id: u32, proto: u8, first: u16, last: u16) -> Raw {
        Raw { deny, id, proto, first, last }
    }

    fn show(entries: &[PolicyEntry]) -> Vec<String> {
        entries.iter().map(PolicyEntry::to_string).collect()
    }

    #[test]
    fn ranges_merge_before_splitting() {
        let mut one = [raw(false, 300, 6, 80, 90)];
        let mut two = [raw(false, 300, 6, 86, 90), raw(false, 300, 6, 80, 85), raw(false, 300, 6, 82, 83)];
        assert_eq!(canonical_entries(&mut one), canonical_entries(&mut two));
        assert_eq!(
            show(&canonical_entries(&mut one)),
            [
                "allow id=300 proto=6 port=80/13",
                "allow id=300 proto=6 port=88/15",
                "allow id=300 proto=6 port=90"
            ]
        );
    }

    #[test]
    fn covered_ranges_are_dropped() {
        let mut raw = [
            raw(false, 0, 6, 80, 80), // covered by the any-protocol allow of any peer
            raw(false, 0, 0, 0, 65535),
            raw(false, 300, 17, 53, 53), // covered by the line above
            raw(true, 300, 6, 0, 65535),
            raw(true, 300, 6, 22, 22),    // covered by the deny above
            raw(false, 300, 6, 443, 443), // covered by the deny of all TCP ports
        ];
        assert_eq!(
            show(&canonical_entries(&mut raw)),
            ["allow id=* proto=* port=*", "deny  id=300 proto=6 port=*"]
        );
    }
}
