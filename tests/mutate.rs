//! The program-mutation harness (issue 17, item 3). Not part of `cargo test`: run it with
//!
//! ```text
//! cargo test --test mutate -- [--sample N] [--writes N] [--all] [--seed S] [--object NAME]
//!                             [--inputs N] [--no-suite] [--kernel] [--insn I]
//! ```
//!
//! `--object` takes a comma-separated list of object names; `--insn I` takes only the
//! mutants of instruction I (to recheck a survivor).
//!
//! For every generated program object (the prefilter, one endpoint's two programs, the tc
//! load balancer, the eight socket-LB programs) it makes mutants of the instruction stream
//! and of the plan's map writes (`sluice::mutate`), and for each:
//!
//! 1. the simulator's verifier judges it; a rejected mutant is counted and dropped;
//! 2. the harness runs the original and the mutant on the same broad, seeded input set
//!    (frames or socket contexts, one shared map state per run, the clock stepped) and
//!    compares every output: verdict, packet bytes, redirect, context fields, and at the end
//!    the contents of every map. No difference: the mutant is *equivalent* on that set;
//! 3. the test suite runs on it: the object's simulator test binaries, started with
//!    `SLUICE_MUTANT` naming the mutant (the code generators and the write paths apply it),
//!    listing snapshots and kernel tests skipped (`--kernel` keeps the kernel tests: a spot
//!    check by the kernel's verifier and `BPF_PROG_TEST_RUN`). A failing test *kills* it.
//!
//! A mutant is *killed* when a test fails, *survived* when the harness saw its behaviour
//! change but every test passed, *equivalent* when neither. Kill rate = killed / (killed +
//! survived). By default a seeded sample of `--sample` instruction mutants (default 40) and
//! `--writes` write mutants (default 10) per object; `--all` takes every instruction mutant.
//! Results and the command are in TESTING.md, "Mutation testing".

use sluice::lb::maglev::TableSize;
use sluice::maps::writes::MapWrites;
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::mutate::{self, InsnMutant, Named};
use sluice::node::{self, Object};
use sluice::packet::{ExtHeader, PacketBuilder, TcpFlags};
use sluice_asm::Program;
use sluice_verifier_sim::exec::{self, Context, SockAddr, SOCK_DGRAM, SOCK_STREAM};
use sluice_verifier_sim::maps::MapSet;
use sluice_verifier_sim::spec::{MapSpec, ProgKind, SockAddrHook};
use sluice_verifier_sim::verifier;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---- options ----

#[derive(Debug)]
struct Opts {
    sample: usize,
    writes: usize,
    all: bool,
    seed: u64,
    object: Option<String>,
    inputs: usize,
    suite: bool,
    kernel: bool,
    /// Only the instruction mutants of this instruction (to recheck a survivor).
    insn: Option<usize>,
}

fn opts() -> Opts {
    let mut o = Opts {
        sample: 40,
        writes: 10,
        all: false,
        seed: 0x6d75_7461_6e74,
        object: None,
        inputs: 600,
        suite: true,
        kernel: false,
        insn: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{what} takes a number"))
        };
        match a.as_str() {
            "--sample" => o.sample = num("--sample") as usize,
            "--writes" => o.writes = num("--writes") as usize,
            "--seed" => o.seed = num("--seed"),
            "--inputs" => o.inputs = num("--inputs") as usize,
            "--insn" => o.insn = Some(num("--insn") as usize),
            "--all" => o.all = true,
            "--no-suite" => o.suite = false,
            "--kernel" => o.kernel = true,
            "--object" => o.object = Some(args.next().expect("--object takes a name")),
            // What cargo's test runner would pass on.
            "--nocapture" | "--quiet" | "-q" => {}
            other => panic!("unknown argument {other:?} (see the header of tests/mutate.rs)"),
        }
    }
    o
}

// ---- randomness ----

/// Knuth's MMIX LCG; the high bits are the random ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// `k` distinct numbers below `n`, in increasing order (all of them when `k >= n`).
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        if k >= n {
            return (0..n).collect();
        }
        let mut chosen = BTreeSet::new();
        while chosen.len() < k {
            chosen.insert(self.below(n as u64) as usize);
        }
        chosen.into_iter().collect()
    }
}

// ---- targets ----

/// What runs a program: frames through XDP/tc, or socket contexts.
#[derive(Debug, Clone)]
enum Input {
    Frame(Vec<u8>),
    Sock(SockAddr),
}

/// One object under mutation, with the maps it runs against and its input set.
struct Target {
    name: String,
    kind: ProgKind,
    program: Program,
    /// Every map of the plan it belongs to.
    specs: Vec<MapSpec>,
    /// The plan's writes, in order (the mutable ones are those of `own_writes`).
    writes: Vec<MapWrites>,
    /// Indexes into `writes` whose batches are mutated.
    own_writes: Vec<usize>,
    inputs: Vec<Input>,
    /// Runs of other (unmutated) programs before the inputs, on the same maps: the
    /// conntrack entries a reply finds, the socket records a reverse hook finds.
    setup: Vec<(Program, ProgKind, Vec<Input>)>,
    /// Test binaries that run this program in the simulator, the quickest first (the
    /// first failure ends a mutant's run).
    suite: &'static [&'static str],
}

fn load_cfg(rel: &str) -> sluice::model::NodeConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    sluice::model::load_file(&path).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn plan_specs_writes(objects: &[Object]) -> (Vec<MapSpec>, Vec<MapWrites>) {
    let mut specs: Vec<MapSpec> = Vec::new();
    let mut writes = Vec::new();
    for o in objects {
        for d in &o.maps {
            if !specs.iter().any(|s| s.name == d.name) {
                specs.push(d.sim_spec());
            }
        }
        writes.extend(o.writes.iter().cloned());
    }
    (specs, writes)
}

/// Addresses worth probing: the prefixes' edges and just outside them, hosts inside.
fn pool_from_prefixes(v4: &[(u32, u8)], v6: &[(u128, u8)]) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    use sluice::maps::prefilter::{mask128, mask32};
    let mut a4 = Vec::new();
    for &(a, l) in v4 {
        let last = a | !mask32(l);
        a4.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), a | (0x5a5a_5a5a & !mask32(l))]);
    }
    let mut a6 = Vec::new();
    for &(a, l) in v6 {
        let last = a | !mask128(l);
        let mid = a | (0x5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a & !mask128(l));
        a6.extend([a, last, a.wrapping_sub(1), last.wrapping_add(1), mid]);
    }
    (a4.into_iter().map(Ipv4Addr::from).collect(), a6.into_iter().map(Ipv6Addr::from).collect())
}

/// A broad random frame: 0..=3 VLAN tags, IPv4 (options, fragments) or IPv6 (extension
/// headers) or another ethertype, TCP with assorted flags, UDP, SCTP or ICMP, addresses
/// and ports mostly from the pools; sometimes a byte of the IP header rewritten, often cut
/// short.
fn random_frame(rng: &mut Lcg, a4: &[Ipv4Addr], a6: &[Ipv6Addr], ports: &[u16]) -> Vec<u8> {
    let mut link = PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let depth = match rng.below(20) {
        0..=15 => 0,
        16..=17 => 1,
        18 => 2,
        _ => 3,
    };
    for _ in 0..depth {
        let tpid = if rng.chance(50) { 0x8100 } else { 0x88a8 };
        link = link.vlan_tag(tpid, rng.next() as u16);
    }
    let port = |rng: &mut Lcg| -> u16 {
        if ports.is_empty() || rng.chance(20) {
            rng.next() as u16
        } else {
            rng.pick(ports).wrapping_add(rng.below(3) as u16).wrapping_sub(1)
        }
    };
    let (sport, dport) = (port(rng), port(rng));
    let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
    let flags = *rng.pick(&[
        TcpFlags::SYN,
        TcpFlags::ACK,
        TcpFlags::SYN | TcpFlags::ACK,
        TcpFlags::FIN | TcpFlags::ACK,
        TcpFlags::RST,
    ]);
    let proto = rng.below(10);
    let builder = match rng.below(10) {
        0..=4 => {
            let addr = |rng: &mut Lcg| {
                if a4.is_empty() || rng.chance(10) {
                    Ipv4Addr::from(rng.next() as u32)
                } else {
                    *rng.pick(a4)
                }
            };
            let (s, d) = (addr(rng), addr(rng));
            let opts: Vec<u8> = if rng.chance(10) { vec![1; 4 * rng.below(11) as usize] } else { vec![] };
            let mut ip = link.ipv4(s, d).ipv4_options(&opts);
            if rng.chance(10) {
                ip = ip.ipv4_fragment(rng.next() as u16 & 0x1fff, rng.chance(50));
            }
            match proto {
                0..=3 => ip.tcp(sport, dport, flags, rng.next() as u32, rng.next() as u32).payload(&payload),
                4..=6 => ip.udp(sport, dport).payload(&payload),
                7 => ip.raw_l4(
                    132,
                    &[
                        (sport >> 8) as u8,
                        sport as u8,
                        (dport >> 8) as u8,
                        dport as u8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                ),
                8 => ip.icmpv4(*rng.pick(&[0u8, 8, 3, 11]), 0, (u32::from(sport) << 16) | 1),
                _ => ip.raw_l4(rng.next() as u8, &payload),
            }
        }
        5..=8 => {
            let addr = |rng: &mut Lcg| {
                if a6.is_empty() || rng.chance(10) {
                    Ipv6Addr::from((u128::from(rng.next()) << 64) | u128::from(rng.next()))
                } else {
                    *rng.pick(a6)
                }
            };
            let (s, d) = (addr(rng), addr(rng));
            let mut ip = link.ipv6(s, d);
            if rng.chance(10) {
                ip = ip.ipv6_ext(match rng.below(3) {
                    0 => ExtHeader::HopByHop(vec![]),
                    1 => ExtHeader::DestOpts(vec![1, 2, 0, 0]),
                    _ => ExtHeader::Fragment {
                        offset: rng.next() as u16 & 0x1fff,
                        more: rng.chance(50),
                        id: 1,
                    },
                });
            }
            match proto {
                0..=3 => ip.tcp(sport, dport, flags, rng.next() as u32, rng.next() as u32).payload(&payload),
                4..=6 => ip.udp(sport, dport).payload(&payload),
                7 => ip.raw_l4(
                    132,
                    &[
                        (sport >> 8) as u8,
                        sport as u8,
                        (dport >> 8) as u8,
                        dport as u8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                ),
                8 => ip.icmpv6(*rng.pick(&[128u8, 129, 1, 135]), 0, (u32::from(sport) << 16) | 1),
                _ => ip.raw_l4(rng.next() as u8, &payload),
            }
        }
        _ => {
            let ethertype = *rng.pick(&[0x0806u16, 0x88cc, 0x8847, 0x0000, 0xffff]);
            link.ethertype_raw(ethertype, &payload)
        }
    };
    let mut frame = builder.build();
    let l3 = 14 + 4 * depth as usize;
    if rng.chance(4) && frame.len() > l3 {
        frame[l3] = rng.next() as u8;
    }
    if rng.chance(4) && frame.len() > l3 + 9 {
        // The IPv4 protocol / IPv6 payload length region.
        let at = l3 + 6 + rng.below(4) as usize;
        frame[at] = rng.next() as u8;
    }
    if rng.chance(12) {
        let len = rng.below(frame.len() as u64 + 1) as usize;
        frame.truncate(len);
    }
    frame
}

fn frames(rng: &mut Lcg, n: usize, a4: &[Ipv4Addr], a6: &[Ipv6Addr], ports: &[u16]) -> Vec<Input> {
    (0..n).map(|_| Input::Frame(random_frame(rng, a4, a6, ports))).collect()
}

/// The addresses and ports of a node's services: VIPs and backends.
fn service_pool(cfg: &sluice::model::NodeConfig) -> (Vec<IpAddr>, Vec<u16>) {
    let mut addrs = Vec::new();
    let mut ports = Vec::new();
    for s in &cfg.services {
        for f in &s.frontends {
            addrs.push(f.vip);
            ports.push(f.port);
            for b in &f.backends {
                addrs.push(b.address);
                ports.push(b.port);
            }
        }
    }
    (addrs, ports)
}

fn split(addrs: &[IpAddr]) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut a4 = Vec::new();
    let mut a6 = Vec::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => a4.push(*a),
            IpAddr::V6(a) => a6.push(*a),
        }
    }
    (a4, a6)
}

fn backends(prefix: [u8; 3], n: u8, state: BackendState) -> Vec<Backend> {
    (1..=n)
        .map(|j| Backend {
            address: IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], prefix[2], j)),
            port: 8080,
            state,
            weight: 1,
        })
        .collect()
}

fn frontend(vip: &str, port: u16, protocol: Protocol, mut backends: Vec<Backend>) -> Frontend {
    backends.sort();
    Frontend { vip: vip.parse().expect("literal"), port, protocol, port_name: String::new(), backends }
}

/// Services for the load balancers: every protocol and family, ClientIP affinity, no
/// backend, Maglev, a terminating backend.
fn lb_services() -> Vec<Service> {
    let svc = |name: &str, algorithm, affinity, frontends| Service {
        namespace: "default".into(),
        name: name.into(),
        algorithm,
        affinity,
        frontends,
    };
    let one = |addr: &str, port| Backend {
        address: addr.parse().expect("literal"),
        port,
        state: BackendState::Active,
        weight: 1,
    };
    let none = SessionAffinity::None;
    let mut drain = backends([10, 0, 5], 2, BackendState::Active);
    drain.extend(backends([10, 0, 6], 1, BackendState::Terminating));
    vec![
        svc(
            "web",
            LbAlgorithm::Random,
            none,
            vec![
                frontend("10.96.0.10", 80, Protocol::Tcp, vec![one("10.0.1.1", 8080)]),
                frontend("10.96.0.10", 53, Protocol::Udp, vec![one("10.0.1.1", 5353)]),
                frontend("10.96.0.10", 3868, Protocol::Sctp, vec![one("10.0.1.1", 3868)]),
                frontend("fd00:96::10", 80, Protocol::Tcp, vec![one("fd00:1:2:3::1", 8080)]),
                frontend("fd00:96::10", 53, Protocol::Udp, vec![one("fd00:1:2:3::1", 5353)]),
                frontend("fd00:96::10", 3868, Protocol::Sctp, vec![one("fd00:1:2:3::1", 3868)]),
            ],
        ),
        svc(
            "sticky",
            LbAlgorithm::Random,
            SessionAffinity::ClientIp { timeout_seconds: 600 },
            vec![frontend("10.96.0.20", 80, Protocol::Tcp, backends([10, 0, 2], 2, BackendState::Active))],
        ),
        svc("empty", LbAlgorithm::Random, none, vec![frontend("10.96.0.30", 80, Protocol::Tcp, vec![])]),
        svc(
            "maglev",
            LbAlgorithm::Maglev(TableSize::new(31).expect("31 is prime")),
            none,
            vec![frontend("10.96.0.40", 80, Protocol::Tcp, backends([10, 0, 4], 3, BackendState::Active))],
        ),
        svc("drain", LbAlgorithm::Random, none, vec![frontend("10.96.0.50", 80, Protocol::Tcp, drain)]),
    ]
}

fn targets(o: &Opts) -> Vec<Target> {
    let mut rng = Lcg(o.seed ^ 0x1a9e);
    let mut out = Vec::new();

    // The prefilter, over the golden fixture's deny set (what golden_prefilter runs).
    let cfg = sluice::model::parse_str(
        sluice::golden::prefilter::FIXTURE,
        sluice::golden::prefilter::FIXTURE_ORIGIN,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = node::plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let set = sluice::golden::prefilter::deny_set(&cfg);
    let v4: Vec<(u32, u8)> = set.v4.iter().copied().collect();
    let v6: Vec<(u128, u8)> = set.v6.iter().copied().collect();
    let (a4, a6) = pool_from_prefixes(&v4, &v6);
    let mut inputs: Vec<Input> =
        sluice::golden::prefilter::cases().into_iter().map(|c| Input::Frame(c.packet)).collect();
    // One host in every /32 slot a shorter IPv6 prefix fills: the /32 table's keys sit in
    // either cuckoo bucket, and only probing each reaches both.
    for &(a, l) in v6.iter().filter(|(_, l)| (16..32).contains(l)) {
        for slot in 0..(1u128 << (32 - l)).min(4096) {
            inputs.push(Input::Frame(sluice::golden::probes::udp6(a | (slot << 96) | 0x77)));
        }
    }
    inputs.extend(frames(&mut rng, o.inputs * 2, &a4, &a6, &[53]));
    let (specs, writes) = plan_specs_writes(&plan.objects);
    let pf = plan.object(sluice::codegen::prefilter::NAME).expect("the plan has the prefilter");
    out.push(Target {
        name: pf.name.clone(),
        kind: pf.kind,
        program: pf.program.clone(),
        own_writes: (0..pf.writes.len()).collect(),
        specs,
        writes,
        inputs,
        setup: Vec::new(),
        suite: &["golden_prefilter", "prefilter_live", "prefilter_slots"],
    });

    // One endpoint's two programs, in the policy demo's plan (what policy_datapath runs).
    let cfg = load_cfg("fixtures/policy/demo.yaml");
    let plan = node::plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let (specs, writes) = plan_specs_writes(&plan.objects);
    let world: Vec<IpAddr> = ["203.0.113.9", "10.0.1.99", "2001:db8::9", "fd00:0:1::99"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .collect();
    let policy_ports = [22, 53, 80, 443, 5432, 8079, 8080, 8085, 8089, 8090];
    let mut sport = 10_000;
    let probes = sluice::golden::probes::policy_flows(&cfg, &world, &policy_ports, &mut sport);
    let (svc_addrs, svc_ports) = service_pool(&cfg);
    let mut peers: Vec<IpAddr> = world.clone();
    peers.extend(cfg.host_addresses.iter().copied());
    for e in &cfg.endpoints {
        peers.extend(e.addresses());
    }
    peers.extend(svc_addrs);
    let (p4, p6) = split(&peers);
    let mut ports: Vec<u16> = policy_ports.to_vec();
    ports.extend(svc_ports);
    // Each program's probes, then the replies to the other program's probes (run first,
    // as setup, so conntrack has their entries). The first endpoint's writes ride on
    // `from_ep_1`: they are mutated with it.
    let own = |name: &str| -> Vec<Input> {
        probes
            .iter()
            .filter(|p| p.program == name)
            .map(|p| Input::Frame(sluice::golden::probes::flow_frame(&p.key)))
            .collect()
    };
    let replies = |name: &str| -> Vec<Input> {
        probes
            .iter()
            .filter(|p| p.program == name)
            .map(|p| {
                let k = &p.key;
                let (sport, dport) = match k.proto {
                    1 => (k.sport, 0),
                    58 => (k.sport, 129),
                    _ => (k.dport, k.sport),
                };
                let reply = sluice::policy::FlowKey { src: k.dst, dst: k.src, proto: k.proto, sport, dport };
                Input::Frame(sluice::golden::probes::reply_frame(&reply))
            })
            .collect()
    };
    // Where `from_ep_1`'s batches start among the plan's writes (the prefilter's come first).
    let first_ep =
        plan.objects.iter().take_while(|o| o.name != "from_ep_1").map(|o| o.writes.len()).sum::<usize>();
    for (name, other) in [("from_ep_1", "to_ep_1"), ("to_ep_1", "from_ep_1")] {
        let obj = plan.object(name).unwrap_or_else(|| panic!("the demo plan has {name}"));
        let other_obj = plan.object(other).unwrap_or_else(|| panic!("the demo plan has {other}"));
        let mut inputs = own(name);
        inputs.extend(replies(other));
        // Random flows of this endpoint (its own address on its side, so the source
        // check passes), and some random frames of any kind.
        let mine: Vec<IpAddr> = probes
            .iter()
            .filter(|p| p.program == name)
            .map(|p| if name.starts_with("from") { p.key.src } else { p.key.dst })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Half of them variations of the flows policy allows (a new source port, the
        // destination port moved by one), so the paths after the verdict run often.
        let allowed: Vec<sluice::policy::FlowKey> = probes
            .iter()
            .filter(|p| p.program == name)
            .filter(|p| {
                sluice::policy::oracle::decide(&cfg, &p.endpoint, p.direction, &p.key)
                    .is_ok_and(|v| v == sluice::policy::Verdict::Allow)
            })
            .map(|p| p.key)
            .collect();
        for _ in 0..o.inputs {
            if !allowed.is_empty() && rng.chance(50) {
                let mut key = *rng.pick(&allowed);
                key.sport = 20_000 + rng.below(20_000) as u16;
                if rng.chance(20) && !matches!(key.proto, 1 | 58) {
                    key.dport = key.dport.wrapping_add(rng.below(3) as u16).wrapping_sub(1);
                }
                let frame = if rng.chance(20) {
                    sluice::golden::probes::reply_frame(&key)
                } else {
                    sluice::golden::probes::flow_frame(&key)
                };
                inputs.push(Input::Frame(frame));
                continue;
            }
            let ep = *rng.pick(&mine);
            let peer = *rng.pick(&peers);
            let peer = match (ep, peer) {
                (IpAddr::V4(_), IpAddr::V6(_)) => IpAddr::V4(*rng.pick(&p4)),
                (IpAddr::V6(_), IpAddr::V4(_)) => IpAddr::V6(*rng.pick(&p6)),
                _ => peer,
            };
            let (src, dst) = if name.starts_with("from") { (ep, peer) } else { (peer, ep) };
            let proto = *rng.pick(&[6u8, 6, 17, 17, 132, if ep.is_ipv4() { 1 } else { 58 }, 47]);
            let port = |rng: &mut Lcg| {
                if rng.chance(20) {
                    rng.next() as u16
                } else {
                    rng.pick(&ports).wrapping_add(rng.below(3) as u16).wrapping_sub(1)
                }
            };
            let (sport, dport) = match proto {
                1 => (port(&mut rng), *rng.pick(&[8u16, 0, 3])),
                58 => (port(&mut rng), *rng.pick(&[128u16, 129, 1])),
                _ => (port(&mut rng), port(&mut rng)),
            };
            let key = sluice::policy::FlowKey { src, dst, proto, sport, dport };
            let frame = if rng.chance(30) {
                sluice::golden::probes::reply_frame(&key)
            } else {
                sluice::golden::probes::flow_frame(&key)
            };
            inputs.push(Input::Frame(frame));
        }
        inputs.extend(frames(&mut rng, o.inputs / 4, &p4, &p6, &ports));
        out.push(Target {
            name: name.to_string(),
            kind: obj.kind,
            program: obj.program.clone(),
            own_writes: if name == "from_ep_1" {
                (first_ep..first_ep + obj.writes.len()).collect()
            } else {
                Vec::new()
            },
            specs: specs.clone(),
            writes: writes.clone(),
            inputs,
            setup: vec![(other_obj.program.clone(), other_obj.kind, own(other))],
            suite: &[
                "endpoint_reasons",
                "endpoint_policy",
                "forwarding",
                "endpoint_services",
                "policy_datapath",
            ],
        });
    }

    // The tc load balancer, with one service per behaviour (as `lb_golden` has them).
    let services = lb_services();
    let mut lb = node::lb_object().unwrap_or_else(|e| panic!("{e}"));
    lb.add_maps(node::lb_maps());
    let (sw, _) = sluice::maps::lb::service_writes(&services, &sluice::maps::lb::LbState::default())
        .unwrap_or_else(|e| panic!("{e}"));
    lb.writes = sw;
    let frontends: Vec<&Frontend> = services.iter().flat_map(|s| &s.frontends).collect();
    let clients: Vec<IpAddr> = ["10.0.9.9", "10.0.9.10", "fd00:9::9", "fd00:9::10"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .collect();
    let mut addrs: Vec<IpAddr> = clients.clone();
    let mut svc_ports = Vec::new();
    for f in &frontends {
        addrs.push(f.vip);
        svc_ports.push(f.port);
        for b in &f.backends {
            addrs.push(b.address);
            svc_ports.push(b.port);
        }
    }
    let (l4, l6) = split(&addrs);
    let proto_num = |p: Protocol| match p {
        Protocol::Tcp => 6u8,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
        Protocol::Icmp => 1,
        Protocol::IcmpV6 => 58,
    };
    let mut lb_inputs = Vec::new();
    for _ in 0..o.inputs * 2 {
        let f = *rng.pick(&frontends);
        let client = *rng
            .pick(&clients.iter().filter(|c| c.is_ipv4() == f.vip.is_ipv4()).copied().collect::<Vec<_>>());
        let mut proto = proto_num(f.protocol);
        let mut dport = f.port;
        if rng.chance(10) {
            proto = *rng.pick(&[6u8, 17, 132]);
        }
        if rng.chance(10) {
            dport = dport.wrapping_add(rng.below(3) as u16).wrapping_sub(1);
        }
        let sport = 40_000 + rng.below(8) as u16;
        let key = match rng.below(10) {
            // A client to the frontend: a new connection or one conntrack knows.
            0..=5 => sluice::policy::FlowKey { src: client, dst: f.vip, proto, sport, dport },
            // A backend's reply to a client (reverse translation).
            6..=7 if !f.backends.is_empty() => {
                let b = rng.pick(&f.backends);
                sluice::policy::FlowKey { src: b.address, dst: client, proto, sport: b.port, dport: sport }
            }
            _ => {
                lb_inputs.push(Input::Frame(random_frame(&mut rng, &l4, &l6, &svc_ports)));
                continue;
            }
        };
        let frame = if rng.chance(30) {
            sluice::golden::probes::reply_frame(&key)
        } else {
            sluice::golden::probes::flow_frame(&key)
        };
        lb_inputs.push(Input::Frame(frame));
    }
    let (specs, writes) = plan_specs_writes(std::slice::from_ref(&lb));
    out.push(Target {
        name: lb.name.clone(),
        kind: lb.kind,
        program: lb.program.clone(),
        // The load balancer's tests write their own services: none of these batches
        // reaches them (see TESTING.md).
        own_writes: Vec::new(),
        specs,
        writes,
        inputs: lb_inputs,
        setup: Vec::new(),
        suite: &["lb_golden", "lb_edges"],
    });

    // The socket-LB programs, with the same services: mostly a frontend asked for with
    // its protocol's socket type, sometimes another type, port or address.
    let mut sock_inputs = Vec::new();
    for _ in 0..o.inputs {
        let f = *rng.pick(&frontends);
        let (mut addr, mut port, mut proto) = (f.vip, f.port, proto_num(f.protocol));
        if rng.chance(15) {
            addr = *rng.pick(&addrs);
        }
        if rng.chance(15) {
            port = if rng.chance(50) { *rng.pick(&svc_ports) } else { port.wrapping_add(1) };
        }
        if rng.chance(15) {
            proto = *rng.pick(&[6u8, 17, 132]);
        }
        let ty = if proto == 17 { SOCK_DGRAM } else { SOCK_STREAM };
        let cookie = rng.below(16);
        let mut sa = SockAddr::new(SocketAddr::new(addr, port), ty, u32::from(proto), cookie);
        if let IpAddr::V4(a) = addr {
            // What an IPv6 hook sees of it: the IPv4-mapped form.
            sa.set_user_addr(SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), port));
        }
        if rng.chance(10) {
            // A v4 address asked of an AF_INET6 socket, or the other way round.
            sa.user_family = if sa.user_family == 2 { 10 } else { 2 };
        }
        sock_inputs.push(Input::Sock(sa));
    }
    let sock_maps: Vec<_> = sluice::codegen::sock_lb::map_defs();
    let specs: Vec<MapSpec> = sock_maps.iter().map(|d| d.sim_spec()).collect();
    let sock_writes: Vec<MapWrites> =
        lb.writes.iter().filter(|w| sluice::codegen::sock_lb::MAPS.contains(&w.map)).cloned().collect();
    // The reverse hooks find what the forward hooks recorded: those run first.
    let forward: Vec<(Program, ProgKind, Vec<Input>)> = SockAddrHook::ALL
        .into_iter()
        .filter(|h| h.is_forward())
        .map(|h| {
            let p = sluice::codegen::sock_lb::generate(h).unwrap_or_else(|e| panic!("{e}"));
            (p, sluice::codegen::sock_lb::kind(h), sock_inputs.clone())
        })
        .collect();
    // The reverse hooks see what the kernel reports: mostly a backend's address (with a
    // cookie the forward hooks may have recorded), sometimes anything else.
    let reported: Vec<Input> = sock_inputs
        .iter()
        .map(|i| {
            let Input::Sock(sa) = i else { return i.clone() };
            let mut sa = *sa;
            let backends: Vec<&Backend> = frontends.iter().flat_map(|f| &f.backends).collect();
            if rng.chance(85) {
                let b = rng.pick(&backends);
                let fam = sa.user_family;
                sa.set_user_addr(SocketAddr::new(b.address, b.port));
                if let IpAddr::V4(a) = b.address {
                    // What an IPv6 hook sees of it: the IPv4-mapped form.
                    sa.set_user_addr(SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), b.port));
                }
                sa.user_family = if b.address.is_ipv4() { 2 } else { 10 };
                if rng.chance(10) {
                    sa.user_family = fam;
                }
            }
            Input::Sock(sa)
        })
        .collect();
    for hook in SockAddrHook::ALL {
        let program = sluice::codegen::sock_lb::generate(hook).unwrap_or_else(|e| panic!("{e}"));
        out.push(Target {
            inputs: if hook.is_forward() { sock_inputs.clone() } else { reported.clone() },
            setup: if hook.is_forward() { Vec::new() } else { forward.clone() },
            name: sluice::codegen::sock_lb::name(hook).to_string(),
            kind: sluice::codegen::sock_lb::kind(hook),
            program,
            specs: specs.clone(),
            writes: sock_writes.clone(),
            own_writes: Vec::new(),
            suite: &["sock_lb", "sock_lb_edges"],
        });
    }
    out
}

// ---- behaviour ----

/// Everything a run of the input set shows, hashed per input, plus the final maps.
#[derive(Debug, PartialEq, Eq)]
struct Behaviour {
    per_input: Vec<u64>,
    maps: u64,
    /// How many inputs got each return value (to show what the input set reaches).
    retvals: BTreeMap<u64, usize>,
}

fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Every map entry, as (map, key) -> hash of its value(s), and every ring buffer record.
fn maps_dump(maps: &MapSet) -> BTreeMap<(String, Vec<u8>), u64> {
    let mut out = BTreeMap::new();
    for m in maps.iter() {
        for k in m.keys() {
            let mut h = DefaultHasher::new();
            match m.lookup_percpu(&k) {
                Some(v) => v.hash(&mut h),
                None => m.lookup(&k).hash(&mut h),
            }
            out.insert((m.name().to_string(), k), h.finish());
        }
        for (i, r) in m.records().iter().enumerate() {
            out.insert(
                (format!("{} record", m.name()), (i as u64).to_le_bytes().to_vec()),
                hash_str(&format!("{r:?}")),
            );
        }
    }
    out
}

/// What the runs changed in the maps: the entries whose value differs from the initial
/// contents (a mutated write itself is no effect; what the program does with it is).
fn effects(before: &BTreeMap<(String, Vec<u8>), u64>, after: &BTreeMap<(String, Vec<u8>), u64>) -> u64 {
    let mut h = DefaultHasher::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            (k, v).hash(&mut h);
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            (k, "deleted").hash(&mut h);
        }
    }
    h.finish()
}

fn fresh_maps(t: &Target, writes: &[MapWrites]) -> Result<MapSet, String> {
    let mut maps = MapSet::new(&t.specs, sluice::node::sim::SIM_CPUS).map_err(|e| e.to_string())?;
    for w in writes {
        let map = maps.get_mut(w.map).ok_or_else(|| format!("no map {}", w.map))?;
        for (k, v) in w.keys.chunks_exact(w.key_size.max(1)).zip(w.values.chunks_exact(w.value_size.max(1))) {
            map.update(k, v, 0).map_err(|e| format!("{}: {e}", w.map))?;
        }
        for k in w.deletes.chunks_exact(w.key_size.max(1)) {
            map.delete(k).map_err(|e| format!("{}: {e}", w.map))?;
        }
    }
    Ok(maps)
}

fn context(input: &Input, now_ns: u64) -> Context {
    let mut ctx = match input {
        Input::Frame(f) => Context::new(f.clone()),
        Input::Sock(sa) => Context::for_sock_addr(*sa),
    };
    ctx.now_ns = now_ns;
    ctx
}

/// Run the input set in order on one map state, the clock stepped between inputs (now and
/// then by hours, so expiry paths run too).
fn behaviour(t: &Target, program: &Program, writes: &[MapWrites]) -> Result<Behaviour, String> {
    let mut maps = fresh_maps(t, writes)?;
    let initial = maps_dump(&maps);
    let mut rng = Lcg(0xc10c);
    let mut now: u64 = 1_000_000_000_000;
    for (p, kind, inputs) in &t.setup {
        for input in inputs {
            now += 1_000_000_000;
            let mut ctx = context(input, now);
            let _ = exec::run(p, *kind, &mut ctx, &mut maps);
        }
    }
    let mut per_input = Vec::with_capacity(t.inputs.len());
    let mut retvals = BTreeMap::new();
    for input in &t.inputs {
        now += if rng.chance(3) { 7_200_000_000_000 } else { rng.below(90) * 1_000_000_000 };
        let mut ctx = context(input, now);
        let shown = match exec::run(program, t.kind, &mut ctx, &mut maps) {
            Ok(out) => {
                *retvals.entry(out.retval).or_insert(0) += 1;
                format!(
                    "{} {:?} {:?} {:?} {} {} {:?} {:?} {:?} {:?}",
                    out.retval,
                    out.packet,
                    out.meta,
                    out.redirect,
                    out.redirect_neigh,
                    out.redirect_peer,
                    out.ctx_out,
                    ctx.tunnel_key,
                    ctx.sock_addr,
                    out.tail_calls
                )
            }
            Err(e) => format!("error {e}"),
        };
        per_input.push(hash_str(&shown));
    }
    Ok(Behaviour { per_input, maps: effects(&initial, &maps_dump(&maps)), retvals })
}

// ---- the suite ----

/// Test binaries by name, built once (same profile as this harness).
fn test_binaries(names: &BTreeSet<&str>) -> BTreeMap<String, PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["test", "--no-run", "--message-format=json"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    for n in names {
        cmd.args(["--test", n]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().expect("cargo runs");
    assert!(out.status.success(), "building the test binaries failed");
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |after: &str, key: &str| -> Option<String> {
            let at = line.find(after)? + after.len();
            let rest = &line[at..];
            let k = rest.find(key)? + key.len();
            let v = &rest[k..];
            Some(v[..v.find('"')?].to_string())
        };
        if let (Some(name), Some(exe)) =
            (field("\"target\":{", "\"name\":\""), field("", "\"executable\":\""))
        {
            found.insert(name, PathBuf::from(exe));
        }
    }
    for n in names {
        assert!(found.contains_key(*n), "no executable for test binary {n}");
    }
    found
}

/// Test names left out of every run: the listing snapshots (a listing changes with every
/// mutant; issue 17 asks what the behavioural tests catch).
const SKIP: &str = "snapshot";

#[derive(Debug)]
enum SuiteVerdict {
    Killed(String),
    Passed,
}

fn run_suite(
    bins: &BTreeMap<String, PathBuf>,
    t: &Target,
    named: Option<&Named>,
    kernel: bool,
) -> SuiteVerdict {
    for b in t.suite {
        let mut cmd = Command::new(&bins[*b]);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env_remove(mutate::ENV);
        if let Some(named) = named {
            cmd.env(mutate::ENV, named.to_string());
        }
        cmd.env("RUST_TEST_THREADS", "2")
            .env_remove(sluice::sys::REQUIRE_KERNEL_ENV)
            .args(["-q", "--skip", SKIP]);
        // Without `--kernel` the kernel halves skip (they would load the mutant into the
        // kernel: slow, and a spot check of the kernel's verifier rather than the suite).
        if !kernel {
            cmd.env(sluice::sys::NO_KERNEL_ENV, "1");
        }
        // To a file, not a pipe: a failing test's report can be larger than a pipe holds.
        let out_path = std::env::temp_dir().join(format!("sluice-mutate-{}.out", std::process::id()));
        let out_file =
            std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{}: {e}", out_path.display()));
        let mut child =
            cmd.stdout(out_file).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{b}: {e}"));
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if started.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        match status {
            None => return SuiteVerdict::Killed(format!("{b}: timed out")),
            Some(s) if !s.success() => {
                // libtest lists the failed tests, indented, after its last "failures:".
                let first = stdout
                    .rsplit_once("\nfailures:\n")
                    .and_then(|(_, names)| names.lines().find(|l| l.starts_with("    ")))
                    .map_or("(exit status)", str::trim);
                return SuiteVerdict::Killed(format!("{b}::{first}"));
            }
            Some(_) => {}
        }
    }
    SuiteVerdict::Passed
}

// ---- the run ----

#[derive(Debug, Default)]
struct Tally {
    generated: usize,
    sampled: usize,
    rejected: usize,
    killed: usize,
    survived: usize,
    equivalent: usize,
    survivors: Vec<String>,
    /// Mutants the tests killed although the input set showed no difference.
    killed_unseen: usize,
}

/// `slot N: insn` as the listing (and its snapshot) numbers it.
fn listing_line(p: &Program, index: usize) -> String {
    let slot = p.slot_starts().get(index).copied().unwrap_or(0);
    p.insns().get(index).map_or_else(String::new, |i| format!("{slot}: {}", sluice_asm::text::format_insn(i)))
}

fn main() {
    let o = opts();
    let all = targets(&o);
    let targets: Vec<Target> = all
        .into_iter()
        .filter(|t| o.object.as_deref().is_none_or(|n| n.split(',').any(|n| n == t.name)))
        .collect();
    assert!(!targets.is_empty(), "no object named {:?}", o.object);
    let bins = if o.suite {
        test_binaries(&targets.iter().flat_map(|t| t.suite.iter().copied()).collect())
    } else {
        BTreeMap::new()
    };
    eprintln!("mutate: seed {:#x}, {} objects, suite {}", o.seed, targets.len(), o.suite);
    // The suite must pass unmutated, or every mutant would look killed.
    let mut baseline_done = BTreeSet::new();
    for t in targets.iter().filter(|_| o.suite) {
        if baseline_done.insert(t.suite) {
            if let SuiteVerdict::Killed(by) = run_suite(&bins, t, None, o.kernel) {
                panic!("the suite fails without a mutant: {by}");
            }
        }
    }
    let mut table = Vec::new();
    for t in &targets {
        let started = Instant::now();
        let specs = &t.specs;
        let original = behaviour(t, &t.program, &t.writes).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        verifier::verify(&t.program, t.kind, specs)
            .unwrap_or_else(|e| panic!("{}: original rejected: {e}", t.name));
        eprintln!("{}: {} inputs, return values {:?}", t.name, t.inputs.len(), original.retvals);
        let mut rng = Lcg(o.seed ^ mutate::program_fingerprint(&t.program));
        let insn_ms: Vec<InsnMutant> = mutate::insn_mutants(&t.program);
        let chosen: Vec<usize> = match o.insn {
            Some(at) => (0..insn_ms.len()).filter(|&i| insn_ms[i].index == at).collect(),
            None if o.all => (0..insn_ms.len()).collect(),
            None => rng.sample(insn_ms.len(), o.sample),
        };
        let fp = mutate::program_fingerprint(&t.program);
        let mut tally = Tally { generated: insn_ms.len(), ..Tally::default() };
        eprintln!("{}: {} instruction mutants", t.name, insn_ms.len());

        // Write mutants: a seeded sample over every byte of every update of the batches.
        let counts: Vec<(usize, usize)> =
            t.own_writes.iter().map(|&i| (i, mutate::write_mutant_count(&t.writes[i]))).collect();
        let total_w: usize = counts.iter().map(|c| c.1).sum();
        tally.generated += total_w;
        // Batch, then update, then byte, each uniform: a table written as one large
        // value would otherwise take every draw.
        let mut chosen_w = BTreeSet::new();
        for _ in 0..o.writes.min(total_w) * 4 {
            if chosen_w.len() == o.writes.min(total_w) {
                break;
            }
            let &(batch, count) = rng.pick(&counts);
            let w = &t.writes[batch];
            if count == 0 {
                continue;
            }
            let per = w.key_size + w.value_size;
            let n = rng.below(w.updates() as u64) as usize * per + rng.below(per as u64) as usize;
            let offset: usize = counts.iter().take_while(|c| c.0 != batch).map(|c| c.1).sum();
            chosen_w.insert(offset + n);
        }

        enum Which {
            Insn(usize),
            Write(usize, usize),
        }
        let mut work: Vec<Which> = chosen.iter().map(|&i| Which::Insn(i)).collect();
        for n in chosen_w {
            let mut n = n;
            for &(batch, c) in &counts {
                if n < c {
                    work.push(Which::Write(batch, n));
                    break;
                }
                n -= c;
            }
        }
        tally.sampled = work.len();
        for w in work {
            let (program, writes, named, what) = match w {
                Which::Insn(i) => {
                    let m = &insn_ms[i];
                    (
                        mutate::apply(&t.program, m),
                        t.writes.clone(),
                        Named::Program { fingerprint: fp, index: i },
                        format!("insn {} {}: `{}`", m.index, m.op, listing_line(&t.program, m.index)),
                    )
                }
                Which::Write(batch, n) => {
                    let wm = mutate::write_mutant(&t.writes[batch], n);
                    let mut writes = t.writes.clone();
                    writes[batch] = mutate::apply_write(&t.writes[batch], wm);
                    (
                        t.program.clone(),
                        writes,
                        Named::Writes { fingerprint: mutate::writes_fingerprint(&t.writes[batch]), index: n },
                        format!("write {} {wm}", t.writes[batch].map),
                    )
                }
            };
            if verifier::verify(&program, t.kind, specs).is_err() {
                tally.rejected += 1;
                eprintln!("  {}: {what}: rejected", t.name);
                continue;
            }
            let changed = match behaviour(t, &program, &writes) {
                Ok(b) => b.per_input != original.per_input || b.maps != original.maps,
                // The maps refuse the mutated write (an array index out of range): the
                // loader would fail, which every test notices.
                Err(_) => {
                    tally.rejected += 1;
                    continue;
                }
            };
            let verdict =
                if o.suite { run_suite(&bins, t, Some(&named), o.kernel) } else { SuiteVerdict::Passed };
            match (verdict, changed) {
                (SuiteVerdict::Killed(by), _) => {
                    tally.killed += 1;
                    if !changed {
                        tally.killed_unseen += 1;
                    }
                    eprintln!("  {}: {what}: killed by {by}", t.name);
                }
                (SuiteVerdict::Passed, true) => {
                    eprintln!("  {}: {what}: SURVIVED ({}={named})", t.name, mutate::ENV);
                    tally.survived += 1;
                    tally.survivors.push(what);
                }
                (SuiteVerdict::Passed, false) => {
                    eprintln!("  {}: {what}: equivalent on the input set", t.name);
                    tally.equivalent += 1
                }
            }
        }
        eprintln!("{}: done in {:.0?}", t.name, started.elapsed());
        table.push((t.name.clone(), tally));
    }

    println!("\n| object | mutants | sampled | rejected | killed | survived | equivalent | kill rate |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, t) in &table {
        let rate = if t.killed + t.survived == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", 100.0 * t.killed as f64 / (t.killed + t.survived) as f64)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {rate} |",
            t.generated, t.sampled, t.rejected, t.killed, t.survived, t.equivalent
        );
    }
    println!();
    for (name, t) in &table {
        if t.killed_unseen > 0 {
            println!("{name}: {} killed mutants showed no difference on the input set", t.killed_unseen);
        }
        for s in &t.survivors {
            println!("survivor {name}: {s}");
        }
    }
}
