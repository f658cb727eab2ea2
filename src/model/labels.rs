//! Labels and label selectors: what endpoints carry and what policies select them by.
//!
//! Contract:
//! - A label key is a Kubernetes label key (`[prefix/]name`: the prefix a DNS subdomain of at
//!   most 253 characters, the name 1 to 63 characters of letters, digits, `-`, `_`, `.`,
//!   starting and ending with a letter or digit), optionally preceded by a Cilium source
//!   prefix. `k8s:` and `any:` are accepted and dropped: every label sluice knows comes from
//!   Kubernetes, so both sources mean the same label. Other sources (`reserved:`, `cidr:`, ...)
//!   are rejected; reserved identities are selected with entities. A label value is empty or
//!   at most 63 characters of the same alphabet, starting and ending with a letter or digit.
//!   Both are validated inside the string visitor, so errors point at the offending scalar.
//! - [`Labels`] is a sorted map from key (without source prefix) to value.
//! - A [`Selector`] is a conjunction of [`Requirement`]s, held sorted and deduplicated, so
//!   `matchLabels: {app: web}` and `matchExpressions: [{key: app, operator: In, values: [web]}]`
//!   give equal selectors. The empty selector selects every label set. Matching follows
//!   Kubernetes: `In` needs the key with one of the values, `NotIn` needs the key absent or
//!   its value outside the set, `Exists` needs the key, `DoesNotExist` its absence.
//! - [`NAMESPACE_LABEL`] is the label Cilium gives every pod for its namespace; the model adds
//!   it to each endpoint's labels and scopes policy selectors with it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

use super::de::parse_str_scalar;

/// The label every endpoint carries for its namespace (Cilium's
/// `k8s:io.kubernetes.pod.namespace`).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The namespace label Kubernetes sets on every namespace: the only key a NetworkPolicy
/// `namespaceSelector` may use in sluice, which knows namespaces only by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A label set: key (without source prefix) to value, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every requirement must hold. Sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One condition on one label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key, without source prefix.
    pub key: String,
    pub op: Operator,
}

/// How a [`Requirement`] tests its key. Value lists are sorted, deduplicated and non-empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// The selector that selects every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// A selector of the given requirements, normalized (sorted, deduplicated, value lists
    /// sorted and deduplicated). `In`/`NotIn` with no values are the caller's to reject.
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Selector {
        let mut requirements: Vec<Requirement> = requirements
            .into_iter()
            .map(|mut r| {
                if let Operator::In(values) | Operator::NotIn(values) = &mut r.op {
                    values.sort();
                    values.dedup();
                }
                r
            })
            .collect();
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether any requirement tests `key`.
    pub fn constrains(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// This selector with `requirement` added.
    pub fn and(&self, requirement: Requirement) -> Selector {
        Selector::new(self.requirements.iter().cloned().chain([requirement]))
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// `key` has exactly `value`.
    pub fn equals(key: &str, value: &str) -> Requirement {
        Requirement { key: key.to_owned(), op: Operator::In(vec![value.to_owned()]) }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Selector {
    /// Kubernetes' selector text form (`app=web,tier in (a,b),!legacy`); `{}` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Operator::In(values) if values.len() == 1 => write!(f, "{}={}", r.key, values[0])?,
                Operator::In(values) => write!(f, "{} in ({})", r.key, values.join(","))?,
                Operator::NotIn(values) => write!(f, "{} notin ({})", r.key, values.join(","))?,
                Operator::Exists => f.write_str(&r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

/// A label key as written (`raw`, kept to locate errors) and without its source prefix (`key`).
/// Ordered by the raw text, so a map of them keeps every spelling the file used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LabelKey {
    pub raw: String,
    pub key: String,
}

impl<'de> Deserialize<'de> for LabelKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LabelKey, D::Error> {
        parse_str_scalar(deserializer, "a label key such as app or k8s:app", |raw| {
            check_label_key(raw).map(|key| LabelKey { raw: raw.to_owned(), key: key.to_owned() })
        })
    }
}

/// A validated label value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LabelValue(pub String);

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LabelValue, D::Error> {
        parse_str_scalar(deserializer, "a label value", |value| {
            check_label_value(value).map(|()| LabelValue(value.to_owned()))
        })
    }
}

/// Checks a label key and returns it without its source prefix.
pub(crate) fn check_label_key(raw: &str) -> Result<&str, String> {
    let key = match raw.split_once(':') {
        Some(("k8s" | "any", rest)) => rest,
        Some((source, _)) => {
            return Err(format!(
                "label source `{source}:` is not supported: sluice labels come from Kubernetes \
                 (write `k8s:` or no prefix); select reserved identities with fromEntities/toEntities"
            ))
        }
        None => raw,
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        super::names::check_dns_subdomain(prefix)
            .map_err(|why| format!("label key `{raw}`: prefix {why}"))?;
    }
    check_label_name(name).map_err(|why| format!("label key `{raw}`: name {why}"))?;
    Ok(key)
}

/// Checks a label value: empty, or a label name.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|why| format!("label value `{value}`: {why}"))
}

/// The name part of a label key, and a non-empty label value.
fn check_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(bad) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("contains {bad:?}; allowed are letters, digits, '-', '_' and '.'"));
    }
    if name.len() > 63 {
        return Err(format!("is {} characters long; at most 63 are allowed", name.len()));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err("must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn req(key: &str, op: Operator) -> Requirement {
        Requirement { key: key.to_owned(), op }
    }

    fn vals(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn matching_follows_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let bare = labels(&[]);
        let cases = [
            (req("app", Operator::In(vals(&["web", "api"]))), true, false),
            (req("app", Operator::In(vals(&["api"]))), false, false),
            (req("app", Operator::NotIn(vals(&["api"]))), true, true),
            (req("app", Operator::NotIn(vals(&["web"]))), false, true),
            (req("tier", Operator::Exists), true, false),
            (req("tier", Operator::DoesNotExist), false, true),
        ];
        for (r, on_web, on_bare) in cases {
            assert_eq!(r.matches(&web), on_web, "{r:?} on {web:?}");
            assert_eq!(r.matches(&bare), on_bare, "{r:?} on {{}}");
        }
        assert!(Selector::everything().matches(&bare));
    }

    #[test]
    fn selectors_normalize() {
        let a = Selector::new([
            req("tier", Operator::In(vals(&["b", "a", "b"]))),
            Requirement::equals("app", "web"),
            Requirement::equals("app", "web"),
        ]);
        let b =
            Selector::new([req("tier", Operator::In(vals(&["a", "b"]))), Requirement::equals("app", "web")]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "app=web,tier in (a,b)");
        assert_eq!(Selector::everything().to_string(), "{}");
    }

    #[test]
    fn keys_and_values() {
        for (raw, key) in [
            ("app", "app"),
            ("k8s:app", "app"),
            ("any:app", "app"),
            ("k8s:io.kubernetes.pod.namespace", "io.kubernetes.pod.namespace"),
            ("kubernetes.io/metadata.name", "kubernetes.io/metadata.name"),
            ("app.kubernetes.io/name", "app.kubernetes.io/name"),
        ] {
            assert_eq!(check_label_key(raw), Ok(key), "{raw}");
        }
        let rejected = [
            ("reserved:host", "label source `reserved:` is not supported: sluice labels come from Kubernetes (write `k8s:` or no prefix); select reserved identities with fromEntities/toEntities"),
            ("", "label key ``: name is empty"),
            ("-app", "label key `-app`: name must start and end with a letter or digit"),
            ("a b", "label key `a b`: name contains ' '; allowed are letters, digits, '-', '_' and '.'"),
            ("Ex.Com/app", "label key `Ex.Com/app`: prefix `Ex.Com` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')"),
            ("/app", "label key `/app`: prefix `` must be 1 to 253 characters"),
        ];
        for (raw, expected) in rejected {
            assert_eq!(check_label_key(raw), Err(expected.to_owned()), "{raw:?}");
        }
        assert_eq!(check_label_value(""), Ok(()));
        assert_eq!(check_label_value("v1.2_3-x"), Ok(()));
        assert_eq!(
            check_label_value("x/y"),
            Err("label value `x/y`: contains '/'; allowed are letters, digits, '-', '_' and '.'".to_owned())
        );
        let long = "a".repeat(64);
        assert_eq!(
            check_label_value(&long),
            Err(format!("label value `{long}`: is 64 characters long; at most 63 are allowed"))
        );
    }
}
