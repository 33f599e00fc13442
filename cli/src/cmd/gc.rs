//! `cairn gc`: delete what no snapshot needs, safely beside running backups.

use std::process::ExitCode;
use std::time::Duration;

use cairn_store::ops::gc::GcOptions;
use cairn_store::retention::parse_span;
use clap::Args;

use crate::progress::human_bytes;
use crate::repo_args::RepoArgs;

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Show what would be condemned and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repack at most this percentage of the repository's bytes per run.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    max_repack: f64,
    /// Delete condemned packs only this long after they were condemned (store clock).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    grace: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn duration(s: &str) -> anyhow::Result<Duration> {
    let span = parse_span(s)?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| cairn_store::Error::invalid(format!("--grace {s:?}: {e}")))?;
    Ok(Duration::try_from(d)
        .map_err(|e| cairn_store::Error::invalid(format!("--grace {s:?}: {e}")))?)
}

pub async fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=100.0).contains(&args.max_repack) {
        return Err(cairn_store::Error::invalid(
            "--max-repack takes a percentage between 0 and 100",
        )
        .into());
    }
    let repo = args.repo.open().await?;
    let options = GcOptions {
        dry_run: args.dry_run,
        grace: duration(&args.grace)?,
        max_repack_pct: args.max_repack,
        lease_ttl: crate::pause::lease_ttl(),
        pauses: crate::pause::from_env(),
    };
    let report = repo.gc(&options).await?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "gc {}{}: {} snapshots; {} packs ({}); live {}, unreferenced {}",
        report.run,
        if report.dry_run { " (dry run)" } else { "" },
        report.snapshots,
        report.packs,
        human_bytes(report.pack_bytes),
        human_bytes(report.live_bytes),
        human_bytes(report.dead_bytes),
    );
    let condemned: u64 = report.condemned.iter().map(|c| c.len).sum();
    println!(
        "{} {} packs ({}){}",
        if report.dry_run {
            "would condemn"
        } else {
            "condemned"
        },
        report.condemned.len(),
        human_bytes(condemned),
        if report.repacked_into > 0 {
            format!(
                ", their live data repacked into {} new packs",
                report.repacked_into
            )
        } else {
            String::new()
        }
    );
    println!(
        "deleted {} packs ({}) and replaced {} index objects",
        report.deleted_packs,
        human_bytes(report.deleted_bytes),
        report.deleted_index
    );
    for (pack, blob) in &report.rescued {
        println!(
            "kept condemned pack {} after all: it holds live chunk {}",
            pack.short(),
            blob.short()
        );
    }
    for w in &report.waiting {
        println!(
            "waiting: {} packs ({}) condemned by run {}: {}",
            w.packs,
            human_bytes(w.bytes),
            w.run,
            w.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
