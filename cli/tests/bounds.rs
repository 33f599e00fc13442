//! Hostile sizes and tampered writer settings, through the real binary:
//! an object far over its kind's limit is refused by its length (exit 3)
//! without being read, and a `config` whose writer settings are out of range
//! stops `backup` with the field named (exit 3) instead of a panic or a
//! stack overflow, while readers still open the repository.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

/// 3 GiB: far over every object limit, and over the address space the
/// runs below allow, so reading it whole would abort.
const HUGE: u64 = 3 << 30;

/// Runs `cairn ARGS` with its address space limited to 2 GiB, so that an
/// attempt to buffer a 3 GiB object fails at once instead of filling memory.
fn cairn_limited(repo: &Path, args: &[&str]) -> Run {
    let bin = assert_cmd::cargo::cargo_bin("cairn");
    let mut c = assert_cmd::Command::new("sh");
    c.arg("-c")
        .arg("ulimit -v 2097152; exec \"$0\" \"$@\"")
        .arg(bin)
        .args(args)
        .arg("--repo")
        .arg(repo)
        .timeout(std::time::Duration::from_secs(60));
    run(&mut c)
}

/// Makes `path` a sparse file of `len` bytes (its start kept).
fn make_huge(path: &Path, len: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.set_len(len).unwrap();
}

/// A repository with one snapshot.
fn with_snapshot() -> Fixture {
    let f = Fixture::new();
    f.backup_bytes("a.txt", b"hello, bounds\n", &[]);
    f
}

const FAKE_ID: &str = "abababababababababababababababababababababababababababababababab";

#[test]
fn a_huge_config_is_refused_by_its_length() {
    let f = with_snapshot();
    make_huge(&f.repo.join("config"), HUGE);
    let r = cairn_limited(&f.repo, &["snapshots"]);
    assert!(r.code != 134 && r.code != -1, "aborted:\n{}", r.stderr);
    r.expect_code(3)
        .stderr_has(&["config", "3221225472 bytes", "1048576-byte limit"]);
}

#[test]
fn a_huge_manifest_is_refused_by_its_length() {
    let f = with_snapshot();
    make_huge(&f.repo.join("snapshots").join(FAKE_ID), HUGE);
    let r = cairn_limited(&f.repo, &["verify"]);
    assert!(r.code != 134 && r.code != -1, "aborted:\n{}", r.stderr);
    let out = format!("{}{}", r.stdout_str(), r.stderr);
    assert!(out.contains(FAKE_ID), "the object is not named:\n{out}");
    assert!(out.contains("3221225472 bytes"), "no length:\n{out}");
    r.expect_code(3);
}

#[test]
fn a_huge_index_object_is_refused_by_its_length() {
    let f = with_snapshot();
    make_huge(&f.repo.join("index").join(FAKE_ID), HUGE);
    let r = cairn_limited(&f.repo, &["verify"]);
    assert!(r.code != 134 && r.code != -1, "aborted:\n{}", r.stderr);
    let out = format!("{}{}", r.stdout_str(), r.stderr);
    assert!(out.contains(FAKE_ID), "the object is not named:\n{out}");
    assert!(out.contains("67108864-byte limit"), "no limit:\n{out}");
    r.expect_code(3);
}

/// Rewrites one field of the repository's config (as an attacker with
/// write access to the bucket would: the config is not signed).
fn tamper(f: &Fixture, path: &[&str], value: Value) {
    let file = f.repo.join("config");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut at = &mut config;
    for p in path {
        at = &mut at[*p];
    }
    *at = value;
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

#[test]
fn tampered_writer_settings_stop_backup_naming_the_field() {
    let cases: &[(&[&str], Value, &str)] = &[
        (
            &["chunking", "min_avg_len"],
            Value::from(131_072),
            "chunking.min_avg_len",
        ),
        (&["tree", "max_fanout"], Value::from(0), "tree.max_fanout"),
        (
            &["compression", "level"],
            Value::from(99),
            "compression.level",
        ),
        (
            &["compression", "frame_target_len"],
            Value::from(0),
            "compression.frame_target_len",
        ),
        (&["pack_target_len"], Value::from(1), "pack_target_len"),
    ];
    // Text (no NUL byte), so the chunk size is chosen from the policy.
    let data: Vec<u8> = random_bytes(300_000, 7)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect();
    let mut wrong = Vec::new();
    for (path, value, field) in cases {
        let f = with_snapshot();
        tamper(&f, path, value.clone());
        let r = run(f
            .backup()
            .args(["-", "--name", "b.txt"])
            .write_stdin(data.clone()));
        let said = [*field, &value.to_string(), "tampered"]
            .iter()
            .all(|s| r.stderr.contains(s));
        if r.code != 3 || !said {
            let last = r.stderr.lines().last().unwrap_or("").to_string();
            wrong.push(format!("{field} = {value}: exit {}: {last}", r.code));
            continue;
        }
        // Readers still open it and restore what is there.
        assert_eq!(f.snapshots(&[]).len(), 1, "{field}");
        assert_eq!(
            f.restore_stdout("latest", Some("a.txt")),
            b"hello, bounds\n",
            "{field}"
        );
    }
    assert!(
        wrong.is_empty(),
        "not refused as damage:\n{}",
        wrong.join("\n")
    );
}
