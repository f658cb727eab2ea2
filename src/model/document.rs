//! The node file's documents: their wire (serde) form and the reader that dispatches on kind.
//!
//! Contract of [`read_documents`]:
//! - The file is a YAML stream; empty documents (only comments, or `null`) are skipped. Every
//!   other document is a mapping with a `kind`.
//! - Each document is read in two passes over the same text. The *survey* walks the whole
//!   document: it rejects a duplicate key in any mapping at that key (serde would let a map
//!   field keep the last value silently, and reports a duplicate struct field only at the
//!   mapping), finds `kind`, checks that the kind is known and that at most one `Node` appears.
//!   The survey also refuses an empty (null) value anywhere below the top level, and at the
//!   top level anywhere but `spec` (see `NoDuplicateKeys`).
//!   The *body* pass then deserializes the document into the wire type for its kind, with
//!   `deny_unknown_fields` throughout; the wire type checks `apiVersion` for its kind.
//!   Two passes because `kind` may come after `spec`, and buffering the document in a
//!   generic value would lose the line and column of every later error.
//! - Kinds read: Node, CiliumNetworkPolicy (`super::cnp`), NetworkPolicy (`super::knp`),
//!   Service and EndpointSlice (`super::service`), Namespace (`super::namespace`),
//!   CiliumClusterwideNetworkPolicy (`super::cnp`), AdminNetworkPolicy and
//!   BaselineAdminNetworkPolicy (`super::anp`). Adding one means adding its wire type and
//!   its arm in the dispatch below.
//! - Each document comes back with its position in the stream, which `super::locate` needs to
//!   place errors found when the document is lowered.
//! - All errors are serde_norway errors located at the offending node (line and column relative
//!   to the whole stream); `super::ModelError::from_yaml` turns them into model errors.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;

use super::anp::AnpDocument;
use super::cidr::Cidr;
use super::cnp::{CcnpDocument, CnpDocument};
use super::de::parse_str_scalar;
use super::endpoint::{AnyAddress, EndpointWire};
use super::knp::KnpDocument;
use super::names::check_dns_label;
use super::namespace::NamespaceDocument;
use super::service::{ServiceDocument, SliceDocument};

/// Every document kind sluice recognizes, read now or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocumentKind {
    Node,
    CiliumNetworkPolicy,
    NetworkPolicy,
    Service,
    EndpointSlice,
    Namespace,
    CiliumClusterwideNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl DocumentKind {
    const ALL: [DocumentKind; 9] = [
        DocumentKind::Node,
        DocumentKind::CiliumNetworkPolicy,
        DocumentKind::NetworkPolicy,
        DocumentKind::Service,
        DocumentKind::EndpointSlice,
        DocumentKind::Namespace,
        DocumentKind::CiliumClusterwideNetworkPolicy,
        DocumentKind::AdminNetworkPolicy,
        DocumentKind::BaselineAdminNetworkPolicy,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            DocumentKind::Node => "Node",
            DocumentKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            DocumentKind::NetworkPolicy => "NetworkPolicy",
            DocumentKind::Service => "Service",
            DocumentKind::EndpointSlice => "EndpointSlice",
            DocumentKind::Namespace => "Namespace",
            DocumentKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            DocumentKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            DocumentKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    /// The `apiVersion` a document of this kind must declare.
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            DocumentKind::Node => "sluice.dev/v1",
            DocumentKind::CiliumNetworkPolicy => "cilium.io/v2",
            DocumentKind::NetworkPolicy => "networking.k8s.io/v1",
            DocumentKind::Service => "v1",
            DocumentKind::EndpointSlice => "discovery.k8s.io/v1",
            DocumentKind::Namespace => "v1",
            DocumentKind::CiliumClusterwideNetworkPolicy => "cilium.io/v2",
            DocumentKind::AdminNetworkPolicy | DocumentKind::BaselineAdminNetworkPolicy => {
                "policy.networking.k8s.io/v1alpha1"
            }
        }
    }

    fn from_name(name: &str) -> Option<DocumentKind> {
        DocumentKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One document of the node file, in wire form.
#[derive(Debug)]
pub(crate) enum Document {
    Node(NodeDocument),
    CiliumNetworkPolicy(CnpDocument),
    NetworkPolicy(KnpDocument),
    Service(ServiceDocument),
    EndpointSlice(SliceDocument),
    Namespace(NamespaceDocument),
    CiliumClusterwideNetworkPolicy(CcnpDocument),
    /// AdminNetworkPolicy (`false`) or BaselineAdminNetworkPolicy (`true`).
    AdminNetworkPolicy(AnpDocument, bool),
}

/// `kind: Node`: what only the node knows.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Node document: a mapping with apiVersion, kind, metadata and spec"
)]
pub(crate) struct NodeDocument {
    #[serde(rename = "apiVersion", deserialize_with = "node_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: de::IgnoredAny,
    pub metadata: NodeMetadata,
    #[serde(default)]
    pub spec: NodeSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the node's name")]
pub(crate) struct NodeMetadata {
    #[serde(deserialize_with = "dns_label")]
    pub name: String,
}

/// `Node.spec`. Later sections (devices, encryption, overlay) are added here.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of node sections such as prefilter and endpoints"
)]
pub(crate) struct NodeSpec {
    #[serde(default)]
    pub prefilter: PrefilterSpec,
    /// The node's own addresses: peers with these addresses are the `host` entity.
    #[serde(default)]
    pub host_addresses: Vec<AnyAddress>,
    #[serde(default)]
    pub endpoints: Vec<EndpointWire>,
    /// The router addresses on `sluice_host`.
    #[serde(default)]
    pub router: Option<super::network::RouterWire>,
    /// The VXLAN overlay to peer nodes.
    #[serde(default)]
    pub overlay: Option<super::network::OverlayWire>,
    /// Where services are balanced besides the endpoints' programs.
    #[serde(default)]
    pub load_balancer: Option<super::network::LoadBalancerWire>,
    /// Socket-layer acceleration.
    #[serde(default)]
    pub socket_layer: Option<super::socket_layer::SocketLayerWire>,
    /// Transparent encryption between nodes.
    #[serde(default)]
    pub encryption: Option<super::encryption::EncryptionWire>,
    /// How policy is enforced (`allowLocalhost`).
    #[serde(default)]
    pub policy: Option<super::policy_settings::PolicySettingsWire>,
}

/// `Node.spec.prefilter`: source prefixes dropped before anything else looks at a packet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with a deny list")]
pub(crate) struct PrefilterSpec {
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

fn node_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::Node)
}

pub(crate) fn cnp_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::CiliumNetworkPolicy)
}

pub(crate) fn knp_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::NetworkPolicy)
}

pub(crate) fn service_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::Service)
}

pub(crate) fn ccnp_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::CiliumClusterwideNetworkPolicy)
}

pub(crate) fn anp_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::AdminNetworkPolicy)
}

pub(crate) fn namespace_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::Namespace)
}

pub(crate) fn slice_api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    expect_api_version(deserializer, DocumentKind::EndpointSlice)
}

fn expect_api_version<'de, D: Deserializer<'de>>(
    deserializer: D,
    kind: DocumentKind,
) -> Result<(), D::Error> {
    parse_str_scalar(deserializer, "an apiVersion string", |found| {
        if found == kind.api_version() {
            Ok(())
        } else {
            Err(format!("expected {} for kind {}, found `{found}`", kind.api_version(), kind.name()))
        }
    })
}

fn dns_label<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    parse_str_scalar(deserializer, "a name", |name| check_dns_label(name).map(|()| name.to_owned()))
}

/// Reads every document of `source`, in order, each with its 0-based position in the stream
/// (empty documents count).
pub(crate) fn read_documents(source: &str) -> Result<Vec<(usize, Document)>, serde_norway::Error> {
    // Two iterators over the same stream: one surveys a document, the other then reads it.
    let surveys = serde_norway::Deserializer::from_str(source);
    let bodies = serde_norway::Deserializer::from_str(source);
    let mut first_node = None;
    let mut documents = Vec::new();
    for (index, (survey, body)) in surveys.zip(bodies).enumerate() {
        let Some(kind) = Survey { index, first_node }.deserialize(survey)? else {
            continue;
        };
        let document = match kind {
            DocumentKind::Node => {
                first_node = Some(index);
                Document::Node(NodeDocument::deserialize(body)?)
            }
            DocumentKind::CiliumNetworkPolicy => {
                Document::CiliumNetworkPolicy(CnpDocument::deserialize(body)?)
            }
            DocumentKind::NetworkPolicy => Document::NetworkPolicy(KnpDocument::deserialize(body)?),
            DocumentKind::Service => Document::Service(ServiceDocument::deserialize(body)?),
            DocumentKind::EndpointSlice => Document::EndpointSlice(SliceDocument::deserialize(body)?),
            DocumentKind::Namespace => Document::Namespace(NamespaceDocument::deserialize(body)?),
            DocumentKind::CiliumClusterwideNetworkPolicy => {
                Document::CiliumClusterwideNetworkPolicy(CcnpDocument::deserialize(body)?)
            }
            DocumentKind::AdminNetworkPolicy => {
                Document::AdminNetworkPolicy(AnpDocument::deserialize(body)?, false)
            }
            DocumentKind::BaselineAdminNetworkPolicy => {
                Document::AdminNetworkPolicy(AnpDocument::deserialize(body)?, true)
            }
        };
        documents.push((index, document));
    }
    Ok(documents)
}

/// First pass over one document: finds its kind and rejects duplicate keys anywhere in it.
/// Yields `None` for an empty document.
struct Survey {
    /// 0-based position of this document in the stream.
    index: usize,
    /// Position of the Node document seen so far, if any.
    first_node: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for Survey {
    type Value = Option<DocumentKind>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Survey {
    type Value = Option<DocumentKind>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a document: a mapping with apiVersion, kind, metadata and spec")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(SurveyTop(self)).map(Some)
    }
}

/// The survey of a document's top-level mapping.
struct SurveyTop(Survey);

impl<'de> Visitor<'de> for SurveyTop {
    type Value = DocumentKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DocumentKind, A::Error> {
        let Survey { index, first_node } = self.0;
        let mut keys = BTreeSet::new();
        let mut kind = None;
        while let Some(key) = map.next_key_seed(UniqueKey(&mut keys))? {
            if key == "kind" {
                kind = Some(map.next_value_seed(KindSeed { index, first_node })?);
            } else {
                // An empty `spec:` reads as no spec (a Node without sections); every other
                // empty value is refused.
                map.next_value_seed(NoDuplicateKeys { null_ok: key == "spec" })?;
            }
        }
        kind.ok_or_else(|| de::Error::missing_field("kind"))
    }
}

/// Reads `kind`: a known kind, and not a second Node.
struct KindSeed {
    index: usize,
    first_node: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = DocumentKind;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<DocumentKind, D::Error> {
        parse_str_scalar(deserializer, "a kind such as Node", |name| {
            let kind = DocumentKind::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = DocumentKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind `{name}`; expected one of {}", known.join(", "))
            })?;
            match (kind, self.first_node) {
                (DocumentKind::Node, Some(first)) => Err(format!(
                    "a second Node document (document {} of the file; the first is document {}): \
                     a node file holds exactly one Node",
                    self.index + 1,
                    first + 1
                )),
                _ => Ok(kind),
            }
        })
    }
}

/// Reads a mapping key as its scalar text and rejects it if the mapping already had it.
/// Comparison is by text, so `1` and `"1"` count as the same key: every key in a node file is a
/// string, and the stricter reading can only turn an ambiguity into an error.
struct UniqueKey<'a>(&'a mut BTreeSet<String>);

impl<'de> DeserializeSeed<'de> for UniqueKey<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        parse_str_scalar(deserializer, "a scalar mapping key", |key| {
            if self.0.insert(key.to_owned()) {
                Ok(key.to_owned())
            } else {
                Err(format!("duplicate key `{key}`"))
            }
        })
    }
}

/// Walks any value, checking every mapping in it with [`UniqueKey`], and refusing empty (null)
/// values: serde_norway reads an empty value where a mapping or list is expected as an empty one,
/// and an empty optional field as an absent one, so `endpointSelector:` with its selector
/// forgotten would select every endpoint and `port:` would mean every port. An intended empty
/// value is written `{}` or `[]`, an absent one is left out.
struct NoDuplicateKeys {
    /// This value may be empty (only the top-level `spec`).
    null_ok: bool,
}

/// What an empty value is told.
const EMPTY_VALUE: &str = "empty value (null): write the value (`{}` or `[]` if an empty one is meant), \
                           or leave the field out";

impl NoDuplicateKeys {
    const STRICT: NoDuplicateKeys = NoDuplicateKeys { null_ok: false };

    fn empty<E: de::Error>(&self) -> Result<(), E> {
        if self.null_ok {
            Ok(())
        } else {
            Err(E::custom(EMPTY_VALUE))
        }
    }
}

impl<'de> DeserializeSeed<'de> for NoDuplicateKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.empty()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.empty()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicateKeys::STRICT)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = BTreeSet::new();
        while map.next_key_seed(UniqueKey(&mut keys))?.is_some() {
            map.next_value_seed(NoDuplicateKeys::STRICT)?;
        }
        Ok(())
    }

    /// A value with a local tag (`!foo value`): serde_norway presents it as an enum.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (de::IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}
