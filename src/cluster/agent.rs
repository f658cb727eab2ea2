//! The cluster agent a daemon runs: publish this node, keep its lease, watch the others.
//!
//! Contract:
//! - A session is one lease: granted with the agent's TTL, renewed every third of it. Under
//!   it the agent publishes the node record, one endpoint record per local address and one
//!   identity reference per local label set ([`super::alloc::allocate`]), and removes what it
//!   published before and no longer has. A node that stops renewing (killed, cut off) loses
//!   all of it when the lease expires, and every other node's watch removes it.
//! - The view: a list of everything under [`layout::ROOT`], then a watch from the next
//!   revision. Each change bumps [`Agent::generation`]; the daemon applies the view when the
//!   generation moved. A watch that fell behind compaction relists.
//! - Faults: any etcd error ends the watch (and, when the lease is gone, the session); the
//!   view is kept as it was (so the datapath keeps its last state), the error is in
//!   [`Agent::status`], and the agent retries with back-off from 100 ms doubling to 5 s. When
//!   etcd answers again it relists (the view catches up on what changed meanwhile) and, if
//!   the lease expired meanwhile, starts a new session and publishes again. Identities are
//!   joined, never duplicated: allocation finds a label set's number by its references.
//! - Identity garbage is collected every [`GC_INTERVAL`] by every agent (the work is
//!   idempotent; see [`super::alloc::collect_garbage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::alloc::{self, Garbage};
use super::etcd::{Client, EtcdError, Watch, WatchBatch};
use super::fast::{Changes, InUse};
use super::layout::{self, EndpointRecord, NodeRecord};
use super::view::ClusterView;
use crate::model::{Cidr, Labels, NodeConfig};

/// How often identity garbage is looked for.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// The longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What this node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub node: NodeRecord,
    /// Address -> (labels, name, namespace).
    pub endpoints: BTreeMap<IpAddr, (Labels, String, String)>,
}

impl LocalState {
    /// What `cfg` publishes: its underlay address (`spec.overlay.local`), its endpoints'
    /// addresses as the prefixes routed to it, and its endpoints. `None` without an overlay
    /// (a node nobody can tunnel to has nothing to publish).
    pub fn of(cfg: &NodeConfig) -> Option<LocalState> {
        let overlay = cfg.overlay.as_ref()?;
        let mut prefixes: Vec<Cidr> =
            cfg.endpoints.iter().flat_map(|e| e.addresses()).map(Cidr::host).collect();
        prefixes.sort();
        let endpoints = cfg
            .endpoints
            .iter()
            .flat_map(|e| {
                e.addresses().map(move |a| (a, (e.labels.clone(), e.name.clone(), e.namespace.clone())))
            })
            .collect();
        Some(LocalState {
            node: NodeRecord {
                name: cfg.name.clone(),
                address: overlay.local,
                prefixes,
                public_key: crate::encrypt::published_key(cfg),
            },
            endpoints,
        })
    }
}

/// The agent's health, for `sluice status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The watch is open and the view is current.
    pub connected: bool,
    pub last_error: Option<String>,
    /// Failed steps since start.
    pub errors: u64,
    /// Lists of the whole state (start, reconnects, compaction).
    pub relists: u64,
    /// Sessions (leases) started.
    pub sessions: u64,
    pub lease: i64,
    /// The store revision the view is at.
    pub revision: i64,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    /// Identity numbers this node's label sets got.
    pub allocated: BTreeMap<String, u32>,
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster: {} (revision {}, lease {:x}, {} sessions, {} relists, {} errors); {} nodes, {} endpoints, {} identities",
            if self.connected { "connected" } else { "disconnected, keeping the last state" },
            self.revision,
            self.lease,
            self.sessions,
            self.relists,
            self.errors,
            self.nodes,
            self.endpoints,
            self.identities
        )?;
        if let Some(e) = &self.last_error {
            write!(f, "; last error: {e}")?;
        }
        Ok(())
    }
}

/// One lease and what was published under it.
#[derive(Debug)]
struct Session {
    lease: i64,
    renewed: Instant,
    /// The local state last published, in full.
    published: Option<LocalState>,
    /// Label sets referenced under this lease, with their numbers.
    references: BTreeMap<Labels, u32>,
}

/// The agent: shared by its own thread (`run`) and the daemon.
#[derive(Debug)]
pub struct Agent {
    etcd: Client,
    node: String,
    ttl: i64,
    local: Mutex<Option<LocalState>>,
    view: Mutex<ClusterView>,
    generation: AtomicU64,
    status: Mutex<AgentStatus>,
    /// What changed since the daemon last took it, and the identity counts it is sorted
    /// by (`super::fast`); locked after `view`.
    changes: Mutex<(Changes, InUse)>,
    /// Signalled when the generation moves ([`Agent::wait_generation`]).
    moved: (Mutex<()>, Condvar),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Agent {
    /// An agent for node `node`, whose lease lives `ttl` seconds without renewal.
    pub fn new(etcd: Client, node: &str, ttl: i64) -> Agent {
        Agent {
            etcd,
            node: node.to_owned(),
            ttl: ttl.max(2),
            local: Mutex::new(None),
            view: Mutex::new(ClusterView::default()),
            generation: AtomicU64::new(0),
            status: Mutex::new(AgentStatus::default()),
            changes: Mutex::new((Changes::default(), InUse::new())),
            moved: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Sets what this node publishes (from its node file); published on the agent's next step.
    pub fn set_local(&self, cfg: &NodeConfig) {
        *lock(&self.local) = LocalState::of(cfg);
    }

    /// Changes of the view so far: the daemon re-applies when this moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits until the generation is not `seen` any more, or `timeout` passed; returns it.
    pub fn wait_generation(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let (m, cv) = &self.moved;
        let mut guard = lock(m);
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.generation();
            let left = deadline.saturating_duration_since(Instant::now());
            if now != seen || left.is_zero() {
                return now;
            }
            guard = cv.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn bump(&self) {
        let _guard = lock(&self.moved.0);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.moved.1.notify_all();
    }

    /// The changes since the last call (`super::fast`): identity changes the daemon can
    /// write as they are, or a structural change that needs the whole view applied.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut lock(&self.changes).0)
    }

    /// What the agent's etcd client sent and received so far.
    pub fn counters(&self) -> std::sync::Arc<super::etcd::Counters> {
        self.etcd.counters.clone()
    }

    pub fn view(&self) -> ClusterView {
        lock(&self.view).clone()
    }

    pub fn status(&self) -> AgentStatus {
        lock(&self.status).clone()
    }

    /// Runs until `stop`: sessions, publishing, watching, retrying (module contract).
    pub fn run(&self, stop: &AtomicBool) {
        let mut session: Option<Session> = None;
        let mut watch: Option<Watch> = None;
        let mut garbage = Garbage::default();
        let mut next_gc = Instant::now() + GC_INTERVAL;
        let mut backoff = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            match self.step(&mut session, &mut watch, &mut garbage, &mut next_gc) {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    watch = None;
                    if matches!(e, EtcdError::LeaseGone(_)) {
                        session = None;
                    }
                    {
                        let mut st = lock(&self.status);
                        st.connected = false;
                        st.errors += 1;
                        st.last_error = Some(e.to_string());
                    }
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn step(
        &self,
        session: &mut Option<Session>,
        watch: &mut Option<Watch>,
        garbage: &mut Garbage,
        next_gc: &mut Instant,
    ) -> Result<(), EtcdError> {
        if session.is_none() {
            let lease = self.etcd.lease_grant(self.ttl)?;
            *session = Some(Session {
                lease,
                renewed: Instant::now(),
                published: None,
                references: BTreeMap::new(),
            });
            let mut st = lock(&self.status);
            st.sessions += 1;
            st.lease = lease;
        }
        let s = session.as_mut().expect("set above");
        if s.renewed.elapsed() >= Duration::from_secs(self.ttl as u64) / 3 {
            self.etcd.lease_keepalive(s.lease)?;
            s.renewed = Instant::now();
        }
        // The view first: a first publish learns from it what an earlier run left behind.
        if watch.is_none() {
            // What the view holds, one snapshot (one revision), folded page by page; the
            // identity references (half the keys of a big cluster) are not read: the view
            // does not use them.
            let mut view = ClusterView::default();
            let mut revision = 0;
            for prefix in [layout::NODES, layout::IDENTITY_IDS, layout::ENDPOINTS] {
                revision = self.etcd.list_pages(prefix.as_bytes(), revision, &mut |kvs| {
                    for kv in &kvs {
                        view.put_kv(kv);
                    }
                })?;
            }
            *watch = Some(self.etcd.watch(layout::ROOT.as_bytes(), revision + 1)?);
            self.set_view(view, revision, true);
        }
        let local = lock(&self.local).clone();
        if let Some(local) = local.filter(|l| s.published.as_ref() != Some(l)) {
            self.publish(s, &local)?;
        }
        if Instant::now() >= *next_gc {
            let deleted = alloc::collect_garbage(&self.etcd, garbage)?;
            if !deleted.is_empty() {
                println!("cluster: collected unreferenced identities {deleted:?}");
            }
            *next_gc = Instant::now() + GC_INTERVAL;
        }
        let w = watch.as_mut().expect("opened above");
        match w.next_batch() {
            Ok(WatchBatch::Idle) => Ok(()),
            Ok(WatchBatch::Events { events, revision }) => {
                if !events.is_empty() {
                    // In place: a change costs its events, not a copy of the whole view.
                    let (nodes, endpoints, identities) = {
                        let mut view = lock(&self.view);
                        let mut changes = lock(&self.changes);
                        let (changes, in_use) = &mut *changes;
                        for e in &events {
                            changes.note(&view, in_use, &self.node, e);
                            view.apply_event(e);
                        }
                        (view.nodes.len(), view.endpoints.len(), view.identities.len())
                    };
                    self.bump();
                    let mut st = lock(&self.status);
                    st.revision = revision.max(st.revision);
                    (st.nodes, st.endpoints, st.identities) = (nodes, endpoints, identities);
                }
                Ok(())
            }
            Err(EtcdError::Compacted { compact_revision }) => {
                println!("cluster: watch fell behind compaction (revision {compact_revision}); relisting");
                *watch = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn set_view(&self, view: ClusterView, revision: i64, relisted: bool) {
        let changed = *lock(&self.view) != view;
        {
            let mut st = lock(&self.status);
            st.connected = true;
            st.last_error = None;
            st.revision = revision.max(st.revision);
            st.nodes = view.nodes.len();
            st.endpoints = view.endpoints.len();
            st.identities = view.identities.len();
            if relisted {
                st.relists += 1;
            }
        }
        {
            let mut held = lock(&self.view);
            let mut changes = lock(&self.changes);
            changes.1 = super::fast::in_use(&view);
            changes.0.structural |= changed || relisted;
            *held = view;
        }
        if changed || relisted {
            self.bump();
        }
    }

    /// Publishes `local` under the session's lease and removes what it no longer holds.
    fn publish(&self, s: &mut Session, local: &LocalState) -> Result<(), EtcdError> {
        let lease = s.lease;
        let sets: BTreeSet<&Labels> = local.endpoints.values().map(|(labels, _, _)| labels).collect();
        for labels in &sets {
            if !s.references.contains_key(*labels) {
                let n = alloc::allocate(&self.etcd, labels, &self.node, lease).map_err(|e| match e {
                    alloc::AllocError::Etcd(e) => e,
                    other => EtcdError::Watch(other.to_string()),
                })?;
                s.references.insert((*labels).clone(), n);
                lock(&self.status).allocated.insert(crate::policy::identity::canonical_labels(labels), n);
            }
        }
        let node = serde_json::to_vec(&local.node).expect("a node record serializes");
        self.etcd.put(layout::node_key(&self.node).as_bytes(), &node, lease)?;
        // What this node published before: from this session, or (first publish of a session)
        // from the view just listed, where a previous run of this node may have left records.
        let before: BTreeSet<IpAddr> = match &s.published {
            Some(p) => p.endpoints.keys().copied().collect(),
            None => {
                lock(&self.view).endpoints.values().filter(|r| r.node == self.node).map(|r| r.ip).collect()
            }
        };
        for (ip, (labels, name, namespace)) in &local.endpoints {
            let record = EndpointRecord {
                ip: *ip,
                identity: s.references[labels],
                node: self.node.clone(),
                name: name.clone(),
                namespace: namespace.clone(),
            };
            let unchanged =
                s.published.as_ref().is_some_and(|p| p.endpoints.get(ip) == local.endpoints.get(ip));
            if !unchanged {
                let value = serde_json::to_vec(&record).expect("an endpoint record serializes");
                self.etcd.put(layout::endpoint_key(*ip).as_bytes(), &value, lease)?;
            }
        }
        for ip in before.iter().filter(|ip| !local.endpoints.contains_key(ip)) {
            self.etcd.delete(layout::endpoint_key(*ip).as_bytes(), false)?;
        }
        let stale: Vec<Labels> = s.references.keys().filter(|l| !sets.contains(l)).cloned().collect();
        for labels in stale {
            self.etcd.delete(layout::identity_ref_key(&labels, &self.node).as_bytes(), false)?;
            s.references.remove(&labels);
        }
        s.published = Some(local.clone());
        Ok(())
    }

    /// Revokes the current lease (a clean leave: the others drop this node at once).
    pub fn leave(&self) -> Result<(), EtcdError> {
        let lease = lock(&self.status).lease;
        if lease != 0 {
            self.etcd.lease_revoke(lease)?;
        }
        Ok(())
    }
}
