//! Security identities: the numbers policy is written against in the datapath.
//!
//! Contract:
//! - Reserved identities carry Cilium's numbers (`pkg/identity/numericidentity.go`): host 1,
//!   world 2, unmanaged 3, health 4, init 5, remote-node 6, kube-apiserver 7, ingress 8,
//!   world-ipv4 9, world-ipv6 10. 0 is never an identity; in a policy entry it means "any".
//! - Label-set identities: every distinct endpoint label set (the endpoint's labels with its
//!   namespace label) gets one number in `256..=65535` (Cilium's cluster-local range). The
//!   number is the FNV-1a hash of the set's canonical text (`k8s:key=value;` per label, keys
//!   sorted) reduced into the range; on collision, the next free number (wrapping), with the
//!   sets taken in sorted order. So a label set keeps its number in any run and whatever the
//!   order of the node file, and changes only if a set it collides with comes or goes.
//!   Endpoints with equal label sets share an identity. The label sets are those of the
//!   node's endpoints and of the endpoints its overlay peers declare (remote endpoints get
//!   identities so label selectors select them). In cluster mode
//!   ([`NodeConfig::cluster_identities`], allocated once for the cluster in etcd) a set takes
//!   its cluster number; only sets without one are hashed, into the numbers left free.
//! - CIDR identities: every prefix used by a rule (CIDR peers and their excepts), except the
//!   default routes, gets a local-scope identity `1 << 24 | n`, `n` counting from 1 over the
//!   prefixes in sorted order ([`Cidr`]'s order). The default routes are the world identities
//!   `0.0.0.0/0` -> world-ipv4 and `::/0` -> world-ipv6, as Cilium does on a dual-stack node.
//! - Node identities, with `policy.nodeSelectorLabels` only (Cilium's
//!   `enable-node-selector-labels`: "every cilium-agent allocates a different local security
//!   identity for all other nodes. But instead of using local scoped identity it uses
//!   remote-node scoped identity range"): every distinct label set of the overlay peers gets
//!   `2 << 24 | n` (Cilium's remote-node scope), `n` counting from 1 over the sets in sorted
//!   order; peers with equal labels share one. Without the setting every peer is
//!   remote-node (6).
//! - [`IdentityTable::allocate`] is a pure function of the config; it fails only when the
//!   label sets do not fit the range.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::policy::{Direction, Peer};
use crate::model::{Cidr, Labels, NodeConfig};

use super::PolicyError;

/// A security identity number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(u32);

impl Identity {
    pub const HOST: Identity = Identity(1);
    pub const WORLD: Identity = Identity(2);
    pub const UNMANAGED: Identity = Identity(3);
    pub const HEALTH: Identity = Identity(4);
    pub const INIT: Identity = Identity(5);
    pub const REMOTE_NODE: Identity = Identity(6);
    pub const KUBE_APISERVER: Identity = Identity(7);
    pub const INGRESS: Identity = Identity(8);
    pub const WORLD_IPV4: Identity = Identity(9);
    pub const WORLD_IPV6: Identity = Identity(10);

    /// The first and last label-set identity.
    pub const FIRST_LABEL_SET: u32 = 256;
    pub const LAST_LABEL_SET: u32 = 65535;
    /// The bit that marks node-local identities (CIDR identities).
    pub const LOCAL_SCOPE: u32 = 1 << 24;
    /// The bit that marks per-node identities (Cilium's remote-node scope).
    pub const REMOTE_NODE_SCOPE: u32 = 2 << 24;

    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is a reserved identity (1..=10).
    pub fn is_reserved(self) -> bool {
        (1..=10).contains(&self.0)
    }

    /// Whether this is a local-scope (CIDR) identity.
    pub fn is_cidr(self) -> bool {
        self.0 & Identity::LOCAL_SCOPE != 0
    }

    /// Whether this is one of the world identities (2, 9, 10).
    pub fn is_world(self) -> bool {
        matches!(self, Identity::WORLD | Identity::WORLD_IPV4 | Identity::WORLD_IPV6)
    }

    /// Cilium's name of a reserved identity.
    pub fn reserved_name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "host",
            2 => "world",
            3 => "unmanaged",
            4 => "health",
            5 => "init",
            6 => "remote-node",
            7 => "kube-apiserver",
            8 => "ingress",
            9 => "world-ipv4",
            10 => "world-ipv6",
            _ => return None,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reserved_name() {
            Some(name) => write!(f, "{} (reserved:{name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The identities of one node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityTable {
    by_labels: BTreeMap<Labels, Identity>,
    /// The same, keyed by identity.
    labels_of: BTreeMap<Identity, Labels>,
    endpoints: BTreeMap<String, Identity>,
    cidrs: BTreeMap<Cidr, Identity>,
    /// Overlay peer name -> its node identity (with `policy.nodeSelectorLabels` only).
    nodes: BTreeMap<String, Identity>,
    /// Each node identity's labels.
    node_labels: BTreeMap<Identity, Labels>,
}

impl IdentityTable {
    /// Allocates identities for every endpoint label set and every CIDR used by a rule.
    pub fn allocate(cfg: &NodeConfig) -> Result<IdentityTable, PolicyError> {
        let sets: std::collections::BTreeSet<&Labels> = cfg
            .endpoints
            .iter()
            .map(|e| &e.labels)
            .chain(cfg.remote_endpoints().map(|(_, e)| &e.labels))
            .collect();
        let capacity = (Identity::LAST_LABEL_SET - Identity::FIRST_LABEL_SET + 1) as usize;
        if sets.len() > capacity {
            return Err(PolicyError::LabelIdentitiesExhausted { label_sets: sets.len(), capacity });
        }
        let mut by_labels = BTreeMap::new();
        let mut labels_of: BTreeMap<Identity, Labels> = BTreeMap::new();
        let in_range = |n: u32| (Identity::FIRST_LABEL_SET..=Identity::LAST_LABEL_SET).contains(&n);
        for labels in &sets {
            match cfg.cluster_identities.get(*labels) {
                Some(&n) if in_range(n) && !labels_of.contains_key(&Identity(n)) => {
                    by_labels.insert((*labels).clone(), Identity(n));
                    labels_of.insert(Identity(n), (*labels).clone());
                }
                _ => {}
            }
        }
        for labels in sets {
            if by_labels.contains_key(labels) {
                continue;
            }
            let mut n = label_set_slot(labels);
            // Fewer sets than slots, so a free slot exists and the probe ends.
            while labels_of.contains_key(&Identity(n)) {
                n = if n == Identity::LAST_LABEL_SET { Identity::FIRST_LABEL_SET } else { n + 1 };
            }
            by_labels.insert(labels.clone(), Identity(n));
            labels_of.insert(Identity(n), labels.clone());
        }
        let endpoints = cfg.endpoints.iter().map(|e| (e.name.clone(), by_labels[&e.labels])).collect();

        let mut used: Vec<Cidr> = rule_cidrs(cfg).filter(|c| c.len() > 0).collect();
        used.sort();
        used.dedup();
        let cidrs = used
            .into_iter()
            .zip(1u32..)
            .map(|(cidr, n)| (cidr, Identity(Identity::LOCAL_SCOPE | n)))
            .collect();
        let peers = cfg.overlay.iter().flat_map(|o| &o.peers).filter(|_| cfg.policy.node_selector_labels);
        let node_sets: std::collections::BTreeSet<&Labels> = peers.clone().map(|p| &p.labels).collect();
        let node_labels: BTreeMap<Identity, Labels> = node_sets
            .into_iter()
            .zip(1u32..)
            .map(|(labels, n)| (Identity(Identity::REMOTE_NODE_SCOPE | n), labels.clone()))
            .collect();
        let nodes = peers
            .map(|p| {
                let id = node_labels.iter().find(|(_, l)| **l == p.labels).map(|(id, _)| *id);
                (p.name.clone(), id.expect("every peer's label set got an identity above"))
            })
            .collect();
        Ok(IdentityTable { by_labels, labels_of, endpoints, cidrs, nodes, node_labels })
    }

    /// The identity of the overlay peer called `name`, when nodes have their own.
    pub fn node(&self, name: &str) -> Option<Identity> {
        self.nodes.get(name).copied()
    }

    /// Every node identity with its labels, by identity.
    pub fn node_sets(&self) -> impl Iterator<Item = (Identity, &Labels)> + '_ {
        self.node_labels.iter().map(|(id, labels)| (*id, labels))
    }

    /// The identity of the endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<Identity> {
        self.endpoints.get(name).copied()
    }

    /// The identity of a label set, if an endpoint has it.
    pub fn of_labels(&self, labels: &Labels) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    /// Every label-set identity with its labels, by identity.
    pub fn label_sets(&self) -> impl Iterator<Item = (Identity, &Labels)> + '_ {
        self.labels_of.iter().map(|(id, labels)| (*id, labels))
    }

    /// The labels of a label-set identity.
    pub fn labels(&self, id: Identity) -> Option<&Labels> {
        self.labels_of.get(&id)
    }

    /// The identity of a prefix used by a rule (the default routes have none: they are world).
    pub fn cidr(&self, cidr: &Cidr) -> Option<Identity> {
        self.cidrs.get(cidr).copied()
    }

    /// Every CIDR identity, by prefix (and so by identity).
    pub fn cidrs(&self) -> impl Iterator<Item = (Cidr, Identity)> + '_ {
        self.cidrs.iter().map(|(c, id)| (*c, *id))
    }
}

/// Every prefix a rule names, with duplicates: CIDR peers and their excepts.
pub(crate) fn rule_cidrs(cfg: &NodeConfig) -> impl Iterator<Item = Cidr> + '_ {
    let admin = cfg.admin_policies.iter().flat_map(|p| p.ingress.iter().chain(&p.egress)).map(|r| &r.matches);
    cfg.policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| Direction::ALL.map(|d| r.direction(d)))
        .flat_map(|d| d.allow.iter().chain(&d.deny))
        .chain(admin)
        .flat_map(|pr| &pr.peers)
        .flat_map(|peer| match peer {
            Peer::Cidr(rule) => std::iter::once(rule.cidr).chain(rule.except.iter().copied()).collect(),
            Peer::Entity(_) | Peer::Endpoints(_) | Peer::Nodes(_) => Vec::new(),
        })
}

/// The canonical text of a label set: `k8s:key=value;` per label, keys sorted.
pub fn canonical_labels(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("k8s:{k}={v};")).collect()
}

/// Where a label set's identity lands before collisions: FNV-1a (64-bit) of its canonical
/// text, reduced into `256..=65535`.
pub fn label_set_slot(labels: &Labels) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = canonical_labels(labels).bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    let span = u64::from(Identity::LAST_LABEL_SET - Identity::FIRST_LABEL_SET + 1);
    // The remainder is below `span`, which fits in u32.
    Identity::FIRST_LABEL_SET + (hash % span) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn reserved_numbers_are_ciliums() {
        let numbers = [
            (Identity::HOST, 1, "host"),
            (Identity::WORLD, 2, "world"),
            (Identity::UNMANAGED, 3, "unmanaged"),
            (Identity::HEALTH, 4, "health"),
            (Identity::INIT, 5, "init"),
            (Identity::REMOTE_NODE, 6, "remote-node"),
            (Identity::KUBE_APISERVER, 7, "kube-apiserver"),
            (Identity::INGRESS, 8, "ingress"),
            (Identity::WORLD_IPV4, 9, "world-ipv4"),
            (Identity::WORLD_IPV6, 10, "world-ipv6"),
        ];
        for (id, n, name) in numbers {
            assert_eq!((id.get(), id.reserved_name()), (n, Some(name)));
            assert!(id.is_reserved() && !id.is_cidr());
        }
        assert_eq!(Identity::WORLD_IPV4.to_string(), "9 (reserved:world-ipv4)");
    }

    #[test]
    fn colliding_sets_probe_to_the_next_free_number_in_sorted_order() {
        // Two label sets whose slots collide, found by search: the first in sorted order keeps
        // the slot, the second takes the next number.
        let sets: Vec<Labels> = (0..2000)
            .map(|i| labels(&[("app", &format!("a{i}")), ("io.kubernetes.pod.namespace", "default")]))
            .collect();
        let mut seen = std::collections::BTreeMap::new();
        let (a, b) = sets
            .iter()
            .find_map(|s| seen.insert(label_set_slot(s), s.clone()).map(|first| (first, s.clone())))
            .expect("2,000 sets in 65,280 slots collide somewhere");
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        let slot = label_set_slot(&low);
        let yaml = |l: &Labels| format!("{{app: {}}}", l["app"]);
        let text = format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: n}}\nspec:\n  endpoints:\n    \
             - {{name: x, interface: lx, ipv4: 10.0.0.1, labels: {}}}\n    \
             - {{name: y, interface: ly, ipv4: 10.0.0.2, labels: {}}}\n",
            yaml(&high),
            yaml(&low)
        );
        let cfg = crate::model::parse_str(&text, "t.yaml").unwrap();
        let ids = IdentityTable::allocate(&cfg).unwrap();
        let next = if slot == Identity::LAST_LABEL_SET { Identity::FIRST_LABEL_SET } else { slot + 1 };
        assert_eq!(ids.endpoint("y").map(Identity::get), Some(slot));
        assert_eq!(ids.endpoint("x").map(Identity::get), Some(next));
    }

    #[test]
    fn slots_are_stable_and_in_range() {
        let set = labels(&[("app", "web"), ("io.kubernetes.pod.namespace", "default")]);
        assert_eq!(canonical_labels(&set), "k8s:app=web;k8s:io.kubernetes.pod.namespace=default;");
        let slot = label_set_slot(&set);
        assert!((256..=65535).contains(&slot));
        // Pinned: a change here renumbers every identity of every node.
        assert_eq!(slot, 55991);
        assert_eq!(label_set_slot(&labels(&[])), 256 + (0xcbf2_9ce4_8422_2325u64 % 65280) as u32);
    }
}
