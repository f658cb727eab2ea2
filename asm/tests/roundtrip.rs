//! Round trips over random instructions: bytes, text and listings give back what went in,
//! and decoding is strict (whatever decodes re-encodes to the same bytes).

use proptest::prelude::*;
use proptest::sample::select;
use sluice_asm::text::{format_insn, listing, parse_insn, parse_program};
use sluice_asm::{
    decode, encode, AluOp, AtomicOp, Builder, CallTarget, Endian, Imm64, Insn, JmpCond, Program, Reg, Size,
    Src,
};

fn reg() -> impl Strategy<Value = Reg> {
    select(Reg::ALL.to_vec())
}

/// Immediates: the whole range, with the small values programs mostly use.
fn imm() -> impl Strategy<Value = i32> {
    prop_oneof![any::<i32>(), -64i32..64]
}

fn off16() -> impl Strategy<Value = i16> {
    prop_oneof![any::<i16>(), -64i16..64]
}

fn src() -> impl Strategy<Value = Src> {
    prop_oneof![reg().prop_map(Src::Reg), imm().prop_map(Src::Imm)]
}

fn size() -> impl Strategy<Value = Size> {
    select(vec![Size::B, Size::H, Size::W, Size::DW])
}

fn atomic_op() -> impl Strategy<Value = AtomicOp> {
    select(vec![
        AtomicOp::Add { fetch: false },
        AtomicOp::Add { fetch: true },
        AtomicOp::Or { fetch: false },
        AtomicOp::Or { fetch: true },
        AtomicOp::And { fetch: false },
        AtomicOp::And { fetch: true },
        AtomicOp::Xor { fetch: false },
        AtomicOp::Xor { fetch: true },
        AtomicOp::Xchg,
        AtomicOp::CmpXchg,
    ])
}

/// Every encodable `LD_IMM64` source (symbolic map references excluded).
fn imm64() -> impl Strategy<Value = Imm64> {
    prop_oneof![
        any::<u64>().prop_map(Imm64::Const),
        (0u64..1 << 20).prop_map(Imm64::Const),
        any::<i32>().prop_map(Imm64::MapFd),
        (any::<i32>(), any::<u32>()).prop_map(|(fd, off)| Imm64::MapValue { fd, off }),
        any::<i32>().prop_map(Imm64::MapIdx),
        (any::<i32>(), any::<u32>()).prop_map(|(idx, off)| Imm64::MapIdxValue { idx, off }),
        (any::<i32>(), any::<i32>()).prop_map(|(id, next)| Imm64::BtfId { id, next }),
        any::<i32>().prop_map(Imm64::Func),
    ]
}

/// Random valid instructions of every form, each within its encodable domain.
fn insn() -> impl Strategy<Value = Insn> {
    prop_oneof![
        (any::<bool>(), select(AluOp::ALL.to_vec()), reg(), src())
            .prop_map(|(wide, op, dst, src)| Insn::Alu { wide, op, dst, src }),
        (any::<bool>(), reg()).prop_map(|(wide, dst)| Insn::Neg { wide, dst }),
        (select(vec![(false, 8u8), (false, 16), (true, 8), (true, 16), (true, 32)]), reg(), reg())
            .prop_map(|((wide, bits), dst, src)| Insn::MovSx { wide, bits, dst, src }),
        (select(vec![Endian::ToLe, Endian::ToBe, Endian::Swap]), select(vec![16u8, 32, 64]), reg())
            .prop_map(|(kind, bits, dst)| Insn::Endian { kind, bits, dst }),
        (reg(), imm64()).prop_map(|(dst, imm)| Insn::LdImm64 { dst, imm }),
        (size(), any::<bool>(), reg(), reg(), off16()).prop_map(|(size, signed, dst, base, off)| {
            Insn::Load { size, signed: signed && size != Size::DW, dst, base, off }
        }),
        (size(), reg(), off16(), src()).prop_map(|(size, base, off, src)| Insn::Store {
            size,
            base,
            off,
            src
        }),
        (select(vec![Size::W, Size::DW]), atomic_op(), reg(), off16(), reg())
            .prop_map(|(size, op, base, off, src)| Insn::Atomic { size, op, base, off, src }),
        (size(), reg(), reg(), off16()).prop_map(|(size, dst, base, off)| Insn::LoadAcquire {
            size,
            dst,
            base,
            off
        }),
        (size(), reg(), off16(), reg()).prop_map(|(size, base, off, src)| Insn::StoreRelease {
            size,
            base,
            off,
            src
        }),
        (select(vec![Size::B, Size::H, Size::W]), imm()).prop_map(|(size, imm)| Insn::LdAbs { size, imm }),
        (select(vec![Size::B, Size::H, Size::W]), reg(), imm()).prop_map(|(size, src, imm)| Insn::LdInd {
            size,
            src,
            imm
        }),
        (any::<bool>(), select(JmpCond::ALL.to_vec()), reg(), src(), off16())
            .prop_map(|(wide, cond, dst, src, off)| Insn::Jmp { wide, cond, dst, src, off }),
        off16().prop_map(|off| Insn::Ja { long: false, off: i32::from(off) }),
        any::<i32>().prop_map(|off| Insn::Ja { long: true, off }),
        off16().prop_map(|off| Insn::MayGoto { off }),
        prop_oneof![0i32..212, any::<i32>()].prop_map(|id| Insn::Call(CallTarget::Helper(id))),
        any::<i32>().prop_map(|off| Insn::Call(CallTarget::Local(off))),
        (any::<i32>(), any::<i16>())
            .prop_map(|(btf_id, module)| Insn::Call(CallTarget::Kfunc { btf_id, module })),
        Just(Insn::Exit),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,12}"
}

/// Instructions as a listing may hold them: the encodable ones plus symbolic maps.
fn listed_insn() -> impl Strategy<Value = Insn> {
    prop_oneof![
        8 => insn(),
        1 => (reg(), name()).prop_map(|(dst, n)| Insn::LdImm64 { dst, imm: Imm64::MapRef(n) }),
        1 => (reg(), name(), any::<u32>())
            .prop_map(|(dst, map, off)| Insn::LdImm64 { dst, imm: Imm64::MapValueRef { map, off } }),
    ]
}

/// Raw fields biased toward what decodes: zero or small offsets and immediates, and the
/// immediates that select byte swaps, atomics and acquire/release.
fn slot_bytes() -> impl Strategy<Value = [u8; 8]> {
    let off = prop_oneof![Just(0i16), -4i16..4, any::<i16>()];
    let imm = prop_oneof![
        Just(0i32),
        -4i32..4,
        select(vec![
            16, 32, 64, 0x01, 0x40, 0x41, 0x50, 0x51, 0xa0, 0xa1, 0xe1, 0xf1, 0x100, 0x110, 0xe0, 0xf0
        ]),
        any::<i32>(),
    ];
    let regs = prop_oneof![Just(0u8), 0u8..=10, any::<u8>().prop_map(|r| r & 0x0f)];
    (any::<u8>(), regs.clone(), regs, off, imm).prop_map(|(code, dst, src, off, imm)| {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn bytes_round_trip(i in insn()) {
        let bytes = encode(std::slice::from_ref(&i)).map_err(|e| TestCaseError::fail(format!("{i:?}: {e}")))?;
        prop_assert_eq!(bytes.len(), 8 * i.slots());
        prop_assert_eq!(decode(&bytes), Ok(vec![i]));
    }

    #[test]
    fn text_round_trip(i in listed_insn()) {
        let text = format_insn(&i);
        prop_assert_eq!(parse_insn(&text), Ok(i), "text: `{}`", text);
    }

    #[test]
    fn decoding_is_strict(b in slot_bytes()) {
        if let Ok(insns) = decode(&b) {
            prop_assert_eq!(encode(&insns), Ok(b.to_vec()), "decoded as {:?}", insns);
        }
    }

    #[test]
    fn decoding_is_strict_over_two_slots(first in slot_bytes(), second in slot_bytes(), ld in any::<bool>()) {
        let mut b = first.to_vec();
        if ld {
            // Make the first slot an LD_IMM64 so that its second slot is checked too.
            b[0] = 0x18;
        }
        b.extend_from_slice(&second);
        if let Ok(insns) = decode(&b) {
            prop_assert_eq!(encode(&insns), Ok(b.to_vec()), "decoded as {:?}", insns);
        }
    }

    #[test]
    fn decoded_slots_print_and_parse(b in slot_bytes()) {
        if let Ok(insns) = decode(&b) {
            for i in insns {
                prop_assert_eq!(parse_insn(&format_insn(&i)), Ok(i));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn listing_round_trip(insns in prop::collection::vec(listed_insn(), 0..40)) {
        let prog = Program::from_insns(insns);
        let text = listing(&prog);
        prop_assert_eq!(parse_program(&text), Ok(prog), "listing:\n{}", text);
    }

    #[test]
    fn listing_round_trip_with_labels_and_comments(
        items in prop::collection::vec(
            (listed_insn(), any::<bool>(), prop::option::of("[ -~]{0,24}")),
            0..40,
        ),
        end_label in any::<bool>(),
    ) {
        let mut b = Builder::new();
        for (n, (insn, label, comment)) in items.into_iter().enumerate() {
            if label {
                b.label(format!("l{n}"));
            }
            if let Some(c) = comment {
                b.comment(c);
            }
            b.emit(insn);
        }
        if end_label {
            b.label("end");
        }
        let prog = b.build().expect("no symbolic targets");
        let text = listing(&prog);
        prop_assert_eq!(parse_program(&text), Ok(prog), "listing:\n{}", text);
    }
}

/// Every opcode byte against a spread of field values: whatever decodes re-encodes to the
/// same bytes, and the opcodes that decode at all are exactly those Linux 6.18 defines.
#[test]
fn decoding_is_strict_for_every_opcode() {
    let regs = [0u8, 1, 10, 11];
    let offs = [0i16, 1, -1, 8, 16, 32];
    let imms =
        [0i32, 1, -1, 16, 32, 64, 0x40, 0x41, 0x50, 0x51, 0xa0, 0xa1, 0xe0, 0xe1, 0xf0, 0xf1, 0x100, 0x110];
    let mut accepted = std::collections::BTreeSet::new();
    for code in 0..=255u8 {
        for dst in regs {
            for src in regs {
                for off in offs {
                    for imm in imms {
                        let mut b = vec![code, dst | (src << 4)];
                        b.extend_from_slice(&off.to_le_bytes());
                        b.extend_from_slice(&imm.to_le_bytes());
                        if code == 0x18 {
                            b.extend_from_slice(&[0; 8]); // LD_IMM64's second slot
                        }
                        if let Ok(insns) = decode(&b) {
                            accepted.insert(code);
                            assert_eq!(encode(&insns).as_ref(), Ok(&b), "{b:02x?} decoded as {insns:?}");
                        }
                    }
                }
            }
        }
    }
    // From include/uapi/linux/bpf.h: class | op | source, class | mode | size.
    let mut want = std::collections::BTreeSet::new();
    let alu_ops = [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xa0, 0xb0, 0xc0];
    for class in [0x04u8, 0x07] {
        for op in alu_ops {
            want.extend([class | op, class | op | 0x08]);
        }
        want.extend([class | 0x80, class | 0xd0]);
    }
    want.insert(0x04 | 0xd0 | 0x08); // be16/32/64; ALU64 | END | X is not defined
    let jmp_ops = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xa0, 0xb0, 0xc0, 0xd0];
    for class in [0x05u8, 0x06] {
        for op in jmp_ops {
            want.extend([class | op, class | op | 0x08]);
        }
        want.insert(class); // goto / gotol
    }
    want.extend([0x85, 0x95, 0xe5]); // call, exit, may_goto (JMP only)
    want.extend([0x18, 0x20, 0x28, 0x30, 0x40, 0x48, 0x50]); // ld_imm64, ld_abs, ld_ind
    want.extend([0x61, 0x69, 0x71, 0x79, 0x81, 0x89, 0x91]); // ldx mem, memsx
    want.extend([0x62, 0x6a, 0x72, 0x7a]); // st mem
    want.extend([0x63, 0x6b, 0x73, 0x7b, 0xc3, 0xcb, 0xd3, 0xdb]); // stx mem, atomic
    assert_eq!(want.len(), 128);
    let extra: Vec<String> = accepted.difference(&want).map(|c| format!("{c:#04x}")).collect();
    let missing: Vec<String> = want.difference(&accepted).map(|c| format!("{c:#04x}")).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "accepted but undefined: {extra:?}; defined but rejected: {missing:?}"
    );
}
