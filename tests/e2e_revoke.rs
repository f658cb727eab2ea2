//! `policy.revokeEstablished` on the tc path (issue 11, revocation): "a node setting
//! `policy.revokeEstablished: true` makes a policy change that now denies an established
//! connection end it on both paths: conntrack entries of the tc path removed [...]. Default
//! off (Cilium's behaviour: established connections survive policy changes)."
//!
//! Two TCP connections from a client endpoint to a server endpoint, on ports P and Q, both
//! admitted by the server's ingress policy. Each step changes the policy in place
//! (`update_pinned`) and runs an echo round on each connection (1 KiB out, the same back
//! within two seconds):
//! 1. revocation off, P no longer admitted: both connections still echo (the established
//!    one survives, as in Cilium), nothing is revoked;
//! 2. P admitted again, revocation on: both echo, nothing revoked;
//! 3. revocation on, P no longer admitted: the P connection's server-side conntrack entry
//!    is revoked (exactly that one: the server's ingress entry of the P tuple) and its
//!    sockets are aborted ("accelerated sockets destroyed with `bpf_sock_destroy` from a
//!    socket iterator"; here the connection took the tc path): the client's next round
//!    ends with `ECONNABORTED` or `ECONNRESET`; the Q connection echoes on.
//!
//! Gated by `sluice::sys::require_kernel` (a skip, or a failure under
//! `SLUICE_REQUIRE_KERNEL=1`); namespaces and pins are removed on drop, also on panic.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/node.rs"]
mod node;

use netns::{gate, remove_stale, unique, PinDir};
use node::NodeNet;
use sluice::model::{self, Direction};
use sluice::node::{self as snode, load, update, wire};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const PREFIX: &str = "slrv";
const P: u16 = 8081;
const Q: u16 = 8082;
const ROUND: usize = 1024;

/// Echo every connection accepted on `l` until its EOF, in a thread each.
fn echo_forever(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// What one round on a connection came to.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// `ROUND` bytes out, the same back within two seconds.
    Echoed,
    /// Nothing (or not all) came back within two seconds.
    Silent,
    /// The socket reports the connection ended: its error kind.
    Ended(ErrorKind),
}

fn round(s: &mut TcpStream, seed: u8) -> Round {
    let data: Vec<u8> = (0..ROUND).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    if let Err(e) = s.write_all(&data) {
        return Round::Ended(e.kind());
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = vec![0u8; ROUND];
    let mut n = 0;
    while n < ROUND {
        match s.read(&mut got[n..]) {
            Ok(0) => return Round::Ended(ErrorKind::UnexpectedEof),
            Ok(k) => n += k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Round::Silent
            }
            Err(e) => return Round::Ended(e.kind()),
        }
    }
    assert_eq!(got, data, "the echo differs");
    Round::Echoed
}

fn echoes(s: &mut TcpStream, seed: u8) -> bool {
    round(s, seed) == Round::Echoed
}

#[test]
fn revoke_established_ends_exactly_the_connections_a_change_denies() {
    let test = "revoke_established_ends_exactly_the_connections_a_change_denies";
    if !gate(test) {
        return;
    }
    remove_stale(PREFIX, "");
    let base = unique(PREFIX);
    let (c, s) = (Ipv4Addr::new(10, 86, 0, 10), Ipv4Addr::new(10, 86, 0, 20));
    let net = NodeNet::build(&base, &[("lxc-c", c), ("lxc-s", s)]);
    let pin = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/{base}")));
    let config = |ports: &[u16], revoke: bool| {
        let ports: Vec<String> = ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
        let text = format!(
            "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: revoke}}\nspec:\n  policy: {{revokeEstablished: {revoke}}}\n  endpoints:\n\
             \x20   - {{name: client, interface: lxc-c, ipv4: {c}, labels: {{app: client}}}}\n\
             \x20   - {{name: server, interface: lxc-s, ipv4: {s}, labels: {{app: server}}}}\n\
             ---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: server}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n\
             \x20   - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n      toPorts: [{{ports: [{}]}}]\n",
            ports.join(", ")
        );
        model::parse_str(&text, "revoke.yaml").expect("config parses")
    };
    let sys = sluice::sys::kernel();
    let first = config(&[P, Q], false);
    net.node.enter(|| {
        let plan = snode::plan(&first).expect("plans");
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        wire::attach(&sys, &first, &pin.0, &wire::AttachOptions::default()).expect("attaches");
        snode::forward::sync(&sys, &first, &pin.0).expect("forwarding");
    });
    let server = &net.ep("lxc-s").ns;
    for port in [P, Q] {
        echo_forever(server.enter(|| TcpListener::bind((s, port)).expect("bind")));
    }
    let client = &net.ep("lxc-c").ns;
    let connect = |port: u16| {
        client.enter(|| {
            TcpStream::connect_timeout(&SocketAddr::from((s, port)), Duration::from_secs(5)).expect("connect")
        })
    };
    let (mut to_p, mut to_q) = (connect(P), connect(Q));
    let p_sport = to_p.local_addr().unwrap().port();
    assert!(echoes(&mut to_p, 0) && echoes(&mut to_q, 0), "both connections echo under the first policy");

    let change = |cfg: &model::NodeConfig| {
        net.node.enter(|| {
            let plan = snode::plan(cfg).expect("plans");
            update::update_pinned(&sys, cfg, &plan, &pin.0).expect("updates")
        })
    };

    let u = change(&config(&[Q], false));
    assert_eq!(u.revoked, vec![], "revocation off: nothing revoked");
    assert!(echoes(&mut to_p, 1), "revocation off: the established P connection survives the change");
    assert!(echoes(&mut to_q, 1), "revocation off: Q echoes");

    let u = change(&config(&[P, Q], true));
    assert_eq!(u.revoked, vec![], "a change that denies nothing revokes nothing");
    assert!(echoes(&mut to_p, 2) && echoes(&mut to_q, 2), "both echo with P admitted again");

    let u = change(&config(&[Q], true));
    let want = snode::revoke::Revoked {
        endpoint: "server".into(),
        direction: Direction::Ingress,
        src: IpAddr::V4(c),
        dst: IpAddr::V4(s),
        proto: 6,
        sport: p_sport,
        dport: P,
    };
    assert_eq!(u.revoked, vec![want], "exactly the server's ingress entry of the P connection");
    assert_eq!(u.warnings, Vec::<String>::new(), "the sockets were ended without trouble");
    // `bpf_sock_destroy` aborted both sockets: the client's own (ECONNABORTED) or the
    // server's first, whose RST reached the client (ECONNRESET), as the namespaces are
    // walked. Without it the round would be `Silent`: the conntrack entry alone stalls it.
    let p_round = round(&mut to_p, 3);
    assert!(
        matches!(p_round, Round::Ended(ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)),
        "revocation on: the denied P connection is ended, not stalled: {p_round:?}"
    );
    assert!(echoes(&mut to_q, 3), "revocation on: the allowed Q connection goes on");
    net.node.enter(|| wire::down(&sys, &pin.0).expect("down"));
}
