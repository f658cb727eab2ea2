//! Kernel tests of the event path: records a real XDP program writes with
//! `bpf_ringbuf_output` are read back through [`RingBuf`]'s mmap consumer and printed by
//! `sluice monitor` ([`sluice::monitor`]).
//!
//! Every test starts with `require_kernel`. The test program copies `len` bytes of its
//! packet onto its stack and outputs them, so each `BPF_PROG_TEST_RUN` writes exactly the
//! record the test chose. Object names and pin paths carry the process id and a counter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::maps::policy::Reason;
use sluice::monitor::{
    self, Direction, EventConfig, Family, Flow, FlowKind, FlowReason, EVENTS_ALL, EVENTS_DROP,
};
use sluice::sys::{
    self, ringbuf, Map, MapKind, MapSpec, ProgSpec, ProgType, Program, RingBuf, SysError, Syscall,
    TestRunOpts,
};
use sluice_asm::{helpers, Builder, JmpCond, Reg, Size};

/// The ring size the tests use: four pages.
const RING: u32 = 4096 * 4;
const XDP_PASS: u32 = 2;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}_{n}", std::process::id() % 100_000)
}

fn kernel() -> Arc<dyn Syscall> {
    sys::kernel()
}

fn ring_map() -> Map {
    Map::create(&kernel(), &MapSpec::new(&unique("ev"), MapKind::RingBuf, 0, 0, RING))
        .expect("ring buffer map")
}

fn config_map() -> Map {
    Map::create(&kernel(), &MapSpec::new(&unique("evc"), MapKind::Array, 4, 8, 1)).expect("ev_config map")
}

/// An XDP program that copies the first `len` bytes of its packet onto its stack and
/// outputs them to the ring buffer `events`. With `gated`, it does so only while the
/// flags word of `ev_config` is not zero, as the datapath does.
fn event_program(len: usize, gated: bool) -> sluice_asm::Program {
    assert!(len.is_multiple_of(4) && len <= 64, "whole words that fit the frame");
    let base = -(len.div_ceil(8) as i16 * 8);
    let mut b = Builder::new();
    let out = b.new_label("out");
    b.mov(Reg::R6, Reg::R1);
    if gated {
        b.ld_map_value(Reg::R7, "ev_config", 0);
        b.load(Size::W, Reg::R7, Reg::R7, 0);
        b.jmp(JmpCond::Eq, Reg::R7, 0, out);
    }
    b.load(Size::W, Reg::R2, Reg::R6, 0); // xdp_md.data
    b.load(Size::W, Reg::R3, Reg::R6, 4); // xdp_md.data_end
    b.mov(Reg::R4, Reg::R2);
    b.add(Reg::R4, len as i32);
    b.jmp(JmpCond::Gt, Reg::R4, Reg::R3, out);
    for at in (0..len).step_by(4) {
        b.load(Size::W, Reg::R5, Reg::R2, at as i16);
        b.store(Size::W, Reg::R10, base + at as i16, Reg::R5);
    }
    b.ld_map(Reg::R1, "events");
    b.mov(Reg::R2, Reg::R10);
    b.add(Reg::R2, i32::from(base));
    b.mov(Reg::R3, len as i32);
    b.mov(Reg::R4, 0);
    b.call(helpers::RINGBUF_OUTPUT);
    b.place(out);
    b.ret(XDP_PASS as i32);
    b.build().expect("the test program builds")
}

/// Load `program` with `events` (and `ev_config`) bound to these maps.
fn load(program: &sluice_asm::Program, events: &Map, config: Option<&Map>) -> Program {
    let bound = program
        .relocate(|name| match name {
            "events" => Some(events.fd().as_raw_fd()),
            "ev_config" => config.map(|c| c.fd().as_raw_fd()),
            _ => None,
        })
        .expect("every map name resolves");
    let bytes = bound.encode().expect("encodes");
    let name = unique("evp");
    Program::load(&kernel(), &ProgSpec::new(&name, ProgType::Xdp, &bytes))
        .unwrap_or_else(|e| panic!("load: {e}"))
}

fn run_once(prog: &Program, packet: &[u8]) {
    let result = prog.test_run(&TestRunOpts::packet(packet)).expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.retval, XDP_PASS);
}

fn v4(a: [u8; 4]) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::from(a)))
}

fn flows() -> [Flow; 3] {
    let allow = Flow {
        kind: FlowKind::Verdict,
        reason: FlowReason::Known(Reason::AllowNew),
        direction: Direction::Egress,
        endpoint: 3,
        family: Family::V4,
        protocol: 6,
        src_identity: 4321,
        dst_identity: 5678,
        src_addr: v4([10, 0, 1, 5]),
        dst_addr: v4([10, 0, 2, 9]),
        src_port: 40000,
        dst_port: 80,
    };
    let deny_v6 = Flow {
        kind: FlowKind::Drop,
        reason: FlowReason::Known(Reason::DenyPolicy),
        direction: Direction::Ingress,
        endpoint: 12,
        family: Family::V6,
        protocol: 17,
        src_identity: 2,
        dst_identity: 70_001,
        src_addr: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        dst_addr: Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x12))),
        src_port: 5353,
        dst_port: 53,
    };
    let unknown = Flow { reason: FlowReason::Unknown(200), endpoint: 65535, ..allow.clone() };
    [allow, deny_v6, unknown]
}

/// A flow told apart by its endpoint index.
fn numbered(n: u16) -> Flow {
    Flow { endpoint: n, ..flows()[0].clone() }
}

#[test]
fn three_test_runs_give_exactly_three_flows() {
    if !sys::require_kernel("three_test_runs_give_exactly_three_flows") {
        return;
    }
    let events = ring_map();
    let prog = load(&event_program(52, false), &events, None);
    let mut ring = RingBuf::new(&events).expect("mmap the ring");
    assert_eq!(ring.capacity(), RING as usize);
    assert!(!ring.poll(Duration::from_millis(10)).expect("poll"), "nothing written yet");

    let want = flows();
    for flow in &want {
        run_once(&prog, &flow.to_record());
    }
    assert!(ring.poll(Duration::from_millis(100)).expect("poll"), "three records are ready");
    let mut got = Vec::new();
    let n = ring.drain(|rec| got.push(Flow::decode(rec)));
    assert_eq!(n, 3);
    assert_eq!(got, want.iter().cloned().map(Ok).collect::<Vec<_>>());
    assert_eq!(ring.consumer_position(), 3 * ringbuf::record_size(52) as u64);
    assert_eq!(ring.pending(), 0);
    assert_eq!(ring.drain(|_| panic!("nothing is left")), 0);
}

#[test]
fn records_that_wrap_past_the_end_read_whole() {
    if !sys::require_kernel("records_that_wrap_past_the_end_read_whole") {
        return;
    }
    let events = ring_map();
    let long = load(&event_program(52, false), &events, None);
    let short = load(&event_program(28, false), &events, None);
    let mut ring = RingBuf::new(&events).expect("mmap the ring");

    // One 40-byte record first, so the 64-byte ones that follow do not line up with the
    // end of the ring: one of them straddles it.
    run_once(&short, &numbered(9999).to_record());
    let mut first = Vec::new();
    assert_eq!(ring.drain(|rec| first.push(rec.to_vec())), 1);
    assert_eq!(
        first,
        [numbered(9999).to_record()[..28].to_vec()],
        "a short record, cut as the program cut it"
    );

    let (batches, per_batch) = (5u16, 100u16);
    let mut pos = ringbuf::record_size(28);
    let mut straddled = 0;
    for batch in 0..batches {
        for i in 0..per_batch {
            run_once(&long, &numbered(batch * per_batch + i).to_record());
        }
        let mut got = Vec::new();
        ring.drain(|rec| got.push(Flow::decode(rec)));
        let want: Vec<_> = (0..per_batch).map(|i| Ok(numbered(batch * per_batch + i))).collect();
        assert_eq!(got, want, "batch {batch}");
        for _ in 0..per_batch {
            let start = pos % RING as usize;
            if start + ringbuf::record_size(52) > RING as usize {
                straddled += 1;
            }
            pos += ringbuf::record_size(52);
        }
    }
    assert!(pos > RING as usize, "more than one pass around the ring");
    assert!(straddled >= 1, "a record crossed the end of the ring");
    assert_eq!(ring.consumer_position(), pos as u64);
}

#[test]
fn ring_needs_a_ring_buffer_map() {
    if !sys::require_kernel("ring_needs_a_ring_buffer_map") {
        return;
    }
    let err = RingBuf::new(&config_map()).unwrap_err();
    assert!(matches!(err, SysError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("not a ring buffer"), "{err}");
}

#[test]
fn the_ring_outlives_its_map_handle() {
    if !sys::require_kernel("the_ring_outlives_its_map_handle") {
        return;
    }
    let events = ring_map();
    let prog = load(&event_program(52, false), &events, None);
    let mut ring = RingBuf::new(&events).expect("mmap the ring");
    drop(events);
    run_once(&prog, &flows()[1].to_record());
    assert!(ring.poll(Duration::from_secs(1)).expect("poll"));
    let mut got = Vec::new();
    ring.drain(|rec| got.push(Flow::decode(rec)));
    assert_eq!(got, [Ok(flows()[1].clone())]);
}

/// `<bpffs>/sluice_test_*/maps/{events,ev_config}` as `sluice load` pins them; removed on
/// drop, even on panic.
struct Pinned {
    dir: PathBuf,
    events: Map,
    config: Map,
}

impl Pinned {
    fn new() -> Pinned {
        let dir = Path::new(sys::DEFAULT_BPFFS).join(format!("sluice_test_{}", unique("mon")));
        sys::ensure_bpffs(&dir).expect("bpffs directory");
        std::fs::create_dir_all(dir.join("maps")).expect("maps directory");
        let (events, config) = (ring_map(), config_map());
        events.pin(&dir.join("maps/events")).expect("pin events");
        config.pin(&dir.join("maps/ev_config")).expect("pin ev_config");
        Pinned { dir, events, config }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn monitor_switches_events_on_prints_flows_and_switches_them_back() {
    if !sys::require_kernel("monitor_switches_events_on_prints_flows_and_switches_them_back") {
        return;
    }
    let pinned = Pinned::new();
    let sys = kernel();
    monitor::set_events(&sys, &pinned.dir, 0, 500).expect("events off, rate 500");
    assert_eq!(monitor::get_events(&sys, &pinned.dir).expect("read"), EventConfig { flags: 0, rate: 500 });

    // A datapath stand-in: emits a numbered flow per run, but only while events are on.
    let prog = load(&event_program(52, true), &pinned.events, Some(&pinned.config));
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, give_up) = (Arc::clone(&stop), Arc::clone(&give_up));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut n = 0u16;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    give_up.store(true, Ordering::Relaxed);
                    break;
                }
                run_once(&prog, &numbered(n).to_record());
                n = n.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut out = Vec::new();
    let result = monitor::run_until(&sys, &pinned.dir, false, Some(3), &mut out, &give_up);
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer thread");
    result.expect("monitor");
    assert!(!give_up.load(Ordering::Relaxed), "the monitor got its flows in time");

    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let mut last = None;
    for line in &lines {
        let ep: u16 = line
            .strip_prefix("egress ep ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(*line, numbered(ep).to_string());
        assert!(last.is_none_or(|l| ep > l), "flows in order: {text}");
        last = Some(ep);
    }
    assert_eq!(
        monitor::get_events(&sys, &pinned.dir).expect("read"),
        EventConfig { flags: 0, rate: 500 },
        "flags switched back off, rate untouched"
    );
}

#[test]
fn monitor_prints_json_and_leaves_events_that_were_on() {
    if !sys::require_kernel("monitor_prints_json_and_leaves_events_that_were_on") {
        return;
    }
    let pinned = Pinned::new();
    let sys = kernel();
    monitor::set_events(&sys, &pinned.dir, EVENTS_DROP, 0).expect("drops only");
    let prog = load(&event_program(52, true), &pinned.events, Some(&pinned.config));
    let want = flows();
    for flow in &want[..2] {
        run_once(&prog, &flow.to_record());
    }
    // A record that is not an event: reported, not counted as a flow.
    let mut bad = want[2].to_record();
    bad[0] = 7;
    run_once(&prog, &bad);
    run_once(&prog, &want[2].to_record());

    let mut out = Vec::new();
    monitor::run(&sys, &pinned.dir, true, Some(3), &mut out).expect("monitor");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        want[0].to_json(),
        want[1].to_json(),
        r#"{"error":"event kind 7 is neither a verdict (1) nor a drop (2)"}"#.to_string(),
        want[2].to_json(),
    ];
    assert_eq!(lines, expected, "{text}");
    assert_eq!(
        monitor::get_events(&sys, &pinned.dir).expect("read"),
        EventConfig { flags: EVENTS_DROP, rate: 0 },
        "flags that were on stay as they were"
    );
    monitor::set_events(&sys, &pinned.dir, EVENTS_ALL, 1000).expect("on");
    assert_eq!(
        monitor::get_events(&sys, &pinned.dir).expect("read"),
        EventConfig { flags: EVENTS_ALL, rate: 1000 }
    );
}

#[test]
fn monitor_without_a_loaded_node_says_so() {
    if !sys::require_kernel("monitor_without_a_loaded_node_says_so") {
        return;
    }
    let dir = Path::new(sys::DEFAULT_BPFFS).join(format!("sluice_test_{}", unique("none")));
    let err = monitor::run(&kernel(), &dir, false, Some(1), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no sluice node is loaded"), "{err}");
}

/// `sluice monitor --config`: a `deny_policy` drop is followed by the rules that denied it
/// (the demo fixture's db is isolated by two policies, and none allows the frontend on 5432).
#[test]
fn monitor_explains_policy_drops_from_the_node_file() {
    if !sys::require_kernel("monitor_explains_policy_drops_from_the_node_file") {
        return;
    }
    let path = "fixtures/policy/demo.yaml";
    let text = std::fs::read_to_string(path).expect("the demo fixture");
    let cfg = sluice::model::parse_str(&text, path).expect("parses");
    let sources = sluice::model::sources::policy_sources(&text, path).expect("sources");
    let annotate = |flow: &Flow| {
        let direction = match flow.direction {
            Direction::Ingress => sluice::model::Direction::Ingress,
            Direction::Egress => sluice::model::Direction::Egress,
        };
        let addrs = (flow.src_addr?, flow.dst_addr?);
        let j = sluice::policy::explain::explain_drop(
            &cfg,
            &sources,
            addrs,
            flow.protocol,
            flow.dst_port,
            direction,
        )?;
        Some(monitor::Annotation { lines: j.lines(path), json: j.to_json(path) })
    };
    let drop = Flow {
        kind: FlowKind::Drop,
        reason: FlowReason::Known(Reason::DenyPolicy),
        direction: Direction::Ingress,
        endpoint: 2,
        protocol: 6,
        src_addr: v4([10, 0, 1, 10]),
        dst_addr: v4([10, 0, 1, 30]),
        src_port: 40000,
        dst_port: 5432,
        ..flows()[0].clone()
    };

    let pinned = Pinned::new();
    let sys = kernel();
    monitor::set_events(&sys, &pinned.dir, EVENTS_ALL, 500).expect("events on");
    let prog = load(&event_program(52, true), &pinned.events, Some(&pinned.config));
    let (stop, give_up) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let producer = {
        let (record, stop, give_up) = (drop.to_record(), Arc::clone(&stop), Arc::clone(&give_up));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    give_up.store(true, Ordering::Relaxed);
                    break;
                }
                run_once(&prog, &record);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut out = Vec::new();
    let result =
        monitor::run_until_annotated(&sys, &pinned.dir, false, Some(1), &mut out, &give_up, &annotate);
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer thread");
    result.expect("monitor");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        format!(
            "{drop}\n    ingress db: denied: no rule allows it; isolated by\n      NetworkPolicy shop/db rule 0 at \
             {path}:119:3 (spec)\n      CiliumNetworkPolicy shop/guard-rails rule 1 at {path}:106:5 (specs[1])\n"
        )
    );
}
