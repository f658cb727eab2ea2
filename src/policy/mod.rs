//! policy: endpoint policy from the model to policy-map entries, and the oracle that checks it.
//!
//! Pipeline (each stage a pure function of the [`crate::model::NodeConfig`]):
//! - [`identity`]: security identities (reserved, label-set, CIDR) with stable numbers.
//! - [`ipcache`]: address -> identity by longest-prefix match.
//! - [`resolve`](mod@resolve): per endpoint and direction, `enforced` and the sorted, canonical
//!   [`PolicyEntry`] list the datapath's policy map holds.
//! - [`entry`]: the entry format and [`evaluate_entries`], the verdict rule the datapath must
//!   implement (deny entries first, then allow, default deny when enforced).
//! - [`oracle`]: [`oracle::decide`], the reference evaluator written straight from the parsed
//!   policies; tests hold `evaluate_entries(resolve(..), ipcache.lookup(peer), ..)` to it.
//! - [`explain`]: the rule (with its place in the file) that decided a flow, for
//!   `sluice policy explain`.
//!
//! The eBPF program that enforces the entries is generated elsewhere (`codegen`).

pub mod entry;
pub mod explain;
pub mod identity;
pub mod ipcache;
pub mod oracle;
pub mod redirect;
pub mod resolve;
pub mod tiers;

pub use entry::{evaluate_entries, port_blocks, PolicyEntry, Verdict};
pub use identity::{Identity, IdentityTable};
pub use ipcache::IpCache;
pub use oracle::{decide, FlowKey};
pub use resolve::{resolve, DirectionPolicy, EndpointPolicy, Resolved};

/// Why policy could not be resolved or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// More distinct endpoint label sets than label-set identities.
    #[error(
        "{label_sets} distinct endpoint label sets do not fit the {capacity} label-set identities \
         (256 to 65535)"
    )]
    LabelIdentitiesExhausted { label_sets: usize, capacity: usize },
    /// The oracle was asked about an endpoint the node does not have.
    #[error("no endpoint `{0}` on this node")]
    UnknownEndpoint(String),
}
