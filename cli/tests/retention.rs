//! `cairn forget`, `gc` and `stats` from the command line.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use support::*;

/// Nightly snapshots of the same item on the given UTC dates.
fn nightly(f: &Fixture, dates: &[&str]) -> Vec<String> {
    dates
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let summary = f.backup_bytes(
                "lms.json",
                &random_bytes(50_000, i as u64),
                &["--time", &format!("{d}T02:00:00Z"), "--tag", "nightly"],
            );
            str_field(&summary, "snapshot").to_string()
        })
        .collect()
}

#[test]
fn forget_shows_its_plan_keeps_by_rule_and_dry_run_removes_nothing() {
    let f = Fixture::new();
    let ids = nightly(
        &f,
        &[
            "2026-10-30",
            "2026-10-31",
            "2026-11-01",
            "2026-11-19",
            "2026-11-20",
            "2026-11-21",
        ],
    );
    let before = f.contents();

    let plan = ok(f.cmd("forget").args([
        "--keep-daily",
        "2",
        "--keep-monthly",
        "2",
        "--dry-run",
        "--json",
    ]))
    .json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["removed"], 3);
    let group = &plan["plan"]["groups"][0];
    assert_eq!(group["group"]["host"], "test");
    assert_eq!(group["group"]["name"], "lms.json");
    let kept: Vec<&str> = group["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    // Daily: the 21st and 20th; monthly: November (the 21st) and October (the 31st).
    assert_eq!(
        kept,
        vec![ids[5].as_str(), ids[4].as_str(), ids[1].as_str()]
    );
    assert_eq!(
        group["keep"][0]["reasons"][0],
        serde_json::json!({"rule": "daily", "bucket": "2026-11-21"})
    );
    assert_eq!(
        group["keep"][2]["reasons"][0],
        serde_json::json!({"rule": "monthly", "bucket": "2026-10"})
    );
    assert_eq!(f.contents(), before, "a dry run changed the repository");

    // The table names each rule; then the snapshots really go.
    ok(f.cmd("forget")
        .args(["--keep-daily", "2", "--keep-monthly", "2"]))
    .stdout_has(&[
        "keep",
        "daily 2026-11-21",
        "monthly 2026-10",
        "remove",
        "removed 3 snapshots",
        "UTC",
    ]);
    let left: Vec<String> = f
        .snapshots(&[])
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[1].clone(), ids[4].clone(), ids[5].clone()]);
    // Forgetting frees nothing by itself: the packs are all still there.
    assert_eq!(
        f.contents()
            .keys()
            .filter(|k| k.starts_with("packs/"))
            .count(),
        before.keys().filter(|k| k.starts_with("packs/")).count()
    );
}

#[test]
fn forget_refuses_empty_policies_unknown_tags_and_policies_that_keep_nothing() {
    let f = Fixture::new();
    nightly(&f, &["2026-11-20", "2026-11-21"]);
    let before = f.contents();
    run(&mut f.cmd("forget"))
        .expect_code(2)
        .stderr_has(&["nothing to forget"]);
    run(f.cmd("forget").args(["--keep-tag", "monthly"]))
        .expect_code(2)
        .stderr_has(&["no snapshot has that tag", "nightly"]);
    run(f.cmd("forget").args(["--keep-hourly", "0"]))
        .expect_code(2)
        .stderr_has(&["keeps nothing", "--force"]);
    run(f.cmd("forget").args(["--keep-within", "forever"])).expect_code(2);
    run(f
        .cmd("forget")
        .args(["--keep-last", "1", "--group-by", "paths"]))
    .expect_code(2);
    assert_eq!(f.contents(), before);
    // Forced, it keeps the newest of the group all the same.
    let report = ok(f
        .cmd("forget")
        .args(["--keep-hourly", "0", "--force", "--json"]))
    .json();
    assert_eq!(report["removed"], 1);
    assert_eq!(
        report["plan"]["groups"][0]["keep"][0]["reasons"][0]["rule"],
        "newest"
    );
}

#[test]
fn gc_after_forget_reclaims_the_space_and_stats_say_so() {
    let f = Fixture::new();
    let ids = nightly(&f, &["2026-11-19", "2026-11-20", "2026-11-21"]);
    let stats = ok(f.cmd("stats").arg("--json")).json();
    assert_eq!(stats["snapshots"], 3);
    assert_eq!(stats["logical_bytes"], 150_000);
    assert_eq!(stats["reclaimable_bytes"], 0);
    ok(f.cmd("forget").args([&ids[0], &ids[1]]));
    let stats = ok(f.cmd("stats").arg("--json")).json();
    // The data plus its chunk-list node.
    let unique = stats["unique_bytes"].as_u64().unwrap();
    assert!((50_000..50_200).contains(&unique), "{stats}");
    assert!(stats["reclaimable_bytes"].as_u64().unwrap() > 0, "{stats}");

    // A dry run condemns nothing; the real run with the default grace
    // condemns and waits; with no grace it deletes.
    let dry = ok(f.cmd("gc").args(["--dry-run", "--json"])).json();
    assert_eq!(dry["deleted_packs"], 0);
    assert!(!dry["condemned"].as_array().unwrap().is_empty());
    let waiting = ok(f.cmd("gc").arg("--json")).json();
    assert_eq!(waiting["deleted_packs"], 0);
    assert!(
        waiting["waiting"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("grace period"),
        "{waiting}"
    );
    ok(f.cmd("gc").args(["--grace", "0s"])).stdout_has(&["deleted 2 packs"]);
    let stats = ok(f.cmd("stats").arg("--json")).json();
    assert_eq!(stats["reclaimable_bytes"], 0, "{stats}");
    assert_eq!(stats["unreferenced_bytes"], 0, "{stats}");
    ok(f.cmd("verify").arg("--read-data")).stdout_has(&["no damage found"]);
    assert_eq!(f.restore_stdout(&ids[2], None), random_bytes(50_000, 2));
}
