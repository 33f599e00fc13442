//! Mark: every blob the given snapshots reach, tree nodes and chunks.
//!
//! Trees are read breadth first, a batch of nodes at a time, each node
//! checked against its id, and each node's subtree visited once however many
//! snapshots share it. A node or chunk that is missing or damaged is an
//! error: garbage collection must not decide what is garbage from an
//! incomplete picture.

use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::id::{BlobId, IdSet};
use crate::manifest::{ItemKind, Snapshot};
use crate::repo::IndexedRepository;
use crate::tree::TreeNode;

/// Tree nodes read at once.
const BATCH: usize = 512;

/// The blobs `snapshots` reach, added to `live`; snapshots whose roots are
/// already in `live` cost nothing.
pub async fn mark(
    repo: &IndexedRepository,
    snapshots: &[Snapshot],
    live: &mut IdSet<BlobId>,
) -> Result<()> {
    let reader = BlobReader::new(repo.clone(), 8, 16 << 20);
    let mut frontier: Vec<BlobId> = Vec::new();
    for s in snapshots {
        for item in &s.manifest.items {
            if let (ItemKind::File, Some(root)) = (item.kind, item.tree)
                && live.insert(root)
            {
                frontier.push(root);
            }
        }
    }
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for batch in frontier.chunks(BATCH) {
            let nodes = reader.read_blobs(batch).await?;
            for (id, bytes) in batch.iter().zip(nodes) {
                let node = TreeNode::decode(&bytes, &format!("tree node {id}"))?;
                for e in node.entries {
                    if node.level == 0 {
                        if !repo.index().contains(&e.id) {
                            return Err(Error::Missing {
                                object: format!("chunk {}", e.id),
                                context: " (no index names it)".into(),
                            });
                        }
                        live.insert(e.id);
                    } else if live.insert(e.id) {
                        next.push(e.id);
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(())
}
