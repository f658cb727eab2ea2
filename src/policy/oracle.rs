//! The oracle: a reference evaluator that decides a packet straight from the parsed policies.
//!
//! Contract:
//! - [`decide`] reads only the [`NodeConfig`]: endpoint labels and addresses, host addresses
//!   and the policies in normal form. It uses no identity, ipcache or policy entry, so it
//!   checks `resolve` (and, later, the compiled programs) rather than repeating them. It is
//!   written for clarity, not speed.
//! - The peer of a packet is its source for ingress and its destination for egress; the port
//!   is the destination port (for ICMP the type, carried in `dport`); a port name means the
//!   named port of the destination endpoint (the subject for ingress, the peer for egress). A peer address is an
//!   endpoint when an endpoint has it, the host when it is a host address, and outside the
//!   cluster (the world) otherwise.
//! - Peer semantics: `Endpoints(selector)` matches an endpoint whose labels the selector
//!   matches; `Cidr(P except E..)` matches an outside address in P and in no E (never an
//!   endpoint or the host); `all` matches every peer, `cluster` endpoints and the host,
//!   `host` the host, `world` outside addresses; `Nodes(selector)` an overlay peer's own
//!   address when the selector matches the peer's labels (never the node itself).
//! - Verdict for one endpoint and direction: any matching deny peer rule of a selecting rule
//!   -> deny; else not selected by any rule enforced in that direction -> allow; else, for
//!   ingress from the node itself when an enforcing rule admits it
//!   (NetworkPolicy always, Cilium's policies per `allowLocalhost`) -> allow; else any matching allow peer rule -> allow; else deny.
//! - Tiers (Kubernetes network-policy-api): the AdminNetworkPolicies selecting the endpoint
//!   come first, by priority then rule order; the first rule whose peers and ports match
//!   decides (Allow, Deny) or hands the packet to the next tier (Pass). Next the rule above,
//!   when it decides (a deny matches, or a rule isolates the endpoint in that direction);
//!   else the BaselineAdminNetworkPolicy's first matching rule; else allow.

use std::net::IpAddr;

use crate::model::anp::{AdminAction, AdminTier};
use crate::model::policy::{DirectionRules, Entity, Peer, PeerRule, PolicyKind};
use crate::model::policy_settings::AllowLocalhost;
use crate::model::{Direction, Endpoint, NodeConfig};

use super::entry::Verdict;
use super::PolicyError;

/// The fields of a packet that policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    pub sport: u16,
    /// Destination port; for ICMP and ICMPv6 the ICMP type.
    pub dport: u16,
}

/// Who a peer address belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerKind<'a> {
    Endpoint(&'a Endpoint),
    /// An endpoint an overlay peer declares, by its labels.
    Remote(&'a crate::model::Labels),
    Host,
    /// An overlay peer's own address, with the peer's labels.
    RemoteNode(&'a crate::model::Labels),
    /// In an overlay peer's prefix, claimed by no endpoint.
    Unmanaged,
    Outside(IpAddr),
}

/// The verdict of `endpoint`'s policy in `direction` for `pkt`.
pub fn decide(
    cfg: &NodeConfig,
    endpoint: &str,
    direction: Direction,
    pkt: &FlowKey,
) -> Result<Verdict, PolicyError> {
    let subject = cfg.endpoint(endpoint).ok_or_else(|| PolicyError::UnknownEndpoint(endpoint.to_owned()))?;
    let selecting: Vec<_> = cfg
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().map(move |rule| (p.kind, rule)))
        .filter(|(_, rule)| rule.subject.matches(&subject.labels))
        .map(|(kind, rule)| (kind, rule.direction(direction)))
        .collect();
    let peer_addr = match direction {
        Direction::Ingress => pkt.src,
        Direction::Egress => pkt.dst,
    };
    let peer = classify(cfg, peer_addr);
    // The endpoint the packet goes to, whose named ports a rule's port names mean.
    let destination = match (direction, peer) {
        (Direction::Ingress, _) => Some(subject),
        (Direction::Egress, PeerKind::Endpoint(e)) => Some(e),
        (Direction::Egress, _) => None,
    };
    let matches = |rule: &PeerRule| {
        rule.peers.iter().any(|p| peer_matches(p, peer)) && rule.l4_matches(pkt.proto, pkt.dport, destination)
    };
    // The admin tier: AdminNetworkPolicies in order (priority, then rules as written); the
    // first rule that matches decides, unless it passes the packet on.
    let admin = cfg.admin_policies.iter().filter(|p| p.subject.matches(&subject.labels));
    let (anps, banps): (Vec<_>, Vec<_>) = admin.partition(|p| p.tier != AdminTier::Baseline);
    if let Some(rule) = anps.iter().flat_map(|p| p.rules(direction)).find(|r| matches(&r.matches)) {
        match rule.action {
            AdminAction::Allow => return Ok(Verdict::Allow),
            AdminAction::Deny => return Ok(Verdict::Deny),
            AdminAction::Pass => {}
        }
    }
    if let Some(verdict) = network_policy_tier(cfg, &selecting, direction, peer, &matches) {
        return Ok(verdict);
    }
    // The baseline: its first matching rule, else allow (no policy at all).
    Ok(match banps.iter().flat_map(|p| p.rules(direction)).find(|r| matches(&r.matches)).map(|r| r.action) {
        Some(AdminAction::Deny) => Verdict::Deny,
        _ => Verdict::Allow,
    })
}

/// The NetworkPolicy / CiliumNetworkPolicy tier: `None` when no rule of it decides (no deny
/// matches and no selecting rule isolates the endpoint in `direction`).
fn network_policy_tier(
    cfg: &NodeConfig,
    selecting: &[(PolicyKind, &DirectionRules)],
    direction: Direction,
    peer: PeerKind<'_>,
    matches: &dyn Fn(&PeerRule) -> bool,
) -> Option<Verdict> {
    if selecting.iter().flat_map(|(_, rules)| &rules.deny).any(matches) {
        return Some(Verdict::Deny);
    }
    let mut enforcing = selecting.iter().filter(|(_, rules)| rules.enforced).peekable();
    enforcing.peek()?;
    if direction == Direction::Ingress
        && matches!(peer, PeerKind::Host)
        && enforcing.any(|(kind, _)| {
            *kind == PolicyKind::NetworkPolicy || cfg.policy.allow_localhost == AllowLocalhost::Always
        })
    {
        return Some(Verdict::Allow);
    }
    if selecting.iter().flat_map(|(_, rules)| &rules.allow).any(matches) {
        return Some(Verdict::Allow);
    }
    Some(Verdict::Deny)
}

pub(crate) fn classify(cfg: &NodeConfig, addr: IpAddr) -> PeerKind<'_> {
    if let Some(endpoint) = cfg.endpoints.iter().find(|e| e.has_address(addr)) {
        PeerKind::Endpoint(endpoint)
    } else if let Some((_, remote)) = cfg.remote_endpoints().find(|(_, e)| e.addresses().any(|a| a == addr)) {
        PeerKind::Remote(&remote.labels)
    } else if cfg.host_addresses.contains(&addr) {
        PeerKind::Host
    } else if let Some(node) =
        cfg.overlay.iter().flat_map(|o| &o.peers).find(|p| IpAddr::V4(p.address) == addr)
    {
        PeerKind::RemoteNode(&node.labels)
    } else if cfg.overlay.iter().flat_map(|o| &o.peers).flat_map(|p| &p.prefixes).any(|c| c.contains(addr)) {
        PeerKind::Unmanaged
    } else {
        PeerKind::Outside(addr)
    }
}

pub(crate) fn peer_matches(peer: &Peer, kind: PeerKind<'_>) -> bool {
    match (peer, kind) {
        (Peer::Entity(Entity::All), _) => true,
        (Peer::Entity(Entity::Cluster), kind) => !matches!(kind, PeerKind::Outside(_)),
        (Peer::Entity(Entity::Host), PeerKind::Host) => true,
        (Peer::Entity(Entity::RemoteNode), PeerKind::RemoteNode(_)) => true,
        // `fromNodes`/`toNodes` exist only with `policy.nodeSelectorLabels` (the model
        // refuses them otherwise); they select other nodes by their labels.
        (Peer::Nodes(selector), PeerKind::RemoteNode(labels)) => selector.matches(labels),
        (Peer::Endpoints(selector), PeerKind::Remote(labels)) => selector.matches(labels),
        (Peer::Entity(Entity::World), PeerKind::Outside(_)) => true,
        (Peer::Endpoints(selector), PeerKind::Endpoint(endpoint)) => selector.matches(&endpoint.labels),
        (Peer::Cidr(rule), PeerKind::Outside(addr)) => rule.contains(addr),
        _ => false,
    }
}
