//! Endpoint and policy rejections, as specifications.
//!
//! Each case is a node file (inline, named `<case>.yaml` in its error) and the exact error it
//! must produce: file, line and column of the offending node, field path, message. Policy
//! cases are written first in their file, so their lines count from the top of the case; the
//! helper appends a minimal Node document after them.

use sluice::model;

/// Appended to policy cases: the one Node every file needs.
const NODE: &str = "---\napiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\n";

#[path = "support/rejections.rs"]
mod rejections;

/// How a case's text becomes a file.
#[derive(Clone, Copy)]
enum Text {
    /// A whole node file.
    Node(&'static str),
    /// Policy documents; a Node document is appended.
    Policy(&'static str),
}

/// (case name, input, expected error)
const CASES: &[(&str, Text, &str)] = &[
    // --- endpoints ----------------------------------------------------------------------
    (
        "endpoint-duplicate-name",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1}
    - {name: web, interface: lxc2, ipv4: 10.0.0.2}
",
        ),
        "endpoint-duplicate-name.yaml:7:14: spec.endpoints[1].name: duplicate endpoint name `web` (first at spec.endpoints[0])",
    ),
    (
        "endpoint-port-name-twice",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      ports: [{name: http, port: 80}, {name: http, port: 8080}]
",
        ),
        "endpoint-port-name-twice.yaml:9:46: spec.endpoints[0].ports[1].name: port name `http` is also ports[0]'s",
    ),
    (
        "endpoint-same-labels-other-named-ports",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: a, interface: lxc1, ipv4: 10.0.0.1, labels: {app: web}, ports: [{name: http, port: 80}]}
    - {name: b, interface: lxc2, ipv4: 10.0.0.2, labels: {app: web}, ports: [{name: http, port: 8080}]}
",
        ),
        "endpoint-same-labels-other-named-ports.yaml:7:77: spec.endpoints[1].ports: endpoint `b` has the labels of endpoint `a` but other named ports: endpoints with equal labels share one identity and one policy, so their named ports must be equal",
    ),
    (
        "endpoint-duplicate-interface",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1}
    - {name: api, interface: lxc1, ipv4: 10.0.0.2}
",
        ),
        "endpoint-duplicate-interface.yaml:7:30: spec.endpoints[1].interface: interface `lxc1` already belongs to spec.endpoints[0]",
    ),
    (
        "endpoint-duplicate-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1, ipv6: 'fd00::1'}
    - name: api
      interface: lxc2
      ipv4: 10.0.0.2
      ipv6: 'fd00:0::1'
",
        ),
        "endpoint-duplicate-address.yaml:10:13: spec.endpoints[1].ipv6: duplicate address fd00::1 (first at spec.endpoints[0].ipv6)",
    ),
    (
        "endpoint-has-host-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  hostAddresses: [192.168.1.5]
  endpoints:
    - {name: web, interface: lxc1, ipv4: 192.168.1.5}
",
        ),
        "endpoint-has-host-address.yaml:7:42: spec.endpoints[0].ipv4: duplicate address 192.168.1.5 (first at spec.hostAddresses[0])",
    ),
    (
        "duplicate-host-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  hostAddresses: [192.168.1.5, 'fd00::5', 192.168.1.5]
",
        ),
        "duplicate-host-address.yaml:5:43: spec.hostAddresses[2]: duplicate address 192.168.1.5 (first at spec.hostAddresses[0])",
    ),
    (
        "endpoint-without-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      labels: {app: web}
",
        ),
        "endpoint-without-address.yaml:6:7: spec.endpoints[0]: endpoint `web` has no address; give it ipv4, ipv6 or both",
    ),
    (
        "endpoint-interface-too-long",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc0123456789abc, ipv4: 10.0.0.1}
",
        ),
        "endpoint-interface-too-long.yaml:6:30: spec.endpoints[0].interface: `lxc0123456789abc` is 16 characters long; an interface name has at most 15",
    ),
    (
        "endpoint-interface-slash",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc/1, ipv4: 10.0.0.1}
",
        ),
        "endpoint-interface-slash.yaml:6:30: spec.endpoints[0].interface: `lxc/1` contains '/'; an interface name is printable ASCII without '/', ':' or spaces",
    ),
    (
        "endpoint-ipv6-under-ipv4",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 'fd00::1'}
",
        ),
        "endpoint-ipv6-under-ipv4.yaml:6:42: spec.endpoints[0].ipv4: `fd00::1` is not an IPv4 address (it belongs under ipv6)",
    ),
    (
        "endpoint-address-with-prefix",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1/32}
",
        ),
        "endpoint-address-with-prefix.yaml:6:42: spec.endpoints[0].ipv4: `10.0.0.1/32`: write the address without a prefix length",
    ),
    (
        "endpoint-multicast-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv6: 'ff02::1'}
",
        ),
        "endpoint-multicast-address.yaml:6:42: spec.endpoints[0].ipv6: `ff02::1` is not a unicast address (unspecified, loopback, multicast or broadcast)",
    ),
    (
        "endpoint-namespace-label",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      labels:
        app: web
        k8s:io.kubernetes.pod.namespace: prod
",
        ),
        "endpoint-namespace-label.yaml:11:42: spec.endpoints[0].labels.k8s:io.kubernetes.pod.namespace: `k8s:io.kubernetes.pod.namespace` is derived from the endpoint's namespace; set `namespace` instead",
    ),
    (
        "endpoint-label-twice",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      labels: {app: web, k8s:app: api}
",
        ),
        "endpoint-label-twice.yaml:9:35: spec.endpoints[0].labels.k8s:app: label `k8s:app` is also written as `app`",
    ),
    (
        "endpoint-bad-label-value",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      labels: {app: web/v1}
",
        ),
        "endpoint-bad-label-value.yaml:9:21: spec.endpoints[0].labels.app: label value `web/v1`: contains '/'; allowed are letters, digits, '-', '_' and '.'",
    ),
    (
        "endpoint-reserved-label",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      labels: {reserved:host: ''}
",
        ),
        "endpoint-reserved-label.yaml:9:16: spec.endpoints[0].labels: label source `reserved:` is not supported: sluice labels come from Kubernetes (write `k8s:` or no prefix); select reserved identities with fromEntities/toEntities",
    ),
    (
        "endpoint-unknown-field",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1, mac: '02:00:00:00:00:01'}
",
        ),
        "endpoint-unknown-field.yaml:6:52: spec.endpoints[0]: unknown field `mac`, expected one of `name`, `interface`, `namespace`, `ipv4`, `ipv6`, `labels`, `ports`",
    ),
    (
        "endpoint-bad-namespace",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1, namespace: Prod}
",
        ),
        "endpoint-bad-namespace.yaml:6:63: spec.endpoints[0].namespace: `Prod` contains 'P'; a name holds only lowercase letters, digits and '-'",
    ),
    // --- accepted before, harmful: endpoints on the node's own devices and addresses --------
    (
        "endpoint-on-loopback",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lo, ipv4: 10.0.0.1}
",
        ),
        "endpoint-on-loopback.yaml:6:30: spec.endpoints[0].interface: `lo` is the loopback device; an endpoint's interface is the host side of its own veth",
    ),
    (
        "endpoint-on-router-device",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 10.0.0.1}
    - {name: api, interface: sluice_host, ipv4: 10.0.0.2}
",
        ),
        "endpoint-on-router-device.yaml:7:30: spec.endpoints[1].interface: `sluice_host` is one of the router pair sluice creates (sluice_host, sluice_net); an endpoint's interface is the host side of its own veth",
    ),
    (
        "endpoint-on-default-overlay-device",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: sluice_vxlan, ipv4: 10.0.0.1}
",
        ),
        "endpoint-on-default-overlay-device.yaml:6:30: spec.endpoints[0].interface: `sluice_vxlan` is the overlay device's default name; an endpoint's interface is the host side of its own veth",
    ),
    (
        "overlay-device-is-an-endpoint-interface",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: vx0, ipv4: 10.0.0.1}
  overlay:
    local: 172.16.0.1
    device: vx0
",
        ),
        "overlay-device-is-an-endpoint-interface.yaml:9:13: spec.overlay.device: vx0 is endpoint web's interface",
    ),
    (
        "overlay-local-is-an-endpoint-address",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - {name: web, interface: lxc1, ipv4: 172.16.0.1}
  overlay:
    local: 172.16.0.1
    peers: [{name: node-2, address: 172.16.0.2}]
",
        ),
        "overlay-local-is-an-endpoint-address.yaml:8:12: spec.overlay.local: 172.16.0.1 is endpoint web's address; the overlay's local address is the node's underlay address, which tunnelled packets leave from",
    ),
    // --- CiliumNetworkPolicy: documents and selectors -------------------------------------
    (
        "cnp-no-spec",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
",
        ),
        "cnp-no-spec.yaml:1:1: a CiliumNetworkPolicy needs `spec` or `specs`",
    ),
    (
        "cnp-wrong-api-version",
        Text::Policy(
            "apiVersion: cilium.io/v1
kind: CiliumNetworkPolicy
metadata: {name: p}
spec: {endpointSelector: {}}
",
        ),
        "cnp-wrong-api-version.yaml:1:13: apiVersion: expected cilium.io/v2 for kind CiliumNetworkPolicy, found `cilium.io/v1`",
    ),
    (
        "cnp-missing-endpoint-selector",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  ingress: [{}]
",
        ),
        "cnp-missing-endpoint-selector.yaml:5:3: spec: missing field `endpointSelector`",
    ),
    (
        "cnp-unknown-rule-field",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingres: [{}]
",
        ),
        "cnp-unknown-rule-field.yaml:6:3: spec: unknown field `ingres`, expected one of `endpointSelector`, `ingress`, `ingressDeny`, `egress`, `egressDeny`, `enableDefaultDeny`, `description`",
    ),
    (
        "cnp-unsupported-peer-field",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toFQDNs: [{matchName: example.com}]
",
        ),
        "cnp-unsupported-peer-field.yaml:7:7: spec.egress[0]: unknown field `toFQDNs`, expected one of `toEndpoints`, `toCIDR`, `toCIDRSet`, `toEntities`, `toPorts`, `icmps`, `toNodes`, `toServices`",
    ),
    (
        "cnp-in-without-values",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
    matchExpressions:
      - {key: app, operator: In, values: []}
",
        ),
        "cnp-in-without-values.yaml:7:9: spec.endpointSelector.matchExpressions[0]: operator In needs at least one value",
    ),
    (
        "cnp-exists-with-values",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints:
        - matchExpressions:
            - key: app
              operator: Exists
              values: [web]
",
        ),
        "cnp-exists-with-values.yaml:11:23: spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: operator Exists takes no values",
    ),
    (
        "cnp-unknown-operator",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
    matchExpressions:
      - {key: app, operator: Equals, values: [web]}
",
        ),
        "cnp-unknown-operator.yaml:7:30: spec.endpointSelector.matchExpressions[0].operator: unknown variant `Equals`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`",
    ),
    (
        "cnp-bad-label-value",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
    matchLabels: {app: -web}
",
        ),
        "cnp-bad-label-value.yaml:6:24: spec.endpointSelector.matchLabels.app: label value `-web`: must start and end with a letter or digit",
    ),
    (
        "cnp-subject-other-namespace",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: other}
",
        ),
        "cnp-subject-other-namespace.yaml:6:62: spec.endpointSelector.matchLabels.k8s:io.kubernetes.pod.namespace: this requirement excludes namespace `shop`: a policy in namespace `shop` applies only to endpoints of that namespace",
    ),
    (
        "cnp-duplicate-name",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec: {endpointSelector: {}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  namespace: default
  name: p
spec: {endpointSelector: {}}
",
        ),
        "cnp-duplicate-name.yaml:10:9: metadata.name: a second CiliumNetworkPolicy `default/p` (document 2 of the file; the first is document 1)",
    ),
    (
        "cnp-bad-name",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: Allow_All}
spec: {endpointSelector: {}}
",
        ),
        "cnp-bad-name.yaml:3:18: metadata.name: `Allow_All` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')",
    ),
    // --- CiliumNetworkPolicy: peers -------------------------------------------------------
    (
        "cnp-except-outside-cidr",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toCIDRSet:
        - cidr: 10.0.0.0/8
          except: [10.1.0.0/16, 192.168.0.0/16]
",
        ),
        "cnp-except-outside-cidr.yaml:9:33: spec.egress[0].toCIDRSet[0].except[1]: 192.168.0.0/16 is not inside 10.0.0.0/8",
    ),
    (
        "cnp-cidr-host-bits",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromCIDR: [10.0.0.1/8]
",
        ),
        "cnp-cidr-host-bits.yaml:7:18: spec.ingress[0].fromCIDR[0]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
    ),
    (
        "cnp-unsupported-entity",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEntities: [world, kubelet]
",
        ),
        "cnp-unsupported-entity.yaml:7:29: spec.ingress[0].fromEntities[1]: entity `kubelet` is not supported; supported entities are all, cluster, host, world, remote-node, kube-apiserver, health, init, ingress, unmanaged",
    ),
    (
        "cnp-combined-peers",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints: [{}]
      fromCIDR: [10.0.0.0/8]
",
        ),
        "cnp-combined-peers.yaml:7:7: spec.ingress[0]: fromEndpoints and fromCIDR cannot be combined in one entry (Cilium rejects it too); write them as separate entries",
    ),
    // --- CiliumNetworkPolicy: ports -------------------------------------------------------
    (
        "cnp-end-port-below-port",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {port: '8080', endPort: 8000, protocol: TCP}
",
        ),
        "cnp-end-port-below-port.yaml:9:39: spec.ingress[0].toPorts[0].ports[0].endPort: endPort 8000 is below port 8080",
    ),
    (
        "cnp-end-port-without-port",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {endPort: 8000, protocol: TCP}
",
        ),
        "cnp-end-port-without-port.yaml:9:25: spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a port: the range is port to endPort",
    ),
    (
        "cnp-port-zero",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {port: '0', endPort: 80}
",
        ),
        "cnp-port-zero.yaml:9:36: spec.ingress[0].toPorts[0].ports[0].endPort: port 0 means every port, so an endPort has nothing to close; leave it out",
    ),
    (
        "cnp-port-too-large",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - port: 70000
",
        ),
        "cnp-port-too-large.yaml:9:21: spec.ingress[0].toPorts[0].ports[0].port: port 70000 is out of range 0-65535",
    ),
    (
        "cnp-named-port",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {port: http--alt, protocol: TCP}
",
        ),
        "cnp-named-port.yaml:9:22: spec.ingress[0].toPorts[0].ports[0].port: `http--alt` is not a port name: 1 to 15 lowercase letters, digits and '-', with a letter, no '-' at either end or twice in a row",
    ),
    (
        "cnp-unknown-protocol",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {port: '80', protocol: tcp}
",
        ),
        "cnp-unknown-protocol.yaml:9:38: spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol `tcp`; expected TCP, UDP, SCTP or ANY",
    ),
    (
        "cnp-icmp-in-to-ports",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports:
            - {port: '8', protocol: ICMP}
",
        ),
        "cnp-icmp-in-to-ports.yaml:9:37: spec.ingress[0].toPorts[0].ports[0].protocol: protocol ICMP is matched with icmps, not toPorts",
    ),
    (
        "cnp-to-ports-without-ports",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEntities: [world]
      toPorts:
        - {}
",
        ),
        "cnp-to-ports-without-ports.yaml:9:11: spec.ingress[0].toPorts[0]: a toPorts entry needs at least one port in `ports`",
    ),
    (
        "cnp-l7-http-bad-path-regex",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: '80', protocol: TCP}]
          rules:
            http:
              - {method: GET, path: '/api/(v1'}
",
        ),
        "cnp-l7-http-bad-path-regex.yaml:11:37: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regular expression \"/api/(v1\": unclosed group",
    ),
    (
        "cnp-l7-http-bad-method-regex",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  egress:
    - toPorts:
        - ports: [{port: '8080'}]
          rules:
            http:
              - method: 'GET|*'
  endpointSelector: {}
",
        ),
        "cnp-l7-http-bad-method-regex.yaml:10:25: spec.egress[0].toPorts[0].rules.http[0].method: invalid regular expression \"GET|*\": repetition operator missing expression",
    ),
    (
        "cnp-l7-http-header-match-add",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: '80', protocol: TCP}]
          rules:
            http:
              - headerMatches:
                  - {name: X-Token, value: abc, mismatch: ADD}
",
        ),
        "cnp-l7-http-header-match-add.yaml:12:59: spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: mismatch action ADD is not supported: sluice's proxy does not rewrite headers (LOG is)",
    ),
    (
        "cnp-l7-http-header-match-secret",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: '80', protocol: TCP}]
          rules:
            http:
              - headerMatches:
                  - {name: X-Token, secret: {namespace: d, name: s}}
",
        ),
        "cnp-l7-http-header-match-secret.yaml:12:45: spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret: header matches against secrets are not supported (sluice reads no Kubernetes secrets); use `value`",
    ),
    (
        "cnp-l7-http-bad-header-name",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: '80', protocol: TCP}]
          rules:
            http:
              - headers: ['X-Ok: 1', 'Bad(Name): 2']
",
        ),
        "cnp-l7-http-bad-header-name.yaml:11:38: spec.ingress[0].toPorts[0].rules.http[0].headers[1]: \"Bad(Name)\" is not an HTTP header name",
    ),
    (
        "cnp-l7-http-udp-port",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: '80', protocol: UDP}]
          rules:
            http: [{}]
",
        ),
        "cnp-l7-http-udp-port.yaml:8:42: spec.ingress[0].toPorts[0].ports[0].protocol: ports with L7 rules must be TCP (`protocol: TCP` or `ANY`): the HTTP proxy sees TCP only",
    ),
    (
        "cnp-l7-dns-rules",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toPorts:
        - ports: [{port: '53', protocol: UDP}]
          rules:
            dns: [{matchPattern: '*'}]
",
        ),
        "cnp-l7-dns-rules.yaml:10:18: spec.egress[0].toPorts[0].rules.dns: L7 `dns` rules are not supported: sluice's proxy enforces HTTP rules only",
    ),
    (
        "cnp-l7-http-empty",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toPorts:
        - ports: [{port: '80'}]
          rules: {http: []}
",
        ),
        "cnp-l7-http-empty.yaml:9:25: spec.egress[0].toPorts[0].rules.http: `http` needs at least one rule (`http: [{}]` allows every request and records it)",
    ),
    (
        "cnp-l7-http-unknown-field",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toPorts:
        - ports: [{port: '80'}]
          rules:
            http:
              - {method: GET, paths: [/a]}
",
        ),
        "cnp-l7-http-unknown-field.yaml:11:31: spec.egress[0].toPorts[0].rules.http[0]: unknown field `paths`, expected one of `method`, `path`, `host`, `headers`, `headerMatches`",
    ),
    (
        "cnp-l7-rules-in-deny",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egressDeny:
    - toPorts:
        - ports: [{port: '53', protocol: UDP}]
          rules: {dns: [{matchPattern: '*'}]}
",
        ),
        "cnp-l7-rules-in-deny.yaml:9:18: spec.egressDeny[0].toPorts[0].rules: L7 rules cannot be part of a deny rule",
    ),
    (
        "cnp-icmps-with-to-ports",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - toPorts: [{ports: [{port: '80'}]}]
      icmps: [{fields: [{type: 8}]}]
",
        ),
        "cnp-icmps-with-to-ports.yaml:7:7: spec.ingress[0]: icmps and toPorts cannot be combined in one entry (Cilium rejects it too); write them as separate entries",
    ),
    (
        "cnp-icmp-type-too-large",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - icmps:
        - fields:
            - {type: 256, family: IPv4}
",
        ),
        "cnp-icmp-type-too-large.yaml:9:22: spec.ingress[0].icmps[0].fields[0].type: ICMP type 256 is out of range 0-255",
    ),
    (
        "cnp-icmp-type-name",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - icmps:
        - fields:
            - {type: PacketTooBig}
",
        ),
        "cnp-icmp-type-name.yaml:9:22: spec.ingress[0].icmps[0].fields[0].type: `PacketTooBig` is not an IPv4 ICMP type name (Cilium's names, e.g. EchoRequest); write the type number or a name of family IPv4",
    ),
    (
        "cnp-icmp-bad-family",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - icmps:
        - fields:
            - {type: 8, family: ipv4}
",
        ),
        "cnp-icmp-bad-family.yaml:9:33: spec.ingress[0].icmps[0].fields[0].family: unknown variant `ipv4`, expected `IPv4` or `IPv6`",
    ),
    // --- empty (null) values: never read as `{}`, `[]` or "absent" -------------------------
    (
        "cnp-empty-endpoint-selector",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
  ingress: [{fromEntities: [world]}]
",
        ),
        "cnp-empty-endpoint-selector.yaml:5:20: spec.endpointSelector: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "cnp-null-endpoint-selector",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: null
  ingress: [{fromEntities: [world]}]
",
        ),
        "cnp-null-endpoint-selector.yaml:5:21: spec.endpointSelector: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "cnp-empty-match-labels",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector:
    matchLabels:
  ingress: [{fromEntities: [world]}]
",
        ),
        "cnp-empty-match-labels.yaml:6:17: spec.endpointSelector.matchLabels: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "cnp-empty-port",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEntities: [world]
      toPorts:
        - ports:
            - port:
              protocol: TCP
",
        ),
        "cnp-empty-port.yaml:10:20: spec.ingress[0].toPorts[0].ports[0].port: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "cnp-empty-from-endpoints",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints:
      toPorts: [{ports: [{port: 80}]}]
",
        ),
        "cnp-empty-from-endpoints.yaml:7:21: spec.ingress[0].fromEndpoints: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "cnp-empty-peer-selector-item",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints:
        -
",
        ),
        "cnp-empty-peer-selector-item.yaml:8:10: spec.ingress[0].fromEndpoints[0]: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "knp-empty-pod-selector",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector:
  ingress: [{}]
",
        ),
        "knp-empty-pod-selector.yaml:5:15: spec.podSelector: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "knp-empty-peer-pod-selector",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector: {}
          podSelector:
",
        ),
        "knp-empty-peer-pod-selector.yaml:9:23: spec.ingress[0].from[0].podSelector: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "endpoint-empty-labels",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  endpoints:
    - name: web
      interface: lxc1
      ipv4: 10.0.0.1
      labels:
",
        ),
        "endpoint-empty-labels.yaml:9:14: spec.endpoints[0].labels: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    (
        "node-empty-deny",
        Text::Node(
            "apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  prefilter:
    deny: ~
",
        ),
        "node-empty-deny.yaml:6:11: spec.prefilter.deny: empty value (null): write the value (`{}` or `[]` if an empty one is meant), or leave the field out",
    ),
    // --- NetworkPolicy --------------------------------------------------------------------
    (
        "knp-missing-pod-selector",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  policyTypes: [Ingress]
",
        ),
        "knp-missing-pod-selector.yaml:5:3: spec: missing field `podSelector`",
    ),
    (
        "namespace-twice",
        Text::Policy(
            "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
",
        ),
        "namespace-twice.yaml:7:18: metadata.name: a second Namespace `shop` (document 2 of the file; the first is document 1)",
    ),
    (
        "namespace-name-label-differs",
        Text::Policy(
            "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {kubernetes.io/metadata.name: other}
",
        ),
        "namespace-name-label-differs.yaml:5:41: metadata.labels.kubernetes.io/metadata.name: kubernetes.io/metadata.name is the namespace's name (`shop`), set by Kubernetes",
    ),
    (
        "ccnp-with-namespace",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector: {}
  ingress: [{}]
",
        ),
        "ccnp-with-namespace.yaml:3:32: metadata.namespace: a CiliumClusterwideNetworkPolicy is cluster-scoped: it has no namespace (leave it out)",
    ),
    (
        "cnp-to-services",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
    - toServices:
        - k8sService: {serviceName: db, namespace: default}
      toPorts: [{ports: [{port: '80'}]}]
",
        ),
        "cnp-to-services.yaml:7:7: spec.egress[0]: toServices and toPorts cannot be combined in one entry (Cilium rejects it too: \"Combining ToServices and ToPorts is not supported yet\"); toServices allows every port of the service's backends",
    ),
    (
        "cnp-from-nodes",
        Text::Policy(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
    - fromNodes: [{matchLabels: {role: control-plane}}]
",
        ),
        "cnp-from-nodes.yaml:7:18: spec.ingress[0].fromNodes: fromNodes needs `policy.nodeSelectorLabels: true` in the Node's spec (Cilium: \"FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" flag is set\"); or use fromEntities (host, remote-node)",
    ),
    (
        "knp-port-zero",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 0}]
",
        ),
        "knp-port-zero.yaml:7:22: spec.ingress[0].ports[0].port: port 0 is not a port; leave port out to match every port",
    ),
    (
        "knp-ip-block-with-selector",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - from:
        - ipBlock: {cidr: 10.0.0.0/8}
          podSelector: {}
",
        ),
        "knp-ip-block-with-selector.yaml:8:11: spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
    ),
    (
        "knp-empty-peer",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  egress:
    - to: [{}]
",
        ),
        "knp-empty-peer.yaml:7:12: spec.egress[0].to[0]: a peer needs podSelector, namespaceSelector or ipBlock",
    ),
    (
        "knp-bad-policy-type",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  policyTypes: [Ingress, Both]
",
        ),
        "knp-bad-policy-type.yaml:6:26: spec.policyTypes[1]: unknown variant `Both`, expected `Ingress` or `Egress`",
    ),
    (
        "knp-protocol-any",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - ports:
        - {protocol: ANY, port: 80}
",
        ),
        "knp-protocol-any.yaml:8:22: spec.ingress[0].ports[0].protocol: unknown protocol `ANY`; expected TCP, UDP or SCTP",
    ),
    (
        "knp-except-outside-cidr",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  egress:
    - to:
        - ipBlock:
            cidr: 172.16.0.0/12
            except: [172.32.0.0/16]
",
        ),
        "knp-except-outside-cidr.yaml:10:22: spec.egress[0].to[0].ipBlock.except[0]: 172.32.0.0/16 is not inside 172.16.0.0/12",
    ),
    (
        "knp-named-port",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - ports:
        - {protocol: TCP, port: metrics, endPort: 9100}
",
        ),
        "knp-named-port.yaml:8:51: spec.ingress[0].ports[0].endPort: endPort cannot close a range that starts at a named port (`metrics`); name the port by number for a range",
    ),
    (
        "knp-end-port-below-port",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - ports:
        - protocol: TCP
          port: 32000
          endPort: 30000
",
        ),
        "knp-end-port-below-port.yaml:10:20: spec.ingress[0].ports[0].endPort: endPort 30000 is below port 32000",
    ),
    (
        "knp-duplicate-key",
        Text::Policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
    - ports: [{protocol: TCP, port: 80, port: 81}]
",
        ),
        "knp-duplicate-key.yaml:7:41: spec.ingress[0].ports[0]: duplicate key `port`",
    ),
];

fn text_of(input: Text) -> String {
    match input {
        Text::Node(text) => text.to_owned(),
        Text::Policy(text) => format!("{text}{NODE}"),
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

/// Every rejection is located inside its text, and a valid sibling of each policy case
/// (the same file without its policy) is accepted: the error comes from the policy.
#[test]
fn errors_are_located_inside_the_input() {
    rejections::assert_located(&cases());
    model::parse_str(NODE, "node.yaml").expect("the appended Node document is valid on its own");
}
