//! Events from the endpoint-policy programs: with events on, a dropped flow and a new
//! allowed connection each leave one record on the pinned ring buffer that `sluice monitor`
//! decodes into the flow as it was; the per-CPU rate budget caps them; with events off,
//! nothing is written.

use sluice::golden::probes::flow_frame;
use sluice::maps::policy::Reason;
use sluice::model;
use sluice::monitor::{set_events, Flow, FlowKind, FlowReason, EVENTS_ALL};
use sluice::node::load::{load_and_pin, unload};
use sluice::node::plan;
use sluice::policy::FlowKey;
use sluice::sys::{Map, Program, RingBuf, TestRunOpts};
use std::net::IpAddr;
use std::path::PathBuf;

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = unload(&sluice::sys::kernel(), &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(src: &str, dst: &str, dport: u16, sport: u16) -> FlowKey {
    let a = |s: &str| s.parse::<IpAddr>().expect("literal");
    FlowKey { src: a(src), dst: a(dst), proto: 6, sport, dport }
}

#[test]
fn drops_and_new_connections_become_flows() {
    if !sluice::sys::require_kernel("drops_and_new_connections_become_flows") {
        return;
    }
    let sys = sluice::sys::kernel();
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/sluice-test-events-{}", std::process::id())));
    let cfg = model::default_node();
    load_and_pin(&sys, &plan(&cfg).expect("plans"), &pins.0).expect("loads");
    let events = Map::from_pin(&sys, &pins.0.join("maps/events")).expect("events pinned");
    let mut ring = RingBuf::new(&events).expect("maps the ring");
    // The default node numbers endpoints by name: backend 1, db 2, frontend 3.
    let to_frontend = Program::from_pin(&sys, &pins.0.join("programs/to_ep_3")).expect("pinned");
    let run = |k: &FlowKey| to_frontend.test_run(&TestRunOpts::packet(&flow_frame(k))).expect("runs").retval;

    // Events off (the default): nothing is written.
    assert_eq!(run(&key("203.0.113.9", "10.0.1.10", 22, 40001)), 2);
    assert_eq!(ring.drain(|_| {}), 0, "no events while they are off");

    set_events(&sys, &pins.0, EVENTS_ALL, 0).expect("events on");
    assert_eq!(run(&key("203.0.113.9", "10.0.1.10", 22, 40002)), 2, "the world may not reach 22/tcp");
    assert_eq!(run(&key("203.0.113.9", "10.0.1.10", 80, 40003)), 0, "the world may reach 80/tcp");
    let mut flows = Vec::new();
    ring.drain(|rec| flows.push(Flow::decode(rec).expect("decodes")));
    assert_eq!(flows.len(), 2, "{flows:?}");
    let (drop, new) = (&flows[0], &flows[1]);
    assert_eq!(drop.kind, FlowKind::Drop);
    assert_eq!(drop.reason, FlowReason::Known(Reason::DenyDefault));
    assert_eq!(
        (drop.src_addr, drop.dst_addr),
        (Some(key("203.0.113.9", "10.0.1.10", 0, 0).src), Some(key("203.0.113.9", "10.0.1.10", 0, 0).dst))
    );
    assert_eq!((drop.src_port, drop.dst_port, drop.protocol), (40002, 22, 6));
    assert_eq!(drop.endpoint, 3);
    assert_eq!(drop.src_identity, 9, "an outside IPv4 address is world-ipv4");
    assert_eq!(new.kind, FlowKind::Verdict);
    assert_eq!(new.reason, FlowReason::Known(Reason::AllowNew));
    assert_eq!(new.dst_port, 80);
    assert_eq!(new.dst_identity, drop.dst_identity, "the endpoint's own identity");
    assert!(new.dst_identity >= 256, "a label-set identity");
    eprintln!("{drop}\n{new}");

    // A budget of one event per second per CPU: five drops, one event. The budget is per
    // CPU, so the thread stays on one; the window the two events above opened on it is let
    // run out first, so exactly one of the five may be sent: none means a limiter that
    // drops everything, more means one that does not limit.
    let _pinned = PinnedToThisCpu::new();
    set_events(&sys, &pins.0, EVENTS_ALL, 1).expect("rate");
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    for sport in 40010..40015 {
        assert_eq!(run(&key("203.0.113.9", "10.0.1.10", 22, sport)), 2);
    }
    let mut limited = Vec::new();
    ring.drain(|rec| limited.push(Flow::decode(rec).expect("decodes")));
    assert_eq!(limited.len(), 1, "five drops under a budget of one per second on one CPU: {limited:?}");
    assert_eq!(
        (limited[0].kind, limited[0].src_port),
        (FlowKind::Drop, 40010),
        "the first drop is the one sent"
    );
}

/// Keeps the calling thread on the CPU it runs on now, and lets it run anywhere again on drop.
struct PinnedToThisCpu(libc::cpu_set_t);

impl PinnedToThisCpu {
    fn new() -> PinnedToThisCpu {
        // SAFETY: cpu_set_t is plain data; the calls get valid pointers to it and its size.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut old), 0, "sched_getaffinity");
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0, "sched_getcpu");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0, "sched_setaffinity to CPU {cpu}");
            PinnedToThisCpu(old)
        }
    }
}

impl Drop for PinnedToThisCpu {
    fn drop(&mut self) {
        // SAFETY: as in new; the set is the one sched_getaffinity filled.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}
