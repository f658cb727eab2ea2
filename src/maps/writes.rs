//! Map writes, and the one function that applies them to any back end.
//!
//! A plan's initial contents and every live change are [`MapWrites`]: per map, a batch of
//! updates and then a batch of deletes, as flat buffers. [`apply_writes`] applies a list of
//! them in order to a [`MapBackend`]: the kernel's maps (`node::load`) and the simulator's
//! (`node::sim`) implement it, so the two can never apply the same writes differently.

/// Writes to apply to one map, as flat buffers: its updates, then its deletes (the order
/// [`apply_writes`] keeps for every back end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapWrites {
    pub map: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Flattened keys and values to update.
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    /// Flattened keys to delete after the updates.
    pub deletes: Vec<u8>,
}

impl MapWrites {
    /// Nothing queued yet for `map`, whose keys and values have these sizes.
    pub fn new(map: &'static str, key_size: usize, value_size: usize) -> MapWrites {
        MapWrites { map, key_size, value_size, ..MapWrites::default() }
    }

    /// Queue `key = value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        debug_assert_eq!(key.len(), self.key_size);
        debug_assert_eq!(value.len(), self.value_size);
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
    }

    /// Queue a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.deletes.extend_from_slice(key);
    }

    /// Number of updates queued.
    pub fn updates(&self) -> usize {
        self.keys.len() / self.key_size.max(1)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.deletes.is_empty()
    }
}

/// Maps that writes can be applied to.
pub trait MapBackend {
    type Error;
    /// `count` updates (`BPF_ANY`) of `map`: keys and values back to back.
    fn update(
        &mut self,
        map: &'static str,
        keys: &[u8],
        values: &[u8],
        count: usize,
    ) -> Result<(), Self::Error>;
    /// Delete `key` from `map`.
    fn delete(&mut self, map: &'static str, key: &[u8]) -> Result<(), Self::Error>;
}

/// Apply `writes` in order: each map's updates (one batch), then its deletes.
pub fn apply_writes<B: MapBackend>(maps: &mut B, writes: &[MapWrites]) -> Result<(), B::Error> {
    // The mutation harness's seam: the writes as given unless a write mutant is named.
    for w in crate::mutate::writes_seam(writes).iter() {
        if w.updates() > 0 {
            maps.update(w.map, &w.keys, &w.values, w.updates())?;
        }
        for key in w.deletes.chunks_exact(w.key_size.max(1)) {
            maps.delete(w.map, key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what is applied, in order.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl MapBackend for Log {
        type Error = std::convert::Infallible;
        fn update(
            &mut self,
            map: &'static str,
            keys: &[u8],
            values: &[u8],
            count: usize,
        ) -> Result<(), Self::Error> {
            self.0.push(format!("update {map} {count}: {keys:?} = {values:?}"));
            Ok(())
        }
        fn delete(&mut self, map: &'static str, key: &[u8]) -> Result<(), Self::Error> {
            self.0.push(format!("delete {map} {key:?}"));
            Ok(())
        }
    }

    #[test]
    fn updates_then_deletes_map_by_map_in_order() {
        let mut a = MapWrites::new("a", 1, 1);
        a.delete(&[9]);
        a.put(&[1], &[10]);
        a.put(&[2], &[20]);
        let mut b = MapWrites::new("b", 1, 1);
        b.delete(&[3]);
        let mut log = Log::default();
        let Ok(()) = apply_writes(&mut log, &[a, b]);
        assert_eq!(log.0, ["update a 2: [1, 2] = [10, 20]", "delete a [9]", "delete b [3]"]);
    }
}
