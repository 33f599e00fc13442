//! Moving `_all_docs?include_docs=true` dump files into a repository.
//!
//! Each file becomes the same five items a live backup makes, so it restores
//! the same way. Such a dump holds only each document's winning revision: no
//! conflicts, no deleted documents, no `_revisions` history, no attachment
//! data (stubs are dropped), no `_security`, `_local` documents or
//! `_revs_limit`. Restored, every document keeps its `_rev`, but its history
//! starts there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_store::error::{Error, Result};
use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::{SourceInfo, SourceKind};
use cairn_store::ops::backup::{BackupOptions, Progress};
use cairn_store::ops::session::WriteSession;
use cairn_store::ops::source::Prepared;

use crate::backup::{CouchBackupSummary, DbBackupStats};
use crate::format::{self, Counts, Meta};
use crate::import::{DumpStats, ImportError, db_name_from_file, read_all_docs, read_manifest};
use crate::pipe::PipeWriter;
use crate::sort::ExternalSorter;
use crate::{FirstFailure, backup_streams, streams};

/// The file that may name each dump's database.
const MANIFEST: &str = "backup_manifest.json";

/// The dump files under `paths` and their databases.
pub(crate) fn dump_files(paths: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for path in paths {
        let unreadable = |e: std::io::Error| Error::Source {
            item: path.display().to_string(),
            detail: format!("cannot read: {e}"),
        };
        if path.is_dir() {
            let named = std::fs::read(path.join(MANIFEST))
                .ok()
                .and_then(|bytes| read_manifest(&bytes))
                .unwrap_or_default();
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(unreadable)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|x| x == "json")
                        && p.file_name().is_some_and(|n| n != MANIFEST)
                })
                .collect();
            files.sort();
            for file in files {
                let file_name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let db = named
                    .iter()
                    .find(|(_, f)| {
                        Path::new(f)
                            .file_name()
                            .is_some_and(|n| n == file_name.as_str())
                    })
                    .map(|(db, _)| db.clone())
                    .or_else(|| db_name_from_file(&file));
                if let Some(db) = db {
                    out.push((db, file));
                }
            }
        } else {
            std::fs::metadata(path).map_err(unreadable)?;
            let db = db_name_from_file(path).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: a dump file is named DATABASE.json",
                    path.display()
                ))
            })?;
            out.push((db, path.clone()));
        }
    }
    out.sort();
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::invalid(format!(
            "{} and {} are both dumps of database {:?}; import them separately",
            w[0].1.display(),
            w[1].1.display(),
            w[0].0
        )));
    }
    if out.is_empty() {
        return Err(Error::invalid("no dump files (DATABASE.json) found"));
    }
    Ok(out)
}

/// Imports `_all_docs` dump files as one snapshot.
pub async fn import_couchdb_dumps(
    session: &WriteSession,
    paths: &[PathBuf],
    key: &SecretKey,
    options: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<CouchBackupSummary> {
    let files = dump_files(paths)?;
    let failure = FirstFailure::default();
    let mut entries = Vec::new();
    let mut jobs = Vec::new();
    for (db, path) in files {
        let (db_entries, writers) = streams(&db, &format::files(0), &session.config().chunking);
        entries.extend(db_entries);
        jobs.push((db, path, writers));
    }
    let info = SourceInfo {
        kind: SourceKind::CouchdbImport,
        command: None,
        exit_status: None,
        url: None,
    };
    let slot = failure.clone();
    let (backup, databases) = backup_streams(
        session,
        Prepared::new(info, entries),
        key,
        options,
        progress,
        &failure,
        move || {
            let mut stats = Vec::new();
            for (db, path, mut writers) in jobs {
                match import_one(&db, &path, &mut writers) {
                    Ok(s) => stats.push(s),
                    Err(e) => slot.fail(e, &path.display().to_string(), &mut writers),
                }
            }
            stats
        },
    )
    .await?;
    Ok(CouchBackupSummary {
        backup,
        databases,
        requests: 0,
        retries: 0,
        bytes_received: 0,
        appeared: Vec::new(),
        vanished: Vec::new(),
    })
}

/// Reads one dump and writes its five streams.
fn import_one(db: &str, path: &Path, writers: &mut [PipeWriter]) -> Result<DbBackupStats> {
    let [design_w, docs_w, atts_w, local_w, meta_w] = writers else {
        return Err(Error::invalid("a database has five streams"));
    };
    let source_error = |detail: String| Error::Source {
        item: path.display().to_string(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| source_error(format!("cannot open: {e}")))?;
    let mut sorter = ExternalSorter::new(64 << 20, None);
    let mut design: Vec<(String, Vec<u8>)> = Vec::new();
    let mut line = Vec::new();
    let stats: DumpStats = read_all_docs(file, |doc| {
        line.clear();
        format::encode_doc_line(&doc.id, &doc.rev, false, &doc.doc, &mut line);
        if doc.id.starts_with("_design/") {
            design.push((doc.id, line.clone()));
            Ok(())
        } else {
            sorter
                .push(doc.id.as_bytes(), &line)
                .map_err(|e| ImportError::Callback(format!("sorting: {e}")))
        }
    })
    .map_err(|e| {
        source_error(format!(
            "{e}; fix or re-export the file (nothing was imported)"
        ))
    })?;

    let io = |file: &'static str| {
        let name = format::item_name(db, file);
        move |e: std::io::Error| Error::io(format!("writing {name}"), e)
    };
    design.sort();
    for (_, l) in &design {
        design_w.write_all(l).map_err(io(format::DESIGN_FILE))?;
    }
    design_w.finish().map_err(io(format::DESIGN_FILE))?;
    let mut counts = Counts {
        design_leaves: design.len() as u64,
        ..Counts::default()
    };
    let sorted = sorter
        .finish()
        .map_err(|e| Error::io("sorting document ids", e))?;
    for record in sorted {
        let (_, l) = record.map_err(|e| Error::io("sorting document ids", e))?;
        counts.docs += 1;
        counts.doc_leaves += 1;
        docs_w.write_all(&l).map_err(io(format::DOCS_FILE))?;
    }
    docs_w.finish().map_err(io(format::DOCS_FILE))?;
    atts_w.finish().map_err(io(format::ATTACHMENTS_FILE))?;
    local_w.finish().map_err(io(format::LOCAL_FILE))?;
    let meta = Meta {
        format: format::FORMAT.to_string(),
        db: db.to_string(),
        server: serde_json::json!({
            "imported_from": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "dropped_attachment_stubs": stats.dropped_attachments,
            "skipped_rows": stats.skipped_rows,
        }),
        db_info: serde_json::json!({ "total_rows": stats.total_rows }),
        props: serde_json::json!({}),
        security: serde_json::json!({}),
        revs_limit: None,
        local_listed: false,
        last_seq: serde_json::Value::Null,
        method: "import".into(),
        counts: counts.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::invalid(e.to_string()))?;
    bytes.push(b'\n');
    meta_w.write_all(&bytes).map_err(io(format::META_FILE))?;
    meta_w.finish().map_err(io(format::META_FILE))?;
    Ok(DbBackupStats {
        db: db.to_string(),
        counts,
        fetched_leaves: stats.docs,
        ..DbBackupStats::default()
    })
}
