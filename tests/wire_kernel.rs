//! Kernel: `sluice attach`, `sluice status` and `sluice down` on a real node, with real
//! traffic through what they attach.
//!
//! Each test builds its own network namespaces with `ip` (iproute2), as
//! `tests/e2e_endpoints.rs` does: a node namespace `slw-<pid>-<n>` holding the host sides
//! `lxcA` and `lxcB`, and one namespace per endpoint holding `eth0`, routed through the
//! node namespace with static neighbors (no ARP, no neighbor discovery). Nothing touches
//! the root namespace. Guards delete the namespaces and the pin directory on drop, also
//! when a test panics.
//!
//! The commands act in the caller's network namespace, so the library functions behind
//! them (`load_and_pin`, `wire::attach`, `wire::status`, `wire::down`) run on a thread
//! that entered the node namespace.
//!
//! The policy: endpoint B admits TCP 8080 from endpoint A and nothing else.
//!
//! Gated by `sluice::sys::require_kernel`, and by `ip` being installed (a skip, or a
//! failure under `SLUICE_REQUIRE_KERNEL=1`).

use sluice::attach::{Direction, Interface, Link, LinkKind, Mechanism};
use sluice::model::{self, NodeConfig};
use sluice::netlink::{Netlink, TcDirection, XdpAttached, XdpMode};
use sluice::node::load::{self, load_program};
use sluice::node::wire::{self, Action, AttachOptions, AttachReport, Hook, Via, WireError};
use sluice::node::{plan, Plan};
use sluice::sys::{self, Map, Program, Syscall};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Gate, `ip` and namespaces.

#[path = "support/netns.rs"]
mod netns;
use netns::{gate, Netns, PinDir};

const PREFIX: &str = "slw";

fn unique() -> String {
    netns::unique(PREFIX)
}

/// Delete namespaces and pin directories a killed earlier run left behind (its pid is gone).
fn remove_stale() {
    netns::remove_stale(PREFIX, "sluice-wire-")
}

/// One endpoint: its namespace, IPv4 address and the host side of its veth.
struct Endpoint {
    ns: Netns,
    host_if: &'static str,
    v4: Ipv4Addr,
}

/// The node namespace and two endpoints routed through it, the node file describing them
/// and a pin directory. Field order is drop order: pins first, then the namespaces.
struct Topology {
    pins: PinDir,
    node: Netns,
    a: Endpoint,
    b: Endpoint,
    dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The endpoints' gateway: on-link, resolved by a static neighbor entry to the host side.
const GW4: &str = "169.254.0.1";

impl Topology {
    fn build() -> Topology {
        remove_stale();
        let base = unique();
        let pins = PinDir(PathBuf::from(sys::DEFAULT_BPFFS).join(format!("sluice-wire-{base}")));
        let node = Netns::new(base.clone());
        node.enter(|| {
            for (path, value) in [
                ("/proc/sys/net/ipv4/ip_forward", "1"),
                ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
                ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
            ] {
                std::fs::write(path, value).unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
            }
        });
        let endpoint = |i: u8, host_if: &'static str| {
            let ep = Endpoint {
                ns: Netns::new(format!("{base}-{}", char::from(b'a' + i - 1))),
                host_if,
                v4: Ipv4Addr::new(10, 201, 0, i),
            };
            let (host_mac, ep_mac) = (format!("02:00:00:00:1{i}:01"), format!("02:00:00:00:1{i}:02"));
            let v4 = ep.v4.to_string();
            node.ip(&[
                "link",
                "add",
                host_if,
                "address",
                &host_mac,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &ep_mac,
                "netns",
                &ep.ns.name,
            ]);
            let e = &ep.ns;
            e.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
            e.ip(&["link", "set", "eth0", "up"]);
            e.ip(&["route", "add", "default", "via", GW4, "dev", "eth0", "onlink"]);
            e.ip(&["neigh", "add", GW4, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            node.ip(&["link", "set", host_if, "up"]);
            node.ip(&["route", "add", &format!("{v4}/32"), "dev", host_if]);
            node.ip(&["neigh", "add", &v4, "lladdr", &ep_mac, "dev", host_if, "nud", "permanent"]);
            ep
        };
        let a = endpoint(1, "lxcA");
        let b = endpoint(2, "lxcB");
        let dir = std::env::temp_dir().join(format!("sluice-{base}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Topology { pins, node, a, b, dir }
    }

    /// Write the node file for this topology and read it back through the model.
    fn node_config(&self) -> NodeConfig {
        let text = format!(
            r#"apiVersion: sluice.dev/v1
kind: Node
metadata:
  name: wire
spec:
  endpoints:
    - name: ep-a
      interface: {a_if}
      ipv4: {a4}
      labels: {{app: a}}
    - name: ep-b
      interface: {b_if}
      ipv4: {b4}
      labels: {{app: b}}
---
# B admits TCP 8080 from A, nothing else.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: b-from-a
spec:
  endpointSelector:
    matchLabels: {{app: b}}
  ingress:
    - fromEndpoints:
        - matchLabels: {{app: a}}
      toPorts:
        - ports:
            - {{port: "8080", protocol: TCP}}
"#,
            a_if = self.a.host_if,
            a4 = self.a.v4,
            b_if = self.b.host_if,
            b4 = self.b.v4,
        );
        let path = self.dir.join("node.yaml");
        std::fs::write(&path, text).expect("writes the node file");
        model::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pin_dir(&self) -> &Path {
        &self.pins.0
    }
}

// ---------------------------------------------------------------------------------------
// Traffic.

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn accept_within(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// Send `msg` on `from` and read it on `to`; true when it arrived intact.
fn carry(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    to.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    from.write_all(msg).is_ok() && to.read_exact(&mut buf).is_ok() && buf == msg
}

/// What a TCP probe from A to B:port observed: (A got B's data, B accepted and read A's).
fn probe_tcp(topo: &Topology, port: u16) -> (bool, bool) {
    let dst = SocketAddr::new(IpAddr::V4(topo.b.v4), port);
    let listener = topo.b.ns.enter(|| TcpListener::bind(dst).expect("B listens"));
    match topo.a.ns.enter(|| TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)) {
        Ok(mut a) => match accept_within(&listener, Duration::from_secs(2)) {
            Some(mut b) => {
                let b_saw = carry(&mut a, &mut b, b"hello from A");
                let a_saw = carry(&mut b, &mut a, b"hello from B");
                (a_saw, b_saw)
            }
            None => (false, false),
        },
        Err(_) => (false, accept_within(&listener, Duration::from_millis(50)).is_some()),
    }
}

/// Allowed TCP passes both ways; denied TCP is seen by neither end.
fn check_policy(topo: &Topology, when: &str) {
    assert_eq!(probe_tcp(topo, 8080), (true, true), "{when}: A to B:8080 is allowed");
    assert_eq!(probe_tcp(topo, 9090), (false, false), "{when}: A to B:9090 is denied");
}

// ---------------------------------------------------------------------------------------
// Inspection without bpftool.

/// Pin names under `<pin>/links`.
fn link_pins(pin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pin_dir.join(wire::LINKS_DIR))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Program ids of the pinned programs, by pin name.
fn pinned_program_ids(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> BTreeMap<String, u32> {
    std::fs::read_dir(pin_dir.join("programs"))
        .expect("programs are pinned")
        .flatten()
        .map(|e| {
            let prog = Program::from_pin(sys, &e.path()).expect("opens a pinned program");
            (e.file_name().to_string_lossy().into_owned(), prog.id())
        })
        .collect()
}

/// Replace every pinned program the report attached with a fresh load of the same code on
/// the pinned maps: what a new `sluice load` of changed code leaves for `attach` to swap in.
fn repin_programs(sys: &Arc<dyn Syscall>, plan: &Plan, pin_dir: &Path, report: &AttachReport) {
    let mut maps: BTreeMap<&'static str, Map> = BTreeMap::new();
    for obj in &plan.objects {
        for def in &obj.maps {
            maps.entry(def.name).or_insert_with(|| {
                Map::from_pin(sys, &pin_dir.join("maps").join(def.name)).expect("opens a pinned map")
            });
        }
    }
    let mut names: Vec<&str> = report.attached.iter().map(|a| a.want.program.as_str()).collect();
    names.dedup();
    for name in names {
        let obj = plan.object(name).expect("planned");
        let new = load_program(sys, obj, &maps).unwrap_or_else(|e| panic!("{e}"));
        let path = pin_dir.join("programs").join(name);
        sys::unpin(&path).expect("unpins the old program");
        new.pin(&path).expect("pins the new program");
    }
}

/// Every hook of the report, by (program, device): (link id or 0, program id).
fn hooks_of(report: &AttachReport) -> BTreeMap<(String, String), (u32, u32)> {
    report
        .attached
        .iter()
        .map(|a| {
            let id = match &a.via {
                Via::Link { id, .. } => *id,
                Via::Netlink(_) => 0,
            };
            ((a.want.program.clone(), a.want.ifname.clone()), (id, a.prog_id))
        })
        .collect()
}

/// What is left on a device's hooks, read from the kernel in the calling thread's namespace:
/// tcx programs per direction, XDP, and whether it has a clsact qdisc with filters.
#[derive(Debug, Default, PartialEq, Eq)]
struct DeviceHooks {
    tcx_ingress: Vec<u32>,
    tcx_egress: Vec<u32>,
    xdp: XdpAttached,
    clsact: bool,
    filters: Vec<Option<u32>>,
}

fn device_hooks(sys: &Arc<dyn Syscall>, ifname: &str) -> DeviceHooks {
    let iface = Interface::lookup(ifname).expect("the device exists");
    let nl = Netlink::open().expect("rtnetlink");
    let clsact = nl.qdiscs(iface.index()).expect("qdiscs").iter().any(|q| q.kind == "clsact");
    let mut filters = Vec::new();
    if clsact {
        for d in [TcDirection::Ingress, TcDirection::Egress] {
            filters.extend(nl.filters(iface.index(), d).expect("filters").iter().map(|f| f.prog_id));
        }
    }
    let query = |d| wire::tcx_query(&**sys, iface.index(), d).expect("BPF_PROG_QUERY").prog_ids;
    DeviceHooks {
        tcx_ingress: query(Direction::Ingress),
        tcx_egress: query(Direction::Egress),
        xdp: nl.xdp_info(iface.index()).expect("xdp info").attached,
        clsact,
        filters,
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn attach_status_down_with_real_traffic() {
    if !gate("attach_status_down_with_real_traffic") {
        return;
    }
    let start = Instant::now();
    let sys = sys::kernel();
    let topo = Topology::build();
    let cfg = topo.node_config();
    let plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let pin = topo.pin_dir().to_path_buf();
    let opts =
        AttachOptions { xdp_device: Some("lxcA".into()), netlink_only: false, ..AttachOptions::default() };

    // 1. Load. A first attach fails on its last hook (lxcA's XDP hook is taken by a
    //    program attached through netlink in generic mode) and undoes the four tcx links
    //    it had made. Then attach, in the node namespace.
    let (report, text) = topo.node.enter(|| {
        load::load_and_pin(&sys, &plan, &pin).unwrap_or_else(|e| panic!("{e}"));
        let nl = Netlink::open().expect("rtnetlink");
        let lxc_a = Interface::lookup("lxcA").expect("lxcA");
        let squatter = Program::from_pin(&sys, &pin.join("programs/prefilter")).expect("prefilter");
        nl.xdp_attach(lxc_a.index(), squatter.fd(), XdpMode::Skb).expect("a foreign XDP program");
        let err = wire::attach(&sys, &cfg, &pin, &opts).expect_err("lxcA's XDP hook is taken");
        eprintln!("attach with the XDP hook taken: {err}");
        assert!(matches!(err, WireError::RolledBack { undone: 4, .. }), "{err}");
        assert!(link_pins(&pin).is_empty(), "nothing left pinned");
        for dev in ["lxcA", "lxcB"] {
            let hooks = device_hooks(&sys, dev);
            assert!(hooks.tcx_ingress.is_empty() && hooks.tcx_egress.is_empty(), "{dev}: {hooks:?}");
        }
        nl.xdp_detach(lxc_a.index(), None, XdpMode::Skb).expect("removes the foreign program");

        let report = wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}"));
        let text = report.to_string();
        (report, text)
    });
    eprintln!("first attach:\n{text}");
    assert_eq!(report.attached.len(), 5, "two hooks per endpoint and the XDP device");
    assert!(report.attached.iter().all(|a| a.action == Action::Created), "{text}");
    assert!(report.attached.iter().all(|a| a.via.mechanism() == Mechanism::Link), "{text}");
    let xdp = report.attached.iter().find(|a| a.want.hook == Hook::Xdp).expect("an XDP hook");
    assert!(text.contains("xdp-native") || text.contains("xdp-generic"), "says which XDP mode: {text}");
    eprintln!("XDP mode on lxcA: {:?}", xdp.xdp_mode);
    assert_eq!(
        link_pins(&pin),
        ["from_ep_1@lxcA", "from_ep_2@lxcB", "prefilter@lxcA", "to_ep_1@lxcA", "to_ep_2@lxcB"],
        "every link pinned under <pin>/links"
    );

    // The kernel's view, through sluice::attach and BPF_PROG_QUERY.
    let ids = pinned_program_ids(&sys, &pin);
    topo.node.enter(|| {
        for a in &report.attached {
            let link =
                Link::from_pin(&sys, &pin.join("links").join(a.want.pin_name())).expect("opens the link");
            let info = link.info().expect("link info");
            let iface = Interface::lookup(&a.want.ifname).expect("the device");
            let kind = match a.want.hook {
                Hook::Ingress => LinkKind::TcxIngress,
                Hook::Egress => LinkKind::TcxEgress,
                Hook::Xdp => LinkKind::Xdp,
            };
            assert_eq!(
                (info.kind, info.ifindex, info.prog_id),
                (kind, Some(iface.index()), ids[&a.want.program]),
                "{}",
                a.want.pin_name()
            );
        }
        let a_hooks = device_hooks(&sys, "lxcA");
        assert_eq!(a_hooks.tcx_ingress, [ids["from_ep_1"]]);
        assert_eq!(a_hooks.tcx_egress, [ids["to_ep_1"]]);
        assert_ne!(a_hooks.xdp, XdpAttached::None, "the prefilter is on lxcA's XDP hook");
        assert!(!a_hooks.clsact, "links need no clsact qdisc");
    });

    // 2. Real traffic, policed.
    check_policy(&topo, "attached");

    // 3. Attach again: nothing changes. Then with new programs pinned: swapped in place,
    //    same links.
    let before = hooks_of(&report);
    let again = topo.node.enter(|| wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}")));
    assert!(again.attached.iter().all(|a| a.action == Action::Unchanged), "{again}");
    assert_eq!(hooks_of(&again), before, "same links, same programs");
    repin_programs(&sys, &plan, &pin, &report);
    let new_ids = pinned_program_ids(&sys, &pin);
    let swapped = topo.node.enter(|| wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}")));
    eprintln!("attach after new programs were pinned:\n{swapped}");
    for a in &swapped.attached {
        let name = &a.want.program;
        assert_eq!(a.action, Action::Swapped { from: ids[name] }, "{name}");
        assert_eq!(a.prog_id, new_ids[name], "{name}");
        assert_ne!(new_ids[name], ids[name], "{name}: a new program");
    }
    let after: BTreeMap<_, _> = hooks_of(&swapped).into_iter().map(|(k, (link, _))| (k, link)).collect();
    let before_links: BTreeMap<_, _> = before.into_iter().map(|(k, (link, _))| (k, link)).collect();
    assert_eq!(after, before_links, "the same link ids");
    assert_eq!(link_pins(&pin).len(), 5, "no link duplicated");
    topo.node.enter(|| {
        for a in &swapped.attached {
            let link = Link::from_pin(&sys, &pin.join("links").join(a.want.pin_name())).expect("link");
            assert_eq!(
                link.info().expect("info").prog_id,
                new_ids[&a.want.program],
                "the link runs the new one"
            );
        }
        assert_eq!(device_hooks(&sys, "lxcB").tcx_ingress, [new_ids["from_ep_2"]], "swapped, not added");
    });
    check_policy(&topo, "after the swap");

    // 4. A missing interface: an error naming endpoint and interface, and nothing attached.
    let mut broken = cfg.clone();
    broken.endpoints[1].interface = "nope0".into();
    let err = topo
        .node
        .enter(|| wire::attach(&sys, &broken, &pin, &opts).expect_err("nope0 is missing").to_string());
    assert!(err.contains("endpoint `ep-b`") && err.contains("`nope0`"), "{err}");
    assert!(err.starts_with("nothing attached"), "{err}");
    assert_eq!(link_pins(&pin).len(), 5, "nothing attached");

    // 5. Status: the programs, "link", and the deny counter of B (and the prefilter's passes).
    let status = topo.node.enter(|| wire::status(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    let text = status.to_string();
    eprintln!("status:\n{text}");
    for needle in ["from_ep_1", "to_ep_2", "prefilter", "tcx-ingress", "tcx-egress", " link ", "deny_default"]
    {
        assert!(text.contains(needle), "{needle:?} missing from status:\n{text}");
    }
    // The prefilter, the two shared endpoint programs and a stub per endpoint hook.
    assert_eq!(status.programs.len(), 7, "{text}");
    assert_eq!(status.attachments.len(), 5, "{text}");
    assert!(status.attachments.iter().all(|a| a.problem.is_none()), "{text}");
    assert!(status.counter("endpoint 2 (lxcB)", "deny_default") >= 2, "two denied SYNs at least: {text}");
    assert!(status.counter("prefilter", "pass_v4") > 0, "A's packets passed the prefilter: {text}");
    let ct4 = status.maps.iter().find(|m| m.name == "ct4").expect("ct4 listed");
    assert!(ct4.used.is_some_and(|n| n > 0), "conntrack holds the allowed connections: {text}");

    // 6. Down: nothing of sluice's remains, and what was denied flows.
    let link_ids: Vec<u32> = hooks_of(&swapped).values().map(|(link, _)| *link).collect();
    let down = topo.node.enter(|| wire::down(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    eprintln!("down:\n{down}");
    assert!(down.warnings.is_empty(), "{down}");
    assert!(!pin.exists(), "the pin dir is gone");
    for id in link_ids {
        assert!(!Link::exists(&*sys, id).expect("link lookup"), "link {id} is gone");
    }
    topo.node.enter(|| {
        for dev in ["lxcA", "lxcB"] {
            assert_eq!(device_hooks(&sys, dev), DeviceHooks::default(), "{dev}: no hooks left");
        }
    });
    assert_eq!(probe_tcp(&topo, 9090), (true, true), "with no programs, A to B:9090 flows");
    let again = topo.node.enter(|| wire::down(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    assert!(again.removed.is_empty(), "a second down finds nothing: {again}");
    eprintln!("total {:?}", start.elapsed());
}

/// The netlink fallback, on demand: clsact + cls_bpf and IFLA_XDP, recorded in a pinned
/// map so that status and down find them.
#[test]
fn netlink_fallback_attach_status_down() {
    if !gate("netlink_fallback_attach_status_down") {
        return;
    }
    let sys = sys::kernel();
    let topo = Topology::build();
    let cfg = topo.node_config();
    let plan = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let pin = topo.pin_dir().to_path_buf();
    let opts =
        AttachOptions { xdp_device: Some("lxcA".into()), netlink_only: true, ..AttachOptions::default() };

    let report = topo.node.enter(|| {
        load::load_and_pin(&sys, &plan, &pin).unwrap_or_else(|e| panic!("{e}"));
        wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}"))
    });
    eprintln!("netlink attach:\n{report}");
    assert!(report.attached.iter().all(|a| a.via.mechanism() == Mechanism::Netlink), "{report}");
    assert!(link_pins(&pin).is_empty(), "no links");
    assert!(pin.join(wire::NETLINK_RECORDS).exists(), "the attachments are recorded");
    let ids = pinned_program_ids(&sys, &pin);
    topo.node.enter(|| {
        let b = device_hooks(&sys, "lxcB");
        assert!(b.clsact && b.tcx_ingress.is_empty(), "{b:?}");
        assert_eq!(b.filters, [Some(ids["from_ep_2"]), Some(ids["to_ep_2"])], "{b:?}");
        assert_ne!(device_hooks(&sys, "lxcA").xdp, XdpAttached::None);
    });
    check_policy(&topo, "netlink attached");

    // Again: unchanged; with new programs pinned: swapped in place, still one filter each.
    let again = topo.node.enter(|| wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}")));
    assert!(again.attached.iter().all(|a| a.action == Action::Unchanged), "{again}");
    repin_programs(&sys, &plan, &pin, &report);
    let new_ids = pinned_program_ids(&sys, &pin);
    let swapped = topo.node.enter(|| wire::attach(&sys, &cfg, &pin, &opts).unwrap_or_else(|e| panic!("{e}")));
    for a in &swapped.attached {
        assert_eq!(a.action, Action::Swapped { from: ids[&a.want.program] }, "{}", a.want.program);
    }
    topo.node.enter(|| {
        let b = device_hooks(&sys, "lxcB");
        assert_eq!(b.filters, [Some(new_ids["from_ep_2"]), Some(new_ids["to_ep_2"])], "{b:?}");
    });
    check_policy(&topo, "after the netlink swap");

    let status = topo.node.enter(|| wire::status(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    let text = status.to_string();
    eprintln!("status:\n{text}");
    assert!(text.contains("netlink") && text.contains("tc-ingress") && text.contains("cls_bpf"), "{text}");
    assert!(status.attachments.iter().all(|a| a.problem.is_none()), "{text}");
    assert!(status.counter("endpoint 2 (lxcB)", "deny_default") > 0, "{text}");

    // Down from another namespace is refused before anything changes.
    let err = wire::down(&sys, &pin).expect_err("not the node namespace");
    assert!(matches!(err, WireError::OtherNetns { .. }), "{err}");
    assert!(pin.join(wire::NETLINK_RECORDS).exists());

    let down = topo.node.enter(|| wire::down(&sys, &pin).unwrap_or_else(|e| panic!("{e}")));
    eprintln!("down:\n{down}");
    assert!(down.warnings.is_empty(), "{down}");
    assert!(!pin.exists(), "the pin dir is gone");
    topo.node.enter(|| {
        for dev in ["lxcA", "lxcB"] {
            assert_eq!(
                device_hooks(&sys, dev),
                DeviceHooks::default(),
                "{dev}: no qdisc, filter or XDP left"
            );
        }
    });
    assert_eq!(probe_tcp(&topo, 9090), (true, true), "with no programs, A to B:9090 flows");
}
