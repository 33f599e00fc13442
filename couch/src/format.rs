//! The CouchDB dump format: pure functions over bytes.
//!
//! Per database `<db>` (its name percent-encoded, so `a/b` is `a%2Fb`), a
//! snapshot holds five items:
//!
//! ```text
//! couchdb/<db>/design.ndjson    design documents' leaf revisions, attachments inline
//! couchdb/<db>/docs.ndjson      every other leaf revision, deleted ones included
//! couchdb/<db>/docs.0001.ndjson  overlays: ids changed since the base (docs.0002…)
//! couchdb/<db>/attachments.bin  the attachments docs.ndjson's stubs name, raw bytes
//! couchdb/<db>/local.ndjson     _local documents (where the server lists them)
//! couchdb/<db>/meta.json        server, database info, settings, counts
//! ```
//!
//! Together docs.ndjson (the base) and the overlays docs.0001.ndjson, … are
//! the database's documents: an id in an overlay replaces all lines for it
//! in the base and in earlier overlays, or removes them
//! (`{"id":…,"gone":true}`). A backup either writes a new base and no
//! overlays, or keeps the previous base and overlays byte for byte and adds
//! one overlay of the documents that changed since, so what a day adds is
//! proportional to what changed, not to the database.
//!
//! A document line is `{"id":…,"rev":…,"del":true,"doc":…}\n` (`del` only for
//! a deleted leaf), `doc` exactly as `_bulk_get?revs=true` returned it, with
//! `_revisions`. Lines are sorted by id (bytes), then revision generation,
//! then revision hash, so day-over-day dumps share their unchanged runs.
//!
//! An attachment record is a JSON header line, the raw bytes, and `\n`:
//! `{"id":…,"name":…,"revpos":N,"digest":"md5-…","len":N}\n<bytes>\n`, sorted
//! by (id, name, revpos, digest). The bytes are always the identity bytes;
//! an attachment the server stored gzip-encoded (CouchDB 3's compressible
//! types) has `"encoding":"gzip","data_digest":"md5-…"` after `digest`,
//! which is then the server's digest of the encoding. A stub in a document line finds its bytes
//! by that key. Each distinct attachment is stored once per database and is
//! content-chunked like everything else, so unchanged attachments cost
//! nothing in later snapshots.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use cairn_store::format::chunker::{ChunkerParams, ChunkingPolicy};
use serde_json::value::RawValue;

/// The format identifier in `meta.json`.
pub const FORMAT: &str = "cairn-couchdb/1";

/// Item names of one database.
pub fn item_name(db: &str, file: &str) -> String {
    format!("couchdb/{}/{file}", crate::client::db_path(db))
}

/// The files of one database, in the order a backup writes them.
/// (Overlays, [`overlay_file`], come after docs.ndjson.)
pub const FILES: [&str; 5] = [
    DESIGN_FILE,
    DOCS_FILE,
    ATTACHMENTS_FILE,
    LOCAL_FILE,
    META_FILE,
];
/// Design documents.
pub const DESIGN_FILE: &str = "design.ndjson";
/// Other documents.
pub const DOCS_FILE: &str = "docs.ndjson";
/// The most overlays a dump may have before a backup writes a new base.
pub const MAX_OVERLAYS: usize = 64;

/// The file of overlay `n` (1, 2, …): the documents that changed after the
/// snapshot that wrote overlay `n - 1` (or the base).
pub fn overlay_file(n: usize) -> String {
    format!("docs.{n:04}.ndjson")
}

/// A database's files in the order a backup writes them: design, docs,
/// `overlays` overlays, attachments, local, meta.
pub fn files(overlays: usize) -> Vec<String> {
    let mut files = vec![DESIGN_FILE.to_string(), DOCS_FILE.to_string()];
    files.extend((1..=overlays).map(overlay_file));
    files.extend([ATTACHMENTS_FILE, LOCAL_FILE, META_FILE].map(String::from));
    files
}

/// The number of an overlay file.
pub fn overlay_number(file: &str) -> Option<usize> {
    let n = file.strip_prefix("docs.")?.strip_suffix(".ndjson")?;
    (n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
        .filter(|&n| n > 0)
}
/// Attachment data.
pub const ATTACHMENTS_FILE: &str = "attachments.bin";
/// Local documents.
pub const LOCAL_FILE: &str = "local.ndjson";
/// Metadata.
pub const META_FILE: &str = "meta.json";

/// How a new item of this file is chunked: documents in 16 KiB chunks (a
/// base is rewritten rarely and overlays are new data, so small chunks
/// would only add per-chunk overhead), attachments in the largest, the rest
/// by the repository's policy.
pub fn chunker_for(file: &str, policy: &ChunkingPolicy) -> Option<ChunkerParams> {
    let avg = if file == DOCS_FILE || overlay_number(file).is_some() {
        (16 * 1024).clamp(policy.min_avg_len, policy.max_avg_len)
    } else if file == ATTACHMENTS_FILE {
        policy.max_avg_len
    } else {
        return None;
    };
    Some(policy.params(avg))
}

/// The database and file an item name stands for, if it is a CouchDB item.
pub fn parse_item_name(name: &str) -> Option<(String, &str)> {
    let rest = name.strip_prefix("couchdb/")?;
    let (db, file) = rest.rsplit_once('/')?;
    let db = percent_encoding::percent_decode_str(db)
        .decode_utf8()
        .ok()?
        .into_owned();
    (FILES.contains(&file) || overlay_number(file).is_some()).then_some((db, file))
}

/// One line of `docs.ndjson` or `design.ndjson`, borrowed from its bytes.
#[derive(Debug, Deserialize)]
pub struct DocLine<'a> {
    /// The document id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// The leaf revision.
    #[serde(borrow)]
    pub rev: std::borrow::Cow<'a, str>,
    /// Whether the leaf is a deletion.
    #[serde(default)]
    pub del: bool,
    /// The document as the server returned it.
    #[serde(borrow)]
    pub doc: &'a RawValue,
}

/// Parses a document line (without its `\n`).
pub fn parse_doc_line(line: &[u8]) -> serde_json::Result<DocLine<'_>> {
    serde_json::from_slice(line)
}

/// The lines of `bytes`, without their `\n`.
pub fn each_line(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// Appends a document line.
pub fn encode_doc_line(id: &str, rev: &str, deleted: bool, doc: &RawValue, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_json_str(id, out);
    out.extend_from_slice(b",\"rev\":");
    write_json_str(rev, out);
    if deleted {
        out.extend_from_slice(b",\"del\":true");
    }
    out.extend_from_slice(b",\"doc\":");
    out.extend_from_slice(doc.get().as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Appends an overlay line that removes an id.
pub fn encode_gone(id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_json_str(id, out);
    out.extend_from_slice(b",\"gone\":true}\n");
}

fn write_json_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A revision id's generation and hash (`3-abc` → `(3, "abc")`).
pub fn parse_rev(rev: &str) -> Option<(u64, &str)> {
    let (generation, hash) = rev.split_once('-')?;
    Some((generation.parse().ok()?, hash))
}

/// The order of leaves within a document: generation, then hash.
pub fn rev_order(a: &str, b: &str) -> Ordering {
    match (parse_rev(a), parse_rev(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Sorts revisions into line order.
pub fn sort_revs(revs: &mut [String]) {
    revs.sort_by(|a, b| rev_order(a, b));
}

/// An attachment stub as it appears in a document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Stub {
    /// MIME type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// `md5-<base64>`.
    #[serde(default)]
    pub digest: Option<String>,
    /// Identity length.
    #[serde(default)]
    pub length: Option<u64>,
    /// The generation the attachment was added in.
    #[serde(default)]
    pub revpos: Option<u64>,
    /// Whether this is a stub (no inline data).
    #[serde(default)]
    pub stub: bool,
}

/// What a document line says about its attachments.
#[derive(Debug, Deserialize)]
struct AttachmentsOnly {
    #[serde(rename = "_attachments", default)]
    attachments: BTreeMap<String, Stub>,
}

/// The attachment stubs of a document, by name.
pub fn stubs(doc: &RawValue) -> serde_json::Result<BTreeMap<String, Stub>> {
    // Most documents have none: skip the parse.
    if memchr::memmem::find(doc.get().as_bytes(), b"\"_attachments\"").is_none() {
        return Ok(BTreeMap::new());
    }
    Ok(serde_json::from_str::<AttachmentsOnly>(doc.get())?.attachments)
}

/// Identifies one attachment's bytes within a database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttKey {
    /// The document.
    pub id: String,
    /// The attachment's name.
    pub name: String,
    /// Its revpos.
    pub revpos: u64,
    /// Its digest.
    pub digest: String,
}

/// The header line of an attachment record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttHeader {
    /// The document.
    pub id: String,
    /// The attachment's name.
    pub name: String,
    /// Its revpos.
    pub revpos: u64,
    /// Its digest (`md5-<base64>`), as the server gave it.
    pub digest: String,
    /// `"gzip"` when the server stored the attachment gzip-encoded: its
    /// `digest` is of that encoding, and the bytes here are the identity
    /// bytes, whose digest is `data_digest`. Absent: `digest` is of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// With `encoding`: the digest of the bytes that follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// Length of the bytes that follow.
    pub len: u64,
}

impl AttHeader {
    /// The digest the bytes that follow must have.
    pub fn expected_data_digest(&self) -> Result<&str, String> {
        match (self.encoding.as_deref(), &self.data_digest) {
            (None, None) => Ok(&self.digest),
            (Some("gzip"), Some(d)) => Ok(d),
            (Some("gzip"), None) => Err("a gzip-encoded attachment without data_digest".into()),
            (None, Some(_)) => Err("data_digest without an encoding".into()),
            (Some(e), _) => Err(format!("unknown encoding {e:?}")),
        }
    }

    /// The key this record answers.
    pub fn key(&self) -> AttKey {
        AttKey {
            id: self.id.clone(),
            name: self.name.clone(),
            revpos: self.revpos,
            digest: self.digest.clone(),
        }
    }
}

/// Appends an attachment record.
pub fn encode_attachment(header: &AttHeader, data: &[u8], out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, header);
    out.push(b'\n');
    out.extend_from_slice(data);
    out.push(b'\n');
}

/// CouchDB's digest of some bytes: `md5-` and the base64 of their MD5.
pub fn md5_digest(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    let hash = md5::Md5::digest(data);
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

/// One line of `local.ndjson`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalLine<'a> {
    /// `_local/…`.
    pub id: String,
    /// The body as the server returned it.
    #[serde(borrow)]
    pub doc: &'a RawValue,
}

/// Whether a local document is a replication checkpoint (restoring one could
/// make a replication skip changes made after the backup).
pub fn is_replication_checkpoint(id: &str, doc: &RawValue) -> bool {
    let name = id.strip_prefix("_local/").unwrap_or(id);
    (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        || (memchr::memmem::find(doc.get().as_bytes(), b"\"source_last_seq\"").is_some()
            && memchr::memmem::find(doc.get().as_bytes(), b"\"history\"").is_some())
}

/// `meta.json`: what a database was, besides its documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`FORMAT`].
    pub format: String,
    /// The database name.
    pub db: String,
    /// `GET /` of the server.
    pub server: serde_json::Value,
    /// `GET /{db}`.
    pub db_info: serde_json::Value,
    /// `props` of the database (`{"partitioned":true}`), `{}` when none.
    pub props: serde_json::Value,
    /// `_security`.
    pub security: serde_json::Value,
    /// `_revs_limit`, where the server has it.
    pub revs_limit: Option<serde_json::Value>,
    /// Whether the server lists `_local` documents (CouchDB does, pouchdb-server does not).
    pub local_listed: bool,
    /// The `_changes` sequence the enumeration ended at.
    pub last_seq: serde_json::Value,
    /// How the dump was made: `changes` (from the server) or `import` (an
    /// `_all_docs` file, without history, deleted or conflicting revisions).
    pub method: String,
    /// Counts, checked by `cairn verify` and the restore.
    pub counts: Counts,
}

/// What a database dump holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct non-design document ids.
    pub docs: u64,
    /// Lines of docs.ndjson (leaf revisions).
    pub doc_leaves: u64,
    /// Of which deleted leaves.
    pub deleted_leaves: u64,
    /// Ids with more than one leaf.
    pub conflicted_docs: u64,
    /// Lines of design.ndjson.
    pub design_leaves: u64,
    /// Lines of local.ndjson.
    pub local_docs: u64,
    /// Records of attachments.bin.
    pub attachments: u64,
    /// Bytes of attachment data.
    pub attachment_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn doc_lines_round_trip_and_keep_the_document_bytes() {
        let doc = raw(
            r#"{"_id":"a\"b","_rev":"2-x","_deleted":true,"_revisions":{"start":2,"ids":["x","y"]}}"#,
        );
        let mut out = Vec::new();
        encode_doc_line("a\"b", "2-x", true, &doc, &mut out);
        assert_eq!(
            out,
            br#"{"id":"a\"b","rev":"2-x","del":true,"doc":{"_id":"a\"b","_rev":"2-x","_deleted":true,"_revisions":{"start":2,"ids":["x","y"]}}}
"#
        );
        let line = parse_doc_line(&out[..out.len() - 1]).unwrap();
        assert_eq!((&*line.id, &*line.rev, line.del), ("a\"b", "2-x", true));
        assert_eq!(line.doc.get(), doc.get());
    }

    #[test]
    fn revisions_order_by_generation_then_hash() {
        let mut revs = vec!["10-a".to_string(), "9-z".into(), "10-0".into()];
        sort_revs(&mut revs);
        assert_eq!(revs, ["9-z", "10-0", "10-a"]);
    }

    #[test]
    fn item_names_encode_the_database() {
        let name = item_name("a/b", DOCS_FILE);
        assert_eq!(name, "couchdb/a%2Fb/docs.ndjson");
        assert_eq!(parse_item_name(&name), Some(("a/b".to_string(), DOCS_FILE)));
        assert_eq!(parse_item_name("couchdb/x/other"), None);
        assert_eq!(parse_item_name("volumes/x"), None);
    }

    #[test]
    fn stubs_and_digests() {
        let doc = raw(
            r#"{"_id":"a","_attachments":{"f.txt":{"content_type":"text/plain","digest":"md5-XUFAKrxLKna5cZ2REBfFkg==","length":5,"revpos":1,"stub":true}}}"#,
        );
        let stubs = stubs(&doc).unwrap();
        assert_eq!(stubs["f.txt"].length, Some(5));
        assert_eq!(md5_digest(b"hello"), "md5-XUFAKrxLKna5cZ2REBfFkg==");
        assert!(super::stubs(&raw(r#"{"_id":"b"}"#)).unwrap().is_empty());
    }

    #[test]
    fn checkpoints_are_recognised() {
        let plain = raw(r#"{"x":1}"#);
        assert!(is_replication_checkpoint(
            "_local/0123456789abcdef0123456789abcdef",
            &plain
        ));
        assert!(!is_replication_checkpoint("_local/settings", &plain));
        let cp = raw(r#"{"history":[],"source_last_seq":5}"#);
        assert!(is_replication_checkpoint("_local/x", &cp));
    }
}
