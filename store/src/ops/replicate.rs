//! Replication: copy snapshots and exactly the packs they need that the
//! destination lacks, checked on the way, manifests last.
//!
//! ```text
//! source: signed manifests ─▶ check signatures and times ─▶ mark blobs ─▶ packs needed
//! destination: packs present ─────────────────────────────────▶ packs missing
//! copy each missing pack (N at once): get, check the pack hash and every
//! blob's hash, put create-only ─▶ index objects for them ─▶ manifests, oldest first
//! ```
//! Every object is written from the very bytes that were checked: a
//! manifest is read once, checked, and those bytes are copied; a pack is
//! read once, checked, and those bytes are put. A source snapshot that fails
//! its checks (or claims a time from the future) is skipped and reported,
//! unless it was named: then the run is refused. A run that would create
//! the destination checks everything before writing its config, so a
//! refused first pull leaves nothing behind.
//! The write order is a backup's: packs, then the index naming them, then
//! manifests, so the destination never lists a snapshot whose data is
//! incomplete, and an interrupted run leaves at most unreferenced packs,
//! which the next run finds present and does not send again. The
//! destination records the newest snapshot it accepted from each source
//! (`replicas/<source repository id>`), so a source that later shows an older
//! newest snapshot (rolled back, or replaced by an old copy) is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ObjectDir, ObjectKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::index::{Index, IndexedPack};
use crate::format::key::PublicKey;
use crate::format::manifest::{Snapshot, Trust};
use crate::format::pack::decode_pack;
use crate::id::{BlobId, IdSet, PackId, SnapshotId};
use crate::ops::mark::mark;
use crate::ops::packer::store_index;
use crate::ops::session::WriteOptions;
use crate::ops::verify::check_pack;
use crate::plan::select::{Selector, SnapshotFilter};
use crate::repo::{Repository, SnapshotList};

/// Which snapshots to copy.
#[derive(Debug, Clone, Default)]
pub enum Selection {
    /// Every snapshot.
    #[default]
    All,
    /// The newest N of each host and tag set (each `cairn run` source).
    Latest(usize),
    /// Those at or after a time.
    Since(Timestamp),
    /// These (ids or unique prefixes).
    Ids(Vec<String>),
}

/// How to replicate.
#[derive(Clone)]
pub struct ReplicateOptions {
    /// Which snapshots.
    pub selection: Selection,
    /// Trust only these keys (else the destination's, else the source's).
    pub trust: Vec<PublicKey>,
    /// Packs copied at once.
    pub concurrency: usize,
    /// Re-read every copied pack at the destination and check it.
    pub verify: bool,
    /// Refuse a source whose newest snapshot is older than this.
    pub max_age: Option<jiff::SignedDuration>,
    /// Told of every pack copied (`read` with its bytes).
    pub progress: Arc<dyn crate::ops::backup::Progress>,
}

impl std::fmt::Debug for ReplicateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateOptions")
            .field("selection", &self.selection)
            .field("concurrency", &self.concurrency)
            .field("verify", &self.verify)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            selection: Selection::All,
            trust: Vec::new(),
            concurrency: 4,
            verify: false,
            max_age: None,
            progress: Arc::new(crate::ops::backup::NoProgress),
        }
    }
}

/// What a replication did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicateReport {
    /// Whether the destination was created as a replica by this run.
    pub initialised: bool,
    /// Snapshots copied.
    pub snapshots_copied: Vec<SnapshotId>,
    /// Selected snapshots the destination already had.
    pub snapshots_present: u64,
    /// Packs copied.
    pub packs_copied: u64,
    /// Packs the destination already had.
    pub packs_present: u64,
    /// Bytes sent: packs, index objects and manifests.
    pub bytes_sent: u64,
    /// Bytes of needed packs not sent because the destination had them.
    pub bytes_skipped: u64,
    /// Blobs checked against their ids on arrival.
    pub blobs_checked: u64,
    /// Packs re-read at the destination (`verify`).
    pub packs_verified: u64,
    /// Source snapshots skipped because they failed a check, with why.
    pub refused: Vec<RefusedSnapshot>,
}

/// A source snapshot `replicate` did not copy because it failed a check.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Why.
    pub reason: String,
}

/// What a destination remembers of a source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReplicaState {
    source: String,
    newest: SnapshotId,
    newest_time: Timestamp,
}

impl Repository {
    /// Copies snapshots of this repository to `destination`.
    pub async fn replicate(
        &self,
        destination: Backend,
        options: &ReplicateOptions,
    ) -> Result<ReplicateReport> {
        let mut report = ReplicateReport::default();
        let source_id = self.config().id;
        // The destination: a replica of this repository, or, once every
        // check below has passed, created as one.
        let existing = match Repository::open(destination.clone()).await {
            Ok(repo) => Some(repo),
            Err(Error::RepositoryNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(dest) = &existing
            && dest.config().id != source_id
        {
            return Err(Error::AlreadyExists {
                what: format!(
                    "{} is another repository ({}), not a replica of {} ({source_id})",
                    destination.url(),
                    dest.config().id,
                    self.backend().url()
                ),
                hint: "replicate into an empty location or an earlier replica of this repository"
                    .into(),
            });
        }
        // Signatures are checked against the keys given, else those the
        // destination trusts (a new one: the source's, copied with its config).
        let trust = match &existing {
            _ if !options.trust.is_empty() => Trust::Keys(options.trust.clone()),
            Some(dest) => dest.trust(&[]),
            None => self.config().trust(),
        };
        let (mut list, manifests) = self.load_snapshots_with_bytes(&trust).await?;
        hold_future(&mut list, Timestamp::now());
        if existing.is_none() && options.trust.is_empty() {
            refuse_unpinned_first_pull(&list)?;
        }
        report.refused = list
            .rejected
            .iter()
            .map(|(id, e)| RefusedSnapshot {
                id: *id,
                reason: e.to_string(),
            })
            .collect();
        let newest = list.snapshots.last().cloned();
        check_freshness(&destination, self, newest.as_ref(), options).await?;
        let selected = select(&list, &options.selection)?;

        let dest = match existing {
            Some(dest) => dest,
            None => {
                report.initialised = true;
                // The same repository, trusting the keys given (else the
                // source's).
                let mut config = self.config().clone();
                if !options.trust.is_empty() {
                    config.trusted_keys = options.trust.clone();
                }
                Repository::init_with_config(destination.clone(), config).await?
            }
        };
        let at_destination = present(&destination, ObjectDir::Snapshots, |k| match k {
            ObjectKey::Snapshot(id) => Some(id),
            _ => None,
        })
        .await?;
        let (done, todo): (Vec<Snapshot>, Vec<Snapshot>) = selected
            .into_iter()
            .partition(|s| at_destination.contains(&s.id));
        report.snapshots_present = done.len() as u64;

        // Writers hold a lease, so a gc at the destination waits for us.
        let session = dest
            .clone()
            .begin_write(&WriteOptions {
                kind: "replicate",
                ..WriteOptions::default()
            })
            .await?;
        let copied = self
            .copy(&dest, &session, &todo, &manifests, options, &mut report)
            .await;
        let released = session.finish().await;
        copied?;
        released?;
        if options.verify {
            // Every selected manifest at the destination, copied now or
            // before (perhaps damaged by an earlier run), is the one checked here.
            for s in done.iter().chain(&todo) {
                let key = ObjectKey::Snapshot(s.id);
                let there = destination.get(&key).await?;
                if manifests.get(&s.id) != Some(&there) {
                    return Err(Error::corrupt(
                        format!("snapshot {} at {}", s.id, destination.url()),
                        "differs from the source's manifest checked by this run; delete it at the \
                         destination and run replicate again",
                    ));
                }
            }
        }

        if let Some(n) = newest {
            remember(&destination, self, &n).await?;
        }
        Ok(report)
    }

    /// Copies what `todo` needs and then its manifests, as a writer under
    /// `session`'s lease: packs a garbage collection at the destination has
    /// condemned are never taken as present (gc may delete them before our
    /// snapshots land), and nothing is written once the lease may have lapsed.
    async fn copy(
        &self,
        dest: &Repository,
        session: &crate::ops::session::WriteSession,
        todo: &[Snapshot],
        manifests: &std::collections::HashMap<SnapshotId, Bytes>,
        options: &ReplicateOptions,
        report: &mut ReplicateReport,
    ) -> Result<()> {
        if todo.is_empty() {
            return Ok(());
        }
        let destination = session.backend();
        let condemned = session.condemned();
        let source = self.clone().load_index().await?;
        let mut live: IdSet<BlobId> = IdSet::default();
        mark(&source, todo, &mut live, &mut IdSet::default()).await?;
        let index = source.index();
        let mut needed: Vec<u32> = live
            .iter()
            .filter_map(|id| index.get(id).map(|loc| loc.pack))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let at_destination = present(destination, ObjectDir::Packs, |k| match k {
            ObjectKey::Pack(id) => Some(id),
            _ => None,
        })
        .await?;
        // A pack there that a gc condemned is neither present nor to be sent
        // (its name is taken): its blobs must be found in packs gc keeps
        // (repacked there, say), else the run is refused below.
        let (present, missing): (Vec<u32>, Vec<u32>) = needed
            .into_iter()
            .filter(|p| !condemned.contains(&index.pack(*p).id))
            .partition(|p| at_destination.contains(&index.pack(*p).id));
        report.packs_present = present.len() as u64;
        report.bytes_skipped = present.iter().map(|p| index.pack(*p).len).sum();
        // Packs an interrupted run copied but did not yet index: checked
        // where they are, then indexed with the rest.
        let (dest_index, _) = dest.load_index_tolerant().await?;
        let mut orphans = Vec::new();
        for p in present {
            let id = index.pack(p).id;
            if dest_index.pack_position(&id).is_none() {
                let bytes = destination.get(&ObjectKey::Pack(id)).await?;
                orphans.push(check_arrival(id, bytes).await.map_err(|e| Error::Corrupt {
                    object: format!("pack {id} at {}", destination.url()),
                    detail: format!(
                        "left by an interrupted replication, and damaged: {e}; delete it and run again"
                    ),
                })?);
            }
        }

        let sent = Arc::new(AtomicU64::new(0));
        let checked = Arc::new(AtomicU64::new(0));
        let fetch = |id: PackId| {
            let (source, destination) = (self.backend().clone(), destination.clone());
            let (sent, checked) = (Arc::clone(&sent), Arc::clone(&checked));
            let progress = Arc::clone(&options.progress);
            async move {
                let bytes = source.get(&ObjectKey::Pack(id)).await?;
                let pack = check_arrival(id, bytes.clone())
                    .await
                    .map_err(|e| match e {
                        Error::Corrupt { object, detail } => Error::Corrupt {
                            object: format!("{object} at the source {}", source.url()),
                            detail: format!("{detail}; nothing of it was copied"),
                        },
                        other => other,
                    })?;
                checked.fetch_add(pack.trailer.blobs.len() as u64, Ordering::Relaxed);
                destination
                    .put_new(&ObjectKey::Pack(id), bytes.clone())
                    .await?;
                sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                progress.read(bytes.len() as u64);
                Ok::<IndexedPack, Error>(pack)
            }
        };
        let results: Vec<(u32, Result<IndexedPack>)> = futures::stream::iter(missing)
            .map(|position| {
                let fetched = fetch(index.pack(position).id);
                async move { (position, fetched.await) }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
        // A damaged copy at the source is not the end: another indexed copy
        // of the same blobs may be intact (a fake pack shadowing a genuine one).
        let mut packs = Vec::new();
        let mut bad: IdSet<u32> = IdSet::default();
        let mut first_damage: Option<Error> = None;
        // A damaged or missing pack: every description of it is passed over.
        let mut failed = |id: PackId, e: Error, bad: &mut IdSet<u32>| {
            bad.extend(index.pack_positions_of(&id));
            first_damage.get_or_insert(e);
        };
        let mut fetched: IdSet<PackId> = IdSet::default();
        for (position, result) in results {
            let id = index.pack(position).id;
            fetched.insert(id);
            match result {
                Ok(pack) => packs.push(pack),
                Err(e) if e.kind() == ErrorKind::Corrupt => failed(id, e, &mut bad),
                Err(e) => return Err(e),
            }
        }
        // Every live blob must now be in a pack checked on arrival (or
        // indexed at the destination): an index that lied about a pack's
        // contents is caught here, and its blobs fetched from another copy.
        fetched.extend(orphans.iter().map(|p| p.id));
        loop {
            let covered: IdSet<BlobId> = packs
                .iter()
                .chain(&orphans)
                .flat_map(|p| p.trailer.blobs.iter().map(|b| b.id))
                .collect();
            // Indexed there, in a pack gc has not condemned.
            let kept_there = |b: &BlobId| {
                dest_index
                    .locations(b)
                    .any(|loc| !condemned.contains(&dest_index.pack(loc.pack).id))
            };
            let uncovered: Vec<&BlobId> = live
                .iter()
                .filter(|b| !covered.contains(b) && !kept_there(b))
                .collect();
            if uncovered.is_empty() {
                break;
            }
            let mut retry: Vec<PackId> = Vec::new();
            for blob in uncovered {
                let usable = |p: &u32| {
                    let id = index.pack(*p).id;
                    !bad.contains(p) && !fetched.contains(&id) && !condemned.contains(&id)
                };
                let next = index.locations(blob).map(|loc| loc.pack).find(usable);
                match next {
                    Some(p) => retry.push(index.pack(p).id),
                    None => {
                        if let Some(id) = index
                            .locations(blob)
                            .map(|loc| index.pack(loc.pack).id)
                            .find(|id| condemned.contains(id))
                        {
                            return Err(condemned_needed(id, destination));
                        }
                        let seen = first_damage
                            .as_ref()
                            .map(|e| format!("; the first damaged copy: {e}"))
                            .unwrap_or_default();
                        return Err(Error::corrupt(
                            format!("chunk {blob} at the source {}", self.backend().url()),
                            format!("no indexed pack holds an intact copy of it{seen}"),
                        ));
                    }
                }
                // Positions of packs already fetched did not hold it: lies.
                bad.extend(
                    index
                        .locations(blob)
                        .map(|loc| loc.pack)
                        .filter(|p| fetched.contains(&index.pack(*p).id)),
                );
            }
            retry.sort();
            retry.dedup();
            for id in retry {
                fetched.insert(id);
                if at_destination.contains(&id) {
                    // There already (an earlier run's): checked where it is.
                    let bytes = destination.get(&ObjectKey::Pack(id)).await?;
                    orphans.push(check_arrival(id, bytes).await.map_err(|e| {
                        Error::corrupt(
                            format!("pack {id} at {}", destination.url()),
                            format!(
                                "left by an earlier run, and damaged: {e}; delete it and run again"
                            ),
                        )
                    })?);
                    continue;
                }
                match fetch(id).await {
                    Ok(pack) => packs.push(pack),
                    Err(e) if e.kind() == ErrorKind::Corrupt => failed(id, e, &mut bad),
                    Err(e) => return Err(e),
                }
            }
        }
        report.packs_copied = packs.len() as u64;
        report.blobs_checked = checked.load(Ordering::Relaxed);
        let mut bytes_sent = sent.load(Ordering::Relaxed);

        if options.verify {
            for p in &packs {
                let bytes = destination.get(&ObjectKey::Pack(p.id)).await?;
                check_arrival(p.id, bytes)
                    .await
                    .map_err(|e| Error::Corrupt {
                        object: format!("pack {} at {}", p.id, destination.url()),
                        detail: format!("re-read after copying: {e}"),
                    })?;
                report.packs_verified += 1;
            }
        }
        packs.extend(orphans);
        session.lease().check()?;
        bytes_sent += store_index(destination, packs).await?;
        // Manifests last, oldest first, byte for byte (their signatures):
        // the bytes that were checked, never a second read.
        let mut todo: Vec<&Snapshot> = todo.iter().collect();
        todo.sort_by_key(|s| s.manifest.time);
        for s in todo {
            let bytes = manifests
                .get(&s.id)
                .cloned()
                .ok_or_else(|| Error::Missing {
                    object: format!("snapshot {}", s.id),
                    context: format!(" among those read from {}", self.backend().url()),
                })?;
            bytes_sent += bytes.len() as u64;
            session.lease().check()?;
            destination
                .put_new(&ObjectKey::Snapshot(s.id), bytes)
                .await?;
            report.snapshots_copied.push(s.id);
        }
        report.bytes_sent = bytes_sent;
        Ok(())
    }
}

/// The refusal when a pack the snapshots need is condemned at the
/// destination: it cannot be copied again under its own name until that
/// garbage collection has deleted it.
fn condemned_needed(pack: PackId, destination: &Backend) -> Error {
    Error::Locked {
        what: format!(
            "pack {pack}, which the snapshots to copy need, is condemned at {} by a garbage \
             collection in progress there (gc/condemned-*), which may delete it at any time",
            destination.url()
        ),
        hint: "nothing was written; run `cairn gc` at the destination to finish that \
               collection (it deletes the pack once its grace period has passed), then \
               replicate again: the pack is copied afresh"
            .into(),
    }
}

/// A pack as it arrived: its hash is its name and every blob hashes to its
/// id; returns what an index object records of it.
async fn check_arrival(id: PackId, bytes: Bytes) -> Result<IndexedPack> {
    crate::cpu::run(move || {
        let trailer = decode_pack(&bytes, id)?;
        let pack = IndexedPack {
            id,
            len: bytes.len() as u64,
            trailer,
        };
        let mut index = Index::new();
        index.add(None, std::slice::from_ref(&pack));
        // Every copy: a blob the trailer lists twice is checked twice.
        let blobs = index
            .copies()
            .map(|(b, loc)| (*b, loc.frame, loc.offset, loc.len))
            .collect();
        let check = check_pack(index.pack(0), blobs, &bytes);
        match check.problems.first() {
            Some(p) => Err(Error::corrupt(p.object.clone(), p.detail.clone())),
            None => match check.bad_blobs.first() {
                Some((blob, why)) => Err(Error::corrupt(
                    format!("chunk {blob} in pack {id}"),
                    why.clone(),
                )),
                None => Ok(pack),
            },
        }
    })
    .await
}

/// A replica created without `--trust` trusts the keys the source's config
/// names. A source snapshot signed by another key then suggests that config
/// was replaced (an attacker's key in place of the owner's): refuse before
/// anything is written.
fn refuse_unpinned_first_pull(list: &SnapshotList) -> Result<()> {
    match list
        .rejected
        .iter()
        .find(|(_, e)| matches!(e, Error::UntrustedKey { .. }))
    {
        Some((id, e)) => Err(Error::BadSignature {
            snapshot: id.to_string(),
            detail: format!(
                "{e}. This run would create a replica trusting only the keys the source's \
                 config names, and this snapshot is signed by another: the source's config may \
                 have been replaced. Nothing was written; pass --trust with the keys you expect"
            ),
        }),
        None => Ok(()),
    }
}

/// The selected snapshots. A rejected snapshot is selected only when named
/// (then the run is refused with why it was rejected).
fn select(list: &SnapshotList, selection: &Selection) -> Result<Vec<Snapshot>> {
    let snapshots = &list.snapshots;
    Ok(match selection {
        Selection::All => snapshots.clone(),
        Selection::Latest(n) => newest_of_each_source(snapshots, *n),
        Selection::Since(t) => snapshots
            .iter()
            .filter(|s| s.manifest.time >= *t)
            .cloned()
            .collect(),
        Selection::Ids(ids) => ids
            .iter()
            .map(|id| {
                list.select(&Selector::parse(id)?, &SnapshotFilter::default())
                    .cloned()
            })
            .collect::<Result<_>>()?,
    })
}

/// What `backend` holds of one kind of object, by `id`.
async fn present<T: std::hash::Hash + Eq>(
    backend: &Backend,
    dir: ObjectDir,
    id: fn(ObjectKey) -> Option<T>,
) -> Result<std::collections::HashSet<T>> {
    Ok(backend
        .list(dir)
        .await?
        .into_iter()
        .filter_map(|o| id(o.key))
        .collect())
}

/// Refuses (and holds) the source's snapshots that claim a time more than
/// [`MAX_CLOCK_SKEW`](crate::plan::retention::MAX_CLOCK_SKEW) after `now`, this
/// machine's clock. The source dates its own objects, and a source the
/// signer controls (node4's own store, pulled over `ssh://` or from its
/// `cairn serve`) dates a forgery's object as far ahead as its `time`,
/// which its own check then lets through: it must not become the newest
/// accepted snapshot (every later pull would be refused as a rollback),
/// satisfy `--max-age`, or be copied.
fn hold_future(list: &mut SnapshotList, now: Timestamp) {
    let (future, timely): (Vec<Snapshot>, Vec<Snapshot>) = std::mem::take(&mut list.snapshots)
        .into_iter()
        .partition(|s| crate::plan::retention::from_the_future(s.manifest.time, now));
    list.snapshots = timely;
    for s in future {
        list.rejected.push((
            s.id,
            Error::FromTheFuture {
                snapshot: s.id.to_string(),
                time: s.manifest.time.to_string(),
                seen: now.to_string(),
            },
        ));
        list.held.push(s);
    }
    list.rejected.sort_by_key(|(id, _)| *id);
}

fn state_key(source: &Repository) -> ObjectKey {
    ObjectKey::Replica(source.config().id.to_string())
}

/// The newest `n` snapshots of each host and tag set, in time order
/// (`snapshots` is oldest first).
fn newest_of_each_source(snapshots: &[Snapshot], n: usize) -> Vec<Snapshot> {
    let mut kept: std::collections::HashMap<(&str, Vec<&str>), usize> = Default::default();
    let mut out: Vec<Snapshot> = snapshots
        .iter()
        .rev()
        .filter(|s| {
            let mut tags: Vec<&str> = s.manifest.tags.iter().map(String::as_str).collect();
            tags.sort_unstable();
            let count = kept.entry((s.manifest.host.as_str(), tags)).or_default();
            *count += 1;
            *count <= n
        })
        .cloned()
        .collect();
    out.reverse();
    out
}

/// Refuses a source rolled back behind what the destination accepted, or
/// with nothing newer than `max_age`.
async fn check_freshness(
    destination: &Backend,
    source: &Repository,
    newest: Option<&Snapshot>,
    options: &ReplicateOptions,
) -> Result<()> {
    let state = accepted(destination, source).await?;
    if let Some(state) = state {
        let rolled_back = match newest {
            None => true,
            Some(n) => n.manifest.time < state.newest_time,
        };
        if rolled_back {
            return Err(Error::RolledBack {
                from: source.backend().url().to_string(),
                detail: format!(
                    "its newest snapshot is {}, but {} (of {}) was accepted before",
                    newest.map_or("none".to_string(), |n| format!(
                        "{} of {}",
                        n.id.short(),
                        n.manifest.time
                    )),
                    state.newest.short(),
                    state.newest_time
                ),
            });
        }
    }
    if let Some(max_age) = options.max_age {
        let age = newest.map(|n| Timestamp::now().duration_since(n.manifest.time));
        if age.is_none_or(|a| a > max_age) {
            return Err(Error::Stale {
                from: source.backend().url().to_string(),
                detail: match newest {
                    Some(n) => format!(
                        "its newest snapshot {} is from {}, older than {max_age:#}",
                        n.id.short(),
                        n.manifest.time
                    ),
                    None => "it has no snapshots".into(),
                },
            });
        }
    }
    Ok(())
}

/// The newest snapshot `destination` accepted from `source`: the newest of
/// its state object and of those an append-only writer created beside it.
async fn accepted(destination: &Backend, source: &Repository) -> Result<Option<ReplicaState>> {
    let ObjectKey::Replica(base) = state_key(source) else {
        return Err(Error::Bug("a replica state key".into()));
    };
    let mut keys = Vec::new();
    for o in destination.list(ObjectDir::Replicas).await? {
        if let ObjectKey::Replica(name) = &o.key
            && (*name == base
                || name
                    .strip_prefix(base.as_str())
                    .is_some_and(|rest| rest.starts_with('.')))
        {
            keys.push(o.key);
        }
    }
    let mut newest: Option<ReplicaState> = None;
    for key in keys {
        let bytes = match destination.get(&key).await {
            Ok(b) => b,
            Err(Error::Missing { .. }) => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        let state: ReplicaState = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(
                format!("{key} at {}", destination.url()),
                format!("{e}; delete it to accept the source's snapshots as they are"),
            )
        })?;
        if newest
            .as_ref()
            .is_none_or(|n| state.newest_time > n.newest_time)
        {
            newest = Some(state);
        }
    }
    Ok(newest)
}

/// Removes the replica states an append-only writer created that a newer
/// one of the same source supersedes (only the newest counts, §12.3), so
/// each replication does not read one more every night. A state that does
/// not parse is left for a person. Returns how many went.
pub async fn prune_states(backend: &Backend) -> Result<u64> {
    let mut by_source: std::collections::HashMap<String, Vec<(ObjectKey, Timestamp)>> =
        Default::default();
    for o in backend.list(ObjectDir::Replicas).await? {
        let ObjectKey::Replica(name) = &o.key else {
            continue;
        };
        let base = name.split_once('.').map_or(name.as_str(), |(b, _)| b);
        let Ok(bytes) = backend.get(&o.key).await else {
            continue;
        };
        if let Ok(state) = serde_json::from_slice::<ReplicaState>(&bytes) {
            by_source
                .entry(base.to_string())
                .or_default()
                .push((o.key, state.newest_time));
        }
    }
    let mut removed = 0;
    for (base, mut states) in by_source {
        let Some(newest) = states.iter().map(|(_, t)| *t).max() else {
            continue;
        };
        // The overwritten state of a plain writer stays; of the created
        // ones, those older than the newest go.
        states.retain(|(k, t)| *t < newest && *k != ObjectKey::Replica(base.clone()));
        for (key, _) in states {
            backend.delete(&key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Records the newest snapshot accepted from `source`: rewrites its state,
/// or on an append-only store creates one named by the snapshot.
async fn remember(destination: &Backend, source: &Repository, newest: &Snapshot) -> Result<()> {
    let state = ReplicaState {
        source: source.backend().url().to_string(),
        newest: newest.id,
        newest_time: newest.manifest.time,
    };
    let bytes = serde_json::to_vec_pretty(&state).map_err(|e| Error::invalid(e.to_string()))?;
    let key = state_key(source);
    if destination.is_append_only() {
        let ObjectKey::Replica(base) = key else {
            return Err(Error::Bug("a replica state key".into()));
        };
        // Named by the snapshot's first 128 bits: names stay within the
        // 128 characters a state object's may have.
        let key = ObjectKey::Replica(format!("{base}.{}", &newest.id.to_hex()[..32]));
        destination.put_new(&key, Bytes::from(bytes)).await?;
        return Ok(());
    }
    destination.put_overwrite(&key, Bytes::from(bytes)).await
}
