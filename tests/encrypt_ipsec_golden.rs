//! The IPsec mode's BPF side (`codegen::ipsec`), golden packets. Issue 15: "egress looks up
//! the destination node, picks the newest key both nodes have, marks the packet for xfrm;
//! ingress marks ESP for decryption"; "golden packets for the marks and key choice (newest
//! common key, rotation window, unknown node)".
//!
//! Every case runs in the simulator and, with the kernel (`require_kernel`), through
//! `BPF_PROG_TEST_RUN` with an `__sk_buff` context in and out: both must give exactly the
//! expected verdict, the packet unchanged, the expected `skb->mark` and one count of the
//! expected reason, and so agree with each other. Both programs pass verifier-sim and the
//! kernel verifier.

use sluice::codegen::ipsec::{self as gen, IPPROTO_ESP};
use sluice::encrypt::ipsec::{decrypt_mark, encrypt_mark, IpsecPeer};
use sluice::maps::ipsec::{self as m, pod_key_bytes, Reason};
use sluice::maps::u32_key;
use sluice::maps::writes::MapWrites;
use sluice::node::sim::SIM_CPUS;
use sluice::packet::PacketBuilder;
use sluice::sys::{self, Map, ProgType, TestRunOpts, UpdateFlags};
use sluice_asm::Program;
use sluice_verifier_sim::exec::{self, Context};
use sluice_verifier_sim::maps::MapSet;
use sluice_verifier_sim::uapi::SkBuff;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::net::Ipv4Addr;

const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// The mark a packet comes in with: egress replaces it (Cilium does), a pass-through keeps it.
const MARK_IN: u32 = 0x77;

/// `(node id, node address, pod prefix, the peer's newest SPI)`.
const PEERS: [(u16, [u8; 4], &str, u8); 4] = [
    (1, [172, 16, 0, 2], "10.0.2.0/24", 3),
    (2, [172, 16, 0, 3], "10.0.3.0/24", 4),
    (0x1234, [172, 16, 0, 4], "10.0.4.0/24", 15),
    (5, [172, 16, 0, 5], "10.0.5.0/24", 0),
];
/// A pod prefix whose node is not (yet) in `ipsec_nodes` (Cilium's "No node ID found").
const ORPHAN_PREFIX: &str = "10.0.9.0/24";
const ORPHAN_NODE: [u8; 4] = [172, 16, 0, 9];

fn fixture_writes(local_spi: u8, strict: bool) -> Vec<MapWrites> {
    let peers: Vec<(IpsecPeer, u8)> = PEERS
        .iter()
        .map(|&(node_id, addr, prefix, spi)| {
            let peer = IpsecPeer {
                node_id,
                address: Ipv4Addr::from(addr).into(),
                boot_id: String::new(),
                prefixes: vec![prefix.parse().unwrap()],
            };
            (peer, spi)
        })
        .collect();
    let mut w = m::writes(local_spi, strict, &peers);
    let pods = w.iter_mut().find(|w| w.map == m::PODS).expect("writes fill ipsec_pods");
    pods.put(&pod_key_bytes(&ORPHAN_PREFIX.parse().unwrap()).unwrap(), &ORPHAN_NODE);
    w
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Egress,
    Ingress,
}

struct Case {
    name: &'static str,
    local_spi: u8,
    strict: bool,
    dir: Dir,
    packet: Vec<u8>,
    reason: Reason,
    mark: u32,
}

fn tcp_to(dst: [u8; 4]) -> Vec<u8> {
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(Ipv4Addr::new(10, 0, 1, 5), dst.into())
        .tcp(40000, 80, Default::default(), 1, 0)
        .payload(b"sluice-ipsec-marker")
        .build()
}

fn esp_from(src: [u8; 4]) -> Vec<u8> {
    let esp = [0, 0, 0, 3, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    PacketBuilder::ethernet([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
        .ipv4(src.into(), LOCAL)
        .raw_l4(IPPROTO_ESP as u8, &esp)
        .build()
}

fn cases() -> Vec<Case> {
    use Dir::{Egress, Ingress};
    let c = |name, local_spi, strict, dir, packet, reason, mark| Case {
        name,
        local_spi,
        strict,
        dir,
        packet,
        reason,
        mark,
    };
    let v6 = PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        .udp(1, 2)
        .build();
    let mut truncated = tcp_to([10, 0, 2, 7]);
    truncated.truncate(14 + 19);
    let udp_from_peer = PacketBuilder::ethernet([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
        .ipv4([172, 16, 0, 3].into(), LOCAL)
        .udp(4789, 4789)
        .build();
    vec![
        // "picks the newest key both nodes have": both at 3.
        c(
            "newest common key: both at 3",
            3,
            true,
            Egress,
            tcp_to([10, 0, 2, 7]),
            Reason::Encrypt,
            encrypt_mark(3, 1),
        ),
        // Rotation window: this node has 4 already, the peer still 3: the old key (3) is used
        // until the peer has 4 too (its state for 3 is kept for the grace period).
        c(
            "rotation: peer behind, old key",
            3,
            true,
            Egress,
            tcp_to([10, 0, 3, 7]),
            Reason::Encrypt,
            encrypt_mark(3, 2),
        ),
        c(
            "rotation: this node ahead, old key",
            4,
            true,
            Egress,
            tcp_to([10, 0, 2, 7]),
            Reason::Encrypt,
            encrypt_mark(3, 1),
        ),
        c(
            "rotation done: both at 4",
            4,
            true,
            Egress,
            tcp_to([10, 0, 3, 7]),
            Reason::Encrypt,
            encrypt_mark(4, 2),
        ),
        // "15 -> 1 wraps": 1 is newer than 15.
        c(
            "wrap: this node at 1, peer at 15",
            1,
            true,
            Egress,
            tcp_to([10, 0, 4, 7]),
            Reason::Encrypt,
            encrypt_mark(15, 0x1234),
        ),
        c(
            "wrap: both at 15, 16-bit node id",
            15,
            true,
            Egress,
            tcp_to([10, 0, 4, 200]),
            Reason::Encrypt,
            encrypt_mark(15, 0x1234),
        ),
        // Unknown node: dropped in strict mode, plain (mark untouched) otherwise.
        c(
            "unknown node, strict",
            3,
            true,
            Egress,
            tcp_to([10, 0, 9, 7]),
            Reason::UnknownNodeDropped,
            MARK_IN,
        ),
        c(
            "unknown node, not strict",
            3,
            false,
            Egress,
            tcp_to([10, 0, 9, 7]),
            Reason::UnknownNodePlain,
            MARK_IN,
        ),
        c(
            "peer without a key, strict",
            3,
            true,
            Egress,
            tcp_to([10, 0, 5, 7]),
            Reason::NoCommonKeyDropped,
            MARK_IN,
        ),
        c(
            "this node without a key, not strict",
            0,
            false,
            Egress,
            tcp_to([10, 0, 2, 7]),
            Reason::NoCommonKeyPlain,
            MARK_IN,
        ),
        c("not a pod of a peer", 3, true, Egress, tcp_to([192, 168, 1, 1]), Reason::NotRemote, MARK_IN),
        c("ipv6 is not marked", 3, true, Egress, v6.clone(), Reason::NotIpv4, MARK_IN),
        c("truncated ipv4", 3, true, Egress, truncated, Reason::Truncated, MARK_IN),
        // "ingress marks ESP for decryption".
        c("esp from a peer", 3, true, Ingress, esp_from([172, 16, 0, 3]), Reason::Decrypt, decrypt_mark(2)),
        c(
            "esp from a peer, 16-bit node id",
            3,
            false,
            Ingress,
            esp_from([172, 16, 0, 4]),
            Reason::Decrypt,
            decrypt_mark(0x1234),
        ),
        c(
            "esp from no peer, strict",
            3,
            true,
            Ingress,
            esp_from([172, 16, 0, 99]),
            Reason::EspUnknownNodeDropped,
            MARK_IN,
        ),
        c(
            "esp from no peer, not strict",
            3,
            false,
            Ingress,
            esp_from([172, 16, 0, 99]),
            Reason::EspUnknownNodePlain,
            MARK_IN,
        ),
        c("vxlan from a peer is not esp", 3, true, Ingress, udp_from_peer, Reason::NotEsp, MARK_IN),
        c("ipv6 ingress", 3, true, Ingress, v6, Reason::NotIpv4, MARK_IN),
    ]
}

fn program(dir: Dir) -> Program {
    match dir {
        Dir::Egress => gen::generate_egress(),
        Dir::Ingress => gen::generate_ingress(),
    }
    .expect("generates")
}

fn specs() -> Vec<sluice_verifier_sim::spec::MapSpec> {
    m::map_defs(16, 64).iter().map(|d| d.sim_spec()).collect()
}

/// What one run showed: verdict, packet, mark, counters by reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    verdict: u32,
    packet: Vec<u8>,
    mark: u32,
    counts: BTreeMap<&'static str, u64>,
}

fn run_sim(case: &Case) -> Result<Seen, String> {
    let mut maps = MapSet::new(&specs(), SIM_CPUS).map_err(|e| e.to_string())?;
    for w in fixture_writes(case.local_spi, case.strict) {
        let map = maps.get_mut(w.map).ok_or_else(|| format!("no map {}", w.map))?;
        for (k, v) in w.keys.chunks_exact(w.key_size).zip(w.values.chunks_exact(w.value_size)) {
            map.update(k, v, 0).map_err(|e| format!("{}: {e}", w.map))?;
        }
    }
    let mut ctx = Context::new(case.packet.clone());
    ctx.skb.mark = MARK_IN;
    let out = exec::run(&program(case.dir), gen::KIND, &mut ctx, &mut maps).map_err(|e| e.to_string())?;
    let stats = maps.get(m::STATS).ok_or("no stats map")?;
    let mut counts = BTreeMap::new();
    for r in Reason::ALL {
        let n: u64 = stats
            .values_percpu(&u32_key(r as u32))
            .ok_or("stats index")?
            .map(|v| u64::from_le_bytes(v.try_into().unwrap()))
            .sum();
        if n > 0 {
            counts.insert(r.name(), n);
        }
    }
    Ok(Seen { verdict: out.retval as u32, packet: out.packet, mark: out.ctx_out.mark, counts })
}

fn run_kernel(case: &Case) -> Result<Seen, String> {
    let sys = sys::kernel();
    let mut maps = BTreeMap::new();
    for def in m::map_defs(16, 64) {
        let map = Map::create(&sys, &sluice::node::load::sys_spec(&def))
            .map_err(|e| format!("{}: {e}", def.name))?;
        maps.insert(def.name, map);
    }
    for w in fixture_writes(case.local_spi, case.strict) {
        for (k, v) in w.keys.chunks_exact(w.key_size).zip(w.values.chunks_exact(w.value_size)) {
            maps[w.map].update(k, v, UpdateFlags::ANY).map_err(|e| format!("{}: {e}", w.map))?;
        }
    }
    let prog = sluice::node::load::load_generated(
        &sys,
        "ipsec_test",
        &program(case.dir),
        &maps,
        ProgType::SchedCls,
        |s| s,
    )
    .map_err(|e| e.to_string())?;
    let skb = SkBuff { mark: MARK_IN, ..SkBuff::default() };
    // SAFETY: `SkBuff` is a plain repr(C) struct; its bytes are read, not reinterpreted.
    let ctx: &[u8] =
        unsafe { std::slice::from_raw_parts((&skb as *const SkBuff).cast::<u8>(), size_of::<SkBuff>()) };
    // In: up to `priority` (the whole struct is refused, EINVAL, on 6.18; the kernel
    // zero-fills the rest). Out: the whole struct (less would be ENOSPC and a second run).
    let ctx = &ctx[..offset_of!(SkBuff, priority) + 4];
    let opts = TestRunOpts {
        ctx_in: Some(ctx),
        ctx_out_cap: size_of::<SkBuff>(),
        ..TestRunOpts::packet(&case.packet)
    };
    let out = sys::test_run(&*sys, prog.fd(), &opts).map_err(|e| e.to_string())?;
    let at = offset_of!(SkBuff, mark);
    let mark = u32::from_ne_bytes(out.ctx_out[at..at + 4].try_into().map_err(|_| "short ctx_out")?);
    let mut counts = BTreeMap::new();
    for r in Reason::ALL {
        let per_cpu =
            maps[m::STATS].lookup_percpu(&u32_key(r as u32)).map_err(|e| e.to_string())?.unwrap_or_default();
        let n: u64 = per_cpu.iter().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).sum();
        if n > 0 {
            counts.insert(r.name(), n);
        }
    }
    Ok(Seen { verdict: out.retval, packet: out.data_out, mark, counts })
}

fn expected(case: &Case) -> Seen {
    Seen {
        verdict: case.reason.verdict() as u32,
        packet: case.packet.clone(),
        mark: case.mark,
        counts: [(case.reason.name(), 1)].into(),
    }
}

/// `BPF_PROG_TEST_RUN` refuses (EINVAL) a frame whose Ethernet type says IPv4 but which
/// holds less than an IPv4 header, so that case runs in the simulator only.
fn kernel_can_run(case: &Case) -> bool {
    case.reason != Reason::Truncated
}

fn check(
    what: &str,
    run: impl Fn(&Case) -> Result<Seen, String>,
    only: fn(&Case) -> bool,
) -> Vec<(String, Seen)> {
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for case in cases().into_iter().filter(only) {
        let want = expected(&case);
        match run(&case) {
            Ok(got) if got == want => seen.push((case.name.to_string(), got)),
            Ok(got) => failures.push(format!(
                "{what} case `{}` ({:?}, local spi {}, strict {})\n  expected verdict {} mark {:#010x} counts {:?}\n  actual   verdict {} mark {:#010x} counts {:?}{}",
                case.name, case.dir, case.local_spi, case.strict, want.verdict, want.mark, want.counts,
                got.verdict, got.mark, got.counts,
                if got.packet == want.packet { "" } else { "\n  and the packet changed" }
            )),
            Err(e) => failures.push(format!("{what} case `{}`: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases().len(), failures.join("\n"));
    seen
}

#[test]
fn verifier_sim_accepts_both_programs() {
    for dir in [Dir::Egress, Dir::Ingress] {
        let prog = program(dir);
        if let Err(e) = sluice_verifier_sim::verifier::verify(&prog, gen::KIND, &specs()) {
            panic!("{dir:?}: verifier-sim rejects it: {e}\n{}", sluice_asm::text::listing(&prog));
        }
    }
}

#[test]
fn golden_packets_in_the_simulator() {
    check("simulator", run_sim, |_| true);
}

#[test]
fn golden_packets_in_the_kernel_agree_with_the_simulator() {
    if !sys::require_kernel("golden_packets_in_the_kernel_agree_with_the_simulator") {
        return;
    }
    let kernel = check("kernel", run_kernel, kernel_can_run);
    let sim = check("simulator", run_sim, kernel_can_run);
    assert_eq!(kernel, sim, "the kernel and the simulator disagree");
}

/// Issue 15: "The xfrm policies ... match those marks". For every case a program marks,
/// the states and policies this node programs for all peers and keys
/// (`encrypt::ipsec::states_and_policies`) are matched against the mark as xfrm matches
/// (`mark & mask == value`): egress must select exactly the out policy of the packet's node
/// and the out state of that node and the chosen SPI; ingress exactly the in policy of the
/// sending node and its in states (the SPI in the ESP header then picks among those).
#[test]
fn the_marks_select_the_xfrm_policy_and_state_of_that_node_and_key() {
    use sluice::encrypt::ipsec::states_and_policies;
    use sluice::model::encryption::parse_ipsec_key;
    use sluice::netlink::xfrm::{Dir as XDir, Mark};
    use std::collections::BTreeSet;
    let keys: Vec<_> = [1u8, 3, 4, 15]
        .iter()
        .map(|spi| parse_ipsec_key(&format!("{spi}+ rfc4106(gcm(aes)) {} 128", "ab".repeat(20))).unwrap())
        .collect();
    let matches = |m: &Option<Mark>, mark: u32| m.is_some_and(|m| mark & m.mask == m.value);
    let mut checked = 0;
    for case in cases().into_iter().filter(|c| matches!(c.reason, Reason::Encrypt | Reason::Decrypt)) {
        let mark = run_sim(&case).unwrap_or_else(|e| panic!("{}: {e}", case.name)).mark;
        let (node, spi) = ((mark >> 16) as u16, (mark >> 12) & 0xF);
        let (mut states, mut policies) = (BTreeSet::new(), BTreeSet::new());
        for &(node_id, addr, prefix, _) in &PEERS {
            let peer = IpsecPeer {
                node_id,
                address: Ipv4Addr::from(addr).into(),
                boot_id: "b".into(),
                prefixes: vec![prefix.parse().unwrap()],
            };
            let (s, p) =
                states_and_policies(LOCAL.into(), "a", &["10.0.1.0/24".parse().unwrap()], &peer, &keys);
            for st in s.iter().filter(|st| matches(&st.mark, mark)) {
                let dir = if st.src == std::net::IpAddr::from(LOCAL) { "out" } else { "in" };
                states.insert((dir, node_id, st.spi));
            }
            for po in p.iter().filter(|po| matches(&po.mark, mark)) {
                policies.insert((if po.dir == XDir::Out { "out" } else { "in" }, node_id));
            }
        }
        let (want_states, want_policies): (BTreeSet<_>, BTreeSet<_>) = if case.reason == Reason::Encrypt {
            ([("out", node, spi)].into(), [("out", node)].into())
        } else {
            (keys.iter().map(|k| ("in", node, u32::from(k.spi))).collect(), [("in", node)].into())
        };
        assert_eq!(
            (&states, &policies),
            (&want_states, &want_policies),
            "case `{}`: mark {mark:#010x} selects states {states:?} and policies {policies:?}",
            case.name
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} marked cases");
}

/// The figure in BENCHMARKS.md (not a test of speed: it asserts nothing about time):
/// `BPF_PROG_TEST_RUN` with 1,000,000 repetitions per case, the kernel's average ns per
/// run, for the marked paths and the early exits in the same run.
/// `cargo test --test encrypt_ipsec_golden -- --ignored --nocapture ipsec_cost`
#[test]
#[ignore]
fn ipsec_cost() {
    if !sys::require_kernel("ipsec_cost") {
        return;
    }
    let sys = sys::kernel();
    for case in cases().iter().filter(|c| kernel_can_run(c) && c.strict) {
        let mut maps = BTreeMap::new();
        for def in m::map_defs(16, 64) {
            maps.insert(def.name, Map::create(&sys, &sluice::node::load::sys_spec(&def)).unwrap());
        }
        for w in fixture_writes(case.local_spi, case.strict) {
            for (k, v) in w.keys.chunks_exact(w.key_size).zip(w.values.chunks_exact(w.value_size)) {
                maps[w.map].update(k, v, UpdateFlags::ANY).unwrap();
            }
        }
        let prog = sluice::node::load::load_generated(
            &sys,
            "ipsec_cost",
            &program(case.dir),
            &maps,
            ProgType::SchedCls,
            |s| s,
        )
        .unwrap();
        let opts = TestRunOpts { repeat: 1_000_000, ..TestRunOpts::packet(&case.packet) };
        let out = sys::test_run(&*sys, prog.fd(), &opts).unwrap();
        println!("{:>40}  {:?}  {:>4} ns", case.name, case.dir, out.duration_ns);
    }
}
