//! Where each policy, rule and entry of a node file was written: what `sluice policy explain`
//! cites as the rule that decided a flow.
//!
//! Contract:
//! - [`policy_sources`] reads the text again (the model keeps no positions: equivalent
//!   spellings must compare equal) and returns, per policy document, its identity (kind,
//!   namespace, name), the place of its `metadata.name`, the place of each of its rules in
//!   [`super::Policy::rules`] order, and each entry (one item of `ingress`, `ingressDeny`,
//!   `egress`, `egressDeny`) with the peer rule it lowers to, exactly as it appears in the
//!   normal form before the direction's list is sorted. A peer rule of the model is matched
//!   to its entries by equality; entries that match nothing (Cilium's `{}`) have none.
//! - Places are 1-based line and column in the whole file with the dotted field path, as in
//!   errors ([`super::ModelError`]).
//! - It fails only where [`super::parse_str`] fails: call it with text that parsed.

use super::document::{read_documents, Document};
use super::locate::{locate, FieldPath};
use super::policy::{Direction, PeerRule, PolicyKind};
use super::ModelError;

/// One entry as lowered, with its path in its document.
#[derive(Debug, Clone)]
pub(crate) struct EntryOrigin {
    pub rule: usize,
    pub direction: Direction,
    pub deny: bool,
    pub peer_rule: PeerRule,
    pub path: FieldPath,
}

/// A place in the node file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
    /// Dotted field path in its document, e.g. `spec.ingress[0]`.
    pub path: String,
}

/// Where one policy document's parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.name`.
    pub at: Place,
    /// Each rule (`spec`, `specs[i]`), in [`super::Policy::rules`] order.
    pub rules: Vec<Place>,
    pub entries: Vec<EntrySource>,
}

/// One entry of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySource {
    /// Index into [`super::Policy::rules`].
    pub rule: usize,
    pub direction: Direction,
    pub deny: bool,
    pub peer_rule: PeerRule,
    pub at: Place,
}

impl PolicySource {
    /// The entries of rule `rule` that lowered to `peer_rule`.
    pub fn entries_of<'a>(
        &'a self,
        rule: usize,
        direction: Direction,
        deny: bool,
        peer_rule: &'a PeerRule,
    ) -> impl Iterator<Item = &'a EntrySource> + 'a {
        self.entries.iter().filter(move |e| {
            e.rule == rule && e.direction == direction && e.deny == deny && &e.peer_rule == peer_rule
        })
    }
}

/// The sources of every policy document of `source` (named `origin`), in file order.
pub fn policy_sources(source: &str, origin: &str) -> Result<Vec<PolicySource>, ModelError> {
    // `toServices` lowers to what the file's Services select.
    let cfg = super::parse_str(source, origin)?;
    let cx = super::cnp::CiliumContext {
        services: &cfg.policy_services,
        node_selector_labels: cfg.policy.node_selector_labels,
    };
    let documents = read_documents(source).map_err(|err| ModelError::from_yaml(origin, &err))?;
    let place = |index: usize, path: &FieldPath| -> Place {
        match ModelError::from_yaml(origin, &locate(source, index, &path.invalid("here"))) {
            ModelError::Invalid { line, col, path, .. } => {
                Place { line, col, path: path.unwrap_or_default() }
            }
            _ => Place { line: 1, col: 1, path: String::new() },
        }
    };
    let mut out = Vec::new();
    for (index, document) in documents {
        let (kind, meta, origins) = match &document {
            Document::CiliumNetworkPolicy(doc) => {
                (PolicyKind::CiliumNetworkPolicy, &doc.metadata, super::cnp::entry_origins(doc, &cx))
            }
            Document::CiliumClusterwideNetworkPolicy(doc) => (
                PolicyKind::CiliumClusterwideNetworkPolicy,
                &doc.metadata,
                super::cnp::ccnp_entry_origins(doc, &cx),
            ),
            Document::NetworkPolicy(doc) => {
                (PolicyKind::NetworkPolicy, &doc.metadata, super::knp::entry_origins(doc))
            }
            _ => continue,
        };
        let (rules, entries) =
            origins.map_err(|invalid| ModelError::from_yaml(origin, &locate(source, index, &invalid)))?;
        out.push(PolicySource {
            kind,
            namespace: if kind == PolicyKind::CiliumClusterwideNetworkPolicy {
                String::new()
            } else {
                meta.namespace()
            },
            name: meta.name.0.clone(),
            at: place(index, &FieldPath::root().key("metadata").key("name")),
            rules: rules.iter().map(|path| place(index, path)).collect(),
            entries: entries
                .into_iter()
                .map(|e| EntrySource {
                    rule: e.rule,
                    direction: e.direction,
                    deny: e.deny,
                    at: place(index, &e.path),
                    peer_rule: e.peer_rule,
                })
                .collect(),
        });
    }
    Ok(out)
}
