//! `cairn run`: the whole nightly job from `cairn.toml`, as a plan of steps
//! each run as a child `cairn` process: one backup per source (its own
//! snapshot, tagged `source:NAME`), retention per source, gc when due,
//! replication to each replica, an optional verify, then metrics.
//!
//! A child per step gives each its own timeout (the child is killed, and
//! dies with this process if this one is killed), its own exit code and
//! JSON summary, and keeps one source's failure from touching the others.
//! A step that fails is reported and the job goes on; only the steps that
//! depend on it (a failed source's retention) are skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::config::{self, Config, S3, SourceKind};
use crate::exit;
use crate::metrics;
use cairn_store::ops::source::CommandLine;

/// The configuration and the sources a job is about (`run`, `drill`).
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The configuration file.
    #[arg(
        long,
        env = "CAIRN_CONFIG",
        default_value = "/etc/cairn/cairn.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Only this source (repeatable); default: every source.
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
}

impl JobArgs {
    /// Loads the configuration; a `--source` it does not name is refused.
    pub fn load(&self) -> anyhow::Result<Config> {
        let c = config::load(&self.config)?;
        for name in &self.sources {
            if !c.sources.iter().any(|s| &s.name == name) {
                let known: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
                return Err(cairn_store::Error::invalid(format!(
                    "--source {name:?}: no such source in {} (it has {})",
                    self.config.display(),
                    known.join(", ")
                ))
                .into());
            }
        }
        Ok(c)
    }

    /// Whether the job covers source `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|s| s == name)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Print the plan (each step's command; secrets stay out) and run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document at the end.
    #[arg(long)]
    json: bool,
}

/// What a step does (and what its outcome feeds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum StepKind {
    Backup(String),
    Retention(String),
    Gc,
    Replicate(String),
    Verify,
    /// Lists the repository's snapshots, for the metrics.
    Snapshots,
    /// Lists a replica's snapshots, for the metrics.
    ReplicaSnapshots(String),
    /// Repository sizes, for the metrics.
    Stats,
    /// A restore drill's command.
    Drill(String),
}

/// One step of the plan: a `cairn` command line and its environment.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: StepKind,
    pub args: Vec<String>,
    /// Extra environment (credentials): values never printed.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl Step {
    /// `backup/lms`, `gc`, `replicate/offsite`, …
    pub fn id(&self) -> String {
        match &self.kind {
            StepKind::Backup(n) => format!("backup/{n}"),
            StepKind::Retention(n) => format!("retention/{n}"),
            StepKind::Gc => "gc".into(),
            StepKind::Replicate(n) => format!("replicate/{n}"),
            StepKind::Verify => "verify".into(),
            StepKind::Snapshots => "snapshots".into(),
            StepKind::ReplicaSnapshots(n) => format!("snapshots/{n}"),
            StepKind::Stats => "stats".into(),
            StepKind::Drill(n) => format!("drill/{n}"),
        }
    }

    /// The step that must have succeeded for this one to run.
    fn after(&self) -> Option<StepKind> {
        match &self.kind {
            StepKind::Retention(n) => Some(StepKind::Backup(n.clone())),
            StepKind::ReplicaSnapshots(n) => Some(StepKind::Replicate(n.clone())),
            _ => None,
        }
    }
}

/// The tag every snapshot of a source carries.
pub fn source_tag(name: &str) -> String {
    format!("source:{name}")
}

pub fn s3_env(s3: &S3, env: &mut BTreeMap<String, String>) {
    if let Some((id, secret)) = &s3.credentials {
        env.insert("AWS_ACCESS_KEY_ID".into(), id.clone());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), secret.clone());
    }
    if let Some(region) = &s3.region {
        env.insert("AWS_REGION".into(), region.clone());
    }
}

/// `--repo URL [--s3-endpoint E]` for the job's repository.
pub fn repo_flags(c: &Config) -> Vec<String> {
    let mut out = vec!["--repo".to_string(), c.repository.url.clone()];
    if let Some(e) = &c.repository.s3.endpoint {
        out.extend(["--s3-endpoint".into(), e.clone()]);
    }
    out
}

/// The job as steps, in order. `only`: the sources to back up (all when
/// empty); `weekday`: today's, for gc.
pub fn plan(c: &Config, only: &[String], weekday: jiff::civil::Weekday) -> Vec<Step> {
    let mut repo_env = BTreeMap::new();
    s3_env(&c.repository.s3, &mut repo_env);
    let step = |kind, args: Vec<String>, env: &BTreeMap<String, String>, timeout| Step {
        kind,
        args,
        env: env.clone(),
        timeout,
    };
    let mut steps = Vec::new();
    let chosen = c
        .sources
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name));
    for s in chosen.clone() {
        let mut args = vec!["backup".to_string()];
        let mut env = repo_env.clone();
        if let SourceKind::Couchdb { .. } = s.kind {
            args.push("couchdb".into());
        }
        args.extend(repo_flags(c));
        args.extend([
            "--key".into(),
            c.repository.key_file.display().to_string(),
            "--tag".into(),
            source_tag(&s.name),
            "--json".into(),
            "--quiet".into(),
        ]);
        if let Some(h) = &c.repository.host {
            args.extend(["--host".into(), h.clone()]);
        }
        match &s.kind {
            SourceKind::Couchdb {
                url,
                user,
                password,
                dbs,
                exclude,
            } => {
                args.extend(["--url".into(), url.clone()]);
                if let Some(u) = user {
                    env.insert("COUCHDB_USER".into(), u.clone());
                }
                if let Some(p) = password {
                    env.insert("COUCHDB_PASSWORD".into(), p.clone());
                }
                if dbs.is_empty() {
                    args.push("--all-dbs".into());
                    for x in exclude {
                        args.extend(["--exclude".into(), x.clone()]);
                    }
                } else {
                    for d in dbs {
                        args.extend(["--db".into(), d.clone()]);
                    }
                }
            }
            SourceKind::Command {
                command,
                item,
                env: extra,
                ..
            } => {
                if let Some(i) = item {
                    args.extend(["--name".into(), i.clone()]);
                }
                match command {
                    CommandLine::Shell(line) => args.extend(["--command".into(), line.clone()]),
                    CommandLine::Argv(argv) => {
                        args.extend(["--exec".into(), "--".into()]);
                        args.extend(argv.iter().cloned());
                    }
                }
                env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            SourceKind::Files { paths, exclude } => {
                for x in exclude {
                    args.extend(["--exclude".into(), x.clone()]);
                }
                args.push("--".into());
                args.extend(paths.iter().map(|p| p.display().to_string()));
            }
        }
        let timeout = s.timeout.unwrap_or(c.step_timeout);
        steps.push(step(StepKind::Backup(s.name.clone()), args, &env, timeout));
    }
    if let Some(policy) = &c.retention {
        for s in chosen {
            let mut args = vec!["forget".to_string()];
            args.extend(repo_flags(c));
            args.extend(["--tag".into(), source_tag(&s.name), "--json".into()]);
            args.extend(policy.flags());
            steps.push(step(
                StepKind::Retention(s.name.clone()),
                args,
                &repo_env,
                c.step_timeout,
            ));
        }
    }
    if c.gc.weekdays.contains(&weekday) {
        let mut args = vec!["gc".to_string()];
        args.extend(repo_flags(c));
        args.push("--json".into());
        steps.push(step(StepKind::Gc, args, &repo_env, c.step_timeout));
    }
    for r in &c.replicas {
        // The replica's credentials: the source is the local repository, or
        // an S3 one reachable with the same (see the README).
        let mut env = repo_env.clone();
        s3_env(&r.s3, &mut env);
        let mut args = vec![
            "replicate".to_string(),
            "--from".into(),
            c.repository.url.clone(),
            "--to".into(),
            r.url.clone(),
            "--json".into(),
            "--quiet".into(),
        ];
        let endpoint: Vec<String> =
            r.s3.endpoint
                .as_ref()
                .or(c.repository.s3.endpoint.as_ref())
                .map(|e| vec!["--s3-endpoint".into(), e.clone()])
                .unwrap_or_default();
        args.extend(endpoint.iter().cloned());
        if let Some(n) = r.keep_last {
            args.extend(["--keep-last".into(), n.to_string()]);
        }
        if r.verify {
            args.push("--verify".into());
        }
        if r.append_only {
            args.push("--append-only".into());
        }
        steps.push(step(
            StepKind::Replicate(r.name.clone()),
            args,
            &env,
            c.step_timeout,
        ));
        let mut args = vec!["snapshots".to_string(), "--repo".into(), r.url.clone()];
        args.extend(endpoint);
        args.push("--json".into());
        steps.push(step(
            StepKind::ReplicaSnapshots(r.name.clone()),
            args,
            &env,
            c.step_timeout,
        ));
    }
    if let Some(pct) = c.verify_subset {
        let mut args = vec!["verify".to_string()];
        args.extend(repo_flags(c));
        args.extend([
            "--read-data-subset".into(),
            pct.to_string(),
            "--json".into(),
        ]);
        steps.push(step(StepKind::Verify, args, &repo_env, c.step_timeout));
    }
    for (kind, cmd) in [
        (StepKind::Snapshots, "snapshots"),
        (StepKind::Stats, "stats"),
    ] {
        let mut args = vec![cmd.to_string()];
        args.extend(repo_flags(c));
        args.push("--json".into());
        steps.push(step(kind, args, &repo_env, c.step_timeout));
    }
    steps
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    TimedOut,
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
        })
    }
}

/// How a step ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub step: String,
    #[serde(flatten)]
    pub kind: StepKind,
    pub status: Status,
    /// The child's exit code, when it exited.
    pub exit_code: Option<i32>,
    pub seconds: f64,
    /// Why it failed or was skipped (the child's last error lines).
    pub message: Option<String>,
    /// The child's JSON summary.
    pub summary: Option<serde_json::Value>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Tells a child `cairn` the pid of the `cairn run` it must die with.
pub const PARENT_ENV: &str = "CAIRN_RUN_PARENT";

/// In a child of `cairn run`: asks the kernel to kill this process when
/// its parent dies, then checks the parent did not die already (before the
/// request); exits if it did.
pub fn die_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let asked =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if asked.is_err() || ppid != parent {
        eprintln!("cairn: the `cairn run` that started this step is gone; stopping");
        std::process::exit(i32::from(crate::exit::PARTIAL));
    }
}

/// The most of a child's standard output kept (its JSON summary).
const MAX_OUTPUT: usize = 64 << 20;
/// The most of a child's standard error kept: its end, where the error is.
const MAX_STDERR: usize = 64 << 10;

/// What a child program left when it ended.
pub struct Finished {
    pub status: std::process::ExitStatus,
    /// Its standard output, or `None` if it wrote more than [`MAX_OUTPUT`].
    pub stdout: Option<Vec<u8>>,
    /// The last lines of its standard error, joined by ` | `.
    pub stderr_tail: String,
}

/// How running a child program ended.
pub enum Ended {
    Finished(Finished),
    /// Killed, with its process group, at `limit`.
    TimedOut,
    /// It could not be started or waited for.
    Failed(String),
}

/// Reads `r` to its end keeping at most `max` bytes: the first ones, or
/// the last ones when `tail`. Whether anything was left out.
async fn read_bounded(
    mut r: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    tail: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt;
    let (mut kept, mut cut, mut buf) = (Vec::new(), false, vec![0u8; 64 << 10]);
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, cut));
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > max {
            cut = true;
            if tail {
                kept.drain(..kept.len() - max);
            } else {
                kept.truncate(max);
            }
        }
    }
}

/// Runs `cmd` in its own process group, its output read bounded; at
/// `limit` the whole group is killed (a shell and what it started too).
pub async fn run_bounded(cmd: &mut tokio::process::Command, limit: Duration) -> Ended {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ended::Failed(format!("starting: {e}")),
    };
    let group = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Ended::Failed("its output could not be read".into());
    };
    let ran = tokio::time::timeout(limit, async {
        let (out, err, status) = tokio::join!(
            read_bounded(out, MAX_OUTPUT, false),
            read_bounded(err, MAX_STDERR, true),
            child.wait()
        );
        Ok::<_, std::io::Error>((out?, err?, status?))
    })
    .await;
    match ran {
        Err(_) => {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            Ended::TimedOut
        }
        Ok(Err(e)) => Ended::Failed(format!("waiting: {e}")),
        Ok(Ok(((stdout, stdout_cut), (stderr, _), status))) => {
            let stderr = String::from_utf8_lossy(&stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            Ended::Finished(Finished {
                status,
                stdout: (!stdout_cut).then_some(stdout),
                stderr_tail: lines[lines.len().saturating_sub(5)..].join(" | "),
            })
        }
    }
}

/// A child's JSON output: one document, or one per line (`ls --json`) as
/// an array.
fn parse_output(stdout: &[u8]) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_slice(stdout) {
        return Some(v);
    }
    stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .ok()
        .map(serde_json::Value::Array)
}

/// Runs one step as a child `cairn`, killed at its timeout or `deadline`.
pub async fn execute(step: &Step, deadline: Instant) -> Outcome {
    let started = Instant::now();
    let finish = |status, exit_code, message: Option<String>, summary| Outcome {
        step: step.id(),
        kind: step.kind.clone(),
        status,
        exit_code,
        seconds: started.elapsed().as_secs_f64(),
        message,
        summary,
    };
    let left = deadline.saturating_duration_since(started);
    if left.is_zero() {
        return finish(
            Status::Skipped,
            None,
            Some("the run's deadline passed".into()),
            None,
        );
    }
    let limit = step.timeout.min(left);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            let why = format!("finding cairn itself: {e}");
            return finish(Status::Failed, None, Some(why), None);
        }
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(&step.args).envs(&step.env);
    // The child dies with this process (a CronJob's pod killed, `kill -9`):
    // no orphaned backup writing on after the run is gone (see
    // `die_with_parent`, which the child calls first thing).
    cmd.env(PARENT_ENV, std::process::id().to_string());
    let done = match run_bounded(&mut cmd, limit).await {
        Ended::TimedOut => {
            let why = if limit < step.timeout {
                "the run's deadline"
            } else {
                "its timeout"
            };
            let limit = jiff::SignedDuration::try_from(limit)
                .map(|d| format!("{d:#}"))
                .unwrap_or_default();
            let message = format!("killed at {why} ({limit})");
            return finish(Status::TimedOut, None, Some(message), None);
        }
        Ended::Failed(why) => return finish(Status::Failed, None, Some(why), None),
        Ended::Finished(done) => done,
    };
    let summary = done.stdout.as_deref().and_then(parse_output);
    let code = done.status.code();
    if done.status.success() {
        return match done.stdout {
            Some(_) => finish(Status::Ok, code, None, summary),
            None => {
                let why = format!("it printed more than {} MiB", MAX_OUTPUT >> 20);
                finish(Status::Failed, code, Some(why), None)
            }
        };
    }
    let message = if done.stderr_tail.is_empty() {
        format!("exited with {}", done.status)
    } else {
        done.stderr_tail
    };
    finish(Status::Failed, code, Some(message), summary)
}

/// A step's command line as a person would type it, secrets hidden: the
/// `--command` line and the words after `--exec --` by the rules of
/// [`cairn_store::redact`].
fn shown_args(args: &[String]) -> String {
    let split = args
        .windows(2)
        .position(|w| w[0] == "--exec" && w[1] == "--")
        .map_or(args.len(), |i| i + 2);
    let (head, tail) = args.split_at(split);
    let mut words: Vec<String> = Vec::with_capacity(args.len());
    let mut previous = "";
    for a in head {
        words.push(if previous == "--command" {
            cairn_store::redact::redacted(a)
        } else {
            a.clone()
        });
        previous = a;
    }
    words.extend(cairn_store::redact::redact_argv(tail).unwrap_or_else(|| tail.to_vec()));
    cairn_store::ops::source::quote_words(&words)
}

/// One log line per step, for CronJob logs.
fn log_line(o: &Outcome) -> String {
    let mut line = format!("cairn run: {}: {} in {:.1} s", o.step, o.status, o.seconds);
    if let Some(code) = o.exit_code.filter(|_| !o.ok()) {
        line.push_str(&format!(" (exit {code})"));
    }
    if let (StepKind::Backup(_), Some(s)) = (&o.kind, &o.summary)
        && let Some(id) = s["snapshot"].as_str()
    {
        line.push_str(&format!(", snapshot {}", &id[..id.len().min(8)]));
        for (field, what) in [("bytes_read", "read"), ("new_blob_bytes", "new")] {
            if let Some(n) = s[field].as_u64() {
                line.push_str(&format!(", {} {what}", crate::progress::human_bytes(n)));
            }
        }
    }
    if let Some(m) = &o.message {
        line.push_str(&format!(": {m}"));
    }
    if o.exit_code == Some(i32::from(exit::LOCKED)) {
        line.push_str(
            " (a lease left by a killed run lapses by itself within its time-to-live, \
             10 minutes by default: nothing to unlock by hand; the next run goes on)",
        );
    }
    line
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    ok: bool,
    started: String,
    seconds: f64,
    exit_code: u8,
    steps: &'a [Outcome],
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let c = args.job.load()?;
    let started_at = jiff::Timestamp::now();
    let weekday = started_at.to_zoned(jiff::tz::TimeZone::UTC).weekday();
    let steps = plan(&c, &args.job.sources, weekday);
    if args.dry_run {
        for s in &steps {
            let env: Vec<&str> = s.env.keys().map(String::as_str).collect();
            println!(
                "{:<22} cairn {}{}",
                s.id(),
                shown_args(&s.args),
                if env.is_empty() {
                    String::new()
                } else {
                    format!("   (environment: {})", env.join(", "))
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let deadline = started + c.deadline;
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(steps.len());
    for step in &steps {
        let blocked = step.after().and_then(|needed| {
            outcomes
                .iter()
                .find(|o| o.kind == needed && !o.ok())
                .map(|o| o.step.clone())
        });
        let outcome = match blocked {
            Some(failed) => Outcome {
                step: step.id(),
                kind: step.kind.clone(),
                status: Status::Skipped,
                exit_code: None,
                seconds: 0.0,
                message: Some(format!("{failed} did not succeed")),
                summary: None,
            },
            None => execute(step, deadline).await,
        };
        eprintln!("{}", log_line(&outcome));
        outcomes.push(outcome);
    }
    let all_ok = outcomes.iter().all(Outcome::ok);
    let code = if all_ok { exit::OK } else { exit::PARTIAL };
    let samples = metrics::samples(
        &c,
        &args.job.sources,
        &outcomes,
        started_at,
        started.elapsed(),
        all_ok,
    );
    let mut metric_errors = Vec::new();
    if let Some(path) = &c.metrics.textfile
        && let Err(e) = metrics::write_textfile(path, &samples)
    {
        metric_errors.push(format!("metrics file {}: {e}", path.display()));
    }
    if let Some(url) = &c.metrics.push
        && let Err(e) = metrics::push(url, &c.metrics.job, &samples).await
    {
        metric_errors.push(format!("pushing metrics to {url}: {e}"));
    }
    for e in &metric_errors {
        eprintln!("cairn run: {e}");
    }
    let code = if metric_errors.is_empty() {
        code
    } else {
        exit::PARTIAL
    };
    if args.json {
        super::print_json(&Report {
            ok: code == exit::OK,
            started: started_at.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            exit_code: code,
            steps: &outcomes,
        })?;
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("{:<24} {:<10} {:>9}  DETAIL", "STEP", "STATUS", "SECONDS");
        for o in &outcomes {
            println!(
                "{:<24} {:<10} {:>9.1}  {}",
                o.step,
                o.status,
                o.seconds,
                o.message.as_deref().unwrap_or("")
            );
        }
    }
    if code != exit::OK {
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|o| !o.ok())
            .map(|o| o.step.as_str())
            .collect();
        eprintln!(
            "cairn run: not everything succeeded ({}); exit {code}",
            if failed.is_empty() {
                "metrics".to_string()
            } else {
                failed.join(", ")
            }
        );
    }
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
            [repository]
            url = "/backups/repo"
            key_file = "/k/backup.key"
            host = "node4"
            [[source]]
            name = "lms"
            kind = "couchdb"
            url = "http://couchdb:5984"
            exclude = ["_replicator"]
            [[source]]
            name = "pg"
            kind = "command"
            command = "pg_dump -Fc openedx"
            item = "openedx.dump"
            env = { PGHOST = "postgres" }
            [[source]]
            name = "uploads"
            kind = "files"
            paths = ["/data/uploads"]
            exclude = ["*.tmp"]
            [retention]
            keep_daily = 7
            [gc]
            weekdays = ["sunday"]
            [[replica]]
            name = "offsite"
            url = "s3://offsite/school"
            s3_endpoint = "https://s3.example"
            keep_last = 30
            [verify]
            read_data_subset = 5
            "#;

    fn config() -> Config {
        config::parse(CONFIG).unwrap()
    }

    #[tokio::test]
    async fn child_output_is_kept_bounded_head_or_tail() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (head, cut) = read_bounded(&data[..], 100, false).await.unwrap();
        assert!(cut && head == data[..100]);
        let (tail, cut) = read_bounded(&data[..], 100, true).await.unwrap();
        assert!(cut && tail == data[data.len() - 100..]);
        let (all, cut) = read_bounded(&data[..], data.len(), true).await.unwrap();
        assert!(!cut && all == data);
    }

    #[test]
    fn child_json_is_one_document_or_one_per_line() {
        assert_eq!(
            parse_output(b"{\"a\": 1}\n"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            parse_output(b"{\"a\": 1}\n{\"a\": 2}\n"),
            Some(serde_json::json!([{"a": 1}, {"a": 2}]))
        );
        assert_eq!(parse_output(b"not json\n"), None);
    }

    #[test]
    fn plans_show_arguments_as_a_shell_would_take_them_secrets_hidden() {
        let args = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown_args(&args(&[
                "backup",
                "--command",
                "PGPASSWORD=x pg_dump -Fc lms"
            ])),
            "backup --command 'PGPASSWORD=*** pg_dump -Fc lms'"
        );
        assert_eq!(
            shown_args(&args(&[
                "backup",
                "--exec",
                "--",
                "mongodump",
                "--password",
                "a b",
                "--archive"
            ])),
            "backup --exec -- mongodump --password '***' --archive"
        );
        assert_eq!(
            shown_args(&args(&["backup", "--name", "it's"])),
            "backup --name 'it'\\''s'"
        );
    }

    fn ids(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::id).collect()
    }

    #[test]
    fn the_plan_backs_up_each_source_then_retention_gc_replicas_verify() {
        use jiff::civil::Weekday;
        let steps = plan(&config(), &[], Weekday::Sunday);
        assert_eq!(
            ids(&steps),
            [
                "backup/lms",
                "backup/pg",
                "backup/uploads",
                "retention/lms",
                "retention/pg",
                "retention/uploads",
                "gc",
                "replicate/offsite",
                "snapshots/offsite",
                "verify",
                "snapshots",
                "stats"
            ]
        );
        assert!(!ids(&plan(&config(), &[], Weekday::Monday)).contains(&"gc".to_string()));
        let only = plan(&config(), &["pg".to_string()], Weekday::Monday);
        assert!(ids(&only).starts_with(&["backup/pg".to_string(), "retention/pg".to_string()]));
        assert!(!ids(&only).contains(&"backup/lms".to_string()));
    }

    #[test]
    fn a_command_given_as_words_runs_without_a_shell() {
        let c = config::parse(&CONFIG.replace(
            r#"command = "pg_dump -Fc openedx""#,
            r#"command = ["pg_dump", "-Fc", "open edx"]"#,
        ))
        .unwrap();
        let steps = plan(&c, &[], jiff::civil::Weekday::Monday);
        let step = steps.iter().find(|s| s.id() == "backup/pg").unwrap();
        let want = [
            "--name",
            "openedx.dump",
            "--exec",
            "--",
            "pg_dump",
            "-Fc",
            "open edx",
        ];
        assert_eq!(step.args[step.args.len() - want.len()..], want);
    }

    #[test]
    fn each_step_is_the_command_a_person_would_type() {
        let steps = plan(&config(), &[], jiff::civil::Weekday::Monday);
        let line = |id: &str| steps.iter().find(|s| s.id() == id).unwrap().args.join(" ");
        assert_eq!(
            line("backup/lms"),
            "backup couchdb --repo /backups/repo --key /k/backup.key --tag source:lms --json \
             --quiet --host node4 --url http://couchdb:5984 --all-dbs --exclude _replicator"
        );
        assert_eq!(
            line("backup/pg"),
            "backup --repo /backups/repo --key /k/backup.key --tag source:pg --json --quiet \
             --host node4 --name openedx.dump --command pg_dump -Fc openedx"
        );
        assert_eq!(
            line("backup/uploads"),
            "backup --repo /backups/repo --key /k/backup.key --tag source:uploads --json --quiet \
             --host node4 --exclude *.tmp -- /data/uploads"
        );
        assert_eq!(
            line("retention/pg"),
            "forget --repo /backups/repo --tag source:pg --json --keep-daily 7"
        );
        assert_eq!(
            line("replicate/offsite"),
            "replicate --from /backups/repo --to s3://offsite/school --json --quiet \
             --s3-endpoint https://s3.example --keep-last 30"
        );
        assert_eq!(
            line("verify"),
            "verify --repo /backups/repo --read-data-subset 5 --json"
        );
        let pg = steps.iter().find(|s| s.id() == "backup/pg").unwrap();
        assert_eq!(pg.env.get("PGHOST").map(String::as_str), Some("postgres"));
    }
}
