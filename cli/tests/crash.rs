//! `kill -9` of `cairn gc` at every step of its protocol, and of a backup in
//! the middle of writing packs: afterwards the repository verifies clean
//! (`--read-data`), every snapshot restores, and the next `gc` reclaims the
//! leftovers.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use support::*;

/// The lease time-to-live the killed processes use (seconds).
const TTL: u64 = 2;

/// Starts `cairn ARGS` held at `point` and kills it (SIGKILL) once it says
/// it is there.
fn kill_at(f: &Fixture, args: &[&str], point: &str, stdin: Option<Vec<u8>>) {
    let bin = assert_cmd::cargo::cargo_bin!("cairn");
    let mut child = std::process::Command::new(bin)
        .args(args)
        .arg("--repo")
        .arg(&f.repo)
        .env("CAIRN_PAUSE_AT", point)
        .env("CAIRN_LEASE_TTL", TTL.to_string())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &data);
        });
    }
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(&format!("paused at {point}")) => break,
            Some(Ok(line)) => seen.push(line),
            _ => {
                let status = child.wait().unwrap();
                panic!("cairn {args:?} ended ({status}) before reaching {point}: {seen:?}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Two kept snapshots (different data) and one forgotten, whose pack is garbage.
fn garbage_fixture() -> (Fixture, Vec<(String, Vec<u8>)>) {
    let f = Fixture::new();
    let kept_a = random_bytes(2 << 20, 1);
    let kept_b = random_bytes(1 << 20, 2);
    let doomed = f.backup_bytes("doomed.bin", &random_bytes(3 << 20, 3), &[]);
    let a = f.backup_bytes("a.bin", &kept_a, &[]);
    let b = f.backup_bytes("b.bin", &kept_b, &[]);
    ok(f.cmd("forget").arg(str_field(&doomed, "snapshot")));
    let kept = vec![
        (str_field(&a, "snapshot").to_string(), kept_a),
        (str_field(&b, "snapshot").to_string(), kept_b),
    ];
    (f, kept)
}

/// Verify reads every byte clean and every kept snapshot restores.
fn assert_intact(f: &Fixture, kept: &[(String, Vec<u8>)]) {
    ok(f.cmd("verify").arg("--read-data")).stdout_has(&["no damage found"]);
    for (id, data) in kept {
        assert!(f.restore_stdout(id, None) == *data, "snapshot {id} differs");
    }
}

/// After the killed process's lease expired, gc finishes the job: nothing
/// unreferenced, nothing reclaimable, nothing left condemned.
fn assert_next_gc_reclaims(f: &Fixture, kept: &[(String, Vec<u8>)]) {
    std::thread::sleep(Duration::from_secs(TTL + 1));
    ok(f.cmd("gc")
        .args(["--grace", "0s"])
        .env("CAIRN_LEASE_TTL", TTL.to_string()));
    let stats = ok(f.cmd("stats").arg("--json")).json();
    assert_eq!(stats["unreferenced_bytes"], 0, "{stats}");
    assert_eq!(stats["reclaimable_bytes"], 0, "{stats}");
    assert_eq!(stats["condemned_bytes"], 0, "{stats}");
    assert!(!f.repo.join("gc").read_dir().unwrap().any(|e| {
        let name = e.unwrap().file_name().into_string().unwrap();
        name.starts_with("condemned-") || name.starts_with("writers-")
    }));
    assert_intact(f, kept);
}

#[test]
fn gc_killed_at_any_step_leaves_a_clean_repository_and_the_next_run_finishes() {
    for point in [
        "gc:marked",
        "gc:condemned",
        "gc:before-delete",
        "gc:index-replaced",
        "gc:deleting",
    ] {
        let (f, kept) = garbage_fixture();
        kill_at(&f, &["gc", "--grace", "0s"], point, None);
        assert_intact(&f, &kept);
        assert_next_gc_reclaims(&f, &kept);
    }
}

#[test]
fn a_backup_killed_while_writing_packs_leaves_only_garbage_that_gc_reclaims() {
    let (f, kept) = garbage_fixture();
    // Big enough for several 4 MiB packs; killed after the first is stored.
    let key = f.key.to_str().unwrap().to_string();
    kill_at(
        &f,
        &["backup", "--key", &key, "-", "--name", "big.bin"],
        "backup:pack-stored",
        Some(random_bytes(12 << 20, 4)),
    );
    assert!(
        f.snapshots(&[]).len() == 2,
        "a killed backup wrote a snapshot"
    );
    assert_intact(&f, &kept);
    let report = ok(f.cmd("verify").arg("--json")).json();
    assert!(report["unindexed_packs"].as_u64().unwrap() >= 1, "{report}");
    assert_next_gc_reclaims(&f, &kept);
    let report = ok(f.cmd("verify").arg("--json")).json();
    assert_eq!(report["unindexed_packs"], 0, "{report}");
}
