//! The one seam to storage.
//!
//! Everything Cairn stores or fetches goes through [`Backend`], a thin layer
//! over `object_store::ObjectStore`: local disk and S3 are configurations of
//! it, and wrappers (fault injection, counting) are `ObjectStore`s stacked
//! beneath it. The backend knows the key layout and turns storage errors into
//! [`Error`]s that name the object; it knows nothing of formats.
//!
//! What Cairn relies on from the store (see `format-spec/`): a PUT is atomic
//! (all or nothing), a PUT with "create only" (`If-None-Match: *` on S3, a
//! hard link on local disk) fails if the key exists, and a successful PUT is
//! visible to every later GET and LIST. Local writes are fsynced (file and
//! directory) before they are acknowledged.

pub mod fault;

pub mod http;

pub mod ssh;

mod whole;

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use jiff::Timestamp;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutPayload,
};

use crate::error::{Error, Result, is_storage_full};
use crate::id::{IndexId, PackId, SnapshotId};

/// The probe an append-only writer creates (and leaves): `probe-append-only`.
const APPEND_ONLY_PROBE: &str = "append-only";

/// A stored object's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// `config`
    Config,
    /// `packs/<first two hex>/<id>`
    Pack(PackId),
    /// `index/<id>`
    Index(IndexId),
    /// `snapshots/<id>`
    Snapshot(SnapshotId),
    /// `probe-<random>`: written and deleted to test conditional create.
    Probe(String),
    /// `locks/<name>`: a writer's lease (the only objects ever overwritten).
    Lock(String),
    /// `gc/<name>`: garbage collection's condemned lists and logs.
    Gc(String),
    /// `replicas/<source repository id>`: what a replica accepted from a
    /// source (overwritten by each replication); append-only,
    /// `replicas/<source repository id>.<first 32 hex of a snapshot id>`,
    /// one per newest snapshot accepted.
    Replica(String),
}

/// The longest whole pack a reader reads in one piece (`verify`,
/// `replicate`): writers close packs at 32 MiB plus one frame, so under
/// 64 MiB (format-spec §8, §14).
pub const MAX_WHOLE_PACK_LEN: u64 = 128 << 20;
/// The longest index object a reader accepts; writers split theirs to stay
/// under 32 MiB (format-spec §9, §14).
pub const MAX_INDEX_OBJECT_LEN: u64 = 64 << 20;
/// The longest snapshot manifest: framing (108 bytes) and the largest body.
pub const MAX_MANIFEST_LEN: u64 = 108 + crate::format::manifest::MAX_BODY_LEN as u64;
/// The longest garbage collection object (condemned list, writer list, log).
pub const MAX_GC_OBJECT_LEN: u64 = 64 << 20;
/// The longest lease, replica state or probe.
pub const MAX_STATE_LEN: u64 = 64 << 10;
/// The most entries a listing of one directory may hold (format-spec §14).
pub const MAX_LIST_ENTRIES: usize = 10_000_000;
/// Memory reserved for a body before its bytes arrive, at most.
const RESERVE_AHEAD_LEN: u64 = 1 << 20;

/// What a reader accepts of an object, passed to the store in
/// [`GetOptions::extensions`]: a store that sees it may skip reading the body
/// of a longer object (the backend refuses it by its declared length anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit(pub u64);

/// A directory of objects of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectDir {
    /// Packs.
    Packs,
    /// Index objects.
    Index,
    /// Snapshot manifests.
    Snapshots,
    /// Leases.
    Locks,
    /// Garbage collection state.
    Gc,
    /// What replicas accepted from their sources.
    Replicas,
}

impl ObjectDir {
    fn prefix(self) -> &'static str {
        match self {
            ObjectDir::Packs => "packs",
            ObjectDir::Index => "index",
            ObjectDir::Snapshots => "snapshots",
            ObjectDir::Locks => "locks",
            ObjectDir::Gc => "gc",
            ObjectDir::Replicas => "replicas",
        }
    }
}

/// Whether `name` is usable as a lock or GC object name: `[a-z0-9.-]`, 1-128 characters.
pub fn valid_state_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

impl ObjectKey {
    /// The key's path in the store.
    pub fn path(&self) -> Path {
        Path::from(match self {
            ObjectKey::Config => "config".to_string(),
            ObjectKey::Pack(id) => {
                let hex = id.to_hex();
                format!("packs/{}/{hex}", &hex[..2])
            }
            ObjectKey::Index(id) => format!("index/{id}"),
            ObjectKey::Snapshot(id) => format!("snapshots/{id}"),
            ObjectKey::Probe(name) => format!("probe-{name}"),
            ObjectKey::Lock(name) => format!("locks/{name}"),
            ObjectKey::Gc(name) => format!("gc/{name}"),
            ObjectKey::Replica(name) => format!("replicas/{name}"),
        })
    }

    /// The longest object of this kind a reader accepts (format-spec §14).
    pub fn max_len(&self) -> u64 {
        match self {
            ObjectKey::Config => crate::format::config::MAX_CONFIG_LEN as u64,
            ObjectKey::Pack(_) => MAX_WHOLE_PACK_LEN,
            ObjectKey::Index(_) => MAX_INDEX_OBJECT_LEN,
            ObjectKey::Snapshot(_) => MAX_MANIFEST_LEN,
            ObjectKey::Gc(_) => MAX_GC_OBJECT_LEN,
            ObjectKey::Probe(_) | ObjectKey::Lock(_) | ObjectKey::Replica(_) => MAX_STATE_LEN,
        }
    }

    /// Parses a listed path of `dir`; `None` for anything that is not ours.
    pub fn parse(dir: ObjectDir, path: &Path) -> Option<ObjectKey> {
        let parts: Vec<&str> = path.as_ref().split('/').collect();
        let key = match (dir, parts.as_slice()) {
            (ObjectDir::Packs, ["packs", fan, name]) if name.starts_with(fan) && fan.len() == 2 => {
                PackId::from_hex(name).ok().map(ObjectKey::Pack)
            }
            (ObjectDir::Index, ["index", name]) => {
                IndexId::from_hex(name).ok().map(ObjectKey::Index)
            }
            (ObjectDir::Snapshots, ["snapshots", name]) => {
                SnapshotId::from_hex(name).ok().map(ObjectKey::Snapshot)
            }
            (ObjectDir::Locks, ["locks", name]) if valid_state_name(name) => {
                Some(ObjectKey::Lock(name.to_string()))
            }
            (ObjectDir::Gc, ["gc", name]) if valid_state_name(name) => {
                Some(ObjectKey::Gc(name.to_string()))
            }
            (ObjectDir::Replicas, ["replicas", name]) if valid_state_name(name) => {
                Some(ObjectKey::Replica(name.to_string()))
            }
            _ => None,
        };
        // Only the canonical (lowercase) name is ours: it is the one read back.
        key.filter(|k| k.path() == *path)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Config => f.write_str("config"),
            ObjectKey::Pack(id) => write!(f, "pack {id}"),
            ObjectKey::Index(id) => write!(f, "index {id}"),
            ObjectKey::Snapshot(id) => write!(f, "snapshot {id}"),
            ObjectKey::Probe(name) => write!(f, "probe {name}"),
            ObjectKey::Lock(name) => write!(f, "lock {name}"),
            ObjectKey::Gc(name) => write!(f, "gc state {name}"),
            ObjectKey::Replica(name) => write!(f, "replica state {name}"),
        }
    }
}

/// A listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Its key.
    pub key: ObjectKey,
    /// Its length.
    pub len: u64,
    /// When the store last wrote it, by the store's clock.
    pub last_modified: Timestamp,
}

/// The outcome of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    New,
    /// An object of the same name and length was there already.
    Existed,
}

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// A repository behind `cairn serve`: its base URL.
    Http(String),
    /// An S3 bucket and key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// A directory on an SSH server, reached over SFTP.
    Ssh(ssh::SshTarget),
}

impl Location {
    /// Parses a repository URL: a path, `file://PATH`, `s3://BUCKET[/PREFIX]`,
    /// `http(s)://HOST:PORT/` or `ssh://[USER@]HOST[:PORT]/PATH`.
    pub fn parse(url: &str) -> Result<Location> {
        if url.starts_with("ssh://") {
            return ssh::SshTarget::parse(url)
                .map(Location::Ssh)
                .map_err(Error::invalid);
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::invalid(format!(
                    "{url:?}: no bucket; use s3://BUCKET/PREFIX"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Location::Http(url.to_string()));
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::Unsupported {
                what: format!(
                    "repository URL scheme {scheme:?} is not supported; use a path, file://PATH, s3://BUCKET/PREFIX, http(s)://HOST:PORT/ (cairn serve) or ssh://[USER@]HOST[:PORT]/PATH"
                ),
            });
        }
        if url.is_empty() {
            return Err(Error::invalid("empty repository URL"));
        }
        Ok(Location::Local(PathBuf::from(url)))
    }
}

/// How to reach remote stores.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// S3 endpoint, e.g. `http://127.0.0.1:8333`; else `AWS_ENDPOINT_URL` / AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region; else `AWS_REGION` / `AWS_DEFAULT_REGION` / `us-east-1`.
    pub s3_region: Option<String>,
    /// S3 access key id and secret; else the standard `AWS_*` variables and
    /// credential sources.
    pub s3_credentials: Option<(String, String)>,
    /// Give up on a request (retries included) after this long.
    pub retry_timeout: Duration,
    /// Retries of a failed request.
    pub max_retries: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            s3_endpoint: None,
            s3_region: None,
            s3_credentials: None,
            retry_timeout: Duration::from_secs(60),
            max_retries: 4,
        }
    }
}

/// A repository's storage.
#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    url: Arc<str>,
    max_list_entries: usize,
    small_reads: usize,
    append_only: bool,
    /// A local repository's directory: its range reads can be done on the
    /// thread that uses the bytes ([`Backend::open_here`]).
    local_root: Option<Arc<PathBuf>>,
}

/// Small objects (manifests) worth reading at once from a remote store:
/// latency, not bandwidth, is the limit.
const REMOTE_SMALL_READS: usize = 16;
/// And from a local disk, where each read takes a blocking thread (and its
/// memory) for a page-cache copy: more buy nothing.
const LOCAL_SMALL_READS: usize = 2;

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.url)
    }
}

impl Backend {
    /// Wraps any object store; `url` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Backend {
        Backend {
            store,
            url: url.into().into(),
            max_list_entries: MAX_LIST_ENTRIES,
            small_reads: REMOTE_SMALL_READS,
            append_only: false,
            local_root: None,
        }
    }

    /// The same store, written append-only: every write create-only,
    /// nothing overwritten or deleted (a credential that may not, such as
    /// a replica bucket's on a node that could be compromised). Leases,
    /// probes and replica states then take their create-only forms
    /// (format-spec §12).
    #[must_use]
    pub fn append_only(mut self) -> Backend {
        self.append_only = true;
        self
    }

    /// Whether writes are append-only.
    pub fn is_append_only(&self) -> bool {
        self.append_only
    }

    fn refuse_if_append_only(&self, key: &ObjectKey, doing: &str) -> Result<()> {
        if self.append_only {
            return Err(Error::Unsupported {
                what: format!(
                    "{} at {}: {doing} it, but this store is written append-only \
                     (--append-only); run that with a credential that may delete, \
                     away from the writer",
                    key, self.url
                ),
            });
        }
        Ok(())
    }

    /// How many small objects to read at once.
    pub fn small_reads(&self) -> usize {
        self.small_reads
    }

    /// The same store with a lower bound on listings (tests).
    #[must_use]
    pub fn with_max_list_entries(mut self, max: usize) -> Backend {
        self.max_list_entries = max.min(MAX_LIST_ENTRIES);
        self
    }

    /// Connects to the store at `url`. With `create`, a missing local
    /// directory is created; without it, a missing one is an error.
    pub fn connect(url: &str, options: &BackendOptions, create: bool) -> Result<Backend> {
        match Location::parse(url)? {
            Location::Local(path) => Self::connect_local(url, &path, create),
            Location::S3 { bucket, prefix } => Self::connect_s3(url, &bucket, &prefix, options),
            Location::Http(base) => {
                let token = std::env::var("CAIRN_TOKEN").map_err(|_| Error::AccessDenied {
                    url: url.to_string(),
                    detail: "no token (CAIRN_TOKEN is not set)".into(),
                })?;
                let ca = match std::env::var_os("CAIRN_CA_CERT") {
                    Some(path) => Some(std::fs::read(&path).map_err(|e| {
                        Error::io(
                            format!("reading CAIRN_CA_CERT {}", path.to_string_lossy()),
                            e,
                        )
                    })?),
                    None => None,
                };
                let store =
                    http::ServeStore::new(&base, token, ca.as_deref(), options.retry_timeout)
                        .map_err(|e| Error::invalid(format!("{url}: {e}")))?;
                Ok(Backend::new(Arc::new(store), url))
            }
            // Directories are made as objects are written; nothing to create.
            Location::Ssh(target) => {
                let command = std::env::var("CAIRN_SSH_COMMAND")
                    .ok()
                    .filter(|c| !c.trim().is_empty());
                // A whole object travels within one request's time here, and
                // ssh's keep-alives already notice a dead link within a
                // minute: this limit only catches a stalled server, so it
                // never cuts a slow but moving transfer short.
                let limit = options.retry_timeout.max(Duration::from_secs(300));
                let store =
                    ssh::SftpStore::new(target, ssh::Transport::Ssh(command)).with_timeout(limit);
                Ok(Backend::new(Arc::new(store), url))
            }
        }
    }

    fn connect_local(url: &str, path: &FsPath, create: bool) -> Result<Backend> {
        if create {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        } else if !path.is_dir() {
            return Err(Error::RepositoryNotFound {
                url: url.to_string(),
                detail: "no such directory".into(),
            });
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| {
                Error::io(
                    format!("opening {}", path.display()),
                    std::io::Error::other(e),
                )
            })?
            .with_fsync(true);
        let mut backend = Backend::new(Arc::new(store), url);
        backend.small_reads = LOCAL_SMALL_READS;
        backend.local_root = Some(Arc::new(path.to_path_buf()));
        Ok(backend)
    }

    fn connect_s3(
        url: &str,
        bucket: &str,
        prefix: &str,
        options: &BackendOptions,
    ) -> Result<Backend> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
        use object_store::{BackoffConfig, ClientOptions, RetryConfig};
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: options.max_retries,
                retry_timeout: options.retry_timeout,
            });
        let endpoint = options
            .s3_endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        if let Some(endpoint) = endpoint {
            // A custom endpoint (SeaweedFS, MinIO, Ceph) wants path-style requests.
            client = client.with_allow_http(endpoint.starts_with("http://"));
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some((id, secret)) = &options.s3_credentials {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let region = options
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let s3 = builder
            .with_region(region)
            .with_client_options(client)
            .build()
            .map_err(|e| Error::invalid(format!("{url}: cannot configure S3: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Backend::new(store, url))
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store (to stack wrappers in tests).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes `bytes` under `key` unless something is there already. An
    /// existing object under a content-addressed name (pack, index,
    /// snapshot) is read back and hashed: if it is intact it is the same
    /// object, and that is success too ([`Created::Existed`]).
    pub async fn put_new(&self, key: &ObjectKey, bytes: Bytes) -> Result<Created> {
        let result = self
            .store
            .put_opts(
                &key.path(),
                PutPayload::from_bytes(bytes),
                PutMode::Create.into(),
            )
            .await;
        match result {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let expected = match key {
                    ObjectKey::Pack(id) => Some(id.0),
                    ObjectKey::Index(id) => Some(id.0),
                    ObjectKey::Snapshot(id) => Some(id.0),
                    ObjectKey::Config
                    | ObjectKey::Probe(_)
                    | ObjectKey::Lock(_)
                    | ObjectKey::Gc(_)
                    | ObjectKey::Replica(_) => None,
                };
                if let Some(expected) = expected {
                    let existing = self.get(key).await?;
                    if blake3::hash(&existing).as_bytes() != &expected {
                        return Err(Error::corrupt(
                            key.to_string(),
                            "is already stored, but its content does not match its name; \
                             delete that damaged object, then run the command again",
                        ));
                    }
                }
                Ok(Created::Existed)
            }
            Err(e) => Err(self.classify(e, key, "writing")),
        }
    }

    /// Overwrites a lease's heartbeat or a replica's state: the only kinds
    /// of object Cairn ever replaces (an atomic PUT, so readers see the old
    /// or the new).
    pub async fn put_overwrite(&self, key: &ObjectKey, bytes: Bytes) -> Result<()> {
        let mutable = matches!(key, ObjectKey::Lock(_) | ObjectKey::Replica(_));
        debug_assert!(mutable, "only leases and replica states are overwritten");
        if !mutable {
            return Err(Error::invalid(format!("{key} may not be overwritten")));
        }
        self.refuse_if_append_only(key, "overwriting")?;
        self.store
            .put_opts(
                &key.path(),
                PutPayload::from_bytes(bytes),
                PutMode::Overwrite.into(),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e, key, "writing"))
    }

    /// Reads a whole object, at most [`ObjectKey::max_len`] bytes of it.
    pub async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.get_bounded(key, key.max_len()).await
    }

    /// Reads a whole object of at most `max_len` bytes: its declared length
    /// is checked before any byte is read, and the body is refused as soon
    /// as more arrives than it declared.
    pub async fn get_bounded(&self, key: &ObjectKey, max_len: u64) -> Result<Bytes> {
        let mut options = GetOptions::default();
        options.extensions.insert(ReadLimit(max_len));
        let result = self
            .store
            .get_opts(&key.path(), options)
            .await
            .map_err(|e| self.classify(e, key, "reading"))?;
        let declared = result.meta.size;
        if declared > max_len {
            return Err(Error::corrupt(
                key.to_string(),
                format!(
                    "is {declared} bytes, over the {max_len}-byte limit for its kind \
                     (format-spec §14), which Cairn never writes: delete it or restore it \
                     from a replica"
                ),
            ));
        }
        match result.payload {
            // A local file: read exactly its declared length in one go.
            GetResultPayload::File(..) => result
                .bytes()
                .await
                .map_err(|e| self.classify(e, key, "reading")),
            GetResultPayload::Stream(stream) => {
                self.collect_exact(key, stream, declared, "its declared length")
                    .await
            }
        }
    }

    /// Collects exactly `want` bytes from `stream`, refusing as soon as
    /// more arrive and when fewer do.
    async fn collect_exact(
        &self,
        key: &ObjectKey,
        mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
        want: u64,
        what: &str,
    ) -> Result<Bytes> {
        // Reserved as bytes arrive, not on a store's word: a hostile one
        // could declare the limit and send nothing.
        let reserve = want.min(RESERVE_AHEAD_LEN);
        let mut out = bytes::BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.classify(e, key, "reading"))?
        {
            let got = out.len() as u64 + chunk.len() as u64;
            if got > want {
                return Err(Error::corrupt(
                    key.to_string(),
                    format!(
                        "the store sent more than {want} bytes ({what}); refused after {got} \
                         bytes without reading on. A store that does this is damaged or hostile"
                    ),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        if (out.len() as u64) < want {
            return Err(Error::corrupt(
                key.to_string(),
                format!(
                    "the store sent {} of {want} bytes ({what}): truncated",
                    out.len()
                ),
            ));
        }
        Ok(out.freeze())
    }

    /// Opens `key` of a local repository for [`OpenObject::read_cached`],
    /// which reads ranges of it on the thread that uses the bytes. Opened on
    /// the blocking pool, as the runtime's reads are: an open may wait on
    /// the disk or on a network or FUSE file system, which must not stall a
    /// CPU thread. `Missing` for no such file and for one that is not a
    /// regular file (a FIFO or a device in an object's place, opened
    /// without waiting on it); `None` for other stores and for anything
    /// else, which [`Backend::get_range`] then reads and reports as it
    /// always has.
    pub async fn open_here(&self, key: &ObjectKey) -> Result<Option<Arc<OpenObject>>> {
        let Some(root) = self.local_root.as_ref() else {
            return Ok(None);
        };
        let (path, key) = (root.join(key.path().as_ref()), key.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || OpenObject::open(&path, key, Some(runtime)))
            .await
            .map_err(|e| Error::Bug(format!("opening an object: {e}")))?
    }

    /// Whether [`Backend::open_here`] opens (the store is local).
    pub fn reads_here(&self) -> bool {
        self.local_root.is_some()
    }

    /// Reads a byte range of an object: exactly the range, or an error
    /// (an answer longer than the range is refused without buffering the
    /// excess).
    pub async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        let options = GetOptions {
            range: Some(range.clone().into()),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&key.path(), options).await {
            Ok(result) => result,
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(self.classify(e, key, "reading"));
            }
            Err(e) => {
                // A range past the end (local: "invalid range", S3: 416) means
                // the object is shorter than its index says: truncated.
                if let Ok(info) = self.head(key).await
                    && info.len < range.end
                {
                    return Err(shorter_than_range(key, info.len, &range));
                }
                return Err(self.classify(e, key, "reading"));
            }
        };
        if result.meta.size < range.end {
            return Err(shorter_than_range(key, result.meta.size, &range));
        }
        if result.range != range {
            return Err(Error::corrupt(
                key.to_string(),
                format!(
                    "bytes {}..{} requested, {}..{} returned (truncated?)",
                    range.start, range.end, result.range.start, result.range.end
                ),
            ));
        }
        match result.payload {
            GetResultPayload::File(..) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| self.classify(e, key, "reading"))?;
                // A file cut short between its stat and its read.
                if bytes.len() as u64 != want {
                    return Err(Error::corrupt(
                        key.to_string(),
                        format!("{want} bytes requested, {} read (truncated?)", bytes.len()),
                    ));
                }
                Ok(bytes)
            }
            GetResultPayload::Stream(stream) => {
                let what = format!("bytes {}..{} requested", range.start, range.end);
                self.collect_exact(key, stream, want, &what).await
            }
        }
    }

    /// An object's length and time.
    pub async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo> {
        let meta = self
            .store
            .head(&key.path())
            .await
            .map_err(|e| self.classify(e, key, "reading"))?;
        Ok(ObjectInfo {
            key: key.clone(),
            len: meta.size,
            last_modified: to_timestamp(&meta),
        })
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(Error::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists the objects of one kind, skipping names that are not Cairn's;
    /// refuses a listing of more than [`MAX_LIST_ENTRIES`] entries.
    pub async fn list(&self, dir: ObjectDir) -> Result<Vec<ObjectInfo>> {
        let prefix = Path::from(dir.prefix());
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        let mut seen = 0usize;
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| self.classify_listing(e, dir))?
        {
            seen += 1;
            if seen > self.max_list_entries {
                return Err(Error::corrupt(
                    format!("the listing of {}/ at {}", dir.prefix(), self.url),
                    format!(
                        "has more than {} entries, the limit (format-spec §14); the store \
                         holds objects Cairn did not write there, or it is hostile",
                        self.max_list_entries
                    ),
                ));
            }
            match ObjectKey::parse(dir, &meta.location) {
                Some(key) => out.push(ObjectInfo {
                    key,
                    len: meta.size,
                    last_modified: to_timestamp(&meta),
                }),
                None => tracing::debug!("ignoring foreign object {}", meta.location),
            }
        }
        Ok(out)
    }

    /// Deletes an object; deleting a missing one is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.refuse_if_append_only(key, "deleting")?;
        match self.store.delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.classify(e, key, "deleting")),
        }
    }

    /// Checks that the store honours create-only writes, which every Cairn
    /// write relies on; says clearly when it does not.
    pub async fn probe_conditional_create(&self) -> Result<()> {
        // Append-only, one probe object for good (it cannot be removed): a
        // second create of it must be refused, whoever made the first.
        let key = if self.append_only {
            ObjectKey::Probe(APPEND_ONLY_PROBE.into())
        } else {
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce)
                .map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
            ObjectKey::Probe(hex::encode(nonce))
        };
        let first = self.put_new(&key, Bytes::from_static(b"first")).await;
        let unsupported = |detail: String| Error::Unsupported {
            what: format!(
                "{}: the object store does not support create-only writes ({detail}); Cairn needs \
                 them so that concurrent writers never overwrite each other. Use a store with \
                 conditional PUT (If-None-Match: *), such as AWS S3, SeaweedFS, MinIO or Ceph RGW",
                self.url
            ),
        };
        match first {
            Ok(Created::New) => {}
            Ok(Created::Existed) if self.append_only => {}
            Ok(Created::Existed) => {
                return Err(unsupported("a fresh key reported as existing".into()));
            }
            Err(Error::Unsupported { what }) => return Err(unsupported(what)),
            Err(e) => return Err(e),
        }
        let second = self.put_new(&key, Bytes::from_static(b"second")).await;
        let outcome = match second {
            Ok(Created::Existed) => Ok(()),
            Ok(Created::New) => Err(unsupported(
                "a second create of the same key succeeded".into(),
            )),
            Err(e) => Err(e),
        };
        if !self.append_only
            && let Err(e) = self.delete(&key).await
        {
            tracing::debug!("could not remove probe object {key}: {e}");
        }
        outcome
    }

    fn classify_listing(&self, e: object_store::Error, dir: ObjectDir) -> Error {
        self.classify_object(e, &format!("{}/", dir.prefix()), "listing")
    }

    /// Turns a storage error into an [`Error`] naming `key`.
    fn classify(&self, e: object_store::Error, key: &ObjectKey, doing: &str) -> Error {
        self.classify_object(e, &key.to_string(), doing)
    }

    /// Turns a storage error into an [`Error`] naming `object`.
    fn classify_object(&self, e: object_store::Error, object: &str, doing: &str) -> Error {
        let object = object.to_string();
        let doing = format!("{doing} {object}");
        match e {
            object_store::Error::NotFound { .. } => Error::Missing {
                object,
                context: String::new(),
            },
            object_store::Error::AlreadyExists { .. } => Error::AlreadyExists {
                what: format!("{object} already exists"),
                hint: "objects are never overwritten".into(),
            },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => Error::AccessDenied {
                url: self.url.to_string(),
                detail: format!("{doing}: {source}"),
            },
            object_store::Error::NotSupported { source } => Error::Unsupported {
                what: format!("{}: {doing}: {source}", self.url),
            },
            object_store::Error::NotImplemented { operation, .. } => Error::Unsupported {
                what: format!("{}: {operation} is not implemented by this store", self.url),
            },
            // Its own cause says what happened, without the store's
            // "Generic … error" wrapper.
            object_store::Error::Generic { source, .. } => {
                classify_cause(&self.url, &object, &doing, source.as_ref())
            }
            other => classify_cause(&self.url, &object, &doing, &other),
        }
    }
}

/// An object of `len` bytes that should hold `range`: truncated.
fn shorter_than_range(key: &ObjectKey, len: u64, range: &Range<u64>) -> Error {
    Error::corrupt(
        key.to_string(),
        format!(
            "is {len} bytes, but bytes {}..{} were expected (truncated)",
            range.start, range.end
        ),
    )
}

/// A local object open for reads on CPU threads: a regular file, and its
/// length when opened. Closed on the runtime's blocking pool, as it was
/// opened: a close may wait too (FUSE sends the server a flush).
#[derive(Debug)]
pub struct OpenObject {
    key: ObjectKey,
    /// `None` only once dropped.
    file: Option<std::fs::File>,
    len: u64,
    /// Where it is closed; `None`: where it is dropped (tests).
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for OpenObject {
    fn drop(&mut self) {
        if let (Some(file), Some(runtime)) = (self.file.take(), self.runtime.as_ref()) {
            // A runtime shutting down drops the task, closing it here.
            drop(runtime.spawn_blocking(move || drop(file)));
        }
    }
}

impl OpenObject {
    /// The regular file at `path`, which holds `key` (see
    /// [`Backend::open_here`]), to be closed on `runtime`.
    fn open(
        path: &FsPath,
        key: ObjectKey,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Result<Option<Arc<OpenObject>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let missing = |context: &str| Error::Missing {
            object: key.to_string(),
            context: context.to_string(),
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing("")),
            Err(_) => return Ok(None),
        };
        let Ok(meta) = file.metadata() else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Err(missing(" (not a regular file)"));
        }
        Ok(Some(Arc::new(OpenObject {
            key,
            file: Some(file),
            len: meta.len(),
            runtime,
        })))
    }

    /// Bytes `range`, if the page cache holds them (their first and last
    /// bytes, asked without waiting on the disk: `RWF_NOWAIT`), read on
    /// this thread with [`Backend::get_range`]'s answers: exactly them, or
    /// `Corrupt` (shorter than the range). `None` for bytes that would come
    /// from the disk and for any other failure: [`Backend::get_range`] then
    /// reads them on the runtime, many at once, and reports as it always
    /// has. Between the probe and the read the middle of the range may have
    /// left the page cache: that read waits on the disk, as the runtime's
    /// would have.
    pub fn read_cached(&self, range: Range<u64>) -> Result<Option<Bytes>> {
        let key = &self.key;
        let Some(file) = self.file.as_ref() else {
            return Ok(None);
        };
        if self.len < range.end {
            return Err(shorter_than_range(key, self.len, &range));
        }
        for at in [range.start, range.end.saturating_sub(1).max(range.start)] {
            let mut probe = [0u8; 1];
            let mut slice = [std::io::IoSliceMut::new(&mut probe)];
            match rustix::io::preadv2(file, &mut slice, at, rustix::io::ReadWriteFlags::NOWAIT) {
                Ok(_) => {}
                // Not cached, or no RWF_NOWAIT here: read the usual way.
                Err(_) => return Ok(None),
            }
        }
        let want = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        // Read into spare capacity: nothing is zeroed first.
        let mut bytes: Vec<u8> = Vec::with_capacity(want);
        while bytes.len() < want {
            let at = range.start + bytes.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut bytes), at) {
                Ok(0) => {
                    return Err(Error::corrupt(
                        key.to_string(),
                        format!(
                            "bytes {}..{} requested, {} read (truncated meanwhile?)",
                            range.start,
                            range.end,
                            bytes.len()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(Bytes::from(bytes)))
    }
}

/// Classifies an error by its causes: no space, refused, or unavailable.
fn classify_cause(
    url: &str,
    object: &str,
    doing: &str,
    e: &(dyn std::error::Error + 'static),
) -> Error {
    let text = error_chain(e);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if is_storage_full(io) {
                return Error::StorageFull {
                    object: object.to_string(),
                    detail: text,
                };
            }
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return Error::AccessDenied {
                    url: url.to_string(),
                    detail: format!("{doing}: {text}"),
                };
            }
        }
        cause = c.source();
    }
    // No credentials: the AWS client asked the instance metadata service.
    if text.contains("169.254.169.254") || text.contains("Error getting credentials") {
        return Error::AccessDenied {
            url: url.to_string(),
            detail: format!("no S3 credentials found ({doing}): {text}"),
        };
    }
    // A refusal inside a 200 answer: DeleteObjects reports each key's
    // error by code (S3's bulk delete, which object_store uses).
    if text.contains("(code: AccessDenied)") {
        return Error::AccessDenied {
            url: url.to_string(),
            detail: format!("{doing}: {text}"),
        };
    }
    // S3-compatible stores report a full disk or quota by error code.
    if [
        "QuotaExceeded",
        "InsufficientStorage",
        "507 Insufficient Storage",
        "No space left",
    ]
    .iter()
    .any(|code| text.contains(code))
    {
        return Error::StorageFull {
            object: object.to_string(),
            detail: text,
        };
    }
    Error::Unreachable {
        url: url.to_string(),
        doing: doing.to_string(),
        detail: text,
    }
}

/// An error and its causes on one line, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

fn to_timestamp(meta: &object_store::ObjectMeta) -> Timestamp {
    let t = meta.last_modified;
    Timestamp::new(
        t.timestamp(),
        i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_range_read_is_exact_or_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let key = ObjectKey::Pack(PackId::of(b"pack"));
        let path = dir.path().join("pack");
        std::fs::write(&path, b"0123456789").unwrap();
        // Just written, so in the page cache: read here, where the file
        // system can say so without waiting (else left to `get_range`).
        let open = || OpenObject::open(&path, key.clone(), None).map(Option::unwrap);
        let file = open().unwrap();
        for (range, want) in [(2..6, &b"2345"[..]), (0..10, &b"0123456789"[..])] {
            if let Some(bytes) = file.read_cached(range).unwrap() {
                assert_eq!(&bytes[..], want);
            }
        }
        let short = file.read_cached(5..11).unwrap_err();
        assert_eq!(short.kind(), crate::error::ErrorKind::Corrupt);
        assert!(short.to_string().contains("truncated"), "{short}");
        // Cut short after it was opened: named, not a short answer.
        std::fs::write(&path, b"0123").unwrap();
        match file.read_cached(2..8) {
            Ok(Some(bytes)) => panic!("{} bytes of a cut file read as whole", bytes.len()),
            Ok(None) => {}
            Err(cut) => assert!(cut.to_string().contains("truncated"), "{cut}"),
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(open(), Err(Error::Missing { .. })));
        // A FIFO in an object's place is refused, not waited on.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let fifo = open().unwrap_err();
        assert!(matches!(fifo, Error::Missing { .. }), "{fifo}");
        assert!(fifo.to_string().contains("not a regular file"), "{fifo}");
    }

    #[test]
    fn keys_have_stable_paths_and_parse_back() {
        let id = PackId::of(b"p");
        let key = ObjectKey::Pack(id);
        let path = key.path();
        assert_eq!(path.as_ref(), format!("packs/{}/{}", &id.to_hex()[..2], id));
        assert_eq!(ObjectKey::parse(ObjectDir::Packs, &path), Some(key));
        assert_eq!(
            ObjectKey::parse(ObjectDir::Packs, &Path::from("packs/zz/nothex")),
            None
        );
        let wrong_fan = Path::from(format!("packs/00/{id}"));
        if !id.to_hex().starts_with("00") {
            assert_eq!(ObjectKey::parse(ObjectDir::Packs, &wrong_fan), None);
        }
        let s = ObjectKey::Snapshot(SnapshotId::of(b"s"));
        assert_eq!(ObjectKey::parse(ObjectDir::Snapshots, &s.path()), Some(s));
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("file:///srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert!(Location::parse("s3://").is_err());
        assert_eq!(
            Location::parse("gopher://x").unwrap_err().kind(),
            crate::error::ErrorKind::Unsupported
        );
    }

    #[tokio::test]
    async fn memory_store_honours_create_only() {
        let b = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
        b.probe_conditional_create().await.unwrap();
        let key = ObjectKey::Index(IndexId::of(b"x"));
        assert_eq!(
            b.put_new(&key, Bytes::from_static(b"x")).await.unwrap(),
            Created::New
        );
        assert_eq!(
            b.put_new(&key, Bytes::from_static(b"x")).await.unwrap(),
            Created::Existed
        );
        // A damaged object under a content-addressed name is not reused.
        let damaged = ObjectKey::Index(IndexId::of(b"z"));
        b.store()
            .put(&damaged.path(), Bytes::from_static(b"rotten").into())
            .await
            .unwrap();
        let err = b
            .put_new(&damaged, Bytes::from_static(b"z"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);
        assert!(err.to_string().contains("does not match its name"));
        assert_eq!(b.list(ObjectDir::Index).await.unwrap().len(), 2);
        let missing = b
            .get(&ObjectKey::Index(IndexId::of(b"y")))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), crate::error::ErrorKind::Corrupt);
    }
}
