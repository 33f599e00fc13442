//! The repository, typed by what has been loaded.
//!
//! [`Repository`] has read and checked the config: it can list snapshots.
//! [`IndexedRepository`] has also loaded every index object: only it can back
//! up (dedup needs the index), restore or verify, so "forgot to load the
//! index" is a type error rather than a silent full re-upload.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{Backend, ObjectDir, ObjectKey};
use crate::error::{Error, Result};
use crate::format::config::Config;
use crate::format::index::{Index, decode_index};
use crate::format::key::PublicKey;
use crate::format::manifest::{Snapshot, Trust, decode_manifest};
use crate::id::{IdSet, IndexId, PackId, SnapshotId};
use crate::plan::retention::from_the_future;

/// The most blobs the index table is sized for before loading (~800 MB).
const MAX_INDEX_ESTIMATE: u64 = 1 << 24;
/// Index objects fetched and decoded at once (each up to 32 MiB, held
/// decoded until merged).
const INDEX_LOAD_CONCURRENCY: usize = 4;

/// An opened repository: config read and checked.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Backend,
    config: Arc<Config>,
}

/// A repository with its index loaded.
#[derive(Debug, Clone)]
pub struct IndexedRepository {
    repo: Repository,
    index: Arc<Index>,
    /// Index objects that could not be read (their packs are unknown).
    damaged_index: Arc<Vec<(IndexId, String)>>,
}

/// Snapshots as listed: the ones that checked out, and the ones that did not.
#[derive(Debug, Default)]
pub struct SnapshotList {
    /// Verified snapshots, oldest first, each with `seen` set.
    pub snapshots: Vec<Snapshot>,
    /// Snapshots that failed a check, with why; among them, validly signed
    /// ones claiming a time more than
    /// [`MAX_CLOCK_SKEW`](crate::plan::retention::MAX_CLOCK_SKEW) after the store
    /// received them ([`Error::FromTheFuture`]).
    pub rejected: Vec<(SnapshotId, Error)>,
    /// The rejected snapshots that are intact, signed and trusted but
    /// claim a time after they arrived: used for nothing, but their data is
    /// kept (garbage collection marks it) until they are forgotten by id.
    pub held: Vec<Snapshot>,
}

impl SnapshotList {
    /// Picks a snapshot; naming a rejected one by id gives the reason it was
    /// rejected (a bad signature, say), not "not found".
    pub fn select(
        &self,
        selector: &crate::plan::select::Selector,
        filter: &crate::plan::select::SnapshotFilter,
    ) -> Result<&Snapshot> {
        let chosen = crate::plan::select::select(&self.snapshots, selector, filter);
        if let (Err(Error::NotFound { .. }), crate::plan::select::Selector::IdPrefix(prefix)) =
            (&chosen, selector)
            && let Some((_, e)) = self
                .rejected
                .iter()
                .find(|(id, _)| id.to_hex().starts_with(prefix.as_str()))
        {
            return Err(e.duplicate());
        }
        match chosen {
            Err(Error::NotFound { .. }) if !self.rejected.is_empty() => Err(self.none_usable()),
            chosen => chosen,
        }
    }

    /// "N refused: id: why; …", for messages.
    pub fn refused_summary(&self) -> String {
        let shown: Vec<String> = self
            .rejected
            .iter()
            .take(3)
            .map(|(id, e)| format!("{}: {e}", id.short()))
            .collect();
        let more = self.rejected.len().saturating_sub(shown.len());
        format!(
            "{} refused ({}{})",
            self.rejected.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )
    }

    /// The error for "nothing usable" when snapshots were refused: damage,
    /// or a signature error when every refusal was one.
    pub fn none_usable(&self) -> Error {
        let detail = format!("no usable snapshot: {}", self.refused_summary());
        if self
            .rejected
            .iter()
            .all(|(_, e)| e.kind() == crate::ErrorKind::BadSignature)
        {
            Error::BadSignature {
                snapshot: "of every candidate".into(),
                detail,
            }
        } else {
            Error::corrupt("the repository's snapshots", detail)
        }
    }
}

impl Repository {
    /// Creates a repository: checks the store honours create-only writes,
    /// then writes the config (create-only, so two `init`s cannot both win).
    pub async fn init(backend: Backend, trusted_keys: Vec<PublicKey>) -> Result<Repository> {
        Self::init_with_config(backend, Config::new(trusted_keys)?).await
    }

    /// Creates a repository with a config chosen by the caller (parameter studies, tests).
    pub async fn init_with_config(backend: Backend, config: Config) -> Result<Repository> {
        config.validate()?;
        backend.probe_conditional_create().await?;
        match backend
            .put_new(&ObjectKey::Config, Bytes::from(config.encode()))
            .await?
        {
            crate::backend::Created::New => Ok(Repository {
                backend,
                config: Arc::new(config),
            }),
            crate::backend::Created::Existed => Err(Error::AlreadyExists {
                what: format!("a repository already exists at {}", backend.url()),
                hint: "use it as it is, or choose another --repo".into(),
            }),
        }
    }

    /// Opens an existing repository.
    pub async fn open(backend: Backend) -> Result<Repository> {
        let bytes = match backend.get(&ObjectKey::Config).await {
            Ok(b) => b,
            Err(Error::Missing { .. }) => {
                return Err(Error::RepositoryNotFound {
                    url: backend.url().to_string(),
                    detail: "it has no config object".into(),
                });
            }
            Err(e) => return Err(e),
        };
        let config = Config::decode(&bytes)?;
        Ok(Repository {
            backend,
            config: Arc::new(config),
        })
    }

    /// The storage.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The trust policy: `override_keys` when given, else the config's.
    pub fn trust(&self, override_keys: &[PublicKey]) -> Trust {
        if override_keys.is_empty() {
            self.config.trust()
        } else {
            Trust::Keys(override_keys.to_vec())
        }
    }

    /// Lists every snapshot and checks each (hash, signature, trust, and
    /// its time against when the store received it).
    pub async fn load_snapshots(&self, trust: &Trust) -> Result<SnapshotList> {
        Ok(self.load_snapshots_with_bytes(trust).await?.0)
    }

    /// [`Repository::load_snapshots`], with the exact bytes each verified
    /// snapshot was checked in (a copier writes those, never a second read).
    pub async fn load_snapshots_with_bytes(
        &self,
        trust: &Trust,
    ) -> Result<(SnapshotList, std::collections::HashMap<SnapshotId, Bytes>)> {
        let listed = self.backend.list(ObjectDir::Snapshots).await?;
        let results: Vec<(SnapshotId, Result<(Snapshot, Bytes)>)> = futures::stream::iter(listed)
            .map(|info| async move {
                let ObjectKey::Snapshot(id) = info.key else {
                    unreachable!("listing snapshots yields snapshot keys")
                };
                let loaded = match self.backend.get(&info.key).await {
                    Ok(bytes) => {
                        self.check_snapshot(id, bytes, info.last_modified, trust)
                            .await
                    }
                    Err(e) => Err(e),
                };
                (id, loaded)
            })
            .buffer_unordered(self.backend.small_reads())
            .collect()
            .await;
        let mut list = SnapshotList::default();
        let mut bytes = std::collections::HashMap::new();
        for (id, result) in results {
            match result {
                // Signed and trusted, but dated after its arrival: refused
                // for every use, yet its data stays (gc marks `held`).
                Ok((s, b)) => match future_error(&s) {
                    None => {
                        list.snapshots.push(s);
                        bytes.insert(id, b);
                    }
                    Some(e) => {
                        list.rejected.push((id, e));
                        list.held.push(s);
                    }
                },
                // The store failing is not the snapshot's fault: stop.
                Err(e @ (Error::Unreachable { .. } | Error::AccessDenied { .. })) => return Err(e),
                Err(e) => list.rejected.push((id, e)),
            }
        }
        list.snapshots.sort_by_key(|s| (s.manifest.time, s.id));
        list.rejected.sort_by_key(|(id, _)| *id);
        Ok((list, bytes))
    }

    /// Reads and checks one snapshot.
    pub async fn load_snapshot(&self, id: SnapshotId, trust: &Trust) -> Result<Snapshot> {
        let key = ObjectKey::Snapshot(id);
        let bytes = self.backend.get(&key).await?;
        let seen = self.backend.head(&key).await?.last_modified;
        let snapshot = self.check_snapshot(id, bytes, seen, trust).await?.0;
        match future_error(&snapshot) {
            Some(e) => Err(e),
            None => Ok(snapshot),
        }
    }

    /// Checks a snapshot's bytes (§13.1) and its time against `seen`, when
    /// the store received it: one claiming a time more than
    /// [`MAX_CLOCK_SKEW`](crate::plan::retention::MAX_CLOCK_SKEW) later is
    /// refused (format-spec §12.6).
    async fn check_snapshot(
        &self,
        id: SnapshotId,
        bytes: Bytes,
        seen: jiff::Timestamp,
        trust: &Trust,
    ) -> Result<(Snapshot, Bytes)> {
        let config = Arc::clone(&self.config);
        let trust = trust.clone();
        let checked = bytes.clone();
        let mut snapshot =
            crate::cpu::run(move || decode_manifest(&checked, id, &config.id, &trust)).await?;
        snapshot.seen = Some(seen);
        Ok((snapshot, bytes))
    }

    /// Loads every index object it can. A damaged one does not stop
    /// restores or backups: its packs are unknown, so what they held counts
    /// as missing (a backup stores it again) and `verify` reports it; it is
    /// logged here and kept in [`IndexedRepository::damaged_index`].
    pub async fn load_index(self) -> Result<IndexedRepository> {
        self.load_index_excluding(&IdSet::default()).await
    }

    /// Loads the index without the packs in `exclude` (the ones garbage
    /// collection condemned: writers must not rely on them).
    pub async fn load_index_excluding(self, exclude: &IdSet<PackId>) -> Result<IndexedRepository> {
        let (index, damaged) = self.load_index_tolerant_excluding(exclude).await?;
        let damaged: Vec<(IndexId, String)> = damaged
            .into_iter()
            .map(|(id, e)| (id, e.to_string()))
            .collect();
        for (id, e) in &damaged {
            tracing::warn!("index {id} is unreadable and ignored ({e}); run `cairn verify`");
        }
        Ok(IndexedRepository {
            repo: self,
            index: Arc::new(index),
            damaged_index: Arc::new(damaged),
        })
    }

    /// Loads every index object it can, returning the damaged ones apart.
    pub async fn load_index_tolerant(&self) -> Result<(Index, Vec<(IndexId, Error)>)> {
        self.load_index_tolerant_excluding(&IdSet::default()).await
    }

    /// [`Repository::load_index_tolerant`] without the packs in `exclude`.
    pub async fn load_index_tolerant_excluding(
        &self,
        exclude: &IdSet<PackId>,
    ) -> Result<(Index, Vec<(IndexId, Error)>)> {
        let mut listed = self.backend.list(ObjectDir::Index).await?;
        // Deterministic: the same repository always yields the same index
        // (objects added in id order, the first copy of a blob primary).
        listed.sort_by_key(|o| o.key.path());
        // Sized once from the objects' lengths (a blob takes at least 36
        // bytes of an index object): no rehash while loading.
        // The lengths are the store's claim: bounded as reads are (§14),
        // and the estimate capped; past it the table grows as it fills.
        let blobs: u64 = listed
            .iter()
            .map(|o| o.len.min(crate::backend::MAX_INDEX_OBJECT_LEN) / 36)
            .sum::<u64>()
            .min(MAX_INDEX_ESTIMATE);
        let mut index = Index::with_capacity(usize::try_from(blobs).unwrap_or(0));
        let mut damaged = Vec::new();
        // Decoded a few at a time and merged in order as they arrive, so
        // memory holds the index and a few objects, not every object.
        let mut loaded = futures::stream::iter(listed)
            .map(|info| async move {
                let ObjectKey::Index(id) = info.key else {
                    unreachable!("listing index yields index keys")
                };
                let result = match self.backend.get(&info.key).await {
                    Ok(bytes) => crate::cpu::run(move || decode_index(&bytes, id)).await,
                    Err(e) => Err(e),
                };
                (id, result)
            })
            .buffered(INDEX_LOAD_CONCURRENCY.min(self.backend.small_reads()));
        while let Some((id, result)) = loaded.next().await {
            match result {
                Ok(mut packs) => {
                    packs.retain(|p| !exclude.contains(&p.id));
                    index.add(Some(id), &packs)
                }
                Err(e @ (Error::Unreachable { .. } | Error::AccessDenied { .. })) => return Err(e),
                Err(e) => damaged.push((id, e)),
            }
        }
        Ok((index, damaged))
    }

    /// Attaches an index loaded elsewhere (verify loads it tolerantly).
    pub fn with_index(self, index: Index) -> IndexedRepository {
        IndexedRepository {
            repo: self,
            index: Arc::new(index),
            damaged_index: Arc::default(),
        }
    }
}

impl IndexedRepository {
    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The storage.
    pub fn backend(&self) -> &Backend {
        &self.repo.backend
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.repo.config
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Index objects that could not be read when the index was loaded.
    pub fn damaged_index(&self) -> &[(IndexId, String)] {
        &self.damaged_index
    }
}

/// The refusal of a snapshot that claims a time more than
/// [`MAX_CLOCK_SKEW`](crate::plan::retention::MAX_CLOCK_SKEW) after the store
/// received it (format-spec §12.6), if it does.
fn future_error(snapshot: &Snapshot) -> Option<Error> {
    let seen = snapshot.seen?;
    from_the_future(snapshot.manifest.time, seen).then(|| Error::FromTheFuture {
        snapshot: snapshot.id.to_string(),
        time: snapshot.manifest.time.to_string(),
        seen: seen.to_string(),
    })
}
