//! The tc service load balancer (`codegen::lb`, issue 5): golden packets through the
//! simulator and, when privileged, through `BPF_PROG_TEST_RUN` on the same map contents
//! (`maps::lb::service_writes`). Both must give the expected verdict, reason counter and
//! output bytes, and agree with each other on the `lb_ct` and `lb_aff` entries they leave
//! (DESIGN invariant 3). Every output packet's checksums are verified by the code below,
//! written for this test (IPv4 header, TCP/UDP pseudo-header sums, SCTP CRC32c).
//!
//! Kernel runs are gated by `sys::require_kernel` (skip line without root, failure under
//! `SLUICE_REQUIRE_KERNEL=1`). Kernel and simulator clocks differ (`LAST_SEEN`,
//! `LAST_USED` are compared only as "set").

#[path = "support/checksums.rs"]
mod checksums;

use checksums::{sctp_segment, verify_checksums};
use sluice::codegen::lb as lbgen;
use sluice::golden::{check, run_kernel, run_sim, Case, Observation, Output};
use sluice::lb::hash::hash_v4;
use sluice::lb::maglev::TableSize;
use sluice::maps::lb::{
    aff_value, be_value, ct_entry_key, ct_key, ct_value, hint, hint_bit, service_writes, CtPurge, LbError,
    LbReason, LbState, TC_ACT_OK, TC_ACT_SHOT,
};
use sluice::maps::writes::MapWrites;
use sluice::model::policy::Protocol;
use sluice::model::service::{Backend, BackendState, Frontend, LbAlgorithm, Service, SessionAffinity};
use sluice::node::load::{self, Loaded};
use sluice::node::sim::{self, SimNode};
use sluice::node::{Object, Plan};
use sluice::packet::{PacketBuilder, TcpFlags};
use sluice::sys;
use sluice_verifier_sim::spec::ProgKind;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const MAC_N: [u8; 6] = [2, 0, 0, 0, 0, 0x1];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const BE4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const BE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
const MAGLEV: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const DRAIN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

// ---- packets ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
    Sctp,
}

fn frame(src: IpAddr, dst: IpAddr, l4: L4, sport: u16, dport: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet(MAC_C, MAC_N);
    let payload = b"hello, service";
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = eth.ipv4(s, d);
            match l4 {
                L4::Tcp => ip.tcp(sport, dport, TcpFlags::SYN, 1000, 0).payload(payload).build(),
                L4::Udp => ip.udp(sport, dport).payload(payload).build(),
                L4::Sctp => ip.raw_l4(132, &sctp_segment(sport, dport)).build(),
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = eth.ipv6(s, d);
            match l4 {
                L4::Tcp => ip.tcp(sport, dport, TcpFlags::SYN, 1000, 0).payload(payload).build(),
                L4::Udp => ip.udp(sport, dport).payload(payload).build(),
                L4::Sctp => ip.raw_l4(132, &sctp_segment(sport, dport)).build(),
            }
        }
        _ => unreachable!("test frames are of one family"),
    }
}

// ---- services ----

fn be(addr: impl Into<IpAddr>, port: u16, state: BackendState) -> Backend {
    Backend { address: addr.into(), port, state, weight: 1 }
}

fn fe(vip: impl Into<IpAddr>, port: u16, protocol: Protocol, backends: Vec<Backend>) -> Frontend {
    let mut backends = backends;
    backends.sort();
    Frontend { vip: vip.into(), port, protocol, port_name: String::new(), backends }
}

fn svc(name: &str, algorithm: LbAlgorithm, affinity: SessionAffinity, frontends: Vec<Frontend>) -> Service {
    Service { namespace: "default".into(), name: name.into(), algorithm, affinity, frontends }
}

const A: BackendState = BackendState::Active;

fn v4_backends(i: u8, n: u8) -> Vec<Backend> {
    (1..=n).map(|j| be(Ipv4Addr::new(10, 0, i, j), 8080, A)).collect()
}

/// The fixture: one service per behaviour.
fn services() -> Vec<Service> {
    let none = SessionAffinity::None;
    let web = svc(
        "web",
        LbAlgorithm::Random,
        none,
        vec![
            fe(VIP4, 80, Protocol::Tcp, vec![be(BE4, 8080, A)]),
            fe(VIP4, 53, Protocol::Udp, vec![be(BE4, 5353, A)]),
            fe(VIP4, 3868, Protocol::Sctp, vec![be(BE4, 3868, A)]),
            fe(VIP6, 80, Protocol::Tcp, vec![be(BE6, 8080, A)]),
            fe(VIP6, 53, Protocol::Udp, vec![be(BE6, 5353, A)]),
            fe(VIP6, 3868, Protocol::Sctp, vec![be(BE6, 3868, A)]),
        ],
    );
    let sticky = svc(
        "sticky",
        LbAlgorithm::Random,
        SessionAffinity::ClientIp { timeout_seconds: 600 },
        vec![fe(STICKY, 80, Protocol::Tcp, v4_backends(2, 2))],
    );
    let empty = svc(
        "empty",
        LbAlgorithm::Random,
        none,
        vec![fe(EMPTY, 80, Protocol::Tcp, vec![]), fe(EMPTY6, 80, Protocol::Tcp, vec![])],
    );
    let maglev = svc(
        "maglev",
        LbAlgorithm::Maglev(TableSize::new(31).expect("prime")),
        none,
        vec![fe(MAGLEV, 80, Protocol::Tcp, v4_backends(4, 3))],
    );
    let drain =
        svc("drain", LbAlgorithm::Random, none, vec![fe(DRAIN, 80, Protocol::Tcp, v4_backends(5, 2))]);
    vec![web, sticky, empty, maglev, drain]
}

// ---- the rig: simulator and kernel side by side ----

fn plan(writes: Vec<MapWrites>) -> Plan {
    let program = lbgen::generate().unwrap_or_else(|e| panic!("{e}"));
    let maps = lbgen::map_defs()
        .into_iter()
        .map(|d| if ["lb_ct", "lb_ct4", "lb_aff"].contains(&d.name) { d.with_max_entries(16_384) } else { d })
        .collect();
    Plan {
        node: "lb-test".into(),
        objects: vec![Object { name: "lb".into(), kind: ProgKind::SchedCls, program, maps, writes }],
    }
}

struct Rig {
    sim: SimNode,
    kernel: Option<Loaded>,
    state: LbState,
    steps: usize,
}

impl Rig {
    fn new(test: &str, services: &[Service]) -> Rig {
        Rig::build(Some(test), services)
    }

    /// `test` names a test that also runs in the kernel when it can; `None`: simulator only.
    fn build(test: Option<&str>, services: &[Service]) -> Rig {
        let (writes, state) = service_writes(services, &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan(writes);
        let sim = SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"));
        let kernel = test
            .is_some_and(sys::require_kernel)
            .then(|| load::load_plan(&sys::kernel(), &plan).unwrap_or_else(|e| panic!("{e}")));
        Rig { sim, kernel, state, steps: 0 }
    }

    fn update(&mut self, services: &[Service]) {
        let (writes, state) = service_writes(services, &self.state).unwrap_or_else(|e| panic!("{e}"));
        self.write(&writes);
        // Then the tracked connections of removed frontends and backends, as the node's
        // live update does: each engine's own `lb_ct` read back.
        let purge = CtPurge::between(&self.state, &state);
        for map in CtPurge::MAPS {
            let ct = self.sim.maps.get(map).expect("planned");
            let sim_ct: Vec<(Vec<u8>, Vec<u8>)> =
                ct.keys().into_iter().map(|k| (k.clone(), ct.lookup(&k).expect("listed").to_vec())).collect();
            sim::apply_writes(&mut self.sim.maps, &[purge.writes(map, sim_ct)])
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(k) = &self.kernel {
                let entries = k.maps[map].entries().unwrap_or_else(|e| panic!("{e}"));
                load::apply_writes(&k.maps, &[purge.writes(map, entries)]).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        self.state = state;
    }

    /// Apply raw writes to both engines' maps.
    fn write(&mut self, writes: &[MapWrites]) {
        sim::apply_writes(&mut self.sim.maps, writes).unwrap_or_else(|e| panic!("{e}"));
        if let Some(k) = &self.kernel {
            load::apply_writes(&k.maps, writes).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Overwrite one `lb_hint` filter with `byte` in every byte (both engines).
    fn fill_hint(&mut self, filter: u32, byte: u8) {
        let mut w =
            MapWrites { map: "lb_hint", key_size: 4, value_size: hint::BYTES, ..MapWrites::default() };
        w.put(&filter.to_le_bytes(), &vec![byte; hint::BYTES]);
        self.write(&[w]);
    }

    /// Whether the simulator's `lb_hint` filter has this bit set.
    fn hint_set(&self, filter: u32, bit: u32) -> bool {
        let v = self.sim.maps.get("lb_hint").and_then(|m| m.lookup(&filter.to_le_bytes())).expect("lb_hint");
        v[(bit / 8) as usize] & (1 << (bit % 8)) != 0
    }

    /// Run one packet; the observation must be `expect` in both engines. Returns the output.
    fn step(&mut self, what: &str, packet: Vec<u8>, reason: LbReason, output: Output) -> Vec<u8> {
        self.steps += 1;
        let case = Case {
            name: format!("{}: {what}", self.steps),
            program: "lb",
            packet,
            verdict: reason.verdict() as u32,
            counters: BTreeMap::from([(("lb_stats", reason as u32), 1)]),
            output,
        };
        let obs = run_sim(&mut self.sim, &case).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = check(&case, &obs) {
            panic!("simulator: {e}");
        }
        // Every packet the program wrote (untouched inputs are the test's own).
        let written = if obs.packet != case.packet { verify_checksums(&obs.packet) } else { Ok(()) };
        if let Err(e) = written {
            panic!("simulator, case `{}`: bad {e} in the output", case.name);
        }
        if let Some(k) = &self.kernel {
            let kobs: Observation =
                run_kernel(k, &case).unwrap_or_else(|e| panic!("{e}")).expect("frames are long enough");
            if let Err(e) = check(&case, &kobs) {
                panic!("kernel: {e}");
            }
            assert_eq!(kobs, obs, "case `{}`: kernel and simulator differ", case.name);
        }
        obs.packet
    }

    /// `lb_ct` and `lb_aff` with their timestamps zeroed, from the simulator, checked equal
    /// to the kernel's.
    fn conntrack(&self) -> BTreeMap<(&'static str, Vec<u8>), Vec<u8>> {
        let timestamp = |map: &str| if map == "lb_aff" { aff_value::LAST_USED } else { ct_value::CREATED };
        let strip = |map: &str, v: &[u8]| -> Vec<u8> {
            let ts = timestamp(map);
            assert!(v[ts..ts + 8] != [0; 8] || self.kernel.is_none(), "{map}: timestamp not set");
            let mut v = v.to_vec();
            v[ts..ts + 8].fill(0);
            v
        };
        let mut out = BTreeMap::new();
        for map in ["lb_ct", "lb_ct4", "lb_aff"] {
            let m = self.sim.maps.get(map).expect("planned");
            for k in m.keys() {
                let v = m.lookup(&k).expect("listed");
                let mut v = v.to_vec();
                let ts = timestamp(map);
                v[ts..ts + 8].fill(0);
                out.insert((map, k.clone()), v);
            }
        }
        if let Some(k) = &self.kernel {
            let mut kout = BTreeMap::new();
            for map in ["lb_ct", "lb_ct4", "lb_aff"] {
                let m = &k.maps[map];
                for key in m.keys() {
                    let key = key.unwrap_or_else(|e| panic!("{e}"));
                    let v = m.lookup(&key).unwrap_or_else(|e| panic!("{e}")).expect("listed");
                    kout.insert((map, key), strip(map, &v));
                }
            }
            assert_eq!(kout, out, "lb_ct/lb_aff differ between kernel and simulator");
        }
        out
    }
}

fn proto_num(l4: L4) -> u8 {
    match l4 {
        L4::Tcp => 6,
        L4::Udp => 17,
        L4::Sctp => 132,
    }
}

/// The backend the datapath picks for a new flow of a random-algorithm frontend with
/// these active backends (the slot order is the frontend's backend order).
fn pick_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, active: &[Ipv4Addr]) -> Ipv4Addr {
    active[(hash_v4(src, dst, sport, dport, 6) % active.len() as u32) as usize]
}

// ---- tests ----

#[test]
fn lb_listing_snapshot() {
    let program = lbgen::generate().unwrap_or_else(|e| panic!("{e}"));
    let listing = sluice_asm::text::listing(&program);
    insta::with_settings!({snapshot_path => "../golden/snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("lb_listing", listing);
    });
}

/// DNAT of new and tracked connections and reverse NAT of replies, IPv4 and IPv6 × TCP,
/// UDP, SCTP; then the pass and drop reasons.
#[test]
fn dnat_and_reverse_nat() {
    let mut rig = Rig::new("dnat_and_reverse_nat", &services());
    let fams: [(IpAddr, IpAddr, IpAddr); 2] =
        [(CLIENT4.into(), VIP4.into(), BE4.into()), (CLIENT6.into(), VIP6.into(), BE6.into())];
    for (client, vip, backend) in fams {
        for (l4, port, be_port) in [(L4::Tcp, 80, 8080), (L4::Udp, 53, 5353), (L4::Sctp, 3868, 3868)] {
            let what = format!("{client} → {vip} {l4:?}");
            let sport = 40_000;
            let fwd = frame(client, vip, l4, sport, port);
            let dnat = frame(client, backend, l4, sport, be_port);
            rig.step(
                &format!("{what}: new"),
                fwd.clone(),
                LbReason::NewConnection,
                Output::Bytes(dnat.clone()),
            );
            rig.step(&format!("{what}: tracked"), fwd, LbReason::Established, Output::Bytes(dnat));
            let reply = frame(backend, client, l4, be_port, sport);
            let revnat = frame(vip, client, l4, port, sport);
            rig.step(&format!("{what}: reply"), reply, LbReason::RevNat, Output::Bytes(revnat));
            let ct = rig.conntrack();
            let p = proto_num(l4);
            for (key, dir) in [
                (ct_entry_key(client, vip, sport, port, p, ct_key::FORWARD), "forward"),
                (ct_entry_key(backend, client, be_port, sport, p, ct_key::REPLY), "reply"),
            ] {
                assert!(ct.contains_key(&key), "{what}: no {dir} lb_ct entry");
            }
        }
    }
    // IPv4 UDP without checksum: stays without one.
    let mut zero = frame(CLIENT4.into(), VIP4.into(), L4::Udp, 40_001, 53);
    zero[14 + 20 + 6..14 + 20 + 8].fill(0);
    let mut want = frame(CLIENT4.into(), BE4.into(), L4::Udp, 40_001, 5353);
    want[14 + 20 + 6..14 + 20 + 8].fill(0);
    rig.step("udp zero checksum", zero, LbReason::NewConnection, Output::Bytes(want));
    // IPv4 with options.
    let opts = PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv4(CLIENT4, VIP4)
        .ipv4_options(&[1, 1, 1, 1])
        .tcp(40_002, 80, TcpFlags::SYN, 1, 0)
        .build();
    let want = PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv4(CLIENT4, BE4)
        .ipv4_options(&[1, 1, 1, 1])
        .tcp(40_002, 8080, TcpFlags::SYN, 1, 0)
        .build();
    rig.step("ipv4 options", opts, LbReason::NewConnection, Output::Bytes(want));
    // VLAN-tagged (two tags): the L3 offset is 22.
    let tagged = PacketBuilder::ethernet(MAC_C, MAC_N)
        .vlan(5)
        .vlan(6)
        .ipv4(CLIENT4, VIP4)
        .tcp(40_003, 80, TcpFlags::SYN, 1, 0)
        .build();
    let want = PacketBuilder::ethernet(MAC_C, MAC_N)
        .vlan(5)
        .vlan(6)
        .ipv4(CLIENT4, BE4)
        .tcp(40_003, 8080, TcpFlags::SYN, 1, 0)
        .build();
    rig.step("two vlan tags", tagged, LbReason::NewConnection, Output::Bytes(want));
    // Documented limits: later IPv4 fragments and IPv6 extension headers pass untouched.
    let later = PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv4(CLIENT4, VIP4)
        .ipv4_fragment(8, false)
        .raw_l4(6, &[0; 24])
        .build();
    rig.step("later ipv4 fragment", later, LbReason::PassNotL4, Output::Unchanged);
    let ext = PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv6(CLIENT6, VIP6)
        .ipv6_ext(sluice::packet::ExtHeader::HopByHop(vec![]))
        .tcp(40_000, 80, TcpFlags::SYN, 1, 0)
        .build();
    rig.step("ipv6 extension header", ext, LbReason::PassNotL4, Output::Unchanged);
    // Pass and drop.
    let other = frame(CLIENT4.into(), Ipv4Addr::new(10, 96, 0, 99).into(), L4::Tcp, 40_000, 80);
    rig.step("no such service", other, LbReason::PassNoService, Output::Unchanged);
    let wrong_port = frame(CLIENT4.into(), VIP4.into(), L4::Tcp, 40_000, 81);
    rig.step("service port not served", wrong_port, LbReason::PassNoService, Output::Unchanged);
    let arp = PacketBuilder::ethernet(MAC_C, [0xff; 6]).ethertype_raw(0x0806, &[0; 28]).build();
    rig.step("not ip", arp, LbReason::PassNotIp, Output::Unchanged);
    let icmp = PacketBuilder::ethernet(MAC_C, MAC_N).ipv4(CLIENT4, VIP4).icmpv4_echo(1, 1).build();
    rig.step("icmp", icmp, LbReason::PassNotL4, Output::Unchanged);
    let mut short = frame(CLIENT4.into(), VIP4.into(), L4::Tcp, 40_000, 80);
    short.truncate(14 + 20 + 10);
    rig.step("truncated tcp", short, LbReason::PassMalformed, Output::Unchanged);
    let udp = frame(CLIENT4.into(), EMPTY.into(), L4::Udp, 40_000, 80);
    rig.step("UDP to a TCP-only frontend", udp, LbReason::PassNoService, Output::Unchanged);
    // No backend: TCP gets a reset back out of the device (as Linux answers a closed port).
    let tcp =
        |src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), flags: u16, seq: u32, ack: u32, macs: bool| {
            let (a, b) = if macs { (MAC_C, MAC_N) } else { (MAC_N, MAC_C) };
            PacketBuilder::ethernet(a, b)
                .ipv4(src, dst)
                .tcp(ports.0, ports.1, TcpFlags(flags), seq, ack)
                .payload(b"hello, service")
                .build()
        };
    let syn = tcp(CLIENT4, EMPTY, (40_000, 80), 0x02, 1000, 0, true);
    let rst = tcp(EMPTY, CLIENT4, (80, 40_000), 0x14, 0, 1000 + 14 + 1, false);
    rig.step("no backend: SYN gets RST|ACK", syn, LbReason::NoBackendReset, Output::Bytes(rst));
    let ack = tcp(CLIENT4, EMPTY, (40_000, 80), 0x18, 1000, 5555, true);
    let rst = tcp(EMPTY, CLIENT4, (80, 40_000), 0x04, 5555, 0, false);
    rig.step("no backend: ACK gets RST", ack, LbReason::NoBackendReset, Output::Bytes(rst));
    let reset = tcp(CLIENT4, EMPTY, (40_000, 80), 0x04, 1000, 0, true);
    rig.step("no backend: a reset is dropped", reset, LbReason::NoBackend, Output::Unchanged);
    let v6 = PacketBuilder::ethernet(MAC_C, MAC_N)
        .ipv6(CLIENT6, EMPTY6)
        .tcp(40_000, 80, TcpFlags::SYN, 7, 0)
        .build();
    let want = PacketBuilder::ethernet(MAC_N, MAC_C)
        .ipv6(EMPTY6, CLIENT6)
        .tcp(80, 40_000, TcpFlags(0x14), 0, 8)
        .build();
    rig.step("no backend, IPv6: SYN gets RST|ACK", v6, LbReason::NoBackendReset, Output::Bytes(want));
    let out = rig.sim.run("lb", &tcp(CLIENT4, EMPTY, (40_000, 80), 0x02, 1, 0, true)).expect("runs");
    assert_eq!(out.redirect, Some((1, 0)), "redirected to the egress of the device it came in on");
    assert_eq!(LbReason::NoBackend.verdict(), TC_ACT_SHOT);
    assert_eq!(LbReason::RevNat.verdict(), TC_ACT_OK);
}

/// ClientIP affinity: a client's later connections follow its first one, even where the
/// hash would pick the other backend.
#[test]
fn client_ip_affinity() {
    let mut rig = Rig::new("client_ip_affinity", &services());
    let active = [Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2)];
    let first = pick_v4(CLIENT4, STICKY, 50_000, 80, &active);
    let dnat = |sport: u16, to: Ipv4Addr| frame(CLIENT4.into(), to.into(), L4::Tcp, sport, 8080);
    let fwd = |sport: u16| frame(CLIENT4.into(), STICKY.into(), L4::Tcp, sport, 80);
    rig.step("first connection", fwd(50_000), LbReason::NewConnection, Output::Bytes(dnat(50_000, first)));
    let other =
        (50_001..51_000).find(|&s| pick_v4(CLIENT4, STICKY, s, 80, &active) != first).expect("some port");
    rig.step(
        "hash says the other backend",
        fwd(other),
        LbReason::Affinity,
        Output::Bytes(dnat(other, first)),
    );
    let ct = rig.conntrack();
    assert_eq!(ct.keys().filter(|(m, _)| *m == "lb_aff").count(), 1, "one affinity entry");
    // Another client is not affected.
    let c2 = Ipv4Addr::new(10, 0, 9, 10);
    let want = pick_v4(c2, STICKY, other, 80, &active);
    rig.step(
        "another client",
        frame(c2.into(), STICKY.into(), L4::Tcp, other, 80),
        LbReason::NewConnection,
        Output::Bytes(frame(c2.into(), want.into(), L4::Tcp, other, 8080)),
    );
}

/// A terminating backend keeps its connections and takes no new ones.
#[test]
fn terminating_backend() {
    let mut services = services();
    let mut rig = Rig::new("terminating_backend", &services);
    let active = [Ipv4Addr::new(10, 0, 5, 1), Ipv4Addr::new(10, 0, 5, 2)];
    let fwd = |sport: u16| frame(CLIENT4.into(), DRAIN.into(), L4::Tcp, sport, 80);
    let to = |sport: u16, be: Ipv4Addr| frame(CLIENT4.into(), be.into(), L4::Tcp, sport, 8080);
    let on_second =
        (1000..2000).find(|&s| pick_v4(CLIENT4, DRAIN, s, 80, &active) == active[1]).expect("port");
    rig.step(
        "connection to the second backend",
        fwd(on_second),
        LbReason::NewConnection,
        Output::Bytes(to(on_second, active[1])),
    );
    // The second backend starts terminating.
    services[4].frontends[0].backends[1].state = BackendState::Terminating;
    rig.update(&services);
    let be_id = rig.state.backends[&(active[1].into(), 8080, 6)];
    let entry =
        rig.sim.maps.get("lb_be").and_then(|m| m.lookup(&be_id.to_le_bytes())).expect("kept in lb_be");
    assert_eq!(entry[be_value::STATE], be_value::TERMINATING);
    rig.step(
        "its connection stays",
        fwd(on_second),
        LbReason::Established,
        Output::Bytes(to(on_second, active[1])),
    );
    let new = (2000..3000).find(|&s| pick_v4(CLIENT4, DRAIN, s, 80, &active) == active[1]).expect("port");
    rig.step(
        "a new one does not go there",
        fwd(new),
        LbReason::NewConnection,
        Output::Bytes(to(new, active[0])),
    );
    // Removed: the pinned connection is chosen anew.
    services[4].frontends[0].backends.remove(1);
    rig.update(&services);
    rig.step(
        "removed: chosen anew",
        fwd(on_second),
        LbReason::NewConnection,
        Output::Bytes(to(on_second, active[0])),
    );
}

/// Maglev and stable ids: after one backend of three is removed, connections pinned to the
/// survivors stay there, and the survivors keep their ids.
#[test]
fn maglev_removal_keeps_pinned_connections() {
    let mut services = services();
    let mut rig = Rig::new("maglev_removal_keeps_pinned_connections", &services);
    let ids_before = rig.state.clone();
    let fwd = |sport: u16| frame(CLIENT4.into(), MAGLEV.into(), L4::Tcp, sport, 80);
    let mut pinned = Vec::new();
    for sport in 3000..3030u16 {
        let out = rig.step_any(fwd(sport));
        let be = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        pinned.push((sport, be));
    }
    let removed = Ipv4Addr::new(10, 0, 4, 3);
    assert!(pinned.iter().any(|(_, b)| *b == removed), "some flow uses the backend to remove");
    services[3].frontends[0].backends.retain(|b| b.address != IpAddr::V4(removed));
    rig.update(&services);
    for (k, id) in &ids_before.backends {
        if k.0 != IpAddr::V4(removed) {
            assert_eq!(rig.state.backends.get(k), Some(id), "backend {k:?} renumbered");
        }
    }
    assert_eq!(rig.state.services, ids_before.services, "frontends renumbered");
    for (sport, be) in pinned {
        if be == removed {
            let out = rig.step_any(fwd(sport));
            assert_ne!(&out[30..34], &removed.octets(), "flow {sport} still on the removed backend");
        } else {
            rig.step(
                &format!("flow {sport} stays on {be}"),
                fwd(sport),
                LbReason::Established,
                Output::Bytes(frame(CLIENT4.into(), be.into(), L4::Tcp, sport, 8080)),
            );
        }
    }
    rig.conntrack();
}

impl Rig {
    /// Run a packet expected to be translated (new or tracked); returns the output.
    fn step_any(&mut self, packet: Vec<u8>) -> Vec<u8> {
        let sim_out = self.sim.run("lb", &packet).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sim_out.retval, 0, "translated");
        verify_checksums(&sim_out.packet).unwrap_or_else(|e| panic!("bad {e}"));
        if let Some(k) = &self.kernel {
            let mut opts = sys::TestRunOpts::packet(&packet);
            opts.repeat = 1;
            let r = k.programs["lb"].test_run(&opts).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((r.retval, &r.data_out), (0, &sim_out.packet), "kernel and simulator differ");
        }
        sim_out.packet
    }
}

// ---- service_writes: the user-space side ----

fn count(writes: &[MapWrites], map: &str) -> (usize, usize) {
    writes
        .iter()
        .filter(|w| w.map == map)
        .fold((0, 0), |(u, d), w| (u + w.updates(), d + w.deletes.len() / w.key_size.max(1)))
}

#[test]
fn service_writes_contents_and_order() {
    let (writes, state) = service_writes(&services(), &LbState::default()).expect("valid");
    // 6 + 1 + 2 + 1 + 1 frontends; backends: BE4×3 protocols, BE6×3, 2, 3, 2.
    assert_eq!(state.services.len(), 11);
    assert_eq!(state.backends.len(), 13);
    assert_eq!(count(&writes, "lb_svc"), (11, 0));
    assert_eq!(count(&writes, "lb_be"), (13, 0));
    assert_eq!(count(&writes, "lb_slot").0, 6 + 2 + 31 + 2);
    assert_eq!(state.slots.values().filter(|&&s| s == 0).count(), 2, "the empty service");
    // Removing the Maglev service and one backend of another: slots first, lb_be last.
    let mut less = services();
    less.remove(3);
    less[1].frontends[0].backends.remove(0);
    let (writes2, state2) = service_writes(&less, &state).expect("valid");
    let last = writes2.last().expect("writes");
    assert_eq!((last.map, last.updates()), ("lb_hint", 2), "the exact filters go last");
    let be_del = &writes2[writes2.len() - 2];
    assert_eq!(
        (be_del.map, be_del.updates(), be_del.deletes.is_empty()),
        ("lb_be", 0, false),
        "lb_be deletes go last but for the filters"
    );
    let slot_del =
        writes2.iter().position(|w| w.map == "lb_slot" && !w.deletes.is_empty()).expect("slot deletes");
    let svc = writes2.iter().position(|w| w.map == "lb_svc").expect("svc writes");
    assert!(svc < slot_del, "lb_svc's new slot counts before the slots go");
    assert_eq!(count(&writes2, "lb_slot").1, 31 + 1, "the Maglev table and the sticky service's second slot");
    assert_eq!(count(&writes2, "lb_be").1, 4);
    for (k, id) in &state2.backends {
        assert_eq!(state.backends.get(k), Some(id), "{k:?} renumbered");
    }
    // A new backend gets a fresh id, not a removed one.
    let mut more = less.clone();
    more[1].frontends[0].backends.push(be(Ipv4Addr::new(10, 0, 2, 9), 8080, A));
    let (_, state3) = service_writes(&more, &state2).expect("valid");
    let new_id = state3.backends[&(Ipv4Addr::new(10, 0, 2, 9).into(), 8080, 6)];
    assert!(!state.backends.values().any(|&id| id == new_id), "id {new_id} reused");
}

#[test]
fn service_writes_refuses_sctp_port_translation() {
    let bad = svc(
        "sctp",
        LbAlgorithm::Random,
        SessionAffinity::None,
        vec![fe(VIP4, 3868, Protocol::Sctp, vec![be(BE4, 3869, A)])],
    );
    match service_writes(&[bad], &LbState::default()) {
        Err(e @ LbError::SctpPortTranslation { .. }) => {
            assert!(e.to_string().contains("targetPort 3868"), "{e}");
        }
        other => panic!("expected an SCTP port error, got {other:?}"),
    }
}

#[test]
fn state_recovers_from_map_entries() {
    let (writes, state) = service_writes(&services(), &LbState::default()).expect("valid");
    let entries = |map: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        writes
            .iter()
            .filter(|w| w.map == map)
            .flat_map(|w| {
                w.keys
                    .chunks_exact(w.key_size)
                    .zip(w.values.chunks_exact(w.value_size))
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let recovered =
        LbState::recover(&entries("lb_svc"), &entries("lb_slot"), &entries("lb_be")).expect("valid");
    assert_eq!(recovered.services, state.services);
    assert_eq!(recovered.slots, state.slots);
    assert_eq!(recovered.backends, state.backends);
    let (again, state2) = service_writes(&services(), &recovered).expect("valid");
    assert_eq!(state2.backends, state.backends);
    assert!(again.iter().all(|w| w.deletes.is_empty()), "nothing stale");
}

/// The default node's Service (Maglev, weights, a terminating backend) through
/// `service_writes` and the program: the table has its 16381 slots over the two active IPv4
/// backends, the terminating one is in `lb_be` only, and a new flow goes where the Maglev
/// table of `crate::lb` says.
#[test]
fn default_node_service() {
    let text = std::fs::read_to_string("fixtures/default-node.yaml").expect("fixture");
    let cfg = sluice::model::parse_str(&text, "fixtures/default-node.yaml").unwrap_or_else(|e| panic!("{e}"));
    let (writes, state) =
        service_writes(&cfg.services, &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let v4 = state.services[&(VIP4.into(), 80, 6)];
    assert_eq!(state.slots[&v4], 16_381);
    let terminating = state.backends[&(Ipv4Addr::new(10, 0, 2, 22).into(), 8080, 6)];
    let slots: Vec<u32> = writes
        .iter()
        .filter(|w| w.map == "lb_slot")
        .flat_map(|w| {
            w.values.chunks_exact(4).map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]])).collect::<Vec<_>>()
        })
        .collect();
    assert!(!slots.contains(&terminating), "a terminating backend holds no slot");
    let mut rig = Rig::new("default_node_service", &cfg.services);
    let f = &cfg.services[0].frontends.iter().find(|f| f.vip == IpAddr::V4(VIP4)).expect("v4 frontend");
    let table = sluice::lb::maglev::Table::build(&f.maglev_backends(), TableSize::DEFAULT).expect("table");
    let active: Vec<&Backend> = f.active().collect();
    for sport in [1000u16, 2000, 3000] {
        let h = hash_v4(CLIENT4, VIP4, sport, 80, 6);
        let be = active[table.lookup(h).expect("slot") as usize].address;
        rig.step(
            &format!("default node, flow {sport}"),
            frame(CLIENT4.into(), VIP4.into(), L4::Tcp, sport, 80),
            LbReason::NewConnection,
            Output::Bytes(frame(CLIENT4.into(), be, L4::Tcp, sport, 8080)),
        );
    }
}

/// `CHECKSUM_COMPLETE` skbs (what a NIC hands tc ingress), in the simulator (the kernel's
/// test run builds `CHECKSUM_NONE` skbs): after the DNAT, `skb->csum` is still the sum of
/// the packet from the L3 header on, so the stack's checksum validation still holds; the
/// same for the reverse NAT of the replies.
#[test]
fn checksum_complete_skb_csum_follows_the_rewrite() {
    use sluice_verifier_sim::exec::{csum, Context, IpSummed};
    let mut rig = Rig::build(None, &services());
    let cases = [
        ("v4 tcp", frame(CLIENT4.into(), VIP4.into(), L4::Tcp, 41_000, 80)),
        ("v4 udp", frame(CLIENT4.into(), VIP4.into(), L4::Udp, 41_000, 53)),
        ("v6 tcp", frame(CLIENT6.into(), VIP6.into(), L4::Tcp, 41_000, 80)),
        ("v6 udp", frame(CLIENT6.into(), VIP6.into(), L4::Udp, 41_000, 53)),
        ("v4 tcp reply", frame(BE4.into(), CLIENT4.into(), L4::Tcp, 8080, 41_000)),
        ("v4 udp reply", frame(BE4.into(), CLIENT4.into(), L4::Udp, 5353, 41_000)),
        ("v6 tcp reply", frame(BE6.into(), CLIENT6.into(), L4::Tcp, 8080, 41_000)),
        ("v6 udp reply", frame(BE6.into(), CLIENT6.into(), L4::Udp, 5353, 41_000)),
    ];
    for (what, packet) in cases {
        let mut ctx = Context::new(packet.clone());
        ctx.ip_summed = IpSummed::Complete(csum::partial(&packet[14..], 0));
        let out = rig.sim.run_with("lb", &mut ctx).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(out.packet, packet, "{what}: translated");
        verify_checksums(&out.packet).unwrap_or_else(|e| panic!("{what}: bad {e}"));
        let IpSummed::Complete(c) = ctx.ip_summed else { panic!("{what}: checksum state changed") };
        assert_eq!(
            csum::from32to16(c),
            csum::from32to16(csum::partial(&out.packet[14..], 0)),
            "{what}: skb->csum no longer covers the packet"
        );
    }
}

/// Hairpin: a client that is its service's only backend connects to the VIP. The packet
/// goes to itself from the hairpin address (not from its own address), and its reply to the
/// hairpin address comes back from the VIP to it. IPv4 and IPv6, TCP.
#[test]
fn hairpin() {
    use sluice::codegen::lb::{HAIRPIN_V4, HAIRPIN_V6};
    let self4 = Ipv4Addr::new(10, 96, 0, 70);
    let self6 = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x70);
    let mut services = services();
    services.push(svc(
        "self",
        LbAlgorithm::Random,
        SessionAffinity::None,
        vec![
            fe(self4, 80, Protocol::Tcp, vec![be(CLIENT4, 8080, A)]),
            fe(self6, 80, Protocol::Tcp, vec![be(CLIENT6, 8080, A)]),
        ],
    ));
    let mut rig = Rig::new("hairpin", &services);
    let fams: [(IpAddr, IpAddr, IpAddr); 2] = [
        (CLIENT4.into(), self4.into(), HAIRPIN_V4.into()),
        (CLIENT6.into(), self6.into(), HAIRPIN_V6.into()),
    ];
    for (client, vip, hp) in fams {
        let what = format!("{client} → {vip}, its own service");
        let fwd = frame(client, vip, L4::Tcp, 45_000, 80);
        let out = frame(hp, client, L4::Tcp, 45_000, 8080);
        rig.step(&format!("{what}: new"), fwd.clone(), LbReason::NewConnection, Output::Bytes(out.clone()));
        rig.step(&format!("{what}: tracked"), fwd, LbReason::Established, Output::Bytes(out));
        let reply = frame(client, hp, L4::Tcp, 8080, 45_000);
        let want = frame(vip, client, L4::Tcp, 80, 45_000);
        rig.step(&format!("{what}: reply"), reply, LbReason::RevNat, Output::Bytes(want));
        let ct = rig.conntrack();
        let key = ct_entry_key(client, hp, 8080, 45_000, 6, ct_key::REPLY);
        assert!(ct.contains_key(&key), "{what}: the reply entry is keyed by the hairpin address");
    }
}

// ---- lb_hint: the negative filters ----

/// The bits of a filter as written by `service_writes` (its last `lb_hint` write).
fn hint_bits(writes: &[MapWrites], filter: u32) -> Vec<u8> {
    let w = writes.iter().rev().find(|w| w.map == "lb_hint").expect("lb_hint written");
    let at = w.keys.chunks_exact(4).position(|k| k == filter.to_le_bytes()).expect("filter written");
    w.values[at * hint::BYTES..(at + 1) * hint::BYTES].to_vec()
}

fn bit_of(bits: &[u8], bit: u32) -> bool {
    bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
}

/// The filters hold exactly the frontends' and backends' bits (terminating backends
/// included); a live update writes the union first and the exact filters last, so no bit is
/// clear while its entry exists.
#[test]
fn service_writes_hint_contents_and_order() {
    let (writes, state) = service_writes(&services(), &LbState::default()).expect("valid");
    assert_eq!(writes.first().map(|w| w.map), Some("lb_hint"), "the filters go first");
    assert_eq!(writes.iter().filter(|w| w.map == "lb_hint").count(), 1, "union = exact: written once");
    let (fe, be) = (hint_bits(&writes, hint::FRONTEND), hint_bits(&writes, hint::BACKEND));
    let mut want_fe = vec![0u8; hint::BYTES];
    for &(a, p, proto) in state.services.keys() {
        let bit = hint_bit(a, p, proto);
        want_fe[(bit / 8) as usize] |= 1 << (bit % 8);
    }
    assert_eq!(fe, want_fe, "frontend filter = the lb_svc keys' bits");
    for &(a, p, proto) in state.backends.keys() {
        assert!(bit_of(&be, hint_bit(a, p, proto)), "backend {a} {p}/{proto} not in the filter");
    }
    // Drain one backend and remove the Maglev service: the first write keeps the old bits,
    // the last clears the removed ones.
    let mut less = services();
    let removed = less.remove(3);
    less[3].frontends[0].backends[0].state = BackendState::Terminating; // "drain"
    let (writes2, _) = service_writes(&less, &state).expect("valid");
    let hints: Vec<&MapWrites> = writes2.iter().filter(|w| w.map == "lb_hint").collect();
    assert_eq!(hints.len(), 2, "union first, exact last");
    assert_eq!(writes2.first().map(|w| w.map), Some("lb_hint"));
    assert_eq!(writes2.last().map(|w| w.map), Some("lb_hint"));
    let union = hint_bits(&writes2[..1], hint::BACKEND);
    let exact = hint_bits(&writes2, hint::BACKEND);
    let f = &removed.frontends[0];
    let vip_bit = hint_bit(f.vip, f.port, 6);
    assert!(bit_of(&hint_bits(&writes2[..1], hint::FRONTEND), vip_bit), "removed frontend kept in the union");
    for b in &f.backends {
        let bit = hint_bit(b.address, b.port, 6);
        assert!(bit_of(&union, bit), "removed backend kept in the union");
        let in_state =
            state.backends.keys().any(|k| k != &(b.address, b.port, 6) && hint_bit(k.0, k.1, k.2) == bit);
        assert_eq!(bit_of(&exact, bit), in_state, "removed backend {} cleared at the end", b.address);
    }
    let drained = &less[3].frontends[0].backends[0];
    assert!(
        bit_of(&exact, hint_bit(drained.address, drained.port, 6)),
        "a terminating backend keeps its bit"
    );
}

/// The filter is consulted: with the bits cleared (an inconsistent state no write order
/// produces), a packet to a frontend and a backend's reply pass untouched although
/// `lb_svc` and `lb_ct` would translate them.
#[test]
fn clear_hint_bit_passes_untouched() {
    let mut rig = Rig::new("clear_hint_bit_passes_untouched", &services());
    let fwd = frame(CLIENT4.into(), VIP4.into(), L4::Tcp, 42_000, 80);
    let dnat = frame(CLIENT4.into(), BE4.into(), L4::Tcp, 42_000, 8080);
    rig.step("new, filters set", fwd.clone(), LbReason::NewConnection, Output::Bytes(dnat.clone()));
    let reply = frame(BE4.into(), CLIENT4.into(), L4::Tcp, 8080, 42_000);
    let revnat = frame(VIP4.into(), CLIENT4.into(), L4::Tcp, 80, 42_000);
    rig.step("reply, filters set", reply.clone(), LbReason::RevNat, Output::Bytes(revnat));
    rig.fill_hint(hint::BACKEND, 0);
    rig.step("reply, backend filter clear", reply, LbReason::PassNoService, Output::Unchanged);
    rig.step("tracked, backend filter clear", fwd.clone(), LbReason::Established, Output::Bytes(dnat));
    rig.fill_hint(hint::FRONTEND, 0);
    rig.step("tracked, frontend filter clear", fwd, LbReason::PassNoService, Output::Unchanged);
    let v6 = frame(CLIENT6.into(), VIP6.into(), L4::Udp, 42_000, 53);
    rig.step("new v6, frontend filter clear", v6, LbReason::PassNoService, Output::Unchanged);
}

/// Collisions: packets whose bits are set but that are neither service traffic nor a
/// backend's reply go through the full lookups and pass untouched; with every bit set, the
/// verdicts are those of the exact filters.
#[test]
fn hint_collisions_fall_back_to_the_lookups() {
    let mut rig = Rig::new("hint_collisions_fall_back_to_the_lookups", &services());
    // A destination (port 80, TCP) that is no frontend but shares a frontend's bit.
    let fe_bits: Vec<u32> = rig.state.services.keys().map(|&(a, p, proto)| hint_bit(a, p, proto)).collect();
    let be_bits: Vec<u32> = rig.state.backends.keys().map(|&(a, p, proto)| hint_bit(a, p, proto)).collect();
    let candidates =
        (0..u32::from(u16::MAX)).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i));
    let fe_twin =
        candidates.clone().find(|&a| fe_bits.contains(&hint_bit(a.into(), 80, 6))).expect("a collision");
    assert!(rig.hint_set(hint::FRONTEND, hint_bit(fe_twin.into(), 80, 6)));
    let other = frame(CLIENT4.into(), fe_twin.into(), L4::Tcp, 43_000, 80);
    rig.step("frontend bit collides, no frontend", other, LbReason::PassNoService, Output::Unchanged);
    // A source (port 8080, TCP) that is no backend but shares a backend's bit: no reply
    // entry; to a VIP it is a new connection, elsewhere it passes.
    let be_twin =
        candidates.clone().find(|&a| be_bits.contains(&hint_bit(a.into(), 8080, 6))).expect("a collision");
    assert!(rig.hint_set(hint::BACKEND, hint_bit(be_twin.into(), 8080, 6)));
    let from_twin = frame(be_twin.into(), CLIENT4.into(), L4::Tcp, 8080, 43_001);
    rig.step("backend bit collides, no reply entry", from_twin, LbReason::PassNoService, Output::Unchanged);
    let to_vip = frame(be_twin.into(), VIP4.into(), L4::Tcp, 8080, 80);
    let dnat = frame(be_twin.into(), BE4.into(), L4::Tcp, 8080, 8080);
    rig.step("backend bit collides, to a VIP", to_vip, LbReason::NewConnection, Output::Bytes(dnat));
    // Every bit set: a filter that never says no changes no verdict.
    rig.fill_hint(hint::FRONTEND, 0xff);
    rig.fill_hint(hint::BACKEND, 0xff);
    let no_service = frame(CLIENT4.into(), Ipv4Addr::new(10, 96, 0, 99).into(), L4::Tcp, 43_002, 80);
    rig.step("all bits: no such service", no_service, LbReason::PassNoService, Output::Unchanged);
    let wrong_port = frame(CLIENT4.into(), VIP4.into(), L4::Tcp, 43_002, 81);
    rig.step("all bits: port not served", wrong_port, LbReason::PassNoService, Output::Unchanged);
    let fwd = frame(CLIENT6.into(), VIP6.into(), L4::Udp, 43_003, 53);
    let dnat = frame(CLIENT6.into(), BE6.into(), L4::Udp, 43_003, 5353);
    rig.step("all bits: new", fwd, LbReason::NewConnection, Output::Bytes(dnat));
    let reply = frame(BE6.into(), CLIENT6.into(), L4::Udp, 5353, 43_003);
    let revnat = frame(VIP6.into(), CLIENT6.into(), L4::Udp, 53, 43_003);
    rig.step("all bits: reply", reply, LbReason::RevNat, Output::Bytes(revnat));
}

/// `lb_svc` before the forward `lb_ct` lookup: once a frontend is removed its tracked
/// connections pass untouched, and their backends' replies (the backends gone from
/// `lb_be` and from the backend filter) are not reverse translated.
#[test]
fn removed_frontend_stops_translating_its_connections() {
    let mut services = services();
    let mut rig = Rig::new("removed_frontend_stops_translating_its_connections", &services);
    let active = [Ipv4Addr::new(10, 0, 5, 1), Ipv4Addr::new(10, 0, 5, 2)];
    let be = pick_v4(CLIENT4, DRAIN, 44_000, 80, &active);
    let fwd = frame(CLIENT4.into(), DRAIN.into(), L4::Tcp, 44_000, 80);
    let dnat = frame(CLIENT4.into(), be.into(), L4::Tcp, 44_000, 8080);
    rig.step("new", fwd.clone(), LbReason::NewConnection, Output::Bytes(dnat.clone()));
    rig.step("tracked", fwd.clone(), LbReason::Established, Output::Bytes(dnat));
    services.retain(|s| s.name != "drain");
    rig.update(&services);
    rig.step("frontend removed: passes", fwd, LbReason::PassNoService, Output::Unchanged);
    let reply = frame(be.into(), CLIENT4.into(), L4::Tcp, 8080, 44_000);
    rig.step("its backend's reply: passes", reply, LbReason::PassNoService, Output::Unchanged);
}

/// `LbState::recover` does not read `lb_hint`: from the recovered state (a terminating
/// backend, in no slot, comes back without its protocol) the same services write the same
/// filters once, so reloading an unchanged node writes nothing to them.
#[test]
fn recovered_state_writes_the_same_filters() {
    let text = std::fs::read_to_string("fixtures/default-node.yaml").expect("fixture");
    let cfg = sluice::model::parse_str(&text, "fixtures/default-node.yaml").unwrap_or_else(|e| panic!("{e}"));
    let (writes, _) = service_writes(&cfg.services, &LbState::default()).unwrap_or_else(|e| panic!("{e}"));
    let entries = |map: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        let w = writes.iter().find(|w| w.map == map).expect("written");
        w.keys
            .chunks_exact(w.key_size)
            .zip(w.values.chunks_exact(w.value_size))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    };
    let recovered =
        LbState::recover(&entries("lb_svc"), &entries("lb_slot"), &entries("lb_be")).expect("valid");
    assert!(recovered.backends.keys().any(|k| k.2 == 0), "the terminating backend's protocol is unknown");
    let (again, _) = service_writes(&cfg.services, &recovered).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.iter().filter(|w| w.map == "lb_hint").count(), 1, "union = exact");
    for filter in [hint::FRONTEND, hint::BACKEND] {
        assert_eq!(hint_bits(&again, filter), hint_bits(&writes, filter), "filter {filter}");
    }
}
