//! `http(s)://HOST:PORT/`: a repository behind `cairn serve`, as an
//! [`ObjectStore`] (the protocol is in [`crate::serve`]). The bearer token
//! comes from `CAIRN_TOKEN`; `CAIRN_CA_CERT` names a PEM certificate to trust
//! for a server whose certificate is private or self-signed.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use reqwest::{Method, StatusCode, header};

use super::whole;

/// A client of `cairn serve`.
#[derive(Clone)]
pub struct ServeStore {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl fmt::Debug for ServeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServeStore({})", self.base)
    }
}

impl fmt::Display for ServeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cairn serve at {}", self.base)
    }
}

type Res<T> = object_store::Result<T>;

const STORE: &str = "cairn serve";

fn generic(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: e.into(),
    }
}

impl ServeStore {
    /// A client of the server at `base` (ending in `/`).
    /// `ca_pem`: a certificate (PEM) to trust besides the system's, for a
    /// server with a private or self-signed certificate.
    pub fn new(
        base: &str,
        token: String,
        ca_pem: Option<&[u8]>,
        timeout: std::time::Duration,
    ) -> Res<ServeStore> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // Below `cairn serve`'s header timeout (30 s), so that an idle
            // connection is dropped here before the server closes it.
            .pool_idle_timeout(std::time::Duration::from_secs(20))
            .timeout(timeout);
        if let Some(pem) = ca_pem {
            builder =
                builder.add_root_certificate(reqwest::Certificate::from_pem(pem).map_err(generic)?);
        }
        let http = builder.build().map_err(generic)?;
        Ok(ServeStore {
            http,
            base: if base.ends_with('/') {
                base.to_string()
            } else {
                format!("{base}/")
            },
            token,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Res<reqwest::Response> {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        let response = build(request).send().await.map_err(|e| {
            let chain = crate::backend::error_chain(&e);
            if chain.contains("certificate") {
                generic(format!(
                    "{chain}; the server's TLS certificate is not trusted: set CAIRN_CA_CERT \
                     to the PEM file of the CA that signed it"
                ))
            } else {
                generic(chain)
            }
        })?;
        let status = response.status();
        let error = |source: String| -> Box<dyn std::error::Error + Send + Sync> { source.into() };
        match status {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(object_store::Error::NotFound {
                path: path.to_string(),
                source: error("not found".into()),
            }),
            StatusCode::PRECONDITION_FAILED => Err(object_store::Error::AlreadyExists {
                path: path.to_string(),
                source: error("exists".into()),
            }),
            StatusCode::UNAUTHORIZED => Err(object_store::Error::Unauthenticated {
                path: path.to_string(),
                source: error("the server refused the token".into()),
            }),
            StatusCode::FORBIDDEN => Err(object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: error("the token's role does not allow this".into()),
            }),
            s => {
                let text = error_text(response).await;
                Err(generic(format!("{s}: {}", text.trim())))
            }
        }
    }
}

/// The most of an error answer's body kept for the message.
const MAX_ERROR_TEXT_LEN: usize = 4096;
/// The longest line of a listing (a key is at most a few hundred bytes).
const MAX_LIST_LINE_LEN: usize = 4096;

/// The start of an error answer's body, for the message; the rest is not read.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut text = Vec::new();
    while text.len() < MAX_ERROR_TEXT_LEN {
        match response.chunk().await {
            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
            _ => break,
        }
    }
    text.truncate(MAX_ERROR_TEXT_LEN);
    String::from_utf8_lossy(&text).into_owned()
}

/// A response's body as a stream of the pieces that arrive: nothing is
/// buffered here, so the reader decides how much it accepts.
fn body_stream(response: reqwest::Response) -> BoxStream<'static, Res<Bytes>> {
    futures::stream::try_unfold(Some(response), |response| async move {
        let Some(mut response) = response else {
            return Ok(None);
        };
        match response.chunk().await.map_err(generic)? {
            Some(chunk) => Ok(Some((chunk, Some(response)))),
            None => Ok(None),
        }
    })
    .boxed()
}

/// One line of a listing: `{"key":…,"size":…,"modified_ms":…}`.
fn parse_list_line(line: &[u8]) -> Res<ObjectMeta> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(generic)?;
    Ok(ObjectMeta {
        location: Path::from(v["key"].as_str().unwrap_or_default()),
        last_modified: millis(v["modified_ms"].as_i64().unwrap_or(0)),
        size: v["size"].as_u64().unwrap_or(0),
        e_tag: None,
        version: None,
    })
}

/// What a listing's reader holds: the response, a partial line, and the
/// entries parsed but not yet handed out.
struct ListState {
    response: Option<reqwest::Response>,
    partial: Vec<u8>,
    ready: std::collections::VecDeque<Res<ObjectMeta>>,
}

impl ListState {
    /// Takes the complete lines out of `partial`; refuses a line over
    /// [`MAX_LIST_LINE_LEN`] without buffering more of it.
    fn take_lines(&mut self, end: bool) {
        let mut start = 0;
        while let Some(n) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + n];
            if line.len() > MAX_LIST_LINE_LEN {
                self.fail(line.len());
                return;
            }
            if !line.is_empty() {
                self.ready.push_back(parse_list_line(line));
            }
            start += n + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LIST_LINE_LEN {
            self.fail(self.partial.len());
        } else if end && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.ready.push_back(parse_list_line(&line));
        }
    }

    fn fail(&mut self, len: usize) {
        self.response = None;
        self.partial = Vec::new();
        self.ready.push_back(Err(generic(format!(
            "the listing has a line of {len} bytes or more, over the {MAX_LIST_LINE_LEN}-byte \
             limit: the server is not cairn serve, or it is hostile"
        ))));
    }
}

/// A listing's lines as they arrive, one entry each.
fn list_lines(response: reqwest::Response) -> BoxStream<'static, Res<ObjectMeta>> {
    let state = ListState {
        response: Some(response),
        partial: Vec::new(),
        ready: std::collections::VecDeque::new(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.ready.pop_front() {
                return Some((item, state));
            }
            let response = state.response.as_mut()?;
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    state.partial.extend_from_slice(&chunk);
                    state.take_lines(false);
                }
                Ok(None) => {
                    state.response = None;
                    state.take_lines(true);
                }
                Err(e) => {
                    state.response = None;
                    state.ready.push_back(Err(generic(e)));
                }
            }
        }
    })
    .boxed()
}

fn header_u64(response: &reqwest::Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[async_trait]
impl ObjectStore for ServeStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Res<PutResult> {
        let create = whole::is_create(&opts.mode, STORE)?;
        let body: Bytes = payload.into();
        self.send(Method::PUT, location.as_ref(), |r| {
            let r = r.body(body);
            if create {
                r.header(header::IF_NONE_MATCH, "*")
            } else {
                r
            }
        })
        .await?;
        Ok(whole::put_result())
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Res<Box<dyn MultipartUpload>> {
        Err(whole::not_implemented("multipart upload", STORE))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Res<GetResult> {
        let range = match &options.range {
            Some(GetRange::Bounded(r)) => Some(r.clone()),
            Some(other) => {
                // Resolve against the length first.
                let head = self.send(Method::HEAD, location.as_ref(), |r| r).await?;
                let len = header_u64(&head, "x-object-size");
                Some(other.as_range(len).map_err(generic)?)
            }
            None => None,
        };
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let response = self
            .send(method, location.as_ref(), |r| match &range {
                Some(Range { start, end }) if *end > *start => {
                    r.header(header::RANGE, format!("bytes={start}-{}", end - 1))
                }
                _ => r,
            })
            .await?;
        let size = header_u64(&response, "x-object-size");
        let modified =
            millis(i64::try_from(header_u64(&response, "x-object-modified-ms")).unwrap_or(0));
        let range = range.unwrap_or(0..size);
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: modified,
            size,
            e_tag: None,
            version: None,
        };
        let declared_over_limit = options
            .extensions
            .get::<super::ReadLimit>()
            .is_some_and(|limit| range.end - range.start > limit.0);
        if options.head || declared_over_limit {
            // Nothing of the body is read: the reader refuses by length.
            return Ok(whole::get_result(meta, Bytes::new(), range));
        }
        // The body as it arrives: the reader stops it at the length it accepts.
        Ok(whole::get_result_stream(meta, body_stream(response), range))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Res<Path>>,
    ) -> BoxStream<'static, Res<Path>> {
        whole::delete_each(self.clone(), locations, |this, location| async move {
            this.send(Method::DELETE, location.as_ref(), |r| r)
                .await
                .map(|_| ())
        })
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Res<ObjectMeta>> {
        let prefix = prefix.map(|p| p.to_string()).unwrap_or_default();
        let this = self.clone();
        futures::stream::once(async move {
            this.send(Method::GET, &format!("?list={prefix}"), |r| r)
                .await
        })
        .map(|response| match response {
            Ok(response) => list_lines(response),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Res<ListResult> {
        whole::list_flat(self.list(prefix)).await
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Res<()> {
        Err(whole::not_implemented("copy", STORE))
    }
}
