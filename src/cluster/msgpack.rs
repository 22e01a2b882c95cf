//! MessagePack as `notepack.io` 3 (the parser of `@socket.io/redis-adapter` 8 and `@socket.io/redis-emitter` 5)
//! writes and reads it: sans-IO, bounded, never panics on input.
//!
//! Encoding follows notepack byte for byte: the smallest integer form, floats always as float 64 (`cb`), strings as
//! fixstr/str8/16/32, buffers as bin8/16/32, maps with their keys in insertion order. Decoding accepts every
//! MessagePack form (floats 32, ext types), refuses nesting deeper than [`DEPTH_MAX`], and never allocates more than
//! the input's length for a declared array or map length (a 5-byte message cannot claim four billion elements).

use std::fmt;

/// Deepest nesting of arrays and maps accepted when decoding.
pub const DEPTH_MAX: usize = 64;

/// The extension type of timestamps (JavaScript `Date`s, notepack writes them this way).
pub const EXT_TIMESTAMP: i8 = -1;

/// A MessagePack value.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// `nil` (`null` and `undefined` in JavaScript).
    Nil,
    /// A boolean.
    Bool(bool),
    /// A signed integer (negative values, or any integer read as a signed form).
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float (32-bit floats are widened).
    F64(f64),
    /// A UTF-8 string.
    Str(String),
    /// Binary data (a Node `Buffer` / `ArrayBuffer`).
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, keys in the order read or written.
    Map(Vec<(Value, Value)>),
    /// An extension value: its type and data. Type -1 is a timestamp ([`Value::timestamp_ms`]).
    Ext(i8, Vec<u8>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::F64(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bin(b) => write!(f, "bin({} bytes)", b.len()),
            Value::Array(a) => f.debug_list().entries(a).finish(),
            Value::Map(m) => f
                .debug_map()
                .entries(m.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Ext(t, d) => write!(f, "ext({t}, {} bytes)", d.len()),
        }
    }
}

/// Why bytes are not one MessagePack value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("truncated MessagePack value")]
    Truncated,
    /// Bytes are left after the value.
    #[error("{0} bytes after the MessagePack value")]
    Trailing(usize),
    /// The reserved byte 0xc1.
    #[error("reserved MessagePack byte 0xc1")]
    Reserved,
    /// A string is not UTF-8.
    #[error("MessagePack string is not UTF-8")]
    Utf8,
    /// Nesting deeper than [`DEPTH_MAX`].
    #[error("MessagePack nesting deeper than {DEPTH_MAX}")]
    TooDeep,
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer (or a float with an integral value, as JavaScript numbers may be).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            Value::F64(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
            _ => None,
        }
    }

    /// The value under string key `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Milliseconds since the epoch of a timestamp extension value (ext -1, 4, 8 or 12 bytes), as a `Date` has.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let Value::Ext(EXT_TIMESTAMP, d) = self else {
            return None;
        };
        let (secs, nanos) = match d.len() {
            4 => (i64::from(u32::from_be_bytes(d[..4].try_into().ok()?)), 0u32),
            8 => {
                let v = u64::from_be_bytes(d[..8].try_into().ok()?);
                ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
            }
            12 => (
                i64::from_be_bytes(d[4..12].try_into().ok()?),
                u32::from_be_bytes(d[..4].try_into().ok()?),
            ),
            _ => return None,
        };
        secs.checked_mul(1000)?
            .checked_add(i64::from(nanos / 1_000_000))
    }

    /// The timestamp extension value of `ms` milliseconds since the epoch, in notepack's form.
    pub fn timestamp(ms: i64) -> Value {
        let secs = ms.div_euclid(1000);
        let nanos = (ms.rem_euclid(1000) * 1_000_000) as u32;
        let data = if (0..(1i64 << 34)).contains(&secs) {
            if nanos == 0 && secs < (1i64 << 32) {
                (secs as u32).to_be_bytes().to_vec()
            } else {
                ((u64::from(nanos) << 34) | secs as u64)
                    .to_be_bytes()
                    .to_vec()
            }
        } else {
            let mut d = nanos.to_be_bytes().to_vec();
            d.extend_from_slice(&secs.to_be_bytes());
            d
        };
        Value::Ext(EXT_TIMESTAMP, data)
    }
}

/// Appends `v` to `out` as notepack writes it.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::UInt(u) => encode_uint(*u, out),
        Value::Int(i) if *i >= 0 => encode_uint(*i as u64, out),
        Value::Int(i) => encode_neg(*i, out),
        Value::F64(x) => {
            out.push(0xcb);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Str(s) => {
            let n = s.len();
            if n < 32 {
                out.push(0xa0 | n as u8);
            } else {
                len_header(n, [0xd9, 0xda, 0xdb], out);
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            len_header(b.len(), [0xc4, 0xc5, 0xc6], out);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            let n = items.len();
            if n < 16 {
                out.push(0x90 | n as u8);
            } else if n < 0x1_0000 {
                out.push(0xdc);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdd);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(entries) => {
            let n = entries.len();
            if n < 16 {
                out.push(0x80 | n as u8);
            } else if n < 0x1_0000 {
                out.push(0xde);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdf);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for (k, v) in entries {
                encode_into(k, out);
                encode_into(v, out);
            }
        }
        Value::Ext(t, d) => {
            match d.len() {
                1 => out.push(0xd4),
                2 => out.push(0xd5),
                4 => out.push(0xd6),
                8 => out.push(0xd7),
                16 => out.push(0xd8),
                n => len_header(n, [0xc7, 0xc8, 0xc9], out),
            }
            out.push(*t as u8);
            out.extend_from_slice(d);
        }
    }
}

/// `v` as notepack writes it.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

fn len_header(n: usize, codes: [u8; 3], out: &mut Vec<u8>) {
    if n < 0x100 {
        out.push(codes[0]);
        out.push(n as u8);
    } else if n < 0x1_0000 {
        out.push(codes[1]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(codes[2]);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn encode_uint(u: u64, out: &mut Vec<u8>) {
    if u < 0x80 {
        out.push(u as u8);
    } else if u < 0x100 {
        out.extend_from_slice(&[0xcc, u as u8]);
    } else if u < 0x1_0000 {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u < 0x1_0000_0000 {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn encode_neg(i: i64, out: &mut Vec<u8>) {
    if i >= -32 {
        out.push(i as i8 as u8);
    } else if i >= -128 {
        out.extend_from_slice(&[0xd0, i as i8 as u8]);
    } else if i >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= -(1i64 << 31) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// Decodes exactly one value from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader { b: bytes, pos: 0 };
    let v = r.value(0)?;
    match bytes.len() - r.pos {
        0 => Ok(v),
        n => Err(DecodeError::Trailing(n)),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn len(&mut self, width: usize) -> Result<usize, DecodeError> {
        Ok(match width {
            1 => usize::from(self.byte()?),
            2 => usize::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn string(&mut self, n: usize) -> Result<Value, DecodeError> {
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|_| DecodeError::Utf8)
    }
    fn array(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        if depth >= DEPTH_MAX {
            return Err(DecodeError::TooDeep);
        }
        // Every element takes at least one byte: never reserve more than what is left.
        let mut items = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }
    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        if depth >= DEPTH_MAX {
            return Err(DecodeError::TooDeep);
        }
        let mut entries = Vec::with_capacity(n.min(self.remaining() / 2));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
    fn ext(&mut self, n: usize) -> Result<Value, DecodeError> {
        let t = self.byte()? as i8;
        Ok(Value::Ext(t, self.take(n)?.to_vec()))
    }
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => Value::UInt(u64::from(b)),
            0x80..=0x8f => return self.map(usize::from(b & 0x0f), depth),
            0x90..=0x9f => return self.array(usize::from(b & 0x0f), depth),
            0xa0..=0xbf => return self.string(usize::from(b & 0x1f)),
            0xc0 => Value::Nil,
            0xc1 => return Err(DecodeError::Reserved),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (b - 0xc4))?;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (b - 0xc7))?;
                return self.ext(n);
            }
            0xca => Value::F64(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => Value::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Value::UInt(u64::from(self.byte()?)),
            0xcd => Value::UInt(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Value::UInt(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Value::UInt(u64::from_be_bytes(self.be()?)),
            0xd0 => Value::Int(i64::from(self.byte()? as i8)),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.be()?)),
            0xd4..=0xd8 => return self.ext(1 << (b - 0xd4)),
            0xd9..=0xdb => {
                let n = self.len(1 << (b - 0xd9))?;
                return self.string(n);
            }
            0xdc | 0xdd => {
                let n = self.len(if b == 0xdc { 2 } else { 4 })?;
                return self.array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.len(if b == 0xde { 2 } else { 4 })?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::Int(i64::from(b as i8)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_hex::{hex, unhex};

    /// Bytes written by notepack.io 3.0.1 (`node -e 'require("notepack.io").encode(...)'`).
    #[test]
    fn integers_encode_as_notepack_does() {
        let v = Value::Array(vec![
            Value::UInt(70000),
            Value::Int(-70000),
            Value::UInt(1 << 32),
            Value::Int(-(1 << 33)),
            Value::UInt(1 << 53),
            Value::UInt(255),
            Value::Int(256),
            Value::Int(-33),
            Value::Int(-129),
        ]);
        let want = "99ce00011170d2fffeee90cf0000000100000000d3fffffffe00000000cf0020000000000000ccffcd0100d0dfd1ff7f";
        assert_eq!(hex(&encode(&v)), want);
        let back = decode(&unhex(want)).unwrap();
        let ints: Vec<i64> = match back {
            Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap()).collect(),
            _ => panic!("not an array"),
        };
        assert_eq!(
            ints,
            [
                70000,
                -70000,
                1 << 32,
                -(1 << 33),
                1 << 53,
                255,
                256,
                -33,
                -129
            ]
        );
    }

    #[test]
    fn dates_use_the_timestamp_extension_as_notepack_does() {
        // new Date(0), new Date(1000), new Date(1500), new Date(-1), new Date(2 ** 34 * 1000)
        let cases = [
            (0, "d6ff00000000"),
            (1000, "d6ff00000001"),
            (1500, "d7ff7735940000000001"),
            (-1, "c70cff3b8b87c0ffffffffffffffff"),
            ((1i64 << 34) * 1000, "c70cff000000000000000400000000"),
        ];
        for (ms, want) in cases {
            let v = Value::timestamp(ms);
            assert_eq!(hex(&encode(&v)), want, "{ms}");
            assert_eq!(
                decode(&unhex(want)).unwrap().timestamp_ms(),
                Some(ms),
                "{ms}"
            );
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(decode(b""), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc1]), Err(DecodeError::Reserved));
        assert_eq!(decode(&[0x01, 0x02]), Err(DecodeError::Trailing(1)));
        assert_eq!(decode(&[0xa2, 0xff, 0xfe]), Err(DecodeError::Utf8));
        // An array that claims 2^32-1 elements in 5 bytes: refused without reserving them.
        assert_eq!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
            Err(DecodeError::Truncated)
        );
        let deep = vec![0x91u8; DEPTH_MAX + 1];
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
        // Every prefix of a valid message fails cleanly.
        let full = unhex("93a661626331323383a47479706502a4646174619ba2657601ffcd012c");
        for n in 0..full.len() {
            assert!(decode(&full[..n]).is_err());
        }
    }
}
