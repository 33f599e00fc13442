//! Copies of a blob that lie: a pack whose trailer claims live blob ids over
//! other bytes, named by an index object that is loaded before the genuine
//! one (issue 13, High 7), or after it (Medium: verify hashed only the
//! first copy). Readers fall back to an intact copy; `verify --read-data`
//! hashes every copy and names the lying pack and index object.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use cairn_store::backend::{Backend, ObjectDir, ObjectKey};
use cairn_store::format::index::{IndexedPack, decode_index};
use cairn_store::format::pack::{BlobEntry, PackTrailer};
use cairn_store::id::{IndexId, PackId};
use cairn_store::ops::verify::{ReadData, VerifyOptions, VerifyReport};
use cairn_store::repo::Repository;
use support::*;

/// Which way the forged index object sorts against the genuine ones (index
/// objects are loaded in id order).
#[derive(Clone, Copy, PartialEq)]
enum Order {
    First,
    Last,
}

/// The genuine index objects and what they list.
async fn genuine(backend: &Backend) -> Vec<(IndexId, Vec<IndexedPack>)> {
    let mut out = Vec::new();
    for key in keys(backend, ObjectDir::Index).await {
        let ObjectKey::Index(id) = key else {
            unreachable!()
        };
        let bytes = backend.get(&key).await.unwrap();
        out.push((id, decode_index(&bytes, id).unwrap()));
    }
    out
}

/// Stores an index object listing `packs` whose id sorts `order` of every
/// index object already stored (the nonce is free: readers ignore it).
async fn store_index(backend: &Backend, packs: &[IndexedPack], order: Order) -> IndexId {
    let existing: Vec<IndexId> = genuine(backend).await.iter().map(|g| g.0).collect();
    put_index_where(backend, packs, |id| match order {
        Order::First => existing.iter().all(|e| id < *e),
        Order::Last => existing.iter().all(|e| id > *e),
    })
    .await
}

/// A well-formed pack whose trailer claims every blob the genuine index
/// names, each with its length, over random bytes: stored, and indexed by
/// an index object sorting `order`.
async fn forge(backend: &Backend, order: Order) -> (PackId, IndexId) {
    let mut claims = Vec::new();
    for (_, packs) in genuine(backend).await {
        for p in packs {
            for b in &p.trailer.blobs {
                let seed = 1001 + claims.len() as u64;
                claims.push((b.id, random_bytes(b.len as usize, seed)));
            }
        }
    }
    let fake = put_pack(backend, &claims).await;
    let index = store_index(backend, std::slice::from_ref(&fake), order).await;
    (fake.id, index)
}

async fn verify(backend: &Backend, read_data: ReadData) -> VerifyReport {
    let repo = Repository::open(backend.clone()).await.unwrap();
    repo.verify(
        &repo.trust(&[]),
        &VerifyOptions {
            read_data,
            concurrency: 2,
        },
    )
    .await
    .unwrap()
}

/// The report names `object` in a problem whose detail contains every one of `words`.
fn names(report: &VerifyReport, object: &str, words: &[&str]) -> bool {
    report
        .problems
        .iter()
        .any(|p| p.object == object && words.iter().all(|w| p.detail.contains(w)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowing_index_does_not_stop_restore_and_verify_names_it() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let data = random_bytes(3 << 20, 1);
        backup_bytes(&backend, "a.bin", data.clone()).await;
        let (fake_pack, fake_index) = forge(&backend, Order::First).await;

        let snapshot = snapshots(&backend).await.pop().unwrap();
        let restored = restore_bytes(&backend, &snapshot).await;
        assert!(
            restored.as_ref().is_ok_and(|r| *r == data),
            "restore: {:?}",
            restored.map(|r| r.len())
        );
        let restored = restore_dir_item(&backend, &snapshot, "a.bin").await;
        assert!(
            restored.as_ref().is_ok_and(|r| *r == data),
            "restore into a directory: {:?}",
            restored.map(|r| r.len())
        );

        let report = verify(&backend, ReadData::All).await;
        // Every blob has an intact copy: no snapshot is damaged.
        assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
        assert_eq!(report.snapshots_intact, 1);
        // The forged pack and the index object naming it are reported.
        assert!(
            names(&report, &format!("pack {fake_pack}"), &["hash"]),
            "{report:#?}"
        );
        assert!(
            names(
                &report,
                &format!("index {fake_index}"),
                &["fall back", "cairn verify"]
            ),
            "{report:#?}"
        );
        assert!(!report.is_clean());
        // Structure alone cannot tell: nothing is read.
        let report = verify(&backend, ReadData::None).await;
        assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_duplicate_pack_is_found_by_read_data() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let data = random_bytes(3 << 20, 2);
        backup_bytes(&backend, "a.bin", data.clone()).await;
        let (fake_pack, fake_index) = forge(&backend, Order::Last).await;

        for read in [ReadData::All, ReadData::Subset(100.0)] {
            let report = verify(&backend, read).await;
            assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
            assert_eq!(report.snapshots_intact, 1);
            assert!(
                names(&report, &format!("pack {fake_pack}"), &["hash"]),
                "{report:#?}"
            );
            assert!(
                names(&report, &format!("index {fake_index}"), &["fall back"]),
                "{report:#?}"
            );
            assert!(!report.is_clean());
        }
        // A subset of none reads nothing, so finds nothing.
        let report = verify(&backend, ReadData::Subset(0.0)).await;
        assert_eq!(report.packs_read, 0);
        assert!(report.is_clean(), "{report:#?}");

        let snapshot = snapshots(&backend).await.pop().unwrap();
        assert!(restore_bytes(&backend, &snapshot).await.unwrap() == data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_lying_about_a_genuine_pack_does_not_hide_it() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let data = random_bytes(3 << 20, 3);
        backup_bytes(&backend, "a.bin", data.clone()).await;
        // The genuine pack, with a trailer copy whose blob ids are rotated:
        // same shape (so it passes every structural check), wrong places.
        let mut packs: Vec<IndexedPack> = genuine(&backend)
            .await
            .into_iter()
            .flat_map(|g| g.1)
            .collect();
        let real = packs.remove(0);
        let blobs = &real.trailer.blobs;
        assert!(blobs.len() > 1);
        let rotated: Vec<BlobEntry> = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| BlobEntry {
                id: blobs[(i + 1) % blobs.len()].id,
                ..*b
            })
            .collect();
        let lie = IndexedPack {
            trailer: PackTrailer {
                blobs: rotated,
                ..real.trailer.clone()
            },
            ..real.clone()
        };
        let liar = store_index(&backend, &[lie], Order::First).await;

        let snapshot = snapshots(&backend).await.pop().unwrap();
        let restored = restore_bytes(&backend, &snapshot).await;
        assert!(
            restored.as_ref().is_ok_and(|r| *r == data),
            "restore: {:?}",
            restored.map(|r| r.len())
        );
        let report = verify(&backend, ReadData::All).await;
        assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
        assert!(
            names(&report, &format!("index {liar}"), &["fall back"]),
            "{report:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_copy_fails_the_error_names_each_one() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        backup_bytes(&backend, "a.bin", random_bytes(3 << 20, 4)).await;
        let real = keys(&backend, ObjectDir::Packs).await;
        let (fake_pack, _) = forge(&backend, Order::First).await;
        let snapshot = snapshots(&backend).await.pop().unwrap();
        for key in &real {
            backend.delete(key).await.unwrap();
        }
        for err in [
            restore_bytes(&backend, &snapshot).await.unwrap_err(),
            restore_dir_item(&backend, &snapshot, "a.bin")
                .await
                .unwrap_err(),
        ] {
            assert_eq!(err.kind(), cairn_store::ErrorKind::Corrupt, "{err}");
            let message = err.to_string();
            assert!(message.contains("copies failed"), "{message}");
            assert!(message.contains(&fake_pack.to_string()), "{message}");
            for key in &real {
                assert!(message.contains(&format!("{key} is missing")), "{message}");
            }
        }
        // verify agrees: the snapshot is damaged, both copies named.
        let report = verify(&backend, ReadData::All).await;
        assert_eq!(report.damaged_snapshots.len(), 1, "{report:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_inside_one_pack_is_hashed_too() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        backup_bytes(&backend, "a.bin", random_bytes(1 << 20, 5)).await;
        // A pack whose trailer lists one blob twice: the first copy good,
        // the second of the same length but other bytes.
        let good = random_bytes(4096, 6);
        let id = cairn_store::id::BlobId::of(&good);
        let fake = put_pack(&backend, &[(id, good), (id, random_bytes(4096, 7))]).await;
        let pack = fake.id;
        store_index(&backend, &[fake], Order::Last).await;

        let report = verify(&backend, ReadData::All).await;
        assert!(report.damaged_snapshots.is_empty(), "{report:#?}");
        assert!(
            names(&report, &format!("pack {pack}"), &["1 blobs fail"]),
            "{report:#?}"
        );
    }
}

/// Replication picks, for every live blob, a pack that holds it intact: a
/// fake pack that shadows the genuine one fails its check on arrival, and
/// the blobs come from the genuine copy instead. Before: replicate failed
/// with the fake pack's damage, and no replica could be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_copies_from_the_intact_copy_past_a_shadowing_one() {
    use cairn_store::ops::replicate::ReplicateOptions;
    let source = Place::new(Kind::Local);
    init(&source).await;
    let backend = source.backend();
    let data = random_bytes(2 << 20, 5);
    backup_bytes(&backend, "a.bin", data.clone()).await;
    let (fake_pack, _) = forge(&backend, Order::First).await;

    let replica = Place::new(Kind::Local);
    let report = Repository::open(backend.clone())
        .await
        .unwrap()
        .replicate(replica.backend(), &ReplicateOptions::default())
        .await
        .unwrap();
    assert_eq!(report.snapshots_copied.len(), 1);
    let dst = replica.backend();
    assert!(!dst.exists(&ObjectKey::Pack(fake_pack)).await.unwrap());
    let snapshot = snapshots(&dst).await.pop().unwrap();
    assert_eq!(restore_bytes(&dst, &snapshot).await.unwrap(), data);
    assert!(verify_all(&dst).await.is_clean());
}
