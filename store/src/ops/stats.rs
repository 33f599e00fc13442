//! Stats: how much the snapshots hold, how much is stored, and how much of
//! it no snapshot needs.

use serde::Serialize;

use crate::error::Result;
use crate::repo::Repository;

/// Repository statistics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    /// Snapshots.
    pub snapshots: u64,
    /// Bytes the snapshots' items hold, summed over snapshots (what a full
    /// copy of each would take).
    pub logical_bytes: u64,
    /// Raw (uncompressed) bytes of the distinct blobs the snapshots need.
    pub unique_bytes: u64,
    /// Bytes stored: packs, index objects and manifests.
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`.
    pub dedup_ratio: f64,
    /// Raw bytes of stored blobs no snapshot needs.
    pub unreferenced_bytes: u64,
    /// Stored bytes garbage collection would free now: packs nothing live is
    /// in, and packs no index names (left by interrupted backups).
    pub reclaimable_bytes: u64,
    /// Stored bytes in packs half or more dead (reclaimable by repacking).
    pub repackable_bytes: u64,
    /// Bytes already condemned, waiting for their deletion.
    pub condemned_bytes: u64,
}

impl Repository {
    /// Computes the statistics (reads every snapshot's trees).
    pub async fn stats(&self) -> Result<StatsReport> {
        self.gc_stats().await
    }
}
