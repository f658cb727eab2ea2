//! The L7 redirect: a tc ingress program that hands TCP connections to the transparent
//! proxy's listener with `bpf_sk_assign` (the TPROXY way, as Cilium's `bpf/lib/proxy.h` does
//! with `ENABLE_TPROXY`).
//!
//! Contract (IPv4 TCP; everything else passes untouched):
//! 1. A packet whose tuple has a socket in this namespace (`bpf_skc_lookup_tcp`) that is
//!    neither listening nor in TIME_WAIT goes to that socket: the proxy's accepted connection
//!    for a redirected flow (so established proxied connections keep going to the proxy), or
//!    the proxy's upstream connection for a reply to it (the upstream leaves from the client's
//!    own address, so its replies carry the client's address and would otherwise be routed
//!    to the client).
//! 2. Otherwise a SYN (without ACK) to a redirected destination port is assigned to the
//!    listener on the port's proxy port (looked up as `0.0.0.0:proxy_port`). No listener
//!    (the proxy is down): the SYN is dropped, so L7 policy fails closed.
//! 3. A packet assigned to a socket gets [`MARK_TO_PROXY`] in `skb->mark`: the node's policy
//!    routing ([`crate::proxy::route`]) delivers marked packets locally, which `sk_assign`
//!    needs (the original destination is not a local address).
//!
//! 4. Packets it does not take return `TCX_NEXT` (the next tcx program runs); packets it
//!    assigned return `TC_ACT_OK` (to the stack, which delivers them to the socket).
//!
//! Standalone: the redirected ports are constants of the program (one per L7 port), not the
//! policy entries' `proxy_port`, so attached in front of the endpoint programs it would take
//! connections before their L3/L4 verdict; the node does not attach it. The node's redirect
//! is [`super::l7_redirect`], inside the endpoint programs after their verdict. IPv6 is not
//! done; this program has kernel tests only (`tests/l7_redirect.rs`).

use super::{emit_ethernet, emit_skb_packet_pointers, guard, CodegenError, EthLabels};
use crate::packet::{ipv4::field as ipv4, tcp::field as tcp};
use sluice_asm::{helpers, AluOp, Builder, JmpCond, Label, Program, Reg, Size};
use sluice_verifier_sim::ctx_off;
use sluice_verifier_sim::uapi::{BpfSock, SkBuff, TC_ACT_OK, TC_ACT_SHOT};
use sluice_verifier_sim::uapi::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, BPF_TCP_TIME_WAIT, TCX_NEXT};
use sluice_verifier_sim::uapi::{IPPROTO_TCP, TCP_ACK, TCP_SYN};

/// The program's name (kernel-visible and pin name).
pub const NAME: &str = "to_proxy";

/// `skb->mark` of a packet handed to the proxy: Cilium's `MARK_MAGIC_TO_PROXY`.
pub const MARK_TO_PROXY: u32 = 0x0200;
/// The mark bits policy routing compares (`MARK_MAGIC_HOST_MASK`).
pub const MARK_MASK: u32 = 0x0F00;

/// `bpf_sock.state`.
const BPF_SOCK_STATE: i16 = ctx_off!(BpfSock, state);

/// The frame: `struct bpf_sock_tuple.ipv4` (saddr, daddr, sport, dport: network order).
const FP_TUPLE: i16 = -16;
const TUPLE_LEN: i32 = 12;
const FP_DADDR: i16 = FP_TUPLE + 4;
const FP_DPORT: i16 = FP_TUPLE + 10;
/// The TCP flags byte, kept across the helper calls.
const FP_FLAGS: i16 = -24;

/// One redirected port: new TCP connections to `port` go to the listener on `proxy_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    pub port: u16,
    pub proxy_port: u16,
}

/// The ports the node's L7 peer rules name (TCP, both directions, every endpoint), each
/// redirected to `proxy_port`, sorted. Port ranges are expanded up to [`MAX_REDIRECTS`] ports.
///
/// The redirect is by destination port only: a connection to such a port that no L7 rule
/// governs is proxied too, and the proxy passes every request of a connection without a gate
/// (`crate::l7::policy`), so it changes no verdict; its L3/L4 verdict stays the endpoint
/// programs'.
pub fn redirects_for(cfg: &crate::model::NodeConfig, proxy_port: u16) -> Result<Vec<Redirect>, CodegenError> {
    let mut ports = std::collections::BTreeSet::new();
    for rule in cfg.policies.iter().flat_map(|p| &p.rules) {
        for dir in [&rule.ingress, &rule.egress] {
            for peer_rule in dir.allow.iter().filter(|r| r.http.is_some()) {
                for m in &peer_rule.l4 {
                    ports.extend(m.first..=m.last);
                    if ports.len() > MAX_REDIRECTS {
                        return Err(CodegenError::TooManyRedirects { max: MAX_REDIRECTS });
                    }
                }
            }
        }
    }
    Ok(ports.into_iter().map(|port| Redirect { port, proxy_port }).collect())
}

/// The most redirected ports: each costs two instructions on a SYN's path.
pub const MAX_REDIRECTS: usize = 64;

/// Generate the redirect program for `redirects`.
pub fn generate(redirects: &[Redirect]) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    b.stack_slot("tuple.saddr", FP_TUPLE, 4);
    b.stack_slot("tuple.daddr", FP_DADDR, 4);
    b.stack_slot("tuple.sport", FP_TUPLE + 8, 2);
    b.stack_slot("tuple.dport", FP_DPORT, 2);
    b.stack_slot("tcp_flags", FP_FLAGS, 8);
    b.comment("r6 = ctx");
    b.mov(Reg::R6, Reg::R1);
    let l = Labels::new(&mut b);
    emit_skb_packet_pointers(&mut b, Reg::R6);
    emit_ethernet(
        &mut b,
        EthLabels {
            ipv4: l.ipv4,
            ipv6: l.pass,
            not_ip: l.pass,
            truncated_ethernet: l.pass,
            truncated_vlan: l.pass,
            vlan_too_deep: l.pass,
        },
    );
    emit_tuple(&mut b, &l);
    emit_established(&mut b, &l);
    emit_new_connection(&mut b, &l, redirects);
    emit_assign_listener(&mut b, &l);
    b.place(l.assigned).comment("mark it for the to-proxy route (local delivery)");
    b.mov(Reg::R2, MARK_TO_PROXY as i32);
    b.store(Size::W, Reg::R6, ctx_off!(SkBuff, mark), Reg::R2);
    b.mov(Reg::R0, TC_ACT_OK).exit();
    b.comment("not ours: on to the next program of the tcx chain (the stack when there is none)");
    b.place(l.pass).mov(Reg::R0, TCX_NEXT).exit();
    b.place(l.drop).mov(Reg::R0, TC_ACT_SHOT).exit();
    b.build().map_err(|source| CodegenError::Build { object: NAME, source })
}

/// The program's labels.
struct Labels {
    ipv4: Label,
    new_connection: Label,
    listener: Label,
    assigned: Label,
    pass: Label,
    drop: Label,
}

impl Labels {
    fn new(b: &mut Builder) -> Labels {
        let [ipv4, new_connection, listener, assigned, pass, drop] =
            ["ipv4", "new_connection", "listener", "assigned", "pass", "drop"].map(|n| b.new_label(n));
        Labels { ipv4, new_connection, listener, assigned, pass, drop }
    }
}

/// IPv4 TCP first fragments only: the tuple to the stack, the flags byte to `FP_FLAGS`.
fn emit_tuple(b: &mut Builder, l: &Labels) {
    b.place(l.ipv4).comment("ipv4: fixed header, TCP, not a later fragment");
    guard(b, Reg::R7, ipv4::HEADER_LEN as i32, l.pass);
    b.load(Size::B, Reg::R2, Reg::R7, ipv4::PROTOCOL as i16);
    b.jmp(JmpCond::Ne, Reg::R2, IPPROTO_TCP, l.pass);
    b.load(Size::H, Reg::R2, Reg::R7, ipv4::FLG_OFF.start as i16);
    b.be(16, Reg::R2).alu(AluOp::And, Reg::R2, 0x1fff);
    b.jmp(JmpCond::Ne, Reg::R2, 0, l.pass);
    b.load(Size::W, Reg::R2, Reg::R7, ipv4::SRC_ADDR.start as i16);
    b.store(Size::W, Reg::R10, FP_TUPLE, Reg::R2);
    b.load(Size::W, Reg::R2, Reg::R7, ipv4::DST_ADDR.start as i16);
    b.store(Size::W, Reg::R10, FP_DADDR, Reg::R2);
    b.comment("r7 = the TCP header (ihl * 4 past the IP header)");
    b.load(Size::B, Reg::R3, Reg::R7, ipv4::VER_IHL as i16);
    b.alu(AluOp::And, Reg::R3, 0x0f).alu(AluOp::Lsh, Reg::R3, 2);
    b.jmp(JmpCond::Lt, Reg::R3, ipv4::HEADER_LEN as i32, l.pass);
    b.add(Reg::R7, Reg::R3);
    guard(b, Reg::R7, tcp::HEADER_LEN as i32, l.pass);
    b.load(Size::W, Reg::R2, Reg::R7, tcp::SRC_PORT.start as i16);
    b.store(Size::W, Reg::R10, FP_TUPLE + 8, Reg::R2);
    b.load(Size::B, Reg::R2, Reg::R7, tcp::FLAGS.start as i16 + 1);
    b.store(Size::DW, Reg::R10, FP_FLAGS, Reg::R2);
}

/// `r1..r5` for a tuple lookup in the current namespace.
fn emit_lookup_args(b: &mut Builder) {
    b.mov(Reg::R1, Reg::R6);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_TUPLE));
    b.mov(Reg::R3, TUPLE_LEN).mov(Reg::R4, BPF_F_CURRENT_NETNS).mov(Reg::R5, 0);
}

/// Contract 1: a live socket for the tuple takes the packet.
fn emit_established(b: &mut Builder, l: &Labels) {
    b.comment("a live socket for this tuple (accepted or upstream proxy connection) takes it");
    emit_lookup_args(b);
    b.call(helpers::SKC_LOOKUP_TCP);
    b.jmp(JmpCond::Eq, Reg::R0, 0, l.new_connection);
    b.mov(Reg::R7, Reg::R0);
    b.load(Size::W, Reg::R2, Reg::R7, BPF_SOCK_STATE);
    let not_live = b.new_label("not_live");
    b.jmp(JmpCond::Eq, Reg::R2, BPF_TCP_LISTEN, not_live);
    b.jmp(JmpCond::Eq, Reg::R2, BPF_TCP_TIME_WAIT, not_live);
    b.mov(Reg::R1, Reg::R6).mov(Reg::R2, Reg::R7).mov(Reg::R3, 0);
    b.call(helpers::SK_ASSIGN);
    b.mov(Reg::R8, Reg::R0);
    b.mov(Reg::R1, Reg::R7).call(helpers::SK_RELEASE);
    b.comment("a failed assign leaves the packet to the stack (the socket may be closing)");
    b.jmp(JmpCond::Eq, Reg::R8, 0, l.assigned);
    b.ja(l.pass);
    b.place(not_live);
    b.mov(Reg::R1, Reg::R7).call(helpers::SK_RELEASE);
}

/// Contract 2: a SYN to a redirected port looks up its proxy listener.
fn emit_new_connection(b: &mut Builder, l: &Labels, redirects: &[Redirect]) {
    b.place(l.new_connection).comment("a SYN without ACK to a redirected port");
    b.load(Size::DW, Reg::R2, Reg::R10, FP_FLAGS);
    b.alu(AluOp::And, Reg::R2, TCP_SYN | TCP_ACK);
    b.jmp(JmpCond::Ne, Reg::R2, TCP_SYN, l.pass);
    b.load(Size::H, Reg::R2, Reg::R10, FP_DPORT);
    for r in redirects {
        let next = b.new_label("next_port");
        b.jmp(JmpCond::Ne, Reg::R2, i32::from(r.port.to_be()), next);
        b.comment(format!("port {} -> proxy listener 0.0.0.0:{}", r.port, r.proxy_port));
        b.mov(Reg::R3, i32::from(r.proxy_port.to_be()));
        b.store(Size::H, Reg::R10, FP_DPORT, Reg::R3);
        b.ja(l.listener);
        b.place(next);
    }
    b.ja(l.pass);
}

/// The listener lookup (`daddr = 0`, `dport = proxy port` already in the tuple) and assign.
fn emit_assign_listener(b: &mut Builder, l: &Labels) {
    b.place(l.listener).comment("the proxy's listener; none (proxy down): drop, fail closed");
    b.mov(Reg::R2, 0);
    b.store(Size::W, Reg::R10, FP_DADDR, Reg::R2);
    emit_lookup_args(b);
    b.call(helpers::SK_LOOKUP_TCP);
    b.jmp(JmpCond::Eq, Reg::R0, 0, l.drop);
    b.mov(Reg::R7, Reg::R0);
    b.mov(Reg::R1, Reg::R6).mov(Reg::R2, Reg::R7).mov(Reg::R3, 0);
    b.call(helpers::SK_ASSIGN);
    b.mov(Reg::R8, Reg::R0);
    b.mov(Reg::R1, Reg::R7).call(helpers::SK_RELEASE);
    b.jmp(JmpCond::Ne, Reg::R8, 0, l.drop);
    b.ja(l.assigned);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The helpers in call order, from the listing: the contract's lookups, assigns and
    /// releases (every lookup's reference is released on each path).
    #[test]
    fn calls_lookup_assign_release_in_contract_order() {
        let p = generate(&[Redirect { port: 80, proxy_port: 15001 }]).unwrap();
        let listing = sluice_asm::text::listing(&p);
        let calls: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split("call ").nth(1))
            .map(|c| c.split(|ch: char| ch == '#' || ch.is_whitespace()).next().unwrap_or(""))
            .collect();
        let expected = [
            "bpf_skc_lookup_tcp",
            "bpf_sk_assign",
            "bpf_sk_release",
            "bpf_sk_release",
            "bpf_sk_lookup_tcp",
            "bpf_sk_assign",
            "bpf_sk_release",
        ];
        assert_eq!(calls, expected, "listing:\n{listing}");
        assert!(listing.contains("port 80 -> proxy listener 0.0.0.0:15001"), "listing:\n{listing}");
    }
}
