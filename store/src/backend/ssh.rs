//! `ssh://[USER@]HOST[:PORT]/PATH`: a repository on any SSH server that
//! offers SFTP, reached through the system's `ssh`, as an [`ObjectStore`].
//!
//! Cairn runs `ssh -s HOST sftp` (or `CAIRN_SSH_COMMAND`, run by `sh`, for
//! extra options) and speaks SFTP over its stdin and stdout, so the user's
//! keys, agent, `~/.ssh/config` and `known_hosts` apply unchanged, and the far
//! side needs nothing but an SSH server with its SFTP subsystem. One
//! connection carries every request, pipelined; it is opened on first use.
//!
//! How the store's promises are kept (format-spec §12.5):
//! - an object is written to `KEY#<random>` (fsynced when the server offers
//!   `fsync@openssh.com`), then published with `hardlink@openssh.com`, which
//!   is `link(2)`: it fails if the key exists, so a create-only write either
//!   publishes whole content or nothing; the staging name is then removed;
//! - an overwrite (leases, replica state) renames the staging file over the
//!   key with `posix-rename@openssh.com` (`rename(2)`, atomic);
//! - readers ignore names containing `#`, as on local disk.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::metadata::MetaData;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};

use super::whole;

/// Where an `ssh://` repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Login name; else ssh's default (`~/.ssh/config`, then the local user).
    pub user: Option<String>,
    /// Host name or address (an alias of `~/.ssh/config` works).
    pub host: String,
    /// Port; else ssh's default.
    pub port: Option<u16>,
    /// The repository directory: absolute, or relative to the login's home
    /// (`ssh://host/~/backups` gives `backups`). No trailing `/`.
    pub root: String,
}

impl SshTarget {
    /// Parses `ssh://[USER@]HOST[:PORT]/PATH`.
    pub fn parse(url: &str) -> Result<SshTarget, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        let host = match parsed.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) if !h.to_string().is_empty() => h.to_string(),
            _ => {
                return Err(format!(
                    "{url:?}: no host; use ssh://[USER@]HOST[:PORT]/PATH"
                ));
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| format!("{url:?}: not UTF-8 after percent-decoding"))
        };
        let user = match parsed.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        // Never let a host or user be read as an ssh option.
        if host.starts_with('-') || user.as_deref().is_some_and(|u| u.starts_with('-')) {
            return Err(format!("{url:?}: a host or user may not start with '-'"));
        }
        if parsed.password().is_some() {
            return Err(format!(
                "{url:?}: passwords do not go in the URL; use a key (ssh-agent, ~/.ssh/config)"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!(
                "{url:?}: '?' and '#' are not allowed; percent-encode them in the path"
            ));
        }
        if parsed.port() == Some(0) {
            return Err(format!("{url:?}: port 0"));
        }
        let path = decode(parsed.path())?;
        if path
            .chars()
            .chain(user.iter().flat_map(|u| u.chars()))
            .any(char::is_control)
        {
            return Err(format!("{url:?}: control characters in the user or path"));
        }
        let root = match path.strip_prefix("/~") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_matches('/'),
            _ => path.trim_end_matches('/'),
        };
        if root.is_empty() && !path.starts_with("/~") {
            return Err(format!(
                "{url:?}: no repository path; use ssh://HOST/ABSOLUTE/PATH or ssh://HOST/~/PATH"
            ));
        }
        if root.split('/').any(|part| part == "..") {
            return Err(format!("{url:?}: the path may not contain '..'"));
        }
        Ok(SshTarget {
            user,
            host,
            port: parsed.port(),
            root: root.to_string(),
        })
    }

    /// The arguments after the program: options, then the host and the
    /// subsystem, with `--` so that nothing in the URL is read as an option.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(port) = self.port {
            args.extend(["-p".to_string(), port.to_string()]);
        }
        if let Some(user) = &self.user {
            args.extend(["-l".to_string(), user.clone()]);
        }
        // A dead link is noticed within a minute instead of hanging on TCP.
        for option in ["ServerAliveInterval=15", "ServerAliveCountMax=4"] {
            args.extend(["-o".to_string(), option.to_string()]);
        }
        args.extend([
            "-s".to_string(),
            "--".to_string(),
            self.host.clone(),
            "sftp".to_string(),
        ]);
        args
    }
}

/// How to start the SFTP session's transport.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `ssh` with [`SshTarget::ssh_args`]; `Some(command)` is a shell command
    /// (`CAIRN_SSH_COMMAND`, e.g. `ssh -F ./config`) to run instead of `ssh`.
    Ssh(Option<String>),
    /// A program that speaks SFTP on its stdin/stdout itself, such as
    /// `/usr/lib/openssh/sftp-server` (tests of the store without a network).
    Program(std::path::PathBuf),
}

/// A repository over SFTP.
#[derive(Clone)]
pub struct SftpStore {
    inner: Arc<Inner>,
    /// Give up on a request (connecting included) after this long.
    timeout: Option<Duration>,
}

struct Inner {
    target: SshTarget,
    transport: Transport,
    /// The session; replaced by the next request once it broke.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    sftp: Sftp,
    /// Kept so that the process dies with the store (`kill_on_drop`).
    _child: Child,
    /// What ssh said on stderr: the reason, when the link fails.
    stderr: Arc<Mutex<String>>,
    /// Set when a request failed for the transport (not for an SFTP
    /// status): ssh died or the link dropped.
    broken: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SftpStore({})", self)
    }
}

impl fmt::Display for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.inner.target;
        let user = t
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = t.port.map(|p| format!(":{p}")).unwrap_or_default();
        let host = if t.host.contains(':') {
            format!("[{}]", t.host)
        } else {
            t.host.clone()
        };
        let path = if t.root.starts_with('/') {
            t.root.clone()
        } else {
            format!("/~/{}", t.root)
        };
        write!(f, "ssh://{user}{host}{port}{path}")
    }
}

type Res<T> = object_store::Result<T>;

const STORE: &str = "ssh";

fn generic(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: e.into(),
    }
}

/// Pieces of one object read or written at once, each its own request.
const IN_FLIGHT: usize = 16;

/// Bytes per read or write request: OpenSSH's limit (256 KiB less its
/// header room). A server with a lower limit gets each piece in several
/// requests, still correct.
const PIECE: usize = 256 * 1024 - 1024;

impl SftpStore {
    /// A store at `target`; nothing is started until the first request.
    pub fn new(target: SshTarget, transport: Transport) -> SftpStore {
        SftpStore {
            inner: Arc::new(Inner {
                target,
                transport,
                conn: tokio::sync::Mutex::new(None),
            }),
            timeout: None,
        }
    }

    /// Gives up on any request that has no answer after `limit`, and starts
    /// a new session for the next one.
    pub fn with_timeout(mut self, limit: Duration) -> SftpStore {
        self.timeout = Some(limit);
        self
    }

    /// Runs one request of the store under its timeout.
    async fn timed<T>(&self, doing: &str, request: impl Future<Output = Res<T>>) -> Res<T> {
        let Some(limit) = self.timeout else {
            return request.await;
        };
        match tokio::time::timeout(limit, request).await {
            Ok(answer) => answer,
            Err(_) => {
                // A session that does not answer is not used again.
                if let Ok(mut slot) = self.inner.conn.try_lock() {
                    *slot = None;
                }
                Err(generic(format!(
                    "{doing}: no answer from {self} within {limit:?} (--timeout); the server \
                     or the link is stalled"
                )))
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = match &self.inner.transport {
            Transport::Ssh(None) => {
                let mut c = Command::new("ssh");
                c.args(self.inner.target.ssh_args());
                c
            }
            Transport::Ssh(Some(shell)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{shell} \"$@\""))
                    .arg("cairn-ssh")
                    .args(self.inner.target.ssh_args());
                c
            }
            Transport::Program(program) => Command::new(program),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// The session, started on first use and started again after it broke
    /// (a long `cairn serve --repo ssh://…` outlives a network blip; the
    /// request that met the failure reports it).
    async fn conn(&self) -> Res<Arc<Conn>> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.broken.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = Arc::new(self.connect().await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn connect(&self) -> Res<Conn> {
        let mut child = self.command().spawn().map_err(|e| {
            generic(format!(
                "cannot start ssh ({e}); install an OpenSSH client or set CAIRN_SSH_COMMAND"
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(generic("ssh started without its pipes"));
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                tracing::debug!(target: "cairn_store::ssh", "ssh: {}", text.trim_end());
                if let Ok(mut s) = sink.lock()
                    && s.len() < 16 * 1024
                {
                    s.push_str(&text);
                }
            }
        });
        let options = SftpOptions::new().flush_interval(Duration::ZERO);
        let sftp = match Sftp::new(stdin, stdout, options).await {
            Ok(sftp) => sftp,
            Err(e) => {
                // ssh exits when it cannot connect or log in; its stderr,
                // read to the end, tells why.
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
                let said = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(self.handshake_error(&e, said.trim()));
            }
        };
        Ok(Conn {
            sftp,
            _child: child,
            stderr,
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Why the session did not start, classified by what ssh printed.
    fn handshake_error(&self, e: &SftpError, said: &str) -> object_store::Error {
        let said = if said.is_empty() {
            e.to_string()
        } else {
            said.lines()
                .filter(|l| !l.starts_with("Warning: Permanently added"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let path = self.to_string();
        if said.contains("Permission denied")
            || said.contains("Host key verification failed")
            || said.contains("IDENTIFICATION HAS CHANGED")
            || said.contains("Too many authentication failures")
        {
            return object_store::Error::Unauthenticated {
                path,
                source: format!("ssh could not log in: {said}").into(),
            };
        }
        if said.contains("subsystem request failed") {
            return object_store::Error::NotSupported {
                source: format!("{path}: the SSH server offers no SFTP subsystem: {said}").into(),
            };
        }
        generic(format!("ssh could not connect: {said}"))
    }

    fn full(&self, location: &Path) -> String {
        join(&self.inner.target.root, location.as_ref())
    }

    /// Maps an SFTP error on `path` to the store's error kinds.
    fn error(&self, conn: &Conn, path: &str, e: SftpError) -> object_store::Error {
        match e {
            SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => object_store::Error::NotFound {
                path: path.to_string(),
                source: Box::new(e),
            },
            SftpError::SftpError(SftpErrorKind::PermDenied, _) => {
                object_store::Error::PermissionDenied {
                    path: path.to_string(),
                    source: Box::new(e),
                }
            }
            SftpError::SftpError(..) => generic(format!("{path}: {e}")),
            // The link itself broke: say what ssh said; the next request
            // starts a new session.
            other => {
                conn.broken
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let said = conn.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                let said = said.trim();
                generic(if said.is_empty() {
                    format!("the ssh connection failed: {other}")
                } else {
                    format!("the ssh connection failed: {other}; ssh said: {said}")
                })
            }
        }
    }

    /// Writes `bytes` to a staging name, then publishes it as `location`:
    /// with `create`, by a hard link that fails if the key exists; else by
    /// an atomic rename over it.
    async fn publish(&self, location: &Path, bytes: Bytes, create: bool) -> Res<()> {
        let conn = self.conn().await?;
        let conn = &*conn;
        let (needed, supported) = if create {
            ("hardlink@openssh.com", conn.sftp.support_hardlink())
        } else {
            ("posix-rename@openssh.com", conn.sftp.support_posix_rename())
        };
        if !supported {
            return Err(object_store::Error::NotSupported {
                source: format!(
                    "{self}: the server's SFTP lacks {needed}, which Cairn needs for atomic \
                     writes; use an OpenSSH server (5.7 or later)"
                )
                .into(),
            });
        }
        let path = self.full(location);
        let tmp = staging(&path)?;
        self.write_new(conn, &tmp, &bytes).await?;
        let mut fs = conn.sftp.fs();
        if !create {
            let renamed = fs.rename(&tmp, &path).await;
            if renamed.is_err() {
                let _ = fs.remove_file(&tmp).await;
            }
            return renamed.map_err(|e| self.error(conn, &path, e));
        }
        let linked = fs.hard_link(&tmp, &path).await;
        let _ = fs.remove_file(&tmp).await;
        let Err(e) = linked else { return Ok(()) };
        if fs.metadata(&path).await.is_ok() {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "exists".into(),
            });
        }
        Err(match e {
            // The link was refused for another reason than the name being
            // taken: most likely a file system without hard links.
            SftpError::SftpError(SftpErrorKind::Failure | SftpErrorKind::OpUnsupported, _) => {
                object_store::Error::NotSupported {
                    source: format!(
                        "{path}: the server could not hard-link the written object into place \
                         ({e}); Cairn needs a file system with hard links for create-only writes"
                    )
                    .into(),
                }
            }
            e => self.error(conn, &path, e),
        })
    }

    /// Creates `dir` and its missing parents.
    async fn mkdir_all(&self, conn: &Conn, dir: &str) -> Res<()> {
        let mut fs = conn.sftp.fs();
        // Find the deepest existing ancestor, then create downwards.
        let mut missing = Vec::new();
        let mut cur = dir.to_string();
        loop {
            match fs.metadata(&cur).await {
                Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => break,
                Ok(_) => return Err(generic(format!("{cur} exists and is not a directory"))),
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                    missing.push(cur.clone());
                    match cur.rsplit_once('/') {
                        Some((parent, _)) if !parent.is_empty() => cur = parent.to_string(),
                        _ => break,
                    }
                }
                Err(e) => return Err(self.error(conn, &cur, e)),
            }
        }
        for d in missing.iter().rev() {
            if let Err(e) = fs.create_dir(d).await {
                // Another writer may have made it meanwhile.
                match fs.metadata(d).await {
                    Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => {}
                    _ => return Err(self.error(conn, d, e)),
                }
            }
        }
        Ok(())
    }

    /// Writes `bytes` to a new file at `path` (which must not exist),
    /// creating its directory if needed; fsynced when the server can.
    async fn write_new(&self, conn: &Conn, path: &str, bytes: &Bytes) -> Res<()> {
        let open = || async {
            conn.sftp
                .options()
                .write(true)
                .create_new(true)
                .open(path)
                .await
        };
        let mut file = match open().await {
            Ok(f) => f,
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                if let Some((dir, _)) = path.rsplit_once('/')
                    && !dir.is_empty()
                {
                    self.mkdir_all(conn, dir).await?;
                }
                open().await.map_err(|e| self.error(conn, path, e))?
            }
            Err(e) => return Err(self.error(conn, path, e)),
        };
        let piece = PIECE;
        let pieces = (0..bytes.len()).step_by(piece).map(|start| {
            let mut f = file.clone();
            let data = bytes.slice(start..(start + piece).min(bytes.len()));
            async move {
                f.seek(std::io::SeekFrom::Start(start as u64)).await?;
                f.write_all(&data).await
            }
        });
        let written: Result<Vec<()>, SftpError> = futures::stream::iter(pieces)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await;
        let synced = match written {
            Ok(_) if conn.sftp.support_fsync() => file.sync_all().await,
            other => other.map(|_| ()),
        };
        if let Err(e) = synced {
            let e = self.write_error(conn, path, bytes.len(), e).await;
            let _ = conn.sftp.fs().remove_file(path).await;
            return Err(e);
        }
        if let Err(e) = file.close().await {
            let _ = conn.sftp.fs().remove_file(path).await;
            return Err(self.error(conn, path, e));
        }
        Ok(())
    }

    /// A failed write: "no space" when the file system is (nearly) full,
    /// which SFTP reports only as a generic failure.
    async fn write_error(
        &self,
        conn: &Conn,
        path: &str,
        len: usize,
        e: SftpError,
    ) -> object_store::Error {
        if matches!(e, SftpError::SftpError(SftpErrorKind::Failure, _))
            && conn.sftp.support_statvfs()
            && let Ok(stat) = conn.sftp.fs().statvfs(path).await
            && stat.bavail.saturating_mul(stat.frsize) < (len as u64).saturating_add(1 << 20)
        {
            return generic(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{path}: no space left on the SSH server's file system ({e})"),
            ));
        }
        self.error(conn, path, e)
    }

    async fn read(&self, conn: &Conn, path: &str, options: &GetOptions) -> Res<GetResult> {
        if options.head && options.range.is_none() {
            let meta = conn
                .sftp
                .fs()
                .metadata(path)
                .await
                .map_err(|e| self.error(conn, path, e))?;
            return Ok(result(
                path,
                &meta,
                Bytes::new(),
                0..meta.len().unwrap_or(0),
            ));
        }
        let mut file = conn
            .sftp
            .options()
            .read(true)
            .open(path)
            .await
            .map_err(|e| self.error(conn, path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.error(conn, path, e))?;
        let size = meta.len().unwrap_or(0);
        let range = match &options.range {
            Some(r) => r.as_range(size).map_err(generic)?,
            None => 0..size,
        };
        // A reader's limit below the declared length: nothing is read, and
        // the reader refuses the object by its length.
        let over_limit = options
            .extensions
            .get::<super::ReadLimit>()
            .is_some_and(|limit| range.end - range.start > limit.0);
        let bytes = if options.head || over_limit {
            Bytes::new()
        } else {
            self.read_range(conn, &file, path, range.clone()).await?
        };
        // Dropping the handle closes it in the background: no round trip.
        drop(file);
        let range = if options.head || over_limit {
            range
        } else {
            range.start..range.start + bytes.len() as u64
        };
        Ok(result(path, &meta, bytes, range))
    }

    /// Reads `range`, several pieces in flight; fails if the file ends early.
    async fn read_range(
        &self,
        conn: &Conn,
        file: &openssh_sftp_client::file::File,
        path: &str,
        range: Range<u64>,
    ) -> Res<Bytes> {
        let piece = PIECE as u64;
        let starts = (range.start..range.end).step_by(PIECE);
        let pieces = starts.map(|start| {
            let mut f = file.clone();
            let want = usize::try_from(piece.min(range.end - start)).unwrap_or(0);
            async move { read_at(&mut f, start, want).await }
        });
        let parts: Vec<BytesMut> = futures::stream::iter(pieces)
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
            .map_err(|e| match e {
                SftpError::IOError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    generic(format!(
                        "{path}: shorter than the range {range:?} asked for"
                    ))
                }
                e => self.error(conn, path, e),
            })?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default().freeze());
        }
        let mut out =
            BytesMut::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
        for part in parts {
            out.extend_from_slice(&part);
        }
        Ok(out.freeze())
    }

    /// Every file under `prefix` (relative to the root), recursively; the
    /// directories of one level are read concurrently (a pack listing is
    /// 256 fan-out directories: one round trip's worth, not 256).
    async fn walk(&self, prefix: &str) -> Res<Vec<ObjectMeta>> {
        let conn = self.conn().await?;
        let conn = &*conn;
        let mut out = Vec::new();
        let mut level = vec![prefix.trim_matches('/').to_string()];
        while !level.is_empty() {
            let listed: Vec<Vec<(String, MetaData)>> = futures::stream::iter(level)
                .map(|rel| self.read_dir(conn, rel))
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            level = Vec::new();
            let found: usize = listed.iter().map(Vec::len).sum();
            if out.len() + found > super::MAX_LIST_ENTRIES {
                return Err(too_many(prefix));
            }
            for (key, meta) in listed.into_iter().flatten() {
                match meta.file_type() {
                    Some(t) if t.is_dir() => level.push(key),
                    Some(t) if t.is_file() => out.push(ObjectMeta {
                        location: Path::from(key),
                        last_modified: modified(&meta),
                        size: meta.len().unwrap_or(0),
                        e_tag: None,
                        version: None,
                    }),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The entries of the directory `rel` (relative to the root) as keys,
    /// without `.`, `..` and staging names; none if it does not exist.
    async fn read_dir(&self, conn: &Conn, rel: String) -> Res<Vec<(String, MetaData)>> {
        let full = join(&self.inner.target.root, &rel);
        let dir = match conn.sftp.fs().open_dir(&full).await {
            Ok(dir) => dir,
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(conn, &full, e)),
        };
        let mut entries = Vec::new();
        let mut listing = std::pin::pin!(dir.read_dir());
        while let Some(entry) = listing
            .try_next()
            .await
            .map_err(|e| self.error(conn, &full, e))?
        {
            if entries.len() >= super::MAX_LIST_ENTRIES {
                return Err(too_many(&full));
            }
            entries.push(entry);
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(name) = entry.filename().to_str() else {
                continue;
            };
            if name == "." || name == ".." || name.contains('#') {
                continue;
            }
            let mut meta = entry.metadata();
            // READDIR reports the link itself; like the local backend,
            // follow it (a dangling one is left out).
            if !meta.file_type().is_some_and(|t| t.is_dir() || t.is_file()) {
                match conn.sftp.fs().metadata(join(&full, name)).await {
                    Ok(target) => meta = target,
                    Err(_) => continue,
                }
            }
            out.push((join(&rel, name), meta));
        }
        Ok(out)
    }
}

/// The error for a listing over [`super::MAX_LIST_ENTRIES`].
fn too_many(dir: &str) -> object_store::Error {
    generic(format!(
        "{dir}: more than {} entries, the limit for a listing (format-spec §14)",
        super::MAX_LIST_ENTRIES
    ))
}

/// Reads exactly `want` bytes at `offset`, asking again after a short
/// answer (the crate's `read_all` would advance by what it asked for, not
/// what it got); the file ending first is `UnexpectedEof`.
async fn read_at(
    f: &mut openssh_sftp_client::file::File,
    offset: u64,
    want: usize,
) -> Result<BytesMut, SftpError> {
    let mut out = BytesMut::with_capacity(want);
    while out.len() < want {
        f.seek(std::io::SeekFrom::Start(offset + out.len() as u64))
            .await?;
        let ask = u32::try_from(want - out.len()).unwrap_or(u32::MAX);
        let len = out.len();
        match f.read(ask, out.split_off(len)).await? {
            Some(got) if !got.is_empty() => out.unsplit(got),
            _ => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        }
    }
    Ok(out)
}

/// A read's answer: `bytes` of `range` of the file at `path`.
fn result(path: &str, meta: &MetaData, bytes: Bytes, range: Range<u64>) -> GetResult {
    let meta = ObjectMeta {
        location: Path::from(path),
        last_modified: modified(meta),
        size: meta.len().unwrap_or(0),
        e_tag: None,
        version: None,
    };
    whole::get_result(meta, bytes, range)
}

/// `root/key`, where an empty root is the login's home directory.
fn join(root: &str, key: &str) -> String {
    match (root, key) {
        ("", "") => ".".to_string(),
        ("", key) => key.to_string(),
        (root, "") => root.to_string(),
        (root, key) => format!("{root}/{key}"),
    }
}

fn modified(meta: &MetaData) -> chrono::DateTime<chrono::Utc> {
    meta.modified()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(i64::try_from(t.as_duration().as_secs()).ok()?, 0)
        })
        .unwrap_or_default()
}

/// A staging name beside `path`: `PATH#<random>`.
fn staging(path: &str) -> Res<String> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| generic(format!("no randomness: {e}")))?;
    Ok(format!("{path}#{}", u64::from_le_bytes(nonce)))
}

#[async_trait]
impl ObjectStore for SftpStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Res<PutResult> {
        let create = whole::is_create(&opts.mode, STORE)?;
        // On a task of its own: a caller that gives up (another upload
        // failed) does not cut it between writing and publishing, which
        // would leave the staging file behind.
        let (this, location) = (self.clone(), location.clone());
        let task =
            tokio::spawn(async move { this.publish(&location, payload.into(), create).await });
        self.timed("writing", async { task.await.map_err(generic)? })
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
        self.timed("reading", async {
            let conn = self.conn().await?;
            let conn = &*conn;
            let path = self.full(location);
            let mut result = self.read(conn, &path, &options).await?;
            result.meta.location = location.clone();
            Ok(result)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Res<Path>>,
    ) -> BoxStream<'static, Res<Path>> {
        whole::delete_each(self.clone(), locations, |this, location| async move {
            this.timed("deleting", async {
                let conn = this.conn().await?;
                let conn = &*conn;
                let path = this.full(&location);
                conn.sftp
                    .fs()
                    .remove_file(&path)
                    .await
                    .map_err(|e| this.error(conn, &path, e))
            })
            .await
        })
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Res<ObjectMeta>> {
        let prefix = prefix.map(|p| p.to_string()).unwrap_or_default();
        let this = self.clone();
        whole::list_stream(async move { this.timed("listing", this.walk(&prefix)).await })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Res<ListResult> {
        whole::list_flat(self.list(prefix)).await
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Res<()> {
        Err(whole::not_implemented("copy", STORE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, PutMode};

    #[test]
    fn urls_parse() {
        let t = SshTarget::parse("ssh://backup@node4:2222/srv/cairn/").unwrap();
        assert_eq!(
            t,
            SshTarget {
                user: Some("backup".into()),
                host: "node4".into(),
                port: Some(2222),
                root: "/srv/cairn".into(),
            }
        );
        let t = SshTarget::parse("ssh://node4/~/backups").unwrap();
        assert_eq!((t.user, t.port, t.root.as_str()), (None, None, "backups"));
        assert_eq!(SshTarget::parse("ssh://node4/~").unwrap().root, "");
        assert_eq!(
            SshTarget::parse("ssh://[::1]:22/r").unwrap().host,
            "::1".to_string()
        );
        assert_eq!(
            SshTarget::parse("ssh://a%20b@h/p%20q").unwrap(),
            SshTarget {
                user: Some("a b".into()),
                host: "h".into(),
                port: None,
                root: "/p q".into(),
            }
        );
        for bad in [
            "ssh://h/srv/repo#2",
            "ssh://h/srv/re?po",
            "ssh://h:0/srv",
            "ssh://h/srv/a%0Ab",
            "ssh://node4",
            "ssh://node4/",
            "ssh:///srv",
            "ssh://u:pw@h/srv",
            "ssh://-oProxyCommand=x/srv",
            "ssh://-l@h/srv",
            "ssh://h/srv/a%2F..%2F..%2Fetc",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ssh_arguments_end_options_before_the_host() {
        let t = SshTarget::parse("ssh://me@h:2200/r").unwrap();
        let args = t.ssh_args();
        assert_eq!(&args[..4], ["-p", "2200", "-l", "me"]);
        assert_eq!(&args[args.len() - 4..], ["-s", "--", "h", "sftp"]);
    }

    #[test]
    fn staging_names_are_ignored_keys() {
        let name = staging("root/packs/ab/abcd").unwrap();
        assert!(name.starts_with("root/packs/ab/abcd#"));
        assert_eq!(join("", "config"), "config");
        assert_eq!(join("/srv/r", ""), "/srv/r");
        assert_eq!(join("/srv/r", "packs/ab"), "/srv/r/packs/ab");
        assert_eq!(join("", ""), ".");
        for url in ["ssh://u@h:2/srv/r", "ssh://h/~/r", "ssh://[::1]/r"] {
            let store = SftpStore::new(SshTarget::parse(url).unwrap(), Transport::Ssh(None));
            assert_eq!(store.to_string(), url);
        }
    }

    /// OpenSSH's SFTP server, run directly on a pipe: the whole store
    /// without a network. `tests/run` installs it (openssh-server).
    fn sftp_server() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("CAIRN_TEST_SFTP_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/usr/lib/openssh/sftp-server".into());
        if path.exists() {
            return Some(path);
        }
        assert!(
            std::env::var("CAIRN_TEST_REQUIRE_SSH").as_deref() != Ok("1"),
            "CAIRN_TEST_REQUIRE_SSH=1 but {} is missing: install openssh-server",
            path.display()
        );
        eprintln!("note: SFTP store test skipped ({} missing)", path.display());
        None
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sftp_store_keeps_the_store_promises() {
        use crate::backend::{Backend, Created, ObjectDir, ObjectKey};
        use crate::id::PackId;
        let Some(server) = sftp_server() else { return };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let target = SshTarget {
            user: None,
            host: "local".into(),
            port: None,
            root: root.to_str().unwrap().to_string(),
        };
        let store = SftpStore::new(target, Transport::Program(server));
        let backend = Backend::new(Arc::new(store.clone()), "ssh://local/repo");

        // Create-only, creating directories on the way; a second write of
        // the same content-addressed object is "already there".
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = PackId::of(&big);
        let key = ObjectKey::Pack(id);
        assert_eq!(
            backend
                .put_new(&key, Bytes::from(big.clone()))
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(
            backend
                .put_new(&key, Bytes::from(big.clone()))
                .await
                .unwrap(),
            Created::Existed
        );
        assert_eq!(backend.get(&key).await.unwrap(), big);
        assert_eq!(backend.head(&key).await.unwrap().len, big.len() as u64);
        assert_eq!(
            backend.get_range(&key, 1_000_000..1_300_123).await.unwrap(),
            big[1_000_000..1_300_123]
        );
        let past = backend
            .get_range(&key, 2_999_000..3_000_001)
            .await
            .unwrap_err();
        assert_eq!(past.kind(), crate::error::ErrorKind::Corrupt, "{past}");

        // Many writers race for one name: exactly one wins, its bytes stay.
        let name = Path::from("gc/race");
        let results = futures::future::join_all((0..8u8).map(|i| {
            let store = store.clone();
            let name = name.clone();
            async move {
                store
                    .put_opts(
                        &name,
                        PutPayload::from(vec![i; 100_000]),
                        PutMode::Create.into(),
                    )
                    .await
            }
        }))
        .await;
        let winners: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert!(results.iter().flatten().count() == 1);
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, object_store::Error::AlreadyExists { .. }),
                    "{e}"
                );
            }
        }
        let got = backend.get(&ObjectKey::Gc("race".into())).await.unwrap();
        assert_eq!(got, vec![u8::try_from(winners[0]).unwrap(); 100_000]);

        // Overwrite replaces whole; the conditional-create probe passes.
        let lock = ObjectKey::Lock("writer".into());
        backend
            .put_overwrite(&lock, Bytes::from_static(b"one"))
            .await
            .unwrap();
        backend
            .put_overwrite(&lock, Bytes::from_static(b"two!"))
            .await
            .unwrap();
        assert_eq!(backend.get(&lock).await.unwrap(), &b"two!"[..]);
        backend.probe_conditional_create().await.unwrap();

        // Listing finds objects, not staging files; a missing directory is empty.
        std::fs::write(root.join("locks/other#123"), b"staging").unwrap();
        let locks = backend.list(ObjectDir::Locks).await.unwrap();
        assert_eq!(locks.len(), 1, "{locks:?}");
        assert_eq!((&locks[0].key, locks[0].len), (&lock, 4));
        let packs = backend.list(ObjectDir::Packs).await.unwrap();
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].key, key);
        assert!(backend.list(ObjectDir::Snapshots).await.unwrap().is_empty());
        // A symlinked object is listed with its target's length, as on local
        // disk; a dangling link is not listed.
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        let linked = format!("snapshots/{}", "ab".repeat(32));
        std::os::unix::fs::symlink(root.join("locks/writer"), root.join(&linked)).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("snapshots/dangling")).unwrap();
        let snapshots = backend.list(ObjectDir::Snapshots).await.unwrap();
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert_eq!(
            (snapshots[0].key.path().to_string(), snapshots[0].len),
            (linked, 4)
        );
        // No staging file is left behind by the writes above.
        let mut leftovers = Vec::new();
        for entry in walk_local(&root) {
            let name = entry.to_string_lossy().to_string();
            if name.contains('#') && !name.ends_with("other#123") {
                leftovers.push(name);
            }
        }
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Deletes; a missing object is "missing".
        backend.delete(&key).await.unwrap();
        let gone = backend.get(&key).await.unwrap_err();
        assert_eq!(gone.kind(), crate::error::ErrorKind::Corrupt, "{gone}");
        backend.delete(&key).await.unwrap();
    }

    fn walk_local(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk_local(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_session_is_replaced_by_the_next_request() {
        let Some(server) = sftp_server() else { return };
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell records its pid, then becomes the SFTP server (the ssh
        // arguments land in the comment).
        let command = format!(
            "echo $$ > {}; exec {} #",
            pid_file.display(),
            server.display()
        );
        let target = SshTarget {
            user: None,
            host: "local".into(),
            port: None,
            root: dir.path().join("repo").to_str().unwrap().to_string(),
        };
        let store = SftpStore::new(target, Transport::Ssh(Some(command)));
        let key = Path::from("gc/note");
        store
            .put(&key, PutPayload::from_static(b"one"))
            .await
            .unwrap();
        let first = std::fs::read_to_string(&pid_file).unwrap();
        let status = std::process::Command::new("kill")
            .arg(first.trim())
            .status()
            .unwrap();
        assert!(status.success());
        // The request that meets the dead session fails…
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = store.get(&key).await.unwrap_err();
        assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
        // …and the next one runs on a new session.
        let got = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, &b"one"[..]);
        assert_ne!(std::fs::read_to_string(&pid_file).unwrap(), first);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let target = SshTarget::parse("ssh://h/srv/x").unwrap();
        // A "server" that keeps the pipe open and never answers.
        let store = SftpStore::new(target, Transport::Ssh(Some("exec sleep 30 #".into())))
            .with_timeout(Duration::from_millis(300));
        let err = store.get(&Path::from("config")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
        assert!(
            err.to_string().contains("no answer from ssh://h/srv/x"),
            "{err}"
        );
        let err = store
            .put(&Path::from("config"), PutPayload::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[tokio::test]
    async fn a_transport_that_fails_is_reported_with_what_it_said() {
        let target = SshTarget::parse("ssh://nobody@127.0.0.1:1/srv/x").unwrap();
        // `false` exits at once: the handshake fails, and that is the report.
        let store = SftpStore::new(
            target,
            Transport::Ssh(Some(
                "echo 'Permission denied (publickey).' >&2; false".into(),
            )),
        );
        let err = store.get(&Path::from("config")).await.unwrap_err();
        assert!(
            matches!(err, object_store::Error::Unauthenticated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }
}
