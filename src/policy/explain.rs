//! `sluice policy explain`: which rule decided a flow, or which policies isolate an endpoint
//! with no rule allowing it.
//!
//! Contract:
//! - [`explain`] is a pure function of the node (its [`NodeConfig`] and the sources of its
//!   policies, [`crate::model::sources`]) and a [`Flow`]: the two ends (an endpoint of the
//!   node, the node itself, or an address), a protocol and a destination port (ICMP: type).
//! - Each end that is an endpoint of the node judges the flow with its policy: the source in
//!   its egress direction, the destination in its ingress direction. Each judgement names its
//!   verdict and why, by the semantics of `crate::model::policy` (the oracle's): denied by
//!   deny entries (all that match), not isolated, the node admitted (the isolating rules that
//!   admit it), allowed by allow entries (all that match), or isolated with no entry
//!   allowing (the isolating rules). Every rule and entry is cited with its policy and its
//!   place (`file:line:col` and field path). The flow passes when every judgement allows it.
//! - Admin tiers: an AdminNetworkPolicy rule that decides (the first matching one, by
//!   priority then order; Allow or Deny) is cited alone with its priority and place; a Pass
//!   is cited before what decides next; where nothing below isolates, the baseline's first
//!   matching rule decides and is cited.
//! - A test holds the verdicts to the oracle's ([`super::oracle::decide`]) on random policies.
//! - Output: [`Explanation`]'s `Display` (lines for people) and [`Explanation::to_json`] (one
//!   object, fixed field order). [`explain_drop`] gives the denying judgement of a packet the
//!   datapath dropped for policy, for `sluice monitor --config`.

use std::fmt;
use std::net::IpAddr;

use crate::model::anp::{AdminAction, AdminPolicy, AdminRule, AdminTier};
use crate::model::policy::{PeerRule, PolicyKind};
use crate::model::policy_settings::AllowLocalhost;
use crate::model::sources::{Place, PolicySource};
use crate::model::{Direction, Endpoint, NodeConfig};

use super::entry::Verdict;

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// An endpoint of the node, by name.
    Endpoint(String),
    /// The node itself (its first host address of the flow's family).
    Host,
    /// An address (it may be an endpoint's or the node's).
    Address(IpAddr),
}

impl End {
    /// `web` (an endpoint name), `host`, or an address.
    pub fn parse(text: &str) -> End {
        match (text, text.parse::<IpAddr>()) {
            (_, Ok(addr)) => End::Address(addr),
            ("host", _) => End::Host,
            _ => End::Endpoint(text.to_owned()),
        }
    }
}

/// The flow to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub from: End,
    pub to: End,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port; for ICMP the type.
    pub dport: u16,
}

/// Why the flow cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no endpoint `{0}` on this node (endpoints: {1})")]
    UnknownEndpoint(String, String),
    #[error("the node has no host address (spec.hostAddresses) to stand for `host`")]
    NoHostAddress,
    #[error("{from} and {to} have no address family in common")]
    NoCommonFamily { from: String, to: String },
}

/// A rule or entry that took part in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation {
    /// `CiliumNetworkPolicy default/web-from-api`.
    pub policy: String,
    /// Index of the rule in its policy.
    pub rule: usize,
    /// The entry's place (an allow or deny entry), or the rule's (an isolating rule).
    pub at: Option<Place>,
}

/// Why one endpoint's policy gave its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Deny entries match (they win over any allow).
    Denied,
    /// No rule selecting the endpoint isolates it in this direction.
    NotIsolated,
    /// From the node itself, which the isolating rules admit (NetworkPolicy always; Cilium's
    /// policies per `allowLocalhost`).
    NodeAdmitted,
    /// Allow entries match.
    Allowed,
    /// Isolated, and no allow entry matches.
    NoRuleAllows,
    /// An AdminNetworkPolicy rule (the first that matches, by priority then order) allows.
    AdminAllowed,
    /// An AdminNetworkPolicy rule denies.
    AdminDenied,
    /// Not decided above; the BaselineAdminNetworkPolicy's first matching rule allows.
    BaselineAllowed,
    /// Not decided above; the BaselineAdminNetworkPolicy's first matching rule denies.
    BaselineDenied,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Reason::Denied => "denied_by_rule",
            Reason::NotIsolated => "not_isolated",
            Reason::NodeAdmitted => "node_admitted",
            Reason::Allowed => "allowed_by_rule",
            Reason::NoRuleAllows => "no_rule_allows",
            Reason::AdminAllowed => "allowed_by_admin_policy",
            Reason::AdminDenied => "denied_by_admin_policy",
            Reason::BaselineAllowed => "allowed_by_baseline_policy",
            Reason::BaselineDenied => "denied_by_baseline_policy",
        }
    }
}

/// One endpoint's judgement of the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub endpoint: String,
    pub direction: Direction,
    pub verdict: Verdict,
    pub reason: Reason,
    /// The matching deny or allow entries, or the isolating rules.
    pub cited: Vec<Citation>,
}

/// The whole explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The node file the citations' places are in.
    pub file: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dport: u16,
    /// The source's egress, then the destination's ingress (where they are endpoints).
    pub judgements: Vec<Judgement>,
}

impl Explanation {
    /// Allowed when every judgement allows.
    pub fn verdict(&self) -> Verdict {
        if self.judgements.iter().all(|j| j.verdict == Verdict::Allow) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

/// Explains `flow` on the node `cfg`, whose policies were written as `sources` describes.
pub fn explain(cfg: &NodeConfig, sources: &[PolicySource], flow: &Flow) -> Result<Explanation, ExplainError> {
    let (src, dst) = addresses(cfg, &flow.from, &flow.to)?;
    let mut judgements = Vec::new();
    for (end, addr, peer, direction) in
        [(&flow.from, src, dst, Direction::Egress), (&flow.to, dst, src, Direction::Ingress)]
    {
        let endpoint = match end {
            End::Endpoint(name) => cfg.endpoint(name),
            End::Address(a) => cfg.endpoints.iter().find(|e| e.has_address(*a)),
            End::Host => None,
        };
        if let Some(endpoint) = endpoint {
            debug_assert!(endpoint.has_address(addr));
            judgements.push(judge(cfg, sources, endpoint, direction, peer, flow.proto, flow.dport));
        }
    }
    Ok(Explanation { file: cfg.source.clone(), src, dst, proto: flow.proto, dport: flow.dport, judgements })
}

/// The two ends' addresses, of one family (IPv4 where both have it).
fn addresses(cfg: &NodeConfig, from: &End, to: &End) -> Result<(IpAddr, IpAddr), ExplainError> {
    let candidates = |end: &End| -> Result<Vec<IpAddr>, ExplainError> {
        Ok(match end {
            End::Endpoint(name) => cfg
                .endpoint(name)
                .ok_or_else(|| {
                    let names: Vec<&str> = cfg.endpoints.iter().map(|e| e.name.as_str()).collect();
                    ExplainError::UnknownEndpoint(name.clone(), names.join(", "))
                })?
                .addresses()
                .collect(),
            End::Host => cfg.host_addresses.clone(),
            End::Address(a) => vec![*a],
        })
    };
    let (a, b) = (candidates(from)?, candidates(to)?);
    for v4 in [true, false] {
        let pick = |list: &[IpAddr]| list.iter().copied().find(|x| x.is_ipv4() == v4);
        if let (Some(x), Some(y)) = (pick(&a), pick(&b)) {
            return Ok((x, y));
        }
    }
    if (*from == End::Host || *to == End::Host) && cfg.host_addresses.is_empty() {
        return Err(ExplainError::NoHostAddress);
    }
    Err(ExplainError::NoCommonFamily { from: describe(from), to: describe(to) })
}

fn describe(end: &End) -> String {
    match end {
        End::Endpoint(name) => name.clone(),
        End::Host => "host".to_owned(),
        End::Address(a) => a.to_string(),
    }
}

// Who a peer address is, and which peers match it: the oracle's own reading (remote
// endpoints, remote nodes with their labels, unmanaged addresses), so that an explanation
// never disagrees with the verdict.
use super::oracle::{classify, peer_matches, PeerKind};

fn policy_name(kind: PolicyKind, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

fn judge(
    cfg: &NodeConfig,
    sources: &[PolicySource],
    subject: &Endpoint,
    direction: Direction,
    peer_addr: IpAddr,
    proto: u8,
    dport: u16,
) -> Judgement {
    let peer = classify(cfg, peer_addr);
    let destination = match (direction, peer) {
        (Direction::Ingress, _) => Some(subject),
        (Direction::Egress, PeerKind::Endpoint(e)) => Some(e),
        (Direction::Egress, _) => None,
    };
    let matches = |rule: &PeerRule| {
        rule.peers.iter().any(|p| peer_matches(p, peer)) && rule.l4_matches(proto, dport, destination)
    };
    let source_of = |kind: PolicyKind, namespace: &str, name: &str| {
        sources.iter().find(|s| s.kind == kind && s.namespace == namespace && s.name == name)
    };
    // (policy, rule index, rule) of every rule selecting the subject.
    let selecting: Vec<_> = cfg
        .policies
        .iter()
        .flat_map(|p| p.rules.iter().enumerate().map(move |(i, rule)| (p, i, rule)))
        .filter(|(_, _, rule)| rule.subject.matches(&subject.labels))
        .collect();
    let cite_entries = |deny: bool| -> Vec<Citation> {
        let mut out = Vec::new();
        for (policy, index, rule) in &selecting {
            let rules = rule.direction(direction);
            for peer_rule in if deny { &rules.deny } else { &rules.allow }.iter().filter(|r| matches(r)) {
                let name = policy_name(policy.kind, &policy.namespace, &policy.name);
                let places: Vec<Place> = source_of(policy.kind, &policy.namespace, &policy.name)
                    .map(|s| s.entries_of(*index, direction, deny, peer_rule).map(|e| e.at.clone()).collect())
                    .unwrap_or_default();
                if places.is_empty() {
                    out.push(Citation { policy: name.clone(), rule: *index, at: None });
                }
                for at in places {
                    out.push(Citation { policy: name.clone(), rule: *index, at: Some(at) });
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.policy, a.rule, &a.at.as_ref().map(|p| p.line)).cmp(&(
                &b.policy,
                b.rule,
                &b.at.as_ref().map(|p| p.line),
            ))
        });
        out.dedup();
        out
    };
    let cite_rule = |(policy, index): (&crate::model::Policy, usize)| Citation {
        policy: policy_name(policy.kind, &policy.namespace, &policy.name),
        rule: index,
        at: source_of(policy.kind, &policy.namespace, &policy.name).and_then(|s| s.rules.get(index).cloned()),
    };
    let judgement = |verdict, reason, cited| Judgement {
        endpoint: subject.name.clone(),
        direction,
        verdict,
        reason,
        cited,
    };

    // The admin tiers (`super::oracle`): AdminNetworkPolicies first, the baseline after the
    // tier below.
    let admin: Vec<&AdminPolicy> =
        cfg.admin_policies.iter().filter(|p| p.subject.matches(&subject.labels)).collect();
    let first_admin_match = |baseline: bool| {
        admin
            .iter()
            .filter(|p| (p.tier == AdminTier::Baseline) == baseline)
            .flat_map(|p| p.rules(direction).iter().enumerate().map(move |(i, r)| (*p, i, r)))
            .find(|(_, _, r)| matches(&r.matches))
    };
    let cite_admin = |policy: &AdminPolicy, index: usize, rule: &AdminRule| Citation {
        policy: match policy.tier {
            AdminTier::Admin { priority } => {
                format!("AdminNetworkPolicy {} (priority {priority})", policy.name)
            }
            AdminTier::Baseline => format!("BaselineAdminNetworkPolicy {}", policy.name),
        },
        rule: index,
        at: Some(rule.at.clone()),
    };
    let mut passed = Vec::new();
    if let Some((policy, index, rule)) = first_admin_match(false) {
        let cited = vec![cite_admin(policy, index, rule)];
        match rule.action {
            AdminAction::Allow => return judgement(Verdict::Allow, Reason::AdminAllowed, cited),
            AdminAction::Deny => return judgement(Verdict::Deny, Reason::AdminDenied, cited),
            AdminAction::Pass => passed = cited,
        }
    }
    let denied = cite_entries(true);
    if !denied.is_empty() {
        return judgement(Verdict::Deny, Reason::Denied, denied);
    }
    let enforcing: Vec<_> =
        selecting.iter().filter(|(_, _, rule)| rule.direction(direction).enforced).collect();
    if enforcing.is_empty() {
        return match first_admin_match(true) {
            Some((policy, index, rule)) => {
                let (verdict, reason) = match rule.action {
                    AdminAction::Deny => (Verdict::Deny, Reason::BaselineDenied),
                    _ => (Verdict::Allow, Reason::BaselineAllowed),
                };
                passed.push(cite_admin(policy, index, rule));
                judgement(verdict, reason, passed)
            }
            None => judgement(Verdict::Allow, Reason::NotIsolated, passed),
        };
    }
    if direction == Direction::Ingress && matches!(peer, PeerKind::Host) {
        let admitting: Vec<Citation> = enforcing
            .iter()
            .filter(|(policy, _, _)| {
                policy.kind == PolicyKind::NetworkPolicy
                    || cfg.policy.allow_localhost == AllowLocalhost::Always
            })
            .map(|(policy, index, _)| cite_rule((policy, *index)))
            .collect();
        if !admitting.is_empty() {
            return judgement(Verdict::Allow, Reason::NodeAdmitted, admitting);
        }
    }
    let allowed = cite_entries(false);
    if !allowed.is_empty() {
        return judgement(Verdict::Allow, Reason::Allowed, allowed);
    }
    let isolating = enforcing.iter().map(|(policy, index, _)| cite_rule((policy, *index))).collect();
    judgement(Verdict::Deny, Reason::NoRuleAllows, isolating)
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => format!("protocol {n}"),
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    if v == Verdict::Allow {
        "allowed"
    } else {
        "denied"
    }
}

impl fmt::Display for Explanation {
    /// One line for the flow, one per judgement with its citations indented, one verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.proto == 1 || self.proto == 58 { "type" } else { "port" };
        writeln!(f, "flow {} -> {} {} {port} {}", self.src, self.dst, proto_name(self.proto), self.dport)?;
        if self.judgements.is_empty() {
            writeln!(f, "  no endpoint of this node is an end of the flow: no policy applies")?;
        }
        for j in &self.judgements {
            for line in j.lines(&self.file) {
                writeln!(f, "  {line}")?;
            }
        }
        writeln!(f, "verdict: {}", verdict_word(self.verdict()))
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Judgement {
    /// One JSON object, fields in a fixed order; places are in `file`.
    pub fn to_json(&self, file: &str) -> String {
        let citation = |c: &Citation| {
            let at = c.at.as_ref().map_or("null".to_owned(), |p| {
                format!(
                    "{{\"file\":{},\"line\":{},\"col\":{},\"path\":{}}}",
                    json_str(file),
                    p.line,
                    p.col,
                    json_str(&p.path)
                )
            });
            format!("{{\"policy\":{},\"rule\":{},\"at\":{at}}}", json_str(&c.policy), c.rule)
        };
        let cited: Vec<String> = self.cited.iter().map(citation).collect();
        format!(
            "{{\"endpoint\":{},\"direction\":\"{}\",\"verdict\":\"{}\",\"reason\":\"{}\",\"cited\":[{}]}}",
            json_str(&self.endpoint),
            self.direction,
            verdict_word(self.verdict),
            self.reason.name(),
            cited.join(",")
        )
    }

    /// Lines for people: why, then each citation (`file:line:col (path)`).
    pub fn lines(&self, file: &str) -> Vec<String> {
        let why = match self.reason {
            Reason::Denied => "denied by",
            Reason::NotIsolated => "no policy selecting it isolates this direction",
            Reason::NodeAdmitted => "from the node itself, which its isolating rules admit",
            Reason::Allowed => "allowed by",
            Reason::NoRuleAllows => "no rule allows it; isolated by",
            Reason::AdminAllowed => "allowed by the admin tier",
            Reason::AdminDenied => "denied by the admin tier",
            Reason::BaselineAllowed | Reason::BaselineDenied => {
                "no admin rule, NetworkPolicy or CiliumNetworkPolicy decides; baseline"
            }
        };
        let mut out =
            vec![format!("{} {}: {}: {why}", self.direction, self.endpoint, verdict_word(self.verdict))];
        for c in &self.cited {
            out.push(match &c.at {
                Some(at) => {
                    format!("  {} rule {} at {file}:{}:{} ({})", c.policy, c.rule, at.line, at.col, at.path)
                }
                None => format!("  {} rule {}", c.policy, c.rule),
            });
        }
        out
    }
}

/// Why a packet that the datapath dropped for policy (`deny_policy`) was dropped: the
/// judgement of the endpoint on `direction`'s side, if it denies the flow (`None` when it
/// does not: the node file is not what is loaded, or the packet was not what policy saw).
pub fn explain_drop(
    cfg: &NodeConfig,
    sources: &[PolicySource],
    (src, dst): (IpAddr, IpAddr),
    proto: u8,
    dport: u16,
    direction: Direction,
) -> Option<Judgement> {
    let flow = Flow { from: End::Address(src), to: End::Address(dst), proto, dport };
    let explanation = explain(cfg, sources, &flow).ok()?;
    explanation.judgements.into_iter().find(|j| j.direction == direction && j.verdict == Verdict::Deny)
}

impl Explanation {
    /// One JSON object, fields in a fixed order.
    pub fn to_json(&self) -> String {
        let judgements: Vec<String> = self.judgements.iter().map(|j| j.to_json(&self.file)).collect();
        format!(
            "{{\"src\":\"{}\",\"dst\":\"{}\",\"protocol\":{},\"dport\":{},\"verdict\":\"{}\",\"judgements\":[{}]}}",
            self.src,
            self.dst,
            self.proto,
            self.dport,
            verdict_word(self.verdict()),
            judgements.join(",")
        )
    }
}
