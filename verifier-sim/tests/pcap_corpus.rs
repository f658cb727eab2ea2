//! The pcap/pcapng reader as a specification: hand-built captures with known contents and known
//! defects, the tcpdump test corpus read end to end, and no-panic checks over truncated and
//! corrupted inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sluice_verifier_sim::pcap::{Capture, Format, LinkType, PcapError, Record};

// ---------------------------------------------------------------------------------------------
// Building captures by hand.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum E {
    Le,
    Be,
}

#[derive(Debug)]
struct Buf {
    e: E,
    bytes: Vec<u8>,
}

impl Buf {
    fn new(e: E) -> Self {
        Buf { e, bytes: Vec::new() }
    }
    fn u16(mut self, v: u16) -> Self {
        let b = match self.e {
            E::Le => v.to_le_bytes(),
            E::Be => v.to_be_bytes(),
        };
        self.bytes.extend_from_slice(&b);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        let b = match self.e {
            E::Le => v.to_le_bytes(),
            E::Be => v.to_be_bytes(),
        };
        self.bytes.extend_from_slice(&b);
        self
    }
    fn u64(mut self, v: u64) -> Self {
        let b = match self.e {
            E::Le => v.to_le_bytes(),
            E::Be => v.to_be_bytes(),
        };
        self.bytes.extend_from_slice(&b);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.bytes.extend_from_slice(b);
        self
    }
    fn pad4(mut self) -> Self {
        self.bytes.resize(self.bytes.len().div_ceil(4) * 4, 0);
        self
    }
}

/// A classic pcap: `records` are (seconds, fraction, data, original length).
fn pcap(e: E, nano: bool, linktype: u32, records: &[(u32, u32, &[u8], u32)]) -> Vec<u8> {
    let magic = if nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    let mut b = Buf::new(e).u32(magic).u16(2).u16(4).u32(0).u32(0).u32(65535).u32(linktype);
    for &(s, frac, data, orig) in records {
        b = b.u32(s).u32(frac).u32(data.len() as u32).u32(orig).raw(data);
    }
    b.bytes
}

/// A pcapng block with a correct total length around `body` (padded to 32 bits).
fn block(e: E, block_type: u32, body: &[u8]) -> Vec<u8> {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    Buf::new(e).u32(block_type).u32(total).raw(body).pad4().u32(total).bytes
}

fn shb(e: E) -> Vec<u8> {
    let body = Buf::new(e).u32(0x1a2b_3c4d).u16(1).u16(0).u64(u64::MAX);
    block(e, 0x0a0d_0d0a, &body.bytes)
}

fn idb(e: E, link: u16, snaplen: u32, tsresol: Option<u8>) -> Vec<u8> {
    let mut body = Buf::new(e).u16(link).u16(0).u32(snaplen);
    if let Some(r) = tsresol {
        body = body.u16(9).u16(1).raw(&[r]).pad4();
    }
    body = body.u16(0).u16(0);
    block(e, 1, &body.bytes)
}

fn epb(e: E, if_id: u32, ts: u64, data: &[u8], orig: u32) -> Vec<u8> {
    let body = Buf::new(e)
        .u32(if_id)
        .u32((ts >> 32) as u32)
        .u32(ts as u32)
        .u32(data.len() as u32)
        .u32(orig)
        .raw(data)
        .pad4();
    block(e, 6, &body.bytes)
}

fn opb(e: E, if_id: u16, ts: u64, data: &[u8], orig: u32) -> Vec<u8> {
    let body = Buf::new(e)
        .u16(if_id)
        .u16(0)
        .u32((ts >> 32) as u32)
        .u32(ts as u32)
        .u32(data.len() as u32)
        .u32(orig)
        .raw(data)
        .pad4();
    block(e, 2, &body.bytes)
}

fn spb(e: E, orig: u32, data: &[u8]) -> Vec<u8> {
    let body = Buf::new(e).u32(orig).raw(data).pad4();
    block(e, 3, &body.bytes)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Every record up to the first error, and that error.
fn drain(bytes: &[u8]) -> (Vec<Record<'_>>, Option<PcapError>) {
    let capture = Capture::parse(bytes).expect("header parses");
    let mut records = Vec::new();
    let mut packets = capture.packets();
    for item in packets.by_ref() {
        match item {
            Ok(r) => records.push(r),
            Err(e) => {
                assert!(packets.next().is_none(), "iteration continues after {e}");
                return (records, Some(e));
            }
        }
    }
    (records, None)
}

// ---------------------------------------------------------------------------------------------
// Classic pcap.

#[test]
fn classic_pcap_both_orders_micro_and_nano() {
    // Records (1 s, 500_000) and (1 s, 250_000): the fraction is micro- or nanoseconds.
    let cases = [
        (E::Le, false, [1_500_000_000u64, 1_250_000_000]),
        (E::Be, false, [1_500_000_000, 1_250_000_000]),
        (E::Le, true, [1_000_500_000, 1_000_250_000]),
        (E::Be, true, [1_000_500_000, 1_000_250_000]),
    ];
    for (e, nano, ts) in cases {
        let bytes = pcap(e, nano, 1, &[(1, 500_000, b"abcd", 60), (1, 250_000, b"", 0)]);
        let capture = Capture::parse(&bytes).unwrap();
        assert_eq!(capture.format(), Format::Pcap);
        assert_eq!(capture.link_type(), Some(LinkType::ETHERNET));
        assert_eq!(capture.snaplen(), Some(65535));
        assert_eq!(capture.is_nanosecond(), nano);
        let (records, err) = drain(&bytes);
        assert_eq!(err, None, "{e:?} nano={nano}");
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0],
            Record { index: 0, link_type: LinkType::ETHERNET, ts_ns: ts[0], data: b"abcd", orig_len: 60 }
        );
        assert_eq!((records[1].index, records[1].ts_ns), (1, ts[1]));
        assert!(records[1].data.is_empty());
    }
}

#[test]
fn classic_pcap_linktype_fcs_bits_are_masked() {
    // FCS length 4 in bits 28..=31, "FCS present" bit 26.
    let bytes = pcap(E::Le, false, 0x4400_0065, &[(0, 0, b"\x45", 1)]);
    let (records, err) = drain(&bytes);
    assert_eq!(err, None);
    assert_eq!(records[0].link_type, LinkType::RAW);
    assert_eq!(LinkType::RAW.name(), Some("RAW"));
    assert_eq!(LinkType(147).to_string(), "LINKTYPE(147)");
}

#[test]
fn classic_pcap_header_only_has_no_packets() {
    let bytes = pcap(E::Be, false, 113, &[]);
    let (records, err) = drain(&bytes);
    assert!(records.is_empty());
    assert_eq!(err, None);
    assert_eq!(Capture::parse(&bytes).unwrap().link_type(), Some(LinkType::LINUX_SLL));
}

#[test]
fn classic_pcap_truncated_record_data() {
    let mut bytes = pcap(E::Le, false, 1, &[(0, 0, b"one", 3), (0, 0, &[7; 100], 100)]);
    bytes.truncate(bytes.len() - 90);
    let (records, err) = drain(&bytes);
    assert_eq!(records.len(), 1);
    assert_eq!(err, Some(PcapError::Truncated { index: 1, offset: 24 + 16 + 3, needed: 116, available: 26 }));
    let err = err.unwrap();
    assert_eq!((err.index(), err.offset()), (Some(1), Some(43)));
    assert!(err.to_string().contains("record 1 at offset 43"), "{err}");
}

#[test]
fn classic_pcap_truncated_record_header() {
    let mut bytes = pcap(E::Be, true, 1, &[(0, 0, b"one", 3), (0, 0, b"two", 3)]);
    bytes.truncate(24 + 16 + 3 + 10);
    let (records, err) = drain(&bytes);
    assert_eq!(records.len(), 1);
    assert!(matches!(err, Some(PcapError::Truncated { index: 1, needed: 16, available: 10, .. })));
}

#[test]
fn header_errors() {
    let cases: &[(&[u8], PcapError)] = &[
        (b"", PcapError::TooShort { len: 0, need: 4 }),
        (b"\xd4\xc3", PcapError::TooShort { len: 2, need: 4 }),
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", PcapError::TooShort { len: 8, need: 24 }),
        (b"GIF89a..................", PcapError::BadMagic { magic: 0x4749_4638 }),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00", PcapError::TooShort { len: 8, need: 28 }),
    ];
    for (bytes, expected) in cases {
        assert_eq!(Capture::parse(bytes).err().as_ref(), Some(expected), "input {bytes:02x?}");
    }
}

// ---------------------------------------------------------------------------------------------
// pcapng.

#[test]
fn pcapng_both_orders_interfaces_and_packet_blocks() {
    for e in [E::Le, E::Be] {
        let bytes = cat(&[
            shb(e),
            idb(e, 1, 0, None),
            idb(e, 101, 0, Some(9)),
            idb(e, 228, 0, Some(0x8a)),
            block(e, 5, &[0; 12]),          // interface statistics: skipped
            block(e, 0x0bad_f00d, b"what"), // unknown: skipped
            epb(e, 0, 3_000_001, b"ether", 64),
            epb(e, 1, 2_000_000_007, b"raw ip", 6),
            epb(e, 2, 2048 + 512, b"v4", 2),
            opb(e, 0, 5, b"old", 3),
        ]);
        let capture = Capture::parse(&bytes).unwrap();
        assert_eq!(capture.format(), Format::PcapNg);
        assert_eq!(capture.link_type(), None);
        let (records, err) = drain(&bytes);
        assert_eq!(err, None, "{e:?}");
        let got: Vec<_> =
            records.iter().map(|r| (r.index, r.link_type, r.ts_ns, r.data, r.orig_len)).collect();
        let expected: Vec<(usize, LinkType, u64, &[u8], u32)> = vec![
            (0, LinkType::ETHERNET, 3_000_001_000, b"ether", 64),
            (1, LinkType::RAW, 2_000_000_007, b"raw ip", 6),
            (2, LinkType::IPV4, 2_500_000_000, b"v4", 2),
            (3, LinkType::ETHERNET, 5_000, b"old", 3),
        ];
        assert_eq!(got, expected, "{e:?}");
    }
}

#[test]
fn pcapng_simple_packet_block_uses_interface_zero_and_snaplen() {
    let e = E::Le;
    let bytes = cat(&[shb(e), idb(e, 1, 4, None), spb(e, 10, b"0123456789"), spb(e, 2, b"ab")]);
    let (records, err) = drain(&bytes);
    assert_eq!(err, None);
    assert_eq!(records[0].data, b"0123");
    assert_eq!(records[0].orig_len, 10);
    assert_eq!(records[0].link_type, LinkType::ETHERNET);
    assert_eq!(records[1].data, b"ab");
    assert_eq!(records[1].index, 1);
}

#[test]
fn pcapng_sections_switch_byte_order_and_reset_interfaces() {
    let bytes = cat(&[
        shb(E::Le),
        idb(E::Le, 1, 0, None),
        idb(E::Le, 113, 0, None),
        epb(E::Le, 1, 0, b"sll", 3),
        shb(E::Be),
        idb(E::Be, 229, 0, None),
        epb(E::Be, 0, 0, b"v6", 2),
        epb(E::Be, 1, 0, b"gone", 4),
    ]);
    let (records, err) = drain(&bytes);
    let links: Vec<_> = records.iter().map(|r| r.link_type).collect();
    assert_eq!(links, [LinkType::LINUX_SLL, LinkType::IPV6]);
    assert!(matches!(err, Some(PcapError::UnknownInterface { index: 2, interface: 1, .. })), "{err:?}");
}

#[test]
fn pcapng_packet_before_interface_is_an_error() {
    for packet in [spb(E::Le, 2, b"ab"), epb(E::Le, 0, 0, b"ab", 2)] {
        let bytes = cat(&[shb(E::Le), packet]);
        let (records, err) = drain(&bytes);
        assert!(records.is_empty());
        assert!(matches!(err, Some(PcapError::UnknownInterface { index: 0, offset: 28, interface: 0 })));
    }
}

/// Where the packet block starts after `shb()` and `idb(.., None)` (28 + 24 bytes).
const EPB_AT: usize = 52;

/// A valid one-packet file, then the same with its EPB's length fields edited.
fn with_epb_lengths(lead: u32, trail: Option<u32>) -> Vec<u8> {
    let mut bytes = cat(&[shb(E::Le), idb(E::Le, 1, 0, None), epb(E::Le, 0, 0, b"abcd", 4)]);
    let epb_at = EPB_AT;
    let total = bytes.len() - epb_at;
    bytes[epb_at + 4..epb_at + 8].copy_from_slice(&lead.to_le_bytes());
    if let Some(t) = trail {
        bytes[epb_at + total - 4..].copy_from_slice(&t.to_le_bytes());
    }
    bytes
}

#[test]
fn pcapng_block_length_errors() {
    let epb_len = 12 + 20 + 4;
    let at = EPB_AT;
    let cases: Vec<(&str, Vec<u8>, PcapError)> = vec![
        (
            "not a multiple of 4",
            with_epb_lengths(epb_len + 2, None),
            PcapError::BadBlockLength {
                index: 0,
                offset: at,
                length: epb_len + 2,
                reason: "is not a multiple of 4",
            },
        ),
        (
            "below 12",
            with_epb_lengths(8, None),
            PcapError::BadBlockLength { index: 0, offset: at, length: 8, reason: "is less than 12" },
        ),
        (
            "trailer differs",
            with_epb_lengths(epb_len, Some(epb_len + 4)),
            PcapError::BlockLengthMismatch { index: 0, offset: at, length: epb_len, trailer: epb_len + 4 },
        ),
        (
            "past the end",
            with_epb_lengths(epb_len + 4, None),
            PcapError::Truncated {
                index: 0,
                offset: at,
                needed: u64::from(epb_len + 4),
                available: epb_len as usize,
            },
        ),
        (
            "shorter than its fields",
            with_epb_lengths(epb_len - 8, Some(epb_len - 8)),
            // The shortened block ends mid-data; its declared trailer is where the data was.
            PcapError::BlockLengthMismatch { index: 0, offset: at, length: epb_len - 8, trailer: 4 },
        ),
    ];
    for (what, bytes, expected) in cases {
        let (records, err) = drain(&bytes);
        assert!(records.is_empty(), "{what}");
        assert_eq!(err, Some(expected), "{what}");
    }
}

#[test]
fn pcapng_caplen_beyond_block_is_malformed() {
    let mut bytes = cat(&[shb(E::Be), idb(E::Be, 1, 0, None), epb(E::Be, 0, 0, b"abcd", 4)]);
    let caplen_at = EPB_AT + 8 + 12;
    bytes[caplen_at..caplen_at + 4].copy_from_slice(&9u32.to_be_bytes());
    let (_, err) = drain(&bytes);
    assert!(matches!(err, Some(PcapError::Malformed { index: 0, offset: EPB_AT, .. })), "{err:?}");
    let short = cat(&[shb(E::Le), idb(E::Le, 1, 0, None), block(E::Le, 6, &[0; 16])]);
    let (_, err) = drain(&short);
    assert!(matches!(err, Some(PcapError::Malformed { index: 0, offset: EPB_AT, .. })), "{err:?}");
}

#[test]
fn pcapng_section_header_errors() {
    let mut bad_bom = shb(E::Le);
    bad_bom[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    assert_eq!(
        Capture::parse(&bad_bom).err(),
        Some(PcapError::BadByteOrderMagic { offset: 0, magic: 0xdead_beef })
    );
    let mut v2 = shb(E::Be);
    v2[12..14].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(
        Capture::parse(&v2).err(),
        Some(PcapError::UnsupportedVersion { offset: 0, major: 2, minor: 0 })
    );
    // A second section whose header is cut short.
    let mut two = cat(&[shb(E::Le), shb(E::Be)]);
    two.truncate(28 + 20);
    let (_, err) = drain(&two);
    assert!(matches!(err, Some(PcapError::Truncated { offset: 28, .. })), "{err:?}");
}

#[test]
fn pcapng_interface_option_overrun_is_malformed() {
    // if_tsresol claims 8 bytes of value in a 4-byte remainder.
    let body = Buf::new(E::Le).u16(1).u16(0).u32(0).u16(9).u16(8).raw(&[6, 0, 0, 0]);
    let bytes = cat(&[shb(E::Le), block(E::Le, 1, &body.bytes)]);
    let (_, err) = drain(&bytes);
    assert!(matches!(err, Some(PcapError::Malformed { offset: 28, .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// No panics on damaged input.

/// Knuth's MMIX LCG: deterministic, dependency free, good enough to pick bytes.
#[derive(Debug)]
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses and walks everything; returns (packets, ended in error).
fn walk(bytes: &[u8]) -> (usize, bool) {
    let Ok(capture) = Capture::parse(bytes) else {
        return (0, true);
    };
    let mut n = 0;
    for item in capture.packets() {
        match item {
            Ok(r) => {
                assert!(r.data.len() <= bytes.len());
                n += 1;
            }
            Err(e) => {
                let _ = e.to_string();
                return (n, true);
            }
        }
    }
    (n, false)
}

/// Every prefix, and `flips` copies with 1 to 4 random bytes overwritten.
fn damage(bytes: &[u8], seed: u64, flips: usize) {
    for len in 0..=bytes.len() {
        walk(&bytes[..len]);
    }
    if bytes.is_empty() {
        return;
    }
    let mut rng = Lcg(seed);
    let mut copy = bytes.to_vec();
    for _ in 0..flips {
        copy.copy_from_slice(bytes);
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(copy.len());
            copy[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        walk(&copy);
    }
}

fn hand_built_seeds() -> Vec<Vec<u8>> {
    vec![
        pcap(E::Le, false, 1, &[(1, 2, b"abcdef", 6), (3, 4, b"gh", 9)]),
        pcap(E::Be, true, 101, &[(1, 2, b"\x45\x00", 2)]),
        cat(&[
            shb(E::Le),
            idb(E::Le, 1, 4, Some(9)),
            epb(E::Le, 0, 7, b"abcde", 5),
            spb(E::Le, 9, b"xyz"),
            opb(E::Le, 0, 1, b"o", 1),
        ]),
        cat(&[
            shb(E::Be),
            idb(E::Be, 1, 0, Some(0x83)),
            epb(E::Be, 0, 7, b"ab", 2),
            shb(E::Le),
            idb(E::Le, 229, 0, None),
            epb(E::Le, 0, 9, b"v6", 2),
        ]),
    ]
}

#[test]
fn damaged_hand_built_captures_never_panic() {
    for (i, seed) in hand_built_seeds().iter().enumerate() {
        assert!(!walk(seed).1, "seed {i} is valid");
        damage(seed, i as u64 + 1, 2_000);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_after_a_valid_magic_never_panic(
        magic in prop::sample::select(vec![
            0xd4c3_b2a1u32, 0xa1b2_c3d4, 0x4d3c_b2a1, 0xa1b2_3c4d, 0x0a0d_0d0a,
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = magic.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        walk(&bytes);
    }

    #[test]
    fn damaged_valid_pcapng_never_panics(at in 0usize..200, byte in any::<u8>()) {
        for seed in hand_built_seeds() {
            let mut bytes = seed.clone();
            let i = at % bytes.len();
            bytes[i] = byte;
            walk(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tcpdump test corpus.

fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SLUICE_CORPUS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus/tcpdump-tests"))
    });
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("SLUICE_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("corpus not found at {} (SLUICE_REQUIRE_KERNEL=1)", dir.display());
    }
    println!("skip: corpus not found at {}", dir.display());
    None
}

/// Capture files in the corpus, sorted by name, with their bytes.
fn corpus_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory is readable")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let ext = path.extension()?.to_str()?;
            if ext != "pcap" && ext != "pcapng" {
                return None;
            }
            let name = path.file_name()?.to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("corpus file is readable");
            Some((name, bytes))
        })
        .collect();
    files.sort();
    files
}

/// Short name of an error's variant, for grouping.
fn error_kind(e: &PcapError) -> &'static str {
    match e {
        PcapError::TooShort { .. } => "TooShort",
        PcapError::BadMagic { .. } => "BadMagic",
        PcapError::Truncated { .. } => "Truncated",
        PcapError::BadBlockLength { .. } => "BadBlockLength",
        PcapError::BlockLengthMismatch { .. } => "BlockLengthMismatch",
        PcapError::BadByteOrderMagic { .. } => "BadByteOrderMagic",
        PcapError::UnsupportedVersion { .. } => "UnsupportedVersion",
        PcapError::UnknownInterface { .. } => "UnknownInterface",
        PcapError::Malformed { .. } => "Malformed",
    }
}

#[test]
fn tcpdump_corpus_reads_without_panics() {
    let Some(dir) = corpus_dir() else { return };
    let files = corpus_files(&dir);
    let mut ok = 0usize;
    let mut formats: BTreeMap<&str, usize> = BTreeMap::new();
    let mut packets = 0usize;
    let mut bytes_total = 0usize;
    let mut per_link: BTreeMap<LinkType, (usize, usize)> = BTreeMap::new(); // (files, packets)
    let mut errors: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, bytes) in &files {
        let capture = match Capture::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                errors.entry(error_kind(&e)).or_default().push(format!("{name}: {e}"));
                continue;
            }
        };
        *formats
            .entry(match capture.format() {
                Format::Pcap => "pcap",
                Format::PcapNg => "pcapng",
            })
            .or_default() += 1;
        let mut links_here: BTreeMap<LinkType, usize> = BTreeMap::new();
        let mut failed = None;
        for item in capture.packets() {
            match item {
                Ok(r) => {
                    packets += 1;
                    bytes_total += r.data.len();
                    *links_here.entry(r.link_type).or_default() += 1;
                }
                Err(e) => failed = Some(e),
            }
        }
        for (link, n) in links_here {
            let entry = per_link.entry(link).or_default();
            entry.0 += 1;
            entry.1 += n;
        }
        match failed {
            None => ok += 1,
            Some(e) => errors.entry(error_kind(&e)).or_default().push(format!("{name}: {e}")),
        }
    }
    let failed: usize = errors.values().map(Vec::len).sum();
    println!("corpus {}", dir.display());
    println!("files {} (formats {formats:?}): {ok} read cleanly, {failed} ended in an error", files.len());
    println!("packets {packets}, captured bytes {bytes_total}");
    println!("link types (files, packets):");
    for (link, (f, p)) in &per_link {
        println!("  {:>4} {link:<22} {f:>4} {p:>7}", link.0);
    }
    println!("errors:");
    for (kind, list) in &errors {
        println!("  {kind}: {}", list.len());
        for line in list {
            println!("    {line}");
        }
    }
    assert_eq!(ok + failed, files.len());
    let ethernet_files = per_link.get(&LinkType::ETHERNET).map_or(0, |e| e.0);
    assert!(ethernet_files >= 400, "only {ethernet_files} corpus files have Ethernet packets");
}

#[test]
fn damaged_corpus_files_never_panic() {
    let Some(dir) = corpus_dir() else { return };
    let mut files: Vec<_> = corpus_files(&dir)
        .into_iter()
        .filter(|(_, b)| (200..=3_000).contains(&b.len()))
        .filter(|(_, b)| {
            let (n, failed) = walk(b);
            n >= 2 && !failed
        })
        .collect();
    files.sort_by_key(|(name, b)| (b.len(), name.clone()));
    let pick = |format: Format| {
        files.iter().filter(move |(_, b)| Capture::parse(b).map(|c| c.format()) == Ok(format)).take(3)
    };
    let chosen: Vec<_> = pick(Format::Pcap).chain(pick(Format::PcapNg)).collect();
    assert!(!chosen.is_empty(), "no small valid corpus files to damage");
    for (i, (name, bytes)) in chosen.iter().enumerate() {
        println!("damaging {name} ({} bytes)", bytes.len());
        damage(bytes, 0x5eed + i as u64, 3_000);
    }
}
