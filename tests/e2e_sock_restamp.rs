//! Policy changes and accelerated connections (issue 11, revocation; the default,
//! `revokeEstablished` off, is Cilium's behaviour: established connections survive a
//! policy change). A policy change bumps the socket layer's revision, which makes every
//! accelerated connection's verdict stale; the node then re-decides the accelerated
//! connections of its cgroup under the new policy with the `iter/tcp` program
//! (`socklayer::restamp`): a connection the new policy still allows stays accelerated, one
//! it denies goes to the stack, where the tc programs judge it.
//!
//! One connection between two endpoints, accelerated at its handshake, carries a
//! request/response round (64 KiB each way, echoed, compared) after each step: the
//! original policy; a change that still allows it (both ends re-stamped, every byte
//! redirected, no fallback); a change that denies it (its verdict stays stale: both
//! directions fall back, no byte redirected, the bytes pass through tc as an established
//! connection).

#[path = "support/cgroup.rs"]
mod cgroup;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::model;
use sluice::node::{self as snode, load, socklayer, update, wire};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

const PREFIX: &str = "slrs";
const PORT: u16 = 8080;
const ROUND: usize = 64 << 10;
const ROLE_ENV: &str = "SLUICE_SOCKRESTAMP_E2E_ROLE";

fn payload(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(11) as u8 ^ seed).collect()
}

/// Read exactly `n` bytes (fewer at EOF), retrying the accelerated path's spurious
/// `EAGAIN` on a blocking socket (see `tests/sock_layer.rs`).
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    out.truncate(got);
    out
}

/// Not a test on its own: `server ADDR` echoes one connection until EOF; `client ADDR`
/// connects and, for each line on stdin, sends a round's payload, checks the echo and
/// prints `round ok`.
#[test]
fn sockrestamp_e2e_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let (kind, addr) = role.split_once(' ').expect("ROLE ADDR");
    let addr: SocketAddr = addr.parse().expect("address");
    if kind == "server" {
        let l = TcpListener::bind(addr).expect("bind");
        println!("ready");
        std::io::stdout().flush().unwrap();
        let (mut s, _) = l.accept().expect("accept");
        loop {
            let got = read_n(&mut s, ROUND);
            if got.is_empty() {
                return;
            }
            s.write_all(&got).unwrap();
        }
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    for (i, line) in std::io::stdin().lines().enumerate() {
        line.unwrap();
        let data = payload(ROUND, i as u8);
        s.write_all(&data).unwrap();
        assert!(read_n(&mut s, ROUND) == data, "round {i}: the echo differs");
        println!("round ok");
        std::io::stdout().flush().unwrap();
    }
}

#[test]
fn a_policy_change_keeps_allowed_connections_accelerated_and_sends_denied_ones_to_the_stack() {
    let test = "a_policy_change_keeps_allowed_connections_accelerated_and_sends_denied_ones_to_the_stack";
    if !gate(test) {
        return;
    }
    if let Err(why) = cgroup::available() {
        panic!("{test}: {why}");
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let (c, s) = (Ipv4Addr::new(10, 85, 0, 10), Ipv4Addr::new(10, 85, 0, 20));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-s", s)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let cg = cgroup::Cgroup::new(&base).expect("cgroup");
    // The server admits the client on these ports.
    let config = |ports: &[u16]| {
        let ports: Vec<String> = ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
        let text = format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: restamp}}\nspec:\n  socketLayer: {{cgroup: {}}}\n  endpoints:\n\
             \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
             \x20   - {{name: server, interface: lxc-s, ipv4: {s}, labels: {{app: server}}}}\n\
             ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
             \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{}]}}]\n",
            cg.path.display(),
            ports.join(", ")
        );
        model::parse_str(&text, "restamp.yaml").expect("config parses")
    };
    let sys = sluice::sys::kernel();
    let first = config(&[PORT]);
    net.node.enter(|| {
        let plan = snode::plan(&first).expect("plans");
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        wire::attach(&sys, &first, &pin.0, &wire::AttachOptions::default()).expect("attaches");
        snode::forward::sync(&sys, &first, &pin.0).expect("forwarding");
    });
    socklayer::sync(&sys, &first, &pin.0).expect("socket layer");

    let exe = std::env::current_exe().unwrap();
    let role = |ns: &str, role: String| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&exe)
            .args(["--exact", "sockrestamp_e2e_role", "--nocapture", "--test-threads", "1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let at = SocketAddr::from((s, PORT));
    let mut srv = cg.spawn(&mut role(&net.ep("lxc-s").ns.name, format!("server {at}"))).expect("server");
    let mut srv_lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    assert!(srv_lines.any(|l| l.is_ok_and(|l| l.contains("ready"))), "the server did not start");
    let mut cli = cg.spawn(&mut role(&net.ep("lxc-c").ns.name, format!("client {at}"))).expect("client");
    let mut cli_in = cli.stdin.take().unwrap();
    let mut cli_out = BufReader::new(cli.stdout.take().unwrap());
    let mut cli_err = cli.stderr.take().unwrap();
    let mut round = |what: &str| {
        cli_in.write_all(b"round\n").unwrap();
        // The test harness prints its own lines first.
        let mut line = String::new();
        while !line.contains("round ok") {
            line.clear();
            if cli_out.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                cli_err.read_to_string(&mut err).unwrap();
                panic!("{what}: the round failed:\n{err}");
            }
        }
    };
    let stats = || {
        let st = net.node.enter(|| wire::status(&sys, &pin.0).expect("status"));
        let layer = |r: &str| st.counter("socket layer", r);
        let tc: u64 = st.counters.iter().filter(|c| c.reason == "allow_established").map(|c| c.count).sum();
        (layer("bytes_redirected"), layer("restamped"), layer("fallback_revision"), tc)
    };
    let change = |cfg: &model::NodeConfig| {
        net.node.enter(|| {
            let plan = snode::plan(cfg).expect("plans");
            update::update_pinned(&sys, cfg, &plan, &pin.0).expect("updates")
        });
    };

    round("the original policy");
    let (bytes, restamped, fallback, _) = stats();
    assert_eq!((bytes, restamped, fallback), (2 * ROUND as u64, 0, 0), "accelerated from the handshake");

    change(&config(&[PORT, PORT + 1]));
    round("a change that still allows the connection");
    let (bytes, restamped, fallback, _) = stats();
    assert_eq!(
        (bytes, restamped, fallback),
        (4 * ROUND as u64, 2, 0),
        "(bytes redirected, sockets re-stamped, fallbacks): both ends re-stamped, still accelerated"
    );

    change(&config(&[PORT + 1]));
    let (_, _, _, tc_before) = stats();
    round("a change that denies the connection");
    let (bytes, restamped, fallback, tc_after) = stats();
    assert_eq!(
        (bytes, restamped, fallback),
        (4 * ROUND as u64, 2, 2),
        "(bytes redirected, sockets re-stamped, fallbacks): denied, both directions to the stack"
    );
    assert!(tc_after - tc_before > 20, "the round went through tc: {} packets", tc_after - tc_before);
    let st = net.node.enter(|| wire::status(&sys, &pin.0).expect("status"));
    assert_eq!(
        (st.counter("socket layer", "accelerated"), st.counter("socket layer", "declined_ingress_policy")),
        (2, 0),
        "re-deciding is not a new connection: the connection counters count the handshake only:\n{st}"
    );

    drop(cli_in);
    assert!(cli.wait().unwrap().success(), "client");
    assert!(srv.wait().unwrap().success(), "server");
    net.node.enter(|| wire::down(&sys, &pin.0).expect("down"));
}
