//! `cairn replicate` between local, S3 and `ssh://` repositories.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

/// `cairn replicate --from A --to B --json ARGS...`.
fn replicate(from: &str, to: &str, args: &[&str]) -> assert_cmd::Command {
    let mut c = cairn_args(["replicate", "--from", from, "--to", to, "--json"]);
    c.args(args);
    c
}

/// Bytes of the packs of a local repository (not the staging files a
/// killed write leaves).
fn packs_bytes(repo: &Path) -> u64 {
    files_under(&repo.join("packs"))
        .iter()
        .filter(|(name, _)| name.rsplit('/').next().is_some_and(is_hex64))
        .map(|(_, v)| v.len() as u64)
        .sum()
}

fn snapshot_ids(repo: &str) -> Vec<String> {
    let v = ok(&mut cairn_args(["snapshots", "--repo", repo, "--json"])).json();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Restores every snapshot of both repositories and compares them.
fn assert_same_snapshots(a: &str, b: &str) {
    let ids = snapshot_ids(a);
    assert_eq!(ids, snapshot_ids(b));
    for id in &ids {
        let one = ok(&mut cairn_args(["restore", "--repo", a, id, "--stdout"])).stdout;
        let two = ok(&mut cairn_args(["restore", "--repo", b, id, "--stdout"])).stdout;
        assert!(one == two, "snapshot {id} differs");
    }
    ok(&mut cairn_args(["verify", "--repo", b, "--read-data"]));
}

#[test]
fn a_replica_restores_byte_identical_and_later_runs_send_only_what_is_new() {
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    let dst = f.path("replica").to_str().unwrap().to_string();
    let data = random_bytes(6 << 20, 1);
    let first = f.backup_bytes("db.dump", &data, &[]);
    let report = ok(&mut replicate(&src, &dst, &[])).json();
    assert_eq!(report["initialised"], true);
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 1);
    assert!(report["blobs_checked"].as_u64().unwrap() > 0);
    assert_same_snapshots(&src, &dst);
    let sent_first = report["bytes_sent"].as_u64().unwrap();
    assert!(sent_first >= first["stored_bytes"].as_u64().unwrap() * 9 / 10);

    // A daily incremental: the replica gets about what the backup added,
    // counted in bytes stored on each side.
    let stored = |repo: &Path| -> u64 { files_under(repo).values().map(|v| v.len() as u64).sum() };
    let (src_before, dst_before) = (stored(&f.repo), stored(Path::new(&dst)));
    let mut changed = data.clone();
    changed[3 << 20..(3 << 20) + 50_000].copy_from_slice(&random_bytes(50_000, 2));
    let second = f.backup_bytes("db.dump", &changed, &[]);
    let added = second["stored_bytes"].as_u64().unwrap();
    let report = ok(&mut replicate(&src, &dst, &["--verify"])).json();
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!(
        sent * 10 <= added * 11,
        "sent {sent} bytes for a backup that added {added}"
    );
    // The same in bytes on disk: what the replica grew by, against what
    // the backup added to the source.
    let grown = stored(Path::new(&dst)) - dst_before;
    let backup_grew = stored(&f.repo) - src_before;
    assert!(
        grown * 10 <= backup_grew * 11,
        "the replica grew {grown} bytes, the source {backup_grew}"
    );
    assert!(report["bytes_skipped"].as_u64().unwrap() > 0);
    assert_eq!(report["packs_verified"], report["packs_copied"]);
    assert_same_snapshots(&src, &dst);

    // Nothing new: nothing sent. Then keep only the newest at the replica.
    let report = ok(&mut replicate(&src, &dst, &["--keep-last", "1"])).json();
    assert_eq!(report["bytes_sent"], 0);
    assert_eq!(report["forgotten"], 1);
    assert_eq!(snapshot_ids(&dst).len(), 1);
    assert_eq!(snapshot_ids(&src).len(), 2, "the source is never touched");
}

#[test]
fn replication_to_and_from_s3() {
    let Some(base) = s3_base() else { return };
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    f.backup_bytes("a", &random_bytes(3 << 20, 3), &[]);
    f.backup_bytes("b", &random_bytes(1 << 20, 4), &[]);
    let s3 = format!("{base}/replica-{}", unique_name());
    ok(&mut replicate(&src, &s3, &[]));
    assert_same_snapshots(&src, &s3);
    // And back from S3 to a new local replica.
    let back = f.path("back").to_str().unwrap().to_string();
    let report = ok(&mut replicate(&s3, &back, &["--latest", "1"])).json();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 1);
    let newest = snapshot_ids(&src).last().unwrap().clone();
    assert_eq!(snapshot_ids(&back), vec![newest.clone()]);
    let one = ok(&mut cairn_args([
        "restore", "--repo", &src, &newest, "--stdout",
    ]))
    .stdout;
    let two = ok(&mut cairn_args([
        "restore", "--repo", &back, &newest, "--stdout",
    ]))
    .stdout;
    assert!(one == two);
}

/// The shipped create-only credential (deploy/s3/seaweedfs-identities.json,
/// as tests/services.sh loads it into SeaweedFS): `replicate --append-only`
/// works through it; SeaweedFS refuses its deletes, so neither a plain
/// replication's lease release nor `forget` nor `gc` gets through.
#[test]
fn the_create_only_credential_replicates_append_only_and_cannot_delete() {
    let Some(base) = s3_base() else { return };
    let (key, secret) = std::env::var("CAIRN_TEST_S3_CREATE_ONLY")
        .expect("tests/services.sh exports CAIRN_TEST_S3_CREATE_ONLY with CAIRN_TEST_S3")
        .split_once(':')
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .unwrap();
    let as_replica = |c: &mut assert_cmd::Command| {
        c.env("AWS_ACCESS_KEY_ID", &key)
            .env("AWS_SECRET_ACCESS_KEY", &secret);
    };
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    f.backup_bytes("a", &random_bytes(2 << 20, 5), &[]);
    f.backup_bytes("b", &random_bytes(1 << 20, 6), &[]);

    // Written as usual, replication must delete its lease: refused.
    let plain = format!("{base}/create-only-plain-{}", unique_name());
    let mut c = replicate(&src, &plain, &[]);
    as_replica(&mut c);
    run(&mut c)
        .expect_code(10)
        .stderr_has(&["locks/", "access denied"]);

    // Append-only: done, twice (the second finds its probe and state).
    let offsite = format!("{base}/create-only-{}", unique_name());
    for _ in 0..2 {
        let mut c = replicate(&src, &offsite, &["--append-only", "--verify"]);
        as_replica(&mut c);
        ok(&mut c);
    }
    assert_same_snapshots(&src, &offsite);

    // What a compromised node4 would try next, with the same credential.
    let forget_all_but_one = || {
        cairn_args([
            "forget",
            "--repo",
            &offsite,
            "--keep-last",
            "1",
            "--group-by",
            "host",
        ])
    };
    let mut forget = forget_all_but_one();
    as_replica(&mut forget);
    run(&mut forget).expect_code(10);
    let mut gc = cairn_args(["gc", "--repo", &offsite]);
    as_replica(&mut gc);
    assert_ne!(run(&mut gc).code, 0);
    assert_eq!(
        snapshot_ids(&offsite),
        snapshot_ids(&src),
        "nothing was deleted"
    );
    // The admin's credential (off node4) may.
    ok(&mut forget_all_but_one());
    assert_eq!(snapshot_ids(&offsite).len(), 1);
}

#[test]
fn replication_to_an_ssh_server_and_back() {
    let Some((base, dir)) = ssh_base() else {
        return;
    };
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    let name = format!("replica-{}", unique_name());
    let (dst, dst_dir) = (format!("{base}/{name}"), dir.join(&name));
    let data = random_bytes(8 << 20, 21);
    f.backup_bytes("db.dump", &data, &[]);
    f.backup_bytes("volume.tar", &random_bytes(1 << 20, 22), &[]);
    let report = ok(&mut replicate(&src, &dst, &["--verify"])).json();
    assert_eq!(report["initialised"], true);
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 2);
    assert_eq!(report["packs_verified"], report["packs_copied"]);
    assert_same_snapshots(&src, &dst);
    // The files on the server are the repository's, byte for byte, and
    // no staging file is left.
    let (ours, theirs) = (files_under(&f.repo), files_under(&dst_dir));
    for (key, bytes) in &theirs {
        assert!(!key.contains('#'), "staging file {key} left on the server");
        if key.starts_with("packs/") || key.starts_with("snapshots/") {
            assert!(
                ours.get(key) == Some(bytes),
                "{key} differs from the source's"
            );
        }
    }

    // A daily incremental sends about what the backup added (bytes on
    // each side's disk), and a run with nothing new sends nothing.
    let stored = |repo: &Path| -> u64 { files_under(repo).values().map(|v| v.len() as u64).sum() };
    let (src_before, dst_before) = (stored(&f.repo), stored(&dst_dir));
    let mut changed = data.clone();
    changed[4 << 20..(4 << 20) + 40_000].copy_from_slice(&random_bytes(40_000, 23));
    f.backup_bytes("db.dump", &changed, &[]);
    let report = ok(&mut replicate(&src, &dst, &[])).json();
    let (grown, added) = (stored(&dst_dir) - dst_before, stored(&f.repo) - src_before);
    assert!(
        grown * 10 <= added * 11,
        "the replica grew {grown} bytes, the source {added}"
    );
    assert!(report["bytes_skipped"].as_u64().unwrap() > 0);
    assert_eq!(ok(&mut replicate(&src, &dst, &[])).json()["bytes_sent"], 0);
    assert_same_snapshots(&src, &dst);

    // The admin's pull, the other way: ssh → local, newest only.
    let back = f.path("back").to_str().unwrap().to_string();
    let report = ok(&mut replicate(&dst, &back, &["--latest", "1", "--verify"])).json();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot_ids(&back), vec![snapshot_ids(&src).pop().unwrap()]);
    let restored = ok(&mut cairn_args([
        "restore", "--repo", &back, "latest", "--stdout",
    ]))
    .stdout;
    assert!(restored == changed);
}

/// Starts `replicate --from src --to dst`, kills it a delay that grows
/// with `seed` after the destination is initialised, checks that whatever the destination (`dst_dir` on
/// this machine) lists is complete, then runs it again and checks that no
/// pack already there was sent again and that the replica equals the source.
fn kill_and_resume(src: &str, dst: &str, dst_dir: &Path, seed: u64) {
    let bin = assert_cmd::cargo::cargo_bin("cairn");
    let mut child = std::process::Command::new(&bin)
        .args([
            "replicate",
            "--from",
            src,
            "--to",
            dst,
            "--concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dst_dir.join("config").exists() && started.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(40 * seed + 20));
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the destination lists is complete.
    if dst_dir.join("config").exists() {
        ok(&mut cairn_args(["verify", "--repo", dst, "--read-data"]));
    }
    let present = if dst_dir.join("packs").exists() {
        packs_bytes(dst_dir)
    } else {
        0
    };
    let report: Value = ok(&mut replicate(src, dst, &[])).json();
    eprintln!(
        "seed {seed}: {present} bytes of packs were there, {} sent after",
        report["bytes_sent"]
    );
    // Packs already there were not sent again.
    if report["snapshots_copied"].as_array().unwrap().is_empty() {
        assert_eq!(
            report["bytes_sent"], 0,
            "seed {seed}: the first run had finished"
        );
    } else {
        // Packs already there were not sent again: what was sent is at
        // most the packs missing, plus the index and manifests (a few KiB;
        // a pack is 12 MiB). Not every pack there need be skipped: the
        // killed run may have finished a snapshot, whose packs the rest do
        // not need.
        let total = packs_bytes(Path::new(src));
        let sent = report["bytes_sent"].as_u64().unwrap();
        let skipped = report["bytes_skipped"].as_u64().unwrap();
        assert!(skipped <= present, "seed {seed}: {skipped} skipped");
        assert!(
            sent <= total - present + (64 << 10),
            "seed {seed}: {sent} bytes sent, {present} of {total} were there"
        );
    }
    assert_same_snapshots(src, dst);
}

#[test]
fn killed_and_run_again_it_resends_only_what_was_in_flight() {
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    for i in 0..3 {
        f.backup_bytes(&format!("part{i}"), &random_bytes(12 << 20, 10 + i), &[]);
    }
    for seed in 1u64..=3 {
        let dst = f.path(&format!("replica{seed}"));
        kill_and_resume(&src, dst.to_str().unwrap(), &dst, seed);
    }
    // The same over SFTP, where a killed write leaves a staging file.
    let Some((base, dir)) = ssh_base() else {
        return;
    };
    for seed in [5u64, 9] {
        let name = format!("killed-{}", unique_name());
        kill_and_resume(&src, &format!("{base}/{name}"), &dir.join(&name), seed);
    }
}

#[test]
fn bad_signatures_damaged_chunks_rollbacks_and_stale_sources_are_refused() {
    // A source trusting two keys, a replica pinned to one of them: a
    // snapshot signed by the other is refused (6) and nothing is written.
    let tmp = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (tmp.path().join("a.key"), tmp.path().join("b.key"));
    let (pub_a, pub_b) = (generate_key(&key_a), generate_key(&key_b));
    let src = tmp.path().join("src").to_str().unwrap().to_string();
    ok(&mut cairn_args([
        "init", "--repo", &src, "--trust", &pub_a, "--trust", &pub_b,
    ]));
    let backup_with = |key: &Path, data: &[u8]| {
        ok(cairn_args(["backup", "--repo", &src, "-", "--name", "x"])
            .arg("--key")
            .arg(key)
            .write_stdin(data.to_vec()));
    };
    backup_with(&key_a, &random_bytes(1 << 20, 20));
    let dst = tmp.path().join("replica");
    let dst_s = dst.to_str().unwrap().to_string();
    ok(&mut replicate(&src, &dst_s, &["--trust", &pub_a]));
    // The replica pins the key it was created with.
    let config: Value =
        serde_json::from_slice(&std::fs::read(dst.join("config")).unwrap()).unwrap();
    assert_eq!(
        config["trusted_keys"],
        serde_json::json!([pub_a]),
        "{config}"
    );
    backup_with(&key_b, &random_bytes(1000, 21));
    // Not named, it is skipped and reported; named, the run is refused.
    let snapshots_before = files_under(&dst.join("snapshots"));
    let report = ok(&mut replicate(&src, &dst_s, &["--trust", &pub_a])).json();
    assert_eq!(report["refused"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(files_under(&dst.join("snapshots")), snapshots_before);
    let untrusted = report["refused"][0]["id"].as_str().unwrap().to_string();
    let before = files_under(&dst);
    run(&mut replicate(
        &src,
        &dst_s,
        &["--trust", &pub_a, &untrusted],
    ))
    .expect_code(6);
    assert_eq!(files_under(&dst), before);

    // A chunk whose bytes do not match its id: 3, nothing written.
    let g = Fixture::new();
    let src2 = g.repo.to_str().unwrap().to_string();
    g.backup_bytes("c", &random_bytes(1 << 20, 22), &[]);
    let pack = largest_pack(&g.repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x40;
    make_writable(&g.repo);
    std::fs::write(&pack, bytes).unwrap();
    let dst2 = g.path("replica");
    run(&mut replicate(&src2, dst2.to_str().unwrap(), &[])).expect_code(3);
    assert!(!dst2.join("snapshots").exists() || files_under(&dst2.join("snapshots")).is_empty());

    // A source rolled back behind what the replica accepted: 17.
    let h = Fixture::new();
    let src3 = h.repo.to_str().unwrap().to_string();
    h.backup_bytes("d", b"one", &["--time", "2026-11-19T01:00:00Z"]);
    h.backup_bytes("d", b"two", &["--time", "2026-11-20T01:00:00Z"]);
    let dst3 = h.path("replica").to_str().unwrap().to_string();
    ok(&mut replicate(&src3, &dst3, &[]));
    let newest = snapshot_ids(&src3).last().unwrap().clone();
    ok(&mut cairn_args(["forget", "--repo", &src3, &newest]));
    run(&mut replicate(&src3, &dst3, &[]))
        .expect_code(17)
        .stderr_has(&["rolled back"]);
    // A source with nothing newer than --max-age: 18.
    let dst4 = h.path("fresh").to_str().unwrap().to_string();
    run(&mut replicate(&src3, &dst4, &["--max-age", "1h"]))
        .expect_code(18)
        .stderr_has(&["stale"]);
}

/// The admin PC's pull reports to node_exporter whether it worked, and
/// what the local copy's newest snapshot is, failures included.
#[test]
fn a_pull_writes_its_metrics_whether_it_succeeds_or_fails() {
    let f = Fixture::new();
    let src = f.repo.to_str().unwrap().to_string();
    f.backup_bytes("a", &random_bytes(10_000, 7), &["--tag", "source:pg"]);
    f.backup_bytes("a", &random_bytes(10_000, 8), &["--tag", "source:pg"]);
    f.backup_bytes("b", &random_bytes(10_000, 9), &["--tag", "source:couchdb"]);
    // --latest counts per source as --keep-last does: the newest of each.
    let newest = f.path("newest").to_str().unwrap().to_string();
    let report = ok(&mut replicate(&src, &newest, &["--latest", "1"])).json();
    assert_eq!(
        report["snapshots_copied"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    let copy = f.path("copy").to_str().unwrap().to_string();
    let prom = f.path("pull.prom");
    let metrics = || -> std::collections::BTreeMap<String, f64> {
        std::fs::read_to_string(&prom)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    };
    let prom_arg = prom.to_str().unwrap();
    let pulled = ok(&mut replicate(
        &src,
        &copy,
        &[
            "--keep-last",
            "1",
            "--metrics-file",
            prom_arg,
            "--metrics-name",
            "admin-pc",
        ],
    ))
    .json();
    assert_eq!(
        pulled["forgotten"], 1,
        "the newest of each source kept: {pulled}"
    );
    let m = metrics();
    assert_eq!(
        m["cairn_replica_last_attempt_success{replica=\"admin-pc\"}"],
        1.0
    );
    assert_eq!(
        m["cairn_replica_last_attempt_exit_code{replica=\"admin-pc\"}"],
        0.0
    );
    let listing = ok(&mut cairn_args(["snapshots", "--repo", &copy, "--json"])).json();
    let newest = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["time"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_millisecond() as f64
                / 1000.0
        })
        .fold(0.0, f64::max);
    assert_eq!(listing.as_array().unwrap().len(), 2);
    assert_eq!(
        m["cairn_replica_newest_snapshot_timestamp_seconds{replica=\"admin-pc\"}"],
        newest
    );
    // node4 stopped backing up: the pull fails (18) and says so.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&mut replicate(
        &src,
        &copy,
        &[
            "--max-age",
            "1s",
            "--metrics-file",
            prom_arg,
            "--metrics-name",
            "admin-pc",
        ],
    ))
    .expect_code(18);
    let m = metrics();
    assert_eq!(
        m["cairn_replica_last_attempt_success{replica=\"admin-pc\"}"],
        0.0
    );
    assert_eq!(
        m["cairn_replica_last_attempt_exit_code{replica=\"admin-pc\"}"],
        18.0
    );
    assert_eq!(
        m["cairn_replica_newest_snapshot_timestamp_seconds{replica=\"admin-pc\"}"],
        newest
    );
}
