//! What a node knows of its cluster, and how that becomes its config.
//!
//! Contract:
//! - [`ClusterView`] is a pure fold of key-value pairs under [`layout::ROOT`]: a list
//!   ([`ClusterView::from_list`]) or a watch's puts and deletes ([`ClusterView::apply_event`])
//!   give the same view for the same store. A value that does not parse is ignored (and
//!   counted), never fatal: one bad writer cannot stop the others' nodes.
//! - [`ClusterView::apply`] rewrites a node's config for the cluster: the overlay's peers
//!   become the other nodes of the view (the file's static peers are replaced), each with
//!   the endpoints the view puts on it, labelled by their identity's labels; every identity
//!   of the view becomes [`NodeConfig::cluster_identities`]. What the file's own checks would
//!   reject (a peer with this node's underlay address, a prefix overlapping a local endpoint
//!   or another peer's prefix, an endpoint outside its node's prefixes) is left out and
//!   reported, so a remote node's bad record degrades that node only.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::etcd::{Event, KeyValue};
use super::layout::{self, EndpointRecord, NodeRecord};
use crate::model::encryption::decode_key;
use crate::model::network::{OverlayPeer, RemoteEndpoint};
use crate::model::{Cidr, Labels, NodeConfig};

/// Nodes, identities and endpoints as the store holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, NodeRecord>,
    pub identities: BTreeMap<u32, Labels>,
    pub endpoints: BTreeMap<IpAddr, EndpointRecord>,
    /// Values under the root that did not parse.
    pub malformed: u64,
}

impl ClusterView {
    pub fn from_list(kvs: &[KeyValue]) -> ClusterView {
        let mut view = ClusterView::default();
        for kv in kvs {
            view.put(kv);
        }
        view
    }

    pub fn apply_event(&mut self, event: &Event) {
        match event {
            Event::Put(kv) => self.put(kv),
            Event::Delete(kv) => self.delete(kv.key_str()),
        }
    }

    /// One listed pair, as [`ClusterView::from_list`] folds it.
    pub fn put_kv(&mut self, kv: &KeyValue) {
        self.put(kv);
    }

    fn put(&mut self, kv: &KeyValue) {
        let key = kv.key_str();
        let ok = if let Some(name) = key.strip_prefix(layout::NODES) {
            serde_json::from_slice::<NodeRecord>(&kv.value)
                .ok()
                .filter(|r| r.name == name)
                .map(|r| self.nodes.insert(name.to_owned(), r))
                .is_some()
        } else if let Some(n) = key.strip_prefix(layout::IDENTITY_IDS) {
            let labels = std::str::from_utf8(&kv.value).ok().and_then(layout::parse_labels);
            match (n.parse::<u32>(), labels) {
                (Ok(n), Some(labels)) => {
                    self.identities.insert(n, labels);
                    true
                }
                _ => false,
            }
        } else if let Some(ip) = key.strip_prefix(layout::ENDPOINTS) {
            serde_json::from_slice::<EndpointRecord>(&kv.value)
                .ok()
                .filter(|r| ip.parse() == Ok(r.ip))
                .map(|r| self.endpoints.insert(r.ip, r))
                .is_some()
        } else {
            // References and anything else: not part of the view.
            true
        };
        if !ok {
            self.malformed += 1;
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(layout::NODES) {
            self.nodes.remove(name);
        } else if let Some(n) = key.strip_prefix(layout::IDENTITY_IDS) {
            if let Ok(n) = n.parse::<u32>() {
                self.identities.remove(&n);
            }
        } else if let Some(ip) = key.strip_prefix(layout::ENDPOINTS) {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                self.endpoints.remove(&ip);
            }
        }
    }

    /// `cfg` as a member of this cluster (module contract); the notes say what was left out.
    pub fn apply(&self, cfg: &mut NodeConfig) -> Vec<String> {
        let mut notes = Vec::new();
        cfg.cluster_identities = self.identities.iter().map(|(n, labels)| (labels.clone(), *n)).collect();
        let Some(overlay) = cfg.overlay.as_mut() else {
            if self.nodes.keys().any(|n| *n != cfg.name) {
                notes.push("the node file has no spec.overlay: other nodes are not reachable".to_owned());
            }
            return notes;
        };
        let local_addrs: Vec<IpAddr> =
            cfg.endpoints.iter().flat_map(|e| e.addresses()).chain(cfg.router.addresses()).collect();
        let mut taken: Vec<(Cidr, String)> = Vec::new();
        let mut peers = Vec::new();
        // Endpoints grouped by node once, so the work is linear in the view.
        let mut by_node: BTreeMap<&str, Vec<&EndpointRecord>> = BTreeMap::new();
        for r in self.endpoints.values() {
            by_node.entry(r.node.as_str()).or_default().push(r);
        }
        for (name, node) in self.nodes.iter().filter(|(name, _)| **name != cfg.name) {
            if node.address == overlay.local {
                notes.push(format!("node {name}: has this node's underlay address {}", node.address));
                continue;
            }
            if let Some(a) = local_addrs.iter().find(|a| node.prefixes.iter().any(|p| p.contains(**a))) {
                notes.push(format!("node {name}: a prefix covers this node's address {a}"));
                continue;
            }
            if let Some((p, other)) = taken
                .iter()
                .find(|(t, _)| node.prefixes.iter().any(|p| p.contains_cidr(t) || t.contains_cidr(p)))
            {
                notes.push(format!("node {name}: a prefix overlaps {p} of node {other}"));
                continue;
            }
            taken.extend(node.prefixes.iter().map(|p| (*p, name.clone())));
            let mut prefixes = node.prefixes.clone();
            prefixes.sort();
            prefixes.dedup();
            peers.push(OverlayPeer {
                name: name.clone(),
                address: node.address,
                prefixes,
                // The node's WireGuard public key as it published it (mode wireguard);
                // its endpoint is its underlay address at this node's port.
                wireguard: node
                    .public_key
                    .as_deref()
                    .and_then(|k| decode_key(k).ok())
                    .map(|public_key| crate::model::encryption::WireguardPeer { public_key, endpoint: None }),
                // Node labels are not published through etcd: `fromNodes`/`toNodes` select
                // node-file peers only.
                labels: Default::default(),
                endpoints: self.endpoints_of(
                    name,
                    by_node.get(name.as_str()).map_or(&[][..], Vec::as_slice),
                    &node.prefixes,
                    &mut notes,
                ),
            });
        }
        overlay.peers = peers;
        // Identities are cluster-wide here: the overlay carries them.
        overlay.identities = true;
        notes
    }

    /// The endpoints the view puts on `node`: addresses of one (namespace, name) merged.
    fn endpoints_of(
        &self,
        node: &str,
        records: &[&EndpointRecord],
        prefixes: &[Cidr],
        notes: &mut Vec<String>,
    ) -> Vec<RemoteEndpoint> {
        let mut by_name: BTreeMap<(String, String), RemoteEndpoint> = BTreeMap::new();
        for r in records {
            if !prefixes.iter().any(|p| p.contains(r.ip)) {
                notes.push(format!("node {node}: endpoint {} ({}) is outside its prefixes", r.name, r.ip));
                continue;
            }
            // An identity the view does not know (yet): the address stays unmanaged, which
            // `cluster` allows and label selectors do not.
            let Some(labels) = self.identities.get(&r.identity) else { continue };
            let e = by_name.entry((r.namespace.clone(), r.name.clone())).or_insert_with(|| RemoteEndpoint {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
                ipv4: None,
                ipv6: None,
                labels: labels.clone(),
            });
            match r.ip {
                IpAddr::V4(a) => e.ipv4 = Some(a),
                IpAddr::V6(a) => e.ipv6 = Some(a),
            }
        }
        let mut out: Vec<RemoteEndpoint> = by_name.into_values().collect();
        // Names are unique per node only within a namespace: qualify them for the model.
        for e in &mut out {
            e.name = format!("{}.{}", e.namespace, e.name);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
