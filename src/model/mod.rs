//! model: the node file, parsed, validated and normalized into a [`NodeConfig`].
//!
//! Contract:
//! - Input is a multi-document YAML stream (see `fixtures/default-node.yaml` and
//!   `fixtures/policy/demo.yaml`). Exactly one document is `apiVersion: sluice.dev/v1`,
//!   `kind: Node`; any number are `CiliumNetworkPolicy` (`cilium.io/v2`), `NetworkPolicy`
//!   (`networking.k8s.io/v1`), `Service` (`v1`) or `EndpointSlice` (`discovery.k8s.io/v1`,
//!   each tied to a Service of the file; see [`service`]) or `Namespace` (`v1`, its labels;
//!   see [`namespace`]) or `CiliumClusterwideNetworkPolicy` (`cilium.io/v2`). Unknown kinds, unknown fields,
//!   duplicate keys, empty (null) values (but for the Node's `spec:`) and invalid values are
//!   rejected; so is a text past [`limits`]' size or nesting depth, before it is parsed.
//! - [`parse_str`] is a total function of its text: it returns a config or the first error,
//!   never panics, and every error names the file, line and column of the offending node and
//!   its field path ([`ModelError`]). Nothing of a rejected file is used.
//! - Output is normalized so that equivalent spellings give equal configs: CIDRs are held in
//!   canonical form; the prefilter deny list is sorted ([`Cidr`]'s order) and deduplicated;
//!   endpoints are sorted by name and host addresses by address; policies are sorted by
//!   (namespace, name, kind), each in the normal form of [`policy`]. Overlapping prefixes are
//!   kept as written: which lookup serves them is the planner's choice.
//! - Policy names are unique per (kind, namespace), as in Kubernetes.
//! - Services are sorted by (namespace, name), each with its frontends and backends resolved
//!   from its EndpointSlices ([`service`]).
//!
//! Layout: [`cidr`] (network prefixes), `document` (wire types and the reader that dispatches
//! on kind), [`endpoint`] (endpoints and host addresses), [`labels`] (labels and selectors),
//! [`policy`] (policy normal form), `cnp` and `knp` (the two policy documents), `policy_wire`
//! (their shared pieces), `locate` (placing errors found after deserialization), `names`
//! (name rules), [`error`] (located errors), `de` (serde helpers), [`limits`] (what a file
//! must be before it is parsed: regular, bounded in size and nesting), [`warnings`] (valid
//! settings that are probably not meant).

pub mod anp;
pub mod cidr;
mod cnp;
mod de;
mod document;
pub mod encryption;
pub mod endpoint;
pub mod error;
mod knp;
pub mod labels;
pub mod limits;
mod locate;
pub mod named_ports;
mod names;
pub mod namespace;
pub mod network;
pub mod policy;
pub mod policy_settings;
mod policy_wire;
pub mod service;
pub mod socket_layer;
pub mod sources;
pub mod warnings;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

pub use cidr::{Cidr, CidrError, Family};
pub use endpoint::Endpoint;
pub use error::ModelError;
pub use labels::{Labels, Selector};
pub use names::MAX_NAME_LEN;
pub use policy::{Direction, Policy};
pub use service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
pub use warnings::warnings;

use document::{Document, NodeDocument};
use locate::{FieldPath, Invalid};

/// Origin reported in errors from the built-in default node.
const DEFAULT_NODE_ORIGIN: &str = "fixtures/default-node.yaml";

/// A node's validated, normalized configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `metadata.name`: a DNS-1123 label.
    pub name: String,
    pub prefilter: Prefilter,
    /// The node's own addresses (`spec.hostAddresses`), sorted: the `host` entity.
    pub host_addresses: Vec<IpAddr>,
    /// `spec.endpoints`, sorted by name; names, interfaces and addresses are unique.
    pub endpoints: Vec<Endpoint>,
    /// Every policy document, sorted by (namespace, name, kind).
    pub policies: Vec<Policy>,
    /// Every Service with its EndpointSlices' backends, sorted by (namespace, name).
    pub services: Vec<Service>,
    /// `spec.router`: the addresses `sluice_host` holds.
    pub router: network::Router,
    /// `spec.overlay`, if the node has peers behind a VXLAN overlay.
    pub overlay: Option<network::Overlay>,
    /// `spec.loadBalancer`: standalone load-balancer devices and the socket-LB cgroup.
    pub load_balancer: network::LoadBalancer,
    /// `spec.socketLayer`: socket-layer acceleration (off when `None`).
    pub socket_layer: Option<socket_layer::SocketLayer>,
    /// `spec.encryption`: how pod traffic to overlay peers is protected.
    pub encryption: encryption::Encryption,
    /// Where the config came from (a path, or the origin given to [`parse_str`]).
    pub source: String,
    /// `spec.policy`: how policy is enforced on this node.
    pub policy: policy_settings::PolicySettings,
    /// What the policy documents hold that is valid but ignored, one located line each
    /// (`file:line:col: path: message`), in file order; [`warnings`] reports them.
    pub policy_warnings: Vec<String>,
    /// Not from the file: the numbers a loaded node already gives its endpoints, by
    /// interface (see `node::endpoint_numbers`). Empty for a node not loaded yet.
    pub numbering: std::collections::BTreeMap<String, u16>,
    /// Not from the file: the label-set identities the cluster allocated (`crate::cluster`,
    /// from etcd), which take precedence over the locally hashed numbers. Empty in
    /// single-file mode.
    pub cluster_identities: BTreeMap<Labels, u32>,
    /// AdminNetworkPolicies by (priority, name), then the BaselineAdminNetworkPolicy if any
    /// (`anp`): the tiers before and after [`NodeConfig::policies`].
    pub admin_policies: Vec<anp::AdminPolicy>,
    /// Each Service as `toServices` sees it (names, labels, selector, backend addresses),
    /// sorted by (namespace, name); the policies' `toServices` are already lowered from it.
    pub policy_services: Vec<service::PolicyService>,
}

impl NodeConfig {
    /// Every endpoint the overlay peers declare, with the name of its node.
    pub fn remote_endpoints(&self) -> impl Iterator<Item = (&str, &network::RemoteEndpoint)> + '_ {
        self.overlay
            .iter()
            .flat_map(|o| &o.peers)
            .flat_map(|p| p.endpoints.iter().map(|e| (p.name.as_str(), e)))
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.binary_search_by(|e| e.name.as_str().cmp(name)).ok().map(|i| &self.endpoints[i])
    }
}

/// Sources dropped at the earliest hook, before any other processing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefilter {
    /// Sorted (IPv4 first, then by address, then by length) and without duplicates.
    pub deny: Vec<Cidr>,
}

/// Parses a node file's text. `origin` names it in errors and becomes [`NodeConfig::source`].
pub fn parse_str(source: &str, origin: &str) -> Result<NodeConfig, ModelError> {
    // Size and depth first: the YAML scanner's time grows with the square of the depth.
    limits::check_shape(source).map_err(|e| ModelError::at(origin, e.line, e.col, e.message))?;
    let documents = document::read_documents(source).map_err(|err| ModelError::from_yaml(origin, &err))?;
    let located = |index: usize, invalid: Invalid| {
        ModelError::from_yaml(origin, &locate::locate(source, index, &invalid))
    };
    let mut node = None;
    let mut policies = Vec::new();
    let mut policy_warnings = Vec::new();
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    let mut namespaces = Vec::new();
    let mut admin_policies = Vec::new();
    // CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy documents wait for the Services
    // (their `toServices` lowers to what the Services select).
    let mut cilium = Vec::new();
    // (kind, namespace, name) -> document position, to reject a second policy of one name.
    let mut seen: BTreeMap<(policy::PolicyKind, String, String), usize> = BTreeMap::new();
    for (index, document) in documents {
        let policy =
            match document {
                // The reader rejects a second Node, so this is the only one.
                Document::Node(doc) => {
                    node = Some(lower_node(doc, origin).map_err(|invalid| located(index, invalid))?);
                    continue;
                }
                Document::CiliumNetworkPolicy(doc) => {
                    cilium.push((index, CiliumDocument::Namespaced(doc)));
                    continue;
                }
                Document::CiliumClusterwideNetworkPolicy(doc) => {
                    cilium.push((index, CiliumDocument::Clusterwide(doc)));
                    continue;
                }
                Document::NetworkPolicy(doc) => knp::lower_knp(&doc).map(|(policy, ignored)| {
                    policy_warnings.extend(ignored.iter().map(|w| {
                        ModelError::from_yaml(origin, &locate::locate(source, index, w)).to_string()
                    }));
                    policy
                }),
                Document::Service(doc) => {
                    services.push((index, doc));
                    continue;
                }
                Document::EndpointSlice(doc) => {
                    slices.push((index, doc));
                    continue;
                }
                Document::Namespace(doc) => {
                    namespaces.push((index, doc));
                    continue;
                }
                Document::AdminNetworkPolicy(doc, baseline) => {
                    let place = |path: &FieldPath| match ModelError::from_yaml(
                        origin,
                        &locate::locate(source, index, &path.invalid("here")),
                    ) {
                        ModelError::Invalid { line, col, path, .. } => {
                            sources::Place { line, col, path: path.unwrap_or_default() }
                        }
                        _ => sources::Place { line: 1, col: 1, path: String::new() },
                    };
                    let policy = anp::lower_anp(&doc, baseline, &place).map_err(|i| located(index, i))?;
                    admin_policies.push((index, policy));
                    continue;
                }
            }
            .map_err(|invalid| located(index, invalid))?;
        policies.push((index, policy));
    }
    let mut node = node.ok_or_else(|| {
        ModelError::at(
            origin,
            1,
            1,
            "no Node document: a node file holds exactly one document with \
             `apiVersion: sluice.dev/v1` and `kind: Node`",
        )
    })?;
    let namespace_labels =
        namespace::lower_namespaces(&namespaces).map_err(|(index, invalid)| located(index, invalid))?;
    namespace::label_endpoints(&mut node.endpoints, &namespace_labels);
    node.services = service::lower_services(&services, &slices, &node.endpoints, &node.host_addresses)
        .map_err(|(index, invalid)| located(index, invalid))?;
    node.policy_services = service::policy_services(&services, &node.services);
    let cx = cnp::CiliumContext {
        services: &node.policy_services,
        node_selector_labels: node.policy.node_selector_labels,
    };
    for (index, doc) in cilium {
        let policy = match doc {
            CiliumDocument::Namespaced(doc) => cnp::lower_cnp(&doc, &cx),
            CiliumDocument::Clusterwide(doc) => cnp::lower_ccnp(&doc, &cx),
        };
        policies.push((index, policy.map_err(|invalid| located(index, invalid))?));
    }
    policies.sort_by_key(|(index, _)| *index);
    for (index, policy) in &policies {
        let key = (policy.kind, policy.namespace.clone(), policy.name.clone());
        if let Some(first) = seen.insert(key, *index) {
            let at = FieldPath::root().key("metadata").key("name");
            return Err(located(
                *index,
                at.invalid(format!(
                    "a second {} `{}/{}` (document {} of the file; the first is document {})",
                    policy.kind,
                    policy.namespace,
                    policy.name,
                    index + 1,
                    first + 1
                )),
            ));
        }
    }
    let mut policies: Vec<Policy> = policies.into_iter().map(|(_, policy)| policy).collect();
    policies.sort();
    node.policies = policies;
    node.policy_warnings = policy_warnings;
    node.admin_policies = anp::order(admin_policies).map_err(|(index, invalid)| located(index, invalid))?;
    Ok(node)
}

/// Reads ([`limits::read_node_file`]: a regular file, bounded) and parses the node file at
/// `path`; errors name the path.
pub fn load_file(path: &Path) -> Result<NodeConfig, ModelError> {
    let text = limits::read_node_file(path)?;
    parse_str(&text, &path.display().to_string())
}

/// The built-in default node's YAML (`fixtures/default-node.yaml`).
pub const DEFAULT_NODE_YAML: &str = include_str!("../../fixtures/default-node.yaml");

/// The built-in default node (`fixtures/default-node.yaml`), used by `sluice demo`.
pub fn default_node() -> NodeConfig {
    parse_str(DEFAULT_NODE_YAML, DEFAULT_NODE_ORIGIN)
        .expect("fixtures/default-node.yaml is valid: tests::default_node_parses checks it")
}

fn lower_node(node: NodeDocument, origin: &str) -> Result<NodeConfig, Invalid> {
    let spec = node.spec;
    let deny: BTreeSet<Cidr> = spec.prefilter.deny.into_iter().collect();
    let (endpoints, host_addresses) =
        endpoint::lower_endpoints(spec.endpoints, &spec.host_addresses, &FieldPath::root().key("spec"))?;
    let (router, overlay) =
        network::lower(spec.router, spec.overlay, &endpoints, &FieldPath::root().key("spec"))?;
    let encryption = encryption::lower(spec.encryption, overlay.is_some(), &FieldPath::root().key("spec"))?;
    let load_balancer =
        network::lower_load_balancer(spec.load_balancer, &endpoints, &FieldPath::root().key("spec"))?;
    let socket_layer = socket_layer::lower(spec.socket_layer, &FieldPath::root().key("spec"))?;
    Ok(NodeConfig {
        name: node.metadata.name,
        prefilter: Prefilter { deny: deny.into_iter().collect() },
        host_addresses,
        endpoints,
        policies: Vec::new(),
        services: Vec::new(),
        router,
        overlay,
        load_balancer,
        socket_layer,
        encryption,
        source: origin.to_owned(),
        policy: policy_settings::lower(spec.policy),
        policy_warnings: Vec::new(),
        numbering: Default::default(),
        cluster_identities: BTreeMap::new(),
        admin_policies: Vec::new(),
        policy_services: Vec::new(),
    })
}

/// A Cilium policy document, lowered once the Services are known.
enum CiliumDocument {
    Namespaced(cnp::CnpDocument),
    Clusterwide(cnp::CcnpDocument),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_node_parses() {
        let node = default_node();
        assert_eq!(node.name, "node-1");
        assert_eq!(node.source, DEFAULT_NODE_ORIGIN);
        assert!(!node.prefilter.deny.is_empty());
    }

    #[test]
    fn locations_count_from_the_top_of_the_file() {
        let text = "# comment\n---\n---\napiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\n---\n\napiVersion: v1\nkind: Pod\n";
        let err = parse_str(text, "f.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml:11:7: kind: unknown kind `Pod`; expected one of Node, CiliumNetworkPolicy, \
             NetworkPolicy, Service, EndpointSlice, Namespace, CiliumClusterwideNetworkPolicy, \
             AdminNetworkPolicy, BaselineAdminNetworkPolicy"
        );
        assert_eq!(err.location(), Some((11, 7)));
    }

    #[test]
    fn empty_documents_are_skipped() {
        let text =
            "---\n# nothing\n---\n~\n---\napiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\n---\n";
        let node = parse_str(text, "f.yaml").unwrap();
        assert_eq!(node.name, "n");
        assert_eq!(node.prefilter, Prefilter::default());
    }

    #[test]
    fn empty_file_has_no_node() {
        for text in ["", "# only a comment\n", "---\n---\n"] {
            assert_eq!(
                parse_str(text, "f.yaml").unwrap_err().to_string(),
                "f.yaml:1:1: no Node document: a node file holds exactly one document with \
                 `apiVersion: sluice.dev/v1` and `kind: Node`",
                "input {text:?}"
            );
        }
    }

    #[test]
    fn spec_and_prefilter_may_be_omitted_or_empty() {
        for text in [
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\n",
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec: {}\n",
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec:\n",
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec: {prefilter: {}}\n",
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec: {prefilter: {deny: []}}\n",
        ] {
            let node = parse_str(text, "f.yaml").unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(node.prefilter.deny.is_empty(), "{text:?}");
        }
    }

    /// Random edits of the default node never make the parser panic, and every rejection
    /// carries a location inside the text.
    #[test]
    fn mutated_node_files_never_panic() {
        assert_edits_never_panic(include_str!("../../fixtures/default-node.yaml"), 0x0dd_ba11);
    }

    /// The same for a file with endpoints and every kind of policy document: errors found
    /// after deserialization (and placed by rereading the text) are located too.
    #[test]
    fn mutated_policy_files_never_panic() {
        assert_edits_never_panic(include_str!("../../fixtures/policy/demo.yaml"), 0x5ca1_ab1e);
    }

    fn assert_edits_never_panic(source: &str, seed: u64) {
        const ALPHABET: &[u8] = b" \n\t-:[]{},#&*!|>'\"/.0123456789abcdefkNx";
        let mut state: u64 = seed;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for _ in 0..2_000 {
            let mut bytes = source.as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = ALPHABET[next() % ALPHABET.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, ALPHABET[next() % ALPHABET.len()]),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            // libyaml may place an error just past the last line.
            let lines = text.lines().count() + 1;
            if let Err(err) = parse_str(&text, "m.yaml") {
                let (line, col) = err.location().expect("content errors are located");
                assert!(line >= 1 && line <= lines && col >= 1, "{err}\ninput:\n{text}");
            }
        }
    }

    #[test]
    fn endpoints_are_sorted_and_carry_their_namespace_label() {
        let text = "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec:
  hostAddresses: ['fd00::5', 192.168.1.5]
  endpoints:
    - {name: zed, interface: lxc2, ipv6: 'FD00:0::2', namespace: prod, labels: {k8s:app: z}}
    - {name: abe, interface: lxc1, ipv4: 10.0.0.1}
";
        let node = parse_str(text, "f.yaml").unwrap();
        let names: Vec<&str> = node.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["abe", "zed"]);
        let host: Vec<String> = node.host_addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(host, ["192.168.1.5", "fd00::5"]);
        let abe = node.endpoint("abe").unwrap();
        assert_eq!(abe.namespace, "default");
        assert_eq!(abe.labels, Labels::from([(labels::NAMESPACE_LABEL.to_owned(), "default".to_owned())]));
        let zed = node.endpoint("zed").unwrap();
        assert_eq!(zed.ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            zed.labels,
            Labels::from([
                ("app".to_owned(), "z".to_owned()),
                (labels::NAMESPACE_LABEL.to_owned(), "prod".to_owned()),
            ])
        );
        assert!(node.endpoint("nobody").is_none());
        assert!(node.policies.is_empty());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let depth = 10_000;
        let text = format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: n}}\nspec: {{x: {}{}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let err = parse_str(&text, "deep.yaml").unwrap_err().to_string();
        assert!(err.starts_with("deep.yaml:4:"), "{err}");
    }

    #[test]
    fn load_file_names_a_missing_path() {
        let err = load_file(Path::new("fixtures/does-not-exist.yaml")).unwrap_err();
        assert!(
            err.to_string().starts_with("fixtures/does-not-exist.yaml: cannot read node file: "),
            "{err}"
        );
        assert_eq!(err.location(), None);
    }
}
