//! Endpoint policy: the tc programs on the host side of an endpoint's veth.
//!
//! `from-endpoint` (tc ingress of the host-side veth) enforces the endpoint's egress policy;
//! `to-endpoint` (tc egress) its ingress policy. Each program is generated for one endpoint
//! (its index is a constant) and one direction. Per packet:
//!
//! 1. Parse Ethernet (≤ 2 VLAN tags), IPv4 (header with options) and TCP/UDP/SCTP ports,
//!    ICMP type and echo id; everything the rest needs is copied to the stack.
//! 2. `from-endpoint` only: anti-spoofing, before anything else: the source must be the
//!    endpoint's own address (`ep_config`).
//!
//!    Services: then, with [`Options::services`], in `from-endpoint`, for TCP, UDP and SCTP
//!    with the whole L4 header (not later fragments, not ICMP): the service load balancer's
//!    forward path ([`crate::codegen::lb`], [`LbPaths::ForwardOnly`]): the frontend hint bit
//!    (no map call for non-service traffic), `lb_svc`, then a tracked `lb_ct` connection goes
//!    to its pinned backend, else affinity, slot and backend are chosen and both `lb_ct`
//!    entries written; the packet is DNATed in place (checksums
//!    fixed). Conntrack and policy then see the backend: the tuple's destination and the
//!    policy port are set from the load balancer's result (Kubernetes semantics: egress policy
//!    applies to the backend, not the VIP), so the client's own conntrack entry is client →
//!    backend. The load balancer runs inline after anti-spoofing (a spoofed packet never
//!    creates `lb_ct` entries), once per family, on its own frame (see `LB`); its reason is
//!    counted in `lb_stats`. A frontend without a usable backend ends the program there: a TCP
//!    packet becomes the reset a closed port sends, delivered with
//!    `bpf_redirect_peer(skb->ifindex, 0)` into the container side of the veth (it must not
//!    meet the client's ingress policy, which has no connection for it), UDP and SCTP are
//!    dropped; neither is counted in `ep_stats` (only in `lb_stats`). An L4 header deeper
//!    than 255 bytes (many IPv6 extension headers) is not balanced; as in the standalone
//!    program, a first IPv4 fragment is translated and the later ones are not.
//!
//!    Hairpin (an endpoint that is its own service's backend; step 9 of
//!    [`crate::codegen::lb`]): when the backend is the packet's source, the forward path also
//!    rewrites the source to the family's hairpin address ([`HAIRPIN_V4`], [`HAIRPIN_V6`]:
//!    a packet from its own address would be a martian to the endpoint's stack) and keys
//!    the `lb_ct` reply entry by it. The endpoint's answers go to the hairpin address through
//!    its default route, i.e. back into `from-endpoint`: a packet whose destination is the
//!    hairpin address (one compare with the constant, before any other load-balancer work)
//!    runs the reply path there ([`LbPaths::HairpinReply`]): source back to the frontend,
//!    destination back to the client, the endpoint itself. Both directions of a hairpinned
//!    connection skip conntrack and egress policy (the endpoint talks to itself, as in
//!    Cilium), counted `allow_hairpin`, and go to forwarding, whose `lxc` entry for the
//!    endpoint's own address redirects them to its own veth's egress. There `to-endpoint`
//!    recognises what the endpoint itself sent (`skb->ingress_ifindex == skb->ifindex`:
//!    received on this device, now leaving it) and passes it as `allow_hairpin` without
//!    policy and without the reply path (it is translated already). Nothing else passes as
//!    hairpin: `from-endpoint` translates only packets with the endpoint's own source
//!    (anti-spoofing comes first) and only for `lb_ct` entries the load balancer wrote; only
//!    the endpoint's own traffic is received on its veth. A packet to the hairpin address
//!    without an `lb_ct` reply entry goes on untranslated, judged as any other.
//! 3. Later IPv4 fragments follow the verdict their first fragment left in `frag4`.
//! 4. ICMP errors pass when their quoted packet belongs to a tracked connection.
//! 5. Conntrack (expiry on the coarse clock, `bpf_ktime_get_coarse_ns`: tick resolution is
//!    plenty for timeouts of seconds and it costs a fraction of `bpf_ktime_get_ns`): the
//!    tuple in this direction, then the reversed tuple in the opposite one
//!    (a reply; see [`crate::maps::policy::ct4_key`]). A live entry passes without a policy
//!    lookup; its TCP state and expiry advance.
//! 6. New connection: if policy is enforced in this direction, the peer's identity (in
//!    `to-endpoint`, from the identity mark `from-overlay` left in cluster mode, see
//!    [`super::overlay`]; otherwise) from the ipcache, then the longest match in that identity's policy subtree (which carries the
//!    "any identity" rules too; see [`crate::maps::policy::policy_writes`]), or in the
//!    "any identity" subtree when the peer has no rules of its own; an allowed connection
//!    gets a conntrack entry (and a fragment entry when it is a first fragment).
//! 7. Every verdict is counted per endpoint and reason in `ep_stats`; drops and new
//!    allowed connections become ring-buffer events when `ev_config` says so, within a
//!    per-CPU rate budget.
//! 8. With [`Options::services`], `to-endpoint` only, after the verdict allowed a TCP, UDP
//!    or SCTP packet with its whole L4 header (a conntrack reply to the client's
//!    client → backend entry, or policy): the load balancer's reply path
//!    ([`LbPaths::ReplyOnly`]): an `lb_ct` reply entry for the packet's tuple
//!    (backend → client) restores the frontend it holds as the source (checksums
//!    fixed). Its reason goes to `lb_stats`, its verdict is the program's (a failed
//!    rewrite drops). The reply path runs in `from-endpoint` only for packets to the
//!    hairpin address (any other backend's replies leaving it must keep their source: the
//!    client's `to-endpoint` translates them), the forward path never in `to-endpoint`.
//!
//! Then `from-endpoint` forwards what it allowed (see `emit_forward`).
//!
//! IPv6 is parsed and judged the same way with `ct6`, `frag6` and the `ipc_v6` trie, after
//! up to two extension headers (hop-by-hop, routing, destination options, fragment); more
//! make the packet "malformed" (a documented limit). ICMPv6 link-local control (multicast
//! listener messages 130-132 and 143, neighbor discovery 133-137) passes before
//! anti-spoofing: it uses link-local and unspecified sources.

use super::kit::{self, Ipv4Checks, VerdictSites};
use super::l7_redirect;
use super::lb::{
    emit_hint_filter, emit_service_lb, Hint, HintAddr, LbFrame, LbLabels, LbOptions, LbPaths, ResetVia,
    HAIRPIN_V4, HAIRPIN_V6,
};
use super::overlay;
use super::{
    emit_ethernet, emit_skb_packet_pointers, ethertype, guard, CodegenError, EthLabels, ETH_HLEN, SKB_DATA,
};
use crate::maps::fwd::{fib, fwd_cfg, lxc_value, tunnel_key_struct, tunnel_value, V4_MAPPED_WORD};
use crate::maps::names as map;
use crate::maps::policy::{
    ct4_key, ct6_key, ct_value, ep_config, ev_budget, ev_config, event, policy_key, policy_value, timeout,
    CtState, Reason, EGRESS, INGRESS, IPC_CHILD, TC_ACT_OK, TC_ACT_SHOT, WORLD,
};
use crate::maps::policy::{frag_value, CtValue, PolicyKey, FRAG_CLOCK_SHIFT, FRAG_TIMEOUT_UNITS};
use crate::maps::policy::{pol_epdir, pol_fold_const, pol_slot, POL_LIST, POL_OVERFLOW, POL_SLOTS};
use crate::maps::prefilter::V6_HASH_MUL;
use crate::packet::ethernet::field as ethernet;
use crate::packet::ipv6::frag_field as ipv6_frag;
use crate::packet::{icmp::field as icmp, ipv4::field as ipv4, ipv6::field as ipv6};
use crate::packet::{tcp::field as tcp, udp::field as udp};
use sluice_asm::helpers::{
    FIB_LOOKUP, KTIME_GET_COARSE_NS, KTIME_GET_NS, REDIRECT, REDIRECT_NEIGH, RINGBUF_OUTPUT,
    SKB_SET_TUNNEL_KEY,
};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Program, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::SkBuff;

// The program's parts, one file each: all of them add methods to `Gen`.
mod conntrack;
mod forward;
mod parse;
mod policy;
mod services;

/// Which side of the endpoint a program enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic the endpoint sends: its egress policy (tc ingress of the host-side veth).
    FromEndpoint,
    /// Traffic to the endpoint: its ingress policy (tc egress of the host-side veth).
    ToEndpoint,
}

impl Direction {
    /// The policy direction this program enforces.
    pub fn policy_dir(self) -> u8 {
        match self {
            Direction::FromEndpoint => EGRESS,
            Direction::ToEndpoint => INGRESS,
        }
    }

    /// The program's name for endpoint `ep`.
    pub fn program_name(self, ep: u16) -> String {
        match self {
            Direction::FromEndpoint => format!("from_ep_{ep}"),
            Direction::ToEndpoint => format!("to_ep_{ep}"),
        }
    }
}

impl Direction {
    /// The direction's index in `ep_tail` (the shared programs' table).
    pub fn tail_index(self) -> u32 {
        match self {
            Direction::FromEndpoint => 0,
            Direction::ToEndpoint => 1,
        }
    }

    /// The name of the direction's shared program ([`generate_shared`]).
    pub fn shared_name(self) -> &'static str {
        match self {
            Direction::FromEndpoint => "from_ep_shared",
            Direction::ToEndpoint => "to_ep_shared",
        }
    }
}

/// `__sk_buff.cb[0]`: where an endpoint's stub leaves the endpoint number.
const SKB_CB0: i16 = ctx_off!(SkBuff, cb);

// The stack frame (offsets from r10).
/// `u32` scratch key for array lookups.
const FP_KEY: i16 = -4;
/// The packet's tuple as a conntrack key (`ct4`: 16 bytes, `ct6`: 40).
const FP_CT: i16 = -48;
/// The reversed tuple; also the quoted tuple of an ICMP error.
const FP_CTR: i16 = -88;
/// The policy key (16 bytes).
const FP_POL: i16 = -104;
/// A conntrack value being created (32 bytes).
const FP_CTV: i16 = -136;
/// The fragment key (the conntrack key's shape, the fragment id in the ports); also the
/// reversed quoted tuple of an ICMP error.
const FP_FRAG: i16 = -176;
/// TCP flags (u8), more-fragments flag (u8 at +1), policy port (u16 BE at +2), the
/// endpoint's own identity (u32 at +4).
const FP_MISC: i16 = -184;
/// Address family (u8: 4 or 6) and protocol (u8 at +1).
const FP_FAM: i16 = -188;
/// The event record being sent.
const FP_EV: i16 = -240;
/// The event record's endpoint: in a shared program, the endpoint number from entry on.
const FP_EV_EP: i16 = FP_EV + event::EP as i16;
/// An `ipc_v6` key (20 bytes).
const FP_LPM: i16 = -264;
/// The peer's identity, host order (0 until looked up).
const FP_PEER: i16 = -268;
/// The program's context (`__sk_buff *`), kept for the forwarding helpers.
const FP_CTX: i16 = -280;
/// A `struct bpf_fib_lookup` (64 bytes) or `struct bpf_tunnel_key` (44).
const FP_FIB: i16 = -344;

/// With `services`: where the load balancer's frame ([`LbFrame`], 272 bytes) sits: its top
/// is `FP_EV` (the frame is `[-512, -240)`), so it never touches the tuple, the fragment
/// key, the flags, the family or the event record. It overlays `FP_LPM`, `FP_PEER`,
/// `FP_CTX` and `FP_FIB`: at the forward call (`from-endpoint`, after the transport
/// header) `FP_LPM` and `FP_FIB` are dead (written in full before their next use),
/// `FP_PEER` is zeroed again and `FP_CTX` restored from the frame's own `CTX` slot after
/// the call; at the reply call (`to-endpoint`, at the exit) only the verdict is still
/// needed.
const LB: LbFrame = LbFrame { base: LbFrame::SIZE - 512 };
const _: () = assert!(LB.base >= FP_EV && LB.base - LbFrame::SIZE >= -512);
/// With `services`, `to-endpoint` only: the L3 and L4 header offsets from `skb->data`
/// (two `u32`; L4 = 0: the packet is not one the load balancer can translate), kept from
/// the parse to the exit in `FP_FIB`, which that program does not otherwise use.
const FP_LB_OFFS: i16 = FP_FIB;

/// Name the frame's slots for the listing (the load balancer's overlay last, so the
/// endpoint's own names win where they overlap).
fn declare_frame(b: &mut Builder, options: Options) {
    let key = |k: usize| k as u16;
    b.stack_slot("key", FP_KEY, 4);
    b.stack_slot("tuple", FP_CT, key(ct6_key::SIZE));
    b.stack_slot("tuple_reply", FP_CTR, key(ct6_key::SIZE));
    kit::stack_layout::<PolicyKey>(b, "policy_key", FP_POL);
    kit::stack_layout::<CtValue>(b, "ct_value", FP_CTV);
    b.stack_slot("frag_key", FP_FRAG, key(ct6_key::SIZE));
    b.stack_slot("tcp_flags", FP_MISC, 1);
    b.stack_slot("more_fragments", FP_MISC + 1, 1);
    b.stack_slot("policy_port", FP_MISC + 2, 2);
    b.stack_slot("own_identity", FP_MISC + 4, 4);
    b.stack_slot("family", FP_FAM, 1);
    b.stack_slot("proto", FP_FAM + 1, 1);
    b.stack_slot("l7_ct_flags", L7.stash, 1);
    b.stack_slot("event", FP_EV, key(event::SIZE));
    b.stack_slot("ipc_key", FP_LPM, 20);
    b.stack_slot("peer_identity", FP_PEER, 4);
    b.stack_slot("ctx", FP_CTX, 8);
    b.stack_slot("fib_or_tunnel_key", FP_FIB, key(fib::SIZE));
    if options.services {
        LB.declare(b);
    }
}

/// The slots the L7 redirect uses ([`l7_redirect`]); its conntrack flags byte is the free
/// byte after the protocol (zeroed at entry with the family word).
const L7: l7_redirect::Frame = l7_redirect::Frame {
    ctx: FP_CTX,
    ct: FP_CT,
    ctv: FP_CTV,
    scratch: FP_CTR,
    tcp_flags: FP_MISC,
    stash: FP_FAM + 2,
};

/// Fixed header lengths, as the guards and cursor moves use them.
const V4_HLEN: i32 = ipv4::HEADER_LEN as i32;
const V6_HLEN: i32 = ipv6::HEADER_LEN as i32;
/// The TCP flags byte (the low byte of the data-offset/flags word).
const TCP_FLAGS_BYTE: i16 = tcp::FLAGS.start as i16 + 1;

/// A packet field's offset, as a load or store carries it.
const fn off(field: std::ops::Range<usize>) -> i16 {
    field.start as i16
}

/// `__sk_buff.ifindex`: the device the program runs on.
const SKB_IFINDEX: i16 = ctx_off!(SkBuff, ifindex);
/// `__sk_buff.ingress_ifindex` (`skb->skb_iif`): the device the packet was last received on.
const SKB_INGRESS_IFINDEX: i16 = ctx_off!(SkBuff, ingress_ifindex);

use crate::uapi::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// Where a family's tuple fields sit in its conntrack key (and fragment key).
#[derive(Debug, Clone, Copy)]
struct Fam {
    /// Label prefix.
    p: &'static str,
    family: i32,
    key: i16,
    daddr: i16,
    alen: i16,
    sport: i16,
    dport: i16,
    proto: i16,
    dir: i16,
    ct: &'static str,
    frag: &'static str,
    icmp: i32,
}

const V4: Fam = Fam {
    p: "v4_",
    family: 4,
    key: ct4_key::SIZE as i16,
    daddr: ct4_key::DADDR as i16,
    alen: 4,
    sport: ct4_key::SPORT as i16,
    dport: ct4_key::DPORT as i16,
    proto: ct4_key::PROTO as i16,
    dir: ct4_key::DIR as i16,
    ct: map::CT4,
    frag: map::FRAG4,
    icmp: IPPROTO_ICMP,
};

const V6: Fam = Fam {
    p: "v6_",
    family: 6,
    key: ct6_key::SIZE as i16,
    daddr: ct6_key::DADDR as i16,
    alen: 16,
    sport: ct6_key::SPORT as i16,
    dport: ct6_key::DPORT as i16,
    proto: ct6_key::PROTO as i16,
    dir: ct6_key::DIR as i16,
    ct: map::CT6,
    frag: map::FRAG6,
    icmp: IPPROTO_ICMPV6,
};

impl Fam {
    /// `name` with the family's prefix, for the listing.
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.p)
    }
}

/// The labels of one family's path that more than one emitter jumps to or places.
#[derive(Debug, Clone, Copy)]
struct FamLabels {
    transport: Label,
    later_fragment: Label,
    lb: Label,
    icmp_error: Label,
    conntrack: Label,
    ct_hit: Label,
    new_connection: Label,
    policy_key: Label,
    ct_create: Label,
    allowed: Label,
    lb_hairpin_reply: Label,
    forward: Label,
}

impl FamLabels {
    fn new(b: &mut Builder, f: Fam) -> FamLabels {
        let mut id = |name: &str| b.new_label(&f.name(name));
        FamLabels {
            transport: id("transport"),
            later_fragment: id("later_fragment"),
            lb: id("lb"),
            icmp_error: id("icmp_error"),
            conntrack: id("conntrack"),
            ct_hit: id("ct_hit"),
            new_connection: id("new_connection"),
            policy_key: id("policy_key"),
            ct_create: id("ct_create"),
            allowed: id("allowed"),
            lb_hairpin_reply: id("lb_hairpin_reply"),
            forward: id("forward"),
        }
    }
}

/// The program's labels: ids handed out by the builder, the strings only listing names.
#[derive(Debug, Clone)]
struct Labels {
    /// One verdict site per reason the program can give.
    v: VerdictSites<Reason>,
    ipv4: Label,
    ipv6: Label,
    v4: FamLabels,
    v6: FamLabels,
    /// After counting and the event: the forwarding decision, or the verdict.
    ret: Label,
    return_verdict: Label,
    /// Not forwarded here: `TC_ACT_OK`, the stack takes it.
    return_ok: Label,
}

impl Labels {
    fn new(b: &mut Builder, options: Options) -> Labels {
        let exit = b.new_label("exit");
        let reasons = Reason::ALL.into_iter().filter(|r| *r != Reason::AllowHairpin || options.services);
        let v = VerdictSites::new(b, reasons, exit);
        let [ipv4, ipv6, ret, return_verdict, return_ok] =
            ["ipv4", "ipv6", "return", "return_verdict", "return_ok"].map(|n| b.new_label(n));
        Labels {
            v,
            ipv4,
            ipv6,
            v4: FamLabels::new(b, V4),
            v6: FamLabels::new(b, V6),
            ret,
            return_verdict,
            return_ok,
        }
    }
}

/// Word `w` of an address as a little-endian load of its network-order bytes reads it.
fn addr_word(octets: &[u8], w: usize) -> i32 {
    let at = 4 * w;
    u32::from_le_bytes([octets[at], octets[at + 1], octets[at + 2], octets[at + 3]]) as i32
}

/// Copy `len` bytes (a multiple of 4) between stack slots through r1.
fn copy_stack(b: &mut Builder, from: i16, to: i16, len: i16) {
    let mut off = 0;
    while off < len {
        let size =
            if len - off >= 8 && (from + off) % 8 == 0 && (to + off) % 8 == 0 { Size::DW } else { Size::W };
        b.load(size, Reg::R1, Reg::R10, from + off).store(size, Reg::R10, to + off, Reg::R1);
        off += i16::from(size.bytes());
    }
}

/// Services: r1 = the context, r3 = the L3 (r7) and r4 = the L4 (r8) header offsets from
/// `skb->data` (clobbers r2).
fn emit_lb_offsets(b: &mut Builder) {
    b.comment("services: r3 = L3, r4 = L4 header offsets from skb->data");
    b.load(Size::DW, Reg::R1, Reg::R10, FP_CTX);
    b.load(Size::W, Reg::R2, Reg::R1, SKB_DATA);
    b.mov(Reg::R3, Reg::R7).alu(AluOp::Sub, Reg::R3, Reg::R2);
    b.mov(Reg::R4, Reg::R8).alu(AluOp::Sub, Reg::R4, Reg::R2);
}

/// Code generation switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Track connections (the datapath always does; `false` exists to time the policy
    /// path of a new connection in isolation, as `sluice bench` does).
    pub conntrack: bool,
    /// Service load balancing (the "services" part of step 2 and step 8 of the module header; the maps of
    /// [`crate::codegen::lb::map_defs`]). Off, the programs are exactly those without it.
    pub services: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { conntrack: true, services: false }
    }
}

/// Generate the program of endpoint `ep` for one direction.
pub fn generate(ep: u16, dir: Direction) -> Result<Program, CodegenError> {
    generate_with(ep, dir, Options::default())
}

/// [`generate`] with explicit switches.
pub fn generate_with(ep: u16, dir: Direction, options: Options) -> Result<Program, CodegenError> {
    generate_program(Some(ep), dir, options)
}

/// The one program every endpoint's stub ([`generate_stub`]) tail-calls into for `dir`: the
/// program of [`generate_with`] with the endpoint number read at run time from `cb[0]`
/// instead of baked in. A node verifies it once per direction instead of once per
/// endpoint, so a node's start and an endpoint's addition cost no verifier time per
/// endpoint; per packet it costs the tail call and a few loads of the number from the
/// stack (see BENCHMARKS.md, "Shared endpoint programs").
pub fn generate_shared(dir: Direction, options: Options) -> Result<Program, CodegenError> {
    generate_program(None, dir, options)
}

/// The program attached to endpoint `ep`'s hook for `dir` when the node runs shared
/// programs: `cb[0] = ep`, then a tail call into `ep_tail[dir]`. A missing shared program
/// (never the case once a node is loaded: the loader fills `ep_tail` before any hook is
/// attached) drops the packet: enforcement fails closed.
pub fn generate_stub(ep: u16, dir: Direction) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    b.comment(format!("{:?} stub of endpoint {ep}: cb[0] = the endpoint, then the shared program", dir));
    b.mov(Reg::R2, i32::from(ep)).param(param::ENDPOINT);
    b.store(Size::W, Reg::R1, SKB_CB0, Reg::R2);
    b.ld_map(Reg::R2, map::EP_TAIL);
    b.mov(Reg::R3, dir.tail_index() as i32);
    b.call(sluice_asm::helpers::TAIL_CALL);
    b.comment("no shared program in ep_tail: fail closed");
    b.mov(Reg::R0, TC_ACT_SHOT).exit();
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: "endpoint stub", source })
}

fn generate_program(ep: Option<u16>, dir: Direction, options: Options) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    declare_frame(&mut b, options);
    let l = Labels::new(&mut b, options);
    let l7 = [l7_redirect::Labels::new(&mut b), l7_redirect::Labels::new(&mut b)];
    let g = Gen { ep, dir, options, l, l7 };
    g.emit_entry(&mut b);
    emit_ethernet(
        &mut b,
        EthLabels {
            ipv4: g.l.ipv4,
            ipv6: g.l.ipv6,
            not_ip: g.site(Reason::AllowNotIp),
            truncated_ethernet: g.site(Reason::DenyTruncated),
            truncated_vlan: g.site(Reason::DenyTruncated),
            vlan_too_deep: g.site(Reason::DenyMalformed),
        },
    );
    g.emit_ipv4(&mut b);
    g.emit_ipv6(&mut b);
    for f in [V4, V6] {
        g.emit_transport(&mut b, f);
        if options.services {
            g.emit_lb_step(&mut b, f);
            if dir == Direction::FromEndpoint {
                g.emit_lb_forward(&mut b, f);
                g.emit_lb_hairpin_reply(&mut b, f);
            }
        }
        g.emit_icmp_error(&mut b, f);
        g.emit_later_fragment(&mut b, f);
        g.emit_conntrack(&mut b, f);
        g.emit_ct_hit(&mut b, f);
        g.emit_new_connection(&mut b, f);
        g.emit_ct_create(&mut b, f);
        let at = l7_redirect::Where {
            from_endpoint: dir == Direction::FromEndpoint,
            ipv4: f.family == 4,
            ct_map: f.ct,
        };
        l7_redirect::emit_blocks(&mut b, &L7, at, g.l7_labels(f), g.l.v.exit());
    }
    g.l.v.emit(&mut b);
    g.emit_exit(&mut b);
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: "endpoint", source })
}

/// The template's per-endpoint constants: named parameters of the program
/// ([`sluice_asm::Builder::param`]), bound per endpoint by [`Templates::instantiate`].
/// Every program records them, so a template's instance and a program generated for its
/// endpoint are identical, parameters included.
pub mod param {
    /// The endpoint index (the `ep_config` key, the event's endpoint).
    pub const ENDPOINT: &str = "endpoint_index";
    /// The endpoint index in network byte order (the policy trie key's `ep`).
    pub const ENDPOINT_BE16: &str = "endpoint_index_be16";
    /// The endpoint's first row in `ep_stats` (index × reasons).
    pub const STATS_ROW: &str = "endpoint_stats_row";
    /// The policy table's (endpoint, direction) word.
    pub const POLICY_EPDIR: &str = "policy_epdir";
    /// The policy hash's per-(endpoint, direction) fold constant.
    pub const POLICY_FOLD: &str = "policy_fold";
}

/// The value of template parameter `name` for endpoint `ep` in direction `dir`.
pub fn param_value(name: &str, ep: u16, dir: Direction) -> Option<i64> {
    let pdir = dir.policy_dir();
    Some(match name {
        param::ENDPOINT => i64::from(ep),
        param::ENDPOINT_BE16 => i64::from(ep.swap_bytes()),
        param::STATS_ROW => i64::from(ep) * Reason::COUNT as i64,
        param::POLICY_EPDIR => i64::from(pol_epdir(ep, pdir) as i32),
        param::POLICY_FOLD => i64::from(pol_fold_const(ep, pdir) as i32),
        _ => return None,
    })
}

/// The endpoint index templates are generated with; only the parameter-marked
/// instructions carry it, and only those are rewritten per endpoint.
const TEMPLATE_EP: u16 = 0x7abc;

/// Endpoint programs for many endpoints: each direction generated once, then instantiated
/// per endpoint by binding its parameters (codegen for a thousand endpoints is then a copy
/// and a patch per program).
#[derive(Debug, Clone)]
pub struct Templates {
    from: Program,
    to: Program,
}

impl Templates {
    /// Generate both directions' templates.
    pub fn new(options: Options) -> Result<Templates, CodegenError> {
        Ok(Templates {
            from: generate_with(TEMPLATE_EP, Direction::FromEndpoint, options)?,
            to: generate_with(TEMPLATE_EP, Direction::ToEndpoint, options)?,
        })
    }

    /// The program of endpoint `ep` in direction `dir`: identical to
    /// `generate_with(ep, dir, options)`.
    pub fn instantiate(&self, ep: u16, dir: Direction) -> Program {
        let template = match dir {
            Direction::FromEndpoint => &self.from,
            Direction::ToEndpoint => &self.to,
        };
        let program = template
            .bind_params(|name| param_value(name, ep, dir))
            .expect("the templates mark only the parameters param_value knows, each fitting its immediate");
        crate::mutate::program_seam(program)
    }
}

struct Gen {
    /// The endpoint number baked in, or `None` for the shared program, which reads it at
    /// entry from `skb->cb[0]` (written by the endpoint's stub, [`generate_stub`]) and keeps
    /// it in the event record's `ep` field, which nothing else writes before the event.
    ep: Option<u16>,
    dir: Direction,
    options: Options,
    l: Labels,
    /// The L7 redirect's blocks, IPv4 and IPv6.
    l7: [l7_redirect::Labels; 2],
}

impl Gen {
    fn l7_labels(&self, f: Fam) -> &l7_redirect::Labels {
        &self.l7[usize::from(f.family == 6)]
    }

    /// The verdict site of `r`.
    fn site(&self, r: Reason) -> Label {
        self.l.v.of(r)
    }

    /// The labels of family `f`'s path.
    fn fl(&self, f: Fam) -> FamLabels {
        if f.family == 4 {
            self.l.v4
        } else {
            self.l.v6
        }
    }

    fn opposite_dir(&self) -> u8 {
        match self.dir {
            Direction::FromEndpoint => INGRESS,
            Direction::ToEndpoint => EGRESS,
        }
    }

    fn enforced_bit(&self) -> i32 {
        match self.dir {
            Direction::FromEndpoint => ep_config::EGRESS_ENFORCED as i32,
            Direction::ToEndpoint => ep_config::INGRESS_ENFORCED as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_asm::Insn;

    #[test]
    fn templates_instantiate_to_the_generated_program() {
        let t = Templates::new(Options::default()).expect("generates");
        for ep in [0u16, 1, 2, 300, 4095, 65535] {
            for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
                assert_eq!(t.instantiate(ep, dir), generate(ep, dir).expect("generates"), "ep {ep} {dir:?}");
            }
        }
    }

    /// Regression: templates were once specialised by rewriting every immediate equal to
    /// a sentinel derived from `TEMPLATE_EP`. Plant each of those old sentinel values as an
    /// ordinary constant (not a parameter) in the template: instantiation must keep it.
    #[test]
    fn an_ordinary_constant_equal_to_the_old_sentinel_survives_instantiation() {
        let pdir = Direction::FromEndpoint.policy_dir();
        let sentinels = [
            i32::from(TEMPLATE_EP),
            i32::from(TEMPLATE_EP.swap_bytes()),
            i32::from(TEMPLATE_EP) * Reason::COUNT as i32,
            pol_epdir(TEMPLATE_EP, pdir) as i32,
            pol_fold_const(TEMPLATE_EP, pdir) as i32,
        ];
        let t = Templates::new(Options::default()).expect("generates");
        for planted in sentinels {
            // The first `r7 = <imm>` that is not a parameter becomes `r7 = planted`.
            let mut at = None;
            let from = t.from.map_insns(|insn| match insn {
                Insn::Alu { wide, op: AluOp::Mov, dst: Reg::R7, src: sluice_asm::Src::Imm(_) }
                    if at.is_none() =>
                {
                    at = Some(());
                    Insn::Alu {
                        wide: *wide,
                        op: AluOp::Mov,
                        dst: Reg::R7,
                        src: sluice_asm::Src::Imm(planted),
                    }
                }
                other => other.clone(),
            });
            assert!(at.is_some(), "the template has an `r7 = imm` to plant into");
            let index = from.insns().iter().zip(t.from.insns()).position(|(a, b)| a != b).expect("planted");
            assert!(!from.params().contains_key(&index), "planted at an ordinary instruction");
            let planted_t = Templates { from, to: t.to.clone() };
            for ep in [1u16, 7, 300] {
                let p = planted_t.instantiate(ep, Direction::FromEndpoint);
                assert_eq!(
                    p.insns()[index],
                    planted_t.from.insns()[index],
                    "ep {ep}: the constant {planted:#x} at instruction {index} was rewritten"
                );
            }
        }
    }

    #[test]
    fn both_directions_generate() {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            let p = generate(3, dir).expect("generates");
            assert!(p.len() > 100);
        }
    }
}
