//! A replica written through a credential that may only create (the offsite
//! bucket's on node4, deploy/s3/): `replicate` appends — no overwrite, no
//! delete, not even of its own lease — and still refuses a rolled-back
//! source. The store answers as such a bucket policy does: 403.
#![allow(clippy::unwrap_used)]

mod support;

use cairn_store::ErrorKind;
use cairn_store::backend::fault::Counters;
use cairn_store::ops::replicate::ReplicateOptions;
use cairn_store::repo::Repository;
use support::*;

#[tokio::test]
async fn replication_through_a_create_only_credential_appends_and_keeps_its_guards() {
    for kind in kinds() {
        let src = Place::new(kind);
        init(&src).await;
        backup_bytes(&src.backend(), "a", random_bytes(300_000, 1)).await;
        let rolled_back = (kind == Kind::Local).then(|| copy_of(&src));
        let source = Repository::open(src.backend()).await.unwrap();
        let options = ReplicateOptions::default();

        // Written as usual, the replica needs overwrites and deletes: refused.
        let refusing = Place::new(kind);
        let (guarded, faults) = refusing.faulty_backend();
        faults.create_only();
        let err = source.replicate(guarded, &options).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");

        // Append-only, the same credential is enough and nothing is refused.
        let dst = Place::new(kind);
        let (guarded, faults) = dst.faulty_backend();
        faults.create_only();
        let guarded = guarded.append_only();
        let report = source.replicate(guarded.clone(), &options).await.unwrap();
        assert_eq!(report.snapshots_copied.len(), 1);
        let second = backup_bytes(&src.backend(), "a", random_bytes(300_000, 2)).await;
        let report = source.replicate(guarded.clone(), &options).await.unwrap();
        assert_eq!(report.snapshots_copied, [second.snapshot]);
        // Again with nothing new: the probe and the state are there already.
        let report = source.replicate(guarded.clone(), &options).await.unwrap();
        assert!(report.snapshots_copied.is_empty());
        assert_eq!(
            Counters::get(&faults.counters.refused),
            0,
            "an overwrite or delete was tried"
        );
        assert_eq!(Counters::get(&faults.counters.deletes), 0);
        assert!(verify_all(&dst.backend()).await.is_clean());
        let latest = snapshots(&dst.backend()).await;
        assert_eq!(
            restore_bytes(&dst.backend(), latest.last().unwrap())
                .await
                .unwrap(),
            random_bytes(300_000, 2)
        );

        // The admin's gc there (a credential that may delete) prunes the
        // superseded replica state; the newest one still guards.
        let states = |b: cairn_store::backend::Backend| async move {
            b.list(cairn_store::backend::ObjectDir::Replicas)
                .await
                .unwrap()
                .len()
        };
        assert_eq!(
            states(dst.backend()).await,
            2,
            "one per newest snapshot accepted"
        );
        let collected = Repository::open(dst.backend())
            .await
            .unwrap()
            .gc(&cairn_store::ops::gc::GcOptions::default())
            .await
            .unwrap();
        assert_eq!(collected.state_objects_removed, 1, "{collected:?}");
        assert_eq!(states(dst.backend()).await, 1);

        // A copy of the source as it was after its first snapshot (the
        // same repository, rolled back) is refused: the replica remembers.
        if let Some(old) = rolled_back {
            let old = Repository::open(old.backend()).await.unwrap();
            let err = old.replicate(guarded, &options).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::RolledBack, "{err}");
        }
    }
}

/// A copy of a local repository as it is now.
fn copy_of(place: &Place) -> Place {
    let copy = Place::new(Kind::Local);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(place.path())
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    copy
}
