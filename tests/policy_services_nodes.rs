//! CiliumNetworkPolicy `toServices` (`k8sService`, `k8sServiceSelector`) and
//! `fromNodes`/`toNodes`, as Cilium documents and implements them. Each case quotes the
//! sentence (or, where the documentation is silent, the Cilium code) it implements and is
//! judged by the model's oracle (`policy::oracle::decide`), by the resolved policy table (the
//! scan the datapath implements), by `sluice policy explain`, by the compiled endpoint
//! program in the simulator and, when privileged, in the kernel (BPF_PROG_TEST_RUN). The
//! rejection table checks what stays refused, at its place, with its message.

#[path = "support/rejections.rs"]
mod rejections;

use sluice::golden::probes::flow_frame;
use sluice::maps::policy::{TC_ACT_OK, TC_ACT_SHOT};
use sluice::model::labels::{Requirement, Selector, NAMESPACE_LABEL};
use sluice::model::policy::{CidrRule, Peer};
use sluice::model::{self, Direction, NodeConfig};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::plan;
use sluice::node::sim::SimNode;
use sluice::policy::explain::{explain, End, Flow};
use sluice::policy::{evaluate_entries, oracle, resolve, FlowKey, Verdict};
use sluice::sys::{self, TestRunOpts};
use std::collections::HashMap;
use std::net::IpAddr;

// Endpoints of this node.
const WEB: &str = "10.9.0.10";
const API: &str = "10.9.0.11";
const DB: &str = "10.9.1.12";
const HOST: &str = "192.168.1.5";
// Outside the cluster.
const EXT_DB: &str = "203.0.113.20";
const WORLD: &str = "203.0.113.21";
// Other nodes (overlay peers) and a pod behind one of them.
const CONTROL: &str = "172.16.0.2";
const GPU: &str = "172.16.0.3";
const PLAIN: &str = "172.16.0.4";
const REMOTE_POD: &str = "10.10.2.7";

/// Endpoints web (app=web) and api (app=api) in `default`, db (app=db) in `prod`. Services:
/// `default/api-svc` (selector app=api, labels tier=backend, backend api:8080),
/// `prod/db-svc` (selector app=db, labels tier=backend, backend db:5432) and
/// `default/ext-db` (no selector, labels kind=external; EndpointSlice addresses 203.0.113.20
/// and api's own address). Overlay peers: `control` (node-role.kubernetes.io/control-plane=""),
/// `gpu` (pool=gpu, behind it the pod 10.10.2.7) and `plain` (no labels). The node's own traffic
/// is judged by policy (`allowLocalhost: policy`) so that the cases can show which peers the
/// node itself is.
fn node(settings: &str, policies: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1
kind: Node
metadata: {{name: n1}}
spec:
  policy: {{allowLocalhost: policy{settings}}}
  hostAddresses: [\"{HOST}\"]
  router: {{ipv4: 10.9.0.1}}
  overlay:
    local: 172.16.0.1
    peers:
      - {{name: control, address: {CONTROL}, prefixes: [10.10.1.0/24], labels: {{node-role.kubernetes.io/control-plane: ''}}}}
      - name: gpu
        address: {GPU}
        prefixes: [10.10.2.0/24]
        labels: {{pool: gpu}}
        endpoints: [{{name: trainer, ipv4: {REMOTE_POD}, labels: {{app: trainer}}}}]
      - {{name: plain, address: {PLAIN}, prefixes: [10.10.3.0/24]}}
  endpoints:
    - {{name: web, interface: lxs0, ipv4: {WEB}, labels: {{app: web}}}}
    - {{name: api, interface: lxs1, ipv4: {API}, labels: {{app: api}}}}
    - {{name: db, namespace: prod, interface: lxs2, ipv4: {DB}, labels: {{app: db}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: api-svc, labels: {{tier: backend}}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: api}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: api-svc-1, labels: {{kubernetes.io/service-name: api-svc}}}}
addressType: IPv4
endpoints: [{{addresses: [{API}]}}]
ports: [{{port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db-svc, namespace: prod, labels: {{tier: backend}}}}
spec:
  clusterIP: 10.96.0.11
  selector: {{app: db}}
  ports: [{{port: 5432}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-svc-1, namespace: prod, labels: {{kubernetes.io/service-name: db-svc}}}}
addressType: IPv4
endpoints: [{{addresses: [{DB}]}}]
ports: [{{port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext-db, labels: {{kind: external}}}}
spec:
  clusterIP: 10.96.0.12
  ports: [{{port: 5432}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ext-db-1, labels: {{kubernetes.io/service-name: ext-db}}}}
addressType: IPv4
endpoints: [{{addresses: [{EXT_DB}]}}, {{addresses: [{API}]}}]
ports: [{{port: 5432}}]
{policies}"
    )
}

/// With `policy.nodeSelectorLabels: true`.
const NODE_LABELS: &str = ", nodeSelectorLabels: true";

const SERVICES_BASED: &str =
    "Cilium, Documentation/security/policy/language.rst, Services based: \"Policies \
     can reference Kubernetes Services by name or label selector. This feature uses the discovered services' \
     label selector as an endpoint selector within the policy.\"";
const WITHOUT_SELECTOR: &str = "Cilium, Documentation/security/policy/language.rst, Services based: \"Services \
     without selectors are handled differently. The IPs in the service's EndpointSlices are, converted to CIDR \
     selectors. CIDR selectors cannot select pods, and that limitation applies here as well.\"";
const ANY_NAMESPACE: &str = "Cilium, pkg/policy/k8s/service.go (the documentation is silent): serviceRefMatches \
     is `(ref.Namespace == svcID.Namespace || ref.Namespace == \"\") && ref.ServiceName == svcID.Name`, and \
     serviceSelectorMatches likewise needs `sel.Namespace == svcID.Namespace || sel.Namespace == \"\"`: without \
     a namespace, a Service of that name (labels) in any namespace.";
const ALL_PORTS: &str = "Cilium, pkg/policy/api/rule_validation.go: toServices cannot carry toPorts (\"Combining \
     ToServices and ToPorts is not supported yet\"), so a toServices rule allows every port of the backends it \
     selects; egress policy sees the backend (after the load balancer), as Kubernetes and Cilium do.";
const NO_MATCH: &str = "Cilium, Documentation/security/policy/language.rst, Layer 3: \"An endpoint can be put \
     into the default deny mode at ingress or egress if a rule selects the endpoint and contains the respective \
     rule section ingress or egress.\" (a toServices entry that selects no Service allows nothing)";
const NODE_BASED: &str =
    "Cilium, Documentation/security/policy/language.rst, Node based: \"This example shows \
     how to allow all endpoints with the label env=prod to receive traffic only from control plane (labeled \
     node-role.kubernetes.io/control-plane=\"\") nodes in the cluster (or clustermesh).\"";
const NODE_IDENTITY: &str = "Cilium, Documentation/security/policy/language.rst, Node based: \"When \
     --enable-node-selector-labels=true is specified, every cilium-agent allocates a different local security \
     identity for all other nodes.\" — other nodes only: Cilium adds `reserved:remote-node` to every \
     fromNodes/toNodes selector \"as all nodes have this label\" (cilium/cilium#36657), and the node itself is \
     `host`.";
const REMOTE_NODE: &str =
    "Cilium, Documentation/security/policy/language.rst, Entities based: \"remote-node: Any \
     node in any of the connected clusters other than the local host.\" (with per-node identities too)";

struct Case {
    doc: &'static str,
    settings: &'static str,
    policies: String,
    endpoint: &'static str,
    direction: Direction,
    peer: &'static str,
    proto: u8,
    dport: u16,
    allowed: bool,
}

fn cnp(name: &str, subject: &str, section: &str, entries: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {subject}}}}}\n  {section}:\n{entries}"
    )
}

fn cases() -> Vec<Case> {
    let c = |doc, settings, policies: &str, (endpoint, direction), (peer, proto, dport), allowed| Case {
        doc,
        settings,
        policies: policies.to_owned(),
        endpoint,
        direction,
        peer,
        proto,
        dport,
        allowed,
    };
    let eg = |e| (e, Direction::Egress);
    let ing = |e| (e, Direction::Ingress);
    let services = |list: &str| cnp("to-svc", "web", "egress", &format!("    - toServices: {list}\n"));
    let by_name = services("[{k8sService: {serviceName: api-svc, namespace: default}}]");
    let by_name_any_ns = services("[{k8sService: {serviceName: db-svc}}]");
    let by_name_wrong_ns = services("[{k8sService: {serviceName: db-svc, namespace: default}}]");
    let by_labels = services("[{k8sServiceSelector: {selector: {matchLabels: {tier: backend}}}}]");
    let by_labels_prod =
        services("[{k8sServiceSelector: {selector: {matchLabels: {tier: backend}}, namespace: prod}}]");
    let by_expression = services(
        "[{k8sServiceSelector: {selector: {matchExpressions: [{key: kind, operator: In, values: [external]}]}}}]",
    );
    let external = services("[{k8sService: {serviceName: ext-db}}]");
    let nothing = services("[{k8sService: {serviceName: no-such-svc}}]");
    let from_control = cnp(
        "from-control",
        "web",
        "ingress",
        "    - fromNodes: [{matchLabels: {node-role.kubernetes.io/control-plane: ''}}]\n",
    );
    let to_gpu = cnp(
        "to-gpu",
        "web",
        "egress",
        "    - toNodes: [{matchExpressions: [{key: pool, operator: Exists}]}]\n",
    );
    let from_remote_nodes = cnp("from-nodes", "web", "ingress", "    - fromEntities: [remote-node]\n");
    let from_cluster = cnp("from-cluster", "web", "ingress", "    - fromEntities: [cluster]\n");
    vec![
        c(SERVICES_BASED, "", &by_name, eg("web"), (API, 6, 8080), true),
        c(SERVICES_BASED, "", &by_name, eg("web"), (DB, 6, 5432), false),
        c(SERVICES_BASED, "", &by_name, eg("web"), (WORLD, 6, 443), false),
        c(SERVICES_BASED, "", &by_name, eg("api"), (DB, 6, 5432), true),
        c(SERVICES_BASED, "", &by_labels, eg("web"), (API, 6, 8080), true),
        c(SERVICES_BASED, "", &by_labels, eg("web"), (DB, 6, 5432), true),
        c(SERVICES_BASED, "", &by_labels, eg("web"), (EXT_DB, 6, 5432), false),
        c(SERVICES_BASED, "", &by_labels_prod, eg("web"), (DB, 6, 5432), true),
        c(SERVICES_BASED, "", &by_labels_prod, eg("web"), (API, 6, 8080), false),
        c(ANY_NAMESPACE, "", &by_name_any_ns, eg("web"), (DB, 6, 5432), true),
        c(ANY_NAMESPACE, "", &by_name_wrong_ns, eg("web"), (DB, 6, 5432), false),
        c(ALL_PORTS, "", &by_name, eg("web"), (API, 17, 53), true),
        c(ALL_PORTS, "", &by_name, eg("web"), (API, 6, 9999), true),
        c(WITHOUT_SELECTOR, "", &external, eg("web"), (EXT_DB, 6, 5432), true),
        c(WITHOUT_SELECTOR, "", &external, eg("web"), (WORLD, 6, 5432), false),
        c(WITHOUT_SELECTOR, "", &external, eg("web"), (API, 6, 5432), false),
        c(WITHOUT_SELECTOR, "", &by_expression, eg("web"), (EXT_DB, 6, 5432), true),
        c(WITHOUT_SELECTOR, "", &by_expression, eg("web"), (API, 6, 8080), false),
        c(NO_MATCH, "", &nothing, eg("web"), (API, 6, 8080), false),
        c(NO_MATCH, "", &nothing, eg("web"), (EXT_DB, 6, 5432), false),
        c(NODE_BASED, NODE_LABELS, &from_control, ing("web"), (CONTROL, 6, 80), true),
        c(NODE_BASED, NODE_LABELS, &from_control, ing("web"), (GPU, 6, 80), false),
        c(NODE_BASED, NODE_LABELS, &from_control, ing("web"), (PLAIN, 6, 80), false),
        c(NODE_BASED, NODE_LABELS, &from_control, ing("web"), (REMOTE_POD, 6, 80), false),
        c(NODE_BASED, NODE_LABELS, &from_control, ing("api"), (GPU, 6, 80), true),
        c(NODE_IDENTITY, NODE_LABELS, &from_control, ing("web"), (HOST, 6, 80), false),
        c(NODE_BASED, NODE_LABELS, &to_gpu, eg("web"), (GPU, 6, 443), true),
        c(NODE_BASED, NODE_LABELS, &to_gpu, eg("web"), (CONTROL, 6, 443), false),
        c(NODE_BASED, NODE_LABELS, &to_gpu, eg("web"), (REMOTE_POD, 6, 443), false),
        c(NODE_IDENTITY, NODE_LABELS, &to_gpu, eg("web"), (HOST, 6, 443), false),
        c(REMOTE_NODE, NODE_LABELS, &from_remote_nodes, ing("web"), (CONTROL, 6, 80), true),
        c(REMOTE_NODE, NODE_LABELS, &from_remote_nodes, ing("web"), (PLAIN, 6, 80), true),
        c(REMOTE_NODE, NODE_LABELS, &from_remote_nodes, ing("web"), (HOST, 6, 80), false),
        c(REMOTE_NODE, NODE_LABELS, &from_cluster, ing("web"), (GPU, 6, 80), true),
        c(REMOTE_NODE, "", &from_remote_nodes, ing("web"), (GPU, 6, 80), true),
    ]
}

#[test]
fn documented_service_and_node_peers_hold_in_every_engine() {
    let kernel = sys::require_kernel("documented_service_and_node_peers_hold_in_every_engine");
    let mut bad = Vec::new();
    let mut engines: HashMap<String, (SimNode, Option<Loaded>)> = HashMap::new();
    for (n, c) in cases().iter().enumerate() {
        let text = node(c.settings, &c.policies);
        let cfg = model::parse_str(&text, "peers.yaml").unwrap_or_else(|e| panic!("case {n}: {e}\n{text}"));
        let peer: IpAddr = c.peer.parse().expect("a peer address");
        let own = cfg.endpoint(c.endpoint).expect("the endpoint").addresses().next().expect("an address");
        let ingress = c.direction == Direction::Ingress;
        let (src, dst) = if ingress { (peer, own) } else { (own, peer) };
        let key = FlowKey { src, dst, proto: c.proto, sport: 41_000 + n as u16, dport: c.dport };
        let model_oracle =
            oracle::decide(&cfg, c.endpoint, c.direction, &key).expect("decides") == Verdict::Allow;
        let table = table_verdict(&cfg, c.endpoint, c.direction, &key) == Verdict::Allow;
        let sources = model::sources::policy_sources(&text, "peers.yaml").expect("sources");
        let flow = Flow { from: End::Address(src), to: End::Address(dst), proto: c.proto, dport: c.dport };
        let explained = explain(&cfg, &sources, &flow)
            .expect("explains")
            .judgements
            .into_iter()
            .find(|j| j.endpoint == c.endpoint && j.direction == c.direction)
            .map(|j| j.verdict == Verdict::Allow);
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
            || explained != Some(c.allowed)
            || simulated != want
            || kernel_verdict.is_some_and(|k| k != want)
        {
            bad.push(format!(
                "case {n}: {}\n  {} {} peer {} proto {} port {}: expected {}, oracle {model_oracle}, table {table}, \
                 explain {explained:?}, simulator {simulated}, kernel {kernel_verdict:?}\n{}",
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

/// What toServices lowers to, in the model: the selector of a Service with one, scoped to
/// the Service's namespace; host prefixes of a selector-less Service's slice addresses.
#[test]
fn to_services_lowers_to_the_services_selector_or_slice_addresses() {
    let policies = cnp(
        "p",
        "web",
        "egress",
        "    - toServices: [{k8sService: {serviceName: db-svc}}, {k8sService: {serviceName: ext-db}}]\n",
    );
    let cfg = model::parse_str(&node("", &policies), "peers.yaml").expect("parses");
    let rule = &cfg.policies[0].rules[0].egress;
    assert!(rule.enforced);
    assert_eq!(rule.allow.len(), 1, "{:?}", rule.allow);
    let host = |a: &str| {
        Peer::Cidr(CidrRule { cidr: model::Cidr::host(a.parse().expect("an address")), except: Vec::new() })
    };
    let db_pods = Peer::Endpoints(Selector::new([
        Requirement::equals("app", "db"),
        Requirement::equals(NAMESPACE_LABEL, "prod"),
    ]));
    let mut want = vec![host(API), host(EXT_DB), db_pods];
    want.sort();
    assert_eq!(rule.allow[0].peers, want);
    assert!(rule.allow[0].l4.is_empty() && rule.allow[0].named_ports.is_empty(), "every port");
    // Per-node identities exist only with the setting; peers then carry their own.
    let plain = resolve(&cfg).expect("resolves");
    let labelled =
        resolve(&model::parse_str(&node(NODE_LABELS, ""), "peers.yaml").expect("parses")).expect("resolves");
    let id = |r: &sluice::policy::Resolved, a: &str| r.ipcache().lookup(a.parse().expect("an address")).get();
    assert_eq!((id(&plain, CONTROL), id(&plain, GPU)), (6, 6));
    let (control, gpu, bare) = (id(&labelled, CONTROL), id(&labelled, GPU), id(&labelled, PLAIN));
    assert!(control >> 24 == 2 && gpu >> 24 == 2 && bare >> 24 == 2, "{control:#x} {gpu:#x} {bare:#x}");
    assert!(control != gpu && gpu != bare && control != bare);
}

#[test]
fn unsupported_service_and_node_peers_are_refused_at_their_place() {
    let with =
        |settings: &str, entries: &str, section: &str| node(settings, &cnp("p", "web", section, entries));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "to-services-with-ports",
            with("", "    - toServices: [{k8sService: {serviceName: api-svc}}]\n      toPorts: [{ports: [{port: '80'}]}]\n", "egress"),
            "to-services-with-ports.yaml:73:7: spec.egress[0]: toServices and toPorts cannot be combined in one entry (Cilium rejects it too: \"Combining ToServices and ToPorts is not supported yet\"); toServices allows every port of the service's backends",
        ),
        (
            "to-services-and-endpoints",
            with("", "    - toServices: [{k8sService: {serviceName: api-svc}}]\n      toEndpoints: [{}]\n", "egress"),
            "to-services-and-endpoints.yaml:73:7: spec.egress[0]: toEndpoints and toServices cannot be combined in one entry (Cilium rejects it too); write them as separate entries",
        ),
        (
            "to-services-deny",
            with("", "    - toServices: [{k8sService: {serviceName: api-svc}}]\n", "egressDeny"),
            "to-services-deny.yaml:73:19: spec.egressDeny[0].toServices: toServices is not supported in egressDeny: Cilium translates toServices in egress (allow) rules only; deny the service's pods with toEndpoints or its addresses with toCIDR",
        ),
        (
            "to-services-both-kinds",
            with(
                "",
                "    - toServices: [{k8sService: {serviceName: api-svc}, k8sServiceSelector: {selector: {}}}]\n",
                "egress",
            ),
            "to-services-both-kinds.yaml:73:20: spec.egress[0].toServices[0]: give one of k8sService and k8sServiceSelector (with both, Cilium reads only k8sServiceSelector)",
        ),
        (
            "to-services-neither",
            with("", "    - toServices: [{}]\n", "egress"),
            "to-services-neither.yaml:73:20: spec.egress[0].toServices[0]: a toServices entry needs k8sService or k8sServiceSelector",
        ),
        (
            "to-services-no-name",
            with("", "    - toServices: [{k8sService: {namespace: default}}]\n", "egress"),
            "to-services-no-name.yaml:73:33: spec.egress[0].toServices[0].k8sService: missing field `serviceName`",
        ),
        (
            "to-services-on-ingress",
            with("", "    - toServices: [{k8sService: {serviceName: api-svc}}]\n", "ingress"),
            "to-services-on-ingress.yaml:73:7: spec.ingress[0]: unknown field `toServices`, expected one of `fromEndpoints`, `fromCIDR`, `fromCIDRSet`, `fromEntities`, `toPorts`, `icmps`, `fromNodes`",
        ),
        (
            "from-nodes-without-node-labels",
            with("", "    - fromNodes: [{matchLabels: {pool: gpu}}]\n", "ingress"),
            "from-nodes-without-node-labels.yaml:73:18: spec.ingress[0].fromNodes: fromNodes needs `policy.nodeSelectorLabels: true` in the Node's spec (Cilium: \"FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" flag is set\"); or use fromEntities (host, remote-node)",
        ),
        (
            "to-nodes-without-node-labels",
            with("", "    - toNodes: [{matchLabels: {pool: gpu}}]\n", "egress"),
            "to-nodes-without-node-labels.yaml:73:16: spec.egress[0].toNodes: toNodes needs `policy.nodeSelectorLabels: true` in the Node's spec (Cilium: \"FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" flag is set\"); or use toEntities (host, remote-node)",
        ),
        (
            "from-nodes-and-entities",
            with(NODE_LABELS, "    - fromNodes: [{matchLabels: {pool: gpu}}]\n      fromEntities: [host]\n", "ingress"),
            "from-nodes-and-entities.yaml:73:7: spec.ingress[0]: fromEntities and fromNodes cannot be combined in one entry (Cilium rejects it too); write them as separate entries",
        ),
    ];
    rejections::assert_unique_names(&cases);
    rejections::assert_exact_errors(&cases);
    rejections::assert_located(&cases);
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

/// Random Cilium policies mixing node selectors, node entities, toServices items and
/// endpoint peers, with and without `nodeSelectorLabels`: the resolved table and `policy
/// explain` must decide every probe as the oracle does.
#[test]
fn random_service_and_node_peers_agree_with_the_oracle() {
    let cases: u64 =
        std::env::var("SLUICE_PEERS_ORACLE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let node_peers = [
        "fromNodes: [{matchLabels: {node-role.kubernetes.io/control-plane: ''}}]",
        "fromNodes: [{matchExpressions: [{key: pool, operator: Exists}]}]",
        "fromNodes: [{}]",
        "fromNodes: [{matchExpressions: [{key: pool, operator: NotIn, values: [gpu]}]}]",
        "fromEntities: [remote-node]",
        "fromEntities: [cluster]",
        "fromEndpoints: [{matchLabels: {app: api}}]",
    ];
    let services = [
        "toServices: [{k8sService: {serviceName: api-svc}}]",
        "toServices: [{k8sService: {serviceName: db-svc, namespace: prod}}]",
        "toServices: [{k8sService: {serviceName: ext-db}}]",
        "toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: backend}}}}]",
        "toServices: [{k8sServiceSelector: {selector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}}]",
    ];
    let ports = ["", ", toPorts: [{ports: [{port: '80', protocol: TCP}]}]"];
    let probes: [(&str, u8, u16); 11] = [
        (CONTROL, 6, 80),
        (GPU, 6, 80),
        (PLAIN, 17, 53),
        (REMOTE_POD, 6, 80),
        (HOST, 6, 80),
        (API, 6, 8080),
        (DB, 6, 5432),
        (WEB, 6, 80),
        (EXT_DB, 6, 5432),
        (WORLD, 6, 80),
        (GPU, 6, 443),
    ];
    let mut rng = Lcg(0x5eed_70de);
    let mut bad = Vec::new();
    for case in 0..cases {
        let mut policies = String::new();
        for i in 0..1 + rng.next() % 3 {
            let subject = *rng.pick(&["web", "api", "db"]);
            let (section, entry) = if rng.next().is_multiple_of(2) {
                let peer = rng.pick(&node_peers).to_string();
                let deny = rng.next().is_multiple_of(4);
                let section = if deny { "ingressDeny" } else { "ingress" };
                (section, format!("{peer}{}", rng.pick(&ports)))
            } else if rng.next().is_multiple_of(2) {
                ("egress", rng.pick(&services).to_string())
            } else {
                let peer = rng.pick(&node_peers).replace("from", "to");
                (*rng.pick(&["egress", "egressDeny"]), format!("{peer}{}", rng.pick(&ports)))
            };
            policies += &cnp(&format!("p{i}"), subject, section, &format!("    - {{{entry}}}\n"));
        }
        // Node selectors need the setting; without them, half the nodes have it anyway.
        let settings =
            if policies.contains("Nodes") || rng.next().is_multiple_of(2) { NODE_LABELS } else { "" };
        let text = node(settings, &policies);
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
                            "case {case}: {} {direction} peer {peer} proto {proto} port {dport}: oracle {want:?}, table {got:?}, explain {explained:?}\n{settings}\n{policies}",
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
