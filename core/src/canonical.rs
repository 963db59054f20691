//! RFC 8785 (JSON Canonicalization Scheme) for the JSON the control plane signs: object
//! members sorted by UTF-16 code units, no whitespace, ECMAScript string escaping.
//! Receipts contain no floating-point numbers, so only integers are accepted; a float
//! is an error rather than a subtly non-canonical encoding.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot canonicalize: {0}")]
pub struct CanonicalError(String);

/// The canonical bytes of `v`.
pub fn to_vec(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out)?;
    Ok(out)
}

/// The canonical bytes of any serializable value.
pub fn to_canonical<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CanonicalError> {
    to_vec(&serde_json::to_value(v).map_err(|e| CanonicalError(e.to_string()))?)
}

fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalError(format!("floating-point number {n}")));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        // serde_json escapes exactly as ECMAScript's JSON.stringify does for valid UTF-8.
        Value::String(s) => out.extend_from_slice(serde_json::to_string(s).expect("strings serialize").as_bytes()),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("strings serialize").as_bytes());
                out.push(b':');
                write(&m[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> String {
        String::from_utf8(to_vec(&serde_json::from_str(s).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn sorts_members_and_drops_whitespace() {
        assert_eq!(
            c(r#"{ "b": 1, "a": [ true, null, "x" ], "c": { "z": 0, "y": -5 } }"#),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":-5,"z":0}}"#
        );
    }

    #[test]
    fn escapes_like_ecmascript() {
        assert_eq!(c(r#""\u0001\t\n\"\\/é€""#), "\"\\u0001\\t\\n\\\"\\\\/é€\"");
    }

    #[test]
    fn orders_keys_by_utf16_code_units() {
        // U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it in UTF-8.
        assert_eq!(c("{\"\u{fb01}\":1,\"\u{1f600}\":2}"), "{\"\u{1f600}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn refuses_floats() {
        assert!(to_vec(&serde_json::json!({"x": 1.5})).is_err());
    }

    #[test]
    fn is_idempotent() {
        let once = c(r#"{"k":{"b":[1,{"d":2,"c":3}],"a":"s"}}"#);
        assert_eq!(c(&once), once);
    }
}
