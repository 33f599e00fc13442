//! Garbage collection beside writers: forced interleavings (pause points)
//! that have lost data in other tools, on every backend.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, ObjectDir, ObjectKey};
use cairn_store::ops::forget::ForgetOptions;
use cairn_store::ops::gc::{GcOptions, GcReport};
use cairn_store::ops::source::Source;
use cairn_store::pause::Pauses;
use cairn_store::repo::Repository;
use cairn_store::session::WriteOptions;
use support::*;
use tokio::sync::Notify;

/// Holds an operation at one named point until released.
struct Gate {
    point: &'static str,
    reached: Notify,
    release: Notify,
}

impl Gate {
    fn new(point: &'static str) -> Arc<Gate> {
        Arc::new(Gate {
            point,
            reached: Notify::new(),
            release: Notify::new(),
        })
    }

    fn pauses(self: &Arc<Self>) -> Pauses {
        let gate = Arc::clone(self);
        Pauses::new(Arc::new(move |name| {
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                if name == gate.point {
                    gate.reached.notify_one();
                    gate.release.notified().await;
                }
            })
        }))
    }
}

fn gc_options(pauses: Pauses) -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        max_repack_pct: 100.0,
        pauses,
        ..GcOptions::default()
    }
}

async fn gc(backend: &Backend, pauses: Pauses) -> GcReport {
    Repository::open(backend.clone())
        .await
        .unwrap()
        .gc(&gc_options(pauses))
        .await
        .unwrap()
}

async fn forget(backend: &Backend, id: cairn_store::id::SnapshotId) {
    let repo = Repository::open(backend.clone()).await.unwrap();
    let trust = repo.trust(&[]);
    repo.forget(
        &trust,
        &ForgetOptions {
            ids: vec![id.to_hex()],
            ..ForgetOptions::default()
        },
    )
    .await
    .unwrap();
}

/// A garbage collection running on a task, held at the pause `point`
/// (reached when this returns) until `gate.release` is notified.
async fn gc_held_at(
    backend: &Backend,
    point: &'static str,
) -> (Arc<Gate>, tokio::task::JoinHandle<GcReport>) {
    let gate = Gate::new(point);
    let task = tokio::spawn({
        let backend = backend.clone();
        let pauses = gate.pauses();
        async move { gc(&backend, pauses).await }
    });
    gate.reached.notified().await;
    (gate, task)
}

async fn assert_clean(backend: &Backend) {
    let report = verify_all(backend).await;
    assert!(report.is_clean(), "{report:#?}");
}

/// Backs `data` up as `name` in a session opened with `pauses`.
async fn backup_paused(
    backend: Backend,
    name: &str,
    data: Vec<u8>,
    pauses: Pauses,
) -> cairn_store::Result<cairn_store::ops::backup::BackupSummary> {
    let session = Repository::open(backend)
        .await?
        .begin_write(&WriteOptions {
            pauses,
            ..WriteOptions::default()
        })
        .await?;
    let summary = back_up(&session, stream(name, data)).await;
    session.finish().await?;
    summary
}

async fn restore_of(backend: &Backend, id: cairn_store::id::SnapshotId) -> Vec<u8> {
    let s = snapshots(backend)
        .await
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    restore_bytes(backend, &s).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_exactly_what_forgotten_snapshots_alone_needed() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let (a, b) = (random_bytes(3 << 20, 1), random_bytes(2 << 20, 2));
        let old = backup_bytes(&backend, "a.bin", a.clone()).await;
        let keep = backup_bytes(&backend, "b.bin", b.clone()).await;
        let before = keys(&backend, ObjectDir::Packs).await.len();
        forget(&backend, old.snapshot).await;
        let report = gc(&backend, Pauses::default()).await;
        assert_eq!(report.deleted_packs, 1, "{report:#?}");
        assert_eq!(keys(&backend, ObjectDir::Packs).await.len(), before - 1);
        assert!(report.waiting.is_empty());
        assert_eq!(restore_of(&backend, keep.snapshot).await, b);
        assert_clean(&backend).await;
        // The deletion was logged; nothing is left to do.
        let logs = keys(&backend, ObjectDir::Gc).await;
        assert_eq!(logs.len(), 1, "{logs:?}");
        let log = String::from_utf8(backend.get(&logs[0]).await.unwrap().to_vec()).unwrap();
        assert!(
            log.contains("unreferenced") && log.contains(&report.run),
            "{log}"
        );
        let again = gc(&backend, Pauses::default()).await;
        assert_eq!((again.condemned.len(), again.deleted_packs), (0, 0));
        assert!(keys(&backend, ObjectDir::Locks).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mostly_empty_packs_are_repacked_and_their_live_data_survives() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    // One backup, one pack, two items: forget... the items share a pack, so
    // back up both, then again only the small one, and forget the first.
    let dir = tempfile::tempdir().unwrap();
    let (big, small) = (random_bytes(3 << 20, 3), random_bytes(300 << 10, 4));
    std::fs::write(dir.path().join("big"), &big).unwrap();
    std::fs::write(dir.path().join("small"), &small).unwrap();
    let session = writer(backend.clone()).await;
    let source = Source::Paths(vec![dir.path().join("big"), dir.path().join("small")]);
    let both = back_up(&session, source).await.unwrap();
    session.finish().await.unwrap();
    let only_small = backup_bytes(&backend, "small", small.clone()).await;
    assert_eq!(
        only_small.new_blobs, 0,
        "same content, same tree: {only_small:?}"
    );
    forget(&backend, both.snapshot).await;
    let report = gc(&backend, Pauses::default()).await;
    assert!(report.repacked_into >= 1, "{report:#?}");
    assert!(report.deleted_packs >= 1, "{report:#?}");
    assert_eq!(restore_of(&backend, only_small.snapshot).await, small);
    assert_clean(&backend).await;
    let stats = Repository::open(backend.clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(stats.unreferenced_bytes, 0, "{stats:#?}");
}

/// The acceptance interleaving: a backup that loaded the index before GC
/// condemned a pack deduplicates against it; GC must wait for it, then
/// rescue the pack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_deduplicating_against_a_condemned_pack_keeps_it_alive() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let data = random_bytes(3 << 20, 5);
        let s = backup_bytes(&backend, "x.bin", data.clone()).await;

        // B loads the index (S's chunks in it) and is held there.
        let gate = Gate::new("write:index-loaded");
        let b = tokio::spawn(backup_paused(
            backend.clone(),
            "x.bin",
            data.clone(),
            gate.pauses(),
        ));
        gate.reached.notified().await;

        // S is forgotten; GC condemns its pack but must wait for B.
        forget(&backend, s.snapshot).await;
        let first = gc(&backend, Pauses::default()).await;
        assert_eq!(first.condemned.len(), 1, "{first:#?}");
        assert_eq!(first.deleted_packs, 0, "{first:#?}");
        assert!(
            first.waiting[0].reason.contains("still running"),
            "{first:#?}"
        );

        // B deduplicates against the condemned pack and commits.
        gate.release.notify_one();
        let b = b.await.unwrap().unwrap();
        assert!(
            b.new_blob_bytes < 64 << 10,
            "B stored the data again: {b:?}"
        );

        // GC finishes: the pack holds B's only copy, so it is rescued.
        let second = gc(&backend, Pauses::default()).await;
        assert_eq!(second.rescued.len(), 1, "{second:#?}");
        assert_eq!(second.deleted_packs, 0);
        assert!(second.waiting.is_empty());
        assert_eq!(restore_of(&backend, b.snapshot).await, data);
        assert_clean(&backend).await;
    }
}

/// A backup that starts after the condemnation is public never relies on a
/// condemned pack, even one its own bytes would recreate exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_started_after_condemnation_stores_the_data_anew() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let data = random_bytes(3 << 20, 6);
        let s = backup_bytes(&backend, "x.bin", data.clone()).await;
        let old_packs = keys(&backend, ObjectDir::Packs).await;
        forget(&backend, s.snapshot).await;

        // GC condemns S's pack and is held before deleting.
        let (gate, gc_task) = gc_held_at(&backend, "gc:condemned").await;

        // B backs up the same data: identical bytes, so an identical pack,
        // whose name is condemned: it is stored under another nonce.
        let b = backup_bytes(&backend, "x.bin", data.clone()).await;
        assert!(
            b.new_blob_bytes >= 3 << 20,
            "B relied on a condemned pack: {b:?}"
        );
        let packs = keys(&backend, ObjectDir::Packs).await;
        assert_eq!(packs.len(), 2);

        gate.release.notify_one();
        let report = gc_task.await.unwrap();
        assert_eq!(report.deleted_packs, 1, "{report:#?}");
        assert!(report.rescued.is_empty());
        let left = keys(&backend, ObjectDir::Packs).await;
        assert_eq!(left.len(), 1);
        assert!(
            !old_packs.contains(&left[0]),
            "the condemned pack is the one deleted"
        );
        assert_eq!(restore_of(&backend, b.snapshot).await, data);
        assert_clean(&backend).await;
    }
}

/// A snapshot committed while GC marks (after its listing) protects its
/// chunks: phase 2 marks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_committed_during_the_mark_protects_its_chunks() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let data = random_bytes(2 << 20, 7);
    let s = backup_bytes(&backend, "x.bin", data.clone()).await;
    forget(&backend, s.snapshot).await;
    let (gate, gc_task) = gc_held_at(&backend, "gc:marked").await;
    // A whole backup, deduplicating against S's pack, runs while GC holds.
    let b = backup_bytes(&backend, "x.bin", data.clone()).await;
    assert!(b.new_blob_bytes < 64 << 10);
    gate.release.notify_one();
    let report = gc_task.await.unwrap();
    assert_eq!(report.deleted_packs, 0, "{report:#?}");
    assert_eq!(report.rescued.len(), 1);
    assert_eq!(restore_of(&backend, b.snapshot).await, data);
    assert_clean(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_of_an_interrupted_backup_are_collected_once_old_enough() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let (backend, fault) = place.faulty_backend();
    let kept = backup_bytes(&backend, "kept", random_bytes(1 << 20, 8)).await;
    // Packs stored, then the index write fails: the packs are orphans.
    fault.fail(cairn_store::backend::fault::Op::Put, "index/");
    let session = writer(backend.clone()).await;
    let err = back_up(&session, stream("lost", random_bytes(3 << 20, 9)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    fault.heal();
    let orphans = keys(&backend, ObjectDir::Packs).await.len() - 1;
    assert!(orphans >= 1);
    // That writer's lease is still alive (it was not released): its packs
    // may yet be indexed, so they wait.
    let first = gc(&backend, Pauses::default()).await;
    assert_eq!(first.condemned.len(), 0, "{first:#?}");
    // With no writer left, and past the grace period, they go.
    for lease in keys(&backend, ObjectDir::Locks).await {
        backend.delete(&lease).await.unwrap();
    }
    let second = gc(&backend, Pauses::default()).await;
    assert_eq!(second.deleted_packs as usize, orphans, "{second:#?}");
    assert_eq!(restore_of(&backend, kept.snapshot).await.len(), 1 << 20);
    assert_clean(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_refuses_while_referenced_data_is_missing_or_a_snapshot_is_unreadable() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let a = backup_bytes(&backend, "a", random_bytes(1 << 20, 10)).await;
    backup_bytes(&backend, "b", random_bytes(1 << 20, 11)).await;
    let pack = keys(&backend, ObjectDir::Packs).await[0].clone();
    let bytes = backend.get(&pack).await.unwrap();
    backend.delete(&pack).await.unwrap();
    let repo = Repository::open(backend.clone()).await.unwrap();
    let err = repo.gc(&gc_options(Pauses::default())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("refuses"), "{err}");
    raw_put(&backend, &pack, bytes.to_vec()).await;
    // A snapshot that fails its checks: GC cannot know what it needs.
    let key = ObjectKey::Snapshot(a.snapshot);
    let mut manifest = backend.get(&key).await.unwrap().to_vec();
    manifest[30] ^= 1;
    raw_put(&backend, &key, manifest).await;
    let err = repo.gc(&gc_options(Pauses::default())).await.unwrap_err();
    assert!(err.to_string().contains("cairn forget"), "{err}");
    // Nothing was condemned or deleted by the refused runs.
    assert!(keys(&backend, ObjectDir::Gc).await.is_empty());
    assert_eq!(keys(&backend, ObjectDir::Packs).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_gc_runs_at_a_time() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let s = backup_bytes(&backend, "x", random_bytes(1 << 20, 12)).await;
    forget(&backend, s.snapshot).await;
    let (gate, first) = gc_held_at(&backend, "gc:marked").await;
    let err = Repository::open(backend.clone())
        .await
        .unwrap()
        .gc(&gc_options(Pauses::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(
        err.to_string()
            .contains("another garbage collection is running"),
        "{err}"
    );
    gate.release.notify_one();
    assert_eq!(first.await.unwrap().deleted_packs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lease_lapsed_writes_no_snapshot() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let (backend, fault) = place.faulty_backend();
    let session = Repository::open(backend.clone())
        .await
        .unwrap()
        .begin_write(&WriteOptions {
            lease_ttl: Duration::from_secs(1),
            ..WriteOptions::default()
        })
        .await
        .unwrap();
    // The store stops taking renewals; the source takes longer than half the lease.
    fault.fail(cairn_store::backend::fault::Op::Put, "locks/");
    struct Slow(bool);
    impl std::io::Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(1500));
            self.0 = true;
            buf[..10].fill(1);
            Ok(10)
        }
    }
    let source = Source::Reader {
        name: "slow".into(),
        reader: Box::new(Slow(false)),
    };
    let err = back_up(&session, source).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.to_string().contains("lapsed"), "{err}");
    fault.heal();
    assert!(snapshots(&backend).await.is_empty());
}
