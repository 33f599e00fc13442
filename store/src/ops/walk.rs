//! Reading a snapshot's directory tree lazily, one directory node at a time.
//!
//! A [`SnapshotTree`] opens a snapshot's root; a [`DirCursor`] yields one
//! directory's entries in name order, reading its nodes as it goes and
//! checking each against its id (by the blob reader), its level, its first
//! name and its entry count against its parent, and that names strictly
//! increase across nodes; a [`Walk`] yields every entry below a directory
//! in tree order (pre-order), holding one cursor per level. Memory is
//! bounded by depth times the largest node, whatever the number of files.
//!
//! A [`TreeWalker`] reads a file's chunk list the same way, a window of
//! chunks at a time.
//!
//! A version-1 snapshot lists its items in the manifest: its tree is built
//! from them in memory (the manifest already is), so everything reads both
//! versions through this module.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::format::chunker::ChunkerParams;
use crate::format::dir::{DirChild, DirEntry, DirNode, Node, Time, TreeAssembler};
use crate::format::manifest::{Item, ItemKind, Snapshot};
use crate::format::tree::{TreeEntry, TreeNode};
use crate::id::{BlobId, IdMap, IdSet};

/// The most child nodes fetched at once when expanding a chunk list (no
/// more than cover the rest of a window). A node may hold 65,536 entries
/// (`tree::MAX_FANOUT`), so a signed but hostile tree makes one fetch hold
/// up to this many times 2.6 MB: 64 keeps that where it was (1,024 bought
/// a few milliseconds a window on the dump workload).
const MAX_NODES_PER_FETCH: usize = 64;

/// The deepest path a reader follows.
pub const MAX_DEPTH: usize = 1024;
/// Child nodes read at once.
const CHILDREN_PER_FETCH: usize = 16;
/// Entries (claimed by the parent) read at once beyond the first child.
const FETCH_ENTRY_BUDGET: u64 = 16_384;

/// Where directory nodes come from.
#[derive(Debug, Clone)]
pub struct NodeSource {
    reader: Arc<BlobReader>,
    /// A version-1 snapshot's tree, built from its items (not in the repository).
    built: Option<Arc<IdMap<BlobId, Bytes>>>,
}

impl NodeSource {
    async fn read(&self, ids: &[BlobId]) -> Result<Vec<Bytes>> {
        if let Some(built) = &self.built
            && let Some(found) = ids
                .iter()
                .map(|id| built.get(id).cloned())
                .collect::<Option<Vec<Bytes>>>()
        {
            return Ok(found);
        }
        self.reader.read_blobs(ids).await
    }

    /// The blob reader.
    pub fn reader(&self) -> &Arc<BlobReader> {
        &self.reader
    }
}

/// A snapshot's directory tree.
#[derive(Debug, Clone)]
pub struct SnapshotTree {
    source: NodeSource,
    root: BlobId,
}

impl SnapshotTree {
    /// Opens `snapshot`'s tree (built in memory for a version-1 snapshot).
    pub fn open(reader: Arc<BlobReader>, snapshot: &Snapshot) -> Result<SnapshotTree> {
        let m = &snapshot.manifest;
        if let Some(root) = m.root {
            return Ok(SnapshotTree {
                source: NodeSource {
                    reader,
                    built: None,
                },
                root,
            });
        }
        let (root, nodes) = tree_of_items(&m.items)
            .map_err(|e| Error::corrupt(format!("snapshot {}", snapshot.id), e.to_string()))?;
        Ok(SnapshotTree {
            source: NodeSource {
                reader,
                built: Some(Arc::new(nodes)),
            },
            root,
        })
    }

    /// Its root directory's id.
    pub fn root(&self) -> BlobId {
        self.root
    }

    /// Where its nodes come from.
    pub fn source(&self) -> &NodeSource {
        &self.source
    }

    /// Whether `id` is a node built from a version-1 manifest (not stored).
    pub fn is_built(&self, id: &BlobId) -> bool {
        self.source
            .built
            .as_ref()
            .is_some_and(|b| b.contains_key(id))
    }

    /// A cursor over the directory whose root node is `tree`.
    pub async fn dir(&self, tree: BlobId) -> Result<DirCursor> {
        DirCursor::open(self.source.clone(), tree).await
    }

    /// The entry at `path` (`/`-separated components), if there is one.
    pub async fn lookup(&self, path: &[u8]) -> Result<Option<DirEntry>> {
        let mut tree = self.root;
        let mut parts = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .peekable();
        while let Some(part) = parts.next() {
            let mut cursor = self.dir(tree).await?;
            let Some(entry) = cursor.seek(part).await? else {
                return Ok(None);
            };
            if parts.peek().is_none() {
                return Ok(Some(entry));
            }
            match entry.node {
                Node::Dir { tree: sub } => tree = sub,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Every entry, in tree order.
    pub async fn walk(&self) -> Result<Walk> {
        Walk::new(self.source.clone(), self.root, Vec::new()).await
    }

    /// The entry at `path` and everything below it: the walk yields the
    /// entry itself first (at depth 0, named `path`). `None` when absent.
    pub async fn walk_at(&self, path: &[u8]) -> Result<Option<Walk>> {
        let path: Vec<u8> = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(&b'/');
        if path.is_empty() {
            return self.walk().await.map(Some);
        }
        let Some(entry) = self.lookup(&path).await? else {
            return Ok(None);
        };
        let parent = path
            .rsplit_once_byte(b'/')
            .map(|(p, _)| p.to_vec())
            .unwrap_or_default();
        Ok(Some(Walk::single(self.source.clone(), parent, entry)))
    }
}

trait SplitOnce {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])>;
}

impl SplitOnce for [u8] {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])> {
        let at = self.iter().rposition(|&c| c == b)?;
        Some((&self[..at], &self[at + 1..]))
    }
}

/// One directory's entries, in name order, read node by node.
#[derive(Debug)]
pub struct DirCursor {
    source: NodeSource,
    /// The directory's root node id, for messages.
    tree: BlobId,
    /// Children still to read, per level (deepest last), with their level.
    pending: Vec<(u8, VecDeque<DirChild>)>,
    entries: VecDeque<DirEntry>,
    last: Option<Vec<u8>>,
    /// Every node read, when recording.
    nodes: Option<IdSet<BlobId>>,
}

impl DirCursor {
    async fn open(source: NodeSource, tree: BlobId) -> Result<DirCursor> {
        let mut c = DirCursor {
            source,
            tree,
            pending: Vec::new(),
            entries: VecDeque::new(),
            last: None,
            nodes: None,
        };
        let bytes = c.source.read(&[tree]).await?;
        let node = DirNode::decode(&bytes[0], &format!("directory node {tree}"))?;
        c.take(node);
        Ok(c)
    }

    /// Records the ids of the nodes read from now on (and the root's).
    pub fn record_nodes(&mut self) {
        let mut set = IdSet::default();
        set.insert(self.tree);
        self.nodes = Some(set);
    }

    /// Whether node `id` was read and recorded.
    pub fn has_node(&self, id: &BlobId) -> bool {
        self.nodes.as_ref().is_some_and(|n| n.contains(id))
    }

    /// The nodes recorded.
    pub fn take_nodes(&mut self) -> IdSet<BlobId> {
        self.nodes.take().unwrap_or_default()
    }

    fn take(&mut self, node: DirNode) {
        match node {
            DirNode::Entries(e) => self.entries.extend(e),
            DirNode::Children { level, children } => {
                self.pending.push((level, children.into()));
            }
        }
    }

    /// Reads the next nodes until entries are available or none are left;
    /// with `skip_below`, children wholly before that name are not read.
    async fn fill(&mut self, skip_below: Option<&[u8]>) -> Result<()> {
        while self.entries.is_empty() {
            let Some((level, children)) = self.pending.last_mut() else {
                return Ok(());
            };
            if children.is_empty() {
                self.pending.pop();
                continue;
            }
            if let Some(name) = skip_below {
                // A child can be passed over when the next one starts at or before `name`.
                while children.len() > 1 && children[1].first.as_slice() <= name {
                    children.pop_front();
                }
            }
            let level = *level;
            // A few children at once, but never more entries than a
            // budget: a signer's very wide nodes are read one at a time.
            // (Claimed counts only size the batch; each is checked below.)
            let mut n = 1;
            if skip_below.is_none() {
                let mut entries = children[0].entries;
                while n < children.len().min(CHILDREN_PER_FETCH) {
                    entries = entries.saturating_add(children[n].entries);
                    if entries > FETCH_ENTRY_BUDGET {
                        break;
                    }
                    n += 1;
                }
            }
            let batch: Vec<DirChild> = children.drain(..n).collect();
            let ids: Vec<BlobId> = batch.iter().map(|c| c.id).collect();
            let blobs = self.source.read(&ids).await?;
            let mut runs = Vec::with_capacity(batch.len());
            for (child, bytes) in batch.iter().zip(blobs) {
                let object = format!("directory node {} (of directory {})", child.id, self.tree);
                let node = DirNode::decode(&bytes, &object)?;
                if node.level() + 1 != level
                    || node.first_name() != Some(child.first.as_slice())
                    || node.entry_count() != Some(child.entries)
                {
                    return Err(Error::corrupt(
                        object,
                        format!(
                            "level {} with {:?} entries from {:?}, where its parent says level {} with {} from {:?}",
                            node.level(),
                            node.entry_count(),
                            node.first_name().map(String::from_utf8_lossy),
                            level - 1,
                            child.entries,
                            String::from_utf8_lossy(&child.first)
                        ),
                    ));
                }
                if let Some(nodes) = &mut self.nodes {
                    nodes.insert(child.id);
                }
                runs.push(node);
            }
            // Deeper runs go on top, in order: push the last first.
            let mut entries = Vec::new();
            let mut deeper: Vec<DirChild> = Vec::new();
            let mut deeper_level = None;
            for node in runs {
                match node {
                    DirNode::Entries(e) => entries.extend(e),
                    DirNode::Children { level, children } => {
                        deeper_level = Some(level);
                        deeper.extend(children);
                    }
                }
            }
            match deeper_level {
                Some(l) => self.pending.push((l, deeper.into())),
                None => self.entries.extend(entries),
            }
        }
        Ok(())
    }

    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<DirEntry>> {
        self.fill(None).await?;
        self.pop()
    }

    fn pop(&mut self) -> Result<Option<DirEntry>> {
        let Some(e) = self.entries.pop_front() else {
            return Ok(None);
        };
        if self.last.as_ref().is_some_and(|l| *l >= e.name) {
            return Err(Error::corrupt(
                format!("directory {}", self.tree),
                format!("names out of order at {:?}", e.display_name()),
            ));
        }
        self.last = Some(e.name.clone());
        Ok(Some(e))
    }

    /// Advances to `name`: entries before it are passed over (their nodes
    /// not read where possible). Returns the entry called `name`, if any;
    /// an entry after it stays next.
    pub async fn seek(&mut self, name: &[u8]) -> Result<Option<DirEntry>> {
        loop {
            if self.entries.is_empty() {
                self.fill(Some(name)).await?;
            }
            match self.entries.front() {
                None => return Ok(None),
                Some(e) if e.name.as_slice() > name => return Ok(None),
                Some(e) if e.name.as_slice() == name => return self.pop(),
                Some(_) => {
                    self.pop()?;
                }
            }
        }
    }
}

/// An entry met by a [`Walk`].
#[derive(Debug, Clone)]
pub struct Walked {
    /// Its path from the walk's start, `/`-separated.
    pub path: Vec<u8>,
    /// Directories above it (0 for the walk's first level).
    pub depth: usize,
    /// The entry.
    pub entry: DirEntry,
}

impl Walked {
    /// The path for messages (lossy UTF-8).
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Every entry below a directory, in tree order.
#[derive(Debug)]
pub struct Walk {
    source: NodeSource,
    stack: Vec<(Vec<u8>, DirCursor)>,
    /// The directory just yielded, entered on the next call unless skipped.
    descend: Option<(Vec<u8>, BlobId)>,
    /// A single entry to yield first.
    first: Option<Walked>,
    /// The prefix the paths are relative to (for `walk_at`).
    base: Vec<u8>,
    /// Depth of the entries of the first cursor.
    offset: usize,
}

impl Walk {
    async fn new(source: NodeSource, tree: BlobId, prefix: Vec<u8>) -> Result<Walk> {
        let cursor = DirCursor::open(source.clone(), tree).await?;
        Ok(Walk {
            source,
            stack: vec![(prefix, cursor)],
            descend: None,
            first: None,
            base: Vec::new(),
            offset: 0,
        })
    }

    fn single(source: NodeSource, base: Vec<u8>, entry: DirEntry) -> Walk {
        let path = join(&base, &entry.name);
        Walk {
            source,
            stack: Vec::new(),
            descend: None,
            first: Some(Walked {
                path,
                depth: 0,
                entry,
            }),
            base,
            offset: 1,
        }
    }

    /// The path prefix below which [`Walked::path`]s are (empty for a whole tree).
    pub fn base(&self) -> &[u8] {
        &self.base
    }

    /// Does not enter the directory just yielded.
    pub fn skip(&mut self) {
        self.descend = None;
    }

    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Walked>> {
        if let Some(w) = self.first.take() {
            if let Node::Dir { tree } = w.entry.node {
                self.descend = Some((w.path.clone(), tree));
            }
            return Ok(Some(w));
        }
        if let Some((path, tree)) = self.descend.take() {
            if self.stack.len() >= MAX_DEPTH {
                return Err(Error::corrupt(
                    format!("directory {tree}"),
                    format!(
                        "{:?} is more than {MAX_DEPTH} directories deep",
                        String::from_utf8_lossy(&path)
                    ),
                ));
            }
            let cursor = DirCursor::open(self.source.clone(), tree).await?;
            self.stack.push((path, cursor));
        }
        loop {
            let Some((prefix, cursor)) = self.stack.last_mut() else {
                return Ok(None);
            };
            match cursor.next().await? {
                None => {
                    self.stack.pop();
                }
                Some(entry) => {
                    let path = join(prefix, &entry.name);
                    if let Node::Dir { tree } = entry.node {
                        self.descend = Some((path.clone(), tree));
                    }
                    let depth = self.stack.len() - 1 + self.offset;
                    return Ok(Some(Walked { path, depth, entry }));
                }
            }
        }
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
    p.extend_from_slice(prefix);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Builds the directory tree of a version-1 item list: every item becomes
/// an entry, and every directory its names imply but it does not list
/// becomes a bare directory entry.
pub fn tree_of_items(items: &[Item]) -> Result<(BlobId, IdMap<BlobId, Bytes>)> {
    let mut sorted: Vec<(Vec<&[u8]>, &Item)> = items
        .iter()
        .map(|i| (i.name.as_bytes().split(|&b| b == b'/').collect(), i))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tree = TreeAssembler::new();
    let mut out = Vec::new();
    let mut open: Vec<&[u8]> = Vec::new();
    for (parts, item) in sorted {
        let (name, parents) = parts
            .split_last()
            .ok_or_else(|| Error::invalid("an empty item name"))?;
        let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for (depth, part) in parents.iter().enumerate().skip(common) {
            tree.push(
                depth,
                DirEntry::bare(
                    part.to_vec(),
                    Node::Dir {
                        tree: BlobId([0; 32]),
                    },
                ),
                &mut out,
            )?;
            open.push(part);
        }
        let entry = entry_of_item(name, item);
        let is_dir = item.kind == ItemKind::Dir;
        tree.push(parents.len(), entry, &mut out)?;
        if is_dir {
            open.push(name);
        }
    }
    let (root, _) = tree.finish(&mut out)?;
    Ok((
        root,
        out.into_iter()
            .map(|n| (n.id, Bytes::from(n.bytes)))
            .collect(),
    ))
}

fn entry_of_item(name: &[u8], item: &Item) -> DirEntry {
    let node = match item.kind {
        ItemKind::File => Node::File {
            root: item.tree.unwrap_or(BlobId([0; 32])),
            chunks: item.chunks.unwrap_or(0),
            chunker: item
                .chunker
                .filter(|c| c.validate().is_ok())
                .unwrap_or(ChunkerParams::DEFAULT),
        },
        ItemKind::Dir => Node::Dir {
            tree: BlobId([0; 32]),
        },
        ItemKind::Symlink => Node::Symlink {
            target: item.target.clone().unwrap_or_default().into_bytes(),
        },
    };
    DirEntry {
        mode: item.mode.map(|m| m & 0o7777),
        mtime: item.mtime.map(Time::from_timestamp),
        size: item.len,
        ..DirEntry::bare(name.to_vec(), node)
    }
}

/// The most entries [`with_items`] lists (memory grows with them).
pub const MAX_ITEMS: usize = 1 << 20;

/// `snapshot` with `manifest.items` listing every entry of its tree that a
/// version-1 manifest can express (files, directories, symlinks), as a
/// version-1 snapshot has them. For code that looks up a few items by
/// name (CouchDB dumps); memory grows with the number of entries.
pub async fn with_items(reader: Arc<BlobReader>, snapshot: &Snapshot) -> Result<Snapshot> {
    if snapshot.manifest.root.is_none() {
        return Ok(snapshot.clone());
    }
    let context = |e| crate::ops::restore::in_item(e, &snapshot.id, "/");
    let tree = SnapshotTree::open(reader, snapshot)?;
    let mut walk = tree.walk().await.map_err(context)?;
    let mut items = Vec::new();
    while let Some(w) = walk.next().await.map_err(context)? {
        if items.len() >= MAX_ITEMS {
            return Err(Error::corrupt(
                format!("snapshot {}", snapshot.id),
                format!(
                    "holds more than {MAX_ITEMS} entries, too many to list as items (a CouchDB \
                     snapshot holds a few per database); restore it with `cairn restore`"
                ),
            ));
        }
        let name = String::from_utf8(w.path.clone())
            .map_err(|_| Error::invalid(format!("{:?} is not UTF-8", w.display())))?;
        let e = &w.entry;
        let one_chunk = e.one_chunk;
        let (kind, tree, chunks, chunker, target) = match &e.node {
            Node::File {
                root,
                chunks,
                chunker,
            } => (
                ItemKind::File,
                Some(*root),
                Some(*chunks),
                Some(*chunker),
                None,
            ),
            Node::Dir { .. } => (ItemKind::Dir, None, None, None, None),
            Node::Symlink { target } => (
                ItemKind::Symlink,
                None,
                None,
                None,
                Some(String::from_utf8_lossy(target).into_owned()),
            ),
            _ => continue,
        };
        items.push(Item {
            name,
            kind,
            len: e.size,
            tree,
            chunks,
            chunker,
            mode: e.mode,
            mtime: e.mtime.and_then(Time::to_timestamp),
            target,
            one_chunk,
        });
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = snapshot.clone();
    out.manifest.items = items;
    Ok(out)
}

/// How many of `entries` (at least one) to expand to cover `want` bytes,
/// at most [`MAX_NODES_PER_FETCH`].
fn nodes_covering(entries: &VecDeque<TreeEntry>, want: u64) -> usize {
    let mut covered = 0u64;
    let n = entries
        .iter()
        .take(MAX_NODES_PER_FETCH)
        .take_while(|e| {
            let more = covered < want;
            covered = covered.saturating_add(e.len);
            more
        })
        .count();
    n.max(1).min(entries.len())
}

/// Walks an item's tree, yielding its chunks in order a window at a time.
#[derive(Debug)]
pub struct TreeWalker<'a> {
    reader: &'a BlobReader,
    /// Pending entries per level, deepest level last.
    stack: Vec<(u8, VecDeque<TreeEntry>)>,
    pub(crate) chunks_seen: u64,
    /// The ids of the nodes read so far (root first), when asked for.
    nodes: Option<Vec<BlobId>>,
}

impl<'a> TreeWalker<'a> {
    /// Starts at a file's content: `root` covering `len` bytes, or, for a
    /// file of one chunk named directly (format-spec §10.2), that chunk.
    pub async fn open(
        reader: &'a BlobReader,
        root: BlobId,
        len: u64,
        one_chunk: bool,
    ) -> Result<TreeWalker<'a>> {
        if !one_chunk {
            return TreeWalker::new(reader, root, len).await;
        }
        Ok(TreeWalker {
            reader,
            stack: vec![(0, vec![TreeEntry { id: root, len }].into())],
            chunks_seen: 0,
            nodes: None,
        })
    }

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
            let n = nodes_covering(entries, budget - taken);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(lens: &[u64]) -> VecDeque<TreeEntry> {
        lens.iter()
            .map(|&len| TreeEntry {
                id: BlobId::of(&len.to_le_bytes()),
                len,
            })
            .collect()
    }

    #[test]
    fn a_fetch_expands_the_nodes_that_cover_the_rest_of_the_window() {
        let e = entries(&[10, 10, 10, 10]);
        assert_eq!(nodes_covering(&e, 25), 3);
        assert_eq!(nodes_covering(&e, 20), 2);
        assert_eq!(nodes_covering(&e, 1), 1);
        // At least one, and never more than there are.
        assert_eq!(nodes_covering(&e, 0), 1);
        assert_eq!(nodes_covering(&e, 1000), 4);
        // Nodes claiming nothing do not make a fetch unbounded.
        let empty = entries(&vec![0; MAX_NODES_PER_FETCH + 10]);
        assert_eq!(nodes_covering(&empty, 1), MAX_NODES_PER_FETCH);
    }
}
