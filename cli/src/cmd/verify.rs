//! `cairn verify`: exit 0 when clean, 3 when damage was found, and the code
//! of the failure (4 unreachable, 5 no repository, ...) when the check could
//! not be done. Damage to objects no snapshot depends on alone (a garbage
//! copy of chunks that have a good copy elsewhere, the index object naming
//! it) is damage too, and is said to affect no snapshot.

use std::process::ExitCode;

use cairn_store::ops::verify::{ReadData, VerifyOptions};
use clap::Args;

use crate::terminal::safe;

use crate::exit;
use crate::progress::human_bytes;
use crate::repo_args::{RepoArgs, TrustArgs};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Read every pack and re-hash every chunk.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read a random PCT percent of the packs.
    #[arg(long, value_name = "PCT")]
    read_data_subset: Option<f64>,
    /// Packs read at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let read_data = match (args.read_data, args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(p)) if (0.0..=100.0).contains(&p) => ReadData::Subset(p),
        (false, Some(p)) => {
            return Err(cairn_store::Error::invalid(format!(
                "--read-data-subset {p}: give a percentage between 0 and 100"
            ))
            .into());
        }
        (false, None) => ReadData::None,
    };
    let options = VerifyOptions {
        read_data,
        concurrency: args.concurrency,
    };
    let report = match check(&args, &options).await {
        Ok(r) => r,
        Err(e) => {
            let why = e.to_string();
            eprintln!("cairn: could not check the repository: {}", safe(&why));
            return Ok(ExitCode::from(exit::code_for(e.kind())));
        }
    };
    if args.json {
        super::print_summary(&report, &[("clean", report.is_clean().into())])?;
    } else {
        for p in &report.problems {
            println!("problem: {}: {}", safe(&p.object), safe(&p.detail));
        }
        for s in &report.damaged_snapshots {
            let when = s.time.map(|t| format!(" ({t})")).unwrap_or_default();
            println!("damaged snapshot {}{when}", s.id);
            if let Some(reason) = &s.reason {
                println!("  {}", safe(reason));
            }
            for item in &s.items {
                println!("  item {}:", safe(&item.name));
                for p in &item.problems {
                    println!("    {}", safe(p));
                }
            }
        }
        println!(
            "{} snapshots ({} intact, {} damaged), {} packs, {} read, {} chunks hashed{}",
            report.snapshots,
            report.snapshots_intact,
            report.damaged_snapshots.len(),
            report.packs,
            human_bytes(report.bytes_read),
            report.blobs_checked,
            if report.unindexed_packs > 0 {
                format!(
                    ", {} unreferenced packs (left by interrupted backups; harmless)",
                    report.unindexed_packs
                )
            } else {
                String::new()
            }
        );
        println!(
            "{}",
            if report.is_clean() {
                "no damage found"
            } else if report.damaged_snapshots.is_empty() {
                // A damaged or forged copy, or the index object naming it:
                // every chunk a snapshot needs still has a good copy.
                "DAMAGE FOUND in repository objects (above); no snapshot is affected"
            } else {
                "DAMAGE FOUND"
            }
        );
    }
    Ok(ExitCode::from(if report.is_clean() {
        exit::OK
    } else {
        exit::DAMAGE
    }))
}

async fn check(
    args: &VerifyArgs,
    options: &VerifyOptions,
) -> cairn_store::Result<cairn_store::ops::verify::VerifyReport> {
    let repo = args.repo.open().await?;
    let trust = repo.trust(&args.trust.keys);
    repo.verify_with(&trust, options, &[&cairn_couch::verify::CouchCheck])
        .await
}
