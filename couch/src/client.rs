//! A small CouchDB HTTP client: one session, retries, and errors that say
//! what to do.
//!
//! Authentication is a cookie session (`POST /_session`): one password check
//! per run instead of one per request (CouchDB hashes the password on every
//! basic-auth request). A server without `_session` gets basic auth. A 401 on
//! a request logs in again once; a second 401, or any 403, stops.
//!
//! Transient failures (connection errors, timeouts, 408, 429, 5xx) are
//! retried with exponential backoff and jitter. Every write this module is
//! used for is idempotent (`new_edits:false`, settings PUTs), so a retry is
//! always safe. Bodies are read whole: callers keep requests small (a page of
//! `_changes`, 500 documents of `_bulk_get`, one attachment).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use cairn_store::error::{Error, Result};

/// Characters left as they are in a path segment: RFC 3986's unreserved set.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A CouchDB name and password. Never printed, never stored.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

/// Where a CouchDB server is and who to be there.
#[derive(Debug, Clone)]
pub struct CouchTarget {
    /// The server's base URL without credentials, ending in `/`.
    pub base: url::Url,
    /// The credentials, if any.
    pub credentials: Option<Credentials>,
}

impl CouchTarget {
    /// Parses `url`; credentials come from the URL, else from `netrc` (the
    /// text of a netrc-style file), else from `env` (`COUCHDB_USER`,
    /// `COUCHDB_PASSWORD`).
    pub fn parse(
        url: &str,
        netrc: Option<&str>,
        env: Option<(String, String)>,
    ) -> Result<CouchTarget> {
        let mut base = url::Url::parse(url)
            .map_err(|e| Error::invalid(format!("--url {}: {e}", redact(url))))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::invalid(format!(
                "--url {}: a CouchDB URL starts with http:// or https://",
                redact(url)
            )));
        }
        let from_url = (!base.username().is_empty()).then(|| Credentials {
            user: decode(base.username()),
            password: decode(base.password().unwrap_or("")),
        });
        let host = base.host_str().unwrap_or("").to_string();
        let credentials = from_url
            .or_else(|| netrc.and_then(|text| netrc_lookup(text, &host)))
            .or_else(|| env.map(|(user, password)| Credentials { user, password }));
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(CouchTarget { base, credentials })
    }

    /// The URL as shown to people: never with credentials.
    pub fn display(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `url` with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

/// The credentials a netrc-style text gives `host`: its `machine` entry,
/// else the `default` entry.
pub fn netrc_lookup(text: &str, host: &str) -> Option<Credentials> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let (mut found, mut default) = (None, None);
    let mut i = 0;
    while i < tokens.len() {
        let (matches, is_default) = match tokens[i] {
            "machine" => {
                i += 1;
                (tokens.get(i) == Some(&host), false)
            }
            "default" => (false, true),
            _ => {
                i += 1;
                continue;
            }
        };
        i += 1;
        let (mut user, mut password) = (None, None);
        while i < tokens.len() && !matches!(tokens[i], "machine" | "default") {
            match tokens[i] {
                "login" => user = tokens.get(i + 1).map(|s| s.to_string()),
                "password" => password = tokens.get(i + 1).map(|s| s.to_string()),
                _ => {}
            }
            i += 2;
        }
        let entry = user.map(|user| Credentials {
            user,
            password: password.unwrap_or_default(),
        });
        if matches && found.is_none() {
            found = entry;
        } else if is_default && default.is_none() {
            default = entry;
        }
    }
    found.or(default)
}

/// How hard to try before giving up on a request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 7,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(15),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Counters of what went over the wire, for summaries and tests.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Requests answered (retries included).
    pub requests: AtomicU64,
    /// Retries after a transient failure.
    pub retries: AtomicU64,
    /// Response body bytes received.
    pub bytes_received: AtomicU64,
    /// Request body bytes sent.
    pub bytes_sent: AtomicU64,
}

/// A response: status and whole body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub body: Bytes,
    /// The body came with `Content-Encoding: gzip` (only asked for by
    /// [`CouchClient::get_attachment`]).
    pub gzip: bool,
}

impl Response {
    /// CouchDB's `{"error","reason"}`, as one line.
    pub fn reason(&self) -> String {
        #[derive(Deserialize)]
        struct CouchError {
            error: Option<String>,
            reason: Option<String>,
        }
        match serde_json::from_slice::<CouchError>(&self.body) {
            Ok(CouchError {
                error: Some(e),
                reason: Some(r),
            }) => format!("{} {e}: {r}", self.status.as_u16()),
            Ok(CouchError { error: Some(e), .. }) => format!("{} {e}", self.status.as_u16()),
            _ => {
                let text = String::from_utf8_lossy(&self.body);
                let text: String = text.chars().take(200).collect();
                format!("{} {}", self.status.as_u16(), text.trim())
            }
        }
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Rejected {
            url: url.to_string(),
            what: what.to_string(),
            detail: format!("unexpected answer ({e})"),
            hint: "is this a CouchDB server?".to_string(),
        })
    }
}

/// A request body with its content type.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub bytes: Bytes,
    pub content_type: String,
}

impl Body {
    /// A JSON body.
    pub fn json(bytes: impl Into<Bytes>) -> Body {
        Body {
            bytes: bytes.into(),
            content_type: "application/json".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic,
    Cookie(String),
}

/// A logged-in connection pool to one CouchDB server.
#[derive(Debug)]
pub struct CouchClient {
    http: reqwest::Client,
    target: CouchTarget,
    auth: Mutex<Auth>,
    retry: RetryPolicy,
    /// What went over the wire.
    pub stats: WireStats,
}

impl CouchClient {
    /// Connects: checks the server answers and logs in.
    pub async fn connect(target: CouchTarget, retry: RetryPolicy) -> Result<CouchClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(retry.timeout)
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| Error::invalid(format!("cannot build an HTTP client: {e}")))?;
        let client = CouchClient {
            http,
            target,
            auth: Mutex::new(Auth::None),
            retry,
            stats: WireStats::default(),
        };
        client.login().await?;
        Ok(client)
    }

    /// The server's URL without credentials.
    pub fn url(&self) -> String {
        self.target.display()
    }

    /// The URL of a path below the server, without credentials.
    pub fn url_of(&self, path: &str) -> String {
        format!("{}/{}", self.url(), path.split('?').next().unwrap_or(path))
    }

    async fn login(&self) -> Result<()> {
        let Some(credentials) = self.target.credentials.clone() else {
            return Ok(());
        };
        let body = serde_json::json!({"name": credentials.user, "password": credentials.password});
        let response = self
            .send_once(
                Method::POST,
                "_session",
                Some(&Body::json(body.to_string())),
                &Auth::None,
                Ask::json(),
            )
            .await;
        let response = match response {
            Ok(r) => r,
            Err(Attempt::TooLong(detail)) => {
                return Err(answer_too_long(&self.url_of("_session"), "POST", &detail));
            }
            Err(Attempt::Transient(detail) | Attempt::Fatal(detail)) => {
                return Err(Error::Unreachable {
                    url: self.url(),
                    doing: "logging in".into(),
                    detail,
                });
            }
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let auth = match response.0.status {
            s if s.is_success() => match response.1 {
                Some(cookie) => Auth::Cookie(cookie),
                None => Auth::Basic,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Error::CouchAuth {
                    url: self.url(),
                    detail: response.0.reason(),
                });
            }
            // No session endpoint (a proxy, an old server): basic auth.
            _ => Auth::Basic,
        };
        *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = auth;
        Ok(())
    }

    /// One request, retried on transient failures; 401 logs in again once,
    /// 403 fails. Other statuses are the caller's to judge. The answer's
    /// body is at most [`MAX_JSON_RESPONSE_LEN`].
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Response> {
        self.request_with(method, path, body, Ask::json()).await
    }

    /// [`CouchClient::request`] with an answer of at most `max_len` bytes.
    pub(crate) async fn request_bounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        max_len: u64,
    ) -> Result<Response> {
        let ask = Ask {
            max_len,
            gzip: false,
        };
        self.request_with(method, path, body, ask).await
    }

    /// GET of an attachment, as the server stores it: gzip-encoded
    /// attachments come encoded (`Accept-Encoding: gzip`), so their bytes
    /// can be checked against the digest (see `couch::attachment`). At most
    /// [`MAX_ATTACHMENT_RESPONSE_LEN`] bytes.
    pub(crate) async fn get_attachment(&self, path: &str) -> Result<Response> {
        let ask = Ask {
            max_len: MAX_ATTACHMENT_RESPONSE_LEN,
            gzip: true,
        };
        self.request_with(Method::GET, path, None, ask).await
    }

    /// [`CouchClient::request`] as `ask` says: an answer longer than
    /// `ask.max_len` is refused by its `Content-Length`, or as soon as more
    /// arrives, without buffering the rest.
    async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        ask: Ask,
    ) -> Result<Response> {
        let mut relogged = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let auth = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let outcome = self
                .send_once(method.clone(), path, body.as_ref(), &auth, ask)
                .await;
            let detail = match outcome {
                Ok((response, _)) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_received
                        .fetch_add(response.body.len() as u64, Ordering::Relaxed);
                    if let Some(b) = &body {
                        self.stats
                            .bytes_sent
                            .fetch_add(b.bytes.len() as u64, Ordering::Relaxed);
                    }
                    match response.status {
                        StatusCode::UNAUTHORIZED if !relogged => {
                            relogged = true;
                            self.login().await?;
                            continue;
                        }
                        StatusCode::UNAUTHORIZED => {
                            return Err(Error::CouchAuth {
                                url: self.url(),
                                detail: response.reason(),
                            });
                        }
                        StatusCode::FORBIDDEN => {
                            return Err(Error::CouchForbidden {
                                url: self.url_of(path),
                                doing: format!("{method}"),
                                detail: response.reason(),
                            });
                        }
                        s if is_transient(s) => response.reason(),
                        _ => return Ok(response),
                    }
                }
                Err(Attempt::Transient(detail)) => detail,
                Err(Attempt::TooLong(detail)) => {
                    return Err(answer_too_long(
                        &self.url_of(path),
                        method.as_str(),
                        &detail,
                    ));
                }
                Err(Attempt::Fatal(detail)) => {
                    return Err(Error::Unreachable {
                        url: self.url_of(path),
                        doing: format!("{method}"),
                        detail,
                    });
                }
            };
            if attempt >= self.retry.attempts {
                return Err(Error::Unreachable {
                    url: self.url_of(path),
                    doing: format!("{method} (tried {attempt} times)"),
                    detail,
                });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{method} {}: {detail}; retrying", self.url_of(path));
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry
            .first_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.retry.max_delay);
        // Full jitter in the upper half, so retries of parallel requests spread out.
        let mut byte = [0u8; 1];
        let _ = getrandom::fill(&mut byte);
        exp.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Body>,
        auth: &Auth,
        ask: Ask,
    ) -> std::result::Result<(Response, Option<String>), Attempt> {
        let url = format!("{}{}", self.target.base, path);
        let mut request = self
            .http
            .request(method, &url)
            .header(header::ACCEPT, "application/json");
        if ask.gzip {
            request = request.header(header::ACCEPT_ENCODING, "gzip");
        }
        match (auth, &self.target.credentials) {
            (Auth::Cookie(cookie), _) => request = request.header(header::COOKIE, cookie),
            (Auth::Basic, Some(c)) => request = request.basic_auth(&c.user, Some(&c.password)),
            _ => {}
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, &body.content_type)
                .body(body.bytes.clone());
        }
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        let cookie = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("AuthSession="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let gzip = match response.headers().get(header::CONTENT_ENCODING) {
            None => false,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => false,
            Some(v) if ask.gzip && v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
            Some(v) => {
                return Err(Attempt::Fatal(format!(
                    "the answer has Content-Encoding {:?}, which Cairn did not ask for",
                    String::from_utf8_lossy(v.as_bytes())
                )));
            }
        };
        let body = read_body(response, ask.max_len).await?;
        Ok((Response { status, body, gzip }, cookie))
    }

    /// GET a JSON document; `None` on 404.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<T>> {
        let response = self.request(Method::GET, path, None).await?;
        match response.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => response.json(&self.url_of(path), what).map(Some),
            _ => Err(self.rejected(path, what, &response)),
        }
    }

    /// The error for an unexpected status.
    pub(crate) fn rejected(&self, path: &str, what: &str, response: &Response) -> Error {
        let hint = match response.status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "raise the server's max_http_request_size / max_document_size".to_string()
            }
            _ => "check the server's log for the cause".to_string(),
        };
        Error::Rejected {
            url: self.url_of(path),
            what: what.to_string(),
            detail: response.reason(),
            hint,
        }
    }
}

impl CouchClient {
    fn too_many_databases(&self) -> Error {
        Error::Unsupported {
            what: format!(
                "{}: the server lists more than {MAX_DATABASES} databases, more than Cairn \
                 reads in one backup; name the ones to back up with --db",
                self.url()
            ),
        }
    }

    /// Refuses a listing with a name CouchDB would not give a database (at
    /// most 238 bytes, lowercase letters, digits and `_$()+-/`, a letter or
    /// `_` first): memory stays bounded by the count of names.
    fn check_db_names(&self, names: &[String]) -> Result<()> {
        let valid = |n: &String| {
            let b = n.as_bytes();
            (1..=MAX_DB_NAME_LEN).contains(&b.len())
                && (b[0].is_ascii_lowercase() || b[0] == b'_')
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_$()+-/".contains(c))
        };
        match names.iter().find(|n| !valid(n)) {
            None => Ok(()),
            Some(bad) => Err(Error::Rejected {
                url: self.url_of("_all_dbs"),
                what: "the list of databases".into(),
                detail: format!(
                    "it names a database CouchDB could not have: {:?}",
                    bad.chars().take(80).collect::<String>()
                ),
                hint: "is this a CouchDB server?".into(),
            }),
        }
    }
}

/// CouchDB's longest database name.
const MAX_DB_NAME_LEN: usize = 238;

/// The most databases a server may list (a bound on what a hostile one
/// makes Cairn hold).
const MAX_DATABASES: usize = 1_000_000;

/// What a request accepts back.
#[derive(Debug, Clone, Copy)]
struct Ask {
    /// The longest body read.
    max_len: u64,
    /// Accept a gzip-encoded body (and say so in the response).
    gzip: bool,
}

impl Ask {
    fn json() -> Ask {
        Ask {
            max_len: MAX_JSON_RESPONSE_LEN,
            gzip: false,
        }
    }
}

/// The longest JSON answer read (documents are at most 8 MiB by CouchDB's
/// default `max_document_size`; pages and batches hold many).
pub(crate) const MAX_JSON_RESPONSE_LEN: u64 = 512 << 20;
/// The longest attachment answer read: CouchDB's default
/// `max_attachment_size` (1 GiB) and a margin.
pub(crate) const MAX_ATTACHMENT_RESPONSE_LEN: u64 = (1 << 30) + (64 << 10);

/// A response's body, refused when its declared length or what arrives
/// exceeds `max_len` (nothing past the limit is buffered).
async fn read_body(
    mut response: reqwest::Response,
    max_len: u64,
) -> std::result::Result<Bytes, Attempt> {
    let too_long = |len: u64| {
        Attempt::TooLong(format!(
            "the answer is {len} bytes or more, over the {max_len}-byte limit"
        ))
    };
    let declared = response.content_length();
    if let Some(len) = declared.filter(|&len| len > max_len) {
        return Err(too_long(len));
    }
    // Reserved as bytes arrive, not on the server's word (at most 1 MiB ahead).
    let reserve = declared.unwrap_or(0).min(max_len).min(1 << 20);
    let mut body = bytes::BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        let got = body.len() as u64 + chunk.len() as u64;
        if got > max_len {
            return Err(too_long(got));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An answer refused for its length (Cairn's limit, not the server's).
fn answer_too_long(url: &str, method: &str, detail: &str) -> Error {
    Error::Unsupported {
        what: format!(
            "{url}: Cairn refused the server's answer to {method}: {detail}; either it holds an \
             attachment larger than Cairn reads (CouchDB's max_attachment_size allows more than \
             1 GiB), or the server is not CouchDB"
        ),
    }
}

enum Attempt {
    /// Not worth retrying: the answer is longer than the caller accepts.
    TooLong(String),
    /// Worth retrying: the connection dropped, a timeout.
    Transient(String),
    /// Not worth retrying: a malformed URL, a TLS configuration error.
    Fatal(String),
}

fn classify(e: reqwest::Error) -> Attempt {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if e.is_builder() {
        Attempt::Fatal(detail)
    } else {
        Attempt::Transient(detail)
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl CouchClient {
    /// Every database's name, `page` at a time (`_all_dbs?limit&start_key`),
    /// sorted. A server that does not page (it ignores `start_key`, or sends
    /// more than asked) is asked once for the whole list instead.
    pub(crate) async fn all_dbs(&self, page: usize) -> Result<Vec<String>> {
        let page = page.max(2);
        let what = "the list of databases";
        let mut all: Vec<String> = Vec::new();
        loop {
            let path = match all.last() {
                None => format!("_all_dbs?limit={page}"),
                Some(last) => format!(
                    "_all_dbs?limit={page}&start_key={}",
                    query_value(&serde_json::Value::from(last.as_str()).to_string())
                ),
            };
            let names: Vec<String> = self.get_json(&path, what).await?.unwrap_or_default();
            self.check_db_names(&names)?;
            let continues = match (all.last(), names.first()) {
                (Some(last), Some(first)) => first == last,
                (None, _) | (_, None) => true,
            };
            let sorted = names.windows(2).all(|w| w[0] < w[1]);
            if names.len() > page || !continues || !sorted {
                // Not paged as asked: the whole list in one answer.
                let mut names: Vec<String> =
                    self.get_json("_all_dbs", what).await?.unwrap_or_default();
                self.check_db_names(&names)?;
                if names.len() > MAX_DATABASES {
                    return Err(self.too_many_databases());
                }
                names.sort();
                names.dedup();
                return Ok(names);
            }
            let full = names.len() == page;
            let skip = usize::from(!all.is_empty());
            all.extend(names.into_iter().skip(skip));
            if all.len() > MAX_DATABASES {
                return Err(self.too_many_databases());
            }
            if !full {
                return Ok(all);
            }
        }
    }
}

/// `_changes` rows.
#[derive(Deserialize)]
struct ChangesPage {
    results: Vec<ChangeRow>,
    last_seq: serde_json::Value,
    #[serde(default)]
    pending: Option<u64>,
}

#[derive(Deserialize)]
struct ChangeRow {
    id: String,
    changes: Vec<ChangeRev>,
}

#[derive(Deserialize)]
struct ChangeRev {
    rev: String,
}

impl CouchClient {
    /// Every id of `db` changed after `since` (all ids: `None`) with its
    /// leaf revisions (in line order), from `_changes?style=all_docs` in
    /// pages of `page`; a later row of an id replaces an earlier one.
    /// Returns the last sequence.
    pub(crate) async fn each_leaves(
        &self,
        db: &str,
        page: usize,
        since: Option<serde_json::Value>,
        mut each: impl FnMut(String, Vec<String>) -> Result<()>,
    ) -> Result<serde_json::Value> {
        let page = page.max(1);
        let mut since = since.unwrap_or_else(|| serde_json::json!(0));
        loop {
            let since_param = match &since {
                serde_json::Value::String(s) => query_value(s),
                other => query_value(&other.to_string()),
            };
            let path = format!(
                "{}/_changes?style=all_docs&limit={page}&since={since_param}",
                db_path(db)
            );
            let response = self.request(Method::GET, &path, None).await?;
            if response.status == StatusCode::NOT_FOUND {
                return Err(Error::NotFound {
                    what: format!("database {db:?} on {}", self.url()),
                    hint: "it was deleted meanwhile".into(),
                });
            }
            if !response.status.is_success() {
                return Err(self.rejected(&path, "listing changes", &response));
            }
            let changes: ChangesPage = response.json(&self.url_of(&path), "_changes")?;
            let rows = changes.results.len();
            for row in changes.results {
                let mut revs: Vec<String> = row.changes.into_iter().map(|c| c.rev).collect();
                crate::format::sort_revs(&mut revs);
                each(row.id, revs)?;
            }
            since = changes.last_seq;
            let more = match changes.pending {
                Some(pending) => pending > 0 && rows > 0,
                None => rows >= page,
            };
            if !more {
                return Ok(since);
            }
        }
    }
}

/// A database name as a path segment (`a/b` → `a%2Fb`).
pub(crate) fn db_path(db: &str) -> String {
    utf8_percent_encode(db, SEGMENT).to_string()
}

/// A document's path below its database: `_design/` and `_local/` keep
/// their literal prefix, the rest is one encoded segment.
pub(crate) fn doc_path(db: &str, id: &str) -> String {
    let encoded = ["_design/", "_local/"]
        .iter()
        .find_map(|prefix| {
            id.strip_prefix(prefix)
                .map(|rest| format!("{prefix}{}", utf8_percent_encode(rest, SEGMENT)))
        })
        .unwrap_or_else(|| utf8_percent_encode(id, SEGMENT).to_string());
    format!("{}/{encoded}", db_path(db))
}

/// A query parameter value, encoded.
pub(crate) fn query_value(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 that answers one request with `head` and then
    /// 64 KiB pieces of a chunked body until 256 MiB (its own bound) or
    /// until the client hangs up; counts what it sent.
    async fn hostile(head: &'static str) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/db", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            socket.write_all(head.as_bytes()).await.unwrap();
            let piece = [b"10000\r\n".as_slice(), &[b' '; 65536], b"\r\n"].concat();
            while counter.load(Ordering::Relaxed) < 256 << 20 {
                if socket.write_all(&piece).await.is_err() {
                    return;
                }
                counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        });
        (url, sent)
    }

    /// A server answering every request with `answer(path and query)`.
    async fn scripted(answer: fn(&str) -> String) -> CouchClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = vec![0u8; 8192];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&request[..n]).to_string();
                    let body = answer(text.split_whitespace().nth(1).unwrap_or("/"));
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        let target = CouchTarget::parse(&url, None, None).unwrap();
        CouchClient::connect(target, RetryPolicy::default())
            .await
            .unwrap()
    }

    /// 25 database names, `_all_dbs` as CouchDB pages it (`start_key`
    /// inclusive, `limit`), or ignoring `start_key` when `honest` is false.
    fn all_dbs_answer(path: &str, honest: bool) -> String {
        let names: Vec<String> = (0..25).map(|i| format!("db{i:03}")).collect();
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let param = |k: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(key, _)| *key == k)
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .to_string()
                })
        };
        let mut page: Vec<&String> = names.iter().collect();
        if let (true, Some(start)) = (honest, param("start_key")) {
            let start: String = serde_json::from_str(&start).unwrap();
            page.retain(|n| **n >= start);
        }
        if let Some(limit) = param("limit").and_then(|l| l.parse().ok()) {
            page.truncate(limit);
        }
        serde_json::to_string(&page).unwrap()
    }

    #[tokio::test]
    async fn every_database_is_listed_whether_or_not_the_server_pages() {
        let want: Vec<String> = (0..25).map(|i| format!("db{i:03}")).collect();
        let paging = scripted(|p| all_dbs_answer(p, true)).await;
        assert_eq!(paging.all_dbs(10).await.unwrap(), want);
        assert_eq!(
            paging.all_dbs(5).await.unwrap(),
            want,
            "a last page that is full"
        );
        // A server that ignores start_key would repeat its first page
        // forever: asked once for the whole list instead.
        let repeating = scripted(|p| all_dbs_answer(p, false)).await;
        assert_eq!(repeating.all_dbs(10).await.unwrap(), want);
        // A name CouchDB cannot have (here 10,000 bytes): refused.
        let hostile = scripted(|_| serde_json::to_string(&["a".repeat(10_000)]).unwrap()).await;
        let err = hostile.all_dbs(10).await.unwrap_err();
        assert!(err.to_string().contains("could not have"), "{err}");
    }

    /// A hostile CouchDB answering with an endless body, or declaring one
    /// far over the limit: refused as it arrives, never buffered whole.
    #[tokio::test]
    async fn answers_over_the_limit_are_refused_as_they_arrive() {
        let http = reqwest::Client::new();
        let (url, sent) =
            hostile("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await;
        let response = http.get(&url).send().await.unwrap();
        let refused = read_body(response, 1 << 20).await;
        assert!(matches!(refused, Err(Attempt::TooLong(_))));
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "the client read on: {sent} bytes sent");

        let (url, sent) = hostile("HTTP/1.1 200 OK\r\ncontent-length: 3221225472\r\n\r\n").await;
        let response = http.get(&url).send().await.unwrap();
        let refused = read_body(response, 1 << 20).await;
        assert!(matches!(refused, Err(Attempt::TooLong(ref d)) if d.contains("3221225472")));
        assert!(sent.load(Ordering::Relaxed) < 64 << 20);
    }

    #[test]
    fn paths_are_encoded_but_keep_special_prefixes() {
        assert_eq!(db_path("a/b+c"), "a%2Fb%2Bc");
        assert_eq!(doc_path("db", "_design/app"), "db/_design/app");
        assert_eq!(doc_path("db", "_local/x y"), "db/_local/x%20y");
        assert_eq!(doc_path("db", "a/b?c#é"), "db/a%2Fb%3Fc%23%C3%A9");
    }

    #[test]
    fn credentials_come_from_the_url_then_netrc_then_env() {
        let t = CouchTarget::parse("http://ad%40m:p%3Ass@h:5984/x?q=1", None, None).unwrap();
        let c = t.credentials.clone().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("ad@m", "p:ss"));
        assert_eq!(t.display(), "http://h:5984/x");
        assert!(!format!("{t:?}").contains("p:ss"), "never printed");

        let netrc = "machine other login o password p\ndefault login d password dp\nmachine h login n password np";
        let t = CouchTarget::parse("http://h:5984", Some(netrc), None).unwrap();
        assert_eq!(t.credentials.unwrap().user, "n");
        let t = CouchTarget::parse("http://z:5984", Some(netrc), None).unwrap();
        assert_eq!(t.credentials.unwrap().user, "d");
        let t = CouchTarget::parse("http://z", None, Some(("e".into(), "ep".into()))).unwrap();
        assert_eq!(t.credentials.unwrap().password, "ep");
        assert!(
            CouchTarget::parse("http://z", None, None)
                .unwrap()
                .credentials
                .is_none()
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_passwords() {
        let e = CouchTarget::parse("ftp://u:secret@h/", None, None).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(CouchTarget::parse("not a url", None, None).is_err());
    }
}
