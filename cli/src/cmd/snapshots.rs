//! `cairn snapshots`.

use std::process::ExitCode;

use cairn_store::plan::select::SnapshotFilter;
use clap::Args;

use crate::progress::human_bytes;
use crate::repo_args::{RepoArgs, TrustArgs};
use crate::terminal::safe;

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Only snapshots from this host.
    #[arg(long)]
    host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Print JSON: an array, oldest first, with every item.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open().await?;
    let trust = repo.trust(&args.trust.keys);
    let list = repo.load_snapshots(&trust).await?;
    for (id, e) in &list.rejected {
        let why = e.to_string();
        eprintln!(
            "cairn: warning: snapshot {} skipped: {}",
            id.short(),
            safe(&why)
        );
    }
    if !list.rejected.is_empty() {
        eprintln!(
            "cairn: {} snapshot{} refused; `cairn verify` tells more",
            list.rejected.len(),
            if list.rejected.len() == 1 { "" } else { "s" }
        );
    }
    let filter = SnapshotFilter {
        host: args.host,
        tags: args.tags,
    };
    let shown: Vec<_> = list
        .snapshots
        .iter()
        .filter(|s| filter.matches(s))
        .collect();
    // No usable snapshot at all because snapshots were refused is damage
    // (or forgery), not an empty repository.
    let code = match (list.snapshots.is_empty(), list.rejected.is_empty()) {
        (true, false) => ExitCode::from(crate::exit::code_for(list.none_usable().kind())),
        _ => ExitCode::SUCCESS,
    };
    if args.json {
        let values: Vec<serde_json::Value> = shown
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(&s.manifest).unwrap_or_default();
                v["id"] = s.id.to_hex().into();
                v["signer"] = s.signer.to_string().into();
                v["total_len"] = s.manifest.total_len().into();
                v
            })
            .collect();
        super::print_json(&values)?;
        return Ok(code);
    }
    println!(
        "{:<10} {:<20} {:<16} {:>7} {:>10}  TAGS",
        "ID", "TIME (UTC)", "HOST", "ENTRIES", "SIZE"
    );
    for s in &shown {
        let m = &s.manifest;
        println!(
            "{:<10} {:<20} {:<16} {:>7} {:>10}  {}",
            s.id.short(),
            m.time.strftime("%Y-%m-%d %H:%M:%S"),
            safe(&m.host),
            m.entry_count(),
            human_bytes(m.total_len()),
            safe(&m.tags.join(","))
        );
    }
    println!("{} snapshots", shown.len());
    Ok(code)
}
