//! The socket layer (issue 11): a cgroup `sock_ops` program that decides once per local-peer
//! TCP connection whether its data may bypass TCP, and an `sk_msg` program on the
//! `sock_hash` map that moves the data of decided connections socket to socket.
//!
//! `sock_ops` (`sock_layer_ops`), on `ACTIVE_ESTABLISHED_CB` (this socket is the client) and
//! `PASSIVE_ESTABLISHED_CB` (the server), IPv4 and IPv6 (an IPv6 socket's IPv4-mapped
//! addresses are the IPv4 socket's keys, see [`crate::maps::sock`]):
//! 1. The connection as this socket sees it, [`SockKey`] `{own, peer}`, and reversed.
//! 2. Both addresses must be local endpoints (`lxc` hits; their `ep_config` entries give
//!    the identities and enforcement flags). A local endpoint's identity is its
//!    `ep_config` identity: the ipcache entry of its address, written from the same model.
//! 3. The policy revision (`sock_rev`) is read *before* the decision, so a verdict raced by
//!    a policy change carries the older revision and is never used.
//! 4. Both policies, as the tc programs decide a new connection: the client's egress policy
//!    towards the server's identity and the server's ingress policy from the client's
//!    identity, each for TCP to the server's port, each only where enforced, each the
//!    `policy` trie's longest match in the peer identity's subtree, then the "any identity"
//!    subtree ([`kit::policy_trie_lookup`], the endpoint programs' own emitter; the trie
//!    holds every rule, `pol_table` is its cache). No match is a deny.
//! 5. Allowed: `sock_verdict[{own, peer}] = {revision, undecided}`, then the socket goes into
//!    `sock_hash` under `{peer, own}` (the peer's `sk_msg` key). A refused insert (the kernel
//!    refuses e.g. sockets with a ULP) is counted; the connection then uses the stack.
//!    Every outcome is counted in `sock_stats` ([`SockCounter`]).
//!
//! `sk_msg` (`sock_layer_msg`), per `sendmsg`/`sendfile` of an inserted socket:
//! `sock_verdict[{own, peer}]`; a direction that fell back stays on the stack; a verdict
//! from an older revision than `sock_rev` (one array load) sends this direction to the
//! stack for good; otherwise `bpf_msg_redirect_hash(sock_hash, {own, peer}, BPF_F_INGRESS)`
//! puts the message on the peer socket's receive queue. The first message decides a
//! direction: if the peer socket is not there, the direction falls back for the rest of the
//! connection (never stack → redirect, which could reorder bytes). The program always
//! returns `SK_PASS`: without a redirect, the message goes through TCP and the tc programs.
//!
//! Register use: `r6` = context; in `sock_ops` `r8` = 1 for the active side; in `sk_msg`
//! `r7` = the `sock_verdict` value, `r9` = the message size.

use super::kit;
use super::CodegenError;
use crate::maps::fwd::{lxc_value, V4_MAPPED_WORD};
use crate::maps::names as map;
use crate::maps::policy::{ep_config, policy_key, policy_value, PolicyKey, EGRESS, INGRESS};
use crate::maps::sock::{sock_key, sock_verdict, DirState, SockCounter, SockKey};
use crate::maps::MapDef;
use crate::uapi::{
    AF_INET, AF_INET6, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, IPPROTO_TCP, SK_PASS,
};
use sluice_asm::helpers::{MSG_REDIRECT_HASH, SOCK_HASH_UPDATE};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Program, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::spec::ProgKind;
use sluice_verifier_sim::uapi::{BpfSockOps, SkMsgMd};

/// The `sock_ops` program's name (kernel-visible, and its pin name).
pub const OPS_NAME: &str = "sock_layer_ops";
/// The `sk_msg` program's name.
pub const MSG_NAME: &str = "sock_layer_msg";

/// The simulator's kinds of the two programs.
pub const OPS_KIND: ProgKind = ProgKind::SockOps;
pub const MSG_KIND: ProgKind = ProgKind::SkMsg;

/// The maps the programs use: their own ([`crate::maps::sock`]) and the endpoint policy's
/// `lxc`, `ep_config` and `policy`.
pub const MAPS: [&str; 7] = [
    map::SOCK_HASH,
    map::SOCK_VERDICT,
    map::SOCK_REV,
    map::SOCK_STATS,
    map::LXC,
    map::EP_CONFIG,
    map::POLICY,
];

/// The socket layer's own maps.
pub fn map_defs() -> Vec<MapDef> {
    crate::maps::sock::map_defs()
}

/// Stack slots (offsets from `r10`), 8-byte aligned, disjoint.
pub mod slot {
    use super::{policy_key, sock_key, sock_verdict};

    const fn below(top: i16, size: usize) -> i16 {
        top - ((size as i16 + 7) & !7)
    }

    /// The connection as this socket sees it (`{own, peer}`).
    pub const KEY: i16 = below(0, sock_key::SIZE);
    /// The peer's view (`{peer, own}`): this socket's `sock_hash` key.
    pub const PEER_KEY: i16 = below(KEY, sock_key::SIZE);
    /// A `policy` key.
    pub const POLICY: i16 = below(PEER_KEY, policy_key::SIZE);
    /// The `sock_verdict` value being written.
    pub const VERDICT: i16 = below(POLICY, sock_verdict::SIZE);
    /// `u32` scratch key for array lookups.
    pub const SCRATCH: i16 = below(VERDICT, 4);
    /// Endpoint indexes (`u32`): this socket's, the peer's.
    pub const EP_OWN: i16 = SCRATCH - 4;
    pub const EP_PEER: i16 = EP_OWN - 4;
    /// The client's and the server's endpoint index, identity (host order) and flags.
    pub const EP_CLIENT: i16 = EP_PEER - 4;
    pub const EP_SERVER: i16 = EP_CLIENT - 4;
    pub const ID_CLIENT: i16 = EP_SERVER - 4;
    pub const ID_SERVER: i16 = ID_CLIENT - 4;
    pub const FLAGS_CLIENT: i16 = ID_SERVER - 4;
    pub const FLAGS_SERVER: i16 = FLAGS_CLIENT - 4;
    /// The server's port (`u16`, network order).
    pub const SERVER_PORT: i16 = FLAGS_SERVER - 4;

    const _: () = assert!(SERVER_PORT >= -512 && KEY % 8 == 0 && PEER_KEY % 8 == 0 && POLICY % 8 == 0);
}

/// Where a context keeps the connection's addresses and ports (the same fields in
/// `bpf_sock_ops` and `sk_msg_md`: addresses in network order, `remote_port` the network
/// order port in the upper 16 bits, `local_port` in host order).
#[derive(Debug, Clone, Copy)]
struct CtxAddrs {
    family: i16,
    remote_ip4: i16,
    local_ip4: i16,
    remote_ip6: i16,
    local_ip6: i16,
    remote_port: i16,
    local_port: i16,
}

const SOCK_OPS_ADDRS: CtxAddrs = CtxAddrs {
    family: ctx_off!(BpfSockOps, family),
    remote_ip4: ctx_off!(BpfSockOps, remote_ip4),
    local_ip4: ctx_off!(BpfSockOps, local_ip4),
    remote_ip6: ctx_off!(BpfSockOps, remote_ip6),
    local_ip6: ctx_off!(BpfSockOps, local_ip6),
    remote_port: ctx_off!(BpfSockOps, remote_port),
    local_port: ctx_off!(BpfSockOps, local_port),
};

const SK_MSG_ADDRS: CtxAddrs = CtxAddrs {
    family: ctx_off!(SkMsgMd, family),
    remote_ip4: ctx_off!(SkMsgMd, remote_ip4),
    local_ip4: ctx_off!(SkMsgMd, local_ip4),
    remote_ip6: ctx_off!(SkMsgMd, remote_ip6),
    local_ip6: ctx_off!(SkMsgMd, local_ip6),
    remote_port: ctx_off!(SkMsgMd, remote_port),
    local_port: ctx_off!(SkMsgMd, local_port),
};

fn declare_frame(b: &mut Builder) {
    kit::stack_layout::<SockKey>(b, "key", slot::KEY);
    kit::stack_layout::<SockKey>(b, "peer_key", slot::PEER_KEY);
    kit::stack_layout::<PolicyKey>(b, "policy_key", slot::POLICY);
    b.stack_slot("verdict.revision", slot::VERDICT + sock_verdict::REVISION as i16, 4);
    b.stack_slot("verdict.state", slot::VERDICT + sock_verdict::STATE as i16, 4);
    b.stack_slot("scratch", slot::SCRATCH, 4);
    for (name, at) in [
        ("ep_own", slot::EP_OWN),
        ("ep_peer", slot::EP_PEER),
        ("ep_client", slot::EP_CLIENT),
        ("ep_server", slot::EP_SERVER),
        ("identity_client", slot::ID_CLIENT),
        ("identity_server", slot::ID_SERVER),
        ("flags_client", slot::FLAGS_CLIENT),
        ("flags_server", slot::FLAGS_SERVER),
    ] {
        b.stack_slot(name, at, 4);
    }
    b.stack_slot("server_port", slot::SERVER_PORT, 2);
}

/// Build the `{own, peer}` key at `slot::KEY` from the context in `r6`; a family other
/// than IPv4 or IPv6 jumps to `other_family`.
fn emit_own_key(b: &mut Builder, ctx: CtxAddrs, other_family: Label) {
    let key = slot::KEY;
    let (v4, v6, ports) = (b.new_label("ipv4"), b.new_label("ipv6"), b.new_label("ports"));
    b.comment("the connection as this socket sees it: {own address, peer address, own port, peer port}");
    b.load(Size::W, Reg::R1, Reg::R6, ctx.family);
    b.jmp(JmpCond::Eq, Reg::R1, AF_INET, v4);
    b.jmp(JmpCond::Eq, Reg::R1, AF_INET6, v6);
    b.ja(other_family);
    b.place(v4).comment("IPv4: addresses IPv4-mapped, as lxc keys them");
    for (at, field) in [(sock_key::LOCAL, ctx.local_ip4), (sock_key::REMOTE, ctx.remote_ip4)] {
        let at = key + at as i16;
        b.store(Size::W, Reg::R10, at, 0);
        b.store(Size::W, Reg::R10, at + 4, 0);
        b.store(Size::W, Reg::R10, at + 8, V4_MAPPED_WORD as i32);
        b.load(Size::W, Reg::R1, Reg::R6, field);
        b.store(Size::W, Reg::R10, at + 12, Reg::R1);
    }
    b.ja(ports);
    b.place(v6).comment("IPv6 (an IPv4-mapped peer builds the IPv4 socket's key)");
    for (at, field) in [(sock_key::LOCAL, ctx.local_ip6), (sock_key::REMOTE, ctx.remote_ip6)] {
        for w in 0..4i16 {
            b.load(Size::W, Reg::R1, Reg::R6, field + 4 * w);
            b.store(Size::W, Reg::R10, key + at as i16 + 4 * w, Reg::R1);
        }
    }
    b.place(ports).comment("ports in network order: local_port is host order, remote_port's upper half");
    b.load(Size::W, Reg::R1, Reg::R6, ctx.local_port);
    b.be(16, Reg::R1);
    b.store(Size::H, Reg::R10, key + sock_key::LOCAL_PORT as i16, Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R6, ctx.remote_port);
    b.alu32(AluOp::Rsh, Reg::R1, 16);
    b.store(Size::H, Reg::R10, key + sock_key::REMOTE_PORT as i16, Reg::R1);
}

/// A counted decline: count `counter`, then `done`.
fn emit_decline(b: &mut Builder, at: Label, counter: SockCounter, done: Label) {
    b.place(at).comment(format!("declined: {}", counter.name()));
    kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, counter as i32, None);
    b.ja(done);
}

/// `r0 = &lxc[addr at r10 + at]`'s endpoint index into `r10 + to`, or `not_local`.
fn emit_endpoint_of(b: &mut Builder, at: i16, to: i16, not_local: Label) {
    kit::map_lookup(b, map::LXC, at);
    b.jmp(JmpCond::Eq, Reg::R0, 0, not_local);
    b.load(Size::W, Reg::R1, Reg::R0, lxc_value::EP as i16);
    b.store(Size::W, Reg::R10, to, Reg::R1);
}

/// `ep_config[ep at r10 + ep]`: identity and flags to `r10 + id` and `r10 + flags`, or
/// `missing`.
fn emit_ep_config(b: &mut Builder, ep: i16, id: i16, flags: i16, missing: Label) {
    b.load(Size::W, Reg::R1, Reg::R10, ep);
    b.store(Size::W, Reg::R10, slot::SCRATCH, Reg::R1);
    kit::map_lookup(b, map::EP_CONFIG, slot::SCRATCH);
    b.jmp(JmpCond::Eq, Reg::R0, 0, missing);
    b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
    b.store(Size::W, Reg::R10, id, Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R0, ep_config::FLAGS as i16);
    b.store(Size::W, Reg::R10, flags, Reg::R1);
}

/// One endpoint's policy for the connection: endpoint `ep`, direction `dir`, peer identity
/// at `peer`; skipped when `dir` is not enforced (flags at `flags`); a deny or no match
/// goes to `deny`.
fn emit_policy(b: &mut Builder, tag: &str, (ep, flags, peer): (i16, i16, i16), dir: u8, deny: Label) {
    let enforced = if dir == EGRESS { ep_config::EGRESS_ENFORCED } else { ep_config::INGRESS_ENFORCED };
    let (enforced_label, found, done) = (
        b.new_label(&format!("{tag}_enforced")),
        b.new_label(&format!("{tag}_found")),
        b.new_label(&format!("{tag}_done")),
    );
    b.comment(format!("{tag} policy: {{96, ep, dir {dir}, peer identity, TCP, server port}}"));
    b.load(Size::W, Reg::R1, Reg::R10, flags);
    b.jmp(JmpCond::Set, Reg::R1, enforced as i32, enforced_label);
    b.ja(done);
    b.place(enforced_label);
    let k = slot::POLICY;
    b.store(Size::W, Reg::R10, k + policy_key::PREFIXLEN as i16, policy_key::FULL_BITS as i32);
    b.load(Size::W, Reg::R1, Reg::R10, ep);
    b.be(16, Reg::R1);
    b.store(Size::H, Reg::R10, k + policy_key::EP as i16, Reg::R1);
    b.store(Size::H, Reg::R10, k + policy_key::DIR as i16, i32::from(dir));
    b.load(Size::W, Reg::R1, Reg::R10, peer);
    b.be(32, Reg::R1);
    b.store(Size::W, Reg::R10, k + policy_key::IDENTITY as i16, Reg::R1);
    b.store(Size::H, Reg::R10, k + policy_key::PROTO as i16, IPPROTO_TCP);
    b.load(Size::H, Reg::R1, Reg::R10, slot::SERVER_PORT);
    b.store(Size::H, Reg::R10, k + policy_key::PORT as i16, Reg::R1);
    kit::policy_trie_lookup(b, k, found);
    b.ja(deny);
    b.place(found);
    b.load(Size::B, Reg::R1, Reg::R0, policy_value::VERDICT as i16);
    b.jmp(JmpCond::Ne, Reg::R1, i32::from(policy_value::ALLOW), deny);
    b.place(done);
}

/// Copy `n` bytes (a multiple of 4) on the stack.
fn copy_stack(b: &mut Builder, from: i16, to: i16, n: usize) {
    for w in (0..n as i16).step_by(4) {
        b.load(Size::W, Reg::R1, Reg::R10, from + w);
        b.store(Size::W, Reg::R10, to + w, Reg::R1);
    }
}

/// How a decided verdict is written to `sock_verdict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// A new connection: `{revision, undecided}` replaces whatever an older connection with
    /// the same tuple left.
    Replace,
    /// An existing socket (the iterator): an entry whose direction already went to the
    /// stack stays there (stack -> redirect could reorder bytes; the socket is not
    /// inserted, jump to `done`); another entry gets the new revision in place (its state
    /// kept); no entry gets `{revision, undecided}`.
    KeepStack,
    /// Re-stamping after a policy change: only an entry that exists and has not gone to
    /// the stack gets the new revision; anything else goes to `done`.
    RestampOnly,
}

/// `done`: where [`Recording::RestampOnly`] goes when there is nothing to re-stamp, and
/// [`Recording::KeepStack`] when the direction went to the stack already.
fn emit_record(b: &mut Builder, recording: Recording, done: Label) {
    if recording == Recording::Replace {
        kit::map_update(b, map::SOCK_VERDICT, slot::KEY, slot::VERDICT, kit::BPF_ANY);
        return;
    }
    let (fresh, recorded) = (b.new_label("fresh_verdict"), b.new_label("recorded"));
    kit::map_lookup(b, map::SOCK_VERDICT, slot::KEY);
    if recording == Recording::RestampOnly {
        b.jmp(JmpCond::Eq, Reg::R0, 0, done);
    } else {
        b.jmp(JmpCond::Eq, Reg::R0, 0, fresh);
    }
    b.load(Size::W, Reg::R1, Reg::R0, sock_verdict::STATE as i16);
    b.jmp(JmpCond::Eq, Reg::R1, DirState::Stack as i32, done);
    b.load(Size::W, Reg::R1, Reg::R10, slot::VERDICT + sock_verdict::REVISION as i16);
    b.store(Size::W, Reg::R0, sock_verdict::REVISION as i16, Reg::R1);
    b.ja(recorded);
    b.place(fresh);
    kit::map_update(b, map::SOCK_VERDICT, slot::KEY, slot::VERDICT, kit::BPF_ANY);
    b.place(recorded);
}

/// From the `{own, peer}` key at `slot::KEY` and `r8` (1: this socket is the client): the
/// verdict from both policies; allowed, the verdict is recorded and `insert` (which must
/// leave 0 in `r0` on success) puts the socket into `sock_hash` under `slot::PEER_KEY`;
/// every outcome counted (`accepted` for an insert). Ends at `l.done`, which the caller
/// places; `l.other_family` is a decline (placed here) the caller may jump to.
fn emit_decide(
    b: &mut Builder,
    l: DecideLabels,
    recording: Recording,
    accepted: SockCounter,
    insert: impl FnOnce(&mut Builder),
) {
    let [not_local, deny_egress, deny_ingress, insert_refused] =
        ["not_local", "deny_egress", "deny_ingress", "insert_refused"].map(|n| b.new_label(n));
    b.comment("the peer's view {peer, own}: this socket's sock_hash key");
    copy_stack(b, slot::KEY + sock_key::REMOTE as i16, slot::PEER_KEY + sock_key::LOCAL as i16, 16);
    copy_stack(b, slot::KEY + sock_key::LOCAL as i16, slot::PEER_KEY + sock_key::REMOTE as i16, 16);
    b.load(Size::H, Reg::R1, Reg::R10, slot::KEY + sock_key::REMOTE_PORT as i16);
    b.store(Size::H, Reg::R10, slot::PEER_KEY + sock_key::LOCAL_PORT as i16, Reg::R1);
    b.load(Size::H, Reg::R1, Reg::R10, slot::KEY + sock_key::LOCAL_PORT as i16);
    b.store(Size::H, Reg::R10, slot::PEER_KEY + sock_key::REMOTE_PORT as i16, Reg::R1);

    b.comment("both ends local endpoints: lxc[own], lxc[peer]");
    emit_endpoint_of(b, slot::KEY + sock_key::LOCAL as i16, slot::EP_OWN, not_local);
    emit_endpoint_of(b, slot::KEY + sock_key::REMOTE as i16, slot::EP_PEER, not_local);
    b.comment("client and server: endpoints and the server's port");
    let (passive, roles) = (b.new_label("passive"), b.new_label("roles"));
    b.jmp(JmpCond::Eq, Reg::R8, 0, passive);
    for (from, to) in [(slot::EP_OWN, slot::EP_CLIENT), (slot::EP_PEER, slot::EP_SERVER)] {
        b.load(Size::W, Reg::R1, Reg::R10, from).store(Size::W, Reg::R10, to, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R10, slot::KEY + sock_key::REMOTE_PORT as i16);
    b.store(Size::H, Reg::R10, slot::SERVER_PORT, Reg::R1);
    b.ja(roles);
    b.place(passive);
    for (from, to) in [(slot::EP_PEER, slot::EP_CLIENT), (slot::EP_OWN, slot::EP_SERVER)] {
        b.load(Size::W, Reg::R1, Reg::R10, from).store(Size::W, Reg::R10, to, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R10, slot::KEY + sock_key::LOCAL_PORT as i16);
    b.store(Size::H, Reg::R10, slot::SERVER_PORT, Reg::R1);
    b.place(roles);
    emit_ep_config(b, slot::EP_CLIENT, slot::ID_CLIENT, slot::FLAGS_CLIENT, not_local);
    emit_ep_config(b, slot::EP_SERVER, slot::ID_SERVER, slot::FLAGS_SERVER, not_local);

    b.comment("the policy revision, read before deciding: a raced change leaves this verdict stale");
    b.ld_map_value(Reg::R1, map::SOCK_REV, 0);
    b.load(Size::W, Reg::R1, Reg::R1, 0);
    b.store(Size::W, Reg::R10, slot::VERDICT + sock_verdict::REVISION as i16, Reg::R1);
    b.store(Size::W, Reg::R10, slot::VERDICT + sock_verdict::STATE as i16, DirState::Undecided as i32);

    emit_policy(b, "egress", (slot::EP_CLIENT, slot::FLAGS_CLIENT, slot::ID_SERVER), EGRESS, deny_egress);
    emit_policy(b, "ingress", (slot::EP_SERVER, slot::FLAGS_SERVER, slot::ID_CLIENT), INGRESS, deny_ingress);

    b.comment("allowed by both: record the verdict, then insert the socket under the peer's view");
    emit_record(b, recording, l.done);
    insert(b);
    b.jmp(JmpCond::Ne, Reg::R0, 0, insert_refused);
    kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, accepted as i32, None);
    b.ja(l.done);

    let declines = [
        (l.other_family, SockCounter::DeclinedFamily),
        (not_local, SockCounter::DeclinedNotLocal),
        (deny_egress, SockCounter::DeclinedEgress),
        (deny_ingress, SockCounter::DeclinedIngress),
        (insert_refused, SockCounter::DeclinedInsert),
    ];
    for (at, counter) in declines {
        if recording == Recording::RestampOnly {
            // Re-deciding after a policy change is not a new connection: the decline
            // counters count connections, once each.
            b.place(at);
            b.ja(l.done);
        } else {
            emit_decline(b, at, counter, l.done);
        }
    }
}

/// Where [`emit_decide`] ends, and its decline for a family other than IPv4 and IPv6.
#[derive(Debug, Clone, Copy)]
struct DecideLabels {
    done: Label,
    other_family: Label,
}

impl DecideLabels {
    fn new(b: &mut Builder) -> DecideLabels {
        DecideLabels { done: b.new_label("done"), other_family: b.new_label("other_family") }
    }
}

/// Generate the `sock_ops` program.
pub fn generate_ops() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    declare_frame(&mut b);
    let b = &mut b;
    let (l, established) = (DecideLabels::new(b), b.new_label("established"));
    b.comment("r6 = ctx; r8 = 1 when this socket opened the connection (the client)");
    b.mov(Reg::R6, Reg::R1);
    b.load(Size::W, Reg::R1, Reg::R6, ctx_off!(BpfSockOps, op));
    b.mov(Reg::R8, 1);
    b.jmp(JmpCond::Eq, Reg::R1, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, established);
    b.mov(Reg::R8, 0);
    b.jmp(JmpCond::Eq, Reg::R1, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, established);
    b.ja(l.done);

    b.place(established);
    emit_own_key(b, SOCK_OPS_ADDRS, l.other_family);
    emit_decide(b, l, Recording::Replace, SockCounter::Accelerated, |b| {
        b.mov(Reg::R1, Reg::R6);
        b.ld_map(Reg::R2, map::SOCK_HASH);
        b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(slot::PEER_KEY));
        b.mov(Reg::R4, kit::BPF_ANY);
        b.call(SOCK_HASH_UPDATE);
    });
    b.place(l.done).comment("sock_ops programs return 1");
    b.mov(Reg::R0, 1).exit();
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: OPS_NAME, source })
}

/// Generate the `sk_msg` program.
pub fn generate_msg() -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    declare_frame(&mut b);
    let b = &mut b;
    b.comment("r6 = ctx");
    b.mov(Reg::R6, Reg::R1);
    let [to_stack, stale, no_peer, pass] = ["to_stack", "stale", "no_peer", "pass"].map(|n| b.new_label(n));
    emit_own_key(b, SK_MSG_ADDRS, to_stack);
    b.comment("r7 = sock_verdict[{own, peer}]");
    kit::map_lookup(b, map::SOCK_VERDICT, slot::KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, to_stack);
    b.mov(Reg::R7, Reg::R0);
    b.load(Size::W, Reg::R1, Reg::R7, sock_verdict::STATE as i16);
    b.jmp(JmpCond::Eq, Reg::R1, DirState::Stack as i32, to_stack);
    b.comment("a verdict from an older policy revision is not used (one array load)");
    b.ld_map_value(Reg::R1, map::SOCK_REV, 0);
    b.load(Size::W, Reg::R1, Reg::R1, 0);
    b.load(Size::W, Reg::R2, Reg::R7, sock_verdict::REVISION as i16);
    b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, stale);
    b.comment("to the peer socket's receive queue");
    b.load(Size::W, Reg::R9, Reg::R6, ctx_off!(SkMsgMd, size));
    b.mov(Reg::R1, Reg::R6);
    b.ld_map(Reg::R2, map::SOCK_HASH);
    b.mov(Reg::R3, Reg::R10).add(Reg::R3, i32::from(slot::KEY));
    b.mov(Reg::R4, BPF_F_INGRESS);
    b.call(MSG_REDIRECT_HASH);
    b.jmp(JmpCond::Ne, Reg::R0, SK_PASS, no_peer);
    b.store(Size::W, Reg::R7, sock_verdict::STATE as i16, DirState::Redirecting as i32);
    kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, SockCounter::MsgsRedirected as i32, None);
    kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, SockCounter::BytesRedirected as i32, Some(Reg::R9));
    b.ja(pass);

    for (at, counter) in [(no_peer, SockCounter::FallbackNoPeer), (stale, SockCounter::FallbackRevision)] {
        b.place(at).comment("this direction goes through the stack for the rest of the connection");
        b.store(Size::W, Reg::R7, sock_verdict::STATE as i16, DirState::Stack as i32);
        kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, counter as i32, None);
        b.ja(to_stack);
    }
    b.place(to_stack).comment("through TCP and the tc programs");
    kit::counter_add(b, map::SOCK_STATS, slot::SCRATCH, SockCounter::MsgsToStack as i32, None);
    b.place(pass);
    b.mov(Reg::R0, SK_PASS).exit();
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: MSG_NAME, source })
}

/// The iterator program's name (`iter/tcp`).
pub const ITER_NAME: &str = "sock_layer_iter";

/// The iterator's private map of listening ports (`u32` local port, host order -> `u32`
/// 1), filled by the iterator itself: `iter/tcp` walks the listening sockets of a network
/// namespace before the established ones, so when an established socket comes, its local
/// port is a listener's exactly when it is the server end. The caller empties it between
/// namespaces.
pub const LISTEN_MAP: &str = "sock_listen";

/// The maps the iterator uses.
pub const ITER_MAPS: [&str; 8] = [
    map::SOCK_HASH,
    map::SOCK_VERDICT,
    map::SOCK_REV,
    map::SOCK_STATS,
    map::LXC,
    map::EP_CONFIG,
    map::POLICY,
    LISTEN_MAP,
];

/// The listening-port map's definition.
pub fn listen_map_def() -> MapDef {
    MapDef::of::<u32, u32>(LISTEN_MAP, sluice_verifier_sim::spec::MapKind::Hash, 4096, 0)
}

/// `TCP_ESTABLISHED` and `TCP_LISTEN` (`include/net/tcp_states.h`).
pub use crate::uapi::{BPF_TCP_ESTABLISHED as TCP_ESTABLISHED, BPF_TCP_LISTEN as TCP_LISTEN};

/// What a run of the iterator does with an established socket the policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IterMode {
    /// Insert it (existing sockets at attach, [`Recording::KeepStack`]).
    PickUp,
    /// After a policy change: a socket accelerated under an older revision gets the new
    /// one, so the change does not send every connection to the stack; a connection the
    /// new policy denies keeps its stale verdict, so its messages go to the stack (where
    /// the tc programs judge them). Nothing is inserted.
    Restamp,
}

/// Byte offsets the iterator reads, from the running kernel's BTF
/// ([`crate::sys::btf::Btf::member_offset`]): the context `struct bpf_iter__tcp` and the
/// socket's `struct sock_common`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IterOffsets {
    /// `bpf_iter__tcp.sk_common` (a `struct sock_common *`, NULL at the end of a run).
    pub sk_common: i16,
    pub family: i16,
    pub state: i16,
    /// Local port, host order (`skc_num`), and remote port, network order (`skc_dport`).
    pub num: i16,
    pub dport: i16,
    /// IPv4 local (`skc_rcv_saddr`) and remote (`skc_daddr`) address, network order.
    pub rcv_saddr: i16,
    pub daddr: i16,
    /// IPv6 local (`skc_v6_rcv_saddr`) and remote (`skc_v6_daddr`) address.
    pub v6_rcv_saddr: i16,
    pub v6_daddr: i16,
}

impl IterOffsets {
    /// The offsets in `btf`; `None` names the first member not found.
    pub fn from_btf(btf: &crate::sys::btf::Btf) -> Result<IterOffsets, String> {
        let off = |s: &str, m: &str| {
            btf.member_offset(s, m)
                .and_then(|o| i16::try_from(o).ok())
                .ok_or_else(|| format!("{s}.{m} not in the kernel's BTF"))
        };
        let sc = "sock_common";
        Ok(IterOffsets {
            sk_common: off("bpf_iter__tcp", "sk_common")?,
            family: off(sc, "skc_family")?,
            state: off(sc, "skc_state")?,
            num: off(sc, "skc_num")?,
            dport: off(sc, "skc_dport")?,
            rcv_saddr: off(sc, "skc_rcv_saddr")?,
            daddr: off(sc, "skc_daddr")?,
            v6_rcv_saddr: off(sc, "skc_v6_rcv_saddr")?,
            v6_daddr: off(sc, "skc_v6_daddr")?,
        })
    }
}

/// Build the `{own address, peer address, own port, peer port}` [`SockKey`] at `r10 + key`
/// from the `iter/tcp` socket in `r6`, as that socket sees its connection: IPv4 addresses
/// IPv4-mapped (as `lxc` keys them), ports in network order. `host_port`: also store the
/// own port in host order there (a 4-byte slot). A family other than IPv4 or IPv6 jumps
/// to `other_family`. Clobbers `r1`. Shared by the pick-up/re-stamp iterator and
/// [`super::sock_destroy`].
pub(crate) fn emit_iter_sock_key(
    b: &mut Builder,
    off: &IterOffsets,
    key: i16,
    host_port: Option<i16>,
    other_family: Label,
) {
    let (v4, v6, ports) = (b.new_label("ipv4"), b.new_label("ipv6"), b.new_label("ports"));
    b.comment("the connection as this socket sees it: {own address, peer address, own port, peer port}");
    b.load(Size::H, Reg::R1, Reg::R6, off.family);
    b.jmp(JmpCond::Eq, Reg::R1, AF_INET, v4);
    b.jmp(JmpCond::Eq, Reg::R1, AF_INET6, v6);
    b.ja(other_family);
    b.place(v4).comment("IPv4: addresses IPv4-mapped, as lxc keys them");
    for (at, field) in [(sock_key::LOCAL, off.rcv_saddr), (sock_key::REMOTE, off.daddr)] {
        let at = key + at as i16;
        b.store(Size::W, Reg::R10, at, 0);
        b.store(Size::W, Reg::R10, at + 4, 0);
        b.store(Size::W, Reg::R10, at + 8, V4_MAPPED_WORD as i32);
        b.load(Size::W, Reg::R1, Reg::R6, field);
        b.store(Size::W, Reg::R10, at + 12, Reg::R1);
    }
    b.ja(ports);
    b.place(v6);
    for (at, field) in [(sock_key::LOCAL, off.v6_rcv_saddr), (sock_key::REMOTE, off.v6_daddr)] {
        for w in 0..4i16 {
            b.load(Size::W, Reg::R1, Reg::R6, field + 4 * w);
            b.store(Size::W, Reg::R10, key + at as i16 + 4 * w, Reg::R1);
        }
    }
    b.place(ports).comment("ports in network order (skc_num is host order, skc_dport network order)");
    b.load(Size::H, Reg::R1, Reg::R6, off.num);
    if let Some(slot) = host_port {
        b.store(Size::W, Reg::R10, slot, Reg::R1);
    }
    b.be(16, Reg::R1);
    b.store(Size::H, Reg::R10, key + sock_key::LOCAL_PORT as i16, Reg::R1);
    b.load(Size::H, Reg::R1, Reg::R6, off.dport);
    b.store(Size::H, Reg::R10, key + sock_key::REMOTE_PORT as i16, Reg::R1);
}

/// Generate the `iter/tcp` program that picks up established sockets (issue 11, existing
/// sockets): run once per network namespace at attach, it decides each established TCP
/// socket exactly as `sock_ops` decides a new connection ([`emit_decide`]) and inserts the
/// allowed ones with `bpf_map_update_elem(sock_hash, peer key, sk)` (the verifier allows
/// sockhash updates from iterator programs). The server end is the socket whose local
/// port has a listener in its namespace (recorded in [`LISTEN_MAP`] during the same run);
/// a socket without one is the client. A connection whose listener is gone by then is
/// judged with the roles swapped, so it is accelerated only if the reverse connection
/// would be allowed; an existing entry whose direction already went to the stack is left
/// there (see [`Recording::KeepStack`]).
///
/// Register use: `r6` = the socket (`struct sock_common *`), `r8` = 1 for the client.
pub fn generate_iter(off: IterOffsets, mode: IterMode) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    declare_frame(&mut b);
    let b = &mut b;
    let (l, established) = (DecideLabels::new(b), b.new_label("established"));
    b.comment("r6 = the socket; NULL ends the run");
    b.load(Size::DW, Reg::R6, Reg::R1, off.sk_common);
    b.jmp(JmpCond::Eq, Reg::R6, 0, l.done);
    b.load(Size::B, Reg::R1, Reg::R6, off.state);
    b.jmp(JmpCond::Eq, Reg::R1, TCP_ESTABLISHED, established);
    b.jmp(JmpCond::Ne, Reg::R1, TCP_LISTEN, l.done);
    b.comment("a listener (they come first): remember its port");
    b.load(Size::H, Reg::R1, Reg::R6, off.num);
    b.store(Size::W, Reg::R10, slot::SCRATCH, Reg::R1);
    b.store(Size::W, Reg::R10, slot::EP_OWN, 1);
    kit::map_update(b, LISTEN_MAP, slot::SCRATCH, slot::EP_OWN, kit::BPF_ANY);
    b.ja(l.done);

    b.place(established);
    emit_iter_sock_key(b, &off, slot::KEY, Some(slot::SCRATCH), l.other_family);
    b.comment("r8 = 1 (client) unless the local port has a listener here");
    kit::map_lookup(b, LISTEN_MAP, slot::SCRATCH);
    b.mov(Reg::R8, 1);
    let client = b.new_label("client");
    b.jmp(JmpCond::Eq, Reg::R0, 0, client);
    b.mov(Reg::R8, 0);
    b.place(client);
    match mode {
        IterMode::PickUp => emit_decide(b, l, Recording::KeepStack, SockCounter::PickedUp, |b| {
            b.ld_map(Reg::R1, map::SOCK_HASH);
            b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(slot::PEER_KEY));
            b.mov(Reg::R3, Reg::R6);
            b.mov(Reg::R4, kit::BPF_ANY);
            b.call(sluice_asm::helpers::MAP_UPDATE_ELEM);
        }),
        // The socket is in sock_hash already (its verdict entry says so); nothing to insert.
        IterMode::Restamp => emit_decide(b, l, Recording::RestampOnly, SockCounter::Restamped, |b| {
            b.mov(Reg::R0, 0);
        }),
    }
    b.place(l.done).comment("iterator programs return 0");
    b.mov(Reg::R0, 0).exit();
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: ITER_NAME, source })
}
