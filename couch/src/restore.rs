//! Restoring CouchDB databases from a snapshot.
//!
//! Plan first: every target is checked before anything is written (missing,
//! empty, resumable, or non-empty, which is refused without `--merge`). Then
//! per database, in this order:
//!
//! 1. create it if missing (with its properties), write the marker
//!    `_local/cairn-restore` naming the snapshot, set `_revs_limit`;
//! 2. documents: `_bulk_docs` with `new_edits:false` (revision ids and
//!    `_revisions` kept), batches bounded by count and bytes, several in
//!    flight, attachments inline; a batch the server finds too large is split;
//! 3. design documents (after the data, so `validate_doc_update` cannot
//!    reject it), then `_local` documents (not replication checkpoints);
//! 4. `_security` last, so members see the database only when complete;
//! 5. check: the target holds every leaf of the snapshot (`_all_docs` for
//!    documents of one live leaf, `_revs_diff` for the rest) and
//!    no other document (`doc_count`, `doc_del_count`), or, with `--check
//!    leaves`, its (id, leaf revisions) equal the snapshot's; `_security`
//!    matches; then the marker is removed.
//!
//! Every write is idempotent, so a restore killed at any point and run again
//! finds its marker, resumes, and ends with the same database.

use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use cairn_store::error::{Error, Result};
use cairn_store::format::manifest::{Item, Snapshot, SourceKind};
use cairn_store::ops::restore::RestoreProgress;
use cairn_store::repo::IndexedRepository;

use crate::client::{Body, CouchClient, db_path, doc_path};
use crate::format::{self, AttHeader, Meta};
use crate::listing::{Listing, PAGE_ROWS};
use crate::merge::{Group, GroupReader, Merged};
use crate::pipe::{Lines, PipeReader};
use crate::sort::{ExternalSorter, Sorted};
use crate::stream_item;

type DocGroups = Merged<BufReader<PipeReader>>;

/// CouchDB writes `_design/_auth` into `_users` itself (at start, on every
/// node): a restore of `_users` leaves the target's own, restores every
/// other document (the accounts), and does not compare that one.
const USERS_DB: &str = "_users";
const USERS_AUTH: &str = "_design/_auth";

/// Whether `id` in `db` is the server's own document (see [`USERS_AUTH`]).
fn servers_own(db: &str, id: &[u8]) -> bool {
    db == USERS_DB && id == USERS_AUTH.as_bytes()
}

/// The marker a restore keeps in each target while it runs.
pub const MARKER: &str = "_local/cairn-restore";

/// How to restore.
#[derive(Debug, Clone)]
pub struct CouchRestoreOptions {
    /// `(database in the snapshot, target name)`; empty: every database
    /// in the snapshot under its own name, except `_replicator` (restoring
    /// it would start its replications; name it to restore it).
    pub dbs: Vec<(String, String)>,
    /// Restore into non-empty databases too.
    pub merge: bool,
    /// Documents per `_bulk_docs`.
    pub batch_docs: usize,
    /// Bytes per `_bulk_docs` (a larger document goes alone).
    pub batch_bytes: usize,
    /// Requests in flight.
    pub requests: usize,
    /// Memory for sorting ids while verifying.
    pub sort_memory: usize,
    /// Shards of a database created (default: the source's `cluster.q`).
    pub q: Option<u64>,
    /// Replicas of a database created (default: the source's `cluster.n`
    /// where the target has that many nodes, else the target's default).
    pub n: Option<u64>,
    /// How the target is checked at the end.
    pub check: Check,
}

/// How a restored database is checked against the snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every leaf of the snapshot confirmed on the target: a document's
    /// one live leaf seen as its winner in `_all_docs`, the others asked
    /// for with `_revs_diff` (the question replication asks); and the
    /// target's document counts: nothing missing, no other document.
    /// Leaves that others added to restored documents meanwhile are not
    /// seen.
    #[default]
    Present,
    /// The target's every id and leaf listed (`_changes?style=all_docs`)
    /// and compared with the snapshot's: also finds leaves added by
    /// others. On pouchdb-server this listing costs more than the restore.
    Leaves,
}

impl Default for CouchRestoreOptions {
    fn default() -> Self {
        CouchRestoreOptions {
            dbs: Vec::new(),
            merge: false,
            batch_docs: 500,
            batch_bytes: 4 << 20,
            requests: 4,
            sort_memory: 64 << 20,
            q: None,
            n: None,
            check: Check::Present,
        }
    }
}

/// The most shards (or replicas) a restore asks for on the source's word.
const MAX_SHARDS: u64 = 256;

/// How a database is created: CouchDB's `PUT /db?q=Q&n=N&partitioned=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Shards (`q`); `None`: the server's default.
    pub q: Option<u64>,
    /// Replicas of each shard (`n`); `None`: the server's default.
    pub n: Option<u64>,
    /// Partitioned (`props.partitioned`).
    pub partitioned: bool,
    /// The source's `n`, when the target has fewer nodes (or does not say
    /// how many) and got its default instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_lowered_from: Option<u64>,
}

impl Shape {
    /// The source database's shape, as its backup recorded it (`GET /db`:
    /// `cluster.q`, `cluster.n`, `props.partitioned`).
    pub fn of(meta: &Meta) -> Shape {
        let cluster = |k: &str| {
            meta.db_info
                .get("cluster")
                .and_then(|c| c.get(k))
                .and_then(serde_json::Value::as_u64)
                .filter(|&v| v > 0)
        };
        Shape {
            // A source claiming absurd counts gets the target's defaults.
            q: cluster("q").filter(|&q| q <= MAX_SHARDS),
            n: cluster("n").filter(|&n| n <= MAX_SHARDS),
            partitioned: meta
                .props
                .get("partitioned")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            n_lowered_from: None,
        }
    }

    /// The query string of the `PUT` that creates it (`""` for defaults).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(q) = self.q {
            parts.push(format!("q={q}"));
        }
        if let Some(n) = self.n {
            parts.push(format!("n={n}"));
        }
        if self.partitioned {
            parts.push("partitioned=true".to_string());
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// How the target compares with the snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// Document ids in the snapshot.
    pub ids: u64,
    /// Leaf revisions in the snapshot.
    pub leaves: u64,
    /// Ids in the snapshot missing from the target or lacking leaves.
    pub missing: u64,
    /// Ids in the target that are not in the snapshot, or have other leaves.
    pub extra: u64,
    /// Whether `_security` equals the snapshot's.
    pub security_matches: bool,
    /// Some differences, for the message.
    pub examples: Vec<String>,
}

/// What the restore of one database did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbRestoreReport {
    /// The database in the snapshot.
    pub source: String,
    /// The database written.
    pub target: String,
    /// Whether it was created.
    pub created: bool,
    /// How it was created: the shard (`q`) and replica (`n`) counts asked
    /// for (absent: the server's default) and whether partitioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
    /// Whether an interrupted restore of the same snapshot was resumed.
    pub resumed: bool,
    /// Leaf revisions sent.
    pub leaves_sent: u64,
    /// Design document leaves sent.
    pub design_sent: u64,
    /// Design documents the target's server owns and keeps (`_users`'s
    /// `_design/_auth`), not sent.
    pub design_kept: u64,
    /// `_local` documents written.
    pub local_written: u64,
    /// Replication checkpoints not restored.
    pub checkpoints_skipped: u64,
    /// Attachments sent.
    pub attachments: u64,
    /// `_bulk_docs` requests.
    pub batches: u64,
    /// Batches split because the server found them too large.
    pub splits: u64,
    /// Documents the server refused.
    pub rejected: u64,
    /// Some refusals, for the message.
    pub rejections: Vec<String>,
    /// How the target was checked at the end.
    pub check: Check,
    /// The check at the end.
    pub comparison: Comparison,
    /// Seconds spent writing documents (the docs phase).
    pub load_secs: f64,
    /// Seconds spent on the check at the end.
    pub verify_secs: f64,
}

impl DbRestoreReport {
    /// Whether the target now equals the snapshot (with `--merge`: holds it).
    pub fn is_clean(&self, merge: bool) -> bool {
        let c = &self.comparison;
        self.rejected == 0 && c.missing == 0 && (merge || c.extra == 0) && c.security_matches
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct CouchRestoreReport {
    /// The snapshot.
    pub snapshot: String,
    /// Per database.
    pub databases: Vec<DbRestoreReport>,
    /// Whether it merged into existing data.
    pub merge: bool,
    /// HTTP requests.
    pub requests: u64,
    /// Of which retries.
    pub retries: u64,
    /// Request bytes sent.
    pub bytes_sent: u64,
}

impl CouchRestoreReport {
    /// Whether every database equals its snapshot.
    pub fn is_clean(&self) -> bool {
        self.databases.iter().all(|d| d.is_clean(self.merge))
    }

    /// The error to exit with when not clean.
    pub fn mismatch(&self) -> Option<Error> {
        let bad: Vec<String> = self
            .databases
            .iter()
            .filter(|d| !d.is_clean(self.merge))
            .map(|d| {
                let c = &d.comparison;
                let mut parts = Vec::new();
                if d.rejected > 0 {
                    parts.push(format!(
                        "{} documents refused ({})",
                        d.rejected,
                        d.rejections.join("; ")
                    ));
                }
                if c.missing > 0 {
                    parts.push(format!(
                        "{} documents missing or short of leaves",
                        c.missing
                    ));
                }
                if c.extra > 0 && !self.merge {
                    parts.push(format!("{} documents not in the snapshot", c.extra));
                }
                if !c.security_matches {
                    parts.push("_security differs".to_string());
                }
                if !c.examples.is_empty() {
                    parts.push(format!("e.g. {}", c.examples.join(", ")));
                }
                format!("{}: {}", d.target, parts.join("; "))
            })
            .collect();
        (!bad.is_empty()).then(|| Error::Mismatch {
            what: format!("the restore of snapshot {}", self.snapshot),
            detail: bad.join(" | "),
            hint: "run the restore again (it resumes); if a difference stays, the server \
                   refused data: see its log"
                .into(),
        })
    }
}

/// The state of a target before the restore.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Missing,
    Empty,
    /// A restore of the same snapshot was interrupted in this phase.
    Resume(String),
    NonEmpty,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    snapshot: String,
    source: String,
    phase: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "Option::is_none")]
    rev: Option<String>,
}

/// Restores CouchDB databases of `snapshot` through `client`.
pub async fn restore_couchdb(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    client: Arc<CouchClient>,
    options: &CouchRestoreOptions,
    progress: Arc<dyn RestoreProgress>,
) -> Result<CouchRestoreReport> {
    if !matches!(
        snapshot.manifest.source.kind,
        SourceKind::Couchdb | SourceKind::CouchdbImport
    ) {
        return Err(Error::invalid(format!(
            "snapshot {} is not a CouchDB backup; restore it with `cairn restore`",
            snapshot.id
        )));
    }
    let flat = cairn_store::ops::walk::with_items(Arc::new(repo.blob_reader()), snapshot).await?;
    let snapshot = &flat;
    let available = crate::dumps(snapshot);
    let mapping: Vec<(String, String)> = if options.dbs.is_empty() {
        let mut all: Vec<String> = available
            .keys()
            .filter(|d| *d != "_replicator")
            .cloned()
            .collect();
        all.sort();
        all.into_iter().map(|d| (d.clone(), d)).collect()
    } else {
        options.dbs.clone()
    };
    let mut plans = Vec::new();
    for (source, target) in &mapping {
        let items = available.get(source).ok_or_else(|| Error::NotFound {
            what: format!("database {source:?} in snapshot {}", snapshot.id),
            hint: format!("it holds {}", sorted_names(available.keys()).join(", ")),
        })?;
        let item = |file: &str| items.file(source, file);
        let meta_bytes = read_item(repo, snapshot, &item(format::META_FILE)?).await?;
        let meta: Meta = serde_json::from_slice(&meta_bytes).map_err(|e| {
            Error::corrupt(format::item_name(source, format::META_FILE), e.to_string())
        })?;
        let state = target_state(&client, target, &snapshot.id.to_string(), source).await?;
        plans.push(DbPlan {
            source: source.clone(),
            target: target.clone(),
            meta,
            state,
            docs: item(format::DOCS_FILE)?,
            overlays: items.overlays.clone().map_err(|e| {
                Error::corrupt(format!("snapshot {} database {source:?}", snapshot.id), e)
            })?,
            design: item(format::DESIGN_FILE)?,
            attachments: item(format::ATTACHMENTS_FILE)?,
            local: item(format::LOCAL_FILE)?,
        });
    }
    let busy: Vec<&str> = plans
        .iter()
        .filter(|p| p.state == Target::NonEmpty)
        .map(|p| p.target.as_str())
        .collect();
    if !busy.is_empty() && !options.merge {
        return Err(Error::AlreadyExists {
            what: format!(
                "database {} on {} is not empty",
                busy.join(", "),
                client.url()
            ),
            hint: "restore into a new database (--db NAME:NEWNAME), or add --merge to add \
                   the snapshot's revisions to what is there (it may create conflicts); \
                   nothing was changed"
                .into(),
        });
    }

    let mut reports = Vec::new();
    for plan in plans {
        let driver = Driver {
            repo: repo.clone(),
            snapshot: snapshot.clone(),
            client: Arc::clone(&client),
            runtime: Handle::current(),
            options: options.clone(),
            progress: Arc::clone(&progress),
        };
        let report = tokio::task::spawn_blocking(move || driver.restore(plan))
            .await
            .map_err(|e| Error::Bug(format!("restore thread failed: {e}")))??;
        reports.push(report);
    }
    let wire = &client.stats;
    Ok(CouchRestoreReport {
        snapshot: snapshot.id.to_string(),
        databases: reports,
        merge: options.merge,
        requests: wire.requests.load(Relaxed),
        retries: wire.retries.load(Relaxed),
        bytes_sent: wire.bytes_sent.load(Relaxed),
    })
}

fn sorted_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = names.cloned().collect();
    v.sort();
    v
}

/// A whole (small) item.
async fn read_item(repo: &IndexedRepository, snapshot: &Snapshot, item: &Item) -> Result<Vec<u8>> {
    let reader = repo.blob_reader();
    let (bytes, _) = repo
        .restore_item(
            &reader,
            snapshot,
            item,
            Vec::new(),
            &cairn_store::ops::restore::NoRestoreProgress,
        )
        .await?;
    Ok(bytes)
}

async fn target_state(
    client: &CouchClient,
    db: &str,
    snapshot: &str,
    source: &str,
) -> Result<Target> {
    let base = db_path(db);
    if client
        .get_json::<serde_json::Value>(&base, "database info")
        .await?
        .is_none()
    {
        return Ok(Target::Missing);
    }
    // An unreadable marker is an error, not "no marker": read as absent, a
    // restore interrupted on a busy server would be refused as non-empty.
    let marker: Option<Marker> = client
        .get_json(&doc_path(db, MARKER), "the restore marker")
        .await?;
    if let Some(m) = marker
        && m.snapshot == snapshot
        && m.source == source
    {
        return Ok(Target::Resume(m.phase));
    }
    #[derive(Deserialize)]
    struct Page {
        results: Vec<serde_json::Value>,
    }
    let page: Page = client
        .get_json(&format!("{base}/_changes?limit=2"), "changes")
        .await?
        .unwrap_or(Page {
            results: Vec::new(),
        });
    // A fresh server's `_users` holds only its own `_design/_auth`.
    let own = |r: &serde_json::Value| {
        r.get("id")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|id| servers_own(db, id.as_bytes()))
    };
    Ok(if page.results.iter().all(own) {
        Target::Empty
    } else {
        Target::NonEmpty
    })
}

struct DbPlan {
    source: String,
    target: String,
    meta: Meta,
    state: Target,
    docs: Item,
    overlays: Vec<Item>,
    design: Item,
    attachments: Item,
    local: Item,
}

struct Driver {
    repo: IndexedRepository,
    snapshot: Snapshot,
    client: Arc<CouchClient>,
    runtime: Handle,
    options: CouchRestoreOptions,
    progress: Arc<dyn RestoreProgress>,
}

/// What a `_bulk_docs` batch got back.
#[derive(Debug, Default)]
struct BatchOutcome {
    requests: u64,
    splits: u64,
    rejected: Vec<String>,
}

const PHASES: [&str; 4] = ["docs", "design", "local", "security"];

fn phase_index(phase: &str) -> usize {
    PHASES.iter().position(|p| *p == phase).unwrap_or(0)
}

impl Driver {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn open(&self, item: &Item) -> Lines<BufReader<PipeReader>> {
        stream_item(&self.runtime, &self.repo, &self.snapshot, item)
    }

    fn restore(&self, plan: DbPlan) -> Result<DbRestoreReport> {
        let mut report = DbRestoreReport {
            source: plan.source.clone(),
            target: plan.target.clone(),
            ..DbRestoreReport::default()
        };
        let db = plan.target.as_str();
        let base = db_path(db);
        let resume_from = match &plan.state {
            Target::Resume(phase) => {
                report.resumed = true;
                phase_index(phase)
            }
            _ => 0,
        };
        if plan.state == Target::Missing {
            report.shape = self.create(db, &plan.meta)?;
            report.created = true;
        }
        let mut marker = self.set_marker(db, &plan.source, PHASES[resume_from], None)?;
        if let Some(limit) = &plan.meta.revs_limit {
            let path = format!("{base}/_revs_limit");
            let r = self.block_on(self.client.request(
                Method::PUT,
                &path,
                Some(Body::json(limit.to_string())),
            ))?;
            if !r.status.is_success() && !is_unsupported(r.status) {
                return Err(self.client.rejected(&path, "setting _revs_limit", &r));
            }
        }

        let mut expected = Expected {
            leaves: ExternalSorter::new(self.options.sort_memory, None),
            live: 0,
            deleted: 0,
        };
        // Documents (skipped, except for the expected set, once past them).
        let started = std::time::Instant::now();
        self.send_docs(db, &plan, resume_from == 0, &mut expected, &mut report)?;
        report.load_secs = started.elapsed().as_secs_f64();
        if resume_from < 1 {
            marker = self.set_marker(db, &plan.source, "design", marker)?;
        }
        self.send_design(db, &plan, &mut expected, &mut report)?;
        if resume_from < 2 {
            marker = self.set_marker(db, &plan.source, "local", marker)?;
        }
        self.send_local(db, &plan, &mut report)?;
        marker = self.set_marker(db, &plan.source, "security", marker)?;
        let security_path = format!("{base}/_security");
        let r = self.block_on(self.client.request(
            Method::PUT,
            &security_path,
            Some(Body::json(plan.meta.security.to_string())),
        ))?;
        if !r.status.is_success() {
            return Err(self
                .client
                .rejected(&security_path, "setting _security", &r));
        }

        let counts = (expected.live, expected.deleted);
        let expected = expected
            .leaves
            .finish()
            .map_err(|e| Error::io("sorting document ids", e))?;
        let started = std::time::Instant::now();
        // `_users` holds a design document its server owns: listed.
        report.check = if db == USERS_DB {
            Check::Leaves
        } else {
            self.options.check
        };
        report.comparison = if report.check == Check::Leaves {
            self.compare(db, expected)?
        } else {
            self.check_present(db, expected, counts)?
        };
        report.comparison.security_matches = self.same_security(db, &plan.meta.security)?;
        report.verify_secs = started.elapsed().as_secs_f64();
        if report.is_clean(self.options.merge) {
            self.clear_marker(db, marker)?;
        }
        Ok(report)
    }

    /// Creates `db` shaped as the source was (or as asked); `None` when
    /// another client created it meanwhile (shaped as that one asked).
    fn create(&self, db: &str, meta: &Meta) -> Result<Option<Shape>> {
        let source = Shape::of(meta);
        let mut shape = Shape {
            q: self.options.q.or(source.q),
            n: self.options.n,
            partitioned: source.partitioned,
            n_lowered_from: None,
        };
        if shape.n.is_none()
            && let Some(want) = source.n
        {
            // A replica count only where the target has that many nodes.
            match self.cluster_nodes()? {
                Some(nodes) if nodes >= want => shape.n = Some(want),
                _ => shape.n_lowered_from = Some(want),
            }
        }
        let path = format!("{}{}", db_path(db), shape.query());
        let r = self.block_on(self.client.request(Method::PUT, &path, None))?;
        match r.status {
            s if s.is_success() => Ok(Some(shape)),
            StatusCode::PRECONDITION_FAILED => Ok(None), // created meanwhile
            _ => Err(self.client.rejected(&path, "creating the database", &r)),
        }
    }

    /// The target's cluster nodes (`GET /_membership`), where it says (a
    /// server that lacks it, or keeps it from these credentials, does not).
    fn cluster_nodes(&self) -> Result<Option<u64>> {
        #[derive(serde::Deserialize)]
        struct Membership {
            cluster_nodes: Vec<serde_json::Value>,
        }
        let path = "_membership";
        let r = match self.block_on(self.client.request(Method::GET, path, None)) {
            Ok(r) if r.status.is_success() => r,
            Ok(_) | Err(Error::CouchForbidden { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(
            r.json::<Membership>(&self.client.url_of(path), "_membership")
                .ok()
                .map(|m| m.cluster_nodes.len() as u64),
        )
    }

    /// Writes the marker; returns its new revision.
    fn set_marker(
        &self,
        db: &str,
        source: &str,
        phase: &str,
        rev: Option<String>,
    ) -> Result<Option<String>> {
        let path = doc_path(db, MARKER);
        let rev = match rev {
            Some(r) => Some(r),
            None => self
                .block_on(self.client.get_json::<Marker>(&path, "the restore marker"))?
                .and_then(|m| m.rev),
        };
        let marker = Marker {
            snapshot: self.snapshot.id.to_string(),
            source: source.to_string(),
            phase: phase.to_string(),
            rev,
        };
        let body = serde_json::to_string(&marker).map_err(|e| Error::invalid(e.to_string()))?;
        let r = self.block_on(
            self.client
                .request(Method::PUT, &path, Some(Body::json(body))),
        )?;
        if !r.status.is_success() {
            return Err(self
                .client
                .rejected(&path, "writing the restore marker", &r));
        }
        #[derive(Deserialize)]
        struct Put {
            rev: Option<String>,
        }
        Ok(r.json::<Put>(&self.client.url_of(&path), "marker")?.rev)
    }

    fn clear_marker(&self, db: &str, rev: Option<String>) -> Result<()> {
        let path = match rev {
            Some(rev) => format!(
                "{}?rev={}",
                doc_path(db, MARKER),
                crate::client::query_value(&rev)
            ),
            None => doc_path(db, MARKER),
        };
        let r = self.block_on(self.client.request(Method::DELETE, &path, None))?;
        if !r.status.is_success() && r.status != StatusCode::NOT_FOUND {
            return Err(self
                .client
                .rejected(&path, "removing the restore marker", &r));
        }
        Ok(())
    }

    /// Streams docs.ndjson with attachments.bin into batches; records each
    /// id's leaves in `expected`. With `send` false only records.
    fn send_docs(
        &self,
        db: &str,
        plan: &DbPlan,
        send: bool,
        expected: &mut Expected,
        report: &mut DbRestoreReport,
    ) -> Result<()> {
        let item_name = format::item_name(&plan.source, format::DOCS_FILE);
        let mut docs = self.documents(plan);
        let mut attachments = if send {
            Some(AttachmentCursor {
                lines: self.open(&plan.attachments),
                pending: None,
                name: format::item_name(&plan.source, format::ATTACHMENTS_FILE),
                line: Vec::new(),
            })
        } else {
            None
        };
        let mut batcher = Batcher::new(self, db);
        while let Some(group) = docs
            .next_group()
            .map_err(|e| Error::corrupt(item_name.clone(), e.to_string()))?
        {
            if group.gone {
                continue;
            }
            expect(expected, &group)?;
            report.leaves_sent += group.revs.len() as u64;
            if let Some(cursor) = attachments.as_mut() {
                let payloads = self.payloads(&group, cursor, report)?;
                batcher.add(payloads, report)?;
            }
        }
        if send {
            batcher.finish(report)?;
        } else {
            report.leaves_sent = 0;
        }
        Ok(())
    }

    /// The database's documents: the base merged with its overlay.
    fn documents(&self, plan: &DbPlan) -> DocGroups {
        Merged::open(
            &plan.docs,
            &plan.overlays,
            |item| self.open(item),
            |file| format::item_name(&plan.source, file),
        )
    }

    /// The `_bulk_docs` payloads of one document's leaves, attachments
    /// inlined from attachments.bin.
    fn payloads(
        &self,
        group: &Group,
        cursor: &mut AttachmentCursor,
        report: &mut DbRestoreReport,
    ) -> Result<Vec<Bytes>> {
        let id = group.id.as_str();
        let mut data: Option<HashMap<(String, u64, String), Vec<u8>>> = None;
        let mut out = Vec::with_capacity(group.revs.len());
        for line in format::each_line(&group.lines) {
            let parsed = format::parse_doc_line(line)
                .map_err(|e| Error::corrupt(format!("document {id:?}"), e.to_string()))?;
            let stubs = format::stubs(parsed.doc)
                .map_err(|e| Error::corrupt(format!("document {id:?}"), e.to_string()))?;
            if stubs.values().all(|s| !s.stub) {
                out.push(Bytes::copy_from_slice(parsed.doc.get().as_bytes()));
                continue;
            }
            let data = match &mut data {
                Some(d) => d,
                None => data.insert(cursor.take(id)?),
            };
            let mut doc: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(parsed.doc.get())
                    .map_err(|e| Error::corrupt(format!("document {id:?}"), e.to_string()))?;
            let mut inline = serde_json::Map::new();
            for (name, stub) in stubs {
                if !stub.stub {
                    continue;
                }
                let key = (
                    name.clone(),
                    stub.revpos.unwrap_or(0),
                    stub.digest.clone().unwrap_or_default(),
                );
                let bytes = data.get(&key).ok_or_else(|| {
                    Error::corrupt(
                        cursor.name.clone(),
                        format!("no data for attachment {name:?} of document {id:?}"),
                    )
                })?;
                report.attachments += 1;
                let mut att = serde_json::Map::new();
                if let Some(ct) = stub.content_type {
                    att.insert("content_type".into(), ct.into());
                }
                if let Some(revpos) = stub.revpos {
                    att.insert("revpos".into(), revpos.into());
                }
                att.insert(
                    "data".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(bytes)
                        .into(),
                );
                inline.insert(name, att.into());
            }
            if let Some(serde_json::Value::Object(atts)) = doc.get_mut("_attachments") {
                for (name, att) in inline {
                    atts.insert(name, att);
                }
            }
            let body = serde_json::to_vec(&doc).map_err(|e| Error::invalid(e.to_string()))?;
            out.push(Bytes::from(body));
        }
        Ok(out)
    }

    fn send_design(
        &self,
        db: &str,
        plan: &DbPlan,
        expected: &mut Expected,
        report: &mut DbRestoreReport,
    ) -> Result<()> {
        let item_name = format::item_name(&plan.source, format::DESIGN_FILE);
        let mut groups = GroupReader::new(self.open(&plan.design), item_name.clone());
        let mut batcher = Batcher::new(self, db);
        batcher.max_docs = 50;
        while let Some(group) = groups
            .next_group()
            .map_err(|e| Error::corrupt(item_name.clone(), e.to_string()))?
        {
            if servers_own(db, group.id.as_bytes()) {
                report.design_kept += 1;
                continue;
            }
            expect(expected, &group)?;
            // Design documents carry their attachments inline.
            let payloads = format::each_line(&group.lines)
                .map(|l| {
                    format::parse_doc_line(l)
                        .map(|p| Bytes::copy_from_slice(p.doc.get().as_bytes()))
                        .map_err(|e| Error::corrupt(item_name.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            report.design_sent += payloads.len() as u64;
            batcher.add(payloads, report)?;
        }
        batcher.finish(report)
    }

    fn send_local(&self, db: &str, plan: &DbPlan, report: &mut DbRestoreReport) -> Result<()> {
        let item_name = format::item_name(&plan.source, format::LOCAL_FILE);
        let mut lines = self.open(&plan.local);
        let mut line = Vec::new();
        while lines
            .next_into(&mut line)
            .map_err(|e| Error::corrupt(item_name.clone(), e.to_string()))?
        {
            let local: format::LocalLine = serde_json::from_slice(&line).map_err(|e| {
                Error::corrupt(item_name.clone(), format!("line {}: {e}", lines.number))
            })?;
            if local.id == MARKER {
                continue;
            }
            if format::is_replication_checkpoint(&local.id, local.doc) {
                report.checkpoints_skipped += 1;
                continue;
            }
            let path = doc_path(db, &local.id);
            #[derive(Deserialize)]
            struct Current {
                #[serde(rename = "_rev")]
                rev: Option<String>,
            }
            let current = self
                .block_on(self.client.get_json::<Current>(&path, "a local document"))?
                .and_then(|c| c.rev);
            let mut doc: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(local.doc.get())
                    .map_err(|e| Error::corrupt(item_name.clone(), e.to_string()))?;
            match current {
                Some(rev) => doc.insert("_rev".into(), rev.into()),
                None => doc.remove("_rev"),
            };
            let body = serde_json::to_vec(&doc).map_err(|e| Error::invalid(e.to_string()))?;
            let r = self.block_on(self.client.request(
                Method::PUT,
                &path,
                Some(Body::json(body)),
            ))?;
            if !r.status.is_success() {
                report.rejected += 1;
                note(
                    &mut report.rejections,
                    format!("{}: {}", local.id, r.reason()),
                );
                continue;
            }
            report.local_written += 1;
        }
        Ok(())
    }

    /// [`Check::Present`]: confirms the snapshot's leaves on the target,
    /// each document with one live leaf from the target's listing
    /// (`_all_docs`, [`crate::listing`]), the rest by asking `_revs_diff`
    /// which of them it lacks; then compares its `doc_count` (and
    /// `doc_del_count`, where the server says it) with the snapshot's. With
    /// no leaf missing the target's ids include the snapshot's, so a count
    /// above the snapshot's is a document someone else wrote.
    fn check_present(
        &self,
        db: &str,
        expected: Sorted,
        (live, deleted): (u64, u64),
    ) -> Result<Comparison> {
        let mut c = Comparison::default();
        let path = format!("{}/_revs_diff", db_path(db));
        let mut records = expected;
        let mut listing = Listing::new(live);
        // The first batch asked also asks for a revision no database holds,
        // which the server must name missing: a server (or proxy) that
        // answers `{}` to anything does not pass for one that holds
        // everything.
        let mut canary: Option<String> = None;
        let mut canary_seen = false;
        let mut counted = (0u64, 0u64);
        // A round of ids at a time: those the listing confirms are counted,
        // the rest asked for in batches.
        loop {
            let mut ask: Vec<(String, Vec<String>)> = Vec::new();
            let mut taken = 0;
            while taken < CHECK_ROUND_IDS {
                let Some(record) = records.next() else { break };
                let (id, revs) = record.map_err(|e| Error::io("sorting document ids", e))?;
                taken += 1;
                let mut revs: Vec<String> = revs
                    .split(|&b| b == b'\n')
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .collect();
                counted.0 += 1;
                counted.1 += revs.len() as u64;
                while listing.advance_to(&id) {
                    let page =
                        self.block_on(self.client.all_docs_page(db, listing.last(), PAGE_ROWS))?;
                    listing.add_page(page, PAGE_ROWS);
                }
                if listing.confirms(&id, &revs) {
                    continue;
                }
                let id = String::from_utf8_lossy(&id).into_owned();
                if canary.is_none() {
                    canary = Some(id.clone());
                    revs.push(CANARY_REV.to_string());
                }
                ask.push((id, revs));
            }
            if taken == 0 {
                break;
            }
            self.ask_revs_diff(&path, ask, &mut c, &mut canary_seen)?;
        }
        if let Some(why) = listing.cut_short() {
            tracing::info!("{db}: the listing ended early ({why}); the rest was asked for");
        }
        (c.ids, c.leaves) = counted;
        if canary.is_some() && !canary_seen {
            return Err(Error::Rejected {
                url: self.client.url_of(&path),
                what: "asking _revs_diff".into(),
                detail: format!(
                    "the server did not name revision {CANARY_REV} missing, which no \
                     database holds: its answers cannot be trusted"
                ),
                hint: "check that this is a CouchDB server (and what stands in front of \
                       it), or restore with `--check leaves`"
                    .into(),
            });
        }
        let info: serde_json::Value = self
            .block_on(self.client.get_json(&db_path(db), "database info"))?
            .ok_or_else(|| Error::NotFound {
                what: format!("database {db} on {}", self.client.url()),
                hint: "it was there a moment ago: is someone deleting it?".into(),
            })?;
        let count = |k: &str| info.get(k).and_then(serde_json::Value::as_u64);
        if count("doc_count").is_none() {
            return Err(Error::Rejected {
                url: self.client.url_of(&db_path(db)),
                what: "reading the database's document count".into(),
                detail: "the answer has no doc_count".into(),
                hint: "is this a CouchDB server? restore with `--check leaves`".into(),
            });
        }
        // A count above the snapshot's is a document it lacks. One below it,
        // with every leaf there, is the server's own miscount (the
        // pouchdb-server couchbackup needs says `doc_del_count: 0`).
        for (key, want) in [("doc_count", live), ("doc_del_count", deleted)] {
            match count(key) {
                Some(got) if got > want => {
                    c.extra += got - want;
                    note(
                        &mut c.examples,
                        format!("{key} is {got}, the snapshot has {want}"),
                    );
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// Asks the target with `_revs_diff` which of `ask`'s leaves it lacks,
    /// [`REVS_DIFF_IDS`] ids a request, several in flight; notes each id
    /// lacking some in `c`, and whether the canary was named missing.
    fn ask_revs_diff(
        &self,
        path: &str,
        ask: Vec<(String, Vec<String>)>,
        c: &mut Comparison,
        canary_seen: &mut bool,
    ) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        #[derive(Deserialize)]
        struct Missing {
            #[serde(default)]
            missing: Vec<String>,
        }
        let mut ask = ask.into_iter().peekable();
        let batches = std::iter::from_fn(|| {
            ask.peek()?;
            Some(ask.by_ref().take(REVS_DIFF_IDS).collect::<Vec<_>>())
        });
        let asked = futures::stream::iter(batches)
            .map(|batch| {
                let asked: HashMap<&str, &Vec<String>> =
                    batch.iter().map(|(id, revs)| (id.as_str(), revs)).collect();
                let body = serde_json::to_string(&asked);
                async move {
                    let body =
                        body.map_err(|e| Error::invalid(format!("encoding _revs_diff: {e}")))?;
                    // An answer names at most what was asked, and a little more.
                    let max_len = body.len() as u64 * 2 + 4096;
                    let r = self
                        .client
                        .request_bounded(Method::POST, path, Some(Body::json(body)), max_len)
                        .await?;
                    if !r.status.is_success() {
                        let mut e = self.client.rejected(path, "asking _revs_diff", &r);
                        if is_unsupported(r.status)
                            && let Error::Rejected { hint, .. } = &mut e
                        {
                            *hint = "this server lacks _revs_diff: restore with \
                                     `--check leaves`"
                                .into();
                        }
                        return Err(e);
                    }
                    let answer: HashMap<String, Missing> =
                        r.json(&self.client.url_of(path), "_revs_diff")?;
                    Ok((batch, answer))
                }
            })
            .buffered(self.options.requests.max(1))
            .try_for_each(|(batch, mut answer)| {
                // Only what was asked counts, in the order asked.
                for (id, revs) in batch {
                    let Some(m) = answer.remove(&id) else {
                        continue;
                    };
                    let mut gone: Vec<String> =
                        m.missing.into_iter().filter(|r| revs.contains(r)).collect();
                    *canary_seen |= gone.iter().any(|r| r == CANARY_REV);
                    gone.retain(|r| r != CANARY_REV);
                    if !gone.is_empty() {
                        c.missing += 1;
                        gone.truncate(3);
                        note(
                            &mut c.examples,
                            format!("{id:?} lacks leaves {}", gone.join(",")),
                        );
                    }
                }
                futures::future::ready(Ok(()))
            });
        self.block_on(asked)
    }

    /// Whether the target's `_security` is `security`.
    fn same_security(&self, db: &str, security: &serde_json::Value) -> Result<bool> {
        let path = format!("{}/_security", db_path(db));
        let current: serde_json::Value = self
            .block_on(self.client.get_json(&path, "_security"))?
            .unwrap_or_else(|| serde_json::json!({}));
        Ok(security_equal(&current, security))
    }

    /// Compares the target's leaves with `expected`.
    fn compare(&self, db: &str, expected: Sorted) -> Result<Comparison> {
        let actual = self.target_leaves(db)?;
        let mut c = Comparison::default();
        let mut expected = expected.peekable();
        let mut actual = actual.peekable();
        let io = |e| Error::io("sorting document ids", e);
        loop {
            let order = match (expected.peek(), actual.peek()) {
                (None, None) => break,
                (Some(Err(_)), _) => {
                    return Err(io(expected
                        .next()
                        .and_then(Result::err)
                        .unwrap_or_else(|| std::io::Error::other("sort"))));
                }
                (_, Some(Err(_))) => {
                    return Err(io(actual
                        .next()
                        .and_then(Result::err)
                        .unwrap_or_else(|| std::io::Error::other("sort"))));
                }
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(Ok(_))) => std::cmp::Ordering::Greater,
                (Some(Ok((a, _))), Some(Ok((b, _)))) => a.cmp(b),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(Ok((id, revs))) = expected.next() {
                        c.ids += 1;
                        c.leaves += count_revs(&revs);
                        c.missing += 1;
                        note(
                            &mut c.examples,
                            format!("{} missing", String::from_utf8_lossy(&id)),
                        );
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some(Ok((id, _))) = actual.next() {
                        c.extra += 1;
                        note(
                            &mut c.examples,
                            format!("{} not in the snapshot", String::from_utf8_lossy(&id)),
                        );
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(Ok((id, want))), Some(Ok((_, got)))) =
                        (expected.next(), actual.next())
                    {
                        c.ids += 1;
                        c.leaves += count_revs(&want);
                        if want != got {
                            let want_set: Vec<&[u8]> = want.split(|&b| b == b'\n').collect();
                            let got_set: Vec<&[u8]> = got.split(|&b| b == b'\n').collect();
                            if want_set.iter().any(|r| !got_set.contains(r)) {
                                c.missing += 1;
                            } else {
                                c.extra += 1;
                            }
                            note(
                                &mut c.examples,
                                format!(
                                    "{} has leaves {} instead of {}",
                                    String::from_utf8_lossy(&id),
                                    String::from_utf8_lossy(&got).replace('\n', ","),
                                    String::from_utf8_lossy(&want).replace('\n', ",")
                                ),
                            );
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// The target's ids and sorted leaves, sorted by id.
    fn target_leaves(&self, db: &str) -> Result<Sorted> {
        let mut sorter = ExternalSorter::new(self.options.sort_memory, None);
        self.block_on(self.client.each_leaves(db, 10_000, None, |id, revs| {
            if servers_own(db, id.as_bytes()) {
                return Ok(());
            }
            sorter
                .push(id.as_bytes(), revs.join("\n").as_bytes())
                .map_err(|e| Error::io("sorting document ids", e))
        }))?;
        sorter
            .finish()
            .map_err(|e| Error::io("sorting document ids", e))
    }
}

/// Records a document's leaves in the set the target must end up with.
/// What the target must hold once restored: every id's leaves, and how
/// many documents CouchDB counts as live and as deleted.
struct Expected {
    leaves: ExternalSorter,
    live: u64,
    deleted: u64,
}

fn expect(expected: &mut Expected, group: &Group) -> Result<()> {
    let mut revs = group.revs.clone();
    format::sort_revs(&mut revs);
    if group.live {
        expected.live += 1;
    } else {
        expected.deleted += 1;
    }
    expected
        .leaves
        .push(group.id.as_bytes(), revs.join("\n").as_bytes())
        .map_err(|e| Error::io("sorting document ids", e))
}

/// Ids per `_revs_diff` request.
const REVS_DIFF_IDS: usize = 1000;
/// Ids judged at once by the presence check (listed, then the rest asked).
const CHECK_ROUND_IDS: usize = 20_000;

/// A revision no database holds (a generation-1 revision's hash is the MD5
/// of its content; this one names nothing), asked for with the first id so
/// that `_revs_diff` must answer something.
const CANARY_REV: &str = "1-cafebabecafebabecafebabecafebabe";

fn count_revs(revs: &[u8]) -> u64 {
    revs.split(|&b| b == b'\n').count() as u64
}

/// `_security` objects are equal, an absent section counting as empty.
fn security_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    fn normal(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => serde_json::Value::Object(
                m.iter()
                    .filter(|(_, v)| !is_empty_section(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    fn is_empty_section(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.values().all(|x| match x {
                serde_json::Value::Array(a) => a.is_empty(),
                _ => false,
            }),
            _ => false,
        }
    }
    normal(a) == normal(b)
}

/// Keeps the first few examples.
fn note(examples: &mut Vec<String>, example: String) {
    if examples.len() < 5 {
        examples.push(example);
    }
}

fn is_unsupported(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
    )
}

/// Reads attachments.bin alongside docs.ndjson (both sorted by id).
struct AttachmentCursor {
    lines: Lines<BufReader<PipeReader>>,
    pending: Option<AttHeader>,
    name: String,
    line: Vec<u8>,
}

impl AttachmentCursor {
    /// The attachment data of document `id`, by (name, revpos, digest).
    fn take(&mut self, id: &str) -> Result<HashMap<(String, u64, String), Vec<u8>>> {
        let mut found = HashMap::new();
        loop {
            let header = match self.pending.take() {
                Some(h) => h,
                None => {
                    if !self
                        .lines
                        .next_into(&mut self.line)
                        .map_err(|e| Error::corrupt(self.name.clone(), e.to_string()))?
                    {
                        return Ok(found);
                    }
                    serde_json::from_slice::<AttHeader>(&self.line).map_err(|e| {
                        Error::corrupt(self.name.clone(), format!("bad record header: {e}"))
                    })?
                }
            };
            match header.id.as_bytes().cmp(id.as_bytes()) {
                std::cmp::Ordering::Greater => {
                    self.pending = Some(header);
                    return Ok(found);
                }
                order => {
                    let mut data = Vec::new();
                    self.lines
                        .read_blob(header.len, &mut data)
                        .map_err(|e| Error::corrupt(self.name.clone(), e.to_string()))?;
                    if order == std::cmp::Ordering::Equal {
                        found.insert((header.name, header.revpos, header.digest), data);
                    }
                }
            }
        }
    }
}

/// Groups documents into `_bulk_docs` batches and keeps a few in flight.
struct Batcher<'a> {
    driver: &'a Driver,
    db: String,
    max_docs: usize,
    docs: Vec<Bytes>,
    bytes: usize,
    in_flight: VecDeque<JoinHandle<Result<BatchOutcome>>>,
}

impl<'a> Batcher<'a> {
    fn new(driver: &'a Driver, db: &str) -> Self {
        Batcher {
            driver,
            db: db.to_string(),
            max_docs: driver.options.batch_docs.max(1),
            docs: Vec::new(),
            bytes: 0,
            in_flight: VecDeque::new(),
        }
    }

    /// Adds one document's leaves (kept in one batch).
    fn add(&mut self, leaves: Vec<Bytes>, report: &mut DbRestoreReport) -> Result<()> {
        let len: usize = leaves.iter().map(Bytes::len).sum();
        if !self.docs.is_empty()
            && (self.docs.len() + leaves.len() > self.max_docs
                || self.bytes + len > self.driver.options.batch_bytes)
        {
            self.flush(report)?;
        }
        self.bytes += len;
        self.docs.extend(leaves);
        Ok(())
    }

    fn flush(&mut self, report: &mut DbRestoreReport) -> Result<()> {
        if self.docs.is_empty() {
            return Ok(());
        }
        let docs = std::mem::take(&mut self.docs);
        self.driver.progress.written(self.bytes as u64);
        self.bytes = 0;
        while self.in_flight.len() >= self.driver.options.requests.max(1) {
            self.collect_one(report)?;
        }
        let task = self.driver.runtime.spawn(bulk_docs(
            Arc::clone(&self.driver.client),
            self.db.clone(),
            docs,
        ));
        self.in_flight.push_back(task);
        Ok(())
    }

    fn collect_one(&mut self, report: &mut DbRestoreReport) -> Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            let outcome = self
                .driver
                .block_on(task)
                .map_err(|e| Error::Bug(format!("upload task failed: {e}")))??;
            report.batches += outcome.requests;
            report.splits += outcome.splits;
            report.rejected += outcome.rejected.len() as u64;
            for r in outcome.rejected {
                note(&mut report.rejections, r);
            }
        }
        Ok(())
    }

    fn finish(mut self, report: &mut DbRestoreReport) -> Result<()> {
        self.flush(report)?;
        while !self.in_flight.is_empty() {
            self.collect_one(report)?;
        }
        Ok(())
    }
}

/// Sends documents with `new_edits:false`; splits a batch the server finds
/// too large.
async fn bulk_docs(client: Arc<CouchClient>, db: String, docs: Vec<Bytes>) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut queue = vec![docs];
    let path = format!("{}/_bulk_docs", db_path(&db));
    while let Some(docs) = queue.pop() {
        let mut body = Vec::with_capacity(docs.iter().map(Bytes::len).sum::<usize>() + 64);
        body.extend_from_slice(b"{\"new_edits\":false,\"docs\":[");
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(d);
        }
        body.extend_from_slice(b"]}");
        let r = client
            .request(Method::POST, &path, Some(Body::json(body)))
            .await?;
        outcome.requests += 1;
        match r.status {
            StatusCode::PAYLOAD_TOO_LARGE if docs.len() > 1 => {
                outcome.splits += 1;
                let mut docs = docs;
                let back = docs.split_off(docs.len() / 2);
                queue.push(back);
                queue.push(docs);
            }
            s if s.is_success() => {
                #[derive(Deserialize)]
                struct Answer {
                    #[serde(default)]
                    id: Option<String>,
                    #[serde(default)]
                    error: Option<String>,
                    #[serde(default)]
                    reason: Option<String>,
                }
                let answers: Vec<Answer> = r.json(&client.url_of(&path), "_bulk_docs")?;
                for a in answers {
                    if let Some(error) = a.error {
                        outcome.rejected.push(format!(
                            "{}: {error} {}",
                            a.id.unwrap_or_default(),
                            a.reason.unwrap_or_default()
                        ));
                    }
                }
            }
            _ => {
                let first = docs
                    .first()
                    .and_then(|d| serde_json::from_slice::<IdOnly>(d).ok())
                    .map(|d| d.id)
                    .unwrap_or_default();
                let mut e = client.rejected(&path, "a batch of documents", &r);
                if let Error::Rejected { what, .. } = &mut e {
                    *what = format!("{} documents starting at {first:?}", docs.len());
                }
                return Err(e);
            }
        }
    }
    Ok(outcome)
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(rename = "_id")]
    id: String,
}
