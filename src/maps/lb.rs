//! Service load-balancing maps: the one layout shared by the tc load balancer (inside the
//! endpoint programs and standalone on any device) and the socket-level programs
//! (`connect4`/`6`, `sendmsg4`/`6`, `recvmsg4`/`6`, `getpeername4`/`6`).
//!
//! Contract:
//! - Addresses are 16 bytes, IPv4 mapped (`::ffff:a.b.c.d`) as in [`super::fwd::addr_key`];
//!   ports are stored in network order exactly as they sit in the packet or in
//!   `bpf_sock_addr.user_port` (low 16 bits); other integers are host order.
//! - A frontend (VIP, port, protocol) has a `svc_id` (1-based, dense). Its `lb_svc` value
//!   says how many selection slots it has: the active backends (random: one slot per unit
//!   of weight, in order) or the Maglev table size. The datapath picks
//!   `lb_slot[{svc_id, flow_hash % slots}]`, so the program is the same for both
//!   algorithms; only user space fills the slots differently. `slots == 0` means the
//!   service has no usable backend.
//! - Backends have a `backend_id` (1-based) per (address, port, protocol). Terminating
//!   backends keep their `lb_be` entry (connections pinned in `lb_ct` keep working) but
//!   appear in no slot. A removed backend's `lb_be` entry is deleted last.
//! - `lb_ct` pins a connection to its backend: the forward entry (direction 0) is keyed by
//!   the tuple as the client sent it (client → VIP); the reverse entry (direction 1) by the
//!   tuple of the backend's replies (backend → client), and gives the `svc_id` whose
//!   `lb_revnat` value restores the VIP as the reply's source.
//! - `lb_aff` remembers a client's backend per service for `sessionAffinity: ClientIP`.
//! - `lb_sock` lets `getpeername` and `recvmsg` show the VIP to a socket whose connect or
//!   sendmsg was translated.

use super::MapDef;
use sluice_verifier_sim::spec::MapKind;

/// `lb_svc` key: one frontend.
pub mod svc_key {
    pub const ADDR: usize = 0;
    /// Network order.
    pub const PORT: usize = 16;
    /// IP protocol number (6, 17, 132).
    pub const PROTO: usize = 18;
    /// Always 0 (reserved for node-port scopes).
    pub const SCOPE: usize = 19;
    pub const SIZE: usize = 20;
}

/// `lb_svc` value.
pub mod svc_value {
    pub const SVC_ID: usize = 0;
    /// Selection slots; 0 = no usable backend.
    pub const SLOTS: usize = 4;
    /// [`AFFINITY`] and friends.
    pub const FLAGS: usize = 8;
    /// ClientIP affinity timeout, seconds.
    pub const AFFINITY_TIMEOUT: usize = 12;
    pub const SIZE: usize = 16;
    /// `sessionAffinity: ClientIP`.
    pub const AFFINITY: u32 = 1;
}

/// `lb_slot` key: `{svc_id, slot}`; value: `u32 backend_id`.
pub mod slot_key {
    pub const SVC_ID: usize = 0;
    pub const SLOT: usize = 4;
    pub const SIZE: usize = 8;
}

/// `lb_be` key: `u32 backend_id`; value: where the backend is.
pub mod be_value {
    pub const ADDR: usize = 0;
    /// Network order.
    pub const PORT: usize = 16;
    /// [`ACTIVE`] or [`TERMINATING`].
    pub const STATE: usize = 18;
    pub const SIZE: usize = 20;
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
}

/// `lb_revnat` key: `u32 svc_id`; value: the frontend to restore on replies.
pub mod revnat_value {
    pub const ADDR: usize = 0;
    /// Network order.
    pub const PORT: usize = 16;
    pub const SIZE: usize = 20;
}

/// `lb_ct` key: a connection's tuple in one direction.
pub mod ct_key {
    pub const SADDR: usize = 0;
    pub const DADDR: usize = 16;
    /// Network order.
    pub const SPORT: usize = 32;
    /// Network order.
    pub const DPORT: usize = 34;
    pub const PROTO: usize = 36;
    /// 0: client → VIP (forward); 1: backend → client (reply).
    pub const DIR: usize = 37;
    pub const SIZE: usize = 40;
    pub const FORWARD: u8 = 0;
    pub const REPLY: u8 = 1;
}

/// `lb_ct` value.
pub mod ct_value {
    /// Forward entries: the pinned backend.
    pub const BACKEND_ID: usize = 0;
    /// Both directions: the frontend (reply entries use it for `lb_revnat`).
    pub const SVC_ID: usize = 4;
    /// `bpf_ktime_get_ns()` of the last packet (both directions update it).
    pub const LAST_SEEN: usize = 8;
    pub const SIZE: usize = 16;
}

/// `lb_aff` key: `{svc_id, client addr}`.
pub mod aff_key {
    pub const SVC_ID: usize = 0;
    pub const ADDR: usize = 4;
    pub const SIZE: usize = 20;
}

/// `lb_aff` value.
pub mod aff_value {
    pub const BACKEND_ID: usize = 0;
    /// `bpf_ktime_get_ns()` of the client's last new connection to the service.
    pub const LAST_USED: usize = 8;
    pub const SIZE: usize = 16;
}

/// `lb_sock` key: a translated socket and the backend it was sent to.
pub mod sock_key {
    /// `bpf_get_socket_cookie()`.
    pub const COOKIE: usize = 0;
    pub const ADDR: usize = 8;
    /// Network order.
    pub const PORT: usize = 24;
    pub const SIZE: usize = 32;
}

/// `lb_sock` value: the VIP and port the application asked for.
pub mod sock_value {
    pub const ADDR: usize = 0;
    /// Network order.
    pub const PORT: usize = 16;
    pub const SIZE: usize = 20;
}

/// Capacities.
pub const SVC_MAX: u32 = 65_536;
pub const SLOT_MAX: u32 = 1 << 20;
pub const BE_MAX: u32 = 262_144;
pub const CT_MAX: u32 = 262_144;
pub const AFF_MAX: u32 = 65_536;
pub const SOCK_MAX: u32 = 65_536;

/// The load-balancing maps.
pub fn map_defs() -> Vec<MapDef> {
    let def = |name, kind, key_size: usize, value_size: usize, max_entries, flags| MapDef {
        name,
        kind,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        flags,
    };
    vec![
        def("lb_svc", MapKind::Hash, svc_key::SIZE, svc_value::SIZE, SVC_MAX, super::F_NO_PREALLOC),
        def("lb_slot", MapKind::Hash, slot_key::SIZE, 4, SLOT_MAX, super::F_NO_PREALLOC),
        def("lb_be", MapKind::Hash, 4, be_value::SIZE, BE_MAX, super::F_NO_PREALLOC),
        def("lb_revnat", MapKind::Hash, 4, revnat_value::SIZE, SVC_MAX, super::F_NO_PREALLOC),
        def("lb_ct", MapKind::LruHash, ct_key::SIZE, ct_value::SIZE, CT_MAX, 0),
        def("lb_aff", MapKind::LruHash, aff_key::SIZE, aff_value::SIZE, AFF_MAX, 0),
        def("lb_sock", MapKind::LruHash, sock_key::SIZE, sock_value::SIZE, SOCK_MAX, 0),
    ]
}
