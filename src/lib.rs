//! sluice: a node's declared networking state compiled to eBPF by Rust code.
//!
//! The pipeline (see `DESIGN.md`): [`model`] parses and validates the node file, [`node`]
//! plans which object runs on which hook, [`codegen`] emits one program per object,
//! `sluice-verifier-sim` checks and runs it, [`sys`] loads it into the kernel.

pub mod attach;
pub mod cluster;
pub mod codegen;
pub mod daemon;
pub mod elf;
pub mod encrypt;
#[path = "../golden/mod.rs"]
pub mod golden;
pub mod l7;
pub mod lb;
pub mod maps;
pub mod model;
pub mod monitor;
pub mod mutate;
pub mod netlink;
pub mod node;
pub mod packet;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod sys;
/// Kernel structures and constants, defined once (in `sluice-verifier-sim`, which the
/// simulator and the code generators share).
pub use sluice_verifier_sim::uapi;
