//! lb: the pure parts of service load balancing, shared by the model, codegen, the simulator's
//! oracle and the CLI.
//!
//! Contract:
//! - [`maglev`] builds Maglev lookup tables (prime size, weighted turns, deterministic across
//!   runs and platforms); [`hash`] is the flow hash that picks a slot, defined to the bit so a
//!   BPF program computes the same value in a few dozen ALU instructions.
//! - No I/O, no kernel, no allocation in the inner loops; every function is total (errors are
//!   values).

pub mod hash;
pub mod maglev;

pub use hash::{flow_hash, hash_v4, hash_v6};
pub use maglev::{BackendKey, MaglevError, Table, TableSize};
