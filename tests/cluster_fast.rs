//! Which cluster changes the daemon writes straight into the ipcache, and which re-apply the
//! whole view (`sluice::cluster::fast`, its contract):
//!
//! "a put of an endpoint record that keeps its address (IPv4) and its node (another node
//! than this one), whose old and new identities are both known to the view, whose new
//! identity some endpoint of the view already has, and whose old identity another endpoint
//! still has, is an *identity change* [...] A put that changes nothing the datapath uses
//! (the endpoint's name) is nothing. Every other event [...] is *structural*."
//!
//! The view: this node is node-1; node-2 holds 10.0.2.5 and .6 (identity 300), .7 and .8
//! (301), .9 (302, its only holder); identity 303 is known but unused; node-1 holds 10.0.1.5
//! (300).

use sluice::cluster::etcd::{Event, KeyValue};
use sluice::cluster::fast::{self, Changes};
use sluice::cluster::layout::{self, EndpointRecord};
use sluice::cluster::ClusterView;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

fn record(ip: &str, identity: u32, node: &str, name: &str) -> EndpointRecord {
    EndpointRecord {
        ip: ip.parse().expect("an address"),
        identity,
        node: node.into(),
        name: name.into(),
        namespace: "default".into(),
    }
}

fn kv(key: String, value: Vec<u8>) -> KeyValue {
    KeyValue { key: key.into_bytes(), value, create_revision: 1, mod_revision: 2, lease: 0 }
}

fn put(r: &EndpointRecord) -> Event {
    Event::Put(kv(layout::endpoint_key(r.ip), serde_json::to_vec(r).expect("serializes")))
}

fn view() -> ClusterView {
    let mut v = ClusterView::default();
    for (n, app) in [(300, "a"), (301, "b"), (302, "c"), (303, "d")] {
        v.identities.insert(n, [("app".to_owned(), app.to_owned())].into_iter().collect());
    }
    for r in [
        record("10.0.2.5", 300, "node-2", "p5"),
        record("10.0.2.6", 300, "node-2", "p6"),
        record("10.0.2.7", 301, "node-2", "p7"),
        record("10.0.2.8", 301, "node-2", "p8"),
        record("10.0.2.9", 302, "node-2", "p9"),
        record("10.0.1.5", 300, "node-1", "local"),
    ] {
        v.endpoints.insert(r.ip, r);
    }
    v
}

/// What one event is sorted as.
#[derive(Debug, PartialEq, Eq)]
enum Sort {
    Identity(&'static str, u32),
    Nothing,
    Structural,
}

fn sort(event: &Event) -> Sort {
    let v = view();
    let mut in_use = fast::in_use(&v);
    let mut c = Changes::default();
    c.note(&v, &mut in_use, "node-1", event);
    match (c.structural, c.identities.len()) {
        (true, _) => Sort::Structural,
        (false, 0) => Sort::Nothing,
        (false, 1) => {
            let (ip, id) = c.identities.into_iter().next().expect("one");
            Sort::Identity(Box::leak(ip.to_string().into_boxed_str()), id)
        }
        other => panic!("one event gave {other:?}"),
    }
}

#[test]
fn each_kind_of_cluster_event_is_sorted_as_the_contract_says() {
    let ref_key =
        layout::identity_ref_key(&[("app".to_owned(), "a".to_owned())].into_iter().collect(), "node-3");
    let v6 = record("fd00::5", 300, "node-2", "p5");
    let cases: Vec<(&str, Event, Sort)> = vec![
        (
            "moves to an identity others hold, the old one still held",
            put(&record("10.0.2.5", 301, "node-2", "p5")),
            Sort::Identity("10.0.2.5", 301),
        ),
        (
            "moves to the identity only 10.0.2.9 held, 301 still held by .8",
            put(&record("10.0.2.7", 302, "node-2", "p7")),
            Sort::Identity("10.0.2.7", 302),
        ),
        ("only the name changes", put(&record("10.0.2.5", 300, "node-2", "renamed")), Sort::Nothing),
        (
            "the new identity is known but no endpoint has it (policy entries may be missing)",
            put(&record("10.0.2.5", 303, "node-2", "p5")),
            Sort::Structural,
        ),
        (
            "the new identity is unknown to the view",
            put(&record("10.0.2.5", 999, "node-2", "p5")),
            Sort::Structural,
        ),
        (
            "the old identity loses its last holder",
            put(&record("10.0.2.9", 300, "node-2", "p9")),
            Sort::Structural,
        ),
        ("moves to another node", put(&record("10.0.2.5", 301, "node-3", "p5")), Sort::Structural),
        ("this node's own endpoint", put(&record("10.0.1.5", 301, "node-1", "local")), Sort::Structural),
        ("a new address", put(&record("10.0.2.10", 300, "node-2", "p10")), Sort::Structural),
        ("an IPv6 address", put(&v6), Sort::Structural),
        (
            "an endpoint deleted",
            Event::Delete(kv(layout::endpoint_key(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 5))), Vec::new())),
            Sort::Structural,
        ),
        ("a node record", Event::Put(kv(layout::node_key("node-2"), b"{}".to_vec())), Sort::Structural),
        ("an identity", Event::Put(kv(layout::identity_key(304), b"k8s:app=e;".to_vec())), Sort::Structural),
        (
            "an identity reference (not part of the view)",
            Event::Put(kv(ref_key, b"300".to_vec())),
            Sort::Nothing,
        ),
        (
            "a record that does not parse",
            Event::Put(kv(layout::endpoint_key(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 5))), b"{".to_vec())),
            Sort::Structural,
        ),
    ];
    let mut bad = Vec::new();
    for (what, event, want) in cases {
        let got = sort(&event);
        if got != want {
            bad.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A batch: the counts follow each event, so the second of two moves away from an identity
/// with two holders is structural, and the last value of an address wins.
#[test]
fn a_batch_is_sorted_event_after_event() {
    let mut v = view();
    let mut in_use = fast::in_use(&v);
    let mut c = Changes::default();
    for r in [record("10.0.2.5", 301, "node-2", "p5"), record("10.0.2.5", 302, "node-2", "p5")] {
        let e = put(&r);
        c.note(&v, &mut in_use, "node-1", &e);
        v.apply_event(&e);
    }
    let want: BTreeMap<Ipv4Addr, u32> = [(Ipv4Addr::new(10, 0, 2, 5), 302)].into_iter().collect();
    assert_eq!((c.structural, &c.identities), (false, &want));
    assert_eq!(in_use, fast::in_use(&v), "the counts kept in step are the view's");
    // 10.0.2.6 is now 300's last holder (10.0.1.5 is this node's and counts too): moving it
    // leaves 300 held by the local endpoint only, which is still a holder.
    let e = put(&record("10.0.2.6", 301, "node-2", "p6"));
    c.note(&v, &mut in_use, "node-1", &e);
    v.apply_event(&e);
    assert!(!c.structural);
    let e = put(&record("10.0.1.5", 301, "node-1", "local"));
    c.note(&v, &mut in_use, "node-1", &e);
    assert!(c.structural, "this node's own endpoint");
}

/// A node (single-file mode) whose overlay peer node-2 declares four pods, two per label set;
/// `moved` gives 10.0.2.6 the other set.
fn node(moved: bool) -> sluice::model::NodeConfig {
    let b6 = if moved { "b" } else { "a" };
    let text = format!(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: node-1}}\nspec:\n  \
         overlay:\n    local: 172.16.0.1\n    peers:\n      - name: node-2\n        \
         address: 172.16.0.2\n        prefixes: [10.0.2.0/24]\n        endpoints:\n          \
         - {{name: a5, ipv4: 10.0.2.5, labels: {{app: a}}}}\n          \
         - {{name: x6, ipv4: 10.0.2.6, labels: {{app: {b6}}}}}\n          \
         - {{name: b7, ipv4: 10.0.2.7, labels: {{app: b}}}}\n          \
         - {{name: b8, ipv4: 10.0.2.8, labels: {{app: b}}}}\n          \
         - {{name: a9, ipv4: 10.0.2.9, labels: {{app: a}}}}\n  \
         endpoints:\n    - {{name: web, interface: lxc-web, ipv4: 10.0.1.5, labels: {{app: web}}}}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n    \
         - fromEndpoints: [{{matchLabels: {{app: b}}}}]\n"
    );
    sluice::model::parse_str(&text, "fast.yaml").expect("the test node parses")
}

/// The pin directory of the test, unloaded and removed on drop.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = sluice::node::load::unload(&sluice::sys::kernel(), &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// "the only difference a whole re-apply would make to the datapath is that address's
/// ipcache entry": after the fast path wrote 10.0.2.6's new identity, a whole apply of the
/// changed node finds nothing to write in the ipcache (and without the write it would).
#[test]
fn the_fast_write_is_what_a_whole_apply_would_write() {
    let test = "the_fast_write_is_what_a_whole_apply_would_write";
    if !sluice::sys::require_kernel(test) {
        return;
    }
    let sys = sluice::sys::kernel();
    let pins = Pins(
        std::path::PathBuf::from(sluice::sys::DEFAULT_BPFFS)
            .join(format!("sluice-test-fast-{}", std::process::id())),
    );
    let (before, after) = (node(false), node(true));
    sluice::node::load::load_and_pin(&sys, &sluice::node::plan(&before).expect("plan"), &pins.0)
        .expect("loads");
    let ip = Ipv4Addr::new(10, 0, 2, 6);
    let resolved = sluice::policy::resolve(&after).expect("resolves");
    let (old, new) = (
        sluice::policy::resolve(&before).expect("resolves").ipcache().lookup(IpAddr::V4(ip)).get(),
        resolved.ipcache().lookup(IpAddr::V4(ip)).get(),
    );
    assert_ne!(old, new, "the change moves 10.0.2.6 to another identity");
    let changes: BTreeMap<Ipv4Addr, u32> = [(ip, new)].into_iter().collect();
    let chunks = fast::write_ipcache_v4(&sys, &pins.0, &changes).expect("10.0.2.6 has its own leaf");
    assert_eq!(chunks, 1);
    let update = sluice::node::update::update_pinned(
        &sys,
        &after,
        &sluice::node::plan(&after).expect("plan"),
        &pins.0,
    )
    .expect("the whole apply");
    let ipcache: BTreeMap<&String, &usize> =
        update.writes.iter().filter(|(map, n)| map.starts_with("ipc_") && **n > 0).collect();
    assert!(
        ipcache.is_empty(),
        "the whole apply still wrote the ipcache: {ipcache:?} (all writes: {update:?})"
    );
    // An address without a leaf of its own (covered by node-2's /24 only) is refused.
    let uncovered: BTreeMap<Ipv4Addr, u32> = [(Ipv4Addr::new(10, 0, 9, 9), new)].into_iter().collect();
    assert!(matches!(fast::write_ipcache_v4(&sys, &pins.0, &uncovered), Err(fast::FastError::NoLeaf(_))));
}
