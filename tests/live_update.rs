//! `sluice load` of a changed node on a loaded node: policy, ipcache and prefilter changes
//! land as map updates on the pinned maps (the pinned programs, never reloaded, then judge
//! every flow as the reference evaluator says for the new config), and a change of code
//! shape is refused without touching anything.

use sluice::golden::probes::{flow_frame, policy_flows};
use sluice::model::{self, NodeConfig};
use sluice::node::load::{load_and_pin, unload, LoadError};
use sluice::node::plan;
use sluice::node::update::update_pinned;
use sluice::policy::{oracle, Verdict};
use sluice::sys::{Program, TestRunOpts};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const BASE: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: live}
spec:
  prefilter: {deny: [192.0.2.0/24]}
  hostAddresses: [192.168.1.5]
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, ipv6: "fd00:7::2", labels: {app: api}}
    - {name: web, interface: lxc-web, ipv4: 10.7.0.1, ipv6: "fd00:7::1", labels: {app: web}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

/// The same node with more allowed, a deny, a new outside CIDR and a new prefilter prefix.
const CHANGED: &str = r#"
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: live}
spec:
  prefilter: {deny: [192.0.2.0/24, 198.51.100.0/24]}
  hostAddresses: [192.168.1.5]
  endpoints:
    - {name: api, interface: lxc-api, ipv4: 10.7.0.2, ipv6: "fd00:7::2", labels: {app: api}}
    - {name: web, interface: lxc-web, ipv4: 10.7.0.1, ipv6: "fd00:7::1", labels: {app: web}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
    - fromCIDR: ["203.0.113.0/24"]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  egressDeny:
    - toEntities: [world]
"#;

/// A unique pin directory removed on drop, also on panic.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = unload(&sluice::sys::kernel(), &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_grid(cfg: &NodeConfig, pins: &Path, sport: &mut u16) -> (usize, Vec<String>) {
    let sys = sluice::sys::kernel();
    let mut programs: BTreeMap<String, Program> = BTreeMap::new();
    let outside: Vec<IpAddr> =
        ["203.0.113.9", "198.18.0.1", "2001:db8::9"].iter().map(|a| a.parse().expect("literal")).collect();
    let flows = policy_flows(cfg, &outside, &[22, 443, 8080, 8085], sport);
    let mut bad = Vec::new();
    for f in &flows {
        let prog = programs.entry(f.program.clone()).or_insert_with(|| {
            Program::from_pin(&sys, &pins.join("programs").join(&f.program)).expect("pinned program opens")
        });
        let got = prog.test_run(&TestRunOpts::packet(&flow_frame(&f.key))).expect("test run").retval;
        let want = match oracle::decide(cfg, &f.endpoint, f.direction, &f.key).expect("decides") {
            Verdict::Allow => 0,
            _ => 2,
        };
        if got != want {
            bad.push(format!(
                "{} {:?} {:?}: pinned program {got}, oracle {want}",
                f.endpoint, f.direction, f.key
            ));
        }
    }
    (flows.len(), bad)
}

#[test]
fn policy_changes_apply_to_the_pinned_node_without_a_reload() {
    if !sluice::sys::require_kernel("policy_changes_apply_to_the_pinned_node_without_a_reload") {
        return;
    }
    let sys = sluice::sys::kernel();
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/sluice-test-live-{}", std::process::id())));
    let base = model::parse_str(BASE, "base.yaml").expect("parses");
    let loaded = load_and_pin(&sys, &plan(&base).expect("plans"), &pins.0).expect("loads");
    let ids: BTreeMap<String, u32> = loaded.programs.iter().map(|(n, p)| (n.clone(), p.id())).collect();
    drop(loaded);
    let mut sport = 10_000;
    let (n, bad) = run_grid(&base, &pins.0, &mut sport);
    assert!(bad.is_empty(), "before the change, {} of {n} flows differ:\n{}", bad.len(), bad.join("\n"));

    let changed = model::parse_str(CHANGED, "changed.yaml").expect("parses");
    let update = update_pinned(&sys, &changed, &plan(&changed).expect("plans"), &pins.0).expect("updates");
    assert!(update.writes.contains_key("policy"), "{update:?}");
    assert!(update.writes.contains_key("pf_v4_l1") || update.writes.contains_key("pf_v4_l2"), "{update:?}");
    let (n, bad) = run_grid(&changed, &pins.0, &mut sport);
    assert!(bad.is_empty(), "after the change, {} of {n} flows differ:\n{}", bad.len(), bad.join("\n"));
    for (name, id) in &ids {
        let p = Program::from_pin(&sys, &pins.0.join("programs").join(name)).expect("still pinned");
        assert_eq!(p.id(), *id, "{name} was not reloaded");
    }
    let again = update_pinned(&sys, &changed, &plan(&changed).expect("plans"), &pins.0).expect("updates");
    assert_eq!(again.total(), 0, "a second identical update writes nothing: {again:?}");

    // A new endpoint needs new programs: refused, and the node keeps judging as before.
    let grown = CHANGED.replace(
        "  endpoints:\n",
        "  endpoints:\n    - {name: db, interface: lxc-db, ipv4: 10.7.0.3, labels: {app: db}}\n",
    );
    let grown = model::parse_str(&grown, "grown.yaml").expect("parses");
    let grown_plan = plan(&grown).expect("plans");
    // The refusal names exactly the programs the grown plan has and the pinned node lacks,
    // and the other way round: computed from the two plans, not from the refusal.
    let names =
        |p: &sluice::node::Plan| -> BTreeSet<String> { p.objects.iter().map(|o| o.name.clone()).collect() };
    let (before, after) = (names(&plan(&changed).expect("plans")), names(&grown_plan));
    let want_added: Vec<String> = after.difference(&before).cloned().collect();
    let want_removed: Vec<String> = before.difference(&after).cloned().collect();
    assert!(
        want_added.iter().any(|p| p.starts_with("from_ep_"))
            && want_added.iter().any(|p| p.starts_with("to_ep_")),
        "a new endpoint brings a from_ep_ and a to_ep_ program: {want_added:?}"
    );
    match update_pinned(&sys, &grown, &grown_plan, &pins.0) {
        Err(LoadError::CodeShape { added, removed }) => {
            assert_eq!(added, want_added, "programs the grown node adds");
            assert_eq!(removed, want_removed, "programs the grown node drops");
        }
        other => panic!("expected a code-shape refusal, got {other:?}"),
    }
    let (n, bad) = run_grid(&changed, &pins.0, &mut sport);
    assert!(bad.is_empty(), "after the refusal, {} of {n} flows differ:\n{}", bad.len(), bad.join("\n"));
}
