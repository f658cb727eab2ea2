//! The BTF reader on the running kernel's own BTF (`/sys/kernel/btf/vmlinux`): what an
//! `iter/tcp` program needs (issue 11, existing sockets) is found, at the offsets of the
//! kernel's `struct sock_common` and `struct bpf_iter__tcp` (include/net/sock.h,
//! net/ipv4/tcp_ipv4.c), which are part of the layout every BPF program sees.

use sluice::sys::btf::{Btf, Kind, VMLINUX};

#[test]
fn finds_the_tcp_iterator_and_socket_fields_in_vmlinux_btf() {
    if !std::path::Path::new(VMLINUX).exists() {
        if std::env::var(sluice::sys::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("no {VMLINUX}");
        }
        eprintln!("skip: no {VMLINUX}");
        return;
    }
    let btf = Btf::vmlinux().expect("vmlinux BTF parses");
    assert!(btf.len() > 10_000, "{} types", btf.len());
    let iter = btf.find(Kind::Func, "bpf_iter_tcp").expect("FUNC bpf_iter_tcp (the iter/tcp attach id)");
    assert!(btf.get(iter).is_some_and(|t| t.kind == Kind::Func && t.name == "bpf_iter_tcp"));
    let cases: [(&str, &str, u32); 7] = [
        ("bpf_iter__tcp", "meta", 0),
        ("bpf_iter__tcp", "sk_common", 8),
        ("sock_common", "skc_daddr", 0),
        ("sock_common", "skc_rcv_saddr", 4),
        ("sock_common", "skc_dport", 12),
        ("sock_common", "skc_num", 14),
        ("sock_common", "skc_family", 16),
    ];
    for (strukt, member, want) in cases {
        assert_eq!(btf.member_offset(strukt, member), Some(want), "{strukt}.{member}");
    }
}
