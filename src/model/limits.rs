//! What a node file must be before the YAML parser sees it.
//!
//! Contract:
//! - [`read_node_file`] opens the path without blocking (`O_NONBLOCK`, so a FIFO or a device
//!   cannot stall the caller in `open`), checks with `fstat` on the opened file that it is a
//!   regular file (a FIFO, socket, device or directory is refused, naming what it is), and reads
//!   at most [`MAX_NODE_FILE_BYTES`]. A symlink is followed (Kubernetes mounts ConfigMaps as
//!   symlinks); the checks apply to its target, read through the one opened descriptor.
//! - [`check_shape`] runs on the text before any parsing: the text is at most
//!   [`MAX_NODE_FILE_BYTES`] long and nests at most [`MAX_NESTING`] levels. libyaml's scanner
//!   spends time quadratic in the depth of flow collections (`[[[[...`: every token re-checks
//!   every open level), and serde_norway's own recursion limit only applies after the whole
//!   document was scanned, so a deep file is refused here, in one linear pass, at the line and
//!   column where it first gets too deep.
//! - The depth scan is a conservative over-approximation of YAML's structure that never needs
//!   more than one pass: flow depth counts `[`/`{` outside quotes and comments; block depth
//!   counts indentation levels plus compact `- `/`? ` indicators at the start of a line; lines
//!   inside block scalars (`|`, `>`), quoted scalars and flow collections do not open block
//!   levels. A node file needs about ten levels, so the limit leaves room for any real file.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::error::ModelError;

/// The largest node file read: far above any real node (100,000 deny prefixes take about
/// 2 MiB), small enough that parsing it stays quick.
pub const MAX_NODE_FILE_BYTES: u64 = 16 << 20;

/// The deepest nesting of collections accepted (a node file uses about ten levels; serde_norway
/// itself stops at 128, but only after scanning the whole document).
pub const MAX_NESTING: usize = 64;

/// Reads the node file at `path`: a regular file of at most [`MAX_NODE_FILE_BYTES`], UTF-8.
pub fn read_node_file(path: &Path) -> Result<String, ModelError> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK returns at once,
        // and the fstat below refuses it. O_NOCTTY: a terminal device never becomes ours.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(ModelError::NotARegularFile { path: path.to_owned(), what });
    }
    if metadata.len() > MAX_NODE_FILE_BYTES {
        return Err(too_large(path, metadata.len()));
    }
    let mut bytes = Vec::new();
    // The file may grow after the fstat: read one byte past the limit to notice.
    file.take(MAX_NODE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_NODE_FILE_BYTES {
        return Err(too_large(path, bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}"))))
}

fn too_large(path: &Path, size: u64) -> ModelError {
    ModelError::TooLarge { path: path.to_owned(), size, limit: MAX_NODE_FILE_BYTES }
}

/// Why [`check_shape`] refused a text: 1-based line and column, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShapeError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Checks the size and nesting depth of `source` (see the module header).
pub(crate) fn check_shape(source: &str) -> Result<(), ShapeError> {
    if source.len() as u64 > MAX_NODE_FILE_BYTES {
        return Err(ShapeError {
            line: 1,
            col: 1,
            message: format!("the node file is {} bytes; the limit is {MAX_NODE_FILE_BYTES}", source.len()),
        });
    }
    let mut scan = Scan::default();
    for (index, line) in source.split('\n').enumerate() {
        scan.line(line, index + 1)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// The scanner's state between lines.
#[derive(Debug, Default)]
struct Scan {
    /// Indentation of the open block levels, innermost last.
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Block depth of the line that opened the current flow collection.
    flow_base: usize,
    quote: Option<Quote>,
    /// Inside a block scalar whose header line had this indentation.
    block_scalar: Option<usize>,
}

impl Scan {
    fn too_deep(line: usize, col: usize) -> ShapeError {
        ShapeError {
            line,
            col,
            message: format!(
                "collections nest deeper than {MAX_NESTING} levels here (a node file needs about ten); \
                 refused before parsing"
            ),
        }
    }

    fn line(&mut self, text: &str, number: usize) -> Result<(), ShapeError> {
        let text = text.strip_suffix('\r').unwrap_or(text);
        let indent = text.len() - text.trim_start_matches(' ').len();
        let rest = &text[indent..];
        let blank = rest.trim().is_empty() || rest.starts_with('#');
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        // Block structure: only lines that start in block context open levels.
        let mut depth = self.flow_base;
        let mut at_value_start = true;
        let mut chars = text.char_indices().skip(indent).peekable();
        if self.flow == 0 && self.quote.is_none() {
            if blank {
                return Ok(());
            }
            while self.indents.last().is_some_and(|&top| top > indent) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&indent) {
                self.indents.push(indent);
            }
            depth = self.indents.len();
            if depth > MAX_NESTING {
                return Err(Scan::too_deep(number, indent + 1));
            }
        }
        if self.flow == 0 && self.quote.is_none() && indent == 0 {
            // A document marker (`---`, `...`) may carry the document's value after it.
            for marker in ["---", "..."] {
                if rest.starts_with(marker) && rest[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
                {
                    chars.nth(2);
                }
            }
        }
        // The column of byte offset `at`, counted only for an error: counting it for every
        // character would make a long line quadratic.
        let col = |at: usize| text[..at].chars().count() + 1;
        let mut prev: Option<char> = None;
        while let Some((at, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            match self.quote {
                Some(Quote::Single) => {
                    if c == '\'' {
                        if next == Some('\'') {
                            chars.next();
                        } else {
                            self.quote = None;
                        }
                    }
                }
                Some(Quote::Double) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        self.quote = None;
                    }
                }
                None => {
                    let separated = next.is_none_or(|n| n == ' ' || n == '\t');
                    match c {
                        '#' if prev.is_none_or(|p| p == ' ' || p == '\t') => break,
                        '&' | '!' if at_value_start => {
                            // An anchor or a tag: the value still starts after it.
                            while chars.peek().is_some_and(|&(_, n)| n != ' ' && n != '\t') {
                                chars.next();
                            }
                        }
                        '\'' | '"' if at_value_start => {
                            self.quote = Some(if c == '\'' { Quote::Single } else { Quote::Double });
                        }
                        '[' | '{' if at_value_start || self.flow > 0 => {
                            if self.flow == 0 {
                                self.flow_base = depth;
                            }
                            self.flow += 1;
                            if self.flow_base + self.flow > MAX_NESTING {
                                return Err(Scan::too_deep(number, col(at)));
                            }
                            at_value_start = true;
                        }
                        ']' | '}' if self.flow > 0 => {
                            self.flow -= 1;
                            at_value_start = false;
                        }
                        ',' if self.flow > 0 => at_value_start = true,
                        '-' | '?' if self.flow == 0 && at_value_start && separated => {
                            // A compact block sequence (or complex key) nests one level more.
                            depth += 1;
                            if depth > MAX_NESTING {
                                return Err(Scan::too_deep(number, col(at)));
                            }
                        }
                        ':' if separated => at_value_start = true,
                        '|' | '>' if self.flow == 0 && at_value_start => {
                            self.block_scalar = Some(indent);
                            break;
                        }
                        ' ' | '\t' => {}
                        _ => at_value_start = false,
                    }
                }
            }
            prev = Some(c);
        }
        if self.flow == 0 {
            self.flow_base = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deepest_ok(text: &str) -> bool {
        check_shape(text).is_ok()
    }

    #[test]
    fn real_files_pass() {
        for text in [
            include_str!("../../fixtures/default-node.yaml"),
            include_str!("../../fixtures/policy/demo.yaml"),
            "a: 'it''s [not' # [[[ comment\nb: \"[\\\"{\"\nc: |\n  [[[[[[\n  {{{{\nd: x[1]\n",
        ] {
            assert!(deepest_ok(text), "{text}");
        }
    }

    #[test]
    fn depth_limits_each_kind_of_nesting() {
        let flow = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        // `a:` is one block level.
        assert!(deepest_ok(&flow(MAX_NESTING - 1)));
        let err = check_shape(&flow(MAX_NESTING)).unwrap_err();
        assert_eq!((err.line, err.col), (1, 4 + MAX_NESTING - 1), "{err:?}");

        let compact = |n: usize| format!("{}x\n", "- ".repeat(n));
        assert!(deepest_ok(&compact(MAX_NESTING - 1)));
        let err = check_shape(&compact(MAX_NESTING)).unwrap_err();
        assert_eq!((err.line, err.col), (1, 2 * MAX_NESTING - 1), "{err:?}");

        let indented: String = (0..=MAX_NESTING).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        let err = check_shape(&indented).unwrap_err();
        assert_eq!((err.line, err.col), (MAX_NESTING + 1, MAX_NESTING + 1), "{err:?}");

        // Anchors, tags and document markers do not hide what follows them.
        for head in ["a: &x ", "a: !t ", "--- ", "--- !t &x "] {
            let text = format!("{head}{}{}\n", "[".repeat(MAX_NESTING + 1), "]".repeat(MAX_NESTING + 1));
            assert!(check_shape(&text).is_err(), "{head:?} hid the nesting");
        }
        // A long line is scanned in linear time (the column is counted only for an error).
        let long = format!("deny: [{}]\n", vec!["10.0.0.0/8"; 200_000].join(", "));
        assert!(deepest_ok(&long));

        // Flow collections over several lines count from the block level that opened them:
        // `a` is level 1, `b` 2, its `[` 3, and line L (from 3 on) opens level L + 1.
        let multi = format!("a:\n  b: [\n{}\n]\n", "[\n".repeat(MAX_NESTING));
        assert_eq!(check_shape(&multi).unwrap_err().line, MAX_NESTING);
    }
}
