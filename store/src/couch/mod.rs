//! CouchDB: faithful, incremental backups of databases and restores that
//! keep every revision.
//!
//! A backup reads every leaf revision (deleted and conflicting ones
//! included) with its `_revisions` history, design documents, attachments,
//! `_local` documents, `_security`, `_revs_limit` and the database's
//! properties, and stores them as five items per database ([`format`]). A
//! restore writes them back with `_bulk_docs` and `new_edits:false`, which
//! keeps revision ids and is idempotent, so an interrupted restore can
//! simply run again; it ends by comparing the target with the snapshot.

pub mod backup;
pub mod client;
mod dumps;
pub mod format;
mod import;
mod merge;
mod pipe;
pub mod restore;
mod sort;
pub mod verify;

pub use backup::{CouchBackupOptions, CouchBackupSummary, DbBackupStats, DbSelection};
pub use client::{CouchClient, CouchTarget, Credentials, RetryPolicy};

use std::io::BufReader;

use crate::manifest::{Item, Snapshot};
use crate::ops::restore::NoRestoreProgress;
use crate::repo::IndexedRepository;
use pipe::{Lines, PipeReader, pipe};

/// Streams an item of a snapshot as lines, from a task on `runtime`; a read
/// failure is an error at the reader, never an early end.
pub(crate) fn stream_item(
    runtime: &tokio::runtime::Handle,
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    item: &Item,
) -> Lines<BufReader<PipeReader>> {
    let (writer, reader) = pipe(8);
    let failer = writer.failer();
    let (repo, snapshot, item) = (repo.clone(), snapshot.clone(), item.clone());
    runtime.spawn(async move {
        let reader = repo.blob_reader();
        match repo
            .restore_item(&reader, &snapshot, &item, writer, &NoRestoreProgress)
            .await
        {
            Ok((mut writer, _)) => {
                let _ = std::io::Write::flush(&mut writer);
                let _ = writer.finish();
            }
            Err(e) => {
                if let Some(f) = failer {
                    f.fail(e.to_string());
                }
            }
        }
    });
    Lines::new(BufReader::with_capacity(256 * 1024, reader))
}
