//! Garbage collection beside writers: forced interleavings (pause points)
//! that have lost data in other tools, on every backend.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, ObjectDir, ObjectKey};
use cairn_store::ops::backup::BackupOptions;
use cairn_store::ops::forget::ForgetOptions;
use cairn_store::ops::gc::{GcOptions, GcReport};
use cairn_store::ops::session::WriteOptions;
use cairn_store::ops::source::Source;
use cairn_store::pause::Pauses;
use cairn_store::repo::Repository;
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
    // A file changed within a second of its parent's backup is read again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let session = writer(backend.clone()).await;
    let source = Source::Paths(vec![dir.path().join("big"), dir.path().join("small")]);
    let both = back_up(&session, source).await.unwrap();
    session.finish().await.unwrap();
    // Compared with the first backup, `small` is unchanged: not read, not stored.
    let session = writer(backend.clone()).await;
    let options = BackupOptions {
        parent: Some(both.snapshot.to_hex()),
        ..options()
    };
    let only_small = back_up_with(
        &session,
        Source::Paths(vec![dir.path().join("small")]),
        &options,
    )
    .await
    .unwrap();
    session.finish().await.unwrap();
    assert_eq!(only_small.files_unchanged, 1, "{only_small:?}");
    assert_eq!(
        only_small.new_blob_bytes, only_small.new_tree_bytes,
        "same content, no chunk stored again: {only_small:?}"
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

        // B loads the index and its parent (S: its chunks are what B may
        // deduplicate against) and is held there.
        let gate = Gate::new("backup:parents-loaded");
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
    // B takes S as its parent (what it may deduplicate against), then S is
    // forgotten and GC marks without it.
    let parents = Gate::new("backup:parents-loaded");
    let b = tokio::spawn(backup_paused(
        backend.clone(),
        "x.bin",
        data.clone(),
        parents.pauses(),
    ));
    parents.reached.notified().await;
    forget(&backend, s.snapshot).await;
    let (gate, gc_task) = gc_held_at(&backend, "gc:marked").await;
    // The whole backup, deduplicating against S's pack, runs while GC holds.
    parents.release.notify_one();
    let b = b.await.unwrap().unwrap();
    assert!(b.new_blob_bytes < 64 << 10, "{b:?}");
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

/// Writes, as an `append` credential could (create-only), a pack claiming
/// every blob of `genuine` but holding other bytes, and an index object
/// naming it whose id sorts after `after` (so readers still find the
/// genuine copy first). Returns the fake pack's id.
async fn plant_fake_copy(
    backend: &Backend,
    genuine: &ObjectKey,
    after: cairn_store::id::IndexId,
) -> cairn_store::id::PackId {
    let ObjectKey::Pack(genuine_id) = genuine else {
        panic!("{genuine:?} is not a pack")
    };
    let bytes = backend.get(genuine).await.unwrap();
    let trailer = cairn_store::format::pack::decode_pack(&bytes, *genuine_id).unwrap();
    let claims: Vec<_> = (trailer.blobs.iter().enumerate())
        .map(|(n, b)| (b.id, random_bytes(b.len as usize, 1000 + n as u64)))
        .collect();
    let fake = put_pack(backend, &claims).await;
    put_index_where(backend, std::slice::from_ref(&fake), |id| id > after).await;
    fake.id
}

/// Issue 13, critical 2 (the gc side): a fake pack claiming every live
/// blob, an index naming it and a forged condemned list naming the genuine
/// pack must not make GC delete the genuine pack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_list_and_a_fake_copy_do_not_make_gc_delete_live_data() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let data = random_bytes(3 << 20, 20);
    let s = backup_bytes(&backend, "x.bin", data.clone()).await;
    let genuine = keys(&backend, ObjectDir::Packs).await;
    let genuine_index = match &keys(&backend, ObjectDir::Index).await[..] {
        [ObjectKey::Index(id)] => *id,
        other => panic!("{other:?}"),
    };
    let mut fakes = Vec::new();
    for pack in &genuine {
        fakes.push(plant_fake_copy(&backend, pack, genuine_index).await);
    }
    plant_condemned_list(&backend, "20000101-000000-0badc0de", &genuine).await;

    let report = gc(&backend, Pauses::default()).await;
    let left = keys(&backend, ObjectDir::Packs).await;
    for pack in &genuine {
        assert!(left.contains(pack), "{pack:?} deleted: {report:#?}");
    }
    assert_eq!(report.deleted_packs, 0, "{report:#?}");
    assert_eq!(report.rescued.len(), genuine.len(), "{report:#?}");
    // The fake copies were read and found wrong, and said so.
    assert!(!report.unverified.is_empty(), "{report:#?}");
    for u in &report.unverified {
        assert!(fakes.contains(&u.pack) && u.blobs > 0, "{u:?}");
    }
    assert_eq!(restore_of(&backend, s.snapshot).await, data);
    // The forged list is finished (its packs rescued): nothing waits.
    assert!(report.waiting.is_empty(), "{report:#?}");
    let again = gc(&backend, Pauses::default()).await;
    assert_eq!(again.deleted_packs, 0, "{again:#?}");
    assert_eq!(restore_of(&backend, s.snapshot).await, data);
}

/// A forged writers list naming no writer does not let phase 2 run while a
/// writer that started before the list was public is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_writers_list_does_not_hide_a_running_writer() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let s = backup_bytes(&backend, "x.bin", random_bytes(1 << 20, 21)).await;
    let packs = keys(&backend, ObjectDir::Packs).await;
    // A writer is running (its lease alive) when the list appears.
    let session = writer(backend.clone()).await;
    forget(&backend, s.snapshot).await;
    plant_condemned_list(&backend, "20000101-000000-0badc0de", &packs).await;
    let report = gc(&backend, Pauses::default()).await;
    assert_eq!(report.deleted_packs, 0, "{report:#?}");
    assert!(
        report
            .waiting
            .iter()
            .any(|w| w.reason.contains("still running")),
        "{report:#?}"
    );
    session.finish().await.unwrap();
}

/// A condemned list or writers list GC cannot parse is reported and left
/// alone; GC goes on with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_gc_lists_are_reported_and_skipped() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let s = backup_bytes(&backend, "x.bin", random_bytes(1 << 20, 22)).await;
    let keep = backup_bytes(&backend, "y.bin", random_bytes(1 << 20, 23)).await;
    for (name, body) in [
        ("condemned-20000101-000000-00000001", &b"not json"[..]),
        ("writers-20000101-000000-00000002", &b"{\"run\": 3}"[..]),
    ] {
        backend
            .put_new(&ObjectKey::Gc(name.into()), body.to_vec().into())
            .await
            .unwrap();
    }
    forget(&backend, s.snapshot).await;
    let report = gc(&backend, Pauses::default()).await;
    assert_eq!(report.deleted_packs, 1, "{report:#?}");
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.object.as_str()).collect();
    assert!(
        skipped
            .iter()
            .any(|o| o.contains("condemned-20000101-000000-00000001"))
            && skipped
                .iter()
                .any(|o| o.contains("writers-20000101-000000-00000002")),
        "{report:#?}"
    );
    assert_eq!(restore_of(&backend, keep.snapshot).await.len(), 1 << 20);
}

/// Issue 13, medium: a lease claiming a time-to-live of 2^63 s counts for
/// at most the maximum; one whose body does not parse counts for the
/// default time-to-live from its last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_cannot_claim_to_live_forever() {
    use cairn_store::lease::{list_leases, store_now};
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let endless = serde_json::json!({
        "kind": "backup", "host": "node4", "pid": 1,
        "started": "2026-01-01T00:00:00Z", "ttl_secs": 1u64 << 63, "holder": "x",
    });
    for (id, body) in [
        (
            "backup-00000000000000e1",
            serde_json::to_vec(&endless).unwrap(),
        ),
        ("backup-00000000000000e2", b"garbage".to_vec()),
    ] {
        backend
            .put_new(&ObjectKey::Lock(id.into()), body.into())
            .await
            .unwrap();
    }
    let now = store_now(&backend).await.unwrap();
    let leases = list_leases(&backend).await.unwrap();
    assert_eq!(leases.len(), 2);
    let hours = |h: i64| now + jiff::SignedDuration::from_hours(h);
    for l in &leases {
        assert!(l.is_alive(now), "{l:?}");
        assert!(!l.is_alive(hours(2)), "{l:?} alive two hours later");
    }
    let garbage = leases.iter().find(|l| l.id.ends_with("e2")).unwrap();
    assert!(garbage.damaged.is_some(), "{garbage:?}");
    assert!(!garbage.is_alive(now + jiff::SignedDuration::from_mins(11)));
    // GC reports the unreadable lease.
    let report = gc(&backend, Pauses::default()).await;
    assert!(
        report.skipped.iter().any(|s| s.object.contains("e2")),
        "{report:#?}"
    );
}

/// Issue 13, medium: one garbage index object does not stop GC; it is
/// reported and skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_skips_and_reports_a_garbage_index_object() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let s = backup_bytes(&backend, "x.bin", random_bytes(1 << 20, 24)).await;
    let keep = backup_bytes(&backend, "y.bin", random_bytes(1 << 20, 25)).await;
    let garbage = ObjectKey::Index(cairn_store::id::IndexId([0xee; 32]));
    backend
        .put_new(&garbage, b"garbage".to_vec().into())
        .await
        .unwrap();
    forget(&backend, s.snapshot).await;
    let report = Repository::open(backend.clone())
        .await
        .unwrap()
        .gc(&gc_options(Pauses::default()))
        .await
        .unwrap();
    assert_eq!(report.deleted_packs, 1, "{report:#?}");
    assert!(
        report.skipped.iter().any(|s| s.object.contains("eeee")),
        "{report:#?}"
    );
    // Left for `verify` to report; GC deletes only what it can parse.
    assert!(backend.exists(&garbage).await.unwrap());
    assert_eq!(restore_of(&backend, keep.snapshot).await.len(), 1 << 20);
}

/// When the only index naming live data is garbage, its packs look
/// unindexed, but GC refuses (a reachable blob is missing) before it
/// condemns anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_refuses_when_the_index_of_live_data_is_garbage() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    backup_bytes(&backend, "x.bin", random_bytes(1 << 20, 26)).await;
    let index = keys(&backend, ObjectDir::Index).await;
    let packs = keys(&backend, ObjectDir::Packs).await;
    raw_put(&backend, &index[0], b"garbage".to_vec()).await;
    let err = Repository::open(backend.clone())
        .await
        .unwrap()
        .gc(&gc_options(Pauses::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refuses"), "{err}");
    assert!(keys(&backend, ObjectDir::Gc).await.is_empty());
    assert_eq!(keys(&backend, ObjectDir::Packs).await, packs);
}

/// Issue 13, "also in gc": three snapshots each adding 8 MB of unique data
/// in packs shared with data the last snapshot still needs; after
/// `forget --keep-last 1` the dead data sits in packs more than half live.
/// GC must bring the unreferenced bytes down to `--max-unused` (5 %) of
/// what is stored, or say what is left and what would free it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_data_in_half_live_packs_is_repacked_down_to_max_unused() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // Snapshot n stores `kept-n` (10 MB a later snapshot keeps) interleaved
    // with 8 MB of its own unique data, in 640 KiB and 512 KiB blocks.
    let kept: Vec<Vec<u8>> = (0..3u64).map(|n| random_bytes(10 << 20, 40 + n)).collect();
    let mut ids = Vec::new();
    for n in 0..3usize {
        let unique = random_bytes(8 << 20, 50 + n as u64);
        let mut mixed = Vec::new();
        for (k, u) in kept[n].chunks(640 << 10).zip(unique.chunks(512 << 10)) {
            mixed.extend_from_slice(k);
            mixed.extend_from_slice(u);
        }
        std::fs::write(path("mixed"), &mixed).unwrap();
        let mut items = vec![path("mixed")];
        for (m, data) in kept.iter().enumerate().take(n) {
            // The kept data of the earlier snapshots, now as files of their own.
            std::fs::write(path(&format!("kept-{m}")), data).unwrap();
            items.push(path(&format!("kept-{m}")));
        }
        let session = writer(backend.clone()).await;
        ids.push(
            back_up(&session, Source::Paths(items))
                .await
                .unwrap()
                .snapshot,
        );
        session.finish().await.unwrap();
    }
    // `forget --keep-last 1` (the item lists differ, so by id).
    for old in &ids[..2] {
        forget(&backend, *old).await;
    }
    let repo = Repository::open(backend.clone()).await.unwrap();
    // With the default --max-repack (10 %) a run cannot reach the bound:
    // the report says how much is left, where, and what would free it.
    let dry = repo
        .gc(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    let left = dry.unused_left.as_ref().expect("leftover reported");
    assert!(left.bytes > 0 && left.packs > 0, "{dry:#?}");
    assert!(left.hint.contains("--max-repack"), "{dry:#?}");
    // Uncapped, GC repacks until at most 5 % is unreferenced.
    let report = gc(&backend, Pauses::default()).await;
    let stats = Repository::open(backend.clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert!(
        stats.unreferenced_bytes * 20 <= stats.stored_bytes,
        "unreferenced {} of {} stored after gc: {report:#?}",
        stats.unreferenced_bytes,
        stats.stored_bytes
    );
    let s = snapshots(&backend).await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].id, ids[2]);
    assert_clean(&backend).await;
}

/// An append token writes an index object, sorting first, that names a
/// pack gc will delete and lies about a pack that stays (found in review).
/// gc rewrote the index objects naming deleted packs keeping one
/// description per pack id, the first: the lie stayed, the genuine
/// description went with the genuine index object, and the snapshot that
/// needs the surviving pack no longer restored. Every distinct description
/// is kept now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_description_does_not_replace_a_surviving_packs_genuine_one() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    // One backup in several packs, one index object; the next keeps only
    // the head, so the tail's packs die and the head's live on.
    let data = random_bytes(9 << 20, 30);
    let first = backup_bytes(&backend, "x.bin", data.clone()).await;
    let [ObjectKey::Index(genuine_index)] = keys(&backend, ObjectDir::Index).await[..] else {
        panic!("one index object expected")
    };
    let genuine = cairn_store::format::index::decode_index(
        &backend.get(&ObjectKey::Index(genuine_index)).await.unwrap(),
        genuine_index,
    )
    .unwrap();
    assert!(genuine.len() >= 2, "{} packs", genuine.len());
    let head = data[..4 << 20].to_vec();
    let second = backup_bytes(&backend, "x.bin", head.clone()).await;
    forget(&backend, first.snapshot).await;
    // The forged index object sorts first; it lies about every genuine
    // pack (each said to hold one unrelated blob), lies first, then names
    // them truly, so that it is among the index objects gc rewrites once
    // the tail's packs are deleted.
    let other = random_bytes(1000, 31);
    let lie = put_pack(&backend, &[(cairn_store::id::BlobId::of(&other), other)]).await;
    let mut forged: Vec<_> = (genuine.iter())
        .map(|g| cairn_store::format::index::IndexedPack {
            id: g.id,
            ..lie.clone()
        })
        .collect();
    forged.extend(genuine.iter().cloned());
    put_index_where(&backend, &forged, |id| id < genuine_index).await;

    // No repacking: the head's pack stays as it is, named by rewritten
    // index objects.
    let report = Repository::open(backend.clone())
        .await
        .unwrap()
        .gc(&GcOptions {
            max_repack_pct: 0.0,
            ..gc_options(Pauses::default())
        })
        .await
        .unwrap();
    assert!(report.deleted_packs >= 1, "{report:#?}");
    assert!(report.deleted_index >= 1, "{report:#?}");
    assert_eq!(restore_of(&backend, second.snapshot).await, head);
    // verify names the lie; no snapshot is damaged.
    let report = verify_all(&backend).await;
    assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
}
