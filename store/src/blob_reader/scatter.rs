//! Reading many blobs straight to where they go in an output, frame by
//! frame: each frame a call needs is fetched and decoded once, however many
//! of its blobs the call wants and wherever they go, its blobs are
//! hash-checked in the task that decoded it, and the frame goes to the sink
//! with its runs: blobs adjacent both in the frame and in the output, each
//! run with its offset in the output. Frames are served in parallel and in
//! no particular order, so the sink writes at offsets; they start in the
//! order of where they first write, so the output fills roughly front to
//! back. Nothing is copied between decoding and the sink (restore hands the
//! runs to one thread that gathers them into whole segments of the file,
//! [`crate::ops::gather`]: writers of one file would only queue on its
//! lock).
//!
//! A copy that fails a check is remembered as bad and its blobs are read
//! again through [`BlobReader::read_blobs`], which tries the other copies
//! and names each one when all fail.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{
    BlobReader, FailedCopy, FrameKey, RangeRead, coalesce_gap, next_copy, range_reads, read_then,
    stored_frame,
};
use crate::backend::ObjectKey;
use crate::error::{Error, ErrorKind, Result};
use crate::format::frame::{Codec, decode_frame};
use crate::format::index::{BlobLocation, Index};
use crate::id::BlobId;

/// Where one blob's bytes go in an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The blob.
    pub id: BlobId,
    /// Its offset in the output.
    pub at: u64,
    /// Its length, as the tree that lists it says.
    pub len: u64,
}

/// Checked bytes for the output: runs of `bytes`, each going to its offset.
#[derive(Debug)]
pub struct Tiles {
    /// A decoded frame (or one blob).
    pub bytes: Bytes,
    /// (offset in the output, range of `bytes`).
    pub runs: Vec<(u64, std::ops::Range<usize>)>,
}

/// Takes checked bytes for the output (from any thread, in any order).
pub type Sink = Arc<dyn Fn(Tiles) -> Result<()> + Send + Sync>;

/// A placement and the copy it is served from.
type Wanted = (Placement, BlobLocation);

/// What serving one range read gave: bytes written, and the placements
/// whose copy failed (with why).
#[derive(Default)]
struct Served {
    written: u64,
    failed: Vec<(Placement, FailedCopy)>,
}

impl BlobReader {
    /// Reads the blobs of `placements`, each checked against its id and its
    /// length, and hands their bytes to `sink`; returns the bytes handed.
    /// Errors as [`Self::read_blobs`]'s, and the sink's.
    pub async fn scatter(&self, placements: &[Placement], sink: &Sink) -> Result<u64> {
        let index = Arc::clone(self.repo.index());
        let mut by_frame: std::collections::HashMap<FrameKey, Vec<Wanted>> =
            std::collections::HashMap::new();
        // No usable copy, or one whose length is not the tree's: read the
        // slow way, which reports it.
        let mut again: Vec<Placement> = Vec::new();
        {
            let bad = self.bad();
            for p in placements {
                match next_copy(&index, &bad, &p.id, &[]) {
                    Some(loc) if u64::from(loc.len) == p.len => {
                        by_frame
                            .entry((loc.pack, loc.frame))
                            .or_default()
                            .push((*p, loc));
                    }
                    _ => again.push(*p),
                }
            }
        }
        let mut keys: Vec<FrameKey> = by_frame.keys().copied().collect();
        keys.sort_unstable();
        let backend = self.repo.backend().clone();
        let mut tasks: Vec<(RangeRead, Vec<Vec<Wanted>>)> =
            range_reads(&index, &keys, coalesce_gap(&backend))
                .into_iter()
                .map(|read| {
                    let wanted = read
                        .frames
                        .iter()
                        .map(|&f| by_frame.remove(&(read.pack, f)).unwrap_or_default())
                        .collect();
                    (read, wanted)
                })
                .collect();
        // Served in the order of where they first write, so that the
        // output fills roughly front to back and a writer gathering it
        // into whole segments waits on few at once.
        tasks.sort_by_cached_key(|(_, wanted)| {
            wanted
                .iter()
                .flatten()
                .map(|(p, _)| p.at)
                .min()
                .unwrap_or(u64::MAX)
        });
        let served: Vec<Served> = futures::stream::iter(tasks)
            .map(|(read, wanted)| {
                let backend = backend.clone();
                let index = Arc::clone(&index);
                let sink = Arc::clone(sink);
                let key = ObjectKey::Pack(index.pack(read.pack).id);
                let range = read.start..read.end;
                read_then(backend, Arc::clone(&self.open), key, range, move |bytes| {
                    serve_read(&index, &read, bytes, wanted, &sink)
                })
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        let mut written = 0;
        {
            let mut bad = self.bad();
            for s in served {
                written += s.written;
                for (p, failure) in s.failed {
                    bad.remember(p.id, &failure);
                    again.push(p);
                }
            }
        }
        // A batch at a time, each chunk copied out of its frame: a store
        // whose first copies all fail (a forged pack) costs time, not a
        // window's worth of frames in memory.
        for batch in batches_by_len(&again, FALLBACK_BATCH_LEN) {
            let ids: Vec<BlobId> = batch.iter().map(|p| p.id).collect();
            let blobs = self.read_blobs(&ids).await?;
            let mut tiles = Vec::with_capacity(batch.len());
            for (p, bytes) in batch.iter().zip(blobs) {
                if bytes.len() as u64 != p.len {
                    return Err(Error::corrupt(
                        format!("chunk {}", p.id),
                        format!("is {} bytes, the tree says {}", bytes.len(), p.len),
                    ));
                }
                let len = bytes.len();
                tiles.push(Tiles {
                    bytes: Bytes::copy_from_slice(&bytes),
                    runs: vec![(p.at, 0..len)],
                });
                written += p.len;
            }
            // The sink may block (a full queue): not on a tokio thread.
            let sink = Arc::clone(sink);
            crate::cpu::run(move || tiles.into_iter().try_for_each(|t| sink(t))).await?;
        }
        Ok(written)
    }
}

/// Chunk bytes re-read at once after their first copies failed.
const FALLBACK_BATCH_LEN: u64 = 8 << 20;

/// Splits `placements` into runs of at most `max` bytes (at least one each).
fn batches_by_len(placements: &[Placement], max: u64) -> Vec<&[Placement]> {
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0u64);
    for (i, p) in placements.iter().enumerate() {
        if i > start && len.saturating_add(p.len) > max {
            out.push(&placements[start..i]);
            (start, len) = (i, 0);
        }
        len = len.saturating_add(p.len);
    }
    if start < placements.len() {
        out.push(&placements[start..]);
    }
    out
}

/// A frame goes to the sink whole unless it is larger than this and mostly
/// unwanted: then its runs are copied out, so that queued writes hold
/// about what they write.
const COMPACT_OVER: usize = 1 << 20;

/// Every placement of a range read that could not be read, failed alike.
fn read_failed(read: &RangeRead, wanted: Vec<Vec<Wanted>>, failure: &FailedCopy) -> Served {
    let mut served = Served::default();
    for (&frame, wanted) in read.frames.iter().zip(wanted) {
        for (p, loc) in wanted {
            let mut f = failure.clone();
            f.loc = BlobLocation { frame, ..loc };
            served.failed.push((p, f));
        }
    }
    served
}

/// What one range read gave: its frames served, every placement failed
/// alike when the copy could not be read, or an error that stops all.
fn serve_read(
    index: &Index,
    read: &RangeRead,
    bytes: Result<Bytes>,
    wanted: Vec<Vec<Wanted>>,
    sink: &Sink,
) -> Result<Served> {
    match bytes {
        Ok(bytes) => serve_range(index, read, &bytes, wanted, sink),
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            Ok(read_failed(read, wanted, &FailedCopy::of_read(e)))
        }
        Err(e) => Err(e),
    }
}

/// Decodes each frame of one range read, checks the blobs wanted from it
/// and hands them to the sink in runs; an error only from the sink.
fn serve_range(
    index: &Index,
    read: &RangeRead,
    bytes: &Bytes,
    wanted: Vec<Vec<Wanted>>,
    sink: &Sink,
) -> Result<Served> {
    let pack = index.pack(read.pack);
    let mut served = Served::default();
    for (&frame, mut wanted) in read.frames.iter().zip(wanted) {
        let f = pack.frames[frame as usize];
        let decoded = stored_frame(&f, read, bytes).and_then(|(start, stored)| match f.codec {
            // Raw: the range read's own bytes, not a copy.
            Codec::Raw if stored.len() == f.raw_len as usize => {
                Ok(bytes.slice(start..start + stored.len()))
            }
            _ => decode_frame(f.codec, stored, f.raw_len).map(Bytes::from),
        });
        let raw = match decoded {
            Ok(raw) => raw,
            Err(detail) => {
                for (p, loc) in wanted {
                    let failure = FailedCopy::frame(pack.id, loc, detail.clone());
                    served.failed.push((p, failure));
                }
                continue;
            }
        };
        // In frame order, so that runs adjacent in both are found.
        wanted.sort_unstable_by_key(|(p, loc)| (loc.offset, p.at));
        let (written, failed) = serve_frame(raw, &wanted, sink)?;
        served.written += written;
        for (i, detail) in failed {
            let (p, loc) = wanted[i];
            served
                .failed
                .push((p, FailedCopy::blob(pack.id, p.id, loc, detail)));
        }
    }
    Ok(served)
}

/// Checks the blobs `wanted` (in frame order) in one decoded frame and
/// hands the good ones to the sink, a run of neighbours at a time; returns
/// the bytes written and which placements failed, with why.
fn serve_frame(
    raw: Bytes,
    wanted: &[Wanted],
    sink: &Sink,
) -> Result<(u64, Vec<(usize, &'static str)>)> {
    let mut failed = Vec::new();
    let mut good: Vec<usize> = Vec::with_capacity(wanted.len());
    // The same blob wanted at several places is hashed once.
    let mut checked: Option<(u32, BlobId, bool)> = None;
    for (i, (p, loc)) in wanted.iter().enumerate() {
        let (start, end) = (loc.offset as usize, loc.offset as usize + loc.len as usize);
        let Some(blob) = raw.get(start..end) else {
            failed.push((i, "lies beyond the end of its frame"));
            continue;
        };
        let ok = match checked {
            Some((offset, id, ok)) if offset == loc.offset && id == p.id => ok,
            _ => {
                let ok = BlobId::of(blob) == p.id;
                checked = Some((loc.offset, p.id, ok));
                ok
            }
        };
        if ok {
            good.push(i);
        } else {
            failed.push((i, "its bytes do not hash to its id"));
        }
    }
    let mut written = 0;
    let runs: Vec<(u64, std::ops::Range<usize>)> = runs(&good, wanted)
        .into_iter()
        .map(|(first, last)| {
            let (a, b) = (wanted[first].1, wanted[last].1);
            let range = a.offset as usize..b.offset as usize + b.len as usize;
            written += range.len() as u64;
            (wanted[first].0.at, range)
        })
        .collect();
    if runs.is_empty() {
        return Ok((written, failed));
    }
    let tiles = if raw.len() > COMPACT_OVER && written < raw.len() as u64 / 4 {
        let mut compact = Vec::with_capacity(usize::try_from(written).unwrap_or(0));
        let runs = runs
            .into_iter()
            .map(|(at, range)| {
                let start = compact.len();
                compact.extend_from_slice(&raw[range]);
                (at, start..compact.len())
            })
            .collect();
        Tiles {
            bytes: Bytes::from(compact),
            runs,
        }
    } else {
        Tiles { bytes: raw, runs }
    };
    sink(tiles)?;
    Ok((written, failed))
}

/// Splits `good` (indices into `wanted`, in frame order) into runs whose
/// blobs follow each other both in the frame and in the output: (first,
/// last) index pairs.
fn runs(good: &[usize], wanted: &[Wanted]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in good {
        let (p, loc) = wanted[i];
        if let Some(run) = out.last_mut() {
            let (q, prev) = wanted[run.1];
            if u64::from(loc.offset) == u64::from(prev.offset) + u64::from(prev.len)
                && Some(p.at) == q.at.checked_add(q.len)
            {
                run.1 = i;
                continue;
            }
        }
        out.push((i, i));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // small test frames
mod tests {
    use super::*;

    fn wanted(at: u64, offset: u32, len: u32) -> Wanted {
        (
            Placement {
                id: BlobId([0; 32]),
                at,
                len: u64::from(len),
            },
            BlobLocation {
                pack: 0,
                frame: 0,
                offset,
                len,
            },
        )
    }

    #[test]
    fn fallback_batches_hold_at_most_their_length_and_at_least_one_chunk() {
        let p = |len| Placement {
            id: BlobId([0; 32]),
            at: 0,
            len,
        };
        let all = [p(5), p(4), p(2), p(20), p(1), p(1)];
        let lens: Vec<Vec<u64>> = batches_by_len(&all, 10)
            .iter()
            .map(|b| b.iter().map(|p| p.len).collect())
            .collect();
        assert_eq!(lens, vec![vec![5, 4], vec![2], vec![20], vec![1, 1]]);
        assert!(batches_by_len(&[], 10).is_empty());
    }

    fn test_frame() -> Vec<u8> {
        (0..32usize << 16)
            .map(|i| (i >> 16) as u8 ^ (i % 251) as u8)
            .collect()
    }

    /// A frame of 2 MiB: `n` blobs of 64 KiB, each wanted at `at` of its
    /// own, and what the sink got.
    fn serve(
        wanted_blobs: &[(usize, u64)],
        lie: Option<usize>,
    ) -> (u64, Vec<(usize, &'static str)>, Vec<Tiles>) {
        const BLOB: usize = 64 << 10;
        let raw = test_frame();
        let wanted: Vec<Wanted> = wanted_blobs
            .iter()
            .map(|&(i, at)| {
                let id = match raw.get(i * BLOB..(i + 1) * BLOB) {
                    Some(bytes) if lie != Some(i) => BlobId::of(bytes),
                    _ => BlobId([7; 32]),
                };
                let mut w = wanted(at, (i * BLOB) as u32, BLOB as u32);
                w.0.id = id;
                w.1.len = BLOB as u32;
                w
            })
            .collect();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink: Sink = {
            let got = Arc::clone(&got);
            Arc::new(move |t| {
                got.lock().unwrap().push(t);
                Ok(())
            })
        };
        let (written, failed) = serve_frame(Bytes::from(raw), &wanted, &sink).unwrap();
        drop(sink);
        let tiles = Arc::try_unwrap(got).unwrap().into_inner().unwrap();
        (written, failed, tiles)
    }

    #[test]
    fn a_frame_goes_whole_unless_mostly_unwanted_and_bad_blobs_are_named() {
        const BLOB: u64 = 64 << 10;
        // Two neighbours in frame and output, and one elsewhere: two runs,
        // a few of 32 blobs: copied out, the frame not held.
        let (written, failed, tiles) = serve(&[(3, 0), (4, BLOB), (9, 10 * BLOB)], None);
        assert_eq!((written, failed.len(), tiles.len()), (3 * BLOB, 0, 1));
        assert_eq!(tiles[0].bytes.len() as u64, 3 * BLOB, "compacted");
        let runs: Vec<u64> = tiles[0].runs.iter().map(|(at, _)| *at).collect();
        assert_eq!(runs, vec![0, 10 * BLOB]);
        let first = &tiles[0].bytes[tiles[0].runs[0].1.clone()];
        assert!(first == &test_frame()[3 << 16..5 << 16], "blobs 3 and 4");
        // Most of the frame wanted: handed over whole, no copy.
        let most: Vec<(usize, u64)> = (0..20).map(|i| (i, i as u64 * BLOB)).collect();
        let (written, _, tiles) = serve(&most, None);
        assert_eq!(written, 20 * BLOB);
        assert_eq!(tiles[0].bytes.len() as u64, 32 * BLOB);
        assert_eq!(tiles[0].runs, vec![(0, 0..(20 * BLOB) as usize)]);
        // A blob that does not hash to its id fails alone and splits the run.
        let (written, failed, tiles) = serve(&[(3, 0), (4, BLOB), (5, 2 * BLOB)], Some(4));
        assert_eq!(written, 2 * BLOB);
        assert_eq!(failed, vec![(1, "its bytes do not hash to its id")]);
        assert_eq!(tiles[0].runs.len(), 2);
        // A blob placed beyond the frame's end fails, nothing is read there.
        let (written, failed, tiles) = serve(&[(32, 0)], None);
        assert_eq!((written, tiles.len()), (0, 0));
        assert_eq!(failed, vec![(0, "lies beyond the end of its frame")]);
    }

    #[test]
    fn runs_join_blobs_adjacent_in_the_frame_and_in_the_output() {
        let w = [
            wanted(100, 0, 10), // 0: starts a run
            wanted(110, 10, 5), // 1: follows 0 in both
            wanted(200, 15, 5), // 2: follows 1 in the frame only
            wanted(205, 30, 5), // 3: follows 2 in the output only
            wanted(0, 30, 5),   // 4: the same blob again, elsewhere
            wanted(5, 35, 1),   // 5: follows 4 in both
        ];
        assert_eq!(
            runs(&[0, 1, 2, 3, 4, 5], &w),
            vec![(0, 1), (2, 2), (3, 3), (4, 5)]
        );
        // A blob left out (it failed) between two good ones breaks the run.
        let w = [wanted(0, 0, 10), wanted(10, 10, 10), wanted(20, 20, 10)];
        assert_eq!(runs(&[0, 1, 2], &w), vec![(0, 2)]);
        assert_eq!(runs(&[0, 2], &w), vec![(0, 0), (2, 2)]);
        assert_eq!(runs(&[], &w), Vec::<(usize, usize)>::new());
    }
}
