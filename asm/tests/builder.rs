//! The builder: symbolic labels resolved late, with errors for what cannot be resolved,
//! jump threading and goto removal; and the program's map relocation.

use sluice_asm::{
    AluOp, BuildError, Builder, CallTarget, EncodeError, Imm64, Insn, JmpCond, Program, Reg, RelocateError,
    Size, Src,
};

fn jeq(dst: Reg, imm: i32, off: i16) -> Insn {
    Insn::Jmp { wide: true, cond: JmpCond::Eq, dst, src: Src::Imm(imm), off }
}

fn goto(off: i32) -> Insn {
    Insn::Ja { long: false, off }
}

#[test]
fn labels_forward_and_backward() {
    let mut b = Builder::new();
    b.mov(Reg::R0, 0)
        .label("top")
        .jmp(JmpCond::Eq, Reg::R1, 0, "done") // forward
        .alu(AluOp::Sub, Reg::R1, 1)
        .add(Reg::R0, 1)
        .jmp(JmpCond::Ne, Reg::R1, 0, "top") // backward
        .label("done")
        .exit();
    let p = b.build().expect("builds");
    assert_eq!(
        p.insns(),
        [
            Insn::mov64(Reg::R0, 0),
            jeq(Reg::R1, 0, 3),
            Insn::alu64(AluOp::Sub, Reg::R1, 1),
            Insn::alu64(AluOp::Add, Reg::R0, 1),
            Insn::Jmp { wide: true, cond: JmpCond::Ne, dst: Reg::R1, src: Src::Imm(0), off: -4 },
            Insn::Exit,
        ]
    );
    assert_eq!(p.labels()[&1], ["top"]);
    assert_eq!(p.labels()[&5], ["done"]);
}

#[test]
fn jmp32_and_local_calls_resolve() {
    let mut b = Builder::new();
    b.jmp32(JmpCond::SLt, Reg::R2, Reg::R3, "f").call_local("f").exit().label("f").ret(7);
    let p = b.build().expect("builds");
    assert_eq!(
        p.insns()[0],
        Insn::Jmp { wide: false, cond: JmpCond::SLt, dst: Reg::R2, src: Src::Reg(Reg::R3), off: 2 }
    );
    assert_eq!(p.insns()[1], Insn::Call(CallTarget::Local(1)));
}

#[test]
fn unknown_label_is_an_error() {
    let mut b = Builder::new();
    b.mov(Reg::R0, 0).jmp(JmpCond::Eq, Reg::R1, 0, "nowhere").exit();
    assert_eq!(b.build(), Err(BuildError::UnknownLabel { label: "nowhere".into(), index: 1 }));
    assert_eq!(b.build_verbatim(), Err(BuildError::UnknownLabel { label: "nowhere".into(), index: 1 }));
}

#[test]
fn duplicate_label_is_an_error() {
    let mut b = Builder::new();
    b.label("x").mov(Reg::R0, 0).label("x").exit();
    assert_eq!(b.build(), Err(BuildError::DuplicateLabel { label: "x".into(), first: 0, second: 1 }));
}

#[test]
fn sixteen_bit_jump_out_of_range_is_an_error() {
    for (gap, ok) in [(32_767usize, true), (32_768, false)] {
        let mut b = Builder::new();
        b.jmp(JmpCond::Eq, Reg::R1, 0, "far");
        for _ in 0..gap {
            b.mov(Reg::R0, 0);
        }
        b.label("far").exit();
        let got = b.build();
        if ok {
            assert_eq!(got.expect("fits").insns()[0], jeq(Reg::R1, 0, 32_767));
        } else {
            assert_eq!(
                got,
                Err(BuildError::JumpOutOfRange { label: "far".into(), index: 0, distance: 32_768 })
            );
        }
    }
    // The same distance backward, for a goto.
    let mut b = Builder::new();
    b.label("top");
    for _ in 0..40_000 {
        b.mov(Reg::R0, 0);
    }
    b.ja("top");
    assert_eq!(
        b.build(),
        Err(BuildError::JumpOutOfRange { label: "top".into(), index: 40_000, distance: -40_001 })
    );
    // gotol reaches where goto cannot.
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "over").emit_to(Insn::Ja { long: true, off: 0 }, "far").label("over");
    for _ in 0..40_000 {
        b.mov(Reg::R0, 0);
    }
    b.label("far").exit();
    assert_eq!(b.build().expect("gotol reaches").insns()[1], Insn::Ja { long: true, off: 40_000 });
}

#[test]
fn jumps_thread_through_gotos() {
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "a") // 0 -> a -> b -> out
        .ret(1) // 1, 2
        .label("a")
        .ja("b") // 3
        .mov(Reg::R0, 5) // 4
        .label("b")
        .ja("out") // 5
        .mov(Reg::R0, 6) // 6
        .label("out")
        .exit(); // 7
    let p = b.build().expect("builds");
    assert_eq!(
        p.insns(),
        // Threaded, the jump goes straight to `out`; the gotos at 3 and 5 and the moves at
        // 4 and 6 are then unreachable and dropped.
        [jeq(Reg::R1, 0, 2), Insn::mov64(Reg::R0, 1), Insn::Exit, Insn::Exit]
    );
}

#[test]
fn goto_to_next_is_removed_and_names_move_with_it() {
    let mut b = Builder::new();
    b.mov(Reg::R0, 0)
        .label("skip")
        .comment("nothing to skip")
        .ja("next")
        .label("next")
        .comment("the end")
        .exit();
    let p = b.build().expect("builds");
    assert_eq!(p.insns(), [Insn::mov64(Reg::R0, 0), Insn::Exit]);
    assert_eq!(p.labels()[&1], ["skip", "next"]);
    assert_eq!(p.comments()[&1], ["nothing to skip", "the end"]);
    // A goto whose threaded target is the next instruction goes too, and jumps to it land
    // where it led.
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R2, 0, "one").jmp(JmpCond::Eq, Reg::R1, 0, "g").label("g").ja("h");
    b.label("one").ret(1).label("h").ret(2);
    let p = b.build().expect("builds");
    assert_eq!(p.insns()[1], jeq(Reg::R1, 0, 3));
    assert_eq!(p.insns()[2], goto(2));
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "g").mov(Reg::R0, 0).label("g").ja("h").label("h").exit();
    let p = b.build().expect("builds");
    assert_eq!(p.insns(), [jeq(Reg::R1, 0, 1), Insn::mov64(Reg::R0, 0), Insn::Exit]);
}

#[test]
fn build_verbatim_keeps_every_instruction() {
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "a").label("a").ja("b").label("b").exit();
    let p = b.build_verbatim().expect("builds");
    assert_eq!(p.insns(), [jeq(Reg::R1, 0, 0), goto(0), Insn::Exit]);
}

#[test]
fn threading_never_pushes_a_jump_out_of_range() {
    // `goto far` reaches a goto 20000 slots on, which reaches `end` 20000 slots further:
    // threaded, the first jump would span 40000 slots, so it stays where it was written.
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R2, 0, "fill");
    b.jmp(JmpCond::Eq, Reg::R1, 0, "mid");
    for _ in 0..20_000 {
        b.mov(Reg::R0, 0);
    }
    b.label("mid").ja("end");
    b.label("fill");
    for _ in 0..20_000 {
        b.mov(Reg::R0, 0);
    }
    b.label("end").exit();
    let p = b.build().expect("a jump in range stays in range");
    assert_eq!(p.insns()[1], jeq(Reg::R1, 0, 20_000));
    assert_eq!(p.insns()[20_002], goto(20_000));
    // Through a gotol: threading stops at the last target a 16-bit offset reaches.
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R2, 0, "fill")
        .jmp(JmpCond::Eq, Reg::R1, 0, "a")
        .label("a")
        .ja("b")
        .label("b")
        .emit_to(Insn::Ja { long: true, off: 0 }, "far")
        .label("fill");
    for _ in 0..40_000 {
        b.mov(Reg::R0, 0);
    }
    b.label("far").exit();
    let p = b.build().expect("builds");
    // `a: goto b` is removed (b is next); the conditional jump lands on the gotol.
    assert_eq!(p.insns()[1], jeq(Reg::R1, 0, 0));
    assert_eq!(p.insns()[2], Insn::Ja { long: true, off: 40_000 });
}

#[test]
fn calls_are_not_threaded() {
    // A subprogram that begins with a goto still starts where the call says.
    let mut b = Builder::new();
    b.call_local("sub").exit().label("sub").ja("body").mov(Reg::R0, 9).label("body").ret(0);
    let p = b.build().expect("builds");
    assert_eq!(p.insns()[0], Insn::Call(CallTarget::Local(1)));
}

#[test]
fn goto_cycles_terminate() {
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "a").exit().label("a").ja("b").label("b").ja("a");
    let p = b.build().expect("a cycle of gotos still builds");
    // `a: goto b` is a no-op (b is next); what remains loops on itself, as before.
    assert_eq!(p.insns(), [jeq(Reg::R1, 0, 1), Insn::Exit, goto(-1)]);
}

#[test]
fn ld_imm64_counts_two_slots() {
    let mut b = Builder::new();
    b.jmp(JmpCond::Eq, Reg::R1, 0, "out")
        .ld_imm64(Reg::R2, 1 << 40)
        .ld_map(Reg::R3, "m")
        .mov(Reg::R0, 0)
        .label("out")
        .jmp(JmpCond::Eq, Reg::R1, 1, "top")
        .label("top")
        .exit();
    let p = b.build().expect("builds");
    assert_eq!(p.insns()[0], jeq(Reg::R1, 0, 5));
    assert_eq!(p.slot_starts(), [0, 1, 3, 5, 6, 7, 8]);
    assert_eq!(p.slots(), 8);
    assert_eq!(p.len(), 6);
    // Backward over both.
    let mut b = Builder::new();
    b.label("top").ld_imm64(Reg::R2, 7).ld_map_value(Reg::R3, "cfg", 8).ja("top");
    assert_eq!(b.build().expect("builds").insns()[2], goto(-5));
}

#[test]
fn a_label_target_on_a_non_branch_is_an_error() {
    let mut b = Builder::new();
    b.emit_to(Insn::Exit, "x").label("x").exit();
    assert_eq!(b.build(), Err(BuildError::NotAJump { index: 0 }));
}

fn with_maps() -> Program {
    let mut b = Builder::new();
    b.ld_map(Reg::R1, "ct").ld_map_value(Reg::R2, "cfg", 16).ld_map(Reg::R3, "ct").exit();
    b.build().expect("builds")
}

#[test]
fn relocate_binds_map_names() {
    let p = with_maps();
    assert_eq!(p.map_names(), ["cfg", "ct"]);
    assert_eq!(p.map_relocations(), [(0, "ct".to_string()), (2, "cfg".to_string()), (4, "ct".to_string())]);
    let fds = |name: &str| match name {
        "ct" => Some(5),
        "cfg" => Some(6),
        _ => None,
    };
    let bound = p.relocate(fds).expect("every map is known");
    assert_eq!(
        bound.insns()[..3],
        [
            Insn::LdImm64 { dst: Reg::R1, imm: Imm64::MapFd(5) },
            Insn::LdImm64 { dst: Reg::R2, imm: Imm64::MapValue { fd: 6, off: 16 } },
            Insn::LdImm64 { dst: Reg::R3, imm: Imm64::MapFd(5) },
        ]
    );
    let bytes = bound.encode().expect("relocated programs encode");
    assert_eq!(bytes[..16], [0x18, 0x11, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[16..32], [0x18, 0x22, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0]);
    assert_eq!(
        p.relocate(|n| (n == "ct").then_some(5)),
        Err(RelocateError::UnknownMap { index: 1, name: "cfg".into() })
    );
}

#[test]
fn encode_fails_on_unrelocated_maps() {
    let p = with_maps();
    assert!(matches!(p.encode(), Err(EncodeError::Unencodable { why, .. }) if why.contains("not relocated")));
    let raw = p.encode_unrelocated().expect("zero fds encode");
    assert_eq!(raw[..16], [0x18, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(raw.len(), 8 * p.slots());
}

#[test]
fn builder_reads_like_assembly() {
    let mut b = Builder::new();
    b.load(Size::W, Reg::R2, Reg::R1, 0)
        .be(16, Reg::R2)
        .store(Size::H, Reg::R10, -2, Reg::R2)
        .mov32(Reg::R0, 1)
        .alu32(AluOp::Lsh, Reg::R0, 3);
    b.call(sluice_asm::helpers::KTIME_GET_NS).exit();
    let fresh = (b.new_label("drop"), b.new_label("drop"));
    assert_ne!(fresh.0, fresh.1, "two labels of one name are two labels");
    assert_eq!(b.len(), 7);
    assert!(!b.is_empty());
    let text: Vec<String> = b.build().expect("builds").insns().iter().map(Insn::to_string).collect();
    assert_eq!(
        text,
        [
            "r2 = *(u32 *)(r1 +0)",
            "r2 = be16 r2",
            "*(u16 *)(r10 -2) = r2",
            "w0 = 1",
            "w0 <<= 3",
            "call bpf_ktime_get_ns#5",
            "exit",
        ]
    );
}

mod threading_preserves_control_flow {
    //! `build` (threading, goto removal) and `build_verbatim` must run the same way: for
    //! any branch decisions, the same non-goto instructions execute in the same order.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Item {
        Op,
        Cond(usize),
        Goto(usize),
        Exit,
    }

    fn program() -> impl Strategy<Value = (Vec<Item>, Vec<usize>)> {
        (1usize..24).prop_flat_map(|n| {
            let item = prop_oneof![
                3 => Just(Item::Op),
                2 => (0..=n).prop_map(Item::Cond),
                3 => (0..=n).prop_map(Item::Goto),
                1 => Just(Item::Exit),
            ];
            // Labels: `l{k}` sits before item k (k == n is the end).
            (prop::collection::vec(item, n), prop::collection::vec(0..=n, 0..6))
        })
    }

    fn build(items: &[Item], extra_labels: &[usize], verbatim: bool) -> Program {
        let mut b = Builder::new();
        for (k, item) in items.iter().enumerate() {
            b.label(format!("l{k}"));
            if extra_labels.contains(&k) {
                b.label(format!("x{k}"));
            }
            // Markers are unique immediates so that traces name instructions.
            match item {
                Item::Op => b.mov(Reg::R0, k as i32),
                Item::Cond(t) => b.jmp(JmpCond::Eq, Reg::R1, k as i32, format!("l{t}")),
                Item::Goto(t) => b.ja(format!("l{t}")),
                Item::Exit => b.exit(),
            };
        }
        b.label(format!("l{}", items.len()));
        if verbatim { b.build_verbatim() } else { b.build() }.expect("small programs build")
    }

    /// The markers executed (instruction immediates; -1 for exit or the end) for these
    /// branch decisions, at most 50 of them.
    fn trace(p: &Program, decisions: &[bool]) -> Vec<i64> {
        let starts = p.slot_starts();
        let mut out = Vec::new();
        let (mut pc, mut conds) = (0usize, 0usize);
        for _ in 0..5_000 {
            if out.len() == 50 {
                break;
            }
            let Some(insn) = p.insns().get(pc) else {
                out.push(-1);
                break;
            };
            let jump =
                |off: i32| starts.iter().position(|s| *s as i64 == starts[pc] as i64 + 1 + i64::from(off));
            pc = match insn {
                Insn::Alu { src: Src::Imm(k), .. } => {
                    out.push(i64::from(*k));
                    pc + 1
                }
                Insn::Jmp { src: Src::Imm(k), off, .. } => {
                    out.push(1_000 + i64::from(*k));
                    conds += 1;
                    let taken = decisions[conds % decisions.len()];
                    if taken {
                        jump(i32::from(*off)).expect("in range")
                    } else {
                        pc + 1
                    }
                }
                Insn::Ja { off, .. } => jump(*off).expect("in range"),
                Insn::Exit => {
                    out.push(-1);
                    break;
                }
                other => unreachable!("{other:?}"),
            };
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn same_trace((items, extra) in program(), decisions in prop::collection::vec(any::<bool>(), 1..8)) {
            let verbatim = build(&items, &extra, true);
            let threaded = build(&items, &extra, false);
            prop_assert!(threaded.len() <= verbatim.len());
            prop_assert_eq!(trace(&threaded, &decisions), trace(&verbatim, &decisions), "{:?}", items);
        }
    }
}

/// An emitter that owns its labels: used twice in one program, it must not collide.
fn emit_skip_if_zero(b: &mut Builder, r: Reg) {
    let skip = b.new_label("skip");
    b.jmp(JmpCond::Eq, r, 0, skip).add(r, 1).place(skip);
}

#[test]
fn id_labels_never_collide_and_show_unique_names() {
    let mut b = Builder::new();
    emit_skip_if_zero(&mut b, Reg::R1);
    emit_skip_if_zero(&mut b, Reg::R2);
    // A global label already called `skip.2` pushes the second id label's name further.
    b.label("skip.2").mov(Reg::R0, 0).exit();
    let p = b.build().expect("two uses of one emitter build");
    assert_eq!(p.insns()[0], jeq(Reg::R1, 0, 1));
    assert_eq!(p.insns()[2], jeq(Reg::R2, 0, 1));
    assert_eq!(p.labels()[&2], ["skip"]);
    assert_eq!(p.labels()[&4], ["skip.3", "skip.2"]);
    // The listing assembles back to the same program: its names are unique.
    let text = sluice_asm::text::listing(&p);
    let back = sluice_asm::text::parse_program(&text).expect("listing parses");
    assert_eq!(back.insns(), p.insns());
}

#[test]
fn an_id_label_placed_twice_or_never_is_an_error() {
    let mut b = Builder::new();
    let l = b.new_label("once");
    b.place(l).mov(Reg::R0, 0).place(l).exit();
    assert_eq!(b.build(), Err(BuildError::DuplicateLabel { label: "once".into(), first: 0, second: 1 }));
    let mut b = Builder::new();
    let l = b.new_label("never");
    b.jmp(JmpCond::Eq, Reg::R1, 0, l).exit();
    assert_eq!(b.build(), Err(BuildError::UnknownLabel { label: "never".into(), index: 0 }));
}

#[test]
fn parameters_rewrite_only_the_marked_immediates() {
    // The placeholder 0x7abc also appears as an ordinary constant: binding must leave it.
    let mut b = Builder::new();
    b.store(Size::W, Reg::R10, -4, 0x7abc).param("endpoint");
    b.mov(Reg::R0, 0x7abc);
    b.jmp(JmpCond::Eq, Reg::R1, 0x7abc, "out").param("endpoint_be");
    b.ld_imm64(Reg::R2, 0x7abc).param("wide");
    b.label("out").exit();
    let p = b.build().expect("builds");
    assert_eq!(
        p.params().values().map(String::as_str).collect::<Vec<_>>(),
        ["endpoint", "endpoint_be", "wide"]
    );
    let bound = p
        .bind_params(|n| match n {
            "endpoint" => Some(3),
            "endpoint_be" => Some(0x300),
            "wide" => Some(-1),
            _ => None,
        })
        .expect("all bound");
    assert_eq!(bound.insns()[0], Insn::store(Size::W, Reg::R10, -4, 3));
    assert_eq!(bound.insns()[1], Insn::mov64(Reg::R0, 0x7abc), "an unmarked equal constant survives");
    assert_eq!(bound.insns()[2], jeq(Reg::R1, 0x300, 2), "LD_IMM64 is two slots");
    assert_eq!(bound.insns()[3], Insn::ld_imm64(Reg::R2, u64::MAX));
    assert_eq!(
        p.bind_params(|n| (n != "wide").then_some(1)),
        Err(sluice_asm::BindError::Unbound { index: 3, name: "wide".into() })
    );
    assert_eq!(
        p.bind_params(|_| Some(1 << 40)),
        Err(sluice_asm::BindError::OutOfRange { index: 0, name: "endpoint".into(), value: 1 << 40 })
    );
}

#[test]
fn a_parameter_needs_an_immediate() {
    let mut b = Builder::new();
    b.mov(Reg::R0, Reg::R1).param("p").exit();
    assert_eq!(b.build(), Err(BuildError::NotAParameter { name: "p".into(), index: 0 }));
}
