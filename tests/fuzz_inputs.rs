//! Bounded fuzzing of the two readers of untrusted input, run by `cargo test` (so in CI):
//! the node-file model and the capture reader. Inputs are random bytes and random
//! mutations (flips, insertions, deletions, splices) of real inputs: the default node file
//! and a capture built here. The property is the one users rely on: the reader returns
//! (a value or an error, with a location for the model) and never panics or hangs. The
//! case count is `PROPTEST_CASES` (2,048 per property here).

use proptest::prelude::*;
use sluice::packet::PacketBuilder;
use sluice_verifier_sim::pcap::Capture;

const NODE: &str = include_str!("../fixtures/default-node.yaml");

/// One mutation of `base`: each op picks a position, then flips, inserts, deletes or
/// duplicates a run of bytes.
fn mutate(base: &[u8], ops: &[(u8, u32, u8)]) -> Vec<u8> {
    let mut out = base.to_vec();
    for &(op, at, byte) in ops {
        let at = if out.is_empty() { 0 } else { at as usize % out.len() };
        match op % 4 {
            0 if !out.is_empty() => out[at] ^= byte | 1,
            1 => out.insert(at, byte),
            2 if !out.is_empty() => {
                let end = (at + usize::from(byte % 16) + 1).min(out.len());
                out.drain(at..end);
            }
            _ => {
                let end = (at + usize::from(byte % 32) + 1).min(out.len());
                let run: Vec<u8> = out[at..end].to_vec();
                out.splice(at..at, run);
            }
        }
    }
    out
}

/// A small classic pcap of a few frames the packet builder makes.
fn capture() -> Vec<u8> {
    let mut out = Vec::new();
    for w in [0xa1b2_c3d4u32.to_le_bytes().as_slice(), &2u16.to_le_bytes(), &4u16.to_le_bytes()] {
        out.extend_from_slice(w);
    }
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for port in [80u16, 443, 53] {
        let frame = PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1].into(), [10, 0, 0, 2].into())
            .udp(40_000, port)
            .payload(b"fuzz")
            .build();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

fn read_capture(bytes: &[u8]) {
    if let Ok(cap) = Capture::parse(bytes) {
        // Every record or the first error; never more records than bytes.
        assert!(cap.packets().take(bytes.len() + 1).count() <= bytes.len() + 1);
    }
}

fn read_node(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Err(e) = sluice::model::parse_str(&text, "fuzz.yaml") {
        assert!(e.to_string().contains("fuzz.yaml"), "an error names the file: {e}");
    }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2048, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_model_never_panics_on_a_mutated_node_file(ops in prop::collection::vec(any::<(u8, u32, u8)>(), 1..24)) {
        read_node(&mutate(NODE.as_bytes(), &ops));
    }

    #[test]
    fn the_model_never_panics_on_random_text(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_node(&bytes);
    }

    #[test]
    fn the_capture_reader_never_panics_on_a_mutated_capture(ops in prop::collection::vec(any::<(u8, u32, u8)>(), 1..16)) {
        read_capture(&mutate(&capture(), &ops));
    }

    #[test]
    fn the_capture_reader_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_capture(&bytes);
    }
}

#[test]
fn the_seed_inputs_are_read() {
    sluice::model::parse_str(NODE, "default-node.yaml").expect("the default node parses");
    let bytes = capture();
    let cap = Capture::parse(&bytes).expect("the built capture parses");
    assert_eq!(cap.packets().filter(Result::is_ok).count(), 3);
}
