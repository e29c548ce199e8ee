//! What a record holds in memory, estimated by walking it with serde and without formatting
//! anything: the weight the record queue and the calls' grace bound their bytes by.
//!
//! Contract: [`held_bytes`] is the size of the record's body plus, for every value inside it,
//! [`SLOT`] bytes (a number, a flag, an absent option, a variant's tag: the inline bytes a
//! field takes, rounded up to a word), and for a text or a byte string its length on top of
//! its `String`'s own [`TEXT`] bytes, and for a list or a map [`LIST`] bytes for its header.
//! Every field is counted as serde sees it, so a field added to a record is weighed without a
//! change here. It never allocates and never fails: a value serde cannot walk counts as what
//! was walked. What a record holds on the heap is within that (a string's bytes are its length;
//! allocators' rounding and spare capacity are not counted, as before); the figure is an
//! estimate for bounds, not an accounting.
//!
//! It replaced a serialisation to JSON into a counting writer (2026-12-03): the same walk, but
//! formatting every number and escaping every string cost ~21,000 instructions a call record,
//! 7 % of a SIP replay's instructions.

use serde::ser::{self, Serialize};

/// A value's inline bytes: a number, a flag, an absent option, a variant's tag.
pub const SLOT: usize = 8;
/// A text or byte string's own bytes beside its contents (pointer, length, capacity).
pub const TEXT: usize = 24;
/// A list's or a map's own bytes beside its elements.
pub const LIST: usize = 24;

/// The bytes `body` holds, as the record queue and the grace weigh it (module doc).
pub fn held_bytes<T: Serialize + ?Sized>(body: &T) -> usize {
    let mut weigher = Weigher(0);
    // An error cannot come from the weigher; a value's own `Serialize` may fail, and then
    // what was walked is the weight.
    let _ = body.serialize(&mut weigher);
    std::mem::size_of_val(body) + weigher.0
}

/// A `Serializer` that adds up [`held_bytes`]'s weights.
struct Weigher(usize);

/// The weigher's error: never made by the weigher itself (serde requires the type).
#[derive(Debug)]
struct Never(String);

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Never(msg.to_string())
    }
}

impl Weigher {
    fn add(&mut self, n: usize) -> Result<(), Never> {
        self.0 = self.0.saturating_add(n);
        Ok(())
    }
}

impl ser::Serializer for &mut Weigher {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_i8(self, _: i8) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_i16(self, _: i16) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_i32(self, _: i32) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_i64(self, _: i64) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_i128(self, _: i128) -> Result<(), Never> {
        self.add(2 * SLOT)
    }
    fn serialize_u8(self, _: u8) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_u16(self, _: u16) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_u32(self, _: u32) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_u64(self, _: u64) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_u128(self, _: u128) -> Result<(), Never> {
        self.add(2 * SLOT)
    }
    fn serialize_f32(self, _: f32) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_f64(self, _: f64) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_char(self, _: char) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_str(self, v: &str) -> Result<(), Never> {
        self.add(TEXT.saturating_add(v.len()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Never> {
        self.add(TEXT.saturating_add(v.len()))
    }
    fn serialize_none(self) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Never> {
        self.add(SLOT)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.add(SLOT)?;
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        self.add(LIST)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.add(SLOT)?;
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        self.add(LIST)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.add(SLOT)?;
        Ok(self)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), Never> {
        // A value written as text (a timestamp, an address): its text's length, counted
        // without allocating it.
        struct Len(usize);
        impl std::fmt::Write for Len {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0 = self.0.saturating_add(s.len());
                Ok(())
            }
        }
        let mut len = Len(0);
        let _ = std::fmt::write(&mut len, format_args!("{value}"));
        self.add(TEXT.saturating_add(len.0))
    }
    fn is_human_readable(&self) -> bool {
        // The records' JSON form (timestamps and addresses as text) is the one weighed.
        true
    }
}

/// The compound serializers: a list's elements, a tuple's and a variant's fields, each
/// weighed as a value of its own.
macro_rules! weigh_elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Weigher {
            type Ok = ();
            type Error = Never;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), Never> {
                Ok(())
            }
        }
    )*};
}

weigh_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A struct's fields (named: the name is the field's place, not weighed).
macro_rules! weigh_fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Weigher {
            type Ok = ();
            type Error = Never;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<(), Never> {
                value.serialize(&mut **self)
            }
            fn skip_field(&mut self, _: &'static str) -> Result<(), Never> {
                // A field left out of the JSON (`skip_serializing_if`) still takes its
                // inline bytes.
                self.add(SLOT)
            }
            fn end(self) -> Result<(), Never> {
                Ok(())
            }
        }
    )*};
}

weigh_fields!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for &mut Weigher {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Never> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Inner {
        name: String,
        value: f64,
    }

    #[derive(serde::Serialize)]
    struct Body {
        id: u64,
        text: String,
        maybe: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u32>,
        list: Vec<Inner>,
        extra: BTreeMap<String, u32>,
    }

    /// The same fields, `Inner`'s flattened into the outer struct: serde then writes the
    /// struct as a map, its field names as keys.
    #[derive(serde::Serialize)]
    struct Flat {
        id: u64,
        #[serde(flatten)]
        inner: Inner,
    }

    fn body(text_len: usize, items: usize) -> Body {
        Body {
            id: 7,
            text: "x".repeat(text_len),
            maybe: None,
            skipped: None,
            list: (0..items)
                .map(|i| Inner {
                    name: format!("stream-{i}"),
                    value: i as f64,
                })
                .collect(),
            extra: [("a".to_owned(), 1)].into_iter().collect(),
        }
    }

    #[test]
    fn every_value_is_weighed_by_its_kind() {
        let b = body(100, 2);
        let inner = |name: &str| TEXT + name.len() + SLOT;
        let expected = std::mem::size_of::<Body>()
            + SLOT // id
            + TEXT + 100 // text
            + SLOT // maybe: None
            + SLOT // skipped, left out of the JSON
            + LIST + inner("stream-0") + inner("stream-1")
            + LIST + (TEXT + 1) + SLOT; // the map: key "a", value 1
        assert_eq!(held_bytes(&b), expected);
    }

    #[test]
    fn a_flattened_struct_is_weighed_with_its_field_names() {
        let flat = Flat {
            id: 1,
            inner: Inner {
                name: "abc".to_owned(),
                value: 2.0,
            },
        };
        let expected = std::mem::size_of::<Flat>()
            + LIST
            + (TEXT + "id".len())
            + SLOT
            + (TEXT + "name".len())
            + (TEXT + 3)
            + (TEXT + "value".len())
            + SLOT;
        assert_eq!(held_bytes(&flat), expected);
    }

    #[test]
    fn the_weight_grows_with_what_the_record_holds_on_the_heap() {
        // A record's text and lists are on the heap: the weight must at least grow by
        // their bytes, or the bounds it feeds would not bound memory.
        let small = held_bytes(&body(10, 1));
        let long_text = held_bytes(&body(10_010, 1));
        let many = held_bytes(&body(10, 101));
        assert!(long_text - small >= 10_000, "{small} {long_text}");
        assert!(
            many - small >= 100 * std::mem::size_of::<Inner>(),
            "{small} {many}"
        );
    }

    #[test]
    fn text_written_through_display_is_weighed_by_its_length() {
        struct Shown(usize);
        impl Serialize for Shown {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&"y".repeat(self.0))
            }
        }
        assert_eq!(
            held_bytes(&Shown(300)) - held_bytes(&Shown(0)),
            300,
            "collect_str counts the text's length"
        );
    }
}
