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
//! (harmless garbage), never a snapshot pointing at missing data.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::ObjectKey;
use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::format::chunker::{Chunker, ChunkerParams, ChunkingPolicy};
use crate::format::config::Config;
use crate::format::cutter::{Cutter, ParentChunks};
use crate::format::dir::{Change, DirEntry, Node, Time, TreeAssembler};
use crate::format::frame::FrameBuilder;
use crate::format::index::Index;
use crate::format::key::SecretKey;
use crate::format::manifest::{MANIFEST_VERSION, Manifest, Snapshot, Totals};
use crate::format::tree::{EncodedNode, TreeBuilder};
use crate::id::{BlobId, IdSet, SnapshotId};
use crate::ops::packer::{FinishedPack, IndexFlush, Packer, store_index, upload_packs};
use crate::ops::session::WriteSession;
pub use crate::ops::source::Exclude;
use crate::ops::source::{Content, FileAt, FileState, Source, SourceEntry, StableFile};
use crate::ops::walk::TreeWalker;
use crate::ops::walk::{DirCursor, SnapshotTree};

/// Bytes read from the source per segment.
const SEGMENT_LEN: usize = 4 << 20;
/// Index objects are written as packs are stored, every this many blobs
/// (about 5 MB of pack descriptions held at most).
const INDEX_FLUSH_BLOBS: usize = 131_072;
/// Files up to this size are read whole on the ingest thread.
const INLINE_MAX_LEN: u64 = 1 << 20;
/// Segments read ahead of the ingest thread.
const SEGMENTS_AHEAD: usize = 1;
/// How often a file that changes while it is read is read again before the
/// backup fails (it is never stored torn).
const FILE_READS: u32 = 3;
/// Parents with more chunks than this are not loaded for prediction (each
/// costs about 80 bytes of memory while its item is backed up).
const MAX_PARENT_CHUNKS: u64 = 1 << 20;
/// Tree nodes go to smaller frames than content: a node (a few hundred
/// bytes) is read on its own, when walking a tree or predicting cuts, and
/// the whole frame is decoded for it; chunk lists barely compress anyway.
const TREE_FRAME_TARGET_LEN: usize = 64 * 1024;
/// Decoded frames kept while reading the parent's tree. Its nodes are read
/// once each, in order; a frame serves the nodes written beside it. More
/// only grows with how scattered the parent is: with 4 MiB, a backup beside
/// 10 or 300 snapshots peaked 1.8 MB (9 %) above one beside one.
const PARENT_CACHE_LEN: usize = 1 << 20;
/// Frames compressing or waiting to be packed at once.
const FRAMES_IN_FLIGHT: usize = 8;

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
    /// The snapshot to compare files with (an id or id prefix); by default
    /// the newest of the same host and paths (else of the same paths).
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent.
    pub force_reread: bool,
    /// Write an index object each time this many blobs were stored (so
    /// memory stays flat however large the backup).
    pub index_every_blobs: usize,
    /// Files and directories not to back up (see [`Exclude`]).
    pub exclude: Exclude,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            host: crate::ops::hostname(),
            tags: Vec::new(),
            time: None,
            upload_concurrency: 2,
            parent: None,
            force_reread: false,
            index_every_blobs: INDEX_FLUSH_BLOBS,
            exclude: Exclude::default(),
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
    /// Entries in it (files, directories and the rest).
    pub items: u64,
    /// The snapshot its files were compared with.
    pub parent: Option<SnapshotId>,
    /// Files found unchanged since the parent, and not read.
    pub files_unchanged: u64,
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

#[derive(Debug, Default, Clone, Copy)]
struct IngestStats {
    files_unchanged: u64,
    bytes_read: u64,
    chunks: u64,
    new_blobs: u64,
    new_blob_bytes: u64,
    new_tree_bytes: u64,
}

impl WriteSession {
    /// Backs `source` up as one snapshot signed with `key`.
    pub async fn backup(
        &self,
        source: Source,
        key: &SecretKey,
        options: &BackupOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<BackupSummary> {
        let started = Timestamp::now();
        let time = options.time.unwrap_or(started);
        if !self.config().trust().accepts(&key.public()) {
            return Err(Error::SigningKeyNotTrusted {
                key: key.public().to_string(),
            });
        }
        let source_info = source.info();
        let paths = source.paths()?;
        let parent = self.parent(&paths, options, &key.public()).await?;
        self.pauses().at("backup:parents-loaded").await;
        let reader = Arc::new(BlobReader::new(self.repo().clone(), 4, PARENT_CACHE_LEN));
        let parent_tree = match &parent {
            Some(p) => match SnapshotTree::open(Arc::clone(&reader), p) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(
                        "cannot read the parent snapshot {} ({e}); reading every file",
                        p.id.short()
                    );
                    None
                }
            },
            None => None,
        };
        let parents = ParentLoader {
            reader,
            runtime: tokio::runtime::Handle::current(),
        };

        let concurrency = options.upload_concurrency.max(1);
        let (pack_tx, pack_rx) = mpsc::channel::<FinishedPack>(1);
        let uploader = tokio::spawn(upload_packs(
            self.backend().clone(),
            pack_rx,
            concurrency,
            Arc::clone(self.condemned()),
            self.pauses().clone(),
            Some(IndexFlush {
                every_blobs: options.index_every_blobs.max(1),
                lease: self.lease().checker(),
            }),
        ));
        let config = self.config().clone();
        let index = Arc::clone(self.repo().index());
        let force_reread = options.force_reread;
        let exclude = options.exclude.clone();
        let parent_time = parent
            .as_ref()
            .map(|p| Time::from_timestamp(p.manifest.started()));
        let prepared = matches!(source, Source::Prepared(_));
        let ingest = tokio::task::spawn_blocking(move || {
            let mut entries = source.into_tree(&exclude)?;
            let mut ingest = Ingest::new(
                &config,
                &index,
                parents,
                parent_tree,
                parent_time,
                force_reread,
                pack_tx,
            )?;
            if prepared {
                let mut listed = entries.collect::<Result<Vec<_>>>()?;
                ingest.contents_in_given_order(&mut listed, progress.as_ref())?;
                entries = Box::new(listed.into_iter().map(Ok));
            }
            for entry in entries {
                ingest.entry(entry?, progress.as_ref())?;
            }
            ingest.finish()
        });
        let ingested = ingest
            .await
            .map_err(|e| Error::Bug(format!("the ingest thread failed: {e}")))?;
        let uploaded = uploader
            .await
            .map_err(|e| Error::Bug(format!("the upload task failed: {e}")))?;
        // An upload failure closes the channel and so also fails ingest:
        // report the cause, not the symptom.
        let ((root, totals, stats), packs) = match (ingested, uploaded) {
            (Ok(done), Ok(packs)) => (done, packs),
            (_, Err(upload_error)) => return Err(upload_error),
            (Err(e), Ok(_)) => return Err(e),
        };

        let mut stored_bytes = packs.pack_bytes + packs.index_bytes;
        let pack_count = packs.packs;
        self.pauses().at("backup:packs-stored").await;
        self.lease().check()?;
        stored_bytes += store_index(self.backend(), packs.unindexed).await?;

        let manifest = Manifest {
            version: MANIFEST_VERSION,
            repository: self.config().id,
            time,
            host: options.host.clone(),
            tags: options.tags.clone(),
            source: source_info,
            paths,
            started: (time != started).then_some(started),
            parent: parent.as_ref().map(|p| p.id),
            root: Some(root),
            totals: Some(totals),
            items: Vec::new(),
        };
        let (snapshot, bytes) = manifest.encode_signed(key)?;
        stored_bytes += bytes.len() as u64;
        self.pauses().at("backup:before-manifest").await;
        // A writer whose lease lapsed writes no snapshot: garbage collection
        // may have stopped waiting for it.
        self.lease().check()?;
        self.backend()
            .put_new(&ObjectKey::Snapshot(snapshot), Bytes::from(bytes))
            .await?;
        Ok(BackupSummary {
            snapshot,
            time,
            items: totals.files + totals.dirs + totals.other,
            parent: parent.map(|p| p.id),
            files_unchanged: stats.files_unchanged,
            bytes_read: stats.bytes_read,
            chunks: stats.chunks,
            new_blobs: stats.new_blobs,
            new_blob_bytes: stats.new_blob_bytes,
            new_tree_bytes: stats.new_tree_bytes,
            stored_bytes,
            packs: pack_count,
        })
    }

    /// The parent: the one asked for, else the newest usable snapshot with
    /// the same paths, of the same host if there is one.
    ///
    /// Only a snapshot signed with this backup's own key qualifies: its
    /// unchanged files are taken without reading them and signed again, so
    /// another signer's snapshot (a compromised node's, say) must never be
    /// the parent, or its content would be laundered into this key's history.
    async fn parent(
        &self,
        paths: &[String],
        options: &BackupOptions,
        signer: &crate::format::key::PublicKey,
    ) -> Result<Option<Snapshot>> {
        let list = self
            .repo()
            .repo()
            .load_snapshots(&self.config().trust())
            .await?;
        if let Some(prefix) = &options.parent {
            let selector = crate::plan::select::Selector::parse(prefix)?;
            let chosen = list.select(&selector, &Default::default())?;
            if chosen.signer != *signer {
                return Err(Error::invalid(format!(
                    "snapshot {} is signed by {}, not by this backup's key {signer}: a parent \
                     must be your own snapshot (its unchanged files are signed again unread)",
                    chosen.id.short(),
                    chosen.signer
                )));
            }
            return Ok(Some(chosen.clone()));
        }
        let name = paths.join(",");
        let same = |s: &&Snapshot| s.manifest.name() == name && s.signer == *signer;
        let newest = |host: Option<&str>| {
            list.snapshots
                .iter()
                .rev()
                .filter(same)
                .find(|s| host.is_none_or(|h| s.manifest.host == h))
                .cloned()
        };
        Ok(newest(Some(&options.host)).or_else(|| newest(None)))
    }
}

/// An item of an earlier snapshot with the same name: how it was cut, and
/// its chunks (to predict this backup's cuts).
#[derive(Debug, Clone, Copy)]
struct PreviousItem {
    params: ChunkerParams,
    /// The chunk-list root, or the one chunk when `one_chunk`.
    tree: BlobId,
    one_chunk: bool,
    len: u64,
    chunks: u64,
}

impl PreviousItem {
    fn of(entry: &DirEntry) -> Option<PreviousItem> {
        match entry.node {
            Node::File {
                root,
                chunks,
                chunker,
            } if chunker.validate().is_ok() => Some(PreviousItem {
                params: chunker,
                tree: root,
                one_chunk: entry.one_chunk,
                len: entry.size,
                chunks,
            }),
            _ => None,
        }
    }
}

/// Whether a file is unchanged since the parent's entry for it: same size,
/// modification time, status change time and inode, and its change time
/// more than a second before the parent's backup began (else it may have
/// changed again within the same clock tick after it was read: "racily
/// clean", as git calls it).
fn unchanged(now: &DirEntry, then: &DirEntry, parent_time: Option<Time>) -> bool {
    let settled = match (then.change, parent_time) {
        (Some(c), Some(t)) => (c.ctime.secs.saturating_add(1), c.ctime.nanos) < (t.secs, t.nanos),
        _ => false,
    };
    matches!(then.node, Node::File { .. })
        && settled
        && now.size == then.size
        && now.mtime.is_some()
        && now.mtime == then.mtime
        && now.change.is_some()
        && now.change == then.change
}

/// A file's state as listed, to tell a hard link of a file already read
/// from another file that reused its inode meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    size: u64,
    mtime: Option<Time>,
    change: Option<Change>,
}

impl LinkState {
    /// The group recorded for a file of file-system group `group` in this state.
    fn group(&self, group: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&group.to_le_bytes());
        h.update(&self.size.to_le_bytes());
        for t in [self.mtime, self.change.map(|c| c.ctime)] {
            let t = t.unwrap_or_default();
            h.update(&t.secs.to_le_bytes());
            h.update(&t.nanos.to_le_bytes());
        }
        let bytes = h.finalize();
        let g = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([1; 8]));
        g.max(1)
    }

    fn of(entry: &DirEntry) -> LinkState {
        LinkState {
            size: entry.size,
            mtime: entry.mtime,
            change: entry.change,
        }
    }
}

/// Reads a previous item's chunk list from the ingest thread.
struct ParentLoader {
    reader: Arc<BlobReader>,
    runtime: tokio::runtime::Handle,
}

impl ParentLoader {
    /// The chunks of `previous` (none for a very large item) and the blobs
    /// it vouches for: its chunks and tree nodes; the whole index for a
    /// very large item; nothing when it cannot be read (with a warning: a
    /// damaged parent only makes this backup slower and larger).
    fn load(&self, name: &str, previous: &PreviousItem) -> (Option<ParentChunks>, Vouched) {
        // Memory stays bounded: a very large item is cut without prediction.
        if previous.chunks > MAX_PARENT_CHUNKS {
            tracing::debug!("{name}: too large to predict its cuts from its previous version");
            return (None, Vouched::Index);
        }
        let loaded = self.runtime.block_on(async {
            let mut walker = TreeWalker::open(
                &self.reader,
                previous.tree,
                previous.len,
                previous.one_chunk,
            )
            .await?;
            if !previous.one_chunk {
                walker.record_nodes(previous.tree);
            }
            let (mut chunks, mut window) = (Vec::new(), Vec::new());
            loop {
                walker.next_window(u64::MAX, &mut window).await?;
                if window.is_empty() {
                    return Ok::<_, Error>((chunks, walker.take_nodes()));
                }
                chunks.extend(
                    window
                        .iter()
                        .map(|e| (e.id, u32::try_from(e.len).unwrap_or(u32::MAX))),
                );
            }
        });
        match loaded {
            Ok((chunks, nodes)) => {
                let parent = ParentChunks::new(chunks);
                let vouched = Vouched::Parent {
                    chunks: parent.clone(),
                    nodes: nodes.into_iter().collect(),
                };
                (Some(parent), vouched)
            }
            Err(e) => {
                tracing::warn!(
                    "{name}: cannot read its previous version ({e}); chunking it from scratch"
                );
                (None, Vouched::Nothing)
            }
        }
    }
}

/// Which stored blobs a stream may deduplicate against. Any `append`
/// credential can store a pack claiming the id of content it can predict
/// over garbage (format-spec §20), so a writer trusts only the blobs of the
/// item's parent (its tree was read and checked, and its writer followed
/// the same rule) and the blobs it stores itself; everything else is
/// stored again, costing only cross-item deduplication.
enum Vouched {
    /// Every indexed blob: an item too large to load its parent's list
    /// (over `MAX_PARENT_CHUNKS` chunks).
    Index,
    /// The parent's chunks (shared with the cutter) and tree nodes.
    Parent {
        chunks: ParentChunks,
        nodes: IdSet<BlobId>,
    },
    /// Nothing stored: a new item, or a parent that could not be read.
    Nothing,
}

impl Vouched {
    fn contains(&self, id: &BlobId) -> bool {
        match self {
            Vouched::Index => true,
            Vouched::Parent { chunks, nodes } => chunks.contains(id) || nodes.contains(id),
            Vouched::Nothing => false,
        }
    }
}

/// The ingest thread's state: the tree being built, the parent's tree
/// beside it, dedup, frames being filled, the open pack.
struct Ingest<'a> {
    policy: ChunkingPolicy,
    parents: ParentLoader,
    /// The parent snapshot's tree, and a cursor per open directory
    /// (`parent_dirs[d]` lists the parent's directory at depth `d`; `None`
    /// where the parent has no such directory or it could not be read).
    parent_tree: Option<SnapshotTree>,
    parent_dirs: Vec<Option<DirCursor>>,
    force_reread: bool,
    tree: TreeAssembler,
    /// Files of this backup by hard-link group, with the state they were
    /// read in: a further name listed in the same state reuses the content.
    links: HashMap<u64, (LinkState, Node, bool)>,
    /// The parent's time: a file changed within a second of it may have
    /// changed again, unseen, in the same clock tick; it is read again.
    parent_time: Option<Time>,
    config: &'a Config,
    index: &'a Index,
    /// Blobs added by this backup (not yet in any index object).
    pending: IdSet<BlobId>,
    /// What the stream being stored may deduplicate against in `index`.
    vouched: Vouched,
    /// The parent's directory nodes read and checked: an unchanged
    /// directory is the same node, and is not stored again.
    vouched_dirs: IdSet<BlobId>,
    data_frame: FrameBuilder,
    tree_frame: FrameBuilder,
    packer: Packer,
    buffers: BufferPool,
    stats: IngestStats,
}

/// Segment buffers, handed back by the ingest thread for the reader to
/// fill again: multi-MiB buffers allocated on one thread and freed on
/// another make the allocator keep far more memory than is in use.
#[derive(Clone)]
struct BufferPool(
    crossbeam_channel::Sender<Vec<u8>>,
    crossbeam_channel::Receiver<Vec<u8>>,
);

impl BufferPool {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(SEGMENTS_AHEAD + 3);
        BufferPool(tx, rx)
    }

    /// An empty buffer with room for a segment.
    fn take(&self) -> Vec<u8> {
        self.1
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(SEGMENT_LEN))
    }

    /// Gives a buffer back (dropped if the pool is full).
    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let _ = self.0.try_send(buf);
    }
}

/// A run of whole chunks read from the source, with their ids.
struct Segment {
    data: Vec<u8>,
    lens: Vec<u32>,
    ids: Vec<BlobId>,
}

impl<'a> Ingest<'a> {
    fn new(
        config: &'a Config,
        index: &'a Index,
        parents: ParentLoader,
        parent_tree: Option<SnapshotTree>,
        parent_time: Option<Time>,
        force_reread: bool,
        pack_tx: mpsc::Sender<FinishedPack>,
    ) -> Result<Self> {
        let mut ingest = Ingest {
            policy: config.chunking,
            parents,
            parent_tree,
            parent_dirs: Vec::new(),
            force_reread,
            tree: TreeAssembler::new(),
            links: HashMap::new(),
            parent_time,
            config,
            index,
            pending: IdSet::default(),
            vouched: Vouched::Nothing,
            vouched_dirs: IdSet::default(),
            data_frame: FrameBuilder::default(),
            tree_frame: FrameBuilder::default(),
            packer: Packer::start(
                config.compression.level,
                config.pack_target_len as usize,
                FRAMES_IN_FLIGHT,
                pack_tx,
            )?,
            buffers: BufferPool::new(),
            stats: IngestStats::default(),
        };
        let root = ingest.parent_tree.as_ref().map(|t| t.root());
        let cursor = root.and_then(|r| ingest.open_parent_dir(r, ""));
        ingest.parent_dirs.push(cursor);
        Ok(ingest)
    }

    /// A cursor over one of the parent's directories, recording its nodes;
    /// `None` (with a warning) when it cannot be read: a damaged parent
    /// only makes this backup read more.
    fn open_parent_dir(&self, tree: BlobId, path: &str) -> Option<DirCursor> {
        let parent = self.parent_tree.as_ref()?;
        match self.parents.runtime.block_on(parent.dir(tree)) {
            Ok(mut c) => {
                c.record_nodes();
                Some(c)
            }
            Err(e) => {
                tracing::warn!(
                    "{path}: cannot read it in the parent snapshot ({e}); reading it whole"
                );
                None
            }
        }
    }

    /// The parent's entry for `name` in the directory at `depth`.
    fn parent_entry(&mut self, depth: usize, name: &[u8], path: &str) -> Option<DirEntry> {
        self.close_parent_dirs(depth + 1);
        let cursor = self.parent_dirs.get_mut(depth)?.as_mut()?;
        match self.parents.runtime.block_on(cursor.seek(name)) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    "{path}: cannot read its directory in the parent snapshot ({e}); reading it whole"
                );
                self.parent_dirs[depth] = None;
                None
            }
        }
    }

    /// Drops the parent cursors from `depth` on, keeping the nodes they read.
    fn close_parent_dirs(&mut self, depth: usize) {
        while self.parent_dirs.len() > depth {
            if let Some(Some(mut c)) = self.parent_dirs.pop() {
                self.vouched_dirs.extend(c.take_nodes());
            }
        }
    }

    /// Stores the contents of a prepared source's entries (listed in tree
    /// order) in the order the caller gave them, filling in their nodes;
    /// [`Self::entry`] then only places them in the tree.
    fn contents_in_given_order(
        &mut self,
        entries: &mut [SourceEntry],
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut order: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].content.is_some())
            .collect();
        order.sort_by_key(|&i| entries[i].given);
        for i in order {
            let e = &mut entries[i];
            let Some(content) = e.content.take() else {
                continue;
            };
            // Stored content is taken as it is: no parent entry needed.
            let previous = match content {
                Content::Stored(_) => None,
                _ => self.parent_lookup(&e.path),
            };
            progress.item(&e.path, Some(e.entry.size));
            self.file(
                &e.path,
                &mut e.entry,
                content,
                e.chunker,
                previous,
                progress,
            )?;
        }
        Ok(())
    }

    /// The parent's entry at `path`, looked up from its root; `None` (with
    /// a warning) when it cannot be read.
    fn parent_lookup(&self, path: &str) -> Option<DirEntry> {
        let parent = self.parent_tree.as_ref()?;
        match self
            .parents
            .runtime
            .block_on(parent.lookup(path.as_bytes()))
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    "{path}: cannot read it in the parent snapshot ({e}); reading it whole"
                );
                None
            }
        }
    }

    /// Stores one entry (a file's content, a directory's nodes once it is complete).
    fn entry(&mut self, source: SourceEntry, progress: &dyn Progress) -> Result<()> {
        let SourceEntry {
            depth,
            path,
            mut entry,
            content,
            chunker,
            ..
        } = source;
        let previous = self.parent_entry(depth, &entry.name, &path);
        match (&entry.node, content) {
            (Node::Dir { .. }, _) => {
                let cursor = match previous.map(|p| p.node) {
                    Some(Node::Dir { tree }) => self.open_parent_dir(tree, &path),
                    _ => None,
                };
                self.parent_dirs.push(cursor);
            }
            (Node::File { .. }, Some(content)) => {
                progress.item(&path, Some(entry.size));
                self.file(&path, &mut entry, content, chunker, previous, progress)?;
            }
            _ => {}
        }
        let mut nodes = Vec::new();
        self.tree.push(depth, entry, &mut nodes)?;
        self.add_dir_nodes(nodes)
    }

    fn add_dir_nodes(&mut self, nodes: Vec<EncodedNode>) -> Result<()> {
        for node in nodes {
            // A large directory's nodes are emitted while it is still
            // open: its cursor in the parent has recorded their twins.
            let read = self.vouched_dirs.contains(&node.id)
                || self
                    .parent_dirs
                    .iter()
                    .flatten()
                    .any(|c| c.has_node(&node.id));
            // A version-1 parent's nodes are built in memory, not read:
            // a stored copy under their id vouches for nothing.
            let built = self
                .parent_tree
                .as_ref()
                .is_some_and(|t| t.is_built(&node.id));
            let vouched = read && !built && self.index.contains(&node.id);
            if !vouched {
                self.add_blob_as(node.id, &node.bytes, true, true)?;
            }
        }
        Ok(())
    }

    /// Stores a file's content unless it is unchanged since the parent or
    /// a hard link to a file already stored; fills in `entry`'s node.
    fn file(
        &mut self,
        path: &str,
        entry: &mut DirEntry,
        content: Content,
        chunker: Option<ChunkerParams>,
        previous: Option<DirEntry>,
        progress: &dyn Progress,
    ) -> Result<()> {
        // A hard-link group is one file in one state: names of an inode
        // that was replaced (its number reused) or changed between them
        // are different groups, restored as different files.
        entry.link_group = entry.link_group.map(|g| LinkState::of(entry).group(g));
        if let Some(group) = entry.link_group
            && let Some((state, node, one_chunk)) = self.links.get(&group)
            && *state == LinkState::of(entry)
        {
            entry.node = node.clone();
            entry.one_chunk = *one_chunk;
            return Ok(());
        }
        if let Content::Stored(stored) = content {
            // Stored before by this key (the source checked the signer):
            // taken unread, as an unchanged file is, once the index names it.
            if !self.index.contains(&stored.root) {
                return Err(Error::Missing {
                    object: format!("content {} of {path}", stored.root),
                    context: " (no index names it; back up with --full)".into(),
                });
            }
            entry.size = stored.len;
            entry.one_chunk = stored.one_chunk;
            entry.node = Node::File {
                root: stored.root,
                chunks: stored.chunks,
                chunker: stored.chunker,
            };
            self.stats.files_unchanged += 1;
            return Ok(());
        }
        if let Some(p) = &previous
            && !self.force_reread
            && unchanged(entry, p, self.parent_time)
            && matches!(p.node, Node::File { root, .. } if self.index.contains(&root))
        {
            entry.node = p.node.clone();
            entry.one_chunk = p.one_chunk;
            self.stats.files_unchanged += 1;
        } else {
            let previous = previous.as_ref().and_then(PreviousItem::of);
            let (len, chunks, root, params) = match content {
                Content::File(at) => {
                    let (streamed, state) =
                        self.stream_file(path, &at, chunker, previous, progress)?;
                    // What was read is what the entry describes.
                    entry.size = streamed.0;
                    entry.mtime = Some(time_of(state.mtime));
                    entry.change = Some(Change {
                        ctime: time_of(state.ctime),
                        inode: state.inode.1,
                    });
                    streamed
                }
                other => {
                    let reader = other.open(path)?;
                    self.stream(path, chunker, previous, reader, progress)?
                }
            };
            entry.size = len;
            entry.one_chunk = chunks == 1;
            entry.node = Node::File {
                root,
                chunks,
                chunker: params,
            };
        }
        if let Some(group) = entry.link_group {
            self.links.insert(
                group,
                (LinkState::of(entry), entry.node.clone(), entry.one_chunk),
            );
        }
        Ok(())
    }

    /// Streams a file, reading it again (up to [`FILE_READS`] times) while
    /// it changes under the reader; returns what [`Self::stream`] does and
    /// the file's state during the read that held.
    fn stream_file(
        &mut self,
        name: &str,
        at: &FileAt,
        chunker: Option<ChunkerParams>,
        previous: Option<PreviousItem>,
        progress: &dyn Progress,
    ) -> Result<((u64, u64, BlobId, ChunkerParams), FileState)> {
        let mut attempt = 1;
        loop {
            let (mut file, changed) = StableFile::open_at(at, name)?;
            let state = file.state();
            // A small file is read whole on this thread: no reader thread
            // to start, no segment to hand over (most files of a volume).
            let streamed = if state.len <= INLINE_MAX_LEN {
                let mut data = Vec::with_capacity(usize::try_from(state.len).unwrap_or(0) + 1);
                match (&mut file).take(state.len + 1).read_to_end(&mut data) {
                    Ok(n) if n as u64 == state.len => {
                        progress.read(n as u64);
                        self.ingest_whole(name, chunker, previous, &data)
                    }
                    Ok(_) => {
                        changed.store(true, Ordering::SeqCst);
                        Err(Error::Source {
                            item: name.to_string(),
                            detail: format!("{name} changed while it was read (it grew)"),
                        })
                    }
                    Err(e) => Err(Error::Source {
                        item: name.to_string(),
                        detail: e.to_string(),
                    }),
                }
            } else {
                self.stream(name, chunker, previous, Box::new(file), progress)
            };
            match streamed {
                Ok(streamed) => return Ok((streamed, state)),
                Err(_) if changed.load(Ordering::SeqCst) && attempt < FILE_READS => {
                    tracing::warn!("{name} changed while it was read; reading it again");
                    attempt += 1;
                }
                Err(Error::Source { item, detail }) if changed.load(Ordering::SeqCst) => {
                    return Err(Error::Source {
                        item,
                        detail: format!(
                            "{detail}; it changed during each of {FILE_READS} reads: stop what \
                             writes to it during the backup, or back up a snapshot of the volume"
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Chunks, hashes and stores one stream; returns (length, chunks, tree
    /// root, chunk parameters).
    fn stream(
        &mut self,
        name: &str,
        chunker: Option<ChunkerParams>,
        previous: Option<PreviousItem>,
        reader: Box<dyn Read + Send>,
        progress: &dyn Progress,
    ) -> Result<(u64, u64, BlobId, ChunkerParams)> {
        let (tx, rx) = crossbeam_channel::bounded::<Result<Segment>>(SEGMENTS_AHEAD);
        let buffers = self.buffers.clone();
        let (choice, parent) = self.choose(name, chunker, previous);
        std::thread::scope(|scope| {
            let reader_thread = std::thread::Builder::new()
                .name("cairn-reader".into())
                .spawn_scoped(scope, move || {
                    read_segments(reader, choice, parent, name, &tx, buffers, progress)
                })
                .map_err(|e| Error::io("starting the reader thread", e))?;
            let mut tree = TreeBuilder::new(self.config.tree);
            let mut nodes = Vec::new();
            let (mut len, mut chunks) = (0u64, 0u64);
            let mut last = None;
            for segment in rx {
                let mut segment = segment?;
                let mut at = 0usize;
                for (&chunk_len, &id) in segment.lens.iter().zip(&segment.ids) {
                    let end = at + chunk_len as usize;
                    self.add_blob(id, &segment.data[at..end], false)?;
                    tree.push(id, u64::from(chunk_len), &mut nodes);
                    at = end;
                    len += u64::from(chunk_len);
                    chunks += 1;
                    last = Some(id);
                }
                for node in nodes.drain(..) {
                    self.add_blob(node.id, &node.bytes, true)?;
                }
                self.buffers.put(std::mem::take(&mut segment.data));
            }
            let root = match (chunks, last) {
                // One chunk: the entry names it; no chunk-list node.
                (1, Some(only)) => only,
                _ => {
                    let root = tree.finish(&mut nodes);
                    for node in nodes.drain(..) {
                        self.add_blob(node.id, &node.bytes, true)?;
                    }
                    root
                }
            };
            self.stats.bytes_read += len;
            self.stats.chunks += chunks;
            let params = reader_thread
                .join()
                .map_err(|_| Error::Bug("the reader thread panicked".into()))??;
            Ok((len, chunks, root, params))
        })
    }

    /// How a stream is cut, and its parent's chunks (also what it may
    /// deduplicate against). A parent whose recorded parameters are
    /// unusable is ignored.
    fn choose(
        &mut self,
        name: &str,
        chunker: Option<ChunkerParams>,
        previous: Option<PreviousItem>,
    ) -> (Choice, Option<ParentChunks>) {
        match previous {
            Some(previous) if previous.params.validate().is_ok() => {
                let (parent, vouched) = self.parents.load(name, &previous);
                self.vouched = vouched;
                (Choice::Fixed(previous.params), parent)
            }
            _ => {
                self.vouched = Vouched::Nothing;
                match chunker.filter(|p| p.validate().is_ok()) {
                    Some(params) => (Choice::Fixed(params), None),
                    None => (Choice::Policy(self.policy), None),
                }
            }
        }
    }

    /// Chunks, hashes and stores content read whole; returns what
    /// [`Self::stream`] does.
    fn ingest_whole(
        &mut self,
        name: &str,
        chunker: Option<ChunkerParams>,
        previous: Option<PreviousItem>,
        data: &[u8],
    ) -> Result<(u64, u64, BlobId, ChunkerParams)> {
        let (choice, parent) = self.choose(name, chunker, previous);
        let params = match choice {
            Choice::Fixed(p) => p,
            Choice::Policy(policy) => policy.choose(data),
        };
        let mut cutter = Cutter::new(Chunker::new(params)?, parent);
        let (mut lens, mut ids) = (Vec::new(), Vec::new());
        cutter.cut(data, true, &mut lens, &mut ids);
        let mut tree = TreeBuilder::new(self.config.tree);
        let mut nodes = Vec::new();
        let mut at = 0usize;
        for (&chunk_len, &id) in lens.iter().zip(&ids) {
            let end = at + chunk_len as usize;
            self.add_blob(id, &data[at..end], false)?;
            tree.push(id, u64::from(chunk_len), &mut nodes);
            at = end;
        }
        let root = match ids.as_slice() {
            // One chunk: the entry names it; no chunk-list node.
            [only] => *only,
            _ => {
                let root = tree.finish(&mut nodes);
                for node in nodes.drain(..) {
                    self.add_blob(node.id, &node.bytes, true)?;
                }
                root
            }
        };
        let len = data.len() as u64;
        self.stats.bytes_read += len;
        self.stats.chunks += ids.len() as u64;
        Ok((len, ids.len() as u64, root, params))
    }

    /// Queues a blob for storage unless it is stored or queued already.
    fn add_blob(&mut self, id: BlobId, bytes: &[u8], is_tree: bool) -> Result<()> {
        let stored = self.vouched.contains(&id) && self.index.contains(&id);
        self.add_blob_as(id, bytes, is_tree, !stored)
    }

    /// Queues a blob unless it is queued already or `store` is false.
    fn add_blob_as(&mut self, id: BlobId, bytes: &[u8], is_tree: bool, store: bool) -> Result<()> {
        if !store || !self.pending.insert(id) {
            return Ok(());
        }
        self.stats.new_blobs += 1;
        self.stats.new_blob_bytes += bytes.len() as u64;
        if is_tree {
            self.stats.new_tree_bytes += bytes.len() as u64;
        }
        let (frame, target) = if is_tree {
            (&mut self.tree_frame, TREE_FRAME_TARGET_LEN)
        } else {
            (
                &mut self.data_frame,
                self.config.compression.frame_target_len as usize,
            )
        };
        frame.push(id, bytes);
        if frame.raw_len() >= target {
            let full = frame.take();
            self.packer.submit(full)?;
        }
        Ok(())
    }

    /// Finishes the tree, flushes partial frames and waits for the last
    /// pack to be handed over; returns the tree's root and totals.
    fn finish(mut self) -> Result<(BlobId, Totals, IngestStats)> {
        self.close_parent_dirs(0);
        let mut nodes = Vec::new();
        let tree = std::mem::take(&mut self.tree);
        let (root, totals) = tree.finish(&mut nodes)?;
        self.add_dir_nodes(nodes)?;
        self.packer.submit(self.data_frame.take())?;
        self.packer.submit(self.tree_frame.take())?;
        self.packer.finish()?;
        Ok((root, totals, self.stats))
    }
}

fn time_of((secs, nanos): (i64, i64)) -> Time {
    Time {
        secs,
        nanos: u32::try_from(nanos).unwrap_or(0),
    }
}

/// How an item's chunk parameters are decided.
#[derive(Clone, Copy)]
enum Choice {
    /// As the previous snapshot's item of the same name.
    Fixed(ChunkerParams),
    /// By the policy, from the first segment.
    Policy(ChunkingPolicy),
}

/// Reads the source in segments of whole, identified chunks until EOF or an
/// error; returns the chunk parameters used.
fn read_segments(
    mut reader: Box<dyn Read + Send>,
    choice: Choice,
    parent: Option<ParentChunks>,
    name: &str,
    tx: &crossbeam_channel::Sender<Result<Segment>>,
    buffers: BufferPool,
    progress: &dyn Progress,
) -> Result<ChunkerParams> {
    let fail = |e: std::io::Error| Error::Source {
        item: name.to_string(),
        detail: e.to_string(),
    };
    let mut parent = parent;
    let mut cutter: Option<(ChunkerParams, Cutter)> = None;
    let mut buf = buffers.take();
    loop {
        // Fill the buffer to SEGMENT_LEN or EOF (read_to_end reads into the
        // spare capacity without zeroing it first).
        let want = SEGMENT_LEN.saturating_sub(buf.len()) as u64;
        let before = buf.len();
        let read = loop {
            match reader.by_ref().take(want).read_to_end(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        if let Err(e) = read {
            let _ = tx.send(Err(fail(std::io::Error::new(e.kind(), e.to_string()))));
            return Err(fail(e));
        }
        let n = buf.len() - before;
        progress.read(n as u64);
        let eof = (n as u64) < want;
        // The first segment (the policy's sample) decides the chunk size.
        let (params, cutter) = match cutter {
            Some(ref mut c) => c,
            None => {
                let params = match choice {
                    Choice::Fixed(p) => p,
                    Choice::Policy(policy) => policy.choose(&buf),
                };
                cutter.insert((params, Cutter::new(Chunker::new(params)?, parent.take())))
            }
        };
        let (mut lens, mut ids) = (Vec::with_capacity(4096), Vec::with_capacity(4096));
        // Cut on a rayon worker: its parallel hashing then spreads by work
        // stealing instead of a hand-off per run.
        let used = rayon::scope(|_| cutter.cut(&buf, eof, &mut lens, &mut ids));
        let mut next = buffers.take();
        next.extend_from_slice(&buf[used..]);
        buf.truncate(used);
        if !lens.is_empty()
            && tx
                .send(Ok(Segment {
                    data: buf,
                    lens,
                    ids,
                }))
                .is_err()
        {
            return Ok(*params); // the ingest thread stopped; it reports why
        }
        buf = next;
        if eof {
            tracing::debug!(
                "{name}: {} chunks predicted from the previous version, {} found by CDC",
                cutter.stats.predicted,
                cutter.stats.scanned
            );
            return Ok(*params);
        }
    }
}
