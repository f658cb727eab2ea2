//! The fast path of a cluster change: an endpoint that changed identity is one ipcache word.
//!
//! Contract:
//! - The agent sorts every watch event ([`Changes::note`]) before folding it into the view:
//!   a put of an endpoint record that keeps its address (IPv4) and its node (another node
//!   than this one), whose old and new identities are both known to the view, whose new
//!   identity some endpoint of the view already has, and whose old identity another
//!   endpoint still has, is an *identity change*: the only difference a whole re-apply
//!   would make to the datapath is that address's ipcache entry (the identity table, and
//!   with it every policy entry, depends only on the label sets in use, which did not
//!   change; the tunnel map depends on nodes and prefixes, which did not change). A put
//!   that changes nothing the datapath uses (the endpoint's name) is nothing. Every other
//!   event (nodes, identities, endpoints added, removed or moved, IPv6, this node's own
//!   endpoints, a relist) is *structural*: the daemon re-applies the whole view.
//!   Identity references are not part of the view and are ignored.
//! - [`write_ipcache_v4`] writes identity changes into the pinned ipcache: each address's
//!   /32 leaf word in its level-3 chunk, read and written in place (one chunk write per
//!   chunk touched). An address without its own leaf (covered by a shorter prefix, a
//!   table not the one expected) is refused before anything is written, and the daemon
//!   falls back to the whole re-apply. The level-3 chunks are rewritten with every other
//!   word unchanged, so a lookup racing the write sees the old or the new identity.
//! - [`apply`] is what the daemon runs when the agent's generation moved: take the
//!   changes (after reading the generation, so a change that lands in between is taken
//!   too, and only re-taken harmlessly), and either write them or say the whole view must
//!   be applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use super::etcd::Event;
use super::layout::{self, EndpointRecord};
use super::view::ClusterView;
use super::Agent;
use crate::maps::names;
use crate::maps::policy::IPC_CHILD;
use crate::sys::{self, Syscall};

/// What the view took in since the daemon last took it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Identity changes (module contract): address -> its new identity.
    pub identities: BTreeMap<Ipv4Addr, u32>,
    /// Something else changed: the whole view must be applied.
    pub structural: bool,
}

/// How many endpoints of the view have each identity (kept next to the view).
pub type InUse = BTreeMap<u32, usize>;

/// Counts the view's endpoints per identity.
pub fn in_use(view: &ClusterView) -> InUse {
    let mut n = InUse::new();
    for r in view.endpoints.values() {
        *n.entry(r.identity).or_default() += 1;
    }
    n
}

impl Changes {
    /// Sorts `event` (module contract) against `view` as it is before the event, and keeps
    /// `in_use` in step with the event; `local` is this node's name.
    pub fn note(&mut self, view: &ClusterView, in_use: &mut InUse, local: &str, event: &Event) {
        let kv = match event {
            Event::Put(kv) | Event::Delete(kv) => kv,
        };
        let key = kv.key_str();
        if key.starts_with(layout::IDENTITY_REFS) {
            return;
        }
        let Some(ip) = key.strip_prefix(layout::ENDPOINTS).and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            self.structural = true;
            return;
        };
        let old = view.endpoints.get(&ip);
        let new = match event {
            Event::Put(kv) => serde_json::from_slice::<EndpointRecord>(&kv.value).ok().filter(|r| r.ip == ip),
            Event::Delete(_) => None,
        };
        // Keep the counts whatever the kind of change.
        if let Some(o) = old {
            if let Some(c) = in_use.get_mut(&o.identity) {
                *c = c.saturating_sub(1);
            }
        }
        if let Some(n) = &new {
            *in_use.entry(n.identity).or_default() += 1;
        }
        let (Some(o), Some(n), IpAddr::V4(v4)) = (old, &new, ip) else {
            self.structural = true;
            return;
        };
        if o.node != n.node || n.node == local {
            self.structural = true;
            return;
        }
        if o.identity == n.identity {
            // The name changed: nothing the datapath holds.
            return;
        }
        let known = |id: u32| view.identities.contains_key(&id);
        // Counts after the event: the new identity had another holder, the old keeps one.
        let held = |id: u32| in_use.get(&id).copied().unwrap_or(0);
        if known(o.identity) && known(n.identity) && held(n.identity) >= 2 && held(o.identity) >= 1 {
            self.identities.insert(v4, n.identity);
        } else {
            self.structural = true;
        }
    }
}

/// Why the fast path declined.
#[derive(Debug, thiserror::Error)]
pub enum FastError {
    #[error("{0} has no /32 leaf of its own in the ipcache")]
    NoLeaf(Ipv4Addr),
    #[error("ipcache map {map}: {source}")]
    Map { map: String, source: sys::SysError },
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Writes `changes` into the ipcache pinned under `pin_dir` (module contract); returns
/// the number of level-3 chunks written.
pub fn write_ipcache_v4(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    changes: &BTreeMap<Ipv4Addr, u32>,
) -> Result<usize, FastError> {
    let maps = pin_dir.join("maps");
    let open = |name: &str| {
        sys::Map::from_pin(sys, &maps.join(name))
            .map_err(|source| FastError::Map { map: name.to_owned(), source })
    };
    let lookup = |map: &sys::Map, name: &str, key: u32| -> Result<Vec<u32>, FastError> {
        let v = map
            .lookup(&key.to_le_bytes())
            .map_err(|source| FastError::Map { map: name.to_owned(), source })?;
        Ok(words(&v.unwrap_or_default()))
    };
    let (l1m, l2m, l3m) = (open(names::IPC_V4_L1)?, open(names::IPC_V4_L2)?, open(names::IPC_V4_L3)?);
    let l1 = lookup(&l1m, names::IPC_V4_L1, 0)?;
    let mut l2: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut l3: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    for (&addr, &identity) in changes {
        let a = u32::from(addr);
        let e1 = l1.get((a >> 16) as usize).copied().unwrap_or(0);
        if e1 & IPC_CHILD == 0 {
            return Err(FastError::NoLeaf(addr));
        }
        let c2 = e1 & !IPC_CHILD;
        if let std::collections::btree_map::Entry::Vacant(e) = l2.entry(c2) {
            e.insert(lookup(&l2m, names::IPC_V4_L2, c2)?);
        }
        let e2 = l2[&c2].get(((a >> 8) & 0xff) as usize).copied().unwrap_or(0);
        if e2 & IPC_CHILD == 0 {
            return Err(FastError::NoLeaf(addr));
        }
        let c3 = e2 & !IPC_CHILD;
        let chunk = match l3.entry(c3) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(lookup(&l3m, names::IPC_V4_L3, c3)?),
        };
        let Some(word) = chunk.get_mut((a & 0xff) as usize) else {
            return Err(FastError::NoLeaf(addr));
        };
        if *word != identity {
            *word = identity;
            touched.insert(c3);
        }
    }
    for c3 in &touched {
        l3m.update(&c3.to_le_bytes(), &bytes(&l3[c3]), sys::UpdateFlags::ANY)
            .map_err(|source| FastError::Map { map: names::IPC_V4_L3.to_owned(), source })?;
    }
    Ok(touched.len())
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing the datapath holds changed.
    Nothing,
    /// These many addresses were written, in these many chunks.
    Fast { addresses: usize, chunks: usize },
    /// The whole view must be applied (why).
    Whole(String),
}

/// Takes the agent's changes and writes them if they are identity changes only (module
/// contract). Returns what was done and the generation it covers: the caller records it
/// as applied unless the answer is [`Applied::Whole`].
pub fn apply(agent: &Agent, sys: &Arc<dyn Syscall>, pin_dir: &Path) -> (Applied, u64) {
    let generation = agent.generation();
    let changes = agent.take_changes();
    if changes.structural {
        return (Applied::Whole("a structural change".into()), generation);
    }
    if changes.identities.is_empty() {
        return (Applied::Nothing, generation);
    }
    match write_ipcache_v4(sys, pin_dir, &changes.identities) {
        Ok(chunks) => (Applied::Fast { addresses: changes.identities.len(), chunks }, generation),
        Err(e) => (Applied::Whole(e.to_string()), generation),
    }
}
