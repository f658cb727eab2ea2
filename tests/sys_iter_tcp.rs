//! An `iter/tcp` program loaded through raw `bpf()` with its attach id from the kernel's own
//! BTF (issue 11, existing sockets: the plumbing the pick-up at attach needs). The program
//! writes each TCP socket's local port (`sock_common.skc_num`, offset from BTF) with
//! `bpf_seq_write`; a listener this test opens in its own fresh network namespace must be
//! in what one read of the iterator returns, and nothing else (the namespace holds no other
//! socket). The kernel verifier checks the program (context and `sock_common` loads
//! through BTF pointers, the NULL check on `sk_common`, the helper's BTF argument).

use sluice::sys::btf::{Btf, Kind};
use sluice::sys::{self, attach_type, LinkCreate, ProgSpec, ProgType, Program};
use sluice_asm::helpers::SEQ_WRITE;
use sluice_asm::{Builder, JmpCond, Reg, Size};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsFd;

/// The program: for each socket, write its 2-byte local port (host order) to the seq file.
fn program(btf: &Btf) -> Vec<u8> {
    let off =
        |s: &str, m: &str| btf.member_offset(s, m).unwrap_or_else(|| panic!("{s}.{m} in vmlinux BTF")) as i16;
    let (meta, sk_common) = (off("bpf_iter__tcp", "meta"), off("bpf_iter__tcp", "sk_common"));
    let (seq, num) = (off("bpf_iter_meta", "seq"), off("sock_common", "skc_num"));
    let mut b = Builder::new();
    let done = b.new_label("done");
    b.stack_slot("port", -8, 2);
    b.load(Size::DW, Reg::R6, Reg::R1, meta);
    b.load(Size::DW, Reg::R2, Reg::R1, sk_common);
    b.jmp(JmpCond::Eq, Reg::R2, 0, done);
    b.load(Size::H, Reg::R3, Reg::R2, num);
    b.store(Size::H, Reg::R10, -8, Reg::R3);
    b.load(Size::DW, Reg::R1, Reg::R6, seq);
    b.mov(Reg::R2, Reg::R10);
    b.add(Reg::R2, -8);
    b.mov(Reg::R3, 2);
    b.call(SEQ_WRITE);
    b.place(done);
    b.mov(Reg::R0, 0);
    b.exit();
    b.build().expect("builds").encode().expect("encodes")
}

#[test]
fn an_iter_tcp_program_sees_the_sockets_of_its_namespace() {
    if !sys::require_kernel("an_iter_tcp_program_sees_the_sockets_of_its_namespace") {
        return;
    }
    let btf = Btf::vmlinux().expect("vmlinux BTF");
    let target = btf.find(Kind::Func, "bpf_iter_tcp").expect("bpf_iter_tcp");
    let insns = program(&btf);
    let spec = ProgSpec {
        attach_btf_id: Some(target),
        ..ProgSpec::new("iter_tcp_ports", ProgType::Tracing, &insns).with_attach_type(attach_type::TRACE_ITER)
    };
    let kernel = sys::kernel();
    let prog = Program::load(&kernel, &spec).unwrap_or_else(|e| panic!("the verifier accepts it: {e}"));
    let link_fd = sys::link_create(&*kernel, &LinkCreate::new(prog.fd(), 0, attach_type::TRACE_ITER))
        .expect("iterator link");
    // A fresh network namespace on a thread of its own: its only TCP socket is ours.
    let ports = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(2) on this thread only (a spawned thread is not shared with
            // anything else of the test); it changes no memory.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare: {}",
                std::io::Error::last_os_error()
            );
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
            let port = l.local_addr().expect("addr").port();
            let out = sys::iter::run(&*kernel, link_fd.as_fd()).expect("read the iterator");
            let seen: Vec<u16> = out.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
            (port, seen)
        })
        .join()
        .expect("thread")
    });
    assert_eq!(ports.1, vec![ports.0], "the iterator's ports (expected only our listener's {})", ports.0);
}
