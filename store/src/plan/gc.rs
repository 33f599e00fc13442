//! Garbage collection planning: pure decisions over what the repository
//! holds and what snapshots reach. The protocol that applies them safely
//! beside running backups is in [`crate::ops::gc`].
//!
//! Phase 1 ([`plan_condemnation`]) picks packs to condemn: packs no live blob
//! is in, mixed packs whose live blobs are copied out first (repacking:
//! those less than half live, then more until at most `max_unused` of the
//! stored bytes is unreferenced, within a budget), and packs no index names
//! that are older than every running writer and the grace period. Phase 2
//! ([`plan_deletion`]) decides which condemned packs may really go, from the
//! packs' own trailers and the snapshots at that moment: a condemned pack
//! holding a live blob that has no *verified* copy in a surviving pack (one
//! whose bytes GC read and hashed in this run) is rescued.

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Why unreferenced data stays in packs a plan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftoverReason {
    /// What is left is within the `max_unused` bound.
    WithinMaxUnused,
    /// Repacking more would pass the repack budget.
    RepackBudget,
}

/// Unreferenced data a plan leaves behind in the packs it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnusedLeft {
    /// Stored bytes (estimated: each pack's length times its dead share of
    /// raw bytes).
    pub bytes: u64,
    /// In how many packs.
    pub packs: u64,
    /// Why they stay.
    pub reason: LeftoverReason,
    /// What would free them, in words.
    pub hint: String,
}

/// How much phase 1 may repack, in basis points (1/100 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepackLimits {
    /// Stored bytes of packs repacked per run, at most.
    pub budget: u64,
    /// Repack mixed packs until the unreferenced stored bytes left are at
    /// most this share (basis points) of the stored bytes left.
    pub max_unused_bp: u64,
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
    /// Unreferenced data left in packs kept (none: `None`).
    pub left: Option<(u64, u64, LeftoverReason)>,
}

/// A pack holding both live and dead blobs.
struct Mixed<'a> {
    pack: &'a PackContents,
    live_raw: u64,
    total_raw: u64,
    /// Estimated stored bytes of its dead blobs.
    unused: u64,
}

/// Phase 1: what to condemn.
///
/// - A pack with no live blob is condemned.
/// - Mixed packs (live and dead blobs) are repacked emptiest first (the
///   lowest live share of raw bytes): every one less than half live, then
///   more while the unreferenced stored bytes left in mixed packs exceed
///   `limits.max_unused_bp` of the stored bytes left. A pack is repacked
///   only if it fits in what is left of `limits.budget` (stored bytes of
///   repacked packs); one that does not is skipped for smaller ones.
/// - A pack no index names is condemned once stored before
///   `unindexed_cutoff`.
///
/// Packs in `already_condemned` are counted but not condemned again. A
/// pack's unreferenced stored bytes are estimated as its length times the
/// dead share of its raw bytes.
pub fn plan_condemnation(
    packs: &[PackContents],
    live: &IdSet<BlobId>,
    unindexed: &[UnindexedPack],
    already_condemned: &IdSet<PackId>,
    unindexed_cutoff: Timestamp,
    limits: RepackLimits,
) -> CondemnationPlan {
    let mut plan = CondemnationPlan::default();
    let mut mixed: Vec<Mixed<'_>> = Vec::new();
    let mut stored_left = 0u64;
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
            continue;
        }
        stored_left += pack.len;
        if live_raw < total_raw {
            mixed.push(Mixed {
                pack,
                live_raw,
                total_raw,
                unused: share(pack.len, total_raw - live_raw, total_raw),
            });
        }
    }
    // The emptiest first: a lower live share, then the pack id.
    mixed.sort_by(|a, b| {
        (u128::from(a.live_raw) * u128::from(b.total_raw))
            .cmp(&(u128::from(b.live_raw) * u128::from(a.total_raw)))
            .then(a.pack.id.cmp(&b.pack.id))
    });
    let mut unused_left: u64 = mixed.iter().map(|m| m.unused).sum();
    let over_bound = |unused: u64, stored: u64| {
        u128::from(unused) * 10_000 > u128::from(limits.max_unused_bp) * u128::from(stored)
    };
    let mut spent = 0u64;
    let mut left: Vec<&Mixed<'_>> = Vec::new();
    let mut reason = LeftoverReason::WithinMaxUnused;
    for m in &mixed {
        let wanted = m.live_raw * 2 < m.total_raw || over_bound(unused_left, stored_left);
        if !wanted {
            left.push(m);
            continue;
        }
        if spent.saturating_add(m.pack.len) > limits.budget {
            reason = LeftoverReason::RepackBudget;
            left.push(m);
            continue;
        }
        spent += m.pack.len;
        unused_left -= m.unused;
        // The pack goes; its live part comes back in a new pack.
        stored_left -= m.unused;
        let keep: Vec<BlobId> = m
            .pack
            .blobs
            .iter()
            .filter(|(id, _)| live.contains(id))
            .map(|(id, _)| *id)
            .collect();
        plan.repack.insert(m.pack.id, keep);
        plan.condemn.push(CondemnedPack {
            id: m.pack.id,
            reason: CondemnReason::Repacked,
            len: m.pack.len,
        });
    }
    if !left.is_empty() {
        plan.left = Some((
            left.iter().map(|m| m.unused).sum(),
            left.len() as u64,
            reason,
        ));
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

/// `len × part / whole`, rounded down, without overflow.
fn share(len: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    u64::try_from(u128::from(len) * u128::from(part) / u128::from(whole)).unwrap_or(u64::MAX)
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
/// pack's blobs as read from its own trailer; `surviving` the live blobs of
/// condemned packs that GC has read from another, surviving pack and found
/// to hash to their ids (never just what an index claims). A condemned pack
/// is rescued while it holds a live blob that is neither in `surviving` nor
/// in a rescued pack.
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
            limits(1000, 10_000),
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
        assert_eq!(plan.left, Some((500, 1, LeftoverReason::WithinMaxUnused)));
        // A zero budget repacks nothing; condemned ones are not condemned twice.
        let already: IdSet<PackId> = [PackId([4; 32])].into_iter().collect();
        let plan = plan_condemnation(&packs, &live, &[], &already, t, limits(0, 10_000));
        assert!(plan.condemn.is_empty());
        assert_eq!(plan.live_bytes, 500);
        assert_eq!(plan.dead_bytes, 500);
        assert_eq!(plan.left, Some((1166, 2, LeftoverReason::RepackBudget)));
    }

    fn limits(budget: u64, max_unused_bp: u64) -> RepackLimits {
        RepackLimits {
            budget,
            max_unused_bp,
        }
    }

    #[test]
    fn half_live_packs_are_repacked_until_at_most_max_unused_is_left() {
        // Pack 2 is a third live, pack 3 half live, pack 5 three quarters.
        let packs = vec![
            pack(1, &[1, 2]),
            pack(2, &[3, 4, 5]),
            pack(3, &[6, 7, 8, 9]),
            pack(5, &[11, 12, 13, 14]),
        ];
        let live: IdSet<BlobId> = [1, 2, 5, 6, 7, 11, 12, 13].into_iter().map(blob).collect();
        let t: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let none = IdSet::default();
        let repacked = |plan: &CondemnationPlan| -> Vec<u8> {
            plan.condemn.iter().map(|c| c.id.0[0]).collect()
        };
        // 5 %: after packs 2 and 3, 250 of 4000 - 666 - 500 is 7.5 %: pack 5 too.
        let plan = plan_condemnation(&packs, &live, &[], &none, t, limits(10_000, 500));
        assert_eq!(repacked(&plan), vec![2, 3, 5]);
        assert_eq!(plan.left, None);
        assert_eq!(plan.repack[&PackId([5; 32])].len(), 3);
        // 10 %: pack 5's 250 of 2834 is 8.8 %: it stays, and the plan says why.
        let plan = plan_condemnation(&packs, &live, &[], &none, t, limits(10_000, 1000));
        assert_eq!(repacked(&plan), vec![2, 3]);
        assert_eq!(plan.left, Some((250, 1, LeftoverReason::WithinMaxUnused)));
        // A budget for two packs: the third is left for want of budget.
        let plan = plan_condemnation(&packs, &live, &[], &none, t, limits(2000, 500));
        assert_eq!(repacked(&plan), vec![2, 3]);
        assert_eq!(plan.left, Some((250, 1, LeftoverReason::RepackBudget)));
        // 100 %: only the packs less than half live.
        let plan = plan_condemnation(&packs, &live, &[], &none, t, limits(10_000, 10_000));
        assert_eq!(repacked(&plan), vec![2]);
    }

    proptest::proptest! {
        #[test]
        fn condemnation_keeps_every_live_blob_and_its_bounds(
            shapes in proptest::collection::vec(
                (1u64..5000, proptest::collection::vec((1u32..500, proptest::bool::ANY), 1..8)),
                1..16,
            ),
            budget in 0u64..40_000,
            max_unused_bp in 0u64..=10_000,
        ) {
            let mut live = IdSet::default();
            let mut n = 0u32;
            let packs: Vec<PackContents> = shapes.iter().enumerate().map(|(i, (len, blobs))| {
                PackContents {
                    id: PackId([u8::try_from(i).unwrap_or(0); 32]),
                    len: *len,
                    blobs: blobs.iter().map(|&(l, is_live)| {
                        n += 1;
                        if is_live { live.insert(blob(n)); }
                        (blob(n), l)
                    }).collect(),
                }
            }).collect();
            let t: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
            let plan = plan_condemnation(&packs, &live, &[], &IdSet::default(), t,
                limits(budget, max_unused_bp));
            let condemned: IdMap<PackId, CondemnReason> =
                plan.condemn.iter().map(|c| (c.id, c.reason)).collect();
            let mut spent = 0;
            let (mut unused_left, mut stored_left, mut left_packs) = (0u64, 0u64, 0u64);
            let mut left_lens = Vec::new();
            for p in &packs {
                let (live_raw, total_raw) = p.blobs.iter().fold((0u64, 0u64), |(l, t), (b, len)| {
                    (l + if live.contains(b) { u64::from(*len) } else { 0 }, t + u64::from(*len))
                });
                let unused = share(p.len, total_raw - live_raw, total_raw);
                match condemned.get(&p.id) {
                    // Every live blob of a condemned pack is copied out first.
                    Some(CondemnReason::Unreferenced) => proptest::prop_assert_eq!(live_raw, 0),
                    Some(_) => {
                        let keep: Vec<BlobId> = p.blobs.iter().map(|(b, _)| *b)
                            .filter(|b| live.contains(b)).collect();
                        proptest::prop_assert_eq!(&plan.repack[&p.id], &keep);
                        spent += p.len;
                        stored_left += p.len - unused;
                    }
                    None => {
                        stored_left += p.len;
                        if live_raw < total_raw {
                            unused_left += unused;
                            left_packs += 1;
                            left_lens.push(p.len);
                        }
                    }
                }
            }
            proptest::prop_assert!(spent <= budget);
            match plan.left {
                None => proptest::prop_assert_eq!(left_packs, 0),
                Some((bytes, packs_left, reason)) => {
                    proptest::prop_assert_eq!((bytes, packs_left), (unused_left, left_packs));
                    if reason == LeftoverReason::WithinMaxUnused {
                        // Within the bound (packs less than half live were all taken).
                        proptest::prop_assert!(u128::from(unused_left) * 10_000
                            <= u128::from(max_unused_bp) * u128::from(stored_left));
                    } else {
                        proptest::prop_assert!(left_lens.iter().any(|l| spent + l > budget));
                    }
                }
            }
        }
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
