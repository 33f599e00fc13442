//! Reads blobs by id: index lookup, coalesced range reads, decompression on
//! rayon, and a hash check of every blob against its id before it is handed
//! out. A copy whose pack is missing, whose frame is short or does not
//! decode, or whose bytes do not hash to its id is remembered as bad and the
//! next indexed copy is tried (a pack added by someone with write access
//! cannot hide the genuine copy). A blob that is not indexed, or whose every
//! copy failed, is an error naming the blob and each copy tried.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;

use crate::backend::{Backend, ObjectKey, OpenObject};
use crate::error::{Error, ErrorKind, Result};
use crate::format::frame::decode_frame;
use crate::format::index::{BlobLocation, FrameLocation, Index};
use crate::id::{BlobId, PackId};
use crate::repo::IndexedRepository;

mod scatter;
pub use scatter::{Placement, Sink, Tiles};

/// Frames closer than this in one pack are fetched in one range read from
/// a store across a network, where a request costs more than the bytes
/// between. A local store's reads take only frames that follow each other:
/// restoring day 14 of the dump workload read 436 MB with the gap and
/// 387 MB without, of 397 MB of packs.
const COALESCE_GAP: u64 = 256 * 1024;
/// Work on fewer bytes than this is done on the calling thread.
const INLINE_LEN: usize = 64 * 1024;
/// No single range read is longer than this. Below jemalloc's "oversize"
/// threshold (8 MiB), whose allocations are returned to the system when
/// freed: restoring day 14 of the dump workload with 16 MiB reads spent
/// 5 % more wall time, the pages faulted in afresh for every read.
const MAX_RANGE_LEN: u64 = 4 << 20;

type FrameKey = (u32, u32);

/// A decoded frame and which of its blobs were already hash-checked.
#[derive(Debug)]
struct CachedFrame {
    raw: Bytes,
    verified: Mutex<crate::id::IdSet<BlobId>>,
}

/// Reads and checks blobs, caching recently decoded frames.
#[derive(Debug)]
pub struct BlobReader {
    repo: IndexedRepository,
    concurrency: usize,
    cache: Mutex<FrameCache>,
    /// Copies that failed a check, so that later reads prefer others.
    bad: Mutex<BadCopies>,
    /// Frames being fetched by some call, so that a concurrent call waits
    /// for them instead of decoding them a second time.
    in_flight: Mutex<std::collections::HashMap<FrameKey, FrameWaiter>>,
    /// The packs of a local repository open for reads on CPU threads.
    open: Arc<OpenPacks>,
}

/// Receives a frame another call is fetching; `None` until it is there.
type FrameWaiter = tokio::sync::watch::Receiver<Option<FrameResult>>;

#[derive(Debug)]
struct FrameCache {
    /// Decoded bytes kept at most.
    capacity: usize,
    held: usize,
    frames: IdMapByFrame,
    order: VecDeque<FrameKey>,
}

type IdMapByFrame = std::collections::HashMap<FrameKey, Arc<CachedFrame>>;

impl FrameCache {
    fn get(&self, key: &FrameKey) -> Option<Arc<CachedFrame>> {
        self.frames.get(key).cloned()
    }

    fn insert(&mut self, key: FrameKey, frame: Arc<CachedFrame>) {
        let len = frame.raw.len();
        if self.frames.insert(key, frame).is_none() {
            self.order.push_back(key);
            self.held += len;
        }
        while self.held > self.capacity && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front()
                && let Some(f) = self.frames.remove(&old)
            {
                self.held -= f.raw.len();
            }
        }
    }
}

/// One range read: consecutive frames of one pack.
#[derive(Debug)]
struct RangeRead {
    pack: u32,
    start: u64,
    end: u64,
    frames: Vec<u32>,
}

impl BlobReader {
    /// A reader keeping up to `cache_bytes` of decoded frames.
    pub fn new(repo: IndexedRepository, concurrency: usize, cache_bytes: usize) -> BlobReader {
        BlobReader {
            repo,
            concurrency: concurrency.max(1),
            cache: Mutex::new(FrameCache {
                capacity: cache_bytes,
                held: 0,
                frames: IdMapByFrame::new(),
                order: VecDeque::new(),
            }),
            bad: Mutex::new(BadCopies::default()),
            in_flight: Mutex::new(std::collections::HashMap::new()),
            open: Arc::default(),
        }
    }

    /// The repository read from.
    pub fn repo(&self) -> &IndexedRepository {
        &self.repo
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, FrameCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one blob.
    pub async fn read_blob(&self, id: BlobId) -> Result<Bytes> {
        let mut v = self.read_blobs(&[id]).await?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Reads blobs, in the order given, each checked against its id. A copy
    /// that fails a check (pack missing, range short, frame that does not
    /// decode, bytes that do not hash to the id) is remembered as bad and
    /// the next copy is tried; only when every copy failed is it an error,
    /// naming each copy tried. Other errors (storage unreachable) stop at once.
    pub async fn read_blobs(&self, ids: &[BlobId]) -> Result<Vec<Bytes>> {
        let index: &Index = self.repo.index();
        let mut current: Vec<BlobLocation> = {
            let bad = self.bad();
            ids.iter()
                .map(|id| {
                    next_copy(index, &bad, id, &[]).ok_or_else(|| Error::Missing {
                        object: format!("chunk {id}"),
                        context: " (no index names it)".into(),
                    })
                })
                .collect::<Result<_>>()?
        };
        let mut out: Vec<Bytes> = vec![Bytes::new(); ids.len()];
        let mut failed: Vec<Vec<FailedCopy>> = (0..ids.len()).map(|_| Vec::new()).collect();
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        while !pending.is_empty() {
            let results = self.read_copies(ids, &current, &pending).await?;
            let mut again = Vec::new();
            {
                let mut bad = self.bad();
                for (i, result) in pending.iter().copied().zip(results) {
                    match result {
                        Ok(bytes) => out[i] = bytes,
                        Err(failure) => {
                            bad.remember(ids[i], &failure);
                            failed[i].push(failure);
                            match next_copy(index, &bad, &ids[i], &failed[i]) {
                                Some(loc) => {
                                    current[i] = loc;
                                    again.push(i);
                                }
                                None => return Err(all_copies_failed(ids[i], &failed[i])),
                            }
                        }
                    }
                }
            }
            pending = again;
        }
        Ok(out)
    }

    fn bad(&self) -> std::sync::MutexGuard<'_, BadCopies> {
        self.bad.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the blobs `pending` (positions in `ids`) from the copies
    /// `current` gives: each one's bytes, checked, or why that copy failed.
    async fn read_copies(
        &self,
        ids: &[BlobId],
        current: &[BlobLocation],
        pending: &[usize],
    ) -> Result<Vec<std::result::Result<Bytes, FailedCopy>>> {
        // Frames this round needs: from the cache, or fetched now.
        let mut frames: std::collections::HashMap<FrameKey, FrameResult> =
            std::collections::HashMap::new();
        let mut missing: Vec<FrameKey> = Vec::new();
        {
            let cache = self.cache();
            for &i in pending {
                let key = (current[i].pack, current[i].frame);
                if frames.contains_key(&key) || missing.contains(&key) {
                    continue;
                }
                match cache.get(&key) {
                    Some(f) => {
                        frames.insert(key, Ok(f));
                    }
                    None => missing.push(key),
                }
            }
        }
        if !missing.is_empty() {
            for (key, frame) in self.fetch_or_wait(missing).await? {
                frames.insert(key, frame);
            }
        }

        // Slice out each blob; hash-check the ones not yet checked in their frame.
        let mut out: Vec<std::result::Result<Bytes, FailedCopy>> =
            Vec::with_capacity(pending.len());
        let mut to_check: Vec<(usize, FrameKey)> = Vec::new();
        for (n, &i) in pending.iter().enumerate() {
            let (id, loc) = (ids[i], current[i]);
            let key = (loc.pack, loc.frame);
            let frame = match &frames[&key] {
                Ok(frame) => frame,
                Err(why) => {
                    out.push(Err(FailedCopy { loc, ..why.clone() }));
                    continue;
                }
            };
            let (start, end) = (loc.offset as usize, loc.offset as usize + loc.len as usize);
            if end > frame.raw.len() {
                out.push(Err(self.bad_blob(
                    id,
                    loc,
                    "lies beyond the end of its frame",
                )));
                continue;
            }
            out.push(Ok(frame.raw.slice(start..end)));
            if !frame
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
            {
                to_check.push((n, key));
            }
        }
        // A blob asked for twice in one call (in one frame) is hashed once.
        let mut seen = std::collections::HashSet::new();
        to_check.retain(|(n, key)| seen.insert((ids[pending[*n]], *key)));
        if !to_check.is_empty() {
            let work: Vec<(BlobId, Bytes)> = to_check
                .iter()
                .filter_map(|(n, _)| out[*n].as_ref().ok().map(|b| (ids[pending[*n]], b.clone())))
                .collect();
            let small: usize = work.iter().map(|(_, b)| b.len()).sum();
            let check = move || -> Vec<bool> {
                work.par_iter()
                    .map(|(id, bytes)| BlobId::of(bytes) == *id)
                    .collect()
            };
            // A few small blobs (tree nodes) are hashed right here: handing
            // them to rayon and back would cost more than the hashing.
            let hashes_match = if small <= INLINE_LEN {
                check()
            } else {
                crate::cpu::run(check).await
            };
            let mut matched: std::collections::HashMap<(BlobId, FrameKey), bool> =
                std::collections::HashMap::new();
            for ((n, key), ok) in to_check.into_iter().zip(hashes_match) {
                let id = ids[pending[n]];
                matched.insert((id, key), ok);
                if ok && let Ok(frame) = &frames[&key] {
                    frame
                        .verified
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id);
                }
            }
            for (n, &i) in pending.iter().enumerate() {
                let key = (current[i].pack, current[i].frame);
                if out[n].is_ok() && matched.get(&(ids[i], key)) == Some(&false) {
                    out[n] =
                        Err(self.bad_blob(ids[i], current[i], "its bytes do not hash to its id"));
                }
            }
        }
        Ok(out)
    }

    fn bad_blob(&self, id: BlobId, loc: BlobLocation, detail: &str) -> FailedCopy {
        FailedCopy::blob(self.repo.index().pack(loc.pack).id, id, loc, detail)
    }

    /// The frames `keys`, none of them cached: the ones no other call is
    /// fetching are fetched (and cached) here, the others awaited. If the
    /// call fetching a frame gave up (its error is its own caller's), the
    /// frame is fetched here after all.
    async fn fetch_or_wait(&self, keys: Vec<FrameKey>) -> Result<Vec<(FrameKey, FrameResult)>> {
        let mut mine = Vec::new();
        let mut senders = Vec::new();
        let mut waiting = Vec::new();
        {
            let mut in_flight = self.in_flight();
            for key in keys {
                match in_flight.get(&key) {
                    Some(rx) => waiting.push((key, rx.clone())),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        in_flight.insert(key, rx);
                        mine.push(key);
                        senders.push(tx);
                    }
                }
            }
        }
        // Whatever happens to this call, the frames it took on are no
        // longer in flight once it is done.
        let done = InFlightGuard {
            reader: self,
            keys: mine.clone(),
        };
        let fetch_mine = async {
            let fetched = self.fetch_frames(mine).await?;
            let mut cache = self.cache();
            for (key, frame) in &fetched {
                if let Ok(f) = frame {
                    cache.insert(*key, Arc::clone(f));
                }
            }
            drop(cache);
            let by_key: std::collections::HashMap<FrameKey, &FrameResult> =
                fetched.iter().map(|(k, f)| (*k, f)).collect();
            for (tx, key) in senders.iter().zip(&done.keys) {
                if let Some(f) = by_key.get(key) {
                    tx.send_replace(Some((*f).clone()));
                }
            }
            Ok::<_, Error>(fetched)
        };
        let wait_theirs = async {
            let mut got = Vec::with_capacity(waiting.len());
            let mut again = Vec::new();
            for (key, mut rx) in waiting {
                let frame = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|f| f.clone());
                match frame {
                    Some(frame) => got.push((key, frame)),
                    None => again.push(key),
                }
            }
            Ok::<_, Error>((got, again))
        };
        let (fetched, (mut got, again)) = futures::try_join!(fetch_mine, wait_theirs)?;
        got.extend(fetched);
        if !again.is_empty() {
            got.extend(self.fetch_frames(again).await?);
        }
        Ok(got)
    }

    fn in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<FrameKey, FrameWaiter>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches and decodes frames, coalescing neighbours into range reads.
    /// A frame that cannot be read or decoded is a failed copy; only an
    /// error that is not about the data (storage unreachable) is returned.
    async fn fetch_frames(&self, mut keys: Vec<FrameKey>) -> Result<Vec<(FrameKey, FrameResult)>> {
        let index = self.repo.index();
        keys.sort_unstable();
        let backend = self.repo.backend().clone();
        let reads = range_reads(index, &keys, coalesce_gap(&backend));
        let decoded: Vec<Vec<(FrameKey, FrameResult)>> = futures::stream::iter(reads)
            .map(|read| {
                let backend = backend.clone();
                let pack_id = index.pack(read.pack).id;
                let index = Arc::clone(index);
                let range = read.start..read.end;
                read_then(
                    backend,
                    Arc::clone(&self.open),
                    ObjectKey::Pack(pack_id),
                    range,
                    move |bytes| match bytes {
                        Ok(bytes) => Ok(decode_range(&index, &read, &bytes)),
                        Err(e) if e.kind() == ErrorKind::Corrupt => {
                            let failure = FailedCopy::of_read(e);
                            Ok(read
                                .frames
                                .iter()
                                .map(|&frame| {
                                    let mut f = failure.clone();
                                    (f.loc.pack, f.loc.frame) = (read.pack, frame);
                                    ((read.pack, frame), Err(f))
                                })
                                .collect())
                        }
                        Err(e) => Err(e),
                    },
                )
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        Ok(decoded.into_iter().flatten().collect())
    }
}

/// Reads `range` of `key` and hands the result to `then` on a CPU thread:
/// from a local store whose page cache holds it, the read is done there
/// too, so the bytes are used while still in that CPU's cache, without a
/// hop to a blocking thread and back (day 14 of the dump workload: 1.34 s
/// instead of 1.47 s, medians of 9); otherwise it is read on the runtime.
async fn read_then<T, F>(
    backend: Backend,
    open: Arc<OpenPacks>,
    key: ObjectKey,
    range: std::ops::Range<u64>,
    then: F,
) -> T
where
    T: Send + 'static,
    F: FnOnce(Result<Bytes>) -> T + Send + 'static,
{
    let then = match open.get_or_open(&backend, &key).await {
        Ok(None) => then,
        Err(e) => return crate::cpu::run(move || then(Err(e))).await,
        Ok(Some(file)) => {
            let (r, k) = (range.clone(), key.clone());
            let here = crate::cpu::run(move || match file.read_cached(r) {
                Ok(Some(bytes)) => Ok(then(Ok(bytes))),
                Ok(None) => Err(then),
                // Found short: opened afresh next time, not judged by the
                // length it had when opened.
                Err(e) => {
                    open.remove(&k);
                    Ok(then(Err(e)))
                }
            });
            match here.await {
                Ok(done) => return done,
                Err(then) => then,
            }
        }
    };
    let bytes = backend.get_range(&key, range).await;
    crate::cpu::run(move || then(bytes)).await
}

/// The packs of a local repository a reader has open, each opened once
/// (on the blocking pool, by the first read that needs it; reads that
/// arrive meanwhile wait for that open), at most [`MAX_OPEN_PACKS`] (the
/// least recently used closed first); closed with the reader, on the blocking
/// pool too (see [`OpenObject`]).
#[derive(Debug, Default)]
struct OpenPacks(Mutex<OpenFiles>);

/// A pack's file once opened.
type OpenSlot = Arc<tokio::sync::OnceCell<Arc<OpenObject>>>;

/// Open (or opening) files by key, and the keys from the least recently
/// used.
type OpenFiles = (
    std::collections::HashMap<ObjectKey, OpenSlot>,
    VecDeque<ObjectKey>,
);

/// Packs a reader keeps open.
const MAX_OPEN_PACKS: usize = 64;

impl OpenPacks {
    /// `key`'s open file, opened now if need be; `None` where reads are
    /// not done here (another store, or a file that could not be opened as
    /// expected: [`Backend::get_range`] reads and reports it), `Missing`
    /// for no file or not a regular file (not kept: asked again next time).
    async fn get_or_open(
        &self,
        backend: &Backend,
        key: &ObjectKey,
    ) -> Result<Option<Arc<OpenObject>>> {
        if !backend.reads_here() {
            return Ok(None);
        }
        let slot = self.slot(key);
        let opened = slot
            .get_or_try_init(|| async {
                match backend.open_here(key).await {
                    Ok(Some(file)) => Ok(file),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match opened {
            Ok(file) => Ok(Some(Arc::clone(file))),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `key`'s slot, made if new (the least recently used dropped beyond
    /// [`MAX_OPEN_PACKS`]: a restore reads its packs in the order of the
    /// file, not of the packs).
    fn slot(&self, key: &ObjectKey) -> OpenSlot {
        let mut held = self.held();
        let (slots, order) = &mut *held;
        if let Some(slot) = slots.get(key) {
            if let Some(at) = order.iter().rposition(|k| k == key) {
                order.remove(at);
                order.push_back(key.clone());
            }
            return Arc::clone(slot);
        }
        let slot = OpenSlot::default();
        slots.insert(key.clone(), Arc::clone(&slot));
        order.push_back(key.clone());
        while order.len() > MAX_OPEN_PACKS {
            if let Some(oldest) = order.pop_front() {
                slots.remove(&oldest);
            }
        }
        slot
    }

    fn remove(&self, key: &ObjectKey) {
        let mut held = self.held();
        let (slots, order) = &mut *held;
        if slots.remove(key).is_some() {
            order.retain(|k| k != key);
        }
    }
}

/// The gap between frames that one range read of `backend` spans.
fn coalesce_gap(backend: &Backend) -> u64 {
    if backend.reads_here() {
        0
    } else {
        COALESCE_GAP
    }
}

/// The range reads that fetch the frames `keys` (sorted): neighbours in a
/// pack at most `gap` bytes apart share a read of at most
/// [`MAX_RANGE_LEN`].
fn range_reads(index: &Index, keys: &[FrameKey], gap: u64) -> Vec<RangeRead> {
    let mut reads: Vec<RangeRead> = Vec::new();
    for &(pack, frame) in keys {
        let f = index.pack(pack).frames[frame as usize];
        let (start, end) = (
            u64::from(f.offset),
            u64::from(f.offset) + u64::from(f.stored_len),
        );
        match reads.last_mut() {
            Some(r)
                if r.pack == pack
                    && start >= r.end
                    && start - r.end <= gap
                    && end - r.start <= MAX_RANGE_LEN =>
            {
                r.end = end;
                r.frames.push(frame);
            }
            _ => reads.push(RangeRead {
                pack,
                start,
                end,
                frames: vec![frame],
            }),
        }
    }
    reads
}

/// A decoded frame, or why it could not be had.
type FrameResult = std::result::Result<Arc<CachedFrame>, FailedCopy>;

/// Takes the frames a call fetches off the in-flight list when it ends.
struct InFlightGuard<'a> {
    reader: &'a BlobReader,
    keys: Vec<FrameKey>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.reader.in_flight();
        for key in &self.keys {
            in_flight.remove(key);
        }
    }
}

/// What failed in a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Its pack is missing.
    Pack,
    /// Its frame could not be read whole or does not decode.
    Frame,
    /// The blob lies outside its frame or does not hash to its id.
    Blob,
}

/// One copy of a blob that failed its checks.
#[derive(Debug, Clone)]
struct FailedCopy {
    loc: BlobLocation,
    what: Failure,
    /// The object that failed, as messages name it.
    object: String,
    /// Why.
    detail: String,
}

impl FailedCopy {
    /// A frame of pack `pack` (at `loc`) that could not be read or decoded.
    fn frame(pack: PackId, loc: BlobLocation, detail: String) -> FailedCopy {
        FailedCopy {
            loc,
            what: Failure::Frame,
            object: format!("pack {pack} frame {}", loc.frame),
            detail,
        }
    }

    /// A blob of pack `pack` (at `loc`) that failed its checks.
    fn blob(pack: PackId, id: BlobId, loc: BlobLocation, detail: &str) -> FailedCopy {
        FailedCopy {
            loc,
            what: Failure::Blob,
            object: format!("chunk {id} (pack {pack}, frame {})", loc.frame),
            detail: detail.into(),
        }
    }

    /// A failed range read (an error of kind [`ErrorKind::Corrupt`]).
    fn of_read(e: Error) -> FailedCopy {
        let loc = BlobLocation {
            pack: 0,
            frame: 0,
            offset: 0,
            len: 0,
        };
        match e {
            Error::Missing { object, .. } => FailedCopy {
                loc,
                what: Failure::Pack,
                object,
                detail: String::new(),
            },
            Error::Corrupt { object, detail } => FailedCopy {
                loc,
                what: Failure::Frame,
                object,
                detail,
            },
            other => FailedCopy {
                loc,
                what: Failure::Frame,
                object: "pack".into(),
                detail: other.to_string(),
            },
        }
    }

    fn describe(&self) -> String {
        match self.what {
            Failure::Pack => format!("{} is missing", self.object),
            _ => format!("{}: {}", self.object, self.detail),
        }
    }
}

/// Copies known to fail, so that later reads prefer others.
#[derive(Debug, Default)]
struct BadCopies {
    packs: std::collections::HashSet<u32>,
    frames: std::collections::HashSet<FrameKey>,
    blobs: std::collections::HashSet<(BlobId, u32)>,
}

impl BadCopies {
    fn remember(&mut self, id: BlobId, failure: &FailedCopy) {
        let loc = failure.loc;
        match failure.what {
            Failure::Pack => {
                self.packs.insert(loc.pack);
            }
            Failure::Frame => {
                self.frames.insert((loc.pack, loc.frame));
            }
            Failure::Blob => {
                self.blobs.insert((id, loc.pack));
            }
        }
    }

    fn is_bad(&self, id: BlobId, loc: &BlobLocation) -> bool {
        self.packs.contains(&loc.pack)
            || self.frames.contains(&(loc.pack, loc.frame))
            || self.blobs.contains(&(id, loc.pack))
    }
}

/// The copy of `id` to try next: one not tried yet, preferring one not
/// known to be bad.
fn next_copy(
    index: &Index,
    bad: &BadCopies,
    id: &BlobId,
    tried: &[FailedCopy],
) -> Option<BlobLocation> {
    let mut fallback = None;
    for loc in index.locations(id) {
        if tried.iter().any(|t| t.loc == loc) {
            continue;
        }
        if !bad.is_bad(*id, &loc) {
            return Some(loc);
        }
        fallback.get_or_insert(loc);
    }
    fallback
}

/// The error when every copy of `id` failed: with one copy, what it was;
/// with several, each of them.
fn all_copies_failed(id: BlobId, failed: &[FailedCopy]) -> Error {
    if let [only] = failed {
        return match only.what {
            Failure::Pack => Error::Missing {
                object: only.object.clone(),
                context: format!(" (it holds chunk {id})"),
            },
            _ => Error::corrupt(only.object.clone(), only.detail.clone()),
        };
    }
    let list: Vec<String> = failed.iter().map(FailedCopy::describe).collect();
    if failed.iter().all(|f| f.what == Failure::Pack) {
        Error::Missing {
            object: format!("chunk {id}"),
            context: format!(" (every pack holding it: {})", list.join("; ")),
        }
    } else {
        Error::corrupt(
            format!("chunk {id}"),
            format!(
                "all {} copies failed their checks: {}",
                failed.len(),
                list.join("; ")
            ),
        )
    }
}

/// Where frame `f` of range read `read` is in its `bytes`: the offset and
/// the stored bytes, or why the read is short of it.
fn stored_frame<'b>(
    f: &FrameLocation,
    read: &RangeRead,
    bytes: &'b [u8],
) -> std::result::Result<(usize, &'b [u8]), String> {
    let start = usize::try_from(u64::from(f.offset) - read.start).unwrap_or(usize::MAX);
    start
        .checked_add(f.stored_len as usize)
        .and_then(|end| bytes.get(start..end))
        .map(|stored| (start, stored))
        .ok_or_else(|| {
            format!(
                "range read returned {} bytes, short of the frame",
                bytes.len()
            )
        })
}

/// Decodes the frames of one range read; a frame that does not decode
/// fails alone.
fn decode_range(index: &Index, read: &RangeRead, bytes: &Bytes) -> Vec<(FrameKey, FrameResult)> {
    let pack = index.pack(read.pack);
    read.frames
        .par_iter()
        .map(|&frame| {
            let f = pack.frames[frame as usize];
            let loc = BlobLocation {
                pack: read.pack,
                frame,
                offset: 0,
                len: 0,
            };
            let decoded = stored_frame(&f, read, bytes)
                .and_then(|(_, stored)| decode_frame(f.codec, stored, f.raw_len))
                .map_err(|detail| FailedCopy::frame(pack.id, loc, detail));
            (
                (read.pack, frame),
                decoded.map(|raw| {
                    Arc::new(CachedFrame {
                        raw: Bytes::from(raw),
                        verified: Mutex::new(crate::id::IdSet::default()),
                    })
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendOptions;
    use crate::id::PackId;

    #[tokio::test]
    async fn a_pack_is_opened_once_kept_while_used_and_reopened_once_found_short() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let backend = Backend::connect(url, &BackendOptions::default(), true).unwrap();
        let keys: Vec<ObjectKey> = (0..=MAX_OPEN_PACKS)
            .map(|i| ObjectKey::Pack(PackId::of(&i.to_le_bytes())))
            .collect();
        for key in &keys {
            let path = dir.path().join(key.path().as_ref());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"0123456789").unwrap();
        }
        let open = OpenPacks::default();
        let file = |r: Result<Option<Arc<OpenObject>>>| r.unwrap().unwrap();

        // Two reads of a pack not yet open share one open.
        let (a, b) = tokio::join!(
            open.get_or_open(&backend, &keys[0]),
            open.get_or_open(&backend, &keys[0])
        );
        let (a, b) = (file(a), file(b));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(
            &a,
            &file(open.get_or_open(&backend, &keys[0]).await)
        ));
        // Dropped (found short): opened afresh.
        open.remove(&keys[0]);
        let again = file(open.get_or_open(&backend, &keys[0]).await);
        assert!(!Arc::ptr_eq(&a, &again));
        // At most MAX_OPEN_PACKS: the least recently used goes first.
        for key in &keys[1..MAX_OPEN_PACKS] {
            file(open.get_or_open(&backend, key).await);
        }
        file(open.get_or_open(&backend, &keys[0]).await);
        file(open.get_or_open(&backend, &keys[MAX_OPEN_PACKS]).await);
        assert_eq!(open.held().0.len(), MAX_OPEN_PACKS);
        assert!(open.held().0.contains_key(&keys[0]));
        assert!(!open.held().0.contains_key(&keys[1]));
        // No such pack: missing, and nothing kept open for it.
        let gone = ObjectKey::Pack(PackId::of(b"gone"));
        let missing = open.get_or_open(&backend, &gone).await.unwrap_err();
        assert!(matches!(missing, Error::Missing { .. }), "{missing}");
        assert!(open.held().0.get(&gone).is_none_or(|s| s.get().is_none()));
    }
}
