//! `cairn stats`.

use std::process::ExitCode;

use clap::Args;

use crate::progress::human_bytes;
use crate::repo_args::RepoArgs;

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let report = args.repo.open().await?.stats().await?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("snapshots            {}", report.snapshots);
    println!(
        "logical bytes        {} (all snapshots' items, summed)",
        human_bytes(report.logical_bytes)
    );
    println!(
        "unique data          {} (uncompressed, what the snapshots need)",
        human_bytes(report.unique_bytes)
    );
    println!("stored bytes         {}", human_bytes(report.stored_bytes));
    println!("deduplication ratio  {:.1}x", report.dedup_ratio);
    println!(
        "unreferenced data    {} (uncompressed)",
        human_bytes(report.unreferenced_bytes)
    );
    println!(
        "reclaimable now      {} (whole packs; `cairn gc`)",
        human_bytes(report.reclaimable_bytes)
    );
    println!(
        "by repacking         {}",
        human_bytes(report.repackable_bytes)
    );
    if report.condemned_bytes > 0 {
        println!(
            "condemned, pending   {}",
            human_bytes(report.condemned_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
