//! `sluice policy explain`: what it says for flows of the demo fixture (snapshots, text and
//! JSON), and that its verdicts are the oracle's for every flow of the policy grid.

use sluice::golden::probes::policy_flows;
use sluice::model::{self, sources, Direction};
use sluice::policy::explain::{explain, explain_drop, End, Flow, Judgement, Reason};
use sluice::policy::{oracle, Verdict};

const DEMO: &str = "fixtures/policy/demo.yaml";

fn demo() -> (model::NodeConfig, Vec<sources::PolicySource>) {
    let text = std::fs::read_to_string(DEMO).expect("the demo fixture");
    let cfg = model::parse_str(&text, DEMO).expect("parses");
    let sources = sources::policy_sources(&text, DEMO).expect("sources");
    (cfg, sources)
}

fn flow(from: &str, to: &str, proto: u8, dport: u16) -> Flow {
    Flow { from: End::parse(from), to: End::parse(to), proto, dport }
}

/// (name, from, to, protocol, port): an allowed flow, a denied one with no rule allowing it,
/// one from the node, one to the outside, one denied by a deny rule.
const FLOWS: &[(&str, &str, &str, u8, u16)] = &[
    ("world_to_frontend_https", "203.0.113.7", "frontend", 6, 443),
    ("world_to_backend", "203.0.113.7", "backend", 6, 8080),
    ("frontend_to_backend", "frontend", "backend", 6, 8080),
    ("frontend_to_db", "frontend", "db", 6, 5432),
    ("host_to_db", "host", "db", 6, 5432),
    ("backend_to_outside_dns", "backend", "8.8.8.8", 17, 53),
    ("frontend_to_metadata_service", "frontend", "169.254.169.254", 6, 80),
];

#[test]
fn explanations_of_demo_flows() {
    let (cfg, sources) = demo();
    for (name, from, to, proto, port) in FLOWS {
        let explanation = explain(&cfg, &sources, &flow(from, to, *proto, *port)).expect("explains");
        insta::assert_snapshot!(format!("{name}_text"), explanation.to_string());
        insta::assert_snapshot!(format!("{name}_json"), explanation.to_json());
    }
}

#[test]
fn unknown_endpoints_are_named() {
    let (cfg, sources) = demo();
    let err = explain(&cfg, &sources, &flow("nobody", "db", 6, 80)).unwrap_err();
    assert_eq!(err.to_string(), "no endpoint `nobody` on this node (endpoints: backend, db, frontend)");
}

/// Every flow of the policy grid (each endpoint against the others, the host and outside
/// addresses, both directions): the judgement of the flow's endpoint is the oracle's verdict,
/// and every citation names a place.
#[test]
fn verdicts_are_the_oracles() {
    let (cfg, sources) = demo();
    let outside = ["203.0.113.7", "8.8.8.8", "2001:db8::7"].map(|a| a.parse().expect("an address"));
    let mut sport = 10_000;
    let probes = policy_flows(&cfg, &outside, &[22, 53, 80, 443, 5432, 8080], &mut sport);
    assert!(probes.len() > 500, "{} probes", probes.len());
    let mut bad = Vec::new();
    for p in &probes {
        let f = Flow {
            from: End::Address(p.key.src),
            to: End::Address(p.key.dst),
            proto: p.key.proto,
            dport: p.key.dport,
        };
        let explanation = explain(&cfg, &sources, &f).expect("explains");
        let judged: Vec<&Judgement> = explanation
            .judgements
            .iter()
            .filter(|j| j.endpoint == p.endpoint && j.direction == p.direction)
            .collect();
        let want = oracle::decide(&cfg, &p.endpoint, p.direction, &p.key).expect("decides");
        let uncited = judged.iter().flat_map(|j| &j.cited).any(|c| c.at.is_none());
        if judged.len() != 1 || judged[0].verdict != want || uncited {
            bad.push(format!(
                "{} {} {:?}: oracle {want:?}, explain {judged:?}",
                p.endpoint, p.direction, p.key
            ));
        }
    }
    assert!(bad.is_empty(), "{} flows differ:\n{}", bad.len(), bad.join("\n"));
    // Both verdicts in both directions were explained.
    for d in [Direction::Ingress, Direction::Egress] {
        for v in [Verdict::Allow, Verdict::Deny] {
            assert!(
                probes.iter().any(|p| p.direction == d
                    && oracle::decide(&cfg, &p.endpoint, d, &p.key).expect("decides") == v),
                "no {d} flow got {v:?}"
            );
        }
    }
}

/// The command line: text by default, one JSON object with --json, errors named.
#[test]
fn the_command_explains_a_flow() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["policy", "explain", DEMO])
            .args(args)
            .output()
            .expect("the sluice binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["--from", "frontend", "--to", "backend", "--port", "8080"]);
    assert_eq!(code, Some(0));
    assert!(stdout.ends_with("verdict: allowed\n"), "{stdout}");
    assert!(stdout.contains("fixtures/policy/demo.yaml:75:7 (spec.ingress[0])"), "{stdout}");
    let (code, stdout, _) =
        run(&["--from", "frontend", "--to", "db", "--proto", "udp", "--port", "53", "--json"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("{\"src\":\"10.0.1.10\",\"dst\":\"10.0.1.30\",\"protocol\":17,"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (code, _, stderr) = run(&["--from", "frontend", "--to", "db", "--proto", "gre"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown protocol `gre`"), "{stderr}");
}

/// What `sluice monitor --config` adds to a `deny_policy` drop: the denying judgement of the
/// drop's side, and nothing for a flow policy allows there.
#[test]
fn a_policy_drop_is_explained() {
    let (cfg, sources) = demo();
    let addr = |a: &str| a.parse().expect("an address");
    let (frontend, db) = (addr("10.0.1.10"), addr("10.0.1.30"));
    let judgement =
        explain_drop(&cfg, &sources, (frontend, db), 6, 5432, Direction::Ingress).expect("denied");
    assert_eq!((judgement.endpoint.as_str(), judgement.reason), ("db", Reason::NoRuleAllows));
    assert_eq!(
        judgement.lines(&cfg.source),
        [
            "ingress db: denied: no rule allows it; isolated by",
            "  NetworkPolicy shop/db rule 0 at fixtures/policy/demo.yaml:119:3 (spec)",
            "  CiliumNetworkPolicy shop/guard-rails rule 1 at fixtures/policy/demo.yaml:106:5 (specs[1])",
        ]
    );
    let backend = addr("10.0.1.20");
    assert_eq!(explain_drop(&cfg, &sources, (frontend, backend), 6, 8080, Direction::Ingress), None);
}
