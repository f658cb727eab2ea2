//! The key layout in etcd, and the values' encodings.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `sluice/state/nodes/v1/<node>` | [`NodeRecord`] JSON | the node's |
//! | `sluice/state/identities/v1/id/<n>` | canonical labels (`k8s:key=value;`...) | none (collected) |
//! | `sluice/state/identities/v1/value/<canonical labels>/<node>` | `<n>` in decimal | the node's |
//! | `sluice/state/ip/v1/<ip>` | [`EndpointRecord`] JSON | the owning node's |
//!
//! Node names are DNS-1123 labels (no `/`), so the last segment of a reference key is always
//! the node and the rest the labels, whatever `/` the label keys hold.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::model::{Cidr, Labels};
use crate::policy::identity::canonical_labels;

/// Everything sluice keeps in etcd is under this prefix.
pub const ROOT: &str = "sluice/state/";
pub const NODES: &str = "sluice/state/nodes/v1/";
pub const IDENTITY_IDS: &str = "sluice/state/identities/v1/id/";
pub const IDENTITY_REFS: &str = "sluice/state/identities/v1/value/";
pub const ENDPOINTS: &str = "sluice/state/ip/v1/";

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The underlay address tunnels go to.
    pub address: Ipv4Addr,
    /// The pod prefixes routed to this node.
    pub prefixes: Vec<Cidr>,
    /// Reserved for the encryption issue (WireGuard public key, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// One endpoint address: which identity it has and which node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub ip: IpAddr,
    pub identity: u32,
    pub node: String,
    /// The endpoint's name and namespace, for people reading the store.
    pub name: String,
    pub namespace: String,
}

pub fn node_key(node: &str) -> String {
    format!("{NODES}{node}")
}

pub fn identity_key(id: u32) -> String {
    format!("{IDENTITY_IDS}{id}")
}

pub fn identity_ref_prefix(labels: &Labels) -> String {
    format!("{IDENTITY_REFS}{}/", canonical_labels(labels))
}

pub fn identity_ref_key(labels: &Labels, node: &str) -> String {
    format!("{}{node}", identity_ref_prefix(labels))
}

pub fn endpoint_key(ip: IpAddr) -> String {
    format!("{ENDPOINTS}{ip}")
}

/// Labels from their canonical text (the inverse of [`canonical_labels`]); `None` if the
/// text is not one.
pub fn parse_labels(text: &str) -> Option<Labels> {
    let mut labels = BTreeMap::new();
    for part in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = part.strip_prefix("k8s:")?.split_once('=')?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    (canonical_labels(&labels) == text).then_some(labels)
}

/// A reference key's labels and node.
pub fn parse_identity_ref(key: &str) -> Option<(Labels, &str)> {
    let rest = key.strip_prefix(IDENTITY_REFS)?;
    let (labels, node) = rest.rsplit_once('/')?;
    Some((parse_labels(labels)?, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_their_canonical_text_and_ref_keys() {
        let labels: Labels = [("app.kubernetes.io/name", "web"), ("io.kubernetes.pod.namespace", "shop")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let key = identity_ref_key(&labels, "node-2");
        assert_eq!(
            key,
            "sluice/state/identities/v1/value/k8s:app.kubernetes.io/name=web;k8s:io.kubernetes.pod.namespace=shop;/node-2"
        );
        assert_eq!(parse_identity_ref(&key), Some((labels.clone(), "node-2")));
        assert_eq!(parse_labels(&canonical_labels(&labels)), Some(labels));
        assert_eq!(parse_labels("app=web;"), None, "no k8s: source");
    }
}
