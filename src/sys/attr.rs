//! `union bpf_attr` and the kernel's info structs, one `#[repr(C)]` struct per command.
//!
//! Contract: every struct here mirrors the Linux 6.18 UAPI layout of the part of
//! `union bpf_attr` (or `struct bpf_*_info`) one command reads, with every padding byte
//! spelled out as a `_pad` field, so the struct has no implicit padding and any byte
//! pattern is a valid value. That is what makes [`Attr`] sound: an attr can be viewed as
//! bytes, handed to the kernel, and read back after the kernel wrote into it. Sizes and
//! field offsets are asserted at compile time and in the unit tests below (checked against
//! the kernel's `offsetof`). Pointers travel as `u64` (`__aligned_u64`); the code that sets
//! one keeps the pointee alive across the call.
//!
//! Constants are defined here because the build host's headers may be older than the
//! running kernel; nothing is taken from `/usr/include`.

use std::mem::size_of;

/// Plain-old-data that can be handed to the kernel as a byte buffer.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integer fields and integer arrays
/// (every bit pattern valid), and have no implicit padding (every byte belongs to a field).
pub unsafe trait Attr: Copy + 'static {
    /// The all-zero value: the kernel requires unused attr bytes to be zero.
    fn zeroed() -> Self {
        // SAFETY: the trait contract says every field is an integer, so all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    /// The struct as the mutable byte buffer the `bpf()` syscall takes.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `self` is a live, exclusively borrowed value of `size_of::<Self>()` bytes;
        // the contract guarantees no padding (all bytes initialized) and that any bytes
        // written through the slice form a valid `Self`.
        unsafe { std::slice::from_raw_parts_mut(self as *mut Self as *mut u8, size_of::<Self>()) }
    }
}

/// A pointer as the kernel's `__aligned_u64`.
pub fn ptr_u64<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// `BPF_OBJ_NAME_LEN`: object names are at most 15 bytes plus a NUL.
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// `BPF_F_NO_PREALLOC` and friends: `map_flags` of `BPF_MAP_CREATE`.
pub mod map_flags {
    /// Allocate elements on demand (required for LPM tries).
    pub const NO_PREALLOC: u32 = 1 << 0;
    /// LRU maps: per-CPU LRU lists instead of a common one.
    pub const NO_COMMON_LRU: u32 = 1 << 1;
    /// `numa_node` is valid.
    pub const NUMA_NODE: u32 = 1 << 2;
    /// Syscall side may only read.
    pub const RDONLY: u32 = 1 << 3;
    /// Syscall side may only write.
    pub const WRONLY: u32 = 1 << 4;
    /// Zero the hash seed (deterministic hashing, tests only).
    pub const ZERO_SEED: u32 = 1 << 6;
    /// Programs may only read.
    pub const RDONLY_PROG: u32 = 1 << 7;
    /// Programs may only write.
    pub const WRONLY_PROG: u32 = 1 << 8;
    /// Array maps may be `mmap`ed.
    pub const MMAPABLE: u32 = 1 << 10;
    /// Keep perf event array elements when the map fd is closed.
    pub const PRESERVE_ELEMS: u32 = 1 << 11;
    /// Inner map of a map-in-map may have a different `max_entries`.
    pub const INNER_MAP: u32 = 1 << 12;
}

/// `prog_flags` of `BPF_PROG_LOAD`.
pub mod prog_flags {
    /// `BPF_F_STRICT_ALIGNMENT`: verify alignment as strict-alignment architectures do.
    pub const STRICT_ALIGNMENT: u32 = 1 << 0;
    /// `BPF_F_ANY_ALIGNMENT`.
    pub const ANY_ALIGNMENT: u32 = 1 << 1;
    /// `BPF_F_TEST_RND_HI32`.
    pub const TEST_RND_HI32: u32 = 1 << 2;
    /// `BPF_F_SLEEPABLE`.
    pub const SLEEPABLE: u32 = 1 << 4;
    /// `BPF_F_XDP_HAS_FRAGS`: the XDP program understands multi-buffer frames.
    pub const XDP_HAS_FRAGS: u32 = 1 << 5;
}

/// `flags` of `BPF_PROG_TEST_RUN`.
pub mod test_run_flags {
    /// `BPF_F_TEST_RUN_ON_CPU`: run on `cpu` (raw tracepoints only).
    pub const RUN_ON_CPU: u32 = 1 << 0;
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`: XDP frames go to the real network stack.
    pub const XDP_LIVE_FRAMES: u32 = 1 << 1;
    /// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`.
    pub const SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
}

/// `enum bpf_attach_type`: the values of `expected_attach_type` and of attach calls.
pub mod attach_type {
    pub const CGROUP_INET_INGRESS: u32 = 0;
    pub const CGROUP_INET_EGRESS: u32 = 1;
    pub const CGROUP_INET_SOCK_CREATE: u32 = 2;
    pub const CGROUP_SOCK_OPS: u32 = 3;
    pub const SK_SKB_STREAM_PARSER: u32 = 4;
    pub const SK_SKB_STREAM_VERDICT: u32 = 5;
    pub const CGROUP_DEVICE: u32 = 6;
    pub const SK_MSG_VERDICT: u32 = 7;
    pub const CGROUP_INET4_BIND: u32 = 8;
    pub const CGROUP_INET6_BIND: u32 = 9;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_INET4_POST_BIND: u32 = 12;
    pub const CGROUP_INET6_POST_BIND: u32 = 13;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
    pub const CGROUP_INET4_GETSOCKNAME: u32 = 31;
    pub const CGROUP_INET6_GETSOCKNAME: u32 = 32;
    pub const CGROUP_INET_SOCK_RELEASE: u32 = 34;
    pub const SK_LOOKUP: u32 = 36;
    /// `BPF_XDP`: XDP through a bpf link.
    pub const XDP: u32 = 37;
    pub const SK_SKB_VERDICT: u32 = 38;
    /// `BPF_TRACE_ITER`: a BPF iterator (`iter/tcp`, ...).
    pub const TRACE_ITER: u32 = 28;
    pub const NETFILTER: u32 = 45;
    pub const TCX_INGRESS: u32 = 46;
    pub const TCX_EGRESS: u32 = 47;
    pub const NETKIT_PRIMARY: u32 = 54;
    pub const NETKIT_PEER: u32 = 55;
}

/// Flags of `BPF_PROG_ATTACH` / `BPF_LINK_CREATE` (`attach_flags`, `flags`).
pub mod attach_flags {
    pub const ALLOW_OVERRIDE: u32 = 1 << 0;
    pub const ALLOW_MULTI: u32 = 1 << 1;
    pub const REPLACE: u32 = 1 << 2;
    pub const BEFORE: u32 = 1 << 3;
    pub const AFTER: u32 = 1 << 4;
    pub const ID: u32 = 1 << 5;
    pub const LINK: u32 = 1 << 13;
}

/// `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
    pub numa_node: u32,
    pub map_name: [u8; BPF_OBJ_NAME_LEN],
    pub map_ifindex: u32,
    pub btf_fd: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
    pub btf_vmlinux_value_type_id: u32,
    pub map_extra: u64,
    pub value_type_btf_obj_fd: i32,
    pub map_token_fd: i32,
}

/// `BPF_MAP_LOOKUP_ELEM`, `BPF_MAP_UPDATE_ELEM`, `BPF_MAP_DELETE_ELEM`,
/// `BPF_MAP_GET_NEXT_KEY` (`value` is `next_key` there).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapElemAttr {
    pub map_fd: u32,
    pub _pad0: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
}

/// `BPF_MAP_*_BATCH`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapBatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `BPF_PROG_LOAD`, through the 6.18 signature fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; BPF_OBJ_NAME_LEN],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
    pub prog_btf_fd: u32,
    pub func_info_rec_size: u32,
    pub func_info: u64,
    pub func_info_cnt: u32,
    pub line_info_rec_size: u32,
    pub line_info: u64,
    pub line_info_cnt: u32,
    pub attach_btf_id: u32,
    pub attach_prog_fd: u32,
    pub core_relo_cnt: u32,
    pub fd_array: u64,
    pub core_relos: u64,
    pub core_relo_rec_size: u32,
    /// Output (6.4+): the log size the verifier wanted.
    pub log_true_size: u32,
    pub prog_token_fd: i32,
    pub fd_array_cnt: u32,
    pub signature: u64,
    pub signature_size: u32,
    pub keyring_id: i32,
}

/// `BPF_OBJ_PIN` / `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ObjAttr {
    pub pathname: u64,
    pub bpf_fd: u32,
    pub file_flags: u32,
    pub path_fd: i32,
    pub _pad0: u32,
}

/// `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    pub _pad0: u32,
}

/// `BPF_*_GET_FD_BY_ID` and `BPF_*_GET_NEXT_ID` (`id` is `start_id` there).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GetIdAttr {
    pub id: u32,
    pub next_id: u32,
    pub open_flags: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct InfoAttr {
    pub bpf_fd: u32,
    pub info_len: u32,
    pub info: u64,
}

/// `BPF_PROG_ATTACH` / `BPF_PROG_DETACH` (6.6+ layout with the mprog fields).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProgAttachAttr {
    /// `target_fd` or `target_ifindex`.
    pub target: u32,
    pub attach_bpf_fd: u32,
    pub attach_type: u32,
    pub attach_flags: u32,
    pub replace_bpf_fd: u32,
    /// `relative_fd` or `relative_id`.
    pub relative: u32,
    pub expected_revision: u64,
}

/// `BPF_LINK_CREATE`. The per-type tail is a union; the named fields are the
/// `tcx`/`netkit`/`cgroup` view (`relative_fd`/`relative_id`, `expected_revision`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkCreateAttr {
    /// `prog_fd` or `map_fd`.
    pub prog_fd: u32,
    /// `target_fd` or `target_ifindex`.
    pub target: u32,
    pub attach_type: u32,
    pub flags: u32,
    /// `relative_fd` / `relative_id` (tcx, netkit, cgroup); `target_btf_id` (tracing).
    pub relative: u32,
    pub _pad0: u32,
    pub expected_revision: u64,
    /// The rest of the largest union member (`uprobe_multi`).
    pub _tail: [u64; 4],
}

/// `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkUpdateAttr {
    pub link_fd: u32,
    pub new_prog_fd: u32,
    pub flags: u32,
    pub old_prog_fd: u32,
}

/// `BPF_LINK_DETACH`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkDetachAttr {
    pub link_fd: u32,
}

/// `struct bpf_map_info` (through `map_extra`; the 6.18 `hash` fields are left out so the
/// kernel computes no hash).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapInfoRaw {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; BPF_OBJ_NAME_LEN],
    pub ifindex: u32,
    pub btf_vmlinux_value_type_id: u32,
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub btf_id: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
    pub btf_vmlinux_id: u32,
    pub map_extra: u64,
}

/// `struct bpf_prog_info` (6.18: `verified_insns` at offset 216).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProgInfoRaw {
    pub prog_type: u32,
    pub id: u32,
    pub tag: [u8; 8],
    pub jited_prog_len: u32,
    pub xlated_prog_len: u32,
    pub jited_prog_insns: u64,
    pub xlated_prog_insns: u64,
    pub load_time: u64,
    pub created_by_uid: u32,
    pub nr_map_ids: u32,
    pub map_ids: u64,
    pub name: [u8; BPF_OBJ_NAME_LEN],
    pub ifindex: u32,
    /// Bit 0: `gpl_compatible`.
    pub gpl_compatible_bits: u32,
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub nr_jited_ksyms: u32,
    pub nr_jited_func_lens: u32,
    pub jited_ksyms: u64,
    pub jited_func_lens: u64,
    pub btf_id: u32,
    pub func_info_rec_size: u32,
    pub func_info: u64,
    pub nr_func_info: u32,
    pub nr_line_info: u32,
    pub line_info: u64,
    pub jited_line_info: u64,
    pub nr_jited_line_info: u32,
    pub line_info_rec_size: u32,
    pub jited_line_info_rec_size: u32,
    pub nr_prog_tags: u32,
    pub prog_tags: u64,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
    pub verified_insns: u32,
    pub attach_btf_obj_id: u32,
    pub attach_btf_id: u32,
    pub _pad0: u32,
}

macro_rules! attr_structs {
    ($($t:ty = $size:expr),* $(,)?) => {
        $(
            // SAFETY: `#[repr(C)]`, integer fields only, padding spelled out; the size
            // assertion below catches a field added without its padding.
            unsafe impl Attr for $t {}
            const _: () = assert!(size_of::<$t>() == $size);
        )*
    };
}

/// `BPF_ITER_CREATE`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IterCreateAttr {
    pub link_fd: u32,
    pub flags: u32,
}

attr_structs! {
    IterCreateAttr = 8,
    MapCreateAttr = 80,
    MapElemAttr = 32,
    MapBatchAttr = 56,
    ProgLoadAttr = 168,
    ObjAttr = 24,
    TestRunAttr = 80,
    GetIdAttr = 12,
    InfoAttr = 16,
    ProgAttachAttr = 32,
    LinkCreateAttr = 64,
    LinkUpdateAttr = 16,
    LinkDetachAttr = 4,
    MapInfoRaw = 88,
    ProgInfoRaw = 232,
}

/// A kernel object name: sanitized to `[A-Za-z0-9_.]` (anything else becomes `_`),
/// truncated to 15 bytes.
pub fn sanitize_obj_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' })
        .take(BPF_OBJ_NAME_LEN - 1)
        .collect()
}

/// The NUL-terminated, sanitized name field of an attr.
pub fn obj_name_bytes(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    for (dst, src) in out.iter_mut().zip(sanitize_obj_name(name).bytes()) {
        *dst = src;
    }
    out
}

/// The string in a NUL-terminated name field the kernel filled.
pub fn obj_name_from_bytes(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// Offsets checked against `offsetof` in the kernel UAPI header (6.1 for the old
    /// fields, 6.18 `include/uapi/linux/bpf.h` for the newer ones).
    #[test]
    fn layouts_match_the_kernel() {
        let cases: &[(&str, usize, usize)] = &[
            ("map_create.map_name", offset_of!(MapCreateAttr, map_name), 28),
            (
                "map_create.btf_vmlinux_value_type_id",
                offset_of!(MapCreateAttr, btf_vmlinux_value_type_id),
                60,
            ),
            ("map_create.map_extra", offset_of!(MapCreateAttr, map_extra), 64),
            ("map_create.map_token_fd", offset_of!(MapCreateAttr, map_token_fd), 76),
            ("elem.key", offset_of!(MapElemAttr, key), 8),
            ("elem.flags", offset_of!(MapElemAttr, flags), 24),
            ("batch.count", offset_of!(MapBatchAttr, count), 32),
            ("batch.flags", offset_of!(MapBatchAttr, flags), 48),
            ("load.prog_name", offset_of!(ProgLoadAttr, prog_name), 48),
            ("load.expected_attach_type", offset_of!(ProgLoadAttr, expected_attach_type), 68),
            ("load.fd_array", offset_of!(ProgLoadAttr, fd_array), 120),
            ("load.core_relo_rec_size", offset_of!(ProgLoadAttr, core_relo_rec_size), 136),
            ("load.log_true_size", offset_of!(ProgLoadAttr, log_true_size), 140),
            ("load.prog_token_fd", offset_of!(ProgLoadAttr, prog_token_fd), 144),
            ("load.signature", offset_of!(ProgLoadAttr, signature), 152),
            ("load.keyring_id", offset_of!(ProgLoadAttr, keyring_id), 164),
            ("obj.file_flags", offset_of!(ObjAttr, file_flags), 12),
            ("obj.path_fd", offset_of!(ObjAttr, path_fd), 16),
            ("test.ctx_out", offset_of!(TestRunAttr, ctx_out), 56),
            ("test.flags", offset_of!(TestRunAttr, flags), 64),
            ("test.batch_size", offset_of!(TestRunAttr, batch_size), 72),
            ("get_id.open_flags", offset_of!(GetIdAttr, open_flags), 8),
            ("info.info", offset_of!(InfoAttr, info), 8),
            ("attach.expected_revision", offset_of!(ProgAttachAttr, expected_revision), 24),
            ("link.relative", offset_of!(LinkCreateAttr, relative), 16),
            ("link.expected_revision", offset_of!(LinkCreateAttr, expected_revision), 24),
            ("map_info.name", offset_of!(MapInfoRaw, name), 24),
            ("map_info.netns_dev", offset_of!(MapInfoRaw, netns_dev), 48),
            ("map_info.map_extra", offset_of!(MapInfoRaw, map_extra), 80),
            ("prog_info.name", offset_of!(ProgInfoRaw, name), 64),
            ("prog_info.ifindex", offset_of!(ProgInfoRaw, ifindex), 80),
            ("prog_info.netns_dev", offset_of!(ProgInfoRaw, netns_dev), 88),
            ("prog_info.run_time_ns", offset_of!(ProgInfoRaw, run_time_ns), 192),
            ("prog_info.verified_insns", offset_of!(ProgInfoRaw, verified_insns), 216),
            ("prog_info.attach_btf_id", offset_of!(ProgInfoRaw, attach_btf_id), 224),
        ];
        for &(field, actual, expected) in cases {
            assert_eq!(actual, expected, "offset of {field}");
        }
    }

    #[test]
    fn names_are_sanitized_and_truncated() {
        let cases = [
            ("cilium_ct4", "cilium_ct4"),
            ("a-b c/d", "a_b_c_d"),
            ("0123456789abcdefXYZ", "0123456789abcde"),
            ("é.ü", "_._"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_obj_name(input), expected, "input {input:?}");
        }
        let raw = obj_name_bytes("0123456789abcdefXYZ");
        assert_eq!(raw[15], 0, "name field keeps its NUL");
        assert_eq!(obj_name_from_bytes(&raw), "0123456789abcde");
    }
}
