//! Backing up CouchDB databases.
//!
//! ```text
//! per database (a thread each, `jobs` at once)                       ingest
//! _changes?style=all_docs ─▶ sort ids ─┬▶ design.ndjson ───────────┐
//!    (spills to disk)                  ├▶ docs.ndjson  ◀─ merge ─ previous docs.ndjson
//!                                      │     _bulk_get?revs=true for changed leaves only
//!                                      ├▶ attachments.bin ◀─ merge ─ previous attachments.bin
//!                                      │     GET attachment for new ones only
//!                                      ├▶ local.ndjson              ├─ pipes ─▶ chunk, dedup, pack
//!                                      └▶ meta.json ────────────────┘
//! ```
//! A database's streams are produced in the order the backup stores them,
//! each through a bounded pipe, so memory stays bounded whatever the
//! database's size and no copy of it lands on disk. After the first backup
//! only the changes since the previous snapshot are listed and fetched; the
//! previous base and overlays are written again (deduplicated to nothing)
//! with one new overlay of what changed. Each snapshot is still complete on
//! its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use cairn_store::error::{Error, Result};
use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::{Item, Snapshot, SourceInfo, SourceKind};
use cairn_store::ops::backup::{BackupOptions, BackupSummary, Progress};
use cairn_store::ops::session::WriteSession;
use cairn_store::ops::source::{Entry, Prepared, StoredContent};
use cairn_store::repo::IndexedRepository;

use crate::attachment;
use crate::client::{Body, CouchClient, db_path, doc_path, query_value};
use crate::format::{self, AttHeader, AttKey, Counts, Meta};
use crate::merge::{Group, GroupReader, Merged, encode_gone};
use crate::pipe::{Lines, PipeReader, PipeWriter};
use crate::sort::ExternalSorter;
use crate::{FirstFailure, backup_streams, stream_item, streams};

/// Which databases to back up.
#[derive(Debug, Clone)]
pub enum DbSelection {
    /// These, by name.
    Named(Vec<String>),
    /// Every database the server lists, except these.
    All {
        /// Names to leave out.
        exclude: Vec<String>,
    },
}

/// How to back up CouchDB.
#[derive(Debug, Clone)]
pub struct CouchBackupOptions {
    /// The databases.
    pub dbs: DbSelection,
    /// Databases fetched at once.
    pub jobs: usize,
    /// Requests in flight per database.
    pub requests: usize,
    /// Leaf revisions per `_bulk_get`.
    pub batch: usize,
    /// Rows per `_changes` page.
    pub changes_page: usize,
    /// Names per `_all_dbs` page.
    pub dbs_page: usize,
    /// Memory for sorting ids before spilling to temporary files.
    pub sort_memory: usize,
    /// Write every database's documents anew (no overlay on the previous base).
    pub full: bool,
}

impl Default for CouchBackupOptions {
    fn default() -> Self {
        CouchBackupOptions {
            dbs: DbSelection::All {
                exclude: Vec::new(),
            },
            jobs: 2,
            requests: 4,
            batch: 500,
            changes_page: 10_000,
            dbs_page: 1_000,
            sort_memory: 64 << 20,
            full: false,
        }
    }
}

/// What the backup of one database did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbBackupStats {
    /// The database.
    pub db: String,
    /// What its dump holds.
    pub counts: Counts,
    /// Leaf revisions fetched from the server.
    pub fetched_leaves: u64,
    /// Leaf revisions copied from the previous snapshot.
    pub reused_leaves: u64,
    /// Attachments fetched from the server.
    pub fetched_attachments: u64,
    /// Attachments copied from the previous snapshot.
    pub reused_attachments: u64,
    /// The snapshot the unchanged documents were copied from.
    pub previous: Option<String>,
    /// Whether docs.ndjson was written anew (else the previous one was kept
    /// and the changes went to a new overlay).
    pub rewrote_base: bool,
    /// Whether only the changes since the previous snapshot were listed
    /// (else every id was).
    pub only_changes: bool,
    /// Nothing changed since the previous snapshot of this server (the same
    /// document and purge counts, no change in `_changes` since its sequence,
    /// the same `_security`, `_revs_limit` and `_local` documents): its dump
    /// was taken as it is, unread, with four or five requests (on CouchDB 3,
    /// one `_dbs_info` per hundred databases).
    pub unchanged: bool,
}

/// What a CouchDB backup did.
#[derive(Debug, Clone, Serialize)]
pub struct CouchBackupSummary {
    /// The snapshot.
    #[serde(flatten)]
    pub backup: BackupSummary,
    /// Per database.
    pub databases: Vec<DbBackupStats>,
    /// HTTP requests made to the server.
    pub requests: u64,
    /// Of which retries.
    pub retries: u64,
    /// Response bytes received.
    pub bytes_received: u64,
    /// With every database selected: databases the newest earlier CouchDB
    /// snapshot of this server did not hold.
    pub appeared: Vec<String>,
    /// And databases it held that the server no longer lists (deleted, or
    /// hidden from these credentials): kept in that snapshot, not in this one.
    pub vanished: Vec<String>,
}

/// Backs up CouchDB databases as one snapshot.
pub async fn backup_couchdb(
    session: &WriteSession,
    client: Arc<CouchClient>,
    options: &CouchBackupOptions,
    key: &SecretKey,
    backup: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<CouchBackupSummary> {
    let dbs = list_dbs(&client, &options.dbs, options.dbs_page).await?;
    let server: serde_json::Value = client
        .get_json("", "the server's welcome")
        .await?
        .unwrap_or_default();
    let snapshots = session
        .repo()
        .repo()
        .load_snapshots(&session.config().trust())
        .await?;

    // The newest CouchDB snapshots of this server signed with this key
    // (what is copied or taken from them is signed again: never another
    // signer's, nor another server's database of the same name), their
    // trees read, until every database has its newest earlier dump.
    let mut flat = Vec::new();
    let reader = Arc::new(session.repo().blob_reader());
    let (signer, url) = (key.public(), client.url());
    for s in snapshots.snapshots.iter().rev() {
        if s.manifest.source.kind != SourceKind::Couchdb
            || s.signer != signer
            || s.manifest.source.url.as_deref() != Some(url.as_str())
        {
            continue;
        }
        flat.insert(
            0,
            Flat::new(cairn_store::ops::walk::with_items(Arc::clone(&reader), s).await?),
        );
        if dbs
            .iter()
            .all(|db| previous_of(session.repo(), &flat, db).is_some())
        {
            break;
        }
    }

    let (appeared, vanished) = match (&options.dbs, newest_of(&flat, &client.url())) {
        (DbSelection::All { exclude }, Some(newest)) => {
            let before: std::collections::BTreeSet<String> = newest
                .manifest
                .items
                .iter()
                .filter_map(|i| format::parse_item_name(&i.name))
                .filter(|(db, file)| {
                    *file == format::META_FILE
                        && !exclude.contains(db)
                        && !SKIPPED_SYSTEM_DBS.contains(&db.as_str())
                })
                .map(|(db, _)| db)
                .collect();
            let now: std::collections::BTreeSet<String> = dbs.iter().cloned().collect();
            (
                now.difference(&before).cloned().collect(),
                before.difference(&now).cloned().collect::<Vec<_>>(),
            )
        }
        _ => (Vec::new(), Vec::new()),
    };
    for db in &vanished {
        tracing::warn!(
            "database {db:?} was in the last backup of {} and is no longer listed: \
             deleted, or hidden from these credentials (the earlier snapshots keep it)",
            client.url()
        );
    }

    let mut unchanged = if options.full {
        HashMap::new()
    } else {
        unchanged_dbs(&client, &server, session.repo(), &flat, &dbs).await
    };
    let failure = FirstFailure::default();
    let mut entries = Vec::new();
    let mut jobs = Vec::new();
    let mut taken = Vec::new();
    for db in &dbs {
        if let Some((stored, stats)) = unchanged.remove(db) {
            entries.extend(stored);
            taken.push(stats);
            continue;
        }
        let previous = previous_of(session.repo(), &flat, db);
        // A new base, or the previous base and overlays and one more.
        let compact = previous
            .as_ref()
            .is_none_or(|p| options.full || p.due_for_new_base());
        let overlays = previous
            .as_ref()
            .filter(|_| !compact)
            .map_or(0, |p| p.overlays.len() + 1);
        let (db_entries, writers) =
            streams(db, &format::files(overlays), &session.config().chunking);
        entries.extend(db_entries);
        jobs.push(DbJob {
            db: db.clone(),
            previous,
            compact,
            writers,
        });
    }

    let context = Arc::new(JobContext {
        client: Arc::clone(&client),
        runtime: Handle::current(),
        options: options.clone(),
        server,
        failure: failure.clone(),
    });
    let info = SourceInfo {
        kind: SourceKind::Couchdb,
        command: None,
        exit_status: None,
        url: Some(client.url()),
    };
    let (backup, mut stats) = backup_streams(
        session,
        Prepared::new(info, entries),
        key,
        backup,
        progress,
        &failure,
        move || run_jobs(context, jobs),
    )
    .await?;
    stats.extend(taken);
    stats.sort_by(|a, b| a.db.cmp(&b.db));
    let wire = &client.stats;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(CouchBackupSummary {
        backup,
        databases: stats,
        requests: wire.requests.load(Relaxed),
        retries: wire.retries.load(Relaxed),
        bytes_received: wire.bytes_received.load(Relaxed),
        appeared,
        vanished,
    })
}

/// System databases `--all-dbs` leaves out (name them to back them up):
/// `_global_changes` is CouchDB's log of database events, rebuilt as it
/// runs, and `_dbs`/`_nodes` are a node's own cluster metadata. `_users`
/// (accounts and their password hashes) and `_replicator` (replication
/// jobs) are backed up: a recovery needs them.
pub const SKIPPED_SYSTEM_DBS: [&str; 3] = ["_global_changes", "_dbs", "_nodes"];

/// An earlier CouchDB snapshot with its items (a version-2 tree read
/// flat), shared by every database's job, and its items by name.
struct Flat {
    snapshot: Arc<Snapshot>,
    by_name: HashMap<String, usize>,
}

impl Flat {
    fn new(snapshot: Snapshot) -> Flat {
        let by_name = (snapshot.manifest.items.iter().enumerate())
            .map(|(i, item)| (item.name.clone(), i))
            .collect();
        Flat {
            snapshot: Arc::new(snapshot),
            by_name,
        }
    }

    fn item(&self, name: &str) -> Option<&Item> {
        self.by_name
            .get(name)
            .map(|&i| &self.snapshot.manifest.items[i])
    }
}

/// The newest of `flat` (oldest first) that backed up the server at `url`.
fn newest_of<'a>(flat: &'a [Flat], url: &str) -> Option<&'a Snapshot> {
    flat.iter()
        .rev()
        .map(|f| &*f.snapshot)
        .find(|s| s.manifest.source.url.as_deref() == Some(url))
}

/// The databases to back up, checked to exist.
async fn list_dbs(
    client: &CouchClient,
    selection: &DbSelection,
    page: usize,
) -> Result<Vec<String>> {
    let mut dbs = match selection {
        DbSelection::Named(names) => {
            for name in names {
                if client
                    .get_json::<serde_json::Value>(&db_path(name), "database info")
                    .await?
                    .is_none()
                {
                    return Err(Error::NotFound {
                        what: format!("database {name:?} on {}", client.url()),
                        hint: "check --db against `curl URL/_all_dbs`".into(),
                    });
                }
            }
            names.clone()
        }
        DbSelection::All { exclude } => {
            let all = client.all_dbs(page).await?;
            all.into_iter()
                .filter(|d| !exclude.contains(d) && !SKIPPED_SYSTEM_DBS.contains(&d.as_str()))
                .collect()
        }
    };
    dbs.sort();
    dbs.dedup();
    if dbs.is_empty() {
        return Err(Error::invalid(format!(
            "no databases to back up on {}",
            client.url()
        )));
    }
    Ok(dbs)
}

/// The newest earlier dump of `db`: its documents and attachments.
fn previous_of(repo: &IndexedRepository, snapshots: &[Flat], db: &str) -> Option<PreviousDb> {
    let docs_name = format::item_name(db, format::DOCS_FILE);
    let atts_name = format::item_name(db, format::ATTACHMENTS_FILE);
    snapshots.iter().rev().find_map(|flat| {
        if flat.snapshot.manifest.source.kind != SourceKind::Couchdb {
            return None;
        }
        let find = |name: &str| flat.item(name).cloned();
        let mut overlays = Vec::new();
        while let Some(o) = find(&format::item_name(
            db,
            &format::overlay_file(overlays.len() + 1),
        )) {
            overlays.push(o);
        }
        Some(PreviousDb {
            repo: repo.clone(),
            snapshot: Arc::clone(&flat.snapshot),
            docs: find(&docs_name)?,
            overlays,
            attachments: find(&atts_name)?,
            design: find(&format::item_name(db, format::DESIGN_FILE))?,
            local: find(&format::item_name(db, format::LOCAL_FILE))?,
            meta: find(&format::item_name(db, format::META_FILE))?,
        })
    })
}

struct PreviousDb {
    repo: IndexedRepository,
    snapshot: Arc<Snapshot>,
    docs: Item,
    overlays: Vec<Item>,
    attachments: Item,
    design: Item,
    local: Item,
    meta: Item,
}

impl PreviousDb {
    /// Whether its overlays are to be folded into a new base: too many, or
    /// together more than half the base.
    fn due_for_new_base(&self) -> bool {
        self.overlays.len() >= format::MAX_OVERLAYS
            || self.overlays.iter().map(|o| o.len).sum::<u64>() > self.docs.len / 2
    }

    /// Its items, as entries that take their content unread; `None` if the
    /// index lacks one's content (it is then read and stored again).
    fn stored_entries(&self) -> Option<Vec<Entry>> {
        let index = self.repo.index();
        let items = [
            &self.design,
            &self.docs,
            &self.attachments,
            &self.local,
            &self.meta,
        ];
        items
            .into_iter()
            .chain(&self.overlays)
            .map(|item| {
                let root = item.tree.filter(|root| index.contains(root))?;
                let stored = StoredContent {
                    root,
                    one_chunk: item.one_chunk,
                    chunks: item.chunks?,
                    len: item.len,
                    chunker: item.chunker?,
                };
                Some(Entry::stored(item.name.clone(), item.chunker, stored))
            })
            .collect()
    }
}

/// Databases at most this many are checked for changes at once.
const CHECKS_AT_ONCE: usize = 8;

/// The databases of `dbs` that did not change since their newest dump in
/// `flat` (a dump of this server, whose overlays are not due to be folded).
/// Each comes as its dump's entries, to be taken unread, and its
/// statistics. A database whose check fails for any reason is backed up as
/// usual (which reports the failure).
///
/// On CouchDB 3, one `POST /_dbs_info` per hundred databases tells most of
/// them (see [`untouched`]); the others, and every database on other
/// servers, are asked one by one (see [`unchanged_since`]).
async fn unchanged_dbs(
    client: &Arc<CouchClient>,
    server: &serde_json::Value,
    repo: &IndexedRepository,
    flat: &[Flat],
    dbs: &[String],
) -> HashMap<String, (Vec<Entry>, DbBackupStats)> {
    use futures::StreamExt;
    let candidates: Vec<(String, PreviousDb)> = dbs
        .iter()
        .filter_map(|db| previous_of(repo, flat, db).map(|p| (db.clone(), p)))
        .filter(|(_, p)| !p.due_for_new_base())
        .collect();
    let infos = if couchdb3_or_later(server) {
        let names: Vec<&str> = candidates.iter().map(|(db, _)| db.as_str()).collect();
        dbs_info(client, &names).await.unwrap_or_else(|e| {
            tracing::debug!("_dbs_info: {e}; asking each database");
            HashMap::new()
        })
    } else {
        HashMap::new()
    };
    let infos = &infos;
    futures::stream::iter(candidates)
        .map(|(db, previous)| async move {
            match unchanged_since(client, &db, &previous, infos.get(&db)).await {
                Ok(Some(meta)) => {
                    let entries = previous.stored_entries()?;
                    let counts = meta.counts;
                    let stats = DbBackupStats {
                        db: db.clone(),
                        reused_leaves: counts.doc_leaves + counts.design_leaves,
                        reused_attachments: counts.attachments,
                        counts,
                        previous: Some(previous.snapshot.id.to_string()),
                        only_changes: true,
                        unchanged: true,
                        ..DbBackupStats::default()
                    };
                    Some((db, (entries, stats)))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!("database {db:?}: checking for changes: {e}");
                    None
                }
            }
        })
        .buffer_unordered(CHECKS_AT_ONCE)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Whether `server` (its `GET /`) is Apache CouchDB 3 or later, whose
/// storage engine [`untouched`] relies on.
fn couchdb3_or_later(server: &serde_json::Value) -> bool {
    let text = |pointer: &str| server.pointer(pointer).and_then(serde_json::Value::as_str);
    let major = text("/version").and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    text("/couchdb") == Some("Welcome")
        && text("/vendor/name") == Some("The Apache Software Foundation")
        && major.is_some_and(|m| m >= 3)
}

/// Names asked about in one `POST /_dbs_info` (CouchDB's default
/// `max_db_number_for_dbs_info_req`), and such requests in flight.
const DBS_INFO_KEYS: usize = 100;
const DBS_INFO_AT_ONCE: usize = 4;

/// The longest `_dbs_info` answer read: 16 KiB a database (CouchDB's
/// are under 1 KiB).
const MAX_DBS_INFO_LEN: u64 = DBS_INFO_KEYS as u64 * (16 << 10);

/// `POST /_dbs_info` of `dbs`, a hundred at a time: the fields the
/// checks compare of each database the server found, by name. Answers for
/// names a request did not ask are ignored.
async fn dbs_info(
    client: &CouchClient,
    dbs: &[&str],
) -> Result<HashMap<String, serde_json::Value>> {
    use futures::{StreamExt, TryStreamExt};
    #[derive(Deserialize)]
    struct Row {
        key: String,
        #[serde(default)]
        info: Option<serde_json::Value>,
    }
    let pages: Vec<Vec<(String, serde_json::Value)>> =
        futures::stream::iter(dbs.chunks(DBS_INFO_KEYS))
            .map(|keys| async move {
                let body = serde_json::to_vec(&serde_json::json!({ "keys": keys }))
                    .map_err(|e| Error::invalid(e.to_string()))?;
                let response = client
                    .request_bounded(
                        Method::POST,
                        "_dbs_info",
                        Some(Body::json(body)),
                        MAX_DBS_INFO_LEN,
                    )
                    .await?;
                if !response.status.is_success() {
                    return Err(Error::invalid(format!(
                        "_dbs_info answered {}",
                        response.reason()
                    )));
                }
                let rows: Vec<Row> = response.json(&client.url_of("_dbs_info"), "_dbs_info")?;
                Ok(rows
                    .into_iter()
                    .filter(|row| keys.contains(&row.key.as_str()))
                    .filter_map(|row| Some((row.key, compared_fields(&row.info?))))
                    .collect())
            })
            .buffered(DBS_INFO_AT_ONCE)
            .try_collect()
            .await?;
    Ok(pages.into_iter().flatten().collect())
}

/// The fields of a `GET /db` the checks compare: all that is kept of
/// each database's `_dbs_info`, so memory stays small with many databases.
fn compared_fields(info: &serde_json::Value) -> serde_json::Value {
    let fields = [
        "update_seq",
        "doc_count",
        "doc_del_count",
        "purge_seq",
        "cluster",
    ];
    fields
        .into_iter()
        .filter_map(|k| Some((k.to_string(), info.get(k)?.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Whether a database whose `GET /db` was `before` when it was dumped and
/// is `now` holds the same documents, `_security` and `_revs_limit`, on
/// CouchDB 3: the very same update sequence and document, deleted-document
/// and purge counts. CouchDB's storage engine (`couch_bt_engine`) gives
/// every write of a document, of `_security` and of `_revs_limit` a new
/// update sequence; `_local` documents take none (they are compared apart).
/// Only where each shard has one copy (`cluster.n` 1): with more, the
/// sequence is of whichever copies answered, and one that missed a write
/// can answer as before.
fn untouched(before: &serde_json::Value, now: &serde_json::Value) -> bool {
    let one_copy = now
        .pointer("/cluster/n")
        .and_then(serde_json::Value::as_u64)
        == Some(1);
    one_copy
        && same_database(before, now)
        && before
            .get("update_seq")
            .is_some_and(|seq| Some(seq) == now.get("update_seq"))
}

/// The previous dump's metadata when `db` has not changed since it: the
/// same document and purge counts, no change in `_changes` since its
/// sequence (which any node of a cluster answers), the same `_security`,
/// `_revs_limit` and `_local` documents (which `_changes` does not show),
/// unless `info` (its `_dbs_info` on CouchDB 3) shows it [`untouched`].
async fn unchanged_since(
    client: &CouchClient,
    db: &str,
    previous: &PreviousDb,
    info: Option<&serde_json::Value>,
) -> Result<Option<Meta>> {
    let Some(bytes) = read_previous(previous, &previous.meta, MAX_META_LEN).await? else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(previous.meta.name.clone(), e.to_string()))?;
    if meta.method != "changes" || meta.last_seq.is_null() {
        return Ok(None);
    }
    if info.is_some_and(|now| couchdb3_or_later(&meta.server) && untouched(&meta.db_info, now)) {
        let same = same_local(client, db, previous, &meta).await?;
        return Ok(same.then_some(meta));
    }
    // The same database, as many documents: a database deleted and created
    // again under the name (its sequence restarted, or replays from the
    // start on CouchDB 3) or purged shows here.
    let fetched;
    let info = match info {
        Some(info) => info,
        None => match client
            .get_json::<serde_json::Value>(&db_path(db), "database info")
            .await?
        {
            Some(got) => {
                fetched = got;
                &fetched
            }
            None => return Ok(None),
        },
    };
    if !same_database(&meta.db_info, info) {
        return Ok(None);
    }
    // The very same update sequence (a number, or the same opaque string)
    // says no document changed since: `_changes` need not be asked.
    let same_seq = info
        .get("update_seq")
        .is_some_and(|seq| Some(seq) == meta.db_info.get("update_seq"));
    if !same_seq && changed_since(client, db, &meta.last_seq).await? {
        return Ok(None);
    }
    let security = client
        .get_json::<serde_json::Value>(&format!("{}/_security", db_path(db)), "_security")
        .await?
        .unwrap_or_else(|| serde_json::json!({}));
    if security != meta.security {
        return Ok(None);
    }
    // Neither shows in `_changes`: `_revs_limit` and `_local` documents.
    let revs_limit = optional_json(client, &format!("{}/_revs_limit", db_path(db))).await?;
    if revs_limit != meta.revs_limit {
        return Ok(None);
    }
    let same = same_local(client, db, previous, &meta).await?;
    Ok(same.then_some(meta))
}

/// Whether `db` lists the same `_local` documents as its previous dump.
async fn same_local(
    client: &CouchClient,
    db: &str,
    previous: &PreviousDb,
    meta: &Meta,
) -> Result<bool> {
    let local = optional_json(client, &local_docs_path(db)).await?;
    if local.is_some() != meta.local_listed {
        return Ok(false);
    }
    let Some(listed) = &local else {
        return Ok(true);
    };
    let (lines, _) = local_lines(listed).map_err(|e| Error::invalid(e.to_string()))?;
    let before = read_previous(previous, &previous.local, MAX_LOCAL_LEN).await?;
    Ok(before.is_some_and(|before| before == lines))
}

/// Whether `_changes` lists anything after `last_seq` (or cannot say).
async fn changed_since(
    client: &CouchClient,
    db: &str,
    last_seq: &serde_json::Value,
) -> Result<bool> {
    let since = match last_seq {
        serde_json::Value::String(s) => query_value(s),
        other => query_value(&other.to_string()),
    };
    let path = format!("{}/_changes?limit=1&since={since}", db_path(db));
    let response = client.request(Method::GET, &path, None).await?;
    if !response.status.is_success() {
        return Ok(true);
    }
    #[derive(Deserialize)]
    struct Page {
        results: Vec<serde_json::Value>,
    }
    let page: Page = response.json(&client.url_of(&path), "_changes")?;
    Ok(!page.results.is_empty())
}

/// The longest previous `local.ndjson` compared (else the database is
/// backed up as usual).
const MAX_LOCAL_LEN: u64 = 16 << 20;

/// Whether two `GET /db` answers can be of the same, unchanged database:
/// the same document and deleted-document counts, and (where sequences
/// are numbers, as on pouchdb-server; CouchDB's differ per node) the same
/// update sequence. Only a hint: `_changes` decides.
fn same_database(before: &serde_json::Value, now: &serde_json::Value) -> bool {
    let same = |k: &str| before.get(k) == now.get(k);
    let seq = |v: &serde_json::Value| v.get("update_seq").and_then(serde_json::Value::as_u64);
    let purges = |v: &serde_json::Value| {
        v.get("purge_seq").map(|p| match p {
            // CouchDB 3's is `N-opaque`, like its update sequences.
            serde_json::Value::String(s) => serde_json::json!(s.split('-').next()),
            other => other.clone(),
        })
    };
    same("doc_count")
        && same("doc_del_count")
        && purges(before) == purges(now)
        && match (seq(before), seq(now)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// `GET` of the `_local` documents, bodies included.
fn local_docs_path(db: &str) -> String {
    format!("{}/_local_docs?include_docs=true", db_path(db))
}

/// The lines of `local.ndjson` for a `_local_docs?include_docs=true`
/// answer, sorted by id, and how many.
fn local_lines(listed: &serde_json::Value) -> serde_json::Result<(Vec<u8>, u64)> {
    #[derive(Deserialize)]
    struct LocalDocs {
        rows: Vec<LocalRow>,
    }
    #[derive(Deserialize)]
    struct LocalRow {
        id: String,
        #[serde(default)]
        doc: Option<Box<RawValue>>,
    }
    let mut docs: LocalDocs = serde_json::from_str(&listed.to_string())?;
    docs.rows.sort_by(|a, b| a.id.cmp(&b.id));
    let (mut buf, mut count) = (Vec::new(), 0);
    for row in docs.rows {
        let Some(doc) = row.doc else { continue };
        serde_json::to_writer(
            &mut buf,
            &format::LocalLine {
                id: row.id,
                doc: &doc,
            },
        )?;
        buf.push(b'\n');
        count += 1;
    }
    Ok((buf, count))
}

/// A GET whose endpoint the server may lack (404, 400, 405 give `None`).
async fn optional_json(client: &CouchClient, path: &str) -> Result<Option<serde_json::Value>> {
    let response = client.request(Method::GET, path, None).await?;
    match response.status {
        s if s.is_success() => response.json(&client.url_of(path), path).map(Some),
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
            Ok(None)
        }
        _ => Err(client.rejected(path, path, &response)),
    }
}

/// An item of a previous dump, read back whole if at most `max` bytes.
async fn read_previous(previous: &PreviousDb, item: &Item, max: u64) -> Result<Option<Vec<u8>>> {
    if item.len > max {
        return Ok(None);
    }
    let reader = previous.repo.blob_reader();
    let (bytes, _) = previous
        .repo
        .restore_item(
            &reader,
            &previous.snapshot,
            item,
            Vec::new(),
            &cairn_store::ops::restore::NoRestoreProgress,
        )
        .await?;
    Ok(Some(bytes))
}

/// The longest `meta.json` read back for the check (it is a few KiB).
const MAX_META_LEN: u64 = 1 << 20;

impl PreviousDb {
    fn open(&self, runtime: &Handle, item: &Item) -> Lines<BufReader<PipeReader>> {
        stream_item(runtime, &self.repo, &self.snapshot, item)
    }
}

struct DbJob {
    db: String,
    previous: Option<PreviousDb>,
    /// Write a new base (else keep the previous base and overlays, and add one).
    compact: bool,
    /// One per file: design, docs, the overlays, attachments, local, meta.
    writers: Vec<PipeWriter>,
}

struct JobContext {
    client: Arc<CouchClient>,
    runtime: Handle,
    options: CouchBackupOptions,
    server: serde_json::Value,
    failure: FirstFailure,
}

/// Runs the databases' producers, `jobs` at once, started in the order the
/// backup reads them (so the one being read always runs).
fn run_jobs(context: Arc<JobContext>, jobs: Vec<DbJob>) -> Vec<DbBackupStats> {
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
    let mut running = 0usize;
    let mut handles = Vec::new();
    for mut job in jobs {
        if running >= context.options.jobs.max(1) {
            let _ = done_rx.recv();
            running -= 1;
        }
        if context.failure.is_set() {
            for w in &mut job.writers {
                w.fail("another database's backup failed".into());
            }
            continue;
        }
        running += 1;
        let (context, done) = (Arc::clone(&context), done_tx.clone());
        handles.push(std::thread::spawn(move || {
            let stats = produce(&context, &mut job);
            let _ = done.send(());
            stats
        }));
    }
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// Produces one database's streams; on failure records the error and fails
/// the streams not yet finished.
fn produce(context: &JobContext, job: &mut DbJob) -> DbBackupStats {
    let mut producer = Producer {
        context,
        db: &job.db,
        previous: job.previous.as_ref(),
        stats: DbBackupStats {
            db: job.db.clone(),
            previous: job.previous.as_ref().map(|p| p.snapshot.id.to_string()),
            ..DbBackupStats::default()
        },
        attachments: Vec::new(),
    };
    if let Err(e) = producer.run(job.compact, &mut job.writers) {
        let context_text = format!("database {:?}", job.db);
        context.failure.fail(e, &context_text, &mut job.writers);
    }
    producer.stats
}

/// `_bulk_get` answers.
#[derive(Deserialize)]
struct BulkGet {
    results: Vec<BulkGetResult>,
}

#[derive(Deserialize)]
struct BulkGetResult {
    id: String,
    docs: Vec<BulkGetDoc>,
}

#[derive(Deserialize)]
struct BulkGetDoc {
    #[serde(default)]
    ok: Option<Box<RawValue>>,
}

/// The fields of a document the dump needs to know.
#[derive(Deserialize)]
struct DocHead {
    #[serde(rename = "_rev")]
    rev: String,
    #[serde(rename = "_deleted", default)]
    deleted: bool,
}

/// Fetched leaves by document id.
type Fetched = HashMap<String, Vec<Box<RawValue>>>;

/// `POST _bulk_get?revs=true` of explicit leaves.
async fn bulk_get(
    client: Arc<CouchClient>,
    db: String,
    leaves: Vec<(String, String)>,
    attachments: bool,
) -> Result<Fetched> {
    let docs: Vec<_> = leaves
        .iter()
        .map(|(id, rev)| serde_json::json!({"id": id, "rev": rev}))
        .collect();
    let body = serde_json::json!({ "docs": docs }).to_string();
    let path = format!(
        "{}/_bulk_get?revs=true{}",
        db_path(&db),
        if attachments { "&attachments=true" } else { "" }
    );
    let response = client
        .request(Method::POST, &path, Some(Body::json(body)))
        .await?;
    if !response.status.is_success() {
        return Err(client.rejected(&path, "fetching documents", &response));
    }
    let answer: BulkGet = response.json(&client.url_of(&path), "_bulk_get")?;
    let mut fetched = Fetched::new();
    for result in answer.results {
        let docs = fetched.entry(result.id).or_default();
        docs.extend(result.docs.into_iter().filter_map(|d| d.ok));
    }
    Ok(fetched)
}

/// A document's current leaves, for one whose enumerated leaves vanished.
async fn open_revs_all(client: Arc<CouchClient>, db: String, id: String) -> Result<Fetched> {
    let path = format!("{}?open_revs=all&revs=true", doc_path(&db, &id));
    let response = client.request(Method::GET, &path, None).await?;
    let mut fetched = Fetched::new();
    if response.status == StatusCode::NOT_FOUND {
        return Ok(fetched); // purged meanwhile
    }
    if !response.status.is_success() {
        return Err(client.rejected(&path, "fetching a document", &response));
    }
    let docs: Vec<BulkGetDoc> = response.json(&client.url_of(&path), "open_revs")?;
    fetched.insert(id, docs.into_iter().filter_map(|d| d.ok).collect());
    Ok(fetched)
}

/// An attachment a document names: its key, a leaf that has it, its length.
type AttRef = (AttKey, String, Option<u64>);

/// A document line awaiting output, in id order.
enum Slot {
    /// An unchanged document that stays where it is: counted already;
    /// only its attachments wait to be noted in order.
    Kept(Vec<AttRef>),
    /// Lines from the previous snapshot for a new base.
    Ready(Vec<u8>),
    /// An id the server no longer has.
    Gone(String),
    /// Lines to come from fetch batch `batch`.
    Fetch {
        batch: u64,
        id: String,
        revs: Vec<String>,
    },
}

/// Fetch batches in flight, by number.
struct Batches {
    next: u64,
    filling: Vec<(String, String)>,
    in_flight: VecDeque<(u64, JoinHandle<Result<Fetched>>)>,
    done: HashMap<u64, Fetched>,
}

struct Producer<'a> {
    context: &'a JobContext,
    db: &'a str,
    previous: Option<&'a PreviousDb>,
    stats: DbBackupStats,
    /// Attachments the document lines name, in id order.
    attachments: Vec<AttRef>,
}

type PrevReader = BufReader<PipeReader>;

/// The previous dump of the database, merged (base and overlay), read in
/// step with the current ids.
struct PrevView {
    merged: Option<Merged<PrevReader>>,
    pending: Option<Group>,
    /// Whether this backup rewrites the base (else it copies the previous
    /// base, which must then be read whole).
    compact: bool,
    db: String,
}

impl PrevView {
    /// Reads on; a read error drops the previous dump (documents are then
    /// fetched) when rewriting the base, and fails otherwise.
    fn next(&mut self) -> Result<Option<Group>> {
        if let Some(g) = self.pending.take() {
            return Ok(Some(g));
        }
        let Some(merged) = self.merged.as_mut() else {
            return Ok(None);
        };
        match merged.next_group() {
            Ok(g) => Ok(g),
            Err(e) if self.compact => {
                tracing::warn!(
                    "database {:?}: cannot read its previous dump ({e}); fetching the rest from the server",
                    self.db
                );
                self.merged = None;
                Ok(None)
            }
            Err(e) => Err(Error::corrupt(
                format!("the previous dump of database {:?}", self.db),
                format!("{e}; back up with --full to fetch every document again"),
            )),
        }
    }

    /// Base bytes read so far (to copy when not rewriting the base).
    fn take_base_bytes(&mut self) -> Vec<u8> {
        self.merged
            .as_mut()
            .and_then(|m| m.base_bytes.as_mut())
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The previous group for `id`; ids before it go to `skipped`.
    fn group_for(&mut self, id: &str, skipped: &mut Vec<Group>) -> Result<Option<Group>> {
        while let Some(g) = self.next()? {
            match g.id.as_bytes().cmp(id.as_bytes()) {
                std::cmp::Ordering::Less => skipped.push(g),
                std::cmp::Ordering::Equal => return Ok(Some(g)),
                std::cmp::Ordering::Greater => {
                    self.pending = Some(g);
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
}

/// How a database's documents are read and written.
#[derive(Debug, Clone)]
struct DocsPlan {
    /// Write a new base (else keep the previous one and write an overlay).
    compact: bool,
    /// Read only `_changes` after this sequence (the previous snapshot's).
    since: Option<serde_json::Value>,
}

/// What to do next, in id order.
enum Step {
    /// A document with its current leaves and its previous group.
    Doc {
        id: String,
        revs: Vec<String>,
        previous: Option<Group>,
    },
    /// A previous group whose id the server no longer lists.
    Gone(Group),
}

/// The current documents in id order, each beside its previous version:
/// from the whole `_changes` (ids missing from it are gone), or from the
/// previous dump updated with the changes since it.
struct Steps {
    sorted: std::iter::Peekable<crate::sort::Sorted>,
    only_changes: bool,
    previous: PrevView,
    gone: VecDeque<Step>,
}

fn decode_record(record: std::io::Result<(Vec<u8>, Vec<u8>)>) -> Result<(String, Vec<String>)> {
    let (id, revs) = record.map_err(|e| Error::io("sorting document ids", e))?;
    let id = String::from_utf8(id).map_err(|_| Error::invalid("a document id is not UTF-8"))?;
    let revs = String::from_utf8_lossy(&revs)
        .split('\n')
        .map(str::to_string)
        .collect();
    Ok((id, revs))
}

impl Steps {
    fn next(&mut self) -> Result<Option<Step>> {
        if let Some(step) = self.gone.pop_front() {
            return Ok(Some(step));
        }
        if self.only_changes {
            return self.next_with_changes();
        }
        let Some(record) = self.sorted.next() else {
            // The end: what is left of the previous dump is gone.
            return Ok(self.previous.next()?.map(Step::Gone));
        };
        let (id, revs) = decode_record(record)?;
        let mut skipped = Vec::new();
        let previous = self.previous.group_for(&id, &mut skipped)?;
        self.gone.extend(skipped.into_iter().map(Step::Gone));
        self.gone.push_back(Step::Doc { id, revs, previous });
        Ok(self.gone.pop_front())
    }

    fn next_with_changes(&mut self) -> Result<Option<Step>> {
        let previous = self.previous.next()?;
        let changed_first = match (&previous, self.sorted.peek()) {
            (None, None) => return Ok(None),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(g), Some(Ok((id, _)))) => id.as_slice() <= g.id.as_bytes(),
            (Some(_), Some(Err(_))) => true,
        };
        if !changed_first {
            let Some(g) = previous else { return Ok(None) };
            if g.gone {
                return Ok(Some(Step::Gone(g)));
            }
            let revs = g.revs.clone();
            return Ok(Some(Step::Doc {
                id: g.id.clone(),
                revs,
                previous: Some(g),
            }));
        }
        let Some(record) = self.sorted.next() else {
            return Ok(None);
        };
        let (id, revs) = decode_record(record)?;
        let previous = match previous {
            Some(g) if g.id == id => Some(g),
            other => {
                self.previous.pending = other;
                None
            }
        };
        Ok(Some(Step::Doc { id, revs, previous }))
    }
}

/// The overlay's lines until the base is written: in memory, or in a
/// temporary file when large.
enum DeltaBuffer {
    Memory(Vec<u8>),
    File(std::io::BufWriter<std::fs::File>),
}

/// Overlay bytes kept in memory before spilling to a temporary file.
const DELTA_MEMORY: usize = 32 << 20;

impl Write for DeltaBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            DeltaBuffer::Memory(buf) if buf.len() + data.len() > DELTA_MEMORY => {
                let mut file = std::io::BufWriter::new(tempfile::tempfile()?);
                file.write_all(buf)?;
                file.write_all(data)?;
                *self = DeltaBuffer::File(file);
            }
            DeltaBuffer::Memory(buf) => buf.extend_from_slice(data),
            DeltaBuffer::File(file) => file.write_all(data)?,
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            DeltaBuffer::Memory(_) => Ok(()),
            DeltaBuffer::File(f) => f.flush(),
        }
    }
}

impl DeltaBuffer {
    /// Copies everything into `out`.
    fn copy_to(self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            DeltaBuffer::Memory(buf) => out.write_all(&buf),
            DeltaBuffer::File(file) => {
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
                std::io::copy(&mut file, out).map(|_| ())
            }
        }
    }
}

/// Bytes of lines held while waiting for a fetch before output stalls.
const WINDOW_BYTES: usize = 32 << 20;

impl Producer<'_> {
    fn io(&self, file: &str) -> impl Fn(std::io::Error) -> Error + '_ {
        let name = format::item_name(self.db, file);
        move |e| Error::io(format!("writing {name}"), e)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.context.runtime.block_on(f)
    }

    fn run(&mut self, compact: bool, writers: &mut [PipeWriter]) -> Result<()> {
        let client = Arc::clone(&self.context.client);
        let db = self.db.to_string();
        let base = db_path(&db);
        let info: serde_json::Value = self
            .block_on(client.get_json(&base, "database info"))?
            .ok_or_else(|| Error::NotFound {
                what: format!("database {db:?} on {}", client.url()),
                hint: "it was deleted while the backup ran".into(),
            })?;
        let security: serde_json::Value = self
            .block_on(client.get_json(&format!("{base}/_security"), "_security"))?
            .unwrap_or_else(|| serde_json::json!({}));
        let revs_limit = self.optional_get(&format!("{base}/_revs_limit"))?;

        let mut plan = self.plan(&info, compact);
        let started = std::time::Instant::now();
        let (mut sorted, mut design, mut last_seq, listed) = self.enumerate(plan.since.clone())?;
        if plan.since.is_some() && server_ids(&info).is_some_and(|ids| listed >= ids) {
            // As many changes as the database has documents: it was deleted
            // and created again (CouchDB 3 then replays it from the start,
            // since the shards in the sequence are gone), or everything
            // changed. Either way ids absent from the base must be found
            // gone, which only a whole listing shows.
            plan.since = None;
            (sorted, design, last_seq, _) = self.enumerate(None)?;
        }
        self.stats.only_changes = plan.since.is_some();
        let design = match &plan.since {
            Some(_) => self.previous_design(design)?,
            None => design,
        };
        let [design_w, docs_w, rest @ ..] = writers else {
            return Err(Error::invalid("a database has at least five streams"));
        };
        let [overlay_ws @ .., atts_w, local_w, meta_w] = rest else {
            return Err(Error::invalid("a database has at least five streams"));
        };
        tracing::debug!(
            "database {db:?}: {listed} changes listed in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        self.write_design(design, design_w)?;
        self.write_docs(sorted, plan, docs_w, overlay_ws)?;
        tracing::debug!(
            "database {db:?}: documents written after {:.2} s",
            started.elapsed().as_secs_f64()
        );
        self.write_attachments(atts_w)?;
        let local_listed = self.write_local(local_w)?;

        let meta = Meta {
            format: format::FORMAT.to_string(),
            db: db.clone(),
            server: self.context.server.clone(),
            props: info
                .get("props")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
            db_info: info,
            security,
            revs_limit,
            local_listed,
            last_seq,
            method: "changes".into(),
            counts: self.stats.counts.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::invalid(format!("encoding meta.json: {e}")))?;
        bytes.push(b'\n');
        meta_w
            .write_all(&bytes)
            .and_then(|()| meta_w.finish())
            .map_err(self.io(format::META_FILE))?;
        Ok(())
    }

    /// A GET whose endpoint the server may lack (404, 400, 405 give `None`).
    fn optional_get(&self, path: &str) -> Result<Option<serde_json::Value>> {
        self.block_on(optional_json(&self.context.client, path))
    }

    /// Every id's leaves from `_changes?style=all_docs`: other documents
    /// sorted (spilling to disk), design documents apart, the last seq, and
    /// the rows listed (an id changed meanwhile may count twice).
    #[allow(clippy::type_complexity)]
    fn enumerate(
        &mut self,
        since: Option<serde_json::Value>,
    ) -> Result<(
        crate::sort::Sorted,
        BTreeMap<String, Vec<String>>,
        serde_json::Value,
        u64,
    )> {
        let client = Arc::clone(&self.context.client);
        let mut sorter = ExternalSorter::new(self.context.options.sort_memory, None);
        let mut design = BTreeMap::new();
        let mut rows = 0u64;
        let since = self.block_on(client.each_leaves(
            self.db,
            self.context.options.changes_page,
            since,
            |id, revs| {
                rows += 1;
                if id.starts_with("_design/") {
                    design.insert(id, revs);
                    Ok(())
                } else {
                    sorter
                        .push(id.as_bytes(), revs.join("\n").as_bytes())
                        .map_err(|e| Error::io("sorting document ids", e))
                }
            },
        ))?;
        if sorter.spilled_runs() > 0 {
            tracing::debug!(
                "{}: sorted ids in {} runs on disk",
                self.db,
                sorter.spilled_runs()
            );
        }
        let sorted = sorter
            .finish()
            .map_err(|e| Error::io("sorting document ids", e))?;
        Ok((sorted, design, since, rows))
    }

    /// How to read the database: the whole `_changes` or only what came
    /// after the previous snapshot, and whether to write a new base.
    fn plan(&self, info: &serde_json::Value, compact: bool) -> DocsPlan {
        let Some(p) = self.previous.filter(|_| !compact) else {
            return DocsPlan {
                compact: true,
                since: None,
            };
        };
        // Only the changes since the previous snapshot, when its base is
        // kept and its sequence is known. A whole enumeration each time the
        // base is rewritten also catches purged documents, which `_changes`
        // does not report.
        let mut meta = Vec::new();
        let previous_seq = stream_item(&self.context.runtime, &p.repo, &p.snapshot, &p.meta)
            .read_to_end(&mut meta)
            .ok()
            .and_then(|_| serde_json::from_slice::<Meta>(&meta).ok())
            .map(|m| m.last_seq)
            .filter(|seq| !seq.is_null());
        // An integer sequence (pouchdb-server) that went backwards: the
        // database was recreated. (CouchDB's sequences carry each shard's
        // uuid, and it replays a recreated shard from the start.)
        let went_back = match (
            previous_seq.as_ref().and_then(|s| s.as_u64()),
            info["update_seq"].as_u64(),
        ) {
            (Some(before), Some(now)) => now < before,
            _ => false,
        };
        DocsPlan {
            compact,
            since: previous_seq.filter(|_| !compact && !went_back),
        }
    }

    /// The previous snapshot's design documents' leaves, updated with the
    /// changed ones.
    fn previous_design(
        &self,
        mut changed: BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let Some(p) = self.previous else {
            return Ok(changed);
        };
        let mut groups = GroupReader::new(
            p.open(&self.context.runtime, &p.design),
            format!("previous {}", format::DESIGN_FILE),
        );
        let mut design = BTreeMap::new();
        while let Some(g) = groups.next_group().map_err(|e| {
            Error::corrupt(
                format!("the previous dump of database {:?}", self.db),
                format!("{e}; back up with --full to fetch every document again"),
            )
        })? {
            design.insert(g.id, g.revs);
        }
        design.append(&mut changed);
        Ok(design)
    }

    fn write_design(
        &mut self,
        design: BTreeMap<String, Vec<String>>,
        out: &mut PipeWriter,
    ) -> Result<()> {
        let leaves: Vec<(String, String)> = design
            .iter()
            .flat_map(|(id, revs)| revs.iter().map(move |r| (id.clone(), r.clone())))
            .collect();
        let mut fetched = Fetched::new();
        for chunk in leaves.chunks(50) {
            let got = self.block_on(bulk_get(
                Arc::clone(&self.context.client),
                self.db.to_string(),
                chunk.to_vec(),
                true,
            ))?;
            for (id, docs) in got {
                fetched.entry(id).or_default().extend(docs);
            }
        }
        let mut buf = Vec::new();
        for id in design.keys() {
            let docs = fetched.remove(id).unwrap_or_default();
            let lines = self.lines_of(id, docs, &mut buf)?;
            self.stats.counts.design_leaves += lines;
        }
        out.write_all(&buf)
            .and_then(|()| out.finish())
            .map_err(self.io(format::DESIGN_FILE))
    }

    /// Encodes a document's fetched leaves as lines in rev order; returns
    /// how many.
    fn lines_of(&self, id: &str, docs: Vec<Box<RawValue>>, out: &mut Vec<u8>) -> Result<u64> {
        let mut leaves = Vec::with_capacity(docs.len());
        for doc in docs {
            let head: DocHead = serde_json::from_str(doc.get()).map_err(|e| Error::Rejected {
                url: self.context.client.url(),
                what: format!("document {id:?} of {:?}", self.db),
                detail: format!("not a document: {e}"),
                hint: "check the server".into(),
            })?;
            leaves.push((head, doc));
        }
        leaves.sort_by(|a, b| format::rev_order(&a.0.rev, &b.0.rev));
        leaves.dedup_by(|a, b| a.0.rev == b.0.rev);
        for (head, doc) in &leaves {
            format::encode_doc_line(id, &head.rev, head.deleted, doc, out);
        }
        Ok(leaves.len() as u64)
    }

    /// Writes the documents: a new base (first backup, `--full`, or when
    /// the overlay has grown past an eighth of the base), or the previous
    /// base again, unchanged, and an overlay of every id that differs from
    /// it. Either way the lines of unchanged documents are copied, not
    /// fetched; the overlay keeps day-to-day storage proportional to change.
    fn write_docs(
        &mut self,
        sorted: crate::sort::Sorted,
        plan: DocsPlan,
        base_out: &mut PipeWriter,
        overlay_outs: &mut [PipeWriter],
    ) -> Result<()> {
        let compact = plan.compact;
        let merged = self.previous.map(|p| {
            let mut merged = Merged::open(
                &p.docs,
                &p.overlays,
                |item| p.open(&self.context.runtime, item),
                |file| format!("previous {file}"),
            );
            if !compact {
                merged.base_bytes = Some(Vec::new());
            }
            merged
        });
        let mut steps = Steps {
            sorted: sorted.peekable(),
            only_changes: plan.since.is_some(),
            previous: PrevView {
                merged,
                pending: None,
                compact,
                db: self.db.to_string(),
            },
            gone: VecDeque::new(),
        };
        self.stats.rewrote_base = compact;
        let mut delta = DeltaBuffer::Memory(Vec::new());
        let batch_len = self.context.options.batch.max(1);
        let requests = self.context.options.requests.max(1);
        let mut window: VecDeque<Slot> = VecDeque::new();
        let mut window_bytes = 0usize;
        let mut batches = Batches {
            next: 0,
            filling: Vec::new(),
            in_flight: VecDeque::new(),
            done: HashMap::new(),
        };
        while let Some(step) = steps.next()? {
            if !compact {
                let bytes = steps.previous.take_base_bytes();
                base_out
                    .write_all(&bytes)
                    .map_err(self.io(format::DOCS_FILE))?;
            }
            let (id, revs, group) = match step {
                // Ids the server no longer has (purged): the overlay
                // removes them from the base.
                Step::Gone(g) => {
                    if !compact && !g.gone {
                        window.push_back(Slot::Gone(g.id));
                    }
                    continue;
                }
                Step::Doc { id, revs, previous } => (id, revs, previous),
            };
            match group {
                Some(group) if !group.gone && group.revs == revs => {
                    self.stats.reused_leaves += revs.len() as u64;
                    // Unchanged: kept where it is unless the base is
                    // written anew.
                    if compact {
                        window_bytes += group.lines.len();
                        window.push_back(Slot::Ready(group.lines));
                    } else {
                        let keys = self.tally(&group.lines)?;
                        window.push_back(Slot::Kept(keys));
                    }
                }
                _ => {
                    batches
                        .filling
                        .extend(revs.iter().map(|r| (id.clone(), r.clone())));
                    window.push_back(Slot::Fetch {
                        batch: batches.next,
                        id,
                        revs,
                    });
                    if batches.filling.len() >= batch_len {
                        self.dispatch(&mut batches);
                    }
                }
            }
            // Write what is ready; wait for the oldest fetch when too much is held.
            loop {
                let must_wait = window_bytes > WINDOW_BYTES || batches.in_flight.len() > requests;
                let out: &mut dyn Write = if compact { base_out } else { &mut delta };
                if !self.drain_front(
                    &mut window,
                    &mut window_bytes,
                    &mut batches,
                    must_wait,
                    out,
                )? {
                    break;
                }
            }
        }
        if !compact {
            let bytes = steps.previous.take_base_bytes();
            base_out
                .write_all(&bytes)
                .map_err(self.io(format::DOCS_FILE))?;
        }
        self.dispatch(&mut batches);
        loop {
            let out: &mut dyn Write = if compact { base_out } else { &mut delta };
            if !self.drain_front(&mut window, &mut window_bytes, &mut batches, true, out)? {
                break;
            }
        }
        base_out.finish().map_err(self.io(format::DOCS_FILE))?;
        // The previous overlays again, byte for byte, then the new one.
        let Some((new, kept)) = overlay_outs.split_last_mut() else {
            return Ok(()); // a new base: no overlays
        };
        let previous = self
            .previous
            .map(|p| p.overlays.as_slice())
            .unwrap_or_default();
        for (i, (out, item)) in kept.iter_mut().zip(previous).enumerate() {
            let file = format::overlay_file(i + 1);
            let previous = self
                .previous
                .ok_or_else(|| Error::invalid("no previous dump"))?;
            let mut lines = stream_item(
                &self.context.runtime,
                &previous.repo,
                &previous.snapshot,
                item,
            );
            let mut buf = Vec::new();
            lines.read_to_end(&mut buf).map_err(|e| {
                Error::corrupt(
                    format!("the previous {file} of database {:?}", self.db),
                    format!("{e}; back up with --full to fetch every document again"),
                )
            })?;
            out.write_all(&buf)
                .and_then(|()| out.finish())
                .map_err(self.io(&file))?;
        }
        delta
            .copy_to(new)
            .and_then(|()| new.finish())
            .map_err(self.io(&format::overlay_file(overlay_outs.len())))
    }

    fn dispatch(&self, batches: &mut Batches) {
        if batches.filling.is_empty() {
            return;
        }
        let leaves = std::mem::take(&mut batches.filling);
        let task = self.context.runtime.spawn(bulk_get(
            Arc::clone(&self.context.client),
            self.db.to_string(),
            leaves,
            false,
        ));
        batches.in_flight.push_back((batches.next, task));
        batches.next += 1;
    }

    /// Writes the front slot if it is ready (or, with `wait`, after waiting
    /// for its batch); false when nothing was written.
    fn drain_front(
        &mut self,
        window: &mut VecDeque<Slot>,
        window_bytes: &mut usize,
        batches: &mut Batches,
        wait: bool,
        out: &mut dyn Write,
    ) -> Result<bool> {
        let Some(front) = window.front() else {
            return Ok(false);
        };
        if let Slot::Fetch { batch, .. } = front {
            let batch = *batch;
            if !batches.done.contains_key(&batch) {
                let finished = batches
                    .in_flight
                    .front()
                    .is_some_and(|(n, task)| *n == batch && task.is_finished());
                if !wait && !finished {
                    return Ok(false);
                }
                if batch == batches.next {
                    self.dispatch(batches); // the front needs the batch still filling
                }
                while let Some((n, task)) = batches.in_flight.pop_front() {
                    let fetched = self
                        .block_on(task)
                        .map_err(|e| Error::Bug(format!("fetch task failed: {e}")))??;
                    batches.done.insert(n, fetched);
                    if n == batch {
                        break;
                    }
                }
            }
        }
        let mut lines = Vec::new();
        match window.pop_front() {
            Some(Slot::Ready(l)) => {
                *window_bytes -= l.len();
                self.account(&l)?;
                out.write_all(&l).map_err(self.io(format::DOCS_FILE))?;
                return Ok(true);
            }
            Some(Slot::Kept(keys)) => {
                self.attachments.extend(keys);
                return Ok(true);
            }
            Some(Slot::Gone(id)) => {
                encode_gone(&id, &mut lines);
                out.write_all(&lines).map_err(self.io(format::DOCS_FILE))?;
                return Ok(true);
            }
            Some(Slot::Fetch { batch, id, revs }) => {
                let mut docs = batches
                    .done
                    .get_mut(&batch)
                    .and_then(|f| f.remove(&id))
                    .unwrap_or_default();
                if docs.len() < revs.len() {
                    // A leaf vanished since the enumeration: take what is there now.
                    docs = self
                        .block_on(open_revs_all(
                            Arc::clone(&self.context.client),
                            self.db.to_string(),
                            id.clone(),
                        ))?
                        .remove(&id)
                        .unwrap_or_default();
                }
                let n = self.lines_of(&id, docs, &mut lines)?;
                self.stats.fetched_leaves += n;
                if batches.done.get(&batch).is_some_and(HashMap::is_empty)
                    && !window
                        .iter()
                        .any(|s| matches!(s, Slot::Fetch { batch: b, .. } if *b == batch))
                {
                    batches.done.remove(&batch);
                }
            }
            None => return Ok(false),
        }
        self.account(&lines)?;
        out.write_all(&lines).map_err(self.io(format::DOCS_FILE))?;
        Ok(true)
    }

    /// Counts one document's lines and notes the attachments they name.
    fn account(&mut self, lines: &[u8]) -> Result<()> {
        let keys = self.tally(lines)?;
        self.attachments.extend(keys);
        Ok(())
    }

    /// Counts one document's lines; returns the attachments they name
    /// (which must be noted in id order).
    fn tally(&mut self, lines: &[u8]) -> Result<Vec<AttRef>> {
        let mut keys: Vec<AttRef> = Vec::new();
        let mut id_seen = false;
        let mut leaves = 0u64;
        for line in format::each_line(lines) {
            let parsed = format::parse_doc_line(line)
                .map_err(|e| Error::corrupt(format!("a line of {}", self.db), e.to_string()))?;
            leaves += 1;
            if parsed.del {
                self.stats.counts.deleted_leaves += 1;
            }
            if !id_seen {
                id_seen = true;
                self.stats.counts.docs += 1;
            }
            let stubs = format::stubs(parsed.doc)
                .map_err(|e| Error::corrupt(format!("document {:?}", parsed.id), e.to_string()))?;
            for (name, stub) in stubs {
                let (Some(revpos), Some(digest)) = (stub.revpos, stub.digest) else {
                    continue;
                };
                keys.push((
                    AttKey {
                        id: parsed.id.to_string(),
                        name,
                        revpos,
                        digest,
                    },
                    parsed.rev.to_string(),
                    stub.length,
                ));
            }
        }
        self.stats.counts.doc_leaves += leaves;
        if leaves > 1 {
            self.stats.counts.conflicted_docs += 1;
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }

    fn write_attachments(&mut self, out: &mut PipeWriter) -> Result<()> {
        let wanted = std::mem::take(&mut self.attachments);
        let mut previous = self
            .previous
            .map(|p| p.open(&self.context.runtime, &p.attachments));
        let mut prev_header: Option<AttHeader> = None;
        let mut line = Vec::new();
        let mut data = Vec::new();
        let requests = self.context.options.requests.max(1);
        let mut in_flight: VecDeque<JoinHandle<Result<Vec<u8>>>> = VecDeque::new();
        let mut ready: VecDeque<Option<Vec<u8>>> = VecDeque::new(); // None: the next in flight
        for (key, rev, len) in wanted {
            // Advance the previous attachments to this key.
            let mut reused = None;
            while let Some(lines) = previous.as_mut() {
                if prev_header.is_none() {
                    match next_header(lines, &mut line) {
                        Ok(Some(h)) => prev_header = Some(h),
                        Ok(None) => {
                            previous = None;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(
                                "database {:?}: cannot read its previous attachments ({e}); fetching the rest",
                                self.db
                            );
                            previous = None;
                            break;
                        }
                    }
                }
                let Some(h) = prev_header.as_ref() else { break };
                let order = h.key().cmp(&key);
                if order == std::cmp::Ordering::Greater {
                    break;
                }
                let h = prev_header.take().unwrap_or_else(|| unreachable!());
                if let Err(e) = lines.read_blob(h.len, &mut data) {
                    tracing::warn!(
                        "database {:?}: cannot read its previous attachments ({e}); fetching the rest",
                        self.db
                    );
                    previous = None;
                    break;
                }
                if order == std::cmp::Ordering::Equal {
                    let mut record = Vec::with_capacity(data.len() + 200);
                    format::encode_attachment(&h, &data, &mut record);
                    reused = Some(record);
                    break;
                }
            }
            match reused {
                Some(record) => {
                    self.stats.reused_attachments += 1;
                    ready.push_back(Some(record));
                }
                None => {
                    self.stats.fetched_attachments += 1;
                    in_flight.push_back(self.context.runtime.spawn(fetch_attachment(
                        Arc::clone(&self.context.client),
                        self.db.to_string(),
                        key,
                        rev,
                        len,
                    )));
                    ready.push_back(None);
                }
            }
            while ready.front().is_some_and(Option::is_some) || in_flight.len() >= requests {
                self.write_next_attachment(&mut ready, &mut in_flight, out)?;
            }
        }
        while !ready.is_empty() {
            self.write_next_attachment(&mut ready, &mut in_flight, out)?;
        }
        out.finish().map_err(self.io(format::ATTACHMENTS_FILE))
    }

    fn write_next_attachment(
        &mut self,
        ready: &mut VecDeque<Option<Vec<u8>>>,
        in_flight: &mut VecDeque<JoinHandle<Result<Vec<u8>>>>,
        out: &mut PipeWriter,
    ) -> Result<()> {
        let record = match ready.pop_front() {
            Some(Some(record)) => record,
            Some(None) => {
                let task = in_flight
                    .pop_front()
                    .ok_or_else(|| Error::invalid("attachment queue out of step"))?;
                self.block_on(task)
                    .map_err(|e| Error::Bug(format!("attachment task failed: {e}")))??
            }
            None => return Ok(()),
        };
        // The header line says how long the data is.
        let header_end = memchr::memchr(b'\n', &record).unwrap_or(0);
        let header: AttHeader = serde_json::from_slice(&record[..header_end])
            .map_err(|e| Error::invalid(format!("attachment header: {e}")))?;
        self.stats.counts.attachments += 1;
        self.stats.counts.attachment_bytes += header.len;
        out.write_all(&record)
            .map_err(self.io(format::ATTACHMENTS_FILE))
    }

    /// `_local` documents, where the server lists them; false where it does not.
    fn write_local(&mut self, out: &mut PipeWriter) -> Result<bool> {
        let path = local_docs_path(self.db);
        let listed = self.optional_get(&path)?;
        let mut buf = Vec::new();
        if let Some(value) = &listed {
            let (lines, count) = local_lines(value).map_err(|e| Error::Rejected {
                url: self.context.client.url_of(&path),
                what: "_local_docs".into(),
                detail: e.to_string(),
                hint: "check the server".into(),
            })?;
            buf = lines;
            self.stats.counts.local_docs += count;
        }
        out.write_all(&buf)
            .and_then(|()| out.finish())
            .map_err(self.io(format::LOCAL_FILE))?;
        Ok(listed.is_some())
    }
}

fn next_header(
    lines: &mut Lines<BufReader<PipeReader>>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<AttHeader>> {
    if !lines.next_into(buf)? {
        return Ok(None);
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// How many ids the database has, live and deleted, by its info (CouchDB's
/// `doc_count` + `doc_del_count`; unknown where the server lacks either).
fn server_ids(info: &serde_json::Value) -> Option<u64> {
    Some(info.get("doc_count")?.as_u64()? + info.get("doc_del_count")?.as_u64()?)
}

/// Fetches one attachment and returns its record; checks it against the
/// stub's digest and length the way the server means them
/// ([`attachment::check`]): gzip-encoded ones as stored, kept decoded.
async fn fetch_attachment(
    client: Arc<CouchClient>,
    db: String,
    key: AttKey,
    rev: String,
    length: Option<u64>,
) -> Result<Vec<u8>> {
    let path = format!(
        "{}/{}?rev={}",
        doc_path(&db, &key.id),
        crate::client::query_value(&key.name),
        query_value(&rev)
    );
    let mut last = String::new();
    // A mismatch is retried once: a connection cut mid-body.
    for _ in 0..2 {
        let response = client.get_attachment(&path).await?;
        if !response.status.is_success() {
            return Err(client.rejected(&path, "fetching an attachment", &response));
        }
        let body = response.body;
        let max = crate::client::MAX_ATTACHMENT_RESPONSE_LEN;
        let (digest, gzip) = (key.digest.clone(), response.gzip);
        let checked =
            cairn_store::cpu::run(move || attachment::check(body, gzip, &digest, length, max))
                .await;
        match checked {
            Ok(checked) => {
                let header = AttHeader {
                    id: key.id.clone(),
                    name: key.name.clone(),
                    revpos: key.revpos,
                    digest: key.digest.clone(),
                    encoding: checked.encoding.map(str::to_string),
                    data_digest: checked.encoding.map(|_| format::md5_digest(&checked.data)),
                    len: checked.data.len() as u64,
                };
                let mut record = Vec::with_capacity(checked.data.len() + 200);
                format::encode_attachment(&header, &checked.data, &mut record);
                return Ok(record);
            }
            Err(detail) => last = detail,
        }
    }
    Err(Error::Rejected {
        url: client.url_of(&path),
        what: format!("attachment {:?} of {:?}", key.name, key.id),
        detail: last,
        hint: "the attachment changed or is damaged on the server; run the backup again".into(),
    })
}
