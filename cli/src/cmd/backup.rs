//! `cairn backup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use cairn_store::key::SecretKey;
use cairn_store::ops::backup::BackupOptions;
use cairn_store::ops::select::parse_time;
use cairn_store::ops::source::Source;
use cairn_store::session::WriteOptions;
use clap::Args;

use crate::progress::{Bar, human_bytes, rate};
use crate::repo_args::RepoArgs;

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Secret key file that signs the snapshot.
    #[arg(long, env = "CAIRN_KEY_FILE", value_name = "FILE")]
    key: PathBuf,
    /// Item name for `-` (default "stdin") or --command (default "command").
    #[arg(long)]
    name: Option<String>,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Host name to record (default: this machine's; set it in containers, whose names change).
    #[arg(long, env = "CAIRN_HOST")]
    host: Option<String>,
    /// The snapshot's time (RFC 3339 with offset; default: now). For importing
    /// old dumps under the date they were made.
    #[arg(long, value_name = "TIME")]
    time: Option<String>,
    /// Back up the standard output of this shell command; a non-zero exit writes no snapshot.
    #[arg(long, value_name = "CMD", conflicts_with = "paths")]
    command: Option<String>,
    /// Files or directories to back up, or `-` for standard input.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Packs uploaded at once (each holds up to 4 MiB in memory; raise it for S3).
    #[arg(long, default_value_t = 2)]
    upload_concurrency: usize,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn source(args: &BackupArgs) -> anyhow::Result<Source> {
    let stdin = args.paths.len() == 1 && args.paths[0].as_os_str() == "-";
    Ok(match (&args.command, stdin) {
        (Some(command), _) => Source::Command {
            command: command.clone(),
            name: args.name.clone().unwrap_or_else(|| "command".into()),
        },
        (None, true) => Source::Stdin {
            name: args.name.clone().unwrap_or_else(|| "stdin".into()),
        },
        (None, false) => {
            if args.name.is_some() {
                bail!(cairn_store::Error::invalid(
                    "--name applies to `-` and --command; files keep their own names"
                ));
            }
            if args.paths.iter().any(|p| p.as_os_str() == "-") {
                bail!(cairn_store::Error::invalid(
                    "`-` (standard input) cannot be mixed with paths"
                ));
            }
            Source::Paths(args.paths.clone())
        }
    })
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let source = source(&args)?;
    let key = SecretKey::read_file(&args.key)?;
    let time = args.time.as_deref().map(parse_time).transpose()?;
    let session = args
        .repo
        .open()
        .await?
        .begin_write(&WriteOptions {
            kind: "backup",
            lease_ttl: crate::pause::lease_ttl(),
            pauses: crate::pause::from_env(),
        })
        .await?;
    let options = BackupOptions {
        host: args.host.clone().unwrap_or_else(cairn_store::ops::hostname),
        tags: args.tags.clone(),
        time,
        upload_concurrency: args.upload_concurrency,
    };
    let started = Instant::now();
    let bar = Bar::bytes(None, args.quiet || args.json);
    let summary = session
        .backup(source, &key, &options, Arc::new(bar.clone()))
        .await;
    bar.finish();
    let released = session.finish().await;
    let summary = summary?;
    released?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        super::print_summary(&summary, &[("duration_secs", seconds.into())])?;
    } else {
        println!(
            "snapshot {} saved: {} items, {} read, {} new, {} stored, in {:.1} s ({})",
            summary.snapshot.short(),
            summary.items,
            human_bytes(summary.bytes_read),
            human_bytes(summary.new_blob_bytes),
            human_bytes(summary.stored_bytes),
            seconds,
            rate(summary.bytes_read, seconds),
        );
    }
    Ok(ExitCode::SUCCESS)
}
