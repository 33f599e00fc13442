//! `cairn restore`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cairn_store::format::manifest::Snapshot;
use cairn_store::plan::select::{Selector, SnapshotFilter, parse_time};
use cairn_store::repo::IndexedRepository;
use clap::Args;

use crate::progress::{Bar, human_bytes};
use crate::repo_args::{RepoArgs, TrustArgs};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["target", "stdout", "output"])))]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreArgs {
    #[command(subcommand)]
    into: Option<RestoreInto>,
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    pick: PickArgs,
    /// Restore only this item (and, for a directory, what is under it).
    #[arg(long, value_name = "NAME")]
    item: Option<String>,
    /// Restore into this directory (new or empty, unless --overwrite).
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Restore into an existing directory (a volume restored in place):
    /// files whose size and modification time already match are kept,
    /// everything else is replaced.
    #[arg(long, requires = "target")]
    overwrite: bool,
    /// With --overwrite: remove what the snapshot does not hold.
    #[arg(long, requires = "overwrite")]
    delete: bool,
    /// Restore owners by number only, never by user or group name.
    #[arg(long)]
    numeric_owner: bool,
    /// Write one file item's content to standard output.
    #[arg(long, conflicts_with = "json")]
    stdout: bool,
    /// Write one file item's content to this new file (never overwritten;
    /// removed again if the restore fails).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
enum RestoreInto {
    /// Restore CouchDB databases into a server, revisions intact.
    Couchdb(super::couch::CouchRestoreArgs),
}

/// Which snapshot.
#[derive(Debug, Args)]
pub struct PickArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// `latest`, a snapshot id or id prefix.
    #[arg(value_name = "SNAPSHOT", required_unless_present = "before")]
    snapshot: Option<String>,
    /// Instead of SNAPSHOT: the newest snapshot at or before this RFC 3339 time (with offset, e.g. 2026-11-20T23:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshot")]
    before: Option<String>,
    /// Only consider snapshots from this host.
    #[arg(long)]
    host: Option<String>,
    /// Only consider snapshots with this tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

impl PickArgs {
    /// Opens the repository and finds the snapshot.
    pub async fn pick(&self, repo: &RepoArgs) -> anyhow::Result<(IndexedRepository, Snapshot)> {
        let selector = match (&self.snapshot, &self.before) {
            (_, Some(t)) => Selector::Before(parse_time(t)?),
            (Some(s), None) => Selector::parse(s)?,
            (None, None) => {
                return Err(cairn_store::Error::invalid("name a SNAPSHOT (or `latest`)").into());
            }
        };
        let repo = repo.open().await?;
        let trust = repo.trust(&self.trust.keys);
        let list = repo.load_snapshots(&trust).await?;
        for (id, e) in &list.rejected {
            let why = e.to_string();
            eprintln!(
                "cairn: warning: snapshot {} not considered: {}",
                id.short(),
                crate::terminal::safe(&why)
            );
        }
        let filter = SnapshotFilter {
            host: self.host.clone(),
            tags: self.tags.clone(),
        };
        let snapshot = list.select(&selector, &filter)?.clone();
        Ok((repo.load_index().await?, snapshot))
    }
}

pub async fn run(mut args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if let Some(RestoreInto::Couchdb(couch)) = args.into.take() {
        return super::couch::restore(couch).await;
    }
    let (repo, snapshot) = args.pick.pick(&args.repo).await?;
    let started = Instant::now();

    if args.stdout || args.output.is_some() {
        let (name, entry) =
            cairn_store::ops::restore::find_file(&repo, &snapshot, args.item.as_deref()).await?;
        let bar = Bar::bytes(Some(entry.size), args.quiet || args.json);
        let result = match &args.output {
            None => {
                cairn_store::ops::restore::restore_entry_to(
                    &repo,
                    &snapshot,
                    &name,
                    &entry,
                    std::io::stdout(),
                    &bar,
                )
                .await
            }
            Some(path) => {
                let file = std::fs::File::create_new(path).map_err(|e| {
                    cairn_store::Error::io(
                        format!("creating {} (it must not exist)", path.display()),
                        e,
                    )
                })?;
                let result = cairn_store::ops::restore::restore_entry_to(
                    &repo, &snapshot, &name, &entry, file, &bar,
                )
                .await;
                if result.is_err() {
                    let _ = std::fs::remove_file(path);
                }
                result
            }
        };
        bar.finish();
        let bytes = result?;
        if args.json {
            super::print_json(&serde_json::json!({
                "snapshot": snapshot.id,
                "item": name,
                "bytes": bytes,
                "duration_secs": started.elapsed().as_secs_f64(),
            }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let target = args
        .target
        .clone()
        .context("--target or --stdout is required")?;
    let total = args.item.is_none().then(|| snapshot.manifest.total_len());
    let bar = Bar::bytes(total, args.quiet || args.json);
    let options = cairn_store::ops::restore::RestoreOptions {
        overwrite: args.overwrite,
        delete: args.delete,
        numeric_owner: args.numeric_owner,
    };
    let summary = repo
        .restore_to_dir_with(&snapshot, &target, args.item.as_deref(), &options, &bar)
        .await;
    bar.finish();
    let summary = summary?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_summary(
            &summary,
            &[
                ("snapshot", snapshot.id.to_hex().into()),
                ("duration_secs", seconds.into()),
            ],
        )?;
    } else {
        println!(
            "restored snapshot {} ({}) into {}: {} files, {} directories, {} symlinks, {} in {:.1} s",
            snapshot.id.short(),
            snapshot.manifest.time,
            target.display(),
            summary.files,
            summary.dirs,
            summary.symlinks,
            human_bytes(summary.bytes),
            seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
