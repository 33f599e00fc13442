//! A minimal JSON document model with an order-preserving object and a compact writer
//! that emits what CouchDB emits (no whitespace, raw UTF-8, `\n`/`\"` style escapes).

use std::borrow::Cow;
use std::io::Write as _;

pub type Key = Cow<'static, str>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<Value>),
    Obj(Vec<(Key, Value)>),
}

/// An object from static keys.
pub fn obj(fields: Vec<(&'static str, Value)>) -> Value {
    Value::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect(),
    )
}

/// An object with owned keys (e.g. problem input ids).
pub fn dyn_obj(fields: Vec<(String, Value)>) -> Value {
    Value::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), v))
            .collect(),
    )
}

pub fn arr(items: Vec<Value>) -> Value {
    Value::Arr(items)
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Num(f)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Obj(f) => f.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Obj(f) => f.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Replaces field `key` (or appends it when missing). No-op on non-objects.
    pub fn set(&mut self, key: &'static str, v: Value) {
        if let Value::Obj(f) = self {
            match f.iter_mut().find(|(k, _)| k == key) {
                Some((_, slot)) => *slot = v,
                None => f.push((Cow::Borrowed(key), v)),
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The array at field `key`, if any.
    pub fn arr_mut(&mut self, key: &str) -> Option<&mut Vec<Value>> {
        match self.get_mut(key) {
            Some(Value::Arr(a)) => Some(a),
            _ => None,
        }
    }

    /// Adds `delta` to the integer at field `key` (missing = 0).
    pub fn bump(&mut self, key: &'static str, delta: i64) {
        let cur = self.get(key).and_then(Value::as_i64).unwrap_or(0);
        self.set(key, Value::Int(cur + delta));
    }

    /// Compact JSON. Object members are written after `out` holds whatever precedes them.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Num(f) => write_num(out, *f),
            Value::Str(s) => write_str(out, s),
            Value::Arr(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            Value::Obj(fields) => {
                out.push(b'{');
                write_members(out, fields, false);
                out.push(b'}');
            }
        }
    }
}

/// Writes `"k":v` pairs, with a leading comma when `comma_first`.
pub fn write_members(out: &mut Vec<u8>, fields: &[(Key, Value)], comma_first: bool) {
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 || comma_first {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        v.write(out);
    }
}

/// Floats as CouchDB (jiffy) prints them: shortest round-trip form, always with a
/// fraction or exponent.
fn write_num(out: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        out.extend_from_slice(b"null");
    } else if f.fract() == 0.0 && f.abs() < 1e15 {
        let _ = write!(out, "{f:.1}");
    } else {
        let _ = write!(out, "{f}");
    }
}

pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_json() {
        let v = obj(vec![
            ("a", Value::Int(-3)),
            ("b", "x\"y\\z\n\u{1}é".into()),
            (
                "c",
                arr(vec![Value::Null, true.into(), 1.5.into(), 2.0.into()]),
            ),
            ("d", obj(vec![])),
        ]);
        let mut out = Vec::new();
        v.write(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"a":-3,"b":"x\"y\\z\n\u0001é","c":[null,true,1.5,2.0],"d":{}}"#
        );
    }
}
