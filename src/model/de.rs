//! Serde helpers shared by the model's wire types.
//!
//! Contract: a value that is validated while it is deserialized (a CIDR, a name, an apiVersion)
//! is validated *inside* the string visitor, via [`parse_str_scalar`]. serde_norway attaches the
//! line, column and field path of the scalar being visited only to errors returned from inside
//! its `deserialize_str`; an error raised after `String::deserialize` returns would be placed
//! at the enclosing mapping instead.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// Deserializes a string scalar and converts it with `parse`; a conversion error becomes a
/// custom serde error located at that scalar. `expecting` completes "invalid type: map,
/// expected ..." when the value is not a scalar.
pub(crate) fn parse_str_scalar<'de, D, T, E, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    deserializer.deserialize_str(ParseStr { expecting, parse, output: PhantomData })
}

struct ParseStr<F, T> {
    expecting: &'static str,
    parse: F,
    output: PhantomData<fn() -> T>,
}

impl<'de, F, T, E> Visitor<'de> for ParseStr<F, T>
where
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<Er: de::Error>(self, v: &str) -> Result<T, Er> {
        (self.parse)(v).map_err(Er::custom)
    }
}
