//! The fuzzing harness of `store/tests/fuzz.rs` (which describes it), in a
//! file of its own so that the fuzz tests of other crates of the workspace
//! can include it by path: the instrumented allocator, seeds and their
//! mutations, running a target, and the format-spec vectors.

#![allow(dead_code)]

use std::alloc::System;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

use cairn_store::format::frame::MAX_FRAME_RAW_LEN;
use cairn_store::format::pack::MAX_TRAILER_LEN;
use cairn_store::format::tree::MAX_FANOUT;

#[global_allocator]
pub static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator's counters are process-wide: targets run one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// What any decoder may request from the allocator: 1 MiB, and 16 bytes per
/// input byte (copies and parsed forms of the input).
pub const DECODE_BOUND: usize = 1 << 20;
/// What a frame decoder may request: also the largest raw frame.
pub const FRAME_BOUND: usize = MAX_FRAME_RAW_LEN as usize + (1 << 20);
/// Bytes of allocation allowed per input byte, on top of the bound.
pub const PER_INPUT_BYTE: usize = 16;

// ---------------------------------------------------------------------------
// The harness.

/// splitmix64: small, deterministic, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(target: &str) -> Rng {
        let base = std::env::var("CAIRN_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0u64);
        let mut seed = base ^ 0x6361_6972_6e66_757a;
        for b in target.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A little-endian length or count field of a seed.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub offset: usize,
    pub width: usize,
}

/// A starting input and where its length and count fields are.
#[derive(Debug, Clone)]
pub struct Seed {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    /// Whether random mutations start from it (large seeds are tried as they are).
    pub mutable: bool,
}

impl Seed {
    pub fn new(bytes: impl Into<Vec<u8>>, fields: Vec<Field>) -> Seed {
        Seed {
            bytes: bytes.into(),
            fields,
            mutable: true,
        }
    }

    pub fn plain(bytes: impl Into<Vec<u8>>) -> Seed {
        Seed::new(bytes, Vec::new())
    }
}

/// Values worth writing into a length field at `offset` of an input of `len` bytes.
pub fn boundary_values(field: Field, len: usize, current: u64) -> Vec<u64> {
    let len = len as u64;
    let rest = len.saturating_sub((field.offset + field.width) as u64);
    vec![
        0,
        1,
        2,
        len.wrapping_sub(1),
        len,
        len + 1,
        rest.wrapping_sub(1),
        rest,
        rest + 1,
        current.wrapping_sub(1),
        current.wrapping_add(1),
        current.wrapping_mul(2),
        current / 2,
        0x7f,
        0x80,
        0xff,
        0x7fff_ffff,
        0x8000_0000,
        u64::from(u32::MAX - 1),
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::from(MAX_TRAILER_LEN),
        u64::from(MAX_TRAILER_LEN) + 1,
        u64::from(MAX_FRAME_RAW_LEN),
        u64::from(MAX_FRAME_RAW_LEN) + 1,
        u64::from(MAX_FANOUT),
        u64::from(MAX_FANOUT) + 1,
        i64::MAX as u64,
        u64::MAX,
    ]
}

pub fn read_field(bytes: &[u8], f: Field) -> Option<u64> {
    let b = bytes.get(f.offset..f.offset + f.width)?;
    let mut word = [0u8; 8];
    word[..f.width].copy_from_slice(b);
    Some(u64::from_le_bytes(word))
}

pub fn write_field(bytes: &mut [u8], f: Field, value: u64) {
    if let Some(b) = bytes.get_mut(f.offset..f.offset + f.width) {
        b.copy_from_slice(&value.to_le_bytes()[..f.width]);
    }
}

/// Tokens that make JSON (and text) decoders take unusual paths.
pub const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "-0",
    "1e999",
    "-1e999",
    "0.5",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"..\"",
    "\"/\"",
    "\"../../x\"",
    "\"a/../b\"",
    "{}",
    "[]",
    "\n",
    "\r\n",
    " ",
    "\u{0}",
    "\u{7f}",
    "\u{1b}[2J",
    "é",
    "\u{ffff}",
    "ed25519:",
    "md5-",
    "-",
    "#",
    "/",
    "..",
    "%2F",
    "%",
    "9999-12-31T23:59:59Z",
    "-009999-01-01T00:00:00Z",
    "2025-01-01T00:00:00+99:99",
    "\"_attachments\"",
    "\"source_last_seq\"",
    "\"history\"",
];

/// One random input: a seed with 1 to 4 stacked mutations.
pub fn mutate(rng: &mut Rng, all: &[Seed]) -> Vec<u8> {
    let seeds: Vec<&Seed> = all.iter().filter(|s| s.mutable).collect();
    let seed = *rng.pick(&seeds);
    let mut b = seed.bytes.clone();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(13) {
            0 | 1 if !b.is_empty() => {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            2 if !b.is_empty() => {
                let at = rng.below(b.len());
                let any = rng.next() as u8;
                b[at] = *rng.pick(&[0x00, 0xff, 0x7f, 0x80, any]);
            }
            3 if !b.is_empty() => {
                let at = rng.below(b.len());
                b.truncate(at);
            }
            4 => {
                let n = 1 + rng.below(64);
                for _ in 0..n {
                    b.push(rng.next() as u8);
                }
            }
            5 if !b.is_empty() => {
                let start = rng.below(b.len());
                let end = start + rng.below(b.len() - start + 1);
                b.drain(start..end);
            }
            6 => {
                let other = &rng.pick(&seeds).bytes;
                let cut = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            7 | 8 if !seed.fields.is_empty() => {
                let f = *rng.pick(&seed.fields);
                let current = read_field(&b, f).unwrap_or(0);
                let values = boundary_values(f, b.len(), current);
                write_field(&mut b, f, *rng.pick(&values));
            }
            9 if b.len() >= 8 => {
                let width = *rng.pick(&[1, 2, 4, 8]);
                let f = Field {
                    offset: rng.below(b.len() - width + 1),
                    width,
                };
                let current = read_field(&b, f).unwrap_or(0);
                let values = boundary_values(f, b.len(), current);
                write_field(&mut b, f, *rng.pick(&values));
            }
            10 | 11 => {
                let token = rng.pick(TOKENS).as_bytes();
                let at = rng.below(b.len() + 1);
                if rng.one_in(2) && at < b.len() {
                    // Replace a run of similar bytes (a number, a word) by the token.
                    let class = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
                    let mut end = at;
                    while end < b.len() && class(b[end]) {
                        end += 1;
                    }
                    b.splice(at..end.max(at + 1), token.iter().copied());
                } else {
                    b.splice(at..at, token.iter().copied());
                }
            }
            12 if !b.is_empty() => {
                // Repeat a slice: long runs, deep nesting.
                let start = rng.below(b.len());
                let len = 1 + rng.below((b.len() - start).min(16));
                let times = 1 + rng.below(200);
                let slice = b[start..start + len].to_vec();
                for _ in 0..times {
                    b.splice(start..start, slice.iter().copied());
                }
            }
            _ => {}
        }
    }
    b
}

/// Where the numbers of a JSON text are: the length fields of text formats.
pub fn json_numbers(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i] == b':' {
            let mut start = i + 1;
            while start < text.len() && text[start] == b' ' {
                start += 1;
            }
            let mut end = start;
            while end < text.len() && (text[end].is_ascii_digit() || b"-+.eE".contains(&text[end]))
            {
                end += 1;
            }
            if end > start {
                spans.push((start, end));
            }
        }
        i += 1;
    }
    spans
}

/// Numbers worth putting where a JSON text has one.
pub const JSON_BOUNDARIES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e999",
    "0.5",
];

pub fn replace_spans(text: &[u8], spans: &[((usize, usize), &str)]) -> Vec<u8> {
    let mut out = text.to_vec();
    let mut sorted = spans.to_vec();
    sorted.sort_by_key(|((start, _), _)| std::cmp::Reverse(*start));
    for ((start, end), value) in sorted {
        out.splice(start..end, value.bytes());
    }
    out
}

/// The systematic inputs of a target: every seed as is, every field of
/// every seed set to every boundary value, and in JSON seeds every number
/// set to every boundary value, and every pair of numbers to large ones
/// (sums overflow).
pub fn systematic_inputs(seeds: &[Seed]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in seeds {
        out.push(s.bytes.clone());
        if s.bytes.first() == Some(&b'{') {
            let numbers = json_numbers(&s.bytes);
            for &span in &numbers {
                for value in JSON_BOUNDARIES {
                    out.push(replace_spans(&s.bytes, &[(span, value)]));
                }
            }
            for (i, &a) in numbers.iter().enumerate() {
                for &b in &numbers[i + 1..] {
                    for value in ["9223372036854775808", "18446744073709551615"] {
                        out.push(replace_spans(&s.bytes, &[(a, value), (b, value)]));
                    }
                }
            }
        }
        for &f in &s.fields {
            let current = read_field(&s.bytes, f).unwrap_or(0);
            for v in boundary_values(f, s.bytes.len(), current) {
                let mut b = s.bytes.clone();
                write_field(&mut b, f, v);
                out.push(b);
            }
        }
    }
    out
}

pub fn iterations(default: u64) -> u64 {
    std::env::var("CAIRN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `decode` on one input: it must return (not panic) and stay within
/// `bound` bytes of allocation requests. Returns the failure, if any.
pub fn run_one(
    bound: usize,
    input: &[u8],
    decode: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<bool, String> {
    let region = Region::new(GLOBAL);
    let outcome = catch_unwind(AssertUnwindSafe(|| decode(input)));
    let requested = region.change().bytes_allocated;
    let bound = bound + PER_INPUT_BYTE * input.len();
    match outcome {
        Err(payload) => Err(format!("panicked: {}", panic_message(&*payload))),
        Ok(_) if requested > bound => Err(format!(
            "requested {requested} bytes from the allocator, over the bound of {bound}"
        )),
        Ok(accepted) => Ok(accepted),
    }
}

/// Fuzzes one target; fails with the first bad input in hex.
pub fn fuzz(
    target: &str,
    seeds: &[Seed],
    bound: usize,
    default_iterations: u64,
    mut decode: impl FnMut(&[u8]) -> bool,
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(target);
    let random = iterations(default_iterations);
    let started = std::time::Instant::now();
    let (mut count, mut accepted) = (0u64, 0u64);
    let systematic = systematic_inputs(seeds);
    let total = systematic.len() as u64 + random;
    for n in 0..total {
        let input = match systematic.get(n as usize) {
            Some(input) => input.clone(),
            None => mutate(&mut rng, seeds),
        };
        count += 1;
        match run_one(bound, &input, &mut decode) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(failure) => panic!(
                "fuzz target {target}: input {count} {failure}\ninput ({} bytes): {}",
                input.len(),
                hex::encode(&input)
            ),
        }
    }
    eprintln!(
        "fuzz target {target}: {count} inputs, {accepted} accepted, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `{"<key>":[[[…]]]}` nested `depth` deep: recursion must be bounded.
pub fn deeply_nested(key: &str, depth: usize) -> Seed {
    let mut text = format!("{{\"{key}\":");
    text.push_str(&"[".repeat(depth));
    text.push_str(&"]".repeat(depth));
    text.push('}');
    Seed {
        mutable: false,
        ..Seed::plain(text)
    }
}

// ---------------------------------------------------------------------------
// The format-spec vectors.

pub fn spec(name: &str) -> Value {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../format-spec")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

pub fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}
