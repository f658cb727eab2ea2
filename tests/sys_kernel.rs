//! Kernel tests of `sluice::sys`: real maps, programs, pins and test runs.
//!
//! Every test starts with `require_kernel` (skips without bpf(), fails instead when
//! `SLUICE_REQUIRE_KERNEL=1`). Tests run in parallel, so every kernel object and pin path
//! is named with the process id and a counter, and pins are removed by a guard even when
//! a test panics.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sluice::sys::{
    self, map_flags, BpfCmd, Errno, Map, MapKind, MapSpec, ProgSpec, ProgType, Program, SysError, Syscall,
    TestRunOpts, UpdateFlags,
};

/// `r0 = 2 (XDP_PASS); exit`
const XDP_PASS: [u8; 16] = [
    0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, //
    0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// `exit` with r0 never written: the verifier rejects it.
const EXIT_ONLY: [u8; 8] = [0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, usable as a kernel object name (<= 15 bytes).
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}_{n}", std::process::id() % 100_000)
}

fn kernel() -> Arc<dyn Syscall> {
    sys::kernel()
}

/// A directory under /sys/fs/bpf removed (with its pins) on drop, even on panic.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> PinDir {
        let dir = Path::new(sys::DEFAULT_BPFFS).join(format!("sluice_test_{}", unique("d")));
        sys::ensure_bpffs(&dir).expect("bpffs directory");
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real kernel behind a seam that records each command and its answer.
#[derive(Debug, Default)]
struct Recording {
    calls: Mutex<Vec<(BpfCmd, Result<i64, Errno>)>>,
}

impl Syscall for Recording {
    unsafe fn bpf(&self, cmd: BpfCmd, attr: &mut [u8]) -> Result<i64, Errno> {
        // SAFETY: forwarded caller contract.
        let ret = unsafe { sys::Kernel.bpf(cmd, attr) };
        self.calls.lock().unwrap().push((cmd, ret));
        ret
    }
}

impl Recording {
    fn cmds(&self) -> Vec<BpfCmd> {
        self.calls.lock().unwrap().iter().map(|(cmd, _)| *cmd).collect()
    }
}

fn create(kind: MapKind, key: u32, value: u32, max: u32, flags: u32) -> Map {
    let spec = MapSpec::new(&unique("t"), kind, key, value, max).with_flags(flags);
    Map::create(&kernel(), &spec).unwrap_or_else(|e| panic!("create {kind:?}: {e}"))
}

#[test]
fn every_map_kind_is_created_with_its_layout() {
    if !sys::require_kernel("every_map_kind_is_created_with_its_layout") {
        return;
    }
    let page = 4096u32;
    // (kind, key, value, max_entries, flags)
    let cases = [
        (MapKind::Hash, 4, 8, 16, 0),
        (MapKind::Array, 4, 8, 16, 0),
        (MapKind::PerCpuArray, 4, 12, 4, 0),
        (MapKind::PerCpuHash, 8, 8, 16, 0),
        (MapKind::LpmTrie, 8, 4, 16, map_flags::NO_PREALLOC),
        (MapKind::LruHash, 4, 4, 16, 0),
        (MapKind::LruPerCpuHash, 4, 4, 16, 0),
        (MapKind::RingBuf, 0, 0, 16 * page, 0),
        (MapKind::ProgArray, 4, 4, 4, 0),
        (MapKind::SockHash, 4, 8, 4, 0),
    ];
    for (kind, key, value, max, flags) in cases {
        let map = create(kind, key, value, max, flags);
        let info = map.info().unwrap_or_else(|e| panic!("info {kind:?}: {e}"));
        let spec = MapSpec::new(map.name(), kind, key, value, max).with_flags(flags);
        assert_eq!(spec.mismatches(&info), Vec::<String>::new(), "{kind:?}: {info:?}");
        assert_eq!(info.name, map.name(), "{kind:?}");
        assert!(info.id > 0, "{kind:?}");
        assert_eq!(map.kind(), Some(kind));
    }
}

#[test]
fn map_create_error_names_map_and_errno() {
    if !sys::require_kernel("map_create_error_names_map_and_errno") {
        return;
    }
    // A hash map with a zero-size key is invalid.
    let spec = MapSpec::new("bad_hash", MapKind::Hash, 0, 4, 1);
    let err = Map::create(&kernel(), &spec).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("BPF_MAP_CREATE") && text.contains("bad_hash"), "{text}");
    assert!(text.contains("EINVAL (22)"), "{text}");
}

#[test]
fn hash_map_lookup_update_delete_iterate_batch() {
    if !sys::require_kernel("hash_map_lookup_update_delete_iterate_batch") {
        return;
    }
    let recording = Arc::new(Recording::default());
    let seam: Arc<dyn Syscall> = recording.clone();
    let map = Map::create(&seam, &MapSpec::new(&unique("h"), MapKind::Hash, 4, 8, 2048)).unwrap();
    let k = |i: u32| i.to_ne_bytes();
    let v = |i: u64| (i * 10).to_ne_bytes();

    assert_eq!(map.lookup(&k(1)).unwrap(), None);
    map.update(&k(1), &v(1), UpdateFlags::NOEXIST).unwrap();
    assert_eq!(map.lookup(&k(1)).unwrap(), Some(v(1).to_vec()));
    let err = map.update(&k(1), &v(2), UpdateFlags::NOEXIST).unwrap_err();
    assert!(err.to_string().contains("EEXIST (17)"), "{err}");
    let err = map.update(&k(2), &v(2), UpdateFlags::EXIST).unwrap_err();
    assert!(err.to_string().contains("ENOENT (2)"), "{err}");
    map.update(&k(1), &v(3), UpdateFlags::EXIST).unwrap();
    assert_eq!(map.lookup(&k(1)).unwrap(), Some(v(3).to_vec()));
    assert!(map.delete(&k(1)).unwrap());
    assert!(!map.delete(&k(1)).unwrap());

    // Wrong lengths never reach the kernel.
    assert!(matches!(map.lookup(&[0; 3]), Err(SysError::Invalid { .. })));
    assert!(matches!(map.update(&k(1), &[0; 7], UpdateFlags::ANY), Err(SysError::Invalid { .. })));

    // Batch of more than one chunk, then iterate.
    let count = 1500u32;
    let keys: Vec<u8> = (0..count).flat_map(k).collect();
    let values: Vec<u8> = (0..u64::from(count)).flat_map(v).collect();
    let before = recording.cmds().len();
    map.update_batch(&keys, &values, count as usize, UpdateFlags::ANY).unwrap();
    assert_eq!(
        recording.cmds()[before..],
        [BpfCmd::MapUpdateBatch; 2],
        "hash maps take two real batches of at most 1024"
    );
    let mut seen: Vec<u32> =
        map.keys().map(|key| u32::from_ne_bytes(key.unwrap().try_into().unwrap())).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..count).collect::<Vec<_>>());
    assert_eq!(map.lookup(&k(1234)).unwrap(), Some(v(1234).to_vec()));
}

#[test]
fn full_hash_map_error_names_the_limit() {
    if !sys::require_kernel("full_hash_map_error_names_the_limit") {
        return;
    }
    let map = create(MapKind::Hash, 4, 4, 2, 0);
    map.update(&1u32.to_ne_bytes(), &[0; 4], UpdateFlags::ANY).unwrap();
    map.update(&2u32.to_ne_bytes(), &[0; 4], UpdateFlags::ANY).unwrap();
    let err = map.update(&3u32.to_ne_bytes(), &[0; 4], UpdateFlags::ANY).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("E2BIG (7)") && text.contains("max_entries 2"), "{text}");
}

#[test]
fn array_map_iterates_every_index_and_batches() {
    if !sys::require_kernel("array_map_iterates_every_index_and_batches") {
        return;
    }
    let map = create(MapKind::Array, 4, 4, 8, 0);
    assert_eq!(map.lookup(&3u32.to_ne_bytes()).unwrap(), Some(vec![0; 4]));
    assert_eq!(map.lookup(&8u32.to_ne_bytes()).unwrap(), None, "out of range");
    let keys: Vec<u8> = (0..8u32).flat_map(u32::to_ne_bytes).collect();
    let values: Vec<u8> = (100..108u32).flat_map(u32::to_ne_bytes).collect();
    map.update_batch(&keys, &values, 8, UpdateFlags::ANY).unwrap();
    let all: Vec<(u32, u32)> = map
        .keys()
        .map(|key| {
            let key = key.unwrap();
            let value = map.lookup(&key).unwrap().unwrap();
            (u32::from_ne_bytes(key.try_into().unwrap()), u32::from_ne_bytes(value.try_into().unwrap()))
        })
        .collect();
    assert_eq!(all, (0..8u32).map(|i| (i, 100 + i)).collect::<Vec<_>>());
    // Array elements cannot be deleted.
    let err = map.delete(&0u32.to_ne_bytes()).unwrap_err();
    assert!(err.to_string().contains("BPF_MAP_DELETE_ELEM"), "{err}");
}

/// `struct bpf_lpm_trie_key` for IPv4: prefix length, then the address bytes.
fn lpm_key(prefix: u32, addr: [u8; 4]) -> Vec<u8> {
    let mut key = prefix.to_ne_bytes().to_vec();
    key.extend_from_slice(&addr);
    key
}

#[test]
fn lpm_trie_batch_update_and_longest_prefix_match() {
    if !sys::require_kernel("lpm_trie_batch_update_and_longest_prefix_match") {
        return;
    }
    let map = create(MapKind::LpmTrie, 8, 4, 64, map_flags::NO_PREALLOC);
    let entries =
        [(8, [10, 0, 0, 0], 1u32), (16, [10, 1, 0, 0], 2), (24, [10, 1, 2, 0], 3), (32, [192, 168, 1, 1], 4)];
    let keys: Vec<u8> = entries.iter().flat_map(|(p, a, _)| lpm_key(*p, *a)).collect();
    let values: Vec<u8> = entries.iter().flat_map(|(_, _, v)| v.to_ne_bytes()).collect();
    map.update_batch(&keys, &values, entries.len(), UpdateFlags::ANY).unwrap();

    let cases = [
        ([10, 1, 2, 3], Some(3u32)),
        ([10, 1, 9, 9], Some(2)),
        ([10, 9, 9, 9], Some(1)),
        ([192, 168, 1, 1], Some(4)),
        ([192, 168, 1, 2], None),
    ];
    for (addr, expected) in cases {
        let got = map.lookup(&lpm_key(32, addr)).unwrap().map(|v| u32::from_ne_bytes(v.try_into().unwrap()));
        assert_eq!(got, expected, "lookup {addr:?}");
    }
    assert_eq!(map.keys().map(Result::unwrap).count(), entries.len());
    assert!(map.delete(&lpm_key(16, [10, 1, 0, 0])).unwrap());
    assert_eq!(map.keys().count(), entries.len() - 1);
}

#[test]
fn per_cpu_maps_hold_one_value_per_cpu() {
    if !sys::require_kernel("per_cpu_maps_hold_one_value_per_cpu") {
        return;
    }
    let cpus = sys::possible_cpus().unwrap();
    let array = create(MapKind::PerCpuArray, 4, 12, 4, 0);
    let key = 1u32.to_ne_bytes();
    let values: Vec<Vec<u8>> = (0..cpus).map(|c| vec![c as u8 + 1; 12]).collect();
    array.update_percpu(&key, &values, UpdateFlags::ANY).unwrap();
    assert_eq!(array.lookup_percpu(&key).unwrap(), Some(values));
    assert!(matches!(array.lookup(&key), Err(SysError::Invalid { .. })));

    let hash = create(MapKind::PerCpuHash, 8, 8, 16, 0);
    let key = 7u64.to_ne_bytes();
    assert_eq!(hash.lookup_percpu(&key).unwrap(), None);
    hash.update(&key, &42u64.to_ne_bytes(), UpdateFlags::ANY).unwrap();
    let got = hash.lookup_percpu(&key).unwrap().unwrap();
    assert_eq!(got, vec![42u64.to_ne_bytes().to_vec(); cpus]);
}

#[test]
fn xdp_program_loads_and_test_runs() {
    if !sys::require_kernel("xdp_program_loads_and_test_runs") {
        return;
    }
    let name = unique("xdp");
    let prog = Program::load(&kernel(), &ProgSpec::new(&name, ProgType::Xdp, &XDP_PASS)).unwrap();
    let stats = prog.stats();
    assert!(stats.id > 0);
    assert_eq!(stats.name, name);
    assert_eq!(stats.prog_type, ProgType::Xdp.type_id());
    assert!(stats.verified_insns >= 2, "verified_insns {}", stats.verified_insns);
    assert!(stats.xlated_prog_len >= 16, "xlated {}", stats.xlated_prog_len);
    assert_eq!(prog.prog_type(), Some(ProgType::Xdp));

    let packet: Vec<u8> = (0..64u8).collect();
    for repeat in [1, 1000] {
        let opts = TestRunOpts { repeat, ..TestRunOpts::packet(&packet) };
        let result = prog.test_run(&opts).unwrap();
        assert_eq!(result.retval, 2, "XDP_PASS, repeat {repeat}");
        assert_eq!(result.data_out, packet, "repeat {repeat}");
    }

    // An output buffer too small is grown once to the size the kernel reports.
    let opts = TestRunOpts { data_out_cap: 10, ..TestRunOpts::packet(&packet) };
    assert_eq!(prog.test_run(&opts).unwrap().data_out, packet);
    // No output buffer: nothing copied back.
    let opts = TestRunOpts { data_out_cap: 0, ..TestRunOpts::packet(&packet) };
    assert_eq!(prog.test_run(&opts).unwrap().data_out, Vec::<u8>::new());

    // The same program found again by id.
    let again = Program::from_id(&kernel(), stats.id).unwrap();
    assert_eq!(again.stats().tag, stats.tag);
}

#[test]
fn rejected_program_error_carries_the_verifier_log() {
    if !sys::require_kernel("rejected_program_error_carries_the_verifier_log") {
        return;
    }
    let err = Program::load(&kernel(), &ProgSpec::new("bad_exit", ProgType::Xdp, &EXIT_ONLY)).unwrap_err();
    let SysError::ProgLoad { name, log, .. } = &err else {
        panic!("expected ProgLoad, got {err}");
    };
    assert_eq!(name, "bad_exit");
    assert!(log.contains("R0 !read_ok"), "log: {log}");
    let text = err.to_string();
    assert!(text.contains("BPF_PROG_LOAD") && text.contains("EACCES (13)"), "{text}");
    assert!(text.contains("R0 !read_ok"), "{text}");
}

#[test]
fn long_verifier_logs_grow_the_buffer() {
    if !sys::require_kernel("long_verifier_logs_grow_the_buffer") {
        return;
    }
    // 20000 × `r1 = 0`, then `r0 = r5; exit` with r5 never written.
    let mut insns = Vec::new();
    for _ in 0..20_000 {
        insns.extend_from_slice(&[0xb7, 0x01, 0, 0, 0, 0, 0, 0]); // r1 = 0
    }
    insns.extend_from_slice(&[0xbf, 0x50, 0, 0, 0, 0, 0, 0]); // r0 = r5 (uninit)
    insns.extend_from_slice(&EXIT_ONLY);
    let err = Program::load(&kernel(), &ProgSpec::new("long_log", ProgType::Xdp, &insns)).unwrap_err();
    let SysError::ProgLoad { log, .. } = &err else {
        panic!("expected ProgLoad, got {err}");
    };
    // log_level 1 prints every processed instruction: far more than the first 64 KiB.
    assert!(log.len() > 64 * 1024, "log is {} bytes", log.len());
    assert!(log.contains("R5 !read_ok"), "log tail: {}", &log[log.len().saturating_sub(500)..]);
}

#[test]
fn map_pins_are_found_again_and_removed() {
    if !sys::require_kernel("map_pins_are_found_again_and_removed") {
        return;
    }
    let dir = PinDir::new();
    let spec = MapSpec::new(&unique("pin"), MapKind::Hash, 4, 4, 8);
    let map = Map::create(&kernel(), &spec).unwrap();
    map.update(&5u32.to_ne_bytes(), &55u32.to_ne_bytes(), UpdateFlags::ANY).unwrap();
    let path = dir.0.join("map");
    map.pin(&path).unwrap();
    drop(map);

    let adopted = Map::from_pin_checked(&kernel(), &path, &spec).unwrap();
    assert_eq!(adopted.lookup(&5u32.to_ne_bytes()).unwrap(), Some(55u32.to_ne_bytes().to_vec()));
    assert_eq!(adopted.name(), spec.name);

    let other = MapSpec::new(&spec.name, MapKind::Hash, 4, 8, 8);
    let err = Map::from_pin_checked(&kernel(), &path, &other).unwrap_err();
    assert!(err.to_string().contains("value_size: expected 8, found 4"), "{err}");

    // Pinning twice at one path fails and names the path.
    let err = adopted.pin(&path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("BPF_OBJ_PIN") && text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("EEXIST (17)"), "{text}");

    sys::unpin(&path).unwrap();
    sys::unpin(&path).unwrap();
    let err = Map::from_pin(&kernel(), &path).unwrap_err();
    assert!(err.to_string().contains("BPF_OBJ_GET") && err.to_string().contains("ENOENT (2)"), "{err}");
}

#[test]
fn programs_pin_too() {
    if !sys::require_kernel("programs_pin_too") {
        return;
    }
    let dir = PinDir::new();
    let prog = Program::load(&kernel(), &ProgSpec::new(&unique("pp"), ProgType::Xdp, &XDP_PASS)).unwrap();
    let path = dir.0.join("prog");
    prog.pin(&path).unwrap();
    let again = Program::from_pin(&kernel(), &path).unwrap();
    assert_eq!(again.id(), prog.id());
    assert!(sys::is_bpffs(&dir.0).unwrap());
}

#[test]
fn batch_update_falls_back_where_the_kernel_has_no_batch_op() {
    if !sys::require_kernel("batch_update_falls_back_where_the_kernel_has_no_batch_op") {
        return;
    }
    // Program arrays have no batch op (ENOTSUPP); LPM tries had none before 6.x either.
    let recording = Arc::new(Recording::default());
    let seam: Arc<dyn Syscall> = recording.clone();
    let prog = Program::load(&seam, &ProgSpec::new(&unique("pa"), ProgType::Xdp, &XDP_PASS)).unwrap();
    let map = Map::create(&seam, &MapSpec::new(&unique("pa"), MapKind::ProgArray, 4, 4, 4)).unwrap();
    let prog_fd = u32::try_from(prog.as_raw_fd()).unwrap().to_ne_bytes();
    let keys: Vec<u8> = [0u32, 2].into_iter().flat_map(u32::to_ne_bytes).collect();
    let values: Vec<u8> = [prog_fd, prog_fd].concat();
    let before = recording.cmds().len();
    map.update_batch(&keys, &values, 2, UpdateFlags::ANY).unwrap();

    let calls = recording.calls.lock().unwrap()[before..].to_vec();
    let cmds: Vec<BpfCmd> = calls.iter().map(|(cmd, _)| *cmd).collect();
    assert_eq!(cmds, [BpfCmd::MapUpdateBatch, BpfCmd::MapUpdateElem, BpfCmd::MapUpdateElem]);
    assert!(calls[0].1.is_err_and(Errno::is_unsupported), "{calls:?}");
    // From user space a program array slot reads back as the program's id.
    let id = prog.id().to_ne_bytes().to_vec();
    assert_eq!(map.lookup(&0u32.to_ne_bytes()).unwrap(), Some(id.clone()));
    assert_eq!(map.lookup(&1u32.to_ne_bytes()).unwrap(), None);
    assert_eq!(map.lookup(&2u32.to_ne_bytes()).unwrap(), Some(id));
}
