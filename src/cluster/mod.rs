//! cluster: the node in its cluster, through etcd (v3).
//!
//! Contract (the key layout is documented for operators in `CLUSTER.md`):
//! - [`layout`]: every key and value the nodes write, in the spirit of Cilium's kvstore
//!   (`cilium/state/{nodes,identities,ip}/v1/...`): nodes and endpoints under their node's
//!   lease; identities as a master key (`id/<n>` -> labels, no lease) plus one reference per
//!   node that uses it (`value/<labels>/<node>` -> n, under that node's lease).
//! - [`alloc`]: one number per label set for the whole cluster, allocated with a
//!   create-if-absent transaction; the probe order is a pure function of the labels, so two
//!   nodes racing for one label set meet at the same key and get the same number.
//! - [`view`]: what a node knows of the others (nodes, identities, endpoints), built from a
//!   list and kept by a watch, and [`view::ClusterView::apply`], which turns it into the
//!   node's config: overlay peers with their endpoints (replacing the file's static peers)
//!   and the cluster's identity numbers. The datapath learns it as map updates.
//! - [`agent`]: the loop a daemon runs: publish, keep the lease alive, watch, and on any
//!   etcd failure keep the last view (the datapath keeps its state), retry with back-off,
//!   and resynchronise (relist) when etcd is back or the watch fell behind compaction.
//! - [`fast`]: an endpoint that changed identity written straight into the ipcache, so a
//!   change does not cost a whole re-apply.
//! - [`server`]: a throwaway etcd for tests, the demo and the benchmark.
//! - [`etcd`]: the etcd v3 client (JSON gateway over HTTP/1.1; why not `etcd-client`: see
//!   there).

pub mod agent;
pub mod alloc;
pub mod etcd;
pub mod fast;
pub mod layout;
pub mod server;
pub mod view;

pub use agent::{Agent, AgentStatus};
pub use etcd::{Client, EtcdError};
pub use view::ClusterView;
