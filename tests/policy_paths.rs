//! The endpoint-policy programs on paths the other suites do not reach on purpose, with
//! expectations written by hand from the policy documents' meaning (not from the
//! reference evaluator, which reads the same lowered rules as the compiler):
//!
//! - IPv6 CIDR rules (`fromCIDR`, `fromCIDRSet` with `except`): every address inside the
//!   prefix is selected, not only its network address (the `ipc_v6` trie holds the rule's
//!   prefix with its length).
//! - Overflowing `pol_table` slots: more "any identity" rules than a slot holds inline
//!   (so a peer without rules of its own falls back to identity 0, finds an overflowing
//!   slot and asks the `policy` trie, which must fall back to identity 0 too), and more
//!   rules for one specific identity than a slot holds. The slots are found overflowing
//!   in the loaded `pol_table` first, so a fixture change cannot stop reaching the path.
//! - A port written without a protocol: in a CiliumNetworkPolicy it matches TCP, UDP and
//!   SCTP; in a NetworkPolicy the protocol defaults to TCP.
//! - Conntrack expiry with the simulator clock stepped (and, in the kernel, an entry
//!   rewritten with an expiry in the past).
//!
//! Every flow runs in the simulator and, when the kernel gate allows, in the kernel.

use sluice::golden::probes::{flow_frame, reply_frame};
use sluice::maps::policy::{
    ct4_key, ct_value, ep_config, pol_bucket_of, pol_epdir, pol_slot, Reason, INGRESS, POL_BUCKET_BYTES,
    POL_LIST, POL_OVERFLOW, POL_SLOTS, TC_ACT_OK, TC_ACT_SHOT,
};
use sluice::model::{self, NodeConfig};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::sim::SimNode;
use sluice::node::{plan, Plan};
use sluice::policy::FlowKey;
use sluice::sys::{self, TestRunOpts};
use sluice_verifier_sim::exec::Context;
use std::net::IpAddr;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A node in the simulator and, when the kernel gate allows, loaded in the kernel.
struct Rig {
    cfg: NodeConfig,
    sim: SimNode,
    kernel: Option<Loaded>,
    sport: u16,
}

impl Rig {
    fn new(test: &str, yaml: &str) -> Rig {
        let cfg = model::parse_str(yaml, &format!("{test}.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let plan: Plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let sim = SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"));
        let kernel = sys::require_kernel(test)
            .then(|| load_plan(&sys::kernel(), &plan).unwrap_or_else(|e| panic!("loading: {e}")));
        Rig { cfg, sim, kernel, sport: 20_000 }
    }

    /// The endpoint's index (its programs' number): endpoints are numbered from 1 in the
    /// node's order.
    fn index(&self, endpoint: &str) -> u16 {
        let i = self.cfg.endpoints.iter().position(|e| e.name == endpoint).expect("endpoint in the node");
        u16::try_from(i + 1).expect("few endpoints")
    }

    fn next_sport(&mut self) -> u16 {
        self.sport += 1;
        self.sport
    }

    /// The endpoint's own identity, from the loaded `ep_config`.
    fn identity(&self, endpoint: &str) -> u32 {
        let v = self
            .sim
            .maps
            .get("ep_config")
            .expect("ep_config")
            .lookup(&u32::from(self.index(endpoint)).to_le_bytes())
            .expect("configured");
        u32::from_le_bytes(v[ep_config::IDENTITY..ep_config::IDENTITY + 4].try_into().expect("4 bytes"))
    }

    /// The state word of the loaded `pol_table` slot of (endpoint, ingress, identity).
    fn ingress_slot_state(&self, endpoint: &str, identity: u32) -> Option<u32> {
        let meta =
            self.sim.maps.get("pol_meta").expect("pol_meta").lookup(&0u32.to_le_bytes()).expect("meta");
        let conf = u32::from_le_bytes(meta[..4].try_into().expect("4 bytes"));
        let (bits, base) = (32 - (conf & 0xff), conf >> 8);
        let ep = self.index(endpoint);
        let table = self.sim.maps.get("pol_table").expect("pol_table");
        [0, 1].iter().find_map(|&h| {
            let bucket = base + pol_bucket_of((ep, INGRESS, identity), h, bits);
            let v = table.lookup(&bucket.to_le_bytes()).expect("bucket in range");
            assert_eq!(v.len(), POL_BUCKET_BYTES);
            (0..POL_SLOTS).find_map(|s| {
                let at = s * pol_slot::SIZE;
                let word = |off: usize| u32::from_le_bytes(v[at + off..at + off + 4].try_into().expect("4"));
                (word(pol_slot::IDENTITY) == identity && word(pol_slot::EPDIR) == pol_epdir(ep, INGRESS))
                    .then(|| word(pol_slot::STATE))
            })
        })
    }

    /// Run a frame through a program at simulator time `now_ns`; the kernel (its own
    /// clock) too. Returns the simulator's verdict and the kernel's.
    fn run(&mut self, program: &str, frame: &[u8], now_ns: u64) -> (u32, Option<u32>) {
        let mut ctx = Context::new(frame.to_vec());
        ctx.now_ns = now_ns;
        let sim = self.sim.run_with(program, &mut ctx).unwrap_or_else(|e| panic!("{e}")).retval as u32;
        let kernel = self.kernel.as_ref().map(|k| {
            k.programs[program].test_run(&TestRunOpts::packet(frame)).unwrap_or_else(|e| panic!("{e}")).retval
        });
        (sim, kernel)
    }

    /// Check a table of ingress flows to `endpoint`: (what, peer, protocol, port, allowed).
    fn check_ingress(&mut self, endpoint: &str, dst: &str, flows: &[(&str, &str, u8, u16, bool)]) {
        let program = format!("to_ep_{}", self.index(endpoint));
        let mut bad = Vec::new();
        for &(what, peer, proto, dport, allow) in flows {
            let key = FlowKey { src: ip(peer), dst: ip(dst), proto, sport: self.next_sport(), dport };
            let want = if allow { TC_ACT_OK as u32 } else { TC_ACT_SHOT as u32 };
            let (sim, kernel) = self.run(&program, &flow_frame(&key), 1_000_000_000);
            if sim != want || kernel.is_some_and(|k| k != want) {
                bad.push(format!(
                    "  {what}: {peer} -> {dst} proto {proto} port {dport}: expected {want}, simulator {sim}, kernel {kernel:?}"
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {} flows to {endpoint} wrong:\n{}",
            bad.len(),
            flows.len(),
            bad.join("\n")
        );
    }
}

// ---- IPv6 CIDR rules ----

const V6_CIDRS: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: v6-cidrs}
spec:
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, ipv6: "fd00:7::2", labels: {app: api}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromCIDR: ["2001:db8:1::/48"]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromCIDRSet: [{cidr: "2001:db8:100::/40", except: ["2001:db8:1ff::/48"]}]
      toPorts: [{ports: [{port: "81", protocol: TCP}]}]
    - fromCIDR: ["2001:db8:2:3:4:5:6:0/112"]
      toPorts: [{ports: [{port: "82", protocol: TCP}]}]
"#;

/// "fromCIDR: List of source prefixes/CIDRs that are allowed to talk to all endpoints
/// selected by the endpointSelector" and "ExceptCIDRs is a list of IP blocks which the
/// endpoint subject to the rule is not allowed to initiate connections to" (Cilium's
/// CiliumNetworkPolicy reference): every address of the prefix, not only its first.
#[test]
fn ipv6_cidr_rules_select_every_address_inside_the_prefix() {
    let mut rig = Rig::new("ipv6_cidr_rules_select_every_address_inside_the_prefix", V6_CIDRS);
    rig.check_ingress(
        "api",
        "fd00:7::2",
        &[
            ("/48 network address", "2001:db8:1::", TCP, 80, true),
            ("/48 inside", "2001:db8:1::1", TCP, 80, true),
            ("/48 deep inside", "2001:db8:1:8000:1:2:3:4", TCP, 80, true),
            ("/48 last", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", TCP, 80, true),
            ("/48 one below", "2001:db8:0:ffff:ffff:ffff:ffff:ffff", TCP, 80, false),
            ("/48 one above", "2001:db8:2::", TCP, 80, false),
            ("/48 other port", "2001:db8:1::1", TCP, 81, false),
            ("/40 inside", "2001:db8:100::5", TCP, 81, true),
            ("/40 last before the except", "2001:db8:1fe:ffff:ffff:ffff:ffff:ffff", TCP, 81, true),
            ("/40 except first", "2001:db8:1ff::", TCP, 81, false),
            ("/40 except inside", "2001:db8:1ff::1", TCP, 81, false),
            ("/40 except last", "2001:db8:1ff:ffff:ffff:ffff:ffff:ffff", TCP, 81, false),
            ("/40 one above", "2001:db8:200::", TCP, 81, false),
            ("/40 other port", "2001:db8:100::5", TCP, 80, false),
            ("/112 first", "2001:db8:2:3:4:5:6:0", TCP, 82, true),
            ("/112 last", "2001:db8:2:3:4:5:6:ffff", TCP, 82, true),
            ("/112 one above", "2001:db8:2:3:4:5:7:0", TCP, 82, false),
            ("outside every rule", "2001:db8:ffff::1", TCP, 80, false),
        ],
    );
}

// ---- IPv4 CIDR rules at every ipcache level ----

/// IPv4 CIDR rules of every length class of the ipcache's DIR-16-8-8 table: up to /16
/// (level-1 entries), /17../24 (level-2 chunks), /25../32 (level-3 leaves); rule `i`
/// admits TCP port 9000 + i.
const V4_CIDRS: [&str; 8] = [
    "11.0.0.0/8",
    "172.20.0.0/15",
    "192.0.0.0/16",
    "198.18.0.0/17",
    "198.19.16.0/20",
    "203.0.113.0/24",
    "100.64.7.64/26",
    "100.64.9.9/32",
];

#[test]
fn ipv4_cidr_rules_at_every_ipcache_level_select_exactly_their_addresses() {
    let entries: String = V4_CIDRS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "    - fromCIDR: [\"{c}\"]\n      toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
                9000 + i
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: v4-cidrs}}\nspec:\n  endpoints:\n    - {{name: api, interface: lxc-api, ipv4: 10.7.0.2, labels: {{app: api}}}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: api, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n{entries}"
    );
    let mut rig = Rig::new("ipv4_cidr_rules_at_every_ipcache_level_select_exactly_their_addresses", &yaml);
    let mut probes: Vec<(String, String, u16, bool)> = Vec::new();
    for (i, c) in V4_CIDRS.iter().enumerate() {
        let (net, len) = c.split_once('/').expect("a CIDR");
        let net = u32::from(net.parse::<std::net::Ipv4Addr>().expect("an address"));
        let len: u32 = len.parse().expect("a length");
        let last = net | u32::MAX.checked_shr(len).unwrap_or(0);
        let port = 9000 + i as u16;
        let a = |x: u32| std::net::Ipv4Addr::from(x).to_string();
        probes.extend([
            (format!("{c} first"), a(net), port, true),
            (format!("{c} last"), a(last), port, true),
            (format!("{c} middle"), a(net + (last - net) / 2), port, true),
            (format!("{c} one below"), a(net - 1), port, false),
            (format!("{c} one above"), a(last + 1), port, false),
            (format!("{c} other rule's port"), a(net), if i == 0 { 9001 } else { 9000 }, false),
        ]);
    }
    let flows: Vec<(&str, &str, u8, u16, bool)> =
        probes.iter().map(|(w, a, p, allow)| (w.as_str(), a.as_str(), TCP, *p, *allow)).collect();
    rig.check_ingress("api", "10.7.0.2", &flows);
}

// ---- overflowing policy slots ----

/// Ports `api` admits from anyone: one more than a slot holds inline, every other port
/// (so no two merge into one port-prefix key).
fn any_ports() -> Vec<u16> {
    (0..POL_LIST as u16 + 1).map(|i| 1001 + 2 * i).collect()
}

/// Ports `api` admits from `db` only: as many again.
fn db_ports() -> Vec<u16> {
    (0..POL_LIST as u16 + 1).map(|i| 2001 + 2 * i).collect()
}

/// `api`: more "any peer" ports than a slot holds inline, and more ports for `db` than a
/// slot holds. `web` and the world have no rules of their own.
fn overflow_yaml() -> String {
    let ports = |ports: Vec<u16>| -> String {
        ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect::<Vec<_>>().join(", ")
    };
    format!(
        r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: overflow}}
spec:
  endpoints:
    - {{name: api, interface: lxc-api, ipv4: 10.7.0.2, labels: {{app: api}}}}
    - {{name: db, interface: lxc-db, ipv4: 10.7.0.3, labels: {{app: db}}}}
    - {{name: web, interface: lxc-web, ipv4: 10.7.0.1, labels: {{app: web}}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: api}}}}
  ingress:
    - toPorts: [{{ports: [{any}]}}]
    - fromEndpoints: [{{matchLabels: {{app: db}}}}]
      toPorts: [{{ports: [{db}]}}]
"#,
        any = ports(any_ports()),
        db = ports(db_ports()),
    )
}

/// "toPorts ... without a from... selector: the ports are allowed from every peer"; the
/// any-peer rules apply to peers with rules of their own too (Cilium's rules are a union).
#[test]
fn overflowing_policy_slots_fall_back_to_the_policy_trie() {
    let mut rig = Rig::new("overflowing_policy_slots_fall_back_to_the_policy_trie", &overflow_yaml());
    let (web, db) = (rig.identity("web"), rig.identity("db"));
    assert!(web >= 256 && db >= 256 && web != db, "label-set identities: web {web}, db {db}");
    // The paths: identity 0's slot and db's overflow; web has no slot of its own.
    assert_eq!(rig.ingress_slot_state("api", 0), Some(POL_OVERFLOW), "the any-identity slot overflows");
    assert_eq!(rig.ingress_slot_state("api", db), Some(POL_OVERFLOW), "db's slot overflows");
    assert_eq!(rig.ingress_slot_state("api", web), None, "web has no slot of its own");
    let mut flows = Vec::new();
    for (who, peer) in [("web", "10.7.0.1"), ("world", "203.0.113.9"), ("db", "10.7.0.3")] {
        let is_db = who == "db";
        for (ports, allowed) in [(any_ports(), true), (db_ports(), is_db)] {
            for &p in &ports {
                // Each admitted port, and the one below it (a gap or below the first).
                flows.extend([(who, peer, TCP, p, allowed), (who, peer, TCP, p - 1, false)]);
            }
            let last = *ports.last().expect("ports");
            flows.extend([(who, peer, TCP, last + 1, false), (who, peer, UDP, ports[0], false)]);
        }
    }
    rig.check_ingress("api", "10.7.0.2", &flows);
}

// ---- ports without a protocol ----

const PROTOCOL_LESS: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: protocol-less}
spec:
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, ipv6: "fd00:7::2", labels: {app: api}}
    - {name: web, interface: lxc-web, ipv4: 10.7.0.1, ipv6: "fd00:7::1", labels: {app: web}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "7000"}, {port: "7010", endPort: 7012}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 7100}]
"#;

/// CiliumNetworkPolicy: "Protocol is the L4 protocol. If omitted or empty, any protocol
/// matches" (TCP, UDP and SCTP). NetworkPolicy: "protocol ... If not specified, this
/// field defaults to TCP."
#[test]
fn a_port_without_a_protocol_matches_what_its_document_says() {
    let mut rig = Rig::new("a_port_without_a_protocol_matches_what_its_document_says", PROTOCOL_LESS);
    let mut flows = Vec::new();
    for (family, peer) in [("v4", "10.7.0.1"), ("v6", "fd00:7::1")] {
        for (name, proto) in [("tcp", TCP), ("udp", UDP), ("sctp", SCTP)] {
            let _ = family;
            flows.extend([
                (name, peer, proto, 7000, true),
                (name, peer, proto, 6999, false),
                (name, peer, proto, 7001, false),
                (name, peer, proto, 7010, true),
                (name, peer, proto, 7012, true),
                (name, peer, proto, 7009, false),
                (name, peer, proto, 7013, false),
                (name, peer, proto, 7100, proto == TCP),
            ]);
        }
    }
    let v4: Vec<_> = flows.iter().copied().filter(|f| !f.1.contains(':')).collect();
    let v6: Vec<_> = flows.iter().copied().filter(|f| f.1.contains(':')).collect();
    rig.check_ingress("api", "10.7.0.2", &v4);
    rig.check_ingress("api", "fd00:7::2", &v6);
}

// ---- conntrack expiry ----

const EXPIRY: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: expiry}
spec:
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, labels: {app: api}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
"#;

const SECOND: u64 = 1_000_000_000;
/// Where the simulated clock starts: far from zero, so "expires" is never near wrapping.
const T0: u64 = 1_000 * SECOND;

/// The reply of a flow the endpoint opened (egress is not enforced) passes only while the
/// conntrack entry lives: UDP 60 s after its last packet, a TCP SYN without answer 60 s
/// (`maps::policy::timeout`). The ingress policy admits no one, so policy alone would
/// drop every reply.
#[test]
fn conntrack_entries_expire_on_the_simulator_clock() {
    let mut rig = Rig::new("conntrack_entries_expire_on_the_simulator_clock", EXPIRY);
    rig.kernel = None; // The simulator clock is this test's; the kernel has its own test below.
    let (from, to) = ("from_ep_1", "to_ep_1");
    let api = ip("10.7.0.2");
    let world = ip("203.0.113.9");
    let udp = sluice::maps::policy::timeout::UDP;
    let syn = sluice::maps::policy::timeout::TCP_SYN;
    let mut bad = Vec::new();
    let mut expect = |rig: &mut Rig, what: &str, program: &str, frame: Vec<u8>, at: u64, want: i32| {
        let (got, _) = rig.run(program, &frame, at);
        if got != want as u32 {
            bad.push(format!("  {what} at T0+{}ns: expected {want}, got {got}", at - T0));
        }
    };
    let open = |rig: &mut Rig, proto: u8| {
        let k = FlowKey { src: api, dst: world, proto, sport: rig.next_sport(), dport: 53 };
        let r = FlowKey { src: world, dst: api, proto, sport: 53, dport: k.sport };
        (k, r)
    };
    // UDP: a reply just inside the timeout passes; just at it, it is dropped.
    let (k, r) = open(&mut rig, UDP);
    expect(&mut rig, "udp request", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(&mut rig, "udp reply 1 ns before expiry", to, reply_frame(&r), T0 + udp - 1, TC_ACT_OK);
    let (k, r) = open(&mut rig, UDP);
    expect(&mut rig, "udp request", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(&mut rig, "udp reply 1 s after expiry", to, reply_frame(&r), T0 + udp + SECOND, TC_ACT_SHOT);
    // Each packet moves the expiry: replies 50 s apart live on, 61 s after the last die.
    let (k, r) = open(&mut rig, UDP);
    expect(&mut rig, "udp request", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(&mut rig, "udp reply after 50 s", to, reply_frame(&r), T0 + 50 * SECOND, TC_ACT_OK);
    expect(&mut rig, "udp reply after 100 s", to, reply_frame(&r), T0 + 100 * SECOND, TC_ACT_OK);
    expect(&mut rig, "udp reply 61 s after the last", to, reply_frame(&r), T0 + 161 * SECOND, TC_ACT_SHOT);
    // TCP: the SYN-ACK of an unanswered SYN, after the SYN timeout.
    let (k, r) = open(&mut rig, TCP);
    expect(&mut rig, "tcp syn", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(
        &mut rig,
        "tcp syn-ack 1 s before the syn timeout",
        to,
        reply_frame(&r),
        T0 + syn - SECOND,
        TC_ACT_OK,
    );
    let (k, r) = open(&mut rig, TCP);
    expect(&mut rig, "tcp syn", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(
        &mut rig,
        "tcp syn-ack 1 s after the syn timeout",
        to,
        reply_frame(&r),
        T0 + syn + SECOND,
        TC_ACT_SHOT,
    );
    // TCP: an answered SYN is established for TCP_ESTABLISHED after its last packet.
    let est = sluice::maps::policy::timeout::TCP_ESTABLISHED;
    let (k, r) = open(&mut rig, TCP);
    expect(&mut rig, "tcp syn", from, flow_frame(&k), T0, TC_ACT_OK);
    expect(&mut rig, "tcp syn-ack", to, reply_frame(&r), T0 + SECOND, TC_ACT_OK);
    expect(&mut rig, "established, 1 s before its timeout", to, reply_frame(&r), T0 + est, TC_ACT_OK);
    expect(
        &mut rig,
        "established, 1 s after its timeout",
        to,
        reply_frame(&r),
        T0 + 2 * est + SECOND,
        TC_ACT_SHOT,
    );
    // The drops are policy's default deny, counted as such.
    let deny =
        rig.sim.counter("ep_stats", u32::from(rig.index("api")) * Reason::COUNT + Reason::DenyDefault as u32);
    assert_eq!(deny, 4, "four expired replies, each a default-deny drop");
    assert!(bad.is_empty(), "conntrack expiry:\n{}", bad.join("\n"));
}

/// In the kernel: an entry whose expiry is rewritten into the past no longer passes the
/// reply; an untouched one does.
#[test]
fn conntrack_entries_with_an_old_expiry_are_dead_in_the_kernel() {
    if !sys::require_kernel("conntrack_entries_with_an_old_expiry_are_dead_in_the_kernel") {
        return;
    }
    let mut rig = Rig::new("conntrack_entries_with_an_old_expiry_are_dead_in_the_kernel", EXPIRY);
    let k = rig.kernel.take().expect("loaded");
    let run = |program: &str, frame: &[u8]| -> u32 {
        k.programs[program].test_run(&TestRunOpts::packet(frame)).unwrap_or_else(|e| panic!("{e}")).retval
    };
    let (api, world) = (ip("10.7.0.2"), ip("203.0.113.9"));
    let live = FlowKey { src: api, dst: world, proto: UDP, sport: rig.next_sport(), dport: 53 };
    let dead = FlowKey { src: api, dst: world, proto: UDP, sport: rig.next_sport(), dport: 53 };
    let reply = |f: &FlowKey| FlowKey { src: world, dst: api, proto: UDP, sport: 53, dport: f.sport };
    assert_eq!(run("from_ep_1", &flow_frame(&live)), TC_ACT_OK as u32);
    assert_eq!(run("from_ep_1", &flow_frame(&dead)), TC_ACT_OK as u32);
    let ct = &k.maps["ct4"];
    let entries = ct.entries().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.len(), 2, "one entry per flow: {entries:?}");
    let mut rewritten = 0;
    for (key, mut value) in entries {
        if key[ct4_key::SPORT..ct4_key::SPORT + 2] == dead.sport.to_be_bytes() {
            value[ct_value::EXPIRES..ct_value::EXPIRES + 8].copy_from_slice(&1u64.to_le_bytes());
            ct.update(&key, &value, sys::map::UpdateFlags::EXIST).unwrap_or_else(|e| panic!("{e}"));
            rewritten += 1;
        }
    }
    assert_eq!(rewritten, 1, "the dead flow's entry");
    assert_eq!(
        run("to_ep_1", &reply_frame(&reply(&live))),
        TC_ACT_OK as u32,
        "a live entry passes its reply"
    );
    assert_eq!(run("to_ep_1", &reply_frame(&reply(&dead))), TC_ACT_SHOT as u32, "an expired entry does not");
}

/// An ICMP error about a connection: "ICMP errors pass when their quoted packet belongs
/// to a tracked connection" (`codegen::endpoint`, step 4). A connection whose entry has
/// expired is no longer tracked: the error is judged as a new packet (here: dropped).
#[test]
fn icmp_errors_about_an_expired_connection_are_not_related() {
    let mut rig = Rig::new("icmp_errors_about_an_expired_connection_are_not_related", EXPIRY);
    rig.kernel = None;
    let (api, world) = (ip("10.7.0.2"), ip("203.0.113.9"));
    let udp = sluice::maps::policy::timeout::UDP;
    let k = FlowKey { src: api, dst: world, proto: UDP, sport: rig.next_sport(), dport: 53 };
    let sent = flow_frame(&k);
    // The error quotes the IPv4 header and the first 8 bytes of what the endpoint sent.
    let quoted = &sent[14..14 + 20 + 8];
    let (IpAddr::V4(w), IpAddr::V4(a)) = (world, api) else { unreachable!("IPv4 literals") };
    let error = sluice::packet::PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(w, a)
        .icmpv4(3, 3, 0)
        .payload(quoted)
        .build();
    assert_eq!(rig.run("from_ep_1", &sent, T0).0, TC_ACT_OK as u32, "the endpoint's datagram goes out");
    assert_eq!(
        rig.run("to_ep_1", &error, T0 + SECOND).0,
        TC_ACT_OK as u32,
        "an error about a live connection"
    );
    assert_eq!(
        rig.run("to_ep_1", &error, T0 + udp + SECOND).0,
        TC_ACT_SHOT as u32,
        "an error about a connection whose entry expired a second ago"
    );
}

// ---- pol_table's second cuckoo bucket ----

/// Outside peers with rules of their own: each /32 is a CIDR identity with its own
/// `pol_table` slot in every endpoint, admitted on its own port.
const OWN_SLOTS: u16 = 100;
/// Endpoints, all selected by the policy. Identities are numbered in sequence and a
/// multiplicative hash spreads one sequence evenly, so one endpoint's slots never share a
/// first bucket; several endpoints' sequences (folded with different constants) do.
const SLOT_ENDPOINTS: u16 = 4;

fn own_slots_yaml() -> String {
    let entries: String = (0..OWN_SLOTS)
        .map(|i| {
            format!(
                "    - fromCIDR: [\"198.18.0.{}/32\"]\n      toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
                1 + i,
                10_000 + i
            )
        })
        .collect();
    let endpoints: String = (1..=SLOT_ENDPOINTS)
        .map(|i| {
            format!("    - {{name: ep{i}, interface: lxc-ep{i}, ipv4: 10.7.0.{i}, labels: {{app: api}}}}\n")
        })
        .collect();
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: own-slots}}\nspec:\n  endpoints:\n{endpoints}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: api, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n{entries}"
    )
}

/// Slots of `pol_table` that the layout put in their second bucket (`h1 != h0`): found
/// there in the loaded map, so the program's second probe is what finds them.
#[test]
fn policy_slots_in_their_second_cuckoo_bucket_are_found() {
    let mut rig = Rig::new("policy_slots_in_their_second_cuckoo_bucket_are_found", &own_slots_yaml());
    let meta = rig.sim.maps.get("pol_meta").expect("pol_meta").lookup(&0u32.to_le_bytes()).expect("meta");
    let conf = u32::from_le_bytes(meta[..4].try_into().expect("4 bytes"));
    let (bits, base) = (32 - (conf & 0xff), conf >> 8);
    let table = rig.sim.maps.get("pol_table").expect("pol_table");
    let mut second: Vec<u16> = Vec::new();
    let mut slots = 0;
    for bucket in 0..(1u32 << bits) {
        let v = table.lookup(&(base + bucket).to_le_bytes()).expect("bucket in range");
        for s in 0..POL_SLOTS {
            let at = s * pol_slot::SIZE;
            let word = |off: usize| u32::from_le_bytes(v[at + off..at + off + 4].try_into().expect("4"));
            let Some(ep) = (1..=SLOT_ENDPOINTS).find(|&ep| word(pol_slot::EPDIR) == pol_epdir(ep, INGRESS))
            else {
                continue;
            };
            slots += 1;
            let key = (ep, INGRESS, word(pol_slot::IDENTITY));
            let (h0, h1) = (pol_bucket_of(key, 0, bits), pol_bucket_of(key, 1, bits));
            assert!(bucket == h0 || bucket == h1, "{key:?} in bucket {bucket}, not {h0} or {h1}");
            if bucket == h1 && h0 != h1 {
                second.push(ep);
            }
        }
    }
    eprintln!("{} of {slots} slots sit in their second bucket (endpoints {second:?})", second.len());
    assert!(
        slots >= usize::from(OWN_SLOTS * SLOT_ENDPOINTS),
        "one slot per CIDR identity and endpoint: {slots}"
    );
    assert!(second.len() >= 3, "only {} slots in their second bucket", second.len());
    for ep in 1..=SLOT_ENDPOINTS {
        let mut probes: Vec<(String, String, u16, bool)> = Vec::new();
        for i in 0..OWN_SLOTS {
            let peer = format!("198.18.0.{}", 1 + i);
            let port = 10_000 + i;
            probes.push((format!("{peer} on its port"), peer.clone(), port, true));
            probes.push((format!("{peer} on the next one's port"), peer, port + 1, false));
        }
        let flows: Vec<(&str, &str, u8, u16, bool)> =
            probes.iter().map(|(w, a, p, allow)| (w.as_str(), a.as_str(), TCP, *p, *allow)).collect();
        rig.check_ingress(&format!("ep{ep}"), &format!("10.7.0.{ep}"), &flows);
    }
}

// ---- ICMP messages without an id ----

const ICMP_BOTH_WAYS: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: icmp-ids}
spec:
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, labels: {app: api}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEntities: [world]
      icmps: [{fields: [{type: 13}]}]
  egress:
    - toEntities: [world]
      icmps: [{fields: [{type: 8}]}]
"#;

/// ICMP messages other than echo carry no id, so conntrack keys them with zero ports: a
/// timestamp request (13) the ingress policy admits must not make an outgoing timestamp
/// request, or an outgoing address-mask request (17), pass as its "reply" when the
/// egress policy admits neither.
#[test]
fn id_less_icmp_messages_are_not_each_others_replies() {
    let mut rig = Rig::new("id_less_icmp_messages_are_not_each_others_replies", ICMP_BOTH_WAYS);
    let (api, world) = (ip("10.7.0.2"), ip("203.0.113.9"));
    let icmp = |src, dst, ty| flow_frame(&FlowKey { src, dst, proto: 1, sport: 0, dport: ty });
    let mut bad = Vec::new();
    for (what, program, frame, want) in [
        ("egress timestamp request before any ingress", "from_ep_1", icmp(api, world, 13), TC_ACT_SHOT),
        ("ingress timestamp request", "to_ep_1", icmp(world, api, 13), TC_ACT_OK),
        ("egress timestamp request after it", "from_ep_1", icmp(api, world, 13), TC_ACT_SHOT),
        ("egress address-mask request after it", "from_ep_1", icmp(api, world, 17), TC_ACT_SHOT),
    ] {
        let (sim, kernel) = rig.run(program, &frame, 1_000 * SECOND);
        if sim != want as u32 || kernel.is_some_and(|k| k != want as u32) {
            bad.push(format!("  {what}: expected {want}, simulator {sim}, kernel {kernel:?}"));
        }
    }
    assert!(bad.is_empty(), "id-less ICMP:\n{}", bad.join("\n"));
}

/// A later fragment passes on its first fragment's verdict only while reassembly could
/// still be going on (about 32 s; Linux's `ipfrag_time` is 30 s): an id seen long ago
/// opens nothing.
#[test]
fn later_fragments_expire_on_the_simulator_clock() {
    let mut rig = Rig::new("later_fragments_expire_on_the_simulator_clock", EXPIRY);
    rig.kernel = None; // The simulator clock is this test's.
    let (api, world) = ([10, 7, 0, 2], [203, 0, 113, 9]);
    let mac = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let first = |id: u16| {
        sluice::packet::PacketBuilder::ethernet(mac.0, mac.1)
            .ipv4(api.into(), world.into())
            .ident(id)
            .ipv4_fragment(0, true)
            .udp(5454, 53)
            .payload(&[0u8; 32])
            .build()
    };
    let later = |id: u16| {
        sluice::packet::PacketBuilder::ethernet(mac.0, mac.1)
            .ipv4(api.into(), world.into())
            .ident(id)
            .ipv4_fragment(5, false)
            .raw_l4(17, &[0u8; 16])
            .build()
    };
    let mut bad = Vec::new();
    for (what, frame, at, want) in [
        ("first fragment of datagram 1", first(1), T0, TC_ACT_OK),
        ("its later fragment 20 s on", later(1), T0 + 20 * SECOND, TC_ACT_OK),
        ("first fragment of datagram 2", first(2), T0, TC_ACT_OK),
        ("its later fragment 40 s on", later(2), T0 + 40 * SECOND, TC_ACT_SHOT),
    ] {
        let (got, _) = rig.run("from_ep_1", &frame, at);
        if got != want as u32 {
            bad.push(format!("  {what}: expected {want}, got {got}"));
        }
    }
    assert!(bad.is_empty(), "fragments:\n{}", bad.join("\n"));
}
