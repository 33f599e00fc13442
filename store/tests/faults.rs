//! Bad input and failing storage: each gives its own error kind and leaves
//! everything already stored exactly as it was.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use std::sync::Arc;

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, BackendOptions};
use cairn_store::format::key::SecretKey;
use cairn_store::ops::backup::NoProgress;
use cairn_store::ops::source::{CommandLine, Source};
use cairn_store::repo::Repository;
use support::*;

/// A repository holding one snapshot, and its full contents.
async fn repo_with_one_snapshot(
    kind: Kind,
) -> (Place, Backend, Vec<(String, bytes::Bytes)>, Vec<u8>) {
    let place = Place::new(kind);
    init(&place).await;
    let backend = place.backend();
    let data = random_bytes(2 << 20, 11);
    backup_bytes(&backend, "first.bin", data.clone()).await;
    let before = everything(&backend).await;
    (place, backend, before, data)
}

/// The snapshots and index objects are exactly as before, and the old
/// snapshot still restores. (Packs may be added, unreferenced: `gc` takes them.)
async fn assert_nothing_else_changed(
    backend: &Backend,
    before: &[(String, bytes::Bytes)],
    data: &[u8],
) {
    let now = everything(backend).await;
    let metadata = |objects: &[(String, bytes::Bytes)]| -> Vec<(String, bytes::Bytes)> {
        objects
            .iter()
            .filter(|(k, _)| !k.starts_with("packs/"))
            .cloned()
            .collect()
    };
    assert_eq!(
        metadata(&now),
        metadata(before),
        "snapshots or index changed"
    );
    for (k, v) in before {
        let still = now.iter().find(|(k2, _)| k2 == k).unwrap();
        assert_eq!(&still.1, v, "{k} changed");
    }
    let s = snapshots(backend).await;
    assert_eq!(s.len(), 1);
    assert!(restore_bytes(backend, &s[0]).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_signing_key_is_refused_before_anything_is_written() {
    for kind in kinds() {
        let (_place, backend, before, data) = repo_with_one_snapshot(kind).await;
        let stranger = SecretKey::from_seed(&[9; 32]);
        let repo = writer(backend.clone()).await;
        let err = repo
            .backup(
                stream("x", vec![1u8; 100_000]),
                &stranger,
                &options(),
                Arc::new(NoProgress),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
        assert!(err.to_string().contains(&stranger.public().to_string()));
        assert_eq!(everything(&backend).await, before);
        assert_nothing_else_changed(&backend, &before, &data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_writes_no_snapshot_and_reports_its_stderr() {
    for kind in kinds() {
        let (_place, backend, before, data) = repo_with_one_snapshot(kind).await;
        let repo = writer(backend.clone()).await;
        let command =
            "head -c 3000000 /dev/urandom; echo 'pg_dump: error: connection refused' >&2; exit 3";
        let source = Source::Command {
            command: CommandLine::Shell(command.into()),
            name: "db.sql".into(),
        };
        let err = back_up(&repo, source).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Source, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("status 3") && message.contains("connection refused"),
            "{message}"
        );
        assert!(message.contains("db.sql"), "{message}");
        assert_nothing_else_changed(&backend, &before, &data).await;

        // A command that dies from a signal is a failure too.
        let source = Source::Command {
            command: CommandLine::Shell("kill -9 $$".into()),
            name: "x".into(),
        };
        let err = back_up(&repo, source).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Source);
        assert!(err.to_string().contains("signal"), "{err}");
    }
}

/// A reader that fails after some bytes, as a broken pipe or dying disk would.
struct BreaksAfter(u64);
impl std::io::Read for BreaksAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("stream broke"));
        }
        let n = (buf.len() as u64).min(self.0);
        buf[..n as usize].fill(7);
        self.0 -= n;
        Ok(n as usize)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_writes_no_snapshot() {
    let (_place, backend, before, data) = repo_with_one_snapshot(Kind::Local).await;
    let repo = writer(backend.clone()).await;
    let source = Source::Reader {
        name: "dump".into(),
        reader: Box::new(BreaksAfter(20 << 20)),
    };
    let err = back_up(&repo, source).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source);
    assert!(err.to_string().contains("stream broke"));
    assert_nothing_else_changed(&backend, &before, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_backup_and_keeps_what_was_stored() {
    for kind in kinds() {
        let (place, _, before, data) = repo_with_one_snapshot(kind).await;
        let (backend, fault) = place.faulty_backend();
        // Room for a few packs of a 40 MiB backup, not all of it.
        fault.fill_disk_after(20 << 20);
        let repo = writer(backend.clone()).await;
        let err = back_up(&repo, stream("big.bin", random_bytes(40 << 20, 12)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
        assert!(err.to_string().contains("no space left"), "{err}");
        fault.heal();
        assert_nothing_else_changed(&place.backend(), &before, &data).await;
        let report = verify_all(&place.backend()).await;
        assert!(report.is_clean(), "{report:#?}");
        // A failure while writing the manifest (the last step) also leaves no snapshot.
        fault.fail(cairn_store::backend::fault::Op::Put, "snapshots/");
        let session = writer(backend.clone()).await;
        let err = back_up(&session, stream("small", vec![5u8; 1000]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        assert_eq!(snapshots(&place.backend()).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_endpoint_is_a_clear_error() {
    let options = BackendOptions {
        s3_endpoint: Some("http://127.0.0.1:9".into()),
        s3_credentials: Some(("key".into(), "secret".into())),
        retry_timeout: std::time::Duration::from_secs(3),
        max_retries: 1,
        ..BackendOptions::default()
    };
    let backend = Backend::connect("s3://nowhere/repo", &options, false).unwrap();
    let started = std::time::Instant::now();
    let err = Repository::open(backend.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("s3://nowhere/repo") && message.contains("config"),
        "{message}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let err = Repository::init(backend, vec![]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repository_and_a_second_init_are_distinct_errors() {
    for kind in kinds() {
        let place = Place::new(kind);
        let err = Repository::open(place.backend()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("cairn init"));
        init(&place).await;
        let err = Repository::init(place.backend(), vec![]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_create_only_writes_is_refused_at_init() {
    let (backend, _) = Place::new(Kind::Local).faulty_backend();
    let overwriting = Arc::new(OverwritingStore(Arc::clone(backend.store())));
    let err = Repository::init(Backend::new(overwriting, "overwriting:"), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("create-only"), "{err}");
}

/// A store that ignores "create only" and overwrites, as some S3 clones do.
#[derive(Debug)]
struct OverwritingStore(Arc<dyn object_store::ObjectStore>);

impl std::fmt::Display for OverwritingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overwriting")
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for OverwritingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        _: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.0
            .put_opts(location, payload, object_store::PutOptions::default())
            .await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.0.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// Two reads at once of blobs in one frame fetch and decode it once: the
/// second waits for the first (a restore fetches several windows at once,
/// and neighbouring windows share frames).
#[tokio::test]
async fn concurrent_reads_of_one_frame_fetch_it_once() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let (backend, fault) = place.faulty_backend();
    backup_bytes(&backend, "docs.ndjson", json_dump(2000, 5, None)).await;
    let repo = open(backend).await;
    let mut by_frame: std::collections::HashMap<(u32, u32), Vec<cairn_store::id::BlobId>> =
        std::collections::HashMap::new();
    for (id, loc) in repo.index().blobs() {
        by_frame.entry((loc.pack, loc.frame)).or_default().push(*id);
    }
    let ids = by_frame
        .values()
        .find(|ids| ids.len() >= 2)
        .expect("a frame of several chunks");
    let reader = cairn_store::blob_reader::BlobReader::new(repo.clone(), 8, 16 << 20);
    let gets = || cairn_store::backend::fault::Counters::get(&fault.counters.gets);
    let before = gets();
    let (a, b) = futures::join!(reader.read_blobs(&ids[..1]), reader.read_blobs(&ids[1..2]));
    assert_eq!(cairn_store::id::BlobId::of(&a.unwrap()[0]), ids[0]);
    assert_eq!(cairn_store::id::BlobId::of(&b.unwrap()[0]), ids[1]);
    assert_eq!(gets() - before, 1, "the frame was fetched once");
}
