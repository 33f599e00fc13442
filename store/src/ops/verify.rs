//! Verify: signatures, structure, and (with `--read-data`) every byte.
//!
//! 1. Every snapshot's hash, signature and signer; every index object.
//! 2. Every indexed pack exists with the recorded length.
//! 3. With read-data (all packs or a random subset): each pack is read
//!    whole, its hash and trailer checked, every frame decoded and every blob
//!    hashed. Damage is recorded per blob, so a flipped bit condemns only the
//!    blobs it touches.
//! 4. Every snapshot's items are walked: tree nodes read and checked, every
//!    chunk looked up in the index and against the damage found above.
//!
//! The report names each damaged snapshot and item and why; repository-level
//! problems (a damaged index object, a pack with a bad trailer) are listed
//! apart. It reads past damage: nothing here stops at the first problem.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{ObjectDir, ObjectKey};
use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::frame::decode_frame;
use crate::id::{BlobId, IdMap, PackId, SnapshotId};
use crate::index::{Index, PackInfo};
use crate::manifest::{ItemKind, Snapshot, Trust};
use crate::pack::decode_pack;
use crate::repo::Repository;
use crate::tree::TreeNode;

/// Problems listed per item before the rest are counted.
const MAX_PROBLEMS_PER_ITEM: usize = 8;

/// How much data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only: tree nodes are read, chunks are not.
    None,
    /// Every pack.
    All,
    /// A random share of the packs, in percent.
    Subset(f64),
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// How much data to read.
    pub read_data: ReadData,
    /// Packs read at once.
    pub concurrency: usize,
}

/// A problem with an object.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The object.
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

/// A snapshot that cannot be fully restored or trusted.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its time, when the manifest could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// Why the snapshot as a whole is refused (bad signature, corrupt manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its damaged items.
    pub items: Vec<DamagedItem>,
}

/// A damaged item.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedItem {
    /// Its name.
    pub name: String,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots listed.
    pub snapshots: u64,
    /// Snapshots whose every item is intact.
    pub snapshots_intact: u64,
    /// Packs the index names.
    pub packs: u64,
    /// Packs read in full.
    pub packs_read: u64,
    /// Bytes read from packs.
    pub bytes_read: u64,
    /// Blobs hashed while reading packs.
    pub blobs_checked: u64,
    /// Packs present but named by no index (left by interrupted or failed
    /// backups): harmless garbage, reclaimable by garbage collection.
    pub unindexed_packs: u64,
    /// Repository-level problems.
    pub problems: Vec<Problem>,
    /// Damaged snapshots, by id.
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.damaged_snapshots.is_empty()
    }
}

/// Damage known per pack and per blob.
#[derive(Default)]
struct Damage {
    /// Packs that are missing or the wrong length: all their blobs are suspect.
    packs: IdMap<PackId, String>,
    /// Blobs whose bytes failed a check.
    blobs: IdMap<BlobId, String>,
}

impl Damage {
    fn of_chunk(&self, index: &Index, id: &BlobId) -> Option<String> {
        let Some(loc) = index.get(id) else {
            return Some(format!("chunk {id} is in no index"));
        };
        if let Some(reason) = self.blobs.get(id) {
            return Some(format!("chunk {id}: {reason}"));
        }
        let pack = index.pack(loc.pack).id;
        self.packs
            .get(&pack)
            .map(|reason| format!("chunk {id}: {reason}"))
    }
}

impl Repository {
    /// Verifies the repository; errors only when it cannot be checked at all
    /// (storage unreachable), never for damage, which goes in the report.
    pub async fn verify(&self, trust: &Trust, options: &VerifyOptions) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let list = self.load_snapshots(trust).await?;
        report.snapshots = (list.snapshots.len() + list.rejected.len()) as u64;
        let mut damaged: BTreeMap<SnapshotId, DamagedSnapshot> = BTreeMap::new();
        for (id, e) in &list.rejected {
            damaged.insert(
                *id,
                DamagedSnapshot {
                    id: *id,
                    time: None,
                    reason: Some(e.to_string()),
                    items: vec![],
                },
            );
        }

        let (index, damaged_index) = self.load_index_tolerant().await?;
        for (id, e) in damaged_index {
            report.problems.push(Problem {
                object: format!("index {id}"),
                detail: format!(
                    "{e}; the packs it lists are unknown, so their chunks count as missing"
                ),
            });
        }
        report.packs = index.packs().len() as u64;

        // 2. Every indexed pack is present with its recorded length.
        let mut damage = Damage::default();
        let present: IdMap<PackId, u64> = self
            .backend()
            .list(ObjectDir::Packs)
            .await?
            .into_iter()
            .filter_map(|o| match o.key {
                ObjectKey::Pack(id) => Some((id, o.len)),
                _ => None,
            })
            .collect();
        for pack in index.packs() {
            let reason = match present.get(&pack.id) {
                None => Some(format!("pack {} is missing", pack.id)),
                Some(&len) if len != pack.len => Some(format!(
                    "pack {} is {len} bytes, the index says {} (truncated or replaced)",
                    pack.id, pack.len
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                report.problems.push(Problem {
                    object: format!("pack {}", pack.id),
                    detail: reason.clone(),
                });
                damage.packs.insert(pack.id, reason);
            }
        }
        report.unindexed_packs = present
            .keys()
            .filter(|id| index.pack_position(id).is_none())
            .count() as u64;

        // 3. Read the data.
        let to_read: Vec<&PackInfo> = index
            .packs()
            .iter()
            .filter(|p| !damage.packs.contains_key(&p.id) && wanted(options.read_data, &p.id))
            .collect();
        let mut blobs_by_pack: Vec<Vec<(BlobId, u32, u32, u32)>> =
            vec![Vec::new(); index.packs().len()];
        if options.read_data != ReadData::None {
            for (id, loc) in index.blobs() {
                blobs_by_pack[loc.pack as usize].push((*id, loc.frame, loc.offset, loc.len));
            }
        }
        let results: Vec<Result<PackCheck>> = futures::stream::iter(to_read)
            .map(|pack| {
                let backend = self.backend().clone();
                let pack = pack.clone();
                let position = index.pack_position(&pack.id).unwrap_or_default() as usize;
                let blobs = std::mem::take(&mut blobs_by_pack[position]);
                async move {
                    let bytes = backend.get(&ObjectKey::Pack(pack.id)).await?;
                    Ok(crate::cpu::run(move || check_pack(&pack, blobs, &bytes)).await)
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        for result in results {
            let check = match result {
                Ok(check) => check,
                Err(e @ (Error::Unreachable { .. } | Error::AccessDenied { .. })) => return Err(e),
                Err(e) => {
                    report.problems.push(Problem {
                        object: "pack".into(),
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            report.packs_read += 1;
            report.bytes_read += check.len;
            report.blobs_checked += check.blobs_checked;
            report.problems.extend(check.problems);
            damage.blobs.extend(check.bad_blobs);
        }

        // 4. Walk every snapshot.
        let repo = self.clone().with_index(index);
        let reader = BlobReader::new(repo.clone(), 8, 16 << 20);
        let mut walker = Walker {
            reader: &reader,
            damage: &damage,
            memo: std::collections::HashMap::new(),
        };
        for snapshot in &list.snapshots {
            let mut items = walker.snapshot(snapshot).await?;
            // CouchDB dumps whose chunks are intact: their content too.
            if items.is_empty() && crate::couch::verify::is_couchdb(snapshot) {
                items = crate::couch::verify::check_snapshot(
                    &repo,
                    snapshot,
                    options.read_data == ReadData::All,
                )
                .await?;
            }
            if items.is_empty() {
                report.snapshots_intact += 1;
            } else {
                damaged.insert(
                    snapshot.id,
                    DamagedSnapshot {
                        id: snapshot.id,
                        time: Some(snapshot.manifest.time),
                        reason: None,
                        items,
                    },
                );
            }
        }
        report.damaged_snapshots = damaged.into_values().collect();
        Ok(report)
    }
}

/// Whether to read this pack: all, none, or a random share.
fn wanted(read: ReadData, _pack: &PackId) -> bool {
    match read {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Subset(percent) => {
            let mut r = [0u8; 4];
            if getrandom::fill(&mut r).is_err() {
                return true;
            }
            f64::from(u32::from_le_bytes(r)) < f64::from(u32::MAX) * (percent / 100.0)
        }
    }
}

/// What reading one pack found.
pub(crate) struct PackCheck {
    pub len: u64,
    pub blobs_checked: u64,
    pub problems: Vec<Problem>,
    pub bad_blobs: Vec<(BlobId, String)>,
}

/// Checks a whole pack: its hash and trailer, then every blob the index
/// places in it, frame by frame (so damage is pinned to the blobs it hits).
pub(crate) fn check_pack(
    pack: &PackInfo,
    blobs: Vec<(BlobId, u32, u32, u32)>,
    bytes: &[u8],
) -> PackCheck {
    let mut check = PackCheck {
        len: bytes.len() as u64,
        blobs_checked: 0,
        problems: Vec::new(),
        bad_blobs: Vec::new(),
    };
    if let Err(e) = decode_pack(bytes, pack.id) {
        check.problems.push(Problem {
            object: format!("pack {}", pack.id),
            detail: match e {
                Error::Corrupt { detail, .. } => detail,
                other => other.to_string(),
            },
        });
    }
    // The index says which blobs are where; check each of them.
    let mut by_frame: BTreeMap<u32, Vec<(BlobId, u32, u32)>> = BTreeMap::new();
    for (id, frame, offset, len) in blobs {
        by_frame.entry(frame).or_default().push((id, offset, len));
    }
    let results: Vec<(u64, Vec<(BlobId, String)>)> = by_frame
        .into_par_iter()
        .map(|(frame, blobs)| {
            let Some(&f) = pack.frames.get(frame as usize) else {
                let why = format!("frame {frame} is not in pack {}", pack.id);
                return (
                    blobs.len() as u64,
                    blobs.iter().map(|b| (b.0, why.clone())).collect(),
                );
            };
            let (start, end) = (f.offset as usize, f.offset as usize + f.stored_len as usize);
            let raw = match bytes.get(start..end) {
                None => Err(format!(
                    "frame {frame} lies beyond the end of pack {}",
                    pack.id
                )),
                Some(stored) => decode_frame(f.codec, stored, f.raw_len)
                    .map_err(|e| format!("frame {frame} of pack {} does not decode: {e}", pack.id)),
            };
            let mut bad = Vec::new();
            for (id, offset, len) in &blobs {
                let ok = raw.as_ref().is_ok_and(|raw| {
                    raw.get(*offset as usize..(*offset + *len) as usize)
                        .is_some_and(|b| BlobId::of(b) == *id)
                });
                if !ok {
                    let why = match &raw {
                        Err(e) => e.clone(),
                        Ok(_) => format!("hash mismatch in pack {}", pack.id),
                    };
                    bad.push((*id, why));
                }
            }
            (blobs.len() as u64, bad)
        })
        .collect();
    for (n, bad) in results {
        check.blobs_checked += n;
        check.bad_blobs.extend(bad);
    }
    if !check.bad_blobs.is_empty() {
        check.problems.push(Problem {
            object: format!("pack {}", pack.id),
            detail: format!("{} blobs fail their hash check", check.bad_blobs.len()),
        });
    }
    check
}

/// Walks snapshots' trees, remembering each node's findings.
struct Walker<'a> {
    reader: &'a BlobReader,
    damage: &'a Damage,
    /// Problems found under each node checked so far (empty: intact), by
    /// node, expected level and expected length.
    memo: std::collections::HashMap<(BlobId, Option<u8>, u64), Arc<Vec<String>>>,
}

impl Walker<'_> {
    async fn snapshot(&mut self, snapshot: &Snapshot) -> Result<Vec<DamagedItem>> {
        let mut damaged = Vec::new();
        for item in &snapshot.manifest.items {
            let (ItemKind::File, Some(root)) = (item.kind, item.tree) else {
                continue;
            };
            let mut problems = self.node(root, None, item.len).await?.as_ref().clone();
            if !problems.is_empty() {
                if problems.len() > MAX_PROBLEMS_PER_ITEM {
                    let more = problems.len() - MAX_PROBLEMS_PER_ITEM;
                    problems.truncate(MAX_PROBLEMS_PER_ITEM);
                    problems.push(format!("and {more} more"));
                }
                damaged.push(DamagedItem {
                    name: item.name.clone(),
                    problems,
                });
            }
        }
        Ok(damaged)
    }

    /// Problems under the node `id`, expected at `level` (any for a root)
    /// covering `len` bytes.
    fn node<'s>(
        &'s mut self,
        id: BlobId,
        level: Option<u8>,
        len: u64,
    ) -> futures::future::BoxFuture<'s, Result<Arc<Vec<String>>>> {
        Box::pin(async move {
            if let Some(found) = self.memo.get(&(id, level, len)) {
                return Ok(Arc::clone(found));
            }
            let problems = match self.read_node(id).await? {
                Err(problem) => vec![problem],
                Ok(node)
                    if level.is_some_and(|l| l != node.level)
                        || node.content_len() != Some(len) =>
                {
                    vec![format!(
                        "tree node {id}: level {} covering {:?} bytes, expected {level:?} covering {len}",
                        node.level,
                        node.content_len()
                    )]
                }
                Ok(node) if node.level == 0 => {
                    let index = self.reader.repo().index();
                    node.entries
                        .iter()
                        .filter_map(|e| {
                            self.damage.of_chunk(index, &e.id).or_else(|| {
                                let stored = index.get(&e.id).map(|l| u64::from(l.len));
                                (stored != Some(e.len)).then(|| {
                                    format!(
                                        "chunk {}: the tree says {} bytes, the index {:?}",
                                        e.id, e.len, stored
                                    )
                                })
                            })
                        })
                        .collect()
                }
                Ok(node) => {
                    // Fetch the children not seen yet in one batch (coalesced
                    // reads, one hash check); a failure there is found again,
                    // child by child, below.
                    let unseen: Vec<BlobId> = node
                        .entries
                        .iter()
                        .filter(|e| !self.memo.contains_key(&(e.id, Some(node.level - 1), e.len)))
                        .map(|e| e.id)
                        .filter(|id| {
                            self.damage
                                .of_chunk(self.reader.repo().index(), id)
                                .is_none()
                        })
                        .collect();
                    if unseen.len() > 1 {
                        let _ = self.reader.read_blobs(&unseen).await;
                    }
                    let mut problems = Vec::new();
                    for e in &node.entries {
                        problems.extend(
                            self.node(e.id, Some(node.level - 1), e.len)
                                .await?
                                .iter()
                                .cloned(),
                        );
                    }
                    problems
                }
            };
            let problems = Arc::new(problems);
            self.memo.insert((id, level, len), Arc::clone(&problems));
            Ok(problems)
        })
    }

    /// Reads a tree node; a damaged one is a finding, an unreachable store an error.
    async fn read_node(&self, id: BlobId) -> Result<std::result::Result<TreeNode, String>> {
        if let Some(problem) = self.damage.of_chunk(self.reader.repo().index(), &id) {
            return Ok(Err(problem.replacen("chunk", "tree node", 1)));
        }
        match self.reader.read_blob(id).await {
            Ok(bytes) => {
                Ok(TreeNode::decode(&bytes, &format!("tree node {id}")).map_err(|e| e.to_string()))
            }
            Err(e @ (Error::Unreachable { .. } | Error::AccessDenied { .. })) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}
