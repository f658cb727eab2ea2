//! Signatures of the kernel helpers in the subset (`struct bpf_func_proto`), which program
//! kinds may call them, and which map types they take (`check_map_func_compatibility`).

use crate::spec::{MapKind, ProgKind, SockAddrHook};
use sluice_asm::helpers as id;

/// What a helper argument must be (`enum bpf_arg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `ARG_PTR_TO_CTX`: the context pointer, unmodified.
    Ctx,
    /// `ARG_CONST_MAP_PTR`.
    Map,
    /// `ARG_PTR_TO_MAP_KEY`: readable, initialized memory of the map's key size.
    MapKey,
    /// `ARG_PTR_TO_MAP_VALUE`: readable, initialized memory of the map's value size.
    MapValue,
    /// `ARG_ANYTHING`; the subset requires a scalar (no pointer leaks into helpers).
    Scalar,
    /// `ARG_PTR_TO_MEM | MEM_RDONLY`: initialized memory, sized by the next argument.
    MemRead,
    /// As `MemRead`, or NULL when the size is 0 (`PTR_MAYBE_NULL`).
    MemReadOrNull,
    /// `ARG_PTR_TO_MEM`: initialized memory the helper also writes.
    MemReadWrite,
    /// `ARG_PTR_TO_UNINIT_MEM`: memory the helper fills, sized by the next argument.
    MemWrite,
    /// `ARG_CONST_SIZE`: a bounded size, at least 1.
    Size,
    /// `ARG_CONST_SIZE_OR_ZERO`.
    SizeOrZero,
}

/// What a helper leaves in `r0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Any integer.
    Integer,
    /// An integer in this range (`do_refine_retval_range`, or the helper's documented
    /// results where our return-range convention needs them).
    Range(i64, i64),
    /// `bpf_redirect`: `XDP_REDIRECT` or `XDP_ABORTED` in XDP, `TC_ACT_REDIRECT` or
    /// `TC_ACT_SHOT` in tc.
    Redirect,
    /// A map value pointer or NULL, with a fresh id for the null check.
    MapValueOrNull,
    /// Nothing: `r0` is uninitialized afterwards.
    Void,
}

/// One helper's signature.
#[derive(Debug, Clone, Copy)]
pub struct Helper {
    pub id: i32,
    pub name: &'static str,
    pub args: &'static [Arg],
    pub ret: Ret,
    /// Program kinds that may call it.
    pub kinds: &'static [ProgKind],
    /// Whether it may move packet data (`bpf_helper_changes_pkt_data`): every packet
    /// pointer is invalid afterwards.
    pub changes_pkt_data: bool,
    /// Whether memory arguments may point into the packet (`pkt_access`).
    pub pkt_access: bool,
}

const ALL: &[ProgKind] = &[
    ProgKind::Xdp,
    ProgKind::SchedCls,
    ProgKind::SockOps,
    ProgKind::SkMsg,
    SOCK_ADDR[0],
    SOCK_ADDR[1],
    SOCK_ADDR[2],
    SOCK_ADDR[3],
    SOCK_ADDR[4],
    SOCK_ADDR[5],
    SOCK_ADDR[6],
    SOCK_ADDR[7],
];
/// Every cgroup `sock_addr` hook (`sock_addr_func_proto`).
const SOCK_ADDR: &[ProgKind] = &{
    let h = SockAddrHook::ALL;
    [
        ProgKind::CgroupSockAddr(h[0]),
        ProgKind::CgroupSockAddr(h[1]),
        ProgKind::CgroupSockAddr(h[2]),
        ProgKind::CgroupSockAddr(h[3]),
        ProgKind::CgroupSockAddr(h[4]),
        ProgKind::CgroupSockAddr(h[5]),
        ProgKind::CgroupSockAddr(h[6]),
        ProgKind::CgroupSockAddr(h[7]),
    ]
};
const XDP_TC: &[ProgKind] = &[ProgKind::Xdp, ProgKind::SchedCls];
const TC: &[ProgKind] = &[ProgKind::SchedCls];
const XDP: &[ProgKind] = &[ProgKind::Xdp];

const fn helper(
    id: i32,
    name: &'static str,
    args: &'static [Arg],
    ret: Ret,
    kinds: &'static [ProgKind],
) -> Helper {
    Helper { id, name, args, ret, kinds, changes_pkt_data: false, pkt_access: false }
}

const fn pkt_access(mut h: Helper) -> Helper {
    h.pkt_access = true;
    h
}

const fn changes_pkt(mut h: Helper) -> Helper {
    h.changes_pkt_data = true;
    h
}

use Arg::*;

/// The helpers in the subset.
pub const HELPERS: &[Helper] = &[
    pkt_access(helper(id::MAP_LOOKUP_ELEM, "bpf_map_lookup_elem", &[Map, MapKey], Ret::MapValueOrNull, ALL)),
    pkt_access(helper(
        id::MAP_UPDATE_ELEM,
        "bpf_map_update_elem",
        &[Map, MapKey, MapValue, Scalar],
        Ret::Integer,
        ALL,
    )),
    pkt_access(helper(id::MAP_DELETE_ELEM, "bpf_map_delete_elem", &[Map, MapKey], Ret::Integer, ALL)),
    helper(id::KTIME_GET_NS, "bpf_ktime_get_ns", &[], Ret::Integer, ALL),
    helper(id::KTIME_GET_COARSE_NS, "bpf_ktime_get_coarse_ns", &[], Ret::Integer, ALL),
    helper(id::GET_PRANDOM_U32, "bpf_get_prandom_u32", &[], Ret::Integer, ALL),
    helper(id::GET_SMP_PROCESSOR_ID, "bpf_get_smp_processor_id", &[], Ret::Range(0, u32::MAX as i64), ALL),
    changes_pkt(helper(
        id::SKB_STORE_BYTES,
        "bpf_skb_store_bytes",
        &[Ctx, Scalar, MemRead, Size, Scalar],
        Ret::Integer,
        TC,
    )),
    changes_pkt(helper(
        id::L3_CSUM_REPLACE,
        "bpf_l3_csum_replace",
        &[Ctx, Scalar, Scalar, Scalar, Scalar],
        Ret::Integer,
        TC,
    )),
    changes_pkt(helper(
        id::L4_CSUM_REPLACE,
        "bpf_l4_csum_replace",
        &[Ctx, Scalar, Scalar, Scalar, Scalar],
        Ret::Integer,
        TC,
    )),
    helper(id::TAIL_CALL, "bpf_tail_call", &[Ctx, Map, Scalar], Ret::Void, ALL),
    helper(id::REDIRECT, "bpf_redirect", &[Scalar, Scalar], Ret::Redirect, XDP_TC),
    helper(id::SKB_LOAD_BYTES, "bpf_skb_load_bytes", &[Ctx, Scalar, MemWrite, Size], Ret::Integer, TC),
    pkt_access(helper(
        id::CSUM_DIFF,
        "bpf_csum_diff",
        &[MemReadOrNull, SizeOrZero, MemReadOrNull, SizeOrZero, Scalar],
        Ret::Integer,
        XDP_TC,
    )),
    changes_pkt(helper(id::XDP_ADJUST_HEAD, "bpf_xdp_adjust_head", &[Ctx, Scalar], Ret::Integer, XDP)),
    helper(id::REDIRECT_MAP, "bpf_redirect_map", &[Map, Scalar, Scalar], Ret::Range(0, 4), XDP),
    helper(id::FIB_LOOKUP, "bpf_fib_lookup", &[Ctx, MemReadWrite, Size, Scalar], Ret::Integer, XDP_TC),
    helper(id::SKB_SET_TUNNEL_KEY, "bpf_skb_set_tunnel_key", &[Ctx, MemRead, Size, Scalar], Ret::Integer, TC),
    helper(
        id::SKB_GET_TUNNEL_KEY,
        "bpf_skb_get_tunnel_key",
        &[Ctx, MemWrite, Size, Scalar],
        Ret::Integer,
        TC,
    ),
    helper(
        id::REDIRECT_NEIGH,
        "bpf_redirect_neigh",
        &[Scalar, MemReadOrNull, SizeOrZero, Scalar],
        Ret::Redirect,
        TC,
    ),
    helper(id::REDIRECT_PEER, "bpf_redirect_peer", &[Scalar, Scalar], Ret::Redirect, TC),
    // The socket helpers of the L7 redirect. The subset models no socket pointers: a lookup
    // finds none (r0 is 0, as the executor answers), so the code after its null check is
    // dead here and checked by the kernel's verifier only (the endpoint programs' kernel
    // tests load it); `sk_assign` and `sk_release` are then never reached.
    helper(
        id::SK_LOOKUP_TCP,
        "bpf_sk_lookup_tcp",
        &[Ctx, MemRead, Size, Scalar, Scalar],
        Ret::Range(0, 0),
        TC,
    ),
    helper(
        id::SKC_LOOKUP_TCP,
        "bpf_skc_lookup_tcp",
        &[Ctx, MemRead, Size, Scalar, Scalar],
        Ret::Range(0, 0),
        TC,
    ),
    helper(id::SK_ASSIGN, "bpf_sk_assign", &[Ctx, Scalar, Scalar], Ret::Integer, TC),
    helper(id::SK_RELEASE, "bpf_sk_release", &[Scalar], Ret::Integer, TC),
    helper(
        id::SOCK_HASH_UPDATE,
        "bpf_sock_hash_update",
        &[Ctx, Map, MapKey, Scalar],
        Ret::Integer,
        &[ProgKind::SockOps],
    ),
    helper(
        id::MSG_REDIRECT_HASH,
        "bpf_msg_redirect_hash",
        &[Ctx, Map, MapKey, Scalar],
        Ret::Range(0, 1),
        &[ProgKind::SkMsg],
    ),
    helper(id::GET_SOCKET_COOKIE, "bpf_get_socket_cookie", &[Ctx], Ret::Integer, SOCK_ADDR),
    helper(id::RINGBUF_OUTPUT, "bpf_ringbuf_output", &[Map, MemRead, SizeOrZero, Scalar], Ret::Integer, ALL),
];

/// The helper with this id, if it is in the subset.
pub fn lookup(helper_id: i32) -> Option<&'static Helper> {
    HELPERS.iter().find(|h| h.id == helper_id)
}

/// How many argument registers the call at this id reads (all five when unknown).
pub fn arg_count(helper_id: i32) -> usize {
    lookup(helper_id).map_or(5, |h| h.args.len())
}

/// Whether `helper_id` may take a map of `kind` (both directions of the kernel's check).
pub fn map_allowed(helper_id: i32, kind: MapKind) -> bool {
    let generic = [id::MAP_LOOKUP_ELEM, id::MAP_UPDATE_ELEM, id::MAP_DELETE_ELEM].contains(&helper_id);
    match kind {
        MapKind::RingBuf => helper_id == id::RINGBUF_OUTPUT,
        MapKind::ProgArray => helper_id == id::TAIL_CALL,
        // Lookups in a sockhash return sockets, which the subset does not model.
        MapKind::SockHash => {
            [id::SOCK_HASH_UPDATE, id::MSG_REDIRECT_HASH, id::MAP_DELETE_ELEM].contains(&helper_id)
        }
        MapKind::Hash
        | MapKind::Array
        | MapKind::PerCpuHash
        | MapKind::PerCpuArray
        | MapKind::LruHash
        | MapKind::LruPerCpuHash
        | MapKind::LpmTrie => generic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_memory_argument_is_followed_by_its_size() {
        for h in HELPERS {
            for (i, a) in h.args.iter().enumerate() {
                if matches!(a, MemRead | MemReadOrNull | MemReadWrite | MemWrite) {
                    assert!(
                        matches!(h.args.get(i + 1), Some(Size | SizeOrZero)),
                        "{} arg {} has no size",
                        h.name,
                        i + 1
                    );
                }
            }
            assert!(h.args.len() <= 5, "{}", h.name);
            assert_eq!(sluice_asm::helpers::name(h.id), Some(h.name), "{}", h.name);
        }
    }

    #[test]
    fn map_types_follow_the_kernel_pairing() {
        assert!(map_allowed(id::MAP_LOOKUP_ELEM, MapKind::PerCpuArray));
        assert!(!map_allowed(id::MAP_LOOKUP_ELEM, MapKind::RingBuf));
        assert!(!map_allowed(id::RINGBUF_OUTPUT, MapKind::Hash));
        assert!(map_allowed(id::TAIL_CALL, MapKind::ProgArray));
        assert!(!map_allowed(id::REDIRECT_MAP, MapKind::Hash));
    }
}
