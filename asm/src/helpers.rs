//! Kernel helper function ids (`enum bpf_func_id`, Linux 6.18) and their names.

/// `bpf_map_lookup_elem`.
pub const MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_map_update_elem`.
pub const MAP_UPDATE_ELEM: i32 = 2;
/// `bpf_map_delete_elem`.
pub const MAP_DELETE_ELEM: i32 = 3;
/// `bpf_ktime_get_ns`.
pub const KTIME_GET_NS: i32 = 5;
/// `bpf_get_smp_processor_id`.
pub const GET_SMP_PROCESSOR_ID: i32 = 8;
/// `bpf_redirect`.
pub const REDIRECT: i32 = 23;
/// `bpf_xdp_adjust_head`.
pub const XDP_ADJUST_HEAD: i32 = 44;
/// `bpf_ringbuf_output`.
pub const RINGBUF_OUTPUT: i32 = 130;

/// The name of a helper, if known.
pub fn name(id: i32) -> Option<&'static str> {
    Some(match id {
        1 => "bpf_map_lookup_elem",
        2 => "bpf_map_update_elem",
        3 => "bpf_map_delete_elem",
        5 => "bpf_ktime_get_ns",
        8 => "bpf_get_smp_processor_id",
        23 => "bpf_redirect",
        44 => "bpf_xdp_adjust_head",
        130 => "bpf_ringbuf_output",
        _ => return None,
    })
}

/// The id of a helper by name.
pub fn id(name: &str) -> Option<i32> {
    (0..256).find(|i| self::name(*i) == Some(name))
}
