//! `Node.spec.policy`: node-wide settings of how policy is enforced.
//!
//! Contract:
//! - `allowLocalhost` is Cilium's `allow-localhost` option, with its names: `always` (traffic
//!   from the node itself to its endpoints is allowed even where an endpoint is isolated for
//!   ingress), `policy` (the node is a peer like any other: `fromEntities: [host]` allows it)
//!   and `auto`, the default, which Cilium turns into `always` when it runs with Kubernetes
//!   (sluice reads Kubernetes documents, so it always does).
//! - Kubernetes NetworkPolicy says the node may always reach its pods: "When a pod is isolated
//!   for ingress, the only allowed connections into the pod are those from the pod's node and
//!   those allowed by the ingress list of some NetworkPolicy that applies to the pod for
//!   ingress." So an endpoint isolated for ingress by a NetworkPolicy admits the node whatever
//!   this setting says; `policy` changes only what CiliumNetworkPolicy isolation means. A deny
//!   rule that matches the node still drops its traffic (deny wins, as everywhere).
//! - `revokeEstablished` (default `false`, Cilium's behaviour: "established connections
//!   survive policy changes"): when `true`, a policy change that now denies an established
//!   connection ends it ([`crate::node::revoke`]).
//! - `nodeSelectorLabels` is Cilium's `enable-node-selector-labels` (Helm
//!   `nodeSelectorLabels`), default false: with it, each overlay peer gets its own identity
//!   from its `labels` (peers with equal labels share one) and `fromNodes`/`toNodes` select
//!   peers by those labels; without it, `fromNodes`/`toNodes` are rejected, as Cilium rejects
//!   them ("FromNodes/ToNodes rules can only be applied when the
//!   \"enable-node-selector-labels\" flag is set").

use serde::Deserialize;

/// `Node.spec.policy` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "policy settings: a mapping with allowLocalhost, revokeEstablished and nodeSelectorLabels"
)]
pub(crate) struct PolicySettingsWire {
    #[serde(default)]
    allow_localhost: Option<AllowLocalhostWire>,
    #[serde(default)]
    revoke_established: bool,
    node_selector_labels: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AllowLocalhostWire {
    Auto,
    Always,
    Policy,
}

/// Whether the node's own traffic reaches endpoints isolated for ingress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AllowLocalhost {
    /// Always allowed (unless a deny rule matches it): Cilium's `always`, and `auto` in
    /// Kubernetes mode.
    #[default]
    Always,
    /// Allowed only by a rule that allows the host, for CiliumNetworkPolicy isolation
    /// (NetworkPolicy isolation admits the node regardless).
    Policy,
}

/// Node-wide policy settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PolicySettings {
    pub allow_localhost: AllowLocalhost,
    /// End established connections a policy change now denies.
    pub revoke_established: bool,
    /// Cilium's `enable-node-selector-labels`: per-node identities from the peers' labels,
    /// and `fromNodes`/`toNodes` accepted.
    pub node_selector_labels: bool,
}

pub(crate) fn lower(wire: Option<PolicySettingsWire>) -> PolicySettings {
    let wire = wire.unwrap_or_default();
    PolicySettings {
        allow_localhost: match wire.allow_localhost {
            None | Some(AllowLocalhostWire::Auto | AllowLocalhostWire::Always) => AllowLocalhost::Always,
            Some(AllowLocalhostWire::Policy) => AllowLocalhost::Policy,
        },
        revoke_established: wire.revoke_established,
        node_selector_labels: wire.node_selector_labels.unwrap_or(false),
    }
}
