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
//! | `read` | read and list |
//! | `append` | also create new objects; replace or delete only its own working objects (`locks/`, `probe-`): never a pack, index, snapshot or config — the role for a backup job, so a compromised client cannot destroy history |
//! | `admin` | everything (`forget`, `gc`) |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use crate::error::{Error, Result};

/// The largest request body accepted (packs are a few MiB).
pub const MAX_BODY: usize = 256 << 20;

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

/// Tokens by value.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Role>);

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
            if tokens.insert(token.to_string(), role).is_some() {
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
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::invalid(format!(
                    "{} is readable by others; chmod 600 it",
                    path.display()
                )));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Tokens::parse(&text)
    }

    fn role(&self, request: &Request<Incoming>) -> Option<Role> {
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

/// Whether an `append` token may replace or delete `key`.
fn working_object(key: &str) -> bool {
    key.starts_with("locks/") || key.starts_with("probe-")
}

/// The server's state.
struct Server {
    store: Arc<dyn ObjectStore>,
    tokens: Tokens,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl Server {
    async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        let raw_path = request.uri().path().to_string();
        let refuse = |status: StatusCode, why: &str| {
            tracing::warn!("{peer} {method} {raw_path}: refused ({status}): {why}");
            reply(status, why.to_string())
        };
        let Some(role) = self.tokens.role(&request) else {
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
        let allowed = match (&method, role) {
            (&Method::GET | &Method::HEAD, _) => true,
            (_, Role::Admin) => true,
            (&Method::PUT, Role::Append) => create_only || working_object(&key),
            (&Method::DELETE, Role::Append) => working_object(&key),
            _ => false,
        };
        if !allowed {
            return refuse(StatusCode::FORBIDDEN, "not allowed for this token's role");
        }
        match method {
            Method::GET | Method::HEAD => self.get(&request, &path, method == Method::HEAD).await,
            Method::PUT => {
                let declared = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > MAX_BODY as u64) {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
                }
                let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken");
                    }
                };
                let mode = if create_only {
                    PutMode::Create
                } else {
                    PutMode::Overwrite
                };
                match self
                    .store
                    .put_opts(&path, PutPayload::from_bytes(body), PutOptions::from(mode))
                    .await
                {
                    Ok(_) => reply(StatusCode::CREATED, ""),
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        reply(StatusCode::PRECONDITION_FAILED, "exists")
                    }
                    Err(e) => failed(e),
                }
            }
            Method::DELETE => match self.store.delete(&path).await {
                Ok(()) => reply(StatusCode::NO_CONTENT, ""),
                Err(object_store::Error::NotFound { .. }) => reply(StatusCode::NO_CONTENT, ""),
                Err(e) => failed(e),
            },
            _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
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
                let body = if head {
                    Bytes::new()
                } else {
                    match result.bytes().await {
                        Ok(b) => b,
                        Err(e) => return failed(e),
                    }
                };
                let mut r = reply(
                    if range.is_some() && !head {
                        StatusCode::PARTIAL_CONTENT
                    } else {
                        StatusCode::OK
                    },
                    body,
                );
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
            Err(e) => failed(e),
        }
    }

    async fn list(&self, prefix: &str) -> Reply {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix.trim_end_matches('/')));
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(meta) => {
                    let line = serde_json::json!({
                        "key": meta.location.as_ref(),
                        "size": meta.size,
                        "modified_ms": meta.last_modified.timestamp_millis(),
                    });
                    out.extend_from_slice(line.to_string().as_bytes());
                    out.push(b'\n');
                }
                Err(e) => return failed(e),
            }
        }
        reply(StatusCode::OK, out)
    }
}

fn failed(e: object_store::Error) -> Reply {
    tracing::warn!("storage failed: {e}");
    reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `bytes=A-B` (inclusive) as a half-open range.
fn parse_range(value: &str) -> Option<std::ops::Range<u64>> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b >= a).then(|| a..b + 1)
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address.
    pub listen: SocketAddr,
    /// TLS certificate chain and key (PEM), or plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", options.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    ready(local);
    let server = Arc::new(Server { store, tokens });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let server = Arc::clone(&server);
        let service = hyper::service::service_fn(move |request| {
            let server = Arc::clone(&server);
            async move { Ok::<_, Infallible>(server.handle(peer, request).await) }
        });
        let http = hyper::server::conn::http1::Builder::new();
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let io = hyper_util::rt::TokioIo::new(tls);
                            let conn = http.serve_connection(io, service);
                            let _ = watcher.watch(conn).await;
                        }
                        Err(e) => tracing::warn!("{peer}: TLS handshake failed: {e}"),
                    }
                });
            }
            None => {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = graceful.watch(http.serve_connection(io, service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(0..10));
        assert_eq!(parse_range("bytes=5-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }
}
