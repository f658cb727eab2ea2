//! Forwarding in `from-endpoint` programs: after the egress policy allows a packet, a local
//! endpoint gets it by redirect (new Ethernet header, TTL decremented), an overlay peer's
//! prefix gets it encapsulated (tunnel key + redirect to the VXLAN device), anything else is
//! routed by `bpf_fib_lookup` (redirect with the next hop's MACs, or `bpf_redirect_neigh`
//! when the neighbor is unknown), and what none of them takes goes to the stack.
//!
//! Every case runs in the simulator and, as root, through BPF_PROG_TEST_RUN inside a fresh
//! network namespace whose FIB the test builds (a veth, a neighbor, routes), so the
//! kernel's FIB answers are known; the simulator is given the same answers. Verdicts,
//! redirect targets and output bytes must agree, and every output IPv4 header checksum
//! must verify.

use sluice::maps::fwd::{
    fwd_cfg, fwd_cfg_writes, lxc_writes, overlay_mac, tunnel_writes, LxcEntry, TunnelEntry,
};
use sluice::maps::policy::Reason;
use sluice::node::endpoints::{endpoint_objects, EndpointSpec, PolicyPlan};
use sluice::node::load::{apply_writes, load_plan};
use sluice::node::sim::{self, SimNode};
use sluice::node::Plan;
use sluice::packet::checksum::verify_ipv4_header;
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys::TestRunOpts;
use sluice_verifier_sim::exec::{Context, FibAnswer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 20);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 0x10);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 0x20);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const NODE_MAC_B: [u8; 6] = [2, 0, 0, 0, 1, 0xb];
const LXC_B_IFINDEX: u32 = 4242;
const VXLAN_IFINDEX: u32 = 4343;
const UNDERLAY_LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const UNDERLAY_PEER: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];

fn policy() -> PolicyPlan {
    PolicyPlan {
        endpoints: vec![
            EndpointSpec {
                index: 1,
                name: "a".into(),
                ipv4: Some(A4),
                ipv6: Some(A6),
                identity: 1001,
                ingress_enforced: false,
                egress_enforced: false,
            },
            EndpointSpec {
                index: 2,
                name: "b".into(),
                ipv4: Some(B4),
                ipv6: Some(B6),
                identity: 1002,
                ingress_enforced: false,
                egress_enforced: false,
            },
        ],
        ipcache_v4: vec![(u32::from(A4), 32, 1001), (u32::from(B4), 32, 1002)],
        ipcache_v6: vec![(u128::from(A6), 128, 1001), (u128::from(B6), 128, 1002)],
        rules: vec![],
    }
}

fn plan() -> Plan {
    Plan { node: "fwd-test".into(), objects: endpoint_objects(&policy()).expect("generates") }
}

fn forwarding_writes(flags: u32) -> Vec<sluice::maps::writes::MapWrites> {
    let lxc = [B4.into(), B6.into()].map(|addr: IpAddr| LxcEntry {
        addr,
        ifindex: LXC_B_IFINDEX,
        ep: 2,
        mac: MAC_B,
        node_mac: NODE_MAC_B,
    });
    let tunnel = [("10.0.2.0", 24u8), ("fd00:0:2::", 64)].map(|(p, len)| TunnelEntry {
        prefix: p.parse().expect("literal"),
        len,
        remote: UNDERLAY_PEER,
        vni: 2,
        peer_mac: overlay_mac(UNDERLAY_PEER),
        local_mac: overlay_mac(UNDERLAY_LOCAL),
        ifindex: VXLAN_IFINDEX,
    });
    vec![lxc_writes(&lxc), tunnel_writes(&tunnel), fwd_cfg_writes(flags)]
}

/// Where a forwarded packet should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// `TC_ACT_OK`, the packet untouched.
    Stack,
    /// `TC_ACT_SHOT`.
    Drop,
    /// Redirect to this ifindex with this Ethernet header (dst, src).
    Redirect(u32, [u8; 6], [u8; 6]),
    /// Tunnel key (vni, remote) and redirect to the overlay device.
    Tunnel(u32, Ipv4Addr),
    /// FIB success: redirect to the FIB's device with its MACs.
    Fib,
    /// FIB without neighbor: `bpf_redirect_neigh` to the FIB's device, MACs untouched.
    Neigh,
}

struct Case {
    what: &'static str,
    packet: Vec<u8>,
    want: Want,
}

fn eth() -> PacketBuilder {
    PacketBuilder::ethernet(MAC_A, GW_MAC)
}

fn v4(dst: Ipv4Addr) -> Vec<u8> {
    eth().ipv4(A4, dst).tcp(40000, 8080, TcpFlags::SYN, 1, 0).build()
}

fn v6(dst: Ipv6Addr) -> Vec<u8> {
    eth().ipv6(A6, dst).udp(40000, 53).payload(b"q").build()
}

/// The namespace's FIB (built in [`kernel_fib`]): these next hops exist.
const FIB_V4_ROUTED: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const FIB_V4_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
const FIB_V4_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const FIB_V6_ROUTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
const FIB_V6_NO_NEIGH: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 1);

fn cases() -> Vec<Case> {
    let to_b = Want::Redirect(LXC_B_IFINDEX, MAC_B, NODE_MAC_B);
    let tunnel = Want::Tunnel(2, UNDERLAY_PEER);
    vec![
        Case { what: "v4 to a local endpoint", packet: v4(B4), want: to_b },
        Case { what: "v6 to a local endpoint", packet: v6(B6), want: to_b },
        Case {
            what: "v4 ICMP echo to a local endpoint",
            packet: eth().ipv4(A4, B4).icmpv4_echo(7, 1).payload(b"ping").build(),
            want: to_b,
        },
        Case {
            what: "v4 TTL 1 to a local endpoint: the stack answers",
            packet: eth().ipv4(A4, B4).ttl(1).tcp(40000, 8080, TcpFlags::SYN, 1, 0).build(),
            want: Want::Stack,
        },
        Case {
            what: "v6 hop limit 1 to a local endpoint: the stack answers",
            packet: eth().ipv6(A6, B6).hop_limit(1).udp(1, 2).build(),
            want: Want::Stack,
        },
        Case {
            what: "v4 TTL 2 still forwarded",
            packet: eth().ipv4(A4, B4).ttl(2).tcp(40000, 8080, TcpFlags::SYN, 1, 0).build(),
            want: to_b,
        },
        Case {
            what: "v4 TTL 255 with a checksum that wraps",
            packet: eth().ipv4(A4, B4).ttl(255).ident(0xffff).tcp(1, 2, TcpFlags::SYN, 1, 0).build(),
            want: to_b,
        },
        Case { what: "v4 to an overlay peer", packet: v4(Ipv4Addr::new(10, 0, 2, 7)), want: tunnel },
        Case { what: "v6 to an overlay peer", packet: v6("fd00:0:2::7".parse().unwrap()), want: tunnel },
        Case { what: "v4 routed by the FIB", packet: v4(FIB_V4_ROUTED), want: Want::Fib },
        Case { what: "v4 routed, neighbor unknown", packet: v4(FIB_V4_NO_NEIGH), want: Want::Neigh },
        Case { what: "v4 to the node itself: the stack", packet: v4(FIB_V4_LOCAL), want: Want::Stack },
        Case { what: "v6 routed by the FIB", packet: v6(FIB_V6_ROUTED), want: Want::Fib },
        Case { what: "v6 routed, neighbor unknown", packet: v6(FIB_V6_NO_NEIGH), want: Want::Neigh },
        Case {
            what: "v4 with no route: the stack",
            packet: v4(Ipv4Addr::new(192, 168, 77, 1)),
            want: Want::Stack,
        },
        Case {
            what: "spoofed source: dropped, never forwarded",
            packet: eth().ipv4(Ipv4Addr::new(10, 0, 1, 99), B4).tcp(1, 2, TcpFlags::SYN, 1, 0).build(),
            want: Want::Drop,
        },
        Case {
            what: "VLAN-tagged: the stack",
            packet: eth().vlan(7).ipv4(A4, B4).tcp(40000, 8080, TcpFlags::SYN, 1, 0).build(),
            want: Want::Stack,
        },
        Case {
            what: "ARP: the stack",
            packet: eth().ethertype_raw(0x0806, &[0u8; 28]).build(),
            want: Want::Stack,
        },
    ]
}

/// The FIB answer the test namespace gives for a packet (see [`kernel_fib`]).
fn fib_answer(packet: &[u8], fib_dev: (u32, [u8; 6])) -> Option<FibAnswer> {
    let dst: IpAddr = match u16::from_be_bytes([packet[12], packet[13]]) {
        0x0800 => Ipv4Addr::from(<[u8; 4]>::try_from(&packet[30..34]).ok()?).into(),
        0x86dd => Ipv6Addr::from(<[u8; 16]>::try_from(&packet[38..54]).ok()?).into(),
        _ => return None,
    };
    let (ifindex, smac) = fib_dev;
    if dst == IpAddr::from(FIB_V4_ROUTED) || dst == IpAddr::from(FIB_V6_ROUTED) {
        Some(FibAnswer { ret: 0, ifindex, smac, dmac: NEXT_HOP_MAC })
    } else if dst == IpAddr::from(FIB_V4_NO_NEIGH) || dst == IpAddr::from(FIB_V6_NO_NEIGH) {
        Some(FibAnswer { ret: 7, ifindex, ..FibAnswer::default() })
    } else {
        None
    }
}

/// What the packet must look like after forwarding with this Ethernet header.
fn routed(packet: &[u8], dst: Option<[u8; 6]>, src: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Some(d) = dst {
        p[..6].copy_from_slice(&d);
    }
    if let Some(s) = src {
        p[6..12].copy_from_slice(&s);
    }
    match u16::from_be_bytes([p[12], p[13]]) {
        0x0800 => {
            p[22] -= 1;
            p[24..26].copy_from_slice(&[0, 0]);
            let sum = sluice::packet::checksum::ipv4_header(&p[14..34]);
            p[24..26].copy_from_slice(&sum.to_be_bytes());
        }
        _ => p[21] -= 1,
    }
    p
}

/// Check one outcome against the case; `fib_dev` is the FIB's egress device.
fn check(
    case: &Case,
    retval: u64,
    out: &[u8],
    redirect: Option<u32>,
    fib_dev: (u32, [u8; 6]),
) -> Result<(), String> {
    let fail = |m: String| Err(format!("{}: {m}", case.what));
    let (want_ret, want_pkt, want_dev) = match case.want {
        Want::Stack => (0, case.packet.clone(), None),
        Want::Drop => (2, case.packet.clone(), None),
        Want::Redirect(dev, dst, src) => (7, routed(&case.packet, Some(dst), Some(src)), Some(dev)),
        Want::Tunnel(..) => (
            7,
            routed(&case.packet, Some(overlay_mac(UNDERLAY_PEER)), Some(overlay_mac(UNDERLAY_LOCAL))),
            Some(VXLAN_IFINDEX),
        ),
        Want::Fib => (7, routed(&case.packet, Some(NEXT_HOP_MAC), Some(fib_dev.1)), Some(fib_dev.0)),
        Want::Neigh => (7, routed(&case.packet, None, None), Some(fib_dev.0)),
    };
    if retval != want_ret {
        return fail(format!("verdict {retval}, want {want_ret}"));
    }
    if out != want_pkt.as_slice() {
        return fail(format!("output\n  {out:02x?}\nwant\n  {want_pkt:02x?}"));
    }
    if let (Some(got), Some(want)) = (redirect, want_dev) {
        if got != want {
            return fail(format!("redirected to {got}, want {want}"));
        }
    }
    if u16::from_be_bytes([out[12], out[13]]) == 0x0800 && !verify_ipv4_header(&out[14..34]) {
        return fail("IPv4 header checksum does not verify".into());
    }
    Ok(())
}

const ALL: u32 = fwd_cfg::LOCAL | fwd_cfg::OVERLAY | fwd_cfg::FIB;

/// The simulator's FIB device stands in for the kernel test's `fw0`.
const SIM_FIB_DEV: (u32, [u8; 6]) = (77, [2, 0, 0, 0, 7, 7]);

fn sim_node(flags: u32) -> SimNode {
    let mut node = SimNode::new(&plan()).expect("verifier-sim accepts the endpoint programs");
    sim::apply_writes(&mut node.maps, &forwarding_writes(flags)).expect("writes");
    node
}

fn sim_run(node: &mut SimNode, case: &Case, fib_dev: (u32, [u8; 6])) -> (u64, Vec<u8>, Option<u32>, bool) {
    let mut ctx = Context::new(case.packet.clone());
    ctx.fib = fib_answer(&case.packet, fib_dev);
    let out = node.run_with("from_ep_1", &mut ctx).expect("runs");
    if let (Want::Tunnel(vni, remote), 7) = (case.want, out.retval) {
        let key = ctx.tunnel_key.expect("a tunnel key was set");
        assert_eq!((key.tunnel_id, key.remote_ipv4, key.ttl), (vni, u32::from(remote), 64), "{}", case.what);
    }
    (out.retval, out.packet, out.redirect.map(|r| r.0), out.redirect_neigh)
}

#[test]
fn forwarding_in_the_simulator() {
    let mut node = sim_node(ALL);
    let mut failures = Vec::new();
    for case in cases() {
        let (retval, out, redirect, neigh) = sim_run(&mut node, &case, SIM_FIB_DEV);
        if let Err(e) = check(&case, retval, &out, redirect, SIM_FIB_DEV) {
            failures.push(e);
        }
        if neigh != (case.want == Want::Neigh) {
            failures.push(format!("{}: redirect_neigh {neigh}", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_unwired_node_hands_allowed_packets_to_the_stack() {
    let mut node = sim_node(0);
    for case in cases().into_iter().filter(|c| c.want != Want::Drop) {
        let (retval, out, ..) = sim_run(&mut node, &case, SIM_FIB_DEV);
        assert_eq!((retval, out), (0, case.packet.clone()), "{}", case.what);
    }
    let reason = Reason::AllowUnenforced as u32 + Reason::COUNT;
    assert!(node.counter("ep_stats", reason) > 0, "allowed packets are still counted");
}

/// Build the test namespace's FIB: `fw0` (10.99.0.1/24, fd99::1/64) up with its peer,
/// permanent neighbors 10.99.0.2 / fd99::2, routes to 10.200/16 and fd00:200::/32 through
/// them, to 10.201/16 and fd00:201::/32 through next hops with no neighbor entry, and
/// forwarding on. Returns `fw0`'s ifindex and MAC.
fn kernel_fib(ns: &sluice::netlink::NetNs) -> (u32, [u8; 6]) {
    use sluice::netlink::{sysctl, Netlink, Route};
    let nl = Netlink::open_in(ns).expect("netlink in the test namespace");
    let lo = nl.ifindex("lo").expect("lo");
    nl.set_up(lo).expect("lo up");
    let fw0 = nl.create_veth("fw0", "fw1", None).expect("veth");
    let fw1 = nl.ifindex("fw1").expect("fw1");
    nl.set_up(fw0).expect("up");
    nl.set_up(fw1).expect("up");
    sysctl::write(Some(ns), "net.ipv6.conf.fw0.accept_dad", "0").expect("sysctl");
    nl.add_address(fw0, "10.99.0.1".parse().unwrap(), 24).expect("address");
    nl.add_address(fw0, "fd99::1".parse().unwrap(), 64).expect("address");
    nl.add_neighbor(fw0, "10.99.0.2".parse().unwrap(), NEXT_HOP_MAC).expect("neighbor");
    nl.add_neighbor(fw0, "fd99::2".parse().unwrap(), NEXT_HOP_MAC).expect("neighbor");
    let routes = [
        ("10.200.0.0/16", "10.99.0.2"),
        ("10.201.0.0/16", "10.99.0.3"),
        ("fd00:200::/32", "fd99::2"),
        ("fd00:201::/32", "fd99::3"),
    ];
    for (dst, via) in routes {
        let route = Route::new(dst.parse().unwrap()).via(via.parse().unwrap()).dev(fw0).onlink();
        nl.add_route(&route).unwrap_or_else(|e| panic!("route {dst}: {e}"));
    }
    sysctl::ip_forward(Some(ns), true).expect("ip_forward");
    sysctl::ipv6_forwarding(Some(ns), true).expect("ipv6 forwarding");
    let mac = nl.link_info(fw0).expect("fw0").mac.expect("fw0 has a MAC");
    (fw0, mac)
}

#[test]
fn forwarding_in_the_kernel_agrees_with_the_simulator() {
    if !sluice::sys::require_kernel("forwarding_in_the_kernel_agrees_with_the_simulator") {
        return;
    }
    let plan = plan();
    let loaded = load_plan(&sluice::sys::kernel(), &plan).expect("the kernel verifier accepts the programs");
    apply_writes(&loaded.maps, &forwarding_writes(ALL)).expect("writes");
    let name = format!("slfw-{}", std::process::id());
    let _ = std::fs::remove_file(format!("/run/netns/{name}"));
    let ns = sluice::netlink::NetNs::create(&name).expect("a test namespace");
    let failures = ns
        .run_in(|| {
            let fib_dev = kernel_fib(&ns);
            let mut node = sim_node(ALL);
            let mut failures = Vec::new();
            for case in cases() {
                let r = loaded.programs["from_ep_1"]
                    .test_run(&TestRunOpts::packet(&case.packet))
                    .unwrap_or_else(|e| panic!("{}: test run: {e}", case.what));
                if let Err(e) = check(&case, u64::from(r.retval), &r.data_out, None, fib_dev) {
                    failures.push(format!("kernel: {e}"));
                }
                let (retval, out, ..) = sim_run(&mut node, &case, fib_dev);
                if (u64::from(r.retval), r.data_out.as_slice()) != (retval, out.as_slice()) {
                    failures.push(format!("{}: kernel and simulator differ", case.what));
                }
            }
            failures
        })
        .expect("runs in the namespace");
    ns.delete().expect("namespace removed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
