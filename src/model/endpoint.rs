//! Endpoints: the workloads on this node (`Node.spec.endpoints`), and the node's own addresses
//! (`Node.spec.hostAddresses`).
//!
//! Contract:
//! - An endpoint has a `name` (DNS-1123 label), the host-side `interface` of its veth (a valid
//!   Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:`, whitespace or
//!   non-ASCII), a `namespace` (DNS-1123 label, `default` when absent), an IPv4 and/or an IPv6
//!   unicast address (at least one), and labels.
//! - An interface is not `lo`, `sluice_host`, `sluice_net` or `sluice_vxlan` (the node's own
//!   devices; a configured overlay device is checked in `super::network`).
//! - Names, interfaces and addresses are unique across endpoints; host addresses are unique
//!   and distinct from every endpoint address. Each rejection names the later of the two
//!   places and points back at the first.
//! - [`Endpoint::labels`] is the endpoint's identity label set: the labels written (source
//!   prefix `k8s:` dropped) plus [`NAMESPACE_LABEL`] set to the namespace. Writing that label
//!   directly is rejected (set `namespace`), as is writing one key twice in two spellings.
//! - Scalars (names, interfaces, addresses, label keys and values) are validated while they
//!   are read, so their errors point at the scalar; the cross-endpoint checks run in
//!   [`lower_endpoints`] and are placed by `super::locate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer};

use super::de::parse_str_scalar;
use super::labels::{LabelKey, LabelValue, Labels, NAMESPACE_LABEL};
use super::locate::{FieldPath, Invalid};
use super::named_ports::{check_shared_identities, lower_ports, ContainerPort, ContainerPortWire};
use super::names::check_dns_label;
use super::policy::Protocol;

/// The namespace of endpoints and policies that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The longest interface name Linux accepts (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// A workload on this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Unique among the node's endpoints.
    pub name: String,
    /// Host-side interface of the endpoint's veth pair.
    pub interface: String,
    pub namespace: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Identity labels: the labels written plus `io.kubernetes.pod.namespace` (and the
    /// namespace's labels, `super::namespace`).
    pub labels: Labels,
    /// Named container ports, sorted by name (`super::named_ports`).
    pub ports: Vec<ContainerPort>,
}

impl Endpoint {
    /// The endpoint's addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.map(IpAddr::V4).into_iter().chain(self.ipv6.map(IpAddr::V6))
    }

    /// Whether `addr` is one of the endpoint's addresses.
    pub fn has_address(&self, addr: IpAddr) -> bool {
        self.addresses().any(|a| a == addr)
    }

    /// The number of the port called `name` for `proto`, if the endpoint has it.
    pub fn named_port(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name && p.proto == proto).map(|p| p.port)
    }
}

/// `Node.spec.endpoints[]` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an endpoint: a mapping with name, interface, namespace, ipv4, ipv6, labels and ports"
)]
pub(crate) struct EndpointWire {
    name: Name,
    interface: InterfaceName,
    #[serde(default)]
    namespace: Option<Name>,
    #[serde(default)]
    ipv4: Option<Address<Ipv4Addr>>,
    #[serde(default)]
    ipv6: Option<Address<Ipv6Addr>>,
    #[serde(default)]
    labels: BTreeMap<LabelKey, LabelValue>,
    /// Named container ports.
    #[serde(default)]
    ports: Vec<ContainerPortWire>,
}

/// A DNS-1123 label (an endpoint name or a namespace).
#[derive(Debug, Clone)]
pub(crate) struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        parse_str_scalar(deserializer, "a name", |name| check_dns_label(name).map(|()| Name(name.to_owned())))
    }
}

/// A Linux interface name.
#[derive(Debug)]
pub(crate) struct InterfaceName(pub String);

impl<'de> Deserialize<'de> for InterfaceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<InterfaceName, D::Error> {
        parse_str_scalar(deserializer, "an interface name such as lxc1a2b3c", |name| {
            check_ifname(name).map(|()| InterfaceName(name.to_owned()))
        })
    }
}

/// Why `name` cannot be an endpoint's interface: the endpoint programs attached to it would
/// sit on a device the node itself uses (loopback, the router pair, the default overlay
/// device), breaking the namespace's own traffic. `None` if it can be.
pub(crate) fn reserved_interface(name: &str) -> Option<&'static str> {
    match name {
        "lo" => Some("the loopback device"),
        super::network::ROUTER_HOST_DEVICE | super::network::ROUTER_NET_DEVICE => {
            Some("one of the router pair sluice creates (sluice_host, sluice_net)")
        }
        super::network::DEFAULT_OVERLAY_DEVICE => Some("the overlay device's default name"),
        _ => None,
    }
}

/// Checks a Linux interface name (the kernel's `dev_valid_name`, restricted to ASCII).
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".to_owned());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    if let Some(bad) = name.chars().find(|&c| !c.is_ascii_graphic() || c == '/' || c == ':') {
        return Err(format!(
            "`{name}` contains {bad:?}; an interface name is printable ASCII without '/', ':' or spaces"
        ));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "`{name}` is {} characters long; an interface name has at most {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    Ok(())
}

/// One family's unicast address, written bare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Address<A>(pub A);

/// The address families an [`Address`] can hold.
pub(crate) trait AddressFamily: Sized + Copy + Into<IpAddr> {
    const NAME: &'static str;
    const OTHER_FIELD: &'static str;
    fn from_ip(addr: IpAddr) -> Option<Self>;
}

impl AddressFamily for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const OTHER_FIELD: &'static str = "ipv6";
    fn from_ip(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl AddressFamily for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    const OTHER_FIELD: &'static str = "ipv4";
    fn from_ip(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

impl<'de, A: AddressFamily> Deserialize<'de> for Address<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address<A>, D::Error> {
        parse_str_scalar(deserializer, "an address", |text| {
            let addr = parse_unicast(text)?;
            A::from_ip(addr).map(Address).ok_or_else(|| {
                format!("`{text}` is not an {} address (it belongs under {})", A::NAME, A::OTHER_FIELD)
            })
        })
    }
}

/// A unicast address of either family, written bare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnyAddress(pub IpAddr);

impl<'de> Deserialize<'de> for AnyAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AnyAddress, D::Error> {
        parse_str_scalar(deserializer, "an IPv4 or IPv6 address", |text| parse_unicast(text).map(AnyAddress))
    }
}

pub(crate) fn parse_unicast(text: &str) -> Result<IpAddr, String> {
    if text.contains('/') {
        return Err(format!("`{text}`: write the address without a prefix length"));
    }
    let addr: IpAddr = text.parse().map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address"))?;
    let special = match addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    };
    if special {
        return Err(format!(
            "`{addr}` is not a unicast address (unspecified, loopback, multicast or broadcast)"
        ));
    }
    Ok(addr)
}

/// Lowers `spec.endpoints` and `spec.hostAddresses` (at `spec`): checks uniqueness and builds
/// identity labels. Endpoints come back sorted by name, host addresses sorted.
pub(crate) fn lower_endpoints(
    endpoints: Vec<EndpointWire>,
    host_addresses: &[AnyAddress],
    spec: &FieldPath,
) -> Result<(Vec<Endpoint>, Vec<IpAddr>), Invalid> {
    // Where each name, interface and address was first seen, for "also at" in errors.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut interfaces: BTreeMap<String, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut hosts = Vec::new();
    for (i, host) in host_addresses.iter().enumerate() {
        let here = spec.key("hostAddresses").index(i);
        if let Some(first) = addresses.insert(host.0, format!("spec.hostAddresses[{i}]")) {
            return Err(here.invalid(format!("duplicate address {} (first at {first})", host.0)));
        }
        hosts.push(host.0);
    }
    let mut lowered = Vec::with_capacity(endpoints.len());
    for (i, wire) in endpoints.into_iter().enumerate() {
        let here = spec.key("endpoints").index(i);
        if let Some(first) = names.insert(wire.name.0.clone(), i) {
            return Err(here.key("name").invalid(format!(
                "duplicate endpoint name `{}` (first at spec.endpoints[{first}])",
                wire.name.0
            )));
        }
        if let Some(first) = interfaces.insert(wire.interface.0.clone(), i) {
            return Err(here.key("interface").invalid(format!(
                "interface `{}` already belongs to spec.endpoints[{first}]",
                wire.interface.0
            )));
        }
        if let Some(why) = reserved_interface(&wire.interface.0) {
            return Err(here.key("interface").invalid(format!(
                "`{}` is {why}; an endpoint's interface is the host side of its own veth",
                wire.interface.0
            )));
        }
        if wire.ipv4.is_none() && wire.ipv6.is_none() {
            return Err(here
                .invalid(format!("endpoint `{}` has no address; give it ipv4, ipv6 or both", wire.name.0)));
        }
        let family_addrs =
            [("ipv4", wire.ipv4.map(|a| IpAddr::V4(a.0))), ("ipv6", wire.ipv6.map(|a| IpAddr::V6(a.0)))];
        for (field, addr) in family_addrs {
            let Some(addr) = addr else { continue };
            if let Some(first) = addresses.insert(addr, format!("spec.endpoints[{i}].{field}")) {
                return Err(here.key(field).invalid(format!("duplicate address {addr} (first at {first})")));
            }
        }
        let namespace = wire.namespace.map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.0);
        let mut labels = Labels::new();
        let mut spelled: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in &wire.labels {
            let at = here.key("labels").key(&key.raw);
            if key.key == NAMESPACE_LABEL {
                return Err(at.invalid(format!(
                    "`{}` is derived from the endpoint's namespace; set `namespace` instead",
                    key.raw
                )));
            }
            if let Some(first) = spelled.insert(&key.key, &key.raw) {
                return Err(at.invalid(format!("label `{}` is also written as `{first}`", key.raw)));
            }
            labels.insert(key.key.clone(), value.0.clone());
        }
        labels.insert(NAMESPACE_LABEL.to_owned(), namespace.clone());
        let ports = lower_ports(&wire.ports, &here.key("ports"))?;
        lowered.push(Endpoint {
            name: wire.name.0,
            interface: wire.interface.0,
            namespace,
            ipv4: wire.ipv4.map(|a| a.0),
            ipv6: wire.ipv6.map(|a| a.0),
            labels,
            ports,
        });
    }
    let placed: Vec<(FieldPath, &Endpoint)> =
        lowered.iter().enumerate().map(|(i, e)| (spec.key("endpoints").index(i), e)).collect();
    check_shared_identities(&placed)?;
    lowered.sort_by(|a, b| a.name.cmp(&b.name));
    hosts.sort();
    Ok((lowered, hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["lxc1", "veth-a.b_c", "a", &"x".repeat(15), "eth0@1"] {
            assert_eq!(check_ifname(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "interface name is empty"),
            (".", "`.` is not a valid interface name"),
            ("..", "`..` is not a valid interface name"),
            ("a/b", "`a/b` contains '/'; an interface name is printable ASCII without '/', ':' or spaces"),
            ("a:1", "`a:1` contains ':'; an interface name is printable ASCII without '/', ':' or spaces"),
            ("a b", "`a b` contains ' '; an interface name is printable ASCII without '/', ':' or spaces"),
            ("vé", "`vé` contains 'é'; an interface name is printable ASCII without '/', ':' or spaces"),
            (
                "lxc0123456789abc",
                "`lxc0123456789abc` is 16 characters long; an interface name has at most 15",
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(check_ifname(name), Err(expected.to_owned()), "{name:?}");
        }
    }

    #[test]
    fn unicast_addresses() {
        assert_eq!(parse_unicast("10.0.0.1"), Ok("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_unicast("fd00::1"), Ok("fd00::1".parse().unwrap()));
        for (text, expected) in [
            ("10.0.0.1/32", "`10.0.0.1/32`: write the address without a prefix length"),
            ("10.0.0", "`10.0.0` is not an IPv4 or IPv6 address"),
            ("0.0.0.0", "`0.0.0.0` is not a unicast address (unspecified, loopback, multicast or broadcast)"),
            (
                "127.0.0.1",
                "`127.0.0.1` is not a unicast address (unspecified, loopback, multicast or broadcast)",
            ),
            ("ff02::1", "`ff02::1` is not a unicast address (unspecified, loopback, multicast or broadcast)"),
            (
                "255.255.255.255",
                "`255.255.255.255` is not a unicast address (unspecified, loopback, multicast or broadcast)",
            ),
        ] {
            assert_eq!(parse_unicast(text), Err(expected.to_owned()), "{text}");
        }
    }
}
