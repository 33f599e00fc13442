//! Shared test harness: repositories on local disk and, when configured, on a
//! real S3-compatible server (`CAIRN_TEST_S3`, set by `tests/run`).
#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::{Read, Write};

use std::sync::Arc;

use cairn_store::backend::fault::FaultStore;
use cairn_store::backend::{Backend, BackendOptions};
use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::Snapshot;
use cairn_store::ops::backup::{BackupOptions, BackupSummary, NoProgress};
use cairn_store::ops::restore::NoRestoreProgress;
use cairn_store::ops::source::Source;
use cairn_store::repo::{IndexedRepository, Repository};

/// Where a test repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    S3,
}

/// The kinds to run every store test against: local always; S3 when
/// `CAIRN_TEST_S3` names a bucket URL (and required when
/// `CAIRN_TEST_REQUIRE_S3=1`, as `tests/run` sets).
pub fn kinds() -> Vec<Kind> {
    let mut kinds = vec![Kind::Local];
    if std::env::var("CAIRN_TEST_S3").is_ok() {
        kinds.push(Kind::S3);
    } else if std::env::var("CAIRN_TEST_REQUIRE_S3").as_deref() == Ok("1") {
        panic!(
            "CAIRN_TEST_REQUIRE_S3=1 but CAIRN_TEST_S3 is not set: start the services with tests/run"
        );
    } else {
        eprintln!("note: S3 tests skipped (CAIRN_TEST_S3 unset); `tests/run` runs them");
    }
    kinds
}

/// A fresh, empty location for a repository, removed when dropped (local).
pub struct Place {
    pub kind: Kind,
    pub url: String,
    pub dir: Option<tempfile::TempDir>,
}

impl Place {
    pub fn new(kind: Kind) -> Place {
        match kind {
            Kind::Local => {
                let dir = tempfile::tempdir().unwrap();
                let url = dir.path().join("repo").to_str().unwrap().to_string();
                Place {
                    kind,
                    url,
                    dir: Some(dir),
                }
            }
            Kind::S3 => {
                let base = std::env::var("CAIRN_TEST_S3").unwrap();
                let mut nonce = [0u8; 8];
                getrandom_fill(&mut nonce);
                let url = format!("{}/t-{}", base.trim_end_matches('/'), hex(&nonce));
                Place {
                    kind,
                    url,
                    dir: None,
                }
            }
        }
    }

    /// The local repository directory (local places only).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(&self.url)
    }

    pub fn backend(&self) -> Backend {
        Backend::connect(&self.url, &test_backend_options(), true).unwrap()
    }

    /// The backend with a fault injector stacked under it.
    pub fn faulty_backend(&self) -> (Backend, Arc<FaultStore>) {
        let plain = self.backend();
        let fault = FaultStore::new(Arc::clone(plain.store()));
        (Backend::new(fault.clone(), plain.url()), fault)
    }
}

pub fn test_backend_options() -> BackendOptions {
    BackendOptions {
        retry_timeout: std::time::Duration::from_secs(5),
        max_retries: 1,
        ..BackendOptions::default()
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let h = blake3_like(&format!(
        "{t}-{:?}-{}",
        std::thread::current().id(),
        std::process::id()
    ));
    buf.copy_from_slice(&h[..buf.len()]);
}

fn blake3_like(s: &str) -> [u8; 32] {
    *cairn_store::id::BlobId::of(s.as_bytes()).as_bytes()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn key() -> SecretKey {
    SecretKey::from_seed(&[42; 32])
}

pub async fn init(place: &Place) -> Repository {
    Repository::init(place.backend(), vec![key().public()])
        .await
        .unwrap()
}

pub async fn open(backend: Backend) -> IndexedRepository {
    Repository::open(backend)
        .await
        .unwrap()
        .load_index()
        .await
        .unwrap()
}

pub fn options() -> BackupOptions {
    BackupOptions {
        host: "test".into(),
        ..BackupOptions::default()
    }
}

/// Backs up `data` as one item called `name`.
pub async fn backup_bytes(backend: &Backend, name: &str, data: Vec<u8>) -> BackupSummary {
    backup_reader(backend, name, Box::new(std::io::Cursor::new(data))).await
}

pub async fn backup_reader(
    backend: &Backend,
    name: &str,
    reader: Box<dyn Read + Send>,
) -> BackupSummary {
    let session = writer(backend.clone()).await;
    let source = Source::Reader {
        name: name.into(),
        reader,
    };
    let summary = back_up(&session, source).await.unwrap();
    session.finish().await.unwrap();
    summary
}

/// A stream source: `data` as the item `name`.
pub fn stream(name: &str, data: Vec<u8>) -> Source {
    Source::Reader {
        name: name.into(),
        reader: Box::new(std::io::Cursor::new(data)),
    }
}

/// Backs `source` up in `session` with the test key and options, leaving
/// the session open (many tests are about a backup that fails).
pub async fn back_up(
    session: &cairn_store::ops::session::WriteSession,
    source: Source,
) -> cairn_store::Result<BackupSummary> {
    back_up_with(session, source, &options()).await
}

/// [`back_up`] with other options.
pub async fn back_up_with(
    session: &cairn_store::ops::session::WriteSession,
    source: Source,
    options: &BackupOptions,
) -> cairn_store::Result<BackupSummary> {
    session
        .backup(source, &key(), options, Arc::new(NoProgress))
        .await
}

/// Backs up `paths` (files or directories) as one snapshot in a session of
/// its own; the snapshot's id.
pub async fn back_up_paths(
    backend: &Backend,
    paths: Vec<std::path::PathBuf>,
) -> cairn_store::id::SnapshotId {
    let session = writer(backend.clone()).await;
    let id = back_up(&session, Source::Paths(paths))
        .await
        .unwrap()
        .snapshot;
    session.finish().await.unwrap();
    id
}

/// Opens the repository and verifies it, reading every chunk.
pub async fn verify_all(backend: &Backend) -> cairn_store::ops::verify::VerifyReport {
    let repo = Repository::open(backend.clone()).await.unwrap();
    repo.verify(
        &repo.trust(&[]),
        &cairn_store::ops::verify::VerifyOptions {
            read_data: cairn_store::ops::verify::ReadData::All,
            concurrency: 2,
        },
    )
    .await
    .unwrap()
}

/// A write session (a lease, the index without condemned packs).
pub async fn writer(backend: Backend) -> cairn_store::ops::session::WriteSession {
    Repository::open(backend)
        .await
        .unwrap()
        .begin_write(&cairn_store::ops::session::WriteOptions::default())
        .await
        .unwrap()
}

/// Restores the single item of `snapshot` into memory.
pub async fn restore_bytes(backend: &Backend, snapshot: &Snapshot) -> cairn_store::Result<Vec<u8>> {
    let repo = Repository::open(backend.clone())
        .await?
        .load_index()
        .await?;
    let flat =
        cairn_store::ops::walk::with_items(std::sync::Arc::new(repo.blob_reader()), snapshot)
            .await?;
    let name = flat
        .manifest
        .items
        .iter()
        .find(|i| i.kind == cairn_store::format::manifest::ItemKind::File)
        .unwrap()
        .name
        .clone();
    restore_item_bytes(backend, snapshot, &name).await
}

/// Restores the file item `name` of `snapshot` into memory.
pub async fn restore_item_bytes(
    backend: &Backend,
    snapshot: &Snapshot,
    name: &str,
) -> cairn_store::Result<Vec<u8>> {
    let repo = Repository::open(backend.clone())
        .await?
        .load_index()
        .await?;
    let flat =
        cairn_store::ops::walk::with_items(std::sync::Arc::new(repo.blob_reader()), snapshot)
            .await?;
    let item = flat.manifest.item(name).unwrap();
    let reader = repo.blob_reader();
    let (out, _) = repo
        .restore_item(&reader, snapshot, item, Vec::new(), &NoRestoreProgress)
        .await?;
    Ok(out)
}

/// Restores all of snapshot `id` (as listed: a tree root, not the
/// flattened items tests compare) into `target`, as `cairn restore
/// --target` does (large files written at offsets, frame by frame).
pub async fn restore_into(
    backend: &Backend,
    id: cairn_store::id::SnapshotId,
    target: &std::path::Path,
) -> cairn_store::Result<cairn_store::ops::restore::RestoreSummary> {
    let plain = Repository::open(backend.clone()).await?;
    let trust = plain.trust(&[]);
    let listed = plain.load_snapshots(&trust).await?;
    let snapshot = listed.snapshots.iter().find(|s| s.id == id).unwrap();
    let repo = plain.load_index().await?;
    repo.restore_to_dir(snapshot, target, None, &NoRestoreProgress)
        .await
}

/// [`restore_into`] a fresh directory, then reads back the file `name`.
/// When the restore fails, checks that nothing is left under that name,
/// whole or partial, and returns the error.
pub async fn restore_dir_item(
    backend: &Backend,
    snapshot: &Snapshot,
    name: &str,
) -> cairn_store::Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    match restore_into(backend, snapshot.id, &target).await {
        Ok(_) => Ok(std::fs::read(target.join(name)).unwrap()),
        Err(e) => {
            for left in [name.to_string(), format!("{name}.cairn-partial")] {
                assert!(!target.join(&left).exists(), "{left} left behind: {e}");
            }
            Err(e)
        }
    }
}

pub async fn snapshots(backend: &Backend) -> Vec<Snapshot> {
    let repo = Repository::open(backend.clone()).await.unwrap();
    let trust = repo.trust(&[]);
    let list = repo.load_snapshots(&trust).await.unwrap();
    assert!(list.rejected.is_empty(), "{:?}", list.rejected);
    // With their items listed, as a version-1 snapshot has them.
    let repo = repo.load_index().await.unwrap();
    let reader = std::sync::Arc::new(repo.blob_reader());
    let mut out = Vec::new();
    for s in &list.snapshots {
        // A tree that cannot be read stays as it is (tests of damage read it later).
        let flat = cairn_store::ops::walk::with_items(std::sync::Arc::clone(&reader), s).await;
        out.push(flat.unwrap_or_else(|_| s.clone()));
    }
    out
}

/// Deterministic pseudo-random bytes: independent streams per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A CouchDB `_all_docs?include_docs=true`-style dump with `docs`
/// documents of varied, realistic-looking text; with `changed_every`, every
/// n-th document has a new revision and a changed field.
pub fn json_dump(docs: usize, seed: u64, changed_every: Option<usize>) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "course",
        "learner",
        "module",
        "video",
        "quiz",
        "answer",
        "progress",
        "grade",
        "forum",
        "thread",
        "comment",
        "submission",
        "problem",
        "state",
        "attempt",
        "score",
        "weight",
        "section",
        "unit",
        "block",
        "enrollment",
        "certificate",
        "cohort",
        "team",
        "discussion",
        "vote",
        "flag",
        "draft",
        "published",
        "deadline",
        "extension",
        "feedback",
        "rubric",
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "is",
        "for",
        "on",
        "with",
        "this",
        "that",
        "was",
    ];
    let mut out = Vec::new();
    write!(out, "{{\"total_rows\":{docs},\"offset\":0,\"rows\":[\r\n").unwrap();
    for i in 0..docs {
        let h =
            *cairn_store::id::BlobId::of(&[(i as u64).to_le_bytes(), seed.to_le_bytes()].concat())
                .as_bytes();
        let id = hex(&h[..16]);
        let changed = changed_every.is_some_and(|n| i % n == 0);
        let rev = if changed { 2 } else { 1 };
        let n_words = 20 + usize::from(h[16]) % 120;
        let text: Vec<&str> = (0..n_words)
            .map(|w| {
                WORDS[usize::from(h[(w % 15) + 17] ^ (w as u8).wrapping_mul(31)) % WORDS.len()]
            })
            .collect();
        let score = u32::from_le_bytes([h[20], h[21], h[22], 0]) % 1000 + u32::from(changed);
        write!(
            out,
            "{{\"id\":\"{id}\",\"key\":\"{id}\",\"value\":{{\"rev\":\"{rev}-{r}\"}},\"doc\":{{\"_id\":\"{id}\",\"_rev\":\"{rev}-{r}\",\"user\":{u},\"score\":{score},\"text\":\"{t}\"}}}}{sep}",
            r = hex(&h[4..20]),
            u = u16::from_le_bytes([h[1], h[2]]),
            t = text.join(" "),
            sep = if i + 1 < docs { ",\r\n" } else { "\r\n" }
        )
        .unwrap();
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// Every object key of a kind.
pub async fn keys(
    backend: &Backend,
    dir: cairn_store::backend::ObjectDir,
) -> Vec<cairn_store::backend::ObjectKey> {
    let mut k: Vec<_> = backend
        .list(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    k.sort_by_key(|k| k.path().to_string());
    k
}

/// Every object (key, bytes) in the repository, for "nothing changed" checks.
pub async fn everything(backend: &Backend) -> Vec<(String, bytes::Bytes)> {
    use cairn_store::backend::ObjectDir;
    let mut out = Vec::new();
    for dir in [ObjectDir::Packs, ObjectDir::Index, ObjectDir::Snapshots] {
        for key in keys(backend, dir).await {
            out.push((key.path().to_string(), backend.get(&key).await.unwrap()));
        }
    }
    out
}

/// Overwrites an object behind Cairn's back (tests of damage only).
pub async fn raw_put(backend: &Backend, key: &cairn_store::backend::ObjectKey, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    backend
        .store()
        .put(&key.path(), bytes.into())
        .await
        .unwrap();
}

/// Stores a well-formed pack holding, under each id, the bytes given with
/// it: a forgery when they do not hash to the id (what an `append`
/// credential can store). Frames of about 512 KiB. Returns what an index
/// object records of it.
pub async fn put_pack(
    backend: &Backend,
    blobs: &[(cairn_store::id::BlobId, Vec<u8>)],
) -> cairn_store::format::index::IndexedPack {
    use cairn_store::format::frame::FrameBuilder;
    use cairn_store::format::pack::PackWriter;
    let mut pack = PackWriter::new();
    let mut frame = FrameBuilder::default();
    for (id, bytes) in blobs {
        frame.push(*id, bytes);
        if frame.raw_len() >= 512 << 10 {
            pack.add_frame(frame.take().compress(3).unwrap());
        }
    }
    if !frame.is_empty() {
        pack.add_frame(frame.compress(3).unwrap());
    }
    let (id, bytes, trailer) = pack.finish();
    let len = bytes.len() as u64;
    backend
        .put_new(&cairn_store::backend::ObjectKey::Pack(id), bytes)
        .await
        .unwrap();
    cairn_store::format::index::IndexedPack { id, len, trailer }
}

/// Stores an index object naming `packs`, choosing the (ignored) nonce so
/// that its id satisfies `placed` (index objects are loaded in id order).
pub async fn put_index_where(
    backend: &Backend,
    packs: &[cairn_store::format::index::IndexedPack],
    placed: impl Fn(cairn_store::id::IndexId) -> bool,
) -> cairn_store::id::IndexId {
    use cairn_store::id::IndexId;
    let bytes = (0u64..)
        .map(|nonce| cairn_store::format::index::encode_index(packs, nonce))
        .find(|b| placed(IndexId::of(b)))
        .unwrap();
    let id = IndexId::of(&bytes);
    backend
        .put_new(&cairn_store::backend::ObjectKey::Index(id), bytes.into())
        .await
        .unwrap();
    id
}

/// Makes `manifest` a version-1 manifest (items listed in it), as a signer
/// of an old or forged snapshot would write it.
pub fn as_v1(manifest: &mut cairn_store::format::manifest::Manifest) {
    manifest.version = 1;
    manifest.root = None;
    manifest.totals = None;
    manifest.paths = Vec::new();
    manifest.parent = None;
}

/// Writes a condemned list (and its writers list) GC never wrote.
pub async fn plant_condemned_list(
    backend: &Backend,
    run: &str,
    packs: &[cairn_store::backend::ObjectKey],
) {
    use cairn_store::backend::ObjectKey;
    use cairn_store::plan::gc::{
        CondemnReason, CondemnedList, CondemnedPack, WritersAtCondemnation,
    };
    let mut condemned = Vec::new();
    for key in packs {
        let ObjectKey::Pack(id) = key else { panic!() };
        condemned.push(CondemnedPack {
            id: *id,
            reason: CondemnReason::Unreferenced,
            len: backend.head(key).await.unwrap().len,
        });
    }
    let list = CondemnedList {
        version: 1,
        run: run.into(),
        packs: condemned,
    };
    let writers = WritersAtCondemnation {
        run: run.into(),
        writers: vec![],
    };
    let put = |name: String, body: Vec<u8>| async move {
        backend
            .put_new(&ObjectKey::Gc(name), body.into())
            .await
            .unwrap()
    };
    put(
        format!("condemned-{run}"),
        serde_json::to_vec(&list).unwrap(),
    )
    .await;
    put(
        format!("writers-{run}"),
        serde_json::to_vec(&writers).unwrap(),
    )
    .await;
}
