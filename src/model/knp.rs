//! `kind: NetworkPolicy` (`apiVersion: networking.k8s.io/v1`): wire form and lowering to
//! [`Policy`], following the Kubernetes semantics as Cilium implements them.
//!
//! Contract:
//! - `spec.podSelector` (required) selects the subject endpoints in the policy's namespace.
//! - `spec.policyTypes` lists the enforced directions; absent, it is `Ingress`, plus `Egress`
//!   when `egress` has entries. Entries for a direction that `policyTypes` leaves out are
//!   ignored, as the API server does, with a warning (`NodeConfig::policy_warnings`).
//! - An `ingress` entry allows traffic from any of `from` on any of `ports`; an absent or empty
//!   `from` means every source (inside the cluster or not), absent or empty `ports` every port.
//!   `egress` is the same with `to`.
//! - A peer is `podSelector` (endpoints of the policy's namespace), `namespaceSelector`
//!   (endpoints of the namespaces it selects), both (endpoints matching both), or `ipBlock`
//!   (`cidr` minus `except`, each except inside the cidr; like Cilium's CIDR rules it never
//!   matches cluster endpoints). A `namespaceSelector` tests `kubernetes.io/metadata.name`
//!   (the name) and the labels of the node file's Namespace documents (`super::namespace`);
//!   an empty one selects every namespace.
//! - A port: `protocol` TCP (default), UDP or SCTP; `port` a number or a port name
//!   (`super::named_ports`), every port when absent; `endPort` at least `port`.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::cidr::Cidr;
use super::de::parse_str_scalar;
use super::labels::{Requirement, Selector, NAMESPACE_LABEL, NAMESPACE_NAME_LABEL};
use super::locate::{FieldPath, Invalid};
use super::namespace::NAMESPACE_LABELS_PREFIX;
use super::policy::{Direction, DirectionRules, Entity, Peer, PeerRule, Policy, PolicyKind, Protocol, Rule};
use super::policy_wire::{
    lower_cidr_rule, lower_port_spec, lower_requirements, lower_subject, parse_protocol, ObjectMeta,
    PortNumber, PortSpec, PortZero, SelectorWire,
};
use super::sources::EntryOrigin;

/// `kind: NetworkPolicy`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a NetworkPolicy document: a mapping with apiVersion, kind, metadata and spec"
)]
pub(crate) struct KnpDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::knp_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    spec: KnpSpec,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a NetworkPolicy spec: a mapping with podSelector, policyTypes, ingress and egress"
)]
struct KnpSpec {
    pod_selector: SelectorWire,
    #[serde(default)]
    policy_types: Option<Vec<PolicyType>>,
    #[serde(default)]
    ingress: Option<Vec<IngressRuleWire>>,
    #[serde(default)]
    egress: Option<Vec<EgressRuleWire>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an ingress rule: a mapping with from and ports")]
struct IngressRuleWire {
    #[serde(default)]
    from: Option<Vec<PeerWire>>,
    #[serde(default)]
    ports: Option<Vec<PortWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an egress rule: a mapping with to and ports")]
struct EgressRuleWire {
    #[serde(default)]
    to: Option<Vec<PeerWire>>,
    #[serde(default)]
    ports: Option<Vec<PortWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a peer: a mapping with podSelector, namespaceSelector or ipBlock"
)]
struct PeerWire {
    #[serde(default)]
    pod_selector: Option<SelectorWire>,
    #[serde(default)]
    namespace_selector: Option<SelectorWire>,
    #[serde(default)]
    ip_block: Option<IpBlockWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an ipBlock: a mapping with cidr and except")]
struct IpBlockWire {
    cidr: Cidr,
    #[serde(default)]
    except: Vec<Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a port: a mapping with protocol, port and endPort"
)]
struct PortWire {
    #[serde(default)]
    protocol: Option<KnpProtocol>,
    #[serde(default)]
    port: Option<PortSpec>,
    #[serde(default)]
    end_port: Option<PortNumber>,
}

/// `protocol` of a NetworkPolicy port.
#[derive(Debug)]
struct KnpProtocol(Vec<Protocol>);

impl<'de> Deserialize<'de> for KnpProtocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KnpProtocol, D::Error> {
        parse_str_scalar(deserializer, "a protocol: TCP, UDP or SCTP", |name| {
            parse_protocol(name, false).map(KnpProtocol)
        })
    }
}

/// Lowers a NetworkPolicy document; also returns what it ignored, as warnings at their
/// place.
pub(crate) fn lower_knp(doc: &KnpDocument) -> Result<(Policy, Vec<Invalid>), Invalid> {
    let spec_path = FieldPath::root().key("spec");
    let namespace = doc.metadata.namespace();
    let spec = &doc.spec;
    let subject = lower_subject(&spec.pod_selector, &spec_path.key("podSelector"), &namespace)?;
    let mut ingress_entries = spec.ingress.as_deref().unwrap_or_default();
    let mut egress_entries = spec.egress.as_deref().unwrap_or_default();
    let (ingress_enforced, egress_enforced) = match &spec.policy_types {
        None => (true, !egress_entries.is_empty()),
        Some(types) => (types.contains(&PolicyType::Ingress), types.contains(&PolicyType::Egress)),
    };
    // The API server accepts rules for a direction policyTypes leaves out, and they have no
    // effect ("policyTypes ... indicates whether or not this policy applies to ingress
    // traffic to selected pods, egress traffic from selected pods, or both"): so here, with
    // a warning.
    let mut ignored = Vec::new();
    for (enforced, given, key, ty) in [
        (ingress_enforced, !ingress_entries.is_empty(), "ingress", "Ingress"),
        (egress_enforced, !egress_entries.is_empty(), "egress", "Egress"),
    ] {
        if !enforced && given {
            ignored.push(spec_path.key(key).invalid(format!(
                "{key} rules are ignored: policyTypes does not include {ty} (as in Kubernetes, \
                 they have no effect)"
            )));
        }
    }
    if !ingress_enforced {
        ingress_entries = &[];
    }
    if !egress_enforced {
        egress_entries = &[];
    }

    let mut ingress = DirectionRules { enforced: ingress_enforced, ..Default::default() };
    for (i, entry) in ingress_entries.iter().enumerate() {
        let at = spec_path.key("ingress").index(i);
        ingress.allow.push(lower_entry(
            entry.from.as_deref(),
            "from",
            entry.ports.as_deref(),
            &at,
            &namespace,
        )?);
    }
    let mut egress = DirectionRules { enforced: egress_enforced, ..Default::default() };
    for (i, entry) in egress_entries.iter().enumerate() {
        let at = spec_path.key("egress").index(i);
        egress.allow.push(lower_entry(entry.to.as_deref(), "to", entry.ports.as_deref(), &at, &namespace)?);
    }
    for rules in [&mut ingress, &mut egress] {
        rules.allow.sort();
        rules.allow.dedup();
    }
    let policy = Policy {
        namespace,
        name: doc.metadata.name.0.clone(),
        kind: PolicyKind::NetworkPolicy,
        rules: vec![Rule { subject, ingress, egress }],
    };
    Ok((policy, ignored))
}

/// Where each entry of a (valid) NetworkPolicy was written, with its peer rule (see
/// `super::sources`); its one rule is at `spec`. Entries of a direction `policyTypes` leaves
/// out are left out, as they have no effect.
pub(crate) fn entry_origins(doc: &KnpDocument) -> Result<(Vec<FieldPath>, Vec<EntryOrigin>), Invalid> {
    let spec_path = FieldPath::root().key("spec");
    let namespace = doc.metadata.namespace();
    let spec = &doc.spec;
    let (policy, _) = lower_knp(doc)?;
    let rule = &policy.rules[0];
    let mut entries = Vec::new();
    for (i, entry) in spec.ingress.iter().flatten().enumerate().filter(|_| rule.ingress.enforced) {
        let at = spec_path.key("ingress").index(i);
        let peer_rule = lower_entry(entry.from.as_deref(), "from", entry.ports.as_deref(), &at, &namespace)?;
        entries.push(EntryOrigin {
            rule: 0,
            direction: Direction::Ingress,
            deny: false,
            peer_rule,
            path: at,
        });
    }
    for (i, entry) in spec.egress.iter().flatten().enumerate().filter(|_| rule.egress.enforced) {
        let at = spec_path.key("egress").index(i);
        let peer_rule = lower_entry(entry.to.as_deref(), "to", entry.ports.as_deref(), &at, &namespace)?;
        entries.push(EntryOrigin { rule: 0, direction: Direction::Egress, deny: false, peer_rule, path: at });
    }
    Ok((vec![spec_path], entries))
}

fn lower_entry(
    peers: Option<&[PeerWire]>,
    peers_key: &str,
    ports: Option<&[PortWire]>,
    path: &FieldPath,
    namespace: &str,
) -> Result<PeerRule, Invalid> {
    let mut lowered = Vec::new();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        lowered.push(lower_peer(peer, &path.key(peers_key).index(i), namespace)?);
    }
    if lowered.is_empty() {
        lowered.push(Peer::Entity(Entity::All));
    }
    lowered.sort();
    lowered.dedup();
    let (mut l4, mut named_ports) = (Vec::new(), Vec::new());
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        let at = path.key("ports").index(i);
        let protocols = port.protocol.as_ref().map_or(&[Protocol::Tcp][..], |p| &p.0);
        let (numbered, named) =
            lower_port_spec(&port.port, port.end_port, &at, PortZero::Rejected, protocols)?;
        l4.extend(numbered);
        named_ports.extend(named);
    }
    l4.sort();
    l4.dedup();
    named_ports.sort();
    named_ports.dedup();
    Ok(PeerRule { peers: lowered, l4, named_ports, http: None })
}

fn lower_peer(peer: &PeerWire, path: &FieldPath, namespace: &str) -> Result<Peer, Invalid> {
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (None, None, None) => Err(path.invalid("a peer needs podSelector, namespaceSelector or ipBlock")),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err(path.invalid("ipBlock cannot be combined with podSelector or namespaceSelector in one peer"))
        }
        (None, None, Some(block)) => {
            Ok(Peer::Cidr(lower_cidr_rule(block.cidr, &block.except, &path.key("ipBlock"))?))
        }
        (pods, namespaces, None) => {
            let pod_requirements = match pods {
                Some(selector) => lower_requirements(selector, &path.key("podSelector"))?,
                None => Vec::new(),
            };
            let namespace_requirements = match namespaces {
                None => vec![Requirement::equals(NAMESPACE_LABEL, namespace)],
                Some(selector) => lower_namespace_selector(selector, &path.key("namespaceSelector"))?,
            };
            Ok(Peer::Endpoints(Selector::new(
                pod_requirements.into_iter().map(|(r, _)| r).chain(namespace_requirements),
            )))
        }
    }
}

/// A namespaceSelector as requirements on the endpoints' labels: the name on the namespace
/// label, every other key on the namespace's labels as its endpoints carry them
/// (`super::namespace`).
pub(crate) fn lower_namespace_selector(
    selector: &SelectorWire,
    path: &FieldPath,
) -> Result<Vec<Requirement>, Invalid> {
    Ok(lower_requirements(selector, path)?
        .into_iter()
        .map(|(r, _)| {
            let key = if r.key == NAMESPACE_NAME_LABEL {
                NAMESPACE_LABEL.to_owned()
            } else {
                format!("{NAMESPACE_LABELS_PREFIX}{}", r.key)
            };
            Requirement { key, op: r.op }
        })
        .collect())
}
