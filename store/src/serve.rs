//! `cairn serve`: one repository over HTTP(S), for the other side's
//! `http(s)://` repository URLs ([`crate::backend::http`]).
//!
//! The protocol is a small object store: `GET`/`HEAD /<key>` (with `Range`),
//! `PUT /<key>` (create-only with `If-None-Match: *`, else overwrite),
//! `DELETE /<key>`, and `GET /?list=<prefix>` (JSON lines of `{"key","size",
//! "modified"}`). Keys are the repository's own (`config`, `packs/…`,
//! `index/…`, `snapshots/…`, `locks/…`, `gc/…`, `replicas/…`, `probe-…`);
//! anything else, and any `..`, is refused with 400.
//!
//! Every request carries `Authorization: Bearer <token>`; the token file
//! gives each token a role:
//!
//! | role | may |
//! |---|---|
//! | `read` | read and list; write nothing |
//! | `append` | also create packs, index objects, snapshots, probes and leases (never `locks/gc`); overwrite a lease's heartbeat and delete a lease or probe only if its own token created it — the role for a backup job, so a compromised client can neither destroy history nor steer garbage collection |
//! | `admin` | everything (`forget`, `gc`, `replicate` to here) |
//!
//! Which token created which lease is kept in memory: after a restart, a
//! lease taken before it can no longer be renewed or released through an
//! `append` token, so it lapses (its backup writes no snapshot) and expires.
//!
//! Against clients without a token: headers must arrive within a timeout,
//! connections are limited (to what the open-files limit allows), a failed
//! `accept` backs off, refusals are logged at most once a second per kind,
//! and a body is streamed to a staging file (never held in memory), at most
//! [`MAX_BODY`] bytes, then published by a create-only link.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayloadMut, RenameOptions,
    RenameTargetMode,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};

/// The longest token file read (a few hundred tokens).
const MAX_TOKEN_FILE_LEN: u64 = 1 << 20;

/// The largest request body accepted: the largest object a writer makes.
/// A pack is under 64 MiB (§14: `pack_target_len` ≤ 32 MiB, trailer
/// included, plus one frame under 32 MiB), an index object under 32 MiB,
/// a manifest body at most 64 MiB plus its framing and signature (under
/// 1 MiB); leases, probes, gc state and the config are small.
pub const MAX_BODY: u64 = 65 << 20;

/// Bytes of a body gathered before they are written to its staging file;
/// with the connection limit, this bounds the memory uploads take.
const STAGING_PART_LEN: usize = 256 << 10;

/// Where bodies are staged before being published: not a repository key,
/// so no request can name it and no reader lists it.
const STAGING_DIR: &str = "serve-staging";

/// Leases and probes whose creator is remembered, at most.
const MAX_OWNED: usize = 65_536;
/// ... and at most this many per token (a backup holds one lease and makes
/// one probe at a time; a runaway or hostile one cannot fill the table).
const MAX_OWNED_PER_TOKEN: usize = 1024;

/// Open files kept back for the runtime and the repository's own files
/// when the connection limit is derived from the open-files limit.
const RESERVED_FILES: u64 = 32;

/// Open files one connection may need: its socket, a staging file or an
/// object being read, and a directory being synced.
const FILES_PER_CONNECTION: u64 = 3;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read and list.
    Read,
    /// Also create; replace or delete only working objects.
    Append,
    /// Everything.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Append => "append",
            Role::Admin => "admin",
        }
    }
}

/// Which token (its line in the token file, counting tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenId(usize);

/// Tokens by value.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, (Role, TokenId)>);

impl Tokens {
    /// Parses a token file: one `ROLE TOKEN` per line, `#` comments. Refuses
    /// short tokens, unknown roles, duplicates and an empty file.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::invalid(format!("token file line {}: {why}", n + 1));
            let mut parts = line.split_whitespace();
            let (Some(role), Some(token)) = (parts.next(), parts.next()) else {
                return Err(bad("expected `ROLE TOKEN`"));
            };
            let role = match role {
                "read" => Role::Read,
                "append" => Role::Append,
                "admin" => Role::Admin,
                other => {
                    return Err(bad(&format!(
                        "unknown role {other:?} (read, append, admin)"
                    )));
                }
            };
            if token.len() < 24 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("a token must be at least 24 printable characters"));
            }
            let id = TokenId(tokens.len());
            if tokens.insert(token.to_string(), (role, id)).is_some() {
                return Err(bad("a token appears twice"));
            }
        }
        if tokens.is_empty() {
            return Err(Error::invalid("the token file names no tokens"));
        }
        Ok(Tokens(tokens))
    }

    /// Reads and parses a token file, refusing one others can read.
    pub fn read_file(path: &FsPath) -> Result<Tokens> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e| Error::io(format!("reading {}", path.display()), e);
        // Opened once, without blocking (a FIFO), checked and read through
        // the same descriptor, at most MAX_TOKEN_FILE_LEN bytes.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(Error::invalid(format!("{} is not a file", path.display())));
        }
        #[cfg(unix)]
        if let Some(why) = crate::format::key::secret_file_exposed(&file, &meta) {
            return Err(Error::invalid(format!(
                "{} {why}; chmod 600 it",
                path.display()
            )));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&file, MAX_TOKEN_FILE_LEN + 1),
            &mut text,
        )
        .map_err(io)?;
        if text.len() as u64 > MAX_TOKEN_FILE_LEN {
            return Err(Error::invalid(format!(
                "{} is over {MAX_TOKEN_FILE_LEN} bytes: not a token file",
                path.display()
            )));
        }
        Tokens::parse(&text)
    }

    fn identify(&self, request: &Request<Incoming>) -> Option<(Role, TokenId)> {
        let value = request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = value.strip_prefix("Bearer ")?;
        // Compare every token in full so timing says nothing of a near miss.
        let mut found = None;
        for (t, role) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(*role);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `key` is one of a repository's keys (and nothing else).
pub fn valid_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return false;
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 200
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match parts.as_slice() {
        ["config"] => true,
        [p] => p.strip_prefix("probe-").is_some_and(name_ok),
        ["packs", fan, name] => fan.len() == 2 && name.starts_with(fan) && name_ok(name),
        ["index" | "snapshots" | "locks" | "gc" | "replicas", name] => name_ok(name),
        _ => false,
    }
}

/// What a request does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Read,
    Create,
    Overwrite,
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Overwrite => "overwrite",
            Action::Delete => "delete",
        }
    }
}

/// Whether a request may go ahead.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Allow,
    /// Allowed; the token becomes the creator of this lease or probe.
    AllowAndRecord(String),
    /// Allowed only to the token that created this lease or probe.
    OwnerOnly(String),
    Refuse,
}

const GC_LEASE_UNIT: &str = "locks/gc";

/// The lease or probe a key belongs to: `locks/<id>` for a lease's start
/// object and its heartbeats (`.alive`, `.alive-<n>`), the key itself for a
/// probe.
fn owned_unit(key: &str) -> Option<&str> {
    if key.starts_with("probe-") {
        return Some(key);
    }
    let name = key.strip_prefix("locks/")?;
    let (id, _) = crate::lease::lease_of(name);
    Some(&key[.."locks/".len() + id.len()])
}

/// What `role` may do to `key` (a valid key, [`valid_key`]).
///
/// `append` may create packs, index objects and snapshots; it may create a
/// lease's start object (not garbage collection's) or a probe, and its
/// token is recorded as their creator; a lease's heartbeat it may create or
/// overwrite, and a lease or probe it may delete, only if its token created
/// them. So it can neither rewrite history, nor write garbage collection's
/// state, the config or replica states, nor end or prolong another
/// writer's lease (ending one would let garbage collection stop waiting for
/// that writer and delete packs it deduplicated against).
fn access(role: Role, action: Action, key: &str) -> Access {
    match (role, action) {
        (_, Action::Read) | (Role::Admin, _) => return Access::Allow,
        (Role::Read, _) => return Access::Refuse,
        (Role::Append, _) => {}
    }
    let data = ["packs/", "index/", "snapshots/"]
        .iter()
        .any(|p| key.starts_with(p));
    if data {
        return if action == Action::Create {
            Access::Allow
        } else {
            Access::Refuse
        };
    }
    let Some(unit) = owned_unit(key) else {
        return Access::Refuse;
    };
    if unit == GC_LEASE_UNIT {
        return Access::Refuse;
    }
    let start = unit == key;
    match action {
        Action::Create if start => Access::AllowAndRecord(unit.to_string()),
        Action::Create | Action::Overwrite if !start => Access::OwnerOnly(unit.to_string()),
        Action::Delete => Access::OwnerOnly(unit.to_string()),
        _ => Access::Refuse,
    }
}

/// Why a request was refused, naming the key and the role.
fn refusal(role: Role, action: Action, key: &str, not_creator: bool) -> String {
    let what = match role {
        Role::Read => "the read role writes nothing".to_string(),
        Role::Append if not_creator => {
            format!("{key} was not created with this token (an append token overwrites or deletes only the leases and probes it created)")
        }
        Role::Append => "the append role creates packs, index objects, snapshots, probes and its own leases (never locks/gc), and overwrites or deletes only the leases and probes its token created".to_string(),
        Role::Admin => String::new(),
    };
    format!(
        "{key}: the {} role may not {} it: {what}; use an admin token for this",
        role.name(),
        action.verb()
    )
}

/// Which token created which lease or probe (through `append`).
#[derive(Debug, Default)]
struct Creators(Mutex<HashMap<String, TokenId>>);

impl Creators {
    fn is(&self, unit: &str, token: TokenId) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(unit) == Some(&token)
    }

    /// Whether there is room to remember one more for `token`: a token
    /// filling the table would block every other append token's leases.
    fn has_room(&self, token: TokenId) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.len() < MAX_OWNED && map.values().filter(|&&t| t == token).count() < MAX_OWNED_PER_TOKEN
    }

    fn record(&self, unit: String, token: TokenId) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(unit, token);
    }

    fn forget(&self, unit: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(unit);
    }
}

/// At most one log line per kind per period; the lines left out are counted
/// and reported with the next.
#[derive(Debug)]
struct LogLimiter {
    period: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    fn new(period: Duration) -> LogLimiter {
        LogLimiter {
            period,
            kinds: Mutex::default(),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < self.period => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }

    fn warn(&self, kind: &'static str, line: impl FnOnce() -> String) {
        if let Some(suppressed) = self.admit(kind, Instant::now()) {
            if suppressed == 0 {
                tracing::warn!("{}", line());
            } else {
                tracing::warn!("{} ({suppressed} more like it not logged)", line());
            }
        }
    }
}

/// Limits and timeouts of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A request's headers (and a TLS handshake) must arrive within this
    /// since the connection opened or its previous request was answered.
    pub header_timeout: Duration,
    /// The longest pause between two pieces of a request body.
    pub idle_timeout: Duration,
    /// The longest a whole request body may take.
    pub request_timeout: Duration,
    /// Connections served at once; lowered to what the open-files limit
    /// allows. At the limit, new connections wait (in the listen queue).
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30 * 60),
            max_connections: 256,
        }
    }
}

/// The connections that fit `open_files` (the `RLIMIT_NOFILE` soft limit),
/// at most `wanted`, at least 1.
pub fn connections_for_open_files(open_files: Option<u64>, wanted: usize) -> usize {
    let fit = open_files.map_or(u64::MAX, |n| {
        n.saturating_sub(RESERVED_FILES) / FILES_PER_CONNECTION
    });
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .min(wanted)
        .max(1)
}

/// The soft open-files limit from `/proc/self/limits` (`Max open files`).
fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_files_limit() -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The next pause after a failed `accept`: 100 ms, doubling, at most 2 s.
fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// The server's state.
struct Server {
    store: Arc<dyn ObjectStore>,
    tokens: Tokens,
    creators: Creators,
    limits: ServeLimits,
    log: LogLimiter,
}

/// An answer: small ones built in memory, objects streamed from the store.
type Reply = Response<UnsyncBoxBody<Bytes, std::io::Error>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let full = Full::new(body.into()).map_err(|never| match never {});
    let mut r = Response::new(full.boxed_unsync());
    *r.status_mut() = status;
    r
}

/// Why a body was not staged.
enum BodyError {
    TooLarge,
    Broken(String),
    TimedOut(&'static str),
    Store(object_store::Error),
}

impl Server {
    async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        let raw_path = request.uri().path().to_string();
        let refuse = |status: StatusCode, why: &str| {
            self.log.warn("refusal", || {
                format!("{peer} {method} {raw_path}: refused ({status}): {why}")
            });
            reply(status, why.to_string())
        };
        let Some((role, token)) = self.tokens.identify(&request) else {
            return refuse(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
        };
        let key = raw_path.trim_start_matches('/').to_string();
        if method == Method::GET && key.is_empty() {
            let prefix = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("list="))
                .unwrap_or("")
                .to_string();
            if prefix.split('/').any(|p| p == "..") {
                return refuse(StatusCode::BAD_REQUEST, "bad list prefix");
            }
            return self.list(&prefix).await;
        }
        if !valid_key(&key) {
            return refuse(StatusCode::BAD_REQUEST, "not a repository key");
        }
        let path = Path::from(key.as_str());
        let create_only = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v == "*");
        let action = match method {
            Method::GET | Method::HEAD => Action::Read,
            Method::PUT if create_only => Action::Create,
            Method::PUT => Action::Overwrite,
            Method::DELETE => Action::Delete,
            _ => return refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
        let mut record = None;
        match access(role, action, &key) {
            Access::Allow => {}
            Access::Refuse => {
                return refuse(StatusCode::FORBIDDEN, &refusal(role, action, &key, false));
            }
            Access::AllowAndRecord(unit) => {
                if !self.creators.has_room(token) {
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "this token holds {MAX_OWNED_PER_TOKEN} leases and probes already (or all \
                             tokens {MAX_OWNED}); let them end, or remove stale ones under locks/ \
                             with an admin token"
                        ),
                    );
                }
                record = Some(unit);
            }
            Access::OwnerOnly(unit) => {
                if !self.creators.is(&unit, token) {
                    return refuse(StatusCode::FORBIDDEN, &refusal(role, action, &key, true));
                }
            }
        }
        match method {
            Method::GET | Method::HEAD => self.get(&request, &path, method == Method::HEAD).await,
            Method::PUT => {
                let declared = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > MAX_BODY) {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
                }
                let staging = match staging_key() {
                    Ok(k) => k,
                    Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                };
                match self.stage(request.into_body(), &staging).await {
                    Ok(()) => {}
                    Err(BodyError::TooLarge) => {
                        return refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!("body too large: over {MAX_BODY} bytes"),
                        );
                    }
                    Err(BodyError::Broken(e)) => {
                        return refuse(StatusCode::BAD_REQUEST, &format!("body broken: {e}"));
                    }
                    Err(BodyError::TimedOut(what)) => {
                        return refuse(StatusCode::REQUEST_TIMEOUT, what);
                    }
                    Err(BodyError::Store(e)) => return self.failed(e),
                }
                let mode = if create_only {
                    RenameTargetMode::Create
                } else {
                    RenameTargetMode::Overwrite
                };
                let published = self
                    .store
                    .rename_opts(&staging, &path, RenameOptions::new().with_target_mode(mode))
                    .await;
                if published.is_err() {
                    let _ = self.store.delete(&staging).await;
                }
                match published {
                    Ok(()) => {
                        if let Some(unit) = record {
                            self.creators.record(unit, token);
                        }
                        reply(StatusCode::CREATED, "")
                    }
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        reply(StatusCode::PRECONDITION_FAILED, "exists")
                    }
                    Err(e) => self.failed(e),
                }
            }
            Method::DELETE => match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    // A lease's start object or a probe gone, whoever deleted
                    // it (its holder, or an admin cleaning up): its creator
                    // is forgotten.
                    if owned_unit(&key) == Some(key.as_str()) {
                        self.creators.forget(&key);
                    }
                    reply(StatusCode::NO_CONTENT, "")
                }
                Err(e) => self.failed(e),
            },
            _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    /// Streams a body to `staging` (at most [`MAX_BODY`] bytes, each piece
    /// within the idle timeout, the whole within the request timeout); on
    /// any failure nothing is left there.
    async fn stage(
        &self,
        mut body: Incoming,
        staging: &Path,
    ) -> std::result::Result<(), BodyError> {
        let mut upload = self
            .store
            .put_multipart(staging)
            .await
            .map_err(BodyError::Store)?;
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let outcome = async {
            let mut part = PutPayloadMut::new();
            let mut len: u64 = 0;
            loop {
                let pause = tokio::time::Instant::now() + self.limits.idle_timeout;
                let frame = match tokio::time::timeout_at(pause.min(deadline), body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) if pause < deadline => {
                        return Err(BodyError::TimedOut("the body paused too long"));
                    }
                    Err(_) => return Err(BodyError::TimedOut("the body took too long")),
                };
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                len = len.saturating_add(data.len() as u64);
                if len > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
                part.push(data);
                if part.content_length() >= STAGING_PART_LEN {
                    let full = std::mem::take(&mut part).freeze();
                    upload.put_part(full).await.map_err(BodyError::Store)?;
                }
            }
            if part.content_length() > 0 {
                upload
                    .put_part(part.freeze())
                    .await
                    .map_err(BodyError::Store)?;
            }
            upload.complete().await.map_err(BodyError::Store)?;
            Ok(())
        }
        .await;
        if outcome.is_err() {
            let _ = upload.abort().await;
        }
        outcome
    }

    fn failed(&self, e: object_store::Error) -> Reply {
        self.log.warn("storage", || format!("storage failed: {e}"));
        reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    async fn get(&self, request: &Request<Incoming>, path: &Path, head: bool) -> Reply {
        let range = request
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range);
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            head,
            ..GetOptions::default()
        };
        match self.store.get_opts(path, options).await {
            Ok(result) => {
                let meta = result.meta.clone();
                let len = result.range.end - result.range.start;
                let status = if range.is_some() && !head {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                };
                let mut r = reply(status, Bytes::new());
                if !head {
                    // Streamed as the store reads it: many readers of large
                    // objects cost the server their read buffers, not the
                    // objects.
                    *r.body_mut() = stream_body(result);
                    if let Ok(v) = len.to_string().parse() {
                        r.headers_mut().insert(header::CONTENT_LENGTH, v);
                    }
                }
                let h = r.headers_mut();
                if let Ok(v) = meta.size.to_string().parse() {
                    h.insert("x-object-size", v);
                }
                if let Ok(v) = meta.last_modified.timestamp_millis().to_string().parse() {
                    h.insert("x-object-modified-ms", v);
                }
                r
            }
            Err(object_store::Error::NotFound { .. }) => {
                reply(StatusCode::NOT_FOUND, "no such object")
            }
            Err(e) => self.failed(e),
        }
    }

    async fn list(&self, prefix: &str) -> Reply {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix.trim_end_matches('/')));
        let staging_dir = Path::from(STAGING_DIR);
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(meta) if meta.location.prefix_matches(&staging_dir) => {}
                Ok(meta) => {
                    let line = serde_json::json!({
                        "key": meta.location.as_ref(),
                        "size": meta.size,
                        "modified_ms": meta.last_modified.timestamp_millis(),
                    });
                    out.extend_from_slice(line.to_string().as_bytes());
                    out.push(b'\n');
                }
                Err(e) => return self.failed(e),
            }
        }
        reply(StatusCode::OK, out)
    }
}

/// Pieces a served file is read in (object_store's own stream reads 8 KiB
/// at a time, five times slower here).
const READ_PIECE_LEN: usize = 1 << 20;

/// An object's bytes as a body that reads them while it is sent: a local
/// file in [`READ_PIECE_LEN`] pieces on a blocking thread, two pieces ahead
/// at most; any other store's stream as it comes.
fn stream_body(result: object_store::GetResult) -> UnsyncBoxBody<Bytes, std::io::Error> {
    let range = result.range.clone();
    let object_store::GetResultPayload::File(mut file, _) = result.payload else {
        let frames = result.into_stream().map(|piece| {
            piece
                .map(hyper::body::Frame::data)
                .map_err(std::io::Error::other)
        });
        return StreamBody::new(frames).boxed_unsync();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut left = range.end - range.start;
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        while left > 0 {
            let want = usize::try_from(left).map_or(READ_PIECE_LEN, |l| l.min(READ_PIECE_LEN));
            let mut piece = vec![0u8; want];
            let read = file.read_exact(&mut piece).map(|()| Bytes::from(piece));
            let failed = read.is_err();
            // A reader that went away ends the loop.
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
            left -= want as u64;
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|piece| (piece.map(hyper::body::Frame::data), rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A fresh staging key: `serve-staging/<32 hex characters>`.
fn staging_key() -> Result<Path> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(Path::from(format!("{STAGING_DIR}/{}", hex::encode(nonce))))
}

/// `bytes=A-B` (inclusive) as a half-open range.
fn parse_range(value: &str) -> Option<std::ops::Range<u64>> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b >= a).then(|| b.checked_add(1).map(|end| a..end))?
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address.
    pub listen: SocketAddr,
    /// TLS certificate chain and key (PEM), or plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Timeouts and the connection limit.
    pub limits: ServeLimits,
}

/// Serves `store` until `shutdown` resolves; then finishes the requests in
/// flight. Calls `ready` with the bound address once listening.
pub async fn serve(
    store: Arc<dyn ObjectStore>,
    tokens: Tokens,
    options: &ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let mut limits = options.limits;
    limits.max_connections = connections_for_open_files(open_files_limit(), limits.max_connections);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", options.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    ready(local);
    let server = Arc::new(Server {
        store,
        tokens,
        creators: Creators::default(),
        limits,
        log: LogLimiter::new(Duration::from_secs(1)),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        // At the limit, wait for a connection to end before accepting
        // another: the ones waiting stay in the listen queue.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                backoff = next_backoff(backoff);
                server.log.warn("accept", || {
                    format!("accepting a connection failed: {e}; trying again in {backoff:?}")
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let handler = Arc::clone(&server);
        let service = hyper::service::service_fn(move |request| {
            let server = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(server.handle(peer, request).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let handshake_timeout = limits.header_timeout;
                let idle_timeout = limits.idle_timeout;
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let stream = StallTimeout::new(stream, idle_timeout);
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let io = hyper_util::rt::TokioIo::new(tls);
                            let conn = http.serve_connection(io, service);
                            if let Err(e) = watcher.watch(conn).await {
                                server.log.warn("connection", || format!("{peer}: {e}"));
                            }
                        }
                        Ok(Err(e)) => server
                            .log
                            .warn("tls", || format!("{peer}: TLS handshake failed: {e}")),
                        Err(_) => server
                            .log
                            .warn("tls", || format!("{peer}: TLS handshake timed out")),
                    }
                    drop(slot);
                });
            }
            None => {
                let io =
                    hyper_util::rt::TokioIo::new(StallTimeout::new(stream, limits.idle_timeout));
                let conn = graceful.watch(http.serve_connection(io, service));
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        server.log.warn("connection", || format!("{peer}: {e}"));
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection whose writes fail once they have waited `limit` for the
/// client to read: a client that stops reading an answer does not hold its
/// connection (and the answer's memory) for ever.
struct StallTimeout<S> {
    inner: S,
    limit: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        StallTimeout {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// After a write returned `Pending`: an error once it has waited too long.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        p: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(p, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(p, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(p, cx)
    }
}

/// Removes staging objects older than `age`, left by a server that was
/// killed between staging a body and publishing it.
pub fn remove_stale_staging(repo: &FsPath, age: Duration) {
    // Read as a directory: a body cut off mid-write is left as
    // `<name>#<digits>`, which object_store's listings skip.
    let Ok(entries) = std::fs::read_dir(repo.join(STAGING_DIR)) else {
        return;
    };
    let cutoff = std::time::SystemTime::now().checked_sub(age);
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| cutoff.is_some_and(|c| t < c));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn tls_acceptor(cert: &FsPath, key: &FsPath) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &FsPath, e: &dyn std::fmt::Display| {
        Error::invalid(format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_repository_keys_and_nothing_else() {
        for ok in [
            "config",
            "packs/ab/abcdef",
            "index/0123",
            "snapshots/ff",
            "locks/x.alive",
            "gc/log-1-2",
            "replicas/abc",
            "probe-0123",
        ] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in [
            "",
            "../config",
            "packs/../config",
            "packs/ab/cdef",
            "etc/passwd",
            "snapshots/",
            "snapshots/a/b",
            "/config",
            "locks/a b",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn token_files_are_checked() {
        let t = Tokens::parse(
            "# comment\nappend aaaaaaaaaaaaaaaaaaaaaaaaaaaa\nread bbbbbbbbbbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        assert_eq!(t.0.len(), 2);
        assert!(Tokens::parse("").is_err());
        assert!(Tokens::parse("read short").is_err());
        assert!(Tokens::parse("owner aaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(
            Tokens::parse("read aaaaaaaaaaaaaaaaaaaaaaaaaaaa\nadmin aaaaaaaaaaaaaaaaaaaaaaaaaaaa")
                .is_err()
        );
        // A FIFO or a huge file in its place: refused, never waited on or
        // read whole.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
        let e = Tokens::read_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; (1 << 20) + 10]).unwrap();
        std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let e = Tokens::read_file(&big).unwrap_err().to_string();
        assert!(e.contains("not a token file"), "{e}");
    }

    #[test]
    fn the_append_role_reaches_data_and_its_own_leases_only() {
        use Access::*;
        use Action::*;
        let owner = |unit: &str| OwnerOnly(unit.into());
        let record = |unit: &str| AllowAndRecord(unit.into());
        let cases = [
            (Create, "packs/ab/abcd", Allow),
            (Create, "index/01", Allow),
            (Create, "snapshots/02", Allow),
            (Overwrite, "packs/ab/abcd", Refuse),
            (Delete, "index/01", Refuse),
            (Delete, "snapshots/02", Refuse),
            (Create, "config", Refuse),
            (Overwrite, "config", Refuse),
            (Create, "gc/condemned-1", Refuse),
            (Create, "gc/writers-1", Refuse),
            (Delete, "gc/log-1-2", Refuse),
            (Create, "replicas/ab", Refuse),
            (Overwrite, "replicas/ab", Refuse),
            (Create, "locks/gc", Refuse),
            (Create, "locks/gc.alive", Refuse),
            (Overwrite, "locks/gc.alive", Refuse),
            (Delete, "locks/gc", Refuse),
            (Delete, "locks/gc.alive", Refuse),
            (Create, "locks/gc.alive-1", Refuse),
            (Create, "locks/backup-1.alive-7", owner("locks/backup-1")),
            (Create, "locks/backup-1", record("locks/backup-1")),
            (Overwrite, "locks/backup-1", Refuse),
            (Create, "locks/backup-1.alive", owner("locks/backup-1")),
            (Overwrite, "locks/backup-1.alive", owner("locks/backup-1")),
            (Delete, "locks/backup-1.alive", owner("locks/backup-1")),
            (Delete, "locks/backup-1", owner("locks/backup-1")),
            (Create, "probe-01", record("probe-01")),
            (Overwrite, "probe-01", Refuse),
            (Delete, "probe-01", owner("probe-01")),
            (Read, "config", Allow),
        ];
        for (action, key, expected) in cases {
            assert_eq!(
                access(Role::Append, action, key),
                expected,
                "{action:?} {key}"
            );
        }
        for action in [Create, Overwrite, Delete] {
            assert_eq!(access(Role::Read, action, "locks/x"), Refuse);
            assert_eq!(access(Role::Admin, action, "locks/gc"), Allow);
        }
        assert_eq!(access(Role::Read, Read, "packs/ab/abcd"), Allow);
        let why = refusal(Role::Append, Create, "gc/condemned-1", false);
        assert!(
            why.contains("gc/condemned-1") && why.contains("append"),
            "{why}"
        );
    }

    #[test]
    fn log_lines_are_limited_per_kind() {
        let log = LogLimiter::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(log.admit("a", t), Some(0));
        assert_eq!(log.admit("a", t), None);
        assert_eq!(log.admit("b", t), Some(0));
        assert_eq!(log.admit("a", t + Duration::from_millis(500)), None);
        assert_eq!(log.admit("a", t + Duration::from_secs(1)), Some(2));
        assert_eq!(log.admit("a", t + Duration::from_secs(3)), Some(0));
    }

    #[test]
    fn connections_fit_the_open_files_limit() {
        assert_eq!(connections_for_open_files(None, 256), 256);
        assert_eq!(connections_for_open_files(Some(1024), 256), 256);
        assert_eq!(connections_for_open_files(Some(64), 256), 10);
        assert_eq!(connections_for_open_files(Some(10), 256), 1);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            64                   4096                 files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(64));
        assert_eq!(
            parse_open_files_limit("Max open files unlimited unlimited files"),
            None
        );
        assert_eq!(next_backoff(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            next_backoff(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(next_backoff(Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(0..10));
        assert_eq!(parse_range("bytes=5-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        // Found by cli/tests/fuzz_serve.rs: the end overflowed (a panic in debug).
        assert_eq!(parse_range("bytes=0-18446744073709551615"), None);
    }
}
