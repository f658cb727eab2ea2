//! `policy.revokeEstablished`: a policy change that now denies an established connection
//! ends it (issue 11, revocation; beyond Cilium, whose established connections survive
//! policy changes, which stays the default).
//!
//! How: the endpoint programs judge a connection once, at its first packet, and let every
//! later packet through on its conntrack entry. So after the new policy's map writes,
//! [`revoke_denied`] walks `ct4` and `ct6`, judges each entry again with the node's
//! compiled policy ([`crate::policy::resolve`] and [`evaluate_entries`], what the programs
//! read from `policy`) and deletes the entries the new policy denies. The connection's next
//! packet then finds no entry, is judged as a new flow and dropped, in both directions, on
//! the tc path; an accelerated connection's messages already go to that path once its
//! verdict is stale (`socklayer::restamp` leaves denied ones stale). What the endpoints'
//! sockets see is a stalled connection (no data, retransmissions) until their own timeouts.
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
    Policy(#[from] crate::policy::PolicyError),
    #[error("revoking established connections: {0}")]
    Sys(#[from] SysError),
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

/// Delete every `ct4`/`ct6` entry of `maps` that `cfg`'s policy denies (see the module
/// contract); the deleted ones, in walk order.
pub fn revoke_denied(
    cfg: &NodeConfig,
    maps: &BTreeMap<&'static str, Map>,
) -> Result<Vec<Revoked>, RevokeError> {
    let resolved = crate::policy::resolve(cfg)?;
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
