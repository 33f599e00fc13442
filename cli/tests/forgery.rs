//! A compromised signer (node4 with its signing key and an append token)
//! choosing snapshot times, and hostile replication sources: retention,
//! `latest`, `--max-age` and `replicate` must not be steered into dropping
//! genuine snapshots (issue 13, critical 3 and the replicate items).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde_json::Value;
use support::*;

/// `cairn replicate --from A --to B --json ARGS...`.
fn replicate(from: &Path, to: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut c = cairn_args(["replicate", "--json", "--from"]);
    c.arg(from).arg("--to").arg(to).args(args);
    c
}

/// Snapshot ids (hex) listed by `cairn snapshots --json` at `repo`.
fn ids_at(repo: &Path) -> BTreeSet<String> {
    let v = run(cairn_args(["snapshots", "--json", "--repo"]).arg(repo)).json();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Backs up `data` as item `name` with these extra arguments; the snapshot id.
fn backup(f: &Fixture, data: &[u8], extra: &[&str]) -> String {
    str_field(&f.backup_bytes("db.dump", data, extra), "snapshot").to_string()
}

/// Sets a snapshot object's `last_modified` (a local store's mtime): when
/// the store received it.
fn arrived(repo: &Path, id: &str, at: Timestamp) {
    let file = std::fs::File::open(repo.join("snapshots").join(id)).unwrap();
    file.set_modified(std::time::SystemTime::from(at)).unwrap();
}

/// The ids a `forget --json` report keeps.
fn kept(report: &Value) -> BTreeSet<String> {
    report["plan"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["keep"].as_array().unwrap().iter())
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn snapshots_from_the_future_are_refused_by_replicate_latest_max_age_and_keep_last() {
    let f = Fixture::new();
    let replica = f.path("replica");
    let genuine: Vec<String> = (0..5)
        .map(|i| backup(&f, format!("genuine {i}").as_bytes(), &[]))
        .collect();
    ok(&mut replicate(&f.repo, &replica, &[]));
    // node4, compromised: three snapshots dated 2099, then a genuine one.
    let forged: Vec<String> = (0..3)
        .map(|i| {
            backup(
                &f,
                format!("forged {i}").as_bytes(),
                &["--time", "2099-01-01T00:00:00Z"],
            )
        })
        .collect();
    let newest = backup(&f, b"genuine 5", &[]);

    let report = ok(&mut replicate(
        &f.repo,
        &replica,
        &["--latest", "3", "--max-age", "36h", "--keep-last", "5"],
    ))
    .json();
    let at_replica = ids_at(&replica);
    for id in &forged {
        assert!(!at_replica.contains(id), "forgery {id} was copied");
    }
    // The five newest genuine snapshots stay: the oldest is forgotten by --keep-last 5.
    let expected: BTreeSet<String> = genuine[1..].iter().chain([&newest]).cloned().collect();
    assert_eq!(at_replica, expected, "{report:#}");
    assert_eq!(
        report["refused"].as_array().map(Vec::len),
        Some(3),
        "{report:#}"
    );
    let restored = ok(cairn_args(["restore", "latest", "--stdout", "--repo"]).arg(&replica)).stdout;
    assert_eq!(restored, b"genuine 5");
    assert_eq!(f.restore_stdout("latest", None), b"genuine 5");
    // `snapshots` names each refused one and why.
    let listing = run(&mut f.cmd("snapshots"));
    assert!(
        listing
            .stderr
            .matches("claims 2099-01-01T00:00:00Z")
            .count()
            == 3
            && listing.stderr.contains("stored at"),
        "{}",
        listing.stderr
    );
    // Named by id, a refused snapshot can still be forgotten.
    ok(f.cmd("forget").arg(&forged[0]));
    assert!(!f.repo.join("snapshots").join(&forged[0]).exists());
}

#[test]
fn keep_within_counts_back_from_the_newest_timely_snapshot() {
    let f = Fixture::new();
    let genuine: Vec<String> = (0..4)
        .map(|i| backup(&f, format!("genuine {i}").as_bytes(), &[]))
        .collect();
    let forged = backup(&f, b"forged", &["--time", "2099-01-01T00:00:00Z"]);
    let report = ok(f
        .cmd("forget")
        .args(["--keep-within", "30d", "--dry-run", "--json"]))
    .json();
    assert_eq!(report["removed"], 0, "{report:#}");
    let kept = kept(&report);
    assert_eq!(kept, genuine.iter().cloned().collect(), "{report:#}");
    assert!(!kept.contains(&forged));
    ok(f.cmd("forget").args(["--keep-within", "30d"]));
    let left = ids_at(&f.repo);
    for id in &genuine {
        assert!(left.contains(id), "genuine {id} was forgotten");
    }
}

#[test]
fn back_dated_snapshots_never_displace_genuine_ones_from_calendar_buckets() {
    let f = Fixture::new();
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    let days: Vec<jiff::civil::Date> = (3..50)
        .rev()
        .map(|d| today.checked_sub(Span::new().days(d)).unwrap())
        .collect();
    // Nightly at 02:00, each stored five minutes later.
    let genuine: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let time = format!("{d}T02:00:00Z");
            let id = backup(&f, format!("night {i}").as_bytes(), &["--time", &time]);
            let at: Timestamp = time.parse().unwrap();
            arrived(&f.repo, &id, at + Span::new().minutes(5));
            id
        })
        .collect();
    let policy = [
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "12",
        "--dry-run",
        "--json",
    ];
    let should_keep = kept(&ok(f.cmd("forget").args(policy)).json());
    assert!(should_keep.len() >= 9, "{should_keep:?}");
    // node4, compromised, today: one snapshot at 23:59:59 of each of those days.
    let forged: BTreeSet<String> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            backup(
                &f,
                format!("forged {i}").as_bytes(),
                &["--time", &format!("{d}T23:59:59Z")],
            )
        })
        .collect();
    let report = ok(f.cmd("forget").args(policy)).json();
    let genuine_kept: BTreeSet<String> = kept(&report)
        .into_iter()
        .filter(|id| genuine.contains(id))
        .collect();
    assert_eq!(genuine_kept, should_keep, "{report:#}");
    // Applied for real: every genuine snapshot the policy keeps is still there.
    ok(f.cmd("forget").args(&policy[..6]));
    let left = ids_at(&f.repo);
    assert!(should_keep.is_subset(&left), "left: {left:?}");
    // Besides them, at most the group's newest (always kept): a forgery.
    assert!(left.len() <= should_keep.len() + 1, "left: {left:?}");
    assert!(left.difference(&should_keep).all(|id| forged.contains(id)));
}

#[test]
fn one_bad_snapshot_at_the_source_is_skipped_unless_it_is_selected() {
    // A source trusting two keys; the replica pins one. A snapshot signed
    // by the other, and a garbage object under snapshots/.
    let tmp = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (tmp.path().join("a.key"), tmp.path().join("b.key"));
    let (pub_a, pub_b) = (generate_key(&key_a), generate_key(&key_b));
    let src = tmp.path().join("src");
    ok(cairn_args(["init", "--trust", &pub_a, "--trust", &pub_b, "--repo"]).arg(&src));
    let backup_with = |key: &Path, data: &[u8]| -> String {
        let out = ok(
            cairn_args(["backup", "-", "--name", "x", "--json", "--repo"])
                .arg(&src)
                .arg("--key")
                .arg(key)
                .write_stdin(data.to_vec()),
        )
        .json();
        str_field(&out, "snapshot").to_string()
    };
    let first = backup_with(&key_a, b"one");
    let untrusted = backup_with(&key_b, b"two");
    let second = backup_with(&key_a, b"three");
    let garbage = random_bytes(300, 7);
    let name = "ab".repeat(32);
    std::fs::write(src.join("snapshots").join(&name), garbage).unwrap();

    let dst = tmp.path().join("replica");
    let latest = ok(&mut replicate(
        &src,
        &dst,
        &["--trust", &pub_a, "--latest", "1"],
    ))
    .json();
    assert_eq!(ids_at(&dst), BTreeSet::from([second.clone()]), "{latest:#}");
    assert_eq!(
        latest["refused"].as_array().map(Vec::len),
        Some(2),
        "{latest:#}"
    );
    let all = ok(&mut replicate(&src, &dst, &["--trust", &pub_a])).json();
    assert_eq!(ids_at(&dst), BTreeSet::from([first, second]), "{all:#}");
    // Named by id, the untrusted one is refused.
    run(&mut replicate(&src, &dst, &["--trust", &pub_a, &untrusted]))
        .expect_code(6)
        .stderr_has(&["not trusted"]);
}

#[test]
fn a_refused_first_pull_from_a_swapped_config_leaves_nothing() {
    let f = Fixture::new();
    backup(&f, b"genuine", &[]);
    // The attacker replaces the source's config to trust their own key.
    let attacker = f.path("attacker.key");
    let attacker_pub = generate_key(&attacker);
    let config_path = f.repo.join("config");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["trusted_keys"] = serde_json::json!([attacker_pub]);
    make_writable(&f.repo);
    std::fs::remove_file(&config_path).unwrap();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    ok(f.cmd("backup")
        .arg("--key")
        .arg(&attacker)
        .args(["-", "--name", "db.dump"])
        .write_stdin(b"forged".to_vec()));

    let dst = f.path("replica");
    run(&mut replicate(&f.repo, &dst, &[]))
        .expect_code(6)
        .stderr_has(&["--trust"]);
    assert!(
        !dst.exists() || files_under(&dst).is_empty(),
        "a refused first pull left {:?}",
        names(&files_under(&dst))
    );
}

#[test]
fn gc_keeps_the_data_of_a_snapshot_from_the_future_until_it_is_forgotten() {
    let f = Fixture::new();
    backup(&f, b"genuine", &[]);
    let forged = backup(
        &f,
        &random_bytes(300_000, 7),
        &["--time", "2099-01-01T00:00:00Z"],
    );
    // Before: gc refused to run at all ("cannot tell what it needs").
    let report = ok(f.cmd("gc").args(["--grace", "0s", "--json"])).json();
    assert_eq!(report["deleted_packs"], 0, "{report:#}");
    // verify reports it (an alarm), and its data is intact.
    run(f.cmd("verify").arg("--read-data"))
        .expect_code(3)
        .stdout_has(&["claims 2099-01-01T00:00:00Z", "1 intact, 1 damaged"]);
    ok(f.cmd("forget").arg(&forged));
    let report = ok(f.cmd("gc").args(["--grace", "0s", "--json"])).json();
    assert!(report["deleted_packs"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(f.restore_stdout("latest", None), b"genuine");
}
