//! The attach layer against the fake seam: what each call sends, when drop detaches, and
//! what errors and status lines say. The kernel side is `tests/e2e_endpoints.rs`.

use super::link::hint_for;
use super::*;
use crate::sys::fake::FakeSyscall;
use crate::sys::{BpfCmd, Errno, ProgSpec, ProgType, Program, Syscall};
use std::sync::Arc;

const EXIT: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];

fn fake() -> (Arc<FakeSyscall>, Arc<dyn Syscall>) {
    let fake = Arc::new(FakeSyscall::default());
    let sys: Arc<dyn Syscall> = fake.clone();
    (fake, sys)
}

fn program(sys: &Arc<dyn Syscall>, name: &str, kind: ProgType) -> Program {
    Program::load(sys, &ProgSpec::new(name, kind, &EXIT)).expect("the fake loads anything")
}

fn word(attr: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(attr[at..at + 4].try_into().expect("4 bytes"))
}

/// `BPF_LINK_CREATE`'s (target, attach type, flags).
type CreateArgs = (u32, u32, u32);

/// The link commands the fake saw, with the arguments of each creation.
fn link_calls(fake: &FakeSyscall) -> Vec<(BpfCmd, Option<CreateArgs>)> {
    fake.calls()
        .into_iter()
        .filter(|c| matches!(c.cmd, BpfCmd::LinkCreate | BpfCmd::LinkUpdate | BpfCmd::LinkDetach))
        .map(|c| {
            let args = (c.cmd == BpfCmd::LinkCreate)
                .then(|| (word(&c.attr, 4), word(&c.attr, 8), word(&c.attr, 12)));
            (c.cmd, args)
        })
        .collect()
}

#[test]
fn links_send_their_hook_and_detach_on_drop_unless_pinned() {
    let cases: &[(&str, LinkKind, u32, u32)] = &[
        ("tcx ingress", LinkKind::TcxIngress, 46, 0),
        ("tcx egress", LinkKind::TcxEgress, 47, 0),
        ("xdp, kernel's choice of mode", LinkKind::Xdp, 37, 0),
        ("xdp generic", LinkKind::Xdp, 37, xdp_flags::SKB_MODE),
    ];
    for &(what, kind, attach_type, flags) in cases {
        let (fake, sys) = fake();
        let iface = Interface::named(7, "lxc1");
        let link = match kind {
            LinkKind::TcxIngress | LinkKind::TcxEgress => {
                let dir = if kind == LinkKind::TcxIngress { Direction::Ingress } else { Direction::Egress };
                Link::tcx(&sys, &program(&sys, "from_ep_1", ProgType::SchedCls), iface.clone(), dir)
            }
            _ => Link::xdp(&sys, &program(&sys, "prefilter", ProgType::Xdp), iface.clone(), flags),
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(link.kind(), kind, "{what}");
        assert_eq!(link.interface(), Some(&iface), "{what}");
        drop(link);
        assert_eq!(
            link_calls(&fake),
            [(BpfCmd::LinkCreate, Some((7, attach_type, flags))), (BpfCmd::LinkDetach, None)],
            "{what}: create, then detach on drop"
        );
    }
}

#[test]
fn update_swaps_and_a_pinned_link_is_only_closed() {
    let (fake, sys) = fake();
    let old = program(&sys, "to_ep_2", ProgType::SchedCls);
    let new = program(&sys, "to_ep_2_v2", ProgType::SchedCls);
    let mut link = Link::tcx(&sys, &old, Interface::named(5, "lxcB"), Direction::Egress).expect("creates");
    link.update(&new).expect("updates");
    assert_eq!(link.program_name(), "to_ep_2_v2");
    link.update_expecting(&old, &new).expect("updates back");
    let pin = std::env::temp_dir().join(format!("sluice-attach-unit-{}", std::process::id()));
    link.pin(&pin).expect("the fake pins anything");
    assert_eq!(link.pinned(), Some(pin.as_path()));
    assert!(matches!(link.pin(&pin), Err(AttachError::Invalid { .. })), "one pin per link");
    drop(link);

    let calls = fake.calls();
    let updates: Vec<&[u8]> =
        calls.iter().filter(|c| c.cmd == BpfCmd::LinkUpdate).map(|c| c.attr.as_slice()).collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(word(updates[0], 8), 0, "a plain update sets no flags");
    assert_eq!(word(updates[1], 8), crate::sys::attach_flags::REPLACE, "an expecting update replaces");
    assert_ne!(word(updates[1], 12), 0, "and names the old program");
    assert!(!calls.iter().any(|c| c.cmd == BpfCmd::LinkDetach), "a pinned link is not detached on drop");
}

#[test]
fn explicit_detach_happens_once() {
    let (fake, sys) = fake();
    let prog = program(&sys, "from_ep_1", ProgType::SchedCls);
    let link = Link::tcx(&sys, &prog, Interface::named(3, "lxcA"), Direction::Ingress).expect("creates");
    link.detach().expect("detaches");
    let detaches = fake.calls().iter().filter(|c| c.cmd == BpfCmd::LinkDetach).count();
    assert_eq!(detaches, 1);
}

#[test]
fn bad_xdp_flags_are_refused_before_the_kernel() {
    let (fake, sys) = fake();
    let prog = program(&sys, "prefilter", ProgType::Xdp);
    for flags in [xdp_flags::UPDATE_IF_NOEXIST, xdp_flags::REPLACE, xdp_flags::SKB_MODE | xdp_flags::DRV_MODE]
    {
        let err = Link::xdp(&sys, &prog, Interface::named(2, "eth0"), flags).expect_err("refused");
        assert!(matches!(err, AttachError::Invalid { .. }), "flags {flags:#x}: {err}");
        assert!(err.to_string().contains("eth0 (ifindex 2)"), "{err}");
    }
    assert!(link_calls(&fake).is_empty(), "nothing reached the seam");
}

#[test]
fn errors_name_command_hook_interface_program_and_errno() {
    let cases: &[(LinkKind, i32, &[&str], bool)] = &[
        (
            LinkKind::TcxEgress,
            libc::ENODEV,
            &[
                "BPF_LINK_CREATE",
                "tcx-egress",
                "lxc9 (ifindex 4242)",
                "`to_ep_2`",
                "ENODEV (19)",
                "namespace",
            ],
            false,
        ),
        (LinkKind::TcxIngress, libc::EINVAL, &["tcx-ingress", "EINVAL (22)", "Linux 6.6", "cls_bpf"], true),
        (LinkKind::Xdp, libc::EBUSY, &["xdp of lxc9", "EBUSY (16)", "XDP program already"], false),
    ];
    for &(kind, errno, needles, unsupported) in cases {
        let (fake, sys) = fake();
        fake.fail(BpfCmd::LinkCreate, Errno(errno));
        let iface = Interface::named(4242, "lxc9");
        let err = match kind {
            LinkKind::Xdp => Link::xdp(&sys, &program(&sys, "to_ep_2", ProgType::Xdp), iface, 0),
            LinkKind::TcxIngress => {
                Link::tcx(&sys, &program(&sys, "to_ep_2", ProgType::SchedCls), iface, Direction::Ingress)
            }
            _ => Link::tcx(&sys, &program(&sys, "to_ep_2", ProgType::SchedCls), iface, Direction::Egress),
        }
        .expect_err("the fake fails link creation");
        let text = err.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
        assert_eq!(err.errno(), Some(Errno(errno)));
        assert_eq!(err.link_unsupported(), unsupported, "{text}");
    }
}

#[test]
fn hints_by_command_and_errno() {
    let cases: &[(BpfCmd, LinkKind, i32, &str)] = &[
        (BpfCmd::LinkUpdate, LinkKind::TcxEgress, libc::EINVAL, "program and attach type"),
        (BpfCmd::LinkUpdate, LinkKind::TcxEgress, libc::EPERM, "expected program"),
        (BpfCmd::LinkDetach, LinkKind::Xdp, libc::ENOLINK, "detached already"),
        (BpfCmd::LinkCreate, LinkKind::TcxIngress, libc::EPERM, "CAP_BPF"),
        (BpfCmd::LinkCreate, LinkKind::TcxIngress, libc::E2BIG, ""),
    ];
    for &(cmd, kind, errno, want) in cases {
        let got = hint_for(cmd, kind, Errno(errno));
        assert!(
            if want.is_empty() { got.is_empty() } else { got.contains(want) },
            "{cmd} {kind} {}: hint {got:?}, want {want:?}",
            Errno(errno)
        );
    }
}

#[test]
fn status_lines_say_link_or_netlink() {
    let (_fake, sys) = fake();
    let prog = program(&sys, "from_ep_1", ProgType::SchedCls);
    let link = Link::tcx(&sys, &prog, Interface::named(5, "lxc1"), Direction::Ingress).expect("creates");
    let cases: Vec<(Attachment, Mechanism, &str)> = vec![
        (Attachment::from(link), Mechanism::Link, "tcx-ingress of lxc1 (ifindex 5): program from_ep_1, link"),
        (
            Attachment::Netlink(NetlinkAttachment {
                hook: NetlinkHook::ClsBpf { direction: Direction::Egress, handle: 1, priority: 1 },
                iface: Interface::named(6, "lxc2"),
                prog: "to_ep_2".into(),
                prog_id: 42,
            }),
            Mechanism::Netlink,
            "cls_bpf-egress (handle 0x1, priority 1) of lxc2 (ifindex 6): program to_ep_2, netlink",
        ),
        (
            Attachment::Netlink(NetlinkAttachment {
                hook: NetlinkHook::Xdp { flags: xdp_flags::SKB_MODE },
                iface: Interface::from_index(2),
                prog: "prefilter".into(),
                prog_id: 7,
            }),
            Mechanism::Netlink,
            "xdp-generic of ifindex 2: program prefilter, netlink",
        ),
    ];
    for (attachment, mechanism, line) in cases {
        assert_eq!(attachment.mechanism(), mechanism);
        assert_eq!(attachment.to_string(), line);
        assert!(attachment.interface().is_some());
    }
    assert_eq!(Mechanism::Link.to_string(), "link");
    assert_eq!(Mechanism::Netlink.to_string(), "netlink");
}

#[test]
fn link_kinds_have_the_status_names() {
    let cases = [
        (LinkKind::TcxIngress, "tcx-ingress"),
        (LinkKind::TcxEgress, "tcx-egress"),
        (LinkKind::Xdp, "xdp"),
        (LinkKind::Other { link_type: 3, attach_type: 3 }, "link type 3 attach type 3"),
    ];
    for (kind, text) in cases {
        assert_eq!(kind.to_string(), text);
    }
}

#[test]
fn unknown_interfaces_are_named_in_the_error() {
    let err = Interface::lookup("sluice-nope0").expect_err("no such device");
    let text = err.to_string();
    assert!(text.contains("sluice-nope0") && text.contains("namespace"), "{text}");
    assert_eq!(Interface::from_index(9).to_string(), "ifindex 9");
}
