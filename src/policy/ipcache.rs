//! The ipcache: which identity an address has, by longest-prefix match.
//!
//! Contract:
//! - Entries, by priority when two claim the same prefix: each endpoint address (the node's
//!   and those its overlay peers declare) as a host prefix (`/32`, `/128`) -> the endpoint's
//!   label-set identity; each host address -> host; each overlay peer's address ->
//!   remote-node (its node identity with `policy.nodeSelectorLabels`); each overlay peer's prefix -> unmanaged (an address of the cluster no
//!   endpoint claims: Cilium's "unmanaged endpoints are considered part of the cluster");
//!   each prefix a rule uses -> its CIDR identity, unless it lies inside a peer's prefix;
//!   `0.0.0.0/0` -> world-ipv4 and `::/0` -> world-ipv6. An endpoint, host or node address
//!   that a rule also names keeps its own identity: CIDR rules never select cluster
//!   endpoints or nodes (as in Cilium), and so world (which is every CIDR identity) never
//!   takes in an address of the cluster.
//! - [`IpCache::lookup`] returns the identity of the longest prefix containing the address;
//!   the default routes make it total.
//! - Why this is enough for CIDR rules with `except` (resolution relies on it): every rule
//!   prefix and except is an entry, so the longest entry containing an address outside the
//!   cluster lies inside a rule prefix P exactly when the address does, and inside an except
//!   E of P exactly when the address does. A rule "P except E..." therefore selects the CIDR
//!   identities of the entries inside P and inside no E (plus world-ipv4/6 when P is a default
//!   route), and the lookup of any address gives one of those exactly when the address is in
//!   P and in no E.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Cidr, Family, NodeConfig};

use super::identity::{Identity, IdentityTable};

/// Prefix -> identity, with longest-prefix-match lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpCache {
    entries: BTreeMap<Cidr, Identity>,
    /// The prefix lengths present per family, to look up only those.
    lengths: BTreeSet<(Family, u8)>,
}

impl IpCache {
    /// The ipcache of `cfg` with identities from `ids`.
    pub fn build(cfg: &NodeConfig, ids: &IdentityTable) -> IpCache {
        let mut entries = BTreeMap::new();
        for endpoint in &cfg.endpoints {
            let id = ids
                .endpoint(&endpoint.name)
                .expect("IdentityTable::allocate gives every endpoint an identity");
            for addr in endpoint.addresses() {
                entries.insert(Cidr::host(addr), id);
            }
        }
        for (_, endpoint) in cfg.remote_endpoints() {
            let id = ids
                .of_labels(&endpoint.labels)
                .expect("IdentityTable::allocate gives every remote label set an identity");
            for addr in endpoint.addresses() {
                entries.entry(Cidr::host(addr)).or_insert(id);
            }
        }
        for addr in &cfg.host_addresses {
            entries.entry(Cidr::host(*addr)).or_insert(Identity::HOST);
        }
        let peers = cfg.overlay.iter().flat_map(|o| &o.peers);
        for peer in peers.clone() {
            let id = ids.node(&peer.name).unwrap_or(Identity::REMOTE_NODE);
            entries.entry(Cidr::host(IpAddr::V4(peer.address))).or_insert(id);
        }
        let cluster_prefixes: Vec<Cidr> = peers.flat_map(|p| p.prefixes.iter().copied()).collect();
        for prefix in &cluster_prefixes {
            entries.entry(*prefix).or_insert(Identity::UNMANAGED);
        }
        for (cidr, id) in ids.cidrs() {
            if !cluster_prefixes.iter().any(|p| p.contains_cidr(&cidr)) {
                entries.entry(cidr).or_insert(id);
            }
        }
        let default_v4: Cidr = "0.0.0.0/0".parse().expect("a valid literal");
        let default_v6: Cidr = "::/0".parse().expect("a valid literal");
        entries.insert(default_v4, Identity::WORLD_IPV4);
        entries.insert(default_v6, Identity::WORLD_IPV6);
        let lengths = entries.keys().map(|c| (c.family(), c.len())).collect();
        IpCache { entries, lengths }
    }

    /// The identity of `addr`: that of the longest prefix containing it.
    pub fn lookup(&self, addr: IpAddr) -> Identity {
        let family = match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let lengths = self.lengths.range((family, 0)..=(family, family.max_len()));
        for &(_, len) in lengths.rev() {
            let prefix =
                Cidr::new_truncating(addr, len).expect("lengths hold only valid lengths for the family");
            if let Some(id) = self.entries.get(&prefix) {
                return *id;
            }
        }
        // Unreachable: both default routes are entries.
        match family {
            Family::V4 => Identity::WORLD_IPV4,
            Family::V6 => Identity::WORLD_IPV6,
        }
    }

    /// Every entry, sorted by prefix.
    pub fn entries(&self) -> impl Iterator<Item = (Cidr, Identity)> + '_ {
        self.entries.iter().map(|(c, id)| (*c, *id))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: the default routes are always there.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
