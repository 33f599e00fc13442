//! `cairn run` against the real servers tests/run starts: a CouchDB source
//! (pouchdb-server), a pg_dump source (a private PostgreSQL cluster), a
//! volume, an S3 replica (SeaweedFS); metrics read back with a Prometheus
//! text parser. One nightly story per test, steps in order.
#![allow(clippy::unwrap_used)]

#[path = "support/couch.rs"]
mod couch;
#[path = "support/couch3.rs"]
mod couch3;
#[path = "support/faulty.rs"]
mod faulty;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use couch::Couch;
use serde_json::Value;
use support::{Fixture, cairn_args, ok, run, s3_base, unique_name};

/// The test PostgreSQL (`host:port`) and the script that stops/starts it.
fn pg() -> Option<(String, String, String)> {
    match (
        std::env::var("CAIRN_TEST_PG"),
        std::env::var("CAIRN_TEST_PG_CTL"),
    ) {
        (Ok(addr), Ok(ctl)) => {
            let (host, port) = addr.split_once(':').unwrap();
            Some((host.to_string(), port.to_string(), ctl))
        }
        _ => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_PG").is_none(),
                "CAIRN_TEST_PG is not set: run tests/run"
            );
            eprintln!("skipped: no PostgreSQL (CAIRN_TEST_PG); tests/run starts one");
            None
        }
    }
}

fn psql(host: &str, port: &str, db: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            host,
            "-p",
            port,
        ])
        .args(["-U", "postgres", "-d", db, "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts the test PostgreSQL again when dropped (a failing test must not
/// leave it down for the others).
struct RestartPg(String);
impl Drop for RestartPg {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0).arg("start").output();
    }
}

/// The metrics file, parsed by a Prometheus text-format parser: each
/// sample as `name{label="value"}` → value.
fn metrics(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    assert!(!scrape.docs.is_empty(), "HELP lines parsed");
    scrape
        .samples
        .iter()
        .map(|s| {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let key = if labels.is_empty() {
                s.metric.clone()
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            let value = match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{} is not a gauge: {other:?}", s.metric),
            };
            (key, value)
        })
        .collect()
}

/// The repository's snapshots per `source:` tag: (id, time as seconds).
fn by_source(listing: &Value) -> BTreeMap<String, Vec<(String, f64)>> {
    let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for s in listing.as_array().unwrap() {
        let time: jiff::Timestamp = s["time"].as_str().unwrap().parse().unwrap();
        for t in s["tags"].as_array().unwrap() {
            if let Some(name) = t.as_str().unwrap().strip_prefix("source:") {
                out.entry(name.to_string()).or_default().push((
                    s["id"].as_str().unwrap().to_string(),
                    time.as_millisecond() as f64 / 1000.0,
                ));
            }
        }
    }
    out
}

fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {report:#}"))
}

/// The school's job on the test servers: a CouchDB database, a PostgreSQL
/// database, a volume, an S3 replica, metrics; drills restore into the
/// same servers and a scratch directory.
struct School {
    f: Fixture,
    couch: Couch,
    config: std::path::PathBuf,
    prom: std::path::PathBuf,
    scratch: std::path::PathBuf,
    replica: String,
    pg_host: String,
    pg_port: String,
    pg_ctl: String,
    pg_db: String,
}

impl School {
    fn new() -> Option<School> {
        let (Some(couch), Some(s3), Some((pg_host, pg_port, pg_ctl))) =
            (Couch::from_env(), s3_base(), pg())
        else {
            return None;
        };
        let f = Fixture::new();
        // CouchDB: credentials out of the URL, the password in a file.
        let db = couch.new_db("run");
        couch.populate(&db, 30);
        let url = reqwest::Url::parse(&couch.url).unwrap();
        let password = f.path("couch-password");
        std::fs::write(&password, format!("{}\n", url.password().unwrap())).unwrap();
        let bare = format!("http://{}:{}", url.host_str().unwrap(), url.port().unwrap());
        // PostgreSQL: a database with rows.
        let pg_db = format!("run_{}", unique_name());
        psql(
            &pg_host,
            &pg_port,
            "postgres",
            &format!("CREATE DATABASE {pg_db}"),
        );
        psql(
            &pg_host,
            &pg_port,
            &pg_db,
            "CREATE TABLE grades (id int PRIMARY KEY, score int); \
             INSERT INTO grades SELECT i, i % 100 FROM generate_series(1, 1000) i",
        );
        // A volume.
        let volume = f.path("uploads");
        std::fs::create_dir_all(volume.join("course")).unwrap();
        std::fs::write(volume.join("course/a.html"), "<p>a</p>").unwrap();
        std::fs::write(volume.join("b.bin"), vec![7u8; 100_000]).unwrap();
        std::fs::write(volume.join("course/upload.tmp"), "half an upload").unwrap();
        let replica = format!("{s3}/run-{}", unique_name());
        let prom = f.path("cairn.prom");
        let scratch = f.path("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let config = f.path("cairn.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[repository]
url = "{repo}"
key_file = "{key}"
host = "node4"

[[source]]
name = "lms"
kind = "couchdb"
url = "{bare}"
user = "{user}"
password = {{ file = "{password}" }}
dbs = ["{db}"]

[[source]]
name = "pg"
kind = "command"
command = "pg_dump -Fc {pg_db}"
item = "{pg_db}.dump"
dump = "postgres"
env = {{ PGHOST = "{pg_host}", PGPORT = "{pg_port}", PGUSER = "postgres" }}

[[source]]
name = "uploads"
kind = "files"
paths = ["{volume}"]
exclude = ["*.tmp"]

[retention]
keep_last = 1

[gc]
weekdays = ["daily"]

[[replica]]
name = "offsite"
url = "{replica}"
keep_last = 5

[verify]
read_data_subset = 100

[metrics]
textfile = "{prom}"

[drill]
scratch = "{scratch}"
couchdb_url = "{bare}"
couchdb_user = "{user}"
couchdb_password = {{ file = "{password}" }}
postgres_env = {{ PGHOST = "{pg_host}", PGPORT = "{pg_port}", PGUSER = "postgres" }}
"#,
                repo = f.repo.display(),
                key = f.key.display(),
                user = url.username(),
                password = password.display(),
                volume = volume.display(),
                prom = prom.display(),
                scratch = scratch.display(),
            ),
        )
        .unwrap();
        Some(School {
            f,
            couch,
            config,
            prom,
            scratch,
            replica,
            pg_host,
            pg_port,
            pg_ctl,
            pg_db,
        })
    }
}

#[test]
fn nightly_runs_back_up_every_source_and_a_failed_one_keeps_its_last_success() {
    let Some(School {
        f,
        config,
        prom,
        replica,
        pg_ctl,
        pg_db,
        ..
    }) = School::new()
    else {
        return;
    };
    // Night 1: everything succeeds.
    let night1 = ok(cairn_args(["run", "--json", "--config"]).arg(&config)).json();
    assert_eq!(night1["exit_code"], 0, "{night1:#}");
    for id in [
        "backup/lms",
        "backup/pg",
        "backup/uploads",
        "retention/lms",
        "gc",
        "replicate/offsite",
        "verify",
    ] {
        assert_eq!(step(&night1, id)["status"], "ok", "{id}: {night1:#}");
    }
    let listing = ok(f.cmd("snapshots").arg("--json")).json();
    let first = by_source(&listing);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["lms", "pg", "uploads"],
        "one snapshot per source: {listing:#}"
    );
    assert!(first.values().all(|v| v.len() == 1));
    let replicated = ok(&mut cairn_args(["snapshots", "--json", "--repo", &replica])).json();
    assert_eq!(replicated.as_array().unwrap().len(), 3);
    // The pg snapshot holds the dump pg_dump wrote.
    let dump = ok(f.cmd("restore").args([
        &first["pg"][0].0,
        "--item",
        &format!("{pg_db}.dump"),
        "--stdout",
    ]))
    .stdout;
    assert!(dump.starts_with(b"PGDMP"), "a custom-format dump");
    let listed = ok(f.cmd("ls").args([&first["uploads"][0].0, "-r", "--json"])).stdout_str();
    assert!(listed.contains("uploads/course/a.html"), "{listed}");
    assert!(!listed.contains("upload.tmp"), "excluded: {listed}");
    let m = metrics(&prom);
    assert_eq!(m["cairn_run_success"], 1.0);
    for s in ["lms", "pg", "uploads"] {
        assert_eq!(
            m[&format!("cairn_source_last_attempt_success{{source=\"{s}\"}}")],
            1.0
        );
        assert_eq!(m[&format!("cairn_source_snapshots{{source=\"{s}\"}}")], 1.0);
        let last = m[&format!("cairn_source_last_success_timestamp_seconds{{source=\"{s}\"}}")];
        assert!(
            (last - first[s][0].1).abs() < 0.002,
            "{s}: {last} vs {:?}",
            first[s]
        );
    }
    assert!(m["cairn_source_bytes_read{source=\"uploads\"}"] >= 100_008.0);
    assert_eq!(
        m["cairn_replica_last_attempt_success{replica=\"offsite\"}"],
        1.0
    );
    assert_eq!(m["cairn_replica_lag_seconds{replica=\"offsite\"}"], 0.0);
    assert_eq!(m["cairn_verify_success"], 1.0);
    assert!(m["cairn_repository_stored_bytes"] > 0.0);

    // Night 2: PostgreSQL is down.
    let _restart = RestartPg(pg_ctl.clone());
    let stopped = std::process::Command::new(&pg_ctl)
        .arg("stop")
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let night2 = run(cairn_args(["run", "--json", "--config"]).arg(&config))
        .expect_code(19)
        .stderr_has(&["backup/pg: failed", "pg_dump", "not everything succeeded"])
        .json();
    let pg_step = step(&night2, "backup/pg");
    assert_eq!(pg_step["status"], "failed");
    let message = pg_step["message"].as_str().unwrap();
    assert!(
        message.contains("pg_dump") && message.contains("connection"),
        "pg_dump's own message: {message}"
    );
    assert_eq!(step(&night2, "retention/pg")["status"], "skipped");
    for id in ["backup/lms", "backup/uploads", "replicate/offsite"] {
        assert_eq!(step(&night2, id)["status"], "ok", "{id}: {night2:#}");
    }
    let second = by_source(&ok(f.cmd("snapshots").arg("--json")).json());
    assert_eq!(
        second["pg"], first["pg"],
        "no new pg snapshot; the old one kept"
    );
    for s in ["lms", "uploads"] {
        assert_eq!(second[s].len(), 1, "retention kept the newest {s} only");
        assert_ne!(second[s][0].0, first[s][0].0, "a new {s} snapshot");
    }
    let m = metrics(&prom);
    assert_eq!(m["cairn_run_success"], 0.0);
    assert_eq!(m["cairn_source_last_attempt_success{source=\"pg\"}"], 0.0);
    assert_eq!(m["cairn_source_last_attempt_success{source=\"lms\"}"], 1.0);
    let pg_last = m["cairn_source_last_success_timestamp_seconds{source=\"pg\"}"];
    assert!(
        (pg_last - first["pg"][0].1).abs() < 0.002,
        "pg's last success kept"
    );
    assert!(
        m["cairn_source_last_attempt_timestamp_seconds{source=\"pg\"}"] > pg_last,
        "the attempt is newer than the success"
    );
    assert!(!m.contains_key("cairn_source_bytes_read{source=\"pg\"}"));
}

/// Whether a process runs whose command line contains `marker`.
fn running_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

#[test]
fn a_run_killed_mid_backup_leaves_nothing_that_blocks_the_next() {
    let f = Fixture::new();
    let marker = format!("slow-{}", unique_name());
    let config = f.path("cairn.toml");
    let write_config = |command: &str| {
        std::fs::write(
            &config,
            format!(
                "[repository]\nurl = \"{}\"\nkey_file = \"{}\"\n\
                 [[source]]\nname = \"{marker}\"\nkind = \"command\"\ncommand = \"{command}\"\n\
                 [gc]\nweekdays = [\"daily\"]\n",
                f.repo.display(),
                f.key.display()
            ),
        )
        .unwrap();
    };
    // A dump that writes a little, then hangs.
    write_config("head -c 3000000 /dev/urandom; sleep 30");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cairn"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Mid-backup: the backup's lease is in the repository.
    let started = Instant::now();
    while std::fs::read_dir(f.repo.join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lease appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The step's `cairn backup` dies with the run.
    let tag = format!("source:{marker}");
    let gone = Instant::now();
    while running_with(&tag) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "the backup step outlived its run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ok(f.cmd("snapshots").arg("--json")).json(),
        Value::Array(vec![]),
        "the killed run left no snapshot"
    );
    // The next run completes: no unlocking by hand.
    write_config("echo tonight");
    let report = ok(cairn_args(["run", "--json", "--config"]).arg(&config)).json();
    assert_eq!(report["exit_code"], 0, "{report:#}");
    assert_eq!(step(&report, "gc")["status"], "ok");
    let listing = ok(f.cmd("snapshots").arg("--json")).json();
    assert_eq!(listing.as_array().unwrap().len(), 1);
}

#[test]
fn a_bad_config_is_refused_before_anything_runs() {
    let f = Fixture::new();
    let config = f.path("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{}\"\nkey_file = \"{}\"\n\
             [[source]]\nname = \"pg\"\nkind = \"command\"\ncommand = \"echo x\"\n\
             secret_env = {{ PGPASSWORD = {{ file = \"/nonexistent/pg-password\" }} }}\n",
            f.repo.display(),
            f.key.display()
        ),
    )
    .unwrap();
    run(cairn_args(["run", "--config"]).arg(&config))
        .expect_code(2)
        .stderr_has(&["secret_env.PGPASSWORD", "/nonexistent/pg-password"]);
    assert_eq!(
        ok(f.cmd("snapshots").arg("--json")).json(),
        Value::Array(vec![])
    );
}

/// What drills could leave behind: drill databases on CouchDB and
/// PostgreSQL, files in the scratch directory.
fn leftovers(s: &School) -> Vec<String> {
    let mut out: Vec<String> = s
        .couch
        .ok("GET", "_all_dbs", None)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str())
        .filter(|d| d.starts_with("drill-"))
        .map(str::to_string)
        .collect();
    out.extend(
        psql(
            &s.pg_host,
            &s.pg_port,
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'drill%'",
        )
        .lines()
        .map(str::to_string),
    );
    out.extend(
        std::fs::read_dir(&s.scratch)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string()),
    );
    out
}

#[test]
fn a_drill_restores_every_source_and_fails_naming_a_damaged_one() {
    let Some(school) = School::new() else {
        return;
    };
    let s = &school;
    ok(cairn_args(["run", "--config"]).arg(&s.config));
    let report = ok(cairn_args(["drill", "--json", "--config"]).arg(&s.config)).json();
    assert_eq!(report["passed"], true, "{report:#}");
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    for r in sources {
        assert_eq!(r["status"], "ok", "{r:#}");
        assert!(r["rto_seconds"].as_f64().unwrap() > 0.0, "{r:#}");
    }
    let pg_drill = sources.iter().find(|r| r["source"] == "pg").unwrap();
    assert_eq!(
        pg_drill["checked"], "1 table(s), 1000 rows counted",
        "the loaded rows were compared with the dump's"
    );
    assert_eq!(leftovers(s), Vec::<String>::new(), "nothing left behind");
    let drill_prom = s.prom.with_file_name("cairn-drill.prom");
    let m = metrics(&drill_prom);
    for source in ["lms", "pg", "uploads"] {
        assert_eq!(
            m[&format!("cairn_drill_success{{source=\"{source}\"}}")],
            1.0
        );
        assert!(m[&format!("cairn_drill_rto_seconds{{source=\"{source}\"}}")] > 0.0);
    }
    assert_eq!(
        metrics(&s.prom)["cairn_run_success"],
        1.0,
        "the run's file untouched"
    );

    // Damage the volume's pack: a byte in the middle of the pack holding its
    // 100 kB file (the only pack that large).
    let mut packs = Vec::new();
    let mut dirs = vec![s.f.repo.join("packs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                packs.push(e.path());
            }
        }
    }
    for p in &packs {
        let mut bytes = std::fs::read(p).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(p, bytes).unwrap();
    }
    let failed = run(cairn_args(["drill", "--json", "--config"]).arg(&s.config))
        .expect_code(19)
        .stderr_has(&["cairn drill: FAILED for"]);
    let report = failed.json();
    assert_eq!(report["passed"], false);
    let bad: Vec<&str> = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert!(!bad.is_empty(), "{report:#}");
    for source in &bad {
        assert!(
            failed
                .stderr
                .contains(&format!("cairn drill: {source}: failed")),
            "{}",
            failed.stderr
        );
    }
    assert_eq!(leftovers(s), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn a_step_past_its_timeout_is_killed_and_the_job_goes_on() {
    let f = Fixture::new();
    let marker = format!("hang-{}", unique_name());
    let config = f.path("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{}\"\nkey_file = \"{}\"\n\
             [[source]]\nname = \"{marker}\"\nkind = \"command\"\ncommand = \"sleep 60.4242\"\ntimeout = \"1s\"\n\
             [[source]]\nname = \"quick\"\nkind = \"command\"\ncommand = \"echo fine\"\n",
            f.repo.display(),
            f.key.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let report = run(cairn_args(["run", "--json", "--config"]).arg(&config))
        .expect_code(19)
        .stderr_has(&["timed_out", "killed at its timeout (1s)"])
        .json();
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "not waited out"
    );
    assert_eq!(
        step(&report, &format!("backup/{marker}"))["status"],
        "timed_out"
    );
    assert_eq!(step(&report, "backup/quick")["status"], "ok");
    let listing = by_source(&ok(f.cmd("snapshots").arg("--json")).json());
    assert_eq!(listing.keys().collect::<Vec<_>>(), ["quick"]);
    assert!(
        !running_with(&format!("source:{marker}")),
        "the step was killed"
    );
    assert!(!running_with("sleep 60.4242"), "and what it started");
}

/// The test Pushgateway and promtool (tests/run starts and installs them).
fn pushgateway() -> Option<(String, String)> {
    match (
        std::env::var("CAIRN_TEST_PUSHGATEWAY"),
        std::env::var("CAIRN_TEST_PROMTOOL"),
    ) {
        (Ok(url), Ok(promtool)) => Some((url, promtool)),
        _ => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_PUSHGATEWAY").is_none(),
                "CAIRN_TEST_PUSHGATEWAY is not set: run tests/run"
            );
            eprintln!("skipped: no Pushgateway (CAIRN_TEST_PUSHGATEWAY); tests/run starts one");
            None
        }
    }
}

#[test]
fn metrics_reach_a_pushgateway_one_group_per_source() {
    let Some((gateway, _)) = pushgateway() else {
        return;
    };
    let f = Fixture::new();
    let job = format!("cairn_{}", unique_name());
    let volume = f.path("data");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("a"), "a").unwrap();
    let config = f.path("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{}\"\nkey_file = \"{}\"\n\
             [[source]]\nname = \"files\"\nkind = \"files\"\npaths = [\"{}\"]\n\
             [[source]]\nname = \"broken\"\nkind = \"command\"\ncommand = \"exit 3\"\n\
             [metrics]\npush = \"{gateway}\"\njob = \"{job}\"\n",
            f.repo.display(),
            f.key.display(),
            volume.display()
        ),
    )
    .unwrap();
    run(cairn_args(["run", "--config"]).arg(&config)).expect_code(19);
    // What Prometheus would scrape from the gateway, for this job.
    let text = reqwest::blocking::get(format!("{gateway}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |metric: &str, source: Option<&str>| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.labels.get("job") == Some(&job)
                    && s.labels.get("source") == source
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{metric}: {other:?}"),
            })
    };
    assert_eq!(
        value("cairn_source_last_attempt_success", Some("files")),
        Some(1.0)
    );
    assert_eq!(
        value("cairn_source_last_attempt_success", Some("broken")),
        Some(0.0)
    );
    assert_eq!(value("cairn_source_snapshots", Some("files")), Some(1.0));
    assert!(value("cairn_source_last_success_timestamp_seconds", Some("files")).unwrap() > 1.7e9);
    assert_eq!(value("cairn_run_success", None), Some(0.0));
    // The gateway's own record of each group's last push.
    for source in [Some("files"), Some("broken"), None] {
        assert!(
            value("push_time_seconds", source).is_some(),
            "group {source:?}"
        );
    }
}

#[test]
fn the_alerting_rules_pass_promtool() {
    let Some((_, promtool)) = pushgateway() else {
        return;
    };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/cairn-alerts.yml");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("SUCCESS: 6 rules found"), "{said}");
}
