//! Damaged repositories: verify names exactly the affected snapshots and
//! items; restoring them fails loudly; everything else still restores.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use std::collections::BTreeSet;

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, ObjectDir, ObjectKey};
use cairn_store::id::SnapshotId;
use cairn_store::ops::verify::{ReadData, VerifyOptions, VerifyReport};
use cairn_store::repo::Repository;
use support::*;

/// Snapshots A (a.bin), B (b.bin) and C (a.bin again + c.bin), and the pack
/// that A's backup wrote (which C shares and B does not).
struct Fixture {
    place: Place,
    backend: Backend,
    a: SnapshotId,
    b: SnapshotId,
    c: SnapshotId,
    a_pack: ObjectKey,
    data: [Vec<u8>; 3],
}

async fn fixture(kind: Kind) -> Fixture {
    let place = Place::new(kind);
    init(&place).await;
    let backend = place.backend();
    let data = [
        random_bytes(3 << 20, 1),
        random_bytes(2 << 20, 2),
        random_bytes(1 << 20, 3),
    ];
    let a = backup_bytes(&backend, "a.bin", data[0].clone())
        .await
        .snapshot;
    let a_packs = keys(&backend, ObjectDir::Packs).await;
    assert_eq!(a_packs.len(), 1);
    let b = backup_bytes(&backend, "b.bin", data[1].clone())
        .await
        .snapshot;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), &data[0]).unwrap();
    std::fs::write(dir.path().join("c.bin"), &data[2]).unwrap();
    let repo = writer(backend.clone()).await;
    let c = repo
        .backup(
            cairn_store::ops::source::Source::Paths(vec![
                dir.path().join("a.bin"),
                dir.path().join("c.bin"),
            ]),
            &key(),
            // A's a.bin is C's parent version of it: C shares its chunks.
            &cairn_store::ops::backup::BackupOptions {
                parent: Some(a.to_hex()),
                ..options()
            },
            std::sync::Arc::new(cairn_store::ops::backup::NoProgress),
        )
        .await
        .unwrap()
        .snapshot;
    Fixture {
        place,
        backend,
        a,
        b,
        c,
        a_pack: a_packs[0].clone(),
        data,
    }
}

async fn verify(backend: &Backend, read_data: ReadData) -> VerifyReport {
    let repo = Repository::open(backend.clone()).await.unwrap();
    let trust = repo.trust(&[]);
    repo.verify(
        &trust,
        &VerifyOptions {
            read_data,
            concurrency: 4,
        },
    )
    .await
    .unwrap()
}

fn damaged(report: &VerifyReport) -> BTreeSet<(SnapshotId, Vec<String>)> {
    report
        .damaged_snapshots
        .iter()
        .map(|s| (s.id, s.items.iter().map(|i| i.name.clone()).collect()))
        .collect()
}

async fn restore_of(f: &Fixture, id: SnapshotId, item: &str) -> cairn_store::Result<Vec<u8>> {
    let snapshot = snapshots(&f.backend)
        .await
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    restore_item_bytes(&f.backend, &snapshot, item).await
}

/// After damage to A's pack: exactly A and C's a.bin are damaged; their
/// restore fails with `kind`; B and C's c.bin restore byte-identical.
/// `a_item` is what A's damage is named: `a.bin`, or `/` (its whole tree)
/// when the damage also took A's directory node, which shares the pack.
async fn assert_precise(f: &Fixture, report: &VerifyReport, kind: ErrorKind, a_item: &str) {
    let expected: BTreeSet<(SnapshotId, Vec<String>)> = [
        (f.a, vec![a_item.to_string()]),
        (f.c, vec!["a.bin".to_string()]),
    ]
    .into();
    assert_eq!(damaged(report), expected, "{report:#?}");
    assert!(!report.is_clean());
    let err = restore_of(f, f.a, "a.bin").await.unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(a_item) && message.contains(&f.a.short()),
        "{message}"
    );
    let err = restore_of(f, f.c, "a.bin").await.unwrap_err();
    assert_eq!(err.kind(), kind);
    assert_eq!(restore_of(f, f.b, "b.bin").await.unwrap(), f.data[1]);
    assert_eq!(restore_of(f, f.c, "c.bin").await.unwrap(), f.data[2]);
    // The same into a directory, where large files are written at offsets.
    let snapshot = |id| async move {
        let all = snapshots(&f.backend).await;
        all.into_iter().find(|s| s.id == id).unwrap()
    };
    let err = restore_dir_item(&f.backend, &snapshot(f.a).await, "a.bin")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(a_item) && message.contains(&f.a.short()),
        "{message}"
    );
    let err = restore_dir_item(&f.backend, &snapshot(f.c).await, "a.bin")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    let b = restore_dir_item(&f.backend, &snapshot(f.b).await, "b.bin").await;
    assert!(b.unwrap() == f.data[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_in_a_pack_condemns_exactly_the_snapshots_using_it() {
    for kind in kinds() {
        let f = fixture(kind).await;
        assert!(verify(&f.backend, ReadData::All).await.is_clean());
        let mut bytes = f.backend.get(&f.a_pack).await.unwrap().to_vec();
        bytes[100] ^= 0x04; // inside the first data frame (random data: stored raw)
        raw_put(&f.backend, &f.a_pack, bytes).await;

        let report = verify(&f.backend, ReadData::All).await;
        assert_precise(&f, &report, ErrorKind::Corrupt, "a.bin").await;
        // Pinned to the chunk it hit: one chunk of one item.
        let a = report
            .damaged_snapshots
            .iter()
            .find(|s| s.id == f.a)
            .unwrap();
        assert_eq!(a.items[0].problems.len(), 1, "{:?}", a.items);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.object == f.a_pack.to_string())
        );
        drop(f.place);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_pack_condemns_exactly_the_snapshots_using_it() {
    for kind in kinds() {
        let f = fixture(kind).await;
        let bytes = f.backend.get(&f.a_pack).await.unwrap();
        raw_put(&f.backend, &f.a_pack, bytes[..bytes.len() / 2].to_vec()).await;
        // Structure alone (lengths) finds it; reading data agrees.
        for read in [ReadData::None, ReadData::All] {
            let report = verify(&f.backend, read).await;
            assert_precise(&f, &report, ErrorKind::Corrupt, "/").await;
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.detail.contains("truncated"))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pack_condemns_exactly_the_snapshots_using_it() {
    for kind in kinds() {
        let f = fixture(kind).await;
        f.backend.delete(&f.a_pack).await.unwrap();
        let report = verify(&f.backend, ReadData::None).await;
        assert_precise(&f, &report, ErrorKind::Corrupt, "/").await;
        let err = restore_of(&f, f.a, "a.bin").await.unwrap_err();
        assert!(matches!(err, cairn_store::Error::Missing { .. }), "{err}");
        assert!(err.to_string().contains("is missing"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_manifest_is_refused_everywhere() {
    for kind in kinds() {
        let f = fixture(kind).await;
        let original = ObjectKey::Snapshot(f.b);
        let mut bytes = f.backend.get(&original).await.unwrap().to_vec();
        let at = bytes.windows(5).position(|w| w == b"b.bin").unwrap();
        bytes[at] = b'x'; // rename the item, keep the signature
        let forged = ObjectKey::Snapshot(SnapshotId::of(&bytes));
        raw_put(&f.backend, &forged, bytes).await;
        f.backend.delete(&original).await.unwrap();

        let repo = Repository::open(f.backend.clone()).await.unwrap();
        let trust = repo.trust(&[]);
        let err = repo
            .load_snapshot(
                SnapshotId::of(&f.backend.get(&forged).await.unwrap()),
                &trust,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
        let list = repo.load_snapshots(&trust).await.unwrap();
        assert_eq!(list.snapshots.len(), 2);
        assert_eq!(list.rejected.len(), 1);
        let ObjectKey::Snapshot(forged_id) = forged else {
            unreachable!()
        };
        let selected = list.select(
            &cairn_store::plan::select::Selector::IdPrefix(forged_id.to_hex()[..8].into()),
            &Default::default(),
        );
        assert_eq!(selected.unwrap_err().kind(), ErrorKind::BadSignature);

        let report = verify(&f.backend, ReadData::None).await;
        assert_eq!(report.damaged_snapshots.len(), 1);
        assert_eq!(report.damaged_snapshots[0].id, forged_id);
        assert!(
            report.damaged_snapshots[0]
                .reason
                .as_ref()
                .unwrap()
                .contains("signature")
        );

        // Flipping a byte without renaming: the name no longer matches.
        let mut bytes = f
            .backend
            .get(&ObjectKey::Snapshot(f.a))
            .await
            .unwrap()
            .to_vec();
        bytes[20] ^= 1;
        raw_put(&f.backend, &ObjectKey::Snapshot(f.a), bytes).await;
        let err = repo.load_snapshot(f.a, &trust).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_signed_by_other_keys_are_refused() {
    for kind in kinds() {
        let f = fixture(kind).await;
        let stranger = cairn_store::format::key::SecretKey::from_seed(&[7; 32]).public();
        let repo = Repository::open(f.backend.clone()).await.unwrap();
        let trust = repo.trust(&[stranger]);
        let list = repo.load_snapshots(&trust).await.unwrap();
        assert!(list.snapshots.is_empty());
        assert_eq!(list.rejected.len(), 3);
        assert!(
            list.rejected
                .iter()
                .all(|(_, e)| e.kind() == ErrorKind::BadSignature)
        );
        let report = repo
            .verify(
                &trust,
                &VerifyOptions {
                    read_data: ReadData::None,
                    concurrency: 2,
                },
            )
            .await
            .unwrap();
        assert_eq!(report.damaged_snapshots.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_index_object_is_reported_and_backups_still_work() {
    for kind in kinds() {
        let f = fixture(kind).await;
        // The index object that names A's pack.
        let ObjectKey::Pack(a_pack) = f.a_pack else {
            unreachable!()
        };
        let mut index_key = None;
        for key in keys(&f.backend, ObjectDir::Index).await {
            let ObjectKey::Index(id) = key else {
                unreachable!()
            };
            let bytes = f.backend.get(&key).await.unwrap();
            if cairn_store::format::index::decode_index(&bytes, id)
                .unwrap()
                .iter()
                .any(|p| p.id == a_pack)
            {
                index_key = Some(key);
            }
        }
        let index_key = index_key.unwrap();
        let mut bytes = f.backend.get(&index_key).await.unwrap().to_vec();
        bytes[50] ^= 1;
        raw_put(&f.backend, &index_key, bytes).await;
        // Loading tolerates it and says which one is damaged.
        let repo = Repository::open(f.backend.clone())
            .await
            .unwrap()
            .load_index()
            .await
            .unwrap();
        let cairn_store::backend::ObjectKey::Index(damaged_id) = index_key.clone() else {
            unreachable!()
        };
        assert_eq!(repo.damaged_index().len(), 1);
        assert_eq!(repo.damaged_index()[0].0, damaged_id);
        let report = verify(&f.backend, ReadData::None).await;
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.object == index_key.to_string())
        );
        assert!(!report.damaged_snapshots.is_empty());
        // A new backup of data whose index entries were lost stores it again
        // and restores.
        let again = backup_bytes(&f.backend, "a.bin", f.data[0].clone()).await;
        assert!(again.new_blobs > 0);
        let s = snapshots(&f.backend)
            .await
            .into_iter()
            .find(|s| s.id == again.snapshot)
            .unwrap();
        assert!(restore_bytes(&f.backend, &s).await.unwrap() == f.data[0]);
    }
}

/// A restore that fails on a damaged large file names it and leaves
/// nothing behind under a temporary name: the files written before it are
/// whole, the damaged one is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_leaves_no_partial_file_behind() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let dir = tempfile::tempdir().unwrap();
    let names = ["a.bin", "b.bin", "c.bin"];
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.path().join(name), random_bytes(3 << 20, 10 + i as u64)).unwrap();
    }
    let paths = || names.iter().map(|n| dir.path().join(n)).collect();
    back_up_paths(&backend, paths()).await;
    let before = keys(&backend, ObjectDir::Packs).await;
    // b.bin changes: the next backup's packs hold its content only.
    std::fs::write(dir.path().join("b.bin"), random_bytes(3 << 20, 20)).unwrap();
    let id = back_up_paths(&backend, paths()).await;
    let mut new: Vec<(usize, ObjectKey)> = Vec::new();
    for key in keys(&backend, ObjectDir::Packs).await {
        if !before.contains(&key) {
            new.push((backend.get(&key).await.unwrap().len(), key));
        }
    }
    new.sort_by_key(|(len, _)| *len);
    let (_, pack) = new.pop().unwrap();
    // One byte of b.bin's content flipped, in the middle of its largest pack.
    let mut bytes = backend.get(&pack).await.unwrap().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    raw_put(&backend, &pack, bytes).await;
    let snapshot = snapshots(&backend)
        .await
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    let err = restore_dir_item(&backend, &snapshot, "b.bin")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("\"b.bin\""), "{err}");
    // What is left: whole files written before the failure, nothing else.
    let target = tempfile::tempdir().unwrap();
    let target = target.path().join("t");
    assert!(restore_into(&backend, id, &target).await.is_err());
    for entry in std::fs::read_dir(&target).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name == "a.bin" || name == "c.bin", "{name} left behind");
        let bytes = std::fs::read(target.join(&name)).unwrap();
        assert!(
            bytes == std::fs::read(dir.path().join(&name)).unwrap(),
            "{name} whole"
        );
    }
}
