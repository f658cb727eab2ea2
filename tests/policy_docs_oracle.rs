//! Random policies, compiled and run, judged by a reference evaluator that reads the policy
//! documents as written (`support/doc_oracle.rs`: plain YAML values, no model types, no
//! lowering, no matching code shared with the compiler).
//!
//! The generator mixes CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
//! NetworkPolicy in two namespaces (with and without Namespace documents), with
//! allow and deny sections, endpoint selectors (labels, expressions, cross-namespace),
//! IPv4 and IPv6 CIDRs with excepts, entities, ports with and without a protocol (TCP,
//! UDP, SCTP, ANY), port ranges, ports without a number, named ports (endpoints name
//! their ports, each its own number), Cilium's port 0, ICMP and ICMPv6
//! types by number and by name, `enableDefaultDeny`, reserved entities, `toServices` (by
//! name and by labels, Services with and without a selector), AdminNetworkPolicy
//! and BaselineAdminNetworkPolicy tiers (priorities, Allow/Deny/Pass, namespace and pod
//! subjects and peers, egress networks, port numbers, ranges and names), and the node's
//! `allowLocalhost` setting (the node's own addresses are peers of every flow). Every
//! port a policy names is probed at itself and one each side (so a range at its ends and
//! one past), every CIDR at its ends and one past, and every except likewise. Seeded;
//! `SLUICE_DOC_ORACLE_CASES` sets how many nodes. Simulator always; the kernel too when
//! the gate allows.

#[path = "support/doc_oracle.rs"]
mod doc_oracle;

use doc_oracle::{Docs, Flow};
use sluice::golden::probes::flow_frame;
use sluice::maps::policy::{ct4_key, ct6_key, EGRESS, INGRESS, TC_ACT_OK, TC_ACT_SHOT};
use sluice::model;
use sluice::node::load::{load_plan, Loaded};
use sluice::node::plan;
use sluice::node::sim::SimNode;
use sluice::policy::FlowKey;
use sluice::sys::{self, TestRunOpts};
use std::collections::BTreeSet;
use std::net::IpAddr;

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
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// (name, namespace, ipv4, ipv6, labels)
const ENDPOINTS: [(&str, &str, &str, Option<&str>, &str); 5] = [
    ("web", "default", "10.9.0.10", Some("fd00::a"), "{app: web, tier: front}"),
    ("api", "default", "10.9.0.11", Some("fd00::b"), "{app: api, tier: back}"),
    ("db", "prod", "10.9.1.12", Some("fd00::1:c"), "{app: db, tier: back}"),
    ("cache", "prod", "10.9.1.13", None, "{app: cache}"),
    ("api-prod", "prod", "10.9.1.14", Some("fd00::1:e"), "{app: api, tier: back}"),
];
/// Each endpoint's named ports (one name, two numbers: each destination its own).
const NAMED_PORTS: [&str; 5] = [
    "[{name: http, port: 80}]",
    "[{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]",
    "[{name: pg, port: 5432}]",
    "[]",
    "[{name: http, port: 9000}, {name: dns, port: 53, protocol: UDP}]",
];
const HOSTS: [&str; 2] = ["192.168.1.5", "2001:db8:ffff::5"];
const APPS: [&str; 5] = ["web", "api", "db", "cache", "nope"];
const NAMESPACES: [&str; 2] = ["default", "prod"];

/// CIDR sets the generator draws from: (cidr, excepts).
const CIDRS: [(&str, &[&str]); 7] = [
    ("203.0.113.0/24", &["203.0.113.128/25"]),
    ("198.51.100.64/26", &[]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("10.9.0.0/16", &[]),
    ("2001:db8:1::/48", &["2001:db8:1:8000::/49"]),
    ("2001:db8:2:3::/64", &[]),
    ("::/0", &["fd00::/8"]),
];
const PORTS: [u16; 7] = [22, 53, 80, 443, 5432, 8080, 9000];
const ICMP4: [u16; 4] = [0, 8, 13, 17];
const ICMP6: [u16; 3] = [128, 129, 139];

/// A subject selector: one that selects someone, mostly.
fn subject(r: &mut Lcg) -> String {
    match r.below(4) {
        0 => "{}".into(),
        1 => format!(
            "{{matchExpressions: [{{key: tier, operator: {}, values: [back]}}]}}",
            r.pick(&["In", "NotIn"])
        ),
        _ => format!("{{matchLabels: {{app: {}}}}}", r.pick(&APPS[..4])),
    }
}

fn selector(r: &mut Lcg) -> String {
    match r.below(5) {
        0 => "{}".into(),
        1 => format!(
            "{{matchExpressions: [{{key: tier, operator: {}, values: [back]}}]}}",
            r.pick(&["In", "NotIn"])
        ),
        2 => format!(
            "{{matchExpressions: [{{key: tier, operator: {}}}]}}",
            r.pick(&["Exists", "DoesNotExist"])
        ),
        _ => format!("{{matchLabels: {{app: {}}}}}", r.pick(&APPS)),
    }
}

fn cidr_set(r: &mut Lcg) -> String {
    let (cidr, except) = r.pick(&CIDRS);
    if except.is_empty() || r.chance(3) {
        format!("{{cidr: \"{cidr}\"}}")
    } else {
        format!(
            "{{cidr: \"{cidr}\", except: [{}]}}",
            except.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ")
        )
    }
}

/// A CNP entry's peer fields (`from` or `to`), or none (ports alone).
fn cnp_peer(r: &mut Lcg, dir: &str) -> Option<String> {
    Some(match r.below(10) {
        0 => format!("{dir}Endpoints: [{}]", selector(r)),
        1 => format!(
            "{dir}Endpoints: [{{matchLabels: {{app: {}, io.kubernetes.pod.namespace: {}}}}}]",
            r.pick(&APPS),
            r.pick(&NAMESPACES)
        ),
        2 | 6 => format!("{dir}CIDR: [\"{}\"]", r.pick(&CIDRS).0),
        3 | 7 => format!("{dir}CIDRSet: [{}]", cidr_set(r)),
        8 => format!("{dir}CIDR: [\"{}\", \"{}\"]", r.pick(&CIDRS).0, r.pick(&CIDRS).0),
        4 => format!(
            "{dir}Entities: [{}]",
            r.pick(&["world", "all", "cluster", "host", "world", "remote-node", "kube-apiserver", "health"])
        ),
        5 => format!("{dir}Endpoints: [{}, {}]", selector(r), selector(r)),
        9 if r.chance(2) => format!(
            "{dir}Endpoints: [{{matchLabels: {{io.cilium.k8s.namespace.labels.env: {}}}, matchExpressions: [{{key: io.kubernetes.pod.namespace, operator: Exists}}]}}]",
            r.pick(&["prod", "dev"])
        ),
        _ => return None,
    })
}

fn cnp_port(r: &mut Lcg) -> String {
    let p = *r.pick(&PORTS);
    // A third without a protocol: the case a lowering most easily gets wrong.
    let proto = match r.below(6) {
        0 | 1 => String::new(),
        2 => ", protocol: ANY".into(),
        n => format!(", protocol: {}", ["TCP", "UDP", "SCTP"][n as usize - 3]),
    };
    match r.below(9) {
        0 | 1 => format!("{{port: \"{p}\", endPort: {}{proto}}}", p + 1 + r.below(20) as u16),
        2 | 3 if !proto.is_empty() => format!("{{{}}}", &proto[2..]),
        // Cilium's port 0: every port.
        4 if !proto.is_empty() => format!("{{port: \"0\"{proto}}}"),
        // A named port: each destination's own number.
        5 => format!("{{port: {}{proto}}}", r.pick(&["http", "dns", "pg", "HTTP"])),
        _ => format!("{{port: \"{p}\"{proto}}}"),
    }
}

/// An ICMP type as a number or, a third of the time, by Cilium's name for it.
fn icmp_type(r: &mut Lcg, v6: bool) -> String {
    let (numbers, names): (&[u16], &[&str]) = if v6 {
        (&ICMP6, &["EchoRequest", "EchoReply", "ICMPNodeInformationQuery"])
    } else {
        (&ICMP4, &["EchoReply", "EchoRequest", "Timestamp"])
    };
    if r.chance(3) {
        (*r.pick(names)).to_string()
    } else {
        r.pick(numbers).to_string()
    }
}

fn cnp_l4(r: &mut Lcg) -> Option<String> {
    Some(match r.below(4) {
        0 => return None,
        1 => {
            let fields: Vec<String> = (0..1 + r.below(2))
                .map(|_| {
                    if r.chance(2) {
                        format!("{{type: {}, family: IPv6}}", icmp_type(r, true))
                    } else if r.chance(2) {
                        format!("{{type: {}, family: IPv4}}", icmp_type(r, false))
                    } else {
                        format!("{{type: {}}}", icmp_type(r, false))
                    }
                })
                .collect();
            format!("icmps: [{{fields: [{}]}}]", fields.join(", "))
        }
        _ => {
            let ports: Vec<String> = (0..1 + r.below(2)).map(|_| cnp_port(r)).collect();
            format!("toPorts: [{{ports: [{}]}}]", ports.join(", "))
        }
    })
}

fn cnp(r: &mut Lcg, n: u64) -> String {
    // One in five cluster-wide: no namespace, selectors unscoped.
    let metadata = if r.chance(5) {
        format!("kind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c{n}}}")
    } else {
        format!("kind: CiliumNetworkPolicy\nmetadata: {{name: c{n}, namespace: {}}}", r.pick(&NAMESPACES))
    };
    let mut y =
        format!("---\napiVersion: cilium.io/v2\n{metadata}\nspec:\n  endpointSelector: {}\n", subject(r));
    if r.chance(5) {
        y += &format!(
            "  enableDefaultDeny: {}\n",
            r.pick(&[
                "{ingress: false}",
                "{egress: false}",
                "{ingress: false, egress: true}",
                "{egress: false, ingress: false}",
                "{ingress: true}"
            ])
        );
    }
    for section in ["ingress", "egress", "ingressDeny", "egressDeny"] {
        if r.chance(2) {
            continue;
        }
        let dir = if section.starts_with("ingress") { "from" } else { "to" };
        y += &format!("  {section}:\n");
        for _ in 0..1 + r.below(2) {
            // toServices: egress allow entries only, without ports (Cilium refuses the rest).
            if section == "egress" && r.chance(5) {
                y += &format!("    - {{toServices: [{}]}}\n", to_service(r));
                continue;
            }
            let (peer, l4) = loop {
                let (p, l) = (cnp_peer(r, dir), cnp_l4(r));
                if p.is_some() || l.is_some() {
                    break (p, l);
                }
            };
            let parts: Vec<String> = [peer, l4].into_iter().flatten().collect();
            y += &format!("    - {{{}}}\n", parts.join(", "));
        }
    }
    y
}

/// A `toServices` item naming the node's Services (see [`SERVICES`]).
fn to_service(r: &mut Lcg) -> String {
    match r.below(5) {
        0 => "{k8sService: {serviceName: api}}".into(),
        1 => format!("{{k8sService: {{serviceName: db, namespace: {}}}}}", r.pick(&NAMESPACES)),
        2 => "{k8sService: {serviceName: ext, namespace: default}}".into(),
        3 => format!("{{k8sServiceSelector: {{selector: {{matchLabels: {{tier: {}}}}}}}}}", r.pick(&["back", "ext"])),
        _ => "{k8sServiceSelector: {selector: {matchExpressions: [{key: tier, operator: Exists}]}, namespace: prod}}"
            .into(),
    }
}

/// Services of every node: two with a selector (api in default, db in prod) and one without
/// (ext, whose EndpointSlice lists an outside address and api's own).
const SERVICES: &str = "---
apiVersion: v1
kind: Service
metadata: {name: api, labels: {tier: back}}
spec: {clusterIP: 10.96.0.10, selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod, labels: {tier: back}}
spec: {clusterIP: 10.96.0.11, selector: {app: db, tier: back}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, labels: {tier: ext}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [203.0.113.9]}, {addresses: [10.9.0.11]}]
ports: [{port: 443}]
";

fn knp_peer(r: &mut Lcg) -> String {
    match r.below(5) {
        0 => format!("{{podSelector: {}}}", selector(r)),
        1 => format!(
            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
            r.pick(&NAMESPACES)
        ),
        2 => format!("{{namespaceSelector: {{}}, podSelector: {}}}", selector(r)),
        3 if r.chance(2) => format!(
            "{{namespaceSelector: {{matchLabels: {{env: {}}}}}, podSelector: {}}}",
            r.pick(&["prod", "dev"]),
            selector(r)
        ),
        3 => format!(
            "{{namespaceSelector: {{matchExpressions: [{{key: team, operator: {}}}]}}}}",
            r.pick(&["Exists", "DoesNotExist"])
        ),
        _ => format!("{{ipBlock: {}}}", cidr_set(r)),
    }
}

fn knp_port(r: &mut Lcg) -> String {
    let p = *r.pick(&PORTS);
    let proto = match r.below(4) {
        0 => String::new(),
        n => format!(", protocol: {}", ["TCP", "UDP", "SCTP"][n as usize - 1]),
    };
    match r.below(5) {
        0 => format!("{{port: {p}, endPort: {}{proto}}}", p + 1 + r.below(20) as u16),
        1 if !proto.is_empty() => format!("{{{}}}", &proto[2..]),
        2 => format!("{{port: {}{proto}}}", r.pick(&["http", "dns", "pg"])),
        _ => format!("{{port: {p}{proto}}}"),
    }
}

fn knp(r: &mut Lcg, n: u64) -> String {
    let mut y = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k{n}, namespace: {}}}\nspec:\n  podSelector: {}\n",
        r.pick(&NAMESPACES),
        subject(r)
    );
    const TYPES: [&[&str]; 4] = [&[], &["Ingress"], &["Egress"], &["Ingress", "Egress"]];
    let types = *r.pick(&TYPES);
    if !types.is_empty() {
        y += &format!("  policyTypes: [{}]\n", types.join(", "));
    }
    for (section, ty, dir) in [("ingress", "Ingress", "from"), ("egress", "Egress", "to")] {
        // Entries for a direction policyTypes leaves out are refused; absent policyTypes
        // take every section.
        if !types.is_empty() && !types.contains(&ty) || r.chance(3) {
            continue;
        }
        let n = r.below(3);
        if n == 0 {
            y += &format!("  {section}: []\n");
            continue;
        }
        y += &format!("  {section}:\n");
        for _ in 0..n {
            let mut parts = Vec::new();
            if !r.chance(3) {
                let peers: Vec<String> = (0..1 + r.below(2)).map(|_| knp_peer(r)).collect();
                parts.push(format!("{dir}: [{}]", peers.join(", ")));
            }
            if !r.chance(3) {
                let ports: Vec<String> = (0..1 + r.below(2)).map(|_| knp_port(r)).collect();
                parts.push(format!("ports: [{}]", ports.join(", ")));
            }
            y += &format!("    - {{{}}}\n", parts.join(", "));
        }
    }
    y
}

fn node(seed: u64) -> String {
    let mut r = Lcg(seed ^ 0x0dd_0c5);
    let mut y = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: docs}}\nspec:\n  hostAddresses: [{}]\n",
        HOSTS.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ")
    );
    if r.chance(2) {
        y += &format!("  policy: {{allowLocalhost: {}}}\n", r.pick(&["policy", "always", "auto"]));
    }
    y += "  endpoints:\n";
    for (i, (name, ns, v4, v6, labels)) in ENDPOINTS.iter().enumerate() {
        let v6 = v6.map_or(String::new(), |a| format!(", ipv6: \"{a}\""));
        let ports = NAMED_PORTS[i];
        y += &format!(
            "    - {{name: {name}, namespace: {ns}, interface: lxc{i}, ipv4: {v4}{v6}, labels: {labels}, ports: {ports}}}\n"
        );
    }
    // Namespace documents: their labels are what namespaceSelector and Cilium's
    // io.cilium.k8s.namespace.labels.* select by.
    if !r.chance(3) {
        y +=
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod, team: data}}\n";
    }
    if r.chance(2) {
        y += "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {env: dev}}\n";
    }
    y += SERVICES;
    for n in 0..2 + r.below(4) {
        y += &if r.chance(3) { knp(&mut r, n) } else { cnp(&mut r, n) };
    }
    // Admin tiers (in every node: they change a small share of the flows), drawn after
    // everything else so that a seed's other documents stay as they were. Distinct priorities: the API leaves the order of equal ones undefined.
    {
        let mut priorities: Vec<u64> = Vec::new();
        for n in 0..1 + r.below(2) {
            let mut p = r.below(50);
            while priorities.contains(&p) {
                p += 1;
            }
            priorities.push(p);
            y += &admin(&mut r, Some(p), n);
        }
    }
    if r.chance(2) {
        y += &admin(&mut r, None, 0);
    }
    y
}

/// An AdminNetworkPolicy of `priority`, or (`None`) the BaselineAdminNetworkPolicy.
fn admin(r: &mut Lcg, priority: Option<u64>, n: u64) -> String {
    let (kind, name, actions): (&str, String, &[&str]) = match priority {
        Some(_) => ("AdminNetworkPolicy", format!("a{n}"), &["Allow", "Deny", "Pass"]),
        None => ("BaselineAdminNetworkPolicy", "default".into(), &["Allow", "Deny"]),
    };
    let mut y = format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
    );
    if let Some(p) = priority {
        y += &format!("  priority: {p}\n");
    }
    let subject = match r.below(4) {
        0 => "{namespaces: {}}".to_string(),
        1 => format!(
            "{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
            r.pick(&NAMESPACES)
        ),
        2 => format!("{{namespaces: {{matchLabels: {{env: {}}}}}}}", r.pick(&["prod", "dev"])),
        _ => format!("{{pods: {{namespaceSelector: {{}}, podSelector: {}}}}}", subject(r)),
    };
    y += &format!("  subject: {subject}\n");
    for (section, dir) in [("ingress", "from"), ("egress", "to")] {
        if r.chance(3) {
            continue;
        }
        y += &format!("  {section}:\n");
        for _ in 0..1 + r.below(3) {
            let peers: Vec<String> =
                (0..1 + r.below(2)).map(|_| admin_peer(r, section == "egress")).collect();
            let ports = if r.chance(2) {
                String::new()
            } else {
                let ports: Vec<String> = (0..1 + r.below(2)).map(|_| admin_port(r)).collect();
                format!(", ports: [{}]", ports.join(", "))
            };
            y += &format!("    - {{action: {}, {dir}: [{}]{ports}}}\n", r.pick(actions), peers.join(", "));
        }
    }
    y
}

fn admin_peer(r: &mut Lcg, egress: bool) -> String {
    match r.below(if egress { 6 } else { 5 }) {
        0 => "{namespaces: {}}".into(),
        1 => format!(
            "{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
            r.pick(&NAMESPACES)
        ),
        2 => format!(
            "{{namespaces: {{matchExpressions: [{{key: team, operator: {}}}]}}}}",
            r.pick(&["Exists", "DoesNotExist"])
        ),
        3 | 4 => format!("{{pods: {{namespaceSelector: {{}}, podSelector: {}}}}}", selector(r)),
        _ => format!("{{networks: [\"{}\"]}}", r.pick(&CIDRS).0),
    }
}

fn admin_port(r: &mut Lcg) -> String {
    let p = *r.pick(&PORTS);
    match r.below(4) {
        0 => format!("{{portNumber: {{port: {p}}}}}"),
        1 => format!("{{portNumber: {{protocol: UDP, port: {p}}}}}"),
        2 => format!("{{portRange: {{start: {p}, end: {}}}}}", p + 1 + r.below(20) as u16),
        _ => format!("{{namedPort: {}}}", r.pick(&["http", "dns", "pg"])),
    }
}

/// Ports a node's policies name, each with its neighbours (a range's ends and one past).
fn probe_ports(text: &str) -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([1, 22]);
    for word in text.split(|c: char| !c.is_ascii_digit()) {
        if let Ok(p) = word.parse::<u16>() {
            let range_end = text.contains(&format!("endPort: {p}")) || text.contains(&format!("end: {p}}}"));
            if PORTS.contains(&p) || (p > 22 && p < 10_000 && range_end) {
                ports.extend([p - 1, p, p + 1]);
            }
        }
    }
    ports
}

/// Outside addresses: every CIDR's and except's first and last address, and one past each.
fn world() -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    let mut edges = |cidr: &str| {
        let (net, len) = cidr.split_once('/').expect("cidr");
        let len: u32 = len.parse().expect("len");
        match net.parse::<IpAddr>().expect("addr") {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let last = a | u32::MAX.checked_shr(len).unwrap_or(0);
                for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1)] {
                    out.insert(IpAddr::from(std::net::Ipv4Addr::from(x)));
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let last = a | u128::MAX.checked_shr(len).unwrap_or(0);
                for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1), a | 1] {
                    out.insert(IpAddr::from(std::net::Ipv6Addr::from(x)));
                }
            }
        }
    };
    for (cidr, excepts) in CIDRS {
        edges(cidr);
        for e in excepts {
            edges(e);
        }
    }
    out.extend(
        ["203.0.113.9", "10.1.2.3", "2001:db8:1::9", "fd12::1"]
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("lit")),
    );
    // Addresses of the node itself are peers of their own kinds, not outside ones; the
    // unspecified, broadcast and multicast addresses are no one's source.
    out.retain(|a| {
        let special = match a {
            IpAddr::V4(x) => x.is_unspecified() || x.is_broadcast() || x.is_multicast(),
            IpAddr::V6(x) => x.is_unspecified() || x.is_multicast(),
        };
        !special && !HOSTS.iter().any(|h| h.parse::<IpAddr>().ok() == Some(*a))
    });
    out.into_iter().collect()
}

/// ICMP echo types: their id keeps flows apart in conntrack.
const ECHO: [u16; 4] = [0, 8, 128, 129];

/// The conntrack keys an id-less ICMP flow could meet: its own tuple in its direction (an
/// earlier flow of another id-less type between the same two addresses) and the reversed
/// tuple in the other direction (such a flow the other way, which would make this one
/// its "reply"). Removed from both engines, so that policy alone judges the flow.
fn forget_id_less_icmp(sim: &mut SimNode, kernel: Option<&Loaded>, k: &FlowKey, ingress: bool) {
    let (dir, opposite) = if ingress { (INGRESS, EGRESS) } else { (EGRESS, INGRESS) };
    for (src, dst, dir) in [(k.src, k.dst, dir), (k.dst, k.src, opposite)] {
        let (map, key) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut key = vec![0u8; ct4_key::SIZE];
                key[ct4_key::SADDR..ct4_key::SADDR + 4].copy_from_slice(&s.octets());
                key[ct4_key::DADDR..ct4_key::DADDR + 4].copy_from_slice(&d.octets());
                key[ct4_key::PROTO] = k.proto;
                key[ct4_key::DIR] = dir;
                ("ct4", key)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut key = vec![0u8; ct6_key::SIZE];
                key[ct6_key::SADDR..ct6_key::SADDR + 16].copy_from_slice(&s.octets());
                key[ct6_key::DADDR..ct6_key::DADDR + 16].copy_from_slice(&d.octets());
                key[ct6_key::PROTO] = k.proto;
                key[ct6_key::DIR] = dir;
                ("ct6", key)
            }
            _ => unreachable!("flows are of one family"),
        };
        let _ = sim.maps.get_mut(map).expect("planned").delete(&key);
        if let Some(k) = kernel {
            let _ = k.maps[map].delete(&key);
        }
    }
}

fn cases() -> u64 {
    std::env::var("SLUICE_DOC_ORACLE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4)
}

#[test]
fn random_policy_documents_agree_with_the_document_oracle() {
    let kernel = sys::require_kernel("random_policy_documents_agree_with_the_document_oracle");
    let world = world();
    let mut bad = Vec::new();
    let (mut flows, mut allowed) = (0usize, 0usize);
    // Flows whose verdict the admin tiers changed (the verdict without them differs).
    let mut by_admin = 0usize;
    let mut kinds = BTreeSet::new();
    let mut sport = 10_000u16;
    for seed in 0..cases() {
        let text = node(seed);
        let cfg = model::parse_str(&text, &format!("docs-{seed}.yaml"))
            .unwrap_or_else(|e| panic!("generated node {seed} does not parse: {e}\n{text}"));
        let docs = Docs::parse(&text);
        let without_admin = docs.without_admin();
        if std::env::var_os("SLUICE_DOC_ORACLE_SHOW").is_some() {
            eprintln!("--- node {seed} ---\n{text}");
        }
        let plan = plan(&cfg).expect("plans");
        let mut sim = SimNode::new(&plan).expect("the simulator accepts");
        let loaded = kernel.then(|| load_plan(&sys::kernel(), &plan).expect("the kernel accepts"));
        let ports = probe_ports(&text);
        let mut r = Lcg(seed);
        for (i, subject) in cfg.endpoints.iter().enumerate() {
            let ep = docs.endpoint(&subject.name);
            let mut peers: Vec<IpAddr> = docs
                .endpoints
                .iter()
                .filter(|e| e.name != ep.name)
                .flat_map(|e| e.addresses.clone())
                .collect();
            peers.extend(HOSTS.iter().map(|h| h.parse::<IpAddr>().expect("lit")));
            peers.extend(world.iter().copied());
            for ingress in [true, false] {
                let program = format!("{}_ep_{}", if ingress { "to" } else { "from" }, i + 1);
                for &peer in &peers {
                    let Some(&own) = ep.addresses.iter().find(|a| a.is_ipv4() == peer.is_ipv4()) else {
                        continue;
                    };
                    let mut l4: Vec<(u8, u16)> = Vec::new();
                    for proto in [6u8, 17, 132] {
                        // A sample of the probe ports per peer keeps the run short; over
                        // the peers every port is probed for every protocol.
                        l4.extend(ports.iter().filter(|_| r.chance(3)).map(|&p| (proto, p)));
                    }
                    let icmp: &[u16] = if peer.is_ipv4() { &ICMP4 } else { &ICMP6 };
                    l4.extend(icmp.iter().map(|&t| (if peer.is_ipv4() { 1 } else { 58 }, t)));
                    for (proto, dport) in l4 {
                        sport = sport.checked_add(1).unwrap_or(10_000);
                        let (src, dst) = if ingress { (peer, own) } else { (own, peer) };
                        let key = FlowKey { src, dst, proto, sport, dport };
                        let want = doc_oracle::decide(&docs, &ep.name, ingress, &Flow { peer, proto, dport });
                        let want_code = if want { TC_ACT_OK as u32 } else { TC_ACT_SHOT as u32 };
                        by_admin += usize::from(
                            want != doc_oracle::decide(
                                &without_admin,
                                &ep.name,
                                ingress,
                                &Flow { peer, proto, dport },
                            ),
                        );
                        let frame = flow_frame(&key);
                        if (proto == 1 || proto == 58) && !ECHO.contains(&dport) {
                            forget_id_less_icmp(&mut sim, loaded.as_ref(), &key, ingress);
                        }
                        let got = sim.run(&program, &frame).expect("runs").retval as u32;
                        let got_kernel = loaded.as_ref().map(|k| {
                            k.programs[&program]
                                .test_run(&TestRunOpts::packet(&frame))
                                .expect("test run")
                                .retval
                        });
                        flows += 1;
                        allowed += usize::from(want);
                        kinds.insert((ingress, proto, want));
                        if got != want_code || got_kernel.is_some_and(|k| k != want_code) {
                            bad.push(format!(
                                "seed {seed}: {} {} {key:?}: document oracle {want_code}, simulator {got}, kernel {got_kernel:?}",
                                ep.name,
                                if ingress { "ingress" } else { "egress" }
                            ));
                        }
                    }
                }
            }
        }
        if bad.len() > 40 {
            eprintln!("{text}");
            break;
        }
    }
    eprintln!(
        "{flows} flows judged by the document oracle ({allowed} allowed, {by_admin} decided by admin tiers)"
    );
    assert!(
        allowed > flows / 20 && allowed < flows - flows / 20,
        "both verdicts well represented: {allowed} of {flows}"
    );
    // Every protocol in both directions reached both verdicts.
    for ingress in [true, false] {
        for proto in [1u8, 6, 17, 58, 132] {
            for want in [true, false] {
                assert!(
                    kinds.contains(&(ingress, proto, want)),
                    "no flow of protocol {proto} (ingress {ingress}) was {}",
                    if want { "allowed" } else { "denied" }
                );
            }
        }
    }
    let shown = bad.len().min(40);
    assert!(bad.is_empty(), "{} flows differ (first {shown}):\n{}", bad.len(), bad[..shown].join("\n"));
    // The admin tiers are exercised: over 1% of the flows get another verdict without them.
    assert!(by_admin * 100 > flows, "the admin tiers decide too few flows: {by_admin} of {flows}");
}
