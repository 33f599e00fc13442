//! Prometheus metrics of a `cairn run`: rendered in the text exposition
//! format, written atomically for node_exporter's textfile collector and/or
//! pushed to a Pushgateway (one group per job and source).
//!
//! The time of a source's last success comes from the repository (its
//! newest snapshot), not from this run: a failed run keeps reporting the
//! previous success, and alerting on "no success for 26 h" works even
//! though the Pushgateway never expires a metric.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::cmd::run::{Outcome, StepKind, source_tag};
use crate::config::Config;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    /// A `source` or `replica` label, if any.
    pub label: Option<(&'static str, String)>,
    pub value: f64,
}

/// Every metric: its name, help and type.
pub const METRICS: &[(&str, &str)] = &[
    (
        "cairn_run_timestamp_seconds",
        "When the last cairn run started.",
    ),
    (
        "cairn_run_duration_seconds",
        "How long the last cairn run took.",
    ),
    (
        "cairn_run_success",
        "1 if every step of the last run succeeded, else 0.",
    ),
    (
        "cairn_step_success",
        "1 if the step succeeded in the last run, else 0.",
    ),
    (
        "cairn_source_last_attempt_timestamp_seconds",
        "When the source was last backed up (successfully or not).",
    ),
    (
        "cairn_source_last_attempt_success",
        "1 if the source's last backup succeeded, else 0.",
    ),
    (
        "cairn_source_duration_seconds",
        "How long the source's last backup took.",
    ),
    (
        "cairn_source_bytes_read",
        "Bytes the source's last backup read.",
    ),
    (
        "cairn_source_bytes_new",
        "New bytes (before compression) the source's last backup added.",
    ),
    (
        "cairn_source_bytes_stored",
        "Bytes the source's last backup wrote to the repository.",
    ),
    (
        "cairn_source_last_success_timestamp_seconds",
        "Time of the source's newest snapshot in the repository.",
    ),
    (
        "cairn_source_snapshots",
        "Snapshots of the source kept in the repository.",
    ),
    (
        "cairn_replica_last_attempt_timestamp_seconds",
        "When `cairn replicate --metrics-file` last ran.",
    ),
    (
        "cairn_replica_last_attempt_exit_code",
        "Its exit code (0: success; the README lists the others).",
    ),
    (
        "cairn_replica_duration_seconds",
        "How long that replication took.",
    ),
    (
        "cairn_replica_last_attempt_success",
        "1 if the last replication to the replica succeeded, else 0.",
    ),
    (
        "cairn_replica_newest_snapshot_timestamp_seconds",
        "Time of the replica's newest snapshot.",
    ),
    (
        "cairn_replica_lag_seconds",
        "How far the replica's newest snapshot is behind the repository's.",
    ),
    (
        "cairn_repository_stored_bytes",
        "Bytes the repository holds in packs.",
    ),
    (
        "cairn_repository_reclaimable_bytes",
        "Bytes gc could free now.",
    ),
    (
        "cairn_verify_success",
        "1 if the last verify found no damage, else 0.",
    ),
    (
        "cairn_verify_timestamp_seconds",
        "When the last verify ran.",
    ),
    (
        "cairn_drill_timestamp_seconds",
        "When the last restore drill ran.",
    ),
    (
        "cairn_drill_success",
        "1 if the source's last restore drill passed, else 0.",
    ),
    (
        "cairn_drill_rto_seconds",
        "How long the source's last restore drill took to restore.",
    ),
];

fn seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The newest snapshot of a listing (`snapshots --json`) with its time,
/// and how many there are, of those carrying `tag` if given.
pub fn newest<'a>(
    listing: &'a serde_json::Value,
    tag: Option<&str>,
) -> (Option<(jiff::Timestamp, &'a serde_json::Value)>, u64) {
    let mut best: Option<(jiff::Timestamp, &serde_json::Value)> = None;
    let mut count = 0;
    for s in listing.as_array().into_iter().flatten() {
        let tagged = tag.is_none_or(|t| {
            s["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t)))
        });
        if !tagged {
            continue;
        }
        count += 1;
        if let Some(t) = s["time"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            && best.is_none_or(|(b, _)| t > b)
        {
            best = Some((t, s));
        }
    }
    (best, count)
}

/// The samples of a run.
pub fn samples(
    c: &Config,
    only: &[String],
    outcomes: &[Outcome],
    started: jiff::Timestamp,
    took: Duration,
    all_ok: bool,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut push = |name, label: Option<(&'static str, String)>, value: f64| {
        out.push(Sample { name, label, value });
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    push("cairn_run_timestamp_seconds", None, seconds(started));
    push("cairn_run_duration_seconds", None, took.as_secs_f64());
    push("cairn_run_success", None, flag(all_ok));
    for o in outcomes {
        push(
            "cairn_step_success",
            Some(("step", o.step.clone())),
            flag(o.ok()),
        );
    }
    let find = |kind: &StepKind| outcomes.iter().find(|o| &o.kind == kind);
    let listing = find(&StepKind::Snapshots)
        .filter(|o| o.ok())
        .and_then(|o| o.summary.clone());
    for s in &c.sources {
        let label = || Some(("source", s.name.clone()));
        if let Some(listing) = &listing {
            let (found, count) = newest(listing, Some(&source_tag(&s.name)));
            if let Some((t, _)) = found {
                push(
                    "cairn_source_last_success_timestamp_seconds",
                    label(),
                    seconds(t),
                );
            }
            push("cairn_source_snapshots", label(), count as f64);
        }
        if !(only.is_empty() || only.contains(&s.name)) {
            continue;
        }
        let Some(o) = find(&StepKind::Backup(s.name.clone())) else {
            continue;
        };
        push(
            "cairn_source_last_attempt_timestamp_seconds",
            label(),
            seconds(started),
        );
        push("cairn_source_last_attempt_success", label(), flag(o.ok()));
        push("cairn_source_duration_seconds", label(), o.seconds);
        if let (true, Some(summary)) = (o.ok(), &o.summary) {
            for (name, field) in [
                ("cairn_source_bytes_read", "bytes_read"),
                ("cairn_source_bytes_new", "new_blob_bytes"),
                ("cairn_source_bytes_stored", "stored_bytes"),
            ] {
                if let Some(n) = summary[field].as_u64() {
                    push(name, label(), n as f64);
                }
            }
        }
    }
    let repo_newest = listing
        .as_ref()
        .and_then(|l| newest(l, None).0)
        .map(|(t, _)| t);
    for r in &c.replicas {
        let label = || Some(("replica", r.name.clone()));
        if let Some(o) = find(&StepKind::Replicate(r.name.clone())) {
            push("cairn_replica_last_attempt_success", label(), flag(o.ok()));
        }
        let replica_newest = find(&StepKind::ReplicaSnapshots(r.name.clone()))
            .filter(|o| o.ok())
            .and_then(|o| o.summary.as_ref())
            .and_then(|l| newest(l, None).0)
            .map(|(t, _)| t);
        if let Some(t) = replica_newest {
            push(
                "cairn_replica_newest_snapshot_timestamp_seconds",
                label(),
                seconds(t),
            );
            if let Some(head) = repo_newest {
                push(
                    "cairn_replica_lag_seconds",
                    label(),
                    (seconds(head) - seconds(t)).max(0.0),
                );
            }
        }
    }
    if let Some(stats) = find(&StepKind::Stats)
        .filter(|o| o.ok())
        .and_then(|o| o.summary.as_ref())
    {
        for (name, field) in [
            ("cairn_repository_stored_bytes", "stored_bytes"),
            ("cairn_repository_reclaimable_bytes", "reclaimable_bytes"),
        ] {
            if let Some(n) = stats[field].as_u64() {
                push(name, None, n as f64);
            }
        }
    }
    if let Some(v) = find(&StepKind::Verify) {
        push("cairn_verify_success", None, flag(v.ok()));
        push("cairn_verify_timestamp_seconds", None, seconds(started));
    }
    out
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The samples in the text exposition format, each metric with its HELP
/// and TYPE, all gauges. `skip_label`: a label left out (the Pushgateway's
/// grouping key carries it).
pub fn render(samples: &[Sample], skip_label: Option<&str>) -> String {
    let mut text = String::new();
    for (name, help) in METRICS {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.name == *name).collect();
        if of.is_empty() {
            continue;
        }
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        for s in of {
            match &s.label {
                Some((k, v)) if Some(*k) != skip_label => {
                    let _ = writeln!(text, "{name}{{{k}=\"{}\"}} {}", escape(v), s.value);
                }
                _ => {
                    let _ = writeln!(text, "{name} {}", s.value);
                }
            }
        }
    }
    text
}

/// What `cairn replicate --metrics-file` reports of one run into `replica`
/// (the admin PC's daily pull): its outcome, and the destination's newest
/// snapshot (`None`: it could not be read).
pub fn replica_samples(replica: &str, code: u8, secs: f64, newest: Option<f64>) -> Vec<Sample> {
    let label = || Some(("replica", replica.to_string()));
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let mut samples = vec![
        Sample {
            name: "cairn_replica_last_attempt_success",
            label: label(),
            value: f64::from(u8::from(code == 0)),
        },
        Sample {
            name: "cairn_replica_last_attempt_exit_code",
            label: label(),
            value: f64::from(code),
        },
        Sample {
            name: "cairn_replica_last_attempt_timestamp_seconds",
            label: label(),
            value: now,
        },
        Sample {
            name: "cairn_replica_duration_seconds",
            label: label(),
            value: secs,
        },
    ];
    if let Some(t) = newest {
        samples.push(Sample {
            name: "cairn_replica_newest_snapshot_timestamp_seconds",
            label: label(),
            value: t,
        });
    }
    samples
}

/// Writes the metrics file atomically: a temporary file beside it, synced,
/// then renamed over it (the collector never reads half a file).
pub fn write_textfile(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-metrics")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(render(samples, None).as_bytes())?;
    tmp.as_file().sync_all()?;
    // Readable by the collector (tempfile creates 0600).
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Pushes to a Pushgateway: each source's samples to the group
/// `job/JOB/source/NAME`, the rest to `job/JOB` (PUT: replaces the group).
pub async fn push(base: &str, job: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = base.trim_end_matches('/');
    let mut groups: Vec<(String, Vec<Sample>, Option<&str>)> = Vec::new();
    let (per_source, rest): (Vec<Sample>, Vec<Sample>) = samples
        .iter()
        .cloned()
        .partition(|s| matches!(&s.label, Some(("source", _))));
    let mut names: Vec<String> = per_source
        .iter()
        .filter_map(|s| s.label.as_ref().map(|(_, v)| v.clone()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let of: Vec<Sample> = per_source
            .iter()
            .filter(|s| s.label.as_ref().is_some_and(|(_, v)| *v == name))
            .cloned()
            .collect();
        groups.push((
            format!("{base}/metrics/job/{job}/source/{name}"),
            of,
            Some("source"),
        ));
    }
    groups.push((format!("{base}/metrics/job/{job}"), rest, None));
    for (url, of, skip) in groups {
        let response = client
            .put(&url)
            .header("content-type", "text/plain; version=0.0.4")
            .body(render(&of, skip))
            .send()
            .await?;
        if !response.status().is_success() {
            anyhow::bail!("{url}: {}", response.status());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_text_format_has_help_type_and_escaped_labels() {
        let samples = vec![
            Sample {
                name: "cairn_source_last_attempt_success",
                label: Some(("source", "a\"b".into())),
                value: 0.0,
            },
            Sample {
                name: "cairn_run_success",
                label: None,
                value: 1.0,
            },
        ];
        let text = render(&samples, None);
        assert_eq!(
            text,
            "# HELP cairn_run_success 1 if every step of the last run succeeded, else 0.\n\
             # TYPE cairn_run_success gauge\n\
             cairn_run_success 1\n\
             # HELP cairn_source_last_attempt_success 1 if the source's last backup succeeded, else 0.\n\
             # TYPE cairn_source_last_attempt_success gauge\n\
             cairn_source_last_attempt_success{source=\"a\\\"b\"} 0\n"
        );
        assert!(render(&samples, Some("source")).contains("cairn_source_last_attempt_success 0\n"));
    }

    #[test]
    fn every_metric_written_is_documented() {
        let sources = [
            include_str!("metrics.rs"),
            include_str!("cmd/run.rs"),
            include_str!("cmd/drill.rs"),
            include_str!("cmd/replicate.rs"),
        ];
        for text in sources {
            for (i, _) in text.match_indices("\"cairn_") {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    METRICS.iter().any(|(m, _)| *m == name) || name == "cairn_",
                    "{name} is written but not in METRICS"
                );
            }
        }
    }

    /// The shipped alerting rules parse, alert on metrics that exist, and
    /// hold the three the runbook relies on.
    #[test]
    fn the_alerting_rules_parse_and_use_real_metrics() {
        let text = include_str!("../../deploy/prometheus/cairn-alerts.yml");
        let docs = yaml_rust2::YamlLoader::load_from_str(text).unwrap();
        let groups = docs[0]["groups"].as_vec().unwrap();
        let mut alerts = BTreeMap::new();
        for g in groups {
            assert!(g["name"].as_str().is_some());
            for r in g["rules"].as_vec().unwrap() {
                let name = r["alert"].as_str().unwrap();
                let expr = r["expr"].as_str().unwrap();
                assert!(
                    ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap()),
                    "{name}"
                );
                assert!(r["annotations"]["summary"].as_str().is_some(), "{name}");
                for (i, _) in expr.match_indices("cairn_") {
                    let metric: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        METRICS.iter().any(|(m, _)| *m == metric),
                        "{name} uses {metric}, which cairn never writes"
                    );
                }
                alerts.insert(name.to_string(), expr.to_string());
            }
        }
        assert_eq!(
            alerts["CairnBackupMissing"],
            "time() - cairn_source_last_success_timestamp_seconds > 26 * 3600"
        );
        assert_eq!(
            alerts["CairnReplicaBehind"],
            "time() - cairn_replica_newest_snapshot_timestamp_seconds > 36 * 3600"
        );
        assert_eq!(
            alerts["CairnVerifyFoundDamage"],
            "cairn_verify_success == 0"
        );
    }

    #[test]
    fn the_newest_snapshot_of_a_source_is_found_by_its_tag() {
        let listing = serde_json::json!([
            {"time": "2026-12-01T02:00:00Z", "tags": ["source:pg"]},
            {"time": "2026-12-03T02:00:00Z", "tags": ["source:pg"]},
            {"time": "2026-12-04T02:00:00Z", "tags": ["source:lms"]},
        ]);
        let (found, n) = newest(&listing, Some("source:pg"));
        let (t, s) = found.unwrap();
        assert_eq!(s, &listing[1]);
        assert_eq!(t.to_string(), "2026-12-03T02:00:00Z");
        assert_eq!(n, 2);
        assert_eq!(newest(&listing, None).1, 3);
        assert!(matches!(newest(&listing, Some("source:none")), (None, 0)));
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.prom");
        std::fs::write(&path, "old").unwrap();
        let s = [Sample {
            name: "cairn_run_success",
            label: None,
            value: 0.0,
        }];
        write_textfile(&path, &s).unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("cairn_run_success 0\n")
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
