//! Node file rejections and acceptances, as specifications.
//!
//! Each rejection case is a file under `fixtures/invalid/` and the exact error it must produce,
//! location included; every file there must have a case. Positive cases check the shipped
//! fixtures and that equivalent spellings normalize to equal configs.

use std::path::Path;

use sluice::model::{self, Cidr, ModelError, NodeConfig};

/// (file under fixtures/invalid/, expected error text)
const REJECTIONS: &[(&str, &str)] = &[
    (
        "unknown-top-level-field.yaml",
        "fixtures/invalid/unknown-top-level-field.yaml:7:1: unknown field `status`, expected one of `apiVersion`, `kind`, `metadata`, `spec`",
    ),
    (
        "unknown-spec-field.yaml",
        "fixtures/invalid/unknown-spec-field.yaml:7:3: spec: unknown field `prefiltr`, expected one of `prefilter`, `hostAddresses`, `endpoints`, `router`, `overlay`, `loadBalancer`, `socketLayer`, `encryption`, `policy`",
    ),
    (
        "unknown-prefilter-field.yaml",
        "fixtures/invalid/unknown-prefilter-field.yaml:9:5: spec.prefilter: unknown field `allow`, expected `deny`",
    ),
    (
        "bad-cidr-syntax.yaml",
        "fixtures/invalid/bad-cidr-syntax.yaml:10:9: spec.prefilter.deny[1]: `10.0.0` is not an IPv4 or IPv6 address",
    ),
    (
        "prefix-too-long-v4.yaml",
        "fixtures/invalid/prefix-too-long-v4.yaml:8:9: spec.prefilter.deny[0]: `198.51.100.7/33`: prefix length exceeds 32 for IPv4",
    ),
    (
        "prefix-too-long-v6.yaml",
        "fixtures/invalid/prefix-too-long-v6.yaml:9:9: spec.prefilter.deny[1]: `2001:db8::1/129`: prefix length exceeds 128 for IPv6",
    ),
    (
        "host-bits.yaml",
        "fixtures/invalid/host-bits.yaml:8:9: spec.prefilter.deny[1]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
    ),
    (
        "host-bits-v6.yaml",
        "fixtures/invalid/host-bits-v6.yaml:6:33: spec.prefilter.deny[1]: fd00:dead::1/32 has host bits set (did you mean fd00:dead::/32?)",
    ),
    (
        "non-string-deny.yaml",
        "fixtures/invalid/non-string-deny.yaml:9:9: spec.prefilter.deny[1]: invalid type: map, expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
    ),
    (
        "deny-not-a-list.yaml",
        "fixtures/invalid/deny-not-a-list.yaml:7:11: spec.prefilter.deny: invalid type: string \"10.0.0.0/8\", expected a sequence",
    ),
    (
        "missing-kind.yaml",
        "fixtures/invalid/missing-kind.yaml:7:1: missing field `kind`",
    ),
    (
        "unknown-kind.yaml",
        "fixtures/invalid/unknown-kind.yaml:2:7: kind: unknown kind `Pod`; expected one of Node, CiliumNetworkPolicy, NetworkPolicy, Service, EndpointSlice, Namespace, CiliumClusterwideNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy",
    ),
    (
        "wrong-api-version.yaml",
        "fixtures/invalid/wrong-api-version.yaml:1:13: apiVersion: expected sluice.dev/v1 for kind Node, found `sluice.dev/v2`",
    ),
    (
        "missing-api-version.yaml",
        "fixtures/invalid/missing-api-version.yaml:1:1: missing field `apiVersion`",
    ),
    (
        "two-nodes.yaml",
        "fixtures/invalid/two-nodes.yaml:7:7: kind: a second Node document (document 2 of the file; the first is document 1): a node file holds exactly one Node",
    ),
    (
        "no-node.yaml",
        "fixtures/invalid/no-node.yaml:1:1: no Node document: a node file holds exactly one document with `apiVersion: sluice.dev/v1` and `kind: Node`",
    ),
    (
        "duplicate-key.yaml",
        "fixtures/invalid/duplicate-key.yaml:5:3: metadata: duplicate key `name`",
    ),
    (
        "duplicate-key-in-list-item.yaml",
        "fixtures/invalid/duplicate-key-in-list-item.yaml:9:28: spec.prefilter.deny[0]: duplicate key `cidr`",
    ),
    (
        "invalid-name.yaml",
        "fixtures/invalid/invalid-name.yaml:4:9: metadata.name: `Node_1` contains 'N'; a name holds only lowercase letters, digits and '-'",
    ),
    (
        "missing-name.yaml",
        "fixtures/invalid/missing-name.yaml:3:11: metadata: missing field `name`",
    ),
    (
        "not-a-mapping.yaml",
        "fixtures/invalid/not-a-mapping.yaml:1:1: invalid type: sequence, expected a document: a mapping with apiVersion, kind, metadata and spec",
    ),
    (
        "yaml-syntax.yaml",
        "fixtures/invalid/yaml-syntax.yaml:8:1: did not find expected ',' or ']', while parsing a flow sequence at line 7 column 11",
    ),
];

/// Paths are relative to the package root, where cargo runs integration tests, so that the
/// file names in the messages are stable.
fn invalid(name: &str) -> String {
    format!("fixtures/invalid/{name}")
}

#[test]
fn invalid_fixtures_are_rejected_with_their_exact_error() {
    let mut failures = Vec::new();
    for (name, expected) in REJECTIONS {
        let path = invalid(name);
        let actual = match model::load_file(Path::new(&path)) {
            Ok(config) => format!("accepted: {config:?}"),
            Err(err) => err.to_string(),
        };
        if actual != *expected {
            failures.push(format!("{path}\n  expected: {expected}\n  actual:   {actual}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_invalid_fixture_has_a_case() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir("fixtures/invalid").expect("fixtures/invalid exists") {
        let file = entry.expect("readable directory entry").file_name();
        let file = file.to_string_lossy();
        if !REJECTIONS.iter().any(|(name, _)| *name == file) {
            missing.push(file.into_owned());
        }
    }
    assert!(missing.is_empty(), "fixtures without a case: {missing:?}");
}

#[test]
fn errors_carry_their_parts() {
    let err = model::load_file(Path::new(&invalid("host-bits.yaml"))).unwrap_err();
    match err {
        ModelError::Invalid { file, line, col, path, message } => {
            assert_eq!(file, "fixtures/invalid/host-bits.yaml");
            assert_eq!((line, col), (8, 9));
            assert_eq!(path.as_deref(), Some("spec.prefilter.deny[1]"));
            assert_eq!(message, "10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)");
        }
        other => panic!("expected ModelError::Invalid, got {other:?}"),
    }
}

#[test]
fn inline_sources_are_named_by_their_origin() {
    let err = model::parse_str("kind: Node\nmetadata: {name: n}\n", "<stdin>").unwrap_err();
    assert_eq!(err.to_string(), "<stdin>:1:1: missing field `apiVersion`");
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).collect()
}

#[test]
fn default_node_is_the_fixture() {
    let node = model::default_node();
    assert_eq!(node.name, "node-1");
    assert_eq!(
        node.prefilter.deny,
        cidrs(&[
            "10.13.0.0/16",
            "192.0.2.0/24",
            "198.51.100.7/32",
            "203.0.113.0/24",
            "2001:db8:bad::/48",
            "fd00:dead::/32",
        ])
    );
    let loaded = model::load_file(Path::new("fixtures/default-node.yaml")).unwrap();
    assert_eq!(loaded, node);
}

#[test]
fn prefilter_small_has_sorted_mixed_prefixes() {
    let node = model::load_file(Path::new("fixtures/prefilter-small.yaml")).unwrap();
    assert_eq!(node.name, "prefilter-small");
    let deny = &node.prefilter.deny;
    let v4 = deny.iter().filter(|c| c.v4().is_some()).count();
    let v6 = deny.iter().filter(|c| c.v6().is_some()).count();
    assert_eq!((v4, v6), (16, 16));
    assert!(deny.windows(2).all(|w| w[0] < w[1]), "sorted and unique: {deny:?}");
    assert!(deny.iter().all(|c| c.len() > 0), "no default route in a prefilter");
    // Nested prefixes are kept: the planner decides how to look them up.
    let wide: Cidr = "10.13.0.0/16".parse().unwrap();
    let host: Cidr = "10.13.7.7/32".parse().unwrap();
    assert!(deny.contains(&wide) && deny.contains(&host) && wide.contains_cidr(&host));
}

#[test]
fn deny_list_is_sorted_and_deduplicated() {
    let text = "\
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
  prefilter:
    deny: ['2001:db8::/32', 10.0.0.0/16, 10.0.0.0/8, 9.0.0.0/8, 10.0.0.0/8, '2001:db8::/32']
";
    let node = model::parse_str(text, "dedup.yaml").unwrap();
    assert_eq!(node.prefilter.deny, cidrs(&["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32"]));
}

#[test]
fn equivalent_spellings_give_equal_configs() {
    let block = "\
# block style, canonical spellings
apiVersion: sluice.dev/v1
kind: Node
metadata:
  name: node-1
spec:
  prefilter:
    deny:
      - 198.51.100.7/32
      - 2001:db8:bad::/48
      - 10.13.0.0/16
";
    let others = [
        // Flow style, other order, bare host address, uncompressed upper-case IPv6, a duplicate,
        // keys in another order.
        "spec: {prefilter: {deny: ['2001:0DB8:0BAD:0000::/48', 10.13.0.0/16, \"198.51.100.7\", 10.13.0.0/16]}}
metadata: {name: node-1}
kind: Node
apiVersion: sluice.dev/v1
",
        // Empty documents around it, comments, anchors.
        "---
# nothing here
---
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: node-1}
spec:
  prefilter:
    deny:
      - &host 198.51.100.7
      - *host
      - 10.13.0.0/16
      - 2001:db8:bad:0::/48
---
",
    ];
    let expected: NodeConfig = model::parse_str(block, "same.yaml").unwrap();
    for text in others {
        let actual = model::parse_str(text, "same.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(actual, expected, "input:\n{text}");
    }
}

/// Runs `f` on a thread and waits at most `limit` for it: a hang is a failure, not a stuck
/// test. Not a speed claim: the limit is generous, far above the expected time.
fn within<T: Send + 'static>(
    what: &str,
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// A unique scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// "config must be a regular file": a FIFO (whose open would wait for a writer forever), a
/// directory and a character device are refused at once, naming what they are.
#[test]
fn node_files_that_are_not_regular_files_are_refused_without_blocking() {
    use std::os::unix::ffi::OsStrExt;
    let scratch = Scratch::new("fifo-config");
    let fifo = scratch.0.join("node.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("no NUL in a temp path");
    // SAFETY: `c_path` is a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    let cases = [
        (fifo.clone(), "a FIFO"),
        (scratch.0.clone(), "a directory"),
        (std::path::PathBuf::from("/dev/null"), "a character device"),
    ];
    for (path, what) in cases {
        let read = path.clone();
        let result = within("load_file", std::time::Duration::from_secs(30), move || {
            model::load_file(&read).map(|c| c.name)
        });
        let expected = format!(
            "{}: cannot read node file: it is {what}; a node file must be a regular file",
            path.display()
        );
        match result {
            Err(err) => assert_eq!(err.to_string(), expected),
            Ok(name) => panic!("{}: accepted node {name}", path.display()),
        }
    }
    // A symlink to a regular file is followed (ConfigMap mounts are symlinks).
    let link = scratch.0.join("link.yaml");
    std::os::unix::fs::symlink(std::fs::canonicalize("fixtures/default-node.yaml").expect("fixture"), &link)
        .expect("symlink");
    assert_eq!(model::load_file(&link).expect("symlink to a node file").name, "node-1");
}

/// Deep nesting is refused before the YAML parser sees it, at the place it gets too deep:
/// 100,000 nested `[` (libyaml's scanner time grows with the square of the depth; this took
/// about 90 s before) and as many compact `- `.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    let head = "apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {name: n}\nspec:\n  x: ";
    let cases = [
        (format!("{head}{}{}\n", "[".repeat(100_000), "]".repeat(100_000)), "deep.yaml:5:68"),
        (format!("{head}\n{}x\n", "- ".repeat(100_000)), "deep.yaml:6:127"),
    ];
    for (text, at) in cases {
        let err = within("parse_str", std::time::Duration::from_secs(60), move || {
            model::parse_str(&text, "deep.yaml").map(|c| c.name)
        })
        .expect_err("deep nesting is refused");
        assert_eq!(
            err.to_string(),
            format!(
                "{at}: collections nest deeper than {} levels here (a node file needs about ten); \
                 refused before parsing",
                model::limits::MAX_NESTING
            )
        );
    }
}

/// A file past the size limit is refused before it is read whole or parsed.
#[test]
fn oversized_node_files_are_refused() {
    let limit = model::limits::MAX_NODE_FILE_BYTES;
    let scratch = Scratch::new("big-config");
    let path = scratch.0.join("node.yaml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(limit + 1).expect("sparse file past the limit");
    let err = model::load_file(&path).expect_err("too large");
    assert_eq!(
        err.to_string(),
        format!("{}: cannot read node file: it is {} bytes; the limit is {limit}", path.display(), limit + 1)
    );
    let text = format!("# {}\n", "x".repeat(limit as usize));
    let err = model::parse_str(&text, "big.yaml").expect_err("too large");
    assert_eq!(
        err.to_string(),
        format!("big.yaml:1:1: the node file is {} bytes; the limit is {limit}", text.len())
    );
}

/// Valid settings that are probably not meant load with a warning each (README: "Refused or
/// warned"); a file without them has none.
#[test]
fn harmful_but_valid_settings_are_warned() {
    let node =
        |spec: &str| format!("apiVersion: sluice.dev/v1\nkind: Node\nmetadata: {{name: n}}\nspec:\n{spec}");
    let cases: &[(&str, &[&str])] = &[
        ("  prefilter: {deny: [192.0.2.0/24]}\n", &[]),
        (
            "  prefilter: {deny: [0.0.0.0/0, '::/0']}\n",
            &[
                "w.yaml: spec.prefilter.deny: 0.0.0.0/0 drops every IPv4 packet where the prefilter runs",
                "w.yaml: spec.prefilter.deny: ::/0 drops every IPv6 packet where the prefilter runs",
            ],
        ),
        (
            "  prefilter: {deny: [10.0.0.0/8]}\n  endpoints: [{name: web, interface: lxc1, ipv4: 10.0.0.1}]\n",
            &["w.yaml: spec.prefilter.deny: 10.0.0.0/8 covers endpoint web's address 10.0.0.1: packets from it \
               are dropped where the prefilter runs"],
        ),
        (
            "  prefilter: {deny: [172.16.0.0/16]}\n  overlay: {local: 172.16.0.1, peers: [{name: b, address: 172.16.0.2}]}\n",
            &["w.yaml: spec.prefilter.deny: 172.16.0.0/16 covers overlay peer b's address 172.16.0.2: its \
               tunnelled packets are dropped where the prefilter runs"],
        ),
    ];
    let mut failures = Vec::new();
    for (spec, expected) in cases {
        let text = node(spec);
        let cfg = model::parse_str(&text, "w.yaml").unwrap_or_else(|e| panic!("{e}\ninput:\n{text}"));
        let actual = model::warnings(&cfg);
        if actual != *expected {
            failures.push(format!("input:\n{text}  expected: {expected:?}\n  actual:   {actual:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Only an empty (null) value is refused: an explicit `{}` or `[]` keeps its meaning
/// (`endpointSelector: {}` selects every endpoint of the namespace, as in Cilium), and the
/// Node's `spec:` may still be empty.
#[test]
fn explicit_empty_values_keep_their_meaning() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{}], toPorts: [{ports: [{port: 80}]}]}]
---
apiVersion: sluice.dev/v1
kind: Node
metadata: {name: n}
spec:
";
    let cfg = model::parse_str(text, "empty.yaml").unwrap_or_else(|e| panic!("{e}"));
    let rule = &cfg.policies[0].rules[0];
    assert_eq!(rule.subject.to_string(), "io.kubernetes.pod.namespace=default");
    let peers: Vec<String> = rule.ingress.allow[0].peers.iter().map(|p| format!("{p:?}")).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(
        peers[0].contains("io.kubernetes.pod.namespace"),
        "the `{{}}` peer is every endpoint of the namespace: {peers:?}"
    );
}
