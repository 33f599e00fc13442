#![allow(clippy::unwrap_used)]
//! The CouchDB dump vector in `format-spec/couchdb.json`, checked as
//! `store/tests/vectors.rs` checks the store's (and with its plumbing,
//! `store/tests/vectors/plumbing.rs`, included here by path): the dump
//! encodings this build writes must be the stored file, byte for byte, and
//! the stored file must decode to the values it states. A failure means the
//! CouchDB dump format changed.
//!
//! To change it deliberately: run
//! `CAIRN_REGENERATE_VECTORS=1 cargo test -p cairn-couch --test vectors`,
//! review the diff of `format-spec/couchdb.json`, and record the change in
//! the version history of `format-spec/README.md`.

#[path = "../../store/tests/vectors/plumbing.rs"]
mod plumbing;

use plumbing::*;

use serde::{Deserialize, Serialize};

use cairn_couch::format::{self, AttHeader};

#[derive(Serialize, Deserialize)]
struct CouchLineCase {
    id: String,
    rev: String,
    deleted: bool,
    doc: String,
    line: String,
}

#[derive(Serialize, Deserialize)]
struct CouchVectors {
    description: Vec<String>,
    item_names: Vec<(String, String, String)>,
    doc_lines: Vec<CouchLineCase>,
    gone_line: (String, String),
    attachment_header: AttHeader,
    attachment_data_hex: String,
    attachment_record_hex: String,
    /// An attachment the server stored gzip-encoded: `digest` is the
    /// server's (of its encoding), the bytes are the identity bytes.
    gzip_attachment_header: AttHeader,
    gzip_attachment_record_hex: String,
    md5_digests: Vec<(String, String)>,
    rev_order: Vec<String>,
}

#[test]
fn couchdb_vectors() {
    use serde_json::value::RawValue;
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    let cases = [
        (
            "doc-1",
            "2-b",
            false,
            r#"{"_id":"doc-1","_rev":"2-b","_revisions":{"start":2,"ids":["b","a"]},"v":1}"#,
        ),
        (
            "gone",
            "3-x",
            true,
            r#"{"_id":"gone","_rev":"3-x","_deleted":true,"_revisions":{"start":3,"ids":["x","y","z"]}}"#,
        ),
        (
            "quote\"é/x",
            "1-q",
            false,
            r#"{"_id":"quote\"é/x","_rev":"1-q","_revisions":{"start":1,"ids":["q"]},"_attachments":{"a.txt":{"content_type":"text/plain","digest":"md5-XUFAKrxLKna5cZ2REBfFkg==","length":5,"revpos":1,"stub":true}}}"#,
        ),
    ];
    let doc_lines = cases
        .iter()
        .map(|(id, rev, deleted, doc)| {
            let mut line = Vec::new();
            format::encode_doc_line(id, rev, *deleted, &raw(doc), &mut line);
            CouchLineCase {
                id: id.to_string(),
                rev: rev.to_string(),
                deleted: *deleted,
                doc: doc.to_string(),
                line: String::from_utf8(line).unwrap(),
            }
        })
        .collect();
    let header = AttHeader {
        id: "quote\"é/x".into(),
        name: "a.txt".into(),
        revpos: 1,
        digest: format::md5_digest(b"hello"),
        encoding: None,
        data_digest: None,
        len: 5,
    };
    let mut record = Vec::new();
    format::encode_attachment(&header, b"hello", &mut record);
    let gzip_header = AttHeader {
        id: "doc02000".into(),
        name: "data.json".into(),
        revpos: 2,
        // CouchDB 3.5's digest of a gzip-encoded 7-byte application/json
        // attachment (format-spec §19.3); the bytes kept are the identity.
        digest: "md5-TRLVIP5eD2weIbIYDVFsLA==".into(),
        encoding: Some("gzip".into()),
        data_digest: Some(format::md5_digest(br#"{"a":1}"#)),
        len: 7,
    };
    let mut gzip_record = Vec::new();
    format::encode_attachment(&gzip_header, br#"{"a":1}"#, &mut gzip_record);
    let mut gone = Vec::new();
    format::encode_gone("purged", &mut gone);
    let mut revs: Vec<String> = ["10-a", "9-z", "10-0", "1-x"].map(String::from).to_vec();
    format::sort_revs(&mut revs);
    let produced = CouchVectors {
        description: lines(
            "CouchDB dumps (README.md, \"CouchDB dumps\"): the item names of a database, document lines\n\
             (`line` is exactly what encoding `id`, `rev`, `deleted` and the document text `doc` gives),\n\
             an overlay removal line, an attachment record (header line, raw bytes, newline) with its\n\
             md5 digest, and revisions in line order (generation, then hash).",
        ),
        item_names: format::FILES
            .iter()
            .map(|f| {
                (
                    "a/b".to_string(),
                    f.to_string(),
                    format::item_name("a/b", f),
                )
            })
            .collect(),
        doc_lines,
        gone_line: ("purged".into(), String::from_utf8(gone).unwrap()),
        attachment_header: header,
        attachment_data_hex: hex::encode(b"hello"),
        attachment_record_hex: hex::encode(&record),
        gzip_attachment_header: gzip_header,
        gzip_attachment_record_hex: hex::encode(&gzip_record),
        md5_digests: [&b""[..], b"hello"]
            .iter()
            .map(|d| (hex::encode(d), format::md5_digest(d)))
            .collect(),
        rev_order: revs,
    };
    let stored = settle("couchdb.json", &produced);
    // Reader direction: the stored lines parse back to their fields.
    for case in &stored.doc_lines {
        let line = case.line.strip_suffix('\n').unwrap();
        let parsed = format::parse_doc_line(line.as_bytes()).unwrap();
        assert_eq!(
            (&*parsed.id, &*parsed.rev, parsed.del),
            (case.id.as_str(), case.rev.as_str(), case.deleted)
        );
        assert_eq!(parsed.doc.get(), case.doc);
    }
    for (db, file, name) in &stored.item_names {
        assert_eq!(
            format::parse_item_name(name),
            Some((db.clone(), file.as_str()))
        );
    }
    let record = unhex(&stored.attachment_record_hex);
    let newline = record.iter().position(|&b| b == b'\n').unwrap();
    let header: AttHeader = serde_json::from_slice(&record[..newline]).unwrap();
    assert_eq!(header, stored.attachment_header);
    let data = &record[newline + 1..record.len() - 1];
    assert_eq!(data, unhex(&stored.attachment_data_hex));
    assert_eq!(format::md5_digest(data), header.digest);
    assert_eq!(header.expected_data_digest(), Ok(header.digest.as_str()));
    let record = unhex(&stored.gzip_attachment_record_hex);
    let newline = record.iter().position(|&b| b == b'\n').unwrap();
    let header: AttHeader = serde_json::from_slice(&record[..newline]).unwrap();
    assert_eq!(header, stored.gzip_attachment_header);
    let data = &record[newline + 1..record.len() - 1];
    assert_eq!(
        header.expected_data_digest().map(str::to_string),
        Ok(format::md5_digest(data))
    );
    assert_ne!(format::md5_digest(data), header.digest);
}
