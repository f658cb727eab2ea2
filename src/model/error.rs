//! `ModelError`: why a node file was rejected, and where.
//!
//! Contract:
//! - Every rejection of file content is [`ModelError::Invalid`] and names the file, the 1-based
//!   line and column of the offending YAML node (lines count from the top of the whole file,
//!   across documents), the field path when one applies (`spec.prefilter.deny[1]`), and a
//!   message. It displays as `{file}:{line}:{col}: {path}: {message}`, or
//!   `{file}:{line}:{col}: {message}` without a path.
//! - A file that cannot be read is [`ModelError::Io`], naming the path; one that is not a
//!   regular file or is too large is refused before it is read ([`super::limits`]).
//! - The YAML reader is serde_norway, the maintained fork of serde_yaml (deprecated upstream)
//!   with the same API, messages and locations, on a maintained libyaml port.
//! - Errors from serde_norway are converted by [`ModelError::from_yaml`]. serde_norway exposes the
//!   location of an error but not its path or bare message, so those are recovered from its
//!   `Display` text (`PATH: MESSAGE at line L column C`, frozen in serde_norway 0.9); the unit
//!   tests below pin that shape. The few errors serde_norway cannot place (the alias repetition
//!   limit) point at 1:1.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a node file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The node file could not be read.
    #[error("{}: cannot read node file: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// The node file is not a regular file (a FIFO, a device, a directory...): reading it could
    /// block or never end, so it is refused before any read.
    #[error("{}: cannot read node file: it is {what}; a node file must be a regular file", path.display())]
    NotARegularFile { path: PathBuf, what: &'static str },

    /// The node file is larger than [`super::limits::MAX_NODE_FILE_BYTES`].
    #[error("{}: cannot read node file: it is {size} bytes; the limit is {limit}", path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64 },

    /// The content is not a valid node file: YAML syntax, schema or a value's validation.
    #[error("{file}:{line}:{col}: {}{message}", PathPrefix(path.as_deref()))]
    Invalid {
        /// The origin given to `parse_str` (the path for `load_file`).
        file: String,
        /// 1-based line in the whole file.
        line: usize,
        /// 1-based column.
        col: usize,
        /// Dotted field path with indices, e.g. `spec.prefilter.deny[1]`; `None` at top level.
        path: Option<String>,
        message: String,
    },
}

struct PathPrefix<'a>(Option<&'a str>);

impl fmt::Display for PathPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{path}: "),
            None => Ok(()),
        }
    }
}

impl ModelError {
    /// An error at a known place that serde_norway did not report.
    pub(crate) fn at(file: &str, line: usize, col: usize, message: impl Into<String>) -> Self {
        ModelError::Invalid { file: file.to_owned(), line, col, path: None, message: message.into() }
    }

    /// Converts a serde_norway error (syntax, schema, or a custom error from a `Deserialize` impl)
    /// raised while reading the file named `file`.
    pub(crate) fn from_yaml(file: &str, err: &serde_norway::Error) -> Self {
        let mut text = err.to_string();
        let (line, col) = match err.location() {
            Some(loc) => {
                // serde_norway appends the location to its messages; libyaml puts it right after
                // the problem, before any context. We carry it in fields instead.
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                if let Some(at) = text.find(&suffix) {
                    text.replace_range(at..at + suffix.len(), "");
                }
                (loc.line(), loc.column())
            }
            None => (1, 1),
        };
        let (path, message) = split_path(text);
        ModelError::Invalid { file: file.to_owned(), line, col, path, message }
    }

    /// The 1-based (line, column) of the offending node, if this error has one.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ModelError::Invalid { line, col, .. } => Some((*line, *col)),
            ModelError::Io { .. } | ModelError::NotARegularFile { .. } | ModelError::TooLarge { .. } => None,
        }
    }
}

/// Splits serde_norway's `PATH: MESSAGE` into its parts. A prefix counts as a path only if it is
/// spelled like one serde_norway prints (keys, `[index]`, `.`, `?`, no spaces), so a message that
/// merely contains ": " is left whole.
fn split_path(text: String) -> (Option<String>, String) {
    if let Some((head, rest)) = text.split_once(": ") {
        let path_like = !head.is_empty()
            && head.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'.' | b'[' | b']' | b'?')
            });
        if path_like {
            return (Some(head.to_owned()), rest.to_owned());
        }
    }
    (None, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only the errors are looked at
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        list: Vec<u8>,
    }

    fn convert(yaml: &str) -> ModelError {
        let err = serde_norway::from_str::<Outer>(yaml).expect_err(yaml);
        ModelError::from_yaml("t.yaml", &err)
    }

    /// Pins the serde_norway 0.9 message shape that `from_yaml` takes apart.
    #[test]
    fn splits_serde_norway_messages() {
        let cases = [
            (
                "inner:\n  list: [1, 300]\n",
                "t.yaml:2:13: inner.list[1]: invalid value: integer `300`, expected u8",
            ),
            (
                "inner:\n  lost: []\n",
                "t.yaml:2:3: inner: unknown field `lost`, expected `list`",
            ),
            ("inner: {}\n", "t.yaml:1:8: inner: missing field `list`"),
            (
                "inner:\n  list: [1, 2\n",
                "t.yaml:3:1: did not find expected ',' or ']', while parsing a flow sequence at line 2 column 9",
            ),
        ];
        for (yaml, expected) in cases {
            assert_eq!(convert(yaml).to_string(), expected, "input {yaml:?}");
        }
    }

    #[test]
    fn path_split_needs_a_path_spelling() {
        let (path, message) = split_path("spec.prefilter.deny[1]: bad".to_owned());
        assert_eq!((path.as_deref(), message.as_str()), (Some("spec.prefilter.deny[1]"), "bad"));
        let (path, message) = split_path("invalid type: map, expected x".to_owned());
        assert_eq!((path, message.as_str()), (None, "invalid type: map, expected x"));
    }
}
