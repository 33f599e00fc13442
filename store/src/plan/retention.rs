//! Retention: which snapshots a `--keep-*` policy keeps, and why.
//!
//! Pure: snapshots and a policy in, a [`ForgetPlan`] out. Snapshots are
//! grouped (by host, name and/or tags); in each group, newest first, every
//! rule keeps its own snapshots: `last N` the N newest; `hourly/daily/
//! weekly/monthly/yearly N` the newest snapshot of each of the N newest
//! calendar buckets that hold one (buckets in **UTC**; weeks are ISO 8601
//! weeks); `within D` every snapshot no older than D before the group's
//! newest timely snapshot; `tag T` every snapshot tagged T. A snapshot kept
//! by any rule is kept, with every rule that kept it. The newest snapshot of
//! a group is always kept. Removing a snapshot deletes its manifest only;
//! its data goes when garbage collection finds nothing else needs it.
//!
//! Times are the signer's claim, so they are weighed against when the store
//! received each snapshot (`seen`, format-spec §12.6). A snapshot claiming
//! a time more than [`MAX_CLOCK_SKEW`] after its arrival never gets here
//! (it is refused when listed). One stored more than `max_lag` after the
//! time it claims is *late* (back-dated, imported, or copied late to a
//! replica): in a calendar bucket holding a timely snapshot, the newest
//! timely one represents the bucket, so a back-dated snapshot never takes a
//! timely one's place.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::manifest::Snapshot;
use crate::id::SnapshotId;

/// How far a snapshot's claimed time may run ahead of its arrival at the
/// store (the signer's and the store's clocks disagreeing) before it is
/// refused as "from the future".
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(10);

/// The default `max_lag`: a snapshot stored more than this after the time it
/// claims is late.
pub const DEFAULT_MAX_LAG: SignedDuration = SignedDuration::from_hours(24);

/// Whether a snapshot claiming `time` and stored at `seen` claims a time
/// more than [`MAX_CLOCK_SKEW`] after it arrived (and must be refused).
pub fn from_the_future(time: Timestamp, seen: Timestamp) -> bool {
    seen.duration_until(time) > MAX_CLOCK_SKEW
}

/// Whether a snapshot claiming `time` and stored at `seen` arrived more than
/// `max_lag` after the time it claims.
pub fn is_late(time: Timestamp, seen: Option<Timestamp>, max_lag: SignedDuration) -> bool {
    seen.is_some_and(|seen| time.duration_until(seen) > max_lag)
}

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
    /// Keep every snapshot within this span before the group's newest
    /// timely snapshot.
    pub within: Option<Span>,
    /// Keep every snapshot carrying one of these tags.
    pub tags: Vec<String>,
    /// How snapshots are grouped.
    pub group_by: GroupBy,
    /// A snapshot stored more than this after its time is late (default
    /// [`DEFAULT_MAX_LAG`]).
    pub max_lag: Option<SignedDuration>,
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
    /// When the store received it (`None`: unknown, taken as timely).
    pub seen: Option<Timestamp>,
}

impl From<&Snapshot> for SnapshotInfo {
    fn from(s: &Snapshot) -> Self {
        SnapshotInfo {
            id: s.id,
            time: s.manifest.time,
            host: s.manifest.host.clone(),
            name: s.manifest.name(),
            tags: s.manifest.tags.clone(),
            seen: s.seen,
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
    /// Stored more than `max_lag` after its time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// One snapshot the plan removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: Timestamp,
    /// Stored more than `max_lag` after its time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
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
        let max_lag = policy.max_lag.unwrap_or(DEFAULT_MAX_LAG);
        let late: Vec<bool> = members
            .iter()
            .map(|s| is_late(s.time, s.seen, max_lag))
            .collect();
        let reasons = keep_reasons(&members, &late, policy)?;
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
        for (i, ((s, mut why), late)) in members.iter().zip(reasons).zip(late).enumerate() {
            if i == 0 && why.is_empty() {
                why.push(KeepReason::Newest);
            }
            if why.is_empty() {
                plan.remove.push(Removed {
                    id: s.id,
                    time: s.time,
                    late,
                });
            } else {
                plan.keep.push(Kept {
                    id: s.id,
                    time: s.time,
                    reasons: why,
                    late,
                });
            }
        }
        plans.push(plan);
    }
    Ok(ForgetPlan { groups: plans })
}

/// For a group sorted newest first (`late[i]`: member `i` is late): the
/// rules keeping each snapshot.
fn keep_reasons(
    members: &[&SnapshotInfo],
    late: &[bool],
    policy: &ForgetPolicy,
) -> Result<Vec<Vec<KeepReason>>> {
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
        for (b, i) in representatives(members, late, unit)
            .into_iter()
            .take(n as usize)
        {
            reasons[i].push(reason(b));
        }
    }
    // From the newest timely snapshot (else the newest): a snapshot claiming
    // a later time cannot move the window.
    let anchor = members
        .iter()
        .zip(late)
        .find(|(_, late)| !**late)
        .map(|(s, _)| s)
        .or(members.first());
    if let (Some(span), Some(newest)) = (policy.within, anchor) {
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

/// Each calendar bucket holding a member, newest first, with the member
/// representing it: its newest timely member, else (every member of the
/// bucket late) its newest.
fn representatives(
    members: &[&SnapshotInfo],
    late: &[bool],
    unit: Calendar,
) -> Vec<(String, usize)> {
    // Members are newest first, so a bucket's members are adjacent.
    let mut out: Vec<(String, usize, bool)> = Vec::new();
    for (i, s) in members.iter().enumerate() {
        let b = bucket(s.time, unit);
        match out.last_mut() {
            Some((last, chosen, timely)) if *last == b => {
                if !*timely && !late[i] {
                    *chosen = i;
                    *timely = true;
                }
            }
            _ => out.push((b, i, !late[i])),
        }
    }
    out.into_iter().map(|(b, i, _)| (b, i)).collect()
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
            seen: None,
        }
    }

    /// `snap`, received by the store at `seen`.
    fn stored(n: u32, time: Timestamp, seen: Timestamp) -> SnapshotInfo {
        SnapshotInfo {
            seen: Some(seen),
            ..snap(n, time, "node4", &[])
        }
    }

    #[test]
    fn back_dated_snapshots_never_represent_a_bucket_holding_a_timely_one() {
        // Nightly at 02:00, stored 5 minutes later, for 60 days; then, on
        // the last day, one forgery at 23:59:59 of each of those days.
        let first: Timestamp = "2026-09-01T02:00:00Z".parse().unwrap();
        let day = |d: i64| first + Span::new().hours(24 * d);
        let genuine: Vec<SnapshotInfo> = (0..60u32)
            .map(|d| {
                let t = day(i64::from(d));
                stored(d, t, t + Span::new().minutes(5))
            })
            .collect();
        // The forgeries arrive at 02:00 the next day.
        let now = day(60);
        let forged: Vec<SnapshotInfo> = (0..60u32)
            .map(|d| {
                let t = day(i64::from(d)) + Span::new().hours(21).minutes(59).seconds(59);
                stored(1000 + d, t, now)
            })
            .collect();
        let p = policy(7, 4, 12);
        let honest = kept(&plan_forget(&genuine, &p, false).unwrap());
        let all: Vec<SnapshotInfo> = genuine.iter().chain(&forged).cloned().collect();
        let plan = plan_forget(&all, &p, false).unwrap();
        let after = kept(&plan);
        // Only the forgery within max_lag of its arrival (the last day's)
        // takes a genuine one's place, in that day's bucket only.
        let lost: Vec<SnapshotId> = honest.difference(&after).copied().collect();
        assert_eq!(lost, vec![genuine[59].id]);
        let forged_kept: Vec<SnapshotId> = after.difference(&honest).copied().collect();
        assert_eq!(forged_kept, vec![forged[59].id]);
        assert_eq!(plan.groups[0].remove.iter().filter(|r| r.late).count(), 59);
        // A late snapshot alone in its bucket still represents it.
        let lone = vec![stored(1, day(0), now), stored(2, day(1), day(1))];
        let plan = plan_forget(&lone, &policy(2, 0, 0), false).unwrap();
        assert_eq!(kept(&plan).len(), 2);
        assert!(plan.groups[0].keep[1].late);
    }

    #[test]
    fn times_against_arrival() {
        let t: Timestamp = "2026-11-21T02:00:00Z".parse().unwrap();
        let minutes = |m: i64| SignedDuration::from_mins(m);
        assert!(!from_the_future(t, t));
        assert!(!from_the_future(t + minutes(10), t));
        assert!(from_the_future(t + minutes(11), t));
        assert!(!is_late(t, Some(t + minutes(24 * 60)), DEFAULT_MAX_LAG));
        assert!(is_late(t, Some(t + minutes(24 * 60 + 1)), DEFAULT_MAX_LAG));
        assert!(!is_late(t, None, DEFAULT_MAX_LAG));
        // Extreme times from a hostile store do not overflow.
        assert!(from_the_future(Timestamp::MAX, Timestamp::MIN));
        assert!(is_late(
            Timestamp::MIN,
            Some(Timestamp::MAX),
            DEFAULT_MAX_LAG
        ));
    }

    #[test]
    fn keep_within_ignores_a_newer_late_snapshot_and_counts_from_the_newest_timely() {
        let t: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let mut all: Vec<SnapshotInfo> = (0..10)
            .map(|d| {
                let at = t - Span::new().hours(24 * i64::from(d));
                stored(d, at, at)
            })
            .collect();
        // Claims a day after the newest timely one, but arrived a week later.
        all.push(stored(
            99,
            t + Span::new().hours(24),
            t + Span::new().hours(24 * 8),
        ));
        let within = ForgetPolicy {
            within: Some(parse_span("3d").unwrap()),
            ..ForgetPolicy::default()
        };
        // 3 days back from the newest timely one (t): 4, plus the late one.
        assert_eq!(kept(&plan_forget(&all, &within, false).unwrap()).len(), 5);
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
    /// newest buckets, keep the newest timely snapshot of each (the newest
    /// when all of the bucket is late); keep every snapshot within the span
    /// before the newest timely one (else the newest).
    fn reference(all: &[SnapshotInfo], policy: &ForgetPolicy) -> BTreeSet<SnapshotId> {
        let max_lag = policy.max_lag.unwrap_or(DEFAULT_MAX_LAG);
        let timely = |s: &SnapshotInfo| !is_late(s.time, s.seen, max_lag);
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
                    if (timely(s), s.time, s.id) > (timely(e), e.time, e.id) {
                        *e = s;
                    }
                }
                keep.extend(buckets.values().rev().take(n as usize).map(|s| s.id));
            }
            if let Some(span) = policy.within {
                let anchor = members
                    .iter()
                    .filter(|s| timely(s))
                    .max_by_key(|s| (s.time, s.id))
                    .unwrap_or(newest);
                let cutoff = anchor.time - SignedDuration::try_from(span).unwrap();
                keep.extend(members.iter().filter(|s| s.time >= cutoff).map(|s| s.id));
            }
        }
        keep
    }

    proptest! {
        #[test]
        fn the_plan_matches_the_reference(
            times in proptest::collection::vec(0i64..(3 * 366 * 24 * 3600), 1..80),
            hosts in proptest::collection::vec(0u8..2, 80),
            lags in proptest::collection::vec(prop_oneof![Just(0i64), Just(300), 0i64..(4 * 86_400)], 80),
            within_hours in proptest::option::of(0i64..2000),
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
                    let time = base + Span::new().seconds(t);
                    SnapshotInfo {
                        // Stored at once, minutes later, or days later (late).
                        seen: Some(time + Span::new().seconds(lags[i])),
                        ..snap(u32::try_from(i).unwrap(), time, if hosts[i] == 0 { "a" } else { "b" }, &[])
                    }
                })
                .collect();
            let (hourly, daily, weekly, monthly, yearly, last) = rules;
            let within = within_hours.map(|h| Span::new().hours(h));
            let policy = ForgetPolicy { last, hourly, daily, weekly, monthly, yearly, within, ..ForgetPolicy::default() };
            prop_assume!(!policy.is_empty());
            let plan = plan_forget(&all, &policy, true).unwrap();
            prop_assert_eq!(kept(&plan), reference(&all, &policy));
            // Every snapshot is either kept or removed, once.
            let total: usize = plan.groups.iter().map(|g| g.keep.len() + g.remove.len()).sum();
            prop_assert_eq!(total, all.len());
        }
    }
}
