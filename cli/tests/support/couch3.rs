//! What Apache CouchDB 3 does differently from pouchdb-server, emulated in
//! the test proxy (`faulty.rs`) from what was measured on CouchDB 3.5.0
//! (../shared/couchdb.md §8.7):
//!
//! - attachments of compressible types (`text/*`, `application/json`,
//!   `application/javascript`, `application/xml`) are stored gzip-encoded
//!   (level 8): a stub's `digest` is the MD5 of the *encoded* bytes,
//!   `att_encoding_info=true` adds `encoding` and `encoded_length`, and a GET
//!   of the attachment with `Accept-Encoding: gzip` returns the encoding with
//!   `Content-Encoding: gzip` (a plain GET, the identity bytes);
//! - sequences are opaque strings (`"12-g1AAAA…"`) that differ with the
//!   node that coordinates the request; any of them works as `since`, and
//!   one of a database since deleted and created again (its shards' uuids
//!   are in the sequence) replays the new database from the start;
//! - `GET /db` says the database's shard and replica counts in `cluster`,
//!   which `PUT /db?q=Q&n=N` sets, `props.partitioned` (from
//!   `?partitioned=true`) and `doc_del_count`;
//! - `GET /_membership` names the nodes: one (a single node);
//! - `_revs_limit` (GET and PUT) and `_local_docs` (of the `_local`
//!   documents written through the proxy), which pouchdb-server lacks;
//! - `GET /` welcomes as CouchDB 3.5.0, and `POST /_dbs_info` answers for
//!   up to 100 databases at once;
//! - its storage engine (`couch_bt_engine`): a write of `_security` or
//!   `_revs_limit` advances the update sequence (a `_local` document takes
//!   none).
//!
//! Sequences differ per coordinator as on a cluster, unless
//! [`Couch3::single_node`] is set: then every request sees the same one.
//!
//! pouchdb-server stores identity bytes and hashes them; the proxy fetches an
//! attachment's bytes from it to compute the digest CouchDB 3 would show.
#![allow(dead_code, clippy::unwrap_used, missing_debug_implementations)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine;
use serde_json::{Value, json};

/// The emulation's state, shared by the proxy's connections.
#[derive(Default)]
pub struct Couch3 {
    /// Requests so far: picks the coordinating node of the next one.
    requests: AtomicUsize,
    /// pouchdb's digest (of the identity bytes) → CouchDB 3's (of the gzip
    /// encoding) and the encoded length.
    digests: Mutex<HashMap<String, (String, usize)>>,
    /// `q`, `n` and the instance (a number per creation) by database.
    shards: Mutex<HashMap<String, (u64, u64, usize)>>,
    /// Databases created partitioned.
    partitioned: Mutex<Vec<String>>,
    /// `_revs_limit` by database, where set.
    revs_limits: Mutex<HashMap<String, u64>>,
    /// `_local` document ids written through the proxy, by database.
    locals: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// Databases created so far.
    created: AtomicUsize,
    /// Attachments (by name) whose stored encoding is damaged: served with
    /// a byte changed, under the undamaged digest.
    pub damaged: Mutex<Vec<String>>,
    /// Attachment answers sent gzip-encoded.
    pub gzip_answers: AtomicUsize,
    /// Writes of each database's `_security` or `_revs_limit` through the
    /// proxy (each advances its update sequence).
    settings: Mutex<HashMap<String, u64>>,
    /// `doc_del_count` by database (and `instance_start_time`), with the
    /// update sequence it was counted at.
    deleted: Mutex<HashMap<(String, String), (u64, usize)>>,
    /// One node coordinates every request (a single node): sequences are
    /// the same from one request to the next.
    pub single_node: AtomicBool,
}

/// A request as the proxy read it.
pub struct Request {
    pub method: String,
    /// The body sent.
    pub body: Vec<u8>,
    /// The path without the query, as sent (percent-encoded).
    pub path: String,
    pub query: String,
    /// Header lines to pass on when the proxy asks the server itself.
    pub auth: Vec<String>,
    pub accepts_gzip: bool,
}

/// A whole response.
pub struct Response {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Parses the request line and the header lines.
    pub fn parse(request_line: &str, header_lines: &[String], body: &[u8]) -> Request {
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let lower = |l: &String| l.to_ascii_lowercase();
        Request {
            method,
            body: body.to_vec(),
            path: path.to_string(),
            query: query.to_string(),
            auth: header_lines
                .iter()
                .filter(|l| {
                    lower(l).starts_with("authorization:") || lower(l).starts_with("cookie:")
                })
                .cloned()
                .collect(),
            accepts_gzip: header_lines.iter().any(|l| {
                let l = lower(l);
                l.starts_with("accept-encoding:") && l.contains("gzip")
            }),
        }
    }

    fn segments(&self) -> Vec<&str> {
        self.path
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// The attachment this GET asks for: (database, document path, name).
    fn attachment(&self) -> Option<(String, String, String)> {
        if self.method != "GET" {
            return None;
        }
        let s = self.segments();
        let (doc_len, rest) = match s.get(1) {
            Some(&"_design") => (2, 3),
            Some(seg) if !seg.starts_with('_') => (1, 2),
            _ => return None,
        };
        let name = s.get(rest..).filter(|n| !n.is_empty())?;
        (!name[0].starts_with('_')).then(|| {
            (
                s[0].to_string(),
                s[1..=doc_len].join("/"),
                percent_decode(&name.join("/")),
            )
        })
    }
}

impl Couch3 {
    /// The request line to send upstream, and what to remember of it.
    pub fn rewrite_request(&self, request: &Request, request_line: &str) -> String {
        let s = request.segments();
        match request.param("since") {
            Some(since) if since.contains('-') => {
                let instance = self.shape(s.first().copied().unwrap_or("")).2;
                let number = match decode_opaque(&since) {
                    Some((seq, of)) if of == instance => seq.to_string(),
                    _ => "0".to_string(),
                };
                let query: Vec<String> = request
                    .query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some(("since", _)) => format!("since={number}"),
                        _ => kv.to_string(),
                    })
                    .collect();
                request_line.replacen(
                    &format!("{}?{}", request.path, request.query),
                    &format!("{}?{}", request.path, query.join("&")),
                    1,
                )
            }
            _ => request_line.to_string(),
        }
    }

    /// The coordinating node of the next request: always the same on a
    /// single node, else each in turn.
    fn node(&self) -> usize {
        match self.single_node.load(Ordering::SeqCst) {
            true => 0,
            false => self.requests.fetch_add(1, Ordering::SeqCst) % 3,
        }
    }

    /// The emulation's own answer to what pouchdb-server lacks or answers
    /// otherwise in whole (the welcome, `_dbs_info`, `_membership`,
    /// `_revs_limit`, `_local_docs`): the proxy sends it without asking the
    /// server, whose authentication is then not applied.
    pub fn own_answer(&self, request: &Request, upstream: &str) -> Option<Response> {
        let s = request.segments();
        let get = request.method == "GET";
        if get && s.is_empty() {
            return Some(json_response(json!({
                "couchdb": "Welcome",
                "version": "3.5.0",
                "vendor": {"name": "The Apache Software Foundation"},
                "features": ["partitioned", "pluggable-storage-engines", "scheduler"],
            })));
        }
        if request.method == "POST" && s == ["_dbs_info"] {
            return Some(self.dbs_info(request, upstream, self.node()));
        }
        if get && s == ["_membership"] {
            let nodes = json!(["couchdb@127.0.0.1"]);
            return Some(json_response(
                json!({"all_nodes": nodes, "cluster_nodes": nodes}),
            ));
        }
        if s.len() == 2 && s[1] == "_revs_limit" {
            let db = s[0].to_string();
            let body = match request.method.as_str() {
                "PUT" => {
                    let limit = String::from_utf8_lossy(&request.body)
                        .trim()
                        .parse()
                        .unwrap_or(1000);
                    self.revs_limits.lock().unwrap().insert(db.clone(), limit);
                    // Its own update sequence, as `_security`'s.
                    *self.settings.lock().unwrap().entry(db).or_default() += 1;
                    json!({"ok": true})
                }
                _ => json!(
                    self.revs_limits
                        .lock()
                        .unwrap()
                        .get(&db)
                        .copied()
                        .unwrap_or(1000)
                ),
            };
            return Some(json_response(body));
        }
        if get && s.len() == 2 && s[1] == "_local_docs" {
            let ids: Vec<String> = self
                .locals
                .lock()
                .unwrap()
                .get(s[0])
                .map(|ids| ids.iter().cloned().collect())
                .unwrap_or_default();
            let rows: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let path = format!(
                        "/{}/_local/{}",
                        s[0],
                        percent_encode(&id["_local/".len()..])
                    );
                    let doc: Value =
                        serde_json::from_slice(&fetch(upstream, &request.auth, &path)).unwrap();
                    json!({"id": id, "key": id, "value": {"rev": doc["_rev"]}, "doc": doc})
                })
                .collect();
            return Some(json_response(
                json!({"total_rows": null, "offset": null, "rows": rows}),
            ));
        }
        None
    }

    /// Rewrites the server's answer as CouchDB 3 would have given it.
    pub fn rewrite_response(&self, request: &Request, upstream: &str, response: &mut Response) {
        let node = self.node();
        let s = request.segments();
        self.count_settings(request, &s, &response.status_line);
        if s.len() == 3 && s[1] == "_local" && response.status_line.contains(" 20") {
            let mut locals = self.locals.lock().unwrap();
            let ids = locals.entry(s[0].to_string()).or_default();
            let id = format!("_local/{}", percent_decode(s[2]));
            match request.method.as_str() {
                "PUT" => {
                    ids.insert(id);
                }
                "DELETE" => {
                    ids.remove(&id);
                }
                _ => {}
            }
        }
        let created = response.status_line.contains(" 201");
        if created && request.method == "PUT" && s.len() == 1 && !s[0].starts_with('_') {
            let num = |k: &str| request.param(k).and_then(|v| v.parse().ok());
            let (q, n) = (num("q").unwrap_or(2), num("n").unwrap_or(1));
            let instance = self.created.fetch_add(1, Ordering::SeqCst) + 1;
            self.shards
                .lock()
                .unwrap()
                .insert(s[0].to_string(), (q, n, instance));
            let mut partitioned = self.partitioned.lock().unwrap();
            partitioned.retain(|d| d != s[0]);
            if request.param("partitioned").as_deref() == Some("true") {
                partitioned.push(s[0].to_string());
            }
        }
        if !response.status_line.contains(" 200") && !response.status_line.contains(" 201") {
            return;
        }
        if let Some((_, _, name)) = request.attachment() {
            let compressible = response
                .header("content-type")
                .is_some_and(|t| compressible(&t));
            if compressible {
                if self.damaged.lock().unwrap().contains(&name)
                    && let Some(b) = response.body.get_mut(0)
                {
                    *b ^= 0x20;
                }
                if request.accepts_gzip {
                    response.body = gzip(&response.body);
                    response.set_header("Content-Encoding", "gzip");
                    self.gzip_answers.fetch_add(1, Ordering::SeqCst);
                }
            }
            return;
        }
        let is_json = response
            .header("content-type")
            .is_some_and(|t| t.contains("json"));
        if !is_json {
            return;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(&response.body) else {
            return;
        };
        let Some(db) = s.first().map(|d| d.to_string()) else {
            return;
        };
        let mut changed = false;
        if request.method == "GET" && s.len() == 1 && value.get("db_name").is_some() {
            self.db_info(&db, &mut value, upstream, &request.auth, node);
            changed = true;
        }
        if s.get(1) == Some(&"_changes") {
            let instance = self.shape(&db).2;
            let settings = self.settings_of(&db);
            if let Some(rows) = value.get_mut("results").and_then(Value::as_array_mut) {
                for row in rows {
                    if let Some(seq) = row.get("seq").and_then(Value::as_u64) {
                        row["seq"] = json!(opaque(seq, instance, node, settings));
                    }
                }
            }
            if let Some(seq) = value.get("last_seq").and_then(Value::as_u64) {
                value["last_seq"] = json!(opaque(seq, instance, node, settings));
            }
            changed = true;
        }
        let info = request.param("att_encoding_info").as_deref() == Some("true");
        changed |= self.rewrite_stubs(&mut value, &db, upstream, &request.auth, info);
        if changed {
            response.body = serde_json::to_vec(&value).unwrap();
        }
    }

    /// Gives every compressible attachment of every document in `value`
    /// CouchDB 3's digest (and encoding information when asked for).
    fn rewrite_stubs(
        &self,
        value: &mut Value,
        db: &str,
        upstream: &str,
        auth: &[String],
        info: bool,
    ) -> bool {
        let mut changed = false;
        match value {
            Value::Array(items) => {
                for v in items {
                    changed |= self.rewrite_stubs(v, db, upstream, auth, info);
                }
            }
            Value::Object(map) => {
                let id = map.get("_id").and_then(Value::as_str).map(str::to_string);
                let rev = map.get("_rev").and_then(Value::as_str).map(str::to_string);
                if let (Some(id), Some(rev), Some(Value::Object(atts))) =
                    (id, rev, map.get_mut("_attachments"))
                {
                    for (name, att) in atts.iter_mut() {
                        let kind = att.get("content_type").and_then(Value::as_str);
                        if !kind.is_some_and(compressible) {
                            continue;
                        }
                        let identity = att
                            .get("data")
                            .and_then(Value::as_str)
                            .map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap());
                        let key = att["digest"].as_str().unwrap_or("").to_string();
                        let (digest, encoded_len) = self.encoded_digest(&key, || {
                            identity.unwrap_or_else(|| {
                                fetch(upstream, auth, &attachment_path(db, &id, name, &rev))
                            })
                        });
                        att["digest"] = json!(digest);
                        if info {
                            att["encoding"] = json!("gzip");
                            att["encoded_length"] = json!(encoded_len);
                        }
                        changed = true;
                    }
                }
                for v in map.values_mut() {
                    changed |= self.rewrite_stubs(v, db, upstream, auth, info);
                }
            }
            _ => {}
        }
        changed
    }

    /// `GET /db` of pouchdb-server (`value`) as CouchDB 3 answers it.
    fn db_info(&self, db: &str, value: &mut Value, upstream: &str, auth: &[String], node: usize) {
        let (q, n, instance) = self.shape(db);
        value["cluster"] = json!({"q": q, "n": n, "w": n.min(2), "r": n.min(2)});
        // CouchDB counts the ids whose winning leaf is deleted; counted
        // again when the database changed.
        let key = (db.to_string(), value["instance_start_time"].to_string());
        let seq = value.get("update_seq").and_then(Value::as_u64);
        let known = self.deleted.lock().unwrap().get(&key).copied();
        let deleted = match known {
            Some((at, deleted)) if Some(at) == seq => deleted,
            _ => {
                let changes = fetch(upstream, auth, &format!("/{db}/_changes"));
                let changes: Value = serde_json::from_slice(&changes).unwrap();
                let deleted = changes["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["deleted"] == true)
                    .count();
                if let Some(seq) = seq {
                    self.deleted.lock().unwrap().insert(key, (seq, deleted));
                }
                deleted
            }
        };
        value["doc_del_count"] = json!(deleted);
        if self.partitioned.lock().unwrap().contains(&db.to_string()) {
            value["props"] = json!({"partitioned": true});
        }
        let settings = self.settings_of(db);
        if let Some(seq) = value.get("update_seq").and_then(Value::as_u64) {
            value["update_seq"] = json!(opaque(seq, instance, node, settings));
        }
    }

    /// `POST /_dbs_info {"keys": [...]}`: each database's `GET /db`, or
    /// `not_found`; more than 100 names are refused, as CouchDB's default
    /// `max_db_number_for_dbs_info_req` does.
    fn dbs_info(&self, request: &Request, upstream: &str, node: usize) -> Response {
        let keys: Vec<String> = serde_json::from_slice::<Value>(&request.body)
            .ok()
            .and_then(|v| serde_json::from_value(v["keys"].clone()).ok())
            .unwrap_or_default();
        if keys.len() > 100 {
            let mut r = json_response(json!({"error": "bad_request",
                "reason": "`keys` member must be less than or equal to 100"}));
            r.status_line = "HTTP/1.1 400 Bad Request".into();
            return r;
        }
        let rows: Vec<Value> = keys
            .into_iter()
            .map(|key| {
                let path = format!("/{}", percent_encode(&key));
                match try_fetch(upstream, &request.auth, &path) {
                    Some(body) => {
                        let mut info: Value = serde_json::from_slice(&body).unwrap();
                        self.db_info(&key, &mut info, upstream, &request.auth, node);
                        json!({"key": key, "info": info})
                    }
                    None => json!({"key": key, "error": "not_found"}),
                }
            })
            .collect();
        json_response(json!(rows))
    }

    /// Writes of `db`'s `_security` or `_revs_limit` so far.
    fn settings_of(&self, db: &str) -> u64 {
        self.settings.lock().unwrap().get(db).copied().unwrap_or(0)
    }

    /// Counts a write of `_security`, which CouchDB gives an update
    /// sequence of its own (as `_revs_limit`'s, in [`Couch3::own_answer`]).
    /// A database created anew starts at 0.
    fn count_settings(&self, request: &Request, s: &[&str], status_line: &str) {
        let Some(db) = s.first().filter(|d| !d.starts_with('_')) else {
            return;
        };
        let mut settings = self.settings.lock().unwrap();
        if request.method == "PUT" && s.len() == 1 {
            settings.remove(*db);
        } else if request.method == "PUT"
            && s.get(1) == Some(&"_security")
            && status_line.contains(" 20")
        {
            *settings.entry(db.to_string()).or_default() += 1;
        }
    }

    /// A database's `q`, `n` and instance (defaults for one created
    /// behind the proxy's back: q=2, n=1, as a single node creates them).
    fn shape(&self, db: &str) -> (u64, u64, usize) {
        self.shards
            .lock()
            .unwrap()
            .get(db)
            .copied()
            .unwrap_or((2, 1, 0))
    }

    fn encoded_digest(&self, key: &str, identity: impl FnOnce() -> Vec<u8>) -> (String, usize) {
        if let Some(known) = self.digests.lock().unwrap().get(key) {
            return known.clone();
        }
        let encoded = gzip(&identity());
        let found = (md5_digest(&encoded), encoded.len());
        self.digests
            .lock()
            .unwrap()
            .insert(key.to_string(), found.clone());
        found
    }
}

impl Response {
    /// Parses a whole HTTP/1.1 response (chunked bodies decoded).
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            body = dechunk(&body)?;
        }
        let mut response = Response {
            status_line,
            headers,
            body,
        };
        response.remove_header("transfer-encoding");
        Some(response)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    /// The response as sent, with its length and `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.status_line);
        for (k, v) in &self.headers {
            if !["content-length", "connection"].contains(&k.to_ascii_lowercase().as_str()) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// CouchDB 3's default `compressible_types`.
fn compressible(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    t.starts_with("text/")
        || [
            "application/javascript",
            "application/json",
            "application/xml",
        ]
        .contains(&t.as_str())
}

/// CouchDB 3's encoding: gzip at level 8 (deterministic: no name, no time).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(8));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn md5_digest(data: &[u8]) -> String {
    use md5::Digest;
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
    )
}

/// A sequence of a database `instance` as a CouchDB 3 coordinator `node`
/// would show it after `seq` document updates and `settings` writes of
/// `_security` or `_revs_limit` (each takes a sequence number too).
fn opaque(seq: u64, instance: usize, node: usize, settings: u64) -> String {
    let tail = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "node{node}@127.0.0.1 shards-of-{instance} {seq} {settings}"
    ));
    format!("{}-g1AAAA{tail}", seq + settings)
}

/// The sequence number and database instance of an opaque sequence.
fn decode_opaque(since: &str) -> Option<(u64, usize)> {
    let (_, tail) = since.split_once("-g1AAAA")?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tail)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let mut words = text.split(' ').skip(1);
    let instance = words.next()?.strip_prefix("shards-of-")?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    Some((seq, instance))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

fn attachment_path(db: &str, id: &str, name: &str, rev: &str) -> String {
    let doc = match id.strip_prefix("_design/") {
        Some(rest) => format!("_design/{}", percent_encode(rest)),
        None => percent_encode(id),
    };
    format!(
        "/{db}/{doc}/{}?rev={}",
        percent_encode(name),
        percent_encode(rev)
    )
}

/// GET `path` from the server itself: its body if it answered 200.
fn try_fetch(upstream: &str, auth: &[String], path: &str) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n");
    for line in auth {
        head.push_str(line.trim_end());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    up.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).unwrap();
    let response = Response::parse(&raw).unwrap();
    response
        .status_line
        .contains(" 200")
        .then_some(response.body)
}

/// GET `path` from the server itself (identity bytes).
fn fetch(upstream: &str, auth: &[String], path: &str) -> Vec<u8> {
    try_fetch(upstream, auth, path).unwrap_or_else(|| panic!("the emulation could not read {path}"))
}

/// A 200 answer with a JSON body.
fn json_response(body: Value) -> Response {
    Response {
        status_line: "HTTP/1.1 200 OK".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}
