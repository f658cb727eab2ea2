//! `sluice bench ARGS` runs the `sluice-bench` binary that sits beside `sluice` (the
//! benchmarks are their own crate, `src/bench/`), with the same arguments and its exit
//! status, and says how to build it when it is not there.
//!
//! Each test puts a copy of `sluice` (a hard link where it can) in a folder of its own, so
//! what sits beside it is exactly what the test put there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A folder under cargo's per-test temporary directory, removed on drop (also on panic).
struct Beside(PathBuf);

impl Beside {
    fn new(tag: &str) -> Beside {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp folder");
        let exe = dir.join("sluice");
        let real = env!("CARGO_BIN_EXE_sluice");
        if std::fs::hard_link(real, &exe).is_err() {
            std::fs::copy(real, &exe).expect("copy of sluice");
        }
        Beside(dir)
    }

    fn sluice(&self, args: &[&str]) -> Output {
        Command::new(self.0.join("sluice")).args(args).output().expect("the sluice copy runs")
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bench_without_sluice_bench_beside_it_says_how_to_build_it() {
    let dir = Beside::new("missing");
    let out = dir.sluice(&["bench", "--parts", "maglev"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let missing = dir.0.join("sluice-bench");
    assert!(
        stderr.contains(&format!("`{}`, which is not there", missing.display()))
            && stderr.contains("cargo build -p sluice-bench"),
        "expected the missing path and the build command, got: {stderr}"
    );
}

#[test]
fn bench_passes_every_argument_and_the_exit_status_through() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Beside::new("args");
    // A stand-in `sluice-bench`: prints its arguments one per line and exits 7.
    let fake = dir.0.join("sluice-bench");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\nexit 7\n").expect("stand-in");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let args = ["--parts", "policy,lb", "--rounds", "5", "--help", "a b"];
    let out = dir.sluice(&[&["bench"][..], &args[..]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), args, "the arguments sluice-bench got");
}
