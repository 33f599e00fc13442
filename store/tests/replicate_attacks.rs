//! `replicate` against a hostile source: every object it stores at the
//! destination is the exact bytes it checked (issue 13, critical 4).
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use cairn_store::backend::ObjectKey;
use cairn_store::ops::replicate::ReplicateOptions;
use cairn_store::repo::Repository;
use support::*;

#[tokio::test]
async fn a_source_answering_a_second_get_with_other_bytes_cannot_plant_them() {
    let src = Place::new(Kind::Local);
    init(&src).await;
    let first = backup_bytes(&src.backend(), "a", random_bytes(200_000, 1)).await;
    let second = backup_bytes(&src.backend(), "a", random_bytes(200_000, 2)).await;
    // The source shows the checker the genuine manifest, then hands the
    // copier another (here: the other snapshot's signed bytes).
    let other = src
        .backend()
        .get(&ObjectKey::Snapshot(first.snapshot))
        .await
        .unwrap();
    let (hostile, faults) = src.faulty_backend();
    faults.swap_after(&format!("snapshots/{}", second.snapshot), 1, other);

    let dst = Place::new(Kind::Local);
    let report = Repository::open(hostile)
        .await
        .unwrap()
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await;
    // Either it refuses, or what it stored is what it checked.
    let stored = dst
        .backend()
        .get(&ObjectKey::Snapshot(second.snapshot))
        .await;
    if let Ok(bytes) = &stored {
        assert_eq!(
            blake3::hash(bytes).as_bytes(),
            &second.snapshot.0,
            "the replica holds bytes under snapshot {} that are not that snapshot (report: {report:?})",
            second.snapshot
        );
    }
    let report = report.unwrap();
    assert_eq!(report.snapshots_copied.len(), 2);
    assert!(verify_all(&dst.backend()).await.is_clean());
    let latest = snapshots(&dst.backend()).await;
    assert_eq!(latest.last().unwrap().id, second.snapshot);
    assert_eq!(
        restore_bytes(&dst.backend(), latest.last().unwrap())
            .await
            .unwrap(),
        random_bytes(200_000, 2)
    );
}

#[tokio::test]
async fn bytes_swapped_on_every_later_get_are_refused_not_stored() {
    // Whatever the source answers after the first GET of a manifest, the
    // replica never holds bytes under a name they do not hash to.
    let src = Place::new(Kind::Local);
    init(&src).await;
    let one = backup_bytes(&src.backend(), "a", random_bytes(1000, 3)).await;
    let (hostile, faults) = src.faulty_backend();
    faults.swap_after(
        &format!("snapshots/{}", one.snapshot),
        1,
        Bytes::from_static(b"not a manifest"),
    );
    let dst = Place::new(Kind::Local);
    let _ = Repository::open(hostile)
        .await
        .unwrap()
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await;
    if let Ok(bytes) = dst.backend().get(&ObjectKey::Snapshot(one.snapshot)).await {
        assert_eq!(blake3::hash(&bytes).as_bytes(), &one.snapshot.0);
    }
}

#[tokio::test]
async fn verify_finds_a_damaged_manifest_an_earlier_run_left_at_the_destination() {
    let src = Place::new(Kind::Local);
    init(&src).await;
    let one = backup_bytes(&src.backend(), "a", random_bytes(1000, 4)).await;
    let dst = Place::new(Kind::Local);
    let source = Repository::open(src.backend()).await.unwrap();
    source
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await
        .unwrap();
    // What the unfixed replicate could leave: other bytes under the name.
    raw_put(
        &dst.backend(),
        &ObjectKey::Snapshot(one.snapshot),
        b"planted".to_vec(),
    )
    .await;
    let again = source
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await
        .unwrap();
    assert_eq!(again.snapshots_present, 1);
    let verify = ReplicateOptions {
        verify: true,
        ..ReplicateOptions::default()
    };
    let err = source.replicate(dst.backend(), &verify).await.unwrap_err();
    assert_eq!(err.kind(), cairn_store::ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("delete it at the destination"),
        "{err}"
    );
}

/// Replication is a writer like a backup (format-spec §12.2): a pack that
/// a garbage collection at the destination has condemned is never taken
/// as present, so that gc cannot delete what a new snapshot needs. Here an
/// interrupted run left a pack there, unindexed, and the gc condemned it.
#[tokio::test]
async fn a_pack_condemned_at_the_destination_is_never_taken_as_present() {
    let src = Place::new(Kind::Local);
    init(&src).await;
    let one = backup_bytes(&src.backend(), "a", random_bytes(400_000, 11)).await;
    let dst = Place::new(Kind::Local);
    // A first run that stopped after its packs: copied, not indexed.
    let source = Repository::open(src.backend()).await.unwrap();
    source
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await
        .unwrap();
    let packs = keys(&dst.backend(), cairn_store::backend::ObjectDir::Packs).await;
    for key in keys(&dst.backend(), cairn_store::backend::ObjectDir::Index).await {
        dst.backend().delete(&key).await.unwrap();
    }
    dst.backend()
        .delete(&ObjectKey::Snapshot(one.snapshot))
        .await
        .unwrap();
    plant_condemned_list(&dst.backend(), "20261206-000000-00000001", &packs).await;

    let err = source
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cairn_store::ErrorKind::Locked, "{err}");
    assert!(err.to_string().contains("condemned"), "{err}");
    assert!(
        snapshots(&dst.backend()).await.is_empty(),
        "no snapshot may name a condemned pack"
    );
}

/// ... but a condemned pack whose live blobs gc already repacked into a
/// pack it keeps is no obstacle: the copy there is used, and the run goes
/// on (an admin's gc with repacking must not stall the replica).
#[tokio::test]
async fn blobs_repacked_at_the_destination_are_used_not_refused() {
    use cairn_store::ops::forget::ForgetOptions;
    let src = Place::new(Kind::Local);
    init(&src).await;
    let whole = random_bytes(12 << 20, 12);
    let big = backup_bytes(&src.backend(), "x", whole.clone()).await;
    let small = backup_bytes(&src.backend(), "x", whole[..3 << 20].to_vec()).await;
    let dst = Place::new(Kind::Local);
    let source = Repository::open(src.backend()).await.unwrap();
    source
        .replicate(dst.backend(), &ReplicateOptions::default())
        .await
        .unwrap();
    let dest = Repository::open(dst.backend()).await.unwrap();
    let trust = dest.trust(&[]);
    let forget = |id: cairn_store::id::SnapshotId| ForgetOptions {
        ids: vec![id.to_hex()],
        ..ForgetOptions::default()
    };
    // The admin forgets the big one there; gc repacks what the small one
    // still needs and condemns the old packs, to delete them an hour later.
    dest.forget(&trust, &forget(big.snapshot)).await.unwrap();
    let collected = dest
        .gc(&cairn_store::ops::gc::GcOptions {
            grace: std::time::Duration::from_secs(3600),
            max_repack_pct: 100.0,
            ..cairn_store::ops::gc::GcOptions::default()
        })
        .await
        .unwrap();
    assert!(collected.repacked_into > 0, "{collected:?}");
    // Then the small one is forgotten there too, and replicated again: its
    // blobs are in the source's old packs, condemned there, and repacked.
    dest.forget(&trust, &forget(small.snapshot)).await.unwrap();
    let report = source
        .replicate(
            dst.backend(),
            &ReplicateOptions {
                selection: cairn_store::ops::replicate::Selection::Ids(vec![
                    small.snapshot.to_hex(),
                ]),
                ..ReplicateOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.snapshots_copied, [small.snapshot]);
    let copied = snapshots(&dst.backend()).await;
    assert_eq!(
        restore_bytes(&dst.backend(), &copied[0]).await.unwrap(),
        whole[..3 << 20]
    );
}
