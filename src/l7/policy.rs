//! Which HTTP rules govern a proxied connection.
//!
//! Contract:
//! - [`L7Policy::new`] compiles every L7 peer rule of a [`NodeConfig`] once (patterns were
//!   checked by the model, so it fails only on rules built by hand).
//! - [`L7Policy::connection`] takes a TCP connection's source and original destination and
//!   returns its [`Gate`]s: one per local endpoint end (the source endpoint's egress, the
//!   destination endpoint's ingress) whose enforced policy has an L7 peer rule matching the
//!   peer and port. A request passes when every gate allows it.
//! - An endpoint direction with L7 rules always gives a gate for connections at its address;
//!   one that no allow peer rule covers denies every request (fail closed).
//! - A gate allows a request when an L7 peer rule's HTTP rules match it, or when an L3/L4
//!   allow peer rule also matches the connection (as in Cilium, where an L4-only allow on the
//!   same port widens the port's L7 rules to "allow every request"). Deny peer rules are the
//!   datapath's: a connection they drop never reaches the proxy.
//! - Peers are classified as the reference evaluator does (`crate::policy::oracle`): an
//!   endpoint when an endpoint has the address, the host for host addresses, else the world.

use std::net::IpAddr;

use crate::model::policy::{Entity, Peer, PeerRule};
use crate::model::{Direction, Endpoint, NodeConfig};
use crate::policy::ipcache::IpCache;

use super::rules::{BadPattern, Decision, Request, RuleSet};

/// One endpoint direction's L7-relevant rules.
#[derive(Debug)]
struct Subject {
    endpoint: usize,
    direction: Direction,
    /// Allow peer rules; `Some` for L7 ones, compiled.
    allow: Vec<(PeerRule, Option<RuleSet>)>,
}

/// The L7 side of a node's policies, compiled.
#[derive(Debug)]
pub struct L7Policy {
    cfg: NodeConfig,
    /// `None` when identities could not be allocated (then every address reads as world).
    ipcache: Option<IpCache>,
    subjects: Vec<Subject>,
}

/// One end's say on a connection's requests.
#[derive(Debug)]
pub struct Gate<'a> {
    /// The local endpoint whose policy this is.
    pub endpoint: &'a str,
    pub direction: Direction,
    /// The L7 rule sets that match the connection; empty with `allow_all`.
    sets: Vec<&'a RuleSet>,
    /// An L3/L4 allow covers the connection too: every request passes.
    pub allow_all: bool,
}

/// A gate's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Which rule allowed it (`*` for an L3/L4 allow), and `LOG` header mismatches.
    Allowed {
        rule: String,
        logged: Vec<String>,
    },
    Denied,
}

impl Gate<'_> {
    pub fn decide(&self, req: &Request<'_>) -> GateVerdict {
        if self.allow_all {
            return GateVerdict::Allowed { rule: "L3/L4 allow".to_owned(), logged: Vec::new() };
        }
        for set in &self.sets {
            if let Decision::Allowed { rule, logged } = set.decide(req) {
                return GateVerdict::Allowed {
                    rule: super::rules::describe(&set.rules[rule].source),
                    logged,
                };
            }
        }
        GateVerdict::Denied
    }
}

/// Who a peer address is.
#[derive(Clone, Copy)]
enum PeerKind<'a> {
    Endpoint(&'a Endpoint),
    Host,
    Outside(IpAddr),
}

impl L7Policy {
    pub fn new(cfg: NodeConfig) -> Result<L7Policy, BadPattern> {
        let mut subjects = Vec::new();
        for (i, endpoint) in cfg.endpoints.iter().enumerate() {
            for direction in Direction::ALL {
                let selecting: Vec<_> = cfg
                    .policies
                    .iter()
                    .flat_map(|p| &p.rules)
                    .filter(|rule| rule.subject.matches(&endpoint.labels))
                    .map(|rule| rule.direction(direction))
                    .collect();
                if !selecting.iter().any(|r| r.enforced)
                    || !selecting.iter().flat_map(|r| &r.allow).any(|r| r.http.is_some())
                {
                    continue;
                }
                let mut allow = Vec::new();
                for rule in selecting.iter().flat_map(|r| &r.allow) {
                    let compiled = rule.http.as_deref().map(RuleSet::new).transpose()?;
                    allow.push((rule.clone(), compiled));
                }
                subjects.push(Subject { endpoint: i, direction, allow });
            }
        }
        let ipcache =
            crate::policy::identity::IdentityTable::allocate(&cfg).ok().map(|ids| IpCache::build(&cfg, &ids));
        Ok(L7Policy { cfg, ipcache, subjects })
    }

    /// The node the rules came from.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The security identity of `addr`, as the datapath's ipcache gives it.
    pub fn identity(&self, addr: IpAddr) -> u32 {
        self.ipcache.as_ref().map_or(crate::policy::identity::Identity::WORLD.get(), |c| c.lookup(addr).get())
    }

    /// The endpoint that has `addr`.
    pub fn endpoint_of(&self, addr: IpAddr) -> Option<&Endpoint> {
        self.cfg.endpoints.iter().find(|e| e.has_address(addr))
    }

    /// Whether any port of any endpoint has L7 rules.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// The gates of a TCP connection from `src` to `dst` port `dport`.
    pub fn connection(&self, src: IpAddr, dst: IpAddr, dport: u16) -> Vec<Gate<'_>> {
        let mut gates = Vec::new();
        for subject in &self.subjects {
            let endpoint = &self.cfg.endpoints[subject.endpoint];
            let (local, peer) = match subject.direction {
                Direction::Egress => (src, dst),
                Direction::Ingress => (dst, src),
            };
            if !endpoint.has_address(local) {
                continue;
            }
            let peer = self.classify(peer);
            let mut gate = Gate {
                endpoint: &endpoint.name,
                direction: subject.direction,
                sets: Vec::new(),
                allow_all: false,
            };
            for (rule, set) in &subject.allow {
                let matches = rule.peers.iter().any(|p| peer_matches(p, peer))
                    && (rule.l4.is_empty() || rule.l4.iter().any(|m| m.matches(6, dport)));
                match (matches, set) {
                    (false, _) => {}
                    (true, Some(set)) => gate.sets.push(set),
                    (true, None) => gate.allow_all = true,
                }
            }
            if gate.allow_all {
                gate.sets.clear();
            }
            // A gate with neither denies every request: no allow rule covers the connection
            // (the datapath would have dropped it; the proxy does not let it through either).
            gates.push(gate);
        }
        gates
    }

    fn classify(&self, addr: IpAddr) -> PeerKind<'_> {
        if let Some(endpoint) = self.endpoint_of(addr) {
            PeerKind::Endpoint(endpoint)
        } else if self.cfg.host_addresses.contains(&addr) {
            PeerKind::Host
        } else {
            PeerKind::Outside(addr)
        }
    }
}

fn peer_matches(peer: &Peer, kind: PeerKind<'_>) -> bool {
    match (peer, kind) {
        (Peer::Entity(Entity::All), _) => true,
        (Peer::Entity(Entity::Cluster), PeerKind::Endpoint(_) | PeerKind::Host) => true,
        (Peer::Entity(Entity::Host), PeerKind::Host) => true,
        (Peer::Entity(Entity::World), PeerKind::Outside(_)) => true,
        (Peer::Endpoints(selector), PeerKind::Endpoint(endpoint)) => selector.matches(&endpoint.labels),
        (Peer::Cidr(rule), PeerKind::Outside(addr)) => rule.contains(addr),
        _ => false,
    }
}
