//! Reads blobs by id: index lookup, coalesced range reads, decompression on
//! rayon, and a hash check of every blob against its id before it is handed
//! out. A blob that is not indexed, whose pack is missing, or whose bytes do
//! not hash to its id is an error naming the blob and the pack.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;

use crate::backend::ObjectKey;
use crate::error::{Error, Result};
use crate::frame::decode_frame;
use crate::id::{BlobId, IdMap};
use crate::index::{BlobLocation, Index};
use crate::repo::IndexedRepository;

/// Frames closer than this in one pack are fetched in one range read.
const COALESCE_GAP: u64 = 256 * 1024;
/// Work on fewer bytes than this is done on the calling thread.
const INLINE_LEN: usize = 64 * 1024;
/// No single range read is longer than this.
const MAX_RANGE_LEN: u64 = 16 << 20;

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
}

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

    /// Reads blobs, in the order given, each checked against its id.
    pub async fn read_blobs(&self, ids: &[BlobId]) -> Result<Vec<Bytes>> {
        let index: &Index = self.repo.index();
        let locations: Vec<BlobLocation> = ids
            .iter()
            .map(|id| {
                index.get(id).ok_or_else(|| Error::Missing {
                    object: format!("chunk {id}"),
                    context: " (no index names it)".into(),
                })
            })
            .collect::<Result<_>>()?;

        // Frames this call needs: from the cache, or fetched now.
        let mut frames: std::collections::HashMap<FrameKey, Arc<CachedFrame>> =
            std::collections::HashMap::new();
        let mut missing: Vec<FrameKey> = Vec::new();
        {
            let cache = self.cache();
            for loc in &locations {
                let key = (loc.pack, loc.frame);
                if frames.contains_key(&key) || missing.contains(&key) {
                    continue;
                }
                match cache.get(&key) {
                    Some(f) => {
                        frames.insert(key, f);
                    }
                    None => missing.push(key),
                }
            }
        }
        if !missing.is_empty() {
            let fetched = self.fetch_frames(missing, ids, &locations).await?;
            let mut cache = self.cache();
            for (key, frame) in fetched {
                cache.insert(key, Arc::clone(&frame));
                frames.insert(key, frame);
            }
        }

        // Slice out each blob; hash-check the ones not yet checked in their frame.
        let mut out = Vec::with_capacity(ids.len());
        let mut to_check: Vec<(usize, FrameKey)> = Vec::new();
        for (i, (id, loc)) in ids.iter().zip(&locations).enumerate() {
            let key = (loc.pack, loc.frame);
            let frame = &frames[&key];
            let (start, end) = (loc.offset as usize, loc.offset as usize + loc.len as usize);
            if end > frame.raw.len() {
                return Err(self.corrupt_blob(*id, loc, "lies beyond the end of its frame"));
            }
            out.push(frame.raw.slice(start..end));
            if !frame
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
            {
                to_check.push((i, key));
            }
        }
        // A blob asked for twice in one call is checked once.
        let mut seen = crate::id::IdSet::default();
        to_check.retain(|(i, _)| seen.insert(ids[*i]));
        if !to_check.is_empty() {
            let work: Vec<(BlobId, Bytes)> = to_check
                .iter()
                .map(|(i, _)| (ids[*i], out[*i].clone()))
                .collect();
            let check = move || -> Vec<bool> {
                work.par_iter()
                    .map(|(id, bytes)| BlobId::of(bytes) == *id)
                    .collect()
            };
            // A few small blobs (tree nodes) are hashed right here: handing
            // them to rayon and back would cost more than the hashing.
            let small: usize = to_check.iter().map(|(i, _)| out[*i].len()).sum();
            let hashes_match = if small <= INLINE_LEN {
                check()
            } else {
                crate::cpu::run(check).await
            };
            for ((i, key), ok) in to_check.into_iter().zip(hashes_match) {
                if !ok {
                    return Err(self.corrupt_blob(
                        ids[i],
                        &locations[i],
                        "its bytes do not hash to its id",
                    ));
                }
                frames[&key]
                    .verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ids[i]);
            }
        }
        Ok(out)
    }

    fn corrupt_blob(&self, id: BlobId, loc: &BlobLocation, detail: &str) -> Error {
        let pack = self.repo.index().pack(loc.pack).id;
        Error::corrupt(
            format!("chunk {id} (pack {pack}, frame {})", loc.frame),
            detail,
        )
    }

    /// Fetches and decodes frames, coalescing neighbours into range reads.
    async fn fetch_frames(
        &self,
        mut keys: Vec<FrameKey>,
        ids: &[BlobId],
        locations: &[BlobLocation],
    ) -> Result<Vec<(FrameKey, Arc<CachedFrame>)>> {
        let index = self.repo.index();
        keys.sort_unstable();
        let mut reads: Vec<RangeRead> = Vec::new();
        for (pack, frame) in keys {
            let f = index.pack(pack).frames[frame as usize];
            let (start, end) = (
                u64::from(f.offset),
                u64::from(f.offset) + u64::from(f.stored_len),
            );
            match reads.last_mut() {
                Some(r)
                    if r.pack == pack
                        && start >= r.end
                        && start - r.end <= COALESCE_GAP
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
        // Which blob each pack was read for, to name it if the pack is gone.
        let mut wanted_by_pack: IdMap<crate::id::PackId, BlobId> = IdMap::default();
        for (id, loc) in ids.iter().zip(locations) {
            wanted_by_pack.entry(index.pack(loc.pack).id).or_insert(*id);
        }
        let backend = self.repo.backend().clone();
        let decoded: Vec<Vec<(FrameKey, Arc<CachedFrame>)>> = futures::stream::iter(reads)
            .map(|read| {
                let backend = backend.clone();
                let pack_id = index.pack(read.pack).id;
                let wanted = wanted_by_pack.get(&pack_id).copied();
                let index = Arc::clone(index);
                async move {
                    let key = ObjectKey::Pack(pack_id);
                    let bytes = backend
                        .get_range(&key, read.start..read.end)
                        .await
                        .map_err(|e| match (e, wanted) {
                            (Error::Missing { object, .. }, Some(id)) => Error::Missing {
                                object,
                                context: format!(" (it holds chunk {id})"),
                            },
                            (e, _) => e,
                        })?;
                    if bytes.len() <= INLINE_LEN {
                        decode_range(&index, &read, &bytes)
                    } else {
                        crate::cpu::run(move || decode_range(&index, &read, &bytes)).await
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        Ok(decoded.into_iter().flatten().collect())
    }
}

/// Decodes the frames of one range read.
fn decode_range(
    index: &Index,
    read: &RangeRead,
    bytes: &Bytes,
) -> Result<Vec<(FrameKey, Arc<CachedFrame>)>> {
    let pack = index.pack(read.pack);
    read.frames
        .par_iter()
        .map(|&frame| {
            let f = pack.frames[frame as usize];
            let start = usize::try_from(u64::from(f.offset) - read.start).unwrap_or(usize::MAX);
            let stored = &bytes[start..start + f.stored_len as usize];
            let raw = decode_frame(f.codec, stored, f.raw_len).map_err(|detail| {
                Error::corrupt(format!("pack {} frame {frame}", pack.id), detail)
            })?;
            Ok((
                (read.pack, frame),
                Arc::new(CachedFrame {
                    raw: Bytes::from(raw),
                    verified: Mutex::new(crate::id::IdSet::default()),
                }),
            ))
        })
        .collect()
}
