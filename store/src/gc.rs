//! Garbage collection planning: pure decisions over what the repository
//! holds and what snapshots reach. The protocol that applies them safely
//! beside running backups is in [`crate::ops::gc`].
//!
//! Phase 1 ([`plan_condemnation`]) picks packs to condemn: packs no live blob
//! is in, mostly-empty packs whose live blobs are copied out first
//! (repacking, within a budget), and packs no index names that are older
//! than every running writer and the grace period. Phase 2
//! ([`plan_deletion`]) decides which condemned packs may really go, from the
//! packs' own trailers and the snapshots at that moment: a condemned pack
//! holding a live blob that has no copy in a surviving pack is rescued.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::id::{BlobId, IdMap, IdSet, PackId};

/// Why a pack is condemned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CondemnReason {
    /// No snapshot needs anything in it.
    Unreferenced,
    /// Its live blobs were copied to new packs.
    Repacked,
    /// No index names it, and no running writer can be its author.
    Unindexed,
}

/// A condemned pack, as listed in `gc/condemned-<run>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondemnedPack {
    /// The pack.
    pub id: PackId,
    /// Why.
    pub reason: CondemnReason,
    /// Its length.
    pub len: u64,
}

/// The body of `gc/condemned-<run>`: what phase 1 condemned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondemnedList {
    /// Format version (1).
    pub version: u32,
    /// The GC run that wrote it.
    pub run: String,
    /// The packs.
    pub packs: Vec<CondemnedPack>,
}

/// The body of `gc/writers-<run>`: the leases alive once the list was public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritersAtCondemnation {
    /// The GC run.
    pub run: String,
    /// Lease ids; phase 2 waits until none of them is alive.
    pub writers: Vec<String>,
}

/// One deletion, as logged in `gc/log-<run>-<n>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedDeletion {
    /// The object (`pack <id>`, `index <id>`, ...).
    pub object: String,
    /// Why.
    pub reason: String,
}

/// The body of a deletion log object, written before its deletions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionLog {
    /// The GC run.
    pub run: String,
    /// When (the GC host's clock; the object's own time is the store's).
    pub time: Timestamp,
    /// What is deleted.
    pub deleted: Vec<LoggedDeletion>,
    /// Condemned packs kept after all, with why.
    pub rescued: Vec<LoggedDeletion>,
}

/// A pack and the blobs in it.
#[derive(Debug, Clone)]
pub struct PackContents {
    /// The pack.
    pub id: PackId,
    /// Its length.
    pub len: u64,
    /// Its blobs and their lengths.
    pub blobs: Vec<(BlobId, u32)>,
}

/// A pack no index names, as listed.
#[derive(Debug, Clone, Copy)]
pub struct UnindexedPack {
    /// The pack.
    pub id: PackId,
    /// Its length.
    pub len: u64,
    /// When it was stored, by the store's clock.
    pub stored: Timestamp,
}

/// What phase 1 decides.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CondemnationPlan {
    /// Packs to condemn (repacked ones only once their live blobs are copied).
    pub condemn: Vec<CondemnedPack>,
    /// Live blobs to copy out of the repacked packs, by pack.
    #[serde(skip)]
    pub repack: BTreeMap<PackId, Vec<BlobId>>,
    /// Indexed packs.
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Raw bytes of live blobs.
    pub live_bytes: u64,
    /// Raw bytes of blobs no snapshot needs.
    pub dead_bytes: u64,
    /// Stored bytes the condemned packs take.
    pub condemned_bytes: u64,
}

/// Phase 1: what to condemn. `repack_budget` caps the stored bytes of packs
/// repacked; a pack is repacked when less than half its raw bytes are live.
pub fn plan_condemnation(
    packs: &[PackContents],
    live: &IdSet<BlobId>,
    unindexed: &[UnindexedPack],
    already_condemned: &IdSet<PackId>,
    unindexed_cutoff: Timestamp,
    repack_budget: u64,
) -> CondemnationPlan {
    let mut plan = CondemnationPlan::default();
    let mut candidates: Vec<(f64, &PackContents)> = Vec::new();
    for pack in packs {
        plan.packs += 1;
        plan.pack_bytes += pack.len;
        let (mut live_raw, mut total_raw) = (0u64, 0u64);
        for (id, len) in &pack.blobs {
            total_raw += u64::from(*len);
            if live.contains(id) {
                live_raw += u64::from(*len);
            }
        }
        plan.live_bytes += live_raw;
        plan.dead_bytes += total_raw - live_raw;
        if already_condemned.contains(&pack.id) {
            continue;
        }
        if live_raw == 0 {
            plan.condemn.push(CondemnedPack {
                id: pack.id,
                reason: CondemnReason::Unreferenced,
                len: pack.len,
            });
        } else if live_raw * 2 < total_raw {
            candidates.push((live_raw as f64 / total_raw as f64, pack));
        }
    }
    // The emptiest first, within the budget.
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    let mut spent = 0u64;
    for (_, pack) in candidates {
        if spent + pack.len > repack_budget {
            continue;
        }
        spent += pack.len;
        let keep: Vec<BlobId> = pack
            .blobs
            .iter()
            .filter(|(id, _)| live.contains(id))
            .map(|(id, _)| *id)
            .collect();
        plan.repack.insert(pack.id, keep);
        plan.condemn.push(CondemnedPack {
            id: pack.id,
            reason: CondemnReason::Repacked,
            len: pack.len,
        });
    }
    for u in unindexed {
        if u.stored < unindexed_cutoff && !already_condemned.contains(&u.id) {
            plan.condemn.push(CondemnedPack {
                id: u.id,
                reason: CondemnReason::Unindexed,
                len: u.len,
            });
        }
    }
    plan.condemned_bytes = plan.condemn.iter().map(|c| c.len).sum();
    plan
}

/// What phase 2 decides for the condemned packs that still exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionPlan {
    /// Packs to delete.
    pub delete: Vec<PackId>,
    /// Packs kept after all, each with a live blob no surviving pack holds.
    pub rescue: Vec<(PackId, BlobId)>,
}

/// Phase 2: which condemned packs may go. `condemned` holds each condemned
/// pack's blobs as read from its own trailer; `surviving` the blobs of every
/// other indexed pack. A condemned pack is rescued while it holds a live blob
/// that no surviving pack (including rescued ones) holds.
pub fn plan_deletion(
    condemned: &[PackContents],
    surviving: &IdSet<BlobId>,
    live: &IdSet<BlobId>,
) -> DeletionPlan {
    let mut kept: IdSet<BlobId> = surviving.clone();
    let mut doomed: IdMap<PackId, &PackContents> = condemned.iter().map(|p| (p.id, p)).collect();
    let mut plan = DeletionPlan::default();
    loop {
        // Live blobs that would be lost if every doomed pack went.
        let mut rescued = None;
        let mut ids: Vec<&PackId> = doomed.keys().collect();
        ids.sort();
        'packs: for id in ids {
            for (blob, _) in &doomed[id].blobs {
                if live.contains(blob) && !kept.contains(blob) {
                    rescued = Some((*id, *blob));
                    break 'packs;
                }
            }
        }
        let Some((pack, blob)) = rescued else { break };
        if let Some(p) = doomed.remove(&pack) {
            kept.extend(p.blobs.iter().map(|(b, _)| *b));
        }
        plan.rescue.push((pack, blob));
    }
    plan.delete = doomed.into_keys().collect();
    plan.delete.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u32) -> BlobId {
        BlobId::of(&n.to_le_bytes())
    }

    fn pack(n: u8, blobs: &[u32]) -> PackContents {
        PackContents {
            id: PackId([n; 32]),
            len: 1000,
            blobs: blobs.iter().map(|&b| (blob(b), 100)).collect(),
        }
    }

    #[test]
    fn condemns_dead_packs_repacks_mostly_empty_ones_and_old_orphans() {
        let packs = vec![
            pack(1, &[1, 2]),
            pack(2, &[3, 4, 5]),
            pack(3, &[6, 7, 8, 9]),
            pack(4, &[10]),
        ];
        let live: IdSet<BlobId> = [blob(1), blob(2), blob(5), blob(6), blob(7)]
            .into_iter()
            .collect();
        let t: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let orphans = [
            UnindexedPack {
                id: PackId([9; 32]),
                len: 50,
                stored: t - jiff::SignedDuration::from_hours(2),
            },
            UnindexedPack {
                id: PackId([8; 32]),
                len: 50,
                stored: t,
            },
        ];
        let plan = plan_condemnation(
            &packs,
            &live,
            &orphans,
            &IdSet::default(),
            t - jiff::SignedDuration::from_hours(1),
            1000,
        );
        let got: Vec<(u8, CondemnReason)> =
            plan.condemn.iter().map(|c| (c.id.0[0], c.reason)).collect();
        // Pack 4: nothing live. Pack 2: a third live, repacked. Pack 3: half live, kept.
        // Orphan 9 is old enough; orphan 8 is too new.
        assert_eq!(
            got,
            vec![
                (4, CondemnReason::Unreferenced),
                (2, CondemnReason::Repacked),
                (9, CondemnReason::Unindexed)
            ]
        );
        assert_eq!(plan.repack[&PackId([2; 32])], vec![blob(5)]);
        // A zero budget repacks nothing; condemned ones are not condemned twice.
        let already: IdSet<PackId> = [PackId([4; 32])].into_iter().collect();
        let plan = plan_condemnation(&packs, &live, &[], &already, t, 0);
        assert!(plan.condemn.is_empty());
        assert_eq!(plan.live_bytes, 500);
        assert_eq!(plan.dead_bytes, 500);
    }

    #[test]
    fn a_condemned_pack_holding_the_only_copy_of_a_live_blob_is_rescued() {
        let condemned = vec![pack(1, &[1, 2]), pack(2, &[3]), pack(3, &[4])];
        // Blob 1 became live again (a backup committed meanwhile) and only pack 1 has it;
        // blob 4 is live but pack 9 (surviving) has a copy.
        let live: IdSet<BlobId> = [blob(1), blob(4)].into_iter().collect();
        let surviving: IdSet<BlobId> = [blob(4)].into_iter().collect();
        let plan = plan_deletion(&condemned, &surviving, &live);
        assert_eq!(plan.rescue, vec![(PackId([1; 32]), blob(1))]);
        assert_eq!(plan.delete, vec![PackId([2; 32]), PackId([3; 32])]);
        // Two condemned packs with the same live blob: one is kept, one goes.
        let twins = vec![pack(1, &[7]), pack(2, &[7])];
        let live: IdSet<BlobId> = [blob(7)].into_iter().collect();
        let plan = plan_deletion(&twins, &IdSet::default(), &live);
        assert_eq!(plan.rescue.len(), 1);
        assert_eq!(plan.delete.len(), 1);
    }
}
