//! A reference evaluator that decides a flow straight from the policy documents as
//! written: the YAML text read as plain `serde_norway::Value`s, never the model's types or
//! its lowering. It shares no matching code with the compiler (no `Selector::matches`, no
//! `CidrRule::contains`, no `PortMatch::matches`, no `policy::oracle`), so a lowering bug
//! cannot agree with itself here.
//!
//! Semantics, from the Kubernetes and Cilium documentation and sluice's DESIGN:
//! - Endpoints carry their labels plus `io.kubernetes.pod.namespace: <namespace>`
//!   (`default` when not given). A peer address is an endpoint when an endpoint has it,
//!   the host when it is in `hostAddresses`, and outside the cluster otherwise.
//! - CiliumNetworkPolicy: `endpointSelector` selects endpoints of the policy's namespace.
//!   A direction is enforced when `ingress`/`ingressDeny` (`egress`/`egressDeny`) has
//!   entries. An entry's peers: `fromEndpoints` selectors (scoped to the policy's
//!   namespace unless they name the namespace label), `fromCIDR`, `fromCIDRSet` (`cidr`
//!   minus its `except`s; outside addresses only: CIDR rules never select endpoints or the
//!   host), `fromEntities` (`all`: anyone; `cluster`: endpoints and the host; `host`;
//!   `world`: outside addresses); an entry with ports but no peer field admits anyone. Its
//!   L4: `toPorts` ports (`protocol` TCP, UDP, SCTP, or ANY/absent for all three; `port`
//!   absent for every port; `endPort` closes a range), or `icmps` fields (`family` IPv4 by
//!   default: ICMP for IPv4, ICMPv6 for IPv6; the type is the flow's `dport`); neither:
//!   every protocol and port.
//! - NetworkPolicy: `podSelector` selects pods of its namespace; `policyTypes` lists the
//!   enforced directions (absent: Ingress, plus Egress when `egress` has entries). A rule's
//!   `from`/`to` absent or empty admits anyone; peers are `podSelector` and/or
//!   `namespaceSelector` (absent: the policy's namespace; it tests the Namespace
//!   document's labels plus `kubernetes.io/metadata.name`), or `ipBlock` (as a CIDR set);
//!   endpoints also carry their Namespace's labels as `io.cilium.k8s.namespace.labels.*`
//!   (what CiliumNetworkPolicy selectors see); `ports` absent or empty
//!   admits every port and protocol, a port's `protocol` defaults to TCP.
//! - CiliumClusterwideNetworkPolicy: a CiliumNetworkPolicy without namespace: its
//!   `endpointSelector` selects endpoints of every namespace, and so do its peer selectors.
//! - CiliumNetworkPolicy `enableDefaultDeny: {ingress: false}` (or egress): the policy
//!   does not enforce that direction (its deny entries still drop); `true` enforces it
//!   even without entries. Entities other than
//!   all, cluster, host and world name reserved identities no address of a node file has.
//!   ICMP types may be Cilium's names (per family). A Cilium port `0` is every port. A port
//!   given by name is the named port (endpoint `ports`) of the endpoint the flow goes to
//!   (the subject for ingress, the peer for egress); nothing else has named ports.
//! - The node itself: Kubernetes, "When a pod is isolated for ingress, the only allowed
//!   connections into the pod are those from the pod's node and those allowed by the
//!   ingress list"; Cilium's `allow-localhost` (node `spec.policy.allowLocalhost`, default
//!   `auto`, which is `always` under Kubernetes) does the same for its own policies unless
//!   it is `policy`.
//! - Verdict: any matching deny entry of a selecting policy: deny; else not selected by a
//!   policy enforcing the direction: allow; else ingress from the node where an enforcing
//!   policy admits it: allow; else any matching allow entry: allow; else deny.
//! - CiliumNetworkPolicy `toServices` (Cilium, Services based: "This feature uses the
//!   discovered services' label selector as an endpoint selector within the policy ...
//!   Services without selectors are handled differently. The IPs in the service's
//!   EndpointSlices are, converted to CIDR selectors. CIDR selectors cannot select pods"):
//!   `k8sService` by name, `k8sServiceSelector` by the Service's labels, each in the given
//!   namespace or any; a Service with a `selector` admits the endpoints of its namespace
//!   with those labels, one without admits outside addresses its EndpointSlices list.
//! - AdminNetworkPolicy and BaselineAdminNetworkPolicy (network-policy-api v1alpha1), around
//!   the above: "Policies with lower priority values have higher precedence" and "All
//!   AdminNetworkPolicy rules have higher precedence than NetworkPolicy or
//!   BaselineAdminNetworkPolicy rules"; within one, "a rule that appears at the top of the
//!   ingress rules would take the highest precedence". The first ANP rule (of ANPs whose
//!   `subject` selects the endpoint) whose peers and ports match decides: Allow, Deny, or
//!   Pass ("skip any remaining ANP rules, and then pass execution to any NetworkPolicies
//!   that select the pod. If the pod is not selected by any NetworkPolicies then execution
//!   is passed to any BaselineAdminNetworkPolicies"). Then the rule above, when a policy
//!   denies or isolates; else the baseline's first matching rule; else allow. Subjects and
//!   peers: `namespaces` (a selector over the Namespace's labels plus
//!   `kubernetes.io/metadata.name`) or `pods` (`namespaceSelector` and `podSelector`);
//!   egress `networks` (outside addresses in any CIDR). Ports: `portNumber` and `portRange`
//!   (`protocol` TCP by default), `namedPort` (the destination's container port of that name).

use serde::Deserialize;
use serde_norway::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    /// Own labels plus the namespace label.
    pub labels: BTreeMap<String, String>,
    /// Named container ports: (name, protocol number, port).
    pub ports: Vec<(String, u8, u16)>,
}

/// The documents of a node file, as written.
#[derive(Debug, Clone)]
pub struct Docs {
    pub endpoints: Vec<Endpoint>,
    pub hosts: Vec<IpAddr>,
    policies: Vec<Value>,
    /// `spec.policy.allowLocalhost` is `policy`.
    localhost_by_policy: bool,
    /// Namespace documents' labels, by name.
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// AdminNetworkPolicies, by (priority, name).
    admin: Vec<Value>,
    /// Services: (namespace, name, labels, selector, EndpointSlice addresses).
    services: Vec<Service>,
    /// The BaselineAdminNetworkPolicy, if any.
    baseline: Option<Value>,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Sequence(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key)).filter(|x| !x.is_null())
}

/// A policy's namespace; empty for a cluster-wide policy, which has none.
fn namespace_of(doc: &Value) -> String {
    if get(doc, "kind").map(s).as_deref() == Some("CiliumClusterwideNetworkPolicy") {
        return String::new();
    }
    get(doc, "metadata").and_then(|m| get(m, "namespace")).map_or_else(|| "default".to_string(), s)
}

impl Docs {
    pub fn parse(text: &str) -> Docs {
        let mut docs = Docs {
            endpoints: Vec::new(),
            hosts: Vec::new(),
            policies: Vec::new(),
            localhost_by_policy: false,
            namespaces: BTreeMap::new(),
            admin: Vec::new(),
            baseline: None,
            services: Vec::new(),
        };
        let mut slices: Vec<(String, String, Vec<IpAddr>)> = Vec::new();
        for d in serde_norway::Deserializer::from_str(text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("YAML: {e}"));
            match get(&v, "kind").map(s).as_deref() {
                Some("Node") => {
                    let spec = get(&v, "spec").expect("a node spec");
                    for e in list(get(spec, "endpoints")) {
                        let namespace = get(&e, "namespace").map_or_else(|| "default".to_string(), s);
                        let mut labels: BTreeMap<String, String> = get(&e, "labels")
                            .and_then(Value::as_mapping)
                            .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
                            .unwrap_or_default();
                        labels.insert(NAMESPACE_LABEL.to_string(), namespace.clone());
                        let addresses = ["ipv4", "ipv6"]
                            .iter()
                            .filter_map(|k| get(&e, k))
                            .map(|a| s(a).parse().expect("an address"))
                            .collect();
                        let ports = list(get(&e, "ports"))
                            .iter()
                            .map(|p| {
                                let proto = get(p, "protocol").map_or_else(|| "TCP".to_string(), s);
                                let port: u16 = s(get(p, "port").expect("port")).parse().expect("a port");
                                (s(get(p, "name").expect("name")), proto_number(&proto)[0], port)
                            })
                            .collect();
                        docs.endpoints.push(Endpoint {
                            name: s(get(&e, "name").expect("name")),
                            namespace,
                            addresses,
                            labels,
                            ports,
                        });
                    }
                    docs.localhost_by_policy = get(spec, "policy")
                        .and_then(|p| get(p, "allowLocalhost"))
                        .is_some_and(|v| s(v) == "policy");
                    docs.hosts = list(get(spec, "hostAddresses"))
                        .iter()
                        .map(|a| s(a).parse().expect("an address"))
                        .collect();
                }
                Some("CiliumNetworkPolicy" | "NetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                    docs.policies.push(v)
                }
                Some("AdminNetworkPolicy") => docs.admin.push(v),
                Some("Service") => {
                    let meta = get(&v, "metadata").expect("metadata");
                    let labels = |m: Option<&Value>| -> BTreeMap<String, String> {
                        m.and_then(Value::as_mapping)
                            .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
                            .unwrap_or_default()
                    };
                    docs.services.push(Service {
                        namespace: get(meta, "namespace").map_or_else(|| "default".to_string(), s),
                        name: s(get(meta, "name").expect("name")),
                        labels: labels(get(meta, "labels")),
                        selector: labels(get(get(&v, "spec").expect("spec"), "selector")),
                        addresses: Vec::new(),
                    });
                }
                Some("EndpointSlice") => {
                    let meta = get(&v, "metadata").expect("metadata");
                    let service = s(get(get(meta, "labels").expect("labels"), "kubernetes.io/service-name")
                        .expect("the service-name label"));
                    let addresses = list(get(&v, "endpoints"))
                        .iter()
                        .flat_map(|e| list(get(e, "addresses")))
                        .map(|a| s(&a).parse().expect("an address"))
                        .collect();
                    slices.push((
                        get(meta, "namespace").map_or_else(|| "default".to_string(), s),
                        service,
                        addresses,
                    ));
                }
                Some("BaselineAdminNetworkPolicy") => docs.baseline = Some(v),
                Some("Namespace") => {
                    let meta = get(&v, "metadata").expect("metadata");
                    let labels = get(meta, "labels")
                        .and_then(Value::as_mapping)
                        .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
                        .unwrap_or_default();
                    docs.namespaces.insert(s(get(meta, "name").expect("name")), labels);
                }
                _ => {}
            }
        }
        for (namespace, name, addresses) in slices {
            if let Some(svc) = docs.services.iter_mut().find(|x| x.namespace == namespace && x.name == name) {
                svc.addresses.extend(addresses);
            }
        }
        let order = |v: &Value| {
            let priority: u32 = s(get(get(v, "spec").expect("spec"), "priority").expect("priority"))
                .parse()
                .expect("a priority");
            (priority, s(get(get(v, "metadata").expect("metadata"), "name").expect("name")))
        };
        docs.admin.sort_by_key(order);
        // Cilium gives pods their namespace's labels, prefixed.
        for e in &mut docs.endpoints {
            for (k, v) in docs.namespaces.get(&e.namespace).into_iter().flatten() {
                if k != NAMESPACE_NAME_LABEL {
                    e.labels.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v.clone());
                }
            }
        }
        docs
    }

    /// The same documents without AdminNetworkPolicies and the baseline.
    // Used by policy_docs_oracle, not by policy_semantics (which includes this file too).
    #[allow(dead_code)]
    pub fn without_admin(&self) -> Docs {
        Docs { admin: Vec::new(), baseline: None, ..self.clone() }
    }

    pub fn endpoint(&self, name: &str) -> &Endpoint {
        self.endpoints.iter().find(|e| e.name == name).expect("a known endpoint")
    }
}

/// A Service as `toServices` sees it.
#[derive(Debug, Clone)]
struct Service {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Empty: a Service without a selector.
    selector: BTreeMap<String, String>,
    addresses: Vec<IpAddr>,
}

/// Whether one `toServices` item admits `peer`.
fn to_service_matches(docs: &Docs, item: &Value, peer: Peer<'_>) -> bool {
    let in_namespace = |v: &Value, svc: &Service| get(v, "namespace").is_none_or(|n| s(n) == svc.namespace);
    docs.services
        .iter()
        .filter(|svc| match (get(item, "k8sService"), get(item, "k8sServiceSelector")) {
            (Some(by_name), None) => {
                s(get(by_name, "serviceName").expect("serviceName")) == svc.name && in_namespace(by_name, svc)
            }
            (None, Some(by_labels)) => {
                in_namespace(by_labels, svc)
                    && selector_matches(get(by_labels, "selector").expect("selector"), &svc.labels)
            }
            _ => panic!("one of k8sService and k8sServiceSelector"),
        })
        .any(|svc| match peer {
            Peer::Endpoint(e) if !svc.selector.is_empty() => {
                e.namespace == svc.namespace && svc.selector.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            }
            Peer::Outside(a) if svc.selector.is_empty() => svc.addresses.contains(&a),
            _ => false,
        })
}

/// Who a peer address is.
#[derive(Debug, Clone, Copy)]
enum Peer<'a> {
    Endpoint(&'a Endpoint),
    Host,
    Outside(IpAddr),
}

/// `matchLabels` and `matchExpressions` of `selector` against `labels` (an empty
/// selector matches everything).
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let label_ok = get(selector, "matchLabels")
        .and_then(Value::as_mapping)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(&s(k)) == Some(&s(v))));
    let exprs_ok = list(get(selector, "matchExpressions")).iter().all(|e| {
        let key = s(get(e, "key").expect("key"));
        let values: Vec<String> = list(get(e, "values")).iter().map(s).collect();
        let have = labels.get(&key);
        match s(get(e, "operator").expect("operator")).as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => panic!("operator {other}"),
        }
    });
    label_ok && exprs_ok
}

/// Whether `selector` mentions `key` (in matchLabels or matchExpressions).
fn mentions(selector: &Value, key: &str) -> bool {
    get(selector, "matchLabels").and_then(Value::as_mapping).is_some_and(|m| m.keys().any(|k| s(k) == key))
        || list(get(selector, "matchExpressions"))
            .iter()
            .any(|e| get(e, "key").map(s).as_deref() == Some(key))
}

/// A CIDR as written, and whether `a` is inside it: the address bits compared one by one.
fn in_cidr(cidr: &str, a: IpAddr) -> bool {
    let (net, len) = cidr.split_once('/').expect("a CIDR");
    let net: IpAddr = net.parse().expect("a CIDR address");
    let len: usize = len.parse().expect("a CIDR length");
    let bits = |ip: IpAddr| -> Vec<bool> {
        let bytes: Vec<u8> = match ip {
            IpAddr::V4(x) => x.octets().to_vec(),
            IpAddr::V6(x) => x.octets().to_vec(),
        };
        bytes.iter().flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1)).collect()
    };
    if net.is_ipv4() != a.is_ipv4() {
        return false;
    }
    bits(net)[..len] == bits(a)[..len]
}

fn in_cidr_set(set: &Value, a: IpAddr) -> bool {
    let cidr = s(get(set, "cidr").expect("cidr"));
    in_cidr(&cidr, a) && !list(get(set, "except")).iter().any(|e| in_cidr(&s(e), a))
}

fn icmp_proto(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        1
    } else {
        58
    }
}

/// One flow as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub peer: IpAddr,
    pub proto: u8,
    /// Destination port; for ICMP the type.
    pub dport: u16,
}

fn proto_number(name: &str) -> Vec<u8> {
    match name {
        "TCP" => vec![6],
        "UDP" => vec![17],
        "SCTP" => vec![132],
        "ANY" => vec![6, 17, 132],
        other => panic!("protocol {other}"),
    }
}

/// A `ports` item (CNP `toPorts[].ports[]` or NetworkPolicy `ports[]`) against a flow;
/// `default` is the protocols an absent `protocol` means.
fn port_matches(port: &Value, flow: &Flow, default: &[u8], dest: Option<&Endpoint>) -> bool {
    let protos = get(port, "protocol").map_or_else(|| default.to_vec(), |p| proto_number(&s(p)));
    if !protos.contains(&flow.proto) {
        return false;
    }
    match get(port, "port") {
        None => true,
        Some(p) if s(p) == "0" => true,
        // A named port of the endpoint the flow goes to.
        Some(p) if s(p).chars().any(|c| c.is_ascii_alphabetic()) => {
            let name = s(p).to_ascii_lowercase();
            dest.is_some_and(|d| {
                d.ports
                    .iter()
                    .any(|(n, proto, number)| *n == name && *proto == flow.proto && *number == flow.dport)
            })
        }
        Some(p) => {
            let first: u16 = s(p).parse().expect("a port number");
            let last: u16 = get(port, "endPort").map_or(first, |e| s(e).parse().expect("a port number"));
            (first..=last).contains(&flow.dport)
        }
    }
}

/// An ICMP type as written: a number, or Cilium's name for it in the family of `proto`.
fn icmp_type(text: &str, proto: u8) -> u16 {
    if let Ok(n) = text.parse() {
        return n;
    }
    let v4 = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("TimeExceeded", 11),
        ("Timestamp", 13),
    ];
    let v6 = [
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("NeighborSolicitation", 135),
        ("ICMPNodeInformationQuery", 139),
    ];
    let names: &[(&str, u16)] = if proto == 1 { &v4 } else { &v6 };
    names.iter().find(|(n, _)| *n == text).unwrap_or_else(|| panic!("ICMP type name {text}")).1
}

fn entity_matches(entity: &str, peer: Peer<'_>) -> bool {
    matches!(
        (entity, peer),
        ("all", _)
            | ("cluster", Peer::Endpoint(_) | Peer::Host)
            | ("host", Peer::Host)
            | ("world", Peer::Outside(_))
    )
}

/// Whether a CiliumNetworkPolicy entry (of `ingress`, `egress` or their deny lists)
/// matches; `from` is "from" or "to".
fn cnp_entry_matches(
    docs: &Docs,
    entry: &Value,
    from: &str,
    namespace: &str,
    peer: Peer<'_>,
    flow: &Flow,
    dest: Option<&Endpoint>,
) -> bool {
    let field = |name: &str| get(entry, &format!("{from}{name}"));
    let peer_fields = ["Endpoints", "CIDR", "CIDRSet", "Entities", "Services"];
    let any_peer_field = peer_fields.iter().any(|f| field(f).is_some());
    let peer_ok = if !any_peer_field {
        true
    } else {
        let endpoints = list(field("Endpoints")).iter().any(|sel| match peer {
            Peer::Endpoint(e) => {
                (mentions(sel, NAMESPACE_LABEL) || namespace.is_empty() || e.namespace == namespace)
                    && selector_matches(sel, &e.labels)
            }
            _ => false,
        });
        let outside = |f: &dyn Fn(IpAddr) -> bool| matches!(peer, Peer::Outside(a) if f(a));
        let cidr = list(field("CIDR")).iter().any(|c| outside(&|a| in_cidr(&s(c), a)));
        let cidr_set = list(field("CIDRSet")).iter().any(|set| outside(&|a| in_cidr_set(set, a)));
        let entities = list(field("Entities")).iter().any(|e| entity_matches(&s(e), peer));
        let services = list(field("Services")).iter().any(|item| to_service_matches(docs, item, peer));
        endpoints || cidr || cidr_set || entities || services
    };
    let to_ports = list(get(entry, "toPorts"));
    let icmps = list(get(entry, "icmps"));
    let l4_ok = if to_ports.is_empty() && icmps.is_empty() {
        true
    } else {
        to_ports
            .iter()
            .any(|tp| list(get(tp, "ports")).iter().any(|p| port_matches(p, flow, &[6, 17, 132], dest)))
            || icmps.iter().any(|i| {
                list(get(i, "fields")).iter().any(|f| {
                    let family = get(f, "family").map_or_else(|| "IPv4".to_string(), s);
                    let proto = if family == "IPv6" { 58 } else { 1 };
                    let ty = icmp_type(&s(get(f, "type").expect("type")), proto);
                    proto == flow.proto && proto == icmp_proto(flow.peer) && ty == flow.dport
                })
            })
    };
    peer_ok && l4_ok
}

fn knp_peer_matches(docs: &Docs, p: &Value, namespace: &str, peer: Peer<'_>) -> bool {
    if let Some(block) = get(p, "ipBlock") {
        return matches!(peer, Peer::Outside(a) if in_cidr_set(block, a));
    }
    let Peer::Endpoint(e) = peer else { return false };
    let ns_ok = match get(p, "namespaceSelector") {
        None => e.namespace == namespace,
        Some(sel) => {
            let mut ns_labels = docs.namespaces.get(&e.namespace).cloned().unwrap_or_default();
            ns_labels.insert(NAMESPACE_NAME_LABEL.to_string(), e.namespace.clone());
            selector_matches(sel, &ns_labels)
        }
    };
    let pod_ok = get(p, "podSelector").is_none_or(|sel| selector_matches(sel, &e.labels));
    ns_ok && pod_ok
}

/// A Namespace's labels as namespace selectors see them: its document's labels plus
/// `kubernetes.io/metadata.name`.
fn namespace_labels(docs: &Docs, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = docs.namespaces.get(namespace).cloned().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
    labels
}

/// An admin policy's `subject`, or a `namespaces`/`pods` peer, against an endpoint.
fn admin_selects(docs: &Docs, v: &Value, e: &Endpoint) -> bool {
    if let Some(sel) = get(v, "namespaces") {
        return selector_matches(sel, &namespace_labels(docs, &e.namespace));
    }
    let pods = get(v, "pods").expect("namespaces or pods");
    selector_matches(
        get(pods, "namespaceSelector").expect("namespaceSelector"),
        &namespace_labels(docs, &e.namespace),
    ) && selector_matches(get(pods, "podSelector").expect("podSelector"), &e.labels)
}

/// Whether an admin rule's peers and ports match the flow.
fn admin_rule_matches(
    docs: &Docs,
    rule: &Value,
    from: &str,
    peer: Peer<'_>,
    flow: &Flow,
    dest: Option<&Endpoint>,
) -> bool {
    let peer_ok = list(get(rule, from)).iter().any(|p| match (get(p, "networks"), peer) {
        (Some(networks), Peer::Outside(a)) => list(Some(networks)).iter().any(|c| in_cidr(&s(c), a)),
        (Some(_), _) => false,
        (None, Peer::Endpoint(e)) => admin_selects(docs, p, e),
        (None, _) => false,
    });
    let ports = list(get(rule, "ports"));
    let port_ok = ports.is_empty()
        || ports.iter().any(|p| {
            let proto = |v: &Value| get(v, "protocol").map_or(6, |x| proto_number(&s(x))[0]);
            if let Some(n) = get(p, "portNumber") {
                proto(n) == flow.proto && s(get(n, "port").expect("port")).parse() == Ok(flow.dport)
            } else if let Some(range) = get(p, "portRange") {
                let start: u16 = s(get(range, "start").expect("start")).parse().expect("a port");
                let end: u16 = s(get(range, "end").expect("end")).parse().expect("a port");
                proto(range) == flow.proto && (start..=end).contains(&flow.dport)
            } else {
                let name = s(get(p, "namedPort").expect("a port kind"));
                dest.is_some_and(|d| {
                    d.ports
                        .iter()
                        .any(|(n, pr, number)| *n == name && *pr == flow.proto && *number == flow.dport)
                })
            }
        });
    peer_ok && port_ok
}

/// Allow (true) or deny (false) for `endpoint`'s policy in one direction, all tiers.
pub fn decide(docs: &Docs, endpoint: &str, ingress: bool, flow: &Flow) -> bool {
    let subject = docs.endpoint(endpoint);
    let peer = classify(docs, flow.peer);
    let dest = match peer {
        _ if ingress => Some(subject),
        Peer::Endpoint(e) => Some(e),
        _ => None,
    };
    let (key, from) = if ingress { ("ingress", "from") } else { ("egress", "to") };
    let selecting = |v: &&Value| {
        admin_selects(docs, get(get(v, "spec").expect("spec"), "subject").expect("subject"), subject)
    };
    let rules = |v: &Value| list(get(get(v, "spec").expect("spec"), key));
    'admin: for anp in docs.admin.iter().filter(selecting) {
        for rule in rules(anp) {
            if admin_rule_matches(docs, &rule, from, peer, flow, dest) {
                match s(get(&rule, "action").expect("action")).as_str() {
                    "Allow" => return true,
                    "Deny" => return false,
                    _ => break 'admin,
                }
            }
        }
    }
    if let Some(verdict) = network_policy_tier(docs, endpoint, ingress, flow) {
        return verdict;
    }
    let baseline = docs.baseline.iter().filter(selecting).flat_map(rules);
    for rule in baseline {
        if admin_rule_matches(docs, &rule, from, peer, flow, dest) {
            return s(get(&rule, "action").expect("action")) == "Allow";
        }
    }
    true
}

fn classify(docs: &Docs, addr: IpAddr) -> Peer<'_> {
    if let Some(e) = docs.endpoints.iter().find(|e| e.addresses.contains(&addr)) {
        Peer::Endpoint(e)
    } else if docs.hosts.contains(&addr) {
        Peer::Host
    } else {
        Peer::Outside(addr)
    }
}

/// The NetworkPolicy / CiliumNetworkPolicy tier: `None` when none of its policies denies
/// the flow or isolates the endpoint in this direction.
fn network_policy_tier(docs: &Docs, endpoint: &str, ingress: bool, flow: &Flow) -> Option<bool> {
    let subject = docs.endpoint(endpoint);
    let peer = if let Some(e) = docs.endpoints.iter().find(|e| e.addresses.contains(&flow.peer)) {
        Peer::Endpoint(e)
    } else if docs.hosts.contains(&flow.peer) {
        Peer::Host
    } else {
        Peer::Outside(flow.peer)
    };
    // The endpoint the flow goes to: its named ports are what a port name means.
    let dest = match peer {
        _ if ingress => Some(subject),
        Peer::Endpoint(e) => Some(e),
        _ => None,
    };
    let (allow_key, deny_key, from) =
        if ingress { ("ingress", "ingressDeny", "from") } else { ("egress", "egressDeny", "to") };
    let mut enforced = false;
    let mut allowed = false;
    let mut denied = false;
    let mut node_admitted = false;
    for doc in &docs.policies {
        let namespace = namespace_of(doc);
        if !namespace.is_empty() && namespace != subject.namespace {
            continue;
        }
        let spec = get(doc, "spec").expect("a policy spec");
        if s(get(doc, "kind").expect("kind")) != "NetworkPolicy" {
            if !selector_matches(get(spec, "endpointSelector").expect("endpointSelector"), &subject.labels) {
                continue;
            }
            let (allow, deny) = (list(get(spec, allow_key)), list(get(spec, deny_key)));
            // "If not specified, the default is true for each traffic direction that has
            // rules, and false otherwise."
            let enforces = get(spec, "enableDefaultDeny")
                .and_then(|d| get(d, allow_key))
                .map_or(!allow.is_empty() || !deny.is_empty(), |v| v.as_bool().expect("a bool"));
            enforced |= enforces;
            node_admitted |= enforces && !docs.localhost_by_policy;
            allowed |= allow.iter().any(|e| cnp_entry_matches(docs, e, from, &namespace, peer, flow, dest));
            denied |= deny.iter().any(|e| cnp_entry_matches(docs, e, from, &namespace, peer, flow, dest));
        } else {
            if !selector_matches(get(spec, "podSelector").expect("podSelector"), &subject.labels) {
                continue;
            }
            let rules = list(get(spec, allow_key));
            let ty = if ingress { "Ingress" } else { "Egress" };
            let types: Option<Vec<String>> =
                get(spec, "policyTypes").map(|t| list(Some(t)).iter().map(s).collect());
            let enforces = match types {
                Some(t) => t.iter().any(|x| x == ty),
                None => ingress || !rules.is_empty(),
            };
            enforced |= enforces;
            node_admitted |= enforces;
            if !enforces {
                // Rules of a direction policyTypes leaves out have no effect.
                continue;
            }
            allowed |= rules.iter().any(|r| {
                let peers = list(get(r, from));
                let ports = list(get(r, "ports"));
                (peers.is_empty() || peers.iter().any(|p| knp_peer_matches(docs, p, &namespace, peer)))
                    && (ports.is_empty() || ports.iter().any(|p| port_matches(p, flow, &[6], dest)))
            });
        }
    }
    if denied {
        return Some(false);
    }
    enforced.then_some((ingress && node_admitted && matches!(peer, Peer::Host)) || allowed)
}
