//! The compiled endpoint-policy programs agree with the reference evaluator (the oracle,
//! `sluice::policy::oracle::decide`) on every flow: for the demo fixture exhaustively over
//! a grid of peers, protocols and ports, and for random policies (seeded; more with
//! `SLUICE_POLICY_DATAPATH_CASES`), in the simulator and, as root, in the kernel.
//!
//! Every flow uses a fresh source port (or ICMP id), so conntrack never turns one flow into
//! the reply of another: each packet is a new connection, judged by policy alone. Then its
//! reply goes through the endpoint's other program: the reply of an allowed connection must
//! pass whatever that direction's policy says, and the reply of a denied one is judged as a
//! new connection (a random sequence of requests and replies for conntrack).

use sluice::golden::probes::{flow_frame, policy_flows, reply_frame, PolicyProbe as Probe};
use sluice::maps::policy::TC_ACT_OK;
use sluice::model::{self, Direction, NodeConfig};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{plan, Plan};
use sluice::policy::{oracle, FlowKey, Verdict};
use sluice::sys::TestRunOpts;
use std::net::IpAddr;

fn frame(k: &FlowKey) -> Vec<u8> {
    flow_frame(k)
}

fn probes(cfg: &NodeConfig, extra_peers: &[IpAddr], ports: &[u16], sport: &mut u16) -> Vec<Probe> {
    policy_flows(cfg, extra_peers, ports, sport)
}

fn expected(cfg: &NodeConfig, p: &Probe) -> u32 {
    match oracle::decide(cfg, &p.endpoint, p.direction, &p.key).expect("the oracle decides") {
        Verdict::Allow => TC_ACT_OK as u32,
        _ => 2,
    }
}

/// The reply to a flow: addresses and ports swapped; an ICMP echo request answered by an
/// echo reply with the same id.
fn reply(k: &FlowKey) -> FlowKey {
    let (sport, dport) = match k.proto {
        1 => (k.sport, 0),
        58 => (k.sport, 129),
        _ => (k.dport, k.sport),
    };
    FlowKey { src: k.dst, dst: k.src, proto: k.proto, sport, dport }
}

fn opposite(p: &Probe) -> (Direction, String) {
    match p.direction {
        Direction::Ingress => (Direction::Egress, p.program.replace("to_ep_", "from_ep_")),
        Direction::Egress => (Direction::Ingress, p.program.replace("from_ep_", "to_ep_")),
    }
}

/// What the reply to a flow must get: an allowed connection's reply passes (conntrack);
/// a denied one's reply is a new connection of its own, judged by policy.
fn expected_reply(cfg: &NodeConfig, p: &Probe, forward: u32) -> u32 {
    if forward == TC_ACT_OK as u32 {
        return TC_ACT_OK as u32;
    }
    let (direction, _) = opposite(p);
    match oracle::decide(cfg, &p.endpoint, direction, &reply(&p.key)).expect("decides") {
        Verdict::Allow => TC_ACT_OK as u32,
        _ => 2,
    }
}

/// Runs each flow and then its reply through a judge; returns the disagreements.
fn check(
    cfg: &NodeConfig,
    probes: &[Probe],
    what: &str,
    engine: &str,
    with_replies: bool,
    mut judge: impl FnMut(&str, &[u8]) -> u32,
) -> Vec<String> {
    let mut bad = Vec::new();
    for p in probes {
        let got = judge(&p.program, &frame(&p.key));
        let want = expected(cfg, p);
        if got != want {
            bad.push(format!(
                "{what}: {} {:?} {:?}: {engine} {got}, oracle {want}",
                p.endpoint, p.direction, p.key
            ));
        }
        if with_replies && p.key.proto != 132 {
            let (direction, program) = opposite(p);
            let r = reply(&p.key);
            let got = judge(&program, &reply_frame(&r));
            let want = expected_reply(cfg, p, want);
            if got != want {
                bad.push(format!(
                    "{what}: reply {} {direction:?} {r:?}: {engine} {got}, expected {want}",
                    p.endpoint
                ));
            }
        }
    }
    bad
}

fn check_sim(cfg: &NodeConfig, plan: &Plan, probes: &[Probe], what: &str) -> Vec<String> {
    let mut node = SimNode::new(plan).expect("verifier-sim accepts the endpoint programs");
    check(cfg, probes, what, "simulator", true, |prog, frame| {
        node.run(prog, frame).expect("runs").retval as u32
    })
}

fn check_kernel(cfg: &NodeConfig, loaded: &Loaded, probes: &[Probe], what: &str) -> Vec<String> {
    check(cfg, probes, what, "kernel", true, |prog, frame| {
        loaded.programs[prog].test_run(&TestRunOpts::packet(frame)).expect("test run").retval
    })
}

fn demo() -> (NodeConfig, Vec<Probe>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/policy/demo.yaml");
    let cfg = model::load_file(std::path::Path::new(path)).expect("the demo fixture parses");
    let world: Vec<IpAddr> = ["203.0.113.9", "10.0.1.99", "2001:db8::9", "fd00:0:1::99"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .collect();
    let mut sport = 10_000;
    let probes = probes(&cfg, &world, &[22, 53, 80, 443, 5432, 8079, 8080, 8085, 8089, 8090], &mut sport);
    (cfg, probes)
}

#[test]
fn demo_fixture_agrees_with_the_oracle_in_the_simulator() {
    let (cfg, probes) = demo();
    let plan = plan(&cfg).expect("plans");
    let allowed = probes.iter().filter(|p| expected(&cfg, p) == TC_ACT_OK as u32).count();
    eprintln!("demo: {} flows, {allowed} allowed", probes.len());
    assert!(allowed > 0 && allowed < probes.len(), "both verdicts occur");
    let bad = check_sim(&cfg, &plan, &probes, "demo");
    assert!(bad.is_empty(), "{} of {} flows differ:\n{}", bad.len(), probes.len(), bad.join("\n"));
}

#[test]
fn demo_fixture_agrees_with_the_oracle_in_the_kernel() {
    if !sluice::sys::require_kernel("demo_fixture_agrees_with_the_oracle_in_the_kernel") {
        return;
    }
    let (cfg, probes) = demo();
    let plan = plan(&cfg).expect("plans");
    let loaded = load_plan(&sluice::sys::kernel(), &plan).expect("the kernel accepts the endpoint programs");
    let bad = check_kernel(&cfg, &loaded, &probes, "demo");
    assert!(bad.is_empty(), "{} of {} flows differ:\n{}", bad.len(), probes.len(), bad.join("\n"));
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const APPS: [&str; 4] = ["web", "api", "db", "cache"];
const PORTS: [u16; 6] = [22, 53, 80, 443, 5432, 8080];

fn random_peer(r: &mut Lcg) -> String {
    match r.below(6) {
        0 => format!("fromEndpoints: [{{matchLabels: {{app: {}}}}}]", r.pick(&APPS)),
        1 => format!(
            "fromEndpoints: [{{matchExpressions: [{{key: app, operator: {}, values: [{}]}}]}}]",
            r.pick(&["In", "NotIn"]),
            r.pick(&APPS)
        ),
        2 => "fromCIDR: [\"203.0.113.0/24\"]".to_string(),
        3 => "fromCIDRSet: [{cidr: \"10.9.0.0/16\", except: [\"10.9.1.0/24\"]}]".to_string(),
        4 => format!("fromEntities: [{}]", r.pick(&["world", "all", "cluster", "host"])),
        _ => "fromEndpoints: [{}]".to_string(),
    }
}

fn random_ports(r: &mut Lcg) -> String {
    match r.below(4) {
        0 => String::new(),
        1 => format!(
            "\n      toPorts: [{{ports: [{{port: \"{}\", protocol: {}}}]}}]",
            r.pick(&PORTS),
            r.pick(&["TCP", "UDP", "ANY"])
        ),
        2 => {
            let p = *r.pick(&PORTS);
            format!(
                "\n      toPorts: [{{ports: [{{port: \"{p}\", endPort: {}, protocol: TCP}}]}}]",
                p + r.below(50) as u16
            )
        }
        _ => "\n      icmps: [{fields: [{type: 8, family: IPv4}]}]".to_string(),
    }
}

/// A random node: four endpoints, a few policies with every rule kind.
fn random_config(seed: u64) -> String {
    let mut r = Lcg(seed);
    let mut y = String::from(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: random}\nspec:\n  hostAddresses: [192.168.1.5]\n  endpoints:\n",
    );
    for (i, app) in APPS.iter().enumerate() {
        y += &format!(
            "    - {{name: ep{i}, interface: lxc{i}, ipv4: 10.9.{}.{}, ipv6: \"fd00::{i:x}\", labels: {{app: {app}}}}}\n",
            i % 2,
            10 + i,
        );
    }
    for n in 0..1 + r.below(4) {
        y += &format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{n}, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {}}}}}\n",
            r.pick(&APPS)
        );
        for section in ["ingress", "egress", "ingressDeny", "egressDeny"] {
            if r.below(3) == 0 {
                continue;
            }
            y += &format!("  {section}:\n");
            for _ in 0..1 + r.below(2) {
                let mut peer = random_peer(&mut r);
                if section.starts_with("egress") {
                    peer = peer.replacen("from", "to", 1);
                }
                y += &format!("    - {peer}{}\n", random_ports(&mut r));
            }
        }
    }
    y
}

fn random_cases() -> u64 {
    std::env::var("SLUICE_POLICY_DATAPATH_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

fn random_world() -> Vec<IpAddr> {
    ["203.0.113.7", "10.9.1.50", "10.9.2.50", "198.51.100.1", "2001:db8::7"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .collect()
}

#[test]
fn random_policies_agree_with_the_oracle() {
    let kernel = sluice::sys::require_kernel("random_policies_agree_with_the_oracle");
    let mut bad = Vec::new();
    let mut flows = 0;
    let mut allowed = 0;
    let mut sport = 10_000;
    for seed in 0..random_cases() {
        let text = random_config(seed);
        let cfg = match model::parse_str(&text, &format!("random-{seed}.yaml")) {
            Ok(cfg) => cfg,
            Err(e) => panic!("generated config {seed} does not parse: {e}\n{text}"),
        };
        let plan = plan(&cfg).expect("plans");
        let probes = probes(&cfg, &random_world(), &[22, 53, 80, 443, 8080, 8081], &mut sport);
        flows += probes.len();
        allowed += probes.iter().filter(|p| expected(&cfg, p) == TC_ACT_OK as u32).count();
        bad.extend(check_sim(&cfg, &plan, &probes, &format!("seed {seed}")));
        if kernel {
            let loaded = load_plan(&sluice::sys::kernel(), &plan).expect("the kernel accepts");
            bad.extend(check_kernel(&cfg, &loaded, &probes, &format!("seed {seed}")));
        }
        if bad.len() > 20 {
            break;
        }
    }
    eprintln!("{flows} flows checked against the oracle ({allowed} allowed)");
    assert!(allowed > flows / 20 && allowed < flows - flows / 20, "both verdicts are well represented");
    assert!(bad.is_empty(), "{} flows differ:\n{}", bad.len(), bad.join("\n"));
}
