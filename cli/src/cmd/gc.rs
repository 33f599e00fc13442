//! `cairn gc`: delete what no snapshot needs, safely beside running backups.

use std::process::ExitCode;
use std::time::Duration;

use cairn_store::ops::gc::GcOptions;
use cairn_store::plan::retention::parse_span;
use clap::Args;

use crate::progress::human_bytes;
use crate::repo_args::RepoArgs;
use crate::terminal::safe;

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
    /// Repack packs holding unreferenced data (emptiest first) until at most
    /// this percentage of the stored bytes is unreferenced, within --max-repack.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    max_unused: f64,
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
    for (flag, pct) in [
        ("--max-repack", args.max_repack),
        ("--max-unused", args.max_unused),
    ] {
        if !(0.0..=100.0).contains(&pct) {
            return Err(cairn_store::Error::invalid(format!(
                "{flag} takes a percentage between 0 and 100"
            ))
            .into());
        }
    }
    let repo = args.repo.open().await?;
    let options = GcOptions {
        dry_run: args.dry_run,
        grace: duration(&args.grace)?,
        max_repack_pct: args.max_repack,
        max_unused_pct: args.max_unused,
        lease_ttl: crate::pause::lease_ttl(),
        pauses: crate::pause::from_env(),
    };
    let report = repo.gc(&options).await?;
    // Damage met on the way (copies that do not check, objects that do not
    // parse) is reported, and the run exits with the damage code.
    let code = if report.found_damage() {
        ExitCode::from(crate::exit::DAMAGE)
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        super::print_json(&report)?;
        return Ok(code);
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
            safe(&w.reason)
        );
    }
    if let Some(left) = &report.unused_left {
        println!(
            "unreferenced data left: about {} in {} packs still partly live ({})",
            human_bytes(left.bytes),
            left.packs,
            left.hint
        );
    }
    for u in &report.unverified {
        println!(
            "damaged: pack {} does not hold {} live chunks an index says it holds \
             (chunk {}: {}); not counted as copies (run `cairn verify --read-data`)",
            u.pack.short(),
            u.blobs,
            u.example.short(),
            safe(&u.detail)
        );
    }
    for s in &report.skipped {
        println!("skipped {}: {}", safe(&s.object), safe(&s.detail));
    }
    Ok(code)
}
