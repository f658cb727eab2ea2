//! Policy semantics as the Kubernetes and Cilium documentation state them: each case quotes
//! the sentence it implements, gives a node file and one flow, and the verdict the
//! documentation implies. Every case is judged by the model's oracle
//! (`sluice::policy::oracle::decide`), by the document oracle (`support/doc_oracle.rs`, which
//! reads the YAML as written), by the compiled endpoint program in the simulator, and, when
//! privileged, by the same program in the kernel (BPF_PROG_TEST_RUN). All four must agree
//! with the table.

#[path = "support/doc_oracle.rs"]
mod doc_oracle;

use sluice::golden::probes::flow_frame;
use sluice::maps::policy::{TC_ACT_OK, TC_ACT_SHOT};
use sluice::model::{self, Direction};
use sluice::node::load::{load_plan, Loaded};
use sluice::node::plan;
use sluice::node::sim::SimNode;
use sluice::policy::{oracle, FlowKey, Verdict};
use sluice::sys::{self, TestRunOpts};
use std::collections::HashMap;
use std::net::IpAddr;

const HOST: &str = "192.168.1.5";
const WORLD: &str = "203.0.113.9";
const API: &str = "10.9.0.11";
const DB: &str = "10.9.1.12";

/// A node with endpoints `web` (10.9.0.10, app=web, named port http = TCP 8080) and `api`
/// (10.9.0.11, app=api, dns = UDP 53, http = TCP 9090) in `default` and `db` (10.9.1.12, app=db) in `prod`, the host address 192.168.1.5, `spec.policy` as given, and `policies`.
fn node(settings: &str, policies: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: sem}}\nspec:\n  hostAddresses: [\"{HOST}\", \"2001:db8:ffff::5\"]\n{settings}  endpoints:\n    - {{name: api, interface: lxs0, ipv4: {API}, ipv6: \"fd00::b\", labels: {{app: api}}, ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: http, port: 9090}}]}}\n    - {{name: web, interface: lxs1, ipv4: 10.9.0.10, ipv6: \"fd00::a\", labels: {{app: web}}, ports: [{{name: http, port: 8080}}]}}\n    - {{name: db, namespace: prod, interface: lxs2, ipv4: {DB}, labels: {{app: db}}}}\n{policies}"
    )
}

const CNP_WEB_FROM_API: &str = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-api}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
";

const KNP_WEB_FROM_API: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-api}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: api}}}]
";

struct Case {
    /// The documentation sentence the case implements, and where it is.
    doc: &'static str,
    settings: &'static str,
    policies: String,
    /// The endpoint whose policy judges the flow, and in which direction.
    endpoint: &'static str,
    direction: Direction,
    /// The other side of the flow (source for ingress, destination for egress).
    peer: &'static str,
    proto: u8,
    /// Destination port, or ICMP type.
    dport: u16,
    allowed: bool,
}

fn case(
    doc: &'static str,
    settings: &'static str,
    policies: &str,
    (endpoint, direction): (&'static str, Direction),
    (peer, proto, dport): (&'static str, u8, u16),
    allowed: bool,
) -> Case {
    Case { doc, settings, policies: policies.to_owned(), endpoint, direction, peer, proto, dport, allowed }
}

const K8S_NODE: &str =
    "Kubernetes, Network Policies: \"When a pod is isolated for ingress, the only allowed \
                        connections into the pod are those from the pod's node and those allowed by the \
                        ingress list of some NetworkPolicy that applies to the pod for ingress.\"";
const CILIUM_LOCALHOST: &str = "Cilium agent, --allow-localhost: \"Policy when to allow local stack to reach \
                                local endpoints { auto | always | policy }\" (default auto; \"Kubernetes demands \
                                that the localhost can always reach local pods\", so auto is always)";
const CILIUM_DEFAULT_DENY: &str =
    "Cilium, Rule.enableDefaultDeny: \"If not specified, the default is true for \
                                   each traffic direction that has rules, and false otherwise.\"";
const CILIUM_DENY_WINS: &str = "Cilium, Deny Policies: \"Deny policies take precedence over allow policies, \
                                regardless of whether they are a Cilium Network Policy, a Clusterwide Cilium \
                                Network Policy or even a Kubernetes Network Policy.\"";
const CILIUM_ICMP_NAMES: &str =
    "Cilium, ICMPField.Type: \"It should be an 8bit code (0-255), or it's CamelCase \
                                 name (for example, \\\"EchoReply\\\").\"";
const CILIUM_PORT_ZERO: &str =
    "Cilium, PortProtocol validation: port `0` is accepted (\"L7 rules can not be \
                                used when a port is 0\") and its L4 filter is a wildcard port";
const K8S_POLICY_TYPES: &str = "Kubernetes, NetworkPolicySpec.policyTypes: \"List of rule types that the \
                                NetworkPolicy relates to.\" (rules of a type it leaves out have no effect)";
const CILIUM_ENTITIES: &str =
    "Cilium, Entities Based: \"remote-node: Any node in any of the connected clusters \
                               other than the local host.\" (in a node file alone, no address is one)";

const CILIUM_CLUSTERWIDE: &str = "Cilium, CiliumClusterwideNetworkPolicy: \"similar to CiliumNetworkPolicy, \
                                  except (1) policies defined by CiliumClusterwideNetworkPolicy are \
                                  non-namespaced and are cluster-scoped\"";
const K8S_NAMESPACE_SELECTOR: &str =
    "Kubernetes, NetworkPolicyPeer.namespaceSelector: \"Selects namespaces using \
                                      cluster-scoped labels. This field follows standard label selector \
                                      semantics\"";
const CILIUM_NAMESPACE_LABELS: &str = "Cilium gives each pod its namespace's labels as \
                                       io.cilium.k8s.namespace.labels.<key> (pkg/k8s: \
                                       PodNamespaceMetaLabels), which CiliumNetworkPolicy selectors test";

/// Namespace documents: prod is env=prod, default is env=dev.
const NAMESPACES: &str = "---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {env: dev, team: web}}
";

const K8S_NAMED_PORT: &str = "Kubernetes, NetworkPolicyPort.port: \"port represents the port on the given \
                              protocol. This can either be a numerical or named port on a pod.\"";
const CILIUM_NAMED_PORT: &str =
    "Cilium, PortProtocol.port: \"Port can be an L4 port number, or a name in the \
                                 form of \\\"http\\\" or \\\"http-8080\\\".\"";

fn cases() -> Vec<Case> {
    let ingress = |e| (e, Direction::Ingress);
    let egress = |e| (e, Direction::Egress);
    let policy_mode = "  policy: {allowLocalhost: policy}\n";
    let with_deny_host = format!(
        "{CNP_WEB_FROM_API}  ingressDeny:\n    - fromEntities: [host]\n      toPorts: [{{ports: [{{port: \"22\"}}]}}]\n"
    );
    let cnp_allow_host = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-host}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [host]
";
    let broad = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broad}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
  ingressDeny:
    - fromCIDR: [\"203.0.113.0/24\"]
";
    let forced = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: forced}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {egress: true}
";
    let icmp_names = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
";
    let port_zero = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-tcp}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]
";
    let ingress_only = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  egress:
    - to: [{podSelector: {matchLabels: {app: api}}}]
";
    let remote_node = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-nodes}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [remote-node, kube-apiserver, health, init, ingress, unmanaged]
";
    let clusterwide = "---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: from-api-anywhere}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
";
    let db_from_dev = format!(
        "{NAMESPACES}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-from-dev, namespace: prod}}
spec:
  podSelector: {{}}
  ingress:
    - from: [{{namespaceSelector: {{matchLabels: {{env: dev}}}}}}]
"
    );
    let web_from_prod = format!(
        "{NAMESPACES}---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web-from-prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{io.cilium.k8s.namespace.labels.env: prod}}
          matchExpressions: [{{key: io.kubernetes.pod.namespace, operator: Exists}}]
"
    );
    let knp_named = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-http}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
    - ports: [{port: http}]
  egress:
    - ports: [{port: dns, protocol: UDP}]
";
    let cnp_named = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api-dns}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{}]
      toPorts: [{ports: [{port: DNS}, {port: http, protocol: TCP}]}]
";
    vec![
        // web's http is 8080, api's 9090: one rule, each subject's own number.
        case(K8S_NAMED_PORT, "", knp_named, ingress("web"), (WORLD, 6, 8080), true),
        case(K8S_NAMED_PORT, "", knp_named, ingress("web"), (WORLD, 6, 9090), false),
        case(K8S_NAMED_PORT, "", knp_named, ingress("api"), (WORLD, 6, 9090), true),
        case(K8S_NAMED_PORT, "", knp_named, ingress("api"), (WORLD, 6, 8080), false),
        // Egress: the peer's named port; outside addresses have none.
        case(K8S_NAMED_PORT, "", knp_named, egress("web"), (API, 17, 53), true),
        case(K8S_NAMED_PORT, "", knp_named, egress("web"), (WORLD, 17, 53), false),
        case(K8S_NAMED_PORT, "", knp_named, egress("web"), (API, 6, 53), false),
        case(CILIUM_NAMED_PORT, "", cnp_named, egress("web"), (API, 17, 53), true),
        case(CILIUM_NAMED_PORT, "", cnp_named, egress("web"), (API, 6, 9090), true),
        case(CILIUM_NAMED_PORT, "", cnp_named, egress("web"), (API, 6, 8080), false),
        case(CILIUM_NAMED_PORT, "", cnp_named, egress("web"), (WORLD, 6, 9090), false),
        case(CILIUM_CLUSTERWIDE, "", clusterwide, ingress("db"), (API, 6, 5432), true),
        case(CILIUM_CLUSTERWIDE, "", clusterwide, ingress("db"), ("10.9.0.10", 6, 5432), false),
        case(CILIUM_CLUSTERWIDE, "", clusterwide, ingress("web"), ("10.9.1.12", 6, 80), true),
        case(K8S_NAMESPACE_SELECTOR, "", &db_from_dev, ingress("db"), (API, 6, 5432), true),
        case(K8S_NAMESPACE_SELECTOR, "", &db_from_dev, ingress("db"), (WORLD, 6, 5432), false),
        case(CILIUM_NAMESPACE_LABELS, "", &web_from_prod, ingress("web"), (DB, 6, 80), true),
        case(CILIUM_NAMESPACE_LABELS, "", &web_from_prod, ingress("web"), (API, 6, 80), false),
        case(K8S_NODE, "", KNP_WEB_FROM_API, ingress("web"), (HOST, 6, 8080), true),
        case(K8S_NODE, policy_mode, KNP_WEB_FROM_API, ingress("web"), (HOST, 6, 8080), true),
        case(K8S_NODE, policy_mode, KNP_WEB_FROM_API, ingress("web"), (WORLD, 6, 8080), false),
        case(CILIUM_LOCALHOST, "", CNP_WEB_FROM_API, ingress("web"), (HOST, 6, 8080), true),
        case(
            CILIUM_LOCALHOST,
            "  policy: {allowLocalhost: auto}\n",
            CNP_WEB_FROM_API,
            ingress("web"),
            (HOST, 17, 53),
            true,
        ),
        case(
            CILIUM_LOCALHOST,
            "  policy: {allowLocalhost: always}\n",
            CNP_WEB_FROM_API,
            ingress("web"),
            (HOST, 1, 8),
            true,
        ),
        case(CILIUM_LOCALHOST, policy_mode, CNP_WEB_FROM_API, ingress("web"), (HOST, 6, 8080), false),
        case(
            CILIUM_LOCALHOST,
            policy_mode,
            &format!("{CNP_WEB_FROM_API}{cnp_allow_host}"),
            ingress("web"),
            (HOST, 6, 8080),
            true,
        ),
        // The node's allowance is not an egress one.
        case(CILIUM_LOCALHOST, "", CNP_WEB_FROM_API, egress("web"), (HOST, 6, 8080), true),
        case(CILIUM_DENY_WINS, "", &with_deny_host, ingress("web"), (HOST, 6, 22), false),
        case(CILIUM_DENY_WINS, "", &with_deny_host, ingress("web"), (HOST, 6, 23), true),
        case(CILIUM_DEFAULT_DENY, "", broad, ingress("web"), (WORLD, 6, 80), false),
        case(CILIUM_DEFAULT_DENY, "", broad, ingress("web"), ("198.51.100.1", 6, 80), true),
        case(CILIUM_DEFAULT_DENY, "", broad, ingress("api"), ("198.51.100.1", 6, 80), true),
        case(
            CILIUM_DEFAULT_DENY,
            "",
            &format!("{broad}{CNP_WEB_FROM_API}"),
            ingress("web"),
            (API, 6, 80),
            true,
        ),
        case(
            CILIUM_DEFAULT_DENY,
            "",
            &format!("{broad}{CNP_WEB_FROM_API}"),
            ingress("web"),
            ("198.51.100.1", 6, 80),
            false,
        ),
        case(CILIUM_DEFAULT_DENY, "", forced, egress("web"), (WORLD, 6, 443), false),
        case(CILIUM_DEFAULT_DENY, "", forced, ingress("web"), (WORLD, 6, 443), true),
        case(CILIUM_ICMP_NAMES, "", icmp_names, ingress("web"), (WORLD, 1, 8), true),
        case(CILIUM_ICMP_NAMES, "", icmp_names, ingress("web"), (WORLD, 1, 13), false),
        case(CILIUM_ICMP_NAMES, "", icmp_names, ingress("web"), ("2001:db8:1::9", 58, 128), true),
        case(CILIUM_ICMP_NAMES, "", icmp_names, ingress("web"), ("2001:db8:1::9", 58, 129), false),
        case(CILIUM_PORT_ZERO, "", port_zero, ingress("web"), (WORLD, 6, 1), true),
        case(CILIUM_PORT_ZERO, "", port_zero, ingress("web"), (WORLD, 6, 65535), true),
        case(CILIUM_PORT_ZERO, "", port_zero, ingress("web"), (WORLD, 17, 53), false),
        case(K8S_POLICY_TYPES, "", ingress_only, egress("web"), (WORLD, 6, 443), true),
        case(K8S_POLICY_TYPES, "", ingress_only, ingress("web"), (API, 6, 443), false),
        case(CILIUM_ENTITIES, policy_mode, remote_node, ingress("web"), (WORLD, 6, 80), false),
        case(CILIUM_ENTITIES, policy_mode, remote_node, ingress("web"), (API, 6, 80), false),
        case(CILIUM_ENTITIES, policy_mode, remote_node, ingress("web"), (HOST, 6, 80), false),
    ]
}

#[test]
fn documented_semantics_hold_in_every_engine() {
    let kernel = sys::require_kernel("documented_semantics_hold_in_every_engine");
    let mut bad = Vec::new();
    let mut engines: HashMap<String, (SimNode, Option<Loaded>)> = HashMap::new();
    for (n, c) in cases().iter().enumerate() {
        let text = node(c.settings, &c.policies);
        let cfg =
            model::parse_str(&text, "semantics.yaml").unwrap_or_else(|e| panic!("case {n}: {e}\n{text}"));
        let peer: IpAddr = c.peer.parse().expect("a peer address");
        let endpoint = cfg.endpoint(c.endpoint).expect("the endpoint");
        let own = endpoint.addresses().find(|a| a.is_ipv4() == peer.is_ipv4()).expect("an address");
        let ingress = c.direction == Direction::Ingress;
        let (src, dst) = if ingress { (peer, own) } else { (own, peer) };
        let key = FlowKey { src, dst, proto: c.proto, sport: 40_000 + n as u16, dport: c.dport };
        let model_oracle =
            oracle::decide(&cfg, c.endpoint, c.direction, &key).expect("decides") == Verdict::Allow;
        let docs = doc_oracle::Docs::parse(&text);
        let doc = doc_oracle::decide(
            &docs,
            c.endpoint,
            ingress,
            &doc_oracle::Flow { peer, proto: c.proto, dport: c.dport },
        );
        // One simulator and one kernel load per distinct node; every case's flow has its own
        // source port, so conntrack never links two cases.
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
            || doc != c.allowed
            || simulated != want
            || kernel_verdict.is_some_and(|k| k != want)
        {
            bad.push(format!(
                "case {n}: {}\n  {} {} peer {} proto {} port {}: expected {}, model oracle {}, document oracle {}, \
                 simulator {simulated}, kernel {kernel_verdict:?}\n{}",
                c.doc,
                c.endpoint,
                c.direction,
                c.peer,
                c.proto,
                c.dport,
                if c.allowed { "allow" } else { "deny" },
                model_oracle,
                doc,
                c.policies
            ));
        }
    }
    assert!(bad.is_empty(), "{} cases differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn ignored_network_policy_rules_are_warnings_at_their_place() {
    let text = node(
        "",
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  egress:
    - to: [{podSelector: {}}]
",
    );
    let cfg = model::parse_str(&text, "w.yaml").expect("loads: Kubernetes accepts it");
    assert_eq!(
        model::warnings(&cfg),
        ["w.yaml:18:5: spec.egress: egress rules are ignored: policyTypes does not include Egress (as in \
          Kubernetes, they have no effect)"]
    );
}
