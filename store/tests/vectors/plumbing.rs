//! The plumbing of `store/tests/vectors.rs`, in a file of its own so that
//! the vector tests of other crates of the workspace can include it by
//! path: where the vectors live, and comparing or rewriting them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("format-spec")
}

pub fn regenerating() -> bool {
    std::env::var("CAIRN_REGENERATE_VECTORS").as_deref() == Ok("1")
}

pub fn to_text<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

/// Writer direction: what this build produces must be the stored file,
/// byte for byte (or, when regenerating, becomes it). Returns the stored
/// vector, parsed, for the reader direction.
pub fn settle<T: Serialize + DeserializeOwned>(name: &str, produced: &T) -> T {
    let path = spec_dir().join(name);
    let text = to_text(produced);
    if regenerating() {
        // Atomically: other tests read some vectors while this one runs.
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, &text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with CAIRN_REGENERATE_VECTORS=1",
            path.display()
        )
    });
    if stored != text {
        let a: Value = serde_json::from_str(&stored).unwrap();
        let b: Value = serde_json::from_str(&text).unwrap();
        panic!(
            "format-spec/{name}: this build writes something other than the stored vector \
             (first difference at {}). The on-disk format changed: if that is deliberate, \
             regenerate with CAIRN_REGENERATE_VECTORS=1 and record it in format-spec/README.md",
            first_difference(&a, &b, "$").unwrap_or_else(|| "formatting".into())
        );
    }
    serde_json::from_str(&stored).unwrap()
}

pub fn first_difference(stored: &Value, now: &Value, at: &str) -> Option<String> {
    match (stored, now) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    None => return Some(format!("{at}.{k} (only in the stored file)")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{at}.{k} (only in what this build writes)"))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(v, w, &format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len())
                .then(|| format!("{at}: {} elements stored, {} now", x.len(), y.len()))
        }
        _ if stored == now => None,
        _ => {
            let cut = |v: &Value| {
                let s = v.to_string();
                if s.len() > 80 {
                    format!("{}…", &s[..80])
                } else {
                    s
                }
            };
            Some(format!("{at}: stored {}, now {}", cut(stored), cut(now)))
        }
    }
}

pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

pub fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}
