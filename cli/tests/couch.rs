//! `cairn backup couchdb` and `cairn restore couchdb` against a real
//! CouchDB-compatible server (pouchdb-server on loopback, from tests/run).
#![allow(clippy::unwrap_used)]

#[path = "support/couch.rs"]
mod couch;
#[path = "support/couch3.rs"]
mod couch3;
#[path = "support/faulty.rs"]
mod faulty;
mod support;

use std::time::Instant;

use couch::Couch;
use serde_json::{Value, json};
use support::{Fixture, ok, run};

/// `cairn backup couchdb --repo R --key K --url URL --json ARGS...`.
fn backup(f: &Fixture, url: &str, args: &[&str]) -> assert_cmd::Command {
    let mut c = support::cairn();
    c.args(["backup", "couchdb", "--repo"])
        .arg(&f.repo)
        .arg("--key")
        .arg(&f.key)
        .args(["--host", "test", "--json", "--url", url])
        .args(args);
    c
}

/// `cairn restore couchdb --repo R SNAPSHOT --url URL --json ARGS...`.
fn restore(f: &Fixture, snapshot: &str, url: &str, args: &[&str]) -> assert_cmd::Command {
    let mut c = support::cairn();
    c.args(["restore", "couchdb", "--repo"])
        .arg(&f.repo)
        .args([snapshot, "--json", "--url", url])
        .args(args);
    c
}

/// Restores `db` of `snapshot` as `copy` (dropping any earlier copy); the
/// restore must be clean and `copy` equal to `db` as it is now.
fn assert_restores_as_now(f: &Fixture, couch: &Couch, snapshot: &str, db: &str, what: &str) {
    let copy = format!("{db}_copy");
    couch.delete_db(&copy);
    let report = ok(&mut restore(
        f,
        snapshot,
        &couch.url,
        &["--db", &format!("{db}:{copy}")],
    ))
    .json();
    assert_eq!(report["clean"], true, "{what}: {report}");
    couch::assert_same(&couch.fingerprint(&copy), &couch.fingerprint(db), what);
    couch.delete_db(&copy);
}

/// Runs each test twice: against the server as it is (pouchdb-server), and
/// through the proxy that makes it behave as Apache CouchDB 3.
macro_rules! plain_and_couchdb3 {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn plain() {
                if let Some(couch) = super::Couch::from_env() {
                    super::$name(&couch);
                }
            }

            #[test]
            fn couchdb3() {
                if let Some(couch) = super::Couch::from_env() {
                    super::$name(&couch.couchdb3());
                }
            }
        }
    )*};
}

plain_and_couchdb3!(
    backup_drop_restore_gives_back_every_revision_attachment_view_and_setting,
    second_backup_fetches_only_changed_documents_and_stores_little,
    restore_refuses_a_non_empty_database_and_changes_nothing,
    restore_killed_anywhere_and_run_again_gives_the_same_database,
    an_imported_all_docs_dump_restores_with_the_same_revisions,
    failures_have_clear_messages_and_distinct_exit_codes,
    transient_failures_are_retried_big_batches_split_and_a_403_stops,
    several_databases_at_once_and_a_refusing_target_exits_16,
    every_database_is_listed_page_by_page_and_changes_to_the_list_are_named,
    unchanged_databases_cost_a_few_requests_and_restore_whole,
    a_target_that_loses_or_gains_documents_fails_the_restore_check,
);

/// The check at the end of a restore, either kind: a document the server
/// lost (it answered as if stored) is named missing; a document someone
/// else wrote meanwhile is named extra. Either fails the restore. The
/// default check confirms documents of one live leaf from `_all_docs` and
/// asks `_revs_diff` for the rest (here the tombstone); a server that will
/// not list is asked for everything, in batches (2,101 ids: three); a
/// server that answers `_revs_diff` without looking is refused.
fn a_target_that_loses_or_gains_documents_fails_the_restore_check(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("checked");
    couch.create_db(&db);
    let docs: Vec<Value> = (0..2100).map(|i| couch::body(i, 0)).collect();
    couch.write(&db, &docs);
    let (_, deleted) = couch.req("PUT", &format!("{db}/gone"), Some(&json!({"x": 1})));
    couch.req(
        "DELETE",
        &format!("{db}/gone?rev={}", deleted["rev"].as_str().unwrap()),
        None,
    );
    ok(&mut backup(&f, &couch.url, &["--db", &db]));
    let proxy = faulty::Proxy::start(couch.upstream());
    let url = proxy.url(&couch.url);
    // The id that sorts last: in the last `_revs_diff` batch.
    let lost = docs
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_string())
        .max()
        .unwrap();
    for (check, says) in [("present", "lacks leaves"), ("leaves", "missing")] {
        let copy = format!("{db}_{check}");
        let into_copy = [
            "--db".to_string(),
            format!("{db}:{copy}"),
            "--check".into(),
            check.into(),
        ];
        let restore_copy = || {
            restore(
                &f,
                "latest",
                &url,
                &into_copy.each_ref().map(String::as_str),
            )
        };
        // A document lost on the way.
        *proxy.faults.lose_doc.lock().unwrap() = Some(lost.clone());
        let r = run(&mut restore_copy());
        let report = r
            .expect_code(16)
            .stderr_has(&["1 documents missing", &lost, says])
            .json();
        let restored = &report["databases"][0];
        assert_eq!(restored["check"], check, "{report}");
        assert_eq!(restored["comparison"]["missing"], 1, "{report}");
        assert_eq!(restored["comparison"]["extra"], 0, "{report}");
        assert_eq!(restored["comparison"]["ids"], 2101, "{report}");
        couch.delete_db(&copy);
        // A document written by someone else during the restore.
        *proxy.faults.lose_doc.lock().unwrap() = None;
        *proxy.faults.add_doc.lock().unwrap() = Some("zz-intruder".into());
        let r = run(&mut restore_copy());
        let report = r
            .expect_code(16)
            .stderr_has(&["1 documents not in the snapshot"])
            .json();
        assert_eq!(
            report["databases"][0]["comparison"]["missing"], 0,
            "{report}"
        );
        assert_eq!(report["databases"][0]["comparison"]["extra"], 1, "{report}");
        couch.delete_db(&copy);
        // And nothing wrong: clean.
        proxy
            .faults
            .revs_diffs
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let report = ok(&mut restore_copy()).json();
        assert_eq!(report["clean"], true, "{report}");
        if check == "present" {
            // Only the tombstone was asked for: the listing showed the rest.
            let asked = proxy
                .faults
                .revs_diffs
                .load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(asked, 1, "{report}");
        }
        assert_eq!(
            report["databases"][0]["comparison"]["ids"], 2101,
            "{report}"
        );
        couch.delete_db(&copy);
    }
    // A server that will not list: every id asked for, the lost one found.
    let copy = format!("{db}_unlisted");
    let refuse_all_docs = &proxy.faults.refuse_all_docs;
    refuse_all_docs.store(true, std::sync::atomic::Ordering::SeqCst);
    *proxy.faults.lose_doc.lock().unwrap() = Some(lost.clone());
    proxy
        .faults
        .revs_diffs
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let report = run(&mut restore(
        &f,
        "latest",
        &url,
        &["--db", &format!("{db}:{copy}")],
    ))
    .expect_code(16)
    .stderr_has(&["1 documents missing", &lost, "lacks leaves"])
    .json();
    assert_eq!(
        report["databases"][0]["comparison"]["ids"], 2101,
        "{report}"
    );
    let asked = proxy
        .faults
        .revs_diffs
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 3, "{report}");
    couch.delete_db(&copy);
    // A server that answers `_revs_diff` with `{}` whatever it is asked,
    // here while it lost a document: refused, not reported clean.
    *proxy.faults.lose_doc.lock().unwrap() = Some(lost.clone());
    proxy
        .faults
        .blank_revs_diff
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let copy = format!("{db}_blank");
    run(&mut restore(
        &f,
        "latest",
        &url,
        &["--db", &format!("{db}:{copy}")],
    ))
    .expect_code(15)
    .stderr_has(&["did not name revision", "--check leaves"]);
    couch.delete_db(&copy);
    couch.delete_db(&db);
}

/// `--all-dbs` lists the server's databases a page at a time, and the
/// next backup names the ones that appeared and vanished since.
fn every_database_is_listed_page_by_page_and_changes_to_the_list_are_named(couch: &Couch) {
    let proxy = faulty::Proxy::start(couch.upstream());
    // Other tests share the server: the proxy lists only this test's.
    let prefix = format!("{}_", couch.new_db("many"));
    *proxy.faults.only_dbs.lock().unwrap() = Some(prefix.clone());
    let url = proxy.url(&couch.url);
    let f = Fixture::new();
    let names: Vec<String> = (0..30).map(|i| format!("{prefix}{i:02}")).collect();
    for (i, db) in names.iter().enumerate() {
        couch.create_db(db);
        couch.write(db, &[couch::body(i, 0), couch::body(i + 100, 0)]);
    }
    let all = ["--all-dbs", "--dbs-page", "7"];
    let first = ok(&mut backup(&f, &url, &all)).json();
    let listed: Vec<&str> = first["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["db"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names, "five pages of seven, each name once");
    assert_eq!(
        (&first["appeared"], &first["vanished"]),
        (&json!([]), &json!([]))
    );

    couch.delete_db(&names[3]);
    let newcomer = format!("{prefix}zz");
    couch.create_db(&newcomer);
    couch.write(&newcomer, &[couch::body(7, 0)]);
    let second = ok(&mut backup(&f, &url, &all)).json();
    assert_eq!(second["databases"].as_array().unwrap().len(), 30);
    assert_eq!(second["appeared"], json!([newcomer]), "{second}");
    assert_eq!(second["vanished"], json!([names[3]]), "{second}");
    for db in names.iter().chain([&newcomer]) {
        couch.delete_db(db);
    }
}

/// A database unchanged since the last backup (the same counts, no change
/// since its sequence, the same `_security`, `_revs_limit` and `_local`
/// documents) is taken from it unread, with four or five requests; one whose documents or `_security` changed is backed up as
/// usual; every snapshot still restores whole.
fn unchanged_databases_cost_a_few_requests_and_restore_whole(couch: &Couch) {
    let f = Fixture::new();
    let dbs: Vec<String> = (0..12)
        .map(|i| couch.new_db(&format!("still{i}")))
        .collect();
    for (i, db) in dbs.iter().enumerate() {
        couch.create_db(db);
        couch.write(db, &[couch::body(i, 0), couch::body(i + 50, 0)]);
    }
    let rev = couch.write(&dbs[0], &[json!({"_id": "with-note", "v": 1})])["with-note"].clone();
    couch.attach_typed(
        &dbs[0],
        "with-note",
        &rev,
        "n.txt",
        "text/plain",
        b"a note\n",
    );
    let mut args: Vec<&str> = Vec::new();
    for db in &dbs {
        args.extend(["--db", db.as_str()]);
    }
    let first = ok(&mut backup(&f, &couch.url, &args)).json();
    // In the order of `dbs`.
    let unchanged = |summary: &Value| -> Vec<bool> {
        dbs.iter()
            .map(|db| db_stats(summary, db)["unchanged"].as_bool().unwrap())
            .collect()
    };
    assert_eq!(unchanged(&first), vec![false; 12]);

    let second = ok(&mut backup(&f, &couch.url, &args)).json();
    assert_eq!(unchanged(&second), vec![true; 12], "{second}");
    // Per database: the existence check of --db, `GET /db`, `_changes`
    // (not where the update sequence is the very same, as pouchdb-server's
    // numbers are; CouchDB 3's opaque ones differ per node), `_security`,
    // `_revs_limit`, `_local_docs`.
    let (_, info) = couch.req("GET", &dbs[0], None);
    let per_db = if info["update_seq"].is_number() { 5 } else { 6 };
    let requests = second["requests"].as_u64().unwrap();
    assert!(requests <= 12 * per_db + 2, "{requests} requests: {second}");
    assert!(
        requests < first["requests"].as_u64().unwrap(),
        "{requests} vs {}",
        first["requests"]
    );
    assert_eq!(second["new_blobs"], 0, "{second}");
    for db in [&dbs[0], &dbs[5]] {
        assert_restores_as_now(&f, couch, "latest", db, "taken unread");
    }

    // A document written in one, `_security` set in another.
    couch.write(&dbs[1], &[couch::body(99, 1)]);
    couch.ok(
        "PUT",
        &format!("{}/_security", dbs[2]),
        Some(&json!({"admins": {"names": ["head"], "roles": []}, "members": {"names": [], "roles": []}})),
    );
    let third = ok(&mut backup(&f, &couch.url, &args)).json();
    let mut want = vec![true; 12];
    (want[1], want[2]) = (false, false);
    assert_eq!(unchanged(&third), want, "{third}");
    for db in &dbs[..3] {
        assert_restores_as_now(&f, couch, "latest", db, "after changes");
    }

    // Where the server has them (CouchDB; pouchdb-server lacks both),
    // `_revs_limit` and `_local` documents, which `_changes` does not show.
    let (status, _) = couch.req("GET", &format!("{}/_revs_limit", dbs[3]), None);
    if status == 200 {
        set_revs_limit_and_local(couch, &dbs[3], &dbs[4]);
        let fourth = ok(&mut backup(&f, &couch.url, &args)).json();
        let mut want = vec![true; 12];
        (want[3], want[4]) = (false, false);
        // 1 and 2 may fold their new overlay into a new base now.
        let mut got = unchanged(&fourth);
        (got[1], got[2]) = (true, true);
        assert_eq!(got, want, "{fourth}");
        let fifth = ok(&mut backup(&f, &couch.url, &args)).json();
        assert_eq!(unchanged(&fifth), vec![true; 12], "{fifth}");
    }
    // The same names on another server (here: another URL) are other
    // databases: nothing is taken from this server's dumps.
    let other = faulty::Proxy::start(couch.upstream());
    let elsewhere = ok(&mut backup(&f, &other.url(&couch.url), &args)).json();
    for db in &dbs {
        let stats = db_stats(&elsewhere, db);
        assert_eq!(stats["unchanged"], false, "{stats}");
        assert_eq!(stats["previous"], Value::Null, "{stats}");
    }
    for db in &dbs {
        couch.delete_db(db);
    }
}

/// Sets `_revs_limit` of `limited` to 500 and writes `_local/prefs` in
/// `local`: the two changes `_changes` does not show.
fn set_revs_limit_and_local(couch: &Couch, limited: &str, local: &str) {
    let limit = reqwest::blocking::Client::new()
        .put(format!("{}/{limited}/_revs_limit", couch.url))
        .body("500")
        .send()
        .unwrap();
    assert!(limit.status().is_success());
    couch.ok(
        "PUT",
        &format!("{local}/_local/prefs"),
        Some(&json!({"theme": "light"})),
    );
}

/// On CouchDB 3 (one node), one `POST /_dbs_info` per hundred databases
/// tells which hold the same documents, `_security` and `_revs_limit` as
/// at the last backup (the same update sequence, which a write of either
/// setting advances too); each is then asked only its `_local` documents,
/// which take no sequence. Each kind of change is still seen, and so is a
/// database deleted and created again with the same documents.
#[test]
fn unchanged_databases_on_couchdb3_cost_one_request_each() {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(server) = Couch::from_env() else {
        return;
    };
    let (couch, proxy) = server.couchdb3_proxy();
    proxy
        .couch3
        .as_ref()
        .unwrap()
        .single_node
        .store(true, SeqCst);
    let prefix = format!("{}_", couch.new_db("solo"));
    *proxy.faults.only_dbs.lock().unwrap() = Some(prefix.clone());
    let f = Fixture::new();
    let dbs: Vec<String> = (0..150).map(|i| format!("{prefix}{i:03}")).collect();
    for (i, db) in dbs.iter().enumerate() {
        couch.create_db(db);
        couch.write(db, &[couch::body(i, 0), couch::body(i + 500, 0)]);
    }
    // Three copies of each shard: its sequence is of whichever answered.
    let copies = format!("{prefix}n3");
    couch.ok("PUT", &format!("{copies}?n=3"), None);
    couch.write(&copies, &[couch::body(1, 0)]);
    let unchanged = |summary: &Value| -> Vec<bool> {
        dbs.iter()
            .map(|db| db_stats(summary, db)["unchanged"].as_bool().unwrap())
            .collect()
    };
    let first = ok(&mut backup(&f, &couch.url, &["--all-dbs"])).json();
    assert_eq!(unchanged(&first), vec![false; 150]);

    let second = ok(&mut backup(&f, &couch.url, &["--all-dbs"])).json();
    assert_eq!(unchanged(&second), vec![true; 150]);
    assert_eq!(db_stats(&second, &copies)["unchanged"], true);
    // The login, `GET /`, `_all_dbs`, two `_dbs_info`, 150 `_local_docs`;
    // for the one with three copies `_security`, `_revs_limit` and
    // `_local_docs` (its sequence is the very same: no `_changes`).
    assert_eq!(second["requests"], 158);
    assert_eq!(second["new_blobs"], 0);

    couch.write(&dbs[0], &[couch::body(9, 1)]);
    couch.ok(
        "PUT",
        &format!("{}/_security", dbs[1]),
        Some(&json!({"admins": {"names": ["head"], "roles": []}, "members": {"names": [], "roles": []}})),
    );
    set_revs_limit_and_local(&couch, &dbs[2], &dbs[3]);
    couch.delete_db(&dbs[4]);
    couch.create_db(&dbs[4]);
    couch.write(&dbs[4], &[couch::body(4, 0), couch::body(504, 0)]);
    let third = ok(&mut backup(&f, &couch.url, &["--all-dbs"])).json();
    let mut want = vec![true; 150];
    want[..5].fill(false);
    assert_eq!(unchanged(&third), want);
    for db in &dbs[..5] {
        assert_restores_as_now(&f, &couch, "latest", db, "after a change");
    }
    let meta = |db: &str| -> Value {
        let item = format!("couchdb/{db}/meta.json");
        serde_json::from_slice(&f.restore_stdout("latest", Some(&item))).unwrap()
    };
    assert_eq!(meta(&dbs[2])["revs_limit"], 500);
    assert_eq!(
        meta(&dbs[1])["security"]["admins"]["names"],
        json!(["head"])
    );
    couch.delete_db(&copies);
    for db in &dbs {
        couch.delete_db(db);
    }
}

/// CouchDB 3 stores text and JSON attachments gzip-encoded, and their
/// digests are of the encoding: a backup checks each as stored, keeps the
/// identity bytes (so equal ones are stored once), and they restore byte
/// for byte. An encoding damaged on the server is still found and named,
/// and leaves no snapshot.
#[test]
fn gzip_encoded_attachments_back_up_byte_identical_and_damage_is_named() {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(server) = Couch::from_env() else {
        return;
    };
    let (couch, proxy) = server.couchdb3_proxy();
    let emulation = proxy.couch3.as_ref().unwrap();
    let f = Fixture::new();
    let db = couch.new_db("gzip");
    couch.create_db(&db);
    let text = b"Week 3: the water cycle. Evaporation, condensation, rain.\n".repeat(300);
    let json_bytes = br#"{"course":"course-v1:School+M1+2026","blocks":[1,2,3]}"#.to_vec();
    let html = b"<html><body><p>Quiz</p></body></html>\n".repeat(50);
    let png = support::random_bytes(200_000, 7);
    let revs = couch.write(
        &db,
        &[
            json!({"_id": "lesson", "v": 1}),
            json!({"_id": "copy", "v": 2}),
        ],
    );
    let mut rev = revs["lesson"].clone();
    for (name, kind, data) in [
        ("notes.txt", "text/plain", &text),
        ("data.json", "application/json", &json_bytes),
        ("page.html", "text/html; charset=utf-8", &html),
        ("figure.png", "image/png", &png),
    ] {
        rev = couch.attach_typed(&db, "lesson", &rev, name, kind, data);
    }
    couch.attach_typed(&db, "copy", &revs["copy"], "notes.txt", "text/plain", &text);
    // The emulation shows what CouchDB 3 shows: the digest of the encoding.
    let doc = couch.ok("GET", &format!("{db}/lesson?att_encoding_info=true"), None);
    let stub = &doc["_attachments"]["notes.txt"];
    assert_eq!(
        stub["digest"],
        couch3::md5_digest(&couch3::gzip(&text)),
        "{stub}"
    );
    assert_ne!(stub["digest"], couch3::md5_digest(&text));
    assert_eq!(stub["encoding"], "gzip");
    assert_eq!(
        doc["_attachments"]["figure.png"]["digest"],
        couch3::md5_digest(&png)
    );
    let want = couch.fingerprint(&db);

    let summary = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    assert_eq!(
        db_stats(&summary, &db)["counts"]["attachments"],
        5,
        "{summary}"
    );
    assert!(
        emulation.gzip_answers.load(SeqCst) >= 4,
        "fetched as stored"
    );
    // The records hold identity bytes; the gzip-encoded ones say so.
    let records = f.restore_stdout("latest", Some(&format!("couchdb/{db}/attachments.bin")));
    let encoded = memmem_count(&records, br#""encoding":"gzip","data_digest":"md5-"#);
    assert_eq!(encoded, 4, "notes.txt twice, data.json, page.html");
    assert!(memmem_count(&records, &text) == 2 && memmem_count(&records, &png) == 1);
    let verified = ok(f.cmd("verify").args(["--read-data", "--json"])).json();
    assert_eq!(verified["damaged_snapshots"], json!([]), "{verified}");

    // Restored into CouchDB 3 under another name: the same bytes, types and
    // (CouchDB 3 encodes them the same way) digests.
    let copy = format!("{db}_copy");
    let report = ok(&mut restore(
        &f,
        "latest",
        &couch.url,
        &["--db", &format!("{db}:{copy}")],
    ))
    .json();
    assert_eq!(report["clean"], true, "{report}");
    couch::assert_same(&couch.fingerprint(&copy), &want, "restored");
    let restored = couch.ok("GET", &format!("{copy}/lesson"), None);
    assert_eq!(
        restored["_attachments"]["page.html"]["content_type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(couch.bytes(&format!("{copy}/lesson/data.json")), json_bytes);

    // The server's copy of data.json damaged: named, exit 15, no snapshot.
    emulation.damaged.lock().unwrap().push("data.json".into());
    let fresh = Fixture::new();
    run(&mut backup(&fresh, &couch.url, &["--db", &db]))
        .expect_code(15)
        .stderr_has(&["data.json", "\"lesson\"", "damaged on the server"]);
    assert!(fresh.snapshots(&[]).is_empty());
    couch.delete_db(&db);
    couch.delete_db(&copy);
}

/// A database keeps its shard count and partitioning when restored into a
/// cluster; its replica count where the target has the nodes for it.
#[test]
fn restored_databases_keep_their_shards_and_partitioning() {
    let Some(server) = Couch::from_env() else {
        return;
    };
    let couch = server.couchdb3();
    let f = Fixture::new();
    let (sharded, parts) = (couch.new_db("q4"), couch.new_db("parts"));
    couch.ok("PUT", &format!("{sharded}?q=4&n=3"), None);
    couch.ok("PUT", &format!("{parts}?partitioned=true"), None);
    for db in [&sharded, &parts] {
        couch.write(db, &[json!({"_id": "school:1", "v": 1})]);
    }
    ok(&mut backup(
        &f,
        &couch.url,
        &["--db", &sharded, "--db", &parts],
    ));

    let copy = |db: &str, extra: &[&str]| {
        let target = format!("{db}_copy");
        couch.delete_db(&target);
        let mut args = vec!["--db".to_string(), format!("{db}:{target}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = ok(&mut restore(&f, "latest", &couch.url, &args)).json();
        assert_eq!(report["clean"], true, "{report}");
        let info = couch.ok("GET", &target, None);
        couch.delete_db(&target);
        (report["databases"][0]["shape"].clone(), info)
    };
    // Same q; n=3 needs three nodes and the target has one: its default.
    let (shape, info) = copy(&sharded, &[]);
    assert_eq!(info["cluster"]["q"], 4, "{info}");
    assert_eq!(info["cluster"]["n"], 1, "{info}");
    assert_eq!(
        shape,
        json!({"q": 4, "n": null, "partitioned": false, "n_lowered_from": 3})
    );
    // As asked.
    let (_, info) = copy(&sharded, &["--q", "8", "--n", "1"]);
    assert_eq!(
        (&info["cluster"]["q"], &info["cluster"]["n"]),
        (&json!(8), &json!(1))
    );
    // Partitioned stays partitioned.
    let (shape, info) = copy(&parts, &[]);
    assert_eq!(info["props"]["partitioned"], true, "{info}");
    assert_eq!(shape["partitioned"], true);
    couch.delete_db(&sharded);
    couch.delete_db(&parts);
}

fn memmem_count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn db_stats<'a>(summary: &'a Value, db: &str) -> &'a Value {
    summary["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["db"] == db)
        .unwrap()
}

fn backup_drop_restore_gives_back_every_revision_attachment_view_and_setting(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("faithful");
    couch.populate(&db, 300);
    let before = couch.fingerprint(&db);
    assert!(before["docs"].as_object().unwrap().len() > 300);

    let summary = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let stats = db_stats(&summary, &db);
    assert_eq!(stats["counts"]["docs"], 300 + 1 + 2 + 1, "{stats}");
    assert_eq!(stats["counts"]["conflicted_docs"], 1);
    assert_eq!(stats["counts"]["deleted_leaves"], 3);
    assert_eq!(stats["counts"]["design_leaves"], 1);
    assert_eq!(stats["counts"]["attachments"], 3);
    // verify reads the dump back: lines, counts, attachment digests.
    let verified = ok(f.cmd("verify").args(["--read-data", "--json"])).json();
    assert_eq!(verified["damaged_snapshots"], json!([]), "{verified}");

    couch.delete_db(&db);
    let report = ok(&mut restore(&f, "latest", &couch.url, &["--db", &db])).json();
    assert_eq!(report["clean"], true, "{report}");
    let restored = &report["databases"][0];
    assert_eq!(restored["created"], true);
    assert_eq!(restored["comparison"]["missing"], 0);
    assert_eq!(restored["comparison"]["extra"], 0);
    couch::assert_same(&couch.fingerprint(&db), &before, "restored");

    // The design document is live again: its validation rejects bad writes.
    let (status, _) = couch.req("PUT", &format!("{db}/no-v"), Some(&json!({"x": 1})));
    assert_eq!(status, 403);
    // A second restore into the now non-empty database is refused.
    run(&mut restore(&f, "latest", &couch.url, &["--db", &db])).expect_code(11);
    couch.delete_db(&db);
}

fn second_backup_fetches_only_changed_documents_and_stores_little(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("incremental");
    couch.create_db(&db);
    let n = 3000;
    let docs: Vec<Value> = (0..n).map(|i| couch::body(i, 0)).collect();
    let revs = couch.write(&db, &docs);
    let first = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let first_db = db_stats(&first, &db);
    assert_eq!(first_db["fetched_leaves"], n as u64);

    // Change 2 %: 60 documents.
    let changed: Vec<Value> = (0..n)
        .step_by(50)
        .map(|i| {
            let mut d = couch::body(i, 1);
            d["_rev"] = json!(revs[d["_id"].as_str().unwrap()]);
            d
        })
        .collect();
    couch.write(&db, &changed);
    let second = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let second_db = db_stats(&second, &db);
    assert_eq!(
        second_db["fetched_leaves"],
        changed.len() as u64,
        "{second_db}"
    );
    assert_eq!(second_db["reused_leaves"], (n - changed.len()) as u64);
    assert_eq!(second_db["only_changes"], true, "{second_db}");
    let (stored1, stored2) = (
        first["stored_bytes"].as_u64().unwrap(),
        second["stored_bytes"].as_u64().unwrap(),
    );
    assert!(
        stored2 * 10 < stored1,
        "second backup stored {stored2} bytes, the first {stored1}: {second}"
    );
    // Only the changes list and 60 documents travelled.
    let (got1, got2) = (
        first["bytes_received"].as_u64().unwrap(),
        second["bytes_received"].as_u64().unwrap(),
    );
    assert!(
        got2 * 10 < got1,
        "received {got2} bytes, the first time {got1}"
    );

    // The second snapshot is complete on its own.
    assert_restores_as_now(
        &f,
        couch,
        second["snapshot"].as_str().unwrap(),
        &db,
        "second snapshot",
    );
    eprintln!(
        "2 % changed: second backup stored {stored2} bytes, {:.1} % of the first's {stored1}",
        stored2 as f64 * 100.0 / stored1 as f64
    );

    // Another 2 % (some changed again): a second overlay on the same base.
    let again: Vec<Value> = (25..n)
        .step_by(50)
        .chain([0, 50])
        .map(|i| {
            let mut d = couch::body(i, 3);
            let id = d["_id"].as_str().unwrap().to_string();
            d["_rev"] = couch.ok("GET", &format!("{db}/{id}"), None)["_rev"].clone();
            d
        })
        .collect();
    couch.write(&db, &again);
    let third = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let third_db = db_stats(&third, &db);
    assert_eq!(third_db["fetched_leaves"], again.len() as u64, "{third_db}");
    assert_eq!(third_db["rewrote_base"], false);
    let listing = ok(f.cmd("ls").args(["latest", "-r", "--json"])).stdout_str();
    let names: Vec<String> = listing
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|i| i["path"].as_str().unwrap().to_string())
        .filter(|n| n.contains("/docs."))
        .collect();
    assert_eq!(names.len(), 3, "base and two overlays: {names:?}");
    assert!(third["stored_bytes"].as_u64().unwrap() * 10 < stored1);
    assert_restores_as_now(&f, couch, "latest", &db, "two overlays");

    // Documents that vanish (the database recreated with fewer) leave an
    // overlay as removals; that snapshot restores exactly.
    couch.delete_db(&db);
    couch.create_db(&db);
    let fewer: Vec<Value> = (0..n - 100).map(|i| couch::body(i, 2)).collect();
    couch.write(&db, &fewer);
    let fourth = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let fourth_db = db_stats(&fourth, &db);
    assert_eq!(fourth_db["counts"]["docs"], (n - 100) as u64);
    assert_eq!(fourth_db["fetched_leaves"], (n - 100) as u64);
    assert_eq!(fourth_db["rewrote_base"], false, "{fourth_db}");
    // The database's sequence went back (it was recreated): every id listed.
    assert_eq!(fourth_db["only_changes"], false);
    assert_restores_as_now(&f, couch, "latest", &db, "removals");

    // The overlays now outweigh half the base: the next backup writes a new
    // base, still without fetching anything.
    let fifth = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    let fifth_db = db_stats(&fifth, &db);
    assert_eq!(fifth_db["rewrote_base"], true, "{fifth_db}");
    assert_eq!(fifth_db["fetched_leaves"], 0);
    assert_restores_as_now(&f, couch, "latest", &db, "new base");
    couch.delete_db(&db);
}

fn restore_refuses_a_non_empty_database_and_changes_nothing(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("refuse");
    couch.create_db(&db);
    couch.write(&db, &[couch::body(1, 0), couch::body(2, 0)]);
    ok(&mut backup(&f, &couch.url, &["--db", &db]));

    let target = couch.new_db("busy");
    couch.create_db(&target);
    couch.write(&target, &[json!({"_id": "mine", "v": 0})]);
    let before = couch.fingerprint(&target);
    run(&mut restore(
        &f,
        "latest",
        &couch.url,
        &["--db", &format!("{db}:{target}")],
    ))
    .expect_code(11)
    .stderr_has(&["not empty", "--merge", "nothing was changed"]);
    couch::assert_same(&couch.fingerprint(&target), &before, "refused");

    // --merge adds the snapshot's documents beside what is there.
    let report = ok(&mut restore(
        &f,
        "latest",
        &couch.url,
        &["--db", &format!("{db}:{target}"), "--merge"],
    ))
    .json();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(couch.leaves(&target).len(), 3);
    couch.delete_db(&db);
    couch.delete_db(&target);
}

fn restore_killed_anywhere_and_run_again_gives_the_same_database(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("crash");
    couch.populate(&db, 2000);
    let want = couch.fingerprint(&db);
    ok(&mut backup(&f, &couch.url, &["--db", &db]));
    let slow = ["--batch-docs", "40", "--requests", "1"];

    // How long an uninterrupted restore takes, to spread the kills over it.
    let probe = couch.new_db("crash_probe");
    let started = Instant::now();
    let mut args = vec!["--db".to_string(), format!("{db}:{probe}")];
    args.extend(slow.iter().map(|s| s.to_string()));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&mut restore(&f, "latest", &couch.url, &args_ref));
    let full = started.elapsed();
    couch.delete_db(&probe);

    let bin = assert_cmd::cargo::cargo_bin("cairn");
    for seed in [1u64, 2, 3, 4] {
        let target = couch.new_db(&format!("crash{seed}"));
        let mapping = format!("{db}:{target}");
        // Kill at a seeded point between 2 % and 95 % of a full run.
        let fraction = 0.02 + (seed.wrapping_mul(0x9E37_79B9) % 93) as f64 / 100.0;
        let mut child = std::process::Command::new(&bin)
            .args(["restore", "couchdb", "--repo"])
            .arg(&f.repo)
            .args(["latest", "--quiet", "--url", &couch.url, "--db", &mapping])
            .args(slow)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(fraction));
        // On a busy machine this run can be faster than the probe and be
        // done already: then there is nothing to resume, only to check.
        let finished = child.try_wait().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let (marker_status, _) = couch.req("GET", &format!("{target}/_local/cairn-restore"), None);
        let (_, info) = couch.req("GET", &target, None);
        let holds_docs = info["doc_count"].as_u64().unwrap_or(0) > 0;
        if let Some(status) = finished {
            assert!(status.success(), "seed {seed}: {status}");
        } else if marker_status == 404 && holds_docs {
            // Killed after its last step (the marker removed) but before it
            // exited: the database is whole, and without a marker a second
            // run cannot tell it from someone else's, so it refuses.
            let again = run(&mut restore(&f, "latest", &couch.url, &["--db", &mapping]));
            assert_eq!(again.code, 11, "seed {seed}: {}", again.stderr);
        } else {
            let again = run(&mut restore(&f, "latest", &couch.url, &["--db", &mapping]));
            if again.code != 0 {
                let (_, marker) = couch.req("GET", &format!("{target}/_local/cairn-restore"), None);
                let (_, changes) = couch.req("GET", &format!("{target}/_changes?limit=3"), None);
                let (_, info) = couch.req("GET", &target, None);
                panic!(
                    "seed {seed} (killed at {fraction:.2} of {full:?}): exit {}\n{}\nmarker {marker}\nchanges {changes}\ninfo {info}",
                    again.code, again.stderr
                );
            }
            let report = again.json();
            assert_eq!(report["clean"], true, "seed {seed}: {report}");
        }
        couch::assert_same(&couch.fingerprint(&target), &want, &format!("seed {seed}"));
        // The marker is gone once the restore is complete.
        let (status, _) = couch.req("GET", &format!("{target}/_local/cairn-restore"), None);
        assert_eq!(status, 404, "seed {seed}");
        couch.delete_db(&target);
    }
    couch.delete_db(&db);
}

fn an_imported_all_docs_dump_restores_with_the_same_revisions(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("legacy");
    couch.populate(&db, 120);
    // Today's dumps: _all_docs?include_docs=true, one file per database.
    let dump = couch.bytes(&format!("{db}/_all_docs?include_docs=true"));
    let dir = f.path("dumps");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(format!("{db}.json")), &dump).unwrap();
    std::fs::write(
        dir.join("backup_manifest.json"),
        json!({"databases": [{"db": db, "file": format!("{db}.json")}]}).to_string(),
    )
    .unwrap();

    let mut c = support::cairn();
    c.args(["backup", "couchdb", "--repo"])
        .arg(&f.repo)
        .arg("--key")
        .arg(&f.key)
        .args(["--json", "--import"])
        .arg(&dir);
    let summary = ok(&mut c).json();
    assert_eq!(db_stats(&summary, &db)["counts"]["design_leaves"], 1);

    let target = couch.new_db("legacy_restored");
    let report = ok(&mut restore(
        &f,
        "latest",
        &couch.url,
        &["--db", &format!("{db}:{target}")],
    ))
    .json();
    assert_eq!(report["clean"], true, "{report}");
    let dump: Value = serde_json::from_slice(&dump).unwrap();
    let rows = dump["rows"].as_array().unwrap();
    assert!(rows.len() > 120);
    for row in rows {
        let id = row["id"].as_str().unwrap();
        let got = couch.ok("GET", &format!("{target}/{}", encode(id)), None);
        let mut want = row["doc"].clone();
        want.as_object_mut().unwrap().remove("_attachments");
        assert_eq!(got, want, "{id}");
    }
    couch.delete_db(&db);
    couch.delete_db(&target);
}

fn encode(id: &str) -> String {
    match id.strip_prefix("_design/") {
        Some(rest) => format!("_design/{rest}"),
        None => id.replace('/', "%2F"),
    }
}

fn failures_have_clear_messages_and_distinct_exit_codes(couch: &Couch) {
    let f = Fixture::new();
    let db = couch.new_db("errors");
    couch.create_db(&db);
    couch.write(&db, &[couch::body(1, 0)]);

    // Wrong credentials: 10, and the password is never printed.
    let wrong = couch.url.replace(":s3cret@", ":wrong-secret@");
    run(&mut backup(&f, &wrong, &["--db", &db]))
        .expect_code(10)
        .stderr_has(&["refused the credentials", "COUCHDB_USER"]);
    let r = run(&mut backup(&f, &wrong, &["--db", &db]));
    assert!(!r.stderr.contains("wrong-secret"), "{}", r.stderr);
    // Unreachable: 4.
    run(&mut backup(
        &f,
        "http://admin:x@127.0.0.1:1",
        &["--db", &db, "--attempts", "2"],
    ))
    .expect_code(4)
    .stderr_has(&["unreachable"]);
    // A database that does not exist: 5.
    run(&mut backup(&f, &couch.url, &["--db", "no_such_db"])).expect_code(5);
    // A dump line that is not JSON: 8, and no snapshot.
    let bad = f.path("broken.json");
    std::fs::write(
        &bad,
        "{\"_id\":\"a\",\"_rev\":\"1-a\"}\n{\"_id\":\"b\",\"_rev\":\"1-b\"\nthis is not json\n",
    )
    .unwrap();
    let mut c = support::cairn();
    c.args(["backup", "couchdb", "--repo"])
        .arg(&f.repo)
        .arg("--key")
        .arg(&f.key)
        .arg("--import")
        .arg(&bad);
    run(&mut c)
        .expect_code(8)
        .stderr_has(&["broken.json", "line"]);
    assert!(f.snapshots(&[]).is_empty());
    // Restoring a snapshot that is not a CouchDB backup: usage error.
    f.backup_bytes("plain", b"data", &[]);
    run(&mut restore(&f, "latest", &couch.url, &["--db", &db])).expect_code(2);
    couch.delete_db(&db);
}

fn transient_failures_are_retried_big_batches_split_and_a_403_stops(couch: &Couch) {
    use std::sync::atomic::Ordering::SeqCst;
    let f = Fixture::new();
    let db = couch.new_db("faults");
    couch.create_db(&db);
    let docs: Vec<Value> = (0..1500).map(|i| couch::body(i, 0)).collect();
    couch.write(&db, &docs);
    let want = couch.fingerprint(&db);
    let proxy = faulty::Proxy::start(couch.upstream());
    let url = proxy.url(&couch.url);

    // 503s and dropped connections while backing up: retried.
    proxy.faults.unavailable.store(3, SeqCst);
    proxy.faults.drop_every.store(5, SeqCst);
    let summary = ok(&mut backup(&f, &url, &["--db", &db])).json();
    assert!(summary["retries"].as_u64().unwrap() >= 4, "{summary}");
    assert_eq!(db_stats(&summary, &db)["counts"]["docs"], 1500);

    // Restoring: a server that takes at most 200 kB per request (batches
    // are split), an expired session (one 401: logs in again), more 503s.
    couch.delete_db(&db);
    proxy.faults.drop_every.store(0, SeqCst);
    proxy.faults.max_body.store(200_000, SeqCst);
    proxy.faults.unauthorized_once.store(true, SeqCst);
    proxy.faults.unavailable.store(2, SeqCst);
    let report = ok(&mut restore(&f, "latest", &url, &["--db", &db])).json();
    assert_eq!(report["clean"], true, "{report}");
    assert!(
        report["databases"][0]["splits"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["retries"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        !proxy.faults.unauthorized_once.load(SeqCst),
        "the 401 was sent"
    );
    couch::assert_same(&couch.fingerprint(&db), &want, "restored through faults");

    // A 403 is not retried: it stops with the reason, and exit code 10.
    *proxy.faults.forbid.lock().unwrap() = Some("_bulk_docs".into());
    let other = couch.new_db("faults_forbidden");
    run(&mut restore(
        &f,
        "latest",
        &url,
        &["--db", &format!("{db}:{other}")],
    ))
    .expect_code(10)
    .stderr_has(&["forbids", "server admin"]);
    couch.delete_db(&db);
    couch.delete_db(&other);
}

fn several_databases_at_once_and_a_refusing_target_exits_16(couch: &Couch) {
    let f = Fixture::new();
    let dbs: Vec<String> = (0..3).map(|i| couch.new_db(&format!("multi{i}"))).collect();
    for (i, db) in dbs.iter().enumerate() {
        couch.create_db(db);
        let docs: Vec<Value> = (0..200 * (i + 1)).map(|n| couch::body(n, i)).collect();
        couch.write(db, &docs);
    }
    let mut args = vec!["--jobs", "2", "--requests", "2"];
    for db in &dbs {
        args.extend(["--db", db.as_str()]);
    }
    let summary = ok(&mut backup(&f, &couch.url, &args)).json();
    assert_eq!(summary["databases"].as_array().unwrap().len(), 3);

    // All three restored under new names, each equal to its source.
    let mapping: Vec<String> = dbs.iter().map(|db| format!("{db}:{db}_copy")).collect();
    let mut args = Vec::new();
    for m in &mapping {
        args.extend(["--db", m.as_str()]);
    }
    let report = ok(&mut restore(&f, "latest", &couch.url, &args)).json();
    assert_eq!(report["databases"].as_array().unwrap().len(), 3);
    for db in &dbs {
        couch::assert_same(
            &couch.fingerprint(&format!("{db}_copy")),
            &couch.fingerprint(db),
            db,
        );
        couch.delete_db(&format!("{db}_copy"));
    }

    // A target whose validation refuses every document: the restore says
    // which and exits 16.
    let target = couch.new_db("refusing");
    couch.create_db(&target);
    couch.ok(
        "PUT",
        &format!("{target}/_design/no"),
        Some(&json!({"validate_doc_update": "function () { throw({forbidden: 'read-only'}); }"})),
    );
    run(&mut restore(
        &f,
        "latest",
        &couch.url,
        &["--db", &format!("{}:{target}", dbs[0]), "--merge"],
    ))
    .expect_code(16)
    .stderr_has(&["does not match the snapshot", "refused", "read-only"]);
    couch.delete_db(&target);
    for db in &dbs {
        couch.delete_db(db);
    }
}

/// After losing a server: its `_users` (the accounts) restores into a
/// fresh server, whose `_users` already holds CouchDB's own
/// `_design/_auth`; that one stays the target's and is not compared.
#[test]
fn users_restore_into_a_fresh_server_keeping_its_own_auth_design() {
    let Some(couch) = Couch::from_env() else {
        return;
    };
    let fresh = match std::env::var("CAIRN_TEST_COUCH_FRESH") {
        Ok(url) => Couch::at(&url),
        Err(_) => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_COUCH").is_none(),
                "CAIRN_TEST_COUCH_FRESH is not set: run tests/run"
            );
            return;
        }
    };
    let name = format!("t_user_{}", support::unique_name());
    let id = format!("org.couchdb.user:{name}");
    couch.ok(
        "PUT",
        &format!("_users/{}", encode(&id)),
        Some(&json!({"_id": id, "name": name, "type": "user", "roles": ["learner"], "password": "pw"})),
    );
    let f = Fixture::new();
    ok(&mut backup(&f, &couch.url, &["--db", "_users"]));
    let (_, auth_before) = fresh.req("GET", "_users/_design/_auth", None);
    assert!(
        auth_before["_rev"].is_string(),
        "a fresh server has its own: {auth_before}"
    );

    let report = ok(&mut restore(&f, "latest", &fresh.url, &["--db", "_users"])).json();
    assert_eq!(report["clean"], true, "{report:#}");
    let db = &report["databases"][0];
    assert_eq!(db["design_kept"], 1, "{report:#}");
    let (status, user) = fresh.req("GET", &format!("_users/{}", encode(&id)), None);
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["roles"], json!(["learner"]));
    let (_, auth_after) = fresh.req("GET", "_users/_design/_auth", None);
    assert_eq!(
        auth_after["_rev"], auth_before["_rev"],
        "the server's own design kept"
    );
    // Every account of the source is there, with the same leaves.
    assert_eq!(
        fresh.leaves("_users").get(&id),
        couch.leaves("_users").get(&id),
        "same revisions"
    );
}

/// A database whose documents are more than the pipes between the reader of
/// the server and the backup hold (4 MiB each): the backup reads a
/// database's attachments first (name order), which the producer writes
/// only after the documents. It used to wait forever for them.
#[test]
fn a_database_larger_than_the_pipes_backs_up_and_restores() {
    let Some(couch) = Couch::from_env() else {
        return;
    };
    let f = Fixture::new();
    let db = couch.new_db("big");
    couch.create_db(&db);
    let pad = "x".repeat(2000);
    for batch in 0..6 {
        let docs: Vec<Value> = (0..500)
            .map(|i| json!({"_id": format!("doc{batch:02}{i:04}"), "v": i, "pad": pad}))
            .collect();
        couch.write(&db, &docs);
    }
    let (_, id) = couch.req("GET", &format!("{db}/doc000000"), None);
    let rev = id["_rev"].as_str().unwrap().to_string();
    couch.attach(&db, "doc000000", &rev, "a.bin", &[9u8; 70_000]);
    // `cairn()` kills a command after 60 s: a hang fails the test.
    let report = ok(&mut backup(&f, &couch.url, &["--db", &db])).json();
    assert_eq!(report["databases"][0]["counts"]["docs"], 3000, "{report:#}");
    assert_restores_as_now(&f, &couch, "latest", &db, "a large database");
    couch.delete_db(&db);
}
