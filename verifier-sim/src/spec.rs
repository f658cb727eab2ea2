//! What the simulator needs to know about a program's surroundings, shared by the verifier
//! and the executor: program kinds (and so their context layout and return range), map
//! specifications, and context field tables.
//!
//! Map specs carry sizes only; the meaning of keys and values belongs to the caller (the
//! `sluice` crate's `maps` module, the one definition of every layout).

use std::fmt;

/// The program types sluice emits, with the hook they run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgKind {
    /// `BPF_PROG_TYPE_XDP`; context `struct xdp_md`.
    Xdp,
    /// `BPF_PROG_TYPE_SCHED_CLS` (tc, direct action); context `struct __sk_buff`.
    SchedCls,
    /// `BPF_PROG_TYPE_SOCK_OPS`; context `struct bpf_sock_ops`.
    SockOps,
    /// `BPF_PROG_TYPE_SK_MSG`; context `struct sk_msg_md`.
    SkMsg,
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` at one hook (its `expected_attach_type`, which
    /// decides the writable fields and the return range); context `struct bpf_sock_addr`.
    CgroupSockAddr(SockAddrHook),
}

/// The cgroup `sock_addr` hooks sluice attaches to (`BPF_CGROUP_INET4_CONNECT` and
/// friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockAddrHook {
    Connect4,
    Connect6,
    UdpSendmsg4,
    UdpSendmsg6,
    UdpRecvmsg4,
    UdpRecvmsg6,
    Getpeername4,
    Getpeername6,
}

impl SockAddrHook {
    /// Every hook, in attach-type order.
    pub const ALL: [SockAddrHook; 8] = [
        SockAddrHook::Connect4,
        SockAddrHook::Connect6,
        SockAddrHook::UdpSendmsg4,
        SockAddrHook::UdpSendmsg6,
        SockAddrHook::UdpRecvmsg4,
        SockAddrHook::UdpRecvmsg6,
        SockAddrHook::Getpeername4,
        SockAddrHook::Getpeername6,
    ];

    /// Whether the hook sees `AF_INET6` sockets (`user_ip6`), else `AF_INET` (`user_ip4`).
    pub fn is_v6(self) -> bool {
        matches!(
            self,
            SockAddrHook::Connect6
                | SockAddrHook::UdpSendmsg6
                | SockAddrHook::UdpRecvmsg6
                | SockAddrHook::Getpeername6
        )
    }

    /// Whether the hook rewrites where the socket sends (connect, sendmsg), else what the
    /// application is told its peer is (recvmsg, getpeername).
    pub fn is_forward(self) -> bool {
        matches!(
            self,
            SockAddrHook::Connect4
                | SockAddrHook::Connect6
                | SockAddrHook::UdpSendmsg4
                | SockAddrHook::UdpSendmsg6
        )
    }

    /// The libbpf section suffix: `connect4`, `sendmsg6`, `recvmsg4`, `getpeername6`, ...
    pub fn name(self) -> &'static str {
        match self {
            SockAddrHook::Connect4 => "connect4",
            SockAddrHook::Connect6 => "connect6",
            SockAddrHook::UdpSendmsg4 => "sendmsg4",
            SockAddrHook::UdpSendmsg6 => "sendmsg6",
            SockAddrHook::UdpRecvmsg4 => "recvmsg4",
            SockAddrHook::UdpRecvmsg6 => "recvmsg6",
            SockAddrHook::Getpeername4 => "getpeername4",
            SockAddrHook::Getpeername6 => "getpeername6",
        }
    }

    /// The context fields at this hook, with the writability `sock_addr_is_valid_access`
    /// gives them.
    pub fn ctx_fields(self) -> &'static [CtxField] {
        match self {
            SockAddrHook::Connect4 | SockAddrHook::UdpRecvmsg4 | SockAddrHook::Getpeername4 => {
                SOCK_ADDR_USER4
            }
            SockAddrHook::Connect6 | SockAddrHook::UdpRecvmsg6 | SockAddrHook::Getpeername6 => {
                SOCK_ADDR_USER6
            }
            SockAddrHook::UdpSendmsg4 => SOCK_ADDR_SENDMSG4,
            SockAddrHook::UdpSendmsg6 => SOCK_ADDR_SENDMSG6,
        }
    }
}

impl ProgKind {
    /// The return values a program of this kind may produce, inclusive. Conservative: the
    /// kernel accepts any value for XDP and tc, but a value outside these ranges is a bug
    /// in the programs we emit.
    pub fn return_range(self) -> (i64, i64) {
        match self {
            // XDP_ABORTED..=XDP_REDIRECT
            ProgKind::Xdp => (0, 4),
            // TC_ACT_UNSPEC (-1)..=TC_ACT_REDIRECT (7)
            ProgKind::SchedCls => (-1, 7),
            ProgKind::SockOps => (0, 1),
            // SK_DROP, SK_PASS
            ProgKind::SkMsg => (0, 1),
            // `check_return_code`: 0 (EPERM) or 1 (go on); recvmsg and getpeername may
            // only rewrite the address, never fail the call.
            ProgKind::CgroupSockAddr(hook) if hook.is_forward() => (0, 1),
            ProgKind::CgroupSockAddr(_) => (1, 1),
        }
    }

    /// Size in bytes of the context structure.
    pub fn ctx_size(self) -> usize {
        match self {
            ProgKind::Xdp => std::mem::size_of::<XdpMd>(),
            ProgKind::SchedCls => std::mem::size_of::<SkBuff>(),
            ProgKind::SockOps => std::mem::size_of::<BpfSockOps>(),
            // Up to `sk`: socket pointers are not modelled.
            ProgKind::SkMsg => std::mem::offset_of!(SkMsgMd, sk),
            ProgKind::CgroupSockAddr(_) => sock_addr::SIZE as usize,
        }
    }

    /// The context field at byte offset `off`, if there is one starting there.
    pub fn ctx_field(self, off: u32) -> Option<&'static CtxField> {
        self.ctx_fields().iter().find(|f| f.off == off)
    }

    /// The context fields programs of this kind may access, by offset.
    pub fn ctx_fields(self) -> &'static [CtxField] {
        match self {
            ProgKind::Xdp => XDP_MD,
            ProgKind::SchedCls => SK_BUFF,
            ProgKind::SockOps => SOCK_OPS,
            ProgKind::SkMsg => SK_MSG_MD,
            ProgKind::CgroupSockAddr(hook) => hook.ctx_fields(),
        }
    }
}

impl fmt::Display for ProgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgKind::Xdp => "xdp",
            ProgKind::SchedCls => "sched_cls",
            ProgKind::SockOps => "sock_ops",
            ProgKind::SkMsg => "sk_msg",
            ProgKind::CgroupSockAddr(_) => "cgroup_sock_addr",
        })
    }
}

/// What reading a context field yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtxValue {
    /// A plain number.
    Scalar,
    /// Pointer to the first packet byte.
    PacketStart,
    /// Pointer one past the last packet byte.
    PacketEnd,
    /// Pointer to the packet metadata area (equals `PacketStart` when there is none).
    PacketMeta,
}

/// One context field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtxField {
    pub name: &'static str,
    pub off: u32,
    /// Width in bytes.
    pub size: u8,
    pub value: CtxValue,
    /// Whether programs may write it.
    pub writable: bool,
}

const fn field(name: &'static str, off: u32, size: u8, value: CtxValue, writable: bool) -> CtxField {
    CtxField { name, off, size, value, writable }
}

use crate::uapi::{BpfSockOps, SkBuff, SkMsgMd, XdpMd};
use CtxValue::{PacketEnd, PacketMeta, PacketStart, Scalar};

/// A field's offset in a [`crate::uapi`] structure, as the `u32` the tables carry.
macro_rules! off {
    ($t:ty, $($f:tt)+) => {
        ::core::mem::offset_of!($t, $($f)+) as u32
    };
}

/// `struct xdp_md`.
pub const XDP_MD: &[CtxField] = &[
    field("data", off!(XdpMd, data), 4, PacketStart, false),
    field("data_end", off!(XdpMd, data_end), 4, PacketEnd, false),
    field("data_meta", off!(XdpMd, data_meta), 4, PacketMeta, false),
    field("ingress_ifindex", off!(XdpMd, ingress_ifindex), 4, Scalar, false),
    field("rx_queue_index", off!(XdpMd, rx_queue_index), 4, Scalar, false),
    field("egress_ifindex", off!(XdpMd, egress_ifindex), 4, Scalar, false),
];

/// `struct __sk_buff` (the fields tc programs use).
pub const SK_BUFF: &[CtxField] = &[
    field("len", off!(SkBuff, len), 4, Scalar, false),
    field("pkt_type", off!(SkBuff, pkt_type), 4, Scalar, false),
    field("mark", off!(SkBuff, mark), 4, Scalar, true),
    field("queue_mapping", off!(SkBuff, queue_mapping), 4, Scalar, true),
    field("protocol", off!(SkBuff, protocol), 4, Scalar, false),
    field("vlan_present", off!(SkBuff, vlan_present), 4, Scalar, false),
    field("vlan_tci", off!(SkBuff, vlan_tci), 4, Scalar, false),
    field("vlan_proto", off!(SkBuff, vlan_proto), 4, Scalar, false),
    field("priority", off!(SkBuff, priority), 4, Scalar, true),
    field("ingress_ifindex", off!(SkBuff, ingress_ifindex), 4, Scalar, false),
    field("ifindex", off!(SkBuff, ifindex), 4, Scalar, false),
    field("tc_index", off!(SkBuff, tc_index), 4, Scalar, true),
    field("cb0", off!(SkBuff, cb), 4, Scalar, true),
    field("cb1", off!(SkBuff, cb) + 4, 4, Scalar, true),
    field("cb2", off!(SkBuff, cb) + 8, 4, Scalar, true),
    field("cb3", off!(SkBuff, cb) + 12, 4, Scalar, true),
    field("cb4", off!(SkBuff, cb) + 16, 4, Scalar, true),
    field("hash", off!(SkBuff, hash), 4, Scalar, false),
    field("tc_classid", off!(SkBuff, tc_classid), 4, Scalar, true),
    field("data", off!(SkBuff, data), 4, PacketStart, false),
    field("data_end", off!(SkBuff, data_end), 4, PacketEnd, false),
    field("napi_id", off!(SkBuff, napi_id), 4, Scalar, false),
    field("data_meta", off!(SkBuff, data_meta), 4, PacketMeta, false),
    field("tstamp", off!(SkBuff, tstamp), 8, Scalar, true),
    field("wire_len", off!(SkBuff, wire_len), 4, Scalar, false),
];

/// `struct bpf_sock_ops` (the fields sluice's sock_ops programs may use; `sk` is left out
/// because socket pointers are not modelled). `skb_data`/`skb_data_end` are 8-byte
/// `__bpf_md_ptr` fields.
pub const SOCK_OPS: &[CtxField] = &[
    field("op", off!(BpfSockOps, op), 4, Scalar, false),
    field("reply", off!(BpfSockOps, args), 4, Scalar, true),
    field("replylong1", off!(BpfSockOps, args) + 4, 4, Scalar, true),
    field("replylong2", off!(BpfSockOps, args) + 8, 4, Scalar, true),
    field("replylong3", off!(BpfSockOps, args) + 12, 4, Scalar, true),
    field("family", off!(BpfSockOps, family), 4, Scalar, false),
    field("remote_ip4", off!(BpfSockOps, remote_ip4), 4, Scalar, false),
    field("local_ip4", off!(BpfSockOps, local_ip4), 4, Scalar, false),
    field("remote_ip6_0", off!(BpfSockOps, remote_ip6), 4, Scalar, false),
    field("remote_ip6_1", off!(BpfSockOps, remote_ip6) + 4, 4, Scalar, false),
    field("remote_ip6_2", off!(BpfSockOps, remote_ip6) + 8, 4, Scalar, false),
    field("remote_ip6_3", off!(BpfSockOps, remote_ip6) + 12, 4, Scalar, false),
    field("local_ip6_0", off!(BpfSockOps, local_ip6), 4, Scalar, false),
    field("local_ip6_1", off!(BpfSockOps, local_ip6) + 4, 4, Scalar, false),
    field("local_ip6_2", off!(BpfSockOps, local_ip6) + 8, 4, Scalar, false),
    field("local_ip6_3", off!(BpfSockOps, local_ip6) + 12, 4, Scalar, false),
    field("remote_port", off!(BpfSockOps, remote_port), 4, Scalar, false),
    field("local_port", off!(BpfSockOps, local_port), 4, Scalar, false),
    field("is_fullsock", off!(BpfSockOps, is_fullsock), 4, Scalar, false),
    field("snd_cwnd", off!(BpfSockOps, snd_cwnd), 4, Scalar, false),
    field("srtt_us", off!(BpfSockOps, srtt_us), 4, Scalar, false),
    field("bpf_sock_ops_cb_flags", off!(BpfSockOps, bpf_sock_ops_cb_flags), 4, Scalar, false),
    field("state", off!(BpfSockOps, state), 4, Scalar, false),
    field("sk_txhash", off!(BpfSockOps, sk_txhash), 4, Scalar, true),
    field("bytes_received", off!(BpfSockOps, bytes_received), 8, Scalar, false),
    field("bytes_acked", off!(BpfSockOps, bytes_acked), 8, Scalar, false),
    field("skb_data", off!(BpfSockOps, skb_data), 8, PacketStart, false),
    field("skb_data_end", off!(BpfSockOps, skb_data_end), 8, PacketEnd, false),
    field("skb_len", off!(BpfSockOps, skb_len), 4, Scalar, false),
    field("skb_tcp_flags", off!(BpfSockOps, skb_tcp_flags), 4, Scalar, false),
];

/// `struct sk_msg_md` up to `size` (`sk` is left out: socket pointers are not modelled).
/// `data`/`data_end` are 8-byte `__bpf_md_ptr` fields.
pub const SK_MSG_MD: &[CtxField] = &[
    field("data", off!(SkMsgMd, data), 8, PacketStart, false),
    field("data_end", off!(SkMsgMd, data_end), 8, PacketEnd, false),
    field("family", off!(SkMsgMd, family), 4, Scalar, false),
    field("remote_ip4", off!(SkMsgMd, remote_ip4), 4, Scalar, false),
    field("local_ip4", off!(SkMsgMd, local_ip4), 4, Scalar, false),
    field("remote_ip6_0", off!(SkMsgMd, remote_ip6), 4, Scalar, false),
    field("remote_ip6_1", off!(SkMsgMd, remote_ip6) + 4, 4, Scalar, false),
    field("remote_ip6_2", off!(SkMsgMd, remote_ip6) + 8, 4, Scalar, false),
    field("remote_ip6_3", off!(SkMsgMd, remote_ip6) + 12, 4, Scalar, false),
    field("local_ip6_0", off!(SkMsgMd, local_ip6), 4, Scalar, false),
    field("local_ip6_1", off!(SkMsgMd, local_ip6) + 4, 4, Scalar, false),
    field("local_ip6_2", off!(SkMsgMd, local_ip6) + 8, 4, Scalar, false),
    field("local_ip6_3", off!(SkMsgMd, local_ip6) + 12, 4, Scalar, false),
    field("remote_port", off!(SkMsgMd, remote_port), 4, Scalar, false),
    field("local_port", off!(SkMsgMd, local_port), 4, Scalar, false),
    field("size", off!(SkMsgMd, size), 4, Scalar, false),
];

/// `struct bpf_sock_addr`: byte offsets. Addresses and the port are in network byte order
/// (a 4-byte load yields the wire bytes read little-endian; the port sits in the low 16
/// bits of `user_port`); `family`, `type`, `protocol` are plain integers.
pub mod sock_addr {
    use crate::uapi::BpfSockAddr;
    pub const USER_FAMILY: u32 = off!(BpfSockAddr, user_family);
    pub const USER_IP4: u32 = off!(BpfSockAddr, user_ip4);
    /// Four `u32` words.
    pub const USER_IP6: u32 = off!(BpfSockAddr, user_ip6);
    pub const USER_PORT: u32 = off!(BpfSockAddr, user_port);
    pub const FAMILY: u32 = off!(BpfSockAddr, family);
    pub const TYPE: u32 = off!(BpfSockAddr, r#type);
    pub const PROTOCOL: u32 = off!(BpfSockAddr, protocol);
    pub const MSG_SRC_IP4: u32 = off!(BpfSockAddr, msg_src_ip4);
    /// Four `u32` words.
    pub const MSG_SRC_IP6: u32 = off!(BpfSockAddr, msg_src_ip6);
    /// `__bpf_md_ptr(struct bpf_sock *, sk)`: not modelled.
    pub const SK: u32 = off!(BpfSockAddr, sk);
    pub const SIZE: u32 = std::mem::size_of::<BpfSockAddr>() as u32;
}

/// `struct bpf_sock_addr` with these fields writable (`sk` is left out: socket pointers
/// are not modelled). Loads and stores are whole 4-byte fields in the subset (the kernel
/// also allows narrow loads and 8-byte stores into `user_ip6`).
const fn sock_addr_table(ip4: bool, ip6: bool, src4: bool, src6: bool) -> [CtxField; 15] {
    use sock_addr as o;
    [
        field("user_family", o::USER_FAMILY, 4, Scalar, false),
        field("user_ip4", o::USER_IP4, 4, Scalar, ip4),
        field("user_ip6_0", o::USER_IP6, 4, Scalar, ip6),
        field("user_ip6_1", o::USER_IP6 + 4, 4, Scalar, ip6),
        field("user_ip6_2", o::USER_IP6 + 8, 4, Scalar, ip6),
        field("user_ip6_3", o::USER_IP6 + 12, 4, Scalar, ip6),
        field("user_port", o::USER_PORT, 4, Scalar, ip4 || ip6),
        field("family", o::FAMILY, 4, Scalar, false),
        field("type", o::TYPE, 4, Scalar, false),
        field("protocol", o::PROTOCOL, 4, Scalar, false),
        field("msg_src_ip4", o::MSG_SRC_IP4, 4, Scalar, src4),
        field("msg_src_ip6_0", o::MSG_SRC_IP6, 4, Scalar, src6),
        field("msg_src_ip6_1", o::MSG_SRC_IP6 + 4, 4, Scalar, src6),
        field("msg_src_ip6_2", o::MSG_SRC_IP6 + 8, 4, Scalar, src6),
        field("msg_src_ip6_3", o::MSG_SRC_IP6 + 12, 4, Scalar, src6),
    ]
}

/// `bpf_sock_addr` at the IPv4 connect, recvmsg and getpeername hooks.
pub const SOCK_ADDR_USER4: &[CtxField] = &sock_addr_table(true, false, false, false);
/// `bpf_sock_addr` at the IPv6 connect, recvmsg and getpeername hooks.
pub const SOCK_ADDR_USER6: &[CtxField] = &sock_addr_table(false, true, false, false);
/// `bpf_sock_addr` at `UDP4_SENDMSG` (the source address is writable too).
pub const SOCK_ADDR_SENDMSG4: &[CtxField] = &sock_addr_table(true, false, true, false);
/// `bpf_sock_addr` at `UDP6_SENDMSG`.
pub const SOCK_ADDR_SENDMSG6: &[CtxField] = &sock_addr_table(false, true, false, true);

/// Map types the simulator emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    Hash,
    Array,
    PerCpuHash,
    PerCpuArray,
    LruHash,
    LruPerCpuHash,
    /// Key: `u32 prefixlen` (host order) then the address bytes (network order).
    LpmTrie,
    /// `max_entries` is the buffer size in bytes; key and value sizes are 0.
    RingBuf,
    ProgArray,
    SockHash,
}

impl MapKind {
    /// Whether values are per CPU.
    pub fn per_cpu(self) -> bool {
        matches!(self, MapKind::PerCpuHash | MapKind::PerCpuArray | MapKind::LruPerCpuHash)
    }
}

/// A map as a program sees it: a name it is referred to by, its type and sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapSpec {
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}
