//! Choosing a snapshot: `latest`, an id prefix, or the newest at or before a time.
//!
//! Times must carry an explicit offset (`Z` or `±HH:MM`): a bare local time
//! is refused rather than guessed. Everything is compared and shown in UTC.

use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::format::manifest::Snapshot;

/// Which snapshot a command means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The newest.
    Latest,
    /// The one whose id starts with this lowercase hex.
    IdPrefix(String),
    /// The newest at or before this instant.
    Before(Timestamp),
}

impl Selector {
    /// Parses `latest` or an id prefix (at least 4 hex characters).
    pub fn parse(s: &str) -> Result<Selector> {
        if s == "latest" {
            return Ok(Selector::Latest);
        }
        let lower = s.to_ascii_lowercase();
        if (4..=64).contains(&lower.len()) && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Selector::IdPrefix(lower));
        }
        Err(Error::invalid(format!(
            "{s:?} does not name a snapshot: use `latest`, an id or id prefix (4+ hex characters), or --before TIME"
        )))
    }
}

/// Parses an RFC 3339 time with an explicit offset.
pub fn parse_time(s: &str) -> Result<Timestamp> {
    s.parse::<Timestamp>().map_err(|e| {
        Error::invalid(format!(
            "{s:?} is not an RFC 3339 time with an offset ({e}); write e.g. 2026-11-20T23:59:59Z \
             or 2026-11-20T23:59:59+01:00 (times without an offset are refused, not guessed)"
        ))
    })
}

/// Which snapshots a selection considers.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only this host.
    pub host: Option<String>,
    /// Only snapshots carrying every one of these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `s` passes.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.host.as_ref().is_none_or(|h| &s.manifest.host == h)
            && self.tags.iter().all(|t| s.manifest.tags.contains(t))
    }
}

/// Picks one snapshot from `snapshots` (oldest first).
pub fn select<'a>(
    snapshots: &'a [Snapshot],
    selector: &Selector,
    filter: &SnapshotFilter,
) -> Result<&'a Snapshot> {
    let candidates: Vec<&Snapshot> = snapshots.iter().filter(|s| filter.matches(s)).collect();
    let none = |what: String| Error::NotFound {
        what,
        hint: "list snapshots with `cairn snapshots`".into(),
    };
    match selector {
        Selector::Latest => candidates
            .iter()
            .max_by_key(|s| (s.manifest.time, s.id))
            .copied()
            .ok_or_else(|| none("no snapshot matches".into())),
        Selector::IdPrefix(prefix) => {
            let matching: Vec<&Snapshot> = candidates
                .into_iter()
                .filter(|s| s.id.to_hex().starts_with(prefix.as_str()))
                .collect();
            match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(none(format!("snapshot {prefix}"))),
                many => Err(Error::invalid(format!(
                    "{prefix} matches {} snapshots ({}); give more characters",
                    many.len(),
                    many.iter()
                        .map(|s| s.id.short())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        Selector::Before(t) => candidates
            .iter()
            .filter(|s| s.manifest.time <= *t)
            .max_by_key(|s| (s.manifest.time, s.id))
            .copied()
            .ok_or_else(|| none(format!("snapshot at or before {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::SecretKey;
    use crate::format::manifest::{Manifest, SourceInfo, SourceKind};
    use crate::id::{RepoId, SnapshotId};

    fn snap(n: u8, time: &str, host: &str) -> Snapshot {
        Snapshot {
            id: SnapshotId([n; 32]),
            signer: SecretKey::from_seed(&[1; 32]).public(),
            manifest: Manifest {
                version: 1,
                repository: RepoId([0; 32]),
                time: time.parse().unwrap(),
                host: host.into(),
                tags: vec![],
                source: SourceInfo {
                    kind: SourceKind::Files,
                    command: None,
                    exit_status: None,
                    url: None,
                },
                paths: vec![],
                started: None,
                parent: None,
                root: None,
                totals: None,
                items: vec![],
            },
            seen: None,
        }
    }

    #[test]
    fn selects_latest_prefix_and_before() {
        let all = vec![
            snap(0xaa, "2026-11-18T02:00:00Z", "node4"),
            snap(0xab, "2026-11-19T02:00:00Z", "node4"),
            snap(0xcc, "2026-11-20T02:00:00Z", "pc"),
        ];
        let any = SnapshotFilter::default();
        assert_eq!(select(&all, &Selector::Latest, &any).unwrap().id.0[0], 0xcc);
        let node4 = SnapshotFilter {
            host: Some("node4".into()),
            tags: vec![],
        };
        assert_eq!(
            select(&all, &Selector::Latest, &node4).unwrap().id.0[0],
            0xab
        );
        assert_eq!(
            select(&all, &Selector::parse("abab").unwrap(), &any)
                .unwrap()
                .id
                .0[0],
            0xab
        );
        let ambiguous = select(&all, &Selector::parse("aaaa").unwrap(), &any);
        assert!(ambiguous.is_ok());
        assert_eq!(
            select(&all, &Selector::IdPrefix("a".into()), &any)
                .unwrap_err()
                .kind(),
            crate::error::ErrorKind::InvalidInput
        );
        let before = Selector::Before(parse_time("2026-11-19T03:00:00+01:00").unwrap());
        assert_eq!(select(&all, &before, &any).unwrap().id.0[0], 0xab);
        let too_early = Selector::Before(parse_time("2026-01-01T00:00:00Z").unwrap());
        assert_eq!(
            select(&all, &too_early, &any).unwrap_err().kind(),
            crate::error::ErrorKind::NotFound
        );
    }

    #[test]
    fn times_need_an_offset() {
        assert!(parse_time("2026-11-20T10:00:00").is_err());
        assert!(parse_time("2026-11-20").is_err());
        assert_eq!(
            parse_time("2026-11-20T10:00:00+02:00").unwrap(),
            parse_time("2026-11-20T08:00:00Z").unwrap()
        );
        assert!(Selector::parse("abc").is_err());
        assert!(Selector::parse("lates").is_err());
    }
}
