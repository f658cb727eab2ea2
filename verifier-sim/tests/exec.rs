//! The executor as a specification: tables of small programs with the `r0` (or error) the
//! kernel gives, then programs over real contexts, maps and helpers.

use sluice_asm::{
    AluOp, AtomicOp, Builder, CallTarget, Endian, Imm64, Insn, JmpCond, Program, Reg, Size, Src,
};
use sluice_verifier_sim::exec::{
    run, run_tc, run_xdp, Context, ExecError, IpSummed, Machine, RunOutcome, Runner, BPF_F_MARK_MANGLED_0,
    BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_ABORTED, XDP_PASS,
    XDP_REDIRECT,
};
use sluice_verifier_sim::maps::{errno, MapSet, BPF_ANY, BPF_F_NO_PREALLOC};
use sluice_verifier_sim::spec::{MapKind, MapSpec, ProgKind, SK_BUFF, XDP_MD};
use Reg::*;

// ---- helper ids (kernel `enum bpf_func_id`) ----
const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const MAP_DELETE_ELEM: i32 = 3;
const KTIME_GET_NS: i32 = 5;
const GET_PRANDOM_U32: i32 = 7;
const GET_SMP_PROCESSOR_ID: i32 = 8;
const SKB_STORE_BYTES: i32 = 9;
const L3_CSUM_REPLACE: i32 = 10;
const L4_CSUM_REPLACE: i32 = 11;
const TAIL_CALL: i32 = 12;
const REDIRECT: i32 = 23;
const SKB_LOAD_BYTES: i32 = 26;
const CSUM_DIFF: i32 = 28;
const XDP_ADJUST_HEAD: i32 = 44;
const REDIRECT_MAP: i32 = 51;
const FIB_LOOKUP: i32 = 69;
const RINGBUF_OUTPUT: i32 = 130;

// ---- fixtures ----

fn xdp_off(name: &str) -> i16 {
    XDP_MD.iter().find(|f| f.name == name).map(|f| f.off as i16).expect("xdp_md field")
}

fn skb_off(name: &str) -> i16 {
    SK_BUFF.iter().find(|f| f.name == name).map(|f| f.off as i16).expect("__sk_buff field")
}

fn spec(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec {
    let flags = if kind == MapKind::LpmTrie { BPF_F_NO_PREALLOC } else { 0 };
    MapSpec { name: name.into(), kind, key_size, value_size, max_entries, flags }
}

fn no_maps() -> MapSet {
    MapSet::new(&[], 1).expect("empty map set")
}

/// A 60-byte Ethernet frame carrying IPv4 (payload zeros).
fn eth_ipv4() -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p
}

/// The internet checksum of `bytes` (RFC 1071), as a big-endian value.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const IP: usize = 14;
const UDP: usize = IP + 20;

/// Ethernet + IPv4 + UDP with correct checksums.
fn udp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; UDP + udp_len];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[IP..UDP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut p[UDP..];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[8..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    let c = match internet_checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    p[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
    p
}

fn build(b: &Builder) -> Program {
    b.build().expect("test program builds")
}

fn xdp(prog: &Program, maps: &mut MapSet) -> Result<RunOutcome, ExecError> {
    run_xdp(prog, &eth_ipv4(), maps)
}

// ---- instruction semantics: one table ----

/// A straight-line program computing `r0`, and the value the kernel leaves there.
struct Case {
    name: &'static str,
    insns: Vec<Insn>,
    r0: u64,
}

fn case(name: &'static str, mut insns: Vec<Insn>, r0: u64) -> Case {
    insns.push(Insn::Exit);
    Case { name, insns, r0 }
}

fn imm(v: u64) -> Insn {
    Insn::ld_imm64(R0, v)
}

fn r1(v: u64) -> Insn {
    Insn::ld_imm64(R1, v)
}

fn a64(op: AluOp, s: impl Into<Src>) -> Insn {
    Insn::alu64(op, R0, s)
}

fn a32(op: AluOp, s: impl Into<Src>) -> Insn {
    Insn::alu32(op, R0, s)
}

const MIN64: u64 = i64::MIN as u64;

fn alu_cases() -> Vec<Case> {
    use AluOp::*;
    vec![
        case("add64 wraps", vec![imm(u64::MAX), a64(Add, 2)], 1),
        case("add32 wraps and zero-extends", vec![imm(0x1_ffff_ffff), a32(Add, 1)], 0),
        case("sub32 zero-extends", vec![imm(0), a32(Sub, 1)], 0xffff_ffff),
        case("mul64", vec![imm(0x1_0000_0001), a64(Mul, 3)], 0x3_0000_0003),
        case("mul32 truncates", vec![imm(0x8000_0001), a32(Mul, 2)], 2),
        case("imm is sign-extended for alu64", vec![imm(0), a64(Add, -1)], u64::MAX),
        case("mov32 -1 zero-extends", vec![imm(7), Insn::mov32(R0, -1)], 0xffff_ffff),
        case("mov64 -1 sign-extends", vec![Insn::mov64(R0, -1)], u64::MAX),
        case("div64", vec![imm(100), a64(Div, 7)], 14),
        case("div64 is unsigned", vec![imm(u64::MAX), a64(Div, 2)], u64::MAX / 2),
        case("div64 by zero is 0", vec![imm(100), r1(0), a64(Div, R1)], 0),
        case("div32 by zero is 0", vec![imm(u64::MAX), r1(0x1_0000_0000), a32(Div, R1)], 0),
        case(
            "div32 uses the low halves",
            vec![imm(0xffff_0000_0000_0010), r1(0x1_0000_0004), a32(Div, R1)],
            4,
        ),
        case("mod64", vec![imm(100), a64(Mod, 7)], 2),
        case(
            "mod64 by zero keeps dst",
            vec![imm(0xdead_beef_0000_0005), r1(0), a64(Mod, R1)],
            0xdead_beef_0000_0005,
        ),
        case("mod32 by zero truncates dst", vec![imm(0xdead_beef_0000_0005), r1(0), a32(Mod, R1)], 5),
        case("sdiv64 rounds toward zero", vec![imm(-7i64 as u64), a64(SDiv, 2)], -3i64 as u64),
        case("sdiv64 INT_MIN / -1", vec![imm(MIN64), a64(SDiv, -1)], MIN64),
        case("sdiv64 by zero is 0", vec![imm(MIN64), r1(0), a64(SDiv, R1)], 0),
        case("sdiv32 INT_MIN / -1", vec![imm(0x8000_0000), a32(SDiv, -1)], 0x8000_0000),
        case("sdiv32 negative", vec![imm(-9i32 as u32 as u64), a32(SDiv, 2)], -4i32 as u32 as u64),
        case("smod64 takes the dividend's sign", vec![imm(-7i64 as u64), a64(SMod, 2)], -1i64 as u64),
        case("smod64 with negative divisor", vec![imm(7), a64(SMod, -2)], 1),
        case("smod64 INT_MIN % -1", vec![imm(MIN64), a64(SMod, -1)], 0),
        case("smod64 by zero keeps dst", vec![imm(-5i64 as u64), r1(0), a64(SMod, R1)], -5i64 as u64),
        case("smod32 INT_MIN % -1", vec![imm(0x8000_0000), a32(SMod, -1)], 0),
        case(
            "smod32 by zero truncates dst",
            vec![imm(0xffff_ffff_ffff_fffb), r1(0), a32(SMod, R1)],
            0xffff_fffb,
        ),
        case("lsh64 masks the amount to 63", vec![imm(1), r1(65), a64(Lsh, R1)], 2),
        case("lsh32 masks to 31 and truncates", vec![imm(0x8000_0001), r1(33), a32(Lsh, R1)], 2),
        case("rsh64 is logical", vec![imm(MIN64), a64(Rsh, 63)], 1),
        case("rsh32 masks to 31", vec![imm(0xffff_ffff_8000_0000), r1(32 + 31), a32(Rsh, R1)], 1),
        case("arsh64", vec![imm(MIN64), a64(Arsh, 62)], 0xffff_ffff_ffff_fffe),
        case("arsh32 zero-extends", vec![imm(0x8000_0000), a32(Arsh, 4)], 0xf800_0000),
        case("arsh64 masks", vec![imm(MIN64), r1(64 + 63), a64(Arsh, R1)], u64::MAX),
        case("or/and/xor", vec![imm(0b1100), a64(Or, 0b0011), a64(And, 0b0110), a64(Xor, 0b0001)], 0b0111),
        case("xor32 clears the upper half", vec![imm(u64::MAX), a32(Xor, 0)], 0xffff_ffff),
        case("neg64", vec![imm(5), Insn::Neg { wide: true, dst: R0 }], -5i64 as u64),
        case("neg32", vec![imm(5), Insn::Neg { wide: false, dst: R0 }], 0xffff_fffb),
        case(
            "movsx64 8",
            vec![r1(0x1234_5680), Insn::MovSx { wide: true, bits: 8, dst: R0, src: R1 }],
            -128i64 as u64,
        ),
        case(
            "movsx64 16",
            vec![r1(0x8001), Insn::MovSx { wide: true, bits: 16, dst: R0, src: R1 }],
            0xffff_ffff_ffff_8001,
        ),
        case(
            "movsx64 32",
            vec![r1(0x8000_0000), Insn::MovSx { wide: true, bits: 32, dst: R0, src: R1 }],
            0xffff_ffff_8000_0000,
        ),
        case(
            "movsx64 of a positive byte",
            vec![r1(0xff7f), Insn::MovSx { wide: true, bits: 8, dst: R0, src: R1 }],
            0x7f,
        ),
        case(
            "movsx32 8 zero-extends",
            vec![r1(0x80), Insn::MovSx { wide: false, bits: 8, dst: R0, src: R1 }],
            0xffff_ff80,
        ),
        case(
            "movsx32 16",
            vec![r1(0xffff_8000), Insn::MovSx { wide: false, bits: 16, dst: R0, src: R1 }],
            0xffff_8000,
        ),
        case("be16", vec![imm(0xaaaa_1234), Insn::Endian { kind: Endian::ToBe, bits: 16, dst: R0 }], 0x3412),
        case(
            "be32",
            vec![imm(0xaaaa_aaaa_1234_5678), Insn::Endian { kind: Endian::ToBe, bits: 32, dst: R0 }],
            0x7856_3412,
        ),
        case(
            "be64",
            vec![imm(0x0102_0304_0506_0708), Insn::Endian { kind: Endian::ToBe, bits: 64, dst: R0 }],
            0x0807_0605_0403_0201,
        ),
        case(
            "le16 truncates on little endian",
            vec![imm(0x1234_5678), Insn::Endian { kind: Endian::ToLe, bits: 16, dst: R0 }],
            0x5678,
        ),
        case(
            "le32 truncates",
            vec![imm(0x1_2345_6789), Insn::Endian { kind: Endian::ToLe, bits: 32, dst: R0 }],
            0x2345_6789,
        ),
        case(
            "le64 is a no-op",
            vec![imm(0x1_2345_6789), Insn::Endian { kind: Endian::ToLe, bits: 64, dst: R0 }],
            0x1_2345_6789,
        ),
        case(
            "bswap16",
            vec![imm(0xffff_0102), Insn::Endian { kind: Endian::Swap, bits: 16, dst: R0 }],
            0x0201,
        ),
        case(
            "bswap32",
            vec![imm(0x0102_0304), Insn::Endian { kind: Endian::Swap, bits: 32, dst: R0 }],
            0x0403_0201,
        ),
        case(
            "bswap64",
            vec![imm(0x0102_0304_0506_0708), Insn::Endian { kind: Endian::Swap, bits: 64, dst: R0 }],
            0x0807_0605_0403_0201,
        ),
    ]
}

fn mem_cases() -> Vec<Case> {
    let st = |size, off, src: Src| Insn::Store { size, base: R10, off, src };
    let ld = |size, off| Insn::load(size, R0, R10, off);
    let ldsx = |size, off| Insn::Load { size, signed: true, dst: R0, base: R10, off };
    let atomic = |size, op| Insn::Atomic { size, op, base: R10, off: -8, src: R1 };
    vec![
        case(
            "store dw, load w is little endian",
            vec![r1(0x1122_3344_5566_7788), st(Size::DW, -8, R1.into()), ld(Size::W, -8)],
            0x5566_7788,
        ),
        case(
            "load h at an offset",
            vec![r1(0x1122_3344_5566_7788), st(Size::DW, -8, R1.into()), ld(Size::H, -2)],
            0x1122,
        ),
        case("load b", vec![r1(0x1122_3344_5566_7788), st(Size::DW, -8, R1.into()), ld(Size::B, -7)], 0x77),
        case(
            "store imm dw sign-extends",
            vec![st(Size::DW, -8, Src::Imm(-2)), ld(Size::DW, -8)],
            -2i64 as u64,
        ),
        case(
            "store w leaves the rest",
            vec![st(Size::DW, -8, Src::Imm(-1)), st(Size::W, -8, Src::Imm(0)), ld(Size::DW, -8)],
            0xffff_ffff_0000_0000,
        ),
        case("ldxsb sign-extends", vec![st(Size::B, -1, Src::Imm(0x80)), ldsx(Size::B, -1)], -128i64 as u64),
        case("ldxsh", vec![st(Size::H, -2, Src::Imm(0xfffe)), ldsx(Size::H, -2)], -2i64 as u64),
        case(
            "ldxsw",
            vec![st(Size::W, -4, Src::Imm(i32::MIN)), ldsx(Size::W, -4)],
            i64::from(i32::MIN) as u64,
        ),
        case("ldxb does not", vec![st(Size::B, -1, Src::Imm(0x80)), ld(Size::B, -1)], 0x80),
        case(
            "load_acquire/store_release",
            vec![
                r1(42),
                Insn::StoreRelease { size: Size::DW, base: R10, off: -8, src: R1 },
                Insn::LoadAcquire { size: Size::DW, dst: R0, base: R10, off: -8 },
            ],
            42,
        ),
        case(
            "atomic add",
            vec![
                st(Size::DW, -8, Src::Imm(5)),
                r1(3),
                atomic(Size::DW, AtomicOp::Add { fetch: false }),
                ld(Size::DW, -8),
            ],
            8,
        ),
        case(
            "atomic fetch_add returns the old value",
            vec![
                st(Size::DW, -8, Src::Imm(5)),
                r1(3),
                atomic(Size::DW, AtomicOp::Add { fetch: true }),
                Insn::mov64(R0, R1),
            ],
            5,
        ),
        case(
            "atomic or",
            vec![
                st(Size::DW, -8, Src::Imm(0b01)),
                r1(0b10),
                atomic(Size::DW, AtomicOp::Or { fetch: false }),
                ld(Size::DW, -8),
            ],
            0b11,
        ),
        case(
            "atomic fetch_and",
            vec![
                st(Size::DW, -8, Src::Imm(0b11)),
                r1(0b10),
                atomic(Size::DW, AtomicOp::And { fetch: true }),
                ld(Size::DW, -8),
                a64(AluOp::Lsh, 8),
                a64(AluOp::Or, R1),
            ],
            0x203,
        ),
        case(
            "atomic xor",
            vec![
                st(Size::DW, -8, Src::Imm(0b11)),
                r1(0b01),
                atomic(Size::DW, AtomicOp::Xor { fetch: false }),
                ld(Size::DW, -8),
            ],
            0b10,
        ),
        case(
            "atomic32 add wraps within the word",
            vec![
                st(Size::DW, -8, Src::Imm(-1)),
                r1(1),
                atomic(Size::W, AtomicOp::Add { fetch: false }),
                ld(Size::DW, -8),
            ],
            0xffff_ffff_0000_0000,
        ),
        case(
            "atomic32 fetch zero-extends",
            vec![
                st(Size::DW, -8, Src::Imm(-1)),
                r1(1),
                atomic(Size::W, AtomicOp::Add { fetch: true }),
                Insn::mov64(R0, R1),
            ],
            0xffff_ffff,
        ),
        case(
            "xchg",
            vec![
                st(Size::DW, -8, Src::Imm(7)),
                r1(9),
                atomic(Size::DW, AtomicOp::Xchg),
                ld(Size::DW, -8),
                a64(AluOp::Lsh, 8),
                a64(AluOp::Or, R1),
            ],
            0x907,
        ),
        case(
            "cmpxchg succeeds",
            vec![
                st(Size::DW, -8, Src::Imm(7)),
                Insn::mov64(R0, 7),
                r1(9),
                atomic(Size::DW, AtomicOp::CmpXchg),
                ld(Size::DW, -8),
                a64(AluOp::Lsh, 8),
            ],
            0x900,
        ),
        case(
            "cmpxchg fails and returns the old value",
            vec![
                st(Size::DW, -8, Src::Imm(7)),
                Insn::mov64(R0, 6),
                r1(9),
                atomic(Size::DW, AtomicOp::CmpXchg),
                Insn::mov64(R2, R0),
                ld(Size::DW, -8),
                a64(AluOp::Lsh, 8),
                a64(AluOp::Or, R2),
            ],
            0x707,
        ),
        case(
            "cmpxchg32 compares the low word",
            vec![
                st(Size::DW, -8, Src::Imm(7)),
                Insn::ld_imm64(R0, 0xffff_ffff_0000_0007),
                r1(9),
                atomic(Size::W, AtomicOp::CmpXchg),
                ld(Size::DW, -8),
            ],
            9,
        ),
    ]
}

#[test]
fn instruction_semantics() {
    let mut failures = Vec::new();
    for c in alu_cases().into_iter().chain(mem_cases()) {
        let prog = Program::from_insns(c.insns.clone());
        match xdp(&prog, &mut no_maps()) {
            Ok(out) if out.retval == c.r0 => {}
            Ok(out) => failures.push(format!("{}: expected {:#x}, got {:#x}", c.name, c.r0, out.retval)),
            Err(e) => failures.push(format!("{}: expected {:#x}, got error {e}", c.name, c.r0)),
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// `r1 = a; if r1 COND b goto yes; r0 = 0; exit; yes: r0 = 1; exit`.
fn branch(wide: bool, cond: JmpCond, a: u64, b: i32) -> u64 {
    let mut bld = Builder::new();
    bld.ld_imm64(R1, a);
    if wide {
        bld.jmp(cond, R1, b, "yes");
    } else {
        bld.jmp32(cond, R1, b, "yes");
    }
    bld.ret(0).label("yes").ret(1);
    xdp(&build(&bld), &mut no_maps()).expect("runs").retval
}

#[test]
fn jump_conditions() {
    use JmpCond::*;
    let neg1 = u64::MAX;
    // (wide, cond, dst, imm, taken)
    let cases: &[(bool, JmpCond, u64, i32, bool)] = &[
        (true, Gt, neg1, 1, true),   // unsigned: 2^64-1 > 1
        (true, SGt, neg1, 1, false), // signed: -1 > 1 is false
        (true, SLt, neg1, 0, true),
        (true, Lt, neg1, 0, false),
        (true, Ge, 5, 5, true),
        (true, SGe, 5, 6, false),
        (true, Le, 5, 5, true),
        (true, SLe, neg1, -1, true),
        (true, Eq, neg1, -1, true), // the immediate is sign-extended
        (true, Ne, 0x1_0000_0000, 0, true),
        (false, Eq, 0x1_0000_0000, 0, true), // jmp32 ignores the upper half
        (false, SLt, 0x0000_0000_8000_0000, 0, true), // low word is negative as i32
        (true, SLt, 0x0000_0000_8000_0000, 0, false),
        (false, Gt, 0xffff_ffff_0000_0001, 1, false),
        (false, Eq, 0xffff_ffff, -1, true), // imm -1 is 0xffffffff in 32 bits
        (true, Eq, 0xffff_ffff, -1, false),
        (true, Set, 0b1010, 0b0010, true),
        (true, Set, 0b1010, 0b0101, false),
        (false, Set, 0x1_0000_0000, -1, false),
    ];
    for &(wide, cond, a, b, taken) in cases {
        assert_eq!(branch(wide, cond, a, b), u64::from(taken), "{cond:?} wide={wide} {a:#x} {b}");
    }
}

#[test]
fn register_jumps_and_gotol() {
    let mut b = Builder::new();
    b.ld_imm64(R1, 3).ld_imm64(R2, u64::MAX).jmp(JmpCond::SGt, R1, R2, "yes").ret(0).label("yes");
    b.emit(Insn::Ja { long: true, off: 2 }).ret(5).ret(6);
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 6);
}

#[test]
fn may_goto_is_never_taken() {
    let prog = Program::from_insns(vec![
        Insn::mov64(R0, 1),
        Insn::MayGoto { off: 1 },
        Insn::Exit,
        Insn::mov64(R0, 2),
        Insn::Exit,
    ]);
    assert_eq!(xdp(&prog, &mut no_maps()).unwrap().retval, 1);
}

#[test]
fn loop_counts_instructions() {
    let mut b = Builder::new();
    b.mov(R0, 0).label("top").add(R0, 1).jmp(JmpCond::Lt, R0, 10, "top").exit();
    let out = xdp(&build(&b), &mut no_maps()).unwrap();
    assert_eq!(out.retval, 10);
    assert_eq!(out.insns_executed, 1 + 10 * 2 + 1);
}

#[test]
fn bpf_to_bpf_calls() {
    let mut b = Builder::new();
    b.mov(R6, 7).mov(R1, 20);
    b.store(Size::DW, R10, -8, 1000);
    b.call_local("double");
    b.add(R0, R6); // r6 survives the call
    b.load(Size::DW, R1, R10, -8).add(R0, R1); // so does the caller's stack
    b.exit();
    b.label("double");
    b.mov(R6, 100).store(Size::DW, R10, -8, 1).mov(R0, R1).add(R0, R1).exit();
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 40 + 7 + 1000);
}

#[test]
fn caller_stack_pointers_reach_the_callee() {
    let mut b = Builder::new();
    b.store(Size::DW, R10, -8, 33).mov(R1, R10).add(R1, -8).call_local("deref").exit();
    b.label("deref").load(Size::DW, R0, R1, 0).exit();
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 33);
}

#[test]
fn call_depth_is_limited() {
    let mut b = Builder::new();
    b.call_local("f").exit();
    b.label("f").call_local("f").exit();
    assert!(matches!(xdp(&build(&b), &mut no_maps()), Err(ExecError::CallDepth { max: 8, .. })));
    // Seven nested calls (eight frames) are fine.
    let mut b = Builder::new();
    b.mov(R0, 0).call_local("f1").exit();
    for i in 1..=7 {
        b.label(format!("f{i}")).add(R0, 1);
        if i < 7 {
            b.call_local(format!("f{}", i + 1));
        }
        b.exit();
    }
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 7);
}

// ---- programs the verifier should have rejected ----

/// Whether an error is the one a case expects.
type IsExpected = fn(&ExecError) -> bool;

#[test]
fn errors_instead_of_panics() {
    let mut machine = Machine::new();
    machine.set_step_limit(1000);
    let mut spin = Builder::new();
    spin.label("l").ja("l");
    let cases: Vec<(&str, Program, IsExpected)> = vec![
        ("stack above r10", Program::from_insns(vec![Insn::load(Size::DW, R0, R10, 0), Insn::Exit]), |e| {
            matches!(e, ExecError::BadAccess { insn: 0, size: 8, .. })
        }),
        ("stack below 512", Program::from_insns(vec![Insn::load(Size::B, R0, R10, -513), Insn::Exit]), |e| {
            matches!(e, ExecError::BadAccess { .. })
        }),
        (
            "straddling the stack top",
            Program::from_insns(vec![Insn::load(Size::DW, R0, R10, -4), Insn::Exit]),
            |e| matches!(e, ExecError::BadAccess { .. }),
        ),
        (
            "null pointer",
            Program::from_insns(vec![Insn::mov64(R1, 0), Insn::load(Size::B, R0, R1, 0), Insn::Exit]),
            |e| matches!(e, ExecError::BadAccess { insn: 1, addr: 0, size: 1 }),
        ),
        ("write r10", Program::from_insns(vec![Insn::mov64(R10, 0), Insn::Exit]), |e| {
            matches!(e, ExecError::BadInsn { .. })
        }),
        ("fell off the end", Program::from_insns(vec![Insn::mov64(R0, 0)]), |e| {
            matches!(e, ExecError::FellOffEnd { .. })
        }),
        (
            "jump into LD_IMM64",
            Program::from_insns(vec![Insn::Ja { long: false, off: 1 }, imm(1), Insn::Exit]),
            |e| matches!(e, ExecError::BadJump { insn: 0, slot: 2 }),
        ),
        (
            "jump before the start",
            Program::from_insns(vec![Insn::Ja { long: false, off: -2 }, Insn::Exit]),
            |e| matches!(e, ExecError::BadJump { .. }),
        ),
        ("runaway loop", build(&spin), |e| matches!(e, ExecError::StepLimit { limit: 1000 })),
        ("unknown helper", Program::from_insns(vec![Insn::call(9999), Insn::Exit]), |e| {
            matches!(e, ExecError::UnknownHelper { helper: 9999, .. })
        }),
        ("tc helper in xdp", Program::from_insns(vec![Insn::call(SKB_STORE_BYTES), Insn::Exit]), |e| {
            matches!(e, ExecError::HelperUnavailable { kind: ProgKind::Xdp, .. })
        }),
        (
            "map helper on a non-map",
            Program::from_insns(vec![Insn::mov64(R1, 0), Insn::call(MAP_LOOKUP_ELEM), Insn::Exit]),
            |e| matches!(e, ExecError::NotAMap { .. }),
        ),
        (
            "unknown map",
            Program::from_insns(vec![
                Insn::LdImm64 { dst: R1, imm: Imm64::MapRef("nope".into()) },
                Insn::Exit,
            ]),
            |e| matches!(e, ExecError::UnknownMap { .. }),
        ),
        (
            "fd map loads are not emulated",
            Program::from_insns(vec![Insn::LdImm64 { dst: R1, imm: Imm64::MapFd(3) }, Insn::Exit]),
            |e| matches!(e, ExecError::Unsupported { .. }),
        ),
        (
            "kfunc",
            Program::from_insns(vec![Insn::Call(CallTarget::Kfunc { btf_id: 1, module: 0 }), Insn::Exit]),
            |e| matches!(e, ExecError::Unsupported { .. }),
        ),
        (
            "ctx write in xdp",
            Program::from_insns(vec![Insn::store(Size::W, R1, 12, R0), Insn::mov64(R0, 0), Insn::Exit]),
            |e| matches!(e, ExecError::BadAccess { .. }),
        ),
        (
            "8-byte load of xdp_md.data",
            Program::from_insns(vec![Insn::load(Size::DW, R0, R1, 0), Insn::Exit]),
            |e| matches!(e, ExecError::BadAccess { .. }),
        ),
        (
            "ld_abs in xdp",
            Program::from_insns(vec![Insn::LdAbs { size: Size::H, imm: 12 }, Insn::Exit]),
            |e| matches!(e, ExecError::BadInsn { .. }),
        ),
        (
            "atomic on the packet",
            {
                let mut b = Builder::new();
                b.load(Size::W, R2, R1, xdp_off("data")).mov(R1, 1);
                b.emit(Insn::Atomic {
                    size: Size::W,
                    op: AtomicOp::Add { fetch: false },
                    base: R2,
                    off: 0,
                    src: R1,
                });
                build(b.ret(0))
            },
            |e| matches!(e, ExecError::BadAccess { insn: 2, .. }),
        ),
        (
            "packet read past data_end",
            {
                let mut b = Builder::new();
                b.load(Size::W, R2, R1, xdp_off("data")).load(Size::B, R0, R2, 60).exit();
                build(&b)
            },
            |e| matches!(e, ExecError::BadAccess { insn: 1, size: 1, .. }),
        ),
        (
            "packet read into the headroom",
            {
                let mut b = Builder::new();
                b.load(Size::W, R2, R1, xdp_off("data")).load(Size::B, R0, R2, -1).exit();
                build(&b)
            },
            |e| matches!(e, ExecError::BadAccess { .. }),
        ),
    ];
    for (name, prog, check) in cases {
        let got = machine.run(&prog, ProgKind::Xdp, &mut Context::new(eth_ipv4()), &mut no_maps());
        match got {
            Err(e) if check(&e) => {}
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn short_packets_and_unemulated_kinds() {
    let prog = Program::from_insns(vec![Insn::mov64(R0, 0), Insn::Exit]);
    assert_eq!(run_tc(&prog, &[0; 13], &mut no_maps()), Err(ExecError::PacketTooShort { len: 13 }));
    // XDP runs runt frames: the program's bounds checks decide.
    assert_eq!(run_xdp(&prog, &[0; 13], &mut no_maps()).map(|o| o.retval), Ok(0));
    let err = run(&prog, ProgKind::SockOps, &mut Context::new(eth_ipv4()), &mut no_maps());
    assert_eq!(err, Err(ExecError::UnsupportedKind { kind: ProgKind::SockOps }));
}

// ---- contexts ----

#[test]
fn xdp_reads_the_packet() {
    let mut b = Builder::new();
    b.load(Size::W, R2, R1, xdp_off("data")).load(Size::W, R3, R1, xdp_off("data_end"));
    b.mov(R4, R2).add(R4, 14).jmp(JmpCond::Gt, R4, R3, "short");
    b.load(Size::H, R0, R2, 12).be(16, R0).exit();
    b.label("short").ret(0);
    let prog = build(&b);
    let out = xdp(&prog, &mut no_maps()).unwrap();
    assert_eq!(out.retval, 0x0800);
    assert_eq!(out.packet, eth_ipv4(), "an untouched packet comes back as it was");
    assert!(out.meta.is_empty());
}

#[test]
fn xdp_context_fields() {
    let mut b = Builder::new();
    b.load(Size::W, R2, R1, xdp_off("data")).load(Size::W, R3, R1, xdp_off("data_end"));
    b.load(Size::W, R4, R1, xdp_off("data_meta"));
    b.mov(R0, R3).alu(AluOp::Sub, R0, R2); // packet length
    b.alu(AluOp::Sub, R4, R2).alu(AluOp::Lsh, R4, 8).alu(AluOp::Or, R0, R4); // meta == data
    b.load(Size::W, R5, R1, xdp_off("ingress_ifindex")).alu(AluOp::Lsh, R5, 16).alu(AluOp::Or, R0, R5);
    b.load(Size::W, R5, R1, xdp_off("rx_queue_index")).alu(AluOp::Lsh, R5, 24).alu(AluOp::Or, R0, R5);
    b.exit();
    let mut ctx = Context::new(eth_ipv4());
    ctx.ingress_ifindex = 9;
    ctx.rx_queue_index = 3;
    let out = run(&build(&b), ProgKind::Xdp, &mut ctx, &mut no_maps()).unwrap();
    assert_eq!(out.retval, 60 | 9 << 16 | 3 << 24);
}

#[test]
fn tc_context_fields() {
    let mut b = Builder::new();
    b.load(Size::W, R2, R1, skb_off("protocol"));
    b.store(Size::W, R1, skb_off("mark"), R2);
    b.load(Size::W, R3, R1, skb_off("len"));
    b.store(Size::W, R1, skb_off("cb0") + 4, R3);
    b.load(Size::H, R4, R1, skb_off("ifindex")); // narrow read of a scalar field
    b.store(Size::W, R1, skb_off("priority"), R4);
    b.ld_imm64(R5, 0x0102_0304_0506_0708).store(Size::DW, R1, skb_off("cb0") + 8, R5); // cb takes any aligned size
    b.store(Size::DW, R1, skb_off("tstamp"), R5);
    b.load(Size::B, R0, R1, skb_off("cb0") + 8).alu(AluOp::Lsh, R0, 32).alu(AluOp::Or, R0, R2);
    b.exit();
    let mut ctx = Context::new(eth_ipv4());
    ctx.ifindex = 0x1_0005;
    let out = run(&build(&b), ProgKind::SchedCls, &mut ctx, &mut no_maps()).unwrap();
    assert_eq!(out.retval, 0x08_0000_0008, "protocol reads as a __be16: 0x0800 becomes 0x0008");
    assert_eq!(out.ctx_out.mark, 0x0008);
    assert_eq!(out.ctx_out.cb, [0, 60, 0x0506_0708, 0x0102_0304, 0]);
    assert_eq!(out.ctx_out.priority, 5);
    assert_eq!(out.ctx_out.tstamp, 0x0102_0304_0506_0708);
    assert_eq!(ctx.skb, out.ctx_out, "the context is updated in place");
}

#[test]
fn tc_rejects_bad_context_accesses() {
    let cases: Vec<(&str, Insn)> = vec![
        ("write a read-only field", Insn::store(Size::W, R1, skb_off("len"), R0)),
        ("narrow write", Insn::store(Size::H, R1, skb_off("mark"), R0)),
        ("narrow read of data", Insn::load(Size::H, R0, R1, skb_off("data"))),
        ("misaligned read", Insn::load(Size::W, R0, R1, skb_off("mark") + 2)),
        ("beyond the context", Insn::load(Size::W, R0, R1, 4096)),
        ("a hole in the table", Insn::load(Size::W, R0, R1, 88)),
    ];
    for (name, insn) in cases {
        let prog = Program::from_insns(vec![Insn::mov64(R0, 0), insn, Insn::Exit]);
        let got = run_tc(&prog, &eth_ipv4(), &mut no_maps());
        assert!(matches!(got, Err(ExecError::BadAccess { insn: 1, .. })), "{name}: {got:?}");
    }
}

#[test]
fn ld_abs_and_ld_ind() {
    let prog = Program::from_insns(vec![
        Insn::mov64(R6, R1),
        Insn::LdAbs { size: Size::H, imm: 12 },
        Insn::mov64(R7, R0),
        Insn::mov64(R2, 10),
        Insn::LdInd { size: Size::W, src: R2, imm: 2 },
        Insn::alu64(AluOp::Lsh, R7, 32),
        Insn::alu64(AluOp::Or, R0, R7),
        Insn::Exit,
    ]);
    let mut p = eth_ipv4();
    p[14..16].copy_from_slice(&[0x45, 0x00]);
    assert_eq!(run_tc(&prog, &p, &mut no_maps()).unwrap().retval, 0x0000_0800_0800_4500);
    let oob =
        Program::from_insns(vec![Insn::LdAbs { size: Size::W, imm: 58 }, Insn::mov64(R0, 99), Insn::Exit]);
    let out = run_tc(&oob, &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!(out.retval, 0, "an out-of-bounds ld_abs ends the program with 0");
    assert_eq!(out.insns_executed, 1);
}

// ---- maps from programs ----

/// `key = 0 (u32 on the stack); r0 = lookup(map, &key); if r0 { *(u64 *)r0 += 1 }; return XDP_PASS`.
fn count_in(map: &str) -> Program {
    let mut b = Builder::new();
    b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).ld_map(R1, map).call(MAP_LOOKUP_ELEM);
    b.jmp(JmpCond::Eq, R0, 0, "out").mov(R1, 1);
    b.emit(Insn::Atomic { size: Size::DW, op: AtomicOp::Add { fetch: false }, base: R0, off: 0, src: R1 });
    b.label("out").ret(XDP_PASS as i32);
    build(&b)
}

#[test]
fn map_lookup_and_increment() {
    let mut maps = MapSet::new(&[spec("counters", MapKind::Array, 4, 8, 4)], 1).unwrap();
    let prog = count_in("counters");
    for _ in 0..2 {
        assert_eq!(xdp(&prog, &mut maps).unwrap().retval, XDP_PASS);
    }
    assert_eq!(maps.get("counters").unwrap().lookup(&0u32.to_le_bytes()), Some(&2u64.to_le_bytes()[..]));
}

#[test]
fn per_cpu_counters_follow_the_current_cpu() {
    let mut maps = MapSet::new(&[spec("stats", MapKind::PerCpuArray, 4, 8, 1)], 2).unwrap();
    let prog = count_in("stats");
    xdp(&prog, &mut maps).unwrap();
    maps.set_cpu(1).unwrap();
    xdp(&prog, &mut maps).unwrap();
    xdp(&prog, &mut maps).unwrap();
    let per_cpu = maps.get("stats").unwrap().lookup_percpu(&0u32.to_le_bytes()).unwrap();
    assert_eq!(per_cpu, vec![1u64.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec()]);
    let cpu = Program::from_insns(vec![Insn::call(GET_SMP_PROCESSOR_ID), Insn::Exit]);
    assert_eq!(xdp(&cpu, &mut maps).unwrap().retval, 1);
}

#[test]
fn hash_update_lookup_delete_from_a_program() {
    let mut maps = MapSet::new(&[spec("h", MapKind::Hash, 4, 4, 1)], 1).unwrap();
    // update(h, &7, &99, BPF_NOEXIST) twice (second: -EEXIST), update key 8 (-E2BIG),
    // lookup 7, delete 7, delete 7 again (-ENOENT).
    let mut b = Builder::new();
    b.store(Size::W, R10, -4, 7).store(Size::W, R10, -8, 99).store(Size::W, R10, -12, 8);
    let update = |b: &mut Builder, key_off: i32| {
        b.ld_map(R1, "h").mov(R2, R10).add(R2, key_off).mov(R3, R10).add(R3, -8).mov(R4, 1);
        b.call(MAP_UPDATE_ELEM);
    };
    update(&mut b, -4);
    b.store(Size::DW, R10, -24, R0);
    update(&mut b, -4);
    b.store(Size::DW, R10, -32, R0);
    update(&mut b, -12);
    b.store(Size::DW, R10, -40, R0);
    b.ld_map(R1, "h").mov(R2, R10).add(R2, -4).call(MAP_LOOKUP_ELEM).load(Size::W, R6, R0, 0);
    b.ld_map(R1, "h").mov(R2, R10).add(R2, -4).call(MAP_DELETE_ELEM).store(Size::DW, R10, -48, R0);
    b.ld_map(R1, "h").mov(R2, R10).add(R2, -4).call(MAP_DELETE_ELEM).store(Size::DW, R10, -56, R0);
    // Pack the results: one byte each of -errno, then the looked-up value.
    b.mov(R0, R6);
    for off in [-24, -32, -40, -48, -56] {
        b.load(Size::DW, R1, R10, off).alu(AluOp::Lsh, R0, 8).alu(AluOp::Sub, R0, R1);
    }
    b.exit();
    let out = xdp(&build(&b), &mut maps).unwrap();
    let expect = [0, errno::EEXIST, errno::E2BIG, 0, errno::ENOENT]
        .iter()
        .fold(99u64, |acc, &e| (acc << 8).wrapping_add(e as u64));
    assert_eq!(out.retval, expect);
    assert!(maps.get("h").unwrap().is_empty());
}

#[test]
fn map_value_bounds_and_use_after_delete() {
    let mut maps = MapSet::new(&[spec("h", MapKind::Hash, 4, 8, 4)], 1).unwrap();
    maps.get_mut("h").unwrap().update(&1u32.to_le_bytes(), &[0; 8], BPF_ANY).unwrap();
    let lookup = |b: &mut Builder| {
        b.store(Size::W, R10, -4, 1).mov(R2, R10).add(R2, -4).ld_map(R1, "h").call(MAP_LOOKUP_ELEM);
    };
    let mut past_end = Builder::new();
    lookup(&mut past_end);
    past_end.load(Size::B, R0, R0, 8).exit();
    assert!(matches!(xdp(&build(&past_end), &mut maps), Err(ExecError::BadAccess { size: 1, .. })));
    let mut after_delete = Builder::new();
    lookup(&mut after_delete);
    after_delete.mov(R6, R0).ld_map(R1, "h").mov(R2, R10).add(R2, -4).call(MAP_DELETE_ELEM);
    after_delete.load(Size::DW, R0, R6, 0).exit();
    assert!(matches!(xdp(&build(&after_delete), &mut maps), Err(ExecError::BadAccess { .. })));
}

#[test]
fn lru_lookup_from_a_program_refreshes() {
    let mut maps = MapSet::new(&[spec("lru", MapKind::LruHash, 4, 4, 2)], 1).unwrap();
    let m = maps.get_mut("lru").unwrap();
    m.update(&1u32.to_le_bytes(), &[1; 4], BPF_ANY).unwrap();
    m.update(&2u32.to_le_bytes(), &[2; 4], BPF_ANY).unwrap();
    let mut b = Builder::new();
    b.store(Size::W, R10, -4, 1).mov(R2, R10).add(R2, -4).ld_map(R1, "lru").call(MAP_LOOKUP_ELEM).ret(0);
    xdp(&build(&b), &mut maps).unwrap();
    let m = maps.get_mut("lru").unwrap();
    m.update(&3u32.to_le_bytes(), &[3; 4], BPF_ANY).unwrap();
    assert_eq!(m.keys(), vec![1u32.to_le_bytes().to_vec(), 3u32.to_le_bytes().to_vec()]);
}

#[test]
fn lpm_lookup_from_a_program() {
    let mut maps = MapSet::new(&[spec("routes", MapKind::LpmTrie, 8, 4, 8)], 1).unwrap();
    let m = maps.get_mut("routes").unwrap();
    for (addr, plen, v) in [([10, 0, 0, 0], 8u32, 8u32), ([10, 1, 0, 0], 16, 16), ([0, 0, 0, 0], 0, 1)] {
        let mut k = plen.to_le_bytes().to_vec();
        k.extend_from_slice(&addr);
        m.update(&k, &v.to_le_bytes(), BPF_ANY).unwrap();
    }
    let mut lookup = |addr: [u8; 4]| {
        let mut b = Builder::new();
        b.store(Size::W, R10, -8, 32).store(Size::W, R10, -4, i32::from_le_bytes(addr));
        b.mov(R2, R10).add(R2, -8).ld_map(R1, "routes").call(MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, R0, 0, "miss").load(Size::W, R0, R0, 0).exit().label("miss").ret(-1);
        xdp(&build(&b), &mut maps).unwrap().retval
    };
    assert_eq!(lookup([10, 1, 200, 3]), 16);
    assert_eq!(lookup([10, 2, 0, 1]), 8);
    assert_eq!(lookup([11, 0, 0, 1]), 1);
}

#[test]
fn direct_map_value_access() {
    let mut maps = MapSet::new(&[spec("globals", MapKind::Array, 4, 8, 1)], 1).unwrap();
    let mut b = Builder::new();
    b.ld_map_value(R1, "globals", 4).store(Size::W, R1, 0, 77).load(Size::W, R0, R1, 0).exit();
    assert_eq!(xdp(&build(&b), &mut maps).unwrap().retval, 77);
    assert_eq!(
        maps.get("globals").unwrap().lookup(&0u32.to_le_bytes()),
        Some(&[0, 0, 0, 0, 77, 0, 0, 0][..])
    );
    let mut too_far = Builder::new();
    too_far.ld_map_value(R1, "globals", 8).ret(0);
    assert!(matches!(xdp(&build(&too_far), &mut maps), Err(ExecError::BadInsn { .. })));
}

#[test]
fn map_kinds_helpers_may_not_use() {
    let mut maps = MapSet::new(&[spec("rb", MapKind::RingBuf, 0, 0, 4096)], 1).unwrap();
    let mut b = Builder::new();
    b.mov(R2, R10).add(R2, -8).ld_map(R1, "rb").call(MAP_LOOKUP_ELEM).exit();
    assert!(matches!(
        xdp(&build(&b), &mut maps),
        Err(ExecError::MapNotAllowed { kind: MapKind::RingBuf, .. })
    ));
}

#[test]
fn ringbuf_output_records() {
    let mut maps = MapSet::new(&[spec("events", MapKind::RingBuf, 0, 0, 4096)], 1).unwrap();
    let mut b = Builder::new();
    b.ld_imm64(R1, 0x1122_3344_5566_7788).store(Size::DW, R10, -8, R1);
    b.ld_map(R1, "events").mov(R2, R10).add(R2, -8).mov(R3, 8).mov(R4, 0).call(RINGBUF_OUTPUT).exit();
    let prog = build(&b);
    assert_eq!(xdp(&prog, &mut maps).unwrap().retval, 0);
    assert_eq!(maps.get("events").unwrap().records(), &[0x1122_3344_5566_7788u64.to_le_bytes().to_vec()]);
    // 4096 bytes hold 256 records of 16 bytes; the next one fails with -EAGAIN.
    for _ in 1..256 {
        assert_eq!(xdp(&prog, &mut maps).unwrap().retval, 0);
    }
    assert_eq!(xdp(&prog, &mut maps).unwrap().retval, (-i64::from(errno::EAGAIN)) as u64);
}

#[test]
fn tail_calls() {
    let mut maps = MapSet::new(&[spec("jmp", MapKind::ProgArray, 4, 4, 2)], 1).unwrap();
    maps.get_mut("jmp").unwrap().update(&1u32.to_le_bytes(), &0u32.to_le_bytes(), BPF_ANY).unwrap();
    let caller = |slot: i32| {
        let mut b = Builder::new();
        b.ld_map(R2, "jmp").mov(R3, slot).call(TAIL_CALL).ret(1);
        build(&b)
    };
    let mut target = Builder::new();
    target.load(Size::W, R0, R1, xdp_off("ingress_ifindex")).add(R0, 41).exit();
    let mut machine = Machine::new();
    machine.set_programs(vec![build(&target)]);
    let mut go = |prog: &Program, maps: &mut MapSet| {
        machine.run(prog, ProgKind::Xdp, &mut Context::new(eth_ipv4()), maps).unwrap()
    };
    let out = go(&caller(1), &mut maps);
    assert_eq!((out.retval, out.tail_calls), (42, 1), "the target sees the same ctx in r1");
    let out = go(&caller(0), &mut maps);
    assert_eq!((out.retval, out.tail_calls), (1, 0), "an empty slot falls through");
    let out = go(&caller(7), &mut maps);
    assert_eq!(out.retval, 1, "an index past max_entries falls through");
}

#[test]
fn tail_call_limit() {
    let mut maps = MapSet::new(&[spec("jmp", MapKind::ProgArray, 4, 4, 1)], 1).unwrap();
    maps.get_mut("jmp").unwrap().update(&0u32.to_le_bytes(), &0u32.to_le_bytes(), BPF_ANY).unwrap();
    let mut b = Builder::new();
    b.ld_map(R2, "jmp").mov(R3, 0).call(TAIL_CALL).ret(7);
    let prog = build(&b);
    let mut machine = Machine::new();
    machine.set_programs(vec![prog.clone()]);
    let out = machine.run(&prog, ProgKind::Xdp, &mut Context::new(eth_ipv4()), &mut maps).unwrap();
    assert_eq!((out.retval, out.tail_calls), (7, 33));
}

// ---- one machine, many runs ----

/// Module header: "Stacks start zeroed", and the packet frame is built afresh for each run
/// (as `BPF_PROG_TEST_RUN` builds it): a machine reused from run to run must not let one
/// run's stack or packet bytes show through in the next.
#[test]
fn a_reused_machine_starts_every_run_afresh() {
    // r0 = what the main frame's and the callee's stack held at fp-8 before they wrote
    // there, plus the first of 16 headroom bytes taken into the packet before the program
    // writes 0xff there.
    let mut b = Builder::new();
    b.mov(R6, R1);
    b.load(Size::DW, R7, R10, -8).store(Size::DW, R10, -8, 7);
    b.call_local("callee").add(R7, R0);
    b.mov(R1, R6).mov(R2, -16).call(XDP_ADJUST_HEAD);
    b.jmp(JmpCond::Ne, R0, 0, "no_room");
    b.load(Size::W, R2, R6, xdp_off("data")).load(Size::W, R3, R6, xdp_off("data_end"));
    b.mov(R4, R2).add(R4, 1).jmp(JmpCond::Gt, R4, R3, "no_room");
    b.load(Size::B, R0, R2, 0).store(Size::B, R2, 0, 0xff).add(R0, R7).exit();
    b.label("no_room").ret(-1);
    b.label("callee").load(Size::DW, R0, R10, -8).store(Size::DW, R10, -8, 9).exit();
    let prog = build(&b);
    let mut machine = Machine::new();
    let mut go = |packet: Vec<u8>| {
        let mut ctx = Context::new(packet);
        machine.run(&prog, ProgKind::Xdp, &mut ctx, &mut no_maps()).unwrap().retval
    };
    let big = vec![0xab; 3000];
    let small = eth_ipv4();
    let runs = [go(big.clone()), go(small.clone()), go(big), go(small)];
    // Fresh stacks read 0, and so does the headroom.
    assert_eq!(runs, [0, 0, 0, 0], "retval of each run on one machine");
}

/// `Runner`: each packet runs as `run` runs it on a fresh machine and context.
#[test]
fn a_runner_gives_what_fresh_runs_give() {
    let mut maps = MapSet::new(&[spec("seen", MapKind::Array, 4, 8, 1)], 1).unwrap();
    // Draws a random number, counts the packet in `seen`, rewrites the first byte of the
    // packet to the count, returns the random number.
    let mut b = Builder::new();
    b.mov(R6, R1).call(GET_PRANDOM_U32).mov(R8, R0);
    b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).ld_map(R1, "seen").call(MAP_LOOKUP_ELEM);
    b.jmp(JmpCond::Eq, R0, 0, "out");
    b.load(Size::DW, R1, R0, 0).add(R1, 1).store(Size::DW, R0, 0, R1);
    b.load(Size::W, R2, R6, xdp_off("data")).load(Size::W, R3, R6, xdp_off("data_end"));
    b.mov(R4, R2).add(R4, 1).jmp(JmpCond::Gt, R4, R3, "out");
    b.store(Size::B, R2, 0, R1);
    b.label("out").mov(R0, R8).exit();
    let prog = build(&b);
    let mut fresh_maps = maps.clone();
    let mut runner = Runner::new(&prog, ProgKind::Xdp);
    assert_eq!(runner.kind(), ProgKind::Xdp);
    for (i, packet) in [eth_ipv4(), vec![0xab; 1500], vec![1, 2, 3], eth_ipv4()].into_iter().enumerate() {
        let want = run_xdp(&prog, &packet, &mut fresh_maps).unwrap();
        let got = runner.run(&packet, &mut maps).unwrap();
        let got_packet = runner.packet().to_vec();
        assert_eq!(
            (got.retval, got.insns_executed, got.tail_calls, got.redirect, &got_packet),
            (want.retval, want.insns_executed, want.tail_calls, want.redirect, &want.packet),
            "packet {i} ({} bytes): runner vs a fresh run",
            packet.len()
        );
        assert_eq!(got_packet[0], i as u8 + 1, "packet {i}: the count reached the packet");
    }
}

/// A runner resolves map references once per map set: another set, where the same name is
/// another map (or none), gets its own answers.
#[test]
fn a_runner_resolves_map_references_per_map_set() {
    let mut b = Builder::new();
    b.ld_map(R0, "m").exit();
    let prog = build(&b);
    let mut first =
        MapSet::new(&[spec("x", MapKind::Array, 4, 4, 1), spec("m", MapKind::Array, 4, 4, 1)], 1).unwrap();
    let mut second = MapSet::new(&[spec("m", MapKind::Array, 4, 4, 1)], 1).unwrap();
    let (mut neither, mut first_clone) = (no_maps(), first.clone());
    let mut runner = Runner::new(&prog, ProgKind::Xdp);
    for (name, maps) in
        [("first", &mut first), ("second", &mut second), ("first (a clone)", &mut first_clone)]
    {
        let want = run_xdp(&prog, &eth_ipv4(), maps).unwrap().retval;
        assert_eq!(runner.run(&eth_ipv4(), maps).unwrap().retval, want, "`m`'s handle in the {name} set");
    }
    assert_ne!(
        run_xdp(&prog, &eth_ipv4(), &mut first).unwrap().retval,
        run_xdp(&prog, &eth_ipv4(), &mut second).unwrap().retval,
        "the two sets give `m` different handles"
    );
    assert!(matches!(runner.run(&eth_ipv4(), &mut neither), Err(ExecError::UnknownMap { insn: 0, .. })));
}

// ---- helpers ----

#[test]
fn clock_random_and_cpu() {
    let prog = Program::from_insns(vec![Insn::call(KTIME_GET_NS), Insn::Exit]);
    let mut ctx = Context::new(eth_ipv4());
    ctx.now_ns = 123_456;
    assert_eq!(run(&prog, ProgKind::Xdp, &mut ctx, &mut no_maps()).unwrap().retval, 123_456);
    let rand = Program::from_insns(vec![Insn::call(GET_PRANDOM_U32), Insn::Exit]);
    let draw = |m: &mut Machine| {
        m.run(&rand, ProgKind::Xdp, &mut Context::new(eth_ipv4()), &mut no_maps()).unwrap().retval
    };
    let (mut a, mut b) = (Machine::with_seed(1), Machine::with_seed(1));
    let first = draw(&mut a);
    assert_eq!(first, draw(&mut b), "same seed, same sequence");
    assert!(first <= u64::from(u32::MAX));
    assert_ne!(first, draw(&mut a), "the sequence moves on");
}

#[test]
fn redirect_verdicts() {
    let redirect = |flags: i32| {
        Program::from_insns(vec![
            Insn::mov64(R1, 5),
            Insn::mov64(R2, flags),
            Insn::call(REDIRECT),
            Insn::Exit,
        ])
    };
    let out = xdp(&redirect(0), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect), (XDP_REDIRECT, Some((5, 0))));
    let out = xdp(&redirect(1), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect), (XDP_ABORTED, None), "xdp redirect takes no flags");
    let out = run_tc(&redirect(1), &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect), (TC_ACT_REDIRECT, Some((5, 1))), "BPF_F_INGRESS");
    let out = run_tc(&redirect(2), &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect), (TC_ACT_SHOT, None));
}

/// `bpf_redirect_peer` (tc ingress, Linux 5.10+): no flags; `TC_ACT_REDIRECT` and the
/// target recorded as a peer redirect. Not an XDP helper: the verifier refuses it there.
#[test]
fn redirect_peer_verdicts() {
    const REDIRECT_PEER: i32 = 155;
    let redirect_peer = |flags: i32| {
        Program::from_insns(vec![
            Insn::mov64(R1, 5),
            Insn::mov64(R2, flags),
            Insn::call(REDIRECT_PEER),
            Insn::Exit,
        ])
    };
    let out = run_tc(&redirect_peer(0), &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect, out.redirect_peer), (TC_ACT_REDIRECT, Some((5, 0)), true));
    let out = run_tc(&redirect_peer(1), &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.redirect, out.redirect_peer), (TC_ACT_SHOT, None, false), "no flags");
    let accepted = |kind| sluice_verifier_sim::verifier::verify(&redirect_peer(0), kind, &[]).is_ok();
    assert!(accepted(ProgKind::SchedCls));
    assert!(!accepted(ProgKind::Xdp), "a tc-only helper");
}

#[test]
fn redirect_map_stands_in_for_a_devmap() {
    let mut maps = MapSet::new(&[spec("tx", MapKind::Array, 4, 4, 4)], 1).unwrap();
    maps.get_mut("tx").unwrap().update(&1u32.to_le_bytes(), &7u32.to_le_bytes(), BPF_ANY).unwrap();
    let prog = |key: i32| {
        let mut b = Builder::new();
        b.ld_map(R1, "tx").mov(R2, key).mov(R3, XDP_PASS as i32).call(REDIRECT_MAP).exit();
        build(&b)
    };
    let out = xdp(&prog(1), &mut maps).unwrap();
    assert_eq!((out.retval, out.redirect), (XDP_REDIRECT, Some((7, XDP_PASS))));
    let out = xdp(&prog(9), &mut maps).unwrap();
    assert_eq!((out.retval, out.redirect), (XDP_PASS, None), "a miss returns the flags' action");
}

#[test]
fn fib_lookup_is_not_forwarded() {
    let mut b = Builder::new();
    b.mov(R2, R10).add(R2, -64).mov(R3, 64).mov(R4, 0).call(FIB_LOOKUP).exit();
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 4);
    let mut short = Builder::new();
    short.mov(R2, R10).add(R2, -64).mov(R3, 32).mov(R4, 0).call(FIB_LOOKUP).exit();
    assert_eq!(xdp(&build(&short), &mut no_maps()).unwrap().retval, (-i64::from(errno::EINVAL)) as u64);
}

/// `xdp_adjust_head(ctx, delta)`; returns the helper's result.
fn adjust_head(delta: i32) -> Program {
    Program::from_insns(vec![Insn::mov64(R2, delta), Insn::call(XDP_ADJUST_HEAD), Insn::Exit])
}

#[test]
fn xdp_adjust_head_moves_data() {
    let mut packet = eth_ipv4();
    packet[20] = 0xab;
    let mut ctx = Context::new(packet.clone());
    let out = run(&adjust_head(14), ProgKind::Xdp, &mut ctx, &mut no_maps()).unwrap();
    assert_eq!(out.retval, 0);
    assert_eq!(out.packet, packet[14..].to_vec());
    assert_eq!(ctx.packet, out.packet, "the context holds the packet as left");
    let out = run_xdp(&adjust_head(-20), &packet, &mut no_maps()).unwrap();
    let mut grown = vec![0u8; 20];
    grown.extend_from_slice(&packet);
    assert_eq!(out.packet, grown, "headroom is zeroed");
    let einval = (-i64::from(errno::EINVAL)) as u64;
    // 256 bytes of headroom, of which sizeof(struct xdp_frame) = 40 stay reserved.
    assert_eq!(run_xdp(&adjust_head(-216), &packet, &mut no_maps()).unwrap().retval, 0);
    assert_eq!(run_xdp(&adjust_head(-217), &packet, &mut no_maps()).unwrap().retval, einval);
    // At least ETH_HLEN bytes must remain.
    assert_eq!(run_xdp(&adjust_head(60 - 14), &packet, &mut no_maps()).unwrap().retval, 0);
    let out = run_xdp(&adjust_head(60 - 13), &packet, &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.packet.len()), (einval, 60));
}

#[test]
fn stale_packet_pointer_after_adjust_head() {
    let mut b = Builder::new();
    b.mov(R6, R1).load(Size::W, R7, R6, xdp_off("data"));
    b.mov(R1, R6).mov(R2, 14).call(XDP_ADJUST_HEAD);
    b.load(Size::B, R0, R7, 0).exit();
    assert!(matches!(xdp(&build(&b), &mut no_maps()), Err(ExecError::BadAccess { insn: 5, .. })));
}

/// A tc program that rewrites the IPv4 destination to `new` with `skb_store_bytes` and
/// fixes both checksums. `by_diff`: fix the UDP checksum with a `csum_diff` result
/// instead of the 4-byte form.
fn dnat(new: [u8; 4], by_diff: bool) -> Program {
    let daddr = (IP + 16) as i32;
    let mut b = Builder::new();
    b.mov(R6, R1);
    b.mov(R1, R6).mov(R2, daddr).mov(R3, R10).add(R3, -8).mov(R4, 4).call(SKB_LOAD_BYTES);
    b.load(Size::W, R7, R10, -8);
    b.store(Size::W, R10, -4, i32::from_le_bytes(new)).load(Size::W, R8, R10, -4);
    b.mov(R1, R6).mov(R2, daddr).mov(R3, R10).add(R3, -4).mov(R4, 4).mov(R5, 0).call(SKB_STORE_BYTES);
    b.mov(R1, R6).mov(R2, (IP + 10) as i32).mov(R3, R7).mov(R4, R8).mov(R5, 4).call(L3_CSUM_REPLACE);
    let flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as i32;
    if by_diff {
        b.mov(R1, R10).add(R1, -8).mov(R2, 4).mov(R3, R10).add(R3, -4).mov(R4, 4).mov(R5, 0).call(CSUM_DIFF);
        b.mov(R1, R6).mov(R2, (UDP + 6) as i32).mov(R3, 0).mov(R4, R0).mov(R5, flags).call(L4_CSUM_REPLACE);
    } else {
        b.mov(R1, R6)
            .mov(R2, (UDP + 6) as i32)
            .mov(R3, R7)
            .mov(R4, R8)
            .mov(R5, flags | 4)
            .call(L4_CSUM_REPLACE);
    }
    b.exit();
    build(&b)
}

#[test]
fn l3_l4_csum_replace_give_correct_checksums() {
    let before = udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 53, b"hello checksum");
    let cases: &[([u8; 4], bool)] = &[
        ([192, 168, 77, 9], false),
        ([192, 168, 77, 9], true),
        ([1, 2, 3, 4], false),
        ([255, 0, 255, 0], true),
    ];
    for &(new, by_diff) in cases {
        let out = run_tc(&dnat(new, by_diff), &before, &mut no_maps()).unwrap();
        assert_eq!(out.retval, 0);
        let want = udp_packet([10, 0, 0, 1], new, 1234, 53, b"hello checksum");
        assert_eq!(out.packet, want, "dnat to {new:?} (by_diff {by_diff})");
        assert_eq!(internet_checksum(&out.packet[IP..UDP]), 0, "the IPv4 header verifies");
    }
}

#[test]
fn l4_csum_replace_two_byte_field() {
    let before = udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 53, b"x");
    let mut b = Builder::new();
    b.mov(R6, R1).load(Size::W, R2, R6, skb_off("data")).load(Size::W, R3, R6, skb_off("data_end"));
    b.mov(R4, R2).add(R4, UDP as i32 + 8).jmp(JmpCond::Gt, R4, R3, "out");
    b.load(Size::H, R7, R2, UDP as i16 + 2); // old port, network order
    b.store(Size::H, R2, UDP as i16 + 2, i32::from(u16::from_ne_bytes(5353u16.to_be_bytes())));
    b.mov(R1, R6).mov(R2, (UDP + 6) as i32).mov(R3, R7);
    b.mov(R4, i32::from(u16::from_ne_bytes(5353u16.to_be_bytes()))).mov(R5, 2).call(L4_CSUM_REPLACE);
    b.label("out").exit();
    let out = run_tc(&build(&b), &before, &mut no_maps()).unwrap();
    assert_eq!(out.packet, udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 5353, b"x"));
}

#[test]
fn l4_csum_replace_leaves_a_zero_udp_checksum() {
    let mut before = udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 53, b"x");
    before[UDP + 6..UDP + 8].copy_from_slice(&[0, 0]);
    let out = run_tc(&dnat([10, 0, 0, 3], false), &before, &mut no_maps()).unwrap();
    assert_eq!(&out.packet[UDP + 6..UDP + 8], &[0, 0], "BPF_F_MARK_MANGLED_0 keeps 'no checksum'");
    assert_eq!(internet_checksum(&out.packet[IP..UDP]), 0);
}

#[test]
fn csum_helpers_validate_arguments() {
    let call = |helper: i32, off: i32, flags: i32| {
        Program::from_insns(vec![
            Insn::mov64(R2, off),
            Insn::mov64(R3, 0),
            Insn::mov64(R4, 1),
            Insn::mov64(R5, flags),
            Insn::call(helper),
            Insn::Exit,
        ])
    };
    let einval = (-i64::from(errno::EINVAL)) as u64;
    let efault = (-i64::from(errno::EFAULT)) as u64;
    let p = eth_ipv4();
    let cases = [
        ("odd offset", call(L3_CSUM_REPLACE, 25, 2), efault),
        ("past the end", call(L3_CSUM_REPLACE, 60, 2), efault),
        ("bad size", call(L3_CSUM_REPLACE, 24, 3), einval),
        ("l3 rejects pseudo", call(L3_CSUM_REPLACE, 24, BPF_F_PSEUDO_HDR as i32 | 2), einval),
        ("diff form with from = 0", call(L4_CSUM_REPLACE, 40, 0), 0),
    ];
    for (name, prog, want) in cases {
        assert_eq!(run_tc(&prog, &p, &mut no_maps()).unwrap().retval, want, "{name}");
    }
    let from_nonzero = Program::from_insns(vec![
        Insn::mov64(R2, 40),
        Insn::mov64(R3, 1),
        Insn::mov64(R4, 1),
        Insn::mov64(R5, 0),
        Insn::call(L4_CSUM_REPLACE),
        Insn::Exit,
    ]);
    assert_eq!(run_tc(&from_nonzero, &p, &mut no_maps()).unwrap().retval, einval);
}

#[test]
fn csum_diff_matches_the_kernel_selftest() {
    // tools/testing/selftests/bpf/prog_tests/test_csum_diff.c: pushing
    // 0xdeadbeefdeadbeef with seed 0 gives 0x3b3b.
    let mut b = Builder::new();
    b.ld_imm64(R1, 0xdead_beef_dead_beef).store(Size::DW, R10, -8, R1);
    b.mov(R1, 0).mov(R2, 0).mov(R3, R10).add(R3, -8).mov(R4, 8).mov(R5, 0).call(CSUM_DIFF).exit();
    assert_eq!(xdp(&build(&b), &mut no_maps()).unwrap().retval, 0x3b3b);
}

#[test]
fn skb_load_and_store_bytes() {
    let mut b = Builder::new();
    b.mov(R6, R1);
    b.mov(R1, R6).mov(R2, 12).mov(R3, R10).add(R3, -8).mov(R4, 2).call(SKB_LOAD_BYTES);
    b.mov(R1, R6).mov(R2, 0).mov(R3, R10).add(R3, -8).mov(R4, 2).mov(R5, BPF_F_RECOMPUTE_CSUM as i32);
    b.call(SKB_STORE_BYTES).mov(R7, R0);
    b.mov(R1, R6).mov(R2, 59).mov(R3, R10).add(R3, -16).mov(R4, 2).call(SKB_LOAD_BYTES);
    b.mov(R0, R0).alu(AluOp::Lsh, R0, 8).alu(AluOp::Or, R0, R7).exit();
    let mut ctx = Context::new(eth_ipv4());
    ctx.ip_summed = IpSummed::Complete(0);
    let out = run(&build(&b), ProgKind::SchedCls, &mut ctx, &mut no_maps()).unwrap();
    assert_eq!(&out.packet[..2], &[0x08, 0x00]);
    assert_eq!(out.retval, (-i64::from(errno::EFAULT) as u64) << 8, "store ok, load past the end fails");
    // The complete checksum followed the two bytes now in front of the packet.
    assert_eq!(ctx.ip_summed, IpSummed::Complete(0x0008));
    let mut bad_flags = Builder::new();
    bad_flags.mov(R2, 0).mov(R3, R10).add(R3, -8).mov(R4, 2).mov(R5, 4).call(SKB_STORE_BYTES).exit();
    let einval = (-i64::from(errno::EINVAL)) as u64;
    assert_eq!(run_tc(&build(&bad_flags), &eth_ipv4(), &mut no_maps()).unwrap().retval, einval);
}

#[test]
fn l4_csum_replace_under_checksum_partial() {
    // CHECKSUM_PARTIAL: the field holds the folded, uncomplemented pseudo-header sum, and
    // only pseudo-header changes (BPF_F_PSEUDO_HDR) touch it.
    let pseudo_sum = |dst: [u8; 4], udp_len: u16| {
        let mut ph = vec![10, 0, 0, 1];
        ph.extend_from_slice(&dst);
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&udp_len.to_be_bytes());
        !internet_checksum(&ph)
    };
    let mut before = udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1234, 53, b"abc");
    before[UDP + 6..UDP + 8].copy_from_slice(&pseudo_sum([10, 0, 0, 2], 11).to_be_bytes());
    let mut ctx = Context::new(before);
    ctx.ip_summed = IpSummed::Partial;
    let out = run(&dnat([172, 16, 5, 4], false), ProgKind::SchedCls, &mut ctx, &mut no_maps()).unwrap();
    assert_eq!(&out.packet[UDP + 6..UDP + 8], &pseudo_sum([172, 16, 5, 4], 11).to_be_bytes());
    assert_eq!(internet_checksum(&out.packet[IP..UDP]), 0);
}

#[test]
fn xdp_adjust_meta_and_tail() {
    const XDP_ADJUST_META: i32 = 54;
    const XDP_ADJUST_TAIL: i32 = 65;
    let call = |helper: i32, delta: i32| {
        Program::from_insns(vec![Insn::mov64(R2, delta), Insn::call(helper), Insn::Exit])
    };
    let einval = (-i64::from(errno::EINVAL)) as u64;
    let eacces = (-i64::from(errno::EACCES)) as u64;
    let p = eth_ipv4();
    let out = run_xdp(&call(XDP_ADJUST_META, -8), &p, &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.meta.len(), out.packet.len()), (0, 8, 60));
    assert_eq!(
        run_xdp(&call(XDP_ADJUST_META, -6), &p, &mut no_maps()).unwrap().retval,
        eacces,
        "not a multiple of 4"
    );
    assert_eq!(
        run_xdp(&call(XDP_ADJUST_META, -36), &p, &mut no_maps()).unwrap().retval,
        eacces,
        "over 32 bytes"
    );
    assert_eq!(run_xdp(&call(XDP_ADJUST_META, 4), &p, &mut no_maps()).unwrap().retval, einval, "past data");
    let out = run_xdp(&call(XDP_ADJUST_TAIL, -46), &p, &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.packet), (0, p[..14].to_vec()));
    assert_eq!(run_xdp(&call(XDP_ADJUST_TAIL, -47), &p, &mut no_maps()).unwrap().retval, einval);
    let out = run_xdp(&call(XDP_ADJUST_TAIL, 100), &p, &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.packet.len()), (0, 160));
    // The test-run frame is a page less skb_shared_info: data may end 3776 bytes in.
    assert_eq!(run_xdp(&call(XDP_ADJUST_TAIL, 3776 - 256 - 60), &p, &mut no_maps()).unwrap().retval, 0);
    assert_eq!(run_xdp(&call(XDP_ADJUST_TAIL, 3776 - 256 - 59), &p, &mut no_maps()).unwrap().retval, einval);
    // Metadata moves with the head.
    let mut b = Builder::new();
    b.mov(R6, R1).mov(R2, -4).call(XDP_ADJUST_META);
    b.load(Size::W, R2, R6, xdp_off("data_meta")).store(Size::W, R2, 0, 0x0a0b_0c0d);
    b.mov(R1, R6).mov(R2, 14).call(XDP_ADJUST_HEAD).exit();
    let out = run_xdp(&build(&b), &p, &mut no_maps()).unwrap();
    assert_eq!((out.retval, out.meta, out.packet.len()), (0, vec![0x0d, 0x0c, 0x0b, 0x0a], 46));
}

#[test]
fn xdp_load_and_store_bytes() {
    const XDP_LOAD_BYTES: i32 = 189;
    const XDP_STORE_BYTES: i32 = 190;
    let mut b = Builder::new();
    b.mov(R6, R1);
    b.mov(R2, 12).mov(R3, R10).add(R3, -8).mov(R4, 2).call(XDP_LOAD_BYTES);
    b.mov(R1, R6).mov(R2, 0).mov(R3, R10).add(R3, -8).mov(R4, 2).call(XDP_STORE_BYTES);
    b.mov(R1, R6).mov(R2, 59).mov(R3, R10).add(R3, -8).mov(R4, 2).call(XDP_LOAD_BYTES).exit();
    let out = run_xdp(&build(&b), &eth_ipv4(), &mut no_maps()).unwrap();
    assert_eq!(&out.packet[..2], &[0x08, 0x00]);
    assert_eq!(out.retval, (-i64::from(errno::EINVAL)) as u64);
}
