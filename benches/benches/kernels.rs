//! Criterion benchmarks of Cairn's kernels: chunking, hashing, cut
//! prediction, frame compression, and the pack, index, tree and manifest
//! formats; plus the single-core ceiling of the per-byte backup and restore
//! pipelines, which end-to-end figures are compared with.
//!
//! Inputs are generated deterministically, no fixture files: an ~8 MiB
//! CouchDB `_all_docs?include_docs=true` dump (one document per line), the
//! same dump with 2 % of its documents edited, 8 MiB of random bytes and
//! 8 MiB of zeros.
//!
//! `cargo bench -p cairn-benches --bench kernels [-- FILTER]`, e.g. `-- ceiling`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use cairn_store::format::chunker::{Chunker, ChunkerParams, ChunkingPolicy};
use cairn_store::format::cutter::{CutStats, Cutter, ParentChunks};
use cairn_store::format::frame::{Frame, FrameBuilder, decode_frame};
use cairn_store::format::index::{Index, IndexedPack, decode_index, encode_index};
use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::{
    Item, ItemKind, MANIFEST_VERSION, Manifest, SourceInfo, SourceKind, Trust, decode_manifest,
};
use cairn_store::format::pack::{FOOTER_LEN, PackWriter, decode_pack, decode_trailer_from_tail};
use cairn_store::format::tree::{TreeBuilder, TreeEntry, TreeParams, build_tree};
use cairn_store::id::{BlobId, IdSet, IndexId, RepoId};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};

/// Size of each generated input.
const INPUT_LEN: usize = 8 << 20;
/// Raw bytes per frame (`CompressionParams::DEFAULT.frame_target_len`).
const FRAME_LEN: usize = 512 << 10;
/// What the backup's reader hands the cutter at a time (`SEGMENT_LEN` in ops/backup.rs).
const SEGMENT_LEN: usize = 4 << 20;
/// The pack size benchmarked (the default `pack_target_len` is 8 MiB; trailer
/// work scales linearly with the pack).
const PACK_LEN: usize = 16 << 20;
/// Share of the JSON documents the "next day" edits, in 1/1000.
const EDITED_PER_MILLE: u64 = 20;

// ---------------------------------------------------------------------------
// Inputs

/// splitmix64: deterministic and fast.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Skewed towards the front of a list (roughly Zipf-like word frequencies).
    fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u * n as f64) as usize).min(n - 1)
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
}

fn hex32(a: u64, b: u64) -> String {
    format!("{a:016x}{b:016x}")
}

/// The id of the `i`th member of a pool of referenced documents (users, courses).
fn pool_id(pool: u64, i: u64) -> String {
    let mut r = Rng(pool.wrapping_mul(1_000_003) ^ i);
    hex32(r.next(), r.next())
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "this", "are", "or", "from", "at", "which", "an", "but", "have", "we",
    "can", "you", "all", "they", "will", "one", "more", "about", "their", "there", "when",
    "would", "what", "so", "if", "out", "up", "how", "each", "other", "lesson", "course",
    "student", "answer", "question", "exercise", "module", "review", "draft", "chapter", "quiz",
    "project", "group", "deadline", "feedback", "grade", "example", "solution", "problem",
    "method", "result", "theory", "practice", "reading", "notes", "video", "slide", "lecture",
    "assignment", "submission", "rubric", "section", "topic", "summary", "discussion", "reply",
    "thread", "teacher", "class", "school", "semester", "week", "today", "tomorrow", "yesterday",
    "again", "please", "thanks", "great", "good", "better", "clear", "confusing", "important",
    "simple", "difficult", "interesting", "useful", "missing", "correct", "wrong", "final",
    "first", "second", "third", "next", "last", "new", "old", "long", "short", "small", "large",
    "equation", "function", "variable", "graph", "table", "data", "sample", "experiment",
    "history", "biology", "chemistry", "physics", "algebra", "geometry", "literature", "essay",
    "poem", "novel", "author", "source", "reference", "citation", "paragraph", "sentence",
    "grammar", "vocabulary", "translation", "language", "map", "river", "mountain", "climate",
    "energy", "cell", "molecule", "reaction", "force", "motion", "number", "fraction", "ratio",
    "percent", "angle", "triangle", "circle", "proof", "theorem", "lemma", "definition",
    "understand", "explain", "describe", "compare", "analyse", "calculate", "measure", "observe",
    "submit", "upload", "check", "remember", "forget", "finish", "start", "continue", "repeat",
];

#[rustfmt::skip]
const TAGS: &[&str] = &[
    "homework", "exam", "revision", "lab", "reading", "urgent", "optional", "group", "bonus",
    "week-1", "week-2", "week-3", "week-4", "term-2", "math", "science", "english", "history",
];

#[rustfmt::skip]
const LOCALES: &[&str] = &["en-GB", "en-US", "fr-FR", "de-DE", "es-ES", "nl-NL", "pt-BR"];
#[rustfmt::skip]
const DOMAINS: &[&str] = &["example.org", "school.example", "mail.example.com", "uni.example"];
const COLORS: &[&str] = &["yellow", "green", "blue", "pink", "orange", "none"];
const CLIENTS: &[&str] = &["web", "ios", "android", "desktop"];

/// Document kinds and their fields, in output order.
#[rustfmt::skip]
const KINDS: &[(&str, &[&str])] = &[
    ("course_progress", &[
        "user", "course", "lessons_total", "completed", "percent", "client", "created_at",
        "last_seen",
    ]),
    ("forum_post", &[
        "author", "thread", "title", "body", "tags", "votes", "edited", "created_at", "updated_at",
    ]),
    ("grade", &[
        "student", "assignment", "score", "max_score", "feedback", "graded_by", "submitted_at",
        "updated_at",
    ]),
    ("user_profile", &[
        "username", "display_name", "email", "locale", "bio", "settings", "created_at",
        "last_login",
    ]),
    ("note", &[
        "owner", "course", "lesson", "text", "color", "pinned", "created_at", "updated_at",
    ]),
];

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for seconds since 1970 (civil-from-days, H. Hinnant).
fn iso(secs: u64, millis: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn timestamp(rng: &mut Rng) -> String {
    // Within 2023-2025.
    let secs = 1_672_531_200 + rng.below(3 * 365 * 86_400);
    format!("\"{}\"", iso(secs, rng.below(1000)))
}

fn prose(rng: &mut Rng, words: u64, out: &mut String) {
    out.push('"');
    let mut capital = true;
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        let w = WORDS[rng.skewed(WORDS.len())];
        if capital {
            let mut cs = w.chars();
            if let Some(c) = cs.next() {
                out.push(c.to_ascii_uppercase());
                out.push_str(cs.as_str());
            }
            capital = false;
        } else {
            out.push_str(w);
        }
        if i + 1 == words || rng.chance(90) {
            out.push('.');
            capital = true;
        } else if rng.chance(60) {
            out.push(',');
        }
    }
    out.push('"');
}

fn title_case(rng: &mut Rng, words: u64, out: &mut String) {
    out.push('"');
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        let w = WORDS[rng.skewed(WORDS.len())];
        let mut cs = w.chars();
        if let Some(c) = cs.next() {
            out.push(c.to_ascii_uppercase());
            out.push_str(cs.as_str());
        }
    }
    out.push('"');
}

/// A JSON value for a field.
fn field(key: &str, rng: &mut Rng) -> String {
    let mut out = String::new();
    match key {
        "user" | "author" | "student" | "owner" | "graded_by" => {
            write!(out, "\"{}\"", pool_id(1, rng.below(3000))).unwrap();
        }
        "course" | "assignment" => write!(out, "\"{}\"", pool_id(2, rng.below(400))).unwrap(),
        "thread" => write!(out, "\"{}\"", pool_id(3, rng.below(2000))).unwrap(),
        "lessons_total" => write!(out, "{}", rng.range(5, 60)).unwrap(),
        "completed" => {
            out.push('[');
            let n = rng.below(30);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                write!(out, "{}", i + 1).unwrap();
            }
            out.push(']');
        }
        "percent" => write!(out, "{}.{}", rng.below(100), rng.below(10)).unwrap(),
        "score" => write!(out, "{}.{}", rng.below(100), rng.below(100)).unwrap(),
        "max_score" => out.push_str(["100", "50", "20", "10"][rng.below(4) as usize]),
        "votes" | "lesson" => write!(out, "{}", rng.skewed(200)).unwrap(),
        "edited" | "pinned" => out.push_str(if rng.chance(200) { "true" } else { "false" }),
        "client" => write!(out, "\"{}\"", rng.pick(CLIENTS)).unwrap(),
        "color" => write!(out, "\"{}\"", rng.pick(COLORS)).unwrap(),
        "locale" => write!(out, "\"{}\"", rng.pick(LOCALES)).unwrap(),
        "title" => {
            let n = rng.range(3, 8);
            title_case(rng, n, &mut out);
        }
        "display_name" => title_case(rng, 2, &mut out),
        "body" => {
            let n = rng.range(10, 120);
            prose(rng, n, &mut out);
        }
        "text" => {
            let n = rng.range(5, 60);
            prose(rng, n, &mut out);
        }
        "feedback" | "bio" => {
            let n = rng.below(40);
            prose(rng, n, &mut out);
        }
        "tags" => {
            out.push('[');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push(',');
                }
                write!(out, "\"{}\"", rng.pick(TAGS)).unwrap();
            }
            out.push(']');
        }
        "username" => write!(
            out,
            "\"{}{}\"",
            WORDS[rng.skewed(WORDS.len())],
            rng.below(10_000)
        )
        .unwrap(),
        "email" => write!(
            out,
            "\"{}.{}{}@{}\"",
            WORDS[rng.below(WORDS.len() as u64) as usize],
            WORDS[rng.below(WORDS.len() as u64) as usize],
            rng.below(100),
            rng.pick(DOMAINS)
        )
        .unwrap(),
        "settings" => write!(
            out,
            "{{\"theme\":\"{}\",\"notifications\":{},\"digest\":\"{}\"}}",
            ["light", "dark", "system"][rng.below(3) as usize],
            rng.chance(700),
            ["daily", "weekly", "never"][rng.below(3) as usize]
        )
        .unwrap(),
        _ => out.push_str(&timestamp(rng)), // *_at, last_seen, last_login
    }
    out
}

struct Doc {
    id: String,
    rev_gen: u64,
    rev_hash: String,
    kind: usize,
    fields: Vec<String>,
}

impl Doc {
    fn render(&self, out: &mut Vec<u8>) {
        let (kind, keys) = KINDS[self.kind];
        let (id, rev) = (&self.id, format!("{}-{}", self.rev_gen, self.rev_hash));
        write!(
            Utf8(out),
            "{{\"id\":\"{id}\",\"key\":\"{id}\",\"value\":{{\"rev\":\"{rev}\"}},\
             \"doc\":{{\"_id\":\"{id}\",\"_rev\":\"{rev}\",\"type\":\"{kind}\""
        )
        .unwrap();
        for (k, v) in keys.iter().zip(&self.fields) {
            write!(Utf8(out), ",\"{k}\":{v}").unwrap();
        }
        out.extend_from_slice(b"}}");
    }

    /// A day's edit: a new revision, one to three fields changed.
    fn edit(&mut self, rng: &mut Rng) {
        self.rev_gen += 1;
        self.rev_hash = hex32(rng.next(), rng.next());
        let keys = KINDS[self.kind].1;
        for _ in 0..rng.range(1, 3) {
            let i = rng.below(keys.len() as u64) as usize;
            self.fields[i] = field(keys[i], rng);
        }
    }
}

/// `fmt::Write` into a byte vector.
struct Utf8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `_all_docs?include_docs=true` as CouchDB 3 streams it.
fn all_docs(docs: &[Doc]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INPUT_LEN + (1 << 20));
    write!(
        Utf8(&mut out),
        "{{\"total_rows\":{},\"offset\":0,\"rows\":[\r\n",
        docs.len()
    )
    .unwrap();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\r\n");
        }
        d.render(&mut out);
    }
    out.extend_from_slice(b"\r\n]}\n");
    out
}

/// A dump of about [`INPUT_LEN`] bytes and the same with 2 % of the documents edited.
fn couchdb_dumps() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0xCA1E);
    let mut docs = Vec::new();
    let mut len = 0usize;
    while len < INPUT_LEN {
        let kind = rng.below(KINDS.len() as u64) as usize;
        let fields: Vec<String> = KINDS[kind].1.iter().map(|k| field(k, &mut rng)).collect();
        let doc = Doc {
            id: hex32(rng.next(), rng.next()),
            rev_gen: rng.range(1, 12),
            rev_hash: hex32(rng.next(), rng.next()),
            kind,
            fields,
        };
        let mut line = Vec::new();
        doc.render(&mut line);
        len += line.len() + 3;
        docs.push(doc);
    }
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    let original = all_docs(&docs);
    for d in &mut docs {
        if rng.chance(EDITED_PER_MILLE) {
            d.edit(&mut rng);
        }
    }
    (original, all_docs(&docs))
}

struct Input {
    name: &'static str,
    data: Vec<u8>,
    /// The chunk class a backup gives it: 2 KiB for the JSON, 64 KiB for
    /// binary (the policy gives content with NUL bytes the largest chunks).
    params: ChunkerParams,
}

struct Inputs {
    json: Input,
    random: Input,
    zeros: Input,
    /// The JSON with 2 % of the documents edited.
    json_edited: Vec<u8>,
}

impl Inputs {
    fn all(&self) -> [&Input; 3] {
        [&self.json, &self.random, &self.zeros]
    }
}

fn class_2k() -> ChunkerParams {
    ChunkingPolicy::DEFAULT.params(2048)
}

fn class_64k() -> ChunkerParams {
    ChunkingPolicy::DEFAULT.params(64 * 1024)
}

fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let (json, json_edited) = couchdb_dumps();
        let mut rng = Rng(42);
        let random: Vec<u8> = (0..INPUT_LEN / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        let inputs = Inputs {
            json: Input {
                name: "json",
                data: json,
                params: class_2k(),
            },
            random: Input {
                name: "random",
                data: random,
                params: class_64k(),
            },
            zeros: Input {
                name: "zeros",
                data: vec![0; INPUT_LEN],
                params: class_64k(),
            },
            json_edited,
        };
        for input in inputs.all() {
            let chosen = ChunkingPolicy::DEFAULT.choose(&input.data).avg_len;
            let l1 = zstd_ratio(&input.data, 1);
            eprintln!(
                "input {}: {} bytes, {} chunks of the {} KiB class; zstd-1 ratio {l1:.2} \
                 (the policy would choose {} KiB chunks)",
                input.name,
                input.data.len(),
                chunks(&input.data, input.params).len(),
                input.params.avg_len / 1024,
                chosen / 1024
            );
        }
        inputs
    })
}

fn zstd_ratio(data: &[u8], level: i32) -> f64 {
    let frames = frames(data, &chunks(data, class_2k()), level);
    let stored: usize = frames.iter().map(|f| f.payload.len()).sum();
    data.len() as f64 / stored as f64
}

// ---------------------------------------------------------------------------
// Helpers: the pipeline steps as the backup and restore run them

/// (offset, length, id) of each chunk of `data`.
fn chunks(data: &[u8], params: ChunkerParams) -> Vec<(usize, usize, BlobId)> {
    let mut lens = Vec::new();
    Chunker::new(params).unwrap().split(data, true, &mut lens);
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            let len = len as usize;
            let chunk = (at, len, BlobId::of(&data[at..at + len]));
            at += len;
            chunk
        })
        .collect()
}

/// Groups chunks into frames of [`FRAME_LEN`] raw bytes and compresses each.
fn frames(data: &[u8], chunks: &[(usize, usize, BlobId)], level: i32) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut frame = FrameBuilder::default();
    for &(at, len, id) in chunks {
        frame.push(id, &data[at..at + len]);
        if frame.raw_len() >= FRAME_LEN {
            out.push(frame.take().compress(level).unwrap());
        }
    }
    if !frame.is_empty() {
        out.push(frame.compress(level).unwrap());
    }
    out
}

fn copy_frame(f: &Frame) -> Frame {
    Frame {
        codec: f.codec,
        raw_len: f.raw_len,
        payload: f.payload.clone(),
        blobs: f.blobs.clone(),
    }
}

/// Feeds `data` to a cutter in segments as the backup's reader does, calling
/// `each` with every run of chunks (offset in `data`, lengths, ids).
fn cut_stream(
    mut cutter: Cutter,
    data: &[u8],
    mut each: impl FnMut(usize, &[u32], &[BlobId]),
) -> CutStats {
    let (mut lens, mut ids) = (Vec::with_capacity(4096), Vec::with_capacity(4096));
    let mut pos = 0;
    loop {
        let end = (pos + SEGMENT_LEN).min(data.len());
        let eof = end == data.len();
        lens.clear();
        ids.clear();
        let used = cutter.cut(&data[pos..end], eof, &mut lens, &mut ids);
        each(pos, &lens, &ids);
        pos += used;
        if eof {
            assert_eq!(pos, data.len());
            return cutter.stats;
        }
    }
}

/// A first backup's per-byte work, as the README's "chunking + hashing +
/// zstd": cut (no parent) and hash every chunk, gather the chunks into
/// frames, compress each. With `full`, also what the ingest thread does per
/// chunk besides: the dedup set and the content tree (whose nodes are framed
/// and compressed too). Returns the stored bytes.
fn first_backup(data: &[u8], params: ChunkerParams, level: i32, full: bool) -> usize {
    let mut stored = 0;
    let mut data_frame = FrameBuilder::default();
    let mut tree_frame = FrameBuilder::default();
    let mut pending: IdSet<BlobId> = IdSet::default();
    let mut tree = TreeBuilder::new(TreeParams::DEFAULT);
    let mut nodes = Vec::new();
    let mut add = |frame: &mut FrameBuilder, id: BlobId, bytes: &[u8]| {
        frame.push(id, bytes);
        if frame.raw_len() >= FRAME_LEN {
            stored += frame.take().compress(level).unwrap().payload.len();
        }
    };
    let cutter = Cutter::new(Chunker::new(params).unwrap(), None);
    cut_stream(cutter, data, |mut at, lens, ids| {
        for (&len, &id) in lens.iter().zip(ids) {
            let chunk = &data[at..at + len as usize];
            at += len as usize;
            if !full {
                add(&mut data_frame, id, chunk);
                continue;
            }
            if pending.insert(id) {
                add(&mut data_frame, id, chunk);
            }
            tree.push(id, u64::from(len), &mut nodes);
            for node in nodes.drain(..) {
                if pending.insert(node.id) {
                    add(&mut tree_frame, node.id, &node.bytes);
                }
            }
        }
    });
    if full {
        tree.finish(&mut nodes);
        for node in nodes.drain(..) {
            if pending.insert(node.id) {
                add(&mut tree_frame, node.id, &node.bytes);
            }
        }
    }
    for frame in [data_frame, tree_frame] {
        if !frame.is_empty() {
            stored += frame.compress(level).unwrap().payload.len();
        }
    }
    stored
}

/// An incremental backup's per-byte work: the cutter predicting from the
/// parent (hashing every chunk); with `known`, also the dedup lookup, the
/// content tree, and framing + compressing the new chunks. Returns
/// (chunks, new chunks, stored bytes).
fn incremental(
    data: &[u8],
    parent: &[(BlobId, u32)],
    known: Option<&IdSet<BlobId>>,
    level: i32,
) -> (usize, usize, usize) {
    let cutter = Cutter::new(
        Chunker::new(class_2k()).unwrap(),
        Some(ParentChunks::new(parent.to_vec())),
    );
    let (mut count, mut new, mut stored) = (0, 0, 0);
    let mut frame = FrameBuilder::default();
    let mut tree = TreeBuilder::new(TreeParams::DEFAULT);
    let mut nodes = Vec::new();
    cut_stream(cutter, data, |mut at, lens, ids| {
        count += lens.len();
        let Some(known) = known else { return };
        for (&len, &id) in lens.iter().zip(ids) {
            if !known.contains(&id) {
                new += 1;
                frame.push(id, &data[at..at + len as usize]);
                if frame.raw_len() >= FRAME_LEN {
                    stored += frame.take().compress(level).unwrap().payload.len();
                }
            }
            at += len as usize;
            tree.push(id, u64::from(len), &mut nodes);
            nodes.clear(); // hashed, not stored here: about 1 % of the data
        }
    });
    if known.is_some() {
        tree.finish(&mut nodes);
        if !frame.is_empty() {
            stored += frame.compress(level).unwrap().payload.len();
        }
    }
    (count, new, stored)
}

/// A restore's per-byte work: decode every frame and check every chunk's hash.
fn restore(frames: &[Frame]) -> usize {
    let mut total = 0;
    for f in frames {
        let raw = decode_frame(f.codec, &f.payload, f.raw_len).unwrap();
        for b in &f.blobs {
            let chunk = &raw[b.offset as usize..(b.offset + b.len) as usize];
            assert!(BlobId::of(chunk) == b.id);
            total += chunk.len();
        }
    }
    total
}

/// One rayon thread: the cutter hashes on rayon, and the ceiling is per core.
fn one_thread() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "bench-1-thread".into())
            .build()
            .unwrap()
    })
}

/// The parent chunk list of the unedited JSON.
fn json_parent() -> &'static Vec<(BlobId, u32)> {
    static PARENT: OnceLock<Vec<(BlobId, u32)>> = OnceLock::new();
    PARENT.get_or_init(|| {
        chunks(&inputs().json.data, class_2k())
            .into_iter()
            .map(|(_, len, id)| (id, len as u32))
            .collect()
    })
}

fn slow(group: &mut BenchmarkGroup<'_, WallTime>) {
    // Tens of milliseconds per iteration: the same iteration count per sample.
    group.sampling_mode(SamplingMode::Flat);
}

// ---------------------------------------------------------------------------
// Benchmarks

fn chunking(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunking");
    for input in inputs().all() {
        g.throughput(Throughput::BytesDecimal(input.data.len() as u64));
        for (class, params) in [("2KiB", class_2k()), ("64KiB", class_64k())] {
            let chunker = Chunker::new(params).unwrap();
            let mut lens = Vec::with_capacity(input.data.len() / 512);
            g.bench_function(BenchmarkId::new(class, input.name), |b| {
                b.iter(|| {
                    lens.clear();
                    black_box(chunker.split(&input.data, true, &mut lens))
                });
            });
        }
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hashing");
    for input in inputs().all() {
        let data = &input.data;
        g.throughput(Throughput::BytesDecimal(data.len() as u64));
        for (class, params) in [("2KiB", class_2k()), ("64KiB", class_64k())] {
            let mut lens = Vec::new();
            Chunker::new(params).unwrap().split(data, true, &mut lens);
            let mut ids = Vec::with_capacity(lens.len());
            g.bench_function(
                BenchmarkId::new(format!("chunks_{class}"), input.name),
                |b| {
                    b.iter(|| {
                        ids.clear();
                        let mut at = 0;
                        for &len in &lens {
                            ids.push(BlobId::of(&data[at..at + len as usize]));
                            at += len as usize;
                        }
                        black_box(&ids);
                    });
                },
            );
        }
        g.bench_function(BenchmarkId::new("whole", input.name), |b| {
            b.iter(|| black_box(BlobId::of(data)));
        });
    }
    g.finish();
}

fn cutter(c: &mut Criterion) {
    let inputs = inputs();
    let parent = json_parent();
    let chunker = Chunker::new(class_2k()).unwrap();
    // Prediction must give exactly the plain cuts; and say how much it predicted.
    let mut predicted = Vec::new();
    let stats = cut_stream(
        Cutter::new(chunker, Some(ParentChunks::new(parent.clone()))),
        &inputs.json_edited,
        |_, lens, ids| predicted.extend(ids.iter().copied().zip(lens.iter().copied())),
    );
    let plain = chunks(&inputs.json_edited, class_2k());
    assert!(
        plain
            .iter()
            .map(|&(_, len, id)| (id, len as u32))
            .eq(predicted.iter().copied())
    );
    let parent_ids: IdSet<BlobId> = parent.iter().map(|&(id, _)| id).collect();
    eprintln!(
        "cutter: 2 % of documents edited: {} chunks, {} predicted, {} by CDC, {} new",
        plain.len(),
        stats.predicted,
        stats.scanned,
        plain
            .iter()
            .filter(|(_, _, id)| !parent_ids.contains(id))
            .count()
    );

    let mut g = c.benchmark_group("cutter");
    slow(&mut g);
    for (threads, pool) in [("1thread", Some(one_thread())), ("pool", None)] {
        g.throughput(Throughput::BytesDecimal(inputs.json.data.len() as u64));
        g.bench_function(
            BenchmarkId::new(format!("no_parent_{threads}"), "json"),
            |b| {
                b.iter(|| {
                    on(pool, || {
                        cut_stream(Cutter::new(chunker, None), &inputs.json.data, |_, _, _| {})
                    })
                });
            },
        );
        // The parent of the edited dump, and (all predicted) of itself.
        for (edits, data) in [("2pct", &inputs.json_edited), ("same", &inputs.json.data)] {
            g.throughput(Throughput::BytesDecimal(data.len() as u64));
            g.bench_function(
                BenchmarkId::new(format!("parent_{edits}_{threads}"), "json"),
                |b| {
                    b.iter_batched(
                        || ParentChunks::new(parent.clone()),
                        |p| {
                            on(pool, || {
                                cut_stream(Cutter::new(chunker, Some(p)), data, |_, _, _| {})
                            })
                        },
                        BatchSize::LargeInput,
                    );
                },
            );
        }
    }
    g.finish();
}

/// Runs `f` in `pool`, or on the caller (rayon's global pool) without one.
fn on<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("compression");
    slow(&mut g);
    for input in inputs().all() {
        let data = &input.data;
        let chunks = chunks(data, input.params);
        g.throughput(Throughput::BytesDecimal(data.len() as u64));
        for level in [1, 3] {
            g.bench_function(
                BenchmarkId::new(format!("compress_l{level}"), input.name),
                |b| {
                    b.iter(|| black_box(frames(data, &chunks, level)));
                },
            );
            let compressed = frames(data, &chunks, level);
            let stored: usize = compressed.iter().map(|f| f.payload.len()).sum();
            eprintln!(
                "compression: {} at level {level}: {} frames, ratio {:.2}",
                input.name,
                compressed.len(),
                data.len() as f64 / stored as f64
            );
            g.bench_function(
                BenchmarkId::new(format!("decode_l{level}"), input.name),
                |b| {
                    b.iter(|| {
                        for f in &compressed {
                            black_box(decode_frame(f.codec, &f.payload, f.raw_len).unwrap());
                        }
                    });
                },
            );
        }
    }
    g.finish();
}

fn ceiling(c: &mut Criterion) {
    let inputs = inputs();
    let pool = one_thread();
    let mut g = c.benchmark_group("ceiling");
    slow(&mut g);
    for input in [&inputs.json, &inputs.random] {
        g.throughput(Throughput::BytesDecimal(input.data.len() as u64));
        for level in [1, 3] {
            g.bench_function(
                BenchmarkId::new(format!("first_backup_l{level}"), input.name),
                |b| {
                    b.iter(|| {
                        pool.install(|| first_backup(&input.data, input.params, level, false))
                    })
                },
            );
        }
    }
    let json = &inputs.json;
    g.throughput(Throughput::BytesDecimal(json.data.len() as u64));
    g.bench_function(BenchmarkId::new("first_backup_full_l3", "json"), |b| {
        b.iter(|| pool.install(|| first_backup(&json.data, json.params, 3, true)));
    });

    let parent = json_parent();
    let known: IdSet<BlobId> = parent.iter().map(|&(id, _)| id).collect();
    let edited = &inputs.json_edited;
    let (count, new, stored) = incremental(edited, parent, Some(&known), 3);
    eprintln!("ceiling: incremental: {count} chunks, {new} new, {stored} bytes stored at level 3");
    g.throughput(Throughput::BytesDecimal(edited.len() as u64));
    g.bench_function(BenchmarkId::new("incremental", "json"), |b| {
        b.iter(|| pool.install(|| incremental(edited, parent, None, 3)));
    });
    g.bench_function(BenchmarkId::new("incremental_full_l3", "json"), |b| {
        b.iter(|| pool.install(|| incremental(edited, parent, Some(&known), 3)));
    });

    for (input, level) in [(&inputs.json, 1), (&inputs.json, 3), (&inputs.random, 3)] {
        let frames = frames(&input.data, &chunks(&input.data, input.params), level);
        g.throughput(Throughput::BytesDecimal(input.data.len() as u64));
        g.bench_function(
            BenchmarkId::new(format!("restore_l{level}"), input.name),
            |b| {
                b.iter(|| pool.install(|| restore(&frames)));
            },
        );
    }
    g.finish();
}

/// A full pack of compressed JSON chunks (the JSON's frames repeated under
/// other ids until the pack reaches [`PACK_LEN`]).
fn json_pack_frames() -> Vec<Frame> {
    let json = &inputs().json;
    let base = frames(&json.data, &chunks(&json.data, json.params), 3);
    let mut out = Vec::new();
    let mut len = 8;
    for copy in 0u64.. {
        for f in &base {
            let mut f = copy_frame(f);
            for b in &mut f.blobs {
                b.id.0[..8].copy_from_slice(&copy.to_le_bytes());
            }
            len += f.payload.len();
            out.push(f);
            if len >= PACK_LEN {
                return out;
            }
        }
    }
    unreachable!()
}

fn pack(c: &mut Criterion) {
    let frames = json_pack_frames();
    let mut w = PackWriter::new();
    for f in &frames {
        w.add_frame(copy_frame(f));
    }
    let (id, bytes, trailer) = w.finish();
    let trailer_len = trailer.encode().len();
    let tail = &bytes[bytes.len() - trailer_len - FOOTER_LEN..];
    let blobs = trailer.blobs.len() as u64;
    eprintln!(
        "pack: {} bytes, {} frames, {blobs} blobs, trailer {trailer_len} bytes",
        bytes.len(),
        trailer.frames.len()
    );

    let mut g = c.benchmark_group("pack");
    slow(&mut g);
    g.throughput(Throughput::BytesDecimal(bytes.len() as u64));
    g.bench_function("write_16MiB", |b| {
        b.iter_batched(
            || frames.iter().map(copy_frame).collect::<Vec<_>>(),
            |frames| {
                let mut w = PackWriter::new();
                for f in frames {
                    w.add_frame(f);
                }
                w.finish()
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("decode_pack_16MiB", |b| {
        b.iter(|| decode_pack(&bytes, id).unwrap());
    });
    g.throughput(Throughput::Elements(blobs));
    g.bench_function("decode_trailer_16MiB", |b| {
        b.iter(|| decode_trailer_from_tail(bytes.len() as u64, tail, "pack").unwrap());
    });
    g.bench_function("encode_trailer_16MiB", |b| {
        b.iter(|| black_box(trailer.encode()));
    });
    g.finish();
}

/// Index entries for `blobs` blobs of 512-5000 bytes in full packs, as a
/// first backup of ~270 MB of JSON writes them.
fn indexed_packs(blobs: usize) -> Vec<IndexedPack> {
    let mut rng = Rng(7);
    let mut packs = Vec::new();
    let mut left = blobs;
    while left > 0 {
        let mut w = PackWriter::new();
        while w.len() < PACK_LEN && left > 0 {
            let mut f = FrameBuilder::default();
            while f.raw_len() < FRAME_LEN && left > 0 {
                let len = rng.range(512, 5000) as usize;
                let mut id = [0u8; 32];
                for part in id.chunks_mut(8) {
                    part.copy_from_slice(&rng.next().to_le_bytes());
                }
                f.push(BlobId(id), &vec![0; len]);
                left -= 1;
            }
            // Stored as if compressed 5×; the bytes do not matter here.
            let mut frame = f.compress(1).unwrap();
            frame.payload = vec![0; frame.raw_len as usize / 5];
            frame.codec = cairn_store::format::frame::Codec::Zstd;
            w.add_frame(frame);
        }
        let (id, bytes, trailer) = w.finish();
        packs.push(IndexedPack {
            id,
            len: bytes.len() as u64,
            trailer,
        });
    }
    packs
}

fn index(c: &mut Criterion) {
    const BLOBS: usize = 100_000;
    let packs = indexed_packs(BLOBS);
    let bytes = encode_index(&packs, 0);
    let id = IndexId::of(&bytes);
    eprintln!(
        "index: {BLOBS} blobs in {} packs, {} bytes",
        packs.len(),
        bytes.len()
    );
    let mut built = Index::new();
    built.add(Some(id), &packs);
    let ids: Vec<BlobId> = packs
        .iter()
        .flat_map(|p| p.trailer.blobs.iter().map(|b| b.id))
        .collect();

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(BLOBS as u64));
    g.bench_function("encode_100k", |b| b.iter(|| encode_index(&packs, 0)));
    g.bench_function("decode_100k", |b| {
        b.iter(|| decode_index(&bytes, id).unwrap());
    });
    g.bench_function("add_100k", |b| {
        b.iter_with_large_drop(|| {
            let mut index = Index::new();
            index.add(Some(id), &packs);
            index
        });
    });
    g.bench_function("contains_100k", |b| {
        b.iter(|| ids.iter().filter(|id| built.contains(id)).count());
    });
    g.finish();
}

fn tree(c: &mut Criterion) {
    const CHUNKS: u64 = 200_000;
    let entries: Vec<TreeEntry> = (0..CHUNKS)
        .map(|i| TreeEntry {
            id: BlobId::of(&i.to_le_bytes()),
            len: 1024 + i % 2048,
        })
        .collect();
    let mut g = c.benchmark_group("tree");
    slow(&mut g);
    g.throughput(Throughput::Elements(CHUNKS));
    g.bench_function("build_200k", |b| {
        b.iter_with_large_drop(|| build_tree(TreeParams::DEFAULT, &entries));
    });
    g.finish();
}

fn manifest(c: &mut Criterion) {
    let repo = RepoId([9; 32]);
    let key = SecretKey::from_seed(&[3; 32]);
    let mut items = vec![Item {
        name: "couchdb".into(),
        kind: ItemKind::Dir,
        len: 0,
        tree: None,
        chunks: None,
        chunker: None,
        mode: Some(0o755),
        mtime: Some("2026-11-21T01:59:00Z".parse().unwrap()),
        target: None,
        one_chunk: false,
    }];
    for i in 0..9u64 {
        items.push(Item {
            name: format!("couchdb/db{i}.json"),
            kind: ItemKind::File,
            len: 500_000_000 + i,
            tree: Some(BlobId::of(&i.to_le_bytes())),
            chunks: Some(250_000 + i),
            chunker: Some(class_2k()),
            mode: Some(0o644),
            mtime: Some("2026-11-21T01:59:00Z".parse().unwrap()),
            target: None,
            one_chunk: false,
        });
    }
    let m = Manifest {
        version: MANIFEST_VERSION,
        repository: repo,
        time: "2026-11-21T02:00:00Z".parse().unwrap(),
        host: "node4".into(),
        tags: vec!["nightly".into()],
        source: SourceInfo {
            kind: SourceKind::Files,
            command: None,
            exit_status: None,
            url: None,
        },
        paths: vec![],
        started: None,
        parent: None,
        root: None,
        totals: None,
        items,
    };
    let (id, bytes) = m.encode_signed(&key).unwrap();
    let trust = Trust::Keys(vec![key.public()]);

    let mut g = c.benchmark_group("manifest");
    g.bench_function("sign_10_items", |b| {
        b.iter(|| m.encode_signed(&key).unwrap());
    });
    g.bench_function("verify_10_items", |b| {
        b.iter(|| decode_manifest(&bytes, id, &repo, &trust).unwrap());
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

criterion_group! {
    name = kernels;
    config = config();
    targets = chunking, hashing, cutter, compression, ceiling, pack, index, tree, manifest
}
criterion_main!(kernels);
