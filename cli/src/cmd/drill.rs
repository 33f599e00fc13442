//! `cairn drill`: the restore drill as one command. For each source of
//! `cairn.toml`, its newest snapshot is restored into a scratch target and
//! checked, and the time it took (what a real recovery would wait) reported:
//!
//! - files: restored into a scratch directory (every chunk of every file is
//!   checked against the signed tree as it is written);
//! - a command's dump: restored to a scratch file; a `dump = "postgres"`
//!   one is then loaded into a new database (`pg_restore`, or `psql` for a
//!   plain SQL dump), which must succeed, and each table's row count must
//!   be the rows the dump holds for it (its `COPY` blocks);
//! - CouchDB: each database restored into `drill-SOURCE-TIME-N` on the
//!   drill server, which `restore couchdb` compares with the snapshot
//!   (every leaf revision, `_security`) after loading.
//!
//! Whatever happens, what a drill created is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::run::{
    Ended, JobArgs, Status, Step, StepKind, execute, repo_flags, run_bounded, s3_env, source_tag,
};
use crate::config::{Config, Source, SourceKind};
use crate::exit;
use crate::metrics::{self, Sample};

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Print one JSON document at the end.
    #[arg(long)]
    json: bool,
}

/// One source's drill.
#[derive(Debug, Serialize)]
pub struct DrillResult {
    pub source: String,
    pub snapshot: Option<String>,
    /// ok or failed.
    pub status: Status,
    /// Seconds to restore (and load): the recovery time this source would see.
    pub rto_seconds: f64,
    /// What was checked beyond the restore's own checks.
    pub checked: Option<String>,
    pub message: Option<String>,
}

/// A `cairn` child step of a drill.
fn step(c: &Config, source: &str, args: Vec<String>) -> Step {
    let mut env = std::collections::BTreeMap::new();
    s3_env(&c.repository.s3, &mut env);
    Step {
        kind: StepKind::Drill(source.to_string()),
        args,
        env,
        timeout: c.step_timeout,
    }
}

/// Runs a child step; its JSON summary, or why it failed.
async fn cairn(step: &Step, deadline: Instant) -> Result<Option<serde_json::Value>, String> {
    let o = execute(step, deadline).await;
    if o.ok() {
        Ok(o.summary)
    } else {
        Err(format!(
            "`cairn {}` {}: {}",
            step.args.first().map_or("", String::as_str),
            o.status,
            o.message.unwrap_or_default()
        ))
    }
}

/// Runs a PostgreSQL client program with the drill's environment, until
/// the drill's deadline; its standard output.
async fn pg(
    c: &Config,
    program: &str,
    args: &[&str],
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(&c.drill.postgres_env);
    match run_bounded(&mut cmd, deadline.saturating_duration_since(Instant::now())).await {
        Ended::Finished(done) if done.status.success() => done
            .stdout
            .ok_or_else(|| format!("{program} printed more than cairn keeps")),
        Ended::Finished(done) => Err(format!("{program} {}: {}", done.status, done.stderr_tail)),
        Ended::TimedOut => Err(format!("{program}: killed at the drill's deadline")),
        Ended::Failed(why) => Err(format!("{program}: {why}")),
    }
}

/// The CouchDB databases a snapshot holds: its items named as CouchDB's
/// (`cairn_couch::format::parse_item_name`), each database once.
async fn couch_dbs(
    c: &Config,
    source: &str,
    id: &str,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let mut args = vec![
        "ls".to_string(),
        id.to_string(),
        "couchdb".into(),
        "-r".into(),
    ];
    args.extend(repo_flags(c));
    args.push("--json".into());
    let listing = cairn(&step(c, source, args), deadline).await?;
    let mut dbs: Vec<String> = listing
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str())
        .filter_map(cairn_couch::format::parse_item_name)
        .map(|(db, _)| db)
        .collect();
    dbs.dedup();
    // `--db NAME:TARGET` splits at the first `:`, which no CouchDB name has.
    if let Some(bad) = dbs.iter().find(|d| d.contains(':')) {
        return Err(format!(
            "the snapshot names a database CouchDB could not have: {bad:?}"
        ));
    }
    Ok(dbs)
}

/// A name for a drill's database: lowercase, as CouchDB and PostgreSQL
/// both accept (`drill-lms-20261206t0230-0`; `_` for PostgreSQL).
fn drill_name(source: &str, stamp: &str, n: usize, sep: char) -> String {
    let source: String = source
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() {
                ch.to_ascii_lowercase()
            } else {
                sep
            }
        })
        .collect();
    format!("drill{sep}{source}{sep}{stamp}{sep}{n}")
}

/// Drills one source: restore, check, measure; removes what it created.
async fn drill(
    c: &Config,
    source: &Source,
    snapshot: &str,
    stamp: &str,
    scratch: &Path,
    deadline: Instant,
) -> Result<(Duration, Option<String>), String> {
    let started = Instant::now();
    let restore = |extra: Vec<String>| {
        let mut args = vec!["restore".to_string(), snapshot.to_string()];
        args.extend(repo_flags(c));
        args.extend(["--quiet".to_string()]);
        args.extend(extra);
        step(c, &source.name, args)
    };
    match &source.kind {
        SourceKind::Files { .. } => {
            let target = scratch.join("files");
            let s = restore(vec!["--target".into(), target.display().to_string()]);
            cairn(&s, deadline).await?;
            Ok((started.elapsed(), None))
        }
        SourceKind::Command { item, postgres, .. } => {
            let file = scratch.join("dump");
            let item = item.clone().unwrap_or_else(|| "command".into());
            let s = restore(vec![
                "--item".into(),
                item,
                "--output".into(),
                file.display().to_string(),
            ]);
            cairn(&s, deadline).await?;
            if !postgres {
                return Ok((started.elapsed(), None));
            }
            let db = drill_name(&source.name, stamp, 0, '_');
            pg(c, "createdb", &[&db], deadline).await?;
            let custom = std::fs::File::open(&file)
                .and_then(|mut f| {
                    let mut magic = [0u8; 5];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic == *b"PGDMP")
                })
                .unwrap_or(false);
            let path = file.display().to_string();
            let loaded = if custom {
                pg(
                    c,
                    "pg_restore",
                    &["--exit-on-error", "--no-owner", "-d", &db, &path],
                    deadline,
                )
                .await
                .map(drop)
            } else {
                pg(
                    c,
                    "psql",
                    &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db, "-f", &path],
                    deadline,
                )
                .await
                .map(drop)
            };
            let took = started.elapsed();
            let checked = match loaded {
                Ok(()) => check_row_counts(c, &db, &file, custom, deadline).await,
                Err(e) => Err(e),
            };
            // Dropped even past the deadline: nothing is left behind.
            let cleanup = Instant::now() + Duration::from_secs(60);
            let dropped = pg(c, "dropdb", &["--if-exists", &db], cleanup).await;
            let checked = checked?;
            dropped
                .map_err(|e| format!("the drill database {db} was loaded but not dropped: {e}"))?;
            Ok((took, Some(checked)))
        }
        SourceKind::Couchdb { .. } => {
            let Some((url, user, password)) = &c.drill.couchdb else {
                return Err("no [drill] couchdb_url to restore CouchDB into".into());
            };
            let dbs = couch_dbs(c, &source.name, snapshot, deadline).await?;
            if dbs.is_empty() {
                return Err("the snapshot holds no database".into());
            }
            let targets: Vec<String> = (0..dbs.len())
                .map(|n| drill_name(&source.name, stamp, n, '-'))
                .collect();
            let mut args = vec![
                "restore".to_string(),
                "couchdb".into(),
                snapshot.to_string(),
                "--url".into(),
                url.clone(),
                "--quiet".into(),
                // The drill's promise: every leaf compared.
                "--check".into(),
                "leaves".into(),
            ];
            args.extend(repo_flags(c));
            for (db, target) in dbs.iter().zip(&targets) {
                args.extend(["--db".into(), format!("{db}:{target}")]);
            }
            let mut s = step(c, &source.name, args);
            if let Some(u) = user {
                s.env.insert("COUCHDB_USER".into(), u.clone());
            }
            if let Some(p) = password {
                s.env.insert("COUCHDB_PASSWORD".into(), p.clone());
            }
            let restored = cairn(&s, deadline).await;
            let took = started.elapsed();
            let removed =
                delete_couch_dbs(url, user.as_deref(), password.as_deref(), &targets).await;
            restored?;
            removed?;
            Ok((
                took,
                Some(format!(
                    "{} database(s): every leaf and _security",
                    dbs.len()
                )),
            ))
        }
    }
}

/// The most of one line [`copy_counts`] keeps: enough for a `COPY` header;
/// a data row's bytes beyond it are only counted past, never held.
const MAX_HEADER_LEN: usize = 64 << 10;

/// Each table's rows in a dump, as its `COPY ... FROM stdin;` blocks hold
/// them: the counts at backup time. Memory stays bounded whatever the
/// lines' lengths (a row may be a large `bytea`).
fn copy_counts(mut sql: impl std::io::BufRead) -> std::io::Result<Vec<(String, u64)>> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut open: Option<(String, u64)> = None;
    // The start of the current line (at most MAX_HEADER_LEN bytes).
    let mut line = Vec::new();
    loop {
        let buf = sql.fill_buf()?;
        if buf.is_empty() {
            return Ok(out);
        }
        let (part, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], at + 1),
            None => (buf, buf.len()),
        };
        let room = MAX_HEADER_LEN.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        let complete = ended > part.len();
        sql.consume(ended);
        if !complete {
            continue;
        }
        match &mut open {
            Some((_, n)) if line != b"\\." => *n += 1,
            Some(_) => out.extend(open.take()),
            None => {
                if let Some(rest) = line.strip_prefix(b"COPY ")
                    && line.ends_with(b" FROM stdin;")
                {
                    let rest = String::from_utf8_lossy(rest);
                    // `COPY public.t (a, b) FROM stdin;`: the table is up to the column list.
                    let table = rest.split(" (").next().unwrap_or_default();
                    let table = table.trim_end_matches(" FROM stdin;").to_string();
                    open = Some((table, 0));
                }
            }
        }
        line.clear();
    }
}

/// Compares every table's row count in the drill database with the rows
/// its dump holds.
async fn check_row_counts(
    c: &Config,
    db: &str,
    file: &Path,
    custom: bool,
    deadline: Instant,
) -> Result<String, String> {
    let counts = if custom {
        // The dump's data as SQL, read as it streams (never whole in memory).
        let mut child = std::process::Command::new("pg_restore")
            .args(["--data-only", "-f", "-"])
            .arg(file)
            .envs(&c.drill.postgres_env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting pg_restore: {e}"))?;
        let stdout = child.stdout.take().ok_or("pg_restore's output")?;
        let counted =
            tokio::task::spawn_blocking(move || copy_counts(std::io::BufReader::new(stdout)))
                .await
                .map_err(|e| e.to_string())?;
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("pg_restore listing the dump's rows: {status}"));
        }
        counted.map_err(|e| e.to_string())?
    } else {
        let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
        copy_counts(std::io::BufReader::new(f)).map_err(|e| e.to_string())?
    };
    let mut differ = Vec::new();
    for (table, want) in &counts {
        let query = format!("SELECT count(*) FROM {table}");
        let args = ["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", &query];
        let out = pg(c, "psql", &args, deadline).await?;
        let got = String::from_utf8_lossy(&out).trim().parse::<u64>().ok();
        if got != Some(*want) {
            differ.push(format!(
                "{table}: {} rows loaded, the dump holds {want}",
                got.map_or_else(|| "?".to_string(), |n| n.to_string())
            ));
        }
    }
    if differ.is_empty() {
        let rows: u64 = counts.iter().map(|(_, n)| n).sum();
        Ok(format!("{} table(s), {rows} rows counted", counts.len()))
    } else {
        Err(format!("row counts differ: {}", differ.join("; ")))
    }
}

/// Deletes the drill's CouchDB databases (those that exist).
async fn delete_couch_dbs(
    url: &str,
    user: Option<&str>,
    password: Option<&str>,
    dbs: &[String],
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for db in dbs {
        let mut req = client.delete(format!("{}/{db}", url.trim_end_matches('/')));
        if let Some(u) = user {
            req = req.basic_auth(u, password);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {}
            Ok(r) => failed.push(format!("{db}: {}", r.status())),
            Err(e) => failed.push(format!("{db}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "drill databases not deleted: {}",
            failed.join(", ")
        ))
    }
}

/// Where the drill's metrics go: beside the run's (`cairn.prom` →
/// `cairn-drill.prom`), so that neither overwrites the other.
fn drill_textfile(run_file: &Path) -> PathBuf {
    let stem = run_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cairn".into());
    run_file.with_file_name(format!("{stem}-drill.prom"))
}

pub async fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let c = args.job.load()?;
    let started_at = jiff::Timestamp::now();
    let deadline = Instant::now() + c.deadline;
    let stamp = started_at.strftime("%Y%m%dt%H%M%S").to_string();
    // The newest snapshot of each source.
    let mut list = vec!["snapshots".to_string()];
    list.extend(repo_flags(&c));
    list.push("--json".into());
    let listing = match cairn(&step(&c, "snapshots", list), deadline).await {
        Ok(listing) => listing.unwrap_or_default(),
        Err(e) => {
            eprintln!("cairn drill: listing the repository's snapshots failed: {e}");
            return Ok(ExitCode::from(exit::UNREACHABLE));
        }
    };
    let mut results = Vec::new();
    for source in c.sources.iter().filter(|s| args.job.covers(&s.name)) {
        let tag = source_tag(&source.name);
        let newest = metrics::newest(&listing, Some(&tag))
            .0
            .and_then(|(_, s)| s["id"].as_str())
            .map(str::to_string);
        let Some(snapshot) = newest else {
            results.push(DrillResult {
                source: source.name.clone(),
                snapshot: None,
                status: Status::Failed,
                rto_seconds: 0.0,
                checked: None,
                message: Some(format!("no snapshot tagged {tag}")),
            });
            continue;
        };
        let scratch = c.drill.scratch.join(format!(
            "cairn-drill-{}-{stamp}-{}",
            source.name,
            std::process::id()
        ));
        let outcome = match std::fs::create_dir_all(&scratch) {
            Ok(()) => drill(&c, source, &snapshot, &stamp, &scratch, deadline).await,
            Err(e) => Err(format!("scratch directory {}: {e}", scratch.display())),
        };
        let cleaned = match std::fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
                "scratch directory {} not removed: {e}",
                scratch.display()
            )),
            _ => Ok(()),
        };
        let result = match (outcome, cleaned) {
            (Ok((took, checked)), Ok(())) => DrillResult {
                source: source.name.clone(),
                snapshot: Some(snapshot),
                status: Status::Ok,
                rto_seconds: took.as_secs_f64(),
                checked,
                message: None,
            },
            (Ok(_), Err(why)) | (Err(why), _) => DrillResult {
                source: source.name.clone(),
                snapshot: Some(snapshot),
                status: Status::Failed,
                rto_seconds: 0.0,
                checked: None,
                message: Some(why),
            },
        };
        eprintln!(
            "cairn drill: {}: {}{}",
            result.source,
            result.status,
            match &result.message {
                Some(m) => format!(": {m}"),
                None => format!(", restored in {:.1} s", result.rto_seconds),
            }
        );
        results.push(result);
    }
    let passed = results.iter().all(|r| r.status == Status::Ok);
    if let Some(path) = &c.metrics.textfile {
        let mut samples = vec![Sample {
            name: "cairn_drill_timestamp_seconds",
            label: None,
            value: started_at.as_millisecond() as f64 / 1000.0,
        }];
        for r in &results {
            samples.push(Sample {
                name: "cairn_drill_success",
                label: Some(("source", r.source.clone())),
                value: if r.status == Status::Ok { 1.0 } else { 0.0 },
            });
            if r.status == Status::Ok {
                samples.push(Sample {
                    name: "cairn_drill_rto_seconds",
                    label: Some(("source", r.source.clone())),
                    value: r.rto_seconds,
                });
            }
        }
        let file = drill_textfile(path);
        if let Err(e) = metrics::write_textfile(&file, &samples) {
            eprintln!("cairn drill: metrics file {}: {e}", file.display());
        }
    }
    if args.json {
        super::print_json(&serde_json::json!({
            "passed": passed,
            "started": started_at.to_string(),
            "sources": results,
        }))?;
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("{:<20} {:<8} {:>10}  DETAIL", "SOURCE", "RESULT", "RTO (s)");
        for r in &results {
            println!(
                "{:<20} {:<8} {:>10.1}  {}",
                r.source,
                r.status,
                r.rto_seconds,
                r.message.as_deref().unwrap_or("")
            );
        }
    }
    if passed {
        Ok(ExitCode::SUCCESS)
    } else {
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.status != Status::Ok)
            .map(|r| r.source.as_str())
            .collect();
        eprintln!(
            "cairn drill: FAILED for {}; exit {}",
            failed.join(", "),
            exit::PARTIAL
        );
        Ok(ExitCode::from(exit::PARTIAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_come_from_the_dumps_copy_blocks() {
        let sql = "SET x;\nCOPY public.grades (id, score) FROM stdin;\n1\t2\n2\t3\n\\.\n\
                   COPY public.\"Empty T\" (a) FROM stdin;\n\\.\nCOPY public.notes FROM stdin;\nx\n\\.\n";
        assert_eq!(
            copy_counts(sql.as_bytes()).unwrap(),
            [
                ("public.grades".to_string(), 2),
                ("public.\"Empty T\"".to_string(), 0),
                ("public.notes".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_huge_row_is_counted_not_held() {
        let mut sql = b"COPY public.files (id, data) FROM stdin;\n".to_vec();
        sql.extend(std::iter::repeat_n(b'x', 3 * MAX_HEADER_LEN));
        sql.extend(b"\nshort\n\\.\n");
        let counts = copy_counts(std::io::BufReader::with_capacity(4096, &sql[..])).unwrap();
        assert_eq!(counts, [("public.files".to_string(), 2)]);
    }

    #[test]
    fn drill_names_suit_couchdb_and_postgres() {
        assert_eq!(
            drill_name("LMS_db", "20261206t023000", 2, '-'),
            "drill-lms-db-20261206t023000-2"
        );
        assert_eq!(
            drill_name("pg", "20261206t023000", 0, '_'),
            "drill_pg_20261206t023000_0"
        );
        assert_eq!(
            drill_textfile(Path::new("/var/lib/node_exporter/cairn.prom")),
            Path::new("/var/lib/node_exporter/cairn-drill.prom")
        );
    }
}
