//! `kind: AdminNetworkPolicy` and `kind: BaselineAdminNetworkPolicy`
//! (`apiVersion: policy.networking.k8s.io/v1alpha1`, the Kubernetes network-policy-api):
//! wire form and lowering to [`AdminPolicy`].
//!
//! Contract (quotations from the API's `apis/v1alpha1` types, kubernetes-sigs/network-policy-api):
//! - Both are cluster-scoped: `metadata.namespace` is refused. A BaselineAdminNetworkPolicy
//!   must be called `default` ("Only one baseline admin network policy with
//!   metadata.name=\"default\" can be created in the cluster"); one per node file.
//! - `spec.priority` (ANP only, required): "a value from 0 to 1000. Policies with lower
//!   priority values have higher precedence".
//! - `spec.subject`, exactly one of `namespaces` (a label selector over namespace labels) or
//!   `pods` (`namespaceSelector` and `podSelector`, both required; empty selects all). Both
//!   select only endpoints of some namespace (every endpoint has one).
//! - `spec.ingress[]` / `spec.egress[]` (at most 100 each, in order of precedence: "the rules
//!   that appear at the top of the ingress rules would take the highest precedence"): `name`
//!   (optional, at most 100 characters), `action` (ANP: Allow, Deny or Pass; BANP: Allow or
//!   Deny), `from` / `to` (at least one peer), `ports` (optional: "If Ports is not set then
//!   the rule does not filter traffic via port"; when set, at least one).
//! - A peer: exactly one of `namespaces` or `pods` (as in the subject); for egress also
//!   `networks` (CIDRs, at most 25: addresses outside the cluster in any of them, as CIDR
//!   peers of NetworkPolicy). `nodes` is refused: the API's node selector covers every node, the subject's own
//!   included, and the Node document declares no labels of its own (only overlay peers carry
//!   labels, for CiliumNetworkPolicy's `toNodes`).
//! - A port: exactly one of `portNumber` {protocol (TCP default), port 1-65535}, `portRange`
//!   {protocol, start, end, start < end}, `namedPort` (a port name of the destination
//!   endpoint, as in NetworkPolicy; the API gives it no protocol, so TCP, UDP and SCTP).
//! - Namespace selectors lower as NetworkPolicy's `namespaceSelector` does (`super::knp`):
//!   `kubernetes.io/metadata.name` on the namespace label, other keys on the namespace's labels.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::cidr::Cidr;
use super::knp::lower_namespace_selector;
use super::labels::{Operator, Requirement, Selector, NAMESPACE_LABEL};
use super::locate::{FieldPath, Invalid};
use super::policy::{CidrRule, Direction, Peer, PeerRule, Protocol};
use super::policy_wire::{lower_requirements, port_matches, ObjectMeta, PortNumber, SelectorWire};
use super::sources::Place;
use crate::model::named_ports::{check_port_name, NamedPortMatch};

/// Which tier an admin policy sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminTier {
    /// AdminNetworkPolicy, with its priority (0 to 1000; lower first).
    Admin { priority: u16 },
    /// BaselineAdminNetworkPolicy: after NetworkPolicy and CiliumNetworkPolicy.
    Baseline,
}

/// What a rule that matches does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminAction {
    Allow,
    Deny,
    /// Skip the remaining admin rules; NetworkPolicy (then the baseline) decides.
    Pass,
}

/// One `ingress[]` / `egress[]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    /// `name`, empty when absent.
    pub name: String,
    pub action: AdminAction,
    /// Peers and ports (`http` always `None`).
    pub matches: PeerRule,
    /// Where the rule is written, for `policy explain`.
    pub at: Place,
}

/// One AdminNetworkPolicy or BaselineAdminNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    pub tier: AdminTier,
    pub name: String,
    pub subject: Selector,
    /// In the order written (the order of precedence).
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

impl AdminPolicy {
    pub fn rules(&self, direction: Direction) -> &[AdminRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The document kind's name.
    pub fn kind_name(&self) -> &'static str {
        match self.tier {
            AdminTier::Admin { .. } => "AdminNetworkPolicy",
            AdminTier::Baseline => "BaselineAdminNetworkPolicy",
        }
    }
}

/// `kind: AdminNetworkPolicy` / `kind: BaselineAdminNetworkPolicy` (the survey tells which).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an admin network policy document: a mapping with apiVersion, kind, metadata and spec"
)]
pub(crate) struct AnpDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::anp_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: ObjectMeta,
    spec: AnpSpec,
    /// What the API server reports, not used.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an admin network policy spec: a mapping with priority, subject, ingress and egress"
)]
struct AnpSpec {
    #[serde(default)]
    priority: Option<PortNumber>,
    subject: SubjectWire,
    #[serde(default)]
    ingress: Vec<RuleWire>,
    #[serde(default)]
    egress: Vec<RuleWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a subject: a mapping with namespaces or pods")]
struct SubjectWire {
    #[serde(default)]
    namespaces: Option<SelectorWire>,
    #[serde(default)]
    pods: Option<PodsWire>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "pods: a mapping with namespaceSelector and podSelector"
)]
struct PodsWire {
    namespace_selector: SelectorWire,
    pod_selector: SelectorWire,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rule: a mapping with name, action, from or to, and ports")]
struct RuleWire {
    #[serde(default)]
    name: Option<String>,
    action: ActionWire,
    #[serde(default)]
    from: Option<Vec<PeerWire>>,
    #[serde(default)]
    to: Option<Vec<PeerWire>>,
    #[serde(default)]
    ports: Option<Vec<PortWire>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum ActionWire {
    Allow,
    Deny,
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a peer: a mapping with namespaces, pods or networks")]
struct PeerWire {
    #[serde(default)]
    namespaces: Option<SelectorWire>,
    #[serde(default)]
    pods: Option<PodsWire>,
    #[serde(default)]
    networks: Option<Vec<Cidr>>,
    #[serde(default)]
    nodes: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a port: a mapping with portNumber, portRange or namedPort"
)]
struct PortWire {
    #[serde(default)]
    port_number: Option<PortNumberWire>,
    #[serde(default)]
    port_range: Option<PortRangeWire>,
    #[serde(default)]
    named_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "portNumber: a mapping with protocol and port")]
struct PortNumberWire {
    #[serde(default)]
    protocol: Option<ProtocolWire>,
    port: PortNumber,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "portRange: a mapping with protocol, start and end")]
struct PortRangeWire {
    #[serde(default)]
    protocol: Option<ProtocolWire>,
    start: PortNumber,
    end: PortNumber,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum ProtocolWire {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl ProtocolWire {
    fn protocol(wire: Option<ProtocolWire>) -> Protocol {
        match wire {
            None | Some(ProtocolWire::Tcp) => Protocol::Tcp,
            Some(ProtocolWire::Udp) => Protocol::Udp,
            Some(ProtocolWire::Sctp) => Protocol::Sctp,
        }
    }
}

/// The most rules per direction and networks per peer the API admits.
const MAX_RULES: usize = 100;
const MAX_NETWORKS: usize = 25;
const MAX_RULE_NAME: usize = 100;

/// Lowers an AdminNetworkPolicy (`baseline` false) or BaselineAdminNetworkPolicy.
///
/// `place` gives the place of a path of the document.
pub(crate) fn lower_anp(
    doc: &AnpDocument,
    baseline: bool,
    place: &dyn Fn(&FieldPath) -> Place,
) -> Result<AdminPolicy, Invalid> {
    let meta = FieldPath::root().key("metadata");
    if doc.metadata.namespace.is_some() {
        return Err(meta.key("namespace").invalid("admin network policies are cluster-scoped: no namespace"));
    }
    let name = doc.metadata.name.0.clone();
    let spec_path = FieldPath::root().key("spec");
    let tier = match (baseline, doc.spec.priority) {
        (true, Some(_)) => {
            return Err(spec_path.key("priority").invalid("a BaselineAdminNetworkPolicy has no priority"));
        }
        (true, None) if name != "default" => {
            return Err(meta.key("name").invalid(
                "only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster",
            ));
        }
        (true, None) => AdminTier::Baseline,
        (false, None) => return Err(spec_path.invalid("missing field `priority` (0 to 1000)")),
        (false, Some(PortNumber(p))) if p > 1000 => {
            return Err(spec_path.key("priority").invalid(format!("priority {p} is above 1000")));
        }
        (false, Some(PortNumber(priority))) => AdminTier::Admin { priority },
    };
    let subject = lower_pods_or_namespaces(
        doc.spec.subject.namespaces.as_ref(),
        doc.spec.subject.pods.as_ref(),
        &spec_path.key("subject"),
    )?;
    let mut directions = [Vec::new(), Vec::new()];
    for (d, (list, key)) in
        [(&doc.spec.ingress, "ingress"), (&doc.spec.egress, "egress")].into_iter().enumerate()
    {
        if list.len() > MAX_RULES {
            return Err(spec_path
                .key(key)
                .index(MAX_RULES)
                .invalid(format!("at most {MAX_RULES} {key} rules")));
        }
        for (i, rule) in list.iter().enumerate() {
            let direction = Direction::ALL[d];
            directions[d].push(lower_rule(rule, direction, baseline, &spec_path.key(key).index(i), place)?);
        }
    }
    let [ingress, egress] = directions;
    Ok(AdminPolicy { tier, name, subject, ingress, egress })
}

fn lower_rule(
    rule: &RuleWire,
    direction: Direction,
    baseline: bool,
    at: &FieldPath,
    place: &dyn Fn(&FieldPath) -> Place,
) -> Result<AdminRule, Invalid> {
    let name = rule.name.clone().unwrap_or_default();
    if name.chars().count() > MAX_RULE_NAME {
        return Err(at.key("name").invalid(format!("a rule name has at most {MAX_RULE_NAME} characters")));
    }
    let action = match rule.action {
        ActionWire::Allow => AdminAction::Allow,
        ActionWire::Deny => AdminAction::Deny,
        ActionWire::Pass if baseline => {
            return Err(at
                .key("action")
                .invalid("a BaselineAdminNetworkPolicy rule's action is Allow or Deny"));
        }
        ActionWire::Pass => AdminAction::Pass,
    };
    let (peers_key, peers, other, other_key) = match direction {
        Direction::Ingress => ("from", &rule.from, &rule.to, "to"),
        Direction::Egress => ("to", &rule.to, &rule.from, "from"),
    };
    if other.is_some() {
        return Err(at
            .key(other_key)
            .invalid(format!("an {direction} rule has `{peers_key}`, not `{other_key}`")));
    }
    let peers = peers.as_deref().unwrap_or_default();
    if peers.is_empty() {
        return Err(at.invalid(format!("`{peers_key}` must list at least one peer")));
    }
    let mut lowered = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        lowered.extend(lower_peer(peer, direction, &at.key(peers_key).index(i))?);
    }
    lowered.sort();
    lowered.dedup();
    let (mut l4, mut named_ports) = (Vec::new(), Vec::new());
    if let Some(ports) = &rule.ports {
        if ports.is_empty() {
            return Err(at
                .key("ports")
                .invalid("`ports` lists at least one port; leave it out for every port"));
        }
        for (i, port) in ports.iter().enumerate() {
            let pat = at.key("ports").index(i);
            match (&port.port_number, &port.port_range, &port.named_port) {
                (Some(n), None, None) => {
                    if n.port.0 == 0 {
                        return Err(pat.key("portNumber").key("port").invalid("a port is 1 to 65535"));
                    }
                    l4.extend(port_matches(&[ProtocolWire::protocol(n.protocol)], (n.port.0, n.port.0)));
                }
                (None, Some(r), None) => {
                    let rat = pat.key("portRange");
                    if r.start.0 == 0 {
                        return Err(rat.key("start").invalid("a port is 1 to 65535"));
                    }
                    if r.end.0 <= r.start.0 {
                        return Err(rat
                            .key("end")
                            .invalid(format!("end {} must be greater than start {}", r.end.0, r.start.0)));
                    }
                    l4.extend(port_matches(&[ProtocolWire::protocol(r.protocol)], (r.start.0, r.end.0)));
                }
                (None, None, Some(name)) => {
                    let lower = name.to_ascii_lowercase();
                    check_port_name(&lower).map_err(|e| pat.key("namedPort").invalid(e))?;
                    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                        named_ports.push(NamedPortMatch { proto, name: lower.clone() });
                    }
                }
                _ => return Err(pat.invalid("a port has exactly one of portNumber, portRange or namedPort")),
            }
        }
    }
    l4.sort();
    l4.dedup();
    named_ports.sort();
    named_ports.dedup();
    Ok(AdminRule {
        name,
        action,
        matches: PeerRule { peers: lowered, l4, named_ports, http: None },
        at: place(at),
    })
}

fn lower_peer(peer: &PeerWire, direction: Direction, at: &FieldPath) -> Result<Vec<Peer>, Invalid> {
    if peer.nodes.is_some() {
        return Err(at.key("nodes").invalid(
            "`nodes` peers are not supported yet: they select every node, this one included, and the Node \
             document declares no labels of its own (CiliumNetworkPolicy's toNodes selects other nodes by \
             their peers[].labels, with policy.nodeSelectorLabels)",
        ));
    }
    let given = [peer.namespaces.is_some(), peer.pods.is_some(), peer.networks.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(at.invalid("a peer has exactly one of namespaces, pods or networks"));
    }
    if let Some(networks) = &peer.networks {
        if direction == Direction::Ingress {
            return Err(at.key("networks").invalid("`networks` peers are for egress rules only"));
        }
        if networks.is_empty() || networks.len() > MAX_NETWORKS {
            return Err(at.key("networks").invalid(format!("`networks` lists 1 to {MAX_NETWORKS} CIDRs")));
        }
        return Ok(networks.iter().map(|&cidr| Peer::Cidr(CidrRule { cidr, except: Vec::new() })).collect());
    }
    Ok(vec![Peer::Endpoints(lower_pods_or_namespaces(peer.namespaces.as_ref(), peer.pods.as_ref(), at)?)])
}

/// `namespaces` or `pods` (exactly one) as an endpoint selector.
fn lower_pods_or_namespaces(
    namespaces: Option<&SelectorWire>,
    pods: Option<&PodsWire>,
    at: &FieldPath,
) -> Result<Selector, Invalid> {
    let in_a_namespace = Requirement { key: NAMESPACE_LABEL.to_owned(), op: Operator::Exists };
    match (namespaces, pods) {
        (Some(ns), None) => {
            let reqs = lower_namespace_selector(ns, &at.key("namespaces"))?;
            Ok(Selector::new(reqs.into_iter().chain([in_a_namespace])))
        }
        (None, Some(pods)) => {
            let ns =
                lower_namespace_selector(&pods.namespace_selector, &at.key("pods").key("namespaceSelector"))?;
            let pod = lower_requirements(&pods.pod_selector, &at.key("pods").key("podSelector"))?;
            Ok(Selector::new(ns.into_iter().chain(pod.into_iter().map(|(r, _)| r)).chain([in_a_namespace])))
        }
        _ => Err(at.invalid("exactly one of namespaces or pods")),
    }
}

/// The admin policies in evaluation order: AdminNetworkPolicies by (priority, name), then the
/// baseline. Two ANPs of one name, or two baselines, are refused (at the second). Policies of
/// equal priority: the API leaves their order to the implementation ("the implementation can
/// apply any of the matching policies"); sluice takes them by name, so the result is
/// deterministic.
pub(crate) fn order(mut policies: Vec<(usize, AdminPolicy)>) -> Result<Vec<AdminPolicy>, (usize, Invalid)> {
    policies.sort_by(|(ia, a), (ib, b)| (a.tier, &a.name, ia).cmp(&(b.tier, &b.name, ib)));
    for pair in policies.windows(2) {
        let ((_, a), (index, b)) = (&pair[0], &pair[1]);
        let same_kind = matches!((a.tier, b.tier), (AdminTier::Admin { .. }, AdminTier::Admin { .. }))
            || (a.tier == AdminTier::Baseline && b.tier == AdminTier::Baseline);
        let duplicate = match (a.tier, b.tier) {
            (AdminTier::Baseline, AdminTier::Baseline) => true,
            _ => same_kind && a.name == b.name,
        };
        if duplicate {
            return Err((
                *index,
                FieldPath::root().key("metadata").key("name").invalid(format!(
                    "a second {} `{}`",
                    b.kind_name(),
                    b.name
                )),
            ));
        }
    }
    Ok(policies.into_iter().map(|(_, p)| p).collect())
}
