//! Diff: what changed between two snapshots, read directory by directory.
//!
//! The two trees are walked side by side, each directory's entries merged
//! by name; a subdirectory whose node is the same in both is the same tree
//! and is not read at all, so the cost follows what changed, not what is
//! there.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::blob_reader::BlobReader;
use crate::error::Result;
use crate::format::dir::{DirEntry, Node};
use crate::format::manifest::Snapshot;
use crate::id::BlobId;
use crate::ops::walk::{DirCursor, SnapshotTree};

/// How an entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second snapshot.
    Added,
    /// Only in the first.
    Removed,
    /// Content (a file's bytes, a symlink's target, a device number) differs.
    Modified,
    /// Only metadata differs: mode, owner, mtime, extended attributes.
    Metadata,
    /// A different kind of entry under the same name.
    Type,
}

impl Change {
    /// The one-letter mark of the text output.
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
            Change::Type => 'T',
        }
    }
}

/// One difference.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The path, `/`-separated (lossy UTF-8).
    pub path: String,
    /// How it differs.
    pub change: Change,
}

/// Counts of differences.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DiffSummary {
    /// Entries only in the second snapshot.
    pub added: u64,
    /// Entries only in the first.
    pub removed: u64,
    /// Entries whose content differs.
    pub modified: u64,
    /// Entries whose metadata alone differs.
    pub metadata: u64,
    /// Entries of another kind.
    pub type_changed: u64,
    /// Directories not read because they are the same tree in both.
    pub same_subtrees: u64,
}

/// Calls `each` for every difference between `a` and `b`, in tree order.
pub async fn diff(
    reader: Arc<BlobReader>,
    a: &Snapshot,
    b: &Snapshot,
    each: &mut (dyn FnMut(Difference) + Send),
) -> Result<DiffSummary> {
    let ta = SnapshotTree::open(Arc::clone(&reader), a)?;
    let tb = SnapshotTree::open(reader, b)?;
    let mut d = Differ {
        a: ta.clone(),
        b: tb.clone(),
        each,
        summary: DiffSummary::default(),
    };
    d.dirs(String::new(), Some(ta.root()), Some(tb.root()))
        .await?;
    Ok(d.summary)
}

struct Differ<'e> {
    a: SnapshotTree,
    b: SnapshotTree,
    each: &'e mut (dyn FnMut(Difference) + Send),
    summary: DiffSummary,
}

fn join(prefix: &str, e: &DirEntry) -> String {
    if prefix.is_empty() {
        e.display_name()
    } else {
        format!("{prefix}/{}", e.display_name())
    }
}

/// Whether two entries of the same kind differ in metadata (not in the
/// bookkeeping of change detection: ctime, inode, link group).
fn metadata_differs(x: &DirEntry, y: &DirEntry) -> bool {
    x.mode != y.mode
        || x.owner != y.owner
        || x.mtime != y.mtime
        || x.xattrs != y.xattrs
        || x.sparse != y.sparse
}

fn content_differs(x: &DirEntry, y: &DirEntry) -> bool {
    match (&x.node, &y.node) {
        (Node::File { root: r1, .. }, Node::File { root: r2, .. }) => r1 != r2 || x.size != y.size,
        (Node::Dir { .. }, Node::Dir { .. }) => false,
        (n1, n2) => n1 != n2,
    }
}

impl Differ<'_> {
    fn emit(&mut self, path: String, change: Change) {
        match change {
            Change::Added => self.summary.added += 1,
            Change::Removed => self.summary.removed += 1,
            Change::Modified => self.summary.modified += 1,
            Change::Metadata => self.summary.metadata += 1,
            Change::Type => self.summary.type_changed += 1,
        }
        (self.each)(Difference { path, change });
    }

    /// Differences below the directories `a` and `b` (either absent).
    fn dirs(
        &mut self,
        prefix: String,
        a: Option<BlobId>,
        b: Option<BlobId>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if a.is_some() && a == b {
                self.summary.same_subtrees += 1;
                return Ok(());
            }
            let mut ca = match a {
                Some(id) => Some(self.a.dir(id).await?),
                None => None,
            };
            let mut cb = match b {
                Some(id) => Some(self.b.dir(id).await?),
                None => None,
            };
            let mut x = next(&mut ca).await?;
            let mut y = next(&mut cb).await?;
            loop {
                match (x.take(), y.take()) {
                    (None, None) => return Ok(()),
                    (Some(e), None) => {
                        self.gone(&prefix, &e, Change::Removed).await?;
                        x = next(&mut ca).await?;
                    }
                    (None, Some(e)) => {
                        self.gone(&prefix, &e, Change::Added).await?;
                        y = next(&mut cb).await?;
                    }
                    (Some(ea), Some(eb)) if ea.name < eb.name => {
                        self.gone(&prefix, &ea, Change::Removed).await?;
                        x = next(&mut ca).await?;
                        y = Some(eb);
                    }
                    (Some(ea), Some(eb)) if ea.name > eb.name => {
                        self.gone(&prefix, &eb, Change::Added).await?;
                        x = Some(ea);
                        y = next(&mut cb).await?;
                    }
                    (Some(ea), Some(eb)) => {
                        self.pair(&prefix, &ea, &eb).await?;
                        x = next(&mut ca).await?;
                        y = next(&mut cb).await?;
                    }
                }
            }
        })
    }

    /// An entry (and everything below it) only on one side.
    async fn gone(&mut self, prefix: &str, e: &DirEntry, change: Change) -> Result<()> {
        let path = join(prefix, e);
        self.emit(path.clone(), change);
        if let Node::Dir { tree } = e.node {
            let (a, b) = match change {
                Change::Removed => (Some(tree), None),
                _ => (None, Some(tree)),
            };
            self.dirs(path, a, b).await?;
        }
        Ok(())
    }

    async fn pair(&mut self, prefix: &str, ea: &DirEntry, eb: &DirEntry) -> Result<()> {
        let path = join(prefix, ea);
        if ea.node.kind() != eb.node.kind() {
            self.emit(path.clone(), Change::Type);
            if let Node::Dir { tree } = ea.node {
                self.dirs(path.clone(), Some(tree), None).await?;
            }
            if let Node::Dir { tree } = eb.node {
                self.dirs(path, None, Some(tree)).await?;
            }
            return Ok(());
        }
        if content_differs(ea, eb) {
            self.emit(path.clone(), Change::Modified);
        } else if metadata_differs(ea, eb) {
            self.emit(path.clone(), Change::Metadata);
        }
        if let (Node::Dir { tree: ta }, Node::Dir { tree: tb }) = (&ea.node, &eb.node) {
            self.dirs(path, Some(*ta), Some(*tb)).await?;
        }
        Ok(())
    }
}

async fn next(cursor: &mut Option<DirCursor>) -> Result<Option<DirEntry>> {
    match cursor {
        Some(c) => c.next().await,
        None => Ok(None),
    }
}
