//! The cluster part (`sluice bench --parts cluster`): one node's agent against a synthetic
//! cluster in a real etcd.
//!
//! What it does, in one run:
//! - Starts a throwaway etcd ([`sluice::cluster::server`]) and writes a synthetic cluster
//!   with the agents' own record encodings: [`NODES`] nodes (a /24 of pods each) x
//!   [`ENDPOINTS_PER_NODE`] endpoints, spread over [`LABEL_SETS`] label sets (identity
//!   master keys plus one reference per node and set), in transactions of at most etcd's
//!   default 128 operations.
//! - Converge: starts one [`Agent`] for a local node and times start -> the view holding
//!   every node and endpoint (list + watch open), then the pure rest of an apply for that
//!   view: [`ClusterView::apply`] into the node's config, policy resolution, and the plan
//!   (every map's contents, ipcache and tunnel entries included). Writing the maps into the
//!   kernel is not included (the attach part measures loads).
//! - Propagation: [`CHANGES`] single-endpoint puts (an endpoint moving identity), each timed
//!   from just before the put (the writer's request, etcd's commit) to the agent's view
//!   changing (watch delivery), p50/p99. A
//!   daemon then re-applies the whole view: its cost is the converge row "apply + resolve +
//!   plan", reported next to it, since the daemon does that per change today.
//! - Memory: this process's VmRSS before the agent starts and once converged (the agent
//!   runs in-process; the generator's own data is freed before the first reading).
//! - etcd traffic per change: requests and bytes the agent's client received during the
//!   propagation phase divided by the changes, and the writer's bytes per put.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::cluster::etcd::{Client, Op};
use sluice::cluster::layout::{self, EndpointRecord, NodeRecord};
use sluice::cluster::server::EtcdServer;
use sluice::cluster::{Agent, ClusterView};
use sluice::model::{Cidr, Labels};
use sluice::policy::identity::{canonical_labels, label_set_slot};

pub const NODES: usize = 1_000;
pub const ENDPOINTS_PER_NODE: usize = 100;
pub const LABEL_SETS: usize = 2_000;
pub const CHANGES: usize = 200;
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterResult {
    pub nodes: usize,
    pub endpoints: usize,
    pub label_sets: usize,
    pub keys: usize,
    pub write: Duration,
    pub etcd_version: String,
    /// Agent start -> view complete (list of everything + watch opened).
    pub list: Duration,
    pub apply: Duration,
    pub resolve: Duration,
    pub plan: Result<Duration, String>,
    /// The plan's maps created, filled and pinned with its programs (root only).
    pub load: Result<Duration, String>,
    pub ipcache_entries: usize,
    pub propagation_p50: Duration,
    pub propagation_p99: Duration,
    pub propagation_max: Duration,
    /// etcd put -> the ipcache word written by the daemon's fast path
    /// ([`sluice::cluster::fast::apply`]) into the loaded maps: p50, p99, max (root only).
    pub map_update: Option<(Duration, Duration, Duration)>,
    /// Changes the fast path declined (the daemon would re-apply the whole view).
    pub fallbacks: usize,
    /// Changes that kept the endpoint's identity (nothing to write).
    pub unchanged: usize,
    /// Changes timed.
    pub changes: usize,
    pub rss_before_kib: u64,
    pub rss_converged_kib: u64,
    /// The peak RSS from the agent's start to converged (VmHWM, reset before the start).
    pub rss_peak_kib: u64,
    pub agent_requests_per_change: f64,
    pub agent_bytes_per_change: f64,
    pub put_bytes: usize,
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn labels_of(set: usize) -> Labels {
    [("app", format!("app-{set}")), ("io.kubernetes.pod.namespace", "default".to_owned())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// Node n's pod prefix (10.x.y.0/24, n from 1) and underlay address.
fn node_net(n: usize) -> (Ipv4Addr, Ipv4Addr) {
    let (hi, lo) = ((n >> 8) as u8, (n & 0xff) as u8);
    (Ipv4Addr::new(10, hi, lo, 0), Ipv4Addr::new(172, 16 + hi, lo, 1))
}

fn put(key: String, value: Vec<u8>, lease: i64) -> Op {
    Op::Put { key: key.into_bytes(), value, lease }
}

/// Writes the synthetic cluster; returns the number of keys and each label set's identity.
fn generate(etcd: &Client, nodes: usize, per_node: usize, sets: usize) -> Result<(usize, Vec<u32>), String> {
    let mut ops: Vec<Op> = Vec::new();
    // Identities: the slot order single-file mode uses, probing on collision.
    let mut taken = std::collections::BTreeSet::new();
    let mut ids = Vec::with_capacity(sets);
    for set in 0..sets {
        let labels = labels_of(set);
        let mut n = label_set_slot(&labels);
        while !taken.insert(n) {
            n = if n == 65535 { 256 } else { n + 1 };
        }
        ids.push(n);
        ops.push(put(layout::identity_key(n), canonical_labels(&labels).into_bytes(), 0));
    }
    let lease = etcd.lease_grant(3600).map_err(|e| e.to_string())?;
    for node in 1..=nodes {
        let name = format!("node-{node}");
        let (prefix, address) = node_net(node);
        let record = NodeRecord {
            name: name.clone(),
            address,
            prefixes: vec![Cidr::new(IpAddr::V4(prefix), 24).map_err(|e| e.to_string())?],
            public_key: None,
        };
        ops.push(put(
            layout::node_key(&name),
            serde_json::to_vec(&record).map_err(|e| e.to_string())?,
            lease,
        ));
        let mut referenced = std::collections::BTreeSet::new();
        for ep in 0..per_node {
            let set = (node * per_node + ep) % sets;
            let o = prefix.octets();
            let ip = IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], ep as u8 + 1));
            let record = EndpointRecord {
                ip,
                identity: ids[set],
                node: name.clone(),
                name: format!("pod-{ep}"),
                namespace: "default".into(),
            };
            ops.push(put(
                layout::endpoint_key(ip),
                serde_json::to_vec(&record).map_err(|e| e.to_string())?,
                lease,
            ));
            if referenced.insert(set) {
                ops.push(put(
                    layout::identity_ref_key(&labels_of(set), &name),
                    ids[set].to_string().into_bytes(),
                    lease,
                ));
            }
        }
    }
    let keys = ops.len();
    for batch in ops.chunks(TXN_OPS) {
        let done = etcd.txn(&[], batch, &[]).map_err(|e| e.to_string())?;
        if !done.succeeded {
            return Err("a compare-free transaction did not succeed".into());
        }
    }
    Ok((keys, ids))
}

/// The local node of the run: one endpoint, an overlay, and one rule selecting by labels.
fn local_node() -> sluice::model::NodeConfig {
    let text = "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: bench-local}\nspec:\n  \
                overlay: {local: 172.31.255.1}\n  endpoints:\n    \
                - {name: web, interface: lxc-web, ipv4: 10.250.0.5, labels: {app: web}}\n---\n\
                apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web}\nspec:\n  \
                endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    \
                - fromEndpoints: [{matchLabels: {app: app-7}}]\n    - fromEntities: [cluster]\n      \
                toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n";
    sluice::model::parse_str(text, "bench-local.yaml").expect("the bench's local node parses")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the part with the given sizes (the defaults are [`NODES`], [`ENDPOINTS_PER_NODE`],
/// [`LABEL_SETS`], [`CHANGES`]).
pub fn measure_sized(
    nodes: usize,
    per_node: usize,
    sets: usize,
    changes: usize,
) -> Result<ClusterResult, String> {
    let server = EtcdServer::start("bench")?;
    let etcd = server.client();
    let etcd_version = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_default();
    let t = Instant::now();
    let (keys, ids) = generate(&etcd, nodes, per_node, sets)?;
    let write = t.elapsed();

    let rss_before_kib = rss_kib();
    // Peak from here on (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let local = local_node();
    let agent = Arc::new(Agent::new(server.client(), &local.name, 60));
    agent.set_local(&local);
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let runner = {
        let (agent, stop) = (agent.clone(), stop.clone());
        std::thread::spawn(move || agent.run(&stop))
    };
    let want_endpoints = nodes * per_node + 1;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let st = agent.status();
        if st.nodes > nodes && st.endpoints >= want_endpoints {
            break;
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("the agent did not converge within 600 s: {st}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let list = t.elapsed();
    let view: ClusterView = agent.view();
    let mut cfg = local.clone();
    let t = Instant::now();
    let notes = view.apply(&mut cfg);
    let apply = t.elapsed();
    if !notes.is_empty() {
        return Err(format!("the view left out {} things, first: {}", notes.len(), notes[0]));
    }
    let t = Instant::now();
    let resolved = sluice::policy::resolve(&cfg).map_err(|e| e.to_string())?;
    let resolve = t.elapsed();
    let ipcache_entries = resolved.ipcache().len();
    let t = Instant::now();
    let planned = sluice::node::plan(&cfg).map(|p| (p, t.elapsed())).map_err(|e| e.to_string());
    let plan = planned.as_ref().map(|(_, d)| *d).map_err(Clone::clone);
    drop(view);
    // The kernel part of converging (root): what the daemon's start does with the plan.
    let sys = sluice::sys::kernel();
    let pins = Pins(
        std::path::PathBuf::from(sluice::sys::DEFAULT_BPFFS)
            .join(format!("sluice-bench-cluster-{}", std::process::id())),
    );
    let load = match (&planned, sluice::sys::kernel_available()) {
        (Ok((p, _)), Ok(())) => {
            let t = Instant::now();
            sluice::node::load::load_and_pin(&sys, p, &pins.0).map(|_| t.elapsed()).map_err(|e| e.to_string())
        }
        (Err(e), _) => Err(format!("no plan: {e}")),
        (_, Err(why)) => Err(format!("not measured: {why}")),
    };
    drop(planned);
    let rss_converged_kib = rss_kib();
    let rss_peak_kib = status_kib("VmHWM:");

    // Propagation: one endpoint changes identity per step.
    let counters = agent_counters(&agent);
    let (req0, bytes0) = counters;
    let mut lat = Vec::with_capacity(changes);
    let mut map_lat = Vec::with_capacity(changes);
    let mut fallbacks = 0;
    let mut unchanged = 0;
    let loaded = load.is_ok();
    // The changes the view took in while converging are not the ones timed.
    let _ = agent.take_changes();
    let mut put_bytes = 0;
    for i in 0..changes {
        let node = 1 + (i * 7919) % nodes;
        let (prefix, _) = node_net(node);
        let o = prefix.octets();
        let ip = IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], (i % per_node) as u8 + 1));
        let record = EndpointRecord {
            ip,
            identity: ids[i % sets],
            node: format!("node-{node}"),
            name: format!("moved-{i}"),
            namespace: "default".into(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        put_bytes = value.len() + layout::endpoint_key(ip).len();
        let before = agent.generation();
        let t = Instant::now();
        etcd.put(layout::endpoint_key(ip).as_bytes(), &value, 0).map_err(|e| e.to_string())?;
        while agent.wait_generation(before, Duration::from_millis(100)) == before {
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!("change {i} not seen within 30 s"));
            }
        }
        lat.push(t.elapsed());
        if loaded {
            // What the daemon's poller does when the generation moves.
            match sluice::cluster::fast::apply(&agent, &sys, &pins.0).0 {
                sluice::cluster::fast::Applied::Fast { .. } => map_lat.push(t.elapsed()),
                sluice::cluster::fast::Applied::Nothing => unchanged += 1,
                sluice::cluster::fast::Applied::Whole(_) => fallbacks += 1,
            }
        }
    }
    let (req1, bytes1) = agent_counters(&agent);
    stop.store(true, Ordering::Relaxed);
    let _ = runner.join();
    lat.sort();
    map_lat.sort();
    let map_update = (!map_lat.is_empty()).then(|| {
        (percentile(&map_lat, 0.5), percentile(&map_lat, 0.99), map_lat.last().copied().unwrap_or_default())
    });
    Ok(ClusterResult {
        nodes,
        endpoints: nodes * per_node,
        label_sets: sets,
        keys,
        write,
        etcd_version,
        list,
        apply,
        resolve,
        plan,
        load,
        ipcache_entries,
        propagation_p50: percentile(&lat, 0.5),
        propagation_p99: percentile(&lat, 0.99),
        propagation_max: lat.last().copied().unwrap_or_default(),
        map_update,
        fallbacks,
        unchanged,
        changes,
        rss_before_kib,
        rss_converged_kib,
        rss_peak_kib,
        agent_requests_per_change: (req1 - req0) as f64 / changes.max(1) as f64,
        agent_bytes_per_change: (bytes1 - bytes0) as f64 / changes.max(1) as f64,
        put_bytes,
    })
}

fn map_lat_len(r: &ClusterResult) -> usize {
    r.changes - r.fallbacks - r.unchanged
}

/// A bench pin directory, removed (with the maps and programs in it) on drop.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = sluice::node::load::unload(&sluice::sys::kernel(), &self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn agent_counters(agent: &Agent) -> (u64, u64) {
    let c = agent.counters();
    (c.requests.load(Ordering::Relaxed), c.bytes_received.load(Ordering::Relaxed))
}

/// Runs the part at the size.
pub fn measure() -> Result<ClusterResult, String> {
    measure_sized(NODES, ENDPOINTS_PER_NODE, LABEL_SETS, CHANGES)
}

impl ClusterResult {
    pub fn render(&self, s: &mut String) {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let _ = writeln!(s, "# sluice bench: cluster state from etcd (one node's agent)\n");
        let _ = writeln!(
            s,
            "- {} ({} keys written in {}: {} nodes x {} endpoints, {} label sets)",
            self.etcd_version,
            self.keys,
            ms(self.write),
            self.nodes,
            self.endpoints / self.nodes.max(1),
            self.label_sets
        );
        let _ = writeln!(s, "\n| step | figure |\n|---|---|");
        let _ = writeln!(s, "| agent start -> view complete (list + watch) | {} |", ms(self.list));
        let _ = writeln!(s, "| view -> node config (peers, endpoints, identities) | {} |", ms(self.apply));
        let _ = writeln!(
            s,
            "| policy resolution ({} ipcache entries) | {} |",
            self.ipcache_entries,
            ms(self.resolve)
        );
        let plan = match &self.plan {
            Ok(d) => ms(*d),
            Err(e) => format!("fails: {e}"),
        };
        let _ = writeln!(s, "| plan (resolution included; every map's contents) | {plan} |");
        let load = match &self.load {
            Ok(d) => ms(*d),
            Err(e) => e.clone(),
        };
        let _ = writeln!(s, "| load: maps created, filled and pinned, programs loaded | {load} |");
        if let (Ok(p), Ok(l)) = (&self.plan, &self.load) {
            let _ = writeln!(
                s,
                "| **start -> converged datapath** (view + config + plan + load) | **{}** |",
                ms(self.list + self.apply + *p + *l)
            );
        }
        let _ = writeln!(
            s,
            "| propagation, etcd put -> agent view (p50 / p99 / max of {}) | {} / {} / {} |",
            self.changes,
            ms(self.propagation_p50),
            ms(self.propagation_p99),
            ms(self.propagation_max)
        );
        match self.map_update {
            Some((p50, p99, max)) => {
                let _ = writeln!(
                    s,
                    "| propagation, etcd put -> ipcache written (fast path; p50 / p99 / max of {}; {} kept their identity, {} declined) | {} / {} / {} |",
                    map_lat_len(self),
                    self.unchanged,
                    self.fallbacks,
                    ms(p50),
                    ms(p99),
                    ms(max)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| propagation, etcd put -> ipcache written | not measured (no loaded maps) |"
                );
            }
        }
        let _ = writeln!(
            s,
            "| RSS before the agent / converged / peak while converging | {:.1} MiB / {:.1} MiB / {:.1} MiB |",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_converged_kib as f64 / 1024.0,
            self.rss_peak_kib as f64 / 1024.0
        );
        let _ = writeln!(
            s,
            "| etcd per endpoint change: writer | 1 put, {} bytes of key+value |",
            self.put_bytes
        );
        let _ = writeln!(
            s,
            "| etcd per endpoint change: each watching node | {:.2} requests, {:.0} bytes received |",
            self.agent_requests_per_change, self.agent_bytes_per_change
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_nets_are_distinct_and_inside_10_slash_8() {
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=super::NODES {
            let (prefix, addr) = super::node_net(n);
            assert!(seen.insert(prefix), "node {n}");
            assert_eq!(prefix.octets()[0], 10);
            assert_ne!(addr, std::net::Ipv4Addr::new(172, 31, 255, 1), "not the local node's address");
        }
    }
}
