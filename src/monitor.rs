//! `sluice monitor` and `sluice events`: the endpoint datapath's events, read from the
//! pinned `events` ring buffer and printed as flows.
//!
//! Contract:
//! - [`Flow::decode`] reads one record in the [`event`] layout. It never panics: a record
//!   shorter than [`event::SIZE`] or with an unknown kind, direction or family is a
//!   [`DecodeError`]; an unknown reason is kept as its number. Longer records are read
//!   by their first [`event::SIZE`] bytes (room to grow).
//! - Byte order in a record: ports and addresses in network order, as the packet carried
//!   them; the endpoint index and the identities in host order (little-endian, as the
//!   datapath stores the numbers it loaded from its maps). [`Flow`] holds host-order
//!   numbers.
//! - A flow prints as one line (`Display`) and as one JSON object ([`Flow::to_json`]) with
//!   fixed field names: `kind`, `reason`, `reason_code`, `allowed`, `direction`,
//!   `endpoint`, `family`, `protocol`, `src_identity`, `dst_identity`, `src_addr`,
//!   `src_port`, `dst_addr`, `dst_port`.
//! - [`run`] switches events on only if they are off (the `ev_config` flags are 0) and
//!   puts the old flags back when it returns, whether it stopped after `count` flows, on
//!   SIGINT/SIGTERM, or on an error. Two monitors at once: the one that switched events on
//!   switches them off when it ends.

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::maps::policy::{self, ev_config, event, Reason, EGRESS, INGRESS};
use crate::maps::{u32_key, MapDef};
use crate::node::load::{self, LoadError};
use crate::sys::{Map, RingBuf, SysError, Syscall, UpdateFlags};

/// `ev_config` flag: an event for each policy verdict on a new connection.
pub const EVENTS_VERDICT: u32 = 1;
/// `ev_config` flag: an event for each drop.
pub const EVENTS_DROP: u32 = 2;
/// Both kinds of events.
pub const EVENTS_ALL: u32 = EVENTS_VERDICT | EVENTS_DROP;

/// How long one wait on the ring lasts before the stop flag is looked at again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why an event record could not be read as a flow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("event record of {len} bytes, shorter than the {need} of an event")]
    Short { len: usize, need: usize },
    #[error("event kind {0} is neither a verdict (1) nor a drop (2)")]
    Kind(u8),
    #[error("event direction {0} is neither ingress (0) nor egress (1)")]
    Direction(u8),
    #[error("event address family {0} is not 0, 4 or 6")]
    Family(u8),
}

/// Why `sluice monitor` or `sluice events` failed.
#[derive(Debug, Error)]
pub enum MonitorError {
    /// The pinned maps are missing or have another layout.
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("map `ev_config`: {0}")]
    Config(String),
    #[error("writing flows: {0}")]
    Write(#[source] std::io::Error),
}

/// What kind of event a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKind {
    /// The policy verdict on a new connection.
    Verdict,
    /// A dropped packet.
    Drop,
}

impl FlowKind {
    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::Verdict => "verdict",
            FlowKind::Drop => "drop",
        }
    }
}

/// The reason code of a record: one sluice knows, or a number from a newer datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowReason {
    Known(Reason),
    Unknown(u8),
}

impl FlowReason {
    /// The reason with index `code`.
    pub fn from_code(code: u8) -> FlowReason {
        Reason::from_index(code).map_or(FlowReason::Unknown(code), FlowReason::Known)
    }

    /// The index in the record.
    pub fn code(self) -> u8 {
        match self {
            FlowReason::Known(r) => r as u8,
            FlowReason::Unknown(code) => code,
        }
    }
}

impl fmt::Display for FlowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowReason::Known(r) => f.write_str(r.name()),
            FlowReason::Unknown(code) => write!(f, "reason_{code}"),
        }
    }
}

/// Which way the packet was going, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn code(self) -> u8 {
        match self {
            Direction::Ingress => INGRESS,
            Direction::Egress => EGRESS,
        }
    }
}

/// The network layer of the packet; `Unspecified` when it was dropped before its IP
/// header was read (a truncated frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Unspecified,
    V4,
    V6,
}

impl Family {
    /// 0, 4 or 6, as in the record.
    pub fn code(self) -> u8 {
        match self {
            Family::Unspecified => 0,
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    pub kind: FlowKind,
    pub reason: FlowReason,
    pub direction: Direction,
    /// Endpoint index (as in `ep_config`).
    pub endpoint: u16,
    pub family: Family,
    /// IP protocol number.
    pub protocol: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// `None` exactly when `family` is `Unspecified`.
    pub src_addr: Option<IpAddr>,
    pub dst_addr: Option<IpAddr>,
    /// Host order.
    pub src_port: u16,
    pub dst_port: u16,
}

fn u16_le(rec: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([rec[at], rec[at + 1]])
}

fn u16_be(rec: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([rec[at], rec[at + 1]])
}

fn u32_le(rec: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]])
}

fn addr(rec: &[u8], at: usize, family: Family) -> Option<IpAddr> {
    match family {
        Family::Unspecified => None,
        Family::V4 => Some(IpAddr::V4(Ipv4Addr::new(rec[at], rec[at + 1], rec[at + 2], rec[at + 3]))),
        Family::V6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rec[at..at + 16]);
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
    }
}

fn put_addr(rec: &mut [u8], at: usize, addr: Option<IpAddr>) {
    match addr {
        Some(IpAddr::V4(a)) => rec[at..at + 4].copy_from_slice(&a.octets()),
        Some(IpAddr::V6(a)) => rec[at..at + 16].copy_from_slice(&a.octets()),
        None => {}
    }
}

/// The name of an IP protocol, if it has a common one.
pub fn protocol_name(protocol: u8) -> Option<&'static str> {
    Some(match protocol {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        _ => return None,
    })
}

/// Protocols whose flows are told apart by ports.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

impl Flow {
    /// Read one event record.
    pub fn decode(rec: &[u8]) -> Result<Flow, DecodeError> {
        if rec.len() < event::SIZE {
            return Err(DecodeError::Short { len: rec.len(), need: event::SIZE });
        }
        let kind = match rec[event::KIND] {
            event::KIND_VERDICT => FlowKind::Verdict,
            event::KIND_DROP => FlowKind::Drop,
            other => return Err(DecodeError::Kind(other)),
        };
        let direction = match rec[event::DIR] {
            INGRESS => Direction::Ingress,
            EGRESS => Direction::Egress,
            other => return Err(DecodeError::Direction(other)),
        };
        let family = match rec[event::FAMILY] {
            0 => Family::Unspecified,
            4 => Family::V4,
            6 => Family::V6,
            other => return Err(DecodeError::Family(other)),
        };
        Ok(Flow {
            kind,
            reason: FlowReason::from_code(rec[event::REASON]),
            direction,
            endpoint: u16_le(rec, event::EP),
            family,
            protocol: rec[event::PROTO],
            src_identity: u32_le(rec, event::SRC_IDENTITY),
            dst_identity: u32_le(rec, event::DST_IDENTITY),
            src_addr: addr(rec, event::SADDR, family),
            dst_addr: addr(rec, event::DADDR, family),
            src_port: u16_be(rec, event::SPORT),
            dst_port: u16_be(rec, event::DPORT),
        })
    }

    /// The record the datapath writes for this flow (the inverse of [`Flow::decode`]);
    /// for tests and the simulator.
    pub fn to_record(&self) -> [u8; event::SIZE] {
        let mut rec = [0u8; event::SIZE];
        rec[event::KIND] = match self.kind {
            FlowKind::Verdict => event::KIND_VERDICT,
            FlowKind::Drop => event::KIND_DROP,
        };
        rec[event::REASON] = self.reason.code();
        rec[event::DIR] = self.direction.code();
        rec[event::FAMILY] = self.family.code();
        rec[event::EP..event::EP + 2].copy_from_slice(&self.endpoint.to_le_bytes());
        rec[event::PROTO] = self.protocol;
        rec[event::SRC_IDENTITY..event::SRC_IDENTITY + 4].copy_from_slice(&self.src_identity.to_le_bytes());
        rec[event::DST_IDENTITY..event::DST_IDENTITY + 4].copy_from_slice(&self.dst_identity.to_le_bytes());
        rec[event::SPORT..event::SPORT + 2].copy_from_slice(&self.src_port.to_be_bytes());
        rec[event::DPORT..event::DPORT + 2].copy_from_slice(&self.dst_port.to_be_bytes());
        put_addr(&mut rec, event::SADDR, self.src_addr);
        put_addr(&mut rec, event::DADDR, self.dst_addr);
        rec
    }

    /// Whether the packet passed: `None` for a verdict with a reason this build does not
    /// know.
    pub fn allowed(&self) -> Option<bool> {
        match (self.kind, self.reason) {
            (FlowKind::Drop, _) => Some(false),
            (FlowKind::Verdict, FlowReason::Known(r)) => Some(r.allows()),
            (FlowKind::Verdict, FlowReason::Unknown(_)) => None,
        }
    }

    /// One JSON object on one line, fields in a fixed order.
    pub fn to_json(&self) -> String {
        let allowed = self.allowed().map_or("null".to_string(), |a| a.to_string());
        let reason = match self.reason {
            FlowReason::Known(r) => format!("\"{}\"", r.name()),
            FlowReason::Unknown(_) => "null".to_string(),
        };
        // Every string below is a fixed name or an address's display form: nothing needs
        // escaping.
        let addr = |a: Option<IpAddr>| a.map_or("null".to_string(), |a| format!("\"{a}\""));
        format!(
            concat!(
                "{{\"kind\":\"{}\",\"reason\":{},\"reason_code\":{},\"allowed\":{},",
                "\"direction\":\"{}\",\"endpoint\":{},\"family\":{},\"protocol\":{},",
                "\"src_identity\":{},\"dst_identity\":{},\"src_addr\":{},\"src_port\":{},",
                "\"dst_addr\":{},\"dst_port\":{}}}"
            ),
            self.kind.name(),
            reason,
            self.reason.code(),
            allowed,
            self.direction.name(),
            self.endpoint,
            self.family.code(),
            self.protocol,
            self.src_identity,
            self.dst_identity,
            addr(self.src_addr),
            self.src_port,
            addr(self.dst_addr),
            self.dst_port,
        )
    }
}

/// `10.0.1.5:40000`, `[2001:db8::1]:443`, or the bare address for portless protocols.
struct Peer(Option<IpAddr>, u16, bool);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.2) {
            (None, _) => f.write_str("-"),
            (Some(a), false) => write!(f, "{a}"),
            (Some(IpAddr::V4(a)), true) => write!(f, "{a}:{}", self.1),
            (Some(IpAddr::V6(a)), true) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

impl fmt::Display for Flow {
    /// `egress ep 3 10.0.1.5:40000 (id 4321) -> 10.0.2.9:80 (id 5678) tcp allow_new`, or
    /// for a drop `DROP deny_policy egress ep 3 ... tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == FlowKind::Drop {
            write!(f, "DROP {} ", self.reason)?;
        }
        let ports = has_ports(self.protocol);
        write!(
            f,
            "{} ep {} {} (id {}) -> {} (id {}) ",
            self.direction.name(),
            self.endpoint,
            Peer(self.src_addr, self.src_port, ports),
            self.src_identity,
            Peer(self.dst_addr, self.dst_port, ports),
            self.dst_identity,
        )?;
        match protocol_name(self.protocol) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "proto {}", self.protocol)?,
        }
        if self.kind == FlowKind::Verdict {
            write!(f, " {}", self.reason)?;
        }
        Ok(())
    }
}

/// The switch and rate limit in `ev_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventConfig {
    /// [`EVENTS_VERDICT`] | [`EVENTS_DROP`].
    pub flags: u32,
    /// At most this many events per CPU per second; 0 = no limit.
    pub rate: u32,
}

impl EventConfig {
    fn decode(value: &[u8]) -> Result<EventConfig, MonitorError> {
        if value.len() < ev_config::SIZE {
            return Err(MonitorError::Config(format!(
                "value of {} bytes, expected {}",
                value.len(),
                ev_config::SIZE
            )));
        }
        Ok(EventConfig { flags: u32_le(value, ev_config::FLAGS), rate: u32_le(value, ev_config::RATE) })
    }

    fn encode(self) -> [u8; ev_config::SIZE] {
        let mut v = [0u8; ev_config::SIZE];
        v[ev_config::FLAGS..ev_config::FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        v[ev_config::RATE..ev_config::RATE + 4].copy_from_slice(&self.rate.to_le_bytes());
        v
    }
}

/// The definition of one endpoint-policy map (capacities do not matter for opening).
fn policy_def(name: &str) -> Result<MapDef, MonitorError> {
    let cap = policy::Capacity {
        endpoints: 1,
        ipc_v4_l2: 1,
        ipc_v4_l3: 1,
        ipc_v6: 1,
        policy: 1,
        pol_bits: 1,
        ct: 1,
    };
    policy::map_defs(cap)
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| MonitorError::Config(format!("no map `{name}` among the endpoint-policy maps")))
}

fn open(sys: &Arc<dyn Syscall>, pin_dir: &Path, name: &str) -> Result<Map, MonitorError> {
    Ok(load::open_pinned_map(sys, pin_dir, &policy_def(name)?)?)
}

fn read_config(map: &Map) -> Result<EventConfig, MonitorError> {
    let value = map.lookup(&u32_key(0))?.unwrap_or_default();
    EventConfig::decode(&value)
}

fn write_config(map: &Map, config: EventConfig) -> Result<(), MonitorError> {
    Ok(map.update(&u32_key(0), &config.encode(), UpdateFlags::ANY)?)
}

/// The event switch and rate limit of the node pinned under `pin_dir`.
pub fn get_events(sys: &Arc<dyn Syscall>, pin_dir: &Path) -> Result<EventConfig, MonitorError> {
    read_config(&open(sys, pin_dir, crate::maps::names::EV_CONFIG)?)
}

/// `sluice events on|off --rate N`: set which events the datapath emits ([`EVENTS_ALL`],
/// 0 for none) and at most how many per CPU per second (0 = no limit).
pub fn set_events(sys: &Arc<dyn Syscall>, pin_dir: &Path, flags: u32, rate: u32) -> Result<(), MonitorError> {
    write_config(&open(sys, pin_dir, crate::maps::names::EV_CONFIG)?, EventConfig { flags, rate })
}

/// Puts the event flags back as they were when dropped.
struct Restore<'m> {
    map: &'m Map,
    flags: Option<u32>,
}

impl Restore<'_> {
    fn finish(mut self) -> Result<(), MonitorError> {
        match self.flags.take() {
            Some(flags) => restore_flags(self.map, flags),
            None => Ok(()),
        }
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some(flags) = self.flags.take() {
            let _ = restore_flags(self.map, flags);
        }
    }
}

/// Set the flags back, keeping whatever rate is there now.
fn restore_flags(map: &Map, flags: u32) -> Result<(), MonitorError> {
    let now = read_config(map)?;
    write_config(map, EventConfig { flags, ..now })
}

/// `sluice monitor`: print the flows of the node pinned under `pin_dir` to `out`, one line
/// each (or one JSON object each), until `count` were printed, or forever when `None`;
/// SIGINT and SIGTERM end it cleanly. Events are switched on for the duration if they
/// were off.
pub fn run(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    json: bool,
    count: Option<usize>,
    out: &mut dyn Write,
) -> Result<(), MonitorError> {
    let _signals = interrupt::Guard::install();
    run_until(sys, pin_dir, json, count, out, &interrupt::STOP)
}

/// What a caller adds to a flow it knows more about (`sluice monitor --config`: the policy
/// rules behind a `deny_policy` drop): lines printed under the flow's line, and a JSON value
/// added to its object as `"policy"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub lines: Vec<String>,
    pub json: String,
}

/// [`run`] with each flow annotated by `annotate` (where it returns one).
pub fn run_annotated(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    json: bool,
    count: Option<usize>,
    out: &mut dyn Write,
    annotate: &dyn Fn(&Flow) -> Option<Annotation>,
) -> Result<(), MonitorError> {
    let _signals = interrupt::Guard::install();
    run_until_annotated(sys, pin_dir, json, count, out, &interrupt::STOP, annotate)
}

/// A flow's line (text or JSON) with its annotation.
fn annotated_line(flow: &Flow, json: bool, annotation: Option<Annotation>) -> String {
    match (annotation, json) {
        (None, true) => flow.to_json(),
        (None, false) => flow.to_string(),
        (Some(a), true) => {
            let object = flow.to_json();
            format!("{},\"policy\":{}}}", &object[..object.len() - 1], a.json)
        }
        (Some(a), false) => {
            let mut text = flow.to_string();
            for line in a.lines {
                text.push_str("\n    ");
                text.push_str(&line);
            }
            text
        }
    }
}

/// [`run`], ending also when `stop` becomes true (looked at least every 200 ms); installs
/// no signal handlers.
pub fn run_until(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    json: bool,
    count: Option<usize>,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), MonitorError> {
    run_until_annotated(sys, pin_dir, json, count, out, stop, &|_| None)
}

/// [`run_until`] with each flow annotated by `annotate`.
pub fn run_until_annotated(
    sys: &Arc<dyn Syscall>,
    pin_dir: &Path,
    json: bool,
    count: Option<usize>,
    out: &mut dyn Write,
    stop: &AtomicBool,
    annotate: &dyn Fn(&Flow) -> Option<Annotation>,
) -> Result<(), MonitorError> {
    let events = open(sys, pin_dir, crate::maps::names::EVENTS)?;
    let config = open(sys, pin_dir, crate::maps::names::EV_CONFIG)?;
    let mut ring = RingBuf::new(&events)?;

    let before = read_config(&config)?;
    let restore = if before.flags == 0 {
        write_config(&config, EventConfig { flags: EVENTS_ALL, ..before })?;
        Restore { map: &config, flags: Some(before.flags) }
    } else {
        Restore { map: &config, flags: None }
    };

    let mut printed = 0usize;
    let mut write_error = None;
    while count.is_none_or(|n| printed < n) && !stop.load(Ordering::Relaxed) {
        if !ring.poll(POLL_INTERVAL)? {
            continue;
        }
        let left = count.map_or(usize::MAX, |n| n - printed);
        let mut lines = 0usize;
        let delivered = ring.drain_at_most(left, |rec| {
            if write_error.is_some() {
                return;
            }
            let line = match Flow::decode(rec) {
                Ok(flow) => {
                    lines += 1;
                    annotated_line(&flow, json, annotate(&flow))
                }
                Err(e) if json => format!("{{\"error\":\"{e}\"}}"),
                Err(e) => format!("! {e}"),
            };
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        });
        printed += lines;
        if delivered == 0 {
            // Only a record still being written (BUSY) is there: give its producer a moment.
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(e) = write_error.take().or_else(|| out.flush().err()) {
            return Err(MonitorError::Write(e));
        }
    }
    restore.finish()
}

/// SIGINT/SIGTERM handling for [`run`]: a flag, set by the handler, that the loop reads.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    /// The handlers while it lives; the previous ones after.
    pub struct Guard {
        previous: Vec<(libc::c_int, libc::sigaction)>,
    }

    impl std::fmt::Debug for Guard {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Guard").field("signals", &self.previous.len()).finish()
        }
    }

    impl Guard {
        pub fn install() -> Guard {
            STOP.store(false, Ordering::Relaxed);
            let mut previous = Vec::new();
            for signal in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
                let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                // No SA_RESTART: the wait on the ring returns EINTR and the loop sees STOP.
                action.sa_flags = 0;
                // SAFETY: zeroed is a valid out value for the old action.
                let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
                // SAFETY: both structs are live locals; the handler only stores to an atomic,
                // which is async-signal-safe.
                if unsafe { libc::sigaction(signal, &action, &mut old) } == 0 {
                    if old.sa_sigaction == libc::SIG_IGN {
                        // Ignored before (a background job): keep it ignored.
                        // SAFETY: `old` is the action just read back.
                        unsafe { libc::sigaction(signal, &old, std::ptr::null_mut()) };
                    } else {
                        previous.push((signal, old));
                    }
                }
            }
            Guard { previous }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for (signal, old) in &self.previous {
                // SAFETY: `old` is an action the kernel gave back for `signal`.
                unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::from(a)))
    }

    fn v6(s: &str) -> Option<IpAddr> {
        Some(IpAddr::V6(s.parse().expect("test address")))
    }

    fn tcp_v4() -> Flow {
        Flow {
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
        }
    }

    /// The record as the datapath writes it, spelled out byte by byte.
    /// An annotation follows the flow's line (text) or becomes its `policy` field (JSON).
    #[test]
    fn annotations_follow_the_flow() {
        let flow = tcp_v4();
        let a = Annotation { lines: vec!["why".into(), "  rule".into()], json: "{\"x\":1}".into() };
        assert_eq!(annotated_line(&flow, false, None), flow.to_string());
        assert_eq!(annotated_line(&flow, false, Some(a.clone())), format!("{flow}\n    why\n      rule"));
        let json = annotated_line(&flow, true, Some(a));
        assert!(json.starts_with(&flow.to_json()[..flow.to_json().len() - 1]), "{json}");
        assert!(json.ends_with(",\"policy\":{\"x\":1}}"), "{json}");
    }

    fn tcp_v4_record() -> Vec<u8> {
        let mut r = vec![
            1, 0, 1, 4, // kind verdict, reason allow_new, egress, IPv4
            3, 0, 6, 0, // endpoint 3 (LE), tcp, pad
            0xe1, 0x10, 0, 0, // src identity 4321 (LE)
            0x2e, 0x16, 0, 0, // dst identity 5678 (LE)
            0x9c, 0x40, 0, 80, // ports 40000, 80 (BE)
        ];
        r.extend([10, 0, 1, 5]);
        r.extend([0; 12]);
        r.extend([10, 0, 2, 9]);
        r.extend([0; 12]);
        r
    }

    #[test]
    fn decodes_an_ipv4_record_byte_by_byte() {
        let rec = tcp_v4_record();
        assert_eq!(rec.len(), event::SIZE);
        assert_eq!(Flow::decode(&rec), Ok(tcp_v4()));
        assert_eq!(tcp_v4().to_record().to_vec(), rec);
    }

    #[test]
    fn flows_print_as_one_line_each() {
        let drop_v6 = Flow {
            kind: FlowKind::Drop,
            reason: FlowReason::Known(Reason::DenyPolicy),
            direction: Direction::Ingress,
            endpoint: 7,
            family: Family::V6,
            protocol: 17,
            src_identity: 2,
            dst_identity: 70000,
            src_addr: v6("2001:db8::1"),
            dst_addr: v6("fd00::7"),
            src_port: 5353,
            dst_port: 53,
        };
        let icmp = Flow {
            kind: FlowKind::Drop,
            reason: FlowReason::Known(Reason::DenyDefault),
            protocol: 1,
            src_port: 0,
            dst_port: 0,
            ..tcp_v4()
        };
        let truncated = Flow {
            kind: FlowKind::Drop,
            reason: FlowReason::Known(Reason::DenyTruncated),
            family: Family::Unspecified,
            protocol: 0,
            src_addr: None,
            dst_addr: None,
            src_port: 0,
            dst_port: 0,
            src_identity: 0,
            dst_identity: 0,
            ..tcp_v4()
        };
        let unknown = Flow { reason: FlowReason::Unknown(200), protocol: 47, ..tcp_v4() };
        let cases = [
            (tcp_v4(), "egress ep 3 10.0.1.5:40000 (id 4321) -> 10.0.2.9:80 (id 5678) tcp allow_new"),
            (
                drop_v6,
                "DROP deny_policy ingress ep 7 [2001:db8::1]:5353 (id 2) -> [fd00::7]:53 (id 70000) udp",
            ),
            (icmp, "DROP deny_default egress ep 3 10.0.1.5 (id 4321) -> 10.0.2.9 (id 5678) icmp"),
            (truncated, "DROP deny_truncated egress ep 3 - (id 0) -> - (id 0) proto 0"),
            (unknown, "egress ep 3 10.0.1.5 (id 4321) -> 10.0.2.9 (id 5678) proto 47 reason_200"),
        ];
        for (flow, want) in cases {
            assert_eq!(flow.to_string(), want, "{flow:?}");
            let back = Flow::decode(&flow.to_record());
            assert_eq!(back.as_ref(), Ok(&flow), "record round trip of {want}");
        }
    }

    #[test]
    fn json_has_fixed_field_names() {
        assert_eq!(
            tcp_v4().to_json(),
            concat!(
                r#"{"kind":"verdict","reason":"allow_new","reason_code":0,"allowed":true,"#,
                r#""direction":"egress","endpoint":3,"family":4,"protocol":6,"#,
                r#""src_identity":4321,"dst_identity":5678,"src_addr":"10.0.1.5","src_port":40000,"#,
                r#""dst_addr":"10.0.2.9","dst_port":80}"#
            )
        );
        let drop_v6 = Flow {
            kind: FlowKind::Drop,
            reason: FlowReason::Known(Reason::DenySpoofed),
            family: Family::V6,
            src_addr: v6("fe80::1"),
            dst_addr: v6("::1"),
            ..tcp_v4()
        };
        let json = drop_v6.to_json();
        for part in [
            r#""kind":"drop""#,
            r#""reason":"deny_spoofed","reason_code":8,"allowed":false"#,
            r#""family":6"#,
            r#""src_addr":"fe80::1""#,
            r#""dst_addr":"::1""#,
        ] {
            assert!(json.contains(part), "{part} missing from {json}");
        }
        let unknown = Flow {
            reason: FlowReason::Unknown(99),
            family: Family::Unspecified,
            src_addr: None,
            dst_addr: None,
            ..tcp_v4()
        };
        let json = unknown.to_json();
        for part in
            [r#""reason":null,"reason_code":99,"allowed":null"#, r#""src_addr":null"#, r#""family":0"#]
        {
            assert!(json.contains(part), "{part} missing from {json}");
        }
    }

    #[test]
    fn bad_records_are_typed_errors() {
        let good = tcp_v4_record();
        let with = |at: usize, value: u8| {
            let mut r = good.clone();
            r[at] = value;
            r
        };
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("empty", vec![], DecodeError::Short { len: 0, need: 52 }),
            ("one short", good[..51].to_vec(), DecodeError::Short { len: 51, need: 52 }),
            ("kind 0", with(event::KIND, 0), DecodeError::Kind(0)),
            ("kind 3", with(event::KIND, 3), DecodeError::Kind(3)),
            ("direction 2", with(event::DIR, 2), DecodeError::Direction(2)),
            ("family 5", with(event::FAMILY, 5), DecodeError::Family(5)),
        ];
        for (what, rec, want) in cases {
            assert_eq!(Flow::decode(&rec), Err(want), "{what}");
        }
        let mut longer = good.clone();
        longer.extend([0xff; 12]);
        assert_eq!(Flow::decode(&longer), Ok(tcp_v4()), "bytes past the layout are ignored");
        assert_eq!(
            DecodeError::Short { len: 3, need: 52 }.to_string(),
            "event record of 3 bytes, shorter than the 52 of an event"
        );
    }

    #[test]
    fn every_known_reason_decodes_by_name() {
        for r in Reason::ALL {
            let flow = Flow::decode(&with_reason(r as u8)).expect("valid record");
            assert_eq!(flow.reason, FlowReason::Known(r));
            assert_eq!(flow.reason.to_string(), r.name());
        }
        let flow = Flow::decode(&with_reason(Reason::COUNT as u8)).expect("valid record");
        assert_eq!(flow.reason, FlowReason::Unknown(Reason::COUNT as u8));
    }

    fn with_reason(code: u8) -> Vec<u8> {
        let mut r = tcp_v4_record();
        r[event::REASON] = code;
        r
    }

    #[test]
    fn event_config_round_trips() {
        let c = EventConfig { flags: EVENTS_ALL, rate: 1000 };
        assert_eq!(EventConfig::decode(&c.encode()).ok(), Some(c));
        assert_eq!(&c.encode(), &[3, 0, 0, 0, 0xe8, 3, 0, 0]);
        assert!(matches!(EventConfig::decode(&[0; 4]), Err(MonitorError::Config(_))));
    }
}
