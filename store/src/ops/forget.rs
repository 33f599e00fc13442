//! Forget: remove snapshots (their manifests only) by policy or by id.
//!
//! The plan comes from [`crate::plan::retention::plan_forget`]; applying it
//! deletes the removed snapshots' manifest objects and nothing else. Their
//! data goes when garbage collection finds that no snapshot needs it.

use serde::Serialize;

use crate::backend::ObjectKey;
use crate::error::{Error, Result};
use crate::format::manifest::Trust;
use crate::id::SnapshotId;
use crate::plan::retention::{ForgetPlan, ForgetPolicy, SnapshotInfo, plan_forget};
use crate::plan::select::SnapshotFilter;
use crate::repo::Repository;

/// What to forget.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    /// A retention policy (applied to the snapshots passing `filter`).
    pub policy: Option<ForgetPolicy>,
    /// Snapshots named by id or prefix (also ones that fail their checks).
    pub ids: Vec<String>,
    /// Only these snapshots are considered by the policy.
    pub filter: SnapshotFilter,
    /// Plan only.
    pub dry_run: bool,
    /// Allow a policy that keeps nothing but the newest of a group.
    pub force: bool,
}

/// What forget did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// The policy's plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<ForgetPlan>,
    /// Snapshots removed by id.
    pub by_id: Vec<SnapshotId>,
    /// Snapshots removed in all.
    pub removed: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
}

impl Repository {
    /// Forgets snapshots; see [`ForgetOptions`].
    pub async fn forget(&self, trust: &Trust, options: &ForgetOptions) -> Result<ForgetReport> {
        if options.policy.is_none() && options.ids.is_empty() {
            return Err(Error::invalid(
                "nothing to forget: give snapshot ids or --keep-* rules",
            ));
        }
        let list = self.load_snapshots(trust).await?;
        let mut by_id = Vec::new();
        for prefix in &options.ids {
            let prefix = prefix.to_ascii_lowercase();
            let matches: Vec<SnapshotId> = list
                .snapshots
                .iter()
                .map(|s| s.id)
                .chain(list.rejected.iter().map(|(id, _)| *id))
                .filter(|id| id.to_hex().starts_with(&prefix))
                .collect();
            match matches.as_slice() {
                [one] => by_id.push(*one),
                [] => {
                    return Err(Error::NotFound {
                        what: format!("snapshot {prefix}"),
                        hint: "list snapshots with `cairn snapshots`".into(),
                    });
                }
                many => {
                    return Err(Error::invalid(format!(
                        "{prefix} matches {} snapshots; give more characters",
                        many.len()
                    )));
                }
            }
        }
        let plan = match &options.policy {
            Some(policy) => {
                let infos: Vec<SnapshotInfo> = list
                    .snapshots
                    .iter()
                    .filter(|s| options.filter.matches(s))
                    .map(SnapshotInfo::from)
                    .collect();
                Some(plan_forget(&infos, policy, options.force)?)
            }
            None => None,
        };
        let mut doomed: Vec<SnapshotId> = by_id.clone();
        if let Some(plan) = &plan {
            doomed.extend(plan.removed().map(|r| r.id));
        }
        doomed.sort();
        doomed.dedup();
        if !options.dry_run {
            for id in &doomed {
                self.backend().delete(&ObjectKey::Snapshot(*id)).await?;
            }
        }
        Ok(ForgetReport {
            plan,
            by_id,
            removed: doomed.len() as u64,
            dry_run: options.dry_run,
        })
    }
}
