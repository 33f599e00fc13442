//! A CouchDB-compatible server for tests (pouchdb-server, started by
//! tests/run): databases with every kind of content, and fingerprints of a
//! database that two restores must agree on.
#![allow(dead_code, clippy::unwrap_used, missing_debug_implementations)]

use std::collections::BTreeMap;

use reqwest::blocking::Client;
use serde_json::{Value, json};

/// The test server, from `CAIRN_TEST_COUCH` (a URL with admin credentials).
pub struct Couch {
    pub url: String,
    http: Client,
}

impl Couch {
    /// The server, or `None` (test skipped) when none is configured; with
    /// `CAIRN_TEST_REQUIRE_COUCH` set a missing server fails the test.
    pub fn from_env() -> Option<Couch> {
        match std::env::var("CAIRN_TEST_COUCH") {
            Ok(url) => Some(Couch {
                url: url.trim_end_matches('/').to_string(),
                http: Client::builder()
                    .timeout(std::time::Duration::from_secs(120))
                    .build()
                    .unwrap(),
            }),
            Err(_) => {
                assert!(
                    std::env::var_os("CAIRN_TEST_REQUIRE_COUCH").is_none(),
                    "CAIRN_TEST_COUCH is not set: run tests/run"
                );
                eprintln!("skipped: no CouchDB server (CAIRN_TEST_COUCH); tests/run starts one");
                None
            }
        }
    }

    /// The server at `url` (with admin credentials).
    pub fn at(url: &str) -> Couch {
        Couch {
            url: url.trim_end_matches('/').to_string(),
            http: Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    /// The same server behind a proxy that makes it behave as Apache
    /// CouchDB 3 where pouchdb-server differs (`couch3.rs`).
    pub fn couchdb3(&self) -> Couch {
        self.couchdb3_proxy().0
    }

    /// [`Couch::couchdb3`], and the proxy (to damage what it serves).
    pub fn couchdb3_proxy(&self) -> (Couch, crate::faulty::Proxy) {
        let proxy = crate::faulty::Proxy::couchdb3(self.upstream());
        let couch = Couch {
            url: proxy.url(&self.url),
            http: self.http.clone(),
        };
        (couch, proxy)
    }

    /// The server's `host:port`, for a proxy in front of it.
    pub fn upstream(&self) -> String {
        let url = reqwest::Url::parse(&self.url).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
    }

    /// A fresh database name.
    pub fn new_db(&self, prefix: &str) -> String {
        format!("t_{prefix}_{}", crate::support::unique_name())
    }

    /// One request; returns the status and the JSON body (Null if none).
    pub fn req(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}/{path}", self.url))
            .header("Accept", "application/json");
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let response = r.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A request that must succeed.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.req(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Raw bytes of a GET.
    pub fn bytes(&self, path: &str) -> Vec<u8> {
        let r = self
            .http
            .get(format!("{}/{path}", self.url))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().unwrap().to_vec()
    }

    pub fn create_db(&self, db: &str) {
        self.ok("PUT", db, None);
    }

    pub fn delete_db(&self, db: &str) {
        let _ = self.req("DELETE", db, None);
    }

    /// Writes documents as a replicator does (revisions as given).
    pub fn replicate_in(&self, db: &str, docs: &[Value]) {
        let v = self.ok(
            "POST",
            &format!("{db}/_bulk_docs"),
            Some(&json!({"new_edits": false, "docs": docs})),
        );
        assert_eq!(v, json!([]), "{v}");
    }

    /// Writes documents normally; returns their new revisions by id.
    pub fn write(&self, db: &str, docs: &[Value]) -> BTreeMap<String, String> {
        let v = self.ok(
            "POST",
            &format!("{db}/_bulk_docs"),
            Some(&json!({ "docs": docs })),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(r.get("error").is_none(), "{r}");
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["rev"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Adds a binary attachment; returns the new revision.
    pub fn attach(&self, db: &str, id: &str, rev: &str, name: &str, data: &[u8]) -> String {
        self.attach_typed(db, id, rev, name, "application/octet-stream", data)
    }

    /// Adds an attachment of a content type; returns the new revision.
    pub fn attach_typed(
        &self,
        db: &str,
        id: &str,
        rev: &str,
        name: &str,
        content_type: &str,
        data: &[u8],
    ) -> String {
        let r = self
            .http
            .put(format!("{}/{db}/{id}/{name}?rev={rev}", self.url))
            .header("Content-Type", content_type)
            .body(data.to_vec())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "attach: {}", r.status());
        let v: Value = serde_json::from_str(&r.text().unwrap()).unwrap();
        v["rev"].as_str().unwrap().to_string()
    }

    /// Every id's leaf revisions, sorted.
    pub fn leaves(&self, db: &str) -> BTreeMap<String, Vec<String>> {
        let v = self.ok("GET", &format!("{db}/_changes?style=all_docs"), None);
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut revs: Vec<String> = r["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["rev"].as_str().unwrap().to_string())
                    .collect();
                revs.sort();
                (r["id"].as_str().unwrap().to_string(), revs)
            })
            .collect()
    }

    /// Everything a faithful restore must reproduce: every leaf with its
    /// `_revisions` and body, every attachment's bytes (by hash), the
    /// results of every view, and `_security`.
    pub fn fingerprint(&self, db: &str) -> Value {
        let leaves = self.leaves(db);
        let wanted: Vec<Value> = leaves
            .iter()
            .flat_map(|(id, revs)| revs.iter().map(move |r| json!({"id": id, "rev": r})))
            .collect();
        let got = self.ok(
            "POST",
            &format!("{db}/_bulk_get?revs=true"),
            Some(&json!({ "docs": wanted })),
        );
        let mut docs = BTreeMap::new();
        let mut views = BTreeMap::new();
        for result in got["results"].as_array().unwrap() {
            for d in result["docs"].as_array().unwrap() {
                let mut doc = d["ok"].clone();
                assert!(doc.is_object(), "missing leaf: {d}");
                let id = doc["_id"].as_str().unwrap().to_string();
                let rev = doc["_rev"].as_str().unwrap().to_string();
                if let Some(atts) = doc.get_mut("_attachments").and_then(Value::as_object_mut) {
                    for (name, stub) in atts.iter_mut() {
                        let bytes = self.bytes(&format!("{db}/{id}/{name}?rev={rev}"));
                        stub["blake3"] = json!(cairn_store::id::BlobId::of(&bytes).to_hex());
                        stub["bytes"] = json!(bytes.len());
                        // pouchdb-server sets revpos to the generation of the
                        // revision that carries the data (pouchdb-adapter-
                        // leveldb-core, saveAttachment); CouchDB keeps the
                        // revpos a restore sends. Bytes and digest must match.
                        stub.as_object_mut().unwrap().remove("revpos");
                    }
                }
                if id.starts_with("_design/") && doc.get("_deleted").is_none() {
                    for view in doc["views"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k)
                    {
                        let rows = self.ok("GET", &format!("{db}/{id}/_view/{view}"), None);
                        views.insert(format!("{id}/{view}"), rows["rows"].clone());
                    }
                }
                docs.insert(format!("{id} {rev}"), doc);
            }
        }
        json!({
            "docs": docs,
            "views": views,
            "security": self.ok("GET", &format!("{db}/_security"), None),
        })
    }

    /// A database with every kind of content: `n` ordinary documents (some
    /// updated, so they have history), conflicts, deleted documents (one a
    /// deleted conflict leaf), attachments (text, JSON: compressible, which
    /// CouchDB 3 stores gzip-encoded; and 1.5 MiB of binary), a `_local`
    /// document, a design document with a view and a validate_doc_update that
    /// rejects documents without `v`, and `_security`.
    pub fn populate(&self, db: &str, n: usize) {
        self.create_db(db);
        let docs: Vec<Value> = (0..n).map(|i| body(i, 0)).collect();
        let revs = self.write(db, &docs);
        // Histories: every tenth document updated twice.
        for round in 1..=2 {
            let updated: Vec<Value> = (0..n)
                .step_by(10)
                .map(|i| {
                    let mut d = body(i, round);
                    let id = d["_id"].as_str().unwrap().to_string();
                    let rev = self.ok("GET", &format!("{db}/{id}"), None)["_rev"].clone();
                    d["_rev"] = rev;
                    d
                })
                .collect();
            self.write(db, &updated);
        }
        drop(revs);
        // Conflicts: two branches from one parent, and a deleted third branch.
        self.replicate_in(
            db,
            &[
                json!({"_id": "conflicted", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]}, "v": "left"}),
                json!({"_id": "conflicted", "_rev": "2-c", "_revisions": {"start": 2, "ids": ["c", "a"]}, "v": "right"}),
                json!({"_id": "conflicted", "_rev": "3-d", "_revisions": {"start": 3, "ids": ["d", "e", "a"]}, "_deleted": true}),
            ],
        );
        // Deleted documents.
        let gone = self.write(
            db,
            &[
                json!({"_id": "gone-1", "v": 1}),
                json!({"_id": "gone-2", "v": 2}),
            ],
        );
        for (id, rev) in gone {
            self.ok("DELETE", &format!("{db}/{id}?rev={rev}"), None);
        }
        // Attachments.
        let rev =
            self.write(db, &[json!({"_id": "with-files", "v": "files"})])["with-files"].clone();
        let rev = self.attach_typed(
            db,
            "with-files",
            &rev,
            "note.txt",
            "text/plain",
            &b"a small note, and a longer line that compresses\n".repeat(40),
        );
        let rev = self.attach_typed(
            db,
            "with-files",
            &rev,
            "data.json",
            "application/json",
            br#"{"ok":true}"#,
        );
        let big = crate::support::random_bytes(1_536 * 1024, 42);
        self.attach(db, "with-files", &rev, "scan.bin", &big);
        // Local document, design document, security.
        self.ok(
            "PUT",
            &format!("{db}/_local/settings"),
            Some(&json!({"theme": "dark"})),
        );
        self.ok(
            "PUT",
            &format!("{db}/_design/app"),
            Some(&json!({
                "views": {"by_v": {"map": "function (doc) { if (doc.v !== undefined) emit(doc.v, 1); }"}},
                "validate_doc_update": "function (doc) { if (!doc._deleted && doc.v === undefined) throw({forbidden: 'v is required'}); }"
            })),
        );
        self.ok(
            "PUT",
            &format!("{db}/_security"),
            Some(&json!({"admins": {"names": ["principal"], "roles": []}, "members": {"names": [], "roles": ["staff"]}})),
        );
    }
}

/// An ordinary document: id spread like a UUID, a realistic body (about
/// 1.2 KB, compressing 3-4x). An update (`round`) changes a few fields, as
/// an application's edit does.
pub fn body(i: usize, round: usize) -> Value {
    let hex = |k: usize, len: usize| {
        cairn_store::id::BlobId::of(format!("{i}/{k}").as_bytes()).to_hex()[..len].to_string()
    };
    json!({
        "_id": format!("{}-{i}", hex(0, 12)),
        "v": i,
        "round": round,
        "type": "progress",
        "course": format!("course-v1:School+M{}+2026", i % 17),
        "user": {"name": format!("student{}", i % 997), "email": format!("s{}@school.example", i % 997), "grade": (i * 7 + round) % 100},
        "blocks": (0..(i % 5 + 4))
            .map(|b| json!({"id": format!("block-v1:School+M{}+type@problem+block@{}", i % 17, hex(b + 1, 16)), "done": (b + i + round) % 3 == 0, "score": (b * i) % 10}))
            .collect::<Vec<_>>(),
        "notes": (0..(4 + i % 8)).map(|k| hex(k + 10, 20 + k * 3)).collect::<Vec<_>>().join(" "),
    })
}

/// Asserts two fingerprints are equal, naming the first difference (they
/// are too large to print whole).
pub fn assert_same(got: &Value, want: &Value, context: &str) {
    if got == want {
        return;
    }
    for section in ["security", "views", "docs"] {
        let (g, w) = (&got[section], &want[section]);
        if g == w {
            continue;
        }
        if let (Some(g), Some(w)) = (g.as_object(), w.as_object()) {
            for key in w.keys().chain(g.keys()) {
                if g.get(key) != w.get(key) {
                    let cut = |v: Option<&Value>| {
                        let s = v.map_or("(absent)".to_string(), Value::to_string);
                        s.chars().take(600).collect::<String>()
                    };
                    panic!(
                        "{context}: {section} differ at {key:?} ({} vs {} entries)\n got: {}\nwant: {}",
                        g.len(),
                        w.len(),
                        cut(g.get(key)),
                        cut(w.get(key))
                    );
                }
            }
        }
        panic!("{context}: {section} differ: got {g}, want {w}");
    }
}
