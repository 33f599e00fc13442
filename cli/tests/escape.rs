//! Issue 13, critical 1, with the real binary: a validly signed snapshot
//! holding `s` → a directory outside the target and an item `s/…` below
//! it. `restore` and `verify` report damage naming both items; nothing is
//! written outside the target; `replicate` does not copy it.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use cairn_store::format::key::SecretKey;
use cairn_store::format::manifest::{Item, ItemKind, MANIFEST_MAGIC, Manifest, SIGNATURE_DOMAIN};
use cairn_store::id::SnapshotId;
use support::*;

/// The manifest of a stored snapshot (its body, unchecked).
/// The manifest of snapshot `id`, as a version-1 manifest listing its items.
fn read_manifest(repo: &Path, id: &str) -> Manifest {
    use cairn_store::backend::{Backend, BackendOptions};
    use cairn_store::repo::Repository;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend =
            Backend::connect(repo.to_str().unwrap(), &BackendOptions::default(), false).unwrap();
        let repo = Repository::open(backend).await.unwrap();
        let trust = repo.trust(&[]);
        let snapshot = repo
            .load_snapshot(SnapshotId::from_hex(id).unwrap(), &trust)
            .await
            .unwrap();
        let repo = repo.load_index().await.unwrap();
        let reader = std::sync::Arc::new(repo.blob_reader());
        let mut m = cairn_store::ops::walk::with_items(reader, &snapshot)
            .await
            .unwrap()
            .manifest;
        m.version = 1;
        m.root = None;
        m.totals = None;
        m.paths = Vec::new();
        m.parent = None;
        m
    })
}

/// Signs `manifest` with `key`, as a compromised signer would (no writer
/// checks), stores it and returns its id.
fn store_forgery(repo: &Path, key: &SecretKey, manifest: &Manifest) -> String {
    let body = serde_json::to_vec(manifest).unwrap();
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(manifest.repository.as_bytes());
    message.extend_from_slice(&body);
    let mut out = MANIFEST_MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(key.public().as_bytes());
    out.extend_from_slice(&key.sign(&message));
    let id = SnapshotId::of(&out).to_hex();
    std::fs::write(repo.join("snapshots").join(&id), out).unwrap();
    id
}

/// Kinds and bytes of everything in `dir` (one level: the victim is flat).
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let bytes = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                format!("{:?}", meta.file_type()).into_bytes()
            };
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_snapshot_with_items_below_a_symlink_is_damage_and_restores_nothing_outside() {
    let f = Fixture::new();
    // Several chunks: a version-1 item names a chunk-list node.
    let mut payload = b"ssh-ed25519 AAAA attacker\n".to_vec();
    payload.extend(random_bytes(3 << 20, 9));
    let summary = f.backup_bytes("payload", &payload, &[]);
    let genuine = str_field(&summary, "snapshot").to_string();
    let key = SecretKey::read_file(&f.key).unwrap();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("known_hosts"), b"mine\n").unwrap();
    let before = listing(&victim);

    let mut manifest = read_manifest(&f.repo, &genuine);
    let payload = manifest.items[0].clone();
    let link = |name: &str, target: &str| Item {
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
    };
    manifest.items = vec![
        link("s", victim.to_str().unwrap()),
        link("s/authorized_keys", "../payload"),
    ];
    let symlinks = store_forgery(&f.repo, &key, &manifest);
    manifest.items[1] = Item {
        name: "s/authorized_keys".into(),
        ..payload
    };
    let file = store_forgery(&f.repo, &key, &manifest);

    for id in [&symlinks, &file] {
        for item in [None, Some("s")] {
            let target = f.path(&format!("target-{}-{}", &id[..8], item.is_some()));
            let mut c = f.cmd("restore");
            c.arg(id).arg("--target").arg(&target).arg("--quiet");
            if let Some(item) = item {
                c.args(["--item", item]);
            }
            run(&mut c)
                .expect_code(3)
                .stderr_has(&["\"s\"", "\"s/authorized_keys\""]);
            assert_eq!(listing(&victim), before, "restore {id} {item:?} escaped");
        }
    }

    let out = run(f.cmd("verify").arg("--read-data")).expect_code(3);
    let said = format!("{}{}", out.stdout_str(), out.stderr);
    for id in [&symlinks, &file] {
        assert!(
            said.contains(&id[..8]),
            "verify does not name {id}:\n{said}"
        );
    }
    assert!(said.contains("\"s/authorized_keys\""), "{said}");

    // A replica never receives the forgeries.
    let replica = f.path("replica");
    ok(cairn_args(["replicate", "--from"])
        .arg(&f.repo)
        .arg("--to")
        .arg(&replica)
        .args(["--trust", &f.public]));
    assert!(replica.join("snapshots").join(&genuine).exists());
    for id in [&symlinks, &file] {
        assert!(
            !replica.join("snapshots").join(id).exists(),
            "replicate copied {id}"
        );
    }
    assert_eq!(listing(&victim), before);
}
