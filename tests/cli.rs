//! The command line, as a user runs it: `compile` (listing and ELF), `sim` on a capture,
//! rejections of bad input, and, as root, `load` / `prefilter` / `unload` on a private pin
//! directory with `bpftool prog run` on the pinned program.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("the sluice binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn require_tool(tool: &str, test: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var("SLUICE_REQUIRE_KERNEL").as_deref() != Ok("1"),
        "{test}: {tool} is required (CI installs it)"
    );
    eprintln!("skip: {test}: {tool} not installed");
    false
}

/// A unique directory removed on drop, also on panic.
struct TempDir(PathBuf);

impl TempDir {
    fn new(base: &str, tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = PathBuf::from(base).join(format!(
            "sluice-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ =
            Command::new(env!("CARGO_BIN_EXE_sluice")).args(["unload", "--pin-dir"]).arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn compile_prints_the_listing() {
    let o = sluice(&["compile", &fixture("default-node.yaml")]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("; program prefilter (xdp)"), "{out}");
    assert!(out.contains("r8 = *(u32 *)(r1 +0)"), "{out}");
    assert!(out.contains("exit"), "{out}");
}

#[test]
fn compile_rejects_bad_input_with_its_location() {
    let dir = TempDir::new(&std::env::temp_dir().to_string_lossy(), "badnode");
    std::fs::create_dir_all(dir.path()).expect("mkdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  prefilter:\n    deny: [10.0.0.1/8]\n",
    )
    .expect("write");
    let o = sluice(&["compile", &file.to_string_lossy()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml:7:"), "{err}");
    assert!(err.contains("host bits set"), "{err}");
}

#[test]
fn compile_out_writes_elf_that_llvm_objdump_reads() {
    let dir = TempDir::new(&std::env::temp_dir().to_string_lossy(), "elf");
    let o = sluice(&["compile", &fixture("default-node.yaml"), "--out", &dir.path().to_string_lossy()]);
    assert!(o.status.success(), "{}", text(&o));
    let obj = dir.path().join("prefilter.o");
    let bytes = std::fs::read(&obj).expect("object written");
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 247, "e_machine is EM_BPF");
    if !require_tool("llvm-objdump", "compile_out_writes_elf_that_llvm_objdump_reads") {
        return;
    }
    let d = Command::new("llvm-objdump").arg("-dr").arg(&obj).output().expect("llvm-objdump runs");
    let listing = String::from_utf8_lossy(&d.stdout);
    assert!(d.status.success(), "{}", text(&d));
    assert!(listing.contains("<prefilter>:"), "{listing}");
    assert!(listing.contains("R_BPF_64_64") && listing.contains("pf_stats"), "{listing}");
    assert!(listing.contains("exit"), "{listing}");
}

#[test]
fn sim_replays_a_capture() {
    let dir = std::env::var("SLUICE_CORPUS_DIR")
        .unwrap_or_else(|_| format!("{}/../shared/corpus/tcpdump-tests", env!("CARGO_MANIFEST_DIR")));
    let pcap = format!("{dir}/802.1ad_QinQ.pcap");
    if !Path::new(&pcap).exists() {
        assert!(std::env::var("SLUICE_REQUIRE_KERNEL").as_deref() != Ok("1"), "corpus missing at {dir}");
        eprintln!("skip: corpus not found at {dir}");
        return;
    }
    let o = sluice(&["sim", &fixture("default-node.yaml"), "--pcap", &pcap]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("packets"), "{out}");
}

/// A classic pcap (Ethernet) of `frames`, written under the target's scratch directory.
fn write_pcap(name: &str, frames: &[&[u8]]) -> PathBuf {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for f in frames {
        for v in [0u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.pcap", std::process::id()));
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// `sluice sim --prefilter-only` prints one line per packet in capture order, then the
/// summary; with `-q` only the summary. Progress is for a person at a terminal: with stdout and stderr piped
/// (as here), stderr stays empty.
#[test]
fn sim_prints_each_verdict_then_the_summary_and_no_progress_into_a_pipe() {
    use sluice::packet::PacketBuilder;
    let udp4 = |src: [u8; 4]| {
        PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.into(), [10, 0, 1, 10].into())
            .udp(1, 2)
            .payload(b"x")
            .build()
    };
    // fixtures/default-node.yaml denies 192.0.2.0/24.
    let (denied, passed, runt) = (udp4([192, 0, 2, 1]), udp4([8, 8, 8, 8]), vec![0u8; 10]);
    let pcap = write_pcap("sim-lines", &[&denied, &passed, &runt]);
    let pcap = pcap.to_string_lossy().into_owned();
    let summary =
        "3 packets run\n  verdict XDP_DROP (1): 2\n  verdict XDP_PASS (2): 1\n  reason deny_v4: 1\n  \
                   reason pass_v4: 1\n  reason truncated_ethernet: 1\n";
    let lines = format!(
        "packet 0 ({} bytes): verdict 1 (XDP_DROP), reason deny_v4\n\
         packet 1 ({} bytes): verdict 2 (XDP_PASS), reason pass_v4\n\
         packet 2 (10 bytes): verdict 1 (XDP_DROP), reason truncated_ethernet\n",
        denied.len(),
        passed.len()
    );
    for (args, want) in [(vec![], format!("{lines}{summary}")), (vec!["-q"], summary.to_string())] {
        let mut argv = vec!["sim", "--prefilter-only", "--pcap", &pcap];
        argv.extend(args.iter().copied());
        let node = fixture("default-node.yaml");
        argv.push(&node);
        let o = sluice(&argv);
        assert!(o.status.success(), "sluice {argv:?}: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "stdout of sluice {argv:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "stderr of sluice {argv:?}");
    }
    let _ = std::fs::remove_file(&pcap);
}

#[test]
fn load_prefilter_and_unload_on_a_private_pin_dir() {
    if !sluice::sys::require_kernel("load_prefilter_and_unload_on_a_private_pin_dir") {
        return;
    }
    let pins = TempDir::new("/sys/fs/bpf", "cli");
    let pin = pins.path().to_string_lossy().to_string();
    let o = sluice(&["load", &fixture("default-node.yaml"), "--pin-dir", &pin]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(pins.path().join("programs/prefilter").exists());
    let again = sluice(&["load", &fixture("default-node.yaml"), "--pin-dir", &pin]);
    // Loading the same node again is an in-place update with nothing to do.
    assert!(again.status.success() && text(&again).contains("already up to date"), "{}", text(&again));

    let list = |pin: &str| {
        String::from_utf8_lossy(&sluice(&["prefilter", "list", "--pin-dir", pin]).stdout).to_string()
    };
    assert!(list(&pin).contains("192.0.2.0/24"), "{}", list(&pin));

    // A probe from 198.18.0.9 passes, then drops once its /15 is added, then passes again.
    let probe = sluice::golden::probes::udp4(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 9)));
    let pkt = std::env::temp_dir().join(format!("sluice-test-probe-{}.pkt", std::process::id()));
    std::fs::write(&pkt, &probe).expect("write probe");
    let run = |pin: &str| -> u32 {
        let prog = sluice::sys::Program::from_pin(
            &sluice::sys::kernel(),
            &Path::new(pin).join("programs/prefilter"),
        )
        .expect("pinned program opens");
        prog.test_run(&sluice::sys::TestRunOpts::packet(&probe)).expect("test run").retval
    };
    assert_eq!(run(&pin), 2);
    let o = sluice(&["prefilter", "add", "198.18.0.0/15", "2001:db8:1::/64", "--pin-dir", &pin]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(run(&pin), 1);
    assert!(list(&pin).contains("198.18.0.0/15"));
    let o = sluice(&["prefilter", "del", "198.18.0.0/15", "--pin-dir", &pin]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(run(&pin), 2);
    let bad = sluice(&["prefilter", "add", "10.0.0.1/8", "--pin-dir", &pin]);
    assert!(!bad.status.success() && text(&bad).contains("host bits"), "{}", text(&bad));
    // `load` makes the deny set the file's again and says which live addition it removes.
    let o = sluice(&["load", &fixture("default-node.yaml"), "--pin-dir", &pin]);
    assert!(
        o.status.success()
            && text(&o)
                .contains("removed 1 prefilter prefix(es) added live, not in the node file: 2001:db8:1::/64"),
        "{}",
        text(&o)
    );
    assert!(!list(&pin).contains("2001:db8:1::/64"), "{}", list(&pin));

    if require_tool("bpftool", "load_prefilter_and_unload_on_a_private_pin_dir") {
        let o = Command::new("bpftool")
            .args(["prog", "run", "pinned"])
            .arg(pins.path().join("programs/prefilter"))
            .arg("data_in")
            .arg(&pkt)
            .output()
            .expect("bpftool runs");
        assert!(text(&o).contains("Return value: 2"), "{}", text(&o));
    }
    let _ = std::fs::remove_file(&pkt);
    let stats = sluice(&["prefilter", "stats", "--pin-dir", &pin]);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("deny_v4"), "{}", text(&stats));

    let o = sluice(&["unload", "--pin-dir", &pin]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!pins.path().exists(), "unload leaves nothing behind");
}

/// Issue 14: "`sluice sim NODE --pcap FILE` runs each packet through every program the node
/// would run for it": without a flag the replay is the whole node's, each packet's path
/// printed (`prefilter=…` then `=> dropped|delivered|forwarded`), then the node summary;
/// `--prefilter-only` is the prefilter's line per packet.
#[test]
fn sim_replays_through_the_whole_node_by_default() {
    use sluice::packet::PacketBuilder;
    let udp4 = |src: [u8; 4]| {
        PacketBuilder::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.into(), [10, 0, 1, 10].into())
            .udp(1, 2)
            .payload(b"x")
            .build()
    };
    // fixtures/default-node.yaml denies 192.0.2.0/24 in its prefilter.
    let pcap = write_pcap("sim-whole", &[&udp4([192, 0, 2, 1]), &udp4([8, 8, 8, 8])]);
    let pcap = pcap.to_string_lossy().into_owned();
    let node = fixture("default-node.yaml");
    let o = sluice(&["sim", &node, "--pcap", &pcap]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "two packet paths and the summary:\n{out}");
    assert!(
        lines[0].starts_with("packet 0 192.0.2.1 -> 10.0.1.10:") && lines[0].ends_with("=> dropped"),
        "{out}"
    );
    assert!(lines[1].starts_with("packet 1 8.8.8.8 -> 10.0.1.10:") && lines[1].contains("=>"), "{out}");
    assert!(lines[2].starts_with("2 packets: "), "the whole node's summary:\n{out}");
    let o = sluice(&["sim", &node, "--pcap", &pcap, "--prefilter-only", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("2 packets run\n"), "{}", text(&o));
    let _ = std::fs::remove_file(&pcap);
}
