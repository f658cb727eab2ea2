//! cgroup `sock_addr` programs: the verifier's rules per hook (writable fields, return
//! range, helpers) and the executor on a `bpf_sock_addr` context.

use sluice_asm::helpers as h;
use sluice_asm::{Builder, Program, Reg, Size};
use sluice_verifier_sim::exec::{Context, Machine, SockAddr, SOCK_STREAM};
use sluice_verifier_sim::maps::MapSet;
use sluice_verifier_sim::spec::{sock_addr as off, ProgKind, SockAddrHook};
use sluice_verifier_sim::verifier::{verify, ErrorKind};
use Reg::*;

fn build(f: impl FnOnce(&mut Builder)) -> Program {
    let mut b = Builder::new();
    f(&mut b);
    b.build().expect("test programs build")
}

/// `user_ip4 = 10.0.0.1; user_port = 8080; return 1`, writing `ip_field`.
fn rewrite(ip_field: u32) -> Program {
    build(|b| {
        b.mov(R2, i32::from_le_bytes([10, 0, 0, 1])).store(Size::W, R1, ip_field as i16, R2);
        b.mov(R2, i32::from(8080u16.swap_bytes())).store(Size::W, R1, off::USER_PORT as i16, R2);
        b.mov(R0, 1).exit();
    })
}

fn kind(hook: SockAddrHook) -> ProgKind {
    ProgKind::CgroupSockAddr(hook)
}

#[test]
fn rules_per_hook() {
    use SockAddrHook::*;
    let ret = |v: i32| {
        build(|b| {
            b.mov(R0, v).exit();
        })
    };
    let cookie = build(|b| {
        b.call(h::GET_SOCKET_COOKIE).mov(R0, 1).exit();
    });
    let store_imm = build(|b| {
        b.store(Size::W, R1, off::USER_IP4 as i16, 1).mov(R0, 1).exit();
    });
    let narrow = build(|b| {
        b.load(Size::H, R2, R1, off::USER_PORT as i16).mov(R0, 1).exit();
    });
    // (case, program, kind, expected: None = accepted, Some(fragment of the error))
    let cases: Vec<(&str, Program, ProgKind, Option<&str>)> = vec![
        ("connect4 rewrites user_ip4", rewrite(off::USER_IP4), kind(Connect4), None),
        ("recvmsg4 rewrites user_ip4", rewrite(off::USER_IP4), kind(UdpRecvmsg4), None),
        ("connect6 may not write user_ip4", rewrite(off::USER_IP4), kind(Connect6), Some("user_ip4")),
        ("sendmsg4 may write msg_src_ip4", rewrite(off::MSG_SRC_IP4), kind(UdpSendmsg4), None),
        (
            "connect4 may not write msg_src_ip4",
            rewrite(off::MSG_SRC_IP4),
            kind(Connect4),
            Some("msg_src_ip4"),
        ),
        ("type is read-only", rewrite(off::TYPE), kind(Connect4), Some("type")),
        ("connect may refuse", ret(0), kind(Connect4), None),
        ("recvmsg may not refuse", ret(0), kind(UdpRecvmsg6), Some("should have been in [1, 1]")),
        ("getpeername may not refuse", ret(0), kind(Getpeername4), Some("should have been in [1, 1]")),
        ("connect returns 0 or 1", ret(2), kind(Connect6), Some("should have been in [0, 1]")),
        ("sock_addr programs get the socket cookie", cookie.clone(), kind(Getpeername6), None),
        ("XDP does not", cookie, ProgKind::Xdp, Some("cannot call bpf_get_socket_cookie")),
        ("BPF_ST into the context", store_imm, kind(Connect4), Some("BPF_ST")),
        ("narrow loads are outside the subset", narrow, kind(Connect4), Some("invalid bpf_context access")),
    ];
    let mut failures = Vec::new();
    for (name, prog, k, expected) in &cases {
        let got = verify(prog, *k, &[]);
        let ok = match (expected, &got) {
            (None, Ok(_)) => true,
            (Some(frag), Err(e)) => e.to_string().contains(frag),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name} ({k}): expected {expected:?}, got {:?}\n{}",
                got.map(|_| "accepted").map_err(|e| e.to_string()),
                sluice_asm::text::listing(prog)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The error kinds, for one case each.
    assert!(matches!(
        verify(&rewrite(off::TYPE), kind(Connect4), &[]).map_err(|e| e.kind),
        Err(ErrorKind::CtxReadOnly { .. })
    ));
}

#[test]
fn executor_runs_on_the_sock_addr_context() {
    let prog = build(|b| {
        b.mov(R6, R1).call(h::GET_SOCKET_COOKIE).store(Size::W, R6, off::USER_IP4 as i16, R0);
        b.load(Size::W, R2, R6, off::USER_PORT as i16).alu(sluice_asm::AluOp::Add, R2, 0x100);
        b.store(Size::W, R6, off::USER_PORT as i16, R2);
        b.mov(R0, 1).exit();
    });
    let hook = SockAddrHook::Connect4;
    verify(&prog, kind(hook), &[]).expect("verifies");
    let cookie = u64::from(u32::from_le_bytes([192, 0, 2, 7]));
    let mut ctx =
        Context::for_sock_addr(SockAddr::new("10.96.0.10:80".parse().unwrap(), SOCK_STREAM, 6, cookie));
    let mut maps = MapSet::new(&[], 1).unwrap();
    let out = Machine::new().run(&prog, kind(hook), &mut ctx, &mut maps).expect("runs");
    assert_eq!(out.retval, 1);
    assert_eq!(ctx.sock_addr.user_addr(), "192.0.2.7:81".parse().unwrap());
    // A field the hook may not write is an error at run time too.
    let bad = rewrite(off::USER_IP4);
    let err = Machine::new().run(&bad, kind(SockAddrHook::Connect6), &mut ctx, &mut maps).unwrap_err();
    assert!(err.to_string().contains("bad 4-byte access"), "{err}");
}
