//! The emitter kit: one emitter per idiom every generator uses, so an idiom is written,
//! reviewed and fixed once: packet pointers, Ethernet with VLAN tags, the IPv4 and IPv6
//! header checks (offsets from `packet::*::field`), bounds guards, verdict sites generic
//! over a reason type and their counting exit, map calls on stack keys, counters, the
//! flow-hash word. Jump targets are label ids the caller hands in ([`EthLabels`],
//! [`Ipv4Checks`], [`VerdictSites`]); labels an emitter makes for itself are ids too, so
//! an emitter may be used any number of times in one program.
//!
//! Register contract: map emitters clobber `r0`-`r5` (a helper call) and leave the
//! helper's answer in `r0`; keys and values are stack slots given as offsets from `r10`.
//! The packet parsers keep `r8` = packet start, `r9` = packet end, `r7` = the L3 header.

use crate::lb::hash::FLOW_HASH_MIX;
use sluice_asm::helpers::{MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Reg, Size, Src};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::{SkBuff, XdpMd};

pub use crate::uapi::BPF_ANY;

/// `r0 = map_lookup_elem(map, r10 + key)`.
pub fn map_lookup(b: &mut Builder, map: &str, key: i16) {
    b.ld_map(Reg::R1, map);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(key));
    b.call(MAP_LOOKUP_ELEM);
}

/// `r0 = map_update_elem(map, r10 + key, r10 + value, flags)`.
pub fn map_update(b: &mut Builder, map: &str, key: i16, value: i16, flags: i32) {
    b.ld_map(Reg::R1, map);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(key));
    b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(value));
    b.mov(Reg::R4, flags);
    b.call(MAP_UPDATE_ELEM);
}

/// One word of [`crate::lb::hash::flow_hash`]: `h = (h ^ w) * MIX; h ^= h >> 15`, in
/// 32-bit operations (`tmp` is clobbered).
pub fn flow_hash_word(b: &mut Builder, h: Reg, w: Reg, tmp: Reg) {
    b.alu32(AluOp::Xor, h, w).alu32(AluOp::Mul, h, FLOW_HASH_MIX as i32);
    b.mov32(tmp, h).alu32(AluOp::Rsh, tmp, 15).alu32(AluOp::Xor, h, tmp);
}

/// murmur3's 32-bit finaliser (`fmix32`) on `h` (`tmp` is clobbered).
pub fn fmix32(b: &mut Builder, h: Reg, tmp: Reg) {
    for (shift, mul) in [(16, Some(0x85eb_ca6bu32)), (13, Some(0xc2b2_ae35)), (16, None)] {
        b.mov32(tmp, h).alu32(AluOp::Rsh, tmp, shift).alu32(AluOp::Xor, h, tmp);
        if let Some(m) = mul {
            b.alu32(AluOp::Mul, h, m as i32);
        }
    }
}

/// Name a stack copy of layout `T` at `r10 + off` for the listing: the whole as `name`, each
/// field (padding left out) as `name.field`.
pub fn stack_layout<T: crate::maps::Layout>(b: &mut Builder, name: &str, off: i16) {
    b.stack_slot(name, off, std::mem::size_of::<T>() as u16);
    for f in T::FIELDS.iter().filter(|f| !f.name.starts_with('_')) {
        b.stack_slot(format!("{name}.{}", f.name), off + f.off as i16, f.size as u16);
    }
}

/// The endpoint policy's trie decision for a complete `policy` key at `r10 + key`
/// ([`crate::maps::policy::policy_key`], `FULL_BITS`): the longest match in the key's
/// identity subtree, then in the "any identity" subtree (the key's identity is zeroed for
/// the second lookup). Jumps to `found` with `r0` = the `policy` value; falls through on a
/// miss (default deny).
pub fn policy_trie_lookup(b: &mut Builder, key: i16, found: Label) {
    use crate::maps::policy::policy_key;
    for pass in 0..2 {
        if pass == 1 {
            b.store(Size::W, Reg::R10, key + policy_key::IDENTITY as i16, 0);
        }
        map_lookup(b, crate::maps::names::POLICY, key);
        b.jmp(JmpCond::Ne, Reg::R0, 0, found);
    }
}

/// Add `amount` (a register the helper call keeps: `r6`-`r9`; `None` adds 1) to the `u64`
/// at `index` (a constant or a register) of the (per-CPU) array `map`; `r10 + key` is a
/// 4-byte scratch slot.
pub fn counter_add(b: &mut Builder, map: &str, key: i16, index: impl Into<Src>, amount: Option<Reg>) {
    let done = b.new_label("counted");
    counter_add_then(b, map, key, index, amount, done);
}

/// [`counter_add`], then on at `done`, which it places after the increment (a caller's
/// label: the listing names the skip after what follows).
pub fn counter_add_then(
    b: &mut Builder,
    map: &str,
    key: i16,
    index: impl Into<Src>,
    amount: Option<Reg>,
    done: Label,
) {
    b.store(Size::W, Reg::R10, key, index);
    map_lookup(b, map, key);
    b.jmp(JmpCond::Eq, Reg::R0, 0, done);
    b.load(Size::DW, Reg::R1, Reg::R0, 0);
    match amount {
        Some(r) => b.add(Reg::R1, r),
        None => b.add(Reg::R1, 1),
    };
    b.store(Size::DW, Reg::R0, 0, Reg::R1);
    b.place(done);
}

/// A reason a program's verdict sites count: its index in the program's stats map, its
/// name (the site's label in the listing) and the verdict it returns.
pub trait VerdictReason: Copy + Eq {
    /// The stats map index (`r6` at the exit).
    fn index(self) -> i32;
    /// The name the listing shows for the site.
    fn name(self) -> &'static str;
    /// The program's return value for it (`r7` at the exit).
    fn verdict(self) -> i32;
}

impl VerdictReason for crate::maps::prefilter::Reason {
    fn index(self) -> i32 {
        self as i32
    }
    fn name(self) -> &'static str {
        crate::maps::prefilter::Reason::name(self)
    }
    fn verdict(self) -> i32 {
        crate::maps::prefilter::Reason::verdict(self)
    }
}

impl VerdictReason for crate::maps::ipsec::Reason {
    fn index(self) -> i32 {
        self as i32
    }
    fn name(self) -> &'static str {
        crate::maps::ipsec::Reason::name(self)
    }
    fn verdict(self) -> i32 {
        crate::maps::ipsec::Reason::verdict(self)
    }
}

impl VerdictReason for crate::maps::lb::LbReason {
    fn index(self) -> i32 {
        self as i32
    }
    fn name(self) -> &'static str {
        crate::maps::lb::LbReason::name(self)
    }
    fn verdict(self) -> i32 {
        crate::maps::lb::LbReason::verdict(self)
    }
}

impl VerdictReason for crate::maps::policy::Reason {
    fn index(self) -> i32 {
        self as i32
    }
    fn name(self) -> &'static str {
        crate::maps::policy::Reason::name(self)
    }
    /// Endpoint programs are tc programs: an allowing reason passes, the rest drop.
    fn verdict(self) -> i32 {
        if self.allows() {
            crate::uapi::TC_ACT_OK
        } else {
            crate::uapi::TC_ACT_SHOT
        }
    }
}

/// One verdict site per reason (`r6 = reason; r7 = verdict; goto exit`), each a label id
/// named after its reason: code anywhere in the program jumps to [`VerdictSites::of`], and
/// [`VerdictSites::emit`] places them all, in the order given, where the program wants them.
#[derive(Debug, Clone)]
pub struct VerdictSites<R> {
    sites: Vec<(R, Label)>,
    exit: Label,
}

impl<R: VerdictReason> VerdictSites<R> {
    /// Labels for the sites of `reasons`, which all jump to `exit`.
    pub fn new(b: &mut Builder, reasons: impl IntoIterator<Item = R>, exit: Label) -> VerdictSites<R> {
        let sites = reasons.into_iter().map(|r| (r, b.new_label(r.name()))).collect();
        VerdictSites { sites, exit }
    }

    /// The site of `reason`.
    ///
    /// # Panics
    /// If `reason` was not among those the sites were made for: a generator names only
    /// reasons its program has a site for.
    pub fn of(&self, reason: R) -> Label {
        self.sites
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("no verdict site for reason `{}`", reason.name()))
    }

    /// The label every site jumps to.
    pub fn exit(&self) -> Label {
        self.exit
    }

    /// Place every site: the reason in `r6`, its verdict in `r7`, then to the exit.
    pub fn emit(&self, b: &mut Builder) {
        for (r, l) in &self.sites {
            verdict_site(b, *l, *r, self.exit);
        }
    }
}

/// Where the IPv4 header checks jump.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Checks {
    /// The fixed header (or, with `whole_header`, the options) runs past `data_end`.
    pub truncated: Label,
    /// Version not 4, or a header length under 20 bytes.
    pub malformed: Label,
    /// Also check that the whole header, options included, is in the packet. Without it
    /// the caller's guard on the L4 header covers the options.
    pub whole_header: bool,
}

/// The IPv4 header at `r7` (`r9` = data_end): fixed header in bounds, version 4, IHL at
/// least 5; leaves `l4 = r7 + IHL * 4`, the transport header. Clobbers `r2`, `r3`.
pub fn ipv4_header(b: &mut Builder, l4: Reg, c: Ipv4Checks) {
    use crate::packet::ipv4::field as ipv4;
    guard(b, Reg::R7, ipv4::HEADER_LEN as i32, c.truncated);
    b.load(Size::B, Reg::R2, Reg::R7, ipv4::VER_IHL as i16);
    b.mov(Reg::R3, Reg::R2).alu(AluOp::And, Reg::R3, 0xf0);
    b.jmp(JmpCond::Ne, Reg::R3, 0x40, c.malformed);
    b.alu(AluOp::And, Reg::R2, 0x0f);
    b.jmp(JmpCond::Lt, Reg::R2, (ipv4::HEADER_LEN / 4) as i32, c.malformed);
    b.alu(AluOp::Lsh, Reg::R2, 2);
    b.mov(l4, Reg::R7).add(l4, Reg::R2);
    if c.whole_header {
        b.jmp(JmpCond::Gt, l4, Reg::R9, c.truncated);
    }
}

/// The IPv6 fixed header at `r7` (`r9` = data_end): in bounds and version 6. Clobbers `r2`.
pub fn ipv6_header(b: &mut Builder, truncated: Label, malformed: Label) {
    use crate::packet::ipv6::field as ipv6;
    guard(b, Reg::R7, ipv6::HEADER_LEN as i32, truncated);
    b.load(Size::B, Reg::R2, Reg::R7, ipv6::VER_TC_FLOW.start as i16);
    b.alu(AluOp::And, Reg::R2, 0xf0);
    b.jmp(JmpCond::Ne, Reg::R2, 0x60, malformed);
}

/// One verdict site at `at`: `r6 = reason; r7 = its verdict; goto exit`.
pub fn verdict_site<R: VerdictReason>(b: &mut Builder, at: Label, r: R, exit: Label) {
    b.place(at).comment(format!("verdict: {}", r.name()));
    b.mov(Reg::R6, r.index()).mov(Reg::R7, r.verdict()).ja(exit);
}

/// Transport header lengths the port parsers guard: TCP without options, UDP, and SCTP's
/// common header (ports, verification tag, checksum; sluice has no SCTP packet view).
pub const TCP_HLEN: i32 = crate::packet::tcp::field::HEADER_LEN as i32;
pub const UDP_HLEN: i32 = crate::packet::udp::field::HEADER_LEN as i32;
pub const SCTP_HLEN: i32 = 12;

/// Ethertypes, as a little-endian load of the big-endian wire field sees them: comparing
/// against these saves a byte swap per comparison. sluice runs on little-endian hosts.
pub mod ethertype {
    /// The value a `u16` load of the wire bytes of `ethertype` yields.
    pub const fn wire(ethertype: u16) -> i32 {
        ethertype.swap_bytes() as i32
    }
    pub use crate::packet::ethernet::ethertype::{IPV4, IPV6, QINQ, VLAN};
}

/// Ethernet header length.
pub const ETH_HLEN: i32 = crate::packet::ethernet::field::HEADER_LEN as i32;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: i32 = crate::packet::ethernet::vlan_field::TAG_LEN as i32;
/// The ethertype's offset in the Ethernet header.
const ETH_TYPE: i16 = crate::packet::ethernet::field::ETHERTYPE.start as i16;

/// Labels the Ethernet parser jumps to.
#[derive(Debug, Clone, Copy)]
pub struct EthLabels {
    pub ipv4: Label,
    pub ipv6: Label,
    pub not_ip: Label,
    pub truncated_ethernet: Label,
    pub truncated_vlan: Label,
    pub vlan_too_deep: Label,
}

/// Load the packet pointers (`r8`, `r9`) from an XDP context in `r1`.
pub fn emit_xdp_packet_pointers(b: &mut Builder) {
    b.comment("r8 = data, r9 = data_end");
    b.load(Size::W, Reg::R8, Reg::R1, ctx_off!(XdpMd, data));
    b.load(Size::W, Reg::R9, Reg::R1, ctx_off!(XdpMd, data_end));
}

/// `__sk_buff.data` and `.data_end`.
pub const SKB_DATA: i16 = ctx_off!(SkBuff, data);
pub const SKB_DATA_END: i16 = ctx_off!(SkBuff, data_end);

/// Load the packet pointers (`r8`, `r9`) from the `__sk_buff` in `ctx`.
pub fn emit_skb_packet_pointers(b: &mut Builder, ctx: Reg) {
    skb_data(b, ctx, Reg::R8, Reg::R9);
}

/// `data = skb->data; data_end = skb->data_end` from the `__sk_buff` in `ctx`: the reload a
/// program needs after a helper that may move the packet.
pub fn skb_data(b: &mut Builder, ctx: Reg, data: Reg, data_end: Reg) {
    b.load(Size::W, data, ctx, SKB_DATA);
    b.load(Size::W, data_end, ctx, SKB_DATA_END);
}

/// Parse Ethernet with up to two VLAN tags (802.1Q or 802.1ad, in any order): leaves the
/// L3 header pointer in `r7` and jumps to the label for the inner ethertype in `r4`.
///
/// Every read is guarded against `r9`. Untagged frames take a straight path with constant
/// offsets. Tagged frames share one path: whether a second tag follows is computed without
/// a branch (`r5 = 4` or `0`) and added to the cursor, so the kernel verifier walks the IP
/// parsers twice (untagged, tagged) instead of once per tag depth.
pub fn emit_ethernet(b: &mut Builder, l: EthLabels) {
    let tpids = [ethertype::wire(ethertype::VLAN), ethertype::wire(ethertype::QINQ)];
    b.comment("ethernet: 14 bytes");
    guard(b, Reg::R8, ETH_HLEN, l.truncated_ethernet);
    b.load(Size::H, Reg::R4, Reg::R8, ETH_TYPE);
    b.mov(Reg::R7, Reg::R8).add(Reg::R7, ETH_HLEN);
    let vlan = b.new_label("vlan");
    for tpid in tpids {
        b.jmp(JmpCond::Eq, Reg::R4, tpid, vlan);
    }
    emit_l3_dispatch(b, &l);
    b.place(vlan).comment("first vlan tag");
    guard(b, Reg::R8, ETH_HLEN + VLAN_HLEN, l.truncated_vlan);
    b.load(Size::H, Reg::R4, Reg::R8, ETH_TYPE + VLAN_HLEN as i16);
    b.comment("r5 = 4 if a second tag follows, else 0 (no branch: one verifier path)");
    for (i, tpid) in tpids.into_iter().enumerate() {
        let r = if i == 0 { Reg::R5 } else { Reg::R3 };
        b.mov(r, Reg::R4).alu(AluOp::Xor, r, tpid).alu(AluOp::Sub, r, 1).alu(AluOp::Rsh, r, 63);
    }
    b.alu(AluOp::Or, Reg::R5, Reg::R3).alu(AluOp::Lsh, Reg::R5, 2);
    b.mov(Reg::R7, Reg::R8).add(Reg::R7, Reg::R5).add(Reg::R7, ETH_HLEN + VLAN_HLEN);
    b.jmp(JmpCond::Gt, Reg::R7, Reg::R9, l.truncated_vlan);
    b.load(Size::H, Reg::R4, Reg::R7, -2);
    for tpid in tpids {
        b.jmp(JmpCond::Eq, Reg::R4, tpid, l.vlan_too_deep);
    }
    emit_l3_dispatch(b, &l);
}

fn emit_l3_dispatch(b: &mut Builder, l: &EthLabels) {
    b.comment("inner ethertype");
    b.jmp(JmpCond::Eq, Reg::R4, ethertype::wire(ethertype::IPV4), l.ipv4);
    b.jmp(JmpCond::Eq, Reg::R4, ethertype::wire(ethertype::IPV6), l.ipv6);
    b.ja(l.not_ip);
}

/// `if base + len > data_end goto fail` (uses `r2`).
pub fn guard(b: &mut Builder, base: Reg, len: i32, fail: Label) {
    b.mov(Reg::R2, base).add(Reg::R2, len);
    b.jmp(JmpCond::Gt, Reg::R2, Reg::R9, fail);
}

/// The stats key's slot at the exit: the top of the frame, whatever it held before (no
/// program that uses this exit reads its frame after it).
const STATS_KEY: i16 = -4;

/// The shared exit: count the reason in `r6` in the per-CPU array `stats`, then return
/// the verdict in `r7`. Neither value steers a branch or a pointer here, so the kernel
/// verifier keeps them imprecise and prunes every path that reaches this block after the
/// first: the block is verified once, not once per verdict site.
pub fn emit_count_and_exit(b: &mut Builder, exit: Label, stats: &str) {
    b.place(exit).comment(format!("count the reason (r6) in {stats}, return the verdict (r7)"));
    let ret = b.new_label("return");
    counter_add_then(b, stats, STATS_KEY, Reg::R6, None, ret);
    b.mov(Reg::R0, Reg::R7).exit();
}

/// `dst = bswap32(dst)` then keep only the low 32 bits (`be32` already zero-extends).
pub fn emit_be32(b: &mut Builder, dst: Reg) {
    b.be(32, dst);
}

/// `dst = (src >> shift) & mask`, in 32-bit operations so the verifier bounds it.
pub fn emit_field32(b: &mut Builder, dst: Reg, src: Reg, shift: i32, mask: i32) {
    b.mov32(dst, src);
    if shift != 0 {
        b.alu32(AluOp::Rsh, dst, shift);
    }
    if mask != -1 {
        b.alu32(AluOp::And, dst, mask);
    }
}

/// Whether the whole transport header at `l4` is in the packet, by the protocol in
/// `proto`: TCP (without options), UDP, SCTP (its common header); `short` when it is cut
/// short. A protocol other than these goes to `not_l4`; without `not_l4` the caller has
/// ruled them out already (anything else is checked as SCTP). Falls through when the header
/// is there. `name` prefixes the listing names of the emitter's own labels. Clobbers `r2`.
pub fn l4_whole_header(
    b: &mut Builder,
    proto: Reg,
    l4: Reg,
    short: Label,
    not_l4: Option<Label>,
    name: &str,
) {
    use crate::uapi::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
    let [tcp, udp, whole] = ["tcp", "udp", "ports"].map(|n| b.new_label(&format!("{name}{n}")));
    b.jmp(JmpCond::Eq, proto, IPPROTO_TCP, tcp);
    b.jmp(JmpCond::Eq, proto, IPPROTO_UDP, udp);
    if let Some(not_l4) = not_l4 {
        b.jmp(JmpCond::Ne, proto, IPPROTO_SCTP, not_l4);
    }
    guard(b, l4, SCTP_HLEN, short);
    b.ja(whole);
    b.place(tcp);
    guard(b, l4, TCP_HLEN, short);
    b.ja(whole);
    b.place(udp);
    guard(b, l4, UDP_HLEN, short);
    b.place(whole);
}
