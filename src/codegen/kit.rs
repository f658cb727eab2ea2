//! The emitter kit: one emitter per idiom every generator uses (map calls on stack keys,
//! the flow-hash word), so an idiom is written, reviewed and fixed once.
//!
//! Register contract: map emitters clobber `r0`-`r5` (a helper call) and leave the
//! helper's answer in `r0`; keys and values are stack slots given as offsets from `r10`.

use crate::lb::hash::FLOW_HASH_MIX;
use sluice_asm::helpers::{MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM};
use sluice_asm::{AluOp, Builder, Label, Reg};

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
            b.store(sluice_asm::Size::W, Reg::R10, key + policy_key::IDENTITY as i16, 0);
        }
        map_lookup(b, crate::maps::names::POLICY, key);
        b.jmp(sluice_asm::JmpCond::Ne, Reg::R0, 0, found);
    }
}

/// Add `amount` (a register the helper call keeps: `r6`-`r9`; `None` adds 1) to the `u64`
/// at `index` of the (per-CPU) array `map`; `r10 + key` is a 4-byte scratch slot.
pub fn counter_add(b: &mut Builder, map: &str, key: i16, index: i32, amount: Option<Reg>) {
    use sluice_asm::{JmpCond, Size};
    b.store(Size::W, Reg::R10, key, index);
    map_lookup(b, map, key);
    let done = b.new_label("counted");
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
    use sluice_asm::{JmpCond, Size};
    super::guard(b, Reg::R7, ipv4::HEADER_LEN as i32, c.truncated);
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
    use sluice_asm::{JmpCond, Size};
    super::guard(b, Reg::R7, ipv6::HEADER_LEN as i32, truncated);
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
