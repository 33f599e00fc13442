//! `cairn backup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use cairn_store::format::key::SecretKey;
use cairn_store::ops::backup::BackupOptions;
use cairn_store::ops::session::WriteOptions;
use cairn_store::ops::source::{CommandLine, Source};
use cairn_store::plan::select::parse_time;
use clap::Args;

use crate::progress::{Bar, human_bytes, rate};
use crate::repo_args::RepoArgs;

/// What every backup takes: where to, signed by what, labelled how.
#[derive(Debug, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Secret key file that signs the snapshot.
    #[arg(long, env = "CAIRN_KEY_FILE", value_name = "FILE", required = true)]
    pub key: Option<PathBuf>,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's; set it in containers, whose names change).
    #[arg(long, env = "CAIRN_HOST")]
    pub host: Option<String>,
    /// The snapshot's time (RFC 3339 with offset; default: now). For importing
    /// old dumps under the date they were made.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Packs uploaded at once (each holds up to 4 MiB in memory; raise it for S3).
    #[arg(long, default_value_t = 2)]
    pub upload_concurrency: usize,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl WriteArgs {
    /// Opens a write session and the options of the snapshot.
    pub async fn begin(
        &self,
    ) -> anyhow::Result<(
        cairn_store::ops::session::WriteSession,
        SecretKey,
        BackupOptions,
    )> {
        let path = self
            .key
            .as_deref()
            .ok_or_else(|| cairn_store::Error::invalid("--key is required"))?;
        let key = SecretKey::read_file(path)?;
        let time = self.time.as_deref().map(parse_time).transpose()?;
        let session = self
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
            host: self.host.clone().unwrap_or_else(cairn_store::ops::hostname),
            tags: self.tags.clone(),
            time,
            upload_concurrency: self.upload_concurrency,
            ..BackupOptions::default()
        };
        Ok((session, key, options))
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    source: Option<BackupSource>,
    #[command(flatten)]
    write: WriteArgs,
    /// Item name for `-` (default "stdin") or --command (default "command").
    #[arg(long)]
    name: Option<String>,
    /// Back up the standard output of this shell command; a non-zero exit writes no snapshot.
    #[arg(long, value_name = "CMD", conflicts_with = "paths")]
    command: Option<String>,
    /// The words after `--` are a program and its arguments, run without a
    /// shell (as --command otherwise): `--exec -- pg_dump -Fc openedx`.
    #[arg(long, conflicts_with = "command", requires = "paths")]
    exec: bool,
    /// Files or directories to back up, or `-` for standard input.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Compare files with this snapshot (id or prefix) instead of the newest
    /// of the same host and paths: a file whose size, modification time,
    /// change time and inode are the same there is not read again.
    #[arg(long, value_name = "SNAPSHOT")]
    parent: Option<String>,
    /// Read every file, even those unchanged since the parent.
    #[arg(long)]
    force_reread: bool,
    /// Leave out files and directories matching this glob (repeatable): a
    /// pattern without `/` matches names anywhere (`*.log`, `cache`), one
    /// starting with `/` or `**/` whole paths (`/srv/volumes/*/tmp`).
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum BackupSource {
    /// Back up CouchDB databases (every leaf revision, with history,
    /// attachments, design and local documents, settings); or import
    /// `_all_docs` dump files.
    Couchdb(super::couch::CouchBackupArgs),
}

fn source(args: &BackupArgs) -> anyhow::Result<Source> {
    let stdin = args.paths.len() == 1 && args.paths[0].as_os_str() == "-";
    let command = match (&args.command, args.exec) {
        (Some(line), _) => Some(CommandLine::Shell(line.clone())),
        (None, true) => Some(CommandLine::Argv(
            args.paths
                .iter()
                .map(|p| {
                    p.to_str().map(str::to_string).ok_or_else(|| {
                        cairn_store::Error::invalid(format!(
                            "--exec: the word {p:?} is not UTF-8; it would be recorded \
                             (and run) altered"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        )),
        (None, false) => None,
    };
    Ok(match (command, stdin) {
        (Some(command), _) => {
            if command.holds_secret() {
                eprintln!(
                    "cairn: warning: the command line holds a password; it is stored in the \
                     snapshot as `{}`; keep secrets out of it (a ~/.pgpass file, or a \
                     variable set before cairn runs)",
                    crate::terminal::safe(&command.shown())
                );
            }
            Source::Command {
                command,
                name: args.name.clone().unwrap_or_else(|| "command".into()),
            }
        }
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

pub async fn run(mut args: BackupArgs) -> anyhow::Result<ExitCode> {
    if let Some(BackupSource::Couchdb(couch)) = args.source.take() {
        return super::couch::backup(couch).await;
    }
    let source = source(&args)?;
    if !args.exclude.is_empty() && !matches!(source, Source::Paths(_)) {
        bail!(cairn_store::Error::invalid(
            "--exclude applies to files and directories, not to `-` or --command"
        ));
    }
    let exclude = cairn_store::ops::backup::Exclude::new(&args.exclude)?;
    let write = &args.write;
    let (session, key, mut options) = write.begin().await?;
    options.parent = args.parent.clone();
    options.force_reread = args.force_reread;
    options.exclude = exclude;
    let args = write;
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
            "snapshot {} saved: {} entries ({} unchanged files not read), {} read, {} new, {} stored, in {:.1} s ({})",
            summary.snapshot.short(),
            summary.items,
            summary.files_unchanged,
            human_bytes(summary.bytes_read),
            human_bytes(summary.new_blob_bytes),
            human_bytes(summary.stored_bytes),
            seconds,
            rate(summary.bytes_read, seconds),
        );
    }
    Ok(ExitCode::SUCCESS)
}
