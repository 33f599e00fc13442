//! The ceiling an end-to-end run is compared with: the kernels alone
//! (chunk + hash + zstd; cutter with parent + hash; decode + hash) over the
//! real workload's files, on one core, with no I/O, no dedup, no storage.
//! Two cores can do at most twice this; the README reports each end-to-end
//! figure as a share of that.
//!
//! usage: ceiling DAY_DIR PREVIOUS_DAY_DIR
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_store::format::chunker::{Chunker, ChunkingPolicy};
use cairn_store::format::cutter::{Cutter, ParentChunks};
use cairn_store::format::frame::{CompressionParams, FrameBuilder, decode_frame};
use cairn_store::id::BlobId;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Cuts `data` whole with `chunker`; returns (id, len) per chunk.
fn cut(chunker: Chunker, parent: Option<ParentChunks>, data: &[u8]) -> Vec<(BlobId, u32)> {
    let mut cutter = Cutter::new(chunker, parent);
    let (mut lens, mut ids) = (Vec::new(), Vec::new());
    cutter.cut(data, true, &mut lens, &mut ids);
    ids.into_iter().zip(lens).collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let day = PathBuf::from(
        args.next()
            .expect("usage: ceiling DAY_DIR PREVIOUS_DAY_DIR"),
    );
    let previous = PathBuf::from(
        args.next()
            .expect("usage: ceiling DAY_DIR PREVIOUS_DAY_DIR"),
    );
    // One thread: the kernels' cost per byte on one core.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .unwrap();
    let policy = ChunkingPolicy::DEFAULT;
    let level = CompressionParams::DEFAULT.level;
    let frame_len = CompressionParams::DEFAULT.frame_target_len as usize;
    let (mut bytes, mut first_s, mut incr_s, mut restore_s) = (0u64, 0f64, 0f64, 0f64);
    for path in files(&day) {
        let data = std::fs::read(&path).unwrap();
        let relative = path.strip_prefix(&day).unwrap();
        let old = std::fs::read(previous.join(relative)).unwrap_or_default();
        bytes += data.len() as u64;

        // First backup: choose, cut, hash, frame, compress.
        let started = Instant::now();
        let params = policy.choose(&data);
        let chunker = Chunker::new(params).unwrap();
        let chunks = cut(chunker, None, &data);
        let mut frames = Vec::new();
        let (mut frame, mut at) = (FrameBuilder::default(), 0usize);
        for &(id, len) in &chunks {
            frame.push(id, &data[at..at + len as usize]);
            at += len as usize;
            if frame.raw_len() >= frame_len {
                frames.push(frame.take().compress(level).unwrap());
            }
        }
        frames.push(frame.compress(level).unwrap());
        first_s += started.elapsed().as_secs_f64();

        // Incremental: the cutter with yesterday's chunks as parent, hashing.
        let parent = ParentChunks::new(cut(chunker, None, &old));
        let started = Instant::now();
        let again = cut(chunker, Some(parent), &data);
        incr_s += started.elapsed().as_secs_f64();
        assert_eq!(again, chunks, "prediction must equal plain CDC");

        // Restore: decode every frame and hash every chunk.
        let started = Instant::now();
        for f in &frames {
            let raw = decode_frame(f.codec, &f.payload, f.raw_len).unwrap();
            for b in &f.blobs {
                let slice = &raw[b.offset as usize..(b.offset + b.len) as usize];
                assert_eq!(BlobId::of(slice), b.id);
            }
        }
        restore_s += started.elapsed().as_secs_f64();
    }
    let mb = bytes as f64 / 1e6;
    println!(
        "{mb:.1} MB in {} (one core; two cores: twice the MB/s at best)",
        day.display()
    );
    for (what, s) in [
        ("first backup (choose + cut + hash + zstd)", first_s),
        ("incremental (cutter with parent + hash)", incr_s),
        ("restore (decode + hash)", restore_s),
    ] {
        println!(
            "{what:<44} {:>7.1} MB/s one core, {:>7.1} MB/s two",
            mb / s,
            2.0 * mb / s
        );
    }
}
