//! The checks of the table-driven rejection tests (`policy_rejections`, `service_rejections`):
//! each case is (name, the whole YAML stream, the exact error). Included with
//! `#[path = "support/rejections.rs"] mod rejections;`.
#![allow(dead_code)]

use sluice::model;

/// Every case is rejected with exactly its error (`<name>.yaml` is the origin); all
/// failures are reported together.
pub fn assert_exact_errors(cases: &[(&str, String, &str)]) {
    let mut failures = Vec::new();
    for (name, text, expected) in cases {
        let origin = format!("{name}.yaml");
        let actual = match model::parse_str(text, &origin) {
            Ok(config) => format!("accepted: {config:?}"),
            Err(err) => err.to_string(),
        };
        if actual != *expected {
            failures
                .push(format!("{origin}\n  expected: {expected}\n  actual:   {actual}\n  input:\n{text}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// No two cases share a name.
pub fn assert_unique_names(cases: &[(&str, String, &str)]) {
    let mut names: Vec<&str> = cases.iter().map(|(name, _, _)| *name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate case names");
}

/// Every rejection is located inside its text.
pub fn assert_located(cases: &[(&str, String, &str)]) {
    for (name, text, _) in cases {
        let err = model::parse_str(text, "x.yaml").expect_err(name);
        let (line, col) = err.location().expect("content errors are located");
        assert!(line >= 1 && line <= text.lines().count() && col >= 1, "{name}: {err}");
    }
}
