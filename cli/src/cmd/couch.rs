//! `cairn backup couchdb` and `cairn restore couchdb`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_couch::restore::CouchRestoreOptions;
use cairn_couch::{CouchBackupOptions, CouchClient, CouchTarget, DbSelection, RetryPolicy};
use clap::Args;

use super::backup::WriteArgs;
use super::restore::PickArgs;
use crate::progress::{Bar, human_bytes};
use crate::repo_args::RepoArgs;

/// The server and how to talk to it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The CouchDB server, e.g. http://HOST:5984 (credentials may be in it:
    /// http://USER:PASSWORD@HOST:5984; else --netrc, else COUCHDB_USER and
    /// COUCHDB_PASSWORD). Credentials are never printed nor stored.
    #[arg(long, env = "COUCHDB_URL", value_name = "URL")]
    url: Option<String>,
    /// A netrc-style file with the credentials (`machine HOST login USER password PASSWORD`).
    #[arg(long, value_name = "FILE")]
    netrc: Option<PathBuf>,
    /// Requests in flight per database.
    #[arg(long, default_value_t = 4, value_name = "N")]
    requests: usize,
    /// Attempts per request; transient failures (5xx, 429, timeouts, dropped
    /// connections) are retried with exponential backoff.
    #[arg(long, default_value_t = 7, value_name = "N")]
    attempts: u32,
    /// Give up on one request after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    request_timeout: u64,
}

impl ServerArgs {
    async fn connect(&self) -> anyhow::Result<Arc<CouchClient>> {
        let Some(url) = &self.url else {
            return Err(cairn_store::Error::invalid("--url is required").into());
        };
        let netrc =
            match &self.netrc {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    cairn_store::Error::io(format!("reading {}", path.display()), e)
                })?),
                None => None,
            };
        let env = match (
            std::env::var("COUCHDB_USER"),
            std::env::var("COUCHDB_PASSWORD"),
        ) {
            (Ok(user), Ok(password)) => Some((user, password)),
            _ => None,
        };
        let target = CouchTarget::parse(url, netrc.as_deref(), env)?;
        let retry = RetryPolicy {
            attempts: self.attempts.max(1),
            timeout: Duration::from_secs(self.request_timeout.max(1)),
            ..RetryPolicy::default()
        };
        Ok(Arc::new(CouchClient::connect(target, retry).await?))
    }
}

#[derive(Debug, Args)]
pub struct CouchBackupArgs {
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// A database to back up (repeatable).
    #[arg(long = "db", value_name = "NAME")]
    dbs: Vec<String>,
    /// Every database on the server (with --exclude to leave some out),
    /// `_users` and `_replicator` included; `_global_changes`, `_dbs` and
    /// `_nodes` (logs and a node's own metadata) only when named with --db.
    #[arg(long, conflicts_with = "dbs")]
    all_dbs: bool,
    /// Names per `_all_dbs` request.
    #[arg(long, default_value_t = 1000, value_name = "N", hide = true)]
    dbs_page: usize,
    /// With --all-dbs: a database to leave out (repeatable).
    #[arg(long, value_name = "NAME", requires = "all_dbs")]
    exclude: Vec<String>,
    /// Databases fetched at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    jobs: usize,
    /// Fetch every document again and write each database's dump anew
    /// (instead of the previous one plus an overlay of what changed).
    #[arg(long)]
    full: bool,
    /// Import `_all_docs?include_docs=true` dump files (or directories of
    /// them, one `DB.json` per database) instead of reading a server.
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with_all = ["url", "dbs", "all_dbs"])]
    import: Vec<PathBuf>,
}

pub async fn backup(args: CouchBackupArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (session, key, options) = args.write.begin().await?;
    let bar = Bar::bytes(None, args.write.quiet || args.write.json);
    let result = if !args.import.is_empty() {
        cairn_couch::import_couchdb_dumps(
            &session,
            &args.import,
            &key,
            &options,
            Arc::new(bar.clone()),
        )
        .await
    } else {
        let dbs = if args.all_dbs {
            DbSelection::All {
                exclude: args.exclude.clone(),
            }
        } else if args.dbs.is_empty() {
            bar.finish();
            let _ = session.finish().await;
            return Err(cairn_store::Error::invalid(
                "name the databases with --db NAME, or give --all-dbs",
            )
            .into());
        } else {
            DbSelection::Named(args.dbs.clone())
        };
        let couch = CouchBackupOptions {
            dbs,
            jobs: args.jobs.max(1),
            requests: args.server.requests.max(1),
            full: args.full,
            dbs_page: args.dbs_page.max(2),
            ..CouchBackupOptions::default()
        };
        match args.server.connect().await {
            Ok(client) => {
                cairn_couch::backup_couchdb(
                    &session,
                    client,
                    &couch,
                    &key,
                    &options,
                    Arc::new(bar.clone()),
                )
                .await
            }
            Err(e) => {
                bar.finish();
                let _ = session.finish().await;
                return Err(e);
            }
        }
    };
    bar.finish();
    let released = session.finish().await;
    let summary = result?;
    released?;
    let seconds = started.elapsed().as_secs_f64();
    if args.write.json {
        super::print_summary(&summary, &[("duration_secs", seconds.into())])?;
        return Ok(ExitCode::SUCCESS);
    }
    for db in &summary.databases {
        let c = &db.counts;
        println!(
            "{}: {} documents ({} leaves, {} deleted, {} conflicted), {} design, {} local, \
             {} attachments ({}); fetched {} leaves and {} attachments, reused {} and {}",
            db.db,
            c.docs,
            c.doc_leaves,
            c.deleted_leaves,
            c.conflicted_docs,
            c.design_leaves,
            c.local_docs,
            c.attachments,
            human_bytes(c.attachment_bytes),
            db.fetched_leaves,
            db.fetched_attachments,
            db.reused_leaves,
            db.reused_attachments,
        );
    }
    if !summary.appeared.is_empty() {
        println!("new since the last backup: {}", summary.appeared.join(", "));
    }
    if !summary.vanished.is_empty() {
        println!(
            "no longer listed by the server (kept in earlier snapshots): {}",
            summary.vanished.join(", ")
        );
    }
    let b = &summary.backup;
    println!(
        "snapshot {} saved: {} databases, {} read, {} new, {} stored, {} requests, in {:.1} s",
        b.snapshot.short(),
        summary.databases.len(),
        human_bytes(b.bytes_read),
        human_bytes(b.new_blob_bytes),
        human_bytes(b.stored_bytes),
        summary.requests,
        seconds,
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CouchRestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    pick: PickArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// A database to restore, optionally under another name (repeatable):
    /// `--db lms` or `--db lms:lms_restored`.
    #[arg(long = "db", value_name = "NAME[:TARGET]")]
    dbs: Vec<String>,
    /// Every database in the snapshot except `_replicator` (name that one
    /// with --db: restoring it starts its replications).
    #[arg(long, conflicts_with = "dbs")]
    all_dbs: bool,
    /// Add the snapshot's revisions to non-empty databases (else refused;
    /// this may create conflicts with what is there).
    #[arg(long)]
    merge: bool,
    /// Shards of each database created (default: as many as the backed-up
    /// database had, `cluster.q`).
    #[arg(long, value_name = "Q", value_parser = clap::value_parser!(u64).range(1..))]
    q: Option<u64>,
    /// Replicas of each shard of a database created (default: as many as
    /// the backed-up database had, `cluster.n`, where the target has that
    /// many nodes; else the target's default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    n: Option<u64>,
    /// How each restored database is checked: `present` confirms every
    /// leaf of the snapshot on the target (one live leaf seen as the
    /// winner in `_all_docs`, the others asked for with `_revs_diff`) and
    /// compares its document counts; `leaves` lists the target's every id and leaf and
    /// compares them (also finds leaves others added meanwhile; slower,
    /// on pouchdb-server slower than the restore itself).
    #[arg(long, value_enum, default_value_t = CheckArg::Present)]
    check: CheckArg,
    /// Documents per `_bulk_docs` request.
    #[arg(long, default_value_t = 500, value_name = "N")]
    batch_docs: usize,
    /// Bytes per `_bulk_docs` request (a larger document goes alone).
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    batch_bytes: usize,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// `--check`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckArg {
    Present,
    Leaves,
}

/// `NAME` or `NAME:TARGET`.
fn mapping(arg: &str) -> (String, String) {
    match arg.split_once(':') {
        Some((source, target)) if !target.is_empty() => (source.to_string(), target.to_string()),
        _ => (arg.to_string(), arg.to_string()),
    }
}

pub async fn restore(args: CouchRestoreArgs) -> anyhow::Result<ExitCode> {
    if args.dbs.is_empty() && !args.all_dbs {
        return Err(cairn_store::Error::invalid(
            "name the databases with --db NAME[:TARGET], or give --all-dbs",
        )
        .into());
    }
    let started = Instant::now();
    let (repo, snapshot) = args.pick.pick(&args.repo).await?;
    let client = args.server.connect().await?;
    let options = CouchRestoreOptions {
        dbs: args.dbs.iter().map(|d| mapping(d)).collect(),
        merge: args.merge,
        batch_docs: args.batch_docs.max(1),
        batch_bytes: args.batch_bytes.max(1024),
        requests: args.server.requests.max(1),
        q: args.q,
        n: args.n,
        check: match args.check {
            CheckArg::Present => cairn_couch::restore::Check::Present,
            CheckArg::Leaves => cairn_couch::restore::Check::Leaves,
        },
        ..CouchRestoreOptions::default()
    };
    let bar = Bar::bytes(None, args.quiet || args.json);
    let report =
        cairn_couch::restore_couchdb(&repo, &snapshot, client, &options, Arc::new(bar.clone()))
            .await;
    bar.finish();
    let report = report?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_summary(
            &report,
            &[
                ("clean", report.is_clean().into()),
                ("duration_secs", seconds.into()),
            ],
        )?;
    } else {
        for db in &report.databases {
            let c = &db.comparison;
            println!(
                "{} → {}{}{}: {} leaves and {} design sent in {} requests, {} attachments, \
                 {} local ({} checkpoints skipped); target has {} of {} documents, \
                 {} missing, {} extra, _security {}",
                db.source,
                db.target,
                match (&db.shape, db.created) {
                    (Some(shape), true) =>
                        format!(" (created{})", shape.query().replace(['?', '&'], " ")),
                    (None, true) => " (created)".to_string(),
                    _ => String::new(),
                },
                if db.resumed { " (resumed)" } else { "" },
                db.leaves_sent,
                db.design_sent,
                db.batches,
                db.attachments,
                db.local_written,
                db.checkpoints_skipped,
                c.ids - c.missing,
                c.ids,
                c.missing,
                c.extra,
                if c.security_matches {
                    "matches"
                } else {
                    "DIFFERS"
                },
            );
        }
        println!(
            "restored snapshot {} ({}) in {:.1} s, {} requests",
            &report.snapshot[..12.min(report.snapshot.len())],
            snapshot.manifest.time,
            seconds,
            report.requests
        );
    }
    match report.mismatch() {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}
