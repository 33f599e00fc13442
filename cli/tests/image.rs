//! The container image (`deploy/image/build`) as the CronJob runs it: built
//! twice to the same digest, no shell inside, and `cairn run` in it — as uid
//! 65532, read-only root, every capability dropped, host networking — backs
//! up the test servers (pouchdb-server, PostgreSQL, a mounted volume) into a
//! mounted repository and replicates to SeaweedFS; the host's `cairn` then
//! restores every snapshot. tests/run builds the images first and exports
//! `CAIRN_TEST_IMAGE` (the plain image's tag; the `-pg15` variant beside it).
#![allow(clippy::unwrap_used)]

#[path = "support/couch.rs"]
mod couch;
#[path = "support/couch3.rs"]
mod couch3;
#[path = "support/faulty.rs"]
mod faulty;
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use couch::Couch;
use support::{Fixture, cairn_args, files_under, ok, s3_base, unique_name};

/// The image's tag, or `None` (and a note) outside tests/run.
fn image() -> Option<String> {
    match std::env::var("CAIRN_TEST_IMAGE") {
        Ok(tag) => Some(tag),
        Err(_) => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_IMAGE").is_none(),
                "CAIRN_TEST_IMAGE is not set: run tests/run"
            );
            eprintln!("skipped: no image (CAIRN_TEST_IMAGE); tests/run builds one");
            None
        }
    }
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.arg("--storage-driver=vfs");
    c
}

/// Runs `cmd`; its stdout, or a panic naming what it printed.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `podman run` as the CronJob's pod runs: uid 65532, read-only root, no
/// capabilities, host network; the image and its arguments follow.
fn restricted() -> Command {
    let mut c = podman();
    c.args([
        "run",
        "--rm",
        "--runtime=runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--user",
        "65532:65532",
        "--tmpfs",
        "/tmp:rw,mode=1777",
    ]);
    c
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

#[test]
fn the_image_builds_to_the_same_digest_and_holds_no_shell() {
    let Some(image) = image() else { return };
    let digests = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("digest "))
            .map(str::to_string)
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let build = || {
        output(
            Command::new(repo_root().join("deploy/image/build"))
                .args(["--skip-binary", "--pg", "15", "--out"])
                .arg(tmp.path()),
        )
    };
    let (first, second) = (digests(&build()), digests(&build()));
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first, second, "two builds, two digests");
    assert!(
        first
            .iter()
            .any(|l| l.contains(&format!("{image} sha256:"))),
        "{first:?}"
    );

    // Every file of the plain image: the binary, certificates, passwd.
    let container = output(podman().args(["create", &image])).trim().to_string();
    let listing = output(Command::new("sh").arg("-c").arg(format!(
        "podman --storage-driver=vfs export {container} | tar -t; \
         podman --storage-driver=vfs rm {container} >/dev/null"
    )));
    let mut files: Vec<&str> = listing.lines().filter(|l| !l.ends_with('/')).collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/cairn",
        ],
        "the plain image holds cairn and its data only"
    );
    let pg_files = output(Command::new("sh").arg("-c").arg(format!(
        "c=$(podman --storage-driver=vfs create {image}-pg15) && \
         podman --storage-driver=vfs export $c | tar -t; podman --storage-driver=vfs rm $c >/dev/null"
    )));
    for shell in ["bin/sh", "bin/bash", "bin/dash", "bin/busybox"] {
        assert!(
            !pg_files.lines().any(|l| l.ends_with(shell)),
            "{shell} in the pg image"
        );
    }
    for tool in ["pg_dump", "pg_restore", "psql", "createdb", "dropdb"] {
        assert!(
            pg_files.contains(&format!("usr/lib/postgresql/15/bin/{tool}")),
            "{tool} is missing from the pg image"
        );
    }
    let user = output(podman().args(["image", "inspect", "--format", "{{.Config.User}}", &image]));
    assert_eq!(user.trim(), "65532:65532");
    // No shell to start, restricted or not.
    let mut sh = podman();
    sh.args([
        "run",
        "--rm",
        "--runtime=runc",
        "--ulimit",
        "nofile=1024:1024",
    ])
    .args([
        "--ulimit",
        "nproc=1000:1000",
        "--entrypoint",
        "/bin/sh",
        &image,
    ])
    .args(["-c", "true"]);
    assert!(!sh.output().unwrap().status.success(), "a shell ran");
    // The binary is what it claims, static, running restricted.
    let version = output(restricted().args([&image, "--version"]));
    assert!(version.starts_with("cairn "), "{version}");
    // pg_dump finds every library it loads inside its image.
    let pg_dump = output(restricted().args([
        "--entrypoint",
        "/usr/lib/postgresql/15/bin/pg_dump",
        &format!("{image}-pg15"),
        "--version",
    ]));
    assert!(pg_dump.starts_with("pg_dump (PostgreSQL) 15."), "{pg_dump}");
}

fn psql(host: &str, port: &str, db: &str, sql: &str) -> String {
    output(
        Command::new("psql")
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
            .args(["-U", "postgres", "-d", db, "-c", sql]),
    )
}

/// Makes `path` (recursively) belong to the image's user.
fn give_to_image_user(path: &Path) {
    output(Command::new("chown").args(["-R", "65532:65532"]).arg(path));
}

#[test]
fn cairn_run_in_the_image_backs_up_and_replicates_and_the_host_restores_it() {
    let Some(image) = image() else { return };
    let (Some(couch), Some(s3), Ok(pg)) =
        (Couch::from_env(), s3_base(), std::env::var("CAIRN_TEST_PG"))
    else {
        panic!("tests/run starts CouchDB, S3 and PostgreSQL for the image test");
    };
    let (pg_host, pg_port) = pg.split_once(':').unwrap();
    let f = Fixture::new();

    // The servers' data.
    let db = couch.new_db("image");
    couch.populate(&db, 40);
    let want = couch.fingerprint(&db);
    let url = reqwest::Url::parse(&couch.url).unwrap();
    let bare = format!("http://{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let pg_db = format!("image_{}", unique_name());
    psql(
        pg_host,
        pg_port,
        "postgres",
        &format!("CREATE DATABASE {pg_db}"),
    );
    psql(
        pg_host,
        pg_port,
        &pg_db,
        "CREATE TABLE grades (id int PRIMARY KEY, score int); \
         INSERT INTO grades SELECT i, i % 100 FROM generate_series(1, 500) i",
    );
    let volume = f.path("uploads");
    std::fs::create_dir_all(volume.join("course/unit 1")).unwrap();
    std::fs::write(volume.join("course/unit 1/a.html"), "<p>a</p>").unwrap();
    std::fs::write(volume.join("b.bin"), vec![7u8; 300_000]).unwrap();

    // What the pod mounts: secrets as files, the config, the repository.
    let secrets = f.path("secrets");
    for (file, value) in [
        ("couchdb/password", url.password().unwrap().to_string()),
        (
            "offsite/access_key_id",
            std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
        ),
        (
            "offsite/secret_access_key",
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
        ),
    ] {
        let path = secrets.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, value).unwrap();
    }
    std::fs::create_dir_all(secrets.join("cairn")).unwrap();
    std::fs::copy(&f.key, secrets.join("cairn/backup.key")).unwrap();
    // As Kubernetes mounts a Secret for a pod with fsGroup 65532: root's
    // files, readable by that group only.
    output(Command::new("chown").args(["-R", "0:65532"]).arg(&secrets));
    output(
        Command::new("find")
            .arg(&secrets)
            .args(["-type", "f", "-exec", "chmod", "0440", "{}", "+"]),
    );
    let replica = format!("{s3}/image-{}", unique_name());
    let etc = f.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("cairn.toml"),
        format!(
            r#"
[repository]
url = "/srv/backups"
key_file = "/run/secrets/cairn/backup.key"
host = "node4"

[[source]]
name = "lms"
kind = "couchdb"
url = "{bare}"
user = "{user}"
password = {{ file = "/run/secrets/couchdb/password" }}
dbs = ["{db}"]

[[source]]
name = "pg"
kind = "command"
command = ["pg_dump", "-Fc", "{pg_db}"]
item = "{pg_db}.dump"
env = {{ PGHOST = "{pg_host}", PGPORT = "{pg_port}", PGUSER = "postgres" }}

[[source]]
name = "uploads"
kind = "files"
paths = ["/volumes/uploads"]

[[replica]]
name = "offsite"
url = "{replica}"
s3_endpoint = "{endpoint}"
s3_region = "{region}"
access_key_id = {{ file = "/run/secrets/offsite/access_key_id" }}
secret_access_key = {{ file = "/run/secrets/offsite/secret_access_key" }}
verify = true

[verify]
read_data_subset = 100

[metrics]
textfile = "/metrics/cairn.prom"
"#,
            user = url.username(),
            endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap(),
            region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        ),
    )
    .unwrap();
    let metrics = f.path("metrics");
    std::fs::create_dir_all(&metrics).unwrap();
    for owned in [&f.repo, &metrics] {
        give_to_image_user(owned);
    }
    let mount = |host: &Path, at: &str, mode: &str| format!("{}:{at}:{mode}", host.display());

    let mut job = restricted();
    job.args([
        "-v",
        &mount(&f.repo, "/srv/backups", "rw"),
        "-v",
        &mount(&etc, "/etc/cairn", "ro"),
        "-v",
        &mount(&secrets, "/run/secrets", "ro"),
        "-v",
        &mount(&volume, "/volumes/uploads", "ro"),
        "-v",
        &mount(&metrics, "/metrics", "rw"),
        &format!("{image}-pg15"),
        "run",
        "--json",
        "--config",
        "/etc/cairn/cairn.toml",
    ]);
    let out = job.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["exit_code"], 0, "{report:#}");
    assert!(out.status.success());

    // The host reads what the container wrote, in the repository and the replica.
    let listing = ok(f.cmd("snapshots").arg("--json")).json();
    let snaps = listing.as_array().unwrap();
    assert_eq!(snaps.len(), 3, "{listing:#}");
    let id_of = |source: &str| {
        snaps
            .iter()
            .find(|s| {
                s["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == &format!("source:{source}"))
            })
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(snaps.iter().all(|s| s["host"] == "node4"), "{listing:#}");
    let replicated = ok(&mut cairn_args(["snapshots", "--json", "--repo", &replica])).json();
    assert_eq!(replicated.as_array().unwrap().len(), 3, "{replicated:#}");

    // The volume, byte for byte, from the replica.
    let target = f.path("restored");
    ok(cairn_args(["restore", "--repo", &replica, &id_of("uploads"), "--target"]).arg(&target));
    let restored = files_under(&target.join("uploads"));
    assert_eq!(restored, files_under(&volume));
    // The dump, the same from both copies, and PostgreSQL's.
    let item = format!("{pg_db}.dump");
    let dump = |repo: &str| {
        ok(&mut cairn_args([
            "restore",
            "--repo",
            repo,
            &id_of("pg"),
            "--item",
            &item,
            "--stdout",
        ]))
        .stdout
    };
    let local = dump(f.repo.to_str().unwrap());
    assert!(local.starts_with(b"PGDMP"), "a custom-format dump");
    assert!(local == dump(&replica), "the replica's dump differs");
    // CouchDB, every leaf, into a new database.
    let copy = couch.new_db("image_copy");
    ok(&mut cairn_args([
        "restore",
        "couchdb",
        "--repo",
        replica.as_str(),
        &id_of("lms"),
        "--url",
        &couch.url,
        "--db",
        &format!("{db}:{copy}"),
        "--quiet",
    ]));
    couch::assert_same(
        &couch.fingerprint(&copy),
        &want,
        "restored from the replica",
    );
    // Metrics, written by uid 65532 into the mounted directory.
    let prom = metrics.join("cairn.prom");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("cairn_run_success 1"), "{text}");
    assert_eq!(std::fs::metadata(&prom).unwrap().uid(), 65532);

    couch.delete_db(&db);
    couch.delete_db(&copy);
    psql(
        pg_host,
        pg_port,
        "postgres",
        &format!("DROP DATABASE {pg_db}"),
    );
}
