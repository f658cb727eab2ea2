//! Policy resolution checked against the oracle, as specifications.
//!
//! - Hand cases, one per rule kind: a policy, an endpoint, a direction, and flows with the
//!   verdict each must get. Every flow is decided twice, by the oracle (straight from the
//!   policies) and by the datapath's rule over the resolved entries with the peer's identity
//!   from the ipcache; both must give the expected verdict.
//! - Random nodes, policies and flows: the two must agree on every flow.
//!   `SLUICE_POLICY_CASES` sets the number of random nodes (default 2,000, each with
//!   [`FLOWS_PER_CASE`] flows); `SLUICE_POLICY_SEED` the seed.
//! - Equivalent spellings resolve to identical entries (DESIGN invariant 5).
//! - The demo fixture, determinism, and the 1,000 endpoints x 100 rules size.

use std::net::IpAddr;
use std::time::Instant;

use sluice::model::{self, Cidr, Direction, NodeConfig};
use sluice::policy::{self, evaluate_entries, oracle, FlowKey, Identity, PolicyEntry, Resolved, Verdict};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;
const GRE: u8 = 47;
const A: Verdict = Verdict::Allow;
const D: Verdict = Verdict::Deny;
use Direction::{Egress, Ingress};

/// The node of the hand cases. `web` and `api` in namespace default, `db` in `data`.
const NODE: &str = "\
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  hostAddresses: [192.168.1.5, 'fd00:ffff::5']
  # The hand cases judge the host as a peer like any other (Cilium's allow-localhost
  # `policy`); NetworkPolicy isolation still admits it, as Kubernetes says.
  policy: {allowLocalhost: policy}
  endpoints:
    - {name: web, interface: lxc-web, ipv4: 10.0.0.1, ipv6: 'fd00::1', labels: {app: web, tier: front}}
    - {name: api, interface: lxc-api, ipv4: 10.0.0.2, ipv6: 'fd00::2', labels: {app: api, tier: back}}
    - {name: db, interface: lxc-db, namespace: data, ipv4: 10.0.0.3, labels: {app: db, tier: back}}
";

/// Peer addresses of the hand cases.
const WEB: &str = "10.0.0.1";
const API: &str = "10.0.0.2";
const API6: &str = "fd00::2";
const DB: &str = "10.0.0.3";
const HOST: &str = "192.168.1.5";
const HOST6: &str = "fd00:ffff::5";
const WORLD: &str = "8.8.8.8";
const WORLD6: &str = "2001:db8::7";
/// Outside the cluster, but inside 10.0.0.0/8 like the endpoints.
const NEAR: &str = "10.9.9.9";

fn parse(text: &str) -> NodeConfig {
    model::parse_str(text, "case.yaml").unwrap_or_else(|e| panic!("{e}\ninput:\n{text}"))
}

/// A flow between `endpoint` and `peer` in `direction`: the endpoint's address of the peer's
/// family (or its first address) on its side.
fn flow(
    cfg: &NodeConfig,
    endpoint: &str,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> FlowKey {
    let ep = cfg.endpoint(endpoint).expect("endpoint of the case");
    let local = ep.addresses().find(|a| a.is_ipv4() == peer.is_ipv4()).or_else(|| ep.addresses().next());
    let local = local.expect("every endpoint has an address");
    let (src, dst) = match direction {
        Ingress => (peer, local),
        Egress => (local, peer),
    };
    FlowKey { src, dst, proto, sport: 40000, dport }
}

/// The datapath's verdict: resolved entries, peer identity from the ipcache. Decided both by
/// the reference scan (`evaluate_entries`) and by two longest-prefix lookups, which must agree.
fn datapath(
    resolved: &Resolved,
    endpoint: &str,
    direction: Direction,
    flow: &FlowKey,
) -> (Verdict, Identity) {
    let peer = match direction {
        Ingress => flow.src,
        Egress => flow.dst,
    };
    let identity = resolved.ipcache().lookup(peer);
    let policy = resolved.endpoint(endpoint).expect("every endpoint is resolved").direction(direction);
    let scan = evaluate_entries(&policy.entries, policy.enforced, identity.get(), flow.proto, flow.dport);
    let lpm = two_lookups(&policy.entries, policy.enforced, identity.get(), flow.proto, flow.dport);
    assert_eq!(
        scan,
        lpm,
        "the scan and the two lookups disagree: {endpoint} {direction} {flow:?} ({identity})\n{}",
        show_entries(resolved, endpoint, direction)
    );
    (scan, identity)
}

/// The datapath as `policy::resolve` says it may be built: a longest-prefix lookup over keys
/// (identity, protocol, port bits) for the peer's identity and one for identity 0; a deny from
/// either wins, then an allow from either, else drop.
fn two_lookups(entries: &[PolicyEntry], enforced: bool, identity: u32, proto: u8, port: u16) -> Verdict {
    if !enforced {
        return Verdict::Allow;
    }
    let key_bits = |e: &PolicyEntry| if e.proto == 0 { 0 } else { 8 + u32::from(e.port_prefix) };
    let lookup = |id: u32| {
        entries.iter().filter(|e| e.identity == id && e.matches(id, proto, port)).max_by_key(|e| key_bits(e))
    };
    let found: Vec<&PolicyEntry> = [lookup(identity), lookup(0)].into_iter().flatten().collect();
    if found.iter().any(|e| e.deny) || found.is_empty() {
        Verdict::Deny
    } else {
        Verdict::Allow
    }
}

/// One map value per key: no two entries share (identity, protocol, port, prefix).
fn assert_keys_unique(resolved: &Resolved, context: &str) {
    for (id, policy) in resolved.policies() {
        for direction in Direction::ALL {
            let entries = &policy.direction(direction).entries;
            let mut keys: Vec<_> =
                entries.iter().map(|e| (e.identity, e.proto, e.port, e.port_prefix)).collect();
            keys.dedup();
            assert_eq!(
                keys.len(),
                entries.len(),
                "{context}: duplicate keys for {id} {direction}: {entries:?}"
            );
        }
    }
}

fn show_entries(resolved: &Resolved, endpoint: &str, direction: Direction) -> String {
    let policy = resolved.endpoint(endpoint).expect("resolved").direction(direction);
    let entries: Vec<String> = policy.entries.iter().map(|e| format!("    {e}")).collect();
    format!("  enforced: {}\n{}", policy.enforced, entries.join("\n"))
}

/// (name, policy documents, endpoint, direction, [(peer, protocol, port, verdict)])
type HandCase =
    (&'static str, &'static str, &'static str, Direction, &'static [(&'static str, u8, u16, Verdict)]);

const HAND_CASES: &[HandCase] = &[
    (
        "no policy selects the endpoint: everything passes",
        "",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WORLD, UDP, 53, A), (DB, ICMP, 8, A), (HOST6, GRE, 0, A)],
    ),
    (
        "fromEndpoints with a port",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: '80', protocol: TCP}]}]
",
        "web",
        Ingress,
        &[
            (API, TCP, 80, A),
            (API6, TCP, 80, A),
            (API, TCP, 81, D),
            (API, UDP, 80, D),
            (DB, TCP, 80, D),
            (HOST, TCP, 80, D),
            (WORLD, TCP, 80, D),
        ],
    ),
    (
        "a policy for one direction leaves the other open",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
",
        "web",
        Egress,
        &[(WORLD, TCP, 443, A), (DB, UDP, 53, A)],
    ),
    (
        "peer selectors are scoped to the policy's namespace",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {tier: back}}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (DB, TCP, 80, D)],
    ),
    (
        "a peer selector that names a namespace reaches into it",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {tier: back, k8s:io.kubernetes.pod.namespace: data}}]
",
        "web",
        Ingress,
        &[(DB, TCP, 80, A), (API, TCP, 80, D)],
    ),
    (
        "a subject selector selects only in the policy's namespace",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: data}
spec:
  endpointSelector: {}
  ingress: [{}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WORLD, TCP, 80, A)],
    ),
    (
        "matchExpressions: NotIn, Exists, DoesNotExist",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints:
        - matchExpressions:
            - {key: app, operator: NotIn, values: [web]}
            - {key: tier, operator: Exists}
            - {key: env, operator: DoesNotExist}
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WEB, TCP, 80, D), (WORLD, TCP, 80, D)],
    ),
    (
        "fromCIDR matches outside addresses, never endpoints or the host",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDR: [10.0.0.0/8, 203.0.113.0/24, 192.168.0.0/16, 10.0.0.2/32, 192.168.1.5]
",
        "web",
        Ingress,
        &[(NEAR, TCP, 80, A), ("203.0.113.7", UDP, 9, A), (WORLD, TCP, 80, D), (API, TCP, 80, D), (HOST, TCP, 80, D)],
    ),
    (
        "fromCIDRSet with except",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDRSet:
        - {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}
        - {cidr: '2001:db8::/32', except: ['2001:db8::/120']}
",
        "web",
        Ingress,
        &[
            ("10.8.1.1", TCP, 80, A),
            (NEAR, TCP, 80, D),
            ("10.9.0.0", TCP, 80, D),
            ("11.0.0.1", TCP, 80, D),
            ("2001:db8::1:7", TCP, 80, A),
            (WORLD6, TCP, 80, D),
        ],
    ),
    (
        "a longer prefix inside an except is allowed by its own rule",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]
    - fromCIDR: [10.9.9.0/24]
      toPorts: [{ports: [{port: '22'}]}]
",
        "web",
        Ingress,
        &[(NEAR, TCP, 22, A), (NEAR, TCP, 80, D), ("10.9.8.1", TCP, 22, D), ("10.1.1.1", TCP, 80, A)],
    ),
    (
        "fromCIDR of the default route is the whole world of that family",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]
",
        "web",
        Ingress,
        &[(WORLD, TCP, 80, A), (NEAR, TCP, 80, D), (WORLD6, TCP, 80, D), (API, TCP, 80, D), (HOST, TCP, 80, D)],
    ),
    (
        "fromEntities world: everything outside the cluster, CIDR identities included",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [world]
    - fromCIDR: [10.9.0.0/16]
      toPorts: [{ports: [{port: '22'}]}]
",
        "web",
        Ingress,
        &[(WORLD, TCP, 80, A), (WORLD6, UDP, 53, A), (NEAR, TCP, 80, A), (API, TCP, 80, D), (HOST, TCP, 80, D)],
    ),
    (
        "fromEntities host",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [host]
",
        "web",
        Ingress,
        &[(HOST, TCP, 10250, A), (HOST6, TCP, 10250, A), (API, TCP, 80, D), (WORLD, TCP, 80, D)],
    ),
    (
        "fromEntities cluster: endpoints of every namespace and the host",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [cluster]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (DB, TCP, 80, A), (HOST, TCP, 80, A), (WORLD, TCP, 80, D), (NEAR, TCP, 80, D)],
    ),
    (
        "fromEntities all: every peer, every protocol",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WORLD6, ICMP6, 128, A), (HOST, GRE, 0, A), (NEAR, SCTP, 9, A)],
    ),
    (
        "ports: a range, ANY, and a port without protocol",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
      toPorts:
        - ports:
            - {port: '8000', endPort: 8080, protocol: TCP}
            - {port: '53', protocol: ANY}
            - {port: 443}
",
        "web",
        Ingress,
        &[
            (WORLD, TCP, 8000, A),
            (WORLD, TCP, 8033, A),
            (WORLD, TCP, 8080, A),
            (WORLD, TCP, 8081, D),
            (WORLD, TCP, 7999, D),
            (WORLD, UDP, 8000, D),
            (WORLD, UDP, 53, A),
            (WORLD, TCP, 53, A),
            (WORLD, SCTP, 53, A),
            (WORLD, ICMP, 53, D),
            (WORLD, SCTP, 443, A),
            (WORLD, ICMP, 443, D),
        ],
    ),
    (
        "a protocol without a port: every port of that protocol",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
      toPorts: [{ports: [{protocol: UDP}]}]
",
        "web",
        Ingress,
        &[(WORLD, UDP, 1, A), (WORLD, UDP, 65535, A), (WORLD, TCP, 80, D), (WORLD, ICMP, 8, D)],
    ),
    (
        "icmps by family and type",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [world]
      icmps: [{fields: [{type: 8}, {type: '128', family: IPv6}]}]
",
        "web",
        Ingress,
        &[(WORLD, ICMP, 8, A), (WORLD, ICMP, 0, D), (WORLD6, ICMP6, 128, A), (WORLD6, ICMP6, 8, D), (WORLD, TCP, 8, D)],
    ),
    (
        "toPorts without a peer: those ports from anyone",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - toPorts: [{ports: [{port: '80', protocol: TCP}]}]
",
        "web",
        Ingress,
        &[(WORLD, TCP, 80, A), (API, TCP, 80, A), (HOST, TCP, 80, A), (API, TCP, 22, D)],
    ),
    (
        "ingress: [{}] is default deny with nothing allowed",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, D), (WORLD, ICMP, 8, D), (HOST, TCP, 10250, D)],
    ),
    (
        "a deny wins over any allow",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: '22', protocol: TCP}]}]
",
        "web",
        Ingress,
        &[(API, TCP, 22, D), (API6, TCP, 22, D), (API, TCP, 80, A), (API, UDP, 22, A), (WORLD, TCP, 22, A)],
    ),
    (
        "a wide deny wins over a narrower allow",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromCIDR: [10.9.9.0/24]
      toPorts: [{ports: [{port: '22', protocol: TCP}]}]
    - fromEntities: [world]
  ingressDeny:
    - fromCIDR: [10.0.0.0/8]
",
        "web",
        Ingress,
        &[(NEAR, TCP, 22, D), ("10.1.1.1", UDP, 53, D), (WORLD, TCP, 22, A)],
    ),
    (
        "a deny-only policy still puts the endpoint in default deny",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingressDeny:
    - fromEntities: [world]
",
        "web",
        Ingress,
        &[(WORLD, TCP, 80, D), (API, TCP, 80, D), (HOST, TCP, 80, D)],
    ),
    (
        "egress: toEndpoints, toCIDRSet, toEntities",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
    - toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]
      toPorts: [{ports: [{port: '443', protocol: TCP}]}]
    - toEntities: [host]
",
        "web",
        Egress,
        &[
            (API, TCP, 8080, A),
            (API, TCP, 80, D),
            (DB, TCP, 8080, D),
            (WORLD, TCP, 443, A),
            (NEAR, TCP, 443, D),
            (WORLD6, TCP, 443, D),
            (HOST, UDP, 53, A),
        ],
    ),
    (
        "egress deny",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toEntities: [all]
  egressDeny:
    - toCIDR: [169.254.169.254/32]
    - toEntities: [world]
      toPorts: [{ports: [{port: '25', protocol: TCP}]}]
",
        "api",
        Egress,
        &[("169.254.169.254", TCP, 80, D), ("169.254.169.253", TCP, 80, A), (WORLD, TCP, 25, D), (DB, TCP, 25, A)],
    ),
    (
        "two policies add up",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p1}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: api}}], toPorts: [{ports: [{port: '80'}]}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p2}
spec:
  endpointSelector: {matchLabels: {tier: front}}
  ingress: [{fromEntities: [world], toPorts: [{ports: [{port: '443'}]}]}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (API, TCP, 443, D), (WORLD, TCP, 443, A), (WORLD, TCP, 80, D)],
    ),
    (
        "specs: each rule selects its own subjects",
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
specs:
  - endpointSelector: {matchLabels: {app: api}}
    ingress: [{fromEntities: [world]}]
  - endpointSelector: {matchLabels: {app: web}}
    ingress: [{fromEndpoints: [{matchLabels: {app: api}}]}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WORLD, TCP, 80, D)],
    ),
    (
        "NetworkPolicy: podSelector peers and ports",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: api}}}]
      ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]
",
        "web",
        Ingress,
        &[
            (API, TCP, 80, A),
            (API, UDP, 80, D),
            (API, UDP, 5005, A),
            (API, UDP, 5011, D),
            (DB, TCP, 80, D),
            (WORLD, TCP, 80, D),
        ],
    ),
    (
        "NetworkPolicy: namespaceSelector by name, alone and with a podSelector",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}}]
      ports: [{port: 5432}]
    - from:
        - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [default]}]}
          podSelector: {matchLabels: {tier: back}}
      ports: [{port: 8080}]
",
        "web",
        Ingress,
        &[(DB, TCP, 5432, A), (DB, TCP, 8080, D), (API, TCP, 8080, A), (API, TCP, 5432, D), (WEB, TCP, 8080, D)],
    ),
    (
        "NetworkPolicy: an empty namespaceSelector is every namespace",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - from: [{namespaceSelector: {}}]
",
        "web",
        Ingress,
        // Kubernetes: "the only allowed connections into the pod are those from the pod's
        // node and those allowed by the ingress list".
        &[(API, TCP, 80, A), (DB, TCP, 80, A), (HOST, TCP, 80, A), (WORLD, TCP, 80, D)],
    ),
    (
        "NetworkPolicy: ipBlock with except",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
",
        "web",
        Egress,
        &[(WORLD, TCP, 443, A), (NEAR, TCP, 443, D), (API, TCP, 80, D), (WORLD6, TCP, 443, D)],
    ),
    (
        "NetworkPolicy: policyTypes Egress without rules denies all egress, leaves ingress open",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
        "web",
        Egress,
        &[(WORLD, UDP, 53, D), (API, TCP, 80, D)],
    ),
    (
        "NetworkPolicy: an entry without from allows every source",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress: [{}]
",
        "web",
        Ingress,
        &[(API, TCP, 80, A), (WORLD, ICMP, 8, A), (HOST, GRE, 0, A)],
    ),
    (
        "NetworkPolicy: no ingress rules denies all ingress",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {app: web}}
",
        "web",
        Ingress,
        // The pod's node (kubelet probes) is still allowed.
        &[(API, TCP, 80, D), (HOST, TCP, 10250, A), (WORLD, TCP, 80, D)],
    ),
];

#[test]
fn hand_cases_get_their_verdicts_from_oracle_and_entries() {
    let mut failures = Vec::new();
    let mut flows = 0;
    for (name, policy, endpoint, direction, expectations) in HAND_CASES {
        let text = format!("{NODE}---{policy}");
        let cfg = parse(&text);
        let resolved = policy::resolve(&cfg).expect("resolves");
        for &(peer, proto, port, expected) in expectations.iter() {
            flows += 1;
            let peer: IpAddr = peer.parse().expect("peer address");
            let key = flow(&cfg, endpoint, *direction, peer, proto, port);
            let by_oracle = oracle::decide(&cfg, endpoint, *direction, &key).expect("known endpoint");
            let (by_entries, identity) = datapath(&resolved, endpoint, *direction, &key);
            if (by_oracle, by_entries) != (expected, expected) {
                failures.push(format!(
                    "{name}: {endpoint} {direction} peer {peer} ({identity}) proto {proto} port {port}\n  \
                     expected {expected:?}, oracle {by_oracle:?}, entries {by_entries:?}\n{}",
                    show_entries(&resolved, endpoint, *direction)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {flows} flows failed:\n{}", failures.len(), failures.join("\n"));
}

fn entry(identity: u32, proto: u8, port: u16, port_prefix: u8, deny: bool) -> PolicyEntry {
    PolicyEntry { identity, proto, port, port_prefix, deny, proxy_port: 0 }
}

#[test]
fn demo_fixture_resolves_to_the_expected_entries() {
    let cfg = model::load_file(std::path::Path::new("fixtures/policy/demo.yaml")).expect("demo parses");
    assert_eq!(cfg.endpoints.len(), 3);
    assert_eq!(cfg.policies.len(), 4);
    let resolved = policy::resolve(&cfg).expect("resolves");
    let ids = resolved.identities();
    let id = |name: &str| ids.endpoint(name).expect("endpoint").get();
    let (frontend, backend, db) = (id("frontend"), id("backend"), id("db"));
    let cidr = |text: &str| ids.cidr(&text.parse::<Cidr>().expect("cidr")).expect("cidr identity").get();
    let metadata = cidr("169.254.169.254/32");

    // backend ingress: the frontend on 8080-8089, as two aligned blocks; the node itself
    // on anything (allowLocalhost's default).
    let backend_in = &resolved.endpoint("backend").expect("backend").ingress;
    assert!(backend_in.enforced);
    assert_eq!(
        backend_in.entries,
        [
            entry(Identity::HOST.get(), 0, 0, 0, false),
            entry(frontend, TCP, 8080, 13, false),
            entry(frontend, TCP, 8088, 15, false)
        ]
    );

    // db ingress: the backend on 5432; the world denied on everything; the node itself
    // (NetworkPolicy isolation admits it). The scraper's namespace has no endpoint on this
    // node, so it resolves to no entry.
    let db_in = &resolved.endpoint("db").expect("db").ingress;
    let mut world_denied: Vec<PolicyEntry> = [2, 9, 10]
        .into_iter()
        .chain(ids.cidrs().map(|(_, id)| id.get()))
        .map(|id| entry(id, 0, 0, 0, true))
        .collect();
    world_denied.push(entry(backend, TCP, 5432, 16, false));
    world_denied.push(entry(Identity::HOST.get(), 0, 0, 0, false));
    world_denied.sort();
    assert_eq!(db_in.entries, world_denied);

    // db egress: default deny from the guard rail's deny, with only that deny in it.
    let db_out = &resolved.endpoint("db").expect("db").egress;
    assert!(db_out.enforced);
    assert_eq!(db_out.entries, [entry(metadata, 0, 0, 0, true)]);

    // frontend ingress: world on 80 and 443, the host on anything.
    let frontend_in = &resolved.endpoint("frontend").expect("frontend").ingress;
    assert!(frontend_in.entries.contains(&entry(Identity::HOST.get(), 0, 0, 0, false)));
    assert!(frontend_in.entries.contains(&entry(Identity::WORLD_IPV6.get(), TCP, 443, 16, false)));
    assert!(!frontend_in.entries.iter().any(|e| e.identity == backend));

    // The ipcache: endpoints, host, the rule prefixes, the default routes.
    let lookups = [
        ("10.0.1.20", backend),
        ("fd00:0:1::10", frontend),
        ("10.0.1.30", db),
        ("192.168.1.5", Identity::HOST.get()),
        ("169.254.169.254", metadata),
        ("169.254.1.1", cidr("169.254.0.0/16")),
        ("10.0.1.99", cidr("10.0.0.0/8")),
        ("1.1.1.1", Identity::WORLD_IPV4.get()),
        ("2001:db8::1", Identity::WORLD_IPV6.get()),
    ];
    for (addr, expected) in lookups {
        assert_eq!(resolved.ipcache().lookup(addr.parse().expect("address")).get(), expected, "{addr}");
    }

    // And the oracle agrees on a tour of the shop.
    let tour: &[(&str, Direction, &str, u8, u16, Verdict)] = &[
        ("frontend", Ingress, "203.0.113.9", TCP, 443, A),
        ("frontend", Ingress, "203.0.113.9", TCP, 8080, D),
        ("frontend", Ingress, "192.168.1.5", TCP, 10250, A),
        ("frontend", Egress, "10.0.1.20", TCP, 8085, A),
        ("frontend", Egress, "10.0.1.20", TCP, 8090, D),
        ("frontend", Egress, "10.0.1.30", ICMP, 8, A),
        ("frontend", Egress, "fd00:0:1::20", ICMP6, 128, A),
        ("frontend", Egress, "169.254.169.254", TCP, 80, D),
        ("backend", Ingress, "10.0.1.10", TCP, 8089, A),
        ("backend", Egress, "10.0.1.30", TCP, 5432, A),
        ("backend", Egress, "93.184.216.34", TCP, 443, A),
        ("backend", Egress, "10.1.2.3", TCP, 443, D),
        ("backend", Egress, "169.254.169.254", TCP, 443, D),
        ("db", Ingress, "10.0.1.20", TCP, 5432, A),
        ("db", Ingress, "10.0.1.10", TCP, 5432, D),
        ("db", Ingress, "203.0.113.9", TCP, 5432, D),
        ("db", Egress, "10.0.1.20", TCP, 8080, D),
    ];
    for &(endpoint, direction, peer, proto, port, expected) in tour {
        let key = flow(&cfg, endpoint, direction, peer.parse().expect("address"), proto, port);
        let by_oracle = oracle::decide(&cfg, endpoint, direction, &key).expect("known endpoint");
        let (by_entries, _) = datapath(&resolved, endpoint, direction, &key);
        assert_eq!(
            (by_oracle, by_entries),
            (expected, expected),
            "{endpoint} {direction} {peer} {proto}/{port}"
        );
    }
}

#[test]
fn the_oracle_names_an_unknown_endpoint() {
    let cfg = parse(NODE);
    let key = flow(&cfg, "web", Ingress, WORLD.parse().expect("address"), TCP, 80);
    let err = oracle::decide(&cfg, "nope", Ingress, &key).expect_err("unknown");
    assert_eq!(err.to_string(), "no endpoint `nope` on this node");
}

// --- determinism and stability ------------------------------------------------------------

#[test]
fn resolution_ignores_document_and_list_order() {
    let text = std::fs::read_to_string("fixtures/policy/demo.yaml").expect("demo");
    let documents: Vec<&str> = text.split("\n---\n").collect();
    let reversed = documents.iter().rev().copied().collect::<Vec<_>>().join("\n---\n");
    let a = policy::resolve(&parse(&text)).expect("resolves");
    let b = policy::resolve(&parse(&reversed)).expect("resolves");
    assert_eq!(a, b);
    // Endpoints listed in another order keep their identities.
    let node = "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec:\n  endpoints:\n";
    let x = "    - {name: x, interface: lx, ipv4: 10.0.0.1, labels: {app: x}}\n";
    let y = "    - {name: y, interface: ly, ipv4: 10.0.0.2, labels: {app: y}}\n";
    let xy = policy::resolve(&parse(&format!("{node}{x}{y}"))).expect("resolves");
    let yx = policy::resolve(&parse(&format!("{node}{y}{x}"))).expect("resolves");
    assert_eq!(xy, yx);
}

#[test]
fn label_set_identities_are_pinned() {
    // A label set's number must not change between versions: pin a few.
    let cfg = parse(NODE);
    let ids = policy::IdentityTable::allocate(&cfg).expect("allocates");
    let numbers: Vec<(String, u32)> = ["web", "api", "db"]
        .iter()
        .map(|n| ((*n).to_owned(), ids.endpoint(n).expect("endpoint").get()))
        .collect();
    assert_eq!(numbers, PINNED_IDENTITIES.iter().map(|(n, id)| ((*n).to_owned(), *id)).collect::<Vec<_>>());
    for (_, id) in &numbers {
        assert!((256..=65535).contains(id));
    }
}

const PINNED_IDENTITIES: &[(&str, u32)] = &[("web", 42344), ("api", 15778), ("db", 2771)];

// --- equivalent spellings -------------------------------------------------------------------

/// Groups of policies that must resolve identically for every endpoint of [`NODE`]; `true`
/// where they must also be equal in the model's normal form.
const EQUIVALENT: &[(&str, bool, &[&str])] = &[
    (
        "matchLabels, matchExpressions In with one value, source prefixes",
        true,
        &[
            "spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{matchLabels: {tier: back}}]}]}",
            "spec: {endpointSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}, ingress: [{fromEndpoints: [{matchExpressions: [{key: tier, operator: In, values: [back, back]}]}]}]}",
            "spec: {endpointSelector: {matchLabels: {k8s:app: web}}, ingress: [{fromEndpoints: [{matchLabels: {any:tier: back}}]}]}",
            "spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{matchLabels: {tier: back, k8s:io.kubernetes.pod.namespace: default}}]}]}",
        ],
    ),
    (
        "port as a number, a string, quoted twice",
        true,
        &[
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 80, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 80, protocol: TCP}]}]}]}",
        ],
    ),
    (
        "a port range split differently",
        false,
        &[
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 8000, endPort: 8080, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 8000, endPort: 8039, protocol: TCP}, {port: 8040, endPort: 8080, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 8000, endPort: 8050, protocol: TCP}]}, {ports: [{port: 8020, endPort: 8080, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 8000, endPort: 8079, protocol: TCP}]}]}, {fromEntities: [world], toPorts: [{ports: [{port: 8080, protocol: TCP}]}]}]}",
        ],
    ),
    (
        "ANY, no protocol, and TCP+UDP+SCTP",
        true,
        &[
            "spec: {endpointSelector: {}, egress: [{toEntities: [world], toPorts: [{ports: [{port: 53, protocol: ANY}]}]}]}",
            "spec: {endpointSelector: {}, egress: [{toEntities: [world], toPorts: [{ports: [{port: 53}]}]}]}",
            "spec: {endpointSelector: {}, egress: [{toEntities: [world], toPorts: [{ports: [{port: 53, protocol: UDP}, {port: 53, protocol: SCTP}, {port: 53, protocol: TCP}]}]}]}",
        ],
    ),
    (
        "ports without a peer, and ports from all",
        true,
        &[
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 443, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [all], toPorts: [{ports: [{port: 443, protocol: TCP}]}]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [all, all], toPorts: [{ports: [{port: 443, protocol: TCP}]}]}]}",
        ],
    ),
    (
        "fromCIDR, a bare address, fromCIDRSet without except",
        true,
        &[
            "spec: {endpointSelector: {}, ingress: [{fromCIDR: [203.0.113.7/32, 10.0.0.0/8]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromCIDR: [10.0.0.0/8, 203.0.113.7]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromCIDRSet: [{cidr: 203.0.113.7/32}, {cidr: 10.0.0.0/8, except: []}]}]}",
        ],
    ),
    (
        "spec, specs, and one rule split in two",
        false,
        &[
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world]}, {fromEntities: [host]}]}",
            "specs: [{endpointSelector: {}, ingress: [{fromEntities: [world]}, {fromEntities: [host]}]}]",
            "specs: [{endpointSelector: {}, ingress: [{fromEntities: [world]}]}, {endpointSelector: {}, ingress: [{fromEntities: [host]}]}]",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [host, world]}]}",
        ],
    ),
    (
        "a deny that covers an allow",
        false,
        &[
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 22, protocol: TCP}]}]}], ingressDeny: [{fromEntities: [world]}]}",
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: 1}]}]}, {fromEntities: [world], icmps: [{fields: [{type: 8}]}]}], ingressDeny: [{fromEntities: [world]}]}",
            "spec: {endpointSelector: {}, ingressDeny: [{fromEntities: [world]}]}",
        ],
    ),
];

/// A CiliumNetworkPolicy document around `body` (a `spec:` or `specs:` line).
fn cnp(body: &str) -> String {
    format!("\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\n{body}\n")
}

#[test]
fn equivalent_spellings_resolve_identically() {
    for (name, same_model, variants) in EQUIVALENT {
        let configs: Vec<NodeConfig> =
            variants.iter().map(|body| parse(&format!("{NODE}---{}", cnp(body)))).collect();
        let first = policy::resolve(&configs[0]).expect("resolves");
        for (variant, cfg) in variants.iter().zip(&configs).skip(1) {
            let other = policy::resolve(cfg).expect("resolves");
            for endpoint in ["web", "api", "db"] {
                assert_eq!(
                    first.endpoint(endpoint),
                    other.endpoint(endpoint),
                    "{name}: `{}` and `{variant}` differ for {endpoint}",
                    variants[0]
                );
            }
            assert_eq!(first, other, "{name}: `{variant}`");
            if *same_model {
                assert_eq!(configs[0].policies, cfg.policies, "{name}: `{variant}` in the model");
            }
        }
    }
}

#[test]
fn a_network_policy_and_its_cilium_spelling_resolve_identically() {
    let knp = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - podSelector: {matchLabels: {app: api}}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}
        - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}
      ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]
  egress:
    - {}
";
    let cilium = cnp("spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}, {matchLabels: {k8s:io.kubernetes.pod.namespace: data}}]
      toPorts: [{ports: [{port: 80, protocol: TCP}, {port: 5000, endPort: 5010, protocol: UDP}]}]
    - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
      toPorts: [{ports: [{port: 80, protocol: TCP}, {port: 5000, endPort: 5010, protocol: UDP}]}]
  egress:
    - toEntities: [all]
");
    let a = policy::resolve(&parse(&format!("{NODE}---{knp}"))).expect("resolves");
    let b = policy::resolve(&parse(&format!("{NODE}---{cilium}"))).expect("resolves");
    // NODE judges the host by policy (allowLocalhost: policy) for Cilium's policies, while
    // NetworkPolicy isolation always admits the node: so the Cilium spelling differs by that
    // one entry here, and is identical where allowLocalhost has its default (always).
    let host = PolicyEntry {
        identity: Identity::HOST.get(),
        proto: 0,
        port: 0,
        port_prefix: 0,
        deny: false,
        proxy_port: 0,
    };
    let web = |r: &policy::Resolved| r.endpoint("web").expect("web").ingress.entries.clone();
    let mut b_with_host = web(&b);
    b_with_host.push(host);
    b_with_host.sort();
    assert_eq!(web(&a), b_with_host);
    let default_node = NODE.replace("  policy: {allowLocalhost: policy}\n", "");
    let a = policy::resolve(&parse(&format!("{default_node}---{knp}"))).expect("resolves");
    let b = policy::resolve(&parse(&format!("{default_node}---{cilium}"))).expect("resolves");
    assert_eq!(a, b);
}

// --- random policies against the oracle -----------------------------------------------------

/// Flows tried on each random node.
const FLOWS_PER_CASE: usize = 32;

/// Knuth's MMIX LCG; the high bits are the well-mixed ones.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NAMESPACES: &[&str] = &["default", "team"];
const CIDR_POOL: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.0/28",
    "10.1.2.16/28",
    "10.1.2.11/32",
    "10.1.2.200/32",
    "192.168.0.0/16",
    "203.0.113.0/24",
    "203.0.113.128/25",
    "::/0",
    "fd00::/16",
    "fd00:1:2::/64",
    "fd00:1:2::/124",
    "fd00:1:2::b/128",
    "2001:db8::/32",
];
const PORTS: &[u16] = &[1, 22, 53, 80, 443, 8080, 65535];
const ICMP_TYPES: &[u16] = &[0, 3, 8, 128, 129, 255];

/// A random label selector in flow style; `peer` selectors may name a namespace.
fn random_selector(rng: &mut Rng, peer: bool) -> String {
    if rng.chance(20) {
        return "{}".to_owned();
    }
    let mut labels = Vec::new();
    if rng.chance(60) {
        let key = rng.pick(&["app", "k8s:app", "any:app"]);
        labels.push(format!("{key}: {}", rng.pick(&["a", "b", "c"])));
    }
    if rng.chance(30) {
        labels.push(format!("tier: {}", rng.pick(&["x", "y"])));
    }
    if peer && rng.chance(25) {
        labels.push(format!("k8s:io.kubernetes.pod.namespace: {}", rng.pick(NAMESPACES)));
    }
    let mut expressions = Vec::new();
    if rng.chance(40) {
        let key = rng.pick(&["app", "tier", "env"]);
        let values = rng.pick(&["[a]", "[a, b]", "[x]", "[prod]", "[b, c, x]"]);
        expressions.push(match rng.below(4) {
            0 => format!("{{key: {key}, operator: In, values: {values}}}"),
            1 => format!("{{key: {key}, operator: NotIn, values: {values}}}"),
            2 => format!("{{key: {key}, operator: Exists}}"),
            _ => format!("{{key: {key}, operator: DoesNotExist}}"),
        });
    }
    if peer && rng.chance(10) {
        expressions.push(format!(
            "{{key: io.kubernetes.pod.namespace, operator: {}, values: [{}]}}",
            rng.pick(&["In", "NotIn"]),
            rng.pick(NAMESPACES)
        ));
    }
    format!("{{matchLabels: {{{}}}, matchExpressions: [{}]}}", labels.join(", "), expressions.join(", "))
}

/// A random prefix from the pool with up to two excepts inside it.
fn random_cidr_set(rng: &mut Rng) -> (String, Vec<String>) {
    let cidr = rng.pick(CIDR_POOL);
    let outer: Cidr = cidr.parse().expect("pool");
    let inside: Vec<&str> = CIDR_POOL
        .iter()
        .copied()
        .filter(|c| outer.contains_cidr(&c.parse::<Cidr>().expect("pool")))
        .collect();
    let except = (0..rng.below(3)).map(|_| format!("'{}'", rng.pick(&inside))).collect();
    (format!("'{cidr}'"), except)
}

fn random_port(rng: &mut Rng, any_allowed: bool) -> String {
    let mut fields = Vec::new();
    if rng.chance(80) {
        let port = rng.pick(PORTS);
        fields.push(if rng.chance(50) { format!("port: {port}") } else { format!("port: '{port}'") });
        if rng.chance(30) {
            let end = port.saturating_add(rng.pick(&[0, 1, 2, 7, 100, 1000]));
            fields.push(format!("endPort: {end}"));
        }
    }
    let protocols: &[&str] =
        if any_allowed { &["", "TCP", "UDP", "SCTP", "ANY"] } else { &["", "TCP", "UDP", "SCTP"] };
    let protocol = rng.pick(protocols);
    if !protocol.is_empty() {
        fields.push(format!("protocol: {protocol}"));
    }
    format!("{{{}}}", fields.join(", "))
}

/// A random ingress or egress entry of a CiliumNetworkPolicy.
fn random_cnp_entry(rng: &mut Rng, prefix: &str) -> String {
    let mut fields = Vec::new();
    let n = 1 + rng.below(2);
    match rng.below(6) {
        0 => {
            let selectors: Vec<String> = (0..n).map(|_| random_selector(rng, true)).collect();
            fields.push(format!("{prefix}Endpoints: [{}]", selectors.join(", ")));
        }
        1 => {
            let cidrs: Vec<String> = (0..n).map(|_| format!("'{}'", rng.pick(CIDR_POOL))).collect();
            fields.push(format!("{prefix}CIDR: [{}]", cidrs.join(", ")));
        }
        2 => {
            let sets: Vec<String> = (0..n)
                .map(|_| {
                    let (cidr, except) = random_cidr_set(rng);
                    format!("{{cidr: {cidr}, except: [{}]}}", except.join(", "))
                })
                .collect();
            fields.push(format!("{prefix}CIDRSet: [{}]", sets.join(", ")));
        }
        3 => {
            let entities: Vec<&str> =
                (0..n).map(|_| rng.pick(&["all", "cluster", "host", "world"])).collect();
            fields.push(format!("{prefix}Entities: [{}]", entities.join(", ")));
        }
        4 if rng.chance(20) => fields.push(format!("{prefix}Endpoints: []")),
        _ => {}
    }
    match rng.below(100) {
        0..=49 => {}
        50..=84 => {
            let rules: Vec<String> = (0..1 + rng.below(2))
                .map(|_| {
                    let ports: Vec<String> = (0..1 + rng.below(2)).map(|_| random_port(rng, true)).collect();
                    format!("{{ports: [{}]}}", ports.join(", "))
                })
                .collect();
            fields.push(format!("toPorts: [{}]", rules.join(", ")));
        }
        _ => {
            let icmp: Vec<String> = (0..1 + rng.below(2))
                .map(|_| {
                    let family = rng.pick(&["", ", family: IPv4", ", family: IPv6"]);
                    format!("{{type: {}{family}}}", rng.pick(ICMP_TYPES))
                })
                .collect();
            fields.push(format!("icmps: [{{fields: [{}]}}]", icmp.join(", ")));
        }
    }
    format!("{{{}}}", fields.join(", "))
}

fn random_cnp_rule(rng: &mut Rng) -> String {
    let mut fields = vec![format!("endpointSelector: {}", random_selector(rng, false))];
    for (key, prefix, percent) in
        [("ingress", "from", 60), ("ingressDeny", "from", 25), ("egress", "to", 60), ("egressDeny", "to", 25)]
    {
        if rng.chance(percent) {
            let entries: Vec<String> = (0..rng.below(3)).map(|_| random_cnp_entry(rng, prefix)).collect();
            fields.push(format!("{key}: [{}]", entries.join(", ")));
        }
    }
    format!("{{{}}}", fields.join(", "))
}

fn random_knp_peer(rng: &mut Rng) -> String {
    let namespace_selector = |rng: &mut Rng| match rng.below(3) {
        0 => "{}".to_owned(),
        1 => format!("{{matchLabels: {{kubernetes.io/metadata.name: {}}}}}", rng.pick(NAMESPACES)),
        _ => format!(
            "{{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: {}, values: [{}]}}]}}",
            rng.pick(&["In", "NotIn"]),
            rng.pick(NAMESPACES)
        ),
    };
    match rng.below(4) {
        0 => format!("{{podSelector: {}}}", random_selector(rng, false)),
        1 => format!("{{namespaceSelector: {}}}", namespace_selector(rng)),
        2 => format!(
            "{{podSelector: {}, namespaceSelector: {}}}",
            random_selector(rng, false),
            namespace_selector(rng)
        ),
        _ => {
            let (cidr, except) = random_cidr_set(rng);
            format!("{{ipBlock: {{cidr: {cidr}, except: [{}]}}}}", except.join(", "))
        }
    }
}

fn random_knp_spec(rng: &mut Rng) -> String {
    let mut fields = vec![format!("podSelector: {}", random_selector(rng, false))];
    let types: Option<Vec<&str>> = match rng.below(5) {
        0 | 1 => None,
        2 => Some(vec!["Ingress"]),
        3 => Some(vec!["Egress"]),
        _ => Some(vec!["Ingress", "Egress"]),
    };
    if let Some(types) = &types {
        fields.push(format!("policyTypes: [{}]", types.join(", ")));
    }
    for (key, peers_key, ty) in [("ingress", "from", "Ingress"), ("egress", "to", "Egress")] {
        if types.as_ref().is_some_and(|t| !t.contains(&ty)) || rng.chance(30) {
            continue;
        }
        let entries: Vec<String> = (0..rng.below(3))
            .map(|_| {
                let mut entry = Vec::new();
                if rng.chance(70) {
                    let peers: Vec<String> = (0..rng.below(3)).map(|_| random_knp_peer(rng)).collect();
                    entry.push(format!("{peers_key}: [{}]", peers.join(", ")));
                }
                if rng.chance(60) {
                    let ports: Vec<String> = (0..rng.below(3)).map(|_| random_port(rng, false)).collect();
                    entry.push(format!("ports: [{}]", ports.join(", ")));
                }
                format!("{{{}}}", entry.join(", "))
            })
            .collect();
        fields.push(format!("{key}: [{}]", entries.join(", ")));
    }
    format!("{{{}}}", fields.join(", "))
}

/// A random node file: endpoints in two namespaces whose addresses sit inside the CIDR pool,
/// host addresses, and up to four policies.
fn random_node_file(rng: &mut Rng) -> String {
    let mut text = String::from("apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec:\n");
    let mut hosts = Vec::new();
    if rng.chance(70) {
        hosts.push("10.1.2.200");
    }
    if rng.chance(50) {
        hosts.push("'fd00:1:2::c8'");
    }
    text += &format!("  hostAddresses: [{}]\n  endpoints:\n", hosts.join(", "));
    for i in 0..2 + rng.below(5) {
        let mut labels = vec![format!("app: {}", rng.pick(&["a", "b", "c"]))];
        if rng.chance(60) {
            labels.push(format!("tier: {}", rng.pick(&["x", "y"])));
        }
        if rng.chance(20) {
            labels.push("env: prod".to_owned());
        }
        let (v4, v6) = match rng.below(4) {
            0 => (false, true),
            1 => (true, true),
            _ => (true, false),
        };
        let mut fields = vec![
            format!("name: ep{i}"),
            format!("interface: lxc{i}"),
            format!("namespace: {}", rng.pick(NAMESPACES)),
        ];
        if v4 {
            fields.push(format!("ipv4: 10.1.2.{}", 10 + i));
        }
        if v6 {
            fields.push(format!("ipv6: 'fd00:1:2::{:x}'", 10 + i));
        }
        fields.push(format!("labels: {{{}}}", labels.join(", ")));
        text += &format!("    - {{{}}}\n", fields.join(", "));
    }
    for k in 0..1 + rng.below(4) {
        let namespace = rng.pick(NAMESPACES);
        if rng.chance(75) {
            text += &format!(
                "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{k}, namespace: {namespace}}}\n"
            );
            if rng.chance(70) {
                text += &format!("spec: {}\n", random_cnp_rule(rng));
            } else {
                let rules: Vec<String> = (0..1 + rng.below(2)).map(|_| random_cnp_rule(rng)).collect();
                text += &format!("specs: [{}]\n", rules.join(", "));
            }
        } else {
            text += &format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: {namespace}}}\nspec: {}\n",
                random_knp_spec(rng)
            );
        }
    }
    text
}

fn random_peer(rng: &mut Rng, cfg: &NodeConfig) -> IpAddr {
    let r = |rng: &mut Rng| rng.below(256);
    let text = match rng.below(14) {
        0..=3 => {
            let ep = &cfg.endpoints[rng.below(cfg.endpoints.len())];
            let addrs: Vec<IpAddr> = ep.addresses().collect();
            return addrs[rng.below(addrs.len())];
        }
        4 if !cfg.host_addresses.is_empty() => {
            return cfg.host_addresses[rng.below(cfg.host_addresses.len())];
        }
        5 => format!("10.1.2.{}", r(rng)),
        6 => format!("10.1.{}.{}", r(rng), r(rng)),
        7 => format!("10.{}.{}.{}", r(rng), r(rng), r(rng)),
        8 => {
            format!("{}.{}.{}.{}", rng.pick(&[192, 203, 8, 169]), rng.pick(&[168, 0, 8, 254]), r(rng), r(rng))
        }
        9 => format!("203.0.113.{}", r(rng)),
        10 => format!("fd00:1:2::{:x}", rng.below(32)),
        11 => format!("fd00:{:x}::{:x}", rng.below(4), rng.below(65536)),
        12 => format!("2001:db8::{:x}", rng.below(65536)),
        _ => format!("{:x}::{:x}", rng.below(65536), rng.below(65536)),
    };
    text.parse().expect("generated address")
}

fn random_flow(rng: &mut Rng, cfg: &NodeConfig) -> (String, Direction, FlowKey) {
    let endpoint = cfg.endpoints[rng.below(cfg.endpoints.len())].name.clone();
    let direction = rng.pick(&[Ingress, Egress]);
    let peer = random_peer(rng, cfg);
    let proto = rng.pick(&[TCP, TCP, UDP, UDP, SCTP, ICMP, ICMP6, GRE]);
    let dport = if rng.chance(85) {
        rng.pick(&[0, 1, 3, 8, 22, 23, 53, 54, 79, 80, 81, 128, 129, 255, 443, 8080, 8081, 8087, 9080, 65535])
    } else {
        rng.below(65536) as u16
    };
    let key = flow(cfg, &endpoint, direction, peer, proto, dport);
    (endpoint, direction, FlowKey { sport: rng.below(65536) as u16, ..key })
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_policies_agree_with_the_oracle() {
    let cases = env_number("SLUICE_POLICY_CASES", 2_000);
    let seed = env_number("SLUICE_POLICY_SEED", 0x5eed_0051_c390);
    let (mut allowed, mut denied, mut enforced) = (0usize, 0usize, 0usize);
    let mut entries = 0usize;
    let started = Instant::now();
    for case in 0..cases {
        let case_seed = seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rng = Rng(case_seed);
        let text = random_node_file(&mut rng);
        let cfg = model::parse_str(&text, "random.yaml").unwrap_or_else(|e| {
            panic!("the generator wrote an invalid file (case seed {case_seed:#x}): {e}\n{text}")
        });
        let resolved = policy::resolve(&cfg).expect("resolves");
        assert_keys_unique(&resolved, &format!("case seed {case_seed:#x}\n{text}"));
        entries +=
            resolved.policies().map(|(_, p)| p.ingress.entries.len() + p.egress.entries.len()).sum::<usize>();
        for _ in 0..FLOWS_PER_CASE {
            let (endpoint, direction, key) = random_flow(&mut rng, &cfg);
            let expected = oracle::decide(&cfg, &endpoint, direction, &key).expect("known endpoint");
            let (actual, identity) = datapath(&resolved, &endpoint, direction, &key);
            assert_eq!(
                actual,
                expected,
                "entries disagree with the oracle (SLUICE_POLICY_SEED={seed:#x}, case {case}, case seed {case_seed:#x})\n\
                 {endpoint} {direction}: {key:?}, peer identity {identity}\n{}\ninput:\n{text}",
                show_entries(&resolved, &endpoint, direction)
            );
            match expected {
                Verdict::Allow => allowed += 1,
                Verdict::Deny => denied += 1,
            }
            if resolved.endpoint(&endpoint).expect("resolved").direction(direction).enforced {
                enforced += 1;
            }
        }
    }
    let flows = allowed + denied;
    eprintln!(
        "random policies: {cases} nodes, {flows} flows ({allowed} allowed, {denied} denied, {enforced} under \
         enforcement), {entries} entries, {:.2?}",
        started.elapsed()
    );
    // The generator must exercise both verdicts, under enforcement and not.
    if cases >= 100 {
        assert!(allowed * 10 > flows && denied * 10 > flows, "{allowed} allowed, {denied} denied");
        assert!(enforced * 4 > flows && enforced < flows, "{enforced} of {flows} enforced");
    }
}

// --- size ---------------------------------------------------------------------------------

/// A node with `endpoints` endpoints (in 50 apps; with `distinct`, every endpoint its own
/// label set) and one policy of `rules` rules. Rule `j` selects every endpoint except those of
/// app `j % 50`, so with 105 rules every endpoint is selected by 102 or 103 of them, and the
/// apps differ in which (50 distinct rule sets to resolve).
fn big_node_file(endpoints: usize, rules: usize, distinct: bool) -> String {
    let mut text =
        String::from("apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: big}\nspec:\n  endpoints:\n");
    for i in 0..endpoints {
        let pod = if distinct { format!(", pod: p{i}") } else { String::new() };
        text += &format!(
            "    - {{name: ep{i}, interface: lxc{i}, ipv4: 10.200.{}.{}, labels: {{app: app{}, tier: t{}{pod}}}}}\n",
            i / 250,
            i % 250 + 1,
            i % 50,
            i % 5
        );
    }
    text += "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big}\nspecs:\n";
    for j in 0..rules {
        let mut rule = format!(
            "  - endpointSelector: {{matchExpressions: [{{key: app, operator: NotIn, values: [app{}]}}]}}\n    ingress:\n      - fromEndpoints: [{{matchLabels: {{app: app{}}}}}]\n        \
             toPorts: [{{ports: [{{port: {}, endPort: {}, protocol: TCP}}]}}]\n    egress:\n      - toCIDRSet: \
             [{{cidr: 10.{}.0.0/16, except: [10.{}.1.0/24]}}]\n        toPorts: [{{ports: [{{port: 443}}]}}]\n",
            j % 50,
            (j * 7 + 3) % 50,
            8000 + j,
            8000 + j + j % 10,
            j % 200,
            j % 200
        );
        if j % 5 == 0 {
            rule += "      - toEntities: [cluster]\n        icmps: [{fields: [{type: 8}]}]\n";
        }
        if j % 10 == 0 {
            rule +=
                "    ingressDeny:\n      - fromEntities: [world]\n        toPorts: [{ports: [{port: 22}]}]\n";
        }
        text += &rule;
    }
    text
}

fn time_resolution(endpoints: usize, rules: usize, distinct: bool) -> Resolved {
    let text = big_node_file(endpoints, rules, distinct);
    let started = Instant::now();
    let cfg = model::parse_str(&text, "big.yaml").expect("the big node parses");
    let parsed = started.elapsed();
    let started = Instant::now();
    let resolved = policy::resolve(&cfg).expect("resolves");
    let took = started.elapsed();
    let entries: usize = cfg
        .endpoints
        .iter()
        .map(|e| {
            let p = resolved.endpoint(&e.name).expect("resolved");
            p.ingress.entries.len() + p.egress.entries.len()
        })
        .sum();
    let least_rules = cfg
        .endpoints
        .iter()
        .map(|e| cfg.policies[0].rules.iter().filter(|r| r.subject.matches(&e.labels)).count())
        .min()
        .unwrap_or(0);
    eprintln!(
        "resolution: {endpoints} endpoints ({} label sets), {rules} rules, at least {least_rules} selecting \
         each endpoint: {took:.2?} ({entries} entries over all endpoints; parsing took {parsed:.2?}; {} build)",
        resolved.policies().count(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    resolved
}

#[test]
fn a_thousand_endpoints_with_a_hundred_rules_each_resolve() {
    let resolved = time_resolution(1_000, 105, false);
    assert_eq!(resolved.policies().count(), 50);
    for (_, policy) in resolved.policies() {
        assert!(policy.ingress.enforced && policy.egress.enforced);
        assert!(!policy.ingress.entries.is_empty() && !policy.egress.entries.is_empty());
    }
    // The worst case for sharing: every endpoint its own identity.
    let distinct = time_resolution(1_000, 105, true);
    assert_eq!(distinct.policies().count(), 1_000);
}
