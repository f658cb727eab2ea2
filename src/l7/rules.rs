//! HTTP rules compiled, and applied to one request.
//!
//! Contract (Cilium's semantics, as its proxy applies them; `pkg/policy/api/http.go` and the
//! Envoy header matchers Cilium builds from it):
//! - `method`, `path` and `host` are regular expressions that must match the whole value:
//!   Cilium hands them to Envoy as `safe_regex_match` header matchers (RE2), which "implies the
//!   entire request header value must match the regex". So each is compiled as `^(?:re)$`.
//!   `path` is matched against the request target as sent (Envoy's `:path`: path and query);
//!   `host` against the `Host` header (`:authority`), port included when the client sent one.
//! - A field that is absent or empty matches everything ("If omitted or empty, all methods are
//!   allowed").
//! - A header rule needs the header present with exactly `value` (any value when `value` is
//!   `None`); names compare without ASCII case, values exactly; a header sent several times
//!   matches when one of its values does. A `LOG` header rule that fails does not fail its
//!   rule: the mismatch is returned with the decision.
//! - A request is allowed when any rule of the set matches it (rules are alternatives); the
//!   decision names the first matching rule. A set with no rules allows nothing.
//! - Regular expressions are the `regex` crate's: RE2 syntax and linear-time matching, the
//!   same engine family Cilium validates with (Go `regexp`) and Envoy runs (RE2). A size
//!   limit keeps a hostile pattern from costing more than [`REGEX_SIZE_LIMIT`] bytes.

use regex::{Regex, RegexBuilder};

use crate::model::policy::{HttpRule, Mismatch};

/// The most memory one compiled pattern may take.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` anchored at both ends.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build()
}

/// Whether `pattern` is a usable rule pattern; the reason when not (one line).
pub fn check_regex(pattern: &str) -> Result<(), String> {
    compile(pattern).map(drop).map_err(|e| match e {
        regex::Error::Syntax(text) => {
            let last = text.lines().last().unwrap_or("syntax error").trim();
            last.strip_prefix("error: ").unwrap_or(last).to_owned()
        }
        regex::Error::CompiledTooBig(limit) => format!("compiles to more than {limit} bytes"),
        other => other.to_string(),
    })
}

/// What a rule looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target (`/a/b?x=1`).
    pub path: &'a str,
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2), if any.
    pub host: Option<&'a str>,
    /// Every header as (name, value), names in any case.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl Request<'_> {
    fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone)]
struct CompiledHeader {
    name: String,
    value: Option<String>,
    on_mismatch: Mismatch,
}

/// One rule, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<CompiledHeader>,
    /// The rule as written, for flow records.
    pub source: HttpRule,
}

/// A rule set's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rule `rule` (index in the set) matched; `logged` names the `LOG` header rules it
    /// matched despite.
    Allowed {
        rule: usize,
        logged: Vec<String>,
    },
    Denied,
}

/// The rules of one port: alternatives.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
}

/// A rule whose pattern does not compile (the model checks patterns, so only rules built
/// by hand meet this).
#[derive(Debug, thiserror::Error)]
#[error("HTTP rule pattern {pattern:?}: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

impl CompiledRule {
    pub fn new(rule: &HttpRule) -> Result<CompiledRule, BadPattern> {
        let field = |p: &Option<String>| -> Result<Option<Regex>, BadPattern> {
            p.as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| compile(p).map_err(|e| BadPattern { pattern: p.to_owned(), reason: e.to_string() }))
                .transpose()
        };
        Ok(CompiledRule {
            method: field(&rule.method)?,
            path: field(&rule.path)?,
            host: field(&rule.host)?,
            headers: rule
                .headers
                .iter()
                .map(|h| CompiledHeader {
                    name: h.name.clone(),
                    value: h.value.clone(),
                    on_mismatch: h.on_mismatch,
                })
                .collect(),
            source: rule.clone(),
        })
    }

    /// `None` when the rule does not match; else the `LOG` header rules that mismatched.
    pub fn matches(&self, req: &Request<'_>) -> Option<Vec<String>> {
        let field = |re: &Option<Regex>, value: Option<&str>| match (re, value) {
            (None, _) => true,
            (Some(re), Some(v)) => re.is_match(v),
            (Some(_), None) => false,
        };
        if !field(&self.method, Some(req.method))
            || !field(&self.path, Some(req.path))
            || !field(&self.host, req.host)
        {
            return None;
        }
        let mut logged = Vec::new();
        for h in &self.headers {
            let present = match &h.value {
                None => req.header_values(&h.name).next().is_some(),
                Some(want) => req.header_values(&h.name).any(|v| v == want.as_bytes()),
            };
            if !present {
                match h.on_mismatch {
                    Mismatch::Fail => return None,
                    Mismatch::Log => logged.push(match &h.value {
                        Some(v) => format!("{}: {v}", h.name),
                        None => h.name.clone(),
                    }),
                }
            }
        }
        Some(logged)
    }
}

impl RuleSet {
    pub fn new(rules: &[HttpRule]) -> Result<RuleSet, BadPattern> {
        Ok(RuleSet { rules: rules.iter().map(CompiledRule::new).collect::<Result<_, _>>()? })
    }

    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.rules
            .iter()
            .enumerate()
            .find_map(|(rule, r)| r.matches(req).map(|logged| Decision::Allowed { rule, logged }))
            .unwrap_or(Decision::Denied)
    }
}

/// A rule as one line: `GET /public/.* host=api`, `*` for an absent field.
pub fn describe(rule: &HttpRule) -> String {
    let mut out =
        format!("{} {}", rule.method.as_deref().unwrap_or("*"), rule.path.as_deref().unwrap_or("*"));
    if let Some(host) = &rule.host {
        out.push_str(&format!(" host={host}"));
    }
    for h in &rule.headers {
        out.push_str(&format!(
            " [{}{}]",
            h.name,
            h.value.as_deref().map(|v| format!(": {v}")).unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::HeaderRule;

    fn rule(
        method: Option<&str>,
        path: Option<&str>,
        host: Option<&str>,
        headers: &[(&str, Option<&str>, Mismatch)],
    ) -> HttpRule {
        HttpRule {
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
            host: host.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(n, v, m)| HeaderRule {
                    name: (*n).to_owned(),
                    value: v.map(str::to_owned),
                    on_mismatch: *m,
                })
                .collect(),
        }
    }

    /// (doc sentence or reason, rules, method, path, host, headers, expected: allowed?)
    type Case = (
        &'static str,
        Vec<HttpRule>,
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<(&'static str, &'static [u8])>,
        bool,
    );

    fn cases() -> Vec<Case> {
        let get_public = || vec![rule(Some("GET"), Some("/public"), None, &[])];
        let put_with_header = || {
            vec![rule(Some("PUT"), Some("/public$"), None, &[("X-My-Header", Some("true"), Mismatch::Fail)])]
        };
        vec![
            // Cilium docs, "Layer 7 Examples": "allow GET requests to the URL /public from
            // the endpoints with the labels env=prod to endpoints with the labels app=service,
            // but requests to any other URL, or using another method, will be rejected."
            ("docs: GET /public allowed", get_public(), "GET", "/public", None, vec![], true),
            ("docs: other URL rejected", get_public(), "GET", "/private", None, vec![], false),
            ("docs: other method rejected", get_public(), "POST", "/public", None, vec![], false),
            // Anchoring: Envoy's safe_regex_match "implies the entire request header value must
            // match the regex".
            ("anchored: a longer path is another URL", get_public(), "GET", "/public/x", None, vec![], false),
            (
                "anchored: a prefix before is another URL",
                get_public(),
                "GET",
                "/x/public",
                None,
                vec![],
                false,
            ),
            ("anchored: the query is part of :path", get_public(), "GET", "/public?a=1", None, vec![], false),
            ("anchored: method GET is not GETX", get_public(), "GETX", "/public", None, vec![], false),
            (
                "anchored: alternation stays inside the anchors",
                vec![rule(Some("GET|HEAD"), None, None, &[])],
                "XHEAD",
                "/",
                None,
                vec![],
                false,
            ),
            (
                "alternation allows each method",
                vec![rule(Some("GET|HEAD"), None, None, &[])],
                "HEAD",
                "/",
                None,
                vec![],
                true,
            ),
            // Cilium docs: "The following example limits all endpoints which carry the labels
            // app=myService to only be able to receive packets on port 80 using TCP. ... GET
            // /path1 and PUT /path2 with the HTTP header X-My-Header set to true."
            (
                "docs: PUT with X-My-Header: true",
                put_with_header(),
                "PUT",
                "/public",
                None,
                vec![("x-my-header", b"true")],
                true,
            ),
            ("docs: header missing rejects", put_with_header(), "PUT", "/public", None, vec![], false),
            (
                "docs: header value differs rejects",
                put_with_header(),
                "PUT",
                "/public",
                None,
                vec![("X-My-Header", b"false")],
                false,
            ),
            (
                "header names ignore case",
                put_with_header(),
                "PUT",
                "/public",
                None,
                vec![("X-MY-HEADER", b"true")],
                true,
            ),
            (
                "header values are exact",
                put_with_header(),
                "PUT",
                "/public",
                None,
                vec![("X-My-Header", b"TRUE")],
                false,
            ),
            (
                "one of several values suffices",
                put_with_header(),
                "PUT",
                "/public",
                None,
                vec![("X-My-Header", b"no"), ("X-My-Header", b"true")],
                true,
            ),
            (
                "presence-only header",
                vec![rule(None, None, None, &[("X-Auth", None, Mismatch::Fail)])],
                "GET",
                "/",
                None,
                vec![("x-auth", b"")],
                true,
            ),
            // http.go: "Mismatch identifies what to do in case there is no match. The default is
            // to drop the request. Otherwise the overall rule is still considered as matching,
            // but the mismatches are logged in the access log."
            (
                "LOG: a mismatch still matches",
                vec![rule(None, None, None, &[("X-Token", Some("s3"), Mismatch::Log)])],
                "GET",
                "/",
                None,
                vec![],
                true,
            ),
            // Cilium docs (regex path): "/public/.*" allows everything below /public/.
            (
                "docs: path regex /public/.*",
                vec![rule(Some("GET"), Some("/public/.*"), None, &[])],
                "GET",
                "/public/a/b",
                None,
                vec![],
                true,
            ),
            (
                "path regex needs the slash",
                vec![rule(Some("GET"), Some("/public/.*"), None, &[])],
                "GET",
                "/publicity",
                None,
                vec![],
                false,
            ),
            // http.go: "Host is an extended POSIX regex matched against the host header of a
            // request, e.g. "foo.com"".
            (
                "host matches",
                vec![rule(None, None, Some("foo\\.com"), &[])],
                "GET",
                "/",
                Some("foo.com"),
                vec![],
                true,
            ),
            (
                "host with port is another value",
                vec![rule(None, None, Some("foo\\.com"), &[])],
                "GET",
                "/",
                Some("foo.com:8080"),
                vec![],
                false,
            ),
            (
                "host absent fails a host rule",
                vec![rule(None, None, Some("foo\\.com"), &[])],
                "GET",
                "/",
                None,
                vec![],
                false,
            ),
            (
                "host: unescaped dot is any character",
                vec![rule(None, None, Some("foo.com"), &[])],
                "GET",
                "/",
                Some("fooxcom"),
                vec![],
                true,
            ),
            // http.go: "If omitted or empty, all methods are allowed."
            (
                "empty rule allows every request",
                vec![rule(None, None, None, &[])],
                "DELETE",
                "/anything",
                None,
                vec![],
                true,
            ),
            (
                "rules are alternatives",
                vec![rule(Some("GET"), None, None, &[]), rule(Some("DELETE"), Some("/tmp/.*"), None, &[])],
                "DELETE",
                "/tmp/x",
                None,
                vec![],
                true,
            ),
            (
                "no rule matches: denied",
                vec![rule(Some("GET"), None, None, &[]), rule(Some("DELETE"), Some("/tmp/.*"), None, &[])],
                "DELETE",
                "/etc",
                None,
                vec![],
                false,
            ),
            ("an empty set denies", vec![], "GET", "/", None, vec![], false),
        ]
    }

    #[test]
    fn cilium_http_rule_examples() {
        let mut failures = Vec::new();
        for (what, rules, method, path, host, headers, want) in cases() {
            let set = RuleSet::new(&rules).unwrap();
            let req = Request { method, path, host, headers: &headers };
            let got = matches!(set.decide(&req), Decision::Allowed { .. });
            if got != want {
                failures.push(format!("{what}: {method} {path} host={host:?} headers={headers:?}: expected allowed={want}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn decisions_name_the_rule_and_logged_mismatches() {
        let set = RuleSet::new(&[
            rule(Some("POST"), None, None, &[]),
            rule(Some("GET"), None, None, &[("X-Token", Some("s3"), Mismatch::Log)]),
        ])
        .unwrap();
        let req = Request { method: "GET", path: "/", host: None, headers: &[] };
        assert_eq!(set.decide(&req), Decision::Allowed { rule: 1, logged: vec!["X-Token: s3".to_owned()] });
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (pattern, reason) in [
            ("(", "unclosed group"),
            ("[z-a]", "invalid character class range"),
            ("a{5000}{5000}", "compiles to more than"),
        ] {
            let err = check_regex(pattern).unwrap_err();
            assert!(err.contains(reason), "{pattern}: expected a reason containing {reason:?}, got {err:?}");
        }
        assert_eq!(check_regex("/api/v[0-9]+/.*"), Ok(()));
    }
}
