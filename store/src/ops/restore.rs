//! Restore: signed manifest → content tree → chunks → bytes, every step checked.
//!
//! The item's tree root comes from the signed manifest; each tree node and
//! chunk is checked against its id as it is read, each node's level and
//! length against its parent, and the total against the item, so the bytes
//! written are exactly the bytes backed up or the restore fails loudly
//! naming the chunk and item. Content is fetched two windows at a time (the
//! blob reader decodes a frame both want once) while a writer thread writes
//! the window before.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;

use crate::blob_reader::{BlobReader, Placement, Sink, Tiles};
use crate::error::{Error, Result};
use crate::format::dir::{DirEntry, Node};
use crate::format::manifest::{Item, Snapshot};
use crate::format::tree::TreeEntry;
use crate::id::{BlobId, SnapshotId};
use crate::ops::fsmeta::{self, ApplyContext, ApplyOptions, SparseWriter};
use crate::ops::gather::Gather;
use crate::ops::target::TargetDir;
use crate::ops::walk::{SnapshotTree, TreeWalker, Walked};
use crate::repo::IndexedRepository;

/// Content fetched per window.
const WINDOW_LEN: u64 = 8 << 20;
/// Content restored per window when a file is written at offsets: the
/// frames of a window are decoded once each, so the larger the window the
/// fewer frames decoded twice (a frame holds chunks from all over a file
/// that changed a little every day); bounded by the window's list of
/// chunks, about 150 bytes a chunk, two windows at once (the next is
/// walked while this one is written): 7 MB for 5 KiB chunks.
const SCATTER_WINDOW_LEN: u64 = 128 << 20;
/// The first window of a file written at offsets: small, so that writing
/// starts while the rest of its chunk list is read. Each next window is at
/// most [`WINDOW_GROWTH`] times the one before, so that walking it takes
/// no longer than writing the one before (walking costs by the chunk,
/// writing by the byte: a 128 MiB window of 4 KiB chunks took longer to
/// walk than the 8 MiB before it took to write, and the CPUs waited).
const FIRST_WINDOW_LEN: u64 = 8 << 20;
/// How much larger each window of a file may be than the one before.
const WINDOW_GROWTH: u64 = 4;
/// Decoded frames queued for the thread writing a file at offsets.
const TILES_QUEUED: usize = 8;
/// Windows fetched at once for a large file.
const WINDOWS_IN_FLIGHT: usize = 2;
/// Files up to this size are restored without a writer thread.
const INLINE_MAX_LEN: u64 = 1 << 20;
/// Bytes gathered before each write call.
const WRITE_BUFFER_LEN: usize = 1 << 20;

/// Progress callbacks for restore.
pub trait RestoreProgress: Send + Sync {
    /// An item is starting.
    fn item(&self, _name: &str, _len: u64) {}
    /// `n` more bytes were written.
    fn written(&self, _n: u64) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRestoreProgress;
impl RestoreProgress for NoRestoreProgress {}

/// What a restore wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSummary {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Further names of files already restored (hard links).
    pub hard_links: u64,
    /// FIFOs and devices created.
    pub specials: u64,
    /// Devices not created (restoring them needs root).
    pub specials_skipped: u64,
    /// Files already as in the snapshot (`--overwrite`), not rewritten.
    pub unchanged: u64,
    /// Names removed because the snapshot lacks them (`--delete`).
    pub deleted: u64,
    /// Entries whose owner could not be set (not root).
    pub owners_skipped: u64,
    /// Extended attributes the target refused.
    pub xattrs_skipped: u64,
    /// Set-user-id or set-group-id bits not restored (not root, or the
    /// owner was not restored).
    pub setid_dropped: u64,
    /// Content bytes written.
    pub bytes: u64,
}

/// Adds "of item X in snapshot Y" to data errors.
pub(crate) fn in_item(e: Error, snapshot: &SnapshotId, item: &str) -> Error {
    let whose = format!(" of item {item:?} in snapshot {}", snapshot.short());
    match e {
        Error::Corrupt { object, detail } => Error::Corrupt {
            object: object + &whose,
            detail,
        },
        Error::Missing { object, context } => Error::Missing {
            object,
            context: context + &whose,
        },
        other => other,
    }
}

impl IndexedRepository {
    /// Writes one file item's content to `writer`; returns the writer and
    /// the byte count.
    pub async fn restore_item<W: Write + Send + 'static>(
        &self,
        reader: &BlobReader,
        snapshot: &Snapshot,
        item: &Item,
        writer: W,
        progress: &dyn RestoreProgress,
    ) -> Result<(W, u64)> {
        let root = item.tree.ok_or_else(|| {
            Error::invalid(format!(
                "item {:?} is a {:?}, not a file",
                item.name, item.kind
            ))
        })?;
        let content = FileContent {
            root,
            one_chunk: item.one_chunk,
            len: item.len,
            chunks: item.chunks,
        };
        self.restore_content(
            reader,
            &snapshot.id,
            &item.name,
            content,
            writer,
            false,
            progress,
        )
        .await
    }

    /// Writes a file's content to `writer` (chunk by chunk, unbuffered,
    /// when `per_chunk`, so a sparse writer sees runs of zeros); returns
    /// the writer and the byte count.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn restore_content<W: Write + Send + 'static>(
        &self,
        reader: &BlobReader,
        snapshot: &SnapshotId,
        name: &str,
        content: FileContent,
        writer: W,
        per_chunk: bool,
        progress: &dyn RestoreProgress,
    ) -> Result<(W, u64)> {
        let context = |e| in_item(e, snapshot, name);
        let FileContent { root, len, .. } = content;
        if len <= INLINE_MAX_LEN {
            return self
                .restore_small(reader, name, content, writer, progress)
                .await
                .map_err(context);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(1);
        let writer_thread = std::thread::spawn(move || -> std::io::Result<(W, u64)> {
            let mut written = 0u64;
            if per_chunk {
                let mut writer = writer;
                while let Some(batch) = rx.blocking_recv() {
                    for b in batch {
                        writer.write_all(&b)?;
                        written += b.len() as u64;
                    }
                }
                return Ok((writer, written));
            }
            // Chunks are small (a few KiB for dumps): one write call per
            // chunk would cost more than the copying. (Vectored writes of
            // them were measured too: slower than this copy.)
            let mut writer = std::io::BufWriter::with_capacity(WRITE_BUFFER_LEN, writer);
            while let Some(batch) = rx.blocking_recv() {
                for b in batch {
                    writer.write_all(&b)?;
                    written += b.len() as u64;
                }
            }
            let writer = writer.into_inner().map_err(|e| e.into_error())?;
            Ok((writer, written))
        });

        let fetched: Result<u64> = async {
            let mut chunks = ContentReader::open(reader, content, WINDOWS_IN_FLIGHT).await?;
            while let Some(blobs) = chunks.next().await? {
                let n: u64 = blobs.iter().map(|b| b.len() as u64).sum();
                if tx.send(blobs).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
                progress.written(n);
            }
            Ok(chunks.total)
        }
        .await
        .map_err(context);
        drop(tx);
        let written = writer_thread
            .join()
            .map_err(|_| Error::Bug("the restore writer thread panicked".into()))?;
        let total = fetched?;
        let (writer, written_len) = written.map_err(|e| Error::io(format!("writing {name}"), e))?;
        if total != len || written_len != len {
            return Err(context(Error::corrupt(
                format!("tree {root}"),
                format!("yielded {total} bytes, the item has {len}"),
            )));
        }
        Ok((writer, written_len))
    }

    /// Writes a large file's content into `file` at its offsets, a window
    /// of chunks at a time: each window's frames are fetched, decoded and
    /// checked once, in parallel, and written where their chunks go
    /// ([`BlobReader::scatter`]). Returns the file and the byte count.
    async fn restore_file_at(
        &self,
        reader: &BlobReader,
        snapshot: &SnapshotId,
        name: &str,
        content: FileContent,
        file: File,
        progress: &dyn RestoreProgress,
    ) -> Result<(File, u64)> {
        let FileContent {
            root,
            one_chunk,
            len,
            chunks,
        } = content;
        // One thread writes, gathering runs into whole segments (writers
        // of one file would only queue on its lock).
        let (tx, rx) = crossbeam_channel::bounded::<Tiles>(TILES_QUEUED);
        let writer_thread = std::thread::spawn(move || -> std::io::Result<(File, u64)> {
            let mut gather = Gather::new(file, len);
            for tiles in rx {
                for (at, range) in tiles.runs {
                    gather.put(at, tiles.bytes.get(range).unwrap_or_default())?;
                }
            }
            gather.finish()
        });
        let sink: Sink = Arc::new(move |tiles| {
            tx.send(tiles)
                .map_err(|_| Error::io("writing", std::io::ErrorKind::BrokenPipe.into()))
        });
        let written: Result<u64> = async {
            let mut walker = TreeWalker::open(reader, root, len, one_chunk).await?;
            let (mut at, mut written) = (0u64, 0u64);
            // A small first window, so that writing starts early; each next
            // window is walked while the one before it is written.
            let mut window = Vec::new();
            let mut budget = FIRST_WINDOW_LEN;
            walker.next_window(budget, &mut window).await?;
            while !window.is_empty() {
                let mut placements = Vec::with_capacity(window.len());
                for e in &window {
                    placements.push(Placement {
                        id: e.id,
                        at,
                        len: e.len,
                    });
                    at = at.saturating_add(e.len);
                }
                budget = (budget * WINDOW_GROWTH).min(SCATTER_WINDOW_LEN);
                let (n, next) = futures::join!(reader.scatter(&placements, &sink), async {
                    let mut next = Vec::new();
                    walker.next_window(budget, &mut next).await.map(|()| next)
                });
                let n = n?;
                window = next?;
                written += n;
                progress.written(n);
            }
            let seen = walker.chunks_seen;
            if chunks.is_some_and(|c| c != seen) || at != len || written != len {
                return Err(Error::corrupt(
                    format!("tree {root}"),
                    format!(
                        "lists {seen} chunks of {at} bytes, the snapshot says {chunks:?} of {len}"
                    ),
                ));
            }
            Ok(written)
        }
        .await;
        drop(sink);
        // Joined off the tokio threads: the writer may still be draining.
        let wrote = tokio::task::spawn_blocking(move || writer_thread.join())
            .await
            .map_err(|e| Error::Bug(format!("waiting for the restore writer: {e}")))?
            .map_err(|_| Error::Bug("the restore writer thread panicked".into()))?
            .map_err(|e| Error::io(format!("writing {name}"), e));
        // The writer's error is the cause of a broken sink.
        let (file, wrote) = wrote?;
        let written = written.map_err(|e| in_item(e, snapshot, name))?;
        if wrote != written {
            return Err(Error::Bug(format!(
                "{name}: {written} bytes were handed to the writer, {wrote} written"
            )));
        }
        Ok((file, written))
    }

    /// [`Self::restore_content`] for a small file: fetched and written on
    /// this task, chunk by chunk (no writer thread to start per file).
    async fn restore_small<W: Write + Send + 'static>(
        &self,
        reader: &BlobReader,
        name: &str,
        content: FileContent,
        mut writer: W,
        progress: &dyn RestoreProgress,
    ) -> Result<(W, u64)> {
        let mut chunks = ContentReader::open(reader, content, 1).await?;
        while let Some(blobs) = chunks.next().await? {
            for b in &blobs {
                writer
                    .write_all(b)
                    .map_err(|e| Error::io(format!("writing {name}"), e))?;
            }
            progress.written(blobs.iter().map(|b| b.len() as u64).sum());
        }
        Ok((writer, chunks.total))
    }

    /// Restores a snapshot, or the entry at `only` and everything below
    /// it, into `target`, which must not exist or be empty.
    pub async fn restore_to_dir(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        only: Option<&str>,
        progress: &dyn RestoreProgress,
    ) -> Result<RestoreSummary> {
        self.restore_to_dir_with(snapshot, target, only, &RestoreOptions::default(), progress)
            .await
    }

    /// Restores a snapshot, or the entry at `only` and everything below it
    /// (under its full path), into `target`: files with their content,
    /// owners, modes, times and extended attributes, hard links, holes,
    /// symlinks, FIFOs and (as root) devices. `target` must not exist or be
    /// empty unless `options.overwrite`. Every path below `target` is
    /// opened relative to its parent directory without following links
    /// (`TargetDir`), so nothing is written outside `target`.
    pub async fn restore_to_dir_with(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        only: Option<&str>,
        options: &RestoreOptions,
        progress: &dyn RestoreProgress,
    ) -> Result<RestoreSummary> {
        // Checked when decoded; checked again where it matters.
        snapshot
            .manifest
            .validate()
            .map_err(|e| Error::corrupt(format!("snapshot {}", snapshot.id), e))?;
        let reader = Arc::new(self.blob_reader());
        let tree = SnapshotTree::open(Arc::clone(&reader), snapshot)?;
        let context = |e| in_item(e, &snapshot.id, only.unwrap_or("/"));
        let walk = match only {
            None => Some(tree.walk().await.map_err(context)?),
            Some(path) => tree.walk_at(path.as_bytes()).await.map_err(context)?,
        };
        let Some(mut walk) = walk else {
            return Err(Error::NotFound {
                what: format!(
                    "{:?} in snapshot {}",
                    only.unwrap_or_default(),
                    snapshot.id.short()
                ),
                hint: format!("list what it holds with `cairn ls {}`", snapshot.id.short()),
            });
        };
        let root = if options.overwrite {
            TargetDir::create_or_open(target)?
        } else {
            TargetDir::create_empty(target)?
        };
        let base = walk.base().to_vec();
        let start = if base.is_empty() {
            root.subdir("", false)?
        } else {
            let mut d = root.subdir("", false)?;
            for part in base.split(|&b| b == b'/') {
                d = d.child(OsStr::from_bytes(part), true)?;
            }
            d
        };
        let mut state = Restoring {
            repo: self,
            reader: &reader,
            snapshot: &snapshot.id,
            root: &root,
            options,
            ctx: ApplyContext::new(ApplyOptions {
                numeric_owner: options.numeric_owner,
            }),
            dirs: vec![OpenDir {
                dir: start,
                entry: None,
                prune: only.is_none(),
                names: Vec::new(),
            }],
            links: HashMap::new(),
            summary: RestoreSummary::default(),
            progress,
        };
        while let Some(w) = walk.next().await.map_err(context)? {
            state.close_dirs(w.depth + 1)?;
            state.entry(w).await?;
        }
        state.close_dirs(0)?;
        Ok(state.summary)
    }

    /// A reader sized for restoring.
    pub fn blob_reader(&self) -> BlobReader {
        BlobReader::new(self.clone(), 8, 16 << 20)
    }
}

/// A file's content, a window of chunks at a time, each chunk checked
/// against its id (by the blob reader) and its length (here), the chunk
/// count and total length checked at the end. Up to `depth` windows are
/// fetched at once, so that decoding and hashing the next windows overlap
/// the checks of this one and the writer's work.
struct ContentReader<'a> {
    reader: &'a BlobReader,
    walker: TreeWalker<'a>,
    walked: bool,
    depth: usize,
    in_flight: FuturesOrdered<WindowFetch<'a>>,
    content: FileContent,
    /// Bytes yielded so far.
    total: u64,
}

/// One window being fetched: its tree entries and, once read, their bytes.
type WindowFetch<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(Vec<TreeEntry>, Vec<Bytes>)>> + Send + 'a>>;

impl<'a> ContentReader<'a> {
    async fn open(
        reader: &'a BlobReader,
        content: FileContent,
        depth: usize,
    ) -> Result<ContentReader<'a>> {
        let walker = TreeWalker::open(reader, content.root, content.len, content.one_chunk).await?;
        Ok(ContentReader {
            reader,
            walker,
            walked: false,
            depth: depth.max(1),
            in_flight: FuturesOrdered::new(),
            content,
            total: 0,
        })
    }

    /// The next chunks; `None` once the content is complete and consistent.
    async fn next(&mut self) -> Result<Option<Vec<Bytes>>> {
        while !self.walked && self.in_flight.len() < self.depth {
            let mut window = Vec::new();
            self.walker.next_window(WINDOW_LEN, &mut window).await?;
            if window.is_empty() {
                self.walked = true;
                break;
            }
            let reader = self.reader;
            self.in_flight.push_back(Box::pin(async move {
                let ids: Vec<BlobId> = window.iter().map(|e| e.id).collect();
                let blobs = reader.read_blobs(&ids).await?;
                Ok((window, blobs))
            }));
        }
        let FileContent {
            root, len, chunks, ..
        } = self.content;
        let Some(fetched) = self.in_flight.next().await else {
            let seen = self.walker.chunks_seen;
            if chunks.is_some_and(|c| c != seen) || self.total != len {
                return Err(Error::corrupt(
                    format!("tree {root}"),
                    format!(
                        "lists {seen} chunks of {} bytes, the snapshot says {chunks:?} of {len}",
                        self.total
                    ),
                ));
            }
            return Ok(None);
        };
        let (window, blobs) = fetched?;
        for (e, b) in window.iter().zip(&blobs) {
            if b.len() as u64 != e.len {
                return Err(Error::corrupt(
                    format!("chunk {}", e.id),
                    format!("is {} bytes, the tree says {}", b.len(), e.len),
                ));
            }
            self.total += e.len;
        }
        Ok(Some(blobs))
    }
}

/// Where a file's content is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileContent {
    /// The chunk-list root, or the one chunk when `one_chunk`.
    pub root: BlobId,
    pub one_chunk: bool,
    pub len: u64,
    pub chunks: Option<u64>,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into an existing directory: rewrite only files that differ
    /// (by size and modification time), replace what is of another kind.
    pub overwrite: bool,
    /// With `overwrite`: remove what the snapshot does not hold.
    pub delete: bool,
    /// Restore owners by number, never by name.
    pub numeric_owner: bool,
}

/// A directory being restored: its metadata goes on last.
struct OpenDir {
    dir: TargetDir,
    entry: Option<DirEntry>,
    /// Whether `--delete` applies here (not in the directory above a single
    /// restored entry).
    prune: bool,
    /// The names restored in it (for `--delete`).
    names: Vec<Vec<u8>>,
}

struct Restoring<'a> {
    repo: &'a IndexedRepository,
    reader: &'a BlobReader,
    snapshot: &'a SnapshotId,
    root: &'a TargetDir,
    options: &'a RestoreOptions,
    ctx: ApplyContext,
    dirs: Vec<OpenDir>,
    /// The first name restored of each hard-link group, relative to the target.
    links: HashMap<u64, Vec<u8>>,
    summary: RestoreSummary,
    progress: &'a dyn RestoreProgress,
}

/// Whether a file found in an `--overwrite` target is already what `entry`
/// restores: a regular file with one name, the same size, mtime, mode and
/// owner, and nothing that only root may set (set-id bits, capabilities),
/// which a local user could otherwise plant to have a root restore bless.
fn already_restored(st: &rustix::fs::Stat, entry: &DirEntry) -> bool {
    let mode = st.st_mode & 0o7777;
    is_kind(st, rustix::fs::FileType::RegularFile)
        && st.st_nlink == 1
        && st.st_size as u64 == entry.size
        && entry
            .mtime
            .is_some_and(|t| t.secs == st.st_mtime && u64::from(t.nanos) == st.st_mtime_nsec)
        && entry.mode.is_some_and(|m| m & 0o6000 == 0 && m == mode)
        && entry
            .owner
            .as_ref()
            .is_none_or(|o| o.uid == st.st_uid && o.gid == st.st_gid)
        && !entry
            .xattrs
            .iter()
            .any(|x| x.name == b"security.capability")
}

impl RestoreSummary {
    fn count(&mut self, report: fsmeta::ApplyReport) {
        self.owners_skipped += u64::from(report.owner_skipped);
        self.xattrs_skipped += u64::from(report.xattrs_skipped);
        self.setid_dropped += u64::from(report.setid_dropped);
    }
}

fn is_kind(st: &rustix::fs::Stat, kind: rustix::fs::FileType) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == kind
}

/// The directory the next entry goes into: the innermost open one.
fn innermost(dirs: &[OpenDir]) -> Result<&OpenDir> {
    dirs.last()
        .ok_or_else(|| Error::Bug("no open directory".into()))
}

impl Restoring<'_> {
    /// Finishes the open directories beyond the first `keep`: removes what
    /// the snapshot lacks (`--delete`), then applies their metadata.
    fn close_dirs(&mut self, keep: usize) -> Result<()> {
        while self.dirs.len() > keep {
            let Some(open) = self.dirs.pop() else { break };
            if self.options.overwrite && self.options.delete && open.prune {
                let mut restored = open.names;
                restored.sort();
                for name in open.dir.names()? {
                    if restored.binary_search(&name.as_bytes().to_vec()).is_err() {
                        open.dir.remove_any(&name)?;
                        self.summary.deleted += 1;
                    }
                }
            }
            if let (Some(entry), Some(parent)) = (open.entry, self.dirs.last()) {
                let name = OsStr::from_bytes(&entry.name);
                let report = fsmeta::apply_metadata(
                    parent.dir.fd(),
                    name,
                    Some(open.dir.fd()),
                    &entry,
                    &mut self.ctx,
                )?;
                self.summary.count(report);
            }
        }
        Ok(())
    }

    async fn entry(&mut self, w: Walked) -> Result<()> {
        let Walked { path, entry, .. } = w;
        let name = OsStr::from_bytes(&entry.name).to_os_string();
        let parent = self
            .dirs
            .last_mut()
            .ok_or_else(|| Error::Bug("no open directory".into()))?;
        parent.names.push(entry.name.clone());
        let existing = match self.options.overwrite {
            true => parent.dir.stat(&name)?,
            false => None,
        };
        match &entry.node {
            Node::Dir { .. } => return self.dir(entry, &name, existing.as_ref()),
            Node::File { .. } => return self.file(path, entry, &name, existing.as_ref()).await,
            _ => {}
        }
        // Symlinks, FIFOs and devices are made afresh.
        let parent = innermost(&self.dirs)?;
        if existing.is_some() {
            parent.dir.remove_any(&name)?;
        }
        if let Node::Symlink { target } = &entry.node {
            parent.dir.symlink(OsStr::from_bytes(target), &name)?;
            self.summary.symlinks += 1;
        } else if fsmeta::make_special(parent.dir.fd(), &name, &entry)? {
            self.summary.specials += 1;
        } else {
            self.summary.specials_skipped += 1;
            return Ok(());
        }
        let report = fsmeta::apply_metadata(parent.dir.fd(), &name, None, &entry, &mut self.ctx)?;
        self.summary.count(report);
        Ok(())
    }

    /// Opens (creating) a directory; its metadata goes on when it is closed.
    fn dir(
        &mut self,
        entry: DirEntry,
        name: &OsStr,
        existing: Option<&rustix::fs::Stat>,
    ) -> Result<()> {
        let parent = innermost(&self.dirs)?;
        if existing.is_some_and(|st| !is_kind(st, rustix::fs::FileType::Directory)) {
            parent.dir.remove_any(name)?;
        }
        let dir = parent.dir.child(name, true)?;
        self.summary.dirs += 1;
        self.dirs.push(OpenDir {
            dir,
            entry: Some(entry),
            prune: true,
            names: Vec::new(),
        });
        Ok(())
    }

    /// A file: a further name of a link group already restored, a file
    /// already as restored (`--overwrite`), or written afresh.
    async fn file(
        &mut self,
        path: Vec<u8>,
        entry: DirEntry,
        name: &OsStr,
        existing: Option<&rustix::fs::Stat>,
    ) -> Result<()> {
        let Node::File { root, chunks, .. } = entry.node else {
            return Err(Error::Bug("a file entry that is not a file".into()));
        };
        if let Some(group) = entry.link_group
            && let Some(first) = self.links.get(&group)
        {
            let (from, from_name) = self.root.parent_of_bytes(first)?;
            let parent = innermost(&self.dirs)?;
            if existing.is_some() {
                parent.dir.remove_any(name)?;
            }
            fsmeta::hard_link(from.fd(), from_name, parent.dir.fd(), name)?;
            self.summary.hard_links += 1;
            return Ok(());
        }
        let parent = innermost(&self.dirs)?;
        if let Some(st) = existing.filter(|st| already_restored(st, &entry)) {
            // Its metadata goes on through a descriptor of the file just
            // checked: a name swapped meanwhile is refused.
            let kept = parent.dir.open_existing(name, Some(st))?;
            let report = fsmeta::apply_metadata(
                parent.dir.fd(),
                name,
                Some(kept.as_fd()),
                &entry,
                &mut self.ctx,
            )?;
            self.summary.count(report);
            self.summary.unchanged += 1;
        } else {
            if existing.is_some_and(|st| is_kind(st, rustix::fs::FileType::Directory)) {
                parent.dir.remove_any(name)?;
            }
            // Written under a temporary name, renamed when complete: an
            // interrupted restore never leaves a short file under the real
            // name (and a rename replaces whatever else is there).
            let display = String::from_utf8_lossy(&path).into_owned();
            let mut partial = name.to_os_string();
            partial.push(".cairn-partial");
            let file = parent.dir.create_file(&partial)?;
            self.progress.item(&display, entry.size);
            let content = FileContent {
                root,
                one_chunk: entry.one_chunk,
                len: entry.size,
                chunks: Some(chunks),
            };
            let done = if entry.sparse || entry.size <= INLINE_MAX_LEN {
                let writer = SparseWriter::new(file, entry.sparse);
                self.repo
                    .restore_content(
                        self.reader,
                        self.snapshot,
                        &display,
                        content,
                        writer,
                        entry.sparse,
                        self.progress,
                    )
                    .await
                    .and_then(|(w, n)| {
                        let file = w
                            .finish()
                            .map_err(|e| Error::io(format!("writing {display}"), e))?;
                        Ok((file, n))
                    })
            } else {
                self.repo
                    .restore_file_at(
                        self.reader,
                        self.snapshot,
                        &display,
                        content,
                        file,
                        self.progress,
                    )
                    .await
            };
            let (file, len) = match done {
                Ok(done) => done,
                Err(e) => {
                    let _ = parent.dir.remove_file(&partial);
                    return Err(e);
                }
            };
            let report = fsmeta::apply_metadata(
                parent.dir.fd(),
                &partial,
                Some(file.as_fd()),
                &entry,
                &mut self.ctx,
            )?;
            self.summary.count(report);
            drop(file);
            parent.dir.rename(&partial, name)?;
            self.summary.files += 1;
            self.summary.bytes += len;
        }
        if let Some(group) = entry.link_group {
            self.links.insert(group, path);
        }
        Ok(())
    }
}

/// The items to restore: all, or the one named `only` and everything under it.
pub fn select_items<'s>(snapshot: &'s Snapshot, only: Option<&str>) -> Result<Vec<&'s Item>> {
    let items: Vec<&Item> = match only {
        None => snapshot.manifest.items.iter().collect(),
        Some(name) => {
            let name = name.trim_end_matches('/');
            let under = format!("{name}/");
            snapshot
                .manifest
                .items
                .iter()
                .filter(|i| i.name == name || i.name.starts_with(&under))
                .collect()
        }
    };
    if items.is_empty() && only.is_some() {
        return Err(Error::NotFound {
            what: format!(
                "item {:?} in snapshot {}",
                only.unwrap_or_default(),
                snapshot.id.short()
            ),
            hint: "list the items with `cairn snapshots --json`".into(),
        });
    }
    Ok(items)
}

/// Restores one item's content into any writer (stdout, a file).
pub async fn restore_item_to<W: Write + Send + 'static>(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    item: &Item,
    writer: W,
    progress: &dyn RestoreProgress,
) -> Result<u64> {
    let reader = Arc::new(repo.blob_reader());
    repo.restore_item(&reader, snapshot, item, writer, progress)
        .await
        .map(|(_, n)| n)
}

/// The file a stream restore writes: the one at `name`, or the snapshot's
/// only file; returns its path and entry.
pub async fn find_file(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    name: Option<&str>,
) -> Result<(String, DirEntry)> {
    let tree = SnapshotTree::open(Arc::new(repo.blob_reader()), snapshot)?;
    let context = |e| in_item(e, &snapshot.id, name.unwrap_or("/"));
    let not_found = |what: String| Error::NotFound {
        what,
        hint: format!("list what it holds with `cairn ls {}`", snapshot.id.short()),
    };
    if let Some(name) = name {
        return match tree.lookup(name.as_bytes()).await.map_err(context)? {
            Some(e) if matches!(e.node, Node::File { .. }) => Ok((name.to_string(), e)),
            _ => Err(not_found(format!(
                "file {name:?} in snapshot {}",
                snapshot.id.short()
            ))),
        };
    }
    let mut walk = tree.walk().await.map_err(context)?;
    let mut files = Vec::new();
    while let Some(w) = walk.next().await.map_err(context)? {
        if matches!(w.entry.node, Node::File { .. }) {
            files.push((w.display(), w.entry));
            if files.len() > 1 {
                break;
            }
        }
    }
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(not_found(format!(
            "a file in snapshot {}",
            snapshot.id.short()
        ))),
        _ => Err(Error::invalid(format!(
            "snapshot {} holds several files; choose one with --item (e.g. {:?})",
            snapshot.id.short(),
            files[0].0
        ))),
    }
}

/// Writes the content of the file `entry` (found by [`find_file`]) to `writer`.
pub async fn restore_entry_to<W: Write + Send + 'static>(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    name: &str,
    entry: &DirEntry,
    writer: W,
    progress: &dyn RestoreProgress,
) -> Result<u64> {
    let Node::File { root, chunks, .. } = entry.node else {
        return Err(Error::invalid(format!("{name:?} is not a file")));
    };
    let content = FileContent {
        root,
        one_chunk: entry.one_chunk,
        len: entry.size,
        chunks: Some(chunks),
    };
    let reader = repo.blob_reader();
    repo.restore_content(
        &reader,
        &snapshot.id,
        name,
        content,
        writer,
        false,
        progress,
    )
    .await
    .map(|(_, n)| n)
}
