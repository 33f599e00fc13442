//! Backup → restore round trips, byte for byte, on every backend.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
mod support;

use support::*;

/// Random letters: text that barely compresses, so the smallest chunks.
fn random_text(len: usize, seed: u64) -> Vec<u8> {
    random_bytes(len, seed)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_around_the_chunk_limits_round_trip() {
    let policy = cairn_store::format::chunker::ChunkingPolicy::DEFAULT;
    let binary = policy.params(policy.max_avg_len);
    let text = policy.params(policy.min_avg_len);
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        for (params, make) in [
            (binary, random_bytes as fn(usize, u64) -> Vec<u8>),
            (text, random_text as fn(usize, u64) -> Vec<u8>),
        ] {
            let (min, max) = (params.min_len as usize, params.max_len as usize);
            let sizes = [
                0,
                1,
                min - 1,
                min,
                min + 1,
                max - 1,
                max,
                max + 1,
                2 * max,
                3 * max + 7,
                5 << 20,
            ];
            for (i, &size) in sizes.iter().enumerate() {
                let data = make(size, i as u64);
                // A new name each time: the chunk size is chosen afresh.
                let name = format!("data-{}-{size}", params.avg_len);
                let summary = backup_bytes(&backend, &name, data.clone()).await;
                let snapshot = snapshots(&backend)
                    .await
                    .into_iter()
                    .find(|s| s.id == summary.snapshot)
                    .unwrap();
                let item = &snapshot.manifest.items[0];
                assert_eq!(item.len, size as u64);
                if size >= 65536 {
                    // (A few random bytes may hold no NUL and pass for text.)
                    assert_eq!(item.chunker, Some(params), "{kind:?} size {size}");
                }
                let restored = restore_bytes(&backend, &snapshot).await.unwrap();
                assert!(
                    restored == data,
                    "{kind:?}: size {size} differs after restore"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_keeps_its_chunk_size_from_one_backup_to_the_next() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let text = random_text(1 << 20, 1);
    backup_bytes(&backend, "dump", text.clone()).await;
    // Now the same name holds binary data: the policy alone would pick 64 KiB.
    let mut binary = text.clone();
    binary[1000] = 0;
    let second = backup_bytes(&backend, "dump", binary.clone()).await;
    let s = snapshots(&backend)
        .await
        .into_iter()
        .find(|s| s.id == second.snapshot)
        .unwrap();
    assert_eq!(s.manifest.items[0].chunker.unwrap().avg_len, 2048);
    // Only the chunk around the change is new.
    assert!(second.new_blob_bytes < 64 * 1024, "{second:?}");
    assert!(restore_bytes(&backend, &s).await.unwrap() == binary);
    // Under another name the policy decides.
    let third = backup_bytes(&backend, "other", binary).await;
    let s = snapshots(&backend)
        .await
        .into_iter()
        .find(|s| s.id == third.snapshot)
        .unwrap();
    assert_eq!(s.manifest.items[0].chunker.unwrap().avg_len, 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_dumps_and_tarballs_round_trip_and_a_second_backup_stores_nothing() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let dump = json_dump(20_000, 7, None);
        let tarball = std::process::Command::new("tar")
            .args([
                "-cf",
                "-",
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "src",
                "Cargo.toml",
            ])
            .output()
            .unwrap()
            .stdout;
        assert!(tarball.len() > 100_000);
        for (name, data) in [("lms.json", dump), ("volumes.tar", tarball)] {
            let first = backup_bytes(&backend, name, data.clone()).await;
            assert!(first.new_blobs > 0);
            let objects_before = everything(&backend).await.len();
            let second = backup_bytes(&backend, name, data.clone()).await;
            assert_eq!((second.new_blobs, second.packs), (0, 0), "{kind:?} {name}");
            // Only the new manifest was written: no pack, no index object.
            assert_eq!(everything(&backend).await.len(), objects_before + 1);
            for id in [first.snapshot, second.snapshot] {
                let s = snapshots(&backend)
                    .await
                    .into_iter()
                    .find(|s| s.id == id)
                    .unwrap();
                assert!(restore_bytes(&backend, &s).await.unwrap() == data, "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_scattered_changes_to_a_dump_stores_a_fraction_of_it() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let day1 = json_dump(50_000, 9, None);
    let day2 = json_dump(50_000, 9, Some(50)); // 2 % of documents changed
    let first = backup_bytes(&backend, "lms.json", day1).await;
    let second = backup_bytes(&backend, "lms.json", day2.clone()).await;
    assert!(
        second.stored_bytes * 4 < first.stored_bytes,
        "day 2 stored {} bytes, day 1 {}",
        second.stored_bytes,
        first.stored_bytes
    );
    let s = snapshots(&backend)
        .await
        .into_iter()
        .find(|s| s.id == second.snapshot)
        .unwrap();
    assert!(restore_bytes(&backend, &s).await.unwrap() == day2);
}

/// A reader of `len` zero bytes that never holds them in memory.
fn zeros(len: u64) -> Box<dyn std::io::Read + Send> {
    Box::new(std::io::Read::take(std::io::repeat(0), len))
}

/// A writer that only hashes what it is given.
#[derive(Default)]
struct HashingWriter(blake3::Hasher, u64);

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_of_zeros_round_trips_in_one_chunk() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let len = 1u64 << 30;
        let summary = backup_reader(&backend, "zeros", zeros(len)).await;
        assert_eq!(summary.bytes_read, len);
        // One distinct chunk plus a handful of tree nodes.
        assert!(summary.new_blobs < 20, "{summary:?}");
        assert!(summary.stored_bytes < 100_000, "{summary:?}");
        let s = snapshots(&backend)
            .await
            .into_iter()
            .find(|s| s.id == summary.snapshot)
            .unwrap();
        let repo = open(backend.clone()).await;
        let reader = repo.blob_reader();
        let (out, n) = repo
            .restore_item(
                &reader,
                &s,
                &s.manifest.items[0],
                HashingWriter::default(),
                &cairn_store::ops::restore::NoRestoreProgress,
            )
            .await
            .unwrap();
        assert_eq!((n, out.1), (len, len));
        let mut expected = blake3::Hasher::new();
        std::io::copy(&mut zeros(len), &mut expected).unwrap();
        assert_eq!(out.0.finalize(), expected.finalize());
    }
}

/// A reader that fails unless `after` has been read to its end, and marks
/// `done` once it is itself read to the end.
struct Ordered {
    data: std::io::Cursor<Vec<u8>>,
    after: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::io::Read for Ordered {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.after.as_ref().is_some_and(|a| !a.load(SeqCst)) {
            return Err(std::io::Error::other("read before the entry given first"));
        }
        let n = self.data.read(buf)?;
        if n == 0 {
            self.done.store(true, SeqCst);
        }
        Ok(n)
    }
}

/// A prepared source's contents are read in the order given, not in name
/// order: a producer that writes its streams one after another (CouchDB's
/// documents, then the attachments they name) never waits for the backup
/// to take a stream it has not begun. The tree still lists names in order,
/// and the next backup still deduplicates against each name's parent entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_source_is_stored_in_the_order_given() {
    use cairn_store::format::manifest::{SourceInfo, SourceKind};
    use cairn_store::ops::source::{Entry, Prepared};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let docs = json_dump(5_000, 3, None);
    let atts = random_bytes(300_000, 4);
    let source = || {
        let docs_done = Arc::new(AtomicBool::new(false));
        let reader = |data: &Vec<u8>, after: Option<&Arc<AtomicBool>>, done: &Arc<AtomicBool>| {
            Box::new(Ordered {
                data: std::io::Cursor::new(data.clone()),
                after: after.cloned(),
                done: Arc::clone(done),
            }) as Box<dyn std::io::Read + Send>
        };
        let entries = vec![
            Entry::reader("db/zdocs".into(), None, reader(&docs, None, &docs_done)),
            Entry::reader(
                "db/atts".into(),
                None,
                reader(&atts, Some(&docs_done), &Arc::new(AtomicBool::new(false))),
            ),
        ];
        let info = SourceInfo {
            kind: SourceKind::Stdin,
            command: None,
            exit_status: None,
            url: None,
        };
        cairn_store::ops::source::Source::Prepared(Prepared::new(info, entries))
    };
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let session = writer(backend.clone()).await;
        summaries.push(back_up(&session, source()).await.unwrap());
        session.finish().await.unwrap();
    }
    let [first, second] = &summaries[..] else {
        unreachable!()
    };
    assert_eq!(second.parent, Some(first.snapshot));
    assert_eq!(second.new_blobs, 0, "the second backup deduplicates");
    let list = snapshots(&backend).await;
    for id in [first.snapshot, second.snapshot] {
        let s = list.iter().find(|s| s.id == id).unwrap();
        let names: Vec<&str> = s.manifest.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["db", "db/atts", "db/zdocs"]);
        assert!(restore_item_bytes(&backend, s, "db/zdocs").await.unwrap() == docs);
        assert!(restore_item_bytes(&backend, s, "db/atts").await.unwrap() == atts);
    }
}

/// A large file whose chunks repeat (one chunk at many offsets; chunks
/// adjacent in a frame but not in the file) restores byte for byte into a
/// directory, where it is written at offsets, frame by frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_of_repeated_chunks_restores_into_a_directory() {
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let (a, b) = (random_bytes(300_000, 1), random_text(200_000, 2));
    let mut data = Vec::new();
    for i in 0..40 {
        data.extend_from_slice(if i % 3 == 0 { &b } else { &a });
    }
    data.extend(random_bytes(123_457, 3));
    let summary = backup_bytes(&backend, "big.bin", data.clone()).await;
    assert!(summary.chunks > summary.new_blobs, "chunks repeat");
    let snapshot = snapshots(&backend)
        .await
        .into_iter()
        .find(|s| s.id == summary.snapshot)
        .unwrap();
    let restored = restore_dir_item(&backend, &snapshot, "big.bin")
        .await
        .unwrap();
    assert_eq!(restored.len(), data.len());
    assert!(restored == data);
}

/// Hard links to large files (written at offsets) are restored as links:
/// one file, several names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_to_large_files_stay_links() {
    use std::os::unix::fs::MetadataExt;
    let place = Place::new(Kind::Local);
    init(&place).await;
    let backend = place.backend();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    for (name, seed) in [("a.bin", 1), ("c.bin", 2), ("m.bin", 3)] {
        std::fs::write(root.join(name), random_bytes(3 << 20, seed)).unwrap();
    }
    std::fs::hard_link(root.join("a.bin"), root.join("b.bin")).unwrap();
    std::fs::hard_link(root.join("c.bin"), root.join("z.bin")).unwrap();
    let id = back_up_paths(&backend, vec![root.clone()]).await;
    let target = dir.path().join("restored");
    let summary = restore_into(&backend, id, &target).await.unwrap();
    assert_eq!((summary.files, summary.hard_links), (3, 2));
    let out = target.join("vol");
    let ino = |n: &str| std::fs::metadata(out.join(n)).unwrap().ino();
    assert_eq!(ino("a.bin"), ino("b.bin"));
    assert_eq!(ino("c.bin"), ino("z.bin"));
    assert_ne!(ino("a.bin"), ino("c.bin"));
    for name in ["a.bin", "b.bin", "c.bin", "m.bin", "z.bin"] {
        let restored = std::fs::read(out.join(name)).unwrap();
        assert!(
            restored == std::fs::read(root.join(name)).unwrap(),
            "{name}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(left.len(), 5);
}
