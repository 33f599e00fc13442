//! Verify: signatures, structure, and (with `--read-data`) every byte.
//!
//! 1. Every snapshot's hash, signature and signer; every index object.
//! 2. Every indexed pack exists with the recorded length.
//! 3. With read-data (all packs or a random subset): each pack is read
//!    whole, once, its hash and trailer checked, and checked against every
//!    description index objects give of it (their trailer copies): every
//!    frame decoded and every copy of every blob hashed. Damage is recorded
//!    per copy, so a flipped bit condemns only the blobs it touches, and
//!    only when no other copy is intact.
//! 4. Index objects naming damaged packs are reported (an append-only
//!    writer can add a pack whose trailer claims live blobs over garbage,
//!    and an index object naming it): readers fall back past them, and the
//!    report says whether deleting the object by hand is safe.
//! 5. Every snapshot's items are walked: tree nodes read and checked, every
//!    chunk looked up in the index and against the damage found above; a
//!    chunk is damaged only when every copy of it is.
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
use crate::format::dir::Node;
use crate::format::frame::decode_frame;
use crate::format::index::{BlobLocation, Index, PackInfo};
use crate::format::manifest::{ItemKind, Snapshot, Trust};
use crate::format::pack::decode_pack;
use crate::format::tree::TreeNode;
use crate::format::wire::len_u32;
use crate::id::{BlobId, IdMap, PackId, SnapshotId};
use crate::ops::walk::SnapshotTree;
use crate::repo::Repository;

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

/// A deeper check of one kind of snapshot's content, run by
/// [`Repository::verify_with`] on snapshots whose chunks are intact: other
/// crates (`cairn-couch`'s CouchDB check) plug in here without verify
/// knowing them.
#[async_trait::async_trait]
pub trait ContentCheck: Send + Sync {
    /// Whether it checks `snapshot`.
    fn applies(&self, snapshot: &Snapshot) -> bool;
    /// The damaged items of `snapshot`; with `read`, content is read and checked.
    async fn check(
        &self,
        repo: &crate::repo::IndexedRepository,
        snapshot: &Snapshot,
        read: bool,
    ) -> Result<Vec<DamagedItem>>;
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

/// Damage known per pack description and per copy of a blob.
#[derive(Default)]
struct Damage {
    /// Pack descriptions (positions in the index) whose pack is missing or
    /// the wrong length: all their copies are suspect.
    packs: std::collections::HashMap<u32, String>,
    /// Copies (blob, pack position) whose bytes failed a check.
    copies: std::collections::HashMap<(BlobId, u32), String>,
}

impl Damage {
    /// Why a copy is bad, if it is known to be.
    fn of_copy(&self, id: &BlobId, loc: &BlobLocation) -> Option<&String> {
        self.packs
            .get(&loc.pack)
            .or_else(|| self.copies.get(&(*id, loc.pack)))
    }

    /// Why no copy of a chunk can be read (every one is known bad, or none
    /// has the length the tree expects), or `None` if one can.
    fn of_chunk(&self, index: &Index, id: &BlobId, len: Option<u64>) -> Option<String> {
        let mut reasons = Vec::new();
        for loc in index.locations(id) {
            let reason = match self.of_copy(id, &loc) {
                Some(reason) => reason.clone(),
                None => match len {
                    Some(len) if len != u64::from(loc.len) => format!(
                        "the tree says {len} bytes, the index {} (pack {})",
                        loc.len,
                        index.pack(loc.pack).id
                    ),
                    _ => return None,
                },
            };
            reasons.push(reason);
        }
        if reasons.is_empty() {
            return Some(format!("chunk {id} is in no index"));
        }
        Some(format!("chunk {id}: {}", reasons.join("; ")))
    }
}

impl Repository {
    /// Verifies the repository; errors only when it cannot be checked at all
    /// (storage unreachable), never for damage, which goes in the report.
    pub async fn verify(&self, trust: &Trust, options: &VerifyOptions) -> Result<VerifyReport> {
        self.verify_with(trust, options, &[]).await
    }

    /// [`Repository::verify`], then `checks` on every snapshot they apply
    /// to whose chunks are intact (CouchDB dumps: their documents).
    pub async fn verify_with(
        &self,
        trust: &Trust,
        options: &VerifyOptions,
        checks: &[&dyn ContentCheck],
    ) -> Result<VerifyReport> {
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
        report.packs = index
            .packs()
            .iter()
            .map(|p| p.id)
            .collect::<crate::id::IdSet<PackId>>()
            .len() as u64;

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
        for (position, pack) in index.packs().iter().enumerate() {
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
                damage.packs.insert(len_u32(position), reason);
            }
        }
        report.unindexed_packs = present
            .keys()
            .filter(|id| index.pack_position(id).is_none())
            .count() as u64;

        // 3. Read the data: each pack chosen once, every description of it
        // checked, every copy of every blob in it hashed.
        let mut descriptions: BTreeMap<PackId, Vec<Description>> = BTreeMap::new();
        if options.read_data != ReadData::None {
            let mut blobs_by_position: Vec<Vec<(BlobId, u32, u32, u32)>> =
                vec![Vec::new(); index.packs().len()];
            for (id, loc) in index.copies() {
                blobs_by_position[loc.pack as usize].push((*id, loc.frame, loc.offset, loc.len));
            }
            for (position, (pack, blobs)) in index.packs().iter().zip(blobs_by_position).enumerate()
            {
                let position = len_u32(position);
                if !damage.packs.contains_key(&position) {
                    descriptions.entry(pack.id).or_default().push(Description {
                        position,
                        pack: pack.clone(),
                        trailer_hash: index.trailer_hash(position),
                        named_by: index.named_by(position).collect(),
                        blobs,
                    });
                }
            }
            descriptions.retain(|id, _| wanted(options.read_data, id));
        }
        let results: Vec<Result<Vec<(u32, PackCheck)>>> = futures::stream::iter(descriptions)
            .map(|(id, described)| {
                let backend = self.backend().clone();
                async move {
                    let bytes = backend.get(&ObjectKey::Pack(id)).await?;
                    Ok(crate::cpu::run(move || check_descriptions(id, described, &bytes)).await)
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        for result in results {
            let checks = match result {
                Ok(checks) => checks,
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
            report.bytes_read += checks.first().map_or(0, |(_, c)| c.len);
            for (position, check) in checks {
                report.blobs_checked += check.blobs_checked;
                report.problems.extend(check.problems);
                damage.copies.extend(
                    check
                        .bad_blobs
                        .into_iter()
                        .map(|(id, why)| ((id, position), why)),
                );
            }
        }

        // 4. Index objects that name a damaged pack, or describe one wrongly:
        // readers fall back to other copies; say whether removing it is safe.
        report.problems.extend(shadowing_index_objects(
            &index,
            &damage,
            options.read_data == ReadData::All,
        ));

        // 5. Walk every snapshot.
        let repo = self.clone().with_index(index);
        let reader = Arc::new(BlobReader::new(repo.clone(), 8, 16 << 20));
        let mut walker = Walker {
            reader: &reader,
            damage: &damage,
            memo: std::collections::HashMap::new(),
            dirs: std::collections::HashMap::new(),
        };
        for snapshot in &list.snapshots {
            let mut items = walker.snapshot(snapshot).await?;
            // Content a check understands (CouchDB dumps), when its chunks are intact.
            for check in checks {
                if items.is_empty() && check.applies(snapshot) {
                    items = check
                        .check(&repo, snapshot, options.read_data == ReadData::All)
                        .await?;
                }
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

/// One description of a pack (an index position) to check against its bytes.
struct Description {
    position: u32,
    pack: PackInfo,
    trailer_hash: [u8; 32],
    named_by: Vec<crate::id::IndexId>,
    blobs: Vec<(BlobId, u32, u32, u32)>,
}

/// Checks a whole pack once against each description of it: its hash and
/// trailer, the trailer copy each index object holds, and every blob each
/// description places in it.
fn check_descriptions(
    id: PackId,
    described: Vec<Description>,
    bytes: &[u8],
) -> Vec<(u32, PackCheck)> {
    let decoded = decode_pack(bytes, id);
    let own_trailer_hash = decoded
        .as_ref()
        .ok()
        .map(|t| *blake3::hash(&t.encode()).as_bytes());
    let several = described.len() > 1;
    let mut checks = Vec::with_capacity(described.len());
    for (n, d) in described.into_iter().enumerate() {
        let mut check = PackCheck {
            len: bytes.len() as u64,
            blobs_checked: 0,
            problems: Vec::new(),
            bad_blobs: Vec::new(),
        };
        if n == 0
            && let Err(e) = &decoded
        {
            check.problems.push(Problem {
                object: format!("pack {id}"),
                detail: match e {
                    Error::Corrupt { detail, .. } => detail.clone(),
                    other => other.to_string(),
                },
            });
        }
        let blob_count = d.blobs.len();
        check_blobs(&d.pack, d.blobs, bytes, &mut check);
        let lying = own_trailer_hash.is_some_and(|h| h != d.trailer_hash);
        let by = || {
            let names: Vec<String> = d.named_by.iter().map(|i| format!("index {i}")).collect();
            if names.is_empty() {
                "an index".to_string()
            } else {
                names.join(", ")
            }
        };
        if lying {
            check.problems.push(Problem {
                object: format!("pack {id}"),
                detail: format!(
                    "{} describes it with a trailer that is not the pack's own; {} of the {blob_count} chunks it places there fail their hash check",
                    by(),
                    check.bad_blobs.len()
                ),
            });
        } else if !check.bad_blobs.is_empty() {
            check.problems.push(Problem {
                object: format!("pack {id}"),
                detail: if several {
                    format!(
                        "{} blobs fail their hash check (as {} describes it)",
                        check.bad_blobs.len(),
                        by()
                    )
                } else {
                    format!("{} blobs fail their hash check", check.bad_blobs.len())
                },
            });
        }
        checks.push((d.position, check));
    }
    checks
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
    check_blobs(pack, blobs, bytes, &mut check);
    if !check.bad_blobs.is_empty() {
        check.problems.push(Problem {
            object: format!("pack {}", pack.id),
            detail: format!("{} blobs fail their hash check", check.bad_blobs.len()),
        });
    }
    check
}

/// Hashes every blob `blobs` places in the pack `bytes`, frame by frame,
/// adding the count and the bad ones to `check`.
fn check_blobs(
    pack: &PackInfo,
    blobs: Vec<(BlobId, u32, u32, u32)>,
    bytes: &[u8],
    check: &mut PackCheck,
) {
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
                    raw.get(*offset as usize..(*offset as usize + *len as usize))
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
}

/// The index objects naming a pack description found damaged: each one
/// once, with its damaged packs, and whether deleting it by hand is safe
/// (every chunk only it names has an intact copy elsewhere).
fn shadowing_index_objects(index: &Index, damage: &Damage, read_all: bool) -> Vec<Problem> {
    // Damaged positions: missing or wrong length, or a copy failed its hash.
    let mut bad: BTreeMap<u32, u64> = damage.packs.keys().map(|&p| (p, 0)).collect();
    for (_, position) in damage.copies.keys() {
        *bad.entry(*position).or_default() += 1;
    }
    let mut by_index: BTreeMap<crate::id::IndexId, Vec<u32>> = BTreeMap::new();
    for &position in bad.keys() {
        for id in index.named_by(position) {
            by_index.entry(id).or_default().push(position);
        }
    }
    if by_index.is_empty() {
        return Vec::new();
    }
    // Positions named by one index object alone go when it is deleted.
    let sole: Vec<Option<crate::id::IndexId>> = (0..index.packs().len())
        .map(|p| {
            let mut names = index.named_by(len_u32(p));
            match (names.next(), names.next()) {
                (Some(only), None) if by_index.contains_key(&only) => Some(only),
                _ => None,
            }
        })
        .collect();
    let mut unprotected: IdMap<crate::id::IndexId, crate::id::IdSet<BlobId>> = IdMap::default();
    for (id, loc) in index.copies() {
        let Some(owner) = sole[loc.pack as usize] else {
            continue;
        };
        let elsewhere = index.locations(id).any(|other| {
            sole[other.pack as usize] != Some(owner) && damage.of_copy(id, &other).is_none()
        });
        if !elsewhere {
            unprotected.entry(owner).or_default().insert(*id);
        }
    }
    by_index
        .into_iter()
        .map(|(id, positions)| {
            let packs: Vec<String> = positions
                .iter()
                .map(|&p| {
                    let pack = index.pack(p).id;
                    match (damage.packs.get(&p), bad.get(&p)) {
                        (Some(reason), _) => reason.clone(),
                        (None, Some(n)) => format!("pack {pack}: {n} chunks fail their checks"),
                        (None, None) => format!("pack {pack}"),
                    }
                })
                .collect();
            let path = ObjectKey::Index(id).path();
            let left = unprotected.get(&id).map_or(0, |s| s.len());
            let advice = if left > 0 {
                format!(
                    "{left} chunks only it names have no other intact copy: keep it until they are stored again (a new backup of the same data stores them)"
                )
            } else if read_all {
                format!(
                    "every chunk only it names has another copy this check found intact, so deleting {path} by hand is safe"
                )
            } else {
                format!(
                    "deleting {path} by hand is safe once `cairn verify --read-data` finds another intact copy of every chunk only it names"
                )
            };
            Problem {
                object: format!("index {id}"),
                detail: format!(
                    "names damaged data ({}); readers skip such copies and fall back to other copies of the same chunks; `cairn gc` does not remove index objects yet, `cairn verify` names them: {advice}",
                    packs.join("; ")
                ),
            }
        })
        .collect()
}

/// Adds a subdirectory's problems to its parent's, under its name.
fn merge(out: &mut Vec<(String, Vec<String>)>, name: &str, problems: &[(String, Vec<String>)]) {
    for (path, p) in problems {
        let path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{name}/{path}")
        };
        out.push((path, p.clone()));
    }
}

/// Damaged entries reported below one directory at most.
const MAX_PROBLEMS_PER_DIR: usize = 100;

/// Problems below a directory: (path relative to it, problems).
type DirProblems = Arc<Vec<(String, Vec<String>)>>;

/// Walks snapshots' trees, remembering each node's findings.
struct Walker<'a> {
    reader: &'a Arc<BlobReader>,
    damage: &'a Damage,
    /// Problems found under each node checked so far (empty: intact), by
    /// node, expected level and expected length.
    memo: std::collections::HashMap<(BlobId, Option<u8>, u64), Arc<Vec<String>>>,
    /// Problems found below each directory checked so far: a directory
    /// shared by many snapshots is walked once.
    dirs: std::collections::HashMap<BlobId, DirProblems>,
}

impl Walker<'_> {
    async fn snapshot(&mut self, snapshot: &Snapshot) -> Result<Vec<DamagedItem>> {
        let mut damaged = Vec::new();
        if let Some(root) = snapshot.manifest.root {
            let tree = SnapshotTree::open(Arc::clone(self.reader), snapshot)?;
            for (path, mut problems) in self.dir(&tree, root).await?.iter().cloned() {
                if problems.len() > MAX_PROBLEMS_PER_ITEM {
                    let more = problems.len() - MAX_PROBLEMS_PER_ITEM;
                    problems.truncate(MAX_PROBLEMS_PER_ITEM);
                    problems.push(format!("and {more} more"));
                }
                let name = if path.is_empty() {
                    "/".to_string()
                } else {
                    path
                };
                damaged.push(DamagedItem { name, problems });
            }
            return Ok(damaged);
        }
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

    /// Problems below the directory `id`: its nodes, and every file's
    /// content, each file and directory checked once. Iterative (a stack
    /// of open directories), so a deep tree cannot overflow the stack.
    async fn dir(&mut self, tree: &SnapshotTree, id: BlobId) -> Result<DirProblems> {
        struct Frame {
            id: BlobId,
            /// Its name in the directory above.
            name: String,
            cursor: Option<crate::ops::walk::DirCursor>,
            out: Vec<(String, Vec<String>)>,
        }
        let fatal = |e: &Error| matches!(e, Error::Unreachable { .. } | Error::AccessDenied { .. });
        let open = |id: BlobId, name: String| async move {
            let mut frame = Frame {
                id,
                name,
                cursor: None,
                out: Vec::new(),
            };
            match tree.dir(id).await {
                Ok(c) => frame.cursor = Some(c),
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => frame.out.push((String::new(), vec![e.to_string()])),
            }
            Ok(frame)
        };
        if let Some(found) = self.dirs.get(&id) {
            return Ok(Arc::clone(found));
        }
        let mut stack = vec![open(id, String::new()).await?];
        loop {
            let depth = stack.len();
            let Some(top) = stack.last_mut() else {
                return Err(Error::Bug("verify's directory stack is empty".into()));
            };
            let next = match &mut top.cursor {
                None => None,
                Some(c) => match c.next().await {
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => {
                        top.out.push((String::new(), vec![e.to_string()]));
                        None
                    }
                    Ok(next) => next,
                },
            };
            let Some(entry) = next else {
                // This directory is done: remember it, report it to its parent.
                let Some(mut done) = stack.pop() else {
                    return Err(Error::Bug("verify's directory stack is empty".into()));
                };
                // Shared damaged directories must not multiply the report.
                if done.out.len() > MAX_PROBLEMS_PER_DIR {
                    let more = done.out.len() - MAX_PROBLEMS_PER_DIR;
                    done.out.truncate(MAX_PROBLEMS_PER_DIR);
                    done.out.push((
                        String::new(),
                        vec![format!("and {more} more damaged entries below")],
                    ));
                }
                let problems = Arc::new(done.out);
                self.dirs.insert(done.id, Arc::clone(&problems));
                match stack.last_mut() {
                    None => return Ok(problems),
                    Some(parent) => merge(&mut parent.out, &done.name, &problems),
                }
                continue;
            };
            let name = entry.display_name();
            match entry.node {
                Node::File { root, .. } if entry.one_chunk => {
                    let index = self.reader.repo().index();
                    if let Some(problem) = self.damage.of_chunk(index, &root, Some(entry.size)) {
                        top.out.push((name, vec![problem]));
                    }
                }
                Node::File { root, .. } => {
                    let problems = self.node(root, None, entry.size).await?;
                    if !problems.is_empty() {
                        top.out.push((name, problems.as_ref().clone()));
                    }
                }
                Node::Dir { tree: sub } => {
                    if let Some(found) = self.dirs.get(&sub) {
                        let found = Arc::clone(found);
                        merge(&mut top.out, &name, &found);
                    } else if depth >= crate::ops::walk::MAX_DEPTH {
                        top.out.push((
                            name,
                            vec![format!(
                                "directory {sub}: more than {} directories deep (readers refuse it)",
                                crate::ops::walk::MAX_DEPTH
                            )],
                        ));
                    } else {
                        let frame = open(sub, name).await?;
                        stack.push(frame);
                    }
                }
                _ => {}
            }
        }
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
                        .filter_map(|e| self.damage.of_chunk(index, &e.id, Some(e.len)))
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
                                .of_chunk(self.reader.repo().index(), id, None)
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
        if let Some(problem) = self.damage.of_chunk(self.reader.repo().index(), &id, None) {
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
