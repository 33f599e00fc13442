//! The `cairn` command end to end: what it prints, what it writes, and the
//! exit code for each kind of failure (the table in `cli/src/exit.rs`).
//! Every failing command must leave the repository as it was.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

// Exit codes, as in cli/src/exit.rs.
const USAGE: i32 = 2;
const DAMAGE: i32 = 3;
const UNREACHABLE: i32 = 4;
const NOT_FOUND: i32 = 5;
const BAD_SIGNATURE: i32 = 6;
const KEY: i32 = 7;
const SOURCE: i32 = 8;
const STORAGE_FULL: i32 = 9;
const ALREADY_EXISTS: i32 = 11;
const BROKEN_PIPE: i32 = 141;

// ---------------------------------------------------------------- keys

#[test]
fn key_generate_prints_the_public_key_writes_a_private_file_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let out = ok(cairn_args(["key", "generate", "--output"]).arg(&path));
    let printed = out.stdout_str();
    let public = printed.strip_suffix('\n').unwrap();
    let hex = public.strip_prefix("ed25519:").unwrap();
    assert!(is_hex64(hex), "{printed:?}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    // `key public` prints exactly the same line.
    let again = ok(cairn_args(["key", "public"]).arg(&path));
    assert_eq!(again.stdout_str(), printed);

    // A second generate refuses and leaves the key alone.
    let before = std::fs::read(&path).unwrap();
    run(cairn_args(["key", "generate", "--output"]).arg(&path))
        .expect_code(KEY)
        .stderr_has(&[path.to_str().unwrap(), "refusing to overwrite"]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        ok(cairn_args(["key", "public"]).arg(&path)).stdout_str(),
        printed
    );
}

#[test]
fn a_missing_key_file_exits_7_and_says_how_to_make_one() {
    let f = Fixture::new();
    let before = f.contents();
    let missing = f.path("no-such-key");
    run(f
        .cmd("backup")
        .arg("--key")
        .arg(&missing)
        .arg("-")
        .write_stdin("x"))
    .expect_code(KEY)
    .stderr_has(&[missing.to_str().unwrap(), "cairn key generate"]);
    run(cairn_args(["key", "public"]).arg(&missing))
        .expect_code(KEY)
        .stderr_has(&["does not exist", "cairn key generate"]);
    assert_unchanged(&before, &f.contents());
}

#[test]
fn a_malformed_or_damaged_key_file_exits_7_naming_the_file() {
    let f = Fixture::new();
    let before = f.contents();
    let garbage = f.path("garbage-key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(f.backup_cmd_with_key(&garbage).arg("-").write_stdin("x"))
        .expect_code(KEY)
        .stderr_has(&[garbage.to_str().unwrap(), "not a Cairn secret key file"]);

    // A key file whose secret no longer matches its public key.
    let damaged = f.path("damaged-key");
    let text = std::fs::read_to_string(&f.key).unwrap();
    let at = text.find("\"secret\": \"").unwrap() + "\"secret\": \"".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(cairn_args(["key", "public"]).arg(&damaged))
        .expect_code(KEY)
        .stderr_has(&[damaged.to_str().unwrap(), "damaged"]);
    run(f.backup_cmd_with_key(&damaged).arg("-").write_stdin("x")).expect_code(KEY);
    assert_unchanged(&before, &f.contents());
}

impl Fixture {
    /// `cairn backup --repo REPO --key KEY` with another key file.
    fn backup_cmd_with_key(&self, key: &Path) -> assert_cmd::Command {
        let mut c = self.cmd("backup");
        c.arg("--key").arg(key);
        c
    }
}

// ---------------------------------------------------------------- happy path

/// A tree with nested directories, an empty directory, a symlink, an empty
/// file, multi-chunk content, odd names and varied modes.
fn make_tree(root: &Path) {
    let dir = |p: &str, mode: u32| {
        std::fs::create_dir_all(root.join(p)).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |p: &str, bytes: &[u8], mode: u32| {
        std::fs::write(root.join(p), bytes).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(root).unwrap();
    dir("etc", 0o755);
    dir("etc/app/conf.d", 0o750);
    dir("empty", 0o700);
    dir("ro", 0o755);
    file("etc/app/app.toml", b"name = \"cairn\"\n", 0o644);
    file("etc/app/conf.d/secret", b"hunter2\n", 0o600);
    file("etc/run.sh", b"#!/bin/sh\necho hi\n", 0o751);
    file("big.bin", &random_bytes(300_000, 1), 0o640);
    file("empty-file", b"", 0o644);
    file(
        "with space \u{e9}.txt",
        "unicode \u{2713}\n".as_bytes(),
        0o644,
    );
    file("ro/readonly.txt", b"read only\n", 0o444);
    std::os::unix::fs::symlink("etc/app/app.toml", root.join("link-to-app")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    // Last: a read-only directory with content (restore must fill it first).
    std::fs::set_permissions(root.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_directory_tree_restores_byte_identical_with_modes_times_and_symlinks() {
    let f = Fixture::new();
    let src = f.path("data/tree");
    make_tree(&src);
    let out = ok(f.backup().arg(&src));
    let line = out.stdout_str();
    assert!(line.starts_with("snapshot "), "{line}");
    assert!(line.contains(" saved: 15 entries "), "{line}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let target = f.path("restored");
    let out = ok(f.cmd("restore").arg("latest").arg("--target").arg(&target));
    let line = out.stdout_str();
    assert!(line.starts_with("restored snapshot "), "{line}");
    assert!(
        line.contains(": 7 files, 6 directories, 2 symlinks, "),
        "{line}"
    );

    let want = tree(&f.path("data"));
    let got = tree(&target);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, node) in &want {
        assert_eq!(&got[name], node, "{name} differs");
    }
    make_writable(&f.path("data"));
    make_writable(&target);
}

#[test]
fn backup_json_reports_its_work_and_an_identical_second_backup_stores_no_new_blobs() {
    let f = Fixture::new();
    let src = f.path("data/tree");
    make_tree(&src);
    let content_len: u64 = tree(&src)
        .values()
        .map(|n| match n {
            Node::File { bytes, .. } => bytes.len() as u64,
            _ => 0,
        })
        .sum();

    // A file changed within a second of its parent's backup is read again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let first = ok(f.backup().arg(&src).arg("--json")).json();
    let snapshot = str_field(&first, "snapshot");
    assert!(is_hex64(snapshot), "{first:#}");
    assert_eq!(first["bytes_read"], content_len);
    assert_eq!(first["items"], 15);
    assert!(first["new_blobs"].as_u64().unwrap() > 0, "{first:#}");
    assert!(
        first["stored_bytes"].as_u64().unwrap() > content_len / 2,
        "{first:#}"
    );
    assert!(first["duration_secs"].as_f64().unwrap() >= 0.0, "{first:#}");
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first:#}");

    let second = ok(f.backup().arg(&src).arg("--json")).json();
    assert_eq!(second["new_blobs"], 0, "{second:#}");
    assert_eq!(second["packs"], 0, "{second:#}");
    // Nothing changed: no file is read again.
    assert_eq!(second["bytes_read"], 0, "{second:#}");
    let files = tree(&src)
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    assert_eq!(second["files_unchanged"], files as u64, "{second:#}");
    assert_eq!(second["parent"], first["snapshot"], "{second:#}");
    assert_ne!(second["snapshot"], first["snapshot"]);
    // Only a manifest was written.
    assert!(
        second["stored_bytes"].as_u64().unwrap() < 10_000,
        "{second:#}"
    );
    assert_eq!(f.snapshots(&[]).len(), 2);
    make_writable(&f.path("data"));
}

#[test]
fn stdin_and_command_backups_restore_exact_bytes_to_stdout() {
    let f = Fixture::new();
    let data = random_bytes(100_000, 7);
    let from_stdin = f.backup_bytes("db.dump", &data, &[]);
    let stdin_id = str_field(&from_stdin, "snapshot").to_string();
    assert_eq!(from_stdin["bytes_read"], 100_000);

    // Without --name the item is called "stdin".
    let unnamed = ok(f.backup().args(["-", "--json"]).write_stdin("plain")).json();

    let command = r"printf 'alpha\nbeta\n%s' tail";
    let from_command = ok(f.backup().args(["--command", command, "--json"])).json();
    let command_id = str_field(&from_command, "snapshot").to_string();

    assert_eq!(
        f.restore_stdout(&stdin_id[..8], Some("db.dump")),
        data,
        "restore by id prefix and item"
    );
    assert_eq!(
        f.restore_stdout(str_field(&unnamed, "snapshot"), Some("stdin")),
        b"plain"
    );
    // One file item: --item may be left out.
    assert_eq!(f.restore_stdout(&command_id, None), b"alpha\nbeta\ntail");
    assert_eq!(
        f.restore_stdout("latest", Some("command")),
        b"alpha\nbeta\ntail"
    );

    // --output: to a new file, never over an existing one.
    let out = f.path("restored.dump");
    let summary = ok(f
        .cmd("restore")
        .args([&stdin_id[..], "--item", "db.dump", "--json", "--output"])
        .arg(&out))
    .json();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(summary["bytes"], 100_000);
    let again = f
        .cmd("restore")
        .args([&stdin_id[..], "--item", "db.dump", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let list = f.snapshots(&[]);
    let cmd_snapshot = list.iter().find(|s| s["id"] == command_id).unwrap();
    assert_eq!(cmd_snapshot["source"]["kind"], "command");
    assert_eq!(cmd_snapshot["source"]["command"], command);
    assert_eq!(cmd_snapshot["source"]["exit_status"], 0);
    assert_eq!(cmd_snapshot["paths"][0], "command");
    let stdin_snapshot = list.iter().find(|s| s["id"] == stdin_id).unwrap();
    assert_eq!(stdin_snapshot["source"]["kind"], "stdin");
    assert_eq!(stdin_snapshot["paths"][0], "db.dump");
    assert_eq!(stdin_snapshot["totals"]["files"], 1);
    assert_eq!(stdin_snapshot["total_len"], 100_000);
}

#[test]
fn restore_json_summarises_what_was_written() {
    let f = Fixture::new();
    let id = str_field(&f.backup_bytes("a.txt", b"hello", &[]), "snapshot").to_string();
    let target = f.path("out");
    let out = ok(f
        .cmd("restore")
        .args(["latest", "--json", "--target"])
        .arg(&target))
    .json();
    assert_eq!(out["snapshot"], id);
    assert_eq!(out["files"], 1);
    assert_eq!(out["dirs"], 0);
    assert_eq!(out["symlinks"], 0);
    assert_eq!(out["bytes"], 5);
    assert_eq!(std::fs::read(target.join("a.txt")).unwrap(), b"hello");
}

#[test]
fn snapshots_json_lists_oldest_first_with_every_field_and_filters_by_tag_and_host() {
    let f = Fixture::new();
    let backup = |host: &str, tags: &[&str], data: &str| -> String {
        let mut c = f.cmd("backup");
        c.arg("--key")
            .arg(&f.key)
            .args(["--host", host, "-", "--name", "x", "--json"]);
        for t in tags {
            c.args(["--tag", t]);
        }
        str_field(&ok(c.write_stdin(data)).json(), "snapshot").to_string()
    };
    let a = backup("alpha", &["daily"], "one");
    let b = backup("beta", &["daily", "db"], "two");
    let c = backup("alpha", &["weekly"], "three");

    let list = f.snapshots(&[]);
    assert_eq!(ids(&list), [a.as_str(), b.as_str(), c.as_str()]);
    let times: Vec<jiff::Timestamp> = list
        .iter()
        .map(|s| str_field(s, "time").parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    for s in &list {
        assert!(is_hex64(str_field(s, "id")));
        assert_eq!(str_field(s, "signer"), f.public);
        assert!(s["host"].is_string() && s["tags"].is_array(), "{s:#}");
        assert_eq!(s["paths"][0], "x");
    }
    assert_eq!(list[1]["host"], "beta");
    assert_eq!(list[1]["tags"], serde_json::json!(["daily", "db"]));

    assert_eq!(
        ids(&f.snapshots(&["--host", "alpha"])),
        [a.as_str(), c.as_str()]
    );
    assert_eq!(
        ids(&f.snapshots(&["--tag", "daily"])),
        [a.as_str(), b.as_str()]
    );
    assert_eq!(
        ids(&f.snapshots(&["--tag", "daily", "--tag", "db"])),
        [b.as_str()]
    );
    assert_eq!(
        ids(&f.snapshots(&["--host", "alpha", "--tag", "daily"])),
        [a.as_str()]
    );
    assert!(f.snapshots(&["--host", "gamma"]).is_empty());

    // restore applies the same filters to `latest`.
    let pick = |args: &[&str]| ok(f.cmd("restore").args(["latest", "--stdout"]).args(args)).stdout;
    assert_eq!(pick(&[]), b"three");
    assert_eq!(pick(&["--host", "beta"]), b"two");
    assert_eq!(pick(&["--tag", "daily"]), b"two");
    assert_eq!(pick(&["--host", "alpha", "--tag", "daily"]), b"one");
    run(f
        .cmd("restore")
        .args(["latest", "--stdout", "--tag", "monthly"]))
    .expect_code(NOT_FOUND)
    .stderr_has(&["no snapshot matches", "cairn snapshots"]);

    // The table: a header, one row per snapshot, a count.
    let table = ok(f.cmd("snapshots").args(["--tag", "daily"])).stdout_str();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(
        lines[1].starts_with(&a[..8]) && lines[2].starts_with(&b[..8]),
        "{table}"
    );
    assert!(lines[2].ends_with("daily,db"), "{table}");
    assert_eq!(lines[3], "2 snapshots");
}

#[test]
fn environment_variables_stand_in_for_repo_key_and_trust_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let public = generate_key(&key);
    let repo = tmp.path().join("repo");
    let env = |c: &mut assert_cmd::Command| {
        c.env("CAIRN_REPO", &repo);
        c.env("CAIRN_KEY_FILE", &key);
        c.env("CAIRN_HOST", "from-env");
    };
    let mut init = cairn_args(["init", "--trust", &public]);
    env(&mut init);
    ok(&mut init);
    assert!(repo.join("config").is_file());

    let mut backup = cairn_args(["backup", "-", "--name", "e.txt"]);
    env(&mut backup);
    ok(backup.write_stdin("via env"));

    let mut snapshots = cairn_args(["snapshots", "--json"]);
    env(&mut snapshots);
    let list = ok(&mut snapshots).json();
    assert_eq!(list[0]["host"], "from-env");
    assert_eq!(list[0]["signer"], public.as_str());

    let mut restore = cairn_args(["restore", "latest", "--stdout"]);
    env(&mut restore);
    assert_eq!(ok(&mut restore).stdout, b"via env");

    // CAIRN_TRUST overrides the repository's list, like --trust.
    let other = generate_key(&tmp.path().join("other"));
    let mut snapshots = cairn_args(["snapshots", "--json"]);
    env(&mut snapshots);
    snapshots.env("CAIRN_TRUST", &other);
    assert_eq!(
        run(&mut snapshots).expect_code(BAD_SIGNATURE).json(),
        serde_json::json!([])
    );

    let mut verify = cairn_args(["verify"]);
    env(&mut verify);
    ok(&mut verify).stdout_has(&["no damage found"]);
}

// ---------------------------------------------------------------- --before

#[test]
fn restore_before_picks_the_newest_snapshot_at_or_before_the_time() {
    let f = Fixture::new();
    let first = f.backup_bytes("doc.txt", b"version 1", &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let second = f.backup_bytes("doc.txt", b"version 2", &[]);
    let t1: jiff::Timestamp = str_field(&first, "time").parse().unwrap();
    let t2: jiff::Timestamp = str_field(&second, "time").parse().unwrap();
    assert!(t2.as_second() > t1.as_second(), "{t1} {t2}");

    let before = |time: &str| run(f.cmd("restore").args(["--before", time, "--stdout"]));
    // The whole second after the first backup lies between the two.
    let between = jiff::Timestamp::from_second(t1.as_second() + 1).unwrap();
    let between_z = between.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(before(&between_z).expect_code(0).stdout, b"version 1");
    // The same instant written with an offset.
    let plus2 = between
        .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    assert!(plus2.ends_with("+02:00"), "{plus2}");
    assert_eq!(before(&plus2).expect_code(0).stdout, b"version 1");
    // "At or before" includes the exact time.
    assert_eq!(
        before(str_field(&first, "time")).expect_code(0).stdout,
        b"version 1"
    );
    assert_eq!(
        before(str_field(&second, "time")).expect_code(0).stdout,
        b"version 2"
    );
    assert_eq!(
        before("2999-01-01T00:00:00Z").expect_code(0).stdout,
        b"version 2"
    );

    // Before every snapshot: not found, saying what was asked.
    let too_early = jiff::Timestamp::from_second(t1.as_second() - 1).unwrap();
    let too_early_z = too_early.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    before(&too_early_z).expect_code(NOT_FOUND).stderr_has(&[
        "at or before",
        &too_early_z,
        "cairn snapshots",
    ]);
}

#[test]
fn a_time_without_an_offset_is_a_usage_error() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let target = f.path("out");
    for time in ["2026-11-20T10:00:00", "2026-11-20", "yesterday"] {
        run(f
            .cmd("restore")
            .args(["--before", time, "--target"])
            .arg(&target))
        .expect_code(USAGE)
        .stderr_has(&[time, "offset", "2026-11-20T23:59:59Z"]);
    }
    assert!(!target.exists());
    assert_unchanged(&before, &f.contents());
}

// ---------------------------------------------------------------- usage errors (2)

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    run(f.backup().args(["--bogus", "-"]).write_stdin("x"))
        .expect_code(USAGE)
        .stderr_has(&["--bogus", "Usage:"]);
    run(&mut cairn_args(["frobnicate"]))
        .expect_code(USAGE)
        .stderr_has(&["frobnicate"]);
    run(f.cmd("verify").args(["--read-data-subset", "150"]))
        .expect_code(USAGE)
        .stderr_has(&["150", "between 0 and 100"]);
    assert_unchanged(&before, &f.contents());
}

#[test]
fn restore_without_a_destination_is_a_usage_error() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    run(f.cmd("restore").arg("latest"))
        .expect_code(USAGE)
        .stderr_has(&["--target", "--stdout"]);
    assert_unchanged(&before, &f.contents());
}

#[test]
fn an_unknown_snapshot_selector_is_a_usage_error() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let target = f.path("out");
    for selector in ["xyz", "lates", "abc"] {
        run(f.cmd("restore").arg(selector).arg("--target").arg(&target))
            .expect_code(USAGE)
            .stderr_has(&[&format!("{selector:?}"), "latest", "--before"]);
    }
    assert!(!target.exists());
    assert_unchanged(&before, &f.contents());
}

#[test]
fn backup_arguments_that_make_no_sense_are_usage_errors_and_write_nothing() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    run(&mut f.backup())
        .expect_code(USAGE)
        .stderr_has(&["nothing to back up"]);
    let dir = f.path("d");
    std::fs::create_dir(&dir).unwrap();
    run(f.backup().arg(&dir).args(["--name", "x"]))
        .expect_code(USAGE)
        .stderr_has(&["--name"]);
    run(f.backup().arg(&dir).arg("-"))
        .expect_code(USAGE)
        .stderr_has(&["cannot be mixed"]);
    run(f.backup().args(["--command", "true"]).arg(&dir)).expect_code(USAGE);
    assert_unchanged(&before, &f.contents());
}

#[test]
fn restore_stdout_of_a_snapshot_with_several_files_needs_item() {
    let f = Fixture::new();
    let src = f.path("d");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), "A").unwrap();
    std::fs::write(src.join("b"), "B").unwrap();
    ok(f.backup().arg(&src));
    run(f.cmd("restore").args(["latest", "--stdout"]))
        .expect_code(USAGE)
        .stderr_has(&["holds several files", "--item", "\"d/a\""]);
    assert_eq!(f.restore_stdout("latest", Some("d/b")), b"B");
    run(f
        .cmd("restore")
        .args(["latest", "--stdout", "--item", "d/zzz"]))
    .expect_code(NOT_FOUND)
    .stderr_has(&["\"d/zzz\"", "cairn ls"]);
}

// ---------------------------------------------------------------- verify and damage (3)

#[test]
fn verify_of_a_clean_repository_exits_0() {
    let f = Fixture::new();
    f.backup_bytes("a", &random_bytes(200_000, 3), &[]);
    f.backup_bytes("b", b"small", &[]);
    let before = f.contents();
    let out = ok(&mut f.cmd("verify"));
    assert!(
        out.stdout_str().ends_with("\nno damage found\n"),
        "{}",
        out.stdout_str()
    );
    assert!(
        out.stdout_str()
            .starts_with("2 snapshots (2 intact, 0 damaged)")
    );
    let out = ok(f.cmd("verify").arg("--read-data"));
    assert!(out.stdout_str().ends_with("\nno damage found\n"));
    let report = ok(f.cmd("verify").args(["--read-data", "--json"])).json();
    assert_eq!(report["clean"], true);
    assert_eq!(report["snapshots"], 2);
    assert_eq!(report["snapshots_intact"], 2);
    assert_eq!(report["damaged_snapshots"], serde_json::json!([]));
    assert!(report["blobs_checked"].as_u64().unwrap() > 0);
    assert_unchanged(&before, &f.contents());
}

/// A repository with an intact snapshot (`notes.txt`) and one whose 3 MB
/// item `db.dump` lives in the largest pack.
struct TwoSnapshots {
    f: Fixture,
    notes: String,
    dump: String,
    dump_data: Vec<u8>,
}

fn two_snapshots() -> TwoSnapshots {
    let f = Fixture::new();
    let notes = str_field(&f.backup_bytes("notes.txt", b"keep me\n", &[]), "snapshot").to_string();
    let dump_data = random_bytes(3_000_000, 5);
    let dump = str_field(&f.backup_bytes("db.dump", &dump_data, &[]), "snapshot").to_string();
    TwoSnapshots {
        f,
        notes,
        dump,
        dump_data,
    }
}

fn flip_byte_in_the_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_a_pack_fails_verify_read_data_naming_the_snapshot_and_item() {
    let t = two_snapshots();
    let f = &t.f;
    flip_byte_in_the_middle(&largest_pack(&f.repo));
    let damaged = f.contents();

    let out = run(f.cmd("verify").arg("--read-data"))
        .expect_code(DAMAGE)
        .stdout_has(&[
            &format!("damaged snapshot {}", t.dump),
            "item db.dump:",
            "hash mismatch",
        ]);
    let text = out.stdout_str();
    assert!(text.ends_with("\nDAMAGE FOUND\n"), "{text}");
    assert!(
        !text.contains(&t.notes),
        "the intact snapshot is not named:\n{text}"
    );

    let report = run(f.cmd("verify").args(["--read-data", "--json"]))
        .expect_code(DAMAGE)
        .json();
    assert_eq!(report["clean"], false);
    assert_eq!(report["snapshots"], 2);
    assert_eq!(report["snapshots_intact"], 1);
    let list = report["damaged_snapshots"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{report:#}");
    assert_eq!(list[0]["id"], t.dump);
    assert_eq!(list[0]["items"][0]["name"], "db.dump");
    assert!(
        !list[0]["items"][0]["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Restore refuses, naming the item and what to run; the intact one restores.
    let target = f.path("out");
    run(f
        .cmd("restore")
        .arg(&t.dump[..8])
        .arg("--target")
        .arg(&target))
    .expect_code(DAMAGE)
    .stderr_has(&["\"db.dump\"", &t.dump[..8], "corrupt", "cairn verify"]);
    assert!(
        !target.join("db.dump").exists(),
        "no damaged file under the real name"
    );
    run(f.cmd("restore").args([&t.dump[..8], "--stdout"]))
        .expect_code(DAMAGE)
        .stderr_has(&["\"db.dump\""]);
    assert_eq!(f.restore_stdout(&t.notes, None), b"keep me\n");
    assert_unchanged(&damaged, &f.contents());
}

#[test]
fn a_deleted_pack_fails_verify_without_read_data() {
    let t = two_snapshots();
    let f = &t.f;
    let pack = largest_pack(&f.repo);
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&pack).unwrap();
    let damaged = f.contents();

    let out = run(&mut f.cmd("verify")).expect_code(DAMAGE).stdout_has(&[
        &format!("pack {pack_id} is missing"),
        &format!("damaged snapshot {}", t.dump),
        // The pack held the snapshot's directory node too: its whole tree.
        "item /:",
        "DAMAGE FOUND",
    ]);
    assert!(!out.stdout_str().contains(&t.notes));
    let report = run(f.cmd("verify").arg("--json"))
        .expect_code(DAMAGE)
        .json();
    assert_eq!(report["clean"], false);
    assert_eq!(report["damaged_snapshots"][0]["items"][0]["name"], "/");

    run(f.cmd("restore").args(["latest", "--stdout"]))
        .expect_code(DAMAGE)
        .stderr_has(&[&pack_id, "missing", "item \"/\"", "cairn verify"]);
    assert_eq!(f.restore_stdout(&t.notes, None), b"keep me\n");
    assert_unchanged(&damaged, &f.contents());
    let _ = t.dump_data;
}

/// Replaces the host `test` by `evil` in a manifest's signed body.
fn tamper_host(manifest: &[u8]) -> Vec<u8> {
    let needle = b"\"host\":\"test\"";
    let at = manifest
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut out = manifest.to_vec();
    out[at..at + needle.len()].copy_from_slice(b"\"host\":\"evil\"");
    out
}

#[test]
fn a_manifest_edited_in_place_is_damage_for_verify_and_restore() {
    let t = two_snapshots();
    let f = &t.f;
    let path = f.repo.join("snapshots").join(&t.dump);
    std::fs::write(&path, tamper_host(&std::fs::read(&path).unwrap())).unwrap();
    let damaged = f.contents();

    run(&mut f.cmd("verify"))
        .expect_code(DAMAGE)
        .stdout_has(&[&format!("damaged snapshot {}", t.dump), "corrupt"]);
    // The object no longer hashes to its name, and that is checked before
    // the signature: so restore reports damage (3), not a bad signature (6).
    run(f.cmd("restore").args([&t.dump[..8], "--stdout"]))
        .expect_code(DAMAGE)
        .stderr_has(&[&t.dump[..8], "corrupt"]);
    // It is not listed, and `latest` passes over it, with a warning.
    let listed = run(f.cmd("snapshots").arg("--json")).expect_code(0);
    assert!(listed.stderr.contains(&t.dump[..8]), "{}", listed.stderr);
    assert_eq!(ids(listed.json().as_array().unwrap()), [t.notes.as_str()]);
    assert_unchanged(&damaged, &f.contents());
}

#[test]
fn a_manifest_edited_and_renamed_to_its_new_hash_has_a_bad_signature() {
    let t = two_snapshots();
    let f = &t.f;
    let old = f.repo.join("snapshots").join(&t.dump);
    let forged = tamper_host(&std::fs::read(&old).unwrap());
    let forged_id = cairn_store::id::SnapshotId::of(&forged).to_hex();
    std::fs::remove_file(&old).unwrap();
    std::fs::write(f.repo.join("snapshots").join(&forged_id), &forged).unwrap();
    let damaged = f.contents();

    run(&mut f.cmd("verify")).expect_code(DAMAGE).stdout_has(&[
        &format!("damaged snapshot {forged_id}"),
        "signature check failed",
    ]);
    run(f.cmd("restore").args([&forged_id[..8], "--stdout"]))
        .expect_code(BAD_SIGNATURE)
        .stderr_has(&[&forged_id, "signature check failed", "do not trust"]);
    assert_eq!(ids(&f.snapshots(&[])), [t.notes.as_str()]);
    assert_unchanged(&damaged, &f.contents());
}

// ---------------------------------------------------------------- signatures and trust (6)

#[test]
fn a_backup_signed_by_an_untrusted_key_exits_6_and_writes_nothing() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let stranger = f.path("stranger");
    let stranger_public = generate_key(&stranger);
    run(f
        .backup_cmd_with_key(&stranger)
        .arg("-")
        .write_stdin(random_bytes(1_000_000, 9)))
    .expect_code(BAD_SIGNATURE)
    .stderr_has(&[
        &stranger_public,
        "not one of this repository's trusted keys",
    ]);
    assert_unchanged(&before, &f.contents());
}

#[test]
fn trusting_another_key_hides_and_rejects_the_repositorys_snapshots() {
    let f = Fixture::new();
    let id = str_field(&f.backup_bytes("doc.txt", b"v", &[]), "snapshot").to_string();
    let before = f.contents();
    let other = generate_key(&f.path("other"));

    // Nothing listed because every snapshot was refused: a signature error.
    let listed =
        run(f.cmd("snapshots").args(["--json", "--trust", &other])).expect_code(BAD_SIGNATURE);
    assert_eq!(listed.json(), serde_json::json!([]));
    assert!(listed.stderr.contains(&f.public), "{}", listed.stderr);
    assert!(
        listed.stderr.contains("1 snapshot refused"),
        "{}",
        listed.stderr
    );
    let table = run(f.cmd("snapshots").args(["--trust", &other]))
        .expect_code(BAD_SIGNATURE)
        .stdout_str();
    assert!(table.ends_with("\n0 snapshots\n"), "{table}");

    run(f.cmd("verify").args(["--trust", &other]))
        .expect_code(DAMAGE)
        .stdout_has(&[
            &format!("damaged snapshot {id}"),
            "not trusted",
            "DAMAGE FOUND",
        ]);
    run(f
        .cmd("restore")
        .args([&id[..8], "--stdout", "--trust", &other]))
    .expect_code(BAD_SIGNATURE)
    .stderr_has(&[&f.public, "not trusted", "--trust"]);
    // Naming both keys accepts it again.
    let both = format!("{other},{}", f.public);
    assert_eq!(
        ok(f.cmd("restore")
            .args([&id[..8], "--stdout", "--trust", &both]))
        .stdout,
        b"v"
    );
    assert_unchanged(&before, &f.contents());
}

// ---------------------------------------------------------------- unreachable storage (4)

/// `cairn` pointed at an S3 endpoint where nothing listens, with dummy
/// credentials (else the AWS client asks the instance metadata service).
fn unreachable_s3(subcommand: &str) -> assert_cmd::Command {
    let mut c = cairn();
    c.args([
        subcommand,
        "--repo",
        "s3://b/p",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--timeout",
        "3",
    ]);
    for v in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        c.env_remove(v);
    }
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    c
}

#[test]
fn verify_of_an_unreachable_store_exits_4_within_the_timeout() {
    let started = Instant::now();
    run(&mut unreachable_s3("verify"))
        .expect_code(UNREACHABLE)
        .stderr_has(&[
            "could not check the repository",
            "s3://b/p",
            "unreachable",
            "127.0.0.1:9",
            "check the address and the network",
        ]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn snapshots_and_restore_of_an_unreachable_store_exit_4() {
    run(&mut unreachable_s3("snapshots"))
        .expect_code(UNREACHABLE)
        .stderr_has(&[
            "s3://b/p",
            "unreachable",
            "check the address and the network",
        ]);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    run(unreachable_s3("restore")
        .arg("latest")
        .arg("--target")
        .arg(&target))
    .expect_code(UNREACHABLE)
    .stderr_has(&["s3://b/p", "unreachable"]);
    assert!(!target.exists());
}

// ---------------------------------------------------------------- not found (5)

#[test]
fn a_path_without_a_repository_exits_5_and_suggests_cairn_init() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    generate_key(&key);
    let nowhere = tmp.path().join("nowhere");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for repo in [&nowhere, &empty] {
        let hint = format!("cairn init --repo {}", repo.display());
        run(cairn_args(["snapshots", "--repo"]).arg(repo))
            .expect_code(NOT_FOUND)
            .stderr_has(&["no Cairn repository", &hint]);
        run(cairn_args(["restore", "latest", "--stdout", "--repo"]).arg(repo))
            .expect_code(NOT_FOUND)
            .stderr_has(&[hint.as_str()]);
        run(cairn_args(["backup", "-", "--key"])
            .arg(&key)
            .arg("--repo")
            .arg(repo)
            .write_stdin("x"))
        .expect_code(NOT_FOUND)
        .stderr_has(&[hint.as_str()]);
    }
    assert!(!nowhere.exists(), "nothing was created");
    assert!(files_under(&empty).is_empty());
}

#[test]
fn verify_of_a_path_without_a_repository_exits_5() {
    let tmp = tempfile::tempdir().unwrap();
    run(cairn_args(["verify", "--repo"]).arg(tmp.path().join("nowhere")))
        .expect_code(NOT_FOUND)
        .stderr_has(&["cairn init"]);
}

#[test]
fn restoring_a_snapshot_that_does_not_exist_exits_5() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let target = f.path("out");
    run(f
        .cmd("restore")
        .arg("deadbeef")
        .arg("--target")
        .arg(&target))
    .expect_code(NOT_FOUND)
    .stderr_has(&["snapshot deadbeef not found", "cairn snapshots"]);
    assert!(!target.exists());
    run(f
        .cmd("restore")
        .args(["latest", "--item", "nope"])
        .arg("--target")
        .arg(&target))
    .expect_code(NOT_FOUND)
    .stderr_has(&["\"nope\"", "cairn ls"]);
    assert_unchanged(&before, &f.contents());

    // An empty repository has no `latest`.
    let g = Fixture::new();
    run(g.cmd("restore").args(["latest", "--stdout"]))
        .expect_code(NOT_FOUND)
        .stderr_has(&["no snapshot matches"]);
}

// ---------------------------------------------------------------- failing source (8)

#[test]
fn a_failing_command_exits_8_with_its_status_and_stderr_and_writes_no_snapshot() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    run(f.backup().args([
        "--command",
        "echo partial; echo 'pg_dump: connection refused' >&2; exit 4",
        "--name",
        "db.sql",
    ]))
    .expect_code(SOURCE)
    .stderr_has(&["db.sql", "status 4", "connection refused"]);
    assert_unchanged_but_new_packs(&before, &f.contents());
    assert_eq!(f.snapshots(&[]).len(), 1);

    // A command killed by a signal, and a missing source file, are failures too.
    run(f.backup().args(["--command", "kill -9 $$"]))
        .expect_code(SOURCE)
        .stderr_has(&["signal"]);
    let missing = f.path("no-such-file");
    run(f.backup().arg(&missing))
        .expect_code(SOURCE)
        .stderr_has(&["no-such-file", "No such file"]);
    assert_unchanged_but_new_packs(&before, &f.contents());
    assert_eq!(f.snapshots(&[]).len(), 1);
}

// ---------------------------------------------------------------- already exists (11)

#[test]
fn restoring_into_a_non_empty_directory_exits_11_and_touches_nothing() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let target = f.path("out");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), "mine").unwrap();
    run(f.cmd("restore").arg("latest").arg("--target").arg(&target))
        .expect_code(ALREADY_EXISTS)
        .stderr_has(&[
            target.to_str().unwrap(),
            "not empty",
            "new or empty directory",
        ]);
    assert_eq!(names(&files_under(&target)), ["precious"]);
    assert_eq!(std::fs::read(target.join("precious")).unwrap(), b"mine");
    assert_unchanged(&before, &f.contents());

    // An existing empty directory is fine.
    let empty = f.path("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(f.cmd("restore").arg("latest").arg("--target").arg(&empty));
    assert_eq!(std::fs::read(empty.join("doc.txt")).unwrap(), b"v");
}

#[test]
fn init_twice_exits_11_and_keeps_the_repository() {
    let f = Fixture::new();
    f.backup_bytes("doc.txt", b"v", &[]);
    let before = f.contents();
    let other = generate_key(&f.path("other"));
    run(f.cmd("init").args(["--trust", &other]))
        .expect_code(ALREADY_EXISTS)
        .stderr_has(&[f.repo.to_str().unwrap(), "already exists"]);
    assert_unchanged(&before, &f.contents());
    assert_eq!(f.restore_stdout("latest", None), b"v");
}

#[test]
fn init_prints_the_repository_and_its_trusted_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let a = generate_key(&tmp.path().join("a"));
    let b = generate_key(&tmp.path().join("b"));
    let repo = tmp.path().join("r");
    let out = ok(
        cairn_args(["init", "--json", "--trust", &format!("{a},{b}")])
            .arg("--repo")
            .arg(&repo),
    )
    .json();
    assert!(is_hex64(str_field(&out, "repository")), "{out:#}");
    assert_eq!(out["url"], repo.to_str().unwrap());
    assert_eq!(out["trusted_keys"], serde_json::json!([a, b]));

    let open = tmp.path().join("open");
    let text = ok(cairn_args(["init", "--repo"]).arg(&open)).stdout_str();
    assert!(text.starts_with("created repository "), "{text}");
    assert!(text.contains("any valid signature is accepted"), "{text}");
    run(cairn_args(["init", "--trust", "ed25519:abcd", "--repo"]).arg(tmp.path().join("bad")))
        .expect_code(USAGE)
        .stderr_has(&["ed25519:abcd", "cairn key generate"]);
}

// ---------------------------------------------------------------- closed pipe (141)

#[test]
fn restore_to_a_closed_pipe_exits_141_quietly() {
    let f = Fixture::new();
    let data = random_bytes(4_000_000, 13);
    f.backup_bytes("big.bin", &data, &[]);
    let err = f.path("stderr");
    let status = f.path("status");
    let head = f.path("head");
    // $0 = cairn, $1 = repo, $2..$4 = files for stderr, exit status, head's output.
    let script =
        r#"{ "$0" restore --repo "$1" latest --stdout 2>"$2"; echo $? >"$3"; } | head -c 10 >"$4""#;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .arg(&f.repo)
        .arg(&err)
        .arg(&status)
        .arg(&head)
        .env_remove("CAIRN_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&head).unwrap(), &data[..10]);
    assert_eq!(
        std::fs::read_to_string(&status).unwrap().trim(),
        BROKEN_PIPE.to_string()
    );
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "", "no error text");
}

// ---------------------------------------------------------------- full disk (9)

/// Unmounts a tmpfs when dropped, even if the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_exits_9_and_keeps_earlier_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!(
                "note: skipping the full-disk test: cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {other:?}; \
                 store/tests/faults.rs covers a full disk by fault injection"
            );
            return;
        }
    }
    let _unmount = Mounted(mnt.clone());

    let key = tmp.path().join("key");
    let public = generate_key(&key);
    let repo = mnt.join("repo");
    ok(cairn_args(["init", "--trust", &public])
        .arg("--repo")
        .arg(&repo));
    let backup = || {
        let mut c = cairn_args(["backup", "--key"]);
        c.arg(&key).arg("--repo").arg(&repo);
        c
    };
    ok(backup()
        .args(["-", "--name", "small"])
        .write_stdin("small data"));
    let before = files_under(&repo);

    let big = tmp.path().join("big.bin");
    std::fs::write(&big, random_bytes(40 << 20, 17)).unwrap();
    run(backup().arg(&big))
        .expect_code(STORAGE_FULL)
        .stderr_has(&["no space left", "free space or raise the quota"]);
    assert_unchanged_but_new_packs(&before, &files_under(&repo));

    let restore = cairn_args(["restore", "latest", "--stdout", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(restore.status.success(), "{restore:?}");
    assert_eq!(restore.stdout, b"small data");
    ok(cairn_args(["verify", "--read-data", "--repo"]).arg(&repo)).stdout_has(&["no damage found"]);
}

// ---------------------------------------------------------------- output hygiene

#[test]
fn warnings_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let f = Fixture::new();
    // A socket inside a directory is skipped with a logged warning.
    let dir = f.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
    let out = ok(f.backup().arg(&dir));
    assert!(out.stderr.contains("skipping"), "{:?}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
}

// ---------------------------------------------------------------- S3

#[test]
fn the_happy_path_works_against_s3() {
    let Some(base) = s3_base() else { return };
    let url = format!("{base}/cli-{}", unique_name());
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let public = generate_key(&key);
    let with_repo = |sub: &str| {
        let mut c = cairn_args([sub, "--repo", &url, "--timeout", "20"]);
        c.env_remove("CAIRN_S3_ENDPOINT");
        c
    };
    let out = ok(with_repo("init").args(["--trust", &public]));
    assert!(out.stdout_str().contains(&url), "{}", out.stdout_str());
    run(with_repo("init").args(["--trust", &public]))
        .expect_code(ALREADY_EXISTS)
        .stderr_has(&[&url, "already exists"]);

    let src = tmp.path().join("data/tree");
    make_tree(&src);
    let first = ok(with_repo("backup")
        .arg("--key")
        .arg(&key)
        .arg(&src)
        .arg("--json"))
    .json();
    let data = random_bytes(2_000_000, 21);
    let second = ok(with_repo("backup")
        .arg("--key")
        .arg(&key)
        .args(["-", "--name", "blob.bin", "--json"])
        .write_stdin(data.clone()))
    .json();
    let again = ok(with_repo("backup")
        .arg("--key")
        .arg(&key)
        .arg(&src)
        .arg("--json"))
    .json();
    assert_eq!(again["new_blobs"], 0, "{again:#}");

    let list = ok(with_repo("snapshots").arg("--json")).json();
    assert_eq!(
        ids(list.as_array().unwrap()),
        [&first["snapshot"], &second["snapshot"], &again["snapshot"]]
            .map(|v| v.as_str().unwrap().to_string())
    );

    let target = tmp.path().join("restored");
    ok(with_repo("restore")
        .arg(&first["snapshot"].as_str().unwrap()[..8])
        .arg("--target")
        .arg(&target));
    assert_eq!(tree(&target), tree(&tmp.path().join("data")));
    let restored =
        ok(with_repo("restore").args([second["snapshot"].as_str().unwrap(), "--stdout"])).stdout;
    assert!(restored == data, "restored bytes differ");
    run(with_repo("restore").args(["deadbeef", "--stdout"])).expect_code(NOT_FOUND);

    ok(with_repo("verify").arg("--read-data"))
        .stdout_has(&["3 snapshots (3 intact, 0 damaged)", "no damage found"]);
    make_writable(&tmp.path().join("data"));
    make_writable(&target);
}

// ---------------------------------------------------------------- memory

/// `THP_enabled` of a process: whether its memory may be huge pages.
fn thp_enabled(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("/proc/PID/status has THP_enabled (Linux 5.0 and later)");
    line.trim() == "1"
}

/// The allocator asks for huge pages; a restore (which reads a repository
/// in bulk) keeps them, a backup (whose peak memory they raise) turns them
/// off, each seen in `/proc/PID/status` while it waits on a pipe.
#[test]
fn restores_keep_huge_pages_and_backups_turn_them_off() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let inherited = thp_enabled(std::process::id());
    let f = Fixture::new();
    let data = random_bytes(1 << 20, 11);
    let big = f.backup_bytes("big", &data, &[]);
    let big = str_field(&big, "snapshot").to_string();
    let bin = assert_cmd::cargo::cargo_bin("cairn");

    let mut backup = Command::new(&bin)
        .arg("backup")
        .arg("--repo")
        .arg(&f.repo)
        .arg("--key")
        .arg(&f.key)
        .args(["--host", "test", "-", "--name", "small"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while thp_enabled(backup.id()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let backup_thp = thp_enabled(backup.id());
    backup.stdin.take().unwrap().write_all(b"x").unwrap();
    assert!(backup.wait().unwrap().success());
    assert!(!backup_thp, "a backup runs without huge pages");

    // A restore to a pipe nobody reads yet: it has started writing (past
    // the point where a command turns huge pages off) and waits.
    let mut restore = Command::new(&bin)
        .arg("restore")
        .arg("--repo")
        .arg(&f.repo)
        .args([big.as_str(), "--stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = restore.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    let restore_thp = thp_enabled(restore.id());
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(restore.wait().unwrap().success());
    assert_eq!([&first[..], &rest].concat(), data);
    assert_eq!(
        restore_thp, inherited,
        "a restore keeps the huge pages it was started with"
    );
}
