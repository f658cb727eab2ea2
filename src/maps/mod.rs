//! Every map's key and value layout, defined once (DESIGN invariant 1).
//!
//! Codegen takes field offsets from here, the simulator gets its [`MapSpec`]s from here,
//! and the loader creates kernel maps from the same [`MapDef`]. A map is referred to in
//! programs by its [`MapDef::name`]; the kernel sees the name truncated to 15 bytes.

/// One map key or value layout: a `#[repr(C)]` struct whose offsets and size the compiler
/// computes, and a module of the same fields' offsets (`offset_of!`) and `SIZE`
/// (`size_of`) for the code generators, plus any constants that belong with the layout.
/// Explicit `_pad` fields make every byte of the key or value named, so what the kernel
/// hashes is what we wrote.
macro_rules! layout {
    (
        $(#[$m:meta])*
        pub struct $name:ident in $module:ident {
            $( $(#[$fm:meta])* $field:ident: $ty:ty $(=> $konst:ident)? ),* $(,)?
        }
        $($extra:item)*
    ) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name { $( $(#[$fm])* pub $field: $ty ),* }

        impl $crate::maps::Layout for $name {
            const FIELDS: &'static [$crate::maps::LayoutField] = &[$(
                $crate::maps::LayoutField {
                    name: stringify!($field),
                    off: ::core::mem::offset_of!($name, $field),
                    size: ::core::mem::size_of::<$ty>(),
                }
            ),*];
        }

        #[doc = concat!("Offsets and size of [`", stringify!($name), "`].")]
        pub mod $module {
            $($(
                pub const $konst: usize = ::core::mem::offset_of!(super::$name, $field);
            )?)*
            pub const SIZE: usize = ::core::mem::size_of::<super::$name>();
            $($extra)*
        }
    };
}

/// `layout!` for the rest of the crate (pinned record formats outside `maps`).
pub(crate) use layout;

/// One field of a [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutField {
    pub name: &'static str,
    pub off: usize,
    pub size: usize,
}

/// A map key or value layout defined with `layout!`.
pub trait Layout: Sized {
    /// Every field, padding included, in order.
    const FIELDS: &'static [LayoutField];
}

pub mod fwd;
pub mod ipsec;
pub mod lb;
pub mod names;
pub mod policy;
pub mod prefilter;
pub mod sock;
pub mod writes;

use sluice_verifier_sim::spec::{MapKind, MapSpec};

/// `BPF_F_NO_PREALLOC`: allocate hash and trie elements on demand.
pub const F_NO_PREALLOC: u32 = crate::uapi::BPF_F_NO_PREALLOC;

/// One map: its name in programs and pins, its type and sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapDef {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    /// A map of `K` keys and `V` values (sizes from the types: a layout struct, an integer,
    /// a byte array; `()` for a map without keys or values, as a ring buffer).
    pub fn of<K, V>(name: &'static str, kind: MapKind, max_entries: u32, flags: u32) -> MapDef {
        let size = |n: usize| u32::try_from(n).expect("map keys and values are small");
        MapDef {
            name,
            kind,
            key_size: size(std::mem::size_of::<K>()),
            value_size: size(std::mem::size_of::<V>()),
            max_entries,
            flags,
        }
    }

    /// The simulator's view of this map.
    pub fn sim_spec(&self) -> MapSpec {
        MapSpec {
            name: self.name.to_string(),
            kind: self.kind,
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: self.max_entries,
            flags: self.flags,
        }
    }

    /// The same map with a different capacity.
    pub fn with_max_entries(&self, max_entries: u32) -> MapDef {
        MapDef { max_entries, ..self.clone() }
    }
}

/// A `u32` array key.
pub fn u32_key(index: u32) -> [u8; 4] {
    index.to_le_bytes()
}

#[cfg(test)]
mod layout_tests {
    use super::{fwd, lb, policy, sock, Layout, LayoutField};

    /// Every byte of every key and value is a named field: no implicit padding the kernel
    /// would hash or compare with whatever the stack held.
    fn no_implicit_padding<T: Layout>(name: &str) {
        let mut at = 0;
        for LayoutField { name: field, off, size } in T::FIELDS {
            assert_eq!(*off, at, "{name}.{field} starts after a gap");
            at = off + size;
        }
        assert_eq!(at, std::mem::size_of::<T>(), "{name} has trailing padding");
    }

    #[test]
    fn every_layout_names_every_byte() {
        no_implicit_padding::<lb::SvcKey>("SvcKey");
        no_implicit_padding::<lb::SvcValue>("SvcValue");
        no_implicit_padding::<lb::SlotKey>("SlotKey");
        no_implicit_padding::<lb::BeValue>("BeValue");
        no_implicit_padding::<lb::LbCtKey>("LbCtKey");
        no_implicit_padding::<lb::LbCt4Key>("LbCt4Key");
        no_implicit_padding::<lb::LbCtValue>("LbCtValue");
        no_implicit_padding::<lb::AffKey>("AffKey");
        no_implicit_padding::<lb::AffValue>("AffValue");
        no_implicit_padding::<lb::SockKey>("SockKey");
        no_implicit_padding::<lb::SockValue>("SockValue");
        no_implicit_padding::<policy::PolicyKey>("PolicyKey");
        no_implicit_padding::<policy::PolicyValue>("PolicyValue");
        no_implicit_padding::<policy::EpConfig>("EpConfig");
        no_implicit_padding::<policy::PolEntry>("PolEntry");
        no_implicit_padding::<policy::PolSlot>("PolSlot");
        no_implicit_padding::<policy::Ct4Key>("Ct4Key");
        no_implicit_padding::<policy::Ct6Key>("Ct6Key");
        no_implicit_padding::<policy::CtValue>("CtValue");
        no_implicit_padding::<policy::Event>("Event");
        no_implicit_padding::<policy::EvConfig>("EvConfig");
        no_implicit_padding::<policy::EvBudget>("EvBudget");
        no_implicit_padding::<policy::FragValue>("FragValue");
        no_implicit_padding::<fwd::LxcValue>("LxcValue");
        no_implicit_padding::<fwd::TunnelKey>("TunnelKey");
        no_implicit_padding::<super::prefilter::V6Slot>("V6Slot");
        no_implicit_padding::<super::prefilter::CidrKey>("CidrKey");
        no_implicit_padding::<super::prefilter::PfMeta>("PfMeta");
        no_implicit_padding::<fwd::TunnelValue>("TunnelValue");
        no_implicit_padding::<fwd::FwdCfg>("FwdCfg");
        no_implicit_padding::<sock::SockKey>("SockKey");
        no_implicit_padding::<sock::SockVerdict>("SockVerdict");
    }

    /// The derived offsets are the wire layouts the kernel side was written against.
    #[test]
    fn derived_offsets_keep_the_wire_layouts() {
        assert_eq!(
            (lb::svc_key::PORT, lb::svc_key::PROTO, lb::svc_key::SCOPE, lb::svc_key::SIZE),
            (16, 18, 19, 20)
        );
        assert_eq!((lb::ct_key::SPORT, lb::ct_key::DIR, lb::ct_key::SIZE), (32, 37, 40));
        assert_eq!((lb::aff_value::LAST_USED, lb::sock_key::PORT, lb::sock_key::SIZE), (8, 24, 32));
        assert_eq!(
            (policy::policy_key::PROTO, policy::policy_key::PORT, policy::policy_key::SIZE),
            (12, 14, 16)
        );
        assert_eq!((policy::ep_config::IDENTITY, policy::ep_config::SIZE), (24, 32));
        assert_eq!(
            (policy::ct_value::REV_NAT, policy::ct_value::PACKETS, policy::ct_value::SIZE),
            (12, 24, 32)
        );
        assert_eq!((policy::event::SADDR, policy::event::DADDR, policy::event::SIZE), (20, 36, 52));
        assert_eq!((fwd::lxc_value::NODE_MAC, fwd::lxc_value::SIZE, fwd::tunnel_key::SIZE), (14, 24, 20));
        use super::prefilter::{cidr_key, meta, slot};
        assert_eq!(
            [
                slot::KEY,
                slot::STATE,
                slot::PREFIX_HI,
                slot::MASK_HI,
                slot::PREFIX_LO,
                slot::MASK_LO,
                slot::SIZE
            ],
            [0, 4, 8, 16, 24, 28, 32]
        );
        assert_eq!([cidr_key::FAMILY, cidr_key::LEN, cidr_key::ADDR, cidr_key::SIZE], [0, 1, 4, 20]);
        assert_eq!(
            [meta::V4_L2_USED, meta::V4_L3_USED, meta::V6_CONF, meta::CIDRS, meta::SIZE],
            [0, 4, 8, 12, 16]
        );
    }
}
