//! `cairn diff`: what changed between two snapshots.

use std::process::ExitCode;
use std::sync::Arc;

use cairn_store::plan::select::{Selector, SnapshotFilter};
use clap::Args;

use crate::repo_args::{RepoArgs, TrustArgs};
use crate::terminal::safe;

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// The earlier snapshot: `latest`, an id or id prefix.
    #[arg(value_name = "A")]
    a: String,
    /// The later snapshot.
    #[arg(value_name = "B")]
    b: String,
    /// One JSON object per difference and a summary, one per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open().await?;
    let trust = repo.trust(&args.trust.keys);
    let list = repo.load_snapshots(&trust).await?;
    let filter = SnapshotFilter::default();
    let a = list.select(&Selector::parse(&args.a)?, &filter)?.clone();
    let b = list.select(&Selector::parse(&args.b)?, &filter)?.clone();
    let repo = repo.load_index().await?;
    let json = args.json;
    let mut failed = None;
    let mut print = |d: cairn_store::ops::diff::Difference| {
        let line = if json {
            serde_json::to_string(&d).map_err(anyhow::Error::from)
        } else {
            Ok(format!("{} {}", d.change.mark(), safe(&d.path)))
        };
        match line {
            Ok(l) => println!("{l}"),
            Err(e) => failed = Some(e),
        }
    };
    let summary =
        cairn_store::ops::diff::diff(Arc::new(repo.blob_reader()), &a, &b, &mut print).await?;
    if let Some(e) = failed {
        return Err(e);
    }
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "{} added, {} removed, {} modified, {} metadata only, {} changed kind ({} unchanged directories not read)",
            summary.added,
            summary.removed,
            summary.modified,
            summary.metadata,
            summary.type_changed,
            summary.same_subtrees
        );
    }
    Ok(ExitCode::SUCCESS)
}
