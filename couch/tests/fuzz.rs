#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
//! Fuzzing, on stable Rust, of the CouchDB dump-line decoders a hostile
//! store reaches: document lines, attachment headers, `_local` lines,
//! `meta.json`, item names and revisions. The harness is the store's
//! (`store/tests/fuzz.rs` describes it; `store/tests/fuzz/harness.rs`,
//! included here by path): seeds from `format-spec/couchdb.json`, boundary
//! values and random mutations; a panic or an allocation over the bound
//! fails with the input in hex.
//!
//! The longer run: `CAIRN_FUZZ_ITERATIONS=1000000 cargo test -p cairn-couch
//! --test fuzz -- --nocapture` (`CAIRN_FUZZ_SEED=N` picks another random
//! stream).

#[path = "../../store/tests/fuzz/harness.rs"]
mod harness;

use harness::*;

use cairn_couch::format::{
    self as couch, AttHeader, LocalLine, Meta, parse_doc_line, parse_item_name, parse_rev,
};

#[test]
fn fuzz_couch_dump_lines() {
    let v = spec("couchdb.json");
    let mut seeds = Vec::new();
    for line in v["doc_lines"].as_array().unwrap() {
        seeds.push(Seed::plain(line["line"].as_str().unwrap()));
    }
    let record = hex_of(&v["attachment_record_hex"]);
    let header_end = record.iter().position(|&b| b == b'\n').unwrap();
    seeds.push(Seed::plain(&record[..header_end]));
    seeds.push(Seed::plain(record));
    for name in v["item_names"].as_array().unwrap() {
        seeds.push(Seed::plain(name[2].as_str().unwrap_or_default()));
    }
    for rev in v["rev_order"].as_array().unwrap() {
        seeds.push(Seed::plain(rev.as_str().unwrap()));
    }
    let mut gone = Vec::new();
    couch::encode_gone("purged", &mut gone);
    seeds.push(Seed::plain(gone));
    seeds.push(Seed::plain(
        r#"{"id":"_local/0123456789abcdef0123456789abcdef","doc":{"history":[],"source_last_seq":5}}"#,
    ));
    seeds.push(Seed::plain(
        r#"{"id":"a","rev":"1-x","doc":{"_id":"a","_attachments":{"f.txt":{"content_type":"text/plain","digest":"md5-XUFAKrxLKna5cZ2REBfFkg==","length":5,"revpos":1,"stub":true}}}}"#,
    ));
    let meta = Meta {
        format: couch::FORMAT.into(),
        db: "a/b".into(),
        server: serde_json::json!({"couchdb": "Welcome", "version": "3.3.3"}),
        db_info: serde_json::json!({"db_name": "a/b", "doc_count": 3}),
        props: serde_json::json!({}),
        security: serde_json::json!({}),
        revs_limit: Some(serde_json::json!(1000)),
        local_listed: true,
        last_seq: serde_json::json!("12-abc"),
        method: "changes".into(),
        counts: couch::Counts::default(),
    };
    seeds.push(Seed::plain(serde_json::to_vec(&meta).unwrap()));
    let mut deep = br#"{"id":"a","rev":"1-a","doc":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.push(b'}');
    seeds.push(Seed {
        mutable: false,
        ..Seed::plain(deep)
    });
    seeds.push(deeply_nested("server", 100_000));
    fuzz(
        "couchdb dump lines",
        &seeds,
        DECODE_BOUND,
        20_000,
        |bytes| {
            let mut accepted = false;
            for line in couch::each_line(bytes) {
                if let Ok(doc) = parse_doc_line(line) {
                    accepted = true;
                    let _ = couch::stubs(doc.doc);
                    let _ = parse_rev(&doc.rev);
                    let _ = couch::rev_order(&doc.rev, "1-a");
                }
                if let Ok(header) = serde_json::from_slice::<AttHeader>(line) {
                    accepted = true;
                    let _ = header.key();
                }
                if let Ok(local) = serde_json::from_slice::<LocalLine>(line) {
                    accepted = true;
                    let _ = couch::is_replication_checkpoint(&local.id, local.doc);
                }
            }
            accepted |= serde_json::from_slice::<Meta>(bytes).is_ok();
            let text = String::from_utf8_lossy(bytes);
            if let Some((db, file)) = parse_item_name(&text) {
                assert_eq!(parse_item_name(&couch::item_name(&db, file)).unwrap().0, db);
            }
            let _ = couch::overlay_number(&text);
            let mut revs: Vec<String> = text.split(',').map(String::from).collect();
            couch::sort_revs(&mut revs);
            accepted
        },
    );
}
