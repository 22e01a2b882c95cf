//! JSON without a tree on the hot path.
//!
//! Decoding a Socket.IO packet validates its JSON with [`scan_value`], a non-recursive validating scanner that
//! builds nothing and checks [`Limits::json_depth_max`](crate::Limits::json_depth_max) as it goes; the data stays
//! the client's own text ([`RawJson`]). Only a caller that wants a typed value pays for a parse
//! ([`RawJson::parse`], [`RawJson::to_value`]).
//!
//! Which parser: `RawJson::parse` uses serde_json below [`SIMD_JSON_MIN_BYTES`] and simd-json from there on.
//! simd-json must first copy the input into a mutable buffer and build its tape, a fixed cost that dominates the
//! small documents Socket.IO events usually carry; its SIMD scanning pays off on larger ones. The `json/parse_*`
//! groups of `benches/codec.rs` measure both parsers at three sizes (see the README for the last figures).

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::Error;

/// Documents of at least this many bytes are parsed by simd-json, smaller ones by serde_json (see the module doc).
pub const SIMD_JSON_MIN_BYTES: usize = 4096;

/// Why [`scan_value`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Not JSON; the byte offset of the problem.
    Invalid(usize),
    /// Nested deeper than allowed.
    TooDeep,
}

#[inline]
pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// Validates one JSON value starting at `s[i]` (leading whitespace allowed) and returns the offset just past it.
/// Arrays and objects nested deeper than `depth_max` fail with [`ScanError::TooDeep`]. Never recurses.
pub(crate) fn scan_value(s: &[u8], mut i: usize, depth_max: usize) -> Result<usize, ScanError> {
    // Open containers, innermost last: `true` for an object, `false` for an array.
    let mut stack: Vec<bool> = Vec::new();
    'value: loop {
        i = skip_ws(s, i);
        let Some(&c) = s.get(i) else {
            return Err(ScanError::Invalid(i));
        };
        match c {
            b'{' | b'[' => {
                if stack.len() >= depth_max {
                    return Err(ScanError::TooDeep);
                }
                let object = c == b'{';
                i = skip_ws(s, i + 1);
                let close = if object { b'}' } else { b']' };
                if s.get(i) == Some(&close) {
                    i += 1;
                } else {
                    stack.push(object);
                    if object {
                        i = scan_key(s, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = scan_string(s, i)?,
            b'-' | b'0'..=b'9' => i = scan_number(s, i)?,
            b't' => i = scan_literal(s, i, b"true")?,
            b'f' => i = scan_literal(s, i, b"false")?,
            b'n' => i = scan_literal(s, i, b"null")?,
            _ => return Err(ScanError::Invalid(i)),
        }
        // A value ended; close containers until one continues with a comma.
        loop {
            let Some(&object) = stack.last() else {
                return Ok(i);
            };
            i = skip_ws(s, i);
            match s.get(i) {
                Some(b',') => {
                    i += 1;
                    if object {
                        i = scan_key(s, skip_ws(s, i))?;
                    }
                    continue 'value;
                }
                Some(b']') if !object => {
                    i += 1;
                    stack.pop();
                }
                Some(b'}') if object => {
                    i += 1;
                    stack.pop();
                }
                _ => return Err(ScanError::Invalid(i)),
            }
        }
    }
}

/// `"key"` then `:`; `i` is at the opening quote.
fn scan_key(s: &[u8], i: usize) -> Result<usize, ScanError> {
    if s.get(i) != Some(&b'"') {
        return Err(ScanError::Invalid(i));
    }
    let i = skip_ws(s, scan_string(s, i)?);
    if s.get(i) != Some(&b':') {
        return Err(ScanError::Invalid(i));
    }
    Ok(i + 1)
}

/// A string; `i` is at the opening quote. Returns the offset past the closing quote.
pub(crate) fn scan_string(s: &[u8], mut i: usize) -> Result<usize, ScanError> {
    i += 1;
    loop {
        match s.get(i) {
            None => return Err(ScanError::Invalid(i)),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match s.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = s.get(i + 2..i + 6).ok_or(ScanError::Invalid(i))?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(ScanError::Invalid(i));
                    }
                    i += 6;
                }
                _ => return Err(ScanError::Invalid(i)),
            },
            Some(&c) if c < 0x20 => return Err(ScanError::Invalid(i)),
            Some(_) => i += 1,
        }
    }
}

fn scan_number(s: &[u8], mut i: usize) -> Result<usize, ScanError> {
    let digit = |i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while digit(i) {
                i += 1;
            }
        }
        _ => return Err(ScanError::Invalid(i)),
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digit(i) {
            return Err(ScanError::Invalid(i));
        }
        while digit(i) {
            i += 1;
        }
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        if !digit(i) {
            return Err(ScanError::Invalid(i));
        }
        while digit(i) {
            i += 1;
        }
    }
    Ok(i)
}

fn scan_literal(s: &[u8], i: usize, lit: &[u8]) -> Result<usize, ScanError> {
    if s.get(i..i + lit.len()) == Some(lit) {
        Ok(i + lit.len())
    } else {
        Err(ScanError::Invalid(i))
    }
}

/// Validates that `text` is exactly one JSON value (whitespace around it allowed).
pub(crate) fn validate(text: &str, depth_max: usize) -> Result<(), Error> {
    let s = text.as_bytes();
    let end = scan_value(s, 0, depth_max).map_err(|e| scan_error(e, 0, depth_max))?;
    let end = skip_ws(s, end);
    if end != s.len() {
        return Err(Error::InvalidJson { offset: end });
    }
    Ok(())
}

pub(crate) fn scan_error(e: ScanError, base: usize, depth_max: usize) -> Error {
    match e {
        ScanError::Invalid(offset) => Error::InvalidJson {
            offset: base + offset,
        },
        ScanError::TooDeep => Error::limit(crate::Limit::JsonDepth, depth_max),
    }
}

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Parses a JSON document into `T` with the parser the module doc names for its size.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    if text.len() >= SIMD_JSON_MIN_BYTES {
        let mut buf = text.as_bytes().to_vec();
        simd_json::serde::from_slice(&mut buf).map_err(|_| Error::InvalidPayload)
    } else {
        serde_json::from_str(text).map_err(|_| Error::InvalidPayload)
    }
}

/// JSON text that has been validated (or produced by a serializer): the data of a Socket.IO packet, kept as the
/// peer sent it. Cheap to hold, to forward and to re-encode (it is copied, never re-serialized).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(String);

impl RawJson {
    /// Validates `text` as one JSON value no deeper than the default
    /// [`Limits::json_depth_max`](crate::Limits::json_depth_max).
    pub fn new(text: impl Into<String>) -> Result<RawJson, Error> {
        let text = text.into();
        validate(&text, crate::Limits::DEFAULT.json_depth_max)?;
        Ok(RawJson(text))
    }

    /// Serializes `value` with serde_json (the encode side never needs a tree).
    pub fn from_serialize<T: serde::Serialize + ?Sized>(
        value: &T,
    ) -> Result<RawJson, serde_json::Error> {
        serde_json::to_string(value).map(RawJson)
    }

    /// The empty array `[]` (e.g. the arguments of an ACK without values).
    pub fn empty_array() -> RawJson {
        RawJson("[]".to_owned())
    }

    /// For text this crate has validated or produced itself.
    pub(crate) fn new_unchecked(text: String) -> RawJson {
        RawJson(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text, by value.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Deserializes into `T` (serde_json or simd-json, by size; see the module doc). A shape mismatch is
    /// [`Error::InvalidPayload`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        parse(&self.0)
    }

    /// Builds a [`Value`], replacing each `{"_placeholder":true,"num":N}` by `Binary(attachments[N])`: the
    /// reassembly of a binary packet. An out-of-range or non-integer `num` is [`Error::InvalidPlaceholder`].
    pub fn to_value(&self, attachments: &[Vec<u8>]) -> Result<Value, Error> {
        let value: Value = parse(&self.0)?;
        value.fill_placeholders(attachments)
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawJson({})", self.0)
    }
}

impl std::fmt::Display for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RawJson {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A JSON value that may hold binary buffers, the way a JavaScript peer's `emit` arguments may. Objects keep
/// their key order.
///
/// [`Value::split_binary`] turns it into JSON text with `{"_placeholder":true,"num":N}` in place of each buffer
/// plus the buffers in order (the encode side of a BINARY_EVENT / BINARY_ACK); [`RawJson::to_value`] is the
/// reverse.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A JSON number.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// A binary buffer (an attachment on the wire).
    Binary(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// An object, keys in order.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// JSON text with placeholders for the buffers, and the buffers in placeholder (depth-first) order.
    pub fn split_binary(&self) -> (RawJson, Vec<Vec<u8>>) {
        let mut out = String::new();
        let mut attachments = Vec::new();
        self.write(&mut out, &mut attachments);
        (RawJson(out), attachments)
    }

    /// True if a [`Value::Binary`] occurs anywhere inside.
    pub fn has_binary(&self) -> bool {
        match self {
            Value::Binary(_) => true,
            Value::Array(items) => items.iter().any(Value::has_binary),
            Value::Object(entries) => entries.iter().any(|(_, v)| v.has_binary()),
            _ => false,
        }
    }

    fn write(&self, out: &mut String, attachments: &mut Vec<Vec<u8>>) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => write_str(out, s),
            Value::Binary(b) => {
                out.push_str("{\"_placeholder\":true,\"num\":");
                out.push_str(&attachments.len().to_string());
                out.push('}');
                attachments.push(b.clone());
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out, attachments);
                }
                out.push(']');
            }
            Value::Object(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out, attachments);
                }
                out.push('}');
            }
        }
    }

    fn fill_placeholders(self, attachments: &[Vec<u8>]) -> Result<Value, Error> {
        Ok(match self {
            Value::Object(entries) => {
                if entries
                    .iter()
                    .any(|(k, v)| k == "_placeholder" && *v == Value::Bool(true))
                {
                    let num = entries
                        .iter()
                        .find(|(k, _)| k == "num")
                        .and_then(|(_, v)| match v {
                            Value::Number(n) => n.as_u64(),
                            _ => None,
                        });
                    match num.and_then(|n| attachments.get(usize::try_from(n).ok()?)) {
                        Some(bytes) => Value::Binary(bytes.clone()),
                        None => return Err(Error::InvalidPlaceholder),
                    }
                } else {
                    let mut out = Vec::with_capacity(entries.len());
                    for (k, v) in entries {
                        out.push((k, v.fill_placeholders(attachments)?));
                    }
                    Value::Object(out)
                }
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for v in items {
                    out.push(v.fill_placeholders(attachments)?);
                }
                Value::Array(out)
            }
            other => other,
        })
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(Value::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::String(s))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(Value::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}
