//! Placing errors found after deserialization at their YAML node.
//!
//! Contract:
//! - Checks that need more than one scalar (an `endPort` below its `port`, a name used twice,
//!   a selector that contradicts its policy's namespace) run when a document is lowered into
//!   the model, after serde is done with it. They report an [`Invalid`]: a [`FieldPath`] from
//!   the document's root and a message.
//! - [`locate`] turns that into a serde_norway error at the node the path names, by reading the
//!   document again and failing inside the visitor of that node: serde_norway then attaches the
//!   node's line, column and field path exactly as it does for its own errors, so located and
//!   schema errors print alike. A path that does not lead to a node (it cannot happen for
//!   paths the lowering builds from what it read) fails at the deepest node it reached.
//! - Only the error path rereads the text; valid input is read once per pass.

use std::convert::Infallible;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from a document's root to one of its nodes, e.g. `spec.ingress[0].toPorts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Seg>);

impl FieldPath {
    pub(crate) fn root() -> FieldPath {
        FieldPath::default()
    }

    /// The value of `key` in the mapping at this path.
    pub(crate) fn key(&self, key: &str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        FieldPath(segs)
    }

    /// Element `index` of the sequence at this path.
    pub(crate) fn index(&self, index: usize) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        FieldPath(segs)
    }

    /// An [`Invalid`] at this path.
    pub(crate) fn invalid(&self, message: impl Into<String>) -> Invalid {
        Invalid { path: self.clone(), message: message.into() }
    }
}

/// A rejection found while lowering a document: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub path: FieldPath,
    pub message: String,
}

/// The serde_norway error for `invalid`, placed at its node in document `document` (0-based,
/// counting every document of the stream as `serde_norway::Deserializer` yields them).
pub(crate) fn locate(source: &str, document: usize, invalid: &Invalid) -> serde_norway::Error {
    let seed = Navigate { path: &invalid.path.0, message: &invalid.message };
    match serde_norway::Deserializer::from_str(source).nth(document) {
        Some(doc) => match seed.deserialize(doc) {
            Err(err) => err,
            Ok(never) => match never {},
        },
        // The document was read once already, so it is there; stay total regardless.
        None => de::Error::custom(&invalid.message),
    }
}

/// Walks down `path` and fails at its end (or wherever the walk stops).
struct Navigate<'a> {
    path: &'a [Seg],
    message: &'a str,
}

impl<'de> DeserializeSeed<'de> for Navigate<'_> {
    type Value = Infallible;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Infallible, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Navigate<'_> {
    fn fail<E: de::Error>(&self) -> Result<Infallible, E> {
        Err(E::custom(self.message))
    }
}

impl<'de> Visitor<'de> for Navigate<'_> {
    type Value = Infallible;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_none<E: de::Error>(self) -> Result<Infallible, E> {
        self.fail()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Infallible, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<Infallible, A::Error> {
        self.fail()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Infallible, A::Error> {
        let Some((Seg::Index(index), rest)) = self.path.split_first() else {
            return self.fail();
        };
        for _ in 0..*index {
            if seq.next_element::<de::IgnoredAny>()?.is_none() {
                return self.fail();
            }
        }
        match seq.next_element_seed(Navigate { path: rest, message: self.message })? {
            Some(never) => match never {},
            None => self.fail(),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Infallible, A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else {
            return self.fail();
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *wanted {
                let never = map.next_value_seed(Navigate { path: rest, message: self.message })?;
                match never {}
            }
            map.next_value::<de::IgnoredAny>()?;
        }
        self.fail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: &str, document: usize, path: FieldPath) -> String {
        locate(source, document, &path.invalid("bad")).to_string()
    }

    #[test]
    fn errors_land_on_the_named_node() {
        let text = "a: 1\n---\nspec:\n  list:\n    - x\n    - {k: v, w: [1, 2]}\n  other: z\n";
        let root = FieldPath::root();
        assert_eq!(at(text, 0, root.key("a")), "a: bad at line 1 column 4");
        assert_eq!(at(text, 1, root.key("spec").key("other")), "spec.other: bad at line 7 column 10");
        assert_eq!(
            at(text, 1, root.key("spec").key("list").index(1)),
            "spec.list[1]: bad at line 6 column 7"
        );
        assert_eq!(
            at(text, 1, root.key("spec").key("list").index(1).key("w").index(1)),
            "spec.list[1].w[1]: bad at line 6 column 21"
        );
    }

    #[test]
    fn a_path_past_the_document_stops_at_the_deepest_node() {
        let text = "spec:\n  list: [a]\n";
        let root = FieldPath::root();
        assert_eq!(at(text, 0, root.key("spec").key("nope")), "spec: bad at line 2 column 3");
        assert_eq!(at(text, 0, root.key("spec").key("list").index(4)), "spec.list: bad at line 2 column 9");
        assert_eq!(
            at(text, 0, root.key("spec").key("list").index(0).key("x")),
            "spec.list[0]: bad at line 2 column 10"
        );
        assert_eq!(at(text, 3, root), "bad");
    }
}
