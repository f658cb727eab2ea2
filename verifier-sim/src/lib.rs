//! sluice-verifier-sim: a conservative eBPF verifier and an executor for the programs sluice
//! emits. No syscalls; knows nothing of policies.
//!
//! - [`spec`]: program kinds, context layouts, map specs (shared vocabulary).
//! - [`uapi`]: the kernel contexts and helper structures as `#[repr(C)]` structs.
//! - [`verifier`]: abstract interpretation over register and stack types; rejects what the
//!   kernel would reject for the class of programs we emit (and a little more).
//! - [`maps`], [`exec`]: emulated maps and an interpreter over real context layouts.
//! - [`pcap`]: capture reading for replay.

pub mod exec;
pub mod maps;
pub mod pcap;
pub mod spec;
pub mod uapi;
pub mod verifier;
