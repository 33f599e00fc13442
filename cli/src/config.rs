//! `cairn.toml`: the whole nightly job in one file (format-spec-free: this is
//! the CLI's, not the repository's). Loaded and checked entirely before
//! anything runs: an unknown key, a secret that cannot be read or a policy
//! that keeps nothing is an error naming the field.
//!
//! Secrets never sit in the file: each one is `{ file = "PATH" }` (how
//! Kubernetes mounts a Secret) or `{ env = "NAME" }`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use cairn_store::ops::source::CommandLine;

/// A loaded, checked configuration with its secrets read.
#[derive(Debug, Clone)]
pub struct Config {
    pub repository: Repository,
    pub deadline: Duration,
    pub step_timeout: Duration,
    pub sources: Vec<Source>,
    pub retention: Option<Retention>,
    pub gc: Gc,
    pub replicas: Vec<Replica>,
    /// Percent of packs `verify --read-data-subset` reads after the job.
    pub verify_subset: Option<f64>,
    pub metrics: Metrics,
    pub drill: Drill,
}

/// Where `cairn drill` restores to.
#[derive(Debug, Clone, Default)]
pub struct Drill {
    /// Directory for restored files and dumps (each drill's own
    /// subdirectory, removed afterwards).
    pub scratch: PathBuf,
    /// CouchDB server drill databases are created on, with credentials.
    pub couchdb: Option<(String, Option<String>, Option<String>)>,
    /// Environment of `createdb`, `pg_restore`/`psql` and `dropdb` (PG*).
    pub postgres_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub url: String,
    pub key_file: PathBuf,
    pub host: Option<String>,
    pub s3: S3,
}

/// How to reach an S3 store: endpoint, region and credentials (for the
/// steps' environment).
#[derive(Debug, Clone, Default)]
pub struct S3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when given.
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub timeout: Option<Duration>,
    pub kind: SourceKind,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A CouchDB server's databases.
    Couchdb {
        url: String,
        user: Option<String>,
        password: Option<String>,
        dbs: Vec<String>,
        exclude: Vec<String>,
    },
    /// A command whose standard output is the dump.
    Command {
        command: CommandLine,
        item: Option<String>,
        env: BTreeMap<String, String>,
        /// The dump is PostgreSQL's (`pg_dump`): a drill loads it.
        postgres: bool,
    },
    /// Files and directories, less what `exclude`'s globs match.
    Files {
        paths: Vec<PathBuf>,
        exclude: Vec<String>,
    },
}

/// Retention, applied to each source's snapshots on their own.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// `forget`'s flags for this policy.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if let Some(n) = n {
                out.push(flag.to_string());
                out.push(n.to_string());
            }
        }
        out
    }
}

/// When `gc` runs: on these weekdays (UTC), or never when empty.
#[derive(Debug, Clone, Default)]
pub struct Gc {
    pub weekdays: Vec<jiff::civil::Weekday>,
}

#[derive(Debug, Clone)]
pub struct Replica {
    pub name: String,
    pub url: String,
    pub s3: S3,
    pub keep_last: Option<u32>,
    pub verify: bool,
    /// Written create-only, never overwritten or deleted (`--append-only`).
    pub append_only: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Prometheus text file written atomically (node_exporter's textfile collector).
    pub textfile: Option<PathBuf>,
    /// Pushgateway base URL.
    pub push: Option<String>,
    pub job: String,
}

// ---- the file as written

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    repository: RepositoryFile,
    #[serde(default)]
    run: RunFile,
    #[serde(default, rename = "source")]
    sources: Vec<SourceFile>,
    retention: Option<Retention>,
    gc: Option<GcFile>,
    #[serde(default, rename = "replica")]
    replicas: Vec<ReplicaFile>,
    verify: Option<VerifyFile>,
    metrics: Option<MetricsFile>,
    drill: Option<DrillFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillFile {
    scratch: Option<PathBuf>,
    couchdb_url: Option<String>,
    couchdb_user: Option<String>,
    couchdb_password: Option<Secret>,
    postgres_env: Option<BTreeMap<String, String>>,
    postgres_secret_env: Option<BTreeMap<String, Secret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryFile {
    url: String,
    key_file: PathBuf,
    host: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    access_key_id: Option<Secret>,
    secret_access_key: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    deadline: Option<String>,
    step_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    name: String,
    kind: String,
    timeout: Option<String>,
    // couchdb
    url: Option<String>,
    user: Option<String>,
    password: Option<Secret>,
    dbs: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    // command: a string runs with `sh -c`, an array without a shell
    command: Option<CommandSpec>,
    item: Option<String>,
    env: Option<BTreeMap<String, String>>,
    secret_env: Option<BTreeMap<String, Secret>>,
    /// "postgres": the command is a pg_dump (a drill loads it).
    dump: Option<String>,
    // files
    paths: Option<Vec<PathBuf>>,
}

/// `command = "pg_dump -Fc lms | gzip"` (a shell line) or
/// `command = ["pg_dump", "-Fc", "lms"]` (no shell: images without one).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a command: a string (run with sh -c) or an array of strings (its words, no shell)"
)]
enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcFile {
    weekdays: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaFile {
    name: String,
    url: String,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    access_key_id: Option<Secret>,
    secret_access_key: Option<Secret>,
    keep_last: Option<u32>,
    #[serde(default)]
    verify: bool,
    #[serde(default)]
    append_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyFile {
    read_data_subset: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    textfile: Option<PathBuf>,
    push: Option<String>,
    job: Option<String>,
}

/// Where a secret comes from: exactly one of a file and an environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secret {
    file: Option<PathBuf>,
    env: Option<String>,
}

/// Secrets above this are refused (a wrong path to a large file).
const MAX_SECRET_LEN: u64 = 64 * 1024;

impl Secret {
    /// The secret's value, read now; `field` names it in errors.
    fn read(&self, field: &str) -> anyhow::Result<String> {
        match (&self.file, &self.env) {
            (Some(path), None) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| invalid(field, format!("file {}: {e}", path.display())))?;
                if meta.len() > MAX_SECRET_LEN {
                    return Err(invalid(
                        field,
                        format!(
                            "file {} is {} bytes: not a secret",
                            path.display(),
                            meta.len()
                        ),
                    ));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(field, format!("file {}: {e}", path.display())))?;
                // Kubernetes and `echo` leave a trailing newline.
                Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
            }
            (None, Some(name)) => std::env::var(name)
                .map_err(|_| invalid(field, format!("environment variable {name} is not set"))),
            _ => Err(invalid(
                field,
                "give exactly one of `file = \"PATH\"` and `env = \"NAME\"`",
            )),
        }
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> anyhow::Error {
    cairn_store::Error::invalid(format!("configuration: {field}: {why}")).into()
}

fn span(field: &str, text: &str) -> anyhow::Result<Duration> {
    let s = cairn_store::plan::retention::parse_span(text).map_err(|e| invalid(field, e))?;
    let d = s
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| invalid(field, e))?;
    let d = Duration::try_from(d).map_err(|e| invalid(field, e))?;
    if d.is_zero() {
        return Err(invalid(field, "must be longer than zero"));
    }
    Ok(d)
}

fn credentials(
    field: &str,
    id: Option<&Secret>,
    secret: Option<&Secret>,
) -> anyhow::Result<Option<(String, String)>> {
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some((
            id.read(&format!("{field}.access_key_id"))?,
            secret.read(&format!("{field}.secret_access_key"))?,
        ))),
        _ => Err(invalid(
            field,
            "give both access_key_id and secret_access_key, or neither (then the environment's)",
        )),
    }
}

/// A name usable in a tag, a metric label and a file name.
fn check_name(field: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?}: use 1 to 64 letters, digits, '-' or '_'"),
        ))
    }
}

/// Loads and checks `path`.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        cairn_store::Error::invalid(format!("configuration {}: {e}", path.display()))
    })?;
    parse(&text).map_err(|e| e.context(format!("in {}", path.display())))
}

/// Parses and checks a configuration's text, reading its secrets.
pub fn parse(text: &str) -> anyhow::Result<Config> {
    let file: File = toml::from_str(text)
        .map_err(|e| cairn_store::Error::invalid(format!("configuration: {e}")))?;
    let r = file.repository;
    let repository = Repository {
        url: r.url,
        key_file: r.key_file,
        host: r.host,
        s3: S3 {
            endpoint: r.s3_endpoint,
            region: r.s3_region,
            credentials: credentials(
                "repository",
                r.access_key_id.as_ref(),
                r.secret_access_key.as_ref(),
            )?,
        },
    };
    let deadline = span("run.deadline", file.run.deadline.as_deref().unwrap_or("6h"))?;
    let step_timeout = span(
        "run.step_timeout",
        file.run.step_timeout.as_deref().unwrap_or("2h"),
    )?;
    if file.sources.is_empty() {
        return Err(invalid("source", "no [[source]] given: nothing to back up"));
    }
    let mut sources: Vec<Source> = Vec::new();
    for (i, s) in file.sources.into_iter().enumerate() {
        let source = source(i, s)?;
        if sources.iter().any(|o| o.name == source.name) {
            return Err(invalid(
                &format!("source[{i}].name"),
                format!("{:?} is used twice", source.name),
            ));
        }
        sources.push(source);
    }
    if let Some(policy) = &file.retention
        && [
            policy.keep_last,
            policy.keep_hourly,
            policy.keep_daily,
            policy.keep_weekly,
            policy.keep_monthly,
            policy.keep_yearly,
        ]
        .iter()
        .all(|n| n.unwrap_or(0) == 0)
    {
        return Err(invalid(
            "retention",
            "keeps nothing: give at least one keep_* above 0 (or leave [retention] out)",
        ));
    }
    let gc = match file.gc {
        None => Gc::default(),
        Some(g) => Gc {
            weekdays: g
                .weekdays
                .iter()
                .map(|d| {
                    weekday(d).ok_or_else(|| {
                        invalid(
                            "gc.weekdays",
                            format!("{d:?} is not a weekday (monday … sunday, or daily)"),
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<Vec<_>>>>()?
                .into_iter()
                .flatten()
                .collect(),
        },
    };
    let mut replicas: Vec<Replica> = Vec::new();
    for (i, r) in file.replicas.into_iter().enumerate() {
        let field = format!("replica[{i}]");
        check_name(&format!("{field}.name"), &r.name)?;
        if replicas.iter().any(|o| o.name == r.name) || r.url == repository.url {
            return Err(invalid(
                &field,
                "each replica needs its own name and a URL other than the repository's",
            ));
        }
        if r.append_only && r.keep_last.is_some() {
            return Err(invalid(
                &format!("{field}.keep_last"),
                "an append_only replica is never trimmed from here (it may not delete); \
                 run forget and gc there with a credential that may",
            ));
        }
        replicas.push(Replica {
            s3: S3 {
                endpoint: r.s3_endpoint,
                region: r.s3_region,
                credentials: credentials(
                    &field,
                    r.access_key_id.as_ref(),
                    r.secret_access_key.as_ref(),
                )?,
            },
            name: r.name,
            url: r.url,
            keep_last: r.keep_last,
            verify: r.verify,
            append_only: r.append_only,
        });
    }
    let verify_subset = match file.verify {
        None => None,
        Some(v) if v.read_data_subset > 0.0 && v.read_data_subset <= 100.0 => {
            Some(v.read_data_subset)
        }
        Some(v) => {
            return Err(invalid(
                "verify.read_data_subset",
                format!(
                    "{}: a percentage above 0 and at most 100",
                    v.read_data_subset
                ),
            ));
        }
    };
    let metrics = match file.metrics {
        None => Metrics {
            job: "cairn".into(),
            ..Metrics::default()
        },
        Some(m) => {
            let job = m.job.unwrap_or_else(|| "cairn".into());
            check_name("metrics.job", &job)?;
            if let Some(url) = &m.push
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    "metrics.push",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            Metrics {
                textfile: m.textfile,
                push: m.push,
                job,
            }
        }
    };
    let drill = match file.drill {
        None => Drill {
            scratch: std::env::temp_dir(),
            ..Drill::default()
        },
        Some(d) => {
            let mut postgres_env = d.postgres_env.unwrap_or_default();
            for (name, secret) in d.postgres_secret_env.unwrap_or_default() {
                postgres_env.insert(
                    name.clone(),
                    secret.read(&format!("drill.postgres_secret_env.{name}"))?,
                );
            }
            let couchdb = match d.couchdb_url {
                None => None,
                Some(url) if url.contains('@') => {
                    return Err(invalid(
                        "drill.couchdb_url",
                        "holds credentials: give couchdb_user and couchdb_password instead",
                    ));
                }
                Some(url) => Some((
                    url,
                    d.couchdb_user,
                    d.couchdb_password
                        .as_ref()
                        .map(|p| p.read("drill.couchdb_password"))
                        .transpose()?,
                )),
            };
            Drill {
                scratch: d.scratch.unwrap_or_else(std::env::temp_dir),
                couchdb,
                postgres_env,
            }
        }
    };
    Ok(Config {
        drill,
        repository,
        deadline,
        step_timeout,
        sources,
        retention: file.retention,
        gc,
        replicas,
        verify_subset,
        metrics,
    })
}

fn weekday(name: &str) -> Option<Vec<jiff::civil::Weekday>> {
    use jiff::civil::Weekday::*;
    let all = [
        Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday,
    ];
    if name.eq_ignore_ascii_case("daily") {
        return Some(all.to_vec());
    }
    let lower = name.to_ascii_lowercase();
    all.into_iter()
        .find(|d| {
            let full = format!("{d:?}").to_ascii_lowercase();
            lower == full || (lower.len() == 3 && full.starts_with(&lower))
        })
        .map(|d| vec![d])
}

/// Checks one `[[source]]`: its kind's fields and no other kind's.
fn source(i: usize, s: SourceFile) -> anyhow::Result<Source> {
    let field = format!("source[{i}]");
    check_name(&format!("{field}.name"), &s.name)?;
    let named = |f: &str| format!("source {:?} ({field}).{f}", s.name);
    let timeout = s
        .timeout
        .as_deref()
        .map(|t| span(&named("timeout"), t))
        .transpose()?;
    // The fields each kind takes; any other given is an error.
    let given: Vec<&str> = [
        ("url", s.url.is_some()),
        ("user", s.user.is_some()),
        ("password", s.password.is_some()),
        ("dbs", s.dbs.is_some()),
        ("exclude", s.exclude.is_some()),
        ("command", s.command.is_some()),
        ("item", s.item.is_some()),
        ("env", s.env.is_some()),
        ("secret_env", s.secret_env.is_some()),
        ("dump", s.dump.is_some()),
        ("paths", s.paths.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect();
    let allowed: &[&str] = match s.kind.as_str() {
        "couchdb" => &["url", "user", "password", "dbs", "exclude"],
        "command" => &["command", "item", "env", "secret_env", "dump"],
        "files" => &["paths", "exclude"],
        other => {
            return Err(invalid(
                &named("kind"),
                format!("{other:?}: one of \"couchdb\", \"command\", \"files\""),
            ));
        }
    };
    if let Some(extra) = given.iter().find(|f| !allowed.contains(f)) {
        return Err(invalid(
            &named(extra),
            format!(
                "not a field of kind {:?} (it takes {})",
                s.kind,
                allowed.join(", ")
            ),
        ));
    }
    let kind = match s.kind.as_str() {
        "couchdb" => {
            let url = s
                .url
                .ok_or_else(|| invalid(&named("url"), "required for kind \"couchdb\""))?;
            if url.contains('@') {
                return Err(invalid(
                    &named("url"),
                    "holds credentials: give user and password = { file = ... } instead",
                ));
            }
            let dbs = s.dbs.unwrap_or_default();
            let exclude = s.exclude.unwrap_or_default();
            if !dbs.is_empty() && !exclude.is_empty() {
                return Err(invalid(
                    &named("exclude"),
                    "applies to all databases: leave dbs out to back up all but these",
                ));
            }
            SourceKind::Couchdb {
                url,
                user: s.user,
                password: s
                    .password
                    .as_ref()
                    .map(|p| p.read(&named("password")))
                    .transpose()?,
                dbs,
                exclude,
            }
        }
        "command" => {
            let command = match s.command {
                None => return Err(invalid(&named("command"), "required for kind \"command\"")),
                Some(CommandSpec::Shell(line)) if !line.trim().is_empty() => {
                    CommandLine::Shell(line)
                }
                Some(CommandSpec::Argv(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
                    CommandLine::Argv(argv)
                }
                Some(_) => return Err(invalid(&named("command"), "an empty command")),
            };
            let mut env = s.env.unwrap_or_default();
            for (name, secret) in s.secret_env.unwrap_or_default() {
                let value = secret.read(&named(&format!("secret_env.{name}")))?;
                env.insert(name, value);
            }
            let postgres = match s.dump.as_deref() {
                None => false,
                Some("postgres") => true,
                Some(other) => {
                    return Err(invalid(
                        &named("dump"),
                        format!("{other:?}: the only kind known is \"postgres\""),
                    ));
                }
            };
            SourceKind::Command {
                command,
                item: s.item,
                env,
                postgres,
            }
        }
        _ => {
            let paths = s.paths.unwrap_or_default();
            if paths.is_empty() {
                return Err(invalid(&named("paths"), "required for kind \"files\""));
            }
            let exclude = s.exclude.unwrap_or_default();
            // Checked now, not when the backup runs.
            cairn_store::ops::backup::Exclude::new(&exclude)
                .map_err(|e| invalid(&named("exclude"), e))?;
            SourceKind::Files { paths, exclude }
        }
    };
    Ok(Source {
        name: s.name,
        timeout,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [repository]
        url = "/backups/repo"
        key_file = "/secrets/backup.key"
        [[source]]
        name = "pg"
        kind = "command"
        command = "pg_dump -Fc lms"
    "#;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_minimal_config_loads_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.deadline, Duration::from_secs(6 * 3600));
        assert_eq!(c.step_timeout, Duration::from_secs(2 * 3600));
        assert!(c.gc.weekdays.is_empty());
        assert_eq!(c.metrics.job, "cairn");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = error(&format!("{MINIMAL}\nretenion = 3\n"));
        assert!(e.contains("retenion"), "{e}");
        let e = error(&MINIMAL.replace("kind = \"command\"", "kind = \"command\"\nkeep = 1"));
        assert!(e.contains("keep"), "{e}");
    }

    #[test]
    fn a_field_of_another_kind_is_refused() {
        let e =
            error(&MINIMAL.replace("kind = \"command\"", "kind = \"command\"\npaths = [\"/x\"]"));
        assert!(e.contains("source \"pg\"") && e.contains("paths"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_never_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "{MINIMAL}\n[[source]]\nname = \"couch\"\nkind = \"couchdb\"\nurl = \"http://couch:5984\"\n\
             user = \"admin\"\npassword = {{ file = \"{}\" }}\n",
            secret.display()
        );
        let c = parse(&text).unwrap();
        match &c.sources[1].kind {
            SourceKind::Couchdb { password, .. } => assert_eq!(password.as_deref(), Some("s3cret")),
            other => panic!("{other:?}"),
        }
        let missing = text.replace("password\"", "nope\"");
        let e = error(&missing);
        assert!(
            e.contains("source \"couch\"") && e.contains("password") && e.contains("nope"),
            "{e}"
        );
        let e = error(&text.replace(
            &format!("{{ file = \"{}\" }}", secret.display()),
            "{ env = \"CAIRN_TEST_SURELY_UNSET\" }",
        ));
        assert!(e.contains("CAIRN_TEST_SURELY_UNSET is not set"), "{e}");
        let e = error(&text.replace("http://couch:5984", "http://admin:pw@couch:5984"));
        assert!(e.contains("holds credentials"), "{e}");
    }

    /// The school's example (deploy/cairn.toml) loads, its secrets read
    /// from files put where it says.
    #[test]
    fn the_shipped_example_loads() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("../../deploy/cairn.toml")
            .replace("/run/secrets/", &format!("{}/", dir.path().display()));
        for line in text.lines() {
            for (i, _) in line.match_indices("{ file = \"") {
                let rest = &line[i + 10..];
                let path = &rest[..rest.find('"').unwrap()];
                if line.trim_start().starts_with('#') {
                    continue;
                }
                std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
                std::fs::write(path, "secret\n").unwrap();
            }
        }
        let c = parse(&text).unwrap();
        let names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["couchdb", "postgres", "volumes"]);
        assert_eq!(c.gc.weekdays, [jiff::civil::Weekday::Sunday]);
        assert_eq!(c.replicas[0].s3.credentials.as_ref().unwrap().0, "secret");
        assert_eq!(c.drill.postgres_env["PGPASSWORD"], "secret");
    }

    #[test]
    fn an_append_only_replica_is_never_trimmed_from_here() {
        let replica = "\n[[replica]]\nname = \"offsite\"\nurl = \"s3://b/p\"\nappend_only = true\n";
        assert!(parse(&format!("{MINIMAL}{replica}")).unwrap().replicas[0].append_only);
        let e = error(&format!("{MINIMAL}{replica}keep_last = 3\n"));
        assert!(
            e.contains("replica[0].keep_last") && e.contains("may not delete"),
            "{e}"
        );
    }

    #[test]
    fn a_command_is_a_shell_line_or_words() {
        let words = MINIMAL.replace("\"pg_dump -Fc lms\"", "[\"pg_dump\", \"-Fc\", \"lms\"]");
        let SourceKind::Command { command, .. } = &parse(&words).unwrap().sources[0].kind else {
            panic!("a command source");
        };
        assert_eq!(
            *command,
            CommandLine::Argv(vec!["pg_dump".into(), "-Fc".into(), "lms".into()])
        );
        let e = error(&MINIMAL.replace("\"pg_dump -Fc lms\"", "3"));
        assert!(
            e.contains("a string (run with sh -c) or an array of strings"),
            "{e}"
        );
        for empty in ["[]", "[\"\"]", "\" \""] {
            let e = error(&MINIMAL.replace("\"pg_dump -Fc lms\"", empty));
            assert!(e.contains("an empty command"), "{empty}: {e}");
        }
    }

    #[test]
    fn policies_that_keep_nothing_are_refused() {
        let e = error(&format!("{MINIMAL}\n[retention]\n"));
        assert!(
            e.contains("retention") && e.contains("keeps nothing"),
            "{e}"
        );
        let e = error(&format!("{MINIMAL}\n[retention]\nkeep_daily = 0\n"));
        assert!(e.contains("keeps nothing"), "{e}");
        let c = parse(&format!(
            "{MINIMAL}\n[retention]\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 12\n"
        ))
        .unwrap();
        assert_eq!(
            c.retention.unwrap().flags(),
            [
                "--keep-daily",
                "7",
                "--keep-weekly",
                "4",
                "--keep-monthly",
                "12"
            ]
        );
    }

    #[test]
    fn names_durations_and_weekdays_are_checked() {
        let e = error(&MINIMAL.replace("name = \"pg\"", "name = \"p g\""));
        assert!(e.contains("source[0].name"), "{e}");
        let e = error(&format!(
            "{MINIMAL}\n[[source]]\nname = \"pg\"\nkind = \"files\"\npaths = [\"/\"]\n"
        ));
        assert!(e.contains("used twice"), "{e}");
        let e = error(&format!("{MINIMAL}\n[run]\ndeadline = \"soon\"\n"));
        assert!(e.contains("run.deadline"), "{e}");
        let e = error(&format!("{MINIMAL}\n[gc]\nweekdays = [\"caturday\"]\n"));
        assert!(e.contains("gc.weekdays"), "{e}");
        let c = parse(&format!(
            "{MINIMAL}\n[gc]\nweekdays = [\"sun\", \"Wednesday\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.gc.weekdays,
            [
                jiff::civil::Weekday::Sunday,
                jiff::civil::Weekday::Wednesday
            ]
        );
    }
}
