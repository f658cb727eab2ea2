//! `kind: Service` (`apiVersion: v1`) and `kind: EndpointSlice` (`apiVersion:
//! discovery.k8s.io/v1`): wire forms, and their lowering into [`Service`]s, each a list of
//! frontends (VIP, port, protocol) with their backends.
//!
//! Contract, Service:
//! - `metadata`: `name` (a DNS-1035 label: a DNS-1123 label that starts with a letter),
//!   `namespace` (default `default`), `labels` (accepted, not used), `annotations` (below).
//!   (namespace, name) is unique among the file's Services.
//! - `spec.type`: `ClusterIP` or absent. NodePort, LoadBalancer and ExternalName are rejected by
//!   name. `spec.clusterIP` and/or `spec.clusterIPs` (one address, or one IPv4 and one IPv6):
//!   unicast; when both are given `clusterIPs[0]` equals `clusterIP`; `None` (headless) and an
//!   absent address are rejected: sluice does not allocate VIPs. `ipFamilies`, when given, lists
//!   the VIPs' families in order; `ipFamilyPolicy` SingleStack needs one VIP, RequireDualStack
//!   two. A VIP belongs to one Service and is no endpoint or host address of the node.
//! - `spec.ports` (at least one): `port` 1-65535, `protocol` TCP (default), UDP or SCTP, `name`
//!   (a DNS-1123 label; required and unique when there are several ports), `targetPort` (a
//!   number, default `port`, or a port name; see below), `appProtocol` (accepted, not used).
//!   (port, protocol) is unique.
//! - `spec.sessionAffinity`: `None` (default) or `ClientIP`, with
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` 1-86400 (default 10800, Kubernetes' own);
//!   a `sessionAffinityConfig` without ClientIP affinity is rejected, as Kubernetes does.
//! - `spec.selector` is not used for backends: they come from EndpointSlices only. The
//!   Service's labels and selector are kept for policy ([`PolicyService`]): Cilium's
//!   `toServices` selects Services by name or labels and allows their pods by the selector,
//!   or their EndpointSlice addresses when they have none.
//! - Annotations (a typo in a `sluice.dev/` key is an error, other keys are accepted):
//!   `sluice.dev/lb-algorithm: random | maglev`, default `random`: random selection needs no
//!   per-service table, while Maglev costs one table of M slots (4 bytes each) per frontend,
//!   64 KiB at the default size; both pin a connection to its backend through conntrack, and
//!   Maglev also keeps flows in place when conntrack state is lost. `sluice.dev/maglev-table-size:
//!   <prime>` (only with maglev; a prime in 3-131071, default 16381); each frontend's active
//!   backends times 10 must not exceed it, so that each holds at least ten slots and the
//!   per-backend share is within about 10% of its weight's (the paper advises M >= 100 N for 1%).
//!
//! Contract, EndpointSlice:
//! - `metadata`: `name` (DNS-1123 subdomain, unique per namespace among slices), `namespace`
//!   (default `default`), `labels` with `kubernetes.io/service-name` naming a Service of this
//!   file in the slice's namespace (required; a slice for a Service the file does not have is
//!   an error, not ignored: in a declared node state it can only be a typo or a missing
//!   document), `annotations`: `sluice.dev/weights: "ADDR=W,ADDR=W"` gives backend weights
//!   1-[`MAX_WEIGHT`] (default 1) by address, for this slice's endpoints only; weights need
//!   `lb-algorithm: maglev` (random selection is unweighted).
//! - `addressType`: IPv4 or IPv6 (FQDN is rejected); every address of the slice is of that
//!   family, and the Service has a VIP of that family.
//! - `endpoints[]`: `addresses` (1 or more; the first is the backend, as kube-proxy does, and
//!   it is none of its Service's own VIPs),
//!   `conditions` (`ready`, `serving`, `terminating`; absent `ready` and `serving` mean true,
//!   absent `terminating` false, as the API documents), and `hostname`, `nodeName`, `zone`,
//!   `targetRef`, `hints` (accepted, not used: no topology-aware routing).
//! - `ports[]`: `name`, `port` (required), `protocol` (default TCP), `appProtocol`. As in
//!   Kubernetes, a slice port serves the Service port of the same name (both unnamed for a
//!   single unnamed port); its number is the backend's port, i.e. the resolved `targetPort`.
//!   So a named `targetPort` is supported: the slice carries the number it resolves to. A
//!   numeric `targetPort` must equal the slice port's number. A slice port no Service port
//!   has, or of another protocol, is an error; slices with endpoints need ports.
//!
//! Output:
//! - A backend's state: terminating and serving: [`BackendState::Terminating`] (keeps its
//!   connections, takes no new ones); not terminating and ready: [`BackendState::Active`];
//!   otherwise [`BackendState::NotReady`] (kept for `service list`, never selected).
//! - Each Service has one [`Frontend`] per (VIP, port), sorted by (VIP, port, protocol), with
//!   the backends of that VIP's family from the slice ports of that port's name, sorted by
//!   (address, port). An (address, port name) appears once per Service and family. A Service
//!   without slices has frontends without backends.
//! - Services come out sorted by (namespace, name).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::cidr::Family;
use super::de::parse_str_scalar;
use super::endpoint::{parse_unicast, AnyAddress, Endpoint, Name, DEFAULT_NAMESPACE};
use super::labels::{LabelKey, LabelValue, Labels};
use super::locate::{FieldPath, Invalid};
use super::names::check_dns_label;
use super::policy::Protocol;
use super::policy_wire::{parse_protocol, ObjectName};
use crate::lb::maglev::{self, MaglevError, TableSize};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service annotation: `random` or `maglev`.
pub const LB_ALGORITHM_ANNOTATION: &str = "sluice.dev/lb-algorithm";
/// Service annotation: the Maglev table size, a prime.
pub const MAGLEV_TABLE_SIZE_ANNOTATION: &str = "sluice.dev/maglev-table-size";
/// EndpointSlice annotation: `ADDR=WEIGHT,...`.
pub const WEIGHTS_ANNOTATION: &str = "sluice.dev/weights";
/// The prefix of every sluice annotation.
const SLUICE_ANNOTATION_PREFIX: &str = "sluice.dev/";
/// The ClientIP affinity timeout when none is given (Kubernetes' default: three hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// The longest ClientIP affinity timeout (Kubernetes' limit: one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;
/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Maglev table slots each active backend needs at least.
pub const MIN_SLOTS_PER_BACKEND: u32 = 10;

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// A ClusterIP service: how it balances, and its frontends with their backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub algorithm: LbAlgorithm,
    pub affinity: SessionAffinity,
    /// One per (VIP, port), sorted by (VIP, port, protocol).
    pub frontends: Vec<Frontend>,
}

/// How a new connection's backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbAlgorithm {
    /// Uniformly among the active backends.
    Random,
    /// Maglev consistent hashing over a table of this many slots, with weights.
    Maglev(TableSize),
}

/// Whether a client's connections stick to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    /// New connections from one client address go to the backend its last connection used,
    /// until the client has been idle this long.
    ClientIp {
        timeout_seconds: u32,
    },
}

/// One address, port and protocol a service answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The Service port's name; empty for a single unnamed port.
    pub port_name: String,
    /// Sorted by (address, port); all of the VIP's family.
    pub backends: Vec<Backend>,
}

impl Frontend {
    /// The backends that take new connections.
    pub fn active(&self) -> impl Iterator<Item = &Backend> + '_ {
        self.backends.iter().filter(|b| b.state == BackendState::Active)
    }

    /// The input of this frontend's Maglev table: its active backends, in order.
    pub fn maglev_backends(&self) -> Vec<maglev::Backend> {
        self.active()
            .map(|b| maglev::Backend {
                key: maglev::BackendKey { addr: b.address, port: b.port },
                weight: b.weight,
            })
            .collect()
    }
}

/// Where a frontend's traffic may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub state: BackendState,
    /// 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

/// A backend's state, from its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Ready: takes new connections.
    Active,
    /// Terminating but serving: keeps its connections, takes no new ones.
    Terminating,
    /// Neither: takes nothing.
    NotReady,
}

impl BackendState {
    fn from_conditions(c: &ConditionsWire) -> BackendState {
        match (c.terminating.unwrap_or(false), c.ready.unwrap_or(true), c.serving.unwrap_or(true)) {
            (true, _, true) => BackendState::Terminating,
            (false, true, _) => BackendState::Active,
            _ => BackendState::NotReady,
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
            BackendState::NotReady => "not ready",
        })
    }
}

// ---------------------------------------------------------------------------------------
// Service wire form
// ---------------------------------------------------------------------------------------

/// `kind: Service`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a Service document: a mapping with apiVersion, kind, metadata and spec"
)]
pub(crate) struct ServiceDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::service_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: ServiceMeta,
    spec: ServiceSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "object metadata: a mapping with name and namespace")]
struct ServiceMeta {
    name: ServiceName,
    #[serde(default)]
    namespace: Option<Name>,
    /// What `toServices.k8sServiceSelector` selects the Service by.
    #[serde(default)]
    labels: Option<BTreeMap<LabelKey, LabelValue>>,
    #[serde(default)]
    annotations: Option<ServiceAnnotations>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a Service spec: a mapping with type, clusterIP, clusterIPs, ports and sessionAffinity"
)]
struct ServiceSpec {
    #[serde(default, rename = "type")]
    _type: Option<ServiceType>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<ClusterIp>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Option<Vec<ClusterIp>>,
    #[serde(default)]
    ip_families: Option<Vec<IpFamilyWire>>,
    #[serde(default)]
    ip_family_policy: Option<IpFamilyPolicy>,
    /// Not used for backends; `toServices` turns it into an endpoint selector.
    #[serde(default)]
    selector: Option<BTreeMap<LabelKey, LabelValue>>,
    #[serde(default)]
    ports: Vec<ServicePortWire>,
    #[serde(default)]
    session_affinity: Option<AffinityWire>,
    #[serde(default)]
    session_affinity_config: Option<AffinityConfigWire>,
}

/// A Service name: a DNS-1035 label.
#[derive(Debug)]
struct ServiceName(String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ServiceName, D::Error> {
        parse_str_scalar(deserializer, "a Service name", |name| {
            check_dns_label(name)?;
            if name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("`{name}` starts with a digit; a Service name starts with a letter"));
            }
            Ok(ServiceName(name.to_owned()))
        })
    }
}

/// `spec.type`: only ClusterIP is read.
#[derive(Debug)]
struct ServiceType;

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ServiceType, D::Error> {
        parse_str_scalar(deserializer, "a service type", |name| match name {
            "ClusterIP" => Ok(ServiceType),
            "NodePort" | "LoadBalancer" | "ExternalName" => Err(format!(
                "service type {name} is not supported: sluice load-balances ClusterIP services only"
            )),
            _ => Err(format!(
                "unknown service type `{name}`; expected ClusterIP, NodePort, LoadBalancer or ExternalName"
            )),
        })
    }
}

/// A `clusterIP` value: an address, or `None` (headless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusterIp {
    Headless,
    Vip(IpAddr),
}

impl<'de> Deserialize<'de> for ClusterIp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ClusterIp, D::Error> {
        parse_str_scalar(deserializer, "a cluster IP address", |text| match text {
            "None" => Ok(ClusterIp::Headless),
            "" => Err("an empty clusterIP asks for an allocated address: sluice does not allocate \
                       service addresses; write the address"
                .to_owned()),
            _ => parse_unicast(text).map(ClusterIp::Vip),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum IpFamilyWire {
    IPv4,
    IPv6,
}

impl IpFamilyWire {
    fn family(self) -> Family {
        match self {
            IpFamilyWire::IPv4 => Family::V4,
            IpFamilyWire::IPv6 => Family::V6,
        }
    }
}

/// Spelled as Kubernetes spells the values.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a service port: a mapping with name, port, targetPort and protocol"
)]
struct ServicePortWire {
    #[serde(default)]
    name: Option<PortName>,
    port: Port,
    #[serde(default)]
    target_port: Option<TargetPort>,
    #[serde(default)]
    protocol: Option<ProtocolWire>,
    #[serde(default, rename = "appProtocol")]
    _app_protocol: Option<String>,
}

/// A port number: 1 to 65535, written as a number or a string of digits.
#[derive(Debug, Clone, Copy)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Port, D::Error> {
        parse_str_scalar(deserializer, "a port number", |text| match parse_port(text) {
            Some(port) => port.map(Port),
            None => Err(format!("`{text}` is not a port number")),
        })
    }
}

/// `Some` when `text` is decimal digits: the port, or why it is out of range.
fn parse_port(text: &str) -> Option<Result<u16, String>> {
    let n = parse_decimal(text)?;
    Some(match u16::try_from(n) {
        Ok(0) => Err("port 0 is not a port: ports are 1 to 65535".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {text} is out of range 1-65535")),
    })
}

/// A port name: a DNS-1123 label, or empty (no name).
#[derive(Debug, Clone, Default)]
struct PortName(String);

impl<'de> Deserialize<'de> for PortName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortName, D::Error> {
        parse_str_scalar(deserializer, "a port name", |name| {
            if name.is_empty() {
                return Ok(PortName::default());
            }
            check_dns_label(name).map(|()| PortName(name.to_owned()))
        })
    }
}

/// `targetPort`: a number, or the name of a port of the backends (which the EndpointSlice
/// port resolves, so only its spelling is checked).
#[derive(Debug, Clone)]
enum TargetPort {
    Number(u16),
    Named,
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TargetPort, D::Error> {
        parse_str_scalar(deserializer, "a port number or name", |text| {
            if let Some(port) = parse_port(text) {
                return port.map(TargetPort::Number);
            }
            check_port_name(text).map(|()| TargetPort::Named)
        })
    }
}

/// A container port name (Kubernetes' IANA_SVC_NAME): 1 to 15 lowercase letters, digits and
/// '-', with a letter, not starting or ending with '-' and without "--".
fn check_port_name(name: &str) -> Result<(), String> {
    let valid = (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is neither a port number nor a port name (1 to 15 lowercase letters, digits and \
             '-', with a letter)"
        ))
    }
}

/// A port's protocol: TCP, UDP or SCTP.
#[derive(Debug, Clone, Copy)]
struct ProtocolWire(Protocol);

impl<'de> Deserialize<'de> for ProtocolWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ProtocolWire, D::Error> {
        parse_str_scalar(deserializer, "a protocol: TCP, UDP or SCTP", |name| {
            // Without ANY, parse_protocol yields exactly one protocol.
            parse_protocol(name, false).map(|p| ProtocolWire(p[0]))
        })
    }
}

fn protocol_or_tcp(p: Option<ProtocolWire>) -> Protocol {
    p.map_or(Protocol::Tcp, |p| p.0)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Icmp => "ICMP",
        Protocol::IcmpV6 => "ICMPv6",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum AffinityWire {
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with clientIP")]
struct AffinityConfigWire {
    #[serde(default, rename = "clientIP")]
    client_ip: Option<ClientIpConfigWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping with timeoutSeconds")]
struct ClientIpConfigWire {
    #[serde(default)]
    timeout_seconds: Option<TimeoutSeconds>,
}

#[derive(Debug, Clone, Copy)]
struct TimeoutSeconds(u32);

impl<'de> Deserialize<'de> for TimeoutSeconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TimeoutSeconds, D::Error> {
        parse_str_scalar(deserializer, "a number of seconds", |text| match parse_decimal(text) {
            Some(s @ 1..=86_400) => Ok(TimeoutSeconds(s as u32)),
            _ => Err(format!(
                "timeoutSeconds must be 1 to {MAX_AFFINITY_TIMEOUT_SECONDS} (one day), found `{text}`"
            )),
        })
    }
}

/// Decimal digits, without sign, as a number (saturating far past any value read here).
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

// ---------------------------------------------------------------------------------------
// Annotations
// ---------------------------------------------------------------------------------------

/// An annotation map whose `sluice.dev/` keys are typed; other keys take any string.
trait SluiceAnnotations: Default {
    /// The document kind, for errors.
    const KIND: &'static str;
    /// The sluice annotations this kind takes.
    const KNOWN: &'static [&'static str];
    /// Reads the value of `key`, one of [`Self::KNOWN`].
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// Service annotations.
#[derive(Debug, Default)]
struct ServiceAnnotations {
    algorithm: Option<AlgorithmWire>,
    table_size: Option<TableSizeWire>,
}

impl SluiceAnnotations for ServiceAnnotations {
    const KIND: &'static str = "a Service";
    const KNOWN: &'static [&'static str] = &[LB_ALGORITHM_ANNOTATION, MAGLEV_TABLE_SIZE_ANNOTATION];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == LB_ALGORITHM_ANNOTATION {
            self.algorithm = Some(map.next_value()?);
        } else {
            self.table_size = Some(map.next_value()?);
        }
        Ok(())
    }
}

/// EndpointSlice annotations.
#[derive(Debug, Default)]
struct SliceAnnotations {
    weights: Option<WeightsWire>,
}

impl SluiceAnnotations for SliceAnnotations {
    const KIND: &'static str = "an EndpointSlice";
    const KNOWN: &'static [&'static str] = &[WEIGHTS_ANNOTATION];

    fn read<'de, A: MapAccess<'de>>(&mut self, _key: &str, map: &mut A) -> Result<(), A::Error> {
        self.weights = Some(map.next_value()?);
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ServiceAnnotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnnotationsVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for SliceAnnotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnnotationsVisitor(std::marker::PhantomData))
    }
}

struct AnnotationsVisitor<T>(std::marker::PhantomData<fn() -> T>);

impl<'de, T: SluiceAnnotations> Visitor<'de> for AnnotationsVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of annotation names to strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key_seed(AnnotationKey::<T>(std::marker::PhantomData))? {
            if T::KNOWN.contains(&key.as_str()) {
                out.read(&key, &mut map)?;
            } else {
                map.next_value::<AnnotationValue>()?;
            }
        }
        Ok(out)
    }
}

/// An annotation key; an unknown `sluice.dev/` key is an error at the key.
struct AnnotationKey<T>(std::marker::PhantomData<fn() -> T>);

impl<'de, T: SluiceAnnotations> DeserializeSeed<'de> for AnnotationKey<T> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        parse_str_scalar(deserializer, "an annotation name", |key| {
            if key.starts_with(SLUICE_ANNOTATION_PREFIX) && !T::KNOWN.contains(&key) {
                Err(format!("unknown sluice annotation `{key}`; {} takes {}", T::KIND, T::KNOWN.join(", ")))
            } else {
                Ok(key.to_owned())
            }
        })
    }
}

/// Any other annotation's value: a string (any scalar).
struct AnnotationValue;

impl<'de> Deserialize<'de> for AnnotationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AnnotationValue, D::Error> {
        parse_str_scalar(deserializer, "an annotation value (a string)", |_| Ok::<_, String>(AnnotationValue))
    }
}

/// `sluice.dev/lb-algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlgorithmWire {
    Random,
    Maglev,
}

impl<'de> Deserialize<'de> for AlgorithmWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AlgorithmWire, D::Error> {
        parse_str_scalar(deserializer, "random or maglev", |name| match name {
            "random" => Ok(AlgorithmWire::Random),
            "maglev" => Ok(AlgorithmWire::Maglev),
            _ => Err(format!("unknown load-balancing algorithm `{name}`; expected random or maglev")),
        })
    }
}

/// `sluice.dev/maglev-table-size`.
#[derive(Debug, Clone, Copy)]
struct TableSizeWire(TableSize);

impl<'de> Deserialize<'de> for TableSizeWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TableSizeWire, D::Error> {
        parse_str_scalar(deserializer, "a prime table size", |text| {
            let n = parse_decimal(text)
                .ok_or_else(|| format!("`{text}` is not a table size (a prime number)"))?;
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            TableSize::new(n).map(TableSizeWire).map_err(|err| match err {
                MaglevError::NotPrime(_) => {
                    let below = (3..n).rev().find(|&p| maglev::is_prime(p));
                    let above = (n + 1..=maglev::MAX_TABLE_SIZE).find(|&p| maglev::is_prime(p));
                    match (below, above) {
                        (Some(b), Some(a)) => format!("{err}; the nearest primes are {b} and {a}"),
                        _ => err.to_string(),
                    }
                }
                _ => err.to_string(),
            })
        })
    }
}

/// `sluice.dev/weights`: `ADDR=WEIGHT` pairs, comma-separated, each address once.
#[derive(Debug, Clone, Default)]
struct WeightsWire(BTreeMap<IpAddr, u32>);

impl<'de> Deserialize<'de> for WeightsWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<WeightsWire, D::Error> {
        parse_str_scalar(deserializer, "ADDRESS=WEIGHT pairs separated by commas", |text| {
            let mut out = BTreeMap::new();
            if text.trim().is_empty() {
                return Ok(WeightsWire(out));
            }
            for item in text.split(',').map(str::trim) {
                let (addr, weight) = item
                    .split_once('=')
                    .ok_or_else(|| format!("`{item}`: expected ADDRESS=WEIGHT, such as 10.0.1.20=3"))?;
                let addr: IpAddr = addr
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{item}`: `{}` is not an IPv4 or IPv6 address", addr.trim()))?;
                let weight = match parse_decimal(weight.trim()) {
                    Some(w @ 1..) if w <= u64::from(MAX_WEIGHT) => w as u32,
                    _ => return Err(format!("`{item}`: the weight must be a number from 1 to {MAX_WEIGHT}")),
                };
                if out.insert(addr, weight).is_some() {
                    return Err(format!("{addr} is given a weight twice"));
                }
            }
            Ok(WeightsWire(out))
        })
    }
}

// ---------------------------------------------------------------------------------------
// EndpointSlice wire form
// ---------------------------------------------------------------------------------------

/// `kind: EndpointSlice`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an EndpointSlice document: a mapping with apiVersion, kind, metadata, addressType, endpoints and ports"
)]
pub(crate) struct SliceDocument {
    #[serde(rename = "apiVersion", deserialize_with = "super::document::slice_api_version")]
    _api_version: (),
    /// Checked by the survey.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: SliceMeta,
    address_type: AddressType,
    #[serde(default)]
    endpoints: Vec<SliceEndpointWire>,
    #[serde(default)]
    ports: Vec<SlicePortWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "object metadata: a mapping with name, namespace and labels")]
struct SliceMeta {
    name: ObjectName,
    #[serde(default)]
    namespace: Option<Name>,
    #[serde(default)]
    labels: Option<BTreeMap<LabelKey, LabelValue>>,
    #[serde(default)]
    annotations: Option<SliceAnnotations>,
}

/// `addressType`: IPv4 or IPv6.
#[derive(Debug, Clone, Copy)]
struct AddressType(Family);

impl<'de> Deserialize<'de> for AddressType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AddressType, D::Error> {
        parse_str_scalar(deserializer, "IPv4 or IPv6", |name| match name {
            "IPv4" => Ok(AddressType(Family::V4)),
            "IPv6" => Ok(AddressType(Family::V6)),
            "FQDN" => Err("addressType FQDN is not supported: sluice balances to IP addresses".to_owned()),
            _ => Err(format!("unknown addressType `{name}`; expected IPv4 or IPv6")),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an endpoint: a mapping with addresses and conditions"
)]
struct SliceEndpointWire {
    addresses: Vec<AnyAddress>,
    #[serde(default)]
    conditions: ConditionsWire,
    #[serde(default, rename = "hostname")]
    _hostname: Option<String>,
    #[serde(default, rename = "nodeName")]
    _node_name: Option<String>,
    #[serde(default, rename = "zone")]
    _zone: Option<String>,
    #[serde(default, rename = "targetRef")]
    _target_ref: Option<TargetRefWire>,
    #[serde(default, rename = "hints")]
    _hints: Option<HintsWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "conditions: a mapping with ready, serving and terminating")]
struct ConditionsWire {
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default)]
    serving: Option<bool>,
    #[serde(default)]
    terminating: Option<bool>,
}

/// `targetRef`: an object reference, accepted and not used.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object reference")]
struct TargetRefWire {
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    #[serde(default, rename = "namespace")]
    _namespace: Option<String>,
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default, rename = "uid")]
    _uid: Option<String>,
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<String>,
    #[serde(default, rename = "fieldPath")]
    _field_path: Option<String>,
}

/// `hints`: topology hints, accepted and not used.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "topology hints: a mapping with forZones and forNodes")]
struct HintsWire {
    #[serde(default, rename = "forZones")]
    _for_zones: Option<Vec<HintWire>>,
    #[serde(default, rename = "forNodes")]
    _for_nodes: Option<Vec<HintWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with name")]
struct HintWire {
    #[serde(rename = "name")]
    _name: String,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an EndpointSlice port: a mapping with name, port and protocol"
)]
struct SlicePortWire {
    #[serde(default)]
    name: Option<PortName>,
    port: Port,
    #[serde(default)]
    protocol: Option<ProtocolWire>,
    #[serde(default, rename = "appProtocol")]
    _app_protocol: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Lowering
// ---------------------------------------------------------------------------------------

/// A rejection in document `.0` of the stream.
pub(crate) type Located = (usize, Invalid);

/// A Service port, lowered.
#[derive(Debug)]
struct PortSpec {
    name: String,
    port: u16,
    protocol: Protocol,
    target: Option<TargetPort>,
}

/// A Service read and checked on its own, collecting its slices' backends.
#[derive(Debug)]
struct Pending {
    index: usize,
    namespace: String,
    name: String,
    algorithm: LbAlgorithm,
    /// Where the algorithm was chosen (for the slots-per-backend error).
    algorithm_at: FieldPath,
    affinity: SessionAffinity,
    vips: Vec<IpAddr>,
    ports: Vec<PortSpec>,
    /// (family, Service port name) -> backends, in the order the slices list them.
    backends: BTreeMap<(Family, String), Vec<Backend>>,
    /// (address, port name) -> where it was first written, for the duplicate check.
    seen: BTreeMap<(IpAddr, String), String>,
}

impl Pending {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn describe_port(name: &str) -> String {
    if name.is_empty() {
        "the unnamed port".to_owned()
    } else {
        format!("port `{name}`")
    }
}

/// `10.96.0.10:80/TCP`, `[fd00::10]:80/TCP`.
fn describe_frontend(f: &Frontend) -> String {
    let key = maglev::BackendKey { addr: f.vip, port: f.port };
    format!("{key}/{}", protocol_name(f.protocol))
}

/// Lowers every Service and EndpointSlice of the file. `endpoints` and `host_addresses` are the
/// node's, which no VIP may take.
pub(crate) fn lower_services(
    services: &[(usize, ServiceDocument)],
    slices: &[(usize, SliceDocument)],
    endpoints: &[Endpoint],
    host_addresses: &[IpAddr],
) -> Result<Vec<Service>, Located> {
    let mut taken: BTreeMap<IpAddr, String> = BTreeMap::new();
    for e in endpoints {
        for addr in e.addresses() {
            taken.insert(addr, format!("the address of endpoint `{}`", e.name));
        }
    }
    for &addr in host_addresses {
        taken.insert(addr, "a host address of this node".to_owned());
    }
    let mut pending: BTreeMap<(String, String), Pending> = BTreeMap::new();
    for (index, doc) in services {
        let p = lower_service(doc, *index).map_err(|invalid| (*index, invalid))?;
        let name_at = FieldPath::root().key("metadata").key("name");
        if let Some(first) = pending.get(&(p.namespace.clone(), p.name.clone())) {
            return Err((
                *index,
                name_at.invalid(format!(
                    "a second Service `{}` (document {} of the file; the first is document {})",
                    p.key(),
                    index + 1,
                    first.index + 1
                )),
            ));
        }
        for (i, &vip) in p.vips.iter().enumerate() {
            let at = vip_path(&doc.spec, i);
            if let Some(owner) = taken.get(&vip) {
                return Err((*index, at.invalid(format!("clusterIP {vip} is already {owner}"))));
            }
            taken.insert(vip, format!("the clusterIP of Service `{}`", p.key()));
        }
        pending.insert((p.namespace.clone(), p.name.clone()), p);
    }

    let mut slice_names: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (index, doc) in slices {
        let namespace = doc.metadata.namespace.as_ref().map_or(DEFAULT_NAMESPACE, |n| n.0.as_str());
        let key = (namespace.to_owned(), doc.metadata.name.0.clone());
        if let Some(first) = slice_names.insert(key, *index) {
            return Err((
                *index,
                FieldPath::root().key("metadata").key("name").invalid(format!(
                    "a second EndpointSlice `{namespace}/{}` (document {} of the file; the first is document {})",
                    doc.metadata.name.0,
                    index + 1,
                    first + 1
                )),
            ));
        }
        lower_slice(doc, namespace, &mut pending).map_err(|invalid| (*index, invalid))?;
    }

    pending.into_values().map(finish).collect()
}

/// What a CiliumNetworkPolicy's `toServices` can select: a Service's name, labels and pod
/// selector, and the addresses of its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyService {
    pub namespace: String,
    pub name: String,
    /// `metadata.labels` (without source prefixes).
    pub labels: Labels,
    /// `spec.selector`; `None` when absent or empty (a Service "without a selector").
    pub selector: Option<Labels>,
    /// Every backend address of every frontend (any state), sorted, deduplicated.
    pub addresses: Vec<IpAddr>,
}

/// The [`PolicyService`] of each Service document (`lowered` is [`lower_services`]' output
/// for the same documents), sorted by (namespace, name).
pub(crate) fn policy_services(docs: &[(usize, ServiceDocument)], lowered: &[Service]) -> Vec<PolicyService> {
    let plain = |map: &Option<BTreeMap<LabelKey, LabelValue>>| -> Labels {
        map.iter().flatten().map(|(k, v)| (k.key.clone(), v.0.clone())).collect()
    };
    let mut out: Vec<PolicyService> = docs
        .iter()
        .map(|(_, doc)| {
            let namespace =
                doc.metadata.namespace.as_ref().map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.0.clone());
            let name = doc.metadata.name.0.clone();
            let mut addresses: Vec<IpAddr> = lowered
                .iter()
                .filter(|s| s.namespace == namespace && s.name == name)
                .flat_map(|s| &s.frontends)
                .flat_map(|f| f.backends.iter().map(|b| b.address))
                .collect();
            addresses.sort();
            addresses.dedup();
            let selector = Some(plain(&doc.spec.selector)).filter(|s| !s.is_empty());
            PolicyService { labels: plain(&doc.metadata.labels), selector, addresses, namespace, name }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Path of the `i`th VIP as written: in `clusterIPs` when given, else `clusterIP`.
fn vip_path(spec: &ServiceSpec, i: usize) -> FieldPath {
    let spec_at = FieldPath::root().key("spec");
    if spec.cluster_ips.is_some() {
        spec_at.key("clusterIPs").index(i)
    } else {
        spec_at.key("clusterIP")
    }
}

fn lower_service(doc: &ServiceDocument, index: usize) -> Result<Pending, Invalid> {
    let spec = &doc.spec;
    let spec_at = FieldPath::root().key("spec");
    let namespace =
        doc.metadata.namespace.as_ref().map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.0.clone());
    let name = doc.metadata.name.0.clone();

    // VIPs.
    let headless = |at: FieldPath| {
        at.invalid("a headless Service (clusterIP: None) has no address to load-balance: sluice reads ClusterIP services with an address")
    };
    if spec.cluster_ip == Some(ClusterIp::Headless) {
        return Err(headless(spec_at.key("clusterIP")));
    }
    let single = match spec.cluster_ip {
        Some(ClusterIp::Vip(vip)) => Some(vip),
        _ => None,
    };
    let vips: Vec<IpAddr> = match (&spec.cluster_ips, single) {
        (None, None) => {
            return Err(spec_at.invalid(
                "a ClusterIP Service needs spec.clusterIP (or clusterIPs): sluice does not allocate service addresses",
            ))
        }
        (None, Some(vip)) => vec![vip],
        (Some(list), single) => {
            let at = spec_at.key("clusterIPs");
            if list.is_empty() || list.len() > 2 {
                return Err(at.invalid(format!(
                    "clusterIPs lists one address, or one IPv4 and one IPv6 address (found {})",
                    list.len()
                )));
            }
            let mut vips = Vec::new();
            for (i, ip) in list.iter().enumerate() {
                match ip {
                    ClusterIp::Headless => return Err(headless(at.index(i))),
                    ClusterIp::Vip(vip) => vips.push(*vip),
                }
            }
            if vips.len() == 2 && family_of(vips[0]) == family_of(vips[1]) {
                return Err(at.index(1).invalid(format!(
                    "a second {} address: a dual-stack Service has one IPv4 and one IPv6 clusterIP",
                    family_name(family_of(vips[1]))
                )));
            }
            if let Some(single) = single {
                if single != vips[0] {
                    return Err(at.index(0).invalid(format!(
                        "clusterIPs[0] is {} but clusterIP is {single}: they must be the same address",
                        vips[0]
                    )));
                }
            }
            vips
        }
    };
    if let Some(families) = &spec.ip_families {
        let at = spec_at.key("ipFamilies");
        let written: Vec<&str> = vips.iter().map(|&v| family_name(family_of(v))).collect();
        if families.len() != vips.len() {
            return Err(at.invalid(format!(
                "ipFamilies lists {} families but the Service has {} clusterIP{} ({})",
                families.len(),
                vips.len(),
                if vips.len() == 1 { "" } else { "s" },
                written.join(", ")
            )));
        }
        for (i, (f, &vip)) in families.iter().zip(&vips).enumerate() {
            if f.family() != family_of(vip) {
                return Err(at.index(i).invalid(format!(
                    "ipFamilies[{i}] is {} but clusterIP {vip} is {}",
                    family_name(f.family()),
                    written[i]
                )));
            }
        }
    }
    match (spec.ip_family_policy, vips.len()) {
        (Some(IpFamilyPolicy::SingleStack), 2) => {
            return Err(spec_at
                .key("ipFamilyPolicy")
                .invalid("SingleStack, but the Service has an IPv4 and an IPv6 clusterIP"))
        }
        (Some(IpFamilyPolicy::RequireDualStack), 1) => {
            return Err(spec_at
                .key("ipFamilyPolicy")
                .invalid("RequireDualStack needs an IPv4 and an IPv6 clusterIP (in clusterIPs)"))
        }
        _ => {}
    }

    // Ports.
    let ports_at = spec_at.key("ports");
    if spec.ports.is_empty() {
        return Err(ports_at.invalid("a ClusterIP Service needs at least one port"));
    }
    let mut ports: Vec<PortSpec> = Vec::new();
    for (i, wire) in spec.ports.iter().enumerate() {
        let at = ports_at.index(i);
        let port_name = wire.name.clone().unwrap_or_default().0;
        if port_name.is_empty() && spec.ports.len() > 1 {
            return Err(at.invalid("a Service with several ports names every one of them"));
        }
        let protocol = protocol_or_tcp(wire.protocol);
        for (j, other) in ports.iter().enumerate() {
            if !port_name.is_empty() && other.name == port_name {
                return Err(at
                    .key("name")
                    .invalid(format!("port name `{port_name}` is used twice (first at spec.ports[{j}])")));
            }
            if other.port == wire.port.0 && other.protocol == protocol {
                return Err(at.key("port").invalid(format!(
                    "port {}/{} is listed twice (first at spec.ports[{j}])",
                    wire.port.0,
                    protocol_name(protocol)
                )));
            }
        }
        ports.push(PortSpec {
            name: port_name,
            port: wire.port.0,
            protocol,
            target: wire.target_port.clone(),
        });
    }

    // Affinity.
    let affinity = match (spec.session_affinity, &spec.session_affinity_config) {
        (None | Some(AffinityWire::None), Some(_)) => {
            return Err(spec_at
                .key("sessionAffinityConfig")
                .invalid("sessionAffinityConfig applies only with sessionAffinity: ClientIP"))
        }
        (None | Some(AffinityWire::None), None) => SessionAffinity::None,
        (Some(AffinityWire::ClientIp), config) => SessionAffinity::ClientIp {
            timeout_seconds: config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS, |t| t.0),
        },
    };

    // Algorithm.
    let annotations_at = FieldPath::root().key("metadata").key("annotations");
    let notes = doc.metadata.annotations.as_ref();
    let algorithm = notes.and_then(|a| a.algorithm).unwrap_or(AlgorithmWire::Random);
    let table_size = notes.and_then(|a| a.table_size);
    let (algorithm, algorithm_at) = match (algorithm, table_size) {
        (AlgorithmWire::Random, Some(_)) => {
            return Err(annotations_at.key(MAGLEV_TABLE_SIZE_ANNOTATION).invalid(format!(
                "{MAGLEV_TABLE_SIZE_ANNOTATION} needs `{LB_ALGORITHM_ANNOTATION}: maglev` (the algorithm is random)"
            )))
        }
        (AlgorithmWire::Random, None) => (LbAlgorithm::Random, annotations_at.key(LB_ALGORITHM_ANNOTATION)),
        (AlgorithmWire::Maglev, None) => {
            (LbAlgorithm::Maglev(TableSize::DEFAULT), annotations_at.key(LB_ALGORITHM_ANNOTATION))
        }
        (AlgorithmWire::Maglev, Some(size)) => {
            (LbAlgorithm::Maglev(size.0), annotations_at.key(MAGLEV_TABLE_SIZE_ANNOTATION))
        }
    };

    Ok(Pending {
        index,
        namespace,
        name,
        algorithm,
        algorithm_at,
        affinity,
        vips,
        ports,
        backends: BTreeMap::new(),
        seen: BTreeMap::new(),
    })
}

fn lower_slice(
    doc: &SliceDocument,
    namespace: &str,
    pending: &mut BTreeMap<(String, String), Pending>,
) -> Result<(), Invalid> {
    let meta_at = FieldPath::root().key("metadata");
    let slice_name = format!("{namespace}/{}", doc.metadata.name.0);

    // The Service.
    let label = doc.metadata.labels.iter().flatten().find(|(key, _)| key.key == SERVICE_NAME_LABEL);
    let Some((label_key, service_name)) = label else {
        let at = if doc.metadata.labels.is_some() { meta_at.key("labels") } else { meta_at.clone() };
        return Err(
            at.invalid(format!("an EndpointSlice needs the label {SERVICE_NAME_LABEL} naming its Service"))
        );
    };
    let label_at = meta_at.key("labels").key(&label_key.raw);
    let Some(service) = pending.get_mut(&(namespace.to_owned(), service_name.0.clone())) else {
        return Err(label_at.invalid(format!(
            "no Service `{namespace}/{}` in this file: an EndpointSlice belongs to a Service of its namespace",
            service_name.0
        )));
    };

    // Family.
    let family = doc.address_type.0;
    if !service.vips.iter().any(|&v| family_of(v) == family) {
        return Err(FieldPath::root().key("addressType").invalid(format!(
            "addressType {}, but Service `{}` has no {} clusterIP",
            family_name(family),
            service.key(),
            family_name(family)
        )));
    }

    // Ports: each serves the Service port of its name.
    let mut ports: Vec<(String, u16)> = Vec::new();
    for (i, wire) in doc.ports.iter().enumerate() {
        let at = FieldPath::root().key("ports").index(i);
        let name = wire.name.clone().unwrap_or_default().0;
        let Some(spec) = service.ports.iter().find(|p| p.name == name) else {
            let names: Vec<String> =
                service
                    .ports
                    .iter()
                    .map(|p| {
                        if p.name.is_empty() {
                            "one unnamed port".to_owned()
                        } else {
                            format!("`{}`", p.name)
                        }
                    })
                    .collect();
            let (place, missing) = if name.is_empty() {
                (at, "unnamed port".to_owned())
            } else {
                (at.key("name"), format!("port named `{name}`"))
            };
            return Err(place.invalid(format!(
                "Service `{}` has no {missing} (its ports: {}); a slice port serves the Service port of its name",
                service.key(),
                names.join(", ")
            )));
        };
        let protocol = protocol_or_tcp(wire.protocol);
        if protocol != spec.protocol {
            let (place, default) =
                if wire.protocol.is_some() { (at.key("protocol"), "") } else { (at, " (the default)") };
            return Err(place.invalid(format!(
                "protocol {}{default}, but {} of Service `{}` is {}",
                protocol_name(protocol),
                describe_port(&name),
                service.key(),
                protocol_name(spec.protocol)
            )));
        }
        let target = match spec.target {
            None => Some(spec.port),
            Some(TargetPort::Number(n)) => Some(n),
            Some(TargetPort::Named) => None,
        };
        if let Some(target) = target.filter(|&t| t != wire.port.0) {
            return Err(at.key("port").invalid(format!(
                "port {}, but the targetPort of {} of Service `{}` is {target}",
                wire.port.0,
                describe_port(&name),
                service.key()
            )));
        }
        if ports.iter().any(|(n, _)| *n == name) {
            return Err(at.invalid(format!("{} is listed twice in this EndpointSlice", describe_port(&name))));
        }
        ports.push((name, wire.port.0));
    }
    if ports.is_empty() && !doc.endpoints.is_empty() {
        return Err(FieldPath::root().key("endpoints").invalid(format!(
            "these endpoints serve no port: the EndpointSlice has no ports (each names a port of Service `{}`)",
            service.key()
        )));
    }

    // Weights.
    let weights = doc.metadata.annotations.as_ref().and_then(|a| a.weights.clone()).unwrap_or_default();
    let weights_at = meta_at.key("annotations").key(WEIGHTS_ANNOTATION);
    if !weights.0.is_empty() && service.algorithm == LbAlgorithm::Random {
        return Err(weights_at.invalid(format!(
            "backend weights need `{LB_ALGORITHM_ANNOTATION}: maglev` on Service `{}` (random selection is unweighted)",
            service.key()
        )));
    }

    let first_addresses = || doc.endpoints.iter().filter_map(|e| e.addresses.first().map(|a| a.0));
    if let Some(stray) = weights.0.keys().find(|&&w| !first_addresses().any(|a| a == w)) {
        return Err(
            weights_at.invalid(format!("{stray} is given a weight but is no endpoint of this EndpointSlice"))
        );
    }

    // Endpoints.
    for (i, endpoint) in doc.endpoints.iter().enumerate() {
        let at = FieldPath::root().key("endpoints").index(i);
        let Some(first) = endpoint.addresses.first() else {
            return Err(at.key("addresses").invalid("an endpoint needs at least one address"));
        };
        for (j, addr) in endpoint.addresses.iter().enumerate() {
            if family_of(addr.0) != family {
                return Err(at.key("addresses").index(j).invalid(format!(
                    "{} is not an {} address (the slice's addressType)",
                    addr.0,
                    family_name(family)
                )));
            }
        }
        let address = first.0;
        if service.vips.contains(&address) {
            return Err(at.key("addresses").index(0).invalid(format!(
                "{address} is a clusterIP of Service `{}` itself; a Service cannot be its own backend \
                 (its connections would be balanced back to it)",
                service.key()
            )));
        }
        let weight = weights.0.get(&address).copied().unwrap_or(1);
        let state = BackendState::from_conditions(&endpoint.conditions);
        for (port_name, port) in &ports {
            let here = format!("EndpointSlice `{slice_name}` endpoints[{i}]");
            if let Some(first) = service.seen.insert((address, port_name.clone()), here) {
                return Err(at.key("addresses").index(0).invalid(format!(
                    "{address} already backs {} of Service `{}` (in {first})",
                    describe_port(port_name),
                    service.key()
                )));
            }
            service.backends.entry((family, port_name.clone())).or_default().push(Backend {
                address,
                port: *port,
                state,
                weight,
            });
        }
    }
    Ok(())
}

/// Builds a Service's frontends; checks Maglev's slots per backend.
fn finish(mut p: Pending) -> Result<Service, Located> {
    let mut frontends = Vec::new();
    for &vip in &p.vips {
        for spec in &p.ports {
            let mut backends = p.backends.remove(&(family_of(vip), spec.name.clone())).unwrap_or_default();
            backends.sort();
            frontends.push(Frontend {
                vip,
                port: spec.port,
                protocol: spec.protocol,
                port_name: spec.name.clone(),
                backends,
            });
        }
    }
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
    if let LbAlgorithm::Maglev(size) = p.algorithm {
        for f in &frontends {
            let active = f.active().count() as u64;
            let needed = active * u64::from(MIN_SLOTS_PER_BACKEND);
            if needed > u64::from(size.get()) {
                let prime = (needed..=u64::from(maglev::MAX_TABLE_SIZE))
                    .find(|&n| maglev::is_prime(n as u32))
                    .map_or_else(String::new, |n| format!(" (such as {n})"));
                return Err((
                    p.index,
                    p.algorithm_at.invalid(format!(
                        "{active} active backends for {}: a Maglev table of {size} slots holds at most {} \
                         ({MIN_SLOTS_PER_BACKEND} slots each); set {MAGLEV_TABLE_SIZE_ANNOTATION} to a prime \
                         of at least {needed}{prime}",
                        describe_frontend(f),
                        size.get() / MIN_SLOTS_PER_BACKEND,
                    )),
                ));
            }
        }
    }
    Ok(Service {
        namespace: p.namespace,
        name: p.name,
        algorithm: p.algorithm,
        affinity: p.affinity,
        frontends,
    })
}
