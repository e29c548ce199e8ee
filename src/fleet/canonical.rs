//! Canonical JSON as TUF signs it: the encoding of securesystemslib's `encode_canonical`
//! (what python-tuf, go-tuf and tough sign and verify), not RFC 8785. Objects with their keys
//! sorted by code point, no whitespace, strings with only `\` and `"` escaped (every other
//! character, control characters and non-ASCII included, written as it is, in UTF-8),
//! integers only (a float is refused), `true`, `false`, `null`. Pure.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("canonical JSON has no floating-point numbers (found {0})")]
    Float(String),
}

/// The canonical bytes of `value`.
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalError::Float(n.to_string()));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Code-point order is byte order of UTF-8; sorted here whatever the map keeps.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(key, out);
                out.push(b':');
                write(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'\\' || b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_sorted_no_whitespace_only_quote_and_backslash_escaped() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, true, null], "a": "x\"y\\z\n\u00e9", "Z": -3}"#)
                .unwrap();
        let got = encode(&v).unwrap();
        assert_eq!(
            got,
            "{\"Z\":-3,\"a\":\"x\\\"y\\\\z\n\u{e9}\",\"b\":[1,true,null]}".as_bytes()
        );
        assert!(encode(&serde_json::json!({"f": 1.5})).is_err());
    }
}
