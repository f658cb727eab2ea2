//! Service load balancing inside the endpoint programs (issue 5): `endpoint::Options {
//! services: true }`. `from-endpoint` runs the load balancer's forward path after the parse
//! and before conntrack and policy, so egress policy judges the backend, not the VIP; the
//! client's `to-endpoint` reverse-translates replies after its ingress verdict allowed them.
//!
//! Golden packets run in the simulator and, when privileged, through `BPF_PROG_TEST_RUN` on
//! the same map contents (`policy` writes plus `maps::lb::service_writes`): verdict, output
//! bytes, the `ep_stats` and `lb_stats` counters must be the expected ones in both, and the
//! two must agree on the `lb_ct` entries (timestamps aside) and the conntrack keys they
//! leave (DESIGN invariant 3). Every output packet's checksums are verified by the code
//! below, written for this test. Kernel runs are gated by `sys::require_kernel` (a skip line
//! without root, a failure under `SLUICE_REQUIRE_KERNEL=1`).
//!
//! Hairpin (an endpoint that is its own service's backend) needs `to-endpoint` runs of a
//! packet the endpoint sent itself: `skb->ingress_ifindex == skb->ifindex`, given to the
//! kernel as the `__sk_buff` context of the test run and to the simulator as its context.

#[path = "support/checksums.rs"]
mod checksums;

use checksums::verify_checksums;
use sluice::codegen::endpoint::{self, Direction, Options, Templates};
use sluice::codegen::lb as lbgen;
use sluice::golden::{check, run_kernel, run_sim, Case, Observation, Output};
use sluice::maps::lb::{ct_entry_key, ct_key, ct_value, service_writes, LbReason, LbState};
use sluice::maps::policy::{self, IpcacheV4, PolicyRule, Reason, EGRESS};
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::node::endpoints::{EndpointSpec, PolicyPlan};
use sluice::node::load::{self, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{Object, Plan};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys::{self, TestRunOpts};
use sluice_verifier_sim::exec::Context;
use sluice_verifier_sim::spec::ProgKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 30);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 0x10);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 0x20);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// Served by C only, whom A's egress policy does not allow.
const VIP_C: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// Served by a only: a's connections to them are hairpinned.
const VIP_HP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const VIP_HP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x12);
const MAC_EP: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_GW: [u8; 6] = [2, 0, 0, 0, 1, 0xa];
const PAYLOAD: &[u8] = b"hello, service";

// ---- packets ----

fn tcp(src: IpAddr, dst: IpAddr, ports: (u16, u16), flags: u16, seq: u32, ack: u32) -> Vec<u8> {
    tcp_macs(src, dst, ports, flags, seq, ack, (MAC_EP, MAC_GW))
}

fn tcp_macs(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    flags: u16,
    seq: u32,
    ack: u32,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet(macs.0, macs.1);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.ipv4(s, d).tcp(ports.0, ports.1, TcpFlags(flags), seq, ack).payload(PAYLOAD).build()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.ipv6(s, d).tcp(ports.0, ports.1, TcpFlags(flags), seq, ack).payload(PAYLOAD).build()
        }
        _ => unreachable!("test frames are of one family"),
    }
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::ethernet(MAC_EP, MAC_GW).ipv4(src, dst).udp(sport, dport).payload(PAYLOAD).build()
}

const SYN: u16 = 0x02;
const ACK: u16 = 0x10;
const SYN_ACK: u16 = 0x12;

// ---- the node: endpoints a (client, 1), b (backend, 2), c (backend, 3) ----

fn policy_plan() -> PolicyPlan {
    let ep = |index, name: &str, ipv4, ipv6, identity, enforced| EndpointSpec {
        index,
        name: name.into(),
        ipv4: Some(ipv4),
        ipv6,
        identity,
        ingress_enforced: enforced,
        egress_enforced: enforced,
    };
    // a: both directions enforced; egress allows b's identity on the backend ports only.
    let allow = |proto, port| PolicyRule {
        ep: 1,
        dir: EGRESS,
        identity: 1002,
        proto,
        port,
        port_prefix: 16,
        deny: false,
        proxy_port: 0,
    };
    PolicyPlan {
        endpoints: vec![
            ep(1, "a", A4, Some(A6), 1001, true),
            ep(2, "b", B4, Some(B6), 1002, false),
            ep(3, "c", C4, None, 1003, false),
        ],
        ipcache_v4: vec![(u32::from(A4), 32, 1001), (u32::from(B4), 32, 1002), (u32::from(C4), 32, 1003)],
        ipcache_v6: vec![(u128::from(A6), 128, 1001), (u128::from(B6), 128, 1002)],
        rules: vec![allow(6, 8080), allow(17, 5353)],
    }
}

fn services() -> Vec<Service> {
    let be = |addr: IpAddr, port| Backend { address: addr, port, state: BackendState::Active, weight: 1 };
    let fe = |vip: IpAddr, port, protocol, backends| Frontend {
        vip,
        port,
        protocol,
        port_name: String::new(),
        backends,
    };
    vec![Service {
        namespace: "default".into(),
        name: "web".into(),
        algorithm: LbAlgorithm::Random,
        affinity: SessionAffinity::None,
        frontends: vec![
            fe(VIP4.into(), 80, Protocol::Tcp, vec![be(B4.into(), 8080)]),
            fe(VIP4.into(), 53, Protocol::Udp, vec![be(B4.into(), 5353)]),
            fe(VIP6.into(), 80, Protocol::Tcp, vec![be(B6.into(), 8080)]),
            fe(VIP_C.into(), 80, Protocol::Tcp, vec![be(C4.into(), 8080)]),
            fe(EMPTY.into(), 80, Protocol::Tcp, vec![]),
            fe(EMPTY.into(), 53, Protocol::Udp, vec![]),
            fe(VIP_HP4.into(), 80, Protocol::Tcp, vec![be(A4.into(), 8080)]),
            fe(VIP_HP4.into(), 53, Protocol::Udp, vec![be(A4.into(), 5353)]),
            fe(VIP_HP6.into(), 80, Protocol::Tcp, vec![be(A6.into(), 8080)]),
        ],
    }]
}

fn plan(options: Options) -> Plan {
    let pp = policy_plan();
    let ipc = IpcacheV4::build(&pp.ipcache_v4);
    let mut maps = policy::map_defs(pp.capacity(&ipc));
    maps.extend(lbgen::map_defs().into_iter().map(|d| {
        if ["lb_ct", "lb_ct4", "lb_aff"].contains(&d.name) {
            d.with_max_entries(16_384)
        } else {
            d
        }
    }));
    let (lb_writes, _) = service_writes(&services(), &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut writes = Some(pp.writes(&ipc).into_iter().chain(lb_writes).collect::<Vec<_>>());
    let templates = Templates::new(options).unwrap_or_else(|e| panic!("{e}"));
    let mut objects = Vec::new();
    for e in &pp.endpoints {
        for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
            objects.push(Object {
                name: dir.program_name(e.index),
                kind: ProgKind::SchedCls,
                program: templates.instantiate(e.index, dir),
                maps: maps.clone(),
                writes: writes.take().unwrap_or_default(),
            });
        }
    }
    Plan { node: "ep-services-test".into(), objects }
}

const SERVICES: Options = Options { conntrack: true, services: true };

// ---- the rig ----

struct Rig {
    sim: SimNode,
    kernel: Option<Loaded>,
    steps: usize,
}

/// What one packet must do.
struct Step {
    what: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    /// The endpoint's reason, `(endpoint, reason)`; none when the load balancer ended it.
    ep: Option<(u32, Reason)>,
    lb: Option<LbReason>,
    output: Output,
}

/// Where the program's packet was last received, as `__sk_buff` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// On another device (`BPF_PROG_TEST_RUN` without a context: `ingress_ifindex` 0).
    Elsewhere,
    /// On the program's own device, now leaving it: what the endpoint sent itself
    /// (`ingress_ifindex == ifindex`, both loopback's 1 as the test run has it).
    Itself,
}

/// The `__sk_buff` given to `BPF_PROG_TEST_RUN` for [`Arrival::Itself`]: through `tc_index`
/// (the fields before `mark` and between `mark` and `priority` must be zero).
fn skb_from_itself() -> Vec<u8> {
    const INGRESS_IFINDEX: usize = 36;
    const IFINDEX: usize = 40;
    let mut ctx = vec![0u8; 48];
    ctx[INGRESS_IFINDEX..INGRESS_IFINDEX + 4].copy_from_slice(&1u32.to_le_bytes());
    ctx[IFINDEX..IFINDEX + 4].copy_from_slice(&1u32.to_le_bytes());
    ctx
}

/// The counter maps every step observes.
const COUNTER_MAPS: [&str; 2] = ["ep_stats", "lb_stats"];

/// Nonzero counter deltas.
fn deltas(
    before: &BTreeMap<(&'static str, u32), u64>,
    after: &BTreeMap<(&'static str, u32), u64>,
) -> BTreeMap<(&'static str, u32), u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.wrapping_sub(before.get(k).copied().unwrap_or(0));
            (d != 0).then_some((*k, d))
        })
        .collect()
}

fn sim_counters(sim: &SimNode) -> BTreeMap<(&'static str, u32), u64> {
    let mut out = BTreeMap::new();
    for m in COUNTER_MAPS {
        let n = sim.maps.get(m).map_or(0, |m| m.spec().max_entries);
        for i in 0..n {
            out.insert((m, i), sim.counter(m, i));
        }
    }
    out
}

fn kernel_counters(k: &Loaded) -> BTreeMap<(&'static str, u32), u64> {
    let mut out = BTreeMap::new();
    for m in COUNTER_MAPS {
        let map = &k.maps[m];
        for i in 0..map.max_entries() {
            let per_cpu =
                map.lookup_percpu(&i.to_le_bytes()).unwrap_or_else(|e| panic!("{e}")).unwrap_or_default();
            let sum =
                per_cpu.iter().filter_map(|v| v.get(..8)?.try_into().ok()).map(u64::from_le_bytes).sum();
            out.insert((m, i), sum);
        }
    }
    out
}

impl Rig {
    fn new(test: &str) -> Rig {
        let plan = plan(SERVICES);
        let sim = SimNode::new(&plan).unwrap_or_else(|e| panic!("verifier-sim: {e}"));
        let kernel = sys::require_kernel(test)
            .then(|| load::load_plan(&sys::kernel(), &plan).unwrap_or_else(|e| panic!("kernel: {e}")));
        Rig { sim, kernel, steps: 0 }
    }

    fn step(&mut self, s: Step) -> Vec<u8> {
        self.step_from(s, Arrival::Elsewhere)
    }

    fn step_from(&mut self, s: Step, arrival: Arrival) -> Vec<u8> {
        self.steps += 1;
        let mut counters = BTreeMap::new();
        if let Some((ep, r)) = s.ep {
            counters.insert(("ep_stats", r as u32 + ep * Reason::COUNT), 1);
        }
        if let Some(r) = s.lb {
            counters.insert(("lb_stats", r as u32), 1);
        }
        // Name both counter maps so that an unexpected count in either shows.
        let name = format!("{}: {}", self.steps, s.what);
        let case = Case {
            name,
            program: s.program,
            packet: s.packet,
            verdict: s.verdict,
            counters,
            output: s.output,
        };
        let mut with_maps = case.clone();
        for m in ["ep_stats", "lb_stats"] {
            if !with_maps.counters.keys().any(|(n, _)| *n == m) {
                // A zero-delta entry is never observed; index 0 of a map with no delta
                // still makes run_sim snapshot the map.
                with_maps.counters.insert((m, u32::MAX), 0);
            }
        }
        let obs = match arrival {
            Arrival::Elsewhere => self.observe_sim(&with_maps),
            Arrival::Itself => self.observe_sim_from_itself(&case),
        };
        if let Err(e) = check(&case, &obs) {
            panic!("simulator: {e}");
        }
        if obs.packet != case.packet {
            if let Err(e) = verify_checksums(&obs.packet) {
                panic!("simulator, case `{}`: bad {e} in the output", case.name);
            }
        }
        if let Some(k) = &self.kernel {
            let kobs = match arrival {
                Arrival::Elsewhere => {
                    run_kernel(k, &with_maps).unwrap_or_else(|e| panic!("{e}")).expect("long enough")
                }
                Arrival::Itself => kernel_from_itself(k, &case),
            };
            if let Err(e) = check(&case, &kobs) {
                panic!("kernel: {e}");
            }
            assert_eq!(kobs, obs, "case `{}`: kernel and simulator differ", case.name);
        }
        obs.packet
    }

    fn observe_sim(&mut self, case: &Case) -> Observation {
        run_sim(&mut self.sim, case).unwrap_or_else(|e| panic!("{}: {e}", case.name))
    }

    /// [`Arrival::Itself`] in the simulator: `skb->ingress_ifindex` = `skb->ifindex` = 1.
    fn observe_sim_from_itself(&mut self, case: &Case) -> Observation {
        let before = sim_counters(&self.sim);
        let mut ctx = Context::new(case.packet.clone());
        ctx.skb_ingress_ifindex = ctx.ifindex;
        let out = self.sim.run_with(case.program, &mut ctx).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let after = sim_counters(&self.sim);
        Observation { verdict: out.retval as u32, packet: out.packet, counters: deltas(&before, &after) }
    }

    /// `lb_ct` with timestamps zeroed and the conntrack keys, from the simulator, checked equal
    /// to the kernel's.
    fn state(&self) -> BTreeMap<(&'static str, Vec<u8>), Vec<u8>> {
        let keep = |map: &str, v: &[u8]| {
            if !map.starts_with("lb_ct") {
                return vec![];
            }
            let mut v = v.to_vec();
            v[ct_value::CREATED..ct_value::CREATED + 8].fill(0);
            v
        };
        let mut out = BTreeMap::new();
        for map in ["lb_ct", "lb_ct4", "ct4", "ct6"] {
            let m = self.sim.maps.get(map).expect("planned");
            for k in m.keys() {
                let v = m.lookup(&k).expect("listed");
                out.insert((map, k.clone()), keep(map, v));
            }
        }
        if let Some(k) = &self.kernel {
            let mut kout = BTreeMap::new();
            for map in ["lb_ct", "lb_ct4", "ct4", "ct6"] {
                for key in k.maps[map].keys() {
                    let key = key.unwrap_or_else(|e| panic!("{e}"));
                    let v = k.maps[map].lookup(&key).unwrap_or_else(|e| panic!("{e}")).expect("listed");
                    kout.insert((map, key), keep(map, &v));
                }
            }
            assert_eq!(kout, out, "lb_ct/lb_ct4/ct4/ct6 differ between kernel and simulator");
        }
        out
    }
}

/// [`Arrival::Itself`] through `BPF_PROG_TEST_RUN`.
fn kernel_from_itself(k: &Loaded, case: &Case) -> Observation {
    let prog = &k.programs[case.program];
    let before = kernel_counters(k);
    let ctx = skb_from_itself();
    let mut opts = TestRunOpts::packet(&case.packet);
    opts.ctx_in = Some(&ctx);
    let r = prog.test_run(&opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let after = kernel_counters(k);
    Observation { verdict: r.retval, packet: r.data_out, counters: deltas(&before, &after) }
}

fn ok() -> u32 {
    policy::TC_ACT_OK as u32
}

// ---- tests ----

/// (client, VIP, backend, IP protocol, (VIP port, backend port)).
type Flow = (IpAddr, IpAddr, IpAddr, u8, (u16, u16));

/// A connection to a VIP, for each family and protocol: the client's first packet is
/// translated and judged by the backend's identity and port; the second follows `lb_ct`;
/// the backend's reply leaves the backend untranslated and reaches the client from the VIP.
#[test]
fn connections_to_a_vip_are_translated_and_judged_by_the_backend() {
    let mut rig = Rig::new("connections_to_a_vip_are_translated_and_judged_by_the_backend");
    let flows: [Flow; 3] = [
        (A4.into(), VIP4.into(), B4.into(), 6, (80, 8080)),
        (A4.into(), VIP4.into(), B4.into(), 17, (53, 5353)),
        (A6.into(), VIP6.into(), B6.into(), 6, (80, 8080)),
    ];
    for (client, vip, backend, proto, (port, be_port)) in flows {
        let sport = 40_000;
        let pkt = |src, dst, ports: (u16, u16), flags| match (proto, src, dst) {
            (17, IpAddr::V4(s), IpAddr::V4(d)) => udp(s, d, ports.0, ports.1),
            _ => tcp(src, dst, ports, flags, 1000, if flags & ACK != 0 { 77 } else { 0 }),
        };
        let (first, second, reply_flags) = if proto == 6 { (SYN, ACK, SYN_ACK) } else { (0, 0, 0) };
        rig.step(Step {
            what: "client → VIP: new, translated, allowed for the backend's port",
            program: "from_ep_1",
            packet: pkt(client, vip, (sport, port), first),
            verdict: ok(),
            ep: Some((1, Reason::AllowNew)),
            lb: Some(LbReason::NewConnection),
            output: Output::Bytes(pkt(client, backend, (sport, be_port), first)),
        });
        rig.step(Step {
            what: "client → VIP: second packet follows lb_ct and conntrack",
            program: "from_ep_1",
            packet: pkt(client, vip, (sport, port), second),
            verdict: ok(),
            ep: Some((1, Reason::AllowEstablished)),
            lb: Some(LbReason::Established),
            output: Output::Bytes(pkt(client, backend, (sport, be_port), second)),
        });
        let reply = pkt(backend, client, (be_port, sport), reply_flags);
        rig.step(Step {
            what: "backend's reply leaving the backend: not reverse-translated",
            program: "from_ep_2",
            packet: reply.clone(),
            verdict: ok(),
            ep: Some((2, Reason::AllowUnenforced)),
            lb: Some(LbReason::PassNoService),
            output: Output::Unchanged,
        });
        rig.step(Step {
            what: "backend's reply into the client: a conntrack reply, source back to the VIP",
            program: "to_ep_1",
            packet: reply,
            verdict: ok(),
            ep: Some((1, Reason::AllowEstablished)),
            lb: Some(LbReason::RevNat),
            output: Output::Bytes(pkt(vip, client, (port, sport), reply_flags)),
        });
        let state = rig.state();
        for (key, what) in [
            (ct_entry_key(client, vip, sport, port, proto, ct_key::FORWARD), "forward"),
            (ct_entry_key(backend, client, be_port, sport, proto, ct_key::REPLY), "reply"),
        ] {
            assert!(state.contains_key(&key), "{client} → {vip} proto {proto}: no {what} lb_ct entry");
        }
    }
}

/// Egress policy applies to the backend: A may reach b's ports, not c, whatever the VIP.
#[test]
fn policy_judges_the_backend_not_the_vip() {
    let mut rig = Rig::new("policy_judges_the_backend_not_the_vip");
    rig.step(Step {
        what: "VIP served by c, whom a's egress policy does not allow: translated, then denied",
        program: "from_ep_1",
        packet: tcp(A4.into(), VIP_C.into(), (40_001, 80), SYN, 1, 0),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: Some((1, Reason::DenyDefault)),
        lb: Some(LbReason::NewConnection),
        output: Output::Bytes(tcp(A4.into(), C4.into(), (40_001, 8080), SYN, 1, 0)),
    });
    rig.step(Step {
        what: "b directly on the backend port: not a service, allowed, untouched",
        program: "from_ep_1",
        packet: tcp(A4.into(), B4.into(), (40_002, 8080), SYN, 1, 0),
        verdict: ok(),
        ep: Some((1, Reason::AllowNew)),
        lb: Some(LbReason::PassNoService),
        output: Output::Unchanged,
    });
    rig.step(Step {
        what: "b directly on the VIP's port: not allowed (the policy names 8080)",
        program: "from_ep_1",
        packet: tcp(A4.into(), B4.into(), (40_003, 80), SYN, 1, 0),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: Some((1, Reason::DenyDefault)),
        lb: Some(LbReason::PassNoService),
        output: Output::Unchanged,
    });
    rig.step(Step {
        what: "ICMP to the VIP: no load balancing (and no rule)",
        program: "from_ep_1",
        packet: PacketBuilder::ethernet(MAC_EP, MAC_GW).ipv4(A4, VIP4).icmpv4_echo(1, 1).build(),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: Some((1, Reason::DenyDefault)),
        lb: None,
        output: Output::Unchanged,
    });
    rig.step(Step {
        what: "spoofed source to the VIP: dropped before the load balancer",
        program: "from_ep_1",
        packet: tcp(C4.into(), VIP4.into(), (40_004, 80), SYN, 1, 0),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: Some((1, Reason::DenySpoofed)),
        lb: None,
        output: Output::Unchanged,
    });
    let state = rig.state();
    let spoofed = ct_entry_key(C4.into(), VIP4.into(), 40_004, 80, 6, ct_key::FORWARD);
    assert!(!state.contains_key(&spoofed), "a spoofed packet left an lb_ct entry");
    let to_c = ct_entry_key(A4.into(), VIP_C.into(), 40_001, 80, 6, ct_key::FORWARD);
    assert!(state.contains_key(&to_c), "the denied connection was still balanced");
}

/// No usable backend: a TCP packet becomes a reset delivered into the client's side of the
/// veth (`bpf_redirect_peer`), UDP is dropped; both counted in `lb_stats` only.
#[test]
fn no_backend_resets_into_the_peer_or_drops() {
    let mut rig = Rig::new("no_backend_resets_into_the_peer_or_drops");
    let syn = tcp(A4.into(), EMPTY.into(), (40_000, 80), SYN, 1000, 0);
    let rst = tcp_macs(
        EMPTY.into(),
        A4.into(),
        (80, 40_000),
        0x14,
        0,
        1000 + PAYLOAD.len() as u32 + 1,
        (MAC_GW, MAC_EP),
    );
    rig.step(Step {
        what: "TCP SYN to a VIP without backends: RST|ACK",
        program: "from_ep_1",
        packet: syn.clone(),
        verdict: LbReason::NoBackendReset.verdict() as u32,
        ep: None,
        lb: Some(LbReason::NoBackendReset),
        output: Output::Bytes(rst),
    });
    rig.step(Step {
        what: "UDP to a VIP without backends: dropped",
        program: "from_ep_1",
        packet: udp(A4, EMPTY, 40_000, 53),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: None,
        lb: Some(LbReason::NoBackend),
        output: Output::Unchanged,
    });
    let out = rig.sim.run("from_ep_1", &syn).expect("runs");
    assert!(out.redirect_peer, "the reset goes to the peer");
    assert_eq!(out.redirect, Some((1, 0)), "redirect_peer(skb->ifindex, 0)");
}

/// Hairpin: a's service has a alone as its backend. a's packet to the VIP comes back to a
/// from the hairpin address (never from its own address, a martian to its stack), a's
/// answer to the hairpin address comes back from the VIP; `from-endpoint` passes both
/// without conntrack or egress policy, `to-endpoint` passes what a sent itself without
/// ingress policy (a has ingress enforced and no rule) or reverse NAT. The same packets
/// not sent by a meet a's ingress policy; a packet to the hairpin address without an
/// `lb_ct` entry is judged as any other.
#[test]
fn an_endpoint_reaches_itself_through_its_service() {
    let mut rig = Rig::new("an_endpoint_reaches_itself_through_its_service");
    let flows: [(IpAddr, IpAddr, u8, (u16, u16)); 3] = [
        (A4.into(), VIP_HP4.into(), 6, (80, 8080)),
        (A4.into(), VIP_HP4.into(), 17, (53, 5353)),
        (A6.into(), VIP_HP6.into(), 6, (80, 8080)),
    ];
    for (a, vip, proto, (port, be_port)) in flows {
        let hairpin: IpAddr = match a {
            IpAddr::V4(_) => lbgen::HAIRPIN_V4.into(),
            IpAddr::V6(_) => lbgen::HAIRPIN_V6.into(),
        };
        let sport = 40_100;
        let pkt = |src, dst, ports: (u16, u16), flags| match (proto, src, dst) {
            (17, IpAddr::V4(s), IpAddr::V4(d)) => udp(s, d, ports.0, ports.1),
            _ => tcp(src, dst, ports, flags, 1000, if flags & ACK != 0 { 77 } else { 0 }),
        };
        let (first, second, reply_flags) = if proto == 6 { (SYN, ACK, SYN_ACK) } else { (0, 0, 0) };
        let arriving = pkt(hairpin, a, (sport, be_port), first);
        rig.step(Step {
            what: "a → its VIP: DNAT to a itself, source to the hairpin address, no egress policy",
            program: "from_ep_1",
            packet: pkt(a, vip, (sport, port), first),
            verdict: ok(),
            ep: Some((1, Reason::AllowHairpin)),
            lb: Some(LbReason::NewConnection),
            output: Output::Bytes(arriving.clone()),
        });
        rig.step_from(
            Step {
                what: "the hairpinned packet into a, sent by a itself: passed, no ingress policy",
                program: "to_ep_1",
                packet: arriving.clone(),
                verdict: ok(),
                ep: Some((1, Reason::AllowHairpin)),
                lb: None,
                output: Output::Unchanged,
            },
            Arrival::Itself,
        );
        rig.step(Step {
            what: "the same packet not sent by a: a's ingress policy (no rule) denies it",
            program: "to_ep_1",
            packet: arriving,
            verdict: policy::TC_ACT_SHOT as u32,
            ep: Some((1, Reason::DenyDefault)),
            lb: None,
            output: Output::Unchanged,
        });
        let restored = pkt(vip, a, (port, sport), reply_flags);
        rig.step(Step {
            what: "a's answer to the hairpin address: from the VIP to a again, no egress policy",
            program: "from_ep_1",
            packet: pkt(a, hairpin, (be_port, sport), reply_flags),
            verdict: ok(),
            ep: Some((1, Reason::AllowHairpin)),
            lb: Some(LbReason::RevNat),
            output: Output::Bytes(restored.clone()),
        });
        rig.step_from(
            Step {
                what: "the answer into a, sent by a itself: passed, not reverse-translated again",
                program: "to_ep_1",
                packet: restored,
                verdict: ok(),
                ep: Some((1, Reason::AllowHairpin)),
                lb: None,
                output: Output::Unchanged,
            },
            Arrival::Itself,
        );
        rig.step(Step {
            what: "a → its VIP, second packet: follows lb_ct, hairpinned again",
            program: "from_ep_1",
            packet: pkt(a, vip, (sport, port), second),
            verdict: ok(),
            ep: Some((1, Reason::AllowHairpin)),
            lb: Some(LbReason::Established),
            output: Output::Bytes(pkt(hairpin, a, (sport, be_port), second)),
        });
        let state = rig.state();
        for (key, what) in [
            (ct_entry_key(a, vip, sport, port, proto, ct_key::FORWARD), "forward"),
            (
                ct_entry_key(a, hairpin, be_port, sport, proto, ct_key::REPLY),
                "reply (to the hairpin address)",
            ),
        ] {
            assert!(state.contains_key(&key), "{a} → {vip} proto {proto}: no {what} lb_ct entry");
        }
        assert!(
            !state.keys().any(|(map, _)| *map == "ct4" || *map == "ct6"),
            "hairpinned packets left conntrack entries: {state:?}"
        );
    }
    rig.step(Step {
        what: "to the hairpin address without an lb_ct entry: untranslated, a's egress policy denies",
        program: "from_ep_1",
        packet: tcp(A4.into(), lbgen::HAIRPIN_V4.into(), (8080, 40_999), ACK, 1, 1),
        verdict: policy::TC_ACT_SHOT as u32,
        ep: Some((1, Reason::DenyDefault)),
        lb: Some(LbReason::PassNoService),
        output: Output::Unchanged,
    });
}

/// Without `services` the programs are the ones of before (snapshot of both directions),
/// and with it they differ; templates instantiate to the generated programs either way.
#[test]
fn services_off_is_the_program_of_before() {
    for options in [Options::default(), SERVICES] {
        let t = Templates::new(options).expect("generates");
        for ep in [1u16, 2, 300, 4095] {
            for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
                let want = endpoint::generate_with(ep, dir, options).expect("generates");
                assert_eq!(t.instantiate(ep, dir), want, "ep {ep} {dir:?} {options:?}");
            }
        }
    }
    for dir in [Direction::FromEndpoint, Direction::ToEndpoint] {
        let off = endpoint::generate_with(1, dir, Options::default()).expect("generates");
        let on = endpoint::generate_with(1, dir, SERVICES).expect("generates");
        assert_ne!(off, on, "{dir:?}");
    }
    let listing = |dir| {
        sluice_asm::text::listing(&endpoint::generate_with(1, dir, Options::default()).expect("generates"))
    };
    let both = format!(
        "; from-endpoint\n{}\n; to-endpoint\n{}",
        listing(Direction::FromEndpoint),
        listing(Direction::ToEndpoint)
    );
    insta::with_settings!({snapshot_path => "../golden/snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("endpoint_listing", both);
    });
}
