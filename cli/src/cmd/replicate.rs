//! `cairn replicate`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_store::backend::{Backend, BackendOptions};
use cairn_store::format::key::PublicKey;
use cairn_store::ops::forget::ForgetOptions;
use cairn_store::ops::replicate::{ReplicateOptions, Selection};
use cairn_store::plan::retention::{ForgetPolicy, GroupBy};
use cairn_store::plan::select::{SnapshotFilter, parse_time};
use cairn_store::repo::Repository;
use clap::Args;

use crate::progress::{Bar, human_bytes};

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The repository to copy from: a path, file://PATH or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The repository to copy to (created as a replica when empty).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Accept only snapshots signed by this key (repeatable; else the
    /// destination's trusted keys; creating a replica without it trusts the
    /// source's keys, and is refused if a source snapshot is signed by
    /// another). Snapshots that fail their checks are skipped and reported
    /// unless named.
    #[arg(long = "trust", value_name = "PUBKEY", value_delimiter = ',')]
    trust: Vec<PublicKey>,
    /// Copy only the newest N snapshots of each host and tag set (each
    /// `cairn run` source).
    #[arg(long, value_name = "N", conflicts_with_all = ["since", "snapshots"])]
    latest: Option<usize>,
    /// Copy only snapshots at or after this time (RFC 3339 with offset).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshots")]
    since: Option<String>,
    /// Snapshots to copy (ids or prefixes); default: all.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Then keep only the newest N snapshots of each host and tag set (each
    /// `cairn run` source) at the destination (forget there; run `cairn gc
    /// --repo DEST` to free the space).
    #[arg(long, value_name = "N", conflicts_with = "append_only")]
    keep_last: Option<u32>,
    /// Write the destination append-only: create objects, never overwrite
    /// or delete one (leases expire instead of being removed). For a
    /// credential that may not delete or overwrite, such as the offsite
    /// bucket's on node4 (deploy/s3/).
    #[arg(long)]
    append_only: bool,
    /// Re-read every copied pack, and every selected snapshot's manifest,
    /// at the destination.
    #[arg(long)]
    verify: bool,
    /// Refuse (exit 18) when the source's newest snapshot is older than
    /// this (e.g. 36h, 2d).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Packs copied at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    concurrency: usize,
    /// S3 endpoint for S3-compatible stores (else AWS_ENDPOINT_URL).
    #[arg(long, env = "CAIRN_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Write Prometheus metrics of this run to this file (atomically, for
    /// node_exporter's textfile collector), whether it succeeds or fails:
    /// success, exit code, time, duration and the destination's newest
    /// snapshot, labelled `replica="NAME"` (--metrics-name).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<std::path::PathBuf>,
    /// The `replica` label of those metrics.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "pull",
        requires = "metrics_file"
    )]
    metrics_name: String,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn connect(url: &str, endpoint: &Option<String>, create: bool) -> cairn_store::Result<Backend> {
    let options = BackendOptions {
        s3_endpoint: endpoint.clone(),
        retry_timeout: Duration::from_secs(60),
        ..BackendOptions::default()
    };
    Backend::connect(url, &options, create)
}

pub async fn run(args: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let outcome = copy(&args, started).await;
    if let Some(path) = &args.metrics_file {
        let code = match &outcome {
            Ok(_) => crate::exit::OK,
            Err(e) => crate::exit::store_error(e)
                .map_or(crate::exit::INTERNAL, |s| crate::exit::code_for(s.kind())),
        };
        // The run's own time, not the listing read for the metrics.
        let seconds = started.elapsed().as_secs_f64();
        let newest = newest_at(&args).await;
        let samples = crate::metrics::replica_samples(&args.metrics_name, code, seconds, newest);
        if let Err(e) = crate::metrics::write_textfile(path, &samples) {
            let e = anyhow::Error::new(e)
                .context(format!("writing the metrics file {}", path.display()));
            return match outcome {
                Ok(_) => Err(e),
                Err(first) => {
                    eprintln!("cairn: warning: {e:#}");
                    Err(first)
                }
            };
        }
    }
    outcome
}

/// The time of the destination's newest verified snapshot, if it can be read.
async fn newest_at(args: &ReplicateArgs) -> Option<f64> {
    let repo = Repository::open(connect(&args.to, &args.s3_endpoint, false).ok()?)
        .await
        .ok()?;
    let trust = repo.trust(&args.trust);
    let list = repo.load_snapshots(&trust).await.ok()?;
    let newest = list.snapshots.last()?;
    Some(newest.manifest.time.as_millisecond() as f64 / 1000.0)
}

async fn copy(args: &ReplicateArgs, started: Instant) -> anyhow::Result<ExitCode> {
    let selection = match (&args.latest, &args.since) {
        (Some(n), _) => Selection::Latest(*n),
        (None, Some(t)) => Selection::Since(parse_time(t)?),
        (None, None) if !args.snapshots.is_empty() => Selection::Ids(args.snapshots.clone()),
        (None, None) => Selection::All,
    };
    let max_age = args
        .max_age
        .as_deref()
        .map(|s| {
            let span = cairn_store::plan::retention::parse_span(s)?;
            jiff::SignedDuration::try_from(span).map_err(|e| {
                cairn_store::Error::invalid(format!(
                    "--max-age {s}: {e}; use hours or days (36h, 2d)"
                ))
            })
        })
        .transpose()?;
    let source = Repository::open(connect(&args.from, &args.s3_endpoint, false)?).await?;
    let mut destination = connect(&args.to, &args.s3_endpoint, true)?;
    if args.append_only {
        destination = destination.append_only();
    }
    let bar = Bar::bytes(None, args.quiet || args.json);
    let options = ReplicateOptions {
        selection,
        trust: args.trust.clone(),
        concurrency: args.concurrency.max(1),
        verify: args.verify,
        max_age,
        progress: std::sync::Arc::new(bar.clone()),
    };
    let report = source.replicate(destination.clone(), &options).await;
    bar.finish();
    let report = report?;
    for r in &report.refused {
        eprintln!(
            "cairn: warning: snapshot {} at the source not copied: {}",
            r.id.short(),
            crate::terminal::safe(&r.reason)
        );
    }
    let mut forgotten = 0u64;
    if let Some(n) = args.keep_last {
        let dest = Repository::open(destination).await?;
        let trust = dest.trust(&args.trust);
        let forget = ForgetOptions {
            policy: Some(ForgetPolicy {
                last: Some(n),
                hourly: None,
                daily: None,
                weekly: None,
                monthly: None,
                yearly: None,
                within: None,
                tags: Vec::new(),
                group_by: GroupBy::parse("host,tags")?,
                max_lag: None,
            }),
            ids: Vec::new(),
            filter: SnapshotFilter::default(),
            dry_run: false,
            force: true,
        };
        forgotten = dest.forget(&trust, &forget).await?.removed;
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_summary(
            &report,
            &[
                ("forgotten", forgotten.into()),
                ("duration_secs", seconds.into()),
            ],
        )?;
    } else {
        println!(
            "{}{} snapshots copied ({} already there), {} packs sent ({}), {} skipped ({} packs already there), {} chunks checked{}, {forgotten} forgotten at the destination, in {seconds:.1} s",
            if report.initialised {
                "replica created; "
            } else {
                ""
            },
            report.snapshots_copied.len(),
            report.snapshots_present,
            report.packs_copied,
            human_bytes(report.bytes_sent),
            human_bytes(report.bytes_skipped),
            report.packs_present,
            report.blobs_checked,
            if args.verify {
                format!(", {} packs re-read", report.packs_verified)
            } else {
                String::new()
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}
