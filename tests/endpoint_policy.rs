//! Endpoint policy programs, stateful: conntrack sequences, deny precedence, port ranges,
//! anti-spoofing, fragments, ICMP errors. Every step runs in the simulator and, as root,
//! through BPF_PROG_TEST_RUN on the same maps' twins; verdicts, reasons and conntrack
//! states must agree with the expectation in both.

use sluice::codegen::endpoint::Options;
use sluice::maps::policy::{ct4_key, ct_value, CtState, PolicyRule, Reason, EGRESS, INGRESS};
use sluice::node::endpoints::{endpoint_objects, shared_endpoint_objects, EndpointSpec, PolicyPlan};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::Plan;
use sluice::packet::ExtHeader;
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys::TestRunOpts;
use std::net::{Ipv4Addr, Ipv6Addr};

const EP1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const EP2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 6);
const WORLD_DNS: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
const EP1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
const EP2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 6);
const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn rule(ep: u16, dir: u8, identity: u32, proto: u8, port: u16, port_prefix: u8, deny: bool) -> PolicyRule {
    PolicyRule { ep, dir, identity, proto, port, port_prefix, deny, proxy_port: 0 }
}

fn scenario() -> PolicyPlan {
    PolicyPlan {
        endpoints: vec![
            EndpointSpec {
                index: 1,
                name: "client".into(),
                ipv4: Some(EP1),
                ipv6: Some(EP1_6),
                identity: 1001,
                ingress_enforced: true,
                egress_enforced: true,
            },
            EndpointSpec {
                index: 2,
                name: "server".into(),
                ipv4: Some(EP2),
                ipv6: Some(EP2_6),
                identity: 1002,
                ingress_enforced: true,
                egress_enforced: false,
            },
        ],
        ipcache_v4: vec![
            (u32::from(EP1), 32, 1001),
            (u32::from(EP2), 32, 1002),
            (0xc000_0200, 24, 16_777_217),
        ],
        ipcache_v6: vec![(u128::from(EP1_6), 128, 1001), (u128::from(EP2_6), 128, 1002)],
        rules: vec![
            // client egress: to the server on any TCP port, to the world on 53/udp.
            rule(1, EGRESS, 1002, 6, 0, 0, false),
            rule(1, EGRESS, 2, 17, 53, 16, false),
            // server ingress: from the client on 80/tcp and 20-23/tcp, but never 22/tcp.
            rule(2, INGRESS, 1001, 6, 80, 16, false),
            rule(2, INGRESS, 1001, 6, 20, 14, false),
            rule(2, INGRESS, 0, 6, 22, 16, true),
            // server ingress: ICMP echo requests from anyone.
            rule(2, INGRESS, 0, 1, 8, 16, false),
            rule(2, INGRESS, 0, 58, 128, 16, false),
        ],
    }
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: TcpFlags) -> Vec<u8> {
    PacketBuilder::ethernet(MAC1, MAC2).ipv4(src, dst).tcp(sport, dport, flags, 1, 0).build()
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    PacketBuilder::ethernet(MAC1, MAC2).ipv4(src, dst).udp(sport, dport).payload(b"q").build()
}

fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: TcpFlags) -> Vec<u8> {
    PacketBuilder::ethernet(MAC1, MAC2).ipv6(src, dst).tcp(sport, dport, flags, 1, 0).build()
}

fn v6_steps() -> Vec<Step> {
    let syn = TcpFlags::SYN;
    let synack = TcpFlags::SYN | TcpFlags::ACK;
    let frag = |offset: u16, more: bool, id: u32| {
        let b = PacketBuilder::ethernet(MAC1, MAC2).ipv6(EP1_6, EP2_6).ipv6_ext(ExtHeader::Fragment {
            offset,
            more,
            id,
        });
        if offset == 0 {
            b.tcp(41003, 80, syn, 1, 0).build()
        } else {
            b.raw_l4(6, &[0u8; 8]).build()
        }
    };
    let world: Ipv6Addr = "2001:db8::1".parse().expect("literal");
    let link_local: Ipv6Addr = "fe80::1".parse().expect("literal");
    let solicited: Ipv6Addr = "ff02::1:ff00:6".parse().expect("literal");
    vec![
        step("v6 client SYN out", "from_ep_1", tcp6(EP1_6, 41000, EP2_6, 80, syn), Reason::AllowNew),
        step("v6 server gets the SYN", "to_ep_2", tcp6(EP1_6, 41000, EP2_6, 80, syn), Reason::AllowNew),
        step(
            "v6 server SYN-ACK (a reply)",
            "from_ep_2",
            tcp6(EP2_6, 80, EP1_6, 41000, synack),
            Reason::AllowEstablished,
        ),
        step(
            "v6 client gets the SYN-ACK",
            "to_ep_1",
            tcp6(EP2_6, 80, EP1_6, 41000, synack),
            Reason::AllowEstablished,
        ),
        step("v6 SYN to 22/tcp: denied", "to_ep_2", tcp6(EP1_6, 41001, EP2_6, 22, syn), Reason::DenyPolicy),
        step(
            "v6 spoofed source",
            "from_ep_1",
            tcp6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 99), 1, EP2_6, 80, syn),
            Reason::DenySpoofed,
        ),
        step(
            "v6 SYN behind a hop-by-hop header",
            "to_ep_2",
            PacketBuilder::ethernet(MAC1, MAC2)
                .ipv6(EP1_6, EP2_6)
                .ipv6_ext(ExtHeader::HopByHop(vec![]))
                .tcp(41002, 80, syn, 1, 0)
                .build(),
            Reason::AllowNew,
        ),
        step(
            "v6 echo request from the world",
            "to_ep_2",
            PacketBuilder::ethernet(MAC1, MAC2).ipv6(world, EP2_6).icmpv6_echo(9, 1).build(),
            Reason::AllowNew,
        ),
        step(
            "v6 neighbor solicitation from a link-local address",
            "from_ep_1",
            PacketBuilder::ethernet(MAC1, MAC2)
                .ipv6(link_local, solicited)
                .icmpv6(135, 0, 0)
                .payload(&[0u8; 16])
                .build(),
            Reason::AllowNotIp,
        ),
        step("v6 first fragment of an allowed connection", "to_ep_2", frag(0, true, 4242), Reason::AllowNew),
        step("v6 its later fragment", "to_ep_2", frag(3, false, 4242), Reason::AllowFragment),
        step("v6 a later fragment of nothing seen", "to_ep_2", frag(3, false, 4243), Reason::DenyFragment),
        step(
            "v6 three extension headers: more than sluice parses",
            "to_ep_2",
            PacketBuilder::ethernet(MAC1, MAC2)
                .ipv6(EP1_6, EP2_6)
                .ipv6_ext(ExtHeader::HopByHop(vec![]))
                .ipv6_ext(ExtHeader::DestOpts(vec![]))
                .ipv6_ext(ExtHeader::DestOpts(vec![]))
                .tcp(41004, 80, syn, 1, 0)
                .build(),
            Reason::DenyMalformed,
        ),
    ]
}

fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, dir: u8) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[ct4_key::SADDR..ct4_key::SADDR + 4].copy_from_slice(&src.octets());
    k[ct4_key::DADDR..ct4_key::DADDR + 4].copy_from_slice(&dst.octets());
    k[ct4_key::SPORT..ct4_key::SPORT + 2].copy_from_slice(&sport.to_be_bytes());
    k[ct4_key::DPORT..ct4_key::DPORT + 2].copy_from_slice(&dport.to_be_bytes());
    k[ct4_key::PROTO] = proto;
    k[ct4_key::DIR] = dir;
    k
}

struct Step {
    what: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    reason: Reason,
    /// A conntrack entry that must exist afterwards, with this state.
    ct: Option<([u8; 16], CtState)>,
}

fn step(what: &'static str, program: &'static str, packet: Vec<u8>, reason: Reason) -> Step {
    Step { what, program, packet, reason, ct: None }
}

fn steps() -> Vec<Step> {
    let syn = TcpFlags::SYN;
    let synack = TcpFlags::SYN | TcpFlags::ACK;
    let fin = TcpFlags::FIN | TcpFlags::ACK;
    let fwd = ct_key(EP1, 40000, EP2, 80, 6, EGRESS);
    let fwd_in = ct_key(EP1, 40000, EP2, 80, 6, INGRESS);
    let first_fragment = PacketBuilder::ethernet(MAC1, MAC2)
        .ipv4(EP1, WORLD_DNS)
        .ident(77)
        .ipv4_fragment(0, true)
        .udp(5454, 53)
        .payload(&[0u8; 32])
        .build();
    let later = |id: u16| {
        PacketBuilder::ethernet(MAC1, MAC2)
            .ipv4(EP1, WORLD_DNS)
            .ident(id)
            .ipv4_fragment(5, false)
            .raw_l4(17, &[0u8; 16])
            .build()
    };
    // An ICMP port unreachable from the world, quoting the client's DNS query.
    let quoted = udp(EP1, 5353, WORLD_DNS, 53)[14..14 + 28].to_vec();
    let icmp_error =
        PacketBuilder::ethernet(MAC2, MAC1).ipv4(WORLD_DNS, EP1).icmpv4(3, 3, 0).payload(&quoted).build();
    vec![
        Step {
            ct: Some((fwd, CtState::SynSent)),
            ..step("client SYN out", "from_ep_1", tcp(EP1, 40000, EP2, 80, syn), Reason::AllowNew)
        },
        Step {
            ct: Some((fwd_in, CtState::SynSent)),
            ..step("server gets the SYN", "to_ep_2", tcp(EP1, 40000, EP2, 80, syn), Reason::AllowNew)
        },
        Step {
            ct: Some((fwd_in, CtState::Established)),
            ..step(
                "server SYN-ACK out (a reply)",
                "from_ep_2",
                tcp(EP2, 80, EP1, 40000, synack),
                Reason::AllowEstablished,
            )
        },
        Step {
            ct: Some((fwd, CtState::Established)),
            ..step(
                "client gets the SYN-ACK (a reply)",
                "to_ep_1",
                tcp(EP2, 80, EP1, 40000, synack),
                Reason::AllowEstablished,
            )
        },
        step("client ACK", "from_ep_1", tcp(EP1, 40000, EP2, 80, TcpFlags::ACK), Reason::AllowEstablished),
        step(
            "unsolicited SYN to 22/tcp: deny wins over the 20-23 range",
            "to_ep_2",
            tcp(EP1, 40001, EP2, 22, syn),
            Reason::DenyPolicy,
        ),
        step("SYN to 21/tcp: inside the range", "to_ep_2", tcp(EP1, 40002, EP2, 21, syn), Reason::AllowNew),
        step(
            "SYN to 24/tcp: outside the range",
            "to_ep_2",
            tcp(EP1, 40003, EP2, 24, syn),
            Reason::DenyDefault,
        ),
        step(
            "world SYN to 80/tcp: no rule",
            "to_ep_2",
            tcp(Ipv4Addr::new(198, 51, 100, 1), 1234, EP2, 80, syn),
            Reason::DenyDefault,
        ),
        step("unsolicited SYN to the client", "to_ep_1", tcp(EP2, 80, EP1, 40009, syn), Reason::DenyDefault),
        step(
            "spoofed source from the client",
            "from_ep_1",
            tcp(Ipv4Addr::new(10, 244, 0, 99), 40000, EP2, 80, syn),
            Reason::DenySpoofed,
        ),
        Step {
            ct: Some((fwd, CtState::Closing)),
            ..step("client FIN", "from_ep_1", tcp(EP1, 40000, EP2, 80, fin), Reason::AllowEstablished)
        },
        step(
            "server sends unsolicited to the client's closed port",
            "from_ep_2",
            tcp(EP2, 81, EP1, 40000, syn),
            Reason::AllowUnenforced,
        ),
        step("client DNS to the world", "from_ep_1", udp(EP1, 5353, WORLD_DNS, 53), Reason::AllowNew),
        step("client UDP to 54: no rule", "from_ep_1", udp(EP1, 5353, WORLD_DNS, 54), Reason::DenyDefault),
        step("DNS answer (a reply)", "to_ep_1", udp(WORLD_DNS, 53, EP1, 5353), Reason::AllowEstablished),
        step("ICMP error about the DNS query", "to_ep_1", icmp_error, Reason::AllowRelated),
        step(
            "ICMP echo to the server",
            "to_ep_2",
            PacketBuilder::ethernet(MAC1, MAC2)
                .ipv4(Ipv4Addr::new(198, 51, 100, 1), EP2)
                .icmpv4_echo(7, 1)
                .build(),
            Reason::AllowNew,
        ),
        step("first fragment of an allowed datagram", "from_ep_1", first_fragment, Reason::AllowNew),
        step("its later fragment", "from_ep_1", later(77), Reason::AllowFragment),
        step("a later fragment of nothing seen", "from_ep_1", later(78), Reason::DenyFragment),
        step(
            "ARP",
            "from_ep_1",
            PacketBuilder::ethernet(MAC1, MAC2).ethertype_raw(0x0806, &[0u8; 28]).build(),
            Reason::AllowNotIp,
        ),
        step(
            "truncated TCP header",
            "to_ep_2",
            tcp(EP1, 40000, EP2, 80, syn)[..14 + 20 + 10].to_vec(),
            Reason::DenyTruncated,
        ),
        step(
            "IPv4 header length under 20",
            "to_ep_2",
            {
                let mut p = tcp(EP1, 1, EP2, 80, syn);
                p[14] = 0x44;
                p
            },
            Reason::DenyMalformed,
        ),
    ]
    .into_iter()
    .chain(v6_steps())
    .collect()
}

fn plan() -> Plan {
    Plan { node: "ep-test".into(), objects: endpoint_objects(&scenario()).expect("generates") }
}

/// What a node runs: one shared program per direction, a stub per endpoint hook.
fn shared_plan() -> Plan {
    let objects = shared_endpoint_objects(&scenario(), Options::default()).expect("generates");
    Plan { node: "ep-test-shared".into(), objects }
}

/// Both forms of the endpoint programs: every sequence must give the same answers.
fn plans() -> [(&'static str, Plan); 2] {
    [("specialised", plan()), ("shared", shared_plan())]
}

fn ct_state(value: &[u8]) -> u8 {
    value[ct_value::STATE]
}

fn stats_key(program: &str, reason: Reason) -> u32 {
    let ep: u32 =
        program.rsplit('_').next().and_then(|n| n.parse().ok()).expect("program names end in the index");
    ep * Reason::COUNT + reason as u32
}

#[test]
fn conntrack_sequences_in_the_simulator() {
    let mut failures = Vec::new();
    for (form, plan) in plans() {
        let mut node = SimNode::new(&plan).expect("verifier-sim accepts every endpoint program");
        for s in steps() {
            let before = node.counter("ep_stats", stats_key(s.program, s.reason));
            let out = node.run(s.program, &s.packet).expect("runs");
            let want = if s.reason.allows() { 0 } else { 2 };
            let after = node.counter("ep_stats", stats_key(s.program, s.reason));
            if out.retval != want || after != before + 1 {
                failures.push(format!(
                    "{form}, {}: verdict {} (want {want}), {} counted {}",
                    s.what,
                    out.retval,
                    s.reason.name(),
                    after - before
                ));
            }
            if let Some((key, state)) = s.ct {
                let got = node.maps.get("ct4").and_then(|m| m.lookup(&key)).map(ct_state);
                if got != Some(state as u8) {
                    failures.push(format!("{form}, {}: conntrack state {got:?}, want {state:?}", s.what));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn kernel_counter(loaded: &Loaded, index: u32) -> u64 {
    loaded.maps["ep_stats"]
        .lookup_percpu(&index.to_le_bytes())
        .expect("lookup")
        .unwrap_or_default()
        .iter()
        .map(|v| u64::from_le_bytes(v[..8].try_into().expect("8 bytes")))
        .sum()
}

#[test]
fn conntrack_sequences_in_the_kernel() {
    if !sluice::sys::require_kernel("conntrack_sequences_in_the_kernel") {
        return;
    }
    let mut failures = Vec::new();
    for (form, plan) in plans() {
        let loaded = load_plan(&sluice::sys::kernel(), &plan)
            .expect("the kernel verifier accepts every endpoint program");
        let mut node = SimNode::new(&plan).expect("verifies");
        for s in steps() {
            let key = stats_key(s.program, s.reason);
            let before = kernel_counter(&loaded, key);
            let r = loaded.programs[s.program].test_run(&TestRunOpts::packet(&s.packet)).expect("test run");
            let after = kernel_counter(&loaded, key);
            let sim = node.run(s.program, &s.packet).expect("runs");
            let want = if s.reason.allows() { 0 } else { 2 };
            if r.retval != want || after != before + 1 {
                failures.push(format!(
                    "{form}, {}: kernel verdict {} (want {want}), {} counted {}",
                    s.what,
                    r.retval,
                    s.reason.name(),
                    after - before
                ));
            }
            if u64::from(r.retval) != sim.retval || r.data_out != sim.packet {
                failures.push(format!("{form}, {}: kernel and simulator differ", s.what));
            }
            if let Some((ct, state)) = s.ct {
                let got = loaded.maps["ct4"].lookup(&ct).expect("lookup").map(|v| ct_state(&v));
                if got != Some(state as u8) {
                    failures
                        .push(format!("{form}, {}: kernel conntrack state {got:?}, want {state:?}", s.what));
                }
            }
        }
        for p in loaded.programs.values() {
            eprintln!("{form}: {}: {} instructions verified", p.name(), p.verified_insns());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A stub whose shared program is missing from `ep_tail` (a node part-loaded) drops: the
/// endpoint's enforcement fails closed, in the simulator and the kernel.
#[test]
fn a_stub_without_its_shared_program_drops() {
    let mut plan = shared_plan();
    // Keep the maps and writes, lose the shared programs: `tail_slots` finds none to fill.
    for o in plan.objects.iter_mut().filter(|o| o.name.ends_with("_shared")) {
        o.name = format!("{}_gone", o.name);
    }
    let packet = steps().into_iter().find(|s| s.reason.allows()).expect("an allowed step").packet;
    let mut node = SimNode::new(&plan).expect("verifies");
    let sim = node.run("to_ep_2", &packet).expect("runs");
    assert_eq!(sim.retval, 2, "simulator: TC_ACT_SHOT from the stub");
    if !sluice::sys::require_kernel("a_stub_without_its_shared_program_drops") {
        return;
    }
    let loaded = load_plan(&sluice::sys::kernel(), &plan).expect("loads");
    let r = loaded.programs["to_ep_2"].test_run(&TestRunOpts::packet(&packet)).expect("test run");
    assert_eq!(r.retval, 2, "kernel: TC_ACT_SHOT from the stub");
}

/// An identity with more rules than a `pol_table` slot holds inline: the slot says
/// "overflow" and the policy trie decides, with the same answers.
#[test]
fn rules_that_overflow_a_slot_are_judged_by_the_trie() {
    let mut plan_in = scenario();
    for port in 100..110 {
        plan_in.rules.push(rule(2, INGRESS, 1001, 6, port, 16, false));
    }
    plan_in.rules.push(rule(2, INGRESS, 1001, 6, 104, 16, true));
    let table = sluice::maps::policy::policy_table(&plan_in.rules);
    assert_eq!(table.get(&(2, INGRESS, 1001)), Some(&None), "the slot overflows");
    let plan = Plan { node: "overflow".into(), objects: endpoint_objects(&plan_in).expect("generates") };
    let cases = [
        (105u16, Reason::AllowNew),
        (104, Reason::DenyPolicy),
        (110, Reason::DenyDefault),
        (22, Reason::DenyPolicy),
        (80, Reason::AllowNew),
    ];
    let mut node = SimNode::new(&plan).expect("verifies");
    let loaded = sluice::sys::require_kernel("rules_that_overflow_a_slot_are_judged_by_the_trie")
        .then(|| load_plan(&sluice::sys::kernel(), &plan).expect("loads"));
    for (i, (port, reason)) in cases.into_iter().enumerate() {
        let pkt = tcp(EP1, 45000 + i as u16, EP2, port, TcpFlags::SYN);
        let want = if reason.allows() { 0 } else { 2 };
        assert_eq!(node.run("to_ep_2", &pkt).expect("runs").retval, want, "simulator, port {port}");
        if let Some(loaded) = &loaded {
            let r = loaded.programs["to_ep_2"].test_run(&TestRunOpts::packet(&pkt)).expect("test run");
            assert_eq!(r.retval, want as u32, "kernel, port {port}");
        }
    }
}
