//! The entities `world`, `cluster` and `remote-node` in single-file mode, as Cilium defines
//! them, with the cluster known only from the node file's static overlay peers.
//!
//! Cilium, Documentation/security/policy/language.rst ("Entities Based"):
//! - world: "The world entity corresponds to all endpoints outside of the cluster."
//! - cluster: "Cluster is the logical group of all network endpoints inside of the local
//!   cluster. This includes all Cilium-managed endpoints of the local cluster, unmanaged
//!   endpoints in the local cluster, as well as the host, remote-node, and init identities."
//! - remote-node: "Any node in any of the connected clusters other than the local host."
//! - unmanaged: "Unmanaged endpoints are considered part of the cluster and are included in
//!   the cluster entity."
//! - CIDR rules: "CIDR rules do not apply to traffic where both sides of the connection are
//!   either managed by Cilium or use an IP belonging to a node in the cluster".
//!
//! So with overlay peer node-2 (underlay 172.16.0.2, pods in 10.0.2.0/24 and fd00:0:2::/64,
//! one declared pod `db` 10.0.2.7 with `app: db`): a pod address of node-2 is cluster and
//! never world; node-2's address is remote-node and cluster; a label selector selects the
//! declared remote pod and nothing else of node-2.
//!
//! Every flow is decided four times: by the oracle (straight from the policies), by the
//! resolved entries with the ipcache's identity, by the compiled programs in the simulator,
//! and (as root) by the same programs in the kernel. All must give the case's verdict.

use std::net::IpAddr;

use sluice::golden::probes::flow_frame;
use sluice::maps::policy::TC_ACT_SHOT;
use sluice::model::{self, Direction, NodeConfig};
use sluice::node::load::load_plan;
use sluice::node::plan;
use sluice::node::sim::SimNode;
use sluice::policy::{self, evaluate_entries, oracle, FlowKey, Identity, Verdict};
use sluice::sys::TestRunOpts;

const A: Verdict = Verdict::Allow;
const D: Verdict = Verdict::Deny;

/// One local endpoint `web` (10.0.1.5, fd00:0:1::5); node-2 behind the overlay. The host's
/// own traffic is judged by policy (`allowLocalhost: policy`), so the entity cases can say
/// the host is neither world nor remote-node.
const NODE: &str = "\
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: node-1}
spec:
  policy: {allowLocalhost: policy}
  hostAddresses: [192.168.1.5]
  router: {ipv4: 10.0.1.1, ipv6: 'fd00:0:1::1'}
  overlay:
    local: 172.16.0.1
    peers:
      - name: node-2
        address: 172.16.0.2
        prefixes: [10.0.2.0/24, 'fd00:0:2::/64']
        endpoints:
          - {name: db, ipv4: 10.0.2.7, ipv6: 'fd00:0:2::7', labels: {app: db}}
          - {name: cache, ipv4: 10.0.2.8, labels: {app: cache}}
  endpoints:
    - {name: web, interface: lxc-web, ipv4: 10.0.1.5, ipv6: 'fd00:0:1::5', labels: {app: web}}
";

/// Peers of the cases.
const POD2: &str = "10.0.2.5"; // a pod of node-2 that the file does not declare
const POD2_V6: &str = "fd00:0:2::5";
const NODE2: &str = "172.16.0.2";
const DB: &str = "10.0.2.7"; // declared, app=db
const DB_V6: &str = "fd00:0:2::7";
const CACHE: &str = "10.0.2.8"; // declared, app=cache
const HOST: &str = "192.168.1.5";
const OUTSIDE: &str = "203.0.113.9";
const OUTSIDE_V6: &str = "2001:db8::9";
/// Outside the cluster but next to it: 10.0.0.0/8 holds both.
const NEAR: &str = "10.9.9.9";

/// (what, peer rule (the part after `- ` in `egress:`/`ingress:`, with `{dir}` for
/// `to`/`from`), peer, verdict): each rule allows only what it selects, so a peer it does not
/// select is denied.
const CASES: &[(&str, &str, &str, Verdict)] = &[
    // world is everything outside the cluster: a remote pod is not world.
    ("world: a remote pod is not world", "{dir}Entities: [world]", POD2, D),
    ("world: a remote pod (IPv6) is not world", "{dir}Entities: [world]", POD2_V6, D),
    ("world: a declared remote pod is not world", "{dir}Entities: [world]", DB, D),
    ("world: a remote node is not world", "{dir}Entities: [world]", NODE2, D),
    ("world: the host is not world", "{dir}Entities: [world]", HOST, D),
    ("world: an outside address is world", "{dir}Entities: [world]", OUTSIDE, A),
    ("world: an outside IPv6 address is world", "{dir}Entities: [world]", OUTSIDE_V6, A),
    ("world: next to the cluster is still world", "{dir}Entities: [world]", NEAR, A),
    // cluster is every endpoint of every node, the host and the remote nodes.
    ("cluster: an undeclared remote pod (unmanaged)", "{dir}Entities: [cluster]", POD2, A),
    ("cluster: an undeclared remote pod, IPv6", "{dir}Entities: [cluster]", POD2_V6, A),
    ("cluster: a declared remote pod", "{dir}Entities: [cluster]", DB, A),
    ("cluster: a declared remote pod, IPv6", "{dir}Entities: [cluster]", DB_V6, A),
    ("cluster: the remote node", "{dir}Entities: [cluster]", NODE2, A),
    ("cluster: the host", "{dir}Entities: [cluster]", HOST, A),
    ("cluster: an outside address is not cluster", "{dir}Entities: [cluster]", OUTSIDE, D),
    ("cluster: next to the cluster is not cluster", "{dir}Entities: [cluster]", NEAR, D),
    // remote-node is the other nodes, nothing else.
    ("remote-node: node-2's address", "{dir}Entities: [remote-node]", NODE2, A),
    ("remote-node: not a pod on node-2", "{dir}Entities: [remote-node]", POD2, D),
    ("remote-node: not the host", "{dir}Entities: [remote-node]", HOST, D),
    ("remote-node: not an outside address", "{dir}Entities: [remote-node]", OUTSIDE, D),
    // Label selectors select declared remote pods by their labels.
    ("selector: the remote pod with app=db", "{dir}Endpoints: [{matchLabels: {app: db}}]", DB, A),
    ("selector: the remote pod with app=db, IPv6", "{dir}Endpoints: [{matchLabels: {app: db}}]", DB_V6, A),
    ("selector: not the remote pod with app=cache", "{dir}Endpoints: [{matchLabels: {app: db}}]", CACHE, D),
    ("selector: not an undeclared remote pod", "{dir}Endpoints: [{matchLabels: {app: db}}]", POD2, D),
    ("selector: an empty selector takes every remote pod", "{dir}Endpoints: [{}]", CACHE, A),
    ("selector: but not undeclared ones", "{dir}Endpoints: [{}]", POD2, D),
    // CIDR rules never select the cluster, even when the prefix covers it.
    ("cidr 10/8: not a remote pod", "{dir}CIDR: [10.0.0.0/8]", POD2, D),
    ("cidr 10/8: not a declared remote pod", "{dir}CIDR: [10.0.0.0/8]", DB, D),
    ("cidr 10/8: an outside address in it", "{dir}CIDR: [10.0.0.0/8]", NEAR, A),
    ("cidr inside node-2's prefix: selects nothing there", "{dir}CIDR: [10.0.2.0/25]", POD2, D),
    ("cidr of node-2's address: not the node", "{dir}CIDR: [172.16.0.2/32]", NODE2, D),
    ("cidr 0/0: not a remote pod", "{dir}CIDR: [0.0.0.0/0]", POD2, D),
    ("cidr 0/0: an outside address", "{dir}CIDR: [0.0.0.0/0]", OUTSIDE, A),
];

fn node_with(rule: &str) -> NodeConfig {
    let peer = |dir: &str| rule.replace("{dir}", dir);
    let text = format!(
        "{NODE}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: case}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  \
         egress:\n    - {}\n  ingress:\n    - {}\n",
        peer("to"),
        peer("from")
    );
    model::parse_str(&text, "case.yaml").unwrap_or_else(|e| panic!("{e}\ninput:\n{text}"))
}

/// The flows of one case: ICMP echo, TCP and UDP, both directions, from `web`'s address of
/// the peer's family.
fn flows(cfg: &NodeConfig, peer: IpAddr, sport: &mut u16) -> Vec<(Direction, FlowKey)> {
    let web = cfg.endpoint("web").expect("the node has web");
    let own = web.addresses().find(|a| a.is_ipv4() == peer.is_ipv4()).expect("web has both families");
    let echo = if peer.is_ipv4() { (1, 8) } else { (58, 128) };
    let mut out = Vec::new();
    for (proto, dport) in [echo, (6, 80), (17, 53)] {
        for direction in [Direction::Ingress, Direction::Egress] {
            *sport += 1;
            let (src, dst) = match direction {
                Direction::Ingress => (peer, own),
                Direction::Egress => (own, peer),
            };
            out.push((direction, FlowKey { src, dst, proto, sport: *sport, dport }));
        }
    }
    out
}

fn program(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "to_ep_1",
        Direction::Egress => "from_ep_1",
    }
}

/// A program's return value as a policy verdict: anything but a drop passed policy (an
/// egress packet to node-2 is redirected into the tunnel, not passed up).
fn verdict_of(retval: u32) -> Verdict {
    if retval == TC_ACT_SHOT as u32 {
        D
    } else {
        A
    }
}

/// Runs a program on a frame, giving its return value.
type Judge = Box<dyn FnMut(&str, &[u8]) -> u32>;

/// Runs every case through the judge `engine` builds for its node (None: judge only the
/// pure layers); returns the disagreements.
fn run_cases(mut engine: impl FnMut(&NodeConfig) -> Option<Judge>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut sport = 20_000;
    for &(what, rule, peer, want) in CASES {
        let cfg = node_with(rule);
        let resolved = policy::resolve(&cfg).expect("resolves");
        let peer: IpAddr = peer.parse().expect("a literal address");
        let mut judge = engine(&cfg);
        for (direction, key) in flows(&cfg, peer, &mut sport) {
            let by_oracle = oracle::decide(&cfg, "web", direction, &key).expect("decides");
            let identity = resolved.ipcache().lookup(peer);
            let p = resolved.endpoint("web").expect("web is resolved").direction(direction);
            let by_entries = evaluate_entries(&p.entries, p.enforced, identity.get(), key.proto, key.dport);
            let by_program = judge.as_mut().map(|j| verdict_of(j(program(direction), &flow_frame(&key))));
            if by_oracle != want || by_entries != want || by_program.is_some_and(|v| v != want) {
                bad.push(format!(
                    "{what}: {direction:?} {key:?} (peer identity {identity}): expected {want:?}, \
                     oracle {by_oracle:?}, entries {by_entries:?}, program {by_program:?}\n  rule: {rule}"
                ));
            }
        }
    }
    bad
}

#[test]
fn peer_addresses_have_their_cluster_identities() {
    let cfg = node_with("{dir}Entities: [all]");
    let resolved = policy::resolve(&cfg).expect("resolves");
    let ids = resolved.identities();
    let labels = |app: &str| {
        [("app", app), ("io.kubernetes.pod.namespace", "default")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let db = ids.of_labels(&labels("db")).expect("the declared remote pod has an identity");
    let cases: &[(&str, Identity)] = &[
        (POD2, Identity::UNMANAGED),
        (POD2_V6, Identity::UNMANAGED),
        (NODE2, Identity::REMOTE_NODE),
        (DB, db),
        (DB_V6, db),
        (HOST, Identity::HOST),
        (OUTSIDE, Identity::WORLD_IPV4),
        (OUTSIDE_V6, Identity::WORLD_IPV6),
    ];
    for &(addr, want) in cases {
        let got = resolved.ipcache().lookup(addr.parse().expect("literal"));
        assert_eq!(got, want, "ipcache lookup of {addr}");
    }
    // Remote label sets are identities but not subjects: their own node enforces them.
    assert!(resolved.of_identity(db).is_none(), "no policy is resolved for a remote pod");
    assert!(resolved.endpoint("web").is_some());
}

#[test]
fn entities_hold_in_the_oracle_and_the_resolved_entries() {
    let bad = run_cases(|_| None);
    assert!(bad.is_empty(), "{} flows differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn entities_hold_in_the_simulator() {
    let bad = run_cases(|cfg| {
        let plan = plan(cfg).expect("plans");
        let mut node = SimNode::new(&plan).expect("verifier-sim accepts the endpoint programs");
        Some(Box::new(move |prog, frame| node.run(prog, frame).expect("runs").retval as u32))
    });
    assert!(bad.is_empty(), "{} flows differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn entities_hold_in_the_kernel() {
    if !sluice::sys::require_kernel("entities_hold_in_the_kernel") {
        return;
    }
    let kernel = sluice::sys::kernel();
    let bad = run_cases(|cfg| {
        let plan = plan(cfg).expect("plans");
        let loaded = load_plan(&kernel, &plan).expect("the kernel accepts the endpoint programs");
        Some(Box::new(move |prog, frame| {
            // The whole `Loaded`, maps included: a program array keeps its slots only while
            // user space holds the map (the stubs tail-call through `ep_tail`).
            let loaded = &loaded;
            loaded.programs[prog].test_run(&TestRunOpts::packet(frame)).expect("test run").retval
        }))
    });
    assert!(bad.is_empty(), "{} flows differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn a_peer_endpoint_outside_the_peers_prefixes_is_rejected() {
    let text = NODE.replace("ipv4: 10.0.2.8", "ipv4: 10.0.3.8");
    let err = model::parse_str(&text, "bad.yaml").expect_err("10.0.3.8 is not node-2's");
    let shown = err.to_string();
    assert!(
        shown.contains("10.0.3.8 is in none of the peer's prefixes"),
        "input:\n{text}\nexpected the prefix error, got: {shown}"
    );
}
