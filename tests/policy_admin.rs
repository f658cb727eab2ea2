//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (Kubernetes network-policy-api,
//! `policy.networking.k8s.io/v1alpha1`): their tiers around NetworkPolicy and
//! CiliumNetworkPolicy, as the API documents them. Each case quotes the sentence it
//! implements and is judged by the model's oracle (`policy::oracle::decide`), by the resolved
//! policy table (the scan the datapath implements), by the compiled endpoint program in the
//! simulator and, when privileged, in the kernel (BPF_PROG_TEST_RUN). A seeded random test
//! then holds the resolved table to the oracle over many combinations; the rejection table
//! checks what stays refused, at its place.

use sluice::golden::probes::flow_frame;
use sluice::maps::policy::{TC_ACT_OK, TC_ACT_SHOT};
use sluice::model::{self, Direction, NodeConfig};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::plan;
use sluice::node::sim::SimNode;
use sluice::policy::explain::{explain, End, Flow};
use sluice::policy::{evaluate_entries, oracle, resolve, FlowKey, Verdict};
use sluice::sys::{self, TestRunOpts};
use std::collections::HashMap;
use std::net::IpAddr;

const WEB: &str = "10.9.0.10";
const API: &str = "10.9.0.11";
const DB: &str = "10.9.1.12";
const MON: &str = "10.9.2.13";
const WORLD: &str = "203.0.113.9";
const HOST: &str = "192.168.1.5";

/// Endpoints: web (app=web, http = TCP 8080) and api (app=api) in `default`, db (app=db) in
/// `prod`, mon (app=mon) in `monitoring`; Namespace documents give `prod` env=prod and
/// `monitoring` role=infra.
fn node(policies: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: anp}}\nspec:\n  hostAddresses: [\"{HOST}\"]\n  endpoints:\n    - {{name: web, interface: lxa0, ipv4: {WEB}, labels: {{app: web}}, ports: [{{name: http, port: 8080}}]}}\n    - {{name: api, interface: lxa1, ipv4: {API}, labels: {{app: api}}}}\n    - {{name: db, namespace: prod, interface: lxa2, ipv4: {DB}, labels: {{app: db}}}}\n    - {{name: mon, namespace: monitoring, interface: lxa3, ipv4: {MON}, labels: {{app: mon}}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: prod, labels: {{env: prod}}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: monitoring, labels: {{role: infra}}}}\n{policies}"
    )
}

const PRIORITY: &str = "network-policy-api, AdminNetworkPolicySpec.priority: \"Policies with lower priority \
     values have higher precedence, and are checked before policies with higher priority values. All \
     AdminNetworkPolicy rules have higher precedence than NetworkPolicy or BaselineAdminNetworkPolicy rules.\"";
const RULE_ORDER: &str = "network-policy-api, AdminNetworkPolicySpec.ingress: \"The relative precedence of \
     ingress rules within a single ANP object (all of which share the priority) will be determined by the \
     order in which the rule is written. Thus, a rule that appears at the top of the ingress rules would take \
     the highest precedence.\"";
const PASS: &str = "network-policy-api, AdminNetworkPolicyRuleAction: \"Pass: instructs the selected traffic to \
     skip any remaining ANP rules, and then pass execution to any NetworkPolicies that select the pod. If the \
     pod is not selected by any NetworkPolicies then execution is passed to any BaselineAdminNetworkPolicies \
     that select the pod.\"";
const ALLOW_OVER_NP: &str = "network-policy-api, AdminNetworkPolicyEgressRule.action: \"Allow: allows the \
     selected traffic (even if it would otherwise have been denied by NetworkPolicy)\"";
const BASELINE: &str =
    "network-policy-api, BaselineAdminNetworkPolicySpec.ingress: \"List of Ingress rules to \
     be applied to the selected objects if they are not matched by any AdminNetworkPolicy or NetworkPolicy \
     rules.\"";
const PORTS: &str = "network-policy-api, AdminNetworkPolicyIngressRule.ports: \"Ports allows for matching \
     traffic based on port and protocols. ... If Ports is not set then the rule does not filter traffic via \
     port.\"";
const NETWORKS: &str =
    "network-policy-api, AdminNetworkPolicyEgressPeer.networks: \"Networks defines a way to \
     select peers via CIDR blocks.\"";
const NO_RULES: &str =
    "network-policy-api, AdminNetworkPolicySpec.egress: \"ANPs with no egress rules do not \
     affect egress traffic.\"";

fn anp(name: &str, priority: u16, subject: &str, direction: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n  subject: {subject}\n  {direction}:\n{rules}"
    )
}

fn banp(subject: &str, direction: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: default}}\nspec:\n  subject: {subject}\n  {direction}:\n{rules}"
    )
}

const KNP_WEB_FROM_API: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-api}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: api}}}]
";

const ALL_PODS: &str = "{namespaces: {}}";
const WEB_PODS: &str = "{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}, podSelector: {matchLabels: {app: web}}}}";

struct Case {
    doc: &'static str,
    policies: String,
    endpoint: &'static str,
    direction: Direction,
    peer: &'static str,
    proto: u8,
    dport: u16,
    allowed: bool,
}

fn cases() -> Vec<Case> {
    let c = |doc, policies: &str, (endpoint, direction), (peer, proto, dport), allowed| Case {
        doc,
        policies: policies.to_owned(),
        endpoint,
        direction,
        peer,
        proto,
        dport,
        allowed,
    };
    let ing = |e| (e, Direction::Ingress);
    let eg = |e| (e, Direction::Egress);
    // Priority: deny from prod at 20, allow from prod at 10: the lower number wins.
    let deny_prod_20 = anp(
        "deny-prod",
        20,
        WEB_PODS,
        "ingress",
        "    - {action: Deny, from: [{namespaces: {matchLabels: {env: prod}}}]}\n",
    );
    let allow_prod_10 = anp(
        "allow-prod",
        10,
        WEB_PODS,
        "ingress",
        "    - {action: Allow, from: [{namespaces: {matchLabels: {env: prod}}}]}\n",
    );
    let priorities = format!("{deny_prod_20}{allow_prod_10}");
    let allow_prod_30 = anp(
        "allow-prod",
        30,
        WEB_PODS,
        "ingress",
        "    - {action: Allow, from: [{namespaces: {matchLabels: {env: prod}}}]}\n",
    );
    let priorities_swapped = format!("{deny_prod_20}{allow_prod_30}");
    // Rule order within one ANP.
    let ordered = anp(
        "ordered",
        5,
        WEB_PODS,
        "ingress",
        "    - {name: allow-db, action: Allow, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}]}\n    - {name: deny-prod, action: Deny, from: [{namespaces: {matchLabels: {env: prod}}}]}\n",
    );
    // Pass to NetworkPolicy: the NP allows only api.
    let pass_all = anp("pass", 1, WEB_PODS, "ingress", "    - {action: Pass, from: [{namespaces: {}}]}\n");
    let deny_all_banp = banp(ALL_PODS, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}\n");
    let pass_np = format!("{pass_all}{KNP_WEB_FROM_API}{deny_all_banp}");
    let pass_no_np = format!("{pass_all}{deny_all_banp}");
    // Allow over a NetworkPolicy that isolates web.
    let allow_mon = anp(
        "allow-monitoring",
        3,
        ALL_PODS,
        "ingress",
        "    - {action: Allow, from: [{namespaces: {matchLabels: {role: infra}}}]}\n",
    );
    let allow_over_np = format!("{allow_mon}{KNP_WEB_FROM_API}");
    // Baseline after NetworkPolicy.
    let baseline_after_np = format!("{KNP_WEB_FROM_API}{deny_all_banp}");
    // Ports.
    let ports = anp(
        "ports",
        7,
        WEB_PODS,
        "ingress",
        "    - action: Deny\n      from: [{namespaces: {}}]\n      ports: [{portNumber: {port: 22}}, {portRange: {protocol: UDP, start: 5000, end: 5010}}, {namedPort: http}]\n",
    );
    // Egress networks.
    let networks = anp(
        "no-doc-net",
        9,
        WEB_PODS,
        "egress",
        "    - {action: Deny, to: [{networks: [203.0.113.0/24]}]}\n",
    );
    let banp_egress =
        banp(ALL_PODS, "egress", "    - {action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}]}\n");
    let ingress_only =
        anp("ingress-only", 2, ALL_PODS, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}\n");
    vec![
        c(PRIORITY, &priorities, ing("web"), (DB, 6, 80), true),
        c(PRIORITY, &priorities, ing("web"), (API, 6, 80), true),
        c(PRIORITY, &priorities_swapped, ing("web"), (DB, 6, 80), false),
        c(PRIORITY, &priorities_swapped, ing("api"), (DB, 6, 80), true),
        c(RULE_ORDER, &ordered, ing("web"), (DB, 6, 80), true),
        c(RULE_ORDER, &ordered, ing("web"), (MON, 6, 80), true),
        c(PASS, &pass_np, ing("web"), (API, 6, 80), true),
        c(PASS, &pass_np, ing("web"), (DB, 6, 80), false),
        c(PASS, &pass_no_np, ing("web"), (API, 6, 80), false),
        c(PASS, &pass_no_np, ing("web"), (WORLD, 6, 80), true),
        c(ALLOW_OVER_NP, &allow_over_np, ing("web"), (MON, 6, 80), true),
        c(ALLOW_OVER_NP, &allow_over_np, ing("web"), (DB, 6, 80), false),
        c(ALLOW_OVER_NP, &allow_over_np, ing("web"), (API, 6, 80), true),
        c(BASELINE, &baseline_after_np, ing("web"), (API, 6, 80), true),
        c(BASELINE, &baseline_after_np, ing("api"), (WEB, 6, 80), false),
        c(BASELINE, &baseline_after_np, ing("api"), (WORLD, 6, 80), true),
        c(BASELINE, &baseline_after_np, ing("web"), (HOST, 6, 80), true),
        c(PORTS, &ports, ing("web"), (API, 6, 22), false),
        c(PORTS, &ports, ing("web"), (API, 6, 23), true),
        c(PORTS, &ports, ing("web"), (API, 17, 5005), false),
        c(PORTS, &ports, ing("web"), (API, 17, 5011), true),
        c(PORTS, &ports, ing("web"), (API, 6, 5005), true),
        c(PORTS, &ports, ing("web"), (API, 6, 8080), false),
        c(PORTS, &ports, ing("web"), (API, 1, 8), true),
        c(PORTS, &ingress_only, ing("web"), (API, 1, 8), false),
        c(NETWORKS, &networks, eg("web"), (WORLD, 6, 443), false),
        c(NETWORKS, &networks, eg("web"), ("198.51.100.1", 6, 443), true),
        c(NETWORKS, &networks, eg("api"), (WORLD, 6, 443), true),
        c(BASELINE, &banp_egress, eg("web"), (DB, 6, 5432), false),
        c(BASELINE, &banp_egress, eg("web"), (API, 6, 5432), true),
        c(NO_RULES, &ingress_only, eg("web"), (DB, 6, 5432), true),
    ]
}

#[test]
fn documented_tiers_hold_in_every_engine() {
    let kernel = sys::require_kernel("documented_tiers_hold_in_every_engine");
    let mut bad = Vec::new();
    let mut engines: HashMap<String, (SimNode, Option<Loaded>)> = HashMap::new();
    for (n, c) in cases().iter().enumerate() {
        let text = node(&c.policies);
        let cfg = model::parse_str(&text, "anp.yaml").unwrap_or_else(|e| panic!("case {n}: {e}\n{text}"));
        let peer: IpAddr = c.peer.parse().expect("a peer address");
        let own = cfg.endpoint(c.endpoint).expect("the endpoint").addresses().next().expect("an address");
        let ingress = c.direction == Direction::Ingress;
        let (src, dst) = if ingress { (peer, own) } else { (own, peer) };
        let key = FlowKey { src, dst, proto: c.proto, sport: 41_000 + n as u16, dport: c.dport };
        let model_oracle =
            oracle::decide(&cfg, c.endpoint, c.direction, &key).expect("decides") == Verdict::Allow;
        let table = table_verdict(&cfg, c.endpoint, c.direction, &key) == Verdict::Allow;
        let (sim, loaded) = engines.entry(text.clone()).or_insert_with(|| {
            let plan = plan(&cfg).expect("plans");
            let sim = SimNode::new(&plan).expect("the simulator accepts");
            (sim, kernel.then(|| load_plan(&sys::kernel(), &plan).expect("the kernel accepts")))
        });
        let index = cfg.endpoints.iter().position(|e| e.name == c.endpoint).expect("listed") + 1;
        let program = format!("{}_ep_{index}", if ingress { "to" } else { "from" });
        let frame = flow_frame(&key);
        let simulated = sim.run(&program, &frame).expect("runs").retval as u32;
        let kernel_verdict = loaded.as_ref().map(|loaded| {
            loaded.programs[&program].test_run(&TestRunOpts::packet(&frame)).expect("test run").retval
        });
        let want = if c.allowed { TC_ACT_OK as u32 } else { TC_ACT_SHOT as u32 };
        if model_oracle != c.allowed
            || table != c.allowed
            || simulated != want
            || kernel_verdict.is_some_and(|k| k != want)
        {
            bad.push(format!(
                "case {n}: {}\n  {} {} peer {} proto {} port {}: expected {}, oracle {model_oracle}, table {table}, \
                 simulator {simulated}, kernel {kernel_verdict:?}\n{}",
                c.doc,
                c.endpoint,
                c.direction,
                c.peer,
                c.proto,
                c.dport,
                if c.allowed { "allow" } else { "deny" },
                c.policies
            ));
        }
    }
    assert!(bad.is_empty(), "{} cases differ:\n{}", bad.len(), bad.join("\n"));
}

/// The verdict of the resolved policy table, read as the datapath reads it.
fn table_verdict(cfg: &NodeConfig, endpoint: &str, direction: Direction, key: &FlowKey) -> Verdict {
    let resolved = resolve(cfg).expect("resolves");
    let policy = resolved.endpoint(endpoint).expect("a subject").direction(direction);
    let peer = if direction == Direction::Ingress { key.src } else { key.dst };
    let identity = resolved.ipcache().lookup(peer);
    evaluate_entries(&policy.entries, policy.enforced, identity.get(), key.proto, key.dport)
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Random tiers (up to three ANPs of random priority, a NetworkPolicy or CiliumNetworkPolicy
/// or none, a baseline or none): the resolved table must decide every probe as the oracle
/// does.
#[test]
fn random_tiers_agree_with_the_oracle() {
    let cases: u64 =
        std::env::var("SLUICE_ANP_ORACLE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let subjects = [
        ALL_PODS,
        WEB_PODS,
        "{namespaces: {matchLabels: {env: prod}}}",
        "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}",
    ];
    let peers = [
        "{namespaces: {}}",
        "{namespaces: {matchLabels: {env: prod}}}",
        "{namespaces: {matchExpressions: [{key: role, operator: DoesNotExist}]}}",
        "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}",
        "{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}, podSelector: {}}}",
    ];
    let ports = [
        "",
        "\n      ports: [{portNumber: {port: 80}}]",
        "\n      ports: [{portRange: {start: 70, end: 90}}, {portNumber: {protocol: UDP, port: 53}}]",
        "\n      ports: [{namedPort: http}]",
    ];
    let actions = ["Allow", "Deny", "Pass"];
    let nps = [
        "",
        KNP_WEB_FROM_API,
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-world}\nspec:\n  endpointSelector: {}\n  ingressDeny:\n    - fromEntities: [world]\n  egress:\n    - toEndpoints: [{}]\n      toPorts: [{ports: [{port: \"80\"}]}]\n",
    ];
    let probes: [(&str, u8, u16); 10] = [
        (WEB, 6, 80),
        (API, 6, 79),
        (DB, 6, 8080),
        (MON, 17, 53),
        (DB, 6, 90),
        (WORLD, 6, 80),
        (HOST, 6, 80),
        (API, 1, 8),
        ("198.51.100.7", 6, 91),
        (MON, 6, 70),
    ];
    let mut rng = Lcg(0x5eed_a4b9);
    let mut bad = Vec::new();
    for case in 0..cases {
        let mut policies = String::new();
        for i in 0..(rng.next() % 4) {
            let direction = *rng.pick(&["ingress", "egress"]);
            let peers_key = if direction == "ingress" { "from" } else { "to" };
            let mut rules = String::new();
            for _ in 0..(1 + rng.next() % 3) {
                let peer = if direction == "egress" && rng.next().is_multiple_of(4) {
                    "{networks: [198.51.100.0/24, 203.0.113.0/25]}"
                } else {
                    rng.pick(&peers)
                };
                rules += &format!(
                    "    - action: {}\n      {peers_key}: [{peer}]{}\n",
                    rng.pick(&actions),
                    rng.pick(&ports)
                );
            }
            let subject = *rng.pick(&subjects);
            policies += &anp(&format!("a{i}"), (rng.next() % 4) as u16, subject, direction, &rules);
        }
        policies += *rng.pick(&nps[..]);
        if rng.next().is_multiple_of(2) {
            let direction = *rng.pick(&["ingress", "egress"]);
            let peers_key = if direction == "ingress" { "from" } else { "to" };
            let rules = format!(
                "    - action: {}\n      {peers_key}: [{}]{}\n",
                rng.pick(&["Allow", "Deny"]),
                rng.pick(&peers),
                rng.pick(&ports)
            );
            let subject = *rng.pick(&subjects);
            policies += &banp(subject, direction, &rules);
        }
        let text = node(&policies);
        let cfg =
            model::parse_str(&text, "random.yaml").unwrap_or_else(|e| panic!("case {case}: {e}\n{text}"));
        let resolved = resolve(&cfg).expect("resolves");
        let sources = model::sources::policy_sources(&text, "random.yaml").expect("sources");
        for endpoint in &cfg.endpoints {
            let own = endpoint.addresses().next().expect("an address");
            for direction in Direction::ALL {
                for &(peer, proto, dport) in &probes {
                    let peer: IpAddr = peer.parse().expect("an address");
                    if peer == own {
                        continue;
                    }
                    let (src, dst) = if direction == Direction::Ingress { (peer, own) } else { (own, peer) };
                    let key = FlowKey { src, dst, proto, sport: 40_000, dport };
                    let want = oracle::decide(&cfg, &endpoint.name, direction, &key).expect("decides");
                    let policy = resolved.endpoint(&endpoint.name).expect("a subject").direction(direction);
                    let identity = resolved.ipcache().lookup(peer);
                    let got =
                        evaluate_entries(&policy.entries, policy.enforced, identity.get(), proto, dport);
                    let flow = Flow { from: End::Address(src), to: End::Address(dst), proto, dport };
                    let explained = explain(&cfg, &sources, &flow)
                        .expect("explains")
                        .judgements
                        .into_iter()
                        .find(|j| j.endpoint == endpoint.name && j.direction == direction)
                        .map(|j| j.verdict);
                    if got != want || explained != Some(want) {
                        bad.push(format!(
                            "case {case}: {} {direction} peer {peer} proto {proto} port {dport}: oracle {want:?}, table {got:?}, explain {explained:?}\n{policies}",
                            endpoint.name
                        ));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} probes differ; first:\n{}",
        bad.len(),
        bad.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn unsupported_and_invalid_admin_policies_are_refused_at_their_place() {
    let anp_doc = |spec: &str| {
        node(&format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: x}}\nspec:\n{spec}"
        ))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nodes peer",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  egress:\n    - {action: Deny, to: [{nodes: {matchLabels: {a: b}}}]}\n"),
            "`nodes` peers are not supported",
        ),
        (
            "priority above 1000",
            anp_doc("  priority: 1001\n  subject: {namespaces: {}}\n"),
            "priority 1001 is above 1000",
        ),
        (
            "no priority",
            anp_doc("  subject: {namespaces: {}}\n"),
            "missing field `priority`",
        ),
        (
            "two subjects",
            anp_doc("  priority: 1\n  subject: {namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}\n"),
            "exactly one of namespaces or pods",
        ),
        (
            "unknown action",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Drop, from: [{namespaces: {}}]}\n"),
            "unknown variant `Drop`",
        ),
        (
            "unknown field",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Deny, from: [{namespaces: {}}], sameLabels: [a]}\n"),
            "unknown field `sameLabels`",
        ),
        (
            "networks on ingress",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Deny, from: [{networks: [10.0.0.0/8]}]}\n"),
            "`networks` peers are for egress rules only",
        ),
        (
            "empty from",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Deny, from: []}\n"),
            "`from` must list at least one peer",
        ),
        (
            "range end not above start",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Deny, from: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 90}}]}\n"),
            "end 90 must be greater than start 90",
        ),
        (
            "two port kinds",
            anp_doc("  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 1}, namedPort: http}]}\n"),
            "exactly one of portNumber, portRange or namedPort",
        ),
        (
            "baseline Pass",
            node("---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  ingress:\n    - {action: Pass, from: [{namespaces: {}}]}\n"),
            "action is Allow or Deny",
        ),
        (
            "baseline not named default",
            node("---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: other}\nspec:\n  subject: {namespaces: {}}\n"),
            "metadata.name=\"default\"",
        ),
        (
            "namespaced",
            node("---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: x, namespace: default}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n"),
            "cluster-scoped",
        ),
        (
            "wrong apiVersion",
            node("---\napiVersion: policy.networking.k8s.io/v1\nkind: AdminNetworkPolicy\nmetadata: {name: x}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n"),
            "expected policy.networking.k8s.io/v1alpha1 for kind AdminNetworkPolicy",
        ),
    ];
    let mut bad = Vec::new();
    for (name, text, want) in &cases {
        match model::parse_str(text, "anp.yaml") {
            Ok(_) => bad.push(format!("{name}: accepted, expected an error containing {want:?}")),
            Err(e) => {
                let shown = e.to_string();
                // Located: anp.yaml:LINE:COL, past the Node document's lines.
                let located = shown
                    .strip_prefix("anp.yaml:")
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|l| l.parse::<usize>().ok());
                if !shown.contains(want) || located.is_none_or(|line| line < 18) {
                    bad.push(format!("{name}: expected a located error containing {want:?}, got {shown}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn explain_names_the_tier_and_rule_that_decided() {
    let deny_prod = anp(
        "deny-prod",
        20,
        WEB_PODS,
        "ingress",
        "    - {name: from-prod, action: Deny, from: [{namespaces: {matchLabels: {env: prod}}}]}\n",
    );
    let pass_api = anp("pass-api", 4, WEB_PODS, "ingress", "    - {action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}}]}\n");
    let baseline = banp(ALL_PODS, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}\n");
    let text = node(&format!("{deny_prod}{pass_api}{baseline}"));
    let cfg = model::parse_str(&text, "anp.yaml").expect("parses");
    let sources = model::sources::policy_sources(&text, "anp.yaml").expect("sources");
    let show = |from: &str, to: &str| {
        let flow = Flow { from: End::parse(from), to: End::parse(to), proto: 6, dport: 80 };
        explain(&cfg, &sources, &flow).expect("explains").to_string()
    };
    let cases = [
        (
            "db",
            "web",
            "flow 10.9.1.12 -> 10.9.0.10 TCP port 80\n  egress db: allowed: no policy selecting it isolates this direction\n  \
             ingress web: denied: denied by the admin tier\n    AdminNetworkPolicy deny-prod (priority 20) rule 0 at \
             anp.yaml:27:7 (spec.ingress[0])\nverdict: denied\n",
        ),
        (
            "api",
            "web",
            "flow 10.9.0.11 -> 10.9.0.10 TCP port 80\n  egress api: allowed: no policy selecting it isolates this direction\n  \
             ingress web: denied: no admin rule, NetworkPolicy or CiliumNetworkPolicy decides; baseline\n    \
             AdminNetworkPolicy pass-api (priority 4) rule 0 at anp.yaml:36:7 (spec.ingress[0])\n    \
             BaselineAdminNetworkPolicy default rule 0 at anp.yaml:44:7 (spec.ingress[0])\nverdict: denied\n",
        ),
    ];
    let mut bad = Vec::new();
    for (from, to, want) in cases {
        let got = show(from, to);
        if got != want {
            bad.push(format!("{from} -> {to}:\n--- expected\n{want}--- got\n{got}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
