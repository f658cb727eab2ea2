//! Kernel helper function ids (`enum bpf_func_id`, Linux 6.18) and their names.
//!
//! The table is `___BPF_FUNC_MAPPER` of `include/uapi/linux/bpf.h`, in order: ids are
//! contiguous from `bpf_unspec` (0) to `bpf_cgrp_storage_delete` (211). The helper set has
//! been frozen since 6.1 (new kernel entry points are kfuncs), so 6.18 ends there too.
//! Names carry the `bpf_` prefix, as the verifier log prints them (`call bpf_redirect#23`).

/// Generates one `pub const` per helper, the id-indexed name table and the name lookup.
macro_rules! helper_table {
    ($($id:literal $name:literal $konst:ident,)*) => {
        $(
            #[doc = concat!("`bpf_", $name, "`.")]
            pub const $konst: i32 = $id;
        )*

        /// Helper names indexed by id.
        const NAMES: &[&str] = &[$(concat!("bpf_", $name)),*];

        /// The id of a helper by its full name (`"bpf_map_lookup_elem"`).
        pub fn id(name: &str) -> Option<i32> {
            match name {
                $(concat!("bpf_", $name) => Some($id),)*
                _ => None,
            }
        }
    };
}

helper_table! {
    0 "unspec" UNSPEC,
    1 "map_lookup_elem" MAP_LOOKUP_ELEM,
    2 "map_update_elem" MAP_UPDATE_ELEM,
    3 "map_delete_elem" MAP_DELETE_ELEM,
    4 "probe_read" PROBE_READ,
    5 "ktime_get_ns" KTIME_GET_NS,
    6 "trace_printk" TRACE_PRINTK,
    7 "get_prandom_u32" GET_PRANDOM_U32,
    8 "get_smp_processor_id" GET_SMP_PROCESSOR_ID,
    9 "skb_store_bytes" SKB_STORE_BYTES,
    10 "l3_csum_replace" L3_CSUM_REPLACE,
    11 "l4_csum_replace" L4_CSUM_REPLACE,
    12 "tail_call" TAIL_CALL,
    13 "clone_redirect" CLONE_REDIRECT,
    14 "get_current_pid_tgid" GET_CURRENT_PID_TGID,
    15 "get_current_uid_gid" GET_CURRENT_UID_GID,
    16 "get_current_comm" GET_CURRENT_COMM,
    17 "get_cgroup_classid" GET_CGROUP_CLASSID,
    18 "skb_vlan_push" SKB_VLAN_PUSH,
    19 "skb_vlan_pop" SKB_VLAN_POP,
    20 "skb_get_tunnel_key" SKB_GET_TUNNEL_KEY,
    21 "skb_set_tunnel_key" SKB_SET_TUNNEL_KEY,
    22 "perf_event_read" PERF_EVENT_READ,
    23 "redirect" REDIRECT,
    24 "get_route_realm" GET_ROUTE_REALM,
    25 "perf_event_output" PERF_EVENT_OUTPUT,
    26 "skb_load_bytes" SKB_LOAD_BYTES,
    27 "get_stackid" GET_STACKID,
    28 "csum_diff" CSUM_DIFF,
    29 "skb_get_tunnel_opt" SKB_GET_TUNNEL_OPT,
    30 "skb_set_tunnel_opt" SKB_SET_TUNNEL_OPT,
    31 "skb_change_proto" SKB_CHANGE_PROTO,
    32 "skb_change_type" SKB_CHANGE_TYPE,
    33 "skb_under_cgroup" SKB_UNDER_CGROUP,
    34 "get_hash_recalc" GET_HASH_RECALC,
    35 "get_current_task" GET_CURRENT_TASK,
    36 "probe_write_user" PROBE_WRITE_USER,
    37 "current_task_under_cgroup" CURRENT_TASK_UNDER_CGROUP,
    38 "skb_change_tail" SKB_CHANGE_TAIL,
    39 "skb_pull_data" SKB_PULL_DATA,
    40 "csum_update" CSUM_UPDATE,
    41 "set_hash_invalid" SET_HASH_INVALID,
    42 "get_numa_node_id" GET_NUMA_NODE_ID,
    43 "skb_change_head" SKB_CHANGE_HEAD,
    44 "xdp_adjust_head" XDP_ADJUST_HEAD,
    45 "probe_read_str" PROBE_READ_STR,
    46 "get_socket_cookie" GET_SOCKET_COOKIE,
    47 "get_socket_uid" GET_SOCKET_UID,
    48 "set_hash" SET_HASH,
    49 "setsockopt" SETSOCKOPT,
    50 "skb_adjust_room" SKB_ADJUST_ROOM,
    51 "redirect_map" REDIRECT_MAP,
    52 "sk_redirect_map" SK_REDIRECT_MAP,
    53 "sock_map_update" SOCK_MAP_UPDATE,
    54 "xdp_adjust_meta" XDP_ADJUST_META,
    55 "perf_event_read_value" PERF_EVENT_READ_VALUE,
    56 "perf_prog_read_value" PERF_PROG_READ_VALUE,
    57 "getsockopt" GETSOCKOPT,
    58 "override_return" OVERRIDE_RETURN,
    59 "sock_ops_cb_flags_set" SOCK_OPS_CB_FLAGS_SET,
    60 "msg_redirect_map" MSG_REDIRECT_MAP,
    61 "msg_apply_bytes" MSG_APPLY_BYTES,
    62 "msg_cork_bytes" MSG_CORK_BYTES,
    63 "msg_pull_data" MSG_PULL_DATA,
    64 "bind" BIND,
    65 "xdp_adjust_tail" XDP_ADJUST_TAIL,
    66 "skb_get_xfrm_state" SKB_GET_XFRM_STATE,
    67 "get_stack" GET_STACK,
    68 "skb_load_bytes_relative" SKB_LOAD_BYTES_RELATIVE,
    69 "fib_lookup" FIB_LOOKUP,
    70 "sock_hash_update" SOCK_HASH_UPDATE,
    71 "msg_redirect_hash" MSG_REDIRECT_HASH,
    72 "sk_redirect_hash" SK_REDIRECT_HASH,
    73 "lwt_push_encap" LWT_PUSH_ENCAP,
    74 "lwt_seg6_store_bytes" LWT_SEG6_STORE_BYTES,
    75 "lwt_seg6_adjust_srh" LWT_SEG6_ADJUST_SRH,
    76 "lwt_seg6_action" LWT_SEG6_ACTION,
    77 "rc_repeat" RC_REPEAT,
    78 "rc_keydown" RC_KEYDOWN,
    79 "skb_cgroup_id" SKB_CGROUP_ID,
    80 "get_current_cgroup_id" GET_CURRENT_CGROUP_ID,
    81 "get_local_storage" GET_LOCAL_STORAGE,
    82 "sk_select_reuseport" SK_SELECT_REUSEPORT,
    83 "skb_ancestor_cgroup_id" SKB_ANCESTOR_CGROUP_ID,
    84 "sk_lookup_tcp" SK_LOOKUP_TCP,
    85 "sk_lookup_udp" SK_LOOKUP_UDP,
    86 "sk_release" SK_RELEASE,
    87 "map_push_elem" MAP_PUSH_ELEM,
    88 "map_pop_elem" MAP_POP_ELEM,
    89 "map_peek_elem" MAP_PEEK_ELEM,
    90 "msg_push_data" MSG_PUSH_DATA,
    91 "msg_pop_data" MSG_POP_DATA,
    92 "rc_pointer_rel" RC_POINTER_REL,
    93 "spin_lock" SPIN_LOCK,
    94 "spin_unlock" SPIN_UNLOCK,
    95 "sk_fullsock" SK_FULLSOCK,
    96 "tcp_sock" TCP_SOCK,
    97 "skb_ecn_set_ce" SKB_ECN_SET_CE,
    98 "get_listener_sock" GET_LISTENER_SOCK,
    99 "skc_lookup_tcp" SKC_LOOKUP_TCP,
    100 "tcp_check_syncookie" TCP_CHECK_SYNCOOKIE,
    101 "sysctl_get_name" SYSCTL_GET_NAME,
    102 "sysctl_get_current_value" SYSCTL_GET_CURRENT_VALUE,
    103 "sysctl_get_new_value" SYSCTL_GET_NEW_VALUE,
    104 "sysctl_set_new_value" SYSCTL_SET_NEW_VALUE,
    105 "strtol" STRTOL,
    106 "strtoul" STRTOUL,
    107 "sk_storage_get" SK_STORAGE_GET,
    108 "sk_storage_delete" SK_STORAGE_DELETE,
    109 "send_signal" SEND_SIGNAL,
    110 "tcp_gen_syncookie" TCP_GEN_SYNCOOKIE,
    111 "skb_output" SKB_OUTPUT,
    112 "probe_read_user" PROBE_READ_USER,
    113 "probe_read_kernel" PROBE_READ_KERNEL,
    114 "probe_read_user_str" PROBE_READ_USER_STR,
    115 "probe_read_kernel_str" PROBE_READ_KERNEL_STR,
    116 "tcp_send_ack" TCP_SEND_ACK,
    117 "send_signal_thread" SEND_SIGNAL_THREAD,
    118 "jiffies64" JIFFIES64,
    119 "read_branch_records" READ_BRANCH_RECORDS,
    120 "get_ns_current_pid_tgid" GET_NS_CURRENT_PID_TGID,
    121 "xdp_output" XDP_OUTPUT,
    122 "get_netns_cookie" GET_NETNS_COOKIE,
    123 "get_current_ancestor_cgroup_id" GET_CURRENT_ANCESTOR_CGROUP_ID,
    124 "sk_assign" SK_ASSIGN,
    125 "ktime_get_boot_ns" KTIME_GET_BOOT_NS,
    126 "seq_printf" SEQ_PRINTF,
    127 "seq_write" SEQ_WRITE,
    128 "sk_cgroup_id" SK_CGROUP_ID,
    129 "sk_ancestor_cgroup_id" SK_ANCESTOR_CGROUP_ID,
    130 "ringbuf_output" RINGBUF_OUTPUT,
    131 "ringbuf_reserve" RINGBUF_RESERVE,
    132 "ringbuf_submit" RINGBUF_SUBMIT,
    133 "ringbuf_discard" RINGBUF_DISCARD,
    134 "ringbuf_query" RINGBUF_QUERY,
    135 "csum_level" CSUM_LEVEL,
    136 "skc_to_tcp6_sock" SKC_TO_TCP6_SOCK,
    137 "skc_to_tcp_sock" SKC_TO_TCP_SOCK,
    138 "skc_to_tcp_timewait_sock" SKC_TO_TCP_TIMEWAIT_SOCK,
    139 "skc_to_tcp_request_sock" SKC_TO_TCP_REQUEST_SOCK,
    140 "skc_to_udp6_sock" SKC_TO_UDP6_SOCK,
    141 "get_task_stack" GET_TASK_STACK,
    142 "load_hdr_opt" LOAD_HDR_OPT,
    143 "store_hdr_opt" STORE_HDR_OPT,
    144 "reserve_hdr_opt" RESERVE_HDR_OPT,
    145 "inode_storage_get" INODE_STORAGE_GET,
    146 "inode_storage_delete" INODE_STORAGE_DELETE,
    147 "d_path" D_PATH,
    148 "copy_from_user" COPY_FROM_USER,
    149 "snprintf_btf" SNPRINTF_BTF,
    150 "seq_printf_btf" SEQ_PRINTF_BTF,
    151 "skb_cgroup_classid" SKB_CGROUP_CLASSID,
    152 "redirect_neigh" REDIRECT_NEIGH,
    153 "per_cpu_ptr" PER_CPU_PTR,
    154 "this_cpu_ptr" THIS_CPU_PTR,
    155 "redirect_peer" REDIRECT_PEER,
    156 "task_storage_get" TASK_STORAGE_GET,
    157 "task_storage_delete" TASK_STORAGE_DELETE,
    158 "get_current_task_btf" GET_CURRENT_TASK_BTF,
    159 "bprm_opts_set" BPRM_OPTS_SET,
    160 "ktime_get_coarse_ns" KTIME_GET_COARSE_NS,
    161 "ima_inode_hash" IMA_INODE_HASH,
    162 "sock_from_file" SOCK_FROM_FILE,
    163 "check_mtu" CHECK_MTU,
    164 "for_each_map_elem" FOR_EACH_MAP_ELEM,
    165 "snprintf" SNPRINTF,
    166 "sys_bpf" SYS_BPF,
    167 "btf_find_by_name_kind" BTF_FIND_BY_NAME_KIND,
    168 "sys_close" SYS_CLOSE,
    169 "timer_init" TIMER_INIT,
    170 "timer_set_callback" TIMER_SET_CALLBACK,
    171 "timer_start" TIMER_START,
    172 "timer_cancel" TIMER_CANCEL,
    173 "get_func_ip" GET_FUNC_IP,
    174 "get_attach_cookie" GET_ATTACH_COOKIE,
    175 "task_pt_regs" TASK_PT_REGS,
    176 "get_branch_snapshot" GET_BRANCH_SNAPSHOT,
    177 "trace_vprintk" TRACE_VPRINTK,
    178 "skc_to_unix_sock" SKC_TO_UNIX_SOCK,
    179 "kallsyms_lookup_name" KALLSYMS_LOOKUP_NAME,
    180 "find_vma" FIND_VMA,
    181 "loop" LOOP,
    182 "strncmp" STRNCMP,
    183 "get_func_arg" GET_FUNC_ARG,
    184 "get_func_ret" GET_FUNC_RET,
    185 "get_func_arg_cnt" GET_FUNC_ARG_CNT,
    186 "get_retval" GET_RETVAL,
    187 "set_retval" SET_RETVAL,
    188 "xdp_get_buff_len" XDP_GET_BUFF_LEN,
    189 "xdp_load_bytes" XDP_LOAD_BYTES,
    190 "xdp_store_bytes" XDP_STORE_BYTES,
    191 "copy_from_user_task" COPY_FROM_USER_TASK,
    192 "skb_set_tstamp" SKB_SET_TSTAMP,
    193 "ima_file_hash" IMA_FILE_HASH,
    194 "kptr_xchg" KPTR_XCHG,
    195 "map_lookup_percpu_elem" MAP_LOOKUP_PERCPU_ELEM,
    196 "skc_to_mptcp_sock" SKC_TO_MPTCP_SOCK,
    197 "dynptr_from_mem" DYNPTR_FROM_MEM,
    198 "ringbuf_reserve_dynptr" RINGBUF_RESERVE_DYNPTR,
    199 "ringbuf_submit_dynptr" RINGBUF_SUBMIT_DYNPTR,
    200 "ringbuf_discard_dynptr" RINGBUF_DISCARD_DYNPTR,
    201 "dynptr_read" DYNPTR_READ,
    202 "dynptr_write" DYNPTR_WRITE,
    203 "dynptr_data" DYNPTR_DATA,
    204 "tcp_raw_gen_syncookie_ipv4" TCP_RAW_GEN_SYNCOOKIE_IPV4,
    205 "tcp_raw_gen_syncookie_ipv6" TCP_RAW_GEN_SYNCOOKIE_IPV6,
    206 "tcp_raw_check_syncookie_ipv4" TCP_RAW_CHECK_SYNCOOKIE_IPV4,
    207 "tcp_raw_check_syncookie_ipv6" TCP_RAW_CHECK_SYNCOOKIE_IPV6,
    208 "ktime_get_tai_ns" KTIME_GET_TAI_NS,
    209 "user_ringbuf_drain" USER_RINGBUF_DRAIN,
    210 "cgrp_storage_get" CGRP_STORAGE_GET,
    211 "cgrp_storage_delete" CGRP_STORAGE_DELETE,
}

/// One past the last helper id (`__BPF_FUNC_MAX_ID`).
pub const MAX_ID: i32 = 212;

/// The name of a helper, if `id` is one (`bpf_unspec` for 0, as the kernel prints it).
pub fn name(id: i32) -> Option<&'static str> {
    usize::try_from(id).ok().and_then(|i| NAMES.get(i)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_contiguous_and_invertible() {
        assert_eq!(NAMES.len(), MAX_ID as usize);
        for i in 0..MAX_ID {
            let n = name(i).expect("every id below MAX_ID has a name");
            assert_eq!(id(n), Some(i), "{n}");
        }
        assert_eq!(name(MAX_ID), None);
        assert_eq!(name(-1), None);
        assert_eq!(id("map_lookup_elem"), None, "names carry the bpf_ prefix");
    }

    #[test]
    fn ids_sluice_uses() {
        let cases = [
            (MAP_LOOKUP_ELEM, 1, "bpf_map_lookup_elem"),
            (GET_PRANDOM_U32, 7, "bpf_get_prandom_u32"),
            (SKB_STORE_BYTES, 9, "bpf_skb_store_bytes"),
            (L3_CSUM_REPLACE, 10, "bpf_l3_csum_replace"),
            (L4_CSUM_REPLACE, 11, "bpf_l4_csum_replace"),
            (TAIL_CALL, 12, "bpf_tail_call"),
            (CLONE_REDIRECT, 13, "bpf_clone_redirect"),
            (REDIRECT, 23, "bpf_redirect"),
            (SKB_LOAD_BYTES, 26, "bpf_skb_load_bytes"),
            (CSUM_DIFF, 28, "bpf_csum_diff"),
            (SKB_CHANGE_PROTO, 31, "bpf_skb_change_proto"),
            (XDP_ADJUST_HEAD, 44, "bpf_xdp_adjust_head"),
            (GET_SOCKET_COOKIE, 46, "bpf_get_socket_cookie"),
            (SKB_ADJUST_ROOM, 50, "bpf_skb_adjust_room"),
            (REDIRECT_MAP, 51, "bpf_redirect_map"),
            (XDP_ADJUST_META, 54, "bpf_xdp_adjust_meta"),
            (FIB_LOOKUP, 69, "bpf_fib_lookup"),
            (SOCK_HASH_UPDATE, 70, "bpf_sock_hash_update"),
            (MSG_REDIRECT_HASH, 71, "bpf_msg_redirect_hash"),
            (SK_REDIRECT_HASH, 72, "bpf_sk_redirect_hash"),
            (KTIME_GET_BOOT_NS, 125, "bpf_ktime_get_boot_ns"),
            (RINGBUF_OUTPUT, 130, "bpf_ringbuf_output"),
            (RINGBUF_RESERVE, 131, "bpf_ringbuf_reserve"),
            (RINGBUF_SUBMIT, 132, "bpf_ringbuf_submit"),
            (RINGBUF_DISCARD, 133, "bpf_ringbuf_discard"),
            (REDIRECT_NEIGH, 152, "bpf_redirect_neigh"),
            (REDIRECT_PEER, 155, "bpf_redirect_peer"),
            (CHECK_MTU, 163, "bpf_check_mtu"),
            (CGRP_STORAGE_DELETE, 211, "bpf_cgrp_storage_delete"),
        ];
        for (konst, want, n) in cases {
            assert_eq!(konst, want, "{n}");
            assert_eq!(name(want), Some(n));
        }
    }
}
