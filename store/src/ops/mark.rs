//! Mark: every blob the given snapshots reach: directory nodes, chunk-list
//! nodes and chunks.
//!
//! Directory trees (format v2) are read first, level by level, each
//! directory node once however many snapshots share it; the chunk-list
//! roots their files name then go the same way down to the chunks.
//!
//! Trees are read breadth first, a batch of nodes at a time, each node
//! checked against its id, and each node's subtree visited once however many
//! snapshots share it. A node or chunk that is missing or damaged is an
//! error: garbage collection must not decide what is garbage from an
//! incomplete picture.
//!
//! Whether an id is a node or a chunk is its parent's claim (its level),
//! and a signer may lie: a node listed as a chunk by one tree is still
//! expanded when another reaches it as a node. So the nodes expanded are
//! kept apart from the blobs marked live.

use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::format::dir::{DirNode, Node};
use crate::format::manifest::{ItemKind, Snapshot};
use crate::format::tree::TreeNode;
use crate::id::{BlobId, IdSet};
use crate::repo::IndexedRepository;

/// Tree nodes read at once.
const BATCH: usize = 512;

/// The blobs `snapshots` reach, added to `live`; `nodes` holds the tree
/// nodes already expanded (by an earlier call with the same sets), whose
/// subtrees cost nothing.
pub async fn mark(
    repo: &IndexedRepository,
    snapshots: &[Snapshot],
    live: &mut IdSet<BlobId>,
    nodes: &mut IdSet<BlobId>,
) -> Result<()> {
    let reader = BlobReader::new(repo.clone(), 8, 16 << 20);
    let mut frontier: Vec<BlobId> = Vec::new();
    let mut dirs: Vec<BlobId> = Vec::new();
    // Files of one chunk name it directly: live, not expanded.
    let mut direct: Vec<BlobId> = Vec::new();
    for s in snapshots {
        if let Some(root) = s.manifest.root
            && nodes.insert(root)
        {
            live.insert(root);
            dirs.push(root);
        }
        for item in &s.manifest.items {
            if let (ItemKind::File, Some(root)) = (item.kind, item.tree)
                && nodes.insert(root)
            {
                live.insert(root);
                frontier.push(root);
            }
        }
    }
    while !dirs.is_empty() {
        let mut next = Vec::new();
        for batch in dirs.chunks(BATCH) {
            let blobs = reader.read_blobs(batch).await?;
            for (id, bytes) in batch.iter().zip(blobs) {
                let mut reach = |id: BlobId, to: &mut Vec<BlobId>| {
                    if nodes.insert(id) {
                        live.insert(id);
                        to.push(id);
                    }
                };
                match DirNode::decode(&bytes, &format!("directory node {id}"))? {
                    DirNode::Children { children, .. } => {
                        for c in children {
                            reach(c.id, &mut next);
                        }
                    }
                    DirNode::Entries(entries) => {
                        for e in entries {
                            match e.node {
                                Node::Dir { tree } => reach(tree, &mut next),
                                // A file of one chunk names the chunk: live, not expanded.
                                Node::File { root, .. } if e.one_chunk => direct.push(root),
                                Node::File { root, .. } => reach(root, &mut frontier),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        dirs = next;
    }
    for root in direct {
        if !repo.index().contains(&root) {
            return Err(Error::Missing {
                object: format!("chunk {root}"),
                context: " (no index names it)".into(),
            });
        }
        live.insert(root);
    }
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for batch in frontier.chunks(BATCH) {
            let blobs = reader.read_blobs(batch).await?;
            for (id, bytes) in batch.iter().zip(blobs) {
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
                    } else if nodes.insert(e.id) {
                        live.insert(e.id);
                        next.push(e.id);
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(())
}
