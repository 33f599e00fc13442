//! Backup → restore round trips, byte for byte, on every backend.
#![allow(clippy::unwrap_used)]
mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_around_the_chunk_limits_round_trip() {
    for kind in kinds() {
        let place = Place::new(kind);
        init(&place).await;
        let backend = place.backend();
        let p = cairn_store::chunker::ChunkerParams::DEFAULT;
        let (min, max) = (p.min_len as usize, p.max_len as usize);
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
            let data = random_bytes(size, i as u64);
            let summary = backup_bytes(&backend, "data.bin", data.clone()).await;
            let snapshot = snapshots(&backend)
                .await
                .into_iter()
                .find(|s| s.id == summary.snapshot)
                .unwrap();
            assert_eq!(snapshot.manifest.items[0].len, size as u64);
            let restored = restore_bytes(&backend, &snapshot).await.unwrap();
            assert!(
                restored == data,
                "{kind:?}: size {size} differs after restore"
            );
        }
    }
}
