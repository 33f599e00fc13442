//! `cairn forget`: remove snapshots by retention policy or by id.

use std::process::ExitCode;

use cairn_store::ops::forget::ForgetOptions;
use cairn_store::plan::retention::{ForgetPolicy, GroupBy, parse_span};
use cairn_store::plan::select::SnapshotFilter;
use clap::Args;

use crate::repo_args::{RepoArgs, TrustArgs};

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Snapshots to remove by id or prefix (also ones that fail their checks).
    #[arg(value_name = "SNAPSHOT")]
    ids: Vec<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours (UTC).
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// ... days (UTC).
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// ... ISO weeks (UTC).
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// ... months (UTC).
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// ... years (UTC).
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot within this span before the group's newest timely snapshot (36h, 30d, 2w, 6mo, 1y).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// A snapshot the store received more than this after the time it
    /// claims is late: it represents a calendar bucket only when no timely
    /// snapshot does (format-spec §12.6).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    max_lag: String,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Apply the policy to each group of snapshots sharing these (host, name, tags).
    #[arg(long, default_value = "host,name", value_name = "FIELDS")]
    group_by: String,
    /// Only consider snapshots from this host.
    #[arg(long)]
    host: Option<String>,
    /// Only consider snapshots with this tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Show the plan; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allow a policy that keeps nothing in a group but its newest snapshot.
    #[arg(long)]
    force: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

fn policy(args: &ForgetArgs) -> anyhow::Result<Option<ForgetPolicy>> {
    let policy = ForgetPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within.as_deref().map(parse_span).transpose()?,
        tags: args.keep_tags.clone(),
        group_by: GroupBy::parse(&args.group_by)?,
        max_lag: Some(max_lag(&args.max_lag)?),
    };
    Ok((!policy.is_empty()).then_some(policy))
}

fn max_lag(s: &str) -> anyhow::Result<jiff::SignedDuration> {
    let span = parse_span(s)?;
    Ok(jiff::SignedDuration::try_from(span).map_err(|e| {
        cairn_store::Error::invalid(format!("--max-lag {s}: {e}; use hours or days (36h, 2d)"))
    })?)
}

pub async fn run(args: ForgetArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open().await?;
    let trust = repo.trust(&args.trust.keys);
    let options = ForgetOptions {
        policy: policy(&args)?,
        ids: args.ids.clone(),
        filter: SnapshotFilter {
            host: args.host.clone(),
            tags: args.tags.clone(),
        },
        dry_run: args.dry_run,
        force: args.force,
    };
    let report = repo.forget(&trust, &options).await?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(plan) = &report.plan {
        for group in &plan.groups {
            println!(
                "{} ({} kept, {} removed; calendar buckets in UTC)",
                crate::terminal::safe(&group.group.to_string()),
                group.keep.len(),
                group.remove.len()
            );
            for k in &group.keep {
                let why: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
                println!(
                    "  keep    {}  {}  {}{}",
                    k.id.short(),
                    k.time.strftime("%Y-%m-%d %H:%M:%S"),
                    why.join(", "),
                    if k.late { "  (late)" } else { "" }
                );
            }
            for r in &group.remove {
                println!(
                    "  remove  {}  {}{}",
                    r.id.short(),
                    r.time.strftime("%Y-%m-%d %H:%M:%S"),
                    if r.late { "  (late)" } else { "" }
                );
            }
        }
    }
    for id in &report.by_id {
        println!("remove  {}  (named)", id.short());
    }
    println!(
        "{} {} snapshot{}{}",
        if report.dry_run {
            "would remove"
        } else {
            "removed"
        },
        report.removed,
        if report.removed == 1 { "" } else { "s" },
        if report.dry_run {
            ""
        } else {
            " (their data is freed by `cairn gc` once nothing else needs it)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
