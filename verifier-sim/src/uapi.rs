//! The kernel's program contexts and helper argument structures as `#[repr(C)]` Rust
//! structs: one definition from which every offset and size is derived with
//! `core::mem::offset_of!` and `size_of` (the simulator's context tables in [`crate::spec`],
//! and sluice's code generators). Layouts are Linux 6.18's UAPI (`include/uapi/linux/bpf.h`);
//! `tests/uapi_btf.rs` checks each struct, field by field, against the running kernel's BTF.
//!
//! The kernel's anonymous unions are written as their widest (or first) member, with the
//! other members' names given as aliases in [`Layout::fields`]. `__bpf_md_ptr` fields (an
//! 8-byte, 8-aligned pointer slot) are [`MdPtr`].

use std::mem::{offset_of, size_of};

/// An 8-byte, 8-aligned pointer slot of a context (`__bpf_md_ptr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct MdPtr(pub u64);

/// `struct __sk_buff`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct SkBuff {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    pub flow_keys: MdPtr,
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    pub sk: MdPtr,
    pub gso_size: u32,
    pub tstamp_type: u8,
    pub hwtstamp: u64,
}

/// `struct xdp_md`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// `struct bpf_sock_addr`. Addresses and the port are in network byte order.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BpfSockAddr {
    pub user_family: u32,
    pub user_ip4: u32,
    pub user_ip6: [u32; 4],
    pub user_port: u32,
    pub family: u32,
    pub r#type: u32,
    pub protocol: u32,
    pub msg_src_ip4: u32,
    pub msg_src_ip6: [u32; 4],
    pub sk: MdPtr,
}

/// `struct bpf_sock` (what `bpf_sk_lookup_tcp` and friends return), up to `state`.
/// Addresses and `dst_port` are in network byte order, `src_port` in host order.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BpfSock {
    pub bound_dev_if: u32,
    pub family: u32,
    pub r#type: u32,
    pub protocol: u32,
    pub mark: u32,
    pub priority: u32,
    pub src_ip4: u32,
    pub src_ip6: [u32; 4],
    pub src_port: u32,
    pub dst_port: u16,
    pub _pad: u16,
    pub dst_ip4: u32,
    pub dst_ip6: [u32; 4],
    pub state: u32,
}

/// `struct bpf_sock_ops`. `args` is the union of `args[4]`, `reply` and `replylong[4]`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BpfSockOps {
    pub op: u32,
    pub args: [u32; 4],
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub is_fullsock: u32,
    pub snd_cwnd: u32,
    pub srtt_us: u32,
    pub bpf_sock_ops_cb_flags: u32,
    pub state: u32,
    pub rtt_min: u32,
    pub snd_ssthresh: u32,
    pub rcv_nxt: u32,
    pub snd_nxt: u32,
    pub snd_una: u32,
    pub mss_cache: u32,
    pub ecn_flags: u32,
    pub rate_delivered: u32,
    pub rate_interval_us: u32,
    pub packets_out: u32,
    pub retrans_out: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub data_segs_in: u32,
    pub segs_out: u32,
    pub data_segs_out: u32,
    pub lost_out: u32,
    pub sacked_out: u32,
    pub sk_txhash: u32,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub sk: MdPtr,
    pub skb_data: MdPtr,
    pub skb_data_end: MdPtr,
    pub skb_len: u32,
    pub skb_tcp_flags: u32,
    pub skb_hwtstamp: u64,
}

/// `struct sk_msg_md`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct SkMsgMd {
    pub data: MdPtr,
    pub data_end: MdPtr,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub size: u32,
    pub sk: MdPtr,
}

/// `struct bpf_fib_lookup`: the argument and answer of `bpf_fib_lookup`. Unions are
/// written as their widest member: `tot_len` (alias `mtu_result`), `flowinfo` (aliases
/// `tos`, `rt_metric`), `ipv6_src`/`ipv6_dst` (aliases `ipv4_src`/`ipv4_dst`), `tbid`
/// (alias: `h_vlan_proto`, `h_vlan_TCI` at +2), and `smac`/`dmac` (alias `mark`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BpfFibLookup {
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tot_len: u16,
    pub ifindex: u32,
    pub flowinfo: u32,
    pub ipv6_src: [u32; 4],
    pub ipv6_dst: [u32; 4],
    pub tbid: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// `struct bpf_tunnel_key`: the argument of `bpf_skb_{set,get}_tunnel_key`. Unions as their
/// widest member: `remote_ipv6` (alias `remote_ipv4`), `tunnel_ext` (alias
/// `tunnel_flags`), `local_ipv6` (alias `local_ipv4`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BpfTunnelKey {
    pub tunnel_id: u32,
    pub remote_ipv6: [u32; 4],
    pub tunnel_tos: u8,
    pub tunnel_ttl: u8,
    pub tunnel_ext: u16,
    pub tunnel_label: u32,
    pub local_ipv6: [u32; 4],
}

/// One field of a layout as the kernel's BTF names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub off: usize,
    pub size: usize,
}

/// A kernel structure defined here.
pub trait Layout: Sized {
    /// The structure's name in the kernel's BTF.
    const BTF_NAME: &'static str;
    /// Every field the kernel declares (union members included), in declaration order.
    fn fields() -> Vec<Field>;
    /// `size_of::<Self>()`.
    fn size() -> usize {
        size_of::<Self>()
    }
}

/// The size of the field `f` selects, without a value of `T`.
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! fields {
    ($t:ty; $($name:ident),* $(,)?) => {
        vec![$(Field {
            name: stringify!($name).trim_start_matches("r#"),
            off: offset_of!($t, $name),
            size: field_size(|s: &$t| &s.$name),
        }),*]
    };
}

/// An alias of a union member: another name at `at`'s offset, `size` bytes.
fn alias(name: &'static str, off: usize, size: usize) -> Field {
    Field { name, off, size }
}

impl Layout for SkBuff {
    const BTF_NAME: &'static str = "__sk_buff";
    fn fields() -> Vec<Field> {
        fields!(SkBuff; len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci,
            vlan_proto, priority, ingress_ifindex, ifindex, tc_index, cb, hash, tc_classid, data,
            data_end, napi_id, family, remote_ip4, local_ip4, remote_ip6, local_ip6, remote_port,
            local_port, data_meta, flow_keys, tstamp, wire_len, gso_segs, sk, gso_size,
            tstamp_type, hwtstamp)
    }
}

impl Layout for XdpMd {
    const BTF_NAME: &'static str = "xdp_md";
    fn fields() -> Vec<Field> {
        fields!(XdpMd; data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex)
    }
}

impl Layout for BpfSockAddr {
    const BTF_NAME: &'static str = "bpf_sock_addr";
    fn fields() -> Vec<Field> {
        fields!(BpfSockAddr; user_family, user_ip4, user_ip6, user_port, family, r#type, protocol,
            msg_src_ip4, msg_src_ip6, sk)
    }
}

impl Layout for BpfSockOps {
    const BTF_NAME: &'static str = "bpf_sock_ops";
    fn fields() -> Vec<Field> {
        let args = offset_of!(BpfSockOps, args);
        let mut f = fields!(BpfSockOps; op, args);
        f.extend([alias("reply", args, 4), alias("replylong", args, 16)]);
        f.extend(fields!(BpfSockOps; family, remote_ip4, local_ip4, remote_ip6, local_ip6,
            remote_port, local_port, is_fullsock, snd_cwnd, srtt_us, bpf_sock_ops_cb_flags, state,
            rtt_min, snd_ssthresh, rcv_nxt, snd_nxt, snd_una, mss_cache, ecn_flags, rate_delivered,
            rate_interval_us, packets_out, retrans_out, total_retrans, segs_in, data_segs_in,
            segs_out, data_segs_out, lost_out, sacked_out, sk_txhash, bytes_received, bytes_acked,
            sk, skb_data, skb_data_end, skb_len, skb_tcp_flags, skb_hwtstamp));
        f
    }
}

impl Layout for SkMsgMd {
    const BTF_NAME: &'static str = "sk_msg_md";
    fn fields() -> Vec<Field> {
        fields!(SkMsgMd; data, data_end, family, remote_ip4, local_ip4, remote_ip6, local_ip6,
            remote_port, local_port, size, sk)
    }
}

impl Layout for BpfFibLookup {
    const BTF_NAME: &'static str = "bpf_fib_lookup";
    fn fields() -> Vec<Field> {
        let mut f = fields!(BpfFibLookup; family, l4_protocol, sport, dport, tot_len, ifindex, flowinfo,
            ipv6_src, ipv6_dst, tbid, smac, dmac);
        let tbid = offset_of!(BpfFibLookup, tbid);
        f.extend([
            alias("mtu_result", offset_of!(BpfFibLookup, tot_len), 2),
            alias("tos", offset_of!(BpfFibLookup, flowinfo), 1),
            alias("rt_metric", offset_of!(BpfFibLookup, flowinfo), 4),
            alias("ipv4_src", offset_of!(BpfFibLookup, ipv6_src), 4),
            alias("ipv4_dst", offset_of!(BpfFibLookup, ipv6_dst), 4),
            alias("h_vlan_proto", tbid, 2),
            alias("h_vlan_TCI", tbid + 2, 2),
            alias("mark", offset_of!(BpfFibLookup, smac), 4),
        ]);
        f
    }
}

impl Layout for BpfTunnelKey {
    const BTF_NAME: &'static str = "bpf_tunnel_key";
    fn fields() -> Vec<Field> {
        let mut f = fields!(BpfTunnelKey; tunnel_id);
        f.push(alias("remote_ipv4", offset_of!(BpfTunnelKey, remote_ipv6), 4));
        f.extend(fields!(BpfTunnelKey; remote_ipv6, tunnel_tos, tunnel_ttl, tunnel_ext));
        f.push(alias("tunnel_flags", offset_of!(BpfTunnelKey, tunnel_ext), 2));
        f.extend(fields!(BpfTunnelKey; tunnel_label));
        f.push(alias("local_ipv4", offset_of!(BpfTunnelKey, local_ipv6), 4));
        f.extend(fields!(BpfTunnelKey; local_ipv6));
        f
    }
}

/// A context field's offset as the `i16` a load or store carries.
#[macro_export]
macro_rules! ctx_off {
    ($t:ty, $($field:tt)+) => {
        ::core::mem::offset_of!($t, $($field)+) as i16
    };
}

// ---------------------------------------------------------------------------------------
// Kernel constants, each defined once (as the `i32` an instruction immediate carries;
// the simulator widens them).
// ---------------------------------------------------------------------------------------

/// `enum xdp_action`.
pub const XDP_ABORTED: i32 = 0;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

/// tc verdicts (`TC_ACT_*`).
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// IP protocol numbers (`IPPROTO_*`).
pub const IPPROTO_ICMP: i32 = 1;
pub const IPPROTO_TCP: i32 = 6;
pub const IPPROTO_UDP: i32 = 17;
pub const IPPROTO_ICMPV6: i32 = 58;
pub const IPPROTO_SCTP: i32 = 132;
pub const IPPROTO_ESP: i32 = 50;

/// `bpf_map_update_elem` flags: create or replace, create only, replace only.
pub const BPF_ANY: i32 = 0;
pub const BPF_NOEXIST: i32 = 1;
pub const BPF_EXIST: i32 = 2;

/// `map_flags` of `BPF_MAP_CREATE`: allocate on demand (required for LPM tries); programs
/// may only read, only write the map.
pub const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;
pub const BPF_F_WRONLY_PROG: u32 = 1 << 8;

/// `bpf_skb_get/set_tunnel_key` flags.
pub const BPF_F_TUNINFO_IPV6: i32 = 1;
pub const BPF_F_TUNINFO_FLAGS: i32 = 1 << 4;

/// `bpf_redirect_map` flags: the verdict on a miss is `flags & BPF_F_ACTION_MASK`.
pub const BPF_F_ACTION_MASK: i32 = 3;
pub const BPF_F_BROADCAST: i32 = 1 << 3;
pub const BPF_F_EXCLUDE_INGRESS: i32 = 1 << 4;

/// `bpf_ringbuf_output` flags.
pub const BPF_RB_NO_WAKEUP: i32 = 1;
pub const BPF_RB_FORCE_WAKEUP: i32 = 2;

/// TCP header flags (the byte at offset 13).
pub const TCP_FIN: i32 = 0x01;
pub const TCP_SYN: i32 = 0x02;
pub const TCP_RST: i32 = 0x04;
pub const TCP_ACK: i32 = 0x10;

/// `bpf_sock.state` values (`BPF_TCP_*`, the kernel's `TCP_*` states).
pub const BPF_TCP_ESTABLISHED: i32 = 1;
pub const BPF_TCP_TIME_WAIT: i32 = 6;
pub const BPF_TCP_LISTEN: i32 = 10;

/// `TCX_NEXT`: go on to the next program of the tcx chain (the stack when there is none).
pub const TCX_NEXT: i32 = -1;
/// `BPF_F_CURRENT_NETNS`: the socket lookup helpers' "this namespace" (-1 as a u64).
pub const BPF_F_CURRENT_NETNS: i32 = -1;

/// Address families.
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;

/// Socket types.
pub const SOCK_STREAM: i32 = 1;
pub const SOCK_DGRAM: i32 = 2;

/// `enum` of `bpf_sock_ops.op`: the callbacks sluice's sock_ops program acts on.
pub const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: i32 = 4;
pub const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: i32 = 5;

/// `enum sk_action`: sk_msg verdicts.
pub const SK_DROP: i32 = 0;
pub const SK_PASS: i32 = 1;

/// `bpf_redirect`: to the ingress path.
pub const BPF_F_INGRESS: i32 = 1;
/// `bpf_skb_store_bytes` flags.
pub const BPF_F_RECOMPUTE_CSUM: i32 = 1 << 0;
pub const BPF_F_INVALIDATE_HASH: i32 = 1 << 1;
/// `bpf_l3/l4_csum_replace` flags: the field size (0 = `to` is a `csum_diff` result).
pub const BPF_F_HDR_FIELD_MASK: i32 = 0xf;
pub const BPF_F_PSEUDO_HDR: i32 = 1 << 4;
pub const BPF_F_MARK_MANGLED_0: i32 = 1 << 5;
pub const BPF_F_MARK_ENFORCE: i32 = 1 << 6;
/// The checksum is of IPv6 (Linux 6.16+): with `BPF_F_PSEUDO_HDR` and a diff, leave a
/// `CHECKSUM_COMPLETE` `skb->csum` alone.
pub const BPF_F_IPV6: i32 = 1 << 7;

/// `bpf_fib_lookup` answers (`BPF_FIB_LKUP_RET_*`).
pub const BPF_FIB_LKUP_RET_SUCCESS: i32 = 0;
pub const BPF_FIB_LKUP_RET_NOT_FWDED: i32 = 4;
/// Routed, but the next hop's MAC is not known yet.
pub const BPF_FIB_LKUP_RET_NO_NEIGH: i32 = 7;
