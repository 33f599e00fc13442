//! Operations on a repository: each takes `…Options`, returns a `…Summary`
//! or report, and does its I/O through the repository's backend.

pub mod backup;
mod copies;
pub mod diff;
pub mod forget;
pub(crate) mod fsmeta;
pub mod gc;
mod mark;
mod packer;
pub mod replicate;
pub mod restore;
pub mod select;
pub mod source;
pub mod stats;
mod target;
pub mod verify;
pub mod walk;

/// This machine's host name, for snapshots (override it with `--host` where
/// the host name is not stable, e.g. in a Kubernetes pod).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
