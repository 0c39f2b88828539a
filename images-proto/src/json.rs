//! serde helpers that `build.rs` attaches to generated fields, so `rcr show` prints
//! `bytes` as lowercase hex and enum fields by the proto names of their values.
//!
//! The `_one`, `_list` and `_option` suffixes follow how prost lays a field out in Rust;
//! all shapes are here (and public) so a new schema field of any shape just works.

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::fmt::Write as _;

/// Lowercase hex of `bytes`, two digits per byte.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A `bytes` field as a hex string.
pub fn hex_one<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(bytes))
}

/// A `repeated bytes` field as a list of hex strings.
pub fn hex_list<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for item in items {
        seq.serialize_element(&to_hex(item))?;
    }
    seq.end()
}

/// An `optional bytes` field as a hex string or null.
pub fn hex_option<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_some(&to_hex(b)),
        None => s.serialize_none(),
    }
}

/// An enum field's name, or its number when this build does not know the value
/// (an image written by a newer rcr).
#[derive(Serialize)]
#[serde(untagged)]
enum EnumValue<E> {
    Known(E),
    Unknown(i32),
}

impl<E: TryFrom<i32>> EnumValue<E> {
    fn new(raw: i32) -> Self {
        E::try_from(raw).map_or(Self::Unknown(raw), Self::Known)
    }
}

/// An enum field (`i32` in prost) as its value's name.
pub fn enum_one<E, S>(raw: &i32, s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    EnumValue::<E>::new(*raw).serialize(s)
}

/// A `repeated` enum field as a list of names.
pub fn enum_list<E, S>(raws: &[i32], s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    let mut seq = s.serialize_seq(Some(raws.len()))?;
    for raw in raws {
        seq.serialize_element(&EnumValue::<E>::new(*raw))?;
    }
    seq.end()
}

/// An `optional` enum field as a name or null.
pub fn enum_option<E, S>(raw: &Option<i32>, s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    raw.map(EnumValue::<E>::new).serialize(s)
}
