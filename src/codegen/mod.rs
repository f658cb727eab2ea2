//! Code generation: one `sluice_asm::Program` per (object, hook), specialized to the plan.
//!
//! Shared emitters live in [`kit`] (Ethernet and VLAN, IPv4 and IPv6 headers with bounds
//! guards, verdict sites and their counting exit, map calls); each datapath object has its
//! own module. Generated code is
//! deterministic: the same input gives byte-identical programs (DESIGN invariant 5).
//! Register conventions shared by the emitters: `r8` = packet start, `r9` = packet end,
//! `r7` = the L3 header (cursor), `r6` = the verdict reason at exit.

pub mod endpoint;
pub mod ipsec;
pub mod kit;
pub mod l7_redirect;
pub mod lb;
pub mod overlay;
pub mod prefilter;
pub mod sock_destroy;
pub mod sock_lb;
pub mod sockops;
pub mod to_proxy;

use thiserror::Error;

// The shared emitters live in the kit; these paths stay for the generators that name them.
pub use kit::{
    emit_be32, emit_count_and_exit, emit_ethernet, emit_field32, emit_skb_packet_pointers,
    emit_xdp_packet_pointers, ethertype, guard, EthLabels, ETH_HLEN, SKB_DATA, SKB_DATA_END, VLAN_HLEN,
};

/// Why a program could not be generated.
#[derive(Debug, Error)]
pub enum CodegenError {
    #[error("{object}: {source}")]
    Build {
        object: &'static str,
        #[source]
        source: sluice_asm::BuildError,
    },
    #[error("L7 rules name more than {max} ports; the proxy redirect takes at most {max}")]
    TooManyRedirects { max: usize },
}
