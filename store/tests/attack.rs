//! An adversarial review of issue 13's promises: each test is an attack
//! that once worked, kept so that it never works again.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use cairn_store::backend::ObjectKey;
use cairn_store::error::ErrorKind;
use cairn_store::ops::backup::BackupOptions;
use cairn_store::ops::replicate::ReplicateOptions;
use cairn_store::repo::Repository;
use support::*;

/// node4's forgery: a snapshot of `data` dated 2099 whose object is dated
/// 2099 too (a store the signer controls sets its own times).
async fn back_up_dated_2099(place: &Place, data: Vec<u8>) -> cairn_store::id::SnapshotId {
    let future: jiff::Timestamp = "2099-01-01T00:00:00Z".parse().unwrap();
    let session = writer(place.backend()).await;
    let options = BackupOptions {
        host: "test".into(),
        time: Some(future),
        ..BackupOptions::default()
    };
    let forged = back_up_with(&session, stream("a", data), &options)
        .await
        .unwrap();
    session.finish().await.unwrap();
    std::fs::File::options()
        .write(true)
        .open(
            place
                .path()
                .join("snapshots")
                .join(forged.snapshot.to_hex()),
        )
        .unwrap()
        .set_modified(std::time::SystemTime::from(future))
        .unwrap();
    forged.snapshot
}

/// node4 holds the signing key and its own store, which the admin pulls
/// from (`replicate --from ssh://backup@node4/...`): it signs a snapshot
/// dated 2099 and dates the object 2099 too, so that the source's own
/// "from the future" check passes. The replica must still refuse it by
/// its own clock: otherwise `--max-age` is satisfied by the forgery, the
/// forgery is recorded as the newest accepted snapshot, and every later
/// pull from the cleaned-up node4 is refused as a rollback (exit 17).
#[tokio::test]
async fn a_source_dating_its_objects_in_the_future_cannot_poison_the_replica() {
    let src = Place::new(Kind::Local);
    init(&src).await;
    let genuine = backup_bytes(&src.backend(), "a", random_bytes(10_000, 1)).await;
    let forged = back_up_dated_2099(&src, random_bytes(10_000, 2)).await;
    let object = src.path().join("snapshots").join(forged.to_hex());
    let dst = Place::new(Kind::Local);
    let pull = ReplicateOptions {
        max_age: Some(jiff::SignedDuration::from_hours(36)),
        ..ReplicateOptions::default()
    };
    let source = Repository::open(src.backend()).await.unwrap();
    let report = source.replicate(dst.backend(), &pull).await.unwrap();
    assert_eq!(report.snapshots_copied, vec![genuine.snapshot]);
    assert!(report.refused.iter().any(|r| r.id == forged), "{report:?}");
    assert!(
        !dst.backend()
            .exists(&ObjectKey::Snapshot(forged))
            .await
            .unwrap()
    );

    // node4 is cleaned up (the forgery removed); the next pull goes through.
    std::fs::remove_file(&object).unwrap();
    let source = Repository::open(src.backend()).await.unwrap();
    let again = source.replicate(dst.backend(), &pull).await;
    assert!(again.is_ok(), "{again:?}");

    // A source whose only snapshot is the forgery does not satisfy --max-age.
    let lone = Place::new(Kind::Local);
    init(&lone).await;
    back_up_dated_2099(&lone, random_bytes(1_000, 3)).await;
    let source = Repository::open(lone.backend()).await.unwrap();
    let e = source
        .replicate(Place::new(Kind::Local).backend(), &pull)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
}

/// A compromised node4 (signing key, `append` token) signs a snapshot
/// dated before a genuine one whose one file's tree root is a level-0 node
/// listing, as a "chunk", an inner tree node of the genuine snapshot (the
/// node's bytes stored as an ordinary chunk: ids are hashes of bytes).
/// Mark visits each node once: it took the genuine node for a chunk of the
/// forgery, so it never expanded it for the genuine snapshot, and gc
/// deleted every chunk below it: history destroyed by an append token.
#[tokio::test]
async fn a_forged_level_cannot_hide_a_genuine_subtree_from_gc() {
    use cairn_store::format::manifest::{Item, ItemKind};
    use cairn_store::format::tree::{TreeEntry, TreeNode};
    use cairn_store::ops::gc::GcOptions;

    let place = Place::new(Kind::Local);
    init(&place).await;
    let data = random_bytes(3 << 20, 7);
    backup_bytes(&place.backend(), "dump", data.clone()).await;
    let genuine = snapshots(&place.backend()).await.pop().unwrap();
    let root = genuine.manifest.items[0].tree.unwrap();
    let repo = open(place.backend()).await;
    let node =
        TreeNode::decode(&repo.blob_reader().read_blob(root).await.unwrap(), "root").unwrap();
    assert!(node.level > 0, "the genuine file needs an inner node");
    let inner = node.entries[0];

    // The forgery's root: a level-0 node whose one "chunk" is that inner node.
    let fake_root = TreeNode {
        level: 0,
        entries: vec![TreeEntry {
            id: inner.id,
            len: inner.len,
        }],
    }
    .encode();
    let fake_root_id = cairn_store::id::BlobId::of(&fake_root);
    // Stored as the content of an ordinary backup (its one chunk).
    backup_bytes(&place.backend(), "carrier", fake_root.clone()).await;
    let mut manifest = genuine.manifest.clone();
    support::as_v1(&mut manifest);
    manifest.time = genuine.manifest.time - jiff::SignedDuration::from_hours(1);
    manifest.items = vec![Item {
        name: "dump".into(),
        kind: ItemKind::File,
        len: inner.len,
        tree: Some(fake_root_id),
        chunks: Some(1),
        chunker: None,
        mode: None,
        mtime: None,
        target: None,
        one_chunk: false,
    }];
    let (id, bytes) = manifest.encode_signed(&key()).unwrap();
    raw_put(&place.backend(), &ObjectKey::Snapshot(id), bytes).await;

    // The admin's gc, twice (condemn, then delete once the grace passed).
    let repo = Repository::open(place.backend()).await.unwrap();
    let options = GcOptions {
        grace: std::time::Duration::ZERO,
        max_repack_pct: 100.0,
        ..GcOptions::default()
    };
    for _ in 0..2 {
        let report = repo.gc(&options).await;
        eprintln!("{report:?}");
    }
    let restored = restore_bytes(&place.backend(), &genuine).await;
    assert!(
        restored.as_ref().is_ok_and(|b| *b == data),
        "the genuine snapshot no longer restores: {:?}",
        restored.map(|b| b.len())
    );
}

/// Common ways a password rides on a `--command` line that were stored in
/// every signed manifest as they were: a quoted value (the usual shell
/// habit), a passphrase, and curl's `-u user:password` (the README's own
/// CouchDB example uses curl).
#[test]
fn quoted_passwords_passphrases_and_curl_credentials_are_redacted() {
    use cairn_store::redact::redact_command;
    let cases = [
        (
            "PGPASSWORD='hunter2' pg_dump lms",
            "PGPASSWORD='***' pg_dump lms",
        ),
        (
            "mysqldump --password=\"hunter2\" lms",
            "mysqldump --password=\"***\" lms",
        ),
        (
            "BORG_PASSPHRASE=hunter2 borg export-tar",
            "BORG_PASSPHRASE=*** borg export-tar",
        ),
        (
            "curl -s -u admin:hunter2 http://couch:5984/db/_all_docs",
            "curl -s -u admin:*** http://couch:5984/db/_all_docs",
        ),
        (
            "curl --user admin:hunter2 http://couch:5984/db",
            "curl --user admin:*** http://couch:5984/db",
        ),
        (
            "curl --user='admin:hunter2' http://couch:5984/db",
            "curl --user='admin:***' http://couch:5984/db",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(redact_command(input).as_deref(), Some(expected), "{input}");
    }
    // Not secrets: a user without a password, an empty quoted value.
    assert_eq!(redact_command("curl -u admin http://couch:5984/db"), None);
    assert_eq!(redact_command("PGPASSWORD='' pg_dump"), None);
}

/// Swaps a file of the tree being backed up for something else just as
/// the backup starts reading it (after the whole tree was listed): what a
/// malicious user owning a directory inside the backed-up volume can do.
struct SwapAt {
    item: &'static str,
    swap: Box<dyn Fn() + Send + Sync>,
}

impl cairn_store::ops::backup::Progress for SwapAt {
    fn item(&self, name: &str, _len: Option<u64>) {
        if name == self.item {
            (self.swap)();
        }
    }
}

/// Backs `dir` up with `progress`; the item `item`'s restored bytes, or the error.
async fn back_up_tree(
    dir: &std::path::Path,
    item: &str,
    progress: SwapAt,
) -> cairn_store::Result<Vec<u8>> {
    use cairn_store::ops::source::Source;
    let place = Place::new(Kind::Local);
    init(&place).await;
    let session = writer(place.backend()).await;
    let summary = session
        .backup(
            Source::Paths(vec![dir.to_path_buf()]),
            &key(),
            &options(),
            Arc::new(progress),
        )
        .await;
    session.finish().await.unwrap();
    summary?;
    let snapshot = snapshots(&place.backend()).await.pop().unwrap();
    restore_item_bytes(&place.backend(), &snapshot, item).await
}

/// The backup (run as root) listed `vol/b` as a regular file; the owner of
/// `vol` then replaced it with a symlink to a secret, or replaced `vol/sub`
/// with a symlink to a secret directory, and the backup read the secret
/// through the link and stored it as `vol/b`.
#[tokio::test]
async fn a_file_swapped_for_a_link_after_listing_is_not_read_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("b"), b"root:$6$hash").unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("b"), b"mine").unwrap();
    std::fs::write(vol.join("sub/b"), b"mine").unwrap();

    let (link, target) = (vol.join("b"), secret.join("b"));
    let leaf = SwapAt {
        item: "vol/b",
        swap: Box::new(move || {
            std::fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(&target, &link).unwrap();
        }),
    };
    let got = back_up_tree(&vol, "vol/b", leaf).await;
    assert!(
        !got.as_ref().is_ok_and(|b| b == b"root:$6$hash"),
        "the secret was read through a link swapped in: {got:?}"
    );
    assert_eq!(got.unwrap_err().kind(), ErrorKind::Source);

    std::fs::remove_file(vol.join("b")).unwrap();
    std::fs::write(vol.join("b"), b"mine").unwrap();
    let (sub, secret_dir) = (vol.join("sub"), secret.clone());
    let parent = SwapAt {
        item: "vol/sub/b",
        swap: Box::new(move || {
            std::fs::rename(&sub, sub.with_extension("orig")).unwrap();
            std::os::unix::fs::symlink(&secret_dir, &sub).unwrap();
        }),
    };
    let got = back_up_tree(&vol, "vol/sub/b", parent).await;
    assert!(
        !got.as_ref().is_ok_and(|b| b == b"root:$6$hash"),
        "the secret was read through a directory link swapped in: {got:?}"
    );
    // The directory is read through the descriptor it was listed with: the
    // file as listed, or an error, never what the link leads to.
    match got {
        Ok(bytes) => assert_eq!(bytes, b"mine"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Source),
    }

    // A FIFO swapped in blocked the backup for ever (holding its lease).
    let fifo = vol.join("b");
    let swap = SwapAt {
        item: "vol/b",
        swap: Box::new(move || {
            std::fs::remove_file(&fifo).unwrap();
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.unwrap().success());
        }),
    };
    let got = back_up_tree(&vol, "vol/b", swap).await;
    assert_eq!(got.unwrap_err().kind(), ErrorKind::Source);
}

fn named(name: &str, kind: ItemKind) -> cairn_store::format::manifest::Item {
    cairn_store::format::manifest::Item {
        name: name.into(),
        kind,
        len: 0,
        tree: None,
        chunks: None,
        chunker: None,
        mode: None,
        mtime: None,
        target: (kind == ItemKind::Symlink).then(|| "/victim".to_string()),
        one_chunk: false,
    }
}

fn manifest_of(
    items: Vec<cairn_store::format::manifest::Item>,
) -> cairn_store::format::manifest::Manifest {
    use cairn_store::format::manifest::{Manifest, SourceInfo, SourceKind};
    Manifest {
        version: 1,
        repository: cairn_store::id::RepoId([1; 32]),
        time: "2026-12-01T00:00:00Z".parse().unwrap(),
        host: "node4".into(),
        tags: vec![],
        source: SourceInfo {
            kind: SourceKind::Files,
            command: None,
            exit_status: None,
            url: None,
        },
        paths: vec![],
        started: None,
        parent: None,
        root: None,
        totals: None,
        items,
    }
}

use cairn_store::format::manifest::ItemKind;

/// A signer's manifest of thousands of 4096-byte names below a symlink
/// cost a hash of every prefix of every name to check (seconds per
/// manifest in a release build, minutes in a debug one, at every listing:
/// `snapshots`, `gc`, `restore` all stalled). It must be refused, and an
/// item below a symlink through an implicit directory, past a sibling
/// sorting between them, too.
#[test]
fn items_below_a_non_directory_are_refused_at_any_depth() {
    let deep: String = "a/".repeat(2040);
    let mut items = vec![named("0", ItemKind::Symlink)];
    items.extend((0..4000).map(|i| named(&format!("{deep}{i:08}"), ItemKind::Dir)));
    items.push(named("s", ItemKind::Symlink));
    items.push(named("s-x", ItemKind::Symlink));
    items.push(named("s/a/b", ItemKind::Dir));
    let e = manifest_of(items).validate().unwrap_err();
    assert!(e.contains("\"s/a/b\"") && e.contains("\"s\""), "{e}");

    let fine = manifest_of(vec![
        named("d", ItemKind::Dir),
        named("d-x", ItemKind::Symlink),
        named("d/x", ItemKind::Dir),
        named("d/x/y", ItemKind::Symlink),
    ]);
    assert_eq!(fine.validate(), Ok(()));
}

/// An `append` credential alone (no signing key) stores a pack claiming the
/// id of content a later backup will hold (4000 zero bytes) over garbage,
/// and an index object naming it. Before: the backup deduplicated against
/// the garbage and its restore failed ("its bytes do not hash to its id")
/// with no genuine copy anywhere. Now a writer deduplicates only against
/// its parent's tree and its own blobs, so it stores the content itself.
#[tokio::test]
async fn planted_copies_of_predictable_content_do_not_poison_later_backups() {
    use cairn_store::id::BlobId;

    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    backup_bytes(&backend, "old", random_bytes(5000, 1)).await;
    let data = vec![0u8; 4000];
    let id = BlobId::of(&data);
    let fake = put_pack(&backend, &[(id, random_bytes(data.len(), 9))]).await;
    put_index_where(&backend, &[fake], |_| true).await;

    backup_bytes(&backend, "new", data.clone()).await;
    let s = snapshots(&backend).await.pop().unwrap();
    let got = restore_bytes(&backend, &s).await;
    assert!(got.as_ref().is_ok_and(|b| *b == data), "{got:?}");
    // The same content again, under the same name: deduplicated against
    // the parent, nothing new stored.
    let again = backup_bytes(&backend, "new", data.clone()).await;
    assert_eq!(again.new_blobs, 0, "{again:?}");
}
