//! The instruction table: every opcode class and operation as (instruction, kernel bytes,
//! verifier-log text). Each row must encode to its bytes, decode from them, print as its
//! text and parse back from it.
//!
//! Opcode bytes below are written from `include/uapi/linux/bpf.h` and `bpf_common.h`, not
//! from the encoder: class ALU 0x04 / ALU64 0x07 / JMP 0x05 / JMP32 0x06, `BPF_X` 0x08.

use sluice_asm::text::{format_insn, parse_insn};
use sluice_asm::{decode, encode, AluOp, AtomicOp, CallTarget, Endian, Imm64, Insn, JmpCond, Reg, Size, Src};

struct Row {
    insn: Insn,
    hex: String,
    text: String,
}

fn row(insn: Insn, hex: &str, text: &str) -> Row {
    Row { insn, hex: hex.to_string(), text: text.to_string() }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn bytes_of(hex: &str) -> Vec<u8> {
    hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("table hex")).collect()
}

/// One 8-byte slot from its fields.
fn slot(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> String {
    let mut b = vec![code, dst | (src << 4)];
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&imm.to_le_bytes());
    hex_of(&b)
}

/// Check every row; report every failing row at once, with input, expected and actual.
fn run(rows: &[Row]) {
    let mut failures = Vec::new();
    for r in rows {
        let want = bytes_of(&r.hex);
        let mut problems = Vec::new();
        match encode(std::slice::from_ref(&r.insn)) {
            Ok(b) if b == want => {}
            Ok(b) => problems.push(format!("encode: got {}", hex_of(&b))),
            Err(e) => problems.push(format!("encode: {e}")),
        }
        match decode(&want) {
            Ok(v) if v == [r.insn.clone()] => {}
            other => problems.push(format!("decode: got {other:?}")),
        }
        let text = format_insn(&r.insn);
        if text != r.text {
            problems.push(format!("format: got `{text}`"));
        }
        match parse_insn(&r.text) {
            Ok(i) if i == r.insn => {}
            other => problems.push(format!("parse: got {other:?}")),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{:?}\n  want {} `{}`\n  {}",
                r.insn,
                r.hex,
                r.text,
                problems.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn anchor_rows() {
    // Bytes checked by hand against the kernel's encoding.
    run(&[
        row(Insn::mov64(Reg::R0, 2), "b7 00 00 00 02 00 00 00", "r0 = 2"),
        row(Insn::Exit, "95 00 00 00 00 00 00 00", "exit"),
        row(Insn::load(Size::W, Reg::R2, Reg::R1, 4), "61 12 04 00 00 00 00 00", "r2 = *(u32 *)(r1 +4)"),
        row(
            Insn::Jmp { wide: true, cond: JmpCond::Gt, dst: Reg::R3, src: Src::Reg(Reg::R2), off: 5 },
            "2d 23 05 00 00 00 00 00",
            "if r3 > r2 goto pc+5",
        ),
        row(
            Insn::Endian { kind: Endian::ToBe, bits: 16, dst: Reg::R1 },
            "dc 01 00 00 10 00 00 00",
            "r1 = be16 r1",
        ),
        row(
            Insn::Atomic {
                size: Size::DW,
                op: AtomicOp::Add { fetch: false },
                base: Reg::R1,
                off: 0,
                src: Reg::R2,
            },
            "db 21 00 00 00 00 00 00",
            "lock *(u64 *)(r1 +0) += r2",
        ),
        row(Insn::mov64(Reg::R1, Reg::R6), "bf 61 00 00 00 00 00 00", "r1 = r6"),
        row(Insn::mov32(Reg::R0, -1), "b4 00 00 00 ff ff ff ff", "w0 = -1"),
        row(Insn::store(Size::W, Reg::R10, -4, Reg::R1), "63 1a fc ff 00 00 00 00", "*(u32 *)(r10 -4) = r1"),
        row(Insn::store(Size::B, Reg::R10, -1, 5), "72 0a ff ff 05 00 00 00", "*(u8 *)(r10 -1) = 5"),
    ]);
}

fn alu_op(op: AluOp) -> (u8, i16, &'static str) {
    match op {
        AluOp::Add => (0x00, 0, "+="),
        AluOp::Sub => (0x10, 0, "-="),
        AluOp::Mul => (0x20, 0, "*="),
        AluOp::Div => (0x30, 0, "/="),
        AluOp::SDiv => (0x30, 1, "s/="),
        AluOp::Or => (0x40, 0, "|="),
        AluOp::And => (0x50, 0, "&="),
        AluOp::Lsh => (0x60, 0, "<<="),
        AluOp::Rsh => (0x70, 0, ">>="),
        AluOp::Mod => (0x90, 0, "%="),
        AluOp::SMod => (0x90, 1, "s%="),
        AluOp::Xor => (0xa0, 0, "^="),
        AluOp::Mov => (0xb0, 0, "="),
        AluOp::Arsh => (0xc0, 0, "s>>="),
    }
}

#[test]
fn alu_every_op_width_and_source() {
    let mut rows = Vec::new();
    for op in AluOp::ALL {
        let (code, off, text) = alu_op(op);
        for wide in [false, true] {
            let (class, p) = if wide { (0x07, 'r') } else { (0x04, 'w') };
            rows.push(Row {
                insn: Insn::Alu { wide, op, dst: Reg::R3, src: Src::Imm(-7) },
                hex: slot(class | code, 3, 0, off, -7),
                text: format!("{p}3 {text} -7"),
            });
            rows.push(Row {
                insn: Insn::Alu { wide, op, dst: Reg::R3, src: Src::Reg(Reg::R9) },
                hex: slot(class | code | 0x08, 3, 9, off, 0),
                text: format!("{p}3 {text} {p}9"),
            });
        }
    }
    assert_eq!(rows.len(), 56);
    run(&rows);
}

#[test]
fn alu_unary_movsx_and_byte_order() {
    run(&[
        row(Insn::Neg { wide: true, dst: Reg::R1 }, "87 01 00 00 00 00 00 00", "r1 = -r1"),
        row(Insn::Neg { wide: false, dst: Reg::R7 }, "84 07 00 00 00 00 00 00", "w7 = -w7"),
        row(
            Insn::MovSx { wide: true, bits: 8, dst: Reg::R1, src: Reg::R2 },
            "bf 21 08 00 00 00 00 00",
            "r1 = (s8)r2",
        ),
        row(
            Insn::MovSx { wide: true, bits: 16, dst: Reg::R1, src: Reg::R2 },
            "bf 21 10 00 00 00 00 00",
            "r1 = (s16)r2",
        ),
        row(
            Insn::MovSx { wide: true, bits: 32, dst: Reg::R1, src: Reg::R2 },
            "bf 21 20 00 00 00 00 00",
            "r1 = (s32)r2",
        ),
        row(
            Insn::MovSx { wide: false, bits: 8, dst: Reg::R1, src: Reg::R2 },
            "bc 21 08 00 00 00 00 00",
            "w1 = (s8)w2",
        ),
        row(
            Insn::MovSx { wide: false, bits: 16, dst: Reg::R1, src: Reg::R2 },
            "bc 21 10 00 00 00 00 00",
            "w1 = (s16)w2",
        ),
        row(
            Insn::Endian { kind: Endian::ToBe, bits: 16, dst: Reg::R1 },
            "dc 01 00 00 10 00 00 00",
            "r1 = be16 r1",
        ),
        row(
            Insn::Endian { kind: Endian::ToBe, bits: 32, dst: Reg::R2 },
            "dc 02 00 00 20 00 00 00",
            "r2 = be32 r2",
        ),
        row(
            Insn::Endian { kind: Endian::ToBe, bits: 64, dst: Reg::R3 },
            "dc 03 00 00 40 00 00 00",
            "r3 = be64 r3",
        ),
        row(
            Insn::Endian { kind: Endian::ToLe, bits: 16, dst: Reg::R1 },
            "d4 01 00 00 10 00 00 00",
            "r1 = le16 r1",
        ),
        row(
            Insn::Endian { kind: Endian::ToLe, bits: 32, dst: Reg::R1 },
            "d4 01 00 00 20 00 00 00",
            "r1 = le32 r1",
        ),
        row(
            Insn::Endian { kind: Endian::ToLe, bits: 64, dst: Reg::R1 },
            "d4 01 00 00 40 00 00 00",
            "r1 = le64 r1",
        ),
        row(
            Insn::Endian { kind: Endian::Swap, bits: 16, dst: Reg::R9 },
            "d7 09 00 00 10 00 00 00",
            "r9 = bswap16 r9",
        ),
        row(
            Insn::Endian { kind: Endian::Swap, bits: 32, dst: Reg::R9 },
            "d7 09 00 00 20 00 00 00",
            "r9 = bswap32 r9",
        ),
        row(
            Insn::Endian { kind: Endian::Swap, bits: 64, dst: Reg::R9 },
            "d7 09 00 00 40 00 00 00",
            "r9 = bswap64 r9",
        ),
    ]);
}

#[test]
fn loads_and_stores_every_size() {
    let sizes = [
        (Size::B, 0x10, "u8", "s8"),
        (Size::H, 0x08, "u16", "s16"),
        (Size::W, 0x00, "u32", "s32"),
        (Size::DW, 0x18, "u64", ""),
    ];
    let mut rows = Vec::new();
    for (size, bits, u, s) in sizes {
        rows.push(Row {
            insn: Insn::Load { size, signed: false, dst: Reg::R2, base: Reg::R1, off: 4 },
            hex: slot(0x61 | bits, 2, 1, 4, 0),
            text: format!("r2 = *({u} *)(r1 +4)"),
        });
        if size != Size::DW {
            rows.push(Row {
                insn: Insn::Load { size, signed: true, dst: Reg::R0, base: Reg::R10, off: -8 },
                hex: slot(0x81 | bits, 0, 10, -8, 0),
                text: format!("r0 = *({s} *)(r10 -8)"),
            });
        }
        rows.push(Row {
            insn: Insn::store(size, Reg::R10, -16, Reg::R6),
            hex: slot(0x63 | bits, 10, 6, -16, 0),
            text: format!("*({u} *)(r10 -16) = r6"),
        });
        rows.push(Row {
            insn: Insn::store(size, Reg::R1, 0, -1),
            hex: slot(0x62 | bits, 1, 0, 0, -1),
            text: format!("*({u} *)(r1 +0) = -1"),
        });
    }
    rows.push(row(
        Insn::load(Size::DW, Reg::R0, Reg::R10, -8),
        "79 a0 f8 ff 00 00 00 00",
        "r0 = *(u64 *)(r10 -8)",
    ));
    rows.push(row(
        Insn::Load { size: Size::W, signed: true, dst: Reg::R2, base: Reg::R1, off: 4 },
        "81 12 04 00 00 00 00 00",
        "r2 = *(s32 *)(r1 +4)",
    ));
    rows.push(row(
        Insn::store(Size::DW, Reg::R10, -8, 0x7fff_ffff),
        "7a 0a f8 ff ff ff ff 7f",
        "*(u64 *)(r10 -8) = 2147483647",
    ));
    run(&rows);
}

#[test]
fn atomics_every_op_with_and_without_fetch() {
    let ops = [(0x00, "+=", "add"), (0x40, "|=", "or"), (0x50, "&=", "and"), (0xa0, "^=", "xor")];
    let mut rows = Vec::new();
    for (size, code, ty, w64) in [(Size::W, 0xc3, "u32", ""), (Size::DW, 0xdb, "u64", "64")] {
        for (imm, assign, name) in ops {
            for fetch in [false, true] {
                let op = match name {
                    "add" => AtomicOp::Add { fetch },
                    "or" => AtomicOp::Or { fetch },
                    "and" => AtomicOp::And { fetch },
                    _ => AtomicOp::Xor { fetch },
                };
                let text = if fetch {
                    format!("r3 = atomic{w64}_fetch_{name}(({ty} *)(r1 -8), r3)")
                } else {
                    format!("lock *({ty} *)(r1 -8) {assign} r3")
                };
                rows.push(Row {
                    insn: Insn::Atomic { size, op, base: Reg::R1, off: -8, src: Reg::R3 },
                    hex: slot(code, 1, 3, -8, imm | i32::from(fetch)),
                    text,
                });
            }
        }
        rows.push(Row {
            insn: Insn::Atomic { size, op: AtomicOp::Xchg, base: Reg::R1, off: 0, src: Reg::R2 },
            hex: slot(code, 1, 2, 0, 0xe1),
            text: format!("r2 = atomic{w64}_xchg(({ty} *)(r1 +0), r2)"),
        });
        rows.push(Row {
            insn: Insn::Atomic { size, op: AtomicOp::CmpXchg, base: Reg::R1, off: 0, src: Reg::R2 },
            hex: slot(code, 1, 2, 0, 0xf1),
            text: format!("r0 = atomic{w64}_cmpxchg(({ty} *)(r1 +0), r0, r2)"),
        });
    }
    rows.push(row(
        Insn::Atomic {
            size: Size::W,
            op: AtomicOp::And { fetch: true },
            base: Reg::R1,
            off: 8,
            src: Reg::R2,
        },
        "c3 21 08 00 51 00 00 00",
        "r2 = atomic_fetch_and((u32 *)(r1 +8), r2)",
    ));
    rows.push(row(
        Insn::Atomic {
            size: Size::DW,
            op: AtomicOp::Add { fetch: true },
            base: Reg::R1,
            off: 0,
            src: Reg::R2,
        },
        "db 21 00 00 01 00 00 00",
        "r2 = atomic64_fetch_add((u64 *)(r1 +0), r2)",
    ));
    run(&rows);
}

#[test]
fn load_acquire_and_store_release_every_size() {
    let mut rows = Vec::new();
    for (size, code, ty) in
        [(Size::B, 0xd3, "u8"), (Size::H, 0xcb, "u16"), (Size::W, 0xc3, "u32"), (Size::DW, 0xdb, "u64")]
    {
        rows.push(Row {
            insn: Insn::LoadAcquire { size, dst: Reg::R0, base: Reg::R1, off: 2 },
            hex: slot(code, 0, 1, 2, 0x100),
            text: format!("r0 = load_acquire(({ty} *)(r1 +2))"),
        });
        rows.push(Row {
            insn: Insn::StoreRelease { size, base: Reg::R1, off: 0, src: Reg::R2 },
            hex: slot(code, 1, 2, 0, 0x110),
            text: format!("store_release(({ty} *)(r1 +0), r2)"),
        });
    }
    rows.push(row(
        Insn::LoadAcquire { size: Size::DW, dst: Reg::R0, base: Reg::R1, off: 0 },
        "db 10 00 00 00 01 00 00",
        "r0 = load_acquire((u64 *)(r1 +0))",
    ));
    run(&rows);
}

#[test]
fn legacy_packet_loads() {
    run(&[
        row(Insn::LdAbs { size: Size::B, imm: 23 }, "30 00 00 00 17 00 00 00", "r0 = *(u8 *)skb[23]"),
        row(Insn::LdAbs { size: Size::H, imm: 12 }, "28 00 00 00 0c 00 00 00", "r0 = *(u16 *)skb[12]"),
        row(Insn::LdAbs { size: Size::W, imm: 26 }, "20 00 00 00 1a 00 00 00", "r0 = *(u32 *)skb[26]"),
        row(
            Insn::LdInd { size: Size::B, src: Reg::R3, imm: 0 },
            "50 30 00 00 00 00 00 00",
            "r0 = *(u8 *)skb[r3 + 0]",
        ),
        row(
            Insn::LdInd { size: Size::H, src: Reg::R3, imm: 2 },
            "48 30 00 00 02 00 00 00",
            "r0 = *(u16 *)skb[r3 + 2]",
        ),
        row(
            Insn::LdInd { size: Size::W, src: Reg::R3, imm: 12 },
            "40 30 00 00 0c 00 00 00",
            "r0 = *(u32 *)skb[r3 + 12]",
        ),
        row(
            Insn::LdInd { size: Size::W, src: Reg::R7, imm: -4 },
            "40 70 00 00 fc ff ff ff",
            "r0 = *(u32 *)skb[r7 + -4]",
        ),
    ]);
}

#[test]
fn ld_imm64_plain_and_every_pseudo_source() {
    let ld = |imm| Insn::LdImm64 { dst: Reg::R1, imm };
    run(&[
        row(ld(Imm64::Const(0x1234)), "18 01 00 00 34 12 00 00 00 00 00 00 00 00 00 00", "r1 = 0x1234 ll"),
        row(
            ld(Imm64::Const(0x1122_3344_5566_7788)),
            "18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11",
            "r1 = 0x1122334455667788 ll",
        ),
        row(
            ld(Imm64::Const(u64::MAX)),
            "18 01 00 00 ff ff ff ff 00 00 00 00 ff ff ff ff",
            "r1 = 0xffffffffffffffff ll",
        ),
        row(ld(Imm64::Const(0)), "18 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00", "r1 = 0x0 ll"),
        row(ld(Imm64::MapFd(3)), "18 11 00 00 03 00 00 00 00 00 00 00 00 00 00 00", "r1 = map_fd[3]"),
        row(
            ld(Imm64::MapValue { fd: 3, off: 16 }),
            "18 21 00 00 03 00 00 00 00 00 00 00 10 00 00 00",
            "r1 = map_value[3]+16",
        ),
        row(
            ld(Imm64::BtfId { id: 5, next: 0 }),
            "18 31 00 00 05 00 00 00 00 00 00 00 00 00 00 00",
            "r1 = btf_id[5,0]",
        ),
        row(
            ld(Imm64::BtfId { id: 5, next: 7 }),
            "18 31 00 00 05 00 00 00 00 00 00 00 07 00 00 00",
            "r1 = btf_id[5,7]",
        ),
        row(ld(Imm64::Func(4)), "18 41 00 00 04 00 00 00 00 00 00 00 00 00 00 00", "r1 = func pc+4"),
        row(ld(Imm64::Func(-9)), "18 41 00 00 f7 ff ff ff 00 00 00 00 00 00 00 00", "r1 = func pc-9"),
        row(ld(Imm64::MapIdx(2)), "18 51 00 00 02 00 00 00 00 00 00 00 00 00 00 00", "r1 = map_idx[2]"),
        row(
            ld(Imm64::MapIdxValue { idx: 2, off: 16 }),
            "18 61 00 00 02 00 00 00 00 00 00 00 10 00 00 00",
            "r1 = map_idx_value[2]+16",
        ),
    ]);
}

fn jmp_cond(cond: JmpCond) -> (u8, &'static str) {
    match cond {
        JmpCond::Eq => (0x10, "=="),
        JmpCond::Gt => (0x20, ">"),
        JmpCond::Ge => (0x30, ">="),
        JmpCond::Set => (0x40, "&"),
        JmpCond::Ne => (0x50, "!="),
        JmpCond::SGt => (0x60, "s>"),
        JmpCond::SGe => (0x70, "s>="),
        JmpCond::Lt => (0xa0, "<"),
        JmpCond::Le => (0xb0, "<="),
        JmpCond::SLt => (0xc0, "s<"),
        JmpCond::SLe => (0xd0, "s<="),
    }
}

#[test]
fn conditional_jumps_every_condition_class_and_source() {
    let mut rows = Vec::new();
    for cond in JmpCond::ALL {
        let (code, text) = jmp_cond(cond);
        for wide in [false, true] {
            let (class, p) = if wide { (0x05, 'r') } else { (0x06, 'w') };
            rows.push(Row {
                insn: Insn::Jmp { wide, cond, dst: Reg::R4, src: Src::Imm(-2), off: -3 },
                hex: slot(class | code, 4, 0, -3, -2),
                text: format!("if {p}4 {text} 0xfffffffe goto pc-3"),
            });
            rows.push(Row {
                insn: Insn::Jmp { wide, cond, dst: Reg::R4, src: Src::Reg(Reg::R5), off: 300 },
                hex: slot(class | code | 0x08, 4, 5, 300, 0),
                text: format!("if {p}4 {text} {p}5 goto pc+300"),
            });
        }
    }
    assert_eq!(rows.len(), 44);
    rows.push(row(
        Insn::Jmp { wide: false, cond: JmpCond::SLt, dst: Reg::R3, src: Src::Imm(7), off: -2 },
        "c6 03 fe ff 07 00 00 00",
        "if w3 s< 0x7 goto pc-2",
    ));
    rows.push(row(
        Insn::Jmp { wide: true, cond: JmpCond::Set, dst: Reg::R1, src: Src::Reg(Reg::R2), off: 1 },
        "4d 21 01 00 00 00 00 00",
        "if r1 & r2 goto pc+1",
    ));
    run(&rows);
}

#[test]
fn unconditional_jumps_calls_and_exit() {
    run(&[
        row(Insn::Ja { long: false, off: 3 }, "05 00 03 00 00 00 00 00", "goto pc+3"),
        row(Insn::Ja { long: false, off: -1 }, "05 00 ff ff 00 00 00 00", "goto pc-1"),
        row(Insn::Ja { long: false, off: 0 }, "05 00 00 00 00 00 00 00", "goto pc+0"),
        row(Insn::Ja { long: true, off: 100_000 }, "06 00 00 00 a0 86 01 00", "gotol pc+100000"),
        row(Insn::Ja { long: true, off: -100_000 }, "06 00 00 00 60 79 fe ff", "gotol pc-100000"),
        row(Insn::MayGoto { off: 2 }, "e5 00 02 00 00 00 00 00", "may_goto pc+2"),
        row(Insn::call(1), "85 00 00 00 01 00 00 00", "call bpf_map_lookup_elem#1"),
        row(Insn::call(12), "85 00 00 00 0c 00 00 00", "call bpf_tail_call#12"),
        row(Insn::call(211), "85 00 00 00 d3 00 00 00", "call bpf_cgrp_storage_delete#211"),
        row(Insn::call(999), "85 00 00 00 e7 03 00 00", "call unknown#999"),
        row(Insn::Call(CallTarget::Local(10)), "85 10 00 00 0a 00 00 00", "call pc+10"),
        row(Insn::Call(CallTarget::Local(-20)), "85 10 00 00 ec ff ff ff", "call pc-20"),
        row(
            Insn::Call(CallTarget::Kfunc { btf_id: 12345, module: 0 }),
            "85 20 00 00 39 30 00 00",
            "call kfunc#12345",
        ),
        row(
            Insn::Call(CallTarget::Kfunc { btf_id: 12345, module: 3 }),
            "85 20 03 00 39 30 00 00",
            "call kfunc#12345@3",
        ),
        row(Insn::Exit, "95 00 00 00 00 00 00 00", "exit"),
    ]);
}
