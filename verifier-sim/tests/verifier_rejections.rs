//! Programs the verifier must reject, as a specification: each case is a program, the hook
//! it is verified for, the instruction the error is reported at and the exact error. A
//! failing case prints its listing, the expected error and the verifier's full report.
//! A property test at the end feeds random programs and checks the verifier never panics.

use proptest::prelude::*;
use sluice_asm::helpers as h;
use sluice_asm::{AluOp, AtomicOp, Builder, Endian, Imm64, Insn, JmpCond, Program, Reg, Size, Src};
use sluice_verifier_sim::spec::{MapKind, MapSpec, ProgKind};
use sluice_verifier_sim::verifier::{verify, ErrorKind, ValueType, INSN_LIMIT};
use Reg::*;

fn map(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec {
    MapSpec { name: name.into(), kind, key_size, value_size, max_entries, flags: 0 }
}

/// The maps every case may refer to.
fn maps() -> Vec<MapSpec> {
    vec![
        map("counters", MapKind::PerCpuArray, 4, 8, 16),
        map("flows", MapKind::Hash, 8, 16, 1024),
        map("events", MapKind::RingBuf, 0, 0, 4096),
        map("jumps", MapKind::ProgArray, 4, 4, 8),
    ]
}

fn build(f: impl FnOnce(&mut Builder)) -> Program {
    let mut b = Builder::new();
    f(&mut b);
    b.build().expect("test programs build")
}

/// `r2 = data; r3 = data_end` for XDP.
fn xdp_data(b: &mut Builder) {
    b.load(Size::W, R2, R1, 0).load(Size::W, R3, R1, 4);
}

/// `*(u32 *)(r10 - 4) = 0; r2 = r10 - 4; r1 = map[name]; call map_lookup_elem`.
fn lookup(b: &mut Builder, name: &str) {
    b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).ld_map(R1, name).call(h::MAP_LOOKUP_ELEM);
}

struct Case {
    name: &'static str,
    kind: ProgKind,
    prog: Program,
    /// The instruction the error is reported at (`None`: not checked).
    at: Option<usize>,
    expect: ErrorKind,
}

fn case(
    name: &'static str,
    kind: ProgKind,
    at: usize,
    expect: ErrorKind,
    f: impl FnOnce(&mut Builder),
) -> Case {
    Case { name, kind, prog: build(f), at: Some(at), expect }
}

fn raw(name: &'static str, at: usize, expect: ErrorKind, insns: Vec<Insn>) -> Case {
    Case { name, kind: ProgKind::Xdp, prog: Program::from_insns(insns), at: Some(at), expect }
}

fn cases() -> Vec<Case> {
    use ProgKind::{SchedCls, SockOps, Xdp};
    let pkt_range = |reg, off, size, range| ErrorKind::PacketOutOfRange { reg, off, size, range };
    vec![
        // Packet bounds.
        case("packet access without a bounds check", Xdp, 1, pkt_range(2, 0, 1, 0), |b| {
            b.load(Size::W, R2, R1, 0).load(Size::B, R0, R2, 0).ret(2);
        }),
        case("packet access one byte beyond the checked range", Xdp, 5, pkt_range(2, 14, 1, 14), |b| {
            xdp_data(b);
            b.mov(R4, R2).add(R4, 14).jmp(JmpCond::Gt, R4, R3, "out");
            b.load(Size::B, R0, R2, 14);
            b.label("out").ret(2);
        }),
        case(
            "variable-offset packet access one byte beyond the checked range",
            Xdp,
            15,
            pkt_range(6, 17, 2, 18),
            |b| {
                xdp_data(b);
                b.mov(R4, R2).add(R4, 34).jmp(JmpCond::Gt, R4, R3, "out");
                b.load(Size::B, R5, R2, 14).alu(AluOp::And, R5, 0xf).alu(AluOp::Lsh, R5, 2);
                b.jmp(JmpCond::Lt, R5, 20, "out");
                b.mov(R6, R2).add(R6, 14).add(R6, R5);
                b.mov(R7, R6).add(R7, 4).jmp(JmpCond::Gt, R7, R3, "out");
                b.load(Size::H, R0, R6, 3);
                b.label("out").ret(2);
            },
        ),
        case("packet write in sock_ops", SockOps, 5, ErrorKind::PacketReadOnly { kind: SockOps }, |b| {
            b.load(Size::DW, R2, R1, 192).load(Size::DW, R3, R1, 200);
            b.mov(R4, R2).add(R4, 1).jmp(JmpCond::Gt, R4, R3, "out");
            b.store(Size::B, R2, 0, 0);
            b.label("out").ret(1);
        }),
        case(
            "packet pointer used after a helper that moves packet data",
            SchedCls,
            12,
            ErrorKind::InvalidMemAccess { reg: 6, ty: ValueType::Scalar },
            |b| {
                b.mov(R9, R1).load(Size::W, R6, R1, 76).load(Size::W, R7, R1, 80);
                b.mov(R2, R6).add(R2, 1).jmp(JmpCond::Gt, R2, R7, "out");
                b.mov(R1, R9).mov(R2, 0).mov(R3, 0).mov(R4, 0).mov(R5, 0).call(h::L3_CSUM_REPLACE);
                b.load(Size::B, R0, R6, 0);
                b.label("out").ret(0);
            },
        ),
        // Map values.
        case(
            "map value used before its null check",
            Xdp,
            5,
            ErrorKind::MaybeNullDeref { reg: 0, map: "counters".into() },
            |b| {
                lookup(b, "counters");
                b.load(Size::DW, R1, R0, 0).ret(2);
            },
        ),
        case(
            "map value used on the NULL side of its check",
            Xdp,
            6,
            ErrorKind::InvalidMemAccess { reg: 0, ty: ValueType::Scalar },
            |b| {
                lookup(b, "counters");
                b.jmp(JmpCond::Ne, R0, 0, "out").load(Size::DW, R1, R0, 0);
                b.label("out").ret(2);
            },
        ),
        case(
            "map value read past value_size",
            Xdp,
            6,
            ErrorKind::MapValueOutOfBounds {
                reg: 0,
                map: "counters".into(),
                min: 4,
                max: 4,
                size: 8,
                value_size: 8,
            },
            |b| {
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").load(Size::DW, R1, R0, 4);
                b.label("out").ret(2);
            },
        ),
        case(
            "pointer stored into a map value",
            Xdp,
            6,
            ErrorKind::PointerLeak { reg: 10, ty: ValueType::Stack, into: "map value" },
            |b| {
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").store(Size::DW, R0, 0, R10);
                b.label("out").ret(2);
            },
        ),
        // Registers.
        case("read of an uninitialized register", Xdp, 0, ErrorKind::UninitRegister { reg: 5 }, |b| {
            b.mov(R0, R5).exit();
        }),
        case("exit without setting r0", Xdp, 0, ErrorKind::UninitRegister { reg: 0 }, |b| {
            b.exit();
        }),
        case("argument register clobbered by a call", Xdp, 2, ErrorKind::UninitRegister { reg: 1 }, |b| {
            b.call(h::KTIME_GET_NS).mov(R0, 2).mov(R0, R1).exit();
        }),
        case("write to r10", Xdp, 0, ErrorKind::WriteToR10, |b| {
            b.mov(R10, 0).ret(2);
        }),
        case("load into r10", Xdp, 0, ErrorKind::WriteToR10, |b| {
            b.load(Size::W, R10, R1, 0).ret(2);
        }),
        // Stack.
        case("load from uninitialized stack", Xdp, 0, ErrorKind::UninitStack { off: -8, size: 8 }, |b| {
            b.load(Size::DW, R0, R10, -8).ret(2);
        }),
        case("map key from uninitialized stack", Xdp, 3, ErrorKind::UninitStack { off: -4, size: 4 }, |b| {
            b.mov(R2, R10).add(R2, -4).ld_map(R1, "counters").call(h::MAP_LOOKUP_ELEM).ret(2);
        }),
        case("map key only partly written", Xdp, 4, ErrorKind::UninitStack { off: -4, size: 4 }, |b| {
            b.store(Size::H, R10, -4, 7);
            b.mov(R2, R10).add(R2, -4).ld_map(R1, "counters").call(h::MAP_LOOKUP_ELEM).ret(2);
        }),
        case(
            "stack access below the frame",
            Xdp,
            0,
            ErrorKind::StackOutOfBounds { off: -520, size: 8 },
            |b| {
                b.store(Size::DW, R10, -520, 0).ret(2);
            },
        ),
        case(
            "stack access at the frame pointer",
            Xdp,
            0,
            ErrorKind::StackOutOfBounds { off: 0, size: 4 },
            |b| {
                b.store(Size::W, R10, 0, 0).ret(2);
            },
        ),
        case(
            "pointer spilled in part",
            Xdp,
            0,
            ErrorKind::BadSpill {
                off: -8,
                size: 4,
                reason: "pointers may only be spilled whole, to an 8-byte aligned slot",
            },
            |b| {
                b.store(Size::W, R10, -8, R1).ret(2);
            },
        ),
        // Control flow.
        case("loop (back-edge)", Xdp, 2, ErrorKind::BackEdge { from: 2, to: 1 }, |b| {
            b.mov(R0, 0).label("loop").add(R0, 1).jmp(JmpCond::Lt, R0, 10, "loop").exit();
        }),
        raw(
            "jump out of range",
            1,
            ErrorKind::JumpOutOfRange { target: 7 },
            vec![Insn::mov64(R0, 2), Insn::Ja { long: false, off: 5 }, Insn::Exit],
        ),
        raw(
            "jump into the middle of an LD_IMM64",
            0,
            ErrorKind::JumpIntoLdImm64 { target: 2 },
            vec![Insn::Ja { long: false, off: 1 }, Insn::ld_imm64(R0, 2), Insn::Exit],
        ),
        raw("fall off the end", 0, ErrorKind::FallOffEnd, vec![Insn::mov64(R0, 2)]),
        raw(
            "conditional jump as the last instruction",
            1,
            ErrorKind::FallOffEnd,
            vec![
                Insn::mov64(R0, 2),
                Insn::Jmp { wide: true, cond: JmpCond::Eq, dst: R0, src: Src::Imm(0), off: -2 },
            ],
        ),
        // (The builder drops unreachable code, so this one is written out.)
        raw(
            "unreachable instruction",
            2,
            ErrorKind::Unreachable,
            vec![Insn::mov64(R0, 2), Insn::Exit, Insn::mov64(R0, 1), Insn::Exit],
        ),
        raw("empty program", 0, ErrorKind::EmptyProgram, vec![]),
        // Helpers.
        case(
            "scalar passed as the map",
            Xdp,
            4,
            ErrorKind::HelperArg {
                helper: "bpf_map_lookup_elem",
                arg: 1,
                expected: "map_ptr",
                found: ValueType::Scalar,
            },
            |b| {
                b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).mov(R1, 0);
                b.call(h::MAP_LOOKUP_ELEM).ret(2);
            },
        ),
        case(
            "ctx passed as the map key",
            Xdp,
            2,
            ErrorKind::HelperArg {
                helper: "bpf_map_lookup_elem",
                arg: 2,
                expected: "fp, pkt or map_value (map key)",
                found: ValueType::Ctx,
            },
            |b| {
                b.mov(R2, R1).ld_map(R1, "counters").call(h::MAP_LOOKUP_ELEM).ret(2);
            },
        ),
        case(
            "skb helper in XDP",
            Xdp,
            0,
            ErrorKind::HelperNotAllowed { helper: "bpf_skb_load_bytes", kind: Xdp },
            |b| {
                b.call(h::SKB_LOAD_BYTES).ret(2);
            },
        ),
        case(
            "xdp_adjust_head in tc",
            SchedCls,
            0,
            ErrorKind::HelperNotAllowed { helper: "bpf_xdp_adjust_head", kind: SchedCls },
            |b| {
                b.call(h::XDP_ADJUST_HEAD).ret(0);
            },
        ),
        case("unknown helper", Xdp, 0, ErrorKind::UnknownHelper { id: 9999 }, |b| {
            b.call(9999).ret(2);
        }),
        case(
            "ring buffer output to a hash map",
            Xdp,
            6,
            ErrorKind::HelperMap {
                helper: "bpf_ringbuf_output",
                map: "flows".into(),
                map_kind: MapKind::Hash,
            },
            |b| {
                b.store(Size::DW, R10, -8, 0).ld_map(R1, "flows").mov(R2, R10).add(R2, -8);
                b.mov(R3, 8).mov(R4, 0).call(h::RINGBUF_OUTPUT).ret(2);
            },
        ),
        case(
            "helper size that may be zero",
            SchedCls,
            5,
            ErrorKind::HelperArg {
                helper: "bpf_skb_load_bytes",
                arg: 4,
                expected: "size of at least 1",
                found: ValueType::Scalar,
            },
            |b| {
                b.load(Size::W, R4, R1, 0).alu(AluOp::And, R4, 15).mov(R2, 0).mov(R3, R10).add(R3, -16);
                b.call(h::SKB_LOAD_BYTES).ret(0);
            },
        ),
        // Return values.
        case(
            "XDP returns 7",
            Xdp,
            1,
            ErrorKind::ReturnOutOfRange { min: 7, max: 7, lo: 0, hi: 4, kind: Xdp },
            |b| {
                b.ret(7);
            },
        ),
        case(
            "return of a pointer",
            Xdp,
            1,
            ErrorKind::PointerLeak { reg: 0, ty: ValueType::Ctx, into: "the return value" },
            |b| {
                b.mov(R0, R1).exit();
            },
        ),
        case(
            "sock_ops returns an unbounded value",
            SockOps,
            1,
            ErrorKind::ReturnOutOfRange { min: i64::MIN, max: i64::MAX, lo: 0, hi: 1, kind: SockOps },
            |b| {
                b.call(h::KTIME_GET_NS).exit();
            },
        ),
        // Context.
        case(
            "ctx load past the end of xdp_md",
            Xdp,
            0,
            ErrorKind::CtxInvalidAccess {
                kind: Xdp,
                off: 24,
                size: 4,
                reason: "no context field at this offset",
            },
            |b| {
                b.load(Size::W, R0, R1, 24).ret(2);
            },
        ),
        case(
            "ctx load in the middle of a field",
            Xdp,
            0,
            ErrorKind::CtxInvalidAccess {
                kind: Xdp,
                off: 14,
                size: 2,
                reason: "loads must cover the whole field",
            },
            |b| {
                b.load(Size::H, R0, R1, 14).ret(2);
            },
        ),
        case(
            "egress_ifindex outside a devmap program",
            Xdp,
            0,
            ErrorKind::CtxInvalidAccess {
                kind: Xdp,
                off: 20,
                size: 4,
                reason: "egress_ifindex is readable by devmap programs only",
            },
            |b| {
                b.load(Size::W, R0, R1, 20).ret(2);
            },
        ),
        case(
            "narrow load of a pointer field",
            SchedCls,
            0,
            ErrorKind::CtxInvalidAccess {
                kind: SchedCls,
                off: 76,
                size: 2,
                reason: "pointer fields must be loaded whole",
            },
            |b| {
                b.load(Size::H, R0, R1, 76).ret(0);
            },
        ),
        case("write to a read-only ctx field", SchedCls, 1, ErrorKind::CtxReadOnly { field: "len" }, |b| {
            b.mov(R2, 1).store(Size::W, R1, 0, R2).ret(0);
        }),
        // Pointer arithmetic and ALU.
        case(
            "pointer arithmetic on ctx",
            Xdp,
            0,
            ErrorKind::PointerArithmetic {
                reg: 1,
                ty: ValueType::Ctx,
                reason: "this pointer type allows no arithmetic",
            },
            |b| {
                b.add(R1, 4).ret(2);
            },
        ),
        case(
            "32-bit ALU on a pointer",
            Xdp,
            1,
            ErrorKind::PointerAlu32 { reg: 2, ty: ValueType::Packet },
            |b| {
                b.load(Size::W, R2, R1, 0).alu32(AluOp::Add, R2, 4).ret(2);
            },
        ),
        case(
            "bitwise operation on a pointer",
            Xdp,
            1,
            ErrorKind::PointerArithmetic {
                reg: 2,
                ty: ValueType::Packet,
                reason: "bitwise operator on pointer",
            },
            |b| {
                b.load(Size::W, R2, R1, 0).alu(AluOp::And, R2, 0xff).ret(2);
            },
        ),
        case(
            "unbounded scalar added to a packet pointer",
            Xdp,
            2,
            ErrorKind::PointerArithmetic {
                reg: 7,
                ty: ValueType::Packet,
                reason: "math with a register with unbounded min value",
            },
            |b| {
                b.load(Size::W, R7, R1, 0).call(h::KTIME_GET_NS).add(R7, R0).ret(2);
            },
        ),
        case("constant division by zero", Xdp, 1, ErrorKind::DivByZero, |b| {
            b.mov(R0, 1).alu(AluOp::Div, R0, 0).ret(2);
        }),
        case("shift beyond the width", Xdp, 1, ErrorKind::InvalidShift { amount: 64 }, |b| {
            b.mov(R0, 1).alu(AluOp::Lsh, R0, 64).ret(2);
        }),
        // Maps by name.
        case("unknown map name", Xdp, 0, ErrorKind::UnknownMap { name: "nope".into() }, |b| {
            b.ld_map(R1, "nope").ret(2);
        }),
        raw(
            "unrelocated map fd",
            0,
            ErrorKind::UnrelocatedMapFd { fd: 3 },
            vec![Insn::LdImm64 { dst: R1, imm: Imm64::MapFd(3) }, Insn::mov64(R0, 2), Insn::Exit],
        ),
        case(
            "direct value reference into a hash map",
            Xdp,
            0,
            ErrorKind::BadMapValueRef {
                map: "flows".into(),
                reason: "direct value access needs an array map, not Hash".into(),
            },
            |b| {
                b.ld_map_value(R1, "flows", 0).ret(2);
            },
        ),
        // Pruning: the first path through `join` passes; the second carries a value that
        // breaks a later check, so `join` must not cut it (precision tracking).
        case(
            "pruning keeps a register a later check depends on",
            Xdp,
            13,
            ErrorKind::MapValueOutOfBounds {
                reg: 0,
                map: "counters".into(),
                min: 100,
                max: 100,
                size: 1,
                value_size: 8,
            },
            |b| {
                b.call(h::GET_PRANDOM_U32).mov(R6, R0).jmp(JmpCond::Gt, R6, 10, "big");
                b.mov(R7, 0).ja("join");
                b.label("big").mov(R7, 100);
                b.label("join");
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").add(R0, R7).load(Size::B, R1, R0, 0);
                b.label("out").ret(2);
            },
        ),
        case(
            "pruning keeps a spilled value a later check depends on",
            Xdp,
            17,
            ErrorKind::MapValueOutOfBounds {
                reg: 0,
                map: "counters".into(),
                min: 100,
                max: 100,
                size: 1,
                value_size: 8,
            },
            |b| {
                b.call(h::GET_PRANDOM_U32).mov(R6, R0).jmp(JmpCond::Gt, R6, 10, "big");
                b.mov(R7, 0).store(Size::DW, R10, -16, R7).ja("join");
                b.label("big").mov(R7, 100).store(Size::DW, R10, -16, R7);
                b.label("join").mov(R7, 0);
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").load(Size::DW, R7, R10, -16);
                b.add(R0, R7).load(Size::B, R1, R0, 0);
                b.label("out").ret(2);
            },
        ),
        case(
            "pruning keeps a value stored as known-zero stack bytes",
            Xdp,
            15,
            ErrorKind::MapValueOutOfBounds {
                reg: 0,
                map: "counters".into(),
                min: 0,
                max: u32::MAX as i64,
                size: 1,
                value_size: 8,
            },
            |b| {
                b.call(h::GET_PRANDOM_U32).mov(R6, R0).jmp(JmpCond::Gt, R6, 10, "big");
                b.mov(R7, 0).ja("join");
                b.label("big").mov(R7, 100);
                b.comment("zero bytes read back as 0, other values as any u32");
                b.label("join").store(Size::W, R10, -8, R7).load(Size::W, R7, R10, -8);
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").add(R0, R7).load(Size::B, R1, R0, 0);
                b.label("out").ret(2);
            },
        ),
        case(
            "pruning keeps the link that bounds a register",
            Xdp,
            14,
            ErrorKind::PointerArithmetic {
                reg: 0,
                ty: ValueType::MapValue,
                reason: "math with a register with unbounded min value",
            },
            |b| {
                b.call(h::GET_PRANDOM_U32).mov(R6, R0).call(h::GET_PRANDOM_U32);
                b.jmp(JmpCond::Gt, R0, 5, "other");
                b.comment("r7 and r6 are one value here: bounding r7 bounds r6");
                b.mov(R7, R6).ja("join");
                b.label("other").mov(R7, R0);
                b.label("join");
                lookup(b, "counters");
                b.jmp(JmpCond::Eq, R0, 0, "out").jmp(JmpCond::Gt, R7, 7, "out");
                b.add(R0, R6).load(Size::B, R1, R0, 0);
                b.label("out").ret(2);
            },
        ),
        // Complexity: 2^24 paths that never merge (r7 differs on each).
        Case {
            name: "program too complex",
            kind: Xdp,
            prog: build(|b| {
                b.call(h::GET_PRANDOM_U32).mov(R6, R0).mov(R7, 0);
                for i in 0..24 {
                    let skip = format!("skip{i}");
                    b.mov(R1, R6).alu(AluOp::And, R1, 1 << i).jmp(JmpCond::Eq, R1, 0, skip.as_str());
                    b.add(R7, 1 << i).label(skip);
                }
                b.mov(R0, R7).alu(AluOp::And, R0, 1).exit();
            }),
            at: None,
            expect: ErrorKind::TooComplex { limit: INSN_LIMIT },
        },
    ]
}

#[test]
fn rejections() {
    let maps = maps();
    let mut failures = Vec::new();
    for c in cases() {
        let got = verify(&c.prog, c.kind, &maps);
        let ok = match &got {
            Err(e) => e.kind == c.expect && c.at.is_none_or(|at| at == e.insn),
            Ok(_) => false,
        };
        if !ok {
            let actual = match &got {
                Ok(stats) => format!("accepted: {stats:?}"),
                Err(e) => e.report(),
            };
            failures.push(format!(
                "case `{}` ({}):\n{}expected at insn {:?}: {}\nactual: {actual}\n",
                c.name,
                c.kind,
                sluice_asm::text::listing(&c.prog),
                c.at,
                c.expect,
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn errors_carry_the_path_and_the_state() {
    // The bad access sits on the taken side of the second branch.
    let prog = build(|b| {
        xdp_data(b);
        b.mov(R4, R2).add(R4, 14).jmp(JmpCond::Gt, R4, R3, "out");
        b.load(Size::B, R5, R2, 13).jmp(JmpCond::Eq, R5, 6, "bad");
        b.ret(2);
        b.label("bad").load(Size::B, R0, R2, 20).ret(1);
        b.label("out").ret(2);
    });
    let err = verify(&prog, ProgKind::Xdp, &maps()).expect_err("reads past the checked range");
    assert_eq!(err.insn, 9);
    assert_eq!(err.slot, 9);
    assert_eq!(err.text, "r0 = *(u8 *)(r2 +20)");
    let path: Vec<(usize, bool)> = err.path.iter().map(|b| (b.insn, b.taken)).collect();
    assert_eq!(path, vec![(4, false), (6, true)]);
    assert!(err.state.contains("R2=pkt(id=0,off=0,r=14)"), "{}", err.state);
    let report = err.report();
    assert!(report.contains("path: 4 fell through, 6 taken"), "{report}");
}

// Random programs: whatever comes in, the verifier answers without panicking.

fn reg() -> impl Strategy<Value = Reg> {
    prop::sample::select(Reg::ALL.to_vec())
}

fn src() -> impl Strategy<Value = Src> {
    prop_oneof![reg().prop_map(Src::Reg), (-80i32..80).prop_map(Src::Imm), any::<i32>().prop_map(Src::Imm),]
}

fn size() -> impl Strategy<Value = Size> {
    prop::sample::select(vec![Size::B, Size::H, Size::W, Size::DW])
}

fn atomic_op() -> impl Strategy<Value = AtomicOp> {
    prop::sample::select(vec![
        AtomicOp::Add { fetch: false },
        AtomicOp::Add { fetch: true },
        AtomicOp::Or { fetch: true },
        AtomicOp::And { fetch: false },
        AtomicOp::Xor { fetch: true },
        AtomicOp::Xchg,
        AtomicOp::CmpXchg,
    ])
}

fn insn() -> impl Strategy<Value = Insn> {
    let helper_ids = vec![1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 23, 26, 28, 44, 51, 69, 70, 71, 130, 4, 9999];
    prop_oneof![
        4 => (any::<bool>(), prop::sample::select(AluOp::ALL.to_vec()), reg(), src())
            .prop_map(|(wide, op, dst, src)| Insn::Alu { wide, op, dst, src }),
        1 => (any::<bool>(), reg()).prop_map(|(wide, dst)| Insn::Neg { wide, dst }),
        1 => (any::<bool>(), prop::sample::select(vec![8u8, 16, 32, 7]), reg(), reg())
            .prop_map(|(wide, bits, dst, src)| Insn::MovSx { wide, bits, dst, src }),
        1 => (prop::sample::select(vec![16u8, 32, 64]), reg())
            .prop_map(|(bits, dst)| Insn::Endian { kind: Endian::ToBe, bits, dst }),
        1 => (reg(), prop_oneof![
                any::<u64>().prop_map(Imm64::Const),
                Just(Imm64::MapRef("counters".into())),
                Just(Imm64::MapRef("flows".into())),
                Just(Imm64::MapRef("events".into())),
                Just(Imm64::MapValueRef { map: "counters".into(), off: 0 }),
            ]).prop_map(|(dst, imm)| Insn::LdImm64 { dst, imm }),
        3 => (size(), any::<bool>(), reg(), reg(), -40i16..100)
            .prop_map(|(size, signed, dst, base, off)| Insn::Load { size, signed, dst, base, off }),
        3 => (size(), reg(), -530i16..90, src()).prop_map(|(size, base, off, src)| Insn::Store { size, base, off, src }),
        1 => (size(), atomic_op(), reg(), -24i16..24, reg())
            .prop_map(|(size, op, base, off, src)| Insn::Atomic { size, op, base, off, src }),
        3 => (any::<bool>(), prop::sample::select(JmpCond::ALL.to_vec()), reg(), src(), -3i16..6)
            .prop_map(|(wide, cond, dst, src, off)| Insn::Jmp { wide, cond, dst, src, off }),
        1 => (-2i32..5).prop_map(|off| Insn::Ja { long: false, off }),
        2 => prop::sample::select(helper_ids).prop_map(Insn::call),
        2 => Just(Insn::Exit),
    ]
}

/// A prefix that gives the random part packet pointers with a range, a map value and a
/// spilled pointer to work with.
fn prefix() -> Vec<Insn> {
    let b = build(|b| {
        b.mov(R6, R1);
        xdp_data(b);
        b.mov(R4, R2).add(R4, 40).jmp(JmpCond::Gt, R4, R3, "out");
        b.store(Size::DW, R10, -16, R2);
        b.store(Size::W, R10, -4, 1).mov(R2, R10).add(R2, -4).ld_map(R1, "counters").call(h::MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, R0, 0, "out").mov(R7, R0).load(Size::DW, R2, R10, -16).load(Size::W, R3, R6, 4);
        b.ja("body");
        b.label("out").ret(2);
        b.label("body");
        b.mov(R0, 0);
    });
    b.insns().to_vec()
}

proptest! {
    // PROPTEST_CASES raises the count for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_programs_never_panic(insns in prop::collection::vec(insn(), 0..48), kind in 0u8..4) {
        let kind = [ProgKind::Xdp, ProgKind::SchedCls, ProgKind::SockOps, ProgKind::SkMsg][usize::from(kind)];
        let _ = verify(&Program::from_insns(insns), kind, &maps());
    }

    #[test]
    fn random_suffixes_never_panic(body in prop::collection::vec(insn(), 0..40)) {
        let mut insns = prefix();
        insns.extend(body);
        insns.push(Insn::mov64(R0, 2));
        insns.push(Insn::Exit);
        let _ = verify(&Program::from_insns(insns), ProgKind::Xdp, &maps());
    }
}
