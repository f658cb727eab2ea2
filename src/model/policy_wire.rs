//! Wire pieces shared by the two policy documents (`cnp`, `knp`), and their lowering.
//!
//! Contract:
//! - Scalars are validated while they are read (`parse_str_scalar`), so their errors point at
//!   the scalar: ports ([`PortNumber`], a number or a string of digits, 0 to 65535; or
//!   [`PortSpec`], such a number or a port name), ICMP types (0 to 255, or Cilium's names),
//!   protocols, entities.
//! - Everything that needs more than one scalar is checked by the `lower_*` functions, which
//!   return an [`Invalid`] at the offending field's path (placed later by `super::locate`).
//! - Namespace scoping, as in Cilium: a policy's subject selector always gets
//!   `io.kubernetes.pod.namespace = <policy namespace>` (a requirement on that label that
//!   excludes the policy's namespace is rejected: a namespaced policy cannot select endpoints
//!   elsewhere); a peer selector gets it only when it has no requirement on that label. A
//!   cluster-wide policy has the empty namespace: its subject selector is taken as written,
//!   and a peer selector without a namespace requirement gets `Exists` on that label.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::cidr::Cidr;
use super::de::parse_str_scalar;
use super::endpoint::{Name, DEFAULT_NAMESPACE};
use super::labels::{LabelKey, LabelValue, Labels, Operator, Requirement, Selector, NAMESPACE_LABEL};
use super::locate::{FieldPath, Invalid};
use super::named_ports::{check_port_name, NamedPortMatch};
use super::names::check_dns_subdomain;
use super::policy::{CidrRule, Entity, PortMatch, Protocol};

/// `metadata` of a policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "object metadata: a mapping with name and namespace")]
pub(crate) struct ObjectMeta {
    pub name: ObjectName,
    #[serde(default)]
    pub namespace: Option<Name>,
    /// Accepted (manifests carry them) and not used.
    #[serde(default)]
    #[allow(dead_code)]
    pub labels: Option<BTreeMap<LabelKey, LabelValue>>,
    #[serde(default)]
    #[allow(dead_code)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ObjectMeta {
    pub(crate) fn namespace(&self) -> String {
        self.namespace.as_ref().map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.0.clone())
    }
}

/// A Kubernetes object name: a DNS-1123 subdomain.
#[derive(Debug)]
pub(crate) struct ObjectName(pub String);

impl<'de> Deserialize<'de> for ObjectName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ObjectName, D::Error> {
        parse_str_scalar(deserializer, "an object name", |name| {
            check_dns_subdomain(name).map(|()| ObjectName(name.to_owned()))
        })
    }
}

/// A Kubernetes label selector.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a label selector: a mapping with matchLabels and matchExpressions"
)]
pub(crate) struct SelectorWire {
    #[serde(default)]
    pub match_labels: BTreeMap<LabelKey, LabelValue>,
    #[serde(default)]
    pub match_expressions: Vec<ExpressionWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a selector expression: a mapping with key, operator and values")]
pub(crate) struct ExpressionWire {
    pub key: LabelKey,
    pub operator: OperatorWire,
    #[serde(default)]
    pub values: Option<Vec<LabelValue>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) enum OperatorWire {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// The requirements of a selector at `path`, each with the path of what spelled it.
pub(crate) fn lower_requirements(
    wire: &SelectorWire,
    path: &FieldPath,
) -> Result<Vec<(Requirement, FieldPath)>, Invalid> {
    let mut out = Vec::new();
    for (key, value) in &wire.match_labels {
        out.push((Requirement::equals(&key.key, &value.0), path.key("matchLabels").key(&key.raw)));
    }
    for (i, expr) in wire.match_expressions.iter().enumerate() {
        let at = path.key("matchExpressions").index(i);
        let values: Vec<String> = expr.values.iter().flatten().map(|v| v.0.clone()).collect();
        let op = match expr.operator {
            OperatorWire::In | OperatorWire::NotIn if values.is_empty() => {
                return Err(at.invalid(format!("operator {:?} needs at least one value", expr.operator)));
            }
            OperatorWire::Exists | OperatorWire::DoesNotExist if !values.is_empty() => {
                return Err(at
                    .key("values")
                    .invalid(format!("operator {:?} takes no values", expr.operator)));
            }
            OperatorWire::In => Operator::In(values),
            OperatorWire::NotIn => Operator::NotIn(values),
            OperatorWire::Exists => Operator::Exists,
            OperatorWire::DoesNotExist => Operator::DoesNotExist,
        };
        out.push((Requirement { key: expr.key.key.clone(), op }, at));
    }
    Ok(out)
}

/// A policy's subject selector, scoped to `namespace`.
pub(crate) fn lower_subject(
    wire: &SelectorWire,
    path: &FieldPath,
    namespace: &str,
) -> Result<Selector, Invalid> {
    let requirements = lower_requirements(wire, path)?;
    if namespace.is_empty() {
        // A cluster-wide policy: its subjects are in any namespace.
        return Ok(Selector::new(requirements.into_iter().map(|(r, _)| r)));
    }
    let own: Labels = [(NAMESPACE_LABEL.to_owned(), namespace.to_owned())].into();
    for (r, at) in &requirements {
        if r.key == NAMESPACE_LABEL && !r.matches(&own) {
            return Err(at.invalid(format!(
                "this requirement excludes namespace `{namespace}`: a policy in namespace \
                 `{namespace}` applies only to endpoints of that namespace"
            )));
        }
    }
    let scope = Requirement::equals(NAMESPACE_LABEL, namespace);
    Ok(Selector::new(requirements.into_iter().map(|(r, _)| r).chain([scope])))
}

/// A peer endpoint selector, scoped to `namespace` unless it constrains the namespace label.
pub(crate) fn lower_peer_selector(
    wire: &SelectorWire,
    path: &FieldPath,
    namespace: &str,
) -> Result<Selector, Invalid> {
    let selector = Selector::new(lower_requirements(wire, path)?.into_iter().map(|(r, _)| r));
    Ok(if selector.constrains(NAMESPACE_LABEL) {
        selector
    } else if namespace.is_empty() {
        // A cluster-wide policy: endpoints of any namespace (Cilium: "we add a selector to
        // only match endpoints that contains a namespace label").
        selector.and(Requirement { key: NAMESPACE_LABEL.to_owned(), op: Operator::Exists })
    } else {
        selector.and(Requirement::equals(NAMESPACE_LABEL, namespace))
    })
}

/// `cidr` minus `except` (at `path`, the mapping holding both): each except inside `cidr`.
pub(crate) fn lower_cidr_rule(cidr: Cidr, except: &[Cidr], path: &FieldPath) -> Result<CidrRule, Invalid> {
    for (i, e) in except.iter().enumerate() {
        if !cidr.contains_cidr(e) {
            return Err(path.key("except").index(i).invalid(format!("{e} is not inside {cidr}")));
        }
    }
    let mut except = except.to_vec();
    except.sort();
    except.dedup();
    Ok(CidrRule { cidr, except })
}

/// How a policy kind reads `port: 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortZero {
    /// Cilium: port 0 is a wildcard, every port (its validation accepts `0` and its L4
    /// policy treats the zero port as any port).
    EveryPort,
    /// Kubernetes: ports are 1 to 65535.
    Rejected,
}

/// A port range from `port` and `endPort` (at `path`, the mapping holding both); every port
/// when neither is given.
pub(crate) fn lower_port_range(
    port: Option<PortNumber>,
    end_port: Option<PortNumber>,
    path: &FieldPath,
    zero: PortZero,
) -> Result<(u16, u16), Invalid> {
    match (port, end_port) {
        (Some(PortNumber(0)), end) => match (zero, end) {
            (PortZero::Rejected, _) => {
                Err(path.key("port").invalid("port 0 is not a port; leave port out to match every port"))
            }
            (PortZero::EveryPort, None) => Ok((0, u16::MAX)),
            (PortZero::EveryPort, Some(_)) => Err(path
                .key("endPort")
                .invalid("port 0 means every port, so an endPort has nothing to close; leave it out")),
        },
        (None, None) => Ok((0, u16::MAX)),
        (Some(p), None) => Ok((p.0, p.0)),
        (Some(p), Some(e)) if e.0 < p.0 => {
            Err(path.key("endPort").invalid(format!("endPort {} is below port {}", e.0, p.0)))
        }
        (Some(p), Some(e)) => Ok((p.0, e.0)),
        (None, Some(_)) => {
            Err(path.key("endPort").invalid("endPort needs a port: the range is port to endPort"))
        }
    }
}

/// A policy's `port`: a number, or a named port of the destination endpoint
/// (`super::named_ports`), held lowercase (Cilium compares names case-insensitively).
#[derive(Debug, Clone)]
pub(crate) enum PortSpec {
    Number(PortNumber),
    Name(String),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortSpec, D::Error> {
        parse_str_scalar(deserializer, "a port number or name", |text| {
            if text.bytes().any(|b| b.is_ascii_alphabetic()) {
                let name = text.to_ascii_lowercase();
                check_port_name(&name).map(|()| PortSpec::Name(name))
            } else {
                PortNumber::parse(text).map(PortSpec::Number)
            }
        })
    }
}

/// The matches of one `{port, endPort}` for `protocols` (at `path`, the mapping holding
/// both): numbered ranges, or named ports.
pub(crate) fn lower_port_spec(
    port: &Option<PortSpec>,
    end_port: Option<PortNumber>,
    path: &FieldPath,
    zero: PortZero,
    protocols: &[Protocol],
) -> Result<(Vec<PortMatch>, Vec<NamedPortMatch>), Invalid> {
    match port {
        Some(PortSpec::Name(name)) => {
            if end_port.is_some() {
                return Err(path.key("endPort").invalid(format!(
                    "endPort cannot close a range that starts at a named port (`{name}`); name the \
                     port by number for a range"
                )));
            }
            let named = protocols.iter().map(|&proto| NamedPortMatch { proto, name: name.clone() }).collect();
            Ok((Vec::new(), named))
        }
        Some(PortSpec::Number(number)) => {
            Ok((port_matches(protocols, lower_port_range(Some(*number), end_port, path, zero)?), Vec::new()))
        }
        None => Ok((port_matches(protocols, lower_port_range(None, end_port, path, zero)?), Vec::new())),
    }
}

/// Port matches for `protocols` over `first..=last`.
pub(crate) fn port_matches(protocols: &[Protocol], (first, last): (u16, u16)) -> Vec<PortMatch> {
    protocols.iter().map(|&proto| PortMatch { proto, first, last }).collect()
}

/// A port: a number or a string of decimal digits, 0 to 65535 (what 0 means is the policy
/// kind's: see [`PortZero`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortNumber(pub u16);

impl PortNumber {
    fn parse(text: &str) -> Result<PortNumber, String> {
        let number = parse_decimal(text).ok_or_else(|| format!("`{text}` is not a port number"))?;
        u16::try_from(number).map(PortNumber).map_err(|_| format!("port {text} is out of range 0-65535"))
    }
}

impl<'de> Deserialize<'de> for PortNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortNumber, D::Error> {
        parse_str_scalar(deserializer, "a port number", PortNumber::parse)
    }
}

/// An ICMP or ICMPv6 type: a number or a string of decimal digits, 0 to 255, or one of
/// Cilium's CamelCase type names, which mean a number per family ([`IcmpType::number`]).
#[derive(Debug, Clone)]
pub(crate) enum IcmpType {
    Number(u8),
    Name(String),
}

/// Cilium's ICMPv4 type names (`pkg/policy/api/icmp.go`, `icmpIpv4TypeNameToCode`).
const ICMP4_NAMES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's ICMPv6 type names (`icmpIpv6TypeNameToCode`).
const ICMP6_NAMES: [(&str, u8); 27] = [
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

impl IcmpType {
    /// The type number in `family`; a name must be one of that family's (as Cilium checks).
    pub(crate) fn number(&self, family: IcmpFamily) -> Result<u8, String> {
        match self {
            IcmpType::Number(n) => Ok(*n),
            IcmpType::Name(name) => {
                let (names, family_name): (&[(&str, u8)], _) = match family {
                    IcmpFamily::IPv4 => (&ICMP4_NAMES, "IPv4"),
                    IcmpFamily::IPv6 => (&ICMP6_NAMES, "IPv6"),
                };
                names.iter().find(|(n, _)| n == name).map(|(_, number)| *number).ok_or_else(|| {
                    format!(
                        "`{name}` is not an {family_name} ICMP type name (Cilium's names, e.g. EchoRequest); \
                         write the type number or a name of family {family_name}"
                    )
                })
            }
        }
    }
}

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IcmpType, D::Error> {
        parse_str_scalar(deserializer, "an ICMP type number or name", |text| {
            if text.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) {
                // Checked against the family's names when the field is lowered.
                return Ok(IcmpType::Name(text.to_owned()));
            }
            let number = parse_decimal(text).ok_or_else(|| format!("`{text}` is not an ICMP type number"))?;
            u8::try_from(number)
                .map(IcmpType::Number)
                .map_err(|_| format!("ICMP type {text} is out of range 0-255"))
        })
    }
}

/// Decimal digits, without sign, as a number (saturating far past any port).
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

/// An entity name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntityWire(pub Entity);

impl<'de> Deserialize<'de> for EntityWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EntityWire, D::Error> {
        parse_str_scalar(deserializer, "an entity such as world", |name| {
            Entity::ALL.into_iter().find(|e| e.name() == name).map(EntityWire).ok_or_else(|| {
                let supported: Vec<&str> = Entity::ALL.iter().map(|e| e.name()).collect();
                format!("entity `{name}` is not supported; supported entities are {}", supported.join(", "))
            })
        })
    }
}

/// `ICMPv4`/`ICMPv6` family of an ICMP field.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) enum IcmpFamily {
    #[default]
    IPv4,
    IPv6,
}

impl IcmpFamily {
    pub(crate) fn protocol(self) -> Protocol {
        match self {
            IcmpFamily::IPv4 => Protocol::Icmp,
            IcmpFamily::IPv6 => Protocol::IcmpV6,
        }
    }
}

/// A protocol name as a policy writes it: one of `allowed`, or `ANY` where allowed; the
/// result is the protocols it stands for.
pub(crate) fn parse_protocol(name: &str, any_allowed: bool) -> Result<Vec<Protocol>, String> {
    Ok(match name {
        "TCP" => vec![Protocol::Tcp],
        "UDP" => vec![Protocol::Udp],
        "SCTP" => vec![Protocol::Sctp],
        "ANY" if any_allowed => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        "ICMP" | "ICMPv6" | "ICMPV6" if any_allowed => {
            return Err(format!("protocol {name} is matched with icmps, not toPorts"));
        }
        _ if any_allowed => return Err(format!("unknown protocol `{name}`; expected TCP, UDP, SCTP or ANY")),
        _ => return Err(format!("unknown protocol `{name}`; expected TCP, UDP or SCTP")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(text: &str) -> Result<u16, String> {
        serde_norway::from_str::<PortNumber>(text).map(|p| p.0).map_err(|e| e.to_string())
    }

    #[test]
    fn ports_are_numbers_or_digit_strings() {
        assert_eq!(port("80"), Ok(80));
        assert_eq!(port("'80'"), Ok(80));
        assert_eq!(port("0"), Ok(0));
        assert_eq!(port("\"65535\""), Ok(65535));
        for (text, expected) in [
            ("65536", "port 65536 is out of range 0-65535"),
            ("99999999999999999999999", "port 99999999999999999999999 is out of range 0-65535"),
            ("http", "`http` is not a port number"),
            ("-1", "`-1` is not a port number"),
            ("8.5", "`8.5` is not a port number"),
        ] {
            assert_eq!(port(text), Err(expected.to_owned()), "{text}");
        }
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol("ANY", true), Ok(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]));
        assert_eq!(parse_protocol("UDP", false), Ok(vec![Protocol::Udp]));
        assert_eq!(
            parse_protocol("ANY", false),
            Err("unknown protocol `ANY`; expected TCP, UDP or SCTP".into())
        );
        assert_eq!(
            parse_protocol("tcp", true),
            Err("unknown protocol `tcp`; expected TCP, UDP, SCTP or ANY".into())
        );
    }
}
