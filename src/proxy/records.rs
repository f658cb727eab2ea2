//! `sluice monitor --l7 FILE`: the proxy's access records as L7 flows.
//!
//! Contract: [`follow`] starts at the end of the access log (records written before it
//! started are not shown), prints each new record as one line ([`text`]) or as the JSON object
//! the proxy wrote (`json`), and returns after `count` records or when `stop` is set. A
//! truncated or replaced log is read again from its start. Records come only from
//! `sluice proxy`, so the reader knows their fields: a line it cannot read is printed as is.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The value of `"key":` in one of the proxy's records: a string's contents (escapes kept)
/// or a number's digits.
fn field<'a>(record: &'a str, key: &str) -> Option<&'a str> {
    let at = record.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &record[at..];
    if let Some(s) = rest.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return Some(&s[..i]),
                _ => escaped = false,
            }
        }
        None
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

/// One record as a line: `L7 DENIED frontend(8707) 10.0.1.10:4242 -> backend(25397)
/// 10.0.1.20:8080 DELETE /api/x 403 92us backend/ingress`.
pub fn text(record: &str) -> String {
    let get = |k| field(record, k).unwrap_or("?");
    let who = |ep: &str, id: &str| if ep.is_empty() { format!("id {id}") } else { format!("{ep}({id})") };
    format!(
        "L7 {} {} {} -> {} {} {} {} {} {}us {}",
        get("verdict"),
        who(get("source_endpoint"), get("source_identity")),
        get("source"),
        who(get("destination_endpoint"), get("destination_identity")),
        get("destination"),
        get("method"),
        get("url"),
        get("status"),
        get("latency_us"),
        get("rule"),
    )
}

/// Follows `path` (see the module contract).
pub fn follow(
    path: &Path,
    json: bool,
    count: Option<usize>,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let open = || std::fs::File::open(path);
    let mut file = open()?;
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut reader = BufReader::new(file);
    let mut shown = 0usize;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| shown < c) {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            // Nothing new, or half a record: wait, and start over if the log was rotated.
            reader.seek(SeekFrom::Start(pos))?;
            std::thread::sleep(Duration::from_millis(100));
            if std::fs::metadata(path).map(|m| m.len() < pos).unwrap_or(false) {
                file = open()?;
                reader = BufReader::new(file);
                pos = 0;
            }
            continue;
        }
        pos += n as u64;
        let record = line.trim_end();
        let shown_line = if json || !record.starts_with('{') { record.to_owned() } else { text(record) };
        writeln!(out, "{shown_line}")?;
        out.flush()?;
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"type":"l7","protocol":"http","source":"10.77.0.2:54976","source_endpoint":"frontend","source_identity":8707,"destination":"10.77.0.3:18080","destination_endpoint":"backend","destination_identity":25397,"method":"DELETE","url":"/api/\"x\"","host":"10.77.0.3:15001","status":403,"latency_us":92,"verdict":"DENIED","rule":"backend/ingress","header_mismatches":[]}"#;

    #[test]
    fn a_record_prints_as_one_flow_line() {
        assert_eq!(
            text(RECORD),
            r#"L7 DENIED frontend(8707) 10.77.0.2:54976 -> backend(25397) 10.77.0.3:18080 DELETE /api/\"x\" 403 92us backend/ingress"#
        );
    }

    #[test]
    fn follow_shows_records_written_after_it_starts() {
        let path = std::env::temp_dir().join(format!("sluice-l7-records-{}", std::process::id()));
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let stop = AtomicBool::new(false);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                // A record written in two pieces is read whole.
                f.write_all(&RECORD.as_bytes()[..40]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(250));
                writeln!(f, "{}", &RECORD[40..]).unwrap();
                writeln!(f, "{RECORD}").unwrap();
            })
        };
        let mut out = Vec::new();
        follow(&path, false, Some(2), &mut out, &stop).unwrap();
        writer.join().unwrap();
        let _ = std::fs::remove_file(&path);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().collect::<Vec<_>>(), [text(RECORD), text(RECORD)], "{out}");
    }
}
