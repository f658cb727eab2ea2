//! Named ports: an endpoint's container ports by name (`Node.spec.endpoints[].ports`), and
//! what `port: <name>` in a policy means.
//!
//! Contract:
//! - An endpoint may list `ports: [{name, port, protocol}]` as a pod lists its container
//!   ports: `name` an IANA service name (1 to 15 lowercase letters, digits and `-`, at least
//!   one letter, no `-` at either end or twice in a row), `port` 1 to 65535, `protocol` TCP
//!   (default), UDP or SCTP. Names are unique per endpoint.
//! - Endpoints with equal labels share one identity and one policy, so they must list the same
//!   named ports (else a named port would mean two numbers in one policy map): refused.
//! - A policy port given by name ([`NamedPortMatch`]) matches a packet whose destination is an
//!   endpoint with a port of that name and protocol, at that port's number (Kubernetes:
//!   "port represents the port on the given protocol. This can either be a numerical or named
//!   port on a pod"). For ingress that endpoint is the policy's subject; for egress the peer,
//!   so a named port never matches a peer outside the node's endpoints. `endPort` with a named
//!   port is refused (the Kubernetes API refuses it; Cilium ignores it).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::de::parse_str_scalar;
use super::endpoint::Endpoint;
use super::locate::{FieldPath, Invalid};
use super::policy::Protocol;
use super::policy_wire::parse_protocol;

/// One named container port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
}

/// A policy's port given by name, for one protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPortMatch {
    pub proto: Protocol,
    pub name: String,
}

impl NamedPortMatch {
    /// Whether this named port of `destination` is protocol `proto`, port `port`.
    pub fn matches(&self, destination: &Endpoint, proto: u8, port: u16) -> bool {
        self.proto.number() == proto && destination.named_port(&self.name, self.proto) == Some(port)
    }
}

/// An IANA service name (Kubernetes' `IsValidPortName`).
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a port name: 1 to 15 lowercase letters, digits and '-', with a letter, \
             no '-' at either end or twice in a row"
        ))
    }
}

/// `Node.spec.endpoints[].ports[]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a container port: a mapping with name, port and protocol")]
pub(crate) struct ContainerPortWire {
    name: PortName,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug)]
struct PortName(String);

impl<'de> Deserialize<'de> for PortName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortName, D::Error> {
        parse_str_scalar(deserializer, "a port name such as http", |name| {
            check_port_name(name).map(|()| PortName(name.to_owned()))
        })
    }
}

/// An endpoint's ports (at `path`, its `ports`), sorted by name.
pub(crate) fn lower_ports(
    wire: &[ContainerPortWire],
    path: &FieldPath,
) -> Result<Vec<ContainerPort>, Invalid> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, p) in wire.iter().enumerate() {
        let at = path.index(i);
        if let Some(first) = seen.insert(&p.name.0, i) {
            return Err(at.key("name").invalid(format!("port name `{}` is also ports[{first}]'s", p.name.0)));
        }
        if p.port == 0 {
            return Err(at.key("port").invalid("port 0 is not a port: ports are 1 to 65535"));
        }
        let proto = match &p.protocol {
            None => Protocol::Tcp,
            Some(text) => match parse_protocol(text, false) {
                Ok(protos) if protos.len() == 1 => protos[0],
                Ok(_) => unreachable!("without ANY a protocol name is one protocol"),
                Err(message) => return Err(at.key("protocol").invalid(message)),
            },
        };
        out.push(ContainerPort { name: p.name.0.clone(), proto, port: p.port });
    }
    out.sort();
    Ok(out)
}

/// Refuses endpoints with equal labels and different named ports (see the module contract);
/// endpoints in file order with their paths.
pub(crate) fn check_shared_identities(endpoints: &[(FieldPath, &Endpoint)]) -> Result<(), Invalid> {
    let mut by_labels: BTreeMap<&super::Labels, &Endpoint> = BTreeMap::new();
    for (path, e) in endpoints {
        match by_labels.get(&e.labels) {
            Some(first) if first.ports != e.ports => {
                return Err(path.key("ports").invalid(format!(
                    "endpoint `{}` has the labels of endpoint `{}` but other named ports: endpoints with \
                     equal labels share one identity and one policy, so their named ports must be equal",
                    e.name, first.name
                )));
            }
            Some(_) => {}
            None => {
                by_labels.insert(&e.labels, e);
            }
        }
    }
    Ok(())
}
