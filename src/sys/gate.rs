//! The kernel-test gate and host facts (possible CPUs).
//!
//! Contract: [`kernel_available`] answers whether this process can really use `bpf()`
//! (it creates and closes a tiny array map); the answer is computed once per process.
//! [`require_kernel`] is what every privileged test calls first: `true` means go on;
//! otherwise the test skips with a line on stderr, or panics when the environment says
//! kernel tests must run (`SLUICE_REQUIRE_KERNEL=1`, set in privileged CI).

use std::sync::{Arc, OnceLock};

use super::map::{Map, MapKind, MapSpec};
use super::{Result, SysError, Syscall};

/// The environment variable that turns a skipped kernel test into a failure.
pub const REQUIRE_KERNEL_ENV: &str = "SLUICE_REQUIRE_KERNEL";

/// The environment variable that turns the kernel off for this process's tests
/// (`SLUICE_NO_KERNEL=1`): the mutation harness runs the simulator tests alone with it.
pub const NO_KERNEL_ENV: &str = "SLUICE_NO_KERNEL";

/// Where the kernel lists the possible CPUs.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// Whether `bpf()` works here: `Err` carries the reason it does not.
pub fn kernel_available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if std::env::var(NO_KERNEL_ENV).is_ok_and(|v| v.trim() == "1") {
        return Err(format!("{NO_KERNEL_ENV}=1 turns the kernel off"));
    }
    let sys: Arc<dyn Syscall> = super::kernel();
    let spec = MapSpec::new("sluice_probe", MapKind::Array, 4, 4, 1);
    match Map::create(&sys, &spec) {
        Ok(_) => Ok(()),
        Err(err) => {
            let hint = match err.errno().map(|e| e.0) {
                Some(libc::EPERM) => " (needs root or CAP_BPF; is kernel.unprivileged_bpf_disabled set?)",
                Some(libc::ENOSYS) => " (kernel built without CONFIG_BPF_SYSCALL, or a seccomp filter)",
                _ => "",
            };
            Err(format!("bpf() is not usable: {err}{hint}"))
        }
    }
}

/// The gate for privileged tests: `true` if the kernel is available. Otherwise panics
/// when `SLUICE_REQUIRE_KERNEL=1`, else prints `skip: <test>: <reason>` and returns false.
pub fn require_kernel(test_name: &str) -> bool {
    let required = std::env::var(REQUIRE_KERNEL_ENV).is_ok_and(|v| v.trim() == "1");
    match gate(test_name, kernel_available(), required) {
        Gate::Run => true,
        Gate::Skip(line) => {
            eprintln!("{line}");
            false
        }
        Gate::Fail(message) => panic!("{message}"),
    }
}

/// What [`require_kernel`] does, decided without side effects.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Run,
    Skip(String),
    Fail(String),
}

fn gate(test_name: &str, available: Result<(), String>, required: bool) -> Gate {
    match available {
        Ok(()) => Gate::Run,
        Err(reason) if required => Gate::Fail(format!("kernel test {test_name} cannot run: {reason}")),
        Err(reason) => Gate::Skip(format!("skip: {test_name}: {reason}")),
    }
}

/// The number of possible CPUs: the per-CPU value count of per-CPU maps.
pub fn possible_cpus() -> Result<usize> {
    static CPUS: OnceLock<usize> = OnceLock::new();
    if let Some(&n) = CPUS.get() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(POSSIBLE_CPUS).map_err(|source| SysError::Io {
        op: "read",
        path: POSSIBLE_CPUS.into(),
        source,
    })?;
    let n = parse_cpu_list(&text)
        .map_err(|reason| SysError::invalid(format!("{POSSIBLE_CPUS} ({:?})", text.trim()), reason))?;
    Ok(*CPUS.get_or_init(|| n))
}

/// Count the CPUs in a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty CPU list".to_string());
    }
    let mut count = 0usize;
    for part in text.split(',') {
        let part = part.trim();
        let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("bad CPU number {s:?}"));
        let n = match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if hi < lo {
                    return Err(format!("bad CPU range {part:?}"));
                }
                (hi - lo).checked_add(1).ok_or_else(|| "CPU count overflows".to_string())?
            }
            None => {
                parse(part)?;
                1
            }
        };
        count = count.checked_add(n).ok_or_else(|| "CPU count overflows".to_string())?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        let cases: &[(&str, Result<usize, ()>)] = &[
            ("0\n", Ok(1)),
            ("0-1\n", Ok(2)),
            ("0-3,8,10-11", Ok(7)),
            ("", Err(())),
            ("3-1", Err(())),
            ("a-b", Err(())),
            ("0-18446744073709551615,0-1", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_cpu_list(text).map_err(drop), *expected, "input {text:?}");
        }
    }

    #[test]
    fn gate_runs_skips_or_fails() {
        let no = || Err("bpf() is not usable: EPERM (1)".to_string());
        assert_eq!(gate("t", Ok(()), true), Gate::Run);
        assert_eq!(gate("t", Ok(()), false), Gate::Run);
        assert_eq!(gate("t", no(), false), Gate::Skip("skip: t: bpf() is not usable: EPERM (1)".into()));
        assert_eq!(
            gate("t", no(), true),
            Gate::Fail("kernel test t cannot run: bpf() is not usable: EPERM (1)".into())
        );
    }

    #[test]
    fn possible_cpus_is_positive() {
        assert!(possible_cpus().expect("this host lists its CPUs") >= 1);
    }
}
