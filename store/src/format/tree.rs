//! Chunk lists as content-defined trees, so unchanged runs cost nothing.
//!
//! An item's chunk list is itself stored as blobs: tree nodes. A level-0 node
//! lists chunks; a level-n node lists level-(n-1) nodes; each entry carries
//! the content length beneath it. A node ends after an entry whose id ends a
//! group (`u32 LE of id[0..4] % avg_fanout == avg_fanout - 1`, once it has at
//! least `min_fanout` entries) or when it reaches `max_fanout` entries, so
//! node boundaries depend on content, like chunk boundaries, and a small
//! change to an item rewrites only the nodes on its path. The root is the
//! single node of the first level that produces just one; its id is the
//! item's content root: it commits to every chunk id, in order.
//!
//! ```text
//! node = "CAIRNTR\x01" | level u8 | count u32 | count × (id [32] | len u64)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::wire::{Put, Reader, len_u32};
use crate::id::BlobId;

/// First bytes of every tree node.
pub const TREE_MAGIC: [u8; 8] = *b"CAIRNTR\x01";
/// Bytes per entry.
pub const ENTRY_LEN: usize = 40;
/// Deepest tree a reader accepts.
pub const MAX_LEVEL: u8 = 32;

/// Tree shape parameters, recorded in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeParams {
    /// Expected entries per node; a power of two.
    pub avg_fanout: u32,
    /// No node ends on a content boundary before this many entries (at least 2).
    pub min_fanout: u32,
    /// No node has more entries.
    pub max_fanout: u32,
}

impl TreeParams {
    /// The default for new repositories.
    pub const DEFAULT: TreeParams = TreeParams {
        avg_fanout: 8,
        min_fanout: 2,
        max_fanout: 256,
    };

    /// Checks the ranges (a reader never needs these: any tree decodes).
    pub fn validate(&self) -> Result<()> {
        if !self.avg_fanout.is_power_of_two()
            || self.min_fanout < 2
            || self.min_fanout > self.max_fanout
            || self.avg_fanout > self.max_fanout
            || self.max_fanout > MAX_FANOUT
        {
            return Err(Error::invalid(format!(
                "tree parameters {self:?} out of range"
            )));
        }
        Ok(())
    }

    fn ends_group(&self, id: &BlobId, count: usize) -> bool {
        if count >= self.max_fanout as usize {
            return true;
        }
        let mut word = [0u8; 4];
        word.copy_from_slice(&id.0[..4]);
        count >= self.min_fanout as usize
            && u32::from_le_bytes(word) % self.avg_fanout == self.avg_fanout - 1
    }
}

/// The most entries a reader accepts in one node.
pub const MAX_FANOUT: u32 = 65536;

/// One entry of a node: a chunk (level 0) or a child node, and the content length it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeEntry {
    /// The chunk or child node.
    pub id: BlobId,
    /// Content bytes beneath it.
    pub len: u64,
}

/// A decoded tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// 0 for a list of chunks.
    pub level: u8,
    /// The entries, in content order.
    pub entries: Vec<TreeEntry>,
}

impl TreeNode {
    /// The node's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.entries.len() * ENTRY_LEN);
        out.put_bytes(&TREE_MAGIC);
        out.put_u8(self.level);
        out.put_u32(len_u32(self.entries.len()));
        for e in &self.entries {
            out.put_bytes(e.id.as_bytes());
            out.put_u64(e.len);
        }
        out
    }

    /// Parses a node; `object` names it in errors.
    pub fn decode(bytes: &[u8], object: &str) -> Result<TreeNode> {
        let bad = |d: String| Error::corrupt(object, format!("tree node: {d}"));
        let mut r = Reader::new(bytes);
        if r.array::<8>().map_err(|e| bad(e.to_string()))? != TREE_MAGIC {
            return Err(bad("magic".into()));
        }
        let level = r.u8().map_err(|e| bad(e.to_string()))?;
        let count = r.u32().map_err(|e| bad(e.to_string()))?;
        if level > MAX_LEVEL || count > MAX_FANOUT || r.remaining() != count as usize * ENTRY_LEN {
            return Err(bad(format!(
                "level {level}, {count} entries in {} bytes",
                r.remaining()
            )));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = BlobId(r.id().map_err(|e| bad(e.to_string()))?);
            let len = r.u64().map_err(|e| bad(e.to_string()))?;
            entries.push(TreeEntry { id, len });
        }
        Ok(TreeNode { level, entries })
    }

    /// Content length beneath this node.
    pub fn content_len(&self) -> Option<u64> {
        self.entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.len))
    }
}

/// Builds a tree from a stream of chunk entries, emitting nodes as they fill.
#[derive(Debug)]
pub struct TreeBuilder {
    params: TreeParams,
    /// Entries waiting at each level.
    levels: Vec<Vec<TreeEntry>>,
    /// Nodes emitted at each level.
    emitted: Vec<u64>,
    /// The last node emitted at each level.
    last: Vec<Option<BlobId>>,
}

/// A node ready to store as a blob.
#[derive(Debug, Clone)]
pub struct EncodedNode {
    /// Its id.
    pub id: BlobId,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl TreeBuilder {
    /// A builder for an empty item.
    pub fn new(params: TreeParams) -> Self {
        TreeBuilder {
            params,
            levels: vec![Vec::new()],
            emitted: vec![0],
            last: vec![None],
        }
    }

    /// Adds the next chunk; appends any node that completed to `out`.
    pub fn push(&mut self, id: BlobId, len: u64, out: &mut Vec<EncodedNode>) {
        self.push_at(0, TreeEntry { id, len }, out);
    }

    fn push_at(&mut self, level: usize, entry: TreeEntry, out: &mut Vec<EncodedNode>) {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
            self.emitted.push(0);
            self.last.push(None);
        }
        self.levels[level].push(entry);
        if self.params.ends_group(&entry.id, self.levels[level].len()) {
            self.close(level, out);
        }
    }

    fn close(&mut self, level: usize, out: &mut Vec<EncodedNode>) {
        let entries = std::mem::take(&mut self.levels[level]);
        let node = TreeNode {
            level: u8::try_from(level).unwrap_or(u8::MAX),
            entries,
        };
        let len = node.content_len().unwrap_or(u64::MAX);
        let bytes = node.encode();
        let id = BlobId::of(&bytes);
        self.emitted[level] += 1;
        self.last[level] = Some(id);
        out.push(EncodedNode { id, bytes });
        self.push_at(level + 1, TreeEntry { id, len }, out);
    }

    /// Finishes the tree: appends the remaining nodes and returns the root id.
    pub fn finish(mut self, out: &mut Vec<EncodedNode>) -> BlobId {
        let mut level = 0;
        loop {
            if !self.levels[level].is_empty() || self.emitted[level] == 0 {
                self.close(level, out);
            }
            if self.emitted[level] == 1 {
                // This level made exactly one node: it is the root. The entry
                // it pushed one level up is discarded.
                return self.last[level].unwrap_or(BlobId([0; 32]));
            }
            level += 1;
        }
    }
}

/// Builds the whole tree of a list of chunks at once: the reference form.
pub fn build_tree(params: TreeParams, chunks: &[TreeEntry]) -> (BlobId, Vec<EncodedNode>) {
    let mut b = TreeBuilder::new(params);
    let mut nodes = Vec::new();
    for c in chunks {
        b.push(c.id, c.len, &mut nodes);
    }
    let root = b.finish(&mut nodes);
    (root, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdMap;
    use proptest::prelude::*;

    fn chunk(i: u64) -> TreeEntry {
        TreeEntry {
            id: BlobId::of(&i.to_le_bytes()),
            len: 1000 + i % 7,
        }
    }

    /// Walks a tree from its root back to the chunk list.
    fn flatten(root: BlobId, nodes: &[EncodedNode]) -> Vec<TreeEntry> {
        let by_id: IdMap<BlobId, TreeNode> = nodes
            .iter()
            .map(|n| (n.id, TreeNode::decode(&n.bytes, "t").unwrap()))
            .collect();
        fn walk(id: BlobId, by_id: &IdMap<BlobId, TreeNode>, out: &mut Vec<TreeEntry>) {
            let node = &by_id[&id];
            for e in &node.entries {
                if node.level == 0 {
                    out.push(*e);
                } else {
                    walk(e.id, by_id, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, &by_id, &mut out);
        out
    }

    #[test]
    fn empty_and_single_chunk_items() {
        let (root, nodes) = build_tree(TreeParams::DEFAULT, &[]);
        assert_eq!(nodes.len(), 1);
        assert_eq!(root, nodes[0].id);
        assert!(
            TreeNode::decode(&nodes[0].bytes, "t")
                .unwrap()
                .entries
                .is_empty()
        );

        let (root, nodes) = build_tree(TreeParams::DEFAULT, &[chunk(1)]);
        assert_eq!(flatten(root, &nodes), vec![chunk(1)]);
    }

    #[test]
    fn identical_chunks_terminate() {
        // 1 GiB of zeros: 16384 identical ids, whatever the boundary rule says.
        let zeros: Vec<TreeEntry> = (0..16384).map(|_| chunk(0)).collect();
        let (root, nodes) = build_tree(TreeParams::DEFAULT, &zeros);
        assert_eq!(flatten(root, &nodes).len(), 16384);
    }

    #[test]
    fn a_small_change_rewrites_few_nodes() {
        let list: Vec<TreeEntry> = (0..20_000).map(chunk).collect();
        let (_, before) = build_tree(TreeParams::DEFAULT, &list);
        let mut changed = list.clone();
        changed[10_000] = chunk(999_999);
        let (_, after) = build_tree(TreeParams::DEFAULT, &changed);
        let old: std::collections::HashSet<BlobId> = before.iter().map(|n| n.id).collect();
        let new_nodes = after.iter().filter(|n| !old.contains(&n.id)).count();
        // One node per level on the changed path (a boundary may split one more).
        let levels = after
            .iter()
            .map(|n| TreeNode::decode(&n.bytes, "t").unwrap().level)
            .max()
            .unwrap() as usize
            + 1;
        assert!(
            new_nodes <= levels + 1,
            "{new_nodes} nodes rewritten, {levels} levels"
        );
        assert!(after.len() > 2000);
    }

    proptest! {
        #[test]
        fn trees_flatten_back_to_their_chunks(ids in proptest::collection::vec(0u64..50, 0..3000)) {
            let list: Vec<TreeEntry> = ids.iter().map(|&i| chunk(i)).collect();
            let params = TreeParams { avg_fanout: 8, min_fanout: 2, max_fanout: 32 };
            let (root, nodes) = build_tree(params, &list);
            prop_assert_eq!(flatten(root, &nodes), list);
        }
    }
}
