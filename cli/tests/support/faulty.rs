//! A fault-injecting HTTP proxy in front of the real test server (like
//! toxiproxy): it answers some requests itself with 503, 413, 401 or 403, or
//! drops the connection, and forwards the rest. One request per connection.
//! Started with [`Proxy::couchdb3`], it also makes pouchdb-server behave as
//! Apache CouchDB 3 does where they differ (`couch3.rs`).
#![allow(dead_code, clippy::unwrap_used, missing_debug_implementations)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::couch3::{Couch3, Request, Response};

/// What to break.
#[derive(Default)]
pub struct Faults {
    /// Answer this many of the next requests (not logins) with 503.
    pub unavailable: AtomicUsize,
    /// Drop the connection without an answer on every Nth request (0: never).
    pub drop_every: AtomicUsize,
    /// Answer 413 to request bodies longer than this (0: no limit).
    pub max_body: AtomicUsize,
    /// Answer the next request (not a login) with 401, once.
    pub unauthorized_once: AtomicBool,
    /// Answer 403 to requests whose path contains this.
    pub forbid: std::sync::Mutex<Option<String>>,
    /// List only the databases whose names start with this in `_all_dbs`
    /// (a test's own, on a server other tests share), paged as CouchDB
    /// pages it (`limit`, `start_key`).
    pub only_dbs: std::sync::Mutex<Option<String>>,
    /// A server that loses a write: the document with this id is taken out
    /// of every `_bulk_docs` before it reaches the server (which then
    /// answers as if it were all stored).
    pub lose_doc: std::sync::Mutex<Option<String>>,
    /// A writer beside the restore: a document with this id (revision
    /// `1-…`, `new_edits:false`) is added to the first `_bulk_docs`.
    pub add_doc: std::sync::Mutex<Option<String>>,
    /// Answer every `_revs_diff` with `{}` ("nothing missing"), as a server
    /// that answers without looking would.
    pub blank_revs_diff: AtomicBool,
    /// Answer every `_all_docs` with 403, as a server (or a proxy) that
    /// will not list (the restore check then asks `_revs_diff` for all).
    pub refuse_all_docs: AtomicBool,
    /// `_revs_diff` requests seen.
    pub revs_diffs: AtomicUsize,
    /// Requests seen, and answered by the proxy itself.
    pub seen: AtomicUsize,
    pub injected: AtomicUsize,
}

/// A running proxy; its URL replaces the server's.
pub struct Proxy {
    pub port: u16,
    pub faults: Arc<Faults>,
    /// The CouchDB 3 emulation, when on.
    pub couch3: Option<Arc<Couch3>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub fn start(upstream: String) -> Proxy {
        Proxy::start_with(upstream, None)
    }

    /// Starts a proxy to `upstream` that behaves as CouchDB 3.
    pub fn couchdb3(upstream: String) -> Proxy {
        Proxy::start_with(upstream, Some(Arc::new(Couch3::default())))
    }

    fn start_with(upstream: String, couch3: Option<Arc<Couch3>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let f = Arc::clone(&faults);
        let emulation = couch3.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, upstream) = (Arc::clone(&f), upstream.clone());
                let emulation = emulation.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &upstream, &f, emulation.as_deref());
                });
            }
        });
        Proxy {
            port,
            faults,
            couch3,
        }
    }

    /// `url` (with credentials) pointed at the proxy.
    pub fn url(&self, url: &str) -> String {
        let mut u = reqwest::Url::parse(url).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string().trim_end_matches('/').to_string()
    }
}

/// Applies [`Faults::lose_doc`] and [`Faults::add_doc`] to a `_bulk_docs`
/// body, and sets the request's `Content-Length` to match.
fn tamper_bulk_docs(faults: &Faults, head: &mut Vec<u8>, body: &mut Vec<u8>) {
    let lose = faults.lose_doc.lock().unwrap().clone();
    let add = faults.add_doc.lock().unwrap().take();
    if lose.is_none() && add.is_none() {
        return;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(docs) = value.get_mut("docs").and_then(|d| d.as_array_mut()) else {
        return;
    };
    if let Some(id) = lose {
        docs.retain(|d| d["_id"] != id.as_str());
    }
    if let Some(id) = add {
        docs.push(serde_json::json!({
            "_id": id,
            "_rev": "1-0123456789abcdef0123456789abcdef",
            "written": "by someone else"
        }));
    }
    *body = serde_json::to_vec(&value).unwrap();
    let text = String::from_utf8_lossy(head).into_owned();
    let lines: Vec<String> = text
        .split_inclusive("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    *head = lines.concat().into_bytes();
}

fn answer(mut client: TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    client: TcpStream,
    upstream: &str,
    faults: &Faults,
    couch3: Option<&Couch3>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut header_lines = Vec::new();
    let mut content_length = 0usize;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.clone();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line != "\r\n" && request_line != line {
            header_lines.push(line.clone());
        }
        // The emulation decides the encoding; the server always sends identity.
        if couch3.is_some() && lower.starts_with("accept-encoding:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;

    let n = faults.seen.fetch_add(1, Ordering::SeqCst) + 1;
    let login = request_line.contains("/_session");
    let inject = |status: &str, body: &str| {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        answer(client.try_clone()?, status, body)
    };
    let forbid = faults.forbid.lock().unwrap().clone();
    if forbid.is_some_and(|p| request_line.contains(&p)) {
        return inject(
            "403 Forbidden",
            r#"{"error":"forbidden","reason":"not today"}"#,
        );
    }
    if !login {
        let every = faults.drop_every.load(Ordering::SeqCst);
        if every > 0 && n % every == 0 {
            faults.injected.fetch_add(1, Ordering::SeqCst);
            return Ok(()); // the connection drops unanswered
        }
        if faults
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1))
            .is_ok()
        {
            return inject("503 Service Unavailable", r#"{"error":"unavailable"}"#);
        }
        if faults.unauthorized_once.swap(false, Ordering::SeqCst) {
            return inject(
                "401 Unauthorized",
                r#"{"error":"unauthorized","reason":"session expired"}"#,
            );
        }
    }
    if request_line.contains("/_revs_diff ") {
        faults.revs_diffs.fetch_add(1, Ordering::SeqCst);
        if faults.blank_revs_diff.load(Ordering::SeqCst) {
            return inject("200 OK", "{}");
        }
    }
    if request_line.contains("/_all_docs") && faults.refuse_all_docs.load(Ordering::SeqCst) {
        return inject(
            "403 Forbidden",
            r#"{"error":"forbidden","reason":"no listing here"}"#,
        );
    }
    let max = faults.max_body.load(Ordering::SeqCst);
    if max > 0 && body.len() > max {
        return inject(
            "413 Payload Too Large",
            r#"{"error":"too_large","reason":"the request entity is too large"}"#,
        );
    }
    if request_line.contains("/_bulk_docs ") {
        tamper_bulk_docs(faults, &mut head, &mut body);
    }
    let request = Request::parse(&request_line, &header_lines, &body);
    if request.path == "/_all_dbs" && faults.only_dbs.lock().unwrap().is_some() {
        // The whole list from the server; the proxy filters and pages it.
        let line = request_line.replacen(&format!("?{}", request.query), "", 1);
        head.splice(..request_line.len(), line.into_bytes());
    } else if let Some(c3) = couch3 {
        let line = c3.rewrite_request(&request, &request_line);
        head.splice(..request_line.len(), line.into_bytes());
    }
    if let Some(response) = couch3.and_then(|c3| c3.own_answer(&request, upstream)) {
        let mut client = client;
        return client.write_all(&response.to_bytes());
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let only = faults.only_dbs.lock().unwrap().clone();
    if let Some(prefix) = only
        && request.path == "/_all_dbs"
        && let Some(mut parsed) = Response::parse(&response)
    {
        page_dbs(&request, &prefix, &mut parsed);
        let mut client = client;
        return client.write_all(&parsed.to_bytes());
    }
    if let Some(c3) = couch3
        && let Some(mut parsed) = Response::parse(&response)
    {
        c3.rewrite_response(&request, upstream, &mut parsed);
        let mut client = client;
        return client.write_all(&parsed.to_bytes());
    }
    // Make the client close too: one request per connection.
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    let (headers, rest) = response.split_at(split);
    let headers = String::from_utf8_lossy(headers);
    let mut out = String::new();
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut client = client;
    client.write_all(out.as_bytes())?;
    client.write_all(rest)
}

/// `_all_dbs` as CouchDB answers it, of the names with `prefix` only.
fn page_dbs(request: &Request, prefix: &str, response: &mut Response) {
    let all: Vec<String> = serde_json::from_slice(&response.body).unwrap_or_default();
    let mut names: Vec<String> = all.into_iter().filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    if let Some(start) = request.param("start_key") {
        let start: String = serde_json::from_str(&start).unwrap();
        names.retain(|n| *n >= start);
    }
    if let Some(limit) = request.param("limit").and_then(|l| l.parse().ok()) {
        names.truncate(limit);
    }
    response.body = serde_json::to_vec(&names).unwrap();
}
