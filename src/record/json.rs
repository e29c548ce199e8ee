//! Records written as compact JSON into a `Vec<u8>`, byte for byte what `serde_json::to_writer`
//! writes, faster.
//!
//! The contract: for every value whose `Serialize` serde_json accepts, [`write`] appends exactly
//! the bytes `serde_json::to_writer(&mut Vec<u8>, value)` would append, and it fails where
//! serde_json fails (a map key that is not a string, number, bool or char; a non-finite float
//! as a key). Numbers, `null`, booleans, byte arrays and escapes are written by serde_json's own
//! [`CompactFormatter`], so they cannot differ; serde_json's `RawValue` is written raw as
//! serde_json does. What is this module's own: finding the bytes of a string that need an
//! escape. serde_json looks each byte up in a table (`format_escaped_str_contents`, 10.7 % of a
//! SIP replay's instructions by callgrind, keys included: docs/performance.md, "Thirteenth
//! session"); this looks at eight bytes at a time and copies the runs that need none whole.
//! The tests hold it to serde_json on every record the bundled captures make and on generated
//! values of every shape serde's data model has.

use std::io;

use serde::ser::{self, Impossible, Serialize};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

/// serde_json's private name for its `RawValue` (`serde_json::value::RawValue`): a struct of
/// that name with one field of that name is raw JSON text, written as it is.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Appends `value` as compact JSON to `out`, exactly as `serde_json::to_writer(out, value)`.
/// On error `out` may hold part of the value (as with serde_json).
pub fn write<T: ?Sized + Serialize>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    value.serialize(&mut Json { out })
}

/// `value` as compact JSON in a new vector, exactly as `serde_json::to_vec(value)`.
pub fn to_vec<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    write(&mut out, value)?;
    Ok(out)
}

struct Json<'a> {
    out: &'a mut Vec<u8>,
}

fn io_error(e: io::Error) -> serde_json::Error {
    serde_json::Error::io(e)
}

fn key_must_be_a_string() -> serde_json::Error {
    ser::Error::custom("key must be a string")
}

fn float_key_must_be_finite() -> serde_json::Error {
    ser::Error::custom("float key must be finite (got NaN or +/-inf)")
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `word` needs an escape in a JSON string: a control
/// character (< 0x20), `"` or `\`. Exact (no false positive or negative) for the word as a
/// whole: the classic "has a zero byte" and "has a byte less than n" tests.
#[inline]
fn needs_escape(word: u64) -> bool {
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote =
        (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'"')));
    let backslash =
        (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGHS != 0
}

/// The escape serde_json writes for `byte`, if it needs one.
#[inline]
fn escape_of(byte: u8) -> Option<CharEscape> {
    match byte {
        b'"' => Some(CharEscape::Quote),
        b'\\' => Some(CharEscape::ReverseSolidus),
        0x08 => Some(CharEscape::Backspace),
        0x09 => Some(CharEscape::Tab),
        0x0A => Some(CharEscape::LineFeed),
        0x0C => Some(CharEscape::FormFeed),
        0x0D => Some(CharEscape::CarriageReturn),
        0x00..=0x1F => Some(CharEscape::AsciiControl(byte)),
        _ => None,
    }
}

/// Whether a byte needs an escape in a JSON string (serde_json's table, as booleans).
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Whether any byte of `bytes` needs an escape: eight at a time, the last eight overlapping
/// the ones before when the length is not a multiple of eight; byte by byte below eight.
#[inline]
fn any_escape(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]);
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if needs_escape(word_at(bytes, at)) {
            return true;
        }
        at += 8;
    }
    at != bytes.len() && needs_escape(word_at(bytes, bytes.len() - 8))
}

/// `value` between quotes, escaped as serde_json escapes it.
#[inline]
fn write_str(out: &mut Vec<u8>, value: &str) -> serde_json::Result<()> {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if any_escape(bytes) {
        write_escaped(out, bytes)?;
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
    Ok(())
}

/// The bytes of a string that has something to escape, escaped (rare: out of line).
#[cold]
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) -> serde_json::Result<()> {
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if let Some(escape) = escape_of(byte) {
            out.extend_from_slice(&bytes[start..i]);
            CompactFormatter
                .write_char_escape(out, escape)
                .map_err(io_error)?;
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    Ok(())
}

/// Numbers written by serde_json's formatter as they are.
macro_rules! formatted {
    ($($method:ident($ty:ty) $write:ident;)*) => {
        $(fn $method(self, v: $ty) -> serde_json::Result<()> {
            CompactFormatter.$write(self.out, v).map_err(io_error)
        })*
    };
}

/// Numbers as map keys: serde_json's formatter between quotes.
macro_rules! quoted_keys {
    ($($method:ident($ty:ty) $write:ident;)*) => {
        $(fn $method(self, v: $ty) -> serde_json::Result<()> {
            self.quoted(|out| CompactFormatter.$write(out, v))
        })*
    };
}

/// Where a compound value stands: nothing written yet, something written, or it was written
/// whole when it began (a sequence or map of length 0 writes `[]`/`{}` at once).
#[derive(PartialEq, Eq)]
enum State {
    Empty,
    First,
    Rest,
}

struct Compound<'s, 'a> {
    json: &'s mut Json<'a>,
    state: State,
    raw: bool,
}

impl<'s, 'a> ser::Serializer for &'s mut Json<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = Compound<'s, 'a>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = Compound<'s, 'a>;

    fn serialize_bool(self, v: bool) -> serde_json::Result<()> {
        CompactFormatter.write_bool(self.out, v).map_err(io_error)
    }
    formatted! {
        serialize_i8(i8) write_i8;
        serialize_i16(i16) write_i16;
        serialize_i32(i32) write_i32;
        serialize_i64(i64) write_i64;
        serialize_i128(i128) write_i128;
        serialize_u8(u8) write_u8;
        serialize_u16(u16) write_u16;
        serialize_u32(u32) write_u32;
        serialize_u64(u64) write_u64;
        serialize_u128(u128) write_u128;
    }
    fn serialize_f32(self, v: f32) -> serde_json::Result<()> {
        if v.is_finite() {
            CompactFormatter.write_f32(self.out, v).map_err(io_error)
        } else {
            CompactFormatter.write_null(self.out).map_err(io_error)
        }
    }
    fn serialize_f64(self, v: f64) -> serde_json::Result<()> {
        if v.is_finite() {
            CompactFormatter.write_f64(self.out, v).map_err(io_error)
        } else {
            CompactFormatter.write_null(self.out).map_err(io_error)
        }
    }
    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        write_str(self.out, v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        write_str(self.out, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> serde_json::Result<()> {
        CompactFormatter
            .write_byte_array(self.out, v)
            .map_err(io_error)
    }
    fn serialize_none(self) -> serde_json::Result<()> {
        self.serialize_unit()
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> serde_json::Result<()> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> serde_json::Result<()> {
        CompactFormatter.write_null(self.out).map_err(io_error)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> serde_json::Result<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        write_str(self.out, variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> serde_json::Result<Compound<'s, 'a>> {
        self.out.push(b'[');
        let state = if len == Some(0) {
            self.out.push(b']');
            State::Empty
        } else {
            State::First
        };
        Ok(Compound {
            json: self,
            state,
            raw: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> serde_json::Result<Compound<'s, 'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'s, 'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'s, 'a>> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> serde_json::Result<Compound<'s, 'a>> {
        self.out.push(b'{');
        let state = if len == Some(0) {
            self.out.push(b'}');
            State::Empty
        } else {
            State::First
        };
        Ok(Compound {
            json: self,
            state,
            raw: false,
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'s, 'a>> {
        if name == RAW_VALUE_TOKEN {
            return Ok(Compound {
                json: self,
                state: State::Rest,
                raw: true,
            });
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'s, 'a>> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        self.serialize_map(Some(len))
    }
}

impl Compound<'_, '_> {
    /// The separator before the next element or entry.
    fn next(&mut self) {
        if self.state == State::First {
            self.state = State::Rest;
        } else {
            self.json.out.push(b',');
        }
    }

    fn close(self, byte: u8) {
        if self.state != State::Empty {
            self.json.out.push(byte);
        }
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        self.next();
        value.serialize(&mut *self.json)
    }
    fn end(self) -> serde_json::Result<()> {
        self.close(b']');
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> serde_json::Result<()> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> serde_json::Result<()> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> serde_json::Result<()> {
        let close = self.state != State::Empty;
        let Compound { json, .. } = self;
        if close {
            json.out.push(b']');
        }
        json.out.push(b'}');
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> serde_json::Result<()> {
        self.next();
        key.serialize(MapKey { out: self.json.out })?;
        self.json.out.push(b':');
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        value.serialize(&mut *self.json)
    }
    fn end(self) -> serde_json::Result<()> {
        self.close(b'}');
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        if self.raw {
            if key != RAW_VALUE_TOKEN {
                return Err(ser::Error::custom("invalid raw value"));
            }
            return value.serialize(RawText { out: self.json.out });
        }
        self.next();
        write_str(self.json.out, key)?;
        self.json.out.push(b':');
        value.serialize(&mut *self.json)
    }
    fn end(self) -> serde_json::Result<()> {
        if !self.raw {
            self.close(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> serde_json::Result<()> {
        let close = self.state != State::Empty;
        let Compound { json, .. } = self;
        if close {
            json.out.push(b'}');
        }
        json.out.push(b'}');
        Ok(())
    }
}

/// A map key: strings as they are, numbers, booleans and chars quoted, anything else an error
/// — serde_json's rules for keys.
struct MapKey<'a> {
    out: &'a mut Vec<u8>,
}

impl MapKey<'_> {
    fn quoted(self, write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> serde_json::Result<()> {
        self.out.push(b'"');
        write(self.out).map_err(io_error)?;
        self.out.push(b'"');
        Ok(())
    }
}

impl ser::Serializer for MapKey<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Impossible<(), serde_json::Error>;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        write_str(self.out, v)
    }
    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        write_str(self.out, v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        write_str(self.out, variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        value.serialize(self)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> serde_json::Result<()> {
        value.serialize(self)
    }
    fn serialize_bool(self, v: bool) -> serde_json::Result<()> {
        self.quoted(|out| CompactFormatter.write_bool(out, v))
    }
    quoted_keys! {
        serialize_i8(i8) write_i8;
        serialize_i16(i16) write_i16;
        serialize_i32(i32) write_i32;
        serialize_i64(i64) write_i64;
        serialize_i128(i128) write_i128;
        serialize_u8(u8) write_u8;
        serialize_u16(u16) write_u16;
        serialize_u32(u32) write_u32;
        serialize_u64(u64) write_u64;
        serialize_u128(u128) write_u128;
    }
    fn serialize_f32(self, v: f32) -> serde_json::Result<()> {
        if !v.is_finite() {
            return Err(float_key_must_be_finite());
        }
        self.quoted(|out| CompactFormatter.write_f32(out, v))
    }
    fn serialize_f64(self, v: f64) -> serde_json::Result<()> {
        if !v.is_finite() {
            return Err(float_key_must_be_finite());
        }
        self.quoted(|out| CompactFormatter.write_f64(out, v))
    }
    fn serialize_bytes(self, _v: &[u8]) -> serde_json::Result<()> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> serde_json::Result<()> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> serde_json::Result<()> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> serde_json::Result<()> {
        Err(key_must_be_a_string())
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> serde_json::Result<()> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> serde_json::Result<Self::SerializeSeq> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> serde_json::Result<Self::SerializeTuple> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> serde_json::Result<Self::SerializeTupleStruct> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> serde_json::Result<Self::SerializeTupleVariant> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> serde_json::Result<Self::SerializeMap> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> serde_json::Result<Self::SerializeStruct> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> serde_json::Result<Self::SerializeStructVariant> {
        Err(key_must_be_a_string())
    }
}

/// The text of a serde_json `RawValue`, written as it is (it was valid JSON when it was made).
struct RawText<'a> {
    out: &'a mut Vec<u8>,
}

/// Every method but `serialize_str` refuses: serde_json's `RawValue` holds its text as a `str`.
macro_rules! not_raw {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> serde_json::Result<$ret> {
            Err(ser::Error::custom("expected RawValue"))
        })*
    };
}

impl ser::Serializer for RawText<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Impossible<(), serde_json::Error>;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
    not_raw! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _value: &T) -> serde_json::Result<()> {
        Err(ser::Error::custom("expected RawValue"))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> serde_json::Result<()> {
        Err(ser::Error::custom("expected RawValue"))
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> serde_json::Result<()> {
        Err(ser::Error::custom("expected RawValue"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    fn same<T: ?Sized + Serialize>(value: &T) {
        let theirs = serde_json::to_vec(value);
        let ours = to_vec(value);
        match (theirs, ours) {
            (Ok(theirs), Ok(ours)) => assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            ),
            (Err(_), Err(_)) => {}
            (theirs, ours) => panic!("serde_json {theirs:?}, this {ours:?}"),
        }
    }

    #[test]
    fn the_word_test_finds_every_byte_that_needs_an_escape_at_every_place() {
        for byte in 0..=255u8 {
            for place in 0..8 {
                let mut word = [b'a'; 8];
                word[place] = byte;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    escape_of(byte).is_some(),
                    "byte {byte:#04x} at {place}"
                );
                // Beside bytes that borrow in the subtraction (0x00, 0x80, 0xFF).
                for other in [0x00u8, 0x20, 0x21, 0x7F, 0x80, 0xFF, b'"', b'\\'] {
                    let mut word = [other; 8];
                    word[place] = byte;
                    assert_eq!(
                        needs_escape(u64::from_le_bytes(word)),
                        escape_of(byte).is_some() || escape_of(other).is_some(),
                        "byte {byte:#04x} at {place} among {other:#04x}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_byte_to_escape_is_found_at_every_place_of_strings_up_to_three_words_long() {
        for byte in 0..=255u8 {
            assert_eq!(NEEDS_ESCAPE[usize::from(byte)], escape_of(byte).is_some());
        }
        for len in 0..=24 {
            let clean = "x".repeat(len);
            assert!(!any_escape(clean.as_bytes()));
            same(&clean);
            for place in 0..len {
                for special in ["\"", "\\", "\u{0}", "\u{1f}", "\n"] {
                    let mut text = clean.clone();
                    text.replace_range(place..=place, special);
                    assert!(any_escape(text.as_bytes()), "{text:?}");
                    same(&text);
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for text in [
            "",
            "a",
            "\"",
            "\\",
            "\u{7f}",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}",
            "exactly8",
            "exactly8\"",
            "\"exactly8",
            "sip:1001@192.0.2.1;tag=\"x\"\r\nVia: SIP/2.0/UDP\t192.0.2.1",
            "ünïcödé and 漢字 and 🎧 with \u{0} inside",
        ] {
            same(text);
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(text in any::<String>()) {
            same(&text);
        }

        #[test]
        fn strings_of_json_special_bytes_are_written_as_serde_json_writes_them(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..0x7f], 0..40)
        ) {
            let text = String::from_utf8(bytes).unwrap();
            same(&text);
        }
    }

    #[derive(Serialize)]
    struct Unit;
    #[derive(Serialize)]
    struct Newtype(u8);
    #[derive(Serialize)]
    struct Tuple(i8, &'static str);
    #[derive(Serialize)]
    enum Variants {
        Unit,
        Newtype(u16),
        Tuple(u8, u8),
        EmptyTuple(),
        Struct { a: u8, b: Option<u8> },
        EmptyStruct {},
    }
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        One { x: f64 },
        Two(Inner),
    }
    #[derive(Serialize)]
    struct Inner {
        y: Vec<u8>,
        #[serde(flatten)]
        more: BTreeMap<String, i64>,
    }
    #[derive(Serialize, Hash, PartialEq, Eq, PartialOrd, Ord)]
    struct KeyNewtype(u32);
    #[derive(Serialize, Hash, PartialEq, Eq, PartialOrd, Ord)]
    enum KeyVariant {
        Left,
    }

    struct Bytes(&'static [u8]);
    impl Serialize for Bytes {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    type Named = BTreeMap<&'static str, Vec<u8>>;

    #[derive(Serialize)]
    struct Everything {
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        tuple: Tuple,
        variants: Vec<Variants>,
        tagged: Vec<Tagged>,
        none: Option<u8>,
        some: Option<&'static str>,
        empty: Vec<u8>,
        empty_map: BTreeMap<u8, u8>,
        floats: Vec<f64>,
        float32: Vec<f32>,
        wide: (i128, u128, i64, u64, i16, u16),
        chars: Vec<char>,
        bytes: Bytes,
        int_keys: BTreeMap<i32, &'static str>,
        bool_keys: BTreeMap<bool, u8>,
        char_keys: BTreeMap<char, u8>,
        newtype_keys: BTreeMap<KeyNewtype, u8>,
        variant_keys: BTreeMap<KeyVariant, u8>,
        string_keys: HashMap<String, u8>,
        option_keys: BTreeMap<Option<u8>, u8>,
        raw: Box<serde_json::value::RawValue>,
        nested: Vec<Vec<Option<Named>>>,
    }

    #[test]
    fn every_shape_of_serdes_data_model_is_written_as_serde_json_writes_it() {
        let everything = Everything {
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(7),
            tuple: Tuple(-3, "t\"q"),
            variants: vec![
                Variants::Unit,
                Variants::Newtype(9),
                Variants::Tuple(1, 2),
                Variants::EmptyTuple(),
                Variants::Struct { a: 1, b: None },
                Variants::EmptyStruct {},
            ],
            tagged: vec![
                Tagged::One { x: 0.1 },
                Tagged::Two(Inner {
                    y: vec![1, 2],
                    more: BTreeMap::from([("k\n".to_owned(), -5)]),
                }),
            ],
            none: None,
            some: Some("\u{1}"),
            empty: Vec::new(),
            empty_map: BTreeMap::new(),
            floats: vec![
                0.0,
                -0.0,
                1.5,
                1e300,
                1e-300,
                f64::NAN,
                f64::INFINITY,
                3.0,
                0.1,
            ],
            float32: vec![0.1, f32::NEG_INFINITY, 16_777_216.0],
            wide: (i128::MIN, u128::MAX, i64::MIN, u64::MAX, i16::MIN, u16::MAX),
            chars: vec!['a', '"', '\u{0}', '漢'],
            bytes: Bytes(b"\x00\xff"),
            int_keys: BTreeMap::from([(-1, "a"), (2, "b")]),
            bool_keys: BTreeMap::from([(true, 1), (false, 0)]),
            char_keys: BTreeMap::from([('"', 1)]),
            newtype_keys: BTreeMap::from([(KeyNewtype(4), 1)]),
            variant_keys: BTreeMap::from([(KeyVariant::Left, 1)]),
            string_keys: HashMap::from([("only\\one".to_owned(), 1)]),
            option_keys: BTreeMap::from([(Some(3), 1)]),
            raw: serde_json::value::RawValue::from_string(r#"{"a": [1, 2 ]}"#.to_owned()).unwrap(),
            nested: vec![vec![None, Some(BTreeMap::from([("x", vec![])]))], vec![]],
        };
        same(&everything);
    }

    #[test]
    fn keys_serde_json_refuses_are_refused() {
        same(&BTreeMap::from([(vec![1u8], 1u8)]));
        same(&BTreeMap::from([((), 1u8)]));
        same(&BTreeMap::from([(Option::<u8>::None, 1u8)]));
        same(&HashMap::from([(Newtype(1), 1u8)].map(|(k, v)| (k.0, v))));
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        struct Compound {
            a: u8,
        }
        same(&BTreeMap::from([(Compound { a: 1 }, 1u8)]));
        struct NanKey;
        impl Serialize for NanKey {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ser::SerializeMap;
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry(&1.5f64, &1)?;
                map.serialize_entry(&f64::NAN, &2)?;
                map.end()
            }
        }
        same(&NanKey);
    }

    /// Every record the bundled captures make (calls, streams, registrations, summaries),
    /// written both ways.
    #[test]
    fn every_record_of_the_bundled_captures_is_written_as_serde_json_writes_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut records = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
                continue;
            }
            let mut replay = crate::replay::Replay::with_registrations(Default::default());
            let mut check = |record: crate::record::Record| {
                same(&record);
                records += 1;
            };
            let file = std::fs::File::open(&path).unwrap();
            let _ = replay.read(&name, file, &mut check, |_| {});
            replay.finish(&mut check);
        }
        assert!(records > 100, "only {records} records");
    }
}
