//! Backup: source → chunks → dedup → frames → packs → index → signed manifest.
//!
//! ```text
//! reader thread          ingest thread (rayon inside)                 tokio
//! read 4 MiB segments ─▶ hash chunks ─▶ dedup ─▶ frames ─▶ compress ─▶ packs ─▶ upload (N in flight)
//!   FastCDC cut points    (parallel)    index +   data and   (parallel)  16 MiB
//!                                       pending   tree apart
//! ```
//! Queues between the stages are bounded, so memory stays flat whatever the
//! input size. Write order is the crash-safety invariant: every pack is
//! stored before the index object naming it, and the index before the signed
//! manifest. A failed or interrupted backup leaves at most unreferenced packs
//! (garbage for `gc`), never a snapshot pointing at missing data.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::{Backend, Created, ObjectKey};
use crate::chunker::{Chunker, ChunkerParams, ChunkingPolicy};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::frame::{Frame, FrameBuilder};
use crate::id::{BlobId, IdSet, IndexId, PackId, SnapshotId};
use crate::index::{Index, IndexedPack, encode_index};
use crate::key::SecretKey;
use crate::manifest::{Item, ItemKind, MANIFEST_VERSION, Manifest};
use crate::ops::source::{Entry, Source};
use crate::pack::{PackTrailer, PackWriter};
use crate::repo::IndexedRepository;
use crate::tree::TreeBuilder;

/// Bytes read from the source per segment.
const SEGMENT_LEN: usize = 4 << 20;
/// Segments read ahead of the ingest thread.
const SEGMENTS_AHEAD: usize = 2;

/// How to run a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The host recorded in the snapshot.
    pub host: String,
    /// Tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// The snapshot's time; now if `None`.
    pub time: Option<Timestamp>,
    /// Packs uploaded at once.
    pub upload_concurrency: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            host: crate::ops::hostname(),
            tags: Vec::new(),
            time: None,
            upload_concurrency: 2,
        }
    }
}

/// Reports progress; every method has a no-op default.
pub trait Progress: Send + Sync {
    /// An item is starting; `len` when known.
    fn item(&self, _name: &str, _len: Option<u64>) {}
    /// `n` more bytes were read from the source.
    fn read(&self, _n: u64) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// The new snapshot.
    pub snapshot: SnapshotId,
    /// Its time.
    pub time: Timestamp,
    /// Items in it.
    pub items: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks the content was cut into.
    pub chunks: u64,
    /// Blobs (chunks and tree nodes) not stored before.
    pub new_blobs: u64,
    /// Their uncompressed size.
    pub new_blob_bytes: u64,
    /// Of which tree nodes (chunk lists).
    pub new_tree_bytes: u64,
    /// Bytes written to the repository: packs, index and manifest.
    pub stored_bytes: u64,
    /// Packs written.
    pub packs: u64,
}

/// A finished pack on its way to the uploader.
struct FinishedPack {
    id: PackId,
    bytes: Bytes,
    trailer: PackTrailer,
}

#[derive(Debug, Default, Clone, Copy)]
struct IngestStats {
    bytes_read: u64,
    chunks: u64,
    new_blobs: u64,
    new_blob_bytes: u64,
    new_tree_bytes: u64,
}

impl IndexedRepository {
    /// Backs `source` up as one snapshot signed with `key`.
    pub async fn backup(
        &self,
        source: Source,
        key: &SecretKey,
        options: &BackupOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<BackupSummary> {
        let time = options.time.unwrap_or_else(Timestamp::now);
        if !self.config().trust().accepts(&key.public()) {
            return Err(Error::UntrustedKey {
                snapshot: "(new)".into(),
                key: key.public().to_string(),
            });
        }
        let source_info = source.info();
        let previous = self.previous_chunking().await?;

        let concurrency = options.upload_concurrency.max(1);
        let (pack_tx, pack_rx) = mpsc::channel::<FinishedPack>(1);
        let uploader = tokio::spawn(upload_packs(self.backend().clone(), pack_rx, concurrency));
        let config = self.config().clone();
        let index = Arc::clone(self.index());
        let ingest = tokio::task::spawn_blocking(move || {
            let entries = source.into_entries()?;
            let mut ingest = Ingest::new(&config, &index, previous, pack_tx)?;
            let items = entries
                .into_iter()
                .map(|entry| ingest.entry(entry, progress.as_ref()))
                .collect::<Result<Vec<Item>>>()?;
            let stats = ingest.finish()?;
            Ok::<_, Error>((items, stats))
        });
        let ingested = ingest
            .await
            .map_err(|e| Error::invalid(format!("ingest thread failed: {e}")))?;
        let uploaded = uploader
            .await
            .map_err(|e| Error::invalid(format!("upload task failed: {e}")))?;
        // An upload failure closes the channel and so also fails ingest:
        // report the cause, not the symptom.
        let (items, stats, mut packs) = match (ingested, uploaded) {
            (Ok((items, stats)), Ok(packs)) => (items, stats, packs),
            (_, Err(upload_error)) => return Err(upload_error),
            (Err(e), Ok(_)) => return Err(e),
        };

        let mut stored_bytes: u64 = packs.iter().map(|p| p.len).sum();
        let pack_count = packs.len() as u64;
        if !packs.is_empty() {
            packs.sort_by_key(|p| p.id);
            let bytes = encode_index(&packs);
            stored_bytes += bytes.len() as u64;
            let key = ObjectKey::Index(IndexId::of(&bytes));
            self.backend().put_new(&key, Bytes::from(bytes)).await?;
        }

        let manifest = Manifest {
            version: MANIFEST_VERSION,
            repository: self.config().id,
            time,
            host: options.host.clone(),
            tags: options.tags.clone(),
            source: source_info,
            items,
        };
        let (snapshot, bytes) = manifest.encode_signed(key)?;
        stored_bytes += bytes.len() as u64;
        self.backend()
            .put_new(&ObjectKey::Snapshot(snapshot), Bytes::from(bytes))
            .await?;
        Ok(BackupSummary {
            snapshot,
            time,
            items: manifest.items.len() as u64,
            bytes_read: stats.bytes_read,
            chunks: stats.chunks,
            new_blobs: stats.new_blobs,
            new_blob_bytes: stats.new_blob_bytes,
            new_tree_bytes: stats.new_tree_bytes,
            stored_bytes,
            packs: pack_count,
        })
    }
}

impl IndexedRepository {
    /// How each item name was chunked in the newest snapshot that has it.
    async fn previous_chunking(&self) -> Result<std::collections::HashMap<String, ChunkerParams>> {
        let list = self.repo().load_snapshots(&self.config().trust()).await?;
        let mut previous = std::collections::HashMap::new();
        for snapshot in list.snapshots.iter().rev() {
            for item in &snapshot.manifest.items {
                if let Some(params) = item.chunker {
                    previous.entry(item.name.clone()).or_insert(params);
                }
            }
        }
        Ok(previous)
    }
}

/// Uploads packs as they arrive, up to `concurrency` at once, and returns
/// what the index object must record of them.
async fn upload_packs(
    backend: Backend,
    rx: mpsc::Receiver<FinishedPack>,
    concurrency: usize,
) -> Result<Vec<IndexedPack>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) })
        .map(|pack| {
            let backend = backend.clone();
            async move {
                let len = pack.bytes.len() as u64;
                let created = backend
                    .put_new(&ObjectKey::Pack(pack.id), pack.bytes)
                    .await?;
                if created == Created::Existed {
                    tracing::debug!("pack {} was already stored", pack.id);
                }
                Ok(IndexedPack {
                    id: pack.id,
                    len,
                    trailer: pack.trailer,
                })
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// The ingest thread's state: dedup, frames being filled, the open pack.
struct Ingest<'a> {
    policy: ChunkingPolicy,
    /// Chunk parameters by item name from the newest snapshots.
    previous: std::collections::HashMap<String, ChunkerParams>,
    config: &'a Config,
    index: &'a Index,
    /// Blobs added by this backup (not yet in any index object).
    pending: IdSet<BlobId>,
    data_frame: FrameBuilder,
    tree_frame: FrameBuilder,
    full_frames: Vec<FrameBuilder>,
    pack: PackWriter,
    pack_tx: mpsc::Sender<FinishedPack>,
    stats: IngestStats,
}

/// A run of whole chunks read from the source.
struct Segment {
    data: Vec<u8>,
    lens: Vec<u32>,
}

impl<'a> Ingest<'a> {
    fn new(
        config: &'a Config,
        index: &'a Index,
        previous: std::collections::HashMap<String, ChunkerParams>,
        pack_tx: mpsc::Sender<FinishedPack>,
    ) -> Result<Self> {
        Ok(Ingest {
            policy: config.chunking,
            previous,
            config,
            index,
            pending: IdSet::default(),
            data_frame: FrameBuilder::default(),
            tree_frame: FrameBuilder::default(),
            full_frames: Vec::new(),
            pack: PackWriter::new(),
            pack_tx,
            stats: IngestStats::default(),
        })
    }

    /// Stores one entry and returns its manifest item.
    fn entry(&mut self, entry: Entry, progress: &dyn Progress) -> Result<Item> {
        let mut item = Item {
            name: entry.name,
            kind: entry.kind,
            len: 0,
            tree: None,
            chunks: None,
            chunker: None,
            mode: entry.mode,
            mtime: entry.mtime,
            target: entry.target,
        };
        if let Some(content) = entry.content {
            debug_assert_eq!(item.kind, ItemKind::File);
            progress.item(&item.name, None);
            let reader = content.open(&item.name)?;
            let (len, chunks, root, params) = self.stream(&item.name, reader, progress)?;
            item.len = len;
            item.chunks = Some(chunks);
            item.tree = Some(root);
            item.chunker = Some(params);
        }
        Ok(item)
    }

    /// Chunks, hashes and stores one stream; returns (length, chunks, tree
    /// root, chunk parameters).
    fn stream(
        &mut self,
        name: &str,
        reader: Box<dyn Read + Send>,
        progress: &dyn Progress,
    ) -> Result<(u64, u64, BlobId, ChunkerParams)> {
        let (tx, rx) = crossbeam_channel::bounded::<Result<Segment>>(SEGMENTS_AHEAD);
        let choice = match self.previous.get(name) {
            Some(&params) => Choice::Fixed(params),
            None => Choice::Policy(self.policy),
        };
        std::thread::scope(|scope| {
            let reader_thread =
                scope.spawn(move || read_segments(reader, choice, name, &tx, progress));
            let mut tree = TreeBuilder::new(self.config.tree);
            let mut nodes = Vec::new();
            let (mut len, mut chunks) = (0u64, 0u64);
            for segment in rx {
                let segment = segment?;
                let ranges = ranges(&segment.lens);
                let ids: Vec<BlobId> = ranges
                    .par_iter()
                    .with_min_len(8)
                    .map(|r| BlobId::of(&segment.data[r.clone()]))
                    .collect();
                for (id, r) in ids.into_iter().zip(ranges) {
                    let chunk_len = (r.end - r.start) as u64;
                    self.add_blob(id, &segment.data[r], false);
                    tree.push(id, chunk_len, &mut nodes);
                    len += chunk_len;
                    chunks += 1;
                }
                for node in nodes.drain(..) {
                    self.add_blob(node.id, &node.bytes, true);
                }
                self.flush_full_frames()?;
            }
            let root = tree.finish(&mut nodes);
            for node in nodes.drain(..) {
                self.add_blob(node.id, &node.bytes, true);
            }
            self.stats.bytes_read += len;
            self.stats.chunks += chunks;
            let params = reader_thread
                .join()
                .map_err(|_| Error::invalid("the reader thread panicked"))??;
            Ok((len, chunks, root, params))
        })
    }

    /// Queues a blob for storage unless it is stored or queued already.
    fn add_blob(&mut self, id: BlobId, bytes: &[u8], is_tree: bool) {
        if self.index.contains(&id) || !self.pending.insert(id) {
            return;
        }
        self.stats.new_blobs += 1;
        self.stats.new_blob_bytes += bytes.len() as u64;
        if is_tree {
            self.stats.new_tree_bytes += bytes.len() as u64;
        }
        let frame = if is_tree {
            &mut self.tree_frame
        } else {
            &mut self.data_frame
        };
        frame.push(id, bytes);
        if frame.raw_len() >= self.config.compression.frame_target_len as usize {
            let full = frame.take();
            self.full_frames.push(full);
        }
    }

    /// Compresses the full frames in parallel and appends them to packs.
    fn flush_full_frames(&mut self) -> Result<()> {
        if self.full_frames.is_empty() {
            return Ok(());
        }
        let level = self.config.compression.level;
        let frames: Vec<Frame> = std::mem::take(&mut self.full_frames)
            .into_par_iter()
            .map(|f| f.compress(level))
            .collect::<Result<_>>()?;
        for frame in frames {
            self.pack.add_frame(frame);
            if self.pack.len() >= self.config.pack_target_len as usize {
                self.send_pack()?;
            }
        }
        Ok(())
    }

    fn send_pack(&mut self) -> Result<()> {
        let (id, bytes, trailer) = std::mem::take(&mut self.pack).finish();
        self.pack_tx
            .blocking_send(FinishedPack { id, bytes, trailer })
            .map_err(|_| Error::invalid("the pack uploader stopped"))
    }

    /// Flushes partial frames and the last pack.
    fn finish(mut self) -> Result<IngestStats> {
        for frame in [self.data_frame.take(), self.tree_frame.take()] {
            if !frame.is_empty() {
                self.full_frames.push(frame);
            }
        }
        self.flush_full_frames()?;
        if !self.pack.is_empty() {
            self.send_pack()?;
        }
        Ok(self.stats)
    }
}

/// Byte ranges of consecutive chunks of the given lengths.
fn ranges(lens: &[u32]) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    lens.iter()
        .map(|&l| {
            let r = start..start + l as usize;
            start = r.end;
            r
        })
        .collect()
}

/// How an item's chunk parameters are decided.
#[derive(Clone, Copy)]
enum Choice {
    /// As the previous snapshot's item of the same name.
    Fixed(ChunkerParams),
    /// By the policy, from the first segment.
    Policy(ChunkingPolicy),
}

/// Reads the source in segments of whole chunks until EOF or an error;
/// returns the chunk parameters used.
fn read_segments(
    mut reader: Box<dyn Read + Send>,
    choice: Choice,
    name: &str,
    tx: &crossbeam_channel::Sender<Result<Segment>>,
    progress: &dyn Progress,
) -> Result<ChunkerParams> {
    let mut buf: Vec<u8> = Vec::with_capacity(SEGMENT_LEN);
    let mut chunker: Option<(ChunkerParams, Chunker)> = None;
    loop {
        // Fill the buffer to SEGMENT_LEN or EOF.
        let mut eof = false;
        while buf.len() < SEGMENT_LEN {
            let filled = buf.len();
            buf.resize(SEGMENT_LEN, 0);
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    buf.truncate(filled);
                    eof = true;
                    break;
                }
                Ok(n) => {
                    buf.truncate(filled + n);
                    progress.read(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(filled),
                Err(e) => {
                    let e = Error::Source {
                        item: name.to_string(),
                        detail: e.to_string(),
                    };
                    let _ = tx.send(Err(Error::Source {
                        item: name.to_string(),
                        detail: e.to_string(),
                    }));
                    return Err(e);
                }
            }
        }
        // The first segment (the policy's sample) decides the chunk size.
        let (params, chunker) = match chunker {
            Some(c) => c,
            None => {
                let params = match choice {
                    Choice::Fixed(p) => p,
                    Choice::Policy(policy) => policy.choose(&buf),
                };
                *chunker.insert((params, Chunker::new(params)?))
            }
        };
        let mut lens = Vec::with_capacity(SEGMENT_LEN / 1024);
        let used = chunker.split(&buf, eof, &mut lens);
        let mut next = Vec::with_capacity(SEGMENT_LEN + chunker.max_len());
        next.extend_from_slice(&buf[used..]);
        buf.truncate(used);
        if !lens.is_empty() && tx.send(Ok(Segment { data: buf, lens })).is_err() {
            return Ok(params); // the ingest thread stopped; it reports why
        }
        buf = next;
        if eof {
            return Ok(params);
        }
    }
}
