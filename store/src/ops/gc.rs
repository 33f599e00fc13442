//! Garbage collection: reclaim what no snapshot needs, safely beside writers.
//!
//! **The protocol.** Deletion is two-phase, and every decision to delete is
//! made again, from the packs themselves, just before deleting.
//!
//! *Writers* (backups) first take a lease (`locks/<id>`, renewed; see
//! [`crate::lease`]), then read the condemned lists (`gc/condemned-*`), then
//! load the index *without* the condemned packs: they never deduplicate
//! against a condemned pack, and a pack they write whose name is taken by a
//! condemned one is stored under another nonce. A writer whose lease lapsed
//! writes no snapshot.
//!
//! *Phase 1* (under the exclusive `locks/gc` lease): mark every blob the
//! snapshots reach, listing the snapshots again at the end until no new one
//! appears (a snapshot committed meanwhile protects its chunks); refuse if
//! anything reachable is missing (an index object that does not parse is
//! reported and skipped: its packs count as unindexed); condemn packs
//! nothing live is in, mixed packs less than half live and then more, the
//! emptiest first, until at most `--max-unused` of the stored bytes is
//! unreferenced (after copying their live blobs to new packs, within
//! `--max-repack`), and packs no index names that are older than the grace
//! period and than every running writer. Publish the list as
//! `gc/condemned-<run>` (time T1: its `last_modified`, the store's clock),
//! *then* list the live leases and record them as `gc/writers-<run>`.
//!
//! *Phase 2* (the same run, or a later one), for each condemned list that
//! parses and names its own run, only once the grace period has passed
//! since T1 (store clock) and no lease is alive that is recorded or started
//! by T1: every writer that could have loaded the index before the list was
//! public has finished (committed, failed or lapsed).
//! Mark again over the snapshots *now*; read each condemned pack's trailer
//! from the pack (not from an index); read, decode and hash every live blob
//! of a condemned pack from a surviving pack an index says holds it (a copy
//! that does not check is reported and does not count); rescue any
//! condemned pack holding a live blob with no such verified copy (a writer
//! that started before T1 may have deduplicated against it, and a list GC
//! did not write may name anything); write an index naming the surviving packs
//! of every index object that names a doomed pack; write the deletion log
//! `gc/log-<run>-<n>`; delete those index objects; delete the doomed packs;
//! delete the list.
//!
//! *Interrupted* anywhere (kill -9), the repository verifies clean: index
//! objects are replaced before the packs they name are deleted, so an index
//! never names a deleted pack, and nothing is deleted before its log. The
//! condemned list stays until its deletions are done, so the next run
//! finishes the job.
//!
//! | beside ↓ while → runs | backup | restore, verify, snapshots | forget | gc |
//! |---|---|---|---|---|
//! | **backup** | yes | yes | yes | yes: waits for phase 2 (a writer older than the list), or avoids condemned packs (a newer one) |
//! | **restore, verify** | yes | yes | yes: a snapshot may vanish mid-read and its restore fails cleanly | yes: a forgotten snapshot may vanish mid-read |
//! | **forget** | yes | yes | yes | yes: the next mark sees the change |
//! | **gc** | yes | yes | yes | no: `locks/gc` is exclusive |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::{Backend, ObjectDir, ObjectKey};
use crate::blob_reader::BlobReader;
use crate::error::{Error, Result};
use crate::format::frame::FrameBuilder;
use crate::format::index::{IndexedPack, decode_index};
use crate::format::manifest::Snapshot;
use crate::format::pack::{FOOTER_LEN, PackWriter, decode_trailer_from_tail};
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};
use crate::lease::{DEFAULT_TTL, Lease, list_leases, store_now};
use crate::ops::copies::{CopyRef, claimed_copies, verify_copies};
use crate::ops::mark::mark;
use crate::ops::packer::{FinishedPack, store_index, upload_packs};
use crate::ops::stats::StatsReport;
use crate::pause::Pauses;
use crate::plan::gc::{
    CondemnReason, CondemnedList, CondemnedPack, DeletionLog, LeftoverReason, LoggedDeletion,
    PackContents, RepackLimits, UnindexedPack, UnusedLeft, WritersAtCondemnation,
    plan_condemnation, plan_deletion,
};
use crate::repo::Repository;

/// How to collect garbage.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Plan and report only.
    pub dry_run: bool,
    /// Condemned packs are deleted no sooner than this after their list is
    /// public (store clock), and packs no index names are condemned only
    /// once this old.
    pub grace: Duration,
    /// Repack at most this share (percent) of the repository's bytes per run.
    pub max_repack_pct: f64,
    /// Repack mixed packs until at most this share (percent) of the stored
    /// bytes is unreferenced (within `max_repack_pct`).
    pub max_unused_pct: f64,
    /// GC's own lease time-to-live.
    pub lease_ttl: Duration,
    /// Pause points (tests).
    pub pauses: Pauses,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            max_repack_pct: 10.0,
            max_unused_pct: 5.0,
            lease_ttl: DEFAULT_TTL,
            pauses: Pauses::default(),
        }
    }
}

/// A condemned list not yet finished, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    /// The run that condemned it.
    pub run: String,
    /// Packs in it.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// What it waits for.
    pub reason: String,
}

/// What a garbage collection did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// This run's id.
    pub run: String,
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Snapshots marked.
    pub snapshots: u64,
    /// Indexed packs.
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
    /// Raw bytes of live blobs.
    pub live_bytes: u64,
    /// Raw bytes no snapshot needs.
    pub dead_bytes: u64,
    /// Packs condemned by this run.
    pub condemned: Vec<CondemnedPack>,
    /// New packs written by repacking.
    pub repacked_into: u64,
    /// Packs deleted (this run, finishing earlier lists too).
    pub deleted_packs: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Index objects replaced.
    pub deleted_index: u64,
    /// Condemned packs kept after all (pack, a live blob in it).
    pub rescued: Vec<(PackId, BlobId)>,
    /// Condemned lists still waiting.
    pub waiting: Vec<Waiting>,
    /// Copies of live blobs, in packs that survive, whose bytes GC read and
    /// found wrong: they do not count as copies (damage; `cairn verify`).
    pub unverified: Vec<UnverifiedCopy>,
    /// Objects GC could not parse and left alone (damage; `cairn verify`).
    pub skipped: Vec<Skipped>,
    /// Unreferenced data this run leaves in packs, and what would free it.
    pub unused_left: Option<crate::plan::gc::UnusedLeft>,
    /// Objects of expired leases and superseded replica states removed
    /// (what append-only writers leave behind).
    pub state_objects_removed: u64,
}

/// Copies of live blobs that an index says a pack holds, but whose bytes
/// in that pack did not hash to their ids (or could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnverifiedCopy {
    /// The pack.
    pub pack: PackId,
    /// How many of its claimed copies failed.
    pub blobs: u64,
    /// One of them.
    pub example: BlobId,
    /// What was wrong with the first.
    pub detail: String,
}

/// An object GC could not parse, and what it did instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The object (`index <id>`, `gc/condemned-<run>`, `locks/<id>`).
    pub object: String,
    /// Why, and what GC did instead.
    pub detail: String,
    /// Whether it is damage in the repository (`cairn verify` should look),
    /// rather than the trace of an interrupted run.
    pub damage: bool,
}

impl GcReport {
    /// Whether GC met damage: copies that do not check, or repository
    /// objects it could not parse.
    pub fn found_damage(&self) -> bool {
        !self.unverified.is_empty() || self.skipped.iter().any(|s| s.damage)
    }

    /// Notes an object GC could not parse (once, however often it is met).
    fn skip(&mut self, skipped: Skipped) {
        if !self.skipped.iter().any(|s| s.object == skipped.object) {
            self.skipped.push(skipped);
        }
    }
}

/// The condemned packs in every list: what writers must not rely on. A
/// list that does not parse names nothing a writer could avoid; GC never
/// acts on it either.
pub async fn load_condemned(backend: &Backend) -> Result<IdSet<PackId>> {
    Ok(load_lists(backend)
        .await?
        .0
        .into_iter()
        .flat_map(|l| l.list.packs.into_iter().map(|p| p.id))
        .collect())
}

/// A condemned list as found.
struct Pending {
    list: CondemnedList,
    /// When it became public (store clock).
    published: Timestamp,
    writers: Option<WritersAtCondemnation>,
}

/// Every condemned list that parses, with its writers list, and what was
/// skipped: a list or writers list that does not parse, or whose `run` is
/// not the one in its name, is reported and never acted on.
async fn load_lists(backend: &Backend) -> Result<(Vec<Pending>, Vec<Skipped>)> {
    let objects = backend.list(ObjectDir::Gc).await?;
    let mut skipped = Vec::new();
    let mut writers: BTreeMap<String, WritersAtCondemnation> = BTreeMap::new();
    let mut lists = Vec::new();
    for o in &objects {
        let ObjectKey::Gc(name) = &o.key else {
            continue;
        };
        let (run, is_list) = if let Some(run) = name.strip_prefix("writers-") {
            (run, false)
        } else if let Some(run) = name.strip_prefix("condemned-") {
            (run, true)
        } else {
            continue;
        };
        let body = match backend.get(&o.key).await {
            Ok(b) => b,
            Err(Error::Missing { .. }) => continue, // finished meanwhile
            Err(e) => return Err(e),
        };
        let object = o.key.path().to_string();
        if is_list {
            match decode_list(&body, run) {
                Ok(list) => lists.push(Pending {
                    list,
                    published: o.last_modified,
                    writers: None,
                }),
                Err(why) => skipped.push(Skipped {
                    object,
                    detail: format!(
                        "{why}; not acted on: none of its packs is deleted \
                         (remove it once `cairn verify` is clean)"
                    ),
                    damage: true,
                }),
            }
        } else {
            match serde_json::from_slice::<WritersAtCondemnation>(&body) {
                Ok(w) if w.run == run => {
                    writers.insert(run.to_string(), w);
                }
                Ok(w) => skipped.push(Skipped {
                    object,
                    detail: format!("names run {:?}, not {run:?}; ignored", w.run),
                    damage: true,
                }),
                Err(e) => skipped.push(Skipped {
                    object,
                    detail: format!("does not parse ({e}); ignored"),
                    damage: true,
                }),
            }
        }
    }
    for pending in &mut lists {
        pending.writers = writers.remove(&pending.list.run);
    }
    lists.sort_by(|a, b| a.list.run.cmp(&b.list.run));
    Ok((lists, skipped))
}

/// Parses a condemned list stored as `gc/condemned-<run>`.
fn decode_list(body: &[u8], run: &str) -> std::result::Result<CondemnedList, String> {
    let list: CondemnedList =
        serde_json::from_slice(body).map_err(|e| format!("does not parse ({e})"))?;
    if list.version != 1 {
        return Err(format!("unknown version {}", list.version));
    }
    if list.run != run {
        return Err(format!("names run {:?}, not {run:?}", list.run));
    }
    Ok(list)
}

/// Everything the index objects say, kept per object (GC rewrites them).
struct IndexObjects {
    objects: Vec<(IndexId, Vec<IndexedPack>)>,
    /// Index objects that do not parse, with why.
    damaged: Vec<(IndexId, String)>,
}

impl IndexObjects {
    /// Loads every index object that parses; the others are returned in
    /// `damaged`, to be reported and skipped (their packs count as unindexed).
    async fn load(repo: &Repository) -> Result<IndexObjects> {
        let backend = repo.backend();
        let loaded: Vec<Option<(IndexId, Result<Vec<IndexedPack>>)>> =
            futures::stream::iter(backend.list(ObjectDir::Index).await?)
                .map(|info| async move {
                    let ObjectKey::Index(id) = info.key else {
                        return Ok(None);
                    };
                    match backend.get(&info.key).await {
                        Ok(bytes) => Ok(Some((id, decode_index(&bytes, id)))),
                        Err(Error::Missing { .. }) => Ok(None), // replaced meanwhile
                        Err(e) => Err(e),
                    }
                })
                .buffer_unordered(8)
                .try_collect()
                .await?;
        let mut objects = Vec::new();
        let mut damaged = Vec::new();
        for (id, result) in loaded.into_iter().flatten() {
            match result {
                Ok(packs) => objects.push((id, packs)),
                Err(e) => damaged.push((id, e.to_string())),
            }
        }
        objects.sort_by_key(|(id, _)| *id);
        damaged.sort();
        Ok(IndexObjects { objects, damaged })
    }

    /// The damaged index objects, as the report lists them.
    fn skipped(&self) -> impl Iterator<Item = Skipped> + '_ {
        self.damaged.iter().map(|(id, e)| Skipped {
            object: format!("index/{id}"),
            detail: format!(
                "{e}; skipped: packs only it names count as unindexed, and GC refuses to run \
                 if a snapshot needs one (run `cairn verify`)"
            ),
            damage: true,
        })
    }

    /// Every distinct description of each indexed pack, however many
    /// objects repeat it: an index object may lie, and one that sorts first
    /// must not hide the true description behind it.
    fn descriptions(&self) -> Vec<PackContents> {
        let mut out: Vec<PackContents> = Vec::new();
        let mut at: IdMap<PackId, Vec<usize>> = IdMap::default();
        for (_, packs) in &self.objects {
            for p in packs {
                let d = PackContents {
                    id: p.id,
                    len: p.len,
                    blobs: p.trailer.blobs.iter().map(|b| (b.id, b.len)).collect(),
                };
                let same = at.entry(p.id).or_default();
                if !same.iter().any(|&i| out[i] == d) {
                    same.push(out.len());
                    out.push(d);
                }
            }
        }
        out
    }
}

/// One entry per pack for planning: every blob any description says it
/// holds (so a description saying less cannot make a live pack look dead),
/// with its stored length where the listing gives one.
fn merge_descriptions(
    descriptions: &[PackContents],
    stored: &IdMap<PackId, (u64, Timestamp)>,
) -> Vec<PackContents> {
    let mut out: Vec<PackContents> = Vec::new();
    let mut at: IdMap<PackId, usize> = IdMap::default();
    for d in descriptions {
        match at.get(&d.id) {
            Some(&i) => {
                let known: IdSet<BlobId> = out[i].blobs.iter().map(|(b, _)| *b).collect();
                let more = d.blobs.iter().filter(|(b, _)| !known.contains(b));
                out[i].blobs.extend(more.copied().collect::<Vec<_>>());
            }
            None => {
                at.insert(d.id, out.len());
                out.push(PackContents {
                    len: stored.get(&d.id).map_or(d.len, |&(len, _)| len),
                    ..d.clone()
                });
            }
        }
    }
    out
}

fn new_run_id() -> Result<String> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(format!(
        "{}-{}",
        Timestamp::now().strftime("%Y%m%d-%H%M%S"),
        hex::encode(b)
    ))
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// A percentage as basis points, clamped to 0..=100 %.
fn basis_points(pct: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped first
    let bp = (pct.clamp(0.0, 100.0) * 100.0).round() as u64;
    bp
}

/// What the report says about unreferenced data left in kept packs.
fn unused_left(bytes: u64, packs: u64, reason: LeftoverReason, options: &GcOptions) -> UnusedLeft {
    let hint = match reason {
        LeftoverReason::WithinMaxUnused => format!(
            "within --max-unused {}%; lower --max-unused to repack them",
            options.max_unused_pct
        ),
        LeftoverReason::RepackBudget => format!(
            "repacking them would pass --max-repack ({}% of the repository per run); \
             raise --max-repack to repack them",
            options.max_repack_pct
        ),
    };
    UnusedLeft {
        bytes,
        packs,
        reason,
        hint,
    }
}

impl Repository {
    /// Collects garbage; see the module docs for the protocol.
    pub async fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let run = new_run_id()?;
        let mut report = GcReport {
            run: run.clone(),
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let backend = self.backend().clone();
        let lease = if options.dry_run {
            None
        } else {
            Some(Lease::acquire_gc(&backend, options.lease_ttl, &run).await?)
        };
        let outcome = self
            .collect(options, &run, lease.as_ref(), &mut report)
            .await;
        if let Some(lease) = lease {
            let released = lease.release().await;
            outcome?;
            released?;
        } else {
            outcome?;
        }
        Ok(report)
    }

    async fn collect(
        &self,
        options: &GcOptions,
        run: &str,
        lease: Option<&Lease>,
        report: &mut GcReport,
    ) -> Result<()> {
        let backend = self.backend();
        // Finish what earlier runs condemned.
        let (lists, skipped) = load_lists(backend).await?;
        for s in skipped {
            report.skip(s);
        }
        let mut verified = IdMap::default();
        for pending in lists {
            self.finish_list(pending, options, lease, &mut verified, report)
                .await?;
        }

        // Phase 1: mark.
        let (snapshots, live) = self.mark_all().await?;
        report.snapshots = snapshots.len() as u64;
        let index = IndexObjects::load(self).await?;
        for s in index.skipped() {
            report.skip(s);
        }
        let descriptions = index.descriptions();
        let present: IdMap<PackId, (u64, Timestamp)> = backend
            .list(ObjectDir::Packs)
            .await?
            .into_iter()
            .filter_map(|o| match o.key {
                ObjectKey::Pack(id) => Some((id, (o.len, o.last_modified))),
                _ => None,
            })
            .collect();
        refuse_if_reachable_missing(&descriptions, &present, &live)?;
        let packs = merge_descriptions(&descriptions, &present);
        options.pauses.at("gc:marked").await;

        // Phase 1: decide.
        let now = store_now(backend).await?;
        let mut leases = list_leases(backend).await?;
        if !options.dry_run {
            report.state_objects_removed = crate::lease::remove_expired(backend, &leases, now)
                .await?
                + crate::ops::replicate::prune_states(backend).await?;
            // What went was not alive; gc's own lease stays whatever it says.
            leases.retain(|l| l.id == crate::lease::GC_LEASE || l.is_alive(now));
        }
        for l in &leases {
            if let Some(e) = &l.damaged {
                report.skip(Skipped {
                    object: format!("locks/{}", l.id),
                    detail: format!(
                        "its body does not parse ({e}); counted as a lease of {} s from its last write",
                        DEFAULT_TTL.as_secs()
                    ),
                    damage: false,
                });
            }
        }
        let oldest_writer = leases
            .iter()
            .filter(|l| l.is_alive(now) && lease.is_none_or(|own| own.id() != l.id))
            .map(|l| l.started)
            .min();
        let cutoff = oldest_writer.map_or(now - signed(options.grace), |w| {
            w.min(now - signed(options.grace))
        });
        let indexed: IdSet<PackId> = packs.iter().map(|p| p.id).collect();
        let unindexed: Vec<UnindexedPack> = present
            .iter()
            .filter(|(id, _)| !indexed.contains(*id))
            .map(|(id, &(len, stored))| UnindexedPack {
                id: *id,
                len,
                stored,
            })
            .collect();
        let already = load_condemned(backend).await?;
        let total: u64 = packs.iter().map(|p| p.len).sum();
        let budget = u64::try_from(
            u128::from(total) * u128::from(basis_points(options.max_repack_pct)) / 10_000,
        )
        .unwrap_or(u64::MAX);
        let limits = RepackLimits {
            budget,
            max_unused_bp: basis_points(options.max_unused_pct),
        };
        let plan = plan_condemnation(&packs, &live, &unindexed, &already, cutoff, limits);
        report.packs = plan.packs;
        report.pack_bytes = plan.pack_bytes;
        report.live_bytes = plan.live_bytes;
        report.dead_bytes = plan.dead_bytes;
        report.condemned = plan.condemn.clone();
        report.unused_left = plan
            .left
            .map(|(bytes, packs, reason)| unused_left(bytes, packs, reason, options));
        if options.dry_run || plan.condemn.is_empty() {
            return Ok(());
        }
        let Some(lease) = lease else { return Ok(()) };

        // Phase 1: copy the live blobs out of the packs to repack.
        if !plan.repack.is_empty() {
            lease.check()?;
            report.repacked_into = self.repack(&plan.repack, &already).await?;
        }

        // Phase 1: publish the list, then record the writers that may not have seen it.
        lease.check()?;
        let list = CondemnedList {
            version: 1,
            run: run.to_string(),
            packs: plan.condemn,
        };
        let list_key = ObjectKey::Gc(format!("condemned-{run}"));
        backend
            .put_new(
                &list_key,
                Bytes::from(serde_json::to_vec(&list).unwrap_or_default()),
            )
            .await?;
        let published = backend.head(&list_key).await?.last_modified;
        let writers = self.record_writers(run, Some(lease)).await?;
        options.pauses.at("gc:condemned").await;

        // Phase 2 right away when nothing needs waiting for.
        let pending = Pending {
            list,
            published,
            writers: Some(writers),
        };
        self.finish_list(pending, options, Some(lease), &mut verified, report)
            .await
    }

    /// Marks everything the snapshots reach, listing them again until no
    /// new one appears. Refuses when a snapshot cannot be read.
    async fn mark_all(&self) -> Result<(Vec<Snapshot>, IdSet<BlobId>)> {
        let repo = self.clone().load_index().await?;
        let trust = self.config().trust();
        let mut live = IdSet::default();
        let mut nodes = IdSet::default();
        let mut marked: IdSet<crate::id::SnapshotId> = IdSet::default();
        let mut all = Vec::new();
        loop {
            let list = self.load_snapshots(&trust).await?;
            // Snapshots refused only for their time are intact: keep their data.
            let held: IdSet<crate::id::SnapshotId> = list.held.iter().map(|s| s.id).collect();
            if let Some((id, e)) = list.rejected.iter().find(|(id, _)| !held.contains(id)) {
                return Err(Error::Corrupt {
                    object: format!("snapshot {id}"),
                    detail: format!(
                        "{e}; garbage collection cannot tell what it needs, so it refuses to run \
                         (remove a bogus snapshot with `cairn forget {id}`)"
                    ),
                });
            }
            let new: Vec<Snapshot> = list
                .snapshots
                .into_iter()
                .chain(list.held)
                .filter(|s| marked.insert(s.id))
                .collect();
            if new.is_empty() {
                return Ok((all, live));
            }
            // The index may have grown (a backup committed): reload it.
            let repo = if all.is_empty() {
                repo.clone()
            } else {
                self.clone().load_index().await?
            };
            mark(&repo, &new, &mut live, &mut nodes)
                .await
                .map_err(refusal)?;
            all.extend(new);
        }
    }

    /// Lists the leases alive now (but GC's own) and records them for `run`.
    async fn record_writers(
        &self,
        run: &str,
        own: Option<&Lease>,
    ) -> Result<WritersAtCondemnation> {
        let backend = self.backend();
        let now = store_now(backend).await?;
        let writers = WritersAtCondemnation {
            run: run.to_string(),
            writers: list_leases(backend)
                .await?
                .into_iter()
                .filter(|l| l.is_alive(now) && own.is_none_or(|o| o.id() != l.id))
                .map(|l| l.id)
                .collect(),
        };
        backend
            .put_new(
                &ObjectKey::Gc(format!("writers-{run}")),
                Bytes::from(serde_json::to_vec(&writers).unwrap_or_default()),
            )
            .await?;
        Ok(writers)
    }

    /// Phase 2 for one condemned list, if its time has come. `verified`
    /// holds the copies of blobs read and found good in this run, by blob.
    async fn finish_list(
        &self,
        pending: Pending,
        options: &GcOptions,
        lease: Option<&Lease>,
        verified: &mut IdMap<BlobId, Vec<PackId>>,
        report: &mut GcReport,
    ) -> Result<()> {
        let backend = self.backend();
        let run = pending.list.run.clone();
        let waiting = |reason: String| Waiting {
            run: run.clone(),
            packs: pending.list.packs.len() as u64,
            bytes: pending.list.packs.iter().map(|p| p.len).sum(),
            reason,
        };
        let Some(lease) = lease.filter(|_| !options.dry_run) else {
            report
                .waiting
                .push(waiting("not deleted in a dry run".into()));
            return Ok(());
        };
        let now = store_now(backend).await?;
        let age = now.duration_since(pending.published);
        if age < signed(options.grace) {
            let left = signed(options.grace) - age;
            report
                .waiting
                .push(waiting(format!("grace period: {} s left", left.as_secs())));
            return Ok(());
        }
        let writers = match pending.writers {
            Some(w) => w,
            // Interrupted before recording them: all writers alive now is a superset.
            None => {
                report.skip(Skipped {
                    object: format!("gc/writers-{run}"),
                    detail: "missing (an interrupted run?); recorded now from the leases alive now"
                        .into(),
                    damage: false,
                });
                self.record_writers(&run, Some(lease)).await?
            }
        };
        // Every lease that may have loaded the index before the list was
        // public: those recorded, and (whatever the record says) every one
        // that started no later than T1.
        let leases = list_leases(backend).await?;
        if let Some(alive) = leases.iter().find(|l| {
            l.id != lease.id()
                && l.is_alive(now)
                && (writers.writers.contains(&l.id) || l.started <= pending.published)
        }) {
            let who = alive
                .record
                .as_ref()
                .map(|r| format!("{} on {} (pid {})", r.kind, r.host, r.pid))
                .unwrap_or_else(|| alive.id.clone());
            report.waiting.push(waiting(format!(
                "a writer that started before the list was public is still running: {who}"
            )));
            return Ok(());
        }

        // Mark again over the snapshots as they are now.
        let (_, live) = self.mark_all().await?;
        // What each condemned pack holds, from the pack itself.
        let mut doomed = Vec::new();
        for c in &pending.list.packs {
            if let Some(contents) = read_pack_contents(backend, c.id).await? {
                doomed.push(contents);
            }
        }
        let doomed_ids: IdSet<PackId> = doomed.iter().map(|p| p.id).collect();
        let index = IndexObjects::load(self).await?;
        for s in index.skipped() {
            report.skip(s);
        }
        // A live blob of a doomed pack is held elsewhere only if GC has read
        // it from a surviving pack and hashed it: an index can claim anything.
        let at_risk: IdSet<BlobId> = doomed
            .iter()
            .flat_map(|p| p.blobs.iter().map(|(b, _)| *b))
            .filter(|b| live.contains(b))
            .collect();
        let indexed: IdSet<PackId> = (index.objects.iter())
            .flat_map(|(_, packs)| packs.iter().map(|p| p.id))
            .collect();
        let good_copy = |verified: &IdMap<BlobId, Vec<PackId>>, blob: &BlobId| {
            verified.get(blob).is_some_and(|packs| {
                packs
                    .iter()
                    .any(|p| !doomed_ids.contains(p) && indexed.contains(p))
            })
        };
        let wanted: IdSet<BlobId> = at_risk
            .iter()
            .filter(|b| !good_copy(verified, b))
            .copied()
            .collect();
        let claims = claimed_copies(&index.objects, &doomed_ids, &wanted);
        let failed = verify_copies(backend, claims, verified).await?;
        note_unverified(report, &failed);
        let surviving: IdSet<BlobId> = at_risk
            .iter()
            .filter(|b| good_copy(verified, b))
            .copied()
            .collect();
        let failed_blobs: IdSet<BlobId> = failed.iter().map(|(c, _)| c.blob).collect();
        let decision = plan_deletion(&doomed, &surviving, &live);
        options.pauses.at("gc:before-delete").await;
        lease.check()?;

        // Replace the index objects that name a doomed pack.
        let delete: IdSet<PackId> = decision.delete.iter().copied().collect();
        let affected: Vec<&(IndexId, Vec<IndexedPack>)> = index
            .objects
            .iter()
            .filter(|(_, packs)| packs.iter().any(|p| delete.contains(&p.id)))
            .collect();
        // Every distinct description of a surviving pack is kept: keeping
        // one per pack id could keep a lie and drop the description under
        // which a copy was verified above.
        let keep: Vec<IndexedPack> = {
            let mut seen = std::collections::HashSet::new();
            affected
                .iter()
                .flat_map(|(_, packs)| packs.iter())
                .filter(|p| {
                    !delete.contains(&p.id)
                        && seen.insert((p.id, p.len, *blake3::hash(&p.trailer.encode()).as_bytes()))
                })
                .cloned()
                .collect()
        };
        if !keep.is_empty() {
            store_index(backend, keep).await?;
        }
        let reason_of: IdMap<PackId, CondemnReason> = pending
            .list
            .packs
            .iter()
            .map(|p| (p.id, p.reason))
            .collect();
        let log = DeletionLog {
            run: run.clone(),
            time: Timestamp::now(),
            deleted: affected
                .iter()
                .map(|(id, _)| LoggedDeletion {
                    object: format!("index {id}"),
                    reason: "replaced by an index without the deleted packs".into(),
                })
                .chain(decision.delete.iter().map(|id| {
                    LoggedDeletion {
                        object: format!("pack {id}"),
                        reason: format!(
                            "{:?}",
                            reason_of
                                .get(id)
                                .copied()
                                .unwrap_or(CondemnReason::Unreferenced)
                        )
                        .to_lowercase(),
                    }
                }))
                .collect(),
            rescued: decision
                .rescue
                .iter()
                .map(|(pack, blob)| LoggedDeletion {
                    object: format!("pack {pack}"),
                    reason: if failed_blobs.contains(blob) {
                        format!(
                            "kept: it holds live chunk {blob}; the copies an index names \
                             elsewhere were read and are damaged"
                        )
                    } else {
                        format!("kept: it holds live chunk {blob}, found nowhere else")
                    },
                })
                .collect(),
        };
        let log_key = ObjectKey::Gc(format!("log-{run}-{}", Timestamp::now().as_millisecond()));
        backend
            .put_new(
                &log_key,
                Bytes::from(serde_json::to_vec(&log).unwrap_or_default()),
            )
            .await?;
        for (id, _) in &affected {
            lease.check()?;
            backend.delete(&ObjectKey::Index(*id)).await?;
            report.deleted_index += 1;
        }
        options.pauses.at("gc:index-replaced").await;
        let lens: IdMap<PackId, u64> = doomed.iter().map(|p| (p.id, p.len)).collect();
        for (n, id) in decision.delete.iter().enumerate() {
            lease.check()?;
            backend.delete(&ObjectKey::Pack(*id)).await?;
            report.deleted_packs += 1;
            report.deleted_bytes += lens.get(id).copied().unwrap_or_default();
            if n == 0 {
                options.pauses.at("gc:deleting").await;
            }
        }
        report.rescued.extend(decision.rescue);
        backend
            .delete(&ObjectKey::Gc(format!("writers-{run}")))
            .await?;
        backend
            .delete(&ObjectKey::Gc(format!("condemned-{run}")))
            .await?;
        options.pauses.at("gc:finished").await;
        Ok(())
    }

    /// Copies the given live blobs into new packs and indexes them; returns
    /// how many packs were written.
    async fn repack(
        &self,
        repack: &BTreeMap<PackId, Vec<BlobId>>,
        avoid: &IdSet<PackId>,
    ) -> Result<u64> {
        self.config().check_writer_params()?;
        let repo = self.clone().load_index().await?;
        let reader = BlobReader::new(repo, 4, 16 << 20);
        let config = self.config().clone();
        let (tx, rx) = mpsc::channel::<FinishedPack>(1);
        let uploader = tokio::spawn(upload_packs(
            self.backend().clone(),
            rx,
            2,
            Arc::new(avoid.clone()),
            Pauses::default(),
            None,
        ));
        let mut pack = PackWriter::new();
        let mut frame = FrameBuilder::default();
        let ids: Vec<BlobId> = repack.values().flatten().copied().collect();
        let mut written = 0u64;
        for batch in ids.chunks(1024) {
            let blobs = reader.read_blobs(batch).await?;
            for (id, bytes) in batch.iter().zip(blobs) {
                frame.push(*id, &bytes);
                if frame.raw_len() >= config.compression.frame_target_len as usize {
                    let level = config.compression.level;
                    let full = frame.take();
                    pack.add_frame(crate::cpu::run(move || full.compress(level)).await?);
                }
                if pack.len() >= config.pack_target_len as usize {
                    let (id, bytes, trailer) = std::mem::take(&mut pack).finish();
                    written += 1;
                    if tx.send(FinishedPack { id, bytes, trailer }).await.is_err() {
                        break;
                    }
                }
            }
        }
        if !frame.is_empty() {
            let level = config.compression.level;
            pack.add_frame(crate::cpu::run(move || frame.compress(level)).await?);
        }
        if !pack.is_empty() {
            let (id, bytes, trailer) = pack.finish();
            written += 1;
            let _ = tx.send(FinishedPack { id, bytes, trailer }).await;
        }
        drop(tx);
        let packs = uploader
            .await
            .map_err(|e| Error::Bug(format!("upload task failed: {e}")))??;
        store_index(self.backend(), packs.unindexed).await?;
        Ok(written)
    }
}

impl Repository {
    /// The statistics `cairn stats` shows (see [`StatsReport`]).
    pub(crate) async fn gc_stats(&self) -> Result<StatsReport> {
        let backend = self.backend();
        let (snapshots, live) = self.mark_all().await?;
        let index = IndexObjects::load(self).await?;
        let descriptions = index.descriptions();
        let indexed: IdSet<PackId> = descriptions.iter().map(|p| p.id).collect();
        let mut stored = 0u64;
        let mut unindexed = Vec::new();
        let mut present: IdMap<PackId, (u64, Timestamp)> = IdMap::default();
        for dir in [ObjectDir::Packs, ObjectDir::Index, ObjectDir::Snapshots] {
            for o in backend.list(dir).await? {
                stored += o.len;
                let ObjectKey::Pack(id) = o.key else { continue };
                present.insert(id, (o.len, o.last_modified));
                if !indexed.contains(&id) {
                    unindexed.push(UnindexedPack {
                        id,
                        len: o.len,
                        stored: o.last_modified,
                    });
                }
            }
        }
        let packs = merge_descriptions(&descriptions, &present);
        let condemned = load_condemned(backend).await?;
        let now = Timestamp::now();
        // Everything that could go now: no grace, no budget limit.
        let limits = RepackLimits {
            budget: u64::MAX,
            max_unused_bp: basis_points(GcOptions::default().max_unused_pct),
        };
        let plan = plan_condemnation(&packs, &live, &unindexed, &condemned, now, limits);
        let mut report = StatsReport {
            snapshots: snapshots.len() as u64,
            logical_bytes: snapshots
                .iter()
                .fold(0u64, |t, s| t.saturating_add(s.manifest.total_len())),
            unique_bytes: plan.live_bytes,
            stored_bytes: stored,
            unreferenced_bytes: plan.dead_bytes,
            ..StatsReport::default()
        };
        report.dedup_ratio = report.logical_bytes as f64 / (stored.max(1)) as f64;
        for c in &plan.condemn {
            match c.reason {
                CondemnReason::Repacked => report.repackable_bytes += c.len,
                _ => report.reclaimable_bytes += c.len,
            }
        }
        let lens: IdMap<PackId, u64> = packs.iter().map(|p| (p.id, p.len)).collect();
        report.condemned_bytes = condemned.iter().filter_map(|id| lens.get(id)).sum();
        Ok(report)
    }
}

/// Says that garbage collection refuses because referenced data is damaged.
fn refusal(e: Error) -> Error {
    const WHY: &str =
        "; garbage collection refuses to run while referenced data is missing or damaged";
    match e {
        Error::Missing { object, context } => Error::Missing {
            object,
            context: context + WHY,
        },
        Error::Corrupt { object, detail } => Error::Corrupt {
            object,
            detail: detail + WHY,
        },
        other => other,
    }
}

/// Refuses when a live blob has no copy in a pack that exists.
fn refuse_if_reachable_missing(
    packs: &[PackContents],
    present: &IdMap<PackId, (u64, Timestamp)>,
    live: &IdSet<BlobId>,
) -> Result<()> {
    let mut found: IdSet<BlobId> = IdSet::default();
    let mut missing_pack: IdMap<BlobId, PackId> = IdMap::default();
    for p in packs {
        let exists = present.get(&p.id).is_some_and(|&(len, _)| len == p.len);
        for (b, _) in &p.blobs {
            if exists {
                found.insert(*b);
            } else {
                missing_pack.insert(*b, p.id);
            }
        }
    }
    if let Some(b) = live.iter().find(|b| !found.contains(*b)) {
        let why = missing_pack
            .get(b)
            .map(|p| format!("pack {p} is missing or truncated"))
            .unwrap_or_else(|| "no index names it".into());
        return Err(Error::Missing {
            object: format!("chunk {b}, which snapshots need"),
            context: format!(
                " ({why}); garbage collection refuses to run while referenced data is missing"
            ),
        });
    }
    Ok(())
}

/// A pack's blobs from its own trailer (a range read of its tail), or
/// `None` if it is gone already.
async fn read_pack_contents(backend: &Backend, id: PackId) -> Result<Option<PackContents>> {
    let key = ObjectKey::Pack(id);
    let len = match backend.head(&key).await {
        Ok(info) => info.len,
        Err(Error::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let object = format!("pack {id}");
    let mut tail_len = (64 * 1024).min(len);
    loop {
        let tail = backend.get_range(&key, len - tail_len..len).await?;
        if let Some(trailer) = decode_trailer_from_tail(len, &tail, &object)? {
            return Ok(Some(PackContents {
                id,
                len,
                blobs: trailer.blobs.iter().map(|b| (b.id, b.len)).collect(),
            }));
        }
        if tail_len == len || tail_len < FOOTER_LEN as u64 {
            return Err(Error::corrupt(&object, "its trailer does not fit in it"));
        }
        tail_len = len.min(tail_len * 16);
    }
}

/// Adds failed copies to the report, one entry per pack.
fn note_unverified(report: &mut GcReport, failed: &[(CopyRef, String)]) {
    for (copy, why) in failed {
        match report
            .unverified
            .iter_mut()
            .find(|u| u.pack == copy.frame.pack)
        {
            Some(u) => u.blobs += 1,
            None => report.unverified.push(UnverifiedCopy {
                pack: copy.frame.pack,
                blobs: 1,
                example: copy.blob,
                detail: why.clone(),
            }),
        }
    }
}
