//! CouchDB: faithful, incremental backups of databases and restores that
//! keep every revision.
//!
//! A backup reads every leaf revision (deleted and conflicting ones
//! included) with its `_revisions` history, design documents, attachments,
//! `_local` documents, `_security`, `_revs_limit` and the database's
//! properties, and stores them as five items per database ([`format`](mod@format)). A
//! restore writes them back with `_bulk_docs` and `new_edits:false`, which
//! keeps revision ids and is idempotent, so an interrupted restore can
//! simply run again; it ends by comparing the target with the snapshot.
//!
//! Built on `cairn-store`'s public API only: a backup is a
//! [`Source::Prepared`] of entries whose streams this crate fills (or whose
//! content it takes unread from an earlier snapshot), restore and verify
//! read items back with [`with_items`](cairn_store::ops::walk::with_items)
//! and [`restore_item`](IndexedRepository::restore_item), and
//! [`verify::CouchCheck`] is the store's verify hook for CouchDB dumps.

mod attachment;
pub mod backup;
pub mod client;
mod dumps;
pub mod format;
mod import;
mod listing;
mod merge;
mod pipe;
pub mod restore;
mod sort;
pub mod verify;

pub use backup::{
    CouchBackupOptions, CouchBackupSummary, DbBackupStats, DbSelection, backup_couchdb,
};
pub use client::{CouchClient, CouchTarget, Credentials, RetryPolicy};
pub use dumps::import_couchdb_dumps;
pub use restore::restore_couchdb;

use std::io::BufReader;
use std::sync::{Arc, Mutex};

use cairn_store::error::{Error, Result};
use cairn_store::format::chunker::ChunkingPolicy;
use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::{Item, Snapshot};
use cairn_store::ops::backup::{BackupOptions, BackupSummary, Progress};
use cairn_store::ops::restore::NoRestoreProgress;
use cairn_store::ops::session::WriteSession;
use cairn_store::ops::source::{Entry, Prepared, Source};
use cairn_store::repo::IndexedRepository;
use pipe::{Lines, PipeReader, PipeWriter, pipe, spill_pipe};

/// The streams of one database's files: entries for the backup to read,
/// and, in the same order, the writers its producer fills.
pub(crate) fn streams(
    db: &str,
    files: &[String],
    policy: &ChunkingPolicy,
) -> (Vec<Entry>, Vec<PipeWriter>) {
    files
        .iter()
        .map(|file| {
            // The backup reads a prepared source's contents in the order
            // given, which is the order the producer writes them (it keeps
            // to `files`): the stream being stored passes through memory.
            // What is written ahead of the reader (another database's
            // streams, started while this one is stored) waits on disk;
            // the pipes never block, so no order of writes can hang.
            let (writer, reader) = spill_pipe(16);
            let entry = Entry::reader(
                format::item_name(db, file),
                format::chunker_for(file, policy),
                Box::new(reader),
            );
            (entry, writer)
        })
        .unzip()
}

/// The first error of the threads that produce a backup's streams: the
/// cause, where the backup itself only sees a broken pipe.
#[derive(Clone, Default)]
pub(crate) struct FirstFailure(Arc<Mutex<Option<Error>>>);

impl FirstFailure {
    /// Records `e` (unless it only says the backup stopped reading) and
    /// fails `writers`, so the backup stops too.
    pub fn fail(&self, e: Error, context: &str, writers: &mut [PipeWriter]) {
        let detail = format!("{context}: {e}");
        let reader_gone = matches!(&e, Error::Io { source, .. }
            if source.kind() == std::io::ErrorKind::BrokenPipe);
        if !reader_gone {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
        for w in writers {
            w.fail(detail.clone());
        }
    }

    /// Whether something failed.
    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Backs `source` up while `produce` writes its streams on its own thread; the
/// producer's recorded failure, if any, is the error.
pub(crate) async fn backup_streams<T: Send + 'static>(
    session: &WriteSession,
    source: Prepared,
    key: &SecretKey,
    options: &BackupOptions,
    progress: Arc<dyn Progress>,
    failure: &FirstFailure,
    produce: impl FnOnce() -> T + Send + 'static,
) -> Result<(BackupSummary, T)> {
    let producer = std::thread::spawn(produce);
    let result = session
        .backup(Source::Prepared(source), key, options, progress)
        .await;
    let produced = producer
        .join()
        .map_err(|_| Error::Bug("the thread producing the dump panicked".into()))?;
    if let Some(e) = failure.take() {
        return Err(e);
    }
    Ok((result?, produced))
}

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

/// The items of one database's dump in a snapshot.
#[derive(Debug)]
pub(crate) struct DumpItems {
    /// By file name ([`format::FILES`]).
    pub files: std::collections::HashMap<&'static str, Item>,
    /// The overlays in order; an error when their numbers have a gap.
    pub overlays: std::result::Result<Vec<Item>, String>,
}

impl Default for DumpItems {
    fn default() -> Self {
        DumpItems {
            files: std::collections::HashMap::new(),
            overlays: Ok(Vec::new()),
        }
    }
}

impl DumpItems {
    /// A file's item, or why it is missing.
    pub fn file(&self, db: &str, file: &str) -> cairn_store::Result<Item> {
        self.files.get(file).cloned().ok_or_else(|| {
            cairn_store::Error::corrupt(
                format::item_name(db, file),
                "missing from the snapshot".to_string(),
            )
        })
    }
}

/// The CouchDB dumps of a snapshot, by database.
pub(crate) fn dumps(snapshot: &Snapshot) -> std::collections::BTreeMap<String, DumpItems> {
    let mut dbs: std::collections::BTreeMap<String, (DumpItems, Vec<(usize, Item)>)> =
        std::collections::BTreeMap::new();
    for item in &snapshot.manifest.items {
        let Some((db, file)) = format::parse_item_name(&item.name) else {
            continue;
        };
        let entry = dbs.entry(db).or_default();
        if let Some(f) = format::FILES.iter().find(|f| **f == file) {
            entry.0.files.insert(f, item.clone());
        } else if let Some(n) = format::overlay_number(file) {
            entry.1.push((n, item.clone()));
        }
    }
    dbs.into_iter()
        .map(|(db, (mut items, mut overlays))| {
            overlays.sort_by_key(|(n, _)| *n);
            items.overlays = if overlays.iter().enumerate().all(|(i, (n, _))| *n == i + 1) {
                Ok(overlays.into_iter().map(|(_, item)| item).collect())
            } else {
                Err(format!(
                    "overlays {:?} are not numbered 1, 2, …",
                    overlays.iter().map(|(n, _)| n).collect::<Vec<_>>()
                ))
            };
            (db, items)
        })
        .collect()
}
