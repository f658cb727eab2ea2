//! `kind: CiliumNetworkPolicy` (`apiVersion: cilium.io/v2`): wire form and lowering to
//! [`Policy`].
//!
//! Contract (what is read, and what it means; see `super::policy` for the semantics):
//! - `metadata`: `name`, `namespace` (default `default`); `labels` and `annotations` are
//!   accepted and ignored. `spec` (one rule) and/or `specs` (a list); at least one of them.
//! - A rule: `endpointSelector` (required, scoped to the namespace), `ingress`, `ingressDeny`,
//!   `egress`, `egressDeny`, `enableDefaultDeny`, `description`. A direction is enforced
//!   when `enableDefaultDeny` says so for it, or, when it does not say, when its allow or
//!   deny list is non-empty (as in Cilium: `ingress: [{}]` is default deny with nothing
//!   allowed). Deny entries drop whether or not the direction is enforced.
//! - `fromNodes`/`toNodes`: label selectors over the cluster's other nodes (the overlay
//!   peers' `labels`), not scoped to a namespace; accepted only with the node's
//!   `policy.nodeSelectorLabels` (Cilium's `enable-node-selector-labels`), rejected otherwise
//!   with Cilium's message. They never select the node itself (Cilium adds a
//!   `reserved:remote-node` requirement to them).
//! - `toServices` (egress): `k8sService` (`serviceName`, `namespace`) selects the file's
//!   Services of that name, `k8sServiceSelector` (`selector`, `namespace`) those whose labels
//!   the selector matches; without `namespace`, in any namespace (as Cilium's
//!   `serviceRefMatches`/`serviceSelectorMatches` do). Each selected Service becomes peers
//!   as Cilium translates it: its `spec.selector` as an endpoint selector in the Service's
//!   namespace, or, for a Service without a selector, its EndpointSlice addresses as CIDR
//!   peers (which, like every CIDR peer, never match an endpoint of the cluster). As in
//!   Cilium, `toServices` cannot be combined with `toPorts` or another peer field; it is
//!   refused in `egressDeny`, where Cilium does not translate it.
//! - An ingress entry: `fromEndpoints` (selectors, scoped to the namespace unless they name
//!   one), `fromCIDR`, `fromCIDRSet` (`cidr` and `except`, each except inside its cidr),
//!   `fromEntities` (all, cluster, host, world, remote-node, kube-apiserver, health, init,
//!   ingress, unmanaged: see [`Entity`]), `toPorts`, `icmps`; egress the same with
//!   `to` names. As in Cilium, one entry combines at most one kind of peer, and not `icmps`
//!   with `toPorts`. An entry with ports but no peer field allows those ports from any peer
//!   (`all`); a peer field that is present but empty selects no peer.
//! - `toPorts: [{ports: [{port, endPort, protocol}]}]`: protocol TCP, UDP, SCTP or ANY (the
//!   default; TCP, UDP and SCTP), port a number or digit string (every port when absent or
//!   0) or a port name (`super::named_ports`), endPort at least port. `rules: {http: [...]}`
//!   (L7): each entry has `method`, `path`, `host` (regular expressions, checked here; RE2
//!   syntax as Cilium checks them), `headers` (`"Name: value"` needs that exact value,
//!   `"Name"` presence; split at the first space and the name's trailing `:` dropped, as
//!   Cilium does) and `headerMatches` (`name`, `value`, `mismatch` empty or `LOG`; `ADD`,
//!   `DELETE`, `REPLACE` and `secret` are rejected: sluice's proxy does not rewrite headers
//!   or read secrets). A `toPorts` entry with `rules` becomes its own peer rule, its ports
//!   carrying the HTTP rules; `rules` needs TCP ports given by number. `dns`, `kafka`,
//!   `l7proto` and `l7` are rejected: only HTTP is proxied.
//!   `icmps: [{fields: [{type, family}]}]`, family IPv4 (default) or IPv6.
//! - Deny entries (`ingressDeny`, `egressDeny`) take the same fields except L7 `rules`.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::cidr::Cidr;
use super::de::parse_str_scalar;
use super::endpoint::Name;
use super::labels::{Requirement, Selector, NAMESPACE_LABEL};
use super::locate::{FieldPath, Invalid};
use super::policy::{
    CidrRule, Direction, DirectionRules, Entity, HeaderRule, HttpRule, Mismatch, Peer, PeerRule, Policy,
    PolicyKind, PortMatch, Protocol, Rule,
};
use super::policy_wire::{
    lower_cidr_rule, lower_peer_selector, lower_port_spec, lower_requirements, lower_subject, parse_protocol,
    EntityWire, IcmpFamily, IcmpType, ObjectMeta, ObjectName, PortNumber, PortSpec, PortZero, SelectorWire,
};
use super::service::PolicyService;
use super::sources::EntryOrigin;

/// `kind: CiliumNetworkPolicy`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a CiliumNetworkPolicy document: a mapping with apiVersion, kind, metadata and spec or specs"
)]
pub(crate) struct CnpDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::cnp_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<RuleWire>,
    #[serde(default)]
    specs: Option<Vec<RuleWire>>,
}

/// `kind: CiliumClusterwideNetworkPolicy`: the same rules, cluster-scoped (no namespace).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a CiliumClusterwideNetworkPolicy document: a mapping with apiVersion, kind, metadata and spec or specs"
)]
pub(crate) struct CcnpDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::ccnp_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<RuleWire>,
    #[serde(default)]
    specs: Option<Vec<RuleWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a policy rule: a mapping with endpointSelector, ingress, ingressDeny, egress and egressDeny"
)]
struct RuleWire {
    endpoint_selector: SelectorWire,
    #[serde(default)]
    ingress: Option<Vec<IngressWire>>,
    #[serde(default)]
    ingress_deny: Option<Vec<IngressWire>>,
    #[serde(default)]
    egress: Option<Vec<EgressWire>>,
    #[serde(default)]
    egress_deny: Option<Vec<EgressWire>>,
    /// Whether the rule puts its subjects in default deny, per direction (when not given:
    /// for a direction the rule has entries for).
    #[serde(default)]
    enable_default_deny: Option<DefaultDenyWire>,
    /// Free text, not used.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// `enableDefaultDeny`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "enableDefaultDeny: a mapping with ingress and egress")]
struct DefaultDenyWire {
    #[serde(default)]
    ingress: Option<bool>,
    #[serde(default)]
    egress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an ingress entry: a mapping with fromEndpoints, fromCIDR, fromCIDRSet, fromEntities, toPorts or icmps"
)]
struct IngressWire {
    #[serde(rename = "fromEndpoints", default)]
    endpoints: Option<Vec<SelectorWire>>,
    #[serde(rename = "fromCIDR", default)]
    cidr: Option<Vec<Cidr>>,
    #[serde(rename = "fromCIDRSet", default)]
    cidr_set: Option<Vec<CidrSetWire>>,
    #[serde(rename = "fromEntities", default)]
    entities: Option<Vec<EntityWire>>,
    #[serde(rename = "toPorts", default)]
    to_ports: Option<Vec<PortRuleWire>>,
    #[serde(default)]
    icmps: Option<Vec<IcmpRuleWire>>,
    #[serde(rename = "fromNodes", default)]
    nodes: Option<Vec<SelectorWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an egress entry: a mapping with toEndpoints, toCIDR, toCIDRSet, toEntities, toPorts or icmps"
)]
struct EgressWire {
    #[serde(rename = "toEndpoints", default)]
    endpoints: Option<Vec<SelectorWire>>,
    #[serde(rename = "toCIDR", default)]
    cidr: Option<Vec<Cidr>>,
    #[serde(rename = "toCIDRSet", default)]
    cidr_set: Option<Vec<CidrSetWire>>,
    #[serde(rename = "toEntities", default)]
    entities: Option<Vec<EntityWire>>,
    #[serde(rename = "toPorts", default)]
    to_ports: Option<Vec<PortRuleWire>>,
    #[serde(default)]
    icmps: Option<Vec<IcmpRuleWire>>,
    #[serde(rename = "toNodes", default)]
    nodes: Option<Vec<SelectorWire>>,
    #[serde(rename = "toServices", default)]
    services: Option<Vec<ServiceWire>>,
}

/// One `toServices` item.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a toServices entry: a mapping with k8sService or k8sServiceSelector"
)]
struct ServiceWire {
    #[serde(default)]
    k8s_service: Option<K8sServiceWire>,
    #[serde(default)]
    k8s_service_selector: Option<K8sServiceSelectorWire>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "k8sService: a mapping with serviceName and namespace"
)]
struct K8sServiceWire {
    service_name: ObjectName,
    #[serde(default)]
    namespace: Option<Name>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "k8sServiceSelector: a mapping with selector and namespace")]
struct K8sServiceSelectorWire {
    selector: SelectorWire,
    #[serde(default)]
    namespace: Option<Name>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a CIDR set: a mapping with cidr and except")]
struct CidrSetWire {
    cidr: Cidr,
    #[serde(default)]
    except: Vec<Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a toPorts entry: a mapping with ports")]
struct PortRuleWire {
    #[serde(default)]
    ports: Option<Vec<PortProtocolWire>>,
    /// L7 rules.
    #[serde(default)]
    rules: Option<L7RulesWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "L7 rules: a mapping with http")]
struct L7RulesWire {
    #[serde(default)]
    http: Option<Vec<HttpRuleWire>>,
    /// Read only to reject them at their place.
    #[serde(default)]
    dns: Option<IgnoredAny>,
    #[serde(default)]
    kafka: Option<IgnoredAny>,
    #[serde(default)]
    l7proto: Option<IgnoredAny>,
    #[serde(default)]
    l7: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an HTTP rule: a mapping with method, path, host, headers and headerMatches"
)]
struct HttpRuleWire {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    header_matches: Option<Vec<HeaderMatchWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a header match: a mapping with name, value and mismatch")]
struct HeaderMatchWire {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    mismatch: Option<String>,
    /// Read only to reject it at its place.
    #[serde(default)]
    secret: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a port: a mapping with port, endPort and protocol"
)]
struct PortProtocolWire {
    #[serde(default)]
    port: Option<PortSpec>,
    #[serde(default)]
    end_port: Option<PortNumber>,
    #[serde(default)]
    protocol: Option<CnpProtocol>,
}

/// `protocol` of a Cilium port: the protocols it stands for.
#[derive(Debug)]
struct CnpProtocol(Vec<Protocol>);

impl<'de> Deserialize<'de> for CnpProtocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CnpProtocol, D::Error> {
        parse_str_scalar(deserializer, "a protocol: TCP, UDP, SCTP or ANY", |name| {
            parse_protocol(name, true).map(CnpProtocol)
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an icmps entry: a mapping with fields")]
struct IcmpRuleWire {
    fields: Vec<IcmpFieldWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an ICMP field: a mapping with type and family")]
struct IcmpFieldWire {
    #[serde(rename = "type")]
    icmp_type: IcmpType,
    #[serde(default)]
    family: IcmpFamily,
}

/// One ingress or egress entry, seen the same way whichever direction it is.
struct EntryView<'a> {
    /// `from` or `to`: how the peer fields are spelled.
    prefix: &'static str,
    endpoints: &'a Option<Vec<SelectorWire>>,
    cidr: &'a Option<Vec<Cidr>>,
    cidr_set: &'a Option<Vec<CidrSetWire>>,
    entities: &'a Option<Vec<EntityWire>>,
    to_ports: &'a Option<Vec<PortRuleWire>>,
    icmps: &'a Option<Vec<IcmpRuleWire>>,
    /// `fromNodes`/`toNodes`.
    nodes: Option<&'a Vec<SelectorWire>>,
    /// `toServices` (egress only).
    services: Option<&'a Vec<ServiceWire>>,
}

impl IngressWire {
    fn view(&self) -> EntryView<'_> {
        EntryView {
            prefix: "from",
            endpoints: &self.endpoints,
            cidr: &self.cidr,
            cidr_set: &self.cidr_set,
            entities: &self.entities,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            nodes: self.nodes.as_ref(),
            services: None,
        }
    }
}

impl EgressWire {
    fn view(&self) -> EntryView<'_> {
        EntryView {
            prefix: "to",
            endpoints: &self.endpoints,
            cidr: &self.cidr,
            cidr_set: &self.cidr_set,
            entities: &self.entities,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            nodes: self.nodes.as_ref(),
            services: self.services.as_ref(),
        }
    }
}

/// What lowering a Cilium policy needs from the rest of the node file.
pub(crate) struct CiliumContext<'a> {
    /// What `toServices` can select.
    pub services: &'a [PolicyService],
    /// `policy.nodeSelectorLabels`: whether `fromNodes`/`toNodes` are accepted.
    pub node_selector_labels: bool,
}

/// Lowers a CiliumNetworkPolicy document.
pub(crate) fn lower_cnp(doc: &CnpDocument, cx: &CiliumContext<'_>) -> Result<Policy, Invalid> {
    let namespace = doc.metadata.namespace();
    let rules = lower_specs(&doc.spec, &doc.specs, &namespace, PolicyKind::CiliumNetworkPolicy, cx)?;
    Ok(Policy { namespace, name: doc.metadata.name.0.clone(), kind: PolicyKind::CiliumNetworkPolicy, rules })
}

/// Lowers a CiliumClusterwideNetworkPolicy document: as a CiliumNetworkPolicy, but its
/// selectors are not scoped to a namespace (the policy's namespace is empty; see
/// `super::policy_wire`), and it has none.
pub(crate) fn lower_ccnp(doc: &CcnpDocument, cx: &CiliumContext<'_>) -> Result<Policy, Invalid> {
    if doc.metadata.namespace.is_some() {
        return Err(FieldPath::root().key("metadata").key("namespace").invalid(
            "a CiliumClusterwideNetworkPolicy is cluster-scoped: it has no namespace (leave it out)",
        ));
    }
    let kind = PolicyKind::CiliumClusterwideNetworkPolicy;
    let rules = lower_specs(&doc.spec, &doc.specs, CLUSTERWIDE, kind, cx)?;
    Ok(Policy { namespace: CLUSTERWIDE.to_owned(), name: doc.metadata.name.0.clone(), kind, rules })
}

/// The namespace of a cluster-wide policy: none (no namespace name is empty).
const CLUSTERWIDE: &str = "";

fn lower_specs(
    spec: &Option<RuleWire>,
    specs: &Option<Vec<RuleWire>>,
    namespace: &str,
    kind: PolicyKind,
    cx: &CiliumContext<'_>,
) -> Result<Vec<Rule>, Invalid> {
    let root = FieldPath::root();
    if spec.is_none() && specs.is_none() {
        return Err(root.invalid(format!("a {kind} needs `spec` or `specs`")));
    }
    let mut rules = Vec::new();
    if let Some(spec) = spec {
        rules.push(lower_rule(spec, &root.key("spec"), namespace, cx)?);
    }
    for (i, spec) in specs.iter().flatten().enumerate() {
        rules.push(lower_rule(spec, &root.key("specs").index(i), namespace, cx)?);
    }
    Ok(rules)
}

/// Where each rule and each entry of a (valid) CiliumNetworkPolicy was written: the path of
/// every rule in `rules` order, and every entry's peer rule with its path (see
/// `super::sources`). An entry that matches nothing has no peer rule and is left out.
pub(crate) fn entry_origins(
    doc: &CnpDocument,
    cx: &CiliumContext<'_>,
) -> Result<(Vec<FieldPath>, Vec<EntryOrigin>), Invalid> {
    specs_origins(&doc.spec, &doc.specs, &doc.metadata.namespace(), cx)
}

/// [`entry_origins`] for a CiliumClusterwideNetworkPolicy.
pub(crate) fn ccnp_entry_origins(
    doc: &CcnpDocument,
    cx: &CiliumContext<'_>,
) -> Result<(Vec<FieldPath>, Vec<EntryOrigin>), Invalid> {
    specs_origins(&doc.spec, &doc.specs, CLUSTERWIDE, cx)
}

fn specs_origins(
    spec: &Option<RuleWire>,
    specs: &Option<Vec<RuleWire>>,
    namespace: &str,
    cx: &CiliumContext<'_>,
) -> Result<(Vec<FieldPath>, Vec<EntryOrigin>), Invalid> {
    let root = FieldPath::root();
    let specs = spec
        .iter()
        .map(|spec| (spec, root.key("spec")))
        .chain(specs.iter().flatten().enumerate().map(|(i, spec)| (spec, root.key("specs").index(i))));
    let (mut rules, mut entries) = (Vec::new(), Vec::new());
    for (rule, (spec, path)) in specs.enumerate() {
        let lists: [(Direction, bool, &str, Vec<EntryView<'_>>); 4] = [
            (
                Direction::Ingress,
                false,
                "ingress",
                spec.ingress.iter().flatten().map(IngressWire::view).collect(),
            ),
            (
                Direction::Ingress,
                true,
                "ingressDeny",
                spec.ingress_deny.iter().flatten().map(IngressWire::view).collect(),
            ),
            (
                Direction::Egress,
                false,
                "egress",
                spec.egress.iter().flatten().map(EgressWire::view).collect(),
            ),
            (
                Direction::Egress,
                true,
                "egressDeny",
                spec.egress_deny.iter().flatten().map(EgressWire::view).collect(),
            ),
        ];
        for (direction, deny, key, views) in lists {
            for (i, view) in views.iter().enumerate() {
                let at = path.key(key).index(i);
                for peer_rule in lower_entry(view, &at, namespace, deny, cx)? {
                    entries.push(EntryOrigin { rule, direction, deny, peer_rule, path: at.clone() });
                }
            }
        }
        rules.push(path);
    }
    Ok((rules, entries))
}

fn lower_rule(
    rule: &RuleWire,
    path: &FieldPath,
    namespace: &str,
    cx: &CiliumContext<'_>,
) -> Result<Rule, Invalid> {
    let subject = lower_subject(&rule.endpoint_selector, &path.key("endpointSelector"), namespace)?;
    let default_deny = rule.enable_default_deny.as_ref();
    let ingress = lower_direction(
        rule.ingress.as_deref().map(|list| list.iter().map(IngressWire::view).collect()),
        rule.ingress_deny.as_deref().map(|list| list.iter().map(IngressWire::view).collect()),
        path,
        ("ingress", "ingressDeny"),
        (namespace, cx),
        default_deny.and_then(|d| d.ingress),
    )?;
    let egress = lower_direction(
        rule.egress.as_deref().map(|list| list.iter().map(EgressWire::view).collect()),
        rule.egress_deny.as_deref().map(|list| list.iter().map(EgressWire::view).collect()),
        path,
        ("egress", "egressDeny"),
        (namespace, cx),
        default_deny.and_then(|d| d.egress),
    )?;
    Ok(Rule { subject, ingress, egress })
}

fn lower_direction(
    allow: Option<Vec<EntryView<'_>>>,
    deny: Option<Vec<EntryView<'_>>>,
    path: &FieldPath,
    (allow_key, deny_key): (&str, &str),
    (namespace, cx): (&str, &CiliumContext<'_>),
    default_deny: Option<bool>,
) -> Result<DirectionRules, Invalid> {
    let allow = allow.unwrap_or_default();
    let deny = deny.unwrap_or_default();
    // Cilium: "If not specified, the default is true for each traffic direction that has
    // rules, and false otherwise."
    let enforced = default_deny.unwrap_or(!allow.is_empty() || !deny.is_empty());
    let mut rules = DirectionRules { enforced, ..Default::default() };
    for (list, key, is_deny) in [(&allow, allow_key, false), (&deny, deny_key, true)] {
        for (i, entry) in list.iter().enumerate() {
            let peer_rules = lower_entry(entry, &path.key(key).index(i), namespace, is_deny, cx)?;
            if is_deny { &mut rules.deny } else { &mut rules.allow }.extend(peer_rules);
        }
    }
    for list in [&mut rules.allow, &mut rules.deny] {
        list.sort();
        list.dedup();
    }
    Ok(rules)
}

/// One entry as peer rules: one for its L3/L4 part, one per `toPorts` entry with L7 rules;
/// none when it can match nothing.
fn lower_entry(
    entry: &EntryView<'_>,
    path: &FieldPath,
    namespace: &str,
    deny: bool,
    cx: &CiliumContext<'_>,
) -> Result<Vec<PeerRule>, Invalid> {
    let prefix = entry.prefix;
    let nodes_key = format!("{prefix}Nodes");
    if entry.nodes.is_some_and(|list| !list.is_empty()) && !cx.node_selector_labels {
        return Err(path.key(&nodes_key).invalid(format!(
            "{nodes_key} needs `policy.nodeSelectorLabels: true` in the Node's spec (Cilium: \
             \"FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" \
             flag is set\"); or use {prefix}Entities (host, remote-node)"
        )));
    }
    let peer_fields = [
        ("Endpoints", entry.endpoints.as_ref().map(Vec::len)),
        ("CIDR", entry.cidr.as_ref().map(Vec::len)),
        ("CIDRSet", entry.cidr_set.as_ref().map(Vec::len)),
        ("Entities", entry.entities.as_ref().map(Vec::len)),
        ("Services", entry.services.map(Vec::len)),
        ("Nodes", entry.nodes.map(Vec::len)),
    ];
    let used: Vec<&str> =
        peer_fields.iter().filter(|(_, len)| len.is_some_and(|n| n > 0)).map(|(name, _)| *name).collect();
    if let [first, second, ..] = used.as_slice() {
        return Err(path.invalid(format!(
            "{prefix}{first} and {prefix}{second} cannot be combined in one entry (Cilium rejects it \
             too); write them as separate entries"
        )));
    }
    let has_ports = entry.to_ports.as_ref().is_some_and(|p| !p.is_empty());
    let has_icmps = entry.icmps.as_ref().is_some_and(|p| !p.is_empty());
    if has_ports && has_icmps {
        return Err(path.invalid(
            "icmps and toPorts cannot be combined in one entry (Cilium rejects it too); write them as \
             separate entries",
        ));
    }

    let mut peers = Vec::new();
    for (i, selector) in entry.endpoints.iter().flatten().enumerate() {
        let at = path.key(&format!("{prefix}Endpoints")).index(i);
        peers.push(Peer::Endpoints(lower_peer_selector(selector, &at, namespace)?));
    }
    for cidr in entry.cidr.iter().flatten() {
        peers.push(Peer::Cidr(lower_cidr_rule(*cidr, &[], path)?));
    }
    for (i, set) in entry.cidr_set.iter().flatten().enumerate() {
        let at = path.key(&format!("{prefix}CIDRSet")).index(i);
        peers.push(Peer::Cidr(lower_cidr_rule(set.cidr, &set.except, &at)?));
    }
    peers.extend(entry.entities.iter().flatten().map(|e| Peer::Entity(e.0)));
    for (i, selector) in entry.nodes.into_iter().flatten().enumerate() {
        // Not scoped to a namespace: nodes have none (Cilium lowers them with
        // `NewESFromK8sLabelSelector("", ...)`).
        let at = path.key(&nodes_key).index(i);
        peers
            .push(Peer::Nodes(Selector::new(lower_requirements(selector, &at)?.into_iter().map(|(r, _)| r))));
    }
    if let Some(list) = entry.services.filter(|list| !list.is_empty()) {
        let at = path.key("toServices");
        if deny {
            return Err(at.invalid(
                "toServices is not supported in egressDeny: Cilium translates toServices in egress \
                 (allow) rules only; deny the service's pods with toEndpoints or its addresses with toCIDR",
            ));
        }
        if has_ports {
            return Err(path.invalid(
                "toServices and toPorts cannot be combined in one entry (Cilium rejects it too: \
                 \"Combining ToServices and ToPorts is not supported yet\"); toServices allows every \
                 port of the service's backends",
            ));
        }
        for (i, wire) in list.iter().enumerate() {
            peers.extend(service_peers(wire, &at.index(i), cx.services)?);
        }
    }
    let any_peer_field = peer_fields.iter().any(|(_, len)| len.is_some());
    if !any_peer_field && (has_ports || has_icmps) {
        // Ports without a peer: those ports from (or to) anyone.
        peers.push(Peer::Entity(Entity::All));
    }

    let (mut l4, mut named_ports) = (Vec::new(), Vec::new());
    // Port entries with L7 rules: (their ports, their rules).
    let mut l7 = Vec::new();
    for (i, port_rule) in entry.to_ports.iter().flatten().enumerate() {
        let at = path.key("toPorts").index(i);
        let http = match &port_rule.rules {
            Some(_) if deny => return Err(at.key("rules").invalid("L7 rules cannot be part of a deny rule")),
            Some(rules) => Some(lower_l7_rules(rules, &at.key("rules"))?),
            None => None,
        };
        let ports = port_rule.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            return Err(at.invalid("a toPorts entry needs at least one port in `ports`"));
        }
        let (mut these, mut these_named) = (Vec::new(), Vec::new());
        for (j, port) in ports.iter().enumerate() {
            let at = at.key("ports").index(j);
            let protocols =
                port.protocol.as_ref().map_or(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..], |p| &p.0);
            let protocols = if http.is_none() {
                protocols
            } else if protocols.contains(&Protocol::Tcp) {
                // As in Cilium, L7 rules apply to TCP; `ANY` means TCP here.
                &[Protocol::Tcp][..]
            } else {
                return Err(at.key("protocol").invalid(
                    "ports with L7 rules must be TCP (`protocol: TCP` or `ANY`): the HTTP proxy sees TCP only",
                ));
            };
            let (numbered, named) =
                lower_port_spec(&port.port, port.end_port, &at, PortZero::EveryPort, protocols)?;
            if http.is_some() && !named.is_empty() {
                return Err(at
                    .key("port")
                    .invalid("a named port with L7 rules is not supported yet: give the port's number"));
            }
            these.extend(numbered);
            these_named.extend(named);
        }
        match http {
            Some(http) => l7.push((these, http)),
            None => {
                l4.extend(these);
                named_ports.extend(these_named);
            }
        }
    }
    for (i, icmp) in entry.icmps.iter().flatten().enumerate() {
        if icmp.fields.is_empty() {
            return Err(path
                .key("icmps")
                .index(i)
                .key("fields")
                .invalid("an icmps entry needs at least one field"));
        }
        for (j, field) in icmp.fields.iter().enumerate() {
            let at = path.key("icmps").index(i).key("fields").index(j).key("type");
            let number = field.icmp_type.number(field.family).map_err(|message| at.invalid(message))?;
            l4.push(PortMatch {
                proto: field.family.protocol(),
                first: u16::from(number),
                last: u16::from(number),
            });
        }
    }

    if peers.is_empty() {
        return Ok(Vec::new());
    }
    peers.sort();
    peers.dedup();
    l4.sort();
    l4.dedup();
    named_ports.sort();
    named_ports.dedup();
    let mut out = Vec::new();
    // An entry whose every port entry has L7 rules has no L3/L4 part.
    if !l4.is_empty() || !named_ports.is_empty() || l7.is_empty() {
        out.push(PeerRule { peers: peers.clone(), l4, named_ports, http: None });
    }
    for (mut ports, http) in l7 {
        ports.sort();
        ports.dedup();
        out.push(PeerRule { peers: peers.clone(), l4: ports, named_ports: Vec::new(), http: Some(http) });
    }
    Ok(out)
}

/// The peers one `toServices` item stands for: per selected Service, its pod selector in
/// its namespace, or its EndpointSlice addresses when it has no selector (Cilium's
/// `processRule` in `pkg/policy/k8s/service.go`: `appendSelector` / `appendEndpoints`).
fn service_peers(
    wire: &ServiceWire,
    at: &FieldPath,
    services: &[PolicyService],
) -> Result<Vec<Peer>, Invalid> {
    let in_namespace =
        |namespace: &Option<Name>, s: &PolicyService| namespace.as_ref().is_none_or(|n| n.0 == s.namespace);
    let selected: Vec<&PolicyService> = match (&wire.k8s_service, &wire.k8s_service_selector) {
        (Some(_), Some(_)) => return Err(at.invalid(
            "give one of k8sService and k8sServiceSelector (with both, Cilium reads only k8sServiceSelector)",
        )),
        (None, None) => return Err(at.invalid("a toServices entry needs k8sService or k8sServiceSelector")),
        (Some(by_name), None) => services
            .iter()
            .filter(|s| s.name == by_name.service_name.0 && in_namespace(&by_name.namespace, s))
            .collect(),
        (None, Some(by_labels)) => {
            let path = at.key("k8sServiceSelector").key("selector");
            let selector =
                Selector::new(lower_requirements(&by_labels.selector, &path)?.into_iter().map(|(r, _)| r));
            services
                .iter()
                .filter(|s| in_namespace(&by_labels.namespace, s) && selector.matches(&s.labels))
                .collect()
        }
    };
    Ok(selected
        .into_iter()
        .flat_map(|s| match &s.selector {
            Some(pods) => {
                let requirements = pods
                    .iter()
                    .filter(|(key, _)| key.as_str() != NAMESPACE_LABEL)
                    .map(|(key, value)| Requirement::equals(key, value))
                    .chain([Requirement::equals(NAMESPACE_LABEL, &s.namespace)]);
                vec![Peer::Endpoints(Selector::new(requirements))]
            }
            None => s
                .addresses
                .iter()
                .map(|&addr| Peer::Cidr(CidrRule { cidr: Cidr::host(addr), except: Vec::new() }))
                .collect(),
        })
        .collect())
}

/// `rules` of one `toPorts` entry: its HTTP rules, checked.
fn lower_l7_rules(rules: &L7RulesWire, path: &FieldPath) -> Result<Vec<HttpRule>, Invalid> {
    for (field, present) in [
        ("dns", rules.dns.is_some()),
        ("kafka", rules.kafka.is_some()),
        ("l7proto", rules.l7proto.is_some()),
        ("l7", rules.l7.is_some()),
    ] {
        if present {
            return Err(path.key(field).invalid(format!(
                "L7 `{field}` rules are not supported: sluice's proxy enforces HTTP rules only"
            )));
        }
    }
    let Some(list) = &rules.http else {
        return Err(path.invalid("L7 rules need `http` (the only L7 protocol sluice's proxy enforces)"));
    };
    if list.is_empty() {
        return Err(path
            .key("http")
            .invalid("`http` needs at least one rule (`http: [{}]` allows every request and records it)"));
    }
    let mut out = Vec::new();
    for (i, rule) in list.iter().enumerate() {
        let at = path.key("http").index(i);
        let regex = |value: &Option<String>, key: &str| -> Result<Option<String>, Invalid> {
            match value.as_deref() {
                // Cilium: "If omitted or empty, all paths are all allowed."
                None | Some("") => Ok(None),
                Some(text) => match crate::l7::rules::check_regex(text) {
                    Ok(()) => Ok(Some(text.to_owned())),
                    Err(why) => {
                        Err(at.key(key).invalid(format!("invalid regular expression {text:?}: {why}")))
                    }
                },
            }
        };
        let mut headers = Vec::new();
        for (j, header) in rule.headers.iter().flatten().enumerate() {
            let at = at.key("headers").index(j);
            // Cilium splits at the first space and drops the name's trailing `:`.
            let (name, value) = match header.split_once(' ') {
                Some((name, value)) => (name.trim_end_matches(':'), Some(value.to_owned())),
                None => (header.as_str(), None),
            };
            headers.push(HeaderRule {
                name: checked_header_name(name, &at)?,
                value,
                on_mismatch: Mismatch::Fail,
            });
        }
        for (j, m) in rule.header_matches.iter().flatten().enumerate() {
            let at = at.key("headerMatches").index(j);
            if m.secret.is_some() {
                return Err(at.key("secret").invalid(
                    "header matches against secrets are not supported (sluice reads no Kubernetes secrets); use `value`",
                ));
            }
            let on_mismatch = match m.mismatch.as_deref() {
                None | Some("") => Mismatch::Fail,
                Some("LOG") => Mismatch::Log,
                Some(action @ ("ADD" | "DELETE" | "REPLACE")) => {
                    return Err(at.key("mismatch").invalid(format!(
                        "mismatch action {action} is not supported: sluice's proxy does not rewrite headers (LOG is)"
                    )))
                }
                Some(other) => {
                    return Err(at
                        .key("mismatch")
                        .invalid(format!("unknown mismatch action {other:?}: expected LOG, ADD, DELETE or REPLACE")))
                }
            };
            let value = m.value.clone().filter(|v| !v.is_empty());
            headers.push(HeaderRule {
                name: checked_header_name(&m.name, &at.key("name"))?,
                value,
                on_mismatch,
            });
        }
        out.push(HttpRule {
            method: regex(&rule.method, "method")?,
            path: regex(&rule.path, "path")?,
            host: regex(&rule.host, "host")?,
            headers,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A header name as HTTP allows it (RFC 9110 `token`).
fn checked_header_name(name: &str, path: &FieldPath) -> Result<String, Invalid> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(path.invalid(format!("{name:?} is not an HTTP header name")));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::model::parse_str;
    use crate::model::policy::{Entity, Peer, PortMatch, Protocol};

    #[test]
    fn lowering_scopes_selectors_and_expands_protocols() {
        let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}, {matchLabels: {k8s:io.kubernetes.pod.namespace: data}}]
      toPorts: [{ports: [{port: 53}]}]
    - toPorts: [{ports: [{port: 80, protocol: TCP}]}]
    - {}
---
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
";
        let cfg = parse_str(text, "t.yaml").unwrap();
        let rule = &cfg.policies[0].rules[0];
        assert_eq!(rule.subject.to_string(), "app=web,io.kubernetes.pod.namespace=shop");
        assert!(rule.ingress.enforced && !rule.egress.enforced);
        // `{}` matches nothing and is dropped; the direction stays enforced. Peer rules are
        // sorted: entities before endpoint selectors.
        assert_eq!(rule.ingress.allow.len(), 2);
        assert_eq!(rule.ingress.allow[0].peers, [Peer::Entity(Entity::All)]);
        let peers: Vec<String> = rule.ingress.allow[1]
            .peers
            .iter()
            .map(|p| match p {
                Peer::Endpoints(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(peers, ["app=api,io.kubernetes.pod.namespace=shop", "io.kubernetes.pod.namespace=data"]);
        let dns = |proto| PortMatch { proto, first: 53, last: 53 };
        assert_eq!(rule.ingress.allow[1].l4, [dns(Protocol::Tcp), dns(Protocol::Udp), dns(Protocol::Sctp)]);
    }

    #[test]
    fn l7_port_entries_become_their_own_peer_rules() {
        use crate::model::policy::{HeaderRule, HttpRule, Mismatch};
        let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: '8080'}]
          rules:
            http:
              - {method: GET, path: '/api/.*', headers: ['X-My-Header: true', 'X-Present']}
              - headerMatches: [{name: X-Token, value: s3, mismatch: LOG}]
        - ports: [{port: '9090', protocol: TCP}]
---
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
";
        let cfg = parse_str(text, "t.yaml").unwrap();
        let allow = &cfg.policies[0].rules[0].ingress.allow;
        // The plain port and the L7 port are separate peer rules with the same peers (sorted
        // by ports).
        assert_eq!(allow.len(), 2, "{allow:#?}");
        let (l7, l4) = (&allow[0], &allow[1]);
        assert_eq!(l4.l4, [PortMatch { proto: Protocol::Tcp, first: 9090, last: 9090 }]);
        assert_eq!(l4.http, None);
        // `ANY` (the default) means TCP for L7 ports.
        assert_eq!(l7.l4, [PortMatch { proto: Protocol::Tcp, first: 8080, last: 8080 }]);
        assert_eq!(l7.peers, l4.peers);
        let header = |name: &str, value: Option<&str>, on_mismatch| HeaderRule {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            on_mismatch,
        };
        let want = vec![
            HttpRule { headers: vec![header("X-Token", Some("s3"), Mismatch::Log)], ..HttpRule::default() },
            HttpRule {
                method: Some("GET".to_owned()),
                path: Some("/api/.*".to_owned()),
                host: None,
                headers: vec![
                    header("X-My-Header", Some("true"), Mismatch::Fail),
                    header("X-Present", None, Mismatch::Fail),
                ],
            },
        ];
        assert_eq!(l7.http.as_ref(), Some(&want));
    }
}
