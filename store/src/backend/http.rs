//! `http(s)://HOST:PORT/`: a repository behind `cairn serve`, as an
//! [`ObjectStore`] (the protocol is in [`crate::serve`]). The bearer token
//! comes from `CAIRN_TOKEN`; `CAIRN_CA_CERT` names a PEM certificate to trust
//! for a server whose certificate is private or self-signed.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
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
                let text = response.text().await.unwrap_or_default();
                Err(generic(format!("{s}: {}", text.trim())))
            }
        }
    }
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
        let bytes = if options.head {
            Bytes::new()
        } else {
            response.bytes().await.map_err(generic)?
        };
        let range = range.unwrap_or(0..size);
        let range = range.start
            ..range.start
                + if options.head {
                    range.end - range.start
                } else {
                    bytes.len() as u64
                };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: modified,
            size,
            e_tag: None,
            version: None,
        };
        Ok(whole::get_result(meta, bytes, range))
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
        whole::list_stream(async move {
            let response = this
                .send(Method::GET, &format!("?list={prefix}"), |r| r)
                .await?;
            let text = response.text().await.map_err(generic)?;
            let mut out = Vec::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).map_err(generic)?;
                out.push(ObjectMeta {
                    location: Path::from(v["key"].as_str().unwrap_or_default()),
                    last_modified: millis(v["modified_ms"].as_i64().unwrap_or(0)),
                    size: v["size"].as_u64().unwrap_or(0),
                    e_tag: None,
                    version: None,
                });
            }
            Ok(out)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Res<ListResult> {
        whole::list_flat(self.list(prefix)).await
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Res<()> {
        Err(whole::not_implemented("copy", STORE))
    }
}
