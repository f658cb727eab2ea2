//! L7 (HTTP) policy: what `toPorts[].rules.http` decides about one request.
//!
//! - [`rules`]: one port's HTTP rules compiled (anchored regular expressions, header checks)
//!   and applied to a request.
//! - [`policy`]: which rules govern a proxied connection, read from the node's policies the
//!   way the reference evaluator reads them (`crate::policy::oracle`), for both ends when both
//!   are local endpoints.
//!
//! The proxy that applies them is `crate::proxy`.

pub mod policy;
pub mod rules;
