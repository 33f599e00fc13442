//! Regression tests for issue 13, critical 1: a validly signed snapshot whose
//! items lie below a symlink (or a file) item must never make a restore
//! write outside its target.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_store::ErrorKind;
use cairn_store::backend::{Backend, ObjectKey};
use cairn_store::format::manifest::{
    Item, ItemKind, MANIFEST_MAGIC, Manifest, SIGNATURE_DOMAIN, Snapshot,
};
use cairn_store::id::SnapshotId;
use cairn_store::ops::restore::NoRestoreProgress;
use cairn_store::repo::Repository;
use support::*;

/// Signs `manifest` with the test key without the writer's checks (an
/// attacker holding a signing key writes whatever bytes they like).
fn forge(manifest: &Manifest) -> (SnapshotId, Vec<u8>) {
    let body = serde_json::to_vec(manifest).unwrap();
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(manifest.repository.as_bytes());
    message.extend_from_slice(&body);
    let mut out = MANIFEST_MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(key().public().as_bytes());
    out.extend_from_slice(&key().sign(&message));
    (SnapshotId::of(&out), out)
}

fn symlink(name: &str, target: &str) -> Item {
    Item {
        name: name.into(),
        kind: ItemKind::Symlink,
        len: 0,
        tree: None,
        chunks: None,
        chunker: None,
        mode: None,
        mtime: None,
        target: Some(target.into()),
        one_chunk: false,
    }
}

fn payload_bytes() -> Vec<u8> {
    let mut bytes = b"ssh-ed25519 AAAA attacker\n".to_vec();
    bytes.extend(random_bytes(3 << 20, 9));
    bytes
}

/// A repository holding one genuine file item `payload` and a victim
/// directory outside everything, with one file in it.
struct Scene {
    place: Place,
    backend: Backend,
    victim: tempfile::TempDir,
    payload: Item,
    genuine: Snapshot,
}

async fn scene() -> Scene {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    // Several chunks, so that its root is a chunk-list node a version-1
    // item can name (a file of one chunk names the chunk itself in v2).
    backup_bytes(&backend, "payload", payload_bytes()).await;
    let genuine = snapshots(&backend).await.remove(0);
    let payload = genuine.manifest.items[0].clone();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("known_hosts"), b"mine\n").unwrap();
    Scene {
        place,
        backend,
        victim,
        payload,
        genuine,
    }
}

impl Scene {
    /// The genuine manifest with these items instead, signed and stored.
    async fn store_forgery(&self, items: Vec<Item>) -> (SnapshotId, Manifest) {
        let mut manifest = self.genuine.manifest.clone();
        support::as_v1(&mut manifest);
        manifest.items = items;
        let (id, bytes) = forge(&manifest);
        self.backend
            .put_new(&ObjectKey::Snapshot(id), bytes.into())
            .await
            .unwrap();
        (id, manifest)
    }

    fn victim_path(&self) -> String {
        self.victim.path().to_str().unwrap().to_string()
    }

    /// The attacks: an item below a symlink to the victim directory.
    fn attacks(&self) -> Vec<(&'static str, Vec<Item>)> {
        let file_below = Item {
            name: "s/authorized_keys".into(),
            ..self.payload.clone()
        };
        vec![
            (
                "symlink below a symlink",
                vec![
                    symlink("s", &self.victim_path()),
                    symlink("s/authorized_keys", "../payload"),
                ],
            ),
            (
                "file below a symlink",
                vec![symlink("s", &self.victim_path()), file_below],
            ),
        ]
    }
}

/// Every entry under `dir` with its bytes (or link target).
fn listing(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let bytes = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_dir() {
            b"<dir>".to_vec()
        } else {
            std::fs::read(&path).unwrap()
        };
        out.insert(path, bytes);
    }
    out
}

#[tokio::test]
async fn items_below_a_symlink_are_refused_and_nothing_escapes() {
    let scene = scene().await;
    let before = listing(scene.victim.path());
    for (what, items) in scene.attacks() {
        let (id, manifest) = scene.store_forgery(items).await;

        // Restore, handed the manifest past the decoder, refuses it and
        // writes nothing outside the target.
        let repo = open(scene.backend.clone()).await;
        let target = scene
            .place
            .dir
            .as_ref()
            .unwrap()
            .path()
            .join(format!("target-{}", what.replace(' ', "-")));
        let forged = Snapshot {
            id,
            signer: key().public(),
            manifest,
            seen: None,
        };
        for only in [None, Some("s")] {
            let _ = std::fs::remove_dir_all(&target);
            let result = repo
                .restore_to_dir(&forged, &target, only, &NoRestoreProgress)
                .await;
            assert_eq!(listing(scene.victim.path()), before, "{what}: escaped");
            let err = result.expect_err(what);
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what} {only:?}: {err}");
        }

        // Listing refuses it as damaged, naming both items.
        let listed = Repository::open(scene.backend.clone()).await.unwrap();
        let list = listed.load_snapshots(&listed.trust(&[])).await.unwrap();
        let (_, e) = list
            .rejected
            .iter()
            .find(|(r, _)| *r == id)
            .unwrap_or_else(|| panic!("{what}: the forged snapshot was accepted"));
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
        let message = e.to_string();
        assert!(
            message.contains("\"s\"") && message.contains("\"s/authorized_keys\""),
            "{what}: {message}"
        );
    }

    // verify --read-data reports both forgeries and nothing else.
    let report = verify_all(&scene.backend).await;
    assert_eq!(report.damaged_snapshots.len(), 2, "{report:?}");
    assert_eq!(listing(scene.victim.path()), before);
}

#[tokio::test]
async fn a_file_item_cannot_hold_items_either() {
    let scene = scene().await;
    let below = Item {
        name: "payload/x".into(),
        ..scene.payload.clone()
    };
    let (id, _) = scene
        .store_forgery(vec![scene.payload.clone(), below])
        .await;
    let repo = Repository::open(scene.backend.clone()).await.unwrap();
    let e = repo.load_snapshot(id, &repo.trust(&[])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("\"payload/x\""), "{e}");
}

#[tokio::test]
async fn the_writer_refuses_such_a_manifest() {
    let scene = scene().await;
    let mut manifest = scene.genuine.manifest.clone();
    support::as_v1(&mut manifest);
    manifest.items = scene.attacks().remove(0).1;
    let e = manifest.encode_signed(&key()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test]
async fn names_with_dot_dot_are_refused() {
    let scene = scene().await;
    let escape = Item {
        name: "a/../../escaped".into(),
        ..scene.payload.clone()
    };
    let (id, _) = scene.store_forgery(vec![escape]).await;
    let repo = Repository::open(scene.backend.clone()).await.unwrap();
    let e = repo.load_snapshot(id, &repo.trust(&[])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

/// Siblings that sort between an item and its children (`-` and `.` sort
/// before `/`) do not hide the symlink above them.
#[tokio::test]
async fn siblings_sorting_between_do_not_hide_the_ancestor() {
    let scene = scene().await;
    let dir = Item {
        kind: ItemKind::Dir,
        len: 0,
        tree: None,
        chunks: None,
        chunker: None,
        ..scene.payload.clone()
    };
    let items = vec![
        symlink("s", &scene.victim_path()),
        Item {
            name: "s-b".into(),
            ..dir.clone()
        },
        symlink("s.c", "x"),
        Item {
            name: "s/authorized_keys".into(),
            ..scene.payload.clone()
        },
    ];
    let (id, _) = scene.store_forgery(items).await;
    let repo = Repository::open(scene.backend.clone()).await.unwrap();
    let e = repo.load_snapshot(id, &repo.trust(&[])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("\"s/authorized_keys\""), "{e}");
}

/// A genuine tree of directories, files and symlinks still restores.
#[tokio::test]
async fn directories_files_and_symlinks_still_restore() {
    let scene = scene().await;
    let dir = |name: &str, mode: u32| Item {
        name: name.into(),
        kind: ItemKind::Dir,
        len: 0,
        tree: None,
        chunks: None,
        chunker: None,
        mode: Some(mode),
        mtime: Some("2020-01-02T03:04:05Z".parse().unwrap()),
        target: None,
        one_chunk: false,
    };
    let file = |name: &str| Item {
        name: name.into(),
        mode: Some(0o4640),
        ..scene.payload.clone()
    };
    let items = vec![
        dir("a", 0o755),
        dir("a/b", 0o500),
        file("a/b/f"),
        symlink("a/link", "b/f"),
        file("top"),
        file("x/implicit"),
    ];
    let (id, _) = scene.store_forgery(items).await;
    let repo = Repository::open(scene.backend.clone()).await.unwrap();
    let snapshot = repo.load_snapshot(id, &repo.trust(&[])).await.unwrap();
    let repo = repo.load_index().await.unwrap();
    let target = scene.place.dir.as_ref().unwrap().path().join("restored");
    let summary = repo
        .restore_to_dir(&snapshot, &target, None, &NoRestoreProgress)
        .await
        .unwrap();
    assert_eq!(
        (summary.dirs, summary.files, summary.symlinks),
        (3, 3, 1),
        "{summary:?}"
    );
    let payload = payload_bytes();
    assert_eq!(std::fs::read(target.join("a/link")).unwrap(), payload);
    assert_eq!(std::fs::read(target.join("x/implicit")).unwrap(), payload);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::symlink_metadata(target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("a/b"), 0o500);
    assert_eq!(mode("top"), 0o640, "set-uid never restored");
    let mtime = std::fs::metadata(target.join("a/b"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        std::time::SystemTime::from("2020-01-02T03:04:05Z".parse::<jiff::Timestamp>().unwrap())
    );
    assert!(!target.join("a/b/f.cairn-partial").exists());

    // `--item a` restores only what is under `a`.
    let only = scene.place.dir.as_ref().unwrap().path().join("only");
    let summary = repo
        .restore_to_dir(&snapshot, &only, Some("a"), &NoRestoreProgress)
        .await
        .unwrap();
    assert_eq!((summary.dirs, summary.files, summary.symlinks), (2, 1, 1));
    assert!(!only.join("top").exists());
    std::fs::set_permissions(target.join("a/b"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(only.join("a/b"), std::fs::Permissions::from_mode(0o755)).unwrap();
}
