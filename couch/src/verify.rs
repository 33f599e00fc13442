//! Checking a snapshot's CouchDB dumps: every item present, every line
//! JSON of the right shape, sorted, attachments matching their digests, and
//! counts equal to what `meta.json` recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_store::error::{Error, Result};
use cairn_store::format::manifest::{Item, Snapshot, SourceKind};
use cairn_store::ops::verify::DamagedItem;
use cairn_store::repo::IndexedRepository;

use crate::format::{self, AttHeader, Counts, Meta};
use crate::merge::{GroupReader, Merged};
use crate::{DumpItems, stream_item};

/// Whether a snapshot holds CouchDB dumps.
pub fn is_couchdb(snapshot: &Snapshot) -> bool {
    matches!(
        snapshot.manifest.source.kind,
        SourceKind::Couchdb | SourceKind::CouchdbImport
    )
}

/// Verify's check of CouchDB dumps: every database's documents, attachments
/// and counts (see [`check_snapshot`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CouchCheck;

#[async_trait::async_trait]
impl cairn_store::ops::verify::ContentCheck for CouchCheck {
    fn applies(&self, snapshot: &Snapshot) -> bool {
        is_couchdb(snapshot)
    }

    async fn check(
        &self,
        repo: &IndexedRepository,
        snapshot: &Snapshot,
        read: bool,
    ) -> Result<Vec<DamagedItem>> {
        check_snapshot(repo, snapshot, read).await
    }
}

/// The problems of a snapshot's CouchDB items; with `read`, their content
/// is read and checked, else only their presence and `meta.json`.
pub async fn check_snapshot(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    read: bool,
) -> Result<Vec<DamagedItem>> {
    let mut damaged = Vec::new();
    let flat = cairn_store::ops::walk::with_items(Arc::new(repo.blob_reader()), snapshot).await?;
    let snapshot = &flat;
    for (db, items) in crate::dumps(snapshot) {
        let mut problems: Vec<(String, String)> = Vec::new();
        for file in format::FILES {
            if !items.files.contains_key(file) {
                problems.push((
                    format::item_name(&db, file),
                    "missing from the snapshot".into(),
                ));
            }
        }
        if let Err(e) = &items.overlays {
            problems.push((format::item_name(&db, format::DOCS_FILE), e.clone()));
        }
        if problems.is_empty() {
            let (repo, snapshot, db2) = (repo.clone(), snapshot.clone(), db.clone());
            let runtime = tokio::runtime::Handle::current();
            problems = tokio::task::spawn_blocking(move || {
                check_db(&runtime, &repo, &snapshot, &db2, &items, read)
            })
            .await
            .map_err(|e| Error::Bug(format!("verify thread failed: {e}")))?;
        }
        let mut by_item: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (item, problem) in problems {
            by_item.entry(item).or_default().push(problem);
        }
        damaged.extend(
            by_item
                .into_iter()
                .map(|(name, problems)| DamagedItem { name, problems }),
        );
    }
    Ok(damaged)
}

/// One database's problems, as (item, problem).
fn check_db(
    runtime: &tokio::runtime::Handle,
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    db: &str,
    items: &DumpItems,
    read: bool,
) -> Vec<(String, String)> {
    let name = |file: &str| format::item_name(db, file);
    let open_item = |item: &Item| stream_item(runtime, repo, snapshot, item);
    let open = |file: &str| open_item(&items.files[file]);
    let mut problems = Vec::new();
    let mut meta_bytes = Vec::new();
    if let Err(e) = open(format::META_FILE).read_to_end(&mut meta_bytes) {
        problems.push((name(format::META_FILE), e.to_string()));
        return problems;
    }
    let mut line = Vec::new();
    let meta: Meta = match serde_json::from_slice(&meta_bytes) {
        Ok(m) => m,
        Err(e) => {
            problems.push((name(format::META_FILE), format!("not valid metadata: {e}")));
            return problems;
        }
    };
    if !meta.security.is_object() {
        problems.push((name(format::META_FILE), "_security is not recorded".into()));
    }
    if !read {
        return problems;
    }

    let mut counts = Counts::default();
    // Documents: the base with its overlay.
    let base = GroupReader::new(open(format::DOCS_FILE), name(format::DOCS_FILE));
    let overlays = items
        .overlays
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, o)| GroupReader::new(open_item(o), name(&format::overlay_file(i + 1))))
        .collect();
    let mut docs = Merged::new(base, overlays);
    let mut stubs = 0u64;
    loop {
        match docs.next_group() {
            Ok(Some(group)) if group.gone => {}
            Ok(Some(group)) => {
                counts.docs += 1;
                let mut leaves = 0;
                for l in format::each_line(&group.lines) {
                    leaves += 1;
                    match format::parse_doc_line(l) {
                        Ok(parsed) => {
                            counts.deleted_leaves += u64::from(parsed.del);
                            stubs += format::stubs(parsed.doc).map_or(0, |s| s.len() as u64);
                        }
                        Err(e) => problems.push((name(format::DOCS_FILE), e.to_string())),
                    }
                }
                counts.doc_leaves += leaves;
                counts.conflicted_docs += u64::from(leaves > 1);
            }
            Ok(None) => break,
            Err(e) => {
                problems.push((name(format::DOCS_FILE), e.to_string()));
                break;
            }
        }
    }
    // Design and local documents: one JSON line each.
    for (file, count) in [
        (format::DESIGN_FILE, &mut counts.design_leaves),
        (format::LOCAL_FILE, &mut counts.local_docs),
    ] {
        let mut lines = open(file);
        loop {
            match lines.next_into(&mut line) {
                Ok(true) => {
                    let ok = if file == format::DESIGN_FILE {
                        format::parse_doc_line(&line).map(|_| ())
                    } else {
                        serde_json::from_slice::<format::LocalLine>(&line).map(|_| ())
                    };
                    match ok {
                        Ok(()) => *count += 1,
                        Err(e) => {
                            problems.push((name(file), format!("line {}: {e}", lines.number)));
                        }
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    problems.push((name(file), e.to_string()));
                    break;
                }
            }
        }
    }
    // Attachments: each record's bytes match its digest.
    let mut lines = open(format::ATTACHMENTS_FILE);
    let mut data = Vec::new();
    loop {
        match lines.next_into(&mut line) {
            Ok(true) => {
                let header: AttHeader = match serde_json::from_slice(&line) {
                    Ok(h) => h,
                    Err(e) => {
                        problems.push((name(format::ATTACHMENTS_FILE), format!("bad header: {e}")));
                        break;
                    }
                };
                if let Err(e) = lines.read_blob(header.len, &mut data) {
                    problems.push((name(format::ATTACHMENTS_FILE), e.to_string()));
                    break;
                }
                match header.expected_data_digest() {
                    Ok(digest) if format::md5_digest(&data) == digest => {}
                    Ok(_) => problems.push((
                        name(format::ATTACHMENTS_FILE),
                        format!(
                            "attachment {:?} of {:?} does not match its digest",
                            header.name, header.id
                        ),
                    )),
                    Err(e) => problems.push((
                        name(format::ATTACHMENTS_FILE),
                        format!("attachment {:?} of {:?}: {e}", header.name, header.id),
                    )),
                }
                counts.attachments += 1;
                counts.attachment_bytes += header.len;
            }
            Ok(false) => break,
            Err(e) => {
                problems.push((name(format::ATTACHMENTS_FILE), e.to_string()));
                break;
            }
        }
    }
    if counts != meta.counts && problems.is_empty() {
        problems.push((
            name(format::META_FILE),
            format!(
                "the dump holds {counts:?}, the metadata recorded {:?}",
                meta.counts
            ),
        ));
    }
    if counts.attachments > stubs {
        problems.push((
            name(format::ATTACHMENTS_FILE),
            format!(
                "{} attachments but only {stubs} stubs name any",
                counts.attachments
            ),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_store::backend::Backend;
    use cairn_store::format::key::SecretKey;
    use cairn_store::format::manifest::{SourceInfo, SourceKind};
    use cairn_store::ops::backup::{BackupOptions, NoProgress};
    use cairn_store::ops::session::WriteOptions;
    use cairn_store::ops::source::{Entry, Prepared, Source};
    use cairn_store::ops::verify::{ReadData, VerifyOptions};
    use cairn_store::repo::Repository;

    use crate::format;

    const META: &str = r#"{"format":"cairn-couchdb/1","db":"lms","server":{},"db_info":{},"props":{},
        "security":{},"revs_limit":null,"local_listed":false,"last_seq":1,"method":"changes",
        "counts":{"docs":2,"doc_leaves":2,"deleted_leaves":0,"conflicted_docs":0,"design_leaves":0,
        "local_docs":0,"attachments":0,"attachment_bytes":0}}"#;

    /// Stores a CouchDB snapshot of database `lms` with this docs.ndjson,
    /// then verifies with --read-data; returns the damaged items' problems.
    async fn verify_dump(docs: &str) -> Vec<(String, Vec<String>)> {
        let backend = Backend::new(Arc::new(object_store::memory::InMemory::new()), "memory:");
        let key = SecretKey::generate().unwrap();
        let repo = Repository::init(backend, vec![key.public()]).await.unwrap();
        let files = [
            (format::DESIGN_FILE, ""),
            (format::DOCS_FILE, docs),
            (format::ATTACHMENTS_FILE, ""),
            (format::LOCAL_FILE, ""),
            (format::META_FILE, META),
        ];
        let entries = files
            .iter()
            .map(|(file, text)| {
                Entry::reader(
                    format::item_name("lms", file),
                    None,
                    Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
                )
            })
            .collect();
        let source = Source::Prepared(Prepared::new(
            SourceInfo {
                kind: SourceKind::Couchdb,
                command: None,
                exit_status: None,
                url: None,
            },
            entries,
        ));
        let session = repo
            .clone()
            .begin_write(&WriteOptions::default())
            .await
            .unwrap();
        session
            .backup(
                source,
                &key,
                &BackupOptions::default(),
                Arc::new(NoProgress),
            )
            .await
            .unwrap();
        session.finish().await.unwrap();
        let report = repo
            .verify_with(
                &repo.trust(&[]),
                &VerifyOptions {
                    read_data: ReadData::All,
                    concurrency: 2,
                },
                &[&super::CouchCheck],
            )
            .await
            .unwrap();
        report
            .damaged_snapshots
            .into_iter()
            .flat_map(|s| s.items)
            .map(|i| (i.name, i.problems))
            .collect()
    }

    fn line(id: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"rev\":\"1-a\",\"doc\":{{\"_id\":\"{id}\",\"_rev\":\"1-a\"}}}}\n"
        )
    }

    #[tokio::test]
    async fn a_sound_dump_verifies_clean() {
        assert_eq!(verify_dump(&[line("a"), line("b")].concat()).await, vec![]);
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_is_reported_by_item() {
        let damaged = verify_dump(&[line("a"), "{\"id\":\"b\",not json\n".into()].concat()).await;
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!(damaged[0].0, "couchdb/lms/docs.ndjson");
    }

    #[tokio::test]
    async fn counts_that_differ_from_the_metadata_are_reported() {
        let damaged = verify_dump(&[line("a"), line("b"), line("c")].concat()).await;
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!(damaged[0].0, "couchdb/lms/meta.json");
        assert!(damaged[0].1[0].contains("metadata recorded"), "{damaged:?}");
    }

    #[tokio::test]
    async fn unsorted_documents_are_reported() {
        let damaged = verify_dump(&[line("b"), line("a")].concat()).await;
        assert_eq!(damaged[0].0, "couchdb/lms/docs.ndjson", "{damaged:?}");
        assert!(damaged[0].1[0].contains("not sorted"), "{damaged:?}");
    }
}
