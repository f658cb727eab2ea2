//! Identity on the wire (issue 13 item 3; `src/codegen/overlay.rs`):
//!
//! "`from-endpoint` puts the source endpoint's identity in the tunnel id (the VXLAN VNI) of
//! every packet it sends into the overlay" (cluster mode, `fwd_cfg` IDENTITY); without the
//! flag the VNI is the configured one. "`from-overlay` ... a tunnel id in
//! `1..=MAX_WIRE_IDENTITY` becomes the mark `id << 16 | MARK_MAGIC_IDENTITY`. Everything
//! else leaves the mark alone." "`to-endpoint` ... a mark whose low 16 bits are the magic
//! gives the peer's identity; without it, the ipcache as before": a remote pod whose
//! ipcache entry is stale is judged by the identity its node sent.
//!
//! Each case runs in the simulator; as root the programs also load in the kernel and the
//! `to-endpoint` and `from-overlay` cases run through BPF_PROG_TEST_RUN (with `skb->mark`
//! in the context), which must agree with the simulator.

use sluice::codegen::overlay::{self, identity_mark, FROM_OVERLAY, MARK_MAGIC_IDENTITY};
use sluice::maps::fwd::{fwd_cfg, fwd_cfg_writes, overlay_mac, tunnel_writes, TunnelEntry};
use sluice::maps::policy::{PolicyRule, INGRESS};
use sluice::node::endpoints::{endpoint_objects, EndpointSpec, PolicyPlan};
use sluice::node::load::{apply_writes, load_plan};
use sluice::node::sim::{self, SimNode};
use sluice::node::{Object, Plan};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys::TestRunOpts;
use sluice_verifier_sim::exec::{Context, TunnelKey};
use sluice_verifier_sim::spec::ProgKind;
use sluice_verifier_sim::uapi::SkBuff;
use std::mem::{offset_of, size_of};
use std::net::Ipv4Addr;

const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
/// A pod on the peer node.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
const ID_A: u32 = 1001;
const ID_B: u32 = 1002;
/// The identity the remote pod really has (the only one `b` admits).
const ID_REMOTE: u32 = 3001;
/// What this node's stale ipcache says about the remote pod's address.
const ID_STALE: u32 = 3002;
const VNI: u32 = 2;
const UNDERLAY_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const UNDERLAY_PEER: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const TC_ACT_OK: u64 = 0;
const TC_ACT_SHOT: u64 = 2;
const TC_ACT_REDIRECT: u64 = 7;

fn ep(index: u16, name: &str, ipv4: Ipv4Addr, identity: u32, ingress_enforced: bool) -> EndpointSpec {
    EndpointSpec {
        index,
        name: name.into(),
        ipv4: Some(ipv4),
        ipv6: None,
        identity,
        ingress_enforced,
        egress_enforced: false,
    }
}

fn plan() -> Plan {
    let policy = PolicyPlan {
        endpoints: vec![ep(1, "a", A4, ID_A, false), ep(2, "b", B4, ID_B, true)],
        ipcache_v4: vec![
            (u32::from(A4), 32, ID_A),
            (u32::from(B4), 32, ID_B),
            (u32::from(REMOTE), 32, ID_STALE),
        ],
        ipcache_v6: vec![],
        rules: vec![PolicyRule {
            ep: 2,
            dir: INGRESS,
            identity: ID_REMOTE,
            proto: 0,
            port: 0,
            port_prefix: 0,
            deny: false,
            proxy_port: 0,
        }],
    };
    let mut objects = endpoint_objects(&policy).expect("generates");
    objects.push(Object {
        name: FROM_OVERLAY.into(),
        kind: ProgKind::SchedCls,
        program: overlay::generate_from_overlay().expect("generates"),
        maps: overlay::map_defs(),
        writes: vec![],
    });
    Plan { node: "wire-id".into(), objects }
}

fn forwarding(flags: u32) -> Vec<sluice::maps::writes::MapWrites> {
    let tunnel = TunnelEntry {
        prefix: "10.0.2.0".parse().expect("literal"),
        len: 24,
        remote: UNDERLAY_PEER,
        vni: VNI,
        peer_mac: overlay_mac(UNDERLAY_PEER),
        local_mac: overlay_mac(UNDERLAY_LOCAL),
        ifindex: 4343,
    };
    vec![tunnel_writes(&[tunnel]), fwd_cfg_writes(flags)]
}

const WIRED: u32 = fwd_cfg::LOCAL | fwd_cfg::OVERLAY | fwd_cfg::FIB;
const CLUSTER: u32 = WIRED | fwd_cfg::IDENTITY;

fn sim_node(flags: u32) -> SimNode {
    let mut node = SimNode::new(&plan()).expect("verifier-sim accepts the programs");
    sim::apply_writes(&mut node.maps, &forwarding(flags)).expect("writes");
    node
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    PacketBuilder::ethernet(MAC, MAC).ipv4(src, dst).tcp(sport, 80, TcpFlags::SYN, 1, 0).build()
}

#[test]
fn from_endpoint_puts_the_source_identity_in_the_vni_in_cluster_mode_only() {
    // (fwd_cfg flags, the tunnel id wanted)
    let cases =
        [(CLUSTER, ID_A, "cluster mode: the identity"), (WIRED, VNI, "single-file mode: the configured VNI")];
    let mut failures = Vec::new();
    for (flags, want, what) in cases {
        let mut node = sim_node(flags);
        let mut ctx = Context::new(syn(A4, REMOTE, 40000));
        let out = node.run_with("from_ep_1", &mut ctx).expect("runs");
        let got = ctx.tunnel_key.map(|k| k.tunnel_id);
        if out.retval != TC_ACT_REDIRECT || got != Some(want) {
            failures.push(format!(
                "{what}: verdict {}, tunnel id {got:?}, want redirect with {want}",
                out.retval
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `from-overlay` cases: (what, fwd_cfg flags, tunnel key's id or no metadata, mark before,
/// mark wanted after).
fn overlay_cases() -> Vec<(&'static str, u32, Option<u32>, u32, u32)> {
    let marked = identity_mark(ID_REMOTE).expect("in range");
    vec![
        ("cluster mode, identity in the VNI", CLUSTER, Some(ID_REMOTE), 0, marked),
        ("largest wire identity", CLUSTER, Some(0xFFFF), 0, (0xFFFF << 16) | MARK_MAGIC_IDENTITY),
        ("VNI 0: no identity, the ipcache decides", CLUSTER, Some(0), 0, 0),
        ("VNI beyond the label-set range", CLUSTER, Some(0x1_0000), 7, 7),
        ("no tunnel metadata", CLUSTER, None, 7, 7),
        ("single-file mode: the VNI is not an identity", WIRED, Some(ID_REMOTE), 0, 0),
    ]
}

#[test]
fn from_overlay_turns_the_vni_into_the_identity_mark() {
    let mut failures = Vec::new();
    for (what, flags, id, before, want) in overlay_cases() {
        let mut node = sim_node(flags);
        let mut ctx = Context::new(syn(REMOTE, B4, 40000));
        ctx.skb.mark = before;
        ctx.tunnel_key = id.map(|tunnel_id| TunnelKey {
            tunnel_id,
            remote_ipv4: u32::from(UNDERLAY_PEER),
            ttl: 64,
            flags: 0,
        });
        let out = node.run_with(FROM_OVERLAY, &mut ctx).expect("runs");
        if (out.retval, ctx.skb.mark) != (TC_ACT_OK, want) {
            failures.push(format!(
                "{what}: verdict {}, mark {:#x}, want 0 and {want:#x}",
                out.retval, ctx.skb.mark
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `to-endpoint` cases: (what, mark, source port, verdict wanted). Each its own port: an
/// allowed one leaves a conntrack entry.
fn ingress_cases() -> Vec<(&'static str, u32, u16, u64)> {
    vec![
        (
            "the wire's identity wins over the stale ipcache",
            identity_mark(ID_REMOTE).unwrap(),
            41001,
            TC_ACT_OK,
        ),
        ("no mark: the stale ipcache entry is used (denied)", 0, 41002, TC_ACT_SHOT),
        ("a mark without the magic is not an identity", ID_REMOTE << 16, 41003, TC_ACT_SHOT),
        ("the wire names another identity: denied", identity_mark(ID_STALE).unwrap(), 41004, TC_ACT_SHOT),
    ]
}

#[test]
fn to_endpoint_judges_a_remote_pod_by_the_identity_on_the_wire() {
    let mut node = sim_node(CLUSTER);
    let mut failures = Vec::new();
    for (what, mark, sport, want) in ingress_cases() {
        let mut ctx = Context::new(syn(REMOTE, B4, sport));
        ctx.skb.mark = mark;
        let out = node.run_with("to_ep_2", &mut ctx).expect("runs");
        if out.retval != want {
            failures.push(format!("{what}: verdict {}, want {want}", out.retval));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An `__sk_buff` context with `mark` set (the only field the cases give).
fn skb_ctx(mark: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; size_of::<SkBuff>()];
    let at = offset_of!(SkBuff, mark);
    ctx[at..at + 4].copy_from_slice(&mark.to_le_bytes());
    ctx
}

#[test]
fn the_kernel_agrees_with_the_simulator() {
    if !sluice::sys::require_kernel("cluster_wire_identity::the_kernel_agrees_with_the_simulator") {
        return;
    }
    let plan = plan();
    let loaded = load_plan(&sluice::sys::kernel(), &plan).expect("the kernel verifier accepts the programs");
    apply_writes(&loaded.maps, &forwarding(CLUSTER)).expect("writes");
    let mut node = sim_node(CLUSTER);
    let mut failures = Vec::new();
    let run = |name: &str, packet: &[u8], mark: u32| {
        let ctx = skb_ctx(mark);
        let opts = TestRunOpts { ctx_in: Some(&ctx), ctx_out_cap: ctx.len(), ..TestRunOpts::packet(packet) };
        let r = loaded.programs[name].test_run(&opts).unwrap_or_else(|e| panic!("{name}: test run: {e}"));
        let at = offset_of!(SkBuff, mark);
        let mark_out = u32::from_le_bytes(r.ctx_out[at..at + 4].try_into().expect("4 bytes"));
        (u64::from(r.retval), mark_out)
    };
    for (what, mark, sport, want) in ingress_cases() {
        let (kernel, _) = run("to_ep_2", &syn(REMOTE, B4, sport), mark);
        let mut ctx = Context::new(syn(REMOTE, B4, sport));
        ctx.skb.mark = mark;
        let sim = node.run_with("to_ep_2", &mut ctx).expect("runs").retval;
        if (kernel, sim) != (want, want) {
            failures.push(format!("to-endpoint, {what}: kernel {kernel}, simulator {sim}, want {want}"));
        }
    }
    // BPF_PROG_TEST_RUN gives no tunnel metadata: the "no tunnel metadata" case.
    let (what, _, _, before, want) =
        overlay_cases().into_iter().find(|c| c.2.is_none()).expect("the case is in the table");
    let kernel = run(FROM_OVERLAY, &syn(REMOTE, B4, 40000), before);
    let mut ctx = Context::new(syn(REMOTE, B4, 40000));
    ctx.skb.mark = before;
    let sim = (node.run_with(FROM_OVERLAY, &mut ctx).expect("runs").retval, ctx.skb.mark);
    if kernel != (TC_ACT_OK, want) || sim != kernel {
        failures
            .push(format!("from-overlay, {what}: kernel {kernel:?}, simulator {sim:?}, want (0, {want})"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
