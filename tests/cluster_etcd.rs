//! Cluster state in a real etcd (started per test on free loopback ports, killed on drop):
//! the client against the gateway, identity allocation races, agents seeing each other,
//! a node's lease expiring, etcd going away and coming back, and a watch behind compaction.
//!
//! Needs the `etcd` binary (Debian `etcd-server`); CI installs it. Without it the tests
//! skip, unless `SLUICE_REQUIRE_KERNEL=1` (CI) makes that a failure.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::cluster::etcd::{Compare, EtcdError, Event, Op, WatchBatch};
use sluice::cluster::server::{self, EtcdServer};
use sluice::cluster::{alloc, layout, Agent, ClusterView};
use sluice::model::{self, Labels, NodeConfig};
use sluice::policy::identity::label_set_slot;

fn etcd(test: &str) -> Option<EtcdServer> {
    if !server::available() {
        if std::env::var(sluice::sys::gate::REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
            panic!("{test}: {}", server::INSTALL_HINT);
        }
        eprintln!("skip: {test}: {}", server::INSTALL_HINT);
        return None;
    }
    Some(EtcdServer::start(test).unwrap_or_else(|e| panic!("{test}: {e}")))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Polls `cond` every 50 ms for up to `limit`; the limit is a hang guard, not a measurement.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within {limit:?}: {what}");
}

#[test]
fn the_gateway_client_puts_reads_transacts_leases_and_watches() {
    let Some(server) = etcd("gateway") else { return };
    let c = server.client();
    let rev = c.put(b"sluice/t/a", b"1", 0).unwrap();
    c.put(b"sluice/t/b", b"2", 0).unwrap();
    c.put(b"sluice/u", b"3", 0).unwrap();
    let range = c.range(b"sluice/t/", true).unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key_str()).collect();
    assert_eq!(keys, ["sluice/t/a", "sluice/t/b"], "a prefix range holds exactly the prefix");
    assert!(range.revision > rev);

    // Create-if-absent: the first wins, the second reads the winner.
    let create = |v: &[u8]| {
        c.txn(
            &[Compare::Absent(b"sluice/t/c".to_vec())],
            &[Op::Put { key: b"sluice/t/c".to_vec(), value: v.to_vec(), lease: 0 }],
            &[Op::Get(b"sluice/t/c".to_vec())],
        )
        .unwrap()
    };
    let first = create(b"x");
    let second = create(b"y");
    assert!(first.succeeded && !second.succeeded);
    assert_eq!(second.kvs[0].value, b"x");

    // A lease's keys go when it is revoked; a revoked lease cannot be renewed.
    let lease = c.lease_grant(30).unwrap();
    assert!(c.lease_keepalive(lease).unwrap() > 0);
    c.put(b"sluice/t/leased", b"v", lease).unwrap();
    let mut watch = c.watch(b"sluice/t/", c.range(b"sluice/t/", true).unwrap().revision + 1).unwrap();
    c.lease_revoke(lease).unwrap();
    assert!(c.range(b"sluice/t/leased", false).unwrap().kvs.is_empty());
    assert!(matches!(c.lease_keepalive(lease), Err(EtcdError::LeaseGone(_))));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.is_empty() && Instant::now() < deadline {
        if let WatchBatch::Events { events, .. } = watch.next_batch().unwrap() {
            seen.extend(events);
        }
    }
    assert!(
        matches!(&seen[..], [Event::Delete(kv)] if kv.key == b"sluice/t/leased"),
        "the watch reports the lease's key deleted, got {seen:?}"
    );
}

#[test]
fn two_nodes_racing_for_one_label_set_get_one_identity() {
    let Some(server) = etcd("race") else { return };
    let set = labels(&[("app", "web"), ("io.kubernetes.pod.namespace", "default")]);
    let nodes = 8;
    let barrier = Arc::new(std::sync::Barrier::new(nodes));
    let got: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..nodes)
            .map(|i| {
                let (c, set, barrier) = (server.client(), set.clone(), barrier.clone());
                s.spawn(move || {
                    let lease = c.lease_grant(30).unwrap();
                    barrier.wait();
                    alloc::allocate(&c, &set, &format!("node-{i}"), lease).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u32> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 1, "{nodes} racing nodes got {got:?}");
    let n = got[0];
    assert_eq!(n, label_set_slot(&set), "without collisions the number is single-file mode's");
    let c = server.client();
    assert_eq!(c.range(layout::IDENTITY_IDS.as_bytes(), true).unwrap().kvs.len(), 1, "one master key");
    let refs = c.range(layout::identity_ref_prefix(&set).as_bytes(), true).unwrap();
    assert_eq!(refs.kvs.len(), nodes, "one reference per node");
}

#[test]
fn colliding_label_sets_get_different_identities_and_garbage_is_collected() {
    let Some(server) = etcd("collide") else { return };
    let c = server.client();
    // Two label sets with the same slot, found by search.
    let mut seen = std::collections::BTreeMap::new();
    let (a, b) = (0..5000)
        .map(|i| labels(&[("app", &format!("a{i}")), ("io.kubernetes.pod.namespace", "default")]))
        .find_map(|s| seen.insert(label_set_slot(&s), s.clone()).map(|first| (first, s)))
        .expect("5,000 sets in 65,280 slots collide somewhere");
    let lease_1 = c.lease_grant(30).unwrap();
    let lease_2 = c.lease_grant(30).unwrap();
    let id_a = alloc::allocate(&c, &a, "node-1", lease_1).unwrap();
    let id_b = alloc::allocate(&c, &b, "node-2", lease_2).unwrap();
    assert_eq!(id_a, label_set_slot(&a));
    assert_ne!(id_a, id_b, "a collision probes to another number");
    assert_eq!(
        alloc::allocate(&c, &b, "node-1", lease_1).unwrap(),
        id_b,
        "joining finds b by its references"
    );

    // node-2 and node-1's b reference leave: b is unreferenced only once node-1's goes too.
    c.lease_revoke(lease_2).unwrap();
    let mut garbage = alloc::Garbage::default();
    assert_eq!(alloc::collect_garbage(&c, &mut garbage).unwrap(), Vec::<u32>::new());
    c.delete(layout::identity_ref_key(&b, "node-1").as_bytes(), false).unwrap();
    assert_eq!(
        alloc::collect_garbage(&c, &mut garbage).unwrap(),
        Vec::<u32>::new(),
        "first seen unreferenced: kept one more round"
    );
    assert_eq!(
        alloc::collect_garbage(&c, &mut garbage).unwrap(),
        vec![id_b],
        "unreferenced twice: collected"
    );
    assert_eq!(c.range(layout::IDENTITY_IDS.as_bytes(), true).unwrap().kvs.len(), 1, "a stays");
}

/// A node file for agent tests: one endpoint, an overlay with no static peers.
fn node(name: &str, n: u8, app: &str) -> NodeConfig {
    let text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: {name}}}\nspec:\n  \
         overlay: {{local: 172.16.0.{n}}}\n  endpoints:\n    \
         - {{name: {app}, interface: lxc-{app}, ipv4: 10.0.{n}.5, labels: {{app: {app}}}}}\n"
    );
    model::parse_str(&text, "node.yaml").unwrap()
}

struct Running {
    agent: Arc<Agent>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(server: &EtcdServer, cfg: &NodeConfig, ttl: i64) -> Running {
        let agent = Arc::new(Agent::new(server.client(), &cfg.name, ttl));
        agent.set_local(cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (agent.clone(), stop.clone());
        let thread = Some(std::thread::spawn(move || a.run(&s)));
        Running { agent, stop, thread }
    }

    /// Stops the agent without revoking its lease, as a SIGKILL would.
    fn kill(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

fn peer_names(view: &ClusterView, cfg: &NodeConfig) -> Vec<String> {
    let mut cfg = cfg.clone();
    view.apply(&mut cfg);
    cfg.overlay.map(|o| o.peers.into_iter().map(|p| p.name).collect()).unwrap_or_default()
}

#[test]
fn agents_see_each_other_agree_on_identities_and_drop_a_dead_node_after_its_ttl() {
    let Some(server) = etcd("agents") else { return };
    let (a_cfg, b_cfg, c_cfg) = (node("node-a", 1, "web"), node("node-b", 2, "db"), node("node-c", 3, "web"));
    let a = Running::start(&server, &a_cfg, 30);
    let b = Running::start(&server, &b_cfg, 30);
    let c = Running::start(&server, &c_cfg, 2);
    eventually(Duration::from_secs(20), "node-a sees node-b and node-c with their endpoints", || {
        let v = a.agent.view();
        v.nodes.len() == 3 && v.endpoints.len() == 3
    });
    // What node-a's datapath gets: both peers, their endpoints labelled, and one number per
    // label set shared by every node.
    let mut cfg = a_cfg.clone();
    let notes = a.agent.view().apply(&mut cfg);
    assert!(notes.is_empty(), "{notes:?}");
    let peers = cfg.overlay.as_ref().unwrap().peers.clone();
    assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["node-b", "node-c"]);
    assert_eq!(peers[0].endpoints[0].labels["app"], "db");
    let resolved = sluice::policy::resolve(&cfg).unwrap();
    let web = a.agent.status().allocated.values().copied().next().unwrap();
    assert_eq!(
        resolved.ipcache().lookup("10.0.3.5".parse().unwrap()).get(),
        web,
        "node-c's web pod has the number node-a's web got: one identity for one label set"
    );
    eventually(Duration::from_secs(10), "node-b agrees", || {
        let mut bcfg = b_cfg.clone();
        b.agent.view().apply(&mut bcfg);
        sluice::policy::resolve(&bcfg).unwrap().ipcache().lookup("10.0.1.5".parse().unwrap()).get() == web
    });

    // node-c dies without leaving: gone from node-a's view once its 2 s lease expires.
    c.kill();
    eventually(Duration::from_secs(30), "node-c's lease expires and node-a drops it", || {
        peer_names(&a.agent.view(), &a_cfg) == ["node-b"]
    });
    assert!(a.agent.view().endpoints.keys().all(|ip| ip.to_string() != "10.0.3.5"));
}

#[test]
fn etcd_down_keeps_the_last_view_and_a_restart_resyncs() {
    let Some(mut server) = etcd("restart") else { return };
    let (a_cfg, b_cfg) = (node("node-a", 1, "web"), node("node-b", 2, "db"));
    let a = Running::start(&server, &a_cfg, 30);
    let b = Running::start(&server, &b_cfg, 30);
    eventually(Duration::from_secs(20), "both nodes listed", || a.agent.view().nodes.len() == 2);
    let before = a.agent.view();

    server.stop();
    eventually(Duration::from_secs(20), "node-a notices etcd is gone", || !a.agent.status().connected);
    assert_eq!(a.agent.view(), before, "the view (and so the datapath) keeps its last state");
    assert!(a.agent.status().to_string().contains("disconnected, keeping the last state"));

    // Meanwhile node-b gets a second endpoint; it is published once etcd is back.
    let mut b2 = b_cfg.clone();
    let mut extra = b2.endpoints[0].clone();
    extra.name = "db2".into();
    extra.interface = "lxc-db2".into();
    extra.ipv4 = Some("10.0.2.6".parse().unwrap());
    b2.endpoints.push(extra);
    b.agent.set_local(&b2);

    server.restart().unwrap();
    eventually(Duration::from_secs(30), "node-a relists and sees node-b's new endpoint", || {
        let v = a.agent.view();
        a.agent.status().connected && v.endpoints.keys().any(|ip| ip.to_string() == "10.0.2.6")
    });
    let st = a.agent.status();
    assert!(st.relists >= 2 && st.errors >= 1, "{st}");
    let ids = server.client().range(layout::IDENTITY_IDS.as_bytes(), true).unwrap();
    assert_eq!(ids.kvs.len(), 2, "no duplicate identities after the resync: web and db");
}

#[test]
fn a_watch_behind_compaction_is_told_so() {
    let Some(server) = etcd("compact") else { return };
    let c = server.client();
    let first = c.put(b"sluice/state/x", b"1", 0).unwrap();
    let last = c.put(b"sluice/state/x", b"2", 0).unwrap();
    c.put(b"sluice/state/x", b"3", 0).unwrap();
    c.compact(last).unwrap();
    let mut watch = c.watch(b"sluice/state/", first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match watch.next_batch() {
            Err(EtcdError::Compacted { compact_revision }) => {
                assert_eq!(compact_revision, last);
                break;
            }
            Ok(WatchBatch::Idle) | Ok(WatchBatch::Events { .. }) if Instant::now() < deadline => {}
            other => panic!("expected a compaction error, got {other:?}"),
        }
    }
}

#[test]
fn a_list_reads_every_page_at_one_revision() {
    let Some(server) = etcd("pages") else { return };
    let c = server.client();
    let n = sluice::cluster::etcd::LIST_PAGE * 2 + 7;
    let ops: Vec<Op> = (0..n)
        .map(|i| Op::Put { key: format!("sluice/p/{i:06}").into_bytes(), value: b"v".to_vec(), lease: 0 })
        .collect();
    for batch in ops.chunks(128) {
        assert!(c.txn(&[], batch, &[]).unwrap().succeeded);
    }
    c.put(b"sluice/q", b"outside the prefix", 0).unwrap();
    let list = c.list(b"sluice/p/").unwrap();
    assert_eq!(list.kvs.len(), n, "every page, nothing twice");
    let keys: Vec<&str> = list.kvs.iter().map(|kv| kv.key_str()).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
    assert_eq!(keys.last().copied(), Some(format!("sluice/p/{:06}", n - 1).as_str()));
}
