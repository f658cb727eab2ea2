//! Settings a node file may hold that are valid but probably not meant: reported, not refused.
//!
//! Contract: [`warnings`] is a pure function of a [`NodeConfig`]; each warning is one line that
//! names the file and the field path. The commands that load a node (`sluice load`, `sluice
//! daemon` on each apply) print them; the node loads regardless. What is refused instead (an
//! endpoint on `lo` or on the node's own devices, an overlay local address that is an
//! endpoint's, a Service backend that is its own VIP) is an error of the lowering that finds it.
//!
//! Warned:
//! - `0.0.0.0/0` or `::/0` in `spec.prefilter.deny`: every packet of that family is dropped
//!   where the prefilter runs. It may be meant (an IPv6-only node), so it loads.
//! - A deny prefix that covers an endpoint's address: packets with that source are dropped
//!   where the prefilter runs. Meant for anti-spoofing on an outside device, a mistake if the
//!   endpoint's own traffic passes there.
//! - A deny prefix that covers an overlay peer's address: the peer's VXLAN packets come from
//!   that address, so the overlay to it breaks where the prefilter runs.
//! - A policy with ingress L7 (`rules.http`) rules: egress rules' connections are redirected
//!   to `sluice proxy` (`crate::codegen::l7_redirect`), ingress rules' are not yet, so the
//!   endpoint programs drop the connections those entries allow (fail closed); IPv6
//!   connections to L7 ports are dropped the same way.
//! - What a policy document holds that Kubernetes accepts and ignores (a NetworkPolicy's
//!   rules for a direction its `policyTypes` leaves out), from `NodeConfig::policy_warnings`,
//!   after the prefilter's.

use super::NodeConfig;

/// The warnings for `cfg`, in a stable order (deny list order).
pub fn warnings(cfg: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    for cidr in &cfg.prefilter.deny {
        if cidr.len() == 0 {
            out.push(format!(
                "{}: spec.prefilter.deny: {cidr} drops every {} packet where the prefilter runs",
                cfg.source,
                if cidr.v4().is_some() { "IPv4" } else { "IPv6" }
            ));
        }
        for e in &cfg.endpoints {
            for addr in e.addresses().filter(|a| cidr.contains(*a)) {
                out.push(format!(
                    "{}: spec.prefilter.deny: {cidr} covers endpoint {}'s address {addr}: packets from it are \
                     dropped where the prefilter runs",
                    cfg.source, e.name
                ));
            }
        }
        for peer in cfg.overlay.iter().flat_map(|o| &o.peers) {
            if cidr.contains(peer.address.into()) {
                out.push(format!(
                    "{}: spec.prefilter.deny: {cidr} covers overlay peer {}'s address {}: its tunnelled packets \
                     are dropped where the prefilter runs",
                    cfg.source, peer.name, peer.address
                ));
            }
        }
    }
    for policy in &cfg.policies {
        let has_ingress_l7 =
            policy.rules.iter().flat_map(|r| &r.ingress.allow).any(|peer_rule| peer_rule.http.is_some());
        if has_ingress_l7 {
            out.push(format!(
                "{}: {} {}/{}: ingress L7 rules are not redirected to `sluice proxy` yet (egress rules are): the \
                 connections they allow are dropped (fails closed); write the HTTP rules on the client's egress",
                cfg.source, policy.kind, policy.namespace, policy.name
            ));
        }
    }
    out.extend(cfg.policy_warnings.iter().cloned());
    out
}
