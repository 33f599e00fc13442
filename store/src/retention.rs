//! Retention: which snapshots a `--keep-*` policy keeps, and why.
//!
//! Pure: snapshots and a policy in, a [`ForgetPlan`] out. Snapshots are
//! grouped (by host, name and/or tags); in each group, newest first, every
//! rule keeps its own snapshots: `last N` the N newest; `hourly/daily/
//! weekly/monthly/yearly N` the newest snapshot of each of the N newest
//! calendar buckets that hold one (buckets in **UTC**; weeks are ISO 8601
//! weeks); `within D` every snapshot no older than D before the group's
//! newest; `tag T` every snapshot tagged T. A snapshot kept by any rule is
//! kept, with every rule that kept it. The newest snapshot of a group is
//! always kept. Removing a snapshot deletes its manifest only; its data goes
//! when garbage collection finds nothing else needs it.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::manifest::Snapshot;

/// A retention policy.
#[derive(Debug, Clone, Default)]
pub struct ForgetPolicy {
    /// Keep the N newest.
    pub last: Option<u32>,
    /// Keep the newest of each of the N newest hours that have one.
    pub hourly: Option<u32>,
    /// ... days.
    pub daily: Option<u32>,
    /// ... ISO weeks.
    pub weekly: Option<u32>,
    /// ... months.
    pub monthly: Option<u32>,
    /// ... years.
    pub yearly: Option<u32>,
    /// Keep every snapshot within this span before the group's newest.
    pub within: Option<Span>,
    /// Keep every snapshot carrying one of these tags.
    pub tags: Vec<String>,
    /// How snapshots are grouped.
    pub group_by: GroupBy,
}

/// What makes two snapshots part of the same group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// The same host.
    pub host: bool,
    /// The same name (the snapshot's top-level item names).
    pub name: bool,
    /// The same set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            name: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parses `host,name,tags` (any subset; empty: one group).
    pub fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy {
            host: false,
            name: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "name" => g.name = true,
                "tags" => g.tags = true,
                other => {
                    return Err(Error::invalid(format!(
                        "--group-by {other:?}: use host, name and/or tags, comma-separated"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "bucket")]
pub enum KeepReason {
    /// Among the N newest.
    Last,
    /// Newest of its hour (`2026-11-21T02`).
    Hourly(String),
    /// Newest of its day (`2026-11-21`).
    Daily(String),
    /// Newest of its ISO week (`2026-W47`).
    Weekly(String),
    /// Newest of its month (`2026-11`).
    Monthly(String),
    /// Newest of its year (`2026`).
    Yearly(String),
    /// Within the span before the group's newest.
    Within,
    /// Carries a kept tag.
    Tag(String),
    /// The newest of its group, which is never removed.
    Newest,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Last => f.write_str("last"),
            KeepReason::Hourly(b) => write!(f, "hourly {b}"),
            KeepReason::Daily(b) => write!(f, "daily {b}"),
            KeepReason::Weekly(b) => write!(f, "weekly {b}"),
            KeepReason::Monthly(b) => write!(f, "monthly {b}"),
            KeepReason::Yearly(b) => write!(f, "yearly {b}"),
            KeepReason::Within => f.write_str("within"),
            KeepReason::Tag(t) => write!(f, "tag {t}"),
            KeepReason::Newest => f.write_str("newest of its group"),
        }
    }
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// Its time.
    pub time: Timestamp,
    /// Its host.
    pub host: String,
    /// Its name (top-level item names).
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
}

impl From<&Snapshot> for SnapshotInfo {
    fn from(s: &Snapshot) -> Self {
        SnapshotInfo {
            id: s.id,
            time: s.manifest.time,
            host: s.manifest.host.clone(),
            name: s.manifest.name(),
            tags: s.manifest.tags.clone(),
        }
    }
}

/// A group's key: the values it is grouped by (empty when not grouped by it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host, when grouped by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Name, when grouped by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags (sorted), when grouped by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host={h}"));
        }
        if let Some(n) = &self.name {
            parts.push(format!("name={n}"));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags={}", t.join(",")));
        }
        if parts.is_empty() {
            f.write_str("all snapshots")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// One snapshot the plan keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: Timestamp,
    /// Every rule that keeps it.
    pub reasons: Vec<KeepReason>,
}

/// One snapshot the plan removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: Timestamp,
}

/// What the policy does to one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub group: GroupKey,
    /// Kept snapshots, newest first.
    pub keep: Vec<Kept>,
    /// Removed snapshots, newest first.
    pub remove: Vec<Removed>,
}

/// What the policy does to every group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgetPlan {
    /// The groups, in key order.
    pub groups: Vec<GroupPlan>,
}

impl ForgetPlan {
    /// Every snapshot to remove.
    pub fn removed(&self) -> impl Iterator<Item = &Removed> {
        self.groups.iter().flat_map(|g| g.remove.iter())
    }
}

impl ForgetPolicy {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// The calendar bucket of a time, in UTC, for each calendar rule.
fn bucket(time: Timestamp, rule: Calendar) -> String {
    let t = time.to_zoned(TimeZone::UTC);
    match rule {
        Calendar::Hour => format!("{}T{:02}", t.date(), t.hour()),
        Calendar::Day => t.date().to_string(),
        Calendar::Week => {
            let w = t.date().iso_week_date();
            format!("{:04}-W{:02}", w.year(), w.week())
        }
        Calendar::Month => format!("{:04}-{:02}", t.year(), t.month()),
        Calendar::Year => format!("{:04}", t.year()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Calendar {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// Computes the plan. `force` allows a group where no rule keeps anything
/// (only its newest snapshot would stay).
pub fn plan_forget(
    snapshots: &[SnapshotInfo],
    policy: &ForgetPolicy,
    force: bool,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::invalid(
            "the policy is empty: give at least one --keep-* rule (e.g. --keep-daily 7 --keep-weekly 4 --keep-monthly 12)",
        ));
    }
    for tag in &policy.tags {
        if !snapshots.iter().any(|s| s.tags.contains(tag)) {
            let mut present: Vec<&str> = snapshots
                .iter()
                .flat_map(|s| s.tags.iter().map(String::as_str))
                .collect();
            present.sort_unstable();
            present.dedup();
            return Err(Error::invalid(format!(
                "--keep-tag {tag:?}: no snapshot has that tag (tags in use: {})",
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            )));
        }
    }
    let mut groups: BTreeMap<GroupKey, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        let g = policy.group_by;
        let key = GroupKey {
            host: g.host.then(|| s.host.clone()),
            name: g.name.then(|| s.name.clone()),
            tags: g.tags.then(|| {
                let mut t = s.tags.clone();
                t.sort();
                t.dedup();
                t
            }),
        };
        groups.entry(key).or_default().push(s);
    }
    let mut plans = Vec::new();
    for (group, mut members) in groups {
        // Newest first; ties broken by id so the plan is deterministic.
        members.sort_by_key(|s| std::cmp::Reverse((s.time, s.id)));
        let reasons = keep_reasons(&members, policy)?;
        if !force && members.len() > 1 && reasons.iter().all(Vec::is_empty) {
            return Err(Error::invalid(format!(
                "the policy keeps nothing in group {group} ({} snapshots; only the newest would stay); \
                 check the rules, or pass --force",
                members.len()
            )));
        }
        let mut plan = GroupPlan {
            group,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for (i, (s, mut why)) in members.iter().zip(reasons).enumerate() {
            if i == 0 && why.is_empty() {
                why.push(KeepReason::Newest);
            }
            if why.is_empty() {
                plan.remove.push(Removed {
                    id: s.id,
                    time: s.time,
                });
            } else {
                plan.keep.push(Kept {
                    id: s.id,
                    time: s.time,
                    reasons: why,
                });
            }
        }
        plans.push(plan);
    }
    Ok(ForgetPlan { groups: plans })
}

/// For a group sorted newest first: the rules keeping each snapshot.
fn keep_reasons(members: &[&SnapshotInfo], policy: &ForgetPolicy) -> Result<Vec<Vec<KeepReason>>> {
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); members.len()];
    if let Some(n) = policy.last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push(KeepReason::Last);
        }
    }
    type Rule = (Option<u32>, Calendar, fn(String) -> KeepReason);
    let calendar: [Rule; 5] = [
        (policy.hourly, Calendar::Hour, KeepReason::Hourly),
        (policy.daily, Calendar::Day, KeepReason::Daily),
        (policy.weekly, Calendar::Week, KeepReason::Weekly),
        (policy.monthly, Calendar::Month, KeepReason::Monthly),
        (policy.yearly, Calendar::Year, KeepReason::Yearly),
    ];
    for (count, unit, reason) in calendar {
        let Some(n) = count else { continue };
        let mut kept = 0;
        let mut last_bucket: Option<String> = None;
        for (s, r) in members.iter().zip(reasons.iter_mut()) {
            if kept == n {
                break;
            }
            let b = bucket(s.time, unit);
            if last_bucket.as_ref() != Some(&b) {
                r.push(reason(b.clone()));
                last_bucket = Some(b);
                kept += 1;
            }
        }
    }
    if let (Some(span), Some(newest)) = (policy.within, members.first()) {
        let newest = newest.time.to_zoned(TimeZone::UTC);
        let cutoff = newest
            .checked_sub(span)
            .map_err(|e| Error::invalid(format!("--keep-within {span}: {e}")))?
            .timestamp();
        for (s, r) in members.iter().zip(reasons.iter_mut()) {
            if s.time >= cutoff {
                r.push(KeepReason::Within);
            }
        }
    }
    for tag in &policy.tags {
        for (s, r) in members.iter().zip(reasons.iter_mut()) {
            if s.tags.contains(tag) {
                r.push(KeepReason::Tag(tag.clone()));
            }
        }
    }
    Ok(reasons)
}

/// Parses a `--keep-within` span: `30d`, `2w`, `1y6mo`, `12h`, or ISO 8601 (`P30D`).
pub fn parse_span(s: &str) -> Result<Span> {
    s.parse::<Span>().map_err(|e| {
        Error::invalid(format!(
            "--keep-within {s:?} is not a duration ({e}); write e.g. 36h, 30d, 2w, 6mo or 1y"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    fn snap(n: u32, time: Timestamp, host: &str, tags: &[&str]) -> SnapshotInfo {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        SnapshotInfo {
            id: SnapshotId(id),
            time,
            host: host.into(),
            name: "couchdb".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn kept(plan: &ForgetPlan) -> BTreeSet<SnapshotId> {
        plan.groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|k| k.id))
            .collect()
    }

    fn policy(daily: u32, weekly: u32, monthly: u32) -> ForgetPolicy {
        ForgetPolicy {
            daily: Some(daily),
            weekly: Some(weekly),
            monthly: Some(monthly),
            ..ForgetPolicy::default()
        }
    }

    #[test]
    fn seven_four_twelve_over_a_year_of_nightly_snapshots() {
        // Nightly at 02:00 UTC, 2025-11-22 to 2026-11-21 (a Saturday).
        let first: Timestamp = "2025-11-22T02:00:00Z".parse().unwrap();
        let all: Vec<SnapshotInfo> = (0..365)
            .map(|d| {
                snap(
                    d,
                    first + Span::new().hours(24 * i64::from(d)),
                    "node4",
                    &[],
                )
            })
            .collect();
        let plan = plan_forget(&all, &policy(7, 4, 12), false).unwrap();
        let dates: BTreeSet<String> = plan.groups[0]
            .keep
            .iter()
            .map(|k| k.time.to_zoned(TimeZone::UTC).date().to_string())
            .collect();
        let expected: BTreeSet<String> = [
            // daily: the last 7 days
            "2026-11-15",
            "2026-11-16",
            "2026-11-17",
            "2026-11-18",
            "2026-11-19",
            "2026-11-20",
            "2026-11-21",
            // weekly: Sundays ending ISO weeks 45 and 44 (weeks 47 and 46 are already kept)
            "2026-11-08",
            "2026-11-01",
            // monthly: the last day of each month back to December 2025
            "2026-10-31",
            "2026-09-30",
            "2026-08-31",
            "2026-07-31",
            "2026-06-30",
            "2026-05-31",
            "2026-04-30",
            "2026-03-31",
            "2026-02-28",
            "2026-01-31",
            "2025-12-31",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(dates, expected);
        assert_eq!(plan.groups[0].remove.len(), 365 - 20);
        // The newest is kept by every rule that applies.
        let newest = &plan.groups[0].keep[0];
        assert_eq!(newest.reasons.len(), 3, "{:?}", newest.reasons);
    }

    #[test]
    fn the_newest_of_each_group_stays_and_groups_are_separate() {
        let t: Timestamp = "2026-11-21T02:00:00Z".parse().unwrap();
        let all = vec![
            snap(1, t, "node4", &["nightly"]),
            snap(2, t - Span::new().hours(24), "node4", &["nightly"]),
            snap(3, t - Span::new().hours(48), "pc", &[]),
        ];
        let only_tag = ForgetPolicy {
            tags: vec!["nightly".into()],
            ..ForgetPolicy::default()
        };
        let plan = plan_forget(&all, &only_tag, false).unwrap();
        assert_eq!(plan.groups.len(), 2);
        let pc = plan
            .groups
            .iter()
            .find(|g| g.group.host.as_deref() == Some("pc"))
            .unwrap();
        assert_eq!(pc.keep[0].reasons, vec![KeepReason::Newest]);
        assert_eq!(kept(&plan).len(), 3);
    }

    #[test]
    fn bad_policies_are_refused_with_a_clear_message() {
        let t: Timestamp = "2026-11-21T02:00:00Z".parse().unwrap();
        let all = vec![
            snap(1, t, "a", &["x"]),
            snap(2, t - Span::new().hours(1), "a", &[]),
        ];
        let err = plan_forget(&all, &ForgetPolicy::default(), false).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let unknown = ForgetPolicy {
            tags: vec!["monthly".into()],
            ..ForgetPolicy::default()
        };
        let err = plan_forget(&all, &unknown, false).unwrap_err();
        assert!(
            err.to_string().contains("no snapshot has that tag") && err.to_string().contains('x'),
            "{err}"
        );
        // A policy that keeps nothing in a group is refused unless forced.
        let nothing = ForgetPolicy {
            within: Some(parse_span("0s").unwrap()),
            group_by: GroupBy::parse("").unwrap(),
            ..ForgetPolicy::default()
        };
        let both_older = vec![snap(1, t, "a", &[]), snap(2, t, "a", &[])];
        assert!(
            plan_forget(&both_older, &nothing, false).is_ok(),
            "within 0 keeps ties at the newest time"
        );
        let hourly_zero = ForgetPolicy {
            hourly: Some(0),
            ..ForgetPolicy::default()
        };
        let err = plan_forget(&all, &hourly_zero, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let plan = plan_forget(&all, &hourly_zero, true).unwrap();
        assert_eq!(plan.removed().count(), 1);
        assert!(GroupBy::parse("host,paths").is_err());
        assert!(parse_span("thirty days").is_err());
        assert_eq!(parse_span("30d").unwrap().get_days(), 30);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let t: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let all: Vec<SnapshotInfo> = (0..10)
            .map(|d| snap(d, t - Span::new().hours(24 * i64::from(d)), "a", &[]))
            .collect();
        let within = ForgetPolicy {
            within: Some(parse_span("3d").unwrap()),
            ..ForgetPolicy::default()
        };
        // 3 days back from the newest, inclusive: 4 snapshots.
        assert_eq!(kept(&plan_forget(&all, &within, false).unwrap()).len(), 4);
        // Calendar arithmetic in UTC: one month before March 1st is February 1st.
        let month = ForgetPolicy {
            within: Some(parse_span("1mo").unwrap()),
            ..ForgetPolicy::default()
        };
        let all: Vec<SnapshotInfo> = (0..40)
            .map(|d| snap(d, t - Span::new().hours(24 * i64::from(d)), "a", &[]))
            .collect();
        assert_eq!(kept(&plan_forget(&all, &month, false).unwrap()).len(), 29);
    }

    /// The reference: for each calendar rule, group by bucket, take the N
    /// newest buckets, keep the newest snapshot of each.
    fn reference(all: &[SnapshotInfo], policy: &ForgetPolicy) -> BTreeSet<SnapshotId> {
        let mut by_group: HashMap<(String, String), Vec<&SnapshotInfo>> = HashMap::new();
        for s in all {
            by_group
                .entry((s.host.clone(), s.name.clone()))
                .or_default()
                .push(s);
        }
        let mut keep = BTreeSet::new();
        for members in by_group.values() {
            let newest = members.iter().max_by_key(|s| (s.time, s.id)).unwrap();
            keep.insert(newest.id);
            if let Some(n) = policy.last {
                let mut sorted = members.clone();
                sorted.sort_by_key(|s| std::cmp::Reverse((s.time, s.id)));
                keep.extend(sorted.iter().take(n as usize).map(|s| s.id));
            }
            for (count, unit) in [
                (policy.hourly, Calendar::Hour),
                (policy.daily, Calendar::Day),
                (policy.weekly, Calendar::Week),
                (policy.monthly, Calendar::Month),
                (policy.yearly, Calendar::Year),
            ] {
                let Some(n) = count else { continue };
                let mut buckets: BTreeMap<String, &SnapshotInfo> = BTreeMap::new();
                for s in members {
                    let b = bucket(s.time, unit);
                    let e = buckets.entry(b).or_insert(s);
                    if (s.time, s.id) > (e.time, e.id) {
                        *e = s;
                    }
                }
                keep.extend(buckets.values().rev().take(n as usize).map(|s| s.id));
            }
        }
        keep
    }

    proptest! {
        #[test]
        fn the_plan_matches_the_reference(
            times in proptest::collection::vec(0i64..(3 * 366 * 24 * 3600), 1..80),
            hosts in proptest::collection::vec(0u8..2, 80),
            rules in (proptest::option::of(0u32..5), proptest::option::of(0u32..5), proptest::option::of(0u32..5),
                      proptest::option::of(0u32..5), proptest::option::of(0u32..5), proptest::option::of(0u32..3)),
        ) {
            // Around 2024 (a leap year) and its month ends; many per bucket
            // (second resolution over three years: days repeat often).
            let base: Timestamp = "2023-12-30T22:00:00Z".parse().unwrap();
            let all: Vec<SnapshotInfo> = times
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    // Cluster some near month ends and leap day.
                    let t = if i % 5 == 0 { t - t % (86_400 * 29) } else { t };
                    snap(u32::try_from(i).unwrap(), base + Span::new().seconds(t), if hosts[i] == 0 { "a" } else { "b" }, &[])
                })
                .collect();
            let (hourly, daily, weekly, monthly, yearly, last) = rules;
            let policy = ForgetPolicy { last, hourly, daily, weekly, monthly, yearly, ..ForgetPolicy::default() };
            prop_assume!(!policy.is_empty());
            let plan = plan_forget(&all, &policy, true).unwrap();
            prop_assert_eq!(kept(&plan), reference(&all, &policy));
            // Every snapshot is either kept or removed, once.
            let total: usize = plan.groups.iter().map(|g| g.keep.len() + g.remove.len()).sum();
            prop_assert_eq!(total, all.len());
        }
    }
}
