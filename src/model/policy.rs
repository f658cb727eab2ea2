//! Network policy in normal form: what CiliumNetworkPolicy and NetworkPolicy documents mean,
//! with every spelling difference removed.
//!
//! Contract:
//! - A [`Policy`] is one document (`kind`, `namespace`, `name`); its [`Rule`]s are its `spec`
//!   and `specs` entries (a NetworkPolicy has one). A rule selects its subject endpoints with
//!   [`Rule::subject`], already scoped to the policy's namespace, and holds per [`Direction`]
//!   whether it puts the subject in default deny ([`DirectionRules::enforced`]) plus its allow
//!   and deny [`PeerRule`]s.
//! - A [`PeerRule`] matches a packet when its peer (the source for ingress, the destination for
//!   egress) matches any of [`PeerRule::peers`] and its protocol and destination port match
//!   any of [`PeerRule::l4`] or of its named ports ([`PeerRule::l4_matches`]); with both
//!   empty it matches every protocol and port. A peer rule with no
//!   peers matches nothing (Cilium's `ingress: [{}]`).
//! - Peers: [`Peer::Endpoints`] selects endpoints by their labels (selectors are scoped to a
//!   namespace unless they name one); [`Peer::Cidr`] matches addresses outside the cluster in
//!   `cidr` and in none of `except`; [`Peer::Entity`] names a reserved group;
//!   [`Peer::Nodes`] selects other nodes (overlay peers) by their labels. Addresses of
//!   endpoints and of the host are never matched by CIDR peers, as in Cilium, where an
//!   endpoint's own address resolves to the endpoint's identity.
//! - Semantics of a direction for one endpoint (the oracle implements exactly this): a packet
//!   is dropped if any selecting rule's deny peer rule matches it; else, if no rule selecting
//!   it is enforced in that direction, it passes; else ingress from the node itself passes
//!   where the isolating rules admit the node (`super::policy_settings`); else it passes if
//!   any allow peer rule matches, else is dropped. Deny wins regardless of specificity.
//!   (A rule with deny peer rules is enforced unless Cilium's `enableDefaultDeny` turns that
//!   off for the direction.)
//! - Normal form: peers, port matches, peer rules and rules are sorted and deduplicated, so
//!   equivalent spellings compare equal. `protocol: ANY` is expanded into TCP, UDP and SCTP
//!   (as Cilium does; ICMP is only ever allowed by `icmps` or by a rule without ports).

use std::fmt;

use super::cidr::Cidr;
use super::labels::Selector;
use super::named_ports::NamedPortMatch;

/// Traffic direction, seen from the endpoint a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets toward the endpoint; the peer is the source.
    Ingress,
    /// Packets from the endpoint; the peer is the destination.
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which document a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    NetworkPolicy,
    /// Cluster-scoped: its [`Policy::namespace`] is empty and its selectors are not scoped.
    CiliumClusterwideNetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        })
    }
}

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    /// `metadata.namespace`, `default` when absent; empty for a cluster-wide policy.
    pub namespace: String,
    pub name: String,
    pub kind: PolicyKind,
    /// In the order written (each is one `spec`/`specs` entry; order has no meaning).
    pub rules: Vec<Rule>,
}

/// One rule: whom it applies to and what it says per direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The endpoints the rule applies to, scoped to the policy's namespace.
    pub subject: Selector,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

impl Rule {
    pub fn direction(&self, direction: Direction) -> &DirectionRules {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What a rule says about one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirectionRules {
    /// Whether the rule puts its subjects in default deny for this direction. Cilium: the rule
    /// has a non-empty allow or deny list for it; NetworkPolicy: `policyTypes` names it.
    pub enforced: bool,
    /// Sorted, deduplicated; peer rules without peers are dropped (they match nothing).
    pub allow: Vec<PeerRule>,
    /// Sorted, deduplicated; as `allow`.
    pub deny: Vec<PeerRule>,
}

/// Peers and ports: matches when both match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRule {
    /// Sorted, deduplicated, non-empty.
    pub peers: Vec<Peer>,
    /// Sorted, deduplicated; empty (with `named_ports` empty) means every protocol and port.
    pub l4: Vec<PortMatch>,
    /// Ports given by name (`super::named_ports`), sorted, deduplicated; a packet's L4
    /// matches when it matches any of `l4` or of these.
    pub named_ports: Vec<NamedPortMatch>,
    /// L7 rules (`toPorts[].rules.http`): `None` for an L3/L4 rule. `Some` only with a
    /// non-empty `l4`: connections the rule matches go through the L7 proxy, which passes a
    /// request when any of these rules matches it (`http: [{}]` passes every request, seen).
    pub http: Option<Vec<HttpRule>>,
}

/// One `rules.http` entry: a request matches when every field present matches.
///
/// `method`, `path` and `host` are regular expressions as written, already checked to
/// compile (RE2 syntax, which is what Cilium validates them with and Envoy runs them with);
/// each must match the whole value (`src/l7/rules.rs` anchors them).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRule {
    pub method: Option<String>,
    /// Matched against the request target as sent (path and query, Envoy's `:path`).
    pub path: Option<String>,
    /// Matched against the `Host` header (`:authority`).
    pub host: Option<String>,
    /// `headers` and `headerMatches`, in that order.
    pub headers: Vec<HeaderRule>,
}

/// A header a request must carry (`headers: ["Name: value"]` or `headerMatches`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderRule {
    /// Compared without regard to ASCII case, as HTTP header names are.
    pub name: String,
    /// The exact value; `None`: present with any value.
    pub value: Option<String>,
    pub on_mismatch: Mismatch,
}

/// What a header that is missing or differs does to its rule (`headerMatches[].mismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mismatch {
    /// The rule does not match (the default).
    Fail,
    /// `LOG`: the rule still matches; the mismatch is recorded in the request's flow record.
    Log,
}

impl PeerRule {
    /// Whether a packet with protocol `proto` and destination port (ICMP: type) `port`, to
    /// `destination` (the endpoint it goes to, if it is one of the node's), matches the
    /// rule's L4 part.
    pub fn l4_matches(&self, proto: u8, port: u16, destination: Option<&super::Endpoint>) -> bool {
        (self.l4.is_empty() && self.named_ports.is_empty())
            || self.l4.iter().any(|m| m.matches(proto, port))
            || destination.is_some_and(|d| self.named_ports.iter().any(|n| n.matches(d, proto, port)))
    }
}

/// Who is on the other side of a packet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Entity(Entity),
    /// Endpoints whose labels match.
    Endpoints(Selector),
    Cidr(CidrRule),
    /// The cluster's other nodes whose labels match (`fromNodes`/`toNodes`; never the node
    /// itself).
    Nodes(Selector),
}

/// A prefix minus sub-prefixes: `fromCIDR`, `fromCIDRSet`, `ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrRule {
    pub cidr: Cidr,
    /// Each inside `cidr`; sorted, deduplicated.
    pub except: Vec<Cidr>,
}

impl CidrRule {
    /// Whether `addr` is in `cidr` and in no `except`.
    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        self.cidr.contains(addr) && !self.except.iter().any(|e| e.contains(addr))
    }
}

/// Reserved peer groups (`fromEntities`/`toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Every peer, inside the cluster or not.
    All,
    /// Every endpoint of the cluster, the host, remote nodes, health and init endpoints.
    Cluster,
    /// The local node.
    Host,
    /// Everything outside the cluster.
    World,
    /// The cluster's other nodes (Cilium's reserved identity 6). In a node file alone no
    /// address has it; the cluster issue gives it its peers.
    RemoteNode,
    /// The Kubernetes API server (reserved identity 7): no address of a node file has it.
    KubeApiserver,
    /// Cilium's health endpoints (reserved identity 4): sluice runs none.
    Health,
    /// Endpoints whose identity is not resolved yet (reserved identity 5): sluice's endpoints
    /// have their identity from the start, so none.
    Init,
    /// Cilium's ingress (Envoy) endpoint (reserved identity 8): sluice runs none.
    Ingress,
    /// Endpoints not managed by the agent (reserved identity 3): none in a node file.
    Unmanaged,
}

impl Entity {
    pub const ALL: [Entity; 10] = [
        Entity::All,
        Entity::Cluster,
        Entity::Host,
        Entity::World,
        Entity::RemoteNode,
        Entity::KubeApiserver,
        Entity::Health,
        Entity::Init,
        Entity::Ingress,
        Entity::Unmanaged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Entity::All => "all",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::World => "world",
            Entity::RemoteNode => "remote-node",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::Health => "health",
            Entity::Init => "init",
            Entity::Ingress => "ingress",
            Entity::Unmanaged => "unmanaged",
        }
    }
}

/// An IP protocol a port match can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Icmp,
    Tcp,
    Udp,
    IcmpV6,
    Sctp,
}

impl Protocol {
    /// The IP protocol number (`ip.protocol` / `ip6.nexthdr`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
        }
    }

    /// Whether the "port" of this protocol is an ICMP type.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::IcmpV6)
    }
}

/// A protocol and a range of destination ports (ICMP: of ICMP types), inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMatch {
    pub proto: Protocol,
    /// `first <= last`. Every port is `0..=65535`.
    pub first: u16,
    pub last: u16,
}

impl PortMatch {
    pub fn matches(&self, proto: u8, port: u16) -> bool {
        self.proto.number() == proto && (self.first..=self.last).contains(&port)
    }
}
