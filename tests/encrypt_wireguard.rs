//! End to end: pod traffic between two nodes in namespaces with WireGuard between them
//! (`spec.encryption: {mode: wireguard}`; the kernel here has no WireGuard device type, so
//! both nodes' `sluice_wg` is sluice's userspace WireGuard on a TUN device). See
//! `src/demo/wireguard.rs` for the lab.
//!
//! Specification (issue 15, "Tests"):
//! - "cross-node TCP/UDP/ICMP between endpoints with encryption on": the demo's flows
//!   between the node's endpoints and the peer, each as the policy oracle expects;
//! - "a capture on the underlay shows only WireGuard UDP and no plaintext payload (search
//!   the capture for a marker string)";
//! - "policy still applies with identities": the denied flows among them stay denied;
//! - "a node with a wrong or missing peer key gets nothing through, and nothing leaks
//!   unencrypted";
//! - "key rotation under traffic without loss": one TCP stream across a rotation of the
//!   node's key delivers every byte in order and is never reset.

// `sluice demo`'s lab belongs to the `sluice` binary, not the library: included by path.
#[path = "../src/demo/mod.rs"]
#[allow(dead_code)]
mod demo;

use demo::wireguard::{underlay_leaks, PeerKey, WgLab};
use demo::{Expect, Outcome, Proto};
use sluice::model::encryption::DEFAULT_WIREGUARD_PORT;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("slwg-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn stat(snapshot: &[(&'static str, u64)], name: &str) -> u64 {
    snapshot.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
}

#[test]
fn encrypted_flows_follow_policy_and_only_wireguard_crosses_the_underlay() {
    if !sluice::sys::require_kernel("encrypted_flows_follow_policy_and_only_wireguard_crosses_the_underlay") {
        return;
    }
    let lab = WgLab::build(&prefix("flows"), PeerKey::Right).expect("the lab builds");
    let capture = lab.capture().expect("capture on the underlay");
    let rows = lab.peer_flows().expect("flows run");
    let mut bad = Vec::new();
    for (flow, expect, outcome) in &rows {
        let want = if *expect == Expect::Allow { Outcome::Delivered } else { Outcome::Dropped };
        if *outcome != want {
            bad.push(format!("{}: expected {expect}, observed {outcome:?}", flow.describe(&lab.cfg)));
        }
    }
    assert!(bad.is_empty(), "flows not as expected:\n{}", bad.join("\n"));
    for proto in [Proto::Tcp, Proto::Udp] {
        assert!(
            rows.iter().any(|(f, e, _)| f.proto == proto && *e == Expect::Allow),
            "an allowed {proto:?} flow ran"
        );
    }
    assert!(rows.iter().any(|(_, e, _)| *e != Expect::Allow), "a denied flow ran (policy still applies)");
    // ICMP echo from every endpoint to the peer, as the oracle says (the lab lets the
    // frontend ping the peer).
    let mut pinged = false;
    for ep in 1..=lab.cfg.endpoints.len() {
        let flow = lab.flow_to_peer(ep, Proto::Icmp, 0).expect("a flow");
        let expect = demo::expect(&lab.cfg, &flow).expect("oracle");
        let want = if expect == Expect::Allow { Outcome::Delivered } else { Outcome::Dropped };
        let got = lab.run_flow(&flow).expect("ping runs");
        eprintln!("{}: expected {expect}, observed {got:?}", flow.describe(&lab.cfg));
        assert_eq!(got, want, "{}: expected {expect}", flow.describe(&lab.cfg));
        pinged |= got == Outcome::Delivered;
    }
    assert!(pinged, "an ICMP echo crossed");
    let report = underlay_leaks(&capture.frames(), DEFAULT_WIREGUARD_PORT);
    assert!(report.plaintext.is_empty(), "plaintext on the underlay: {:?}", report.plaintext);
    assert!(report.other.is_empty(), "non-WireGuard frames on the underlay: {:?}", report.other);
    assert!(report.wireguard > 0, "the flows crossed as WireGuard UDP: {report:?}");
    let node = lab.node_wg.stats();
    assert!(stat(&node, "tx_packets") > 0 && stat(&node, "rx_packets") > 0, "{node:?}");
}

#[test]
fn a_wrong_or_missing_peer_key_gets_nothing_through_and_leaks_nothing() {
    if !sluice::sys::require_kernel("a_wrong_or_missing_peer_key_gets_nothing_through_and_leaks_nothing") {
        return;
    }
    for (choice, counter) in [(PeerKey::Wrong, "rx_unknown_peer"), (PeerKey::Missing, "tx_no_peer")] {
        let lab = WgLab::build(&prefix("badkey"), choice).expect("the lab builds");
        let capture = lab.capture().expect("capture");
        let rows = lab.peer_flows().expect("flows run");
        let through: Vec<String> = rows
            .iter()
            .filter(|(_, _, o)| *o == Outcome::Delivered)
            .map(|(f, _, _)| f.describe(&lab.cfg))
            .collect();
        assert!(through.is_empty(), "{choice:?}: got through: {through:?}");
        // The frontend may ping the peer (the lab's extra policy): only the key stops it.
        let frontend = 1 + lab.cfg.endpoints.iter().position(|e| e.name == "frontend").expect("frontend");
        let ping = lab.flow_to_peer(frontend, Proto::Icmp, 0).expect("a flow");
        assert_eq!(demo::expect(&lab.cfg, &ping).expect("oracle"), Expect::Allow, "policy allows the ping");
        assert_eq!(lab.run_flow(&ping).expect("ping runs"), Outcome::Dropped, "{choice:?}: ICMP");
        let report = underlay_leaks(&capture.frames(), DEFAULT_WIREGUARD_PORT);
        assert!(report.plaintext.is_empty(), "{choice:?}: plaintext: {:?}", report.plaintext);
        assert!(report.other.is_empty(), "{choice:?}: non-WireGuard frames: {:?}", report.other);
        // Why nothing got through, as counted: a wrong key fails the handshakes on both
        // sides (each sees a static key it does not know); a missing key leaves the node
        // no peer for the prefix.
        let (node, peer) = (lab.node_wg.stats(), lab.peer_wg.stats());
        let seen = stat(&node, counter) + stat(&peer, counter);
        assert!(seen > 0, "{choice:?}: {counter} counted: node {node:?} peer {peer:?}");
        assert_eq!(stat(&node, "rx_packets"), 0, "{choice:?}: node decrypted nothing");
    }
}

/// "Unencrypted traffic between nodes for pods that should be encrypted is dropped, never
/// leaked": a plaintext packet from the peer's pod, sent onto the underlay past the peer's
/// WireGuard, does not reach the endpoint (the node's strict reverse-path filter on the
/// underlay drops it); with the filter off (the control) the same frame does.
#[test]
fn plaintext_from_a_peer_pod_on_the_underlay_is_not_delivered() {
    if !sluice::sys::require_kernel("plaintext_from_a_peer_pod_on_the_underlay_is_not_delivered") {
        return;
    }
    let lab = WgLab::build(&prefix("strict"), PeerKey::Right).expect("the lab builds");
    let (index, frontend) =
        lab.cfg.endpoints.iter().enumerate().find(|(_, e)| e.name == "frontend").expect("frontend");
    let dst = SocketAddr::new(frontend.addresses().find(IpAddr::is_ipv4).expect("v4"), 80);
    let ep_ns = lab.endpoint_ns(index + 1).expect("ns");
    let arrived = |rp_filter: bool| -> bool {
        lab.set_underlay_rp_filter(rp_filter).expect("sysctl");
        let cap = demo::wireguard::Capture::start(ep_ns, "eth0").expect("capture");
        lab.inject_plaintext(dst).expect("inject");
        std::thread::sleep(Duration::from_millis(300));
        let marker = demo::wireguard::MARKERS[0];
        cap.frames().iter().any(|f| f.windows(marker.len()).any(|w| w == marker))
    };
    assert!(arrived(false), "control: without the filter the injected frame reaches the endpoint");
    assert!(!arrived(true), "strict mode: plaintext from a peer pod is not delivered");
}

#[test]
fn rotating_the_node_key_under_traffic_loses_no_byte() {
    if !sluice::sys::require_kernel("rotating_the_node_key_under_traffic_loses_no_byte") {
        return;
    }
    let lab = WgLab::build(&prefix("rotate"), PeerKey::Right).expect("the lab builds");
    let pod = IpAddr::V4(lab.peer_pod().expect("peer pod"));
    // frontend -> peer:8080 is allowed by the default node's policy.
    let src = lab.cfg.endpoint("frontend").expect("frontend").addresses().find(IpAddr::is_ipv4).expect("v4");
    let ep = 1 + lab.cfg.endpoints.iter().position(|e| e.name == "frontend").expect("frontend");
    let dst = SocketAddr::new(pod, 8080);
    let peer_fd = lab.peer_ns().fd().try_clone_to_owned().expect("dup");
    let ep_fd = lab.endpoint_ns(ep).expect("ep ns").fd().try_clone_to_owned().expect("dup");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        // SAFETY: setns on a namespace descriptor we own, for this thread only.
        assert_eq!(unsafe { libc::setns(peer_fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let l = TcpListener::bind(dst)?;
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
    const CHUNK: usize = 1000;
    let client = std::thread::spawn(move || -> std::io::Result<usize> {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setns(ep_fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut s = demo::traffic::connect_from(src, dst, Duration::from_secs(5))?;
        let start = Instant::now();
        let mut sent = 0usize;
        let mut seq = 0u32;
        while start.elapsed() < Duration::from_secs(6) {
            let chunk: Vec<u8> = (0..CHUNK).map(|i| (seq as usize + i) as u8).collect();
            s.write_all(&chunk)?;
            sent += CHUNK;
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sent)
    });
    std::thread::sleep(Duration::from_secs(2));
    let handshakes = || stat(&lab.node_wg.stats(), "handshakes") + stat(&lab.peer_wg.stats(), "handshakes");
    let before = handshakes();
    lab.rotate_node_key().expect("rotation");
    let sent = client.join().expect("client thread").expect("the stream was never broken");
    let got = server.join().expect("server thread").expect("the server read to the end");
    assert_eq!(got.len(), sent, "every byte arrived");
    let want: Vec<u8> = (0..sent / CHUNK).flat_map(|seq| (0..CHUNK).map(move |i| (seq + i) as u8)).collect();
    assert!(got == want, "bytes arrived in order and intact");
    // Both sides dropped their old sessions for sending: what was sent after the
    // rotation crossed on a handshake made with the new key.
    assert!(handshakes() > before, "a new handshake answered after the rotation ({before} before)");
}

/// Issue 15 (brief): "peers update on reload". The node starts with a wrong key for its
/// peer (nothing gets through); the node file is then fixed, and the reload the daemon's
/// poller runs (`encrypt::reload_peers`, which `follow_config` calls with the file's
/// config) gives the device the right key: the same ping is delivered. A second reload of
/// the same config changes nothing.
#[test]
fn reloading_a_changed_peer_key_updates_the_device() {
    if !sluice::sys::require_kernel("reloading_a_changed_peer_key_updates_the_device") {
        return;
    }
    let lab = WgLab::build(&prefix("reload"), PeerKey::Wrong).expect("the lab builds");
    let frontend = 1 + lab.cfg.endpoints.iter().position(|e| e.name == "frontend").expect("frontend");
    let ping = lab.flow_to_peer(frontend, Proto::Icmp, 0).expect("a flow");
    assert_eq!(lab.run_flow(&ping).expect("ping runs"), Outcome::Dropped, "the wrong key stops it");
    let fixed =
        sluice::model::parse_str(&demo::wireguard::node_text(&lab.peer_public, PeerKey::Right), "fixed")
            .expect("the fixed node file parses");
    assert!(sluice::encrypt::reload_peers(&lab.node_wg, &fixed), "the reload changes the peer table");
    assert!(!sluice::encrypt::reload_peers(&lab.node_wg, &fixed), "the same config again changes nothing");
    // The first ping after the reload may go into the handshake; a few tries.
    let delivered = (0..5).any(|_| lab.run_flow(&ping).is_ok_and(|o| o == Outcome::Delivered));
    assert!(delivered, "after the reload the ping is delivered");
}

/// The lab's node file parses with each peer-key choice. (It was a unit test inside the lab
/// module; the lab is included by several test binaries, so it lives here, run once.)
#[test]
fn the_lab_node_parses_with_each_key_choice() {
    use demo::wireguard::node_text;
    let key = sluice::encrypt::keys::NodeKey::from_secret([1; 32]).public_base64();
    for choice in [PeerKey::Right, PeerKey::Wrong, PeerKey::Missing] {
        let text = node_text(&key, choice);
        let cfg = sluice::model::parse_str(&text, "lab").unwrap_or_else(|e| panic!("{choice:?}: {e}"));
        let peer = &cfg.overlay.as_ref().expect("overlay").peers[0];
        assert_eq!(peer.wireguard.is_some(), choice != PeerKey::Missing, "{choice:?}");
        assert!(matches!(cfg.encryption, sluice::model::encryption::Encryption::Wireguard(_)));
    }
}

/// Each frame alone and how `underlay_leaks` classifies it: (what, frames, WireGuard,
/// control, other, plaintext). A later fragment counts as WireGuard only when the first
/// fragment of the same datagram (source, destination, id) was WireGuard UDP.
#[test]
fn underlay_frames_are_classified_by_what_they_are() {
    use sluice::packet::PacketBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};
    const WG: u16 = 51871;
    let (m1, m2) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (n1, n2) = (Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(172, 16, 0, 2));
    let eth = || PacketBuilder::ethernet(m1, m2);
    let wg_first = eth().ipv4(n1, n2).ident(7).ipv4_fragment(0, true).udp(WG, WG).payload(&[4; 64]).build();
    let wg_later = eth().ipv4(n1, n2).ident(7).ipv4_fragment(185, false).raw_l4(17, &[9; 40]).build();
    let stray_later = eth().ipv4(n1, n2).ident(8).ipv4_fragment(185, false).raw_l4(17, &[9; 40]).build();
    let other_udp = eth().ipv4(n1, n2).udp(5000, 5000).payload(b"x").build();
    let marked = eth().ipv4(n1, n2).udp(WG, WG).payload(demo::wireguard::MARKERS[0]).build();
    // Port unreachable quoting a WireGuard datagram's headers; and one quoting another's.
    let quote = |port: u16| {
        let inner = eth().ipv4(n1, n2).udp(port, port).payload(&[0; 8]).build();
        eth().ipv4(n2, n1).icmpv4(3, 3, 0).payload(&inner[14..14 + 28]).build()
    };
    let dad = eth()
        .ipv6(Ipv6Addr::UNSPECIFIED, "ff02::1:ff00:1".parse().expect("literal"))
        .hop_limit(255)
        .icmpv6(135, 0, 0)
        .build();
    let global_v6 = eth()
        .ipv6("fd00::1".parse().expect("literal"), "ff02::1".parse().expect("literal"))
        .icmpv6(135, 0, 0)
        .build();
    // (WireGuard, control, other, plaintext) as counted.
    type Counts = (usize, usize, usize, usize);
    let cases: Vec<(&str, Vec<Vec<u8>>, Counts)> = vec![
        ("WireGuard UDP, first fragment", vec![wg_first.clone()], (1, 0, 0, 0)),
        ("its later fragment", vec![wg_first, wg_later], (2, 0, 0, 0)),
        ("a later fragment of no WireGuard datagram", vec![stray_later], (0, 0, 1, 0)),
        ("UDP to another port", vec![other_udp], (0, 0, 1, 0)),
        ("a marker, even in WireGuard UDP", vec![marked], (1, 0, 0, 1)),
        ("port unreachable about WireGuard", vec![quote(WG)], (0, 1, 0, 0)),
        ("port unreachable about another port", vec![quote(5000)], (0, 0, 1, 0)),
        ("IPv6 duplicate address detection", vec![dad], (0, 1, 0, 0)),
        ("IPv6 from a global source", vec![global_v6], (0, 0, 1, 0)),
    ];
    for (what, frames, want) in cases {
        let r = demo::wireguard::underlay_leaks(&frames, WG);
        assert_eq!((r.wireguard, r.control, r.other.len(), r.plaintext.len()), want, "{what}: {r:?}");
    }
}
