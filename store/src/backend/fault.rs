//! A fault-injecting, counting `ObjectStore` wrapper, for tests.
//!
//! It stacks under a [`Backend`](super::Backend) like any store and can make
//! writes fail as a full disk would (ENOSPC), make every request fail as an
//! unreachable server would, or fail requests whose path matches; it can
//! answer later whole-object GETs of a path with other bytes, as a hostile
//! server would; it counts requests and bytes so tests can assert how much
//! was sent.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Request and byte counts.
#[derive(Debug, Default)]
pub struct Counters {
    /// PUT requests that reached the inner store.
    pub puts: AtomicU64,
    /// Bytes those PUTs carried.
    pub put_bytes: AtomicU64,
    /// GET requests (whole or ranged).
    pub gets: AtomicU64,
    /// Bytes returned by GETs.
    pub get_bytes: AtomicU64,
    /// Deletes.
    pub deletes: AtomicU64,
    /// Overwrites and deletes refused by a create-only credential.
    pub refused: AtomicU64,
}

impl Counters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Writes.
    Put,
    /// Reads.
    Get,
    /// Deletes.
    Delete,
    /// Listings.
    List,
}

#[derive(Debug, Default)]
struct Faults {
    /// Writes fail with ENOSPC once this many bytes were written.
    space_left: Option<u64>,
    /// Every request fails as if the server were down.
    unreachable: bool,
    /// Requests of this op whose path contains this text fail (I/O error).
    fail: Vec<(Op, String)>,
    /// Whole-object GETs of a path containing this text, after the first
    /// `honest` of them, answer these bytes.
    swap: Vec<Swap>,
    /// As a create-only credential: a PUT without `If-None-Match: *`, a
    /// copy or rename, and a delete are refused (403), and counted.
    create_only: bool,
}

#[derive(Debug)]
struct Swap {
    text: String,
    honest: u64,
    seen: u64,
    bytes: Bytes,
}

/// The wrapper.
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
    /// What went through.
    pub counters: Arc<Counters>,
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

fn io_error(kind: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault",
        source: Box::new(kind),
    }
}

impl FaultStore {
    /// Wraps a store; no faults until asked.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner,
            faults: Mutex::new(Faults::default()),
            counters: Arc::default(),
        })
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, writes fail with "no space left" once `bytes` more were written.
    pub fn fill_disk_after(&self, bytes: u64) {
        self.faults().space_left = Some(bytes);
    }

    /// Makes every request fail as an unreachable server would (or stop doing so).
    pub fn set_unreachable(&self, down: bool) {
        self.faults().unreachable = down;
    }

    /// Makes requests of `op` whose path contains `text` fail.
    pub fn fail(&self, op: Op, text: &str) {
        self.faults().fail.push((op, text.to_string()));
    }

    /// Answers whole-object GETs of paths containing `text` with `bytes`
    /// once `honest` of them were answered truthfully (a server that shows
    /// a checker one object and a copier another).
    pub fn swap_after(&self, text: &str, honest: u64, bytes: Bytes) {
        self.faults().swap.push(Swap {
            text: text.to_string(),
            honest,
            seen: 0,
            bytes,
        });
    }

    /// The bytes a swap rule substitutes for this GET, if any.
    fn swapped(&self, path: &Path, options: &GetOptions) -> Option<Bytes> {
        if options.range.is_some() || options.head {
            return None;
        }
        let mut f = self.faults();
        let rule = f
            .swap
            .iter_mut()
            .find(|r| path.as_ref().contains(r.text.as_str()))?;
        rule.seen += 1;
        (rule.seen > rule.honest).then(|| rule.bytes.clone())
    }

    /// From now on, answers as a store whose credential may only create
    /// (deploy/s3/): overwrites and deletes are refused as access denied.
    pub fn create_only(&self) {
        self.faults().create_only = true;
    }

    fn refuse(&self, what: &str, path: &Path) -> object_store::Error {
        self.counters.refused.fetch_add(1, Ordering::SeqCst);
        object_store::Error::PermissionDenied {
            path: path.to_string(),
            source: format!("{what} refused: the credential may only create (injected)").into(),
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.faults() = Faults::default();
    }

    fn check(&self, op: Op, path: &Path, put_len: u64) -> object_store::Result<()> {
        let mut f = self.faults();
        if f.unreachable {
            return Err(io_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused (injected)",
            )));
        }
        if f.fail
            .iter()
            .any(|(o, t)| *o == op && path.as_ref().contains(t.as_str()))
        {
            return Err(io_error(std::io::Error::other(format!(
                "injected failure of {op:?} {path}"
            ))));
        }
        if op == Op::Put
            && let Some(left) = f.space_left.as_mut()
        {
            if put_len > *left {
                *left = 0;
                return Err(io_error(std::io::Error::from_raw_os_error(libc::ENOSPC)));
            }
            *left -= put_len;
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let len = payload.content_length() as u64;
        self.check(Op::Put, location, len)?;
        if self.faults().create_only && !matches!(opts.mode, object_store::PutMode::Create) {
            return Err(self.refuse("a PUT that may overwrite", location));
        }
        let result = self.inner.put_opts(location, payload, opts).await;
        if result.is_ok() {
            self.counters.puts.fetch_add(1, Ordering::SeqCst);
            self.counters.put_bytes.fetch_add(len, Ordering::SeqCst);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(Op::Put, location, 0)?;
        if self.faults().create_only {
            return Err(self.refuse("a multipart upload (may overwrite)", location));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(Op::Get, location, 0)?;
        let swapped = self.swapped(location, &options);
        let mut result = self.inner.get_opts(location, options).await?;
        if let Some(bytes) = swapped {
            let len = bytes.len() as u64;
            result.payload = object_store::GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            );
            result.meta.size = len;
            result.range = 0..len;
        }
        self.counters.gets.fetch_add(1, Ordering::SeqCst);
        self.counters
            .get_bytes
            .fetch_add(result.range.end - result.range.start, Ordering::SeqCst);
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check(Op::Get, location, 0)?;
        let result = self.inner.get_ranges(location, ranges).await?;
        self.counters
            .gets
            .fetch_add(ranges.len() as u64, Ordering::SeqCst);
        let bytes: u64 = result.iter().map(|b| b.len() as u64).sum();
        self.counters.get_bytes.fetch_add(bytes, Ordering::SeqCst);
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let down = self.faults().unreachable;
        let create_only = self.faults().create_only;
        let fail: Vec<String> = self
            .faults()
            .fail
            .iter()
            .filter(|(o, _)| *o == Op::Delete)
            .map(|(_, t)| t.clone())
            .collect();
        let counters = Arc::clone(&self.counters);
        let checked = locations
            .map(move |l| {
                let l = l?;
                if create_only {
                    counters.refused.fetch_add(1, Ordering::SeqCst);
                    return Err(object_store::Error::PermissionDenied {
                        path: l.to_string(),
                        source: "a delete refused: the credential may only create (injected)"
                            .into(),
                    });
                }
                if down || fail.iter().any(|t| l.as_ref().contains(t.as_str())) {
                    return Err(io_error(std::io::Error::other(format!(
                        "injected failure of delete {l}"
                    ))));
                }
                counters.deletes.fetch_add(1, Ordering::SeqCst);
                Ok(l)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let p = prefix.cloned().unwrap_or_default();
        if let Err(e) = self.check(Op::List, &p, 0) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check(Op::List, &prefix.cloned().unwrap_or_default(), 0)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(Op::Put, to, 0)?;
        if self.faults().create_only {
            return Err(self.refuse("a copy", to));
        }
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check(Op::Put, to, 0)?;
        if self.faults().create_only {
            return Err(self.refuse("a rename", to));
        }
        self.inner.rename_opts(from, to, options).await
    }
}
