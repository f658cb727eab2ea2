//! Identity on the wire: the `from-overlay` program (tc ingress of the VXLAN device) and the
//! mark it leaves for `to-endpoint`.
//!
//! In cluster mode identities are cluster-wide numbers, so a node can tell its peers who sent
//! a packet: `from-endpoint` puts the source endpoint's identity in the tunnel id (the VXLAN
//! VNI) of every packet it sends into the overlay, as Cilium does. The receiving node must
//! then judge the packet by that identity, not by its ipcache entry for the source address,
//! which may be stale (an endpoint that moved, an update not yet seen) or missing.
//!
//! The tunnel metadata does not survive the receiving node's routing (the stack drops the
//! metadata dst when it routes the decapsulated packet to the endpoint's veth), so it is
//! read where it is still attached, in tc ingress of the VXLAN device, and handed on in
//! `skb->mark`, which the forwarding path within the namespace keeps:
//!
//! - `from-overlay`: when `fwd_cfg` has [`fwd_cfg::IDENTITY`] (the node is in cluster mode),
//!   `bpf_skb_get_tunnel_key`; a tunnel id in `1..=`[`MAX_WIRE_IDENTITY`] becomes the mark
//!   [`identity_mark`] (`id << 16 | `[`MARK_MAGIC_IDENTITY`], Cilium's magic). Everything
//!   else leaves the mark alone. The verdict is always `TC_ACT_OK`: this program only
//!   annotates, policy runs at the endpoint.
//! - `to-endpoint`, for a new connection whose policy is enforced: a mark whose low 16 bits
//!   are the magic gives the peer's identity (the high 16 bits); without it, the ipcache
//!   as before.
//!
//! What a packet with VNI 0 or an unknown identity gets: VNI 0 (a sender outside cluster
//! mode, or one whose endpoint has no identity) sets no mark, so the receiver falls back to
//! its ipcache entry for the source address (`world` if it has none). A nonzero VNI is taken
//! as the identity even if this node has no rules for it: it then gets only the "any
//! identity" rules, like any identity without rules of its own. The tunnel is trusted as
//! Cilium trusts it: anyone who can send VXLAN to the node's underlay port can claim an
//! identity; the underlay must be a trusted network (or encrypted, issue 15).
//!
//! A pod cannot forge the mark: crossing from its namespace to the host the veth scrubs the
//! skb (`skb_scrub_packet` with a namespace change clears `mark`).

use super::CodegenError;
use crate::maps::fwd::{fwd_cfg, tunnel_key_struct};
use crate::maps::names as map;
use crate::maps::policy::TC_ACT_OK;
use crate::maps::MapDef;
use sluice_asm::helpers::SKB_GET_TUNNEL_KEY;
use sluice_asm::{AluOp, Builder, JmpCond, Program, Reg, Size};
use sluice_verifier_sim::uapi::SkBuff;

/// The program's name (kernel names are at most 15 characters).
pub const FROM_OVERLAY: &str = "from_overlay";

/// The low 16 bits of a mark that carries an identity (Cilium's `MARK_MAGIC_IDENTITY`).
pub const MARK_MAGIC_IDENTITY: u32 = 0x0F00;
/// Which bits of the mark the magic occupies.
pub const MARK_MAGIC_MASK: u32 = 0xFFFF;
/// The largest identity the mark (and so the wire) carries: label-set identities end at
/// 65535 ([`crate::policy::identity::Identity::LAST_LABEL_SET`]).
pub const MAX_WIRE_IDENTITY: u32 = 0xFFFF;

/// `skb->mark` offset in `struct __sk_buff`.
pub const SKB_MARK: i16 = std::mem::offset_of!(SkBuff, mark) as i16;

/// The mark `from-overlay` sets for identity `id`; `None` when `id` is 0 or too large.
pub fn identity_mark(id: u32) -> Option<u32> {
    (1..=MAX_WIRE_IDENTITY).contains(&id).then_some((id << 16) | MARK_MAGIC_IDENTITY)
}

/// The identity a mark carries, as `to-endpoint` reads it.
pub fn mark_identity(mark: u32) -> Option<u32> {
    (mark & MARK_MAGIC_MASK == MARK_MAGIC_IDENTITY && mark >> 16 != 0).then_some(mark >> 16)
}

/// The maps `from-overlay` uses (the forwarding maps; it reads `fwd_cfg`).
pub fn map_defs() -> Vec<MapDef> {
    crate::maps::fwd::map_defs()
}

/// The tunnel key read by the program, on the stack.
const FP_TUNNEL_KEY: i16 = -(((tunnel_key_struct::SIZE + 7) & !7) as i16);

/// Generate `from-overlay` (see the module doc).
pub fn generate_from_overlay() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    let (read_key, pass) = (b.new_label("read_key"), b.new_label("pass"));
    b.stack_slot("tunnel_key", FP_TUNNEL_KEY, tunnel_key_struct::SIZE as u16);
    b.mov(Reg::R6, Reg::R1);
    b.comment("identities on the wire only in cluster mode (fwd_cfg IDENTITY)");
    b.ld_map_value(Reg::R1, map::FWD_CFG, 0);
    b.load(Size::W, Reg::R1, Reg::R1, fwd_cfg::FLAGS as i16);
    b.jmp(JmpCond::Set, Reg::R1, fwd_cfg::IDENTITY as i32, read_key);
    b.ja(pass);
    b.place(read_key);
    b.mov(Reg::R1, Reg::R6);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_TUNNEL_KEY));
    b.mov(Reg::R3, tunnel_key_struct::SIZE as i32);
    b.mov(Reg::R4, 0);
    b.call(SKB_GET_TUNNEL_KEY);
    b.jmp(JmpCond::Ne, Reg::R0, 0, pass);
    b.load(Size::W, Reg::R1, Reg::R10, FP_TUNNEL_KEY + tunnel_key_struct::TUNNEL_ID as i16);
    b.comment("VNI 0 or beyond the label-set range: no identity, the ipcache decides");
    b.jmp(JmpCond::Eq, Reg::R1, 0, pass);
    b.jmp(JmpCond::Gt, Reg::R1, MAX_WIRE_IDENTITY as i32, pass);
    b.alu(AluOp::Lsh, Reg::R1, 16);
    b.alu(AluOp::Or, Reg::R1, MARK_MAGIC_IDENTITY as i32);
    b.store(Size::W, Reg::R6, SKB_MARK, Reg::R1);
    b.place(pass);
    b.mov(Reg::R0, TC_ACT_OK).exit();
    b.build().map_err(|source| CodegenError::Build { object: FROM_OVERLAY, source })
}
