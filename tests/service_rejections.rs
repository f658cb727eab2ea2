//! Service and EndpointSlice rejections and acceptances, as specifications.
//!
//! Each rejection case is a node file (inline, named `<case>.yaml` in its error) and the exact
//! error it must produce: file, line and column of the offending node, field path, message.
//! `Text::Docs` cases are Service and EndpointSlice documents written first in their file, so
//! their lines count from the top of the case; the helper appends a minimal Node document.
//! Acceptance tests follow the table: the default node's service, every field's meaning, and
//! equivalent spellings giving equal configs.

use std::net::IpAddr;

use sluice::lb::maglev::{Table, TableSize};
use sluice::model::policy::Protocol;
use sluice::model::{self, Backend, BackendState, LbAlgorithm, NodeConfig, Service, SessionAffinity};

/// Appended to `Text::Docs` cases: the one Node every file needs.
const NODE: &str = "---\napiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\n";

#[path = "support/rejections.rs"]
mod rejections;

/// How a case's text becomes a file.
#[derive(Clone, Copy)]
enum Text {
    /// A whole node file.
    Node(&'static str),
    /// Service and EndpointSlice documents; a Node document is appended.
    Docs(&'static str),
}

/// (case name, input, expected error)
const CASES: &[(&str, Text, &str)] = &[
    (
        "service-unknown-field",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.1]
  ports: [{port: 80}]
",
        ),
        "service-unknown-field.yaml:6:3: spec: unknown field `externalIPs`, expected one of `type`, `clusterIP`, `clusterIPs`, `ipFamilies`, `ipFamilyPolicy`, `selector`, `ports`, `sessionAffinity`, `sessionAffinityConfig`",
    ),
    (
        "service-nodeport",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-nodeport.yaml:5:9: spec.type: service type NodePort is not supported: sluice load-balances ClusterIP services only",
    ),
    (
        "service-unknown-type",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: Internal
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-unknown-type.yaml:5:9: spec.type: unknown service type `Internal`; expected ClusterIP, NodePort, LoadBalancer or ExternalName",
    ),
    (
        "service-headless",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  ports: [{port: 80}]
",
        ),
        "service-headless.yaml:5:14: spec.clusterIP: a headless Service (clusterIP: None) has no address to load-balance: sluice reads ClusterIP services with an address",
    ),
    (
        "service-headless-in-list",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [None]
  ports: [{port: 80}]
",
        ),
        "service-headless-in-list.yaml:5:16: spec.clusterIPs[0]: a headless Service (clusterIP: None) has no address to load-balance: sluice reads ClusterIP services with an address",
    ),
    (
        "service-no-cluster-ip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
",
        ),
        "service-no-cluster-ip.yaml:5:3: spec: a ClusterIP Service needs spec.clusterIP (or clusterIPs): sluice does not allocate service addresses",
    ),
    (
        "service-empty-cluster-ip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: \"\"
  ports: [{port: 80}]
",
        ),
        "service-empty-cluster-ip.yaml:5:14: spec.clusterIP: an empty clusterIP asks for an allocated address: sluice does not allocate service addresses; write the address",
    ),
    (
        "service-bad-cluster-ip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0
  ports: [{port: 80}]
",
        ),
        "service-bad-cluster-ip.yaml:5:14: spec.clusterIP: `10.96.0` is not an IPv4 or IPv6 address",
    ),
    (
        "service-loopback-cluster-ip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 127.0.0.1
  ports: [{port: 80}]
",
        ),
        "service-loopback-cluster-ip.yaml:5:14: spec.clusterIP: `127.0.0.1` is not a unicast address (unspecified, loopback, multicast or broadcast)",
    ),
    (
        "service-cluster-ips-disagree",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.11]
  ports: [{port: 80}]
",
        ),
        "service-cluster-ips-disagree.yaml:6:16: spec.clusterIPs[0]: clusterIPs[0] is 10.96.0.11 but clusterIP is 10.96.0.10: they must be the same address",
    ),
    (
        "service-two-ipv4-cluster-ips",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [10.96.0.10, 10.96.0.11]
  ports: [{port: 80}]
",
        ),
        "service-two-ipv4-cluster-ips.yaml:5:28: spec.clusterIPs[1]: a second IPv4 address: a dual-stack Service has one IPv4 and one IPv6 clusterIP",
    ),
    (
        "service-three-cluster-ips",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::10', 10.96.0.11]
  ports: [{port: 80}]
",
        ),
        "service-three-cluster-ips.yaml:5:15: spec.clusterIPs: clusterIPs lists one address, or one IPv4 and one IPv6 address (found 3)",
    ),
    (
        "service-ip-families-order",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ipFamilies: [IPv6, IPv4]
  ports: [{port: 80}]
",
        ),
        "service-ip-families-order.yaml:6:16: spec.ipFamilies[0]: ipFamilies[0] is IPv6 but clusterIP 10.96.0.10 is IPv4",
    ),
    (
        "service-ip-families-count",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80}]
",
        ),
        "service-ip-families-count.yaml:6:15: spec.ipFamilies: ipFamilies lists 2 families but the Service has 1 clusterIP (IPv4)",
    ),
    (
        "service-single-stack-with-two",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ipFamilyPolicy: SingleStack
  ports: [{port: 80}]
",
        ),
        "service-single-stack-with-two.yaml:6:19: spec.ipFamilyPolicy: SingleStack, but the Service has an IPv4 and an IPv6 clusterIP",
    ),
    (
        "service-require-dual-stack-with-one",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
",
        ),
        "service-require-dual-stack-with-one.yaml:6:19: spec.ipFamilyPolicy: RequireDualStack needs an IPv4 and an IPv6 clusterIP (in clusterIPs)",
    ),
    (
        "service-port-zero",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 0}]
",
        ),
        "service-port-zero.yaml:6:18: spec.ports[0].port: port 0 is not a port: ports are 1 to 65535",
    ),
    (
        "service-port-too-large",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 65536}]
",
        ),
        "service-port-too-large.yaml:6:18: spec.ports[0].port: port 65536 is out of range 1-65535",
    ),
    (
        "service-target-port-too-large",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 70000}]
",
        ),
        "service-target-port-too-large.yaml:6:34: spec.ports[0].targetPort: port 70000 is out of range 1-65535",
    ),
    (
        "service-target-port-bad-name",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: web--http}]
",
        ),
        "service-target-port-bad-name.yaml:6:34: spec.ports[0].targetPort: `web--http` is neither a port number nor a port name (1 to 15 lowercase letters, digits and '-', with a letter)",
    ),
    (
        "service-no-ports",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
",
        ),
        "service-no-ports.yaml:5:3: spec: a ClusterIP Service needs at least one port",
    ),
    (
        "service-unnamed-port-among-several",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80}
    - {port: 443}
",
        ),
        "service-unnamed-port-among-several.yaml:8:7: spec.ports[1]: a Service with several ports names every one of them",
    ),
    (
        "service-duplicate-port-name",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80}
    - {name: http, port: 8080}
",
        ),
        "service-duplicate-port-name.yaml:8:14: spec.ports[1].name: port name `http` is used twice (first at spec.ports[0])",
    ),
    (
        "service-duplicate-port",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80}
    - {name: web, port: 80, protocol: TCP}
",
        ),
        "service-duplicate-port.yaml:8:25: spec.ports[1].port: port 80/TCP is listed twice (first at spec.ports[0])",
    ),
    (
        "service-icmp-protocol",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, protocol: ICMP}]
",
        ),
        "service-icmp-protocol.yaml:6:32: spec.ports[0].protocol: unknown protocol `ICMP`; expected TCP, UDP or SCTP",
    ),
    (
        "service-unknown-affinity",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
  sessionAffinity: Sticky
",
        ),
        "service-unknown-affinity.yaml:7:20: spec.sessionAffinity: unknown variant `Sticky`, expected `None` or `ClientIP`",
    ),
    (
        "service-affinity-timeout-zero",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}
",
        ),
        "service-affinity-timeout-zero.yaml:8:54: spec.sessionAffinityConfig.clientIP.timeoutSeconds: timeoutSeconds must be 1 to 86400 (one day), found `0`",
    ),
    (
        "service-affinity-timeout-too-long",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 86401
",
        ),
        "service-affinity-timeout-too-long.yaml:10:23: spec.sessionAffinityConfig.clientIP.timeoutSeconds: timeoutSeconds must be 1 to 86400 (one day), found `86401`",
    ),
    (
        "service-affinity-config-without-client-ip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
",
        ),
        "service-affinity-config-without-client-ip.yaml:7:26: spec.sessionAffinityConfig: sessionAffinityConfig applies only with sessionAffinity: ClientIP",
    ),
    (
        "service-name-starts-with-digit",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: 1web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-name-starts-with-digit.yaml:3:18: metadata.name: `1web` starts with a digit; a Service name starts with a letter",
    ),
    (
        "service-wrong-api-version",
        Text::Docs(
            "apiVersion: apps/v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-wrong-api-version.yaml:1:13: apiVersion: expected v1 for kind Service, found `apps/v1`",
    ),
    (
        "service-duplicate-name",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
",
        ),
        "service-duplicate-name.yaml:10:18: metadata.name: a second Service `shop/web` (document 2 of the file; the first is document 1)",
    ),
    (
        "service-shared-vip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  clusterIPs: ['fd00:96::10', 10.96.0.10]
  ports: [{port: 80}]
",
        ),
        "service-shared-vip.yaml:12:31: spec.clusterIPs[1]: clusterIP 10.96.0.10 is already the clusterIP of Service `default/web`",
    ),
    (
        "service-vip-is-an-endpoint",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  hostAddresses: [192.168.1.5]
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.1.10}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.0.1.10
  ports: [{port: 80}]
",
        ),
        "service-vip-is-an-endpoint.yaml:13:14: spec.clusterIP: clusterIP 10.0.1.10 is already the address of endpoint `web`",
    ),
    (
        "service-vip-is-a-host-address",
        Text::Node(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 192.168.1.5
  ports: [{port: 80}]
---
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  hostAddresses: [192.168.1.5]
",
        ),
        "service-vip-is-a-host-address.yaml:5:14: spec.clusterIP: clusterIP 192.168.1.5 is already a host address of this node",
    ),
    (
        "service-unknown-algorithm",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {sluice.dev/lb-algorithm: round-robin}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-unknown-algorithm.yaml:5:42: metadata.annotations.sluice.dev/lb-algorithm: unknown load-balancing algorithm `round-robin`; expected random or maglev",
    ),
    (
        "service-table-size-not-prime",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    sluice.dev/lb-algorithm: maglev
    sluice.dev/maglev-table-size: \"16383\"
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-table-size-not-prime.yaml:7:35: metadata.annotations.sluice.dev/maglev-table-size: Maglev table size 16383 is not a prime number; the nearest primes are 16381 and 16411",
    ),
    (
        "service-table-size-too-large",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    sluice.dev/lb-algorithm: maglev
    sluice.dev/maglev-table-size: 262139
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-table-size-too-large.yaml:7:35: metadata.annotations.sluice.dev/maglev-table-size: Maglev table size 262139 is out of range 3-131071",
    ),
    (
        "service-table-size-not-a-number",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    sluice.dev/lb-algorithm: maglev
    sluice.dev/maglev-table-size: 16k
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-table-size-not-a-number.yaml:7:35: metadata.annotations.sluice.dev/maglev-table-size: `16k` is not a table size (a prime number)",
    ),
    (
        "service-table-size-without-maglev",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    sluice.dev/maglev-table-size: \"251\"
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-table-size-without-maglev.yaml:6:35: metadata.annotations.sluice.dev/maglev-table-size: sluice.dev/maglev-table-size needs `sluice.dev/lb-algorithm: maglev` (the algorithm is random)",
    ),
    (
        "service-misspelled-annotation",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    example.com/owner: team-a
    sluice.dev/lb-algorithim: maglev
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-misspelled-annotation.yaml:7:5: metadata.annotations: unknown sluice annotation `sluice.dev/lb-algorithim`; a Service takes sluice.dev/lb-algorithm, sluice.dev/maglev-table-size",
    ),
    (
        "service-annotation-not-a-string",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    example.com/owner: {team: a}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
",
        ),
        "service-annotation-not-a-string.yaml:6:24: metadata.annotations.example.com/owner: invalid type: map, expected an annotation value (a string)",
    ),
    (
        "slice-unknown-service",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: webb-1
  namespace: shop
  labels: {kubernetes.io/service-name: webb}
addressType: IPv4
endpoints: []
",
        ),
        "slice-unknown-service.yaml:18:40: metadata.labels.kubernetes.io/service-name: no Service `shop/webb` in this file: an EndpointSlice belongs to a Service of its namespace",
    ),
    (
        "slice-other-namespace",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
",
        ),
        "slice-other-namespace.yaml:17:40: metadata.labels.kubernetes.io/service-name: no Service `default/web` in this file: an EndpointSlice belongs to a Service of its namespace",
    ),
    (
        "slice-no-service-label",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
addressType: IPv4
",
        ),
        "slice-no-service-label.yaml:18:11: metadata.labels: an EndpointSlice needs the label kubernetes.io/service-name naming its Service",
    ),
    (
        "slice-no-labels",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop}
addressType: IPv4
",
        ),
        "slice-no-labels.yaml:15:11: metadata: an EndpointSlice needs the label kubernetes.io/service-name naming its Service",
    ),
    (
        "slice-fqdn",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: FQDN
",
        ),
        "slice-fqdn.yaml:19:14: addressType: addressType FQDN is not supported: sluice balances to IP addresses",
    ),
    (
        "slice-missing-address-type",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
endpoints: []
",
        ),
        "slice-missing-address-type.yaml:13:1: missing field `addressType`",
    ),
    (
        "slice-address-of-other-family",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
  - addresses: ['fd00::20']
ports: [{name: http, port: 8080}]
",
        ),
        "slice-address-of-other-family.yaml:22:17: endpoints[1].addresses[0]: fd00::20 is not an IPv4 address (the slice's addressType)",
    ),
    (
        "slice-backend-is-its-own-vip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
  - addresses: [10.96.0.10]
ports: [{port: 80}]
",
        ),
        "slice-backend-is-its-own-vip.yaml:16:17: endpoints[1].addresses[0]: 10.96.0.10 is a clusterIP of Service `default/web` itself; a Service cannot be its own backend (its connections would be balanced back to it)",
    ),
    (
        "slice-family-without-vip",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
endpoints:
  - addresses: ['fd00::20']
ports: [{name: http, port: 8080}]
",
        ),
        "slice-family-without-vip.yaml:19:14: addressType: addressType IPv6, but Service `shop/web` has no IPv6 clusterIP",
    ),
    (
        "slice-bad-address",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.256]
ports: [{name: http, port: 8080}]
",
        ),
        "slice-bad-address.yaml:21:17: endpoints[0].addresses[0]: `10.0.1.256` is not an IPv4 or IPv6 address",
    ),
    (
        "slice-no-addresses",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: []
ports: [{name: http, port: 8080}]
",
        ),
        "slice-no-addresses.yaml:21:16: endpoints[0].addresses: an endpoint needs at least one address",
    ),
    (
        "slice-unknown-condition",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
    conditions: {ready: true, healthy: true}
ports: [{name: http, port: 8080}]
",
        ),
        "slice-unknown-condition.yaml:22:31: endpoints[0].conditions: unknown field `healthy`, expected one of `ready`, `serving`, `terminating`",
    ),
    (
        "slice-port-of-no-service-port",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {name: http, port: 8080}
  - {name: metrics, port: 9090}
",
        ),
        "slice-port-of-no-service-port.yaml:24:12: ports[1].name: Service `shop/web` has no port named `metrics` (its ports: `http`, `dns`); a slice port serves the Service port of its name",
    ),
    (
        "slice-unnamed-port",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {port: 8080}
",
        ),
        "slice-unnamed-port.yaml:23:5: ports[0]: Service `shop/web` has no unnamed port (its ports: `http`, `dns`); a slice port serves the Service port of its name",
    ),
    (
        "slice-port-protocol-mismatch",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {name: dns, port: 53}
",
        ),
        "slice-port-protocol-mismatch.yaml:23:5: ports[0]: protocol TCP (the default), but port `dns` of Service `shop/web` is UDP",
    ),
    (
        "slice-port-not-the-target-port",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {name: http, port: 8081}
",
        ),
        "slice-port-not-the-target-port.yaml:23:24: ports[0].port: port 8081, but the targetPort of port `http` of Service `shop/web` is 8080",
    ),
    (
        "slice-port-zero",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {name: dns, port: 0, protocol: UDP}
",
        ),
        "slice-port-zero.yaml:23:23: ports[0].port: port 0 is not a port: ports are 1 to 65535",
    ),
    (
        "slice-port-twice",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports:
  - {name: http, port: 8080}
  - {name: http, port: 8080}
",
        ),
        "slice-port-twice.yaml:24:5: ports[1]: port `http` is listed twice in this EndpointSlice",
    ),
    (
        "slice-endpoints-without-ports",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
",
        ),
        "slice-endpoints-without-ports.yaml:21:3: endpoints: these endpoints serve no port: the EndpointSlice has no ports (each names a port of Service `shop/web`)",
    ),
    (
        "slice-duplicate-backend",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-2
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.21]
  - addresses: [10.0.1.20]
ports: [{name: http, port: 8080}]
",
        ),
        "slice-duplicate-backend.yaml:33:17: endpoints[1].addresses[0]: 10.0.1.20 already backs port `http` of Service `shop/web` (in EndpointSlice `shop/web-1` endpoints[0])",
    ),
    (
        "slice-duplicate-name",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
",
        ),
        "slice-duplicate-name.yaml:24:9: metadata.name: a second EndpointSlice `shop/web-1` (document 3 of the file; the first is document 2)",
    ),
    (
        "slice-weights-bad-syntax",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations: {sluice.dev/weights: \"10.0.1.20:3\"}
addressType: IPv4
",
        ),
        "slice-weights-bad-syntax.yaml:19:37: metadata.annotations.sluice.dev/weights: `10.0.1.20:3`: expected ADDRESS=WEIGHT, such as 10.0.1.20=3",
    ),
    (
        "slice-weight-zero",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weights: \"10.0.1.20=3, 10.0.1.21=0\"
addressType: IPv4
",
        ),
        "slice-weight-zero.yaml:20:25: metadata.annotations.sluice.dev/weights: `10.0.1.21=0`: the weight must be a number from 1 to 1000",
    ),
    (
        "slice-weight-too-large",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weights: \"10.0.1.20=1001\"
addressType: IPv4
",
        ),
        "slice-weight-too-large.yaml:20:25: metadata.annotations.sluice.dev/weights: `10.0.1.20=1001`: the weight must be a number from 1 to 1000",
    ),
    (
        "slice-weight-twice",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weights: \"10.0.1.20=1,10.0.1.20=2\"
addressType: IPv4
",
        ),
        "slice-weight-twice.yaml:20:25: metadata.annotations.sluice.dev/weights: 10.0.1.20 is given a weight twice",
    ),
    (
        "slice-weight-for-no-endpoint",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weights: \"10.0.1.20=2,10.0.1.99=1\"
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports: [{name: http, port: 8080}]
",
        ),
        "slice-weight-for-no-endpoint.yaml:20:25: metadata.annotations.sluice.dev/weights: 10.0.1.99 is given a weight but is no endpoint of this EndpointSlice",
    ),
    (
        "slice-misspelled-annotation",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weight: \"10.0.1.20=2\"
addressType: IPv4
",
        ),
        "slice-misspelled-annotation.yaml:20:5: metadata.annotations: unknown sluice annotation `sluice.dev/weight`; an EndpointSlice takes sluice.dev/weights",
    ),
    (
        "slice-weights-with-random",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
  annotations:
    sluice.dev/weights: \"10.0.1.20=2\"
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
ports: [{port: 80}]
",
        ),
        "slice-weights-with-random.yaml:14:25: metadata.annotations.sluice.dev/weights: backend weights need `sluice.dev/lb-algorithm: maglev` on Service `default/web` (random selection is unweighted)",
    ),
    (
        "maglev-table-too-small",
        Text::Docs(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    sluice.dev/lb-algorithm: maglev
    sluice.dev/maglev-table-size: \"31\"
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.20]
  - addresses: [10.0.1.21]
  - addresses: [10.0.1.22]
  - addresses: [10.0.1.23]
    conditions: {terminating: true}
  - addresses: [10.0.1.24]
ports: [{name: http, port: 80}]
",
        ),
        "maglev-table-too-small.yaml:7:35: metadata.annotations.sluice.dev/maglev-table-size: 4 active backends for 10.96.0.10:80/TCP: a Maglev table of 31 slots holds at most 3 (10 slots each); set sluice.dev/maglev-table-size to a prime of at least 40 (such as 41)",
    ),
];

fn text_of(input: Text) -> String {
    match input {
        Text::Node(text) => text.to_owned(),
        Text::Docs(text) => format!("{text}{NODE}"),
    }
}

/// The cases with their whole input text.
fn cases() -> Vec<(&'static str, String, &'static str)> {
    CASES.iter().map(|(name, input, expected)| (*name, text_of(*input), *expected)).collect()
}

#[test]
fn invalid_inputs_are_rejected_with_their_exact_error() {
    rejections::assert_exact_errors(&cases());
}

#[test]
fn case_names_are_unique() {
    rejections::assert_unique_names(&cases());
}

/// Every rejection is located inside its text.
#[test]
fn errors_are_located_inside_the_input() {
    rejections::assert_located(&cases());
}

// ---------------------------------------------------------------------------------------
// Acceptances
// ---------------------------------------------------------------------------------------

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn backend(address: &str, port: u16, state: BackendState, weight: u32) -> Backend {
    Backend { address: ip(address), port, state, weight }
}

fn parse(text: &str) -> NodeConfig {
    model::parse_str(&format!("{text}{NODE}"), "ok.yaml").unwrap_or_else(|e| panic!("{e}\ninput:\n{text}"))
}

#[test]
fn the_default_node_has_a_dual_stack_maglev_service() {
    let node = model::default_node();
    let [svc] = &node.services[..] else { panic!("one service: {:?}", node.services) };
    assert_eq!((svc.namespace.as_str(), svc.name.as_str()), ("shop", "backend"));
    assert_eq!(svc.algorithm, LbAlgorithm::Maglev(TableSize::DEFAULT));
    assert_eq!(svc.affinity, SessionAffinity::None);
    let [v4, v6] = &svc.frontends[..] else { panic!("two frontends: {:?}", svc.frontends) };
    assert_eq!(
        (v4.vip, v4.port, v4.protocol, v4.port_name.as_str()),
        (ip("10.96.0.10"), 80, Protocol::Tcp, "http")
    );
    assert_eq!(
        v4.backends,
        [
            backend("10.0.1.20", 8080, BackendState::Active, 1),
            backend("10.0.2.21", 8080, BackendState::Active, 2),
            backend("10.0.2.22", 8080, BackendState::Terminating, 1),
        ]
    );
    assert_eq!((v6.vip, v6.port), (ip("fd00:96::10"), 80));
    assert_eq!(v6.backends, [backend("fd00:0:1::20", 8080, BackendState::Active, 1)]);
    // The Maglev input is the active backends with their weights: 1:2 of the slots.
    let table = Table::build(&v4.maglev_backends(), TableSize::DEFAULT).unwrap();
    assert_eq!(table.counts(2), [5460, 10921]);
}

#[test]
fn fields_mean_what_the_contract_says() {
    let node = parse(
        "apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
  annotations: {example.com/owner: team-a, sluice.dev/lb-algorithm: random}
spec:
  clusterIP: 10.96.0.53
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
    - {name: sctp, port: 9899, protocol: SCTP, appProtocol: x}
  sessionAffinity: ClientIP
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.80
  ports: [{port: 80}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abc
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns, endpointslice.kubernetes.io/managed-by: me}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.53]
    hostname: dns-0
    nodeName: node-1
    zone: z1
    targetRef: {kind: Pod, namespace: kube-system, name: dns-0, uid: x}
    hints: {forZones: [{name: z1}]}
  - addresses: [10.0.1.54]
    conditions: {ready: false}
  - addresses: [10.0.1.55]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.0.1.56, 10.0.1.57]
    conditions: {terminating: true}
ports:
  - {name: dns, port: 5353, protocol: UDP}
  - {name: dns-tcp, port: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.0.1.80]
ports:
  - port: 80
",
    );
    // Sorted by (namespace, name).
    let [web, dns] = &node.services[..] else { panic!("{:?}", node.services) };
    assert_eq!((dns.namespace.as_str(), dns.name.as_str()), ("kube-system", "dns"));
    assert_eq!(dns.algorithm, LbAlgorithm::Random);
    assert_eq!(dns.affinity, SessionAffinity::ClientIp { timeout_seconds: 10_800 });
    let ports: Vec<(u16, Protocol, &str)> =
        dns.frontends.iter().map(|f| (f.port, f.protocol, f.port_name.as_str())).collect();
    assert_eq!(
        ports,
        [(53, Protocol::Tcp, "dns-tcp"), (53, Protocol::Udp, "dns"), (9899, Protocol::Sctp, "sctp")]
    );
    let udp = &dns.frontends[1];
    assert_eq!(
        udp.backends,
        [
            backend("10.0.1.53", 5353, BackendState::Active, 1),
            backend("10.0.1.54", 5353, BackendState::NotReady, 1),
            backend("10.0.1.55", 5353, BackendState::NotReady, 1),
            backend("10.0.1.56", 5353, BackendState::Terminating, 1),
        ]
    );
    assert_eq!(udp.active().count(), 1);
    assert_eq!(dns.frontends[0].backends.len(), 4);
    assert!(dns.frontends[2].backends.is_empty(), "no slice serves the SCTP port");
    assert_eq!(web.affinity, SessionAffinity::ClientIp { timeout_seconds: 60 });
    assert_eq!(web.frontends[0].backends, [backend("10.0.1.80", 80, BackendState::Active, 1)]);
}

#[test]
fn a_service_without_slices_has_frontends_without_backends() {
    let node = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 443}]}\n");
    let svc: &Service = &node.services[0];
    assert_eq!(svc.namespace, "default");
    assert_eq!(svc.frontends.len(), 1);
    assert!(svc.frontends[0].backends.is_empty());
}

#[test]
fn equivalent_spellings_give_equal_configs() {
    let canonical = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {sluice.dev/lb-algorithm: maglev}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  sessionAffinity: None
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - {addresses: [10.0.1.20], conditions: {ready: true, serving: true, terminating: false}}
  - {addresses: [10.0.1.21], conditions: {ready: true}}
ports: [{name: http, port: 8080, protocol: TCP}]
";
    let others = [
        // Slices first, endpoints in another order and split over two slices, defaults left out,
        // the table size spelled out, a weight of 1 spelled out, keys reordered.
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  labels: {kubernetes.io/service-name: web}
  namespace: shop
  name: web-b
  annotations: {sluice.dev/weights: '10.0.1.21=1'}
addressType: IPv4
endpoints: [{addresses: [10.0.1.21]}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {k8s:kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.1.20]}]
ports: [{name: http, port: 8080}]
---
spec:
  ports: [{port: 80, name: http, targetPort: '8080'}]
  clusterIPs: [10.96.0.10, 'FD00:96:0::10']
kind: Service
apiVersion: v1
metadata:
  namespace: shop
  name: web
  annotations: {sluice.dev/maglev-table-size: '16381', sluice.dev/lb-algorithm: maglev}
",
    ];
    let expected = parse(canonical);
    for text in others {
        assert_eq!(parse(text), expected, "input:\n{text}");
    }
}

#[test]
fn services_are_sorted_by_namespace_and_name() {
    let mut text = String::new();
    for (i, (ns, name)) in [("b", "x"), ("a", "z"), ("a", "y")].iter().enumerate() {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{clusterIP: 10.96.0.{}, ports: [{{port: 80}}]}}\n---\n",
            i + 1
        ));
    }
    let node = parse(&text);
    let names: Vec<(&str, &str)> =
        node.services.iter().map(|s| (s.namespace.as_str(), s.name.as_str())).collect();
    assert_eq!(names, [("a", "y"), ("a", "z"), ("b", "x")]);
}
