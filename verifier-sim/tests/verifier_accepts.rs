//! Programs the verifier must accept, shaped like the ones sluice emits, with the costs it
//! reports for them. Processed-instruction counts are the kernel's `verified_insns` notion:
//! every instruction interpreted on every explored path.

use sluice_asm::helpers as h;
use sluice_asm::{AluOp, AtomicOp, Builder, Insn, JmpCond, Program, Reg, Size, Src};
use sluice_verifier_sim::spec::{MapKind, MapSpec, ProgKind};
use sluice_verifier_sim::verifier::{verify, ErrorKind, VerifyStats};
use Reg::*;

fn map(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec {
    MapSpec { name: name.into(), kind, key_size, value_size, max_entries, flags: 0 }
}

fn maps() -> Vec<MapSpec> {
    vec![
        map("counters", MapKind::PerCpuArray, 4, 8, 16),
        // key: daddr (4), dport (2), pad (2); value: verdict (4), packets (8), pad (4)
        map("flows", MapKind::Hash, 8, 16, 1024),
        map("sessions", MapKind::SockHash, 12, 4, 1024),
    ]
}

fn build(f: impl FnOnce(&mut Builder)) -> Program {
    let mut b = Builder::new();
    f(&mut b);
    b.build().expect("test programs build")
}

/// Verify and fail with the listing and the full report on rejection.
fn accept(prog: &Program, kind: ProgKind) -> VerifyStats {
    match verify(prog, kind, &maps()) {
        Ok(stats) => stats,
        Err(e) => panic!("rejected:\n{}\n{}", sluice_asm::text::listing(prog), e.report()),
    }
}

/// XDP: Ethernet, IPv4 with a variable header length, the L4 ports behind it, then a flow
/// lookup keyed by (daddr, dport) built on the stack.
fn xdp_parse_and_lookup() -> Program {
    build(|b| {
        b.comment("r2 = data, r3 = data_end");
        b.load(Size::W, R2, R1, 0).load(Size::W, R3, R1, 4);
        b.comment("ethernet + fixed IPv4 header: 34 bytes");
        b.mov(R4, R2).add(R4, 34).jmp(JmpCond::Gt, R4, R3, "pass");
        b.load(Size::H, R5, R2, 12).jmp(JmpCond::Ne, R5, 0x0008, "pass");
        b.comment("ihl = (b & 0xf) << 2, at least 20");
        b.load(Size::B, R5, R2, 14).alu(AluOp::And, R5, 0xf).alu(AluOp::Lsh, R5, 2);
        b.jmp(JmpCond::Lt, R5, 20, "drop");
        b.comment("l4 = data + 14 + ihl; ports need 4 bytes");
        b.mov(R6, R2).add(R6, 14).add(R6, R5);
        b.mov(R7, R6).add(R7, 4).jmp(JmpCond::Gt, R7, R3, "pass");
        b.load(Size::H, R8, R6, 2).load(Size::W, R9, R2, 30);
        b.comment("key = { daddr, dport, 0 }");
        b.store(Size::W, R10, -8, R9).store(Size::H, R10, -4, R8).store(Size::H, R10, -2, 0);
        b.mov(R2, R10).add(R2, -8).ld_map(R1, "flows").call(h::MAP_LOOKUP_ELEM);
        b.jmp(JmpCond::Eq, R0, 0, "pass");
        b.load(Size::W, R1, R0, 0).jmp(JmpCond::Ne, R1, 0, "drop");
        b.label("pass").ret(2);
        b.label("drop").ret(1);
    })
}

#[test]
fn xdp_ethernet_ipv4_variable_ihl_and_flow_lookup() {
    let prog = xdp_parse_and_lookup();
    let stats = accept(&prog, ProgKind::Xdp);
    // Seven branch sides lead out, none decided statically: each is walked to an exit
    // or cut where it joins one already walked (the shared `pass`/`drop` blocks).
    assert_eq!(stats.paths + stats.pruned, 7, "{stats:?}");
    assert!(stats.pruned > 0, "{stats:?}");
    assert!(stats.processed_insns > prog.len() as u64, "{stats:?}");
    assert!(stats.processed_insns < 2 * prog.len() as u64, "{stats:?}");
    assert_eq!(stats.peak_stack, 8);
    assert!(stats.div_by_reg.is_empty());
}

#[test]
fn reading_past_the_ports_is_rejected_in_the_same_program() {
    // The same parse, reading one byte more than the second check proved.
    let mut insns = xdp_parse_and_lookup().insns().to_vec();
    let at = insns
        .iter()
        .position(|i| *i == Insn::load(Size::H, R8, R6, 2))
        .expect("the program loads the destination port");
    insns[at] = Insn::load(Size::H, R8, R6, 3);
    let err = verify(&Program::from_insns(insns), ProgKind::Xdp, &maps()).expect_err("past the range");
    assert_eq!(err.kind, ErrorKind::PacketOutOfRange { reg: 6, off: 17, size: 2, range: 18 });
    assert_eq!(err.insn, at);
}

/// `lookup(counters, 0)`, null check, then `count(r0)`.
fn counter(count: impl FnOnce(&mut Builder)) -> Program {
    build(|b| {
        b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).ld_map(R1, "counters");
        b.call(h::MAP_LOOKUP_ELEM).jmp(JmpCond::Eq, R0, 0, "out");
        count(b);
        b.label("out").ret(2);
    })
}

#[test]
fn per_cpu_counter_increment() {
    let prog = counter(|b| {
        b.load(Size::DW, R1, R0, 0).add(R1, 1).store(Size::DW, R0, 0, R1);
    });
    let stats = accept(&prog, ProgKind::Xdp);
    // The whole program once; the NULL side joins it at `out` with nothing live and is cut.
    assert_eq!(stats.processed_insns, prog.len() as u64, "{stats:?}");
    assert_eq!((stats.paths, stats.pruned), (1, 1));
    assert_eq!(stats.peak_stack, 4);
}

#[test]
fn per_cpu_counter_atomic_add() {
    let prog = counter(|b| {
        b.mov(R1, 1);
        b.emit(Insn::Atomic {
            size: Size::DW,
            op: AtomicOp::Add { fetch: false },
            base: R0,
            off: 0,
            src: R1,
        });
    });
    let stats = accept(&prog, ProgKind::Xdp);
    assert_eq!(stats.processed_insns, prog.len() as u64, "{stats:?}");
}

#[test]
fn tc_reads_data_end_and_mark_and_sets_mark() {
    let prog = build(|b| {
        b.load(Size::W, R2, R1, 76).load(Size::W, R3, R1, 80);
        b.comment("mark, whole and its low byte");
        b.load(Size::W, R4, R1, 8).load(Size::B, R5, R1, 8);
        b.mov(R6, R2).add(R6, 14).jmp(JmpCond::Gt, R6, R3, "out");
        b.load(Size::H, R7, R2, 12).jmp(JmpCond::Ne, R7, 0xdd86, "out");
        b.alu(AluOp::Or, R4, 1).store(Size::W, R1, 8, R4);
        b.label("out").ret(0);
    });
    let stats = accept(&prog, ProgKind::SchedCls);
    assert_eq!(stats.processed_insns, prog.len() as u64, "{stats:?}");
    assert_eq!((stats.paths, stats.pruned), (1, 2));
}

#[test]
fn straight_line_program_counts_each_instruction_once() {
    let prog = build(|b| {
        b.ld_imm64(R0, 0x1_0000_0002).mov(R1, R0).alu(AluOp::And, R0, 3).exit();
    });
    assert_eq!(prog.slots(), 5);
    let stats = accept(&prog, ProgKind::Xdp);
    assert_eq!(stats.processed_insns, prog.len() as u64);
    assert_eq!(stats.paths, 1);
    assert_eq!(stats.peak_stack, 0);
}

#[test]
fn spilled_packet_pointers_survive_a_helper_call() {
    let prog = build(|b| {
        b.load(Size::W, R2, R1, 0).load(Size::W, R3, R1, 4);
        b.store(Size::DW, R10, -8, R2).store(Size::DW, R10, -16, R3);
        b.call(h::KTIME_GET_NS);
        b.load(Size::DW, R2, R10, -8).load(Size::DW, R3, R10, -16);
        b.mov(R4, R2).add(R4, 1).jmp(JmpCond::Gt, R4, R3, "out");
        b.load(Size::B, R0, R2, 0);
        b.label("out").ret(2);
    });
    let stats = accept(&prog, ProgKind::Xdp);
    assert_eq!(stats.peak_stack, 16);
}

/// A map value indexed by a packet byte bounded through `cond` on a copy of it.
fn indexed_value(bound: impl FnOnce(&mut Builder)) -> Program {
    build(|b| {
        b.load(Size::W, R2, R1, 0).load(Size::W, R3, R1, 4);
        b.mov(R4, R2).add(R4, 1).jmp(JmpCond::Gt, R4, R3, "out");
        b.load(Size::B, R7, R2, 0);
        b.store(Size::DW, R10, -8, 0).mov(R2, R10).add(R2, -8).ld_map(R1, "flows");
        b.call(h::MAP_LOOKUP_ELEM).jmp(JmpCond::Eq, R0, 0, "out");
        bound(b);
        b.add(R0, R7).load(Size::B, R1, R0, 0);
        b.label("out").ret(2);
    })
}

#[test]
fn a_bound_learned_on_a_copy_applies_to_the_original() {
    let prog = indexed_value(|b| {
        b.mov(R6, R7).jmp(JmpCond::Gt, R6, 15, "out");
    });
    accept(&prog, ProgKind::Xdp);
    // Without the bound the index reaches 255 in a 16-byte value.
    let err = verify(&indexed_value(|_| {}), ProgKind::Xdp, &maps()).expect_err("unbounded index");
    assert!(matches!(err.kind, ErrorKind::MapValueOutOfBounds { max: 255, value_size: 16, .. }), "{err}");
}

#[test]
fn a_32_bit_comparison_bounds_a_zero_extended_value() {
    let prog = indexed_value(|b| {
        b.jmp32(JmpCond::Gt, R7, 15, "out");
    });
    accept(&prog, ProgKind::Xdp);
}

#[test]
fn a_branch_decided_by_bounds_explores_one_side() {
    let prog = build(|b| {
        b.mov(R0, 2).jmp(JmpCond::Eq, R0, 3, "never").exit();
        b.comment("would read an uninitialized register");
        b.label("never").mov(R0, R9).exit();
    });
    let stats = accept(&prog, ProgKind::Xdp);
    assert_eq!(stats.processed_insns, 3);
    assert_eq!(stats.paths, 1);
}

#[test]
fn branches_on_a_dead_register_are_pruned() {
    const DIAMONDS: i32 = 30;
    let prog = build(|b| {
        b.call(h::GET_PRANDOM_U32).mov(R6, R0);
        for i in 0..DIAMONDS {
            let skip = format!("skip{i}");
            b.mov(R1, R6).alu(AluOp::And, R1, 1 << i).jmp(JmpCond::Eq, R1, 0, skip.as_str());
            b.mov(R2, i).label(skip);
        }
        b.ret(2);
    });
    let stats = accept(&prog, ProgKind::Xdp);
    // Without pruning this would be 2^30 paths; every taken side is cut where it rejoins.
    assert_eq!(stats.pruned, DIAMONDS as u64, "{stats:?}");
    assert!(stats.processed_insns < 2 * prog.len() as u64, "{stats:?}");
}

#[test]
fn division_by_a_register_is_allowed_and_recorded() {
    let prog = build(|b| {
        b.call(h::GET_PRANDOM_U32).mov(R6, R0).mov(R0, 100);
        b.alu(AluOp::Div, R0, R6).alu(AluOp::And, R0, 3).exit();
    });
    let stats = accept(&prog, ProgKind::Xdp);
    assert_eq!(stats.div_by_reg, vec![3]);
}

#[test]
fn sock_ops_adds_established_sockets_to_a_sockhash() {
    let prog = build(|b| {
        b.mov(R6, R1).load(Size::W, R2, R6, 0);
        b.comment("BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB");
        b.jmp(JmpCond::Ne, R2, 4, "out");
        b.load(Size::W, R2, R6, 24).store(Size::W, R10, -12, R2);
        b.load(Size::W, R2, R6, 28).store(Size::W, R10, -8, R2);
        b.load(Size::W, R2, R6, 64).store(Size::W, R10, -4, R2);
        b.mov(R1, R6).ld_map(R2, "sessions").mov(R3, R10).add(R3, -12).mov(R4, 1);
        b.call(h::SOCK_HASH_UPDATE);
        b.label("out").ret(1);
    });
    accept(&prog, ProgKind::SockOps);
}

#[test]
fn sk_msg_returns_the_redirect_verdict() {
    let prog = build(|b| {
        b.load(Size::W, R2, R1, 20).store(Size::W, R10, -12, R2);
        b.load(Size::W, R2, R1, 24).store(Size::W, R10, -8, R2);
        b.load(Size::W, R2, R1, 60).store(Size::W, R10, -4, R2);
        b.ld_map(R2, "sessions").mov(R3, R10).add(R3, -12).mov(R4, 0);
        b.call(h::MSG_REDIRECT_HASH).exit();
    });
    accept(&prog, ProgKind::SkMsg);
}

#[test]
fn tc_loads_packet_bytes_onto_the_stack() {
    let prog = build(|b| {
        b.mov(R2, 0).mov(R3, R10).add(R3, -16).mov(R4, 14).call(h::SKB_LOAD_BYTES);
        b.load(Size::H, R0, R10, -4).ret(0);
    });
    accept(&prog, ProgKind::SchedCls);
}

#[test]
fn xdp_metadata_is_bounded_by_data() {
    let prog = build(|b| {
        b.load(Size::W, R2, R1, 8).load(Size::W, R3, R1, 0);
        b.mov(R4, R2).add(R4, 4).jmp(JmpCond::Gt, R4, R3, "out");
        b.load(Size::W, R0, R2, 0);
        b.label("out").ret(2);
    });
    accept(&prog, ProgKind::Xdp);
}

/// Every way of comparing `r4 = data + 14` with `data_end` proves what the kernel proves
/// (`find_good_pkt_pointers`): on the side where `r4 <= data_end` holds, 14 bytes; where
/// `r4 < data_end` holds, 15.
#[test]
fn every_packet_comparison_form_proves_the_kernels_range() {
    // (condition, data pointer on the left, proven on the taken side, bytes proven)
    let forms = [
        (JmpCond::Gt, true, false, 14),
        (JmpCond::Gt, false, true, 15),
        (JmpCond::Lt, true, true, 15),
        (JmpCond::Lt, false, false, 14),
        (JmpCond::Ge, true, false, 15),
        (JmpCond::Ge, false, true, 14),
        (JmpCond::Le, true, true, 14),
        (JmpCond::Le, false, false, 15),
    ];
    for (cond, ptr_left, on_taken, range) in forms {
        let prog = |read_at: i16| {
            build(|b| {
                b.load(Size::W, R2, R1, 0).load(Size::W, R3, R1, 4).mov(R4, R2).add(R4, 14);
                let (l, r) = if ptr_left { (R4, R3) } else { (R3, R4) };
                b.jmp(cond, l, r, "taken");
                if !on_taken {
                    b.load(Size::B, R0, R2, read_at);
                }
                b.ret(2);
                b.label("taken");
                if on_taken {
                    b.load(Size::B, R0, R2, read_at);
                }
                b.ret(1);
            })
        };
        let form = format!("{cond:?} with the data pointer {}", if ptr_left { "left" } else { "right" });
        if let Err(e) = verify(&prog(range - 1), ProgKind::Xdp, &maps()) {
            panic!("{form}: last proven byte rejected: {}", e.report());
        }
        let err = verify(&prog(range), ProgKind::Xdp, &maps()).expect_err(&form);
        let expected =
            ErrorKind::PacketOutOfRange { reg: 2, off: i64::from(range), size: 1, range: range as u32 };
        assert_eq!(err.kind, expected, "{form}");
    }
}

// Differential: every program the verifier accepts runs in the executor without a bad
// access, on packets of any length. The generator mixes bounds checks, packet and map
// value accesses at random (often too large) offsets, scalar arithmetic, branches and
// spills, so that many programs are rejected and the accepted ones sit near the edges.

mod differential {
    use super::*;
    use proptest::prelude::*;
    use sluice_verifier_sim::exec::{run_xdp, ExecError};
    use sluice_verifier_sim::maps::MapSet;

    /// Scalars the body works on; `r8` starts as a packet pointer, `r7` is a map value.
    const SCALARS: [Reg; 2] = [R5, R9];

    #[derive(Debug, Clone)]
    enum Op {
        /// `r4 = base; r4 += n; if r4 > r3 goto out`.
        Check { base: Reg, n: i32 },
        /// `dst = *(size *)(base + off)`.
        Load { dst: Reg, base: Reg, off: i16, size: Size },
        /// `*(size *)(base + off) = src`.
        Store { base: Reg, off: i16, size: Size, src: Reg },
        /// `dst OP= imm` (64 or 32 bits).
        AluImm { wide: bool, op: AluOp, dst: Reg, imm: i32 },
        /// `dst OP= src`.
        AluReg { wide: bool, op: AluOp, dst: Reg, src: Reg },
        /// `r8 = r2; r8 += s` or `r1 = r7; r1 += s` then a load through it.
        PtrAdd { map: bool, s: Reg, off: i16, size: Size },
        /// `if s COND imm goto out`.
        Branch { wide: bool, cond: JmpCond, s: Reg, imm: i32 },
        /// Spill `s` to the stack and fill it back into the other scalar.
        Spill { s: Reg, slot: i16 },
    }

    fn scalar() -> impl Strategy<Value = Reg> {
        prop::sample::select(SCALARS.to_vec())
    }

    fn size() -> impl Strategy<Value = Size> {
        prop::sample::select(vec![Size::B, Size::H, Size::W, Size::DW])
    }

    fn op() -> impl Strategy<Value = Op> {
        let alu = prop::sample::select(vec![
            AluOp::Add,
            AluOp::Sub,
            AluOp::And,
            AluOp::Or,
            AluOp::Xor,
            AluOp::Lsh,
            AluOp::Rsh,
            AluOp::Arsh,
            AluOp::Mul,
            AluOp::Mov,
            AluOp::Div,
        ]);
        prop_oneof![
            3 => (prop::sample::select(vec![R2, R8]), 0i32..80).prop_map(|(base, n)| Op::Check { base, n }),
            4 => (scalar(), prop::sample::select(vec![R2, R8, R7]), -4i16..72, size())
                .prop_map(|(dst, base, off, size)| Op::Load { dst, base, off, size }),
            2 => (prop::sample::select(vec![R2, R8, R7]), -4i16..72, size(), scalar())
                .prop_map(|(base, off, size, src)| Op::Store { base, off, size, src }),
            4 => (any::<bool>(), alu.clone(), scalar(), prop_oneof![0i32..70, -70i32..0, any::<i32>()])
                .prop_map(|(wide, op, dst, imm)| Op::AluImm { wide, op, dst, imm }),
            2 => (any::<bool>(), alu, scalar(), scalar())
                .prop_map(|(wide, op, dst, src)| Op::AluReg { wide, op, dst, src }),
            3 => (any::<bool>(), scalar(), -2i16..20, size())
                .prop_map(|(map, s, off, size)| Op::PtrAdd { map, s, off, size }),
            4 => (any::<bool>(), prop::sample::select(JmpCond::ALL.to_vec()), scalar(), -4i32..70)
                .prop_map(|(wide, cond, s, imm)| Op::Branch { wide, cond, s, imm }),
            1 => (scalar(), 1i16..4).prop_map(|(s, slot)| Op::Spill { s, slot }),
        ]
    }

    fn program(ops: &[Op]) -> Program {
        build(|b| {
            b.mov(R6, R1);
            b.store(Size::W, R10, -4, 0).mov(R2, R10).add(R2, -4).ld_map(R1, "values");
            b.call(h::MAP_LOOKUP_ELEM).jmp(JmpCond::Eq, R0, 0, "out").mov(R7, R0);
            b.load(Size::W, R2, R6, 0).load(Size::W, R3, R6, 4);
            b.mov(R5, 0).mov(R9, 0).mov(R8, R2);
            for op in ops {
                match *op {
                    Op::Check { base, n } => {
                        b.mov(R4, base).add(R4, n).jmp(JmpCond::Gt, R4, R3, "out");
                    }
                    Op::Load { dst, base, off, size } => {
                        b.load(size, dst, base, off);
                    }
                    Op::Store { base, off, size, src } => {
                        b.store(size, base, off, src);
                    }
                    Op::AluImm { wide, op, dst, imm } => {
                        b.emit(Insn::Alu { wide, op, dst, src: Src::Imm(imm) });
                    }
                    Op::AluReg { wide, op, dst, src } => {
                        b.emit(Insn::Alu { wide, op, dst, src: Src::Reg(src) });
                    }
                    Op::PtrAdd { map, s, off, size } => {
                        let (p, base) = if map { (R1, R7) } else { (R8, R2) };
                        b.mov(p, base).add(p, s).load(size, R4, p, off);
                    }
                    Op::Branch { wide: true, cond, s, imm } => {
                        b.jmp(cond, s, imm, "out");
                    }
                    Op::Branch { wide: false, cond, s, imm } => {
                        b.jmp32(cond, s, imm, "out");
                    }
                    Op::Spill { s, slot } => {
                        let other = if s == R5 { R9 } else { R5 };
                        b.store(Size::DW, R10, -8 * slot - 8, s).load(Size::DW, other, R10, -8 * slot - 8);
                    }
                }
            }
            b.label("out").ret(2);
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024),
            ..ProptestConfig::default()
        })]

        #[test]
        fn accepted_programs_never_fault(
            ops in prop::collection::vec(op(), 1..14),
            packets in prop::collection::vec((14usize..90, any::<u64>()), 1..5),
        ) {
            let specs = vec![map("values", MapKind::Array, 4, 16, 1)];
            let prog = program(&ops);
            if verify(&prog, ProgKind::Xdp, &specs).is_err() {
                return Ok(());
            }
            for (len, seed) in packets {
                let packet: Vec<u8> = (0..len).map(|i| (seed >> ((i % 8) * 8)) as u8 ^ i as u8).collect();
                let mut maps = MapSet::new(&specs, 1).expect("map set");
                match run_xdp(&prog, &packet, &mut maps) {
                    Ok(_) | Err(ExecError::PacketTooShort { .. }) => {}
                    Err(e) => prop_assert!(
                        false,
                        "verified program faulted on a {len}-byte packet: {e}\n{}",
                        sluice_asm::text::listing(&prog)
                    ),
                }
            }
        }
    }
}
