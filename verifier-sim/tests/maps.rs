//! User-space semantics of every emulated map kind: update flags, full maps, LRU eviction,
//! LPM matching, per-CPU values, ring buffers, prog arrays, spec validation, and the
//! stability of value addresses.

use sluice_verifier_sim::maps::{
    errno, MapError, MapSet, BPF_ANY, BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST,
};
use sluice_verifier_sim::spec::{MapKind, MapSpec};

fn spec(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec {
    let flags = if kind == MapKind::LpmTrie { BPF_F_NO_PREALLOC } else { 0 };
    MapSpec { name: name.into(), kind, key_size, value_size, max_entries, flags }
}

fn one(s: MapSpec) -> MapSet {
    MapSet::new(&[s], 1).expect("valid spec")
}

fn k32(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

/// An IPv4 LPM key: prefix length (host order) then the address (network order).
fn v4(a: [u8; 4], plen: u32) -> Vec<u8> {
    let mut k = plen.to_le_bytes().to_vec();
    k.extend_from_slice(&a);
    k
}

fn v6(a: [u8; 16], plen: u32) -> Vec<u8> {
    let mut k = plen.to_le_bytes().to_vec();
    k.extend_from_slice(&a);
    k
}

#[test]
fn hash_update_flags() {
    let mut set = one(spec("h", MapKind::Hash, 4, 8, 4));
    let m = set.get_mut("h").unwrap();
    let v = [1u8; 8];
    assert_eq!(m.update(&k32(1), &v, BPF_EXIST).unwrap_err().errno(), errno::ENOENT);
    m.update(&k32(1), &v, BPF_NOEXIST).unwrap();
    assert_eq!(m.update(&k32(1), &v, BPF_NOEXIST).unwrap_err().errno(), errno::EEXIST);
    m.update(&k32(1), &[2u8; 8], BPF_EXIST).unwrap();
    assert_eq!(m.lookup(&k32(1)), Some(&[2u8; 8][..]));
    m.update(&k32(1), &[3u8; 8], BPF_ANY).unwrap();
    assert_eq!(m.lookup(&k32(1)), Some(&[3u8; 8][..]));
    assert_eq!(m.update(&k32(2), &v, 4).unwrap_err().errno(), errno::EINVAL, "BPF_F_LOCK is not emulated");
    assert!(matches!(m.update(&[0; 3], &v, BPF_ANY), Err(MapError::KeySize { expected: 4, got: 3, .. })));
    assert!(matches!(
        m.update(&k32(2), &[0; 7], BPF_ANY),
        Err(MapError::ValueSize { expected: 8, got: 7, .. })
    ));
    assert_eq!(m.lookup(&[0; 3]), None, "a wrong-size key finds nothing");
    assert_eq!(m.lookup(&k32(9)), None);
}

#[test]
fn hash_full_and_delete() {
    let mut set = one(spec("h", MapKind::Hash, 4, 4, 2));
    let m = set.get_mut("h").unwrap();
    m.update(&k32(1), &k32(10), BPF_ANY).unwrap();
    m.update(&k32(2), &k32(20), BPF_ANY).unwrap();
    let full = m.update(&k32(3), &k32(30), BPF_ANY).unwrap_err();
    assert_eq!(full, MapError::Full { map: "h".into(), max_entries: 2 });
    assert_eq!(full.errno(), errno::E2BIG);
    m.update(&k32(2), &k32(21), BPF_ANY).expect("replacing in a full map succeeds");
    assert_eq!(m.delete(&k32(3)).unwrap_err().errno(), errno::ENOENT);
    m.delete(&k32(1)).unwrap();
    m.update(&k32(3), &k32(30), BPF_NOEXIST).unwrap();
    assert_eq!(m.keys(), vec![k32(2).to_vec(), k32(3).to_vec()]);
    assert_eq!(m.len(), 2);
}

#[test]
fn hash_keys_are_sorted() {
    let mut set = one(spec("h", MapKind::Hash, 2, 1, 8));
    let m = set.get_mut("h").unwrap();
    for k in [[9u8, 0], [1, 5], [1, 2], [0, 7]] {
        m.update(&k, &[k[0]], BPF_ANY).unwrap();
    }
    assert_eq!(m.keys(), vec![vec![0, 7], vec![1, 2], vec![1, 5], vec![9, 0]]);
}

#[test]
fn array_semantics() {
    let mut set = one(spec("a", MapKind::Array, 4, 4, 3));
    let m = set.get_mut("a").unwrap();
    assert_eq!(m.lookup(&k32(2)), Some(&[0u8; 4][..]), "elements exist, zeroed");
    assert_eq!(m.lookup(&k32(3)), None);
    assert_eq!(m.len(), 3);
    m.update(&k32(1), &k32(7), BPF_ANY).unwrap();
    m.update(&k32(1), &k32(8), BPF_EXIST).unwrap();
    assert_eq!(m.lookup(&k32(1)), Some(&k32(8)[..]));
    assert_eq!(m.update(&k32(0), &k32(1), BPF_NOEXIST).unwrap_err().errno(), errno::EEXIST);
    let oob = m.update(&k32(3), &k32(1), BPF_ANY).unwrap_err();
    assert!(matches!(oob, MapError::IndexOutOfRange { index: 3, max_entries: 3, .. }));
    assert_eq!(oob.errno(), errno::E2BIG);
    assert_eq!(m.delete(&k32(1)).unwrap_err().errno(), errno::EINVAL);
    assert_eq!(m.keys(), vec![k32(0).to_vec(), k32(1).to_vec(), k32(2).to_vec()]);
}

#[test]
fn percpu_array_views() {
    let mut set = MapSet::new(&[spec("pa", MapKind::PerCpuArray, 4, 4, 2)], 3).unwrap();
    set.get_mut("pa").unwrap().update(&k32(0), &k32(5), BPF_ANY).unwrap();
    set.set_cpu(2).unwrap();
    set.get_mut("pa").unwrap().update(&k32(0), &k32(7), BPF_ANY).unwrap();
    let m = set.get("pa").unwrap();
    assert_eq!(m.lookup(&k32(0)), Some(&k32(7)[..]), "lookup reads the current CPU");
    assert_eq!(m.lookup_percpu(&k32(0)).unwrap(), vec![k32(5).to_vec(), vec![0; 4], k32(7).to_vec()]);
    assert_eq!(m.lookup_percpu(&k32(1)).unwrap(), vec![vec![0; 4]; 3]);
    let m = set.get_mut("pa").unwrap();
    m.update_percpu(&k32(1), &[k32(1), k32(2), k32(3)], BPF_ANY).unwrap();
    assert_eq!(m.lookup_percpu(&k32(1)).unwrap(), vec![k32(1).to_vec(), k32(2).to_vec(), k32(3).to_vec()]);
    assert!(matches!(
        m.update_percpu(&k32(1), &[k32(1)], BPF_ANY),
        Err(MapError::CpuCount { expected: 3, got: 1, .. })
    ));
    assert_eq!(set.set_cpu(3).unwrap_err(), MapError::NoSuchCpu { cpu: 3, ncpus: 3 });
}

/// `array_elements` is `lookup_percpu` (per-CPU arrays) or `lookup` (arrays) of every index
/// in order, in one pass; other kinds have none.
#[test]
fn array_elements_are_every_index_in_order() {
    let mut set = MapSet::new(
        &[
            spec("pa", MapKind::PerCpuArray, 4, 4, 5),
            spec("a", MapKind::Array, 4, 4, 3),
            spec("h", MapKind::Hash, 4, 4, 3),
        ],
        2,
    )
    .unwrap();
    let pa = set.get_mut("pa").unwrap();
    pa.update_percpu(&k32(3), &[k32(3), k32(30)], BPF_ANY).unwrap();
    pa.update_percpu(&k32(1), &[k32(1), k32(10)], BPF_ANY).unwrap();
    set.get_mut("a").unwrap().update(&k32(2), &k32(22), BPF_ANY).unwrap();
    set.get_mut("h").unwrap().update(&k32(2), &k32(22), BPF_ANY).unwrap();
    for name in ["pa", "a"] {
        let m = set.get(name).unwrap();
        let got: Vec<Vec<u8>> = m.array_elements().expect("an array").map(<[u8]>::to_vec).collect();
        let want: Vec<Vec<u8>> = (0..m.spec().max_entries)
            .map(|i| match m.lookup_percpu(&k32(i)) {
                Some(copies) => copies.concat(),
                None => m.lookup(&k32(i)).expect("an array element").to_vec(),
            })
            .collect();
        assert_eq!(got, want, "map `{name}`: array_elements vs a lookup per index");
    }
    assert!(set.get("h").unwrap().array_elements().is_none(), "a hash has no array elements");
}

#[test]
fn percpu_hash_new_element_zeroes_other_cpus() {
    let mut set = MapSet::new(&[spec("ph", MapKind::PerCpuHash, 4, 2, 4)], 2).unwrap();
    set.set_cpu(1).unwrap();
    let m = set.get_mut("ph").unwrap();
    m.update(&k32(1), &[9, 9], BPF_ANY).unwrap();
    assert_eq!(m.lookup_percpu(&k32(1)).unwrap(), vec![vec![0, 0], vec![9, 9]]);
    m.update_percpu(&k32(1), &[[1u8, 1], [2, 2]], BPF_EXIST).unwrap();
    m.update(&k32(1), &[3, 3], BPF_EXIST).unwrap();
    assert_eq!(
        m.lookup_percpu(&k32(1)).unwrap(),
        vec![vec![1, 1], vec![3, 3]],
        "only this CPU's copy changes"
    );
    assert_eq!(m.update_percpu(&k32(2), &[[1u8, 1], [2, 2]], BPF_EXIST).unwrap_err().errno(), errno::ENOENT);
    let mut plain = one(spec("h", MapKind::Hash, 4, 2, 4));
    let h = plain.get_mut("h").unwrap();
    assert!(matches!(h.update_percpu(&k32(1), &[[0u8, 0]], BPF_ANY), Err(MapError::NotPerCpu { .. })));
    assert_eq!(h.lookup_percpu(&k32(1)), None);
}

#[test]
fn lru_evicts_least_recently_used() {
    let mut set = one(spec("lru", MapKind::LruHash, 4, 4, 3));
    let m = set.get_mut("lru").unwrap();
    for i in 1..=3 {
        m.update(&k32(i), &k32(i), BPF_ANY).unwrap();
    }
    // Updating 1 makes it the most recent: 2 is now the oldest.
    m.update(&k32(1), &k32(11), BPF_EXIST).unwrap();
    m.update(&k32(4), &k32(4), BPF_ANY).expect("a full LRU map evicts instead of failing");
    assert_eq!(m.lookup(&k32(2)), None);
    assert_eq!(m.keys(), vec![k32(1).to_vec(), k32(3).to_vec(), k32(4).to_vec()]);
    // A user-space lookup does not refresh recency (kernel: lookup_elem_sys_only).
    assert!(m.lookup(&k32(3)).is_some());
    m.update(&k32(5), &k32(5), BPF_ANY).unwrap();
    assert_eq!(m.lookup(&k32(3)), None);
    assert_eq!(m.len(), 3);
    // Flags still apply.
    assert_eq!(m.update(&k32(5), &k32(5), BPF_NOEXIST).unwrap_err().errno(), errno::EEXIST);
    assert_eq!(m.update(&k32(6), &k32(6), BPF_EXIST).unwrap_err().errno(), errno::ENOENT);
}

#[test]
fn lru_percpu_evicts_too() {
    let mut set = MapSet::new(&[spec("l", MapKind::LruPerCpuHash, 4, 4, 1)], 2).unwrap();
    let m = set.get_mut("l").unwrap();
    m.update(&k32(1), &k32(1), BPF_ANY).unwrap();
    m.update_percpu(&k32(2), &[k32(2), k32(3)], BPF_ANY).unwrap();
    assert_eq!(m.keys(), vec![k32(2).to_vec()]);
}

#[test]
fn lpm_longest_prefix_match() {
    let mut set = one(spec("lpm", MapKind::LpmTrie, 8, 4, 16));
    let m = set.get_mut("lpm").unwrap();
    m.update(&v4([0, 0, 0, 0], 0), &k32(0), BPF_ANY).unwrap();
    m.update(&v4([10, 0, 0, 0], 8), &k32(8), BPF_ANY).unwrap();
    m.update(&v4([10, 1, 0, 0], 16), &k32(16), BPF_ANY).unwrap();
    m.update(&v4([10, 1, 2, 3], 32), &k32(32), BPF_ANY).unwrap();
    let cases: &[([u8; 4], u32, Option<u32>)] = &[
        ([10, 1, 2, 3], 32, Some(32)),   // exact host route
        ([10, 1, 2, 4], 32, Some(16)),   // falls back to /16
        ([10, 2, 0, 1], 32, Some(8)),    // /8
        ([192, 168, 0, 1], 32, Some(0)), // default route
        ([10, 1, 2, 3], 24, Some(16)),   // the lookup prefix length caps the match
        ([10, 1, 2, 3], 8, Some(8)),
        ([10, 1, 2, 3], 0, Some(0)),
    ];
    for (addr, plen, want) in cases {
        let got = m.lookup(&v4(*addr, *plen)).map(|v| u32::from_le_bytes(v.try_into().unwrap()));
        assert_eq!(got, *want, "lookup {addr:?}/{plen}");
    }
    m.delete(&v4([0, 0, 0, 0], 0)).unwrap();
    assert_eq!(m.lookup(&v4([192, 168, 0, 1], 32)), None, "no default route any more");
    assert_eq!(m.delete(&v4([10, 1, 2, 0], 24)).unwrap_err().errno(), errno::ENOENT, "delete is exact");
}

#[test]
fn lpm_host_bits_are_masked() {
    let mut set = one(spec("lpm", MapKind::LpmTrie, 8, 1, 4));
    let m = set.get_mut("lpm").unwrap();
    m.update(&v4([10, 9, 9, 9], 8), &[1], BPF_ANY).expect("host bits are accepted");
    assert_eq!(m.lookup(&v4([10, 200, 0, 1], 32)), Some(&[1u8][..]), "and ignored for matching");
    assert_eq!(m.update(&v4([10, 0, 0, 0], 8), &[2], BPF_NOEXIST).unwrap_err().errno(), errno::EEXIST);
    m.update(&v4([10, 0, 0, 1], 8), &[3], BPF_EXIST).expect("the same /8");
    assert_eq!(m.len(), 1);
    assert_eq!(m.keys(), vec![v4([10, 0, 0, 1], 8)], "keys come back as last written");
    m.update(&v4([10, 0, 0, 0], 9), &[4], BPF_ANY).unwrap();
    assert_eq!(m.lookup(&v4([10, 127, 0, 0], 32)), Some(&[4u8][..]));
    assert_eq!(m.lookup(&v4([10, 128, 0, 0], 32)), Some(&[3u8][..]));
    m.delete(&v4([10, 255, 255, 255], 8)).expect("delete masks host bits too");
    assert_eq!(m.keys(), vec![v4([10, 0, 0, 0], 9)]);
}

#[test]
fn lpm_limits() {
    let mut set = one(spec("lpm", MapKind::LpmTrie, 8, 1, 2));
    let m = set.get_mut("lpm").unwrap();
    let long = m.update(&v4([1, 2, 3, 4], 33), &[0], BPF_ANY).unwrap_err();
    assert_eq!(long, MapError::PrefixTooLong { map: "lpm".into(), prefixlen: 33, max: 32 });
    assert_eq!(long.errno(), errno::EINVAL);
    assert_eq!(m.delete(&v4([1, 2, 3, 4], 40)).unwrap_err().errno(), errno::EINVAL);
    assert_eq!(m.update(&v4([1, 0, 0, 0], 8), &[0], BPF_EXIST).unwrap_err().errno(), errno::ENOENT);
    m.update(&v4([1, 0, 0, 0], 8), &[0], BPF_ANY).unwrap();
    m.update(&v4([2, 0, 0, 0], 8), &[0], BPF_ANY).unwrap();
    let full = m.update(&v4([3, 0, 0, 0], 8), &[0], BPF_ANY).unwrap_err();
    assert_eq!(full.errno(), errno::ENOSPC);
    m.update(&v4([2, 0, 0, 0], 8), &[9], BPF_ANY).expect("in-place update of a full trie");
    assert_eq!(m.lookup(&v4([2, 1, 1, 1], 32)), Some(&[9u8][..]));
    assert_eq!(m.lookup(&v4([2, 1, 1, 1], 99)), Some(&[9u8][..]), "lookup lengths beyond the max clamp");
}

#[test]
fn lpm_ipv6() {
    let mut set = one(spec("lpm6", MapKind::LpmTrie, 20, 1, 8));
    let m = set.get_mut("lpm6").unwrap();
    let mut net = [0u8; 16];
    net[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    m.update(&v6(net, 32), &[32], BPF_ANY).unwrap();
    let mut host = net;
    host[15] = 1;
    m.update(&v6(host, 128), &[128], BPF_ANY).unwrap();
    m.update(&v6(net, 64), &[64], BPF_ANY).unwrap();
    assert_eq!(m.lookup(&v6(host, 128)), Some(&[128u8][..]));
    let mut other = host;
    other[15] = 2;
    assert_eq!(m.lookup(&v6(other, 128)), Some(&[64u8][..]));
    other[8] = 0x80;
    assert_eq!(m.lookup(&v6(other, 128)), Some(&[64u8][..]), "bit 64 is host part of the /64");
    other[7] = 1;
    assert_eq!(m.lookup(&v6(other, 128)), Some(&[32u8][..]), "bit 63 is inside the /64");
    assert_eq!(m.lookup(&v6([0; 16], 128)), None);
    assert_eq!(m.update(&v6(net, 129), &[0], BPF_ANY).unwrap_err().errno(), errno::EINVAL);
}

#[test]
fn ringbuf_records_and_capacity() {
    let mut set = one(spec("rb", MapKind::RingBuf, 0, 0, 4096));
    let m = set.get_mut("rb").unwrap();
    m.ringbuf_output(b"hello").unwrap();
    m.ringbuf_output(&[7; 3]).unwrap();
    assert_eq!(m.records(), &[b"hello".to_vec(), vec![7; 3]]);
    // Each record takes round_up(len + 8, 8): 16 + 16 bytes used so far.
    m.ringbuf_output(&[0; 4096 - 32 - 8]).expect("exactly fills the buffer");
    let full = m.ringbuf_output(&[]).unwrap_err();
    assert_eq!(full.errno(), errno::EAGAIN);
    assert_eq!(m.take_records().len(), 3);
    assert!(m.records().is_empty());
    m.ringbuf_output(&[1]).expect("consuming frees space");
    assert_eq!(m.update(&[], &[], BPF_ANY).unwrap_err().errno(), errno::ENOTSUPP);
    assert_eq!(m.lookup(&[]), None);
}

#[test]
fn prog_array_semantics() {
    let mut set = one(spec("jmp", MapKind::ProgArray, 4, 4, 4));
    let m = set.get_mut("jmp").unwrap();
    assert_eq!(m.update(&k32(0), &k32(1), BPF_NOEXIST).unwrap_err().errno(), errno::EINVAL);
    assert_eq!(m.update(&k32(4), &k32(1), BPF_ANY).unwrap_err().errno(), errno::E2BIG);
    m.update(&k32(2), &k32(1), BPF_ANY).unwrap();
    assert_eq!(m.lookup(&k32(2)), Some(&k32(1)[..]));
    assert_eq!(m.lookup(&k32(1)), None, "empty slots are absent");
    assert_eq!(m.keys(), vec![k32(2).to_vec()]);
    assert_eq!(m.delete(&k32(1)).unwrap_err().errno(), errno::ENOENT);
    assert_eq!(m.delete(&k32(9)).unwrap_err().errno(), errno::E2BIG);
    m.delete(&k32(2)).unwrap();
    assert!(m.is_empty());
}

#[test]
fn sockhash_stub_stores_values() {
    let mut set = one(spec("socks", MapKind::SockHash, 12, 8, 1));
    let m = set.get_mut("socks").unwrap();
    m.update(&[1; 12], &42u64.to_le_bytes(), BPF_ANY).unwrap();
    assert_eq!(m.lookup(&[1; 12]), Some(&42u64.to_le_bytes()[..]));
    assert_eq!(m.update(&[2; 12], &[0; 8], BPF_ANY).unwrap_err().errno(), errno::E2BIG);
}

#[test]
fn spec_validation() {
    let bad: &[(&str, MapSpec)] = &[
        ("zero entries", spec("x", MapKind::Hash, 4, 4, 0)),
        ("zero key", spec("x", MapKind::Hash, 0, 4, 1)),
        ("zero value", spec("x", MapKind::Hash, 4, 0, 1)),
        ("array key not u32", spec("x", MapKind::Array, 8, 4, 1)),
        ("lpm key too short", spec("x", MapKind::LpmTrie, 4, 4, 1)),
        ("lpm without no_prealloc", MapSpec { flags: 0, ..spec("x", MapKind::LpmTrie, 8, 4, 1) }),
        ("ringbuf not a power of two", spec("x", MapKind::RingBuf, 0, 0, 3 * 4096)),
        ("ringbuf below a page", spec("x", MapKind::RingBuf, 0, 0, 1024)),
        ("ringbuf with a key", spec("x", MapKind::RingBuf, 4, 0, 4096)),
        ("prog array value", spec("x", MapKind::ProgArray, 4, 8, 1)),
        ("per-cpu value too big", spec("x", MapKind::PerCpuArray, 4, 32769, 1)),
        ("sockhash value", spec("x", MapKind::SockHash, 4, 2, 1)),
    ];
    for (what, s) in bad {
        let err = MapSet::new(std::slice::from_ref(s), 1).expect_err(what);
        assert!(matches!(err, MapError::InvalidSpec { .. }), "{what}: {err}");
    }
    let a = spec("a", MapKind::Array, 4, 4, 1);
    assert_eq!(MapSet::new(&[a.clone(), a], 1).unwrap_err(), MapError::DuplicateName { name: "a".into() });
    assert!(MapSet::new(&[], 0).is_err(), "zero CPUs");
}

#[test]
fn value_addresses_are_stable() {
    let specs = [spec("h", MapKind::Hash, 4, 12, 8), spec("pa", MapKind::PerCpuArray, 4, 4, 2)];
    let mut set = MapSet::new(&specs, 2).unwrap();
    set.get_mut("h").unwrap().update(&k32(1), &[0; 12], BPF_ANY).unwrap();
    let a1 = set.value_addr("h", &k32(1)).unwrap();
    set.get_mut("h").unwrap().update(&k32(2), &[0; 12], BPF_ANY).unwrap();
    set.get_mut("h").unwrap().update(&k32(1), &[1; 12], BPF_ANY).unwrap();
    assert_eq!(set.value_addr("h", &k32(1)), Some(a1), "other inserts and in-place updates keep the address");
    let a2 = set.value_addr("h", &k32(2)).unwrap();
    assert!(a2 >= a1 + 12, "values do not overlap");
    set.get_mut("h").unwrap().delete(&k32(1)).unwrap();
    assert_eq!(set.value_addr("h", &k32(1)), None);
    assert_eq!(set.value_addr("h", &k32(2)), Some(a2));
    let cpu0 = set.value_addr("pa", &k32(1)).unwrap();
    set.set_cpu(1).unwrap();
    let cpu1 = set.value_addr("pa", &k32(1)).unwrap();
    assert_ne!(cpu0, cpu1, "each CPU's copy has its own address");
    assert_ne!(set.handle_addr("h"), set.handle_addr("pa"));
    assert_eq!(set.handle_addr("nope"), None);
}
