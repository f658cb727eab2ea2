//! The text form beyond the instruction table: the spellings the parser tolerates, the
//! errors it gives, and whole-program listings.

use sluice_asm::text::{listing, parse_insn, parse_program, ParseErrorKind};
use sluice_asm::{AluOp, AtomicOp, Builder, CallTarget, Imm64, Insn, JmpCond, Program, Reg, Size, Src};

fn jmp(wide: bool, cond: JmpCond, dst: Reg, src: impl Into<Src>, off: i16) -> Insn {
    Insn::Jmp { wide, cond, dst, src: src.into(), off }
}

#[test]
fn tolerated_spellings() {
    let cases: Vec<(&str, Insn)> = vec![
        ("goto +5", Insn::Ja { long: false, off: 5 }),
        ("goto -2", Insn::Ja { long: false, off: -2 }),
        ("goto pc + 5", Insn::Ja { long: false, off: 5 }),
        ("gotol +70000", Insn::Ja { long: true, off: 70000 }),
        ("may_goto -1", Insn::MayGoto { off: -1 }),
        ("  r0   =    2  ", Insn::mov64(Reg::R0, 2)),
        ("r0 = 0x10", Insn::mov64(Reg::R0, 16)),
        ("r0 = 0xffffffff", Insn::mov64(Reg::R0, -1)),
        ("r0 = -2147483648", Insn::mov64(Reg::R0, i32::MIN)),
        ("w1 += 0x80000000", Insn::alu32(AluOp::Add, Reg::R1, i32::MIN)),
        ("r1 &= 0xff", Insn::alu64(AluOp::And, Reg::R1, 255)),
        ("if r1 == -1 goto pc+1", jmp(true, JmpCond::Eq, Reg::R1, -1, 1)),
        ("if r1 == 4294967295 goto +1", jmp(true, JmpCond::Eq, Reg::R1, -1, 1)),
        ("if w3 s< 7 goto pc-2", jmp(false, JmpCond::SLt, Reg::R3, 7, -2)),
        ("if r3>r2 goto pc+5", jmp(true, JmpCond::Gt, Reg::R3, Reg::R2, 5)),
        ("if r3 > r2 goto pc+5 <drop>", jmp(true, JmpCond::Gt, Reg::R3, Reg::R2, 5)),
        ("r2 = *(u32 *)(r1 + 4)", Insn::load(Size::W, Reg::R2, Reg::R1, 4)),
        ("r2 = *(u32 *)(r1+4)", Insn::load(Size::W, Reg::R2, Reg::R1, 4)),
        ("r2 = *(u32 *)(r1 - 4)", Insn::load(Size::W, Reg::R2, Reg::R1, -4)),
        ("r2 = *(u32*)(r1)", Insn::load(Size::W, Reg::R2, Reg::R1, 0)),
        ("r2 = *(u32 *)(r1 +0x10)", Insn::load(Size::W, Reg::R2, Reg::R1, 16)),
        ("w2 = *(u32 *)(r1 +4)", Insn::load(Size::W, Reg::R2, Reg::R1, 4)),
        ("*(u32 *)(r10 - 4) = w1", Insn::store(Size::W, Reg::R10, -4, Reg::R1)),
        ("*(u64 *)(r10 -8) = 0xffffffff", Insn::store(Size::DW, Reg::R10, -8, -1)),
        (
            "lock *(u32 *)(r1 +0) |= w2",
            Insn::Atomic {
                size: Size::W,
                op: AtomicOp::Or { fetch: false },
                base: Reg::R1,
                off: 0,
                src: Reg::R2,
            },
        ),
        (
            "w2 = atomic_fetch_and((u32 *)(r1 +8), w2)",
            Insn::Atomic {
                size: Size::W,
                op: AtomicOp::And { fetch: true },
                base: Reg::R1,
                off: 8,
                src: Reg::R2,
            },
        ),
        (
            "w0 = load_acquire((u8 *)(r1 + 0))",
            Insn::LoadAcquire { size: Size::B, dst: Reg::R0, base: Reg::R1, off: 0 },
        ),
        (
            "store_release((u32 *)(r1 +0), w2)",
            Insn::StoreRelease { size: Size::W, base: Reg::R1, off: 0, src: Reg::R2 },
        ),
        ("r0 = *(u32 *)skb[r3 - 4]", Insn::LdInd { size: Size::W, src: Reg::R3, imm: -4 }),
        ("r0 = *(u8 *)skb[r3]", Insn::LdInd { size: Size::B, src: Reg::R3, imm: 0 }),
        ("r1 = 18 ll", Insn::ld_imm64(Reg::R1, 18)),
        ("r1 = -1 ll", Insn::ld_imm64(Reg::R1, u64::MAX)),
        ("r1 = 0x1122334455667788", Insn::ld_imm64(Reg::R1, 0x1122_3344_5566_7788)),
        ("r1 = map_value[3]", Insn::LdImm64 { dst: Reg::R1, imm: Imm64::MapValue { fd: 3, off: 0 } }),
        ("r1 = btf_id[5]", Insn::LdImm64 { dst: Reg::R1, imm: Imm64::BtfId { id: 5, next: 0 } }),
        ("r1 = map[cilium_ct4]", Insn::LdImm64 { dst: Reg::R1, imm: Imm64::MapRef("cilium_ct4".into()) }),
        (
            "r1 = &map[.rodata]+8",
            Insn::LdImm64 { dst: Reg::R1, imm: Imm64::MapValueRef { map: ".rodata".into(), off: 8 } },
        ),
        ("call #999", Insn::call(999)),
        ("call bpf_redirect", Insn::call(23)),
        ("call kernel-function#77", Insn::Call(CallTarget::Kfunc { btf_id: 77, module: 0 })),
        ("call kfunc#77@-1", Insn::Call(CallTarget::Kfunc { btf_id: 77, module: -1 })),
        ("call pc+3 <subprog>", Insn::Call(CallTarget::Local(3))),
        ("call -3", Insn::Call(CallTarget::Local(-3))),
        // Verifier-log lines: index, opcode, and register state after `;`.
        ("12: (bf) r1 = r6", Insn::mov64(Reg::R1, Reg::R6)),
        ("0: (b7) r0 = 0                        ; R0_w=0", Insn::mov64(Reg::R0, 0)),
        ("(85) call bpf_map_lookup_elem#1", Insn::call(1)),
        ("3: (18) r1 = 0x5", Insn::ld_imm64(Reg::R1, 5)),
        ("3: (18) r1 = 0xffffffff", Insn::ld_imm64(Reg::R1, 0xffff_ffff)),
        ("5: (18) r1 = map_fd[4]", Insn::LdImm64 { dst: Reg::R1, imm: Imm64::MapFd(4) }),
        ("  7: r0 = 1", Insn::mov64(Reg::R0, 1)),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        match parse_insn(text) {
            Ok(got) if got == want => {}
            other => failures.push(format!("`{text}`\n  want {want:?}\n  got  {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rejections_name_column_and_expectation() {
    // (text, column, a fragment of the message)
    let cases = [
        ("", 1, "expected an instruction, found end of line"),
        ("r11 = 1", 1, "expected an instruction, found `r11`"),
        ("r1 = w2", 6, "expected a 64-bit register (r0..r10), found `w2`"),
        ("w1 += r2", 7, "expected a 32-bit register (w0..w10), found `r2`"),
        ("r1 = -r2", 7, "expected `r1` (negation is in place), found `r2`"),
        ("r1 = be16 r2", 11, "expected `r1` (byte swaps are in place), found `r2`"),
        ("w1 = be16 w1", 1, "expected a 64-bit destination for a byte swap"),
        ("w1 = (s32)w2", 7, "expected (s8) or (s16)"),
        ("r1 = 0x1ffffffffffffffff", 6, "out of range for 64 bits"),
        ("w1 = 0x100000000", 6, "0x100000000 is out of range for a 32-bit immediate"),
        ("r2 = *(u32 *)(r1 +40000)", 18, "40000 is out of range for a 16-bit offset"),
        ("r2 = *(s64 *)(r1 +0)", 8, "expected a type (u8, u16, u32, u64, s8, s16, s32), found `s64`"),
        ("*(s32 *)(r1 +0) = 1", 3, "expected a type (u8, u16, u32, u64), found `s32`"),
        ("goto pc+40000", 6, "out of range for a 16-bit offset (use gotol)"),
        ("goto drop", 6, "labels need a whole program"),
        ("goto r1", 6, "expected a jump target"),
        ("if r1 =< r2 goto pc+1", 7, "expected a condition"),
        ("if r1 > r2 goto", 16, "found end of line"),
        ("r1 = r2 r3", 9, "expected end of instruction, found `r3`"),
        ("call bpf_map_lookup_elem#2", 26, "helper `bpf_map_lookup_elem` is #1, not #2"),
        ("call bpf_nonesuch#2", 6, "expected a helper name of Linux 6.18"),
        ("r2 = atomic64_fetch_add((u32 *)(r1 +0), r2)", 25, "expected (u64 *) for atomic64_"),
        (
            "r2 = atomic64_fetch_add((u64 *)(r1 +0), r3)",
            41,
            "expected `r2` (the old value lands in the source register)",
        ),
        ("r1 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)", 1, "expected `r0` (cmpxchg returns in r0)"),
        ("r1 = *(u16 *)skb[12]", 1, "expected `r0` (packet loads write r0)"),
        ("w1 = map_fd[3]", 1, "expected a 64-bit destination for LD_IMM64"),
        ("r1 = frob", 6, "expected a value, register, memory operand"),
        ("r1 = 0x", 8, "expected hex digits, found end of line"),
        ("r1 $ 2", 4, "found `$`"),
        ("12: (b7) r1 = r6", 6, "opcode (b7) does not match `r1 = r6`, which encodes as (bf)"),
    ];
    let mut failures = Vec::new();
    for (text, column, message) in cases {
        match parse_insn(text) {
            Err(e) if e.column == column && e.to_string().contains(message) && e.line.is_none() => {}
            other => failures.push(format!("`{text}`\n  want column {column}: {message}\n  got  {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn display_and_from_str_use_the_text_form() {
    let insn = Insn::load(Size::H, Reg::R3, Reg::R7, 12);
    assert_eq!(insn.to_string(), "r3 = *(u16 *)(r7 +12)");
    assert_eq!("r3 = *(u16 *)(r7 +12)".parse::<Insn>(), Ok(insn));
}

fn sample() -> Program {
    let mut b = Builder::new();
    b.label("entry")
        .comment("load the packet bounds")
        .load(Size::W, Reg::R2, Reg::R1, 0)
        .load(Size::W, Reg::R3, Reg::R1, 4)
        .ld_map(Reg::R4, "conntrack")
        .mov(Reg::R5, Reg::R2)
        .add(Reg::R5, 14)
        .jmp(JmpCond::Gt, Reg::R5, Reg::R3, "drop")
        .call_local("subprog")
        .ret(2)
        .label("drop")
        .comment("too short")
        .comment("second line\nof a comment")
        .ret(1)
        .label("subprog")
        .ret(0)
        .label("end");
    b.build().expect("sample builds")
}

#[test]
fn listing_format() {
    let want = "\
entry:
; load the packet bounds
   0: r2 = *(u32 *)(r1 +0)
   1: r3 = *(u32 *)(r1 +4)
   2: r4 = map[conntrack]
   4: r5 = r2
   5: r5 += 14
   6: if r5 > r3 goto pc+3 <drop>
   7: call pc+4 <subprog>
   8: r0 = 2
   9: exit
drop:
; too short
; second line
; of a comment
  10: r0 = 1
  11: exit
subprog:
  12: r0 = 0
  13: exit
end:
";
    assert_eq!(listing(&sample()), want);
}

#[test]
fn listing_reads_back() {
    let prog = sample();
    let back = parse_program(&listing(&prog)).expect("listing parses");
    // The one multi-line comment reads back as two comments.
    assert_eq!(back.insns(), prog.insns());
    assert_eq!(back.labels(), prog.labels());
    assert_eq!(back.comments()[&0], prog.comments()[&0]);
    assert_eq!(back.comments()[&9], vec!["too short", "second line", "of a comment"]);
}

#[test]
fn program_with_symbolic_targets() {
    let text = "
        ; r0 = (r1 == 0) ? 1 : 2, the long way round
        start:
          if r1 == 0 goto one
          r0 = 2
          goto out
        one:
          r0 = 1
          goto out
        out:
          call helper
          r1 = func helper
          may_goto out
          gotol start
          exit
        helper:
          exit
    ";
    let prog = parse_program(text).expect("parses");
    let want = vec![
        jmp(true, JmpCond::Eq, Reg::R1, 0, 2),
        Insn::mov64(Reg::R0, 2),
        Insn::Ja { long: false, off: 2 },
        Insn::mov64(Reg::R0, 1),
        // Kept although it jumps to the next instruction: the text is assembled verbatim.
        Insn::Ja { long: false, off: 0 },
        Insn::Call(CallTarget::Local(5)),
        Insn::LdImm64 { dst: Reg::R1, imm: Imm64::Func(4) },
        Insn::MayGoto { off: -4 },
        Insn::Ja { long: true, off: -10 },
        Insn::Exit,
        Insn::Exit,
    ];
    assert_eq!(prog.insns(), want.as_slice());
    assert_eq!(prog.labels()[&5], vec!["out"]);
    assert_eq!(prog.comments()[&0], vec!["r0 = (r1 == 0) ? 1 : 2, the long way round"]);
}

#[test]
fn program_errors_name_the_line() {
    let cases = [
        ("r0 = 0\nfrob\nexit\n", 2, 1, "expected an instruction, found `frob`"),
        ("a:\nr0 = 0\na:\nexit\n", 3, 1, "label `a` is already defined on line 1"),
        ("r0 = 0\n\n  goto nowhere\nexit\n", 3, 8, "label `nowhere` is not defined"),
        ("r0 = 0\n   1: (95) r0 = 1\n", 2, 8, "opcode (95) does not match"),
    ];
    for (text, line, column, message) in cases {
        let e = parse_program(text).expect_err(text);
        assert_eq!((e.line, e.column), (Some(line), column), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("line {line}, column {column}: ")), "{e}");
        assert!(e.to_string().contains(message), "{text:?}: {e}");
    }
}

#[test]
fn program_jump_out_of_range_names_the_line() {
    let mut text = String::from("if r1 == 0 goto far\n");
    for _ in 0..40_000 {
        text.push_str("r0 = 0\n");
    }
    text.push_str("far:\nexit\n");
    let e = parse_program(&text).expect_err("too far for a 16-bit offset");
    assert_eq!((e.line, e.column), (Some(1), 17));
    assert_eq!(e.kind, ParseErrorKind::JumpOutOfRange { label: "far".into(), distance: 40_000 });
    // gotol reaches it.
    let text = text.replacen("if r1 == 0 goto far", "gotol far", 1);
    assert_eq!(parse_program(&text).expect("gotol reaches").insns()[0], Insn::Ja { long: true, off: 40_000 });
}

#[test]
fn an_excerpt_shows_the_failing_instruction_in_context() {
    let mut b = Builder::new();
    b.label("entry").mov(Reg::R0, 0);
    for i in 0..20 {
        b.add(Reg::R0, i);
    }
    b.label("check").comment("is r0 big?");
    b.jmp(JmpCond::Gt, Reg::R0, 100, "out");
    b.mov(Reg::R0, 1).mov(Reg::R0, 2).mov(Reg::R0, 3);
    b.label("out").exit();
    let p = b.build().expect("builds");
    let e = sluice_asm::text::excerpt(&p, 21, 2);
    assert_eq!(
        e,
        "entry:\n  ...\n    19: r0 += 18\n    20: r0 += 19\n  check:\n  ; is r0 big?\n>   21: if r0 > 0x64 goto pc+3 <out>\n    22: r0 = 1\n    23: r0 = 2\n  ...\n"
    );
    // A kernel log naming slot 21 last points at the same instruction.
    let log = "0: (b7) r0 = 0\n21: (25) if r0 > 0x64 goto pc+3\nR0 invalid mem access 'scalar'\n";
    assert_eq!(sluice_asm::text::failing_slot_in_log(log), Some(21));
    assert_eq!(sluice_asm::text::rejection_context(&p, log), sluice_asm::text::excerpt(&p, 21, 6));
    assert_eq!(sluice_asm::text::rejection_context(&p, "no slot here"), sluice_asm::text::listing(&p));
    assert_eq!(sluice_asm::text::log_tail("a\nb\nc", 2), "[1 earlier lines]\nb\nc");
}

#[test]
fn listings_name_stack_slots_and_fields() {
    let mut b = Builder::new();
    b.stack_slot("tuple", -16, 16).stack_slot("tuple.daddr", -12, 4).stack_slot("key", -20, 4);
    b.store(Size::W, Reg::R10, -16, Reg::R1);
    b.store(Size::W, Reg::R10, -12, 0);
    b.load(Size::H, Reg::R2, Reg::R10, -8);
    b.mov(Reg::R2, Reg::R10).add(Reg::R2, -20);
    b.store(Size::DW, Reg::R10, -32, 0);
    b.exit();
    let p = b.build().expect("builds");
    assert_eq!(
        listing(&p),
        "   0: *(u32 *)(r10 -16) = r1 ; tuple\n   1: *(u32 *)(r10 -12) = 0 ; tuple.daddr\n   2: r2 = *(u16 *)(r10 -8) ; tuple+8\n   3: r2 = r10\n   4: r2 += -20 ; key\n   5: *(u64 *)(r10 -32) = 0\n   6: exit\n"
    );
    let back = parse_program(&listing(&p)).expect("annotations parse as remarks");
    assert_eq!(back.insns(), p.insns());
}
