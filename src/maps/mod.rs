//! Every map's key and value layout, defined once (DESIGN invariant 1).
//!
//! Codegen takes field offsets from here, the simulator gets its [`MapSpec`]s from here,
//! and the loader creates kernel maps from the same [`MapDef`]. A map is referred to in
//! programs by its [`MapDef::name`]; the kernel sees the name truncated to 15 bytes.

pub mod fwd;
pub mod lb;
pub mod policy;
pub mod prefilter;

use sluice_verifier_sim::spec::{MapKind, MapSpec};

/// `BPF_F_NO_PREALLOC`: allocate hash and trie elements on demand.
pub const F_NO_PREALLOC: u32 = 1;

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
