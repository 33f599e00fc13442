//! Restore: signed manifest → content tree → chunks → bytes, every step checked.
//!
//! The item's tree root comes from the signed manifest; each tree node and
//! chunk is checked against its id as it is read, each node's level and
//! length against its parent, and the total against the item, so the bytes
//! written are exactly the bytes backed up or the restore fails loudly
//! naming the chunk and item. Content is fetched a window at a time while a
//! writer thread writes the previous window.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::manifest::{Item, ItemKind, Snapshot};
use crate::ops::target::TargetDir;
use crate::repo::IndexedRepository;
use crate::tree::{TreeEntry, TreeNode};

/// Content fetched per window.
const WINDOW_LEN: u64 = 8 << 20;
/// Bytes gathered before each write call.
const WRITE_BUFFER_LEN: usize = 1 << 20;
/// Child nodes fetched at once when expanding a tree.
const NODES_PER_FETCH: usize = 64;

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

/// Walks an item's tree, yielding its chunks in order a window at a time.
pub(crate) struct TreeWalker<'a> {
    reader: &'a BlobReader,
    /// Pending entries per level, deepest level last.
    stack: Vec<(u8, VecDeque<TreeEntry>)>,
    chunks_seen: u64,
    /// The ids of the nodes read so far (root first), when asked for.
    nodes: Option<Vec<BlobId>>,
}

impl<'a> TreeWalker<'a> {
    /// Starts at `root`, which must cover `len` bytes.
    pub async fn new(reader: &'a BlobReader, root: BlobId, len: u64) -> Result<TreeWalker<'a>> {
        let bytes = reader.read_blob(root).await?;
        let node = TreeNode::decode(&bytes, &format!("tree node {root}"))?;
        if node.content_len() != Some(len) {
            return Err(Error::corrupt(
                format!("tree node {root}"),
                format!("covers {:?} bytes, the item has {len}", node.content_len()),
            ));
        }
        Ok(TreeWalker {
            reader,
            stack: vec![(node.level, node.entries.into())],
            chunks_seen: 0,
            nodes: None,
        })
    }

    /// Records the id of every node read from now on (and the root).
    pub fn record_nodes(&mut self, root: BlobId) {
        self.nodes = Some(vec![root]);
    }

    /// The nodes recorded (see [`TreeWalker::record_nodes`]).
    pub fn take_nodes(&mut self) -> Vec<BlobId> {
        self.nodes.take().unwrap_or_default()
    }

    /// Fills `out` with the next chunks, about `budget` bytes; empty at the end.
    pub async fn next_window(&mut self, budget: u64, out: &mut Vec<TreeEntry>) -> Result<()> {
        out.clear();
        let mut taken = 0u64;
        while taken < budget {
            let Some((level, entries)) = self.stack.last_mut() else {
                break;
            };
            if entries.is_empty() {
                self.stack.pop();
                continue;
            }
            if *level == 0 {
                while taken < budget {
                    let Some(e) = entries.pop_front() else { break };
                    taken += e.len;
                    out.push(e);
                }
                continue;
            }
            // Expand the next children of an inner node into one level-down run.
            let child_level = *level - 1;
            let n = entries.len().min(NODES_PER_FETCH);
            let children: Vec<TreeEntry> = entries.drain(..n).collect();
            let ids: Vec<BlobId> = children.iter().map(|c| c.id).collect();
            let blobs = self.reader.read_blobs(&ids).await?;
            if let Some(nodes) = &mut self.nodes {
                nodes.extend_from_slice(&ids);
            }
            let mut run = VecDeque::new();
            for (child, bytes) in children.iter().zip(blobs) {
                let object = format!("tree node {}", child.id);
                let node = TreeNode::decode(&bytes, &object)?;
                if node.level != child_level || node.content_len() != Some(child.len) {
                    return Err(Error::corrupt(
                        object,
                        format!(
                            "level {} covering {:?} bytes where level {child_level} covering {} was expected",
                            node.level,
                            node.content_len(),
                            child.len
                        ),
                    ));
                }
                run.extend(node.entries);
            }
            self.stack.push((child_level, run));
        }
        self.chunks_seen += out.len() as u64;
        Ok(())
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
        let context = |e| in_item(e, &snapshot.id, &item.name);
        let root = item.tree.ok_or_else(|| {
            Error::invalid(format!(
                "item {:?} is a {:?}, not a file",
                item.name, item.kind
            ))
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(1);
        let writer_thread = std::thread::spawn(move || -> std::io::Result<(W, u64)> {
            // Chunks are small (2 KiB for dumps): one write call per chunk
            // would cost more than the copying.
            let mut writer = std::io::BufWriter::with_capacity(WRITE_BUFFER_LEN, writer);
            let mut written = 0u64;
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
            let mut walker = TreeWalker::new(reader, root, item.len)
                .await
                .map_err(context)?;
            let mut window = Vec::new();
            let mut total = 0u64;
            loop {
                walker
                    .next_window(WINDOW_LEN, &mut window)
                    .await
                    .map_err(context)?;
                if window.is_empty() {
                    break;
                }
                let ids: Vec<BlobId> = window.iter().map(|e| e.id).collect();
                let blobs = reader.read_blobs(&ids).await.map_err(context)?;
                for (e, b) in window.iter().zip(&blobs) {
                    if b.len() as u64 != e.len {
                        return Err(context(Error::corrupt(
                            format!("chunk {}", e.id),
                            format!("is {} bytes, the tree says {}", b.len(), e.len),
                        )));
                    }
                }
                let len: u64 = blobs.iter().map(|b| b.len() as u64).sum();
                total += len;
                if tx.send(blobs).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
                progress.written(len);
            }
            if let Some(expected) = item.chunks
                && expected != walker.chunks_seen
            {
                return Err(context(Error::corrupt(
                    format!("tree {root}"),
                    format!(
                        "lists {} chunks, the manifest says {expected}",
                        walker.chunks_seen
                    ),
                )));
            }
            Ok(total)
        }
        .await;
        drop(tx);
        let written = writer_thread
            .join()
            .map_err(|_| Error::invalid("restore writer thread panicked"))?;
        let total = fetched?;
        let (writer, written_len) =
            written.map_err(|e| Error::io(format!("writing {}", item.name), e))?;
        if total != item.len || written_len != item.len {
            return Err(context(Error::corrupt(
                format!("tree {root}"),
                format!("yielded {total} bytes, the item has {}", item.len),
            )));
        }
        Ok((writer, written_len))
    }

    /// Restores a snapshot, or the items at and under `only`, into `target`,
    /// which must not exist or be empty. Every path below `target` is
    /// opened relative to its parent directory without following links
    /// (`TargetDir`), so nothing is written outside `target`.
    pub async fn restore_to_dir(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        only: Option<&str>,
        progress: &dyn RestoreProgress,
    ) -> Result<RestoreSummary> {
        // Checked when decoded; checked again where it matters.
        snapshot
            .manifest
            .validate()
            .map_err(|e| Error::corrupt(format!("snapshot {}", snapshot.id), e))?;
        let items: Vec<&Item> = select_items(snapshot, only)?;
        let root = TargetDir::create_empty(target)?;
        let reader = self.blob_reader();
        let mut summary = RestoreSummary::default();

        // Parents first; every directory writable until the end.
        for item in items.iter().filter(|i| i.kind == ItemKind::Dir) {
            root.subdir(&item.name, true)?;
            summary.dirs += 1;
        }
        for item in items.iter().filter(|i| i.kind == ItemKind::File) {
            let (dir, name) = root.parent_of(&item.name)?;
            // Written under a temporary name, renamed when complete: an
            // interrupted restore never leaves a short file under the real name.
            let partial = format!("{name}.cairn-partial");
            let file = dir.create_file(&partial)?;
            progress.item(&item.name, item.len);
            let (file, len) = match self
                .restore_item(&reader, snapshot, item, file, progress)
                .await
            {
                Ok(done) => done,
                Err(e) => {
                    let _ = dir.remove_file(&partial);
                    return Err(e);
                }
            };
            apply_metadata(&file, item, &dir.path_of(&partial))?;
            drop(file);
            dir.rename(&partial, name)?;
            summary.files += 1;
            summary.bytes += len;
        }
        // Symlinks last, so nothing is ever written through one.
        for item in items.iter().filter(|i| i.kind == ItemKind::Symlink) {
            let (dir, name) = root.parent_of(&item.name)?;
            dir.symlink(item.target.as_deref().unwrap_or_default(), name)?;
            summary.symlinks += 1;
        }
        // Directory modes and times last, deepest first.
        for item in items.iter().rev().filter(|i| i.kind == ItemKind::Dir) {
            let path = root.path_of(&item.name);
            apply_metadata(&root.subdir(&item.name, false)?.into_file(), item, &path)?;
        }
        Ok(summary)
    }

    /// A reader sized for restoring.
    pub fn blob_reader(&self) -> BlobReader {
        BlobReader::new(self.clone(), 8, 16 << 20)
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

fn apply_metadata(file: &std::fs::File, item: &Item, path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(mode) = item.mode {
        use std::os::unix::fs::PermissionsExt;
        // Permission bits and the sticky bit; never set-user/group-id.
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o1777))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    }
    if let Some(mtime) = item.mtime {
        let t = std::time::SystemTime::from(mtime);
        file.set_modified(t)
            .map_err(|e| Error::io(format!("setting the time of {}", path.display()), e))?;
    }
    Ok(())
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
