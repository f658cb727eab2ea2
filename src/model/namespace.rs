//! `kind: Namespace` (`apiVersion: v1`): a namespace's labels, which `namespaceSelector` and
//! Cilium's namespace labels select by.
//!
//! Contract:
//! - A Namespace document has `metadata.name` (a DNS-1123 label) and `metadata.labels`;
//!   `annotations` are accepted and ignored, and so are `spec` and `status` (what the API
//!   server returns). One document per name.
//! - As Cilium does, every endpoint of a namespace with labels carries each of them as
//!   `io.cilium.k8s.namespace.labels.<key>` = value (a label of the endpoint's identity), so
//!   a CiliumNetworkPolicy selects by them with that key, and a NetworkPolicy
//!   `namespaceSelector` on `<key>` lowers to it. `kubernetes.io/metadata.name`, which
//!   Kubernetes sets on every namespace to its name, stays the namespace label
//!   `io.kubernetes.pod.namespace` (every endpoint has it, with or without a Namespace
//!   document); written in a Namespace's labels it must equal the name.
//! - A namespace without a document has no labels but that one.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::endpoint::{Endpoint, Name};
use super::labels::{LabelKey, LabelValue, NAMESPACE_NAME_LABEL};
use super::locate::{FieldPath, Invalid};

/// The prefix Cilium gives a namespace's labels on its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// `kind: Namespace`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Namespace document: a mapping with apiVersion, kind and metadata"
)]
pub(crate) struct NamespaceDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::namespace_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: NamespaceMeta,
    /// What the API server keeps (`finalizers`), not used.
    #[serde(default)]
    #[allow(dead_code)]
    spec: Option<IgnoredAny>,
    /// What the API server reports, not used.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "namespace metadata: a mapping with name and labels")]
struct NamespaceMeta {
    name: Name,
    #[serde(default)]
    labels: BTreeMap<LabelKey, LabelValue>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The labels of every namespace with a document, by name; documents as (position, doc).
pub(crate) fn lower_namespaces(
    docs: &[(usize, NamespaceDocument)],
) -> Result<BTreeMap<String, BTreeMap<String, String>>, (usize, Invalid)> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, doc) in docs {
        let name = doc.metadata.name.0.as_str();
        let at = FieldPath::root().key("metadata");
        if let Some(earlier) = first.insert(name, *index) {
            return Err((
                *index,
                at.key("name").invalid(format!(
                    "a second Namespace `{name}` (document {} of the file; the first is document {})",
                    index + 1,
                    earlier + 1
                )),
            ));
        }
        let mut labels = BTreeMap::new();
        for (key, value) in &doc.metadata.labels {
            if key.key == NAMESPACE_NAME_LABEL && value.0 != name {
                return Err((
                    *index,
                    at.key("labels").key(&key.raw).invalid(format!(
                        "{NAMESPACE_NAME_LABEL} is the namespace's name (`{name}`), set by Kubernetes"
                    )),
                ));
            }
            if labels.insert(key.key.clone(), value.0.clone()).is_some() {
                return Err((
                    *index,
                    at.key("labels").key(&key.raw).invalid(format!("label `{}` is written twice", key.key)),
                ));
            }
        }
        labels.remove(NAMESPACE_NAME_LABEL);
        out.insert(name.to_owned(), labels);
    }
    Ok(out)
}

/// Gives each endpoint its namespace's labels (see the module contract).
pub(crate) fn label_endpoints(
    endpoints: &mut [Endpoint],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) {
    for endpoint in endpoints {
        for (key, value) in namespaces.get(&endpoint.namespace).into_iter().flatten() {
            endpoint.labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value.clone());
        }
    }
}
