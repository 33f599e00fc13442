//! Format v2 under attack: what a local user, a compromised signer or an
//! `append` credential can do to trees, and what Cairn guarantees (each
//! test was first written against the code it fixes, and seen failing).
#![allow(clippy::unwrap_used)]
mod support;
use cairn_store::backend::{ObjectDir, ObjectKey};
use cairn_store::format::manifest::Snapshot;
use cairn_store::ops::backup::NoProgress;
use cairn_store::ops::restore::{NoRestoreProgress, RestoreOptions};
use cairn_store::ops::source::Source;
use cairn_store::repo::Repository;
use std::sync::Arc;
use support::*;

async fn raw_snapshots(backend: &cairn_store::backend::Backend) -> Vec<Snapshot> {
    let repo = Repository::open(backend.clone()).await.unwrap();
    let trust = repo.trust(&[]);
    repo.load_snapshots(&trust).await.unwrap().snapshots
}

async fn raw_snapshot(
    backend: &cairn_store::backend::Backend,
    id: cairn_store::id::SnapshotId,
) -> Snapshot {
    raw_snapshots(backend)
        .await
        .into_iter()
        .find(|x| x.id == id)
        .unwrap()
}

async fn backup_paths(
    place: &Place,
    p: &std::path::Path,
) -> cairn_store::Result<cairn_store::ops::backup::BackupSummary> {
    let session = writer(place.backend()).await;
    let r = back_up(&session, Source::Paths(vec![p.to_path_buf()])).await;
    session.finish().await.unwrap();
    r
}

/// The newest snapshot, and its file `name` as a version-1 item (the item
/// list a v1 manifest carries).
async fn newest_as_v1_item(
    place: &Place,
    name: &str,
) -> (Snapshot, cairn_store::format::manifest::Item) {
    use cairn_store::format::manifest::{Item, ItemKind};
    let genuine = raw_snapshots(&place.backend()).await.pop().unwrap();
    let repo = open(place.backend()).await;
    let tree =
        cairn_store::ops::walk::SnapshotTree::open(Arc::new(repo.blob_reader()), &genuine).unwrap();
    let e = tree.lookup(name.as_bytes()).await.unwrap().unwrap();
    let cairn_store::format::dir::Node::File {
        root,
        chunks,
        chunker,
    } = e.node
    else {
        panic!()
    };
    let item = Item {
        name: name.into(),
        kind: ItemKind::File,
        len: e.size,
        tree: Some(root),
        chunks: Some(chunks),
        chunker: Some(chunker),
        mode: None,
        mtime: None,
        target: None,
        one_chunk: false,
    };
    (genuine, item)
}

/// A local user nests 1100 directories: the backup stores the nest down to
/// the depth readers accept, and everything else restores.
#[tokio::test]
async fn a_deep_nest_of_directories_does_not_make_a_snapshot_unrestorable() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("zz-important"), b"precious").unwrap();
    let d = vol.join("home");
    std::fs::create_dir(&d).unwrap();
    let fd0 =
        rustix::fs::open(&d, rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    let mut cur = fd0;
    for _ in 0..1100 {
        rustix::fs::mkdirat(&cur, "d", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        cur = rustix::fs::openat(
            &cur,
            "d",
            rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
    }
    drop(cur);
    let place = Place::new(Kind::Local);
    init(&place).await;
    let s = backup_paths(&place, &vol).await;
    assert!(s.is_ok(), "{s:?}");
    let snap = raw_snapshots(&place.backend()).await.pop().unwrap();
    let repo = open(place.backend()).await;
    let target = tmp.path().join("restore");
    repo.restore_to_dir(&snap, &target, None, &NoRestoreProgress)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(target.join("vol/zz-important")).unwrap(),
        b"precious"
    );
    assert!(verify_all(&place.backend()).await.is_clean());
}

/// Damage to an index object: a new backup stores again what no index
/// names, unchanged files included (their content is not taken on trust).
#[tokio::test]
async fn an_unchanged_file_whose_content_lost_its_index_is_stored_again() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), random_bytes(200_000, 1)).unwrap();
    std::fs::write(vol.join("g"), b"one").unwrap();
    let place = Place::new(Kind::Local);
    init(&place).await;
    backup_paths(&place, &vol).await.unwrap();
    let backend = place.backend();
    let first_index = backend.list(ObjectDir::Index).await.unwrap();
    assert_eq!(first_index.len(), 1);
    std::fs::write(vol.join("g"), b"two").unwrap();
    backup_paths(&place, &vol).await.unwrap();
    // The index object of the first backup is damaged (bit rot, a hostile store).
    let key = first_index[0].key.clone();
    let path = place.path().join("index").join(match &key {
        ObjectKey::Index(i) => i.to_hex(),
        _ => unreachable!(),
    });
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&path, b).unwrap();
    // The documented repair: back up again.
    let s3 = backup_paths(&place, &vol).await.unwrap();
    let snap = raw_snapshots(&place.backend())
        .await
        .into_iter()
        .find(|s| s.id == s3.snapshot)
        .unwrap();
    let repo = open(place.backend()).await;
    let target = tmp.path().join("restore");
    repo.restore_to_dir(&snap, &target, None, &NoRestoreProgress)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(target.join("vol/f")).unwrap(),
        random_bytes(200_000, 1)
    );
}

/// An `append` credential plants garbage under the ids of the directory
/// nodes a version-1 parent's items imply: the first version-2 backup
/// stores the real nodes anyway.
#[tokio::test]
async fn a_version_1_parents_built_nodes_vouch_for_nothing() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let data = random_bytes(50_000, 3);
    backup_bytes(&place.backend(), "other", data.clone()).await;
    let (genuine, mut item) = newest_as_v1_item(&place, "other").await;
    // The same data as an old version-1 snapshot (the repository before v2).
    let mut m = genuine.manifest.clone();
    as_v1(&mut m);
    m.time = genuine.manifest.time - jiff::SignedDuration::from_hours(1);
    item.name = "dump".into();
    m.items = vec![item];
    let (v1id, bytes) = m.encode_signed(&key()).unwrap();
    raw_put(&place.backend(), &ObjectKey::Snapshot(v1id), bytes).await;
    // Attacker (append role): computes the built tree of the v1 items, plants garbage under its ids.
    let (built_root, built) = cairn_store::ops::walk::tree_of_items(&m.items).unwrap();
    let blobs: Vec<_> = built.keys().map(|id| (*id, vec![0x41u8; 40])).collect();
    let pack = put_pack(&place.backend(), &blobs).await;
    put_index_where(&place.backend(), &[pack], |_| true).await;
    // The owner's first v2 backup of the same stream, parent = the v1 snapshot.
    let s = backup_bytes(&place.backend(), "dump", data.clone()).await;
    let snap = raw_snapshot(&place.backend(), s.snapshot).await;
    assert_eq!(snap.manifest.root, Some(built_root));
    let repo = open(place.backend()).await;
    let tmp = tempfile::tempdir().unwrap();
    repo.restore_to_dir(&snap, &tmp.path().join("t"), None, &NoRestoreProgress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(tmp.path().join("t/dump")).unwrap(), data);
}

/// A local user plants a file of the size and mtime of a set-user-id root
/// program in an `--overwrite` target: the restore replaces it instead of
/// giving it to root with the set-user-id bit.
#[tokio::test]
async fn overwrite_never_blesses_a_planted_file_as_a_set_user_id_program() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("shared")).unwrap();
    let tool = vol.join("shared/tool");
    std::fs::write(&tool, b"GENUINE-TOOL").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let place = Place::new(Kind::Local);
    init(&place).await;
    backup_paths(&place, &vol).await.unwrap();
    let snap = raw_snapshots(&place.backend()).await.pop().unwrap();
    let mtime = std::fs::metadata(&tool).unwrap().modified().unwrap();
    // The target exists; shared/ is writable by user 65534, who plants a same-size file.
    let target = tmp.path().join("target");
    std::fs::create_dir_all(target.join("vol/shared")).unwrap();
    std::fs::set_permissions(
        target.join("vol/shared"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    let evil = target.join("vol/shared/tool");
    std::fs::write(&evil, b"EVIL-PAYLOAD").unwrap();
    std::os::unix::fs::chown(&evil, Some(65534), Some(65534)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&evil)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let repo = open(place.backend()).await;
    let opts = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    let r = repo
        .restore_to_dir_with(&snap, &target, None, &opts, &NoRestoreProgress)
        .await
        .unwrap();
    let m = std::fs::metadata(&evil).unwrap();
    assert_eq!(r.unchanged, 0);
    assert_eq!(std::fs::read(&evil).unwrap(), b"GENUINE-TOOL");
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o4755));
}

/// A local user's file with 1.3 MiB of `user.*` attributes (tmpfs, XFS and
/// btrfs allow it) does not fail the backup: the largest are dropped.
#[tokio::test]
async fn huge_extended_attributes_do_not_fail_the_backup() {
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("a-others-data"), b"precious").unwrap();
    let f = vol.join("mine");
    std::fs::write(&f, b"x").unwrap();
    for i in 0..20 {
        rustix::fs::setxattr(
            &f,
            format!("user.k{i:02}").as_str(),
            &vec![7u8; 65536],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let place = Place::new(Kind::Local);
    init(&place).await;
    backup_paths(&place, &vol).await.unwrap();
    let snap = raw_snapshots(&place.backend()).await.pop().unwrap();
    let repo = open(place.backend()).await;
    let tree =
        cairn_store::ops::walk::SnapshotTree::open(Arc::new(repo.blob_reader()), &snap).unwrap();
    let mine = tree.lookup(b"vol/mine").await.unwrap().unwrap();
    let kept: usize = mine.xattrs.iter().map(|x| x.value.len()).sum();
    assert!(
        kept > 0 && kept <= 512 << 10,
        "{kept} bytes of attributes kept"
    );
    assert!(tree.lookup(b"vol/a-others-data").await.unwrap().is_some());
}

struct OnItem {
    at: &'static str,
    act: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}
impl cairn_store::ops::backup::Progress for OnItem {
    fn item(&self, name: &str, _len: Option<u64>) {
        if name.ends_with(self.at) {
            if let Some(f) = self.act.lock().unwrap().take() {
                f()
            }
        }
    }
}

/// A pair of hard links replaced during the backup by a new pair of the
/// same size on the same inode number: the new pair is read, not given the
/// old pair's content.
#[tokio::test]
async fn a_hard_link_group_reused_by_another_file_is_read_again() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("m")).unwrap();
    std::fs::write(vol.join("a"), b"OLD-CONTENT-0001").unwrap();
    std::fs::hard_link(vol.join("a"), vol.join("m/x")).unwrap();
    std::fs::write(vol.join("b"), b"whatever").unwrap();
    let old_ino = std::fs::metadata(vol.join("a")).unwrap().ino();
    let v = vol.clone();
    let progress = OnItem {
        at: "vol/b",
        act: std::sync::Mutex::new(Some(Box::new(move || {
            // A normal workload: the pair is replaced by a new pair of the same size.
            std::fs::remove_file(v.join("a")).unwrap();
            std::fs::remove_file(v.join("m/x")).unwrap();
            let mut keep = Vec::new();
            for i in 0..2000 {
                let p = v.join(format!("m/tmp{i}"));
                std::fs::write(&p, b"NEW-CONTENT-0002").unwrap();
                if std::fs::metadata(&p).unwrap().ino() == old_ino {
                    std::fs::rename(&p, v.join("m/x")).unwrap();
                    std::fs::hard_link(v.join("m/x"), v.join("m/y")).unwrap();
                    break;
                }
                keep.push(p);
            }
            for p in keep {
                std::fs::remove_file(p).unwrap();
            }
        }))),
    };
    let place = Place::new(Kind::Local);
    init(&place).await;
    let session = writer(place.backend()).await;
    session
        .backup(
            Source::Paths(vec![vol.clone()]),
            &key(),
            &options(),
            Arc::new(progress),
        )
        .await
        .unwrap();
    session.finish().await.unwrap();
    let snap = raw_snapshots(&place.backend()).await.pop().unwrap();
    let repo = open(place.backend()).await;
    let t = tmp.path().join("r1");
    repo.restore_to_dir(&snap, &t, None, &NoRestoreProgress)
        .await
        .unwrap();
    let got = std::fs::read(t.join("vol/m/x")).unwrap();
    assert_eq!(got, b"NEW-CONTENT-0002");
    // The next backup, which compares with this one, keeps it right.
    backup_paths(&place, &vol).await.unwrap();
    let snap = raw_snapshots(&place.backend()).await.pop().unwrap();
    let t = tmp.path().join("r2");
    let repo = open(place.backend()).await;
    repo.restore_to_dir(&snap, &t, None, &NoRestoreProgress)
        .await
        .unwrap();
    let got2 = std::fs::read(t.join("vol/m/x")).unwrap();
    assert_eq!(got2, b"NEW-CONTENT-0002");
}

/// A compromised signer (node4) signs a copy of node1's tree dated now,
/// host "test", with one file's content swapped: node1's next backups never
/// take it as their parent, so node1 never signs the forged content.
#[tokio::test]
async fn another_signers_snapshot_is_never_the_parent() {
    use cairn_store::format::dir::{Node, build_dir};
    let node4 = cairn_store::format::key::SecretKey::from_seed(&[4; 32]);
    let place = Place::new(Kind::Local);
    cairn_store::repo::Repository::init(place.backend(), vec![key().public(), node4.public()])
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(
        vol.join("authorized_keys"),
        b"ssh-ed25519 GENUINE-ADMIN-KEY",
    )
    .unwrap();
    backup_paths(&place, &vol).await.unwrap();
    let genuine = raw_snapshots(&place.backend()).await.pop().unwrap();
    // node4: store the evil content (same length) with its own append token.
    let session = writer(place.backend()).await;
    let evil = session
        .backup(
            stream("x", b"ssh-ed25519 ATTACKER-KEY-0000".to_vec()),
            &node4,
            &options(),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    session.finish().await.unwrap();
    let repo = open(place.backend()).await;
    let evil_snap = raw_snapshots(&place.backend())
        .await
        .into_iter()
        .find(|s| s.id == evil.snapshot)
        .unwrap();
    let et = cairn_store::ops::walk::SnapshotTree::open(Arc::new(repo.blob_reader()), &evil_snap)
        .unwrap();
    let evil_entry = et.lookup(b"x").await.unwrap().unwrap();
    let gt =
        cairn_store::ops::walk::SnapshotTree::open(Arc::new(repo.blob_reader()), &genuine).unwrap();
    let mut vol_entry = gt.lookup(b"vol").await.unwrap().unwrap();
    let Node::Dir { tree: vol_tree } = vol_entry.node else {
        panic!()
    };
    let mut c = gt.dir(vol_tree).await.unwrap();
    let mut entries = Vec::new();
    while let Some(mut e) = c.next().await.unwrap() {
        if e.name == b"authorized_keys" {
            e.node = evil_entry.node.clone();
        }
        entries.push(e);
    }
    let (vol_root, mut nodes) = build_dir(&entries).unwrap();
    vol_entry.node = Node::Dir { tree: vol_root };
    let (root, more) = build_dir(&[vol_entry]).unwrap();
    nodes.extend(more);
    let blobs: Vec<_> = nodes.into_iter().map(|n| (n.id, n.bytes)).collect();
    let pack = put_pack(&place.backend(), &blobs).await;
    put_index_where(&place.backend(), &[pack], |_| true).await;
    let mut m = genuine.manifest.clone();
    m.root = Some(root);
    m.time = jiff::Timestamp::now();
    let (forged, bytes) = m.encode_signed(&node4).unwrap();
    raw_put(&place.backend(), &ObjectKey::Snapshot(forged), bytes).await;
    // node1's next backup, then the admin forgets node4's forgery, then another backup.
    let s1 = backup_paths(&place, &vol).await.unwrap();
    place
        .backend()
        .delete(&ObjectKey::Snapshot(forged))
        .await
        .unwrap();
    let s2 = backup_paths(&place, &vol).await.unwrap();
    for id in [s1.snapshot, s2.snapshot] {
        let snap = raw_snapshots(&place.backend())
            .await
            .into_iter()
            .find(|s| s.id == id)
            .unwrap();
        let t = tmp.path().join(id.to_hex());
        open(place.backend())
            .await
            .restore_to_dir(&snap, &t, None, &NoRestoreProgress)
            .await
            .unwrap();
        let got = std::fs::read(t.join("vol/authorized_keys")).unwrap();
        assert_eq!(snap.signer, key().public());
        assert_eq!(got, b"ssh-ed25519 GENUINE-ADMIN-KEY");
    }
}

/// Index objects are written as packs are stored: a large backup holds
/// little in memory, and what it wrote restores and verifies clean.
#[tokio::test]
async fn index_objects_written_during_a_backup_index_everything() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let data = random_bytes(6 << 20, 11);
    let session = writer(place.backend()).await;
    let options = cairn_store::ops::backup::BackupOptions {
        index_every_blobs: 1,
        ..options()
    };
    let s = back_up_with(&session, stream("big", data.clone()), &options)
        .await
        .unwrap();
    session.finish().await.unwrap();
    assert!(s.packs >= 2, "{s:?}");
    let indexes = place.backend().list(ObjectDir::Index).await.unwrap();
    assert_eq!(
        indexes.len() as u64,
        s.packs,
        "one index object per pack here"
    );
    let snap = raw_snapshot(&place.backend(), s.snapshot).await;
    assert_eq!(restore_bytes(&place.backend(), &snap).await.unwrap(), data);
    assert!(verify_all(&place.backend()).await.is_clean());
}

/// A signer (compromised, or buggy) says a file is shorter or longer than
/// the chunks its tree lists: the restore fails naming the tree (the root's
/// length is checked against the item's before anything is written), and
/// never writes past the length it was told.
#[tokio::test]
async fn a_file_whose_tree_disagrees_with_its_length_is_refused() {
    use cairn_store::error::ErrorKind;
    let place = Place::new(Kind::Local);
    init(&place).await;
    // Large enough to be written at offsets.
    let data = random_bytes(3 << 20, 5);
    backup_bytes(&place.backend(), "dump", data.clone()).await;
    let (genuine, item) = newest_as_v1_item(&place, "dump").await;
    let root = item.tree.unwrap();
    for (n, len) in [(1, item.len - 5000), (2, item.len + 5000)] {
        let mut m = genuine.manifest.clone();
        as_v1(&mut m);
        m.time = genuine.manifest.time + jiff::SignedDuration::from_secs(n);
        m.items = vec![cairn_store::format::manifest::Item {
            len,
            ..item.clone()
        }];
        let (id, bytes) = m.encode_signed(&key()).unwrap();
        raw_put(&place.backend(), &ObjectKey::Snapshot(id), bytes).await;
        let snap = raw_snapshot(&place.backend(), id).await;
        let repo = open(place.backend()).await;
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let err = repo
            .restore_to_dir(&snap, &target, None, &NoRestoreProgress)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains(&root.to_string()), "{err}");
        let left = std::fs::metadata(target.join("dump")).map_or(0, |m| m.len());
        assert!(left <= len, "{left} bytes written, the file is {len}");
    }
}
