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

    fn emit_entry(&self, b: &mut Builder) {
        b.comment(format!("{:?} program of one endpoint: r8 = data, r9 = data_end", self.dir));
        // Kept in both directions: `to-endpoint` reads the identity mark from it
        // ([`super::overlay`]).
        b.store(Size::DW, Reg::R10, FP_CTX, Reg::R1);
        if self.dir == Direction::ToEndpoint && self.options.services {
            b.comment("services: no L4 header offsets yet (nothing to reverse-translate)");
            b.store(Size::DW, Reg::R10, FP_LB_OFFS, 0);
        }
        if self.ep.is_none() {
            b.comment("shared program: the endpoint number its stub left in cb[0], kept in the event's ep");
            b.load(Size::W, Reg::R2, Reg::R1, SKB_CB0);
            b.store(Size::H, Reg::R10, FP_EV_EP, Reg::R2);
        }
        emit_skb_packet_pointers(b, Reg::R1);
        b.comment("zero what the exit block may read on any path");
        for off in [FP_CT, FP_CT + 8, FP_CT + 16, FP_CT + 24, FP_CT + 32, FP_POL, FP_POL + 8, FP_MISC] {
            b.store(Size::DW, Reg::R10, off, 0);
        }
        b.store(Size::W, Reg::R10, FP_FAM, 0);
        b.store(Size::W, Reg::R10, FP_PEER, 0);
        if self.dir == Direction::ToEndpoint && self.options.services {
            b.comment("services: what the endpoint sent itself (received on this device, leaving it: a");
            b.comment("hairpinned connection, translated already) passes: no policy, no reverse NAT");
            b.load(Size::W, Reg::R2, Reg::R1, SKB_INGRESS_IFINDEX);
            b.load(Size::W, Reg::R3, Reg::R1, SKB_IFINDEX);
            b.jmp(JmpCond::Eq, Reg::R2, Reg::R3, self.site(Reason::AllowHairpin));
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

    /// `r0 = &ep_config[ep]` or 0; clobbers r1-r5.
    fn emit_ep_config(&self, b: &mut Builder) {
        match self.ep {
            Some(ep) => {
                b.store(Size::W, Reg::R10, FP_KEY, i32::from(ep)).param(param::ENDPOINT);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).store(Size::W, Reg::R10, FP_KEY, Reg::R1);
            }
        }
        kit::map_lookup(b, map::EP_CONFIG, FP_KEY);
    }

    /// Family and protocol (in r1) into `FP_FAM`, the protocol and direction into the key.
    fn emit_family(&self, b: &mut Builder, f: Fam) {
        b.store(Size::B, Reg::R10, FP_FAM, f.family);
        b.store(Size::B, Reg::R10, FP_FAM + 1, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CT + f.proto, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CT + f.dir, i32::from(self.dir.policy_dir()));
    }

    fn emit_ipv4(&self, b: &mut Builder) {
        let checks = Ipv4Checks {
            truncated: self.site(Reason::DenyTruncated),
            malformed: self.site(Reason::DenyMalformed),
            whole_header: true,
        };
        b.place(self.l.ipv4).comment("ipv4: header with options; r8 = transport header");
        kit::ipv4_header(b, Reg::R8, checks);
        b.comment("the tuple: addresses, protocol, direction (ports below)");
        b.load(Size::W, Reg::R1, Reg::R7, off(ipv4::SRC_ADDR)).store(Size::W, Reg::R10, FP_CT, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R7, off(ipv4::DST_ADDR)).store(
            Size::W,
            Reg::R10,
            FP_CT + V4.daddr,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R7, ipv4::PROTOCOL as i16);
        self.emit_family(b, V4);
        if self.dir == Direction::FromEndpoint {
            b.comment("anti-spoofing: the source must be the endpoint's own address");
            self.emit_ep_config(b);
            b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenySpoofed));
            b.load(Size::W, Reg::R1, Reg::R0, ep_config::IPV4 as i16);
            b.load(Size::W, Reg::R2, Reg::R10, FP_CT);
            b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, self.site(Reason::DenySpoofed));
        }
        b.comment("fragments: the key is the tuple with the id for ports");
        copy_stack(b, FP_CT, FP_FRAG, V4.key);
        b.load(Size::H, Reg::R1, Reg::R7, off(ipv4::IDENT)).store(
            Size::W,
            Reg::R10,
            FP_FRAG + V4.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R7, off(ipv4::FLG_OFF));
        b.be(16, Reg::R1);
        b.mov(Reg::R3, Reg::R1).alu(AluOp::Rsh, Reg::R3, 13).alu(AluOp::And, Reg::R3, 1);
        b.store(Size::B, Reg::R10, FP_MISC + 1, Reg::R3);
        b.alu(AluOp::And, Reg::R1, 0x1fff);
        b.jmp(JmpCond::Ne, Reg::R1, 0, self.l.v4.later_fragment);
        b.ja(self.l.v4.transport);
    }

    fn emit_ipv6(&self, b: &mut Builder) {
        let trunc = self.site(Reason::DenyTruncated);
        let malformed = self.site(Reason::DenyMalformed);
        let [not_nd, later, ext_done] = ["v6_not_nd", "v6_later", "v6_ext_done"].map(|n| b.new_label(n));
        b.place(self.l.ipv6).comment("ipv6: fixed header; r8 = the next header, r4 = its type");
        kit::ipv6_header(b, trunc, malformed);
        b.comment("source and destination: the tuple's first 32 bytes, as the header has them");
        for i in 0..4i16 {
            let at = off(ipv6::SRC_ADDR) + 8 * i;
            b.load(Size::DW, Reg::R1, Reg::R7, at).store(Size::DW, Reg::R10, FP_CT + 8 * i, Reg::R1);
        }
        b.load(Size::B, Reg::R4, Reg::R7, ipv6::NXT_HDR as i16);
        b.mov(Reg::R8, Reg::R7).add(Reg::R8, V6_HLEN);
        b.comment("link-local control passes: multicast listener queries and reports (130-132, 143)");
        b.comment("and neighbor discovery (133-137), sent from link-local or unspecified sources");
        b.jmp(JmpCond::Ne, Reg::R4, IPPROTO_ICMPV6, not_nd);
        guard(b, Reg::R8, 1, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, 0);
        b.jmp(JmpCond::Eq, Reg::R1, 143, self.site(Reason::AllowNotIp));
        b.jmp(JmpCond::Lt, Reg::R1, 130, not_nd);
        b.jmp(JmpCond::Le, Reg::R1, 137, self.site(Reason::AllowNotIp));
        b.place(not_nd);
        if self.dir == Direction::FromEndpoint {
            b.comment("anti-spoofing: the source must be the endpoint's own address");
            self.emit_ep_config(b);
            b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenySpoofed));
            for half in [0i16, 8] {
                b.load(Size::DW, Reg::R1, Reg::R0, ep_config::IPV6 as i16 + half);
                b.load(Size::DW, Reg::R2, Reg::R10, FP_CT + half);
                b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, self.site(Reason::DenySpoofed));
            }
            b.load(Size::B, Reg::R4, Reg::R7, ipv6::NXT_HDR as i16);
        }
        b.store(Size::B, Reg::R10, FP_MISC + 1, 0);
        let rounds = [0, 1, 2].map(|round| b.new_label(&format!("v6_ext_{round}")));
        for round in 0..3 {
            b.place(rounds[round]);
            if round == 2 {
                for t in [0, 43, 44, 60] {
                    b.jmp(JmpCond::Eq, Reg::R4, t, malformed);
                }
                b.ja(ext_done);
                break;
            }
            let next = rounds[round + 1];
            let (frag, opt) =
                (b.new_label(&format!("v6_frag_{round}")), b.new_label(&format!("v6_opt_{round}")));
            b.jmp(JmpCond::Eq, Reg::R4, 44, frag);
            b.jmp(JmpCond::Eq, Reg::R4, 0, opt);
            b.jmp(JmpCond::Eq, Reg::R4, 43, opt);
            b.jmp(JmpCond::Ne, Reg::R4, 60, ext_done);
            b.place(opt).comment("an options or routing header: (len + 1) * 8 bytes");
            guard(b, Reg::R8, 8, trunc);
            b.load(Size::B, Reg::R4, Reg::R8, 0);
            b.load(Size::B, Reg::R2, Reg::R8, 1);
            b.add(Reg::R2, 1).alu(AluOp::Lsh, Reg::R2, 3);
            b.add(Reg::R8, Reg::R2);
            b.ja(next);
            b.place(frag).comment("the fragment header");
            guard(b, Reg::R8, 8, trunc);
            b.load(Size::B, Reg::R4, Reg::R8, ipv6_frag::NXT_HDR as i16);
            b.load(Size::W, Reg::R1, Reg::R8, off(ipv6_frag::IDENT)).store(
                Size::W,
                Reg::R10,
                FP_MISC + 4,
                Reg::R1,
            );
            b.load(Size::H, Reg::R1, Reg::R8, off(ipv6_frag::FLG_OFF));
            b.be(16, Reg::R1);
            b.mov(Reg::R3, Reg::R1).alu(AluOp::And, Reg::R3, 1);
            b.store(Size::B, Reg::R10, FP_MISC + 1, Reg::R3);
            b.add(Reg::R8, ipv6_frag::HEADER_LEN as i32);
            b.alu(AluOp::Rsh, Reg::R1, 3);
            b.jmp(JmpCond::Ne, Reg::R1, 0, later);
            b.ja(next);
        }
        b.place(later).comment("a later fragment: the transport header is elsewhere");
        b.mov(Reg::R1, Reg::R4);
        self.emit_family(b, V6);
        self.emit_v6_frag_key(b);
        b.ja(self.l.v6.later_fragment);
        b.place(ext_done).comment("r4 = the transport protocol");
        b.mov(Reg::R1, Reg::R4);
        self.emit_family(b, V6);
        self.emit_v6_frag_key(b);
        b.ja(self.l.v6.transport);
    }

    /// The `frag6` key: the tuple with the fragment id (kept in `FP_MISC + 4`) for ports.
    fn emit_v6_frag_key(&self, b: &mut Builder) {
        copy_stack(b, FP_CT, FP_FRAG, V6.key);
        b.load(Size::W, Reg::R1, Reg::R10, FP_MISC + 4).store(Size::W, Reg::R10, FP_FRAG + V6.sport, Reg::R1);
        b.store(Size::W, Reg::R10, FP_MISC + 4, 0);
    }

    /// Ports (r8 = the transport header), or ICMP type and echo id.
    fn emit_transport(&self, b: &mut Builder, f: Fam) {
        let trunc = self.site(Reason::DenyTruncated);
        let fl = self.fl(f);
        let [tcp_hdr, ports, read_ports, icmp_hdr] =
            ["tcp", "ports", "read_ports", "icmp"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.transport);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_TCP, tcp_hdr);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_UDP, ports);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_SCTP, ports);
        b.jmp(JmpCond::Eq, Reg::R1, f.icmp, icmp_hdr);
        b.ja(fl.conntrack);
        b.place(tcp_hdr).comment("tcp: ports and flags");
        guard(b, Reg::R8, tcp::FLAGS.end as i32, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, TCP_FLAGS_BYTE).store(Size::B, Reg::R10, FP_MISC, Reg::R1);
        b.ja(read_ports);
        b.place(ports).comment("udp, sctp: ports");
        b.comment("(TCP, UDP and SCTP all start with the two ports)");
        guard(b, Reg::R8, udp::DST_PORT.end as i32, trunc);
        b.place(read_ports);
        b.load(Size::H, Reg::R1, Reg::R8, off(udp::SRC_PORT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R8, off(udp::DST_PORT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.dport,
            Reg::R1,
        );
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R1);
        b.ja(if self.options.services { fl.lb } else { fl.conntrack });
        b.place(icmp_hdr).comment("icmp: the type is the policy port; echo id is the source port");
        guard(b, Reg::R8, icmp::HEADER_LEN as i32, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, icmp::TYPE as i16);
        b.mov(Reg::R2, Reg::R1).alu(AluOp::Lsh, Reg::R2, 8);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R2);
        let errors: &[i32] = if f.family == 4 { &[3, 11, 12] } else { &[1, 2, 3, 4] };
        for &t in errors {
            b.jmp(JmpCond::Eq, Reg::R1, t, fl.icmp_error);
        }
        b.comment("queries (echo; v4 timestamp, information, address mask): the tuple's ports are");
        b.comment("(id, request type) for a request and (request type, id) for its reply, so a");
        b.comment("reply's reversed tuple is its request's and no two kinds of message match;");
        b.comment("any other type is (0, type): it is never another message's reply");
        let queries: &[(i32, i32)] =
            if f.family == 4 { &[(8, 0), (13, 14), (15, 16), (17, 18)] } else { &[(128, 129)] };
        let (request, reply) = (b.new_label(&f.name("icmp_request")), b.new_label(&f.name("icmp_reply")));
        for &(req, _) in queries {
            b.jmp(JmpCond::Eq, Reg::R1, req, request);
        }
        for &(req, rep) in queries {
            let next = b.new_label(&f.name("icmp_not_reply"));
            b.jmp(JmpCond::Ne, Reg::R1, rep, next);
            b.mov(Reg::R1, req).ja(reply);
            b.place(next);
        }
        b.comment("(the type in network order, as the key's ports are)");
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.ja(fl.conntrack);
        b.place(request);
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, off(icmp::ECHO_IDENT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.sport,
            Reg::R1,
        );
        b.ja(fl.conntrack);
        b.place(reply);
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.sport, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, off(icmp::ECHO_IDENT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.dport,
            Reg::R1,
        );
        b.ja(fl.conntrack);
    }

    /// An ICMP error passes if the packet it quotes belongs to a tracked connection.
    fn emit_icmp_error(&self, b: &mut Builder, f: Fam) {
        // The quoted header follows the 8-byte ICMP header; no options or extension headers.
        let (hlen, src, dst, proto) = if f.family == 4 {
            (V4_HLEN as i16, off(ipv4::SRC_ADDR), off(ipv4::DST_ADDR), ipv4::PROTOCOL as i16)
        } else {
            (V6_HLEN as i16, off(ipv6::SRC_ADDR), off(ipv6::DST_ADDR), ipv6::NXT_HDR as i16)
        };
        // Offsets into the packet from r8 (the ICMP header): the quoted IP header follows it.
        let quoted = icmp::HEADER_LEN as i16;
        let fl = self.fl(f);
        b.place(fl.icmp_error).comment("icmp error: does it quote a tracked connection?");
        guard(b, Reg::R8, i32::from(quoted + hlen + 4), self.site(Reason::DenyTruncated));
        if f.family == 4 {
            b.load(Size::B, Reg::R1, Reg::R8, quoted + ipv4::VER_IHL as i16);
            b.jmp(JmpCond::Ne, Reg::R1, 0x45, fl.conntrack);
        }
        b.comment("the quoted tuple, as sent (FP_CTR), and reversed (FP_FRAG)");
        for off in (0..f.key).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_CTR + off, 0);
            b.store(Size::DW, Reg::R10, FP_FRAG + off, 0);
        }
        for w in (0..f.alen).step_by(4) {
            b.load(Size::W, Reg::R1, Reg::R8, quoted + src + w);
            b.store(Size::W, Reg::R10, FP_CTR + w, Reg::R1).store(
                Size::W,
                Reg::R10,
                FP_FRAG + f.daddr + w,
                Reg::R1,
            );
            b.load(Size::W, Reg::R1, Reg::R8, quoted + dst + w);
            b.store(Size::W, Reg::R10, FP_CTR + f.daddr + w, Reg::R1).store(
                Size::W,
                Reg::R10,
                FP_FRAG + w,
                Reg::R1,
            );
        }
        b.load(Size::H, Reg::R1, Reg::R8, quoted + hlen + off(udp::SRC_PORT));
        b.store(Size::H, Reg::R10, FP_CTR + f.sport, Reg::R1).store(
            Size::H,
            Reg::R10,
            FP_FRAG + f.dport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R8, quoted + hlen + off(udp::DST_PORT));
        b.store(Size::H, Reg::R10, FP_CTR + f.dport, Reg::R1).store(
            Size::H,
            Reg::R10,
            FP_FRAG + f.sport,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R8, quoted + proto);
        b.store(Size::B, Reg::R10, FP_CTR + f.proto, Reg::R1).store(
            Size::B,
            Reg::R10,
            FP_FRAG + f.proto,
            Reg::R1,
        );
        b.comment("sent by the endpoint: its own connection (opposite direction) or a reply in ours");
        b.store(Size::B, Reg::R10, FP_CTR + f.dir, i32::from(self.opposite_dir()));
        b.store(Size::B, Reg::R10, FP_FRAG + f.dir, i32::from(self.dir.policy_dir()));
        b.comment("related only to a live entry: an expired connection relates nothing");
        for key in [FP_CTR, FP_FRAG] {
            let next = b.new_label(&f.name("icmp_quoted_miss"));
            kit::map_lookup(b, f.ct, key);
            b.jmp(JmpCond::Eq, Reg::R0, 0, next);
            b.mov(Reg::R6, Reg::R0);
            b.call(KTIME_GET_COARSE_NS);
            b.load(Size::DW, Reg::R1, Reg::R6, ct_value::EXPIRES as i16);
            b.jmp(JmpCond::Le, Reg::R0, Reg::R1, self.site(Reason::AllowRelated));
            b.place(next);
        }
        b.ja(fl.conntrack);
    }

    fn emit_later_fragment(&self, b: &mut Builder, f: Fam) {
        b.place(self.fl(f).later_fragment)
            .comment("a later fragment: the first fragment's verdict, while it lasts");
        kit::map_lookup(b, f.frag, FP_FRAG);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenyFragment));
        b.mov(Reg::R6, Reg::R0);
        b.call(KTIME_GET_COARSE_NS);
        b.alu(AluOp::Rsh, Reg::R0, FRAG_CLOCK_SHIFT);
        b.load(Size::W, Reg::R1, Reg::R6, frag_value::EXPIRES as i16);
        b.jmp(JmpCond::Gt, Reg::R0, Reg::R1, self.site(Reason::DenyFragment));
        b.load(Size::B, Reg::R1, Reg::R6, frag_value::VERDICT as i16);
        b.jmp(JmpCond::Eq, Reg::R1, 1, self.site(Reason::AllowFragment));
        b.ja(self.site(Reason::DenyFragment));
    }

    fn emit_conntrack(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        b.place(fl.conntrack).comment("conntrack: the tuple as sent");
        if !self.options.conntrack {
            b.ja(fl.new_connection);
        }
        kit::map_lookup(b, f.ct, FP_CT);
        b.mov(Reg::R8, 0);
        b.jmp(JmpCond::Ne, Reg::R0, 0, fl.ct_hit);
        b.comment("a bare TCP SYN opens a connection: it is never a reply");
        b.load(Size::B, Reg::R1, Reg::R10, FP_MISC).alu(AluOp::And, Reg::R1, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Eq, Reg::R1, TCP_SYN, fl.new_connection);
        b.comment("... and reversed, in the opposite direction: a reply");
        copy_stack(b, FP_CT + f.daddr, FP_CTR, f.alen);
        copy_stack(b, FP_CT, FP_CTR + f.daddr, f.alen);
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + f.dport).store(
            Size::H,
            Reg::R10,
            FP_CTR + f.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + f.sport).store(
            Size::H,
            Reg::R10,
            FP_CTR + f.dport,
            Reg::R1,
        );
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.proto).store(
            Size::W,
            Reg::R10,
            FP_CTR + f.proto,
            Reg::R1,
        );
        b.store(Size::B, Reg::R10, FP_CTR + f.dir, i32::from(self.opposite_dir()));
        kit::map_lookup(b, f.ct, FP_CTR);
        b.mov(Reg::R8, 1);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fl.new_connection);
    }

    /// A live entry (r0; r8 = 1 for a reply) advances; a dead one is a miss.
    fn emit_ct_hit(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let [ct_dead, ct_state, ct_open, ct_closing, ct_closing_keep, ct_keep_state, ct_established] = [
            "ct_dead",
            "ct_state",
            "ct_open",
            "ct_closing",
            "ct_closing_keep",
            "ct_keep_state",
            "ct_established",
        ]
        .map(|n| b.new_label(&f.name(n)));
        let [ct_open_icmp, ct_store, ct_state_kept] =
            ["ct_open_icmp", "ct_store", "ct_state_kept"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.ct_hit).comment("r6 = the entry, r8 = 1 for a reply; a dead entry is a miss");
        b.mov(Reg::R6, Reg::R0);
        b.call(KTIME_GET_COARSE_NS);
        b.mov(Reg::R9, Reg::R0);
        b.load(Size::DW, Reg::R1, Reg::R6, ct_value::EXPIRES as i16);
        b.jmp(JmpCond::Gt, Reg::R9, Reg::R1, ct_dead);
        b.comment("the reply flag and the state are written only when they change (a write makes");
        b.comment("every other CPU's copy of the entry's cache line stale): the reply flag once");
        b.jmp(JmpCond::Eq, Reg::R8, 0, ct_state);
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::FLAGS as i16);
        b.jmp(JmpCond::Set, Reg::R1, i32::from(ct_value::SEEN_REPLY), ct_state);
        b.alu(AluOp::Or, Reg::R1, i32::from(ct_value::SEEN_REPLY));
        b.store(Size::B, Reg::R6, ct_value::FLAGS as i16, Reg::R1);
        b.place(ct_state).comment("advance the state; r1 = new state (r5 = old), r2 = its lifetime");
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::STATE as i16);
        b.mov(Reg::R5, Reg::R1);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Open as i32, ct_open);
        b.jmp(JmpCond::Set, Reg::R3, TCP_FIN | TCP_RST, ct_closing);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Closing as i32, ct_closing_keep);
        b.mov(Reg::R2, Reg::R3).alu(AluOp::And, Reg::R2, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R2, TCP_SYN | TCP_ACK, ct_keep_state);
        b.jmp(JmpCond::Eq, Reg::R8, 0, ct_keep_state);
        b.mov(Reg::R1, CtState::Established as i32);
        b.place(ct_keep_state);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Established as i32, ct_established);
        b.ld_imm64(Reg::R2, timeout::TCP_SYN).ja(ct_store);
        b.place(ct_established);
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED).ja(ct_store);
        b.place(ct_closing);
        b.mov(Reg::R1, CtState::Closing as i32);
        b.place(ct_closing_keep);
        b.ld_imm64(Reg::R2, timeout::TCP_CLOSING).ja(ct_store);
        b.place(ct_open);
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.load(Size::B, Reg::R4, Reg::R10, FP_FAM + 1);
        b.jmp(JmpCond::Eq, Reg::R4, IPPROTO_ICMP, ct_open_icmp);
        b.jmp(JmpCond::Ne, Reg::R4, IPPROTO_ICMPV6, ct_store);
        b.place(ct_open_icmp);
        b.ld_imm64(Reg::R2, timeout::ICMP);
        b.place(ct_store).comment("the state, if it changed");
        b.jmp(JmpCond::Eq, Reg::R1, Reg::R5, ct_state_kept);
        b.store(Size::B, Reg::R6, ct_value::STATE as i16, Reg::R1);
        b.place(ct_state_kept).comment("the expiry: the lifetime from now");
        b.add(Reg::R2, Reg::R9);
        b.store(Size::DW, Reg::R6, ct_value::EXPIRES as i16, Reg::R2);
        b.comment("count the packet: a plain add (the locked add cost 4 ns a packet, BENCHMARKS.md);");
        b.comment("two CPUs adding at the same instant may lose one; nothing reads it as exact");
        b.load(Size::DW, Reg::R1, Reg::R6, ct_value::PACKETS as i16);
        b.add(Reg::R1, 1).store(Size::DW, Reg::R6, ct_value::PACKETS as i16, Reg::R1);
        if self.dir == Direction::FromEndpoint {
            l7_redirect::emit_established_check(b, Reg::R6, self.l7_labels(f));
        }
        b.mov(Reg::R7, Reason::AllowEstablished as i32).ja(fl.allowed);
        b.place(ct_dead).comment("a dead entry: judge the packet as new");
        b.ja(fl.new_connection);
    }

    fn emit_new_connection(&self, b: &mut Builder, f: Fam) {
        let dir = self.dir.policy_dir();
        let fl = self.fl(f);
        b.place(fl.new_connection).comment("a new connection: is policy enforced here?");
        if self.dir == Direction::ToEndpoint {
            l7_redirect::emit_note_upstream(b, &L7);
        }
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenyDefault));
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
        b.store(Size::W, Reg::R10, FP_MISC + 4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R1, self.enforced_bit());
        b.mov(Reg::R7, Reason::AllowUnenforced as i32);
        b.jmp(JmpCond::Eq, Reg::R1, 0, fl.ct_create);

        let peer = match self.dir {
            Direction::FromEndpoint => FP_CT + f.daddr,
            Direction::ToEndpoint => FP_CT,
        };
        let identity = b.new_label(&f.name("identity"));
        if self.dir == Direction::ToEndpoint {
            b.comment(
                "identity on the wire: a mark from-overlay left (cluster mode) comes before the ipcache",
            );
            b.load(Size::DW, Reg::R1, Reg::R10, FP_CTX);
            b.load(Size::W, Reg::R1, Reg::R1, overlay::SKB_MARK);
            b.mov32(Reg::R2, Reg::R1).alu32(AluOp::And, Reg::R2, overlay::MARK_MAGIC_MASK as i32);
            let ipcache = b.new_label(&f.name("ipcache"));
            b.jmp(JmpCond::Ne, Reg::R2, overlay::MARK_MAGIC_IDENTITY as i32, ipcache);
            b.mov32(Reg::R0, Reg::R1).alu32(AluOp::Rsh, Reg::R0, 16);
            b.ja(identity);
            b.place(ipcache);
        }
        if f.family == 4 {
            b.comment("the peer's identity: ipcache level 1 (direct), 2 and 3");
            b.load(Size::W, Reg::R6, Reg::R10, peer);
            b.be(32, Reg::R6);
            b.mov32(Reg::R2, Reg::R6).alu32(AluOp::Rsh, Reg::R2, 16).alu(AluOp::Lsh, Reg::R2, 2);
            b.ld_map_value(Reg::R1, map::IPC_V4_L1, 0);
            b.add(Reg::R1, Reg::R2);
            b.load(Size::W, Reg::R0, Reg::R1, 0);
            for (level, shift) in [(map::IPC_V4_L2, 8), (map::IPC_V4_L3, 0)] {
                let lookup = b.new_label(&format!("{level}_lookup"));
                b.jmp(JmpCond::Set, Reg::R0, IPC_CHILD as i32, lookup);
                b.ja(identity);
                b.place(lookup);
                b.alu32(AluOp::And, Reg::R0, !IPC_CHILD as i32);
                b.store(Size::W, Reg::R10, FP_KEY, Reg::R0);
                kit::map_lookup(b, level, FP_KEY);
                b.jmp(JmpCond::Eq, Reg::R0, 0, identity);
                b.mov32(Reg::R2, Reg::R6);
                if shift != 0 {
                    b.alu32(AluOp::Rsh, Reg::R2, shift);
                }
                b.alu32(AluOp::And, Reg::R2, 0xff).alu(AluOp::Lsh, Reg::R2, 2);
                b.add(Reg::R0, Reg::R2);
                b.load(Size::W, Reg::R0, Reg::R0, 0);
            }
        } else {
            b.comment("the peer's identity: the ipc_v6 trie");
            b.store(Size::W, Reg::R10, FP_LPM, 128);
            copy_stack(b, peer, FP_LPM + 4, 16);
            kit::map_lookup(b, map::IPC_V6, FP_LPM);
            b.jmp(JmpCond::Eq, Reg::R0, 0, identity);
            b.load(Size::W, Reg::R0, Reg::R0, 0);
        }
        b.place(identity).comment("r0 = identity (0: world)");
        b.jmp(JmpCond::Ne, Reg::R0, 0, fl.policy_key);
        b.mov(Reg::R0, WORLD as i32);
        self.emit_policy(b, f, dir);
    }

    /// The policy decision for a new connection; r0 = the peer's identity (host order).
    ///
    /// First the inlined cuckoo table `pol_table`: the slot of (endpoint, direction, peer
    /// identity), or failing that of identity 0, holds the rules most specific first; the
    /// first that matches decides (see [`crate::maps::policy::pol_slot`]). A slot with too
    /// many rules says so and the `policy` trie decides instead.
    fn emit_policy(&self, b: &mut Builder, f: Fam, dir: u8) {
        let fl = self.fl(f);
        let [pol_found, policy_trie, policy_found] =
            ["pol_found", "policy_trie", "policy_found"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.policy_key).comment("policy: r6 = the peer's identity; r8 = base bucket, r9 = shift");
        b.store(Size::W, Reg::R10, FP_PEER, Reg::R0);
        b.mov(Reg::R6, Reg::R0);
        b.ld_map_value(Reg::R1, map::POL_META, 0);
        b.load(Size::W, Reg::R9, Reg::R1, 0);
        b.mov32(Reg::R8, Reg::R9).alu32(AluOp::Rsh, Reg::R8, 8);
        b.alu32(AluOp::And, Reg::R9, 0xff);
        for pass in 0..2 {
            if pass == 1 {
                b.comment("no slot of its own: the any-identity rules");
                b.mov(Reg::R6, 0);
            }
            match self.ep {
                Some(ep) => {
                    let fold = pol_fold_const(ep, dir) as i32;
                    b.mov32(Reg::R7, Reg::R6).alu32(AluOp::Xor, Reg::R7, fold).param(param::POLICY_FOLD);
                }
                None => {
                    // pol_fold_const(ep, dir) = (ep << 17) ^ pol_fold_const(0, dir)
                    b.load(Size::H, Reg::R7, Reg::R10, FP_EV_EP).alu32(AluOp::Lsh, Reg::R7, 17);
                    b.alu32(AluOp::Xor, Reg::R7, pol_fold_const(0, dir) as i32);
                    b.alu32(AluOp::Xor, Reg::R7, Reg::R6);
                }
            }
            for (h, mul) in V6_HASH_MUL.into_iter().enumerate() {
                let next_bucket = b.new_label(&f.name(&format!("pol_bucket_{pass}_{h}")));
                b.mov32(Reg::R1, Reg::R7).alu32(AluOp::Mul, Reg::R1, mul as i32);
                b.alu32(AluOp::Rsh, Reg::R1, Reg::R9).alu32(AluOp::Add, Reg::R1, Reg::R8);
                b.store(Size::W, Reg::R10, FP_KEY, Reg::R1);
                kit::map_lookup(b, map::POL_TABLE, FP_KEY);
                b.jmp(JmpCond::Eq, Reg::R0, 0, next_bucket);
                if self.ep.is_none() {
                    // pol_epdir(ep, dir) = ep | pol_epdir(0, dir), once per bucket: the slot
                    // loop leaves r2 alone.
                    b.load(Size::H, Reg::R2, Reg::R10, FP_EV_EP);
                    b.alu32(AluOp::Or, Reg::R2, pol_epdir(0, dir) as i32);
                }
                for s in 0..POL_SLOTS {
                    let at = (s * pol_slot::SIZE) as i16;
                    let next = b.new_label(&f.name(&format!("pol_slot_{pass}_{h}_{s}")));
                    b.load(Size::W, Reg::R1, Reg::R0, at + pol_slot::IDENTITY as i16);
                    b.jmp(JmpCond::Ne, Reg::R1, Reg::R6, next);
                    b.load(Size::W, Reg::R1, Reg::R0, at + pol_slot::EPDIR as i16);
                    match self.ep {
                        Some(ep) => {
                            let epdir = pol_epdir(ep, dir) as i32;
                            b.jmp32(JmpCond::Ne, Reg::R1, epdir, next).param(param::POLICY_EPDIR);
                        }
                        None => {
                            b.jmp32(JmpCond::Ne, Reg::R1, Reg::R2, next);
                        }
                    }
                    if at != 0 {
                        b.add(Reg::R0, i32::from(at));
                    }
                    b.ja(pol_found);
                    b.place(next);
                }
                b.place(next_bucket);
            }
        }
        b.ja(self.site(Reason::DenyDefault));

        b.place(pol_found).comment("r0 = the slot; r1 = rules inline, r3 = protocol, r4 = port");
        b.load(Size::W, Reg::R1, Reg::R0, pol_slot::STATE as i16);
        b.jmp(JmpCond::Set, Reg::R1, POL_OVERFLOW as i32, policy_trie);
        b.load(Size::B, Reg::R3, Reg::R10, FP_FAM + 1);
        b.load(Size::H, Reg::R4, Reg::R10, FP_MISC + 2);
        b.be(16, Reg::R4);
        for i in 0..POL_LIST {
            let at = (pol_slot::ENTRIES + i * pol_slot::ENTRY_SIZE) as i16;
            let next = b.new_label(&f.name(&format!("pol_rule_{}", i + 1)));
            let port = b.new_label(&f.name(&format!("pol_port_{i}")));
            b.jmp(JmpCond::Le, Reg::R1, i as i32, self.site(Reason::DenyDefault));
            b.load(Size::B, Reg::R2, Reg::R0, at + pol_slot::PROTO as i16);
            b.jmp(JmpCond::Eq, Reg::R2, 0, port);
            b.jmp(JmpCond::Ne, Reg::R2, Reg::R3, next);
            b.place(port);
            b.load(Size::H, Reg::R2, Reg::R0, at + pol_slot::PORT as i16);
            b.alu(AluOp::Xor, Reg::R2, Reg::R4);
            b.load(Size::H, Reg::R5, Reg::R0, at + pol_slot::MASK as i16);
            b.alu(AluOp::And, Reg::R2, Reg::R5);
            b.jmp(JmpCond::Ne, Reg::R2, 0, next);
            b.load(Size::B, Reg::R2, Reg::R0, at + pol_slot::VERDICT as i16);
            b.jmp(JmpCond::Eq, Reg::R2, i32::from(policy_value::DENY), self.site(Reason::DenyPolicy));
            l7_redirect::emit_entry_check(b, Reg::R0, at + pol_slot::PROXY_PORT as i16, self.l7_labels(f));
            b.mov(Reg::R7, Reason::AllowNew as i32);
            b.ja(fl.ct_create);
            b.place(next);
        }
        b.ja(self.site(Reason::DenyDefault));

        b.place(policy_trie)
            .comment("too many rules inline: the policy trie {96, ep, dir, identity, proto, port}");
        b.load(Size::W, Reg::R0, Reg::R10, FP_PEER);
        b.be(32, Reg::R0);
        b.store(Size::W, Reg::R10, FP_POL + policy_key::PREFIXLEN as i16, policy_key::FULL_BITS as i32);
        match self.ep {
            Some(ep) => {
                b.store(Size::H, Reg::R10, FP_POL + policy_key::EP as i16, i32::from(ep.swap_bytes()))
                    .param(param::ENDPOINT_BE16);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).be(16, Reg::R1);
                b.store(Size::H, Reg::R10, FP_POL + policy_key::EP as i16, Reg::R1);
            }
        }
        b.store(Size::H, Reg::R10, FP_POL + policy_key::DIR as i16, i32::from(dir));
        b.store(Size::W, Reg::R10, FP_POL + policy_key::IDENTITY as i16, Reg::R0);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PROTO as i16, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R10, FP_MISC + 2);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PORT as i16, Reg::R1);
        kit::policy_trie_lookup(b, FP_POL, policy_found);
        b.ja(self.site(Reason::DenyDefault));
        b.place(policy_found);
        b.load(Size::B, Reg::R1, Reg::R0, policy_value::VERDICT as i16);
        b.jmp(JmpCond::Eq, Reg::R1, i32::from(policy_value::DENY), self.site(Reason::DenyPolicy));
        b.jmp(JmpCond::Ne, Reg::R1, i32::from(policy_value::ALLOW), self.site(Reason::DenyDefault));
        l7_redirect::emit_entry_check(b, Reg::R0, policy_value::PROXY_PORT as i16, self.l7_labels(f));
        b.mov(Reg::R7, Reason::AllowNew as i32);
        b.ja(fl.ct_create);
    }

    /// Track the allowed connection (r7 = the allow reason) in the family's map, and leave a
    /// first fragment's verdict for the rest.
    fn emit_ct_create(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let (store, allowed_reason) =
            (b.new_label(&f.name("ct_create_store")), b.new_label(&f.name("allowed_reason")));
        b.place(fl.ct_create).comment("track the connection; r7 = the allow reason");
        if !self.options.conntrack {
            b.ja(fl.allowed);
        }
        for off in (0..ct_value::SIZE as i16).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_CTV + off, 0);
        }
        l7_redirect::emit_ct_flags(b, &L7);
        b.call(KTIME_GET_COARSE_NS);
        b.load(Size::B, Reg::R3, Reg::R10, FP_FAM + 1);
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.mov(Reg::R1, CtState::Open as i32);
        b.jmp(JmpCond::Ne, Reg::R3, IPPROTO_TCP, store);
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED);
        b.mov(Reg::R1, CtState::Established as i32);
        b.alu(AluOp::And, Reg::R3, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R3, TCP_SYN, store);
        b.ld_imm64(Reg::R2, timeout::TCP_SYN);
        b.mov(Reg::R1, CtState::SynSent as i32);
        b.place(store);
        b.add(Reg::R0, Reg::R2);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::EXPIRES as i16, Reg::R0);
        b.store(Size::B, Reg::R10, FP_CTV + ct_value::STATE as i16, Reg::R1);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::PACKETS as i16, 1);
        kit::map_update(b, f.ct, FP_CT, FP_CTV, kit::BPF_ANY);
        b.place(fl.allowed).comment("a first fragment leaves its verdict for the rest; r7 = reason");
        b.load(Size::B, Reg::R1, Reg::R10, FP_MISC + 1);
        b.jmp(JmpCond::Eq, Reg::R1, 0, allowed_reason);
        b.call(KTIME_GET_COARSE_NS);
        b.alu(AluOp::Rsh, Reg::R0, FRAG_CLOCK_SHIFT).add(Reg::R0, FRAG_TIMEOUT_UNITS);
        b.store(Size::W, Reg::R10, FP_CTV + frag_value::EXPIRES as i16, Reg::R0);
        b.store(Size::W, Reg::R10, FP_CTV + frag_value::VERDICT as i16, 1);
        kit::map_update(b, f.frag, FP_FRAG, FP_CTV, kit::BPF_ANY);
        b.place(allowed_reason);
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowUnenforced as i32, self.site(Reason::AllowUnenforced));
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowEstablished as i32, self.site(Reason::AllowEstablished));
        b.ja(self.site(Reason::AllowNew));
    }

    fn emit_exit(&self, b: &mut Builder) {
        let stride = Reason::COUNT as i32;
        let [event, event_drop, event_kind, event_budget, event_send] =
            ["event", "event_drop", "event_kind", "event_budget", "event_send"].map(|n| b.new_label(n));
        b.place(self.l.v.exit()).comment("count (endpoint, reason) in ep_stats; r6 = reason, r7 = verdict");
        match self.ep {
            Some(ep) => {
                b.mov(Reg::R1, Reg::R6).add(Reg::R1, i32::from(ep) * stride).param(param::STATS_ROW);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).alu(AluOp::Mul, Reg::R1, stride);
                b.add(Reg::R1, Reg::R6);
            }
        }
        kit::counter_add_then(b, map::EP_STATS, FP_KEY, Reg::R1, None, event);
        b.comment("an event for drops and new connections, if switched on");
        if self.options.services {
            b.comment("services: none for hairpin traffic (its reason sorts after the drops)");
            b.jmp(JmpCond::Eq, Reg::R6, Reason::AllowHairpin as i32, self.l.ret);
        }
        b.comment("(the reason first: most packets, established ones, can produce none)");
        b.jmp(JmpCond::Ge, Reg::R6, Reason::DenyPolicy as i32, event_drop);
        b.jmp(JmpCond::Ne, Reg::R6, Reason::AllowNew as i32, self.l.ret);
        b.mov(Reg::R3, 1).ja(event_kind);
        b.place(event_drop);
        b.mov(Reg::R3, 2);
        b.place(event_kind);
        b.ld_map_value(Reg::R1, map::EV_CONFIG, 0);
        b.load(Size::W, Reg::R2, Reg::R1, ev_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R2, Reg::R3);
        b.jmp(JmpCond::Eq, Reg::R2, 0, self.l.ret);
        b.store(Size::B, Reg::R10, FP_EV + event::KIND as i16, Reg::R3);
        b.comment("rate budget: ev_budget per CPU, a one-second window");
        b.load(Size::W, Reg::R8, Reg::R1, ev_config::RATE as i16);
        b.store(Size::W, Reg::R10, FP_KEY, 0);
        kit::map_lookup(b, map::EV_BUDGET, FP_KEY);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.l.ret);
        b.mov(Reg::R9, Reg::R0);
        b.call(KTIME_GET_NS);
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::WINDOW_START as i16);
        b.mov(Reg::R2, Reg::R0).alu(AluOp::Sub, Reg::R2, Reg::R1);
        b.jmp(JmpCond::Lt, Reg::R2, 1_000_000_000, event_budget);
        b.store(Size::DW, Reg::R9, ev_budget::WINDOW_START as i16, Reg::R0);
        b.store(Size::DW, Reg::R9, ev_budget::SENT as i16, 0);
        b.place(event_budget);
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::SENT as i16);
        b.jmp(JmpCond::Eq, Reg::R8, 0, event_send);
        b.jmp(JmpCond::Ge, Reg::R1, Reg::R8, self.l.ret);
        b.place(event_send);
        b.add(Reg::R1, 1).store(Size::DW, Reg::R9, ev_budget::SENT as i16, Reg::R1);
        self.emit_event_record(b);
        b.place(self.l.ret);
        if self.dir == Direction::ToEndpoint && self.options.services {
            self.emit_lb_reply(b);
        }
        if self.dir == Direction::FromEndpoint {
            b.comment("an allowed IP packet is forwarded (when the node is wired)");
            b.jmp(JmpCond::Ne, Reg::R7, TC_ACT_OK, self.l.return_verdict);
            b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
            b.jmp(JmpCond::Eq, Reg::R1, 4, self.l.v4.forward);
            b.jmp(JmpCond::Eq, Reg::R1, 6, self.l.v6.forward);
        }
        b.place(self.l.return_verdict);
        b.mov(Reg::R0, Reg::R7).exit();
        if self.dir == Direction::FromEndpoint {
            for f in [V4, V6] {
                self.emit_forward(b, f);
            }
        }
    }

    /// Forward an allowed packet (r7 = `TC_ACT_OK`): to a local endpoint by redirect, to an
    /// overlay peer through the VXLAN device, or routed by `bpf_fib_lookup` to the egress
    /// device; whatever none of them takes goes to the stack. r6 = ctx, r9 = `fwd_cfg`
    /// flags, r7 = the map value or stack area the new Ethernet header comes from.
    fn emit_forward(&self, b: &mut Builder, f: Fam) {
        let [fwd_lxc, fwd_lxc_lookup, fwd_tunnel, fwd_tunnel_lookup, fwd_tunnel_identity, fwd_tunnel_remote] =
            [
                "fwd_lxc",
                "fwd_lxc_lookup",
                "fwd_tunnel",
                "fwd_tunnel_lookup",
                "fwd_tunnel_identity",
                "fwd_tunnel_remote",
            ]
            .map(|n| b.new_label(&f.name(n)));
        let [fwd_fib, fwd_fib_lookup, fwd_neigh] =
            ["fwd_fib", "fwd_fib_lookup", "fwd_neigh"].map(|n| b.new_label(&f.name(n)));
        b.place(self.fl(f).forward).comment("which forwarding steps are on (none until the node is wired)");
        b.ld_map_value(Reg::R1, map::FWD_CFG, 0);
        b.load(Size::W, Reg::R9, Reg::R1, fwd_cfg::FLAGS as i16);
        b.jmp(JmpCond::Eq, Reg::R9, 0, self.l.return_verdict);
        b.load(Size::DW, Reg::R6, Reg::R10, FP_CTX);
        b.comment("the destination as a tunnel key: {128, addr[16]}, IPv4 mapped");
        b.store(Size::W, Reg::R10, FP_LPM, 128);
        if f.family == 4 {
            b.store(Size::W, Reg::R10, FP_LPM + 4, 0);
            b.store(Size::W, Reg::R10, FP_LPM + 8, 0);
            b.store(Size::W, Reg::R10, FP_LPM + 12, V4_MAPPED_WORD as i32);
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr).store(
                Size::W,
                Reg::R10,
                FP_LPM + 16,
                Reg::R1,
            );
        } else {
            copy_stack(b, FP_CT + f.daddr, FP_LPM + 4, 16);
        }

        b.place(fwd_lxc).comment("a local endpoint: straight to its veth, its ingress policy runs there");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::LOCAL as i32, fwd_lxc_lookup);
        b.ja(fwd_tunnel);
        b.place(fwd_lxc_lookup);
        kit::map_lookup(b, map::LXC, FP_LPM + 4);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_tunnel);
        b.mov(Reg::R7, Reg::R0);
        self.emit_rewrite(b, f, "lxc", Some((lxc_value::MAC, lxc_value::NODE_MAC)));
        b.load(Size::W, Reg::R1, Reg::R7, lxc_value::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();

        b.place(fwd_tunnel).comment("a peer node's prefix: encapsulate (VXLAN) and send");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::OVERLAY as i32, fwd_tunnel_lookup);
        b.ja(fwd_fib);
        b.place(fwd_tunnel_lookup);
        kit::map_lookup(b, map::TUNNEL, FP_LPM);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_fib);
        b.mov(Reg::R7, Reg::R0);
        for off in (0..48).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_FIB + off, 0);
        }
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::VNI as i16);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, Reg::R1);
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::IDENTITY as i32, fwd_tunnel_identity);
        b.ja(fwd_tunnel_remote);
        b.place(fwd_tunnel_identity)
            .comment("cluster mode: the VNI is the source endpoint's identity (0: none the wire carries)");
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, 0);
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_tunnel_remote);
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
        b.jmp(JmpCond::Gt, Reg::R1, overlay::MAX_WIRE_IDENTITY as i32, fwd_tunnel_remote);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, Reg::R1);
        b.place(fwd_tunnel_remote);
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::REMOTE as i16);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::REMOTE_IPV4 as i16, Reg::R1);
        b.store(Size::B, Reg::R10, FP_FIB + tunnel_key_struct::TTL as i16, 64);
        b.mov(Reg::R1, Reg::R6);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FIB));
        b.mov(Reg::R3, tunnel_key_struct::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(SKB_SET_TUNNEL_KEY);
        b.jmp(JmpCond::Ne, Reg::R0, 0, self.l.return_ok);
        self.emit_rewrite(b, f, "tunnel", Some((tunnel_value::DMAC, tunnel_value::SMAC)));
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();

        b.place(fwd_fib).comment("anything else: the kernel's FIB picks the egress device and next hop");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::FIB as i32, fwd_fib_lookup);
        b.ja(self.l.return_ok);
        b.place(fwd_fib_lookup);
        for off in (0..fib::SIZE as i16).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_FIB + off, 0);
        }
        let af = if f.family == 4 { fib::AF_INET } else { fib::AF_INET6 };
        b.store(Size::B, Reg::R10, FP_FIB + fib::FAMILY as i16, af);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.store(Size::B, Reg::R10, FP_FIB + fib::L4_PROTOCOL as i16, Reg::R1);
        for (from, to) in [(f.sport, fib::SPORT), (f.dport, fib::DPORT)] {
            b.load(Size::H, Reg::R1, Reg::R10, FP_CT + from).store(
                Size::H,
                Reg::R10,
                FP_FIB + to as i16,
                Reg::R1,
            );
        }
        b.load(Size::W, Reg::R1, Reg::R6, SKB_IFINDEX);
        b.store(Size::W, Reg::R10, FP_FIB + fib::IFINDEX as i16, Reg::R1);
        copy_stack(b, FP_CT, FP_FIB + fib::SRC as i16, f.alen);
        copy_stack(b, FP_CT + f.daddr, FP_FIB + fib::DST as i16, f.alen);
        b.mov(Reg::R1, Reg::R6);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FIB));
        b.mov(Reg::R3, fib::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(FIB_LOOKUP);
        b.mov(Reg::R7, Reg::R10).add(Reg::R7, i32::from(FP_FIB));
        b.jmp(JmpCond::Eq, Reg::R0, fib::RET_NO_NEIGH, fwd_neigh);
        b.jmp(JmpCond::Ne, Reg::R0, fib::RET_SUCCESS, self.l.return_ok);
        self.emit_rewrite(b, f, "fib", Some((fib::DMAC, fib::SMAC)));
        b.load(Size::W, Reg::R1, Reg::R7, fib::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();
        b.place(fwd_neigh).comment("routed, next hop's MAC unknown: the kernel resolves it");
        self.emit_rewrite(b, f, "neigh", None);
        b.load(Size::W, Reg::R1, Reg::R7, fib::IFINDEX as i16);
        b.mov(Reg::R2, 0).mov(Reg::R3, 0).mov(Reg::R4, 0);
        b.call(REDIRECT_NEIGH);
        b.exit();
        if f.family == 4 {
            b.place(self.l.return_ok).comment("not forwarded here: the stack takes it");
            b.mov(Reg::R0, TC_ACT_OK).exit();
        }
    }

    /// Make the packet leave as routed: an untagged frame of family `f` with a TTL (hop
    /// limit) above 1 has it decremented (IPv4 checksum updated as `ip_decrease_ttl` does)
    /// and, with `macs = (dst, src)` offsets into r7's memory, a new Ethernet header.
    /// Anything else goes to the stack (which answers an expired TTL with ICMP).
    fn emit_rewrite(&self, b: &mut Builder, f: Fam, tag: &str, macs: Option<(usize, usize)>) {
        // Offsets from the frame's start (r3): the Ethernet header, then IP.
        let l3 = ETH_HLEN as i16;
        let (ethertype, hdr, ttl) = if f.family == 4 {
            (ethertype::wire(ethertype::IPV4), V4_HLEN, l3 + ipv4::TTL as i16)
        } else {
            (ethertype::wire(ethertype::IPV6), V6_HLEN, l3 + ipv6::HOP_LIMIT as i16)
        };
        kit::skb_data(b, Reg::R6, Reg::R3, Reg::R4);
        b.mov(Reg::R5, Reg::R3).add(Reg::R5, ETH_HLEN + hdr);
        b.jmp(JmpCond::Gt, Reg::R5, Reg::R4, self.l.return_ok);
        b.load(Size::H, Reg::R1, Reg::R3, off(ethernet::ETHERTYPE));
        b.jmp(JmpCond::Ne, Reg::R1, ethertype, self.l.return_ok);
        b.load(Size::B, Reg::R1, Reg::R3, ttl);
        b.jmp(JmpCond::Le, Reg::R1, 1, self.l.return_ok);
        b.add(Reg::R1, -1).store(Size::B, Reg::R3, ttl, Reg::R1);
        if f.family == 4 {
            let done = b.new_label(&f.name(&format!("ttl_csum_{tag}")));
            b.load(Size::H, Reg::R1, Reg::R3, l3 + off(ipv4::CHECKSUM));
            b.add(Reg::R1, 1);
            b.jmp(JmpCond::Lt, Reg::R1, 0xffff, done);
            b.add(Reg::R1, 1);
            b.place(done);
            b.store(Size::H, Reg::R3, l3 + off(ipv4::CHECKSUM), Reg::R1);
        }
        if let Some((dst, src)) = macs {
            for (from, to) in [(dst, off(ethernet::DST)), (src, off(ethernet::SRC))] {
                for half in (0..6i16).step_by(2) {
                    b.load(Size::H, Reg::R1, Reg::R7, from as i16 + half);
                    b.store(Size::H, Reg::R3, to + half, Reg::R1);
                }
            }
        }
    }

    /// Services, after the ports (r7 = L3, r8 = L4 header): if the whole L4 header is there,
    /// `from-endpoint` goes on into the load balancer's forward path (the frame's inputs
    /// set here), `to-endpoint` keeps the header offsets for the reply path at
    /// its exit. Otherwise (or with the L4 header deeper than the load balancer's 255-byte
    /// bound: many IPv6 extension headers) the packet goes on untranslated.
    fn emit_lb_step(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let skip = fl.conntrack;
        b.place(fl.lb).comment("services: is the whole L4 header there? (tcp 20, udp 8, sctp 12)");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        kit::l4_whole_header(b, Reg::R1, Reg::R8, skip, None, &f.name("lb_"));
        emit_lb_offsets(b);
        b.jmp(JmpCond::Gt, Reg::R4, 255, skip);
        match self.dir {
            Direction::ToEndpoint => {
                b.store(Size::W, Reg::R10, FP_LB_OFFS, Reg::R3);
                b.store(Size::W, Reg::R10, FP_LB_OFFS + 4, Reg::R4);
                b.ja(skip);
            }
            Direction::FromEndpoint => {
                // The frontend filter runs inside the load balancer (its own check): an
                // early filter here saved a few stores per non-service packet but cost the
                // verifier a third more states on this program (node start time).
                b.store(Size::W, Reg::R10, LB.base + LbFrame::L3, Reg::R3);
                b.store(Size::W, Reg::R10, LB.base + LbFrame::L4, Reg::R4);
                b.store(Size::DW, Reg::R10, LB.base + LbFrame::CTX, Reg::R1);
                self.emit_lb_tuple(b, f);
                let (reply, forward) = (fl.lb_hairpin_reply, b.new_label(&f.name("lb_forward")));
                b.comment(
                    "services: to the hairpin address? the endpoint answers its own hairpinned connection",
                );
                self.emit_to_hairpin(b, f, reply, forward);
            }
        }
    }

    /// Jump to `yes` if the tuple's destination is the hairpin address of family `f`, else
    /// go on at label `no` (placed here).
    fn emit_to_hairpin(&self, b: &mut Builder, f: Fam, yes: Label, no: Label) {
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr);
            b.jmp32(JmpCond::Eq, Reg::R1, addr_word(&HAIRPIN_V4.octets(), 0), yes);
        } else {
            for w in 0..4 {
                b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr + 4 * w as i16);
                b.jmp32(JmpCond::Ne, Reg::R1, addr_word(&HAIRPIN_V6.octets(), w), no);
            }
            b.ja(yes);
        }
        b.place(no);
    }

    /// The `lb_hint` form of the address of family `f` at stack offset `at` of the tuple.
    fn hint_addr(&self, f: Fam, at: i16) -> HintAddr {
        if f.family == 4 {
            HintAddr::V4(at)
        } else {
            HintAddr::Mapped(at)
        }
    }

    /// Store the hairpin address of family `f` (as the packet carries it) at `at`.
    fn emit_store_hairpin(&self, b: &mut Builder, f: Fam, at: i16) {
        let octets: Vec<u8> =
            if f.family == 4 { HAIRPIN_V4.octets().to_vec() } else { HAIRPIN_V6.octets().to_vec() };
        for w in 0..octets.len() / 4 {
            b.store(Size::W, Reg::R10, at + 4 * w as i16, addr_word(&octets, w));
        }
    }

    /// The load balancer's tuple (IPv4-mapped addresses) and family from the conntrack
    /// key `FP_CT` of family `f`. The context must already be in the frame: the tuple
    /// overlays `FP_CTX`.
    fn emit_lb_tuple(&self, b: &mut Builder, f: Fam) {
        use crate::maps::lb::ct_key as lb_key;
        let t = |off: usize| LB.base + LbFrame::TUPLE + off as i16;
        b.comment("services: the load balancer's tuple from the conntrack key");
        b.store(Size::DW, Reg::R10, t(lb_key::SPORT), 0);
        if f.family == 4 {
            for (field, from) in [(lb_key::SADDR, FP_CT), (lb_key::DADDR, FP_CT + f.daddr)] {
                b.store(Size::DW, Reg::R10, t(field), 0);
                b.store(Size::W, Reg::R10, t(field) + 8, V4_MAPPED_WORD as i32);
                b.load(Size::W, Reg::R1, Reg::R10, from).store(Size::W, Reg::R10, t(field) + 12, Reg::R1);
            }
        } else {
            copy_stack(b, FP_CT, t(lb_key::SADDR), 32);
        }
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.sport).store(
            Size::W,
            Reg::R10,
            t(lb_key::SPORT),
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1).store(Size::B, Reg::R10, t(lb_key::PROTO), Reg::R1);
        b.store(Size::B, Reg::R10, LB.base + LbFrame::FAMILY, f.family);
    }

    /// Count the load balancer's reason (r6) in `lb_stats`; keeps r6 and r7.
    fn emit_lb_count(&self, b: &mut Builder, tag: &str) {
        let done = b.new_label(&format!("services_{tag}_counted"));
        b.comment("services: count the load balancer's reason (r6) in lb_stats");
        kit::counter_add_then(b, map::LB_STATS, FP_KEY, Reg::R6, None, done);
    }

    /// `from-endpoint`: one call of the load balancer on `paths`, then what both call sites
    /// do with its result: count the reason in `lb_stats`; a drop or a reset ends the
    /// program; otherwise the context goes back in its slot, the peer identity is zeroed
    /// again (the frame overlaid both), and an untouched packet (`pass_no_service`) goes on
    /// to conntrack. `names`: the label prefix, the exit label, the count tag and the
    /// resume label, each made unique per family.
    fn emit_lb_call(&self, b: &mut Builder, f: Fam, paths: LbPaths, names: [&str; 4]) {
        let [prefix, done, tag, ok] = names.map(|n| f.name(n));
        let (done, ok) = (b.new_label(&done), b.new_label(&ok));
        // The forward path checks its own frontend filter (see emit_lb_step).
        let filtered = false;
        let options = LbOptions { conntrack: true, paths, reset: ResetVia::Peer, filtered };
        emit_service_lb(b, LB, LbLabels { prefix: &prefix, exit: done }, options);
        b.place(done);
        self.emit_lb_count(b, &tag);
        b.jmp(JmpCond::Eq, Reg::R7, TC_ACT_OK, ok);
        b.mov(Reg::R0, Reg::R7).exit();
        b.place(ok).comment("services: the context back in its slot; no peer yet");
        b.load(Size::DW, Reg::R1, Reg::R10, LB.base + LbFrame::CTX).store(
            Size::DW,
            Reg::R10,
            FP_CTX,
            Reg::R1,
        );
        b.store(Size::W, Reg::R10, FP_PEER, 0);
        b.jmp(JmpCond::Eq, Reg::R6, crate::maps::lb::LbReason::PassNoService as i32, self.fl(f).conntrack);
    }

    /// `from-endpoint`: the load balancer's forward path (DNAT), one copy per family (so
    /// that what follows it needs no branch on the family, which the kernel verifier cannot
    /// follow through the stack). A drop or a reset (redirected into the client's side of
    /// the veth: it must not meet the client's own ingress policy, which has no connection
    /// for it) ends the program, counted in `lb_stats` only. A passed or translated packet
    /// goes on to conntrack and policy with the tuple's destination and the policy port set
    /// to the backend's (the packet itself is not read again: conntrack and policy work on
    /// the stack copy, forwarding reloads the packet pointers from the context).
    fn emit_lb_forward(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        b.comment("services: the load balancer's forward path");
        self.emit_lb_call(b, f, LbPaths::ForwardOnly, ["svc_", "lb_done", "forward", "lb_ok"]);
        b.comment("services: translated: the tuple's destination and the policy port are the backend's");
        let new = LB.base + LbFrame::NEW;
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12).store(Size::W, Reg::R10, FP_CT + f.daddr, Reg::R1);
        } else {
            copy_stack(b, new, FP_CT + f.daddr, 16);
        }
        b.load(Size::H, Reg::R1, Reg::R10, new + 16);
        b.store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R1);
        b.comment("services: hairpin (the backend is the client): the source is the hairpin address");
        b.comment("now; the endpoint talks to itself: no conntrack, no policy, on to forwarding");
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12);
            b.load(Size::W, Reg::R2, Reg::R10, FP_CT);
            b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, fl.conntrack);
        } else {
            for half in [0i16, 8] {
                b.load(Size::DW, Reg::R1, Reg::R10, new + half);
                b.load(Size::DW, Reg::R2, Reg::R10, FP_CT + half);
                b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, fl.conntrack);
            }
        }
        self.emit_store_hairpin(b, f, FP_CT);
        b.ja(self.site(Reason::AllowHairpin));
    }

    /// `from-endpoint`, for a packet to the hairpin address of family `f`: the load
    /// balancer's hairpin reply path. A reverse-translated packet (frontend → the endpoint)
    /// skips conntrack and policy, as its connection's forward direction did; a miss goes
    /// on as any packet; a failed rewrite drops (counted in `lb_stats` only).
    fn emit_lb_hairpin_reply(&self, b: &mut Builder, f: Fam) {
        b.place(self.fl(f).lb_hairpin_reply).comment("services: the load balancer's hairpin reply path");
        self.emit_lb_call(b, f, LbPaths::HairpinReply, ["svchp_", "lb_hp_done", "hairpin_reply", "lb_hp_ok"]);
        b.comment(
            "services: hairpin reply translated: the tuple is the frontend → the endpoint; on to forwarding",
        );
        copy_stack(b, FP_CT, FP_CT + f.daddr, f.alen);
        let new = LB.base + LbFrame::NEW;
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12).store(Size::W, Reg::R10, FP_CT, Reg::R1);
        } else {
            copy_stack(b, new, FP_CT, 16);
        }
        b.load(Size::H, Reg::R1, Reg::R10, new + 16);
        b.store(Size::H, Reg::R10, FP_CT + f.sport, Reg::R1);
        b.ja(self.site(Reason::AllowHairpin));
    }

    /// `to-endpoint`, at the exit of an allowed packet whose L4 header the parse recorded:
    /// the load balancer's reply path (reverse NAT: the backend's source back to the
    /// frontend), counted in `lb_stats`; its verdict is the program's.
    fn emit_lb_reply(&self, b: &mut Builder) {
        let [filter_v6, reply_frame, reply_v6, reply, no_service, done] = [
            "services_filter_v6",
            "services_reply_frame",
            "services_reply_v6",
            "services_reply",
            "services_reply_no_service",
            "services_reply_done",
        ]
        .map(|n| b.new_label(n));
        b.comment("services: reverse NAT of an allowed packet with an L4 header");
        b.jmp(JmpCond::Ne, Reg::R7, TC_ACT_OK, self.l.return_verdict);
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS + 4);
        b.jmp(JmpCond::Eq, Reg::R1, 0, self.l.return_verdict);
        b.comment("services: the backend filter on the tuple before the frame is set up");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        b.jmp(JmpCond::Eq, Reg::R1, 6, filter_v6);
        for f in [V4, V6] {
            if f.family == 6 {
                b.place(filter_v6);
            }
            let (addr, port) = (self.hint_addr(f, FP_CT), FP_CT + f.sport);
            emit_hint_filter(b, Hint::Backend, addr, port, FP_FAM + 1, FP_KEY, no_service);
            b.ja(reply_frame);
        }
        b.place(reply_frame).comment("services: the load balancer's frame");
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS + 4);
        b.store(Size::W, Reg::R10, LB.base + LbFrame::L4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS).store(
            Size::W,
            Reg::R10,
            LB.base + LbFrame::L3,
            Reg::R1,
        );
        b.load(Size::DW, Reg::R1, Reg::R10, FP_CTX).store(
            Size::DW,
            Reg::R10,
            LB.base + LbFrame::CTX,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        b.jmp(JmpCond::Eq, Reg::R1, 6, reply_v6);
        self.emit_lb_tuple(b, V4);
        b.ja(reply);
        b.place(reply_v6);
        self.emit_lb_tuple(b, V6);
        b.place(reply);
        let options =
            LbOptions { conntrack: true, paths: LbPaths::ReplyOnly, reset: ResetVia::Egress, filtered: true };
        emit_service_lb(b, LB, LbLabels { prefix: "svc_", exit: done }, options);
        b.place(no_service).comment("services: from no backend (its filter bit clear)");
        let pass = crate::maps::lb::LbReason::PassNoService;
        b.mov(Reg::R6, pass as i32).mov(Reg::R7, pass.verdict());
        b.place(done);
        self.emit_lb_count(b, "reply");
        b.mov(Reg::R0, Reg::R7).exit();
    }

    fn emit_event_record(&self, b: &mut Builder) {
        let ev = |off: usize| FP_EV + off as i16;
        b.store(Size::B, Reg::R10, ev(event::REASON), Reg::R6);
        b.store(Size::B, Reg::R10, ev(event::DIR), i32::from(self.dir.policy_dir()));
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM).store(Size::B, Reg::R10, ev(event::FAMILY), Reg::R1);
        if let Some(ep) = self.ep {
            b.store(Size::H, Reg::R10, ev(event::EP), i32::from(ep)).param(param::ENDPOINT);
        }
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1).store(Size::H, Reg::R10, ev(event::PROTO), Reg::R1);
        b.comment("identities: the peer's and the endpoint's own");
        b.load(Size::W, Reg::R1, Reg::R10, FP_PEER);
        b.load(Size::W, Reg::R2, Reg::R10, FP_MISC + 4);
        let (src, dst) = match self.dir {
            Direction::FromEndpoint => (Reg::R2, Reg::R1),
            Direction::ToEndpoint => (Reg::R1, Reg::R2),
        };
        b.store(Size::W, Reg::R10, ev(event::SRC_IDENTITY), src);
        b.store(Size::W, Reg::R10, ev(event::DST_IDENTITY), dst);
        b.comment("ports and addresses, by family");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        let [event_v4, event_v6, output] = ["event_v4", "event_v6", "event_output"].map(|n| b.new_label(n));
        b.jmp(JmpCond::Eq, Reg::R1, 6, event_v6);
        for (f, at) in [(V4, event_v4), (V6, event_v6)] {
            b.place(at);
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.sport).store(
                Size::W,
                Reg::R10,
                ev(event::SPORT),
                Reg::R1,
            );
            for (from, to) in [(0i16, event::SADDR), (f.daddr, event::DADDR)] {
                for w in (0..16i16).step_by(4) {
                    if w < f.alen {
                        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + from + w).store(
                            Size::W,
                            Reg::R10,
                            ev(to) + w,
                            Reg::R1,
                        );
                    } else {
                        b.store(Size::W, Reg::R10, ev(to) + w, 0);
                    }
                }
            }
            b.ja(output);
        }
        b.place(output);
        b.ld_map(Reg::R1, map::EVENTS);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_EV));
        b.mov(Reg::R3, event::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(RINGBUF_OUTPUT);
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
