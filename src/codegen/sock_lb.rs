//! Socket-level load balancing: cgroup `sock_addr` programs that translate a service VIP
//! to a backend when a socket connects or sends, and back when it asks who its peer is.
//!
//! Eight programs, one per [`SockAddrHook`], all over the maps of [`crate::maps::lb`]
//! (`lb_svc`, `lb_slot`, `lb_be`, `lb_aff`, `lb_sock`); their shape does not depend on the
//! services, so a service change is a map update.
//!
//! Forward hooks (`connect4`/`6`, `sendmsg4`/`6`, the latter for unconnected UDP):
//! - The frontend key is (`user_ip` as a 16-byte address, IPv4 mapped to `::ffff:a.b.c.d`;
//!   `user_port`; protocol from the socket type: `SOCK_DGRAM` is UDP (17), `SOCK_STREAM`
//!   is TCP (6) unless the socket's protocol is SCTP (132); any other type is untouched).
//!   An IPv6 socket asking for an IPv4-mapped VIP (`::ffff:10.96.0.10`) builds the same
//!   key as an IPv4 socket asking for `10.96.0.10`, so dual-stack sockets reach IPv4
//!   services; it gets the backend as a mapped address too.
//! - `lb_svc` miss: return 1, the address untouched. `slots == 0` (no usable backend):
//!   return 0, which the kernel turns into `EPERM` for `connect()` and `sendmsg()`; so do a
//!   slot or backend missing mid-update, and a backend of the other family than the
//!   socket (an IPv6 backend cannot be reached from an `AF_INET` socket).
//! - Slot: `flow_hash([cookie_lo, cookie_hi, k0, k1, k2, k3, k4]) % slots` ([`crate::lb::hash`])
//!   where `cookie` is `bpf_get_socket_cookie()` and `k0..k4` are the five words of the
//!   `lb_svc` key as they sit on the stack (the address, then port | protocol << 16). The
//!   source port is unknown before `connect()` binds, and the cookie is what tells sockets
//!   apart: each new socket draws its own backend, and an unconnected UDP socket keeps
//!   sending one VIP's datagrams to one backend, so its replies come from one place.
//! - `sessionAffinity: ClientIP`: the source address is not chosen yet when `connect()`
//!   runs (routing picks it later), so every socket under the cgroup counts as one client,
//!   the node: `lb_aff` is keyed by `{svc_id, ::}` (the unspecified address, which no
//!   packet carries as a source, so it never meets the tc load balancer's client keys).
//!   That is what kube-proxy gives host processes too, whose packets all leave from the
//!   node address. An entry younger than the service's timeout whose backend is still in
//!   `lb_be` and active is reused and refreshed; otherwise the slot is drawn and recorded.
//! - The backend (`lb_slot` → `backend_id` → `lb_be`) replaces `user_ip4`/`user_ip6` and
//!   `user_port`, and `lb_sock[{cookie, backend addr, backend port}] = {VIP, port}` is
//!   written for the reverse hooks.
//!
//! Reverse hooks (`recvmsg4`/`6` for UDP, `getpeername4`/`6`): `lb_sock` is looked up with
//! the socket's cookie and the address the kernel is about to report; on a hit the VIP
//! and port replace it. They always return 1 (the kernel allows nothing else there).
//! `lb_sock` is an LRU map and cookies are never reused, so stale entries are harmless;
//! an entry evicted while its socket lives makes that socket see the backend's address.
//!
//! Why translated sockets skip the per-packet NAT: the socket is connected to (or sends
//! to) the backend itself, so every packet it emits is addressed to the backend and every
//! reply comes from it. The tc load balancer's `lb_svc` lookup on the destination misses
//! for these packets, and they pass it untouched: one lookup per connection instead of a
//! rewrite and a conntrack entry per packet.
//!
//! Register use: `r6` = context, `r7` = the `lb_svc` value, `r8` = the hash, then the
//! `lb_be` value, `r9` = the socket cookie. Stack slots are named below ([`slot`]).

use super::kit;
use super::CodegenError;
use crate::lb::hash::FLOW_HASH_SEED;
use crate::maps::lb::{
    aff_key, aff_value, be_value, slot_key, slot_value, sock_key, sock_value, svc_key, svc_value,
};
use crate::maps::names as map;
use crate::maps::MapDef;
use sluice_asm::helpers::{GET_SOCKET_COOKIE, KTIME_GET_NS};
use sluice_asm::{AluOp, Builder, JmpCond, Label, Program, Reg, Size};
pub use sluice_verifier_sim::spec::SockAddrHook;
use sluice_verifier_sim::spec::{sock_addr as ctx, ProgKind};

use crate::uapi::{
    IPPROTO_SCTP as PROTO_SCTP, IPPROTO_TCP as PROTO_TCP, IPPROTO_UDP as PROTO_UDP, SOCK_DGRAM, SOCK_STREAM,
};
/// The third word of an IPv4-mapped address (`00 00 ff ff`) as a `u32` load sees it.
const V4_MAPPED_WORD: i32 = crate::maps::fwd::V4_MAPPED_WORD as i32;
/// Nanoseconds per second (affinity timeouts are in seconds).
const NS_PER_SEC: i32 = 1_000_000_000;

/// Stack slots (offsets from `r10`), one per key or value, 8-byte aligned, disjoint.
pub mod slot {
    use super::{aff_key, aff_value, slot_key, sock_key, sock_value, svc_key};

    const fn below(top: i16, size: usize) -> i16 {
        top - ((size as i16 + 7) & !7)
    }

    /// The `lb_svc` key.
    pub const SVC_KEY: i16 = below(0, svc_key::SIZE);
    /// The `lb_slot` key.
    pub const SLOT_KEY: i16 = below(SVC_KEY, slot_key::SIZE);
    /// The `lb_be` key (`u32 backend_id`).
    pub const BE_KEY: i16 = below(SLOT_KEY, 4);
    /// `bpf_ktime_get_ns()` (affinity).
    pub const NOW: i16 = below(BE_KEY, 8);
    /// The `lb_aff` key and value.
    pub const AFF_KEY: i16 = below(NOW, aff_key::SIZE);
    pub const AFF_VALUE: i16 = below(AFF_KEY, aff_value::SIZE);
    /// The `lb_sock` key and value.
    pub const SOCK_KEY: i16 = below(AFF_VALUE, sock_key::SIZE);
    pub const SOCK_VALUE: i16 = below(SOCK_KEY, sock_value::SIZE);

    // Every slot fits the 512-byte frame, and 8-byte stores stay aligned.
    const _: () = assert!(SOCK_VALUE >= -512 && SOCK_KEY % 8 == 0 && NOW % 8 == 0 && AFF_VALUE % 8 == 0);
}

/// The maps the socket programs use.
pub const MAPS: [&str; 5] = [map::LB_SVC, map::LB_SLOT, map::LB_BE, map::LB_AFF, map::LB_SOCK];

/// The definitions of [`MAPS`], from [`crate::maps::lb::map_defs`].
pub fn map_defs() -> Vec<MapDef> {
    crate::maps::lb::map_defs().into_iter().filter(|d| MAPS.contains(&d.name)).collect()
}

/// The program's kernel-visible name (and pin name) at `hook`: `lb_connect4`, ...
pub fn name(hook: SockAddrHook) -> &'static str {
    match hook {
        SockAddrHook::Connect4 => "lb_connect4",
        SockAddrHook::Connect6 => "lb_connect6",
        SockAddrHook::UdpSendmsg4 => "lb_sendmsg4",
        SockAddrHook::UdpSendmsg6 => "lb_sendmsg6",
        SockAddrHook::UdpRecvmsg4 => "lb_recvmsg4",
        SockAddrHook::UdpRecvmsg6 => "lb_recvmsg6",
        SockAddrHook::Getpeername4 => "lb_getpeername4",
        SockAddrHook::Getpeername6 => "lb_getpeername6",
    }
}

/// The simulator's program kind at `hook`.
pub fn kind(hook: SockAddrHook) -> ProgKind {
    ProgKind::CgroupSockAddr(hook)
}

/// Generate the program for `hook`.
pub fn generate(hook: SockAddrHook) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    b.comment("r6 = ctx");
    b.mov(Reg::R6, Reg::R1);
    let (pass, refuse) = (b.new_label("pass"), b.new_label("refuse"));
    if hook.is_forward() {
        emit_forward(&mut b, hook, pass, refuse);
    } else {
        emit_reverse(&mut b, hook, pass);
    }
    b.place(pass).comment("not a service, or done: go on");
    b.mov(Reg::R0, 1).exit();
    if hook.is_forward() {
        b.place(refuse).comment("no usable backend: the call fails with EPERM");
        b.mov(Reg::R0, 0).exit();
    }
    b.build()
        .map(crate::mutate::program_seam)
        .map_err(|source| CodegenError::Build { object: name(hook), source })
}

/// Copy the socket's user address into 16 bytes at `r10 + at` (IPv4 mapped).
fn emit_user_addr(b: &mut Builder, hook: SockAddrHook, at: i16) {
    if hook.is_v6() {
        for w in 0..4i16 {
            b.load(Size::W, Reg::R1, Reg::R6, ctx::USER_IP6 as i16 + 4 * w);
            b.store(Size::W, Reg::R10, at + 4 * w, Reg::R1);
        }
    } else {
        b.store(Size::W, Reg::R10, at, 0);
        b.store(Size::W, Reg::R10, at + 4, 0);
        b.store(Size::W, Reg::R10, at + 8, V4_MAPPED_WORD);
        b.load(Size::W, Reg::R1, Reg::R6, ctx::USER_IP4 as i16);
        b.store(Size::W, Reg::R10, at + 12, Reg::R1);
    }
}

/// Write the 16-byte address at `base + at` into the socket's user address. IPv4 hooks
/// first check that it is IPv4 mapped (else `refuse`, when given).
fn emit_set_user_addr(b: &mut Builder, hook: SockAddrHook, base: Reg, at: i16, refuse: Option<Label>) {
    if hook.is_v6() {
        for w in 0..4i16 {
            b.load(Size::W, Reg::R1, base, at + 4 * w);
            b.store(Size::W, Reg::R6, ctx::USER_IP6 as i16 + 4 * w, Reg::R1);
        }
        return;
    }
    if let Some(refuse) = refuse {
        b.comment("an AF_INET socket reaches IPv4 (mapped) backends only");
        b.load(Size::W, Reg::R1, base, at);
        b.jmp(JmpCond::Ne, Reg::R1, 0, refuse);
        b.load(Size::W, Reg::R1, base, at + 4);
        b.jmp(JmpCond::Ne, Reg::R1, 0, refuse);
        b.load(Size::W, Reg::R1, base, at + 8);
        b.jmp32(JmpCond::Ne, Reg::R1, V4_MAPPED_WORD, refuse);
    }
    b.load(Size::W, Reg::R1, base, at + 12);
    b.store(Size::W, Reg::R6, ctx::USER_IP4 as i16, Reg::R1);
}

/// Write the `lb_aff` key `{svc_id, ::}` (svc_id from `r7`).
fn emit_aff_key(b: &mut Builder) {
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::SVC_ID as i16);
    b.store(Size::W, Reg::R10, slot::AFF_KEY + aff_key::SVC_ID as i16, Reg::R1);
    for w in 0..4i16 {
        b.store(Size::W, Reg::R10, slot::AFF_KEY + aff_key::ADDR as i16 + 4 * w, 0);
    }
}

fn emit_forward(b: &mut Builder, hook: SockAddrHook, pass: Label, refuse: Label) {
    let key = slot::SVC_KEY;
    let [have_proto, affinity, select, remember, backend] =
        ["have_proto", "affinity", "select", "remember", "backend"].map(|n| b.new_label(n));
    b.comment("r3 = protocol: SOCK_DGRAM is UDP, SOCK_STREAM TCP (or SCTP), others untouched");
    b.load(Size::W, Reg::R2, Reg::R6, ctx::TYPE as i16);
    b.mov(Reg::R3, PROTO_UDP);
    b.jmp(JmpCond::Eq, Reg::R2, SOCK_DGRAM, have_proto);
    b.jmp(JmpCond::Ne, Reg::R2, SOCK_STREAM, pass);
    b.load(Size::W, Reg::R3, Reg::R6, ctx::PROTOCOL as i16);
    b.jmp(JmpCond::Eq, Reg::R3, PROTO_SCTP, have_proto);
    b.mov(Reg::R3, PROTO_TCP);
    b.place(have_proto).comment("lb_svc key: {user address (IPv4 mapped), user_port, protocol, scope 0}");
    emit_user_addr(b, hook, key + svc_key::ADDR as i16);
    b.load(Size::W, Reg::R1, Reg::R6, ctx::USER_PORT as i16);
    b.alu(AluOp::And, Reg::R1, 0xffff);
    b.alu(AluOp::Lsh, Reg::R3, 16).alu(AluOp::Or, Reg::R1, Reg::R3);
    b.store(Size::W, Reg::R10, key + svc_key::PORT as i16, Reg::R1);
    kit::map_lookup(b, map::LB_SVC, key);
    b.jmp(JmpCond::Eq, Reg::R0, 0, pass);
    b.mov(Reg::R7, Reg::R0);
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::SLOTS as i16);
    b.jmp(JmpCond::Eq, Reg::R1, 0, refuse);
    b.comment("r9 = socket cookie");
    b.mov(Reg::R1, Reg::R6).call(GET_SOCKET_COOKIE);
    b.mov(Reg::R9, Reg::R0);

    b.comment("ClientIP affinity: lb_aff[{svc_id, ::}] while fresh and its backend active");
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::FLAGS as i16);
    b.jmp(JmpCond::Set, Reg::R1, svc_value::AFFINITY as i32, affinity);
    b.ja(select);
    b.place(affinity);
    emit_aff_key(b);
    kit::map_lookup(b, map::LB_AFF, slot::AFF_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, select);
    b.mov(Reg::R8, Reg::R0);
    b.call(KTIME_GET_NS);
    b.store(Size::DW, Reg::R10, slot::NOW, Reg::R0);
    b.load(Size::DW, Reg::R1, Reg::R8, aff_value::LAST_USED as i16);
    b.alu(AluOp::Sub, Reg::R0, Reg::R1);
    b.load(Size::W, Reg::R2, Reg::R7, svc_value::AFFINITY_TIMEOUT as i16);
    b.alu(AluOp::Mul, Reg::R2, NS_PER_SEC);
    b.jmp(JmpCond::Gt, Reg::R0, Reg::R2, select);
    b.load(Size::W, Reg::R1, Reg::R8, aff_value::BACKEND_ID as i16);
    b.store(Size::W, Reg::R10, slot::BE_KEY, Reg::R1);
    kit::map_lookup(b, map::LB_BE, slot::BE_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, select);
    b.load(Size::B, Reg::R1, Reg::R0, be_value::STATE as i16);
    b.jmp(JmpCond::Ne, Reg::R1, i32::from(be_value::ACTIVE), select);
    b.comment("refresh the entry; r8 = the backend");
    b.load(Size::DW, Reg::R1, Reg::R10, slot::NOW);
    b.store(Size::DW, Reg::R8, aff_value::LAST_USED as i16, Reg::R1);
    b.mov(Reg::R8, Reg::R0);
    b.ja(backend);

    b.place(select).comment("r8 = flow_hash(cookie lo, cookie hi, the 5 lb_svc key words) % slots");
    b.mov32(Reg::R8, FLOW_HASH_SEED as i32);
    b.mov32(Reg::R1, Reg::R9);
    kit::flow_hash_word(b, Reg::R8, Reg::R1, Reg::R2);
    b.mov(Reg::R1, Reg::R9).alu(AluOp::Rsh, Reg::R1, 32);
    kit::flow_hash_word(b, Reg::R8, Reg::R1, Reg::R2);
    for w in 0..(svc_key::SIZE / 4) as i16 {
        b.load(Size::W, Reg::R1, Reg::R10, key + 4 * w);
        kit::flow_hash_word(b, Reg::R8, Reg::R1, Reg::R2);
    }
    kit::fmix32(b, Reg::R8, Reg::R2);
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::SLOTS as i16);
    b.alu32(AluOp::Mod, Reg::R8, Reg::R1);
    b.comment("lb_slot[{svc_id, slot}]: the backend's id, address and port");
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::SVC_ID as i16);
    b.store(Size::W, Reg::R10, slot::SLOT_KEY + slot_key::SVC_ID as i16, Reg::R1);
    b.store(Size::W, Reg::R10, slot::SLOT_KEY + slot_key::SLOT as i16, Reg::R8);
    kit::map_lookup(b, map::LB_SLOT, slot::SLOT_KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, refuse);
    b.load(Size::W, Reg::R1, Reg::R0, slot_value::BACKEND_ID as i16);
    b.store(Size::W, Reg::R10, slot::BE_KEY, Reg::R1);
    b.comment("r8 = the backend: an lb_slot value has its address and port where lb_be has");
    b.mov(Reg::R8, Reg::R0);
    b.load(Size::W, Reg::R1, Reg::R7, svc_value::FLAGS as i16);
    b.jmp(JmpCond::Set, Reg::R1, svc_value::AFFINITY as i32, remember);
    b.ja(backend);
    b.place(remember).comment("lb_aff[{svc_id, ::}] = {backend_id, now}");
    emit_aff_key(b);
    b.call(KTIME_GET_NS);
    b.store(Size::DW, Reg::R10, slot::AFF_VALUE + aff_value::LAST_USED as i16, Reg::R0);
    b.load(Size::W, Reg::R1, Reg::R10, slot::BE_KEY);
    b.store(Size::W, Reg::R10, slot::AFF_VALUE + aff_value::BACKEND_ID as i16, Reg::R1);
    b.store(Size::W, Reg::R10, slot::AFF_VALUE + aff_value::BACKEND_ID as i16 + 4, 0);
    kit::map_update(b, map::LB_AFF, slot::AFF_KEY, slot::AFF_VALUE, kit::BPF_ANY);

    b.place(backend).comment("rewrite the socket's address to the backend (r8)");
    emit_set_user_addr(b, hook, Reg::R8, be_value::ADDR as i16, Some(refuse));
    b.load(Size::H, Reg::R1, Reg::R8, be_value::PORT as i16);
    b.store(Size::W, Reg::R6, ctx::USER_PORT as i16, Reg::R1);
    b.comment("lb_sock[{cookie, backend addr, backend port}] = {VIP, port}");
    let (sk, sv) = (slot::SOCK_KEY, slot::SOCK_VALUE);
    b.store(Size::DW, Reg::R10, sk + sock_key::COOKIE as i16, Reg::R9);
    for w in 0..4i16 {
        b.load(Size::W, Reg::R1, Reg::R8, be_value::ADDR as i16 + 4 * w);
        b.store(Size::W, Reg::R10, sk + sock_key::ADDR as i16 + 4 * w, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, key + svc_key::ADDR as i16 + 4 * w);
        b.store(Size::W, Reg::R10, sv + sock_value::ADDR as i16 + 4 * w, Reg::R1);
    }
    b.load(Size::H, Reg::R1, Reg::R8, be_value::PORT as i16);
    b.store(Size::W, Reg::R10, sk + sock_key::PORT as i16, Reg::R1);
    b.store(Size::W, Reg::R10, sk + sock_key::PORT as i16 + 4, 0);
    b.load(Size::H, Reg::R1, Reg::R10, key + svc_key::PORT as i16);
    b.store(Size::W, Reg::R10, sv + sock_value::PORT as i16, Reg::R1);
    kit::map_update(b, map::LB_SOCK, sk, sv, kit::BPF_ANY);
    b.ja(pass);
}

fn emit_reverse(b: &mut Builder, hook: SockAddrHook, pass: Label) {
    let sk = slot::SOCK_KEY;
    b.comment("lb_sock key: {cookie, the peer address the kernel reports, its port}");
    b.mov(Reg::R1, Reg::R6).call(GET_SOCKET_COOKIE);
    b.store(Size::DW, Reg::R10, sk + sock_key::COOKIE as i16, Reg::R0);
    emit_user_addr(b, hook, sk + sock_key::ADDR as i16);
    b.load(Size::W, Reg::R1, Reg::R6, ctx::USER_PORT as i16);
    b.alu(AluOp::And, Reg::R1, 0xffff);
    b.store(Size::W, Reg::R10, sk + sock_key::PORT as i16, Reg::R1);
    b.store(Size::W, Reg::R10, sk + sock_key::PORT as i16 + 4, 0);
    kit::map_lookup(b, map::LB_SOCK, sk);
    b.jmp(JmpCond::Eq, Reg::R0, 0, pass);
    b.comment("show the VIP");
    emit_set_user_addr(b, hook, Reg::R0, sock_value::ADDR as i16, None);
    b.load(Size::H, Reg::R1, Reg::R0, sock_value::PORT as i16);
    b.store(Size::W, Reg::R6, ctx::USER_PORT as i16, Reg::R1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_verifies() {
        let specs: Vec<_> = map_defs().iter().map(MapDef::sim_spec).collect();
        for hook in SockAddrHook::ALL {
            let a = generate(hook).expect("generates");
            assert_eq!(a, generate(hook).expect("generates"), "{hook:?}");
            if let Err(e) = sluice_verifier_sim::verifier::verify(&a, kind(hook), &specs) {
                panic!("{hook:?}: {e}\n{}", sluice_asm::text::listing(&a));
            }
        }
    }
}
