//! `policy.revokeEstablished`: a policy change that now denies an established connection
//! ends it (issue 11, revocation; beyond Cilium, whose established connections survive
//! policy changes, which stays the default).
//!
//! How: the endpoint programs judge a connection once, at its first packet, and let every
//! later packet through on its conntrack entry. So after the new policy's map writes,
//! [`revoke_denied`] walks `ct4` and `ct6`, judges each entry again with the node's
//! compiled policy (the update's [`crate::policy::Resolved`] and [`evaluate_entries`], what the programs
//! read from `policy`) and deletes the entries the new policy denies. The connection's next
//! packet then finds no entry, is judged as a new flow and dropped, in both directions, on
//! the tc path; an accelerated connection's messages already go to that path once its
//! verdict is stale (`socklayer::restamp` leaves denied ones stale). Then
//! [`destroy_sockets`] ends the revoked TCP connections' sockets themselves with the
//! `sock_destroy` iterator ([`crate::codegen::sock_destroy`], the kfunc `bpf_sock_destroy`):
//! both ends' applications see the connection aborted at once instead of a stall.
//!
//! Contract:
//! - An entry is judged from its tracking side: a `ct` key's direction says which end of its
//!   tuple is the local endpoint (egress: the source; ingress: the destination), whose
//!   policy in that direction judges the peer's identity (the ipcache's), the protocol and
//!   the destination port, exactly as the program judged the first packet.
//! - Entries of ICMP and ICMPv6 are kept (their key's ports hold the echo id, not what the
//!   policy judged; they are request/response and short-lived), and so are entries whose
//!   local end is no endpoint of the node (nothing to judge them by).
//! - An entry that disappears meanwhile (LRU eviction, expiry) is not an error.
//! - Sockets are looked for in every network namespace of the machine's processes and in
//!   every named one (`/run/netns`, where `ip netns` and CNI runtimes keep pod namespaces),
//!   by the connection's exact addresses and ports as each end sees them. A kernel without
//!   `bpf_sock_destroy` (before 6.5) makes this step an error the caller reports: the
//!   conntrack entries are gone already, so the connection is ended either way.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::maps::names as map;
use crate::maps::policy::{ct4_key, ct6_key, EGRESS, INGRESS};
use crate::model::{Direction, NodeConfig};
use crate::policy::entry::{evaluate_entries, Verdict};
use crate::sys::{Map, SysError};

/// The maps whose change can change a conntrack entry's verdict: the policy, the
/// endpoints' configuration and identities, and the ipcache.
pub const VERDICT_INPUTS: [&str; 8] = [
    map::POLICY,
    map::POL_TABLE,
    map::EP_CONFIG,
    map::LXC,
    map::IPC_V4_L1,
    map::IPC_V4_L2,
    map::IPC_V4_L3,
    map::IPC_V6,
];

/// One conntrack entry the new policy denies (and [`revoke_denied`] deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The endpoint whose policy denies it, and in which direction.
    pub endpoint: String,
    pub direction: Direction,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Why the walk failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("revoking established connections: {0}")]
    Sys(#[from] SysError),
    #[error("ending revoked connections' sockets: {0}")]
    Destroy(String),
}

/// The decoded tuple of a `ct4`/`ct6` key.
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    dir: u8,
}

fn decode4(k: &[u8]) -> Option<Tuple> {
    let a4 = |at: usize| Some(Ipv4Addr::from(<[u8; 4]>::try_from(k.get(at..at + 4)?).ok()?));
    let port = |at: usize| Some(u16::from_be_bytes(k.get(at..at + 2)?.try_into().ok()?));
    Some(Tuple {
        src: a4(ct4_key::SADDR)?.into(),
        dst: a4(ct4_key::DADDR)?.into(),
        sport: port(ct4_key::SPORT)?,
        dport: port(ct4_key::DPORT)?,
        proto: *k.get(ct4_key::PROTO)?,
        dir: *k.get(ct4_key::DIR)?,
    })
}

fn decode6(k: &[u8]) -> Option<Tuple> {
    let a6 = |at: usize| Some(Ipv6Addr::from(<[u8; 16]>::try_from(k.get(at..at + 16)?).ok()?));
    let port = |at: usize| Some(u16::from_be_bytes(k.get(at..at + 2)?.try_into().ok()?));
    Some(Tuple {
        src: a6(ct6_key::SADDR)?.into(),
        dst: a6(ct6_key::DADDR)?.into(),
        sport: port(ct6_key::SPORT)?,
        dport: port(ct6_key::DPORT)?,
        proto: *k.get(ct6_key::PROTO)?,
        dir: *k.get(ct6_key::DIR)?,
    })
}

/// Delete every `ct4`/`ct6` entry of `maps` that `cfg`'s policy, `resolved` (the one the
/// update's writes were computed from), denies (see the module contract); the deleted
/// ones, in walk order.
pub fn revoke_denied(
    cfg: &NodeConfig,
    resolved: &crate::policy::Resolved,
    maps: &BTreeMap<&'static str, Map>,
) -> Result<Vec<Revoked>, RevokeError> {
    let owner: BTreeMap<IpAddr, &str> =
        cfg.endpoints.iter().flat_map(|e| e.addresses().map(move |a| (a, e.name.as_str()))).collect();
    let mut out = Vec::new();
    for (name, decode) in [(map::CT4, decode4 as fn(&[u8]) -> Option<Tuple>), (map::CT6, decode6)] {
        let Some(ct) = maps.get(name) else { continue };
        let keys: Vec<Vec<u8>> = ct.keys().collect::<Result<_, _>>()?;
        for key in keys {
            let Some(t) = decode(&key) else { continue };
            if matches!(i32::from(t.proto), crate::uapi::IPPROTO_ICMP | crate::uapi::IPPROTO_ICMPV6) {
                continue;
            }
            let (direction, local, peer) = match t.dir {
                EGRESS => (Direction::Egress, t.src, t.dst),
                INGRESS => (Direction::Ingress, t.dst, t.src),
                _ => continue,
            };
            let Some(endpoint) = owner.get(&local) else { continue };
            let Some(policy) = resolved.endpoint(endpoint) else { continue };
            let dir_policy = policy.direction(direction);
            let peer_id = resolved.ipcache().lookup(peer);
            let verdict =
                evaluate_entries(&dir_policy.entries, dir_policy.enforced, peer_id.get(), t.proto, t.dport);
            if verdict == Verdict::Allow {
                continue;
            }
            if !ct.delete(&key)? {
                continue;
            }
            out.push(Revoked {
                endpoint: (*endpoint).to_owned(),
                direction,
                src: t.src,
                dst: t.dst,
                proto: t.proto,
                sport: t.sport,
                dport: t.dport,
            });
        }
    }
    Ok(out)
}

/// End the sockets of the revoked TCP connections (both ends, where they are sockets of
/// this machine) with the `sock_destroy` iterator; how many namespaces were walked. Nothing
/// to do (no TCP connection revoked) walks none.
pub fn destroy_sockets(
    sys: &std::sync::Arc<dyn crate::sys::Syscall>,
    revoked: &[Revoked],
) -> Result<usize, RevokeError> {
    use crate::codegen::sock_destroy;
    use crate::sys::btf::{Btf, Kind};
    use crate::sys::{attach_type, ProgType, UpdateFlags};
    use std::net::SocketAddr;
    use std::os::fd::AsFd;
    let tcp: Vec<&Revoked> =
        revoked.iter().filter(|r| i32::from(r.proto) == crate::uapi::IPPROTO_TCP).collect();
    if tcp.is_empty() {
        return Ok(0);
    }
    let fail = |what: String| RevokeError::Destroy(what);
    let btf = Btf::vmlinux().map_err(|e| fail(e.to_string()))?;
    let offsets = crate::codegen::sockops::IterOffsets::from_btf(&btf).map_err(fail)?;
    let target = btf
        .find(Kind::Func, "bpf_iter_tcp")
        .ok_or_else(|| fail("bpf_iter_tcp not in the kernel's BTF".into()))?;
    let destroy = btf
        .find(Kind::Func, "bpf_sock_destroy")
        .ok_or_else(|| fail("bpf_sock_destroy not in the kernel's BTF (it came in Linux 6.5)".into()))?;
    let def = sock_destroy::revoke_map_def();
    let keys = Map::create(sys, &super::load::sys_spec(&def))?;
    for r in &tcp {
        let (a, b) = (SocketAddr::new(r.src, r.sport), SocketAddr::new(r.dst, r.dport));
        for (local, remote) in [(a, b), (b, a)] {
            keys.update(&crate::maps::sock::sock_key(local, remote), &[1], UpdateFlags::ANY)?;
        }
    }
    let program = sock_destroy::generate(offsets, destroy as i32).map_err(|e| fail(e.to_string()))?;
    let maps = BTreeMap::from([(sock_destroy::REVOKE_MAP, keys)]);
    let prog =
        super::load::load_generated(sys, sock_destroy::NAME, &program, &maps, ProgType::Tracing, |s| {
            crate::sys::ProgSpec {
                attach_btf_id: Some(target),
                ..s.with_attach_type(attach_type::TRACE_ITER)
            }
        })
        .map_err(|e| fail(e.to_string()))?;
    let link =
        crate::sys::link_create(&**sys, &crate::sys::LinkCreate::new(prog.fd(), 0, attach_type::TRACE_ITER))?;
    let namespaces = all_netns();
    for ns in &namespaces {
        super::socklayer::run_iter_in(sys, link.as_fd(), ns).map_err(fail)?;
    }
    Ok(namespaces.len())
}

/// Every distinct network namespace named in `/run/netns` or of a process, open.
fn all_netns() -> Vec<std::fs::File> {
    let dir = |d: &str| std::fs::read_dir(d).into_iter().flatten().flatten();
    let named = dir("/run/netns").map(|e| e.path());
    let processes = dir("/proc")
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .map(|e| e.path().join("ns/net"));
    super::socklayer::distinct_netns(named.chain(processes))
}
